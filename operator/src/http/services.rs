//! `/env-service`: long-running services in the AEnvironment envelope, as the SDK 0.1.7 calls them. `POST
//! /env-service` makes one, `GET /env-service/{id}` shows one, `GET /env-service/{name|*}/list` lists them, `PUT
//! /env-service/{id}` `{"replicas"?, "image"?, "environment_variables"?}` changes one (rolling), `DELETE
//! /env-service/{id}?deleteStorage=true` removes one (with its storage when asked).

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use serde_json::{Map, Value};
use warp::{Filter, hyper::body::Bytes};

use super::{
    ApiError, Caller, MAX_BODY_BYTES, reply,
    request::{object, only},
    wire, with_services,
};
use crate::service::{Principal, ServiceRequest, ServiceUpdate, Services};

/// The fields of `POST /env-service` (the SDK's `EnvServiceCreateRequest`).
const CREATE_FIELDS: &[&str] = &[
    "envName",
    "service_name",
    "replicas",
    "environment_variables",
    "owner",
    "pvc_name",
    "mount_path",
    "storage_size",
    "port",
    "cpu_request",
    "cpu_limit",
    "memory_request",
    "memory_limit",
    "ephemeral_storage_request",
    "ephemeral_storage_limit",
    "ready_timeout_seconds",
];

/// The fields of `PUT /env-service/{id}` (the SDK's `EnvServiceUpdateRequest`).
const UPDATE_FIELDS: &[&str] = &["replicas", "image", "environment_variables"];

fn string(obj: &Map<String, Value>, field: &str) -> Result<Option<String>, ApiError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.trim().to_string())),
        Some(v) => Err(ApiError::bad_request(format!("field `{field}` must be a string (got {v})"))),
    }
}

fn integer(obj: &Map<String, Value>, field: &str) -> Result<Option<i64>, ApiError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .map(Some)
            .ok_or_else(|| ApiError::bad_request(format!("field `{field}` must be a whole number (got {v})"))),
    }
}

fn variables(obj: &Map<String, Value>) -> Result<Option<BTreeMap<String, String>>, ApiError> {
    match obj.get("environment_variables") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(vars)) => vars
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                other => Err(ApiError::bad_request(format!(
                    "field `environment_variables.{k}` must be a string (got {other})"
                ))),
            })
            .collect::<Result<_, _>>()
            .map(Some),
        Some(v) => Err(ApiError::bad_request(format!(
            "field `environment_variables` must be an object of strings, such as {{\"MODE\": \"prod\"}} (got {v})"
        ))),
    }
}

/// `POST /env-service`'s body.
pub fn parse_create(body: &[u8]) -> Result<ServiceRequest, ApiError> {
    let obj = object(body)?;
    only(&obj, CREATE_FIELDS)?;
    let env_name = string(&obj, "envName")?.filter(|s| !s.is_empty()).ok_or_else(|| {
        ApiError::bad_request("field `envName` is required: name@version of an environment, such as \"mini@1.0.0\"")
    })?;
    // Requests and ephemeral storage are checked as quantities here (the field named at once).
    for field in ["cpu_request", "memory_request", "ephemeral_storage_request", "ephemeral_storage_limit"] {
        let Some(q) = string(&obj, field)? else { continue };
        let ok = if field.starts_with("cpu") {
            aenv_core::quantity::parse_cpu_millis(&q).is_ok()
        } else {
            aenv_core::quantity::parse_memory_bytes(&q).is_ok()
        };
        if !ok {
            return Err(ApiError::bad_request(format!(
                "field `{field}` must be a quantity such as \"1\" or \"2Gi\" (got {q:?})"
            )));
        }
    }
    let request = ServiceRequest {
        env_name,
        service_name: string(&obj, "service_name")?,
        replicas: integer(&obj, "replicas")?,
        env: variables(&obj)?.unwrap_or_default(),
        pvc_name: string(&obj, "pvc_name")?,
        mount_path: string(&obj, "mount_path")?,
        storage_size: string(&obj, "storage_size")?,
        port: integer(&obj, "port")?,
        cpu: string(&obj, "cpu_limit")?,
        memory: string(&obj, "memory_limit")?,
        requests: aenv_core::Resources { cpu: string(&obj, "cpu_request")?, memory: string(&obj, "memory_request")? },
        ephemeral_storage: aenv_core::envservice::EphemeralStorage {
            request: string(&obj, "ephemeral_storage_request")?,
            limit: string(&obj, "ephemeral_storage_limit")?,
        },
        owner: string(&obj, "owner")?.filter(|o| !o.is_empty()),
        ready_timeout_seconds: integer(&obj, "ready_timeout_seconds")?,
        inline: None,
    };
    Ok(request)
}

/// `PUT /env-service/{id}`'s body.
pub fn parse_update(body: &[u8]) -> Result<ServiceUpdate, ApiError> {
    let obj = object(body)?;
    only(&obj, UPDATE_FIELDS)?;
    let update =
        ServiceUpdate { replicas: integer(&obj, "replicas")?, image: string(&obj, "image")?, env: variables(&obj)? };
    if update == ServiceUpdate::default() {
        return Err(ApiError::bad_request(
            "nothing to change: give at least one of `replicas`, `image`, `environment_variables`",
        ));
    }
    Ok(update)
}

fn render(svc: &Services, s: &aenv_core::EnvService) -> Value {
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
        None => {
            svc.proxy_url.get().map(|p| format!("{p}/env-service/{}", s.metadata.name.as_deref().unwrap_or_default()))
        }
    };
    wire::service(s, template.as_deref(), available, url.as_deref())
}

#[derive(serde::Deserialize)]
struct DeleteQuery {
    #[serde(default, rename = "deleteStorage")]
    delete_storage: Option<String>,
}

/// The `/env-service` routes.
pub fn routes(
    svc: Arc<Services>,
    who: Caller,
) -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone {
    let body = warp::body::content_length_limit(MAX_BODY_BYTES).and(warp::body::bytes());
    let create =
        warp::path!("env-service").and(warp::post()).and(who.clone()).and(body).and(with_services(svc.clone())).then(
            |c: Option<Principal>, body: Bytes, svc: Arc<Services>| async move {
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
        .map(|env: String, c: Option<Principal>, svc: Arc<Services>| {
            let items = svc.list_services(&env, c.as_ref()).iter().map(|s| render(&svc, s)).collect();
            reply::<ApiError>(Ok(Value::Array(items)))
        });
    let get =
        warp::path!("env-service" / String).and(warp::get()).and(who.clone()).and(with_services(svc.clone())).map(
            |id: String, c: Option<Principal>, svc: Arc<Services>| {
                reply(svc.service(&id, c.as_ref()).map(|s| render(&svc, &s)))
            },
        );
    let update = warp::path!("env-service" / String)
        .and(warp::put())
        .and(who.clone())
        .and(body)
        .and(with_services(svc.clone()))
        .then(|id: String, c: Option<Principal>, body: Bytes, svc: Arc<Services>| async move {
            let updated = async {
                let update = parse_update(&body)?;
                let s = svc.update_service(&id, update, c.as_ref()).await?;
                Ok::<_, ApiError>(render(&svc, &s))
            };
            reply(updated.await)
        });
    let delete = warp::path!("env-service" / String)
        .and(warp::delete())
        .and(warp::query::<DeleteQuery>())
        .and(who.clone())
        .and(with_services(svc.clone()))
        .then(|id: String, q: DeleteQuery, c: Option<Principal>, svc: Arc<Services>| async move {
            let result = async {
                let delete_storage = match q.delete_storage.as_deref() {
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
    let query = warp::query::<HashMap<String, String>>();
    let replicas = warp::path!("env-service" / String / "replicas")
        .and(warp::get())
        .and(who.clone())
        .and(with_services(svc.clone()))
        .map(|id: String, c: Option<Principal>, svc: Arc<Services>| reply(replicas(&svc, &id, c.as_ref())));
    let logs = warp::path!("env-service" / String / "replicas" / String / "logs")
        .and(warp::get())
        .and(who)
        .and(query)
        .and(with_services(svc))
        .map(|id: String, replica: String, c: Option<Principal>, q: HashMap<String, String>, svc: Arc<Services>| {
            replica_logs(&svc, &id, &replica, c.as_ref(), &q).unwrap_or_else(ApiError::into_reply)
        });
    create.or(replicas).unify().or(logs).unify().or(list).unify().or(get).unify().or(update).unify().or(delete).unify()
}

/// A service the engine runs natively has no replica of its own to show.
fn native_refusal(svc: &Services, s: &aenv_core::EnvService) -> Result<(), ApiError> {
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
fn replicas(svc: &Services, id: &str, caller: Option<&Principal>) -> Result<Value, ApiError> {
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
    svc: &Services,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_checked_with_the_field_named() {
        let ok = parse_create(
            br#"{"envName":"mini@1.0.0","service_name":"web","replicas":2,"environment_variables":{"A":"1"},"owner":"me","port":8081,"cpu_request":"1","cpu_limit":"2"}"#,
        )
        .unwrap();
        assert_eq!(
            (ok.replicas, ok.port, ok.cpu.as_deref(), ok.owner.as_deref()),
            (Some(2), Some(8081), Some("2"), Some("me"))
        );
        for (body, field) in [
            (&br#"{"replicas":1}"#[..], "`envName`"),
            (br#"{"envName":"m@1","replicas":"2"}"#, "`replicas`"),
            (br#"{"envName":"m@1","replicas":1.5}"#, "`replicas`"),
            (br#"{"envName":"m@1","environment_variables":{"A":1}}"#, "`environment_variables.A`"),
            (br#"{"envName":"m@1","environment_variables":[]}"#, "`environment_variables`"),
            (br#"{"envName":"m@1","memory_request":"lots"}"#, "`memory_request`"),
            (br#"{"envName":"m@1","size":3}"#, "`size`"),
        ] {
            let e = parse_create(body).unwrap_err();
            assert!(e.status == 400 && e.message.contains(field), "{}: {}", String::from_utf8_lossy(body), e.message);
        }
        assert!(parse_update(b"{}").unwrap_err().message.contains("nothing to change"));
        assert!(parse_update(br#"{"replicas":-1}"#).is_ok(), "the range is the service's to check");
        assert!(parse_update(br#"{"image":3}"#).unwrap_err().message.contains("`image`"));
    }
}
