//! Warm pools against the real binary and the real Docker daemon: a pool fills to its size with sandboxes that
//! passed their readiness probe; the SDK's create is answered `Running` with the IP from it; the pool refills; a
//! create that asks for more than a running container can take on starts cold; claimed sandboxes are instances
//! like any other (lists, logs, proxy, delete, owners) and are never reused; bad input is refused naming the field;
//! kill -9 during claims and refills loses no answered claim, claims none twice and leaks nothing.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use aenv_testkit::{Operator, TEST_IMAGE, containers_with_label, docker_ok, inspect, unique_name};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_aenv-operator");

/// Registers `name@1.0.0` from the test image with `deploy`.
async fn register(op: &Operator, name: &str, deploy: Value) {
    let body = json!({"name": name, "version": "1.0.0", "artifacts": [{"type": "image", "content": TEST_IMAGE}],
        "deployConfig": deploy});
    let (code, resp) = op.post_json("/env", &body).await;
    assert_eq!(code, 200, "{resp}");
}

/// The SDK's create body, as `Environment("name@1.0.0").initialize()` sends it.
fn sdk_create(name: &str, extra_env: Value) -> Value {
    let mut env = json!({"envNAME": name, "envversion": "1.0.0"});
    if let (Some(e), Some(extra)) = (env.as_object_mut(), extra_env.as_object()) {
        e.extend(extra.clone());
    }
    json!({"envName": format!("{name}@1.0.0"), "datasource": "", "ttl": "30m", "environment_variables": env,
        "arguments": [], "labels": {"run": "r1"}})
}

/// Polls `GET /env-pool/{pool}` until `pred` holds; returns its data.
async fn wait_pool(op: &Operator, pool: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let (_, body) = op.get(&format!("/env-pool/{pool}")).await;
        if pred(&body["data"]) {
            return body["data"].clone();
        }
        assert!(Instant::now() < deadline, "pool {pool} did not get there in {timeout:?}; last: {body}\n{}", op.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn env_of(container: &Value) -> Vec<String> {
    container["Config"]["Env"].as_array().into_iter().flatten().filter_map(Value::as_str).map(String::from).collect()
}

fn ids_in(list: &Value) -> Vec<String> {
    list["data"].as_array().into_iter().flatten().filter_map(|i| i["id"].as_str()).map(String::from).collect()
}

#[tokio::test]
async fn a_pool_hit_answers_running_with_the_ip_and_the_pool_refills() {
    let op = Operator::start(BIN, &[]).await;
    let name = unique_name("warm");
    register(&op, &name, json!({"environment_variables": {"FROM_TEMPLATE": "1"}})).await;
    let (code, pool) =
        op.post_json("/env-pool", &json!({"name": "p1", "envName": format!("{name}@1.0.0"), "replicas": 2})).await;
    assert_eq!(code, 200, "{pool}");
    for key in ["name", "envName", "replicas", "ready"] {
        assert!(pool["data"].get(key).is_some(), "{key} missing: {pool}");
    }
    wait_pool(&op, "p1", Duration::from_secs(60), |p| p["ready"] == 2).await;

    // Waiting sandboxes are containers like any other, filterable by environment, but nobody's instances yet.
    let waiting = containers_with_label(&format!("aenv.env_name={name}"));
    assert_eq!(waiting.len(), 2, "{waiting:?}");
    let (_, list) = op.get("/env-instance/*/list").await;
    assert!(ids_in(&list).iter().all(|id| !waiting.contains(id)), "waiting sandboxes are not listed: {list}");
    let (code, _) = op.get(&format!("/env-instance/{}", waiting[0])).await;
    assert_eq!(code, 404, "nor readable by id");

    // The SDK's create: answered Running, with the IP, ready, its TTL counted from now.
    let started = jiff::Timestamp::now();
    let (code, created) = op.post_json("/env-instance", &sdk_create(&name, json!({}))).await;
    assert_eq!(code, 200, "{created}");
    let data = &created["data"];
    assert_eq!(data["status"], "Running", "{created}");
    assert_eq!(data["ready"], true);
    assert!(!data["ip"].as_str().unwrap_or_default().is_empty(), "{created}");
    assert_eq!((data["ttl"].as_str(), data["labels"]["run"].as_str()), (Some("30m"), Some("r1")));
    let expire: jiff::Timestamp = data["expire_at"].as_str().unwrap().parse().unwrap();
    let ttl_left = expire.duration_since(started);
    assert!(ttl_left >= jiff::SignedDuration::from_mins(29), "the TTL starts at the claim: {created}");
    let id = data["id"].as_str().unwrap().to_string();
    assert!(waiting.contains(&id), "served by a waiting sandbox");
    let c = inspect(&id);
    let env = env_of(&c);
    for var in ["FROM_TEMPLATE=1", &format!("envNAME={name}"), "envversion=1.0.0"] {
        assert!(env.iter().any(|e| e == var), "{var} in {env:?}");
    }

    // It is an instance like any other: listed, readable, its logs served.
    let (_, list) = op.get(&format!("/env-instance/{name}/list")).await;
    assert_eq!(ids_in(&list), vec![id.clone()]);
    let (code, _) = op.get(&format!("/env-instance/{id}/logs?tail=5")).await;
    assert_eq!(code, 200);

    // The pool refills behind it, and counts the claim (its status follows a moment later).
    let p = wait_pool(&op, "p1", Duration::from_secs(60), |p| p["ready"] == 2 && p["claimed"] == 1).await;
    assert_eq!((p["hits"].as_u64(), p["misses"].as_u64()), (Some(1), Some(0)), "{p}");

    // A create that asks for more than a running container can take on starts cold.
    let (code, cold) = op.post_json("/env-instance", &sdk_create(&name, json!({"EXTRA": "x"}))).await;
    assert_eq!(code, 200, "{cold}");
    let cold_id = cold["data"]["id"].as_str().unwrap().to_string();
    assert!(!waiting.contains(&cold_id));
    op.wait_for(&cold_id, Duration::from_secs(30), |v| v["data"]["status"] == "Running").await;
    assert!(env_of(&inspect(&cold_id)).iter().any(|e| e == "EXTRA=x"));

    // Deleting a claimed sandbox destroys it: it never goes back to the pool.
    let (code, _) = op.delete(&format!("/env-instance/{id}")).await;
    assert_eq!(code, 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !containers_with_label(&format!("aenv.io/instance={id}")).is_empty() {
        assert!(Instant::now() < deadline, "claimed sandbox not removed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let p = wait_pool(&op, "p1", Duration::from_secs(30), |p| p["ready"] == 2).await;
    assert_eq!(p["claimed"], 1);

    // The template a pool uses cannot be deleted from under it.
    let (code, resp) = op.delete(&format!("/env/{name}/1.0.0")).await;
    assert_eq!(code, 409, "{resp}");
    assert!(resp["message"].as_str().unwrap().contains("\"p1\""), "{resp}");

    // Scaling to 0 and deleting the pool remove its waiting sandboxes, and nothing else.
    let (code, _) = op
        .http
        .put(op.url("/env-pool/p1"))
        .json(&json!({"replicas": 0}))
        .send()
        .await
        .map(|r| (r.status().as_u16(), ()))
        .unwrap();
    assert_eq!(code, 200);
    wait_pool(&op, "p1", Duration::from_secs(30), |p| p["ready"] == 0 && p["starting"] == 0).await;
    let (code, _) = op.delete("/env-pool/p1").await;
    assert_eq!(code, 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = containers_with_label(&format!("aenv.env_name={name}"));
        if left == vec![cold_id.clone()] {
            break;
        }
        assert!(Instant::now() < deadline, "left: {left:?}\n{}", op.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, _) = op.get("/env-pool/p1").await;
    assert_eq!(code, 404);
    let (code, _) = op.delete(&format!("/env/{name}/1.0.0")).await;
    assert_eq!(code, 200, "no pool uses it any more");
}

#[tokio::test]
async fn bad_pool_input_is_refused_naming_the_field() {
    let op = Operator::start(BIN, &[]).await;
    let name = unique_name("badpool");
    register(&op, &name, json!({})).await;
    let env = format!("{name}@1.0.0");
    for (body, code, field) in [
        (json!({"name": "p", "envName": format!("{name}@9.9.9"), "replicas": 1}), 404, "not found"),
        (json!({"name": "p", "envName": name, "replicas": 1}), 400, "`envName`"),
        (json!({"name": "p", "envName": env, "replicas": 100000}), 400, "`replicas`"),
        (json!({"name": "p", "envName": env, "replicas": -1}), 400, "`replicas`"),
        (json!({"name": "p", "envName": env, "replicas": 3, "maxReplicas": 1}), 400, "`maxReplicas`"),
        (json!({"name": "Bad Name", "envName": env, "replicas": 1}), 400, "`name`"),
        (json!({"name": "p", "envName": env}), 400, "`replicas`"),
        (json!({"name": "p", "envName": env, "replicas": 1, "image": "x"}), 400, "`image`"),
    ] {
        let (got, resp) = op.post_json("/env-pool", &body).await;
        assert_eq!(got, code, "{body}: {resp}");
        assert!(resp["message"].as_str().unwrap_or_default().contains(field), "{body}: {resp}");
    }
    let (_, list) = op.get("/env-pool").await;
    assert_eq!(list["data"], json!([]), "nothing was made");
    let (code, _) = op.post_json("/env-pool", &json!({"name": "p", "envName": env, "replicas": 0})).await;
    assert_eq!(code, 200);
    let (code, resp) = op.post_json("/env-pool", &json!({"name": "p", "envName": env, "replicas": 0})).await;
    assert_eq!(code, 409, "{resp}");
    let put = |body: Value| op.http.put(op.url("/env-pool/p")).json(&body).send();
    assert_eq!(put(json!({"replicas": 5000})).await.unwrap().status().as_u16(), 400);
    assert_eq!(
        op.http.put(op.url("/env-pool/none")).json(&json!({"replicas": 1})).send().await.unwrap().status().as_u16(),
        404
    );
    assert!(containers_with_label(&format!("aenv.env_name={name}")).is_empty());
}

/// A template whose sandboxes cannot start: the pool says why, and retries with a backoff rather than a storm.
#[tokio::test]
async fn a_pool_whose_template_cannot_start_reports_it_and_backs_off() {
    let op = Operator::start(BIN, &[]).await;
    let name = unique_name("failpool");
    // The image's command replaced by one that exits at once.
    register(&op, &name, json!({"arguments": ["false"]})).await;
    let (code, _) =
        op.post_json("/env-pool", &json!({"name": "doomed", "envName": format!("{name}@1.0.0"), "replicas": 3})).await;
    assert_eq!(code, 200);
    let p = wait_pool(&op, "doomed", Duration::from_secs(30), |p| p.get("lastError").is_some()).await;
    assert!(p["lastError"].as_str().unwrap().contains("exited"), "{p}");
    tokio::time::sleep(Duration::from_secs(6)).await;
    let attempts = op.log().matches("pooled sandboxes failed").count();
    assert!((1..=8).contains(&attempts), "backoff between attempts, not a storm: {attempts}\n{}", op.log());
    let (_, p) = op.get("/env-pool/doomed").await;
    assert_eq!(p["data"]["ready"], 0);
    // A create still works, cold, and (its answer waits for the outcome) says why it fails.
    let (code, created) = op.post_json("/env-instance", &sdk_create(&name, json!({}))).await;
    assert_eq!((code, created["data"]["status"].as_str()), (200, Some("Failed")), "{created}");
    assert!(created["data"]["message"].as_str().is_some_and(|m| m.contains("exited")), "{created}");
}

/// kill -9 while claims are answered and the pool refills: every answered claim is there after the restart, no
/// sandbox serves two claims, the pool refills, and no container is left without an instance.
#[tokio::test]
async fn kill_9_during_claims_and_refills_loses_nothing() {
    let mut op = Operator::start(BIN, &["--pool-max-starting", "4"]).await;
    let name = unique_name("crashpool");
    register(&op, &name, json!({})).await;
    let (code, _) =
        op.post_json("/env-pool", &json!({"name": "c", "envName": format!("{name}@1.0.0"), "replicas": 4})).await;
    assert_eq!(code, 200);
    wait_pool(&op, "c", Duration::from_secs(60), |p| p["ready"] == 4).await;

    let body = sdk_create(&name, json!({}));
    let claims = (0..6).map(|_| op.post_json("/env-instance", &body));
    let answers = futures::future::join_all(claims).await;
    op.kill9();
    let mut ids = Vec::new();
    for (code, body) in &answers {
        assert_eq!(*code, 200, "{body}");
        ids.push(body["data"]["id"].as_str().unwrap().to_string());
    }
    let distinct: HashSet<_> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "no sandbox serves two claims: {ids:?}");
    let hits = answers.iter().filter(|(_, b)| b["data"]["status"] == "Running").count();
    assert!(hits >= 4, "the 4 ready sandboxes served claims: {answers:?}");

    op.restart(BIN).await;
    for id in &ids {
        let v = op.wait_for(id, Duration::from_secs(60), |v| v["data"]["status"] == "Running").await;
        assert_eq!(v["data"]["labels"]["run"], "r1", "{v}");
    }
    wait_pool(&op, "c", Duration::from_secs(60), |p| p["ready"] == 4).await;
    // Settled: the claimed ones and 4 waiting, nothing else.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let containers = containers_with_label(&format!("aenv.env_name={name}"));
    assert_eq!(containers.len(), ids.len() + 4, "{containers:?}\n{}", op.log());
    let (_, list) = op.get(&format!("/env-instance/{name}/list")).await;
    let mut listed = ids_in(&list);
    listed.sort();
    ids.sort();
    assert_eq!(listed, ids);
}

/// A pool deleted while claims are in flight: each claim is answered (from the pool or cold), each answered
/// instance exists, and the pool's waiting sandboxes are gone.
#[tokio::test]
async fn a_pool_deleted_while_claims_are_in_flight() {
    let op = Operator::start(BIN, &[]).await;
    let name = unique_name("delpool");
    register(&op, &name, json!({})).await;
    op.post_json("/env-pool", &json!({"name": "d", "envName": format!("{name}@1.0.0"), "replicas": 3})).await;
    wait_pool(&op, "d", Duration::from_secs(60), |p| p["ready"] == 3).await;
    let body = sdk_create(&name, json!({}));
    let claims = futures::future::join_all((0..4).map(|_| op.post_json("/env-instance", &body)));
    let (answers, (code, _)) = tokio::join!(claims, op.delete("/env-pool/d"));
    assert_eq!(code, 200);
    let mut ids = Vec::new();
    for (code, body) in answers {
        assert_eq!(code, 200, "{body}");
        ids.push(body["data"]["id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        op.wait_for(id, Duration::from_secs(60), |v| v["data"]["status"] == "Running").await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut left = containers_with_label(&format!("aenv.env_name={name}"));
        left.sort();
        let mut want = ids.clone();
        want.sort();
        if left == want {
            break;
        }
        assert!(Instant::now() < deadline, "left {left:?}, instances {want:?}\n{}", op.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(op.get("/env-pool/d").await.0, 404);
}

/// A compose stack pools the same way: the stack is the unit.
#[tokio::test]
async fn a_stack_template_pools_as_a_unit() {
    let op = Operator::start(BIN, &[]).await;
    let name = unique_name("stackpool");
    let compose = format!(
        "services:\n  main:\n    image: {TEST_IMAGE}\n  side:\n    image: {TEST_IMAGE}\n    command: [\"sleep\", \"3600\"]\n"
    );
    let (code, resp) = op
        .post_json("/env", &json!({"name": name, "version": "1.0.0", "deployConfig": {"composeFile": compose}}))
        .await;
    assert_eq!(code, 200, "{resp}");
    op.post_json("/env-pool", &json!({"name": "s", "envName": format!("{name}@1.0.0"), "replicas": 1})).await;
    wait_pool(&op, "s", Duration::from_secs(90), |p| p["ready"] == 1).await;
    let (code, created) = op.post_json("/env-instance", &sdk_create(&name, json!({}))).await;
    assert_eq!(code, 200);
    assert_eq!(created["data"]["status"], "Running", "{created}");
    assert_eq!(created["data"]["services"].as_array().map(Vec::len), Some(2), "{created}");
    let id = created["data"]["id"].as_str().unwrap();
    let (code, _) = op.delete(&format!("/env-instance/{id}")).await;
    assert_eq!(code, 200);
    // The stack goes as a unit: its containers, then the network it made.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let networks = docker_ok(&["network", "ls", "--filter", &format!("label=aenv.io/instance={id}"), "-q"]);
        if containers_with_label(&format!("aenv.io/instance={id}")).is_empty() && networks.trim().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "stack not removed: networks {networks}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// With tokens, a pool is its owner's: another tenant neither sees it nor is served from it.
#[tokio::test]
async fn pools_belong_to_their_owner() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.json");
    std::fs::write(
        &tokens,
        json!({"tokens": [
            {"token": "alice-token-0123456789", "owner": "alice", "maxInstances": 5},
            {"token": "bob-token-0123456789ab", "owner": "bob", "maxInstances": 5},
        ]})
        .to_string(),
    )
    .unwrap();
    // Creates answer at once, so that a cold one (Pending) is told from a claim (Running).
    let op = Operator::start(BIN, &["--tokens-file", tokens.to_str().unwrap(), "--create-wait", "0"]).await;
    let name = unique_name("ownpool");
    let as_user = |token: &str, req: reqwest::RequestBuilder| req.bearer_auth(token.to_string());
    let alice = "alice-token-0123456789";
    let bob = "bob-token-0123456789ab";
    // Shared, so that bob may create from alice's template at all (templates have owners).
    let body = json!({"name": name, "version": "1.0.0", "shared": true,
        "artifacts": [{"type": "image", "content": TEST_IMAGE}]});
    let r = as_user(alice, op.http.post(op.url("/env")).json(&body)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let pool = json!({"name": "mine", "envName": format!("{name}@1.0.0"), "replicas": 1});
    let r = as_user(alice, op.http.post(op.url("/env-pool")).json(&pool)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // More waiting sandboxes than the owner's cap is refused.
    let big = json!({"name": "big", "envName": format!("{name}@1.0.0"), "replicas": 5});
    let r = as_user(alice, op.http.post(op.url("/env-pool")).json(&big)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 403, "1 + 5 over alice's 5");

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = as_user(alice, op.http.get(op.url("/env-pool/mine"))).send().await.unwrap();
        let v: Value = r.json().await.unwrap();
        if v["data"]["ready"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = as_user(bob, op.http.get(op.url("/env-pool/mine"))).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404, "bob does not see alice's pool");
    let r = as_user(bob, op.http.delete(op.url("/env-pool/mine"))).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404, "nor delete it");
    let create = sdk_create(&name, json!({}));
    let r = as_user(bob, op.http.post(op.url("/env-instance")).json(&create)).send().await.unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["data"]["status"], "Pending", "bob is not served from alice's pool: {v}");
    assert_eq!(v["data"]["owner"], "bob");
    let r = as_user(alice, op.http.post(op.url("/env-instance")).json(&create)).send().await.unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["data"]["status"], "Running", "alice is: {v}");
    assert_eq!(v["data"]["owner"], "alice");
    let c = inspect(v["data"]["id"].as_str().unwrap());
    assert_eq!(c["Config"]["Labels"]["aenv.io/owner"], "alice", "the sandbox was made for its pool's owner");
}

/// Between `replicas` and `maxReplicas`, a pool grows with the creates of the demand window and shrinks back once
/// they age out.
#[tokio::test]
async fn a_pool_grows_with_demand_and_shrinks_back_when_idle() {
    let op = Operator::start(BIN, &["--pool-demand-window", "5s"]).await;
    let name = unique_name("elastic");
    register(&op, &name, json!({})).await;
    let body = json!({"name": "e", "envName": format!("{name}@1.0.0"), "replicas": 1, "maxReplicas": 3});
    assert_eq!(op.post_json("/env-pool", &body).await.0, 200);
    wait_pool(&op, "e", Duration::from_secs(60), |p| p["ready"] == 1).await;
    for _ in 0..2 {
        let (code, v) = op.post_json("/env-instance", &sdk_create(&name, json!({}))).await;
        assert_eq!(code, 200, "{v}");
    }
    let p = wait_pool(&op, "e", Duration::from_secs(60), |p| p["ready"] == 3).await;
    assert_eq!(p["target"], 3, "1 + 2 creates, at most 3: {p}");
    let p = wait_pool(&op, "e", Duration::from_secs(60), |p| p["target"] == 1 && p["ready"] == 1 && p["starting"] == 0)
        .await;
    assert_eq!(p["hits"].as_u64().unwrap() + p["misses"].as_u64().unwrap(), 2, "{p}");
}
