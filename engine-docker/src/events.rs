//! The daemon's event stream, filtered to this operator's containers and turned into [`EngineEvent`]s.

use std::{collections::HashMap, time::Duration};

use aenv_core::{EngineEvent, labels};
use bollard::{Docker, query_parameters::EventsOptionsBuilder};
use futures::StreamExt;
use tokio::sync::mpsc;
use tracing::warn;

/// Follows the daemon's container events for this operator's containers, reconnecting with backoff, until the
/// receiving side goes away. After each reconnect it sends `Resync`, since events were missed meanwhile.
pub(crate) async fn pump_events(docker: Docker, operator_id: String, tx: mpsc::Sender<EngineEvent>) {
    let filters = HashMap::from([
        ("type".to_string(), vec!["container".to_string()]),
        ("label".to_string(), vec![format!("{}={operator_id}", labels::OPERATOR_ID)]),
        ("event".to_string(), ["start", "die", "destroy", "oom", "pause", "unpause"].map(String::from).to_vec()),
    ]);
    let mut backoff = Duration::from_millis(200);
    let mut first = true;
    loop {
        let options = EventsOptionsBuilder::default().filters(&filters).build();
        let mut stream = docker.events(Some(options));
        if !first && tx.send(EngineEvent::Resync).await.is_err() {
            return;
        }
        first = false;
        while let Some(item) = stream.next().await {
            match item {
                Ok(msg) => {
                    backoff = Duration::from_millis(200);
                    let attrs = msg.actor.and_then(|a| a.attributes).unwrap_or_default();
                    let Some((namespace, instance)) = labels::instance_of(|k| attrs.get(k)) else { continue };
                    if tx.send(EngineEvent::Changed { namespace, instance }).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    warn!(error = %e, "docker event stream broke; reconnecting");
                    break;
                }
            }
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
