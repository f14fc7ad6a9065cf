//! Pure pieces of the Swarm engine: its configuration, the service an instance becomes, and what a service's
//! tasks mean for the instance. No I/O here.

use std::collections::HashMap;

use aenv_core::{
    EngineError, EnvInstance, EnvInstanceSpec, InvalidSpec, Observed, Phase, PortStatus, Workload,
    labels::InstanceLabels,
};
use aenv_engine_docker::DockerEngineConfig;
use bollard::models::{
    EndpointPortConfig, EndpointPortConfigProtocolEnum, EndpointPortConfigPublishModeEnum, EndpointSpec,
    EndpointSpecModeEnum, Limit, NetworkAttachmentConfig, ResourceObject, ServiceSpec, ServiceSpecMode,
    ServiceSpecModeReplicated, Task, TaskSpec, TaskSpecContainerSpec, TaskSpecContainerSpecPrivileges,
    TaskSpecPlacement, TaskSpecPlacementPreferences, TaskSpecPlacementSpread, TaskSpecResources, TaskSpecRestartPolicy,
    TaskSpecRestartPolicyConditionEnum, TaskState,
};

/// How the operator reaches instances (the readiness probe and the data-plane proxy).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Reach {
    /// Each instance publishes its probe port and its requested ports in Swarm's `host` mode on the node its task
    /// runs on; the operator dials `<node address>:<published port>`. Works from a process on any host that
    /// reaches the nodes (the operator as a plain process, as the tests run it).
    #[default]
    Published,
    /// The operator runs in a container attached to the instances' overlay network(s) and dials the instance's
    /// address there; only requested ports are published.
    Overlay,
}

/// How the Swarm engine runs instances.
#[derive(Clone, Debug)]
pub struct SwarmEngineConfig {
    /// The Docker engine's settings that apply as they are: the operator id, the host policy, the sandbox
    /// defaults, the stop timeout, `--no-pull`, owner networks. `docker.network` is ignored: see `network`.
    pub docker: DockerEngineConfig,
    /// The attachable overlay network instances join (made on first use).
    pub network: String,
    pub reach: Reach,
}

impl SwarmEngineConfig {
    pub fn new(docker: DockerEngineConfig) -> Self {
        SwarmEngineConfig { docker, network: DEFAULT_NETWORK.into(), reach: Reach::Published }
    }
}

/// The overlay network instances join unless the operator names another.
pub const DEFAULT_NETWORK: &str = "aenv-sandboxes";

/// The port the readiness probe uses when the spec has none (AEnvironment images answer `/health` there).
const DEFAULT_PROBE_PORT: u16 = 8081;

/// What Swarm cannot do that a single-container spec asks for, as the API's 400 (the field and the fix); a stack's
/// own checks are [`crate::stack::check`].
pub(crate) fn check(spec: &EnvInstanceSpec, config: &SwarmEngineConfig) -> Result<(), InvalidSpec> {
    if !spec.volumes.is_empty() {
        return Err(InvalidSpec::new(
            "volumes",
            "field `volumes`: named volumes (EnvService storage) are local to one node, and a Swarm task may land on any node; the Swarm engine runs instances without them",
        ));
    }
    if let Some(net) = spec.network.as_deref()
        && matches!(net, "host" | "none" | "bridge" | "default" | "ingress" | "docker_gwbridge")
    {
        return Err(InvalidSpec::new(
            "deployConfig.network",
            format!(
                "field `deployConfig.network`: {net:?} is not an overlay network; on the Swarm engine an instance joins {:?} or an overlay network it names (letters, digits, '-', '_', '.'), made on first use",
                config.network
            ),
        ));
    }
    if let Some((field, message)) = spec.placement.as_ref().and_then(|p| p.check()) {
        return Err(InvalidSpec::new(field, message));
    }
    if let Some(key) = spec.labels.keys().find(|k| k.starts_with("com.docker.")) {
        return Err(InvalidSpec::new(
            "labels",
            format!(
                "field `labels` sets {key:?}: keys under com.docker. are Docker's own (stacks and Swarm read them); choose another key"
            ),
        ));
    }
    if let Some(image) = spec.image.as_deref() {
        config.docker.policy.check_image(image, "image")?;
    }
    Ok(())
}

/// The port the readiness probe dials, when the instance has a probe.
pub(crate) fn probe_port(spec: &EnvInstanceSpec) -> Option<u16> {
    let probe = spec.readiness.clone().unwrap_or_default();
    probe.enabled.then_some(if probe.port == 0 { DEFAULT_PROBE_PORT } else { probe.port })
}

/// The service an instance becomes on `network`. `no_new_privileges`: whether the daemon applies Swarm's
/// `NoNewPrivileges` (API 1.44, Docker 25); an older one ignores the field, and the operator says so at start.
pub(crate) fn service_spec(
    inst: &EnvInstance,
    config: &SwarmEngineConfig,
    network: &str,
) -> Result<ServiceSpec, EngineError> {
    let spec = &inst.spec;
    let Workload::Container { image: Some(image) } = spec.workload() else {
        return Err(EngineError::permanent(
            "spec.image is empty: the instance has no image to run (a compose stack is run as a stack, not as one service)",
        ));
    };
    // Objects written around the API (a custom resource) never went through `validate`.
    check(spec, config).map_err(EngineError::from)?;
    let permanent = |e: &dyn std::fmt::Display| EngineError::permanent(e.to_string());
    let nano_cpus = spec.resources.nano_cpus().map_err(|e| permanent(&e))?;
    let memory = spec.resources.memory_bytes().map_err(|e| permanent(&e))?;
    let name = inst.metadata.name.clone().unwrap_or_default();
    let labels: HashMap<String, String> = InstanceLabels::of(inst, &config.docker.operator_id)
        .map_err(|e| permanent(&e))?
        .render(&spec.labels)
        .into_iter()
        .collect();
    let container = TaskSpecContainerSpec {
        args: (!spec.args.is_empty()).then(|| spec.args.clone()),
        env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        ..hardened_container(image, &labels, &config.docker, &[], &[])
    };
    let mut ports: Vec<(u16, String)> =
        spec.ports.iter().map(|p| (p.container_port, p.protocol.clone().unwrap_or_else(|| "tcp".into()))).collect();
    if config.reach == Reach::Published
        && let Some(port) = probe_port(spec)
    {
        ports.push((port, "tcp".into()));
    }
    let ports = ports.into_iter().map(|(port, protocol)| (port, protocol, None)).collect();
    Ok(one_task_service(
        name,
        labels,
        TaskSpec {
            container_spec: Some(container),
            resources: Some(resources(nano_cpus, memory, &config.docker.hardening)),
            placement: placement(spec),
            networks: Some(vec![NetworkAttachmentConfig { target: Some(network.to_string()), ..Default::default() }]),
            ..Default::default()
        },
        ports,
    ))
}

/// Limits (the request's, else the sandbox defaults) and reservations (only what the request asked for: the
/// scheduler places by them; the default memory limit is a ceiling, not a need).
pub(crate) fn resources(
    nano_cpus: Option<i64>,
    memory: Option<i64>,
    hardening: &aenv_engine_docker::Hardening,
) -> TaskSpecResources {
    let limit_memory = memory.or((hardening.default_memory > 0).then_some(hardening.default_memory));
    TaskSpecResources {
        limits: Some(Limit {
            nano_cpus,
            memory_bytes: limit_memory,
            pids: (hardening.pids_limit > 0).then_some(hardening.pids_limit),
        }),
        reservations: (nano_cpus.is_some() || memory.is_some()).then(|| ResourceObject {
            nano_cpus,
            memory_bytes: memory,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A container with the sandbox defaults: every capability dropped but the kept set (less `cap_drop`, plus
/// `cap_add`, which the host policy allowed), no new privileges, the operator's stop timeout.
pub(crate) fn hardened_container(
    image: &str,
    labels: &HashMap<String, String>,
    docker: &DockerEngineConfig,
    cap_drop: &[String],
    cap_add: &[String],
) -> TaskSpecContainerSpec {
    let bare = |c: &str| c.trim_start_matches("CAP_").to_ascii_uppercase();
    let mut caps: Vec<String> = docker
        .hardening
        .capabilities
        .iter()
        .filter(|c| !cap_drop.iter().any(|d| bare(d) == "ALL" || bare(d) == bare(c)))
        .map(|c| bare(c))
        .collect();
    for c in cap_add {
        if !caps.contains(&bare(c)) {
            caps.push(bare(c));
        }
    }
    TaskSpecContainerSpec {
        image: Some(image.to_string()),
        labels: Some(labels.clone()),
        privileges: Some(TaskSpecContainerSpecPrivileges { no_new_privileges: Some(true), ..Default::default() }),
        capability_drop: Some(vec!["ALL".into()]),
        capability_add: Some(caps.iter().map(|c| format!("CAP_{c}")).collect()),
        stop_grace_period: Some(i64::try_from(docker.stop_timeout.as_nanos()).unwrap_or(i64::MAX)),
        ..Default::default()
    }
}

/// The template's placement (constraints and spread preferences).
pub(crate) fn placement(spec: &EnvInstanceSpec) -> Option<TaskSpecPlacement> {
    spec.placement.as_ref().map(|p| TaskSpecPlacement {
        constraints: (!p.constraints.is_empty()).then(|| p.constraints.clone()),
        preferences: (!p.preferences.is_empty()).then(|| {
            p.preferences
                .iter()
                .filter_map(|pref| aenv_core::Placement::spread_of(pref))
                .map(|label| TaskSpecPlacementPreferences {
                    spread: Some(TaskSpecPlacementSpread { spread_descriptor: Some(label.to_string()) }),
                })
                .collect()
        }),
        ..Default::default()
    })
}

/// A service of one replica whose task, once it ends, is never restarted nor moved (the instance's fate), with
/// `ports` (container port, protocol, published port or `None` for one the node picks) published in host mode.
pub(crate) fn one_task_service(
    name: String,
    labels: HashMap<String, String>,
    task: TaskSpec,
    mut ports: Vec<(u16, String, Option<u16>)>,
) -> ServiceSpec {
    ports.sort();
    ports.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
    let endpoint_ports: Vec<EndpointPortConfig> = ports
        .iter()
        .map(|(port, protocol, published)| EndpointPortConfig {
            protocol: Some(if protocol == "udp" {
                EndpointPortConfigProtocolEnum::UDP
            } else {
                EndpointPortConfigProtocolEnum::TCP
            }),
            target_port: Some(i64::from(*port)),
            // No published port: the node picks a free one, reported in the task's status.
            published_port: published.map(i64::from),
            publish_mode: Some(EndpointPortConfigPublishModeEnum::HOST),
            ..Default::default()
        })
        .collect();
    ServiceSpec {
        name: Some(name),
        labels: Some(labels),
        task_template: Some(TaskSpec {
            restart_policy: Some(TaskSpecRestartPolicy {
                condition: Some(TaskSpecRestartPolicyConditionEnum::NONE),
                max_attempts: Some(0),
                ..Default::default()
            }),
            ..task
        }),
        mode: Some(ServiceSpecMode {
            replicated: Some(ServiceSpecModeReplicated { replicas: Some(1) }),
            ..Default::default()
        }),
        endpoint_spec: Some(EndpointSpec {
            mode: Some(EndpointSpecModeEnum::VIP),
            ports: (!endpoint_ports.is_empty()).then_some(endpoint_ports),
        }),
        ..Default::default()
    }
}

/// The task that is the instance: the first one Swarm made for the service (a replacement, should Swarm ever
/// make one, is not the instance).
pub(crate) fn the_task(tasks: &[Task]) -> Option<&Task> {
    tasks.iter().min_by(|a, b| {
        let key = |t: &Task| (t.created_at.as_deref().and_then(|d| d.parse::<jiff::Timestamp>().ok()), t.id.clone());
        key(a).cmp(&key(b))
    })
}

/// The node a task runs on, as far as the manager knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NodeSeen {
    /// Its address (what published ports are dialled at).
    pub addr: String,
    pub name: String,
    /// Whether the manager hears from it (its state is `ready`).
    pub up: bool,
}

/// What a service's task means for the instance (readiness aside). `ip`: the instance's address on its overlay
/// network; `node`: the task's node, when known.
pub(crate) fn observe_task(
    service_id: &str,
    task: Option<&Task>,
    ip: Option<String>,
    node: Option<&NodeSeen>,
) -> Observed {
    let Some(task) = task else {
        return Observed {
            phase: Phase::Creating,
            message: Some("waiting for Swarm to make the service's task".into()),
            container_id: Some(service_id.to_string()),
            ..Default::default()
        };
    };
    let status = task.status.clone().unwrap_or_default();
    let state = status.state.unwrap_or(TaskState::NEW);
    let desired = task.desired_state.unwrap_or(TaskState::RUNNING);
    let id = task.id.clone().unwrap_or_default();
    let short = id.get(..12).unwrap_or(&id);
    let on = node.map(|n| format!(" on node {}", n.name)).unwrap_or_default();
    let why = [status.err.as_deref(), status.message.as_deref()]
        .into_iter()
        .flatten()
        .find(|s| !s.is_empty())
        .map(|s| format!(": {s}"))
        .unwrap_or_default();
    let exit = status.container_status.as_ref().and_then(|c| c.exit_code);
    let node_down = node.is_some_and(|n| !n.up);
    let (phase, message) = match state {
        // Swarm keeps a task of a node it lost `running` (then orphaned, a day later): the node is what tells.
        TaskState::RUNNING if node_down => (
            Phase::Failed,
            Some(format!(
                "node{} is down (the manager does not hear from it): task {short} is lost with it; the instance is not moved to another node",
                node.map(|n| format!(" {}", n.name)).unwrap_or_default()
            )),
        ),
        TaskState::RUNNING if desired == TaskState::RUNNING => (Phase::Running, None),
        TaskState::RUNNING => (
            Phase::Failed,
            Some(format!(
                "Swarm is shutting down task {short}{on} (its node was drained or left the swarm); the instance is not moved to another node"
            )),
        ),
        TaskState::NEW
        | TaskState::ALLOCATED
        | TaskState::PENDING
        | TaskState::ASSIGNED
        | TaskState::ACCEPTED
        | TaskState::PREPARING
        | TaskState::READY
        | TaskState::STARTING
            if desired == TaskState::RUNNING =>
        {
            // A pending task with an error is waiting for a node that fits (constraints, resources).
            (Phase::Creating, (!why.is_empty()).then(|| format!("task {short} is {state}{why}")))
        }
        TaskState::COMPLETE => (
            Phase::Failed,
            Some(format!("task {short}{on} ended: the container exited with code {}", exit.unwrap_or_default())),
        ),
        TaskState::FAILED => (
            Phase::Failed,
            Some(match exit {
                Some(code) if code != 0 => {
                    format!("task {short}{on} failed: the container exited with code {code}{why}")
                }
                _ => format!("task {short}{on} failed{why}"),
            }),
        ),
        TaskState::REJECTED => (Phase::Failed, Some(format!("task {short}{on} was rejected{why}"))),
        TaskState::ORPHANED => (
            Phase::Failed,
            Some(format!(
                "task {short}{on} is orphaned: its node has been unreachable for too long; the instance is not moved to another node"
            )),
        ),
        _ => (
            Phase::Failed,
            Some(format!(
                "task {short}{on} was shut down by Swarm ({state}{why}; its node drained or lost); the instance is not moved to another node"
            )),
        ),
    };
    let mut ports: Vec<PortStatus> = status
        .port_status
        .and_then(|p| p.ports)
        .unwrap_or_default()
        .iter()
        .filter_map(|p| {
            Some(PortStatus {
                container_port: u16::try_from(p.target_port?).ok()?,
                protocol: p.protocol.map(|p| p.to_string()).unwrap_or_else(|| "tcp".into()),
                host_ip: node.map(|n| n.addr.clone()).unwrap_or_default(),
                host_port: u16::try_from(p.published_port?).ok()?,
                service: None,
            })
        })
        .collect();
    ports.sort_by(|a, b| (a.container_port, &a.protocol).cmp(&(b.container_port, &b.protocol)));
    ports.dedup_by(|a, b| a.container_port == b.container_port && a.protocol == b.protocol);
    let running = phase == Phase::Running;
    Observed {
        phase,
        ip: if running { ip } else { None },
        message,
        container_id: Some(service_id.to_string()),
        ports: if running { ports } else { Vec::new() },
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use aenv_core::{Placement, PortSpec, Resources};
    use bollard::models::{ContainerStatus, PortStatus as SwarmPorts, TaskStatus};

    use super::*;

    fn config() -> SwarmEngineConfig {
        SwarmEngineConfig::new(DockerEngineConfig::new("op1"))
    }

    fn instance(spec: EnvInstanceSpec) -> EnvInstance {
        EnvInstance::new(
            "demo-abc123",
            EnvInstanceSpec { env_name: "demo".into(), image: Some("img:1".into()), ..spec },
        )
    }

    #[test]
    fn an_instance_is_one_replica_never_restarted_with_the_sandbox_defaults() {
        let inst = instance(EnvInstanceSpec {
            resources: Resources { cpu: Some("500m".into()), memory: Some("256Mi".into()) },
            ports: vec![PortSpec { container_port: 9000, protocol: None }],
            args: vec!["serve".into()],
            placement: Some(Placement {
                constraints: vec!["node.labels.gpu==true".into()],
                preferences: vec!["spread=node.labels.zone".into()],
            }),
            ..Default::default()
        });
        let s = service_spec(&inst, &config(), "aenv-sandboxes").unwrap();
        assert_eq!(s.name.as_deref(), Some("demo-abc123"));
        assert_eq!(s.mode.unwrap().replicated.unwrap().replicas, Some(1));
        let t = s.task_template.unwrap();
        let restart = t.restart_policy.unwrap();
        assert_eq!(restart.condition, Some(TaskSpecRestartPolicyConditionEnum::NONE));
        let c = t.container_spec.unwrap();
        assert_eq!(c.args.unwrap(), ["serve"]);
        assert_eq!(c.capability_drop.unwrap(), ["ALL"]);
        let caps = c.capability_add.unwrap();
        assert!(caps.contains(&"CAP_CHOWN".to_string()) && !caps.iter().any(|c| c.contains("NET_RAW")), "{caps:?}");
        assert_eq!(c.privileges.unwrap().no_new_privileges, Some(true));
        assert_eq!(c.labels.unwrap()["aenv.io/operator-id"], "op1");
        let r = t.resources.unwrap();
        let limits = r.limits.unwrap();
        assert_eq!(
            (limits.nano_cpus, limits.memory_bytes, limits.pids),
            (Some(500_000_000), Some(256 << 20), Some(1024))
        );
        let reserved = r.reservations.unwrap();
        assert_eq!((reserved.nano_cpus, reserved.memory_bytes), (Some(500_000_000), Some(256 << 20)));
        let p = t.placement.unwrap();
        assert_eq!(p.constraints.unwrap(), ["node.labels.gpu==true"]);
        let spread = p.preferences.unwrap()[0].spread.clone().unwrap().spread_descriptor;
        assert_eq!(spread.as_deref(), Some("node.labels.zone"));
        assert_eq!(t.networks.unwrap()[0].target.as_deref(), Some("aenv-sandboxes"));
        // The requested port and the probe port, published on the task's node.
        let ports = s.endpoint_spec.unwrap().ports.unwrap();
        let targets: Vec<_> = ports.iter().map(|p| p.target_port.unwrap()).collect();
        assert_eq!(targets, [8081, 9000]);
        assert!(ports.iter().all(|p| p.publish_mode == Some(EndpointPortConfigPublishModeEnum::HOST)));
        assert!(ports.iter().all(|p| p.published_port.is_none()));
    }

    #[test]
    fn default_memory_is_a_limit_not_a_reservation_and_overlay_reach_publishes_only_what_is_asked() {
        let cfg = SwarmEngineConfig { reach: Reach::Overlay, ..config() };
        let s = service_spec(&instance(EnvInstanceSpec::default()), &cfg, "n").unwrap();
        let r = s.task_template.unwrap().resources.unwrap();
        assert_eq!(r.limits.unwrap().memory_bytes, Some(2 << 30));
        assert!(r.reservations.is_none());
        assert!(s.endpoint_spec.unwrap().ports.is_none());
    }

    #[test]
    fn what_swarm_cannot_run_is_refused_naming_the_field() {
        let cfg = config();
        let field = |spec: EnvInstanceSpec| check(&spec, &cfg).unwrap_err().field;
        assert_eq!(
            field(EnvInstanceSpec { network: Some("host".into()), ..Default::default() }),
            "deployConfig.network"
        );
        let bad = Placement { constraints: vec!["gpu=true".into()], preferences: vec![] };
        assert_eq!(
            field(EnvInstanceSpec { placement: Some(bad), ..Default::default() }),
            "deployConfig.placement.constraints[0]"
        );
        let labels = [("com.docker.stack.namespace".to_string(), "x".to_string())].into();
        assert_eq!(field(EnvInstanceSpec { labels, ..Default::default() }), "labels");
        assert!(check(&EnvInstanceSpec { network: Some("team".into()), ..Default::default() }, &cfg).is_ok());
        // Written around the API, it fails the instance instead.
        let inst = instance(EnvInstanceSpec { network: Some("host".into()), ..Default::default() });
        assert_eq!(service_spec(&inst, &cfg, "n").unwrap_err().kind(), aenv_core::ErrorKind::Permanent);
    }

    fn task(state: TaskState, desired: TaskState, err: Option<&str>, exit: Option<i64>) -> Task {
        Task {
            id: Some("t0123456789abcdef".into()),
            desired_state: Some(desired),
            status: Some(TaskStatus {
                state: Some(state),
                err: err.map(String::from),
                container_status: Some(ContainerStatus { exit_code: exit, ..Default::default() }),
                port_status: Some(SwarmPorts {
                    ports: Some(vec![
                        EndpointPortConfig {
                            target_port: Some(8081),
                            published_port: Some(30001),
                            ..Default::default()
                        },
                        EndpointPortConfig {
                            target_port: Some(8081),
                            published_port: Some(30001),
                            ..Default::default()
                        },
                    ]),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_task_s_fate_is_the_instance_s() {
        let seen = NodeSeen { addr: "10.1.0.5".into(), name: "n1".into(), up: true };
        let node = Some(&seen);
        let run = task(TaskState::RUNNING, TaskState::RUNNING, None, None);
        let o = observe_task("svc", Some(&run), Some("10.0.1.5".into()), node);
        assert_eq!(o.phase, Phase::Running);
        assert_eq!(o.ip.as_deref(), Some("10.0.1.5"));
        assert_eq!(o.container_id.as_deref(), Some("svc"));
        assert_eq!(o.ports.len(), 1, "{:?}", o.ports);
        assert_eq!(
            (o.ports[0].host_ip.as_str(), o.ports[0].host_port, o.ports[0].container_port),
            ("10.1.0.5", 30001, 8081)
        );

        let lost = NodeSeen { up: false, ..seen.clone() };
        let o = observe_task("svc", Some(&run), Some("10.0.1.5".into()), Some(&lost));
        assert_eq!(o.phase, Phase::Failed);
        assert!(o.message.unwrap().contains("node n1 is down"));

        let drained = task(TaskState::RUNNING, TaskState::SHUTDOWN, None, None);
        let o = observe_task("svc", Some(&drained), Some("10.0.1.5".into()), node);
        assert_eq!(o.phase, Phase::Failed);
        assert!(o.message.unwrap().contains("on node n1"));
        assert!(o.ip.is_none() && o.ports.is_empty());

        let shut = task(TaskState::SHUTDOWN, TaskState::SHUTDOWN, None, Some(137));
        assert_eq!(observe_task("svc", Some(&shut), None, node).phase, Phase::Failed);

        let rejected = task(TaskState::REJECTED, TaskState::SHUTDOWN, Some("No such image: x:1"), None);
        let o = observe_task("svc", Some(&rejected), None, node);
        assert_eq!(o.phase, Phase::Failed);
        assert!(o.message.unwrap().contains("No such image: x:1"));

        let failed = task(TaskState::FAILED, TaskState::SHUTDOWN, Some("task: non-zero exit (3)"), Some(3));
        assert!(observe_task("svc", Some(&failed), None, node).message.unwrap().contains("exited with code 3"));

        let pending = task(
            TaskState::PENDING,
            TaskState::RUNNING,
            Some("no suitable node (scheduling constraints not satisfied on 1 node)"),
            None,
        );
        let o = observe_task("svc", Some(&pending), None, None);
        assert_eq!(o.phase, Phase::Creating);
        assert!(o.message.unwrap().contains("no suitable node"));

        let o = observe_task("svc", None, None, None);
        assert_eq!((o.phase, o.container_id.as_deref()), (Phase::Creating, Some("svc")));
    }

    #[test]
    fn the_instance_is_the_first_task() {
        let mut first = task(TaskState::SHUTDOWN, TaskState::SHUTDOWN, None, None);
        first.created_at = Some("2026-01-01T00:00:00Z".parse().unwrap());
        first.id = Some("first".into());
        let mut second = task(TaskState::RUNNING, TaskState::RUNNING, None, None);
        second.created_at = Some("2026-01-01T00:01:00Z".parse().unwrap());
        second.id = Some("second".into());
        let tasks = [second, first];
        assert_eq!(the_task(&tasks).unwrap().id.as_deref(), Some("first"));
    }
}
