//! Who is asking (a [`Principal`], with its own cap), the operator's caps, and the create rate limit.

use std::{num::NonZeroU32, time::Duration};

use aenv_core::duration::parse_go_duration;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter, clock::Clock};

use super::ServiceError;

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
#[derive(clap::Args, Clone, Debug, Default)]
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

    /// Takes one create from the rate limit; [`ServiceError::RateLimited`] (with the wait) when none is left.
    pub(super) fn take_create(&self) -> Result<(), ServiceError> {
        let Some(limiter) = &self.limiter else { return Ok(()) };
        limiter.check().map_err(|not_until| ServiceError::RateLimited {
            retry_after: not_until.wait_time_from(governor::clock::DefaultClock::default().now()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            Err(e @ ServiceError::RateLimited { retry_after }) => {
                assert_eq!(super::super::whole_seconds(retry_after), 1);
                assert!(e.to_string().ends_with("retry after 1s"), "{e}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
}
