//! Who is asking: bearer tokens (a tokens file mapping token → owner and instance cap), checked on every request
//! of the REST API.

use std::{collections::HashMap, path::Path, sync::Arc};

use serde::Deserialize;
use warp::{Filter, Rejection};

use super::ApiError;
use crate::{Error, usecase::Principal};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TokenEntry {
    token: String,
    owner: String,
    #[serde(default)]
    max_instances: Option<usize>,
    #[serde(default)]
    admin: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    tokens: Vec<TokenEntry>,
}

/// Reads a tokens file: `{"tokens": [{"token": "...", "owner": "alice", "maxInstances": 20, "admin": false}]}`
/// (`admin` may delete any tenant's templates).
pub fn load_tokens(path: &Path) -> Result<HashMap<String, Principal>, Error> {
    let text =
        std::fs::read_to_string(path).map_err(|e| Error::Config(format!("--tokens-file {}: {e}", path.display())))?;
    let file: TokensFile = serde_json::from_str(&text).map_err(|e| {
        Error::Config(format!(
            "--tokens-file {}: {e} (expected {{\"tokens\": [{{\"token\": \"...\", \"owner\": \"alice\", \"maxInstances\": 20, \"admin\": false}}]}})",
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
        if tokens
            .insert(
                entry.token,
                Principal { owner: entry.owner, max_instances: entry.max_instances, admin: entry.admin },
            )
            .is_some()
        {
            return Err(Error::Config(format!("--tokens-file {}: a token appears twice", path.display())));
        }
    }
    Ok(tokens)
}

/// Authentication of the REST API: the tokens, or none (auth off).
pub struct Auth {
    tokens: Option<HashMap<String, Principal>>,
}

impl Auth {
    pub fn new(tokens: Option<HashMap<String, Principal>>) -> Arc<Self> {
        Arc::new(Auth { tokens })
    }

    /// The caller behind an `Authorization` header (`None` when auth is off).
    pub fn authenticate(&self, header: Option<&str>) -> Result<Option<Principal>, ApiError> {
        let Some(tokens) = &self.tokens else { return Ok(None) };
        let unauthorized = |m: &str| ApiError::new(401, m);
        let header = header.ok_or_else(|| unauthorized("Missing Authorization header"))?;
        let (scheme, token) = header
            .split_once(' ')
            .filter(|(s, _)| s.eq_ignore_ascii_case("bearer"))
            .ok_or_else(|| unauthorized("Authorization header format should be Bearer <token>"))?;
        let _ = scheme;
        tokens.get(token.trim()).cloned().map(Some).ok_or_else(|| unauthorized("Invalid token"))
    }
}

/// Rejection carrying an API error, turned into the envelope by the gateway's recover.
#[derive(Debug)]
pub struct Refused(pub ApiError);

impl warp::reject::Reject for Refused {}

/// Extracts the caller; rejects with 401 when auth is on and the token is missing or unknown.
pub fn caller(auth: Arc<Auth>) -> impl Filter<Extract = (Option<Principal>,), Error = Rejection> + Clone {
    warp::header::optional::<String>("authorization").and_then(move |h: Option<String>| {
        let auth = auth.clone();
        async move { auth.authenticate(h.as_deref()).map_err(|e| warp::reject::custom(Refused(e))) }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Arc<Auth> {
        let tokens = HashMap::from([(
            "0123456789abcdef".to_string(),
            Principal { owner: "alice".into(), max_instances: Some(2), admin: false },
        )]);
        Auth::new(Some(tokens))
    }

    #[test]
    fn bearer_tokens() {
        let g = auth();
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
        let open = Auth::new(None);
        assert_eq!(open.authenticate(None).unwrap(), None);
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
