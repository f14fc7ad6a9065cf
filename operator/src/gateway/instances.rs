//! `/env-instance`: the AEnvironment api-service API that the Python SDK and CLI use.

use std::{collections::HashMap, sync::Arc};

use aenv_core::EnvInstance;
use futures::StreamExt;
use serde_json::{Value, json};
use warp::{Filter, Reply, hyper::body::Bytes};

use super::{
    ApiError, Gateway, MAX_BODY_BYTES, Strictness,
    guard::{Principal, caller},
    reply, wire, with_gateway,
};

impl Gateway {
    async fn create(&self, body: Bytes, caller: Option<Principal>) -> Result<Value, ApiError> {
        let spec = self.resolve(&body, Strictness::Strict)?;
        Ok(wire::instance(&*self.create_instance(spec, caller.as_ref()).await?))
    }

    fn get(&self, id: &str, caller: Option<Principal>) -> Result<Value, ApiError> {
        self.instances
            .get(&self.key(id))
            .filter(|inst| Self::visible(inst, caller.as_ref()))
            .map(|inst| wire::instance(&inst))
            .ok_or_else(|| ApiError::not_found(format!("env instance \"{id}\" not found")))
    }

    async fn delete(&self, id: &str, caller: Option<Principal>) -> Result<Value, ApiError> {
        match self.delete_instance(id, caller.as_ref()).await? {
            Some(()) => Ok(Value::from("Deleted successfully")),
            None => Err(ApiError::not_found(format!("env instance \"{id}\" not found"))),
        }
    }

    /// Instances of `name[@version]` (`*` or empty: all), optionally of one status, in the gateway's namespace,
    /// that `caller` may see.
    pub(super) fn matching(
        &self,
        pattern: Option<&str>,
        status: Option<&str>,
        caller: Option<&Principal>,
    ) -> Vec<Arc<EnvInstance>> {
        let pattern = pattern.filter(|p| !p.is_empty() && *p != "*");
        let (name, version) = match pattern.map(|p| p.split_once('@')) {
            Some(Some((n, v))) => (Some(n), Some(v)),
            Some(None) => (pattern, None),
            None => (None, None),
        };
        let status = status.filter(|s| !s.is_empty());
        let namespace = self.namespace.as_str();
        self.instances.list_where(&|inst: &EnvInstance| {
            inst.metadata.namespace.as_deref() == Some(namespace)
                && Self::visible(inst, caller)
                && name.is_none_or(|n| inst.spec.env_name == n)
                && version.is_none_or(|v| inst.spec.env_version == v)
                && status.is_none_or(|s| wire::status_string(inst) == s)
        })
    }

    fn rendered(&self, pattern: Option<&str>, q: &HashMap<String, String>, caller: Option<Principal>) -> Vec<Value> {
        let status = q.get("status").map(String::as_str);
        self.matching(pattern, status, caller.as_ref()).iter().map(|i| wire::instance(i)).collect()
    }
}

/// The `/env-instance` routes.
pub fn routes(gw: Arc<Gateway>) -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone {
    let query = warp::query::<HashMap<String, String>>();
    let who = caller(gw.guard.clone());
    let create = warp::path!("env-instance")
        .and(warp::post())
        .and(who.clone())
        .and(warp::body::content_length_limit(MAX_BODY_BYTES))
        .and(warp::body::bytes())
        .and(with_gateway(gw.clone()))
        .then(|c: Option<Principal>, body: Bytes, gw: Arc<Gateway>| async move { reply(gw.create(body, c).await) });
    // `GET /env-instance?envName=` (the Docker-engine guide): an array.
    let list =
        warp::path!("env-instance").and(warp::get()).and(who.clone()).and(query).and(with_gateway(gw.clone())).map(
            |c: Option<Principal>, q: HashMap<String, String>, gw: Arc<Gateway>| {
                reply(Ok(Value::Array(gw.rendered(q.get("envName").map(String::as_str), &q, c))))
            },
        );
    // `GET /env-instance/list`: `{"items": [...]}`, which the SDK's list_env_instances() reads (upstream answers
    // 500 there).
    let list_items = warp::path!("env-instance" / "list")
        .and(warp::get())
        .and(who.clone())
        .and(query)
        .and(with_gateway(gw.clone()))
        .map(|c: Option<Principal>, q: HashMap<String, String>, gw: Arc<Gateway>| {
            let items = gw.rendered(q.get("envName").map(String::as_str), &q, c);
            reply(Ok(json!({"items": items})))
        });
    // `GET /env-instance/{*|name|name@version}/list`: an array, as the api-service and the CLI have it.
    let list_of = warp::path!("env-instance" / String / "list")
        .and(warp::get())
        .and(who.clone())
        .and(query)
        .and(with_gateway(gw.clone()))
        .map(|pattern: String, c: Option<Principal>, q: HashMap<String, String>, gw: Arc<Gateway>| {
            let pattern = if pattern == "*" { q.get("envName").cloned().unwrap_or(pattern) } else { pattern };
            reply(Ok(Value::Array(gw.rendered(Some(&pattern), &q, c))))
        });
    let get = warp::path!("env-instance" / String)
        .and(warp::get())
        .and(who.clone())
        .and(with_gateway(gw.clone()))
        .map(|id: String, c: Option<Principal>, gw: Arc<Gateway>| reply(gw.get(&id, c)));
    let delete = warp::path!("env-instance" / String)
        .and(warp::delete())
        .and(who.clone())
        .and(with_gateway(gw.clone()))
        .then(|id: String, c: Option<Principal>, gw: Arc<Gateway>| async move { reply(gw.delete(&id, c).await) });
    let logs = warp::path!("env-instance" / String / "logs")
        .and(warp::get())
        .and(who)
        .and(query)
        .and(with_gateway(gw))
        .map(|id: String, c: Option<Principal>, q: HashMap<String, String>, gw: Arc<Gateway>| gw.logs(&id, c, &q));
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

impl Gateway {
    /// `GET /env-instance/{id}/logs?follow=true&tail=N`: the container's output as plain text, streamed.
    fn logs(&self, id: &str, caller: Option<Principal>, q: &HashMap<String, String>) -> warp::reply::Response {
        let Some(inst) = self.instances.get(&self.key(id)).filter(|i| Self::visible(i, caller.as_ref())) else {
            return ApiError::not_found(format!("env instance \"{id}\" not found")).into_reply();
        };
        let follow = match q.get("follow").map(String::as_str) {
            None | Some("false") | Some("0") => false,
            Some("true") | Some("1") => true,
            Some(other) => {
                return ApiError::bad_request(format!("query `follow` must be true or false (got {other:?})"))
                    .into_reply();
            }
        };
        let tail = match q.get("tail").map(|t| t.parse::<u64>()) {
            None => None,
            Some(Ok(n)) => Some(n),
            Some(Err(_)) => return ApiError::bad_request("query `tail` must be a number of lines").into_reply(),
        };
        let stream = self.engine.logs(&inst, follow, tail).map(|chunk| {
            // An error ends the stream, saying why, in the text itself.
            Ok::<_, std::convert::Infallible>(match chunk {
                Ok(bytes) => Bytes::from(bytes),
                Err(e) => Bytes::from(format!("\n[aenv-operator: {e}]\n")),
            })
        });
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let mut stream = stream;
            while let Some(item) = stream.next().await {
                if tx.send(item).await.is_err() {
                    return;
                }
            }
        });
        let body = warp::reply::stream(tokio_stream::wrappers::ReceiverStream::new(rx));
        warp::reply::with_header(body, "content-type", "text/plain; charset=utf-8").into_response()
    }
}
