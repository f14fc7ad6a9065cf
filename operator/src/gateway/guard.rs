//! Who may do what: bearer tokens (a tokens file mapping token → owner and instance cap), a global cap on live
//! instances, and a rate limit on creates.

use std::{collections::HashMap, num::NonZeroU32, path::Path, sync::Arc, time::Duration};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter, clock::Clock};
use serde::Deserialize;
use warp::{Filter, Rejection, http::HeaderValue};

use super::ApiError;
use crate::Error;

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub owner: String,
    /// Most live instances this caller may hold; `None` = no cap of its own.
    pub max_instances: Option<usize>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TokenEntry {
    token: String,
    owner: String,
    #[serde(default)]
    max_instances: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    tokens: Vec<TokenEntry>,
}

/// Reads a tokens file: `{"tokens": [{"token": "...", "owner": "alice", "maxInstances": 20}]}`.
pub fn load_tokens(path: &Path) -> Result<HashMap<String, Principal>, Error> {
    let text =
        std::fs::read_to_string(path).map_err(|e| Error::Config(format!("--tokens-file {}: {e}", path.display())))?;
    let file: TokensFile = serde_json::from_str(&text).map_err(|e| {
        Error::Config(format!(
            "--tokens-file {}: {e} (expected {{\"tokens\": [{{\"token\": \"...\", \"owner\": \"alice\", \"maxInstances\": 20}}]}})",
            path.display()
        ))
    })?;
    let mut tokens = HashMap::new();
    for entry in file.tokens {
        if entry.token.len() < 16 {
            return Err(Error::Config(format!(
                "--tokens-file {}: the token of {} is shorter than 16 characters",
                path.display(),
                entry.owner
            )));
        }
        if tokens.insert(entry.token, Principal { owner: entry.owner, max_instances: entry.max_instances }).is_some() {
            return Err(Error::Config(format!("--tokens-file {}: a token appears twice", path.display())));
        }
    }
    Ok(tokens)
}

/// Limits on creates.
#[derive(Clone, Debug, Default)]
pub struct Limits {
    /// Most live instances in all; `None` = no cap.
    pub max_instances: Option<usize>,
    /// Creates per second, with bursts of `create_burst`; `None` = no limit.
    pub create_rate: Option<u32>,
    pub create_burst: u32,
}

/// Authentication and limits.
pub struct Guard {
    tokens: Option<HashMap<String, Principal>>,
    pub limits: Limits,
    limiter: Option<DefaultDirectRateLimiter>,
}

impl Guard {
    pub fn new(tokens: Option<HashMap<String, Principal>>, limits: Limits) -> Arc<Self> {
        let limiter = limits.create_rate.and_then(NonZeroU32::new).map(|rate| {
            let burst = NonZeroU32::new(limits.create_burst.max(1)).unwrap_or(rate);
            RateLimiter::direct(Quota::per_second(rate).allow_burst(burst))
        });
        Arc::new(Guard { tokens, limits, limiter })
    }

    /// Whether requests must carry a token.
    pub fn auth_enabled(&self) -> bool {
        self.tokens.is_some()
    }

    /// The caller behind an `Authorization` header (`None` when auth is off).
    pub fn authenticate(&self, header: Option<&str>) -> Result<Option<Principal>, ApiError> {
        let Some(tokens) = &self.tokens else { return Ok(None) };
        let unauthorized = |m: &str| ApiError { status: 401, message: m.into() };
        let header = header.ok_or_else(|| unauthorized("Missing Authorization header"))?;
        let (scheme, token) = header
            .split_once(' ')
            .filter(|(s, _)| s.eq_ignore_ascii_case("bearer"))
            .ok_or_else(|| unauthorized("Authorization header format should be Bearer <token>"))?;
        let _ = scheme;
        tokens.get(token.trim()).cloned().map(Some).ok_or_else(|| unauthorized("Invalid token"))
    }

    /// Takes one create from the rate limit; 429 (with the wait) when there is none left.
    pub fn take_create(&self) -> Result<(), ApiError> {
        let Some(limiter) = &self.limiter else { return Ok(()) };
        limiter.check().map_err(|not_until| {
            let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
            ApiError::too_many(wait)
        })
    }
}

impl ApiError {
    /// 429, with how long to wait (sent as `Retry-After`).
    pub fn too_many(wait: Duration) -> Self {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        ApiError {
            status: 429,
            message: format!("too many creates: the operator accepts a limited number per second; retry after {secs}s"),
        }
    }
}

/// Rejection carrying an API error, turned into the envelope by the gateway's recover.
#[derive(Debug)]
pub struct Refused(pub ApiError);

impl warp::reject::Reject for Refused {}

/// Extracts the caller; rejects with 401 when auth is on and the token is missing or unknown.
pub fn caller(guard: Arc<Guard>) -> impl Filter<Extract = (Option<Principal>,), Error = Rejection> + Clone {
    warp::header::optional::<String>("authorization").and_then(move |h: Option<String>| {
        let guard = guard.clone();
        async move { guard.authenticate(h.as_deref()).map_err(|e| warp::reject::custom(Refused(e))) }
    })
}

/// The `Retry-After` value for a 429 message.
pub fn retry_after(message: &str) -> Option<HeaderValue> {
    let secs = message.split("retry after ").nth(1)?.trim_end_matches('s');
    HeaderValue::from_str(secs).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> Arc<Guard> {
        let tokens = HashMap::from([(
            "0123456789abcdef".to_string(),
            Principal { owner: "alice".into(), max_instances: Some(2) },
        )]);
        Guard::new(Some(tokens), Limits { max_instances: Some(10), create_rate: Some(1), create_burst: 2 })
    }

    #[test]
    fn bearer_tokens() {
        let g = guard();
        assert_eq!(g.authenticate(Some("Bearer 0123456789abcdef")).unwrap().unwrap().owner, "alice");
        assert_eq!(g.authenticate(Some("bearer 0123456789abcdef")).unwrap().unwrap().max_instances, Some(2));
        for (header, msg) in [
            (None, "Missing Authorization header"),
            (Some("0123456789abcdef"), "should be Bearer"),
            (Some("Basic 0123456789abcdef"), "should be Bearer"),
            (Some("Bearer nope"), "Invalid token"),
        ] {
            let e = g.authenticate(header).unwrap_err();
            assert_eq!(e.status, 401);
            assert!(e.message.contains(msg), "{header:?}: {}", e.message);
        }
        let open = Guard::new(None, Limits::default());
        assert_eq!(open.authenticate(None).unwrap(), None);
    }

    #[test]
    fn rate_limit_with_burst_then_429_with_retry_after() {
        let g = guard();
        assert!(g.take_create().is_ok() && g.take_create().is_ok(), "a burst of 2");
        let e = g.take_create().unwrap_err();
        assert_eq!(e.status, 429);
        assert_eq!(retry_after(&e.message).unwrap(), "1");
    }

    #[test]
    fn tokens_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokens.json");
        std::fs::write(&p, r#"{"tokens": [{"token": "0123456789abcdef", "owner": "bob", "maxInstances": 3}]}"#)
            .unwrap();
        assert_eq!(load_tokens(&p).unwrap()["0123456789abcdef"].owner, "bob");
        std::fs::write(&p, r#"{"tokens": [{"token": "short", "owner": "bob"}]}"#).unwrap();
        assert!(load_tokens(&p).unwrap_err().to_string().contains("shorter than 16"));
        std::fs::write(&p, r#"{"tokens": [{"tokn": "x"}]}"#).unwrap();
        assert!(load_tokens(&p).unwrap_err().to_string().contains("expected"));
    }
}
