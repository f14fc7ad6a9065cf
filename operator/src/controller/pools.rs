//! The pool controller: keeps each `EnvPool` at its target of waiting sandboxes. It runs beside the instance
//! controller (on the leader only) and never talks to the engine: it writes `EnvInstance` objects labelled with
//! the pool, and the instance controller starts, probes, adopts and removes them like any other. [`plan`] decides
//! without I/O; [`Pools::reconcile`] carries the plan out.
//!
//! - Refill runs at the daemon's pace: at most `--pool-max-starting` sandboxes of all pools are being created at
//!   once, and only one while instances that users asked for are still being created, so cold creates are never
//!   starved.
//! - A sandbox that fails (its container exits, its image cannot start) is removed and replaced, with a backoff
//!   per pool (1 s, 2 s, … 60 s) while they keep failing, and the last failure in the pool's status: a template
//!   that cannot start costs one attempt per backoff, not a storm.
//! - Removals are compare-and-swap deletes at the version the plan saw: a sandbox claimed meanwhile is not
//!   removed.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aenv_core::{
    EnvInstance, EnvInstanceSpec, EnvPool, EnvPoolStatus, Environment, MemberState, Phase,
    pool::{POOL_LABEL, member_spec},
};
use futures::StreamExt;
use jiff::Timestamp;
use kube::runtime::{
    controller::{Action, Config as ControllerConfig, Controller},
    reflector::ObjectRef,
    watcher,
};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::{
    Error,
    service::Demand,
    store::{ObjectStore, key, key_of, random_suffix},
};

/// Knobs of the pool controller.
#[derive(clap::Args, Clone, Debug)]
pub struct PoolConfig {
    /// How many pooled sandboxes (of all pools) may be starting at once. Refill runs at the daemon's pace
    /// within this cap; while instances that users asked for are being created, only one is.
    #[arg(long, default_value_t = 4)]
    pub pool_max_starting: u32,
    /// A pooled sandbox not ready this long after it was made (its readiness probe keeps failing) is replaced.
    #[arg(long, default_value = "2m", value_parser = crate::app::config::parse_duration)]
    pub pool_ready_timeout: Duration,
    /// How long a create that a pool could serve counts as demand: between `replicas` and `maxReplicas`, a pool
    /// keeps `replicas` plus the creates of this window waiting, and shrinks back when they age out.
    #[arg(long, default_value = "60s", value_parser = crate::app::config::parse_duration)]
    pub pool_demand_window: Duration,
}

/// What the pool controller needs.
pub struct Pools {
    pub pools: Arc<dyn ObjectStore<EnvPool>>,
    pub instances: Arc<dyn ObjectStore<EnvInstance>>,
    pub templates: Arc<dyn ObjectStore<Environment>>,
    pub demand: Arc<Demand>,
    pub config: PoolConfig,
    /// `--max-instances`: pooled sandboxes count towards it.
    pub max_instances: Option<usize>,
    /// Consecutive failures per pool, and when the next sandbox may be made.
    backoff: Mutex<HashMap<String, Backoff>>,
}

#[derive(Clone, Copy, Debug)]
struct Backoff {
    failures: u32,
    until: Instant,
}

/// What to do with one pool now.
#[derive(Clone, Debug)]
pub struct Plan {
    /// How many sandboxes to make.
    pub create: u32,
    /// Waiting sandboxes to remove: failed ones, ones of an old template, the excess over the target, or all
    /// of them when the pool is being deleted.
    pub remove: Vec<Arc<EnvInstance>>,
    pub status: EnvPoolStatus,
    /// Sandboxes that failed since the last look (for the backoff).
    pub new_failures: u32,
    /// Whether the pool is being deleted and has no waiting sandbox left: remove it.
    pub finished: bool,
}

/// What [`plan`] reads besides the pool and its sandboxes.
#[derive(Clone, Copy, Debug)]
pub struct Outlook<'a> {
    /// What a sandbox of the pool's template runs; `None` when the template is gone.
    pub model: Option<&'a EnvInstanceSpec>,
    /// Creates that wanted a sandbox of the pool lately.
    pub demand: u32,
    /// How many sandboxes may be started now (the global cap, the cold creates, the backoff).
    pub room: u32,
    pub now: Timestamp,
    /// A sandbox not ready this long after it was made counts as failed.
    pub ready_timeout: Duration,
}

/// Decides what a pool needs. `members` are the sandboxes waiting in it (deleting ones included).
pub fn plan(pool: &EnvPool, members: &[Arc<EnvInstance>], outlook: Outlook<'_>) -> Plan {
    let Outlook { model, demand, room, now, ready_timeout } = outlook;
    let previous = pool.status.clone().unwrap_or_default();
    let deleting = pool.metadata.deletion_timestamp.is_some();
    let mut remove = Vec::new();
    let (mut ready, mut starting, mut new_failures) = (Vec::new(), Vec::new(), 0);
    let mut last_error = None;
    for m in members.iter().filter(|m| !m.is_deleting()) {
        let stale = model.is_some_and(|model| m.spec != *model);
        let id = m.metadata.name.as_deref().unwrap_or_default();
        let age = m.metadata.creation_timestamp.as_ref().map_or(Duration::ZERO, |c| {
            Duration::from_millis((now.as_millisecond() - c.0.as_millisecond()).max(0) as u64)
        });
        match m.member_state() {
            _ if deleting || stale => remove.push(m.clone()),
            MemberState::Failed => {
                new_failures += 1;
                last_error = Some(
                    m.status
                        .as_ref()
                        .and_then(|s| s.message.clone())
                        .unwrap_or_else(|| format!("sandbox {id} {}", m.phase())),
                );
                remove.push(m.clone());
            }
            MemberState::Starting if age > ready_timeout => {
                new_failures += 1;
                let why = m
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
                    .map(|c| c.message.clone())
                    .filter(|m| !m.is_empty())
                    .unwrap_or_else(|| format!("it is {}", m.phase()));
                last_error = Some(format!("sandbox {id} not ready {}s after it was made: {why}", age.as_secs()));
                remove.push(m.clone());
            }
            MemberState::Ready => ready.push(m.clone()),
            MemberState::Starting => starting.push(m.clone()),
        }
    }
    let target = if deleting || model.is_none() { 0 } else { pool.spec.target(demand) };
    // Over the target (the demand fell, the pool was scaled down): the newest go first, those not ready before
    // the ready ones.
    let mut live = starting.len() + ready.len();
    let by_age = |a: &Arc<EnvInstance>, b: &Arc<EnvInstance>| {
        b.metadata.creation_timestamp.as_ref().map(|t| t.0).cmp(&a.metadata.creation_timestamp.as_ref().map(|t| t.0))
    };
    starting.sort_by(by_age);
    ready.sort_by(by_age);
    while live > target as usize {
        let next = if starting.is_empty() { ready.remove(0) } else { starting.remove(0) };
        remove.push(next);
        live -= 1;
    }
    let create = if model.is_some() && !deleting { (target as usize - live).min(room as usize) as u32 } else { 0 };
    let last_error = match (last_error, model) {
        (Some(e), _) => Some(e),
        (None, None) if !deleting => {
            Some(format!("environment \"{}\" not found: register it, or delete the pool", pool.spec.env_name))
        }
        // Cleared once a sandbox is ready again.
        (None, _) if !ready.is_empty() => None,
        (None, _) => previous.last_error.clone(),
    };
    let status = EnvPoolStatus {
        replicas: (ready.len() + starting.len()) as u32,
        ready: ready.len() as u32,
        starting: starting.len() as u32,
        target,
        last_error,
        ..previous
    };
    let finished = deleting && members.iter().all(|m| m.is_deleting()) && remove.is_empty();
    Plan { create, remove, status, new_failures, finished }
}

/// The backoff after `n` sandboxes of a pool failed in a row: 1 s, 2 s, 4 s, … 60 s.
pub fn failure_backoff(n: u32) -> Duration {
    Duration::from_secs(1u64 << n.saturating_sub(1).min(6)).min(Duration::from_secs(60))
}

impl Pools {
    pub fn new(
        pools: Arc<dyn ObjectStore<EnvPool>>,
        instances: Arc<dyn ObjectStore<EnvInstance>>,
        templates: Arc<dyn ObjectStore<Environment>>,
        demand: Arc<Demand>,
        config: PoolConfig,
        max_instances: Option<usize>,
    ) -> Arc<Self> {
        Arc::new(Pools { pools, instances, templates, demand, config, max_instances, backoff: Mutex::default() })
    }

    fn backoff(&self) -> std::sync::MutexGuard<'_, HashMap<String, Backoff>> {
        self.backoff.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many sandboxes may be started now, over all pools: the cap less those being created, one at most
    /// while users' instances are being created, none over `--max-instances`.
    fn room(&self) -> u32 {
        let (mut pooled_starting, mut cold_starting, mut live) = (0u32, 0u32, 0usize);
        for i in self.instances.list() {
            if i.is_deleting() {
                continue;
            }
            live += 1;
            if matches!(i.phase(), Phase::Pending | Phase::Creating) {
                if i.pool().is_some() { pooled_starting += 1 } else { cold_starting += 1 }
            }
        }
        let cap = if cold_starting > 0 { 1 } else { self.config.pool_max_starting.max(1) };
        let under_max = self.max_instances.map_or(u32::MAX, |m| m.saturating_sub(live).min(u32::MAX as usize) as u32);
        cap.saturating_sub(pooled_starting).min(under_max)
    }

    /// One look at a pool: plan, remove, create, write the status.
    pub async fn reconcile(&self, pool: &EnvPool, now: Instant) -> Result<Action, Error> {
        let pool_key = key_of(pool);
        let Some(pool) = self.pools.get(&pool_key) else { return Ok(Action::await_change()) };
        // Pools made around the API (`kubectl apply`) get the finalizer that lets their sandboxes go first.
        self.pools.hold(&pool).await?;
        let namespace = pool.metadata.namespace.clone().unwrap_or_default();
        let name = pool.metadata.name.clone().unwrap_or_default();
        let model = pool.spec.template().and_then(|(n, v)| {
            let t = self.templates.get(&key(&namespace, &Environment::object_name(n, v)))?;
            (t.spec.name == n && t.spec.version == v && t.metadata.deletion_timestamp.is_none())
                .then(|| member_spec(&t.spec.template, n, v, pool.spec.owner.as_deref()))
        });
        let members =
            self.instances.list_where(&|i: &EnvInstance| i.pool() == Some(name.as_str()) && i.namespace() == namespace);
        let backoff = self.backoff().get(&pool_key).copied();
        let waiting = backoff.filter(|b| b.until > now).map(|b| b.until - now);
        let room = if waiting.is_some() { 0 } else { self.room() };
        let outlook = Outlook {
            model: model.as_ref(),
            demand: self.demand.recent(&pool_key, now),
            room,
            now: Timestamp::now(),
            ready_timeout: self.config.pool_ready_timeout,
        };
        let plan = plan(&pool, &members, outlook);

        if plan.new_failures > 0 {
            let failures = backoff.map_or(0, |b| b.failures) + plan.new_failures;
            let delay = failure_backoff(failures);
            warn!(
                failures,
                ?delay,
                error = plan.status.last_error.as_deref().unwrap_or(""),
                "pooled sandboxes failed; replacing them after a backoff"
            );
            self.backoff().insert(pool_key.clone(), Backoff { failures, until: now + delay });
        } else if plan.status.ready > 0 {
            self.backoff().remove(&pool_key);
        }
        for m in &plan.remove {
            let version = m.metadata.resource_version.clone().unwrap_or_default();
            match self.instances.request_delete_at(&key_of(m.as_ref()), &version, Timestamp::now()).await {
                Ok(_) => debug!(sandbox = ?m.metadata.name, "pooled sandbox removed"),
                // Claimed (or changed) since the plan saw it: it is someone's instance now.
                Err(Error::Conflict(_)) => {
                    debug!(sandbox = ?m.metadata.name, "pooled sandbox changed meanwhile; left alone")
                }
                Err(e) => return Err(e),
            }
        }
        if plan.finished {
            self.pools.purge(&pool_key).await?;
            self.demand.forget(&pool_key);
            self.backoff().remove(&pool_key);
            info!("pool deleted");
            return Ok(Action::await_change());
        }
        if let Some(model) = model.as_ref().filter(|_| plan.create > 0) {
            for _ in 0..plan.create {
                self.create_member(&pool, model).await?;
            }
            debug!(created = plan.create, "pool refilling");
        }
        self.write_status(&pool, plan.status.clone()).await?;
        // Changes of the sandboxes wake the pool; look again anyway while it is short, at the backoff's end
        // when it waits on one, and now and then for the demand window to move.
        let short = plan.status.replicas + plan.create < plan.status.target;
        let again = match waiting {
            Some(w) => w,
            None if short => Duration::from_millis(500),
            None => Duration::from_secs(10),
        };
        Ok(Action::requeue(again))
    }

    async fn create_member(&self, pool: &EnvPool, model: &EnvInstanceSpec) -> Result<(), Error> {
        let name = pool.metadata.name.clone().unwrap_or_default();
        for _ in 0..8 {
            let id = format!("{}-{}", model.env_name, random_suffix(6));
            let mut member = EnvInstance::new(&id, model.clone());
            member.metadata.namespace = pool.metadata.namespace.clone();
            member.metadata.labels = Some([(POOL_LABEL.to_string(), name.clone())].into());
            match self.instances.create(member, Timestamp::now()).await {
                Ok(_) => return Ok(()),
                Err(Error::AlreadyExists(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Writes the pool's status with the claims counted since the last write.
    async fn write_status(&self, pool: &EnvPool, mut status: EnvPoolStatus) -> Result<(), Error> {
        let pool_key = key_of(pool);
        let (hits, misses) = self.demand.take_counts(&pool_key);
        status.hits += hits;
        status.claimed += hits;
        status.misses += misses;
        if pool.status.as_ref() == Some(&status) {
            return Ok(());
        }
        let mut updated = pool.clone();
        updated.status = Some(status);
        if let Err(e) = self.pools.write_status(&updated).await {
            self.demand.give_back(&pool_key, hits, misses);
            return Err(e);
        }
        Ok(())
    }

    /// Removes waiting sandboxes whose pool is gone (deleted around the API, or a store restored without it).
    async fn sweep(&self) -> Result<(), Error> {
        for m in self.instances.list_where(&|i: &EnvInstance| i.pool().is_some() && !i.is_deleting()) {
            let pool = key(m.namespace(), m.pool().unwrap_or_default());
            if self.pools.get(&pool).is_some() {
                continue;
            }
            let version = m.metadata.resource_version.clone().unwrap_or_default();
            match self.instances.request_delete_at(&key_of(m.as_ref()), &version, Timestamp::now()).await {
                Ok(_) => info!(sandbox = ?m.metadata.name, pool = %pool, "removed a pooled sandbox whose pool is gone"),
                Err(Error::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// The pool a sandbox waits in or was claimed from: what a change to it should wake.
fn pool_of(i: &EnvInstance) -> Option<ObjectRef<EnvPool>> {
    let name = i.pool().or_else(|| i.claimed_from())?;
    Some(ObjectRef::new(name).within(i.namespace()))
}

/// Runs the pool controller until `shutdown` resolves: pools wake on their own changes, on changes of their
/// sandboxes, and on their requeues; a sweep every `sweep_every` removes sandboxes of pools that are gone.
pub async fn run(
    pools: Arc<Pools>,
    sweep_every: Duration,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let (reader, objects) = pools.pools.controller_feed();
    let members = super::owners_of(pools.instances.as_ref(), pool_of);
    let sweeper = {
        let pools = pools.clone();
        super::spawn_sweeper(sweep_every, "pool", move || {
            let pools = pools.clone();
            async move { pools.sweep().await }
        })
    };
    // One pool at a time: the cap on starting sandboxes is counted over all pools.
    Controller::for_stream(objects.map(Ok::<_, watcher::Error>), reader)
        .with_config(ControllerConfig::default().concurrency(1))
        .reconcile_on(members)
        .graceful_shutdown_on(shutdown)
        .run(
            |pool: Arc<EnvPool>, pools: Arc<Pools>| async move {
                let span = info_span!("pool", name = %pool.metadata.name.as_deref().unwrap_or_default());
                pools.reconcile(&pool, Instant::now()).instrument(span).await
            },
            |pool: Arc<EnvPool>, err: &Error, _| {
                warn!(pool = ?pool.metadata.name, error = %err, "pool reconcile failed; retrying");
                Action::requeue(Duration::from_secs(1))
            },
            pools,
        )
        .for_each(|_| futures::future::ready(()))
        .await;
    sweeper.abort();
}

#[cfg(test)]
mod tests {
    use aenv_core::{Condition, EnvInstanceStatus, EnvPoolSpec};
    use jiff::Timestamp;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;

    fn pool(replicas: u32, max: Option<u32>) -> EnvPool {
        let mut p = EnvPool::new(
            "warm",
            EnvPoolSpec { env_name: "mini@1.0.0".into(), replicas, max_replicas: max, owner: None },
        );
        p.metadata.namespace = Some("default".into());
        p
    }

    fn model() -> EnvInstanceSpec {
        member_spec(&EnvInstanceSpec { image: Some("mini:1".into()), ..Default::default() }, "mini", "1.0.0", None)
    }

    /// A waiting sandbox made at second `age` in `phase`, ready or not.
    fn member(n: u32, phase: Phase, ready: bool) -> Arc<EnvInstance> {
        let mut m = EnvInstance::new(&format!("mini-{n:06}"), model());
        m.metadata.namespace = Some("default".into());
        m.metadata.labels = Some([(POOL_LABEL.to_string(), "warm".to_string())].into());
        m.metadata.creation_timestamp = Some(Time(Timestamp::from_second(1_700_000_000 + i64::from(n)).unwrap()));
        let conditions = vec![Condition {
            type_: "Ready".into(),
            status: if ready { "True" } else { "False" }.into(),
            reason: String::new(),
            message: String::new(),
        }];
        m.status = Some(EnvInstanceStatus {
            phase,
            conditions,
            message: (phase == Phase::Failed).then(|| "the container exited with code 1".to_string()),
            ..Default::default()
        });
        Arc::new(m)
    }

    /// The outlook of a pool whose template is [`model`], at second 1_700_000_100.
    fn look(model: Option<&EnvInstanceSpec>, demand: u32, room: u32) -> Outlook<'_> {
        Outlook {
            model,
            demand,
            room,
            now: Timestamp::from_second(1_700_000_100).unwrap(),
            ready_timeout: Duration::from_secs(120),
        }
    }

    fn names(v: &[Arc<EnvInstance>]) -> Vec<String> {
        v.iter().map(|m| m.metadata.name.clone().unwrap_or_default()).collect()
    }

    #[test]
    fn an_empty_pool_is_filled_within_the_room() {
        let p = plan(&pool(5, None), &[], look(Some(&model()), 0, 2));
        assert_eq!((p.create, p.status.target, p.status.replicas), (2, 5, 0), "two now, the rest as room frees");
        let p = plan(&pool(5, None), &[], look(Some(&model()), 0, 10));
        assert_eq!(p.create, 5);
    }

    #[test]
    fn ready_and_starting_count_and_failed_ones_are_replaced_with_the_reason() {
        let members =
            [member(1, Phase::Running, true), member(2, Phase::Creating, false), member(3, Phase::Failed, false)];
        let p = plan(&pool(3, None), &members, look(Some(&model()), 0, 4));
        assert_eq!((p.status.ready, p.status.starting, p.create, p.new_failures), (1, 1, 1, 1));
        assert_eq!(names(&p.remove), ["mini-000003"]);
        assert_eq!(p.status.last_error.as_deref(), Some("the container exited with code 1"));
    }

    #[test]
    fn demand_grows_the_pool_up_to_its_ceiling_and_the_excess_goes_newest_and_unready_first() {
        let members = [member(1, Phase::Running, true), member(2, Phase::Running, true)];
        let p = plan(&pool(2, Some(6)), &members, look(Some(&model()), 3, 10));
        assert_eq!((p.status.target, p.create), (5, 3));
        let p = plan(&pool(2, Some(6)), &members, look(Some(&model()), 100, 10));
        assert_eq!((p.status.target, p.create), (6, 4));
        let members = [
            member(1, Phase::Running, true),
            member(2, Phase::Running, true),
            member(3, Phase::Running, true),
            member(4, Phase::Pending, false),
        ];
        let p = plan(&pool(2, Some(6)), &members, look(Some(&model()), 0, 10));
        assert_eq!(names(&p.remove), ["mini-000004", "mini-000003"]);
        assert_eq!(p.create, 0);
    }

    #[test]
    fn sandboxes_of_an_old_template_are_replaced_and_a_missing_template_stops_the_refill() {
        let mut old = (*member(1, Phase::Running, true)).clone();
        old.spec.image = Some("mini:0".into());
        let p = plan(&pool(1, None), &[Arc::new(old)], look(Some(&model()), 0, 4));
        assert_eq!((names(&p.remove).len(), p.create, p.status.ready), (1, 1, 0));
        let p = plan(&pool(1, None), &[], look(None, 0, 4));
        assert_eq!(p.create, 0);
        assert!(p.status.last_error.unwrap().contains("not found"));
    }

    #[test]
    fn a_deleted_pool_removes_its_waiting_sandboxes_then_finishes() {
        let mut p0 = pool(3, None);
        p0.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
        let members = [member(1, Phase::Running, true), member(2, Phase::Pending, false)];
        let p = plan(&p0, &members, look(Some(&model()), 0, 4));
        assert_eq!((p.remove.len(), p.create, p.finished), (2, 0, false));
        let mut going = (*members[0]).clone();
        going.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
        let p = plan(&p0, &[Arc::new(going)], look(Some(&model()), 0, 4));
        assert!(p.finished && p.remove.is_empty());
    }

    #[test]
    fn a_sandbox_that_never_gets_ready_is_replaced_after_the_timeout() {
        let members = [member(1, Phase::Running, false)];
        let m = model();
        let mut outlook = look(Some(&m), 0, 4);
        let p = plan(&pool(1, None), &members, outlook);
        assert!(p.remove.is_empty() && p.create == 0, "99 s old: still starting");
        outlook.now = Timestamp::from_second(1_700_000_200).unwrap();
        let p = plan(&pool(1, None), &members, outlook);
        assert_eq!((names(&p.remove).len(), p.create, p.new_failures), (1, 1, 1));
        assert!(p.status.last_error.unwrap().contains("not ready 199s"));
    }

    #[test]
    fn the_failure_backoff_doubles_to_a_minute() {
        let b: Vec<_> = [1, 2, 3, 7, 50].iter().map(|n| failure_backoff(*n).as_secs()).collect();
        assert_eq!(b, [1, 2, 4, 60, 60]);
    }
}
