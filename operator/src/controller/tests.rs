//! The controller's scenarios, run through the [`FakeEngine`] and the in-memory store: no Docker daemon, no API
//! server, and a clock the test sets.

use std::{sync::Arc, time::Duration};

use aenv_core::{EngineError, EngineEvent, EnvInstance, EnvInstanceSpec, Observed, OwnedKind, OwnedObject, Phase};
use jiff::{SignedDuration, Timestamp};
use kube::runtime::controller::Action;
use tokio::sync::mpsc;

use super::{
    Context, LoopConfig,
    decide::{self, Step},
    error_policy,
    fake::{Call, FakeEngine, IP, running},
    resync,
};
use crate::{
    Error,
    metrics::Metrics,
    store::{MemoryStore, ObjectStore},
};

struct Fixture {
    store: Arc<MemoryStore<EnvInstance>>,
    engine: Arc<FakeEngine>,
    ctx: Arc<Context>,
    t0: Timestamp,
}

fn at(t0: Timestamp, ms: i64) -> Timestamp {
    t0 + SignedDuration::from_millis(ms)
}

impl Fixture {
    fn new() -> Self {
        let store = MemoryStore::new();
        let engine = FakeEngine::new();
        let ctx = Context::new(store.clone(), engine.clone(), Arc::new(Metrics::default()));
        Fixture { store, engine, ctx, t0: Timestamp::from_second(1_800_000_000).unwrap() }
    }

    /// An instance created at `t0` with `ttl`, its expiry stamped as the API stamps it.
    async fn instance(&self, name: &str, ttl: Option<&str>) -> Arc<EnvInstance> {
        let spec = EnvInstanceSpec {
            env_name: "demo".into(),
            image: Some("demo:1".into()),
            ttl: ttl.map(str::to_string),
            ..Default::default()
        };
        let mut obj = EnvInstance::new(name, spec);
        obj.metadata.namespace = Some("default".into());
        obj.stamp_expiry(self.t0).unwrap();
        self.store.create(obj, self.t0).await.unwrap()
    }

    fn get(&self, name: &str) -> Option<Arc<EnvInstance>> {
        self.store.get(&format!("default/{name}"))
    }

    async fn reconcile(&self, name: &str, ms_after_t0: i64) -> Result<Action, Error> {
        let obj = self.get(name).expect("the instance is in the store");
        self.ctx.reconcile(obj, at(self.t0, ms_after_t0)).await
    }

    fn status(&self, name: &str) -> aenv_core::EnvInstanceStatus {
        self.get(name).and_then(|i| i.status.clone()).unwrap_or_default()
    }

    fn ready(&self, name: &str) -> (String, String) {
        let status = self.status(name);
        let c = status.conditions.iter().find(|c| c.type_ == "Ready").expect("a Ready condition");
        (c.status.clone(), c.reason.clone())
    }
}

const MIN: i64 = 60_000;

#[tokio::test]
async fn create_runs_the_instance_and_records_ip_container_and_expiry() {
    let f = Fixture::new();
    f.instance("a-000001", Some("30m")).await;
    let action = f.reconcile("a-000001", 100).await.unwrap();
    assert_eq!(f.engine.calls(), [Call::Apply { instance: "a-000001".into(), container_id: None }]);
    let status = f.status("a-000001");
    assert_eq!(status.phase, Phase::Running);
    assert_eq!(status.ip.as_deref(), Some(IP));
    assert_eq!(status.container_id.as_deref(), Some("c-a-000001"));
    assert_eq!(status.expire_time.map(|t| t.0), Some(at(f.t0, 30 * MIN)));
    assert_eq!(f.ready("a-000001"), ("True".into(), "NoProbe".into()));
    // Woken exactly at the expiry instant (1 ms after it), not by a periodic sweep.
    assert_eq!(action, Action::requeue(Duration::from_millis((30 * MIN - 100 + 1) as u64)));
}

#[tokio::test]
async fn a_second_reconcile_passes_the_recorded_container_and_writes_nothing_new() {
    let f = Fixture::new();
    f.instance("a-000001", Some("30m")).await;
    f.reconcile("a-000001", 0).await.unwrap();
    let version = f.get("a-000001").unwrap().metadata.resource_version.clone();
    f.reconcile("a-000001", 10).await.unwrap();
    assert_eq!(
        f.engine.calls()[1],
        Call::Apply { instance: "a-000001".into(), container_id: Some("c-a-000001".into()) },
        "the engine is told what was made, so it adopts rather than creates"
    );
    assert_eq!(f.get("a-000001").unwrap().metadata.resource_version, version, "an unchanged status is not written");
}

#[tokio::test]
async fn an_exit_fails_the_instance_with_its_code_and_it_is_not_run_again() {
    let f = Fixture::new();
    f.instance("a-000001", Some("30m")).await;
    f.reconcile("a-000001", 0).await.unwrap();
    f.engine.script_apply(Ok(Observed {
        phase: Phase::Failed,
        message: Some("the container exited with code 3".into()),
        container_id: Some("c-a-000001".into()),
        ..Default::default()
    }));
    f.reconcile("a-000001", 1000).await.unwrap();
    let status = f.status("a-000001");
    assert_eq!(status.phase, Phase::Failed);
    assert_eq!(status.message.as_deref(), Some("the container exited with code 3"));
    assert_eq!(status.ip, None);
    assert_eq!(f.ready("a-000001"), ("False".into(), "NotRunning".into()));
    // A failed instance stays failed (and is kept until its TTL): no further apply.
    let action = f.reconcile("a-000001", 2000).await.unwrap();
    assert_eq!(f.engine.applies_of("a-000001"), 2);
    assert_eq!(action, Action::requeue(Duration::from_millis((30 * MIN - 2000 + 1) as u64)));
}

#[tokio::test]
async fn a_retryable_error_keeps_the_phase_says_why_and_backs_off() {
    let f = Fixture::new();
    let inst = f.instance("a-000001", Some("30m")).await;
    f.engine.script_apply(Err(EngineError::unavailable("the Docker daemon does not answer")));
    let err = f.reconcile("a-000001", 0).await.unwrap_err();
    assert_eq!(err.metric_label(), "unavailable");
    let status = f.status("a-000001");
    assert_eq!(status.phase, Phase::Pending, "not failed: the daemon may come back");
    assert_eq!(status.message.as_deref(), Some("waiting for the engine: the Docker daemon does not answer"));
    // Backoff per key: 400 ms, 800 ms, …
    assert_eq!(error_policy(inst.clone(), &err, f.ctx.clone()), Action::requeue(Duration::from_millis(400)));
    assert_eq!(error_policy(inst.clone(), &err, f.ctx.clone()), Action::requeue(Duration::from_millis(800)));
    // Once it answers, the instance runs and the backoff starts over.
    f.reconcile("a-000001", 1000).await.unwrap();
    assert_eq!(f.status("a-000001").phase, Phase::Running);
    assert_eq!(f.status("a-000001").message, None);
    assert_eq!(error_policy(inst, &err, f.ctx.clone()), Action::requeue(Duration::from_millis(400)));
}

/// A daemon killed while it started a container keeps a task for it after its restart, and refuses every start of
/// that container with a 5xx ("task ... already exists"): starting it again as it is can never pass. The attempt
/// after a failed start makes the container afresh (it never ran, so nothing is lost), and the instance runs.
#[tokio::test]
async fn the_attempt_after_a_failed_start_makes_the_container_afresh() {
    let f = Fixture::new();
    f.instance("a-000001", Some("30m")).await;
    let stale = EngineError::new(
        aenv_core::ErrorKind::StartFailed,
        "starting container a-000001: failed to create task for container: task a1b2 already exists: unknown",
    );
    f.engine.script_apply(Err(stale));
    f.reconcile("a-000001", 0).await.unwrap_err();
    assert_eq!(f.status("a-000001").phase, Phase::Pending);
    // The next attempt does not start the same container again: it asks for a fresh one, which runs.
    f.reconcile("a-000001", 1000).await.unwrap();
    let calls: Vec<Call> = f.engine.calls().into_iter().filter(|c| !matches!(c, Call::ListOwned)).collect();
    assert_eq!(
        calls,
        vec![
            Call::Apply { instance: "a-000001".into(), container_id: None },
            Call::ApplyAfresh { instance: "a-000001".into(), container_id: None },
        ]
    );
    assert_eq!(f.status("a-000001").phase, Phase::Running);
    // Once it ran, the next reconcile is a plain apply again (nothing is ever recreated that has run).
    f.reconcile("a-000001", 2000).await.unwrap();
    assert!(
        matches!(f.engine.calls().last(), Some(Call::Apply { container_id: Some(_), .. })),
        "{:?}",
        f.engine.calls()
    );
    // Other errors (the daemon away) do not make the next attempt a fresh one.
    f.instance("b-000002", Some("30m")).await;
    f.engine.script_apply(Err(EngineError::unavailable("the Docker daemon does not answer")));
    f.reconcile("b-000002", 0).await.unwrap_err();
    f.reconcile("b-000002", 1000).await.unwrap();
    assert!(matches!(f.engine.calls().last(), Some(Call::Apply { .. })), "{:?}", f.engine.calls());
}

#[tokio::test]
async fn a_start_that_keeps_failing_fails_the_instance_after_a_few_attempts() {
    let f = Fixture::new();
    f.instance("a-000001", Some("30m")).await;
    let refused = || {
        EngineError::new(
            aenv_core::ErrorKind::StartFailed,
            "starting container a-000001: Bind for 127.0.0.1:18777 failed: port is already allocated",
        )
    };
    for attempt in 1..decide::START_ATTEMPTS {
        f.engine.script_apply(Err(refused()));
        let err = f.reconcile("a-000001", attempt as i64 * 1000).await.unwrap_err();
        assert_eq!(err.metric_label(), "start_failed");
        let status = f.status("a-000001");
        assert_eq!(status.phase, Phase::Pending, "attempt {attempt}: it may pass (the port may be freed)");
        assert!(status.message.as_deref().unwrap_or_default().starts_with("waiting for the engine: "), "{status:?}");
    }
    // The last attempt fails it, with Docker's reason; nothing is retried after that.
    f.engine.script_apply(Err(refused()));
    f.reconcile("a-000001", 10_000).await.unwrap();
    let status = f.status("a-000001");
    assert_eq!(status.phase, Phase::Failed);
    assert_eq!(
        status.message.as_deref(),
        Some(&*format!(
            "starting container a-000001: Bind for 127.0.0.1:18777 failed: port is already allocated (gave up after {} attempts)",
            decide::START_ATTEMPTS
        ))
    );

    // Another kind of retryable error in between neither counts nor resets; a start that succeeds resets.
    f.instance("b-000002", Some("30m")).await;
    for _ in 1..decide::START_ATTEMPTS {
        f.engine.script_apply(Err(refused()));
        f.reconcile("b-000002", 0).await.unwrap_err();
    }
    f.engine.script_apply(Err(EngineError::unavailable("the Docker daemon does not answer")));
    f.reconcile("b-000002", 0).await.unwrap_err();
    assert_eq!(f.status("b-000002").phase, Phase::Pending);
    f.reconcile("b-000002", 0).await.unwrap();
    assert_eq!(f.status("b-000002").phase, Phase::Running);
    f.engine.script_apply(Err(refused()));
    f.reconcile("b-000002", 0).await.unwrap_err();
    assert_eq!(f.status("b-000002").phase, Phase::Running, "counted from zero again");
}

#[tokio::test]
async fn a_permanent_error_fails_the_instance_without_retrying() {
    let f = Fixture::new();
    f.instance("a-000001", None).await;
    f.engine.script_apply(Err(EngineError::permanent("pulling image \"nope:1\": not found")));
    let action = f.reconcile("a-000001", 0).await.unwrap();
    let status = f.status("a-000001");
    assert_eq!(status.phase, Phase::Failed);
    assert_eq!(status.message.as_deref(), Some("pulling image \"nope:1\": not found"));
    assert_eq!(action, Action::await_change(), "no TTL, nothing to wait for");
}

#[tokio::test]
async fn deletion_removes_what_the_engine_runs_then_the_record() {
    let f = Fixture::new();
    f.instance("a-000001", Some("30m")).await;
    f.reconcile("a-000001", 0).await.unwrap();
    f.store.request_delete("default/a-000001", at(f.t0, 500)).await.unwrap();
    // The engine's removal fails once: the record stays, and the next attempt finishes.
    f.engine.script_delete(Err(EngineError::transient("container is being removed")));
    assert!(f.reconcile("a-000001", 600).await.is_err());
    assert!(f.get("a-000001").is_some(), "the record stays until the engine's objects are gone");
    assert_eq!(f.reconcile("a-000001", 700).await.unwrap(), Action::await_change());
    assert!(f.get("a-000001").is_none());
    assert_eq!(f.engine.calls().iter().filter(|c| matches!(c, Call::Delete(_))).count(), 2);
}

#[tokio::test]
async fn expiry_is_enforced_at_the_instant() {
    let f = Fixture::new();
    f.instance("a-000001", Some("90s")).await;
    f.reconcile("a-000001", 0).await.unwrap();
    // 1 ms before: still applied, woken 2 ms later (1 ms past the instant).
    assert_eq!(f.reconcile("a-000001", 89_999).await.unwrap(), Action::requeue(Duration::from_millis(2)));
    assert!(f.get("a-000001").is_some());
    // At the instant: removed.
    f.reconcile("a-000001", 90_000).await.unwrap();
    assert!(f.get("a-000001").is_none());
    assert_eq!(f.engine.calls().last(), Some(&Call::Delete("a-000001".into())));
    assert_eq!(f.ctx.metrics.expired.get(), 1);
}

#[tokio::test]
async fn a_failing_probe_is_retried_with_backoff_until_ready() {
    let f = Fixture::new();
    f.instance("a-000001", None).await;
    let not_ready =
        || Observed { ready: Some(false), ready_message: Some("connection refused".into()), ..running("a-000001") };
    let mut waits = Vec::new();
    for i in 0..36 {
        f.engine.script_apply(Ok(not_ready()));
        waits.push(f.reconcile("a-000001", i).await.unwrap());
    }
    // Fast while a server boots (3 s), then backing off.
    let ms = [[100; 30].as_slice(), &[500, 1000, 2000, 4000, 5000, 5000]].concat();
    assert_eq!(waits, ms.iter().map(|m| Action::requeue(Duration::from_millis(*m))).collect::<Vec<_>>());
    assert_eq!(f.ready("a-000001"), ("False".into(), "ProbeFailing".into()));
    assert_eq!(f.status("a-000001").phase, Phase::Running, "running, just not ready yet");
    f.engine.script_apply(Ok(Observed { ready: Some(true), ..running("a-000001") }));
    assert_eq!(f.reconcile("a-000001", 100).await.unwrap(), Action::await_change());
    assert_eq!(f.ready("a-000001"), ("True".into(), "Ready".into()));
    // A later failure starts the backoff from the beginning.
    f.engine.script_apply(Ok(not_ready()));
    assert_eq!(f.reconcile("a-000001", 200).await.unwrap(), Action::requeue(Duration::from_millis(100)));
}

#[tokio::test]
async fn after_a_restart_a_running_instance_is_adopted_not_made_again() {
    let f = Fixture::new();
    f.instance("a-000001", Some("30m")).await;
    f.reconcile("a-000001", 0).await.unwrap();
    // A new process: a fresh context over the same store, and an engine that finds the container running.
    let engine = FakeEngine::new();
    let ctx = Context::new(f.store.clone(), engine.clone(), Arc::new(Metrics::default()));
    let obj = f.get("a-000001").unwrap();
    ctx.reconcile(obj, at(f.t0, 5000)).await.unwrap();
    assert_eq!(engine.calls(), [Call::Apply { instance: "a-000001".into(), container_id: Some("c-a-000001".into()) }]);
    assert_eq!(f.status("a-000001").phase, Phase::Running);
    let metrics = ctx.metrics.render(f.store.as_ref());
    assert!(
        metrics.contains("aenv_create_to_running_seconds_count 0"),
        "it was Running already: no second create-to-running\n{metrics}"
    );
}

#[tokio::test]
async fn a_container_removed_outside_the_operator_terminates_the_instance() {
    let f = Fixture::new();
    f.instance("a-000001", Some("30m")).await;
    f.reconcile("a-000001", 0).await.unwrap();
    f.engine.script_apply(Ok(Observed {
        phase: Phase::Terminated,
        message: Some("container a-000001 was removed outside the operator".into()),
        ..Default::default()
    }));
    f.reconcile("a-000001", 1000).await.unwrap();
    let status = f.status("a-000001");
    assert_eq!(status.phase, Phase::Terminated);
    assert_eq!(status.ip, None);
    assert_eq!(status.container_id.as_deref(), Some("c-a-000001"), "what was made stays on record");
}

#[tokio::test]
async fn a_failed_status_write_is_retried_and_loses_nothing() {
    let f = Fixture::new();
    let inst = f.instance("a-000001", Some("30m")).await;
    f.store.fail_status_writes(1);
    let err = f.reconcile("a-000001", 0).await.unwrap_err();
    assert_eq!(err.metric_label(), "store");
    assert_eq!(f.status("a-000001").phase, Phase::Pending, "nothing was written");
    assert_eq!(error_policy(inst, &err, f.ctx.clone()), Action::requeue(Duration::from_millis(400)));
    f.reconcile("a-000001", 400).await.unwrap();
    assert_eq!(f.status("a-000001").phase, Phase::Running);
    assert_eq!(f.engine.applies_of("a-000001"), 2, "applied again: apply is idempotent");
}

#[tokio::test]
async fn an_unreadable_ttl_fails_the_instance_without_touching_the_engine() {
    let f = Fixture::new();
    // Written around the API (kubectl apply), which checks TTLs.
    let spec = EnvInstanceSpec { env_name: "demo".into(), ttl: Some("next tuesday".into()), ..Default::default() };
    let mut obj = EnvInstance::new("a-000001", spec);
    obj.metadata.namespace = Some("default".into());
    f.store.create(obj, f.t0).await.unwrap();
    f.reconcile("a-000001", 0).await.unwrap();
    assert_eq!(f.status("a-000001").phase, Phase::Failed);
    assert!(f.status("a-000001").message.is_some_and(|m| m.contains("next tuesday")));
    assert!(f.engine.calls().is_empty());
}

#[tokio::test]
async fn an_instance_gone_from_the_store_is_left_alone() {
    let f = Fixture::new();
    let inst = f.instance("a-000001", Some("30m")).await;
    f.store.purge("default/a-000001").await.unwrap();
    assert_eq!(f.ctx.reconcile(inst, f.t0).await.unwrap(), Action::await_change());
    assert!(f.engine.calls().is_empty(), "nothing is made for an instance that is gone");
}

fn owned(instance: &str, kind: OwnedKind, phase: Phase, created: Timestamp) -> OwnedObject {
    OwnedObject {
        namespace: "default".into(),
        instance: instance.into(),
        kind,
        id: format!("id-{instance}"),
        phase,
        created: Some(created),
    }
}

#[tokio::test]
async fn resync_sweeps_old_orphans_and_wakes_instances_that_drifted() {
    let f = Fixture::new();
    f.instance("kept-000001", Some("30m")).await;
    f.instance("drift-000002", Some("30m")).await;
    f.reconcile("kept-000001", 0).await.unwrap();
    f.reconcile("drift-000002", 0).await.unwrap();
    let now = Timestamp::now();
    f.engine.set_owned(vec![
        owned("kept-000001", OwnedKind::Container, Phase::Running, now),
        // drift-000002 runs in the store's eyes but its container is gone: not listed.
        owned("gone-000003", OwnedKind::Container, Phase::Running, now - SignedDuration::from_secs(120)),
        owned("gone-000003", OwnedKind::Network, Phase::Running, now - SignedDuration::from_secs(120)),
        owned("young-000004", OwnedKind::Container, Phase::Creating, now),
    ]);
    let (tx, mut rx) = mpsc::channel(16);
    resync::resync(&f.ctx, &tx, Duration::from_secs(30)).await.unwrap();
    drop(tx);
    let mut woken = Vec::new();
    while let Some(r) = rx.recv().await {
        woken.push(r.name);
    }
    assert_eq!(woken, ["drift-000002"], "only the instance whose container is gone is woken");
    let swept: Vec<Call> = f.engine.calls().into_iter().filter(|c| matches!(c, Call::DeleteOwned(_))).collect();
    assert_eq!(swept, [Call::DeleteOwned("id-gone-000003".into()), Call::DeleteOwned("id-gone-000003".into())]);
    assert_eq!(f.ctx.metrics.orphans_removed.get(), 2);
}

#[test]
fn decide_is_pure_and_orders_deletion_before_expiry() {
    let t0 = Timestamp::from_second(1_800_000_000).unwrap();
    let mut inst = EnvInstance::new(
        "a-000001",
        EnvInstanceSpec { env_name: "demo".into(), ttl: Some("1m".into()), ..Default::default() },
    );
    inst.stamp_expiry(t0).unwrap();
    assert_eq!(decide::next_step(&inst, t0), Step::Apply);
    assert_eq!(decide::next_step(&inst, at(t0, MIN)), Step::Remove { expired: true });
    inst.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(t0));
    assert_eq!(decide::next_step(&inst, t0), Step::Remove { expired: false });
    let d = decide::decide(&inst, Some(Ok(running("a-000001"))), t0, 0, 0);
    assert!(d.became_running && !d.probe_failed && d.retry.is_none());
    assert_eq!(d.requeue, Some(Duration::from_millis(MIN as u64 + 1)));
    assert_eq!(
        (1..=10).map(decide::error_backoff).map(|d| d.as_millis()).collect::<Vec<_>>(),
        [400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000, 30000]
    );
}

/// The whole loop, as `serve` runs it: the store's watch feeds kube-runtime's controller, an engine event wakes
/// an instance, and shutdown stops it.
#[tokio::test]
async fn the_loop_runs_instances_from_the_watch_and_reacts_to_engine_events() {
    let f = Fixture::new();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let config = LoopConfig {
        resync_interval: Duration::from_secs(3600),
        max_concurrent_reconciles: 4,
        orphan_grace: Duration::from_secs(30),
    };
    let loop_task = tokio::spawn(super::run(f.ctx.clone(), config, async move {
        let _ = stop_rx.await;
    }));
    let mut obj = EnvInstance::new(
        "live-000001",
        EnvInstanceSpec { env_name: "demo".into(), ttl: Some("30m".into()), ..Default::default() },
    );
    obj.metadata.namespace = Some("default".into());
    obj.stamp_expiry(Timestamp::now()).unwrap();
    f.store.create(obj, Timestamp::now()).await.unwrap();
    let phase = || f.get("live-000001").map(|i| i.phase());
    wait_for(|| phase() == Some(Phase::Running)).await;
    // The container dies: the engine says so, and the status follows.
    f.engine.script_apply(Ok(Observed {
        phase: Phase::Failed,
        message: Some("the container exited with code 137".into()),
        ..Default::default()
    }));
    f.engine.emit(EngineEvent::Changed { namespace: "default".into(), instance: "live-000001".into() }).await;
    wait_for(|| phase() == Some(Phase::Failed)).await;
    // Deleting through the store removes it through the engine.
    f.store.request_delete("default/live-000001", Timestamp::now()).await.unwrap();
    wait_for(|| f.get("live-000001").is_none()).await;
    assert!(f.engine.calls().contains(&Call::Delete("live-000001".into())));
    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(10), loop_task).await.expect("the loop stops on shutdown").unwrap();
}

async fn wait_for(cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
