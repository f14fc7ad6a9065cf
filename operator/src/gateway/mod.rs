//! The REST gateway (warp), answered from the stores' in-memory indexes:
//! - `/env-instance`: the AEnvironment api-service API the SDK uses ([`instances`]);
//! - `/env`: Environment templates, as envhub serves them, with image warmup ([`templates`]);
//! - `/pods`: the AEnvironment controller's API, for an api-service pointed at this operator ([`controller`]);
//! - the data-plane proxy on its own listener ([`proxy`]).

mod controller;
mod create;
pub mod guard;
mod instances;
pub mod proxy;
mod templates;
pub mod wire;

use std::{convert::Infallible, sync::Arc};

use aenv_core::{Engine, EnvInstance, EnvInstanceSpec, Environment};
use jiff::Timestamp;
use serde_json::Value;
use tracing::{info, warn};
use warp::{Filter, Rejection, Reply, http::StatusCode};

pub use create::{CreateRequest, Overrides, Strictness, parse_create};

use crate::{
    Error,
    metrics::Metrics,
    store::{ObjectStore, random_suffix},
};

/// Largest request body accepted (1 MiB).
pub const MAX_BODY_BYTES: u64 = 1024 * 1024;

/// The OpenAPI document of the REST API (also at docs/openapi.json).
pub const OPENAPI: &str = include_str!("../../../docs/openapi.json");

/// An error answer: the HTTP status doubles as the envelope's `code`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self { status: 400, message: message.into() }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self { status: 404, message: message.into() }
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self { status: 403, message: message.into() }
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self { status: 409, message: message.into() }
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self { status: 503, message: message.into() }
    }

    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn into_reply(self) -> warp::reply::Response {
        let status = self.status_code();
        let mut reply = warp::reply::with_status(warp::reply::json(&wire::error(self.status, &self.message)), status)
            .into_response();
        if self.status == 429
            && let Some(after) = guard::retry_after(&self.message)
        {
            reply.headers_mut().insert(warp::http::header::RETRY_AFTER, after);
        }
        reply
    }
}

/// What the gateway needs.
pub struct Gateway {
    pub instances: Arc<dyn ObjectStore<EnvInstance>>,
    pub templates: Arc<dyn ObjectStore<Environment>>,
    /// Asked to validate specs before they are stored, and to pre-pull images.
    pub engine: Arc<dyn Engine>,
    pub metrics: Arc<Metrics>,
    /// TTL applied when a request names none (Go duration syntax).
    pub default_ttl: String,
    /// Namespace of the objects the REST API makes.
    pub namespace: String,
    /// Image warmups, by `name@version`.
    pub warmups: templates::Warmups,
    /// Authentication and limits.
    pub guard: Arc<guard::Guard>,
    /// Held from the quota check to the record, so that concurrent creates cannot overshoot a cap.
    quota: tokio::sync::Mutex<()>,
}

impl Gateway {
    pub fn new(
        instances: Arc<dyn ObjectStore<EnvInstance>>,
        templates: Arc<dyn ObjectStore<Environment>>,
        engine: Arc<dyn Engine>,
        metrics: Arc<Metrics>,
        default_ttl: String,
        namespace: String,
        guard: Arc<guard::Guard>,
    ) -> Self {
        Gateway {
            instances,
            templates,
            engine,
            metrics,
            default_ttl,
            namespace,
            warmups: Default::default(),
            guard,
            quota: Default::default(),
        }
    }

    /// Whether `caller` may see `inst`: everyone when auth is off; the owner otherwise.
    fn visible(inst: &EnvInstance, caller: Option<&guard::Principal>) -> bool {
        caller.is_none_or(|p| inst.spec.owner.as_deref() == Some(p.owner.as_str()))
    }

    fn key(&self, name: &str) -> String {
        crate::store::key(&self.namespace, name)
    }

    /// Turns a create body into a spec: inline, or a template with the SDK's overrides.
    fn resolve(&self, body: &[u8], strictness: Strictness) -> Result<EnvInstanceSpec, ApiError> {
        let spec = match parse_create(body, Some(&self.default_ttl), strictness)? {
            CreateRequest::Inline(spec) => *spec,
            CreateRequest::FromTemplate { name, version, overrides } => {
                let template = self.find_template(&name, &version).ok_or_else(|| {
                    ApiError::not_found(format!(
                        "environment \"{name}@{version}\" not found: register it with POST /env, or send the inline body with name, version and artifacts"
                    ))
                })?;
                overrides.apply(&template.spec.template, &name, &version, &self.default_ttl)
            }
        };
        self.engine.validate(&spec).map_err(|e| ApiError::bad_request(e.message))?;
        Ok(spec)
    }

    fn find_template(&self, name: &str, version: &str) -> Option<Arc<Environment>> {
        self.templates
            .get(&self.key(&Environment::object_name(name, version)))
            .filter(|t| t.spec.name == name && t.spec.version == version && t.metadata.deletion_timestamp.is_none())
    }

    /// Records a new instance of `spec` for `caller` (whose name becomes the owner), within the rate limit and the
    /// caps; its id is `<name>-<6 random [a-z0-9]>`, as AEnvironment names pods.
    async fn create_instance(
        &self,
        mut spec: EnvInstanceSpec,
        caller: Option<&guard::Principal>,
    ) -> Result<Arc<EnvInstance>, ApiError> {
        self.guard.take_create()?;
        let _one_at_a_time = self.quota.lock().await;
        if let Some(p) = caller {
            spec.owner = Some(p.owner.clone());
            if let Some(max) = p.max_instances {
                let held =
                    self.instances.list_where(&|i: &EnvInstance| !i.is_deleting() && Self::visible(i, caller)).len();
                if held >= max {
                    return Err(ApiError::forbidden(format!(
                        "Instance count exceeds limit: {max} (owner {} holds {held}; delete one first)",
                        p.owner
                    )));
                }
            }
        }
        if let Some(max) = self.guard.limits.max_instances {
            let live = self.instances.list_where(&|i: &EnvInstance| !i.is_deleting()).len();
            if live >= max {
                return Err(ApiError::forbidden(format!(
                    "the operator holds its limit of {max} live instances; try again when some are gone"
                )));
            }
        }
        for _ in 0..8 {
            let id = format!("{}-{}", spec.env_name, random_suffix(6));
            let mut obj = EnvInstance::new(&id, spec.clone());
            obj.metadata.namespace = Some(self.namespace.clone());
            let now = Timestamp::now();
            obj.stamp_expiry(now).map_err(|e| ApiError::bad_request(format!("field `deployConfig.ttl`: {e}")))?;
            match self.instances.create(obj, now).await {
                Ok(stored) => {
                    info!(instance = %id, env = %spec.env_name, "instance accepted");
                    self.metrics.created.inc();
                    return Ok(stored);
                }
                Err(Error::AlreadyExists(_)) => continue,
                Err(e) => {
                    warn!(error = %e, "could not record an instance");
                    return Err(ApiError::unavailable(format!("the instance could not be recorded: {e}")));
                }
            }
        }
        Err(ApiError::unavailable("could not draw a free instance id; try again"))
    }

    /// Asks for an instance's deletion; `None` when there is no such instance (or `caller` may not see it).
    async fn delete_instance(&self, id: &str, caller: Option<&guard::Principal>) -> Result<Option<()>, ApiError> {
        if self.instances.get(&self.key(id)).is_none_or(|i| !Self::visible(&i, caller)) {
            return Ok(None);
        }
        match self.instances.request_delete(&self.key(id), Timestamp::now()).await {
            Ok(Some(_)) => {
                info!(instance = %id, "deletion requested");
                Ok(Some(()))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(ApiError::unavailable(format!("the deletion could not be recorded: {e}"))),
        }
    }
}

fn ok_reply(data: Value) -> warp::reply::Response {
    warp::reply::json(&wire::ok(data)).into_response()
}

fn reply(result: Result<Value, ApiError>) -> warp::reply::Response {
    match result {
        Ok(data) => ok_reply(data),
        Err(e) => e.into_reply(),
    }
}

fn with_gateway(gw: Arc<Gateway>) -> impl Filter<Extract = (Arc<Gateway>,), Error = Infallible> + Clone {
    warp::any().map(move || gw.clone())
}

/// Every route of the API listener.
pub fn routes(gw: Arc<Gateway>) -> impl Filter<Extract = (warp::reply::Response,), Error = Infallible> + Clone {
    let health =
        warp::path!("health").and(warp::get()).map(|| warp::reply::json(&serde_json::json!({})).into_response());
    let healthz = warp::path!("healthz").and(warp::get()).map(|| "ok".into_response());
    // Ready when the store is open (it is, while this serves) and the engine answers.
    let readyz = warp::path!("readyz").and(warp::get()).and(with_gateway(gw.clone())).then(|gw: Arc<Gateway>| async move {
        match gw.engine.ping().await {
            Ok(()) => warp::reply::json(&serde_json::json!({"status": "ready", "engine": gw.engine.name()})).into_response(),
            Err(e) => warp::reply::with_status(
                warp::reply::json(&serde_json::json!({"status": "not ready", "engine": gw.engine.name(), "reason": e.to_string()})),
                StatusCode::SERVICE_UNAVAILABLE,
            )
            .into_response(),
        }
    });
    let openapi = warp::path!("openapi.json")
        .and(warp::get())
        .map(|| warp::reply::with_header(OPENAPI, "content-type", "application/json").into_response());
    let metrics = warp::path!("metrics").and(warp::get()).and(with_gateway(gw.clone())).map(|gw: Arc<Gateway>| {
        let body = gw.metrics.render(gw.instances.as_ref());
        warp::reply::with_header(body, "content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")
            .into_response()
    });
    instances::routes(gw.clone())
        .or(templates::routes(gw.clone()))
        .unify()
        .or(controller::routes(gw))
        .unify()
        .or(health)
        .unify()
        .or(healthz)
        .unify()
        .or(readyz)
        .unify()
        .or(openapi)
        .unify()
        .or(metrics)
        .unify()
        .recover(recover)
        .unify()
}

/// Turns warp's rejections into the envelope, with the status they stand for.
async fn recover(rej: Rejection) -> Result<warp::reply::Response, Infallible> {
    let err = if let Some(guard::Refused(e)) = rej.find::<guard::Refused>() {
        e.clone()
    } else if rej.is_not_found() {
        ApiError::not_found("no such route; see /openapi.json")
    } else if rej.find::<warp::reject::PayloadTooLarge>().is_some() {
        ApiError { status: 413, message: format!("the request body is larger than {MAX_BODY_BYTES} bytes") }
    } else if rej.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError { status: 405, message: "method not allowed on this route".into() }
    } else if rej.find::<warp::reject::InvalidQuery>().is_some() {
        ApiError::bad_request("the query string is not valid")
    } else if rej.find::<warp::reject::LengthRequired>().is_some() {
        ApiError { status: 411, message: "a Content-Length header is required".into() }
    } else {
        ApiError::bad_request(format!("bad request: {rej:?}"))
    };
    Ok(err.into_reply())
}
