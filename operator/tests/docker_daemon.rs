//! Connection modes and daemon outages, against private Docker daemons the tests start (root only): a TLS
//! endpoint that verifies client certificates, and a daemon restarted under a running operator.

use std::time::Duration;

use aenv_testkit::{Operator, PrivateDaemon, TEST_IMAGE, create_body, unique_name};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_aenv-operator");

fn running(v: &Value) -> bool {
    v["data"]["status"] == "Running"
}

fn serve_output(args: &[&str]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(BIN)
        .args(["serve", "--api-listen", "127.0.0.1:0", "--proxy-listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args(args)
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test]
async fn tls_with_client_certificates() {
    let daemon = PrivateDaemon::start(true, false);
    let host = daemon.tls_host.clone().unwrap();
    let certs = daemon.client_certs().display().to_string();
    let op =
        Operator::start(BIN, &["--docker-host", &host, "--docker-cert-path", &certs, "--docker-tls-verify", "1"]).await;
    let name = unique_name("tls");
    let (code, body) =
        op.post_json("/env-instance", &create_body(&name, TEST_IMAGE, json!({"readiness": false}))).await;
    assert_eq!(code, 200, "{body}");
    let id = body["data"]["id"].as_str().unwrap().to_string();
    let v = op.wait_for(&id, Duration::from_secs(30), running).await;
    assert!(v["data"]["ip"].as_str().is_some_and(|ip| ip.starts_with("172.31.")), "on the daemon's own bridge: {v}");
    let ps = daemon.docker(&["ps", "--filter", &format!("label=aenv.env_name={name}"), "--format", "{{.Names}}"]);
    assert_eq!(String::from_utf8_lossy(&ps.stdout).trim(), id, "the container runs on the TLS daemon");
    op.delete(&format!("/env-instance/{id}")).await;
    op.wait_for(&id, Duration::from_secs(10), |v| v["code"] == 404).await;

    // A client certificate from another CA is refused, and the operator says what to check.
    let rogue = daemon.rogue_certs().display().to_string();
    let (ok, stderr) =
        serve_output(&["--docker-host", &host, "--docker-cert-path", &rogue, "--docker-tls-verify", "1"]);
    assert!(!ok, "a certificate the daemon does not trust must not connect");
    assert!(stderr.contains(&host) && stderr.contains("with TLS"), "{stderr}");
    // So is a client without TLS.
    let (ok, stderr) = serve_output(&["--docker-host", &host]);
    assert!(!ok);
    assert!(stderr.contains("does not answer"), "{stderr}");
    // And a certificate directory without the files is a clear configuration error.
    let empty = tempfile::tempdir().unwrap();
    let (ok, stderr) = serve_output(&[
        "--docker-host",
        &host,
        "--docker-cert-path",
        &empty.path().display().to_string(),
        "--docker-tls-verify",
        "1",
    ]);
    assert!(!ok);
    assert!(stderr.contains("ca.pem is missing"), "{stderr}");
}

#[tokio::test]
async fn operator_converges_after_the_daemon_restarts() {
    let mut daemon = PrivateDaemon::start(false, true);
    let socket = daemon.socket.clone();
    let op = Operator::start(BIN, &["--docker-host", &socket, "--resync-interval", "1s"]).await;
    let name = unique_name("restart");
    let body = create_body(&name, TEST_IMAGE, json!({"readiness": false}));
    let (_, a) = op.post_json("/env-instance", &body).await;
    let a = a["data"]["id"].as_str().unwrap().to_string();
    op.wait_for(&a, Duration::from_secs(30), running).await;

    daemon.stop();
    // Not ready while the engine does not answer, and says why.
    let resp = op.http.get(op.url("/readyz")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    let ready: Value = resp.json().await.unwrap();
    assert_eq!(ready["status"], "not ready");
    // Reads keep working from the store; a create is accepted and waits for the daemon, saying why.
    let (code, v) = op.get(&format!("/env-instance/{a}")).await;
    assert_eq!((code, v["data"]["status"].as_str()), (200, Some("Running")));
    let (code, b) = op.post_json("/env-instance", &body).await;
    assert_eq!(code, 200, "{b}");
    let b = b["data"]["id"].as_str().unwrap().to_string();
    let waiting = op
        .wait_for(&b, Duration::from_secs(10), |v| {
            v["data"]["message"].as_str().is_some_and(|m| m.contains("waiting for the engine"))
        })
        .await;
    assert_eq!(waiting["data"]["status"], "Pending");

    daemon.start_again();
    op.wait_for(&b, Duration::from_secs(40), running).await;
    assert_eq!(op.http.get(op.url("/readyz")).send().await.unwrap().status().as_u16(), 200);
    op.wait_for(&a, Duration::from_secs(5), running).await;
    // The event stream is back: a container removed by hand is noticed.
    let rm = daemon.docker(&["rm", "-f", &a]);
    assert!(rm.status.success());
    op.wait_for(&a, Duration::from_secs(10), |v| v["data"]["status"] == "Terminated").await;
}

/// A daemon restart stops a warm pool's sandboxes: the pool sees them fail, replaces them, and is full again.
#[tokio::test]
async fn a_warm_pool_refills_after_the_daemon_restarts() {
    let mut daemon = PrivateDaemon::start(false, false);
    let socket = daemon.socket.clone();
    let op = Operator::start(BIN, &["--docker-host", &socket, "--resync-interval", "1s"]).await;
    let name = unique_name("poolrestart");
    let body = json!({"name": name, "version": "1.0.0", "artifacts": [{"type": "image", "content": TEST_IMAGE}]});
    assert_eq!(op.post_json("/env", &body).await.0, 200);
    let pool = json!({"name": "warm", "envName": format!("{name}@1.0.0"), "replicas": 2});
    assert_eq!(op.post_json("/env-pool", &pool).await.0, 200);
    let ready = |want: u64| {
        let op = &op;
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            loop {
                let (_, p) = op.get("/env-pool/warm").await;
                if p["data"]["ready"].as_u64() == Some(want) {
                    return;
                }
                assert!(std::time::Instant::now() < deadline, "{p}\n{}", op.log());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    ready(2).await;
    let names = |d: &PrivateDaemon| {
        let out = d.docker(&["ps", "--filter", &format!("label=aenv.env_name={name}"), "--format", "{{.Names}}"]);
        let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout).split_whitespace().map(String::from).collect();
        v.sort();
        v
    };
    let before = names(&daemon);
    assert_eq!(before.len(), 2);

    daemon.stop();
    daemon.start_again();
    // The stopped sandboxes are replaced, not reused: two new ones run.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let after = names(&daemon);
        if after.len() == 2 && after.iter().all(|n| !before.contains(n)) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{before:?} then {after:?}\n{}", op.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ready(2).await;
}

/// Memory checkpoints are detected at start from the daemon's own /info, and reported on /readyz: off on a daemon
/// without experimental mode; on an experimental one, whether criu is there.
#[tokio::test]
async fn memory_checkpoint_support_is_detected_from_the_daemon_and_reported() {
    let plain = PrivateDaemon::start(false, false);
    let op = Operator::start(BIN, &["--docker-host", &plain.socket]).await;
    let ready: Value = op.http.get(op.url("/readyz")).send().await.unwrap().json().await.unwrap();
    assert_eq!(ready["memoryCheckpoints"]["available"], false, "{ready}");
    assert!(ready["memoryCheckpoints"]["reason"].as_str().unwrap().contains("experimental mode is off"), "{ready}");
    drop(op);
    drop(plain);

    let experimental = PrivateDaemon::start_with_config(false, false, r#"{"experimental": true}"#);
    let info = experimental.docker(&["info", "--format", "{{.ExperimentalBuild}}"]);
    assert_eq!(String::from_utf8_lossy(&info.stdout).trim(), "true", "the private daemon is not experimental");
    let op = Operator::start(BIN, &["--docker-host", &experimental.socket]).await;
    let ready: Value = op.http.get(op.url("/readyz")).send().await.unwrap().json().await.unwrap();
    let reason = ready["memoryCheckpoints"]["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("experimental mode is on"), "{ready}");
    // Available only where criu is installed and `criu check` passes on this kernel (it does not in a Firecracker
    // VM: its vdso cannot be read).
    let criu_works = std::process::Command::new("sh")
        .args(["-c", "command -v criu >/dev/null && criu check >/dev/null 2>&1"])
        .status()
        .unwrap()
        .success();
    assert_eq!(ready["memoryCheckpoints"]["available"], criu_works, "{ready}");
    eprintln!("memoryCheckpoints on an experimental daemon: {}", ready["memoryCheckpoints"]);
}

/// A daemon killed (-9) in the middle of a burst of creates and started again: every instance the API accepted
/// runs in the end. A start the daemon was in the middle of may leave the runtime a task for that container, and
/// the restarted daemon then refuses each start of it ("task ... already exists"); the operator makes such a
/// container (one that never ran) afresh instead of giving up on it. Several rounds, since where the kill lands
/// decides what it leaves behind.
#[tokio::test]
async fn every_instance_accepted_around_a_daemon_killed_mid_burst_runs_after_its_restart() {
    let mut daemon = PrivateDaemon::start_with_own_containerd();
    let socket = daemon.socket.clone();
    let op = Operator::start(BIN, &["--docker-host", &socket, "--resync-interval", "1s"]).await;
    let name = unique_name("burst");
    let body = create_body(&name, TEST_IMAGE, json!({"readiness": false, "ttl": "30m"}));
    let mut accepted: Vec<String> = Vec::new();
    for round in 0..3u64 {
        let creates: Vec<_> = (0..24)
            .map(|i| {
                let (http, url, body) = (op.http.clone(), op.url("/env-instance"), body.clone());
                tokio::spawn(async move {
                    // Spread over the kill: some before, some while the daemon is down, some after.
                    tokio::time::sleep(Duration::from_millis(i * 25)).await;
                    let resp = http.post(url).json(&body).send().await.ok()?;
                    let v: Value = resp.json().await.ok()?;
                    v["data"]["id"].as_str().map(String::from)
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(150 + round * 100)).await;
        daemon.kill9();
        tokio::time::sleep(Duration::from_millis(300)).await;
        daemon.start_again();
        for c in creates {
            if let Some(id) = c.await.unwrap() {
                accepted.push(id);
            }
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            let mut pending = Vec::new();
            for id in &accepted {
                let (_, v) = op.get(&format!("/env-instance/{id}")).await;
                assert_ne!(v["data"]["status"], "Failed", "round {round}: {id} failed: {v}\n{}", op.log());
                if !running(&v) {
                    pending.push((id.clone(), v["data"]["message"].clone()));
                }
            }
            if pending.is_empty() {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "round {round}: not running: {pending:?}\n{}", op.log());
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    assert!(accepted.len() >= 24, "most creates were accepted: {}", accepted.len());
}
