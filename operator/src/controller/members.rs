//! What every owner of a set of instances shares. A pool and an env service each own `EnvInstance` objects (their
//! members, tied to them by a label), start nothing themselves, and keep that set at a size their own policy sets;
//! the instance controller starts, probes, adopts and removes the members like any other instance. Everything here
//! is independent of that policy and written once, so that a fix to it reaches every owner:
//!
//! - [`Census`]: the pure classification of an owner's members: ready, starting, failed with the reason (exited,
//!   could not start, or not ready within the ready timeout), of the current revision or an old one; and the
//!   trimming of the excess, newest first and those not ready before the ready ones.
//! - [`Backoffs`]: the failure backoff per owner (1 s, 2 s, … 60 s), so that a template that cannot start costs one
//!   attempt per backoff, not a storm.
//! - [`Members`]: the I/O on the members: compare-and-swap removals at the version the plan saw (a member changed
//!   meanwhile, such as a sandbox claimed, is left alone), creates under a fresh random id, and the sweep of
//!   members whose owner is gone (deleted around the API, or a store restored without it).
//! - [`run`]: the kube-runtime loop over the owners, woken by their own changes, by their members' and by their
//!   requeues, with the sweep beside it.
//!
//! An owner ([`super::pools`], [`super::services`]) keeps only its policy: how many members it wants and which of
//! them go.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aenv_core::{EnvInstance, EnvInstanceSpec, EnvPoolStatus, EnvServiceStatus, MemberState};
use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{
    Resource,
    runtime::{
        controller::{Action, Config as ControllerConfig, Controller},
        reflector::ObjectRef,
        watcher,
    },
};
use tracing::{debug, info, warn};

use crate::{
    Error,
    store::{Kind, ObjectStore, Slim, key, key_of, random_suffix},
};

/// How an owner's members are tied to it and called.
#[derive(Clone, Copy, Debug)]
pub struct Kin {
    /// The label that names a member's owner (`aenv.io/pool`, `aenv.io/service`).
    pub label: &'static str,
    /// What one member is called in logs and in the owner's `lastError` ("sandbox", "replica").
    pub noun: &'static str,
    /// What several members are called in logs ("pooled sandboxes", "replicas").
    pub plural: &'static str,
    /// What the owner is called ("pool", "service").
    pub owner: &'static str,
    /// The owner's name a member carries in [`Kin::label`].
    pub owner_of: fn(&EnvInstance) -> Option<&str>,
}

/// When an owner looks: the instant, and how long a member may take to become ready before it counts as failed.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    pub now: Timestamp,
    pub ready_timeout: Duration,
}

/// A member that failed, and why.
#[derive(Clone, Debug)]
pub struct Failure {
    pub member: Arc<EnvInstance>,
    /// Whether it runs what the owner asks for now (else it is of an old revision).
    pub current: bool,
    pub reason: String,
}

/// An owner's members that are not being deleted, sorted by what they do. The lists of ready and starting members
/// are newest first.
#[derive(Clone, Debug, Default)]
pub struct Census {
    /// Of the current revision, ready.
    pub ready: Vec<Arc<EnvInstance>>,
    /// Of the current revision, not ready yet and within the ready timeout.
    pub starting: Vec<Arc<EnvInstance>>,
    /// Of an old revision, ready.
    pub old_ready: Vec<Arc<EnvInstance>>,
    /// Of an old revision, not ready (not held to the ready timeout: nothing waits for them).
    pub old_starting: Vec<Arc<EnvInstance>>,
    /// Failed (exited, could not start) or, of the current revision, not ready within the ready timeout; in the
    /// order the members were given.
    pub failed: Vec<Failure>,
}

fn created(m: &EnvInstance) -> Option<Timestamp> {
    m.metadata.creation_timestamp.as_ref().map(|t| t.0)
}

/// How long ago `m` was made.
fn age_of(m: &EnvInstance, now: Timestamp) -> Duration {
    created(m)
        .map_or(Duration::ZERO, |c| Duration::from_millis((now.as_millisecond() - c.as_millisecond()).max(0) as u64))
}

/// Why a failed member failed: its status message, else its phase.
fn failed_reason(m: &EnvInstance, noun: &str) -> String {
    let id = m.metadata.name.as_deref().unwrap_or_default();
    match m.status.as_ref().and_then(|s| s.message.as_deref()) {
        Some(message) => format!("{noun} {id}: {message}"),
        None => format!("{noun} {id} {}", m.phase()),
    }
}

/// Why a member that is still not ready counts as failed: its age, the timeout, and its `Ready` condition's
/// message (else its phase).
fn too_slow_reason(m: &EnvInstance, noun: &str, clock: Clock) -> String {
    let id = m.metadata.name.as_deref().unwrap_or_default();
    let why = m
        .ready_condition()
        .map(|c| c.message.clone())
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| format!("it is {}", m.phase()));
    format!(
        "{noun} {id} not ready {}s after it was made (ready timeout {}s): {why}",
        age_of(m, clock.now).as_secs(),
        clock.ready_timeout.as_secs()
    )
}

/// The owner's `lastError` when its template is gone.
pub fn template_missing(env_name: &str, owner: &str) -> String {
    format!("environment \"{env_name}\" not found: register it again, or delete the {owner}")
}

impl Census {
    /// Sorts `members` (deleting ones are left out). A member is current when it runs `model` (all are when the
    /// template is gone: there is nothing newer to replace them with).
    pub fn of(members: &[Arc<EnvInstance>], model: Option<&EnvInstanceSpec>, clock: Clock, noun: &str) -> Census {
        let mut c = Census::default();
        for m in members.iter().filter(|m| !m.is_deleting()) {
            let current = model.is_none_or(|model| m.spec == *model);
            let failure = |reason| Failure { member: m.clone(), current, reason };
            match m.member_state() {
                MemberState::Failed => c.failed.push(failure(failed_reason(m, noun))),
                MemberState::Starting if current && age_of(m, clock.now) > clock.ready_timeout => {
                    c.failed.push(failure(too_slow_reason(m, noun, clock)))
                }
                MemberState::Ready if current => c.ready.push(m.clone()),
                MemberState::Starting if current => c.starting.push(m.clone()),
                MemberState::Ready => c.old_ready.push(m.clone()),
                MemberState::Starting => c.old_starting.push(m.clone()),
            }
        }
        let newest_first = |a: &Arc<EnvInstance>, b: &Arc<EnvInstance>| created(b).cmp(&created(a));
        for list in [&mut c.ready, &mut c.starting, &mut c.old_ready, &mut c.old_starting] {
            list.sort_by(newest_first);
        }
        c
    }

    /// Members of the current revision, ready or starting.
    pub fn current(&self) -> usize {
        self.ready.len() + self.starting.len()
    }

    /// Takes the current members over `target` out: the newest first, those not ready before the ready ones.
    pub fn trim(&mut self, target: usize) -> Vec<Arc<EnvInstance>> {
        let mut gone = Vec::new();
        while self.current() > target {
            gone.push(if self.starting.is_empty() { self.ready.remove(0) } else { self.starting.remove(0) });
        }
        gone
    }

    /// Takes every member out (the owner is being deleted): none of them is a failure.
    pub fn take_all(&mut self) -> Vec<Arc<EnvInstance>> {
        let c = std::mem::take(self);
        let failed = c.failed.into_iter().map(|f| f.member);
        c.ready.into_iter().chain(c.starting).chain(c.old_ready).chain(c.old_starting).chain(failed).collect()
    }

    /// Takes the failed members out: how many of them `count` (for the backoff), and the reason of the last of
    /// those.
    pub fn take_failed(&mut self, count: impl Fn(&Failure) -> bool) -> (Vec<Arc<EnvInstance>>, u32, Option<String>) {
        let (mut n, mut last) = (0, None);
        let mut gone = Vec::new();
        for f in std::mem::take(&mut self.failed) {
            if count(&f) {
                n += 1;
                last = Some(f.reason);
            }
            gone.push(f.member);
        }
        (gone, n, last)
    }
}

/// How many members to make: up to `target` from `have`, within `room`.
pub fn to_make(target: usize, have: usize, room: u32) -> u32 {
    u32::try_from(target.saturating_sub(have)).unwrap_or(u32::MAX).min(room)
}

/// The owner's `lastError`: the newest failure; else that its template is gone (`missing`); else none once it is
/// `healthy` again, the previous one until then.
pub fn last_error(
    failure: Option<String>,
    missing: Option<String>,
    healthy: bool,
    previous: Option<String>,
) -> Option<String> {
    failure.or(missing).or(if healthy { None } else { previous })
}

/// The backoff after `n` members of an owner failed in a row: 1 s, 2 s, 4 s, … 60 s.
pub fn failure_backoff(n: u32) -> Duration {
    Duration::from_secs(1u64 << n.saturating_sub(1).min(6)).min(Duration::from_secs(60))
}

/// What to do with one owner now.
#[derive(Clone, Debug)]
pub struct Plan<S> {
    /// How many members of the current revision to make.
    pub create: u32,
    /// Members to remove.
    pub remove: Vec<Arc<EnvInstance>>,
    pub status: S,
    /// Members that failed since the last look (for the backoff).
    pub new_failures: u32,
    /// Whether the owner is being deleted and no member is left: remove it.
    pub finished: bool,
    /// Whether the owner serves again: its backoff is cleared.
    pub healthy: bool,
    /// Whether the owner has what it wants: it is looked at again in 10 s rather than 500 ms.
    pub settled: bool,
}

/// An owner's status, as the shared loop reads it.
pub trait MemberStatus {
    fn last_error(&self) -> Option<&str>;
}

impl MemberStatus for EnvPoolStatus {
    fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }
}

impl MemberStatus for EnvServiceStatus {
    fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }
}

#[derive(Clone, Copy, Debug)]
struct Backoff {
    failures: u32,
    until: Instant,
}

/// Consecutive failures per owner, and when the next member may be made.
#[derive(Debug, Default)]
pub struct Backoffs(Mutex<HashMap<String, Backoff>>);

/// What the backoff says of one owner at one look.
#[derive(Clone, Copy, Debug, Default)]
pub struct Look {
    /// Members failed in a row (0: none lately).
    failures: u32,
    /// Whether members failed lately (the backoff runs or has run out without a healthy look since).
    pub failing: bool,
    /// How long until the next member may be made; `None` once it may.
    pub waiting: Option<Duration>,
}

impl Backoffs {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Backoff>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn look(&self, owner: &str, now: Instant) -> Look {
        let b = self.lock().get(owner).copied();
        Look {
            failures: b.map_or(0, |b| b.failures),
            failing: b.is_some(),
            waiting: b.filter(|b| b.until > now).map(|b| b.until - now),
        }
    }

    /// After a plan: new failures lengthen the backoff, a healthy owner clears it.
    fn record(&self, owner: &str, look: Look, new_failures: u32, healthy: bool, now: Instant) -> Option<Duration> {
        if new_failures > 0 {
            let failures = look.failures + new_failures;
            let delay = failure_backoff(failures);
            self.lock().insert(owner.to_string(), Backoff { failures, until: now + delay });
            Some(delay)
        } else {
            if healthy {
                self.forget(owner);
            }
            None
        }
    }

    pub fn forget(&self, owner: &str) {
        self.lock().remove(owner);
    }
}

/// A member to make: whose it is, its id's prefix, what it runs.
#[derive(Clone, Copy, Debug)]
pub struct Birth<'a> {
    pub owner: &'a ObjectMeta,
    pub prefix: &'a str,
    pub model: Option<&'a EnvInstanceSpec>,
}

/// The members of one kind of owner: their store, how they are tied to their owner, the backoffs.
pub struct Members {
    pub instances: Arc<dyn ObjectStore<EnvInstance>>,
    pub kin: Kin,
    pub backoffs: Backoffs,
}

/// When to look at an owner again: at the backoff's end when it waits on one, soon while it is not settled,
/// now and then anyway.
pub fn requeue(look: Look, settled: bool) -> Action {
    Action::requeue(match look.waiting {
        Some(w) => w,
        None if !settled => Duration::from_millis(500),
        None => Duration::from_secs(10),
    })
}

impl Members {
    pub fn new(instances: Arc<dyn ObjectStore<EnvInstance>>, kin: Kin) -> Self {
        Members { instances, kin, backoffs: Backoffs::default() }
    }

    /// The members of the owner `meta` names, deleting ones included.
    pub fn of(&self, meta: &ObjectMeta) -> Vec<Arc<EnvInstance>> {
        let namespace = meta.namespace.clone().unwrap_or_default();
        let name = meta.name.clone().unwrap_or_default();
        let owner_of = self.kin.owner_of;
        self.instances.list_where(&|i: &EnvInstance| owner_of(i) == Some(name.as_str()) && i.namespace() == namespace)
    }

    /// Carries out `plan` for the owner under `key`: the backoff, the removals and, unless the owner is finished,
    /// the creates. The owner writes its status (or, when finished, removes itself) after.
    pub async fn carry_out<S: MemberStatus>(
        &self,
        key: &str,
        look: Look,
        plan: &Plan<S>,
        birth: Birth<'_>,
        now: Instant,
    ) -> Result<(), Error> {
        if let Some(delay) = self.backoffs.record(key, look, plan.new_failures, plan.healthy, now) {
            let error = plan.status.last_error().unwrap_or("");
            warn!(
                failures = look.failures + plan.new_failures,
                ?delay,
                error,
                "{} failed; replacing them after a backoff",
                self.kin.plural
            );
        }
        self.remove(&plan.remove).await?;
        if plan.finished {
            self.backoffs.forget(key);
            return Ok(());
        }
        if let Some(model) = birth.model.filter(|_| plan.create > 0) {
            for _ in 0..plan.create {
                self.make(birth.owner, birth.prefix, model).await?;
            }
            debug!(created = plan.create, "{} growing", self.kin.owner);
        }
        Ok(())
    }

    /// Compare-and-swap removals at the version each member had: one changed since (claimed, say) is left alone.
    pub async fn remove(&self, members: &[Arc<EnvInstance>]) -> Result<(), Error> {
        let noun = self.kin.noun;
        for m in members {
            let version = m.metadata.resource_version.clone().unwrap_or_default();
            match self.instances.request_delete_at(&key_of(m.as_ref()), &version, Timestamp::now()).await {
                Ok(_) => debug!(member = ?m.metadata.name, "{noun} removed"),
                Err(Error::Conflict(_)) => debug!(member = ?m.metadata.name, "{noun} changed meanwhile; left alone"),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Makes one member of `owner` running `model`, under `PREFIX-xxxxxx` (a few tries should the id be taken).
    async fn make(&self, owner: &ObjectMeta, prefix: &str, model: &EnvInstanceSpec) -> Result<(), Error> {
        let name = owner.name.clone().unwrap_or_default();
        for _ in 0..8 {
            let mut member = EnvInstance::new(&format!("{prefix}-{}", random_suffix(6)), model.clone());
            member.metadata.namespace = owner.namespace.clone();
            member.metadata.labels = Some([(self.kin.label.to_string(), name.clone())].into());
            match self.instances.create(member, Timestamp::now()).await {
                Ok(_) => return Ok(()),
                Err(Error::AlreadyExists(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Removes members whose owner is not in `owners`.
    pub async fn sweep<K: Kind>(&self, owners: &dyn ObjectStore<K>) -> Result<(), Error> {
        let (owner_of, noun, what) = (self.kin.owner_of, self.kin.noun, self.kin.owner);
        let orphans = self.instances.list_where(&|i: &EnvInstance| owner_of(i).is_some() && !i.is_deleting());
        for m in orphans {
            let owner = key(m.namespace(), owner_of(&m).unwrap_or_default());
            if owners.get(&owner).is_some() {
                continue;
            }
            let version = m.metadata.resource_version.clone().unwrap_or_default();
            match self.instances.request_delete_at(&key_of(m.as_ref()), &version, Timestamp::now()).await {
                Ok(_) => info!(member = ?m.metadata.name, owner = %owner, "removed a {noun} whose {what} is gone"),
                Err(Error::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// An owner of members, as [`run`] drives it.
pub trait Owner: Send + Sync + 'static {
    type Kind: Kind + Slim;
    /// How many owners are looked at at once.
    const CONCURRENCY: u16;
    fn owners(&self) -> &dyn ObjectStore<Self::Kind>;
    fn members(&self) -> &Members;
    /// The owner a change to `member` should wake.
    fn woken_by(member: &EnvInstance) -> Option<ObjectRef<Self::Kind>>;
    /// One look at `owner`.
    fn reconcile(
        &self,
        owner: Arc<Self::Kind>,
        now: Instant,
    ) -> impl std::future::Future<Output = Result<Action, Error>> + Send;
}

/// Runs `owner`'s controller until `shutdown` resolves: owners wake on their own changes, on changes of their
/// members, and on their requeues; a sweep every `sweep_every` removes members whose owner is gone.
pub async fn run<O: Owner>(
    owner: Arc<O>,
    sweep_every: Duration,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let (reader, objects) = owner.owners().controller_feed();
    let what = owner.members().kin.owner;
    let members = super::owners_of(owner.members().instances.as_ref(), O::woken_by);
    let sweeper = {
        let owner = owner.clone();
        super::spawn_sweeper(sweep_every, what, move || {
            let owner = owner.clone();
            async move { owner.members().sweep(owner.owners()).await }
        })
    };
    Controller::for_stream(objects.map(Ok::<_, watcher::Error>), reader)
        .with_config(ControllerConfig::default().concurrency(O::CONCURRENCY))
        .reconcile_on(members)
        .graceful_shutdown_on(shutdown)
        .run(
            |obj: Arc<O::Kind>, owner: Arc<O>| async move { owner.reconcile(obj, Instant::now()).await },
            move |obj: Arc<O::Kind>, err: &Error, _| {
                warn!(name = ?obj.meta().name, error = %err, "{what} reconcile failed; retrying");
                Action::requeue(Duration::from_secs(1))
            },
            owner,
        )
        .for_each(|_| futures::future::ready(()))
        .await;
    sweeper.abort();
}

#[cfg(test)]
mod tests {
    use aenv_core::{Condition, EnvInstanceStatus, Phase};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::store::MemoryStore;

    const KIN: Kin = Kin { label: "aenv.io/test-owner", noun: "member", plural: "members", owner: "owner", owner_of };

    fn owner_of(i: &EnvInstance) -> Option<&str> {
        i.metadata.labels.as_ref()?.get(KIN.label).map(String::as_str)
    }

    fn spec(image: &str) -> EnvInstanceSpec {
        EnvInstanceSpec { env_name: "mini".into(), image: Some(image.into()), ..Default::default() }
    }

    /// A member made at second `n` of the clock's epoch, in `phase`, ready or not (with `why` as the `Ready`
    /// condition's message).
    fn member(n: i64, image: &str, phase: Phase, ready: bool, why: &str) -> Arc<EnvInstance> {
        let mut m = EnvInstance::new(&format!("m-{n}"), spec(image));
        m.metadata.namespace = Some("default".into());
        m.metadata.labels = Some([(KIN.label.to_string(), "o".to_string())].into());
        m.metadata.creation_timestamp = Some(Time(Timestamp::from_second(1_800_000_000 + n).unwrap()));
        m.status = Some(EnvInstanceStatus {
            phase,
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                reason: String::new(),
                message: why.into(),
            }],
            message: phase.is_terminal().then(|| "exited with code 3".to_string()),
            ..Default::default()
        });
        Arc::new(m)
    }

    fn clock() -> Clock {
        Clock { now: Timestamp::from_second(1_800_000_100).unwrap(), ready_timeout: Duration::from_secs(60) }
    }

    fn names(v: &[Arc<EnvInstance>]) -> Vec<&str> {
        v.iter().map(|m| m.metadata.name.as_deref().unwrap_or_default()).collect()
    }

    #[test]
    fn the_census_sorts_by_state_and_revision_newest_first_with_the_reasons() {
        let mut going = (*member(9, "a", Phase::Running, true, "")).clone();
        going.metadata.deletion_timestamp = Some(Time(Timestamp::from_second(1_800_000_050).unwrap()));
        let members = [
            member(50, "a", Phase::Running, true, ""),
            member(60, "a", Phase::Running, true, ""),
            member(70, "a", Phase::Creating, false, ""),
            member(10, "a", Phase::Running, false, "GET /health: connection refused"),
            member(20, "a", Phase::Failed, false, ""),
            member(80, "b", Phase::Running, true, ""),
            member(5, "b", Phase::Pending, false, ""),
            Arc::new(going),
        ];
        let c = Census::of(&members, Some(&spec("a")), clock(), "member");
        assert_eq!(names(&c.ready), ["m-60", "m-50"]);
        assert_eq!(names(&c.starting), ["m-70"]);
        assert_eq!(names(&c.old_ready), ["m-80"]);
        assert_eq!(names(&c.old_starting), ["m-5"], "an old member is not held to the ready timeout");
        let failed: Vec<_> = c.failed.iter().map(|f| (f.member.metadata.name.as_deref(), f.reason.as_str())).collect();
        assert_eq!(
            failed,
            [
                (
                    Some("m-10"),
                    "member m-10 not ready 90s after it was made (ready timeout 60s): GET /health: connection refused"
                ),
                (Some("m-20"), "member m-20: exited with code 3"),
            ]
        );
        // Without a template every member is current.
        let c = Census::of(&members, None, clock(), "member");
        assert_eq!((c.ready.len(), c.old_ready.len(), c.old_starting.len()), (3, 0, 0));
    }

    #[test]
    fn trimming_takes_the_newest_and_the_unready_first_and_failures_count_as_asked() {
        let members = [
            member(1, "a", Phase::Running, true, ""),
            member(2, "a", Phase::Running, true, ""),
            member(3, "a", Phase::Pending, false, ""),
            member(4, "b", Phase::Failed, false, ""),
            member(5, "a", Phase::Failed, false, ""),
        ];
        let patient = Clock { ready_timeout: Duration::from_secs(300), ..clock() };
        let mut c = Census::of(&members, Some(&spec("a")), patient, "member");
        assert!(c.trim(3).is_empty());
        assert_eq!(names(&c.trim(1)), ["m-3", "m-2"]);
        assert_eq!(names(&c.ready), ["m-1"]);
        let mut all = c.clone();
        let (gone, n, last) = c.take_failed(|f| f.current);
        assert_eq!((names(&gone), n, last.as_deref()), (vec!["m-4", "m-5"], 1, Some("member m-5: exited with code 3")));
        assert!(c.failed.is_empty());
        assert_eq!(all.take_failed(|_| true).1, 2);
        let mut c = Census::of(&members, Some(&spec("a")), patient, "member");
        assert_eq!(c.take_all().len(), 5);
        assert_eq!(c.current() + c.failed.len(), 0);
    }

    #[test]
    fn counts_errors_and_the_backoff() {
        assert_eq!((to_make(5, 2, 10), to_make(5, 2, 1), to_make(1, 3, 10)), (3, 1, 0));
        let (fail, gone) = (Some("x failed".to_string()), Some("gone".to_string()));
        assert_eq!(last_error(fail.clone(), gone.clone(), true, None), fail);
        assert_eq!(last_error(None, gone.clone(), true, None), gone);
        assert_eq!(last_error(None, None, true, fail.clone()), None, "cleared once healthy");
        assert_eq!(last_error(None, None, false, fail.clone()), fail, "kept until then");
        let b: Vec<_> = [1, 2, 3, 7, 50].iter().map(|n| failure_backoff(*n).as_secs()).collect();
        assert_eq!(b, [1, 2, 4, 60, 60]);

        let (backoffs, t0) = (Backoffs::default(), Instant::now());
        assert!(!backoffs.look("o", t0).failing);
        assert_eq!(backoffs.record("o", backoffs.look("o", t0), 2, false, t0), Some(Duration::from_secs(2)));
        let look = backoffs.look("o", t0 + Duration::from_millis(500));
        assert_eq!((look.failing, look.waiting), (true, Some(Duration::from_millis(1500))));
        let look = backoffs.look("o", t0 + Duration::from_secs(3));
        assert_eq!((look.failing, look.waiting, look.failures), (true, None, 2), "ran out, not yet healthy");
        assert_eq!(backoffs.record("o", look, 1, false, t0), Some(Duration::from_secs(4)), "three in a row");
        assert_eq!(backoffs.record("o", look, 0, false, t0), None);
        assert!(backoffs.look("o", t0).failing, "no failure is not yet healthy");
        backoffs.record("o", look, 0, true, t0);
        assert!(!backoffs.look("o", t0).failing);
        assert_eq!(requeue(Look::default(), true), Action::requeue(Duration::from_secs(10)));
        assert_eq!(requeue(Look::default(), false), Action::requeue(Duration::from_millis(500)));
    }

    #[tokio::test]
    async fn creates_get_fresh_ids_removals_lose_to_a_change_and_the_sweep_takes_orphans() {
        let store = MemoryStore::<EnvInstance>::new();
        let members = Members::new(store.clone(), KIN);
        let mut owner = ObjectMeta { name: Some("o".into()), namespace: Some("default".into()), ..Default::default() };
        let birth = Birth { owner: &owner, prefix: "web", model: Some(&spec("a")) };
        let plan = Plan {
            create: 3,
            remove: vec![],
            status: EnvServiceStatus::default(),
            new_failures: 0,
            finished: false,
            healthy: true,
            settled: false,
        };
        members.carry_out("default/o", Look::default(), &plan, birth, Instant::now()).await.unwrap();
        let made = members.of(&owner);
        assert_eq!(made.len(), 3);
        assert!(
            made.iter().all(|m| m.metadata.name.as_deref().is_some_and(|n| n.starts_with("web-") && n.len() == 10))
        );
        assert_eq!(made.iter().map(|m| m.metadata.name.clone()).collect::<std::collections::HashSet<_>>().len(), 3);

        // A member changed since the plan saw it is left alone; the others go.
        let mut claimed = (*made[0]).clone();
        claimed.metadata.labels = None;
        store.replace(&claimed).await.unwrap();
        members.remove(&made[..2]).await.unwrap();
        assert!(!store.get(&key_of(made[0].as_ref())).unwrap().is_deleting(), "changed meanwhile: kept");
        assert!(store.get(&key_of(made[1].as_ref())).unwrap().is_deleting());

        // The third one's owner is not in the owners' store: the sweep removes it.
        let owners = MemoryStore::<aenv_core::EnvService>::new();
        members.sweep(owners.as_ref()).await.unwrap();
        assert!(store.get(&key_of(made[2].as_ref())).unwrap().is_deleting());
        owner.name = Some("p".into());
        assert!(members.of(&owner).is_empty());
    }
}
