use aenv_core::EngineError;
use thiserror::Error;

/// Failures of the Kubernetes engine that are not about one instance (start-up checks).
#[derive(Debug, Error)]
pub enum Error {
    #[error("invalid sandbox namespace {0:?}: it must be a DNS label (lowercase letters, digits and '-')")]
    InvalidNamespace(String),
    #[error(
        "cannot list Pods in namespace {namespace}: {source} (does the namespace exist, and may the operator's service account list, create, watch and delete Pods there?)"
    )]
    Check {
        namespace: String,
        #[source]
        source: kube::Error,
    },
}

/// The HTTP status of an API error, if the server answered.
pub fn api_code(err: &kube::Error) -> Option<u16> {
    match err {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// Sorts a kube error into what the reconciler does with it: retry later, or fail the instance.
pub(crate) fn classify(context: &str, err: kube::Error) -> EngineError {
    let sorted = match &err {
        kube::Error::Api(status) => match status.code {
            // The object as written cannot exist (an invalid label value, a bad quantity, a quota's refusal).
            400 | 422 => EngineError::permanent(format!("{context}: {}", status.message)),
            403 => EngineError::transient(format!(
                "{context}: forbidden: {} (the operator's service account needs Pod permissions in the sandbox namespace)",
                status.message
            )),
            429 | 500 | 502 | 503 | 504 => {
                EngineError::unavailable(format!("{context}: the API server is busy or failing: {}", status.message))
            }
            _ => EngineError::transient(format!("{context}: {}", status.message)),
        },
        kube::Error::HyperError(_) | kube::Error::Service(_) => {
            EngineError::unavailable(format!("{context}: the API server does not answer: {err}"))
        }
        _ => EngineError::transient(format!("{context}: {err}")),
    };
    sorted.with_source(err)
}

/// Sorts a failure of an operation on a running Pod (exec, files): a Pod that is not there is
/// [`ErrorKind::NotFound`](aenv_core::ErrorKind::NotFound); a refused WebSocket upgrade is transient; anything
/// else as [`classify`] does.
pub(crate) fn classify_op(context: &str, err: kube::Error) -> EngineError {
    match &err {
        kube::Error::Api(status) if status.code == 404 => {
            EngineError::new(aenv_core::ErrorKind::NotFound, format!("{context}: {}", status.message)).with_source(err)
        }
        kube::Error::UpgradeConnection(_) => EngineError::transient(format!(
            "{context}: the API server did not open the exec stream ({err}); it must speak the v5.channel.k8s.io or v4.channel.k8s.io WebSocket protocol"
        ))
        .with_source(err),
        _ => classify(context, err),
    }
}
