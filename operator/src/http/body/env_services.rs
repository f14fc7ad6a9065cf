//! The bodies of long-running services: `POST /env-service` and `PUT /env-service/{id}` (the SDK's
//! `EnvServiceCreateRequest` and `EnvServiceUpdateRequest`, the update also `PUT /services/{name}`), and the
//! service keys of the controller API's `POST /services` (its AEnvHubEnv's `deployConfig`).

use aenv_core::{Resources, envservice::EphemeralStorage};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use super::{
    BodyError,
    create::validate_env,
    lenient::{EnvValues, Ranged, StringMap, Text, Whole},
};
use crate::usecase::{EnvServiceRequest, EnvServiceUpdate};

/// A DNS label (a service's or a volume's name).
pub(super) const DNS_LABEL_PATTERN: &str = "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$";
/// An absolute path other than `/`, without `.` or `..` components or ':'.
pub(super) const MOUNT_PATH_PATTERN: &str = "^(/[A-Za-z0-9_-][A-Za-z0-9_.-]{0,30}){1,8}$";
/// A cpu quantity (`1`, `0.5`, `500m`).
const CPU_PATTERN: &str = "^([1-9][0-9]{0,2}(\\.[0-9]{1,3})?|0\\.[0-9]{0,2}[1-9]|[1-9][0-9]{0,5}m)$";
/// A size of at least 6Mi (`512Mi`, `2Gi`, `10G`).
pub(super) const SIZE_PATTERN: &str = "^([1-9][0-9]{0,3}(\\.[0-9]{1,2})?(Gi|G|Ti|T)|([7-9]|[1-9][0-9]{1,5})(Mi|M))$";
const ENV_NAME_PATTERN: &str = "^[a-z0-9]([-a-z0-9]{0,54}[a-z0-9])?@[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$";
const OWNER_PATTERN: &str = "^[^\\u0000-\\u001f\\u007f-\\u009f]{0,63}$";

/// `POST /env-service`: a service of a registered Environment (the SDK's `EnvServiceCreateRequest`).
#[derive(Deserialize, JsonSchema, Debug, Default)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "EnvServiceCreate")]
pub struct ServiceCreate {
    /// name@version of a registered Environment.
    #[serde(rename = "envName")]
    #[schemars(required, regex(pattern = ENV_NAME_PATTERN))]
    pub env_name: Option<Text>,
    /// A DNS label; default {name}-svc-{random}.
    #[serde(default)]
    #[schemars(regex(pattern = DNS_LABEL_PATTERN))]
    pub service_name: Option<Text>,
    /// Default 1; at most 1 with storage_size.
    #[serde(default)]
    pub replicas: Option<Ranged<0, 100>>,
    #[serde(default)]
    pub environment_variables: Option<StringMap<EnvValues>>,
    /// Taken only without tokens (with tokens the owner is the token's).
    #[serde(default)]
    #[schemars(regex(pattern = OWNER_PATTERN))]
    pub owner: Option<Text>,
    /// The storage's name (a DNS label): a Docker volume; default the environment's name when storage_size or
    /// mount_path is given.
    #[serde(default)]
    #[schemars(regex(pattern = DNS_LABEL_PATTERN))]
    pub pvc_name: Option<Text>,
    /// Absolute path; default /home/admin/data.
    #[serde(default)]
    #[schemars(regex(pattern = MOUNT_PATH_PATTERN))]
    pub mount_path: Option<Text>,
    /// Such as 10Gi; recorded (a local Docker volume has no size).
    #[serde(default)]
    #[schemars(regex(pattern = SIZE_PATTERN))]
    pub storage_size: Option<Text>,
    /// Default 8080.
    #[serde(default)]
    pub port: Option<Ranged<1, 65535>>,
    /// A Pod's cpu request on Kubernetes; CpuShares (1024 per core) on Docker; at most cpu_limit.
    #[serde(default)]
    #[schemars(regex(pattern = CPU_PATTERN))]
    pub cpu_request: Option<Text>,
    #[serde(default)]
    #[schemars(regex(pattern = CPU_PATTERN))]
    pub cpu_limit: Option<Text>,
    /// A Pod's memory request on Kubernetes; MemoryReservation on Docker; at most memory_limit.
    #[serde(default)]
    #[schemars(regex(pattern = SIZE_PATTERN))]
    pub memory_request: Option<Text>,
    #[serde(default)]
    #[schemars(regex(pattern = SIZE_PATTERN))]
    pub memory_limit: Option<Text>,
    /// A Pod's ephemeral-storage request on Kubernetes; not enforced on Docker.
    #[serde(default)]
    #[schemars(regex(pattern = SIZE_PATTERN))]
    pub ephemeral_storage_request: Option<Text>,
    /// A Pod's ephemeral-storage limit on Kubernetes; not enforced on Docker.
    #[serde(default)]
    #[schemars(regex(pattern = SIZE_PATTERN))]
    pub ephemeral_storage_limit: Option<Text>,
    /// (ours) a replica not ready this many seconds after it was made is removed and replaced, the reason in
    /// `message`; default --service-ready-timeout (5 minutes). Docker engine; on Kubernetes the Deployment's
    /// progress deadline applies.
    #[serde(default)]
    pub ready_timeout_seconds: Option<Ranged<1, 86400>>,
}

/// `PUT /env-service/{id}`: what to change (at least one field); the replicas are replaced one by one.
#[derive(Deserialize, JsonSchema, Debug, Default)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "EnvServiceUpdate", extend("minProperties" = 1))]
pub struct ServiceChange {
    #[serde(default)]
    pub replicas: Option<Ranged<0, 100>>,
    #[serde(default)]
    #[schemars(regex(pattern = "^[^\\s\\u0000-\\u001f\\u007f-\\u009f]{1,128}$"))]
    pub image: Option<Text>,
    /// Replaces the service's variables.
    #[serde(default)]
    pub environment_variables: Option<StringMap<EnvValues>>,
}

/// A text field, trimmed; `None` for absent, null or blank.
fn text(t: Option<Text>) -> Option<String> {
    t.map(|t| t.as_str().trim().to_string()).filter(|s| !s.is_empty())
}

/// Refuses a quantity that does not parse, naming `field` as the route spells it.
fn quantity(field: &str, value: &Option<String>, cpu: bool) -> Result<(), BodyError> {
    let Some(q) = value else { return Ok(()) };
    let ok = if cpu {
        aenv_core::quantity::parse_cpu_millis(q).is_ok()
    } else {
        aenv_core::quantity::parse_memory_bytes(q).is_ok()
    };
    if ok {
        return Ok(());
    }
    let example = if cpu { "\"1\" or \"500m\"" } else { "\"2Gi\"" };
    Err(BodyError::field(field, format!("field `{field}` must be a quantity such as {example} (got {q:?})")))
}

/// `POST /env-service`'s body.
pub fn parse_create(bytes: &[u8]) -> Result<EnvServiceRequest, BodyError> {
    let body: ServiceCreate = super::decode(bytes, r#"{"envName": "name@version"}"#)?;
    let env_name = text(body.env_name).ok_or_else(|| {
        BodyError::field(
            "envName",
            "field `envName` is required: name@version of an environment, such as \"mini@1.0.0\"",
        )
    })?;
    let env = body.environment_variables.unwrap_or_default().into_inner();
    validate_env(&env, "environment_variables")?;
    let request = EnvServiceRequest {
        env_name,
        service_name: text(body.service_name),
        replicas: body.replicas.map(|r| r.0),
        env,
        pvc_name: text(body.pvc_name),
        mount_path: text(body.mount_path),
        storage_size: text(body.storage_size),
        port: body.port.map(|p| p.0),
        cpu: text(body.cpu_limit),
        memory: text(body.memory_limit),
        requests: Resources { cpu: text(body.cpu_request), memory: text(body.memory_request) },
        ephemeral_storage: EphemeralStorage {
            request: text(body.ephemeral_storage_request),
            limit: text(body.ephemeral_storage_limit),
        },
        owner: text(body.owner),
        ready_timeout_seconds: body.ready_timeout_seconds.map(|t| t.0),
        inline: None,
    };
    check_quantities(
        &request,
        [
            "cpu_limit",
            "memory_limit",
            "cpu_request",
            "memory_request",
            "ephemeral_storage_request",
            "ephemeral_storage_limit",
            "storage_size",
        ],
    )?;
    Ok(request)
}

/// The quantities of `r`, each named as the route spells it (in the order cpu, memory, cpu request, memory
/// request, ephemeral request, ephemeral limit, storage size).
fn check_quantities(r: &EnvServiceRequest, names: [&str; 7]) -> Result<(), BodyError> {
    quantity(names[0], &r.cpu, true)?;
    quantity(names[1], &r.memory, false)?;
    quantity(names[2], &r.requests.cpu, true)?;
    quantity(names[3], &r.requests.memory, false)?;
    quantity(names[4], &r.ephemeral_storage.request, false)?;
    quantity(names[5], &r.ephemeral_storage.limit, false)?;
    quantity(names[6], &r.storage_size, false)
}

/// `PUT /env-service/{id}`'s body.
pub fn parse_update(bytes: &[u8]) -> Result<EnvServiceUpdate, BodyError> {
    let body: ServiceChange = super::decode(bytes, r#"{"replicas": 2}"#)?;
    let env = body.environment_variables.map(StringMap::into_inner);
    if let Some(env) = &env {
        validate_env(env, "environment_variables")?;
    }
    let update = EnvServiceUpdate { replicas: body.replicas.map(|r| r.0), image: text(body.image), env };
    if update == EnvServiceUpdate::default() {
        return Err(BodyError::body(
            "nothing to change: give at least one of `replicas`, `image`, `environment_variables`",
        ));
    }
    Ok(update)
}

/// The service keys of `POST /services`' `deployConfig` (the Go controller's names); other keys are the Env's.
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct ControllerService {
    #[serde(default)]
    pub service_name: Option<Text>,
    #[serde(default)]
    pub replicas: Option<Whole>,
    #[serde(default)]
    pub pvc_name: Option<Text>,
    #[serde(default)]
    pub mount_path: Option<Text>,
    #[serde(default)]
    pub storage_size: Option<Text>,
    #[serde(default)]
    pub port: Option<Whole>,
    #[serde(default)]
    pub cpu_limit: Option<Text>,
    #[serde(default)]
    pub memory_limit: Option<Text>,
    #[serde(default)]
    pub cpu_request: Option<Text>,
    #[serde(default)]
    pub memory_request: Option<Text>,
    #[serde(default)]
    pub ephemeral_storage_request: Option<Text>,
    #[serde(default)]
    pub ephemeral_storage_limit: Option<Text>,
    #[serde(default)]
    pub owner: Option<Text>,
}

/// The service of a `POST /services` body whose Env resolved to `inline`, named `env_name` (`name@version`):
/// the keys of its `deployConfig` (`deploy`), each refusal naming `deployConfig.<key>`.
pub fn controller_service(
    deploy: Option<Value>,
    env_name: String,
    inline: aenv_core::EnvInstanceSpec,
) -> Result<EnvServiceRequest, BodyError> {
    let keys: ControllerService = match deploy {
        Some(d @ Value::Object(_)) => super::from_value_at(d, "deployConfig")?,
        _ => ControllerService::default(),
    };
    let request = EnvServiceRequest {
        env_name,
        service_name: text(keys.service_name),
        replicas: keys.replicas.map(|r| r.0),
        env: Default::default(),
        pvc_name: text(keys.pvc_name),
        mount_path: text(keys.mount_path),
        storage_size: text(keys.storage_size),
        port: keys.port.map(|p| p.0),
        cpu: text(keys.cpu_limit),
        memory: text(keys.memory_limit),
        requests: Resources { cpu: text(keys.cpu_request), memory: text(keys.memory_request) },
        ephemeral_storage: EphemeralStorage {
            request: text(keys.ephemeral_storage_request),
            limit: text(keys.ephemeral_storage_limit),
        },
        owner: text(keys.owner),
        ready_timeout_seconds: None,
        inline: Some(inline),
    };
    check_quantities(
        &request,
        [
            "deployConfig.cpuLimit",
            "deployConfig.memoryLimit",
            "deployConfig.cpuRequest",
            "deployConfig.memoryRequest",
            "deployConfig.ephemeralStorageRequest",
            "deployConfig.ephemeralStorageLimit",
            "deployConfig.storageSize",
        ],
    )?;
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_checked_with_the_field_named() {
        let ok = parse_create(
            br#"{"envName":"mini@1.0.0","service_name":"web","replicas":2,"environment_variables":{"A":"1"},"owner":"me","port":8081,"cpu_request":"1","cpu_limit":"2"}"#,
        )
        .unwrap();
        assert_eq!(
            (ok.replicas, ok.port, ok.cpu.as_deref(), ok.owner.as_deref()),
            (Some(2), Some(8081), Some("2"), Some("me"))
        );
        let lenient =
            parse_create(br#"{"envName":"m@1","replicas":"2","port":"8081","environment_variables":{"A":1}}"#).unwrap();
        assert_eq!((lenient.replicas, lenient.port), (Some(2), Some(8081)), "whole numbers as strings, one rule");
        assert_eq!(lenient.env.get("A").map(String::as_str), Some("1"));
        for (body, field) in [
            (&br#"{"replicas":1}"#[..], "`envName`"),
            (br#"{"envName":"m@1","replicas":"two"}"#, "`replicas`"),
            (br#"{"envName":"m@1","replicas":1.5}"#, "`replicas`"),
            (br#"{"envName":"m@1","replicas":101}"#, "`replicas`"),
            (br#"{"envName":"m@1","environment_variables":{"A":{}}}"#, "`environment_variables.A`"),
            (br#"{"envName":"m@1","environment_variables":[]}"#, "`environment_variables`"),
            (br#"{"envName":"m@1","memory_request":"lots"}"#, "`memory_request`"),
            (br#"{"envName":"m@1","cpu_limit":"lots"}"#, "`cpu_limit`"),
            (br#"{"envName":"m@1","port":0}"#, "`port`"),
            (br#"{"envName":"m@1","size":3}"#, "`size`"),
        ] {
            let e = parse_create(body).unwrap_err();
            assert!(e.message.contains(field), "{}: {}", String::from_utf8_lossy(body), e.message);
        }
        assert!(parse_update(b"{}").unwrap_err().message.contains("nothing to change"));
        assert!(parse_update(br#"{"replicas":-1}"#).unwrap_err().message.contains("`replicas`"));
        assert!(parse_update(br#"{"image":[]}"#).unwrap_err().message.contains("`image`"));
    }

    #[test]
    fn the_controller_api_names_its_deploy_keys() {
        let inline = aenv_core::EnvInstanceSpec::default();
        let r = controller_service(
            Some(serde_json::json!({"replicas": 2, "serviceName": "web", "cpuLimit": 1, "podTemplate": "x"})),
            "e@1".into(),
            inline.clone(),
        )
        .unwrap();
        assert_eq!((r.replicas, r.service_name.as_deref(), r.cpu.as_deref()), (Some(2), Some("web"), Some("1")));
        let e =
            controller_service(Some(serde_json::json!({"replicas": "x"})), "e@1".into(), inline.clone()).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("deployConfig.replicas"), "{e:?}");
        assert!(e.message.contains("`deployConfig.replicas`"), "{e:?}");
        let e = controller_service(Some(serde_json::json!({"memoryLimit": "lots"})), "e@1".into(), inline).unwrap_err();
        assert!(e.message.contains("`deployConfig.memoryLimit`"), "{e:?}");
    }
}
