//! Leader election through a `coordination.k8s.io/v1` Lease (kube-lease-manager): only the holder of the Lease
//! runs the reconciler; every replica serves the REST API's reads. Losing the Lease stops the reconciler (in-flight
//! reconciles finish); winning it again starts a fresh one.
//!
//! The holder also serves every write that takes quota (creates, claims, new pools and services, resizes,
//! snapshots, forks): the caps, the create rate and pool demand are counted in one process, where they are exact.
//! So that followers can forward those writes there ([`crate::http::forward`]), the holder publishes the URL of
//! its API on the Lease, as two annotations naming the holder they belong to ([`URL_ANNOTATION`],
//! [`HOLDER_ANNOTATION`]); every replica reads the Lease now and then ([`watch_lease`]) and keeps what it saw in
//! its [`Leadership`]. kube-lease-manager neither writes annotations nor tells who holds the Lease, hence the
//! separate read and patch.

use std::{
    future::Future,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use futures::FutureExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::{Notify, watch};
use tracing::{debug, info, warn};

use super::{Context, LoopConfig, run};
use crate::Error;

/// The annotation of the Lease holding the URL of the holder's REST API.
pub const URL_ANNOTATION: &str = "aenv.io/api-url";
/// The annotation of the Lease naming the holder whose URL [`URL_ANNOTATION`] is (a new holder's URL is not
/// there yet while it still names the old one).
pub const HOLDER_ANNOTATION: &str = "aenv.io/api-url-holder";

/// How the Lease is held.
#[derive(Clone, Debug)]
pub struct LeaderElection {
    /// Name of the Lease object.
    pub lease_name: String,
    /// Namespace of the Lease object.
    pub namespace: String,
    /// This replica's identity in the Lease (`holderIdentity`); unique per replica.
    pub identity: String,
    /// How long a Lease stays valid after its last renewal.
    pub lease_duration: Duration,
    /// How long before expiry the holder renews (also the clock skew tolerated between nodes).
    pub renew_grace: Duration,
}

/// The leader as this replica last saw it on the Lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    /// The holder and the URL of its API, valid until the Lease expires unless renewed.
    Leader { identity: String, url: String, until: Instant },
    /// No leader to forward to, and why (for the 503's message).
    None(String),
}

/// What this replica knows of the election: whether it leads, and who does when it does not. Shared between the
/// election ([`run_when_leader`]), the Lease reader ([`watch_lease`]) and the API's forwarding layer.
pub struct Leadership {
    /// This replica's identity in the Lease.
    pub identity: String,
    /// The URL the other replicas reach this replica's API at.
    pub url: String,
    /// The Lease, as `namespace/name` (for messages).
    pub lease: String,
    leading: AtomicBool,
    seen: RwLock<Seen>,
    /// Wakes [`watch_lease`] before its next round (this replica began leading, or a forward found no leader).
    refresh: Notify,
}

impl Leadership {
    pub fn new(election: &LeaderElection, url: String) -> Arc<Self> {
        Arc::new(Leadership {
            identity: election.identity.clone(),
            url,
            lease: format!("{}/{}", election.namespace, election.lease_name),
            leading: AtomicBool::new(false),
            seen: RwLock::new(Seen::None("the Lease was not read yet".into())),
            refresh: Notify::new(),
        })
    }

    /// Whether this replica holds the Lease (as kube-lease-manager last told it).
    pub fn leading(&self) -> bool {
        self.leading.load(Ordering::SeqCst)
    }

    fn set_leading(&self, leading: bool) {
        if self.leading.swap(leading, Ordering::SeqCst) != leading {
            self.refresh.notify_one();
        }
    }

    /// The identity and API URL of the replica that holds the Lease now, or why none is known.
    pub fn leader(&self) -> Result<(String, String), String> {
        let seen = self.seen.read().unwrap_or_else(|p| p.into_inner()).clone();
        match seen {
            Seen::Leader { identity, until, .. } if until <= Instant::now() => {
                Err(format!("the Lease {} held by {identity} has expired without a renewal", self.lease))
            }
            Seen::Leader { identity, url, .. } => Ok((identity, url)),
            Seen::None(reason) => Err(reason),
        }
    }

    /// Asks for the Lease to be read again at once.
    pub fn refresh_soon(&self) {
        self.refresh.notify_one();
    }

    fn set_seen(&self, seen: Seen) {
        *self.seen.write().unwrap_or_else(|p| p.into_inner()) = seen;
    }

    /// What `lease`, read at `now` (wall clock) and `at` (monotonic), says of the leader, for this replica.
    pub fn observe(&self, lease: Option<&Lease>, now: SystemTime, at: Instant) -> Seen {
        let Some(lease) = lease else {
            return Seen::None(format!("the Lease {} does not exist yet (no replica leads)", self.lease));
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let Some(holder) = spec.holder_identity.filter(|h| !h.is_empty()) else {
            return Seen::None(format!("the Lease {} names no holder (no replica leads right now)", self.lease));
        };
        let expiry = match (spec.renew_time, spec.lease_duration_seconds) {
            (Some(renewed), Some(seconds)) => {
                let renewed: SystemTime = renewed.0.into();
                renewed.checked_add(Duration::from_secs(u64::try_from(seconds).unwrap_or(0)))
            }
            _ => None,
        };
        let left = expiry.and_then(|e| e.duration_since(now).ok()).filter(|left| !left.is_zero());
        let Some(left) = left else {
            return Seen::None(format!(
                "the Lease {} held by {holder} has expired without a renewal (a new leader takes over shortly)",
                self.lease
            ));
        };
        if holder == self.identity {
            return Seen::None(format!("this replica ({holder}) is taking the Lease {} over", self.lease));
        }
        let annotations = lease.metadata.annotations.clone().unwrap_or_default();
        let url = annotations.get(URL_ANNOTATION).filter(|u| !u.is_empty());
        match (annotations.get(HOLDER_ANNOTATION), url) {
            (Some(of), Some(url)) if *of == holder => {
                Seen::Leader { identity: holder, url: url.clone(), until: at + left }
            }
            _ => Seen::None(format!(
                "the leader {holder} has not published the URL of its API on the Lease {} yet",
                self.lease
            )),
        }
    }
}

/// How often [`watch_lease`] reads the Lease: a fifth of its duration, between 200 ms and 2 s.
pub fn lease_poll_interval(lease_duration: Duration) -> Duration {
    (lease_duration / 5).clamp(Duration::from_millis(200), Duration::from_secs(2))
}

/// Reads the Lease every [`lease_poll_interval`] (and when asked to), until `shutdown` resolves: keeps what it
/// says of the leader in `leadership`, and while this replica leads, publishes this replica's API URL on it
/// (again, should anything have taken it away).
pub async fn watch_lease(
    client: Client,
    election: LeaderElection,
    leadership: Arc<Leadership>,
    shutdown: impl Future<Output = ()> + Send,
) {
    let api = Api::<Lease>::namespaced(client, &election.namespace);
    let every = lease_poll_interval(election.lease_duration);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        match api.get_opt(&election.lease_name).await {
            Ok(lease) => {
                if let Some(lease) = lease.as_ref().filter(|l| leadership.leading() && !publishes(l, &leadership)) {
                    publish(&api, &election, lease, &leadership).await;
                }
                let seen = leadership.observe(lease.as_ref(), SystemTime::now(), Instant::now());
                debug!(?seen, "read the Lease");
                leadership.set_seen(seen);
            }
            Err(e) => {
                warn!(lease = %leadership.lease, error = %e, "could not read the Lease; the leader known so far stays known until its Lease expires");
            }
        }
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(every) => {}
            () = leadership.refresh.notified() => {}
        }
    }
}

/// Whether `lease` carries this replica's identity and URL in its annotations.
fn publishes(lease: &Lease, leadership: &Leadership) -> bool {
    let annotations = lease.metadata.annotations.as_ref();
    let get = |k: &str| annotations.and_then(|a| a.get(k)).map(String::as_str);
    get(HOLDER_ANNOTATION) == Some(leadership.identity.as_str()) && get(URL_ANNOTATION) == Some(leadership.url.as_str())
}

/// Writes this replica's identity and URL into the Lease's annotations, if it still holds it (a merge patch that
/// touches no field of the election; the resourceVersion makes it fail if the Lease changed since it was read).
async fn publish(api: &Api<Lease>, election: &LeaderElection, lease: &Lease, leadership: &Leadership) {
    let holder = lease.spec.as_ref().and_then(|s| s.holder_identity.as_deref());
    if holder != Some(leadership.identity.as_str()) {
        return;
    }
    let mut metadata = serde_json::json!({
        "annotations": {HOLDER_ANNOTATION: leadership.identity, URL_ANNOTATION: leadership.url},
    });
    if let Some(rv) = &lease.metadata.resource_version {
        metadata["resourceVersion"] = rv.clone().into();
    }
    let patch = Patch::Merge(serde_json::json!({"metadata": metadata}));
    let params = PatchParams { field_manager: Some("aenv-operator-api-url".into()), ..Default::default() };
    match api.patch(&election.lease_name, &params, &patch).await {
        Ok(_) => {
            info!(lease = %leadership.lease, url = %leadership.url, "published this leader's API URL on the Lease")
        }
        Err(e) => {
            warn!(lease = %leadership.lease, error = %e, "could not publish this leader's API URL on the Lease; trying again")
        }
    }
}

/// Runs the reconciler whenever this replica holds the Lease, until `shutdown` resolves; then gives the Lease up
/// so that another replica takes over at once. `leadership` follows whether this replica leads.
pub async fn run_when_leader(
    client: Client,
    election: LeaderElection,
    leadership: Arc<Leadership>,
    ctx: Arc<Context>,
    config: LoopConfig,
    shutdown: impl Future<Output = ()> + Send + Sync + Clone + 'static,
) -> Result<(), Error> {
    let duration = election.lease_duration.as_secs().max(2);
    let grace = election.renew_grace.as_secs().clamp(1, duration - 1);
    let manager = LeaseManagerBuilder::new(client, &election.lease_name)
        .with_namespace(&election.namespace)
        .with_identity(&election.identity)
        .with_duration(duration)
        .with_grace(grace)
        .with_field_manager(format!("aenv-operator-{}", election.identity))
        .build()
        .await
        .map_err(|e| {
            Error::Config(format!("leader election with Lease {}/{}: {e}", election.namespace, election.lease_name))
        })?;
    let (mut leading, task) = manager.watch().await;
    tokio::spawn(mirror(leading.clone(), leadership.clone()));
    info!(lease = %election.lease_name, namespace = %election.namespace, identity = %election.identity, "waiting to lead");
    let mut shutdown_done = Box::pin(shutdown.clone().fuse());
    loop {
        tokio::select! {
            _ = &mut shutdown_done => break,
            changed = leading.wait_for(|l| *l) => if changed.is_err() {
                warn!("the leader election task ended; no longer reconciling");
                break;
            },
        }
        info!(identity = %election.identity, "leading: the reconciler runs here");
        let stop = {
            let mut leading = leading.clone();
            let shutdown = shutdown.clone();
            async move {
                tokio::select! {
                    _ = shutdown => {}
                    _ = leading.wait_for(|l| !*l) => {}
                }
            }
        };
        run(ctx.clone(), config.clone(), stop).await;
        if shutdown_done.as_mut().now_or_never().is_some() {
            break;
        }
        warn!(identity = %election.identity, "lost the Lease: the reconciler stopped here");
    }
    drop(leading);
    leadership.set_leading(false);
    match task.await {
        Ok(Ok(manager)) => {
            if let Err(e) = manager.release().await {
                warn!(error = %e, "could not release the Lease; it expires by itself");
            }
        }
        Ok(Err(e)) => warn!(error = %e, "leader election failed"),
        Err(e) => warn!(error = %e, "leader election task failed"),
    }
    Ok(())
}

/// Keeps `leadership` telling what kube-lease-manager tells of this replica's lead, until the election ends.
async fn mirror(mut leading: watch::Receiver<bool>, leadership: Arc<Leadership>) {
    loop {
        let now = *leading.borrow_and_update();
        leadership.set_leading(now);
        if leading.changed().await.is_err() {
            leadership.set_leading(false);
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{api::coordination::v1::LeaseSpec, apimachinery::pkg::apis::meta::v1::MicroTime};

    use super::*;

    fn election(identity: &str) -> LeaderElection {
        LeaderElection {
            lease_name: "aenv-operator".into(),
            namespace: "ns".into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_grace: Duration::from_secs(5),
        }
    }

    fn lease(holder: Option<&str>, renewed: SystemTime, annotations: &[(&str, &str)]) -> Lease {
        let mut lease = Lease {
            spec: Some(LeaseSpec {
                holder_identity: holder.map(String::from),
                renew_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::try_from(renewed).unwrap())),
                lease_duration_seconds: Some(15),
                ..Default::default()
            }),
            ..Default::default()
        };
        lease.metadata.annotations = Some(annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        lease
    }

    #[test]
    fn a_follower_knows_the_leader_only_from_a_live_lease_that_names_it_with_its_url() {
        let me = Leadership::new(&election("b"), "http://10.0.0.2:8080".into());
        let now = SystemTime::now();
        let at = Instant::now();
        let published = [(HOLDER_ANNOTATION, "a"), (URL_ANNOTATION, "http://10.0.0.1:8080")];
        match me.observe(Some(&lease(Some("a"), now - Duration::from_secs(5), &published)), now, at) {
            Seen::Leader { identity, url, until } => {
                assert_eq!((identity.as_str(), url.as_str()), ("a", "http://10.0.0.1:8080"));
                assert_eq!(until, at + Duration::from_secs(10), "valid until the Lease expires");
            }
            other => panic!("the leader is known: {other:?}"),
        }
        let none = |seen: Seen, says: &str| match seen {
            Seen::None(reason) => assert!(reason.contains(says), "{reason}"),
            other => panic!("no leader is known ({says}): {other:?}"),
        };
        none(me.observe(None, now, at), "does not exist");
        none(me.observe(Some(&lease(None, now, &published)), now, at), "names no holder");
        none(me.observe(Some(&lease(Some("a"), now - Duration::from_secs(16), &published)), now, at), "expired");
        // A new holder whose URL is not published yet: the old holder's URL is not used.
        none(me.observe(Some(&lease(Some("c"), now, &published)), now, at), "has not published");
        none(me.observe(Some(&lease(Some("a"), now, &[(URL_ANNOTATION, "http://x:1")])), now, at), "has not published");
        none(me.observe(Some(&lease(Some("b"), now, &published)), now, at), "is taking the Lease");
    }

    #[test]
    fn a_known_leader_is_forgotten_once_its_lease_runs_out() {
        let me = Leadership::new(&election("b"), "http://10.0.0.2:8080".into());
        assert!(me.leader().unwrap_err().contains("not read yet"));
        let at = Instant::now();
        me.set_seen(Seen::Leader {
            identity: "a".into(),
            url: "http://10.0.0.1:8080".into(),
            until: at + Duration::from_secs(60),
        });
        assert_eq!(me.leader().unwrap(), ("a".to_string(), "http://10.0.0.1:8080".to_string()));
        me.set_seen(Seen::Leader { identity: "a".into(), url: "http://10.0.0.1:8080".into(), until: at });
        assert!(me.leader().unwrap_err().contains("expired"));
        assert!(!me.leading());
        me.set_leading(true);
        assert!(me.leading());
    }

    type Handle =
        tower_test::mock::Handle<warp::http::Request<kube::client::Body>, warp::http::Response<kube::client::Body>>;

    /// The next request to the mock API server: its method, path, content type and JSON body, and its responder.
    async fn next(
        handle: &mut Handle,
    ) -> (
        String,
        String,
        String,
        serde_json::Value,
        tower_test::mock::SendResponse<warp::http::Response<kube::client::Body>>,
    ) {
        let (request, send) =
            tokio::time::timeout(Duration::from_secs(5), handle.next_request()).await.unwrap().unwrap();
        let (method, path) = (request.method().to_string(), request.uri().path().to_string());
        let kind = request.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let body = if bytes.is_empty() { serde_json::Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
        (method, path, kind, body, send)
    }

    fn answer(send: tower_test::mock::SendResponse<warp::http::Response<kube::client::Body>>, lease: &Lease) {
        let body = kube::client::Body::from(serde_json::to_vec(lease).unwrap());
        send.send_response(
            warp::http::Response::builder().header("content-type", "application/json").body(body).unwrap(),
        );
    }

    const LEASE_PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/ns/leases/aenv-operator";

    #[tokio::test]
    async fn the_leader_publishes_its_url_on_the_lease_it_holds_and_a_follower_only_reads_it() {
        let (service, mut handle) = tower_test::mock::pair();
        let client = Client::new(service, "default");
        let mut short = election("b");
        short.lease_duration = Duration::from_secs(1);
        let me = Leadership::new(&short, "http://10.0.0.2:8080".into());
        me.set_leading(true);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let watching = tokio::spawn(watch_lease(client, short, me.clone(), async move {
            let _ = stop_rx.await;
        }));
        // Held by this replica, nothing published yet: a merge patch of the two annotations, at the version read.
        let mut held = lease(Some("b"), SystemTime::now(), &[]);
        held.metadata.resource_version = Some("7".into());
        let (method, path, _, _, send) = next(&mut handle).await;
        assert_eq!((method.as_str(), path.as_str()), ("GET", LEASE_PATH));
        answer(send, &held);
        let (method, path, kind, body, send) = next(&mut handle).await;
        assert_eq!(
            (method.as_str(), path.as_str(), kind.as_str()),
            ("PATCH", LEASE_PATH, "application/merge-patch+json")
        );
        assert_eq!(
            body,
            serde_json::json!({"metadata": {"resourceVersion": "7", "annotations": {
                HOLDER_ANNOTATION: "b", URL_ANNOTATION: "http://10.0.0.2:8080"}}}),
            "only the annotations, at the version read"
        );
        answer(send, &held);
        // This replica no longer leads; the Lease names another holder with its URL: read, never written.
        me.set_leading(false);
        let other =
            lease(Some("a"), SystemTime::now(), &[(HOLDER_ANNOTATION, "a"), (URL_ANNOTATION, "http://10.0.0.1:8080")]);
        for _ in 0..2 {
            let (method, path, _, _, send) = next(&mut handle).await;
            assert_eq!((method.as_str(), path.as_str()), ("GET", LEASE_PATH), "a follower only reads the Lease");
            answer(send, &other);
        }
        assert_eq!(me.leader().unwrap(), ("a".to_string(), "http://10.0.0.1:8080".to_string()));
        let _ = stop_tx.send(());
        tokio::time::timeout(Duration::from_secs(5), watching).await.unwrap().unwrap();
    }

    #[test]
    fn the_lease_is_read_a_few_times_per_duration() {
        assert_eq!(lease_poll_interval(Duration::from_secs(15)), Duration::from_secs(2));
        assert_eq!(lease_poll_interval(Duration::from_secs(4)), Duration::from_millis(800));
        assert_eq!(lease_poll_interval(Duration::from_millis(500)), Duration::from_millis(200));
    }
}
