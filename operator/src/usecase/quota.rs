//! What a tenant holds, counted by one rule for instances, services and pools, and the serialisation that keeps
//! the caps exact without making every create wait on every other.
//!
//! The rule ([`UseCases::held_by`]): an owner holds
//! - each of its instances that is not being deleted (cold or claimed from a pool: a claimed sandbox is an
//!   instance of the claimer's);
//! - for each of its services, its `replicas`, or the replicas it runs when more (a rollover);
//! - for each of its pools, its ceiling (`maxReplicas`, else `replicas`), or the sandboxes waiting in it when more:
//!   a pool holds room for what it may keep waiting from its creation to its deletion, so that the pool controller
//!   may refill and grow it without ever taking the owner past its cap; sandboxes still waiting in a pool being
//!   deleted count until they are gone.
//!
//! A create, a claim, a new pool or service and a resize are each refused when what they add would take the owner
//! past `maxInstances`. The check and the record of one owner happen under that owner's lock ([`Gate::owner`]), so
//! two requests of one owner cannot both fit; requests of different owners do not wait on each other. The
//! operator-wide `--max-instances` counts the sandboxes that exist (waiting ones included, as the pool controller
//! does) plus the creates in flight: each takes a [`Reservation`] before its write and gives it back once the write
//! is visible (or failed), so concurrent creates of any owners never overshoot it, and no lock is held across the
//! store's write for it. A reservation names the key it writes before the write, and the count takes the
//! reservations first and the store's sandboxes second, leaving out the reservations whose key the store already
//! shows: each create in flight counts exactly once, whether its write is visible yet or not, so a batch of writes
//! that become visible together does not refuse other creates under the cap.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use aenv_core::EnvInstance;
use tokio::sync::OwnedMutexGuard;

use super::{Principal, UseCaseError, UseCases};
use crate::store::{key, key_of};

/// What a resize leaves out of the count: the object being resized, whose new size the caller adds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Except<'a> {
    Nothing,
    Pool(&'a str),
    Service(&'a str),
}

/// The locks of the owners with a request in flight, and the operator-wide reservations.
#[derive(Default)]
pub(super) struct Gate {
    owners: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    reserved: Mutex<Reserved>,
}

/// The reservations held, by a number of their own.
#[derive(Default)]
struct Reserved {
    next: u64,
    held: HashMap<u64, Held>,
}

/// One reservation: `n` sandboxes, and the store key of the instance it writes once that is drawn.
struct Held {
    n: usize,
    key: Option<String>,
}

/// One owner's turn: held from its quota check to its record.
pub(super) struct OwnerTurn {
    owners: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    owner: String,
    guard: Option<OwnedMutexGuard<()>>,
}

impl Drop for OwnerTurn {
    fn drop(&mut self) {
        let mut owners = self.owners.lock().unwrap_or_else(|p| p.into_inner());
        // The map and this turn's guard hold the lock; nobody else waits for it: forget it, so that the map keeps
        // only the owners with a request in flight.
        if owners.get(&self.owner).is_some_and(|l| Arc::strong_count(l) == 2) {
            owners.remove(&self.owner);
        }
        drop(self.guard.take());
    }
}

/// Room for `n` sandboxes under `--max-instances`, taken before a write and given back when dropped.
pub(super) struct Reservation<'a> {
    gate: &'a Gate,
    id: u64,
}

impl Reservation<'_> {
    /// Names the key of the instance this reservation writes; call it before the write, so that once the store
    /// shows the instance the count takes it from there and not from here.
    pub(super) fn writes(&self, key: &str) {
        if let Some(held) = self.gate.reserved().held.get_mut(&self.id) {
            held.key = Some(key.to_string());
        }
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.gate.reserved().held.remove(&self.id);
    }
}

impl Gate {
    /// Waits for `owner`'s turn.
    pub(super) async fn owner(&self, owner: &str) -> OwnerTurn {
        let lock = {
            let mut owners = self.owners.lock().unwrap_or_else(|p| p.into_inner());
            owners.entry(owner.to_string()).or_default().clone()
        };
        let guard = lock.lock_owned().await;
        OwnerTurn { owners: self.owners.clone(), owner: owner.to_string(), guard: Some(guard) }
    }

    fn reserved(&self) -> std::sync::MutexGuard<'_, Reserved> {
        self.reserved.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves `n` under `max` beside what `live` counts: `live` is given the keys the reservations write and
    /// answers the sandboxes that exist and how many of those keys are among them. `Err` with what is live and
    /// reserved when the `n` do not fit.
    ///
    /// The reservations are read before `live` looks at the store, and a write is visible before its reservation
    /// is given back: a create in flight is either among the reservations read or, given back before, among the
    /// sandboxes `live` sees; one whose key `live` sees is left out of the reservations. So each counts once.
    pub(super) fn reserve(
        &self,
        n: usize,
        max: usize,
        live: impl FnOnce(&[String]) -> (usize, usize),
    ) -> Result<Reservation<'_>, usize> {
        let (taken, keyed, unkeyed) = {
            let mut reserved = self.reserved();
            let id = reserved.next;
            reserved.next += 1;
            reserved.held.insert(id, Held { n, key: None });
            let mut keys = Vec::new();
            let mut unkeyed = 0;
            for held in reserved.held.values() {
                match &held.key {
                    Some(k) => keys.push(k.clone()),
                    None => unkeyed += held.n,
                }
            }
            (Reservation { gate: self, id }, keys, unkeyed)
        };
        let (live, shown) = live(&keyed);
        let total = live + unkeyed + keyed.len() - shown;
        if total > max {
            return Err(total - n);
        }
        Ok(taken)
    }
}

#[derive(Default)]
struct Waiting {
    count: usize,
    owner: Option<String>,
}

/// What a request adds to what an owner holds, for the refusal to name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Adding {
    /// One instance (cold or claimed).
    Instance,
    /// A pool's room (its new ceiling).
    Pool,
    /// A service's replicas (its new count).
    Service,
}

impl UseCases {
    /// Refuses (403) when `more` sandboxes, beside what `caller`'s owner holds (leaving out `except`), would take
    /// it past its `maxInstances`. The caller holds the owner's turn ([`Gate::owner`]) until its record is written.
    pub(super) fn check_owner_room(
        &self,
        caller: Option<&Principal>,
        adding: Adding,
        more: usize,
        except: Except<'_>,
    ) -> Result<(), UseCaseError> {
        let Some((owner, max)) = caller.and_then(|p| p.max_instances.map(|m| (p.owner.as_str(), m))) else {
            return Ok(());
        };
        let held = self.held_by(owner, except);
        if held + more <= max {
            return Ok(());
        }
        let left = max.saturating_sub(held);
        const COUNTED: &str = "its instances, its services' replicas and its pools' room count";
        Err(UseCaseError::Forbidden(match adding {
            Adding::Instance => format!(
                "Instance count exceeds limit: {max} (owner {owner} holds {held}: {COUNTED}; delete an instance, or shrink a pool or a service, first)"
            ),
            Adding::Pool => format!(
                "owner {owner} may hold at most {max} sandboxes (its instance limit) and holds {held} beside this pool ({COUNTED}): `replicas`/`maxReplicas` may be at most {left}"
            ),
            Adding::Service => format!(
                "owner {owner} may hold at most {max} sandboxes and holds {held} beside this service ({COUNTED}): `replicas` may be at most {left} (service replicas count as instances)"
            ),
        }))
    }

    /// The turn of `caller`'s owner when it has a cap (`None`: nothing to serialise).
    pub(super) async fn owner_turn(&self, caller: Option<&Principal>) -> Option<OwnerTurn> {
        match caller {
            Some(p) if p.max_instances.is_some() => Some(self.gate.owner(&p.owner).await),
            _ => None,
        }
    }

    /// Room for `n` more sandboxes under `--max-instances` (`None`: no such cap), held until the caller's write is
    /// visible; `Err(live)` when they do not fit.
    pub(super) fn reserve_live(&self, n: usize) -> Result<Option<Reservation<'_>>, usize> {
        match self.limits.limits.max_instances {
            Some(max) => self.gate.reserve(n, max, |keys| self.live_among(keys)).map(Some),
            None => Ok(None),
        }
    }

    /// How many sandboxes `owner` holds by the rule of this module's docs, leaving out `except`.
    pub(super) fn held_by(&self, owner: &str, except: Except<'_>) -> usize {
        let owned = |o: Option<&str>| o == Some(owner);
        let mut plain = 0;
        // Sandboxes waiting in each pool, running for each service, by `namespace/name`.
        let mut members: HashMap<String, Waiting> = HashMap::new();
        let mut replicas: HashMap<String, Waiting> = HashMap::new();
        for inst in self.stores.instances.list_where(&|i: &EnvInstance| !i.is_deleting()) {
            let parent = match (inst.pool(), inst.service()) {
                (Some(pool), _) => Some((&mut members, key(inst.namespace(), pool))),
                (None, Some(svc)) => Some((&mut replicas, key(inst.namespace(), svc))),
                (None, None) => None,
            };
            match parent {
                Some((map, k)) => {
                    let w = map.entry(k).or_default();
                    w.count += 1;
                    w.owner = inst.spec.owner.clone();
                }
                None if owned(inst.spec.owner.as_deref()) => plain += 1,
                None => {}
            }
        }
        let mut held = plain;
        for pool in self.stores.pools.list() {
            let k = key_of(pool.as_ref());
            let waiting = members.remove(&k).map_or(0, |w| w.count);
            if !owned(pool.spec.owner.as_deref()) || except == Except::Pool(pool.metadata.name.as_deref().unwrap_or(""))
            {
                continue;
            }
            let room = if pool.metadata.deletion_timestamp.is_some() { 0 } else { pool.spec.ceiling() as usize };
            held += room.max(waiting);
        }
        for svc in self.stores.env_services.list() {
            let k = key_of(svc.as_ref());
            let running = replicas.remove(&k).map_or(0, |w| w.count);
            if !owned(svc.spec.owner.as_deref())
                || except == Except::Service(svc.metadata.name.as_deref().unwrap_or(""))
            {
                continue;
            }
            let room = if svc.metadata.deletion_timestamp.is_some() { 0 } else { svc.spec.replicas as usize };
            held += room.max(running);
        }
        // Sandboxes of pools and services that are gone from the store: their own owner's still.
        held + members
            .into_values()
            .chain(replicas.into_values())
            .filter(|w| owned(w.owner.as_deref()))
            .map(|w| w.count)
            .sum::<usize>()
    }

    /// Sandboxes that exist on the operator (waiting ones included) and replicas of the services the engine runs:
    /// what `--max-instances` caps; and how many of the instances `keys` name are among them, from the same look.
    fn live_among(&self, keys: &[String]) -> (usize, usize) {
        let existing = self.stores.instances.list_where(&|i: &EnvInstance| !i.is_deleting());
        let shown = if keys.is_empty() {
            0
        } else {
            let keys: std::collections::HashSet<&str> = keys.iter().map(String::as_str).collect();
            existing.iter().filter(|i| keys.contains(key_of(i.as_ref()).as_str())).count()
        };
        (existing.len() + self.native_replicas(None), shown)
    }
}

#[cfg(test)]
mod tests {
    use super::Gate;

    /// `live` as the store would answer it: `shown` instances exist, and those of `keys` among them.
    fn store<'a>(shown: &'a [&'a str]) -> impl FnOnce(&[String]) -> (usize, usize) + 'a {
        move |keys| (shown.len(), keys.iter().filter(|k| shown.contains(&k.as_str())).count())
    }

    #[test]
    fn a_write_visible_before_its_reservation_is_given_back_counts_once() {
        let gate = Gate::default();
        let first = gate.reserve(1, 2, store(&[])).expect("room for the first");
        first.writes("default/a");
        // The first write is visible and its reservation still held: it counts once, so the second fits.
        let second = gate.reserve(1, 2, store(&["default/a"])).expect("room for the second");
        second.writes("default/b");
        // Both visible, both still held: the operator is full, and the refusal counts each once.
        assert_eq!(gate.reserve(1, 2, store(&["default/a", "default/b"])).err(), Some(2));
        drop((first, second));
        assert_eq!(gate.reserve(1, 2, store(&["default/a", "default/b"])).err(), Some(2));
    }

    #[test]
    fn a_reservation_not_yet_written_counts_until_it_is_given_back() {
        let gate = Gate::default();
        let held = gate.reserve(2, 3, store(&[])).expect("room for two");
        // Its key not drawn yet: it counts whole.
        assert_eq!(gate.reserve(2, 3, store(&[])).err(), Some(2));
        drop(held);
        assert!(gate.reserve(2, 3, store(&[])).is_ok());
    }
}
