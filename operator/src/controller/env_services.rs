//! The service controller: keeps each `EnvService` at its replicas, on the shared member-set planner
//! ([`super::members`]: classification, backoff, compare-and-swap removals, creates, sweep, loop). Its replicas are
//! `EnvInstance` objects labelled `aenv.io/service=NAME`. What is the service's own is its policy, [`plan`], which
//! decides without I/O, and the native path:
//!
//! - Rolling replacement: a replica whose spec is not what the service asks for now (a new image, environment, or
//!   template) is of an old revision. New replicas are made at once; an old replica goes only once a new one is
//!   ready in its place, so the service keeps as many ready replicas as it had.
//! - Deletion: the replicas go first, then (with `deleteStorage`) the volume, then the service.
//! - An engine that runs services natively (Kubernetes) gets the service itself instead of replicas.
//! - Everything is in the store: after a kill -9 the next look carries on from what the store and the replicas
//!   say.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use aenv_core::{
    Engine, EnvInstance, EnvInstanceSpec, EnvService, EnvServiceStatus, Environment, NativeServices, OwnedKind,
    OwnedObject, Phase, ServicePhase,
    envservice::{DELETE_STORAGE_ANNOTATION, SERVICE_LABEL, on_service_network, replica_spec},
};
use jiff::Timestamp;
use kube::runtime::{controller::Action, reflector::ObjectRef};
use tracing::{Instrument, info, info_span, warn};

pub use super::members::Clock;
use super::members::{self, Birth, Census, Kin, Members, Owner};
use crate::{
    Error,
    store::{ObjectStore, key, key_of},
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
    members: Members,
}

/// How a service's replicas are tied to it.
const KIN: Kin =
    Kin { label: SERVICE_LABEL, noun: "replica", plural: "replicas", owner: "service", owner_of: EnvInstance::service };

/// What to do with one service now.
pub type Plan = members::Plan<EnvServiceStatus>;

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
    let mut census = Census::of(members, model, clock, KIN.noun);
    let had_old = !deleting
        && (!census.old_ready.is_empty()
            || !census.old_starting.is_empty()
            || census.failed.iter().any(|f| !f.current));
    let mut remove = if deleting { census.take_all() } else { Vec::new() };
    // Failed replicas of any revision count; an old replica that does not serve yet serves nothing: it goes at once.
    let (failed, new_failures, failure) = census.take_failed(|_| true);
    remove.extend(failed);
    remove.append(&mut census.old_starting);
    remove.extend(census.trim(target));
    let current = census.current();
    let create = if model.is_some() && !deleting { members::to_make(target, current, room) } else { 0 };
    // Old replicas stay while the new ones are not ready: as many as the ready new ones fall short of the target.
    let keep_old = target.saturating_sub(census.ready.len()).min(census.old_ready.len());
    remove.extend(census.old_ready.drain(keep_old..));
    let available = (census.ready.len() + census.old_ready.len()) as u32;
    let fulfilled = available as usize >= target;
    let phase = if had_old {
        ServicePhase::Updating
    } else if fulfilled && !deleting {
        ServicePhase::Running
    } else if failing || new_failures > 0 {
        ServicePhase::Failed
    } else {
        ServicePhase::Pending
    };
    let missing = (model.is_none() && !deleting).then(|| members::template_missing(&svc.spec.env_name, KIN.owner));
    let status = EnvServiceStatus {
        phase,
        replicas: (current + census.old_ready.len()) as u32,
        available_replicas: available,
        updated_replicas: current as u32,
        // Old replicas serving meanwhile do not make a rolling update healthy: a failure of the new revision
        // stays in the message until the update is done.
        last_error: members::last_error(failure, missing, fulfilled && !had_old, previous.last_error.clone()),
    };
    let finished = deleting && members.is_empty();
    let healthy = status.phase == ServicePhase::Running;
    let settled = healthy && create == 0 && remove.is_empty();
    Plan { create, remove, status, new_failures, finished, healthy, settled }
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
        let members = Members::new(instances.clone(), KIN);
        Arc::new(ServiceLoop { services, instances, templates, engine, max_instances, ready_timeout, members })
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
    async fn look(&self, svc: &EnvService, now: Instant) -> Result<Action, Error> {
        let svc_key = key_of(svc);
        self.services.hold(svc).await?;
        if let Some(native) = self.engine.native_services() {
            return self.reconcile_native(svc, native).await;
        }
        let model = self.model(svc);
        let look = self.members.backoffs.look(&svc_key, now);
        let room = if look.waiting.is_some() { 0 } else { self.room() };
        let ready_timeout =
            svc.spec.ready_timeout_seconds.map_or(self.ready_timeout, |s| Duration::from_secs(u64::from(s)));
        let clock = Clock { now: Timestamp::now(), ready_timeout };
        let plan = plan(svc, &self.members.of(&svc.metadata), model.as_ref(), room, look.failing, clock);
        let prefix = svc.metadata.name.clone().unwrap_or_default();
        let birth = Birth { owner: &svc.metadata, prefix: &prefix, model: model.as_ref() };
        self.members.carry_out(&svc_key, look, &plan, birth, now).await?;
        if plan.finished {
            self.remove_storage(svc).await?;
            self.services.purge(&svc_key).await?;
            info!("service deleted");
            return Ok(Action::await_change());
        }
        if svc.status.as_ref() != Some(&plan.status) {
            let mut updated = svc.clone();
            updated.status = Some(plan.status.clone());
            self.services.write_status(&updated).await?;
        }
        Ok(members::requeue(look, plan.settled))
    }

    /// Removes the volume of a service deleted with its storage.
    async fn remove_storage(&self, svc: &EnvService) -> Result<(), Error> {
        let with_storage = svc.metadata.annotations.as_ref().and_then(|a| a.get(DELETE_STORAGE_ANNOTATION));
        if let (Some(_), Some(volume)) = (with_storage, svc.spec.volume()) {
            let object = OwnedObject {
                namespace: svc.metadata.namespace.clone().unwrap_or_default(),
                instance: svc.metadata.name.clone().unwrap_or_default(),
                kind: OwnedKind::ServiceVolume,
                id: volume.name.clone(),
                phase: Phase::Terminated,
                created: None,
            };
            self.engine.delete_owned(&object).await.map_err(Error::Engine)?;
            info!(volume = %volume.name, "service storage removed (if this operator made it)");
        }
        Ok(())
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
                last_error: Some(members::template_missing(&svc.spec.env_name, KIN.owner)),
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
}

impl Owner for ServiceLoop {
    type Kind = EnvService;
    const CONCURRENCY: u16 = 2;

    fn owners(&self) -> &dyn ObjectStore<EnvService> {
        self.services.as_ref()
    }

    fn members(&self) -> &Members {
        &self.members
    }

    /// The service a replica belongs to.
    fn woken_by(i: &EnvInstance) -> Option<ObjectRef<EnvService>> {
        Some(ObjectRef::new(i.service()?).within(i.namespace()))
    }

    async fn reconcile(&self, svc: Arc<EnvService>, now: Instant) -> Result<Action, Error> {
        let span = info_span!("service", name = %svc.metadata.name.as_deref().unwrap_or_default());
        let Some(svc) = self.services.get(&key_of(svc.as_ref())) else { return Ok(Action::await_change()) };
        self.look(&svc, now).instrument(span).await
    }
}

#[cfg(test)]
mod tests {
    use aenv_core::{Condition, EnvInstanceStatus, EnvServiceSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::{
        controller::fake::{Call, FakeEngine},
        store::MemoryStore,
    };

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
    fn an_update_whose_new_replicas_fail_keeps_the_reason_while_the_old_ones_serve() {
        let mut s = svc(1);
        let why = "replica web-3: image \"aenv-test/none:1\" is not on the Docker host".to_string();
        s.status = Some(EnvServiceStatus { last_error: Some(why.clone()), ..Default::default() });
        // The old revision's replica serves; the new one failed and was removed at the previous look.
        let members = [replica(1, model("a"), Phase::Running, true)];
        let p = plan(&s, &members, Some(&model("b")), u32::MAX, true, clock());
        assert_eq!(p.status.phase, ServicePhase::Updating);
        assert_eq!(p.status.last_error.as_deref(), Some(why.as_str()), "the reason stays while the update is stuck");
        // Once the new revision serves, it is cleared.
        let members = [replica(2, model("b"), Phase::Running, true)];
        let p = plan(&s, &members, Some(&model("b")), u32::MAX, false, clock());
        assert_eq!((p.status.phase, p.status.last_error), (ServicePhase::Running, None));
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

    /// The service controller over the in-memory stores and the recording engine: no daemon.
    #[tokio::test]
    async fn looks_scale_up_settle_and_a_deleted_service_removes_its_storage_last() {
        let (services, instances, templates) =
            (MemoryStore::new(), MemoryStore::<EnvInstance>::new(), MemoryStore::new());
        let engine = FakeEngine::new();
        let ctl = ServiceLoop::new(
            services.clone(),
            instances.clone(),
            templates,
            engine.clone(),
            None,
            Duration::from_secs(300),
        );
        let mut web = svc(2);
        web.spec.template = Some(Box::new(model("a")));
        web.spec.pvc_name = Some("data".into());
        web.metadata.annotations = Some([(DELETE_STORAGE_ANNOTATION.to_string(), "true".to_string())].into());
        let web = services.create(web, Timestamp::now()).await.unwrap();
        let t0 = Instant::now();
        assert_eq!(ctl.reconcile(web.clone(), t0).await.unwrap(), Action::requeue(Duration::from_millis(500)));
        let made = instances.list();
        assert_eq!(made.len(), 2);
        assert!(
            made.iter().all(|m| m.service() == Some("web") && m.metadata.name.as_deref().unwrap().starts_with("web-"))
        );
        for m in &made {
            let mut ready = (**m).clone();
            ready.status = replica(1, model("a"), Phase::Running, true).status.clone();
            instances.write_status(&ready).await.unwrap();
        }
        assert_eq!(ctl.reconcile(web.clone(), t0).await.unwrap(), Action::requeue(Duration::from_secs(10)));
        let status = services.get("default/web").and_then(|s| s.status.clone()).unwrap();
        assert_eq!((status.phase, status.available_replicas), (ServicePhase::Running, 2));

        services.request_delete("default/web", Timestamp::now()).await.unwrap();
        ctl.reconcile(web.clone(), t0).await.unwrap();
        assert!(instances.list().iter().all(|i| i.is_deleting()));
        assert!(engine.calls().is_empty(), "the storage stays while replicas are there");
        for m in &made {
            instances.purge(&key_of(m.as_ref())).await.unwrap();
        }
        assert_eq!(ctl.reconcile(web.clone(), t0).await.unwrap(), Action::await_change());
        let volume = web.spec.volume().unwrap().name;
        assert_eq!(engine.calls(), [Call::DeleteOwned(volume)]);
        assert!(services.get("default/web").is_none());
    }
}
