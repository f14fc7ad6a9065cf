//! The data-plane proxy (`--proxy-listen`, `:8081` as in AEnvironment): requests carrying
//! `AEnvCore-MCPProxy-URL: http://<instance ip>:<port>` are forwarded there with their method, path, query,
//! headers and body, and the answer streams back (Server-Sent Events on `/sse` and streamable HTTP on `/mcp`
//! included). Without the header, `/health` is answered here.
//!
//! Unlike upstream it is not an open proxy: it forwards only to instances this operator runs (a live instance's
//! IP, or a port an instance published on this host), and refuses any other target with 403.

use std::{convert::Infallible, sync::Arc, time::Duration};

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

use crate::store::ObjectStore;

/// The header that names the target.
pub const TARGET_HEADER: &str = "aenvcore-mcpproxy-url";

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

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
    TARGET_HEADER,
];

/// The proxy's state.
pub struct Proxy {
    instances: Arc<dyn ObjectStore<EnvInstance>>,
    client: Client<HttpConnector, ProxyBody>,
}

impl Proxy {
    pub fn new(instances: Arc<dyn ObjectStore<EnvInstance>>) -> Arc<Self> {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        Arc::new(Proxy { instances, client: Client::builder(TokioExecutor::new()).build(connector) })
    }

    /// Whether `host:port` is an endpoint of a live instance of this operator. Sandboxes waiting in a pool are
    /// nobody's yet: not reachable through the proxy until claimed.
    fn allowed(&self, host: &str, port: u16) -> bool {
        let loopback = matches!(host, "127.0.0.1" | "localhost" | "::1" | "[::1]");
        self.instances
            .list_where(&|i: &EnvInstance| !i.is_deleting() && i.phase() == Phase::Running && i.pool().is_none())
            .iter()
            .filter_map(|i| i.status.as_ref())
            .any(|s| {
                s.ip.as_deref() == Some(host)
                    || s.ports.iter().any(|p| {
                        p.host_port == port && (p.host_ip == host || (loopback && is_any_or_loopback(&p.host_ip)))
                    })
            })
    }

    async fn forward(
        &self,
        method: Method,
        path: FullPath,
        query: String,
        headers: HeaderMap,
        body: impl futures::Stream<Item = Result<impl Buf + Send + 'static, warp::Error>> + Send + 'static,
    ) -> warp::reply::Response {
        let Some(target) = headers.get(TARGET_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string) else {
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
        if !self.allowed(host, port) {
            warn!(target = %target, "refused a proxy target that is not one of this operator's instances");
            return error(StatusCode::FORBIDDEN, "the target is not a running instance of this operator", &target);
        }
        let authority = format!("{}:{port}", uri.host().unwrap_or_default());
        let path_and_query =
            if query.is_empty() { path.as_str().to_string() } else { format!("{}?{query}", path.as_str()) };
        let upstream: Uri = match format!("http://{authority}{path_and_query}").parse() {
            Ok(u) => u,
            Err(e) => return error(StatusCode::BAD_REQUEST, &format!("bad path: {e}"), &target),
        };
        let body = StreamBody::new(body.map(|chunk| {
            chunk.map(|mut b| Frame::data(b.copy_to_bytes(b.remaining()))).map_err(|e| Box::new(e) as BoxError)
        }));
        let mut request = hyper::Request::builder().method(method).uri(upstream);
        for (name, value) in &headers {
            if !HOP_BY_HOP.contains(&name.as_str()) {
                request = request.header(name, value);
            }
        }
        let request = match request.header(header::HOST, authority).body(BodyExt::boxed_unsync(body)) {
            Ok(r) => r,
            Err(e) => return error(StatusCode::BAD_REQUEST, &format!("cannot build the request: {e}"), &target),
        };
        debug!(target = %target, path = %path.as_str(), "forwarding");
        let response = match self.client.request(request).await {
            Ok(r) => r,
            Err(e) => {
                return error(
                    StatusCode::BAD_GATEWAY,
                    &format!("Failed to forward request to MCP server: {e}"),
                    &target,
                );
            }
        };
        let (parts, mut incoming) = response.into_parts();
        // Stream the answer through as it comes (SSE stays open until either side closes it).
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
        tokio::spawn(async move {
            while let Some(frame) = incoming.frame().await {
                let item = match frame {
                    Ok(f) => match f.into_data() {
                        Ok(data) => Ok(data),
                        Err(_) => continue,
                    },
                    Err(e) => Err(std::io::Error::other(e)),
                };
                let stop = item.is_err();
                if tx.send(item).await.is_err() || stop {
                    return;
                }
            }
        });
        let mut reply = warp::reply::stream(tokio_stream::wrappers::ReceiverStream::new(rx)).into_response();
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
