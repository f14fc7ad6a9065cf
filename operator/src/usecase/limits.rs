//! Who is asking (a [`Principal`], with its own cap), the operator's caps, and the create rate limit.

use std::{num::NonZeroU32, time::Duration};

use aenv_core::duration::parse_go_duration;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter, clock::Clock};

use super::UseCaseError;

/// An authenticated caller: an owner is a tenant.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Principal {
    pub owner: String,
    /// Most live instances this caller may hold; `None` = no cap of its own.
    pub max_instances: Option<usize>,
    /// May delete any tenant's templates.
    pub admin: bool,
}

/// Limits on creates.
#[derive(clap::Args, Clone, Debug)]
pub struct Limits {
    /// Most live instances in all; creates beyond it get 403.
    #[arg(long)]
    pub max_instances: Option<usize>,
    /// Most creates per second (429 with Retry-After beyond it); unset = no limit.
    #[arg(long)]
    pub create_rate: Option<u32>,
    /// Creates allowed in one burst above --create-rate.
    #[arg(long, default_value_t = 50)]
    pub create_burst: u32,
    /// Longest TTL a create may ask for (Go duration; the default is 7 days); longer ones get a 400 naming the
    /// field. --default-ttl must not be longer.
    #[arg(long, default_value = "168h", value_parser = parse_max_ttl, env = "AENV_MAX_TTL")]
    pub max_ttl: MaxTtl,
    /// Stop a paused instance's TTL clock while it is paused through the API (POST /env-instance/{id}/pause): the
    /// expiry moves later by the time it was paused. Off: the TTL keeps running while paused. A pause set with
    /// `kubectl patch` keeps the clock running either way.
    #[arg(long, env = "AENV_PAUSE_EXTENDS_TTL")]
    pub pause_extends_ttl: bool,
    /// Most snapshots one owner holds (templates made by POST /env-instance/{id}/snapshot or /fork, until their
    /// template is deleted); one more is refused with 403 before anything is committed. Without tokens every
    /// snapshot counts as one owner's.
    #[arg(long, default_value_t = DEFAULT_MAX_SNAPSHOTS, env = "AENV_MAX_SNAPSHOTS_PER_OWNER")]
    pub max_snapshots_per_owner: usize,
    /// Most bytes of snapshot images one owner holds (a quantity such as 20Gi): the sizes Docker reports for the
    /// owner's snapshot images (each with its base layers) plus the sandbox's current size (its own layer and its
    /// image's) must stay within it, or the snapshot is refused with 403 before the commit.
    #[arg(long, default_value = "20Gi", value_parser = parse_bytes, env = "AENV_MAX_SNAPSHOT_BYTES_PER_OWNER")]
    pub max_snapshot_bytes_per_owner: ByteLimit,
    /// Most bytes kept of each of a command's output streams (stdout, stderr) in a collected exec answer; past it
    /// the answer says `"truncated": true` (the command runs on; a streamed exec, `?stream=true`, has no cap).
    #[arg(long, default_value_t = DEFAULT_EXEC_OUTPUT, env = "AENV_MAX_EXEC_OUTPUT")]
    pub max_exec_output: usize,
    /// Most heavy requests (exec, file uploads and downloads) one owner has running at once: the token's owner,
    /// without tokens the instance's `owner` (the instance itself when it has none). Beyond it: 429 with
    /// Retry-After. 0 = no bound.
    #[arg(long, default_value_t = 8, env = "AENV_MAX_HEAVY_REQUESTS_PER_OWNER")]
    pub max_heavy_requests_per_owner: usize,
}

/// Snapshots one owner may hold unless told otherwise.
pub const DEFAULT_MAX_SNAPSHOTS: usize = 32;

/// The default of `--max-exec-output` (1 MiB per stream).
pub const DEFAULT_EXEC_OUTPUT: usize = 1024 * 1024;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_instances: None,
            create_rate: None,
            create_burst: 50,
            max_ttl: MaxTtl::default(),
            pause_extends_ttl: false,
            max_snapshots_per_owner: DEFAULT_MAX_SNAPSHOTS,
            max_snapshot_bytes_per_owner: ByteLimit::default(),
            max_exec_output: DEFAULT_EXEC_OUTPUT,
            max_heavy_requests_per_owner: 8,
        }
    }
}

/// A number of bytes, with the text it was given as (for messages).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ByteLimit {
    pub bytes: u64,
    pub text: String,
}

impl Default for ByteLimit {
    fn default() -> Self {
        ByteLimit { bytes: 20 << 30, text: "20Gi".into() }
    }
}

fn parse_bytes(s: &str) -> Result<ByteLimit, String> {
    let bytes = aenv_core::quantity::parse_memory_bytes(s).map_err(|e| e.to_string())?;
    Ok(ByteLimit { bytes, text: s.trim().to_string() })
}

/// Heavy requests (exec, files) each owner has running, within `--max-heavy-requests-per-owner`.
pub(super) type HeavyRequests = crate::slots::Slots<String>;

/// One running heavy request of an owner; counted down when dropped.
pub type HeavyPermit = crate::slots::Slot<String>;

/// Counts one more heavy request of `owner`, unless `max` run already (0: no bound).
pub(super) fn enter_heavy(
    table: &std::sync::Arc<HeavyRequests>,
    owner: String,
    max: usize,
) -> Result<HeavyPermit, UseCaseError> {
    let bound = if max == 0 { usize::MAX } else { max };
    table.take(owner, bound).ok_or_else(|| UseCaseError::Overloaded {
        message: format!(
            "{max} exec and file requests of this owner are running already (--max-heavy-requests-per-owner); wait for one to end"
        ),
        retry_after: Duration::from_secs(1),
    })
}

/// The longest TTL, with the text it was given as (for messages).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaxTtl {
    pub duration: Duration,
    pub text: String,
}

impl Default for MaxTtl {
    fn default() -> Self {
        MaxTtl { duration: Duration::from_secs(7 * 24 * 3600), text: "168h".into() }
    }
}

fn parse_max_ttl(s: &str) -> Result<MaxTtl, String> {
    let duration = parse_go_duration(s).map_err(|e| e.to_string())?;
    if duration.is_zero() {
        return Err(format!("{s:?} must be longer than zero (such as \"168h\")"));
    }
    Ok(MaxTtl { duration, text: s.trim().to_string() })
}

/// The limits with the rate limiter they configure.
pub(super) struct CreateLimits {
    pub(super) limits: Limits,
    limiter: Option<DefaultDirectRateLimiter>,
}

impl CreateLimits {
    pub(super) fn new(limits: Limits) -> Self {
        let limiter = limits.create_rate.and_then(NonZeroU32::new).map(|rate| {
            let burst = NonZeroU32::new(limits.create_burst.max(1)).unwrap_or(rate);
            RateLimiter::direct(Quota::per_second(rate).allow_burst(burst))
        });
        CreateLimits { limits, limiter }
    }

    /// Takes one create from the rate limit; [`UseCaseError::RateLimited`] (with the wait) when none is left.
    pub(super) fn take_create(&self) -> Result<(), UseCaseError> {
        let Some(limiter) = &self.limiter else { return Ok(()) };
        limiter.check().map_err(|not_until| UseCaseError::RateLimited {
            retry_after: not_until.wait_time_from(governor::clock::DefaultClock::default().now()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heavy_requests_are_bounded_per_owner_and_counted_down() {
        let table = std::sync::Arc::new(HeavyRequests::default());
        let a = enter_heavy(&table, "alice".into(), 2).unwrap();
        let _b = enter_heavy(&table, "alice".into(), 2).unwrap();
        match enter_heavy(&table, "alice".into(), 2) {
            Err(UseCaseError::Overloaded { retry_after, .. }) => assert_eq!(retry_after, Duration::from_secs(1)),
            other => panic!("a third request of one owner is refused, got {:?}", other.map(|_| ())),
        }
        assert!(enter_heavy(&table, "bob".into(), 2).is_ok(), "another owner has its own count");
        drop(a);
        assert!(enter_heavy(&table, "alice".into(), 2).is_ok(), "an ended request frees its place");
        assert!(
            (0..100).all(|_| enter_heavy(&table, "carol".into(), 0).map(std::mem::forget).is_ok()),
            "0 is no bound"
        );
    }

    #[test]
    fn rate_limit_with_burst_then_refusal_with_the_wait() {
        let limits = CreateLimits::new(Limits {
            max_instances: Some(10),
            create_rate: Some(1),
            create_burst: 2,
            ..Default::default()
        });
        assert!(limits.take_create().is_ok() && limits.take_create().is_ok(), "a burst of 2");
        match limits.take_create() {
            Err(e @ UseCaseError::RateLimited { retry_after }) => {
                assert_eq!(super::super::whole_seconds(retry_after), 1);
                assert!(e.to_string().ends_with("retry after 1s"), "{e}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
}
