//! The reconcile loop: kube-runtime's `Controller` (a keyed work queue: one worker per instance at a time,
//! bounded concurrency, requeue with backoff) fed by the store's watch, by the engine's events and by a periodic
//! resync that costs one list call.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use aenv_core::{Condition, Engine, EnvInstance, EnvInstanceStatus, Phase};
use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::{
    WatchStreamExt,
    controller::{Action, Config as ControllerConfig, Controller},
    predicates, reflector,
    reflector::ObjectRef,
    watcher,
};
use tokio::sync::{Notify, mpsc};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::{
    Error,
    metrics::{Metrics, ReasonLabels},
    store::{ObjectStore, key, key_of},
};

/// Shared by every reconcile.
pub struct Context {
    pub store: Arc<dyn ObjectStore<EnvInstance>>,
    pub engine: Arc<dyn Engine>,
    pub metrics: Arc<Metrics>,
    /// Consecutive failures per key, for backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// Consecutive failed readiness probes per key, for the probe's backoff.
    probes: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(store: Arc<dyn ObjectStore<EnvInstance>>, engine: Arc<dyn Engine>, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Context { store, engine, metrics, failures: Mutex::default(), probes: Mutex::default() })
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn probes(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.probes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn forget(&self, key: &str) {
        self.failures().remove(key);
        self.probes().remove(key);
    }
}

/// Knobs of the loop.
#[derive(Clone, Debug)]
pub struct LoopConfig {
    pub resync_interval: Duration,
    pub concurrency: u16,
    /// Labelled containers younger than this are not swept as orphans.
    pub orphan_grace: Duration,
}

fn object_ref(namespace: &str, name: &str) -> ObjectRef<EnvInstance> {
    ObjectRef::new(name).within(namespace)
}

/// Runs until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    config: LoopConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let (reader, writer) = reflector::store();
    // Status writes do not bump the generation, so they do not wake the reconciler; creation and deletion do.
    let objects = ctx
        .store
        .watch()
        .map(Ok::<_, watcher::Error>)
        .reflect(writer)
        .applied_objects()
        .predicate_filter(predicates::generation, Default::default());

    let (trigger_tx, trigger_rx) = mpsc::channel::<ObjectRef<EnvInstance>>(8192);
    let resync_now = Arc::new(Notify::new());

    // The engine's events: a change to one instance wakes that instance; a reconnect asks for a resync.
    let events = {
        let (ctx, trigger_tx, resync_now) = (ctx.clone(), trigger_tx.clone(), resync_now.clone());
        tokio::spawn(async move {
            let mut events = ctx.engine.events();
            while let Some(event) = events.next().await {
                match event {
                    aenv_core::EngineEvent::Changed { namespace, instance } => {
                        if trigger_tx.send(object_ref(&namespace, &instance)).await.is_err() {
                            return;
                        }
                    }
                    aenv_core::EngineEvent::Resync => resync_now.notify_one(),
                }
            }
        })
    };
    let resyncer = {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(config.resync_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = resync_now.notified() => {}
                }
                if let Err(e) = resync(&ctx, &trigger_tx, config.orphan_grace).await {
                    warn!(error = %e, "resync failed; trying again at the next interval");
                }
            }
        })
    };

    Controller::for_stream(objects, reader)
        .with_config(ControllerConfig::default().concurrency(config.concurrency))
        .reconcile_on(tokio_stream::wrappers::ReceiverStream::new(trigger_rx))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
    events.abort();
    resyncer.abort();
}

/// One list call: sweeps containers no instance owns, and wakes every instance whose container's state
/// differs from its status (died, removed by hand, or missing).
pub async fn resync(
    ctx: &Context,
    trigger: &mpsc::Sender<ObjectRef<EnvInstance>>,
    orphan_grace: Duration,
) -> Result<(), Error> {
    let owned = ctx.metrics.time("list", ctx.engine.list_owned()).await?;
    let mut seen = HashMap::with_capacity(owned.len());
    let now = Timestamp::now();
    for object in &owned {
        let k = key(&object.namespace, &object.instance);
        if ctx.store.get(&k).is_some() {
            seen.insert(k, object.phase);
            continue;
        }
        let young = object.created.is_some_and(|c| {
            now.as_millisecond() - c.as_millisecond() < orphan_grace.as_millis().min(i64::MAX as u128) as i64
        });
        if young {
            continue;
        }
        // Instances are recorded before their containers are made, so a labelled container without a record is
        // left over from an instance that is gone.
        warn!(instance = %object.instance, container = %object.id, "removing an orphaned container");
        match ctx.engine.delete_owned(object).await {
            Ok(()) => {
                ctx.metrics.orphans_removed.inc();
            }
            Err(e) => warn!(error = %e, "could not remove an orphaned container"),
        }
    }
    for inst in ctx.store.list() {
        let k = key_of(inst.as_ref());
        let expired = inst.expires_at().ok().flatten().is_some_and(|exp| exp <= now);
        let stale = !inst.phase().is_terminal() && seen.get(&k) != Some(&inst.phase());
        if inst.is_deleting() || expired || stale {
            let r = object_ref(
                inst.metadata.namespace.as_deref().unwrap_or_default(),
                &inst.metadata.name.clone().unwrap_or_default(),
            );
            if trigger.send(r).await.is_err() {
                break;
            }
        }
    }
    Ok(())
}

async fn reconcile(obj: Arc<EnvInstance>, ctx: Arc<Context>) -> Result<Action, Error> {
    let span = info_span!("instance", id = %obj.metadata.name.as_deref().unwrap_or_default());
    reconcile_inner(key_of(obj.as_ref()), ctx).instrument(span).await
}

async fn reconcile_inner(key: String, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics.reconciles.inc();
    let Some(inst) = ctx.store.get(&key) else { return Ok(Action::await_change()) };
    let now = Timestamp::now();

    if inst.is_deleting() {
        ctx.metrics.time("delete", ctx.engine.delete(&inst)).await?;
        ctx.store.purge(&key).await?;
        ctx.forget(&key);
        info!("instance deleted");
        return Ok(Action::await_change());
    }

    let expires = match inst.expires_at() {
        Ok(expires) => expires,
        Err(e) => {
            // Only possible for objects written around the API (the API validates TTLs).
            let mut failed = (*inst).clone();
            failed.status =
                Some(EnvInstanceStatus { phase: Phase::Failed, message: Some(e.to_string()), ..Default::default() });
            ctx.store.write_status(&failed).await?;
            return Ok(Action::await_change());
        }
    };
    if let Some(exp) = expires.filter(|exp| *exp <= now) {
        info!(expired_at = %exp, "TTL reached; removing the instance");
        ctx.metrics.time("delete", ctx.engine.delete(&inst)).await?;
        ctx.store.purge(&key).await?;
        ctx.forget(&key);
        ctx.metrics.expired.inc();
        return Ok(Action::await_change());
    }

    let mut status = inst.status.clone().unwrap_or_default();
    status.expire_time = expires.map(Time);
    let mut failure = None;
    let mut not_ready = false;
    if !status.phase.is_terminal() {
        ctx.store.hold(&inst).await?;
        match ctx.metrics.time("apply", ctx.engine.apply(&inst)).await {
            Ok(observed) => {
                if observed.phase == Phase::Running && status.phase != Phase::Running {
                    if let Some(created) = &inst.metadata.creation_timestamp {
                        let secs = (now.as_millisecond() - created.0.as_millisecond()).max(0) as f64 / 1000.0;
                        ctx.metrics.create_to_running.observe(secs);
                    }
                    info!(ip = observed.ip.as_deref().unwrap_or(""), "instance running");
                }
                if observed.phase.is_terminal() {
                    warn!(phase = %observed.phase, message = observed.message.as_deref().unwrap_or(""), "instance stopped");
                }
                status.phase = observed.phase;
                status.ip = observed.ip;
                status.message = observed.message;
                status.ports = observed.ports;
                status.services = observed.services;
                not_ready = observed.phase == Phase::Running && observed.ready == Some(false);
                set_ready_condition(&mut status, observed.phase, observed.ready, observed.ready_message);
                if observed.container_id.is_some() {
                    status.container_id = observed.container_id;
                }
            }
            Err(e) if !e.is_retryable() => {
                warn!(error = %e, "instance failed");
                status.phase = Phase::Failed;
                status.ip = None;
                status.message = Some(e.to_string());
                set_ready_condition(&mut status, Phase::Failed, None, None);
            }
            Err(e) => {
                status.message = Some(format!("waiting for the engine: {e}"));
                failure = Some(e);
            }
        }
    }
    if inst.status.as_ref() != Some(&status) {
        let mut updated = (*inst).clone();
        updated.status = Some(status);
        ctx.store.write_status(&updated).await?;
    }
    if let Some(e) = failure {
        return Err(e.into());
    }
    ctx.failures().remove(&key);
    // Wake at the expiry instant (the TTL is enforced by this timer, not by a sweep), or sooner to probe again
    // an instance that runs but does not answer yet: 250 ms, 500 ms, ... up to 5 s between probes.
    let until_expiry =
        expires.map(|exp| Duration::from_millis((exp.as_millisecond() - now.as_millisecond()).max(0) as u64 + 1));
    let probe_again = if not_ready {
        let mut probes = ctx.probes();
        let n = probes.entry(key).or_insert(0);
        *n = n.saturating_add(1);
        Some(Duration::from_millis(250u64.saturating_mul(1 << (*n - 1).min(5))).min(Duration::from_secs(5)))
    } else {
        ctx.probes().remove(&key);
        None
    };
    Ok(match (until_expiry, probe_again) {
        (Some(a), Some(b)) => Action::requeue(a.min(b)),
        (Some(d), None) | (None, Some(d)) => Action::requeue(d),
        (None, None) => Action::await_change(),
    })
}

/// The `Ready` condition: `True` once the readiness probe answers (or, without a probe, once it runs).
/// Reasons are stable: `Ready`, `NoProbe`, `ProbeFailing`, `NotRunning`.
fn set_ready_condition(status: &mut EnvInstanceStatus, phase: Phase, ready: Option<bool>, message: Option<String>) {
    let (value, reason, message) = match (phase, ready) {
        (Phase::Running, Some(true)) => ("True", "Ready", String::new()),
        (Phase::Running, None) => ("True", "NoProbe", "the instance has no readiness probe".to_string()),
        (Phase::Running, Some(false)) => ("False", "ProbeFailing", message.unwrap_or_default()),
        (phase, _) => ("False", "NotRunning", format!("the instance is {phase}")),
    };
    let condition = Condition { type_: "Ready".into(), status: value.into(), reason: reason.into(), message };
    match status.conditions.iter_mut().find(|c| c.type_ == "Ready") {
        Some(existing) => *existing = condition,
        None => status.conditions.push(condition),
    }
}

/// Retries with exponential backoff per instance: 200 ms, 400 ms, … up to 30 s.
fn error_policy(obj: Arc<EnvInstance>, err: &Error, ctx: Arc<Context>) -> Action {
    let key = key_of(obj.as_ref());
    ctx.metrics.reconcile_errors.get_or_create(&ReasonLabels { reason: err.metric_label().into() }).inc();
    let attempt = {
        let mut failures = ctx.failures();
        let n = failures.entry(key).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    let delay = Duration::from_millis(200u64.saturating_mul(1 << attempt.min(8))).min(Duration::from_secs(30));
    debug!(error = %err, attempt, ?delay, "reconcile failed; retrying");
    Action::requeue(delay)
}
