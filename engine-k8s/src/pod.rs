//! The Pod an instance becomes, and what a Pod's status says about the instance. Pure functions, so that the
//! mapping is tested without an API server.

use std::collections::BTreeMap;

use aenv_core::{
    EngineError, EnvInstance, ManagedObject, Observed, OwnedKind, OwnedObject, Phase, PullPolicy, Workload,
    envservice::SERVICE_LABEL,
    labels::{self, InstanceLabels},
    quantity::{parse_cpu_millis, parse_memory_bytes},
};
use k8s_openapi::{
    api::core::v1::{Container, ContainerPort, EnvVar, HTTPGetAction, Pod, PodSpec, Probe, ResourceRequirements},
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{ObjectMeta, OwnerReference},
        util::intstr::IntOrString,
    },
};
use kube::Resource;

use crate::KubeEngineConfig;

/// AEnvironment's controller labels (its `pkg/constants/common.go`), kept so that tools written for it work.
pub const AENV_NAME_LABEL: &str = "business/aenv-name";
pub const AENV_VERSION_LABEL: &str = "business/aenv-version";
pub const AENV_TTL_LABEL: &str = "business/aenv-ttl";
pub const AENV_OWNER_LABEL: &str = "business/aenv-owner";
/// Expiry as RFC 3339: an annotation, since `:` is not allowed in label values.
pub use aenv_core::types::EXPIRE_AT_ANNOTATION;
/// The owner as given, also when it is not a valid label value.
pub const OWNER_ANNOTATION: &str = "aenv.io/owner";
/// The one container of an instance's Pod.
pub const CONTAINER_NAME: &str = "main";

/// Whether `v` may be a label value: at most 63 characters of `[A-Za-z0-9._-]`, starting and ending with an
/// alphanumeric character (or empty).
pub fn is_valid_label_value(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= 63
            && v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && v.starts_with(|c: char| c.is_ascii_alphanumeric())
            && v.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

/// A cpu quantity in Kubernetes notation: whole cores as `2`, the rest in millicores (`500m`). AEnvironment's
/// `1C` becomes `1`.
pub fn cpu_quantity(input: &str) -> Result<Quantity, aenv_core::Error> {
    let millis = parse_cpu_millis(input)?;
    Ok(Quantity(if millis % 1000 == 0 { (millis / 1000).to_string() } else { format!("{millis}m") }))
}

/// A memory quantity in Kubernetes notation, in the largest unit that divides it, binary before decimal
/// (`512Mi`, `1.5Gi` as `1536Mi`, `2G`), else in bytes.
pub fn memory_quantity(input: &str) -> Result<Quantity, aenv_core::Error> {
    let bytes = parse_memory_bytes(input)?;
    const UNITS: [(u64, &str); 8] = [
        (1 << 40, "Ti"),
        (1 << 30, "Gi"),
        (1 << 20, "Mi"),
        (1_000_000_000_000, "T"),
        (1_000_000_000, "G"),
        (1_000_000, "M"),
        (1 << 10, "Ki"),
        (1_000, "k"),
    ];
    for (size, unit) in UNITS {
        if bytes % size == 0 {
            return Ok(Quantity(format!("{}{unit}", bytes / size)));
        }
    }
    Ok(Quantity(bytes.to_string()))
}

/// The Pod that runs `inst`: named by the instance id, in the sandbox namespace, labelled for the operator and
/// for AEnvironment tools, never restarted (`restartPolicy: Never`), without a service-account token (sandboxes
/// run untrusted code). Fails (permanently) on a spec no Pod can carry.
pub fn pod_for(inst: &EnvInstance, config: &KubeEngineConfig) -> Result<Pod, EngineError> {
    let spec = &inst.spec;
    let name = inst.metadata.name.clone().unwrap_or_default();
    let permanent = |e: aenv_core::Error| EngineError::permanent(e.to_string());
    let image = match spec.workload() {
        Workload::Container { image: Some(image) } => image.to_string(),
        Workload::Container { image: None } => {
            return Err(EngineError::permanent("spec.image is empty: the instance has no image to run"));
        }
        Workload::Stack { .. } => {
            return Err(EngineError::permanent(
                "spec.composeFile: compose stacks run on the Docker engine only (start the operator with --engine docker)",
            ));
        }
    };
    let mut quantities = BTreeMap::new();
    if let Some(cpu) = spec.resources.cpu.as_deref() {
        quantities.insert("cpu".to_string(), cpu_quantity(cpu).map_err(permanent)?);
    }
    if let Some(memory) = spec.resources.memory.as_deref() {
        quantities.insert("memory".to_string(), memory_quantity(memory).map_err(permanent)?);
    }
    // Requests below the limits when the spec has them (a service's cpu_request, memory_request).
    let mut requests = BTreeMap::new();
    if let Some(cpu) = spec.requests.cpu.as_deref() {
        requests.insert("cpu".to_string(), cpu_quantity(cpu).map_err(permanent)?);
    }
    if let Some(memory) = spec.requests.memory.as_deref() {
        requests.insert("memory".to_string(), memory_quantity(memory).map_err(permanent)?);
    }
    let expire_at = inst.expires_at().map_err(permanent)?;
    let instance_namespace = inst.namespace();
    let owner = spec.owner.as_deref().filter(|o| !o.is_empty());
    let mut labels = InstanceLabels {
        operator_id: &config.operator_id,
        namespace: instance_namespace,
        instance: &name,
        env_name: &spec.env_name,
        env_version: &spec.env_version,
        owner: owner.filter(|o| is_valid_label_value(o)),
        expire_at: None,
    }
    .render(&spec.labels);
    labels.insert(AENV_NAME_LABEL.into(), spec.env_name.clone());
    labels.insert(AENV_VERSION_LABEL.into(), spec.env_version.clone());
    if let Some(ttl) = spec.ttl.as_deref().filter(|t| is_valid_label_value(t)) {
        labels.insert(AENV_TTL_LABEL.into(), ttl.to_string());
    }
    if let Some(owner) = owner.filter(|o| is_valid_label_value(o)) {
        labels.insert(AENV_OWNER_LABEL.into(), owner.to_string());
    }
    labels.insert("app.kubernetes.io/name".into(), "aenv-sandbox".into());
    labels.insert("app.kubernetes.io/managed-by".into(), "aenv-operator".into());

    let mut annotations = BTreeMap::new();
    if let Some(at) = expire_at {
        annotations.insert(EXPIRE_AT_ANNOTATION.to_string(), at.to_string());
    }
    if let Some(owner) = owner {
        annotations.insert(OWNER_ANNOTATION.to_string(), owner.to_string());
    }

    // An owner reference lets Kubernetes' garbage collector remove the Pod with its EnvInstance. It is only valid
    // in the instance's own namespace (a reference across namespaces counts as a missing owner, and the collector
    // would delete the Pod at once) and for an instance that lives in the API server (it needs the real uid).
    let owner_references = match (&inst.metadata.uid, config.owner_references && instance_namespace == config.namespace)
    {
        (Some(uid), true) => Some(vec![OwnerReference {
            api_version: EnvInstance::api_version(&()).into_owned(),
            kind: EnvInstance::kind(&()).into_owned(),
            name: name.clone(),
            uid: uid.clone(),
            controller: Some(true),
            block_owner_deletion: None,
        }]),
        _ => None,
    };

    let probe = spec.readiness.clone().unwrap_or_default();
    let readiness_probe = probe.enabled.then(|| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(probe.path.clone()),
            port: IntOrString::Int(i32::from(probe.port)),
            ..Default::default()
        }),
        timeout_seconds: Some(probe.timeout_ms.div_ceil(1000).clamp(1, 60) as i32),
        period_seconds: Some(2),
        failure_threshold: Some(1),
        ..Default::default()
    });
    let ports: Vec<ContainerPort> = spec
        .ports
        .iter()
        .map(|p| ContainerPort {
            container_port: i32::from(p.container_port),
            protocol: Some(p.protocol.as_deref().unwrap_or("tcp").to_ascii_uppercase()),
            ..Default::default()
        })
        .collect();
    let container = Container {
        name: CONTAINER_NAME.into(),
        image: Some(image),
        image_pull_policy: Some(
            match spec.image_pull_policy.unwrap_or_default() {
                PullPolicy::Always => "Always",
                PullPolicy::IfNotPresent => "IfNotPresent",
                PullPolicy::Never => "Never",
            }
            .into(),
        ),
        // Kubernetes `args` replace the image's CMD and keep its ENTRYPOINT, as Docker's cmd does.
        args: (!spec.args.is_empty()).then(|| spec.args.clone()),
        env: (!spec.env.is_empty()).then(|| {
            spec.env
                .iter()
                .map(|(k, v)| EnvVar { name: k.clone(), value: Some(v.clone()), ..Default::default() })
                .collect()
        }),
        // Requests equal limits, as AEnvironment's controller sets them (Guaranteed QoS when both are given),
        // unless the spec asks for less.
        resources: (!quantities.is_empty() || !requests.is_empty()).then(|| ResourceRequirements {
            limits: (!quantities.is_empty()).then(|| quantities.clone()),
            requests: Some(quantities.into_iter().chain(requests).collect()),
            ..Default::default()
        }),
        ports: (!ports.is_empty()).then_some(ports),
        readiness_probe,
        ..Default::default()
    };
    Ok(Pod {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(config.namespace.clone()),
            labels: Some(labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            owner_references,
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![container],
            restart_policy: Some("Never".into()),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            termination_grace_period_seconds: Some(config.grace_period_seconds),
            ..Default::default()
        }),
        status: None,
    })
}

/// Waiting reasons that no retry by the kubelet will cure.
const HOPELESS_WAITING: &[&str] = &["InvalidImageName", "CreateContainerConfigError"];

/// The instance Pod as the resync sees it (`None` for a Pod that is no instance's: a service's Pods belong to its
/// Deployment).
pub fn owned_of(pod: &Pod) -> Option<OwnedObject> {
    let l = pod.metadata.labels.as_ref()?;
    if l.contains_key(SERVICE_LABEL) {
        return None;
    }
    let (namespace, instance) = labels::instance_of(|k| l.get(k))?;
    Some(OwnedObject {
        kind: OwnedKind::Container,
        namespace,
        instance,
        id: pod.metadata.name.clone()?,
        phase: observe(pod, false).phase,
        created: pod.metadata.creation_timestamp.as_ref().map(|t| t.0),
    })
}

/// An instance Pod of any operator id, with that id and its expiry (the annotation: a label value cannot hold a
/// time), for the sweep of what a lost store left.
pub fn managed_of(pod: &Pod) -> Option<ManagedObject> {
    let object = owned_of(pod)?;
    let l = pod.metadata.labels.as_ref()?;
    Some(ManagedObject {
        object,
        operator_id: l.get(labels::OPERATOR_ID).cloned().unwrap_or_default(),
        expires_at: pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(EXPIRE_AT_ANNOTATION))
            .and_then(|t| t.parse::<jiff::Timestamp>().ok()),
    })
}

/// Maps a Pod to the instance's phase, IP, message and readiness. `probe` says whether the instance has a
/// readiness probe (then `ready` comes from the Pod's `Ready` condition).
pub fn observe(pod: &Pod, probe: bool) -> Observed {
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let status = pod.status.clone().unwrap_or_default();
    let condition = |type_: &str| status.conditions.iter().flatten().find(|c| c.type_ == type_);
    let main = status
        .container_statuses
        .iter()
        .flatten()
        .find(|c| c.name == CONTAINER_NAME)
        .or_else(|| status.container_statuses.iter().flatten().next());
    let waiting = main.and_then(|c| c.state.as_ref()).and_then(|s| s.waiting.as_ref());
    let terminated = main.and_then(|c| c.state.as_ref()).and_then(|s| s.terminated.as_ref());
    let exit_message = || match terminated {
        Some(t) => {
            let mut msg = format!("the container exited with code {}", t.exit_code);
            if t.reason.as_deref() == Some("OOMKilled") {
                msg.push_str(" (killed for exceeding its memory limit)");
            } else if let Some(reason) = t.reason.as_deref().filter(|r| !r.is_empty()) {
                msg.push_str(&format!(" ({reason})"));
            }
            if let Some(m) = t.message.as_deref().filter(|m| !m.is_empty()) {
                msg.push_str(&format!(": {m}"));
            }
            msg
        }
        None => "the Pod's container exited".to_string(),
    };
    let (phase, message) = if pod.metadata.deletion_timestamp.is_some() {
        (Phase::Terminated, Some(format!("Pod {name} is being deleted outside the operator")))
    } else {
        match status.phase.as_deref() {
            Some("Running") => (Phase::Running, None),
            Some("Succeeded") => (Phase::Failed, Some(exit_message())),
            Some("Failed") => {
                let mut msg = exit_message();
                if let Some(reason) = status.reason.as_deref().filter(|r| !r.is_empty()) {
                    msg = format!("the Pod failed ({reason}): {}", status.message.as_deref().unwrap_or(&msg));
                }
                (Phase::Failed, Some(msg))
            }
            Some("Pending") | None => match waiting.and_then(|w| w.reason.as_deref().map(|r| (r, w))) {
                Some((reason, w)) if HOPELESS_WAITING.contains(&reason) => (
                    Phase::Failed,
                    Some(format!("the container cannot start: {reason}: {}", w.message.as_deref().unwrap_or(""))),
                ),
                Some((reason, w)) if reason != "ContainerCreating" => (
                    Phase::Creating,
                    Some(format!("the container is waiting: {reason}: {}", w.message.as_deref().unwrap_or(""))),
                ),
                _ => match condition("PodScheduled") {
                    Some(c) if c.status == "True" => (Phase::Creating, None),
                    Some(c) => (
                        Phase::Pending,
                        c.message.clone().map(|m| format!("not scheduled: {m}")).filter(|_| c.status == "False"),
                    ),
                    None => (Phase::Pending, None),
                },
            },
            Some(other) => (Phase::Pending, Some(format!("the Pod's phase is {other} (its node does not report)"))),
        }
    };
    let ip = status.pod_ip.clone().filter(|ip| !ip.is_empty() && phase == Phase::Running);
    let (ready, ready_message) = if probe && phase == Phase::Running {
        match condition("Ready") {
            Some(c) if c.status == "True" => (Some(true), None),
            Some(c) => (Some(false), Some(c.message.clone().unwrap_or_else(|| "the readiness probe fails".into()))),
            None => (Some(false), Some("the readiness probe has not passed yet".into())),
        }
    } else {
        (None, None)
    };
    Observed { phase, ip, message, container_id: pod.metadata.uid.clone(), ready, ready_message, ..Default::default() }
}
