//! The create bodies: `POST /env-instance`, `POST /env` (a template), `POST /pods` and `POST /services` (the
//! controller API). Two forms: the SDK's `{"envName": "name@version", ...}` ([`FromTemplate`]), which needs a
//! registered Environment, and the inline Env of the Docker-engine guide and the api-service ([`Inline`]):
//! `{"name", "version", "artifacts": [{"type": "image", "content": IMAGE}], "deployConfig": {...}}`.

use std::collections::BTreeMap;

use aenv_core::{
    EnvInstanceSpec, Placement, PortSpec, PullPolicy, ReadinessProbe, Resources,
    envservice::{ServiceDefaults, StorageDefaults},
    labels::{is_dns_label, is_reserved},
};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{
    BodyError,
    lenient::{EnvValues, Ignored, LabelValues, Ranged, StringMap, Text},
};
pub use crate::usecase::{CreateRequest, Overrides, TemplateMeta};

/// Largest compose file accepted (256 KiB).
pub const MAX_COMPOSE_BYTES: usize = 256 * 1024;
/// Longest environment name: it becomes part of instance ids, container names and labels.
pub const MAX_NAME_LEN: usize = 56;

/// An environment name (at most [`MAX_NAME_LEN`]).
const NAME_PATTERN: &str = "^[a-z0-9]([-a-z0-9]{0,54}[a-z0-9])?$";
/// A version: at most 63 letters, digits, '.', '-', '_', starting and ending with a letter or digit.
const VERSION_PATTERN: &str = "^([A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)?$";
/// `name@version`, a version being non-empty.
const ENV_NAME_PATTERN: &str = "^[a-z0-9]([-a-z0-9]{0,54}[a-z0-9])?@[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$";
/// A Go duration longer than zero, such as `30m` or `1h30m` (more forms are taken: `1.5h`, `90s`, `500ms`).
const TTL_PATTERN: &str = "^[1-9][0-9]{0,4}(h|m|s)([0-9]{1,4}(m|s))?$";
/// CPU: cores (`2`, `0.5`, `1C`) or millicores (`500m`), up to 1024 cores.
const CPU_PATTERN: &str = "^([1-9][0-9]{0,2}(\\.[0-9]{1,3})?[Cc]?|0\\.[0-9]{0,2}[1-9][Cc]?|[1-9][0-9]{0,5}m)$";
/// Memory: Kubernetes quantities of at least 6Mi (`512Mi`, `2Gi`, `2G`).
const MEMORY_PATTERN: &str = "^([1-9][0-9]{0,3}(\\.[0-9]{1,2})?(Gi|G|Ti|T)|([7-9]|[1-9][0-9]{1,5})(Mi|M))$";
/// An owner: at most 253 bytes without control characters.
const OWNER_PATTERN: &str = "^[^\\u0000-\\u001f\\u007f-\\u009f]{0,63}$";
/// A Docker network: `bridge`, `none`, `host` or a name.
const NETWORK_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$";
/// An image reference: no whitespace or control characters, at most 512 bytes.
const IMAGE_PATTERN: &str = "^[^\\s\\u0000-\\u001f\\u007f-\\u009f]{1,128}$";
/// A container port, optionally with its protocol: `8080`, `9000/udp`.
const PORT_PATTERN: &str =
    "^([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])(/(tcp|udp))?$";

/// How strict to be with `deployConfig` keys this operator does not know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strictness {
    /// The public API: an unknown key is a 400 that lists the supported ones (a typo never passes silently).
    Strict,
    /// The controller's `/pods` and `/services`: the api-service forwards whatever deployConfig envhub holds;
    /// unknown keys are ignored there, as the AEnvironment controller ignores them.
    Lenient,
}

/// `POST /env-instance` from a registered Environment, as the SDK's `create_env_instance()` sends it (the
/// template's spec with these overrides).
#[derive(Deserialize, JsonSchema, Debug, Default)]
#[schemars(rename = "CreateFromTemplate")]
pub struct FromTemplate {
    /// `name@version` of a registered Environment.
    #[serde(rename = "envName")]
    #[schemars(regex(pattern = ENV_NAME_PATTERN), extend("example" = "mini-terminal@1.0.1"))]
    pub env_name: Text,
    /// Passed to the instance as `AENV_DATASOURCE`.
    #[serde(default)]
    pub datasource: Option<Text>,
    /// Replaces the template's TTL when not empty.
    #[serde(default)]
    #[schemars(regex(pattern = TTL_PATTERN), extend("example" = "30m"))]
    pub ttl: Option<Text>,
    /// Merged over the template's variables.
    #[serde(default)]
    pub environment_variables: Option<StringMap<EnvValues>>,
    /// Replace the template's arguments when not empty.
    #[serde(default)]
    pub arguments: Option<Vec<Text>>,
    #[serde(default)]
    #[schemars(regex(pattern = OWNER_PATTERN))]
    pub owner: Option<Text>,
    /// Merged over the template's labels; keys under `aenv.io/` are the operator's.
    #[serde(default)]
    pub labels: Option<StringMap<LabelValues>>,
    /// Accepted and not mounted: this operator mounts no OSS or shared storage, as upstream ignores them on
    /// its Kubernetes engine; the instance's `message` says so.
    #[serde(default)]
    pub mount_points: Option<Vec<MountPoint>>,
}

/// A mount point as the SDK sends it (`{"id": "OSS_xxx", "remote_dir": "/data", "local_dir": "/workspace"}`).
#[derive(Deserialize, JsonSchema, Debug, Default)]
pub struct MountPoint {
    #[serde(default)]
    pub id: Option<Text>,
    #[serde(default)]
    pub remote_dir: Option<Text>,
    #[serde(default)]
    pub local_dir: Option<Text>,
}

/// `deployConfig.service`: what services made from this template start with (the `aenv` CLI's project
/// template writes it; a `POST /env-service` request's own fields win).
#[derive(Deserialize, JsonSchema, Debug, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(rename = "ServiceDefaults")]
pub struct ServiceBody {
    #[serde(default)]
    pub replicas: Option<Ranged<0, 100>>,
    #[serde(default)]
    pub port: Option<Ranged<1, 65535>>,
    /// Give each service made from the template a volume (`storageName`, `storageSize`, `mountPath`).
    #[serde(default)]
    pub enable_storage: Option<bool>,
    /// The volume's name (a DNS label); default the environment's name.
    #[serde(default)]
    #[schemars(regex(pattern = super::env_services::DNS_LABEL_PATTERN))]
    pub storage_name: Option<Text>,
    /// The same (the CLI's `init --config-only` writes it): read when `storageName` is absent.
    #[serde(default)]
    #[schemars(regex(pattern = super::env_services::DNS_LABEL_PATTERN))]
    pub pvc_name: Option<Text>,
    #[serde(default)]
    #[schemars(regex(pattern = super::env_services::SIZE_PATTERN))]
    pub storage_size: Option<Text>,
    #[serde(default)]
    #[schemars(regex(pattern = super::env_services::MOUNT_PATH_PATTERN))]
    pub mount_path: Option<Text>,
}

/// An artifact of an Env: the first of `type` `image` names the image (others are ignored).
#[derive(Deserialize, JsonSchema, Debug, Default)]
pub struct Artifact {
    /// `image` (other types, such as `code`, are accepted and ignored: the schema lists only what is read).
    #[serde(rename = "type")]
    #[schemars(required, extend("enum" = ["image"]), extend("example" = "image"))]
    pub kind: Option<Text>,
    /// The image reference, such as `alpine:3.20`.
    #[schemars(required, regex(pattern = IMAGE_PATTERN))]
    pub content: Option<Text>,
}

/// An inline Env: `POST /env-instance` of the Docker-engine guide, `POST /env` (a template: `name@version`),
/// and the AEnvHubEnv the api-service sends to `POST /pods` and `POST /services` (other keys it sends are
/// ignored).
#[derive(Deserialize, JsonSchema, Debug, Default)]
#[schemars(rename = "CreateInline")]
pub struct Inline {
    #[schemars(required, regex(pattern = NAME_PATTERN), length(max = 56))]
    pub name: Option<Text>,
    #[serde(default)]
    #[schemars(regex(pattern = VERSION_PATTERN))]
    pub version: Option<Text>,
    #[serde(default)]
    #[schemars(regex(pattern = OWNER_PATTERN))]
    pub owner: Option<Text>,
    /// Used when `deployConfig.ttl` is absent.
    #[serde(default)]
    #[schemars(regex(pattern = TTL_PATTERN))]
    pub ttl: Option<Text>,
    #[serde(default)]
    pub description: Option<Text>,
    #[serde(default)]
    pub tags: Option<Vec<Text>>,
    #[serde(default)]
    pub code_url: Option<Text>,
    /// The same, as the `aenv` CLI writes it: read when `code_url` is absent or empty (the api-service sends both).
    #[serde(default, rename = "codeUrl")]
    pub code_url_camel: Option<Text>,
    /// Merged with `deployConfig.labels`; keys under `aenv.io/` are the operator's.
    #[serde(default)]
    pub labels: Option<StringMap<LabelValues>>,
    /// Needs an image artifact, unless `deployConfig.composeFile` names the images.
    #[schemars(required, length(min = 1))]
    pub artifacts: Option<Vec<Artifact>>,
    #[serde(default, rename = "deployConfig")]
    pub deploy_config: Option<DeployConfig>,
    /// The same, as envhub spells it: read when `deployConfig` is absent (decoded as `deployConfig`).
    #[serde(default, rename = "deploy_config")]
    pub deploy_config_snake: Option<DeployConfig>,
    /// `POST /env` only: other tenants may create instances from this template (tokens on).
    #[serde(default)]
    pub shared: Option<bool>,
}

/// `readiness`: `false` (no probe), `true` (the default probe), or the probe.
#[derive(Debug)]
pub enum Readiness {
    On(bool),
    Probe(Probe),
}

impl<'de> Deserialize<'de> for Readiness {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match Value::deserialize(d)? {
            Value::Bool(b) => Ok(Readiness::On(b)),
            value @ Value::Object(_) => Probe::deserialize(value).map(Readiness::Probe).map_err(|e| {
                D::Error::custom(format!(
                    "{e} (write {{\"port\": 8081, \"path\": \"/health\", \"timeoutMs\": 1000}} or false)"
                ))
            }),
            other => Err(D::Error::custom(format!(
                "must be an object such as {{\"port\": 8081, \"path\": \"/health\"}} or false, not {}",
                super::describe(&other)
            ))),
        }
    }
}

impl JsonSchema for Readiness {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Readiness".into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let probe = generator.subschema_for::<Probe>();
        schemars::json_schema!({
            "description": "`false` (no probe), `true` (the default probe), or the probe.",
            "oneOf": [{"type": "boolean"}, probe],
        })
    }
}

/// An HTTP readiness probe: the instance is ready when `GET http://<ip>:<port><path>` answers 2xx.
#[derive(Deserialize, JsonSchema, Debug, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(rename = "ReadinessProbe")]
pub struct Probe {
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Default 8081.
    #[serde(default)]
    pub port: Option<Ranged<1, 65535>>,
    /// Default `/health`.
    #[serde(default)]
    #[schemars(regex(pattern = "^/[^\\u0000-\\u001f\\u007f-\\u009f]{0,200}$"))]
    pub path: Option<Text>,
    /// Default 1000.
    #[serde(default)]
    pub timeout_ms: Option<Ranged<1, 60000>>,
}

/// `--engine swarm` only (other engines answer 400): Swarm placement constraints and spread preferences.
#[derive(Deserialize, JsonSchema, Debug, Default)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Placement")]
pub struct PlacementBody {
    #[serde(default)]
    #[schemars(extend("example" = ["node.labels.gpu==true"]))]
    pub constraints: Option<Vec<Text>>,
    #[serde(default)]
    #[schemars(extend("example" = ["node.labels.zone"]))]
    pub preferences: Option<Vec<Text>>,
}

/// A container port to publish: `8080`, `"9000/udp"` or `{"containerPort": 8081, "protocol": "tcp"}`.
#[derive(Debug)]
pub enum Port {
    Number(Ranged<1, 65535>),
    Text(Text),
    Object(PortObject),
}

impl JsonSchema for Port {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Port".into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let object = generator.subschema_for::<PortObject>();
        schemars::json_schema!({
            "description": "A container port to publish: `8080`, `\"9000/udp\"` or `{\"containerPort\": 8081, \"protocol\": \"tcp\"}`.",
            "oneOf": [
                {"type": "integer", "minimum": 1, "maximum": 65535},
                {"type": "string", "pattern": PORT_PATTERN},
                object,
            ],
        })
    }
}

/// A port as an object.
#[derive(Deserialize, JsonSchema, Debug)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortObject {
    pub container_port: Ranged<1, 65535>,
    #[serde(default)]
    #[schemars(extend("enum" = ["tcp", "udp"]))]
    pub protocol: Option<Text>,
}

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let value = Value::deserialize(d)?;
        let port = |n: u64| {
            i64::try_from(n).ok().filter(|n| (1..=65535).contains(n)).map(Ranged).ok_or_else(|| {
                D::Error::custom("must be a container port from 1 to 65535, optionally with /tcp or /udp")
            })
        };
        match value {
            Value::Number(n) => n
                .as_u64()
                .ok_or_else(|| D::Error::custom("must be a port from 1 to 65535"))
                .and_then(port)
                .map(Port::Number),
            Value::String(s) => {
                let (number, protocol) = s.split_once('/').unwrap_or((&s, "tcp"));
                if protocol != "tcp" && protocol != "udp" {
                    return Err(D::Error::custom(format!("has protocol {protocol:?}; use tcp or udp")));
                }
                number
                    .parse::<u64>()
                    .map_err(|_| D::Error::custom("must be a container port such as 8080 or \"9000/udp\""))
                    .and_then(port)?;
                Ok(Port::Text(Text(s)))
            }
            Value::Object(_) => PortObject::deserialize(value).map(Port::Object).map_err(D::Error::custom),
            other => Err(D::Error::custom(format!(
                "must be a port number, \"port/protocol\" or {{\"containerPort\": N}}, not {}",
                super::describe(&other)
            ))),
        }
    }
}

impl Port {
    fn spec(self) -> PortSpec {
        let (port, protocol) = match self {
            Port::Number(n) => (n.get::<u16>(), None),
            Port::Text(Text(s)) => match s.split_once('/') {
                Some((p, proto)) => (p.parse().unwrap_or_default(), Some(proto.to_string())),
                None => (s.parse().unwrap_or_default(), None),
            },
            Port::Object(o) => (o.container_port.get::<u16>(), o.protocol.map(Text::into_string)),
        };
        PortSpec { container_port: port, protocol: protocol.filter(|p| p != "tcp") }
    }
}

/// What runs, and how: the keys this operator reads, and the AEnvironment keys it accepts and ignores.
#[derive(Deserialize, JsonSchema, Debug, Default)]
#[schemars(extend("additionalProperties" = false))]
pub struct DeployConfig {
    #[serde(default)]
    #[schemars(regex(pattern = CPU_PATTERN), extend("example" = "1C"))]
    pub cpu: Option<Text>,
    #[serde(default)]
    #[schemars(regex(pattern = MEMORY_PATTERN), extend("example" = "512Mi"))]
    pub memory: Option<Text>,
    #[serde(default)]
    #[schemars(regex(pattern = TTL_PATTERN), extend("example" = "1h"))]
    pub ttl: Option<Text>,
    /// Used when the body's `owner` is absent.
    #[serde(default)]
    #[schemars(regex(pattern = OWNER_PATTERN))]
    pub owner: Option<Text>,
    #[serde(default)]
    pub environment_variables: Option<StringMap<EnvValues>>,
    /// The same, as the docker-controller spells it; both are merged.
    #[serde(default, rename = "environmentVariables")]
    pub environment_variables_camel: Option<StringMap<EnvValues>>,
    /// Replace the image's command.
    #[serde(default)]
    pub arguments: Option<Vec<Text>>,
    #[serde(default)]
    pub labels: Option<StringMap<LabelValues>>,
    #[serde(default, rename = "imagePullPolicy")]
    #[schemars(extend("enum" = ["Always", "IfNotPresent", "Never"]))]
    pub image_pull_policy: Option<Text>,
    /// A compose stack instead of one container (at most 256 KiB).
    #[serde(default, rename = "composeFile")]
    #[schemars(length(max = 262144))]
    pub compose_file: Option<Text>,
    #[serde(default)]
    #[schemars(regex(pattern = NETWORK_PATTERN))]
    pub network: Option<Text>,
    #[serde(default)]
    pub ports: Option<Vec<Port>>,
    #[serde(default)]
    pub readiness: Option<Readiness>,
    #[serde(default)]
    pub placement: Option<PlacementBody>,
    #[serde(default, rename = "podTemplate")]
    pub pod_template: Option<Ignored>,
    #[serde(default)]
    pub os: Option<Ignored>,
    #[serde(default, rename = "ephemeralStorage")]
    pub ephemeral_storage: Option<Ignored>,
    #[serde(default, rename = "imagePrefix")]
    pub image_prefix: Option<Ignored>,
    #[serde(default)]
    pub resource: Option<Ignored>,
    #[serde(default)]
    pub port: Option<Ignored>,
    #[serde(default)]
    pub service: Option<ServiceBody>,
    /// Keys of neither kind: refused on the public API, ignored on the controller API.
    #[serde(flatten)]
    #[schemars(skip)]
    pub other: BTreeMap<String, Ignored>,
}

/// The `deployConfig` keys this operator reads (for the refusal of an unknown one).
const DEPLOY_KEYS: &[&str] = &[
    "cpu",
    "memory",
    "ttl",
    "owner",
    "environment_variables",
    "environmentVariables",
    "arguments",
    "labels",
    "imagePullPolicy",
    "composeFile",
    "network",
    "ports",
    "readiness",
    "placement",
    "service",
];

fn bad(field: &str, message: impl Into<String>) -> BodyError {
    BodyError::field(field, message)
}

/// A non-empty, trimmed-if-blank text: `None` for absent, null or empty.
fn given(t: Option<Text>) -> Option<String> {
    t.map(Text::into_string).filter(|s| !s.is_empty())
}

fn given_trimmed(t: Option<Text>) -> Option<String> {
    t.map(Text::into_string).filter(|s| !s.trim().is_empty())
}

fn strings(v: Option<Vec<Text>>) -> Vec<String> {
    v.unwrap_or_default().into_iter().map(Text::into_string).collect()
}

/// Checks the names of environment variables (`path` is the map's field).
pub fn validate_env(env: &BTreeMap<String, String>, path: &str) -> Result<(), BodyError> {
    match env.keys().find(|k| k.is_empty() || k.contains('=') || k.contains('\0')) {
        Some(k) => Err(bad(
            path,
            format!("field `{path}` has an invalid variable name {k:?}: it must be non-empty, without '=' or NUL"),
        )),
        None => Ok(()),
    }
}

fn validate_labels(labels: &BTreeMap<String, String>, path: &str) -> Result<(), BodyError> {
    for k in labels.keys() {
        if k.is_empty() || k.len() > 253 || k.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(bad(path, format!("field `{path}` has an invalid label key {k:?}")));
        }
        if is_reserved(k) {
            return Err(bad(
                path,
                format!(
                    "field `{path}` sets the reserved label {k:?}: keys under aenv.io/ and aenv.env_name are the operator's"
                ),
            ));
        }
    }
    Ok(())
}

/// Checks an environment name: it becomes part of the instance id, the container name and a label.
pub fn validate_env_name(name: &str, path: &str) -> Result<(), BodyError> {
    let ok_chars = name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    let ends_ok =
        name.starts_with(|c: char| c.is_ascii_alphanumeric()) && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if name.is_empty() || !ok_chars || !ends_ok || name.len() > MAX_NAME_LEN {
        return Err(bad(
            path,
            format!(
                "field `{path}` must be 1 to {MAX_NAME_LEN} lowercase letters, digits or '-', starting and ending with a letter or digit (got {name:?})"
            ),
        ));
    }
    Ok(())
}

/// Checks a version (empty is allowed here; a template needs one).
pub fn validate_version(version: &str, path: &str) -> Result<(), BodyError> {
    let ok = version.len() <= 63
        && version.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        && (version.is_empty()
            || (version.starts_with(|c: char| c.is_ascii_alphanumeric())
                && version.ends_with(|c: char| c.is_ascii_alphanumeric())));
    if !ok {
        return Err(bad(
            path,
            format!(
                "field `{path}` must be at most 63 letters, digits, '.', '-' or '_', starting and ending with a letter or digit (got {version:?})"
            ),
        ));
    }
    Ok(())
}

fn validate_owner(owner: &str, path: &str) -> Result<(), BodyError> {
    if owner.len() > 253 || owner.chars().any(char::is_control) {
        return Err(bad(path, format!("field `{path}` must be at most 253 characters without control characters")));
    }
    Ok(())
}

/// A TTL: a Go duration longer than zero.
fn validate_ttl(ttl: &str, path: &str) -> Result<(), BodyError> {
    let d = aenv_core::duration::parse_go_duration(ttl).map_err(|e| bad(path, format!("field `{path}`: {e}")))?;
    if d.is_zero() {
        return Err(bad(path, format!("field `{path}` must be longer than zero (such as \"30m\")")));
    }
    Ok(())
}

/// Parses and validates a create body (`POST /env-instance`, `POST /pods`, `POST /env`, `POST /services`): the
/// request, and what a template registered from it carries beside its spec. A TTL is left unset when the body
/// names none.
pub fn parse_create(body: &[u8], strictness: Strictness) -> Result<(CreateRequest, TemplateMeta), BodyError> {
    let example = r#"{"envName": "name@version"}"#;
    let obj = super::object(body, example)?;
    parse_create_object(obj, strictness)
}

/// [`parse_create`] of a body already read as a JSON object.
pub fn parse_create_object(
    mut obj: Map<String, Value>,
    strictness: Strictness,
) -> Result<(CreateRequest, TemplateMeta), BodyError> {
    if obj.get("envName").is_some_and(|v| !v.is_null()) {
        let body: FromTemplate = super::from_value(Value::Object(obj))?;
        return Ok((from_template(body)?, TemplateMeta::default()));
    }
    // envhub's spelling, when the camel one is absent: decoded as `deployConfig`.
    let snake = obj.remove("deploy_config");
    if obj.get("deployConfig").is_none_or(Value::is_null)
        && let Some(snake) = snake
    {
        obj.insert("deployConfig".into(), snake);
    }
    let mut body: Inline = super::from_value(Value::Object(obj))?;
    let service = body.deploy_config.as_mut().and_then(|d| d.service.take()).map(service_defaults).transpose()?;
    let meta = TemplateMeta {
        shared: body.shared.unwrap_or(false),
        description: body.description.clone().map(Text::into_string).unwrap_or_default(),
        tags: strings(body.tags.clone()),
        code_url: given(body.code_url.clone()).or_else(|| given(body.code_url_camel.clone())).unwrap_or_default(),
        service,
    };
    Ok((inline(body, strictness)?, meta))
}

/// `deployConfig.service`, checked as a service's request would be, each field named where the body holds it.
fn service_defaults(body: ServiceBody) -> Result<ServiceDefaults, BodyError> {
    const AT: &str = "deployConfig.service";
    let name = given_trimmed(body.storage_name).or_else(|| given_trimmed(body.pvc_name));
    if let Some(n) = &name
        && !is_dns_label(n)
    {
        return Err(bad(
            &format!("{AT}.storageName"),
            format!(
                "field `{AT}.storageName` must be 1 to 63 lowercase letters, digits or '-', starting and ending with a letter or digit (got {n:?})"
            ),
        ));
    }
    let size = given_trimmed(body.storage_size);
    if let Some(q) = &size
        && aenv_core::quantity::parse_memory_bytes(q).is_err()
    {
        return Err(bad(
            &format!("{AT}.storageSize"),
            format!("field `{AT}.storageSize` must be a quantity such as \"10Gi\" (got {q:?})"),
        ));
    }
    let mount_path = given_trimmed(body.mount_path);
    if let Some(path) = &mount_path
        && let Some(why) = aenv_core::VolumeMount::mount_path_refusal(path)
    {
        return Err(bad(&format!("{AT}.mountPath"), format!("field `{AT}.mountPath` {why} (got {path:?})")));
    }
    let replicas = body.replicas.map(|r| r.get::<u32>());
    let storage = body.enable_storage.unwrap_or(false).then_some(StorageDefaults { name, size, mount_path });
    if storage.as_ref().is_some_and(|s| s.size.is_some()) && replicas.is_some_and(|r| r > 1) {
        return Err(bad(
            &format!("{AT}.replicas"),
            format!(
                "fields `{AT}.replicas` and `{AT}.storageSize`: a service with storage has one replica; ask for replicas 1 or leave out enableStorage"
            ),
        ));
    }
    Ok(ServiceDefaults { replicas, port: body.port.map(|p| p.get::<u16>()), storage })
}

fn from_template(body: FromTemplate) -> Result<CreateRequest, BodyError> {
    let env_name = body.env_name.into_string();
    let (name, version) = env_name.split_once('@').ok_or_else(|| {
        bad(
            "envName",
            format!("field `envName` must be \"name@version\", such as \"mini-terminal@1.0.1\" (got {env_name:?})"),
        )
    })?;
    validate_env_name(name, "envName")?;
    if version.is_empty() || version.contains('@') {
        return Err(bad(
            "envName",
            format!("field `envName` must be \"name@version\" with one '@' (got {env_name:?})"),
        ));
    }
    validate_version(version, "envName")?;
    let ttl = given_trimmed(body.ttl);
    if let Some(ttl) = &ttl {
        validate_ttl(ttl, "ttl")?;
    }
    let owner = given(body.owner);
    if let Some(owner) = &owner {
        validate_owner(owner, "owner")?;
    }
    let env = body.environment_variables.unwrap_or_default().into_inner();
    validate_env(&env, "environment_variables")?;
    let labels = body.labels.unwrap_or_default().into_inner();
    validate_labels(&labels, "labels")?;
    // Accepted and not mounted, as upstream's Kubernetes engine does; the instance's message says so.
    let unmounted = body
        .mount_points
        .unwrap_or_default()
        .into_iter()
        .map(|m| given(m.local_dir).or_else(|| given(m.id)).unwrap_or_else(|| "?".into()))
        .collect();
    Ok(CreateRequest::FromTemplate {
        name: name.to_string(),
        version: version.to_string(),
        overrides: Box::new(Overrides {
            datasource: given(body.datasource),
            env,
            args: strings(body.arguments),
            ttl,
            owner,
            labels,
            unmounted,
        }),
    })
}

/// The image of the first image artifact.
fn image_of(artifacts: Option<Vec<Artifact>>) -> Result<Option<String>, BodyError> {
    let Some(items) = artifacts else { return Ok(None) };
    for (i, a) in items.into_iter().enumerate() {
        if a.kind.as_ref().map(Text::as_str) != Some("image") {
            continue;
        }
        let content = a.content.map(Text::into_string).unwrap_or_default();
        let content = content.trim();
        if content.is_empty() || content.len() > 512 || content.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad(
                &format!("artifacts[{i}].content"),
                format!(
                    "field `artifacts[{i}].content` must be an image reference such as \"alpine:3.20\" (got {content:?})"
                ),
            ));
        }
        return Ok(Some(content.to_string()));
    }
    Ok(None)
}

fn inline(body: Inline, strictness: Strictness) -> Result<CreateRequest, BodyError> {
    let name = given(body.name).ok_or_else(|| {
        bad("name", "field `name` is required (or send `envName` as \"name@version\" to create from a template)")
    })?;
    validate_env_name(&name, "name")?;
    let version = body.version.map(Text::into_string).unwrap_or_default();
    validate_version(&version, "version")?;
    let deploy = body.deploy_config.unwrap_or_default();
    if strictness == Strictness::Strict && !deploy.other.is_empty() {
        let unknown: Vec<&str> = deploy.other.keys().map(String::as_str).collect();
        return Err(bad(
            &format!("deployConfig.{}", unknown[0]),
            format!("unsupported deployConfig key(s): {}; supported: {}", unknown.join(", "), DEPLOY_KEYS.join(", ")),
        ));
    }
    let compose_file = given_trimmed(deploy.compose_file);
    if compose_file.as_ref().is_some_and(|c| c.len() > MAX_COMPOSE_BYTES) {
        return Err(bad(
            "deployConfig.composeFile",
            format!("field `deployConfig.composeFile` is larger than {MAX_COMPOSE_BYTES} bytes"),
        ));
    }
    let had_artifacts = body.artifacts.is_some();
    // A stack names its images in the compose file; an image artifact is then optional.
    let image = match image_of(body.artifacts)? {
        Some(image) => Some(image),
        None if compose_file.is_some() => None,
        None if had_artifacts => {
            return Err(bad(
                "artifacts",
                "field `artifacts` has no image: add {\"type\": \"image\", \"content\": \"<image reference>\"}",
            ));
        }
        None => {
            return Err(bad(
                "artifacts",
                "field `artifacts` is required: add [{\"type\": \"image\", \"content\": \"<image reference>\"}]",
            ));
        }
    };
    let cpu = given(deploy.cpu);
    if let Some(cpu) = &cpu {
        aenv_core::quantity::parse_cpu_millis(cpu)
            .map_err(|e| bad("deployConfig.cpu", format!("field `deployConfig.cpu`: {e}")))?;
    }
    let memory = given(deploy.memory);
    if let Some(memory) = &memory {
        aenv_core::quantity::parse_memory_bytes(memory)
            .map_err(|e| bad("deployConfig.memory", format!("field `deployConfig.memory`: {e}")))?;
    }
    let ttl = match given_trimmed(deploy.ttl) {
        Some(ttl) => {
            validate_ttl(&ttl, "deployConfig.ttl")?;
            Some(ttl)
        }
        None => {
            let ttl = given_trimmed(body.ttl);
            if let Some(ttl) = &ttl {
                validate_ttl(ttl, "ttl")?;
            }
            ttl
        }
    };
    let owner = match given(body.owner) {
        Some(owner) => {
            validate_owner(&owner, "owner")?;
            Some(owner)
        }
        None => {
            let owner = given(deploy.owner);
            if let Some(owner) = &owner {
                validate_owner(owner, "deployConfig.owner")?;
            }
            owner
        }
    };
    let mut env = BTreeMap::new();
    for (vars, path) in [
        (deploy.environment_variables_camel, "deployConfig.environmentVariables"),
        (deploy.environment_variables, "deployConfig.environment_variables"),
    ] {
        let vars = vars.unwrap_or_default().into_inner();
        validate_env(&vars, path)?;
        env.extend(vars);
    }
    let mut labels = BTreeMap::new();
    for (l, path) in [(body.labels, "labels"), (deploy.labels, "deployConfig.labels")] {
        let l = l.unwrap_or_default().into_inner();
        validate_labels(&l, path)?;
        labels.extend(l);
    }
    let image_pull_policy = match given(deploy.image_pull_policy).as_deref() {
        None => None,
        Some("Always") => Some(PullPolicy::Always),
        Some("IfNotPresent") => Some(PullPolicy::IfNotPresent),
        Some("Never") => Some(PullPolicy::Never),
        Some(other) => {
            return Err(bad(
                "deployConfig.imagePullPolicy",
                format!("field `deployConfig.imagePullPolicy` must be Always, IfNotPresent or Never (got {other:?})"),
            ));
        }
    };
    let network = given(deploy.network);
    if let Some(net) = &network {
        validate_network(net)?;
    }
    let mut ports: Vec<PortSpec> = Vec::new();
    for spec in deploy.ports.unwrap_or_default().into_iter().map(Port::spec) {
        if !ports.contains(&spec) {
            ports.push(spec);
        }
    }
    let readiness = readiness(deploy.readiness)?;
    let placement = deploy
        .placement
        .map(|p| Placement { constraints: strings(p.constraints), preferences: strings(p.preferences) });
    let placement = placement.filter(|p| !p.constraints.is_empty() || !p.preferences.is_empty());
    Ok(CreateRequest::Inline(Box::new(EnvInstanceSpec {
        env_name: name,
        env_version: version,
        owner,
        image,
        compose_file,
        network,
        ports,
        readiness,
        image_pull_policy,
        args: strings(deploy.arguments),
        env,
        resources: Resources { cpu, memory },
        requests: Resources::default(),
        ttl,
        labels,
        paused: false,
        // Named volumes are an EnvService's storage, made by the service controller only: a create through
        // /env-instance cannot mount one (nor reach another tenant's).
        volumes: Vec::new(),
        // Likewise the names a service's replicas answer to on its network.
        network_aliases: Vec::new(),
        placement,
    })))
}

fn validate_network(net: &str) -> Result<(), BodyError> {
    let ok = net.len() <= 64
        && net.starts_with(|c: char| c.is_ascii_alphanumeric())
        && net.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        return Err(bad(
            "deployConfig.network",
            format!(
                "field `deployConfig.network` must be bridge, none, host or a network name of letters, digits, '-', '_' or '.' (got {net:?})"
            ),
        ));
    }
    Ok(())
}

fn readiness(r: Option<Readiness>) -> Result<Option<ReadinessProbe>, BodyError> {
    match r {
        None => Ok(None),
        Some(Readiness::On(enabled)) => Ok(Some(ReadinessProbe { enabled, ..Default::default() })),
        Some(Readiness::Probe(p)) => {
            let default = ReadinessProbe::default();
            let path = p.path.map(Text::into_string).unwrap_or(default.path);
            if !path.starts_with('/') {
                return Err(bad(
                    "deployConfig.readiness.path",
                    "field `deployConfig.readiness.path` must start with '/' (write {\"port\": 8081, \"path\": \"/health\", \"timeoutMs\": 1000} or false)",
                ));
            }
            Ok(Some(ReadinessProbe {
                enabled: p.enabled.unwrap_or(true),
                port: p.port.map_or(default.port, |n| n.get::<u16>()),
                path,
                timeout_ms: p.timeout_ms.map_or(default.timeout_ms, |n| n.get::<u64>()),
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inline(body: &str) -> Result<EnvInstanceSpec, BodyError> {
        match parse_create(body.as_bytes(), Strictness::Strict)?.0 {
            CreateRequest::Inline(spec) => Ok(*spec),
            other => panic!("expected inline, got {other:?}"),
        }
    }

    fn refused(body: &str, needle: &str) {
        let err = parse_create(body.as_bytes(), Strictness::Strict).expect_err(body);
        assert!(err.message.contains(needle), "{body}: {:?} lacks {needle:?}", err.message);
    }

    #[test]
    fn the_guide_body() {
        let spec = inline(
            r#"{"name":"test-env","version":"1.0.0","owner":"test","artifacts":[{"type":"image","content":"alpine:latest"}],"deployConfig":{"cpu":"1C","memory":"512Mi","ttl":"1h"}}"#,
        )
        .unwrap();
        assert_eq!(spec.env_name, "test-env");
        assert_eq!(spec.env_version, "1.0.0");
        assert_eq!(spec.owner.as_deref(), Some("test"));
        assert_eq!(spec.image.as_deref(), Some("alpine:latest"));
        assert_eq!(spec.resources.cpu.as_deref(), Some("1C"));
        assert_eq!(spec.resources.memory.as_deref(), Some("512Mi"));
        assert_eq!(spec.ttl.as_deref(), Some("1h"));
        let spec =
            inline(r#"{"name":"e","artifacts":[{"type":"image","content":"i"}],"deployConfig":{"cpu":2}}"#).unwrap();
        assert_eq!(spec.resources.cpu.as_deref(), Some("2"), "a number is its text");
    }

    #[test]
    fn both_env_spellings_arguments_labels_and_no_default_ttl() {
        let spec = inline(
            r#"{"name":"e","artifacts":[{"type":"code","content":"x"},{"type":"image","content":"img"}],
               "labels":{"team":"rl"},
               "deployConfig":{"environment_variables":{"A":"1","N":2},"environmentVariables":{"B":"2"},
               "arguments":["sh","-c","sleep 1"],"podTemplate":"singleContainer","memory":"2G"}}"#,
        )
        .unwrap();
        assert_eq!(spec.env.get("A").map(String::as_str), Some("1"));
        assert_eq!(spec.env.get("N").map(String::as_str), Some("2"));
        assert_eq!(spec.env.get("B").map(String::as_str), Some("2"));
        assert_eq!(spec.args, ["sh", "-c", "sleep 1"]);
        assert_eq!(spec.labels.get("team").map(String::as_str), Some("rl"));
        assert_eq!(spec.ttl, None, "the default TTL is the service's to add");
        assert_eq!(spec.image.as_deref(), Some("img"));
    }

    #[test]
    fn the_api_service_env_with_both_spellings() {
        let deploy = r#"{"cpu":"1","memory":"256Mi","ttl":"30m","owner":"alice","podTemplate":"singleContainer","os":"linux","dataSource":"","environment_variables":{"K":"V"},"arguments":[]}"#;
        let body = format!(
            r#"{{"id":"","name":"e","version":"1.0.1","status":6,"codeUrl":"","artifacts":[{{"id":"","type":"image","content":"i"}}],"build_config":null,"deploy_config":{deploy},"deployConfig":{deploy}}}"#
        );
        assert!(parse_create(body.as_bytes(), Strictness::Strict).is_err(), "dataSource is no key of ours");
        match parse_create(body.as_bytes(), Strictness::Lenient).unwrap().0 {
            CreateRequest::Inline(spec) => {
                assert_eq!((spec.owner.as_deref(), spec.ttl.as_deref()), (Some("alice"), Some("30m")));
                assert_eq!(spec.env.get("K").map(String::as_str), Some("V"));
            }
            other => panic!("{other:?}"),
        }
        let snake_only = r#"{"name":"e","artifacts":[{"type":"image","content":"i"}],"deploy_config":{"ttl":"5m"}}"#;
        assert_eq!(inline(snake_only).unwrap().ttl.as_deref(), Some("5m"));
    }

    #[test]
    fn lenient_mode_ignores_unknown_deploy_keys() {
        let body = br#"{"name":"e","artifacts":[{"type":"image","content":"i"}],"deployConfig":{"secondImageName":"x","dataSource":"d"}}"#;
        let e = parse_create(body, Strictness::Strict).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("deployConfig.dataSource"), "{e:?}");
        assert!(matches!(parse_create(body, Strictness::Lenient), Ok((CreateRequest::Inline(_), _))));
        match parse_create(br#"{"name":"e","artifacts":[{"type":"image","content":"i"}]}"#, Strictness::Strict) {
            Ok((CreateRequest::Inline(spec), _)) => assert_eq!(spec.ttl, None, "templates keep no TTL unless given"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn placement_shape() {
        let ok = r#""artifacts":[{"type":"image","content":"i"}]"#;
        let spec = inline(&format!(
            r#"{{"name":"e",{ok},"deployConfig":{{"placement":{{"constraints":["node.labels.gpu==true"],"preferences":["node.labels.zone"]}}}}}}"#
        ))
        .unwrap();
        let placement = spec.placement.unwrap();
        assert_eq!(placement.constraints, ["node.labels.gpu==true"]);
        assert_eq!(placement.preferences, ["node.labels.zone"]);
        let empty = inline(&format!(r#"{{"name":"e",{ok},"deployConfig":{{"placement":{{}}}}}}"#)).unwrap();
        assert_eq!(empty.placement, None);
        refused(&format!(r#"{{"name":"e",{ok},"deployConfig":{{"placement":"gpu"}}}}"#), "deployConfig.placement");
        refused(
            &format!(r#"{{"name":"e",{ok},"deployConfig":{{"placement":{{"constraint":["a==b"]}}}}}}"#),
            "constraint",
        );
        refused(
            &format!(r#"{{"name":"e",{ok},"deployConfig":{{"placement":{{"constraints":"a==b"}}}}}}"#),
            "deployConfig.placement.constraints",
        );
        refused(
            &format!(r#"{{"name":"e",{ok},"deployConfig":{{"placement":{{"preferences":[{{}}]}}}}}}"#),
            "deployConfig.placement.preferences[0]",
        );
    }

    #[test]
    fn compose_network_ports_readiness() {
        let spec = inline(
            r#"{"name":"s","deployConfig":{"composeFile":"services: {}\n","network":"team-net",
               "ports":[8080,"9000/udp",{"containerPort":8081}],"readiness":{"port":9000,"path":"/ready"}}}"#,
        )
        .unwrap();
        assert!(spec.image.is_none() && spec.compose_file.is_some());
        assert_eq!(spec.network.as_deref(), Some("team-net"));
        assert_eq!(spec.ports.len(), 3);
        assert_eq!(spec.ports[1], PortSpec { container_port: 9000, protocol: Some("udp".into()) });
        let probe = spec.readiness.unwrap();
        assert_eq!((probe.port, probe.path.as_str(), probe.timeout_ms), (9000, "/ready", 1000));
        let spec =
            inline(r#"{"name":"s","artifacts":[{"type":"image","content":"i"}],"deployConfig":{"readiness":false}}"#)
                .unwrap();
        assert_eq!(spec.readiness.map(|p| p.enabled), Some(false));
        let ok = r#""artifacts":[{"type":"image","content":"a"}]"#;
        refused(&format!(r#"{{"name":"e",{ok},"deployConfig":{{"ports":[70000]}}}}"#), "deployConfig.ports[0]");
        refused(&format!(r#"{{"name":"e",{ok},"deployConfig":{{"ports":["80/sctp"]}}}}"#), "deployConfig.ports[0]");
        refused(&format!(r#"{{"name":"e",{ok},"deployConfig":{{"network":"a b"}}}}"#), "deployConfig.network");
        refused(
            &format!(r#"{{"name":"e",{ok},"deployConfig":{{"readiness":{{"path":"x"}}}}}}"#),
            "deployConfig.readiness",
        );
        refused(&format!(r#"{{"name":"e",{ok},"deployConfig":{{"readiness":"yes"}}}}"#), "deployConfig.readiness");
    }

    #[test]
    fn template_form() {
        let body = br#"{"envName":"mini-terminal@1.0.1","datasource":"","ttl":"45m","environment_variables":{"A":"1"},
            "arguments":[],"owner":"alice","labels":{"exp":"e1"}}"#;
        match parse_create(body, Strictness::Strict).unwrap().0 {
            CreateRequest::FromTemplate { name, version, overrides } => {
                assert_eq!((name.as_str(), version.as_str()), ("mini-terminal", "1.0.1"));
                let template = EnvInstanceSpec {
                    image: Some("img".into()),
                    args: vec!["serve".into()],
                    env: BTreeMap::from([("B".to_string(), "2".to_string())]),
                    ..Default::default()
                };
                let spec = overrides.apply(&template, &name, &version);
                assert_eq!(spec.env_name, "mini-terminal");
                assert_eq!(spec.image.as_deref(), Some("img"));
                assert_eq!(spec.args, ["serve"], "an empty arguments list keeps the template's");
                assert_eq!(spec.env.len(), 2, "variables are merged: {:?}", spec.env);
                assert_eq!(spec.ttl.as_deref(), Some("45m"));
                assert_eq!(spec.owner.as_deref(), Some("alice"));
                assert_eq!(spec.labels.get("exp").map(String::as_str), Some("e1"));
                let bare = Overrides::default().apply(&template, &name, &version);
                assert_eq!(bare.ttl, None, "the default TTL is the service's to add");
            }
            other => panic!("{other:?}"),
        }
        refused(r#"{"envName":"a@1","ttl":"forever"}"#, "`ttl`");
        match parse_create(
            br#"{"envName":"a@1","mount_points":[{"id":"OSS_1","remote_dir":"/data","local_dir":"/workspace"},{"src":"/"}]}"#,
            Strictness::Strict,
        ) {
            Ok((request, _)) => assert_eq!(request.unmounted(), ["/workspace", "?"], "accepted, not mounted"),
            Err(e) => panic!("{e:?}"),
        }
        refused(r#"{"envName":"a@1","mount_points":{"a":1}}"#, "mount_points");
        refused(r#"{"envName":"mini-terminal"}"#, "envName");
        refused(r#"{"envName":"a@b@c"}"#, "envName");
        refused(r#"{"envName":"a@1","environment_variables":{"A":[]}}"#, "environment_variables.A");
    }

    #[test]
    fn bad_input_names_the_field() {
        refused("{not json", "not valid JSON");
        refused("[1,2]", "JSON object");
        refused(r#"{"version":"1"}"#, "`name` is required");
        refused(r#"{"name":"Bad_Name","artifacts":[{"type":"image","content":"a"}]}"#, "`name`");
        refused(r#"{"name":"e"}"#, "`artifacts` is required");
        refused(r#"{"name":"e","artifacts":[{"type":"code","content":"x"}]}"#, "no image");
        refused(r#"{"name":"e","artifacts":[{"type":"image","content":"  "}]}"#, "artifacts[0].content");
        let ok = r#""artifacts":[{"type":"image","content":"a"}]"#;
        refused(&format!(r#"{{"name":"e",{ok},"deployConfig":{{"ttl":"1d"}}}}"#), "deployConfig.ttl");
        refused(&format!(r#"{{"name":"e",{ok},"deployConfig":{{"ttl":"0"}}}}"#), "deployConfig.ttl");
        refused(&format!(r#"{{"name":"e",{ok},"deployConfig":{{"cpu":"lots"}}}}"#), "deployConfig.cpu");
        refused(&format!(r#"{{"name":"e",{ok},"deployConfig":{{"memory":"512m"}}}}"#), "deployConfig.memory");
        refused(&format!(r#"{{"name":"e",{ok},"deployConfig":{{"memroy":"1Gi"}}}}"#), "memroy");
        refused(&format!(r#"{{"name":"e",{ok},"deployConfig":{{"arguments":"sh"}}}}"#), "deployConfig.arguments");
        refused(&format!(r#"{{"name":"e",{ok},"deployConfig":{{"arguments":[[]]}}}}"#), "deployConfig.arguments[0]");
        refused(
            &format!(r#"{{"name":"e",{ok},"deployConfig":{{"environment_variables":{{"A":{{}}}}}}}}"#),
            "deployConfig.environment_variables.A",
        );
        refused(&format!(r#"{{"name":"e",{ok},"labels":{{"aenv.io/instance":"x"}}}}"#), "reserved");
        refused(&format!(r#"{{"name":"e",{ok},"deployConfig":{{"imagePullPolicy":"Sometimes"}}}}"#), "imagePullPolicy");
        refused(&format!(r#"{{"name":"e",{ok},"shared":"yes"}}"#), "`shared`");
    }
}

#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    /// Arbitrary JSON values, nested a few levels.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| json!(f)),
            "\\PC{0,20}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::btree_map("\\PC{0,12}", inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Bodies shaped like real requests, with arbitrary values in every known field.
    fn request_like() -> impl Strategy<Value = Value> {
        let ignored = ["podTemplate", "os", "ephemeralStorage", "imagePrefix", "resource", "port"];
        let keys = prop::sample::select([DEPLOY_KEYS, &ignored[..]].concat());
        (
            json_value(),
            json_value(),
            json_value(),
            prop::collection::btree_map(keys, json_value(), 0..6),
            prop::option::of("[a-z0-9-]{0,10}(@[0-9.]{0,5})?"),
        )
            .prop_map(|(name, version, artifacts, deploy, env_name)| {
                let mut body =
                    json!({"name": name, "version": version, "artifacts": artifacts, "deployConfig": deploy});
                if let Some(e) = env_name {
                    body["envName"] = json!(e);
                }
                body
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// Any bytes: an answer, a refusal at worst, never a panic.
        #[test]
        fn arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            if let Err(e) = parse_create(&bytes, Strictness::Strict) {
                prop_assert!(!e.message.is_empty());
            }
        }

        /// Request-shaped bodies with arbitrary values: refused with a message, or accepted with a spec whose
        /// quantities and TTL parse.
        #[test]
        fn request_shaped(body in request_like()) {
            let bytes = serde_json::to_vec(&body).unwrap();
            for strictness in [Strictness::Strict, Strictness::Lenient] {
                match parse_create(&bytes, strictness).map(|(request, _)| request) {
                    Err(e) => prop_assert!(!e.message.is_empty()),
                    Ok(CreateRequest::Inline(spec)) => {
                        if let Some(cpu) = &spec.resources.cpu { prop_assert!(aenv_core::quantity::parse_cpu_millis(cpu).is_ok()); }
                        if let Some(m) = &spec.resources.memory { prop_assert!(aenv_core::quantity::parse_memory_bytes(m).is_ok()); }
                        if let Some(t) = &spec.ttl { prop_assert!(aenv_core::duration::parse_go_duration(t).is_ok()); }
                        prop_assert!(spec.image.is_some() || spec.compose_file.is_some());
                    }
                    Ok(CreateRequest::FromTemplate { .. }) => {}
                }
            }
        }
    }
}
