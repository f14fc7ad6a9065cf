//! Long-running services: the `EnvService` custom resource (N replicas of an Environment template, with an
//! optional named volume as storage) and the rules, free of I/O, that say what a replica runs and how a service's
//! state reads.
//!
//! A replica is an ordinary `EnvInstance` labelled `aenv.io/service=NAME`, made and removed by the service
//! controller and run, probed, adopted and removed by the instance controller like any other. A replica whose spec
//! differs from [`replica_spec`] of the service as it stands now is of an older revision and is replaced, a new one
//! ready before an old one goes.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{EnvInstance, EnvInstanceSpec, Resources, VolumeMount};

/// Label of an instance that is a replica of a service: the service's name.
pub const SERVICE_LABEL: &str = "aenv.io/service";
/// Annotation of a service being deleted with its storage (`DELETE /env-service/{id}?deleteStorage=true`).
pub const DELETE_STORAGE_ANNOTATION: &str = "aenv.io/delete-storage";
/// Where the storage is mounted unless the request says otherwise (AEnvironment's default).
pub const DEFAULT_MOUNT_PATH: &str = "/home/admin/data";
/// The port the service answers on unless the request says otherwise (AEnvironment's default).
pub const DEFAULT_PORT: u16 = 8080;
/// Prefix of a service's network (Docker): `aenv-svc-<service>`, scoped to the owner as owner networks are.
pub const SERVICE_NETWORK_PREFIX: &str = "aenv-svc-";
/// Most replicas one service may have.
pub const MAX_SERVICE_REPLICAS: u32 = 100;

/// A long-running service: replicas of an Environment template, optionally with storage.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "aenv.io",
    version = "v1alpha1",
    kind = "EnvService",
    namespaced,
    status = "EnvServiceStatus",
    shortname = "envsvc",
    category = "aenv",
    scale = r#"{"specReplicasPath":".spec.replicas","statusReplicasPath":".status.replicas"}"#,
    printcolumn = r#"{"name":"Env","type":"string","jsonPath":".spec.envName"}"#,
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".spec.replicas"}"#,
    printcolumn = r#"{"name":"Available","type":"integer","jsonPath":".status.availableReplicas"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct EnvServiceSpec {
    /// The template, as `name@version` of an Environment.
    pub env_name: String,
    /// Replicas to keep running.
    pub replicas: u32,
    /// Environment variables added to (and overriding) the template's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// An image replacing the template's (`PUT /env-service/{id}` `{"image"}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Who made the service (with tokens on): only it sees, changes and deletes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The storage's name (a Docker volume, a PVC on Kubernetes); absent: no storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc_name: Option<String>,
    /// Where the storage is mounted (absent: `/home/admin/data`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_path: Option<String>,
    /// The storage's size as asked (a PVC's request; a local Docker volume has no size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_size: Option<String>,
    /// The port the replicas serve on, where the service address sends requests.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Limits of each replica (the request's `cpu_limit` and `memory_limit`), replacing the template's.
    #[serde(default, skip_serializing_if = "Resources::is_empty")]
    pub resources: Resources,
    /// What each replica asks to be reserved (the request's `cpu_request` and `memory_request`): a Pod's
    /// requests on Kubernetes; on Docker a memory reservation and a cpu weight. Absent: the limits.
    #[serde(default, skip_serializing_if = "Resources::is_empty")]
    pub requests: Resources,
    /// Scratch disk of each replica (the request's `ephemeral_storage_request` and `_limit`): a Pod's
    /// `ephemeral-storage` on Kubernetes; not enforced by Docker.
    #[serde(default, skip_serializing_if = "EphemeralStorage::is_empty")]
    pub ephemeral_storage: EphemeralStorage,
    /// A replica not ready this many seconds after it was made is replaced (Docker engine); absent: the
    /// operator's `--service-ready-timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_timeout_seconds: Option<u32>,
    /// An inline template (the controller API's `POST /services` body), used instead of looking up the
    /// Environment `envName` names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<Box<EnvInstanceSpec>>,
}

/// What a service made from a template starts with unless its request says otherwise: the `deployConfig.service`
/// of a template (the `aenv` CLI writes one into every project's config.json).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceDefaults {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Storage for the service (`enableStorage: true`), named, sized and mounted as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageDefaults>,
}

/// A template's default storage for its services.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageDefaults {
    /// The volume's name (a DNS label); default the environment's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_path: Option<String>,
}

/// A replica's scratch disk, as quantities (`10Gi`).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct EphemeralStorage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
}

impl EphemeralStorage {
    pub fn is_empty(&self) -> bool {
        self.request.is_none() && self.limit.is_none()
    }
}

fn default_port() -> u16 {
    DEFAULT_PORT
}

/// How a service stands, spelled as AEnvironment spells it.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ServicePhase {
    /// Fewer replicas available than asked for, and none failing.
    #[default]
    Pending,
    /// As many replicas available as asked for, all of the current revision.
    Running,
    /// Replicas of an older revision are being replaced.
    Updating,
    /// Replicas keep failing and too few are available.
    Failed,
}

impl ServicePhase {
    pub fn as_str(self) -> &'static str {
        match self {
            ServicePhase::Pending => "Pending",
            ServicePhase::Running => "Running",
            ServicePhase::Updating => "Updating",
            ServicePhase::Failed => "Failed",
        }
    }
}

/// What the service controller last saw.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvServiceStatus {
    #[serde(default)]
    pub phase: ServicePhase,
    /// Live replicas (any revision, starting or ready): what `kubectl scale` compares with `spec.replicas`.
    #[serde(default)]
    pub replicas: u32,
    /// Replicas whose readiness probe passed (any revision).
    #[serde(default)]
    pub available_replicas: u32,
    /// Live replicas of the current revision.
    #[serde(default)]
    pub updated_replicas: u32,
    /// Why the last replica failed, until the service is available again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl Resources {
    pub fn is_empty(&self) -> bool {
        self.cpu.is_none() && self.memory.is_none()
    }
}

impl EnvServiceSpec {
    /// A request above its limit (`cpu_request` over `cpu_limit`, ...), as the field and a message naming it:
    /// Kubernetes refuses such a Pod and Docker such a container.
    pub fn request_above_limit(&self) -> Option<(&'static str, String)> {
        use crate::quantity::{parse_cpu_millis, parse_memory_bytes};
        for (field, request, limit, cpu) in [
            ("cpu_request", self.requests.cpu.as_deref(), self.resources.cpu.as_deref(), true),
            ("memory_request", self.requests.memory.as_deref(), self.resources.memory.as_deref(), false),
            (
                "ephemeral_storage_request",
                self.ephemeral_storage.request.as_deref(),
                self.ephemeral_storage.limit.as_deref(),
                false,
            ),
        ] {
            let (Some(request), Some(limit)) = (request, limit) else { continue };
            let above = if cpu {
                parse_cpu_millis(request).ok() > parse_cpu_millis(limit).ok()
            } else {
                parse_memory_bytes(request).ok() > parse_memory_bytes(limit).ok()
            };
            if above {
                return Some((
                    field,
                    format!("field `{field}` ({request}) is above its limit ({limit}): a request is at most the limit"),
                ));
            }
        }
        None
    }

    /// `(name, version)` of the template; `None` unless `envName` is `name@version`.
    pub fn template(&self) -> Option<(&str, &str)> {
        self.env_name.split_once('@').filter(|(n, v)| !n.is_empty() && !v.is_empty())
    }

    /// The storage mount of each replica, when the service has storage.
    pub fn volume(&self) -> Option<VolumeMount> {
        let pvc = self.pvc_name.as_deref()?;
        Some(VolumeMount {
            name: volume_name(self.owner.as_deref(), pvc),
            mount_path: self.mount_path.clone().unwrap_or_else(|| DEFAULT_MOUNT_PATH.to_string()),
        })
    }
}

/// The Docker volume behind storage `pvc` of `owner`: `aenv-pvc-<pvc>` without an owner, `aenv-pvc-<hash of the
/// owner>-<pvc>` with one, so that a tenant's `pvc_name` never reaches another tenant's volume, nor any volume the
/// operator did not make for a service.
pub fn volume_name(owner: Option<&str>, pvc: &str) -> String {
    match owner {
        None => format!("aenv-pvc-{pvc}"),
        Some(owner) => {
            // FNV-1a, 64 bits: stable across builds and platforms.
            let hash =
                owner.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
            format!("aenv-pvc-{hash:016x}-{pvc}")
        }
    }
}

/// What each replica of `service` runs, given the template's spec: the template with the service's environment
/// variables, image, limits and storage, owned by the service's owner, never expiring.
pub fn replica_spec(
    template: &EnvInstanceSpec,
    name: &str,
    version: &str,
    service: &EnvServiceSpec,
) -> EnvInstanceSpec {
    let mut spec = template.clone();
    spec.env_name = name.to_string();
    spec.env_version = version.to_string();
    spec.env.insert(crate::pool::SDK_ENV_NAME_VAR.into(), name.to_string());
    spec.env.insert(crate::pool::SDK_ENV_VERSION_VAR.into(), version.to_string());
    spec.env.extend(service.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    if let Some(image) = &service.image {
        spec.image = Some(image.clone());
    }
    if service.resources.cpu.is_some() {
        spec.resources.cpu = service.resources.cpu.clone();
    }
    if service.resources.memory.is_some() {
        spec.resources.memory = service.resources.memory.clone();
    }
    if !service.requests.is_empty() {
        spec.requests = service.requests.clone();
    }
    spec.owner = service.owner.clone();
    spec.ttl = None;
    spec.volumes.extend(service.volume());
    spec
}

/// The network of service `service` (Docker): its replicas join it and answer there to the service's name; an
/// instance joins it with `deployConfig.network: "aenv-svc-<service>"`. With tokens the engine scopes it to the
/// owner (`aenv-o-<owner hash>-aenv-svc-<service>`), as every network an owner names.
pub fn service_network(service: &str) -> String {
    format!("{SERVICE_NETWORK_PREFIX}{service}")
}

/// The service whose network `network` is, if it is one.
pub fn service_of_network(network: &str) -> Option<&str> {
    network.strip_prefix(SERVICE_NETWORK_PREFIX).filter(|s| !s.is_empty())
}

/// A replica of `service` as [`replica_spec`] makes it, on the service's network and answering there to the
/// service's name.
pub fn on_service_network(mut spec: EnvInstanceSpec, service: &str) -> EnvInstanceSpec {
    spec.network = Some(service_network(service));
    spec.network_aliases = vec![service.to_string()];
    spec
}

impl EnvInstance {
    /// The service this instance is a replica of.
    pub fn service(&self) -> Option<&str> {
        self.metadata.labels.as_ref()?.get(SERVICE_LABEL).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use kube::CustomResourceExt;

    use super::*;

    fn service() -> EnvServiceSpec {
        EnvServiceSpec {
            env_name: "mini@1.0.0".into(),
            replicas: 2,
            env: BTreeMap::from([("MODE".into(), "svc".into())]),
            pvc_name: Some("data".into()),
            port: DEFAULT_PORT,
            ..Default::default()
        }
    }

    #[test]
    fn a_replica_is_the_template_with_the_service_s_changes() {
        let template = EnvInstanceSpec {
            image: Some("mini:1".into()),
            env: BTreeMap::from([("MODE".into(), "plain".into()), ("A".into(), "1".into())]),
            ttl: Some("1h".into()),
            ..Default::default()
        };
        let r = replica_spec(&template, "mini", "1.0.0", &service());
        assert_eq!((r.env["MODE"].as_str(), r.env["A"].as_str(), r.env["envNAME"].as_str()), ("svc", "1", "mini"));
        assert_eq!(r.ttl, None, "replicas do not expire");
        assert_eq!(r.volumes, [VolumeMount { name: "aenv-pvc-data".into(), mount_path: DEFAULT_MOUNT_PATH.into() }]);
        let mut changed = service();
        changed.image = Some("mini:2".into());
        let r2 = replica_spec(&template, "mini", "1.0.0", &changed);
        assert_eq!(r2.image.as_deref(), Some("mini:2"));
        assert_ne!(r, r2, "a new image is a new revision");
        let no_storage = EnvServiceSpec { pvc_name: None, ..service() };
        assert!(replica_spec(&template, "mini", "1.0.0", &no_storage).volumes.is_empty());
    }

    #[test]
    fn owners_never_share_a_volume_name() {
        let a = volume_name(Some("alice"), "data");
        let b = volume_name(Some("bob"), "data");
        assert_ne!(a, b);
        assert_ne!(a, volume_name(None, "data"));
        assert_eq!(a, volume_name(Some("alice"), "data"), "stable");
        for name in [a, b, volume_name(None, "data")] {
            assert!(VolumeMount { name, mount_path: "/data".into() }.check().is_none());
        }
    }

    #[test]
    fn volume_mounts_are_names_and_absolute_paths_only() {
        let ok = VolumeMount { name: "aenv-pvc-data".into(), mount_path: "/home/admin/data".into() };
        assert_eq!(ok.check(), None);
        for (name, path, field) in [
            ("/etc", "/data", "volumes.name"),
            ("../x", "/data", "volumes.name"),
            ("", "/data", "volumes.name"),
            ("a/b", "/data", "volumes.name"),
            ("data", "relative", "volumes.mountPath"),
            ("data", "/", "volumes.mountPath"),
            ("data", "/a/../etc", "volumes.mountPath"),
            ("data", "/a:ro", "volumes.mountPath"),
        ] {
            let why = VolumeMount { name: name.into(), mount_path: path.into() }.check().expect(name);
            assert!(why.contains(field), "{why}");
        }
    }

    #[test]
    fn crd_has_scale_and_columns() {
        let crd = EnvService::crd();
        assert_eq!(crd.metadata.name.as_deref(), Some("envservices.aenv.io"));
        let v = &crd.spec.versions[0];
        assert!(v.subresources.as_ref().and_then(|s| s.scale.as_ref()).is_some());
        let columns: Vec<_> = v.additional_printer_columns.iter().flatten().map(|c| c.name.as_str()).collect();
        assert_eq!(columns, ["Env", "Replicas", "Available", "Phase", "Age"]);
        for phase in [ServicePhase::Pending, ServicePhase::Running, ServicePhase::Updating, ServicePhase::Failed] {
            assert_eq!(serde_json::to_value(phase).unwrap(), serde_json::json!(phase.as_str()));
        }
    }
}
