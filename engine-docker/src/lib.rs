//! The aenv [`Engine`](aenv_core::Engine) over the Docker Engine API, through bollard.
//!
//! One container per instance, named by the instance id and labelled with the schema of
//! [`aenv_core::labels`], so that a restarted operator finds and adopts what it made, and a sweep can tell its
//! own orphans from everyone else's containers. An instance with a compose file is a stack of containers on its
//! own network, run natively through the API ([`compose`]).

mod auth;
pub mod compose;
mod config;
mod connect;
mod containers;
mod engine;
mod error;
mod events;
mod image;
mod kill;
mod network;
mod ops;
mod policy;
mod probe;
mod pty;
mod registry;
mod volume;

pub use auth::credentials_for;
pub use config::{DEFAULT_CAPABILITIES, DockerEngineConfig, Hardening};
pub use connect::{ConnectOptions, connect};
pub use engine::DockerEngine;
pub use error::{Error, classify, is_conflict, is_not_found};
pub use image::{admit_images, ensure_image, warmup};
pub use network::{NETWORK_LABEL, legacy_scoped, made_by, scoped as scoped_network, shared_network_labels};
pub use ops::{refuse_snapshot_image, refuse_snapshot_images, snapshot_spelling};
pub use policy::{Allowance, Policy};
pub use probe::Prober;
pub use registry::Registries;
pub use volume::{VOLUME_LABEL, scoped as service_volume};
