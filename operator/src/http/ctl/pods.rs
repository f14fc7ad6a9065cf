//! `/pods`: the AEnvironment controller's API (§1 of the wire contract), so that an AEnvironment api-service can
//! point `--schedule-addr` at this operator instead of its controller. Bodies are what the Go controller writes:
//! JSON with a trailing newline, fields in its order, and plain-text errors (`http.Error`).

use std::{collections::HashMap, sync::Arc};

use aenv_core::{EnvInstance, Phase};
use jiff::Timestamp;
use serde::Serialize;
use warp::{
    Filter, Reply,
    http::{StatusCode, header::CONTENT_TYPE},
    hyper::body::Bytes,
};

use crate::http::{
    ApiError, Caller, MAX_BODY_BYTES,
    body::create::{Strictness, parse_create},
    query::Param,
    wire, with_services,
};
use crate::usecase::{Principal, UseCases};

#[derive(Serialize)]
struct Envelope<T> {
    success: bool,
    code: i32,
    data: T,
}

/// `POST /pods` and `GET /pods/{id}`.
#[derive(Serialize)]
struct Pod {
    id: String,
    status: String,
    ip: String,
    ttl: String,
    owner: String,
}

/// An item of `GET /pods`.
#[derive(Serialize)]
struct PodItem {
    id: String,
    status: String,
    ttl: String,
    created_at: String,
    envname: String,
    version: String,
    ip: String,
    owner: String,
}

/// A Go controller answer: the envelope as JSON with a trailing newline (`json.NewEncoder`).
pub(super) fn json_line<T: Serialize>(status: StatusCode, data: T) -> warp::reply::Response {
    let mut body = serde_json::to_string(&Envelope { success: true, code: 0, data }).unwrap_or_default();
    body.push('\n');
    warp::reply::with_status(warp::reply::with_header(body, CONTENT_TYPE, "application/json"), status).into_response()
}

/// A Go controller error: plain text with a trailing newline (`http.Error`).
pub(super) fn text_error(status: u16, message: &str) -> warp::reply::Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    warp::reply::with_status(
        warp::reply::with_header(format!("{message}\n"), CONTENT_TYPE, "text/plain; charset=utf-8"),
        status,
    )
    .into_response()
}

/// A Pod's phase: there is no `Creating` on Kubernetes.
fn pod_status(inst: &EnvInstance) -> String {
    match inst.phase() {
        Phase::Creating => Phase::Pending.as_str().to_string(),
        phase => phase.as_str().to_string(),
    }
}

fn pod(inst: &EnvInstance) -> Pod {
    Pod {
        id: inst.metadata.name.clone().unwrap_or_default(),
        status: pod_status(inst),
        ip: inst.status.as_ref().and_then(|s| s.ip.clone()).unwrap_or_default(),
        ttl: inst.spec.ttl.clone().unwrap_or_default(),
        owner: inst.spec.owner.clone().unwrap_or_default(),
    }
}

fn item(inst: &EnvInstance) -> PodItem {
    let p = pod(inst);
    PodItem {
        id: p.id,
        status: p.status,
        ttl: p.ttl,
        created_at: inst.metadata.creation_timestamp.as_ref().map(|t| wire::format_time(t.0)).unwrap_or_default(),
        envname: inst.spec.env_name.clone(),
        version: inst.spec.env_version.clone(),
        ip: p.ip,
        owner: p.owner,
    }
}

/// Expired as the controller judges it: `now - created > ttl`, strictly; no TTL never expires.
fn expired(inst: &EnvInstance, now: Timestamp) -> bool {
    inst.expires_at().ok().flatten().is_some_and(|exp| now > exp)
}

/// Turns a refusal into the controller's plain-text error: `Invalid request body` for a 400, as the controller
/// words a body it cannot decode, else `failed to create pod failed`.
fn create_error(e: ApiError) -> warp::reply::Response {
    if e.status == 400 {
        text_error(400, &format!("Invalid request body: {}", e.message))
    } else {
        text_error(e.status, &format!("failed to create pod failed: err is {}", e.message))
    }
}

async fn create_pod(svc: &UseCases, body: &[u8], caller: Option<Principal>) -> warp::reply::Response {
    let spec = match parse_create(body, Strictness::Lenient)
        .map_err(ApiError::from)
        .and_then(|(request, _)| svc.resolve(request, caller.as_ref()).map_err(ApiError::from))
    {
        Ok(spec) => spec,
        Err(e) => return create_error(e),
    };
    match svc.create(spec, caller.as_ref()).await {
        Ok(inst) => {
            // The controller answers with the Pod as created: Pending, no IP, and no TTL filled in.
            let mut p = pod(&inst);
            p.ttl = String::new();
            json_line(StatusCode::CREATED, p)
        }
        Err(e) => {
            let e = ApiError::from(e);
            text_error(e.status, &format!("failed to create pod failed: err is {}", e.message))
        }
    }
}

fn get_pod(svc: &UseCases, id: &str, caller: Option<Principal>) -> warp::reply::Response {
    match svc.instance(id, caller.as_ref()) {
        Some(inst) => json_line(StatusCode::OK, pod(&inst)),
        None => text_error(404, &format!("failed to get pod failed: err is pods \"{id}\" not found")),
    }
}

async fn delete_pod(svc: &UseCases, id: &str, caller: Option<Principal>) -> warp::reply::Response {
    match svc.delete(id, caller.as_ref()).await.map_err(ApiError::from) {
        Ok(Some(())) => json_line(StatusCode::OK, true),
        Ok(None) => text_error(404, &format!("failed to delete Pod failed: err is pods \"{id}\" not found")),
        Err(e) => text_error(e.status, &format!("failed to delete Pod failed: err is {}", e.message)),
    }
}

fn list_pods(svc: &UseCases, query: &HashMap<String, String>, caller: Option<Principal>) -> warp::reply::Response {
    let now = Timestamp::now();
    let only_expired = query.get("filter").is_some_and(|f| f == "expired");
    let env_name = query.get("envName").filter(|n| !n.is_empty());
    let items: Vec<PodItem> = svc
        .matching(None, None, caller.as_ref())
        .iter()
        .filter(|i| env_name.is_none_or(|n| &i.spec.env_name == n))
        .filter(|i| !only_expired || expired(i, now))
        .map(|i| item(i))
        .collect();
    // The Go controller encodes an empty list as null.
    if items.is_empty() { json_line(StatusCode::OK, Option::<()>::None) } else { json_line(StatusCode::OK, items) }
}

/// The query of `GET /pods`: the controller knows one filter.
const LIST_QUERY: &[Param] = &[Param::one_of("filter", &["expired"]), Param::text("envName")];

/// The `/pods` routes.
pub fn routes(
    svc: Arc<UseCases>,
    who: Caller,
) -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone {
    let create = warp::path!("pods")
        .and(warp::post())
        .and(who.clone())
        .and(warp::body::content_length_limit(MAX_BODY_BYTES))
        .and(warp::body::bytes())
        .and(with_services(svc.clone()))
        .then(|c: Option<Principal>, body: Bytes, svc: Arc<UseCases>| async move { create_pod(&svc, &body, c).await });
    let list = warp::path!("pods")
        .and(warp::get())
        .and(who.clone())
        .and(crate::http::query::query(LIST_QUERY))
        .and(with_services(svc.clone()))
        .map(|c: Option<Principal>, q: HashMap<String, String>, svc: Arc<UseCases>| list_pods(&svc, &q, c));
    // `GET /pods/` is getPod("") upstream.
    let missing = warp::get().and(warp::path::full()).and_then(|p: warp::path::FullPath| async move {
        if p.as_str() == "/pods/" { Ok(text_error(400, "missing pod name")) } else { Err(warp::reject::not_found()) }
    });
    let get = warp::path!("pods" / String)
        .and(warp::get())
        .and(who.clone())
        .and(with_services(svc.clone()))
        .map(|id: String, c: Option<Principal>, svc: Arc<UseCases>| get_pod(&svc, &id, c));
    let delete = warp::path!("pods" / String)
        .and(warp::delete())
        .and(who)
        .and(with_services(svc))
        .then(|id: String, c: Option<Principal>, svc: Arc<UseCases>| async move { delete_pod(&svc, &id, c).await });
    missing.or(create).unify().or(list).unify().or(get).unify().or(delete).unify()
}
