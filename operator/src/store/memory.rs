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
use kube::runtime::watcher;

use super::{
    Kind, ObjectStore, cache::Cache, check_version, key_of, marked_for_deletion, replaced, stamp_new, with_status_of,
};
use crate::Error;

/// Objects of one kind, in memory.
pub struct MemoryStore<K> {
    cache: Cache<K>,
    /// Serialises writers, as the embedded store does.
    writer: Mutex<()>,
    /// How many of the next status writes fail.
    failing_status_writes: AtomicUsize,
}

impl<K: Kind> MemoryStore<K> {
    pub fn new() -> Arc<Self> {
        Arc::new(MemoryStore {
            cache: Cache::new(BTreeMap::new(), 0),
            writer: Mutex::new(()),
            failing_status_writes: AtomicUsize::new(0),
        })
    }

    /// Makes the next `n` status writes fail with [`Error::Store`].
    pub fn fail_status_writes(&self, n: usize) {
        self.failing_status_writes.store(n, Ordering::SeqCst);
    }

    /// Holds the writer: each write's read, check and store happen as one step, as in the embedded store.
    fn writer(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks `current` for deletion. The caller holds the writer.
    fn mark_deleted(&self, current: Arc<K>, now: Timestamp) -> Option<Arc<K>> {
        match marked_for_deletion(current.as_ref(), now) {
            Some(obj) => self.put(key_of(current.as_ref()), Some(obj)),
            None => Some(current),
        }
    }

    /// Stores `obj` at `key` (or removes it) with the next resource version, and tells watchers. The caller
    /// holds the writer.
    fn put(&self, key: String, obj: Option<K>) -> Option<Arc<K>> {
        self.cache.apply(key, obj, self.cache.next_resource_version())
    }
}

#[async_trait]
impl<K: Kind> ObjectStore<K> for MemoryStore<K> {
    async fn create(&self, mut obj: K, now: Timestamp) -> Result<Arc<K>, Error> {
        let _w = self.writer();
        let key = key_of(&obj);
        if self.cache.contains(&key) {
            return Err(Error::AlreadyExists(key));
        }
        stamp_new(&mut obj, now);
        self.put(key, Some(obj)).ok_or_else(|| Error::Store("a create stored nothing".into()))
    }

    fn get(&self, key: &str) -> Option<Arc<K>> {
        self.cache.get(key)
    }

    fn list(&self) -> Vec<Arc<K>> {
        self.cache.list_where(&|_| true)
    }

    async fn write_status(&self, obj: &K) -> Result<Option<Arc<K>>, Error> {
        let failing = self.failing_status_writes.load(Ordering::SeqCst);
        if failing > 0 {
            self.failing_status_writes.store(failing - 1, Ordering::SeqCst);
            return Err(Error::Store("status write refused (MemoryStore::fail_status_writes)".into()));
        }
        let _w = self.writer();
        let key = key_of(obj);
        let Some(current) = self.get(&key) else { return Ok(None) };
        let merged = with_status_of(current.as_ref(), obj)?;
        Ok(self.put(key, Some(merged)))
    }

    async fn replace(&self, obj: &K) -> Result<Option<Arc<K>>, Error> {
        let _w = self.writer();
        let key = key_of(obj);
        let Some(current) = self.get(&key) else { return Ok(None) };
        let next = replaced(current.as_ref(), obj)?;
        Ok(self.put(key, Some(next)))
    }

    async fn request_delete(&self, key: &str, now: Timestamp) -> Result<Option<Arc<K>>, Error> {
        let _w = self.writer();
        let Some(current) = self.get(key) else { return Ok(None) };
        Ok(self.mark_deleted(current, now))
    }

    async fn request_delete_at(&self, key: &str, version: &str, now: Timestamp) -> Result<Option<Arc<K>>, Error> {
        let _w = self.writer();
        let Some(current) = self.get(key) else { return Ok(None) };
        check_version(current.as_ref(), version)?;
        Ok(self.mark_deleted(current, now))
    }

    async fn purge(&self, key: &str) -> Result<(), Error> {
        let _w = self.writer();
        self.put(key.to_string(), None);
        Ok(())
    }

    fn watch(&self) -> BoxStream<'static, watcher::Event<K>> {
        self.cache.watch()
    }

    fn changes_of(&self, key: &str) -> BoxStream<'static, ()> {
        self.cache.changes_of(key)
    }
}
