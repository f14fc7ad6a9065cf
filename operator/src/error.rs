use aenv_core::EngineError;
use thiserror::Error;

/// Failures of the operator process (start-up, store, engine).
#[derive(Debug, Error)]
pub enum Error {
    #[error("store: {0}")]
    Store(String),
    #[error("{0} exists already")]
    AlreadyExists(String),
    /// A conditional write lost a race: the object changed since the version it was made against.
    #[error("{0} changed meanwhile")]
    Conflict(String),
    #[error(transparent)]
    Docker(#[from] aenv_engine_docker::Error),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("Kubernetes API: {context}: {source}")]
    Kube {
        context: String,
        #[source]
        source: kube::Error,
    },
    #[error(transparent)]
    KubeEngine(#[from] aenv_engine_k8s::Error),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// A short, stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Store(_) => "store",
            Error::AlreadyExists(_) => "already_exists",
            Error::Conflict(_) => "conflict",
            Error::Docker(_) => "docker",
            Error::Engine(e) => e.metric_label(),
            Error::Kube { .. } => "kubernetes",
            Error::KubeEngine(_) => "kubernetes",
            Error::Config(_) => "config",
            Error::Listen { .. } => "listen",
        }
    }
}
