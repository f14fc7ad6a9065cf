use aenv_core::EngineError;
use thiserror::Error;

/// Failures of the operator process (start-up, store, engine).
#[derive(Debug, Error)]
pub enum Error {
    #[error("store: {0}")]
    Store(String),
    /// The store file exists but cannot be used: empty, truncated or corrupt.
    #[error(
        "the store {path} is unusable: {reason}{}. The instances it held are lost to this operator; their containers keep running until their expiry label (aenv.io/expire-at) passes, and are then removed by any operator on this Docker host (see docs/operations.md). Restore the file from a backup, or move it away to start with an empty store: mv {path} {path}.lost",
        source.as_ref().map(|e| format!(" ({e})")).unwrap_or_default()
    )]
    StoreUnreadable {
        path: String,
        reason: String,
        #[source]
        source: Option<redb::DatabaseError>,
    },
    /// The store's file cannot take writes now (a full disk): nothing was written, the write may be retried; the
    /// store reopens itself once it can write.
    #[error(
        "the store {path} cannot write now ({reason}); free space in the data directory: writes resume by themselves"
    )]
    StoreWrite {
        path: String,
        reason: String,
        #[source]
        source: Option<Box<redb::Error>>,
    },
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
            Error::Store(_) | Error::StoreUnreadable { .. } | Error::StoreWrite { .. } => "store",
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
