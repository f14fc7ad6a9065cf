//! Serving a warp filter on a TCP listener within bounds, so that a flood of connections cannot take the process
//! down: an accept loop of our own over hyper's HTTP/1 connection, with
//! - a cap on open connections per listener and per client address: a connection beyond either is answered
//!   `503` (best effort, without waiting) and closed at once, never queued;
//! - a header-read timeout (hyper's, on a Tokio timer): a request head must arrive whole within it, counted from
//!   the connection's start and again from the end of each answer on a kept-alive connection;
//! - an idle timeout: a connection on which no byte moved for that long is closed (0 turns it off);
//! - a [`ConnectionCloser`] in every request's extensions, with which a handler closes its connection (a
//!   streamed answer whose reader stopped taking it: hyper would wait on the socket for ever).
//!
//! The per-listener cap is also held below the process's open-file limit (`RLIMIT_NOFILE`), so that the API's
//! sockets cannot use up the descriptors the Docker client, the store and the reconciler need.

use std::{
    convert::Infallible,
    future::Future,
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{Notify, Semaphore, watch},
};
use tracing::{debug, info, warn};
use warp::Filter;

use crate::metrics::{ListenerLabels, Metrics};

/// The bounds of one listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnLimits {
    /// Time a request head may take to arrive whole.
    pub header_read_timeout: Duration,
    /// A connection on which no byte moved for this long is closed; `None` = never.
    pub idle_timeout: Option<Duration>,
    /// Open connections on the listener.
    pub max_connections: usize,
    /// Open connections from one client address.
    pub max_connections_per_ip: usize,
}

impl ConnLimits {
    /// These limits with `max_connections` held to `budget` (a share of the open-file limit), saying so in the
    /// log when it lowers them.
    pub fn within_budget(mut self, listener: &str, budget: usize) -> Self {
        let budget = budget.max(1);
        if self.max_connections > budget {
            warn!(
                listener,
                asked = self.max_connections,
                allowed = budget,
                "--max-connections lowered to a quarter of the open-file limit (RLIMIT_NOFILE), so that client connections cannot use up the descriptors the Docker client and the store need; raise the limit (ulimit -n) to allow more"
            );
            self.max_connections = budget;
        }
        self.max_connections_per_ip = self.max_connections_per_ip.clamp(1, self.max_connections);
        self
    }
}

/// The soft open-file limit of this process, if it can be read.
pub fn open_file_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

/// Open connections per client address.
type PerAddress = crate::slots::Slots<IpAddr>;

/// Closes the connection a request came on (found in the request's extensions: `warp::ext::optional`).
#[derive(Clone, Default)]
pub struct ConnectionCloser(Arc<Notify>);

impl ConnectionCloser {
    /// Asks for the connection to be closed now, whatever it is doing.
    pub fn close(&self) {
        self.0.notify_one();
    }

    /// Resolves once [`ConnectionCloser::close`] was called.
    pub async fn closed(&self) {
        self.0.notified().await;
    }
}

/// A service that puts the connection's [`ConnectionCloser`] in each request's extensions.
struct WithCloser<S> {
    inner: S,
    closer: ConnectionCloser,
}

impl<S, B> hyper::service::Service<hyper::Request<B>> for WithCloser<S>
where
    S: hyper::service::Service<hyper::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn call(&self, mut request: hyper::Request<B>) -> Self::Future {
        request.extensions_mut().insert(self.closer.clone());
        self.inner.call(request)
    }
}

/// What a refused connection is told before it is closed.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\nretry-after: 1\r\ncontent-type: text/plain\r\ncontent-length: 21\r\n\r\ntoo many connections\n";

/// Answers 503 if the socket takes it now, and closes it.
fn refuse(stream: TcpStream) {
    let _ = stream.try_write(REFUSAL);
    // Dropping closes the socket at once.
}

/// How long a connection open at shutdown may go on: a request in flight finishes (what it stored is durable before
/// it answers), a long-lived stream (an MCP session's GET, a followed log) is ended, so that a restart takes about
/// this long rather than until the last client hangs up.
const DRAIN_GRACE: Duration = Duration::from_millis(1500);

/// Serves `filter` on `listener` within `limits` until `shutdown` resolves; then stops accepting, lets open
/// connections finish their request within [`DRAIN_GRACE`], ends the rest, and returns.
pub async fn serve<F>(
    name: &'static str,
    listener: TcpListener,
    filter: F,
    limits: ConnLimits,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send,
) where
    F: Filter<Extract = (warp::reply::Response,), Error = Infallible> + Clone + Send + Sync + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let per_address = Arc::new(PerAddress::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let refused = |reason: &str| {
        metrics.http_refused.get_or_create(&ListenerLabels { listener: name.into(), reason: reason.into() }).inc();
    };
    info!(
        listener = name,
        max_connections = limits.max_connections,
        max_connections_per_ip = limits.max_connections_per_ip,
        header_read_timeout = ?limits.header_read_timeout,
        idle_timeout = ?limits.idle_timeout,
        "connection limits"
    );
    let mut shutdown = std::pin::pin!(shutdown);
    let mut last_accept_warning: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                if !is_connection_error(&e) {
                    // Out of descriptors or memory: say so now and then, and give the process a moment.
                    if last_accept_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
                        warn!(listener = name, error = %e, "accept failed");
                        last_accept_warning = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            refused("listener_full");
            debug!(listener = name, %peer, "refused a connection: the listener holds its limit");
            refuse(stream);
            continue;
        };
        let Some(slot) = per_address.take(peer.ip(), limits.max_connections_per_ip) else {
            refused("address_full");
            debug!(listener = name, %peer, "refused a connection: its address holds its limit");
            refuse(stream);
            continue;
        };
        // Answers go out at once: Nagle's algorithm against a client's delayed ACK cost ~40 ms per proxied request.
        let _ = stream.set_nodelay(true);
        let closer = ConnectionCloser::default();
        let service =
            WithCloser { inner: TowerToHyperService::new(warp::service(filter.clone())), closer: closer.clone() };
        let limits = limits.clone();
        let stop = stop_rx.clone();
        tokio::spawn(async move {
            let _held = (permit, slot);
            serve_connection(stream, peer, service, &limits, stop, closer).await;
        });
    }
    let _ = stop_tx.send(true);
    drop(listener);
    let open = limits.max_connections.saturating_sub(slots.available_permits());
    info!(listener = name, open, grace = ?DRAIN_GRACE, "draining: no new connections; open ones finish their request or are ended");
    // Each connection ends itself within the grace; this bounds the wait should one not.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(DRAIN_GRACE + Duration::from_millis(500), slots.acquire_many(all)).await;
}

async fn serve_connection<S>(
    stream: TcpStream,
    peer: SocketAddr,
    service: S,
    limits: &ConnLimits,
    mut stop: watch::Receiver<bool>,
    closer: ConnectionCloser,
) where
    S: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = warp::reply::Response,
            Error = Infallible,
        >,
    S::Future: Send + 'static,
{
    let started = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let io = TokioIo::new(Activity { inner: stream, started, last: last.clone() });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout).keep_alive(true);
    // With upgrades: a WebSocket (the terminal) takes the connection over once its handshake is answered.
    let conn = builder.serve_connection(io, service).with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let mut stopping = false;
    let mut drain_at: Option<tokio::time::Instant> = None;
    loop {
        let idle_deadline = limits.idle_timeout.map(|idle| {
            let last = Duration::from_millis(last.load(Ordering::Relaxed));
            tokio::time::Instant::from_std(started + last + idle)
        });
        let idle = async {
            match idle_deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let drain = async {
            match drain_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            () = idle => {
                let quiet = started.elapsed().saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
                if limits.idle_timeout.is_some_and(|idle| quiet >= idle) {
                    debug!(%peer, "closing an idle connection");
                    return;
                }
            }
            () = closer.closed() => {
                debug!(%peer, "closing a connection its handler gave up on");
                return;
            }
            () = drain => {
                debug!(%peer, "ending a connection still open after the drain grace");
                return;
            }
            changed = stop.changed(), if !stopping => {
                stopping = true;
                drain_at = Some(tokio::time::Instant::now() + DRAIN_GRACE);
                if changed.is_ok() {
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

/// A socket that notes when a byte last moved (milliseconds since `started`).
struct Activity {
    inner: TcpStream,
    started: Instant,
    last: Arc<AtomicU64>,
}

impl Activity {
    fn touch(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }
}

impl AsyncRead for Activity {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        polled
    }
}

impl AsyncWrite for Activity {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_file_limit_is_the_soft_limit_the_kernel_reports() {
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
        let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
        let soft = line.split_whitespace().nth(3).unwrap();
        assert_eq!(open_file_limit(), soft.parse::<u64>().ok(), "{line}");
    }

    #[test]
    fn per_address_counts_down_on_drop() {
        let table = Arc::new(PerAddress::default());
        let ip: IpAddr = "127.0.0.2".parse().unwrap();
        let a = table.take(ip, 2).unwrap();
        let _b = table.take(ip, 2).unwrap();
        assert!(table.take(ip, 2).is_none(), "a third connection from one address is refused");
        assert!(table.take("127.0.0.3".parse().unwrap(), 2).is_some(), "another address has its own count");
        drop(a);
        assert!(table.take(ip, 2).is_some(), "a closed connection frees its place");
    }

    #[test]
    fn the_listener_cap_stays_within_the_budget() {
        let limits = ConnLimits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: None,
            max_connections: 1024,
            max_connections_per_ip: 2048,
        };
        let held = limits.clone().within_budget("api", 64);
        assert_eq!((held.max_connections, held.max_connections_per_ip), (64, 64));
        assert_eq!(limits.clone().within_budget("api", 4096), ConnLimits { max_connections_per_ip: 1024, ..limits });
    }
}
