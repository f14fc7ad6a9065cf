//! Warm pools: `EnvPool` objects (make, read, scale, delete) and claims, the other half of a create: a create
//! whose spec a waiting sandbox serves (see [`aenv_core::pool::serves`]) takes that sandbox instead of starting
//! one. The pool controller ([`crate::controller::pools`]) keeps the pools filled; the [`crate::demand::Demand`]
//! a claim records tells it how many creates wanted a sandbox lately.

use std::{sync::Arc, time::Instant};

use aenv_core::{
    EnvInstance, EnvInstanceSpec, EnvPool, EnvPoolSpec, MemberState,
    pool::{MAX_POOL_REPLICAS, OwnerRule, member_spec, serves},
};
use jiff::Timestamp;
use tracing::{debug, info};

use super::{
    Principal, UseCaseError, UseCases,
    quota::{Adding, Except},
};
use crate::{Error, metrics::ClaimLabels, store::key_of};

/// A pool as `POST /env-pool` and `PUT /env-pool/{name}` ask for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolRequest {
    pub name: String,
    /// `name@version` of the template.
    pub env_name: String,
    pub replicas: u32,
    pub max_replicas: Option<u32>,
}

/// Checks a pool request's numbers: each refusal names the field.
fn check_sizes(replicas: u32, max_replicas: Option<u32>) -> Result<(), UseCaseError> {
    if replicas > MAX_POOL_REPLICAS {
        return Err(UseCaseError::field(
            "replicas",
            format!("field `replicas` must be between 0 and {MAX_POOL_REPLICAS} (got {replicas})"),
        ));
    }
    match max_replicas {
        Some(max) if max < replicas || max > MAX_POOL_REPLICAS => Err(UseCaseError::field(
            "maxReplicas",
            format!(
                "field `maxReplicas` must be between `replicas` ({replicas}) and {MAX_POOL_REPLICAS} (got {max}); leave it out for a pool of fixed size"
            ),
        )),
        _ => Ok(()),
    }
}

/// Whether `name` can name a pool (a Kubernetes object name: lowercase letters, digits and '-', at most 63).
fn check_name(name: &str) -> Result<(), UseCaseError> {
    if aenv_core::labels::is_dns_label(name) {
        Ok(())
    } else {
        Err(UseCaseError::field(
            "name",
            format!(
                "field `name` must be 1 to 63 lowercase letters, digits or '-', starting and ending with a letter or digit (got {name:?})"
            ),
        ))
    }
}

impl UseCases {
    /// Whether `caller` may see and change `pool`: everyone when auth is off; its owner otherwise.
    pub fn pool_visible(pool: &EnvPool, caller: Option<&Principal>) -> bool {
        caller.is_none_or(|p| pool.spec.owner.as_deref() == Some(p.owner.as_str()))
    }

    /// Makes a pool of an existing template; the pool controller fills it.
    pub async fn create_pool(
        &self,
        req: PoolRequest,
        caller: Option<&Principal>,
    ) -> Result<Arc<EnvPool>, UseCaseError> {
        check_name(&req.name)?;
        check_sizes(req.replicas, req.max_replicas)?;
        let spec = EnvPoolSpec {
            env_name: req.env_name.clone(),
            replicas: req.replicas,
            max_replicas: req.max_replicas,
            owner: caller.map(|p| p.owner.clone()),
        };
        let Some((name, version)) = spec.template() else {
            return Err(UseCaseError::field(
                "envName",
                format!("field `envName` must be name@version of a registered environment (got {:?})", req.env_name),
            ));
        };
        // A tenant pools only templates it may create from (its own, shared ones, ownerless ones).
        let (template, _) = self.usable_template(name, version, caller)?;
        super::templates::not_pending(&template)?;
        // The owner's turn from the room check to the record, so that two racing requests cannot both fit.
        let _turn = self.owner_turn(caller).await;
        self.check_owner_room(caller, Adding::Pool, spec.ceiling() as usize, Except::Nothing)?;
        let mut pool = EnvPool::new(&req.name, spec);
        pool.metadata.namespace = Some(self.namespace.clone());
        match self.stores.pools.create(pool, Timestamp::now()).await {
            Ok(stored) => {
                info!(pool = %req.name, env = %req.env_name, replicas = req.replicas, "pool created");
                Ok(stored)
            }
            Err(Error::AlreadyExists(_)) => Err(UseCaseError::Conflict(
                match self.stores.pools.get(&self.key(&req.name)).filter(|p| Self::pool_visible(p, caller)) {
                    Some(_) => format!(
                        "pool \"{}\" exists already; change its size with PUT /env-pool/{}, or pick another name",
                        req.name, req.name
                    ),
                    // Another owner's: its existence only (see `taken`).
                    None => super::taken(&req.name, "name"),
                },
            )),
            Err(source) => Err(UseCaseError::store("the pool could not be recorded", source)),
        }
    }

    /// The pool `name`, if `caller` may see it and it is not being deleted.
    pub fn pool(&self, name: &str, caller: Option<&Principal>) -> Result<Arc<EnvPool>, UseCaseError> {
        self.stores
            .pools
            .get(&self.key(name))
            .filter(|p| Self::pool_visible(p, caller) && p.metadata.deletion_timestamp.is_none())
            .ok_or_else(|| UseCaseError::NotFound(format!("pool \"{name}\" not found")))
    }

    /// Pools in the API's namespace that `caller` may see.
    pub fn list_pools(&self, caller: Option<&Principal>) -> Vec<Arc<EnvPool>> {
        let namespace = self.namespace.as_str();
        self.stores.pools.list_where(&|p: &EnvPool| {
            p.metadata.namespace.as_deref() == Some(namespace)
                && p.metadata.deletion_timestamp.is_none()
                && Self::pool_visible(p, caller)
        })
    }

    /// Changes a pool's size (`replicas`, and `maxReplicas` when given).
    pub async fn scale_pool(
        &self,
        name: &str,
        replicas: u32,
        max_replicas: Option<u32>,
        caller: Option<&Principal>,
    ) -> Result<Arc<EnvPool>, UseCaseError> {
        let _turn = self.owner_turn(caller).await;
        let mut attempts = super::retry::Attempts::new();
        while attempts.next().await {
            let current = self.pool(name, caller)?;
            let max_replicas = max_replicas.or(current.spec.max_replicas.filter(|m| *m >= replicas));
            check_sizes(replicas, max_replicas)?;
            let mut next = (*current).clone();
            next.spec.replicas = replicas;
            next.spec.max_replicas = max_replicas;
            self.check_owner_room(caller, Adding::Pool, next.spec.ceiling() as usize, Except::Pool(name))?;
            match self.stores.pools.replace(&next).await {
                Ok(Some(stored)) => {
                    info!(pool = %name, replicas, "pool scaled");
                    return Ok(stored);
                }
                Ok(None) => break,
                Err(Error::Conflict(_)) => continue,
                Err(source) => return Err(UseCaseError::store("the pool could not be changed", source)),
            }
        }
        self.pool(name, caller)
    }

    /// Asks for a pool's deletion: the pool controller removes its waiting sandboxes, then the pool. Sandboxes
    /// claimed from it are instances of their own and stay.
    pub async fn delete_pool(&self, name: &str, caller: Option<&Principal>) -> Result<(), UseCaseError> {
        self.pool(name, caller)?;
        match self.stores.pools.request_delete(&self.key(name), Timestamp::now()).await {
            Ok(_) => {
                info!(pool = %name, "pool deletion requested");
                Ok(())
            }
            Err(source) => Err(UseCaseError::store("the deletion could not be recorded", source)),
        }
    }

    /// Pools (not being deleted) made from the template `name@version`.
    pub fn pools_of(&self, name: &str, version: &str) -> Vec<Arc<EnvPool>> {
        self.stores.pools.list_where(&|p: &EnvPool| {
            p.metadata.deletion_timestamp.is_none() && p.spec.template() == Some((name, version))
        })
    }

    /// Serves a create of `wanted` (owner already set) from a pool when one holds a ready sandbox that serves it:
    /// the sandbox, claimed (durable when this returns). `None` when no pool applies or none has a ready sandbox
    /// (counted as a miss): the create then starts a sandbox of its own. `owners` says what the create's owner
    /// means to a pool ([`OwnerRule`]). Two claims of one sandbox race on the store's compare-and-swap: one wins,
    /// the other takes the next sandbox.
    pub(super) async fn claim(
        &self,
        wanted: &EnvInstanceSpec,
        owners: OwnerRule,
    ) -> Result<Option<Arc<EnvInstance>>, UseCaseError> {
        let (name, version) = (wanted.env_name.as_str(), wanted.env_version.as_str());
        let namespace = self.namespace.as_str();
        let pools = self.pools_of(name, version);
        let Some(template) = self.find_template(name, version).filter(|_| !pools.is_empty()) else {
            return Ok(None);
        };
        let started = Instant::now();
        let mut wanting = None;
        for pool in pools.iter().filter(|p| p.metadata.namespace.as_deref() == Some(namespace)) {
            // A pool's sandboxes run the template as the SDK asks for it, for the pool's owner: a create that
            // asks for more (variables, arguments, resources), or, with tokens, for another owner, is not one it
            // can serve.
            let model = member_spec(&template.spec.template, name, version, pool.spec.owner.as_deref());
            if !serves(&model, wanted, owners) {
                continue;
            }
            wanting.get_or_insert(pool);
            let pool_name = pool.metadata.name.as_deref().unwrap_or_default();
            let mut candidates = self.stores.instances.list_where(&|i: &EnvInstance| {
                i.pool() == Some(pool_name)
                    && i.metadata.namespace.as_deref() == Some(namespace)
                    && i.member_state() == MemberState::Ready
                    && serves(&i.spec, wanted, owners)
            });
            // Oldest first: the longest-waiting sandbox has passed its probe the longest.
            candidates.sort_by_key(|c| c.metadata.creation_timestamp.as_ref().map(|t| t.0));
            for candidate in candidates {
                let claimed = candidate
                    .claimed(wanted, Timestamp::now())
                    .map_err(|e| UseCaseError::field("ttl", format!("field `ttl`: {e}")))?;
                match self.stores.instances.replace(&claimed).await {
                    Ok(Some(stored)) => {
                        self.demand.record(&key_of(pool.as_ref()), true, Instant::now());
                        self.metrics.claims.get_or_create(&ClaimLabels::new("hit")).inc();
                        self.metrics.claim_seconds.observe(started.elapsed().as_secs_f64());
                        info!(instance = %stored.metadata.name.as_deref().unwrap_or_default(), pool = %pool_name, "claimed from the pool");
                        return Ok(Some(stored));
                    }
                    // Claimed or removed by someone else meanwhile: the next one.
                    Ok(None) | Err(Error::Conflict(_)) => {
                        debug!(instance = ?candidate.metadata.name, "lost a race for a pooled sandbox");
                    }
                    Err(source) => return Err(UseCaseError::store("the claim could not be recorded", source)),
                }
            }
        }
        match wanting {
            // A pool could serve it but had nothing ready: the create goes cold, and the pool learns of the demand.
            Some(pool) => {
                self.demand.record(&key_of(pool.as_ref()), false, Instant::now());
                self.metrics.claims.get_or_create(&ClaimLabels::new("miss")).inc();
            }
            None => {
                self.metrics.claims.get_or_create(&ClaimLabels::new("unfit")).inc();
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_names_are_checked_with_the_field_named() {
        assert!(check_sizes(0, None).is_ok() && check_sizes(3, Some(10)).is_ok());
        let e = check_sizes(MAX_POOL_REPLICAS + 1, None).unwrap_err().to_string();
        assert!(e.contains("`replicas`"), "{e}");
        let e = check_sizes(5, Some(2)).unwrap_err().to_string();
        assert!(e.contains("`maxReplicas`"), "{e}");
        for bad in ["", "Caps", "-lead", "trail-", "a.b", &"x".repeat(64)] {
            let e = check_name(bad).unwrap_err().to_string();
            assert!(e.contains("`name`"), "{bad}: {e}");
        }
        assert!(check_name("warm-1").is_ok());
    }
}
