//! `/env`: Environment templates, as AEnvironment's envhub serves them (`GET /env/{name}/{version}`), and image
//! warmup, which AEnvironment has only as an unrouted handler: `POST /env/{name}/{version}/warmup` pre-pulls
//! every image the template runs, `GET` on the same path shows the progress. With tokens on, a template belongs to
//! the tenant that registered it: see [`crate::usecase::TemplateAccess`].

use std::{collections::HashMap, sync::Arc};

use serde_json::{Value, json};
use warp::{Filter, Reply, hyper::body::Bytes};

use super::{
    ApiError, Caller, MAX_BODY_BYTES,
    body::create::{CreateRequest, Strictness, parse_create, parse_create_object},
    reply, wire, with_services,
};
use crate::usecase::{Principal, UseCases};

async fn register(svc: &UseCases, body: &[u8], caller: Option<Principal>) -> Result<Value, ApiError> {
    let spec = match parse_create(body, Strictness::Strict)? {
        (CreateRequest::Inline(spec), meta) => svc.register_template(*spec, meta, caller.as_ref()).await?,
        (CreateRequest::FromTemplate { .. }, _) => {
            return Err(ApiError::bad_request(
                "an Environment is registered with name, version and artifacts (or deployConfig.composeFile), not envName",
            ));
        }
    };
    Ok(wire::template(&spec))
}

/// `PUT /env/{name}/{version}`: the body is an Env as `POST /env` takes it; a `name` or `version` it gives must be
/// the path's.
async fn update(
    svc: &UseCases,
    name: &str,
    version: &str,
    body: &[u8],
    caller: Option<Principal>,
) -> Result<Value, ApiError> {
    let mut obj = super::body::object(body, r#"{"name": "NAME", "version": "VERSION", "artifacts": [...]}"#)?;
    for (field, want) in [("name", name), ("version", version)] {
        match obj.get(field) {
            None | Some(Value::Null) => {
                obj.insert(field.into(), Value::from(want));
            }
            Some(Value::String(given)) if given == want => {}
            Some(given) => {
                return Err(ApiError {
                    field: Some(field.into()),
                    ..ApiError::bad_request(format!(
                        "field `{field}` is {given}, but the path names {want:?}: they must agree (or leave it out)"
                    ))
                });
            }
        }
    }
    match parse_create_object(obj, Strictness::Strict)? {
        (CreateRequest::Inline(spec), meta) => {
            let t = svc.update_template(*spec, meta, caller.as_ref()).await?;
            Ok(wire::template(&t))
        }
        (CreateRequest::FromTemplate { .. }, _) => {
            Err(ApiError::bad_request("an Environment is updated with its artifacts and deployConfig, not envName"))
        }
    }
}

/// The `/env` routes.
pub fn routes(
    svc: Arc<UseCases>,
    who: Caller,
) -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone {
    let create = warp::path!("env")
        .and(warp::post())
        .and(who.clone())
        .and(warp::body::content_length_limit(MAX_BODY_BYTES))
        .and(warp::body::bytes())
        .and(with_services(svc.clone()))
        .then(|caller: Option<Principal>, body: Bytes, svc: Arc<UseCases>| async move {
            reply(register(&svc, &body, caller).await)
        });
    let list = warp::path!("env")
        .and(warp::get())
        .and(who.clone())
        .and(super::query::query({
            const LIST: &[super::query::Param] = &[super::query::Param::text("name")];
            LIST
        }))
        .and(with_services(svc.clone()))
        .map(|caller: Option<Principal>, q: HashMap<String, String>, svc: Arc<UseCases>| {
            let items = svc.list_templates(q.get("name").map(String::as_str), caller.as_ref());
            reply::<ApiError>(Ok(Value::Array(items.iter().map(|t| wire::template(t)).collect())))
        });
    let get =
        warp::path!("env" / String / String).and(warp::get()).and(who.clone()).and(with_services(svc.clone())).map(
            |n: String, v: String, caller: Option<Principal>, svc: Arc<UseCases>| {
                reply(svc.template(&n, &v, caller.as_ref()).map(|t| wire::template(&t)))
            },
        );
    let delete =
        warp::path!("env" / String / String).and(warp::delete()).and(who.clone()).and(with_services(svc.clone())).then(
            |n: String, v: String, caller: Option<Principal>, svc: Arc<UseCases>| async move {
                reply(svc.delete_template(&n, &v, caller.as_ref()).await.map(|()| Value::from("Deleted successfully")))
            },
        );
    let warmup = warp::path!("env" / String / String / "warmup")
        .and(warp::post())
        .and(who.clone())
        .and(with_services(svc.clone()))
        .map(|n: String, v: String, caller: Option<Principal>, svc: Arc<UseCases>| {
            let r = reply(svc.start_warmup(&n, &v, caller.as_ref()).map(|s| wire::warmup(&s)));
            if r.status().is_success() {
                warp::reply::with_status(r, warp::http::StatusCode::ACCEPTED).into_response()
            } else {
                r
            }
        });
    let warmup_state = warp::path!("env" / String / String / "warmup")
        .and(warp::get())
        .and(who.clone())
        .and(with_services(svc.clone()))
        .map(|n: String, v: String, caller: Option<Principal>, svc: Arc<UseCases>| {
            reply(svc.warmup_state(&n, &v, caller.as_ref()).map(|s| wire::warmup(&s)))
        });
    // envhub's routes for the `aenv` CLI (`init`, `push`): whether a version exists, its status, an update, a
    // release. A template the caller may not see does not exist for it.
    let exists = warp::path!("env" / String / String / "exists")
        .and(warp::get())
        .and(who.clone())
        .and(with_services(svc.clone()))
        .map(|n: String, v: String, caller: Option<Principal>, svc: Arc<UseCases>| {
            reply::<ApiError>(Ok(match svc.template(&n, &v, caller.as_ref()) {
                Ok(t) => json!({"exists": true, "status": wire::template_status(&t)}),
                Err(_) => json!({"exists": false}),
            }))
        });
    let status = warp::path!("env" / String / String / "status")
        .and(warp::get())
        .and(who.clone())
        .and(with_services(svc.clone()))
        .map(|n: String, v: String, caller: Option<Principal>, svc: Arc<UseCases>| {
            reply(svc.template(&n, &v, caller.as_ref()).map(|t| json!({"status": wire::template_status_name(&t)})))
        });
    let put = warp::path!("env" / String / String)
        .and(warp::put())
        .and(who.clone())
        .and(warp::body::content_length_limit(MAX_BODY_BYTES))
        .and(warp::body::bytes())
        .and(with_services(svc.clone()))
        .then(|n: String, v: String, caller: Option<Principal>, body: Bytes, svc: Arc<UseCases>| async move {
            reply(update(&svc, &n, &v, &body, caller).await)
        });
    let release =
        warp::path!("env" / String / String / "release").and(warp::post()).and(who).and(with_services(svc)).then(
            |n: String, v: String, caller: Option<Principal>, svc: Arc<UseCases>| async move {
                reply(svc.release_template(&n, &v, caller.as_ref()).await.map(|t| wire::template(&t)))
            },
        );
    create
        .or(list)
        .unify()
        .or(get)
        .unify()
        .or(delete)
        .unify()
        .or(warmup)
        .unify()
        .or(warmup_state)
        .unify()
        .or(exists)
        .unify()
        .or(status)
        .unify()
        .or(put)
        .unify()
        .or(release)
        .unify()
}
