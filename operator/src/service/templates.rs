//! Environment templates (`name@version`, as envhub keeps them) and image warmup: pre-pulling every image a
//! template runs, with progress per image.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use aenv_core::{EnvInstanceSpec, Environment, EnvironmentSpec, PullProgress};
use futures::StreamExt;
use jiff::Timestamp;
use tracing::info;

use super::{Principal, ServiceError, Services};
use crate::Error;

/// Annotation of a template made by a snapshot: the image it owns, removed with it.
pub const SNAPSHOT_IMAGE_ANNOTATION: &str = "aenv.io/snapshot-image";

/// What a template carries beyond its spec.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TemplateMeta {
    pub description: String,
    pub tags: Vec<String>,
    pub code_url: String,
    /// Other tenants may create instances from it.
    pub shared: bool,
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

impl Services {
    /// Registers a template from an inline spec (its name and version name the template); with tokens on, it
    /// belongs to `caller`.
    pub async fn register_template(
        &self,
        spec: EnvInstanceSpec,
        meta: TemplateMeta,
        caller: Option<&Principal>,
    ) -> Result<Arc<Environment>, ServiceError> {
        self.register_template_of(spec, meta, caller, None).await
    }

    /// [`Services::register_template`], marking the template as the owner of snapshot image `snapshot` (removed
    /// with it).
    pub(super) async fn register_template_of(
        &self,
        spec: EnvInstanceSpec,
        meta: TemplateMeta,
        caller: Option<&Principal>,
        snapshot: Option<String>,
    ) -> Result<Arc<Environment>, ServiceError> {
        if spec.env_version.is_empty() {
            return Err(ServiceError::Invalid("field `version` is required for an Environment".into()));
        }
        self.check_ttl(spec.ttl.as_deref(), "deployConfig.ttl")?;
        self.engine.validate(&spec).map_err(|e| ServiceError::Invalid(e.message))?;
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
                template: EnvInstanceSpec { env_name: String::new(), env_version: String::new(), ..spec },
            },
        );
        env.metadata.namespace = Some(self.namespace.clone());
        if let Some(image) = snapshot {
            env.metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(SNAPSHOT_IMAGE_ANNOTATION.into(), image);
        }
        match self.templates.create(env, Timestamp::now()).await {
            Ok(stored) => {
                info!(env = %format!("{name}@{version}"), owner = ?caller.map(|p| &p.owner), "environment registered");
                Ok(stored)
            }
            Err(Error::AlreadyExists(_)) => {
                let holder = self
                    .find_template(&name, &version)
                    .and_then(|t| t.spec.owner.clone())
                    .filter(|o| caller.is_some_and(|p| p.owner != *o));
                Err(ServiceError::Conflict(match holder {
                    Some(owner) => format!(
                        "environment \"{name}@{version}\" exists already and belongs to owner {owner}; register another name or version"
                    ),
                    None => format!(
                        "environment \"{name}@{version}\" exists already; delete it first, or register a new version"
                    ),
                }))
            }
            Err(source) => Err(ServiceError::store("the environment could not be recorded", source)),
        }
    }

    /// The template `name@version` as `caller` may see it (another tenant's shared template without its
    /// environment variables), or a refusal that names it (also when `caller` may not see it at all).
    pub fn template(
        &self,
        name: &str,
        version: &str,
        caller: Option<&Principal>,
    ) -> Result<Arc<Environment>, ServiceError> {
        let (t, access) = self.usable_template(name, version, caller)?;
        Ok(as_seen(t, access))
    }

    /// The template `name@version` and what `caller` may do with it; not found when `caller` may not see it.
    pub fn usable_template(
        &self,
        name: &str,
        version: &str,
        caller: Option<&Principal>,
    ) -> Result<(Arc<Environment>, TemplateAccess), ServiceError> {
        self.find_template(name, version)
            .map(|t| {
                let access = TemplateAccess::of(&t, caller);
                (t, access)
            })
            .filter(|(_, access)| *access != TemplateAccess::None)
            .ok_or_else(|| ServiceError::NotFound(format!("environment \"{name}@{version}\" not found")))
    }

    /// Deletes a template: only its owner or an admin token may (anyone with auth off), and not while a pool
    /// keeps sandboxes of it (delete or re-point the pool first).
    pub async fn delete_template(
        &self,
        name: &str,
        version: &str,
        caller: Option<&Principal>,
    ) -> Result<(), ServiceError> {
        let (t, access) = self.usable_template(name, version, caller)?;
        if access != TemplateAccess::Own {
            return Err(ServiceError::Forbidden(format!(
                "environment \"{name}@{version}\" belongs to {}; only its owner or an admin token may delete it",
                t.spec.owner.as_deref().map_or_else(
                    || "no tenant (it was registered without tokens)".to_string(),
                    |o| format!("owner {o}")
                )
            )));
        }
        if let Some(pool) = self.pools_of(name, version).first() {
            let pool = pool.metadata.name.as_deref().unwrap_or_default();
            return Err(ServiceError::Conflict(format!(
                "environment \"{name}@{version}\" is used by pool \"{pool}\": delete the pool first (DELETE /env-pool/{pool})"
            )));
        }
        // A snapshot's image goes with its template, once no instance runs from it.
        if let Some(image) = t.metadata.annotations.as_ref().and_then(|a| a.get(SNAPSHOT_IMAGE_ANNOTATION)) {
            let users = self.instances.list_where(&|i: &aenv_core::EnvInstance| i.spec.image.as_deref() == Some(image));
            if let Some(user) = users.first() {
                return Err(ServiceError::Conflict(format!(
                    "environment \"{name}@{version}\" is a snapshot that {} instance(s) still run from (such as \"{}\"): delete them first",
                    users.len(),
                    user.metadata.name.as_deref().unwrap_or_default()
                )));
            }
            self.engine.remove_snapshot(image).await?;
        }
        let key = self.key(&Environment::object_name(name, version));
        self.templates.purge(&key).await.map_err(|source| ServiceError::store("could not delete", source))
    }

    /// Templates in the API's namespace that `caller` may see, of one name or all (another tenant's shared
    /// templates without their environment variables).
    pub fn list_templates(&self, name: Option<&str>, caller: Option<&Principal>) -> Vec<Arc<Environment>> {
        let namespace = self.namespace.as_str();
        self.templates
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
    ) -> Result<WarmupState, ServiceError> {
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
    ) -> Result<WarmupState, ServiceError> {
        self.usable_template(name, version, caller)?;
        let env = format!("{name}@{version}");
        let warmups = lock(&self.warmups);
        let state = warmups
            .get(&env)
            .ok_or_else(|| ServiceError::NotFound(format!("no warmup of \"{env}\" has run; start one with POST")))?;
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

impl Services {
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
        for image in self.engine.list_snapshots().await? {
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
                .templates
                .list_where(&|t: &Environment| {
                    t.metadata.annotations.as_ref().and_then(|a| a.get(SNAPSHOT_IMAGE_ANNOTATION)).map(String::as_str)
                        == Some(reference)
                })
                .is_empty();
            let used = !self
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
