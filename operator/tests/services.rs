//! EnvService against the real binary and the real Docker daemon: a service keeps its replicas (probed), answers
//! on its address over its ready replicas, rolls an update with a new replica ready before an old one goes, keeps
//! the data of its volume across the update and across a delete without `deleteStorage`; a replica removed by hand
//! is replaced; bad input is refused naming the field and changes nothing; kill -9 during an update converges.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use aenv_testkit::{Operator, TEST_IMAGE, containers_with_label, docker, docker_ok, inspect, unique_name};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_aenv-operator");

async fn register(op: &Operator, name: &str) {
    let body = json!({"name": name, "version": "1.0.0", "artifacts": [{"type": "image", "content": TEST_IMAGE}]});
    let (code, resp) = op.post_json("/env", &body).await;
    assert_eq!(code, 200, "{resp}");
}

async fn wait_service(op: &Operator, id: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let (_, body) = op.get(&format!("/env-service/{id}")).await;
        if pred(&body["data"]) {
            return body["data"].clone();
        }
        assert!(Instant::now() < deadline, "service {id} did not get there in {timeout:?}; last: {body}\n{}", op.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The running replica containers of environment `name`.
fn replicas(name: &str) -> Vec<String> {
    let out = docker_ok(&["ps", "--filter", &format!("label=aenv.env_name={name}"), "--format", "{{.Names}}"]);
    let mut names: Vec<String> = out.lines().filter(|l| !l.is_empty()).map(String::from).collect();
    names.sort();
    names
}

/// The container's environment; empty when it is gone meanwhile (the controller may be removing it).
fn env_of(container: &str) -> Vec<String> {
    let out = docker(&["inspect", container]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v[0]["Config"]["Env"].as_array().into_iter().flatten().filter_map(Value::as_str).map(String::from).collect()
}

async fn put(op: &Operator, path: &str, body: Value) -> (u16, Value) {
    let resp = op.http.put(op.url(path)).json(&body).send().await.expect("PUT");
    let code = resp.status().as_u16();
    (code, resp.json().await.unwrap_or(Value::Null))
}

fn running(s: &Value, n: u64) -> bool {
    s["status"] == "Running" && s["available_replicas"] == n
}

#[tokio::test]
async fn a_service_keeps_replicas_spreads_requests_rolls_updates_and_keeps_its_data() {
    let op = Operator::start(BIN, &[]).await;
    let name = unique_name("svc");
    register(&op, &name).await;
    let pvc = unique_name("data");
    let id = unique_name("web");
    let (code, created) = op
        .post_json(
            "/env-service",
            &json!({"envName": format!("{name}@1.0.0"), "service_name": id, "replicas": 2, "port": 8081,
                "pvc_name": pvc, "environment_variables": {"MODE": "a"}}),
        )
        .await;
    assert_eq!(code, 200, "{created}");
    for key in [
        "id",
        "env",
        "status",
        "created_at",
        "updated_at",
        "replicas",
        "available_replicas",
        "service_url",
        "owner",
        "environment_variables",
        "pvc_name",
    ] {
        assert!(created["data"].get(key).is_some(), "{key} missing: {created}");
    }
    assert_eq!(created["data"]["id"], id.as_str());
    let s = wait_service(&op, &id, Duration::from_secs(60), |s| running(s, 2)).await;
    let url = s["service_url"].as_str().unwrap().to_string();
    assert_eq!(url, op.proxy_url(&format!("/env-service/{id}")));

    // Two replica containers, with the service's variables and the volume mounted at the default path.
    let first = replicas(&name);
    assert_eq!(first.len(), 2, "{first:?}");
    for r in &first {
        assert!(env_of(r).iter().any(|e| e == "MODE=a"), "{:?}", env_of(r));
        let mounts = inspect(r)["Mounts"].clone();
        assert_eq!(mounts[0]["Type"], "volume", "{mounts}");
        // The service's storage, scoped to this operator (two operators with one pvc_name never share it).
        assert_eq!(
            mounts[0]["Name"],
            aenv_engine_docker::service_volume(&op.operator_id, &format!("aenv-pvc-{pvc}")),
            "{mounts}"
        );
        assert_eq!(mounts[0]["Destination"], "/home/admin/data", "{mounts}");
    }
    // Replicas are the service's, not instances: not listed, not readable as instances.
    let (_, list) = op.get("/env-instance/*/list").await;
    let listed: Vec<&str> = list["data"].as_array().into_iter().flatten().filter_map(|i| i["id"].as_str()).collect();
    assert!(first.iter().all(|r| !listed.contains(&r.as_str())), "{list}");
    assert_eq!(op.get(&format!("/env-instance/{}", first[0])).await.0, 404);
    let (_, svcs) = op.get(&format!("/env-service/{name}/list")).await;
    assert_eq!(svcs["data"].as_array().map(Vec::len), Some(1), "{svcs}");

    // The address spreads requests over the ready replicas.
    for r in &first {
        docker_ok(&["exec", r, "sh", "-c", &format!("echo {r} > /www/who")]);
    }
    let mut seen = HashSet::new();
    for _ in 0..6 {
        let resp = op.http.get(format!("{url}/who")).send().await.expect("service address");
        assert_eq!(resp.status().as_u16(), 200);
        seen.insert(resp.text().await.unwrap().trim().to_string());
    }
    assert_eq!(seen, first.iter().cloned().collect::<HashSet<_>>(), "both replicas answered");
    // Data written to the volume...
    docker_ok(&["exec", &first[0], "sh", "-c", "echo kept > /home/admin/data/f"]);

    // ... survives a rolling update, during which the service never has fewer ready replicas.
    let (code, updated) =
        put(&op, &format!("/env-service/{id}"), json!({"environment_variables": {"MODE": "b"}})).await;
    assert_eq!(code, 200, "{updated}");
    assert_eq!(updated["data"]["environment_variables"]["MODE"], "b");
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut saw_updating = false;
    loop {
        let (_, body) = op.get(&format!("/env-service/{id}")).await;
        let s = &body["data"];
        saw_updating |= s["status"] == "Updating";
        assert!(s["available_replicas"].as_u64() >= Some(2), "a ready replica went before its replacement: {body}");
        let now = replicas(&name);
        if s["status"] == "Running" && now.len() == 2 && now.iter().all(|r| !first.contains(r)) {
            break;
        }
        assert!(Instant::now() < deadline, "the update did not finish: {body} {now:?}\n{}", op.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(saw_updating, "the status said Updating while replicas were replaced");
    let second = replicas(&name);
    for r in &second {
        assert!(env_of(r).iter().any(|e| e == "MODE=b"), "{:?}", env_of(r));
        assert_eq!(docker_ok(&["exec", r, "cat", "/home/admin/data/f"]).trim(), "kept");
    }

    // A replica removed by hand is replaced.
    docker_ok(&["rm", "-f", &second[0]]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = replicas(&name);
        let (_, body) = op.get(&format!("/env-service/{id}")).await;
        if running(&body["data"], 2) && now.len() == 2 && !now.contains(&second[0]) {
            break;
        }
        assert!(Instant::now() < deadline, "the removed replica was not replaced: {body} {now:?}\n{}", op.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Scaling down to one.
    let (code, resp) = put(&op, &format!("/env-service/{id}"), json!({"replicas": 1})).await;
    assert_eq!(code, 200, "{resp}");
    wait_service(&op, &id, Duration::from_secs(30), |s| running(s, 1)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while replicas(&name).len() != 1 {
        assert!(Instant::now() < deadline, "scale down left {:?}", replicas(&name));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Deleted without deleteStorage: containers go, the volume stays, and a new service with the pvc_name mounts it.
    let (code, _) = op.delete(&format!("/env-service/{id}")).await;
    assert_eq!(code, 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !containers_with_label(&format!("aenv.env_name={name}")).is_empty()
        || op.get(&format!("/env-service/{id}")).await.0 != 404
    {
        assert!(Instant::now() < deadline, "replicas not removed\n{}", op.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let volume = aenv_engine_docker::service_volume(&op.operator_id, &format!("aenv-pvc-{pvc}"));
    assert!(docker(&["volume", "inspect", &volume]).status.success(), "the volume stays");
    // The name is free once the deletion is through (the replicas' records go a moment after their containers):
    // until then a create of the same name is a 409 that says so.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, again) = op
            .post_json(
                "/env-service",
                &json!({"envName": format!("{name}@1.0.0"), "service_name": id, "port": 8081,
                "pvc_name": pvc, "storage_size": "1Gi"}),
            )
            .await;
        if code == 200 {
            break;
        }
        assert_eq!(code, 409, "{again}");
        assert!(again["message"].as_str().unwrap().contains("still being deleted"), "{again}");
        assert!(Instant::now() < deadline, "the deleted service's name never came free\n{}", op.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_service(&op, &id, Duration::from_secs(60), |s| running(s, 1)).await;
    let third = replicas(&name);
    assert_eq!(docker_ok(&["exec", &third[0], "cat", "/home/admin/data/f"]).trim(), "kept", "same pvc_name, same data");

    // Deleted with deleteStorage: the volume goes too; updating it afterwards is a 404.
    let (code, _) = op.delete(&format!("/env-service/{id}?deleteStorage=true")).await;
    assert_eq!(code, 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    while docker(&["volume", "inspect", &volume]).status.success() {
        assert!(Instant::now() < deadline, "the volume was not removed\n{}", op.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(replicas(&name).is_empty());
    let (code, resp) = put(&op, &format!("/env-service/{id}"), json!({"replicas": 2})).await;
    assert_eq!(code, 404, "{resp}");
}

#[tokio::test]
async fn bad_service_input_is_refused_naming_the_field_and_changes_nothing() {
    let op = Operator::start(BIN, &[]).await;
    let name = unique_name("svcbad");
    register(&op, &name).await;
    let env = format!("{name}@1.0.0");
    for (body, fields) in [
        (json!({"envName": env, "replicas": 2, "storage_size": "1Gi"}), &["`replicas`", "`storage_size`"][..]),
        (json!({"envName": "nosuch@1.0.0"}), &["`envName`"]),
        (json!({"envName": "noversion"}), &["`envName`"]),
        (json!({"envName": env, "service_name": "Bad_Name"}), &["`service_name`"]),
        (json!({"envName": env, "service_name": "a".repeat(64)}), &["`service_name`"]),
        (json!({"envName": env, "replicas": -1}), &["`replicas`"]),
        (json!({"envName": env, "replicas": "two"}), &["`replicas`"]),
        (json!({"envName": env, "pvc_name": "/etc"}), &["`pvc_name`"]),
        (json!({"envName": env, "pvc_name": "../x"}), &["`pvc_name`"]),
        (json!({"envName": env, "pvc_name": "d", "mount_path": "relative/x"}), &["`mount_path`"]),
        (json!({"envName": env, "pvc_name": "d", "mount_path": "/a/../etc"}), &["`mount_path`"]),
        (json!({"envName": env, "port": 70000}), &["`port`"]),
        (json!({"envName": env, "storage_size": "huge"}), &["`storage_size`"]),
        (json!({"envName": env, "memory_limit": "lots"}), &["`memory_limit`"]),
        (json!({"envName": env, "environment_variables": {"A=B": "x"}}), &["`environment_variables`"]),
        (json!({"envName": env, "volumes": [{"name": "/"}]}), &["`volumes`"]),
    ] {
        let (code, resp) = op.post_json("/env-service", &body).await;
        assert_eq!(code, 400, "{body}: {resp}");
        for f in fields {
            assert!(resp["message"].as_str().unwrap_or_default().contains(f), "{body}: {resp} should name {f}");
        }
    }
    let (_, list) = op.get("/env-service/*/list").await;
    assert_eq!(list["data"], json!([]), "nothing was made");
    assert!(containers_with_label(&format!("aenv.env_name={name}")).is_empty());
    assert_eq!(op.get("/env-service/nosuch").await.0, 404);
    assert_eq!(put(&op, "/env-service/nosuch", json!({"replicas": 1})).await.0, 404);
    assert_eq!(op.delete("/env-service/nosuch").await.0, 404);

    // With storage_size a service keeps one replica: scaling it up is refused naming both fields.
    let (code, resp) = op
        .post_json("/env-service", &json!({"envName": env, "service_name": "one", "storage_size": "1Gi", "port": 8081}))
        .await;
    assert_eq!(code, 200, "{resp}");
    let (code, resp) = put(&op, "/env-service/one", json!({"replicas": 3})).await;
    assert_eq!(code, 400, "{resp}");
    assert!(resp["message"].as_str().unwrap().contains("`storage_size`"), "{resp}");
    assert_eq!(put(&op, "/env-service/one", json!({})).await.0, 400);
    assert_eq!(op.delete("/env-service/one?deleteStorage=maybe").await.0, 400);
    let (code, _) = op.delete("/env-service/one?deleteStorage=true").await;
    assert_eq!(code, 200);
}

#[tokio::test]
async fn kill_9_during_a_rolling_update_converges_after_restart() {
    let mut op = Operator::start(BIN, &[]).await;
    let name = unique_name("svckill");
    register(&op, &name).await;
    let (code, resp) = op
        .post_json(
            "/env-service",
            &json!({"envName": format!("{name}@1.0.0"), "service_name": "k", "replicas": 2,
            "port": 8081, "environment_variables": {"MODE": "a"}}),
        )
        .await;
    assert_eq!(code, 200, "{resp}");
    wait_service(&op, "k", Duration::from_secs(60), |s| running(s, 2)).await;
    let (code, _) = put(&op, "/env-service/k", json!({"environment_variables": {"MODE": "b"}})).await;
    assert_eq!(code, 200);
    // Mid-update: new replicas being made, old ones still serving.
    tokio::time::sleep(Duration::from_millis(400)).await;
    op.kill9();
    op.restart(BIN).await;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (_, body) = op.get("/env-service/k").await;
        let now = replicas(&name);
        let all_new = now.iter().all(|r| env_of(r).iter().any(|e| e == "MODE=b"));
        let every = containers_with_label(&format!("aenv.env_name={name}"));
        if running(&body["data"], 2) && now.len() == 2 && all_new && every.len() == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "no convergence: {body} running {now:?} all {every:?}\n{}", op.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (code, _) = op.delete("/env-service/k").await;
    assert_eq!(code, 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !containers_with_label(&format!("aenv.env_name={name}")).is_empty() {
        assert!(Instant::now() < deadline, "replicas left behind\n{}", op.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_python_sdk_service_calls_work_unchanged() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let venv = std::env::var_os("AENV_TEST_VENV").map(std::path::PathBuf::from).unwrap_or_else(|| root.join(".venv"));
    let python = venv.join("bin/python");
    assert!(
        python.exists(),
        "{} is missing: run the suites through scripts/test (requirements-test.txt)",
        python.display()
    );
    let op = Operator::start(BIN, &[]).await;
    let name = unique_name("sdksvc");
    register(&op, &name).await;
    let out = tokio::time::timeout(
        Duration::from_secs(240),
        tokio::process::Command::new(&python)
            .arg(root.join("tests/sdk/sdk_services.py"))
            .arg(op.url(""))
            .arg(format!("{name}@1.0.0"))
            .arg(unique_name("sdk-web"))
            .output(),
    )
    .await
    .expect("the SDK flow finished in time")
    .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "SDK service flow failed:\n{stdout}\n{stderr}\n--- operator log ---\n{}", op.log());
    assert!(stdout.contains("all SDK service steps passed"), "{stdout}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !containers_with_label(&format!("aenv.env_name={name}")).is_empty() {
        assert!(Instant::now() < deadline, "replicas left behind after delete_env_service");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// With tokens, a service is its owner's: others neither see, change, delete nor reach it; its replicas count
/// towards the owner's instance cap; two owners' `pvc_name` never name one volume.
#[tokio::test]
async fn services_are_owner_scoped_counted_in_quotas_and_volumes_are_per_owner() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.json");
    std::fs::write(
        &tokens,
        json!({"tokens": [
            {"token": "alice-token-0123456789", "owner": "alice", "maxInstances": 3},
            {"token": "bob-token-0123456789", "owner": "bob"},
        ]})
        .to_string(),
    )
    .unwrap();
    let op = Operator::start(BIN, &["--tokens-file", &tokens.display().to_string(), "--proxy-auth"]).await;
    const ALICE: &str = "alice-token-0123456789";
    const BOB: &str = "bob-token-0123456789";
    let name = unique_name("svcten");
    let (code, resp) = send_as(
        ALICE,
        op.http.post(op.url("/env")).json(&json!({"name": name, "version": "1.0.0", "shared": true,
            "artifacts": [{"type": "image", "content": TEST_IMAGE}]})),
    )
    .await;
    assert_eq!(code, 200, "{resp}");
    let pvc = unique_name("shared");
    let create = |svc: &str| {
        json!({"envName": format!("{name}@1.0.0"), "service_name": svc, "replicas": 2, "port": 8081, "pvc_name": pvc,
            "owner": "bob"})
    };
    let (code, resp) = send_as(ALICE, op.http.post(op.url("/env-service")).json(&create("a-svc"))).await;
    assert_eq!(code, 200, "{resp}");
    assert_eq!(resp["data"]["owner"], "alice", "the token's owner, not the body's");
    let url = resp["data"]["service_url"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, s) = send_as(ALICE, op.http.get(op.url("/env-service/a-svc"))).await;
        if running(&s["data"], 2) {
            break;
        }
        assert!(Instant::now() < deadline, "{s}\n{}", op.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Bob neither sees, changes, deletes nor reaches it.
    assert_eq!(send_as(BOB, op.http.get(op.url("/env-service/a-svc"))).await.0, 404);
    assert_eq!(send_as(BOB, op.http.get(op.url("/env-service/*/list"))).await.1["data"], json!([]));
    assert_eq!(send_as(BOB, op.http.put(op.url("/env-service/a-svc")).json(&json!({"replicas": 0}))).await.0, 404);
    assert_eq!(send_as(BOB, op.http.delete(op.url("/env-service/a-svc"))).await.0, 404);
    assert_eq!(op.http.get(format!("{url}/health")).send().await.unwrap().status().as_u16(), 401);
    assert_eq!(op.http.get(format!("{url}/health")).bearer_auth(BOB).send().await.unwrap().status().as_u16(), 404);
    assert_eq!(op.http.get(format!("{url}/health")).bearer_auth(ALICE).send().await.unwrap().status().as_u16(), 200);
    assert_eq!(
        send_as(ALICE, op.http.get(op.url("/env-service/*/list"))).await.1["data"].as_array().map(Vec::len),
        Some(1)
    );

    // Replicas count towards alice's cap of 3: two held, so one more instance, and no third replica... nor a fourth.
    let (code, resp) = send_as(ALICE, op.http.put(op.url("/env-service/a-svc")).json(&json!({"replicas": 4}))).await;
    assert_eq!(code, 403, "{resp}");
    assert!(resp["message"].as_str().unwrap().contains("`replicas`"), "{resp}");
    let body = aenv_testkit::create_body(&name, TEST_IMAGE, json!({}));
    assert_eq!(send_as(ALICE, op.http.post(op.url("/env-instance")).json(&body)).await.0, 200);
    let (code, resp) = send_as(ALICE, op.http.post(op.url("/env-instance")).json(&body)).await;
    assert_eq!(code, 403, "replicas counted: {resp}");

    // Bob's service with the same pvc_name gets a volume of its own: alice's data is not there.
    let alice_replica = replicas(&name)
        .into_iter()
        .find(|r| inspect(r)["Mounts"].as_array().is_some_and(|m| !m.is_empty()))
        .expect("a replica of alice's");
    docker_ok(&["exec", &alice_replica, "sh", "-c", "echo alice-secret > /home/admin/data/s"]);
    let (code, resp) = send_as(BOB, op.http.post(op.url("/env-service")).json(&create("b-svc"))).await;
    assert_eq!(code, 200, "{resp}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, s) = send_as(BOB, op.http.get(op.url("/env-service/b-svc"))).await;
        if running(&s["data"], 2) {
            break;
        }
        assert!(Instant::now() < deadline, "{s}\n{}", op.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let alice_volume = inspect(&alice_replica)["Mounts"][0]["Name"].as_str().unwrap().to_string();
    let bob_replica = replicas(&name)
        .into_iter()
        .find(|r| inspect(r)["Mounts"][0]["Name"].as_str().is_some_and(|v| v != alice_volume))
        .expect("bob's replica on a volume of its own");
    let out = docker(&["exec", &bob_replica, "cat", "/home/admin/data/s"]);
    assert!(!out.status.success(), "bob read alice's data: {}", String::from_utf8_lossy(&out.stdout));

    for (token, svc) in [(ALICE, "a-svc"), (BOB, "b-svc")] {
        let path = format!("/env-service/{svc}?deleteStorage=true");
        assert_eq!(send_as(token, op.http.delete(op.url(&path))).await.0, 200);
    }
}

async fn send_as(token: &str, req: reqwest::RequestBuilder) -> (u16, Value) {
    let resp = req.bearer_auth(token).send().await.expect("request");
    let code = resp.status().as_u16();
    (code, resp.json().await.unwrap_or(Value::Null))
}

/// The controller's `/services` (what an api-service pointed at this operator calls): the Go controller's field order,
/// trailing newline, 201 on create, plain-text errors; replicas run from the inline Env.
#[tokio::test]
async fn controller_services_api_field_for_field() {
    let op = Operator::start(BIN, &[]).await;
    let name = unique_name("ctlsvc");
    let deploy = json!({"serviceName": "ctl-web", "replicas": 2, "port": 8081, "owner": "alice",
        "environment_variables": {"K": "V"}, "cpuLimit": "1", "memoryLimit": "256Mi", "podTemplate": "singleContainer"});
    let body = json!({"id": "", "name": name, "description": "", "version": "1.0.1", "tags": [], "code_url": "",
        "status": 6, "artifacts": [{"id": "", "type": "image", "content": TEST_IMAGE}], "build_config": null,
        "test_config": null, "deploy_config": deploy, "deployConfig": deploy, "created_at": "2025-10-10T11:11:11Z"});
    let resp = op.http.post(op.url("/services")).json(&body).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    let text = resp.text().await.unwrap();
    assert!(text.ends_with("}\n"), "{text:?}");
    assert!(
        text.starts_with(r#"{"success":true,"code":0,"data":{"id":"ctl-web","status":"Creating","service_url":"#),
        "{text}"
    );
    let created: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(created["data"]["envname"], name.as_str());
    assert_eq!(
        (created["data"]["version"].as_str(), created["data"]["owner"].as_str()),
        (Some("1.0.1"), Some("alice"))
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v: Value = op.http.get(op.url("/services/ctl-web")).send().await.unwrap().json().await.unwrap();
        if v["data"]["status"] == "Running" && v["data"]["available_replicas"] == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "{v}\n{}", op.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for r in replicas(&name) {
        assert!(env_of(&r).iter().any(|e| e == "K=V"), "{:?}", env_of(&r));
    }
    let list: Value =
        op.http.get(op.url(&format!("/services?envName={name}"))).send().await.unwrap().json().await.unwrap();
    assert_eq!(list["data"].as_array().map(Vec::len), Some(1), "{list}");
    // The REST API sees the same service, with the inline Env.
    let (code, got) = op.get("/env-service/ctl-web").await;
    assert_eq!((code, got["data"]["env"]["name"].as_str()), (200, Some(name.as_str())), "{got}");

    let resp = op.http.put(op.url("/services/ctl-web")).json(&json!({"replicas": 1})).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let updated: Value = resp.json().await.unwrap();
    assert_eq!((updated["data"]["status"].as_str(), updated["data"]["replicas"].as_u64()), (Some("Updating"), Some(1)));

    let mut bad = body.clone();
    bad["deployConfig"]["storageSize"] = json!("1Gi");
    bad["deployConfig"]["serviceName"] = json!("ctl-bad");
    let resp = op.http.post(op.url("/services")).json(&bad).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let text = resp.text().await.unwrap();
    assert!(text.starts_with("Invalid request body: ") && text.contains("`storage_size`"), "{text}");

    let resp = op.http.delete(op.url("/services/ctl-web")).send().await.unwrap();
    assert_eq!(
        (resp.status().as_u16(), resp.text().await.unwrap().as_str()),
        (200, "{\"success\":true,\"code\":0,\"data\":true}\n")
    );
    let resp = op.http.get(op.url("/services/ctl-web")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    assert!(resp.text().await.unwrap().ends_with("not found\n"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !containers_with_label(&format!("aenv.env_name={name}")).is_empty() {
        assert!(Instant::now() < deadline, "replicas left behind\n{}", op.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `wget` of `http://{host}:8081/health` from inside container `from` (busybox, under `timeout`): whether it
/// answered.
fn answers(from: &str, host: &str) -> bool {
    let out = docker(&["exec", from, "timeout", "3", "wget", "-qO-", &format!("http://{host}:8081/health")]);
    out.status.success() && String::from_utf8_lossy(&out.stdout).contains("healthy")
}

/// The service's replicas answer to its name on the service's network (owner-scoped with tokens); a sandbox of the
/// same owner that names that network (`deployConfig.network: "aenv-svc-<service>"`) resolves the name to the
/// replicas and gets an answer; another tenant can neither join the network (400 naming the field) nor resolve the
/// name from its own sandboxes. The replicas are listed, and each one's output read, by the owner only.
#[tokio::test]
async fn sandboxes_on_a_service_network_reach_it_by_name_and_other_tenants_cannot_join_it() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.json");
    std::fs::write(
        &tokens,
        json!({"tokens": [
            {"token": "alice-token-0123456789", "owner": "alice"},
            {"token": "bob-token-0123456789", "owner": "bob"},
        ]})
        .to_string(),
    )
    .unwrap();
    let op = Operator::start(BIN, &["--tokens-file", &tokens.display().to_string()]).await;
    const ALICE: &str = "alice-token-0123456789";
    const BOB: &str = "bob-token-0123456789";
    let name = unique_name("svcdns");
    // Replicas say something first, for their logs.
    let (code, resp) = send_as(
        ALICE,
        op.http.post(op.url("/env")).json(&json!({"name": name, "version": "1.0.0", "shared": true,
            "artifacts": [{"type": "image", "content": TEST_IMAGE}],
            "deployConfig": {"arguments": ["sh", "-c", "echo replica-log-line; exec /bin/aenv-entrypoint"]}})),
    )
    .await;
    assert_eq!(code, 200, "{resp}");
    let svc = unique_name("dns");
    let (code, resp) = send_as(
        ALICE,
        op.http.post(op.url("/env-service")).json(&json!({"envName": format!("{name}@1.0.0"), "service_name": svc,
            "replicas": 2, "port": 8081})),
    )
    .await;
    assert_eq!(code, 200, "{resp}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, s) = send_as(ALICE, op.http.get(op.url(&format!("/env-service/{svc}")))).await;
        if running(&s["data"], 2) {
            break;
        }
        assert!(Instant::now() < deadline, "{s}\n{}", op.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Each replica is on alice's scope of the service network, answering there to the service's name.
    let network_suffix = format!("-aenv-svc-{svc}");
    let mut replica_ips = Vec::new();
    for replica in replicas(&name) {
        let networks = inspect(&replica)["NetworkSettings"]["Networks"].clone();
        let networks = networks.as_object().unwrap();
        assert_eq!(networks.len(), 1, "{networks:?}");
        let (net, endpoint) = networks.iter().next().unwrap();
        assert!(net.starts_with("aenv-o-") && net.ends_with(&network_suffix), "{net}");
        let aliases: Vec<&str> = endpoint["Aliases"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
        assert!(aliases.contains(&svc.as_str()), "{aliases:?}");
        replica_ips.push(endpoint["IPAddress"].as_str().unwrap().to_string());
    }
    assert_eq!(replica_ips.len(), 2);

    let start = |token: &'static str, deploy: Value| {
        let body = aenv_testkit::create_body(&name, TEST_IMAGE, deploy);
        let req = op.http.post(op.url("/env-instance")).json(&body);
        async move { send_as(token, req).await }
    };
    let wait_running = |token: &'static str, id: String| {
        let op = &op;
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let (_, got) = send_as(token, op.http.get(op.url(&format!("/env-instance/{id}")))).await;
                if got["data"]["status"] == "Running" {
                    return;
                }
                assert!(Instant::now() < deadline, "{got}\n{}", op.log());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };

    // Alice's sandbox joins the service's network and reaches the replicas by the service's name.
    let join = json!({"network": format!("aenv-svc-{svc}")});
    let (code, resp) = start(ALICE, join.clone()).await;
    assert_eq!(code, 200, "{resp}");
    let client = resp["data"]["id"].as_str().unwrap().to_string();
    wait_running(ALICE, client.clone()).await;
    assert!(answers(&client, &svc), "alice's sandbox gets an answer from http://{svc}:8081\n{}", op.log());
    let lookup = docker(&["exec", &client, "nslookup", &svc]);
    let lookup = String::from_utf8_lossy(&lookup.stdout);
    for ip in &replica_ips {
        assert!(lookup.contains(ip.as_str()), "{svc} resolves to every replica ({ip}): {lookup}");
    }

    // The replicas through the API, and each one's output; alice's own instance is no replica of the service.
    let (code, listed) = send_as(ALICE, op.http.get(op.url(&format!("/env-service/{svc}/replicas")))).await;
    assert_eq!(code, 200, "{listed}");
    let items = listed["data"].as_array().unwrap();
    let mut ids: Vec<String> = items.iter().map(|r| r["id"].as_str().unwrap().to_string()).collect();
    ids.sort();
    assert_eq!(ids, replicas(&name).into_iter().filter(|r| *r != client).collect::<Vec<_>>());
    assert!(items.iter().all(|r| r["ready"] == true && r["status"] == "Running" && r["ip"] != ""), "{listed}");
    let logs_of = |token: &'static str, replica: &str| {
        let req =
            op.http.get(op.url(&format!("/env-service/{svc}/replicas/{replica}/logs?tail=50"))).bearer_auth(token);
        async move {
            let resp = req.send().await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }
    };
    let (code, text) = logs_of(ALICE, &ids[0]).await;
    assert_eq!(code, 200, "{text}");
    assert!(text.contains("replica-log-line"), "{text:?}");
    assert_eq!(logs_of(ALICE, &client).await.0, 404, "not a replica of the service");
    assert_eq!(logs_of(BOB, &ids[0]).await.0, 404, "not bob's service");
    assert_eq!(send_as(BOB, op.http.get(op.url(&format!("/env-service/{svc}/replicas")))).await.0, 404);

    // Bob cannot join alice's service network: refused, naming the field, nothing made.
    let (code, resp) = start(BOB, join).await;
    assert_eq!(code, 400, "{resp}");
    assert!(resp["message"].as_str().unwrap().contains("deployConfig.network"), "{resp}");
    // Nor does a sandbox of his (on his own network) resolve the name.
    let (code, resp) = start(BOB, json!({})).await;
    assert_eq!(code, 200, "{resp}");
    let bobs = resp["data"]["id"].as_str().unwrap().to_string();
    wait_running(BOB, bobs.clone()).await;
    assert!(!answers(&bobs, &svc), "bob's sandbox must not reach alice's service by name");
    assert!(answers(&client, &svc), "the check from alice's side still answers (the probe works)");

    for (token, id) in [(ALICE, &client), (BOB, &bobs)] {
        assert_eq!(send_as(token, op.http.delete(op.url(&format!("/env-instance/{id}")))).await.0, 200);
    }
    assert_eq!(send_as(ALICE, op.http.delete(op.url(&format!("/env-service/{svc}")))).await.0, 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !replicas(&name).is_empty() {
        assert!(Instant::now() < deadline, "replicas left behind");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A replica whose readiness probe never passes (the test image answering /health only after an hour) is removed
/// and replaced once the service's ready timeout passes, the reason in the service's `message`; the timeout is
/// checked as input. Requests become a memory reservation and a cpu weight; one above its limit is refused.
#[tokio::test]
async fn a_replica_never_ready_is_replaced_after_the_ready_timeout_with_the_reason() {
    let op = Operator::start(BIN, &[]).await;
    let name = unique_name("svcslow");
    let body = json!({"name": name, "version": "1.0.0", "artifacts": [{"type": "image", "content": TEST_IMAGE}],
        "deployConfig": {"environment_variables": {"AENV_HEALTH_DELAY": "3600"}}});
    let (code, resp) = op.post_json("/env", &body).await;
    assert_eq!(code, 200, "{resp}");
    let id = unique_name("slow");
    let create = |timeout: Value| {
        json!({"envName": format!("{name}@1.0.0"), "service_name": id, "replicas": 1, "port": 8081,
            "ready_timeout_seconds": timeout, "cpu_request": "250m", "cpu_limit": "1", "memory_request": "32Mi",
            "memory_limit": "64Mi"})
    };
    // A request above its limit is refused, naming it (Docker would refuse the container).
    let mut above = create(json!(2));
    above["memory_request"] = json!("128Mi");
    let (code, resp) = op.post_json("/env-service", &above).await;
    assert_eq!(code, 400, "{resp}");
    assert!(resp["message"].as_str().unwrap().contains("`memory_request`"), "{resp}");
    for bad in [json!(0), json!(-5), json!(86_401), json!("two")] {
        let (code, resp) = op.post_json("/env-service", &create(bad.clone())).await;
        assert_eq!(code, 400, "{bad}: {resp}");
        assert!(resp["message"].as_str().unwrap().contains("ready_timeout_seconds"), "{resp}");
    }
    let (code, resp) = op.post_json("/env-service", &create(json!(2))).await;
    assert_eq!(code, 200, "{resp}");

    let deadline = Instant::now() + Duration::from_secs(30);
    let first = loop {
        if let [one] = replicas(&name).as_slice() {
            break one.clone();
        }
        assert!(Instant::now() < deadline, "no replica started\n{}", op.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Requests on Docker: a memory reservation and a cpu weight (1024 per core), under the limits.
    let host = inspect(&first)["HostConfig"].clone();
    assert_eq!(
        (host["MemoryReservation"].as_i64(), host["CpuShares"].as_i64(), host["Memory"].as_i64()),
        (Some(32 << 20), Some(256), Some(64 << 20)),
        "{host}"
    );
    let s = wait_service(&op, &id, Duration::from_secs(30), |s| {
        s["message"].as_str().is_some_and(|m| m.contains("not ready") && m.contains("ready timeout 2s"))
    })
    .await;
    assert_eq!(s["available_replicas"], 0, "{s}");
    assert!(s["message"].as_str().unwrap().contains(first.as_str()), "the message names the replica: {s}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while replicas(&name).first() == Some(&first) || replicas(&name).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the never-ready replica was not replaced: {:?}\n{}",
            replicas(&name),
            op.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while docker(&["inspect", &first]).status.success() {
        assert!(Instant::now() < deadline, "the timed-out replica's container is still there");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    assert_eq!(op.delete(&format!("/env-service/{id}")).await.0, 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !replicas(&name).is_empty() {
        assert!(Instant::now() < deadline, "replicas left behind");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An MCP session sticks to the replica that issued it: a replica's answer naming `Mcp-Session-Id` binds that id to
/// it, and every later request carrying the id reaches it (upstream gets this from a Kubernetes Service balancing per
/// connection). An id the client made up binds nothing (requests go round the replicas); when the issuing replica
/// goes, its sessions' requests reach a ready replica rather than failing.
#[tokio::test]
async fn an_mcp_session_stays_on_the_replica_that_issued_it() {
    let op = Operator::start(BIN, &[]).await;
    let name = unique_name("mcp");
    register(&op, &name).await;
    let id = unique_name("mcp");
    let (code, created) = op
        .post_json(
            "/env-service",
            &json!({"envName": format!("{name}@1.0.0"), "service_name": id, "replicas": 2, "port": 8081}),
        )
        .await;
    assert_eq!(code, 200, "{created}");
    let s = wait_service(&op, &id, Duration::from_secs(60), |s| running(s, 2)).await;
    let url = s["service_url"].as_str().unwrap().to_string();
    let first = replicas(&name);
    assert_eq!(first.len(), 2, "{first:?}");
    // A CGI stand-in for an MCP server: a request without a session gets one named after the replica.
    let cgi = "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n'\n\
               [ -z \"$HTTP_MCP_SESSION_ID\" ] && printf 'Mcp-Session-Id: s-%s\\r\\n' \"$(cat /www/who)\"\n\
               printf '\\r\\n'\ncat /www/who\n";
    for r in &first {
        docker_ok(&["exec", r, "sh", "-c", &format!("mkdir -p /www/cgi-bin && echo {r} > /www/who")]);
        let out = std::process::Command::new("docker")
            .args(["exec", "-i", r, "sh", "-c", "cat > /www/cgi-bin/mcp && chmod +x /www/cgi-bin/mcp"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().expect("stdin").write_all(cgi.as_bytes())?;
                c.wait()
            })
            .expect("docker exec");
        assert!(out.success());
    }
    let call = |session: Option<String>| {
        let mut req = op.http.post(format!("{url}/cgi-bin/mcp")).body("{}");
        if let Some(s) = session {
            req = req.header("Mcp-Session-Id", s);
        }
        async move {
            let resp = req.send().await.expect("service address");
            assert_eq!(resp.status().as_u16(), 200);
            let issued = resp.headers().get("mcp-session-id").and_then(|v| v.to_str().ok()).map(String::from);
            (issued, resp.text().await.unwrap().trim().to_string())
        }
    };
    let (issued, home) = call(None).await;
    let session = issued.expect("the replica named a session");
    assert_eq!(session, format!("s-{home}"));
    for _ in 0..8 {
        assert_eq!(call(Some(session.clone())).await.1, home, "a request of the session left its replica");
    }
    // Without a session, or with one no replica issued, requests still go round both replicas.
    for made_up in [None, Some("s-made-up".to_string())] {
        let mut seen = HashSet::new();
        for _ in 0..6 {
            seen.insert(call(made_up.clone()).await.1);
        }
        assert_eq!(seen, first.iter().cloned().collect::<HashSet<_>>(), "{made_up:?}");
    }
    // The issuing replica goes: the session's requests reach a ready replica (the replacement or the other one).
    docker_ok(&["rm", "-f", &home]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let resp = op.http.get(format!("{url}/who")).header("Mcp-Session-Id", &session).send().await;
        if let Ok(r) = resp
            && r.status().as_u16() == 200
        {
            assert_ne!(r.text().await.unwrap().trim(), home);
            break;
        }
        assert!(Instant::now() < deadline, "the session's requests never reached another replica\n{}", op.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    op.delete(&format!("/env-service/{id}")).await;
}
