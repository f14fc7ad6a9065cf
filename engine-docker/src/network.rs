//! User networks: created on demand when an instance names one, labelled as the operator's, and removed when the
//! last instance on them goes (or, should that removal be missed, by the resync's sweep once no container is on
//! them). `bridge`, `none` and `host` are Docker's own and never created or removed.
//!
//! Owner networks: with tokens on, an owner's sandboxes never share a network with another owner's. Each owner
//! gets `aenv-o-<hash>` in place of the default bridge, and a network it names (`lab`) becomes `aenv-o-<hash>-lab`,
//! so two owners naming `lab` land on two networks. Docker isolates bridge networks from each other; the host (the
//! operator's probe and proxy) still reaches every container IP.
//!
//! The hash is of the operator id *and* the owner: two operators on one daemon, or one operator whose store was
//! lost (a new id), give one owner two different networks, so that what another operator made (or left behind) is
//! never in the way of a create and never shared. A service's network without an owner (`aenv-svc-<service>`) is
//! scoped to the operator the same way. Names of the scheme before the operator id ([`legacy_scoped`]) made by this
//! operator keep serving until they are unused, so an upgrade moves nothing that runs.

use std::collections::HashMap;

use aenv_core::{EngineError, envservice::service_of_network, labels};
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

/// Whether a network with these labels is one some aenv operator made for instances to share (any operator id).
pub fn made_by_any(labels: Option<&HashMap<String, String>>) -> bool {
    labels.is_some_and(|l| {
        l.contains_key(NETWORK_LABEL) && l.get(labels::MANAGED_BY).map(String::as_str) == Some(labels::MANAGED_BY_VALUE)
    })
}

/// Docker's built-in network modes.
pub fn is_builtin(name: &str) -> bool {
    matches!(name, "bridge" | "none" | "host" | "default")
}

/// Prefix of owner networks.
pub const OWNER_PREFIX: &str = "aenv-o-";

/// 12 hex digits of SHA-256 over `parts`, each length-prefixed (so that no two lists of parts hash alike by
/// moving a boundary): short, valid in any Docker name, stable across builds.
pub fn short_hash(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    hasher.finalize().iter().take(6).map(|b| format!("{b:02x}")).collect()
}

/// The Docker network an instance of `owner` (with owner networks on; `None` otherwise) joins when its spec (or
/// the operator) names `network`, on the operator `operator_id`: Docker's `none` and `host` as they are; with an
/// owner the default bridge becomes the owner's own network and any other name is scoped to the owner; without
/// one a service's network is scoped to the operator and any other name is used as it is. The hash (not the
/// owner's name) keeps the name short and valid whatever the owner is called.
pub fn scoped(operator_id: &str, owner: Option<&str>, network: &str) -> String {
    match (owner, network) {
        (_, "none" | "host") => network.to_string(),
        (Some(owner), "bridge" | "default") => format!("{OWNER_PREFIX}{}", short_hash(&[operator_id, owner])),
        (Some(owner), named) => format!("{OWNER_PREFIX}{}-{named}", short_hash(&[operator_id, owner])),
        (None, named) => match service_of_network(named) {
            Some(service) => {
                format!("{}{}-{service}", aenv_core::envservice::SERVICE_NETWORK_PREFIX, short_hash(&[operator_id]))
            }
            None => named.to_string(),
        },
    }
}

/// The name [`scoped`] gave before names carried the operator id, when it differs from today's: an upgraded
/// operator keeps using such a network while it made it and it exists.
pub fn legacy_scoped(operator_id: &str, owner: Option<&str>, network: &str) -> Option<String> {
    let legacy = match (owner, network) {
        (_, "none" | "host") => return None,
        (Some(owner), named) => {
            let digest = Sha256::digest(owner.as_bytes());
            let hash: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
            match named {
                "bridge" | "default" => format!("{OWNER_PREFIX}{hash}"),
                named => format!("{OWNER_PREFIX}{hash}-{named}"),
            }
        }
        (None, named) => named.to_string(),
    };
    (legacy != scoped(operator_id, owner, network)).then_some(legacy)
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

/// Whose networks a removal may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Maker<'a> {
    /// Only those the operator of this id made.
    Operator(&'a str),
    /// Those any aenv operator made for instances to share (a sweep of leftovers: a lost store's, another
    /// operator's), never a network no aenv operator labelled.
    AnyOperator,
}

/// Removes the network if `maker` made it and no container is attached any more.
pub async fn remove_if_unused(docker: &Docker, name: &str, maker: Maker<'_>) -> Result<(), EngineError> {
    if is_builtin(name) {
        return Ok(());
    }
    let network = match docker.inspect_network(name, None).await {
        Ok(n) => n,
        Err(e) if is_not_found(&e) => return Ok(()),
        Err(e) => return Err(classify(&format!("inspecting network {name}"), e)),
    };
    let ours = match maker {
        Maker::Operator(operator_id) => made_by(network.labels.as_ref(), operator_id),
        Maker::AnyOperator => made_by_any(network.labels.as_ref()),
    };
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
    fn owner_networks_are_per_owner_and_operator_and_keep_docker_s_modes() {
        let alice = scoped("op1", Some("alice"), "bridge");
        assert!(alice.starts_with(OWNER_PREFIX) && alice.len() == OWNER_PREFIX.len() + 12, "{alice}");
        assert_eq!(scoped("op1", Some("alice"), "default"), alice);
        assert_ne!(scoped("op1", Some("bob"), "bridge"), alice, "two owners, two networks");
        assert_ne!(scoped("op2", Some("alice"), "bridge"), alice, "two operators, two networks for one owner");
        assert_eq!(scoped("op1", Some("alice"), "lab"), format!("{alice}-lab"));
        assert_ne!(scoped("op1", Some("alice"), "lab"), scoped("op1", Some("bob"), "lab"));
        assert_ne!(scoped("op1", Some("alice"), "lab"), scoped("op2", Some("alice"), "lab"));
        assert_eq!(scoped("op1", Some("alice"), "none"), "none");
        assert_eq!(scoped("op1", Some("alice"), "host"), "host");
        // No boundary games: operator "a" with owner "bc" is not operator "ab" with owner "c".
        assert_ne!(scoped("a", Some("bc"), "bridge"), scoped("ab", Some("c"), "bridge"));
        // Whatever the owner's name holds, the network's name is valid.
        let odd = scoped("op1", Some("Ünïcode owner/with spaces"), "bridge");
        assert!(odd.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'), "{odd}");
        // Without an owner: a service's network is the operator's own; other names are as named.
        let svc = scoped("op1", None, "aenv-svc-web");
        assert!(svc.starts_with("aenv-svc-") && svc.ends_with("-web") && svc != "aenv-svc-web", "{svc}");
        assert_ne!(svc, scoped("op2", None, "aenv-svc-web"));
        assert_eq!(scoped("op1", None, "lab"), "lab");
        assert_eq!(scoped("op1", None, "bridge"), "bridge");
    }

    #[test]
    fn legacy_names_are_the_names_before_the_operator_id() {
        // What the scheme before gave alice (sha256("alice"), 6 bytes): fixed here, as networks on daemons have it.
        assert_eq!(legacy_scoped("op1", Some("alice"), "bridge").as_deref(), Some("aenv-o-2bd806c97f0e"));
        assert_eq!(legacy_scoped("op1", Some("alice"), "lab").as_deref(), Some("aenv-o-2bd806c97f0e-lab"));
        assert_eq!(legacy_scoped("op1", None, "aenv-svc-web").as_deref(), Some("aenv-svc-web"));
        assert_eq!(legacy_scoped("op1", None, "lab"), None, "unchanged: nothing to migrate");
        assert_eq!(legacy_scoped("op1", Some("alice"), "none"), None);
    }
}
