//! What each pool was asked for lately: the one piece of state the use-cases (a create counts as demand, a hit or a
//! miss) and the pool controller (which sizes a pool by the demand and carries the counts into its status) share
//! in memory. It sits below both, so that neither layer reaches into the other.

use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
    time::{Duration, Instant},
};

/// How long a create counts as demand when the pool controller sizes a pool, unless configured otherwise
/// (`--pool-demand-window`).
pub const DEMAND_WINDOW: Duration = Duration::from_secs(60);

/// What each pool was asked for lately, kept in memory between the API (which counts) and the pool controller
/// (which sizes the pool by it and carries the counts into the pool's status).
pub struct Demand {
    pools: Mutex<HashMap<String, Counts>>,
    window: Duration,
}

impl Default for Demand {
    fn default() -> Self {
        Demand::new(DEMAND_WINDOW)
    }
}

#[derive(Default)]
struct Counts {
    /// When creates that the pool could serve came, within the window.
    recent: VecDeque<Instant>,
    /// Hits and misses not yet written into the pool's status.
    hits: u64,
    misses: u64,
}

impl Demand {
    /// Counts creates as demand for `window` after they came.
    pub fn new(window: Duration) -> Self {
        Demand { pools: Mutex::default(), window }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Counts>> {
        self.pools.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one create the pool at `key` could serve: a hit when it did.
    pub fn record(&self, key: &str, hit: bool, now: Instant) {
        let mut pools = self.lock();
        let counts = pools.entry(key.to_string()).or_default();
        counts.recent.push_back(now);
        while counts.recent.front().is_some_and(|t| now.duration_since(*t) > self.window) {
            counts.recent.pop_front();
        }
        if hit {
            counts.hits += 1;
        } else {
            counts.misses += 1;
        }
    }

    /// Creates the pool at `key` could serve within the window before `now`.
    pub fn recent(&self, key: &str, now: Instant) -> u32 {
        let pools = self.lock();
        let Some(counts) = pools.get(key) else { return 0 };
        let n = counts.recent.iter().filter(|t| now.duration_since(**t) <= self.window).count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// The hits and misses not yet in the pool's status, taken out (give them back if the write fails).
    pub fn take_counts(&self, key: &str) -> (u64, u64) {
        let mut pools = self.lock();
        let Some(counts) = pools.get_mut(key) else { return (0, 0) };
        (std::mem::take(&mut counts.hits), std::mem::take(&mut counts.misses))
    }

    /// Puts back counts [`Demand::take_counts`] took, when they could not be written.
    pub fn give_back(&self, key: &str, hits: u64, misses: u64) {
        let mut pools = self.lock();
        let counts = pools.entry(key.to_string()).or_default();
        counts.hits += hits;
        counts.misses += misses;
    }

    /// Forgets a pool that is gone.
    pub fn forget(&self, key: &str) {
        self.lock().remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demand_counts_within_the_window_and_hands_counts_over_once() {
        let d = Demand::default();
        let t0 = Instant::now();
        d.record("ns/p", true, t0);
        d.record("ns/p", false, t0 + Duration::from_secs(30));
        assert_eq!(d.recent("ns/p", t0 + Duration::from_secs(30)), 2);
        assert_eq!(d.recent("ns/p", t0 + Duration::from_secs(61)), 1, "the first left the window");
        assert_eq!(d.take_counts("ns/p"), (1, 1));
        assert_eq!(d.take_counts("ns/p"), (0, 0), "taken once");
        d.give_back("ns/p", 1, 0);
        assert_eq!(d.take_counts("ns/p"), (1, 0));
        assert_eq!(d.recent("other", t0), 0);
    }
}
