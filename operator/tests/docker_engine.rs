//! The Docker engine's deploy-config keys, networks, ports and readiness, seen in `docker inspect` of the real
//! daemon.

use std::time::{Duration, Instant};

use aenv_testkit::{Operator, TEST_IMAGE, containers_with_label, create_body, docker, docker_ok, inspect, unique_name};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_aenv-operator");

async fn create(op: &Operator, name: &str, deploy: Value) -> String {
    let (code, body) = op.post_json("/env-instance", &create_body(name, TEST_IMAGE, deploy)).await;
    assert_eq!(code, 200, "{body}");
    body["data"]["id"].as_str().expect("id").to_string()
}

fn running(v: &Value) -> bool {
    v["data"]["status"] == "Running"
}

#[tokio::test]
async fn every_deploy_key_shows_in_docker_inspect() {
    let op = Operator::start(BIN, &[]).await;
    let name = unique_name("keys");
    let mut body = create_body(
        &name,
        TEST_IMAGE,
        json!({
            "cpu": "500m",
            "memory": "2G",
            "ttl": "45m",
            "owner": "deploy-owner",
            "environment_variables": {"SNAKE": "1"},
            "environmentVariables": {"CAMEL": "2"},
            "arguments": ["sh", "-c", "echo ok > /www/ok; exec httpd -f -p 8081 -h /www"],
            "labels": {"team": "rl"},
            "ports": [8081],
        }),
    );
    body.as_object_mut().unwrap().remove("owner");
    let (code, created) = op.post_json("/env-instance", &body).await;
    assert_eq!(code, 200, "{created}");
    let id = created["data"]["id"].as_str().unwrap().to_string();
    let v = op.wait_for(&id, Duration::from_secs(30), |v| running(v) && v["data"]["ready"] == true).await;
    let c = inspect(&id);
    let host = &c["HostConfig"];
    assert_eq!(host["NanoCpus"], 500_000_000i64, "cpu 500m");
    assert_eq!(host["Memory"], 2_000_000_000i64, "memory 2G is decimal, as Kubernetes reads it");
    assert_eq!(host["MemorySwap"], 2_000_000_000i64, "no swap beyond the limit");
    assert_eq!(host["RestartPolicy"]["Name"], "no");
    assert_eq!(host["PortBindings"]["8081/tcp"][0]["HostIp"], "127.0.0.1");
    let env: Vec<&str> = c["Config"]["Env"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(env.contains(&"SNAKE=1") && env.contains(&"CAMEL=2"), "{env:?}");
    assert_eq!(c["Config"]["Cmd"], json!(["sh", "-c", "echo ok > /www/ok; exec httpd -f -p 8081 -h /www"]));
    let labels = &c["Config"]["Labels"];
    assert_eq!(labels["team"], "rl");
    assert_eq!(labels["aenv.io/owner"], "deploy-owner", "deployConfig.owner");
    assert_eq!(v["data"]["ttl"], "45m");

    // The published port is in status and answers on loopback.
    let ports = v["data"]["ports"].as_array().expect("ports in status");
    assert_eq!(ports[0]["containerPort"], 8081);
    assert_eq!(ports[0]["hostIp"], "127.0.0.1");
    let host_port = ports[0]["hostPort"].as_u64().unwrap();
    let text = op.http.get(format!("http://127.0.0.1:{host_port}/ok")).send().await.unwrap().text().await.unwrap();
    assert_eq!(text.trim(), "ok");
}

#[tokio::test]
async fn user_network_is_created_shared_and_removed_with_its_last_instance() {
    let op = Operator::start(BIN, &[]).await;
    let name = unique_name("net");
    let net = format!("{name}-net");
    let a = create(&op, &name, json!({"network": net})).await;
    let b = create(&op, &name, json!({"network": net})).await;
    let va = op.wait_for(&a, Duration::from_secs(30), running).await;
    op.wait_for(&b, Duration::from_secs(30), running).await;
    let n: Value = serde_json::from_str(&docker_ok(&["network", "inspect", &net])).unwrap();
    assert_eq!(n[0]["Labels"]["aenv.io/network-of"], op.operator_id.as_str());
    assert_eq!(n[0]["Containers"].as_object().unwrap().len(), 2);
    assert_eq!(inspect(&a)["NetworkSettings"]["Networks"][&net]["IPAddress"], va["data"]["ip"]);
    // b reaches a by IP on the shared network.
    let ip = va["data"]["ip"].as_str().unwrap();
    let out = docker_ok(&["exec", &b, "wget", "-qO-", &format!("http://{ip}:8081/health")]);
    assert!(out.contains("healthy"), "{out}");

    op.delete(&format!("/env-instance/{a}")).await;
    op.wait_for(&a, Duration::from_secs(10), |v| v["code"] == 404).await;
    assert!(docker(&["network", "inspect", &net]).status.success(), "still used by b");
    op.delete(&format!("/env-instance/{b}")).await;
    op.wait_for(&b, Duration::from_secs(10), |v| v["code"] == 404).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while docker(&["network", "inspect", &net]).status.success() {
        assert!(Instant::now() < deadline, "network {net} outlived its last instance");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn network_none_and_host_follow_the_policy() {
    let op = Operator::start(BIN, &[]).await;
    let name = unique_name("netmode");
    let id = create(&op, &name, json!({"network": "none", "readiness": false})).await;
    let v = op.wait_for(&id, Duration::from_secs(30), running).await;
    assert_eq!(v["data"]["ip"], "", "no network, no IP");
    assert_eq!(inspect(&id)["HostConfig"]["NetworkMode"], "none");

    let (code, resp) = op.post_json("/env-instance", &create_body(&name, TEST_IMAGE, json!({"network": "host"}))).await;
    assert_eq!(code, 400, "{resp}");
    assert!(resp["message"].as_str().unwrap().contains("--allow host-network"), "{resp}");
    let (code, resp) =
        op.post_json("/env-instance", &create_body(&name, TEST_IMAGE, json!({"network": "none", "ports": [80]}))).await;
    assert_eq!(code, 400, "{resp}");
    assert!(resp["message"].as_str().unwrap().contains("deployConfig.ports"), "{resp}");

    // An existing network the operator did not create needs --allow external-networks.
    let foreign = format!("{name}-foreign");
    docker_ok(&["network", "create", &foreign]);
    let id = create(&op, &name, json!({"network": foreign})).await;
    let v = op.wait_for(&id, Duration::from_secs(30), |v| v["data"]["status"] == "Failed").await;
    assert!(v["data"]["message"].as_str().unwrap().contains("external-networks"), "{v}");
    docker(&["network", "rm", &foreign]);

    let op = Operator::start(BIN, &["--allow", "host-network"]).await;
    let id = create(&op, &name, json!({"network": "host", "readiness": false, "arguments": ["sleep", "600"]})).await;
    op.wait_for(&id, Duration::from_secs(30), running).await;
    assert_eq!(inspect(&id)["HostConfig"]["NetworkMode"], "host");
}

#[tokio::test]
async fn ready_flips_when_health_starts_answering() {
    // The create answers at once (as upstream), so the status can be seen before readiness: the waiting answer
    // has its own tests (create_wait.rs).
    let op = Operator::start(BIN, &["--create-wait", "0"]).await;
    let name = unique_name("ready");
    let id = create(&op, &name, json!({"environment_variables": {"AENV_HEALTH_DELAY": "2"}})).await;
    let first = op.wait_for(&id, Duration::from_secs(30), running).await;
    assert_eq!(first["data"]["ready"], false, "running but not answering yet: {first}");
    let started = Instant::now();
    let ready = op.wait_for(&id, Duration::from_secs(15), |v| v["data"]["ready"] == true).await;
    assert!(started.elapsed() >= Duration::from_millis(500), "ready only once /health answers");
    assert_eq!(ready["data"]["status"], "Running");

    // Without a probe (an image that serves nothing), Running is enough.
    let id = create(&op, &name, json!({"arguments": ["sleep", "600"], "readiness": false})).await;
    let v = op.wait_for(&id, Duration::from_secs(30), running).await;
    assert_eq!(v["data"]["ready"], true, "{v}");
    // A probe on another path and port that never answers keeps Ready false, with the reason.
    let id = create(&op, &name, json!({"readiness": {"port": 9999, "path": "/ready", "timeoutMs": 200}})).await;
    op.wait_for(&id, Duration::from_secs(30), running).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (_, v) = op.get(&format!("/env-instance/{id}")).await;
    assert_eq!(v["data"]["ready"], false, "{v}");
    assert!(containers_with_label(&format!("aenv.env_name={name}")).len() >= 2);
}

#[tokio::test]
async fn ports_are_published_when_the_image_exposes_nothing() {
    let image = aenv_testkit::ensure_bare_test_image();
    let exposed = inspect(image)["Config"]["ExposedPorts"].clone();
    assert!(exposed.is_null() || exposed == json!({}), "the fixture must declare no port: {exposed}");
    let op = Operator::start(BIN, &[]).await;
    let name = unique_name("bare");
    let (code, created) =
        op.post_json("/env-instance", &create_body(&name, image, json!({"ports": [8081, "9000/udp"]}))).await;
    assert_eq!(code, 200, "{created}");
    let id = created["data"]["id"].as_str().unwrap().to_string();
    let v = op.wait_for(&id, Duration::from_secs(30), |v| running(v) && v["data"]["ready"] == true).await;
    let c = inspect(&id);
    let exposed = c["Config"]["ExposedPorts"].as_object().expect("ExposedPorts set by the operator");
    assert!(exposed.contains_key("8081/tcp") && exposed.contains_key("9000/udp"), "{exposed:?}");
    // Both are published, each on an ephemeral loopback port, and status says where.
    let ports = v["data"]["ports"].as_array().expect("ports in status");
    assert_eq!(ports.len(), 2, "{v}");
    let tcp = ports.iter().find(|p| p["containerPort"] == 8081).expect("8081 in status");
    assert_eq!((tcp["protocol"].as_str(), tcp["hostIp"].as_str()), (Some("tcp"), Some("127.0.0.1")));
    let udp = ports.iter().find(|p| p["containerPort"] == 9000).expect("9000/udp in status");
    assert_eq!(udp["protocol"], "udp");
    assert!(udp["hostPort"].as_u64().is_some_and(|p| p > 0), "{udp}");
    let host_port = tcp["hostPort"].as_u64().unwrap();
    let text = op.http.get(format!("http://127.0.0.1:{host_port}/health")).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("healthy"), "{text}");
}

#[tokio::test]
async fn compose_owned_labels_are_refused_on_single_containers() {
    let op = Operator::start(BIN, &[]).await;
    let name = unique_name("cl");
    for (key, value) in [("com.docker.compose.project", "victim"), ("com.docker.compose.service", "web")] {
        let mut body = create_body(&name, TEST_IMAGE, json!({}));
        body["labels"] = json!({ key: value });
        let (code, resp) = op.post_json("/env-instance", &body).await;
        assert_eq!(code, 400, "{key}: {resp}");
        let msg = resp["message"].as_str().unwrap_or_default();
        assert!(msg.contains("`labels`") && msg.contains(key), "{msg}");
        let mut body = create_body(&name, TEST_IMAGE, json!({"labels": { key: value }}));
        body.as_object_mut().unwrap().remove("labels");
        let (code, resp) = op.post_json("/env-instance", &body).await;
        assert_eq!(code, 400, "deployConfig.labels {key}: {resp}");
    }
    // Nothing was made; a label of another prefix still passes.
    assert!(containers_with_label(&format!("aenv.env_name={name}")).is_empty());
    let (code, resp) = op
        .post_json("/env-instance", &create_body(&name, TEST_IMAGE, json!({"labels": {"com.docker.composer": "x"}})))
        .await;
    assert_eq!(code, 200, "{resp}");
}

#[tokio::test]
async fn a_container_that_exits_fails_with_its_last_lines_in_the_message() {
    let op = Operator::start(BIN, &["--create-wait", "0"]).await;
    let name = unique_name("lastout");
    // Many lines first (only the last few are kept), an escape sequence (stripped), the reason last, on stderr.
    let script = "i=0; while [ $i -lt 50 ]; do echo noise $i; i=$((i+1)); done; \
                  printf '\\033[31mcolour\\033[0m\\n'; echo 'config missing: /etc/app.toml' >&2; exit 3";
    let id = create(&op, &name, json!({"arguments": ["/bin/sh", "-c", script], "readiness": false})).await;
    let v = op.wait_for(&id, Duration::from_secs(30), |v| v["data"]["status"] == "Failed").await;
    let msg = v["data"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("exited with code 3"), "{msg}");
    assert!(msg.contains("config missing: /etc/app.toml"), "the reason the program printed: {msg}");
    assert!(msg.contains("[31mcolour") && !msg.contains('\u{1b}'), "control characters are stripped: {msg:?}");
    assert!(!msg.contains("noise 10"), "only the last lines: {msg}");
    assert!(msg.len() < 1024, "bounded: {}", msg.len());
}

#[tokio::test]
async fn a_missing_executable_fails_the_container_with_docker_s_reason() {
    let op = Operator::start(BIN, &[]).await;
    let name = unique_name("noexec");
    let id = create(&op, &name, json!({"arguments": ["/no/such/binary"]})).await;
    let v = op.wait_for(&id, Duration::from_secs(30), |v| v["data"]["status"] == "Failed").await;
    let msg = v["data"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("starting container") && msg.contains("/no/such/binary"), "{msg}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, again) = op.get(&format!("/env-instance/{id}")).await;
    assert_eq!(again["data"]["status"], "Failed", "{again}");
}

#[tokio::test]
async fn an_image_for_another_platform_fails_the_container_saying_so() {
    let image = aenv_testkit::ensure_foreign_test_image();
    let op = Operator::start(BIN, &[]).await;
    let name = unique_name("platform");
    let (code, created) = op.post_json("/env-instance", &create_body(&name, image, json!({"readiness": false}))).await;
    assert_eq!(code, 200, "{created}");
    let id = created["data"]["id"].as_str().unwrap().to_string();
    let v = op.wait_for(&id, Duration::from_secs(30), |v| v["data"]["status"] == "Failed").await;
    let msg = v["data"]["message"].as_str().unwrap_or_default();
    let host = docker_ok(&["version", "-f", "{{.Server.Os}}/{{.Server.Arch}}"]);
    assert!(msg.contains("exited with code") && msg.contains("its image is built for linux/"), "{msg}");
    assert!(msg.contains(&format!("this Docker host runs {}", host.trim())), "{msg}");
}
