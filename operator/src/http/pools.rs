//! `/env-pool`: warm pools in the AEnvironment envelope. `POST /env-pool` `{"name", "envName", "replicas",
//! "maxReplicas"?}` makes one, `GET /env-pool` lists them, `GET /env-pool/{name}` shows one, `PUT
//! /env-pool/{name}` `{"replicas", "maxReplicas"?}` scales it, `DELETE /env-pool/{name}` removes it with its
//! waiting sandboxes. Creates are served from pools by `POST /env-instance` itself.

use std::sync::Arc;

use serde_json::Value;
use warp::{Filter, hyper::body::Bytes};

use super::{
    ApiError, Caller, MAX_BODY_BYTES,
    body::pools::{parse_create, parse_scale},
    reply, wire, with_services,
};
use crate::usecase::{Principal, UseCases};

/// The `/env-pool` routes.
pub fn routes(
    svc: Arc<UseCases>,
    who: Caller,
) -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone {
    let body = warp::body::content_length_limit(MAX_BODY_BYTES).and(warp::body::bytes());
    let create =
        warp::path!("env-pool").and(warp::post()).and(who.clone()).and(body).and(with_services(svc.clone())).then(
            |c: Option<Principal>, body: Bytes, svc: Arc<UseCases>| async move {
                let made = async {
                    let request = parse_create(&body)?;
                    Ok::<_, ApiError>(wire::pool(&*svc.create_pool(request, c.as_ref()).await?))
                };
                reply(made.await)
            },
        );
    let list = warp::path!("env-pool").and(warp::get()).and(who.clone()).and(with_services(svc.clone())).map(
        |c: Option<Principal>, svc: Arc<UseCases>| {
            reply::<ApiError>(Ok(Value::Array(svc.list_pools(c.as_ref()).iter().map(|p| wire::pool(p)).collect())))
        },
    );
    let get = warp::path!("env-pool" / String).and(warp::get()).and(who.clone()).and(with_services(svc.clone())).map(
        |name: String, c: Option<Principal>, svc: Arc<UseCases>| {
            reply(svc.pool(&name, c.as_ref()).map(|p| wire::pool(&p)))
        },
    );
    let scale = warp::path!("env-pool" / String)
        .and(warp::put())
        .and(who.clone())
        .and(body)
        .and(with_services(svc.clone()))
        .then(|name: String, c: Option<Principal>, body: Bytes, svc: Arc<UseCases>| async move {
            let scaled = async {
                let (replicas, max) = parse_scale(&body)?;
                Ok::<_, ApiError>(wire::pool(&*svc.scale_pool(&name, replicas, max, c.as_ref()).await?))
            };
            reply(scaled.await)
        });
    let delete = warp::path!("env-pool" / String).and(warp::delete()).and(who).and(with_services(svc)).then(
        |name: String, c: Option<Principal>, svc: Arc<UseCases>| async move {
            reply(svc.delete_pool(&name, c.as_ref()).await.map(|()| Value::from("Deleted successfully")))
        },
    );
    create.or(list).unify().or(get).unify().or(scale).unify().or(delete).unify()
}
