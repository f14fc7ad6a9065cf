//! What to do with one instance, decided without I/O: [`next_step`] reads the object and the clock, [`decide`]
//! reads what the engine reported and says which status to write and when to look again. The acting code
//! ([`super::reconcile`]) only carries these out.

use std::time::Duration;

use aenv_core::{Condition, EngineError, EnvInstance, EnvInstanceStatus, ErrorKind, Observed, Phase};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// The first thing to do with an instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Remove what the engine runs for it, then its record: deletion was asked for, or its TTL ran out.
    Remove { expired: bool },
    /// Its TTL cannot be read (only for objects written around the API): fail it with this message.
    Fail(String),
    /// Ask the engine to make it exist and report what it sees.
    Apply,
    /// It ended (`Failed`, `Terminated`): nothing to run; keep the status and wait for the expiry.
    Keep,
}

/// Deletion first, then expiry (at the instant, not after a sweep), then the phase.
pub fn next_step(inst: &EnvInstance, now: Timestamp) -> Step {
    if inst.is_deleting() {
        return Step::Remove { expired: false };
    }
    match inst.expires_at() {
        Err(e) => Step::Fail(e.to_string()),
        Ok(Some(exp)) if exp <= now => Step::Remove { expired: true },
        Ok(_) if inst.phase().is_terminal() => Step::Keep,
        Ok(_) => Step::Apply,
    }
}

/// The status to write for an instance whose TTL cannot be read.
pub fn failed_status(message: String) -> EnvInstanceStatus {
    EnvInstanceStatus { phase: Phase::Failed, message: Some(message), ..Default::default() }
}

/// What the acting code does after an [`Step::Apply`] (or [`Step::Keep`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// The status the instance should have (written only when it differs from the stored one).
    pub status: EnvInstanceStatus,
    /// The engine failed in a way that may pass: the status says so, and the key is retried with backoff.
    pub retry: Option<EngineError>,
    /// The readiness probe ran and failed: probe again after `requeue`.
    pub probe_failed: bool,
    /// When to look again (`None`: when something changes). The earlier of the expiry instant and the next
    /// probe.
    pub requeue: Option<Duration>,
    /// It reached `Running` now.
    pub became_running: bool,
}

/// How many times a start that fails with [`ErrorKind::StartFailed`] is tried before the instance fails. The
/// backend says why only in a message (a port in use may be freed; a mount onto /proc never works), so instead of
/// reading it the controller gives it this many tries, over the error backoff (about 3 s in all), and then fails the
/// instance with the backend's reason. The count lives in the controller (it restarts from zero with the process,
/// which gives a restarted operator another few tries, no more).
pub const START_ATTEMPTS: u32 = 4;

/// Whether the next apply is [`aenv_core::Engine::apply_afresh`]: after a start that failed. A failed start may
/// leave state in the backend that fails every later start of the same container (a daemon killed mid-start keeps
/// a task for it, and answers "already exists" to each start); a container that never ran can be removed and made
/// again under its name at no cost, so the retries do that instead of starting the same container again. Whether
/// it can pass is still not read from the message: a start that fails for good fails [`START_ATTEMPTS`] times.
pub fn start_afresh(failed_starts: u32) -> bool {
    failed_starts > 0
}

/// Decides from the engine's report (`None` after [`Step::Keep`]) what the status becomes and when to look again.
/// `failed_probes` counts the probes that failed in a row before this one: the next probe waits 100 ms for the
/// first 3 s, then 500 ms, 1 s, … up to 5 s (see [`probe_backoff`]). `failed_starts` counts the starts that failed ([`ErrorKind::StartFailed`]) before this one.
pub fn decide(
    inst: &EnvInstance,
    observed: Option<Result<Observed, EngineError>>,
    now: Timestamp,
    failed_probes: u32,
    failed_starts: u32,
) -> Decision {
    let expires = inst.expires_at().ok().flatten();
    let mut status = inst.status.clone().unwrap_or_default();
    status.expire_time = expires.map(Time);
    let mut retry = None;
    let mut probe_failed = false;
    let mut became_running = false;
    match observed {
        None => {}
        Some(Ok(observed)) => {
            became_running = observed.phase == Phase::Running && status.phase != Phase::Running;
            probe_failed = observed.phase == Phase::Running && observed.ready == Some(false);
            set_ready_condition(&mut status, observed.phase, observed.ready, observed.ready_message);
            status.phase = observed.phase;
            status.ip = observed.ip;
            status.message = observed.message;
            status.ports = observed.ports;
            status.services = observed.services;
            if observed.container_id.is_some() {
                status.container_id = observed.container_id;
            }
        }
        Some(Err(e)) if !e.is_retryable() => {
            status.phase = Phase::Failed;
            status.ip = None;
            status.message = Some(e.to_string());
            set_ready_condition(&mut status, Phase::Failed, None, None);
        }
        Some(Err(e)) if e.kind() == ErrorKind::StartFailed && failed_starts.saturating_add(1) >= START_ATTEMPTS => {
            status.phase = Phase::Failed;
            status.ip = None;
            status.message = Some(format!("{e} (gave up after {START_ATTEMPTS} attempts)"));
            set_ready_condition(&mut status, Phase::Failed, None, None);
        }
        Some(Err(e)) => {
            status.message = Some(format!("waiting for the engine: {e}"));
            retry = Some(e);
        }
    }
    let until_expiry =
        expires.map(|exp| Duration::from_millis((exp.as_millisecond() - now.as_millisecond()).max(0) as u64 + 1));
    let probe_again = probe_failed.then(|| probe_backoff(failed_probes.saturating_add(1)));
    let requeue = match (until_expiry, probe_again) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    Decision { status, retry, probe_failed, requeue, became_running }
}

/// The wait before probe number `n` (from 1) of a run of failures: 100 ms for the first 30 (a server that boots
/// for a few seconds, as AEnvironment images' Python does, is seen ready within ~100 ms of listening, and the
/// answers that wait for readiness end that soon), then 500 ms, 1 s, 2 s, 4 s, 5 s.
pub fn probe_backoff(n: u32) -> Duration {
    const FAST: u32 = 30;
    if n <= FAST {
        return Duration::from_millis(100);
    }
    Duration::from_millis(500u64.saturating_mul(1 << (n - FAST - 1).min(4))).min(Duration::from_secs(5))
}

/// The wait before retry number `n` (from 1) of a key whose reconcile failed: 400 ms, 800 ms, … up to 30 s.
pub fn error_backoff(n: u32) -> Duration {
    Duration::from_millis(200u64.saturating_mul(1 << n.min(8))).min(Duration::from_secs(30))
}

/// The `Ready` condition: `True` once the readiness probe answers (or, without a probe, once it runs).
/// Reasons are stable: `Ready`, `NoProbe`, `ProbeFailing`, `NotRunning`.
fn set_ready_condition(status: &mut EnvInstanceStatus, phase: Phase, ready: Option<bool>, message: Option<String>) {
    let (value, reason, message) = match (phase, ready) {
        (Phase::Running, Some(true)) => ("True", "Ready", String::new()),
        (Phase::Running, None) => ("True", "NoProbe", "the instance has no readiness probe".to_string()),
        (Phase::Running, Some(false)) => ("False", "ProbeFailing", message.unwrap_or_default()),
        (phase, _) => ("False", "NotRunning", format!("the instance is {phase}")),
    };
    let condition = Condition { type_: aenv_core::READY.into(), status: value.into(), reason: reason.into(), message };
    match status.conditions.iter_mut().find(|c| c.type_ == aenv_core::READY) {
        Some(existing) => *existing = condition,
        None => status.conditions.push(condition),
    }
}
