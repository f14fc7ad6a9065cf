//! The REST API (warp), answered from the stores' in-memory indexes through [`crate::service`]:
//! - `/env-instance`: the AEnvironment api-service API the SDK uses ([`instances`]);
//! - `/env-instance/{id}/exec`, `/files`: commands and files in a running sandbox ([`sandbox`]);
//! - `/env`: Environment templates, as envhub serves them, with image warmup ([`templates`]);
//! - `/env-pool`: warm pools, whose ready sandboxes serve `/env-instance` creates ([`pools`]);
//! - `/env-service`: long-running services with replicas and storage ([`services`]);
//! - `/pods`: the AEnvironment controller's API, for an api-service pointed at this operator ([`pods`]), and its
//!   `/services` ([`ctl_services`]);
//! - the data-plane proxy on its own listener ([`proxy`]).
//!
//! Handlers parse the wire format ([`request`]), call a use-case, and render its answer ([`wire`]) or its
//! [`ServiceError`] as one [`ApiError`].

pub mod auth;
mod ctl_services;
mod instances;
mod pods;
mod pools;
pub mod proxy;
pub mod request;
mod sandbox;
pub mod server;
mod services;
mod templates;
pub mod wire;

use std::{convert::Infallible, sync::Arc, time::Duration};

use serde_json::Value;
use warp::{Filter, Rejection, Reply, http::StatusCode};

use crate::service::{Principal, ServiceError, Services, whole_seconds};

/// Largest request body accepted (1 MiB).
pub const MAX_BODY_BYTES: u64 = 1024 * 1024;

/// The OpenAPI document of the REST API (also at docs/openapi.json).
pub const OPENAPI: &str = include_str!("../../../docs/openapi.json");

/// An error answer: the HTTP status doubles as the envelope's `code`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    /// Sent as `Retry-After` (whole seconds, rounded up).
    pub retry_after: Option<Duration>,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), retry_after: None }
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

    fn into_reply(self) -> warp::reply::Response {
        let status = self.status_code();
        let mut reply = warp::reply::with_status(warp::reply::json(&wire::error(self.status, &self.message)), status)
            .into_response();
        if let Some(after) = self.retry_after {
            reply.headers_mut().insert(warp::http::header::RETRY_AFTER, whole_seconds(after).into());
        }
        reply
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        let status = match &e {
            ServiceError::Invalid(_) => 400,
            ServiceError::NotFound(_) => 404,
            ServiceError::Forbidden(_) => 403,
            ServiceError::Conflict(_) => 409,
            ServiceError::RateLimited { .. } => 429,
            ServiceError::Store { .. } | ServiceError::Busy(_) => 503,
            ServiceError::TooLarge(_) => 413,
            ServiceError::Engine(e) => engine_status(e.kind()),
        };
        let retry_after = match &e {
            ServiceError::RateLimited { retry_after } => Some(*retry_after),
            _ => None,
        };
        ApiError { status, message: e.to_string(), retry_after }
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

fn with_services(svc: Arc<Services>) -> impl Filter<Extract = (Arc<Services>,), Error = Infallible> + Clone {
    warp::any().map(move || svc.clone())
}

/// The filter that yields the caller of a request (see [`auth::caller`]).
type Caller = warp::filters::BoxedFilter<(Option<Principal>,)>;

/// Every route of the API listener.
pub fn routes(
    svc: Arc<Services>,
    auth: Arc<auth::Auth>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Infallible> + Clone {
    let who: Caller = auth::caller(auth).boxed();
    let health =
        warp::path!("health").and(warp::get()).map(|| warp::reply::json(&serde_json::json!({})).into_response());
    let healthz = warp::path!("healthz").and(warp::get()).map(|| "ok".into_response());
    // Ready when the store is open (it is, while this serves) and the engine answers.
    let readyz = warp::path!("readyz").and(warp::get()).and(with_services(svc.clone())).then(|svc: Arc<Services>| async move {
        match svc.engine.ping().await {
            Ok(()) => warp::reply::json(&serde_json::json!({
                "status": "ready",
                "engine": svc.engine.name(),
                "memoryCheckpoints": svc.engine.checkpoints(),
            }))
            .into_response(),
            Err(e) => warp::reply::with_status(
                warp::reply::json(&serde_json::json!({"status": "not ready", "engine": svc.engine.name(), "reason": e.to_string()})),
                StatusCode::SERVICE_UNAVAILABLE,
            )
            .into_response(),
        }
    });
    let openapi = warp::path!("openapi.json")
        .and(warp::get())
        .map(|| warp::reply::with_header(OPENAPI, "content-type", "application/json").into_response());
    let metrics = warp::path!("metrics").and(warp::get()).and(with_services(svc.clone())).map(|svc: Arc<Services>| {
        let body = svc.metrics.render(svc.instances.as_ref());
        warp::reply::with_header(body, "content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")
            .into_response()
    });
    instances::routes(svc.clone(), who.clone())
        .or(sandbox::routes(svc.clone(), who.clone()))
        .unify()
        .or(templates::routes(svc.clone(), who.clone()))
        .unify()
        .or(pools::routes(svc.clone(), who.clone()))
        .unify()
        .or(services::routes(svc.clone(), who.clone()))
        .unify()
        .or(pods::routes(svc.clone(), who.clone()))
        .unify()
        .or(ctl_services::routes(svc, who))
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
    let err = if let Some(auth::Refused(e)) = rej.find::<auth::Refused>() {
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
    } else if rej.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::new(405, "method not allowed on this route")
    } else if rej.find::<warp::reject::InvalidQuery>().is_some() {
        ApiError::bad_request("the query string is not valid")
    } else {
        ApiError::bad_request(format!("bad request: {rej:?}"))
    };
    Ok(err.into_reply())
}
