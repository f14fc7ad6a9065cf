//! Applying and deleting a stack.
//!
//! Everything is named from the instance id, so `apply` is idempotent and crash-safe: a re-run finds what an
//! interrupted one made (network, volumes, containers created or started) and makes only what is missing.
//!
//! `depends_on` waits happen inside `apply`, polled every 500 ms as Compose does. A wait that lasts longer than
//! [`WAIT_SLICE`] within one apply returns a retryable error, so a slow healthcheck does not hold a reconcile
//! worker; the reconciler requeues and the next apply picks up where this one stopped. A dependency that fails
//! (exits, turns unhealthy, has no healthcheck to wait for) or is still not ready [`DEPENDENCY_TIMEOUT`] after the
//! instance was created fails the instance, naming both services.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use aenv_core::{EngineError, EnvInstance, ErrorKind, Observed, labels::InstanceLabels};
use bollard::{
    Docker,
    models::{
        ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum, EndpointSettings, HealthStatusEnum,
        HostConfig, Mount, MountTmpfsOptions, MountType, MountVolumeOptions, NetworkCreateRequest, NetworkingConfig,
        PortBinding, RestartPolicy, RestartPolicyNameEnum, VolumeCreateRequest,
    },
    query_parameters::{
        CreateContainerOptionsBuilder, ListContainersOptionsBuilder, ListNetworksOptionsBuilder,
        ListVolumesOptionsBuilder, RemoveVolumeOptionsBuilder,
    },
};
use futures::future::{join_all, try_join_all};
use jiff::Timestamp;
use tracing::{debug, warn};

use super::{
    MAIN_SERVICE_LABEL, compose_labels as cl, container_name, network_name, plan,
    spec::{Condition, Dependency, MountSpec, ServiceSpec, StackSpec},
    status, volume_name,
};
use crate::{
    DockerEngineConfig,
    containers::{self, Removal},
    error::{classify, classify_start, is_conflict, is_not_found},
    image::ensure_image,
};

/// How often a `depends_on` condition is checked (Compose's interval).
const POLL: Duration = Duration::from_millis(500);
/// Longest a single apply waits on `depends_on` before handing the worker back (the wait resumes on requeue).
const WAIT_SLICE: Duration = Duration::from_secs(30);
/// How long after the instance's creation a dependency may still be not ready before the instance fails.
pub(crate) const DEPENDENCY_TIMEOUT: Duration = Duration::from_secs(300);

/// What one apply works with.
struct Ctx<'a> {
    docker: &'a Docker,
    config: &'a DockerEngineConfig,
    id: String,
    stack: StackSpec,
    /// The operator's and Compose's labels shared by every object of the stack.
    base_labels: BTreeMap<String, String>,
    /// The instance's user labels (copied onto every container).
    user_labels: BTreeMap<String, String>,
    pull_policy: aenv_core::PullPolicy,
    created: Option<Timestamp>,
    started: Instant,
}

pub(crate) async fn apply(
    docker: &Docker,
    config: &DockerEngineConfig,
    platform: &containers::HostPlatform,
    inst: &EnvInstance,
    compose_file: &str,
) -> Result<Observed, EngineError> {
    let id = inst.metadata.name.clone().unwrap_or_default();
    let mut stack = plan(&inst.spec, compose_file, &config.policy)?;
    apply_instance_limits(inst, &mut stack)?;
    let mut base_labels = InstanceLabels::of(inst, &config.operator_id)
        .map_err(|e| EngineError::permanent(e.to_string()))?
        .render(&BTreeMap::new());
    base_labels.insert(cl::PROJECT.into(), id.clone());
    base_labels.insert(MAIN_SERVICE_LABEL.into(), stack.main.clone());
    let ctx = Ctx {
        docker,
        config,
        id,
        stack,
        base_labels,
        user_labels: inst.spec.labels.clone(),
        pull_policy: inst.spec.image_pull_policy.unwrap_or_default(),
        created: inst.metadata.creation_timestamp.as_ref().map(|t| t.0),
        started: Instant::now(),
    };

    let existing = ctx.inspect_all().await?;
    for c in existing.values().flatten() {
        if !ctx.ours(c) {
            return Err(EngineError::permanent(format!(
                "a container named {} exists on the Docker host and was not created by this operator",
                c.name.as_deref().unwrap_or_default().trim_start_matches('/')
            )));
        }
    }
    // Made before (the status says so): report what is there, never make it again.
    let created_before = inst.status.as_ref().is_some_and(|s| s.container_id.is_some());
    if !created_before {
        ctx.ensure_network().await?;
        ctx.ensure_volumes().await?;
        ctx.ensure_images().await?;
        try_join_all(ctx.stack.services.iter().map(|svc| ctx.ensure_service(svc, existing.get(&svc.name)))).await?;
    }
    let mut after = ctx.inspect_all().await?;
    if ctx.freeze_as_desired(inst.spec.paused, &after).await? {
        after = ctx.inspect_all().await?;
    }
    let mut observed = status::observe(&ctx.id, &ctx.stack, &after, created_before);
    if observed.phase == aenv_core::Phase::Failed {
        // A service whose image is for another platform exits with nothing but `exec format error` to say why.
        for svc in &ctx.stack.services {
            let Some(Some(c)) = after.get(&svc.name) else { continue };
            if let Some(why) = containers::platform_mismatch(docker, platform, c).await {
                let msg = observed.message.unwrap_or_default();
                observed.message = Some(format!("{msg}; service {}: {why}", svc.name));
                break;
            }
        }
    }
    Ok(observed)
}

/// `deployConfig.cpu` / `memory` are the main service's limits when the file sets none for it.
pub fn apply_instance_limits(inst: &EnvInstance, stack: &mut StackSpec) -> Result<(), EngineError> {
    let res = &inst.spec.resources;
    let main = stack.main.clone();
    let Some(svc) = stack.services.iter_mut().find(|s| s.name == main) else { return Ok(()) };
    let permanent = |e: aenv_core::Error| EngineError::permanent(e.to_string());
    if svc.nano_cpus.is_none() {
        svc.nano_cpus = res.nano_cpus().map_err(permanent)?;
    }
    if svc.memory.is_none() {
        svc.memory = res.memory_bytes().map_err(permanent)?;
    }
    Ok(())
}

impl Ctx<'_> {
    /// Pauses every running container of the stack when the instance asks to be paused (`spec.paused`), and
    /// unpauses every paused one when it does not: the cgroup freezer, from the desired state on every apply, as
    /// for a single container. Whether anything changed. A refusal is retried (a container between states).
    async fn freeze_as_desired(
        &self,
        paused: bool,
        containers: &HashMap<String, Option<ContainerInspectResponse>>,
    ) -> Result<bool, EngineError> {
        let mut changed = false;
        for svc in &self.stack.services {
            let Some(Some(c)) = containers.get(&svc.name) else { continue };
            let name = container_name(&self.id, &svc.name);
            let result = match (paused, c.state.as_ref().and_then(|s| s.status)) {
                (true, Some(ContainerStateStatusEnum::RUNNING)) => self.docker.pause_container(&name).await,
                (false, Some(ContainerStateStatusEnum::PAUSED)) => self.docker.unpause_container(&name).await,
                _ => continue,
            };
            result.map_err(|e| {
                let e = classify(&format!("{} container {name}", if paused { "pausing" } else { "resuming" }), e);
                if e.kind() == ErrorKind::Unavailable { e } else { e.as_kind(ErrorKind::Transient) }
            })?;
            debug!(container = %name, paused, "applied the desired pause state");
            changed = true;
        }
        Ok(changed)
    }

    fn ours(&self, c: &ContainerInspectResponse) -> bool {
        c.config
            .as_ref()
            .and_then(|cfg| cfg.labels.as_ref())
            .and_then(|l| l.get(aenv_core::labels::OPERATOR_ID))
            .is_some_and(|id| *id == self.config.operator_id)
    }

    async fn inspect(&self, service: &str) -> Result<Option<ContainerInspectResponse>, EngineError> {
        containers::inspect(self.docker, &container_name(&self.id, service)).await
    }

    async fn inspect_all(&self) -> Result<HashMap<String, Option<ContainerInspectResponse>>, EngineError> {
        let found = try_join_all(
            self.stack.services.iter().map(|s| async move { self.inspect(&s.name).await.map(|c| (s.name.clone(), c)) }),
        )
        .await?;
        Ok(found.into_iter().collect())
    }

    async fn ensure_network(&self) -> Result<(), EngineError> {
        if self.stack.services.iter().all(|s| s.host_network) {
            return Ok(());
        }
        let name = network_name(&self.id);
        match self.docker.inspect_network(&name, None).await {
            Ok(net) => {
                let ours = net
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(aenv_core::labels::OPERATOR_ID))
                    .is_some_and(|id| *id == self.config.operator_id);
                return if ours {
                    Ok(())
                } else {
                    Err(EngineError::permanent(format!(
                        "a network named {name} exists on the Docker host and was not created by this operator"
                    )))
                };
            }
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(classify(&format!("inspecting network {name}"), e)),
        }
        let mut labels = self.base_labels.clone();
        labels.insert(cl::NETWORK.into(), "default".into());
        let request = NetworkCreateRequest {
            name: name.clone(),
            driver: Some("bridge".into()),
            labels: Some(labels.into_iter().collect()),
            ..Default::default()
        };
        match self.docker.create_network(request).await {
            Ok(_) => {
                debug!(network = %name, "stack network created");
                Ok(())
            }
            // Created meanwhile (a concurrent attempt): adopted on the next apply.
            Err(e) if is_conflict(&e) => {
                Err(EngineError::transient(format!("network {name} is being created by an earlier attempt; retrying")))
            }
            Err(e) => Err(classify(&format!("creating network {name}"), e)),
        }
    }

    async fn ensure_volumes(&self) -> Result<(), EngineError> {
        for vol in &self.stack.volumes {
            let name = volume_name(&self.id, &vol.name);
            let mut labels = vol.labels.clone();
            labels.extend(self.base_labels.clone());
            labels.insert(cl::VOLUME.into(), vol.name.clone());
            // Creating an existing local volume returns it: the call is idempotent.
            let request = VolumeCreateRequest {
                name: Some(name.clone()),
                driver: Some("local".into()),
                labels: Some(labels.into_iter().collect()),
                ..Default::default()
            };
            let created = self
                .docker
                .create_volume(request)
                .await
                .map_err(|e| classify(&format!("creating volume {name}"), e))?;
            let ours =
                created.labels.get(aenv_core::labels::OPERATOR_ID).is_some_and(|id| *id == self.config.operator_id);
            if !ours {
                return Err(EngineError::permanent(format!(
                    "a volume named {name} exists on the Docker host and was not created by this operator"
                )));
            }
        }
        Ok(())
    }

    async fn ensure_images(&self) -> Result<(), EngineError> {
        let mut seen = Vec::new();
        for svc in &self.stack.services {
            if seen.contains(&svc.image) {
                continue;
            }
            seen.push(svc.image.clone());
            ensure_image(self.docker, &svc.image, self.pull_policy, &self.config.policy)
                .await
                .map_err(|e| in_service(e, |m| format!("service {}: {m}", svc.name)))?;
        }
        Ok(())
    }

    /// Waits for the service's dependencies, then creates and starts its container (or starts one an earlier,
    /// interrupted apply created).
    async fn ensure_service(
        &self,
        svc: &ServiceSpec,
        existing: Option<&Option<ContainerInspectResponse>>,
    ) -> Result<(), EngineError> {
        let name = container_name(&self.id, &svc.name);
        let state = existing.and_then(|c| c.as_ref()).and_then(|c| c.state.as_ref()).and_then(|s| s.status);
        match state {
            None => {}
            Some(ContainerStateStatusEnum::CREATED) => {}
            // Running, or ran: nothing to do (a stopped service is judged by the status, not restarted).
            Some(_) => return Ok(()),
        }
        for dep in &svc.depends_on {
            self.wait_for(svc, dep).await?;
        }
        if state.is_none() {
            let body = self.container_body(svc);
            let options = CreateContainerOptionsBuilder::default().name(&name).build();
            match self.docker.create_container(Some(options), body).await {
                Ok(created) => debug!(container = %created.id, service = %svc.name, "stack container created"),
                Err(e) if is_conflict(&e) => {
                    return Err(EngineError::transient(format!(
                        "a container named {name} is still being created by an earlier attempt; retrying"
                    )));
                }
                Err(e) => {
                    let e = classify(&format!("creating container {name}"), e);
                    return Err(in_service(e, |m| format!("service {}: {m}", svc.name)));
                }
            }
        }
        match self.docker.start_container(&name, None).await {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 304, .. }) => Ok(()),
            Err(e) if is_not_found(&e) => {
                Err(EngineError::transient(format!("container {name} disappeared before it started; retrying")))
            }
            Err(e) => Err(in_service(classify_start(&format!("starting container {name}"), e), |m| {
                format!("service {} could not start: {m}", svc.name)
            })),
        }
    }

    /// Polls the dependency's container every 500 ms until its condition holds.
    async fn wait_for(&self, svc: &ServiceSpec, dep: &Dependency) -> Result<(), EngineError> {
        let what = match dep.condition {
            Condition::Started => "to start",
            Condition::Healthy => "to be healthy",
            Condition::CompletedSuccessfully => "to complete successfully",
        };
        loop {
            let c = self.inspect(&dep.service).await?;
            match judge(c.as_ref(), dep.condition) {
                Wait::Ready => return Ok(()),
                Wait::Failed(why) => {
                    let msg = format!(
                        "service {} depends on service {} {what} ({}), but {} {why}",
                        svc.name,
                        dep.service,
                        dep.condition.as_str(),
                        dep.service
                    );
                    if dep.required {
                        return Err(EngineError::permanent(msg));
                    }
                    warn!(instance = %self.id, "{msg}; starting {} anyway (required: false)", svc.name);
                    return Ok(());
                }
                Wait::NotYet => {}
            }
            let since_creation = self
                .created
                .map(|t| Duration::from_millis((Timestamp::now().as_millisecond() - t.as_millisecond()).max(0) as u64))
                .unwrap_or_else(|| self.started.elapsed());
            if since_creation >= DEPENDENCY_TIMEOUT {
                return Err(EngineError::permanent(format!(
                    "service {} waited {} s for service {} {what} ({}); giving up",
                    svc.name,
                    DEPENDENCY_TIMEOUT.as_secs(),
                    dep.service,
                    dep.condition.as_str()
                )));
            }
            if self.started.elapsed() >= WAIT_SLICE {
                return Err(EngineError::transient(format!(
                    "service {} is waiting for service {} {what}",
                    svc.name, dep.service
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn container_body(&self, svc: &ServiceSpec) -> ContainerCreateBody {
        let cname = container_name(&self.id, &svc.name);
        let mut labels = self.user_labels.clone();
        labels.extend(svc.labels.clone());
        // Bookkeeping wins over user labels (the parser refuses reserved keys anyway).
        labels.extend(self.base_labels.clone());
        labels.insert(cl::SERVICE.into(), svc.name.clone());
        labels.insert(cl::CONTAINER_NUMBER.into(), "1".into());
        labels.insert(cl::ONEOFF.into(), "False".into());
        labels.insert(cl::CONFIG_HASH.into(), svc.config_hash.clone());
        labels.insert(cl::CONFIG_FILES.into(), "deployConfig.composeFile".into());
        labels.insert(cl::WORKING_DIR.into(), "/".into());

        let mut exposed: Vec<String> = svc.expose.clone();
        let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
        for p in &svc.ports {
            let key = format!("{}/{}", p.container_port, p.protocol);
            if !exposed.contains(&key) {
                exposed.push(key.clone());
            }
            bindings.entry(key).or_insert_with(|| Some(Vec::new())).get_or_insert_with(Vec::new).push(PortBinding {
                host_ip: Some(p.host_ip.clone().unwrap_or_else(|| self.config.policy.publish_host_ip().to_string())),
                host_port: Some(p.host_port.map(|h| h.to_string()).unwrap_or_default()),
            });
        }
        let mounts: Vec<Mount> = svc
            .mounts
            .iter()
            .map(|m| match m {
                MountSpec::Volume { source, target, read_only, nocopy } => Mount {
                    target: Some(target.clone()),
                    source: source.as_ref().map(|s| volume_name(&self.id, s)),
                    typ: Some(MountType::VOLUME),
                    read_only: Some(*read_only),
                    volume_options: nocopy.then(|| MountVolumeOptions { no_copy: Some(true), ..Default::default() }),
                    ..Default::default()
                },
                MountSpec::Bind { source, target, read_only } => Mount {
                    target: Some(target.clone()),
                    source: Some(source.clone()),
                    typ: Some(MountType::BIND),
                    read_only: Some(*read_only),
                    ..Default::default()
                },
                MountSpec::Tmpfs { target, size } => Mount {
                    target: Some(target.clone()),
                    typ: Some(MountType::TMPFS),
                    tmpfs_options: size.map(|s| MountTmpfsOptions { size_bytes: Some(s), ..Default::default() }),
                    ..Default::default()
                },
            })
            .collect();
        let network = network_name(&self.id);
        let networking_config = (!svc.host_network).then(|| NetworkingConfig {
            endpoints_config: Some(HashMap::from([(
                network.clone(),
                EndpointSettings { aliases: Some(vec![svc.name.clone(), cname.clone()]), ..Default::default() },
            )])),
        });
        let mut host_config = HostConfig {
            nano_cpus: svc.nano_cpus,
            memory: svc.memory,
            // No swap beyond the memory limit, as for single containers.
            memory_swap: svc.memory,
            network_mode: Some(if svc.host_network { "host".into() } else { network }),
            port_bindings: (!bindings.is_empty()).then_some(bindings),
            mounts: (!mounts.is_empty()).then_some(mounts),
            tmpfs: (!svc.tmpfs.is_empty()).then(|| svc.tmpfs.clone().into_iter().collect()),
            pid_mode: svc.pid_host.then(|| "host".to_string()),
            ipc_mode: svc.ipc_host.then(|| "host".to_string()),
            devices: (!svc.devices.is_empty()).then(|| svc.devices.clone()),
            readonly_rootfs: svc.read_only.then_some(true),
            init: svc.init.then_some(true),
            restart_policy: Some(RestartPolicy { name: Some(RestartPolicyNameEnum::NO), maximum_retry_count: None }),
            ..Default::default()
        };
        // The safe defaults of single containers, then what the file asks beyond them (the policy allowed it).
        self.config.hardening.apply(&mut host_config);
        if svc.privileged {
            host_config.privileged = Some(true);
        }
        if let Some(kept) = host_config.cap_add.as_mut() {
            // As Compose applies them: drops first, then adds.
            kept.retain(|c| !svc.cap_drop.iter().any(|d| d.eq_ignore_ascii_case(c) || d.eq_ignore_ascii_case("ALL")));
            let added: Vec<String> = svc.cap_add.iter().filter(|c| !kept_contains(kept, c)).cloned().collect();
            kept.extend(added);
        }
        ContainerCreateBody {
            image: Some(svc.image.clone()),
            cmd: svc.command.clone(),
            entrypoint: svc.entrypoint.clone(),
            env: Some(svc.environment.clone()),
            labels: Some(labels.into_iter().collect()),
            exposed_ports: (!exposed.is_empty()).then_some(exposed),
            working_dir: svc.working_dir.clone(),
            user: svc.user.clone(),
            hostname: svc.hostname.clone(),
            healthcheck: svc.healthcheck.clone(),
            host_config: Some(host_config),
            networking_config,
            ..Default::default()
        }
    }
}

enum Wait {
    Ready,
    NotYet,
    Failed(String),
}

/// Whether a dependency's container satisfies a condition, as Compose judges it.
fn judge(c: Option<&ContainerInspectResponse>, condition: Condition) -> Wait {
    let Some(state) = c.and_then(|c| c.state.as_ref()) else { return Wait::NotYet };
    let exited = matches!(state.status, Some(ContainerStateStatusEnum::EXITED) | Some(ContainerStateStatusEnum::DEAD));
    let code = state.exit_code.unwrap_or_default();
    let running = matches!(state.status, Some(ContainerStateStatusEnum::RUNNING));
    match condition {
        Condition::Started if running || exited => Wait::Ready,
        Condition::Started => Wait::NotYet,
        Condition::CompletedSuccessfully if exited && code == 0 => Wait::Ready,
        Condition::CompletedSuccessfully if exited => Wait::Failed(format!("exited with code {code}")),
        Condition::CompletedSuccessfully => Wait::NotYet,
        Condition::Healthy if exited => Wait::Failed(format!("exited with code {code} before it was healthy")),
        Condition::Healthy => match state.health.as_ref().and_then(|h| h.status) {
            Some(HealthStatusEnum::HEALTHY) => Wait::Ready,
            Some(HealthStatusEnum::UNHEALTHY) => Wait::Failed(format!("is unhealthy{}", last_probe(state))),
            Some(HealthStatusEnum::STARTING) => Wait::NotYet,
            // Created, not started yet: its health is not known.
            _ if matches!(state.status, Some(ContainerStateStatusEnum::CREATED)) => Wait::NotYet,
            _ => Wait::Failed("has no healthcheck (add one to the service or its image)".into()),
        },
    }
}

/// `: <output of the last failing probe>`, trimmed, when Docker kept it.
fn last_probe(state: &bollard::models::ContainerState) -> String {
    let out = state
        .health
        .as_ref()
        .and_then(|h| h.log.as_ref())
        .and_then(|log| log.last())
        .and_then(|r| r.output.clone())
        .unwrap_or_default();
    let out = out.trim();
    if out.is_empty() {
        String::new()
    } else {
        let short: String = out.chars().take(200).collect();
        format!(": last probe said {short:?}")
    }
}

fn instance_filter(operator_id: &str, instance: &str) -> HashMap<String, Vec<String>> {
    HashMap::from([(
        "label".to_string(),
        vec![
            format!("{}={operator_id}", aenv_core::labels::OPERATOR_ID),
            format!("{}={instance}", aenv_core::labels::INSTANCE),
        ],
    )])
}

/// Removes every container, the network and the volumes of a stack, found by label (so it needs no compose
/// file). Succeeds when nothing is left.
pub(crate) async fn delete(docker: &Docker, operator_id: &str, instance: &str) -> Result<(), EngineError> {
    let filters = instance_filter(operator_id, instance);
    let options = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
    let containers = docker.list_containers(Some(options)).await.map_err(|e| classify("listing containers", e))?;
    let removals =
        containers.iter().filter_map(|c| c.id.clone()).map(|id| async move { remove_container(docker, &id).await });
    join_all(removals).await.into_iter().collect::<Result<Vec<_>, _>>()?;

    let options = ListNetworksOptionsBuilder::default().filters(&filters).build();
    let networks = docker.list_networks(Some(options)).await.map_err(|e| classify("listing networks", e))?;
    for net in networks {
        if let Some(id) = net.id.as_deref().or(net.name.as_deref()) {
            remove_network(docker, id).await?;
        }
    }
    let options = ListVolumesOptionsBuilder::default().filters(&filters).build();
    let volumes = docker.list_volumes(Some(options)).await.map_err(|e| classify("listing volumes", e))?;
    for vol in volumes.volumes.unwrap_or_default() {
        remove_volume(docker, &vol.name).await?;
    }
    Ok(())
}

/// Removes a stack's container; one still being removed is waited for (its network cannot go before it).
async fn remove_container(docker: &Docker, id: &str) -> Result<(), EngineError> {
    match containers::remove(docker, id).await? {
        Removal::Gone => Ok(()),
        Removal::InProgress => {
            Err(EngineError::transient(format!("container {id} is already being removed; checking again")))
        }
    }
}

pub(crate) async fn remove_network(docker: &Docker, id: &str) -> Result<(), EngineError> {
    match docker.remove_network(id).await {
        Ok(()) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        // Endpoints still attached (a container removal in flight): try again.
        Err(e) => Err(retried(classify(&format!("removing network {id}"), e))),
    }
}

pub(crate) async fn remove_volume(docker: &Docker, name: &str) -> Result<(), EngineError> {
    let options = RemoveVolumeOptionsBuilder::default().force(true).build();
    match docker.remove_volume(name, Some(options)).await {
        Ok(()) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        // In use by a container being removed: try again.
        Err(e) => Err(retried(classify(&format!("removing volume {name}"), e))),
    }
}

/// A failure of one service that may fail the instance (permanent, or a start failure), reworded to name it
/// (others pass as they are).
fn in_service(e: EngineError, reword: impl FnOnce(&str) -> String) -> EngineError {
    if matches!(e.kind(), ErrorKind::Permanent | ErrorKind::StartFailed) { e.reworded(reword) } else { e }
}

/// A refusal that is only a race with a removal in flight: retried rather than failed.
fn retried(e: EngineError) -> EngineError {
    if e.kind() == ErrorKind::Permanent { e.as_kind(ErrorKind::Transient) } else { e }
}

fn kept_contains(kept: &[String], cap: &str) -> bool {
    let cap = cap.trim_start_matches("CAP_");
    kept.iter().any(|k| k.eq_ignore_ascii_case(cap))
}
