//! Long-running services: `EnvService` objects (make, read, list, update, delete), as AEnvironment's
//! `/env-service` asks for them. The service controller ([`crate::controller::env_services`]) keeps their replicas.

use std::{collections::BTreeMap, sync::Arc};

use aenv_core::{
    EnvInstance, EnvInstanceSpec, EnvService, EnvServiceSpec, Resources, VolumeMount,
    envservice::{DEFAULT_MOUNT_PATH, DELETE_STORAGE_ANNOTATION, MAX_SERVICE_REPLICAS, replica_spec},
};
use jiff::Timestamp;
use tracing::info;

use super::{
    Principal, UseCaseError, UseCases,
    quota::{Adding, Except, Reservation},
};
use crate::{Error, store::random_suffix};

/// Annotation of a service: when it was last changed through the API (the answer's `updated_at`).
pub const UPDATED_AT_ANNOTATION: &str = "aenv.io/updated-at";

/// `POST /env-service`, parsed (types checked; the rules are checked here).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EnvServiceRequest {
    /// `name@version` of the template.
    pub env_name: String,
    pub service_name: Option<String>,
    pub replicas: Option<i64>,
    pub env: BTreeMap<String, String>,
    pub pvc_name: Option<String>,
    pub mount_path: Option<String>,
    pub storage_size: Option<String>,
    pub port: Option<i64>,
    pub cpu: Option<String>,
    pub memory: Option<String>,
    /// `cpu_request`, `memory_request`.
    pub requests: Resources,
    /// `ephemeral_storage_request`, `ephemeral_storage_limit`.
    pub ephemeral_storage: aenv_core::envservice::EphemeralStorage,
    /// `ready_timeout_seconds` (ours): a replica not ready this long is replaced.
    pub ready_timeout_seconds: Option<i64>,
    /// The body's `owner`: taken only with tokens off (with them, the owner is the token's).
    pub owner: Option<String>,
    /// An inline template (the controller API's `/services`), instead of a registered Environment.
    pub inline: Option<aenv_core::EnvInstanceSpec>,
}

impl EnvServiceRequest {
    /// The request with what it leaves out taken from its template's `deployConfig.service`: the replica count,
    /// the port, and storage (all of it, when the request names none).
    fn with_defaults(mut self, defaults: Option<&aenv_core::envservice::ServiceDefaults>) -> Self {
        let Some(d) = defaults else { return self };
        self.replicas = self.replicas.or(d.replicas.map(i64::from));
        self.port = self.port.or(d.port.map(i64::from));
        if let Some(storage) = &d.storage
            && self.pvc_name.is_none()
            && self.storage_size.is_none()
            && self.mount_path.is_none()
        {
            self.pvc_name = storage.name.clone();
            self.storage_size = storage.size.clone();
            // The mount path marks storage as asked for, as a request's own would.
            self.mount_path =
                Some(storage.mount_path.clone().unwrap_or_else(|| aenv_core::envservice::DEFAULT_MOUNT_PATH.into()));
        }
        self
    }
}

/// `PUT /env-service/{id}`, parsed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EnvServiceUpdate {
    pub replicas: Option<i64>,
    pub image: Option<String>,
    pub env: Option<BTreeMap<String, String>>,
}

use aenv_core::labels::is_dns_label as dns_label;

fn check_replicas(replicas: i64) -> Result<u32, UseCaseError> {
    u32::try_from(replicas).ok().filter(|r| *r <= MAX_SERVICE_REPLICAS).ok_or_else(|| {
        UseCaseError::field(
            "replicas",
            format!("field `replicas` must be between 0 and {MAX_SERVICE_REPLICAS} (got {replicas})"),
        )
    })
}

fn check_env(env: &BTreeMap<String, String>) -> Result<(), UseCaseError> {
    match env.keys().find(|k| k.is_empty() || k.contains('=') || k.contains('\0')) {
        Some(k) => Err(UseCaseError::field(
            "environment_variables",
            format!(
                "field `environment_variables` has the name {k:?}: a variable name is not empty and holds no '=' or NUL"
            ),
        )),
        None => Ok(()),
    }
}

/// The default service name of a template name: `{name}-svc-{6 random}` made DNS-safe.
fn default_name(template_name: &str) -> String {
    let base: String = template_name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
        .take(48)
        .collect();
    let base = base.trim_matches('-');
    let base = if base.is_empty() { "env" } else { base };
    format!("{base}-svc-{}", random_suffix(6))
}

impl UseCases {
    /// Whether `caller` may see and change `svc`: everyone when auth is off; its owner otherwise.
    pub fn service_visible(svc: &EnvService, caller: Option<&Principal>) -> bool {
        caller.is_none_or(|p| svc.spec.owner.as_deref() == Some(p.owner.as_str()))
    }

    /// Replicas of services the engine runs natively (Kubernetes Deployments), which are no instances in the
    /// store: what they count towards the caps (of `owner`'s services, or of all).
    pub fn native_replicas(&self, owner: Option<&str>) -> usize {
        if self.engine.native_services().is_none() {
            return 0;
        }
        self.stores
            .env_services
            .list_where(&|s: &EnvService| {
                s.metadata.deletion_timestamp.is_none() && owner.is_none_or(|o| s.spec.owner.as_deref() == Some(o))
            })
            .iter()
            .map(|s| s.spec.replicas as usize)
            .sum()
    }

    /// Checks what a replica of `spec` runs against the engine: the engine's own service checks when it runs
    /// services natively (its storage is then a claim, not a Docker volume), else the instance checks.
    async fn validate_service_spec(
        &self,
        id: &str,
        template: &EnvInstanceSpec,
        spec: &EnvServiceSpec,
    ) -> Result<(), UseCaseError> {
        if let Some((field, message)) = spec.request_above_limit() {
            return Err(UseCaseError::field(field, message));
        }
        // A snapshot is used through its template, never by naming its image (the service's `image`, or an
        // inline template's).
        if let Some(image) = &spec.image {
            let named = EnvInstanceSpec { image: Some(image.clone()), ..Default::default() };
            self.engine.refuse_snapshot_images(&named).map_err(UseCaseError::Refused)?;
        }
        if let Some(inline) = &spec.template {
            self.engine.refuse_snapshot_images(inline).map_err(UseCaseError::Refused)?;
        }
        let Some((name, version)) = spec.template() else { return Ok(()) };
        let mut replica = replica_spec(template, name, version, spec);
        if let Some(native) = self.engine.native_services() {
            native.validate_service(id, spec).map_err(UseCaseError::Refused)?;
            replica.volumes.clear();
        }
        self.engine.validate(&replica).map_err(UseCaseError::Refused)?;
        self.engine.admit(&replica).await.map_err(UseCaseError::Refused)
    }

    /// Replicas of `svc` that passed their readiness probe: its replica instances', or, for a service the engine
    /// runs natively, what the engine last reported.
    pub fn available_replicas(&self, svc: &EnvService) -> u32 {
        if self.engine.native_services().is_some() {
            return svc.status.as_ref().map_or(0, |s| s.available_replicas);
        }
        self.replicas_of(svc).iter().filter(|r| r.member_state() == aenv_core::MemberState::Ready).count() as u32
    }

    /// Where `svc` answers: `host:port` in the cluster for a service the engine runs natively (its Service's DNS
    /// name), else `None` (the proxy's address, `<proxy>/env-service/<id>`).
    pub fn native_address(&self, svc: &EnvService) -> Option<String> {
        self.engine.native_services().map(|n| n.service_address(svc))
    }

    /// Checks that `caller`'s owner may hold `replicas` for the service `except` (beside what else it holds, by
    /// the rule of [`super::quota`]), and that `more` new ones fit under `--max-instances`: room reserved until
    /// the caller's write is done.
    fn check_replica_room(
        &self,
        caller: Option<&Principal>,
        replicas: usize,
        more: usize,
        except: Except<'_>,
    ) -> Result<Option<Reservation<'_>>, UseCaseError> {
        if more == 0 {
            return Ok(None);
        }
        self.check_owner_room(caller, Adding::Service, replicas, except)?;
        self.reserve_live(more).map_err(|live| {
            let max = self.limits.limits.max_instances.unwrap_or_default();
            UseCaseError::Forbidden(format!(
                "the operator holds {live} of its limit of {max} live instances: `replicas` may add at most {}",
                max.saturating_sub(live)
            ))
        })
    }

    /// Makes a service of an existing template; the service controller starts its replicas.
    pub async fn create_service(
        &self,
        req: EnvServiceRequest,
        caller: Option<&Principal>,
    ) -> Result<Arc<EnvService>, UseCaseError> {
        let env_name = req.env_name.clone();
        let Some((name, version)) = env_name.split_once('@').filter(|(n, v)| !n.is_empty() && !v.is_empty()) else {
            return Err(UseCaseError::field(
                "envName",
                format!("field `envName` must be name@version of a registered environment (got {:?})", req.env_name),
            ));
        };
        let template = match (&req.inline, self.usable_template(name, version, caller)) {
            (Some(inline), _) => Arc::new(aenv_core::Environment::new(
                "inline",
                aenv_core::EnvironmentSpec { template: inline.clone(), ..Default::default() },
            )),
            (None, Ok((t, _))) => {
                super::templates::not_pending(&t)?;
                t
            }
            (None, Err(UseCaseError::NotFound(_))) => {
                return Err(UseCaseError::field(
                    "envName",
                    format!(
                        "field `envName`: environment \"{name}@{version}\" is not registered; register it with POST /env first"
                    ),
                ));
            }
            (None, Err(e)) => return Err(e),
        };
        let req = req.with_defaults(template.spec.service.as_ref());
        let id = match req.service_name.as_deref() {
            Some(n) if dns_label(n) => n.to_string(),
            Some(n) => {
                return Err(UseCaseError::field(
                    "service_name",
                    format!(
                        "field `service_name` must be 1 to 63 lowercase letters, digits or '-', starting and ending with a letter or digit (got {n:?})"
                    ),
                ));
            }
            None => default_name(name),
        };
        let replicas = check_replicas(req.replicas.unwrap_or(1))?;
        // The quantities were checked as the request was decoded (each named as its route spells it).
        if req.storage_size.is_some() && replicas > 1 {
            return Err(UseCaseError::field(
                "storage_size",
                format!(
                    "fields `replicas` and `storage_size`: a service with storage_size has one replica (got replicas {replicas}); leave out storage_size, or ask for replicas 1"
                ),
            ));
        }
        let pvc_name = match (&req.pvc_name, &req.storage_size, &req.mount_path) {
            (Some(p), _, _) if !dns_label(p) => {
                return Err(UseCaseError::field(
                    "pvc_name",
                    format!(
                        "field `pvc_name` must be 1 to 63 lowercase letters, digits or '-', starting and ending with a letter or digit (got {p:?})"
                    ),
                ));
            }
            (Some(p), _, _) => Some(p.clone()),
            // Storage asked for without a name: named after the environment, as upstream does.
            (None, Some(_), _) | (None, None, Some(_)) => {
                let n: String = name
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
                    .collect();
                Some(n.trim_matches('-').chars().take(63).collect::<String>()).filter(|n| dns_label(n))
            }
            (None, None, None) => None,
        };
        if let Some(path) = &req.mount_path
            && let Some(why) = VolumeMount::mount_path_refusal(path)
        {
            return Err(UseCaseError::field("mount_path", format!("field `mount_path` {why} (got {path:?})")));
        }
        let port = match req.port {
            None => aenv_core::envservice::DEFAULT_PORT,
            Some(p) => u16::try_from(p).ok().filter(|p| *p > 0).ok_or_else(|| {
                UseCaseError::field("port", format!("field `port` must be a port number from 1 to 65535 (got {p})"))
            })?,
        };
        let ready_timeout_seconds = req
            .ready_timeout_seconds
            .map(|t| {
                u32::try_from(t).ok().filter(|t| (1..=86_400).contains(t)).ok_or_else(|| {
                    UseCaseError::field(
                        "ready_timeout_seconds",
                        format!("field `ready_timeout_seconds` must be from 1 to 86400 seconds (got {t})"),
                    )
                })
            })
            .transpose()?;
        check_env(&req.env)?;
        let spec = EnvServiceSpec {
            env_name: format!("{name}@{version}"),
            replicas,
            env: req.env,
            image: None,
            owner: match caller {
                Some(p) => Some(p.owner.clone()),
                None => req.owner.clone(),
            },
            mount_path: pvc_name.as_ref().map(|_| req.mount_path.clone().unwrap_or_else(|| DEFAULT_MOUNT_PATH.into())),
            pvc_name,
            storage_size: req.storage_size,
            port,
            resources: Resources { cpu: req.cpu, memory: req.memory },
            requests: req.requests,
            ephemeral_storage: req.ephemeral_storage,
            ready_timeout_seconds,
            template: req.inline.clone().map(Box::new),
        };
        // What a replica runs must pass the engine's checks now, not fail later in the controller.
        self.validate_service_spec(&id, &template.spec.template, &spec).await?;
        let _turn = self.owner_turn(caller).await;
        let _room = self.check_replica_room(caller, replicas as usize, replicas as usize, Except::Nothing)?;
        let mut svc = EnvService::new(&id, spec);
        svc.metadata.namespace = Some(self.namespace.clone());
        match self.stores.env_services.create(svc, Timestamp::now()).await {
            Ok(stored) => {
                info!(service = %id, env = %req.env_name, replicas, "service created");
                Ok(stored)
            }
            Err(Error::AlreadyExists(_)) => Err(UseCaseError::Conflict(
                match self.stores.env_services.get(&self.key(&id)).filter(|s| Self::service_visible(s, caller)) {
                    Some(s) if s.metadata.deletion_timestamp.is_some() => format!(
                        "service \"{id}\" is still being deleted (its replicas are going); try again in a few seconds, or pick another service_name"
                    ),
                    Some(_) => format!(
                        "service \"{id}\" exists already; change it with PUT /env-service/{id}, or pick another service_name"
                    ),
                    // Names are the operator's, not the owner's: another tenant's service is told apart from
                    // nothing but its existence (who holds it, and in what state, are not said).
                    None => super::taken(&id, "service_name"),
                },
            )),
            Err(source) => Err(UseCaseError::store("the service could not be recorded", source)),
        }
    }

    /// The service `id`, if `caller` may see it and it is not being deleted.
    pub fn service(&self, id: &str, caller: Option<&Principal>) -> Result<Arc<EnvService>, UseCaseError> {
        self.stores
            .env_services
            .get(&self.key(id))
            .filter(|s| Self::service_visible(s, caller) && s.metadata.deletion_timestamp.is_none())
            .ok_or_else(|| UseCaseError::NotFound(format!("service \"{id}\" not found")))
    }

    /// Services `caller` may see, of the environment `env` (`name` or `name@version`; `*` for all).
    pub fn list_services(&self, env: &str, caller: Option<&Principal>) -> Vec<Arc<EnvService>> {
        let namespace = self.namespace.as_str();
        self.stores.env_services.list_where(&|s: &EnvService| {
            s.metadata.namespace.as_deref() == Some(namespace)
                && s.metadata.deletion_timestamp.is_none()
                && Self::service_visible(s, caller)
                && (env == "*" || s.spec.env_name == env || s.spec.template().is_some_and(|(n, _)| n == env))
        })
    }

    /// Changes a service's replicas, image or environment; the controller rolls the replicas over.
    pub async fn update_service(
        &self,
        id: &str,
        update: EnvServiceUpdate,
        caller: Option<&Principal>,
    ) -> Result<Arc<EnvService>, UseCaseError> {
        let _turn = self.owner_turn(caller).await;
        // The controller writes the status meanwhile (a new resource version): read again and retry a few times.
        let mut attempts = super::retry::Attempts::new();
        while attempts.next().await {
            let current = self.service(id, caller)?;
            let (svc, _room) = self.updated(&current, &update, caller).await?;
            match self.stores.env_services.replace(&svc).await {
                Ok(Some(stored)) => {
                    info!(service = %id, replicas = stored.spec.replicas, "service updated");
                    return Ok(stored);
                }
                Ok(None) => return Err(UseCaseError::NotFound(format!("service \"{id}\" not found"))),
                Err(Error::Conflict(_)) => continue,
                Err(source) => return Err(UseCaseError::store("the service could not be updated", source)),
            }
        }
        Err(UseCaseError::Conflict(format!("service \"{id}\" keeps changing; read it and try again")))
    }

    /// `current` with `update` applied and checked.
    async fn updated(
        &self,
        current: &EnvService,
        update: &EnvServiceUpdate,
        caller: Option<&Principal>,
    ) -> Result<(EnvService, Option<Reservation<'_>>), UseCaseError> {
        let id = current.metadata.name.as_deref().unwrap_or_default();
        let mut svc = current.clone();
        let mut room = None;
        if let Some(r) = update.replicas {
            let replicas = check_replicas(r)?;
            if replicas > 1 && svc.spec.storage_size.is_some() {
                return Err(UseCaseError::field(
                    "replicas",
                    format!(
                        "fields `replicas` and `storage_size`: service \"{id}\" has storage_size and keeps one replica (got replicas {replicas})"
                    ),
                ));
            }
            let more = replicas.saturating_sub(svc.spec.replicas) as usize;
            room = self.check_replica_room(caller, replicas as usize, more, Except::Service(id))?;
            svc.spec.replicas = replicas;
        }
        if let Some(image) = &update.image {
            if image.trim().is_empty() {
                return Err(UseCaseError::field("image", "field `image` must name an image, such as \"repo/app:2\""));
            }
            svc.spec.image = Some(image.trim().to_string());
        }
        if let Some(env) = &update.env {
            check_env(env)?;
            svc.spec.env = env.clone();
        }
        if let Some((name, version)) = svc.spec.template() {
            let template = match &svc.spec.template {
                Some(inline) => Some((**inline).clone()),
                None => self.usable_template(name, version, caller).ok().map(|(t, _)| t.spec.template.clone()),
            };
            if let Some(template) = template {
                self.validate_service_spec(id, &template, &svc.spec).await?;
            }
        }
        svc.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(UPDATED_AT_ANNOTATION.into(), Timestamp::now().to_string());
        Ok((svc, room))
    }

    /// Deletes a service: its replicas go, then (with `delete_storage`) its volume. Without it the volume stays,
    /// and a later service with the same `pvc_name` (and owner) mounts the same data.
    pub async fn delete_service(
        &self,
        id: &str,
        delete_storage: bool,
        caller: Option<&Principal>,
    ) -> Result<(), UseCaseError> {
        let key = self.key(id);
        let mut marked = !delete_storage;
        let mut attempts = super::retry::Attempts::new();
        while attempts.next().await {
            if marked {
                break;
            }
            // Recorded on the service before the deletion, so that a restart still removes the volume at the end.
            let mut svc = (*self.service(id, caller)?).clone();
            svc.metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(DELETE_STORAGE_ANNOTATION.into(), "true".into());
            match self.stores.env_services.replace(&svc).await {
                Ok(Some(_)) => marked = true,
                Ok(None) => return Err(UseCaseError::NotFound(format!("service \"{id}\" not found"))),
                Err(Error::Conflict(_)) => continue,
                Err(e) => return Err(UseCaseError::store("the service could not be marked for deletion", e)),
            }
        }
        if !marked {
            return Err(UseCaseError::Conflict(format!("service \"{id}\" keeps changing; try again")));
        }
        self.service(id, caller)?;
        match self.stores.env_services.request_delete(&key, Timestamp::now()).await {
            Ok(Some(_)) => {
                info!(service = %id, delete_storage, "service deletion requested");
                Ok(())
            }
            Ok(None) => Err(UseCaseError::NotFound(format!("service \"{id}\" not found"))),
            Err(source) => Err(UseCaseError::store("the deletion could not be recorded", source)),
        }
    }

    /// The replicas of service `id`, ready ones first.
    pub fn replicas_of(&self, svc: &EnvService) -> Vec<Arc<EnvInstance>> {
        let name = svc.metadata.name.clone().unwrap_or_default();
        let namespace = svc.metadata.namespace.clone().unwrap_or_default();
        self.stores.instances.list_where(&|i: &EnvInstance| {
            i.service() == Some(name.as_str()) && i.namespace() == namespace && !i.is_deleting()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_labels() {
        assert!(dns_label("web-1") && !dns_label("Web") && !dns_label("-a") && !dns_label("a_b") && !dns_label(""));
        let n = default_name("Mini_Terminal");
        assert!(n.starts_with("mini-terminal-svc-") && dns_label(&n), "{n}");
        assert!(check_replicas(-1).unwrap_err().to_string().contains("`replicas`"));
        assert!(check_replicas(i64::from(MAX_SERVICE_REPLICAS) + 1).is_err());
        assert_eq!(check_replicas(3).unwrap(), 3);
    }
}
