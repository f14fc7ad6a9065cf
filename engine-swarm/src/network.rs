//! The overlay networks instances join: the operator's (`--swarm-network`), and with tokens on each owner's own
//! (`aenv-o-<hash>`, as on the Docker engine), so that two tenants' sandboxes never share a network. Each is made
//! attachable (an operator running in a container on a manager joins it to reach instances) and labelled as the
//! operator's.

use std::collections::HashMap;

use aenv_core::{EngineError, labels};
use aenv_engine_docker::{NETWORK_LABEL, classify, is_conflict, is_not_found};
use bollard::{Docker, models::NetworkCreateRequest, query_parameters::InspectNetworkOptionsBuilder};

/// The overlay network's id, made if it is missing. One that exists is used as it is: the operator's network
/// may be made beforehand (by the stack file that deploys the operator).
pub(crate) async fn ensure(
    docker: &Docker,
    name: &str,
    operator_id: &str,
    owner: Option<&str>,
) -> Result<String, EngineError> {
    if let Some(id) = inspect(docker, name).await? {
        return Ok(id);
    }
    let request = NetworkCreateRequest {
        name: name.to_string(),
        driver: Some("overlay".into()),
        attachable: Some(true),
        labels: Some(
            [
                (labels::MANAGED_BY, labels::MANAGED_BY_VALUE),
                (labels::OPERATOR_ID, operator_id),
                (NETWORK_LABEL, operator_id),
            ]
            .into_iter()
            .chain(owner.map(|o| (labels::OWNER, o)))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<HashMap<_, _>>(),
        ),
        ..Default::default()
    };
    match docker.create_network(request).await {
        Ok(created) => Ok(created.id),
        // Made at the same moment by another instance's apply.
        Err(e) if is_conflict(&e) => inspect(docker, name)
            .await?
            .ok_or_else(|| EngineError::transient(format!("network {name} was made and removed meanwhile; retrying"))),
        Err(e) => Err(classify(&format!("creating overlay network {name}"), e)),
    }
}

async fn inspect(docker: &Docker, name: &str) -> Result<Option<String>, EngineError> {
    let options = InspectNetworkOptionsBuilder::default().scope("swarm").build();
    match docker.inspect_network(name, Some(options)).await {
        Ok(n) if n.scope.as_deref() == Some("swarm") => Ok(n.id),
        Ok(_) => Err(EngineError::permanent(format!(
            "network {name} exists but is not a Swarm (overlay) network: choose another --swarm-network or deployConfig.network"
        ))),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(classify(&format!("inspecting network {name}"), e)),
    }
}
