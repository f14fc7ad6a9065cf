//! Warm pools: the `EnvPool` custom resource (keep N sandboxes of a template ready) and the rules, free of I/O,
//! that say which instances belong to a pool, which of them may serve a create, and how large the pool should be.
//!
//! A pooled sandbox is an ordinary `EnvInstance`, created from the template and labelled `aenv.io/pool=NAME`
//! while it waits. A claim rewrites that instance in the store (one compare-and-swap): the pool label goes,
//! `aenv.io/claimed-from` and `aenv.io/claimed-at` come, and the request's TTL, owner and labels replace the
//! member's. The instance's id, its container and everything that finds a container by instance stay as they
//! were, so adoption, sweeps, logs, the proxy and deletion need nothing of their own for claimed sandboxes.

use std::collections::BTreeMap;

use jiff::Timestamp;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{EnvInstance, EnvInstanceSpec};

/// Label of an instance waiting in a pool: the pool's name. Removed by the claim.
pub const POOL_LABEL: &str = "aenv.io/pool";
/// Annotation of a claimed instance: the pool it came from.
pub const CLAIMED_FROM: &str = "aenv.io/claimed-from";
/// Annotation of a claimed instance: when it was claimed (RFC 3339); the instance's `created_at` for the API.
pub const CLAIMED_AT: &str = "aenv.io/claimed-at";

/// The variable the AEnvironment SDK adds to every create: the environment's name.
pub const SDK_ENV_NAME_VAR: &str = "envNAME";
/// The variable the AEnvironment SDK adds to every create: the environment's version.
pub const SDK_ENV_VERSION_VAR: &str = "envversion";

/// Most sandboxes one pool may keep (`replicas` and `maxReplicas`).
pub const MAX_POOL_REPLICAS: u32 = 1000;

/// A pool of ready sandboxes of one Environment template.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[kube(
    group = "aenv.io",
    version = "v1alpha1",
    kind = "EnvPool",
    namespaced,
    status = "EnvPoolStatus",
    shortname = "envpool",
    category = "aenv",
    scale = r#"{"specReplicasPath":".spec.replicas","statusReplicasPath":".status.replicas"}"#,
    printcolumn = r#"{"name":"Env","type":"string","jsonPath":".spec.envName"}"#,
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".spec.replicas"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.ready"}"#,
    printcolumn = r#"{"name":"Starting","type":"integer","jsonPath":".status.starting"}"#,
    printcolumn = r#"{"name":"Claimed","type":"integer","jsonPath":".status.claimed"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct EnvPoolSpec {
    /// The template, as `name@version` of an Environment.
    pub env_name: String,
    /// Ready sandboxes to keep waiting.
    pub replicas: u32,
    /// Up to how many the pool grows while claims come in faster than it refills (absent: `replicas`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_replicas: Option<u32>,
    /// Who made the pool: only that owner's creates are served from it (with tokens on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// What the pool controller last saw.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvPoolStatus {
    /// Sandboxes waiting (ready and starting): what `kubectl scale` compares with `spec.replicas`.
    #[serde(default)]
    pub replicas: u32,
    /// Waiting sandboxes whose readiness probe passed.
    #[serde(default)]
    pub ready: u32,
    /// Waiting sandboxes not ready yet.
    #[serde(default)]
    pub starting: u32,
    /// How many the pool aims at now, between `replicas` and `maxReplicas`.
    #[serde(default)]
    pub target: u32,
    /// Sandboxes handed out since the pool was made.
    #[serde(default)]
    pub claimed: u64,
    /// Creates served from the pool.
    #[serde(default)]
    pub hits: u64,
    /// Creates the pool could have served but found no ready sandbox for (they started cold).
    #[serde(default)]
    pub misses: u64,
    /// Why the last sandbox failed, until one becomes ready again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl EnvPoolSpec {
    /// `(name, version)` of the template; `None` unless `envName` is `name@version`.
    pub fn template(&self) -> Option<(&str, &str)> {
        self.env_name.split_once('@').filter(|(n, v)| !n.is_empty() && !v.is_empty())
    }

    /// The largest size the pool may grow to.
    pub fn ceiling(&self) -> u32 {
        self.max_replicas.unwrap_or(self.replicas).max(self.replicas)
    }

    /// How many sandboxes to keep waiting, given the creates that wanted one in the recent window: `replicas`
    /// plus that demand, at most [`EnvPoolSpec::ceiling`]. It falls back to `replicas` when the demand stops.
    pub fn target(&self, recent_demand: u32) -> u32 {
        self.replicas.saturating_add(recent_demand).min(self.ceiling())
    }
}

/// Where a waiting sandbox stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberState {
    /// Its readiness probe passed (or it has none and runs): it may be claimed.
    Ready,
    /// Not created yet, or created and not answering yet.
    Starting,
    /// It failed or is gone: to be replaced.
    Failed,
}

impl EnvInstance {
    /// The pool this instance waits in; `None` once claimed (or when it never was pooled).
    pub fn pool(&self) -> Option<&str> {
        self.metadata.labels.as_ref()?.get(POOL_LABEL).map(String::as_str)
    }

    /// The pool this instance was claimed from.
    pub fn claimed_from(&self) -> Option<&str> {
        self.metadata.annotations.as_ref()?.get(CLAIMED_FROM).map(String::as_str)
    }

    /// When the instance began for its user: the claim for a pooled sandbox, the creation otherwise.
    pub fn started_at(&self) -> Option<Timestamp> {
        let claimed = self.metadata.annotations.as_ref().and_then(|a| a.get(CLAIMED_AT)).and_then(|t| t.parse().ok());
        claimed.or_else(|| self.metadata.creation_timestamp.as_ref().map(|t| t.0))
    }

    /// The state of a waiting sandbox (see [`MemberState`]).
    pub fn member_state(&self) -> MemberState {
        if self.is_deleting() || self.phase().is_terminal() {
            return MemberState::Failed;
        }
        if self.is_ready() { MemberState::Ready } else { MemberState::Starting }
    }

    /// This waiting sandbox rewritten as claimed by a create that asked for `wanted` at `now`: out of the pool,
    /// the create's TTL, owner and labels, its expiry counted from now.
    pub fn claimed(&self, wanted: &EnvInstanceSpec, now: Timestamp) -> Result<EnvInstance, crate::Error> {
        let mut claimed = self.clone();
        let pool = self.pool().unwrap_or_default().to_string();
        claimed.spec.ttl = wanted.ttl.clone();
        claimed.spec.owner = wanted.owner.clone();
        claimed.spec.labels = wanted.labels.clone();
        if let Some(labels) = claimed.metadata.labels.as_mut() {
            labels.remove(POOL_LABEL);
        }
        let annotations = claimed.metadata.annotations.get_or_insert_with(Default::default);
        annotations.insert(CLAIMED_FROM.into(), pool);
        annotations.insert(CLAIMED_AT.into(), now.to_string());
        annotations.remove(crate::types::EXPIRE_AT_ANNOTATION);
        claimed.stamp_expiry(now)?;
        Ok(claimed)
    }
}

/// The spec a pooled sandbox of `template` runs: the template as the SDK's create asks for it (with its
/// `envNAME` and `envversion` variables), owned by `owner`, and with no TTL (it waits until claimed; the claim
/// gives it the create's TTL).
pub fn member_spec(template: &EnvInstanceSpec, name: &str, version: &str, owner: Option<&str>) -> EnvInstanceSpec {
    let mut spec = template.clone();
    spec.env_name = name.to_string();
    spec.env_version = version.to_string();
    spec.env.insert(SDK_ENV_NAME_VAR.into(), name.to_string());
    spec.env.insert(SDK_ENV_VERSION_VAR.into(), version.to_string());
    spec.owner = owner.map(str::to_string);
    spec.ttl = None;
    spec
}

/// What the owner of a create means to a pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnerRule {
    /// With tokens, an owner is a tenant: its sandboxes run on its own network, under its name; a pool serves the
    /// creates of its own owner only (an owner-less pool, the owner-less creates).
    Tenant,
    /// Without tokens, the owner is attribution only: any pool serves a create whatever owner it names, and the
    /// claim records that owner, as it records the TTL and the labels.
    Attribution,
}

/// Whether a create that resolved to `wanted` may be served by a sandbox started as `member`: everything a
/// running container cannot take on afterwards (image, arguments, environment, resources, network, ports,
/// probe; the owner when it is a tenant) must be the same. The TTL and the labels differ freely: they live in the
/// store.
pub fn serves(member: &EnvInstanceSpec, wanted: &EnvInstanceSpec, owners: OwnerRule) -> bool {
    let store_only = |s: &EnvInstanceSpec| EnvInstanceSpec {
        ttl: None,
        labels: BTreeMap::new(),
        owner: match owners {
            OwnerRule::Tenant => s.owner.clone(),
            OwnerRule::Attribution => None,
        },
        ..s.clone()
    };
    store_only(member) == store_only(wanted)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use kube::CustomResourceExt;

    use super::*;
    use crate::{Condition, EnvInstanceStatus, Phase};

    fn template() -> EnvInstanceSpec {
        EnvInstanceSpec {
            image: Some("mini:1".into()),
            env: BTreeMap::from([("A".into(), "1".into())]),
            ttl: Some("1h".into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_member_is_the_template_as_the_sdk_asks_for_it() {
        let m = member_spec(&template(), "mini", "1.0.0", Some("alice"));
        assert_eq!(m.env["envNAME"], "mini");
        assert_eq!(m.env["envversion"], "1.0.0");
        assert_eq!(m.env["A"], "1");
        assert_eq!((m.ttl, m.owner.as_deref()), (None, Some("alice")));
    }

    #[test]
    fn only_the_ttl_and_labels_may_differ() {
        let member = member_spec(&template(), "mini", "1.0.0", None);
        let mut wanted = member.clone();
        wanted.ttl = Some("5m".into());
        wanted.labels.insert("run".into(), "7".into());
        assert!(serves(&member, &wanted, OwnerRule::Tenant));
        for change in [
            |s: &mut EnvInstanceSpec| {
                s.env.insert("B".into(), "2".into());
            },
            |s: &mut EnvInstanceSpec| s.args = vec!["x".into()],
            |s: &mut EnvInstanceSpec| s.resources.memory = Some("1Gi".into()),
            |s: &mut EnvInstanceSpec| s.owner = Some("bob".into()),
            |s: &mut EnvInstanceSpec| s.network = Some("lab".into()),
            |s: &mut EnvInstanceSpec| s.image = Some("other:1".into()),
        ] {
            let mut w = wanted.clone();
            change(&mut w);
            assert!(!serves(&member, &w, OwnerRule::Tenant), "{w:?}");
            let only_the_owner = w.owner != member.owner && {
                let mut same = w.clone();
                same.owner = member.owner.clone();
                serves(&member, &same, OwnerRule::Tenant)
            };
            assert_eq!(serves(&member, &w, OwnerRule::Attribution), only_the_owner, "{w:?}");
        }
    }

    #[test]
    fn target_follows_demand_between_the_bounds() {
        let spec = EnvPoolSpec { env_name: "a@1".into(), replicas: 2, max_replicas: Some(5), owner: None };
        assert_eq!((spec.target(0), spec.target(2), spec.target(100)), (2, 4, 5));
        let fixed = EnvPoolSpec { max_replicas: None, ..spec.clone() };
        assert_eq!(fixed.target(100), 2);
        let odd = EnvPoolSpec { max_replicas: Some(1), ..spec };
        assert_eq!(odd.ceiling(), 2, "a ceiling under replicas is replicas");
        assert_eq!(EnvPoolSpec { env_name: "noversion".into(), ..Default::default() }.template(), None);
    }

    #[test]
    fn a_claim_moves_the_instance_out_of_the_pool_and_starts_its_ttl() {
        let mut member = EnvInstance::new("mini-abc123", member_spec(&template(), "mini", "1.0.0", None));
        member.metadata.labels = Some(BTreeMap::from([(POOL_LABEL.to_string(), "warm".to_string())]));
        member.metadata.creation_timestamp = Some(Time("2026-01-01T00:00:00Z".parse().unwrap()));
        assert_eq!(member.expires_at().unwrap(), None, "a waiting sandbox does not expire");
        member.status = Some(EnvInstanceStatus { phase: Phase::Running, ..Default::default() });
        assert_eq!(member.member_state(), MemberState::Starting, "running but not ready");
        member.status.as_mut().unwrap().conditions.push(Condition {
            type_: "Ready".into(),
            status: "True".into(),
            reason: "Ready".into(),
            message: String::new(),
        });
        assert_eq!(member.member_state(), MemberState::Ready);

        let mut wanted = member.spec.clone();
        wanted.ttl = Some("10m".into());
        wanted.owner = None;
        wanted.labels.insert("run".into(), "1".into());
        let now: Timestamp = "2026-01-01T05:00:00.5Z".parse().unwrap();
        let claimed = member.claimed(&wanted, now).unwrap();
        assert_eq!(claimed.pool(), None);
        assert_eq!(claimed.claimed_from(), Some("warm"));
        assert_eq!(claimed.expires_at().unwrap(), Some("2026-01-01T05:10:00.5Z".parse().unwrap()));
        assert_eq!(claimed.started_at(), Some(now));
        assert_eq!(claimed.spec.labels["run"], "1");
        assert_eq!(claimed.status, member.status, "the status stays: it is still running and ready");
    }

    #[test]
    fn crd_has_scale_and_columns() {
        let crd = EnvPool::crd();
        assert_eq!(crd.metadata.name.as_deref(), Some("envpools.aenv.io"));
        let v = &crd.spec.versions[0];
        let scale = v.subresources.as_ref().and_then(|s| s.scale.as_ref()).unwrap();
        assert_eq!(scale.spec_replicas_path, ".spec.replicas");
        assert_eq!(scale.status_replicas_path, ".status.replicas");
        let columns: Vec<_> = v.additional_printer_columns.iter().flatten().map(|c| c.name.as_str()).collect();
        assert_eq!(columns, ["Env", "Replicas", "Ready", "Starting", "Claimed", "Age"]);
    }
}
