//! An operator to benchmark: one started on a temporary data dir and a free port, or one already running.

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

pub struct Operator {
    pub api: String,
    child: Option<Child>,
    _data: Option<tempfile::TempDir>,
}

impl Operator {
    /// Takes the operator at `api`, or starts `bin` (default: `aenv-operator` next to this binary).
    pub async fn start_or_attach(
        api: Option<String>,
        bin: Option<PathBuf>,
        http: &reqwest::Client,
    ) -> anyhow::Result<Self> {
        if let Some(api) = api {
            let api = api.trim_end_matches('/').to_string();
            http.get(format!("{api}/healthz")).send().await.with_context(|| format!("no operator answers at {api}"))?;
            return Ok(Operator { api, child: None, _data: None });
        }
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        Self::start_on(bin, http, &format!("127.0.0.1:{port}"), "127.0.0.1:0").await
    }

    /// Starts `bin` (default: `aenv-operator` next to this binary) with its API on `api_addr` and its proxy on
    /// `proxy_addr`, on a temporary data dir.
    pub async fn start_on(
        bin: Option<PathBuf>,
        http: &reqwest::Client,
        api_addr: &str,
        proxy_addr: &str,
    ) -> anyhow::Result<Self> {
        Self::start_with(bin, http, api_addr, proxy_addr, &[]).await
    }

    /// [`Operator::start_on`] with more arguments for `serve`.
    pub async fn start_with(
        bin: Option<PathBuf>,
        http: &reqwest::Client,
        api_addr: &str,
        proxy_addr: &str,
        extra: &[String],
    ) -> anyhow::Result<Self> {
        let bin = match bin {
            Some(b) => b,
            None => std::env::current_exe()?.with_file_name("aenv-operator"),
        };
        if !bin.is_file() {
            bail!(
                "{} not found: build it (cargo build --release -p aenv-operator) or pass --operator-bin or --api",
                bin.display()
            );
        }
        let data = tempfile::tempdir()?;
        let log = std::fs::File::create(data.path().join("operator.log"))?;
        let child = Command::new(&bin)
            .args(["serve", "--api-listen", api_addr, "--proxy-listen", proxy_addr, "--data-dir"])
            .arg(data.path().join("store"))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let api = format!("http://{api_addr}");
        let mut op = Operator { api, child: Some(child), _data: Some(data) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if http.get(format!("{}/healthz", op.api)).send().await.is_ok() {
                return Ok(op);
            }
            if let Some(status) = op.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("the operator exited with {status} before its API answered");
            }
            if Instant::now() > deadline {
                bail!("the operator's API did not answer within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Operator {
    /// The process id of an operator this benchmark started.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
