//! Label keys put on every object an engine creates, so that a restarted operator or an orphan sweep can find
//! and judge it without the store.

use std::collections::BTreeMap;

/// Always `aenv-operator`.
pub const MANAGED_BY: &str = "aenv.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "aenv-operator";
/// Which operator owns the object (a stable id kept in its store), so that operators sharing a Docker host
/// never sweep each other's containers.
pub const OPERATOR_ID: &str = "aenv.io/operator-id";
/// The instance id (also the container name).
pub const INSTANCE: &str = "aenv.io/instance";
/// The instance's namespace in the store.
pub const NAMESPACE: &str = "aenv.io/namespace";
/// The environment name: the filter documented for users (`docker ps --filter label=aenv.env_name=NAME`).
pub const ENV_NAME: &str = "aenv.env_name";
pub const ENV_VERSION: &str = "aenv.io/env-version";
pub const OWNER: &str = "aenv.io/owner";
/// Expiry as an RFC 3339 timestamp, so a sweep can judge an object without the store.
pub const EXPIRE_AT: &str = "aenv.io/expire-at";

/// The namespace of instances that name none (and of objects labelled before namespaces were).
pub const DEFAULT_NAMESPACE: &str = "default";

/// The instance an engine's object belongs to, read from its labels through `get`: `(namespace, instance)`, or
/// `None` without the instance label.
pub fn instance_of<'a>(get: impl Fn(&str) -> Option<&'a String>) -> Option<(String, String)> {
    let instance = get(INSTANCE)?.clone();
    let namespace = get(NAMESPACE).cloned().unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
    Some((namespace, instance))
}

/// Keys a request may not set on its own: they carry the operator's bookkeeping.
pub fn is_reserved(key: &str) -> bool {
    key.starts_with("aenv.io/") || key == ENV_NAME
}

/// The bookkeeping labels of one instance.
pub struct InstanceLabels<'a> {
    pub operator_id: &'a str,
    pub namespace: &'a str,
    pub instance: &'a str,
    pub env_name: &'a str,
    pub env_version: &'a str,
    pub owner: Option<&'a str>,
    pub expire_at: Option<String>,
}

impl<'a> InstanceLabels<'a> {
    /// The labels of `inst` as the operator `operator_id` makes it: its identity, template and owner, and its
    /// expiry when it has a TTL (an unreadable TTL is the error).
    pub fn of(inst: &'a crate::EnvInstance, operator_id: &'a str) -> Result<Self, crate::Error> {
        Ok(InstanceLabels {
            operator_id,
            namespace: inst.namespace(),
            instance: inst.metadata.name.as_deref().unwrap_or_default(),
            env_name: &inst.spec.env_name,
            env_version: &inst.spec.env_version,
            owner: inst.spec.owner.as_deref(),
            expire_at: inst.expires_at()?.map(|t| t.to_string()),
        })
    }

    /// User labels first, then the bookkeeping labels (which win on a clash).
    pub fn render(&self, user: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let mut out = user.clone();
        out.insert(MANAGED_BY.into(), MANAGED_BY_VALUE.into());
        out.insert(OPERATOR_ID.into(), self.operator_id.into());
        out.insert(NAMESPACE.into(), self.namespace.into());
        out.insert(INSTANCE.into(), self.instance.into());
        out.insert(ENV_NAME.into(), self.env_name.into());
        out.insert(ENV_VERSION.into(), self.env_version.into());
        if let Some(owner) = self.owner {
            out.insert(OWNER.into(), owner.into());
        }
        if let Some(expire_at) = &self.expire_at {
            out.insert(EXPIRE_AT.into(), expire_at.clone());
        }
        out
    }
}

/// Whether `s` is a DNS label (RFC 1123, as Kubernetes names, Docker volume and network names here are): 1 to 63
/// lowercase letters, digits or '-', starting and ending with a letter or digit.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

#[cfg(test)]
mod tests {
    #[test]
    fn dns_labels() {
        for ok in ["a", "a-b", "0a", &"x".repeat(63)] {
            assert!(super::is_dns_label(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"x".repeat(64), "é"] {
            assert!(!super::is_dns_label(bad), "{bad}");
        }
    }

    use super::*;

    #[test]
    fn bookkeeping_labels_win_over_user_labels() {
        let user = BTreeMap::from([(ENV_NAME.to_string(), "spoof".to_string()), ("team".into(), "rl".into())]);
        let labels = InstanceLabels {
            operator_id: "op1",
            namespace: "default",
            instance: "demo-abc123",
            env_name: "demo",
            env_version: "1.0.0",
            owner: Some("alice"),
            expire_at: None,
        }
        .render(&user);
        assert_eq!(labels[ENV_NAME], "demo");
        assert_eq!(labels["team"], "rl");
        assert_eq!(labels[OWNER], "alice");
        assert!(!labels.contains_key(EXPIRE_AT));
        assert!(is_reserved("aenv.io/instance") && is_reserved(ENV_NAME) && !is_reserved("team"));
    }
}
