//! A create's answer waits until the sandbox serves (`--create-wait`), and the data-plane proxy holds a request to
//! a running sandbox whose server still boots instead of answering 502: against the real daemon, with the test
//! image's server listening `AENV_HEALTH_DELAY` seconds after the container starts, as AEnvironment images listen
//! only once Python has imported.

use std::time::{Duration, Instant};

use aenv_testkit::{Operator, TEST_IMAGE, create_body, unique_name};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_aenv-operator");

fn late(delay_s: u32) -> Value {
    json!({"environment_variables": {"AENV_HEALTH_DELAY": delay_s.to_string()}})
}

async fn create(op: &Operator, name: &str, deploy: Value) -> (Value, Duration) {
    let started = Instant::now();
    let (code, body) = op.post_json("/env-instance", &create_body(name, TEST_IMAGE, deploy)).await;
    assert_eq!(code, 200, "{body}");
    (body["data"].clone(), started.elapsed())
}

/// `GET /health` of the sandbox at `ip` through the proxy, as the SDK sends it: the status code and the body.
async fn health(op: &Operator, ip: &str) -> (u16, String) {
    let resp = op
        .http
        .get(op.proxy_url("/health"))
        .header("AEnvCore-MCPProxy-URL", format!("http://{ip}:8081"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap_or_default())
}

#[tokio::test]
async fn a_create_answers_once_the_server_listens_and_the_first_request_finds_it() {
    let op = Operator::start(BIN, &[]).await;
    let (inst, _) = create(&op, &unique_name("late"), late(2)).await;
    assert_eq!((inst["status"].as_str(), inst["ready"].as_bool()), (Some("Running"), Some(true)), "{inst}");
    let ip = inst["ip"].as_str().expect("a running instance has its address");
    // The SDK's first health check right after the answer: the server is there.
    let (code, text) = health(&op, ip).await;
    assert_eq!(code, 200, "the first request after the answer meets the server: {text}");
}

#[tokio::test]
async fn the_answer_waits_at_most_the_bound_and_a_failure_answers_at_once_with_its_reason() {
    let op = Operator::start(BIN, &["--create-wait", "2s"]).await;
    // A server that never listens: answered at the bound, running and not ready.
    let (never, took) = create(&op, &unique_name("never"), late(3600)).await;
    assert_eq!((never["status"].as_str(), never["ready"].as_bool()), (Some("Running"), Some(false)), "{never}");
    assert!(took < Duration::from_secs(8), "answered at the bound (2 s), not later: {took:?}");
    // Its requests wait a little, then get the proxy's answer for a target that does not answer.
    let (code, text) = health(&op, never["ip"].as_str().unwrap()).await;
    assert_eq!(code, 502, "{text}");

    // A sandbox that exits: answered as soon as it failed, with the reason, not at the bound.
    let op = Operator::start(BIN, &["--create-wait", "60s"]).await;
    let (failed, took) =
        create(&op, &unique_name("exits"), json!({"arguments": ["sh", "-c", "echo boom >&2; exit 3"]})).await;
    assert_eq!(failed["status"], "Failed", "{failed}");
    assert!(took < Duration::from_secs(30), "answered when it failed, not at the 60 s bound: {took:?}");
}

#[tokio::test]
async fn without_the_wait_a_request_to_a_booting_sandbox_waits_for_its_server() {
    let op = Operator::start(BIN, &["--create-wait", "0"]).await;
    let (inst, _) = create(&op, &unique_name("now"), late(2)).await;
    assert_eq!(inst["status"], "Pending", "answered at once, as upstream: {inst}");
    let id = inst["id"].as_str().unwrap();
    let running = op.wait_for(id, Duration::from_secs(30), |v| v["data"]["status"] == "Running").await;
    assert_eq!(running["data"]["ready"], false, "its server is still booting: {running}");
    // Told Running, the client asks at once: the proxy holds the request until the server listens.
    let (code, text) = health(&op, running["data"]["ip"].as_str().unwrap()).await;
    assert_eq!(code, 200, "held until ready rather than a 502: {text}");
}

#[tokio::test]
async fn a_burst_of_waiting_creates_is_answered_together() {
    let op = Operator::start(BIN, &[]).await;
    let name = unique_name("burst");
    let started = Instant::now();
    let answers = futures::future::join_all((0..8).map(|_| create(&op, &name, late(2)))).await;
    let took = started.elapsed();
    for (inst, _) in &answers {
        assert_eq!((inst["status"].as_str(), inst["ready"].as_bool()), (Some("Running"), Some(true)), "{inst}");
    }
    // Eight two-second boots one after another would take 16 s: the waits overlap.
    assert!(took < Duration::from_secs(14), "the answers waited together: {took:?}");
}
