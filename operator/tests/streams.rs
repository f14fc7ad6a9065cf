//! Streams and memory against the real binary and the real Docker daemon, as a hostile tenant would try them:
//! abandoned log follows of a silent sandbox and abandoned proxied SSE streams of a quiet upstream give their
//! descriptors back; a streamed exec whose reader never reads is killed at its timeout and its connection closed;
//! a ninth heavy request of one owner is refused with 429 and Retry-After; collected execs of 2 × 16 MiB of NUL
//! bytes, 60 MiB uploads and 60 MiB downloads, eight at once, keep the operator's resident memory below 300 MiB.

use std::time::{Duration, Instant};

use aenv_testkit::{Operator, create_body, docker, docker_ok, unique_name};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_aenv-operator");

/// A busybox image unlike the usual test image: no EXPOSE, nothing written to stdout or stderr, an HTTP server on
/// port 7070 (not 8081) whose `/cgi-bin/events` answers SSE headers and a comment, then nothing for two minutes.
fn quiet_image() -> &'static str {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    const TAG: &str = "aenv-test/streams-quiet:local";
    BUILT.get_or_init(|| {
        if docker(&["image", "inspect", TAG]).status.success() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        for d in ["bin", "tmp", "srv/cgi-bin", "proc", "sys", "dev", "etc"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let busybox = ["/bin/busybox", "/usr/bin/busybox"].into_iter().find(|p| std::path::Path::new(p).exists());
        std::fs::copy(busybox.expect("busybox-static on the host"), root.join("bin/busybox")).unwrap();
        for applet in ["sh", "httpd", "sleep", "yes", "head", "cat", "ps"] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
        std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n").unwrap();
        let events = "#!/bin/sh\necho 'Content-Type: text/event-stream'\necho\necho ': open'\nexec sleep 120\n";
        std::fs::write(root.join("srv/cgi-bin/events"), events).unwrap();
        std::fs::write(root.join("serve"), "#!/bin/sh\nexec httpd -f -p 7070 -h /srv 2>/dev/null\n").unwrap();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "chmod 755 {0}/serve {0}/srv/cgi-bin/events && chmod 1777 {0}/tmp && tar -C {0} -cf {1} .",
                root.display(),
                dir.path().join("root.tar").display()
            ))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        docker_ok(&[
            "import",
            "-c",
            "CMD [\"/serve\"]",
            "-c",
            "ENV PATH=/bin",
            dir.path().join("root.tar").to_str().unwrap(),
            TAG,
        ]);
    });
    TAG
}

async fn running_instance(op: &Operator, name: &str, image: &str) -> (String, String) {
    owned_instance(op, name, image, "test").await
}

async fn owned_instance(op: &Operator, name: &str, image: &str, owner: &str) -> (String, String) {
    let mut create = create_body(name, image, json!({"ttl": "20m", "readiness": false}));
    create["owner"] = Value::from(owner);
    let (status, body) = op.post_json("/env-instance", &create).await;
    assert_eq!(status, 200, "{body}");
    let id = body["data"]["id"].as_str().unwrap().to_string();
    let v = op.wait_for(&id, Duration::from_secs(90), |v| v["data"]["status"] == "Running").await;
    (id, v["data"]["ip"].as_str().unwrap_or_default().to_string())
}

/// The operator's open descriptors.
fn open_fds(op: &Operator) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", op.pid().expect("the operator runs"))).map(|d| d.count()).unwrap_or(0)
}

/// Sends `request` on a new connection to `addr` and reads until the end of the answer's head.
async fn open_stream(addr: &str, request: &str) -> tokio::net::TcpStream {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut byte))
            .await
            .expect("the answer's head comes")
            .unwrap();
        assert!(n == 1, "the connection closed before the answer's head: {}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    stream
}

/// Opens `total` streams with `request` (in rounds of 50, under the per-address cap), drops them, and waits for
/// the operator's descriptors to come back to `baseline` (a few of slack for the daemon's pooled connections).
async fn abandon_and_count(op: &Operator, addr: &str, request: &str, total: usize, what: &str) {
    let baseline = open_fds(op);
    let mut peak = baseline;
    for _ in 0..total / 50 {
        let mut open = Vec::new();
        for _ in 0..50 {
            open.push(open_stream(addr, request).await);
        }
        peak = peak.max(open_fds(op));
        drop(open);
    }
    assert!(peak >= baseline + 50, "{what}: the streams were open at once ({baseline} → {peak} descriptors)");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = open_fds(op);
        if now <= baseline + 10 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {total} abandoned streams left the operator at {now} descriptors (baseline {baseline}, peak {peak}) 30 s later"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Finding: `?follow=true` of a sandbox that writes nothing kept the Docker connection of every abandoned follow
/// open, until the container's next line (never).
#[tokio::test]
async fn abandoned_log_follows_of_a_silent_sandbox_give_their_descriptors_back() {
    let op = Operator::start(BIN, &[]).await;
    let (id, _) = running_instance(&op, &unique_name("quiet-logs"), quiet_image()).await;
    let addr = format!("127.0.0.1:{}", op.port);
    let request = format!("GET /env-instance/{id}/logs?follow=true HTTP/1.1\r\nHost: aenv\r\n\r\n");
    // One first, so that lazily opened things (the daemon's connection pool) are in the baseline.
    drop(open_stream(&addr, &request).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    abandon_and_count(&op, &addr, &request, 200, "log follows").await;
}

/// Finding: the proxy's upstream connection to a quiet SSE endpoint stayed open after its client left.
#[tokio::test]
async fn abandoned_proxied_sse_streams_of_a_quiet_upstream_give_their_descriptors_back() {
    let op = Operator::start(BIN, &[]).await;
    let (_, ip) = running_instance(&op, &unique_name("quiet-sse"), quiet_image()).await;
    let request = format!(
        "GET /cgi-bin/events HTTP/1.1\r\nHost: aenv\r\nAccept: text/event-stream\r\nAEnvCore-MCPProxy-URL: http://{ip}:7070\r\n\r\n"
    );
    let addr = op.proxy_addr.clone();
    drop(open_stream(&addr, &request).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    abandon_and_count(&op, &addr, &request, 200, "proxied SSE streams").await;
}

/// Whether `marker` is in the command line of a process of `container`.
fn runs_in(container: &str, marker: &str) -> bool {
    let out = docker(&["top", container, "-eo", "pid,args"]);
    String::from_utf8_lossy(&out.stdout).contains(marker)
}

/// Finding: a streamed exec whose reader never reads ran past its timeout (the engine waited on the full
/// channel, not on the deadline) until the connection closed.
#[tokio::test]
async fn a_streamed_exec_whose_reader_never_reads_is_killed_at_its_timeout_and_its_stream_closed() {
    let op = Operator::start(BIN, &[]).await;
    let (id, _) = running_instance(&op, &unique_name("stalled"), quiet_image()).await;
    let marker = format!("stall-{}", unique_name("m"));
    let body = json!({"command": ["yes", marker], "timeout": 3}).to_string();
    let request = format!(
        "POST /env-instance/{id}/exec?stream=true HTTP/1.1\r\nHost: aenv\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    // A small receive window, and nothing ever read: the operator's writes block at once.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(format!("127.0.0.1:{}", op.port).parse().unwrap()).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(60);
    while !runs_in(&id, &marker) {
        assert!(Instant::now() < deadline, "the command never started\n{}", op.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Killed at its timeout (3 s), give or take a loaded machine, though nobody reads.
    let deadline = started + Duration::from_secs(20);
    while runs_in(&id, &marker) {
        assert!(
            Instant::now() < deadline,
            "the command still runs {:?} after its start, past its 3 s timeout, with a reader that never reads",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // And the connection is closed: what was sent drains, then the end (within the grace after the timeout).
    let mut buf = vec![0u8; 64 * 1024];
    let closed_by = Instant::now() + Duration::from_secs(45);
    loop {
        let left = closed_by.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(_)) => {}
            Err(_) => panic!("the stalled exec's connection is still open {:?} after its start", started.elapsed()),
        }
    }
}

/// `--max-heavy-requests-per-owner`: beyond it a request of that owner is refused with 429 and Retry-After, and
/// another owner is not held up.
#[tokio::test]
async fn heavy_requests_beyond_the_per_owner_bound_get_429_with_retry_after() {
    let op = Operator::start(BIN, &["--max-heavy-requests-per-owner", "2"]).await;
    let (id, _) = running_instance(&op, &unique_name("heavy"), quiet_image()).await;
    let (other, _) = owned_instance(&op, &unique_name("heavy-other"), quiet_image(), "someone-else").await;
    let url = op.url(&format!("/env-instance/{id}/exec?stream=true"));
    let mut held = Vec::new();
    for _ in 0..2 {
        let resp = op.http.post(&url).json(&json!({"command": ["sleep", "30"], "timeout": 30})).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        held.push(resp);
    }
    let resp = op.http.put(op.url(&format!("/env-instance/{id}/files?path=/tmp/x"))).body("x").send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 429, "a third heavy request of the owner");
    assert_eq!(resp.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    let body: Value = resp.json().await.unwrap();
    assert!(body["message"].as_str().unwrap_or_default().contains("--max-heavy-requests-per-owner"), "{body}");
    // Without tokens the instance's owner counts: another owner's instance is served.
    let (status, body) = op.post_json(&format!("/env-instance/{other}/exec"), &json!({"command": ["true"]})).await;
    assert_eq!(status, 200, "{body}");
    // Ended requests free their places.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = op.post_json(&format!("/env-instance/{id}/exec"), &json!({"command": ["true"]})).await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "places were not freed: {status} {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

const MIB: u64 = 1024 * 1024;

/// Finding: a collected exec's answer and an upload were held whole (and more than once): eight collected execs
/// of 2 × 16 MiB of NUL bytes peaked the operator at 1,445 MiB, eight 60 MiB uploads at 860 MiB; a download was
/// held whole twice (the archive, then the file's bytes).
#[tokio::test]
async fn eight_big_execs_uploads_and_downloads_keep_the_operator_below_300_mib() {
    let op = Operator::start(BIN, &[]).await;
    let (id, _) = running_instance(&op, &unique_name("memory"), quiet_image()).await;
    let pid = op.pid().unwrap();
    let api = format!("http://127.0.0.1:{}", op.port);
    let http = reqwest::Client::new();

    aenv_testkit::reset_peak_memory(pid);
    let answers = aenv_testkit::collected_exec_load(&http, &api, &id, 8, 16 * MIB).await;
    let (exec_peak, _) = aenv_testkit::resident_kib(pid).unwrap();
    assert!(answers.iter().all(|a| *a == (200, Some(true))), "each answer is whole and says truncated: {answers:?}");

    aenv_testkit::reset_peak_memory(pid);
    let statuses = aenv_testkit::upload_load(&http, &api, &id, 8, 60 * MIB as usize).await;
    let (upload_peak, _) = aenv_testkit::resident_kib(pid).unwrap();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}\n{}", op.log());
    let (status, body) = op
        .post_json(&format!("/env-instance/{id}/exec"), &json!({"command": ["sh", "-c", "wc -c < /tmp/load-7"]}))
        .await;
    assert_eq!((status, body["data"]["stdout"].as_str()), (200, Some(&*format!("{}\n", 60 * MIB))), "{body}");

    // The eight files back, at once, read as they come: each whole, its length announced.
    aenv_testkit::reset_peak_memory(pid);
    let downloads = aenv_testkit::download_load(&http, &api, &id, 8).await;
    let (download_peak, _) = aenv_testkit::resident_kib(pid).unwrap();
    let whole = (200, Some(60 * MIB), 60 * MIB);
    assert!(downloads.iter().all(|d| *d == whole), "{downloads:?}\n{}", op.log());

    eprintln!(
        "peak resident: execs {} MiB, uploads {} MiB, downloads {} MiB",
        exec_peak / 1024,
        upload_peak / 1024,
        download_peak / 1024
    );
    assert!(exec_peak < 300 * 1024, "8 collected execs of 2 × 16 MiB peaked the operator at {} MiB", exec_peak / 1024);
    assert!(upload_peak < 300 * 1024, "8 uploads of 60 MiB peaked the operator at {} MiB", upload_peak / 1024);
    assert!(download_peak < 300 * 1024, "8 downloads of 60 MiB peaked the operator at {} MiB", download_peak / 1024);
}
