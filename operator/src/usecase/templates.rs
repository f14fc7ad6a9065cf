//! Environment templates (`name@version`, as envhub keeps them) and image warmup: pre-pulling every image a
//! template runs, with progress per image.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use aenv_core::{EnvInstanceSpec, Environment, EnvironmentSpec, PullProgress};
use futures::StreamExt;
use jiff::Timestamp;
use tracing::info;

use super::{Principal, UseCaseError, UseCases};
use crate::Error;

/// Annotation of a template made by a snapshot: the image it owns, removed with it.
pub const SNAPSHOT_IMAGE_ANNOTATION: &str = "aenv.io/snapshot-image";
/// Annotation of a snapshot's template recorded before its image is committed (the record reserves the
/// `name@version`): it cannot be created from until the commit is done and the annotation gone.
pub const SNAPSHOT_PENDING_ANNOTATION: &str = "aenv.io/snapshot-pending";

/// The snapshot image a template owns, if it was made by a snapshot.
pub fn snapshot_image_of(t: &Environment) -> Option<&str> {
    t.metadata.annotations.as_ref().and_then(|a| a.get(SNAPSHOT_IMAGE_ANNOTATION)).map(String::as_str)
}

/// Whether a snapshot's template still waits for its image.
pub fn snapshot_pending(t: &Environment) -> bool {
    t.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(SNAPSHOT_PENDING_ANNOTATION))
}

/// Refuses to start anything from a snapshot's template whose image is still being committed.
pub(super) fn not_pending(t: &Environment) -> Result<(), UseCaseError> {
    if snapshot_pending(t) {
        return Err(UseCaseError::Conflict(format!(
            "environment \"{}@{}\" is a snapshot still being taken; try again in a few seconds",
            t.spec.name, t.spec.version
        )));
    }
    Ok(())
}

/// What a template carries beyond its spec.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TemplateMeta {
    pub description: String,
    pub tags: Vec<String>,
    pub code_url: String,
    /// Other tenants may create instances from it.
    pub shared: bool,
    /// Defaults for the services made from it (`deployConfig.service`).
    pub service: Option<aenv_core::envservice::ServiceDefaults>,
}

/// What a caller may do with a template.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TemplateAccess {
    /// Not even see it (another tenant's, not shared): answered as if it did not exist.
    None,
    /// See it without its environment variables, and create instances from it (shared, or registered with auth
    /// off and so owned by nobody).
    Use,
    /// Everything: its owner, an admin token, anyone when auth is off.
    Own,
}

impl TemplateAccess {
    /// What `caller` may do with `t`.
    pub fn of(t: &Environment, caller: Option<&Principal>) -> Self {
        match caller {
            None => TemplateAccess::Own,
            Some(p) if p.admin || t.spec.owner.as_deref() == Some(p.owner.as_str()) => TemplateAccess::Own,
            Some(_) if t.spec.shared || t.spec.owner.is_none() => TemplateAccess::Use,
            Some(_) => TemplateAccess::None,
        }
    }
}

/// The template as `access` may read it: without its environment variables unless it is the caller's.
fn as_seen(t: Arc<Environment>, access: TemplateAccess) -> Arc<Environment> {
    if access == TemplateAccess::Own || t.spec.template.env.is_empty() {
        return t;
    }
    let mut seen = (*t).clone();
    seen.spec.template.env.clear();
    Arc::new(seen)
}

/// Warmups by `name@version`.
pub(super) type Warmups = Mutex<HashMap<String, Arc<Mutex<WarmupState>>>>;

/// Where a warmup stands: one entry per image, updated as the engine reports.
#[derive(Clone, Debug)]
pub struct WarmupState {
    pub env: String,
    pub started_at: Timestamp,
    pub finished_at: Option<Timestamp>,
    pub done: bool,
    pub images: Vec<PullProgress>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl UseCases {
    /// Registers a template from an inline spec (its name and version name the template); with tokens on, it
    /// belongs to `caller`. Its image may not be a snapshot's (a snapshot is used through its own template).
    pub async fn register_template(
        &self,
        spec: EnvInstanceSpec,
        meta: TemplateMeta,
        caller: Option<&Principal>,
    ) -> Result<Arc<Environment>, UseCaseError> {
        self.engine.refuse_snapshot_images(&spec).map_err(UseCaseError::Refused)?;
        self.record_template(spec, meta, caller, BTreeMap::new()).await
    }

    /// Records template `spec.env_name@spec.env_version` for `caller`, with `annotations` (a snapshot's image).
    pub(super) async fn record_template(
        &self,
        spec: EnvInstanceSpec,
        meta: TemplateMeta,
        caller: Option<&Principal>,
        annotations: BTreeMap<String, String>,
    ) -> Result<Arc<Environment>, UseCaseError> {
        if spec.env_version.is_empty() {
            return Err(UseCaseError::field("version", "field `version` is required for an Environment"));
        }
        self.check_ttl(spec.ttl.as_deref(), "deployConfig.ttl")?;
        self.engine.validate(&spec).map_err(UseCaseError::Refused)?;
        self.engine.admit(&spec).await.map_err(UseCaseError::Refused)?;
        let (name, version) = (spec.env_name.clone(), spec.env_version.clone());
        let mut env = Environment::new(
            &Environment::object_name(&name, &version),
            EnvironmentSpec {
                name: name.clone(),
                version: version.clone(),
                description: meta.description,
                tags: meta.tags,
                code_url: meta.code_url,
                owner: caller.map(|p| p.owner.clone()),
                shared: meta.shared,
                released: false,
                service: meta.service,
                template: EnvInstanceSpec { env_name: String::new(), env_version: String::new(), ..spec },
            },
        );
        env.metadata.namespace = Some(self.namespace.clone());
        if !annotations.is_empty() {
            env.metadata.annotations = Some(annotations);
        }
        match self.stores.templates.create(env, Timestamp::now()).await {
            Ok(stored) => {
                info!(env = %format!("{name}@{version}"), owner = ?caller.map(|p| &p.owner), "environment registered");
                Ok(stored)
            }
            Err(Error::AlreadyExists(_)) => Err(self.taken(&name, &version, caller)),
            Err(source) => Err(UseCaseError::store("the environment could not be recorded", source)),
        }
    }

    /// The refusal of a `name@version` that is taken. It tells a caller only what it may see: the holder of a
    /// template it may read; of one it may not (another tenant's private template or snapshot), nothing but
    /// that the name is taken, as for any name.
    pub(super) fn taken(&self, name: &str, version: &str, caller: Option<&Principal>) -> UseCaseError {
        let held = self.find_template(name, version);
        let access = held.as_deref().map_or(TemplateAccess::None, |t| TemplateAccess::of(t, caller));
        let holder = held.and_then(|t| t.spec.owner.clone()).filter(|o| caller.is_some_and(|p| p.owner != *o));
        UseCaseError::Conflict(match (access, holder) {
            (TemplateAccess::Own, _) | (TemplateAccess::Use, None) => {
                format!("environment \"{name}@{version}\" exists already; delete it first, or register a new version")
            }
            (TemplateAccess::Use, Some(owner)) => format!(
                "environment \"{name}@{version}\" exists already and belongs to owner {owner}; register another name or version"
            ),
            (TemplateAccess::None, _) => {
                format!("environment \"{name}@{version}\" is taken; register another name or version")
            }
        })
    }

    /// The template `name@version` as `caller` may see it (another tenant's shared template without its
    /// environment variables), or a refusal that names it (also when `caller` may not see it at all).
    pub fn template(
        &self,
        name: &str,
        version: &str,
        caller: Option<&Principal>,
    ) -> Result<Arc<Environment>, UseCaseError> {
        let (t, access) = self.usable_template(name, version, caller)?;
        Ok(as_seen(t, access))
    }

    /// The template `name@version` and what `caller` may do with it; not found when `caller` may not see it.
    pub fn usable_template(
        &self,
        name: &str,
        version: &str,
        caller: Option<&Principal>,
    ) -> Result<(Arc<Environment>, TemplateAccess), UseCaseError> {
        self.find_template(name, version)
            .map(|t| {
                let access = TemplateAccess::of(&t, caller);
                (t, access)
            })
            .filter(|(_, access)| *access != TemplateAccess::None)
            .ok_or_else(|| UseCaseError::NotFound(format!("environment \"{name}@{version}\" not found")))
    }

    /// Deletes a template: only its owner or an admin token may (anyone with auth off), and not while a pool
    /// keeps sandboxes of it (delete or re-point the pool first).
    pub async fn delete_template(
        &self,
        name: &str,
        version: &str,
        caller: Option<&Principal>,
    ) -> Result<(), UseCaseError> {
        let (t, access) = self.usable_template(name, version, caller)?;
        if access != TemplateAccess::Own {
            return Err(UseCaseError::Forbidden(format!(
                "environment \"{name}@{version}\" belongs to {}; only its owner or an admin token may delete it",
                t.spec.owner.as_deref().map_or_else(
                    || "no tenant (it was registered without tokens)".to_string(),
                    |o| format!("owner {o}")
                )
            )));
        }
        // Refusals name only what the caller may see: another tenant's pools and instances are counted.
        let pools = self.pools_of(name, version);
        if !pools.is_empty() {
            return Err(UseCaseError::Conflict(
                match pools.iter().find(|p| Self::pool_visible(p, caller)).and_then(|p| p.metadata.name.as_deref()) {
                    Some(pool) => format!(
                        "environment \"{name}@{version}\" is used by pool \"{pool}\": delete the pool first (DELETE /env-pool/{pool})"
                    ),
                    None => format!(
                        "environment \"{name}@{version}\" is used by {} pool(s) of other owners; it can be deleted once they are gone",
                        pools.len()
                    ),
                },
            ));
        }
        // A snapshot's image goes with its template, once no instance runs from it.
        if let Some(image) = snapshot_image_of(&t) {
            let users =
                self.stores.instances.list_where(&|i: &aenv_core::EnvInstance| i.spec.image.as_deref() == Some(image));
            if !users.is_empty() {
                let yours = users.iter().find(|i| Self::visible(i, caller)).and_then(|i| i.metadata.name.as_deref());
                return Err(UseCaseError::Conflict(match yours {
                    Some(user) => format!(
                        "environment \"{name}@{version}\" is a snapshot that {} instance(s) still run from (such as \"{user}\"): delete them first",
                        users.len()
                    ),
                    None => format!(
                        "environment \"{name}@{version}\" is a snapshot that {} instance(s) of other owners still run from; it can be deleted once they are gone",
                        users.len()
                    ),
                }));
            }
        }
        self.discard_template(&t).await
    }

    /// Refuses a change to template `t` unless `access` owns it and it is still open to change (not released, not
    /// a snapshot's); `what` names the change for the message.
    fn changeable(t: &Environment, access: TemplateAccess, what: &str) -> Result<(), UseCaseError> {
        let (name, version) = (&t.spec.name, &t.spec.version);
        if access != TemplateAccess::Own {
            return Err(UseCaseError::Forbidden(format!(
                "environment \"{name}@{version}\" belongs to {}; only its owner or an admin token may {what} it",
                t.spec.owner.as_deref().map_or_else(
                    || "no tenant (it was registered without tokens)".to_string(),
                    |o| format!("owner {o}")
                )
            )));
        }
        if t.spec.released {
            return Err(UseCaseError::Forbidden(format!(
                "environment \"{name}@{version}\" is released and cannot change; register a new version"
            )));
        }
        if snapshot_image_of(t).is_some() || snapshot_pending(t) {
            return Err(UseCaseError::Conflict(format!(
                "environment \"{name}@{version}\" is a snapshot: its image is fixed; take a new snapshot instead"
            )));
        }
        Ok(())
    }

    /// Replaces the spec of template `name@version` (envhub's `PUT /env/{name}/{version}`, which `aenv push`
    /// sends for a version that exists): what instances start from, its description, tags, code URL and service
    /// defaults. Its owner stays, and so does sharing (an update never withdraws it). Refused while a pool keeps
    /// sandboxes of it: they would go on serving the old spec.
    pub async fn update_template(
        &self,
        spec: EnvInstanceSpec,
        meta: TemplateMeta,
        caller: Option<&Principal>,
    ) -> Result<Arc<Environment>, UseCaseError> {
        let (name, version) = (spec.env_name.clone(), spec.env_version.clone());
        let (t, access) = self.usable_template(&name, &version, caller)?;
        Self::changeable(&t, access, "update")?;
        if let Some(pool) = self.pools_of(&name, &version).first() {
            let which = if Self::pool_visible(pool, caller) {
                format!("pool \"{}\"", pool.metadata.name.as_deref().unwrap_or_default())
            } else {
                "a pool of another owner".to_string()
            };
            return Err(UseCaseError::Conflict(format!(
                "environment \"{name}@{version}\" is used by {which}, whose sandboxes would keep the old spec: delete the pool first, or register a new version"
            )));
        }
        self.engine.refuse_snapshot_images(&spec).map_err(UseCaseError::Refused)?;
        self.check_ttl(spec.ttl.as_deref(), "deployConfig.ttl")?;
        self.engine.validate(&spec).map_err(UseCaseError::Refused)?;
        self.engine.admit(&spec).await.map_err(UseCaseError::Refused)?;
        let template = EnvInstanceSpec { env_name: String::new(), env_version: String::new(), ..spec };
        let key = crate::store::key_of(t.as_ref());
        let mut attempts = super::retry::Attempts::new();
        while attempts.next().await {
            let Some(current) = self.stores.templates.get(&key) else { break };
            Self::changeable(&current, TemplateAccess::of(&current, caller), "update")?;
            let mut next = (*current).clone();
            next.spec.template = template.clone();
            next.spec.description = meta.description.clone();
            next.spec.tags = meta.tags.clone();
            next.spec.code_url = meta.code_url.clone();
            next.spec.service = meta.service.clone();
            next.spec.shared |= meta.shared;
            match self.stores.templates.replace(&next).await {
                Ok(Some(stored)) => {
                    info!(env = %format!("{name}@{version}"), "environment updated");
                    return Ok(stored);
                }
                Ok(None) => break,
                Err(Error::Conflict(_)) => continue,
                Err(source) => return Err(UseCaseError::store("the environment could not be updated", source)),
            }
        }
        Err(UseCaseError::NotFound(format!("environment \"{name}@{version}\" not found")))
    }

    /// Marks template `name@version` released (envhub's `POST /env/{name}/{version}/release`): final, so no
    /// longer updated; instances, pools and services are still made from it. Once only (a second answers 403).
    pub async fn release_template(
        &self,
        name: &str,
        version: &str,
        caller: Option<&Principal>,
    ) -> Result<Arc<Environment>, UseCaseError> {
        let (t, _) = self.usable_template(name, version, caller)?;
        let key = crate::store::key_of(t.as_ref());
        let mut attempts = super::retry::Attempts::new();
        while attempts.next().await {
            let Some(current) = self.stores.templates.get(&key) else { break };
            let access = TemplateAccess::of(&current, caller);
            if access != TemplateAccess::Own {
                Self::changeable(&current, access, "release")?;
            }
            if current.spec.released {
                return Err(UseCaseError::Forbidden(format!("environment \"{name}@{version}\" is released already")));
            }
            // A snapshot's template may be released (its image is fixed anyway), once it is taken.
            not_pending(&current)?;
            let mut next = (*current).clone();
            next.spec.released = true;
            match self.stores.templates.replace(&next).await {
                Ok(Some(stored)) => {
                    info!(env = %format!("{name}@{version}"), "environment released");
                    return Ok(stored);
                }
                Ok(None) => break,
                Err(Error::Conflict(_)) => continue,
                Err(source) => return Err(UseCaseError::store("the environment could not be released", source)),
            }
        }
        Err(UseCaseError::NotFound(format!("environment \"{name}@{version}\" not found")))
    }

    /// Removes template `t` for good, with its snapshot image if it has one (the image first: a template
    /// whose image could not go stays, to be deleted again).
    pub(super) async fn discard_template(&self, t: &Environment) -> Result<(), UseCaseError> {
        if let Some(image) = snapshot_image_of(t) {
            self.engine.remove_snapshot(image).await?;
        }
        let key = self.key(&Environment::object_name(&t.spec.name, &t.spec.version));
        self.stores.templates.purge(&key).await.map_err(|source| UseCaseError::store("could not delete", source))
    }

    /// Templates in the API's namespace that `caller` may see, of one name or all (another tenant's shared
    /// templates without their environment variables).
    pub fn list_templates(&self, name: Option<&str>, caller: Option<&Principal>) -> Vec<Arc<Environment>> {
        let namespace = self.namespace.as_str();
        self.stores
            .templates
            .list_where(&|t: &Environment| {
                t.metadata.namespace.as_deref() == Some(namespace)
                    && name.is_none_or(|n| t.spec.name == n)
                    && TemplateAccess::of(t, caller) != TemplateAccess::None
            })
            .into_iter()
            .map(|t| {
                let access = TemplateAccess::of(&t, caller);
                as_seen(t, access)
            })
            .collect()
    }

    /// Starts pre-pulling the template's images (once at a time per template) and returns where it stands.
    pub fn start_warmup(
        &self,
        name: &str,
        version: &str,
        caller: Option<&Principal>,
    ) -> Result<WarmupState, UseCaseError> {
        let (template, _) = self.usable_template(name, version, caller)?;
        let env = format!("{name}@{version}");
        let mut warmups = lock(&self.warmups);
        if let Some(state) = warmups.get(&env).filter(|s| !lock(s).done) {
            return Ok(lock(state).clone());
        }
        let state = Arc::new(Mutex::new(WarmupState {
            env: env.clone(),
            started_at: Timestamp::now(),
            finished_at: None,
            done: false,
            images: Vec::new(),
        }));
        warmups.insert(env.clone(), state.clone());
        let mut progress = self.engine.warmup(&template.spec.template);
        let snapshot = lock(&state).clone();
        info!(env = %env, "image warmup started");
        tokio::spawn(async move {
            while let Some(p) = progress.next().await {
                let mut s = lock(&state);
                match s.images.iter_mut().find(|i| i.image == p.image) {
                    Some(entry) => *entry = p,
                    None => s.images.push(p),
                }
            }
            let mut s = lock(&state);
            s.done = true;
            s.finished_at = Some(Timestamp::now());
            info!(env = %s.env, "image warmup finished");
        });
        Ok(snapshot)
    }

    /// Where the last warmup of `name@version` stands.
    pub fn warmup_state(
        &self,
        name: &str,
        version: &str,
        caller: Option<&Principal>,
    ) -> Result<WarmupState, UseCaseError> {
        self.usable_template(name, version, caller)?;
        let env = format!("{name}@{version}");
        let warmups = lock(&self.warmups);
        let state = warmups
            .get(&env)
            .ok_or_else(|| UseCaseError::NotFound(format!("no warmup of \"{env}\" has run; start one with POST")))?;
        Ok(lock(state).clone())
    }
}

/// What one sweep of snapshot images did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SnapshotSweep {
    /// This operator's snapshot images removed because no template owns them.
    pub removed: Vec<String>,
    /// Snapshot images of other operator ids (another operator sharing the daemon, or a store that was lost):
    /// never removed here, since their templates are in a store this operator cannot see.
    pub foreign: Vec<aenv_core::SnapshotImage>,
}

impl UseCases {
    /// Removes this operator's snapshot images that no template owns any more and that are older than `grace`:
    /// left by a template whose image could not be removed with it, by a crash between the commit and the
    /// template's record, or by a store that was lost (the Kubernetes store keeps the operator id). An image that
    /// an instance still runs from stays (the daemon refuses, and the store is checked first). Other operators'
    /// snapshot images are listed, never removed.
    pub async fn sweep_snapshots(
        &self,
        operator_id: &str,
        grace: std::time::Duration,
    ) -> Result<SnapshotSweep, aenv_core::EngineError> {
        let now = Timestamp::now();
        let grace_s = i64::try_from(grace.as_secs()).unwrap_or(i64::MAX);
        let mut sweep = SnapshotSweep::default();
        let images = self.engine.list_snapshots().await?;
        // Templates left pending by a crash between their record and the end of their commit, once older than
        // `grace`: finished when their image was committed, taken back when it was not.
        let stale = self.stores.templates.list_where(&|t: &Environment| {
            snapshot_pending(t)
                && t.metadata
                    .creation_timestamp
                    .as_ref()
                    .is_some_and(|c| now.as_second().saturating_sub(c.0.as_second()) > grace_s)
        });
        for t in stale {
            let env = format!("{}@{}", t.spec.name, t.spec.version);
            let committed = images.iter().any(|i| Some(i.reference.as_str()) == snapshot_image_of(&t));
            let done =
                if committed { self.finish_snapshot(&t).await.map(|_| ()) } else { self.discard_template(&t).await };
            match done {
                Ok(()) => tracing::warn!(env = %env, committed, "settled a snapshot's template left pending"),
                Err(e) => tracing::debug!(env = %env, error = %e, "a snapshot's template left pending stays for now"),
            }
        }
        for image in images {
            if image.operator_id != operator_id {
                sweep.foreign.push(image);
                continue;
            }
            // Young, or of unknown age: its template may be being recorded this moment.
            if image.created.is_none_or(|c| now.as_second().saturating_sub(c.as_second()) <= grace_s) {
                continue;
            }
            let reference = image.reference.as_str();
            let owned = !self
                .stores
                .templates
                .list_where(&|t: &Environment| snapshot_image_of(t) == Some(reference))
                .is_empty();
            let used = !self
                .stores
                .instances
                .list_where(&|i: &aenv_core::EnvInstance| i.spec.image.as_deref() == Some(reference))
                .is_empty();
            if owned || used {
                continue;
            }
            match self.engine.remove_snapshot(reference).await {
                Ok(()) => {
                    tracing::warn!(image = %reference, template = ?image.template, "removed a snapshot image no template owns");
                    sweep.removed.push(image.reference);
                }
                Err(e) => {
                    tracing::debug!(image = %reference, error = %e, "a snapshot image no template owns stays for now")
                }
            }
        }
        Ok(sweep)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use aenv_core::{EnvInstance, EnvPool, EnvService, SnapshotImage};

    use super::*;
    use crate::{controller::fake::FakeEngine, store::MemoryStore, usecase::CreateRequest};

    fn services(engine: Arc<FakeEngine>) -> Arc<UseCases> {
        UseCases::new(
            super::super::Stores {
                instances: MemoryStore::<EnvInstance>::new(),
                templates: MemoryStore::<Environment>::new(),
                pools: MemoryStore::<EnvPool>::new(),
                env_services: MemoryStore::<EnvService>::new(),
            },
            Arc::new(crate::demand::Demand::new(Duration::from_secs(60))),
            engine,
            Arc::new(crate::metrics::Metrics::default()),
            super::super::Settings {
                namespace: "default".into(),
                default_ttl: super::super::DefaultTtl::parse("30m").unwrap(),
                limits: Default::default(),
                proxy_url: None,
                create_wait: Duration::ZERO,
                signer: Arc::new(crate::usecase::presign::Signer::new(crate::usecase::presign::new_key())),
            },
        )
    }

    fn image(name: &str) -> String {
        format!("aenv-snapshot/{name}:v1.abcdef012345")
    }

    /// A snapshot's template as it is recorded before its commit.
    async fn reserve(svc: &UseCases, name: &str) {
        let spec = EnvInstanceSpec {
            env_name: name.into(),
            env_version: "v1".into(),
            image: Some(image(name)),
            ..Default::default()
        };
        let annotations = BTreeMap::from([
            (SNAPSHOT_IMAGE_ANNOTATION.to_string(), image(name)),
            (SNAPSHOT_PENDING_ANNOTATION.to_string(), "true".to_string()),
        ]);
        svc.record_template(spec, TemplateMeta::default(), None, annotations).await.unwrap();
    }

    fn create(name: &str) -> CreateRequest {
        CreateRequest::FromTemplate { name: name.into(), version: "v1".into(), overrides: Default::default() }
    }

    #[tokio::test]
    async fn a_snapshot_template_left_pending_is_finished_or_taken_back_by_the_sweep() {
        let engine = FakeEngine::new();
        let svc = services(engine.clone());
        // A crash left two reservations: one whose image was committed, one whose commit never happened.
        reserve(&svc, "committed").await;
        reserve(&svc, "lost").await;
        engine.set_snapshots(vec![SnapshotImage {
            reference: image("committed"),
            operator_id: "op".into(),
            template: Some("committed@v1".into()),
            created: Some(Timestamp::now()),
            size: Some(1),
        }]);
        // Within the grace, both stay pending and nothing starts from them.
        svc.sweep_snapshots("op", Duration::from_secs(3600)).await.unwrap();
        for name in ["committed", "lost"] {
            assert!(snapshot_pending(&svc.find_template(name, "v1").unwrap()), "{name}");
            assert!(matches!(svc.resolve(create(name), None), Err(UseCaseError::Conflict(_))), "{name}");
        }
        // Past it: the committed one is finished and usable, the other taken back.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        svc.sweep_snapshots("op", Duration::ZERO).await.unwrap();
        let finished = svc.find_template("committed", "v1").expect("the committed snapshot's template stays");
        assert!(!snapshot_pending(&finished));
        assert_eq!(svc.resolve(create("committed"), None).unwrap().image.as_deref(), Some(image("committed").as_str()));
        assert!(svc.find_template("lost", "v1").is_none(), "a reservation without an image stayed");
        assert_eq!(engine.snapshots().len(), 1, "the committed image stays with its template");
    }

    #[tokio::test]
    async fn a_taken_version_names_its_holder_only_to_those_who_may_see_it() {
        let svc = services(FakeEngine::new());
        let alice = Principal { owner: "alice".into(), ..Default::default() };
        let bob = Principal { owner: "bob".into(), ..Default::default() };
        reserve(&svc, "mine").await;
        let spec = EnvInstanceSpec {
            env_name: "private".into(),
            env_version: "v1".into(),
            image: Some("a:1".into()),
            ..Default::default()
        };
        svc.record_template(spec.clone(), TemplateMeta::default(), Some(&alice), BTreeMap::new()).await.unwrap();
        let shared = EnvInstanceSpec { env_name: "open".into(), ..spec.clone() };
        let meta = TemplateMeta { shared: true, ..Default::default() };
        svc.record_template(shared, meta, Some(&alice), BTreeMap::new()).await.unwrap();
        let hidden = svc.taken("private", "v1", Some(&bob)).to_string();
        assert_eq!(hidden, "environment \"private@v1\" is taken; register another name or version");
        assert!(svc.taken("open", "v1", Some(&bob)).to_string().contains("owner alice"));
        assert!(svc.taken("private", "v1", Some(&alice)).to_string().contains("delete it first"));
    }
}
