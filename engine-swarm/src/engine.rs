//! [`SwarmEngine`]: the [`Engine`] over a Swarm manager. A service per instance, named by the instance id.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use aenv_core::{
    Engine, EngineError, EngineEvent, EnvInstance, EnvInstanceSpec, InvalidSpec, ManagedObject, Observed, OwnedKind,
    OwnedObject, Phase, PullProgress, Workload, labels,
};
use aenv_engine_docker::{
    Allowance, NETWORK_LABEL, Prober, classify, is_conflict, is_not_found, legacy_scoped, scoped_network,
};
use async_trait::async_trait;
use bollard::{
    Docker,
    models::{Service, SystemInfo, Task, TaskState},
    query_parameters::{
        InspectServiceOptions, ListNetworksOptionsBuilder, ListServicesOptionsBuilder, ListTasksOptionsBuilder,
    },
};
use futures::{StreamExt, stream::BoxStream};
use jiff::Timestamp;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::{
    network,
    spec::{self, Reach, SwarmEngineConfig},
    stack::{self, Next},
};

/// How often the task watch lists the swarm's tasks (Docker's event stream reports no task changes).
const TASK_POLL: Duration = Duration::from_millis(750);

/// The Swarm engine: one single-replica service per instance.
#[derive(Clone)]
pub struct SwarmEngine {
    docker: Docker,
    config: SwarmEngineConfig,
    prober: Prober,
    /// Serialises overlay network creation: Docker allows two networks of one name.
    network_lock: Arc<tokio::sync::Mutex<()>>,
}

impl SwarmEngine {
    pub fn new(docker: Docker, config: SwarmEngineConfig) -> Self {
        SwarmEngine { docker, config, prober: Prober::default(), network_lock: Arc::default() }
    }

    /// Checks that the daemon is a manager of an active swarm, and says what of the sandbox defaults it cannot
    /// apply. Fails with what to do otherwise.
    pub async fn check(&self) -> Result<(), EngineError> {
        let info: SystemInfo =
            self.docker.info().await.map_err(|e| classify("asking the daemon about its swarm", e))?;
        let swarm = info.swarm.unwrap_or_default();
        let active = swarm.local_node_state.map(|s| s.to_string()).unwrap_or_default();
        if active != "active" {
            return Err(EngineError::permanent(format!(
                "the Docker daemon at {} is not part of a swarm (state {active:?}): run `docker swarm init` (or join it to one) first, or use --engine docker",
                self.config.docker.host_display
            )));
        }
        if swarm.control_available != Some(true) {
            return Err(EngineError::permanent(format!(
                "the Docker daemon at {} is a swarm worker: services are made on managers; point --docker-host at a manager",
                self.config.docker.host_display
            )));
        }
        let version = self.docker.version().await.map_err(|e| classify("asking the daemon's version", e))?;
        let api = version.api_version.unwrap_or_default();
        if !api_at_least(&api, 1, 44) {
            warn!(
                api_version = %api,
                "this Swarm manager's API is older than 1.44 (Docker 25): services cannot carry no-new-privileges, so sandboxes run without it (capabilities, pids and memory limits still apply)"
            );
        }
        if !api_at_least(&api, 1, 41) {
            warn!(api_version = %api, "this Swarm manager's API is older than 1.41 (Docker 20.10): it has no jobs, so warmups fail");
        }
        // Warmup jobs left by an operator that died during a warmup.
        crate::warmup::sweep(&self.docker, &self.config.docker.operator_id).await;
        Ok(())
    }

    /// The overlay network an instance joins (its name), and the name it had before names carried the operator
    /// id when that differs: scoped to its owner when owner networks are on, and to this operator, as on the
    /// Docker engine ([`scoped_network`]).
    fn network_of(&self, spec: &EnvInstanceSpec) -> (String, Option<String>) {
        let named = spec.network.as_deref().unwrap_or(&self.config.network);
        let id = &self.config.docker.operator_id;
        match spec.owner.as_deref() {
            Some(owner) if self.config.docker.owner_networks => {
                // The operator's own network stands for "the default" as `bridge` does on the Docker engine.
                let scoped = if named == self.config.network { "bridge" } else { named };
                (scoped_network(id, Some(owner), scoped), legacy_scoped(id, Some(owner), scoped))
            }
            _ if named == self.config.network => (named.to_string(), None),
            _ => (scoped_network(id, None, named), legacy_scoped(id, None, named)),
        }
    }

    async fn prepare_network(&self, spec: &EnvInstanceSpec) -> Result<String, EngineError> {
        let (name, legacy) = self.network_of(spec);
        let _one_at_a_time = self.network_lock.lock().await;
        // An overlay of the name before the operator id that this operator made keeps serving while it exists.
        if let Some(legacy) = legacy
            && let Some(id) = network::ours(&self.docker, &legacy, &self.config.docker.operator_id).await?
        {
            return Ok(id);
        }
        let owner = spec.owner.as_deref().filter(|_| self.config.docker.owner_networks);
        let named = spec.network.as_deref() == Some(name.as_str());
        let foreign_ok = || {
            if name == self.config.network {
                return Ok(());
            }
            if !named {
                // A name this operator derives, taken by a network it did not make (another operator's have other
                // names): made by hand. The request named no network: no field to name.
                return Err(EngineError::permanent(format!(
                    "network {name} (a name this operator gives its own networks) exists and was not created by this operator (id {}): remove it (docker network rm {name})",
                    self.config.docker.operator_id
                )));
            }
            self.config.docker.policy.check(Allowance::ExternalNetworks, "deployConfig.network").map_err(|e| {
                let msg = format!("network {name} exists and was not created by aenv-operator: {}", e.message);
                EngineError::permanent(msg).with_source(e)
            })
        };
        network::ensure(&self.docker, &name, &self.config.docker.operator_id, owner, foreign_ok).await
    }

    async fn service(&self, name: &str) -> Result<Option<Service>, EngineError> {
        match self.docker.inspect_service(name, None::<InspectServiceOptions>).await {
            Ok(s) => Ok(Some(s)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(classify(&format!("inspecting service {name}"), e)),
        }
    }

    async fn tasks_of(&self, service_id: &str) -> Result<Vec<Task>, EngineError> {
        let filters = HashMap::from([("service".to_string(), vec![service_id.to_string()])]);
        let options = ListTasksOptionsBuilder::default().filters(&filters).build();
        self.docker
            .list_tasks(Some(options))
            .await
            .map_err(|e| classify(&format!("listing the tasks of {service_id}"), e))
    }

    fn ours(&self, labels: Option<&HashMap<String, String>>) -> bool {
        labels.and_then(|l| l.get(labels::OPERATOR_ID)).is_some_and(|id| *id == self.config.docker.operator_id)
    }

    /// The node's address, name and state.
    async fn node(&self, node_id: &str) -> Option<spec::NodeSeen> {
        let node = self.docker.inspect_node(node_id).await.ok()?;
        let name = node.description.and_then(|d| d.hostname).unwrap_or_else(|| node_id.to_string());
        let up = node.status.as_ref().and_then(|s| s.state).is_none_or(|s| s == bollard::models::NodeState::READY);
        let mut addr = node.status.and_then(|s| s.addr).unwrap_or_default();
        if addr.is_empty() || addr == "0.0.0.0" {
            // A manager that advertised no address: its management address's host.
            addr = node
                .manager_status
                .and_then(|m| m.addr)
                .and_then(|a| a.rsplit_once(':').map(|(h, _)| h.trim_matches(['[', ']']).to_string()))
                .unwrap_or_default();
        }
        Some(spec::NodeSeen { addr, name, up })
    }

    /// What the service and its task mean for the instance, readiness included.
    async fn observe(&self, spec: &EnvInstanceSpec, svc: &Service) -> Result<Observed, EngineError> {
        let id = svc.id.clone().unwrap_or_default();
        let tasks = self.tasks_of(&id).await?;
        let task = spec::the_task(&tasks);
        let node = match task.and_then(|t| t.node_id.as_deref()) {
            Some(node_id) => self.node(node_id).await,
            None => None,
        };
        let mut observed = spec::observe_task(&id, task, service_ip(svc), node.as_ref());
        (observed.ready, observed.ready_message) = self.readiness(spec, &observed).await;
        Ok(observed)
    }

    async fn readiness(&self, spec: &EnvInstanceSpec, observed: &Observed) -> (Option<bool>, Option<String>) {
        let Some(port) = spec::probe_port(spec) else { return (None, None) };
        if observed.phase != Phase::Running {
            return (None, None);
        }
        let probe = spec.readiness.clone().unwrap_or_default();
        let addr = match self.config.reach {
            Reach::Published => observed
                .ports
                .iter()
                .find(|p| p.container_port == port && p.protocol == "tcp")
                .map(|p| format!("{}:{}", dial_host(&p.host_ip), p.host_port)),
            Reach::Overlay => observed.ip.as_deref().map(|ip| format!("{ip}:{port}")),
        };
        let Some(addr) = addr else {
            return (Some(false), Some("the task has no address to probe yet".into()));
        };
        match self.prober.probe(&addr, &probe.path, Duration::from_millis(probe.timeout_ms)).await {
            Ok(()) => (Some(true), None),
            Err(why) => (Some(false), Some(why)),
        }
    }

    async fn create(&self, inst: &EnvInstance, name: &str) -> Result<(), EngineError> {
        let network = self.prepare_network(&inst.spec).await?;
        let spec = spec::service_spec(inst, &self.config, &network)?;
        let image = spec
            .task_template
            .as_ref()
            .and_then(|t| t.container_spec.as_ref())
            .and_then(|c| c.image.clone())
            .unwrap_or_default();
        self.config.docker.policy.check_registry(&image).map_err(EngineError::permanent)?;
        // The nodes pull with the credentials `docker login` left for the image's registry, as the CLI's
        // `docker service create --with-registry-auth` passes them.
        let credentials = aenv_engine_docker::credentials_for(&image);
        match self.docker.create_service(spec, credentials).await {
            Ok(created) => {
                debug!(service = ?created.id, "service created");
                Ok(())
            }
            // Made by an earlier attempt (before a restart): adopted below.
            Err(e) if is_conflict(&e) => Ok(()),
            Err(e) => Err(classify(&format!("creating service {name}"), e)),
        }
    }

    fn owned_filter(&self, all_operators: bool) -> HashMap<String, Vec<String>> {
        let mut labels = vec![format!("{}={}", labels::MANAGED_BY, labels::MANAGED_BY_VALUE)];
        if !all_operators {
            labels.push(format!("{}={}", labels::OPERATOR_ID, self.config.docker.operator_id));
        }
        HashMap::from([("label".to_string(), labels)])
    }

    async fn list_services(&self, all_operators: bool) -> Result<Vec<Service>, EngineError> {
        let options = ListServicesOptionsBuilder::default().filters(&self.owned_filter(all_operators)).build();
        self.docker.list_services(Some(options)).await.map_err(|e| classify("listing services", e))
    }

    /// Stack networks (of this operator, or of every operator): labels, id, creation time.
    async fn stack_networks(
        &self,
        all_operators: bool,
    ) -> Result<Vec<(HashMap<String, String>, String, Option<Timestamp>)>, EngineError> {
        let mut filters = self.owned_filter(all_operators);
        filters.entry("label".into()).or_default().push(stack::STACK_NAMESPACE.to_string());
        let options = ListNetworksOptionsBuilder::default().filters(&filters).build();
        let networks = self.docker.list_networks(Some(options)).await.map_err(|e| classify("listing networks", e))?;
        Ok(networks
            .into_iter()
            .filter_map(|n| {
                let created = n.created.as_deref().and_then(|t| t.parse::<Timestamp>().ok());
                Some((n.labels?, n.id?, created))
            })
            .collect())
    }

    async fn all_tasks(&self) -> Result<HashMap<String, Vec<Task>>, EngineError> {
        let tasks = self
            .docker
            .list_tasks(None::<bollard::query_parameters::ListTasksOptions>)
            .await
            .map_err(|e| classify("listing tasks", e))?;
        let mut by_service: HashMap<String, Vec<Task>> = HashMap::new();
        for t in tasks {
            if let Some(s) = t.service_id.clone() {
                by_service.entry(s).or_default().push(t);
            }
        }
        Ok(by_service)
    }
}

impl SwarmEngine {
    /// A compose stack: its overlay network, then each service whose dependencies run (see `stack.rs`); what the
    /// services' tasks say, together.
    async fn apply_stack(&self, inst: &EnvInstance, compose_file: &str) -> Result<Observed, EngineError> {
        let id = inst.metadata.name.clone().unwrap_or_default();
        let plan = stack::plan(inst, compose_file, &self.config)?;
        if inst.spec.paused {
            return Err(EngineError::unsupported("the Swarm engine does not pause instances"));
        }
        let mut made: HashMap<String, Service> = HashMap::new();
        for svc in &plan.services {
            let name = stack::service_name(&id, &svc.name);
            if let Some(found) = self.service(&name).await? {
                if !self.ours(found.spec.as_ref().and_then(|s| s.labels.as_ref())) {
                    return Err(EngineError::permanent(format!(
                        "a service named {name} exists on the swarm and was not created by this operator"
                    )));
                }
                made.insert(svc.name.clone(), found);
            }
        }
        // Every service ran once: one that is gone was removed outside the operator, and is not made again.
        let ran = inst.status.as_ref().is_some_and(|s| s.phase == Phase::Running);
        if ran && let Some(gone) = plan.services.iter().find(|s| !made.contains_key(&s.name)) {
            return Ok(Observed {
                phase: Phase::Terminated,
                message: Some(format!(
                    "service {} ({}) was removed outside the operator",
                    gone.name,
                    stack::service_name(&id, &gone.name)
                )),
                container_id: inst.status.as_ref().and_then(|s| s.container_id.clone()),
                ..Default::default()
            });
        }
        let network_id = self.ensure_stack_network(inst, &plan).await?;
        let mut observed: HashMap<String, Observed> = HashMap::new();
        let mut states: HashMap<String, String> = HashMap::new();
        for (name, svc) in &made {
            let (o, state) = self.observe_service(svc).await?;
            observed.insert(name.clone(), o);
            states.insert(name.clone(), state);
        }
        let mut waiting = HashMap::new();
        if made.len() < plan.services.len() {
            let reach_network = match self.config.reach {
                Reach::Overlay => Some(self.prepare_network(&inst.spec).await?),
                Reach::Published => None,
            };
            for svc in &plan.services {
                if made.contains_key(&svc.name) {
                    continue;
                }
                let phases: HashMap<String, (Phase, Option<String>)> =
                    observed.iter().map(|(k, o)| (k.clone(), (o.phase, o.message.clone()))).collect();
                match stack::next(svc, &phases) {
                    Next::Create => {
                        let spec = stack::service_spec(
                            inst,
                            &self.config,
                            &plan,
                            svc,
                            &stack::network_name(&id),
                            reach_network.as_deref(),
                        )?;
                        self.create_service(spec, &svc.image)
                            .await
                            .map_err(|e| e.reworded(|m| format!("service {}: {m}", svc.name)))?;
                        observed.insert(
                            svc.name.clone(),
                            Observed {
                                phase: Phase::Creating,
                                message: Some("its task is being made".into()),
                                ..Default::default()
                            },
                        );
                    }
                    Next::Wait(why) => {
                        waiting.insert(svc.name.clone(), why);
                    }
                    Next::Fail(why) => {
                        return Ok(Observed {
                            phase: Phase::Failed,
                            message: Some(why),
                            container_id: Some(network_id),
                            ..Default::default()
                        });
                    }
                }
            }
        }
        Ok(stack::aggregate(&plan, &observed, &states, &waiting, &network_id))
    }

    /// What a service's task says (and its task's state), without a readiness probe (a stack has none: its services' healthchecks are
    /// what Swarm waits for).
    async fn observe_service(&self, svc: &Service) -> Result<(Observed, String), EngineError> {
        let id = svc.id.clone().unwrap_or_default();
        let tasks = self.tasks_of(&id).await?;
        let task = spec::the_task(&tasks);
        let node = match task.and_then(|t| t.node_id.as_deref()) {
            Some(node_id) => self.node(node_id).await,
            None => None,
        };
        let state = task
            .and_then(|t| t.status.as_ref())
            .and_then(|s| s.state)
            .map_or_else(|| "new".to_string(), |s| s.to_string());
        Ok((spec::observe_task(&id, task, service_ip(svc), node.as_ref()), state))
    }

    /// Creates a service (one that exists already, made by an earlier attempt, is adopted).
    async fn create_service(&self, spec: bollard::models::ServiceSpec, image: &str) -> Result<(), EngineError> {
        let name = spec.name.clone().unwrap_or_default();
        self.config.docker.policy.check_registry_resolved(image).await.map_err(EngineError::permanent)?;
        let credentials = aenv_engine_docker::credentials_for(image);
        match self.docker.create_service(spec, credentials).await {
            Ok(created) => {
                debug!(service = ?created.id, "service created");
                Ok(())
            }
            Err(e) if is_conflict(&e) => Ok(()),
            Err(e) => Err(classify(&format!("creating service {name}"), e)),
        }
    }

    /// The stack's overlay network `<id>_default`, made if missing; one of that name this operator did not make
    /// for this stack is never joined.
    async fn ensure_stack_network(
        &self,
        inst: &EnvInstance,
        plan: &aenv_engine_docker::compose::StackSpec,
    ) -> Result<String, EngineError> {
        let id = inst.metadata.name.clone().unwrap_or_default();
        let name = stack::network_name(&id);
        let _one_at_a_time = self.network_lock.lock().await;
        if let Some(found) = self.stack_network(&id).await? {
            return Ok(found);
        }
        let mut labels = stack::base_labels(inst, &self.config, &plan.main)?;
        labels.insert(aenv_engine_docker::compose::compose_labels::NETWORK.into(), "default".into());
        let request = bollard::models::NetworkCreateRequest {
            name: name.clone(),
            driver: Some("overlay".into()),
            attachable: Some(true),
            labels: Some(labels.into_iter().collect()),
            ..Default::default()
        };
        match self.docker.create_network(request).await {
            Ok(created) => Ok(created.id),
            Err(e) if is_conflict(&e) => {
                Err(EngineError::transient(format!("network {name} is being created by an earlier attempt; retrying")))
            }
            Err(e) => Err(classify(&format!("creating overlay network {name}"), e)),
        }
    }

    /// The id of stack `id`'s network, if there is one; an error if one of its name is not this operator's.
    async fn stack_network(&self, id: &str) -> Result<Option<String>, EngineError> {
        let name = stack::network_name(id);
        let options = bollard::query_parameters::InspectNetworkOptionsBuilder::default().scope("swarm").build();
        match self.docker.inspect_network(&name, Some(options)).await {
            Ok(n) => {
                let l = n.labels.unwrap_or_default();
                let ours = l.get(labels::OPERATOR_ID).is_some_and(|o| *o == self.config.docker.operator_id)
                    && l.get(stack::STACK_NAMESPACE).is_some_and(|s| s == id);
                if ours && n.scope.as_deref() == Some("swarm") {
                    Ok(n.id)
                } else {
                    Err(EngineError::permanent(format!(
                        "a network named {name} exists on the swarm and was not created by this operator for this stack"
                    )))
                }
            }
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(classify(&format!("inspecting network {name}"), e)),
        }
    }

    /// Removes the stack's services, then its network (once their tasks are gone: until then Docker refuses, and
    /// the deletion is retried).
    async fn delete_stack(&self, id: &str) -> Result<(), EngineError> {
        let mut filter = self.owned_filter(false);
        filter.entry("label".into()).or_default().push(format!("{}={id}", stack::STACK_NAMESPACE));
        let options = ListServicesOptionsBuilder::default().filters(&filter).build();
        let services = self
            .docker
            .list_services(Some(options))
            .await
            .map_err(|e| classify(&format!("listing the services of stack {id}"), e))?;
        for svc in services {
            if let Some(sid) = svc.id {
                remove_service(&self.docker, &sid).await?;
            }
        }
        let name = stack::network_name(id);
        let Ok(Some(_)) = self.stack_network(id).await else { return Ok(()) };
        match self.docker.remove_network(&name).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e)
                if is_conflict(&e)
                    || matches!(e, bollard::errors::Error::DockerResponseServerError { status_code: 403, .. }) =>
            {
                Err(EngineError::transient(format!(
                    "network {name} is still in use by the stack's tasks, which are stopping; retrying"
                )))
            }
            Err(e) => Err(classify(&format!("removing network {name}"), e)),
        }
    }
}

/// The host to dial for a port published on `host_ip` (a node that advertised every address is dialled on
/// loopback: the operator runs on it).
fn dial_host(host_ip: &str) -> String {
    match host_ip {
        "" | "0.0.0.0" | "::" => "127.0.0.1".into(),
        ip if ip.contains(':') => format!("[{ip}]"),
        ip => ip.into(),
    }
}

/// The service's address on the first of its networks that has one (its virtual IP, which Swarm routes to its one
/// task); the ingress network is never one of a service's own.
fn service_ip(svc: &Service) -> Option<String> {
    let vips = svc.endpoint.as_ref()?.virtual_ips.as_ref()?;
    let networks: Vec<String> = svc
        .spec
        .as_ref()
        .and_then(|s| s.task_template.as_ref())
        .and_then(|t| t.networks.as_ref())
        .map(|n| n.iter().filter_map(|a| a.target.clone()).collect())
        .unwrap_or_default();
    let addr = |v: &bollard::models::ServiceEndpointVirtualIps| {
        v.addr.as_deref().map(|a| a.split('/').next().unwrap_or(a).to_string())
    };
    if networks.is_empty() {
        return vips.iter().find_map(addr);
    }
    networks.iter().find_map(|n| vips.iter().filter(|v| v.network_id.as_ref() == Some(n)).find_map(addr))
}

/// Whether an API version such as `1.41` is at least `major.minor`.
fn api_at_least(version: &str, major: u32, minor: u32) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (major, minor)
}

/// Each stack's phase from its services' (listed in `owned`, in the order of `services`): Failed when one failed,
/// Running when all run, Creating otherwise.
fn stack_phases(services: &[Service], owned: &[OwnedObject]) -> HashMap<(String, String), Phase> {
    let stack_ids: HashSet<&str> = services
        .iter()
        .filter(|s| {
            s.spec.as_ref().and_then(|s| s.labels.as_ref()).is_some_and(|l| l.contains_key(stack::STACK_NAMESPACE))
        })
        .filter_map(|s| s.id.as_deref())
        .collect();
    let mut out: HashMap<(String, String), Phase> = HashMap::new();
    for o in owned.iter().filter(|o| stack_ids.contains(o.id.as_str())) {
        let key = (o.namespace.clone(), o.instance.clone());
        let phase = match (out.get(&key), o.phase) {
            (Some(Phase::Failed), _) | (_, Phase::Failed | Phase::Terminated) => Phase::Failed,
            (None | Some(Phase::Running), Phase::Running) => Phase::Running,
            _ => Phase::Creating,
        };
        out.insert(key, phase);
    }
    out
}

/// The phase a list call tells of a service: its first task's, without readiness.
fn listed_phase(svc: &Service, tasks: Option<&Vec<Task>>) -> Phase {
    let id = svc.id.clone().unwrap_or_default();
    let task = tasks.and_then(|t| spec::the_task(t));
    spec::observe_task(&id, task, None, None).phase
}

#[async_trait]
impl Engine for SwarmEngine {
    fn name(&self) -> &'static str {
        "swarm"
    }

    fn validate(&self, spec: &EnvInstanceSpec) -> Result<(), InvalidSpec> {
        stack::check_file(spec, &self.config)?;
        spec::check(spec, &self.config)
    }

    fn refuse_snapshot_images(&self, spec: &EnvInstanceSpec) -> Result<(), InvalidSpec> {
        // A Docker-engine operator's snapshots may sit on a node's daemon.
        aenv_engine_docker::refuse_snapshot_images(spec, &self.config.docker.policy)
    }

    /// Registry names judged by their addresses as this manager resolves them (the nodes resolve on their own;
    /// a name that differs per node is not caught).
    async fn admit(&self, spec: &EnvInstanceSpec) -> Result<(), InvalidSpec> {
        aenv_engine_docker::admit_images(spec, &self.config.docker.policy).await
    }

    async fn apply(&self, inst: &EnvInstance) -> Result<Observed, EngineError> {
        if let Workload::Stack { compose_file } = inst.spec.workload() {
            return self.apply_stack(inst, compose_file).await;
        }
        let name = inst.metadata.name.clone().unwrap_or_default();
        let svc = match self.service(&name).await? {
            Some(svc) => svc,
            None if inst.status.as_ref().is_some_and(|s| s.container_id.is_some()) => {
                return Ok(Observed {
                    phase: Phase::Terminated,
                    message: Some(format!("service {name} was removed outside the operator")),
                    ..Default::default()
                });
            }
            None => {
                self.create(inst, &name).await?;
                self.service(&name).await?.ok_or_else(|| {
                    EngineError::transient(format!("service {name} disappeared while it was being created"))
                })?
            }
        };
        if !self.ours(svc.spec.as_ref().and_then(|s| s.labels.as_ref())) {
            return Err(EngineError::permanent(format!(
                "a service named {name} exists on the swarm and was not created by this operator"
            )));
        }
        if inst.spec.paused {
            return Err(EngineError::unsupported("the Swarm engine does not pause instances"));
        }
        self.observe(&inst.spec, &svc).await
    }

    async fn delete(&self, inst: &EnvInstance) -> Result<(), EngineError> {
        let name = inst.metadata.name.clone().unwrap_or_default();
        if let Workload::Stack { .. } = inst.spec.workload() {
            return self.delete_stack(&name).await;
        }
        match self.service(&name).await? {
            Some(svc) if !self.ours(svc.spec.as_ref().and_then(|s| s.labels.as_ref())) => Ok(()),
            Some(_) => remove_service(&self.docker, &name).await,
            None => Ok(()),
        }
    }

    async fn delete_owned(&self, object: &OwnedObject) -> Result<(), EngineError> {
        match object.kind {
            OwnedKind::SharedNetwork | OwnedKind::Network => match self.docker.remove_network(&object.id).await {
                Ok(()) => Ok(()),
                // Gone, or in use again (an instance joined it since the list).
                Err(e) if is_not_found(&e) || is_conflict(&e) => Ok(()),
                Err(bollard::errors::Error::DockerResponseServerError { status_code: 403, .. }) => Ok(()),
                Err(e) => Err(classify(&format!("removing network {}", object.id), e)),
            },
            OwnedKind::Container | OwnedKind::Volume => remove_service(&self.docker, &object.id).await,
            // Swarm instances run without volumes (they are local to one node): there is nothing to remove.
            OwnedKind::ServiceVolume => Ok(()),
        }
    }

    async fn list_owned(&self) -> Result<Vec<OwnedObject>, EngineError> {
        let services = self.list_services(false).await?;
        let tasks = self.all_tasks().await?;
        let mut used_networks: HashSet<String> = HashSet::new();
        let mut owned = Vec::new();
        for svc in &services {
            let spec = svc.spec.as_ref();
            for target in spec
                .and_then(|s| s.task_template.as_ref())
                .and_then(|t| t.networks.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|n| n.target.clone())
            {
                used_networks.insert(target);
            }
            let Some((namespace, instance)) = labels::instance_of(|k| spec?.labels.as_ref()?.get(k)) else { continue };
            let Some(id) = svc.id.clone() else { continue };
            owned.push(OwnedObject {
                namespace,
                instance,
                kind: OwnedKind::Container,
                phase: listed_phase(svc, tasks.get(&id)),
                id,
                created: svc.created_at.as_deref().and_then(|t| t.parse::<Timestamp>().ok()),
            });
        }
        // A stack's services all carry the stack's phase, so that a resync compares the instance with its stack
        // rather than with whichever of its services is listed last.
        let stacks = stack_phases(&services, &owned);
        for o in &mut owned {
            if let Some(phase) = stacks.get(&(o.namespace.clone(), o.instance.clone())) {
                o.phase = *phase;
            }
        }
        // Stack networks after the services, so that an orphan sweep removes those first.
        for (l, id, created) in self.stack_networks(false).await? {
            let Some((namespace, instance)) = labels::instance_of(|k| l.get(k)) else { continue };
            let phase = stacks.get(&(namespace.clone(), instance.clone())).copied().unwrap_or(Phase::Creating);
            owned.push(OwnedObject { namespace, instance, kind: OwnedKind::Network, id, phase, created });
        }
        // Owner networks no service of ours is on any more (the operator's own network stays).
        let filters =
            HashMap::from([("label".to_string(), vec![format!("{NETWORK_LABEL}={}", self.config.docker.operator_id)])]);
        let options = ListNetworksOptionsBuilder::default().filters(&filters).build();
        let networks = self.docker.list_networks(Some(options)).await.map_err(|e| classify("listing networks", e))?;
        for n in networks {
            let (Some(id), Some(name)) = (n.id.clone(), n.name.clone()) else { continue };
            if name == self.config.network || used_networks.contains(&id) || used_networks.contains(&name) {
                continue;
            }
            owned.push(OwnedObject {
                namespace: String::new(),
                instance: String::new(),
                kind: OwnedKind::SharedNetwork,
                id: name,
                phase: Phase::Terminated,
                created: n.created.as_deref().and_then(|t| t.parse::<Timestamp>().ok()),
            });
        }
        Ok(owned)
    }

    async fn list_managed(&self) -> Result<Vec<ManagedObject>, EngineError> {
        let services = self.list_services(true).await?;
        let tasks = self.all_tasks().await?;
        let networks = self.stack_networks(true).await?;
        Ok(services
            .iter()
            .filter_map(|svc| {
                let l = svc.spec.as_ref()?.labels.as_ref()?;
                let (namespace, instance) = labels::instance_of(|k| l.get(k))?;
                let id = svc.id.clone()?;
                Some(ManagedObject {
                    object: OwnedObject {
                        namespace,
                        instance,
                        kind: OwnedKind::Container,
                        phase: listed_phase(svc, tasks.get(&id)),
                        id,
                        created: svc.created_at.as_deref().and_then(|t| t.parse::<Timestamp>().ok()),
                    },
                    operator_id: l.get(labels::OPERATOR_ID).cloned().unwrap_or_default(),
                    expires_at: l.get(labels::EXPIRE_AT).and_then(|t| t.parse::<Timestamp>().ok()),
                })
            })
            // Stack networks after the services, so that a sweep removes those first.
            .chain(networks.into_iter().filter_map(|(l, id, created)| {
                let (namespace, instance) = labels::instance_of(|k| l.get(k))?;
                Some(ManagedObject {
                    object: OwnedObject {
                        namespace,
                        instance,
                        kind: OwnedKind::Network,
                        id,
                        phase: Phase::Creating,
                        created,
                    },
                    operator_id: l.get(labels::OPERATOR_ID).cloned().unwrap_or_default(),
                    expires_at: l.get(labels::EXPIRE_AT).and_then(|t| t.parse::<Timestamp>().ok()),
                })
            }))
            .collect())
    }

    fn events(&self) -> BoxStream<'static, EngineEvent> {
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(watch_tasks(self.clone(), tx));
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
        let options = bollard::query_parameters::LogsOptionsBuilder::default()
            .follow(follow)
            .stdout(true)
            .stderr(true)
            .tail(&tail)
            .build();
        self.docker
            .service_logs(&name, Some(options))
            .map(move |item| {
                item.map(|out| out.into_bytes().to_vec())
                    .map_err(|e| classify(&format!("reading the logs of service {name}"), e))
            })
            .boxed()
    }

    /// Pulls on every node the template could run on, by a `GlobalJob` service per image (see `warmup.rs`): one
    /// progress entry per image, naming the nodes.
    fn warmup(&self, spec: &EnvInstanceSpec) -> BoxStream<'static, PullProgress> {
        crate::warmup::warmup(self.docker.clone(), self.config.clone(), spec.clone())
    }

    fn dials_published_ports(&self) -> bool {
        self.config.reach == Reach::Published
    }

    async fn ping(&self) -> Result<(), EngineError> {
        self.docker
            .ping()
            .await
            .map(|_| ())
            .map_err(|e| classify(&format!("pinging {}", self.config.docker.host_display), e))
    }
}

async fn remove_service(docker: &Docker, name: &str) -> Result<(), EngineError> {
    match docker.delete_service(name).await {
        Ok(()) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(classify(&format!("removing service {name}"), e)),
    }
}

/// What the task watch keeps of one service (by service id): its instance (namespace, name), and each task's id,
/// state with its node's, and desired state.
type Watched = ((String, String), Vec<(String, String, String)>);

/// Docker's event stream says nothing of tasks on other nodes, so the engine watches them by listing: every
/// [`TASK_POLL`], one list of nodes, one of this operator's services and one of tasks; an instance whose task
/// changed (state, desired state, its node's state, a new task) or whose service went is woken. A list that fails is retried; once it works again
/// a `Resync` is sent, since changes were missed meanwhile.
async fn watch_tasks(engine: SwarmEngine, tx: mpsc::Sender<EngineEvent>) {
    let mut seen: HashMap<String, Watched> = HashMap::new();
    let mut broken = false;
    let mut first = true;
    loop {
        if tx.is_closed() {
            return;
        }
        let listed = async {
            let nodes = engine
                .docker
                .list_nodes(None::<bollard::query_parameters::ListNodesOptions>)
                .await
                .map_err(|e| classify("listing nodes", e))?;
            Ok::<_, EngineError>((engine.list_services(false).await?, engine.all_tasks().await?, nodes))
        };
        match listed.await {
            Err(e) => {
                if !broken {
                    warn!(error = %e, "the swarm's task list failed; retrying");
                }
                broken = true;
            }
            Ok((services, tasks, nodes)) => {
                let node_state: HashMap<String, String> = nodes
                    .iter()
                    .filter_map(|n| {
                        Some((n.id.clone()?, n.status.as_ref()?.state.map(|s| s.to_string()).unwrap_or_default()))
                    })
                    .collect();
                if broken {
                    broken = false;
                    info!("the swarm's task list answers again; resyncing");
                    if tx.send(EngineEvent::Resync).await.is_err() {
                        return;
                    }
                }
                let mut now: HashMap<String, Watched> = HashMap::new();
                for svc in &services {
                    let spec = svc.spec.as_ref();
                    let (Some(key), Some(id)) =
                        (labels::instance_of(|k| spec?.labels.as_ref()?.get(k)), svc.id.clone())
                    else {
                        continue;
                    };
                    let mut sig: Vec<(String, String, String)> = tasks
                        .get(&id)
                        .into_iter()
                        .flatten()
                        .map(|t| {
                            let state = t.status.as_ref().and_then(|s| s.state).unwrap_or(TaskState::NEW);
                            let desired = t.desired_state.unwrap_or(TaskState::NEW);
                            let node = t.node_id.as_ref().and_then(|n| node_state.get(n)).cloned().unwrap_or_default();
                            (t.id.clone().unwrap_or_default(), format!("{state}/{node}"), desired.to_string())
                        })
                        .collect();
                    sig.sort();
                    now.insert(id, (key, sig));
                }
                if !first {
                    let changed = now
                        .iter()
                        .filter(|(id, (_, sig))| seen.get(*id).is_none_or(|(_, old)| old != sig))
                        .map(|(_, (key, _))| key.clone());
                    let gone = seen.iter().filter(|(id, _)| !now.contains_key(*id)).map(|(_, (key, _))| key.clone());
                    let wake: HashSet<(String, String)> = changed.chain(gone).collect();
                    for (namespace, instance) in wake {
                        if tx.send(EngineEvent::Changed { namespace, instance }).await.is_err() {
                            return;
                        }
                    }
                }
                first = false;
                seen = now;
            }
        }
        tokio::time::sleep(TASK_POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_versions_compare_as_numbers() {
        assert!(api_at_least("1.44", 1, 44) && api_at_least("1.100", 1, 44) && api_at_least("2.0", 1, 44));
        assert!(!api_at_least("1.41", 1, 44) && !api_at_least("", 1, 44));
    }

    #[test]
    fn a_stack_s_services_carry_the_stack_s_phase() {
        let svc = |id: &str, stack: bool| Service {
            id: Some(id.into()),
            spec: Some(bollard::models::ServiceSpec {
                labels: Some(if stack {
                    HashMap::from([(stack::STACK_NAMESPACE.to_string(), "st".to_string())])
                } else {
                    HashMap::new()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let obj = |id: &str, instance: &str, phase: Phase| OwnedObject {
            namespace: "ns".into(),
            instance: instance.into(),
            kind: OwnedKind::Container,
            id: id.into(),
            phase,
            created: None,
        };
        let services = [svc("a", true), svc("b", true), svc("c", true), svc("d", true), svc("e", false)];
        let owned = [
            obj("a", "st", Phase::Running),
            obj("b", "st", Phase::Creating),
            obj("c", "st2", Phase::Running),
            obj("d", "st2", Phase::Failed),
            obj("e", "single", Phase::Running),
        ];
        let phases = stack_phases(&services, &owned);
        assert_eq!(phases[&("ns".to_string(), "st".to_string())], Phase::Creating);
        assert_eq!(phases[&("ns".to_string(), "st2".to_string())], Phase::Failed);
        assert!(!phases.contains_key(&("ns".to_string(), "single".to_string())), "a single instance keeps its own");
        let all_running = stack_phases(&services[..1], &owned[..1]);
        assert_eq!(all_running[&("ns".to_string(), "st".to_string())], Phase::Running);
    }

    #[test]
    fn dial_hosts() {
        assert_eq!(dial_host("0.0.0.0"), "127.0.0.1");
        assert_eq!(dial_host("10.1.0.5"), "10.1.0.5");
        assert_eq!(dial_host("fd00::5"), "[fd00::5]");
    }
}
