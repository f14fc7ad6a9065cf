//! Where `EnvInstance` and `Environment` objects live: the [`ObjectStore`] trait, its embedded implementation
//! (redb on local disk), its Kubernetes implementation (custom resources in an API server) and an in-memory one
//! for tests. Readers (the HTTP layer, the controller) are served from memory; writes go through the store's home
//! first.

mod cache;
mod embedded;
mod kubernetes;
mod memory;
pub mod signing_key;

use std::{fmt::Debug, sync::Arc};

use async_trait::async_trait;
use futures::stream::BoxStream;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::{
    Resource,
    runtime::{reflector, watcher},
};
use rand::Rng;
use serde::{Serialize, de::DeserializeOwned};

pub use embedded::{Embedded, EmbeddedStore};
pub use kubernetes::{FIELD_MANAGER, FINALIZER, KubeStore, KubeStoreConfig};
pub use memory::MemoryStore;

use crate::Error;

/// What a store can hold: a Kubernetes-style object that serialises, in either store.
pub trait Kind:
    Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static
{
}

impl<K> Kind for K where
    K: Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static
{
}

/// The identity of an object without its content: what the controllers' own caches keep (they read objects from
/// the store when they reconcile them), so that a local store's objects are not held twice.
pub trait Slim {
    /// The object with its name, namespace, uid, versions, generation and deletion mark only.
    fn slim(&self) -> Self;
}

fn slim_meta(meta: &ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        uid: meta.uid.clone(),
        resource_version: meta.resource_version.clone(),
        generation: meta.generation,
        deletion_timestamp: meta.deletion_timestamp.clone(),
        creation_timestamp: meta.creation_timestamp.clone(),
        ..Default::default()
    }
}

impl Slim for aenv_core::EnvInstance {
    fn slim(&self) -> Self {
        aenv_core::EnvInstance { metadata: slim_meta(&self.metadata), spec: Default::default(), status: None }
    }
}

impl Slim for aenv_core::EnvPool {
    fn slim(&self) -> Self {
        aenv_core::EnvPool { metadata: slim_meta(&self.metadata), spec: Default::default(), status: None }
    }
}

impl Slim for aenv_core::EnvService {
    fn slim(&self) -> Self {
        aenv_core::EnvService { metadata: slim_meta(&self.metadata), spec: Default::default(), status: None }
    }
}

/// A status change worth telling as a Kubernetes Event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusEvent {
    pub warning: bool,
    /// The Event's reason (an instance's new phase).
    pub reason: String,
    pub note: Option<String>,
}

/// What a kind's status changes say as Kubernetes Events (the Kubernetes store publishes them).
pub trait StatusEvents {
    /// The Event for a status going from `before` to `after`, if the change is worth one.
    fn status_event(before: Option<&Self>, after: &Self) -> Option<StatusEvent>;

    /// The status to write on an object of this kind that cannot be read (`message` says which field and why),
    /// as JSON; `None` for kinds without a status.
    fn unreadable_status(_message: &str) -> Option<serde_json::Value> {
        None
    }
}

impl StatusEvents for aenv_core::EnvInstance {
    /// A phase change: `Warning` for `Failed`; the note is the message, else the IP.
    fn status_event(before: Option<&Self>, after: &Self) -> Option<StatusEvent> {
        let status = after.status.as_ref()?;
        if before.and_then(|b| b.status.as_ref()).is_some_and(|b| b.phase == status.phase) {
            return None;
        }
        let note = status.message.clone().or_else(|| status.ip.as_ref().map(|ip| format!("IP {ip}")));
        Some(StatusEvent {
            warning: status.phase == aenv_core::Phase::Failed,
            reason: status.phase.as_str().to_string(),
            note,
        })
    }

    /// `Failed`, with the message.
    fn unreadable_status(message: &str) -> Option<serde_json::Value> {
        Some(serde_json::json!({"phase": aenv_core::Phase::Failed.as_str(), "message": message}))
    }
}

impl StatusEvents for aenv_core::Environment {
    /// Templates have no status worth an Event.
    fn status_event(_: Option<&Self>, _: &Self) -> Option<StatusEvent> {
        None
    }
}

impl StatusEvents for aenv_core::EnvPool {
    /// A new failure of the pool's sandboxes, as a `Warning`.
    fn status_event(before: Option<&Self>, after: &Self) -> Option<StatusEvent> {
        let error = after.status.as_ref()?.last_error.as_ref()?;
        let before = before.and_then(|b| b.status.as_ref()).and_then(|s| s.last_error.as_ref());
        (before != Some(error)).then(|| StatusEvent {
            warning: true,
            reason: "SandboxFailed".into(),
            note: Some(error.clone()),
        })
    }
}

impl StatusEvents for aenv_core::EnvService {
    /// A new failure of the service's replicas, as a `Warning`.
    fn status_event(before: Option<&Self>, after: &Self) -> Option<StatusEvent> {
        let error = after.status.as_ref()?.last_error.as_ref()?;
        let before = before.and_then(|b| b.status.as_ref()).and_then(|s| s.last_error.as_ref());
        (before != Some(error)).then(|| StatusEvent {
            warning: true,
            reason: "ReplicaFailed".into(),
            note: Some(error.clone()),
        })
    }
}

/// The namespace instances made through the REST API live in, unless configured otherwise.
pub use aenv_core::labels::DEFAULT_NAMESPACE;

/// `namespace/name`, the key objects are found by.
pub fn key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// The key of an object.
pub fn key_of<K: Resource + ?Sized>(obj: &K) -> String {
    let meta = obj.meta();
    key(meta.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE), meta.name.as_deref().unwrap_or(""))
}

/// A home for objects of one kind, in the style of the Kubernetes API: creation fills in uid, resource version
/// and creation time; deletion is two-step (`request_delete` marks it, `purge` removes it once the engine's
/// objects are gone, as a finalizer would); reads come from memory; `watch` feeds kube-runtime's reflector.
#[async_trait]
pub trait ObjectStore<K>: Send + Sync + 'static {
    /// Stores a new object; [`Error::AlreadyExists`] when its key is taken. Durable before it returns.
    async fn create(&self, obj: K, now: Timestamp) -> Result<Arc<K>, Error>;
    /// The object at `namespace/name`.
    fn get(&self, key: &str) -> Option<Arc<K>>;
    /// Every object, in key order.
    fn list(&self) -> Vec<Arc<K>>;
    /// Writes the status of `obj` onto the stored object at its key (the rest of `obj` is ignored). `None` when
    /// the object is gone.
    async fn write_status(&self, obj: &K) -> Result<Option<Arc<K>>, Error>;
    /// Marks the object for deletion (`deletionTimestamp`, a new generation). `None` when there is no such object.
    async fn request_delete(&self, key: &str, now: Timestamp) -> Result<Option<Arc<K>>, Error>;
    /// Replaces the spec, labels and annotations of the stored object with those of `obj`, provided it is still at
    /// `obj`'s resource version (a compare-and-swap); its status and the rest of its metadata stay, and its
    /// generation moves on. [`Error::Conflict`] when it changed meanwhile or is being deleted; `None` when it is
    /// gone. Durable before it returns.
    async fn replace(&self, obj: &K) -> Result<Option<Arc<K>>, Error>;
    /// [`ObjectStore::request_delete`], provided the object is still at resource version `version`
    /// ([`Error::Conflict`] otherwise): a deletion decided on a copy that may be stale.
    async fn request_delete_at(&self, key: &str, version: &str, now: Timestamp) -> Result<Option<Arc<K>>, Error>;
    /// Removes the object for good (whether or not deletion was requested first).
    async fn purge(&self, key: &str) -> Result<(), Error>;
    /// `Init`, `InitApply` per object, `InitDone`, then `Apply`/`Delete` as objects change; a fresh listing when
    /// the watcher falls behind.
    fn watch(&self) -> BoxStream<'static, watcher::Event<K>>;

    /// An item each time the object at `key` may have changed (written, removed, or the feed fell behind and some
    /// change may be missed): the caller rereads the object from [`ObjectStore::get`]. Cheap to hold many of:
    /// waiting answers use it. By default [`ObjectStore::watch`] without its listing.
    fn changes_of(&self, key: &str) -> BoxStream<'static, ()>
    where
        K: Kind,
    {
        use futures::StreamExt;
        let key = key.to_string();
        self.watch()
            .filter_map(move |e| {
                futures::future::ready(match &e {
                    watcher::Event::Apply(o) | watcher::Event::Delete(o) => (key_of(o) == key).then_some(()),
                    // A fresh listing after a lag: anything may have changed.
                    watcher::Event::InitDone => Some(()),
                    watcher::Event::Init | watcher::Event::InitApply(_) => None,
                })
            })
            .boxed()
    }

    /// Why writes fail now (the embedded store on a full disk), for `/readyz`; `None` when they work.
    fn write_failure(&self) -> Option<String> {
        None
    }

    /// Makes sure the object stays until [`ObjectStore::purge`], before the engine makes anything for it. The
    /// embedded store always keeps objects until purged; the Kubernetes store adds its finalizer to objects made
    /// around the operator (`kubectl apply`).
    async fn hold(&self, _obj: &K) -> Result<(), Error> {
        Ok(())
    }

    /// What the controller reconciles from: a reader of the objects and a stream of each object as it changes
    /// (kube-runtime's `Controller::for_stream`). By default a reflector of its own over [`ObjectStore::watch`],
    /// holding [`Slim`] copies (the controllers read the object itself from the store); a store that keeps a
    /// reflector already hands that one out.
    fn controller_feed(&self) -> (reflector::Store<K>, BoxStream<'static, K>)
    where
        K: Kind + Slim,
    {
        use futures::StreamExt;
        use kube::runtime::WatchStreamExt;
        let (reader, writer) = reflector::store();
        let objects = self
            .watch()
            .map(|e| e.modify(|o| *o = o.slim()))
            .map(Ok::<_, watcher::Error>)
            .reflect(writer)
            .applied_objects()
            .filter_map(|o| futures::future::ready(o.ok()))
            .boxed();
        (reader, objects)
    }

    /// Objects that match `filter`, in key order.
    fn list_where(&self, filter: &dyn Fn(&K) -> bool) -> Vec<Arc<K>> {
        self.list().into_iter().filter(|o| filter(o)).collect()
    }
}

/// The object at `key` once `done` says so of it (`None` when it is gone), or as it is when `bound` passes: a wait
/// on the store's feed of that key, which costs nothing while nothing changes.
pub async fn wait_for<K: Kind>(
    store: &dyn ObjectStore<K>,
    key: &str,
    bound: std::time::Duration,
    done: impl Fn(Option<&K>) -> bool,
) -> Option<Arc<K>> {
    use futures::StreamExt;
    // Subscribed before the first look, so that no change falls between the two.
    let mut changes = store.changes_of(key);
    let deadline = tokio::time::sleep(bound);
    tokio::pin!(deadline);
    loop {
        let current = store.get(key);
        if done(current.as_deref()) {
            return current;
        }
        tokio::select! {
            _ = &mut deadline => return current,
            next = changes.next() => if next.is_none() { return store.get(key) },
        }
    }
}

/// `current` with the status of `obj` (the rest of `obj` is ignored): what a status write stores. The metadata
/// stays exactly as stored (a JSON round trip would cut timestamps to whole seconds).
pub(crate) fn with_status_of<K: Kind>(current: &K, obj: &K) -> Result<K, Error> {
    let mut merged = serde_json::to_value(current).map_err(|e| Error::Store(e.to_string()))?;
    let status = serde_json::to_value(obj).map_err(|e| Error::Store(e.to_string()))?.get("status").cloned();
    if let Some(fields) = merged.as_object_mut() {
        match status {
            Some(s) => fields.insert("status".into(), s),
            None => fields.remove("status"),
        };
    }
    let mut merged: K = serde_json::from_value(merged).map_err(|e| Error::Store(e.to_string()))?;
    *merged.meta_mut() = current.meta().clone();
    Ok(merged)
}

/// Gives a new object the metadata a store fills in: its namespace (the default one when it names none), a uid,
/// the creation time in whole seconds (as Kubernetes keeps it, and as a record serialises it), generation 1.
pub(crate) fn stamp_new<K: Kind>(obj: &mut K, now: Timestamp) {
    let meta = obj.meta_mut();
    meta.namespace.get_or_insert_with(|| DEFAULT_NAMESPACE.to_string());
    meta.uid = Some(uuid_like());
    meta.creation_timestamp = Some(Time(Timestamp::from_second(now.as_second()).unwrap_or(now)));
    meta.generation = Some(1);
}

/// `current` with the spec, labels and annotations of `obj`, its generation bumped: what [`ObjectStore::replace`]
/// stores, once `current` is known to be at `obj`'s version. [`Error::Conflict`] when it is not, or when
/// `current` is being deleted.
pub(crate) fn replaced<K: Kind>(current: &K, obj: &K) -> Result<K, Error> {
    check_version(current, obj.meta().resource_version.as_deref().unwrap_or_default())?;
    if current.meta().deletion_timestamp.is_some() {
        return Err(Error::Conflict(key_of(current)));
    }
    let mut next = with_status_of(obj, current)?;
    let meta = next.meta_mut();
    let (labels, annotations) = (meta.labels.take(), meta.annotations.take());
    *meta = current.meta().clone();
    meta.labels = labels;
    meta.annotations = annotations;
    meta.generation = Some(meta.generation.unwrap_or(1) + 1);
    Ok(next)
}

/// [`Error::Conflict`] unless `current` is at resource version `version`.
pub(crate) fn check_version<K: Kind>(current: &K, version: &str) -> Result<(), Error> {
    if current.meta().resource_version.as_deref() == Some(version) {
        Ok(())
    } else {
        Err(Error::Conflict(key_of(current)))
    }
}

/// `current` marked for deletion at `now`, its generation bumped as on Kubernetes (so the controller wakes for
/// it); `None` when it is marked already.
pub(crate) fn marked_for_deletion<K: Kind>(current: &K, now: Timestamp) -> Option<K> {
    if current.meta().deletion_timestamp.is_some() {
        return None;
    }
    let mut obj = current.clone();
    let meta = obj.meta_mut();
    meta.deletion_timestamp = Some(Time(now));
    meta.generation = Some(meta.generation.unwrap_or(1) + 1);
    Some(obj)
}

fn uuid_like() -> String {
    let v: u128 = rand::rng().random();
    let h = format!("{v:032x}");
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// `n` random characters from `[a-z0-9]`, as AEnvironment's instance-id suffixes.
pub fn random_suffix(n: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..n).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect()
}

/// The watch both stores serve: `Init`, one `InitApply` per object of a snapshot, `InitDone`, then the events of a
/// broadcast feed; a watcher that falls behind gets a fresh listing. `subscribe` must take the snapshot and the
/// feed together (under the store's lock), so that no change falls between them; `event` turns a feed message
/// into a watch event (`None`: nothing to tell).
pub(crate) fn relisting_watch<K, M>(
    subscribe: impl Fn() -> (tokio::sync::broadcast::Receiver<M>, Vec<Arc<K>>) + Send + 'static,
    event: impl Fn(M) -> Option<watcher::Event<K>> + Send + 'static,
) -> BoxStream<'static, watcher::Event<K>>
where
    K: Clone + Send + Sync + 'static,
    M: Clone + Send + 'static,
{
    use futures::StreamExt;
    use tokio::sync::broadcast::error::RecvError;

    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    tokio::spawn(async move {
        loop {
            let (mut feed, snapshot) = subscribe();
            let listing = std::iter::once(watcher::Event::Init)
                .chain(snapshot.iter().map(|o| watcher::Event::InitApply((**o).clone())))
                .chain(std::iter::once(watcher::Event::InitDone));
            for e in listing {
                if tx.send(e).await.is_err() {
                    return;
                }
            }
            loop {
                let e = match feed.recv().await {
                    Ok(msg) => match event(msg) {
                        Some(e) => e,
                        None => continue,
                    },
                    // Fell behind: list again.
                    Err(RecvError::Lagged(_)) => break,
                    Err(RecvError::Closed) => return,
                };
                if tx.send(e).await.is_err() {
                    return;
                }
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx).boxed()
}

#[cfg(test)]
mod tests {
    use aenv_core::{EnvInstance, EnvInstanceSpec, EnvInstanceStatus, Phase};

    use super::*;

    /// The compare-and-swap a claim relies on: a write made against an old version loses, in each store.
    #[tokio::test]
    async fn replace_and_conditional_delete_lose_against_a_newer_version() {
        let dir = tempfile::tempdir().unwrap();
        let db = Embedded::open(dir.path()).unwrap();
        let stores: [Arc<dyn ObjectStore<EnvInstance>>; 2] = [MemoryStore::new(), db.store::<EnvInstance>().unwrap()];
        for store in stores {
            let now = Timestamp::now();
            let first = store.create(EnvInstance::new("a-000001", EnvInstanceSpec::default()), now).await.unwrap();
            let mut running = (*first).clone();
            running.status = Some(EnvInstanceStatus { phase: Phase::Running, ..Default::default() });
            store.write_status(&running).await.unwrap();
            let current = store.get("default/a-000001").unwrap();

            let mut mine = (*current).clone();
            mine.spec.owner = Some("alice".into());
            mine.metadata.labels = Some([("k".to_string(), "v".to_string())].into());
            let stored = store.replace(&mine).await.unwrap().unwrap();
            assert_eq!(stored.spec.owner.as_deref(), Some("alice"));
            assert_eq!(stored.phase(), Phase::Running, "the status stays");
            assert_eq!(stored.metadata.generation, Some(2), "a spec change is a new generation");
            assert_eq!(stored.metadata.uid, current.metadata.uid);

            // A second writer that read before the first wrote loses, and changes nothing.
            let mut theirs = (*current).clone();
            theirs.spec.owner = Some("bob".into());
            assert!(matches!(store.replace(&theirs).await, Err(Error::Conflict(_))));
            let stale = current.metadata.resource_version.clone().unwrap();
            assert!(matches!(store.request_delete_at("default/a-000001", &stale, now).await, Err(Error::Conflict(_))));
            let kept = store.get("default/a-000001").unwrap();
            assert_eq!((kept.spec.owner.as_deref(), kept.is_deleting()), (Some("alice"), false));

            let fresh = kept.metadata.resource_version.clone().unwrap();
            assert!(store.request_delete_at("default/a-000001", &fresh, now).await.unwrap().unwrap().is_deleting());
            let mut late = (*kept).clone();
            late.metadata.resource_version = store.get("default/a-000001").unwrap().metadata.resource_version.clone();
            assert!(matches!(store.replace(&late).await, Err(Error::Conflict(_))), "no claim of what is being deleted");
            assert!(
                store.replace(&EnvInstance::new("gone-000002", EnvInstanceSpec::default())).await.unwrap().is_none()
            );
        }
    }

    #[test]
    fn phase_changes_are_events_and_failures_are_warnings() {
        let with = |phase: Phase, ip: Option<&str>, message: Option<&str>| {
            let mut i = EnvInstance::new("a-000001", EnvInstanceSpec::default());
            i.status = Some(EnvInstanceStatus {
                phase,
                ip: ip.map(str::to_string),
                message: message.map(str::to_string),
                ..Default::default()
            });
            i
        };
        let pending = with(Phase::Pending, None, None);
        let running = with(Phase::Running, Some("10.0.0.2"), None);
        let e = EnvInstance::status_event(Some(&pending), &running).unwrap();
        assert_eq!((e.warning, e.reason.as_str(), e.note.as_deref()), (false, "Running", Some("IP 10.0.0.2")));
        assert_eq!(EnvInstance::status_event(Some(&running), &running), None, "no change, no Event");
        let failed = with(Phase::Failed, None, Some("the container exited with code 1"));
        let e = EnvInstance::status_event(Some(&running), &failed).unwrap();
        assert!(e.warning && e.note.as_deref() == Some("the container exited with code 1"));
    }
}
