//! The REST gateway (warp): the AEnvironment `/env-instance` API, answered from the store's in-memory index.

mod create;
pub mod wire;

use std::{collections::HashMap, convert::Infallible, sync::Arc};

use aenv_core::{Engine, EnvInstance};
use jiff::Timestamp;
use serde_json::Value;
use tracing::{info, warn};
use warp::{Filter, Rejection, Reply, http::StatusCode, hyper::body::Bytes};

pub use create::{CreateRequest, parse_create};

use crate::{
    Error,
    metrics::Metrics,
    store::{ObjectStore, key, random_suffix},
};

/// Largest request body accepted (1 MiB).
pub const MAX_BODY_BYTES: u64 = 1024 * 1024;

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

    fn unavailable(message: impl Into<String>) -> Self {
        Self { status: 503, message: message.into() }
    }

    fn into_reply(self) -> warp::reply::Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        warp::reply::with_status(warp::reply::json(&wire::error(self.status, &self.message)), status).into_response()
    }
}

/// What the gateway needs.
pub struct Gateway {
    pub store: Arc<dyn ObjectStore<EnvInstance>>,
    /// Asked to validate specs before they are stored.
    pub engine: Arc<dyn Engine>,
    pub metrics: Arc<Metrics>,
    /// TTL applied when a request names none (Go duration syntax).
    pub default_ttl: String,
    /// Namespace instances made through the API live in (`default` in the embedded store).
    pub namespace: String,
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

impl Gateway {
    async fn create(&self, body: Bytes) -> Result<Value, ApiError> {
        let spec = match parse_create(&body, &self.default_ttl)? {
            CreateRequest::Inline(spec) => *spec,
            CreateRequest::FromTemplate { name, version } => {
                return Err(ApiError::not_found(format!(
                    "environment \"{name}@{version}\" not found: no Environment template by that name is registered; send the inline body with name, version and artifacts instead"
                )));
            }
        };
        self.engine.validate(&spec).map_err(ApiError::bad_request)?;
        // The id is `<name>-<6 random [a-z0-9]>`, as AEnvironment names pods; a clash draws again.
        for _ in 0..8 {
            let id = format!("{}-{}", spec.env_name, random_suffix(6));
            let mut obj = EnvInstance::new(&id, spec.clone());
            obj.metadata.namespace = Some(self.namespace.clone());
            match self.store.create(obj, Timestamp::now()).await {
                Ok(stored) => {
                    info!(instance = %id, env = %spec.env_name, "instance accepted");
                    self.metrics.created.inc();
                    return Ok(wire::instance(&stored));
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

    fn get(&self, id: &str) -> Result<Value, ApiError> {
        self.store
            .get(&key(&self.namespace, id))
            .map(|inst| wire::instance(&inst))
            .ok_or_else(|| ApiError::not_found(format!("env instance \"{id}\" not found")))
    }

    async fn delete(&self, id: &str) -> Result<Value, ApiError> {
        match self.store.request_delete(&key(&self.namespace, id), Timestamp::now()).await {
            Ok(Some(_)) => {
                info!(instance = %id, "deletion requested");
                Ok(Value::from("Deleted successfully"))
            }
            Ok(None) => Err(ApiError::not_found(format!("env instance \"{id}\" not found"))),
            Err(e) => Err(ApiError::unavailable(format!("the deletion could not be recorded: {e}"))),
        }
    }

    /// `?envName=name` or `?envName=name@version`; no filter lists everything.
    fn list(&self, query: &HashMap<String, String>) -> Value {
        let filter = query.get("envName").filter(|s| !s.is_empty() && s.as_str() != "*");
        let (name, version) = match filter {
            Some(f) => match f.split_once('@') {
                Some((n, v)) => (Some(n), Some(v)),
                None => (Some(f.as_str()), None),
            },
            None => (None, None),
        };
        let items = self.store.list_where(&|inst: &EnvInstance| {
            name.is_none_or(|n| inst.spec.env_name == n) && version.is_none_or(|v| inst.spec.env_version == v)
        });
        Value::Array(items.iter().map(|i| wire::instance(i)).collect())
    }
}

/// All routes.
pub fn routes(gw: Arc<Gateway>) -> impl Filter<Extract = (warp::reply::Response,), Error = Infallible> + Clone {
    let with_gw = {
        let gw = gw.clone();
        warp::any().map(move || gw.clone())
    };
    let create = warp::path!("env-instance")
        .and(warp::post())
        .and(warp::body::content_length_limit(MAX_BODY_BYTES))
        .and(warp::body::bytes())
        .and(with_gw.clone())
        .then(|body: Bytes, gw: Arc<Gateway>| async move { reply(gw.create(body).await) });
    let list = warp::path!("env-instance")
        .and(warp::get())
        .and(warp::query::<HashMap<String, String>>())
        .and(with_gw.clone())
        .map(|q: HashMap<String, String>, gw: Arc<Gateway>| ok_reply(gw.list(&q)));
    let get = warp::path!("env-instance" / String)
        .and(warp::get())
        .and(with_gw.clone())
        .map(|id: String, gw: Arc<Gateway>| reply(gw.get(&id)));
    let delete = warp::path!("env-instance" / String)
        .and(warp::delete())
        .and(with_gw.clone())
        .then(|id: String, gw: Arc<Gateway>| async move { reply(gw.delete(&id).await) });
    let health =
        warp::path!("health").and(warp::get()).map(|| warp::reply::json(&serde_json::json!({})).into_response());
    let healthz = warp::path!("healthz").and(warp::get()).map(|| "ok".into_response());
    let metrics = warp::path!("metrics").and(warp::get()).and(with_gw).map(|gw: Arc<Gateway>| {
        let body = gw.metrics.render(gw.store.as_ref());
        warp::reply::with_header(body, "content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")
            .into_response()
    });
    create
        .or(list)
        .unify()
        .or(get)
        .unify()
        .or(delete)
        .unify()
        .or(health)
        .unify()
        .or(healthz)
        .unify()
        .or(metrics)
        .unify()
        .recover(recover)
        .unify()
}

/// Turns warp's rejections into the envelope, with the status they stand for.
async fn recover(rej: Rejection) -> Result<warp::reply::Response, Infallible> {
    let err = if rej.is_not_found() {
        ApiError::not_found("no such route; see the REST API in the README")
    } else if rej.find::<warp::reject::PayloadTooLarge>().is_some() {
        ApiError { status: 413, message: format!("the request body is larger than {MAX_BODY_BYTES} bytes") }
    } else if rej.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError { status: 405, message: "method not allowed on this route".into() }
    } else if rej.find::<warp::reject::InvalidQuery>().is_some() {
        ApiError::bad_request("the query string is not valid")
    } else {
        ApiError::bad_request(format!("bad request: {rej:?}"))
    };
    Ok(err.into_reply())
}
