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
    register_with(http, base, name, json!({})).await
}

/// Registers template `name@1.0.0` of the test image with `deploy` as its deployConfig.
async fn register_with(http: &reqwest::Client, base: &str, name: &str, deploy: Value) -> anyhow::Result<()> {
    let body = json!({"name": name, "version": "1.0.0", "artifacts": [{"type": "image", "content": IMAGE}], "deployConfig": deploy});
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

/// How long the stand-in for an AEnvironment image takes to listen (their Python imports for ~2 s).
const LATE_LISTEN_S: u32 = 2;

/// Times the SDK's `initialize()` cold, side by side: the create answered at once (`--create-wait 0`, upstream's
/// `Pending`) against the answer that waits for readiness (the default), for an image that listens at once and one
/// that listens [`LATE_LISTEN_S`] seconds late; then claims from a warm pool. The SDK always talks to ports 8080 and
/// 8081 of its host: each operator gets a loopback address of its own.
pub async fn sdk(args: SdkArgs) -> anyhow::Result<()> {
    let script = tempfile::NamedTempFile::new()?;
    std::fs::write(script.path(), include_str!("../scripts/sdk_init.py"))?;
    let mut rows = Vec::new();
    for (side, wait) in [(0u32, "0"), (1, "10s")] {
        let host =
            format!("127.78.{}.{}", std::process::id() % 250 + 1, (std::process::id() / 250) % 120 * 2 + 1 + side);
        let http = reqwest::Client::new();
        let extra = ["--create-wait".to_string(), wait.to_string()];
        let _op = Operator::start_with(
            args.operator_bin.clone(),
            &http,
            &format!("{host}:8080"),
            &format!("{host}:8081"),
            &extra,
        )
        .await?;
        let base = format!("http://{host}:8080");
        let run = |env: String, rounds: usize| sdk_rounds(&args.python, script.path(), &host, env, rounds);
        let now = format!("{}-now{side}", run_id());
        let late = format!("{}-late{side}", run_id());
        register(&http, &base, &now).await?;
        register_with(
            &http,
            &base,
            &late,
            json!({"environment_variables": {"AENV_HEALTH_DELAY": LATE_LISTEN_S.to_string()}}),
        )
        .await?;
        // Warm the Python imports once, outside the measurement.
        run(format!("{now}@1.0.0"), 1).await?;
        rows.push((format!("listens at once, --create-wait {wait}"), run(format!("{now}@1.0.0"), args.rounds).await?));
        rows.push((
            format!("listens {LATE_LISTEN_S} s late, --create-wait {wait}"),
            run(format!("{late}@1.0.0"), args.rounds).await?,
        ));
        if side == 1 {
            fill(&http, &base, "sdk", &format!("{now}@1.0.0"), args.rounds + 1).await?;
            let with = run(format!("{now}@1.0.0"), args.rounds).await?;
            let v: Value = http.get(format!("{base}/env-pool/sdk")).send().await?.json().await?;
            rows.push((format!("warm pool (hits {})", v["data"]["hits"]), with));
        }
    }
    let summaries: Vec<_> = rows.iter().map(|(label, secs)| (label, summarize(secs))).collect();
    println!("SDK Environment.initialize() to healthy, cold unless pooled (n={} each):", args.rounds);
    for (label, s) in &summaries {
        let Some(s) = s else { bail!("no samples for {label}") };
        println!("  {label:<40} median {:>8}  p90 {:>8}  min {:>8}", ms(s.median), ms(s.p90), ms(s.min));
    }
    let median = |i: usize| summaries[i].1.as_ref().map_or(f64::NAN, |s| s.median.as_secs_f64());
    println!("  ratio waiting / at once, listens at once: {:.3}", median(2) / median(0));
    println!("  ratio waiting / at once, listens late:    {:.3}", median(3) / median(1));
    println!(
        "  late listener, waiting, minus its {LATE_LISTEN_S} s boot: {:.3} s",
        median(3) - f64::from(LATE_LISTEN_S)
    );
    Ok(())
}

/// `rounds` timed `initialize()` calls of the real SDK against the operator on `host`.
async fn sdk_rounds(
    python: &std::path::Path,
    script: &std::path::Path,
    host: &str,
    env: String,
    rounds: usize,
) -> anyhow::Result<Vec<Duration>> {
    let out = tokio::process::Command::new(python)
        .arg(script)
        .arg(host)
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
    Ok(v["seconds"].as_array().into_iter().flatten().filter_map(Value::as_f64).map(Duration::from_secs_f64).collect())
}
