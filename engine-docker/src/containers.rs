//! The container calls both the single-container engine and compose stacks make: inspect and remove.

use aenv_core::EngineError;
use bollard::{Docker, models::ContainerInspectResponse, query_parameters::RemoveContainerOptionsBuilder};

use crate::error::{classify, is_conflict, is_not_found};

/// The container named (or with id) `name`; `None` when there is none.
pub(crate) async fn inspect(docker: &Docker, name: &str) -> Result<Option<ContainerInspectResponse>, EngineError> {
    match docker.inspect_container(name, None).await {
        Ok(c) => Ok(Some(c)),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(classify(&format!("inspecting container {name}"), e)),
    }
}

/// How a removal ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Removal {
    /// The container is gone (or never was).
    Gone,
    /// The daemon is removing it already (409): it will be gone shortly.
    InProgress,
}

/// Kills and removes a container at once (sandboxes get no grace period), with its anonymous volumes.
pub(crate) async fn remove(docker: &Docker, name: &str) -> Result<Removal, EngineError> {
    let options = RemoveContainerOptionsBuilder::default().force(true).v(true).build();
    match docker.remove_container(name, Some(options)).await {
        Ok(()) => Ok(Removal::Gone),
        Err(e) if is_not_found(&e) => Ok(Removal::Gone),
        Err(e) if is_conflict(&e) => Ok(Removal::InProgress),
        Err(e) => Err(classify(&format!("removing container {name}"), e)),
    }
}
