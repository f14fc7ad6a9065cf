//! The pool controller: keeps each `EnvPool` at its target of waiting sandboxes, on the shared member-set planner
//! ([`super::members`]: classification, backoff, compare-and-swap removals, creates, sweep, loop). What is the
//! pool's own is its policy, [`plan`], which decides without I/O:
//!
//! - The target follows the demand: between `replicas` and `maxReplicas`, a pool keeps `replicas` plus the creates
//!   of the demand window waiting.
//! - Refill runs at the daemon's pace: at most `--pool-max-starting` sandboxes of all pools are being created at
//!   once, and only one while instances that users asked for are still being created, so cold creates are never
//!   starved.
//! - A pool does not roll: sandboxes of an old template are replaced at once (nobody uses a waiting sandbox).
//! - Removals are compare-and-swap deletes at the version the plan saw: a sandbox claimed meanwhile is not
//!   removed.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use aenv_core::{
    EnvInstance, EnvInstanceSpec, EnvPool, EnvPoolStatus, Environment, Phase,
    pool::{POOL_LABEL, member_spec},
};
use jiff::Timestamp;
use kube::runtime::{controller::Action, reflector::ObjectRef};
use tracing::{Instrument, info, info_span};

use super::members::{self, Birth, Census, Clock, Kin, Members, Owner};
use crate::{
    Error,
    demand::Demand,
    store::{ObjectStore, key, key_of},
};

/// Knobs of the pool controller (the command line's `--pool-max-starting`, `--pool-ready-timeout`,
/// `--pool-demand-window`).
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// How many pooled sandboxes (of all pools) may be starting at once.
    pub pool_max_starting: u32,
    /// A pooled sandbox not ready this long after it was made is replaced.
    pub pool_ready_timeout: Duration,
    /// How long a create that a pool could serve counts as demand.
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
    members: Members,
}

/// How a pool's sandboxes are tied to it.
const KIN: Kin =
    Kin { label: POOL_LABEL, noun: "sandbox", plural: "pooled sandboxes", owner: "pool", owner_of: EnvInstance::pool };

/// What to do with one pool now.
pub type Plan = members::Plan<EnvPoolStatus>;

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
    let mut census = Census::of(members, model, Clock { now, ready_timeout }, KIN.noun);
    let mut remove = if deleting { census.take_all() } else { Vec::new() };
    // Sandboxes of an old template go at once, and are no failure.
    remove.append(&mut census.old_ready);
    remove.append(&mut census.old_starting);
    let (failed, new_failures, failure) = census.take_failed(|f| f.current);
    remove.extend(failed);
    let target = if deleting || model.is_none() { 0 } else { pool.spec.target(demand) };
    remove.extend(census.trim(target as usize));
    let create =
        if model.is_some() && !deleting { members::to_make(target as usize, census.current(), room) } else { 0 };
    let missing = (model.is_none() && !deleting).then(|| members::template_missing(&pool.spec.env_name, KIN.owner));
    let status = EnvPoolStatus {
        replicas: census.current() as u32,
        ready: census.ready.len() as u32,
        starting: census.starting.len() as u32,
        target,
        last_error: members::last_error(failure, missing, !census.ready.is_empty(), previous.last_error.clone()),
        ..previous
    };
    let finished = deleting && members.iter().all(|m| m.is_deleting()) && remove.is_empty();
    let (healthy, settled) = (status.ready > 0, status.replicas + create >= status.target);
    Plan { create, remove, status, new_failures, finished, healthy, settled }
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
        let members = Members::new(instances.clone(), KIN);
        Arc::new(Pools { pools, instances, templates, demand, config, max_instances, members })
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

    /// What a sandbox of `pool` runs; `None` when its template is gone.
    fn model(&self, pool: &EnvPool) -> Option<EnvInstanceSpec> {
        let namespace = pool.metadata.namespace.clone().unwrap_or_default();
        let (n, v) = pool.spec.template()?;
        let t = self.templates.get(&key(&namespace, &Environment::object_name(n, v)))?;
        (t.spec.name == n && t.spec.version == v && t.metadata.deletion_timestamp.is_none())
            .then(|| member_spec(&t.spec.template, n, v, pool.spec.owner.as_deref()))
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
}

impl Owner for Pools {
    type Kind = EnvPool;
    // One pool at a time: the cap on starting sandboxes is counted over all pools.
    const CONCURRENCY: u16 = 1;

    fn owners(&self) -> &dyn ObjectStore<EnvPool> {
        self.pools.as_ref()
    }

    fn members(&self) -> &Members {
        &self.members
    }

    /// The pool a sandbox waits in or was claimed from.
    fn woken_by(i: &EnvInstance) -> Option<ObjectRef<EnvPool>> {
        let name = i.pool().or_else(|| i.claimed_from())?;
        Some(ObjectRef::new(name).within(i.namespace()))
    }

    /// One look at a pool: plan, remove, create, write the status.
    async fn reconcile(&self, pool: Arc<EnvPool>, now: Instant) -> Result<Action, Error> {
        let span = info_span!("pool", name = %pool.metadata.name.as_deref().unwrap_or_default());
        let pool_key = key_of(pool.as_ref());
        let Some(pool) = self.pools.get(&pool_key) else { return Ok(Action::await_change()) };
        async {
            // Pools made around the API (`kubectl apply`) get the finalizer that lets their sandboxes go first.
            self.pools.hold(&pool).await?;
            let model = self.model(&pool);
            let look = self.members.backoffs.look(&pool_key, now);
            let outlook = Outlook {
                model: model.as_ref(),
                demand: self.demand.recent(&pool_key, now),
                room: if look.waiting.is_some() { 0 } else { self.room() },
                now: Timestamp::now(),
                ready_timeout: self.config.pool_ready_timeout,
            };
            let plan = plan(&pool, &self.members.of(&pool.metadata), outlook);
            let prefix = model.as_ref().map(|m| m.env_name.clone()).unwrap_or_default();
            let birth = Birth { owner: &pool.metadata, prefix: &prefix, model: model.as_ref() };
            self.members.carry_out(&pool_key, look, &plan, birth, now).await?;
            if plan.finished {
                self.pools.purge(&pool_key).await?;
                self.demand.forget(&pool_key);
                info!("pool deleted");
                return Ok(Action::await_change());
            }
            self.write_status(&pool, plan.status.clone()).await?;
            Ok(members::requeue(look, plan.settled))
        }
        .instrument(span)
        .await
    }
}

#[cfg(test)]
mod tests {
    use aenv_core::{Condition, EnvInstanceStatus, EnvPoolSpec, EnvironmentSpec};
    use jiff::Timestamp;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::store::MemoryStore;

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
        assert_eq!(p.status.last_error.as_deref(), Some("sandbox mini-000003: the container exited with code 1"));
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

    /// The pool controller over the in-memory stores: no engine, no daemon.
    #[tokio::test]
    async fn looks_fill_the_pool_back_off_after_failures_and_a_deleted_pool_goes_after_its_sandboxes() {
        let (pools, instances, templates) = (MemoryStore::new(), MemoryStore::<EnvInstance>::new(), MemoryStore::new());
        let spec = EnvironmentSpec {
            name: "mini".into(),
            version: "1.0.0".into(),
            template: EnvInstanceSpec { image: Some("mini:1".into()), ..Default::default() },
            ..Default::default()
        };
        let mut t = Environment::new(&Environment::object_name("mini", "1.0.0"), spec);
        t.metadata.namespace = Some("default".into());
        templates.create(t, Timestamp::now()).await.unwrap();
        let warm = pools.create(pool(2, None), Timestamp::now()).await.unwrap();
        let config = PoolConfig {
            pool_max_starting: 4,
            pool_ready_timeout: Duration::from_secs(120),
            pool_demand_window: Duration::from_secs(60),
        };
        let demand = Arc::new(Demand::new(Duration::from_secs(60)));
        let ctl = Pools::new(pools.clone(), instances.clone(), templates, demand, config, None);
        let t0 = Instant::now();
        assert_eq!(ctl.reconcile(warm.clone(), t0).await.unwrap(), Action::requeue(Duration::from_secs(10)));
        let made = instances.list();
        assert_eq!(made.len(), 2);
        assert!(made.iter().all(|m| m.pool() == Some("warm") && m.spec == model()), "labelled, of the template");

        // One fails: it is removed, replaced, and the pool says why.
        let fail = |m: &EnvInstance| {
            let mut m = m.clone();
            m.status = Some(EnvInstanceStatus {
                phase: Phase::Failed,
                message: Some("exited with code 2".into()),
                ..Default::default()
            });
            m
        };
        instances.write_status(&fail(&made[0])).await.unwrap();
        ctl.reconcile(warm.clone(), t0).await.unwrap();
        assert!(instances.get(&key_of(made[0].as_ref())).unwrap().is_deleting());
        assert_eq!(instances.list_where(&|i: &EnvInstance| !i.is_deleting()).len(), 2, "replaced");
        let status = pools.get("default/warm").and_then(|p| p.status.clone()).unwrap();
        let id = made[0].metadata.name.as_deref().unwrap();
        assert_eq!(status.last_error, Some(format!("sandbox {id}: exited with code 2")));

        // Another fails within the backoff (1 s after the first): removed, not replaced until the backoff ends.
        instances.write_status(&fail(&made[1])).await.unwrap();
        let again = ctl.reconcile(warm.clone(), t0 + Duration::from_millis(100)).await.unwrap();
        assert_eq!(again, Action::requeue(Duration::from_millis(900)));
        assert_eq!(instances.list_where(&|i: &EnvInstance| !i.is_deleting()).len(), 1);

        // Deleted: its sandboxes go first, then the pool.
        pools.request_delete("default/warm", Timestamp::now()).await.unwrap();
        ctl.reconcile(warm.clone(), t0 + Duration::from_secs(5)).await.unwrap();
        assert!(instances.list().iter().all(|i| i.is_deleting()));
        assert!(pools.get("default/warm").is_some(), "not before its sandboxes are going");
        assert_eq!(ctl.reconcile(warm, t0 + Duration::from_secs(6)).await.unwrap(), Action::await_change());
        assert!(pools.get("default/warm").is_none());
    }
}
