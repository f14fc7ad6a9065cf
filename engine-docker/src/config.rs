//! How the Docker engine runs containers: its configuration and the sandbox defaults ([`Hardening`]) every
//! container gets.

use std::time::Duration;

use bollard::models::HostConfig;

use crate::Policy;

/// How the engine runs containers.
#[derive(Clone, Debug)]
pub struct DockerEngineConfig {
    /// The operator's stable id, put on every container as `aenv.io/operator-id`.
    pub operator_id: String,
    /// Network containers join (`bridge` by default).
    pub network: String,
    /// The daemon's address, for messages.
    pub host_display: String,
    /// What requests may ask of the host.
    pub policy: Policy,
    /// Grace period between SIGTERM and SIGKILL when an instance is removed; zero kills at once.
    pub stop_timeout: Duration,
    /// Safe defaults every container gets (requests cannot change them).
    pub hardening: Hardening,
    /// Never pull: images must be on the host (an offline or air-gapped host).
    pub no_pull: bool,
    /// Whether compose stacks (`composeFile`) may run.
    pub compose: bool,
    /// Tenancy: the single containers of an instance with an owner go on the owner's own network, and a network
    /// the spec names is scoped to its owner ([`crate::network::owner_scoped`]). On when the API has tokens.
    pub owner_networks: bool,
    /// Where running execs are journalled, so that a restarted operator kills those that outlived their timeout
    /// while it was down (see the `kill` module). `None`: not journalled.
    pub exec_journal: Option<std::path::PathBuf>,
}

/// The defaults that make a container fit for untrusted code. The operator's flags may change them; a request
/// may not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hardening {
    /// Most processes a container may run (fork bombs stop there). 0 = no limit.
    pub pids_limit: i64,
    /// Memory limit for requests that name none, in bytes. 0 = none.
    pub default_memory: i64,
    /// Capabilities kept after dropping all; see [`DEFAULT_CAPABILITIES`].
    pub capabilities: Vec<String>,
}

/// The capabilities sandboxes keep: Docker's default set without `NET_RAW` (raw sockets, packet spoofing),
/// `MKNOD` (device nodes), `AUDIT_WRITE`, `SETFCAP` and `SYS_CHROOT`.
pub const DEFAULT_CAPABILITIES: &[&str] =
    &["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "SETPCAP", "NET_BIND_SERVICE"];

impl Default for Hardening {
    fn default() -> Self {
        Hardening {
            pids_limit: 1024,
            default_memory: 2 << 30,
            capabilities: DEFAULT_CAPABILITIES.iter().map(|c| c.to_string()).collect(),
        }
    }
}

impl Hardening {
    /// Applies the defaults to a container's host config.
    pub fn apply(&self, host: &mut HostConfig) {
        host.privileged = Some(false);
        host.security_opt = Some(vec!["no-new-privileges:true".into()]);
        host.cap_drop = Some(vec!["ALL".into()]);
        host.cap_add = Some(self.capabilities.clone());
        if self.pids_limit > 0 {
            host.pids_limit = Some(self.pids_limit);
        }
        if host.memory.is_none() && self.default_memory > 0 {
            host.memory = Some(self.default_memory);
            host.memory_swap = Some(self.default_memory);
        }
    }
}

impl DockerEngineConfig {
    /// Defaults for everything but the operator id: the `bridge` network, the local socket, nothing allowed,
    /// ports published on loopback, immediate kill.
    pub fn new(operator_id: impl Into<String>) -> Self {
        DockerEngineConfig {
            operator_id: operator_id.into(),
            network: "bridge".into(),
            host_display: "unix:///var/run/docker.sock".into(),
            policy: Policy::default(),
            stop_timeout: Duration::ZERO,
            hardening: Hardening::default(),
            no_pull: false,
            compose: true,
            owner_networks: false,
            exec_journal: None,
        }
    }
}
