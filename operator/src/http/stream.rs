//! Streamed answers (log follows, exec events, proxied answers, downloads) go through one pump, so that each ends
//! when its client goes. The client's going drops the answer's body, which closes the pump's channel; the pump
//! waits for that beside the next item of its source, so a silent source (a container that writes nothing, an SSE
//! upstream that sends nothing) is dropped at once, with the Docker or upstream connection it holds, not at its
//! next item (which may never come).
//!
//! A stream may also carry a cutoff: an instant past which it is cut even though its client is still connected
//! but does not take what it is sent (a reader that never reads). Cutting drops the source and closes the
//! connection (hyper waits on the socket and would never poll the body again), so a stalled reader holds
//! nothing past it.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use futures::{Stream, StreamExt};
use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};

use super::server::ConnectionCloser;

/// Items buffered between a source and the connection.
const BUFFER: usize = 16;

/// When to give up on a client that does not take a stream: the connection is closed at `at` unless the whole
/// stream was taken by then.
pub struct Cutoff {
    pub at: Instant,
    pub closer: Option<ConnectionCloser>,
}

impl Cutoff {
    fn cut(&self) {
        if let Some(closer) = &self.closer {
            closer.close();
        }
    }
}

/// `source` as an answer's body (`Send + Sync`, as warp wants), read by a task of its own that stops (dropping
/// `source`) as soon as the body is dropped, and at `cutoff` when one is given.
pub fn pump<T, S>(source: S, cutoff: Option<Cutoff>) -> Body<T>
where
    T: Send + 'static,
    S: Stream<Item = T> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(BUFFER);
    let (taken_tx, taken_rx) = oneshot::channel();
    tokio::spawn(run(source, tx, taken_rx, cutoff));
    Body { rx: tokio_stream::wrappers::ReceiverStream::new(rx), _taken: taken_tx }
}

async fn run<T, S: Stream<Item = T>>(
    source: S,
    tx: mpsc::Sender<T>,
    taken: oneshot::Receiver<()>,
    cutoff: Option<Cutoff>,
) {
    let deadline = async {
        match &cutoff {
            Some(c) => tokio::time::sleep_until(c.at).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let mut source = std::pin::pin!(source);
    loop {
        let next = tokio::select! {
            next = source.next() => next,
            () = tx.closed() => return,
            () = &mut deadline => break,
        };
        let Some(item) = next else {
            // All sent: the body ends once the connection has taken what is buffered.
            drop(tx);
            if cutoff.is_some() {
                tokio::select! {
                    _ = taken => return,
                    () = &mut deadline => break,
                }
            }
            return;
        };
        tokio::select! {
            sent = tx.send(item) => if sent.is_err() { return },
            () = &mut deadline => break,
        }
    }
    if let Some(c) = &cutoff {
        c.cut();
    }
}

/// The body end of a [`pump`]; dropping it (the client went, or the answer was written whole) stops the pump.
pub struct Body<T> {
    rx: tokio_stream::wrappers::ReceiverStream<T>,
    /// Dropped with the body: tells the pump that the connection took (or dropped) everything.
    _taken: oneshot::Sender<()>,
}

impl<T> Stream for Body<T> {
    type Item = T;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        Pin::new(&mut self.rx).poll_next(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_silent_source_is_dropped_when_the_body_is() {
        let (dropped_tx, dropped_rx) = oneshot::channel::<()>();
        // A source that never yields, holding a sender that tells when it is dropped.
        let source = futures::stream::pending::<u8>().map(move |x| {
            let _ = &dropped_tx;
            x
        });
        let body = pump(source, None);
        drop(body);
        tokio::time::timeout(Duration::from_secs(5), dropped_rx)
            .await
            .expect("the pump drops a silent source once its body is gone")
            .unwrap_err();
    }

    #[tokio::test]
    async fn a_stream_not_taken_is_cut_at_its_cutoff() {
        let closer = ConnectionCloser::default();
        let source = futures::stream::iter(0..1000u32);
        let cutoff = Cutoff { at: Instant::now() + Duration::from_millis(200), closer: Some(closer.clone()) };
        let _body = pump(source, Some(cutoff));
        tokio::time::timeout(Duration::from_secs(5), closer.closed()).await.expect("the connection is closed");
    }

    #[tokio::test]
    async fn a_stream_taken_whole_is_not_cut() {
        let closer = ConnectionCloser::default();
        let cutoff = Cutoff { at: Instant::now() + Duration::from_millis(300), closer: Some(closer.clone()) };
        let body = pump(futures::stream::iter(0..100u32), Some(cutoff));
        assert_eq!(body.collect::<Vec<_>>().await.len(), 100);
        assert!(tokio::time::timeout(Duration::from_millis(600), closer.closed()).await.is_err());
    }
}
