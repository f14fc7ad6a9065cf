//! The contract between the reconciler and a backend that runs instances (Docker, Kubernetes).

use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;
use jiff::Timestamp;
use thiserror::Error;

use crate::{
    EnvInstance, EnvInstanceSpec, EnvService, EnvServiceStatus, Phase,
    ops::{ExecOutput, ExecRequest, FileUpload, InstanceStats, PathContent, SandboxPath},
    pty::{PtyInput, PtyOutput, PtyRequest},
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

/// What kind of thing an [`OwnedObject`] is, so that removing it needs no guess from its id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OwnedKind {
    /// A container (or a Pod): its id is the engine's id.
    Container,
    /// A network a stack made: its id is the network's name.
    Network,
    /// A volume a stack made: its id is the volume's name.
    Volume,
    /// A network instances share (an owner's network, or one a request named): its id is the network's name. It
    /// belongs to no instance (`namespace` and `instance` are empty) and is listed only when none of the
    /// operator's containers is on it, so the sweep removes it once it is unused for longer than the grace.
    SharedNetwork,
    /// A service's storage, by the name the replicas' spec mounts ([`crate::envservice::volume_name`]): the engine
    /// finds the object behind it and removes it only when this operator made it.
    ServiceVolume,
}

/// One object the engine found labelled as belonging to this operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedObject {
    /// Namespace and name of the instance the object belongs to.
    pub namespace: String,
    pub instance: String,
    pub kind: OwnedKind,
    /// The engine's id of the object (see [`OwnedKind`]).
    pub id: String,
    /// The phase the object's state maps to, as far as a list call tells.
    pub phase: Phase,
    pub created: Option<Timestamp>,
}

/// An object labelled by some aenv-operator on the backend, whichever operator id it carries: what the expiry
/// sweep judges by its labels alone, without the store that made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManagedObject {
    pub object: OwnedObject,
    /// Its `aenv.io/operator-id`.
    pub operator_id: String,
    /// Its `aenv.io/expire-at`, when it carries one that reads as a time.
    pub expires_at: Option<Timestamp>,
}

/// Whether the engine could save a sandbox's memory and processes (CRIU checkpoints), as detected at start.
/// Snapshots save the filesystem either way.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointSupport {
    pub available: bool,
    /// Why not, or what was found.
    pub reason: String,
}

/// A snapshot image ([`Engine::snapshot`]) the backend holds, as its labels tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotImage {
    /// The image's reference (`aenv-snapshot/<name>:<version>.<random>`).
    pub reference: String,
    /// The operator that made it (`aenv.io/snapshot-by`).
    pub operator_id: String,
    /// The template it was made for (`name@version`, `aenv.io/snapshot-template`), when it says.
    pub template: Option<String>,
    pub created: Option<Timestamp>,
    /// Its size as the backend reports it (base layers included), when it says.
    pub size: Option<u64>,
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

/// What the reconciler (and the API) does with an engine failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The backend does not answer (daemon down, API server unreachable). Retried with backoff.
    Unavailable,
    /// The request cannot succeed as written (image missing and not pullable, bad spec). Not retried: the
    /// instance goes to `Failed` with the message.
    Permanent,
    /// Anything else the backend reported (a race with another writer, a busy backend); retried with backoff.
    Transient,
    /// This engine cannot do that at all (an operation it does not offer).
    Unsupported,
    /// The backend made the workload but would not start it, and says why only in a message (Docker answers a
    /// start with a server error: a host port taken, a mount the runtime refuses, a binary for another platform).
    /// It may pass (the port is freed) but mostly does not: the controller retries it a few times, then fails the
    /// instance with the backend's reason.
    StartFailed,
    /// What the operation names does not exist (a path in a sandbox, a container gone).
    NotFound,
    /// The instance is not in a state for it (paused, stopped).
    Conflict,
    /// What was asked for is larger than the operator allows.
    TooLarge,
}

/// Why an engine call failed: a [`kind`](EngineError::kind) that callers decide on, a message for users (what
/// happened and what can be done), and the backend's own error as the source.
#[derive(Debug, Clone, Error)]
#[error("{message}")]
pub struct EngineError {
    kind: ErrorKind,
    message: String,
    #[source]
    source: Option<Arc<dyn std::error::Error + Send + Sync + 'static>>,
}

impl EngineError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        EngineError { kind, message: message.into(), source: None }
    }

    /// See [`ErrorKind::Unavailable`].
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }

    /// See [`ErrorKind::Permanent`].
    pub fn permanent(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Permanent, message)
    }

    /// See [`ErrorKind::Transient`].
    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Transient, message)
    }

    /// See [`ErrorKind::Unsupported`].
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unsupported, message)
    }

    /// Keeps the backend's error as the source.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// The same failure with its message rewritten by `f` (the kind and the source stay).
    pub fn reworded(mut self, f: impl FnOnce(&str) -> String) -> Self {
        self.message = f(&self.message);
        self
    }

    /// The same failure taken as another kind (a refusal that is only a race, retried).
    pub fn as_kind(mut self, kind: ErrorKind) -> Self {
        self.kind = kind;
        self
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message for users (the same text as `Display`).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether trying again later may help.
    pub fn is_retryable(&self) -> bool {
        matches!(self.kind, ErrorKind::Unavailable | ErrorKind::Transient | ErrorKind::StartFailed)
    }

    /// A short, stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self.kind {
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Permanent => "permanent",
            ErrorKind::Transient => "other",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::StartFailed => "start_failed",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::TooLarge => "too_large",
        }
    }
}

impl PartialEq for EngineError {
    /// Equal when kind and message are (sources are not comparable).
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind && self.message == other.message
    }
}

/// A spec an engine will not run: which field, and a message for the API user that names it and the fix.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{message}")]
pub struct InvalidSpec {
    /// The request field at fault, as the API spells it (`deployConfig.network`).
    pub field: String,
    pub message: String,
}

impl InvalidSpec {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        InvalidSpec { field: field.into(), message: message.into() }
    }
}

impl From<InvalidSpec> for EngineError {
    /// A spec refused at apply time fails the instance.
    fn from(e: InvalidSpec) -> Self {
        EngineError::permanent(e.message.clone()).with_source(e)
    }
}

/// An engine that runs an `EnvService` as objects of its own (on Kubernetes: a Deployment, a Service and a
/// PersistentVolumeClaim) instead of as one `EnvInstance` per replica. The service controller uses it when
/// [`Engine::native_services`] offers it; the backend then keeps the replicas (replacing, rolling, scaling) and
/// the controller reads their state back.
#[async_trait]
pub trait NativeServices: Send + Sync {
    /// Checks a service before it is accepted, for what only this backend can judge (its names, its
    /// quantities). The message names the field and the fix.
    fn validate_service(&self, _name: &str, _service: &crate::EnvServiceSpec) -> Result<(), InvalidSpec> {
        Ok(())
    }

    /// Makes the service's objects exist as `service` and `replica` (what each replica runs) say, changing
    /// what differs, and reports the service's state as read from them. Calling it twice changes nothing.
    async fn apply_service(
        &self,
        service: &EnvService,
        replica: &EnvInstanceSpec,
    ) -> Result<EnvServiceStatus, EngineError>;

    /// Removes the service's objects, and its storage with `delete_storage` (without it the storage stays, for a
    /// later service of the same `pvcName`). Succeeds when there is nothing to remove.
    async fn delete_service(&self, service: &EnvService, delete_storage: bool) -> Result<(), EngineError>;

    /// `host:port` the service answers on inside the backend's network (a cluster DNS name).
    fn service_address(&self, service: &EnvService) -> String;
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
    fn validate(&self, _spec: &EnvInstanceSpec) -> Result<(), InvalidSpec> {
        Ok(())
    }

    /// Checks a spec that passed [`Engine::validate`] for what needs I/O to judge (the addresses an image's
    /// registry name resolves to), before it is accepted. The message names the field and the fix. The default
    /// accepts everything.
    async fn admit(&self, _spec: &EnvInstanceSpec) -> Result<(), InvalidSpec> {
        Ok(())
    }

    /// Makes the instance exist as specified and reports what is observed. Creates what is missing, unless
    /// `instance.status.container_id` says it was created before: then its absence is reported as
    /// `Terminated` (removed outside the operator) rather than created again. Calling it twice changes nothing.
    async fn apply(&self, instance: &EnvInstance) -> Result<Observed, EngineError>;

    /// [`Engine::apply`] after a start that failed ([`ErrorKind::StartFailed`]): what was created for the instance
    /// and has never run is removed and made again first, so that state the backend kept from the failed start (a
    /// task left behind by a daemon restart) cannot fail the next start the same way. Safe because nothing ran.
    /// The default is [`Engine::apply`].
    async fn apply_afresh(&self, instance: &EnvInstance) -> Result<Observed, EngineError> {
        self.apply(instance).await
    }

    /// Kills what commands of [`Engine::exec`] left running past their timeout because the operator stopped
    /// before it could kill them (a crash, a kill -9): called by every resync, the first at start. How many
    /// processes were killed. The default finds none.
    async fn kill_overdue_commands(&self) -> Result<u32, EngineError> {
        Ok(0)
    }

    /// Removes everything the instance owns. Succeeds when there is nothing to remove.
    async fn delete(&self, instance: &EnvInstance) -> Result<(), EngineError>;

    /// Removes an object found by [`Engine::list_owned`] that has no instance (an orphan).
    async fn delete_owned(&self, object: &OwnedObject) -> Result<(), EngineError>;

    /// Everything this engine finds labelled as this operator's, in one list call.
    async fn list_owned(&self) -> Result<Vec<OwnedObject>, EngineError>;

    /// Everything any aenv-operator labelled on this backend, whichever operator id it carries, with that id and
    /// its expiry label, in one pass: the expiry sweep removes what a lost store left behind. No default: an
    /// engine that answered nothing here would turn that sweep off without a word.
    async fn list_managed(&self) -> Result<Vec<ManagedObject>, EngineError>;

    /// Changes made outside the operator. The stream reconnects by itself and never ends.
    fn events(&self) -> BoxStream<'static, EngineEvent>;

    /// Whether the backend answers now (for readiness).
    async fn ping(&self) -> Result<(), EngineError>;

    /// Whether instances' addresses (`status.ip`) are out of the operator's reach, so that the data-plane proxy
    /// dials the port an instance published for the port asked (`status.ports`) instead. The default: addresses
    /// are reachable.
    fn dials_published_ports(&self) -> bool {
        false
    }

    /// The instance's output (stdout and stderr, interleaved as written): the last `tail` lines (all when
    /// `None`), then, with `follow`, what it writes until it stops or the stream is dropped.
    fn logs(
        &self,
        _instance: &EnvInstance,
        _follow: bool,
        _tail: Option<u64>,
    ) -> BoxStream<'static, Result<Vec<u8>, EngineError>> {
        Box::pin(futures::stream::once(async { Err(EngineError::unsupported("this engine does not serve logs")) }))
    }

    /// Pre-pulls every image the spec runs (each service of a stack), reporting progress as it goes. The default
    /// reports nothing (an engine whose nodes pull for themselves).
    fn warmup(&self, _spec: &EnvInstanceSpec) -> BoxStream<'static, PullProgress> {
        Box::pin(futures::stream::empty())
    }

    /// Whether this engine applies `spec.paused` to instances of `spec` (freezes them). The default: it does not.
    fn can_pause(&self, _spec: &EnvInstanceSpec) -> Result<(), EngineError> {
        Err(EngineError::unsupported("this engine does not pause instances"))
    }

    /// Runs a command in the instance's container: what it writes as it writes it, then how it ended (always the
    /// last item). A command that cannot be started (no such program) ends with its exit code (126, 127) and the
    /// runtime's message on stderr, not an error. The default: this engine does not run commands.
    fn exec(
        &self,
        _instance: &EnvInstance,
        _request: ExecRequest,
    ) -> BoxStream<'static, Result<ExecOutput, EngineError>> {
        Box::pin(futures::stream::once(async {
            Err(EngineError::unsupported("this engine does not run commands in instances"))
        }))
    }

    /// Starts a program on a terminal in the instance: `input` carries typed bytes and window sizes, the answer its
    /// screen bytes then its exit (always the last item). When `input` ends or the answer is dropped, the program
    /// is ended (killed) and everything held for it let go. A program that is not there is
    /// [`ErrorKind::Permanent`], before anything runs. The default: this engine does not serve terminals.
    async fn pty(
        &self,
        _instance: &EnvInstance,
        _request: PtyRequest,
        _input: BoxStream<'static, PtyInput>,
    ) -> Result<BoxStream<'static, Result<PtyOutput, EngineError>>, EngineError> {
        Err(EngineError::unsupported("this engine does not serve interactive terminals"))
    }

    /// Reads `path` in the instance (in `service` of a compose stack, its main service when `None`): a file's
    /// bytes, or a directory as a tar. More than `max_bytes` is [`ErrorKind::TooLarge`]; a missing path
    /// [`ErrorKind::NotFound`].
    async fn read_path(
        &self,
        _instance: &EnvInstance,
        _service: Option<&str>,
        _path: &SandboxPath,
        _max_bytes: u64,
    ) -> Result<PathContent, EngineError> {
        Err(EngineError::unsupported("this engine does not serve files"))
    }

    /// Writes one file into the instance (its parent directory must exist: [`ErrorKind::NotFound`] otherwise).
    async fn write_file(&self, _instance: &EnvInstance, _upload: FileUpload) -> Result<(), EngineError> {
        Err(EngineError::unsupported("this engine does not serve files"))
    }

    /// The instance's resource use (of `service` of a compose stack, its main service when `None`), from one read
    /// of the backend's counters.
    async fn stats(&self, _instance: &EnvInstance, _service: Option<&str>) -> Result<InstanceStats, EngineError> {
        Err(EngineError::unsupported("this engine does not report per-instance stats"))
    }

    /// Saves the instance's filesystem as an image named `reference` (`repo:tag`) for template `template`
    /// (`name@version`), to start instances from; its id. Memory is not saved. The image carries none of the
    /// instance's labels.
    async fn snapshot(
        &self,
        _instance: &EnvInstance,
        _reference: &str,
        _template: &str,
    ) -> Result<String, EngineError> {
        Err(EngineError::unsupported("this engine does not snapshot instances"))
    }

    /// What a snapshot of the instance would weigh, as the backend estimates it before committing (the same
    /// measure as [`SnapshotImage::size`]); `None` when it cannot say.
    async fn snapshot_size(&self, _instance: &EnvInstance) -> Result<Option<u64>, EngineError> {
        Ok(None)
    }

    /// Refuses a spec that names one of the backend's snapshot images directly (by their repository, or by an
    /// image id, which could be any image on the host): a snapshot is used through its template, whose sharing
    /// decides who may. Checked on what callers write (an inline create, a template, a service's image), never on
    /// a spec resolved from a snapshot's template. The default: nothing to refuse.
    fn refuse_snapshot_images(&self, _spec: &EnvInstanceSpec) -> Result<(), InvalidSpec> {
        Ok(())
    }

    /// Whether memory checkpoints (CRIU) could be taken on this backend, as detected at start. The default: not
    /// on this engine.
    fn checkpoints(&self) -> CheckpointSupport {
        CheckpointSupport { available: false, reason: format!("the {} engine has no memory checkpoints", self.name()) }
    }

    /// Every snapshot image any aenv-operator made on this backend (one list call), whichever operator id it
    /// carries. The default: none (an engine that makes no snapshots).
    async fn list_snapshots(&self) -> Result<Vec<SnapshotImage>, EngineError> {
        Ok(Vec::new())
    }

    /// The backend's own way of running services, when it has one (Kubernetes); `None` (the default): the
    /// service controller runs each replica as an `EnvInstance`.
    fn native_services(&self) -> Option<&dyn NativeServices> {
        None
    }

    /// Removes a snapshot image made by [`Engine::snapshot`]. Succeeds when it is gone already;
    /// [`ErrorKind::Conflict`] while containers still use it.
    async fn remove_snapshot(&self, _reference: &str) -> Result<(), EngineError> {
        Err(EngineError::unsupported("this engine does not snapshot instances"))
    }
}
