//! Read-modify-write against a store whose controllers write the status of the same object meanwhile. Each status
//! write moves the resource version, so a spec write made right after a read can lose the compare-and-swap; a
//! controller on a busy object writes often enough to win a handful of immediate retries in a row. Waiting a short,
//! growing, jittered pause between attempts lets the writer through.

use std::time::Duration;

use rand::Rng;

/// Attempts at one compare-and-swap write: the first at once, the next after pauses of about 1, 2, 4 … 64 ms.
pub(super) struct Attempts {
    made: u32,
}

const MAX_ATTEMPTS: u32 = 12;
const MAX_PAUSE_MS: u64 = 64;

impl Attempts {
    pub(super) fn new() -> Self {
        Attempts { made: 0 }
    }

    /// Whether another attempt may be made; waits first, but before the first attempt.
    pub(super) async fn next(&mut self) -> bool {
        if self.made >= MAX_ATTEMPTS {
            return false;
        }
        if self.made > 0 {
            let base = (1u64 << (self.made - 1).min(6)).min(MAX_PAUSE_MS);
            let jitter = rand::rng().random_range(0..=base);
            tokio::time::sleep(Duration::from_millis(base + jitter)).await;
        }
        self.made += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn attempts_are_bounded_and_pause_between() {
        let mut a = Attempts::new();
        let start = tokio::time::Instant::now();
        assert!(a.next().await);
        assert_eq!(start.elapsed(), Duration::ZERO, "the first attempt is made at once");
        let mut n = 1;
        while a.next().await {
            n += 1;
        }
        assert_eq!(n, MAX_ATTEMPTS);
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(1 + 2 + 4 + 8 + 16 + 32 + 64 * 5), "{waited:?}");
        assert!(waited <= Duration::from_millis(2 * (1 + 2 + 4 + 8 + 16 + 32 + 64 * 5)), "{waited:?}");
    }
}
