//! aenv-operator: short-lived sandbox environments for AI agents, run on Docker or Kubernetes in the style of a
//! Kubernetes operator, behind the AEnvironment REST API.
//!
//! The binary's rooms: [`store`] (the embedded and Kubernetes stores), [`reconciler`] (the reconcile loop),
//! [`leader`] (leader election), [`gateway`] (the REST API), [`metrics`], and [`serve`], which wires them
//! together: [`open_store`] picks the store, [`open_engine`] the engine.

#![recursion_limit = "256"]

pub mod crds;
mod error;
pub mod gateway;
pub mod leader;
pub mod metrics;
pub mod reconciler;
pub mod store;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use aenv_core::{Engine, EnvInstance};
use aenv_engine_docker::{ConnectOptions, DockerEngine, DockerEngineConfig};
use aenv_engine_k8s::{KubeEngine, KubeEngineConfig};
pub use error::Error;
use futures::FutureExt;
use tracing::info;

/// Where objects live.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StoreKind {
    /// redb on local disk (`--data-dir`): one host, no Kubernetes.
    #[default]
    Embedded,
    /// Custom resources in a Kubernetes API server.
    Kubernetes,
}

/// What runs instances.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EngineKind {
    /// Containers on a Docker host.
    #[default]
    Docker,
    /// Pods in a sandbox namespace.
    Kubernetes,
}

/// The Kubernetes side of the configuration (used when the store or the engine is `kubernetes`).
#[derive(Clone, Debug, Default)]
pub struct KubeOptions {
    /// API server URL without credentials (tests, `kubectl proxy`); else `kubeconfig`, else in-cluster or
    /// `$KUBECONFIG` / `~/.kube/config` (kube's `Config::infer`).
    pub api_url: Option<String>,
    pub kubeconfig: Option<PathBuf>,
    /// Namespace the REST API creates instances in.
    pub namespace: String,
    /// Watch instances in every namespace (a ClusterRole) rather than in `namespace` only.
    pub all_namespaces: bool,
    /// Namespace of the Pods of the Kubernetes engine; `None`: `namespace`.
    pub sandbox_namespace: Option<String>,
    /// The operator id put on every container or Pod; `None`: `aenv-operator.<namespace>`. All replicas of one
    /// deployment must share it, and no two deployments may.
    pub operator_id: Option<String>,
    /// Lease-based leader election; `None`: this process always reconciles.
    pub leader_election: Option<leader::LeaderElection>,
}

/// Everything `serve` needs.
#[derive(Clone, Debug)]
pub struct Config {
    pub data_dir: PathBuf,
    pub api_listen: SocketAddr,
    /// Address of the data-plane proxy (`AEnvCore-MCPProxy-URL` routing).
    pub proxy_listen: SocketAddr,
    pub docker: ConnectOptions,
    /// Network containers join.
    pub docker_network: String,
    /// What requests may ask of the Docker host (host network, privileged, bind mounts, ...).
    pub docker_policy: aenv_engine_docker::Policy,
    /// Host address published ports bind to.
    pub publish_host_ip: String,
    /// Grace between SIGTERM and SIGKILL on removal; zero kills at once.
    pub stop_timeout: Duration,
    /// Labelled containers younger than this are not swept as orphans.
    pub orphan_grace: Duration,
    /// Safe container defaults (pids limit, default memory, capabilities).
    pub hardening: aenv_engine_docker::Hardening,
    /// Never pull images (an offline host).
    pub no_pull: bool,
    /// Refuse compose stacks.
    pub disable_compose: bool,
    /// Bearer tokens (token → owner, instance cap); `None` = no authentication.
    pub tokens_file: Option<PathBuf>,
    /// Allow a non-loopback API without tokens.
    pub insecure: bool,
    /// Caps and the create rate limit.
    pub limits: gateway::guard::Limits,
    /// TTL for requests that name none (Go duration syntax).
    pub default_ttl: String,
    pub resync_interval: Duration,
    pub max_concurrent_reconciles: u16,
    pub store: StoreKind,
    pub engine: EngineKind,
    pub kube: KubeOptions,
}

/// A Kubernetes client from `--kube-api-url`, `--kubeconfig`, or the environment (in-cluster service account,
/// `$KUBECONFIG`, `~/.kube/config`).
pub async fn kube_client(opts: &KubeOptions) -> Result<kube::Client, Error> {
    let config = if let Some(url) = &opts.api_url {
        let uri = url.parse().map_err(|e| Error::Config(format!("--kube-api-url {url:?}: {e}")))?;
        kube::Config::new(uri)
    } else if let Some(path) = &opts.kubeconfig {
        let kubeconfig = kube::config::Kubeconfig::read_from(path)
            .map_err(|e| Error::Config(format!("--kubeconfig {}: {e}", path.display())))?;
        kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
            .await
            .map_err(|e| Error::Config(format!("--kubeconfig {}: {e}", path.display())))?
    } else {
        kube::Config::infer().await.map_err(|e| {
            Error::Config(format!(
                "no Kubernetes configuration found ({e}): run in a cluster, or pass --kubeconfig or --kube-api-url"
            ))
        })?
    };
    kube::Client::try_from(config).map_err(|e| Error::Config(format!("cannot make a Kubernetes client: {e}")))
}

/// A label value made of `s`: at most 63 characters of `[A-Za-z0-9._-]`, alphanumeric at both ends.
fn label_value(s: &str) -> String {
    let cleaned: String =
        s.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '-' }).collect();
    let cleaned: String = cleaned.chars().take(63).collect();
    cleaned.trim_matches(|c: char| !c.is_ascii_alphanumeric()).to_string()
}

/// The operator id in Kubernetes mode: `--operator-id`, else `aenv-operator.<namespace>` (stable across restarts
/// and shared by the replicas of one deployment).
pub fn kube_operator_id(opts: &KubeOptions) -> String {
    let id = opts.operator_id.clone().unwrap_or_else(|| format!("aenv-operator.{}", opts.namespace));
    label_value(&id)
}

/// Where instances and templates live, and the operator id that goes with them.
pub struct Stores {
    pub instances: Arc<dyn store::ObjectStore<EnvInstance>>,
    pub templates: Arc<dyn store::ObjectStore<aenv_core::Environment>>,
    pub operator_id: String,
}

/// The instance and template stores, and the operator id that goes with them.
pub async fn open_store(config: &Config, client: Option<&kube::Client>) -> Result<Stores, Error> {
    match (config.store, client) {
        (StoreKind::Kubernetes, Some(client)) => {
            let operator_id = kube_operator_id(&config.kube);
            let reporter = kube::runtime::events::Reporter {
                controller: "aenv-operator".into(),
                instance: std::env::var("POD_NAME").ok().or_else(|| std::env::var("HOSTNAME").ok()),
            };
            let store = store::KubeStore::<EnvInstance>::start(
                client.clone(),
                store::KubeStoreConfig {
                    default_namespace: config.kube.namespace.clone(),
                    watch_namespace: (!config.kube.all_namespaces).then(|| config.kube.namespace.clone()),
                    finalizer: Some(store::FINALIZER.into()),
                    reporter: Some(reporter),
                },
            )
            .await?;
            let templates = store::KubeStore::<aenv_core::Environment>::start(
                client.clone(),
                store::KubeStoreConfig {
                    default_namespace: config.kube.namespace.clone(),
                    watch_namespace: (!config.kube.all_namespaces).then(|| config.kube.namespace.clone()),
                    finalizer: None,
                    reporter: None,
                },
            )
            .await?;
            info!(namespace = %config.kube.namespace, all_namespaces = config.kube.all_namespaces, instances = store::ObjectStore::list(store.as_ref()).len(), operator_id = %operator_id, "store open (Kubernetes)");
            Ok(Stores { instances: store, templates, operator_id })
        }
        (StoreKind::Kubernetes, None) => Err(Error::Config("the Kubernetes store needs a Kubernetes client".into())),
        (StoreKind::Embedded, _) => {
            let db = store::Embedded::open(&config.data_dir)?;
            let instances = db.store::<EnvInstance>()?;
            info!(data_dir = %config.data_dir.display(), instances = instances.len(), operator_id = db.operator_id(), "store open");
            Ok(Stores {
                instances,
                templates: db.store::<aenv_core::Environment>()?,
                operator_id: db.operator_id().to_string(),
            })
        }
    }
}

/// The engine instances run on.
pub async fn open_engine(
    config: &Config,
    operator_id: &str,
    client: Option<&kube::Client>,
) -> Result<Arc<dyn Engine>, Error> {
    match (config.engine, client) {
        (EngineKind::Docker, _) => {
            let docker = aenv_engine_docker::connect(&config.docker).await?;
            let engine = DockerEngine::new(
                docker,
                DockerEngineConfig {
                    network: config.docker_network.clone(),
                    host_display: config.docker.display_host(),
                    policy: config.docker_policy.clone(),
                    publish_host_ip: config.publish_host_ip.clone(),
                    stop_timeout: config.stop_timeout,
                    hardening: config.hardening.clone(),
                    no_pull: config.no_pull,
                    compose: !config.disable_compose,
                    ..DockerEngineConfig::new(operator_id)
                },
            );
            info!(host = %config.docker.display_host(), "connected to the Docker daemon");
            Ok(Arc::new(engine))
        }
        (EngineKind::Kubernetes, Some(client)) => {
            let namespace = config.kube.sandbox_namespace.clone().unwrap_or_else(|| config.kube.namespace.clone());
            let engine = KubeEngine::new(
                client.clone(),
                KubeEngineConfig {
                    owner_references: config.store == StoreKind::Kubernetes,
                    grace_period_seconds: config.stop_timeout.as_secs().min(i64::MAX as u64) as i64,
                    ..KubeEngineConfig::new(operator_id, &namespace)
                },
            )?;
            engine.check().await?;
            info!(namespace = %namespace, "Kubernetes engine ready: instances run as Pods");
            Ok(Arc::new(engine))
        }
        (EngineKind::Kubernetes, None) => Err(Error::Config("the Kubernetes engine needs a Kubernetes client".into())),
    }
}

/// Opens the store, connects to the engine, and runs the reconciler (on the leader only, with leader election)
/// and the API until `shutdown` resolves. Fails fast, with a message that says what to do, when the store or the
/// engine cannot be had.
pub async fn serve(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), Error> {
    if config.kube.leader_election.is_some() && config.store != StoreKind::Kubernetes {
        return Err(Error::Config(
            "--leader-elect needs --store kubernetes (replicas share their instances there)".into(),
        ));
    }
    aenv_core::duration::parse_go_duration(&config.default_ttl)
        .map_err(|e| Error::Config(format!("--default-ttl: {e}")))?;
    if config.resync_interval.is_zero() {
        return Err(Error::Config("--resync-interval must be longer than zero".into()));
    }
    let tokens = config.tokens_file.as_deref().map(gateway::guard::load_tokens).transpose()?;
    if tokens.is_none() && !config.api_listen.ip().is_loopback() && !config.insecure {
        return Err(Error::Config(format!(
            "--api-listen {} is reachable from other hosts but no --tokens-file is given: anyone could start containers on this host. Give --tokens-file, listen on loopback, or pass --insecure if something in front authenticates",
            config.api_listen
        )));
    }
    let guard = gateway::guard::Guard::new(tokens, config.limits.clone());
    let uses_kube = config.store == StoreKind::Kubernetes || config.engine == EngineKind::Kubernetes;
    let client = if uses_kube { Some(kube_client(&config.kube).await?) } else { None };
    let Stores { instances: store, templates, operator_id } = open_store(&config, client.as_ref()).await?;
    let engine = open_engine(&config, &operator_id, client.as_ref()).await?;

    let listener = tokio::net::TcpListener::bind(config.api_listen)
        .await
        .map_err(|source| Error::Listen { addr: config.api_listen.to_string(), source })?;
    let local =
        listener.local_addr().map_err(|source| Error::Listen { addr: config.api_listen.to_string(), source })?;
    info!(addr = %local, "REST API listening");
    let proxy_listener = tokio::net::TcpListener::bind(config.proxy_listen)
        .await
        .map_err(|source| Error::Listen { addr: config.proxy_listen.to_string(), source })?;
    let proxy_local = proxy_listener
        .local_addr()
        .map_err(|source| Error::Listen { addr: config.proxy_listen.to_string(), source })?;
    info!(proxy_addr = %proxy_local, "data-plane proxy listening");

    let metrics = Arc::new(metrics::Metrics::default());
    let ctx = reconciler::Context::new(store.clone(), engine.clone(), metrics.clone());
    let proxy = gateway::proxy::Proxy::new(store.clone());
    let namespace = match config.store {
        StoreKind::Kubernetes => config.kube.namespace.clone(),
        StoreKind::Embedded => store::DEFAULT_NAMESPACE.to_string(),
    };
    let gateway = Arc::new(gateway::Gateway::new(
        store,
        templates,
        engine,
        metrics,
        config.default_ttl.clone(),
        namespace,
        guard,
    ));

    let shutdown = shutdown.shared();
    let api = warp::serve(gateway::routes(gateway)).incoming(listener).graceful(shutdown.clone()).run();
    let data_plane =
        warp::serve(gateway::proxy::routes(proxy)).incoming(proxy_listener).graceful(shutdown.clone()).run();
    let loop_config = reconciler::LoopConfig {
        resync_interval: config.resync_interval,
        concurrency: config.max_concurrent_reconciles,
        orphan_grace: config.orphan_grace,
    };
    let reconcile = async move {
        match (config.kube.leader_election.clone(), client) {
            (Some(election), Some(client)) => {
                leader::run_when_leader(client, election, ctx, loop_config, shutdown).await
            }
            _ => {
                reconciler::run(ctx, loop_config, shutdown).await;
                Ok(())
            }
        }
    };
    let ((), (), reconciled) = tokio::join!(api, data_plane, reconcile);
    info!("stopped");
    reconciled
}
