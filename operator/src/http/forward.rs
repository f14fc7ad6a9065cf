//! With leader election, the writes that take quota are served by the replica that holds the Lease, so that
//! caps, the create rate and pool demand are counted in one process and hold across replicas: a follower forwards
//! them to the leader and hands its answer back as it came (status, headers, body). Those writes are
//! [`forwardable`]: creates (`POST /env-instance`, `POST /pods`), new pools and services and their resizes
//! (`POST`/`PUT` of `/env-pool`, `/env-service`, `/services`), snapshots and forks; and the writes of what they
//! read or count (template registrations and deletions, deletions of instances, pools and services), so that a
//! client's writes land in the leader's cache in the order it sent them (a template registered through a
//! follower is there for the pool made next; a deletion makes room for the next create at once). Everything else
//! (reads, exec, files, pause, warmup) is served where it arrives.
//!
//! - The caller is authenticated here first (the same tokens as the leader's), so that requests without a valid
//!   token cost the leader nothing; its `Authorization` header goes to the leader unchanged, which checks it again.
//! - While no leader is known (no holder, an expired Lease, a new holder that has not published its URL yet) or
//!   the leader cannot be reached, the answer is 503 with `Retry-After`, saying so; nothing is counted here.
//! - A forwarded request carries [`FORWARDED_HEADER`]. It only ever takes power away: a replica never forwards a
//!   request that carries it again, and answers 503 when it does not lead (two replicas that each believe the
//!   other leads cannot pass a request back and forth). The leader serves a request the same with or without it,
//!   so a client that sends it gains nothing, and it needs no secret.
//! - Bounds: the body is read here within [`super::MAX_BODY_BYTES`] before the leader is dialled (a slow client
//!   holds a follower's connection, never the leader's); the leader's answer within [`MAX_ANSWER_BYTES`]; the
//!   whole exchange within `--forward-timeout` (504 after it: the leader may have served the request); at most
//!   as many forwards at once as the leader takes connections from one address (`--max-connections-per-ip`),
//!   503 beyond.

use std::{convert::Infallible, sync::Arc, time::Duration};

use futures::{Stream, StreamExt};
use http_body_util::{BodyExt, Full, Limited, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Bytes, Frame};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use tokio::sync::Semaphore;
use tracing::{debug, warn};
use warp::{
    Buf, Filter, Rejection,
    http::{HeaderMap, HeaderName, HeaderValue, Method, Uri, header},
    path::FullPath,
};

use super::{ApiError, Caller, MAX_BODY_BYTES};
use crate::{controller::leader::Leadership, usecase::Principal};

/// The header a follower puts on a request it forwards: the follower's identity. A replica that receives it never
/// forwards the request again.
pub const FORWARDED_HEADER: &str = "aenv-forwarded-by";

/// Largest answer of the leader handed back (the answers of the forwarded writes are small JSON documents).
pub const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// How long a follower waits for a TCP connection to the leader.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Headers that belong to one hop: never forwarded, in either direction.
const HOP_BY_HOP: &[&str] =
    &["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "host"];

type ForwardBody = UnsyncBoxBody<Bytes, Infallible>;

/// Why a request could not be forwarded to the leader.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error(
        "this replica does not lead and knows no leader to forward to: {0}. Creates, deletions, pools, services, templates, resizes, snapshots and forks are served by the replica that holds the Lease, so that caps, the create rate and pool demand hold across replicas; retry shortly"
    )]
    NoLeader(String),
    #[error(
        "this replica received a forwarded request but does not hold the Lease (the Lease moved while it was forwarded); retry shortly"
    )]
    ForwardedHere,
    #[error(
        "the leader {leader} cannot be reached at {url}: {source}. Creates, deletions, pools, services, templates, resizes, snapshots and forks are served by the leader; retry shortly"
    )]
    Unreachable {
        leader: String,
        url: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    #[error(
        "the connection to the leader {leader} broke before its whole answer came ({source}): the request may have been served; look (GET) before you retry"
    )]
    Broken {
        leader: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "the leader {leader} did not answer within {timeout:?} (--forward-timeout): the request may have been served; look (GET) before you retry"
    )]
    TimedOut { leader: String, timeout: Duration },
    #[error("the leader's answer is larger than {MAX_ANSWER_BYTES} bytes")]
    AnswerTooLarge,
    #[error("the request body is larger than {MAX_BODY_BYTES} bytes")]
    BodyTooLarge,
    #[error("the request body could not be read: {0}")]
    BodyUnreadable(#[source] warp::Error),
    #[error(
        "{0} requests are being forwarded to the leader already (--max-connections-per-ip, which the leader holds this replica to); retry shortly"
    )]
    Busy(usize),
    #[error("the leader's URL {url:?} (published on the Lease) with {path:?} is not a URL: {source}")]
    BadUrl {
        url: String,
        path: String,
        #[source]
        source: warp::http::uri::InvalidUri,
    },
    #[error("the forwarded request could not be built: {0}")]
    Request(#[source] warp::http::Error),
}

impl From<ForwardError> for ApiError {
    fn from(e: ForwardError) -> Self {
        let (status, retry_after) = match &e {
            ForwardError::NoLeader(_)
            | ForwardError::ForwardedHere
            | ForwardError::Unreachable { .. }
            | ForwardError::Busy(_) => (503, Some(Duration::from_secs(1))),
            ForwardError::Broken { .. } | ForwardError::AnswerTooLarge | ForwardError::BadUrl { .. } => (502, None),
            ForwardError::TimedOut { .. } => (504, None),
            ForwardError::BodyTooLarge => (413, None),
            ForwardError::BodyUnreadable(_) => (400, None),
            ForwardError::Request(_) => (500, None),
        };
        ApiError { status, message: e.to_string(), retry_after, field: None }
    }
}

/// A follower's way to the leader.
pub struct Forwarder {
    leadership: Arc<Leadership>,
    client: Client<HttpConnector, ForwardBody>,
    timeout: Duration,
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
}

impl Forwarder {
    /// Forwards within `timeout`, at most `max_in_flight` at once; idle connections to the leader are closed
    /// before the leader's `header_read_timeout` would close them.
    pub fn new(
        leadership: Arc<Leadership>,
        timeout: Duration,
        max_in_flight: usize,
        header_read_timeout: Duration,
    ) -> Arc<Self> {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout((header_read_timeout / 2).min(Duration::from_secs(5)))
            .build(connector);
        let max_in_flight = max_in_flight.max(1);
        Arc::new(Forwarder {
            leadership,
            client,
            timeout,
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
        })
    }

    /// Forwards one request to the leader and hands back its answer.
    async fn forward(
        &self,
        method: Method,
        path: FullPath,
        query: String,
        headers: HeaderMap,
        body: impl Stream<Item = Result<impl Buf + Send + 'static, warp::Error>> + Send + 'static,
    ) -> Result<warp::reply::Response, ForwardError> {
        if headers.contains_key(FORWARDED_HEADER) {
            return Err(ForwardError::ForwardedHere);
        }
        let (leader, url) = self.leadership.leader().map_err(|reason| {
            self.leadership.refresh_soon();
            ForwardError::NoLeader(reason)
        })?;
        let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_BODY_BYTES) {
            return Err(ForwardError::BodyTooLarge);
        }
        let _permit = self.in_flight.clone().try_acquire_owned().map_err(|_| ForwardError::Busy(self.max_in_flight))?;
        let bytes = read_bounded(body).await?;
        let path_and_query =
            if query.is_empty() { path.as_str().to_string() } else { format!("{}?{query}", path.as_str()) };
        let target = format!("{}{path_and_query}", url.trim_end_matches('/'));
        let uri: Uri = target.parse().map_err(|source| ForwardError::BadUrl {
            url: url.clone(),
            path: path_and_query.clone(),
            source,
        })?;
        let mut request = hyper::Request::builder().method(method).uri(uri);
        for (name, value) in &headers {
            if !HOP_BY_HOP.contains(&name.as_str()) && name.as_str() != FORWARDED_HEADER {
                request = request.header(name, value);
            }
        }
        if let Ok(me) = HeaderValue::from_str(&self.leadership.identity) {
            request = request.header(FORWARDED_HEADER, me);
        }
        // With a Content-Length, the body goes as it is; without one (chunked, or no body at all), as a stream, so
        // that the leader sees the request as it was sent (and refuses it as it would have here).
        let body = if declared.is_some() {
            Full::new(bytes).boxed_unsync()
        } else {
            let chunks = if bytes.is_empty() { Vec::new() } else { vec![Ok(Frame::data(bytes))] };
            StreamBody::new(futures::stream::iter(chunks)).boxed_unsync()
        };
        let request = request.body(body).map_err(ForwardError::Request)?;
        debug!(leader = %leader, path = %path.as_str(), "forwarding to the leader");
        let exchange = async {
            let response = self.client.request(request).await.map_err(|source| {
                if source.is_connect() {
                    self.leadership.refresh_soon();
                    ForwardError::Unreachable { leader: leader.clone(), url: url.clone(), source }
                } else {
                    ForwardError::Broken { leader: leader.clone(), source: Box::new(source) }
                }
            })?;
            let (parts, incoming) = response.into_parts();
            let body = Limited::new(incoming, MAX_ANSWER_BYTES).collect().await.map_err(|source| {
                if source.is::<http_body_util::LengthLimitError>() {
                    ForwardError::AnswerTooLarge
                } else {
                    ForwardError::Broken { leader: leader.clone(), source }
                }
            })?;
            Ok::<_, ForwardError>((parts, body.to_bytes()))
        };
        let (parts, body) = match tokio::time::timeout(self.timeout, exchange).await {
            Ok(answered) => answered?,
            Err(_) => {
                warn!(leader = %leader, timeout = ?self.timeout, "the leader did not answer a forwarded request in time");
                return Err(ForwardError::TimedOut { leader, timeout: self.timeout });
            }
        };
        let mut reply = warp::reply::Response::new(body.into());
        *reply.status_mut() = parts.status;
        for (name, value) in &parts.headers {
            if !HOP_BY_HOP.contains(&name.as_str()) {
                reply.headers_mut().append(HeaderName::from(name), value.clone());
            }
        }
        Ok(reply)
    }
}

/// The body of a request, at most [`MAX_BODY_BYTES`].
async fn read_bounded(body: impl Stream<Item = Result<impl Buf, warp::Error>> + Send) -> Result<Bytes, ForwardError> {
    let mut body = std::pin::pin!(body);
    let mut all = Vec::new();
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.map_err(ForwardError::BodyUnreadable)?;
        if all.len() as u64 + chunk.remaining() as u64 > MAX_BODY_BYTES {
            return Err(ForwardError::BodyTooLarge);
        }
        while chunk.has_remaining() {
            let piece = chunk.chunk();
            all.extend_from_slice(piece);
            let n = piece.len();
            chunk.advance(n);
        }
    }
    Ok(Bytes::from(all))
}

/// Turns a filter that extracts one path parameter into one that extracts nothing.
fn unit(
    f: impl Filter<Extract = (String,), Error = Rejection> + Clone + Send + Sync + 'static,
) -> warp::filters::BoxedFilter<()> {
    f.map(|_: String| ()).untuple_one().boxed()
}

/// The routes of the writes that take quota, matched by the same path filters as the routes that serve them
/// (so that no spelling of a path reaches the local handler past the forwarder).
pub fn forwardable() -> warp::filters::BoxedFilter<()> {
    let post = || warp::post();
    let put = || warp::put();
    let delete = || warp::delete();
    warp::path!("env-instance")
        .and(post())
        .or(warp::path!("pods").and(post()))
        .unify()
        .or(warp::path!("env-pool").and(post()))
        .unify()
        .or(unit(warp::path!("env-pool" / String).and(put())))
        .unify()
        .or(warp::path!("env-service").and(post()))
        .unify()
        .or(unit(warp::path!("env-service" / String).and(put())))
        .unify()
        .or(warp::path!("services").and(post()))
        .unify()
        .or(unit(warp::path!("services" / String).and(put())))
        .unify()
        .or(unit(warp::path!("env-instance" / String / "snapshot").and(post())))
        .unify()
        .or(unit(warp::path!("env-instance" / String / "fork").and(post())))
        .unify()
        // What the writes above read or count, written where they are served: a template registered on a
        // follower and used at once by a pool or a create, a deletion that makes room for the next create.
        .or(warp::path!("env").and(post()))
        .unify()
        .or(warp::path!("env" / String / String).and(delete()).map(|_: String, _: String| ()).untuple_one())
        .unify()
        .or(unit(warp::path!("env-instance" / String).and(delete())))
        .unify()
        .or(unit(warp::path!("pods" / String).and(delete())))
        .unify()
        .or(unit(warp::path!("env-pool" / String).and(delete())))
        .unify()
        .or(unit(warp::path!("env-service" / String).and(delete())))
        .unify()
        .or(unit(warp::path!("services" / String).and(delete())))
        .unify()
        .boxed()
}

/// The forwarding layer, put before the API's routes: a [`forwardable`] request that arrives at a replica that
/// does not lead goes to the leader (after its caller was authenticated here); any other request, and every
/// request at the leader, is rejected here (not found) and served by the routes after it.
pub fn routes(
    forwarder: Arc<Forwarder>,
    who: Caller,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    let raw_query = warp::query::raw().or(warp::any().map(String::new)).unify();
    let follower = warp::any().and_then(move || {
        let forwarder = forwarder.clone();
        async move { if forwarder.leadership.leading() { Err(warp::reject::not_found()) } else { Ok(forwarder) } }
    });
    forwardable()
        .and(follower)
        .and(who)
        .and(warp::method())
        .and(warp::path::full())
        .and(raw_query)
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .then(
            |forwarder: Arc<Forwarder>,
             _caller: Option<Principal>,
             method: Method,
             path: FullPath,
             query: String,
             headers: HeaderMap,
             body| async move {
                match forwarder.forward(method, path, query, headers, body).await {
                    Ok(reply) => reply,
                    Err(e) => {
                        debug!(error = %e, "not forwarded");
                        ApiError::from(e).into_reply()
                    }
                }
            },
        )
}

#[cfg(test)]
mod tests {
    use warp::Reply;

    use super::*;

    /// Whether `method path` is forwardable, asked of the filter as the server asks it (a request through warp's
    /// service).
    async fn matches(method: &str, path: &str) -> bool {
        use hyper::service::Service as _;
        let filter = forwardable()
            .map(|| warp::http::StatusCode::OK.into_response())
            .or(warp::any().map(|| warp::http::StatusCode::NOT_FOUND.into_response()))
            .unify();
        let service = hyper_util::service::TowerToHyperService::new(warp::service(filter));
        let request =
            hyper::Request::builder().method(method).uri(path).body(http_body_util::Empty::<Bytes>::new()).unwrap();
        service.call(request).await.unwrap().status() == warp::http::StatusCode::OK
    }

    #[tokio::test]
    async fn the_writes_that_take_quota_or_change_what_it_counts_are_forwardable_and_nothing_else() {
        for (method, path) in [
            ("POST", "/env-instance"),
            ("POST", "/pods"),
            ("POST", "/env-pool"),
            ("PUT", "/env-pool/warm"),
            ("POST", "/env-service"),
            ("PUT", "/env-service/web"),
            ("POST", "/services"),
            ("PUT", "/services/web"),
            ("POST", "/env-instance/a-1/snapshot"),
            ("POST", "/env-instance/a-1/fork"),
            ("POST", "/env-instance?x=1"),
            ("POST", "/env"),
            ("DELETE", "/env/mini/1.0.0"),
            ("DELETE", "/env-instance/a-1"),
            ("DELETE", "/pods/a-1"),
            ("DELETE", "/env-pool/warm"),
            ("DELETE", "/env-service/web"),
            ("DELETE", "/services/web"),
        ] {
            assert!(matches(method, path).await, "{method} {path} is forwarded");
        }
        for (method, path) in [
            ("GET", "/env-instance"),
            ("GET", "/env-instance/a-1"),
            ("GET", "/env-instance/a-1/logs"),
            ("POST", "/env-instance/a-1/exec"),
            ("POST", "/env-instance/a-1/pause"),
            ("PUT", "/env-instance/a-1/files"),
            ("GET", "/env-instance/a-1/files"),
            ("GET", "/env-pool"),
            ("GET", "/env/mini/1.0.0"),
            ("POST", "/env/mini/1/warmup"),
            ("GET", "/services/web"),
            ("GET", "/metrics"),
        ] {
            assert!(!matches(method, path).await, "{method} {path} is served where it arrives");
        }
    }

    #[test]
    fn refusals_say_retry_only_when_nothing_was_served() {
        let e = ApiError::from(ForwardError::NoLeader("the Lease names no holder".into()));
        assert_eq!((e.status, e.retry_after), (503, Some(Duration::from_secs(1))));
        assert!(e.message.contains("the Lease names no holder") && e.message.contains("retry"), "{}", e.message);
        let e = ApiError::from(ForwardError::TimedOut { leader: "a".into(), timeout: Duration::from_secs(60) });
        assert_eq!((e.status, e.retry_after), (504, None));
        assert!(e.message.contains("may have been served"), "{}", e.message);
        assert_eq!(ApiError::from(ForwardError::ForwardedHere).status, 503);
    }

    #[tokio::test]
    async fn bodies_are_read_within_the_bound() {
        let small = futures::stream::iter(vec![Ok::<_, warp::Error>(Bytes::from_static(b"{\"a\":1}"))]);
        assert_eq!(read_bounded(small).await.unwrap(), Bytes::from_static(b"{\"a\":1}"));
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let big = futures::stream::iter((0..17).map(move |_| Ok::<_, warp::Error>(chunk.clone())));
        assert!(matches!(read_bounded(big).await, Err(ForwardError::BodyTooLarge)));
    }
}
