//! The data-plane proxy (`--proxy-listen`, `:8081` as in AEnvironment): requests carrying
//! `AEnvCore-MCPProxy-URL: http://<instance ip>:<port>` are forwarded there with their method, path, query,
//! headers and body, and the answer streams back (Server-Sent Events on `/sse` and streamable HTTP on `/mcp`
//! included). Without the header, `/health` is answered here.
//!
//! Unlike upstream it is not an open proxy: it forwards only to instances this operator runs (a live instance's
//! IP, or a port an instance published on this host), and refuses any other target with 403. The caller's
//! `Authorization` and the proxy's routing headers (`AEnvCore-MCPProxy-URL`,
//! `AEnvCore-EnvInstance-ID`) never reach the sandbox. With `--proxy-auth` a request needs a token of the tokens
//! file and reaches only its owner's instances and services (clients send it as `Authorization: Bearer`; the Python
//! SDK 0.1.7 sends none on data-plane calls, so `--proxy-auth` is for clients that do).
//!
//! Without the header, `/env-service/{id}/PATH` is a service's address (its `service_url`): each request goes to
//! the next of the service's ready replicas (round robin), at the service's port, as `/PATH`.

use std::{collections::HashMap, convert::Infallible, sync::Arc, time::Duration};

use aenv_core::{EnvInstance, Phase};
use futures::StreamExt;
use http_body_util::{BodyExt, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Bytes, Frame};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use serde_json::json;
use tracing::{debug, warn};
use warp::{
    Buf, Filter, Reply,
    http::{HeaderMap, HeaderName, Method, StatusCode, Uri, header},
    path::FullPath,
};

use super::auth::Auth;
use crate::usecase::presign::{self, Signer};
use crate::{
    store::ObjectStore,
    usecase::{Principal, UseCases},
};

/// The header that names the target.
pub const TARGET_HEADER: &str = "aenvcore-mcpproxy-url";

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// The path prefix of services' addresses: `/env-service/{id}/...` reaches the service's ready replicas.
pub const SERVICE_PREFIX: &str = "/env-service/";

/// How long a request to a running instance waits for its readiness probe: below the SDK's 3 s health timeout,
/// so that a client told `Running` meets the server rather than a 502 while it boots.
pub const READY_WAIT: Duration = Duration::from_millis(2500);

/// The SDK's header naming the instance (routing only; never forwarded).
pub const INSTANCE_HEADER: &str = "aenvcore-envinstance-id";

/// Headers that belong to one hop and are not forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
];

/// Headers of the request that never reach the sandbox: the caller's token (untrusted code runs there and would
/// receive the tenant's API key) and the proxy's own routing headers.
const NOT_FOR_THE_SANDBOX: &[&str] = &["authorization", TARGET_HEADER, INSTANCE_HEADER];

/// The proxy's state.
pub struct Proxy {
    instances: Arc<dyn ObjectStore<EnvInstance>>,
    services: Arc<dyn ObjectStore<aenv_core::EnvService>>,
    /// The namespace services made through the API live in.
    namespace: String,
    /// Turns of the round-robin over a service's ready replicas.
    turn: std::sync::atomic::AtomicUsize,
    client: Client<HttpConnector, ProxyBody>,
    /// With `--proxy-auth`: the tokens; a caller reaches only its own instances.
    auth: Option<Arc<Auth>>,
    /// The engine, for the in-cluster address of a service it runs natively (Kubernetes).
    engine: Arc<dyn aenv_core::Engine>,
    /// Instances' addresses are not reachable from here (Swarm's overlay networks seen from a process on a
    /// host): a target `ip:port` is dialled at the port the instance published for `port`.
    via_published: bool,
    /// Verifies presigned URLs (`/presigned/<token>/...`).
    signer: Arc<Signer>,
    /// Which replica issued each MCP session of a service.
    sessions: Sessions,
}

/// The header an MCP server names its session with (Streamable HTTP): the client sends it back on every request.
pub const SESSION_HEADER: &str = "mcp-session-id";

/// The most sessions remembered at once; the oldest are forgotten first (their requests then go round the
/// replicas, as before the session was seen). Only answers of a replica add sessions, never requests, so a client
/// cannot fill the table with ids of its own invention.
const MAX_SESSIONS: usize = 16_384;

/// MCP sessions by service and id, and the replica (the authority dialled) that issued each.
#[derive(Default)]
struct Sessions {
    inner: std::sync::Mutex<SessionTable>,
}

#[derive(Default)]
struct SessionTable {
    replica: HashMap<(String, String), String>,
    /// Insertion order, for forgetting the oldest.
    order: std::collections::VecDeque<(String, String)>,
}

impl Sessions {
    fn table(&self) -> std::sync::MutexGuard<'_, SessionTable> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn replica(&self, service: &str, session: &str) -> Option<String> {
        self.table().replica.get(&(service.to_string(), session.to_string())).cloned()
    }

    fn issued(&self, service: &str, session: &str, authority: String) {
        let key = (service.to_string(), session.to_string());
        let mut t = self.table();
        if t.replica.insert(key.clone(), authority).is_none() {
            t.order.push_back(key);
        }
        while t.order.len() > MAX_SESSIONS {
            if let Some(old) = t.order.pop_front() {
                t.replica.remove(&old);
            }
        }
    }

    fn ended(&self, service: &str, session: &str) {
        let key = (service.to_string(), session.to_string());
        let mut t = self.table();
        if t.replica.remove(&key).is_some() {
            t.order.retain(|k| k != &key);
        }
    }
}

impl Proxy {
    /// The proxy; `auth` (from `--proxy-auth`) makes it require a token and reach only the caller's instances.
    pub fn new(
        instances: Arc<dyn ObjectStore<EnvInstance>>,
        services: Arc<dyn ObjectStore<aenv_core::EnvService>>,
        namespace: String,
        auth: Option<Arc<Auth>>,
        engine: Arc<dyn aenv_core::Engine>,
        via_published: bool,
        signer: Arc<Signer>,
    ) -> Arc<Self> {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        // Small requests and answers go out at once (Nagle against delayed ACKs cost ~40 ms per request).
        connector.set_nodelay(true);
        Arc::new(Proxy {
            instances,
            services,
            namespace,
            turn: Default::default(),
            client: Client::builder(TokioExecutor::new()).build(connector),
            engine,
            auth,
            via_published,
            signer,
            sessions: Sessions::default(),
        })
    }

    /// Where to dial `host:port` when it is an endpoint of a live instance of this operator that `caller` may
    /// reach (any instance when `caller` is `None`, that is with `--proxy-auth` off); `None` otherwise. Sandboxes
    /// waiting in a pool are nobody's yet: not reachable through the proxy until claimed.
    fn endpoint(&self, host: &str, port: u16, caller: Option<&Principal>) -> Option<(String, Arc<EnvInstance>)> {
        let loopback = matches!(host, "127.0.0.1" | "localhost" | "::1" | "[::1]");
        self.instances
            .list_where(&|i: &EnvInstance| {
                !i.is_deleting() && i.phase() == Phase::Running && i.pool().is_none() && UseCases::visible(i, caller)
            })
            .into_iter()
            .find_map(|i| {
                let s = i.status.as_ref()?;
                if s.ip.as_deref() == Some(host) {
                    return Some((self.dial(s, host, port), i.clone()));
                }
                s.ports
                    .iter()
                    .any(|p| p.host_port == port && (p.host_ip == host || (loopback && is_any_or_loopback(&p.host_ip))))
                    .then(|| (format!("{host}:{port}"), i.clone()))
            })
    }

    /// Waits, at most [`READY_WAIT`], for a running instance's readiness probe to pass: a sandbox's server often
    /// listens a second or two after the container starts (a Python import), and a client that was told
    /// `Running` should meet the server rather than a 502. Returns at once when it is ready (or has no probe).
    async fn until_ready(&self, inst: &EnvInstance) {
        if inst.is_ready() {
            return;
        }
        let key = crate::store::key_of(inst);
        let started = std::time::Instant::now();
        let serving =
            |i: Option<&EnvInstance>| i.is_none_or(|i| i.is_deleting() || i.phase() != Phase::Running || i.is_ready());
        let now = crate::store::wait_for(self.instances.as_ref(), &key, READY_WAIT, serving).await;
        debug!(instance = %key, waited_ms = started.elapsed().as_millis() as u64, ready = now.is_some_and(|i| i.is_ready()), "waited for readiness before forwarding");
    }

    /// The authority that reaches port `port` of the instance whose address is `ip`: the address itself, or with
    /// `via_published` the port published for it (an instance that published none is dialled at its address,
    /// which then fails as any unreachable target does).
    fn dial(&self, status: &aenv_core::EnvInstanceStatus, ip: &str, port: u16) -> String {
        if self.via_published
            && let Some(p) = status.ports.iter().find(|p| p.container_port == port && p.protocol == "tcp")
        {
            let host = match p.host_ip.as_str() {
                "" | "0.0.0.0" | "::" => "127.0.0.1".to_string(),
                h if h.contains(':') => format!("[{h}]"),
                h => h.to_string(),
            };
            return format!("{host}:{}", p.host_port);
        }
        format!("{ip}:{port}")
    }

    async fn forward(
        &self,
        method: Method,
        path: FullPath,
        query: String,
        headers: HeaderMap,
        body: impl futures::Stream<Item = Result<impl Buf + Send + 'static, warp::Error>> + Send + 'static,
    ) -> warp::reply::Response {
        if let Some(rest) = path.as_str().strip_prefix(presign::PATH_PREFIX) {
            return self.presigned(rest, method, query, headers, body).await;
        }
        let Some(target) = headers.get(TARGET_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string) else {
            if let Some(rest) = path.as_str().strip_prefix(SERVICE_PREFIX) {
                let (service, tail) =
                    rest.split_once('/').map_or((rest, "/".to_string()), |(s, t)| (s, format!("/{t}")));
                return self.to_service(service, &tail, method, query, headers, body).await;
            }
            if path.as_str() == "/health" {
                return warp::reply::json(&json!({"status": "healthy", "message": "MCP Gateway is running"}))
                    .into_response();
            }
            return error(
                StatusCode::BAD_REQUEST,
                "the AEnvCore-MCPProxy-URL header is missing: it names the instance to reach, such as http://<instance ip>:8081",
                "",
            );
        };
        let uri: Uri = match target.parse() {
            Ok(u) => u,
            Err(e) => {
                return error(StatusCode::BAD_REQUEST, &format!("AEnvCore-MCPProxy-URL is not a URL: {e}"), &target);
            }
        };
        let (Some("http"), Some(host)) = (uri.scheme_str(), uri.host()) else {
            return error(StatusCode::BAD_REQUEST, "AEnvCore-MCPProxy-URL must be http://host:port", &target);
        };
        let port = uri.port_u16().unwrap_or(80);
        let caller = match &self.auth {
            Some(auth) => {
                let header = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
                match auth.authenticate(header) {
                    Ok(caller) => caller,
                    Err(e) => {
                        let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::UNAUTHORIZED);
                        return error(status, &e.message, &target);
                    }
                }
            }
            None => None,
        };
        let Some((authority, inst)) = self.endpoint(host, port, caller.as_ref()) else {
            warn!(target = %target, "refused a proxy target that is not one of this operator's instances");
            return error(StatusCode::FORBIDDEN, "the target is not a running instance of this operator", &target);
        };
        self.until_ready(&inst).await;
        self.relay(method, authority, path.as_str(), &query, headers, body, &target).await
    }

    /// A request on a presigned URL (`/presigned/<token>/<path>`): the token is the only credential; it reaches
    /// the port it names of the sandbox it was made for while that sandbox runs (the same uid: not a later
    /// instance under the same id), and nothing else. Every refusal is a 403 that reaches nothing.
    async fn presigned(
        &self,
        rest: &str,
        method: Method,
        query: String,
        headers: HeaderMap,
        body: impl futures::Stream<Item = Result<impl Buf + Send + 'static, warp::Error>> + Send + 'static,
    ) -> warp::reply::Response {
        let (token, tail) = rest.split_once('/').map_or((rest, "/".to_string()), |(t, p)| (t, format!("/{p}")));
        let grant = match self.signer.verify(token, jiff::Timestamp::now()) {
            Ok(grant) => grant,
            Err(refused) => {
                warn!(reason = %refused, "refused a presigned URL");
                return error(StatusCode::FORBIDDEN, &refused.to_string(), "");
            }
        };
        let inst = self.instances.get(&crate::store::key(&self.namespace, &grant.instance)).filter(|i| {
            i.metadata.uid.as_deref() == Some(grant.uid.as_str())
                && !i.is_deleting()
                && i.phase() == Phase::Running
                && i.pool().is_none()
        });
        let gone = || {
            error(
                StatusCode::FORBIDDEN,
                "the sandbox of this presigned URL is not running (gone, paused or replaced)",
                "",
            )
        };
        let Some(inst) = inst else { return gone() };
        let Some(authority) = inst.status.as_ref().and_then(|s| Some(self.dial(s, s.ip.as_deref()?, grant.port)))
        else {
            return gone();
        };
        self.until_ready(&inst).await;
        let label = format!("presigned {}:{}", grant.instance, grant.port);
        self.relay(method, authority, &tail, &query, headers, body, &label).await
    }

    /// A request to a service's address (`/env-service/{id}/...`): forwarded to its ready replicas in turn.
    async fn to_service(
        &self,
        service: &str,
        tail: &str,
        method: Method,
        query: String,
        headers: HeaderMap,
        body: impl futures::Stream<Item = Result<impl Buf + Send + 'static, warp::Error>> + Send + 'static,
    ) -> warp::reply::Response {
        let caller = match &self.auth {
            Some(auth) => {
                let header = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
                match auth.authenticate(header) {
                    Ok(caller) => caller,
                    Err(e) => {
                        let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::UNAUTHORIZED);
                        return error(status, &e.message, "");
                    }
                }
            }
            None => None,
        };
        let Some(svc) = self
            .services
            .get(&crate::store::key(&self.namespace, service))
            .filter(|s| s.metadata.deletion_timestamp.is_none() && UseCases::service_visible(s, caller.as_ref()))
        else {
            return error(StatusCode::NOT_FOUND, &format!("service \"{service}\" not found"), "");
        };
        // A service the engine runs natively has a Service of its own that spreads requests over the ready
        // replicas: it is reached by its in-cluster address (from an operator that runs in the cluster).
        if let Some(native) = self.engine.native_services() {
            let label = format!("service {service}");
            return self.relay(method, native.service_address(&svc), tail, &query, headers, body, &label).await;
        }
        let mut ready: Vec<String> = self
            .instances
            .list_where(&|i: &EnvInstance| {
                i.service() == Some(service)
                    && i.namespace() == self.namespace
                    && i.member_state() == aenv_core::MemberState::Ready
            })
            .iter()
            .filter_map(|i| {
                let status = i.status.as_ref()?;
                Some(self.dial(status, status.ip.as_deref()?, svc.spec.port))
            })
            .collect();
        if ready.is_empty() {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("service \"{service}\" has no ready replica yet; try again shortly"),
                "",
            );
        }
        ready.sort();
        // An MCP session lives in the replica that issued it: its requests go there while it is ready; others,
        // and sessions whose replica went, take the next replica in turn.
        let session = headers.get(SESSION_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string);
        let sticky = session.as_deref().and_then(|s| self.sessions.replica(service, s)).filter(|a| ready.contains(a));
        let authority = sticky.unwrap_or_else(|| {
            let turn = self.turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            ready[turn % ready.len()].clone()
        });
        let label = format!("service {service}");
        let ending = method == Method::DELETE;
        let resp = self.relay(method, authority.clone(), tail, &query, headers, body, &label).await;
        if let Some(issued) = resp.headers().get(SESSION_HEADER).and_then(|v| v.to_str().ok()) {
            self.sessions.issued(service, issued, authority);
        } else if let (true, Some(s)) = (ending && resp.status().is_success(), session.as_deref()) {
            // The client ended its session (MCP's DELETE).
            self.sessions.ended(service, s);
        }
        resp
    }

    /// Forwards the request to `authority` with `path` and `query`, streaming the answer back.
    #[allow(clippy::too_many_arguments)]
    async fn relay(
        &self,
        method: Method,
        authority: String,
        path: &str,
        query: &str,
        headers: HeaderMap,
        body: impl futures::Stream<Item = Result<impl Buf + Send + 'static, warp::Error>> + Send + 'static,
        target: &str,
    ) -> warp::reply::Response {
        let path_and_query = if query.is_empty() { path.to_string() } else { format!("{path}?{query}") };
        let upstream: Uri = match format!("http://{authority}{path_and_query}").parse() {
            Ok(u) => u,
            Err(e) => return error(StatusCode::BAD_REQUEST, &format!("bad path: {e}"), target),
        };
        let body = StreamBody::new(body.map(|chunk| {
            chunk.map(|mut b| Frame::data(b.copy_to_bytes(b.remaining()))).map_err(|e| Box::new(e) as BoxError)
        }));
        let mut request = hyper::Request::builder().method(method).uri(upstream);
        for (name, value) in &headers {
            if !HOP_BY_HOP.contains(&name.as_str()) && !NOT_FOR_THE_SANDBOX.contains(&name.as_str()) {
                request = request.header(name, value);
            }
        }
        let request = match request.header(header::HOST, authority).body(BodyExt::boxed_unsync(body)) {
            Ok(r) => r,
            Err(e) => return error(StatusCode::BAD_REQUEST, &format!("cannot build the request: {e}"), target),
        };
        debug!(target = %target, path = %path, "forwarding");
        let response = match self.client.request(request).await {
            Ok(r) => r,
            Err(e) => {
                return error(
                    StatusCode::BAD_GATEWAY,
                    &format!("Failed to forward request to MCP server: {e}"),
                    target,
                );
            }
        };
        let (parts, incoming) = response.into_parts();
        // Stream the answer through as it comes (SSE stays open until either side closes it); a client that goes
        // closes the upstream connection at once, even while the upstream is quiet.
        let frames = http_body_util::BodyDataStream::new(incoming).map(|data| data.map_err(std::io::Error::other));
        let mut reply = warp::reply::stream(super::stream::pump(frames, None)).into_response();
        *reply.status_mut() = parts.status;
        for (name, value) in &parts.headers {
            if !HOP_BY_HOP.contains(&name.as_str()) {
                reply.headers_mut().append(HeaderName::from(name), value.clone());
            }
        }
        reply
    }
}

fn is_any_or_loopback(ip: &str) -> bool {
    matches!(ip, "" | "0.0.0.0" | "127.0.0.1" | "::" | "::1")
}

fn error(status: StatusCode, message: &str, server: &str) -> warp::reply::Response {
    let body = if server.is_empty() { json!({"error": message}) } else { json!({"error": message, "server": server}) };
    warp::reply::with_status(warp::reply::json(&body), status).into_response()
}

/// Every request on the proxy listener.
pub fn routes(proxy: Arc<Proxy>) -> impl Filter<Extract = (warp::reply::Response,), Error = Infallible> + Clone {
    let raw_query = warp::query::raw().or(warp::any().map(String::new)).unify();
    warp::method()
        .and(warp::path::full())
        .and(raw_query)
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .and(warp::any().map(move || proxy.clone()))
        .then(|method, path, query, headers, body, proxy: Arc<Proxy>| async move {
            proxy.forward(method, path, query, headers, body).await
        })
        .recover(|_rej: warp::Rejection| async move {
            Ok::<_, Infallible>(error(StatusCode::BAD_REQUEST, "the request could not be read", ""))
        })
        .unify()
}
