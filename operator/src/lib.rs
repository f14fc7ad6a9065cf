//! aenv-operator: short-lived sandbox environments for AI agents, run on Docker or Kubernetes in the style of a
//! Kubernetes operator, behind the AEnvironment REST API.
//!
//! The binary's rooms:
//! - [`app`]: the configuration (the command line's argument groups) and [`app::serve`], which opens the store,
//!   connects the engine and runs the servers and the controller;
//! - [`service`]: the use-cases without HTTP (resolve a create, quotas, ids, expiry, templates, warmup);
//! - [`http`]: routes, handlers, wire formats, authentication, the data-plane proxy;
//! - [`controller`]: the reconcile loop (`decide` + act), resync and orphan sweep, leader election;
//! - [`store`]: where objects live (embedded redb, Kubernetes custom resources, in memory for tests);
//! - [`demand`]: what pools were asked for lately, shared by the use-cases and the pool controller;
//! - [`metrics`], [`crds`].

#![recursion_limit = "256"]

pub mod app;
pub mod controller;
pub mod crds;
pub mod demand;
mod error;
pub mod http;
pub mod metrics;
pub mod slots;
pub mod store;
pub mod usecase;

pub use app::{Config, serve};
pub use error::Error;
