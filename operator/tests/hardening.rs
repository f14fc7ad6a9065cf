//! Hardening: auth, quotas, rate limits, safe container defaults, observability and logs, against the real binary
//! and the real Docker daemon.

use std::time::{Duration, Instant};

use aenv_testkit::{Operator, TEST_IMAGE, create_body, inspect, unique_name};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_aenv-operator");

fn running(v: &Value) -> bool {
    v["data"]["status"] == "Running"
}

#[tokio::test]
async fn safe_defaults_show_in_docker_inspect_and_the_operator_may_change_them() {
    let op = Operator::start(BIN, &[]).await;
    let name = unique_name("safe");
    let (_, created) = op.post_json("/env-instance", &create_body(&name, TEST_IMAGE, json!({}))).await;
    let id = created["data"]["id"].as_str().unwrap().to_string();
    op.wait_for(&id, Duration::from_secs(30), running).await;
    let host = inspect(&id)["HostConfig"].clone();
    assert_eq!(host["Privileged"], false);
    assert_eq!(host["SecurityOpt"], json!(["no-new-privileges:true"]));
    assert_eq!(host["PidsLimit"], 1024);
    assert_eq!(host["CapDrop"], json!(["ALL"]));
    assert_eq!(
        host["CapAdd"],
        json!(["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "SETPCAP", "NET_BIND_SERVICE"])
    );
    assert_eq!(host["Memory"], 2i64 << 30, "a default memory limit when the request names none");
    // Without NET_RAW, raw sockets (ping) are refused inside the sandbox.
    let ping = aenv_testkit::docker(&["exec", &id, "ping", "-c", "1", "-W", "1", "127.0.0.1"]);
    assert!(!ping.status.success(), "raw sockets must be refused");

    let op = Operator::start(BIN, &["--pids-limit", "64", "--default-memory", "256Mi", "--capabilities", "CHOWN,KILL"])
        .await;
    let (_, created) = op.post_json("/env-instance", &create_body(&name, TEST_IMAGE, json!({}))).await;
    let id = created["data"]["id"].as_str().unwrap().to_string();
    op.wait_for(&id, Duration::from_secs(30), running).await;
    let host = inspect(&id)["HostConfig"].clone();
    assert_eq!((host["PidsLimit"].as_i64(), host["Memory"].as_i64()), (Some(64), Some(256 << 20)));
    assert_eq!(host["CapAdd"], json!(["CHOWN", "KILL"]));
    // A request cannot change them: no deployConfig key reaches them.
    let (code, resp) = op
        .post_json("/env-instance", &create_body(&name, TEST_IMAGE, json!({"privileged": true, "pidsLimit": 0})))
        .await;
    assert_eq!(code, 400, "{resp}");
}

#[tokio::test]
async fn a_reachable_api_needs_tokens_or_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(BIN)
        .args(["serve", "--api-listen", "0.0.0.0:0", "--proxy-listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--tokens-file") && stderr.contains("--insecure"), "{stderr}");
}

fn tokens_file(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("tokens.json");
    std::fs::write(
        &path,
        json!({"tokens": [
            {"token": "alice-token-0123456789", "owner": "alice", "maxInstances": 2},
            {"token": "bob-token-0123456789", "owner": "bob"},
        ]})
        .to_string(),
    )
    .unwrap();
    path
}

#[tokio::test]
async fn tokens_owners_and_caps() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = tokens_file(dir.path()).display().to_string();
    let op =
        Operator::start(BIN, &["--tokens-file", &tokens, "--max-instances", "3", "--api-listen", "0.0.0.0:0"]).await;
    let name = unique_name("auth");
    let body = create_body(&name, TEST_IMAGE, json!({"readiness": false}));
    let create = |token: Option<&str>| {
        let mut req = op.http.post(op.url("/env-instance")).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    // 401s, with AEnvironment's messages.
    for (token, msg) in [(None, "Missing Authorization header"), (Some("not-a-token"), "Invalid token")] {
        let resp = create(token).await.unwrap();
        assert_eq!(resp.status().as_u16(), 401);
        let v: Value = resp.json().await.unwrap();
        assert!(v["message"].as_str().unwrap().contains(msg), "{v}");
    }
    let resp = op.http.get(op.url("/env-instance")).header("authorization", "Token x").send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    // Health and metrics stay open.
    assert_eq!(op.http.get(op.url("/healthz")).send().await.unwrap().status().as_u16(), 200);

    // Alice: the owner is hers whatever the body says; her cap is 2.
    let mut alice = Vec::new();
    for _ in 0..2 {
        let v: Value = create(Some("alice-token-0123456789")).await.unwrap().json().await.unwrap();
        assert_eq!(v["data"]["owner"], "alice", "{v}");
        alice.push(v["data"]["id"].as_str().unwrap().to_string());
    }
    let resp = create(Some("alice-token-0123456789")).await.unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    let v: Value = resp.json().await.unwrap();
    assert!(v["message"].as_str().unwrap().contains("Instance count exceeds limit: 2"), "{v}");
    // Bob sees none of Alice's instances, and cannot delete them.
    let get = |id: &str, token: &str| op.http.get(op.url(&format!("/env-instance/{id}"))).bearer_auth(token).send();
    assert_eq!(get(&alice[0], "bob-token-0123456789").await.unwrap().status().as_u16(), 404);
    assert_eq!(get(&alice[0], "alice-token-0123456789").await.unwrap().status().as_u16(), 200);
    let del = op
        .http
        .delete(op.url(&format!("/env-instance/{}", alice[0])))
        .bearer_auth("bob-token-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(del.status().as_u16(), 404);
    let list: Value = op
        .http
        .get(op.url("/env-instance/list"))
        .bearer_auth("bob-token-0123456789")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"]["items"], json!([]));
    // The global cap (3): Bob gets one, then the operator is full.
    assert_eq!(create(Some("bob-token-0123456789")).await.unwrap().status().as_u16(), 200);
    let resp = create(Some("bob-token-0123456789")).await.unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    let v: Value = resp.json().await.unwrap();
    assert!(v["message"].as_str().unwrap().contains("limit of 3 live instances"), "{v}");
    // Deleting frees a place.
    let del = op
        .http
        .delete(op.url(&format!("/env-instance/{}", alice[0])))
        .bearer_auth("alice-token-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(del.status().as_u16(), 200);
    assert_eq!(create(Some("alice-token-0123456789")).await.unwrap().status().as_u16(), 200);
}

#[tokio::test]
async fn create_rate_limit_answers_429_with_retry_after() {
    let op = Operator::start(BIN, &["--create-rate", "1", "--create-burst", "3"]).await;
    let name = unique_name("rate");
    let body = create_body(&name, TEST_IMAGE, json!({"readiness": false}));
    let mut codes = Vec::new();
    let mut retry_after = None;
    for _ in 0..5 {
        let resp = op.http.post(op.url("/env-instance")).json(&body).send().await.unwrap();
        codes.push(resp.status().as_u16());
        if resp.status().as_u16() == 429 {
            retry_after = resp.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
            let v: Value = resp.json().await.unwrap();
            assert!(v["message"].as_str().unwrap().contains("too many creates"), "{v}");
        }
    }
    assert_eq!(&codes[..3], &[200, 200, 200], "the burst passes: {codes:?}");
    assert_eq!(codes[4], 429, "{codes:?}");
    assert_eq!(retry_after.as_deref(), Some("1"));
    // Reads are not limited.
    for _ in 0..20 {
        assert_eq!(op.get("/env-instance").await.0, 200);
    }
}

#[tokio::test]
async fn logs_metrics_and_readiness_endpoints() {
    let op = Operator::start(BIN, &[]).await;
    let name = unique_name("logs");
    let script = "for i in 1 2 3; do echo line-$i; done; echo oops >&2; while true; do sleep 0.2; echo tick; done";
    let body = create_body(&name, TEST_IMAGE, json!({"arguments": ["sh", "-c", script], "readiness": false}));
    let (_, created) = op.post_json("/env-instance", &body).await;
    let id = created["data"]["id"].as_str().unwrap().to_string();
    op.wait_for(&id, Duration::from_secs(30), running).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let all = op.http.get(op.url(&format!("/env-instance/{id}/logs"))).send().await.unwrap();
    assert_eq!(all.headers()["content-type"], "text/plain; charset=utf-8");
    let all = all.text().await.unwrap();
    for line in ["line-1", "line-2", "line-3", "oops"] {
        assert!(all.lines().any(|l| l == line), "stdout and stderr: {all}");
    }
    let tail =
        op.http.get(op.url(&format!("/env-instance/{id}/logs?tail=1"))).send().await.unwrap().text().await.unwrap();
    assert_eq!(tail.lines().count(), 1, "{tail}");
    // follow streams what comes after.
    let mut follow = op.http.get(op.url(&format!("/env-instance/{id}/logs?follow=true&tail=0"))).send().await.unwrap();
    let started = Instant::now();
    let mut seen = String::new();
    while !seen.contains("tick") {
        let chunk =
            tokio::time::timeout(Duration::from_secs(5), follow.chunk()).await.expect("a chunk in time").unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk.expect("the stream stays open")));
    }
    assert!(started.elapsed() < Duration::from_secs(3));
    let (code, v) = op.get(&format!("/env-instance/{id}/logs?tail=lots")).await;
    assert_eq!(code, 400, "{v}");
    assert_eq!(op.get("/env-instance/nope-abcdef/logs").await.0, 404);

    let ready: Value = op.http.get(op.url("/readyz")).send().await.unwrap().json().await.unwrap();
    assert_eq!((&ready["status"], &ready["engine"]), (&json!("ready"), &json!("docker")), "{ready}");
    assert!(ready["memoryCheckpoints"]["available"].is_boolean(), "{ready}");
    let metrics = op.http.get(op.url("/metrics")).send().await.unwrap().text().await.unwrap();
    for needle in [
        "aenv_instances{phase=\"Running\"} 1",
        "aenv_instances_created_total 1",
        "aenv_create_to_running_seconds_count 1",
        "aenv_engine_call_seconds_count{op=\"apply\"}",
        "aenv_reconciles_total",
        "# EOF",
    ] {
        assert!(metrics.contains(needle), "{needle} missing from\n{metrics}");
    }
}

#[tokio::test]
async fn compose_stacks_can_be_turned_off() {
    let op = Operator::start(BIN, &["--disable-compose"]).await;
    let body = json!({"name": unique_name("nocompose"), "deployConfig": {"composeFile": format!("services:\n  a:\n    image: {TEST_IMAGE}\n")}});
    let (code, resp) = op.post_json("/env-instance", &body).await;
    assert_eq!(code, 400, "{resp}");
    assert!(resp["message"].as_str().unwrap().contains("--disable-compose"), "{resp}");
}
