//! Containers as the engine sees them: the calls both single containers and compose stacks make (inspect,
//! remove), and what an inspected or listed container says about its instance (phase, IP, message, ports).

use std::sync::Arc;

use aenv_core::{EngineError, Observed, Phase, PortStatus};
use bollard::{
    Docker,
    models::{ContainerInspectResponse, ContainerStateStatusEnum, ContainerSummaryStateEnum},
    query_parameters::{LogsOptionsBuilder, RemoveContainerOptionsBuilder},
};

use futures::StreamExt;

use crate::error::{classify, is_conflict, is_not_found};

/// The container named (or with id) `name`; `None` when there is none.
pub(crate) async fn inspect(docker: &Docker, name: &str) -> Result<Option<ContainerInspectResponse>, EngineError> {
    match docker.inspect_container(name, None).await {
        Ok(c) => Ok(Some(c)),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(classify(&format!("inspecting container {name}"), e)),
    }
}

/// How a removal ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Removal {
    /// The container is gone (or never was).
    Gone,
    /// The daemon is removing it already (409): it will be gone shortly.
    InProgress,
}

/// Most lines of a failed container's output its instance's message carries, and most bytes.
const LAST_LINES: usize = 5;
const LAST_BYTES: usize = 512;

/// The last lines a container printed (stdout and stderr together, as `docker logs --tail` gives them), cleaned
/// of control characters and bounded, for the message of an instance whose container exited: what a user needs
/// to see why (`sleep: missing operand`) without a second call. `None` when it printed nothing or the logs cannot
/// be read (a logging driver without reads).
pub(crate) async fn last_output(docker: &Docker, name: &str) -> Option<String> {
    let tail = LAST_LINES.to_string();
    let options = LogsOptionsBuilder::default().stdout(true).stderr(true).tail(&tail).build();
    let mut logs = docker.logs(name, Some(options));
    let mut bytes = Vec::new();
    let read = async {
        while let Some(Ok(chunk)) = logs.next().await {
            bytes.extend_from_slice(&chunk.into_bytes());
            if bytes.len() > 64 * 1024 {
                break;
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(2), read).await.ok()?;
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<String> = text
        .lines()
        .map(|l| l.chars().filter(|c| !c.is_control() || *c == '\t').collect::<String>().trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    let joined = lines[lines.len().saturating_sub(LAST_LINES)..].join(" | ");
    if joined.is_empty() {
        return None;
    }
    // Keep the end: the last words are the ones that say why.
    let start = joined.len().saturating_sub(LAST_BYTES);
    let start = (start..joined.len()).find(|i| joined.is_char_boundary(*i)).unwrap_or(joined.len());
    Some(if start > 0 { format!("…{}", &joined[start..]) } else { joined })
}

/// Kills and removes a container at once (sandboxes get no grace period), with its anonymous volumes.
pub(crate) async fn remove(docker: &Docker, name: &str) -> Result<Removal, EngineError> {
    let options = RemoveContainerOptionsBuilder::default().force(true).v(true).build();
    match docker.remove_container(name, Some(options)).await {
        Ok(()) => Ok(Removal::Gone),
        Err(e) if is_not_found(&e) => Ok(Removal::Gone),
        Err(e) if is_conflict(&e) => Ok(Removal::InProgress),
        Err(e) => Err(classify(&format!("removing container {name}"), e)),
    }
}

/// Maps an inspected container to the instance's phase, IP and message. The operator's own deletions never get
/// here (they do not go through `apply`), so a container on its way out was removed by someone else.
pub(crate) fn observe(name: &str, c: &ContainerInspectResponse) -> Observed {
    let state = c.state.clone().unwrap_or_default();
    let ip = c.network_settings.as_ref().and_then(|n| n.networks.as_ref()).and_then(|nets| {
        let mut ips: Vec<_> = nets
            .iter()
            .filter_map(|(net, ep)| ep.ip_address.clone().filter(|ip| !ip.is_empty()).map(|ip| (net.clone(), ip)))
            .collect();
        ips.sort();
        ips.into_iter().next().map(|(_, ip)| ip)
    });
    let exit_message = || {
        let code = state.exit_code.unwrap_or_default();
        let mut msg = format!("the container exited with code {code}");
        if state.oom_killed == Some(true) {
            msg.push_str(" (killed for exceeding its memory limit)");
        }
        if let Some(err) = state.error.as_ref().filter(|e| !e.is_empty()) {
            msg.push_str(&format!(": {err}"));
        }
        msg
    };
    let (phase, message) = match state.status {
        Some(ContainerStateStatusEnum::RUNNING) => (Phase::Running, None),
        Some(ContainerStateStatusEnum::PAUSED) => (Phase::Paused, None),
        Some(ContainerStateStatusEnum::RESTARTING) => (Phase::Running, Some("the container is restarting".into())),
        Some(ContainerStateStatusEnum::CREATED) | None | Some(ContainerStateStatusEnum::EMPTY) => {
            (Phase::Creating, None)
        }
        Some(ContainerStateStatusEnum::EXITED) | Some(ContainerStateStatusEnum::DEAD) => {
            (Phase::Failed, Some(exit_message()))
        }
        Some(ContainerStateStatusEnum::REMOVING) | Some(ContainerStateStatusEnum::STOPPING) => {
            (Phase::Terminated, Some(format!("container {name} is being removed outside the operator")))
        }
    };
    let mut ports: Vec<PortStatus> = c
        .network_settings
        .as_ref()
        .and_then(|n| n.ports.as_ref())
        .map(|map| {
            map.iter()
                .flat_map(|(key, bindings)| {
                    let (port, protocol) = key.split_once('/').unwrap_or((key.as_str(), "tcp"));
                    let port: u16 = port.parse().unwrap_or(0);
                    bindings.iter().flatten().filter_map(move |b| {
                        Some(PortStatus {
                            container_port: port,
                            protocol: protocol.to_string(),
                            host_ip: b.host_ip.clone().unwrap_or_default(),
                            host_port: b.host_port.as_deref()?.parse().ok()?,
                            service: None,
                        })
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    ports.sort_by(|a, b| (a.container_port, &a.protocol, &a.host_ip).cmp(&(b.container_port, &b.protocol, &b.host_ip)));
    ports.dedup_by(|a, b| a.container_port == b.container_port && a.protocol == b.protocol);
    Observed {
        phase,
        ip: if phase == Phase::Running { ip } else { None },
        message,
        container_id: c.id.clone(),
        ports: if phase == Phase::Running { ports } else { Vec::new() },
        ..Default::default()
    }
}

pub(crate) fn summary_phase(state: Option<&ContainerSummaryStateEnum>) -> Phase {
    match state {
        Some(ContainerSummaryStateEnum::RUNNING)
        | Some(ContainerSummaryStateEnum::PAUSED)
        | Some(ContainerSummaryStateEnum::RESTARTING) => Phase::Running,
        Some(ContainerSummaryStateEnum::EXITED) | Some(ContainerSummaryStateEnum::DEAD) => Phase::Failed,
        Some(ContainerSummaryStateEnum::REMOVING) | Some(ContainerSummaryStateEnum::STOPPING) => Phase::Terminated,
        _ => Phase::Creating,
    }
}

/// The platform the daemon runs (`linux/amd64`), asked once and kept.
#[derive(Clone, Debug, Default)]
pub(crate) struct HostPlatform(Arc<tokio::sync::OnceCell<String>>);

impl HostPlatform {
    async fn get(&self, docker: &Docker) -> Option<&str> {
        self.0
            .get_or_try_init(|| async {
                let v = docker.version().await?;
                Ok::<_, bollard::errors::Error>(format!("{}/{}", v.os.unwrap_or_default(), v.arch.unwrap_or_default()))
            })
            .await
            .ok()
            .map(String::as_str)
    }
}

/// Why a container that exited with an error may have: its image is built for another platform than the daemon's
/// (Docker starts it, and the kernel refuses the binary: the container exits with only `exec format error` in its
/// output). `None` when it did not fail, or the platforms agree, or either cannot be had. Asked only of failed
/// containers, so it costs nothing on the way to `Running`.
pub(crate) async fn platform_mismatch(
    docker: &Docker,
    host: &HostPlatform,
    c: &ContainerInspectResponse,
) -> Option<String> {
    let state = c.state.as_ref()?;
    let failed = matches!(state.status, Some(ContainerStateStatusEnum::EXITED) | Some(ContainerStateStatusEnum::DEAD))
        && state.exit_code.unwrap_or_default() != 0;
    if !failed {
        return None;
    }
    let image = docker.inspect_image(c.image.as_deref()?).await.ok()?;
    let built_for = format!("{}/{}", image.os.unwrap_or_default(), image.architecture.unwrap_or_default());
    let runs = host.get(docker).await?;
    (built_for != runs).then(|| format!("its image is built for {built_for}, and this Docker host runs {runs}"))
}
