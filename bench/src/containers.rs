//! Single-container benchmarks, each side by side with the Docker CLI in one run:
//! - `create`: one instance from the REST call to `Running` in the API, against `docker run -d` of the same image;
//! - `burst`: 100 creates at concurrency 8 until all run, against `docker run -d` at the same concurrency;
//! - `reads`: `GET /env-instance/{id}` and a filtered list with 1,000 live instances (wrk), the operator's
//!   resident memory, and the cost of one resync (its one list call);
//! - `delete`: the API's answer time and the time until the container is gone, against `docker rm -f`.

use std::{
    path::PathBuf,
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::{
    operator::Operator,
    stats::{ms, summarize},
};

pub(crate) const IMAGE: &str = "aenv-test/sandbox:local";

#[derive(clap::Args, Debug, Clone)]
pub struct Common {
    /// A running operator's API (default: start one on a temporary data dir).
    #[arg(long)]
    pub(crate) api: Option<String>,
    /// The operator binary to start (default: aenv-operator next to this binary).
    #[arg(long)]
    operator_bin: Option<PathBuf>,
}

fn body(name: &str) -> Value {
    json!({"name": name, "version": "1", "artifacts": [{"type": "image", "content": IMAGE}],
           "deployConfig": {"arguments": ["sleep", "3600"], "readiness": false, "ttl": "1h"}})
}

pub(crate) fn docker(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("docker").args(args).output().context("running the docker CLI")?;
    if !out.status.success() {
        bail!("docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) fn run_id() -> String {
    format!("b{}", std::process::id() % 100_000)
}

pub(crate) struct Api {
    pub(crate) http: reqwest::Client,
    pub(crate) base: String,
}

impl Api {
    pub(crate) async fn create(&self, name: &str) -> anyhow::Result<String> {
        let v: Value =
            self.http.post(format!("{}/env-instance", self.base)).json(&body(name)).send().await?.json().await?;
        v["data"]["id"].as_str().map(str::to_string).with_context(|| format!("create refused: {v}"))
    }

    async fn status(&self, id: &str) -> anyhow::Result<String> {
        let v: Value = self.http.get(format!("{}/env-instance/{id}", self.base)).send().await?.json().await?;
        Ok(v["data"]["status"].as_str().unwrap_or_default().to_string())
    }

    pub(crate) async fn wait_running(&self, id: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            match self.status(id).await?.as_str() {
                "Running" => return Ok(()),
                "Failed" | "Terminated" => bail!("instance {id} did not run"),
                _ if Instant::now() > deadline => bail!("instance {id} not Running in 120 s"),
                _ => tokio::time::sleep(Duration::from_millis(2)).await,
            }
        }
    }

    pub(crate) async fn delete(&self, id: &str) -> anyhow::Result<()> {
        self.http.delete(format!("{}/env-instance/{id}", self.base)).send().await?;
        Ok(())
    }
}

pub(crate) async fn setup(common: &Common) -> anyhow::Result<(Operator, Api)> {
    let http = reqwest::Client::builder().pool_max_idle_per_host(64).build()?;
    let op = Operator::start_or_attach(common.api.clone(), common.operator_bin.clone(), &http).await?;
    let base = op.api.clone();
    Ok((op, Api { http, base }))
}

fn container_gone(name: &str) -> bool {
    Command::new("docker").args(["inspect", name]).output().map(|o| !o.status.success()).unwrap_or(false)
}

pub(crate) async fn wait_gone(name: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !container_gone(name) {
        if Instant::now() > deadline {
            bail!("container {name} still there after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

pub(crate) fn report(what: &str, ours: &[Duration], peer: &[Duration], peer_name: &str) {
    let (Some(o), Some(p)) = (summarize(ours), summarize(peer)) else { return };
    println!("{what}: n={}", o.n);
    println!("  aenv-operator   median {:>8}  p90 {:>8}  min {:>8}", ms(o.median), ms(o.p90), ms(o.min));
    println!("  {peer_name:<15} median {:>8}  p90 {:>8}  min {:>8}", ms(p.median), ms(p.p90), ms(p.min));
    println!("  ratio of medians (ours / {peer_name}): {:.2}", o.median.as_secs_f64() / p.median.as_secs_f64());
}

#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, default_value_t = 20)]
    rounds: usize,
}

/// Create to Running, one at a time, interleaved with `docker run -d` (which returns once the container started).
pub async fn create(args: CreateArgs) -> anyhow::Result<()> {
    let (_op, api) = setup(&args.common).await?;
    let (mut ours, mut peer) = (Vec::new(), Vec::new());
    let prefix = run_id();
    for round in 0..=args.rounds {
        let name = format!("{prefix}-create");
        let peer_name = format!("{prefix}-docker-{round}");
        let measure_ours = async || -> anyhow::Result<(Duration, String)> {
            let t = Instant::now();
            let id = api.create(&name).await?;
            api.wait_running(&id).await?;
            Ok((t.elapsed(), id))
        };
        let measure_peer = || -> anyhow::Result<Duration> {
            let t = Instant::now();
            docker(&["run", "-d", "--name", &peer_name, IMAGE, "sleep", "3600"])?;
            Ok(t.elapsed())
        };
        let (o, p) = if round % 2 == 0 {
            let o = measure_ours().await?;
            (o, measure_peer()?)
        } else {
            let p = measure_peer()?;
            (measure_ours().await?, p)
        };
        if round > 0 {
            ours.push(o.0);
            peer.push(p);
        }
        api.delete(&o.1).await?;
        docker(&["rm", "-f", &peer_name])?;
        wait_gone(&o.1).await?;
    }
    report("create -> Running, one at a time", &ours, &peer, "docker run -d");
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct BurstArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, default_value_t = 100)]
    count: usize,
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
}

/// A burst: `count` creates at `concurrency`, until every instance runs; against `docker run -d` driven the same.
pub async fn burst(args: BurstArgs) -> anyhow::Result<()> {
    let (_op, api) = setup(&args.common).await?;
    let api = Arc::new(api);
    let prefix = run_id();
    let mut results = Vec::new();
    for side in ["aenv-operator", "docker run -d"] {
        let permits = Arc::new(Semaphore::new(args.concurrency));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..args.count {
            let (permits, api, name) = (permits.clone(), api.clone(), format!("{prefix}-burst"));
            let docker_name = format!("{prefix}-dburst-{i}");
            let ours = side == "aenv-operator";
            tasks.push(tokio::spawn(async move {
                let _p = permits.acquire_owned().await?;
                if ours {
                    api.create(&name).await
                } else {
                    tokio::task::spawn_blocking(move || {
                        docker(&["run", "-d", "--name", &docker_name, IMAGE, "sleep", "3600"]).map(|_| docker_name)
                    })
                    .await?
                }
            }));
        }
        let mut ids = Vec::new();
        for t in tasks {
            ids.push(t.await??);
        }
        if side == "aenv-operator" {
            for id in &ids {
                api.wait_running(id).await?;
            }
        }
        let elapsed = started.elapsed();
        let rate = args.count as f64 / elapsed.as_secs_f64();
        println!(
            "burst of {} at concurrency {}: {side}: all running after {}, {rate:.1}/s",
            args.count,
            args.concurrency,
            ms(elapsed)
        );
        results.push(rate);
        for id in &ids {
            if side == "aenv-operator" {
                api.delete(id).await?;
            }
        }
        if side == "aenv-operator" {
            for id in &ids {
                wait_gone(id).await?;
            }
        } else {
            let mut args = vec!["rm", "-f"];
            args.extend(ids.iter().map(String::as_str));
            docker(&args)?;
        }
    }
    println!("  ratio of rates (ours / docker run -d): {:.2}", results[0] / results[1]);
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct ReadsArgs {
    #[command(flatten)]
    common: Common,
    /// Live instances during the measurement.
    #[arg(long, default_value_t = 1000)]
    instances: usize,
    /// Instances per environment name (a list returns this many).
    #[arg(long, default_value_t = 10)]
    per_env: usize,
    /// Seconds of load per measurement.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// wrk connections.
    #[arg(long, default_value_t = 32)]
    connections: usize,
}

fn wrk(url: &str, seconds: u64, connections: usize) -> anyhow::Result<(f64, String)> {
    let out = Command::new("wrk")
        .args(["-t", "1", "-c", &connections.to_string(), "-d", &format!("{seconds}s"), "--latency", url])
        .output()
        .context("wrk is needed for the read benchmark (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk's output:\n{text}"))?;
    let p99 =
        text.lines().find(|l| l.trim_start().starts_with("99%")).map(|l| l.trim().to_string()).unwrap_or_default();
    Ok((rps, p99))
}

pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Reads with many live instances, memory, and the resync's list call.
pub async fn reads(args: ReadsArgs) -> anyhow::Result<()> {
    let (op, api) = setup(&args.common).await?;
    let api = Arc::new(api);
    let prefix = run_id();
    let rss_empty = op.pid().and_then(rss_kib);
    let started = Instant::now();
    let permits = Arc::new(Semaphore::new(16));
    let mut tasks = Vec::new();
    for i in 0..args.instances {
        let (permits, api) = (permits.clone(), api.clone());
        let name = format!("{prefix}-r{}", i / args.per_env.max(1));
        tasks.push(tokio::spawn(async move {
            let _p = permits.acquire_owned().await?;
            api.create(&name).await
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await??);
    }
    for id in &ids {
        api.wait_running(id).await?;
    }
    println!("{} instances running after {}", ids.len(), ms(started.elapsed()));
    if let (Some(before), Some(after)) = (rss_empty, op.pid().and_then(rss_kib)) {
        println!(
            "operator resident memory: {} MiB empty, {} MiB with {} live instances",
            before / 1024,
            after / 1024,
            ids.len()
        );
    }
    let (get_rps, get_p99) = wrk(&format!("{}/env-instance/{}", api.base, ids[0]), args.seconds, args.connections)?;
    println!("GET /env-instance/{{id}}: {get_rps:.0} requests/s, latency {get_p99}");
    let (list_rps, list_p99) =
        wrk(&format!("{}/env-instance?envName={prefix}-r0", api.base), args.seconds, args.connections)?;
    println!("GET /env-instance?envName= ({} items): {list_rps:.0} requests/s, latency {list_p99}", args.per_env);
    // One resync = one filtered `docker ps -a`; time the same call the engine makes.
    let filter = "label=aenv.io/managed-by=aenv-operator";
    let mut samples = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        docker(&["ps", "-a", "-q", "--filter", filter])?;
        samples.push(t.elapsed());
    }
    if let Some(s) = summarize(&samples) {
        println!("resync cost: one list call over {} containers, median {}", ids.len(), ms(s.median));
    }
    let metrics = api.http.get(format!("{}/metrics", api.base)).send().await?.text().await?;
    for line in metrics.lines().filter(|l| {
        l.starts_with("aenv_engine_call_seconds_sum{op=\"list\"}")
            || l.starts_with("aenv_engine_call_seconds_count{op=\"list\"}")
    }) {
        println!("  {line}");
    }
    let started = Instant::now();
    for id in &ids {
        api.delete(id).await?;
    }
    for id in &ids {
        wait_gone(id).await?;
    }
    println!("removed {} instances in {}", ids.len(), ms(started.elapsed()));
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct DeleteArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, default_value_t = 20)]
    rounds: usize,
}

/// DELETE: the API's answer, and until the container is gone; against `docker rm -f` (which returns when it is).
pub async fn delete(args: DeleteArgs) -> anyhow::Result<()> {
    let (_op, api) = setup(&args.common).await?;
    let prefix = run_id();
    let (mut answer, mut gone, mut peer) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..args.rounds {
        let id = api.create(&format!("{prefix}-del")).await?;
        api.wait_running(&id).await?;
        let peer_name = format!("{prefix}-ddel-{round}");
        docker(&["run", "-d", "--name", &peer_name, IMAGE, "sleep", "3600"])?;
        let t = Instant::now();
        api.delete(&id).await?;
        answer.push(t.elapsed());
        wait_gone(&id).await?;
        gone.push(t.elapsed());
        let t = Instant::now();
        docker(&["rm", "-f", &peer_name])?;
        peer.push(t.elapsed());
    }
    if let Some(a) = summarize(&answer) {
        println!("DELETE answered: median {}  p90 {}", ms(a.median), ms(a.p90));
    }
    report("DELETE until the container is gone", &gone, &peer, "docker rm -f");
    Ok(())
}
