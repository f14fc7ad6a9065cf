//! The Swarm engine (`--engine swarm`) end to end: the real binary as a host process against a private Docker
//! daemon that is the single manager of a swarm of its own (`testkit::SwarmDaemon`, root only), with the test image
//! loaded into it. The operator reaches instances through ports published in Swarm's host mode on the node
//! (`--swarm-reach published`, the default): the overlay network's addresses are not reachable from the host.

use std::time::{Duration, Instant};

use aenv_testkit::{Operator, SwarmDaemon, TEST_IMAGE, create_body, unique_name};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_aenv-operator");

fn running(v: &Value) -> bool {
    v["data"]["status"] == "Running"
}

async fn operator_on(swarm: &SwarmDaemon) -> Operator {
    Operator::start(BIN, &["--engine", "swarm", "--docker-host", &swarm.daemon.socket]).await
}

/// `docker service inspect` of a service on the swarm, as JSON (`None` when there is none).
fn service(swarm: &SwarmDaemon, name: &str) -> Option<Value> {
    let out = swarm.docker(&["service", "inspect", name]);
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice::<Vec<Value>>(&out.stdout).ok()?.into_iter().next()
}

/// The ids of every task of a service.
fn tasks(swarm: &SwarmDaemon, name: &str) -> Vec<String> {
    swarm.docker_ok(&["service", "ps", "-q", "--no-trunc", name]).split_whitespace().map(String::from).collect()
}

async fn create(op: &Operator, name: &str, deploy: Value) -> String {
    let (code, body) = op.post_json("/env-instance", &create_body(name, TEST_IMAGE, deploy)).await;
    assert_eq!(code, 200, "{body}");
    body["data"]["id"].as_str().unwrap().to_string()
}

async fn wait_gone(swarm: &SwarmDaemon, name: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while service(swarm, name).is_some() {
        assert!(Instant::now() < deadline, "service {name} is still there after {timeout:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn instances_are_single_replica_services() {
    let swarm = SwarmDaemon::start();
    let mut op = operator_on(&swarm).await;

    // Running with an address, ready by its probe through the published port, reachable through the proxy.
    let name = unique_name("sw");
    let id = create(&op, &name, json!({"memory": "256Mi", "cpu": "250m"})).await;
    let v = op.wait_for(&id, Duration::from_secs(60), |v| running(v) && v["data"]["ready"] == true).await;
    let ip = v["data"]["ip"].as_str().unwrap().to_string();
    assert!(ip.parse::<std::net::Ipv4Addr>().is_ok(), "an address on the overlay network: {v}");
    let resp = op
        .http
        .get(op.proxy_url("/health"))
        .header("AEnvCore-MCPProxy-URL", format!("http://{ip}:8081"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.text().await.unwrap().contains("MCP server is healthy"));
    // A port of the instance's address that it did not publish is not dialled elsewhere (nor is any other host).
    let resp = op
        .http
        .get(op.proxy_url("/health"))
        .header("AEnvCore-MCPProxy-URL", "http://127.0.0.1:2375")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);

    // The service: one replica, never restarted, the labels, limits and reservations, the sandbox defaults.
    let svc = service(&swarm, &id).expect("the instance's service");
    let spec = &svc["Spec"];
    assert_eq!(spec["Mode"]["Replicated"]["Replicas"], 1);
    let task = &spec["TaskTemplate"];
    assert_eq!(task["RestartPolicy"]["Condition"], "none");
    assert_eq!(spec["Labels"]["aenv.io/operator-id"], op.operator_id.as_str());
    assert_eq!(spec["Labels"]["aenv.env_name"], name.as_str());
    assert_eq!(task["Resources"]["Limits"]["MemoryBytes"], 256 << 20);
    assert_eq!(task["Resources"]["Limits"]["NanoCPUs"], 250_000_000);
    assert_eq!(task["Resources"]["Limits"]["Pids"], 1024);
    assert_eq!(task["Resources"]["Reservations"]["MemoryBytes"], 256 << 20);
    // The container Swarm made on the node carries them.
    let container = swarm.docker_ok(&["ps", "-q", "--filter", &format!("label=com.docker.swarm.service.name={id}")]);
    let inspect: Vec<Value> = serde_json::from_str(&swarm.docker_ok(&["inspect", &container])).unwrap();
    let host = &inspect[0]["HostConfig"];
    assert_eq!(host["Memory"], 256 << 20);
    assert_eq!(host["PidsLimit"], 1024);
    assert_eq!(host["CapDrop"], json!(["ALL"]));
    let caps = host["CapAdd"].as_array().unwrap();
    assert!(caps.iter().any(|c| c == "CAP_CHOWN") && !caps.iter().any(|c| c == "CAP_NET_RAW"), "{host}");
    assert_eq!(inspect[0]["Config"]["Labels"]["aenv.io/instance"], id.as_str());

    // kill -9 and a restart: the same service is adopted, not made again.
    let service_id = svc["ID"].as_str().unwrap().to_string();
    let task_ids = tasks(&swarm, &id);
    op.restart(BIN).await;
    let v = op.wait_for(&id, Duration::from_secs(30), |v| running(v) && v["data"]["ready"] == true).await;
    assert_eq!(v["data"]["ip"], ip.as_str());
    assert_eq!(service(&swarm, &id).unwrap()["ID"], service_id.as_str(), "adopted, not recreated");
    assert_eq!(tasks(&swarm, &id), task_ids, "the same task runs");
    assert_eq!(swarm.docker_ok(&["service", "ls", "-q"]).lines().count(), 1);

    // DELETE removes the service.
    let (code, _) = op.delete(&format!("/env-instance/{id}")).await;
    assert_eq!(code, 200);
    op.wait_for(&id, Duration::from_secs(20), |v| v["code"] == 404).await;
    wait_gone(&swarm, &id, Duration::from_secs(10)).await;

    // A TTL removes it at its expiry. Meanwhile: its logs are the service's, and what needs the task's container
    // (exec, files, pause, stats) is a 501.
    let ttl_id = create(
        &op,
        &unique_name("swttl"),
        json!({"ttl": "6s", "readiness": false, "arguments": ["sh", "-c", "echo hello-from-swarm; exec sleep 60"]}),
    )
    .await;
    op.wait_for(&ttl_id, Duration::from_secs(30), running).await;
    assert!(service(&swarm, &ttl_id).is_some());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let logs = op.http.get(op.url(&format!("/env-instance/{ttl_id}/logs"))).send().await.unwrap();
        assert_eq!(logs.status(), 200);
        if logs.text().await.unwrap().contains("hello-from-swarm") {
            break;
        }
        assert!(Instant::now() < deadline, "the service's logs never showed the line");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (code, body) = op.post_json(&format!("/env-instance/{ttl_id}/exec"), &json!({"command": ["true"]})).await;
    assert_eq!(code, 501, "{body}");
    op.wait_for(&ttl_id, Duration::from_secs(30), |v| v["code"] == 404).await;
    wait_gone(&swarm, &ttl_id, Duration::from_secs(10)).await;

    // Placement: a bad constraint is a 400 naming the field, and nothing is made.
    for (deploy, field) in [
        (json!({"placement": {"constraints": ["node.labels.gpu=true"]}}), "deployConfig.placement.constraints[0]"),
        (json!({"placement": {"constraints": ["gpu==true"]}}), "deployConfig.placement.constraints[0]"),
        (json!({"placement": {"preferences": ["zone"]}}), "deployConfig.placement.preferences[0]"),
        (json!({"placement": ["node.role==worker"]}), "deployConfig.placement"),
        (json!({"network": "host"}), "deployConfig.network"),
    ] {
        let (code, body) = op.post_json("/env-instance", &create_body(&unique_name("swbad"), TEST_IMAGE, deploy)).await;
        assert_eq!(code, 400, "{body}");
        assert!(body["message"].as_str().unwrap().contains(field), "{body} names {field}");
    }
    assert_eq!(swarm.docker_ok(&["service", "ls", "-q"]), "", "a refused create makes nothing");

    // An overlay the operator did not make (a team's application network) is not joined because a request named
    // it: the instance fails saying which flag allows it, and no service is made.
    swarm.docker_ok(&["network", "create", "-d", "overlay", "--attachable", "team-backend"]);
    let foreign = create(&op, &unique_name("swforeign"), json!({"network": "team-backend"})).await;
    let v = op.wait_for(&foreign, Duration::from_secs(20), |v| v["data"]["status"] == "Failed").await;
    assert!(v["data"]["message"].as_str().unwrap_or_default().contains("--allow external-networks"), "{v}");
    assert!(service(&swarm, &foreign).is_none());
    op.delete(&format!("/env-instance/{foreign}")).await;
    swarm.docker_ok(&["network", "rm", "team-backend"]);

    // A constraint no node meets keeps the instance waiting with Swarm's reason; labelling the node places it.
    let gpu =
        create(&op, &unique_name("swgpu"), json!({"placement": {"constraints": ["node.labels.gpu==true"]}})).await;
    let v = op
        .wait_for(&gpu, Duration::from_secs(30), |v| {
            v["data"]["message"].as_str().is_some_and(|m| m.contains("no suitable node"))
        })
        .await;
    assert_ne!(v["data"]["status"], "Running", "{v}");
    swarm.docker_ok(&["node", "update", "--label-add", "gpu=true", &swarm.node_id()]);
    op.wait_for(&gpu, Duration::from_secs(60), |v| running(v) && v["data"]["ready"] == true).await;
    op.delete(&format!("/env-instance/{gpu}")).await;
    wait_gone(&swarm, &gpu, Duration::from_secs(20)).await;
}

#[tokio::test]
async fn a_drained_node_fails_its_instance_and_nothing_is_made_again() {
    let swarm = SwarmDaemon::start();
    let op = Operator::start(
        BIN,
        &[
            "--engine",
            "swarm",
            "--docker-host",
            &swarm.daemon.socket,
            "--resync-interval",
            "1s",
            "--orphan-grace",
            "1s",
        ],
    )
    .await;

    // A service removed by hand: its instance is Terminated, and nothing is made again.
    let by_hand = create(&op, &unique_name("swhand"), json!({"readiness": false})).await;
    op.wait_for(&by_hand, Duration::from_secs(60), running).await;
    swarm.docker_ok(&["service", "rm", &by_hand]);
    op.wait_for(&by_hand, Duration::from_secs(20), |v| v["data"]["status"] == "Terminated").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(service(&swarm, &by_hand).is_none(), "not made again");
    op.delete(&format!("/env-instance/{by_hand}")).await;

    // An orphan (this operator's labels, no instance) is swept; another operator's service is left alone.
    let labels = |operator: &str, instance: &str| {
        [
            "--label".to_string(),
            "aenv.io/managed-by=aenv-operator".to_string(),
            "--label".to_string(),
            format!("aenv.io/operator-id={operator}"),
            "--label".to_string(),
            format!("aenv.io/instance={instance}"),
        ]
    };
    for (name, operator) in [("swarm-orphan", op.operator_id.as_str()), ("swarm-foreign", "another-operator")] {
        let mut args: Vec<String> =
            ["service", "create", "-d", "--restart-condition", "none", "--name", name].map(String::from).to_vec();
        args.extend(labels(operator, name));
        args.push(TEST_IMAGE.to_string());
        swarm.docker_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    }
    wait_gone(&swarm, "swarm-orphan", Duration::from_secs(30)).await;
    assert!(service(&swarm, "swarm-foreign").is_some(), "another operator's service is not this one's to sweep");
    swarm.docker_ok(&["service", "rm", "swarm-foreign"]);

    let id = create(&op, &unique_name("swdrain"), json!({})).await;
    op.wait_for(&id, Duration::from_secs(60), |v| running(v) && v["data"]["ready"] == true).await;
    let before = tasks(&swarm, &id);
    assert_eq!(before.len(), 1);

    let node = swarm.node_id();
    swarm.docker_ok(&["node", "update", "--availability", "drain", &node]);
    let v = op.wait_for(&id, Duration::from_secs(30), |v| v["data"]["status"] == "Failed").await;
    let message = v["data"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("shut") && message.contains("not moved"), "the task's fate: {v}");

    // The node is back: the instance stays Failed, Swarm made no second task, and the operator made no service.
    swarm.docker_ok(&["node", "update", "--availability", "active", &node]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, v) = op.get(&format!("/env-instance/{id}")).await;
    assert_eq!(v["data"]["status"], "Failed", "{v}");
    assert_eq!(tasks(&swarm, &id), before, "no task made again");
    assert_eq!(swarm.docker_ok(&["service", "ls", "-q"]).lines().count(), 1);

    op.delete(&format!("/env-instance/{id}")).await;
    op.wait_for(&id, Duration::from_secs(20), |v| v["code"] == 404).await;
    wait_gone(&swarm, &id, Duration::from_secs(10)).await;
}

#[tokio::test]
async fn a_second_node_runs_what_is_placed_there_and_its_loss_fails_it() {
    let mut swarm = SwarmDaemon::start_with_worker();
    let op = operator_on(&swarm).await;
    let worker_addr = swarm.manager_addr.trim_end_matches(".1").to_string() + ".2";

    // Placement by node label: one instance on each node, each reached at its own node's published port.
    let on_worker =
        create(&op, &unique_name("swwk"), json!({"placement": {"constraints": ["node.labels.aenv.node==worker"]}}))
            .await;
    let on_manager =
        create(&op, &unique_name("swmg"), json!({"placement": {"constraints": ["node.labels.aenv.node==manager"]}}))
            .await;
    for (id, node_addr) in [(&on_worker, worker_addr.as_str()), (&on_manager, swarm.manager_addr.as_str())] {
        let v = op.wait_for(id, Duration::from_secs(60), |v| running(v) && v["data"]["ready"] == true).await;
        let ports = v["data"]["ports"].as_array().cloned().unwrap_or_default();
        assert!(
            ports.iter().any(|p| p["hostIp"] == node_addr && p["containerPort"] == 8081),
            "published on {node_addr}: {v}"
        );
        let ip = v["data"]["ip"].as_str().unwrap();
        let resp = op
            .http
            .get(op.proxy_url("/health"))
            .header("AEnvCore-MCPProxy-URL", format!("http://{ip}:8081"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "the proxy reaches the instance on {node_addr}");
    }
    let worker_tasks = tasks(&swarm, &on_worker);

    // The worker is lost (its daemon stops): its instance fails with the node's fate and is not moved; the
    // manager's instance keeps running.
    swarm.worker.as_mut().unwrap().stop();
    let v = op.wait_for(&on_worker, Duration::from_secs(60), |v| v["data"]["status"] == "Failed").await;
    assert!(v["data"]["message"].as_str().unwrap_or_default().contains("not moved"), "{v}");
    let (_, v) = op.get(&format!("/env-instance/{on_manager}")).await;
    assert!(running(&v), "{v}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(tasks(&swarm, &on_worker), worker_tasks, "no task made again on the manager");
}

#[tokio::test]
async fn owners_get_overlay_networks_of_their_own() {
    let swarm = SwarmDaemon::start();
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.json");
    let body = json!({"tokens": [{"token": "alice-token-0123456789", "owner": "alice"}, {"token": "bob-token-0123456789", "owner": "bob"}]});
    std::fs::write(&tokens, body.to_string()).unwrap();
    let tokens = tokens.display().to_string();
    let op = Operator::start(
        BIN,
        &[
            "--engine",
            "swarm",
            "--docker-host",
            &swarm.daemon.socket,
            "--tokens-file",
            &tokens,
            "--resync-interval",
            "1s",
            "--orphan-grace",
            "1s",
        ],
    )
    .await;
    let mut ids = Vec::new();
    for token in ["alice-token-0123456789", "bob-token-0123456789"] {
        let req = op.http.post(op.url("/env-instance")).bearer_auth(token).json(&create_body(
            &unique_name("swten"),
            TEST_IMAGE,
            json!({"readiness": false}),
        ));
        let v: Value = req.send().await.unwrap().json().await.unwrap();
        ids.push(v["data"]["id"].as_str().unwrap_or_else(|| panic!("{v}")).to_string());
    }
    // Each service is on its owner's overlay, made by the operator and labelled with the owner.
    let mut networks = Vec::new();
    for (id, owner) in ids.iter().zip(["alice", "bob"]) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while service(&swarm, id).is_none() {
            assert!(Instant::now() < deadline, "no service for {id}:\n{}", op.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let svc = service(&swarm, id).unwrap();
        let attached = svc["Spec"]["TaskTemplate"]["Networks"].as_array().cloned().unwrap_or_default();
        assert_eq!(attached.len(), 1, "{svc}");
        let net: Vec<Value> =
            serde_json::from_str(&swarm.docker_ok(&["network", "inspect", attached[0]["Target"].as_str().unwrap()]))
                .unwrap();
        let net = &net[0];
        assert!(net["Name"].as_str().unwrap().starts_with("aenv-o-"), "{net}");
        assert_eq!(net["Driver"], "overlay");
        assert_eq!(net["Labels"]["aenv.io/owner"], owner);
        assert_eq!(net["Labels"]["aenv.io/network-of"], op.operator_id.as_str());
        networks.push(net["Name"].as_str().unwrap().to_string());
    }
    assert_ne!(networks[0], networks[1], "two owners, two overlays");
    // Bob cannot see or delete Alice's instance.
    let resp = op
        .http
        .delete(op.url(&format!("/env-instance/{}", ids[0])))
        .bearer_auth("bob-token-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    assert!(service(&swarm, &ids[0]).is_some());
    // An owner's overlay goes once no service of the operator is on it (the sweep).
    let resp = op
        .http
        .delete(op.url(&format!("/env-instance/{}", ids[0])))
        .bearer_auth("alice-token-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let deadline = Instant::now() + Duration::from_secs(60);
    while swarm.docker(&["network", "inspect", &networks[0]]).status.success() {
        assert!(Instant::now() < deadline, "alice's overlay is still there:\n{}", op.log());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(swarm.docker(&["network", "inspect", &networks[1]]).status.success(), "bob's overlay is in use");
}

#[tokio::test]
async fn a_warm_pool_of_services_serves_creates_with_the_template_s_placement() {
    let swarm = SwarmDaemon::start();
    let op = operator_on(&swarm).await;
    let name = unique_name("swpool");
    // A template that places by node label: its pool's sandboxes are placed by it too.
    let body = json!({"name": name, "version": "1.0.0", "artifacts": [{"type": "image", "content": TEST_IMAGE}],
        "deployConfig": {"placement": {"constraints": ["node.role==manager"]}}});
    let (code, resp) = op.post_json("/env", &body).await;
    assert_eq!(code, 200, "{resp}");
    let (code, resp) =
        op.post_json("/env-pool", &json!({"name": "swp", "envName": format!("{name}@1.0.0"), "replicas": 1})).await;
    assert_eq!(code, 200, "{resp}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, p) = op.get("/env-pool/swp").await;
        if p["data"]["ready"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the pool did not fill: {p}\n{}", op.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let waiting = swarm.docker_ok(&["service", "ls", "--format", "{{.Name}}"]);
    let waiting: Vec<&str> = waiting.lines().collect();
    assert_eq!(waiting.len(), 1, "{waiting:?}");
    let svc = service(&swarm, waiting[0]).unwrap();
    assert_eq!(svc["Spec"]["TaskTemplate"]["Placement"]["Constraints"], json!(["node.role==manager"]));

    // The SDK's create is answered Running from the pool, with an address the proxy reaches.
    let create = json!({"envName": format!("{name}@1.0.0"), "datasource": "", "ttl": "30m",
        "environment_variables": {"envNAME": name, "envversion": "1.0.0"}, "arguments": [], "labels": {}});
    let (code, created) = op.post_json("/env-instance", &create).await;
    assert_eq!(code, 200, "{created}");
    assert_eq!(created["data"]["status"], "Running", "{created}");
    let id = created["data"]["id"].as_str().unwrap().to_string();
    assert_eq!(id, waiting[0], "served by the waiting service");
    let ip = created["data"]["ip"].as_str().unwrap();
    let resp = op
        .http
        .get(op.proxy_url("/health"))
        .header("AEnvCore-MCPProxy-URL", format!("http://{ip}:8081"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // Deleting the claimed instance removes its service; deleting the pool removes the one that refilled it.
    op.delete(&format!("/env-instance/{id}")).await;
    wait_gone(&swarm, &id, Duration::from_secs(20)).await;
    let (code, _) = op.delete("/env-pool/swp").await;
    assert_eq!(code, 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !swarm.docker_ok(&["service", "ls", "-q"]).is_empty() {
        assert!(Instant::now() < deadline, "services left after the pool went:\n{}", op.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Main reaches side by its service name (over the stack's overlay) and keeps what it got on a tmpfs; side
/// answers /health and is healthy before main is made.
const STACK: &str = r#"
services:
  main:
    image: ${IMAGE}
    labels: ["aenv.main=true", "team=rl"]
    command: ["sh", "-c", "while true; do wget -qO- http://side:8081/health > /data/from-side; sleep 0.3; done & exec /bin/aenv-entrypoint"]
    depends_on:
      side:
        condition: service_healthy
    cpus: 0.5
    mem_limit: 64m
    ports: ["8081"]
    tmpfs: ["/data"]
  side:
    image: ${IMAGE}
    healthcheck:
      test: ["CMD", "wget", "-qO-", "http://127.0.0.1:8081/health"]
      interval: 300ms
      timeout: 2s
      retries: 30
"#;

fn stack_body(name: &str, compose: &str) -> Value {
    json!({"name": name, "version": "1.0.0", "owner": "test", "deployConfig": {
        "composeFile": compose, "environment_variables": {"IMAGE": TEST_IMAGE}}})
}

/// The services of a stack, by name (`docker stack services`, which groups them by com.docker.stack.namespace).
fn stack_services(swarm: &SwarmDaemon, id: &str) -> Vec<String> {
    let out = swarm.docker(&["stack", "services", "--format", "{{.Name}}", id]);
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(String::from).collect();
    v.sort();
    v
}

/// Waits until the network is gone (the node drops its copy a moment after the manager removed it).
async fn wait_network_gone(swarm: &SwarmDaemon, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while swarm.docker(&["network", "inspect", name]).status.success() {
        assert!(Instant::now() < deadline, "network {name} is still there: it must be removed with its stack");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A compose stack is a set of single-replica services on an overlay network of its own: made in depends_on order,
/// each reachable by its name, Running once all run, adopted after a kill -9, removed (services, then the network)
/// by DELETE; what Swarm cannot run is a 400 naming the key; a dependency that fails fails the stack.
#[tokio::test]
async fn compose_stacks_are_services_on_an_overlay_of_their_own() {
    let swarm = SwarmDaemon::start();
    let mut op = operator_on(&swarm).await;

    let (code, body) = op.post_json("/env-instance", &stack_body(&unique_name("swst"), STACK)).await;
    assert_eq!(code, 200, "{body}");
    let id = body["data"]["id"].as_str().unwrap().to_string();
    let v = op.wait_for(&id, Duration::from_secs(90), running).await;
    let ip = v["data"]["ip"].as_str().expect("the main service's address").to_string();
    assert_eq!(stack_services(&swarm, &id), [format!("{id}_main"), format!("{id}_side")]);
    // Each service's state; side, which has a healthcheck, is healthy (Swarm runs its task only once it is).
    let services = v["data"]["services"].as_array().expect("services in the answer");
    assert_eq!((services[0]["name"].as_str(), services[0]["state"].as_str()), (Some("main"), Some("running")), "{v}");
    assert_eq!((services[1]["name"].as_str(), services[1]["state"].as_str()), (Some("side"), Some("running")), "{v}");
    assert_eq!(services[1]["health"], "healthy", "{v}");

    // Side was made before main (main depends on it being healthy), each one replica never restarted, on the
    // stack's network under its compose name, with the sandbox defaults and the file's limits.
    let main = service(&swarm, &format!("{id}_main")).unwrap();
    let side = service(&swarm, &format!("{id}_side")).unwrap();
    assert!(side["CreatedAt"].as_str().unwrap() < main["CreatedAt"].as_str().unwrap(), "side first: {side} {main}");
    let net = format!("{id}_default");
    let net_inspect: Vec<Value> = serde_json::from_str(&swarm.docker_ok(&["network", "inspect", &net])).unwrap();
    assert_eq!(net_inspect[0]["Driver"], "overlay");
    assert_eq!(net_inspect[0]["Attachable"], true);
    assert_eq!(net_inspect[0]["Labels"]["aenv.io/instance"], id.as_str());
    let net_id = net_inspect[0]["Id"].as_str().unwrap();
    for (svc, alias) in [(&main, "main"), (&side, "side")] {
        let task = &svc["Spec"]["TaskTemplate"];
        assert_eq!(svc["Spec"]["Mode"]["Replicated"]["Replicas"], 1);
        assert_eq!(task["RestartPolicy"]["Condition"], "none");
        assert_eq!(task["Networks"][0]["Target"], net_id);
        assert_eq!(task["Networks"][0]["Aliases"], json!([alias]));
        assert_eq!(task["ContainerSpec"]["CapabilityDrop"], json!(["ALL"]));
        assert_eq!(task["Resources"]["Limits"]["Pids"], 1024);
        assert_eq!(svc["Spec"]["Labels"]["aenv.io/operator-id"], op.operator_id.as_str());
        assert_eq!(svc["Spec"]["Labels"]["com.docker.stack.namespace"], id.as_str());
    }
    let limits = &main["Spec"]["TaskTemplate"]["Resources"]["Limits"];
    assert_eq!((limits["NanoCPUs"].clone(), limits["MemoryBytes"].clone()), (json!(500_000_000), json!(64 << 20)));

    // Main reaches side by its name: name resolution on the overlay, and what main fetched from it.
    let container = swarm
        .docker_ok(&["ps", "-q", "--filter", &format!("label=com.docker.swarm.service.name={id}_main")])
        .trim()
        .to_string();
    let got = swarm.docker_ok(&["exec", &container, "wget", "-qO-", "http://side:8081/health"]);
    assert!(got.contains("healthy"), "{got}");
    let lookup = swarm.docker_ok(&["exec", &container, "nslookup", "side"]);
    assert!(lookup.contains("Address"), "{lookup}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !swarm.docker(&["exec", &container, "grep", "-q", "healthy", "/data/from-side"]).status.success() {
        assert!(Instant::now() < deadline, "main never fetched side's /health");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The data plane reaches main through its published port.
    let resp = op
        .http
        .get(op.proxy_url("/health"))
        .header("AEnvCore-MCPProxy-URL", format!("http://{ip}:8081"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // kill -9 and a restart: both services adopted, not made again.
    let ids = (main["ID"].clone(), side["ID"].clone());
    op.restart(BIN).await;
    op.wait_for(&id, Duration::from_secs(30), running).await;
    let again = (
        service(&swarm, &format!("{id}_main")).unwrap()["ID"].clone(),
        service(&swarm, &format!("{id}_side")).unwrap()["ID"].clone(),
    );
    assert_eq!(again, ids, "adopted, not recreated");
    assert_eq!(stack_services(&swarm, &id).len(), 2);

    // DELETE removes the services, then the network.
    let (code, _) = op.delete(&format!("/env-instance/{id}")).await;
    assert_eq!(code, 200);
    op.wait_for(&id, Duration::from_secs(30), |v| v["code"] == 404).await;
    assert_eq!(stack_services(&swarm, &id), Vec::<String>::new());
    wait_network_gone(&swarm, &net).await;

    // A required dependency that fails fails the stack, naming it; main is never made.
    let failing = STACK.replace("    healthcheck:", "    command: [\"sh\", \"-c\", \"exit 3\"]\n    healthcheck:");
    let (code, body) = op.post_json("/env-instance", &stack_body(&unique_name("swstf"), &failing)).await;
    assert_eq!(code, 200, "{body}");
    let bad = body["data"]["id"].as_str().unwrap().to_string();
    let v = op.wait_for(&bad, Duration::from_secs(60), |v| v["data"]["status"] == "Failed").await;
    let msg = v["data"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("service side") && msg.contains("3"), "{v}");
    assert!(service(&swarm, &format!("{bad}_main")).is_none(), "main is not made when side failed");
    op.delete(&format!("/env-instance/{bad}")).await;
    op.wait_for(&bad, Duration::from_secs(30), |v| v["code"] == 404).await;
    wait_network_gone(&swarm, &format!("{bad}_default")).await;

    // What Swarm cannot run is refused before anything is made, naming the key.
    for (compose, field) in [
        (
            "services:\n  main:\n    image: x\n    volumes: [\"data:/data\"]\nvolumes:\n  data: {}\n",
            "deployConfig.composeFile.volumes.data",
        ),
        (
            "services:\n  main:\n    image: x\n    tmpfs: [\"/data:size=1m\"]\n",
            "deployConfig.composeFile.services.main.tmpfs",
        ),
        (
            "services:\n  main:\n    image: x\n    depends_on:\n      side: {condition: service_completed_successfully}\n  side:\n    image: x\n",
            "deployConfig.composeFile.services.main.depends_on.side",
        ),
    ] {
        let (code, body) = op.post_json("/env-instance", &stack_body(&unique_name("swstbad"), compose)).await;
        assert_eq!(code, 400, "{body}");
        assert!(body["message"].as_str().unwrap().contains(field), "{body} names {field}");
    }
    assert_eq!(swarm.docker_ok(&["service", "ls", "-q"]), "", "a refused create makes nothing");
}

/// A stack whose instance the operator does not know (its store lost it) is swept: its services first, then its
/// overlay; another operator's look-alike is left alone.
#[tokio::test]
async fn an_orphaned_stack_s_services_and_network_are_swept() {
    let swarm = SwarmDaemon::start();
    let op = Operator::start(
        BIN,
        &[
            "--engine",
            "swarm",
            "--docker-host",
            &swarm.daemon.socket,
            "--resync-interval",
            "1s",
            "--orphan-grace",
            "0s",
        ],
    )
    .await;
    let ghost = format!("{}-zzzzzz", unique_name("ghost"));
    let labels = |operator: &str| {
        [
            "aenv.io/managed-by=aenv-operator".to_string(),
            format!("aenv.io/operator-id={operator}"),
            format!("aenv.io/instance={ghost}"),
            "aenv.io/namespace=default".to_string(),
            format!("com.docker.stack.namespace={ghost}"),
        ]
    };
    let net = format!("{ghost}_default");
    let mut args = vec!["network".to_string(), "create".into(), "-d".into(), "overlay".into(), "--attachable".into()];
    for l in labels(&op.operator_id) {
        args.extend(["--label".to_string(), l]);
    }
    args.push(net.clone());
    swarm.docker_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let mut svc =
        vec!["service".to_string(), "create".into(), "-d".into(), "--restart-condition".into(), "none".into()];
    for l in labels(&op.operator_id) {
        svc.extend(["--label".to_string(), l]);
    }
    svc.extend(["--network".into(), net.clone(), "--name".into(), format!("{ghost}_main"), TEST_IMAGE.into()]);
    swarm.docker_ok(&svc.iter().map(String::as_str).collect::<Vec<_>>());
    // Someone else's look-alike: another operator id.
    let other = format!("{ghost}_other");
    let mut args = vec!["network".to_string(), "create".into(), "-d".into(), "overlay".into()];
    for l in labels("someone-else") {
        args.extend(["--label".to_string(), l]);
    }
    args.push(other.clone());
    swarm.docker_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());

    wait_gone(&swarm, &format!("{ghost}_main"), Duration::from_secs(20)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while swarm.docker(&["network", "inspect", &net]).status.success() {
        assert!(Instant::now() < deadline, "the orphaned stack's network is not swept\n{}", op.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(swarm.docker(&["network", "inspect", &other]).status.success(), "another operator's network is left alone");
    swarm.docker_ok(&["network", "rm", &other]);
}

/// A daemon that is no swarm manager is refused at start-up, saying what to do (the host's daemon, which is in no
/// swarm: only read).
#[tokio::test]
async fn a_daemon_outside_a_swarm_is_refused_at_start() {
    let state = aenv_testkit::docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]).stdout;
    if String::from_utf8_lossy(&state).trim() != "inactive" {
        eprintln!("skipped: the host's Docker daemon is part of a swarm");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(BIN)
        .args([
            "serve",
            "--engine",
            "swarm",
            "--api-listen",
            "127.0.0.1:0",
            "--proxy-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not part of a swarm") && stderr.contains("docker swarm init"), "{stderr}");
}

/// The stack file that deploys the operator on a swarm reads as a valid compose file for `docker stack deploy`
/// (the CLI's own check, `docker stack config`), runs the Swarm engine, and takes the tokens from a Swarm secret.
#[test]
fn the_operator_s_stack_file_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/swarm/aenv-operator.yml");
    let out = std::process::Command::new("docker").args(["stack", "config", "-c", path]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let config = String::from_utf8_lossy(&out.stdout);
    for needle in ["--engine=swarm", "--tokens-file=/run/secrets/aenv-tokens", "external: true", "node.role == manager"]
    {
        assert!(config.contains(needle), "{needle} in:\n{config}");
    }
}

/// Polls `GET /env/{env}/warmup` until the warmup is done; returns its last state.
async fn warmup_done(op: &Operator, env: &str, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let (_, state) = op.get(&format!("/env/{env}/warmup")).await;
        if state["data"]["done"] == true {
            return state;
        }
        assert!(Instant::now() < deadline, "warmup of {env} not done in {timeout:?}: {state}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The warmup jobs (services labelled `aenv.io/warmup`) on the swarm.
fn warmup_jobs(swarm: &SwarmDaemon) -> String {
    swarm.docker_ok(&["service", "ls", "-q", "--filter", "label=aenv.io/warmup"])
}

#[tokio::test]
async fn warmup_pulls_on_the_nodes_by_a_global_job_and_leaves_nothing() {
    let swarm = SwarmDaemon::start();
    let registry = aenv_testkit::LocalRegistry::start();
    let image = registry.push(TEST_IMAGE, &format!("aenv/{}:1", unique_name("swwarm")));
    let mut op = Operator::start(
        BIN,
        &["--engine", "swarm", "--docker-host", &swarm.daemon.socket, "--registry-allow", &registry.host()],
    )
    .await;
    assert!(!swarm.docker(&["image", "inspect", &image]).status.success(), "not on the node before the warmup");

    let name = unique_name("swwarm");
    let body = json!({"name": name, "version": "1", "artifacts": [{"type": "image", "content": image}],
        "deployConfig": {"placement": {"constraints": ["node.labels.aenv.node==manager"]}}});
    let (code, resp) = op.post_json("/env", &body).await;
    assert_eq!(code, 200, "{resp}");
    let (code, started) = op.post_json(&format!("/env/{name}/1/warmup"), &json!({})).await;
    assert_eq!(code, 202, "{started}");
    let done = warmup_done(&op, &format!("{name}/1"), Duration::from_secs(90)).await;
    assert_eq!(done["data"]["images"][0]["image"], image.as_str(), "{done}");
    assert_eq!(done["data"]["images"][0]["state"], "Pulled", "{done}");
    assert!(done["data"]["images"][0]["detail"].as_str().unwrap_or_default().contains("1 node"), "{done}");
    assert!(swarm.docker(&["image", "inspect", &image]).status.success(), "on the node after the warmup");
    assert_eq!(warmup_jobs(&swarm), "", "no warmup job left behind");

    // An image that does not exist: Failed, naming it, and no job left either.
    let missing = format!("{}/aenv/{}:1", registry.host(), unique_name("missing"));
    let bad = format!("{name}-bad");
    let body = json!({"name": bad, "version": "1", "artifacts": [{"type": "image", "content": missing}]});
    let (code, resp) = op.post_json("/env", &body).await;
    assert_eq!(code, 200, "{resp}");
    op.post_json(&format!("/env/{bad}/1/warmup"), &json!({})).await;
    let state = warmup_done(&op, &format!("{bad}/1"), Duration::from_secs(90)).await;
    assert_eq!(state["data"]["images"][0]["state"], "Failed", "{state}");
    let detail = state["data"]["images"][0]["detail"].as_str().unwrap_or_default();
    assert!(detail.contains(&missing), "names the image: {state}");
    assert_eq!(warmup_jobs(&swarm), "", "no warmup job left behind");

    // Placement no node matches: Failed, saying so.
    let nowhere = format!("{name}-nowhere");
    let body = json!({"name": nowhere, "version": "1", "artifacts": [{"type": "image", "content": image}],
        "deployConfig": {"placement": {"constraints": ["node.labels.aenv.node==nowhere"]}}});
    op.post_json("/env", &body).await;

    // Killed during a warmup: the job stays until the operator starts again, which removes it.
    op.post_json(&format!("/env/{nowhere}/1/warmup"), &json!({})).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while warmup_jobs(&swarm).is_empty() {
        assert!(Instant::now() < deadline, "no warmup job made");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    op.kill9();
    assert_ne!(warmup_jobs(&swarm), "", "the job outlives the operator");
    op.restart(BIN).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !warmup_jobs(&swarm).is_empty() {
        assert!(Instant::now() < deadline, "the restarted operator left the dead one's warmup job");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    op.post_json(&format!("/env/{nowhere}/1/warmup"), &json!({})).await;
    let state = warmup_done(&op, &format!("{nowhere}/1"), Duration::from_secs(60)).await;
    assert_eq!(state["data"]["images"][0]["state"], "Failed", "{state}");
    assert!(state["data"]["images"][0]["detail"].as_str().unwrap_or_default().contains("placement"), "{state}");
    assert_eq!(warmup_jobs(&swarm), "", "no warmup job left behind");
    swarm.docker(&["image", "rm", &image]);
}
