//! The contract between the reconciler and a backend that runs instances (Docker, Kubernetes).

use async_trait::async_trait;
use futures::stream::BoxStream;
use jiff::Timestamp;
use thiserror::Error;

use crate::{
    EnvInstance, EnvInstanceSpec, Phase,
    types::{PortStatus, ServiceStatus},
};

/// What the engine sees of one instance after `apply`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    pub phase: Phase,
    pub ip: Option<String>,
    pub message: Option<String>,
    /// The engine's id for what it runs (a container id, a Pod uid).
    pub container_id: Option<String>,
    /// Published ports.
    pub ports: Vec<PortStatus>,
    /// Each service of a stack.
    pub services: Vec<ServiceStatus>,
    /// Whether the readiness probe passed; `None` when the instance has no probe or is not running.
    pub ready: Option<bool>,
    /// Why it is not ready.
    pub ready_message: Option<String>,
}

/// One object the engine found labelled as belonging to this operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedObject {
    /// Namespace and name of the instance the object belongs to.
    pub namespace: String,
    pub instance: String,
    /// The engine's id of the object (a container id).
    pub id: String,
    /// The phase the object's state maps to, as far as a list call tells.
    pub phase: Phase,
    pub created: Option<Timestamp>,
}

/// A change the engine noticed outside the operator's own calls (a container died or was removed by hand).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EngineEvent {
    /// Something about this instance changed: reconcile it.
    Changed { namespace: String, instance: String },
    /// The event stream was interrupted and is back: anything may have changed meanwhile.
    Resync,
}

/// Progress of pre-pulling one image ([`Engine::warmup`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PullProgress {
    pub image: String,
    pub state: PullState,
    /// What the engine last said (a layer's progress, an error).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// Where one image's pull stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum PullState {
    Waiting,
    Pulling,
    /// It was on the host already.
    Present,
    Pulled,
    Failed,
}

/// Why an engine call failed. Messages are for users: they say what happened and what can be done.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum EngineError {
    /// The backend does not answer (daemon down, API server unreachable). Retried with backoff.
    #[error("{0}")]
    Unavailable(String),
    /// The request cannot succeed as written (image missing and not pullable, bad spec). Not retried: the
    /// instance goes to `Failed` with this message.
    #[error("{0}")]
    Permanent(String),
    /// Anything else the backend reported; retried with backoff.
    #[error("{0}")]
    Other(String),
}

impl EngineError {
    /// Whether trying again later may help.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, EngineError::Permanent(_))
    }

    /// A short, stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            EngineError::Unavailable(_) => "unavailable",
            EngineError::Permanent(_) => "permanent",
            EngineError::Other(_) => "other",
        }
    }
}

/// A backend that runs env instances.
///
/// Implementations are idempotent and keyed by the instance id: the id names the container (or Pod), so a
/// create that was interrupted and is made again finds and adopts what the first attempt left.
#[async_trait]
pub trait Engine: Send + Sync + 'static {
    /// A short name for logs and metrics (`docker`, `kubernetes`).
    fn name(&self) -> &'static str;

    /// Checks a spec before it is accepted, for what only this engine can judge (its policy, a compose file).
    /// The message is for the API user: it names the field and the fix. The default accepts everything.
    fn validate(&self, _spec: &EnvInstanceSpec) -> Result<(), String> {
        Ok(())
    }

    /// Makes the instance exist as specified and reports what is observed. Creates what is missing, unless
    /// `instance.status.container_id` says it was created before: then its absence is reported as
    /// `Terminated` (removed outside the operator) rather than created again. Calling it twice changes nothing.
    async fn apply(&self, instance: &EnvInstance) -> Result<Observed, EngineError>;

    /// Removes everything the instance owns. Succeeds when there is nothing to remove.
    async fn delete(&self, instance: &EnvInstance) -> Result<(), EngineError>;

    /// Removes an object found by [`Engine::list_owned`] that has no instance (an orphan).
    async fn delete_owned(&self, object: &OwnedObject) -> Result<(), EngineError>;

    /// Everything this engine finds labelled as this operator's, in one list call.
    async fn list_owned(&self) -> Result<Vec<OwnedObject>, EngineError>;

    /// Changes made outside the operator. The stream reconnects by itself and never ends.
    fn events(&self) -> BoxStream<'static, EngineEvent>;

    /// Whether the backend answers now (for readiness).
    async fn ping(&self) -> Result<(), EngineError>;

    /// The instance's output (stdout and stderr, interleaved as written): the last `tail` lines (all when
    /// `None`), then, with `follow`, what it writes until it stops or the stream is dropped.
    fn logs(
        &self,
        _instance: &EnvInstance,
        _follow: bool,
        _tail: Option<u64>,
    ) -> BoxStream<'static, Result<Vec<u8>, EngineError>> {
        Box::pin(futures::stream::once(async { Err(EngineError::Permanent("this engine does not serve logs".into())) }))
    }

    /// Pre-pulls every image the spec runs (each service of a stack), reporting progress as it goes. The default
    /// reports nothing (an engine whose nodes pull for themselves).
    fn warmup(&self, _spec: &EnvInstanceSpec) -> BoxStream<'static, PullProgress> {
        Box::pin(futures::stream::empty())
    }
}
