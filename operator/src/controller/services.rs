//! The service controller: keeps each `EnvService` at its replicas. Like the pool controller it runs beside the
//! instance controller (on the leader only) and starts nothing itself: it writes `EnvInstance` objects labelled
//! `aenv.io/service=NAME`, and the instance controller starts, probes, adopts and removes them like any other.
//! [`plan`] decides without I/O; [`ServiceLoop::reconcile`] carries the plan out.
//!
//! - A replica that fails (its container exits, is removed by hand, cannot start) is removed and replaced, with a
//!   backoff per service (1 s, 2 s, … 60 s) while replicas keep failing.
//! - Rolling replacement: a replica whose spec is not what the service asks for now (a new image, environment, or
//!   template) is of an old revision. New replicas are made at once; an old replica goes only once a new one is
//!   ready in its place, so the service keeps as many ready replicas as it had.
//! - Deletion: the replicas go first, then (with `deleteStorage`) the volume, then the service.
//! - Everything is in the store: after a kill -9 the next look carries on from what the store and the replicas
//!   say.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aenv_core::{
    Engine, EnvInstance, EnvInstanceSpec, EnvService, EnvServiceStatus, Environment, MemberState, NativeServices,
    OwnedKind, OwnedObject, Phase, ServicePhase,
    envservice::{DELETE_STORAGE_ANNOTATION, SERVICE_LABEL, on_service_network, replica_spec},
};
use futures::StreamExt;
use jiff::Timestamp;
use kube::runtime::{
    controller::{Action, Config as ControllerConfig, Controller},
    reflector::ObjectRef,
    watcher,
};
use tracing::{Instrument, debug, info, info_span, warn};

use super::pools::failure_backoff;
use crate::{
    Error,
    store::{ObjectStore, key, key_of, random_suffix},
};

/// What the service controller needs.
pub struct ServiceLoop {
    pub services: Arc<dyn ObjectStore<EnvService>>,
    pub instances: Arc<dyn ObjectStore<EnvInstance>>,
    pub templates: Arc<dyn ObjectStore<Environment>>,
    /// Removes a service's volume when it is deleted with its storage.
    pub engine: Arc<dyn Engine>,
    /// `--max-instances`: replicas count towards it.
    pub max_instances: Option<usize>,
    /// `--service-ready-timeout`: a replica not ready this long after it was made is replaced (a service's
    /// `readyTimeoutSeconds` overrides it).
    pub ready_timeout: Duration,
    backoff: Mutex<HashMap<String, Backoff>>,
}

#[derive(Clone, Copy, Debug)]
struct Backoff {
    failures: u32,
    until: Instant,
}

/// What to do with one service now.
#[derive(Clone, Debug)]
pub struct Plan {
    /// How many replicas of the current revision to make.
    pub create: u32,
    /// Replicas to remove: failed ones, old ones a ready new one replaces, the excess, or all when deleting.
    pub remove: Vec<Arc<EnvInstance>>,
    pub status: EnvServiceStatus,
    /// Replicas that failed since the last look (for the backoff).
    pub new_failures: u32,
    /// Whether the service is being deleted and no replica is left: remove its storage if asked, then it.
    pub finished: bool,
}

fn age(m: &EnvInstance) -> Option<Timestamp> {
    m.metadata.creation_timestamp.as_ref().map(|t| t.0)
}

/// How long ago `m` was made.
fn age_of(m: &EnvInstance, now: Timestamp) -> Duration {
    age(m).map_or(Duration::ZERO, |c| Duration::from_millis((now.as_millisecond() - c.as_millisecond()).max(0) as u64))
}

/// When a service looks: the instant, and how long a replica may take to become ready before it counts as failed.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    pub now: Timestamp,
    pub ready_timeout: Duration,
}

/// Decides what a service needs. `members` are its replicas (deleting ones included); `model` what a replica of
/// the current revision runs (`None`: the template is gone, and the replicas there are kept as they are); `room`
/// how many replicas may be made now; `failing` whether replicas failed lately (the backoff runs); a replica of
/// the current revision not ready `clock.ready_timeout` after it was made counts as failed.
pub fn plan(
    svc: &EnvService,
    members: &[Arc<EnvInstance>],
    model: Option<&EnvInstanceSpec>,
    room: u32,
    failing: bool,
    clock: Clock,
) -> Plan {
    let previous = svc.status.clone().unwrap_or_default();
    let deleting = svc.metadata.deletion_timestamp.is_some();
    let target = if deleting { 0 } else { svc.spec.replicas as usize };
    let mut remove = Vec::new();
    let (mut cur_ready, mut cur_starting, mut old_ready, mut new_failures) = (Vec::new(), Vec::new(), Vec::new(), 0);
    let mut last_error = None;
    let mut had_old = false;
    for m in members.iter().filter(|m| !m.is_deleting()) {
        let current = model.is_none_or(|model| m.spec == *model);
        had_old |= !current;
        match m.member_state() {
            _ if deleting => remove.push(m.clone()),
            MemberState::Failed => {
                new_failures += 1;
                let id = m.metadata.name.as_deref().unwrap_or_default();
                last_error = Some(
                    m.status
                        .as_ref()
                        .and_then(|s| s.message.clone())
                        .map(|msg| format!("replica {id}: {msg}"))
                        .unwrap_or_else(|| format!("replica {id} {}", m.phase())),
                );
                remove.push(m.clone());
            }
            MemberState::Starting if current && !deleting && age_of(m, clock.now) > clock.ready_timeout => {
                new_failures += 1;
                let id = m.metadata.name.as_deref().unwrap_or_default();
                let why = m
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
                    .map(|c| c.message.clone())
                    .filter(|m| !m.is_empty())
                    .unwrap_or_else(|| format!("it is {}", m.phase()));
                last_error = Some(format!(
                    "replica {id} not ready {}s after it was made (ready timeout {}s): {why}",
                    age_of(m, clock.now).as_secs(),
                    clock.ready_timeout.as_secs()
                ));
                remove.push(m.clone());
            }
            MemberState::Ready if current => cur_ready.push(m.clone()),
            MemberState::Starting if current => cur_starting.push(m.clone()),
            MemberState::Ready => old_ready.push(m.clone()),
            // An old replica that does not serve yet serves nothing: it goes at once.
            MemberState::Starting => remove.push(m.clone()),
        }
    }
    // The newest first, the not-ready before the ready, when there are more than asked for.
    let newest_first = |a: &Arc<EnvInstance>, b: &Arc<EnvInstance>| age(b).cmp(&age(a));
    cur_starting.sort_by(newest_first);
    cur_ready.sort_by(newest_first);
    while cur_starting.len() + cur_ready.len() > target {
        let next = if cur_starting.is_empty() { cur_ready.remove(0) } else { cur_starting.remove(0) };
        remove.push(next);
    }
    let current = cur_starting.len() + cur_ready.len();
    let create = if model.is_some() && !deleting { (target - current).min(room as usize) as u32 } else { 0 };
    // Old replicas stay while the new ones are not ready: as many as the ready new ones fall short of the target.
    old_ready.sort_by(newest_first);
    let keep_old = target.saturating_sub(cur_ready.len()).min(old_ready.len());
    remove.extend(old_ready.drain(keep_old..));
    let available = (cur_ready.len() + old_ready.len()) as u32;
    let fulfilled = available as usize >= target;
    let phase = if had_old && !deleting {
        ServicePhase::Updating
    } else if fulfilled && !deleting {
        ServicePhase::Running
    } else if failing || new_failures > 0 {
        ServicePhase::Failed
    } else {
        ServicePhase::Pending
    };
    let last_error = match (last_error, model) {
        (Some(e), _) => Some(e),
        (None, None) if !deleting => {
            Some(format!("environment \"{}\" not found: register it again, or delete the service", svc.spec.env_name))
        }
        (None, _) if fulfilled => None,
        (None, _) => previous.last_error.clone(),
    };
    let status = EnvServiceStatus {
        phase,
        replicas: (current + old_ready.len()) as u32,
        available_replicas: available,
        updated_replicas: current as u32,
        last_error,
    };
    let finished = deleting && members.is_empty();
    Plan { create, remove, status, new_failures, finished }
}

impl ServiceLoop {
    pub fn new(
        services: Arc<dyn ObjectStore<EnvService>>,
        instances: Arc<dyn ObjectStore<EnvInstance>>,
        templates: Arc<dyn ObjectStore<Environment>>,
        engine: Arc<dyn Engine>,
        max_instances: Option<usize>,
        ready_timeout: Duration,
    ) -> Arc<Self> {
        Arc::new(ServiceLoop {
            services,
            instances,
            templates,
            engine,
            max_instances,
            ready_timeout,
            backoff: Mutex::default(),
        })
    }

    fn backoff(&self) -> std::sync::MutexGuard<'_, HashMap<String, Backoff>> {
        self.backoff.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many replicas may be made now: none over `--max-instances`.
    fn room(&self) -> u32 {
        let Some(max) = self.max_instances else { return u32::MAX };
        let live = self.instances.list_where(&|i: &EnvInstance| !i.is_deleting()).len();
        u32::try_from(max.saturating_sub(live)).unwrap_or(u32::MAX)
    }

    /// What a replica of `svc` runs now (on the service's network, answering there to its name); `None` when its
    /// template is gone.
    pub fn model(&self, svc: &EnvService) -> Option<EnvInstanceSpec> {
        let namespace = svc.metadata.namespace.clone().unwrap_or_default();
        let (n, v) = svc.spec.template()?;
        let name = svc.metadata.name.as_deref().unwrap_or_default();
        if let Some(inline) = &svc.spec.template {
            return Some(on_service_network(replica_spec(inline, n, v, &svc.spec), name));
        }
        let t = self.templates.get(&key(&namespace, &Environment::object_name(n, v)))?;
        (t.spec.name == n && t.spec.version == v && t.metadata.deletion_timestamp.is_none())
            .then(|| on_service_network(replica_spec(&t.spec.template, n, v, &svc.spec), name))
    }

    /// One look at a service: plan, remove, create, write the status.
    pub async fn reconcile(&self, svc: &EnvService, now: Instant) -> Result<Action, Error> {
        let svc_key = key_of(svc);
        let Some(svc) = self.services.get(&svc_key) else { return Ok(Action::await_change()) };
        self.services.hold(&svc).await?;
        if let Some(native) = self.engine.native_services() {
            return self.reconcile_native(&svc, native).await;
        }
        let namespace = svc.metadata.namespace.clone().unwrap_or_default();
        let name = svc.metadata.name.clone().unwrap_or_default();
        let model = self.model(&svc);
        let members = self
            .instances
            .list_where(&|i: &EnvInstance| i.service() == Some(name.as_str()) && i.namespace() == namespace);
        let backoff = self.backoff().get(&svc_key).copied();
        let waiting = backoff.filter(|b| b.until > now).map(|b| b.until - now);
        let room = if waiting.is_some() { 0 } else { self.room() };
        let ready_timeout =
            svc.spec.ready_timeout_seconds.map_or(self.ready_timeout, |s| Duration::from_secs(u64::from(s)));
        let clock = Clock { now: Timestamp::now(), ready_timeout };
        let plan = plan(&svc, &members, model.as_ref(), room, backoff.is_some(), clock);

        if plan.new_failures > 0 {
            let failures = backoff.map_or(0, |b| b.failures) + plan.new_failures;
            let delay = failure_backoff(failures);
            warn!(
                failures,
                ?delay,
                error = plan.status.last_error.as_deref().unwrap_or(""),
                "replicas failed; replacing them after a backoff"
            );
            self.backoff().insert(svc_key.clone(), Backoff { failures, until: now + delay });
        } else if plan.status.phase == ServicePhase::Running {
            self.backoff().remove(&svc_key);
        }
        for m in &plan.remove {
            let version = m.metadata.resource_version.clone().unwrap_or_default();
            match self.instances.request_delete_at(&key_of(m.as_ref()), &version, Timestamp::now()).await {
                Ok(_) => debug!(replica = ?m.metadata.name, "replica removed"),
                Err(Error::Conflict(_)) => debug!(replica = ?m.metadata.name, "replica changed meanwhile; next look"),
                Err(e) => return Err(e),
            }
        }
        if plan.finished {
            let with_storage = svc.metadata.annotations.as_ref().and_then(|a| a.get(DELETE_STORAGE_ANNOTATION));
            if let (Some(_), Some(volume)) = (with_storage, svc.spec.volume()) {
                let object = OwnedObject {
                    namespace: namespace.clone(),
                    instance: name.clone(),
                    kind: OwnedKind::Volume,
                    id: volume.name.clone(),
                    phase: Phase::Terminated,
                    created: None,
                };
                self.engine.delete_owned(&object).await.map_err(Error::Engine)?;
                info!(volume = %volume.name, "service storage removed");
            }
            self.services.purge(&svc_key).await?;
            self.backoff().remove(&svc_key);
            info!("service deleted");
            return Ok(Action::await_change());
        }
        if let Some(model) = model.as_ref().filter(|_| plan.create > 0) {
            for _ in 0..plan.create {
                self.create_replica(&svc, model).await?;
            }
            debug!(created = plan.create, "service scaling up");
        }
        if svc.status.as_ref() != Some(&plan.status) {
            let mut updated = (*svc).clone();
            updated.status = Some(plan.status.clone());
            self.services.write_status(&updated).await?;
        }
        let settled = plan.status.phase == ServicePhase::Running && plan.create == 0 && plan.remove.is_empty();
        let again = match waiting {
            Some(w) => w,
            None if !settled => Duration::from_millis(500),
            None => Duration::from_secs(10),
        };
        Ok(Action::requeue(again))
    }

    /// One look at a service the engine runs natively (Kubernetes: a Deployment, a Service, a claim): the engine
    /// makes its objects match and reports their state; deletion removes them (the claim only when asked), then
    /// the service. A refusal that no retry cures (a 422, a name taken by someone else) is the service's
    /// `Failed` phase with the reason; a backend that does not answer is retried.
    async fn reconcile_native(&self, svc: &EnvService, native: &dyn NativeServices) -> Result<Action, Error> {
        let svc_key = key_of(svc);
        if svc.metadata.deletion_timestamp.is_some() {
            let with_storage =
                svc.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(DELETE_STORAGE_ANNOTATION));
            native.delete_service(svc, with_storage).await.map_err(Error::Engine)?;
            self.services.purge(&svc_key).await?;
            info!(with_storage, "service deleted");
            return Ok(Action::await_change());
        }
        let previous = svc.status.clone().unwrap_or_default();
        let status = match self.model(svc) {
            None => EnvServiceStatus {
                last_error: Some(format!(
                    "environment \"{}\" not found: register it again, or delete the service",
                    svc.spec.env_name
                )),
                ..previous.clone()
            },
            Some(model) => match native.apply_service(svc, &model).await {
                Ok(status) => status,
                Err(e) if e.is_retryable() => return Err(Error::Engine(e)),
                Err(e) => {
                    warn!(error = %e, "the engine refuses the service");
                    EnvServiceStatus {
                        phase: ServicePhase::Failed,
                        last_error: Some(e.to_string()),
                        ..previous.clone()
                    }
                }
            },
        };
        if svc.status.as_ref() != Some(&status) {
            let mut updated = svc.clone();
            updated.status = Some(status.clone());
            self.services.write_status(&updated).await?;
        }
        // The engine's objects send no events here: look again soon while the service is not settled.
        Ok(Action::requeue(if status.phase == ServicePhase::Running {
            Duration::from_secs(10)
        } else {
            Duration::from_secs(1)
        }))
    }

    async fn create_replica(&self, svc: &EnvService, model: &EnvInstanceSpec) -> Result<(), Error> {
        let name = svc.metadata.name.clone().unwrap_or_default();
        for _ in 0..8 {
            let id = format!("{name}-{}", random_suffix(6));
            let mut replica = EnvInstance::new(&id, model.clone());
            replica.metadata.namespace = svc.metadata.namespace.clone();
            replica.metadata.labels = Some([(SERVICE_LABEL.to_string(), name.clone())].into());
            match self.instances.create(replica, Timestamp::now()).await {
                Ok(_) => return Ok(()),
                Err(Error::AlreadyExists(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Removes replicas whose service is gone (deleted around the API, or a store restored without it).
    async fn sweep(&self) -> Result<(), Error> {
        for m in self.instances.list_where(&|i: &EnvInstance| i.service().is_some() && !i.is_deleting()) {
            if self.services.get(&key(m.namespace(), m.service().unwrap_or_default())).is_some() {
                continue;
            }
            let version = m.metadata.resource_version.clone().unwrap_or_default();
            match self.instances.request_delete_at(&key_of(m.as_ref()), &version, Timestamp::now()).await {
                Ok(_) => info!(replica = ?m.metadata.name, "removed a replica whose service is gone"),
                Err(Error::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// The service a replica belongs to: what a change to it should wake.
fn service_of(i: &EnvInstance) -> Option<ObjectRef<EnvService>> {
    Some(ObjectRef::new(i.service()?).within(i.namespace()))
}

/// Runs the service controller until `shutdown` resolves: services wake on their own changes, on changes of their
/// replicas, and on their requeues; a sweep every `sweep_every` removes replicas of services that are gone.
pub async fn run(
    services: Arc<ServiceLoop>,
    sweep_every: Duration,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let (reader, objects) = services.services.controller_feed();
    let replicas = super::owners_of(services.instances.as_ref(), service_of);
    let sweeper = {
        let services = services.clone();
        super::spawn_sweeper(sweep_every, "service", move || {
            let services = services.clone();
            async move { services.sweep().await }
        })
    };
    Controller::for_stream(objects.map(Ok::<_, watcher::Error>), reader)
        .with_config(ControllerConfig::default().concurrency(2))
        .reconcile_on(replicas)
        .graceful_shutdown_on(shutdown)
        .run(
            |svc: Arc<EnvService>, services: Arc<ServiceLoop>| async move {
                let span = info_span!("service", name = %svc.metadata.name.as_deref().unwrap_or_default());
                services.reconcile(&svc, Instant::now()).instrument(span).await
            },
            |svc: Arc<EnvService>, err: &Error, _| {
                warn!(service = ?svc.metadata.name, error = %err, "service reconcile failed; retrying");
                Action::requeue(Duration::from_secs(1))
            },
            services,
        )
        .for_each(|_| futures::future::ready(()))
        .await;
    sweeper.abort();
}

#[cfg(test)]
mod tests {
    use aenv_core::{Condition, EnvInstanceStatus, EnvServiceSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;

    fn svc(replicas: u32) -> EnvService {
        let mut s = EnvService::new(
            "web",
            EnvServiceSpec { env_name: "mini@1.0.0".into(), replicas, port: 8081, ..Default::default() },
        );
        s.metadata.namespace = Some("default".into());
        s
    }

    fn model(image: &str) -> EnvInstanceSpec {
        EnvInstanceSpec { env_name: "mini".into(), image: Some(image.into()), ..Default::default() }
    }

    fn replica(n: i64, spec: EnvInstanceSpec, phase: Phase, ready: bool) -> Arc<EnvInstance> {
        let mut i = EnvInstance::new(&format!("web-{n}"), spec);
        i.metadata.creation_timestamp = Some(Time(Timestamp::from_second(1_800_000_000 + n).unwrap()));
        let conditions = if ready {
            vec![Condition {
                type_: "Ready".into(),
                status: "True".into(),
                reason: "Ready".into(),
                message: String::new(),
            }]
        } else {
            vec![]
        };
        i.status = Some(EnvInstanceStatus {
            phase,
            conditions,
            message: Some("exited with code 1".into()),
            ..Default::default()
        });
        Arc::new(i)
    }

    fn clock() -> Clock {
        Clock { now: Timestamp::from_second(1_800_000_100).unwrap(), ready_timeout: Duration::from_secs(300) }
    }

    #[test]
    fn a_replica_never_ready_is_replaced_after_the_ready_timeout_with_the_reason() {
        let mut slow = (*replica(2, model("a"), Phase::Running, false)).clone();
        if let Some(status) = slow.status.as_mut() {
            status.conditions = vec![Condition {
                type_: "Ready".into(),
                status: "False".into(),
                reason: "ProbeFailed".into(),
                message: "GET /health: connection refused".into(),
            }];
        }
        let members = [replica(1, model("a"), Phase::Running, true), Arc::new(slow)];
        // Made 98 s before `now`: within a 300 s timeout it keeps starting.
        let p = plan(&svc(2), &members, Some(&model("a")), u32::MAX, false, clock());
        assert_eq!((p.create, p.remove.len(), p.new_failures), (0, 0, 0));
        // With a 60 s timeout it is failed, removed and replaced, and lastError says why.
        let short = Clock { ready_timeout: Duration::from_secs(60), ..clock() };
        let p = plan(&svc(2), &members, Some(&model("a")), u32::MAX, false, short);
        assert_eq!((p.create, p.remove.len(), p.new_failures), (1, 1, 1));
        let why = p.status.last_error.unwrap();
        assert!(why.contains("web-2 not ready 98s") && why.contains("connection refused"), "{why}");
        // A ready replica never times out.
        let p = plan(&svc(2), &members[..1], Some(&model("a")), u32::MAX, false, short);
        assert_eq!((p.remove.len(), p.new_failures), (0, 0));
    }

    #[test]
    fn fills_to_replicas_then_runs() {
        let p = plan(&svc(2), &[], Some(&model("a")), u32::MAX, false, clock());
        assert_eq!((p.create, p.status.phase), (2, ServicePhase::Pending));
        let members = [replica(1, model("a"), Phase::Running, true), replica(2, model("a"), Phase::Running, true)];
        let p = plan(&svc(2), &members, Some(&model("a")), u32::MAX, false, clock());
        assert_eq!(
            (p.create, p.remove.len(), p.status.phase, p.status.available_replicas),
            (0, 0, ServicePhase::Running, 2)
        );
    }

    #[test]
    fn a_failed_replica_is_replaced_with_its_reason() {
        let members = [replica(1, model("a"), Phase::Running, true), replica(2, model("a"), Phase::Terminated, false)];
        let p = plan(&svc(2), &members, Some(&model("a")), u32::MAX, false, clock());
        assert_eq!((p.create, p.remove.len(), p.new_failures), (1, 1, 1));
        assert!(p.status.last_error.as_deref().unwrap().contains("web-2"), "{:?}", p.status.last_error);
        assert_eq!(p.status.phase, ServicePhase::Failed, "fewer available than asked, replicas failing");
        let none = plan(&svc(2), &members, Some(&model("a")), 0, true, clock());
        assert_eq!(none.create, 0, "no room during the backoff");
    }

    #[test]
    fn rolling_keeps_old_replicas_until_new_ones_are_ready() {
        let old = [replica(1, model("a"), Phase::Running, true), replica(2, model("a"), Phase::Running, true)];
        let p = plan(&svc(2), &old, Some(&model("b")), u32::MAX, false, clock());
        assert_eq!(
            (p.create, p.remove.len(), p.status.phase, p.status.available_replicas),
            (2, 0, ServicePhase::Updating, 2)
        );
        // One new replica ready: one old one goes, the other stays.
        let mut members = old.to_vec();
        members.push(replica(3, model("b"), Phase::Running, true));
        members.push(replica(4, model("b"), Phase::Creating, false));
        let p = plan(&svc(2), &members, Some(&model("b")), u32::MAX, false, clock());
        assert_eq!(p.create, 0);
        assert_eq!(p.remove.len(), 1);
        assert_eq!(p.status.available_replicas, 2, "never fewer ready than before");
        // Both new ready: the last old one goes.
        members[3] = replica(4, model("b"), Phase::Running, true);
        let p = plan(&svc(2), &members, Some(&model("b")), u32::MAX, false, clock());
        assert_eq!(p.remove.len(), 2);
        let after: Vec<_> = members[2..].to_vec();
        let p = plan(&svc(2), &after, Some(&model("b")), u32::MAX, false, clock());
        assert_eq!((p.remove.len(), p.status.phase), (0, ServicePhase::Running));
    }

    #[test]
    fn scale_down_removes_the_newest_not_ready_first_and_deletion_removes_all() {
        let members = [
            replica(1, model("a"), Phase::Running, true),
            replica(2, model("a"), Phase::Running, true),
            replica(3, model("a"), Phase::Creating, false),
        ];
        let p = plan(&svc(1), &members, Some(&model("a")), u32::MAX, false, clock());
        let gone: Vec<_> = p.remove.iter().map(|m| m.metadata.name.clone().unwrap()).collect();
        assert_eq!(gone, ["web-3", "web-2"]);
        let mut deleting = svc(2);
        deleting.metadata.deletion_timestamp = Some(Time(Timestamp::from_second(1_900_000_000).unwrap()));
        let p = plan(&deleting, &members, Some(&model("a")), u32::MAX, false, clock());
        assert_eq!((p.remove.len(), p.create, p.finished), (3, 0, false));
        assert!(plan(&deleting, &[], Some(&model("a")), u32::MAX, false, clock()).finished);
        let p = plan(&svc(2), &members, None, u32::MAX, false, clock());
        assert_eq!(p.create, 0, "no template: nothing made");
        assert!(p.status.last_error.unwrap().contains("not found"));
    }
}
