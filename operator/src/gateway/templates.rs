//! `/env`: Environment templates, as AEnvironment's envhub serves them (`GET /env/{name}/{version}`), and image
//! warmup, which AEnvironment has only as an unrouted handler: `POST /env/{name}/{version}/warmup` pre-pulls
//! every image the template runs, `GET` on the same path shows the progress.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use aenv_core::{EnvInstanceSpec, Environment, EnvironmentSpec, PullProgress};
use futures::StreamExt;
use jiff::Timestamp;
use serde::Serialize;
use serde_json::Value;
use tracing::info;
use warp::{Filter, hyper::body::Bytes};

use super::{
    ApiError, CreateRequest, Gateway, MAX_BODY_BYTES, Strictness,
    guard::{Principal, caller},
    parse_create, reply, wire, with_gateway,
};
use crate::Error;

/// Warmups by `name@version`.
pub type Warmups = Mutex<HashMap<String, Arc<Mutex<WarmupState>>>>;

/// Where a warmup stands: one entry per image, updated as the engine reports.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WarmupState {
    pub env: String,
    pub started_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    pub done: bool,
    pub images: Vec<PullProgress>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn string_list(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|t| t.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

impl Gateway {
    async fn create_template(&self, body: Bytes) -> Result<Value, ApiError> {
        let spec: EnvInstanceSpec = match parse_create(&body, None, Strictness::Strict)? {
            CreateRequest::Inline(spec) => *spec,
            CreateRequest::FromTemplate { .. } => {
                return Err(ApiError::bad_request(
                    "an Environment is registered with name, version and artifacts (or deployConfig.composeFile), not envName",
                ));
            }
        };
        if spec.env_version.is_empty() {
            return Err(ApiError::bad_request("field `version` is required for an Environment"));
        }
        self.engine.validate(&spec).map_err(|e| ApiError::bad_request(e.message))?;
        // parse_create has validated the body as JSON already.
        let raw: Value = serde_json::from_slice(&body).unwrap_or_default();
        let text = |key: &str| raw.get(key).and_then(Value::as_str).unwrap_or_default().to_string();
        let (name, version) = (spec.env_name.clone(), spec.env_version.clone());
        let mut env = Environment::new(
            &Environment::object_name(&name, &version),
            EnvironmentSpec {
                name: name.clone(),
                version: version.clone(),
                description: text("description"),
                tags: string_list(raw.get("tags")),
                code_url: text("code_url"),
                template: EnvInstanceSpec { env_name: String::new(), env_version: String::new(), ..spec },
            },
        );
        env.metadata.namespace = Some(self.namespace.clone());
        match self.templates.create(env, Timestamp::now()).await {
            Ok(stored) => {
                info!(env = %format!("{name}@{version}"), "environment registered");
                Ok(wire::template(&stored))
            }
            Err(Error::AlreadyExists(_)) => Err(ApiError::conflict(format!(
                "environment \"{name}@{version}\" exists already; delete it first, or register a new version"
            ))),
            Err(e) => Err(ApiError::unavailable(format!("the environment could not be recorded: {e}"))),
        }
    }

    fn get_template(&self, name: &str, version: &str) -> Result<Arc<Environment>, ApiError> {
        self.find_template(name, version)
            .ok_or_else(|| ApiError::not_found(format!("environment \"{name}@{version}\" not found")))
    }

    async fn delete_template(&self, name: &str, version: &str) -> Result<Value, ApiError> {
        self.get_template(name, version)?;
        let key = self.key(&Environment::object_name(name, version));
        self.templates.purge(&key).await.map_err(|e| ApiError::unavailable(format!("could not delete: {e}")))?;
        Ok(Value::from("Deleted successfully"))
    }

    fn list_templates(&self, name: Option<&str>) -> Value {
        let namespace = self.namespace.as_str();
        let items = self.templates.list_where(&|t: &Environment| {
            t.metadata.namespace.as_deref() == Some(namespace) && name.is_none_or(|n| t.spec.name == n)
        });
        Value::Array(items.iter().map(|t| wire::template(t)).collect())
    }

    /// Starts pre-pulling the template's images (once at a time per template) and returns where it stands.
    fn start_warmup(&self, name: &str, version: &str) -> Result<Value, ApiError> {
        let template = self.get_template(name, version)?;
        let env = format!("{name}@{version}");
        let mut warmups = lock(&self.warmups);
        if let Some(state) = warmups.get(&env).filter(|s| !lock(s).done) {
            return Ok(serde_json::to_value(&*lock(state)).unwrap_or_default());
        }
        let state = Arc::new(Mutex::new(WarmupState {
            env: env.clone(),
            started_at: wire::format_time(Timestamp::now()),
            finished_at: None,
            done: false,
            images: Vec::new(),
        }));
        warmups.insert(env.clone(), state.clone());
        let mut progress = self.engine.warmup(&template.spec.template);
        let snapshot = serde_json::to_value(&*lock(&state)).unwrap_or_default();
        info!(env = %env, "image warmup started");
        tokio::spawn(async move {
            while let Some(p) = progress.next().await {
                let mut s = lock(&state);
                match s.images.iter_mut().find(|i| i.image == p.image) {
                    Some(entry) => *entry = p,
                    None => s.images.push(p),
                }
            }
            let mut s = lock(&state);
            s.done = true;
            s.finished_at = Some(wire::format_time(Timestamp::now()));
            info!(env = %s.env, "image warmup finished");
        });
        Ok(snapshot)
    }

    fn warmup_state(&self, name: &str, version: &str) -> Result<Value, ApiError> {
        let env = format!("{name}@{version}");
        let warmups = lock(&self.warmups);
        let state = warmups
            .get(&env)
            .ok_or_else(|| ApiError::not_found(format!("no warmup of \"{env}\" has run; start one with POST")))?;
        Ok(serde_json::to_value(&*lock(state)).unwrap_or_default())
    }
}

/// The `/env` routes (templates are shared by every authenticated caller).
pub fn routes(gw: Arc<Gateway>) -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone {
    let who = caller(gw.guard.clone()).map(|_: Option<Principal>| ()).untuple_one();
    let create = warp::path!("env")
        .and(warp::post())
        .and(who.clone())
        .and(warp::body::content_length_limit(MAX_BODY_BYTES))
        .and(warp::body::bytes())
        .and(with_gateway(gw.clone()))
        .then(|body: Bytes, gw: Arc<Gateway>| async move { reply(gw.create_template(body).await) });
    let list = warp::path!("env")
        .and(warp::get())
        .and(who.clone())
        .and(warp::query::<HashMap<String, String>>())
        .and(with_gateway(gw.clone()))
        .map(|q: HashMap<String, String>, gw: Arc<Gateway>| {
            reply(Ok(gw.list_templates(q.get("name").map(String::as_str))))
        });
    let get = warp::path!("env" / String / String)
        .and(warp::get())
        .and(who.clone())
        .and(with_gateway(gw.clone()))
        .map(|n: String, v: String, gw: Arc<Gateway>| reply(gw.get_template(&n, &v).map(|t| wire::template(&t))));
    let delete = warp::path!("env" / String / String)
        .and(warp::delete())
        .and(who.clone())
        .and(with_gateway(gw.clone()))
        .then(|n: String, v: String, gw: Arc<Gateway>| async move { reply(gw.delete_template(&n, &v).await) });
    let warmup = warp::path!("env" / String / String / "warmup")
        .and(warp::post())
        .and(who.clone())
        .and(with_gateway(gw.clone()))
        .map(|n: String, v: String, gw: Arc<Gateway>| {
            let r = reply(gw.start_warmup(&n, &v));
            if r.status().is_success() {
                warp::reply::with_status(r, warp::http::StatusCode::ACCEPTED).into_response()
            } else {
                r
            }
        });
    let warmup_state = warp::path!("env" / String / String / "warmup")
        .and(warp::get())
        .and(who)
        .and(with_gateway(gw))
        .map(|n: String, v: String, gw: Arc<Gateway>| reply(gw.warmup_state(&n, &v)));
    create.or(list).unify().or(get).unify().or(delete).unify().or(warmup).unify().or(warmup_state).unify()
}

use warp::Reply;
