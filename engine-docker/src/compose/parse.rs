//! From a compose file (YAML text) to a [`StackSpec`] the runner can execute, or a message for the API user that
//! names the compose key (`services.web.privileged`).
//!
//! Three passes: interpolation of every string value from the instance's environment variables; a check of every
//! key against what this engine runs (unsupported keys are refused in one message that lists them all, keys the
//! host policy guards are refused naming the key and the `--allow` flag); then docker-compose-types reads the
//! checked document and each service is turned into what the Docker API needs.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bollard::models::{DeviceMapping, HealthConfig};
use docker_compose_types as dct;
use serde_norway::{Mapping, Value};
use sha2::{Digest, Sha256};

use super::interpolate::interpolate;
use crate::{Allowance, Policy};

/// Top-level keys this engine runs.
const TOP_KEYS: &[&str] = &["version", "services", "volumes"];
/// Service keys this engine runs (the policy may still refuse some values).
pub(crate) const SERVICE_KEYS: &[&str] = &[
    "image",
    "command",
    "entrypoint",
    "environment",
    "labels",
    "ports",
    "expose",
    "depends_on",
    "healthcheck",
    "volumes",
    "tmpfs",
    "deploy",
    "cpus",
    "mem_limit",
    "working_dir",
    "user",
    "hostname",
    "read_only",
    "init",
    "restart",
    "cap_drop",
    // Guarded by the host policy.
    "privileged",
    "network_mode",
    "pid",
    "ipc",
    "cap_add",
    "devices",
];
const HEALTHCHECK_KEYS: &[&str] =
    &["test", "interval", "timeout", "retries", "start_period", "start_interval", "disable"];
const PORT_KEYS: &[&str] = &["target", "published", "host_ip", "protocol", "mode"];
const VOLUME_MOUNT_KEYS: &[&str] = &["type", "source", "target", "read_only", "volume", "tmpfs"];
const TOP_VOLUME_KEYS: &[&str] = &["labels", "driver"];
const DEPENDS_KEYS: &[&str] = &["condition", "required"];

/// The label that marks the main service.
pub(crate) const MAIN_LABEL: &str = "aenv.main";
/// Most services one stack may have.
const MAX_SERVICES: usize = 32;

/// A checked stack, ready to run.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct StackSpec {
    /// Services in file order.
    pub services: Vec<ServiceSpec>,
    /// Named volumes declared at the top level (created per stack as `<instance>_<name>`).
    pub volumes: Vec<VolumeSpec>,
    /// The main service's name.
    pub main: String,
}

#[cfg(test)]
impl StackSpec {
    pub fn service(&self, name: &str) -> Option<&ServiceSpec> {
        self.services.iter().find(|s| s.name == name)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct VolumeSpec {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

/// A `depends_on` condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Condition {
    Started,
    Healthy,
    CompletedSuccessfully,
}

impl Condition {
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::Started => "service_started",
            Condition::Healthy => "service_healthy",
            Condition::CompletedSuccessfully => "service_completed_successfully",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Dependency {
    pub service: String,
    pub condition: Condition,
    /// `required: false`: a dependency that fails is logged and the service starts anyway.
    pub required: bool,
}

/// A port to publish on the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PortPublish {
    pub container_port: u16,
    pub protocol: String,
    pub host_ip: String,
    /// `None`: an ephemeral port chosen by Docker.
    pub host_port: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum MountSpec {
    /// A stack volume (`source` is the name in the file) or an anonymous one (`source` is `None`).
    Volume {
        source: Option<String>,
        target: String,
        read_only: bool,
        nocopy: bool,
    },
    /// A host path (only when the policy allows bind mounts).
    Bind {
        source: String,
        target: String,
        read_only: bool,
    },
    Tmpfs {
        target: String,
        size: Option<i64>,
    },
}

/// One service, as the Docker API needs it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ServiceSpec {
    pub name: String,
    pub image: String,
    pub command: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    /// `KEY=value` entries.
    pub environment: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub ports: Vec<PortPublish>,
    /// `8081/tcp` entries.
    pub expose: Vec<String>,
    pub depends_on: Vec<Dependency>,
    pub healthcheck: Option<HealthConfig>,
    pub mounts: Vec<MountSpec>,
    pub tmpfs: BTreeMap<String, String>,
    pub nano_cpus: Option<i64>,
    pub memory: Option<i64>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub hostname: Option<String>,
    pub read_only: bool,
    pub init: bool,
    pub cap_drop: Vec<String>,
    pub privileged: bool,
    pub host_network: bool,
    pub pid_host: bool,
    pub ipc_host: bool,
    pub cap_add: Vec<String>,
    pub devices: Vec<DeviceMapping>,
    /// sha256 of the service's configuration after interpolation (label `com.docker.compose.config-hash`).
    pub config_hash: String,
}

/// Parses, interpolates and checks a compose file. The error is the API message (HTTP 400).
pub(crate) fn parse(yaml: &str, vars: &BTreeMap<String, String>, policy: &Policy) -> Result<StackSpec, String> {
    parse_inner(yaml, vars, policy).map_err(|e| format!("deployConfig.composeFile: {e}"))
}

fn parse_inner(yaml: &str, vars: &BTreeMap<String, String>, policy: &Policy) -> Result<StackSpec, String> {
    let mut doc: Value = serde_norway::from_str(yaml).map_err(|e| format!("not valid YAML: {e}"))?;
    interpolate_value(&mut doc, vars, "")?;
    let Value::Mapping(root) = &mut doc else {
        return Err("a compose file must be a mapping with a `services` key".into());
    };
    let extras = check_and_normalize(root, policy)?;
    let compose: dct::Compose = serde_norway::from_value(doc).map_err(|e| format!("not a valid compose file: {e}"))?;
    build(compose, extras, vars)
}

/// What the raw pass takes out of the document because docker-compose-types has no field for it.
#[derive(Default)]
struct Extras {
    /// `cpus` per service.
    cpus: HashMap<String, String>,
}

fn key_str(k: &Value) -> Result<&str, String> {
    k.as_str().ok_or_else(|| format!("keys must be strings (found {k:?})"))
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_string() } else { format!("{path}.{key}") }
}

/// Interpolates every string value (never keys), naming the key on error.
fn interpolate_value(v: &mut Value, vars: &BTreeMap<String, String>, path: &str) -> Result<(), String> {
    match v {
        Value::String(s) if s.contains('$') => {
            *s = interpolate(s, vars).map_err(|e| format!("`{path}`: {e}"))?;
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate_value(item, vars, &format!("{path}[{i}]"))?;
            }
        }
        Value::Mapping(m) => {
            for (k, item) in m.iter_mut() {
                let key = k.as_str().unwrap_or("?").to_string();
                interpolate_value(item, vars, &join(path, &key))?;
            }
        }
        Value::Tagged(t) => interpolate_value(&mut t.value, vars, path)?,
        _ => {}
    }
    Ok(())
}

/// A scalar as text (numbers and booleans as YAML writes them); `None` for null, lists and maps.
fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn stringify(v: &mut Value) {
    if let Some(text) = scalar_text(v)
        && !v.is_string()
    {
        *v = Value::String(text);
    }
}

/// `"true"` / `"false"` (from interpolation) back to booleans, so typed reading accepts them.
fn boolify(v: &mut Value) {
    if let Value::String(s) = v {
        match s.as_str() {
            "true" | "True" | "TRUE" => *v = Value::Bool(true),
            "false" | "False" | "FALSE" => *v = Value::Bool(false),
            _ => {}
        }
    }
}

/// Digits (from interpolation) back to numbers.
fn numberify(v: &mut Value) {
    if let Value::String(s) = v
        && let Ok(n) = s.trim().parse::<i64>()
    {
        *v = Value::Number(n.into());
    }
}

fn is_true(v: Option<&Value>) -> bool {
    matches!(v, Some(Value::Bool(true)))
}

/// Checks every key: unsupported ones are gathered and refused together; policy-guarded ones are refused one by
/// one. Normalizes scalars the typed model reads strictly (ports as strings, label values as strings).
fn check_and_normalize(root: &mut Mapping, policy: &Policy) -> Result<Extras, String> {
    let mut unsupported: Vec<String> = Vec::new();
    let mut extras = Extras::default();
    for k in root.keys() {
        let key = key_str(k)?;
        if !TOP_KEYS.contains(&key) && !key.starts_with("x-") {
            unsupported.push(key.to_string());
        }
    }

    if let Some(volumes) = root.get_mut("volumes") {
        match volumes {
            Value::Null => {}
            Value::Mapping(vols) => {
                for (name, def) in vols.iter_mut() {
                    let name = key_str(name)?.to_string();
                    match def {
                        Value::Null => {}
                        Value::Mapping(def) => {
                            for (k, v) in def.iter_mut() {
                                let key = key_str(k)?;
                                let path = format!("volumes.{name}.{key}");
                                if !TOP_VOLUME_KEYS.contains(&key) && !key.starts_with("x-") {
                                    unsupported.push(path);
                                } else if key == "driver" && v.as_str() != Some("local") {
                                    return Err(format!(
                                        "`{path}`: only the `local` driver is supported (stack volumes live on the Docker host)"
                                    ));
                                } else if key == "labels" {
                                    normalize_labels(v);
                                }
                            }
                        }
                        _ => return Err(format!("`volumes.{name}` must be a mapping or empty")),
                    }
                }
            }
            _ => return Err("`volumes` must be a mapping of volume names".into()),
        }
    }

    let services = match root.get_mut("services") {
        Some(Value::Mapping(s)) if !s.is_empty() => s,
        Some(Value::Mapping(_)) | None | Some(Value::Null) => {
            return Err("the file has no services: add `services:` with at least one service".into());
        }
        Some(_) => return Err("`services` must be a mapping of service names".into()),
    };
    if services.len() > MAX_SERVICES {
        return Err(format!("a stack may have at most {MAX_SERVICES} services (this one has {})", services.len()));
    }
    for (name, svc) in services.iter_mut() {
        let name = key_str(name)?.to_string();
        validate_service_name(&name)?;
        let Value::Mapping(svc) = svc else {
            return Err(format!("`services.{name}` must be a mapping with at least an `image`"));
        };
        let p = format!("services.{name}");
        for (k, v) in svc.iter_mut() {
            let key = key_str(k)?.to_string();
            let path = format!("{p}.{key}");
            if key.starts_with("x-") {
                continue;
            }
            if !SERVICE_KEYS.contains(&key.as_str()) {
                unsupported.push(path);
                continue;
            }
            match key.as_str() {
                "privileged" => {
                    boolify(v);
                    if is_true(Some(v)) {
                        policy.check(Allowance::Privileged, &path).map_err(|e| e.message)?;
                    }
                }
                "network_mode" => match v.as_str() {
                    Some("host") => policy.check(Allowance::HostNetwork, &path).map_err(|e| e.message)?,
                    other => {
                        return Err(format!(
                            "`{path}`: {other:?} is not supported; a stack's services share its own network (only `host` may be asked for, when the policy allows it)"
                        ));
                    }
                },
                "pid" | "ipc" => match v.as_str() {
                    Some("host") => policy.check(Allowance::HostNamespaces, &path).map_err(|e| e.message)?,
                    other => {
                        return Err(format!(
                            "`{path}`: {other:?} is not supported (only `host`, when the policy allows it)"
                        ));
                    }
                },
                "cap_add" if v.as_sequence().is_some_and(|s| !s.is_empty()) => {
                    policy.check(Allowance::CapAdd, &path).map_err(|e| e.message)?;
                }
                "devices" if v.as_sequence().is_some_and(|s| !s.is_empty()) => {
                    policy.check(Allowance::Devices, &path).map_err(|e| e.message)?;
                }
                "read_only" | "init" => boolify(v),
                "restart" if v.as_str() != Some("no") => {
                    return Err(format!(
                        "`{path}`: only \"no\" is supported (a sandbox's services are not restarted; a service that fails fails the instance)"
                    ));
                }
                "cpus" => {
                    let text = scalar_text(v).ok_or_else(|| format!("`{path}` must be a number such as 0.5"))?;
                    extras.cpus.insert(name.clone(), text);
                }
                "mem_limit" | "user" | "working_dir" | "hostname" | "image" => stringify(v),
                "labels" => normalize_labels(v),
                "expose" => {
                    if let Value::Sequence(items) = v {
                        items.iter_mut().for_each(stringify);
                    }
                }
                "ports" => {
                    if let Value::Sequence(items) = v {
                        for (i, item) in items.iter_mut().enumerate() {
                            match item {
                                Value::Mapping(port) => {
                                    for (k, pv) in port.iter_mut() {
                                        let pk = key_str(k)?;
                                        if !PORT_KEYS.contains(&pk) {
                                            unsupported.push(format!("{path}[{i}].{pk}"));
                                        } else if pk == "target" {
                                            numberify(pv);
                                        } else if pk == "published" || pk == "host_ip" {
                                            stringify(pv);
                                        }
                                    }
                                }
                                other => stringify(other),
                            }
                        }
                    }
                }
                "volumes" => {
                    if let Value::Sequence(items) = v {
                        for (i, item) in items.iter_mut().enumerate() {
                            let ipath = format!("{path}[{i}]");
                            match item {
                                Value::String(s) => {
                                    if short_volume_is_bind(s) {
                                        policy.check(Allowance::BindMounts, &ipath).map_err(|e| e.message)?;
                                    }
                                }
                                Value::Mapping(m) => {
                                    for (k, mv) in m.iter_mut() {
                                        let mk = key_str(k)?;
                                        if !VOLUME_MOUNT_KEYS.contains(&mk) {
                                            unsupported.push(format!("{ipath}.{mk}"));
                                        } else if mk == "read_only" {
                                            boolify(mv);
                                        } else if mk == "volume" {
                                            if let Value::Mapping(opts) = mv {
                                                for k in opts.keys() {
                                                    if key_str(k)? != "nocopy" {
                                                        unsupported.push(format!("{ipath}.volume.{}", key_str(k)?));
                                                    }
                                                }
                                            }
                                        } else if mk == "tmpfs"
                                            && let Value::Mapping(opts) = mv
                                        {
                                            for (k, tv) in opts.iter_mut() {
                                                if key_str(k)? != "size" {
                                                    unsupported.push(format!("{ipath}.tmpfs.{}", key_str(k)?));
                                                } else {
                                                    numberify(tv);
                                                }
                                            }
                                        }
                                    }
                                    if m.get("type").and_then(Value::as_str) == Some("bind") {
                                        policy.check(Allowance::BindMounts, &ipath).map_err(|e| e.message)?;
                                    }
                                }
                                _ => return Err(format!("`{ipath}` must be a string or a mapping")),
                            }
                        }
                    }
                }
                "healthcheck" => {
                    if let Value::Mapping(h) = v {
                        for (k, hv) in h.iter_mut() {
                            let hk = key_str(k)?;
                            if !HEALTHCHECK_KEYS.contains(&hk) {
                                unsupported.push(format!("{path}.{hk}"));
                            } else if hk == "retries" {
                                numberify(hv);
                            } else if hk == "disable" {
                                boolify(hv);
                            } else if hk != "test" {
                                stringify(hv);
                            }
                        }
                    }
                }
                "depends_on" => {
                    if let Value::Mapping(deps) = v {
                        for (dep, cond) in deps.iter_mut() {
                            let dep = key_str(dep)?.to_string();
                            if cond.is_null() {
                                *cond = Value::Mapping(Mapping::new());
                            }
                            let Value::Mapping(c) = cond else {
                                return Err(format!(
                                    "`{path}.{dep}` must be a mapping such as {{condition: service_healthy}}"
                                ));
                            };
                            for (k, cv) in c.iter_mut() {
                                let ck = key_str(k)?;
                                if !DEPENDS_KEYS.contains(&ck) {
                                    unsupported.push(format!("{path}.{dep}.{ck}"));
                                } else if ck == "required" {
                                    boolify(cv);
                                }
                            }
                            if !c.contains_key("condition") {
                                c.insert("condition".into(), "service_started".into());
                            }
                        }
                    }
                }
                "deploy" => {
                    if let Value::Mapping(d) = v {
                        for (k, dv) in d.iter_mut() {
                            let dk = key_str(k)?;
                            if dk != "resources" {
                                unsupported.push(format!("{path}.{dk}"));
                                continue;
                            }
                            let Value::Mapping(r) = dv else { continue };
                            for (k, rv) in r.iter_mut() {
                                let rk = key_str(k)?;
                                if rk != "limits" {
                                    unsupported.push(format!("{path}.resources.{rk}"));
                                    continue;
                                }
                                let Value::Mapping(l) = rv else { continue };
                                for (k, lv) in l.iter_mut() {
                                    let lk = key_str(k)?;
                                    if lk != "cpus" && lk != "memory" {
                                        unsupported.push(format!("{path}.resources.limits.{lk}"));
                                    } else {
                                        stringify(lv);
                                    }
                                }
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        // docker-compose-types has no `cpus`: it was read above.
        svc.remove("cpus");
    }
    if !unsupported.is_empty() {
        return Err(format!(
            "unsupported compose key(s): {}. This engine runs these service keys: {} (top level: {}; see docs/compose.md)",
            unsupported.join(", "),
            SERVICE_KEYS.join(", "),
            TOP_KEYS.join(", ")
        ));
    }
    Ok(extras)
}

fn normalize_labels(v: &mut Value) {
    match v {
        Value::Mapping(m) => m.values_mut().for_each(stringify),
        Value::Sequence(items) => items.iter_mut().for_each(stringify),
        _ => {}
    }
}

fn validate_service_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "service name {name:?} must be 1 to 63 letters, digits, '-', '_' or '.', starting with a letter or digit"
        ))
    }
}

/// Whether a short volume (`src:target[:mode]`) mounts a host path.
fn short_volume_is_bind(s: &str) -> bool {
    match s.split_once(':') {
        Some((src, _)) => src.starts_with('/') || src.starts_with('.') || src.starts_with('~'),
        None => false,
    }
}

/// Builds the runnable spec from the typed model.
fn build(compose: dct::Compose, extras: Extras, vars: &BTreeMap<String, String>) -> Result<StackSpec, String> {
    let mut volumes = Vec::new();
    for (name, def) in compose.volumes.0.iter() {
        validate_volume_name(name)?;
        let labels = match def {
            dct::MapOrEmpty::Map(v) => labels_of(&v.labels, &format!("volumes.{name}.labels"))?,
            dct::MapOrEmpty::Empty => BTreeMap::new(),
        };
        volumes.push(VolumeSpec { name: name.clone(), labels });
    }
    let declared: BTreeSet<&str> = volumes.iter().map(|v| v.name.as_str()).collect();

    let names: Vec<String> = compose.services.0.keys().cloned().collect();
    let mut services = Vec::new();
    for (name, svc) in compose.services.0.iter() {
        let svc =
            svc.as_ref().ok_or_else(|| format!("`services.{name}` must be a mapping with at least an `image`"))?;
        services.push(service_spec(name, svc, extras.cpus.get(name).map(String::as_str), vars, &declared, &names)?);
    }
    check_cycles(&services)?;

    let labelled: Vec<&str> = services
        .iter()
        .filter(|s| s.labels.get(MAIN_LABEL).is_some_and(|v| v.eq_ignore_ascii_case("true")))
        .map(|s| s.name.as_str())
        .collect();
    let main = match labelled.as_slice() {
        [] => services.first().map(|s| s.name.clone()).unwrap_or_default(),
        [one] => one.to_string(),
        many => {
            return Err(format!("only one service may be labelled {MAIN_LABEL}=true (found: {})", many.join(", ")));
        }
    };
    Ok(StackSpec { services, volumes, main })
}

fn validate_volume_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!("volume name {name:?} must be letters, digits, '-', '_' or '.', starting with a letter or digit"))
    }
}

fn labels_of(labels: &dct::Labels, path: &str) -> Result<BTreeMap<String, String>, String> {
    let pairs: Vec<(String, String)> = match labels {
        dct::Labels::List(items) => items
            .iter()
            .map(|item| match item.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (item.clone(), String::new()),
            })
            .collect(),
        dct::Labels::Map(m) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    };
    let mut out = BTreeMap::new();
    for (k, v) in pairs {
        if k.is_empty() || k.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(format!("`{path}` has an invalid label key {k:?}"));
        }
        if aenv_core::labels::is_reserved(&k) || k.starts_with("com.docker.compose.") {
            return Err(format!(
                "`{path}` sets the reserved label {k:?}: keys under aenv.io/, aenv.env_name and com.docker.compose. are the operator's"
            ));
        }
        out.insert(k, v);
    }
    Ok(out)
}

fn split_words(s: &str, path: &str) -> Result<Vec<String>, String> {
    shlex::split(s).ok_or_else(|| format!("`{path}`: unbalanced quotes in {s:?}"))
}

fn service_spec(
    name: &str,
    svc: &dct::Service,
    cpus: Option<&str>,
    vars: &BTreeMap<String, String>,
    declared: &BTreeSet<&str>,
    all: &[String],
) -> Result<ServiceSpec, String> {
    let p = format!("services.{name}");
    let image = svc
        .image
        .clone()
        .filter(|i| !i.trim().is_empty())
        .ok_or_else(|| format!("`{p}.image` is required (this engine runs images; it does not build them)"))?;
    let command = match &svc.command {
        None => None,
        Some(dct::Command::Simple(s)) => Some(split_words(s, &format!("{p}.command"))?),
        Some(dct::Command::Args(a)) => Some(a.clone()),
    };
    let entrypoint = match &svc.entrypoint {
        None => None,
        Some(dct::Entrypoint::Simple(s)) => Some(split_words(s, &format!("{p}.entrypoint"))?),
        Some(dct::Entrypoint::List(a)) => Some(a.clone()),
    };

    let mut environment = Vec::new();
    let mut push_env = |k: &str, v: Option<String>| -> Result<(), String> {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return Err(format!("`{p}.environment` has an invalid variable name {k:?}"));
        }
        // `KEY` alone takes the instance's value, as Compose takes the shell's; absent, it is not set.
        match v.or_else(|| vars.get(k).cloned()) {
            Some(v) if v.contains('\0') => Err(format!("`{p}.environment.{k}` contains a NUL character")),
            Some(v) => {
                environment.push(format!("{k}={v}"));
                Ok(())
            }
            None => Ok(()),
        }
    };
    match &svc.environment {
        dct::Environment::List(items) => {
            for item in items {
                match item.split_once('=') {
                    Some((k, v)) => push_env(k, Some(v.to_string()))?,
                    None => push_env(item, None)?,
                }
            }
        }
        dct::Environment::KvPair(m) => {
            for (k, v) in m {
                push_env(k, v.as_ref().map(ToString::to_string))?;
            }
        }
    }

    let labels = labels_of(&svc.labels, &format!("{p}.labels"))?;

    let mut ports = Vec::new();
    match &svc.ports {
        dct::Ports::Short(items) => {
            for (i, item) in items.iter().enumerate() {
                ports.push(short_port(item, &format!("{p}.ports[{i}]"))?);
            }
        }
        dct::Ports::Long(items) => {
            for (i, port) in items.iter().enumerate() {
                ports.push(long_port(port, &format!("{p}.ports[{i}]"))?);
            }
        }
    }

    let mut expose = Vec::new();
    for (i, e) in svc.expose.iter().enumerate() {
        let (port, proto) = e.split_once('/').unwrap_or((e.as_str(), "tcp"));
        let port: u16 = port.trim().parse().ok().filter(|p| *p > 0).ok_or_else(|| {
            format!("`{p}.expose[{i}]`: {e:?} must be a port from 1 to 65535, optionally with /tcp or /udp")
        })?;
        check_protocol(proto, &format!("{p}.expose[{i}]"))?;
        expose.push(format!("{port}/{proto}"));
    }

    let mut depends_on = Vec::new();
    let deps: Vec<(String, String, bool)> = match &svc.depends_on {
        dct::DependsOnOptions::Simple(list) => {
            list.iter().map(|d| (d.clone(), "service_started".to_string(), true)).collect()
        }
        dct::DependsOnOptions::Conditional(m) => {
            m.iter().map(|(d, c)| (d.clone(), c.condition.clone(), c.required.unwrap_or(true))).collect()
        }
    };
    for (dep, condition, required) in deps {
        let path = format!("{p}.depends_on.{dep}");
        if !all.contains(&dep) {
            return Err(format!("`{path}`: there is no service {dep:?} in the file"));
        }
        if dep == name {
            return Err(format!("`{path}`: a service cannot depend on itself"));
        }
        let condition = match condition.as_str() {
            "service_started" => Condition::Started,
            "service_healthy" => Condition::Healthy,
            "service_completed_successfully" => Condition::CompletedSuccessfully,
            other => {
                return Err(format!(
                    "`{path}.condition`: {other:?} is not a condition; use service_started, service_healthy or service_completed_successfully"
                ));
            }
        };
        depends_on.push(Dependency { service: dep, condition, required });
    }

    let healthcheck = svc.healthcheck.as_ref().map(|h| healthcheck(h, &format!("{p}.healthcheck"))).transpose()?;

    let mut mounts = Vec::new();
    for (i, v) in svc.volumes.iter().enumerate() {
        mounts.push(mount(v, &format!("{p}.volumes[{i}]"), declared)?);
    }
    let mut tmpfs = BTreeMap::new();
    let tmpfs_items: Vec<String> = match &svc.tmpfs {
        None => Vec::new(),
        Some(dct::Tmpfs::Simple(s)) => vec![s.clone()],
        Some(dct::Tmpfs::List(l)) => l.clone(),
    };
    for (i, t) in tmpfs_items.iter().enumerate() {
        let (path, opts) = t.split_once(':').unwrap_or((t.as_str(), ""));
        if !path.starts_with('/') {
            return Err(format!(
                "`{p}.tmpfs[{i}]`: {t:?} must be an absolute container path, optionally with :options"
            ));
        }
        tmpfs.insert(path.to_string(), opts.to_string());
    }

    // Limits: the `cpus` / `mem_limit` shorthands and `deploy.resources.limits`, which must agree when both are set.
    let limits = svc.deploy.as_ref().and_then(|d| d.resources.as_ref()).and_then(|r| r.limits.as_ref());
    let short_cpus = cpus.map(|c| parse_cpus(c, &format!("{p}.cpus"))).transpose()?;
    let deploy_cpus = limits
        .and_then(|l| l.cpus.as_deref())
        .map(|c| parse_cpus(c, &format!("{p}.deploy.resources.limits.cpus")))
        .transpose()?;
    let nano_cpus = match (short_cpus, deploy_cpus) {
        (Some(a), Some(b)) if a != b => {
            return Err(format!("`{p}.cpus` and `{p}.deploy.resources.limits.cpus` differ; set one of them"));
        }
        (a, b) => a.or(b),
    };
    let short_mem = svc.mem_limit.as_deref().map(|m| parse_bytes(m, &format!("{p}.mem_limit"))).transpose()?;
    let deploy_mem = limits
        .and_then(|l| l.memory.as_deref())
        .map(|m| parse_bytes(m, &format!("{p}.deploy.resources.limits.memory")))
        .transpose()?;
    let memory = match (short_mem, deploy_mem) {
        (Some(a), Some(b)) if a != b => {
            return Err(format!("`{p}.mem_limit` and `{p}.deploy.resources.limits.memory` differ; set one of them"));
        }
        (a, b) => a.or(b),
    };

    if let Some(wd) = &svc.working_dir
        && !wd.starts_with('/')
    {
        return Err(format!("`{p}.working_dir` must be an absolute path (got {wd:?})"));
    }

    let devices = svc
        .devices
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let parts: Vec<&str> = d.split(':').collect();
            let (host, container, perms) = match parts.as_slice() {
                [h] => (*h, *h, "rwm"),
                [h, c] => (*h, *c, "rwm"),
                [h, c, perms] => (*h, *c, *perms),
                _ => return Err(format!("`{p}.devices[{i}]`: {d:?} must be host[:container[:permissions]]")),
            };
            Ok(DeviceMapping {
                path_on_host: Some(host.to_string()),
                path_in_container: Some(container.to_string()),
                cgroup_permissions: Some(perms.to_string()),
            })
        })
        .collect::<Result<Vec<_>, String>>()?;

    let config_hash = {
        let mut h = Sha256::new();
        h.update(serde_json::to_vec(svc).unwrap_or_default());
        h.update(cpus.unwrap_or_default().as_bytes());
        h.finalize().iter().map(|b| format!("{b:02x}")).collect::<String>()
    };

    Ok(ServiceSpec {
        name: name.to_string(),
        image,
        command,
        entrypoint,
        environment,
        labels,
        ports,
        expose,
        depends_on,
        healthcheck,
        mounts,
        tmpfs,
        nano_cpus,
        memory,
        working_dir: svc.working_dir.clone(),
        user: svc.user.clone().filter(|u| !u.is_empty()),
        hostname: svc.hostname.clone().filter(|h| !h.is_empty()),
        read_only: svc.read_only,
        init: svc.init,
        cap_drop: svc.cap_drop.clone(),
        privileged: svc.privileged,
        host_network: svc.network_mode.as_deref() == Some("host"),
        pid_host: svc.pid.as_deref() == Some("host"),
        ipc_host: svc.ipc.as_deref() == Some("host"),
        cap_add: svc.cap_add.clone(),
        devices,
        config_hash,
    })
}

fn check_protocol(proto: &str, path: &str) -> Result<(), String> {
    if proto == "tcp" || proto == "udp" {
        Ok(())
    } else {
        Err(format!("`{path}`: protocol {proto:?} is not supported; use tcp or udp"))
    }
}

fn port_number(s: &str, path: &str) -> Result<u16, String> {
    if s.contains('-') {
        return Err(format!("`{path}`: port ranges ({s:?}) are not supported; publish each port"));
    }
    s.trim()
        .parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("`{path}`: {s:?} is not a port from 1 to 65535"))
}

/// Host IP of published ports when the file names none: loopback, so that a sandbox is not reachable from the
/// network unless the file says so (Compose itself binds to all interfaces).
pub(crate) const DEFAULT_HOST_IP: &str = "127.0.0.1";

/// `[HOST_IP:][HOST_PORT:]CONTAINER_PORT[/PROTOCOL]`, with `[v6]` host IPs.
fn short_port(s: &str, path: &str) -> Result<PortPublish, String> {
    let (spec, proto) = s.rsplit_once('/').unwrap_or((s, "tcp"));
    check_protocol(proto, path)?;
    let (host_ip, rest) = if let Some(v6) = spec.strip_prefix('[') {
        let (ip, rest) =
            v6.split_once(']').ok_or_else(|| format!("`{path}`: {s:?} has an unclosed '[' in its host IP"))?;
        let rest = rest.strip_prefix(':').ok_or_else(|| format!("`{path}`: {s:?} needs ':' after the host IP"))?;
        (Some(ip.to_string()), rest)
    } else {
        (None, spec)
    };
    let parts: Vec<&str> = rest.split(':').collect();
    let (ip, host, container) = match (host_ip, parts.as_slice()) {
        (None, [c]) => (None, None, *c),
        (None, [h, c]) => (None, Some(*h), *c),
        (None, [ip, h, c]) => (Some(ip.to_string()), Some(*h), *c),
        (Some(ip), [h, c]) => (Some(ip), Some(*h), *c),
        _ => return Err(format!("`{path}`: {s:?} is not [HOST_IP:][HOST_PORT:]CONTAINER_PORT[/PROTOCOL]")),
    };
    Ok(PortPublish {
        container_port: port_number(container, path)?,
        protocol: proto.to_string(),
        host_ip: ip.filter(|i| !i.is_empty()).unwrap_or_else(|| DEFAULT_HOST_IP.to_string()),
        host_port: host.filter(|h| !h.is_empty()).map(|h| port_number(h, path)).transpose()?,
    })
}

fn long_port(port: &dct::Port, path: &str) -> Result<PortPublish, String> {
    let protocol = port.protocol.clone().unwrap_or_else(|| "tcp".into());
    check_protocol(&protocol, path)?;
    if port.target == 0 {
        return Err(format!("`{path}.target` must be a port from 1 to 65535"));
    }
    let host_port = match &port.published {
        None => None,
        Some(dct::PublishedPort::Single(p)) => Some(*p).filter(|p| *p > 0),
        Some(dct::PublishedPort::Range(s)) if s.is_empty() => None,
        Some(dct::PublishedPort::Range(s)) => Some(port_number(s, &format!("{path}.published"))?),
    };
    Ok(PortPublish {
        container_port: port.target,
        protocol,
        host_ip: port.host_ip.clone().filter(|i| !i.is_empty()).unwrap_or_else(|| DEFAULT_HOST_IP.to_string()),
        host_port,
    })
}

fn mount(v: &dct::Volumes, path: &str, declared: &BTreeSet<&str>) -> Result<MountSpec, String> {
    let named = |source: &str| -> Result<String, String> {
        if declared.contains(source) {
            Ok(source.to_string())
        } else {
            Err(format!("`{path}`: volume {source:?} is not declared under the top-level `volumes` key"))
        }
    };
    let absolute = |target: &str| -> Result<String, String> {
        if target.starts_with('/') {
            Ok(target.to_string())
        } else {
            Err(format!("`{path}`: the container path {target:?} must be absolute"))
        }
    };
    match v {
        dct::Volumes::Simple(s) => {
            let parts: Vec<&str> = s.split(':').collect();
            let (source, target, mode) = match parts.as_slice() {
                [t] => (None, *t, ""),
                [s, t] => (Some(*s), *t, ""),
                [s, t, m] => (Some(*s), *t, *m),
                _ => return Err(format!("`{path}`: {s:?} is not [SOURCE:]TARGET[:MODE]")),
            };
            let mut read_only = false;
            for opt in mode.split(',').filter(|o| !o.is_empty()) {
                match opt {
                    "ro" => read_only = true,
                    "rw" => read_only = false,
                    other => {
                        return Err(format!("`{path}`: the mount option {other:?} is not supported (use ro or rw)"));
                    }
                }
            }
            let target = absolute(target)?;
            match source {
                None => Ok(MountSpec::Volume { source: None, target, read_only, nocopy: false }),
                Some(src) if short_volume_is_bind(&format!("{src}:")) => {
                    if !src.starts_with('/') {
                        return Err(format!(
                            "`{path}`: the host path {src:?} must be absolute (a stack has no project directory)"
                        ));
                    }
                    Ok(MountSpec::Bind { source: src.to_string(), target, read_only })
                }
                Some(src) => Ok(MountSpec::Volume { source: Some(named(src)?), target, read_only, nocopy: false }),
            }
        }
        dct::Volumes::Advanced(a) => {
            let target = absolute(&a.target)?;
            match a._type.as_str() {
                "volume" => Ok(MountSpec::Volume {
                    source: a.source.as_deref().filter(|s| !s.is_empty()).map(named).transpose()?,
                    target,
                    read_only: a.read_only,
                    nocopy: a.volume.as_ref().and_then(|v| v.nocopy).unwrap_or(false),
                }),
                "bind" => {
                    let source = a.source.clone().unwrap_or_default();
                    if !source.starts_with('/') {
                        return Err(format!(
                            "`{path}.source`: the host path {source:?} must be absolute (a stack has no project directory)"
                        ));
                    }
                    Ok(MountSpec::Bind { source, target, read_only: a.read_only })
                }
                "tmpfs" => {
                    Ok(MountSpec::Tmpfs { target, size: a.tmpfs.as_ref().map(|t| t.size as i64).filter(|s| *s > 0) })
                }
                other => Err(format!("`{path}.type`: {other:?} is not supported (use volume or tmpfs)")),
            }
        }
    }
}

fn healthcheck(h: &dct::Healthcheck, path: &str) -> Result<HealthConfig, String> {
    let nanos = |v: &Option<String>, key: &str| -> Result<Option<i64>, String> {
        v.as_deref()
            .map(|s| {
                aenv_core::duration::parse_go_duration(s)
                    .map(|d| d.as_nanos().min(i64::MAX as u128) as i64)
                    .map_err(|e| format!("`{path}.{key}`: {e}"))
            })
            .transpose()
    };
    let test = if h.disable {
        Some(vec!["NONE".to_string()])
    } else {
        match &h.test {
            None => None,
            Some(dct::HealthcheckTest::Single(s)) => Some(vec!["CMD-SHELL".to_string(), s.clone()]),
            Some(dct::HealthcheckTest::Multiple(v)) => {
                match v.first().map(String::as_str) {
                    Some("CMD") | Some("CMD-SHELL") | Some("NONE") => {}
                    _ => {
                        return Err(format!(
                            "`{path}.test` must start with CMD, CMD-SHELL or NONE, or be a string (run by the shell)"
                        ));
                    }
                }
                Some(v.clone())
            }
        }
    };
    if h.retries < 0 {
        return Err(format!("`{path}.retries` must not be negative"));
    }
    Ok(HealthConfig {
        test,
        interval: nanos(&h.interval, "interval")?,
        timeout: nanos(&h.timeout, "timeout")?,
        retries: (h.retries > 0).then_some(h.retries),
        start_period: nanos(&h.start_period, "start_period")?,
        start_interval: nanos(&h.start_interval, "start_interval")?,
    })
}

fn parse_cpus(s: &str, path: &str) -> Result<i64, String> {
    let cpus: f64 = s.trim().parse().map_err(|_| format!("`{path}`: {s:?} is not a number of CPUs such as 0.5"))?;
    if !(cpus.is_finite() && cpus > 0.0 && cpus <= 1024.0) {
        return Err(format!("`{path}`: {s:?} must be more than 0 and at most 1024 CPUs"));
    }
    Ok((cpus * 1e9).round() as i64)
}

/// A byte size as Docker reads it (`512m`, `1g`, `1.5GB`, `1024`): binary units, case-insensitive.
fn parse_bytes(s: &str, path: &str) -> Result<i64, String> {
    let t = s.trim().to_ascii_lowercase();
    let num_end = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(num_end);
    let unit = unit.trim();
    let unit = unit.strip_suffix('b').unwrap_or(unit);
    let unit = unit.strip_suffix('i').unwrap_or(unit);
    let mult: f64 = match unit {
        "" => 1.0,
        "k" => 1024.0,
        "m" => 1024.0 * 1024.0,
        "g" => 1024.0 * 1024.0 * 1024.0,
        "t" => 1024.0f64.powi(4),
        "p" => 1024.0f64.powi(5),
        _ => f64::NAN,
    };
    let value: f64 = num.parse().unwrap_or(f64::NAN);
    let bytes = value * mult;
    if !bytes.is_finite() || bytes < 4.0 * 1024.0 * 1024.0 || bytes > 1024.0f64.powi(5) {
        return Err(format!(
            "`{path}`: {s:?} must be a size such as 512m or 2g, at least 4m (Docker's smallest memory limit)"
        ));
    }
    Ok(bytes as i64)
}

/// Refuses dependency cycles, naming them.
fn check_cycles(services: &[ServiceSpec]) -> Result<(), String> {
    fn visit<'a>(
        name: &'a str,
        services: &'a [ServiceSpec],
        state: &mut HashMap<&'a str, u8>,
        stack: &mut Vec<&'a str>,
    ) -> Result<(), String> {
        match state.get(name) {
            Some(2) => return Ok(()),
            Some(1) => {
                let start = stack.iter().position(|s| *s == name).unwrap_or(0);
                let mut cycle: Vec<&str> = stack[start..].to_vec();
                cycle.push(name);
                return Err(format!("`depends_on` forms a cycle: {}", cycle.join(" -> ")));
            }
            _ => {}
        }
        state.insert(name, 1);
        stack.push(name);
        if let Some(svc) = services.iter().find(|s| s.name == name) {
            for dep in &svc.depends_on {
                visit(&dep.service, services, state, stack)?;
            }
        }
        stack.pop();
        state.insert(name, 2);
        Ok(())
    }
    let mut state = HashMap::new();
    for svc in services {
        visit(&svc.name, services, &mut state, &mut Vec::new())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(yaml: &str) -> StackSpec {
        parse(yaml, &BTreeMap::new(), &Policy::default()).unwrap_or_else(|e| panic!("{e}"))
    }

    fn err(yaml: &str) -> String {
        parse(yaml, &BTreeMap::new(), &Policy::default()).expect_err("must be refused")
    }

    const TWO: &str = r#"
services:
  main:
    image: aenv-test/sandbox:local
    labels: ["aenv.main=true", "team=rl"]
    command: sh -c 'wget -qO- http://side:8081/health && sleep 1000'
    environment:
      - A=1
      - PASSTHROUGH
    depends_on:
      side:
        condition: service_healthy
    ports: ["8081", "127.0.0.1:18081:8081/tcp", "0.0.0.0::9000/udp"]
    expose: [8081, "9001/udp"]
    cpus: 0.5
    mem_limit: 256m
    working_dir: /tmp
    user: "65534"
    tmpfs: /scratch:size=1m
    volumes: ["data:/data:ro", "/anon"]
  side:
    image: aenv-test/sandbox:local
    environment: {B: 2, C: null, D: "x"}
    labels: {aenv.main: false}
    healthcheck:
      test: ["CMD", "wget", "-qO-", "http://127.0.0.1:8081/health"]
      interval: 500ms
      timeout: 2s
      retries: 20
      start_period: 1s
    deploy:
      resources:
        limits: {cpus: "0.25", memory: 64M}
volumes:
  data: {}
x-note: ignored by design
"#;

    #[test]
    fn two_services_with_every_supported_shape() {
        let vars = BTreeMap::from([("PASSTHROUGH".to_string(), "yes".to_string()), ("C".into(), "from-env".into())]);
        let s = parse(TWO, &vars, &Policy::default()).unwrap();
        assert_eq!(s.main, "main");
        assert_eq!(s.volumes, vec![VolumeSpec { name: "data".into(), labels: BTreeMap::new() }]);
        let main = s.service("main").unwrap();
        assert_eq!(main.command.as_deref().unwrap(), ["sh", "-c", "wget -qO- http://side:8081/health && sleep 1000"]);
        assert_eq!(main.environment, ["A=1", "PASSTHROUGH=yes"]);
        assert_eq!(main.labels["team"], "rl");
        assert_eq!(
            main.depends_on,
            [Dependency { service: "side".into(), condition: Condition::Healthy, required: true }]
        );
        assert_eq!(main.ports.len(), 3);
        assert_eq!(
            main.ports[0],
            PortPublish { container_port: 8081, protocol: "tcp".into(), host_ip: "127.0.0.1".into(), host_port: None }
        );
        assert_eq!(main.ports[1].host_port, Some(18081));
        assert_eq!((main.ports[2].host_ip.as_str(), main.ports[2].protocol.as_str()), ("0.0.0.0", "udp"));
        assert_eq!(main.expose, ["8081/tcp", "9001/udp"]);
        assert_eq!(main.nano_cpus, Some(500_000_000));
        assert_eq!(main.memory, Some(256 * 1024 * 1024));
        assert_eq!(main.working_dir.as_deref(), Some("/tmp"));
        assert_eq!(main.user.as_deref(), Some("65534"));
        assert_eq!(main.tmpfs["/scratch"], "size=1m");
        assert_eq!(
            main.mounts,
            [
                MountSpec::Volume {
                    source: Some("data".into()),
                    target: "/data".into(),
                    read_only: true,
                    nocopy: false
                },
                MountSpec::Volume { source: None, target: "/anon".into(), read_only: false, nocopy: false },
            ]
        );
        let side = s.service("side").unwrap();
        assert_eq!(side.environment, ["B=2", "C=from-env", "D=x"]);
        assert_eq!(side.labels["aenv.main"], "false");
        let hc = side.healthcheck.as_ref().unwrap();
        assert_eq!(hc.test.as_deref().unwrap()[0], "CMD");
        assert_eq!((hc.interval, hc.timeout, hc.retries), (Some(500_000_000), Some(2_000_000_000), Some(20)));
        assert_eq!((side.nano_cpus, side.memory), (Some(250_000_000), Some(64 * 1024 * 1024)));
        assert_eq!(main.config_hash.len(), 64);
        assert_ne!(main.config_hash, side.config_hash);
    }

    #[test]
    fn main_is_labelled_else_first() {
        let s = ok("services:\n  a: {image: x}\n  b: {image: y, labels: {aenv.main: \"true\"}}\n");
        assert_eq!(s.main, "b");
        let s = ok("services:\n  b: {image: x}\n  a: {image: y}\n");
        assert_eq!(s.main, "b", "first in file order");
        let e =
            err("services:\n  a: {image: x, labels: [aenv.main=true]}\n  b: {image: y, labels: [aenv.main=true]}\n");
        assert!(e.contains("only one service"), "{e}");
    }

    #[test]
    fn interpolation_from_instance_variables() {
        let yaml = "services:\n  web:\n    image: ${IMAGE:-aenv-test/sandbox:local}\n    environment: [\"GREETING=${GREETING}\", \"COST=$$5\"]\n    cpus: ${CPUS:-1}\n    mem_limit: ${MEM}\n    read_only: ${RO:-false}\n";
        let vars = BTreeMap::from([("GREETING".to_string(), "hi".to_string()), ("MEM".into(), "1g".into())]);
        let s = parse(yaml, &vars, &Policy::default()).unwrap();
        let web = s.service("web").unwrap();
        assert_eq!(web.image, "aenv-test/sandbox:local");
        assert_eq!(web.environment, ["GREETING=hi", "COST=$5"]);
        assert_eq!(web.nano_cpus, Some(1_000_000_000));
        assert_eq!(web.memory, Some(1024 * 1024 * 1024));
        let e =
            parse("services:\n  web:\n    image: ${IMG:?set IMG}\n", &BTreeMap::new(), &Policy::default()).unwrap_err();
        assert!(e.contains("services.web.image") && e.contains("set IMG"), "{e}");
    }

    #[test]
    fn policy_guarded_keys_name_the_key_and_the_flag() {
        let cases = [
            ("privileged: true", "services.web.privileged", "privileged"),
            ("network_mode: host", "services.web.network_mode", "host-network"),
            ("pid: host", "services.web.pid", "host-namespaces"),
            ("ipc: host", "services.web.ipc", "host-namespaces"),
            ("cap_add: [NET_ADMIN]", "services.web.cap_add", "cap-add"),
            ("devices: [\"/dev/fuse:/dev/fuse\"]", "services.web.devices", "devices"),
            ("volumes: [\"/etc:/host-etc:ro\"]", "services.web.volumes[0]", "bind-mounts"),
            ("volumes: [{type: bind, source: /etc, target: /x}]", "services.web.volumes[0]", "bind-mounts"),
        ];
        for (line, key, flag) in cases {
            let yaml = format!("services:\n  web:\n    image: x\n    {line}\n");
            let e = err(&yaml);
            assert!(e.contains(&format!("`{key}`")) && e.contains(&format!("--allow {flag}")), "{line}: {e}");
            let allowed = Policy::allowing(crate::Allowance::ALL);
            parse(&yaml, &BTreeMap::new(), &allowed).unwrap_or_else(|e| panic!("{line} allowed: {e}"));
        }
        // Harmless values of guarded keys pass.
        ok("services:\n  web:\n    image: x\n    privileged: false\n    cap_add: []\n");
        let e = err("services:\n  web:\n    image: x\n    network_mode: none\n");
        assert!(e.contains("services.web.network_mode"), "{e}");
        let e = parse(
            "services:\n  web:\n    image: x\n    volumes: [\"./rel:/x\"]\n",
            &BTreeMap::new(),
            &Policy::allowing([crate::Allowance::BindMounts]),
        )
        .unwrap_err();
        assert!(e.contains("must be absolute"), "{e}");
    }

    #[test]
    fn unsupported_keys_are_listed_together() {
        let e = err(
            "name: proj\nnetworks: {}\nservices:\n  web:\n    image: x\n    build: .\n    container_name: c\n    deploy: {replicas: 2, resources: {reservations: {memory: 1g}}}\n    ports: [{target: 80, name: web}]\n    healthcheck: {test: [\"NONE\"], bogus: 1}\n    depends_on: {db: {condition: service_started, restart: true}}\n  db:\n    image: y\n    volumes: [{type: volume, target: /d, volume: {subpath: a}}]\nvolumes:\n  v: {external: true}\n",
        );
        for key in [
            "name",
            "networks",
            "services.web.build",
            "services.web.container_name",
            "services.web.deploy.replicas",
            "services.web.deploy.resources.reservations",
            "services.web.ports[0].name",
            "services.web.healthcheck.bogus",
            "services.web.depends_on.db.restart",
            "services.db.volumes[0].volume.subpath",
            "volumes.v.external",
        ] {
            assert!(e.contains(key), "{key} missing from: {e}");
        }
        assert!(e.starts_with("deployConfig.composeFile: unsupported compose key(s)"), "{e}");
    }

    #[test]
    fn semantic_errors_name_the_key() {
        let cases = [
            ("services: {}\n", "no services"),
            ("services:\n  web: {command: x}\n", "services.web.image"),
            ("services:\n  web: {image: x, depends_on: [nope]}\n", "services.web.depends_on.nope"),
            ("services:\n  web: {image: x, depends_on: [web]}\n", "itself"),
            ("services:\n  a: {image: x, depends_on: [b]}\n  b: {image: x, depends_on: [a]}\n", "cycle: a -> b -> a"),
            (
                "services:\n  web: {image: x, depends_on: {db: {condition: service_ready}}}\n  db: {image: x}\n",
                "services.web.depends_on.db.condition",
            ),
            ("services:\n  web: {image: x, ports: [\"8000-8010:8000-8010\"]}\n", "ranges"),
            ("services:\n  web: {image: x, ports: [\"80/sctp\"]}\n", "sctp"),
            ("services:\n  web: {image: x, volumes: [\"undeclared:/d\"]}\n", "not declared"),
            ("services:\n  web: {image: x, volumes: [\"v:/d:z\"]}\nvolumes: {v: }\n", "mount option"),
            ("services:\n  web: {image: x, mem_limit: lots}\n", "services.web.mem_limit"),
            ("services:\n  web: {image: x, cpus: 0}\n", "services.web.cpus"),
            ("services:\n  web: {image: x, cpus: 1, deploy: {resources: {limits: {cpus: '2'}}}}\n", "differ"),
            ("services:\n  web: {image: x, working_dir: rel}\n", "services.web.working_dir"),
            ("services:\n  web: {image: x, restart: always}\n", "services.web.restart"),
            ("services:\n  web: {image: x, labels: [\"aenv.io/instance=x\"]}\n", "reserved"),
            ("services:\n  web: {image: x, labels: {com.docker.compose.project: p}}\n", "reserved"),
            ("services:\n  web: {image: x, healthcheck: {test: [\"wget\"]}}\n", "CMD, CMD-SHELL"),
            ("services:\n  web: {image: x, healthcheck: {test: x, interval: 1d}}\n", "healthcheck.interval"),
            ("services:\n  \"bad name\": {image: x}\n", "service name"),
            ("services:\n  web: {image: x, command: \"sh -c 'oops\"}\n", "unbalanced"),
            ("- not\n- a map\n", "must be a mapping"),
            ("services: [\n", "not valid YAML"),
            ("services:\n  web: {image: x, volumes: {type: volume}}\n", "not a valid compose file"),
        ];
        for (yaml, want) in cases {
            let e = err(yaml);
            assert!(e.contains(want), "{yaml:?}: want {want:?} in {e}");
        }
    }

    #[test]
    fn byte_sizes_read_like_docker() {
        assert_eq!(parse_bytes("512m", "k"), Ok(512 << 20));
        assert_eq!(parse_bytes("1g", "k"), Ok(1 << 30));
        assert_eq!(parse_bytes("1.5GB", "k"), Ok(3 << 29));
        assert_eq!(parse_bytes("64Mi", "k"), Ok(64 << 20));
        assert_eq!(parse_bytes("8388608", "k"), Ok(8 << 20));
        assert!(parse_bytes("1k", "k").is_err(), "below Docker's minimum");
        assert!(parse_bytes("-1m", "k").is_err());
        assert!(parse_bytes("1x", "k").is_err());
    }

    #[test]
    fn short_ports() {
        let p = short_port("[::1]:8080:80/udp", "k").unwrap();
        assert_eq!(
            (p.host_ip.as_str(), p.host_port, p.container_port, p.protocol.as_str()),
            ("::1", Some(8080), 80, "udp")
        );
        let p = short_port("127.0.0.1::80", "k").unwrap();
        assert_eq!((p.host_port, p.container_port), (None, 80));
        assert!(short_port("a:b:c:d", "k").is_err());
        assert!(short_port("0", "k").is_err());
    }
}

#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    /// YAML fragments that look like compose files, stitched together at random.
    fn compose_like() -> impl Strategy<Value = String> {
        let line = prop::sample::select(vec![
            "services:",
            "  web:",
            "  db:",
            "    image: ${IMAGE:-busybox}",
            "    image: img",
            "    command: [sh, -c, x]",
            "    command: \"sh -c 'a b'\"",
            "    entrypoint: sh",
            "    environment: [A=1, B]",
            "    environment: {A: 1}",
            "    labels: [aenv.main=true]",
            "    labels: {a: b}",
            "    ports: [\"8080\", \"127.0.0.1:9000:9000/udp\"]",
            "    expose: [80]",
            "    depends_on: [db]",
            "    depends_on: {db: {condition: service_healthy}}",
            "    depends_on: {web: {condition: service_started}}",
            "    healthcheck: {test: [CMD, true], interval: 1s}",
            "    volumes: [data:/data]",
            "    volumes: [/etc:/host]",
            "    tmpfs: [/tmp]",
            "    cpus: 0.5",
            "    mem_limit: 64m",
            "    deploy: {resources: {limits: {cpus: '1', memory: 1G}}}",
            "    privileged: true",
            "    network_mode: host",
            "    pid: host",
            "    cap_add: [ALL]",
            "    devices: [/dev/null]",
            "    user: 1000",
            "    working_dir: /w",
            "volumes:",
            "  data: {}",
            "networks: {}",
            "x-ext: 1",
            "  - item",
            "{",
            "]",
            "\t",
            "    image: ${",
            "    image: $$x",
            ":",
            "- -",
            "    build: .",
        ]);
        prop::collection::vec(line, 0..14).prop_map(|lines| lines.join("\n"))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        #[test]
        fn compose_like_files_never_panic(yaml in compose_like()) {
            let vars = BTreeMap::from([("IMAGE".to_string(), "img".to_string())]);
            let _ = parse(&yaml, &vars, &Policy::default());
            let _ = parse(&yaml, &vars, &Policy::allowing(crate::Allowance::ALL));
        }

        #[test]
        fn arbitrary_text_never_panics(yaml in "\\PC{0,200}") {
            let _ = parse(&yaml, &BTreeMap::new(), &Policy::default());
        }
    }
}
