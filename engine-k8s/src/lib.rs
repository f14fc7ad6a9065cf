//! The aenv [`Engine`](aenv_core::Engine) over the Kubernetes API: one Pod per instance, in a sandbox namespace,
//! named by the instance id, as AEnvironment's controller makes them (labels `business/aenv-name`, `-version`,
//! `-ttl`, `-owner`), plus the label schema of [`aenv_core::labels`] so that a restarted operator and the orphan
//! sweep find what this operator made with one list call.

mod engine;
mod error;
mod ops;
mod pod;

pub use engine::{KubeEngine, KubeEngineConfig};
pub use error::{Error, api_code};
pub use pod::{
    AENV_NAME_LABEL, AENV_OWNER_LABEL, AENV_TTL_LABEL, AENV_VERSION_LABEL, CONTAINER_NAME, EXPIRE_AT_ANNOTATION,
    OWNER_ANNOTATION, cpu_quantity, is_valid_label_value, memory_quantity, observe, pod_for,
};
