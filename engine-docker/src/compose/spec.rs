//! What the runner creates for a stack: the checked, converted form of a compose file ([`StackSpec`]), every value
//! in the form the Docker API takes. `run.rs` and `status.rs` read it; `convert.rs` makes it.

use std::collections::BTreeMap;

use bollard::models::{DeviceMapping, HealthConfig};

/// A checked stack, ready to run.
#[derive(Clone, Debug, PartialEq)]
pub struct StackSpec {
    /// Services in file order.
    pub services: Vec<ServiceSpec>,
    /// Named volumes declared at the top level (created per stack as `<instance>_<name>`).
    pub volumes: Vec<VolumeSpec>,
    /// The main service's name.
    pub main: String,
}

impl StackSpec {
    /// The service of that name.
    pub fn service(&self, name: &str) -> Option<&ServiceSpec> {
        self.services.iter().find(|s| s.name == name)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeSpec {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

/// A `depends_on` condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Condition {
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
pub struct Dependency {
    pub service: String,
    pub condition: Condition,
    /// `required: false`: a dependency that fails is logged and the service starts anyway.
    pub required: bool,
}

/// A port to publish on the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortPublish {
    pub container_port: u16,
    pub protocol: String,
    /// `None`: the operator's publish address (`--publish-host-ip`).
    pub host_ip: Option<String>,
    /// `None`: an ephemeral port chosen by Docker.
    pub host_port: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MountSpec {
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
pub struct ServiceSpec {
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
