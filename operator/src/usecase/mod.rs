//! The operator's use-cases, without HTTP: what a create resolves to (inline or from a template), who may see and
//! delete what, quotas and the create rate, instance ids and expiry, templates and image warmup. The REST layer
//! ([`crate::http`]) parses requests, calls these, and renders the answers; nothing here knows of warp.

pub mod env_services;
mod instances;
pub mod limits;
pub mod pools;
pub mod presign;
mod quota;
mod retry;
pub mod sandbox;
mod templates;

use std::{sync::Arc, time::Duration};

use aenv_core::{Engine, EnvInstance, EnvPool, EnvService, Environment, duration::parse_go_duration};
use thiserror::Error;

pub use env_services::{EnvServiceRequest, EnvServiceUpdate};
pub use instances::{CreateRequest, Overrides, UNMOUNTED_ANNOTATION, status_string};
pub use limits::{Limits, MaxTtl, Principal};
pub use pools::PoolRequest;
pub use templates::{
    SNAPSHOT_IMAGE_ANNOTATION, SNAPSHOT_PENDING_ANNOTATION, SnapshotSweep, TemplateAccess, TemplateMeta, WarmupState,
    snapshot_image_of, snapshot_pending,
};

use crate::{demand::Demand, metrics::Metrics, store::ObjectStore};

/// Why a use-case refused or failed. Each variant stands for one answer of the API; messages say what to do.
#[derive(Debug, Error)]
pub enum UseCaseError {
    /// The request cannot be served as written, for a reason no one field holds (a body that could not be read).
    #[error("{0}")]
    Invalid(String),
    /// A field of the request is refused (by the engine's checks or the use-case's): which one, and why.
    #[error(transparent)]
    Refused(aenv_core::InvalidSpec),
    #[error("{0}")]
    NotFound(String),
    /// A cap is reached (the caller's or the operator's).
    #[error("{0}")]
    Forbidden(String),
    /// The object exists already.
    #[error("{0}")]
    Conflict(String),
    /// Too many creates per second: try again after `retry_after`.
    #[error(
        "too many creates: the operator accepts a limited number per second; retry after {}s",
        whole_seconds(*retry_after)
    )]
    RateLimited { retry_after: Duration },
    /// The store did not take the write.
    #[error("{context}: {source}")]
    Store {
        context: &'static str,
        #[source]
        source: Box<crate::Error>,
    },
    /// Nothing went wrong for good, but the request could not be served now (no free instance id was drawn).
    #[error("{0}")]
    Busy(String),
    /// Too many requests of one kind at once: try again after `retry_after`.
    #[error("{message}; retry after {}s", whole_seconds(*retry_after))]
    Overloaded { message: String, retry_after: Duration },
    /// More than the operator takes (a file over the limit).
    #[error("{0}")]
    TooLarge(String),
    /// The engine failed an operation on a sandbox; its kind decides the answer.
    #[error(transparent)]
    Engine(aenv_core::EngineError),
}

impl From<aenv_core::InvalidSpec> for UseCaseError {
    fn from(e: aenv_core::InvalidSpec) -> Self {
        UseCaseError::Refused(e)
    }
}

impl UseCaseError {
    /// A refusal of `field`; `message` names it and the fix.
    pub(crate) fn field(field: &str, message: impl Into<String>) -> Self {
        UseCaseError::Refused(aenv_core::InvalidSpec::new(field, message))
    }

    /// A write the store refused.
    pub(crate) fn store(context: &'static str, source: crate::Error) -> Self {
        UseCaseError::Store { context, source: Box::new(source) }
    }
}

/// The refusal of a name another owner holds: names of services and pools are the operator's (one namespace for
/// all tenants), so the answer says that the name is taken, and nothing of who holds it or of its state.
pub(crate) fn taken(name: &str, field: &str) -> String {
    format!("the name \"{name}\" is taken; pick another `{field}`")
}

/// Seconds, rounded up (a `Retry-After` of 0 would invite an immediate retry that fails again).
pub fn whole_seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// A TTL given on the command line, checked once (a Go duration longer than zero): its text is what instance
/// specs that name no TTL carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DefaultTtl(String);

impl DefaultTtl {
    /// Parses a Go duration; it must be longer than zero.
    pub fn parse(text: &str) -> Result<Self, String> {
        if parse_go_duration(text).map_err(|e| e.to_string())?.is_zero() {
            return Err(format!("{text:?} must be longer than zero (such as \"30m\")"));
        }
        Ok(DefaultTtl(text.trim().to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The duration (checked when parsed).
    pub fn duration(&self) -> Duration {
        parse_go_duration(&self.0).unwrap_or(Duration::MAX)
    }
}

impl std::str::FromStr for DefaultTtl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// The stores the use-cases read and write, one per kind of object.
#[derive(Clone)]
pub struct Stores {
    pub instances: Arc<dyn ObjectStore<EnvInstance>>,
    pub templates: Arc<dyn ObjectStore<Environment>>,
    pub pools: Arc<dyn ObjectStore<EnvPool>>,
    /// Long-running services (`/env-service`).
    pub env_services: Arc<dyn ObjectStore<EnvService>>,
}

/// What the command line decides for the use-cases.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Namespace of the objects the API makes.
    pub namespace: String,
    /// The TTL of instances whose spec names none.
    pub default_ttl: DefaultTtl,
    pub limits: Limits,
    /// Where the data-plane proxy answers, as `http://host:port`: env services' `service_url` starts with it.
    pub proxy_url: Option<String>,
    /// How long a create's answer waits for its instance to serve (see [`UseCases::settled`]); zero answers at
    /// once.
    pub create_wait: Duration,
    /// Signs presigned URLs, under the key kept in the store.
    pub signer: Arc<presign::Signer>,
}

/// Everything the use-cases need; one per process, shared by the HTTP handlers.
pub struct UseCases {
    pub stores: Stores,
    /// Where the data-plane proxy answers (see [`Settings::proxy_url`]).
    pub proxy_url: Option<String>,
    /// Signs presigned URLs (see [`presign`]).
    pub signer: Arc<presign::Signer>,
    /// Creates that pools could serve, shared with the pool controller.
    pub demand: Arc<Demand>,
    /// Asked to validate specs before they are stored, to pre-pull images, to serve logs and readiness.
    pub engine: Arc<dyn Engine>,
    pub metrics: Arc<Metrics>,
    /// Namespace of the objects the API makes.
    pub namespace: String,
    default_ttl: DefaultTtl,
    create_wait: Duration,
    limits: limits::CreateLimits,
    warmups: templates::Warmups,
    /// Each owner's turn from its quota check to its record, and the reservations under `--max-instances` (see
    /// [`quota`]).
    gate: quota::Gate,
    /// One per owner (`""` without tokens), held while it takes a snapshot, from its caps to the commit.
    snapshot_locks: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Exec and file requests running per owner.
    heavy: Arc<limits::HeavyRequests>,
}

impl UseCases {
    pub fn new(
        stores: Stores,
        demand: Arc<Demand>,
        engine: Arc<dyn Engine>,
        metrics: Arc<Metrics>,
        settings: Settings,
    ) -> Arc<Self> {
        let Settings { namespace, default_ttl, limits, proxy_url, create_wait, signer } = settings;
        Arc::new(UseCases {
            stores,
            proxy_url,
            signer,
            demand,
            engine,
            metrics,
            namespace,
            default_ttl,
            create_wait,
            limits: limits::CreateLimits::new(limits),
            warmups: Default::default(),
            gate: Default::default(),
            snapshot_locks: Default::default(),
            heavy: Default::default(),
        })
    }

    /// The store key of an object the API names.
    pub fn key(&self, name: &str) -> String {
        crate::store::key(&self.namespace, name)
    }

    /// Whether `caller` may see `inst`: everyone when auth is off; the owner otherwise. A sandbox waiting in a
    /// pool is nobody's instance yet: no one sees it until it is claimed. A service's replica is the service's:
    /// it is reached through `/env-service` and the service's address, not as an instance.
    pub fn visible(inst: &EnvInstance, caller: Option<&Principal>) -> bool {
        inst.pool().is_none()
            && inst.service().is_none()
            && caller.is_none_or(|p| inst.spec.owner.as_deref() == Some(p.owner.as_str()))
    }

    /// The most instances the operator holds (`--max-instances`), pooled sandboxes included.
    pub fn max_instances(&self) -> Option<usize> {
        self.limits.limits.max_instances
    }
}
