//! The embedded store: objects kept in a redb file (crash-safe, one writer), served from an in-memory index, with
//! Kubernetes-style resource versions and a watch stream. One [`Embedded`] database holds a table per kind.
//!
//! Every write goes to disk before it is visible: a create is durable (fsync) before the API answers, so an
//! accepted instance survives a crash at any instant. Concurrent writes share one transaction and its fsync
//! (group commit, see [`EmbeddedStore`]). Status writes are not fsynced on their own (they are
//! observations the reconciler makes again); the next durable commit carries them to disk.
//!
//! A full disk is survived without a restart. redb latches the first I/O error of a [`Database`] and refuses every
//! later operation ("previous I/O error"), so after one the handle is closed and reopened (redb repairs the file
//! back to its last commit) until a probe write goes through. Meanwhile writes answer [`Error::StoreWrite`]
//! (retryable: nothing was accepted), reads keep coming from the index, and [`ObjectStore::write_failure`] says why, which
//! `/readyz` reports.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::Duration,
};

use async_trait::async_trait;
use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use futures::stream::BoxStream;
use jiff::Timestamp;
use kube::runtime::watcher;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;
use tracing::{error, info, warn};

use super::{
    Kind, ObjectStore, cache::Cache, check_version, key_of, marked_for_deletion, random_suffix, replaced, stamp_new,
    with_status_of,
};
use crate::Error;

const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
const META_OPERATOR_ID: &str = "operator_id";

const META_PROBE: &str = "probe";
/// The key of presigned URLs (base64).
const META_SIGNING_KEY: &str = "signing_key";
/// How often a failed database is reopened and probed.
const RECOVERY_INTERVAL: Duration = Duration::from_secs(1);
/// How long a reopen waits for transactions still running on the failed handle.
const RELEASE_WAIT: Duration = Duration::from_secs(30);

fn db_err(e: impl Into<redb::Error>) -> Error {
    Error::Store(e.into().to_string())
}

/// Whether `e` is an I/O failure of the file (a full disk, a failed write), after which redb refuses every
/// operation of this handle: the database must be reopened.
fn is_io_failure(e: &redb::Error) -> bool {
    matches!(e, redb::Error::Io(_) | redb::Error::PreviousIo)
}

/// Opens `path`, telling an unusable file (empty, truncated, corrupt) from one in use by another process.
fn open_database(path: &Path) -> Result<Database, Error> {
    let unreadable = |reason: String, source: Option<redb::DatabaseError>| Error::StoreUnreadable {
        path: path.display().to_string(),
        reason,
        source,
    };
    // redb takes an empty file for a new database: that would start afresh, with a new operator id, and lose
    // every instance (and the TTLs of their containers) silently.
    if let Ok(meta) = std::fs::metadata(path)
        && meta.len() == 0
    {
        return Err(unreadable("it is empty (0 bytes)".into(), None));
    }
    Database::create(path).map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => Error::Store(format!(
            "{} is in use by another aenv-operator process (stop it, or pass another --data-dir)",
            path.display()
        )),
        other => unreadable("it cannot be read as a store".into(), Some(other)),
    })
}

/// The open database, replaced by a fresh open after an I/O failure.
struct Handle {
    path: PathBuf,
    /// `None` while a failed database is being closed and reopened.
    current: RwLock<Option<Arc<Database>>>,
    /// Why writes fail now; `None` when they go through.
    failure: std::sync::Mutex<Option<String>>,
}

impl Handle {
    fn lock_failure(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.failure.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The database to run a transaction on, or why there is none now.
    fn database(&self) -> Result<Arc<Database>, Error> {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner()).clone();
        current.ok_or_else(|| self.write_error(None))
    }

    fn write_error(&self, source: Option<redb::Error>) -> Error {
        let reason = self.lock_failure().clone().unwrap_or_else(|| "the database is being reopened".into());
        Error::StoreWrite { path: self.path.display().to_string(), reason, source: source.map(Box::new) }
    }

    /// Runs `write` in a transaction of the current database. An I/O failure marks the store failing and starts
    /// its recovery (once), and is answered as [`Error::StoreWrite`].
    fn write(self: &Arc<Self>, write: impl FnOnce(&Database) -> Result<(), redb::Error>) -> Result<(), Error> {
        let db = self.database()?;
        match write(&db) {
            Ok(()) => Ok(()),
            Err(e) if is_io_failure(&e) => {
                drop(db);
                self.failed(&e);
                Err(self.write_error(Some(e)))
            }
            Err(e) => Err(db_err(e)),
        }
    }

    /// Notes the failure; the first one starts the thread that reopens the database until a write goes through.
    fn failed(self: &Arc<Self>, e: &redb::Error) {
        let start = {
            let mut failure = self.lock_failure();
            let first = failure.is_none();
            *failure = Some(e.to_string());
            first
        };
        if !start {
            return;
        }
        error!(path = %self.path.display(), error = %e, "the store cannot write; reopening it until it can (free space in the data directory)");
        let handle = self.clone();
        let spawned = std::thread::Builder::new().name("store-recovery".into()).spawn(move || handle.recover());
        if let Err(e) = spawned {
            error!(error = %e, "could not start the store's recovery; writes fail until a restart");
        }
    }

    /// Closes the failed database, then reopens and probes it every [`RECOVERY_INTERVAL`] until a durable write
    /// goes through.
    fn recover(&self) {
        loop {
            std::thread::sleep(RECOVERY_INTERVAL);
            let failed = self.current.write().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(failed) = failed {
                self.release(failed);
            }
            match open_database(&self.path).and_then(|db| probe(&db).map(|()| db)) {
                Ok(db) => {
                    *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(db));
                    *self.lock_failure() = None;
                    info!(path = %self.path.display(), "the store writes again");
                    return;
                }
                Err(e) => {
                    warn!(path = %self.path.display(), error = %e, "the store still cannot write");
                    *self.lock_failure() = Some(e.to_string());
                }
            }
        }
    }

    /// Waits for the transactions still holding `db` to end, then closes it (redb refuses a second open of a file
    /// while the first is open).
    fn release(&self, mut db: Arc<Database>) {
        let deadline = std::time::Instant::now() + RELEASE_WAIT;
        loop {
            match Arc::try_unwrap(db) {
                Ok(db) => return drop(db),
                Err(shared) if std::time::Instant::now() < deadline => {
                    db = shared;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(_) => {
                    warn!(path = %self.path.display(), "a transaction still holds the failed store; reopening beside it");
                    return;
                }
            }
        }
    }
}

/// A durable write of nothing that matters: whether the file takes writes again.
fn probe(db: &Database) -> Result<(), Error> {
    let run = || -> Result<(), redb::Error> {
        let txn = db.begin_write()?;
        txn.open_table(META)?.insert(META_PROBE, jiff::Timestamp::now().to_string().as_str())?;
        txn.commit()?;
        Ok(())
    };
    run().map_err(db_err)
}

/// The database file, shared by the stores of each kind.
pub struct Embedded {
    handle: Arc<Handle>,
    operator_id: String,
    /// The database was made by this open (a new operator id).
    fresh: bool,
    /// The key presigned URLs are signed with, made with the database.
    signing_key: Vec<u8>,
}

impl Embedded {
    /// Opens (or creates) `dir/aenv.redb`. Only one process may have it open.
    pub fn open(dir: &Path) -> Result<Self, Error> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Store(format!("cannot create the data directory {}: {e}", dir.display())))?;
        let path = dir.join("aenv.redb");
        let db = open_database(&path)?;
        let txn = db.begin_write().map_err(db_err)?;
        let (operator_id, fresh, signing_key) = {
            let mut meta = txn.open_table(META).map_err(db_err)?;
            let stored_key = meta.get(META_SIGNING_KEY).map_err(db_err)?.and_then(|v| B64.decode(v.value()).ok());
            let signing_key = match stored_key.filter(|k| k.len() >= 32) {
                Some(key) => key,
                None => {
                    let key = crate::usecase::presign::new_key();
                    meta.insert(META_SIGNING_KEY, B64.encode(&key).as_str()).map_err(db_err)?;
                    key
                }
            };
            let existing = meta.get(META_OPERATOR_ID).map_err(db_err)?.map(|v| v.value().to_string());
            match existing {
                Some(id) => (id, false, signing_key),
                None => {
                    let id = random_suffix(10);
                    meta.insert(META_OPERATOR_ID, id.as_str()).map_err(db_err)?;
                    (id, true, signing_key)
                }
            }
        };
        txn.commit().map_err(db_err)?;
        let handle = Arc::new(Handle { path, current: RwLock::new(Some(Arc::new(db))), failure: Default::default() });
        Ok(Embedded { handle, operator_id, fresh, signing_key })
    }

    /// Whether this open made the database (and a new operator id).
    pub fn is_fresh(&self) -> bool {
        self.fresh
    }

    /// The key presigned URLs are signed with: made once, kept with the objects, so that URLs survive a restart.
    pub fn signing_key(&self) -> Vec<u8> {
        self.signing_key.clone()
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
        EmbeddedStore::load(self.handle.clone(), K::plural(&()).into_owned())
    }
}

/// Most writes one transaction carries.
const MAX_BATCH: usize = 256;

/// The embedded store of one kind.
///
/// Writes are group-committed: each is checked against the latest state (stored or staged) and staged under a
/// short lock, then a flush task writes every staged write in one transaction (one fsync when any of them is
/// durable) and only then makes them visible to readers and watchers and answers their callers. So concurrent
/// writers share an fsync, none holds a lock across it, and each is still durable before it is answered; versions
/// and watch events follow staging order.
pub struct EmbeddedStore<K> {
    shared: Arc<Shared<K>>,
}

struct Shared<K> {
    db: Arc<Handle>,
    table: String,
    rv_key: String,
    cache: Cache<K>,
    pending: std::sync::Mutex<Pending<K>>,
}

/// Writes staged and not yet on disk.
struct Pending<K> {
    /// The resource version of the last staged write.
    last_rv: u64,
    /// The latest staged state of each key with a write in flight (`None`: removed), with its version: what the
    /// next write of that key is checked against.
    overlay: HashMap<String, (u64, Option<Arc<K>>)>,
    queue: Vec<Staged<K>>,
    /// A flush task runs.
    flushing: bool,
}

struct Staged<K> {
    key: String,
    obj: Option<K>,
    bytes: Option<Vec<u8>>,
    rv: u64,
    durable: bool,
    done: oneshot::Sender<Result<Option<Arc<K>>, Error>>,
}

/// What a write makes of the current state of its key.
enum Decision<K> {
    /// Write this (`None`: remove the key).
    Write(Option<K>, Durability),
    /// Nothing to write: answer this.
    Answer(Option<Arc<K>>),
}

impl<K: Kind> Pending<K> {
    fn current(&self, cache: &Cache<K>, key: &str) -> Option<Arc<K>> {
        match self.overlay.get(key) {
            Some((_, staged)) => staged.clone(),
            None => cache.get(key),
        }
    }
}

impl<K> Shared<K>
where
    K: Kind,
{
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending<K>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes the staged writes in transactions of up to [`MAX_BATCH`], then applies and answers them, until none
    /// is left.
    async fn flush(self: Arc<Self>) {
        loop {
            let batch: Vec<Staged<K>> = {
                let mut p = self.lock();
                if p.queue.is_empty() {
                    p.flushing = false;
                    return;
                }
                let n = p.queue.len().min(MAX_BATCH);
                p.queue.drain(..n).collect()
            };
            let durability = if batch.iter().any(|s| s.durable) { Durability::Immediate } else { Durability::None };
            let rv = batch.last().map_or(0, |s| s.rv);
            let items: Vec<(String, Option<Vec<u8>>)> =
                batch.iter().map(|s| (s.key.clone(), s.bytes.clone())).collect();
            let (db, table, rv_key) = (self.db.clone(), self.table.clone(), self.rv_key.clone());
            let written =
                tokio::task::spawn_blocking(move || write_batch(&db, &table, &rv_key, &items, rv, durability))
                    .await
                    .unwrap_or_else(|e| Err(Error::Store(format!("store writer task failed: {e}"))));
            let mut p = self.lock();
            let mut answered = batch;
            if written.is_err() {
                // Writes staged after these were decided on their state, which never reached the disk: they
                // fail with them (the caller may retry on what is stored).
                answered.append(&mut p.queue);
            }
            let failure = written.err();
            for staged in answered {
                if failure.is_some() || p.overlay.get(&staged.key).is_some_and(|(v, _)| *v == staged.rv) {
                    p.overlay.remove(&staged.key);
                }
                let answer = match &failure {
                    None => Ok(self.cache.apply(staged.key, staged.obj, staged.rv)),
                    Some(e) => Err(for_each_caller(e)),
                };
                let _ = staged.done.send(answer);
            }
        }
    }
}

/// The failure of a batch as told to each of its callers: a write the full disk refused stays retryable.
fn for_each_caller(e: &Error) -> Error {
    match e {
        Error::StoreWrite { path, reason, .. } => {
            Error::StoreWrite { path: path.clone(), reason: reason.clone(), source: None }
        }
        other => Error::Store(other.to_string()),
    }
}

/// One transaction: `items` written (or removed when `None`), the kind's resource version set to `rv`.
fn write_batch(
    db: &Arc<Handle>,
    table: &str,
    rv_key: &str,
    items: &[(String, Option<Vec<u8>>)],
    rv: u64,
    durability: Durability,
) -> Result<(), Error> {
    db.write(|db| {
        let mut txn = db.begin_write()?;
        txn.set_durability(durability)?;
        {
            let mut records = txn.open_table(TableDefinition::<&str, &[u8]>::new(table))?;
            for (key, bytes) in items {
                match bytes {
                    Some(b) => {
                        records.insert(key.as_str(), b.as_slice())?;
                    }
                    None => {
                        records.remove(key.as_str())?;
                    }
                }
            }
            let mut meta = txn.open_table(META)?;
            meta.insert(rv_key, rv.to_string().as_str())?;
        }
        txn.commit()?;
        Ok(())
    })
}

impl<K> EmbeddedStore<K>
where
    K: Kind,
{
    fn load(handle: Arc<Handle>, table: String) -> Result<Arc<Self>, Error> {
        let rv_key = format!("resource_version/{table}");
        let db = handle.database()?;
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
        let pending =
            Pending { last_rv: resource_version, overlay: HashMap::new(), queue: Vec::new(), flushing: false };
        Ok(Arc::new(EmbeddedStore {
            shared: Arc::new(Shared {
                db: handle,
                table,
                rv_key,
                cache: Cache::new(objects, resource_version),
                pending: std::sync::Mutex::new(pending),
            }),
        }))
    }

    pub fn len(&self) -> usize {
        self.shared.cache.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Decides a write of `key` on its latest state (`decide`), stages it, and waits until it is on disk and
    /// visible. Its answer: the stored object (`None` when removed), or what `decide` answered.
    async fn write(
        &self,
        key: String,
        decide: impl FnOnce(Option<Arc<K>>) -> Result<Decision<K>, Error>,
    ) -> Result<Option<Arc<K>>, Error> {
        let (done, start) = {
            let mut p = self.shared.lock();
            let current = p.current(&self.shared.cache, &key);
            let (obj, durability) = match decide(current)? {
                Decision::Answer(a) => return Ok(a),
                Decision::Write(obj, durability) => (obj, durability),
            };
            let rv = p.last_rv + 1;
            let obj = obj.map(|mut o| {
                o.meta_mut().resource_version = Some(rv.to_string());
                o
            });
            let bytes = obj.as_ref().map(serde_json::to_vec).transpose().map_err(|e| Error::Store(e.to_string()))?;
            p.last_rv = rv;
            p.overlay.insert(key.clone(), (rv, obj.clone().map(Arc::new)));
            let (tx, rx) = oneshot::channel();
            let durable = !matches!(durability, Durability::None);
            p.queue.push(Staged { key, obj, bytes, rv, durable, done: tx });
            let start = !p.flushing;
            p.flushing = true;
            (rx, start)
        };
        if start {
            // A task of its own: a caller that goes away never leaves the flush half done.
            tokio::spawn(self.shared.clone().flush());
        }
        done.await.map_err(|_| Error::Store("the store's flush ended without an answer".into()))?
    }
}

#[async_trait]
impl<K> ObjectStore<K> for EmbeddedStore<K>
where
    K: Kind,
{
    async fn create(&self, mut obj: K, now: Timestamp) -> Result<Arc<K>, Error> {
        let key = key_of(&obj);
        self.write(key.clone(), |current| {
            if current.is_some() {
                return Err(Error::AlreadyExists(key));
            }
            stamp_new(&mut obj, now);
            Ok(Decision::Write(Some(obj), Durability::Immediate))
        })
        .await?
        .ok_or_else(|| Error::Store("a create stored nothing".into()))
    }

    fn get(&self, key: &str) -> Option<Arc<K>> {
        self.shared.cache.get(key)
    }

    fn list(&self) -> Vec<Arc<K>> {
        self.shared.cache.list_where(&|_| true)
    }

    fn list_where(&self, filter: &dyn Fn(&K) -> bool) -> Vec<Arc<K>> {
        self.shared.cache.list_where(filter)
    }

    async fn write_status(&self, obj: &K) -> Result<Option<Arc<K>>, Error> {
        self.write(key_of(obj), |current| match current {
            None => Ok(Decision::Answer(None)),
            // Only the status moves: everything else stays as stored.
            Some(current) => Ok(Decision::Write(Some(with_status_of(current.as_ref(), obj)?), Durability::None)),
        })
        .await
    }

    async fn replace(&self, obj: &K) -> Result<Option<Arc<K>>, Error> {
        self.write(key_of(obj), |current| match current {
            None => Ok(Decision::Answer(None)),
            Some(current) => Ok(Decision::Write(Some(replaced(current.as_ref(), obj)?), Durability::Immediate)),
        })
        .await
    }

    async fn request_delete(&self, key: &str, now: Timestamp) -> Result<Option<Arc<K>>, Error> {
        self.write(key.to_string(), |current| Ok(mark_deleted(current, now))).await
    }

    async fn request_delete_at(&self, key: &str, version: &str, now: Timestamp) -> Result<Option<Arc<K>>, Error> {
        self.write(key.to_string(), |current| {
            if let Some(current) = &current {
                check_version(current.as_ref(), version)?;
            }
            Ok(mark_deleted(current, now))
        })
        .await
    }

    async fn purge(&self, key: &str) -> Result<(), Error> {
        self.write(key.to_string(), |current| {
            Ok(match current {
                None => Decision::Answer(None),
                Some(_) => Decision::Write(None, Durability::Immediate),
            })
        })
        .await
        .map(|_| ())
    }

    fn watch(&self) -> BoxStream<'static, watcher::Event<K>> {
        self.shared.cache.watch()
    }

    fn changes_of(&self, key: &str) -> BoxStream<'static, ()> {
        self.shared.cache.changes_of(key)
    }

    fn write_failure(&self) -> Option<String> {
        self.shared.db.lock_failure().clone()
    }
}

/// `current` marked for deletion at `now`, durably; as it is when marked already; nothing when gone.
fn mark_deleted<K: Kind>(current: Option<Arc<K>>, now: Timestamp) -> Decision<K> {
    match current {
        None => Decision::Answer(None),
        Some(current) => match marked_for_deletion(current.as_ref(), now) {
            Some(obj) => Decision::Write(Some(obj), Durability::Immediate),
            None => Decision::Answer(Some(current)),
        },
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
    async fn an_empty_or_truncated_file_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("aenv.redb");
        std::fs::write(&path, b"").unwrap();
        let err = Embedded::open(dir.path()).err().expect("a 0-byte store is refused");
        let text = err.to_string();
        assert!(matches!(err, Error::StoreUnreadable { .. }), "{text}");
        assert!(text.contains("0 bytes") && text.contains("aenv.redb.lost"), "{text}");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0, "the file is left as it was");

        std::fs::remove_file(&path).unwrap();
        {
            let db = Embedded::open(dir.path()).unwrap();
            let store = db.store::<EnvInstance>().unwrap();
            for i in 0..200 {
                store.create(instance(&format!("a-{i:06}")), Timestamp::now()).await.unwrap();
            }
        }
        let full = std::fs::read(&path).unwrap();
        for keep in [full.len() / 2, 4096, 100] {
            std::fs::write(&path, &full[..keep]).unwrap();
            let err = Embedded::open(dir.path()).err().unwrap_or_else(|| panic!("a store cut to {keep} bytes opened"));
            assert!(matches!(err, Error::StoreUnreadable { .. }), "{keep}: {err}");
            assert!(err.to_string().contains("aenv.redb.lost"), "{err}");
        }
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
