//! Compose stacks on Swarm, the pure part: what of a compose file Swarm cannot run, the services a stack
//! becomes, the order they are made in, and what their tasks mean for the instance. The file is the one the
//! Docker engine parses ([`aenv_engine_docker::compose::plan`]); `engine.rs` does the I/O.
//!
//! A stack `<id>` is an attachable overlay network `<id>_default` and one service `<id>_<service>` per compose
//! service (one replica, restart `none`, the sandbox defaults), on that network with the compose service's name
//! as its alias, so services reach each other by name as under Compose. Every object carries the operator's labels
//! and `com.docker.stack.namespace=<id>`, so `docker stack services <id>` shows the stack.
//!
//! `depends_on`: Swarm starts services in no order, so a service is made only once each service it depends on
//! has a running task. A task of a container with a healthcheck is `running` only once it is healthy, so
//! `service_healthy` is awaited as well; `service_completed_successfully` is refused (a task that ends is a failed
//! instance here). A required dependency that fails fails the instance, naming both services.

use std::collections::{BTreeMap, HashMap};

use aenv_core::{EngineError, EnvInstance, EnvInstanceSpec, InvalidSpec, Observed, Phase, labels::InstanceLabels};
use aenv_engine_docker::compose::{self, Condition, MountSpec, StackSpec, compose_labels as cl};
use bollard::models::{
    EndpointSpecModeEnum, Mount, MountTmpfsOptions, MountType, NetworkAttachmentConfig, ServiceSpec, TaskSpec,
};

use crate::spec::{self, Reach, SwarmEngineConfig};

/// The label `docker stack` groups a stack's services and networks by.
pub(crate) const STACK_NAMESPACE: &str = "com.docker.stack.namespace";

/// The request field every refusal of the file is under.
const FIELD: &str = "deployConfig.composeFile";

pub(crate) fn service_name(instance: &str, service: &str) -> String {
    format!("{instance}_{service}")
}

pub(crate) fn network_name(instance: &str) -> String {
    format!("{instance}_default")
}

fn refuse(key: String, why: impl std::fmt::Display) -> InvalidSpec {
    InvalidSpec::new(format!("{FIELD}.{key}"), format!("{FIELD}.{key}: {why}"))
}

/// What Swarm cannot run of a spec's compose file, when it has one: the Docker engine's checks of the file, then
/// [`check`].
pub(crate) fn check_file(spec: &EnvInstanceSpec, config: &SwarmEngineConfig) -> Result<(), InvalidSpec> {
    match spec.compose_file.as_deref() {
        Some(file) => check(&compose::plan(spec, file, &config.docker.policy)?),
        None => Ok(()),
    }
}

/// What the Docker engine runs from a compose file and Swarm cannot: node-local storage, the host's namespaces,
/// privileged containers, devices, a port published on one address, a dependency that must complete.
pub(crate) fn check(stack: &StackSpec) -> Result<(), InvalidSpec> {
    if let Some(v) = stack.volumes.first() {
        return Err(refuse(
            format!("volumes.{}", v.name),
            "named volumes are local to one node and a Swarm task may land on any node: the Swarm engine runs stacks without them (use tmpfs for scratch space, or an operator with --engine docker)",
        ));
    }
    for svc in &stack.services {
        let at = |key: &str| format!("services.{}.{key}", svc.name);
        if svc.mounts.iter().any(|m| !matches!(m, MountSpec::Tmpfs { .. })) {
            return Err(refuse(
                at("volumes"),
                "volumes and bind mounts are local to one node and a Swarm task may land on any node: only tmpfs mounts run on the Swarm engine",
            ));
        }
        if let Some((path, _)) = svc.tmpfs.iter().find(|(_, opts)| !opts.is_empty()) {
            return Err(refuse(
                at("tmpfs"),
                format!(
                    "{path} has mount options, which Swarm's tmpfs mounts do not take: give the path alone, or a `volumes` entry of type tmpfs with its size"
                ),
            ));
        }
        let host_only = [
            (
                svc.host_network,
                "network_mode",
                "host networking is not available to Swarm services: every service runs on the stack's overlay network",
            ),
            (svc.pid_host, "pid", "Swarm services cannot share the host's process namespace"),
            (svc.ipc_host, "ipc", "Swarm services cannot share the host's IPC namespace"),
            (svc.privileged, "privileged", "Swarm services cannot run privileged"),
            (!svc.devices.is_empty(), "devices", "Swarm services cannot map host devices"),
        ];
        if let Some((_, key, why)) = host_only.iter().find(|(refused, _, _)| *refused) {
            return Err(refuse(at(key), why));
        }
        if let Some(i) = svc.ports.iter().position(|p| p.host_ip.is_some()) {
            return Err(refuse(
                at(&format!("ports[{i}]")),
                "Swarm publishes a port on every address of its node: drop the host IP",
            ));
        }
        if let Some(dep) = svc.depends_on.iter().find(|d| d.condition == Condition::CompletedSuccessfully) {
            return Err(refuse(
                at(&format!("depends_on.{}", dep.service)),
                "service_completed_successfully cannot be awaited on the Swarm engine (a task that ends fails its instance): use service_started or service_healthy",
            ));
        }
    }
    Ok(())
}

/// The checked stack an instance runs: its file parsed under the current policy, `deployConfig.cpu`/`memory`
/// applied to the main service, and what Swarm cannot run refused.
pub(crate) fn plan(
    inst: &EnvInstance,
    compose_file: &str,
    config: &SwarmEngineConfig,
) -> Result<StackSpec, EngineError> {
    let mut stack = compose::plan(&inst.spec, compose_file, &config.docker.policy)?;
    compose::apply_instance_limits(inst, &mut stack)?;
    check(&stack)?;
    Ok(stack)
}

/// The labels on every object of the stack (the network and each service).
pub(crate) fn base_labels(
    inst: &EnvInstance,
    config: &SwarmEngineConfig,
    main: &str,
) -> Result<BTreeMap<String, String>, EngineError> {
    let id = inst.metadata.name.clone().unwrap_or_default();
    let mut labels = InstanceLabels::of(inst, &config.docker.operator_id)
        .map_err(|e| EngineError::permanent(e.to_string()))?
        .render(&BTreeMap::new());
    labels.insert(cl::PROJECT.into(), id.clone());
    labels.insert(STACK_NAMESPACE.into(), id);
    labels.insert(compose::MAIN_SERVICE_LABEL.into(), main.to_string());
    Ok(labels)
}

/// The Swarm service one compose service becomes, on the stack's network (`stack_network`) and, for the main
/// service when the operator reaches instances over an overlay, on the instance's network too (`reach_network`).
pub(crate) fn service_spec(
    inst: &EnvInstance,
    config: &SwarmEngineConfig,
    stack: &StackSpec,
    svc: &compose::ServiceSpec,
    stack_network: &str,
    reach_network: Option<&str>,
) -> Result<ServiceSpec, EngineError> {
    let id = inst.metadata.name.clone().unwrap_or_default();
    let mut labels = inst.spec.labels.clone();
    labels.extend(svc.labels.clone());
    labels.extend(base_labels(inst, config, &stack.main)?);
    labels.insert(cl::SERVICE.into(), svc.name.clone());
    labels.insert(cl::CONFIG_HASH.into(), svc.config_hash.clone());
    let labels: HashMap<String, String> = labels.into_iter().collect();
    let mut mounts: Vec<Mount> = svc
        .mounts
        .iter()
        .filter_map(|m| match m {
            MountSpec::Tmpfs { target, size } => Some(Mount {
                target: Some(target.clone()),
                typ: Some(MountType::TMPFS),
                tmpfs_options: size.map(|s| MountTmpfsOptions { size_bytes: Some(s), ..Default::default() }),
                ..Default::default()
            }),
            // Refused by `check`.
            _ => None,
        })
        .collect();
    mounts.extend(svc.tmpfs.keys().map(|path| Mount {
        target: Some(path.clone()),
        typ: Some(MountType::TMPFS),
        ..Default::default()
    }));
    let container = bollard::models::TaskSpecContainerSpec {
        // Swarm's `command` is the image's entrypoint, its `args` the command, as `docker service create` has it.
        command: svc.entrypoint.clone(),
        args: svc.command.clone(),
        env: Some(svc.environment.clone()),
        dir: svc.working_dir.clone(),
        user: svc.user.clone(),
        hostname: svc.hostname.clone(),
        read_only: svc.read_only.then_some(true),
        init: svc.init.then_some(true),
        health_check: svc.healthcheck.clone(),
        mounts: (!mounts.is_empty()).then_some(mounts),
        ..spec::hardened_container(&svc.image, &labels, &config.docker, &svc.cap_drop, &svc.cap_add)
    };
    let mut networks = vec![NetworkAttachmentConfig {
        target: Some(stack_network.to_string()),
        aliases: Some(vec![svc.name.clone()]),
        ..Default::default()
    }];
    let main = svc.name == stack.main;
    if main && let Some(net) = reach_network {
        networks.push(NetworkAttachmentConfig { target: Some(net.to_string()), ..Default::default() });
    }
    let mut ports: Vec<(u16, String, Option<u16>)> =
        svc.ports.iter().map(|p| (p.container_port, p.protocol.clone(), p.host_port)).collect();
    // The operator dials published ports: the main service's exposed ports are published too (on a port the node
    // picks), so that the data-plane proxy reaches them.
    if main && config.reach == Reach::Published {
        for e in &svc.expose {
            let (port, protocol) = e.split_once('/').unwrap_or((e, "tcp"));
            if let Ok(port) = port.parse::<u16>()
                && !ports.iter().any(|p| p.0 == port && p.1 == protocol)
            {
                ports.push((port, protocol.to_string(), None));
            }
        }
    }
    let mut service = spec::one_task_service(
        service_name(&id, &svc.name),
        labels,
        TaskSpec {
            container_spec: Some(container),
            resources: Some(spec::resources(svc.nano_cpus, svc.memory, &config.docker.hardening)),
            // The template's placement applies to every service of the stack.
            placement: spec::placement(&inst.spec),
            networks: Some(networks),
            ..Default::default()
        },
        ports,
    );
    // The main service keeps a virtual IP: it is the instance's address. The others resolve, by name, to their
    // one task's address (DNS round robin over one task), which needs no IPVS on the node: a task is never moved,
    // so the address stays right for the stack's life.
    if !main && let Some(endpoint) = service.endpoint_spec.as_mut() {
        endpoint.mode = Some(EndpointSpecModeEnum::DNSRR);
    }
    Ok(service)
}

/// What to do with a service not made yet, given what its dependencies' tasks say (`phases`: compose service →
/// its observed phase and message, for those made).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Next {
    Create,
    /// Waiting on that dependency.
    Wait(String),
    /// A required dependency failed: the instance fails with this message.
    Fail(String),
}

pub(crate) fn next(svc: &compose::ServiceSpec, phases: &HashMap<String, (Phase, Option<String>)>) -> Next {
    for dep in &svc.depends_on {
        match phases.get(&dep.service) {
            Some((Phase::Running, _)) => {}
            Some((Phase::Failed | Phase::Terminated, why)) if dep.required => {
                return Next::Fail(format!(
                    "service {} depends on service {} ({}), but {} failed: {}",
                    svc.name,
                    dep.service,
                    dep.condition.as_str(),
                    dep.service,
                    why.as_deref().unwrap_or("its task ended")
                ));
            }
            Some((Phase::Failed | Phase::Terminated, _)) => {}
            _ => {
                return Next::Wait(format!(
                    "service {} waits for service {} ({})",
                    svc.name,
                    dep.service,
                    dep.condition.as_str()
                ));
            }
        }
    }
    Next::Create
}

/// The stack's state from its services' (`observed`: compose service → what its task says, `None` for one not
/// made yet, with why): Failed naming the first failed service; Running when every service runs, with the main
/// service's address and ports; Creating otherwise, saying what it waits for.
/// `states`: each made service's task state (`running`, `starting`, ...). Each service is listed in `services`
/// (`missing` for one not made yet); a service with a healthcheck whose task runs is `healthy` (Swarm runs it only
/// once healthy), and the instance is `ready` when the main service is.
pub(crate) fn aggregate(
    stack: &StackSpec,
    observed: &HashMap<String, Observed>,
    states: &HashMap<String, String>,
    waiting: &HashMap<String, String>,
    network_id: &str,
) -> Observed {
    let checked = |svc: &compose::ServiceSpec| {
        svc.healthcheck.as_ref().is_some_and(|h| h.test.as_ref().is_none_or(|t| t.first().is_none_or(|c| c != "NONE")))
    };
    let services = stack
        .services
        .iter()
        .map(|svc| {
            let state = states.get(&svc.name).cloned().unwrap_or_else(|| "missing".into());
            let o = observed.get(&svc.name);
            aenv_core::ServiceStatus {
                name: svc.name.clone(),
                health: checked(svc).then(|| match state.as_str() {
                    "running" => "healthy".to_string(),
                    _ => "starting".to_string(),
                }),
                state,
                ip: o.and_then(|o| o.ip.clone()),
                message: waiting.get(&svc.name).cloned().or_else(|| o.and_then(|o| o.message.clone())),
            }
        })
        .collect();
    let mut out = Observed { container_id: Some(network_id.to_string()), services, ..Default::default() };
    for svc in &stack.services {
        if let Some(o) = observed.get(&svc.name)
            && matches!(o.phase, Phase::Failed | Phase::Terminated)
        {
            out.phase = Phase::Failed;
            out.message = Some(format!("service {}: {}", svc.name, o.message.as_deref().unwrap_or("its task ended")));
            return out;
        }
    }
    let pending = stack.services.iter().find(|s| observed.get(&s.name).is_none_or(|o| o.phase != Phase::Running));
    match pending {
        None => {
            let main = observed.get(&stack.main).cloned().unwrap_or_default();
            out.phase = Phase::Running;
            out.ip = main.ip;
            out.ports = main.ports;
            out.ready = stack.service(&stack.main).is_some_and(checked).then_some(true);
        }
        Some(svc) => {
            out.phase = Phase::Creating;
            out.message = waiting.get(&svc.name).cloned().or_else(|| {
                observed.get(&svc.name).and_then(|o| o.message.as_ref()).map(|m| format!("service {}: {m}", svc.name))
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use aenv_engine_docker::{DockerEngineConfig, Policy};

    use super::*;

    const TWO: &str = "
services:
  main:
    image: img:1
    labels: [\"aenv.main=true\"]
    command: [\"serve\"]
    environment: [\"A=1\"]
    cap_add: [\"NET_RAW\"]
    cap_drop: [\"CHOWN\"]
    ports: [\"8081\"]
    expose: [\"9000\"]
    tmpfs: [\"/scratch\"]
    depends_on:
      side: {condition: service_healthy}
  side:
    image: img:2
    mem_limit: 32m
";

    #[test]
    fn a_compose_file_swarm_cannot_run_is_refused_naming_its_key() {
        let cfg = SwarmEngineConfig::new(DockerEngineConfig::new("op1"));
        let stack = |yaml: &str| EnvInstanceSpec { compose_file: Some(yaml.into()), ..Default::default() };
        let field = |yaml: &str| check_file(&stack(yaml), &cfg).unwrap_err().field;
        // The Docker engine's checks first, then what Swarm cannot run.
        assert_eq!(field("services: {}"), "deployConfig.composeFile.services");
        assert_eq!(
            field("services:\n  web:\n    image: x\n    volumes: [\"d:/d\"]\nvolumes:\n  d: {}\n"),
            "deployConfig.composeFile.volumes.d"
        );
        assert!(check_file(&stack("services:\n  web:\n    image: x\n    tmpfs: [\"/scratch\"]\n"), &cfg).is_ok());
        assert!(check_file(&EnvInstanceSpec::default(), &cfg).is_ok(), "no file, nothing to refuse");
    }

    /// An operator started with --allow cap-add (TWO adds a capability).
    fn config() -> SwarmEngineConfig {
        let mut docker = DockerEngineConfig::new("op1");
        docker.policy = Policy::allowing(["cap-add".parse().unwrap()]);
        SwarmEngineConfig::new(docker)
    }

    fn instance(yaml: &str) -> EnvInstance {
        EnvInstance::new(
            "st-abc123",
            EnvInstanceSpec { env_name: "st".into(), compose_file: Some(yaml.into()), ..Default::default() },
        )
    }

    fn refused(yaml: &str) -> InvalidSpec {
        let stack = compose::plan(&instance(yaml).spec, yaml, &Policy::default()).unwrap_or_else(|e| panic!("{e:?}"));
        check(&stack).expect_err("must be refused")
    }

    #[test]
    fn a_service_is_one_hardened_replica_on_the_stack_network_under_its_name() {
        let inst = instance(TWO);
        let cfg = config();
        let plan = plan(&inst, TWO, &cfg).unwrap();
        let main = plan.service("main").unwrap();
        // Published reach: the engine gives no instance network to join.
        let s = service_spec(&inst, &cfg, &plan, main, "st-abc123_default", None).unwrap();
        assert_eq!(s.name.as_deref(), Some("st-abc123_main"));
        let labels = s.labels.clone().unwrap();
        assert_eq!(labels[STACK_NAMESPACE], "st-abc123");
        assert_eq!(labels["aenv.io/instance"], "st-abc123");
        assert_eq!(labels[compose::MAIN_SERVICE_LABEL], "main");
        assert_eq!(labels[cl::SERVICE], "main");
        let t = s.task_template.clone().unwrap();
        assert_eq!(
            t.restart_policy.unwrap().condition,
            Some(bollard::models::TaskSpecRestartPolicyConditionEnum::NONE)
        );
        let nets = t.networks.unwrap();
        assert_eq!(nets[0].target.as_deref(), Some("st-abc123_default"));
        assert_eq!(nets[0].aliases.clone().unwrap(), ["main"]);
        assert_eq!(nets.len(), 1);
        let c = t.container_spec.unwrap();
        assert_eq!(c.args.unwrap(), ["serve"]);
        assert_eq!(c.env.unwrap(), ["A=1"]);
        assert_eq!(c.capability_drop.unwrap(), ["ALL"]);
        let caps = c.capability_add.unwrap();
        assert!(caps.contains(&"CAP_NET_RAW".into()) && !caps.contains(&"CAP_CHOWN".into()), "{caps:?}");
        assert_eq!(c.privileges.unwrap().no_new_privileges, Some(true));
        assert_eq!(c.mounts.unwrap()[0].target.as_deref(), Some("/scratch"));
        // Main keeps a virtual IP; its port and its exposed port are published (the operator dials those).
        let e = s.endpoint_spec.unwrap();
        assert_eq!(e.mode, Some(EndpointSpecModeEnum::VIP));
        let ports: Vec<i64> = e.ports.unwrap().iter().filter_map(|p| p.target_port).collect();
        assert_eq!(ports, [8081, 9000]);
        assert_eq!(t.resources.unwrap().limits.unwrap().pids, Some(1024));

        let side = plan.service("side").unwrap();
        let overlay = SwarmEngineConfig { reach: Reach::Overlay, ..config() };
        let s = service_spec(&inst, &overlay, &plan, side, "st-abc123_default", Some("aenv-sandboxes")).unwrap();
        assert_eq!(s.endpoint_spec.unwrap().mode, Some(EndpointSpecModeEnum::DNSRR));
        let t = s.task_template.unwrap();
        assert_eq!(t.networks.unwrap().len(), 1, "only main joins the instance network");
        assert_eq!(t.resources.unwrap().limits.unwrap().memory_bytes, Some(32 << 20));
        // Main joins the instance network too when the operator reaches instances over an overlay.
        let s = service_spec(&inst, &overlay, &plan, main, "st-abc123_default", Some("aenv-sandboxes")).unwrap();
        assert_eq!(s.task_template.unwrap().networks.unwrap().len(), 2);
    }

    #[test]
    fn what_swarm_cannot_run_is_refused_naming_the_key() {
        let cases = [
            ("services:\n  a:\n    image: x\n    volumes: [\"d:/d\"]\nvolumes:\n  d: {}\n", "volumes.d"),
            ("services:\n  a:\n    image: x\n    tmpfs: [\"/t:size=1m\"]\n", "services.a.tmpfs"),
            (
                "services:\n  a:\n    image: x\n    depends_on:\n      b: {condition: service_completed_successfully}\n  b:\n    image: x\n",
                "services.a.depends_on.b",
            ),
        ];
        for (yaml, key) in cases {
            let e = refused(yaml);
            assert_eq!(e.field, format!("{FIELD}.{key}"), "{yaml}");
            assert!(e.message.contains(&e.field), "{}", e.message);
        }
        let ok = "services:\n  a:\n    image: x\n    tmpfs: [\"/t\"]\n    depends_on: [b]\n  b:\n    image: x\n";
        assert!(check(&compose::plan(&instance(ok).spec, ok, &Policy::default()).unwrap()).is_ok());
    }

    #[test]
    fn a_service_waits_for_its_dependencies_and_fails_with_a_required_one() {
        let plan = plan(&instance(TWO), TWO, &config()).unwrap();
        let main = plan.service("main").unwrap();
        let mut phases = HashMap::new();
        assert!(matches!(next(main, &phases), Next::Wait(m) if m.contains("side")));
        phases.insert("side".to_string(), (Phase::Creating, None));
        assert!(matches!(next(main, &phases), Next::Wait(_)));
        phases.insert("side".to_string(), (Phase::Running, None));
        assert_eq!(next(main, &phases), Next::Create);
        phases.insert("side".to_string(), (Phase::Failed, Some("exit 3".into())));
        assert!(matches!(next(main, &phases), Next::Fail(m) if m.contains("side") && m.contains("exit 3")));
    }

    #[test]
    fn the_stack_runs_when_every_service_runs_and_fails_naming_the_service() {
        let plan = plan(&instance(TWO), TWO, &config()).unwrap();
        let running = |ip: &str| Observed { phase: Phase::Running, ip: Some(ip.into()), ..Default::default() };
        let mut observed = HashMap::from([("side".to_string(), running("10.0.0.3"))]);
        let waiting = HashMap::from([("main".to_string(), "service main waits for service side".to_string())]);
        let states = HashMap::from([("side".to_string(), "running".to_string())]);
        let o = aggregate(&plan, &observed, &states, &waiting, "net1");
        let by_name = |o: &Observed, n: &str| o.services.iter().find(|s| s.name == n).cloned().unwrap();
        assert_eq!(by_name(&o, "main").state, "missing");
        assert_eq!(by_name(&o, "side").state, "running");
        assert_eq!(by_name(&o, "side").health, None, "side has no healthcheck in TWO");
        assert_eq!((o.phase, o.message.as_deref()), (Phase::Creating, Some("service main waits for service side")));
        assert_eq!(o.container_id.as_deref(), Some("net1"));
        observed.insert("main".into(), running("10.0.0.2"));
        let o = aggregate(&plan, &observed, &states, &HashMap::new(), "net1");
        assert_eq!((o.phase, o.ip.as_deref()), (Phase::Running, Some("10.0.0.2")), "the main service's address");
        assert_eq!(o.ready, None, "main has no healthcheck: readiness unknown");
        observed.insert(
            "side".into(),
            Observed { phase: Phase::Failed, message: Some("oom".into()), ..Default::default() },
        );
        let o = aggregate(&plan, &observed, &states, &HashMap::new(), "net1");
        assert_eq!((o.phase, o.message.as_deref()), (Phase::Failed, Some("service side: oom")));
    }
}
