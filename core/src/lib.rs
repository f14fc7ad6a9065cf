//! `aenv-core`: the domain of aenv-operator, free of I/O.
//!
//! - [`types`]: the `EnvInstance` and `Environment` custom resources (group `aenv.io`, version `v1alpha1`);
//! - [`engine`]: the [`Engine`](engine::Engine) trait every backend (Docker, Kubernetes) implements;
//! - [`duration`]: TTLs in Go duration syntax (`90s`, `30m`, `1h30m`), as AEnvironment writes them;
//! - [`quantity`]: cpu (`1C`, `2`, `500m`, `0.5`) and memory (`512Mi`, `2Gi`, `2G`, `512M`) quantities;
//! - [`labels`]: the label keys put on every object an engine creates;
//! - [`ops`]: operations on a running sandbox (exec, files) and their checks;
//! - [`pty`]: interactive terminals (a program on a pseudo-terminal);
//! - [`pool`]: the `EnvPool` custom resource (warm pools) and the rules of claiming a pooled sandbox;
//! - [`envservice`]: the `EnvService` custom resource (long-running replicas with storage) and its rules.
//!
//! Nothing here reads a clock, a socket or a file: callers pass `now` in.

pub mod duration;
pub mod engine;
pub mod envservice;
mod error;
pub mod labels;
pub mod ops;
pub mod pool;
pub mod pty;
pub mod quantity;
pub mod types;

pub use engine::{
    CheckpointSupport, Engine, EngineError, EngineEvent, ErrorKind, InvalidSpec, ManagedObject, NativeServices,
    Observed, OwnedKind, OwnedObject, PullProgress, PullState, SnapshotImage,
};
pub use envservice::{EnvService, EnvServiceSpec, EnvServiceStatus, ServicePhase};
pub use error::Error;
pub use ops::{
    ByteStream, ExecExit, ExecOutput, ExecRequest, FileUpload, InstanceStats, PathContent, PathError, SandboxPath,
    body_of, collect_body,
};
pub use pool::{EnvPool, EnvPoolSpec, EnvPoolStatus, MemberState};
pub use pty::{BadWindow, PtyInput, PtyOutput, PtyRequest, WindowSize};
pub use types::{
    Condition, EnvInstance, EnvInstanceSpec, EnvInstanceStatus, Environment, EnvironmentSpec, Phase, Placement,
    PortSpec, PortStatus, PullPolicy, READY, ReadinessProbe, Resources, ServiceStatus, VolumeMount, Workload,
};
