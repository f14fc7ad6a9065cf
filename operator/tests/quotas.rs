//! Quotas and pools against the real binary and the real Docker daemon: without tokens a pool serves creates
//! whatever `owner` they name; with tokens an owner's instances, services and pools count toward its
//! `maxInstances` by one rule (a pool holds room for its ceiling, a service for its replicas); concurrent creates
//! stop exactly at an owner's cap and at `--max-instances` while other owners' creates go on.

use std::time::{Duration, Instant};

use aenv_testkit::{Operator, TEST_IMAGE, create_body, unique_name};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_aenv-operator");
const ALICE: &str = "alice-token-0123456789";
const BOB: &str = "bob-token-0123456789ab";

/// A tokens file: alice with `alice_max` instances, bob without a cap of his own.
fn tokens(dir: &std::path::Path, alice_max: usize) -> String {
    let path = dir.join("tokens.json");
    std::fs::write(
        &path,
        json!({"tokens": [
            {"token": ALICE, "owner": "alice", "maxInstances": alice_max},
            {"token": BOB, "owner": "bob"},
        ]})
        .to_string(),
    )
    .unwrap();
    path.display().to_string()
}

async fn send(token: Option<&str>, req: reqwest::RequestBuilder) -> (u16, Value) {
    let req = match token {
        Some(t) => req.bearer_auth(t),
        None => req,
    };
    let resp = req.send().await.unwrap();
    let code = resp.status().as_u16();
    (code, resp.json().await.unwrap_or(Value::Null))
}

/// Registers `name@1.0.0` of the test image (shared, so that any tenant may use it).
async fn register(op: &Operator, token: Option<&str>, name: &str) {
    let body = json!({"name": name, "version": "1.0.0", "shared": true,
        "artifacts": [{"type": "image", "content": TEST_IMAGE}], "deployConfig": {"readiness": false}});
    let (code, resp) = send(token, op.http.post(op.url("/env")).json(&body)).await;
    assert_eq!(code, 200, "{resp}");
}

/// The SDK's create, as `Environment("name@1.0.0", owner=...)` sends it.
fn sdk_create(name: &str, owner: Option<&str>) -> Value {
    let mut body = json!({"envName": format!("{name}@1.0.0"), "datasource": "", "ttl": "30m",
        "environment_variables": {"envNAME": name, "envversion": "1.0.0"}, "arguments": [], "labels": {}});
    if let Some(o) = owner {
        body["owner"] = json!(o);
    }
    body
}

async fn wait_pool(op: &Operator, token: Option<&str>, pool: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, body) = send(token, op.http.get(op.url(&format!("/env-pool/{pool}")))).await;
        if pred(&body["data"]) {
            return body["data"].clone();
        }
        assert!(Instant::now() < deadline, "pool {pool} never got there; last: {body}\n{}", op.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn without_tokens_a_pool_serves_a_create_that_names_an_owner() {
    let op = Operator::start(BIN, &[]).await;
    let name = unique_name("anyowner");
    register(&op, None, &name).await;
    let pool = unique_name("p");
    let (code, resp) = send(
        None,
        op.http.post(op.url("/env-pool")).json(&json!({"name": pool, "envName": format!("{name}@1.0.0"),
            "replicas": 1})),
    )
    .await;
    assert_eq!(code, 200, "{resp}");
    wait_pool(&op, None, &pool, |p| p["ready"] == 1).await;

    let (code, v) = send(None, op.http.post(op.url("/env-instance")).json(&sdk_create(&name, Some("alice")))).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["data"]["status"], "Running", "served from the pool at once: {v}");
    assert_eq!(v["data"]["owner"], "alice", "the owner is recorded at the claim: {v}");
    let id = v["data"]["id"].as_str().unwrap().to_string();
    let (_, got) = send(None, op.http.get(op.url(&format!("/env-instance/{id}")))).await;
    assert_eq!(got["data"]["owner"], "alice", "{got}");
    let p = wait_pool(&op, None, &pool, |p| p["hits"].as_u64() >= Some(1)).await;
    assert_eq!((p["hits"].as_u64(), p["misses"].as_u64()), (Some(1), Some(0)), "{p}");
}

#[tokio::test]
async fn pools_services_and_instances_count_toward_the_cap_by_one_rule() {
    let dir = tempfile::tempdir().unwrap();
    let op = Operator::start(BIN, &["--tokens-file", &tokens(dir.path(), 6)]).await;
    let name = unique_name("onerule");
    register(&op, Some(ALICE), &name).await;
    let env = format!("{name}@1.0.0");
    let pool = unique_name("p");
    let (code, resp) = send(
        Some(ALICE),
        op.http.post(op.url("/env-pool")).json(&json!({"name": pool, "envName": env, "replicas": 6})),
    )
    .await;
    assert_eq!(code, 200, "{resp}");
    // A pool of 6 holds alice's 6 from its creation: no instance beside it, cold or claimed, once filled or not.
    let cold = create_body(&name, TEST_IMAGE, json!({"readiness": false}));
    for body in [&cold, &sdk_create(&name, None)] {
        let (code, resp) = send(Some(ALICE), op.http.post(op.url("/env-instance")).json(body)).await;
        assert_eq!(code, 403, "a pool of 6 and an instance over a cap of 6: {resp}");
        assert!(resp["message"].as_str().unwrap().contains("Instance count exceeds limit: 6"), "{resp}");
    }
    wait_pool(&op, Some(ALICE), &pool, |p| p["ready"] == 6).await;
    let (code, resp) = send(Some(ALICE), op.http.post(op.url("/env-instance")).json(&sdk_create(&name, None))).await;
    assert_eq!(code, 403, "nor from the filled pool: {resp}");

    // Shrunk to 2, the pool leaves room for 4: a claim and 3 cold ones, then nothing.
    let (code, resp) =
        send(Some(ALICE), op.http.put(op.url(&format!("/env-pool/{pool}"))).json(&json!({"replicas": 2}))).await;
    assert_eq!(code, 200, "{resp}");
    // Its 4 excess sandboxes count until they are gone.
    wait_pool(&op, Some(ALICE), &pool, |p| p["ready"] == 2 && p["starting"] == 0).await;
    let (code, v) = send(Some(ALICE), op.http.post(op.url("/env-instance")).json(&sdk_create(&name, None))).await;
    assert_eq!((code, v["data"]["status"].as_str()), (200, Some("Running")), "a claim: {v}");
    let mut ids = vec![v["data"]["id"].as_str().unwrap().to_string()];
    for _ in 0..3 {
        let (code, v) = send(Some(ALICE), op.http.post(op.url("/env-instance")).json(&cold)).await;
        assert_eq!(code, 200, "{v}");
        ids.push(v["data"]["id"].as_str().unwrap().to_string());
    }
    let (code, resp) = send(Some(ALICE), op.http.post(op.url("/env-instance")).json(&cold)).await;
    assert_eq!(code, 403, "2 in the pool + 4 instances: {resp}");
    // The pool cannot grow back over the instances, nor can a second pool or a service take room.
    let (code, resp) =
        send(Some(ALICE), op.http.put(op.url(&format!("/env-pool/{pool}"))).json(&json!({"replicas": 3}))).await;
    assert_eq!(code, 403, "{resp}");
    assert!(resp["message"].as_str().unwrap().contains("`replicas`"), "{resp}");
    let other = unique_name("q");
    let (code, resp) = send(
        Some(ALICE),
        op.http.post(op.url("/env-pool")).json(&json!({"name": other, "envName": env, "replicas": 1})),
    )
    .await;
    assert_eq!(code, 403, "{resp}");
    let service = |replicas: u32| {
        json!({"envName": env, "service_name": unique_name("s"), "replicas": replicas,
        "port": 8081})
    };
    let (code, resp) = send(Some(ALICE), op.http.post(op.url("/env-service")).json(&service(1))).await;
    assert_eq!(code, 403, "a replica counts as the pool's sandboxes do: {resp}");

    // Two instances gone: a service of 2 fits, and then counts for its replicas before they even run.
    for id in ids.drain(..2) {
        assert_eq!(send(Some(ALICE), op.http.delete(op.url(&format!("/env-instance/{id}")))).await.0, 200);
    }
    let (code, resp) = send(Some(ALICE), op.http.post(op.url("/env-service")).json(&service(3))).await;
    assert_eq!(code, 403, "2 + 2 + 3 over 6: {resp}");
    let (code, resp) = send(Some(ALICE), op.http.post(op.url("/env-service")).json(&service(2))).await;
    assert_eq!(code, 200, "{resp}");
    let (code, resp) = send(Some(ALICE), op.http.post(op.url("/env-instance")).json(&cold)).await;
    assert_eq!(code, 403, "pool 2 + service 2 + instances 2: {resp}");
    let (code, resp) = send(
        Some(ALICE),
        op.http.post(op.url("/env-pool")).json(&json!({"name": other, "envName": env, "replicas": 1})),
    )
    .await;
    assert_eq!(code, 403, "{resp}");
    // Bob has no cap of his own: alice's count is hers.
    let (code, resp) = send(Some(BOB), op.http.post(op.url("/env-instance")).json(&cold)).await;
    assert_eq!(code, 200, "{resp}");
}

#[tokio::test]
async fn concurrent_creates_stop_exactly_at_the_caps_and_other_owners_go_on() {
    let dir = tempfile::tempdir().unwrap();
    // Alice may hold 10; the operator 20 in all.
    let op = Operator::start(BIN, &["--tokens-file", &tokens(dir.path(), 10), "--max-instances", "20"]).await;
    let name = unique_name("race");
    let body = create_body(&name, TEST_IMAGE, json!({"readiness": false}));
    let create = |token: &'static str| {
        let req = op.http.post(op.url("/env-instance")).bearer_auth(token).json(&body);
        async move {
            let resp = req.send().await.unwrap();
            resp.status().as_u16()
        }
    };
    // 64 of alice's at once, and 10 of bob's among them: the cap of one owner does not refuse another's.
    let alice = futures::future::join_all((0..64).map(|_| create(ALICE)));
    let bob = futures::future::join_all((0..10).map(|_| create(BOB)));
    let (alice, bob) = tokio::join!(alice, bob);
    let ok = |codes: &[u16]| codes.iter().filter(|c| **c == 200).count();
    assert_eq!(ok(&alice), 10, "exactly alice's 10: {alice:?}");
    assert!(alice.iter().all(|c| *c == 200 || *c == 403), "{alice:?}");
    assert_eq!(ok(&bob), 10, "bob is not refused for alice's cap: {bob:?}");

    // The operator's 20 are taken: 40 more of bob's at once get none.
    let more = futures::future::join_all((0..40).map(|_| create(BOB))).await;
    assert_eq!(ok(&more), 0, "--max-instances 20 is full: {more:?}");
    let (_, list) = send(Some(ALICE), op.http.get(op.url("/env-instance/list"))).await;
    assert_eq!(list["data"]["items"].as_array().map(Vec::len), Some(10), "{list}");
}

#[tokio::test]
async fn concurrent_creates_of_owners_stop_exactly_at_the_operator_cap() {
    let dir = tempfile::tempdir().unwrap();
    let op = Operator::start(BIN, &["--tokens-file", &tokens(dir.path(), 100), "--max-instances", "12"]).await;
    let name = unique_name("global");
    let body = create_body(&name, TEST_IMAGE, json!({"readiness": false}));
    let create = |token: &'static str| {
        let req = op.http.post(op.url("/env-instance")).bearer_auth(token).json(&body);
        async move { req.send().await.unwrap().status().as_u16() }
    };
    // Two owners race for the operator's last places: their creates do not wait on each other, and yet the
    // operator takes exactly 12.
    let all = futures::future::join_all((0..48).map(|i| create(if i % 2 == 0 { ALICE } else { BOB }))).await;
    assert_eq!(all.iter().filter(|c| **c == 200).count(), 12, "{all:?}");
    assert!(all.iter().all(|c| *c == 200 || *c == 403), "{all:?}");
}
