//! `/services`: the AEnvironment controller's service API, the `/pods` analogue, so that an api-service pointed at
//! this operator (`--schedule-addr`) can run its `/env-service` calls here. The body of `POST /services` is an
//! AEnvHubEnv (the Env with `artifacts` and `deployConfig`) whose `deployConfig` also carries `serviceName`,
//! `replicas`, `pvcName`, `mountPath`, `storageSize`, `port`, `cpuLimit`, `memoryLimit`; answers are the Go
//! controller's: JSON with a trailing newline in its field order, plain-text errors, 201 on create.

use std::{collections::HashMap, sync::Arc};

use serde::Serialize;
use warp::{Filter, http::StatusCode, hyper::body::Bytes};

use crate::http::{
    ApiError, Caller, MAX_BODY_BYTES,
    body::{
        self,
        create::{Strictness, parse_create_object},
        env_services::controller_service,
    },
    ctl::pods::{json_line, text_error},
    with_services,
};
use crate::usecase::{EnvServiceUpdate, Principal, UseCaseError, UseCases};

/// The controller's `HttpServiceResponseData`, field for field.
#[derive(Serialize)]
struct ServiceData {
    id: String,
    status: String,
    service_url: String,
    replicas: u32,
    available_replicas: u32,
    owner: String,
    envname: String,
    version: String,
    pvc_name: String,
    created_at: String,
    updated_at: String,
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    environment_variables: HashMap<String, String>,
}

fn go_time(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%d %H:%M:%S").to_string()
}

/// The service as the controller reports it; its status as the controller words it (`Creating` while none is
/// available, `Updating` while fewer than asked, else `Running`).
fn data(svc: &UseCases, s: &aenv_core::EnvService) -> ServiceData {
    let available = svc.available_replicas(s);
    let id = s.metadata.name.clone().unwrap_or_default();
    let (envname, version) = s.spec.template().map_or((String::new(), String::new()), |(n, v)| (n.into(), v.into()));
    let created = s.metadata.creation_timestamp.as_ref().map(|t| go_time(t.0)).unwrap_or_default();
    let status = match available {
        0 => "Creating",
        a if a < s.spec.replicas => "Updating",
        _ => "Running",
    };
    ServiceData {
        // Natively (Kubernetes) the Service's `<name>.<namespace>.<suffix>:<port>`, as the Go controller says it.
        service_url: svc
            .native_address(s)
            .or_else(|| svc.proxy_url.as_deref().map(|p| format!("{p}/env-service/{id}")))
            .unwrap_or_default(),
        id,
        status: status.into(),
        replicas: s.spec.replicas,
        available_replicas: available,
        owner: s.spec.owner.clone().unwrap_or_default(),
        envname,
        version,
        pvc_name: s.spec.pvc_name.clone().unwrap_or_default(),
        updated_at: go_time(jiff::Timestamp::now()),
        created_at: created,
        environment_variables: s.spec.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    }
}

/// `POST /services`: the Env resolved like `/pods` does (inline, lenient), the service's keys from `deployConfig`.
async fn create(svc: &UseCases, body: &[u8], caller: Option<Principal>) -> warp::reply::Response {
    let made = async {
        let obj = body::object(body, r#"{"name": "web", "artifacts": [{"type": "image", "content": "IMAGE"}]}"#)?;
        let deploy =
            ["deployConfig", "deploy_config"].iter().find_map(|k| obj.get(*k).filter(|v| !v.is_null())).cloned();
        let (request, _) = parse_create_object(obj, Strictness::Lenient)?;
        let template = svc.resolve(request, caller.as_ref())?;
        let name = template.env_name.clone();
        let version = if template.env_version.is_empty() { "1.0.0".to_string() } else { template.env_version.clone() };
        let mut inline = template;
        // The service's variables are the template's here; replicas do not expire.
        inline.ttl = None;
        let request = controller_service(deploy, format!("{name}@{version}"), inline)?;
        Ok::<_, ApiError>(svc.create_service(request, caller.as_ref()).await?)
    };
    match made.await {
        Ok(s) => json_line(StatusCode::CREATED, data(svc, &s)),
        Err(e) if e.status == 400 => text_error(400, &format!("Invalid request body: {}", e.message)),
        Err(e) => text_error(e.status, &format!("failed to create service: {}", e.message)),
    }
}

fn not_found(what: &str, name: &str) -> warp::reply::Response {
    text_error(404, &format!("failed to {what}: services \"{name}\" not found"))
}

/// The query of `GET /services`.
const LIST_QUERY: &[crate::http::query::Param] = &[crate::http::query::Param::text("envName")];

/// The `/services` routes.
pub fn routes(
    svc: Arc<UseCases>,
    who: Caller,
) -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone {
    let body = warp::body::content_length_limit(MAX_BODY_BYTES).and(warp::body::bytes());
    let post = warp::path!("services")
        .and(warp::post())
        .and(who.clone())
        .and(body)
        .and(with_services(svc.clone()))
        .then(|c: Option<Principal>, body: Bytes, svc: Arc<UseCases>| async move { create(&svc, &body, c).await });
    let list = warp::path!("services")
        .and(warp::get())
        .and(crate::http::query::query(LIST_QUERY))
        .and(who.clone())
        .and(with_services(svc.clone()))
        .map(|q: HashMap<String, String>, c: Option<Principal>, svc: Arc<UseCases>| {
            let env = q.get("envName").map(String::as_str).filter(|e| !e.is_empty()).unwrap_or("*");
            let items: Vec<ServiceData> = svc.list_services(env, c.as_ref()).iter().map(|s| data(&svc, s)).collect();
            json_line(StatusCode::OK, items)
        });
    let get = warp::path!("services" / String).and(warp::get()).and(who.clone()).and(with_services(svc.clone())).map(
        |name: String, c: Option<Principal>, svc: Arc<UseCases>| match svc.service(&name, c.as_ref()) {
            Ok(s) => json_line(StatusCode::OK, data(&svc, &s)),
            Err(_) => not_found("get deployment", &name),
        },
    );
    let put = warp::path!("services" / String)
        .and(warp::put())
        .and(who.clone())
        .and(body)
        .and(with_services(svc.clone()))
        .then(|name: String, c: Option<Principal>, body: Bytes, svc: Arc<UseCases>| async move {
            let update = match body::env_services::parse_update(&body) {
                Ok(u) => u,
                Err(e) => return text_error(400, &format!("Invalid request body: {}", e.message)),
            };
            let update = EnvServiceUpdate { ..update };
            match svc.update_service(&name, update, c.as_ref()).await {
                Ok(s) => {
                    let mut d = data(&svc, &s);
                    d.status = "Updating".into();
                    json_line(StatusCode::OK, d)
                }
                Err(UseCaseError::NotFound(_)) => not_found("get deployment", &name),
                Err(e) => {
                    let e = ApiError::from(e);
                    text_error(e.status, &format!("failed to update deployment: {}", e.message))
                }
            }
        });
    let delete = warp::path!("services" / String)
        .and(warp::delete())
        .and(crate::http::query::query(crate::http::env_services::DELETE_QUERY))
        .and(who)
        .and(with_services(svc))
        .then(|name: String, q: HashMap<String, String>, c: Option<Principal>, svc: Arc<UseCases>| async move {
            let delete_storage = q.get("deleteStorage").map(String::as_str) == Some("true");
            match svc.delete_service(&name, delete_storage, c.as_ref()).await {
                Ok(()) => json_line(StatusCode::OK, true),
                Err(UseCaseError::NotFound(_)) => not_found("delete deployment", &name),
                Err(e) => {
                    let e = ApiError::from(e);
                    text_error(e.status, &format!("failed to delete deployment: {}", e.message))
                }
            }
        });
    post.or(list).unify().or(get).unify().or(put).unify().or(delete).unify()
}
