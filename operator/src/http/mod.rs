//! The REST API (warp), answered from the stores' in-memory indexes through [`crate::usecase`]:
//! - `/env-instance`: the AEnvironment api-service API the SDK uses ([`instances`]);
//! - `/env-instance/{id}/pty`: an interactive terminal over a WebSocket ([`pty`]);
//! - `/env-instance/{id}/exec`, `/files`: commands and files in a running sandbox ([`sandbox`]);
//! - `/env`: Environment templates, as envhub serves them, with image warmup ([`templates`]);
//! - `/env-pool`: warm pools, whose ready sandboxes serve `/env-instance` creates ([`pools`]);
//! - `/env-service`: long-running services with replicas and storage ([`env_services`]);
//! - `/pods` and `/services`: the AEnvironment Go controller's API, for an api-service pointed at this operator
//!   ([`ctl`]);
//! - the data-plane proxy on its own listener ([`proxy`]).
//!
//! Handlers decode the request bodies ([`body`]), call a use-case, and render its answer ([`wire`]) or its
//! [`UseCaseError`] as one [`ApiError`]. With leader election, a follower forwards the writes that take quota to
//! the leader before any of them ([`forward`]).

pub mod auth;
pub mod body;
mod ctl;
mod env_services;
pub mod forward;
mod instances;
mod pools;
pub mod proxy;
mod pty;
pub mod query;
mod sandbox;
pub mod server;
mod stream;
mod templates;
pub mod wire;

use std::{
    convert::Infallible,
    sync::{Arc, LazyLock},
    time::Duration,
};

use serde_json::Value;
use warp::{
    Filter, Rejection, Reply,
    http::{Method, StatusCode},
    path::FullPath,
};

use crate::usecase::{Principal, UseCaseError, UseCases, whole_seconds};

/// Largest request body accepted (1 MiB).
pub const MAX_BODY_BYTES: u64 = 1024 * 1024;

/// The OpenAPI document of the REST API (also at docs/openapi.json).
pub const OPENAPI: &str = include_str!("../../../docs/openapi.json");

/// An error answer: the HTTP status doubles as the envelope's `code`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    /// The request field at fault (`deployConfig.cpu`), when one is: sent as the envelope's `field`.
    pub field: Option<String>,
    /// Sent as `Retry-After` (whole seconds, rounded up).
    pub retry_after: Option<Duration>,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), field: None, retry_after: None }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, message)
    }

    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    pub(crate) fn into_reply(self) -> warp::reply::Response {
        let status = self.status_code();
        let mut reply = warp::reply::with_status(
            warp::reply::json(&wire::error(self.status, &self.message, self.field.as_deref())),
            status,
        )
        .into_response();
        if let Some(after) = self.retry_after {
            reply.headers_mut().insert(warp::http::header::RETRY_AFTER, whole_seconds(after).into());
        }
        reply
    }
}

impl From<UseCaseError> for ApiError {
    fn from(e: UseCaseError) -> Self {
        let status = match &e {
            UseCaseError::Invalid(_) | UseCaseError::Refused(_) => 400,
            UseCaseError::NotFound(_) => 404,
            UseCaseError::Forbidden(_) => 403,
            UseCaseError::Conflict(_) => 409,
            UseCaseError::RateLimited { .. } | UseCaseError::Overloaded { .. } => 429,
            UseCaseError::Store { .. } | UseCaseError::Busy(_) => 503,
            UseCaseError::TooLarge(_) => 413,
            UseCaseError::Engine(e) => engine_status(e.kind()),
        };
        let retry_after = match &e {
            UseCaseError::RateLimited { retry_after } | UseCaseError::Overloaded { retry_after, .. } => {
                Some(*retry_after)
            }
            _ => None,
        };
        let field = match &e {
            UseCaseError::Refused(spec) => Some(spec.field.clone()),
            _ => None,
        };
        ApiError { status, message: e.to_string(), field, retry_after }
    }
}

/// The answer to an engine's failure of an operation on a sandbox.
fn engine_status(kind: aenv_core::ErrorKind) -> u16 {
    use aenv_core::ErrorKind as K;
    match kind {
        K::NotFound => 404,
        K::Conflict => 409,
        K::TooLarge => 413,
        K::Permanent => 400,
        K::Unsupported => 501,
        K::Unavailable | K::Transient => 503,
        K::StartFailed => 500,
    }
}

fn ok_reply(data: Value) -> warp::reply::Response {
    warp::reply::json(&wire::ok(data)).into_response()
}

fn reply<E: Into<ApiError>>(result: Result<Value, E>) -> warp::reply::Response {
    match result {
        Ok(data) => ok_reply(data),
        Err(e) => e.into().into_reply(),
    }
}

fn with_services(svc: Arc<UseCases>) -> impl Filter<Extract = (Arc<UseCases>,), Error = Infallible> + Clone {
    warp::any().map(move || svc.clone())
}

/// The filter that yields the caller of a request (see [`auth::caller`]).
type Caller = warp::filters::BoxedFilter<(Option<Principal>,)>;

/// Every route of the API listener; with `forwarder` (leader election), the writes that take quota go to the
/// leader from a follower.
pub fn routes(
    svc: Arc<UseCases>,
    auth: Arc<auth::Auth>,
    forwarder: Option<Arc<forward::Forwarder>>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Infallible> + Clone {
    let who: Caller = auth::caller(auth).boxed();
    let forward = forwarder.map(|f| forward::routes(f, who.clone()));
    let health =
        warp::path!("health").and(warp::get()).map(|| warp::reply::json(&serde_json::json!({})).into_response());
    let healthz = warp::path!("healthz").and(warp::get()).map(|| "ok".into_response());
    // Ready when the store takes writes and the engine answers.
    let readyz =
        warp::path!("readyz").and(warp::get()).and(with_services(svc.clone())).then(|svc: Arc<UseCases>| async move {
            let store = svc.stores.instances.write_failure().map(|reason| format!("store: {reason}"));
            let engine = match store {
                Some(reason) => Err(reason),
                None => svc.engine.ping().await.map_err(|e| e.to_string()),
            };
            match engine {
                Ok(()) => warp::reply::json(&serde_json::json!({
                    "status": "ready",
                    "engine": svc.engine.name(),
                    "memoryCheckpoints": svc.engine.checkpoints(),
                }))
                .into_response(),
                Err(e) => warp::reply::with_status(
                    warp::reply::json(
                        &serde_json::json!({"status": "not ready", "engine": svc.engine.name(), "reason": e}),
                    ),
                    StatusCode::SERVICE_UNAVAILABLE,
                )
                .into_response(),
            }
        });
    let openapi = warp::path!("openapi.json")
        .and(warp::get())
        .map(|| warp::reply::with_header(OPENAPI, "content-type", "application/json").into_response());
    let metrics = warp::path!("metrics").and(warp::get()).and(with_services(svc.clone())).map(|svc: Arc<UseCases>| {
        let body = svc.metrics.render(svc.stores.instances.as_ref());
        warp::reply::with_header(body, "content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")
            .into_response()
    });
    let api = instances::routes(svc.clone(), who.clone())
        .or(sandbox::routes(svc.clone(), who.clone()))
        .unify()
        .or(pty::routes(svc.clone(), who.clone()))
        .unify()
        .or(templates::routes(svc.clone(), who.clone()))
        .unify()
        .or(pools::routes(svc.clone(), who.clone()))
        .unify()
        .or(env_services::routes(svc.clone(), who.clone()))
        .unify()
        .or(ctl::pods::routes(svc.clone(), who.clone()))
        .unify()
        .or(ctl::services::routes(svc, who))
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
        .unify();
    // Without leader election the routes are the same as they always were.
    let api = match forward {
        Some(forward) => forward.or(api).unify().boxed(),
        None => api.boxed(),
    };
    // The request's method and path stay at hand for the answer to a rejection (a 405's `Allow`).
    warp::method()
        .and(warp::path::full())
        .and(api.map(Ok::<_, Rejection>).or_else(|rej| async move { Ok::<_, Rejection>((Err(rej),)) }))
        .map(|method: Method, path: FullPath, answer: Result<warp::reply::Response, Rejection>| {
            answer.unwrap_or_else(|rej| refusal(&method, path.as_str(), &rej))
        })
        .recover(|rej: Rejection| async move { Ok::<_, Infallible>(refusal(&Method::GET, "", &rej)) })
        .unify()
}

/// The methods the API answers on `path`, from the paths of the OpenAPI document (a `{name}` segment stands
/// for any one segment), sorted; empty for a path it does not have.
pub fn allowed_methods(path: &str) -> Vec<&'static str> {
    static PATHS: LazyLock<Vec<(Vec<String>, Vec<&'static str>)>> = LazyLock::new(|| {
        const METHODS: &[&str] = &["GET", "PUT", "POST", "DELETE", "PATCH", "HEAD", "OPTIONS"];
        let doc: Value = serde_json::from_str(OPENAPI).unwrap_or_default();
        let Some(paths) = doc.get("paths").and_then(Value::as_object) else {
            return Vec::new();
        };
        paths
            .iter()
            .map(|(template, ops)| {
                let segments = template.trim_start_matches('/').split('/').map(str::to_string).collect();
                let methods = METHODS.iter().copied().filter(|m| ops.get(m.to_ascii_lowercase()).is_some()).collect();
                (segments, methods)
            })
            .collect()
    });
    let asked: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let mut methods: Vec<&'static str> = PATHS
        .iter()
        .filter(|(template, _)| {
            template.len() == asked.len()
                && template
                    .iter()
                    .zip(&asked)
                    .all(|(t, a)| if t.starts_with('{') && t.ends_with('}') { !a.is_empty() } else { t == a })
        })
        .flat_map(|(_, methods)| methods.iter().copied())
        .collect();
    methods.sort_unstable();
    methods.dedup();
    methods
}

/// Turns warp's rejections of `method path` into the envelope, with the status they stand for.
fn refusal(method: &Method, path: &str, rej: &Rejection) -> warp::reply::Response {
    let err = if let Some(auth::Refused(e)) = rej.find::<auth::Refused>() {
        e.clone()
    } else if let Some(query::BadQuery(e)) = rej.find::<query::BadQuery>() {
        // The route of this method and path was found, and its query refused: before the 405 of the path's
        // routes of other methods.
        e.clone()
    } else if rej.is_not_found() {
        ApiError::not_found("no such route; see /openapi.json")
    } else if rej.find::<warp::reject::PayloadTooLarge>().is_some() {
        ApiError::new(413, format!("the request body is larger than {MAX_BODY_BYTES} bytes"))
    } else if rej.find::<warp::reject::LengthRequired>().is_some() {
        // Before the method: a route of this method and path was found, and only the body is missing (another
        // route of the path, of another method, would otherwise answer 405).
        ApiError::new(
            411,
            "the request body is missing: send a JSON object (with a Content-Length header) as application/json",
        )
    } else if rej.find::<warp::reject::InvalidQuery>().is_some() {
        ApiError::bad_request("the query string is not valid")
    } else if rej.find::<warp::reject::MethodNotAllowed>().is_some() {
        let allowed = allowed_methods(path).join(", ");
        let mut reply =
            ApiError::new(405, format!("method {method} is not allowed on {path}; it answers {allowed}")).into_reply();
        if let Ok(value) = warp::http::HeaderValue::from_str(&allowed) {
            reply.headers_mut().insert(warp::http::header::ALLOW, value);
        }
        return reply;
    } else {
        ApiError::bad_request(format!("bad request: {rej:?}"))
    };
    err.into_reply()
}
