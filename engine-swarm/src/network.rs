//! The overlay networks instances join: the operator's (`--swarm-network`), and with tokens on each owner's own
//! (`aenv-o-<hash of operator id and owner>`, as on the Docker engine), so that two tenants' sandboxes never share a network. Each is made
//! attachable (an operator running in a container on a manager joins it to reach instances) and labelled as the
//! operator's.

use aenv_core::EngineError;
use aenv_engine_docker::{classify, is_conflict, is_not_found, made_by, shared_network_labels};
use bollard::{Docker, models::NetworkCreateRequest, query_parameters::InspectNetworkOptionsBuilder};

/// The overlay network's id, made if it is missing. One that exists but was not made by this operator is joined
/// only when `foreign_ok` says so (the operator's own `--swarm-network`, which the stack file that deploys the
/// operator may make beforehand; or `--allow external-networks`): a sandbox must not join a team's application
/// network because a request named it.
pub(crate) async fn ensure(
    docker: &Docker,
    name: &str,
    operator_id: &str,
    owner: Option<&str>,
    foreign_ok: impl FnOnce() -> Result<(), EngineError>,
) -> Result<String, EngineError> {
    if let Some((id, ours)) = inspect(docker, name, operator_id).await? {
        if !ours {
            foreign_ok()?;
        }
        return Ok(id);
    }
    let request = NetworkCreateRequest {
        name: name.to_string(),
        driver: Some("overlay".into()),
        attachable: Some(true),
        labels: Some(shared_network_labels(operator_id, owner)),
        ..Default::default()
    };
    match docker.create_network(request).await {
        Ok(created) => Ok(created.id),
        // Made at the same moment by another instance's apply.
        Err(e) if is_conflict(&e) => inspect(docker, name, operator_id)
            .await?
            .map(|(id, _)| id)
            .ok_or_else(|| EngineError::transient(format!("network {name} was made and removed meanwhile; retrying"))),
        Err(e) => Err(classify(&format!("creating overlay network {name}"), e)),
    }
}

/// The overlay's id when it exists and this operator made it.
pub(crate) async fn ours(docker: &Docker, name: &str, operator_id: &str) -> Result<Option<String>, EngineError> {
    match docker.inspect_network(name, Some(InspectNetworkOptionsBuilder::default().scope("swarm").build())).await {
        Ok(n) if n.scope.as_deref() == Some("swarm") && made_by(n.labels.as_ref(), operator_id) => Ok(n.id),
        Ok(_) => Ok(None),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(classify(&format!("inspecting network {name}"), e)),
    }
}

/// The network's id and whether this operator made it; `None` when there is none.
async fn inspect(docker: &Docker, name: &str, operator_id: &str) -> Result<Option<(String, bool)>, EngineError> {
    let options = InspectNetworkOptionsBuilder::default().scope("swarm").build();
    match docker.inspect_network(name, Some(options)).await {
        Ok(n) if n.scope.as_deref() == Some("swarm") => {
            let ours = made_by(n.labels.as_ref(), operator_id);
            Ok(n.id.map(|id| (id, ours)))
        }
        Ok(_) => Err(EngineError::permanent(format!(
            "network {name} exists but is not a Swarm (overlay) network: choose another --swarm-network or deployConfig.network"
        ))),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(classify(&format!("inspecting network {name}"), e)),
    }
}
