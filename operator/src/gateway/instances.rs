//! `/env-instance`: the AEnvironment api-service API that the Python SDK and CLI use.

use std::{collections::HashMap, sync::Arc};

use aenv_core::EnvInstance;
use serde_json::{Value, json};
use warp::{Filter, hyper::body::Bytes};

use super::{ApiError, Gateway, MAX_BODY_BYTES, Strictness, reply, wire, with_gateway};

impl Gateway {
    async fn create(&self, body: Bytes) -> Result<Value, ApiError> {
        let spec = self.resolve(&body, Strictness::Strict)?;
        Ok(wire::instance(&*self.create_instance(spec).await?))
    }

    fn get(&self, id: &str) -> Result<Value, ApiError> {
        self.instances
            .get(&self.key(id))
            .map(|inst| wire::instance(&inst))
            .ok_or_else(|| ApiError::not_found(format!("env instance \"{id}\" not found")))
    }

    async fn delete(&self, id: &str) -> Result<Value, ApiError> {
        match self.delete_instance(id).await? {
            Some(()) => Ok(Value::from("Deleted successfully")),
            None => Err(ApiError::not_found(format!("env instance \"{id}\" not found"))),
        }
    }

    /// Instances of `name[@version]` (`*` or empty: all), optionally of one status, in the gateway's namespace.
    pub(super) fn matching(&self, pattern: Option<&str>, status: Option<&str>) -> Vec<Arc<EnvInstance>> {
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
                && name.is_none_or(|n| inst.spec.env_name == n)
                && version.is_none_or(|v| inst.spec.env_version == v)
                && status.is_none_or(|s| wire::status_string(inst) == s)
        })
    }

    fn rendered(&self, pattern: Option<&str>, status: Option<&str>) -> Vec<Value> {
        self.matching(pattern, status).iter().map(|i| wire::instance(i)).collect()
    }
}

/// The `/env-instance` routes.
pub fn routes(gw: Arc<Gateway>) -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone {
    let query = warp::query::<HashMap<String, String>>();
    let create = warp::path!("env-instance")
        .and(warp::post())
        .and(warp::body::content_length_limit(MAX_BODY_BYTES))
        .and(warp::body::bytes())
        .and(with_gateway(gw.clone()))
        .then(|body: Bytes, gw: Arc<Gateway>| async move { reply(gw.create(body).await) });
    // `GET /env-instance?envName=` (the Docker-engine guide): an array.
    let list = warp::path!("env-instance").and(warp::get()).and(query).and(with_gateway(gw.clone())).map(
        |q: HashMap<String, String>, gw: Arc<Gateway>| {
            reply(Ok(Value::Array(
                gw.rendered(q.get("envName").map(String::as_str), q.get("status").map(String::as_str)),
            )))
        },
    );
    // `GET /env-instance/list`: `{"items": [...]}`, which the SDK's list_env_instances() reads (upstream answers
    // 500 there).
    let list_items =
        warp::path!("env-instance" / "list").and(warp::get()).and(query).and(with_gateway(gw.clone())).map(
            |q: HashMap<String, String>, gw: Arc<Gateway>| {
                let items = gw.rendered(q.get("envName").map(String::as_str), q.get("status").map(String::as_str));
                reply(Ok(json!({"items": items})))
            },
        );
    // `GET /env-instance/{*|name|name@version}/list`: an array, as the api-service and the CLI have it.
    let list_of =
        warp::path!("env-instance" / String / "list").and(warp::get()).and(query).and(with_gateway(gw.clone())).map(
            |pattern: String, q: HashMap<String, String>, gw: Arc<Gateway>| {
                let pattern = if pattern == "*" { q.get("envName").cloned().unwrap_or(pattern) } else { pattern };
                reply(Ok(Value::Array(gw.rendered(Some(&pattern), q.get("status").map(String::as_str)))))
            },
        );
    let get = warp::path!("env-instance" / String)
        .and(warp::get())
        .and(with_gateway(gw.clone()))
        .map(|id: String, gw: Arc<Gateway>| reply(gw.get(&id)));
    let delete = warp::path!("env-instance" / String)
        .and(warp::delete())
        .and(with_gateway(gw))
        .then(|id: String, gw: Arc<Gateway>| async move { reply(gw.delete(&id).await) });
    create.or(list_items).unify().or(list_of).unify().or(list).unify().or(get).unify().or(delete).unify()
}
