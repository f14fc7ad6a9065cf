//! User networks: created on demand when an instance names one, labelled as the operator's, and removed when the
//! last instance on them goes. `bridge`, `none` and `host` are Docker's own and never created or removed.

use std::collections::HashMap;

use aenv_core::{EngineError, labels};
use bollard::{Docker, models::NetworkCreateRequest};

use crate::error::{classify, is_conflict, is_not_found};

/// Label on networks the operator created (value: the operator id).
pub const NETWORK_LABEL: &str = "aenv.io/network-of";

/// Docker's built-in network modes.
pub fn is_builtin(name: &str) -> bool {
    matches!(name, "bridge" | "none" | "host" | "default")
}

/// Makes sure the user network exists. A network that exists but was not created by this operator is used as it
/// is (the policy decides beforehand whether that is allowed).
pub async fn ensure(docker: &Docker, name: &str, operator_id: &str) -> Result<(), EngineError> {
    match docker.inspect_network(name, None).await {
        Ok(_) => return Ok(()),
        Err(e) if is_not_found(&e) => {}
        Err(e) => return Err(classify(&format!("inspecting network {name}"), e)),
    }
    let request = NetworkCreateRequest {
        name: name.to_string(),
        driver: Some("bridge".into()),
        labels: Some(HashMap::from([
            (labels::MANAGED_BY.to_string(), labels::MANAGED_BY_VALUE.to_string()),
            (labels::OPERATOR_ID.to_string(), operator_id.to_string()),
            (NETWORK_LABEL.to_string(), operator_id.to_string()),
        ])),
        ..Default::default()
    };
    match docker.create_network(request).await {
        Ok(_) => Ok(()),
        // Another instance created it at the same moment.
        Err(e) if is_conflict(&e) => Ok(()),
        Err(e) => Err(classify(&format!("creating network {name}"), e)),
    }
}

/// Whether an existing network was created by this operator.
pub async fn is_ours(docker: &Docker, name: &str, operator_id: &str) -> Result<Option<bool>, EngineError> {
    match docker.inspect_network(name, None).await {
        Ok(n) => Ok(Some(n.labels.unwrap_or_default().get(NETWORK_LABEL).is_some_and(|id| id == operator_id))),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(classify(&format!("inspecting network {name}"), e)),
    }
}

/// Removes the network if this operator created it and no container is attached any more.
pub async fn remove_if_unused(docker: &Docker, name: &str, operator_id: &str) -> Result<(), EngineError> {
    if is_builtin(name) {
        return Ok(());
    }
    let network = match docker.inspect_network(name, None).await {
        Ok(n) => n,
        Err(e) if is_not_found(&e) => return Ok(()),
        Err(e) => return Err(classify(&format!("inspecting network {name}"), e)),
    };
    let ours = network.labels.as_ref().and_then(|l| l.get(NETWORK_LABEL)).is_some_and(|id| id == operator_id);
    if !ours || network.containers.as_ref().is_some_and(|c| !c.is_empty()) {
        return Ok(());
    }
    match docker.remove_network(name).await {
        Ok(()) => Ok(()),
        // Gone already, or an instance joined it in the meantime (403/409: still in use).
        Err(e) if is_not_found(&e) || is_conflict(&e) => Ok(()),
        Err(bollard::errors::Error::DockerResponseServerError { status_code: 403, .. }) => Ok(()),
        Err(e) => Err(classify(&format!("removing network {name}"), e)),
    }
}
