use aenv_core::EngineError;
use thiserror::Error;

/// Failures of the Docker engine that are not about one instance (connecting, configuration).
#[derive(Debug, Error)]
pub enum Error {
    #[error("invalid Docker host {host:?}: {reason}")]
    InvalidHost { host: String, reason: String },
    #[error(
        "cannot connect to the Docker daemon at {host}: {source} (is dockerd running? point --docker-host or DOCKER_HOST at it)"
    )]
    Connect {
        host: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("the Docker daemon at {host} does not answer: {source} ({hint})")]
    Unreachable {
        host: String,
        #[source]
        source: bollard::errors::Error,
        /// What to check, depending on the connection mode.
        hint: String,
    },
}

/// Sorts a bollard error into what the reconciler does with it: retry later, or fail the instance. The bollard
/// error stays as the source.
pub(crate) fn classify(context: &str, err: bollard::errors::Error) -> EngineError {
    use bollard::errors::Error as B;
    let sorted = match &err {
        B::DockerResponseServerError { status_code, message } if (400..500).contains(status_code) => {
            EngineError::permanent(format!("{context}: {message}"))
        }
        B::DockerResponseServerError { message, .. } => EngineError::transient(format!("{context}: {message}")),
        B::DockerStreamError { error } => EngineError::permanent(format!("{context}: {error}")),
        B::JsonDataError { .. } | B::JsonSerdeError { .. } => EngineError::transient(format!("{context}: {err}")),
        other => EngineError::unavailable(format!("{context}: the Docker daemon does not answer: {other}")),
    };
    sorted.with_source(err)
}

/// True for the daemon's 404.
pub(crate) fn is_not_found(err: &bollard::errors::Error) -> bool {
    matches!(err, bollard::errors::Error::DockerResponseServerError { status_code: 404, .. })
}

/// True for the daemon's 409 (a container of that name exists already).
pub(crate) fn is_conflict(err: &bollard::errors::Error) -> bool {
    matches!(err, bollard::errors::Error::DockerResponseServerError { status_code: 409, .. })
}
