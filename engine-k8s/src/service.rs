//! An `EnvService` as Kubernetes runs services, as AEnvironment's controller makes them: a Deployment of the
//! replicas, a ClusterIP Service on the service's port, and (with storage) a PersistentVolumeClaim the replicas
//! mount. Pure functions, so that the shapes and the status mapping are tested without an API server.

use std::collections::BTreeMap;

use aenv_core::{
    EngineError, EnvInstance, EnvInstanceSpec, EnvService, EnvServiceStatus, ServicePhase,
    envservice::SERVICE_LABEL,
    labels,
    quantity::{parse_cpu_millis, parse_memory_bytes},
};
use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment},
        core::v1::{
            ContainerPort, PersistentVolumeClaim, PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource,
            PodTemplateSpec, Service, ServicePort, ServiceSpec, Volume, VolumeMount, VolumeResourceRequirements,
        },
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference},
        util::intstr::IntOrString,
    },
};
use kube::Resource;

use crate::{
    KubeEngineConfig,
    pod::{AENV_NAME_LABEL, AENV_OWNER_LABEL, AENV_VERSION_LABEL, OWNER_ANNOTATION, is_valid_label_value, pod_for},
};

/// The size of a claim made for a service with `pvcName` but no `storageSize`.
pub const DEFAULT_STORAGE_SIZE: &str = "1Gi";
/// Annotation of a Deployment: a hash of the spec the operator last wrote, so that a look that finds it
/// unchanged writes nothing.
pub const SPEC_HASH_ANNOTATION: &str = "aenv.io/spec-hash";
/// The name of the storage volume in the Pod template (AEnvironment's).
pub const DATA_VOLUME: &str = "data";

fn permanent(e: aenv_core::Error) -> EngineError {
    EngineError::permanent(e.to_string())
}

/// The labels that select a service's Pods (the Deployment's selector and the Service's): never changed once
/// made, since a Deployment's selector is immutable.
pub fn selector(name: &str, config: &KubeEngineConfig) -> BTreeMap<String, String> {
    BTreeMap::from([
        (labels::OPERATOR_ID.to_string(), config.operator_id.clone()),
        (SERVICE_LABEL.to_string(), name.to_string()),
    ])
}

/// The labels of a service's objects: the operator's bookkeeping (without `aenv.io/instance`, so that the Pod
/// engine's sweep never takes a replica Pod for an orphan instance), the service, and AEnvironment's.
fn object_labels(svc: &EnvService, replica: &EnvInstanceSpec, config: &KubeEngineConfig) -> BTreeMap<String, String> {
    let mut out = BTreeMap::from([
        (labels::MANAGED_BY.to_string(), labels::MANAGED_BY_VALUE.to_string()),
        (labels::OPERATOR_ID.to_string(), config.operator_id.clone()),
        (labels::NAMESPACE.to_string(), svc.metadata.namespace.clone().unwrap_or_default()),
        (SERVICE_LABEL.to_string(), svc.metadata.name.clone().unwrap_or_default()),
        (AENV_NAME_LABEL.to_string(), replica.env_name.clone()),
        (AENV_VERSION_LABEL.to_string(), replica.env_version.clone()),
        ("app.kubernetes.io/name".to_string(), "aenv-service".to_string()),
        ("app.kubernetes.io/managed-by".to_string(), "aenv-operator".to_string()),
    ]);
    if let Some(owner) = svc.spec.owner.as_deref().filter(|o| !o.is_empty() && is_valid_label_value(o)) {
        out.insert(AENV_OWNER_LABEL.to_string(), owner.to_string());
        out.insert(labels::OWNER.to_string(), owner.to_string());
    }
    out.retain(|_, v| is_valid_label_value(v));
    out
}

fn object_meta(name: &str, svc: &EnvService, replica: &EnvInstanceSpec, config: &KubeEngineConfig) -> ObjectMeta {
    let annotations = svc
        .spec
        .owner
        .as_ref()
        .filter(|o| !o.is_empty())
        .map(|o| BTreeMap::from([(OWNER_ANNOTATION.to_string(), o.clone())]));
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(config.namespace.clone()),
        labels: Some(object_labels(svc, replica, config)),
        annotations,
        ..Default::default()
    }
}

/// An owner reference to the EnvService, so that Kubernetes' garbage collector removes the Deployment and the
/// Service with it: only for a service in the sandbox namespace that lives in the API server (the Kubernetes
/// store), as for Pods.
fn owner_reference(svc: &EnvService, config: &KubeEngineConfig) -> Option<Vec<OwnerReference>> {
    let same_namespace = svc.metadata.namespace.as_deref() == Some(config.namespace.as_str());
    match (&svc.metadata.uid, config.owner_references && same_namespace) {
        (Some(uid), true) => Some(vec![OwnerReference {
            api_version: EnvService::api_version(&()).into_owned(),
            kind: EnvService::kind(&()).into_owned(),
            name: svc.metadata.name.clone().unwrap_or_default(),
            uid: uid.clone(),
            controller: Some(true),
            block_owner_deletion: None,
        }]),
        _ => None,
    }
}

/// The claim behind the service's storage: named as the Docker volume is (`aenv-pvc-[<owner hash>-]<pvcName>`,
/// so that a tenant's `pvcName` never reaches another tenant's claim), ReadWriteOnce, of `storageSize` (1Gi when
/// none was given). It has no owner reference: it outlives the service unless deleted with `deleteStorage=true`.
pub fn pvc_for(
    svc: &EnvService,
    replica: &EnvInstanceSpec,
    config: &KubeEngineConfig,
) -> Result<Option<PersistentVolumeClaim>, EngineError> {
    let Some(volume) = svc.spec.volume() else { return Ok(None) };
    let size = crate::memory_quantity(svc.spec.storage_size.as_deref().unwrap_or(DEFAULT_STORAGE_SIZE))
        .map_err(|e| EngineError::permanent(format!("storageSize: {e}")))?;
    Ok(Some(PersistentVolumeClaim {
        metadata: object_meta(&volume.name, svc, replica, config),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_string(), size)])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: None,
    }))
}

/// The ClusterIP Service in front of the replicas, named as the service: its DNS name in the cluster is the
/// service's (`<name>.<namespace>.svc.cluster.local`), port = targetPort = the service's `port`.
pub fn k8s_service_for(svc: &EnvService, replica: &EnvInstanceSpec, config: &KubeEngineConfig) -> Service {
    let name = svc.metadata.name.clone().unwrap_or_default();
    let mut metadata = object_meta(&name, svc, replica, config);
    metadata.owner_references = owner_reference(svc, config);
    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector(&name, config)),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: i32::from(svc.spec.port),
                target_port: Some(IntOrString::Int(i32::from(svc.spec.port))),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

/// FNV-1a, 64 bits, of the JSON of `value`: stable across builds and platforms.
fn spec_hash(value: &impl serde::Serialize) -> String {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3));
    format!("{hash:016x}")
}

/// The Deployment of the replicas: `replicas` Pods of the template the Pod engine builds for an instance
/// ([`pod_for`]: image, arguments, variables, readiness probe, no service-account token), restarted in place
/// (`restartPolicy: Always`), rolled with `maxUnavailable: 0, maxSurge: 1` (a new replica ready before an old
/// one goes), with the service's limits, requests and ephemeral storage on the container and the claim mounted.
pub fn deployment_for(
    svc: &EnvService,
    replica: &EnvInstanceSpec,
    config: &KubeEngineConfig,
) -> Result<Deployment, EngineError> {
    let name = svc.metadata.name.clone().unwrap_or_default();
    // The Pod an instance of the replica spec would be (its storage is the claim, below, not a Docker volume).
    let mut spec = replica.clone();
    spec.volumes.clear();
    spec.ttl = None;
    let mut model = EnvInstance::new(&name, spec);
    model.metadata.namespace = svc.metadata.namespace.clone();
    let pod = pod_for(&model, config)?;
    let mut pod_labels = pod.metadata.labels.unwrap_or_default();
    pod_labels.remove(labels::INSTANCE);
    pod_labels.extend(selector(&name, config));
    let mut pod_spec = pod.spec.unwrap_or_default();
    pod_spec.restart_policy = Some("Always".into());
    if let Some(container) = pod_spec.containers.first_mut() {
        let ports = container.ports.get_or_insert_with(Vec::new);
        if !ports.iter().any(|p| p.container_port == i32::from(svc.spec.port)) {
            ports.push(ContainerPort {
                name: Some("http".into()),
                container_port: i32::from(svc.spec.port),
                protocol: Some("TCP".into()),
                ..Default::default()
            });
        }
        let resources = container.resources.get_or_insert_with(Default::default);
        let requests = resources.requests.get_or_insert_with(BTreeMap::new);
        if let Some(cpu) = svc.spec.requests.cpu.as_deref() {
            requests.insert("cpu".into(), crate::cpu_quantity(cpu).map_err(permanent)?);
        }
        if let Some(memory) = svc.spec.requests.memory.as_deref() {
            requests.insert("memory".into(), crate::memory_quantity(memory).map_err(permanent)?);
        }
        if let Some(q) = svc.spec.ephemeral_storage.request.as_deref() {
            requests.insert("ephemeral-storage".into(), crate::memory_quantity(q).map_err(permanent)?);
        }
        if let Some(q) = svc.spec.ephemeral_storage.limit.as_deref() {
            let q = crate::memory_quantity(q).map_err(permanent)?;
            resources.limits.get_or_insert_with(BTreeMap::new).insert("ephemeral-storage".into(), q);
        }
        if resources.requests.as_ref().is_some_and(BTreeMap::is_empty) {
            resources.requests = None;
        }
        if let Some(volume) = svc.spec.volume() {
            container.volume_mounts = Some(vec![VolumeMount {
                name: DATA_VOLUME.into(),
                mount_path: volume.mount_path.clone(),
                ..Default::default()
            }]);
            pod_spec.volumes = Some(vec![Volume {
                name: DATA_VOLUME.into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: volume.name.clone(),
                    read_only: None,
                }),
                ..Default::default()
            }]);
        }
    }
    let deployment_spec = DeploymentSpec {
        replicas: Some(i32::try_from(svc.spec.replicas).unwrap_or(i32::MAX)),
        selector: LabelSelector { match_labels: Some(selector(&name, config)), match_expressions: None },
        strategy: Some(DeploymentStrategy {
            type_: Some("RollingUpdate".into()),
            rolling_update: Some(RollingUpdateDeployment {
                max_unavailable: Some(IntOrString::Int(0)),
                max_surge: Some(IntOrString::Int(1)),
            }),
        }),
        revision_history_limit: Some(2),
        template: PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(pod_labels),
                annotations: pod.metadata.annotations,
                ..Default::default()
            }),
            spec: Some(pod_spec),
        },
        ..Default::default()
    };
    let mut metadata = object_meta(&name, svc, replica, config);
    metadata.owner_references = owner_reference(svc, config);
    metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(SPEC_HASH_ANNOTATION.into(), spec_hash(&deployment_spec));
    Ok(Deployment { metadata, spec: deployment_spec, status: None })
}

/// Whether `have` (as read) needs `want` written over it: another spec hash, or a replica count changed by hand
/// (`kubectl scale deployment`), which the service's count overrides.
pub fn deployment_differs(have: &Deployment, want: &Deployment) -> bool {
    let hash = |d: &Deployment| d.metadata.annotations.as_ref().and_then(|a| a.get(SPEC_HASH_ANNOTATION)).cloned();
    let replicas = |d: &Deployment| d.spec.replicas;
    hash(have) != hash(want) || replicas(have) != replicas(want)
}

/// The service's state as its Deployment reports it: `replicas` (live Pods), `availableReplicas` (ready),
/// `updatedReplicas` (of the current template); `Running` when all asked for are available and of the current
/// template, `Updating` while Pods of an older template are left, `Failed` when the Deployment says it cannot
/// progress (a quota's refusal, the progress deadline passed) with its reason as `lastError`, else `Pending`.
pub fn observe_deployment(deployment: &Deployment) -> EnvServiceStatus {
    let desired = deployment.spec.replicas.unwrap_or(1).max(0) as u32;
    let status = deployment.status.clone().unwrap_or_default();
    let count = |n: Option<i32>| n.unwrap_or(0).max(0) as u32;
    let (replicas, available, updated) =
        (count(status.replicas), count(status.available_replicas), count(status.updated_replicas));
    // A controller that has not seen the latest spec yet reports on the one before.
    let seen = match (deployment.metadata.generation, status.observed_generation) {
        (Some(generation), Some(observed)) => observed >= generation,
        (Some(_), None) => false,
        (None, _) => true,
    };
    let condition = |type_: &str| status.conditions.iter().flatten().find(|c| c.type_.as_deref() == Some(type_));
    let failure = match (condition("ReplicaFailure"), condition("Progressing")) {
        (Some(c), _) if c.status.as_deref() == Some("True") => Some(format!(
            "{}: {}",
            c.reason.as_deref().unwrap_or("ReplicaFailure"),
            c.message.clone().unwrap_or_default()
        )),
        (_, Some(c)) if c.status.as_deref() == Some("False") => Some(format!(
            "{}: {}",
            c.reason.as_deref().unwrap_or("ProgressDeadlineExceeded"),
            c.message.clone().unwrap_or_default()
        )),
        _ => None,
    };
    let old = replicas.saturating_sub(updated);
    let phase = if failure.is_some() && available < desired {
        ServicePhase::Failed
    } else if seen && old == 0 && updated >= desired && available >= desired {
        ServicePhase::Running
    } else if old > 0 || (!seen && replicas > 0) {
        ServicePhase::Updating
    } else {
        ServicePhase::Pending
    };
    EnvServiceStatus {
        phase,
        replicas,
        available_replicas: available,
        updated_replicas: updated,
        last_error: failure.filter(|_| phase != ServicePhase::Running),
    }
}

/// Checks what only Kubernetes judges of a service: its name must also be a Service's (a DNS-1035 label: it
/// starts with a letter), and its quantities must read as Kubernetes quantities.
pub fn check_service(name: &str, svc: &aenv_core::EnvServiceSpec) -> Result<(), aenv_core::InvalidSpec> {
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(aenv_core::InvalidSpec::new(
            "service_name",
            format!(
                "field `service_name`: {name:?} cannot name a Kubernetes Service, whose name starts with a letter; pick a name such as \"svc-{name}\""
            ),
        ));
    }
    let quantities = [
        ("cpu_request", svc.requests.cpu.as_deref(), true),
        ("memory_request", svc.requests.memory.as_deref(), false),
        ("ephemeral_storage_request", svc.ephemeral_storage.request.as_deref(), false),
        ("ephemeral_storage_limit", svc.ephemeral_storage.limit.as_deref(), false),
        ("storage_size", svc.storage_size.as_deref(), false),
    ];
    for (field, value, cpu) in quantities {
        let Some(value) = value else { continue };
        let ok = if cpu { parse_cpu_millis(value).is_ok() } else { parse_memory_bytes(value).is_ok() };
        if !ok {
            return Err(aenv_core::InvalidSpec::new(
                field,
                format!("field `{field}` must be a quantity such as \"1\" or \"2Gi\" (got {value:?})"),
            ));
        }
    }
    if let Some((field, message)) = svc.request_above_limit() {
        return Err(aenv_core::InvalidSpec::new(field, message));
    }
    Ok(())
}
