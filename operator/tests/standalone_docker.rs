//! The standalone operator end to end: the real binary, its embedded store, the real Docker daemon.

use std::time::{Duration, Instant};

use aenv_testkit::{
    LocalRegistry, Operator, TEST_IMAGE, containers_with_label, create_body, docker, docker_ok, inspect, unique_name,
};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_aenv-operator");

fn is_running(v: &Value) -> bool {
    v["data"]["status"] == "Running"
}

async fn create(op: &Operator, name: &str, deploy: Value) -> String {
    let (code, body) = op.post_json("/env-instance", &create_body(name, TEST_IMAGE, deploy)).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["success"], true, "{body}");
    let id = body["data"]["id"].as_str().expect("id").to_string();
    assert!(id.starts_with(&format!("{name}-")) && id.len() == name.len() + 7, "id is <name>-<6 chars>: {id}");
    id
}

#[tokio::test]
async fn create_runs_with_ip_labels_and_limits() {
    let op = Operator::start(BIN, &[]).await;
    let name = unique_name("run");
    let id = create(
        &op,
        &name,
        json!({"cpu": "1C", "memory": "512Mi", "ttl": "1h",
        "environment_variables": {"GREETING": "hi"}}),
    )
    .await;
    let body = op.wait_for(&id, Duration::from_secs(30), is_running).await;
    let ip = body["data"]["ip"].as_str().unwrap_or_default();
    assert!(!ip.is_empty(), "Running carries an IP: {body}");
    assert_eq!(body["data"]["owner"], "test");
    assert_eq!(body["data"]["ttl"], "1h");

    assert_eq!(containers_with_label(&format!("aenv.env_name={name}")), vec![id.clone()]);
    let c = inspect(&id);
    assert_eq!(c["HostConfig"]["NanoCpus"], 1_000_000_000i64);
    assert_eq!(c["HostConfig"]["Memory"], 512i64 * 1024 * 1024);
    assert_eq!(c["NetworkSettings"]["Networks"]["bridge"]["IPAddress"], ip);
    let labels = &c["Config"]["Labels"];
    assert_eq!(labels["aenv.io/instance"], id.as_str());
    assert_eq!(labels["aenv.io/managed-by"], "aenv-operator");
    assert_eq!(labels["aenv.io/owner"], "test");
    assert_eq!(labels["aenv.io/env-version"], "1.0.0");
    assert!(labels["aenv.io/expire-at"].as_str().is_some_and(|s| s.ends_with('Z')));
    assert!(c["Config"]["Env"].as_array().unwrap().iter().any(|e| e == "GREETING=hi"));

    // Lists: by name, by name@version, and everything.
    for query in [format!("?envName={name}"), format!("?envName={name}@1.0.0"), String::new()] {
        let (code, list) = op.get(&format!("/env-instance{query}")).await;
        assert_eq!(code, 200);
        assert!(list["data"].as_array().unwrap().iter().any(|i| i["id"] == id.as_str()), "{query}: {list}");
    }
    let (_, none) = op.get(&format!("/env-instance?envName={name}@9.9.9")).await;
    assert_eq!(none["data"], json!([]));
}

#[tokio::test]
async fn delete_removes_the_container_and_the_record() {
    let op = Operator::start(BIN, &[]).await;
    let name = unique_name("del");
    let id = create(&op, &name, json!({})).await;
    op.wait_for(&id, Duration::from_secs(30), is_running).await;
    let (code, body) = op.delete(&format!("/env-instance/{id}")).await;
    assert_eq!((code, &body["data"]), (200, &json!("Deleted successfully")), "{body}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !containers_with_label(&format!("aenv.env_name={name}")).is_empty() {
        assert!(Instant::now() < deadline, "container still there after DELETE");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    op.wait_for(&id, Duration::from_secs(5), |v| v["code"] == 404).await;
    let (code, _) = op.delete(&format!("/env-instance/{id}")).await;
    assert_eq!(code, 404, "a second DELETE finds nothing");
}

#[tokio::test]
async fn ttl_removes_container_and_record_on_time() {
    let op = Operator::start(BIN, &[]).await;
    let name = unique_name("ttl");
    let accepted = Instant::now();
    let id = create(&op, &name, json!({"ttl": "3s"})).await;
    // Gone, record and container, within 5 s after creation + TTL (the design target is 2 s).
    let deadline = accepted + Duration::from_secs(3 + 5);
    loop {
        let (code, _) = op.get(&format!("/env-instance/{id}")).await;
        let containers = containers_with_label(&format!("aenv.env_name={name}"));
        if code == 404 && containers.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "instance {id} outlived its TTL: code {code}, containers {containers:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let gone_after = accepted.elapsed();
    assert!(gone_after >= Duration::from_millis(2900), "removed before its TTL: {gone_after:?}");
    eprintln!("ttl 3s instance gone {gone_after:?} after creation");
}

#[tokio::test]
async fn kill_during_creates_then_restart_converges() {
    // Answers at once: an answer is the acceptance (recorded durably), not the instance running.
    let mut op = Operator::start(BIN, &["--create-wait", "0"]).await;
    let name = unique_name("kill");
    let body = create_body(&name, TEST_IMAGE, json!({"ttl": "10m"}));
    let mut tasks = Vec::new();
    // A burst of 50 creates, killed part-way.
    for _ in 0..50 {
        let (http, url, body) = (op.http.clone(), op.url("/env-instance"), body.clone());
        tasks.push(tokio::spawn(async move {
            let resp = http.post(url).json(&body).send().await.ok()?;
            let v: Value = resp.json().await.ok()?;
            v["data"]["id"].as_str().map(str::to_string)
        }));
    }
    // Kill once some creates were accepted and others are still in flight.
    let deadline = Instant::now() + Duration::from_secs(20);
    while containers_with_label(&format!("aenv.env_name={name}")).len() < 3 {
        assert!(Instant::now() < deadline, "no container was created");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    op.kill9();
    let mut accepted = Vec::new();
    for t in tasks {
        if let Ok(Some(id)) = t.await {
            accepted.push(id);
        }
    }
    assert!(!accepted.is_empty(), "some creates were accepted before the kill");

    op.restart(BIN).await;
    for id in &accepted {
        op.wait_for(id, Duration::from_secs(90), |v| {
            matches!(v["data"]["status"].as_str(), Some("Running" | "Failed"))
        })
        .await;
    }
    // The store may hold more than the client saw (a create committed whose answer was cut off): every stored
    // instance must run, with exactly one container each, and no container may lack an instance.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (_, list) = op.get(&format!("/env-instance?envName={name}")).await;
        let items = list["data"].as_array().cloned().unwrap_or_default();
        let mut ids: Vec<String> = items.iter().filter_map(|i| i["id"].as_str().map(str::to_string)).collect();
        ids.sort();
        let all_running = items.iter().all(|i| matches!(i["status"].as_str(), Some("Running" | "Failed")));
        let containers = containers_with_label(&format!("aenv.env_name={name}"));
        if all_running && containers == ids {
            for id in &accepted {
                assert!(ids.contains(id), "accepted instance {id} was lost");
            }
            eprintln!("accepted {} (answered), stored {}, containers {}", accepted.len(), ids.len(), containers.len());
            break;
        }
        assert!(Instant::now() < deadline, "no convergence: instances {ids:?}, containers {containers:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn container_removed_by_hand_is_reported() {
    // Events catch it at once; the resync (2 s here) is the backstop.
    let op = Operator::start(BIN, &["--resync-interval", "2s"]).await;
    let name = unique_name("rm");
    let id = create(&op, &name, json!({})).await;
    op.wait_for(&id, Duration::from_secs(30), is_running).await;
    docker_ok(&["rm", "-f", &id]);
    let body = op
        .wait_for(&id, Duration::from_secs(3), |v| {
            matches!(v["data"]["status"].as_str(), Some("Terminated" | "Failed"))
        })
        .await;
    let message = body["data"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("removed outside the operator"), "{body}");
    assert!(containers_with_label(&format!("aenv.env_name={name}")).is_empty(), "it is not created again");
}

#[tokio::test]
async fn container_that_exits_by_itself_fails_with_its_exit_code() {
    let op = Operator::start(BIN, &[]).await;
    let name = unique_name("exit");
    let id = create(&op, &name, json!({"arguments": ["sh", "-c", "sleep 0.3; exit 3"]})).await;
    let body = op.wait_for(&id, Duration::from_secs(30), |v| v["data"]["status"] == "Failed").await;
    assert!(body["data"]["message"].as_str().unwrap_or_default().contains("code 3"), "{body}");
}

#[tokio::test]
async fn missing_image_fails_with_the_daemons_message() {
    // A registry on loopback, listed: the operator refuses such registries otherwise (--registry-allow).
    let registry = LocalRegistry::start();
    let op = Operator::start(BIN, &["--registry-allow", &registry.host()]).await;
    let name = unique_name("img");
    let body = create_body(&name, "aenv-test/does-not-exist:never", json!({"imagePullPolicy": "Never"}));
    let (_, created) = op.post_json("/env-instance", &body).await;
    let id = created["data"]["id"].as_str().unwrap().to_string();
    let failed = op.wait_for(&id, Duration::from_secs(30), |v| v["data"]["status"] == "Failed").await;
    assert!(failed["data"]["message"].as_str().unwrap_or_default().contains("not on the Docker host"), "{failed}");

    // IfNotPresent pulls: from a registry on loopback that lacks the image, the pull fails and says why; one
    // that has it serves it and the instance runs.
    let body = create_body(&name, &format!("{}/aenv/none:1", registry.host()), json!({}));
    let (_, created) = op.post_json("/env-instance", &body).await;
    let id = created["data"]["id"].as_str().unwrap().to_string();
    let failed = op.wait_for(&id, Duration::from_secs(60), |v| v["data"]["status"] == "Failed").await;
    assert!(failed["data"]["message"].as_str().unwrap_or_default().contains("pulling image"), "{failed}");
    let image = registry.push(TEST_IMAGE, &format!("aenv/{name}:1"));
    let (_, created) = op.post_json("/env-instance", &create_body(&name, &image, json!({"readiness": false}))).await;
    let id = created["data"]["id"].as_str().unwrap().to_string();
    op.wait_for(&id, Duration::from_secs(60), is_running).await;
    assert_eq!(inspect(&id)["Config"]["Image"], image.as_str());
    // --no-pull (an offline host): a missing image fails at once, without asking any registry.
    let offline = Operator::start(BIN, &["--no-pull", "--registry-allow", &registry.host()]).await;
    let (_, created) = offline
        .post_json("/env-instance", &create_body(&name, &format!("{}/aenv/other:1", registry.host()), json!({})))
        .await;
    let id = created["data"]["id"].as_str().unwrap().to_string();
    let failed = offline.wait_for(&id, Duration::from_secs(30), |v| v["data"]["status"] == "Failed").await;
    assert!(failed["data"]["message"].as_str().unwrap_or_default().contains("--no-pull"), "{failed}");
    docker(&["rmi", &image]);
}

#[tokio::test]
async fn bad_input_is_refused_with_the_field_and_changes_nothing() {
    let op = Operator::start(BIN, &[]).await;
    let name = unique_name("bad");
    let image = json!([{"type": "image", "content": TEST_IMAGE}]);
    let cases: Vec<(String, &str)> = vec![
        ("{\"name\": ".to_string(), "not valid JSON"),
        (json!({"name": name, "artifacts": []}).to_string(), "artifacts"),
        (json!({"name": name, "artifacts": [{"type": "code", "content": "x"}]}).to_string(), "artifacts"),
        (json!({"name": name, "artifacts": image, "deployConfig": {"ttl": "soon"}}).to_string(), "deployConfig.ttl"),
        (json!({"name": name, "artifacts": image, "deployConfig": {"cpu": "fast"}}).to_string(), "deployConfig.cpu"),
        (
            json!({"name": name, "artifacts": image, "deployConfig": {"memory": "lots"}}).to_string(),
            "deployConfig.memory",
        ),
        (json!({"name": "Not Valid", "artifacts": image}).to_string(), "`name`"),
    ];
    for (body, field) in &cases {
        let (code, resp) = op.post_raw("/env-instance", body).await;
        assert_eq!(code, 400, "{body} → {resp}");
        assert_eq!(resp["success"], false);
        assert_eq!(resp["code"], 400);
        assert!(resp["message"].as_str().unwrap_or_default().contains(field), "{body} → {resp} lacks {field}");
    }
    for (code, resp) in [op.get("/env-instance/nope-abc123").await, op.delete("/env-instance/nope-abc123").await] {
        assert_eq!(code, 404, "{resp}");
        assert_eq!(resp["success"], false);
    }
    // A body over 1 MiB is refused from its Content-Length, before it is read.
    let status_line = raw_post_status(op.port, 2 * 1024 * 1024).await;
    assert!(status_line.contains(" 413 "), "{status_line}");
    let (_, list) = op.get("/env-instance").await;
    assert_eq!(list["data"], json!([]), "nothing was stored");
    assert!(op.containers().is_empty(), "no container was made");
}

async fn raw_post_status(port: u16, content_length: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let head = format!(
        "POST /env-instance HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {content_length}\r\n\r\n{{"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 256];
    let n = s.read(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or_default().to_string()
}

#[tokio::test]
async fn unreachable_daemon_at_start_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(BIN)
        .args([
            "serve",
            "--api-listen",
            "127.0.0.1:0",
            "--docker-host",
            "unix:///nonexistent/docker.sock",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Docker daemon at unix:///nonexistent/docker.sock"), "{stderr}");
    assert!(stderr.contains("--docker-host"), "the message says what to change: {stderr}");
}

#[tokio::test]
async fn an_operator_id_the_embedded_store_does_not_keep_is_refused_not_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let run = |id: &str| {
        std::process::Command::new(BIN)
            .args(["serve", "--api-listen", "127.0.0.1:0", "--proxy-listen", "127.0.0.1:0", "--operator-id", id])
            .arg("--data-dir")
            .arg(dir.path())
            .output()
            .unwrap()
    };
    let out = run("someone-else");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--operator-id \"someone-else\"") && stderr.contains("embedded store"), "{stderr}");
    // The message names the store's own id; that one is accepted (the operator then runs until stopped).
    let own = stderr.split("operator id \"").nth(1).and_then(|r| r.split('"').next()).unwrap_or_default();
    assert!(!own.is_empty(), "{stderr}");
    let mut child = std::process::Command::new(BIN)
        .args(["serve", "--api-listen", "127.0.0.1:0", "--proxy-listen", "127.0.0.1:0", "--operator-id", own])
        .arg("--data-dir")
        .arg(dir.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(child.try_wait().unwrap().is_none(), "the store's own id is accepted");
    child.kill().unwrap();
    let _ = child.wait();
}

#[tokio::test]
async fn sigterm_with_a_stream_open_drains_in_about_two_seconds_and_says_so() {
    let mut op = Operator::start(BIN, &["--create-wait", "0"]).await;
    let name = unique_name("drain");
    let (code, created) = op.post_json("/env-instance", &create_body(&name, TEST_IMAGE, json!({}))).await;
    assert_eq!(code, 200, "{created}");
    let id = created["data"]["id"].as_str().unwrap().to_string();
    op.wait_for(&id, Duration::from_secs(30), |v| v["data"]["status"] == "Running").await;
    // A stream that never ends by itself: a followed log (as an MCP session's GET stays open).
    let resp = op.http.get(op.url(&format!("/env-instance/{id}/logs?follow=true"))).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let mut resp = resp;
    let pid = op.pid().expect("the operator runs");
    let asked = Instant::now();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap().success());
    // The stream is ended by the operator, and the process exits, within the drain grace and a margin.
    let ended =
        tokio::time::timeout(Duration::from_secs(5), async { while let Ok(Some(_)) = resp.chunk().await {} }).await;
    assert!(ended.is_ok(), "the followed log was still open 5 s after SIGTERM");
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::path::Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
    {
        assert!(Instant::now() < deadline, "the operator did not exit after SIGTERM\n{}", op.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = asked.elapsed();
    assert!(took < Duration::from_secs(3), "draining took {took:?}\n{}", op.log());
    assert!(op.log().contains("draining"), "the log says it drains:\n{}", op.log());
    // What it had accepted is there after a start.
    op.restart(BIN).await;
    let (code, again) = op.get(&format!("/env-instance/{id}")).await;
    assert_eq!(code, 200, "{again}");
}

#[test]
fn docker_daemon_is_there() {
    let out = docker(&["version", "--format", "{{.Server.APIVersion}}"]);
    assert!(out.status.success(), "these tests need a Docker daemon: {}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn orphaned_containers_are_swept_after_the_grace_period_and_others_are_left_alone() {
    let op = Operator::start(BIN, &["--resync-interval", "1s", "--orphan-grace", "2s"]).await;
    let name = unique_name("orphan");
    // A container labelled as this operator's, for an instance it has no record of (as a crash mid-delete of an
    // older version could leave), and one of another operator's.
    let orphan = format!("{name}-zzzzzz");
    let stranger = format!("{name}-yyyyyy");
    let started = Instant::now();
    for (container, operator) in [(&orphan, op.operator_id.as_str()), (&stranger, "someone-else")] {
        docker_ok(&[
            "run",
            "-d",
            "--name",
            container,
            "--label",
            "aenv.io/managed-by=aenv-operator",
            "--label",
            &format!("aenv.io/operator-id={operator}"),
            "--label",
            &format!("aenv.io/instance={container}"),
            "--label",
            &format!("aenv.env_name={name}"),
            TEST_IMAGE,
        ]);
    }
    let deadline = started + Duration::from_secs(10);
    while containers_with_label(&format!("aenv.env_name={name}")).contains(&orphan) {
        assert!(Instant::now() < deadline, "orphan {orphan} was not swept");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Docker reports creation times to the second, so the 2 s grace is honoured to within a second.
    assert!(started.elapsed() >= Duration::from_secs(1), "swept within its grace period");
    assert_eq!(containers_with_label(&format!("aenv.env_name={name}")), vec![stranger.clone()], "not ours: left alone");
    docker_ok(&["rm", "-f", &stranger]);
}
