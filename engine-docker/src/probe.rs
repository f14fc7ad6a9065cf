//! The readiness probe: one HTTP GET, `Ready` on a 2xx answer within the timeout.

use std::time::Duration;

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};

/// A reusable HTTP client for probes.
#[derive(Clone)]
pub struct Prober {
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Default for Prober {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        Prober { client: Client::builder(TokioExecutor::new()).pool_max_idle_per_host(0).build(connector) }
    }
}

impl Prober {
    /// `Ok(())` when `GET http://{addr}{path}` answers 2xx within `timeout`; otherwise why not.
    pub async fn probe(&self, addr: &str, path: &str, timeout: Duration) -> Result<(), String> {
        let uri: hyper::Uri =
            format!("http://{addr}{path}").parse().map_err(|e| format!("bad probe address {addr}{path}: {e}"))?;
        match tokio::time::timeout(timeout, self.client.get(uri)).await {
            Err(_) => Err(format!("GET {path} on {addr} did not answer within {timeout:?}")),
            Ok(Err(e)) => Err(format!("GET {path} on {addr} failed: {e}")),
            Ok(Ok(resp)) if resp.status().is_success() => Ok(()),
            Ok(Ok(resp)) => Err(format!("GET {path} on {addr} answered {}", resp.status())),
        }
    }
}
