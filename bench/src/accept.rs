//! `accept`: how many creates per second the API accepts (answers 200, durable) at a fixed concurrency, and how
//! long each answer takes, for two operator binaries side by side in one run (rounds alternate between them).
//!
//! This measures the API's path (checks, quotas, the store's durable write), not Docker: each operator runs with
//! `--no-pull` and the creates name an image that is not on the host, so its controller fails each instance
//! after one daemon call, and with `--max-concurrent-reconciles 1`, so that it does so one at a time beside the
//! burst. The instances count as live (they are not deleted), as accepted creates do.

use std::{
    net::TcpListener,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::json;

use crate::{operator::Operator, stats::summarize};

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The operator binary to measure.
    #[arg(long)]
    operator_bin: PathBuf,
    /// The binary to compare with (such as a build of main).
    #[arg(long)]
    baseline_bin: Option<PathBuf>,
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seconds of creates per round.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Rounds per binary, alternating.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
}

struct Round {
    accepted: usize,
    refused: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

async fn round(bin: &std::path::Path, args: &Args) -> anyhow::Result<Round> {
    let http = reqwest::Client::builder().pool_max_idle_per_host(args.concurrency * 2).build()?;
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let extra: Vec<String> = ["--no-pull", "--max-concurrent-reconciles", "1"].iter().map(|s| s.to_string()).collect();
    let op = Operator::start_with(Some(bin.to_path_buf()), &http, &format!("127.0.0.1:{port}"), "127.0.0.1:0", &extra)
        .await?;
    let body = json!({"name": "accept", "version": "1",
        "artifacts": [{"type": "image", "content": "aenv-bench/absent:never"}],
        "deployConfig": {"readiness": false, "ttl": "24h"}});
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (http, url, body, stop) = (http.clone(), format!("{}/env-instance", op.api), body.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut refused, mut lat) = (0usize, 0usize, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let resp = http.post(&url).json(&body).send().await;
                match resp {
                    Ok(r) if r.status().as_u16() == 200 => {
                        let _ = r.bytes().await;
                        lat.push(t.elapsed());
                        ok += 1;
                    }
                    _ => refused += 1,
                }
            }
            (ok, refused, lat)
        }));
    }
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut r = Round { accepted: 0, refused: 0, elapsed: Duration::ZERO, latencies: Vec::new() };
    for t in tasks {
        let (ok, refused, lat) = t.await?;
        r.accepted += ok;
        r.refused += refused;
        r.latencies.extend(lat);
    }
    r.elapsed = started.elapsed();
    drop(op);
    Ok(r)
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let mut sides: Vec<(String, PathBuf, Vec<Round>)> =
        vec![("measured".into(), args.operator_bin.clone(), Vec::new())];
    if let Some(b) = &args.baseline_bin {
        sides.push(("baseline".into(), b.clone(), Vec::new()));
    }
    for _ in 0..args.rounds {
        for side in sides.iter_mut() {
            let r = round(&side.1, &args).await?;
            side.2.push(r);
        }
    }
    println!(
        "accepted creates at concurrency {}, {} s per round, {} rounds each:",
        args.concurrency, args.seconds, args.rounds
    );
    for (name, bin, rounds) in &sides {
        let accepted: usize = rounds.iter().map(|r| r.accepted).sum();
        let refused: usize = rounds.iter().map(|r| r.refused).sum();
        let secs: f64 = rounds.iter().map(|r| r.elapsed.as_secs_f64()).sum();
        let lat: Vec<Duration> = rounds.iter().flat_map(|r| r.latencies.iter().copied()).collect();
        let Some(s) = summarize(&lat) else {
            println!("  {name}: nothing accepted ({refused} refused)");
            continue;
        };
        println!(
            "  {name:<9} {:>7.0} accepted/s  p50 {:>6}  p90 {:>6}  p99 {:>6}  max {:>6}  ({accepted} accepted, {refused} refused; {})",
            accepted as f64 / secs,
            ms(s.median),
            ms(s.p90),
            ms(s.p99),
            ms(s.max),
            bin.display()
        );
    }
    Ok(())
}
