//! Prometheus metrics (OpenMetrics text at `/metrics`).

use std::sync::Mutex;

use aenv_core::{MemberState, Phase};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use aenv_core::EnvInstance;

use crate::store::ObjectStore;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    pub op: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    /// `api` or `proxy`.
    pub listener: String,
    /// `listener_full` or `address_full`.
    pub reason: String,
}

/// A claim's result: `hit` (served from a pool), `miss` (a pool could serve it but had nothing ready), `unfit`
/// (pools of the template exist, but the create asked for what their sandboxes do not run).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClaimLabels {
    pub result: String,
}

impl ClaimLabels {
    pub fn new(result: &str) -> Self {
        ClaimLabels { result: result.into() }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub pool: String,
}

/// Every metric the operator exports.
pub struct Metrics {
    registry: Mutex<Registry>,
    /// Instances accepted through the API.
    pub created: Counter,
    pub reconciles: Counter,
    pub reconcile_errors: Family<ReasonLabels, Counter>,
    /// Live instances by phase, counted from the store at scrape time.
    pub instances: Family<PhaseLabels, Gauge>,
    /// Seconds from acceptance to `Running`.
    pub create_to_running: Histogram,
    pub expired: Counter,
    pub orphans_removed: Counter,
    /// Objects of other operators removed because their expiry label passed (a lost store's sandboxes).
    pub expired_leftovers_removed: Counter,
    /// Processes of commands (exec) killed after a restart because they outlived their timeout while the operator
    /// was down.
    pub overdue_commands_killed: Counter,
    /// Seconds per engine call, by operation (apply, delete, list).
    pub engine_calls: Family<OpLabels, Histogram, fn() -> Histogram>,
    /// Connections closed at once because a listener or a client address held its limit.
    pub http_refused: Family<ListenerLabels, Counter>,
    /// Creates that pools could have served, by result.
    pub claims: Family<ClaimLabels, Counter>,
    /// Seconds a claim took (the store's compare-and-swap included).
    pub claim_seconds: Histogram,
    /// Sandboxes waiting in each pool that passed their readiness probe, counted at scrape time.
    pub pool_ready: Family<PoolLabels, Gauge>,
    /// Sandboxes waiting in each pool that are not ready yet, counted at scrape time.
    pub pool_starting: Family<PoolLabels, Gauge>,
}

fn engine_call_histogram() -> Histogram {
    Histogram::new([0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
}

impl Default for Metrics {
    fn default() -> Self {
        let m = Metrics {
            registry: Mutex::new(Registry::with_prefix("aenv")),
            created: Counter::default(),
            reconciles: Counter::default(),
            reconcile_errors: Family::default(),
            instances: Family::default(),
            create_to_running: Histogram::new([0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0]),
            expired: Counter::default(),
            orphans_removed: Counter::default(),
            expired_leftovers_removed: Counter::default(),
            overdue_commands_killed: Counter::default(),
            engine_calls: Family::new_with_constructor(engine_call_histogram),
            http_refused: Family::default(),
            claims: Family::default(),
            claim_seconds: engine_call_histogram(),
            pool_ready: Family::default(),
            pool_starting: Family::default(),
        };
        {
            let mut r = m.registry.lock().unwrap_or_else(|p| p.into_inner());
            r.register("instances_created", "Instances accepted through the API", m.created.clone());
            r.register("reconciles", "Reconcile runs", m.reconciles.clone());
            r.register("reconcile_errors", "Reconcile errors by reason", m.reconcile_errors.clone());
            r.register("instances", "Live instances by phase", m.instances.clone());
            r.register("create_to_running_seconds", "Time from acceptance to Running", m.create_to_running.clone());
            r.register("instances_expired", "Instances removed at the end of their TTL", m.expired.clone());
            r.register("engine_call_seconds", "Engine call latency by operation", m.engine_calls.clone());
            r.register("pool_claims", "Creates that pools could have served, by result", m.claims.clone());
            r.register("pool_claim_seconds", "Time to claim a pooled sandbox", m.claim_seconds.clone());
            r.register("pool_ready", "Pooled sandboxes ready to be claimed", m.pool_ready.clone());
            r.register("pool_starting", "Pooled sandboxes not ready yet", m.pool_starting.clone());
            r.register(
                "expired_leftovers_removed",
                "Objects of other operators removed because their aenv.io/expire-at passed more than --orphan-grace ago",
                m.expired_leftovers_removed.clone(),
            );
            r.register(
                "overdue_commands_killed",
                "Processes of exec commands killed after a restart because they outlived their timeout while the operator was down",
                m.overdue_commands_killed.clone(),
            );
            r.register(
                "http_connections_refused",
                "Connections closed at once because the listener or the client address held its limit",
                m.http_refused.clone(),
            );
            r.register(
                "orphans_removed",
                "Labelled containers removed because no instance owns them",
                m.orphans_removed.clone(),
            );
        }
        m
    }
}

impl Metrics {
    /// Times an engine call.
    pub async fn time<T>(&self, op: &str, call: impl std::future::Future<Output = T>) -> T {
        let started = std::time::Instant::now();
        let out = call.await;
        self.engine_calls.get_or_create(&OpLabels { op: op.into() }).observe(started.elapsed().as_secs_f64());
        out
    }

    /// The OpenMetrics text, with the phase gauges brought up to date first.
    pub fn render(&self, store: &dyn ObjectStore<EnvInstance>) -> String {
        let mut counts = [0i64; Phase::ALL.len()];
        let mut pools: std::collections::BTreeMap<String, (i64, i64)> = Default::default();
        for inst in store.list() {
            if let Some(i) = Phase::ALL.iter().position(|p| *p == inst.phase()) {
                counts[i] += 1;
            }
            if let Some(pool) = inst.pool() {
                let (ready, starting) = pools.entry(pool.to_string()).or_default();
                match inst.member_state() {
                    MemberState::Ready => *ready += 1,
                    MemberState::Starting => *starting += 1,
                    MemberState::Failed => {}
                }
            }
        }
        // Only pools with waiting sandboxes have series: a pool that emptied or went is not left at its last count.
        for gauge in [&self.pool_ready, &self.pool_starting] {
            gauge.clear();
        }
        for (pool, (ready, starting)) in pools {
            self.pool_ready.get_or_create(&PoolLabels { pool: pool.clone() }).set(ready);
            self.pool_starting.get_or_create(&PoolLabels { pool }).set(starting);
        }
        for (phase, count) in Phase::ALL.iter().zip(counts) {
            self.instances.get_or_create(&PhaseLabels { phase: phase.as_str().into() }).set(count);
        }
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &registry);
        out
    }
}
