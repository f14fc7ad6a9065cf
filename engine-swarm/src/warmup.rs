//! Warmup on every node: Swarm has no call that pulls an image on each node, so for each image the engine makes a
//! service in mode `GlobalJob` (API >= 1.41) with that image, the template's placement constraints, restart
//! condition `none`, and an entrypoint that is no file of any image (`/.aenv-warmup-no-such-command`). Swarm pulls
//! the image on each eligible node before it makes the task's container; the container then cannot start and the
//! task fails: a task past the pull (failed to start, complete, running) means the image is on that node, a
//! rejected task (no such image, a pull error) means it is not, with Swarm's reason. The service carries the
//! operator's labels and [`WARMUP_LABEL`], and is removed once every node's task is final (or at the next start of
//! the operator, should it die meanwhile).

use std::{collections::HashMap, time::Duration};

use aenv_core::{PullProgress, PullState, labels};
use aenv_engine_docker::{classify, is_not_found};
use bollard::{
    Docker,
    models::{ServiceSpec, ServiceSpecMode, TaskSpec, TaskSpecContainerSpec, TaskSpecRestartPolicy, TaskState},
    models::{Task, TaskSpecRestartPolicyConditionEnum},
    query_parameters::{ListServicesOptionsBuilder, ListTasksOptionsBuilder},
};
use futures::{StreamExt, stream::BoxStream};
use tracing::{debug, warn};

use crate::spec::{SwarmEngineConfig, placement};

/// The label that marks a warmup job (its value: the image).
pub(crate) const WARMUP_LABEL: &str = "aenv.io/warmup";

/// An entrypoint no image has: the container is made (after the pull) and fails to start, so no work runs.
const NO_COMMAND: &str = "/.aenv-warmup-no-such-command";

/// How often a warmup job's tasks are listed.
const POLL: Duration = Duration::from_millis(500);

/// How long a job may have no task at all before the warmup says no node can run the image.
const NO_TASK_GRACE: Duration = Duration::from_secs(20);

/// How long a warmup job may take in all (a large image on slow nodes).
const JOB_DEADLINE: Duration = Duration::from_secs(30 * 60);

/// Where one node stands in a warmup job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NodePull {
    Pending,
    Done,
    Failed(String),
}

/// A task's state as the pull's: rejected means the pull (or the image) failed; any state from `starting` on
/// means the image was on the node; shut down or orphaned before that (the node was drained or lost) is a failure.
pub(crate) fn node_pull(task: &Task) -> NodePull {
    let status = task.status.as_ref();
    let err = status.and_then(|s| s.err.clone()).or_else(|| status.and_then(|s| s.message.clone())).unwrap_or_default();
    match status.and_then(|s| s.state) {
        Some(TaskState::REJECTED) => NodePull::Failed(err),
        Some(TaskState::STARTING | TaskState::RUNNING | TaskState::COMPLETE | TaskState::FAILED) => NodePull::Done,
        Some(TaskState::SHUTDOWN | TaskState::REMOVE | TaskState::ORPHANED) => {
            NodePull::Failed(format!("the task was stopped before the pull ended ({err})"))
        }
        _ => NodePull::Pending,
    }
}

/// One progress entry for an image from its job's tasks (each node's latest task): `Pulling` with how many nodes
/// are done while any is pending; then `Failed` naming each failed node and its reason, else `Pulled` naming the
/// nodes. `None` while there is no task yet.
pub(crate) fn summarise(image: &str, tasks: &[Task]) -> Option<PullProgress> {
    let mut latest: HashMap<String, &Task> = HashMap::new();
    for t in tasks {
        let node = t.node_id.clone().unwrap_or_default();
        let at = |t: &Task| t.created_at.as_deref().and_then(|d| d.parse::<jiff::Timestamp>().ok());
        let newer = latest.get(&node).is_none_or(|old| at(old) < at(t));
        if newer {
            latest.insert(node, t);
        }
    }
    if latest.is_empty() {
        return None;
    }
    let mut nodes: Vec<(String, NodePull)> = latest.into_iter().map(|(n, t)| (n, node_pull(t))).collect();
    nodes.sort_by(|a, b| a.0.cmp(&b.0));
    let total = nodes.len();
    let done = nodes.iter().filter(|(_, p)| *p == NodePull::Done).count();
    let progress = |state, detail| Some(PullProgress { image: image.to_string(), state, detail });
    if nodes.iter().any(|(_, p)| *p == NodePull::Pending) {
        return progress(PullState::Pulling, format!("{done}/{total} nodes have the image"));
    }
    let failed: Vec<String> = nodes
        .iter()
        .filter_map(|(n, p)| match p {
            NodePull::Failed(why) => Some(format!("node {n}: {why}")),
            _ => None,
        })
        .collect();
    if failed.is_empty() {
        let names: Vec<&str> = nodes.iter().map(|(n, _)| n.as_str()).collect();
        progress(PullState::Pulled, format!("on {total} node(s): {}", names.join(", ")))
    } else {
        progress(PullState::Failed, format!("{image}: pulled on {done}/{total} nodes; {}", failed.join("; ")))
    }
}

/// The job's service spec for `image`.
pub(crate) fn job_spec(
    name: &str,
    image: &str,
    spec: &aenv_core::EnvInstanceSpec,
    config: &SwarmEngineConfig,
) -> ServiceSpec {
    let labels = HashMap::from([
        (labels::MANAGED_BY.to_string(), labels::MANAGED_BY_VALUE.to_string()),
        (labels::OPERATOR_ID.to_string(), config.docker.operator_id.clone()),
        (WARMUP_LABEL.to_string(), image.to_string()),
    ]);
    ServiceSpec {
        name: Some(name.to_string()),
        labels: Some(labels.clone()),
        task_template: Some(TaskSpec {
            container_spec: Some(TaskSpecContainerSpec {
                image: Some(image.to_string()),
                labels: Some(labels),
                command: Some(vec![NO_COMMAND.to_string()]),
                args: Some(vec![]),
                ..Default::default()
            }),
            restart_policy: Some(TaskSpecRestartPolicy {
                condition: Some(TaskSpecRestartPolicyConditionEnum::NONE),
                max_attempts: Some(0),
                ..Default::default()
            }),
            placement: placement(spec),
            ..Default::default()
        }),
        mode: Some(ServiceSpecMode { global_job: Some(HashMap::new()), ..Default::default() }),
        ..Default::default()
    }
}

/// Removes this operator's warmup jobs (left by an operator that died during a warmup).
pub(crate) async fn sweep(docker: &Docker, operator_id: &str) {
    let filters = HashMap::from([(
        "label".to_string(),
        vec![format!("{}={operator_id}", labels::OPERATOR_ID), WARMUP_LABEL.to_string()],
    )]);
    let options = ListServicesOptionsBuilder::default().filters(&filters).build();
    match docker.list_services(Some(options)).await {
        Ok(services) => {
            for id in services.into_iter().filter_map(|s| s.id) {
                if let Err(e) = docker.delete_service(&id).await
                    && !is_not_found(&e)
                {
                    warn!(service = %id, error = %e, "could not remove a leftover warmup job");
                }
            }
        }
        Err(e) => warn!(error = %e, "could not list leftover warmup jobs"),
    }
}

/// Warms each image up on every node the template could run on, one job per image in turn.
pub(crate) fn warmup(
    docker: Docker,
    config: SwarmEngineConfig,
    spec: aenv_core::EnvInstanceSpec,
) -> BoxStream<'static, PullProgress> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let images: Vec<String> = spec.image.iter().cloned().collect();
    tokio::spawn(async move {
        for image in images {
            let send = |state, detail: String| {
                let tx = tx.clone();
                let image = image.clone();
                async move { tx.send(PullProgress { image, state, detail }).await.is_ok() }
            };
            if config.docker.no_pull {
                let _ =
                    send(PullState::Failed, "this operator runs with --no-pull: the nodes pull nothing".into()).await;
                continue;
            }
            if let Err(why) = config.docker.policy.check_registry_resolved(&image).await {
                let _ = send(PullState::Failed, why).await;
                continue;
            }
            if !send(PullState::Pulling, "starting a warmup job on every eligible node".into()).await {
                return;
            }
            let last = run_job(&docker, &config, &spec, &image, &tx).await;
            if tx.send(last).await.is_err() {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx).boxed()
}

/// Runs one image's job to its end and removes it; the final progress entry.
async fn run_job(
    docker: &Docker,
    config: &SwarmEngineConfig,
    spec: &aenv_core::EnvInstanceSpec,
    image: &str,
    tx: &tokio::sync::mpsc::Sender<PullProgress>,
) -> PullProgress {
    let failed = |detail: String| PullProgress { image: image.to_string(), state: PullState::Failed, detail };
    let name = format!("aenv-warmup-{}", uuid_like());
    let job = job_spec(&name, image, spec, config);
    let id = match docker.create_service(job, aenv_engine_docker::credentials_for(image)).await {
        Ok(created) => created.id.unwrap_or_else(|| name.clone()),
        Err(e) => return failed(classify(&format!("creating the warmup job for {image}"), e).to_string()),
    };
    debug!(service = %id, image, "warmup job created");
    let started = tokio::time::Instant::now();
    let filters = HashMap::from([("service".to_string(), vec![id.clone()])]);
    let mut last_sent = String::new();
    let result = loop {
        tokio::time::sleep(POLL).await;
        let options = ListTasksOptionsBuilder::default().filters(&filters).build();
        let tasks = match docker.list_tasks(Some(options)).await {
            Ok(t) => t,
            Err(e) => break failed(classify(&format!("listing the warmup job's tasks for {image}"), e).to_string()),
        };
        match summarise(image, &tasks) {
            None if started.elapsed() > NO_TASK_GRACE => {
                break failed(format!(
                    "{image}: no node can run it (no ready node matches the template's placement constraints)"
                ));
            }
            None => {}
            Some(p) if p.state == PullState::Pulling && p.detail != last_sent => {
                last_sent = p.detail.clone();
                if tx.send(p).await.is_err() {
                    break failed("the warmup was abandoned".into());
                }
            }
            Some(p) if p.state == PullState::Pulling => {}
            Some(p) => break p,
        }
        if started.elapsed() > JOB_DEADLINE {
            break failed(format!("{image}: the nodes did not finish pulling in {JOB_DEADLINE:?}"));
        }
    };
    if let Err(e) = docker.delete_service(&id).await
        && !is_not_found(&e)
    {
        warn!(service = %id, error = %e, "could not remove a warmup job");
    }
    result
}

/// A short random name part.
fn uuid_like() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{:x}{:x}", std::process::id(), nanos)
}

#[cfg(test)]
mod tests {
    use bollard::models::TaskStatus;

    use super::*;

    fn task(node: &str, created: &str, state: TaskState, err: Option<&str>) -> Task {
        Task {
            node_id: Some(node.into()),
            created_at: Some(created.into()),
            status: Some(TaskStatus { state: Some(state), err: err.map(String::from), ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn a_job_s_tasks_say_where_the_image_is() {
        let t0 = "2026-01-01T00:00:00Z";
        assert_eq!(summarise("img", &[]), None);
        let p = summarise("img", &[task("a", t0, TaskState::PREPARING, None), task("b", t0, TaskState::FAILED, None)])
            .unwrap();
        assert_eq!((p.state, p.detail.as_str()), (PullState::Pulling, "1/2 nodes have the image"));
        let p = summarise("img", &[task("a", t0, TaskState::COMPLETE, None), task("b", t0, TaskState::FAILED, None)])
            .unwrap();
        assert_eq!((p.state, p.detail.as_str()), (PullState::Pulled, "on 2 node(s): a, b"));
        let p = summarise(
            "img",
            &[task("a", t0, TaskState::FAILED, None), task("b", t0, TaskState::REJECTED, Some("No such image: img"))],
        )
        .unwrap();
        assert_eq!(p.state, PullState::Failed);
        assert!(p.detail.contains("img") && p.detail.contains("node b: No such image: img"), "{}", p.detail);
        // A node drained before its pull ended is not a success.
        let p = summarise("img", &[task("a", t0, TaskState::SHUTDOWN, None)]).unwrap();
        assert_eq!(p.state, PullState::Failed);
        // Each node's latest task counts.
        let p = summarise(
            "img",
            &[
                task("a", t0, TaskState::REJECTED, Some("x")),
                task("a", "2026-01-01T00:00:05Z", TaskState::FAILED, None),
            ],
        )
        .unwrap();
        assert_eq!(p.state, PullState::Pulled);
    }
}
