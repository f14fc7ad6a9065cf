//! User networks: created on demand when an instance names one, labelled as the operator's, and removed when the
//! last instance on them goes (or, should that removal be missed, by the resync's sweep once no container is on
//! them). `bridge`, `none` and `host` are Docker's own and never created or removed.
//!
//! Owner networks: with tokens on, an owner's sandboxes never share a network with another owner's. Each owner
//! gets `aenv-o-<hash of the owner>` in place of the default bridge, and a network it names (`lab`) becomes
//! `aenv-o-<hash>-lab`, so two owners naming `lab` land on two networks. Docker isolates bridge networks from each
//! other; the host (the operator's probe and proxy) still reaches every container IP.

use std::collections::HashMap;

use aenv_core::{EngineError, labels};
use bollard::{Docker, models::NetworkCreateRequest, query_parameters::ListContainersOptionsBuilder};
use sha2::{Digest, Sha256};

use crate::error::{classify, is_conflict, is_not_found};

/// Label on networks the operator created (value: the operator id).
pub const NETWORK_LABEL: &str = "aenv.io/network-of";

/// The labels of a network the operator makes for instances to share: the operator's, and the owner it is scoped
/// to, if any.
pub fn shared_network_labels(operator_id: &str, owner: Option<&str>) -> HashMap<String, String> {
    [(labels::MANAGED_BY, labels::MANAGED_BY_VALUE), (labels::OPERATOR_ID, operator_id), (NETWORK_LABEL, operator_id)]
        .into_iter()
        .chain(owner.map(|o| (labels::OWNER, o)))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Whether a network with these labels was made by the operator `operator_id`.
pub fn made_by(labels: Option<&HashMap<String, String>>, operator_id: &str) -> bool {
    labels.and_then(|l| l.get(NETWORK_LABEL)).is_some_and(|id| id == operator_id)
}

/// Docker's built-in network modes.
pub fn is_builtin(name: &str) -> bool {
    matches!(name, "bridge" | "none" | "host" | "default")
}

/// Prefix of owner networks.
pub const OWNER_PREFIX: &str = "aenv-o-";

/// The Docker network an instance of `owner` joins when its spec (or the operator) names `network`: Docker's
/// `none` and `host` as they are; the default bridge becomes the owner's own network; any other name is scoped to
/// the owner. The hash (not the owner's name) keeps the name short and valid whatever the owner is called.
pub fn owner_scoped(owner: &str, network: &str) -> String {
    let digest = Sha256::digest(owner.as_bytes());
    let hash: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    match network {
        "none" | "host" => network.to_string(),
        "bridge" | "default" => format!("{OWNER_PREFIX}{hash}"),
        named => format!("{OWNER_PREFIX}{hash}-{named}"),
    }
}

/// Makes sure the user network exists, labelled with the operator's id (and the owner it is scoped to, if any). A
/// network that exists but was not created by this operator is used as it is (the policy decides beforehand
/// whether that is allowed).
pub async fn ensure(docker: &Docker, name: &str, operator_id: &str, owner: Option<&str>) -> Result<(), EngineError> {
    match docker.inspect_network(name, None).await {
        Ok(_) => return Ok(()),
        Err(e) if is_not_found(&e) => {}
        Err(e) => return Err(classify(&format!("inspecting network {name}"), e)),
    }
    let request = NetworkCreateRequest {
        name: name.to_string(),
        driver: Some("bridge".into()),
        labels: Some(shared_network_labels(operator_id, owner)),
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
        Ok(n) => Ok(Some(made_by(n.labels.as_ref(), operator_id))),
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
    let ours = made_by(network.labels.as_ref(), operator_id);
    if !ours || network.containers.as_ref().is_some_and(|c| !c.is_empty()) {
        return Ok(());
    }
    // The network lists only the endpoints of running containers: one created on it but not started yet (an
    // instance being made) would lose its network and fail to start. The container list knows it.
    let filters = HashMap::from([("network".to_string(), vec![name.to_string()])]);
    let options = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
    let attached = docker
        .list_containers(Some(options))
        .await
        .map_err(|e| classify(&format!("listing containers on {name}"), e))?;
    if !attached.is_empty() {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_networks_are_per_owner_and_keep_docker_s_modes() {
        let alice = owner_scoped("alice", "bridge");
        assert!(alice.starts_with(OWNER_PREFIX) && alice.len() == OWNER_PREFIX.len() + 12, "{alice}");
        assert_eq!(owner_scoped("alice", "default"), alice);
        assert_ne!(owner_scoped("bob", "bridge"), alice, "two owners, two networks");
        assert_eq!(owner_scoped("alice", "lab"), format!("{alice}-lab"));
        assert_ne!(owner_scoped("alice", "lab"), owner_scoped("bob", "lab"));
        assert_eq!(owner_scoped("alice", "none"), "none");
        assert_eq!(owner_scoped("alice", "host"), "host");
        // Whatever the owner's name holds, the network's name is valid.
        let odd = owner_scoped("Ünïcode owner/with spaces", "bridge");
        assert!(odd.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'), "{odd}");
    }
}
