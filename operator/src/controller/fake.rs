//! A recording [`Engine`] for the controller's tests: every call is recorded, `apply` answers from a script (and
//! otherwise reports the instance running at a fixed IP), events are injected by the test.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

use aenv_core::{
    Engine, EngineError, EngineEvent, EnvInstance, ManagedObject, Observed, OwnedObject, Phase, SnapshotImage,
};
use async_trait::async_trait;
use futures::{StreamExt, stream::BoxStream};
use tokio::sync::mpsc;

/// One call the engine received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    /// `apply` of an instance, with the container id its status recorded at the time.
    Apply {
        instance: String,
        container_id: Option<String>,
    },
    /// `apply_afresh` (after a failed start), with the container id its status recorded at the time.
    ApplyAfresh {
        instance: String,
        container_id: Option<String>,
    },
    Delete(String),
    DeleteOwned(String),
    ListOwned,
}

/// The IP a default `apply` reports.
pub const IP: &str = "10.88.0.7";

#[derive(Default)]
pub struct FakeEngine {
    calls: Mutex<Vec<Call>>,
    applies: Mutex<VecDeque<Result<Observed, EngineError>>>,
    deletes: Mutex<VecDeque<Result<(), EngineError>>>,
    owned: Mutex<Vec<OwnedObject>>,
    events: Mutex<Option<mpsc::Receiver<EngineEvent>>>,
    events_tx: Mutex<Option<mpsc::Sender<EngineEvent>>>,
    /// Snapshot images the backend holds.
    snapshots: Mutex<Vec<SnapshotImage>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a running container reports: Running at [`IP`], container `c-<instance>`, no probe.
pub fn running(instance: &str) -> Observed {
    Observed {
        phase: Phase::Running,
        ip: Some(IP.into()),
        container_id: Some(format!("c-{instance}")),
        ..Default::default()
    }
}

impl FakeEngine {
    pub fn new() -> Arc<Self> {
        let (tx, rx) = mpsc::channel(64);
        let engine = FakeEngine::default();
        *lock(&engine.events) = Some(rx);
        *lock(&engine.events_tx) = Some(tx);
        Arc::new(engine)
    }

    /// The next `apply` answers `result` (in order of scripting).
    pub fn script_apply(&self, result: Result<Observed, EngineError>) {
        lock(&self.applies).push_back(result);
    }

    /// The next `delete` answers `result`.
    pub fn script_delete(&self, result: Result<(), EngineError>) {
        lock(&self.deletes).push_back(result);
    }

    /// What `list_owned` reports from now on.
    pub fn set_snapshots(&self, images: Vec<SnapshotImage>) {
        *lock(&self.snapshots) = images;
    }

    pub fn snapshots(&self) -> Vec<SnapshotImage> {
        lock(&self.snapshots).clone()
    }

    pub fn set_owned(&self, owned: Vec<OwnedObject>) {
        *lock(&self.owned) = owned;
    }

    /// Sends an event as the backend would.
    pub async fn emit(&self, event: EngineEvent) {
        let tx = lock(&self.events_tx).clone();
        if let Some(tx) = tx {
            let _ = tx.send(event).await;
        }
    }

    pub fn calls(&self) -> Vec<Call> {
        lock(&self.calls).clone()
    }

    /// How many `apply` calls `instance` got.
    pub fn applies_of(&self, instance: &str) -> usize {
        self.calls().iter().filter(|c| matches!(c, Call::Apply { instance: i, .. } if i == instance)).count()
    }

    fn record(&self, call: Call) {
        lock(&self.calls).push(call);
    }
}

fn name(inst: &EnvInstance) -> String {
    inst.metadata.name.clone().unwrap_or_default()
}

#[async_trait]
impl Engine for FakeEngine {
    fn name(&self) -> &'static str {
        "fake"
    }

    async fn apply(&self, inst: &EnvInstance) -> Result<Observed, EngineError> {
        let instance = name(inst);
        let container_id = inst.status.as_ref().and_then(|s| s.container_id.clone());
        self.record(Call::Apply { instance: instance.clone(), container_id });
        lock(&self.applies).pop_front().unwrap_or_else(|| Ok(running(&instance)))
    }

    async fn apply_afresh(&self, inst: &EnvInstance) -> Result<Observed, EngineError> {
        let instance = name(inst);
        let container_id = inst.status.as_ref().and_then(|s| s.container_id.clone());
        self.record(Call::ApplyAfresh { instance: instance.clone(), container_id });
        lock(&self.applies).pop_front().unwrap_or_else(|| Ok(running(&instance)))
    }

    async fn delete(&self, inst: &EnvInstance) -> Result<(), EngineError> {
        self.record(Call::Delete(name(inst)));
        lock(&self.deletes).pop_front().unwrap_or(Ok(()))
    }

    async fn delete_owned(&self, object: &OwnedObject) -> Result<(), EngineError> {
        self.record(Call::DeleteOwned(object.id.clone()));
        Ok(())
    }

    async fn list_owned(&self) -> Result<Vec<OwnedObject>, EngineError> {
        self.record(Call::ListOwned);
        Ok(lock(&self.owned).clone())
    }

    async fn list_managed(&self) -> Result<Vec<ManagedObject>, EngineError> {
        Ok(Vec::new())
    }

    fn events(&self) -> BoxStream<'static, EngineEvent> {
        match lock(&self.events).take() {
            Some(rx) => tokio_stream::wrappers::ReceiverStream::new(rx).boxed(),
            None => futures::stream::pending().boxed(),
        }
    }

    async fn list_snapshots(&self) -> Result<Vec<SnapshotImage>, EngineError> {
        Ok(self.snapshots())
    }

    async fn remove_snapshot(&self, reference: &str) -> Result<(), EngineError> {
        lock(&self.snapshots).retain(|i| i.reference != reference);
        Ok(())
    }

    async fn ping(&self) -> Result<(), EngineError> {
        Ok(())
    }
}
