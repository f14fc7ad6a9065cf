//! What a stack's containers say: the instance's phase, IP, ports and per-service state; and the view of stacks a
//! single list call gives the orphan sweep.
//!
//! The phase of a stack: `Running` when its main service runs and no other service has failed; `Failed` when the
//! main service stopped, or another service exited with a non-zero code, died or was OOM-killed (a service that
//! exits with 0, such as a migration, has completed); `Terminated` when a container of a stack made before is
//! gone (removed outside the operator).

use std::collections::HashMap;

use aenv_core::{Observed, OwnedKind, OwnedObject, Phase, PortStatus, ServiceStatus, labels};
use bollard::{
    Docker,
    models::{ContainerInspectResponse, ContainerStateStatusEnum, ContainerSummary, ContainerSummaryStateEnum},
    query_parameters::{ListNetworksOptionsBuilder, ListVolumesOptionsBuilder},
};
use jiff::Timestamp;

use super::{MAIN_SERVICE_LABEL, StackSpec, compose_labels as cl, container_name, network_name};
use crate::error::classify;

/// Why a service's container is not fine, if it is not: `Some((terminal phase, message))`.
fn service_problem(
    service: &str,
    is_main: bool,
    c: Option<&ContainerInspectResponse>,
    created_before: bool,
    instance: &str,
) -> Option<(Phase, String)> {
    let Some(c) = c else {
        // Missing while the stack is being made is work in progress; missing afterwards is a removal.
        return created_before.then(|| {
            (
                Phase::Terminated,
                format!(
                    "service {service}: container {} was removed outside the operator",
                    container_name(instance, service)
                ),
            )
        });
    };
    let state = c.state.clone().unwrap_or_default();
    let code = state.exit_code.unwrap_or_default();
    let why = || {
        let mut msg = format!("service {service} exited with code {code}");
        if state.oom_killed == Some(true) {
            msg.push_str(" (killed for exceeding its memory limit)");
        }
        if let Some(err) = state.error.as_ref().filter(|e| !e.is_empty()) {
            msg.push_str(&format!(": {err}"));
        }
        msg
    };
    match state.status {
        Some(ContainerStateStatusEnum::EXITED) if is_main || code != 0 || state.oom_killed == Some(true) => {
            Some((Phase::Failed, why()))
        }
        Some(ContainerStateStatusEnum::DEAD) => Some((Phase::Failed, why())),
        Some(ContainerStateStatusEnum::REMOVING) | Some(ContainerStateStatusEnum::STOPPING) => {
            Some((Phase::Terminated, format!("service {service}: its container is being removed outside the operator")))
        }
        _ => None,
    }
}

fn state_name(c: Option<&ContainerInspectResponse>) -> String {
    c.and_then(|c| c.state.as_ref())
        .and_then(|s| s.status)
        .map(|s| s.to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "missing".into())
}

/// The container's IP on the stack network.
fn stack_ip(instance: &str, c: &ContainerInspectResponse) -> Option<String> {
    c.network_settings
        .as_ref()
        .and_then(|n| n.networks.as_ref())
        .and_then(|nets| nets.get(&network_name(instance)))
        .and_then(|ep| ep.ip_address.clone())
        .filter(|ip| !ip.is_empty())
}

fn ports_of(service: &str, c: &ContainerInspectResponse) -> Vec<PortStatus> {
    let mut out = Vec::new();
    let Some(ports) = c.network_settings.as_ref().and_then(|n| n.ports.as_ref()) else { return out };
    for (key, bindings) in ports {
        let (port, proto) = key.split_once('/').unwrap_or((key.as_str(), "tcp"));
        let Ok(container_port) = port.parse::<u16>() else { continue };
        for b in bindings.iter().flatten() {
            let Some(host_port) = b.host_port.as_deref().and_then(|p| p.parse::<u16>().ok()) else { continue };
            out.push(PortStatus {
                container_port,
                protocol: proto.to_string(),
                host_ip: b.host_ip.clone().unwrap_or_default(),
                host_port,
                service: Some(service.to_string()),
            });
        }
    }
    out.sort_by(|a, b| (a.container_port, &a.host_ip, a.host_port).cmp(&(b.container_port, &b.host_ip, b.host_port)));
    out
}

/// Folds the stack's containers into what the reconciler writes to the status.
pub(crate) fn observe(
    instance: &str,
    stack: &StackSpec,
    containers: &HashMap<String, Option<ContainerInspectResponse>>,
    created_before: bool,
) -> Observed {
    let mut services = Vec::new();
    let mut ports = Vec::new();
    let mut problem: Option<(Phase, String)> = None;
    for svc in &stack.services {
        let c = containers.get(&svc.name).and_then(Option::as_ref);
        let is_main = svc.name == stack.main;
        let issue = service_problem(&svc.name, is_main, c, created_before, instance);
        let health = c
            .and_then(|c| c.state.as_ref())
            .and_then(|s| s.health.as_ref())
            .and_then(|h| h.status)
            .map(|h| h.to_string())
            .filter(|h| !h.is_empty() && h != "none");
        let exit_message = c.and_then(|c| c.state.as_ref()).and_then(|s| {
            matches!(s.status, Some(ContainerStateStatusEnum::EXITED) | Some(ContainerStateStatusEnum::DEAD))
                .then(|| format!("exited with code {}", s.exit_code.unwrap_or_default()))
        });
        services.push(ServiceStatus {
            name: svc.name.clone(),
            state: state_name(c),
            health,
            ip: c.and_then(|c| stack_ip(instance, c)),
            message: issue.as_ref().map(|(_, m)| m.clone()).or(exit_message),
        });
        if let Some(c) = c {
            ports.extend(ports_of(&svc.name, c));
        }
        // The main service's problem, else the first one in file order, names the failure.
        if let Some(issue) = issue
            && (problem.is_none() || is_main)
        {
            problem = Some(issue);
        }
    }
    let main = containers.get(&stack.main).and_then(Option::as_ref);
    let main_status = main.and_then(|c| c.state.as_ref()).and_then(|s| s.status);
    let (phase, message) = match problem {
        Some((phase, message)) => (phase, Some(message)),
        None => match main_status {
            Some(ContainerStateStatusEnum::RUNNING) => (Phase::Running, None),
            Some(ContainerStateStatusEnum::PAUSED) => (Phase::Paused, None),
            Some(ContainerStateStatusEnum::RESTARTING) => {
                (Phase::Running, Some(format!("service {} is restarting", stack.main)))
            }
            _ => (Phase::Creating, None),
        },
    };
    let main_health = main.and_then(|c| c.state.as_ref()).and_then(|s| s.health.as_ref()).and_then(|h| h.status);
    let (ready, ready_message) = match (phase, main_health) {
        (Phase::Running, Some(bollard::models::HealthStatusEnum::HEALTHY)) => (Some(true), None),
        (Phase::Running, Some(bollard::models::HealthStatusEnum::UNHEALTHY)) => {
            (Some(false), Some(format!("service {} is unhealthy", stack.main)))
        }
        (Phase::Running, Some(bollard::models::HealthStatusEnum::STARTING)) => {
            (Some(false), Some(format!("service {}'s healthcheck has not passed yet", stack.main)))
        }
        _ => (None, None),
    };
    Observed {
        phase,
        ip: if matches!(phase, Phase::Running | Phase::Paused) {
            main.and_then(|c| stack_ip(instance, c))
        } else {
            None
        },
        message,
        container_id: main.and_then(|c| c.id.clone()),
        ports,
        services,
        ready,
        ready_message,
    }
}

fn summary_exit_code(status: Option<&str>) -> Option<i64> {
    // "Exited (137) 5 seconds ago"
    let rest = status?.strip_prefix("Exited (")?;
    rest.split(')').next()?.parse().ok()
}

/// The phase a list call gives each stack, keyed by (namespace, instance), judged by the same rules as
/// [`observe`]: the main service's state, unless another service failed.
pub(crate) fn stack_phases(containers: &[ContainerSummary]) -> HashMap<(String, String), Phase> {
    let mut out: HashMap<(String, String), Phase> = HashMap::new();
    let mut failed: HashMap<(String, String), bool> = HashMap::new();
    for c in containers {
        let Some(l) = c.labels.as_ref() else { continue };
        let (Some(main), Some(service), Some(key)) =
            (l.get(MAIN_SERVICE_LABEL), l.get(cl::SERVICE), labels::instance_of(|k| l.get(k)))
        else {
            continue;
        };
        let code = summary_exit_code(c.status.as_deref());
        let phase = match c.state {
            Some(ContainerSummaryStateEnum::RUNNING)
            | Some(ContainerSummaryStateEnum::PAUSED)
            | Some(ContainerSummaryStateEnum::RESTARTING) => Phase::Running,
            Some(ContainerSummaryStateEnum::EXITED) if main == service || code != Some(0) => Phase::Failed,
            Some(ContainerSummaryStateEnum::EXITED) => Phase::Running,
            Some(ContainerSummaryStateEnum::DEAD) => Phase::Failed,
            Some(ContainerSummaryStateEnum::REMOVING) | Some(ContainerSummaryStateEnum::STOPPING) => Phase::Terminated,
            _ => Phase::Creating,
        };
        if phase == Phase::Failed || phase == Phase::Terminated {
            failed.insert(key.clone(), true);
            out.insert(key, phase);
        } else if main == service && !failed.contains_key(&key) {
            out.insert(key, phase);
        } else {
            out.entry(key).or_insert(Phase::Creating);
        }
    }
    out
}

/// Networks and volumes labelled as this operator's, as owned objects. Their phase is their stack's, or `Creating` when the stack has no container (yet).
/// Shared networks (user and owner networks, [`crate::network`]) are listed only when no network in `in_use` (the
/// networks the operator's containers are on) has their name.
pub(crate) async fn owned_networks_and_volumes(
    docker: &Docker,
    filters: &HashMap<String, Vec<String>>,
    phases: &HashMap<(String, String), Phase>,
    in_use: &std::collections::HashSet<String>,
) -> Result<Vec<OwnedObject>, aenv_core::EngineError> {
    let mut out = Vec::new();
    let object = |l: &HashMap<String, String>, kind: OwnedKind, id: String, created: Option<Timestamp>| {
        let (namespace, instance) = labels::instance_of(|k| l.get(k))?;
        let phase = phases.get(&(namespace.clone(), instance.clone())).copied().unwrap_or(Phase::Creating);
        Some(OwnedObject { namespace, instance, kind, id, phase, created })
    };
    let options = ListNetworksOptionsBuilder::default().filters(filters).build();
    let networks = docker.list_networks(Some(options)).await.map_err(|e| classify("listing networks", e))?;
    for n in networks {
        let (Some(l), Some(id)) = (n.labels.as_ref(), n.id.clone()) else { continue };
        let created = n.created.as_deref().and_then(|t| t.parse::<Timestamp>().ok());
        if labels::instance_of(|k| l.get(k)).is_none() && l.contains_key(crate::network::NETWORK_LABEL) {
            let Some(name) = n.name.clone() else { continue };
            if !in_use.contains(&name) {
                out.push(OwnedObject {
                    namespace: String::new(),
                    instance: String::new(),
                    kind: OwnedKind::SharedNetwork,
                    id: name,
                    phase: Phase::Terminated,
                    created,
                });
            }
            continue;
        }
        out.extend(object(l, OwnedKind::Network, id, created));
    }
    let options = ListVolumesOptionsBuilder::default().filters(filters).build();
    let volumes = docker.list_volumes(Some(options)).await.map_err(|e| classify("listing volumes", e))?;
    for v in volumes.volumes.unwrap_or_default() {
        let created = v.created_at.as_deref().and_then(|t| t.parse::<Timestamp>().ok());
        out.extend(object(&v.labels, OwnedKind::Volume, v.name, created));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_code_from_summary_status() {
        assert_eq!(summary_exit_code(Some("Exited (137) 5 seconds ago")), Some(137));
        assert_eq!(summary_exit_code(Some("Exited (0) About a minute ago")), Some(0));
        assert_eq!(summary_exit_code(Some("Up 3 seconds")), None);
        assert_eq!(summary_exit_code(None), None);
    }

    fn summary(
        instance: &str,
        service: &str,
        main: &str,
        state: ContainerSummaryStateEnum,
        status: &str,
    ) -> ContainerSummary {
        ContainerSummary {
            labels: Some(HashMap::from([
                (labels::INSTANCE.to_string(), instance.to_string()),
                (cl::SERVICE.to_string(), service.to_string()),
                (MAIN_SERVICE_LABEL.to_string(), main.to_string()),
            ])),
            state: Some(state),
            status: Some(status.to_string()),
            ..Default::default()
        }
    }

    #[test]
    fn a_stack_is_judged_by_its_main_service_unless_another_failed() {
        use ContainerSummaryStateEnum::*;
        let key = |i: &str| ("default".to_string(), i.to_string());
        let phases = stack_phases(&[
            summary("ok", "side", "web", RUNNING, "Up"),
            summary("ok", "migrate", "web", EXITED, "Exited (0) 1 second ago"),
            summary("ok", "web", "web", RUNNING, "Up"),
            summary("bad", "web", "web", RUNNING, "Up"),
            summary("bad", "side", "web", EXITED, "Exited (2) 1 second ago"),
            summary("down", "web", "web", EXITED, "Exited (0) 1 second ago"),
            summary("young", "side", "web", RUNNING, "Up"),
        ]);
        assert_eq!(phases[&key("ok")], Phase::Running);
        assert_eq!(phases[&key("bad")], Phase::Failed);
        assert_eq!(phases[&key("down")], Phase::Failed);
        assert_eq!(phases[&key("young")], Phase::Creating, "main not made yet");
    }
}
