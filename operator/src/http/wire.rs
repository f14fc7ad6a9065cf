//! The AEnvironment wire format: the response envelope and the `EnvInstance` JSON of the api-service
//! (`id, env, status, created_at, updated_at, ip, ttl, owner`), where `env` is a complete Env.

use crate::usecase::WarmupState;
use crate::usecase::{UNMOUNTED_ANNOTATION, status_string};
use aenv_core::{EnvInstance, EnvInstanceSpec, EnvPool, EnvService, Environment};
use jiff::Timestamp;
use serde_json::{Value, json};

/// envhub's Env status `Ready`.
const ENV_STATUS_READY: i64 = 6;
/// envhub's Env status `Released`.
const ENV_STATUS_RELEASED: i64 = 7;

/// A template's envhub status code: `Released` (7) once released, else `Ready` (6).
pub fn template_status(t: &Environment) -> i64 {
    if t.spec.released { ENV_STATUS_RELEASED } else { ENV_STATUS_READY }
}

/// A template's envhub status by name (`GET /env/{name}/{version}/status`).
pub fn template_status_name(t: &Environment) -> &'static str {
    if t.spec.released { "Released" } else { "Ready" }
}

/// RFC 3339 at second precision in UTC, as AEnvironment writes times.
pub fn format_time(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// `{"success":true,"code":0,"message":"","data":...}`.
pub fn ok(data: Value) -> Value {
    json!({"success": true, "code": 0, "message": "", "data": data})
}

/// `{"success":false,"code":<status>,"message":...,"data":null}`, with `"field"` naming the request field at
/// fault when the refusal is about one (AEnvironment clients read `message`; `field` is for programs).
pub fn error(status: u16, message: &str, field: Option<&str>) -> Value {
    let mut out = json!({"success": false, "code": status, "message": message, "data": null});
    if let (Some(obj), Some(field)) = (out.as_object_mut(), field) {
        obj.insert("field".into(), json!(field));
    }
    out
}

/// Where an image warmup stands: `{"env", "startedAt", "finishedAt"?, "done", "images": [...]}`.
pub fn warmup(state: &WarmupState) -> Value {
    let mut out = json!({
        "env": state.env,
        "startedAt": format_time(state.started_at),
        "done": state.done,
        "images": state.images,
    });
    if let (Some(obj), Some(finished)) = (out.as_object_mut(), state.finished_at) {
        obj.insert("finishedAt".into(), json!(format_time(finished)));
    }
    out
}

/// A pool: `{"name", "envName", "replicas", "maxReplicas", "ready", "starting", "target", "claimed", "hits",
/// "misses", "lastError"?, "created_at"}`.
pub fn pool(p: &EnvPool) -> Value {
    let status = p.status.clone().unwrap_or_default();
    let mut out = json!({
        "name": p.metadata.name.clone().unwrap_or_default(),
        "envName": p.spec.env_name,
        "replicas": p.spec.replicas,
        "maxReplicas": p.spec.ceiling(),
        "ready": status.ready,
        "starting": status.starting,
        "target": status.target,
        "claimed": status.claimed,
        "hits": status.hits,
        "misses": status.misses,
        "owner": p.spec.owner.clone().unwrap_or_default(),
        "created_at": p.metadata.creation_timestamp.as_ref().map(|t| format_time(t.0)).unwrap_or_default(),
    });
    if let (Some(obj), Some(error)) = (out.as_object_mut(), status.last_error) {
        obj.insert("lastError".into(), json!(error));
    }
    out
}

/// A service as the SDK's `EnvService` reads it: `id, env, status, created_at, updated_at, replicas,
/// available_replicas, service_url, owner, environment_variables, pvc_name`, with `mount_path`, `storage_size`,
/// `port`, `image` and `message` (the last replica failure) besides. `available` counts ready replicas now;
/// `url` is its `service_url` (`{proxy}/env-service/{id}` on Docker, the Service's in-cluster address on
/// Kubernetes).
pub fn service(s: &EnvService, template: Option<&Environment>, available: u32, url: Option<&str>) -> Value {
    let id = s.metadata.name.clone().unwrap_or_default();
    let created = s.metadata.creation_timestamp.as_ref().map(|t| format_time(t.0)).unwrap_or_default();
    let updated = s
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(crate::usecase::env_services::UPDATED_AT_ANNOTATION))
        .and_then(|t| t.parse::<Timestamp>().ok())
        .map(format_time)
        .unwrap_or_else(|| created.clone());
    let status = s.status.clone().unwrap_or_default();
    let env = template.map(|t| {
        let mut v = self::template(t);
        if let (Value::Object(fields), Some(image)) = (&mut v, &s.spec.image) {
            fields.insert("artifacts".into(), json!([{"id": "", "type": "image", "content": image}]));
        }
        v
    });
    let mut out = json!({
        "id": id,
        "env": env,
        "status": status.phase.as_str(),
        "created_at": created,
        "updated_at": updated,
        "replicas": s.spec.replicas,
        "available_replicas": available,
        "service_url": url,
        "owner": s.spec.owner.clone().unwrap_or_default(),
        "environment_variables": s.spec.env,
        "pvc_name": s.spec.pvc_name,
        "port": s.spec.port,
    });
    if let Some(obj) = out.as_object_mut() {
        for (key, value) in [
            ("mount_path", &s.spec.mount_path),
            ("storage_size", &s.spec.storage_size),
            ("image", &s.spec.image),
            ("message", &status.last_error),
        ] {
            if let Some(v) = value {
                obj.insert(key.into(), json!(v));
            }
        }
    }
    out
}

/// The instance as the api-service renders it.
pub fn instance(inst: &EnvInstance) -> Value {
    // A sandbox claimed from a pool began for its user at the claim.
    let created = inst.started_at().map(format_time).unwrap_or_default();
    let status = inst.status.as_ref();
    let mut out = json!({
        "id": inst.metadata.name.clone().unwrap_or_default(),
        "env": env(inst, &created),
        "status": status_string(inst),
        "created_at": created,
        "updated_at": created,
        "ip": status.and_then(|s| s.ip.clone()).unwrap_or_default(),
        "ttl": inst.spec.ttl.clone().unwrap_or_default(),
        "owner": inst.spec.owner.clone().unwrap_or_default(),
    });
    if let Some(obj) = out.as_object_mut() {
        if !inst.spec.labels.is_empty() {
            obj.insert("labels".into(), json!(inst.spec.labels));
        }
        let unmounted = inst.metadata.annotations.as_ref().and_then(|a| a.get(UNMOUNTED_ANNOTATION));
        match (status.and_then(|s| s.message.clone()), unmounted) {
            (Some(message), _) => {
                obj.insert("message".into(), json!(message));
            }
            (None, Some(dirs)) => {
                obj.insert(
                    "message".into(),
                    json!(format!(
                        "mount_points not mounted ({dirs}): this operator mounts no OSS or shared storage; copy files in with the files API"
                    )),
                );
            }
            (None, None) => {}
        }
        // From the spec, not the status: a claim answers before the controller writes the new expiry there.
        if let Some(expire) = inst.expires_at().ok().flatten() {
            obj.insert("expire_at".into(), json!(format_time(expire)));
        }
        if let Some(ready) = inst.ready_condition() {
            obj.insert("ready".into(), json!(ready.status == "True"));
        }
        if let Some(ports) = status.map(|s| &s.ports).filter(|p| !p.is_empty()) {
            obj.insert("ports".into(), json!(ports));
        }
        // A compose stack's services, each with its state (`running`, `exited`, `missing`), health and IP.
        if let Some(services) = status.map(|s| &s.services).filter(|s| !s.is_empty()) {
            obj.insert("services".into(), json!(services));
        }
    }
    out
}

/// A complete Env (every key the SDK's pydantic model requires), rebuilt from the instance's spec.
fn env(inst: &EnvInstance, created: &str) -> Value {
    env_json(&inst.spec, EnvMeta { created, ..Default::default() })
}

/// What an Env carries beyond the spec.
#[derive(Default)]
pub struct EnvMeta<'a> {
    pub id: &'a str,
    pub description: &'a str,
    pub tags: &'a [String],
    pub code_url: &'a str,
    pub created: &'a str,
}

/// An Environment template as envhub renders an Env.
pub fn template(t: &Environment) -> Value {
    let created = t.metadata.creation_timestamp.as_ref().map(|t| format_time(t.0)).unwrap_or_default();
    let mut spec = t.spec.template.clone();
    spec.env_name = t.spec.name.clone();
    spec.env_version = t.spec.version.clone();
    let mut v = env_json(
        &spec,
        EnvMeta {
            id: t.metadata.uid.as_deref().unwrap_or_default(),
            description: &t.spec.description,
            tags: &t.spec.tags,
            code_url: &t.spec.code_url,
            created: &created,
        },
    );
    if let Value::Object(fields) = &mut v {
        // Who registered it (with tokens on), and whether other tenants may create from it.
        fields.insert("owner".into(), json!(t.spec.owner.clone().unwrap_or_default()));
        fields.insert("shared".into(), json!(t.spec.shared));
        fields.insert("status".into(), json!(template_status(t)));
        if let (Some(service), Some(Value::Object(deploy))) = (&t.spec.service, fields.get_mut("deploy_config")) {
            deploy.insert("service".into(), service_defaults_json(service));
        }
    }
    v
}

/// `deployConfig.service` as the CLI writes it.
fn service_defaults_json(d: &aenv_core::envservice::ServiceDefaults) -> Value {
    let mut out = serde_json::Map::new();
    if let Some(r) = d.replicas {
        out.insert("replicas".into(), json!(r));
    }
    if let Some(p) = d.port {
        out.insert("port".into(), json!(p));
    }
    out.insert("enableStorage".into(), json!(d.storage.is_some()));
    if let Some(s) = &d.storage {
        for (k, v) in [("storageName", &s.name), ("storageSize", &s.size), ("mountPath", &s.mount_path)] {
            if let Some(v) = v {
                out.insert(k.into(), json!(v));
            }
        }
    }
    Value::Object(out)
}

fn env_json(spec: &EnvInstanceSpec, meta: EnvMeta<'_>) -> Value {
    let mut deploy = serde_json::Map::new();
    if let Some(cpu) = &spec.resources.cpu {
        deploy.insert("cpu".into(), json!(cpu));
    }
    if let Some(memory) = &spec.resources.memory {
        deploy.insert("memory".into(), json!(memory));
    }
    if let Some(ttl) = &spec.ttl {
        deploy.insert("ttl".into(), json!(ttl));
    }
    if let Some(owner) = &spec.owner {
        deploy.insert("owner".into(), json!(owner));
    }
    deploy.insert("environment_variables".into(), json!(spec.env));
    deploy.insert("arguments".into(), json!(spec.args));
    if let Some(compose) = &spec.compose_file {
        deploy.insert("composeFile".into(), json!(compose));
    }
    if let Some(network) = &spec.network {
        deploy.insert("network".into(), json!(network));
    }
    if !spec.ports.is_empty() {
        deploy.insert("ports".into(), json!(spec.ports));
    }
    if let Some(readiness) = &spec.readiness {
        deploy.insert("readiness".into(), json!(readiness));
    }
    if !spec.labels.is_empty() {
        deploy.insert("labels".into(), json!(spec.labels));
    }
    json!({
        "id": meta.id,
        "name": spec.env_name,
        "description": meta.description,
        "version": spec.env_version,
        "tags": meta.tags,
        "code_url": meta.code_url,
        "status": ENV_STATUS_READY,
        "artifacts": spec.image.iter().map(|i| json!({"id": "", "type": "image", "content": i})).collect::<Vec<_>>(),
        "build_config": null,
        "test_config": null,
        "deploy_config": deploy,
        "created_at": meta.created,
        "updated_at": meta.created,
    })
}

#[cfg(test)]
mod tests {
    use aenv_core::{EnvInstanceSpec, EnvInstanceStatus, Phase};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;

    #[test]
    fn instance_has_every_key_the_sdk_needs() {
        let mut inst = EnvInstance::new(
            "demo-abc123",
            EnvInstanceSpec {
                env_name: "demo".into(),
                env_version: "1.0.0".into(),
                image: Some("img:1".into()),
                ttl: Some("30m".into()),
                owner: Some("alice".into()),
                ..Default::default()
            },
        );
        inst.metadata.creation_timestamp = Some(Time("2026-01-02T03:04:05.678Z".parse().unwrap()));
        let v = instance(&inst);
        assert_eq!(v["id"], "demo-abc123");
        assert_eq!(v["status"], "Pending");
        assert_eq!(v["ip"], "");
        assert_eq!(v["created_at"], "2026-01-02T03:04:05Z");
        assert_eq!(v["ttl"], "30m");
        assert_eq!(v["owner"], "alice");
        for key in ["id", "name", "description", "version", "code_url", "status", "created_at", "updated_at"] {
            assert!(v["env"].get(key).is_some(), "env.{key} missing");
        }
        assert_eq!(v["env"]["artifacts"][0]["content"], "img:1");
        inst.status =
            Some(EnvInstanceStatus { phase: Phase::Running, ip: Some("172.17.0.2".into()), ..Default::default() });
        assert_eq!(instance(&inst)["status"], "Running");
        assert_eq!(instance(&inst)["ip"], "172.17.0.2");
        inst.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
        assert_eq!(instance(&inst)["status"], "Terminated");
    }
}
