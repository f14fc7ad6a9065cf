//! The controller: kube-runtime's `Controller` (a keyed work queue: one worker per instance at a time, bounded
//! concurrency, requeue with backoff) fed by the store's watch, by the engine's events and by a periodic resync
//! that costs one list call ([`resync`]). Each reconcile asks [`decide`] what to do and carries it out through the
//! [`Engine`] and the store. [`leader`] runs it on one replica of several.

pub mod decide;
pub mod env_services;
#[cfg(test)]
pub(crate) mod fake;
pub mod leader;
pub mod members;
pub mod pools;
mod resync;
#[cfg(test)]
mod tests;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use aenv_core::{Engine, EnvInstance};
use futures::StreamExt;
use jiff::Timestamp;
use kube::runtime::{
    WatchStreamExt,
    controller::{Action, Config as ControllerConfig, Controller},
    predicates,
    reflector::ObjectRef,
    watcher,
};
use tokio::sync::{Notify, mpsc};
use tracing::{Instrument, debug, info, info_span, warn};

use self::decide::Step;
use crate::{
    Error,
    metrics::{Metrics, ReasonLabels},
    store::{ObjectStore, key_of},
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
    /// Failed starts per key ([`aenv_core::ErrorKind::StartFailed`]), bounded by [`decide::START_ATTEMPTS`].
    starts: Mutex<HashMap<String, u32>>,
    /// The pool controller, run beside this one when pools are kept.
    pools: Option<Arc<pools::Pools>>,
    /// The service controller, run beside this one when services are kept.
    services: Option<Arc<env_services::ServiceLoop>>,
}

impl Context {
    pub fn new(store: Arc<dyn ObjectStore<EnvInstance>>, engine: Arc<dyn Engine>, metrics: Arc<Metrics>) -> Arc<Self> {
        Self::build(store, engine, metrics, None, None)
    }

    /// The same context, also running the pool controller.
    pub fn with_pools(
        store: Arc<dyn ObjectStore<EnvInstance>>,
        engine: Arc<dyn Engine>,
        metrics: Arc<Metrics>,
        pools: Arc<pools::Pools>,
    ) -> Arc<Self> {
        Self::build(store, engine, metrics, Some(pools), None)
    }

    /// The same context, also running the pool and the service controllers.
    pub fn with_pools_and_services(
        store: Arc<dyn ObjectStore<EnvInstance>>,
        engine: Arc<dyn Engine>,
        metrics: Arc<Metrics>,
        pools: Arc<pools::Pools>,
        services: Arc<env_services::ServiceLoop>,
    ) -> Arc<Self> {
        Self::build(store, engine, metrics, Some(pools), Some(services))
    }

    fn build(
        store: Arc<dyn ObjectStore<EnvInstance>>,
        engine: Arc<dyn Engine>,
        metrics: Arc<Metrics>,
        pools: Option<Arc<pools::Pools>>,
        services: Option<Arc<env_services::ServiceLoop>>,
    ) -> Arc<Self> {
        Arc::new(Context {
            store,
            engine,
            metrics,
            failures: Mutex::default(),
            probes: Mutex::default(),
            starts: Mutex::default(),
            pools,
            services,
        })
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn probes(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.probes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn starts(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.starts.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn forget(&self, key: &str) {
        self.failures().remove(key);
        self.probes().remove(key);
        self.starts().remove(key);
    }
}

/// Knobs of the loop (the command line's `--resync-interval`, `--max-concurrent-reconciles`, `--orphan-grace`).
#[derive(Clone, Debug)]
pub struct LoopConfig {
    /// How often the reconciler lists the daemon's containers to catch changes the event stream missed and to
    /// sweep orphaned containers.
    pub resync_interval: Duration,
    /// How many instances are reconciled at once (at least 1).
    pub max_concurrent_reconciles: u16,
    /// How old a leftover must be before a sweep removes it.
    pub orphan_grace: Duration,
}

pub(crate) fn object_ref(namespace: &str, name: &str) -> ObjectRef<EnvInstance> {
    ObjectRef::new(name).within(namespace)
}

/// Every change of an instance, as the object it belongs to (`owner`: a pool for its sandboxes, a service for its
/// replicas): what wakes that object's controller.
pub(crate) fn owners_of<K>(
    instances: &dyn ObjectStore<EnvInstance>,
    owner: fn(&EnvInstance) -> Option<ObjectRef<K>>,
) -> impl futures::Stream<Item = ObjectRef<K>> + Send + 'static
where
    K: kube::Resource<DynamicType = ()> + 'static,
{
    instances.watch().filter_map(move |e| {
        futures::future::ready(match e {
            watcher::Event::Apply(i) | watcher::Event::InitApply(i) | watcher::Event::Delete(i) => owner(&i),
            _ => None,
        })
    })
}

/// A task that runs `sweep` every `every` (the first at once), logging a failure as the sweep of `what`.
pub(crate) fn spawn_sweeper<F, Fut>(every: Duration, what: &'static str, sweep: F) -> tokio::task::JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), Error>> + Send,
{
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = sweep().await {
                warn!(error = %e, "{what} sweep failed; trying again later");
            }
        }
    })
}

/// Runs until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    config: LoopConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let (reader, objects) = ctx.store.controller_feed();
    // Status writes do not bump the generation, so they do not wake the reconciler; creation and deletion do.
    let objects = objects.map(Ok::<_, watcher::Error>).predicate_filter(predicates::generation, Default::default());

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
                if let Err(e) = resync::resync(&ctx, &trigger_tx, config.orphan_grace).await {
                    warn!(error = %e, "resync failed; trying again at the next interval");
                }
            }
        })
    };

    let pool_loop =
        ctx.pools.clone().map(|p| tokio::spawn(members::run(p, config.resync_interval, std::future::pending())));
    let service_loop =
        ctx.services.clone().map(|s| tokio::spawn(members::run(s, config.resync_interval, std::future::pending())));

    Controller::for_stream(objects, reader)
        .with_config(ControllerConfig::default().concurrency(config.max_concurrent_reconciles.max(1)))
        .reconcile_on(tokio_stream::wrappers::ReceiverStream::new(trigger_rx))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
    events.abort();
    resyncer.abort();
    if let Some(pool_loop) = pool_loop {
        pool_loop.abort();
    }
    if let Some(service_loop) = service_loop {
        service_loop.abort();
    }
}

async fn reconcile(obj: Arc<EnvInstance>, ctx: Arc<Context>) -> Result<Action, Error> {
    let span = info_span!("instance", id = %obj.metadata.name.as_deref().unwrap_or_default());
    ctx.reconcile(obj, Timestamp::now()).instrument(span).await
}

impl Context {
    /// One reconcile of `obj` at `now`: [`decide::next_step`], the engine call it asks for, [`decide::decide`], and
    /// the status write. The store's copy of the object is used when it has one (it is never older than the
    /// watch's); an object gone from the store is left alone.
    pub async fn reconcile(&self, obj: Arc<EnvInstance>, now: Timestamp) -> Result<Action, Error> {
        self.metrics.reconciles.inc();
        let key = key_of(obj.as_ref());
        let Some(inst) = self.store.get(&key) else { return Ok(Action::await_change()) };
        let failed_probes = self.probes().get(&key).copied().unwrap_or(0);
        let failed_starts = self.starts().get(&key).copied().unwrap_or(0);
        let observed = match decide::next_step(&inst, now) {
            Step::Remove { expired } => {
                if expired {
                    info!("TTL reached; removing the instance");
                }
                self.metrics.time("delete", self.engine.delete(&inst)).await?;
                self.store.purge(&key).await?;
                self.forget(&key);
                if expired {
                    self.metrics.expired.inc();
                } else {
                    info!("instance deleted");
                }
                return Ok(Action::await_change());
            }
            Step::Fail(message) => {
                let mut failed = (*inst).clone();
                failed.status = Some(decide::failed_status(message));
                self.store.write_status(&failed).await?;
                return Ok(Action::await_change());
            }
            Step::Keep => None,
            Step::Apply => {
                self.store.hold(&inst).await?;
                let applied = if decide::start_afresh(failed_starts) {
                    self.engine.apply_afresh(&inst)
                } else {
                    self.engine.apply(&inst)
                };
                Some(self.metrics.time("apply", applied).await)
            }
        };
        let decision = decide::decide(&inst, observed, now, failed_probes, failed_starts);
        if decision.became_running {
            if let Some(created) = &inst.metadata.creation_timestamp {
                let secs = (now.as_millisecond() - created.0.as_millisecond()).max(0) as f64 / 1000.0;
                self.metrics.create_to_running.observe(secs);
            }
            info!(ip = decision.status.ip.as_deref().unwrap_or(""), "instance running");
        }
        if decision.status.phase.is_terminal() && inst.status.as_ref().is_none_or(|s| s.phase != decision.status.phase)
        {
            warn!(phase = %decision.status.phase, message = decision.status.message.as_deref().unwrap_or(""), "instance stopped");
        }
        if inst.status.as_ref() != Some(&decision.status) {
            let mut updated = (*inst).clone();
            updated.status = Some(decision.status);
            self.store.write_status(&updated).await?;
        }
        if let Some(e) = decision.retry {
            if e.kind() == aenv_core::ErrorKind::StartFailed {
                *self.starts().entry(key).or_insert(0) += 1;
            }
            return Err(e.into());
        }
        self.failures().remove(&key);
        self.starts().remove(&key);
        if decision.probe_failed {
            *self.probes().entry(key).or_insert(0) += 1;
        } else {
            self.probes().remove(&key);
        }
        Ok(decision.requeue.map_or_else(Action::await_change, Action::requeue))
    }
}

/// Retries with exponential backoff per instance: 400 ms, 800 ms, … up to 30 s.
fn error_policy(obj: Arc<EnvInstance>, err: &Error, ctx: Arc<Context>) -> Action {
    let key = key_of(obj.as_ref());
    ctx.metrics.reconcile_errors.get_or_create(&ReasonLabels { reason: err.metric_label().into() }).inc();
    let attempt = {
        let mut failures = ctx.failures();
        let n = failures.entry(key).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    let delay = decide::error_backoff(attempt);
    debug!(error = %err, attempt, ?delay, "reconcile failed; retrying");
    Action::requeue(delay)
}
