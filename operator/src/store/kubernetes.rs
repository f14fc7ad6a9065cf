//! The Kubernetes store: objects are custom resources in an API server. Reads come from a reflector cache fed by
//! one watch; writes go to the API: create (with the `aenv.io/cleanup` finalizer), status by server-side apply on
//! the status subresource, deletion through the finalizer (`request_delete` is the API's delete, which the
//! finalizer holds; `purge` removes the finalizer once the engine's objects are gone). Phase changes are
//! published as Kubernetes Events, best effort.
//!
//! It keeps working against API servers that fill in less than a real one (test emulators): an object without
//! `metadata.namespace` is taken to be in the namespace it was watched in (or the default one), an object without
//! `creationTimestamp` is dated by when this process first saw it (so TTLs restart with the process), and a
//! missing `resourceVersion` only costs the optimistic concurrency of the finalizer patches.

use std::{
    collections::HashMap,
    fmt::Debug,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use futures::{StreamExt, stream::BoxStream};
use jiff::Timestamp;
use k8s_openapi::{NamespaceResourceScope, apimachinery::pkg::apis::meta::v1::Time};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions},
    runtime::{
        WatchStreamExt,
        events::{Event as KubeEvent, EventType, Recorder, Reporter},
        reflector::{self, ObjectRef},
        watcher,
    },
};
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tracing::{debug, info, warn};

use super::{Kind, ObjectStore, StatusEvents, key_of, relisting_watch};
use crate::Error;

/// The finalizer that holds an EnvInstance until the engine removed what it made.
pub const FINALIZER: &str = "aenv.io/cleanup";
/// The field manager of the operator's writes (server-side apply).
pub const FIELD_MANAGER: &str = "aenv-operator";

/// How a [`KubeStore`] is set up.
#[derive(Clone, Debug)]
pub struct KubeStoreConfig {
    /// Namespace of objects written without one (the REST API's).
    pub default_namespace: String,
    /// Watch only this namespace (a Role suffices), or every namespace (`None`, a ClusterRole).
    pub watch_namespace: Option<String>,
    /// Finalizer added at create and removed by `purge`; `None` for kinds with nothing to clean up.
    pub finalizer: Option<String>,
    /// Who publishes Events (`None`: no Events).
    pub reporter: Option<Reporter>,
}

/// What the watch task tells subscribers. A relisting is sent as one batch (`Init`, `InitApply`*, `InitDone`).
#[derive(Clone, Debug)]
enum Msg<K> {
    Init,
    InitApply(Arc<K>),
    InitDone,
    Apply(Arc<K>),
    Delete(Arc<K>),
}

struct Shared<K> {
    /// Held while the cache is changed and the change is broadcast, and while a subscriber takes its snapshot:
    /// no subscriber misses a change or sees one twice.
    gate: Mutex<()>,
    changes: broadcast::Sender<Msg<K>>,
    /// When this process first saw each object, for objects without a creation timestamp.
    first_seen: Mutex<HashMap<String, Timestamp>>,
    default_namespace: String,
}

impl<K: Resource> Shared<K> {
    fn gate(&self) -> std::sync::MutexGuard<'_, ()> {
        self.gate.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn first_seen(&self) -> std::sync::MutexGuard<'_, HashMap<String, Timestamp>> {
        self.first_seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fills in what a thin API server leaves out (see the module documentation).
    fn normalize(&self, mut obj: K, watched_namespace: Option<&str>) -> K {
        let meta = obj.meta_mut();
        if meta.namespace.as_deref().is_none_or(str::is_empty) {
            meta.namespace = Some(watched_namespace.unwrap_or(&self.default_namespace).to_string());
        }
        if meta.creation_timestamp.is_none() {
            let k = key_of(&obj);
            let seen = *self.first_seen().entry(k).or_insert_with(Timestamp::now);
            obj.meta_mut().creation_timestamp = Some(Time(seen));
        }
        obj
    }
}

/// The Kubernetes store of one kind.
pub struct KubeStore<K: Resource<DynamicType = ()> + Clone + 'static> {
    client: Client,
    config: KubeStoreConfig,
    reader: reflector::Store<K>,
    shared: Arc<Shared<K>>,
    recorder: Option<Recorder>,
    task: tokio::task::JoinHandle<()>,
}

impl<K: Resource<DynamicType = ()> + Clone + 'static> Drop for KubeStore<K> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

use aenv_engine_k8s::api_code;

/// Whether the cached version `seen` is `version` or later. Resource versions are opaque to clients; API servers
/// (and the emulators) count them up, so a numeric comparison is tried first, then equality.
fn at_least(seen: Option<&str>, version: Option<&str>) -> bool {
    match (seen.and_then(|s| s.parse::<u64>().ok()), version.and_then(|v| v.parse::<u64>().ok())) {
        (Some(s), Some(v)) => s >= v,
        _ => seen == version,
    }
}

/// The JSON merge patch (RFC 7386) that turns `before` into `after`; `None` when they are equal. Objects are
/// compared key by key (a key gone becomes `null`); anything else is replaced whole.
fn merge_diff(before: &Value, after: &Value) -> Option<Value> {
    match (before, after) {
        _ if before == after => None,
        (Value::Object(b), Value::Object(a)) => {
            let mut patch = serde_json::Map::new();
            for (key, new) in a {
                if let Some(change) = merge_diff(b.get(key).unwrap_or(&Value::Null), new) {
                    patch.insert(key.clone(), change);
                }
            }
            for key in b.keys().filter(|k| !a.contains_key(*k)) {
                patch.insert(key.clone(), Value::Null);
            }
            Some(Value::Object(patch))
        }
        _ => Some(after.clone()),
    }
}

fn kube_err(context: String) -> impl FnOnce(kube::Error) -> Error {
    move |source| Error::Kube { context, source }
}

impl<K> KubeStore<K>
where
    K: Kind + StatusEvents + Resource<Scope = NamespaceResourceScope>,
{
    /// Checks that the kind is served (its CRD is installed and readable), starts the watch, and waits until the
    /// cache holds the first listing.
    pub async fn start(client: Client, config: KubeStoreConfig) -> Result<Arc<Self>, Error> {
        let kind = K::kind(&());
        let list_api: Api<K> = match &config.watch_namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        if let Err(e) = list_api.list_metadata(&ListParams::default().limit(1)).await {
            return Err(match api_code(&e) {
                Some(404) => Error::Config(format!(
                    "the {kind} custom resource is not served by the API server: install the CRDs (kubectl apply -f crds/, or the Helm chart) and start again"
                )),
                Some(403) => Error::Config(format!(
                    "the operator may not list {kind} objects ({e}): grant its service account the RBAC of the Helm chart"
                )),
                _ => Error::Kube { context: format!("listing {kind} objects"), source: e },
            });
        }
        let (reader, mut writer) = reflector::store::<K>();
        let (changes, _) = broadcast::channel(4096);
        let shared = Arc::new(Shared {
            gate: Mutex::new(()),
            changes,
            first_seen: Mutex::default(),
            default_namespace: config.default_namespace.clone(),
        });
        let task = {
            let shared = shared.clone();
            let watched = config.watch_namespace.clone();
            let mut stream = watcher(list_api, watcher::Config::default()).default_backoff().boxed();
            tokio::spawn(async move {
                let mut relist: Option<Vec<Arc<K>>> = None;
                while let Some(item) = stream.next().await {
                    let event = match item {
                        Ok(event) => event,
                        Err(e) => {
                            warn!(kind = %K::kind(&()), error = %e, "watch failed; retrying with backoff");
                            continue;
                        }
                    };
                    let normalize = |o: K| Arc::new(shared.normalize(o, watched.as_deref()));
                    match event {
                        watcher::Event::Init => relist = Some(Vec::new()),
                        watcher::Event::InitApply(o) => relist.get_or_insert_default().push(normalize(o)),
                        watcher::Event::InitDone => {
                            let objects = relist.take().unwrap_or_default();
                            let _g = shared.gate();
                            writer.apply_watcher_event(&watcher::Event::Init);
                            let _ = shared.changes.send(Msg::Init);
                            for o in objects {
                                writer.apply_watcher_event(&watcher::Event::InitApply((*o).clone()));
                                let _ = shared.changes.send(Msg::InitApply(o));
                            }
                            writer.apply_watcher_event(&watcher::Event::InitDone);
                            let _ = shared.changes.send(Msg::InitDone);
                        }
                        watcher::Event::Apply(o) => {
                            let o = normalize(o);
                            let _g = shared.gate();
                            writer.apply_watcher_event(&watcher::Event::Apply((*o).clone()));
                            let _ = shared.changes.send(Msg::Apply(o));
                        }
                        watcher::Event::Delete(o) => {
                            let o = normalize(o);
                            shared.first_seen().remove(&key_of(o.as_ref()));
                            let _g = shared.gate();
                            writer.apply_watcher_event(&watcher::Event::Delete((*o).clone()));
                            let _ = shared.changes.send(Msg::Delete(o));
                        }
                    }
                }
            })
        };
        let recorder = config.reporter.clone().map(|r| Recorder::new(client.clone(), r));
        let store = Arc::new(KubeStore { client, config, reader, shared, recorder, task });
        tokio::time::timeout(Duration::from_secs(60), store.reader.wait_until_ready())
            .await
            .map_err(|_| Error::Config(format!("the first listing of {kind} objects took longer than 60s")))?
            .map_err(|_| Error::Store(format!("the {kind} watch stopped before its first listing")))?;
        info!(kind = %kind, objects = store.reader.state().len(), "Kubernetes store in sync");
        Ok(store)
    }

    fn api(&self, namespace: &str) -> Api<K> {
        Api::namespaced(self.client.clone(), namespace)
    }

    fn split(&self, k: &str) -> (String, String) {
        match k.split_once('/') {
            Some((ns, name)) => (ns.to_string(), name.to_string()),
            None => (self.config.default_namespace.clone(), k.to_string()),
        }
    }

    fn normalize(&self, obj: K) -> K {
        self.shared.normalize(obj, None)
    }

    /// Waits (up to 5 s) until the cache reflects `pred` for `k`, so that a read right after a write sees it.
    async fn settle(&self, k: &str, pred: impl Fn(Option<&K>) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !pred(self.get(k).as_deref()) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The API's delete of `k` (which the finalizer holds): the object marked for deletion, `None` when it is gone,
    /// [`Error::Conflict`] when a precondition of `params` failed.
    async fn delete_with(&self, k: &str, params: DeleteParams) -> Result<Option<Arc<K>>, Error> {
        let (namespace, name) = self.split(k);
        let cached = self.get(k);
        match self.api(&namespace).delete(&name, &params).await {
            Ok(either) => Ok(either.left().map(|o| Arc::new(self.normalize(o))).or(cached)),
            Err(e) if api_code(&e) == Some(404) => Ok(None),
            Err(e) if api_code(&e) == Some(409) => Err(Error::Conflict(k.to_string())),
            Err(e) => Err(kube_err(format!("deleting {k}"))(e)),
        }
    }

    /// Publishes an Event about `obj` without waiting for it; a failure is only logged.
    fn publish(&self, obj: &K, type_: EventType, reason: &str, note: Option<String>) {
        let Some(recorder) = self.recorder.clone() else { return };
        let reference = obj.object_ref(&());
        let event = KubeEvent {
            type_,
            reason: reason.to_string(),
            note: note.map(|n| n.chars().take(1000).collect()),
            action: "Reconcile".into(),
            secondary: None,
        };
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&event, &reference).await {
                debug!(error = %e, "could not publish an Event (ignored)");
            }
        });
    }

    /// The finalizers of `obj` with ours added or removed, as a merge patch that fails on a concurrent change when
    /// the server keeps resource versions.
    fn finalizer_patch(obj: &K, finalizers: Vec<String>) -> Value {
        let mut meta = json!({ "finalizers": finalizers });
        if let Some(rv) = obj.meta().resource_version.as_ref().filter(|rv| !rv.is_empty()) {
            meta["resourceVersion"] = json!(rv);
        }
        json!({ "metadata": meta })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::merge_diff;

    #[test]
    fn merge_diff_sends_only_what_changed_and_nulls_what_went() {
        let before = json!({"ttl": null, "labels": {"a": "1", "b": "2"}, "env": {"X": "1"}, "args": ["a"]});
        let after = json!({"ttl": "10m", "labels": {"a": "1", "c": "3"}, "env": {"X": "1"}, "args": ["b"]});
        assert_eq!(
            merge_diff(&before, &after),
            Some(json!({"ttl": "10m", "labels": {"b": null, "c": "3"}, "args": ["b"]}))
        );
        assert_eq!(merge_diff(&after, &after), None);
        assert_eq!(merge_diff(&json!(null), &json!({"a": "1"})), Some(json!({"a": "1"})));
    }
}

#[async_trait]
impl<K> ObjectStore<K> for KubeStore<K>
where
    K: Kind + StatusEvents + Resource<Scope = NamespaceResourceScope>,
{
    async fn create(&self, mut obj: K, now: Timestamp) -> Result<Arc<K>, Error> {
        let meta = obj.meta_mut();
        let namespace = meta.namespace.get_or_insert_with(|| self.config.default_namespace.clone()).clone();
        if let Some(f) = &self.config.finalizer {
            let finalizers = meta.finalizers.get_or_insert_with(Vec::new);
            if !finalizers.contains(f) {
                finalizers.push(f.clone());
            }
        }
        let k = key_of(&obj);
        self.shared.first_seen().entry(k.clone()).or_insert(now);
        let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
        match self.api(&namespace).create(&params, &obj).await {
            Ok(created) => {
                let created = Arc::new(self.normalize(created));
                self.settle(&k, |o| o.is_some()).await;
                Ok(created)
            }
            Err(e) if api_code(&e) == Some(409) => Err(Error::AlreadyExists(k)),
            Err(e) => Err(Error::Kube { context: format!("creating {} {k}", K::kind(&())), source: e }),
        }
    }

    fn get(&self, k: &str) -> Option<Arc<K>> {
        let (namespace, name) = self.split(k);
        self.reader.get(&ObjectRef::new(&name).within(&namespace))
    }

    fn list(&self) -> Vec<Arc<K>> {
        let mut all = self.reader.state();
        all.sort_by_cached_key(|o| key_of(o.as_ref()));
        all
    }

    async fn write_status(&self, obj: &K) -> Result<Option<Arc<K>>, Error> {
        let k = key_of(obj);
        let (namespace, name) = self.split(&k);
        let status = serde_json::to_value(obj).map_err(|e| Error::Store(e.to_string()))?.get("status").cloned();
        let before = self.get(&k);
        let patch = json!({
            "apiVersion": K::api_version(&()),
            "kind": K::kind(&()),
            "status": status.unwrap_or_else(|| json!({})),
        });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let written = match self.api(&namespace).patch_status(&name, &params, &Patch::Apply(&patch)).await {
            Ok(o) => Arc::new(self.normalize(o)),
            Err(e) if api_code(&e) == Some(404) => return Ok(None),
            Err(e) => return Err(kube_err(format!("writing the status of {k}"))(e)),
        };
        if let Some(event) = K::status_event(before.as_deref(), obj) {
            let type_ = if event.warning { EventType::Warning } else { EventType::Normal };
            self.publish(written.as_ref(), type_, &event.reason, event.note);
        }
        Ok(Some(written))
    }

    async fn replace(&self, obj: &K) -> Result<Option<Arc<K>>, Error> {
        let k = key_of(obj);
        let (namespace, name) = self.split(&k);
        let Some(current) = self.get(&k) else { return Ok(None) };
        // A merge patch of what changed (spec, labels, annotations) carrying the version it was made against: the
        // API server refuses it with 409 when the object moved on (and emulators without PUT take it too).
        let as_json = |o: &K| serde_json::to_value(o).map_err(|e| Error::Store(e.to_string()));
        let (before, after) = (as_json(current.as_ref())?, as_json(obj)?);
        let mut patch = json!({ "metadata": {} });
        for (path, field) in [
            (&["spec"][..], "spec"),
            (&["metadata", "labels"][..], "labels"),
            (&["metadata", "annotations"][..], "annotations"),
        ] {
            let pick = |v: &Value| path.iter().try_fold(v, |v, p| v.get(*p)).cloned().unwrap_or(Value::Null);
            if let Some(change) = merge_diff(&pick(&before), &pick(&after)) {
                match field {
                    "spec" => patch["spec"] = change,
                    _ => patch["metadata"][field] = change,
                }
            }
        }
        if let Some(rv) = obj.meta().resource_version.as_ref().filter(|rv| !rv.is_empty()) {
            patch["metadata"]["resourceVersion"] = json!(rv);
        }
        let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
        match self.api(&namespace).patch(&name, &params, &Patch::Merge(&patch)).await {
            Ok(o) => {
                let version = o.meta().resource_version.clone();
                let stored = Arc::new(self.normalize(o));
                self.settle(&k, |o| {
                    o.is_none_or(|o| at_least(o.meta().resource_version.as_deref(), version.as_deref()))
                })
                .await;
                Ok(Some(stored))
            }
            Err(e) if api_code(&e) == Some(404) => Ok(None),
            Err(e) if api_code(&e) == Some(409) => Err(Error::Conflict(k)),
            Err(e) => Err(kube_err(format!("changing {k}"))(e)),
        }
    }

    async fn request_delete(&self, k: &str, _now: Timestamp) -> Result<Option<Arc<K>>, Error> {
        self.delete_with(k, DeleteParams::default()).await
    }

    async fn request_delete_at(&self, k: &str, version: &str, _now: Timestamp) -> Result<Option<Arc<K>>, Error> {
        let preconditions = Preconditions { resource_version: Some(version.to_string()), uid: None };
        self.delete_with(k, DeleteParams { preconditions: Some(preconditions), ..Default::default() }).await
    }

    async fn purge(&self, k: &str) -> Result<(), Error> {
        let (namespace, name) = self.split(k);
        let api = self.api(&namespace);
        let kind = K::kind(&());
        for _ in 0..5 {
            let current = match api.get(&name).await {
                Ok(o) => o,
                Err(e) if api_code(&e) == Some(404) => return Ok(()),
                Err(e) => return Err(kube_err(format!("reading {k}"))(e)),
            };
            let current = if current.meta().deletion_timestamp.is_some() {
                current
            } else {
                match api.delete(&name, &DeleteParams::default()).await {
                    Ok(either) => match either.left() {
                        Some(o) => o,
                        None => return Ok(()),
                    },
                    Err(e) if api_code(&e) == Some(404) => return Ok(()),
                    Err(e) => return Err(kube_err(format!("deleting {k}"))(e)),
                }
            };
            let Some(ours) = &self.config.finalizer else { return Ok(()) };
            let finalizers = current.finalizers();
            if !finalizers.contains(ours) {
                return Ok(());
            }
            let rest: Vec<String> = finalizers.iter().filter(|f| *f != ours).cloned().collect();
            let patch = Self::finalizer_patch(&current, rest);
            match api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(_) => {
                    if let Some(cached) = self.get(k) {
                        self.publish(cached.as_ref(), EventType::Normal, "Deleted", None);
                    }
                    self.settle(k, |o| o.is_none_or(|o| !o.finalizers().contains(ours))).await;
                    return Ok(());
                }
                Err(e) if api_code(&e) == Some(404) => return Ok(()),
                Err(e) if api_code(&e) == Some(409) => {
                    debug!(key = %k, "the {kind} changed while its finalizer was being removed; trying again");
                    continue;
                }
                Err(e) => return Err(kube_err(format!("removing the finalizer of {k}"))(e)),
            }
        }
        Err(Error::Store(format!("could not remove the finalizer of {k}: it kept changing; will retry")))
    }

    async fn hold(&self, obj: &K) -> Result<(), Error> {
        let Some(ours) = &self.config.finalizer else { return Ok(()) };
        if obj.meta().deletion_timestamp.is_some() || obj.finalizers().contains(ours) {
            return Ok(());
        }
        let k = key_of(obj);
        let (namespace, name) = self.split(&k);
        let mut finalizers = obj.finalizers().to_vec();
        finalizers.push(ours.clone());
        let patch = Self::finalizer_patch(obj, finalizers);
        match self.api(&namespace).patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => {
                debug!(key = %k, "finalizer added");
                Ok(())
            }
            Err(e) if api_code(&e) == Some(404) => Ok(()),
            Err(e) => Err(kube_err(format!("adding the finalizer to {k}"))(e)),
        }
    }

    /// The reflector this store reads from serves the controller too, fed by the same watch: no second cache.
    fn controller_feed(&self) -> (reflector::Store<K>, BoxStream<'static, K>) {
        let objects = self.watch().filter_map(|e| {
            futures::future::ready(match e {
                watcher::Event::Apply(o) | watcher::Event::InitApply(o) => Some(o),
                _ => None,
            })
        });
        (self.reader.clone(), objects.boxed())
    }

    fn watch(&self) -> BoxStream<'static, watcher::Event<K>> {
        let (shared, reader) = (self.shared.clone(), self.reader.clone());
        relisting_watch(
            move || {
                let _g = shared.gate();
                (shared.changes.subscribe(), reader.state())
            },
            |msg| match msg {
                Msg::Init => watcher::Event::Init,
                Msg::InitApply(o) => watcher::Event::InitApply((*o).clone()),
                Msg::InitDone => watcher::Event::InitDone,
                Msg::Apply(o) => watcher::Event::Apply((*o).clone()),
                Msg::Delete(o) => watcher::Event::Delete((*o).clone()),
            },
        )
    }
}
