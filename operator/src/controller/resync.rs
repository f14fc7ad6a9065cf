//! The resync: kills the commands that outlived their timeout while the operator was down; one list call to the
//! engine that sweeps objects no instance owns (orphans) and wakes every instance
//! whose engine state differs from its status (died, removed by hand, or missing), expired or being deleted; and
//! one more that removes whatever any operator labelled whose expiry label passed more than --orphan-grace ago
//! (a lost store's sandboxes), and the networks any operator made for instances to share that no container is on
//! and that are older than --orphan-grace. Volumes of other operators are never removed: they hold data.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use aenv_core::{EnvInstance, OwnedKind};
use jiff::Timestamp;
use kube::runtime::reflector::ObjectRef;
use tokio::sync::mpsc;
use tracing::warn;

use super::{Context, object_ref};
use crate::{
    Error,
    store::{key, key_of},
};

/// One list call: sweeps containers no instance owns, and wakes every instance whose container's state
/// differs from its status (died, removed by hand, or missing).
pub(super) async fn resync(
    ctx: &Context,
    trigger: &mpsc::Sender<ObjectRef<EnvInstance>>,
    orphan_grace: Duration,
) -> Result<(), Error> {
    // Commands that outlived their timeout while the operator was down (the first resync runs at start).
    match ctx.engine.kill_overdue_commands().await {
        Ok(n) => ctx.metrics.overdue_commands_killed.inc_by(u64::from(n)),
        Err(e) => {
            warn!(error = %e, "could not kill the commands that outlived their timeout");
            0
        }
    };
    let owned = ctx.metrics.time("list", ctx.engine.list_owned()).await?;
    let mut seen = HashMap::with_capacity(owned.len());
    let now = Timestamp::now();
    for object in &owned {
        let k = key(&object.namespace, &object.instance);
        if ctx.store.get(&k).is_some() {
            seen.insert(k, object.phase);
            continue;
        }
        let young = object.created.is_some_and(|c| {
            now.as_millisecond() - c.as_millisecond() < orphan_grace.as_millis().min(i64::MAX as u128) as i64
        });
        if young {
            continue;
        }
        // Instances are recorded before their containers are made, so a labelled container without a record is
        // left over from an instance that is gone.
        warn!(instance = %object.instance, kind = ?object.kind, id = %object.id, "removing an orphaned object");
        match ctx.engine.delete_owned(object).await {
            Ok(()) => {
                ctx.metrics.orphans_removed.inc();
            }
            Err(e) => warn!(error = %e, kind = ?object.kind, id = %object.id, "could not remove an orphaned object"),
        }
    }
    let ours: HashSet<&str> = owned.iter().map(|o| o.id.as_str()).collect();
    let swept = sweep_expired(ctx, &ours, now, orphan_grace).await;
    for inst in ctx.store.list() {
        let k = key_of(inst.as_ref());
        let expired = inst.expires_at().ok().flatten().is_some_and(|exp| exp <= now);
        let stale = !inst.phase().is_terminal() && seen.get(&k) != Some(&inst.phase());
        if inst.is_deleting() || expired || stale {
            let r = object_ref(
                inst.metadata.namespace.as_deref().unwrap_or_default(),
                &inst.metadata.name.clone().unwrap_or_default(),
            );
            if trigger.send(r).await.is_err() {
                break;
            }
        }
    }
    swept
}

/// Removes what other operators (other operator ids: a store that was lost, an operator that is gone) labelled
/// and whose `aenv.io/expire-at` passed more than `grace` ago. Their unexpired objects, and those without an
/// expiry, are never touched: operators that share one daemon must not remove each other's sandboxes. Shared
/// networks (listed only while unused) go once older than `grace`; volumes never.
async fn sweep_expired(ctx: &Context, ours: &HashSet<&str>, now: Timestamp, grace: Duration) -> Result<(), Error> {
    let managed = ctx.metrics.time("list", ctx.engine.list_managed()).await?;
    let grace_ms = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
    for m in managed {
        if ours.contains(m.object.id.as_str()) {
            continue;
        }
        let since = match m.object.kind {
            // Volumes hold data: never removed by an operator that did not make them.
            OwnedKind::Volume | OwnedKind::ServiceVolume => continue,
            // A shared network the engine lists only while no container is on it: removed once it is older than
            // the grace (its containers are gone, so its expiry, if any, is theirs and passed).
            OwnedKind::SharedNetwork => m.object.created,
            OwnedKind::Container | OwnedKind::Network => m.expires_at,
        };
        let Some(expired_at) = since else { continue };
        if now.as_millisecond().saturating_sub(expired_at.as_millisecond()) <= grace_ms {
            continue;
        }
        warn!(
            operator_id = %m.operator_id,
            instance = %m.object.instance,
            object = %m.object.id,
            kind = ?m.object.kind,
            %expired_at,
            "removing an expired object of another operator (its store is gone, or it is not running)"
        );
        match ctx.engine.delete_owned(&m.object).await {
            Ok(()) => ctx.metrics.expired_leftovers_removed.inc(),
            Err(e) => {
                warn!(error = %e, object = %m.object.id, "could not remove an expired object of another operator");
                continue;
            }
        };
    }
    Ok(())
}
