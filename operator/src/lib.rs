//! aenv-operator: short-lived sandbox environments for AI agents, run on Docker in the style of a Kubernetes
//! operator, behind the AEnvironment REST API.
//!
//! The binary's rooms: [`store`] (the embedded store), [`reconciler`] (the reconcile loop), [`gateway`] (the REST
//! API), [`metrics`], and [`serve`], which wires them together.

#![recursion_limit = "256"]

pub mod crds;
mod error;
pub mod gateway;
pub mod metrics;
pub mod reconciler;
pub mod store;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use aenv_core::Engine;
use aenv_engine_docker::{ConnectOptions, DockerEngine, DockerEngineConfig};
pub use error::Error;
use futures::FutureExt;
use tracing::info;

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
}

/// Opens the store, connects to Docker, and runs the reconciler and the API until `shutdown` resolves.
/// Fails fast, with a message that says what to do, when the store or the daemon cannot be had.
pub async fn serve(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), Error> {
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
    let db = store::Embedded::open(&config.data_dir)?;
    let instances = db.store::<aenv_core::EnvInstance>()?;
    info!(data_dir = %config.data_dir.display(), instances = instances.len(), operator_id = db.operator_id(), "store open");
    let store: Arc<dyn store::ObjectStore<aenv_core::EnvInstance>> = instances;
    let templates: Arc<dyn store::ObjectStore<aenv_core::Environment>> = db.store::<aenv_core::Environment>()?;

    let docker = aenv_engine_docker::connect(&config.docker).await?;
    let engine: Arc<dyn Engine> = Arc::new(DockerEngine::new(
        docker,
        DockerEngineConfig {
            network: config.docker_network.clone(),
            host_display: config.docker.display_host(),
            policy: config.docker_policy.clone(),
            publish_host_ip: config.publish_host_ip.clone(),
            stop_timeout: config.stop_timeout,
            hardening: config.hardening.clone(),
            no_pull: config.no_pull,
            ..DockerEngineConfig::new(db.operator_id())
        },
    ));
    info!(host = %config.docker.display_host(), "connected to the Docker daemon");

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
    let gateway = Arc::new(gateway::Gateway::new(
        store,
        templates,
        engine,
        metrics,
        config.default_ttl.clone(),
        store::DEFAULT_NAMESPACE.to_string(),
        guard,
    ));

    let shutdown = shutdown.shared();
    let api = warp::serve(gateway::routes(gateway)).incoming(listener).graceful(shutdown.clone()).run();
    let data_plane =
        warp::serve(gateway::proxy::routes(proxy)).incoming(proxy_listener).graceful(shutdown.clone()).run();
    let reconcile = reconciler::run(
        ctx,
        reconciler::LoopConfig {
            resync_interval: config.resync_interval,
            concurrency: config.max_concurrent_reconciles,
            orphan_grace: config.orphan_grace,
        },
        shutdown,
    );
    tokio::join!(api, data_plane, reconcile);
    info!("stopped");
    Ok(())
}
