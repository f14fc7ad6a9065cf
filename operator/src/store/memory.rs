//! An in-memory store: the [`ObjectStore`] contract without a disk or an API server, for tests of the controller
//! and the services. A switch makes status writes fail, to test what the controller does then.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use async_trait::async_trait;
use futures::stream::BoxStream;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::watcher;
use tokio::sync::broadcast;

use super::{DEFAULT_NAMESPACE, Kind, ObjectStore, key_of, random_suffix, relisting_watch, with_status_of};
use crate::Error;

#[derive(Clone, Debug)]
enum Change<K> {
    Applied(Arc<K>),
    Deleted(Arc<K>),
}

struct State<K> {
    objects: BTreeMap<String, Arc<K>>,
    resource_version: u64,
}

/// Objects of one kind, in memory.
pub struct MemoryStore<K> {
    state: Arc<Mutex<State<K>>>,
    changes: broadcast::Sender<Change<K>>,
    /// How many of the next status writes fail.
    failing_status_writes: AtomicUsize,
}

impl<K: Kind> MemoryStore<K> {
    pub fn new() -> Arc<Self> {
        Arc::new(MemoryStore {
            state: Arc::new(Mutex::new(State { objects: BTreeMap::new(), resource_version: 0 })),
            changes: broadcast::channel(1024).0,
            failing_status_writes: AtomicUsize::new(0),
        })
    }

    /// Makes the next `n` status writes fail with [`Error::Store`].
    pub fn fail_status_writes(&self, n: usize) {
        self.failing_status_writes.store(n, Ordering::SeqCst);
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State<K>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores `obj` at `key` (or removes it), with the next resource version, and tells watchers.
    fn put(&self, key: String, obj: Option<K>) -> Option<Arc<K>> {
        let mut state = self.state();
        state.resource_version += 1;
        let rv = state.resource_version.to_string();
        match obj {
            Some(mut o) => {
                o.meta_mut().resource_version = Some(rv);
                let o = Arc::new(o);
                state.objects.insert(key, o.clone());
                let _ = self.changes.send(Change::Applied(o.clone()));
                Some(o)
            }
            None => {
                if let Some(old) = state.objects.remove(&key) {
                    let _ = self.changes.send(Change::Deleted(old));
                }
                None
            }
        }
    }
}

#[async_trait]
impl<K: Kind> ObjectStore<K> for MemoryStore<K> {
    async fn create(&self, mut obj: K, now: Timestamp) -> Result<Arc<K>, Error> {
        let key = key_of(&obj);
        if self.state().objects.contains_key(&key) {
            return Err(Error::AlreadyExists(key));
        }
        let meta = obj.meta_mut();
        meta.namespace.get_or_insert_with(|| DEFAULT_NAMESPACE.to_string());
        meta.uid = Some(random_suffix(16));
        meta.creation_timestamp = Some(Time(now));
        meta.generation = Some(1);
        self.put(key, Some(obj)).ok_or_else(|| Error::Store("a create stored nothing".into()))
    }

    fn get(&self, key: &str) -> Option<Arc<K>> {
        self.state().objects.get(key).cloned()
    }

    fn list(&self) -> Vec<Arc<K>> {
        self.state().objects.values().cloned().collect()
    }

    async fn write_status(&self, obj: &K) -> Result<Option<Arc<K>>, Error> {
        let failing = self.failing_status_writes.load(Ordering::SeqCst);
        if failing > 0 {
            self.failing_status_writes.store(failing - 1, Ordering::SeqCst);
            return Err(Error::Store("status write refused (MemoryStore::fail_status_writes)".into()));
        }
        let key = key_of(obj);
        let Some(current) = self.get(&key) else { return Ok(None) };
        let merged = with_status_of(current.as_ref(), obj)?;
        Ok(self.put(key, Some(merged)))
    }

    async fn request_delete(&self, key: &str, now: Timestamp) -> Result<Option<Arc<K>>, Error> {
        let Some(current) = self.get(key) else { return Ok(None) };
        if current.meta().deletion_timestamp.is_some() {
            return Ok(Some(current));
        }
        let mut obj = (*current).clone();
        let meta = obj.meta_mut();
        meta.deletion_timestamp = Some(Time(now));
        meta.generation = Some(meta.generation.unwrap_or(1) + 1);
        Ok(self.put(key.to_string(), Some(obj)))
    }

    async fn purge(&self, key: &str) -> Result<(), Error> {
        self.put(key.to_string(), None);
        Ok(())
    }

    fn watch(&self) -> BoxStream<'static, watcher::Event<K>> {
        let (state, changes) = (self.state.clone(), self.changes.clone());
        relisting_watch(
            move || {
                let state = state.lock().unwrap_or_else(|p| p.into_inner());
                (changes.subscribe(), state.objects.values().cloned().collect())
            },
            |change| match change {
                Change::Applied(o) => watcher::Event::Apply((*o).clone()),
                Change::Deleted(o) => watcher::Event::Delete((*o).clone()),
            },
        )
    }
}
