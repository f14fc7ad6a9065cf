//! The custom resources: `EnvInstance` (one sandbox: a container or a stack, with a TTL) and `Environment`
//! (a versioned template instances are made from). Both live in group `aenv.io`, version `v1alpha1`, whether they
//! are kept in the embedded store or in a Kubernetes API server.

use std::{collections::BTreeMap, time::Duration};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{Error, duration::parse_go_duration};

/// Annotation holding an instance's exact expiry (RFC 3339): the same key as the label engines put on what they
/// make.
pub const EXPIRE_AT_ANNOTATION: &str = crate::labels::EXPIRE_AT;

/// Annotation holding when a paused instance's TTL clock was stopped (`--pause-extends-ttl`, RFC 3339): while it is
/// there the instance does not expire; resuming moves `aenv.io/expire-at` later by the time it was stopped.
pub const TTL_STOPPED_AT_ANNOTATION: &str = "aenv.io/ttl-stopped-at";

/// What an instance runs, resolved once from its spec: engines match on this rather than asking the spec's
/// fields again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload<'a> {
    /// One container of an image (`None`: the spec names none, which the engine refuses).
    Container { image: Option<&'a str> },
    /// A compose stack.
    Stack { compose_file: &'a str },
}

/// Desired state of one env instance.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "aenv.io",
    version = "v1alpha1",
    kind = "EnvInstance",
    namespaced,
    status = "EnvInstanceStatus",
    shortname = "envi",
    category = "aenv",
    printcolumn = r#"{"name":"Env","type":"string","jsonPath":".spec.envName"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Paused","type":"boolean","jsonPath":".spec.paused","priority":1}"#,
    printcolumn = r#"{"name":"IP","type":"string","jsonPath":".status.ip"}"#,
    printcolumn = r#"{"name":"Expires","type":"date","jsonPath":".status.expireTime"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct EnvInstanceSpec {
    /// Name of the environment this instance runs (AEnvironment's `name`); filterable as label `aenv.env_name`.
    pub env_name: String,
    /// Version of the environment (AEnvironment's `version`).
    #[serde(default)]
    pub env_version: String,
    /// Who asked for the instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Container image to run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// When to pull the image: `IfNotPresent` (default), `Always` or `Never`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,
    /// Arguments that replace the image's CMD (AEnvironment's `arguments`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Environment variables for the container.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// CPU and memory limits.
    #[serde(default)]
    pub resources: Resources,
    /// CPU and memory to reserve, below the limits (an EnvService's `cpu_request`, `memory_request`): a Pod's
    /// requests on Kubernetes; on Docker a memory reservation and a relative cpu weight (`CpuShares`, 1024 per
    /// core). Absent: the limits are the requests (Kubernetes), nothing is reserved (Docker).
    #[serde(default, skip_serializing_if = "Resources::is_empty")]
    pub requests: Resources,
    /// Time to live from creation, in Go duration syntax (`30m`, `1h30m`). Absent: the instance never expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    /// User labels, copied onto the container.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// A Compose file (YAML) to run as a stack instead of `image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compose_file: Option<String>,
    /// Network to join: `bridge` (default), `none`, `host` (if the operator allows it), or the name of a user
    /// network, created on demand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Container ports to publish on the host (on loopback by default), for hosts where container IPs are not
    /// reachable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortSpec>,
    /// How to tell that the instance answers. Absent: `GET /health` on port 8081, as AEnvironment images serve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<ReadinessProbe>,
    /// Desired: the instance's processes frozen (the cgroup freezer; `docker pause`). Its memory and files stay;
    /// it answers nothing until resumed (set back to false). Its TTL keeps running unless the operator runs with
    /// `--pause-extends-ttl`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
    /// Named volumes to mount (an EnvService's storage). Names only: never a host path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeMount>,
    /// Other names the instance answers to on its (user) network: a service's replicas answer to the service's
    /// name on its network. DNS labels; set by the service controller only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network_aliases: Vec<String>,
    /// Where the instance may run, on an engine that places over several nodes (`--engine swarm`): Swarm's
    /// constraints and preferences. Other engines refuse it (they have one host, or place by other means).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
}

/// Placement of an instance over the nodes of a Swarm (`deployConfig.placement`), in Swarm's own syntax.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    /// Each one must hold on the node: `node.labels.gpu==true`, `node.role!=manager`, `node.hostname==h1`,
    /// `node.platform.arch==x86_64`, `engine.labels.zone==a`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<String>,
    /// Spread over the values of a node label, in order: `node.labels.zone` (also written `spread=node.labels.zone`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preferences: Vec<String>,
}

/// The node attributes a placement constraint may name (Swarm's list); labels take any key after their prefix.
const CONSTRAINT_KEYS: &[&str] = &["node.id", "node.hostname", "node.role", "node.platform.os", "node.platform.arch"];
const LABEL_PREFIXES: &[&str] = &["node.labels.", "engine.labels."];

impl Placement {
    /// Why this placement cannot be given to Swarm, as (field, message) naming the field and the fix; `None` when
    /// it can. Swarm itself would refuse a malformed constraint only when the service is made, failing the
    /// instance after the API said yes.
    pub fn check(&self) -> Option<(String, String)> {
        if self.constraints.len() > 32 || self.preferences.len() > 8 {
            return Some((
                "deployConfig.placement".into(),
                "field `deployConfig.placement` holds at most 32 constraints and 8 preferences".into(),
            ));
        }
        for (i, c) in self.constraints.iter().enumerate() {
            let field = format!("deployConfig.placement.constraints[{i}]");
            let Some((key, value)) = c.split_once("!=").or_else(|| c.split_once("==")) else {
                return Some((
                    field.clone(),
                    format!(
                        "field `{field}` must be `<attribute>==<value>` or `<attribute>!=<value>`, such as `node.labels.gpu==true` (got {c:?})"
                    ),
                ));
            };
            let (key, value) = (key.trim(), value.trim());
            let known = CONSTRAINT_KEYS.contains(&key)
                || LABEL_PREFIXES.iter().any(|p| key.strip_prefix(p).is_some_and(valid_label_key));
            if !known {
                return Some((
                    field.clone(),
                    format!(
                        "field `{field}` names {key:?}, which Swarm does not know: use node.id, node.hostname, node.role, node.platform.os, node.platform.arch, node.labels.<key> or engine.labels.<key>"
                    ),
                ));
            }
            if value.is_empty()
                || value.len() > 256
                || value.contains("==")
                || value.contains("!=")
                || value.chars().any(char::is_control)
            {
                return Some((
                    field.clone(),
                    format!(
                        "field `{field}` needs one value after the operator, such as `node.role==worker` (got {c:?})"
                    ),
                ));
            }
            if key == "node.role" && !matches!(value, "manager" | "worker") {
                return Some((
                    field.clone(),
                    format!("field `{field}`: node.role is `manager` or `worker` (got {value:?})"),
                ));
            }
        }
        for (i, p) in self.preferences.iter().enumerate() {
            let field = format!("deployConfig.placement.preferences[{i}]");
            if Self::spread_of(p).is_none() {
                return Some((
                    field.clone(),
                    format!(
                        "field `{field}` must name a node label to spread over, such as `node.labels.zone` or `spread=node.labels.zone` (got {p:?})"
                    ),
                ));
            }
        }
        None
    }

    /// The label a preference spreads over (`node.labels.zone`), when it is one.
    pub fn spread_of(preference: &str) -> Option<&str> {
        let label = preference.trim();
        let label = label.strip_prefix("spread=").unwrap_or(label);
        LABEL_PREFIXES.iter().any(|p| label.strip_prefix(p).is_some_and(valid_label_key)).then_some(label)
    }
}

/// A label key as Docker takes it in a constraint: letters, digits, '.', '_', '-', '/'.
fn valid_label_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 128
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'))
}

/// A named volume (a Docker volume; a PVC on Kubernetes) mounted into the container.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeMount {
    /// The volume's name: letters, digits, '_', '.', '-', starting with a letter or digit. Never a path.
    pub name: String,
    /// Where it is mounted: an absolute path in the container.
    pub mount_path: String,
}

impl VolumeMount {
    /// Why this mount cannot be run, naming the field; `None` when it can.
    pub fn check(&self) -> Option<String> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 128
            && self.name.as_bytes()[0].is_ascii_alphanumeric()
            && self.name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !name_ok {
            return Some(format!(
                "field `volumes.name` must be a volume name (letters, digits, '_', '.', '-', starting with a letter or digit), never a host path (got {:?})",
                self.name
            ));
        }
        let path = &self.mount_path;
        Self::mount_path_refusal(path).map(|why| format!("field `volumes.mountPath` {why} (got {path:?})"))
    }

    /// Why `path` cannot be a mount path (for the message of whichever field holds it); `None` when it can.
    pub fn mount_path_refusal(path: &str) -> Option<&'static str> {
        let path_ok = path.starts_with('/')
            && path != "/"
            && path.len() <= 4096
            && !path.split('/').any(|c| c == ".." || c == ".")
            && !path.contains(':')
            && !path.chars().any(char::is_control);
        (!path_ok).then_some("must be an absolute path other than `/`, without `.` or `..` components or ':'")
    }
}

/// A container port to publish.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PortSpec {
    pub container_port: u16,
    /// `tcp` (default) or `udp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

/// An HTTP readiness probe.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReadinessProbe {
    /// `false` turns the probe off (for images that serve no health endpoint).
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(default = "default_probe_port")]
    pub port: u16,
    #[serde(default = "default_probe_path")]
    pub path: String,
    /// Timeout of one probe, in milliseconds.
    #[serde(default = "default_probe_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_true() -> bool {
    true
}
fn default_probe_port() -> u16 {
    8081
}
fn default_probe_path() -> String {
    "/health".into()
}
fn default_probe_timeout_ms() -> u64 {
    1000
}

impl Default for ReadinessProbe {
    fn default() -> Self {
        ReadinessProbe {
            enabled: true,
            port: default_probe_port(),
            path: default_probe_path(),
            timeout_ms: default_probe_timeout_ms(),
        }
    }
}

/// CPU and memory limits, as quantities (`cpu: "1C" | "500m" | "2"`, `memory: "512Mi" | "2G"`).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct Resources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
}

impl Resources {
    /// `cpu` in millicores, when set.
    pub fn cpu_millis(&self) -> Result<Option<u64>, crate::Error> {
        self.cpu.as_deref().map(crate::quantity::parse_cpu_millis).transpose()
    }

    /// `cpu` in nano-CPUs (Docker's and Swarm's unit: one CPU is 10^9), when set.
    pub fn nano_cpus(&self) -> Result<Option<i64>, crate::Error> {
        Ok(self.cpu_millis()?.map(|m| i64::try_from(m).unwrap_or(i64::MAX).saturating_mul(1_000_000)))
    }

    /// `memory` in bytes, when set.
    pub fn memory_bytes(&self) -> Result<Option<i64>, crate::Error> {
        Ok(self
            .memory
            .as_deref()
            .map(crate::quantity::parse_memory_bytes)
            .transpose()?
            .map(|b| i64::try_from(b).unwrap_or(i64::MAX)))
    }
}

/// When the engine pulls the image.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum PullPolicy {
    /// Pull on every create.
    Always,
    /// Pull only when the image is not on the host.
    #[default]
    IfNotPresent,
    /// Never pull; a missing image fails the instance.
    Never,
}

/// The coarse lifecycle of an instance, spelled as AEnvironment spells it.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum Phase {
    /// Accepted, nothing created yet.
    #[default]
    Pending,
    /// The engine is creating it (pulling the image, starting the container).
    Creating,
    /// The container runs.
    Running,
    /// Its processes are frozen (`spec.paused`): memory and files kept, nothing runs until it is resumed.
    Paused,
    /// It could not be created, or it stopped by itself.
    Failed,
    /// It was deleted, expired, or removed outside the operator.
    Terminated,
}

impl Phase {
    pub const ALL: [Phase; 6] =
        [Phase::Pending, Phase::Creating, Phase::Running, Phase::Paused, Phase::Failed, Phase::Terminated];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Creating => "Creating",
            Phase::Running => "Running",
            Phase::Paused => "Paused",
            Phase::Failed => "Failed",
            Phase::Terminated => "Terminated",
        }
    }

    /// Failed and Terminated instances are left alone until they are deleted or expire.
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Failed | Phase::Terminated)
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Observed state, written by the reconciler.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvInstanceStatus {
    pub phase: Phase,
    /// The instance's address on its network (the bridge IP for Docker, the Pod IP on Kubernetes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// Why the instance is in its phase, when that needs saying (a failure, a removal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The engine's id of what it created (a container id). Set once the object exists, so that a later
    /// disappearance is seen as a removal rather than as work still to do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// Creation time plus TTL: the instance is removed at this instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expire_time: Option<Time>,
    /// Finer-grained state with stable reasons, next to the coarse phase.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Published ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortStatus>,
    /// Each service of a stack.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceStatus>,
}

/// A published port: where on the host a container port answers.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PortStatus {
    pub container_port: u16,
    pub protocol: String,
    pub host_ip: String,
    pub host_port: u16,
    /// The compose service the port belongs to (stacks only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

/// One service of a stack.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    pub name: String,
    /// Docker's state of the service's container (`running`, `exited`, ...), or `missing`.
    pub state: String,
    /// `healthy`, `unhealthy` or `starting` when the service has a healthcheck.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A condition in the Kubernetes style (`type`, `status`, `reason`, `message`).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

impl EnvInstanceSpec {
    /// A stack when the spec carries a compose file, else one container.
    pub fn workload(&self) -> Workload<'_> {
        match self.compose_file.as_deref() {
            Some(compose_file) => Workload::Stack { compose_file },
            None => Workload::Container { image: self.image.as_deref().filter(|i| !i.trim().is_empty()) },
        }
    }
}

impl EnvInstance {
    /// The namespace the instance lives in (the default one when it names none).
    pub fn namespace(&self) -> &str {
        self.metadata.namespace.as_deref().unwrap_or(crate::labels::DEFAULT_NAMESPACE)
    }

    /// The TTL, parsed; `None` when the instance never expires.
    pub fn ttl(&self) -> Result<Option<Duration>, Error> {
        self.spec.ttl.as_deref().map(parse_go_duration).transpose()
    }

    /// When the instance expires: the annotation `aenv.io/expire-at` when present (stamped at creation, to the
    /// nanosecond), else creation time plus TTL (creation times keep whole seconds only, as on Kubernetes).
    /// `None` without a TTL or a creation timestamp; an unparseable TTL is an error.
    pub fn expires_at(&self) -> Result<Option<Timestamp>, Error> {
        let Some(ttl) = self.ttl()? else { return Ok(None) };
        if self.ttl_stopped_at().is_some() {
            // Paused with its clock stopped (`--pause-extends-ttl`): it does not expire until resumed.
            return Ok(None);
        }
        let stamped = self.metadata.annotations.as_ref().and_then(|a| a.get(EXPIRE_AT_ANNOTATION));
        if let Some(at) = stamped.and_then(|s| s.parse::<Timestamp>().ok()) {
            return Ok(Some(at));
        }
        let Some(created) = self.metadata.creation_timestamp.as_ref() else { return Ok(None) };
        let ttl = SignedDuration::try_from(ttl).unwrap_or(SignedDuration::MAX);
        Ok(Some(created.0.checked_add(ttl).unwrap_or(Timestamp::MAX)))
    }

    /// Stamps the expiry (`now` + TTL) as the annotation `aenv.io/expire-at`, so that a TTL is honoured to the
    /// nanosecond rather than from a creation time rounded to the second.
    pub fn stamp_expiry(&mut self, now: Timestamp) -> Result<(), Error> {
        if let Some(ttl) = self.ttl()? {
            let ttl = SignedDuration::try_from(ttl).unwrap_or(SignedDuration::MAX);
            let at = now.checked_add(ttl).unwrap_or(Timestamp::MAX);
            self.metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(EXPIRE_AT_ANNOTATION.into(), at.to_string());
        }
        Ok(())
    }

    /// When its TTL clock was stopped by a pause (`--pause-extends-ttl`), if it is.
    pub fn ttl_stopped_at(&self) -> Option<Timestamp> {
        self.metadata.annotations.as_ref()?.get(TTL_STOPPED_AT_ANNOTATION)?.parse().ok()
    }

    /// Stops the TTL clock at `now` (a pause under `--pause-extends-ttl`): [`EnvInstance::expires_at`] is `None`
    /// until [`EnvInstance::restart_ttl_clock`].
    pub fn stop_ttl_clock(&mut self, now: Timestamp) {
        self.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(TTL_STOPPED_AT_ANNOTATION.into(), now.to_string());
    }

    /// Starts the TTL clock again at `now`: the expiry moves later by the time it was stopped.
    pub fn restart_ttl_clock(&mut self, now: Timestamp) -> Result<(), Error> {
        let Some(stopped) = self.ttl_stopped_at() else { return Ok(()) };
        let annotations = self.metadata.annotations.get_or_insert_with(Default::default);
        annotations.remove(TTL_STOPPED_AT_ANNOTATION);
        if let Some(at) = self.expires_at()? {
            let stopped_for = now.duration_since(stopped).max(SignedDuration::ZERO);
            let later = at.checked_add(stopped_for).unwrap_or(Timestamp::MAX);
            self.metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(EXPIRE_AT_ANNOTATION.into(), later.to_string());
        }
        Ok(())
    }

    /// The phase, `Pending` before the first status is written.
    pub fn phase(&self) -> Phase {
        self.status.as_ref().map(|s| s.phase).unwrap_or_default()
    }

    /// True once deletion was asked for (explicitly or by expiry) and the engine's objects are being removed.
    pub fn is_deleting(&self) -> bool {
        self.metadata.deletion_timestamp.is_some()
    }

    /// The `Ready` condition, once the controller wrote one.
    pub fn ready_condition(&self) -> Option<&Condition> {
        self.status.as_ref()?.conditions.iter().find(|c| c.type_ == READY)
    }

    /// Running, and its readiness probe passed (or it has none).
    pub fn is_ready(&self) -> bool {
        self.phase() == Phase::Running && self.ready_condition().is_some_and(|c| c.status == "True")
    }
}

/// The condition type that says whether an instance serves: `True` once its readiness probe answers (or, without
/// a probe, once it runs).
pub const READY: &str = "Ready";

/// A versioned template that instances are created from: `POST /env-instance {"envName": "name@version"}` starts
/// from `template` and applies the request's overrides.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "aenv.io",
    version = "v1alpha1",
    kind = "Environment",
    namespaced,
    shortname = "aenv",
    category = "aenv",
    printcolumn = r#"{"name":"Env","type":"string","jsonPath":".spec.name"}"#,
    printcolumn = r#"{"name":"Version","type":"string","jsonPath":".spec.version"}"#,
    printcolumn = r#"{"name":"Image","type":"string","jsonPath":".spec.template.image"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentSpec {
    /// The environment's name, as in `name@version`.
    pub name: String,
    /// The environment's version, as in `name@version`.
    pub version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Where the environment's code lives (AEnvironment's `code_url`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub code_url: String,
    /// The tenant that registered it (with tokens on): only it, or an admin token, may delete it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Whether other tenants may create instances from it (they never see its environment variables).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared: bool,
    /// Released (envhub's `POST /env/{name}/{version}/release`): final, no longer updated; instances are still
    /// made from it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub released: bool,
    /// Defaults for the services made from it (`deployConfig.service`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<crate::envservice::ServiceDefaults>,
    /// What every instance of this environment starts from: image or compose file, resources, environment,
    /// arguments, TTL, network, ports, readiness.
    #[serde(default)]
    pub template: EnvInstanceSpec,
}

impl Environment {
    /// The object name of `name@version`: `name.version`, lowercased, with characters a Kubernetes name cannot
    /// hold turned into '-'. Names hold no '.', so the form is unambiguous.
    pub fn object_name(name: &str, version: &str) -> String {
        let version: String = version
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c.to_ascii_lowercase() } else { '-' })
            .collect();
        format!("{name}.{version}")
    }
}

#[cfg(test)]
mod tests {
    use kube::CustomResourceExt;

    use super::*;

    #[test]
    fn resources_convert_to_the_engines_units() {
        let r = Resources { cpu: Some("500m".into()), memory: Some("1Gi".into()) };
        assert_eq!(r.cpu_millis().unwrap(), Some(500));
        assert_eq!(r.nano_cpus().unwrap(), Some(500_000_000));
        assert_eq!(r.memory_bytes().unwrap(), Some(1 << 30));
        assert_eq!(Resources::default().nano_cpus().unwrap(), None);
        assert_eq!(Resources::default().memory_bytes().unwrap(), None);
        assert!(Resources { cpu: Some("lots".into()), memory: None }.nano_cpus().is_err());
        assert!(Resources { cpu: None, memory: Some("512m".into()) }.memory_bytes().is_err());
    }

    #[test]
    fn placement_checks_name_the_field_at_fault() {
        let ok = Placement {
            constraints: vec![
                "node.labels.gpu==true".into(),
                "node.role != manager".into(),
                "engine.labels.a/b==c".into(),
            ],
            preferences: vec!["node.labels.zone".into(), "spread=node.labels.rack".into()],
        };
        assert_eq!(ok.check(), None);
        let field_of = |constraints: &[&str], preferences: &[&str]| {
            Placement {
                constraints: constraints.iter().map(|s| s.to_string()).collect(),
                preferences: preferences.iter().map(|s| s.to_string()).collect(),
            }
            .check()
            .map(|(field, message)| {
                assert!(message.contains(&field), "{message} names {field}");
                field
            })
        };
        for bad in [
            "node.labels.gpu=true",
            "gpu==true",
            "node.labels.==x",
            "node.role==boss",
            "node.hostname==",
            "node.labels.a==b==c",
            "node.labels.a b==c",
        ] {
            assert_eq!(
                field_of(&["node.role==worker", bad], &[]).as_deref(),
                Some("deployConfig.placement.constraints[1]"),
                "{bad}"
            );
        }
        for bad in ["zone", "spread=zone", "spread=node.labels.", "node.hostname"] {
            assert_eq!(field_of(&[], &[bad]).as_deref(), Some("deployConfig.placement.preferences[0]"), "{bad}");
        }
        let many: Vec<String> = (0..33).map(|i| format!("node.labels.k{i}==v")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(field_of(&many, &[]).as_deref(), Some("deployConfig.placement"));
    }

    #[test]
    fn a_stopped_ttl_clock_holds_the_expiry_and_moves_it_by_the_pause() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let mut inst = EnvInstance::new("x", EnvInstanceSpec { ttl: Some("10m".into()), ..Default::default() });
        inst.stamp_expiry(t0).unwrap();
        let exp = inst.expires_at().unwrap().unwrap();
        inst.stop_ttl_clock(t0 + SignedDuration::from_mins(2));
        assert_eq!(inst.expires_at().unwrap(), None, "no expiry while the clock is stopped");
        inst.restart_ttl_clock(t0 + SignedDuration::from_mins(32)).unwrap();
        assert_eq!(inst.expires_at().unwrap(), Some(exp + SignedDuration::from_mins(30)));
        assert_eq!(inst.ttl_stopped_at(), None);
        // Restarting a clock that runs changes nothing.
        inst.restart_ttl_clock(t0 + SignedDuration::from_mins(40)).unwrap();
        assert_eq!(inst.expires_at().unwrap(), Some(exp + SignedDuration::from_mins(30)));
    }

    #[test]
    fn expiry_is_creation_plus_ttl() {
        let mut inst =
            EnvInstance::new("demo-abc123", EnvInstanceSpec { ttl: Some("1h30m".into()), ..Default::default() });
        assert_eq!(inst.expires_at().unwrap(), None, "no creation time yet");
        let created: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        inst.metadata.creation_timestamp = Some(Time(created));
        assert_eq!(inst.expires_at().unwrap(), Some("2026-01-01T01:30:00Z".parse().unwrap()));
        let precise: Timestamp = "2026-01-01T00:00:00.750Z".parse().unwrap();
        inst.stamp_expiry(precise).unwrap();
        assert_eq!(inst.expires_at().unwrap(), Some("2026-01-01T01:30:00.750Z".parse().unwrap()), "the stamp wins");
        inst.spec.ttl = Some("soon".into());
        assert!(inst.expires_at().is_err());
        inst.spec.ttl = None;
        assert_eq!(inst.expires_at().unwrap(), None);
    }

    #[test]
    fn crd_shape() {
        let crd = EnvInstance::crd();
        assert_eq!(crd.metadata.name.as_deref(), Some("envinstances.aenv.io"));
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.short_names, Some(vec!["envi".to_string()]));
        let version = &crd.spec.versions[0];
        assert!(version.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some());
        let columns: Vec<_> = version.additional_printer_columns.iter().flatten().map(|c| c.name.as_str()).collect();
        assert_eq!(columns, ["Env", "Phase", "Paused", "IP", "Expires", "Age"]);
    }

    #[test]
    fn phase_serializes_with_aenvironment_spelling() {
        for phase in Phase::ALL {
            assert_eq!(serde_json::to_value(phase).unwrap(), serde_json::json!(phase.as_str()));
        }
    }
}
