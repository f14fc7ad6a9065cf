//! The embedded store: `EnvInstance` objects kept in a redb file (crash-safe, one writer), served from an
//! in-memory index, with Kubernetes-style resource versions and a watch stream.
//!
//! Every write goes to disk before it is visible: a create is durable (fsync) before the API answers, so an
//! accepted instance survives a crash at any instant. Status writes are not fsynced on their own (they are
//! observations the reconciler makes again); the next durable commit carries them to disk.

use std::{
    collections::BTreeMap,
    path::Path,
    sync::{Arc, RwLock},
};

use aenv_core::{EnvInstance, EnvInstanceStatus};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::watcher;
use rand::Rng;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{Mutex, broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tracing::warn;

use crate::Error;

const INSTANCES: TableDefinition<&str, &[u8]> = TableDefinition::new("instances");
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
const META_RESOURCE_VERSION: &str = "resource_version";
const META_OPERATOR_ID: &str = "operator_id";

/// The namespace instances made through the REST API live in.
pub const DEFAULT_NAMESPACE: &str = "default";

/// `namespace/name`, the store's key.
pub fn key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// The key of an object.
pub fn key_of(inst: &EnvInstance) -> String {
    key(inst.metadata.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE), inst.metadata.name.as_deref().unwrap_or(""))
}

#[derive(Clone, Debug)]
enum Change {
    Applied(Arc<EnvInstance>),
    Deleted(Arc<EnvInstance>),
}

#[derive(Default)]
struct Index {
    objects: BTreeMap<String, Arc<EnvInstance>>,
    resource_version: u64,
}

/// The embedded store.
pub struct Store {
    db: Arc<Database>,
    index: RwLock<Index>,
    changes: broadcast::Sender<Change>,
    /// Serialises writers, so that resource versions and the order of watch events follow commit order.
    writer: Mutex<()>,
    operator_id: String,
}

fn db_err(e: impl Into<redb::Error>) -> Error {
    Error::Store(e.into().to_string())
}

impl Store {
    /// Opens (or creates) the store in `dir`, loading every object into memory.
    pub fn open(dir: &Path) -> Result<Arc<Self>, Error> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Store(format!("cannot create the data directory {}: {e}", dir.display())))?;
        let path = dir.join("aenv.redb");
        let db = Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => Error::Store(format!(
                "{} is in use by another aenv-operator process (stop it, or pass another --data-dir)",
                path.display()
            )),
            other => Error::Store(format!("cannot open {}: {other}", path.display())),
        })?;
        let txn = db.begin_write().map_err(db_err)?;
        let operator_id;
        {
            let mut meta = txn.open_table(META).map_err(db_err)?;
            let existing = meta.get(META_OPERATOR_ID).map_err(db_err)?.map(|v| v.value().to_string());
            operator_id = match existing {
                Some(id) => id,
                None => {
                    let id = random_suffix(10);
                    meta.insert(META_OPERATOR_ID, id.as_str()).map_err(db_err)?;
                    id
                }
            };
            txn.open_table(INSTANCES).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;

        let mut index = Index::default();
        let read = db.begin_read().map_err(db_err)?;
        let meta = read.open_table(META).map_err(db_err)?;
        index.resource_version =
            meta.get(META_RESOURCE_VERSION).map_err(db_err)?.and_then(|v| v.value().parse().ok()).unwrap_or(0);
        let table = read.open_table(INSTANCES).map_err(db_err)?;
        for entry in table.iter().map_err(db_err)? {
            let (k, v) = entry.map_err(db_err)?;
            match serde_json::from_slice::<EnvInstance>(v.value()) {
                Ok(obj) => {
                    index.objects.insert(k.value().to_string(), Arc::new(obj));
                }
                Err(e) => warn!(key = k.value(), error = %e, "skipping an unreadable record"),
            }
        }
        let (changes, _) = broadcast::channel(4096);
        Ok(Arc::new(Store {
            db: Arc::new(db),
            index: RwLock::new(index),
            changes,
            writer: Mutex::new(()),
            operator_id,
        }))
    }

    /// This operator's stable id, created with the store.
    pub fn operator_id(&self) -> &str {
        &self.operator_id
    }

    pub fn get(&self, key: &str) -> Option<Arc<EnvInstance>> {
        self.read_index().objects.get(key).cloned()
    }

    /// Every object, in key order.
    pub fn list(&self) -> Vec<Arc<EnvInstance>> {
        self.read_index().objects.values().cloned().collect()
    }

    /// Objects that match `filter`, in key order.
    pub fn list_where(&self, filter: impl Fn(&EnvInstance) -> bool) -> Vec<Arc<EnvInstance>> {
        self.read_index().objects.values().filter(|o| filter(o)).cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.read_index().objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn read_index(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        // A poisoned lock means a writer panicked between two plain assignments; the data is still whole.
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates an object; `AlreadyExists` when its key is taken. Fills in uid, resource version and creation
    /// time. Durable before it returns.
    pub async fn create(&self, mut obj: EnvInstance, now: Timestamp) -> Result<Arc<EnvInstance>, Error> {
        let _w = self.writer.lock().await;
        let key = key_of(&obj);
        if self.read_index().objects.contains_key(&key) {
            return Err(Error::AlreadyExists(key));
        }
        obj.metadata.namespace.get_or_insert_with(|| DEFAULT_NAMESPACE.to_string());
        obj.metadata.uid = Some(uuid_like());
        obj.metadata.creation_timestamp = Some(Time(now));
        obj.metadata.generation = Some(1);
        self.commit(key, Some(obj), Durability::Immediate)
            .await?
            .ok_or_else(|| Error::Store("a create stored nothing".into()))
    }

    /// Replaces the status of the object at `key`, if it still exists. Returns the stored object.
    pub async fn update_status(&self, key: &str, status: EnvInstanceStatus) -> Result<Option<Arc<EnvInstance>>, Error> {
        let _w = self.writer.lock().await;
        let Some(current) = self.get(key) else { return Ok(None) };
        let mut obj = (*current).clone();
        obj.status = Some(status);
        self.commit(key.to_string(), Some(obj), Durability::None).await
    }

    /// Marks the object for deletion (sets `deletionTimestamp`); the reconciler removes what the engine made and
    /// then purges the record. Durable. Returns `None` when there is no such object.
    pub async fn request_delete(&self, key: &str, now: Timestamp) -> Result<Option<Arc<EnvInstance>>, Error> {
        let _w = self.writer.lock().await;
        let Some(current) = self.get(key) else { return Ok(None) };
        if current.metadata.deletion_timestamp.is_some() {
            return Ok(Some(current));
        }
        let mut obj = (*current).clone();
        obj.metadata.deletion_timestamp = Some(Time(now));
        // As on Kubernetes, asking for deletion bumps the generation: the reconciler wakes for it.
        obj.metadata.generation = Some(obj.metadata.generation.unwrap_or(1) + 1);
        self.commit(key.to_string(), Some(obj), Durability::Immediate).await
    }

    /// Removes the record for good. Durable.
    pub async fn purge(&self, key: &str) -> Result<(), Error> {
        let _w = self.writer.lock().await;
        if self.get(key).is_none() {
            return Ok(());
        }
        self.commit(key.to_string(), None, Durability::Immediate).await.map(|_| ())
    }

    /// Writes `obj` at `key` (or removes the key when `None`), bumping the resource version; then updates the
    /// index and tells watchers. The caller holds the writer lock.
    async fn commit(
        &self,
        key: String,
        obj: Option<EnvInstance>,
        durability: Durability,
    ) -> Result<Option<Arc<EnvInstance>>, Error> {
        let rv = self.read_index().resource_version + 1;
        let obj = obj.map(|mut o| {
            o.metadata.resource_version = Some(rv.to_string());
            o
        });
        let bytes = obj.as_ref().map(serde_json::to_vec).transpose().map_err(|e| Error::Store(e.to_string()))?;
        let db = self.db.clone();
        let disk_key = key.clone();
        tokio::task::spawn_blocking(move || -> Result<(), Error> {
            let mut txn = db.begin_write().map_err(db_err)?;
            txn.set_durability(durability).map_err(|e| Error::Store(e.to_string()))?;
            {
                let mut table = txn.open_table(INSTANCES).map_err(db_err)?;
                match &bytes {
                    Some(b) => {
                        table.insert(disk_key.as_str(), b.as_slice()).map_err(db_err)?;
                    }
                    None => {
                        table.remove(disk_key.as_str()).map_err(db_err)?;
                    }
                }
                let mut meta = txn.open_table(META).map_err(db_err)?;
                meta.insert(META_RESOURCE_VERSION, rv.to_string().as_str()).map_err(db_err)?;
            }
            txn.commit().map_err(db_err)
        })
        .await
        .map_err(|e| Error::Store(format!("store writer task failed: {e}")))??;

        let mut index = self.index.write().unwrap_or_else(|p| p.into_inner());
        index.resource_version = rv;
        let stored = match obj {
            Some(o) => {
                let o = Arc::new(o);
                index.objects.insert(key, o.clone());
                let _ = self.changes.send(Change::Applied(o.clone()));
                Some(o)
            }
            None => {
                if let Some(old) = index.objects.remove(&key) {
                    let _ = self.changes.send(Change::Deleted(old));
                }
                None
            }
        };
        Ok(stored)
    }

    /// A watch in the shape kube-runtime's reflector expects: `Init`, one `InitApply` per object, `InitDone`,
    /// then `Apply`/`Delete` as objects change. A watcher that falls behind gets a fresh listing.
    pub fn watch(self: &Arc<Self>) -> ReceiverStream<watcher::Event<EnvInstance>> {
        let (tx, rx) = mpsc::channel(1024);
        let store = self.clone();
        tokio::spawn(async move {
            loop {
                let (mut changes, snapshot) = {
                    // Subscribing under the index lock means no change falls between the snapshot and the feed.
                    let index = store.read_index();
                    (store.changes.subscribe(), index.objects.values().cloned().collect::<Vec<_>>())
                };
                if tx.send(watcher::Event::Init).await.is_err() {
                    return;
                }
                for obj in snapshot {
                    if tx.send(watcher::Event::InitApply((*obj).clone())).await.is_err() {
                        return;
                    }
                }
                if tx.send(watcher::Event::InitDone).await.is_err() {
                    return;
                }
                loop {
                    let event = match changes.recv().await {
                        Ok(Change::Applied(o)) => watcher::Event::Apply((*o).clone()),
                        Ok(Change::Deleted(o)) => watcher::Event::Delete((*o).clone()),
                        Err(broadcast::error::RecvError::Lagged(_)) => break,
                        Err(broadcast::error::RecvError::Closed) => return,
                    };
                    if tx.send(event).await.is_err() {
                        return;
                    }
                }
            }
        });
        ReceiverStream::new(rx)
    }
}

/// `n` random characters from `[a-z0-9]`, as AEnvironment's instance-id suffixes.
pub fn random_suffix(n: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..n).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect()
}

fn uuid_like() -> String {
    let mut rng = rand::rng();
    let v: u128 = rng.random();
    let h = format!("{v:032x}");
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

#[cfg(test)]
mod tests {
    use aenv_core::{EnvInstanceSpec, Phase};
    use futures::StreamExt;

    use super::*;

    fn instance(name: &str) -> EnvInstance {
        EnvInstance::new(name, EnvInstanceSpec { env_name: "demo".into(), ..Default::default() })
    }

    #[tokio::test]
    async fn survives_reopen_with_versions_and_operator_id() {
        let dir = tempfile::tempdir().unwrap();
        let now = Timestamp::now();
        let (id, rv) = {
            let store = Store::open(dir.path()).unwrap();
            let a = store.create(instance("a-000001"), now).await.unwrap();
            assert_eq!(a.metadata.resource_version.as_deref(), Some("1"));
            assert!(matches!(store.create(instance("a-000001"), now).await, Err(Error::AlreadyExists(_))));
            store.create(instance("b-000002"), now).await.unwrap();
            let st = EnvInstanceStatus { phase: Phase::Running, ip: Some("10.0.0.2".into()), ..Default::default() };
            store.update_status("default/a-000001", st).await.unwrap();
            store.request_delete("default/b-000002", now).await.unwrap();
            // A durable commit after the status write carries it to disk.
            store.create(instance("c-000003"), now).await.unwrap();
            store.purge("default/c-000003").await.unwrap();
            (store.operator_id().to_string(), store.get("default/a-000001").unwrap().metadata.resource_version.clone())
        };
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.operator_id(), id);
        let a = store.get("default/a-000001").unwrap();
        assert_eq!(a.phase(), Phase::Running);
        assert_eq!(a.metadata.resource_version, rv);
        assert!(store.get("default/b-000002").unwrap().is_deleting());
        assert!(store.get("default/c-000003").is_none());
        let next = store.create(instance("d-000004"), now).await.unwrap();
        assert_eq!(next.metadata.resource_version.as_deref(), Some("7"), "versions keep counting after a reopen");
    }

    #[tokio::test]
    async fn a_second_process_cannot_open_the_same_store() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path()).unwrap();
        let err = Store::open(dir.path()).err().expect("second open must fail");
        assert!(err.to_string().contains("in use"), "{err}");
    }

    #[tokio::test]
    async fn watch_lists_then_follows() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let now = Timestamp::now();
        store.create(instance("a-000001"), now).await.unwrap();
        let mut watch = store.watch();
        assert!(matches!(watch.next().await, Some(watcher::Event::Init)));
        assert!(
            matches!(watch.next().await, Some(watcher::Event::InitApply(o)) if o.metadata.name.as_deref() == Some("a-000001"))
        );
        assert!(matches!(watch.next().await, Some(watcher::Event::InitDone)));
        store.create(instance("b-000002"), now).await.unwrap();
        assert!(
            matches!(watch.next().await, Some(watcher::Event::Apply(o)) if o.metadata.name.as_deref() == Some("b-000002"))
        );
        store.purge("default/a-000001").await.unwrap();
        assert!(
            matches!(watch.next().await, Some(watcher::Event::Delete(o)) if o.metadata.name.as_deref() == Some("a-000001"))
        );
    }
}
