//! Sandbox operations, side by side with the daemon in one run:
//! - `exec`: `POST /env-instance/{id}/exec` of `true`, against Docker's own exec API (create, start attached,
//!   inspect: what the operator does) and the `docker exec` CLI, interleaved round by round; then a 1 MiB upload and
//!   download round trip, checked byte for byte;
//! - `pause`: `POST .../pause` and `.../resume`: the answer, and the time until the daemon reports the container
//!   paused (or running again), against Docker's pause and unpause API calls on a plain container;
//! - `fork`: a fork of N from one snapshot until all run, against N cold creates until all run;
//! - `memory`: the operator's peak resident memory (VmHWM, reset before each load) under N collected execs at
//!   once each printing 2 × 16 MiB of NUL bytes, then N uploads of 60 MiB at once, then N downloads of them; side
//!   by side with a baseline build (`--baseline-bin`) when one is given.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bollard::{
    Docker,
    exec::{StartExecOptions, StartExecResults},
    models::ExecConfig,
};
use futures::StreamExt;
use serde_json::{Value, json};

use crate::{
    containers::{Api, Common, docker, run_id, setup, wait_gone},
    stats::summarize,
};

fn line(name: &str, samples: &[Duration]) {
    if let Some(s) = summarize(samples) {
        let f = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
        println!("  {name:<28} median {:>9}  p90 {:>9}  min {:>9}  (n={})", f(s.median), f(s.p90), f(s.min), s.n);
    }
}

fn median(samples: &[Duration]) -> f64 {
    summarize(samples).map_or(f64::NAN, |s| s.median.as_secs_f64())
}

#[derive(clap::Args, Debug)]
pub struct ExecArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, default_value_t = 50)]
    rounds: usize,
}

async fn running(api: &Api, name: &str) -> anyhow::Result<String> {
    let id = api.create(name).await?;
    api.wait_running(&id).await?;
    Ok(id)
}

/// Docker's exec API as the operator drives it: create, start attached (output drained), inspect.
async fn docker_exec(docker: &Docker, container: &str) -> anyhow::Result<i64> {
    let config = ExecConfig {
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        cmd: Some(vec!["true".into()]),
        ..Default::default()
    };
    let created = docker.create_exec(container, config).await?;
    if let StartExecResults::Attached { mut output, .. } = docker
        .start_exec(&created.id, Some(StartExecOptions { detach: false, tty: false, output_capacity: None }))
        .await?
    {
        while output.next().await.is_some() {}
    }
    loop {
        let inspect = docker.inspect_exec(&created.id).await?;
        if inspect.running != Some(true) {
            return Ok(inspect.exit_code.unwrap_or(-1));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

pub async fn exec(args: ExecArgs) -> anyhow::Result<()> {
    let (_op, api) = setup(&args.common).await?;
    let docker_api = Docker::connect_with_defaults()?;
    let id = running(&api, &format!("{}-exec", run_id())).await?;
    let url = format!("{}/env-instance/{id}/exec", api.base);
    let (mut ours, mut daemon, mut cli) = (Vec::new(), Vec::new(), Vec::new());
    // One of each first, unmeasured (connections, caches).
    for round in 0..=args.rounds {
        let t = Instant::now();
        let v: Value = api.http.post(&url).json(&json!({"command": ["true"]})).send().await?.json().await?;
        let took = t.elapsed();
        if v["data"]["exitCode"] != 0 {
            bail!("exec through the operator failed: {v}");
        }
        let t = Instant::now();
        let code = docker_exec(&docker_api, &id).await?;
        let took_daemon = t.elapsed();
        if code != 0 {
            bail!("exec through the daemon's API exited {code}");
        }
        let t = Instant::now();
        docker(&["exec", &id, "true"])?;
        let took_cli = t.elapsed();
        if round > 0 {
            ours.push(took);
            daemon.push(took_daemon);
            cli.push(took_cli);
        }
    }
    println!("exec `true` in one running sandbox, interleaved, {} rounds:", args.rounds);
    line("aenv-operator POST /exec", &ours);
    line("Docker exec API (bollard)", &daemon);
    line("docker exec (CLI)", &cli);
    println!("  ratio of medians (operator / daemon's API): {:.2}", median(&ours) / median(&daemon));

    // 1 MiB of noise up and down.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let bytes: Vec<u8> = (0..1 << 20)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 32) as u8
        })
        .collect();
    let (mut up, mut down) = (Vec::new(), Vec::new());
    for _ in 0..10 {
        let files = format!("{}/env-instance/{id}/files?path=/tmp/blob", api.base);
        let t = Instant::now();
        let resp = api.http.put(&files).body(bytes.clone()).send().await?;
        up.push(t.elapsed());
        if !resp.status().is_success() {
            bail!("upload: {}", resp.text().await?);
        }
        let t = Instant::now();
        let back = api.http.get(&files).send().await?.bytes().await?;
        down.push(t.elapsed());
        if back.as_ref() != bytes.as_slice() {
            bail!("the 1 MiB file came back different ({} bytes)", back.len());
        }
    }
    println!("1 MiB file, 10 round trips, byte-identical:");
    line("PUT /files", &up);
    line("GET /files", &down);
    api.delete(&id).await?;
    wait_gone(&id).await
}

#[derive(clap::Args, Debug)]
pub struct PauseArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, default_value_t = 20)]
    rounds: usize,
}

async fn paused(docker: &Docker, name: &str) -> anyhow::Result<bool> {
    let c = docker.inspect_container(name, None::<bollard::query_parameters::InspectContainerOptions>).await?;
    Ok(c.state.and_then(|s| s.paused).unwrap_or(false))
}

async fn until_paused(docker: &Docker, name: &str, want: bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while paused(docker, name).await? != want {
        if Instant::now() > deadline {
            bail!("{name} not {} after 20 s", if want { "paused" } else { "running" });
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

pub async fn pause(args: PauseArgs) -> anyhow::Result<()> {
    let (_op, api) = setup(&args.common).await?;
    let docker_api = Docker::connect_with_defaults()?;
    let ours_id = running(&api, &format!("{}-pause", run_id())).await?;
    // The peer is a plain container: one of the operator's would be unpaused by it (its spec says not paused).
    let peer_id = docker(&[
        "run",
        "-d",
        "--rm",
        "--name",
        &format!("{}-peer", run_id()),
        crate::containers::IMAGE,
        "sleep",
        "3600",
    ])?
    .trim()
    .to_string();
    let (mut pause_answer, mut pause_frozen, mut resume_answer, mut resume_thawed) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut daemon_pause, mut daemon_unpause) = (Vec::new(), Vec::new());
    for _ in 0..args.rounds {
        let t = Instant::now();
        let resp = api.http.post(format!("{}/env-instance/{ours_id}/pause", api.base)).send().await?;
        pause_answer.push(t.elapsed());
        if !resp.status().is_success() {
            bail!("pause: {}", resp.text().await?);
        }
        until_paused(&docker_api, &ours_id, true).await?;
        pause_frozen.push(t.elapsed());
        let t = Instant::now();
        let resp = api.http.post(format!("{}/env-instance/{ours_id}/resume", api.base)).send().await?;
        resume_answer.push(t.elapsed());
        if !resp.status().is_success() {
            bail!("resume: {}", resp.text().await?);
        }
        until_paused(&docker_api, &ours_id, false).await?;
        resume_thawed.push(t.elapsed());

        let t = Instant::now();
        docker_api.pause_container(&peer_id).await.context("docker pause")?;
        daemon_pause.push(t.elapsed());
        let t = Instant::now();
        docker_api.unpause_container(&peer_id).await.context("docker unpause")?;
        daemon_unpause.push(t.elapsed());
    }
    println!("pause and resume of one sandbox, {} rounds:", args.rounds);
    line("POST /pause answered", &pause_answer);
    line("... container frozen", &pause_frozen);
    line("POST /resume answered", &resume_answer);
    line("... container thawed", &resume_thawed);
    line("Docker pause API", &daemon_pause);
    line("Docker unpause API", &daemon_unpause);
    api.delete(&ours_id).await?;
    docker(&["rm", "-f", &peer_id])?;
    wait_gone(&ours_id).await?;
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct ForkArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, default_value_t = 8)]
    count: usize,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

pub async fn fork(args: ForkArgs) -> anyhow::Result<()> {
    let (_op, api) = setup(&args.common).await?;
    let source = running(&api, &format!("{}-fork", run_id())).await?;
    let (mut forks, mut colds) = (Vec::new(), Vec::new());
    let mut made = Vec::new();
    let mut templates = Vec::new();
    for round in 0..args.rounds {
        let t = Instant::now();
        let v: Value = api
            .http
            .post(format!("{}/env-instance/{source}/fork", api.base))
            .json(&json!({"count": args.count}))
            .send()
            .await?
            .json()
            .await?;
        let ids: Vec<String> = v["data"]["instances"]
            .as_array()
            .with_context(|| format!("fork refused: {v}"))?
            .iter()
            .filter_map(|i| i.as_str().map(str::to_string))
            .collect();
        for id in &ids {
            api.wait_running(id).await?;
        }
        forks.push(t.elapsed());
        templates.push(v["data"]["envName"].as_str().unwrap_or_default().to_string());
        made.extend(ids);

        let t = Instant::now();
        let mut ids = Vec::new();
        for i in 0..args.count {
            ids.push(api.create(&format!("{}-cold{round}x{i}", run_id())).await?);
        }
        for id in &ids {
            api.wait_running(id).await?;
        }
        colds.push(t.elapsed());
        made.extend(ids);
    }
    println!("{} instances until all run, {} rounds:", args.count, args.rounds);
    line(&format!("fork of {} (snapshot + creates)", args.count), &forks);
    line(&format!("{} cold creates", args.count), &colds);
    println!("  ratio of medians (fork / cold): {:.2}", median(&forks) / median(&colds));
    for id in made.iter().chain([&source]) {
        api.delete(id).await?;
    }
    // The snapshots' templates go once their instances are gone (their images with them).
    for id in made.iter().chain([&source]) {
        wait_gone(id).await?;
    }
    for t in templates {
        if let Some((name, version)) = t.split_once('@') {
            api.http.delete(format!("{}/env/{name}/{version}", api.base)).send().await?;
        }
    }
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct MemoryArgs {
    /// The operator binary to measure (default: aenv-operator next to this binary).
    #[arg(long)]
    operator_bin: Option<std::path::PathBuf>,
    /// Another build to measure the same way, side by side (such as one built from an earlier commit).
    #[arg(long)]
    baseline_bin: Option<std::path::PathBuf>,
    /// Requests at once in each load.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// NUL bytes each exec prints on stdout and again on stderr (MiB).
    #[arg(long, default_value_t = 16)]
    exec_mib: u64,
    /// Bytes of each upload (MiB).
    #[arg(long, default_value_t = 60)]
    upload_mib: usize,
}

/// Peak resident memory (MiB) of one build under each load.
struct MemoryRun {
    idle: u64,
    execs: u64,
    uploads: u64,
    downloads: u64,
    statuses: String,
}

async fn memory_of(bin: Option<std::path::PathBuf>, args: &MemoryArgs, label: &str) -> anyhow::Result<MemoryRun> {
    let http = reqwest::Client::builder().pool_max_idle_per_host(64).build()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let op = crate::operator::Operator::start_on(bin, &http, &format!("127.0.0.1:{port}"), "127.0.0.1:0").await?;
    let pid = op.pid().context("the benchmark started the operator")?;
    let api = Api { http: http.clone(), base: op.api.clone() };
    let id = running(&api, &format!("{}-memory-{label}", run_id())).await?;
    let mib = |kib: u64| kib / 1024;
    let (_, idle) = aenv_testkit::resident_kib(pid).context("reading /proc/PID/status")?;
    aenv_testkit::reset_peak_memory(pid);
    let execs = aenv_testkit::collected_exec_load(&http, &op.api, &id, args.concurrency, args.exec_mib << 20).await;
    let (exec_peak, _) = aenv_testkit::resident_kib(pid).context("reading /proc/PID/status")?;
    aenv_testkit::reset_peak_memory(pid);
    let uploads = aenv_testkit::upload_load(&http, &op.api, &id, args.concurrency, args.upload_mib << 20).await;
    let (upload_peak, _) = aenv_testkit::resident_kib(pid).context("reading /proc/PID/status")?;
    aenv_testkit::reset_peak_memory(pid);
    let downloads = aenv_testkit::download_load(&http, &op.api, &id, args.concurrency).await;
    let (download_peak, _) = aenv_testkit::resident_kib(pid).context("reading /proc/PID/status")?;
    api.http.delete(format!("{}/env-instance/{id}", op.api)).send().await?;
    let statuses = format!(
        "execs {:?}, uploads {:?}, downloads {:?}",
        execs
            .iter()
            .map(|(s, t)| format!("{s}{}", if *t == Some(true) { " truncated" } else { "" }))
            .collect::<Vec<_>>(),
        uploads,
        downloads.iter().map(|(s, _, read)| format!("{s} {} MiB", read >> 20)).collect::<Vec<_>>()
    );
    Ok(MemoryRun {
        idle: mib(idle),
        execs: mib(exec_peak),
        uploads: mib(upload_peak),
        downloads: mib(download_peak),
        statuses,
    })
}

pub async fn memory(args: MemoryArgs) -> anyhow::Result<()> {
    let mut runs = vec![("this build", memory_of(args.operator_bin.clone(), &args, "new").await?)];
    if let Some(baseline) = &args.baseline_bin {
        runs.push(("baseline", memory_of(Some(baseline.clone()), &args, "base").await?));
    }
    println!(
        "peak resident memory of the operator (VmHWM, MiB), {} at once: collected execs of 2 x {} MiB of NUL bytes; uploads of {} MiB, and downloads of them",
        args.concurrency, args.exec_mib, args.upload_mib
    );
    println!("  {:<12} {:>8} {:>8} {:>8} {:>9}", "", "idle", "execs", "uploads", "downloads");
    for (name, run) in &runs {
        println!(
            "  {name:<12} {:>8} {:>8} {:>8} {:>9}   ({})",
            run.idle, run.execs, run.uploads, run.downloads, run.statuses
        );
    }
    Ok(())
}
