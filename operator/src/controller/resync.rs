//! The resync: one list call to the engine that sweeps objects no instance owns (orphans) and wakes every instance
//! whose engine state differs from its status (died, removed by hand, or missing), expired or being deleted.

use std::{collections::HashMap, time::Duration};

use aenv_core::EnvInstance;
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
    Ok(())
}
