//! `/env-pool`: warm pools in the AEnvironment envelope. `POST /env-pool` `{"name", "envName", "replicas",
//! "maxReplicas"?}` makes one, `GET /env-pool` lists them, `GET /env-pool/{name}` shows one, `PUT
//! /env-pool/{name}` `{"replicas", "maxReplicas"?}` scales it, `DELETE /env-pool/{name}` removes it with its
//! waiting sandboxes. Creates are served from pools by `POST /env-instance` itself.

use std::sync::Arc;

use serde_json::{Map, Value};
use warp::{Filter, hyper::body::Bytes};

use super::{
    ApiError, Caller, MAX_BODY_BYTES, reply,
    request::{object, only},
    wire, with_services,
};
use crate::service::{PoolRequest, Principal, Services};

/// A count field: absent → `None`; a whole number from 0 to `u32::MAX` → `Some`; anything else → 400.
fn count(obj: &Map<String, Value>, field: &str) -> Result<Option<u32>, ApiError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().and_then(|n| u32::try_from(n).ok()).map(Some).ok_or_else(|| {
            ApiError::bad_request(format!("field `{field}` must be a whole number, 0 or more (got {v})"))
        }),
    }
}

fn required_string(obj: &Map<String, Value>, field: &str, example: &str) -> Result<String, ApiError> {
    match obj.get(field) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        _ => Err(ApiError::bad_request(format!("field `{field}` is required: a string such as {example:?}"))),
    }
}

/// `POST /env-pool`'s body.
pub fn parse_create(body: &[u8]) -> Result<PoolRequest, ApiError> {
    let obj = object(body)?;
    only(&obj, &["name", "envName", "replicas", "maxReplicas"])?;
    Ok(PoolRequest {
        name: required_string(&obj, "name", "warm-terminal")?,
        env_name: required_string(&obj, "envName", "mini-terminal@1.0.0")?,
        replicas: count(&obj, "replicas")?
            .ok_or_else(|| ApiError::bad_request("field `replicas` is required: how many ready sandboxes to keep"))?,
        max_replicas: count(&obj, "maxReplicas")?,
    })
}

/// `PUT /env-pool/{name}`'s body: `(replicas, maxReplicas)`.
pub fn parse_scale(body: &[u8]) -> Result<(u32, Option<u32>), ApiError> {
    let obj = object(body)?;
    only(&obj, &["replicas", "maxReplicas"])?;
    let replicas = count(&obj, "replicas")?
        .ok_or_else(|| ApiError::bad_request("field `replicas` is required: how many ready sandboxes to keep"))?;
    Ok((replicas, count(&obj, "maxReplicas")?))
}

/// The `/env-pool` routes.
pub fn routes(
    svc: Arc<Services>,
    who: Caller,
) -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone {
    let body = warp::body::content_length_limit(MAX_BODY_BYTES).and(warp::body::bytes());
    let create =
        warp::path!("env-pool").and(warp::post()).and(who.clone()).and(body).and(with_services(svc.clone())).then(
            |c: Option<Principal>, body: Bytes, svc: Arc<Services>| async move {
                let made = async {
                    let request = parse_create(&body)?;
                    Ok::<_, ApiError>(wire::pool(&*svc.create_pool(request, c.as_ref()).await?))
                };
                reply(made.await)
            },
        );
    let list = warp::path!("env-pool").and(warp::get()).and(who.clone()).and(with_services(svc.clone())).map(
        |c: Option<Principal>, svc: Arc<Services>| {
            reply::<ApiError>(Ok(Value::Array(svc.list_pools(c.as_ref()).iter().map(|p| wire::pool(p)).collect())))
        },
    );
    let get = warp::path!("env-pool" / String).and(warp::get()).and(who.clone()).and(with_services(svc.clone())).map(
        |name: String, c: Option<Principal>, svc: Arc<Services>| {
            reply(svc.pool(&name, c.as_ref()).map(|p| wire::pool(&p)))
        },
    );
    let scale = warp::path!("env-pool" / String)
        .and(warp::put())
        .and(who.clone())
        .and(body)
        .and(with_services(svc.clone()))
        .then(|name: String, c: Option<Principal>, body: Bytes, svc: Arc<Services>| async move {
            let scaled = async {
                let (replicas, max) = parse_scale(&body)?;
                Ok::<_, ApiError>(wire::pool(&*svc.scale_pool(&name, replicas, max, c.as_ref()).await?))
            };
            reply(scaled.await)
        });
    let delete = warp::path!("env-pool" / String).and(warp::delete()).and(who).and(with_services(svc)).then(
        |name: String, c: Option<Principal>, svc: Arc<Services>| async move {
            reply(svc.delete_pool(&name, c.as_ref()).await.map(|()| Value::from("Deleted successfully")))
        },
    );
    create.or(list).unify().or(get).unify().or(scale).unify().or(delete).unify()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_checked_with_the_field_named() {
        let ok = parse_create(br#"{"name":"warm","envName":"mini@1.0.0","replicas":3,"maxReplicas":8}"#).unwrap();
        assert_eq!(
            ok,
            PoolRequest { name: "warm".into(), env_name: "mini@1.0.0".into(), replicas: 3, max_replicas: Some(8) }
        );
        for (body, field) in [
            (&br#"{"envName":"mini@1","replicas":1}"#[..], "`name`"),
            (br#"{"name":"w","replicas":1}"#, "`envName`"),
            (br#"{"name":"w","envName":"mini@1"}"#, "`replicas`"),
            (br#"{"name":"w","envName":"mini@1","replicas":-1}"#, "`replicas`"),
            (br#"{"name":"w","envName":"mini@1","replicas":1.5}"#, "`replicas`"),
            (br#"{"name":"w","envName":"mini@1","replicas":"3"}"#, "`replicas`"),
            (br#"{"name":"w","envName":"mini@1","replicas":1,"maxReplicas":99999999999}"#, "`maxReplicas`"),
            (br#"{"name":"w","envName":"mini@1","replicas":1,"size":3}"#, "`size`"),
        ] {
            let e = parse_create(body).unwrap_err();
            assert!(e.status == 400 && e.message.contains(field), "{}: {}", String::from_utf8_lossy(body), e.message);
        }
        assert_eq!(parse_create(b"[]").unwrap_err().status, 400);
        assert_eq!(parse_create(b"{").unwrap_err().status, 400);
        assert_eq!(parse_scale(br#"{"replicas":0}"#).unwrap(), (0, None));
        assert!(parse_scale(br#"{}"#).unwrap_err().message.contains("`replicas`"));
    }
}
