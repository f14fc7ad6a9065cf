//! Validation of `POST /env-instance` bodies. Every refusal names the field and says how to write it.
//!
//! Two shapes are accepted. The inline body of the Docker-engine guide:
//! `{"name","version","owner","artifacts":[{"type":"image","content":IMAGE}],"deployConfig":{...}}`;
//! and the SDK's `{"envName":"name@version", ...}`, which needs an `Environment` template.

use std::collections::BTreeMap;

use aenv_core::{
    EnvInstanceSpec, Placement, PortSpec, PullPolicy, ReadinessProbe, Resources,
    duration::parse_go_duration,
    labels::is_reserved,
    quantity::{parse_cpu_millis, parse_memory_bytes},
};
use serde_json::{Map, Value};

use super::ApiError;
pub use crate::service::{CreateRequest, Overrides, TemplateMeta};

/// deployConfig keys AEnvironment clients send that mean nothing on this engine; accepted and ignored so that
/// existing payloads keep working.
const IGNORED_DEPLOY_KEYS: &[&str] = &["podTemplate", "os", "ephemeralStorage", "imagePrefix", "resource", "port"];
/// deployConfig keys this engine reads.
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
];

/// Largest compose file accepted (256 KiB).
const MAX_COMPOSE_BYTES: usize = 256 * 1024;

const MAX_NAME_LEN: usize = 56;

/// A body that must be a JSON object (the `/env-pool` and `/env-service` bodies), or a 400 saying so.
pub(super) fn object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(obj)) => Ok(obj),
        Ok(_) => Err(ApiError::bad_request("the body must be a JSON object")),
        Err(e) => Err(ApiError::bad_request(format!("the body is not valid JSON: {e}"))),
    }
}

/// Refuses keys of `obj` other than `known`, naming the first and listing the fields.
pub(super) fn only(obj: &Map<String, Value>, known: &[&str]) -> Result<(), ApiError> {
    match obj.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(ApiError::bad_request(format!("unknown field `{k}`; the fields are {}", known.join(", ")))),
        None => Ok(()),
    }
}

/// How strict to be with deployConfig keys this engine does not know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strictness {
    /// The public API: an unknown key is a 400 that lists the supported ones (a typo never passes silently).
    Strict,
    /// The controller's `/pods`: the api-service forwards whatever deployConfig envhub holds; unknown keys are
    /// ignored there, as the AEnvironment controller ignores them.
    Lenient,
}

fn parse_overrides(obj: &Map<String, Value>) -> Result<Overrides, ApiError> {
    let mut o = Overrides {
        datasource: string_field(obj, "datasource", "datasource")?.filter(|s| !s.is_empty()),
        ttl: string_field(obj, "ttl", "ttl")?.filter(|s| !s.trim().is_empty()),
        owner: string_field(obj, "owner", "owner")?.filter(|s| !s.is_empty()),
        ..Default::default()
    };
    if let Some(ttl) = &o.ttl {
        let d = parse_go_duration(ttl).map_err(|e| bad(format!("field `ttl`: {e}")))?;
        if d.is_zero() {
            return Err(bad("field `ttl` must be longer than zero (such as \"30m\")"));
        }
    }
    if let Some(owner) = &o.owner {
        validate_owner(owner, "owner")?;
    }
    if let Some(v) = obj.get("environment_variables") {
        o.env = string_map(v, "environment_variables")?;
        validate_env(&o.env, "environment_variables")?;
    }
    o.args = parse_args(obj.get("arguments"), "arguments")?;
    if let Some(v) = obj.get("labels") {
        o.labels = string_map(v, "labels")?;
        validate_labels(&o.labels, "labels")?;
    }
    match obj.get("mount_points") {
        None | Some(Value::Null) => {}
        Some(Value::Array(a)) if a.is_empty() => {}
        Some(_) => {
            return Err(bad("field `mount_points` is not supported by this operator (no shared storage is mounted)"));
        }
    }
    Ok(o)
}

fn parse_args(v: Option<&Value>, path: &str) -> Result<Vec<String>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.clone()),
                other => Err(bad(format!("field `{path}[{i}]` must be a string, not {}", describe(other)))),
            })
            .collect(),
        Some(other) => Err(bad(format!("field `{path}` must be an array of strings, not {}", describe(other)))),
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::bad_request(msg)
}

pub(super) fn describe(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A string field; numbers are taken as their decimal text (`"cpu": 2`). Null or absent is `None`.
fn string_field(obj: &Map<String, Value>, key: &str, path: &str) -> Result<Option<String>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(other) => Err(bad(format!("field `{path}` must be a string, not {}", describe(other)))),
    }
}

pub(super) fn string_map(v: &Value, path: &str) -> Result<BTreeMap<String, String>, ApiError> {
    let obj = match v {
        Value::Null => return Ok(BTreeMap::new()),
        Value::Object(o) => o,
        other => {
            return Err(bad(format!(
                "field `{path}` must be an object of string values, such as {{\"KEY\": \"value\"}}, not {}",
                describe(other)
            )));
        }
    };
    obj.iter()
        .map(|(k, v)| {
            let value = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                other => {
                    return Err(bad(format!("field `{path}.{k}` must be a string, not {}", describe(other))));
                }
            };
            Ok((k.clone(), value))
        })
        .collect()
}

pub(super) fn validate_env(env: &BTreeMap<String, String>, path: &str) -> Result<(), ApiError> {
    for (k, v) in env {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return Err(bad(format!(
                "field `{path}` has an invalid variable name {k:?}: it must be non-empty, without '=' or NUL"
            )));
        }
        if v.contains('\0') {
            return Err(bad(format!("field `{path}.{k}` contains a NUL character")));
        }
    }
    Ok(())
}

fn validate_labels(labels: &BTreeMap<String, String>, path: &str) -> Result<(), ApiError> {
    for (k, v) in labels {
        if k.is_empty() || k.len() > 253 || k.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(bad(format!("field `{path}` has an invalid label key {k:?}")));
        }
        if is_reserved(k) {
            return Err(bad(format!(
                "field `{path}` sets the reserved label {k:?}: keys under aenv.io/ and aenv.env_name are the operator's"
            )));
        }
        if v.len() > 1024 || v.chars().any(char::is_control) {
            return Err(bad(format!("field `{path}.{k}` must be at most 1024 characters without control characters")));
        }
    }
    Ok(())
}

/// Checks an environment name: it becomes part of the instance id, the container name and a label.
pub fn validate_env_name(name: &str, path: &str) -> Result<(), ApiError> {
    let ok_chars = name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    let ends_ok =
        name.starts_with(|c: char| c.is_ascii_alphanumeric()) && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if name.is_empty() || !ok_chars || !ends_ok || name.len() > MAX_NAME_LEN {
        return Err(bad(format!(
            "field `{path}` must be 1 to {MAX_NAME_LEN} lowercase letters, digits or '-', starting and ending with a letter or digit (got {name:?})"
        )));
    }
    Ok(())
}

pub(super) fn validate_version(version: &str, path: &str) -> Result<(), ApiError> {
    let ok = version.len() <= 63
        && version.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        && (version.is_empty()
            || (version.starts_with(|c: char| c.is_ascii_alphanumeric())
                && version.ends_with(|c: char| c.is_ascii_alphanumeric())));
    if !ok {
        return Err(bad(format!(
            "field `{path}` must be at most 63 letters, digits, '.', '-' or '_', starting and ending with a letter or digit (got {version:?})"
        )));
    }
    Ok(())
}

fn validate_owner(owner: &str, path: &str) -> Result<(), ApiError> {
    if owner.len() > 253 || owner.chars().any(char::is_control) {
        return Err(bad(format!("field `{path}` must be at most 253 characters without control characters")));
    }
    Ok(())
}

/// Parses and validates a create body (`POST /env-instance`, `POST /pods`, `POST /env`): the request, and what a
/// template registered from it carries beside its spec. A TTL is left unset when the body names none.
pub fn parse_create(body: &[u8], strictness: Strictness) -> Result<(CreateRequest, TemplateMeta), ApiError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("the request body is not valid JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(bad(format!("the request body must be a JSON object, not {}", describe(&value))));
    };
    let text = |key: &str| obj.get(key).and_then(Value::as_str).unwrap_or_default().to_string();
    let shared = match obj.get("shared") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(bad(format!(
                "field `shared` must be true (other tenants may create instances from this template) or false, not {}",
                describe(other)
            )));
        }
    };
    let meta = TemplateMeta {
        shared,
        description: text("description"),
        tags: obj
            .get("tags")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|t| t.as_str().map(str::to_string)).collect())
            .unwrap_or_default(),
        code_url: text("code_url"),
    };
    Ok((parse_request(&obj, strictness)?, meta))
}

fn parse_request(obj: &Map<String, Value>, strictness: Strictness) -> Result<CreateRequest, ApiError> {
    if let Some(env_name) = string_field(obj, "envName", "envName")? {
        let (name, version) = env_name.split_once('@').ok_or_else(|| {
            bad(format!("field `envName` must be \"name@version\", such as \"mini-terminal@1.0.1\" (got {env_name:?})"))
        })?;
        validate_env_name(name, "envName")?;
        if version.is_empty() || version.contains('@') {
            return Err(bad(format!("field `envName` must be \"name@version\" with one '@' (got {env_name:?})")));
        }
        validate_version(version, "envName")?;
        return Ok(CreateRequest::FromTemplate {
            name: name.to_string(),
            version: version.to_string(),
            overrides: parse_overrides(obj)?,
        });
    }

    let name = string_field(obj, "name", "name")?.ok_or_else(|| {
        bad("field `name` is required (or send `envName` as \"name@version\" to create from a template)")
    })?;
    validate_env_name(&name, "name")?;
    let version = string_field(obj, "version", "version")?.unwrap_or_default();
    validate_version(&version, "version")?;

    let empty = Map::new();
    let deploy = match obj.get("deployConfig").or_else(|| obj.get("deploy_config")) {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(d)) => d,
        Some(other) => return Err(bad(format!("field `deployConfig` must be an object, not {}", describe(other)))),
    };
    let compose_file =
        string_field(deploy, "composeFile", "deployConfig.composeFile")?.filter(|s| !s.trim().is_empty());
    if compose_file.as_ref().is_some_and(|c| c.len() > MAX_COMPOSE_BYTES) {
        return Err(bad(format!("field `deployConfig.composeFile` is larger than {MAX_COMPOSE_BYTES} bytes")));
    }
    // A stack names its images in the compose file; an image artifact is then optional.
    let image = match image_from_artifacts(obj.get("artifacts")) {
        Ok(image) => Some(image),
        Err(_) if compose_file.is_some() && !has_image_artifact(obj.get("artifacts")) => None,
        Err(e) => return Err(e),
    };
    let unknown: Vec<&str> = deploy
        .keys()
        .map(String::as_str)
        .filter(|k| !DEPLOY_KEYS.contains(k) && !IGNORED_DEPLOY_KEYS.contains(k))
        .collect();
    if !unknown.is_empty() && strictness == Strictness::Strict {
        return Err(bad(format!(
            "unsupported deployConfig key(s): {}; supported: {}",
            unknown.join(", "),
            DEPLOY_KEYS.join(", ")
        )));
    }

    let cpu = string_field(deploy, "cpu", "deployConfig.cpu")?.filter(|s| !s.is_empty());
    if let Some(cpu) = &cpu {
        parse_cpu_millis(cpu).map_err(|e| bad(format!("field `deployConfig.cpu`: {e}")))?;
    }
    let memory = string_field(deploy, "memory", "deployConfig.memory")?.filter(|s| !s.is_empty());
    if let Some(memory) = &memory {
        parse_memory_bytes(memory).map_err(|e| bad(format!("field `deployConfig.memory`: {e}")))?;
    }
    let ttl = string_field(deploy, "ttl", "deployConfig.ttl")?
        .or(string_field(obj, "ttl", "ttl")?)
        .filter(|s| !s.trim().is_empty());
    if let Some(ttl) = &ttl {
        let parsed = parse_go_duration(ttl).map_err(|e| bad(format!("field `deployConfig.ttl`: {e}")))?;
        if parsed.is_zero() {
            return Err(bad("field `deployConfig.ttl` must be longer than zero (such as \"30m\")"));
        }
    }

    let owner = string_field(obj, "owner", "owner")?.or(string_field(deploy, "owner", "deployConfig.owner")?);
    if let Some(owner) = &owner {
        validate_owner(owner, "owner")?;
    }

    let mut env = BTreeMap::new();
    for key in ["environmentVariables", "environment_variables"] {
        if let Some(v) = deploy.get(key) {
            let path = format!("deployConfig.{key}");
            let vars = string_map(v, &path)?;
            validate_env(&vars, &path)?;
            env.extend(vars);
        }
    }

    let args = parse_args(deploy.get("arguments"), "deployConfig.arguments")?;

    let mut labels = BTreeMap::new();
    for (v, path) in [(obj.get("labels"), "labels"), (deploy.get("labels"), "deployConfig.labels")] {
        if let Some(v) = v {
            let l = string_map(v, path)?;
            validate_labels(&l, path)?;
            labels.extend(l);
        }
    }

    let image_pull_policy = match string_field(deploy, "imagePullPolicy", "deployConfig.imagePullPolicy")?.as_deref() {
        None | Some("") => None,
        Some("Always") => Some(PullPolicy::Always),
        Some("IfNotPresent") => Some(PullPolicy::IfNotPresent),
        Some("Never") => Some(PullPolicy::Never),
        Some(other) => {
            return Err(bad(format!(
                "field `deployConfig.imagePullPolicy` must be Always, IfNotPresent or Never (got {other:?})"
            )));
        }
    };

    let network = string_field(deploy, "network", "deployConfig.network")?.filter(|s| !s.is_empty());
    if let Some(net) = &network {
        validate_network(net)?;
    }
    let ports = parse_ports(deploy.get("ports"))?;
    let readiness = parse_readiness(deploy.get("readiness"))?;
    let placement = parse_placement(deploy.get("placement"))?;

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
        args,
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

/// `deployConfig.placement`: `{"constraints": ["node.labels.gpu==true"], "preferences": ["node.labels.zone"]}`
/// (the shape only; the engine judges the content: only Swarm places).
fn parse_placement(v: Option<&Value>) -> Result<Option<Placement>, ApiError> {
    let obj = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(obj)) => obj,
        Some(other) => {
            return Err(bad(format!(
                "field `deployConfig.placement` must be an object such as {{\"constraints\": [\"node.labels.gpu==true\"], \"preferences\": [\"node.labels.zone\"]}}, not {}",
                describe(other)
            )));
        }
    };
    if let Some(key) = obj.keys().find(|k| !matches!(k.as_str(), "constraints" | "preferences")) {
        return Err(bad(format!(
            "unsupported key `deployConfig.placement.{key}`; supported: constraints, preferences"
        )));
    }
    let list = |key: &str| -> Result<Vec<String>, ApiError> {
        let path = format!("deployConfig.placement.{key}");
        match obj.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(bad(format!("field `{path}[{i}]` must be a string, not {}", describe(other)))),
                })
                .collect(),
            Some(other) => Err(bad(format!("field `{path}` must be an array of strings, not {}", describe(other)))),
        }
    };
    let placement = Placement { constraints: list("constraints")?, preferences: list("preferences")? };
    Ok((!placement.constraints.is_empty() || !placement.preferences.is_empty()).then_some(placement))
}

fn has_image_artifact(artifacts: Option<&Value>) -> bool {
    artifacts
        .and_then(Value::as_array)
        .is_some_and(|items| items.iter().any(|a| a.get("type") == Some(&Value::from("image"))))
}

fn validate_network(net: &str) -> Result<(), ApiError> {
    let ok = net.len() <= 64
        && net.starts_with(|c: char| c.is_ascii_alphanumeric())
        && net.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        return Err(bad(format!(
            "field `deployConfig.network` must be bridge, none, host or a network name of letters, digits, '-', '_' or '.' (got {net:?})"
        )));
    }
    Ok(())
}

/// `ports`: `[8080, "9000/udp", {"containerPort": 8081, "protocol": "tcp"}]`.
fn parse_ports(v: Option<&Value>) -> Result<Vec<PortSpec>, ApiError> {
    let items = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(bad(format!(
                "field `deployConfig.ports` must be an array of container ports such as [8080, \"9000/udp\"], not {}",
                describe(other)
            )));
        }
    };
    let mut out: Vec<PortSpec> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let path = format!("deployConfig.ports[{i}]");
        let (port, protocol) = match item {
            Value::Number(n) => (n.as_u64(), None),
            Value::String(s) => match s.split_once('/') {
                Some((p, proto)) => (p.parse().ok(), Some(proto.to_string())),
                None => (s.parse().ok(), None),
            },
            Value::Object(o) => (
                o.get("containerPort").and_then(Value::as_u64),
                string_field(o, "protocol", &format!("{path}.protocol"))?,
            ),
            other => return Err(bad(format!("field `{path}` must be a port number, not {}", describe(other)))),
        };
        let port = port.filter(|p| (1..=65535).contains(p)).ok_or_else(|| {
            bad(format!("field `{path}` must be a container port from 1 to 65535, optionally with /tcp or /udp"))
        })? as u16;
        if let Some(proto) = &protocol
            && proto != "tcp"
            && proto != "udp"
        {
            return Err(bad(format!("field `{path}` has protocol {proto:?}; use tcp or udp")));
        }
        let spec = PortSpec { container_port: port, protocol: protocol.filter(|p| p != "tcp") };
        if !out.contains(&spec) {
            out.push(spec);
        }
    }
    Ok(out)
}

/// `readiness`: `false` (no probe), or `{"port": 8081, "path": "/health", "timeoutMs": 1000}`.
fn parse_readiness(v: Option<&Value>) -> Result<Option<ReadinessProbe>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(enabled)) => Ok(Some(ReadinessProbe { enabled: *enabled, ..Default::default() })),
        Some(Value::Object(_)) => {
            let probe: ReadinessProbe = serde_json::from_value(v.cloned().unwrap_or_default()).map_err(|e| {
                bad(format!(
                    "field `deployConfig.readiness`: {e} (write {{\"port\": 8081, \"path\": \"/health\", \"timeoutMs\": 1000}} or false)"
                ))
            })?;
            if probe.port == 0 || !probe.path.starts_with('/') || probe.timeout_ms == 0 || probe.timeout_ms > 60_000 {
                return Err(bad(
                    "field `deployConfig.readiness` needs a port from 1 to 65535, a path starting with '/' and timeoutMs from 1 to 60000",
                ));
            }
            Ok(Some(probe))
        }
        Some(other) => {
            Err(bad(format!("field `deployConfig.readiness` must be an object or false, not {}", describe(other))))
        }
    }
}

fn image_from_artifacts(artifacts: Option<&Value>) -> Result<String, ApiError> {
    let items = match artifacts {
        None | Some(Value::Null) => {
            return Err(bad(
                "field `artifacts` is required: add [{\"type\": \"image\", \"content\": \"<image reference>\"}]",
            ));
        }
        Some(Value::Array(items)) => items,
        Some(other) => return Err(bad(format!("field `artifacts` must be an array, not {}", describe(other)))),
    };
    for (i, item) in items.iter().enumerate() {
        let Value::Object(a) = item else {
            return Err(bad(format!("field `artifacts[{i}]` must be an object, not {}", describe(item))));
        };
        if string_field(a, "type", &format!("artifacts[{i}].type"))?.as_deref() != Some("image") {
            continue;
        }
        let content = string_field(a, "content", &format!("artifacts[{i}].content"))?.unwrap_or_default();
        let content = content.trim();
        if content.is_empty() || content.len() > 512 || content.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad(format!(
                "field `artifacts[{i}].content` must be an image reference such as \"alpine:3.20\" (got {content:?})"
            )));
        }
        return Ok(content.to_string());
    }
    Err(bad("field `artifacts` has no image: add {\"type\": \"image\", \"content\": \"<image reference>\"}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inline(body: &str) -> Result<EnvInstanceSpec, ApiError> {
        match parse_create(body.as_bytes(), Strictness::Strict)?.0 {
            CreateRequest::Inline(spec) => Ok(*spec),
            other => panic!("expected inline, got {other:?}"),
        }
    }

    fn refused(body: &str, needle: &str) {
        let err = parse_create(body.as_bytes(), Strictness::Strict).expect_err(body);
        assert_eq!(err.status, 400, "{body}");
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
    fn lenient_mode_ignores_unknown_deploy_keys() {
        let body = br#"{"name":"e","artifacts":[{"type":"image","content":"i"}],"deployConfig":{"secondImageName":"x","dataSource":"d"}}"#;
        assert!(parse_create(body, Strictness::Strict).is_err());
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
            "deployConfig.placement.constraint",
        );
        refused(
            &format!(r#"{{"name":"e",{ok},"deployConfig":{{"placement":{{"constraints":"a==b"}}}}}}"#),
            "deployConfig.placement.constraints",
        );
        refused(
            &format!(r#"{{"name":"e",{ok},"deployConfig":{{"placement":{{"preferences":[1]}}}}}}"#),
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
        refused(r#"{"envName":"a@1","mount_points":[{"src":"/"}]}"#, "mount_points");
        refused(r#"{"envName":"mini-terminal"}"#, "envName");
        refused(r#"{"envName":"a@b@c"}"#, "envName");
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
        refused(&format!(r#"{{"name":"e",{ok},"deployConfig":{{"arguments":[1]}}}}"#), "deployConfig.arguments[0]");
        refused(
            &format!(r#"{{"name":"e",{ok},"deployConfig":{{"environment_variables":{{"A":{{}}}}}}}}"#),
            "deployConfig.environment_variables.A",
        );
        refused(&format!(r#"{{"name":"e",{ok},"labels":{{"aenv.io/instance":"x"}}}}"#), "reserved");
        refused(&format!(r#"{{"name":"e",{ok},"deployConfig":{{"imagePullPolicy":"Sometimes"}}}}"#), "imagePullPolicy");
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
        // Every key the parser reads, and the ones it accepts and ignores.
        let keys = prop::sample::select([DEPLOY_KEYS, IGNORED_DEPLOY_KEYS].concat());
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

        /// Any bytes: an answer, a 4xx at worst, never a panic.
        #[test]
        fn arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            if let Err(e) = parse_create(&bytes, Strictness::Strict) {
                prop_assert!(e.status == 400, "{e:?}");
            }
        }

        /// Request-shaped bodies with arbitrary values: refused with a message naming a field, or accepted with a
        /// spec whose quantities and TTL parse.
        #[test]
        fn request_shaped(body in request_like()) {
            let bytes = serde_json::to_vec(&body).unwrap();
            for strictness in [Strictness::Strict, Strictness::Lenient] {
                match parse_create(&bytes, strictness).map(|(request, _)| request) {
                    Err(e) => {
                        prop_assert_eq!(e.status, 400);
                        prop_assert!(!e.message.is_empty());
                    }
                    Ok(CreateRequest::Inline(spec)) => {
                        if let Some(cpu) = &spec.resources.cpu { prop_assert!(parse_cpu_millis(cpu).is_ok()); }
                        if let Some(m) = &spec.resources.memory { prop_assert!(parse_memory_bytes(m).is_ok()); }
                        if let Some(t) = &spec.ttl { prop_assert!(parse_go_duration(t).is_ok()); }
                        prop_assert!(spec.image.is_some() || spec.compose_file.is_some());
                    }
                    Ok(CreateRequest::FromTemplate { .. }) => {}
                }
            }
        }
    }
}
