//! The in-memory side both local stores share (the embedded one behind its redb file, the memory one alone): the
//! objects by key with the last resource version, and the feed a watch follows.

use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock},
};

use futures::stream::BoxStream;
use kube::runtime::watcher;
use tokio::sync::broadcast;

use super::{Kind, relisting_watch};

/// What the feed tells watchers. A change names its key only: the watcher reads the object from the index when
/// it forwards the change, so the feed's ring buffer holds no old versions of live objects (a watcher that is
/// behind sees the latest version, once or more, which is all a reflector needs).
#[derive(Clone, Debug)]
enum Change<K> {
    Applied(String),
    Deleted(Arc<K>),
}

struct Index<K> {
    objects: BTreeMap<String, Arc<K>>,
    resource_version: u64,
}

/// Objects by key, served to readers, and the changes told to watchers.
pub(crate) struct Cache<K> {
    index: Arc<RwLock<Index<K>>>,
    changes: broadcast::Sender<Change<K>>,
}

impl<K: Kind> Cache<K> {
    pub(crate) fn new(objects: BTreeMap<String, Arc<K>>, resource_version: u64) -> Self {
        Cache { index: Arc::new(RwLock::new(Index { objects, resource_version })), changes: broadcast::channel(4096).0 }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Index<K>> {
        // A poisoned lock means a writer panicked between two plain assignments; the data is still whole.
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn len(&self) -> usize {
        self.read().objects.len()
    }

    pub(crate) fn contains(&self, key: &str) -> bool {
        self.read().objects.contains_key(key)
    }

    /// The resource version the next write gets.
    pub(crate) fn next_resource_version(&self) -> u64 {
        self.read().resource_version + 1
    }

    pub(crate) fn get(&self, key: &str) -> Option<Arc<K>> {
        self.read().objects.get(key).cloned()
    }

    pub(crate) fn list_where(&self, filter: &dyn Fn(&K) -> bool) -> Vec<Arc<K>> {
        self.read().objects.values().filter(|o| filter(o)).cloned().collect()
    }

    /// Puts `obj` at `key` (or removes the key when `None`) as resource version `rv`, and tells watchers. The
    /// caller serialises writes, so that versions and events follow its commit order.
    pub(crate) fn apply(&self, key: String, obj: Option<K>, rv: u64) -> Option<Arc<K>> {
        let mut index = self.index.write().unwrap_or_else(|p| p.into_inner());
        index.resource_version = rv;
        match obj {
            Some(mut o) => {
                o.meta_mut().resource_version = Some(rv.to_string());
                let o = Arc::new(o);
                index.objects.insert(key.clone(), o.clone());
                let _ = self.changes.send(Change::Applied(key));
                Some(o)
            }
            None => {
                if let Some(old) = index.objects.remove(&key) {
                    let _ = self.changes.send(Change::Deleted(old));
                }
                None
            }
        }
    }

    /// `Init`, the objects, `InitDone`, then every change; a fresh listing for a watcher that falls behind.
    pub(crate) fn watch(&self) -> BoxStream<'static, watcher::Event<K>> {
        let (index, changes) = (self.index.clone(), self.changes.clone());
        let current = self.index.clone();
        relisting_watch(
            move || {
                // Subscribing under the index lock means no change falls between the snapshot and the feed.
                let index = index.read().unwrap_or_else(|p| p.into_inner());
                (changes.subscribe(), index.objects.values().cloned().collect())
            },
            move |change| match change {
                // Gone since: its deletion follows in the feed.
                Change::Applied(key) => current
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .objects
                    .get(&key)
                    .map(|o| watcher::Event::Apply((**o).clone())),
                Change::Deleted(o) => Some(watcher::Event::Delete((*o).clone())),
            },
        )
    }

    /// An item per change of `key`, and one when the feed lagged (see [`super::ObjectStore::changes_of`]); no
    /// object is copied.
    pub(crate) fn changes_of(&self, key: &str) -> BoxStream<'static, ()> {
        use futures::StreamExt;
        use tokio_stream::wrappers::BroadcastStream;
        let key = key.to_string();
        BroadcastStream::new(self.changes.subscribe())
            .filter_map(move |change| {
                futures::future::ready(match change {
                    Ok(Change::Applied(k)) => (k == key).then_some(()),
                    Ok(Change::Deleted(o)) => (super::key_of(o.as_ref()) == key).then_some(()),
                    Err(_lagged) => Some(()),
                })
            })
            .boxed()
    }
}
