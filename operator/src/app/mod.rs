//! The process: configuration, the store and the engine it picks, and [`serve`], which runs the REST API, the
//! data-plane proxy and the controller together.

pub mod config;

use std::sync::Arc;

use aenv_core::{Engine, EnvInstance, EnvPool, EnvService, Environment};
use aenv_engine_docker::DockerEngine;
use aenv_engine_k8s::{KubeEngine, KubeEngineConfig};
pub use config::{ApiArgs, Config, DockerArgs, EngineKind, KubeArgs, LeaderArgs, StoreKind, SwarmArgs, SwarmReach};
use futures::FutureExt;
use tracing::{info, warn};

use crate::{
    Error,
    controller::{self, leader},
    demand::Demand,
    http, metrics,
    store::{self, ObjectStore},
    usecase::{Settings, Stores, UseCases},
};

/// A Kubernetes client from `--kube-api-url`, `--kubeconfig`, or the environment (in-cluster service account,
/// `$KUBECONFIG`, `~/.kube/config`).
pub async fn kube_client(opts: &KubeArgs) -> Result<kube::Client, Error> {
    let config = if let Some(url) = opts.api_url() {
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
pub fn kube_operator_id(opts: &KubeArgs) -> String {
    let id = opts
        .operator_id
        .clone()
        .filter(|i| !i.is_empty())
        .unwrap_or_else(|| format!("aenv-operator.{}", opts.namespace));
    label_value(&id)
}

/// Where instances and templates live, and the operator id that goes with them.
pub struct OpenedStore {
    pub instances: Arc<dyn ObjectStore<EnvInstance>>,
    pub templates: Arc<dyn ObjectStore<Environment>>,
    pub pools: Arc<dyn ObjectStore<EnvPool>>,
    pub services: Arc<dyn ObjectStore<EnvService>>,
    pub operator_id: String,
    /// A store made by this start (a new operator id): sandboxes of a lost one may be on the engine.
    pub fresh: bool,
    /// The key presigned URLs are signed with, kept in the store.
    pub signing_key: Vec<u8>,
}

/// The instance, template and pool stores, and the operator id that goes with them.
pub async fn open_store(config: &Config, client: Option<&kube::Client>) -> Result<OpenedStore, Error> {
    match (config.store, client) {
        (StoreKind::Kubernetes, Some(client)) => {
            let operator_id = kube_operator_id(&config.kube);
            let reporter = kube::runtime::events::Reporter {
                controller: "aenv-operator".into(),
                instance: std::env::var("POD_NAME").ok().or_else(|| std::env::var("HOSTNAME").ok()),
            };
            // Instances and pools hold a finalizer until what they made is gone, and tell their changes as Events.
            let kube_config = |held: bool| store::KubeStoreConfig {
                default_namespace: config.kube.namespace.clone(),
                watch_namespace: (!config.kube.all_namespaces).then(|| config.kube.namespace.clone()),
                finalizer: held.then(|| store::FINALIZER.into()),
                reporter: held.then(|| reporter.clone()),
            };
            let store = store::KubeStore::<EnvInstance>::start(client.clone(), kube_config(true)).await?;
            let templates = store::KubeStore::<Environment>::start(client.clone(), kube_config(false)).await?;
            let pools = store::KubeStore::<EnvPool>::start(client.clone(), kube_config(true)).await?;
            let services = store::KubeStore::<EnvService>::start(client.clone(), kube_config(true)).await?;
            info!(namespace = %config.kube.namespace, all_namespaces = config.kube.all_namespaces, instances = store.list().len(), operator_id = %operator_id, "store open (Kubernetes)");
            // Without the Secret (no RBAC for it, an API server that does not serve Secrets) URLs still work, until
            // a restart.
            let signing_key = match store::signing_key::kube_signing_key(client, &config.kube.namespace, &operator_id)
                .await
            {
                Ok(key) => key,
                Err(e) => {
                    warn!(error = %e, "presigned URLs are signed with a key of this process only: they stop working at a restart");
                    crate::usecase::presign::new_key()
                }
            };
            Ok(OpenedStore { instances: store, templates, pools, services, operator_id, fresh: false, signing_key })
        }
        (StoreKind::Kubernetes, None) => Err(Error::Config("the Kubernetes store needs a Kubernetes client".into())),
        (StoreKind::Embedded, _) => {
            let db = store::Embedded::open(&config.data_dir)?;
            // The embedded store draws its id once and keeps it: what it made is found by that id after a
            // restart, so another one named on the command line is refused rather than ignored.
            if let Some(asked) = config.kube.operator_id.as_deref().filter(|id| *id != db.operator_id()) {
                return Err(Error::Config(format!(
                    "--operator-id {asked:?}: the embedded store at {} keeps its own operator id {:?}, which labels everything it made; leave --operator-id (and AENV_OPERATOR_ID) out, pass that id, or use --store kubernetes",
                    config.data_dir.display(),
                    db.operator_id()
                )));
            }
            let instances = db.store::<EnvInstance>()?;
            info!(data_dir = %config.data_dir.display(), instances = instances.len(), operator_id = db.operator_id(), fresh = db.is_fresh(), "store open");
            Ok(OpenedStore {
                instances,
                templates: db.store::<Environment>()?,
                pools: db.store::<EnvPool>()?,
                services: db.store::<EnvService>()?,
                operator_id: db.operator_id().to_string(),
                fresh: db.is_fresh(),
                signing_key: db.signing_key(),
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
            let connect = config.docker.connect_options();
            let docker = aenv_engine_docker::connect(&connect).await?;
            let engine_config = aenv_engine_docker::DockerEngineConfig {
                // With tokens, owners are tenants: their sandboxes never share a network.
                owner_networks: config.api.tokens_file.is_some(),
                // Beside the embedded store, which is this operator's alone: a restart on the same data dir kills
                // the commands that outlived their timeout while it was down.
                exec_journal: (config.store == StoreKind::Embedded).then(|| config.data_dir.join("execs")),
                ..config.docker.engine_config(operator_id)
            };
            let engine = DockerEngine::new(docker, engine_config);
            info!(host = %connect.display_host(), "connected to the Docker daemon");
            let checkpoints = engine.detect_checkpoints().await;
            info!(
                available = checkpoints.available,
                reason = %checkpoints.reason,
                "memory checkpoints (CRIU): snapshots save the filesystem only"
            );
            Ok(Arc::new(engine))
        }
        (EngineKind::Kubernetes, Some(client)) => {
            let namespace = config.kube.sandbox_namespace().to_string();
            let engine = KubeEngine::new(
                client.clone(),
                KubeEngineConfig {
                    owner_references: config.store == StoreKind::Kubernetes,
                    grace_period_seconds: config.docker.stop_timeout.as_secs().min(i64::MAX as u64) as i64,
                    service_domain_suffix: Some(config.kube.service_domain_suffix.as_str())
                        .filter(|s| !s.is_empty())
                        .unwrap_or("svc.cluster.local")
                        .to_string(),
                    ..KubeEngineConfig::new(operator_id, &namespace)
                },
            )?;
            engine.check().await?;
            info!(namespace = %namespace, "Kubernetes engine ready: instances run as Pods, services as Deployments");
            Ok(Arc::new(engine))
        }
        (EngineKind::Kubernetes, None) => Err(Error::Config("the Kubernetes engine needs a Kubernetes client".into())),
        (EngineKind::Swarm, _) => {
            let connect = config.docker.connect_options();
            let docker = aenv_engine_docker::connect(&connect).await?;
            let docker_config = aenv_engine_docker::DockerEngineConfig {
                owner_networks: config.api.tokens_file.is_some(),
                ..config.docker.engine_config(operator_id)
            };
            let engine = aenv_engine_swarm::SwarmEngine::new(docker, config.swarm.engine_config(docker_config));
            engine.check().await?;
            info!(host = %connect.display_host(), network = %config.swarm.swarm_network, reach = ?config.swarm.swarm_reach, "connected to the Swarm manager: instances run as services");
            Ok(Arc::new(engine))
        }
    }
}

/// Opens the store, connects to the engine, and runs the controller (on the leader only, with leader election)
/// and the API until `shutdown` resolves. Fails fast, with a message that says what to do, when the store or the
/// engine cannot be had.
pub async fn serve(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), Error> {
    if config.kube.leader.leader_elect && config.store != StoreKind::Kubernetes {
        return Err(Error::Config(
            "--leader-elect needs --store kubernetes (replicas share their instances there)".into(),
        ));
    }
    if config.reconcile.resync_interval.is_zero() {
        return Err(Error::Config("--resync-interval must be longer than zero".into()));
    }
    let api = &config.api;
    if api.default_ttl.duration() > config.limits.max_ttl.duration {
        return Err(Error::Config(format!(
            "--default-ttl {} is longer than --max-ttl {}: lower it or raise --max-ttl",
            api.default_ttl.as_str(),
            config.limits.max_ttl.text
        )));
    }
    let tokens = api.tokens_file.as_deref().map(http::auth::load_tokens).transpose()?;
    if tokens.is_none() && !api.api_listen.ip().is_loopback() && !api.insecure {
        return Err(Error::Config(format!(
            "--api-listen {} is reachable from other hosts but no --tokens-file is given: anyone could start containers on this host. Give --tokens-file, listen on loopback, or pass --insecure if something in front authenticates",
            api.api_listen
        )));
    }
    if api.proxy_auth && tokens.is_none() {
        return Err(Error::Config("--proxy-auth needs --tokens-file (the proxy checks the same tokens)".into()));
    }
    let auth = http::auth::Auth::new(tokens);
    // Each listener may hold a quarter of the open-file limit: together they leave half of it to the rest.
    let budget = http::server::open_file_limit().map_or(usize::MAX, |n| usize::try_from(n / 4).unwrap_or(usize::MAX));
    let api_limits = api.conn_limits("api", budget).map_err(Error::Config)?;
    let proxy_limits = api.conn_limits("proxy", budget).map_err(Error::Config)?;
    let uses_kube = config.store == StoreKind::Kubernetes || config.engine == EngineKind::Kubernetes;
    let client = if uses_kube { Some(kube_client(&config.kube).await?) } else { None };
    let OpenedStore { instances, templates, pools, services: env_services, operator_id, fresh, signing_key } =
        open_store(&config, client.as_ref()).await?;
    let engine = open_engine(&config, &operator_id, client.as_ref()).await?;
    if fresh {
        tokio::spawn(report_other_operators(engine.clone(), operator_id.clone(), config.reconcile.orphan_grace));
    }

    let listener = bind(api.api_listen).await?;
    let api_addr = local_addr(&listener, api.api_listen)?;
    info!(addr = %api_addr, "REST API listening");
    // With leader election, the leader serves the writes that take quota; followers forward them to the URL it
    // publishes on the Lease.
    let election = config.kube.leader.leader_elect.then(|| config.kube.leader_election());
    let leadership = match &election {
        Some(election) => {
            let url = config
                .kube
                .leader
                .advertised_url(api_addr, std::env::var("POD_IP").ok().as_deref())
                .map_err(Error::Config)?;
            info!(identity = %election.identity, url = %url, "this replica's API, as the other replicas reach it");
            Some(leader::Leadership::new(election, url))
        }
        None => None,
    };
    let forwarder = leadership.as_ref().map(|l| {
        http::forward::Forwarder::new(
            l.clone(),
            config.kube.leader.forward_timeout,
            api_limits.max_connections_per_ip,
            api_limits.header_read_timeout,
        )
    });
    let proxy_listener = bind(api.proxy_listen).await?;
    let proxy_addr = local_addr(&proxy_listener, api.proxy_listen)?;
    info!(proxy_addr = %proxy_addr, "data-plane proxy listening");

    let metrics = Arc::new(metrics::Metrics::default());
    let demand = Arc::new(Demand::new(config.pools.pool_demand_window));
    let pool_loop = controller::pools::Pools::new(
        pools.clone(),
        instances.clone(),
        templates.clone(),
        demand.clone(),
        config.pools.config(),
        config.limits.max_instances,
    );
    let service_loop = controller::env_services::ServiceLoop::new(
        env_services.clone(),
        instances.clone(),
        templates.clone(),
        engine.clone(),
        config.limits.max_instances,
        config.service_ready_timeout,
    );
    let ctx = controller::Context::with_pools_and_services(
        instances.clone(),
        engine.clone(),
        metrics.clone(),
        pool_loop,
        service_loop,
    );
    let namespace = match config.store {
        StoreKind::Kubernetes => config.kube.namespace.clone(),
        StoreKind::Embedded => store::DEFAULT_NAMESPACE.to_string(),
    };
    let signer = Arc::new(crate::usecase::presign::Signer::new(signing_key));
    let proxy = http::proxy::Proxy::new(
        instances.clone(),
        env_services.clone(),
        namespace.clone(),
        config.api.proxy_auth.then(|| auth.clone()),
        engine.clone(),
        engine.dials_published_ports(),
        signer.clone(),
    );
    // Env services' addresses: the proxy's, on loopback when it listens on every address.
    let mut service_host = proxy_addr;
    if service_host.ip().is_unspecified() {
        service_host.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let services = UseCases::new(
        Stores { instances, templates, pools, env_services },
        demand,
        engine,
        metrics.clone(),
        Settings {
            namespace,
            default_ttl: api.default_ttl.clone(),
            limits: config.limits.clone(),
            proxy_url: Some(format!("http://{service_host}")),
            create_wait: api.create_wait,
            signer,
        },
    );
    spawn_snapshot_sweep(services.clone(), operator_id.clone(), &config.reconcile.config());

    let shutdown = shutdown.shared();
    let api = http::server::serve(
        "api",
        listener,
        http::routes(services, auth, forwarder),
        api_limits,
        metrics.clone(),
        shutdown.clone(),
    );
    let data_plane = http::server::serve(
        "proxy",
        proxy_listener,
        http::proxy::routes(proxy),
        proxy_limits,
        metrics,
        shutdown.clone(),
    );
    let loop_config = config.reconcile.config();
    let reconcile = async move {
        match (election, leadership, client) {
            (Some(election), Some(leadership), Some(client)) => {
                let lease = leader::watch_lease(client.clone(), election.clone(), leadership.clone(), shutdown.clone());
                let (led, ()) = tokio::join!(
                    leader::run_when_leader(client, election, leadership, ctx, loop_config, shutdown),
                    lease
                );
                led
            }
            _ => {
                controller::run(ctx, loop_config, shutdown).await;
                Ok(())
            }
        }
    };
    let ((), (), reconciled) = tokio::join!(api, data_plane, reconcile);
    info!("stopped");
    reconciled
}

/// Every resync interval, this operator's snapshot images that no template owns go (after --orphan-grace); other
/// operators' are reported once.
fn spawn_snapshot_sweep(services: Arc<UseCases>, operator_id: String, config: &controller::LoopConfig) {
    let grace = config.orphan_grace;
    let reported = Arc::new(std::sync::atomic::AtomicBool::new(false));
    controller::spawn_sweeper(config.resync_interval.max(std::time::Duration::from_secs(1)), "snapshot", move || {
        let (services, operator_id, reported) = (services.clone(), operator_id.clone(), reported.clone());
        async move {
            let sweep = services.sweep_snapshots(&operator_id, grace).await?;
            if !sweep.foreign.is_empty() && !reported.swap(true, std::sync::atomic::Ordering::Relaxed) {
                let others: std::collections::BTreeSet<&str> =
                    sweep.foreign.iter().map(|s| s.operator_id.as_str()).collect();
                warn!(
                    images = sweep.foreign.len(),
                    operators = ?others,
                    "snapshot images of other operator ids are on the engine (another operator, or a store that was lost): they are left alone; remove them by hand once their operator is gone (docker rmi $(docker images -q --filter label=aenv.io/snapshot-by=<id>))"
                );
            }
            Ok(())
        }
    });
}

/// A new store says what it finds of other operators on the engine: the sandboxes of a store that was lost look
/// just like those of another operator sharing the engine, so none is touched before its expiry label passes
/// (docs/operations.md, "A lost store").
async fn report_other_operators(engine: Arc<dyn Engine>, operator_id: String, grace: std::time::Duration) {
    let managed = match engine.list_managed().await {
        Ok(m) => m,
        Err(e) => {
            warn!(error = %e, "could not list other operators' sandboxes");
            return;
        }
    };
    let mut by_operator: std::collections::BTreeMap<&str, (usize, usize)> = Default::default();
    for m in managed.iter().filter(|m| m.operator_id != operator_id && m.object.kind == aenv_core::OwnedKind::Container)
    {
        let counts = by_operator.entry(m.operator_id.as_str()).or_default();
        match m.expires_at {
            Some(_) => counts.0 += 1,
            None => counts.1 += 1,
        }
    }
    for (other, (with_expiry, without)) in by_operator {
        warn!(
            other_operator_id = other,
            with_expiry,
            without_expiry = without,
            "this store is new, and the engine runs sandboxes of another operator id (a lost store, or another operator sharing the engine): they are left alone, and removed by the resync once their aenv.io/expire-at has passed by --orphan-grace ({grace:?}); those without an expiry are never removed by an operator: remove them by hand (docker rm -f $(docker ps -aq --filter label=aenv.io/operator-id={other})) once you know their operator is gone"
        );
    }
}

async fn bind(addr: std::net::SocketAddr) -> Result<tokio::net::TcpListener, Error> {
    tokio::net::TcpListener::bind(addr).await.map_err(|source| Error::Listen { addr: addr.to_string(), source })
}

fn local_addr(listener: &tokio::net::TcpListener, addr: std::net::SocketAddr) -> Result<std::net::SocketAddr, Error> {
    listener.local_addr().map_err(|source| Error::Listen { addr: addr.to_string(), source })
}
