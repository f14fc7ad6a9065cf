//! What a compose file may say: the subset of the Compose format this engine runs, as serde types.
//!
//! [`read`] parses the YAML text, interpolates `${VAR}` in every string value from the instance's variables
//! ([`super::interpolate`]) and deserialises the result into a [`ComposeFile`]. The model is lenient where Compose
//! is (a number where a string is expected, `"true"` from interpolation where a boolean is, digits from
//! interpolation where a number is) and strict elsewhere. Every struct keeps the keys it does not know in
//! `unknown`, so that [`super::checks`] refuses them by name instead of ignoring them. A few values are kept as
//! written ([`Value`]) or as a wrong shape ([`Shaped::Bad`]) because their refusal quotes or describes them.
//!
//! Adding a compose key: a field here (and its name in [`SERVICE_KEYS`], which the refusal of unknown keys lists),
//! its use in `convert.rs`, and a check in `checks.rs` only if it needs one.

use std::{collections::BTreeMap, fmt};

use serde::{Deserialize, Deserializer, de::Error as _};
use serde_norway::{Mapping, Value};

pub(crate) use super::de::{Entries, Flag, Num, Shaped, Text, scalar_text};
use super::{
    Refusal,
    de::{Open, open, open_option, present},
    interpolate::interpolate_document,
};

/// Top-level keys this engine runs.
pub(crate) const TOP_KEYS: &[&str] = &["version", "services", "volumes"];
/// Service keys this engine runs (the policy may still refuse some values): the fields of [`Service`].
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

/// A compose file.
#[derive(Debug, Deserialize)]
pub(crate) struct ComposeFile {
    /// Read and ignored, as Compose v2 does.
    #[serde(default)]
    #[allow(dead_code, reason = "a key the file may write, with no effect")]
    pub version: Option<String>,
    #[serde(default)]
    pub services: Option<Shaped<Entries<Value, ServiceDef>>>,
    #[serde(default)]
    pub volumes: Option<Shaped<Entries<Value, VolumeDef>>>,
    #[serde(flatten)]
    pub unknown: Mapping,
}

/// A top-level volume's definition: empty (`data:`), a mapping, or neither (refused by the checks).
#[derive(Debug)]
pub(crate) enum VolumeDef {
    Empty,
    Def(TopVolume),
    Bad,
}

impl<'de> Deserialize<'de> for VolumeDef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::Null => Ok(VolumeDef::Empty),
            // The message docker-compose-types gave, which users may match.
            v @ Value::Mapping(_) => open(v)
                .map(VolumeDef::Def)
                .map_err(|_| D::Error::custom("data did not match any variant of untagged enum MapOrEmpty")),
            _ => Ok(VolumeDef::Bad),
        }
    }
}

/// A top-level volume.
#[derive(Debug, Deserialize)]
pub(crate) struct TopVolume {
    #[serde(default)]
    pub labels: Labels,
    /// Only `local` runs.
    #[serde(default, deserialize_with = "present")]
    pub driver: Option<Value>,
    #[serde(flatten)]
    pub unknown: Mapping,
}

/// A service's definition: a mapping, or anything else (refused by the checks).
#[derive(Debug)]
pub(crate) enum ServiceDef {
    Def(Box<Service>),
    Bad,
}

impl<'de> Deserialize<'de> for ServiceDef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            v @ Value::Mapping(_) => open(v).map(|s| ServiceDef::Def(Box::new(s))).map_err(D::Error::custom),
            _ => Ok(ServiceDef::Bad),
        }
    }
}

/// One service.
#[derive(Debug, Deserialize)]
pub(crate) struct Service {
    #[serde(default)]
    pub image: Option<Text>,
    #[serde(default)]
    pub command: Option<Command>,
    #[serde(default)]
    pub entrypoint: Option<Entrypoint>,
    #[serde(default)]
    pub environment: Environment,
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    pub ports: Ports,
    #[serde(default)]
    pub expose: Vec<Text>,
    #[serde(default)]
    pub depends_on: DependsOnOptions,
    #[serde(default, deserialize_with = "open_option")]
    pub healthcheck: Option<Healthcheck>,
    #[serde(default)]
    pub volumes: Vec<Mount>,
    #[serde(default)]
    pub tmpfs: Option<Tmpfs>,
    #[serde(default, deserialize_with = "open_option")]
    pub deploy: Option<Deploy>,
    /// A scalar (`0.5`, `"1"`); anything else is refused naming the key.
    #[serde(default, deserialize_with = "present")]
    pub cpus: Option<Value>,
    #[serde(default)]
    pub mem_limit: Option<Text>,
    #[serde(default)]
    pub working_dir: Option<Text>,
    #[serde(default)]
    pub user: Option<Text>,
    #[serde(default)]
    pub hostname: Option<Text>,
    #[serde(default)]
    pub read_only: Flag,
    #[serde(default)]
    pub init: Flag,
    /// Only `"no"` runs.
    #[serde(default, deserialize_with = "present")]
    pub restart: Option<Value>,
    #[serde(default)]
    pub cap_drop: Vec<String>,
    #[serde(default)]
    pub privileged: Flag,
    /// Only `host` runs (when the policy allows it).
    #[serde(default, deserialize_with = "present")]
    pub network_mode: Option<Value>,
    /// Only `host` runs (when the policy allows it).
    #[serde(default, deserialize_with = "present")]
    pub pid: Option<Value>,
    /// Only `host` runs (when the policy allows it).
    #[serde(default, deserialize_with = "present")]
    pub ipc: Option<Value>,
    #[serde(default)]
    pub cap_add: Vec<String>,
    #[serde(default)]
    pub devices: Vec<String>,
    #[serde(flatten)]
    pub unknown: Mapping,
}

/// `command`: a string split like a shell does, or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Command {
    Simple(String),
    Args(Vec<String>),
}

/// `entrypoint`: a string split like a shell does, or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Entrypoint {
    Simple(String),
    List(Vec<String>),
}

/// `environment`: `K=V` / `K` entries, or a map whose null values take the instance's variable.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Environment {
    List(Vec<String>),
    KvPair(Entries<String, Option<SingleValue>>),
}

impl Default for Environment {
    fn default() -> Self {
        Environment::List(Vec::new())
    }
}

/// A value of the map form of `environment`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum SingleValue {
    String(String),
    Bool(bool),
    Unsigned(u64),
    Signed(i64),
    Float(f64),
}

impl fmt::Display for SingleValue {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            SingleValue::String(s) => f.write_str(s),
            SingleValue::Bool(b) => write!(f, "{b}"),
            SingleValue::Unsigned(u) => write!(f, "{u}"),
            SingleValue::Signed(i) => write!(f, "{i}"),
            SingleValue::Float(x) => write!(f, "{x}"),
        }
    }
}

/// `labels`: `k=v` entries or a map.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Labels {
    List(Vec<Text>),
    Map(Entries<String, Text>),
}

impl Default for Labels {
    fn default() -> Self {
        Labels::List(Vec::new())
    }
}

/// `ports`: all short (`"127.0.0.1:8080:80/udp"`) or all long.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Ports {
    Short(Vec<Text>),
    Long(Vec<Port>),
}

impl Default for Ports {
    fn default() -> Self {
        Ports::Short(Vec::new())
    }
}

/// A port in long form.
#[derive(Debug, Deserialize)]
pub(crate) struct Port {
    pub target: Num<u16>,
    #[serde(default)]
    pub host_ip: Option<Text>,
    #[serde(default)]
    pub published: Option<Text>,
    #[serde(default)]
    pub protocol: Option<String>,
    /// Read and ignored (`host` or `ingress`; a stack has one host).
    #[serde(default)]
    #[allow(dead_code, reason = "a key the file may write, with no effect")]
    pub mode: Option<String>,
    #[serde(flatten)]
    pub unknown: Mapping,
}

/// `depends_on`: a list of services (each `service_started`), or a map of conditions.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum DependsOnOptions {
    Simple(Vec<String>),
    Conditional(Entries<Value, DependsOn>),
}

impl Default for DependsOnOptions {
    fn default() -> Self {
        DependsOnOptions::Simple(Vec::new())
    }
}

/// One entry of the map form of `depends_on`: a mapping, or null for `service_started`.
#[derive(Debug)]
pub(crate) enum DependsOn {
    Condition(DependsCondition),
    /// Neither a mapping nor null.
    Bad,
}

impl<'de> Deserialize<'de> for DependsOn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::Null => Ok(DependsOn::Condition(DependsCondition::default())),
            v @ Value::Mapping(_) => open(v).map(DependsOn::Condition).map_err(D::Error::custom),
            _ => Ok(DependsOn::Bad),
        }
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct DependsCondition {
    #[serde(default = "service_started")]
    pub condition: String,
    /// `false`: a dependency that fails is logged and the service starts anyway.
    #[serde(default)]
    pub required: Option<Flag>,
    #[serde(flatten)]
    pub unknown: Mapping,
}

fn service_started() -> String {
    "service_started".into()
}

impl Default for DependsCondition {
    fn default() -> Self {
        DependsCondition { condition: service_started(), required: None, unknown: Mapping::new() }
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct Healthcheck {
    #[serde(default)]
    pub test: Option<HealthcheckTest>,
    #[serde(default)]
    pub interval: Option<Text>,
    #[serde(default)]
    pub timeout: Option<Text>,
    #[serde(default)]
    pub retries: Num<i64>,
    #[serde(default)]
    pub start_period: Option<Text>,
    #[serde(default)]
    pub start_interval: Option<Text>,
    #[serde(default)]
    pub disable: Flag,
    #[serde(flatten)]
    pub unknown: Mapping,
}

/// `healthcheck.test`: a string for the shell, or `[CMD|CMD-SHELL|NONE, ...]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum HealthcheckTest {
    Single(String),
    Multiple(Vec<String>),
}

/// An entry of a service's `volumes`.
#[derive(Debug)]
pub(crate) enum Mount {
    /// `[SOURCE:]TARGET[:MODE]`.
    Short(String),
    Long(Box<LongMount>),
    /// Neither a string nor a mapping.
    Bad,
}

impl<'de> Deserialize<'de> for Mount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) => Ok(Mount::Short(s)),
            // The message docker-compose-types gave, which users may match.
            v @ Value::Mapping(_) => open(v)
                .map(|m| Mount::Long(Box::new(m)))
                .map_err(|_| D::Error::custom("data did not match any variant of untagged enum Volumes")),
            _ => Ok(Mount::Bad),
        }
    }
}

/// A mount in long form.
#[derive(Debug, Deserialize)]
pub(crate) struct LongMount {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub source: Option<String>,
    pub target: String,
    #[serde(default)]
    pub read_only: Flag,
    #[serde(default, deserialize_with = "open_option")]
    pub volume: Option<MountVolume>,
    #[serde(default, deserialize_with = "open_option")]
    pub tmpfs: Option<MountTmpfs>,
    #[serde(flatten)]
    pub unknown: Mapping,
}

#[derive(Debug, Deserialize)]
pub(crate) struct MountVolume {
    #[serde(default)]
    pub nocopy: Option<bool>,
    #[serde(flatten)]
    pub unknown: Mapping,
}

#[derive(Debug, Deserialize)]
pub(crate) struct MountTmpfs {
    pub size: Num<u64>,
    #[serde(flatten)]
    pub unknown: Mapping,
}

/// A service's `tmpfs`: `/path[:options]`, one or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Tmpfs {
    Simple(String),
    List(Vec<String>),
}

#[derive(Debug, Deserialize)]
pub(crate) struct Deploy {
    #[serde(default, deserialize_with = "open_option")]
    pub resources: Option<Resources>,
    #[serde(flatten)]
    pub unknown: Mapping,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Resources {
    #[serde(default, deserialize_with = "open_option")]
    pub limits: Option<Limits>,
    #[serde(flatten)]
    pub unknown: Mapping,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Limits {
    #[serde(default)]
    pub cpus: Option<Text>,
    #[serde(default)]
    pub memory: Option<Text>,
    #[serde(flatten)]
    pub unknown: Mapping,
}

macro_rules! open {
    ($($t:ty),*) => {
        $(impl Open for $t {
            fn unknown(&mut self) -> &mut Mapping {
                &mut self.unknown
            }
        })*
    };
}

open!(
    ComposeFile,
    TopVolume,
    Service,
    DependsCondition,
    Healthcheck,
    LongMount,
    MountVolume,
    MountTmpfs,
    Deploy,
    Resources,
    Limits
);

/// The file as written, interpolated: the model, and the document it was read from (whose key order the
/// refusal of unknown keys follows, and whose services' text the config hash covers).
pub(crate) struct Read {
    pub file: ComposeFile,
    pub doc: Value,
}

/// YAML → interpolation → [`ComposeFile`].
pub(crate) fn read(yaml: &str, vars: &BTreeMap<String, String>) -> Result<Read, Refusal> {
    let mut doc: Value = serde_norway::from_str(yaml).map_err(|e| Refusal::file(format!("not valid YAML: {e}")))?;
    interpolate_document(&mut doc, vars)?;
    if !doc.is_mapping() {
        return Err(Refusal::file("a compose file must be a mapping with a `services` key"));
    }
    let file = open(doc.clone()).map_err(|e| Refusal::file(format!("not a valid compose file: {e}")))?;
    Ok(Read { file, doc })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names of a struct's own fields, from its pretty `Debug` (one field a line, four spaces in).
    fn fields(debug: &str) -> Vec<&str> {
        let mut fields: Vec<&str> = debug
            .lines()
            .filter_map(|l| l.strip_prefix("    "))
            .filter(|l| !l.starts_with(' '))
            .filter_map(|l| l.split_once(':').map(|(k, _)| k))
            .filter(|k| *k != "unknown")
            .collect();
        fields.sort_unstable();
        fields
    }

    #[test]
    fn the_listed_keys_are_the_fields_of_the_model() {
        let svc: Service = serde_norway::from_str("image: x").expect("a service");
        let mut listed = SERVICE_KEYS.to_vec();
        listed.sort_unstable();
        assert_eq!(fields(&format!("{svc:#?}")), listed, "SERVICE_KEYS and the fields of Service");
        let file: ComposeFile = serde_norway::from_str("services: {}").expect("a file");
        let mut listed = TOP_KEYS.to_vec();
        listed.sort_unstable();
        assert_eq!(fields(&format!("{file:#?}")), listed, "TOP_KEYS and the fields of ComposeFile");
    }
}
