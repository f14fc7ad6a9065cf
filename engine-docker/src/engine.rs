//! [`DockerEngine`]: the [`Engine`] over one Docker daemon. A container per instance, named by the instance id;
//! a compose stack is handed to [`crate::compose`].

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use aenv_core::{
    Engine, EngineError, EngineEvent, EnvInstance, EnvInstanceSpec, ErrorKind, ExecOutput, ExecRequest, FileUpload,
    InstanceStats, InvalidSpec, ManagedObject, Observed, OwnedKind, OwnedObject, PathContent, Phase, PullPolicy,
    PullProgress, SandboxPath, Workload,
    labels::{self, InstanceLabels},
};
use async_trait::async_trait;
use bollard::{
    Docker,
    models::{
        ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum, EndpointSettings, HostConfig, Mount,
        MountType, NetworkingConfig, PortBinding, PortMap, RestartPolicy, RestartPolicyNameEnum,
    },
    query_parameters::{
        CreateContainerOptionsBuilder, ListContainersOptionsBuilder, ListNetworksOptionsBuilder,
        ListVolumesOptionsBuilder, LogsOptionsBuilder, StopContainerOptionsBuilder,
    },
};
use futures::{StreamExt, stream::BoxStream};
use jiff::Timestamp;
use tokio::sync::mpsc;
use tracing::debug;

use crate::{
    Allowance, DockerEngineConfig, Policy, compose, containers,
    error::{classify, classify_start, is_conflict, is_not_found},
    image::ensure_image,
    network,
    probe::Prober,
    volume,
};

use aenv_core::labels::is_dns_label;

/// The Docker engine: one container per instance.
#[derive(Clone)]
pub struct DockerEngine {
    docker: Docker,
    config: DockerEngineConfig,
    prober: Prober,
    platform: containers::HostPlatform,
    /// Serialises user-network creation: Docker allows two networks of one name, so two instances creating the
    /// same network at once would make it ambiguous.
    network_lock: Arc<tokio::sync::Mutex<()>>,
    /// What [`DockerEngine::detect_checkpoints`] found.
    checkpoints: Arc<std::sync::OnceLock<aenv_core::CheckpointSupport>>,
    /// The execs running now, for a restarted operator to kill those it could not.
    journal: crate::kill::Journal,
}

impl DockerEngine {
    pub fn new(docker: Docker, config: DockerEngineConfig) -> Self {
        let journal = crate::kill::Journal::new(config.exec_journal.clone());
        Self {
            docker,
            config,
            prober: Prober::default(),
            platform: containers::HostPlatform::default(),
            network_lock: Arc::default(),
            checkpoints: Arc::default(),
            journal,
        }
    }

    /// Finds out, once (at start), whether the daemon could take memory checkpoints: its experimental mode (from
    /// `/info`) and `criu` on this host (where a local daemon runs it). The operator does not take them yet
    /// (snapshots save the filesystem); this is what it reports.
    pub async fn detect_checkpoints(&self) -> aenv_core::CheckpointSupport {
        let experimental = match self.docker.info().await {
            Ok(info) => info.experimental_build,
            Err(e) => {
                debug!(error = %e, "reading the daemon's /info for checkpoints");
                None
            }
        };
        let criu = std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .map(|dir| dir.join("criu"))
            .find(|p| p.is_file());
        // `criu check`: whether CRIU can work on this kernel at all (what a checkpoint create would need).
        let check = match (&experimental, &criu) {
            (Some(true), Some(path)) => Some(crate::ops::criu_check(path).await),
            _ => None,
        };
        let found = crate::ops::checkpoint_support(experimental, criu.as_deref(), check);
        self.checkpoints.get_or_init(|| found).clone()
    }

    /// The owner a spec's Docker names are scoped to: its owner when owner networks are on.
    fn scope_owner<'a>(&self, spec: &'a EnvInstanceSpec) -> Option<&'a str> {
        spec.owner.as_deref().filter(|_| self.config.owner_networks)
    }

    /// The Docker network an instance joins: the one its spec names, else the operator's; scoped to the
    /// instance's owner when owner networks are on, and to this operator ([`network::scoped`]).
    fn network_of(&self, spec: &EnvInstanceSpec) -> String {
        let named = spec.network.as_deref().unwrap_or(&self.config.network);
        network::scoped(&self.config.operator_id, self.scope_owner(spec), named)
    }

    /// The name the same network had before names carried the operator id, when it differs.
    fn legacy_network_of(&self, spec: &EnvInstanceSpec) -> Option<String> {
        let named = spec.network.as_deref().unwrap_or(&self.config.network);
        network::legacy_scoped(&self.config.operator_id, self.scope_owner(spec), named)
    }

    /// Creates the instance's user network when it needs one, within the policy, and answers the network the
    /// container joins: a network of the name before the operator id that this operator made (an upgrade) while
    /// it exists, else today's name. A network of today's name is never another operator's (the name holds this
    /// operator's id), so what other operators made, or left, never stands in the way.
    async fn prepare_network(&self, spec: &EnvInstanceSpec) -> Result<String, EngineError> {
        let name = self.network_of(spec);
        if network::is_builtin(&name) {
            return Ok(name);
        }
        if let Some(legacy) = self.legacy_network_of(spec)
            && network::is_ours(&self.docker, &legacy, &self.config.operator_id).await? == Some(true)
        {
            return Ok(legacy);
        }
        if network::is_ours(&self.docker, &name, &self.config.operator_id).await? == Some(false) {
            let named = spec.network.as_deref();
            if named == Some(name.as_str()) {
                // The request named a network that exists (an external one): the policy decides.
                self.config.policy.check(Allowance::ExternalNetworks, "deployConfig.network").map_err(|e| {
                    let msg = format!("network {name} exists and was not created by aenv-operator: {}", e.message);
                    EngineError::permanent(msg).with_source(e)
                })?;
            } else if named.is_some() || name != self.config.network {
                // A name this operator derives (an owner's or a service's network) taken by a network it did
                // not make: not a leftover of another operator (their names differ), so someone made it by hand.
                return Err(EngineError::permanent(format!(
                    "network {name} (a name this operator gives its own networks) exists on the Docker host and was not created by this operator (id {}): remove it (docker network rm {name})",
                    self.config.operator_id
                )));
            }
            // Else the operator's own --network, as the operator was told: used as it is.
            return Ok(name);
        }
        let _one_at_a_time = self.network_lock.lock().await;
        network::ensure(&self.docker, &name, &self.config.operator_id, self.scope_owner(spec)).await?;
        Ok(name)
    }

    /// The Docker volume behind each of the spec's volumes (in order), made when missing ([`volume::prepare`]).
    async fn prepare_volumes(&self, spec: &EnvInstanceSpec) -> Result<Vec<String>, EngineError> {
        let mut out = Vec::with_capacity(spec.volumes.len());
        for v in &spec.volumes {
            out.push(volume::prepare(&self.docker, &self.config.operator_id, spec.owner.as_deref(), &v.name).await?);
        }
        Ok(out)
    }

    /// Probes a running instance; `None` when it has no probe.
    async fn readiness(&self, spec: &EnvInstanceSpec, observed: &Observed) -> (Option<bool>, Option<String>) {
        let probe = spec.readiness.clone().unwrap_or_default();
        if !probe.enabled || observed.phase != Phase::Running {
            return (None, None);
        }
        // A published probe port is used first (Docker Desktop and remote daemons: container IPs are not
        // reachable from here); else the container's IP.
        let published = observed.ports.iter().find(|p| p.container_port == probe.port && p.protocol == "tcp");
        let addr = match (published, observed.ip.as_deref()) {
            (Some(p), _) => {
                let host = if p.host_ip.is_empty() || p.host_ip == "0.0.0.0" { "127.0.0.1" } else { &p.host_ip };
                format!("{host}:{}", p.host_port)
            }
            (None, Some(ip)) => format!("{ip}:{}", probe.port),
            (None, None) => return (Some(false), Some("the instance has no address to probe".into())),
        };
        match self.prober.probe(&addr, &probe.path, Duration::from_millis(probe.timeout_ms)).await {
            Ok(()) => (Some(true), None),
            Err(why) => (Some(false), Some(why)),
        }
    }

    fn owned_filter(&self) -> HashMap<String, Vec<String>> {
        HashMap::from([(
            "label".to_string(),
            vec![
                format!("{}={}", labels::MANAGED_BY, labels::MANAGED_BY_VALUE),
                format!("{}={}", labels::OPERATOR_ID, self.config.operator_id),
            ],
        )])
    }

    async fn inspect(&self, name: &str) -> Result<Option<ContainerInspectResponse>, EngineError> {
        containers::inspect(&self.docker, name).await
    }

    /// The container body for an instance. Fails (permanently) on a spec the reconciler cannot run.
    fn container_body(&self, inst: &EnvInstance, joins: &Joins) -> Result<ContainerCreateBody, EngineError> {
        let spec = &inst.spec;
        let Workload::Container { image: Some(image) } = spec.workload() else {
            return Err(EngineError::permanent("spec.image is empty: the instance has no image to run"));
        };
        let image = image.to_string();
        // Objects written around the API (a custom resource) never went through `validate`.
        no_compose_labels(spec).map_err(|e| EngineError::permanent(e.to_string()))?;
        let permanent = |e: aenv_core::Error| EngineError::permanent(e.to_string());
        let nano_cpus = spec.resources.nano_cpus().map_err(permanent)?;
        let memory = spec.resources.memory_bytes().map_err(permanent)?;
        // Requests (a service's cpu_request, memory_request): a soft memory reservation, and a cpu weight that
        // counts only when cpus are contended (1024 per core, Docker's scale; at least 2, Docker's minimum).
        let memory_reservation = spec.requests.memory_bytes().map_err(permanent)?;
        let cpu_shares = spec.requests.cpu_millis().map_err(permanent)?.map(|m| (m as i64 * 1024 / 1000).max(2));
        // Every requested port is exposed as well as bound: Docker publishes only exposed ports, and an image that
        // declares no EXPOSE (or another port) would otherwise get bindings that publish nothing.
        let port_keys: Vec<String> = spec
            .ports
            .iter()
            .map(|p| format!("{}/{}", p.container_port, p.protocol.as_deref().unwrap_or("tcp")))
            .collect();
        let port_bindings: PortMap = port_keys
            .iter()
            .map(|key| {
                let binding =
                    PortBinding { host_ip: Some(self.config.policy.publish_host_ip().to_string()), host_port: None };
                (key.clone(), Some(vec![binding]))
            })
            .collect();
        let labels = InstanceLabels::of(inst, &self.config.operator_id)
            .map_err(|e| EngineError::permanent(e.to_string()))?
            .render(&spec.labels);
        let mut host_config = HostConfig {
            nano_cpus,
            memory,
            memory_reservation,
            cpu_shares,
            // No swap beyond the memory limit: a sandbox that outgrows its limit is OOM-killed, not slowed.
            memory_swap: memory,
            network_mode: Some(joins.network.clone()),
            port_bindings: (!port_bindings.is_empty()).then_some(port_bindings),
            restart_policy: Some(RestartPolicy { name: Some(RestartPolicyNameEnum::NO), maximum_retry_count: None }),
            ..Default::default()
        };
        self.config.hardening.apply(&mut host_config);
        // Named volumes only (an EnvService's storage): Docker makes a missing one on the first mount.
        if let Some(why) = spec.volumes.iter().find_map(|v| v.check()) {
            return Err(EngineError::permanent(why));
        }
        if !spec.volumes.is_empty() {
            host_config.mounts = Some(
                spec.volumes
                    .iter()
                    .zip(&joins.volumes)
                    .map(|(v, source)| Mount {
                        typ: Some(MountType::VOLUME),
                        source: Some(source.clone()),
                        target: Some(v.mount_path.clone()),
                        ..Default::default()
                    })
                    .collect(),
            );
        }
        // Names it answers to on its user network (a service's replicas: the service's name), for Docker's DNS.
        let network = joins.network.clone();
        let networking_config =
            (!spec.network_aliases.is_empty() && !network::is_builtin(&network)).then(|| NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    network,
                    EndpointSettings { aliases: Some(spec.network_aliases.clone()), ..Default::default() },
                )])),
            });
        Ok(ContainerCreateBody {
            image: Some(image),
            networking_config,
            cmd: (!spec.args.is_empty()).then(|| spec.args.clone()),
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            labels: Some(labels.into_iter().collect()),
            exposed_ports: (!port_keys.is_empty()).then_some(port_keys),
            host_config: Some(host_config),
            ..Default::default()
        })
    }

    /// Creates and starts the container. Under `IfNotPresent` and `Never` it does not ask whether the image is
    /// there first: the create says so (404), and only then is the image pulled (or the instance failed). A name
    /// already taken is reported as [`Made::NameTaken`], for the caller to adopt what is there.
    async fn create_and_start(&self, inst: &EnvInstance, name: &str) -> Result<Made, EngineError> {
        // Checked before any network or volume is made for it.
        let image = self.container_body(inst, &Joins::default())?.image.unwrap_or_default();
        let policy =
            if self.config.no_pull { PullPolicy::Never } else { inst.spec.image_pull_policy.unwrap_or_default() };
        let ensure = || async {
            ensure_image(&self.docker, &image, policy, &self.config.policy).await.map_err(|e| {
                if self.config.no_pull && e.kind() == ErrorKind::Permanent {
                    e.reworded(|msg| format!("{msg}; this operator runs with --no-pull"))
                } else {
                    e
                }
            })
        };
        if policy == PullPolicy::Always {
            ensure().await?;
        }
        let joins = Joins {
            network: self.prepare_network(&inst.spec).await?,
            volumes: self.prepare_volumes(&inst.spec).await?,
        };
        let body = self.container_body(inst, &joins)?;
        let options = CreateContainerOptionsBuilder::default().name(name).build();
        let mut pulled = false;
        loop {
            match self.docker.create_container(Some(options.clone()), body.clone()).await {
                Ok(created) => {
                    debug!(container = %created.id, "container created");
                    break;
                }
                Err(e) if is_conflict(&e) => return Ok(Made::NameTaken),
                // A 404 names a missing image or a missing network; asking for the image tells which.
                Err(e) if is_not_found(&e) => match self.docker.inspect_image(&image).await {
                    // The image is not on the host: pull it by the policy (or fail saying so), then create again.
                    Err(ie) if is_not_found(&ie) && !pulled => {
                        ensure().await?;
                        pulled = true;
                    }
                    // The image is there: the user network went away between prepare and create (its last instance
                    // was just removed). Try again.
                    Ok(_) => {
                        return Err(
                            EngineError::transient(format!("network of {name} disappeared; retrying")).with_source(e)
                        );
                    }
                    Err(_) => return Err(classify(&format!("creating container {name}"), e)),
                },
                Err(e) => return Err(classify(&format!("creating container {name}"), e)),
            }
        }
        self.start(name).await?;
        Ok(Made::Created)
    }

    async fn start(&self, name: &str) -> Result<(), EngineError> {
        match self.docker.start_container(name, None).await {
            Ok(()) => Ok(()),
            // 304: already started.
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 304, .. }) => Ok(()),
            // Gone between create and start (an earlier, interrupted create was rolled back): try again.
            Err(e) if is_not_found(&e) => {
                Err(EngineError::transient(format!("container {name} disappeared before it started; retrying")))
            }
            Err(e) => Err(classify_start(&format!("starting container {name}"), e)),
        }
    }

    /// Inspects a container just started and reports it.
    async fn observe_running(&self, spec: &EnvInstanceSpec, name: &str) -> Result<Observed, EngineError> {
        match self.inspect(name).await? {
            Some(c) => self.observed(spec, name, &c).await,
            None => Err(EngineError::transient(format!("container {name} disappeared while it was being started"))),
        }
    }

    /// What an inspected container means for the instance, readiness included.
    async fn observed(
        &self,
        spec: &EnvInstanceSpec,
        name: &str,
        c: &ContainerInspectResponse,
    ) -> Result<Observed, EngineError> {
        let mut observed = containers::observe(name, c);
        if observed.phase == Phase::Failed {
            if let Some(why) = containers::platform_mismatch(&self.docker, &self.platform, c).await {
                observed.message = Some(format!("{}; {why}", observed.message.unwrap_or_default()));
            } else if let Some(last) = containers::last_output(&self.docker, name).await {
                observed.message = Some(format!("{}; its last output: {last}", observed.message.unwrap_or_default()));
            }
        }
        (observed.ready, observed.ready_message) = self.readiness(spec, &observed).await;
        Ok(observed)
    }

    /// Pauses a running container whose instance asks to be paused (`spec.paused`), and unpauses a paused one
    /// that no longer asks: the cgroup freezer, applied from the desired state on every reconcile, so that it
    /// holds across an operator restart and a `kubectl patch`. A refusal is retried (the container may be
    /// between states), never a reason to fail the instance.
    async fn freeze_as_desired(
        &self,
        inst: &EnvInstance,
        name: &str,
        c: ContainerInspectResponse,
    ) -> Result<ContainerInspectResponse, EngineError> {
        let state = c.state.as_ref().and_then(|s| s.status);
        let (result, what) = match (inst.spec.paused, state) {
            (true, Some(ContainerStateStatusEnum::RUNNING)) => (self.docker.pause_container(name).await, "pausing"),
            (false, Some(ContainerStateStatusEnum::PAUSED)) => (self.docker.unpause_container(name).await, "resuming"),
            _ => return Ok(c),
        };
        result.map_err(|e| {
            let e = classify(&format!("{what} container {name}"), e);
            if e.kind() == ErrorKind::Unavailable { e } else { e.as_kind(ErrorKind::Transient) }
        })?;
        debug!(container = name, what, "applied the desired pause state");
        self.inspect(name)
            .await?
            .ok_or_else(|| EngineError::transient(format!("container {name} disappeared while {what} it")))
    }

    fn ours(&self, c: &ContainerInspectResponse) -> bool {
        c.config
            .as_ref()
            .and_then(|cfg| cfg.labels.as_ref())
            .and_then(|l| l.get(labels::OPERATOR_ID))
            .is_some_and(|id| *id == self.config.operator_id)
    }
}

/// What a container joins, as [`DockerEngine::prepare_network`] and [`DockerEngine::prepare_volumes`] found
/// it: the network, and the Docker volume behind each of the spec's volumes (in order).
#[derive(Debug, Default)]
struct Joins {
    network: String,
    volumes: Vec<String>,
}

/// What a create found.
#[derive(Debug, PartialEq, Eq)]
enum Made {
    Created,
    /// A container of that name exists already.
    NameTaken,
}

#[async_trait]
impl Engine for DockerEngine {
    fn name(&self) -> &'static str {
        "docker"
    }

    fn validate(&self, spec: &EnvInstanceSpec) -> Result<(), InvalidSpec> {
        no_compose_labels(spec)?;
        if spec.placement.is_some() {
            return Err(InvalidSpec::new(
                "deployConfig.placement",
                "field `deployConfig.placement` places instances over the nodes of a Docker Swarm; this operator runs them on one Docker host (--engine docker): remove it, or run the operator with --engine swarm",
            ));
        }
        if let Some(why) = spec.volumes.iter().find_map(|v| v.check()) {
            return Err(InvalidSpec::new("volumes", why));
        }
        if !spec.volumes.is_empty() && spec.compose_file.is_some() {
            return Err(InvalidSpec::new(
                "volumes",
                "field `volumes` applies to one container; a compose stack declares its volumes in its compose file",
            ));
        }
        if let Workload::Stack { compose_file } = spec.workload() {
            if !self.config.compose {
                return Err(InvalidSpec::new(
                    "deployConfig.composeFile",
                    "field `deployConfig.composeFile`: compose stacks are turned off on this operator (--disable-compose)",
                ));
            }
            return compose::plan(spec, compose_file, &self.config.policy).map(|_| ());
        }
        if let Some(image) = spec.image.as_deref() {
            self.config.policy.check_image(image, "image")?;
        }
        let network = self.network_of(spec);
        if network == "host" {
            self.config.policy.check(Allowance::HostNetwork, "deployConfig.network")?;
        }
        if let Some(alias) = spec.network_aliases.iter().find(|a| !is_dns_label(a)) {
            return Err(InvalidSpec::new(
                "networkAliases",
                format!("field `networkAliases`: {alias:?} is not a DNS label (lowercase letters, digits and '-')"),
            ));
        }
        if !spec.network_aliases.is_empty() && network::is_builtin(&network) {
            return Err(InvalidSpec::new(
                "networkAliases",
                format!("field `networkAliases` needs a user network; network {network:?} has no names of its own"),
            ));
        }
        if (network == "host" || network == "none") && !spec.ports.is_empty() {
            return Err(InvalidSpec::new(
                "deployConfig.ports",
                format!(
                    "field `deployConfig.ports` needs a bridge or user network; with network {network:?} nothing can be published"
                ),
            ));
        }
        Ok(())
    }

    async fn admit(&self, spec: &EnvInstanceSpec) -> Result<(), InvalidSpec> {
        crate::image::admit_images(spec, &self.config.policy).await
    }

    async fn apply(&self, inst: &EnvInstance) -> Result<Observed, EngineError> {
        if let Workload::Stack { compose_file } = inst.spec.workload() {
            return compose::run::apply(&self.docker, &self.config, &self.platform, inst, compose_file).await;
        }
        let name = inst.metadata.name.clone().unwrap_or_default();
        // A new instance (no container recorded yet) is created straight away: one call fewer on the hot path.
        // A taken name (a create from before a restart) falls through to adoption below.
        if inst.status.as_ref().and_then(|s| s.container_id.as_ref()).is_none()
            && self.create_and_start(inst, &name).await? == Made::Created
            && !inst.spec.paused
        {
            return self.observe_running(&inst.spec, &name).await;
        }
        let existing = self.inspect(&name).await?;
        let container = match existing {
            Some(c) if !self.ours(&c) => {
                return Err(EngineError::permanent(format!(
                    "a container named {name} exists on the Docker host and was not created by this operator"
                )));
            }
            Some(c) if matches!(c.state.as_ref().and_then(|s| s.status), Some(ContainerStateStatusEnum::CREATED)) => {
                // Created but never started (the operator stopped in between): start it now.
                self.start(&name).await?;
                self.inspect(&name).await?
            }
            Some(c) => Some(c),
            None if inst.status.as_ref().is_some_and(|s| s.container_id.is_some()) => {
                return Ok(Observed {
                    phase: Phase::Terminated,
                    message: Some(format!("container {name} was removed outside the operator")),
                    ..Default::default()
                });
            }
            None => match self.create_and_start(inst, &name).await? {
                Made::Created => self.inspect(&name).await?,
                // The name is taken but the container was not found a moment ago: a create from before a restart
                // is still in flight in the daemon (it may yet be rolled back). Try again shortly.
                Made::NameTaken => {
                    return Err(EngineError::transient(format!(
                        "a container named {name} is still being created by an earlier attempt; retrying"
                    )));
                }
            },
        };
        let Some(container) = container else {
            return Err(EngineError::transient(format!("container {name} disappeared while it was being started")));
        };
        let container = self.freeze_as_desired(inst, &name, container).await?;
        self.observed(&inst.spec, &name, &container).await
    }

    async fn apply_afresh(&self, inst: &EnvInstance) -> Result<Observed, EngineError> {
        if let Workload::Container { .. } = inst.spec.workload() {
            let name = inst.metadata.name.clone().unwrap_or_default();
            // Docker reports `created` only for a container that has never run (a start that failed leaves it
            // so): removing it loses nothing, and the new container has a new id, which no task the runtime kept
            // for the old one can be in the way of.
            if let Some(c) = self.inspect(&name).await?
                && self.ours(&c)
                && matches!(c.state.as_ref().and_then(|s| s.status), Some(ContainerStateStatusEnum::CREATED))
            {
                debug!(container = %name, "making again a container whose start failed and that never ran");
                if containers::remove(&self.docker, &name).await? == containers::Removal::InProgress {
                    return Err(EngineError::transient(format!(
                        "container {name} is being removed to be made again; retrying"
                    )));
                }
                if self.create_and_start(inst, &name).await? == Made::Created && !inst.spec.paused {
                    return self.observe_running(&inst.spec, &name).await;
                }
            }
        }
        self.apply(inst).await
    }

    async fn delete(&self, inst: &EnvInstance) -> Result<(), EngineError> {
        let name = inst.metadata.name.clone().unwrap_or_default();
        if let Workload::Stack { .. } = inst.spec.workload() {
            return compose::run::delete(&self.docker, &self.config.operator_id, &name).await;
        }
        if !self.config.stop_timeout.is_zero() {
            let options = StopContainerOptionsBuilder::default().t(self.config.stop_timeout.as_secs() as i32).build();
            match self.docker.stop_container(&name, Some(options)).await {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                Err(bollard::errors::Error::DockerResponseServerError { status_code: 304, .. }) => {}
                Err(e) => return Err(classify(&format!("stopping container {name}"), e)),
            }
        }
        remove_container(&self.docker, &name).await?;
        let _one_at_a_time = self.network_lock.lock().await;
        let ours = network::Maker::Operator(&self.config.operator_id);
        for net in std::iter::once(self.network_of(&inst.spec)).chain(self.legacy_network_of(&inst.spec)) {
            network::remove_if_unused(&self.docker, &net, ours).await?;
        }
        Ok(())
    }

    async fn delete_owned(&self, object: &OwnedObject) -> Result<(), EngineError> {
        match object.kind {
            OwnedKind::Network => compose::run::remove_network(&self.docker, &object.id).await,
            OwnedKind::Volume => match volume::made_by_of(&self.docker, &object.id).await? {
                Some(maker) if maker == self.config.operator_id => {
                    compose::run::remove_volume(&self.docker, &object.id).await
                }
                Some(maker) => {
                    debug!(volume = %object.id, %maker, "not removing a volume another operator made");
                    Ok(())
                }
                None => Ok(()),
            },
            OwnedKind::ServiceVolume => {
                volume::remove_service_volume(&self.docker, &self.config.operator_id, &object.id).await
            }
            OwnedKind::Container => remove_container(&self.docker, &object.id).await,
            OwnedKind::SharedNetwork => {
                // Still unused? (An instance may have joined it since the list.) Removed only if so.
                // Any aenv operator's: the resync lists this operator's unused ones, and the sweep other operators'
                // (a lost store's, one that is gone) once they are unused for longer than the grace.
                let _one_at_a_time = self.network_lock.lock().await;
                network::remove_if_unused(&self.docker, &object.id, network::Maker::AnyOperator).await
            }
        }
    }

    async fn list_owned(&self) -> Result<Vec<OwnedObject>, EngineError> {
        let options = ListContainersOptionsBuilder::default().all(true).filters(&self.owned_filter()).build();
        let containers =
            self.docker.list_containers(Some(options)).await.map_err(|e| classify("listing containers", e))?;
        // A stack's objects all carry the stack's phase (judged by its main service), so that a resync compares
        // the instance with its stack rather than with whichever of its containers is listed last.
        let stacks = compose::status::stack_phases(&containers);
        let in_use: HashSet<String> = containers
            .iter()
            .filter_map(|c| c.network_settings.as_ref()?.networks.as_ref())
            .flat_map(|nets| nets.keys().cloned())
            .collect();
        let mut owned: Vec<OwnedObject> = containers
            .into_iter()
            .filter_map(|c| {
                let (namespace, instance) = labels::instance_of(|k| c.labels.as_ref()?.get(k))?;
                let phase = stacks
                    .get(&(namespace.clone(), instance.clone()))
                    .copied()
                    .unwrap_or_else(|| containers::summary_phase(c.state.as_ref()));
                Some(OwnedObject {
                    namespace,
                    instance,
                    kind: OwnedKind::Container,
                    id: c.id.clone()?,
                    phase,
                    created: c.created.and_then(|s| Timestamp::from_second(s).ok()),
                })
            })
            .collect();
        // Stack networks and volumes come after the containers, so an orphan sweep removes those first.
        owned.extend(
            compose::status::owned_networks_and_volumes(&self.docker, &self.owned_filter(), &stacks, &in_use).await?,
        );
        Ok(owned)
    }

    async fn list_managed(&self) -> Result<Vec<ManagedObject>, EngineError> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("{}={}", labels::MANAGED_BY, labels::MANAGED_BY_VALUE)],
        )]);
        let managed = |l: &HashMap<String, String>, kind: OwnedKind, id: String, phase: Phase, created| {
            let (namespace, instance) = labels::instance_of(|k| l.get(k))?;
            Some(ManagedObject {
                object: OwnedObject { namespace, instance, kind, id, phase, created },
                operator_id: l.get(labels::OPERATOR_ID).cloned().unwrap_or_default(),
                expires_at: l.get(labels::EXPIRE_AT).and_then(|t| t.parse::<Timestamp>().ok()),
            })
        };
        let mut out = Vec::new();
        let options = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
        let containers =
            self.docker.list_containers(Some(options)).await.map_err(|e| classify("listing containers", e))?;
        for c in containers {
            let (Some(l), Some(id)) = (c.labels.as_ref(), c.id.clone()) else { continue };
            let created = c.created.and_then(|s| Timestamp::from_second(s).ok());
            out.extend(managed(l, OwnedKind::Container, id, containers::summary_phase(c.state.as_ref()), created));
        }
        // Stack networks and volumes after the containers, so that a sweep removes those first.
        let options = ListNetworksOptionsBuilder::default().filters(&filters).build();
        let networks = self.docker.list_networks(Some(options)).await.map_err(|e| classify("listing networks", e))?;
        let mut shared = Vec::new();
        for n in networks {
            let (Some(l), Some(id)) = (n.labels.as_ref(), n.id.clone()) else { continue };
            let created = n.created.as_deref().and_then(|t| t.parse::<Timestamp>().ok());
            if labels::instance_of(|k| l.get(k)).is_none() && network::made_by_any(Some(l)) {
                // A network instances share, of another operator id (a lost store's, an operator that is gone).
                if !network::made_by(Some(l), &self.config.operator_id)
                    && let Some(name) = n.name.clone()
                {
                    shared.push((name, l.get(network::NETWORK_LABEL).cloned().unwrap_or_default(), created));
                }
                continue;
            }
            out.extend(managed(l, OwnedKind::Network, id, Phase::Creating, created));
        }
        if !shared.is_empty() {
            // Listed only when no container (of whatever origin, in whatever state) is on it: the removal checks
            // again, since one may join it meanwhile.
            let options = ListContainersOptionsBuilder::default().all(true).build();
            let every =
                self.docker.list_containers(Some(options)).await.map_err(|e| classify("listing containers", e))?;
            let in_use: HashSet<String> = every
                .iter()
                .filter_map(|c| c.network_settings.as_ref()?.networks.as_ref())
                .flat_map(|nets| nets.keys().cloned())
                .collect();
            out.extend(shared.into_iter().filter(|(name, _, _)| !in_use.contains(name)).map(
                |(name, operator_id, created)| ManagedObject {
                    object: OwnedObject {
                        namespace: String::new(),
                        instance: String::new(),
                        kind: OwnedKind::SharedNetwork,
                        id: name,
                        phase: Phase::Terminated,
                        created,
                    },
                    operator_id,
                    expires_at: None,
                },
            ));
        }
        let options = ListVolumesOptionsBuilder::default().filters(&filters).build();
        let volumes = self.docker.list_volumes(Some(options)).await.map_err(|e| classify("listing volumes", e))?;
        for v in volumes.volumes.unwrap_or_default() {
            let created = v.created_at.as_deref().and_then(|t| t.parse::<Timestamp>().ok());
            out.extend(managed(&v.labels, OwnedKind::Volume, v.name, Phase::Creating, created));
        }
        Ok(out)
    }

    fn events(&self) -> BoxStream<'static, EngineEvent> {
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(crate::events::pump_events(self.docker.clone(), self.config.operator_id.clone(), tx));
        tokio_stream::wrappers::ReceiverStream::new(rx).boxed()
    }

    fn logs(
        &self,
        inst: &EnvInstance,
        follow: bool,
        tail: Option<u64>,
    ) -> BoxStream<'static, Result<Vec<u8>, EngineError>> {
        let name = inst.metadata.name.clone().unwrap_or_default();
        let tail = tail.map_or_else(|| "all".to_string(), |n| n.to_string());
        let options = LogsOptionsBuilder::default().follow(follow).stdout(true).stderr(true).tail(&tail).build();
        self.docker
            .logs(&name, Some(options))
            .map(move |item| {
                item.map(|out| out.into_bytes().to_vec())
                    .map_err(|e| classify(&format!("reading the logs of {name}"), e))
            })
            .boxed()
    }

    fn warmup(&self, spec: &EnvInstanceSpec) -> BoxStream<'static, PullProgress> {
        crate::image::warmup(
            self.docker.clone(),
            images_of(spec, &self.config.policy),
            self.config.no_pull,
            self.config.policy.clone(),
        )
    }

    fn exec(&self, inst: &EnvInstance, request: ExecRequest) -> BoxStream<'static, Result<ExecOutput, EngineError>> {
        match self.container_of(inst, request.service.as_deref()) {
            Ok(name) => crate::ops::exec(self.docker.clone(), name, request, self.journal.clone()),
            Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
        }
    }

    async fn pty(
        &self,
        inst: &EnvInstance,
        request: aenv_core::PtyRequest,
        input: BoxStream<'static, aenv_core::PtyInput>,
    ) -> Result<BoxStream<'static, Result<aenv_core::PtyOutput, EngineError>>, EngineError> {
        let container = self.container_of(inst, request.service.as_deref())?;
        crate::pty::pty(self.docker.clone(), container, request, input, self.journal.clone()).await
    }

    async fn read_path(
        &self,
        inst: &EnvInstance,
        service: Option<&str>,
        path: &SandboxPath,
        max_bytes: u64,
    ) -> Result<PathContent, EngineError> {
        crate::ops::read_path(&self.docker, &self.container_of(inst, service)?, path, max_bytes).await
    }

    async fn write_file(&self, inst: &EnvInstance, upload: FileUpload) -> Result<(), EngineError> {
        let container = self.container_of(inst, upload.service.as_deref())?;
        crate::ops::write_file(&self.docker, &container, upload).await
    }

    async fn stats(&self, inst: &EnvInstance, service: Option<&str>) -> Result<InstanceStats, EngineError> {
        crate::ops::stats(&self.docker, &self.container_of(inst, service)?).await
    }

    async fn snapshot(&self, inst: &EnvInstance, reference: &str, template: &str) -> Result<String, EngineError> {
        let container = single_container(inst)?;
        crate::ops::snapshot(&self.docker, &container, reference, template, &self.config.operator_id).await
    }

    async fn snapshot_size(&self, inst: &EnvInstance) -> Result<Option<u64>, EngineError> {
        crate::ops::snapshot_size(&self.docker, &single_container(inst)?).await
    }

    fn refuse_snapshot_images(&self, spec: &EnvInstanceSpec) -> Result<(), InvalidSpec> {
        crate::ops::refuse_snapshot_images(spec, &self.config.policy)
    }

    async fn remove_snapshot(&self, reference: &str) -> Result<(), EngineError> {
        crate::ops::remove_snapshot(&self.docker, reference).await
    }

    fn checkpoints(&self) -> aenv_core::CheckpointSupport {
        self.checkpoints.get().cloned().unwrap_or_else(|| aenv_core::CheckpointSupport {
            available: false,
            reason: "not detected (the daemon was not asked)".into(),
        })
    }

    async fn list_snapshots(&self) -> Result<Vec<aenv_core::SnapshotImage>, EngineError> {
        crate::ops::list_snapshots(&self.docker).await
    }

    async fn kill_overdue_commands(&self) -> Result<u32, EngineError> {
        let journal = self.journal.clone();
        let killed = tokio::task::spawn_blocking(move || journal.kill_overdue())
            .await
            .map_err(|e| EngineError::transient(format!("killing overdue commands: {e}")))?;
        Ok(u32::try_from(killed).unwrap_or(u32::MAX))
    }

    fn can_pause(&self, _spec: &EnvInstanceSpec) -> Result<(), EngineError> {
        // A single container, or every container of a stack.
        Ok(())
    }

    async fn ping(&self) -> Result<(), EngineError> {
        self.docker.ping().await.map(|_| ()).map_err(|e| classify(&format!("pinging {}", self.config.host_display), e))
    }
}

/// Labels under `com.docker.compose.` are Compose's bookkeeping: on a single container they would make `docker
/// compose` take it for part of a project (and act on it: `docker compose -p <project> down` removes it); on a
/// stack the operator sets its own. A request may not set them.
fn no_compose_labels(spec: &EnvInstanceSpec) -> Result<(), InvalidSpec> {
    match spec.labels.keys().find(|k| k.starts_with(compose::COMPOSE_LABEL_PREFIX)) {
        None => Ok(()),
        Some(key) => Err(InvalidSpec::new(
            "labels",
            format!(
                "field `labels` sets {key:?}: keys under {} are Docker Compose's own (the operator sets them on stacks); choose another key",
                compose::COMPOSE_LABEL_PREFIX
            ),
        )),
    }
}

impl DockerEngine {
    /// The container an operation on `inst` acts on: a single container's own, or the container of `service` of a
    /// stack (its main service when `None`: the one labelled `aenv.main`, else the first). A service the stack
    /// does not have, or one named for a single container, is a bad request naming the services there are.
    fn container_of(&self, inst: &EnvInstance, service: Option<&str>) -> Result<String, EngineError> {
        let id = inst.metadata.name.clone().unwrap_or_default();
        match inst.spec.workload() {
            Workload::Stack { compose_file } => {
                let stack = compose::plan(&inst.spec, compose_file, &self.config.policy)?;
                let service = service.unwrap_or(&stack.main);
                if !stack.services.iter().any(|s| s.name == service) {
                    let names: Vec<&str> = stack.services.iter().map(|s| s.name.as_str()).collect();
                    return Err(EngineError::permanent(format!(
                        "query `service`: the stack has no service {service:?}; its services are {}",
                        names.join(", ")
                    )));
                }
                Ok(compose::container_name(&id, service))
            }
            _ => match service {
                Some(service) => Err(EngineError::permanent(format!(
                    "query `service` ({service:?}) chooses a service of a compose stack; this instance is a single container: leave it out"
                ))),
                None => Ok(id),
            },
        }
    }
}

/// The container an operation on `inst` acts on: the instance's own. A stack has one per service; snapshots do
/// not choose among them.
fn single_container(inst: &EnvInstance) -> Result<String, EngineError> {
    match inst.spec.workload() {
        Workload::Stack { .. } => Err(EngineError::unsupported(
            "exec and files act on single-container instances; this instance is a compose stack (not supported yet)",
        )),
        _ => Ok(inst.metadata.name.clone().unwrap_or_default()),
    }
}

/// Every image a spec runs: its image, or each service's of its stack (in file order, once each).
fn images_of(spec: &EnvInstanceSpec, policy: &Policy) -> Vec<String> {
    match spec.workload() {
        Workload::Stack { compose_file } => {
            let mut images: Vec<String> = Vec::new();
            if let Ok(stack) = compose::plan(spec, compose_file, policy) {
                for svc in stack.services {
                    if !images.contains(&svc.image) {
                        images.push(svc.image);
                    }
                }
            }
            images
        }
        Workload::Container { image } => image.iter().map(|i| i.to_string()).collect(),
    }
}

/// Removes a container; one the daemon is removing already counts as removed.
async fn remove_container(docker: &Docker, name: &str) -> Result<(), EngineError> {
    containers::remove(docker, name).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use aenv_core::Placement;

    use super::*;

    #[test]
    fn placement_is_refused_on_one_host_naming_the_field() {
        // No call reaches the daemon: validation is local.
        let docker = Docker::connect_with_http("http://127.0.0.1:1", 1, bollard::API_DEFAULT_VERSION).unwrap();
        let engine = DockerEngine::new(docker, DockerEngineConfig::new("op"));
        let spec = EnvInstanceSpec {
            image: Some("img:1".into()),
            placement: Some(Placement { constraints: vec!["node.role==worker".into()], preferences: vec![] }),
            ..Default::default()
        };
        let err = engine.validate(&spec).unwrap_err();
        assert_eq!(err.field, "deployConfig.placement");
        assert!(err.message.contains("--engine swarm"), "{}", err.message);
        assert!(engine.validate(&EnvInstanceSpec { placement: None, ..spec }).is_ok());
    }
}
