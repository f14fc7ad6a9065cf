//! `/env-service`: long-running services in the AEnvironment envelope, as the SDK 0.1.7 calls them. `POST
//! /env-service` makes one, `GET /env-service/{id}` shows one, `GET /env-service/{name|*}/list` lists them, `PUT
//! /env-service/{id}` `{"replicas"?, "image"?, "environment_variables"?}` changes one (rolling), `DELETE
//! /env-service/{id}?deleteStorage=true` removes one (with its storage when asked).

use std::{collections::HashMap, sync::Arc};

use serde_json::Value;
use warp::{Filter, hyper::body::Bytes};

use super::{
    ApiError, Caller, MAX_BODY_BYTES,
    body::env_services::{parse_create, parse_update},
    query::{self, Param},
    reply, wire, with_services,
};
use crate::usecase::{Principal, UseCases};

fn render(svc: &UseCases, s: &aenv_core::EnvService) -> Value {
    let template = s.spec.template().and_then(|(n, v)| match &s.spec.template {
        // An inline template (made through the controller API's /services) renders as an Env of that name.
        Some(inline) => Some(Arc::new(aenv_core::Environment::new(
            &aenv_core::Environment::object_name(n, v),
            aenv_core::EnvironmentSpec {
                name: n.into(),
                version: v.into(),
                template: (**inline).clone(),
                ..Default::default()
            },
        ))),
        None => svc.find_template(n, v),
    });
    let available = svc.available_replicas(s);
    let url = match svc.native_address(s) {
        Some(address) => Some(format!("http://{address}")),
        None => svc
            .proxy_url
            .as_deref()
            .map(|p| format!("{p}/env-service/{}", s.metadata.name.as_deref().unwrap_or_default())),
    };
    wire::service(s, template.as_deref(), available, url.as_deref())
}

/// The query of a delete.
pub(super) const DELETE_QUERY: &[Param] = &[Param::one_of("deleteStorage", &["true", "false"])];

/// The `/env-service` routes.
pub fn routes(
    svc: Arc<UseCases>,
    who: Caller,
) -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone {
    let body = warp::body::content_length_limit(MAX_BODY_BYTES).and(warp::body::bytes());
    let create =
        warp::path!("env-service").and(warp::post()).and(who.clone()).and(body).and(with_services(svc.clone())).then(
            |c: Option<Principal>, body: Bytes, svc: Arc<UseCases>| async move {
                let made = async {
                    let request = parse_create(&body)?;
                    let made = svc.create_service(request, c.as_ref()).await?;
                    Ok::<_, ApiError>(render(&svc, &made))
                };
                reply(made.await)
            },
        );
    let list = warp::path!("env-service" / String / "list")
        .and(warp::get())
        .and(who.clone())
        .and(with_services(svc.clone()))
        .map(|env: String, c: Option<Principal>, svc: Arc<UseCases>| {
            let items = svc.list_services(&env, c.as_ref()).iter().map(|s| render(&svc, s)).collect();
            reply::<ApiError>(Ok(Value::Array(items)))
        });
    let get =
        warp::path!("env-service" / String).and(warp::get()).and(who.clone()).and(with_services(svc.clone())).map(
            |id: String, c: Option<Principal>, svc: Arc<UseCases>| {
                reply(svc.service(&id, c.as_ref()).map(|s| render(&svc, &s)))
            },
        );
    let update = warp::path!("env-service" / String)
        .and(warp::put())
        .and(who.clone())
        .and(body)
        .and(with_services(svc.clone()))
        .then(|id: String, c: Option<Principal>, body: Bytes, svc: Arc<UseCases>| async move {
            let updated = async {
                let update = parse_update(&body)?;
                let s = svc.update_service(&id, update, c.as_ref()).await?;
                Ok::<_, ApiError>(render(&svc, &s))
            };
            reply(updated.await)
        });
    let delete = warp::path!("env-service" / String)
        .and(warp::delete())
        .and(query::query(DELETE_QUERY))
        .and(who.clone())
        .and(with_services(svc.clone()))
        .then(|id: String, q: HashMap<String, String>, c: Option<Principal>, svc: Arc<UseCases>| async move {
            let result = async {
                let delete_storage = match q.get("deleteStorage").map(String::as_str) {
                    None | Some("false") => false,
                    Some("true") => true,
                    Some(other) => {
                        return Err(ApiError::bad_request(format!(
                            "query `deleteStorage` must be true or false (got {other:?})"
                        )));
                    }
                };
                svc.delete_service(&id, delete_storage, c.as_ref()).await?;
                Ok(Value::from("Deleted successfully"))
            };
            reply(result.await)
        });
    let logs_query = query::query(super::instances::LOGS_QUERY);
    let replicas = warp::path!("env-service" / String / "replicas")
        .and(warp::get())
        .and(who.clone())
        .and(with_services(svc.clone()))
        .map(|id: String, c: Option<Principal>, svc: Arc<UseCases>| reply(replicas(&svc, &id, c.as_ref())));
    let logs = warp::path!("env-service" / String / "replicas" / String / "logs")
        .and(warp::get())
        .and(who)
        .and(logs_query)
        .and(with_services(svc))
        .map(|id: String, replica: String, c: Option<Principal>, q: HashMap<String, String>, svc: Arc<UseCases>| {
            replica_logs(&svc, &id, &replica, c.as_ref(), &q).unwrap_or_else(ApiError::into_reply)
        });
    create.or(replicas).unify().or(logs).unify().or(list).unify().or(get).unify().or(update).unify().or(delete).unify()
}

/// A service the engine runs natively has no replica of its own to show.
fn native_refusal(svc: &UseCases, s: &aenv_core::EnvService) -> Result<(), ApiError> {
    match svc.native_address(s) {
        None => Ok(()),
        Some(_) => Err(ApiError::new(
            501,
            format!(
                "service \"{}\" runs as a Kubernetes Deployment: list its Pods with `kubectl get pods -l aenv.io/service={0}` and read their output with `kubectl logs`",
                s.metadata.name.as_deref().unwrap_or_default()
            ),
        )),
    }
}

/// `GET /env-service/{id}/replicas`: the service's replicas, oldest first: `id`, `status`, `ready`, `ip`,
/// `created_at`, `message`. Only the owner's service (404 otherwise).
fn replicas(svc: &UseCases, id: &str, caller: Option<&Principal>) -> Result<Value, ApiError> {
    let s = svc.service(id, caller)?;
    native_refusal(svc, &s)?;
    let mut members = svc.replicas_of(&s);
    members.sort_by_key(|m| (m.metadata.creation_timestamp.as_ref().map(|t| t.0), m.metadata.name.clone()));
    Ok(Value::Array(
        members
            .iter()
            .map(|m| {
                let status = m.status.clone().unwrap_or_default();
                serde_json::json!({
                    "id": m.metadata.name.clone().unwrap_or_default(),
                    "status": m.phase().to_string(),
                    "ready": m.member_state() == aenv_core::MemberState::Ready,
                    "ip": status.ip.unwrap_or_default(),
                    "created_at": m.metadata.creation_timestamp.as_ref().map(|t| wire::format_time(t.0)).unwrap_or_default(),
                    "message": status.message.unwrap_or_default(),
                })
            })
            .collect(),
    ))
}

/// `GET /env-service/{id}/replicas/{replica}/logs?follow=true&tail=N`: one replica's output as plain text. The
/// replica must be one of the service's, and the service the caller's.
fn replica_logs(
    svc: &UseCases,
    id: &str,
    replica: &str,
    caller: Option<&Principal>,
    q: &HashMap<String, String>,
) -> Result<warp::reply::Response, ApiError> {
    let s = svc.service(id, caller)?;
    native_refusal(svc, &s)?;
    let member =
        svc.replicas_of(&s).into_iter().find(|m| m.metadata.name.as_deref() == Some(replica)).ok_or_else(|| {
            ApiError::not_found(format!(
                "service \"{id}\" has no replica \"{replica}\"; list them with GET /env-service/{id}/replicas"
            ))
        })?;
    super::instances::stream_logs(svc, &member, q)
}
