//! `aenv-bench compose`: a compose stack from create to Running, through aenv-operator's REST API against
//! `docker compose up -d` of the same file followed by polling until the main container runs, so both sides
//! measure the same thing: every `depends_on` condition met and the main service started. Rounds are
//! interleaved (the side that goes first alternates) and each stack is removed, untimed, before the next.

use std::{
    collections::HashMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use bollard::{
    Docker,
    query_parameters::{ListContainersOptionsBuilder, ListNetworksOptionsBuilder},
};
use serde_json::{Value, json};

use crate::{
    operator::Operator,
    stats::{ms, summarize},
};

/// Two services: `main` starts once `side` is healthy (its healthcheck probes every 500 ms).
pub const DEFAULT_FILE: &str = r#"services:
  main:
    image: aenv-test/sandbox:local
    labels: ["aenv.main=true"]
    command: ["sh", "-c", "while true; do wget -qO- http://side:8081/health >/dev/null; sleep 1; done"]
    depends_on:
      side:
        condition: service_healthy
  side:
    image: aenv-test/sandbox:local
    healthcheck:
      test: ["CMD", "wget", "-qO-", "http://127.0.0.1:8081/health"]
      interval: 500ms
      timeout: 2s
      retries: 20
"#;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Measured rounds (each: one stack through the operator, one through docker compose).
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Unmeasured rounds first (page cache, images, the operator's first reconcile).
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// The compose file (default: two services, main depends_on side being healthy; image aenv-test/sandbox:local).
    #[arg(long)]
    file: Option<PathBuf>,
    /// The file's main service (its container `<project>-<main>-1` is what the compose side waits for).
    #[arg(long, default_value = "main")]
    main: String,
    /// A running operator's API (default: start one on a temporary data dir).
    #[arg(long)]
    api: Option<String>,
    /// The operator binary to start (default: aenv-operator next to this binary).
    #[arg(long)]
    operator_bin: Option<PathBuf>,
    /// DOCKER_CONFIG holding cli-plugins/docker-compose (default: $AENV_COMPOSE_DOCKER_CONFIG, else
    /// .venv/docker-config, which scripts/install-compose.sh fills).
    #[arg(long)]
    compose_docker_config: Option<PathBuf>,
    /// Give up on one stack after this many seconds.
    #[arg(long, default_value_t = 60)]
    timeout_secs: u64,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let yaml = match &args.file {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
        None => DEFAULT_FILE.to_string(),
    };
    let docker_config = args
        .compose_docker_config
        .clone()
        .or_else(|| std::env::var_os("AENV_COMPOSE_DOCKER_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(".venv/docker-config"));
    if !docker_config.join("cli-plugins/docker-compose").is_file() {
        bail!(
            "no docker compose plugin in {}: run scripts/install-compose.sh, or pass --compose-docker-config",
            docker_config.display()
        );
    }
    let docker = Docker::connect_with_defaults()?;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
    let op = Operator::start_or_attach(args.api.clone(), args.operator_bin.clone(), &http).await?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("compose.yaml");
    std::fs::write(&file, &yaml)?;
    let timeout = Duration::from_secs(args.timeout_secs);
    let bench =
        Bench { docker, http, api: op.api.clone(), yaml, file, docker_config, main: args.main.clone(), timeout };

    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let total = args.warmup + args.rounds;
    for round in 0..total {
        let measured = round >= args.warmup;
        // Alternate which side goes first, so neither always runs on a host the other just warmed or cooled.
        let (a, b) = if round % 2 == 0 {
            let a = bench.ours(round).await?;
            (a, bench.compose(round).await?)
        } else {
            let b = bench.compose(round).await?;
            (bench.ours(round).await?, b)
        };
        eprintln!(
            "round {:>2}{}: aenv-operator {:>7}   docker compose {:>7}",
            round + 1,
            if measured { "" } else { " (warm-up)" },
            ms(a),
            ms(b)
        );
        if measured {
            ours.push(a);
            theirs.push(b);
        }
    }
    let (Some(o), Some(c)) = (summarize(&ours), summarize(&theirs)) else { bail!("no measured rounds") };
    println!("compose stack, create -> Running, {} interleaved rounds ({} warm-up)", o.n, args.warmup);
    println!("{:<16} {:>9} {:>9} {:>9} {:>9}", "", "median", "p90", "min", "max");
    for (name, s) in [("aenv-operator", &o), ("docker compose", &c)] {
        println!("{name:<16} {:>9} {:>9} {:>9} {:>9}", ms(s.median), ms(s.p90), ms(s.min), ms(s.max));
    }
    println!(
        "ratio ours/compose: median {:.2}, p90 {:.2}",
        o.median.as_secs_f64() / c.median.as_secs_f64(),
        o.p90.as_secs_f64() / c.p90.as_secs_f64()
    );
    Ok(())
}

struct Bench {
    docker: Docker,
    http: reqwest::Client,
    api: String,
    yaml: String,
    file: PathBuf,
    docker_config: PathBuf,
    main: String,
    timeout: Duration,
}

impl Bench {
    /// POST the stack, poll until the API says Running; then DELETE it and wait until it is gone (untimed).
    async fn ours(&self, round: usize) -> anyhow::Result<Duration> {
        let body = json!({"name": "bench", "version": "1.0.0",
                          "deployConfig": {"composeFile": self.yaml, "ttl": "10m"}});
        let started = Instant::now();
        let resp: Value = self.http.post(format!("{}/env-instance", self.api)).json(&body).send().await?.json().await?;
        let Some(id) = resp["data"]["id"].as_str().map(str::to_string) else {
            bail!("round {round}: the operator refused the stack: {resp}");
        };
        let elapsed = loop {
            let v: Value = self.http.get(format!("{}/env-instance/{id}", self.api)).send().await?.json().await?;
            match v["data"]["status"].as_str() {
                Some("Running") => break started.elapsed(),
                Some("Failed") | Some("Terminated") => bail!("round {round}: stack {id} did not run: {v}"),
                _ => {}
            }
            if started.elapsed() > self.timeout {
                bail!("round {round}: stack {id} not Running after {:?}: {v}", self.timeout);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        self.http.delete(format!("{}/env-instance/{id}", self.api)).send().await?;
        self.wait_gone("aenv.io/instance", &id).await?;
        Ok(elapsed)
    }

    /// `docker compose up -d`, poll until the main container runs; then `docker compose down -v` (untimed).
    async fn compose(&self, round: usize) -> anyhow::Result<Duration> {
        let project = format!("aenvbench{}r{round}", std::process::id());
        let started = Instant::now();
        self.compose_cli(&project, &["up", "-d"]).await?;
        let main = format!("{project}-{}-1", self.main);
        let elapsed = loop {
            let running = match self.docker.inspect_container(&main, None).await {
                Ok(c) => c.state.and_then(|s| s.running).unwrap_or(false),
                Err(_) => false,
            };
            if running {
                break started.elapsed();
            }
            if started.elapsed() > self.timeout {
                bail!("round {round}: compose project {project}: {main} not running after {:?}", self.timeout);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        self.compose_cli(&project, &["down", "-v", "--timeout", "0"]).await?;
        self.wait_gone("com.docker.compose.project", &project).await?;
        Ok(elapsed)
    }

    async fn compose_cli(&self, project: &str, args: &[&str]) -> anyhow::Result<()> {
        let out = tokio::process::Command::new("docker")
            .env("DOCKER_CONFIG", &self.docker_config)
            .arg("compose")
            .args(["-p", project, "-f"])
            .arg(&self.file)
            .args(args)
            .output()
            .await
            .context("running docker compose")?;
        if !out.status.success() {
            bail!("docker compose {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// Until no container or network carries `key=value`.
    async fn wait_gone(&self, key: &str, value: &str) -> anyhow::Result<()> {
        let filters = HashMap::from([("label".to_string(), vec![format!("{key}={value}")])]);
        let deadline = Instant::now() + self.timeout;
        loop {
            let containers = self
                .docker
                .list_containers(Some(ListContainersOptionsBuilder::default().all(true).filters(&filters).build()))
                .await?;
            let networks = self
                .docker
                .list_networks(Some(ListNetworksOptionsBuilder::default().filters(&filters).build()))
                .await?;
            if containers.is_empty() && networks.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{key}={value} still has objects after {:?}", self.timeout);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
