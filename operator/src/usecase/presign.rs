//! Presigned URLs: a token on the data-plane proxy's path that reaches one port of one sandbox, with no other
//! credential, until it expires. The token carries what it grants (instance, its uid, port, expiry) and an
//! HMAC-SHA256 over that, under a key the operator keeps in its store: URLs survive a restart, another operator's
//! do not verify, and a changed byte is refused. The uid binds the grant to this sandbox: a later instance that
//! reuses the id is not reached. Checking the sandbox itself (still there, running) is the proxy's part.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use jiff::Timestamp;
use sha2::Sha256;
use thiserror::Error;

type HmacSha256 = Hmac<Sha256>;

/// Where presigned URLs start on the proxy: `/presigned/<token>/<path in the sandbox>`.
pub const PATH_PREFIX: &str = "/presigned/";

/// The longest a presigned URL lives.
pub const MAX_MINUTES: i64 = 24 * 60;

/// What a presigned URL grants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The instance's id (its name).
    pub instance: String,
    /// The instance's uid when the URL was made.
    pub uid: String,
    pub port: u16,
    /// Seconds since the epoch after which the URL is refused.
    pub expires: i64,
}

/// Why a token is refused. The proxy answers each with 403 and reaches nothing.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum Refused {
    #[error("the presigned URL is malformed")]
    Malformed,
    #[error("the presigned URL's signature does not verify (altered, or made by another operator)")]
    BadSignature,
    #[error("the presigned URL expired; ask for a new one (POST /env-instance/{{id}}/presign-url)")]
    Expired,
}

/// Signs and verifies grants under one key.
pub struct Signer {
    key: Vec<u8>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer { key: <redacted> }")
    }
}

impl Signer {
    /// A signer under `key` (32 random bytes kept in the store).
    pub fn new(key: Vec<u8>) -> Self {
        Signer { key }
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC takes a key of any length: this cannot fail.
        HmacSha256::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"))
    }

    /// The token for `grant`: `<payload>.<signature>`, both URL-safe base64.
    pub fn sign(&self, grant: &Grant) -> String {
        let payload = format!("{}:{}:{}:{}", grant.instance, grant.uid, grant.port, grant.expires);
        let mut mac = self.mac();
        mac.update(payload.as_bytes());
        format!("{}.{}", URL_SAFE_NO_PAD.encode(payload), URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
    }

    /// The grant of `token` when its signature verifies and it has not expired at `now`.
    pub fn verify(&self, token: &str, now: Timestamp) -> Result<Grant, Refused> {
        let (payload, signature) = token.split_once('.').ok_or(Refused::Malformed)?;
        let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| Refused::Malformed)?;
        let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| Refused::Malformed)?;
        let mut mac = self.mac();
        mac.update(&payload);
        // Constant-time comparison.
        mac.verify_slice(&signature).map_err(|_| Refused::BadSignature)?;
        let payload = String::from_utf8(payload).map_err(|_| Refused::Malformed)?;
        let mut parts = payload.splitn(4, ':');
        let mut next = || parts.next().ok_or(Refused::Malformed);
        let (instance, uid, port, expires) = (next()?, next()?, next()?, next()?);
        let grant = Grant {
            instance: instance.to_string(),
            uid: uid.to_string(),
            port: port.parse().map_err(|_| Refused::Malformed)?,
            expires: expires.parse().map_err(|_| Refused::Malformed)?,
        };
        if now.as_second() >= grant.expires {
            return Err(Refused::Expired);
        }
        Ok(grant)
    }
}

/// A new random key for [`Signer`].
pub fn new_key() -> Vec<u8> {
    use rand::RngCore;
    let mut key = vec![0u8; 32];
    rand::rng().fill_bytes(&mut key);
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(expires: i64) -> Grant {
        Grant { instance: "env-abc123".into(), uid: "u-1".into(), port: 8081, expires }
    }

    #[test]
    fn a_token_verifies_until_it_expires_and_only_under_its_key() {
        let signer = Signer::new(new_key());
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let token = signer.sign(&grant(1_800_000_060));
        assert_eq!(signer.verify(&token, now), Ok(grant(1_800_000_060)));
        assert_eq!(signer.verify(&token, Timestamp::from_second(1_800_000_060).unwrap()), Err(Refused::Expired));
        assert_eq!(Signer::new(new_key()).verify(&token, now), Err(Refused::BadSignature), "another operator's key");
    }

    #[test]
    fn a_token_altered_anywhere_is_refused() {
        let signer = Signer::new(new_key());
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let token = signer.sign(&grant(1_800_000_060));
        // Another port or a later expiry in the payload, signed by nobody.
        let (_, sig) = token.split_once('.').unwrap();
        for forged in
            ["env-abc123:u-1:22:1800000060", "env-abc123:u-1:8081:1900000000", "other-xyz:u-1:8081:1800000060"]
        {
            let t = format!("{}.{sig}", URL_SAFE_NO_PAD.encode(forged));
            assert_eq!(signer.verify(&t, now), Err(Refused::BadSignature), "{forged}");
        }
        for bad in ["", ".", "x", "a.b.c", &format!("{}.", token.split_once('.').unwrap().0)] {
            assert!(signer.verify(bad, now).is_err(), "{bad:?}");
        }
        // A flipped character of the signature.
        let mut chars: Vec<char> = token.chars().collect();
        let last = chars.len() - 1;
        chars[last] = if chars[last] == 'A' { 'B' } else { 'A' };
        assert!(signer.verify(&chars.into_iter().collect::<String>(), now).is_err());
    }
}
