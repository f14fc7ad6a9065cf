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

use super::{ServiceError, Services};
use crate::Error;

/// What a template carries beyond its spec.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TemplateMeta {
    pub description: String,
    pub tags: Vec<String>,
    pub code_url: String,
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
    /// Registers a template from an inline spec (its name and version name the template).
    pub async fn register_template(
        &self,
        spec: EnvInstanceSpec,
        meta: TemplateMeta,
    ) -> Result<Arc<Environment>, ServiceError> {
        if spec.env_version.is_empty() {
            return Err(ServiceError::Invalid("field `version` is required for an Environment".into()));
        }
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
                template: EnvInstanceSpec { env_name: String::new(), env_version: String::new(), ..spec },
            },
        );
        env.metadata.namespace = Some(self.namespace.clone());
        match self.templates.create(env, Timestamp::now()).await {
            Ok(stored) => {
                info!(env = %format!("{name}@{version}"), "environment registered");
                Ok(stored)
            }
            Err(Error::AlreadyExists(_)) => Err(ServiceError::Conflict(format!(
                "environment \"{name}@{version}\" exists already; delete it first, or register a new version"
            ))),
            Err(source) => Err(ServiceError::store("the environment could not be recorded", source)),
        }
    }

    /// The template `name@version`, or a refusal that names it.
    pub fn template(&self, name: &str, version: &str) -> Result<Arc<Environment>, ServiceError> {
        self.find_template(name, version)
            .ok_or_else(|| ServiceError::NotFound(format!("environment \"{name}@{version}\" not found")))
    }

    /// Deletes a template, unless a pool keeps sandboxes of it (delete or re-point the pool first).
    pub async fn delete_template(&self, name: &str, version: &str) -> Result<(), ServiceError> {
        self.template(name, version)?;
        if let Some(pool) = self.pools_of(name, version).first() {
            let pool = pool.metadata.name.as_deref().unwrap_or_default();
            return Err(ServiceError::Conflict(format!(
                "environment \"{name}@{version}\" is used by pool \"{pool}\": delete the pool first (DELETE /env-pool/{pool})"
            )));
        }
        let key = self.key(&Environment::object_name(name, version));
        self.templates.purge(&key).await.map_err(|source| ServiceError::store("could not delete", source))
    }

    /// Templates in the API's namespace, of one name or all.
    pub fn list_templates(&self, name: Option<&str>) -> Vec<Arc<Environment>> {
        let namespace = self.namespace.as_str();
        self.templates.list_where(&|t: &Environment| {
            t.metadata.namespace.as_deref() == Some(namespace) && name.is_none_or(|n| t.spec.name == n)
        })
    }

    /// Starts pre-pulling the template's images (once at a time per template) and returns where it stands.
    pub fn start_warmup(&self, name: &str, version: &str) -> Result<WarmupState, ServiceError> {
        let template = self.template(name, version)?;
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
    pub fn warmup_state(&self, name: &str, version: &str) -> Result<WarmupState, ServiceError> {
        let env = format!("{name}@{version}");
        let warmups = lock(&self.warmups);
        let state = warmups
            .get(&env)
            .ok_or_else(|| ServiceError::NotFound(format!("no warmup of \"{env}\" has run; start one with POST")))?;
        Ok(lock(state).clone())
    }
}
