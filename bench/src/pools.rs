//! Warm-pool benchmarks, side by side in one run:
//! - `claim`: with a pool of `--pool` ready sandboxes, SDK-form creates one at a time, each answered `Running`
//!   from the pool (the POST's answer is the whole wait), interleaved with the cold path (the same template with
//!   one more variable, so no pool serves it: create → Running) and `docker run -d`; then a burst of `--pool`
//!   claims at once against the refilled pool; and the operator's resident memory per waiting sandbox.
//! - `sdk`: time to a healthy `Environment("name@version").initialize()` through the real Python SDK, without a
//!   pool and with one.

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::{
    containers::{Common, docker, rss_kib, run_id, setup, wait_gone},
    operator::Operator,
    stats::{ms, summarize},
};

const IMAGE: &str = "aenv-test/sandbox:local";

/// The SDK's create body for `env` (`name@version`), with `extra` variables beside the SDK's own.
fn sdk_body(name: &str, version: &str, extra: Value) -> Value {
    let mut vars = json!({"envNAME": name, "envversion": version});
    if let (Some(v), Some(extra)) = (vars.as_object_mut(), extra.as_object()) {
        v.extend(extra.clone());
    }
    json!({"envName": format!("{name}@{version}"), "datasource": "", "ttl": "30m", "environment_variables": vars,
           "arguments": []})
}

async fn post(http: &reqwest::Client, url: String, body: &Value) -> anyhow::Result<Value> {
    let v: Value = http.post(url).json(body).send().await?.json().await?;
    if v["success"] != true {
        bail!("refused: {v}");
    }
    Ok(v)
}

/// Registers the test image as `name@1.0.0` (the image answers `/health` on 8081, so readiness is probed).
async fn register(http: &reqwest::Client, base: &str, name: &str) -> anyhow::Result<()> {
    let body = json!({"name": name, "version": "1.0.0", "artifacts": [{"type": "image", "content": IMAGE}]});
    post(http, format!("{base}/env"), &body).await.map(|_| ())
}

/// Makes pool `pool` of `replicas` and waits until that many are ready.
async fn fill(http: &reqwest::Client, base: &str, pool: &str, env: &str, replicas: usize) -> anyhow::Result<()> {
    let body = json!({"name": pool, "envName": env, "replicas": replicas});
    post(http, format!("{base}/env-pool"), &body).await?;
    wait_ready(http, base, pool, replicas).await
}

async fn scale(http: &reqwest::Client, base: &str, pool: &str, replicas: usize) -> anyhow::Result<()> {
    let v: Value =
        http.put(format!("{base}/env-pool/{pool}")).json(&json!({"replicas": replicas})).send().await?.json().await?;
    if v["success"] != true {
        bail!("scaling refused: {v}");
    }
    Ok(())
}

async fn wait_ready(http: &reqwest::Client, base: &str, pool: &str, replicas: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let v: Value = http.get(format!("{base}/env-pool/{pool}")).send().await?.json().await?;
        if v["data"]["ready"].as_u64() >= Some(replicas as u64) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("pool {pool} not filled in 300 s: {v}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[derive(clap::Args, Debug)]
pub struct ClaimArgs {
    #[command(flatten)]
    common: Common,
    /// Claims made one at a time.
    #[arg(long, default_value_t = 30)]
    rounds: usize,
    /// Size of the pool, and of the burst.
    #[arg(long, default_value_t = 50)]
    pool: usize,
}

pub async fn claim(args: ClaimArgs) -> anyhow::Result<()> {
    let (op, api) = setup(&args.common).await?;
    let (http, base) = (api.http.clone(), api.base.clone());
    let name = format!("{}-claim", run_id());
    register(&http, &base, &name).await?;
    fill(&http, &base, "bench", &format!("{name}@1.0.0"), args.pool).await?;
    // Memory per waiting sandbox, at the margin: the pool at its size, then at twice its size, each settled (the
    // fixed costs of the first pool and of the runtime are out of the difference).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_before = op.pid().and_then(rss_kib);
    scale(&http, &base, "bench", 2 * args.pool).await?;
    wait_ready(&http, &base, "bench", 2 * args.pool).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_after = op.pid().and_then(rss_kib);
    scale(&http, &base, "bench", args.pool).await?;

    let (mut claims, mut cold, mut peer, mut misses) = (Vec::new(), Vec::new(), Vec::new(), 0);
    let mut made = Vec::new();
    for round in 0..args.rounds {
        let t = Instant::now();
        let v = post(&http, format!("{base}/env-instance"), &sdk_body(&name, "1.0.0", json!({}))).await?;
        let took = t.elapsed();
        if v["data"]["status"] == "Running" {
            claims.push(took);
        } else {
            misses += 1;
        }
        made.push(v["data"]["id"].as_str().unwrap_or_default().to_string());

        let t = Instant::now();
        let v =
            post(&http, format!("{base}/env-instance"), &sdk_body(&name, "1.0.0", json!({"COLD": round.to_string()})))
                .await?;
        let id = v["data"]["id"].as_str().context("no id")?.to_string();
        api.wait_running(&id).await?;
        cold.push(t.elapsed());
        made.push(id);

        let peer_name = format!("{name}-docker-{round}");
        let t = Instant::now();
        docker(&["run", "-d", "--name", &peer_name, IMAGE])?;
        peer.push(t.elapsed());
        docker(&["rm", "-f", &peer_name])?;
    }
    for id in made.drain(..) {
        api.delete(&id).await?;
    }

    // A burst of claims at once against the refilled pool.
    wait_ready(&http, &base, "bench", args.pool).await?;
    let http = Arc::new(http);
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.pool)
        .map(|_| {
            let (http, url, body) = (http.clone(), format!("{base}/env-instance"), sdk_body(&name, "1.0.0", json!({})));
            tokio::spawn(async move { post(&http, url, &body).await.map(|v| (v, started.elapsed())) })
        })
        .collect();
    let (mut burst_running, mut burst_last) = (0, Duration::ZERO);
    for t in tasks {
        let (v, at) = t.await??;
        if v["data"]["status"] == "Running" {
            burst_running += 1;
            burst_last = burst_last.max(at);
        }
        made.push(v["data"]["id"].as_str().unwrap_or_default().to_string());
    }
    for id in &made {
        api.delete(id).await?;
    }
    http.delete(format!("{base}/env-pool/bench")).send().await?;

    let (Some(c), Some(k), Some(p)) = (summarize(&claims), summarize(&cold), summarize(&peer)) else {
        bail!("no claim was served from the pool ({misses} misses)");
    };
    println!("claim (SDK-form create answered Running from a pool of {}): n={} misses={misses}", args.pool, c.n);
    println!("  pool hit        median {:>8}  p90 {:>8}  p99 {:>8}", ms(c.median), ms(c.p90), ms(c.p99));
    println!("  cold to Running median {:>8}  p90 {:>8}  p99 {:>8}", ms(k.median), ms(k.p90), ms(k.p99));
    println!("  docker run -d   median {:>8}  p90 {:>8}  p99 {:>8}", ms(p.median), ms(p.p90), ms(p.p99));
    println!(
        "  ratio of medians: hit / cold {:.3}, hit / docker run -d {:.3}",
        c.median.as_secs_f64() / k.median.as_secs_f64(),
        c.median.as_secs_f64() / p.median.as_secs_f64()
    );
    println!(
        "burst: {} claims at once, {burst_running} answered Running, the last after {}",
        args.pool,
        ms(burst_last)
    );
    if let (Some(before), Some(after)) = (rss_before, rss_after) {
        let per = (after.saturating_sub(before)) as f64 / args.pool as f64;
        println!(
            "operator memory: {before} KiB with {} waiting, {after} KiB with {}: {per:.1} KiB per waiting sandbox",
            args.pool,
            2 * args.pool
        );
    }
    for id in &made {
        wait_gone(id).await.ok();
    }
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct SdkArgs {
    /// The operator binary to start (default: aenv-operator next to this binary).
    #[arg(long)]
    operator_bin: Option<PathBuf>,
    /// The Python with aenvironment==0.1.7 installed (scripts/test makes .venv).
    #[arg(long, default_value = ".venv/bin/python")]
    python: PathBuf,
    /// initialize() calls on each side.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
}

/// The SDK always talks to ports 8080 and 8081 of its host: the operator gets a loopback address of its own.
pub async fn sdk(args: SdkArgs) -> anyhow::Result<()> {
    let host = format!("127.78.{}.{}", std::process::id() % 250 + 1, (std::process::id() / 250) % 250 + 1);
    let http = reqwest::Client::new();
    let _op =
        Operator::start_on(args.operator_bin.clone(), &http, &format!("{host}:8080"), &format!("{host}:8081")).await?;
    let base = format!("http://{host}:8080");
    let name = format!("{}-sdk", run_id());
    let env = format!("{name}@1.0.0");
    register(&http, &base, &name).await?;
    let script = tempfile::NamedTempFile::new()?;
    std::fs::write(script.path(), include_str!("../scripts/sdk_init.py"))?;
    let run = |rounds: usize| {
        let (python, script, host, env) = (args.python.clone(), script.path().to_path_buf(), host.clone(), env.clone());
        async move {
            let out = tokio::process::Command::new(&python)
                .arg(&script)
                .arg(&host)
                .arg(&env)
                .arg(rounds.to_string())
                .output()
                .await
                .with_context(|| format!("running {}", python.display()))?;
            if !out.status.success() {
                bail!("the SDK script failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            // The SDK logs to stdout too: the script's answer is its last line.
            let stdout = String::from_utf8_lossy(&out.stdout);
            let last = stdout.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default();
            let v: Value = serde_json::from_str(last).with_context(|| format!("the SDK script's output: {stdout}"))?;
            let secs: Vec<Duration> = v["seconds"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_f64)
                .map(Duration::from_secs_f64)
                .collect();
            Ok(secs)
        }
    };
    // Warm the Python imports once, outside the measurement.
    run(1).await?;
    let without = run(args.rounds).await?;
    fill(&http, &base, "sdk", &env, args.rounds + 1).await?;
    let with = run(args.rounds).await?;
    let v: Value = http.get(format!("{base}/env-pool/sdk")).send().await?.json().await?;
    let (Some(a), Some(b)) = (summarize(&without), summarize(&with)) else { bail!("no samples") };
    println!("SDK Environment.initialize() to healthy: n={}", a.n);
    println!("  without a pool  median {:>8}  p90 {:>8}  min {:>8}", ms(a.median), ms(a.p90), ms(a.min));
    println!(
        "  with a pool     median {:>8}  p90 {:>8}  min {:>8}  (pool hits {})",
        ms(b.median),
        ms(b.p90),
        ms(b.min),
        v["data"]["hits"]
    );
    println!("  ratio of medians (with / without): {:.3}", b.median.as_secs_f64() / a.median.as_secs_f64());
    Ok(())
}
