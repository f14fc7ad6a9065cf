//! `/env-instance`: the AEnvironment api-service API that the Python SDK and CLI use.

use std::{collections::HashMap, sync::Arc};

use futures::StreamExt;
use serde_json::{Value, json};
use warp::{Filter, Reply, hyper::body::Bytes};

use super::{
    ApiError, Caller, MAX_BODY_BYTES,
    body::create::{Strictness, parse_create},
    query::{self, Param},
    reply, wire, with_services,
};
use crate::usecase::{Principal, UseCases};

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("env instance \"{id}\" not found"))
}

async fn create(svc: &UseCases, body: &[u8], caller: Option<Principal>) -> Result<Value, ApiError> {
    let (request, _) = parse_create(body, Strictness::Strict)?;
    let unmounted = request.unmounted();
    let spec = svc.resolve(request, caller.as_ref())?;
    let created = svc.create(spec, caller.as_ref()).await?;
    let created = svc.note_unmounted(created, &unmounted).await;
    Ok(wire::instance(&*svc.settled(created).await))
}

async fn delete(svc: &UseCases, id: &str, caller: Option<Principal>) -> Result<Value, ApiError> {
    match svc.delete(id, caller.as_ref()).await? {
        Some(()) => Ok(Value::from("Deleted successfully")),
        None => Err(not_found(id)),
    }
}

/// Instances matching `pattern` and the `status` query, rendered.
fn rendered(
    svc: &UseCases,
    pattern: Option<&str>,
    q: &HashMap<String, String>,
    caller: Option<Principal>,
) -> Vec<Value> {
    let status = q.get("status").map(String::as_str);
    svc.matching(pattern, status, caller.as_ref()).iter().map(|i| wire::instance(i)).collect()
}

/// The query of the lists: a template pattern and an instance status.
const LIST_QUERY: &[Param] = &[Param::text("envName"), Param::one_of("status", query::STATUSES)];

/// The query of a log read (an instance's or a service replica's).
pub(super) const LOGS_QUERY: &[Param] = &[Param::count("tail"), Param::bool("follow")];

/// The `/env-instance` routes.
pub fn routes(
    svc: Arc<UseCases>,
    who: Caller,
) -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone {
    let query = query::query(LIST_QUERY);
    let create = warp::path!("env-instance")
        .and(warp::post())
        .and(who.clone())
        .and(warp::body::content_length_limit(MAX_BODY_BYTES))
        .and(warp::body::bytes())
        .and(with_services(svc.clone()))
        .then(
            |c: Option<Principal>, body: Bytes, svc: Arc<UseCases>| async move { reply(create(&svc, &body, c).await) },
        );
    // `GET /env-instance?envName=` (the Docker-engine guide): an array.
    let list =
        warp::path!("env-instance").and(warp::get()).and(who.clone()).and(query).and(with_services(svc.clone())).map(
            |c: Option<Principal>, q: HashMap<String, String>, svc: Arc<UseCases>| {
                reply::<ApiError>(Ok(Value::Array(rendered(&svc, q.get("envName").map(String::as_str), &q, c))))
            },
        );
    // `GET /env-instance/list`: `{"items": [...]}`, which the SDK's list_env_instances() reads (upstream answers
    // 500 there).
    let list_items = warp::path!("env-instance" / "list")
        .and(warp::get())
        .and(who.clone())
        .and(query)
        .and(with_services(svc.clone()))
        .map(|c: Option<Principal>, q: HashMap<String, String>, svc: Arc<UseCases>| {
            let items = rendered(&svc, q.get("envName").map(String::as_str), &q, c);
            reply::<ApiError>(Ok(json!({"items": items})))
        })
        // Answered here: `GET /env-instance/{id}` would otherwise take `list` for an id.
        .recover(query::refused)
        .unify();
    // `GET /env-instance/{*|name|name@version}/list`: an array, as the api-service and the CLI have it.
    let list_of = warp::path!("env-instance" / String / "list")
        .and(warp::get())
        .and(who.clone())
        .and(query)
        .and(with_services(svc.clone()))
        .map(|pattern: String, c: Option<Principal>, q: HashMap<String, String>, svc: Arc<UseCases>| {
            let pattern = if pattern == "*" { q.get("envName").cloned().unwrap_or(pattern) } else { pattern };
            reply::<ApiError>(Ok(Value::Array(rendered(&svc, Some(&pattern), &q, c))))
        });
    let get =
        warp::path!("env-instance" / String).and(warp::get()).and(who.clone()).and(with_services(svc.clone())).map(
            |id: String, c: Option<Principal>, svc: Arc<UseCases>| {
                reply(svc.instance(&id, c.as_ref()).map(|i| wire::instance(&i)).ok_or_else(|| not_found(&id)))
            },
        );
    let delete =
        warp::path!("env-instance" / String).and(warp::delete()).and(who.clone()).and(with_services(svc.clone())).then(
            |id: String, c: Option<Principal>, svc: Arc<UseCases>| async move { reply(delete(&svc, &id, c).await) },
        );
    let logs = warp::path!("env-instance" / String / "logs")
        .and(warp::get())
        .and(who)
        .and(query::query(LOGS_QUERY))
        .and(with_services(svc))
        .map(|id: String, c: Option<Principal>, q: HashMap<String, String>, svc: Arc<UseCases>| {
            logs(&svc, &id, c, &q).unwrap_or_else(ApiError::into_reply)
        });
    create
        .or(list_items)
        .unify()
        .or(list_of)
        .unify()
        .or(logs)
        .unify()
        .or(list)
        .unify()
        .or(get)
        .unify()
        .or(delete)
        .unify()
}

/// `GET /env-instance/{id}/logs?follow=true&tail=N`: the container's output as plain text, streamed.
fn logs(
    svc: &UseCases,
    id: &str,
    caller: Option<Principal>,
    q: &HashMap<String, String>,
) -> Result<warp::reply::Response, ApiError> {
    let inst = svc.instance(id, caller.as_ref()).ok_or_else(|| not_found(id))?;
    stream_logs(svc, &inst, q)
}

/// The output of `inst` as plain text, streamed, as `?follow=true&tail=N` ask (the instance's and a service
/// replica's logs alike).
pub(super) fn stream_logs(
    svc: &UseCases,
    inst: &aenv_core::EnvInstance,
    q: &HashMap<String, String>,
) -> Result<warp::reply::Response, ApiError> {
    let follow = match q.get("follow").map(String::as_str) {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!("query `follow` must be true or false (got {other:?})")));
        }
    };
    let tail = match q.get("tail").map(|t| t.parse::<u64>()) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => return Err(ApiError::bad_request("query `tail` must be a number of lines")),
    };
    let stream = svc.engine.logs(inst, follow, tail).map(|chunk| {
        // An error ends the stream, saying why, in the text itself.
        Ok::<_, std::convert::Infallible>(match chunk {
            Ok(bytes) => Bytes::from(bytes),
            Err(e) => Bytes::from(format!("\n[aenv-operator: {e}]\n")),
        })
    });
    // A follow of a silent container ends when its client goes, not at the container's next line.
    let body = warp::reply::stream(super::stream::pump(stream, None));
    Ok(warp::reply::with_header(body, "content-type", "text/plain; charset=utf-8").into_response())
}
