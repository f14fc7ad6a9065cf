//! Instances: resolving a create (inline, or a template with the SDK's overrides), recording it within the caps
//! and the rate limit, reading, listing and deleting what a caller may see.

use std::{collections::BTreeMap, sync::Arc};

use aenv_core::{EnvInstance, EnvInstanceSpec, Environment, duration::parse_go_duration};
use jiff::Timestamp;
use tracing::{info, warn};

use aenv_core::pool::OwnerRule;

use super::{
    Principal, UseCaseError, UseCases,
    quota::{Adding, Except},
};
use crate::{Error, store::random_suffix};

/// Annotation of an instance created with the SDK's `mount_points`: their local directories, none mounted.
pub const UNMOUNTED_ANNOTATION: &str = "aenv.io/unmounted-mount-points";

/// What a create asked for, parsed from the wire.
#[derive(Debug)]
pub enum CreateRequest {
    /// A complete inline spec.
    Inline(Box<EnvInstanceSpec>),
    /// `name@version` of a template, with the SDK's overrides.
    FromTemplate { name: String, version: String, overrides: Box<Overrides> },
}

/// What an SDK create (`envName`) may change of its template, as the AEnvironment api-service applies it.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Overrides {
    /// The SDK's `datasource`: passed to the instance as `AENV_DATASOURCE`.
    pub datasource: Option<String>,
    /// Merged over the template's variables.
    pub env: BTreeMap<String, String>,
    /// Replace the template's arguments when not empty.
    pub args: Vec<String>,
    pub ttl: Option<String>,
    pub owner: Option<String>,
    /// Merged over the template's labels.
    pub labels: BTreeMap<String, String>,
    /// The SDK's `mount_points` (their local directories), accepted and not mounted: no shared storage is.
    pub unmounted: Vec<String>,
}

impl CreateRequest {
    /// The SDK's `mount_points` this create asked for (their local directories), which are not mounted.
    pub fn unmounted(&self) -> Vec<String> {
        match self {
            CreateRequest::FromTemplate { overrides, .. } => overrides.unmounted.clone(),
            CreateRequest::Inline(_) => Vec::new(),
        }
    }
}

impl Overrides {
    /// The instance spec: the template with these overrides (the TTL stays unset when neither names one).
    pub fn apply(self, template: &EnvInstanceSpec, name: &str, version: &str) -> EnvInstanceSpec {
        let mut spec = template.clone();
        spec.env_name = name.to_string();
        spec.env_version = version.to_string();
        spec.env.extend(self.env);
        if let Some(ds) = self.datasource {
            spec.env.insert("AENV_DATASOURCE".into(), ds);
        }
        if !self.args.is_empty() {
            spec.args = self.args;
        }
        spec.ttl = self.ttl.or(spec.ttl);
        if self.owner.is_some() {
            spec.owner = self.owner;
        }
        spec.labels.extend(self.labels);
        spec
    }
}

/// The status string the SDK compares against (`Pending`, `Creating`, `Running`, `Failed`, `Terminated`).
/// An instance being deleted reads as `Terminated`: it can no longer be used.
pub fn status_string(inst: &EnvInstance) -> &'static str {
    if inst.is_deleting() { "Terminated" } else { inst.phase().as_str() }
}

impl UseCases {
    /// Turns a create into the spec to record: inline as it is, or the template (one `caller` may use) with the
    /// overrides; the default TTL when none is named; then the engine's own checks.
    pub fn resolve(&self, request: CreateRequest, caller: Option<&Principal>) -> Result<EnvInstanceSpec, UseCaseError> {
        let ttl_field = match &request {
            CreateRequest::Inline(_) => "deployConfig.ttl",
            CreateRequest::FromTemplate { overrides, .. } if overrides.ttl.is_some() => "ttl",
            CreateRequest::FromTemplate { .. } => "the template's deployConfig.ttl",
        };
        let mut spec = match request {
            CreateRequest::Inline(spec) => {
                // A snapshot is used through its template, never by naming its image.
                self.engine.refuse_snapshot_images(&spec).map_err(UseCaseError::Refused)?;
                *spec
            }
            CreateRequest::FromTemplate { name, version, overrides } => {
                let (template, _) = self.usable_template(&name, &version, caller).map_err(|_| {
                    UseCaseError::NotFound(format!(
                        "environment \"{name}@{version}\" not found: register it with POST /env, or send the inline body with name, version and artifacts"
                    ))
                })?;
                super::templates::not_pending(&template)?;
                overrides.apply(&template.spec.template, &name, &version)
            }
        };
        if spec.ttl.is_none() {
            spec.ttl = Some(self.default_ttl.as_str().to_string());
        }
        self.check_ttl(spec.ttl.as_deref(), ttl_field)?;
        self.engine.validate(&spec).map_err(UseCaseError::Refused)?;
        Ok(spec)
    }

    /// Refuses a TTL longer than `--max-ttl` (or one that does not parse), naming `field`.
    pub(super) fn check_ttl(&self, ttl: Option<&str>, field: &str) -> Result<(), UseCaseError> {
        let Some(ttl) = ttl else { return Ok(()) };
        let parsed = parse_go_duration(ttl).map_err(|e| UseCaseError::field(field, format!("field `{field}`: {e}")))?;
        let max = &self.limits.limits.max_ttl;
        if parsed > max.duration {
            return Err(UseCaseError::field(
                field,
                format!(
                    "field `{field}` ({ttl}) is longer than this operator allows (--max-ttl {}); ask for {} or less",
                    max.text, max.text
                ),
            ));
        }
        Ok(())
    }

    /// The template `name@version`, unless it is being deleted.
    pub fn find_template(&self, name: &str, version: &str) -> Option<Arc<Environment>> {
        self.stores
            .templates
            .get(&self.key(&Environment::object_name(name, version)))
            .filter(|t| t.spec.name == name && t.spec.version == version && t.metadata.deletion_timestamp.is_none())
    }

    /// An instance joins a service's network (`deployConfig.network: "aenv-svc-<service>"`, where the service's
    /// replicas answer to its name) only when the service exists and is the caller's: a tenant never reaches
    /// another tenant's service network (with tokens each owner's networks are its own anyway).
    fn check_service_network(&self, spec: &EnvInstanceSpec, caller: Option<&Principal>) -> Result<(), UseCaseError> {
        let Some(net) = spec.network.as_deref() else { return Ok(()) };
        let Some(service) = aenv_core::envservice::service_of_network(net) else { return Ok(()) };
        match self.service(service, caller) {
            Ok(_) => Ok(()),
            Err(UseCaseError::NotFound(_)) => Err(UseCaseError::field(
                "deployConfig.network",
                format!(
                    "field `deployConfig.network`: {net:?} is the network of service \"{service}\", which does not exist or is not yours; name the network of one of your services"
                ),
            )),
            Err(e) => Err(e),
        }
    }

    /// Records a new instance of `spec` for `caller` (whose name becomes the owner), within the rate limit and the
    /// caps: a ready sandbox claimed from a pool when one serves the spec (see [`UseCases::claim`]), else a new
    /// one, whose id is `<name>-<6 random [a-z0-9]>`, as AEnvironment names pods. Durable when it returns.
    pub async fn create(
        &self,
        mut spec: EnvInstanceSpec,
        caller: Option<&Principal>,
    ) -> Result<Arc<EnvInstance>, UseCaseError> {
        self.limits.take_create()?;
        self.check_service_network(&spec, caller)?;
        // What needs I/O to judge (the addresses of an image's registry), once the rate limit let it through.
        self.engine.admit(&spec).await.map_err(UseCaseError::Refused)?;
        if let Some(p) = caller {
            spec.owner = Some(p.owner.clone());
        }
        let _turn = self.owner_turn(caller).await;
        self.check_owner_room(caller, Adding::Instance, 1, Except::Nothing)?;
        let owners = if caller.is_some() { OwnerRule::Tenant } else { OwnerRule::Attribution };
        if let Some(claimed) = self.claim(&spec, owners).await? {
            self.metrics.created.inc();
            return Ok(claimed);
        }
        // Sandboxes waiting in pools count: they hold the host's resources as instances do.
        let room = self.reserve_live(1).map_err(|live| self.operator_full(live, 1))?;
        for _ in 0..8 {
            let id = format!("{}-{}", spec.env_name, random_suffix(6));
            let mut obj = EnvInstance::new(&id, spec.clone());
            obj.metadata.namespace = Some(self.namespace.clone());
            let now = Timestamp::now();
            obj.stamp_expiry(now).map_err(|e| UseCaseError::Invalid(format!("field `deployConfig.ttl`: {e}")))?;
            if let Some(room) = &room {
                room.writes(&self.key(&id));
            }
            match self.stores.instances.create(obj, now).await {
                Ok(stored) => {
                    info!(instance = %id, env = %spec.env_name, "instance accepted");
                    self.metrics.created.inc();
                    return Ok(stored);
                }
                Err(Error::AlreadyExists(_)) => continue,
                Err(source) => {
                    warn!(error = %source, "could not record an instance");
                    return Err(UseCaseError::store("the instance could not be recorded", source));
                }
            }
        }
        Err(UseCaseError::Busy("could not draw a free instance id; try again".into()))
    }

    /// Records on `inst` that the SDK's `mount_points` (`unmounted`, their local directories) were accepted and
    /// not mounted, so that its `message` says so (an annotation: the spec, which pools match on, stays as asked).
    /// Best effort: the instance is made either way.
    pub async fn note_unmounted(&self, inst: Arc<EnvInstance>, unmounted: &[String]) -> Arc<EnvInstance> {
        if unmounted.is_empty() {
            return inst;
        }
        let key = crate::store::key_of(inst.as_ref());
        let note = unmounted.join(", ");
        let mut attempts = super::retry::Attempts::new();
        while attempts.next().await {
            let Some(current) = self.stores.instances.get(&key) else { break };
            let mut next = (*current).clone();
            next.metadata.annotations.get_or_insert_default().insert(UNMOUNTED_ANNOTATION.into(), note.clone());
            match self.stores.instances.replace(&next).await {
                Ok(Some(stored)) => return stored,
                Ok(None) => break,
                Err(Error::Conflict(_)) => continue,
                Err(source) => {
                    warn!(instance = %key, error = %source, "could not record the unmounted mount points");
                    break;
                }
            }
        }
        self.stores.instances.get(&key).unwrap_or(inst)
    }

    /// `created` once it serves (running, its readiness probe passed), fails or goes, or as it is after
    /// `--create-wait`: so that a client's first request after the answer finds a server, instead of polling
    /// (the SDK sleeps 2 s between looks) and then meeting a sandbox that does not listen yet. A claimed
    /// sandbox is ready already and answers at once.
    pub async fn settled(&self, created: Arc<EnvInstance>) -> Arc<EnvInstance> {
        if self.create_wait.is_zero() {
            return created;
        }
        let key = crate::store::key_of(created.as_ref());
        let settled =
            |i: Option<&EnvInstance>| i.is_none_or(|i| i.is_deleting() || i.phase().is_terminal() || i.is_ready());
        crate::store::wait_for(self.stores.instances.as_ref(), &key, self.create_wait, settled).await.unwrap_or(created)
    }

    /// The refusal of `more` instances past `--max-instances` when `live` are held.
    fn operator_full(&self, live: usize, more: usize) -> UseCaseError {
        let max = self.limits.limits.max_instances.unwrap_or_default();
        UseCaseError::Forbidden(format!(
            "the operator holds its limit of {max} live instances{}; try again when some are gone",
            if more == 1 { String::new() } else { format!(" ({live} live, {more} asked for)") }
        ))
    }

    /// Refuses `more` new instances for `caller` that its cap or the operator's would refuse now (the creates
    /// check again as they record).
    pub(super) fn check_instance_room(&self, caller: Option<&Principal>, more: usize) -> Result<(), UseCaseError> {
        self.check_owner_room(caller, Adding::Instance, more, Except::Nothing)?;
        self.reserve_live(more).map(drop).map_err(|live| self.operator_full(live, more))
    }

    /// The instance `id`, if `caller` may see it.
    pub fn instance(&self, id: &str, caller: Option<&Principal>) -> Option<Arc<EnvInstance>> {
        self.stores.instances.get(&self.key(id)).filter(|inst| Self::visible(inst, caller))
    }

    /// Asks for an instance's deletion; `None` when there is no such instance (or `caller` may not see it).
    pub async fn delete(&self, id: &str, caller: Option<&Principal>) -> Result<Option<()>, UseCaseError> {
        if self.instance(id, caller).is_none() {
            return Ok(None);
        }
        match self.stores.instances.request_delete(&self.key(id), Timestamp::now()).await {
            Ok(Some(_)) => {
                info!(instance = %id, "deletion requested");
                Ok(Some(()))
            }
            Ok(None) => Ok(None),
            Err(source) => Err(UseCaseError::store("the deletion could not be recorded", source)),
        }
    }

    /// Instances of `name[@version]` (`*` or empty: all), optionally of one status, in the API's namespace, that
    /// `caller` may see.
    pub fn matching(
        &self,
        pattern: Option<&str>,
        status: Option<&str>,
        caller: Option<&Principal>,
    ) -> Vec<Arc<EnvInstance>> {
        let pattern = pattern.filter(|p| !p.is_empty() && *p != "*");
        let (name, version) = match pattern.map(|p| p.split_once('@')) {
            Some(Some((n, v))) => (Some(n), Some(v)),
            Some(None) => (pattern, None),
            None => (None, None),
        };
        let status = status.filter(|s| !s.is_empty());
        let namespace = self.namespace.as_str();
        self.stores.instances.list_where(&|inst: &EnvInstance| {
            inst.metadata.namespace.as_deref() == Some(namespace)
                && Self::visible(inst, caller)
                && name.is_none_or(|n| inst.spec.env_name == n)
                && version.is_none_or(|v| inst.spec.env_version == v)
                && status.is_none_or(|s| status_string(inst) == s)
        })
    }
}
