//! The configuration of `aenv-operator serve`: argument groups (API, Docker, Kubernetes, limits, loop) that clap
//! fills from flags and environment variables, and that the rest of the process reads as they are. Durations and
//! quantities are parsed once, here.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use aenv_engine_docker::{Allowance, ConnectOptions, DockerEngineConfig, Hardening, Policy, Registries};
use clap::{Args, ValueEnum};

use crate::{
    controller::{LoopConfig, leader::LeaderElection, pools::PoolConfig},
    http::server::ConnLimits,
    usecase::{DefaultTtl, Limits},
};

/// Everything `serve` needs.
#[derive(Args, Clone, Debug)]
pub struct Config {
    /// Directory of the embedded store (created if missing). Instances survive restarts through it; one
    /// operator process at a time may use it.
    #[arg(long, default_value = "./aenv-data", env = "AENV_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Where EnvInstance objects live: `embedded` (redb in --data-dir, one host) or `kubernetes` (custom
    /// resources in the cluster; `kubectl apply -f instance.yaml` works; install the CRDs first).
    #[arg(long, value_enum, default_value_t = StoreKind::Embedded, env = "AENV_STORE")]
    pub store: StoreKind,
    /// What runs instances: `docker` (containers on a Docker host, see --docker-host), `kubernetes` (one Pod
    /// per instance in --sandbox-namespace) or `swarm` (one single-replica service per instance on the Docker Swarm
    /// whose manager --docker-host names; docs/swarm.md).
    #[arg(long, value_enum, default_value_t = EngineKind::Docker, env = "AENV_ENGINE")]
    pub engine: EngineKind,
    #[command(flatten, next_help_heading = "REST API")]
    pub api: ApiArgs,
    #[command(flatten, next_help_heading = "Docker engine")]
    pub docker: DockerArgs,
    #[command(flatten, next_help_heading = "Docker Swarm engine")]
    pub swarm: SwarmArgs,
    #[command(flatten, next_help_heading = "Kubernetes")]
    pub kube: KubeArgs,
    #[command(flatten, next_help_heading = "Limits")]
    pub limits: Limits,
    #[command(flatten, next_help_heading = "Reconcile loop")]
    pub reconcile: ReconcileArgs,
    #[command(flatten, next_help_heading = "Warm pools")]
    pub pools: PoolArgs,
    /// A service replica (Docker engine) not ready this long after it was made (its readiness probe keeps
    /// failing) is removed and replaced, with the reason in the service's lastError. A service's own
    /// `readyTimeoutSeconds` (`ready_timeout_seconds` at create) overrides it.
    #[arg(long, default_value = "5m", value_parser = parse_duration, help_heading = "Services")]
    pub service_ready_timeout: std::time::Duration,
}

/// Where objects live.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    /// redb on local disk (`--data-dir`): one host, no Kubernetes.
    #[default]
    Embedded,
    /// Custom resources in a Kubernetes API server.
    Kubernetes,
}

/// What runs instances.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum EngineKind {
    /// Containers on a Docker host.
    #[default]
    Docker,
    /// Pods in a sandbox namespace.
    Kubernetes,
    /// Single-replica services on a Docker Swarm (the --docker-* flags name a manager and the sandbox defaults).
    Swarm,
}

/// The Swarm engine (`--engine swarm`); the Docker engine's flags (--docker-host, --allow, the sandbox defaults)
/// apply too.
#[derive(Args, Clone, Debug)]
pub struct SwarmArgs {
    /// The attachable overlay network instances join (made on first use; an existing one is used as it is). With
    /// --tokens-file each owner's instances join an overlay of their own instead.
    #[arg(long, default_value = "aenv-sandboxes", env = "AENV_SWARM_NETWORK")]
    pub swarm_network: String,
    /// How the probe and the data-plane proxy reach instances: `published` (each instance publishes its probe
    /// port and requested ports in Swarm's host mode on its node, dialled at <node address>:<port>; the operator
    /// may run anywhere that reaches the nodes) or `overlay` (the operator runs in a container attached to the
    /// overlay networks and dials instances' addresses there; nothing is published but requested ports).
    #[arg(long, value_enum, default_value_t = SwarmReach::Published, env = "AENV_SWARM_REACH")]
    pub swarm_reach: SwarmReach,
}

/// See [`SwarmArgs::swarm_reach`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum SwarmReach {
    #[default]
    Published,
    Overlay,
}

impl SwarmArgs {
    /// The Swarm engine's configuration over the Docker engine's.
    pub fn engine_config(&self, docker: DockerEngineConfig) -> aenv_engine_swarm::SwarmEngineConfig {
        aenv_engine_swarm::SwarmEngineConfig {
            network: self.swarm_network.clone(),
            reach: match self.swarm_reach {
                SwarmReach::Published => aenv_engine_swarm::Reach::Published,
                SwarmReach::Overlay => aenv_engine_swarm::Reach::Overlay,
            },
            ..aenv_engine_swarm::SwarmEngineConfig::new(docker)
        }
    }
}

/// The REST API and the data-plane proxy.
#[derive(Args, Clone, Debug)]
pub struct ApiArgs {
    /// Address of the REST API. Keep it on loopback unless a proxy in front adds authentication.
    #[arg(long, default_value = "127.0.0.1:8080", env = "AENV_API_LISTEN")]
    pub api_listen: SocketAddr,
    /// Address of the data-plane proxy: requests with an AEnvCore-MCPProxy-URL header are forwarded to that
    /// instance (only to instances this operator runs); the SDK always uses port 8081 of its host.
    #[arg(long, default_value = "127.0.0.1:8081", env = "AENV_PROXY_LISTEN")]
    pub proxy_listen: SocketAddr,
    /// Bearer tokens, as JSON: {"tokens": [{"token": "...", "owner": "alice", "maxInstances": 20}]}. Requests
    /// then need `Authorization: Bearer <token>`; each caller sees and deletes only its own instances, and on the
    /// Docker engine its sandboxes join networks of their own (no traffic between owners).
    #[arg(long, env = "AENV_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,
    /// Serve a non-loopback --api-listen without --tokens-file (only behind something that authenticates).
    #[arg(long)]
    pub insecure: bool,
    /// Make the data-plane proxy require a token of --tokens-file (`Authorization: Bearer <token>`) and forward
    /// only to the caller's own instances. Without it the proxy reaches any instance of this operator, as
    /// upstream. Either way the token is never forwarded into the sandbox. The Python SDK 0.1.7 sends no token on
    /// data-plane calls: leave this off for its `Environment` (health checks and tools would get 401).
    #[arg(long, env = "AENV_PROXY_AUTH")]
    pub proxy_auth: bool,
    /// TTL of instances whose request names none, in Go duration syntax (90s, 30m, 1h30m).
    #[arg(long, default_value = "30m")]
    pub default_ttl: DefaultTtl,
    /// How long `POST /env-instance` waits before it answers: until the new instance is Running and its
    /// readiness probe passed (or it failed), at most this long (Go duration). The SDK then finds a server at its
    /// first request instead of sleeping 2 s between polls; `0` answers at once with `Pending`, as upstream does.
    /// Pool claims answer at once either way.
    #[arg(long, default_value = "10s", value_parser = parse_duration, env = "AENV_CREATE_WAIT")]
    pub create_wait: Duration,
    /// Time a client has to send a whole request head, on a new connection and again between requests on a
    /// kept-alive one (Go duration); slower connections are closed. Applies to the API and the proxy.
    #[arg(long, default_value = "10s", value_parser = parse_duration, env = "AENV_HEADER_READ_TIMEOUT")]
    pub header_read_timeout: Duration,
    /// A connection on which no byte moved for this long is closed, a silent stream (logs, SSE) included (Go
    /// duration; 0 = never). Applies to the API and the proxy.
    #[arg(long, default_value = "5m", value_parser = parse_duration, env = "AENV_IDLE_TIMEOUT")]
    pub idle_timeout: Duration,
    /// Most open connections on each listener (the API and the proxy each). Held to a quarter of the open-file
    /// limit (ulimit -n), so that clients cannot use up the descriptors the Docker client and the store need.
    /// Connections beyond it get a 503 and are closed at once.
    #[arg(long, default_value_t = 1024, env = "AENV_MAX_CONNECTIONS")]
    pub max_connections: usize,
    /// Most open connections from one client address on each listener; beyond it, a 503 and the connection is
    /// closed at once.
    #[arg(long, default_value_t = 128, env = "AENV_MAX_CONNECTIONS_PER_IP")]
    pub max_connections_per_ip: usize,
}

impl ApiArgs {
    /// The bounds of each listener, checked; `budget` is the most connections one listener may hold (a share of
    /// the open-file limit).
    pub fn conn_limits(&self, listener: &str, budget: usize) -> Result<ConnLimits, String> {
        if self.header_read_timeout.is_zero() {
            return Err("--header-read-timeout must be longer than zero (such as 10s)".into());
        }
        if self.max_connections == 0 || self.max_connections_per_ip == 0 {
            return Err("--max-connections and --max-connections-per-ip must be at least 1".into());
        }
        let limits = ConnLimits {
            header_read_timeout: self.header_read_timeout,
            idle_timeout: (!self.idle_timeout.is_zero()).then_some(self.idle_timeout),
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
        };
        Ok(limits.within_budget(listener, budget))
    }
}

/// The Docker engine: the daemon, the network, what requests may ask of the host, and the sandbox defaults.
#[derive(Args, Clone, Debug)]
pub struct DockerArgs {
    /// Docker daemon: unix:///path/to/docker.sock, tcp://host:2375, or tcp://host:2376 with TLS. Default: the
    /// local socket (/var/run/docker.sock, or Docker Desktop's ~/.docker/run/docker.sock).
    #[arg(long, env = "DOCKER_HOST")]
    pub docker_host: Option<String>,
    /// Directory holding ca.pem, cert.pem and key.pem for a TLS connection to the daemon.
    #[arg(long, env = "DOCKER_CERT_PATH")]
    pub docker_cert_path: Option<PathBuf>,
    /// Use TLS for a tcp:// daemon (any non-empty value but 0 or false turns it on, as with the Docker CLI).
    #[arg(long, env = "DOCKER_TLS_VERIFY", default_value = "", value_parser = parse_truthy, action = clap::ArgAction::Set)]
    pub docker_tls_verify: bool,
    /// Docker network instances join.
    #[arg(long, default_value = "bridge")]
    pub docker_network: String,
    /// What requests may ask of the Docker host, comma-separated: host-network, privileged, bind-mounts,
    /// host-namespaces (pid/ipc host), cap-add, devices, external-networks (join a network the operator did not
    /// create), host-ports (a compose port with a fixed host port or a host IP other than --publish-host-ip).
    /// Default: none of them (sandboxes run untrusted code).
    #[arg(long, value_delimiter = ',')]
    pub allow: Vec<Allowance>,
    /// Host address that published ports bind to, each on an ephemeral port: deployConfig.ports, and a compose
    /// service's ports (a fixed host port or another address there needs --allow host-ports).
    #[arg(long, default_value = "127.0.0.1")]
    pub publish_host_ip: String,
    /// Registries images may be pulled from although they are loopback, link-local or private IP literals or
    /// localhost (refused by default: a pull makes the daemon connect there), comma-separated: host, host:port,
    /// or *.domain. Other registries are not restricted by this flag.
    #[arg(long, value_delimiter = ',', env = "AENV_REGISTRY_ALLOW")]
    pub registry_allow: Vec<String>,
    /// Grace period between SIGTERM and SIGKILL when an instance is removed (Go duration; also the Pods' grace
    /// period on Kubernetes); 0 kills at once, which suits sandboxes.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub stop_timeout: Duration,
    /// Most processes one container may run (a fork bomb stops there); 0 = no limit.
    #[arg(long, default_value_t = 1024)]
    pub pids_limit: i64,
    /// Memory limit of instances whose request names none (512Mi, 2Gi, ...); 0 = none.
    #[arg(long, default_value = "2Gi", value_parser = parse_memory)]
    pub default_memory: u64,
    /// Capabilities containers keep after all are dropped, comma-separated (default: Docker's set without
    /// NET_RAW, MKNOD, AUDIT_WRITE, SETFCAP and SYS_CHROOT).
    #[arg(long, value_delimiter = ',')]
    pub capabilities: Option<Vec<String>>,
    /// Never pull images: they must be on the Docker host already (an offline or air-gapped host).
    #[arg(long)]
    pub no_pull: bool,
    /// Refuse compose stacks (deployConfig.composeFile) with a 400.
    #[arg(long)]
    pub disable_compose: bool,
}

impl DockerArgs {
    /// How to reach the daemon.
    pub fn connect_options(&self) -> ConnectOptions {
        ConnectOptions {
            host: self.docker_host.clone().filter(|h| !h.is_empty()),
            cert_path: self.docker_cert_path.clone(),
            tls_verify: self.docker_tls_verify,
            timeout_secs: 120,
        }
    }

    /// The engine's configuration for the operator `operator_id`.
    pub fn engine_config(&self, operator_id: &str) -> DockerEngineConfig {
        let defaults = Hardening::default();
        DockerEngineConfig {
            network: self.docker_network.clone(),
            host_display: self.connect_options().display_host(),
            policy: Policy::allowing(self.allow.iter().copied())
                .publishing_on(self.publish_host_ip.clone())
                .with_registries(Registries::allowing(self.registry_allow.iter().cloned())),
            stop_timeout: self.stop_timeout,
            hardening: Hardening {
                pids_limit: self.pids_limit,
                default_memory: i64::try_from(self.default_memory).unwrap_or(i64::MAX),
                capabilities: self.capabilities.clone().unwrap_or(defaults.capabilities),
            },
            no_pull: self.no_pull,
            compose: !self.disable_compose,
            ..DockerEngineConfig::new(operator_id)
        }
    }
}

/// Knobs of the reconcile loop.
#[derive(Args, Clone, Debug)]
pub struct ReconcileArgs {
    /// How often the reconciler lists the daemon's containers to catch changes the event stream missed and to
    /// sweep orphaned containers (one list call per interval).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub resync_interval: Duration,
    /// How many instances are reconciled at once (at least 1).
    #[arg(long, default_value_t = 32)]
    pub max_concurrent_reconciles: u16,
    /// Labelled containers without an instance are removed by the resync once they are older than this; and
    /// whatever any operator labelled (another operator id, a lost store) once its aenv.io/expire-at passed by
    /// more than this; and this operator's snapshot images that no template owns once they are older than this.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub orphan_grace: Duration,
}

impl ReconcileArgs {
    /// The loop's configuration.
    pub fn config(&self) -> LoopConfig {
        LoopConfig {
            resync_interval: self.resync_interval,
            max_concurrent_reconciles: self.max_concurrent_reconciles,
            orphan_grace: self.orphan_grace,
        }
    }
}

/// Knobs of the pool controller.
#[derive(Args, Clone, Debug)]
pub struct PoolArgs {
    /// How many pooled sandboxes (of all pools) may be starting at once. Refill runs at the daemon's pace
    /// within this cap; while instances that users asked for are being created, only one is.
    #[arg(long, default_value_t = 4)]
    pub pool_max_starting: u32,
    /// A pooled sandbox not ready this long after it was made (its readiness probe keeps failing) is replaced.
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    pub pool_ready_timeout: Duration,
    /// How long a create that a pool could serve counts as demand: between `replicas` and `maxReplicas`, a pool
    /// keeps `replicas` plus the creates of this window waiting, and shrinks back when they age out.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub pool_demand_window: Duration,
}

impl PoolArgs {
    /// The pool controller's configuration.
    pub fn config(&self) -> PoolConfig {
        PoolConfig {
            pool_max_starting: self.pool_max_starting,
            pool_ready_timeout: self.pool_ready_timeout,
            pool_demand_window: self.pool_demand_window,
        }
    }
}

/// The Kubernetes side (used when the store or the engine is `kubernetes`).
#[derive(Args, Clone, Debug, Default)]
pub struct KubeArgs {
    /// Namespace the REST API creates EnvInstances in (--store kubernetes), and the one watched unless
    /// --all-namespaces.
    #[arg(long, default_value = "default", env = "AENV_NAMESPACE")]
    pub namespace: String,
    /// Watch EnvInstances in every namespace (needs a ClusterRole) rather than in --namespace only.
    #[arg(long)]
    pub all_namespaces: bool,
    /// Namespace of the instances' Pods (--engine kubernetes). Default: --namespace. Pods carry an owner
    /// reference to their EnvInstance only when both share a namespace.
    #[arg(long, env = "AENV_SANDBOX_NAMESPACE")]
    pub sandbox_namespace: Option<String>,
    /// The cluster's DNS suffix of Services (--engine kubernetes): an EnvService's `service_url` is
    /// `http://<name>.<sandbox namespace>.<suffix>:<port>`. AEnvironment's SERVICE_DOMAIN_SUFFIX.
    #[arg(long, default_value = "svc.cluster.local", env = "SERVICE_DOMAIN_SUFFIX")]
    pub service_domain_suffix: String,
    /// A kubeconfig file. Default: the in-cluster service account, else $KUBECONFIG or ~/.kube/config.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Talk to the API server at this URL, without credentials (`kubectl proxy`, test servers). Overrides
    /// --kubeconfig.
    #[arg(long)]
    pub kube_api_url: Option<String>,
    /// The id put on every container or Pod as aenv.io/operator-id (--store kubernetes; the embedded store keeps
    /// its own, and refuses another). Default: aenv-operator.<namespace>. Replicas of one deployment share it; two deployments that
    /// share a Docker host or a sandbox namespace must not.
    #[arg(long, env = "AENV_OPERATOR_ID")]
    pub operator_id: Option<String>,
    #[command(flatten)]
    pub leader: LeaderArgs,
}

impl KubeArgs {
    /// The namespace of the Pods: --sandbox-namespace, else --namespace.
    pub fn sandbox_namespace(&self) -> &str {
        self.sandbox_namespace.as_deref().filter(|n| !n.is_empty()).unwrap_or(&self.namespace)
    }

    /// The API server URL given on the command line, if any.
    pub fn api_url(&self) -> Option<&str> {
        self.kube_api_url.as_deref().filter(|u| !u.is_empty())
    }

    /// The election the command line asks for: the Lease in --leader-elect-namespace (else --namespace), this
    /// replica named by --leader-elect-identity (else $POD_NAME or $HOSTNAME with a random suffix).
    pub fn leader_election(&self) -> LeaderElection {
        let args = &self.leader;
        let identity = args.leader_elect_identity.clone().unwrap_or_else(|| {
            let host = std::env::var("POD_NAME")
                .or_else(|_| std::env::var("HOSTNAME"))
                .unwrap_or_else(|_| "aenv-operator".into());
            format!("{host}-{}", crate::store::random_suffix(5))
        });
        LeaderElection {
            lease_name: args.leader_elect_lease_name.clone(),
            namespace: args.leader_elect_namespace.clone().unwrap_or_else(|| self.namespace.clone()),
            identity,
            lease_duration: args.leader_elect_lease_duration,
            renew_grace: args.leader_elect_renew_grace,
        }
    }
}

/// Leader election among replicas (--store kubernetes).
#[derive(Args, Clone, Debug, Default)]
pub struct LeaderArgs {
    /// Elect a leader through a coordination.k8s.io Lease, so that of several replicas only one reconciles and
    /// serves the writes that take quota (followers forward them to it: see --advertise-url); all serve the REST
    /// API's reads. Needs --store kubernetes.
    #[arg(long)]
    pub leader_elect: bool,
    /// Name of the Lease.
    #[arg(long, default_value = "aenv-operator")]
    pub leader_elect_lease_name: String,
    /// Namespace of the Lease. Default: --namespace.
    #[arg(long, env = "POD_NAMESPACE")]
    pub leader_elect_namespace: Option<String>,
    /// This replica's identity in the Lease. Default: $POD_NAME or $HOSTNAME, with a random suffix.
    #[arg(long)]
    pub leader_elect_identity: Option<String>,
    /// How long the Lease stays valid after its last renewal (whole seconds); a new leader takes over at most
    /// this long after the old one vanished.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub leader_elect_lease_duration: Duration,
    /// How long before expiry the leader renews (whole seconds); also the clock skew tolerated between nodes.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub leader_elect_renew_grace: Duration,
    /// The URL at which the other replicas reach this replica's REST API (http://host:port). The leader publishes
    /// it on the Lease; followers forward to it the writes that take quota (creates, pools, services, resizes,
    /// snapshots, forks) and those of what they read or count (templates, deletions), so that owners' caps,
    /// --max-instances, --create-rate and pool demand hold across replicas. Default: http://$POD_IP:<API port> when POD_IP is set (the chart sets it), else the
    /// --api-listen address when it names one address (not 0.0.0.0).
    #[arg(long, env = "AENV_ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// How long a follower waits for the leader's whole answer to a forwarded write (Go duration). Past it the
    /// caller gets a 504 (the leader may have served it). Raise it when snapshots or forks of large sandboxes take
    /// longer.
    #[arg(long, default_value = "60s", value_parser = parse_duration, env = "AENV_FORWARD_TIMEOUT")]
    pub forward_timeout: Duration,
}

impl LeaderArgs {
    /// The URL the other replicas reach this one's API at, for an API listening on `listening`: --advertise-url,
    /// else from `pod_ip` ($POD_IP), else the listening address when it is a specific one.
    pub fn advertised_url(&self, listening: SocketAddr, pod_ip: Option<&str>) -> Result<String, String> {
        if let Some(url) = self.advertise_url.as_deref().filter(|u| !u.trim().is_empty()) {
            let url = url.trim().trim_end_matches('/');
            let parsed: Result<warp::http::Uri, _> = url.parse();
            return match parsed {
                Ok(u) if u.scheme_str() == Some("http") && u.host().is_some() && u.path() == "/" => Ok(url.to_string()),
                _ => Err(format!("--advertise-url {url:?} must be http://host:port (no path)")),
            };
        }
        if let Some(ip) = pod_ip.map(str::trim).filter(|ip| !ip.is_empty()) {
            let ip: std::net::IpAddr = ip.parse().map_err(|e| format!("POD_IP {ip:?} is not an IP address: {e}"))?;
            return Ok(format!("http://{}", SocketAddr::new(ip, listening.port())));
        }
        if listening.ip().is_unspecified() {
            return Err(format!(
                "--leader-elect needs the address the other replicas reach this one's REST API at (followers forward creates to the leader): --api-listen {listening} names none; give --advertise-url http://<this replica's address>:{} or set POD_IP",
                listening.port()
            ));
        }
        Ok(format!("http://{listening}"))
    }
}

/// A Go duration (`90s`, `30m`, `1h30m`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    aenv_core::duration::parse_go_duration(s).map_err(|e| e.to_string())
}

/// A memory quantity in bytes; `0` or nothing is none.
fn parse_memory(s: &str) -> Result<u64, String> {
    match s.trim() {
        "0" | "" => Ok(0),
        m => aenv_core::quantity::parse_memory_bytes(m).map_err(|e| e.to_string()),
    }
}

/// As the Docker CLI reads DOCKER_TLS_VERIFY: anything but empty, 0, false or no is on.
fn parse_truthy(s: &str) -> Result<bool, String> {
    Ok(!matches!(s.trim().to_ascii_lowercase().as_str(), "" | "0" | "false" | "no"))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: Config,
    }

    #[test]
    fn flags_land_in_their_groups_parsed_once() {
        let cli = Cli::try_parse_from([
            "aenv-operator",
            "--default-ttl",
            "1h30m",
            "--docker-network",
            "sandboxes",
            "--default-memory",
            "512Mi",
            "--allow",
            "host-network,privileged",
            "--create-rate",
            "5",
            "--resync-interval",
            "2s",
            "--leader-elect",
        ])
        .unwrap();
        let c = cli.config;
        assert_eq!(c.api.default_ttl.as_str(), "1h30m");
        assert_eq!(c.docker.default_memory, 512 << 20);
        assert_eq!(c.docker.engine_config("op").network, "sandboxes");
        assert!(c.docker.engine_config("op").policy.allows(Allowance::Privileged));
        assert_eq!(c.limits.create_rate, Some(5));
        assert_eq!(c.limits.create_burst, 50);
        assert_eq!(c.reconcile.resync_interval, Duration::from_secs(2));
        assert_eq!(c.reconcile.max_concurrent_reconciles, 32);
        assert!(c.kube.leader.leader_elect);
        assert_eq!(c.kube.sandbox_namespace(), "default");
        assert_eq!(c.kube.leader.forward_timeout, Duration::from_secs(60));
    }

    #[test]
    fn the_advertised_url_comes_from_the_flag_the_pod_ip_or_a_specific_listen_address() {
        let leader = |url: Option<&str>| LeaderArgs { advertise_url: url.map(String::from), ..Default::default() };
        let any: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let lo: SocketAddr = "127.0.0.1:41234".parse().unwrap();
        assert_eq!(leader(Some("http://10.0.0.7:8080/")).advertised_url(any, None).unwrap(), "http://10.0.0.7:8080");
        assert_eq!(leader(None).advertised_url(any, Some("10.1.2.3")).unwrap(), "http://10.1.2.3:8080");
        assert_eq!(leader(None).advertised_url(any, Some("fd00::5")).unwrap(), "http://[fd00::5]:8080");
        assert_eq!(leader(None).advertised_url(lo, None).unwrap(), "http://127.0.0.1:41234");
        let e = leader(None).advertised_url(any, None).unwrap_err();
        assert!(e.contains("--advertise-url") && e.contains("POD_IP"), "{e}");
        for bad in ["10.0.0.7:8080", "https://a:1", "http://a:1/api"] {
            assert!(leader(Some(bad)).advertised_url(any, None).unwrap_err().contains("--advertise-url"), "{bad}");
        }
        assert!(leader(None).advertised_url(any, Some("pod")).unwrap_err().contains("POD_IP"));
    }

    #[test]
    fn bad_values_are_refused_by_flag() {
        for (flag, value) in [("--default-ttl", "forever"), ("--default-ttl", "0s"), ("--default-memory", "512m")] {
            let err = Cli::try_parse_from(["aenv-operator", flag, value]).err().expect(value);
            assert!(err.to_string().contains(flag), "{flag} {value}: {err}");
        }
        let tls = |v: &str| Cli::try_parse_from(["aenv-operator", "--docker-tls-verify", v]).unwrap().config;
        assert!(tls("1").docker.docker_tls_verify && !tls("0").docker.docker_tls_verify);
        assert!(!tls("").docker.docker_tls_verify && !tls("false").docker.docker_tls_verify);
    }
}
