//! `/env`: Environment templates, as AEnvironment's envhub serves them (`GET /env/{name}/{version}`), and image
//! warmup, which AEnvironment has only as an unrouted handler: `POST /env/{name}/{version}/warmup` pre-pulls
//! every image the template runs, `GET` on the same path shows the progress. With tokens on, a template belongs to
//! the tenant that registered it: see [`crate::usecase::TemplateAccess`].

use std::{collections::HashMap, sync::Arc};

use serde_json::Value;
use warp::{Filter, Reply, hyper::body::Bytes};

use super::{
    ApiError, Caller, MAX_BODY_BYTES,
    body::create::{CreateRequest, Strictness, parse_create},
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
    let warmup_state =
        warp::path!("env" / String / String / "warmup").and(warp::get()).and(who).and(with_services(svc)).map(
            |n: String, v: String, caller: Option<Principal>, svc: Arc<UseCases>| {
                reply(svc.warmup_state(&n, &v, caller.as_ref()).map(|s| wire::warmup(&s)))
            },
        );
    create.or(list).unify().or(get).unify().or(delete).unify().or(warmup).unify().or(warmup_state).unify()
}
