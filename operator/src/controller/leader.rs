//! Leader election through a `coordination.k8s.io/v1` Lease (kube-lease-manager): only the holder of the Lease
//! runs the reconciler; every replica serves the REST API. Losing the Lease stops the reconciler (in-flight
//! reconciles finish); winning it again starts a fresh one.

use std::{future::Future, sync::Arc, time::Duration};

use futures::FutureExt;
use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tracing::{info, warn};

use super::{Context, LoopConfig, run};
use crate::Error;

/// How the Lease is held.
#[derive(Clone, Debug)]
pub struct LeaderElection {
    /// Name of the Lease object.
    pub lease_name: String,
    /// Namespace of the Lease object.
    pub namespace: String,
    /// This replica's identity in the Lease (`holderIdentity`); unique per replica.
    pub identity: String,
    /// How long a Lease stays valid after its last renewal.
    pub lease_duration: Duration,
    /// How long before expiry the holder renews (also the clock skew tolerated between nodes).
    pub renew_grace: Duration,
}

impl LeaderElection {
    /// The election the command line asks for: the Lease in --leader-elect-namespace (else --namespace), this
    /// replica named by --leader-elect-identity (else $POD_NAME or $HOSTNAME with a random suffix).
    pub fn from_args(kube: &crate::app::KubeArgs) -> Self {
        let args = &kube.leader;
        let identity = args.leader_elect_identity.clone().unwrap_or_else(|| {
            let host = std::env::var("POD_NAME")
                .or_else(|_| std::env::var("HOSTNAME"))
                .unwrap_or_else(|_| "aenv-operator".into());
            format!("{host}-{}", crate::store::random_suffix(5))
        });
        LeaderElection {
            lease_name: args.leader_elect_lease_name.clone(),
            namespace: args.leader_elect_namespace.clone().unwrap_or_else(|| kube.namespace.clone()),
            identity,
            lease_duration: args.leader_elect_lease_duration,
            renew_grace: args.leader_elect_renew_grace,
        }
    }
}

/// Runs the reconciler whenever this replica holds the Lease, until `shutdown` resolves; then gives the Lease up
/// so that another replica takes over at once.
pub async fn run_when_leader(
    client: Client,
    election: LeaderElection,
    ctx: Arc<Context>,
    config: LoopConfig,
    shutdown: impl Future<Output = ()> + Send + Sync + Clone + 'static,
) -> Result<(), Error> {
    let duration = election.lease_duration.as_secs().max(2);
    let grace = election.renew_grace.as_secs().clamp(1, duration - 1);
    let manager = LeaseManagerBuilder::new(client, &election.lease_name)
        .with_namespace(&election.namespace)
        .with_identity(&election.identity)
        .with_duration(duration)
        .with_grace(grace)
        .with_field_manager(format!("aenv-operator-{}", election.identity))
        .build()
        .await
        .map_err(|e| {
            Error::Config(format!("leader election with Lease {}/{}: {e}", election.namespace, election.lease_name))
        })?;
    let (mut leading, task) = manager.watch().await;
    info!(lease = %election.lease_name, namespace = %election.namespace, identity = %election.identity, "waiting to lead");
    let mut shutdown_done = Box::pin(shutdown.clone().fuse());
    loop {
        tokio::select! {
            _ = &mut shutdown_done => break,
            changed = leading.wait_for(|l| *l) => if changed.is_err() {
                warn!("the leader election task ended; no longer reconciling");
                break;
            },
        }
        info!(identity = %election.identity, "leading: the reconciler runs here");
        let stop = {
            let mut leading = leading.clone();
            let shutdown = shutdown.clone();
            async move {
                tokio::select! {
                    _ = shutdown => {}
                    _ = leading.wait_for(|l| !*l) => {}
                }
            }
        };
        run(ctx.clone(), config.clone(), stop).await;
        if shutdown_done.as_mut().now_or_never().is_some() {
            break;
        }
        warn!(identity = %election.identity, "lost the Lease: the reconciler stopped here");
    }
    drop(leading);
    match task.await {
        Ok(Ok(manager)) => {
            if let Err(e) = manager.release().await {
                warn!(error = %e, "could not release the Lease; it expires by itself");
            }
        }
        Ok(Err(e)) => warn!(error = %e, "leader election failed"),
        Err(e) => warn!(error = %e, "leader election task failed"),
    }
    Ok(())
}
