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
pub fn classify(context: &str, err: bollard::errors::Error) -> EngineError {
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

/// Sorts the failure of a container start. Docker reports what a start ran into (a host port in use, a mount
/// the runtime refuses, an executable of another platform) as a 500 with a message and nothing typed; whether it
/// can pass is not known from that, so it is [`ErrorKind::StartFailed`](aenv_core::ErrorKind::StartFailed) (retried
/// a bounded number of times by the controller) rather than transient (retried until the TTL). A 4xx (no such
/// executable, an invalid mount) is permanent, as any 4xx; no answer at all is the daemon being unavailable.
pub(crate) fn classify_start(context: &str, err: bollard::errors::Error) -> EngineError {
    match &err {
        bollard::errors::Error::DockerResponseServerError { status_code, message } if *status_code >= 500 => {
            EngineError::new(aenv_core::ErrorKind::StartFailed, format!("{context}: {message}")).with_source(err)
        }
        _ => classify(context, err),
    }
}

/// True for the daemon's 404.
pub fn is_not_found(err: &bollard::errors::Error) -> bool {
    matches!(err, bollard::errors::Error::DockerResponseServerError { status_code: 404, .. })
}

/// True for the daemon's 409 (a container of that name exists already).
pub fn is_conflict(err: &bollard::errors::Error) -> bool {
    matches!(err, bollard::errors::Error::DockerResponseServerError { status_code: 409, .. })
}
