#![recursion_limit = "256"]

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use aenv_engine_docker::ConnectOptions;
use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

/// aenv-operator runs short-lived sandbox environments ("env instances") for AI agents on a Docker host or a
/// Kubernetes cluster, behind the AEnvironment REST API: create one with POST /env-instance, read it, list it, delete it; it is
/// removed by itself when its TTL runs out.
#[derive(Parser, Debug)]
#[command(name = "aenv-operator", version, about, long_about = None)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "AENV_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the operator: the store (embedded or Kubernetes), the reconcile loop over the engine (Docker or
    /// Kubernetes), and the REST API.
    Serve(Box<ServeArgs>),
    /// Print the EnvInstance and Environment CRDs as YAML (what crds/ holds), or write one file per CRD.
    Crds {
        /// Write `<crd name>.yaml` files into this directory instead of printing.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    aenv_core::duration::parse_go_duration(s).map_err(|e| e.to_string())
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Directory of the embedded store (created if missing). Instances survive restarts through it; one
    /// operator process at a time may use it.
    #[arg(long, default_value = "./aenv-data", env = "AENV_DATA_DIR")]
    data_dir: PathBuf,
    /// Address of the REST API. Keep it on loopback unless a proxy in front adds authentication.
    #[arg(long, default_value = "127.0.0.1:8080", env = "AENV_API_LISTEN")]
    api_listen: SocketAddr,
    /// Address of the data-plane proxy: requests with an AEnvCore-MCPProxy-URL header are forwarded to that
    /// instance (only to instances this operator runs); the SDK always uses port 8081 of its host.
    #[arg(long, default_value = "127.0.0.1:8081", env = "AENV_PROXY_LISTEN")]
    proxy_listen: SocketAddr,
    /// Docker daemon: unix:///path/to/docker.sock, tcp://host:2375, or tcp://host:2376 with TLS. Default: the
    /// local socket (/var/run/docker.sock, or Docker Desktop's ~/.docker/run/docker.sock).
    #[arg(long, env = "DOCKER_HOST")]
    docker_host: Option<String>,
    /// Directory holding ca.pem, cert.pem and key.pem for a TLS connection to the daemon.
    #[arg(long, env = "DOCKER_CERT_PATH")]
    docker_cert_path: Option<PathBuf>,
    /// Use TLS for a tcp:// daemon (any non-empty value but 0 or false turns it on, as with the Docker CLI).
    #[arg(long, env = "DOCKER_TLS_VERIFY", default_value = "")]
    docker_tls_verify: String,
    /// Docker network instances join.
    #[arg(long, default_value = "bridge")]
    docker_network: String,
    /// What requests may ask of the Docker host, comma-separated: host-network, privileged, bind-mounts,
    /// host-namespaces (pid/ipc host), cap-add, devices, external-networks (join a network the operator did not
    /// create). Default: none of them (sandboxes run untrusted code).
    #[arg(long, value_delimiter = ',')]
    allow: Vec<aenv_engine_docker::Allowance>,
    /// Host address that published ports (deployConfig.ports) bind to, each on an ephemeral port.
    #[arg(long, default_value = "127.0.0.1")]
    publish_host_ip: String,
    /// Grace period between SIGTERM and SIGKILL when an instance is removed (Go duration); 0 kills at once,
    /// which suits sandboxes.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    stop_timeout: Duration,
    /// Labelled containers without an instance are removed by the resync once they are older than this.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    orphan_grace: Duration,
    /// Most processes one container may run (a fork bomb stops there); 0 = no limit.
    #[arg(long, default_value_t = 1024)]
    pids_limit: i64,
    /// Memory limit of instances whose request names none (512Mi, 2Gi, ...); 0 = none.
    #[arg(long, default_value = "2Gi")]
    default_memory: String,
    /// Capabilities containers keep after all are dropped, comma-separated (default: Docker's set without
    /// NET_RAW, MKNOD, AUDIT_WRITE, SETFCAP and SYS_CHROOT).
    #[arg(long, value_delimiter = ',')]
    capabilities: Option<Vec<String>>,
    /// Never pull images: they must be on the Docker host already (an offline or air-gapped host).
    #[arg(long)]
    no_pull: bool,
    /// Refuse compose stacks (deployConfig.composeFile) with a 400.
    #[arg(long)]
    disable_compose: bool,
    /// Bearer tokens, as JSON: {"tokens": [{"token": "...", "owner": "alice", "maxInstances": 20}]}. Requests
    /// then need `Authorization: Bearer <token>`; each caller sees and deletes only its own instances.
    #[arg(long, env = "AENV_TOKENS_FILE")]
    tokens_file: Option<PathBuf>,
    /// Serve a non-loopback --api-listen without --tokens-file (only behind something that authenticates).
    #[arg(long)]
    insecure: bool,
    /// Most live instances in all; creates beyond it get 403.
    #[arg(long)]
    max_instances: Option<usize>,
    /// Most creates per second (429 with Retry-After beyond it); unset = no limit.
    #[arg(long)]
    create_rate: Option<u32>,
    /// Creates allowed in one burst above --create-rate.
    #[arg(long, default_value_t = 50)]
    create_burst: u32,
    /// TTL of instances whose request names none, in Go duration syntax (90s, 30m, 1h30m).
    #[arg(long, default_value = "30m")]
    default_ttl: String,
    /// How often the reconciler lists the daemon's containers to catch changes the event stream missed and to
    /// sweep orphaned containers (one list call per interval).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    resync_interval: Duration,
    /// How many instances are reconciled at once.
    #[arg(long, default_value_t = 32)]
    max_concurrent_reconciles: u16,
    /// Where EnvInstance objects live: `embedded` (redb in --data-dir, one host) or `kubernetes` (custom
    /// resources in the cluster; `kubectl apply -f instance.yaml` works; install the CRDs first).
    #[arg(long, value_enum, default_value_t = StoreArg::Embedded, env = "AENV_STORE")]
    store: StoreArg,
    /// What runs instances: `docker` (containers on a Docker host, see --docker-host) or `kubernetes` (one Pod
    /// per instance in --sandbox-namespace).
    #[arg(long, value_enum, default_value_t = EngineArg::Docker, env = "AENV_ENGINE")]
    engine: EngineArg,
    /// Namespace the REST API creates EnvInstances in (--store kubernetes), and the one watched unless
    /// --all-namespaces.
    #[arg(long, default_value = "default", env = "AENV_NAMESPACE")]
    namespace: String,
    /// Watch EnvInstances in every namespace (needs a ClusterRole) rather than in --namespace only.
    #[arg(long)]
    all_namespaces: bool,
    /// Namespace of the instances' Pods (--engine kubernetes). Default: --namespace. Pods carry an owner
    /// reference to their EnvInstance only when both share a namespace.
    #[arg(long, env = "AENV_SANDBOX_NAMESPACE")]
    sandbox_namespace: Option<String>,
    /// A kubeconfig file. Default: the in-cluster service account, else $KUBECONFIG or ~/.kube/config.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Talk to the API server at this URL, without credentials (`kubectl proxy`, test servers). Overrides
    /// --kubeconfig.
    #[arg(long)]
    kube_api_url: Option<String>,
    /// The id put on every container or Pod as aenv.io/operator-id (--store kubernetes; the embedded store keeps
    /// its own). Default: aenv-operator.<namespace>. Replicas of one deployment share it; two deployments that
    /// share a Docker host or a sandbox namespace must not.
    #[arg(long, env = "AENV_OPERATOR_ID")]
    operator_id: Option<String>,
    /// Elect a leader through a coordination.k8s.io Lease, so that of several replicas only one reconciles
    /// (all serve the REST API). Needs --store kubernetes.
    #[arg(long)]
    leader_elect: bool,
    /// Name of the Lease.
    #[arg(long, default_value = "aenv-operator")]
    leader_elect_lease_name: String,
    /// Namespace of the Lease. Default: --namespace.
    #[arg(long, env = "POD_NAMESPACE")]
    leader_elect_namespace: Option<String>,
    /// This replica's identity in the Lease. Default: $POD_NAME or $HOSTNAME, with a random suffix.
    #[arg(long)]
    leader_elect_identity: Option<String>,
    /// How long the Lease stays valid after its last renewal (whole seconds); a new leader takes over at most
    /// this long after the old one vanished.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    leader_elect_lease_duration: Duration,
    /// How long before expiry the leader renews (whole seconds); also the clock skew tolerated between nodes.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    leader_elect_renew_grace: Duration,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum StoreArg {
    Embedded,
    Kubernetes,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum EngineArg {
    Docker,
    Kubernetes,
}

fn leader_identity(explicit: Option<String>) -> String {
    explicit.unwrap_or_else(|| {
        let host =
            std::env::var("POD_NAME").or_else(|_| std::env::var("HOSTNAME")).unwrap_or_else(|_| "aenv-operator".into());
        format!("{host}-{}", aenv_operator::store::random_suffix(5))
    })
}

fn truthy(s: &str) -> bool {
    !matches!(s.trim().to_ascii_lowercase().as_str(), "" | "0" | "false" | "no")
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

fn print_crds(out_dir: Option<PathBuf>) -> Result<(), String> {
    let Some(dir) = out_dir else {
        print!("{}", aenv_operator::crds::render().map_err(|e| e.to_string())?);
        return Ok(());
    };
    for (file, yaml) in aenv_operator::crds::files().map_err(|e| e.to_string())? {
        let path = dir.join(file);
        std::fs::write(&path, yaml).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match cli.log_format {
        LogFormat::Text => subscriber.init(),
        LogFormat::Json => subscriber.json().init(),
    }
    match cli.command {
        Command::Crds { out_dir } => match print_crds(out_dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("aenv-operator: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Serve(args) => {
            let args = *args;
            let default_memory = match args.default_memory.trim() {
                "0" | "" => 0,
                m => match aenv_core::quantity::parse_memory_bytes(m) {
                    Ok(b) => b,
                    Err(e) => {
                        eprintln!("aenv-operator: --default-memory: {e}");
                        return ExitCode::FAILURE;
                    }
                },
            };
            let config = aenv_operator::Config {
                data_dir: args.data_dir,
                api_listen: args.api_listen,
                proxy_listen: args.proxy_listen,
                docker: ConnectOptions {
                    host: args.docker_host.filter(|h| !h.is_empty()),
                    cert_path: args.docker_cert_path,
                    tls_verify: truthy(&args.docker_tls_verify),
                    timeout_secs: 120,
                },
                docker_network: args.docker_network,
                docker_policy: aenv_engine_docker::Policy::allowing(args.allow),
                publish_host_ip: args.publish_host_ip,
                stop_timeout: args.stop_timeout,
                orphan_grace: args.orphan_grace,
                hardening: aenv_engine_docker::Hardening {
                    pids_limit: args.pids_limit,
                    default_memory: default_memory as i64,
                    capabilities: args.capabilities.unwrap_or_else(|| {
                        aenv_engine_docker::DEFAULT_CAPABILITIES.iter().map(|c| c.to_string()).collect()
                    }),
                },
                no_pull: args.no_pull,
                disable_compose: args.disable_compose,
                tokens_file: args.tokens_file,
                insecure: args.insecure,
                limits: aenv_operator::gateway::guard::Limits {
                    max_instances: args.max_instances,
                    create_rate: args.create_rate,
                    create_burst: args.create_burst,
                },
                default_ttl: args.default_ttl,
                resync_interval: args.resync_interval,
                max_concurrent_reconciles: args.max_concurrent_reconciles.max(1),
                store: match args.store {
                    StoreArg::Embedded => aenv_operator::StoreKind::Embedded,
                    StoreArg::Kubernetes => aenv_operator::StoreKind::Kubernetes,
                },
                engine: match args.engine {
                    EngineArg::Docker => aenv_operator::EngineKind::Docker,
                    EngineArg::Kubernetes => aenv_operator::EngineKind::Kubernetes,
                },
                kube: aenv_operator::KubeOptions {
                    api_url: args.kube_api_url.filter(|u| !u.is_empty()),
                    kubeconfig: args.kubeconfig,
                    leader_election: args.leader_elect.then(|| aenv_operator::leader::LeaderElection {
                        lease_name: args.leader_elect_lease_name,
                        namespace: args.leader_elect_namespace.clone().unwrap_or_else(|| args.namespace.clone()),
                        identity: leader_identity(args.leader_elect_identity),
                        lease_duration: args.leader_elect_lease_duration,
                        renew_grace: args.leader_elect_renew_grace,
                    }),
                    namespace: args.namespace,
                    all_namespaces: args.all_namespaces,
                    sandbox_namespace: args.sandbox_namespace.filter(|n| !n.is_empty()),
                    operator_id: args.operator_id.filter(|i| !i.is_empty()),
                },
            };
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("aenv-operator: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(aenv_operator::serve(config, shutdown_signal())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("aenv-operator: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
