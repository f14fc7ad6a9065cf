//! A service's storage on Docker: a named local volume. The spec names it as the core names it
//! (`aenv-pvc-[<owner hash>-]<pvc>`, [`aenv_core::envservice::volume_name`]); the Docker volume behind it is scoped
//! to the operator too (`aenv-pvc-<operator hash>-…`), made by the operator with its labels before the first
//! mount, so that two operators on one daemon (or a lost store and its successor) never mount one another's data,
//! and a removal (`deleteStorage=true`) takes only a volume the labels say this operator made.
//!
//! Upgrade: a volume of the name before the operator id is used while a container of this operator mounts it (a
//! service's replicas carry on with their data, a rolling update's new replica included). Such a volume carries no
//! labels (Docker made it on the first mount), so nothing proves who made it once no container mounts it: it is
//! then never removed, and never mounted again (docs/services.md says how to move its data).

use std::collections::HashMap;

use aenv_core::{EngineError, labels};
use bollard::{
    Docker,
    models::VolumeCreateRequest,
    query_parameters::{ListContainersOptionsBuilder, RemoveVolumeOptionsBuilder},
};
use tracing::{info, warn};

use crate::{
    error::{classify, is_not_found},
    network::short_hash,
};

/// Prefix of a service's volume (the core's name for it).
const SERVICE_VOLUME_PREFIX: &str = "aenv-pvc-";

/// Label on volumes the operator made for a service's storage (value: the operator id).
pub const VOLUME_LABEL: &str = "aenv.io/volume-of";

/// The Docker volume behind a spec's volume `name` on the operator `operator_id`: a service's storage
/// (`aenv-pvc-…`) scoped to the operator; any other name (an object written around the API) as it is.
pub fn scoped(operator_id: &str, name: &str) -> String {
    match name.strip_prefix(SERVICE_VOLUME_PREFIX) {
        Some(rest) => format!("{SERVICE_VOLUME_PREFIX}{}-{rest}", short_hash(&[operator_id])),
        None => name.to_string(),
    }
}

/// The operator id a volume's labels name; `None` when it is gone or carries none.
pub async fn made_by_of(docker: &Docker, name: &str) -> Result<Option<String>, EngineError> {
    match docker.inspect_volume(name).await {
        Ok(v) => Ok(v.labels.get(labels::OPERATOR_ID).cloned()),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(classify(&format!("inspecting volume {name}"), e)),
    }
}

/// Whether a container of the operator `operator_id` (any state) mounts the volume.
async fn mounted_by(docker: &Docker, name: &str, operator_id: &str) -> Result<bool, EngineError> {
    let filters = HashMap::from([
        ("volume".to_string(), vec![name.to_string()]),
        ("label".to_string(), vec![format!("{}={operator_id}", labels::OPERATOR_ID)]),
    ]);
    let options = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
    let found = docker
        .list_containers(Some(options))
        .await
        .map_err(|e| classify(&format!("listing containers on {name}"), e))?;
    Ok(!found.is_empty())
}

/// The Docker volume a container mounts for the spec's volume `name`, made (labelled as this operator's) when it
/// is missing. See the module's doc for the volume of the name before the operator id.
pub async fn prepare(
    docker: &Docker,
    operator_id: &str,
    owner: Option<&str>,
    name: &str,
) -> Result<String, EngineError> {
    let volume = scoped(operator_id, name);
    if volume == name {
        return Ok(volume);
    }
    match made_by_of(docker, &volume).await? {
        Some(id) if id == operator_id => return Ok(volume),
        _ => {}
    }
    if mounted_by(docker, name, operator_id).await? {
        return Ok(name.to_string());
    }
    let labels: HashMap<String, String> = [
        (labels::MANAGED_BY, labels::MANAGED_BY_VALUE),
        (labels::OPERATOR_ID, operator_id),
        (VOLUME_LABEL, operator_id),
    ]
    .into_iter()
    .chain(owner.map(|o| (labels::OWNER, o)))
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    // Creating a local volume that exists returns it as it is: the labels then tell whose it is.
    let request = VolumeCreateRequest {
        name: Some(volume.clone()),
        driver: Some("local".into()),
        labels: Some(labels),
        ..Default::default()
    };
    let created = docker.create_volume(request).await.map_err(|e| classify(&format!("creating volume {volume}"), e))?;
    if created.labels.get(labels::OPERATOR_ID).map(String::as_str) != Some(operator_id) {
        return Err(EngineError::permanent(format!(
            "volume {volume} (a name this operator gives its services' storage) exists on the Docker host and was not created by this operator (id {operator_id}): remove it, or move its data and remove it"
        )));
    }
    Ok(volume)
}

/// Removes a service's storage (`deleteStorage=true`): the volume of today's name when this operator made it.
/// Another operator's volume, or one without labels (of the name before the operator id), stays.
pub async fn remove_service_volume(docker: &Docker, operator_id: &str, name: &str) -> Result<(), EngineError> {
    let volume = scoped(operator_id, name);
    match made_by_of(docker, &volume).await? {
        Some(id) if id == operator_id => {
            let options = RemoveVolumeOptionsBuilder::default().force(false).build();
            match docker.remove_volume(&volume, Some(options)).await {
                Ok(()) => info!(volume = %volume, "service storage removed"),
                Err(e) if is_not_found(&e) => {}
                Err(e) => {
                    return Err(
                        classify(&format!("removing volume {volume}"), e).as_kind(aenv_core::ErrorKind::Transient)
                    );
                }
            }
        }
        Some(other) => warn!(volume = %volume, operator_id = %other, "not removing a volume another operator made"),
        None => {}
    }
    if volume != name && docker.inspect_volume(name).await.is_ok() {
        warn!(
            volume = %name,
            "a volume of the name before the operator id stays: nothing says which operator made it (remove it by hand once its data is saved)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_volumes_are_per_operator_other_names_as_named() {
        let a = scoped("op1", "aenv-pvc-0123456789abcdef-data");
        assert!(a.starts_with("aenv-pvc-") && a.ends_with("-0123456789abcdef-data"), "{a}");
        assert_ne!(a, scoped("op2", "aenv-pvc-0123456789abcdef-data"), "two operators, two volumes");
        assert_ne!(a, "aenv-pvc-0123456789abcdef-data");
        assert_eq!(scoped("op1", "team-data"), "team-data");
    }
}
