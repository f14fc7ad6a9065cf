//! The embedded store: objects kept in a redb file (crash-safe, one writer), served from an in-memory index, with
//! Kubernetes-style resource versions and a watch stream. One [`Embedded`] database holds a table per kind.
//!
//! Every write goes to disk before it is visible: a create is durable (fsync) before the API answers, so an
//! accepted instance survives a crash at any instant. Status writes are not fsynced on their own (they are
//! observations the reconciler makes again); the next durable commit carries them to disk.

use std::{collections::BTreeMap, marker::PhantomData, path::Path, sync::Arc};

use async_trait::async_trait;
use futures::stream::BoxStream;
use jiff::Timestamp;
use kube::runtime::watcher;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::Mutex;
use tracing::warn;

use super::{
    Kind, ObjectStore, cache::Cache, check_version, key_of, marked_for_deletion, random_suffix, replaced, stamp_new,
    with_status_of,
};
use crate::Error;

const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
const META_OPERATOR_ID: &str = "operator_id";

fn db_err(e: impl Into<redb::Error>) -> Error {
    Error::Store(e.into().to_string())
}

/// The database file, shared by the stores of each kind.
pub struct Embedded {
    db: Arc<Database>,
    operator_id: String,
}

impl Embedded {
    /// Opens (or creates) `dir/aenv.redb`. Only one process may have it open.
    pub fn open(dir: &Path) -> Result<Self, Error> {
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
        let operator_id = {
            let mut meta = txn.open_table(META).map_err(db_err)?;
            let existing = meta.get(META_OPERATOR_ID).map_err(db_err)?.map(|v| v.value().to_string());
            match existing {
                Some(id) => id,
                None => {
                    let id = random_suffix(10);
                    meta.insert(META_OPERATOR_ID, id.as_str()).map_err(db_err)?;
                    id
                }
            }
        };
        txn.commit().map_err(db_err)?;
        Ok(Embedded { db: Arc::new(db), operator_id })
    }

    /// This operator's stable id, created with the database.
    pub fn operator_id(&self) -> &str {
        &self.operator_id
    }

    /// The store of kind `K` (its own table), loaded into memory.
    pub fn store<K>(&self) -> Result<Arc<EmbeddedStore<K>>, Error>
    where
        K: Kind,
    {
        EmbeddedStore::load(self.db.clone(), K::plural(&()).into_owned())
    }
}

/// The embedded store of one kind.
pub struct EmbeddedStore<K> {
    db: Arc<Database>,
    table: String,
    rv_key: String,
    cache: Cache<K>,
    /// Serialises writers, so that resource versions and the order of watch events follow commit order.
    writer: Mutex<()>,
    _kind: PhantomData<K>,
}

impl<K> EmbeddedStore<K>
where
    K: Kind,
{
    fn load(db: Arc<Database>, table: String) -> Result<Arc<Self>, Error> {
        let rv_key = format!("resource_version/{table}");
        {
            let txn = db.begin_write().map_err(db_err)?;
            txn.open_table(TableDefinition::<&str, &[u8]>::new(&table)).map_err(db_err)?;
            txn.commit().map_err(db_err)?;
        }
        let read = db.begin_read().map_err(db_err)?;
        let meta = read.open_table(META).map_err(db_err)?;
        let resource_version =
            meta.get(rv_key.as_str()).map_err(db_err)?.and_then(|v| v.value().parse().ok()).unwrap_or(0);
        let mut objects = BTreeMap::new();
        let records = read.open_table(TableDefinition::<&str, &[u8]>::new(&table)).map_err(db_err)?;
        for entry in records.iter().map_err(db_err)? {
            let (k, v) = entry.map_err(db_err)?;
            match serde_json::from_slice::<K>(v.value()) {
                Ok(obj) => {
                    objects.insert(k.value().to_string(), Arc::new(obj));
                }
                Err(e) => warn!(key = k.value(), error = %e, "skipping an unreadable record"),
            }
        }
        Ok(Arc::new(EmbeddedStore {
            db,
            table,
            rv_key,
            cache: Cache::new(objects, resource_version),
            writer: Mutex::new(()),
            _kind: PhantomData,
        }))
    }

    /// Marks `current` for deletion, durably. The caller holds the writer lock.
    async fn mark_deleted(&self, current: Arc<K>, now: Timestamp) -> Result<Option<Arc<K>>, Error> {
        match marked_for_deletion(current.as_ref(), now) {
            Some(obj) => self.commit(key_of(current.as_ref()), Some(obj), Durability::Immediate).await,
            None => Ok(Some(current)),
        }
    }

    pub fn len(&self) -> usize {
        self.cache.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes `obj` at `key` (or removes the key when `None`), bumping the resource version; then updates the
    /// index and tells watchers. The caller holds the writer lock.
    async fn commit(&self, key: String, obj: Option<K>, durability: Durability) -> Result<Option<Arc<K>>, Error> {
        let rv = self.cache.next_resource_version();
        let obj = obj.map(|mut o| {
            o.meta_mut().resource_version = Some(rv.to_string());
            o
        });
        let bytes = obj.as_ref().map(serde_json::to_vec).transpose().map_err(|e| Error::Store(e.to_string()))?;
        let (db, table, rv_key, disk_key) = (self.db.clone(), self.table.clone(), self.rv_key.clone(), key.clone());
        tokio::task::spawn_blocking(move || -> Result<(), Error> {
            let mut txn = db.begin_write().map_err(db_err)?;
            txn.set_durability(durability).map_err(|e| Error::Store(e.to_string()))?;
            {
                let mut records = txn.open_table(TableDefinition::<&str, &[u8]>::new(&table)).map_err(db_err)?;
                match &bytes {
                    Some(b) => {
                        records.insert(disk_key.as_str(), b.as_slice()).map_err(db_err)?;
                    }
                    None => {
                        records.remove(disk_key.as_str()).map_err(db_err)?;
                    }
                }
                let mut meta = txn.open_table(META).map_err(db_err)?;
                meta.insert(rv_key.as_str(), rv.to_string().as_str()).map_err(db_err)?;
            }
            txn.commit().map_err(db_err)
        })
        .await
        .map_err(|e| Error::Store(format!("store writer task failed: {e}")))??;

        let stored = self.cache.apply(key, obj, rv);
        Ok(stored)
    }
}

#[async_trait]
impl<K> ObjectStore<K> for EmbeddedStore<K>
where
    K: Kind,
{
    async fn create(&self, mut obj: K, now: Timestamp) -> Result<Arc<K>, Error> {
        let _w = self.writer.lock().await;
        let key = key_of(&obj);
        if self.cache.contains(&key) {
            return Err(Error::AlreadyExists(key));
        }
        stamp_new(&mut obj, now);
        self.commit(key, Some(obj), Durability::Immediate)
            .await?
            .ok_or_else(|| Error::Store("a create stored nothing".into()))
    }

    fn get(&self, key: &str) -> Option<Arc<K>> {
        self.cache.get(key)
    }

    fn list(&self) -> Vec<Arc<K>> {
        self.cache.list_where(&|_| true)
    }

    fn list_where(&self, filter: &dyn Fn(&K) -> bool) -> Vec<Arc<K>> {
        self.cache.list_where(filter)
    }

    async fn write_status(&self, obj: &K) -> Result<Option<Arc<K>>, Error> {
        let _w = self.writer.lock().await;
        let key = key_of(obj);
        let Some(current) = self.get(&key) else { return Ok(None) };
        // Only the status moves: everything else stays as stored.
        let merged = with_status_of(current.as_ref(), obj)?;
        self.commit(key, Some(merged), Durability::None).await
    }

    async fn replace(&self, obj: &K) -> Result<Option<Arc<K>>, Error> {
        let _w = self.writer.lock().await;
        let key = key_of(obj);
        let Some(current) = self.get(&key) else { return Ok(None) };
        let next = replaced(current.as_ref(), obj)?;
        self.commit(key, Some(next), Durability::Immediate).await
    }

    async fn request_delete(&self, key: &str, now: Timestamp) -> Result<Option<Arc<K>>, Error> {
        let _w = self.writer.lock().await;
        let Some(current) = self.get(key) else { return Ok(None) };
        self.mark_deleted(current, now).await
    }

    async fn request_delete_at(&self, key: &str, version: &str, now: Timestamp) -> Result<Option<Arc<K>>, Error> {
        let _w = self.writer.lock().await;
        let Some(current) = self.get(key) else { return Ok(None) };
        check_version(current.as_ref(), version)?;
        self.mark_deleted(current, now).await
    }

    async fn purge(&self, key: &str) -> Result<(), Error> {
        let _w = self.writer.lock().await;
        if self.get(key).is_none() {
            return Ok(());
        }
        self.commit(key.to_string(), None, Durability::Immediate).await.map(|_| ())
    }

    fn watch(&self) -> BoxStream<'static, watcher::Event<K>> {
        self.cache.watch()
    }
}

#[cfg(test)]
mod tests {
    use aenv_core::{EnvInstance, EnvInstanceSpec, EnvInstanceStatus, Environment, EnvironmentSpec, Phase};
    use futures::StreamExt;

    use super::*;

    fn instance(name: &str) -> EnvInstance {
        EnvInstance::new(name, EnvInstanceSpec { env_name: "demo".into(), ..Default::default() })
    }

    fn with_status(name: &str, status: EnvInstanceStatus) -> EnvInstance {
        let mut obj = instance(name);
        obj.metadata.namespace = Some(crate::store::DEFAULT_NAMESPACE.into());
        obj.spec.env_name = "ignored: only the status is written".into();
        obj.status = Some(status);
        obj
    }

    #[tokio::test]
    async fn survives_reopen_with_versions_and_operator_id() {
        let dir = tempfile::tempdir().unwrap();
        let now = Timestamp::now();
        let (id, rv) = {
            let db = Embedded::open(dir.path()).unwrap();
            let store = db.store::<EnvInstance>().unwrap();
            let a = store.create(instance("a-000001"), now).await.unwrap();
            assert_eq!(a.metadata.resource_version.as_deref(), Some("1"));
            assert!(matches!(store.create(instance("a-000001"), now).await, Err(Error::AlreadyExists(_))));
            store.create(instance("b-000002"), now).await.unwrap();
            let st = EnvInstanceStatus { phase: Phase::Running, ip: Some("10.0.0.2".into()), ..Default::default() };
            let written = store.write_status(&with_status("a-000001", st)).await.unwrap().unwrap();
            assert_eq!(written.spec.env_name, "demo", "only the status moves");
            store.request_delete("default/b-000002", now).await.unwrap();
            // A durable commit after the status write carries it to disk.
            store.create(instance("c-000003"), now).await.unwrap();
            store.purge("default/c-000003").await.unwrap();
            (db.operator_id().to_string(), store.get("default/a-000001").unwrap().metadata.resource_version.clone())
        };
        let db = Embedded::open(dir.path()).unwrap();
        let store = db.store::<EnvInstance>().unwrap();
        assert_eq!(db.operator_id(), id);
        let a = store.get("default/a-000001").unwrap();
        assert_eq!(a.phase(), Phase::Running);
        assert_eq!(a.metadata.resource_version, rv);
        let b = store.get("default/b-000002").unwrap();
        assert!(b.is_deleting());
        assert_eq!(b.metadata.generation, Some(2), "deletion bumps the generation");
        assert!(store.get("default/c-000003").is_none());
        let next = store.create(instance("d-000004"), now).await.unwrap();
        assert_eq!(next.metadata.resource_version.as_deref(), Some("7"), "versions keep counting after a reopen");
    }

    #[tokio::test]
    async fn kinds_have_tables_of_their_own() {
        let dir = tempfile::tempdir().unwrap();
        let db = Embedded::open(dir.path()).unwrap();
        let instances = db.store::<EnvInstance>().unwrap();
        let envs = db.store::<Environment>().unwrap();
        instances.create(instance("same-name"), Timestamp::now()).await.unwrap();
        let env = Environment::new(
            "same-name",
            EnvironmentSpec { name: "demo".into(), version: "1".into(), ..Default::default() },
        );
        envs.create(env, Timestamp::now()).await.unwrap();
        assert_eq!((instances.len(), envs.len()), (1, 1));
        assert_eq!(envs.get("default/same-name").unwrap().spec.version, "1");
    }

    #[tokio::test]
    async fn a_second_process_cannot_open_the_same_store() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Embedded::open(dir.path()).unwrap();
        let err = Embedded::open(dir.path()).err().expect("second open must fail");
        assert!(err.to_string().contains("in use"), "{err}");
    }

    #[tokio::test]
    async fn watch_lists_then_follows() {
        let dir = tempfile::tempdir().unwrap();
        let store = Embedded::open(dir.path()).unwrap().store::<EnvInstance>().unwrap();
        let now = Timestamp::now();
        store.create(instance("a-000001"), now).await.unwrap();
        let mut watch = store.watch();
        let name = |o: &EnvInstance| o.metadata.name.clone().unwrap_or_default();
        assert!(matches!(watch.next().await, Some(watcher::Event::Init)));
        assert!(matches!(watch.next().await, Some(watcher::Event::InitApply(o)) if name(&o) == "a-000001"));
        assert!(matches!(watch.next().await, Some(watcher::Event::InitDone)));
        store.create(instance("b-000002"), now).await.unwrap();
        assert!(matches!(watch.next().await, Some(watcher::Event::Apply(o)) if name(&o) == "b-000002"));
        store.purge("default/a-000001").await.unwrap();
        assert!(matches!(watch.next().await, Some(watcher::Event::Delete(o)) if name(&o) == "a-000001"));
    }
}
