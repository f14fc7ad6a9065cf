//! Beside what other operators left on the daemon, as a hostile (or just unlucky) neighbour would arrange it:
//! networks under the names an owner's sandboxes get (the scheme before the operator id, and this scheme for a
//! lost store's operator id), a sandbox that never expires on one of them, and service volumes holding data. A
//! tenant is never locked out by them, the unused ones are swept after --orphan-grace, and no volume of another
//! operator is ever removed. Then two operators on one daemon with one owner name: each owner's sandboxes run,
//! their services' volumes are two, and one's `deleteStorage` leaves the other's data. The real binary and daemon.

use std::time::{Duration, Instant};

use aenv_engine_docker::{legacy_scoped, scoped_network, service_volume};
use aenv_testkit::{Operator, TEST_IMAGE, create_body, docker, docker_ok, inspect, unique_name};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_aenv-operator");

fn tokens_file(dir: &std::path::Path, owner: &str, token: &str) -> String {
    let path = dir.join("tokens.json");
    std::fs::write(&path, json!({"tokens": [{"token": token, "owner": owner}]}).to_string()).unwrap();
    path.display().to_string()
}

/// What a test planted or made, removed when it ends (passed or not): exactly these, nothing else.
#[derive(Default)]
struct Planted {
    containers: Vec<String>,
    networks: Vec<String>,
    volumes: Vec<String>,
    operators: Vec<String>,
}

impl Drop for Planted {
    fn drop(&mut self) {
        for id in &self.operators {
            let filter = format!("label=aenv.io/operator-id={id}");
            let out = docker(&["ps", "-aq", "--filter", &filter]);
            self.containers.extend(String::from_utf8_lossy(&out.stdout).split_whitespace().map(String::from));
        }
        for c in &self.containers {
            let _ = docker(&["rm", "-f", c]);
        }
        for id in &self.operators {
            for (kind, label) in [("network", "aenv.io/network-of"), ("volume", "aenv.io/volume-of")] {
                let filter = format!("label={label}={id}");
                let out = docker(&[kind, "ls", "-q", "--filter", &filter]);
                let names: Vec<String> =
                    String::from_utf8_lossy(&out.stdout).split_whitespace().map(String::from).collect();
                if kind == "network" { self.networks.extend(names) } else { self.volumes.extend(names) }
            }
        }
        for n in &self.networks {
            let _ = docker(&["network", "rm", n]);
        }
        for v in &self.volumes {
            let _ = docker(&["volume", "rm", v]);
        }
    }
}

fn labels_of(kind: &str, operator_id: &str, owner: &str) -> Vec<String> {
    let of = if kind == "network" { "aenv.io/network-of" } else { "aenv.io/volume-of" };
    [
        "aenv.io/managed-by=aenv-operator".to_string(),
        format!("aenv.io/operator-id={operator_id}"),
        format!("{of}={operator_id}"),
        format!("aenv.io/owner={owner}"),
    ]
    .into_iter()
    .flat_map(|l| ["--label".to_string(), l])
    .collect()
}

fn plant(planted: &mut Planted, kind: &str, name: &str, operator_id: &str, owner: &str) {
    let mut args: Vec<String> = vec![kind.into(), "create".into()];
    args.extend(labels_of(kind, operator_id, owner));
    args.push(name.into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    docker_ok(&args);
    if kind == "network" { planted.networks.push(name.into()) } else { planted.volumes.push(name.into()) }
}

fn exists(kind: &str, name: &str) -> bool {
    docker(&[kind, "inspect", name]).status.success()
}

async fn create(op: &Operator, token: &str, name: &str, deploy: Value) -> String {
    let resp = op.http.post(op.url("/env-instance")).bearer_auth(token).json(&create_body(name, TEST_IMAGE, deploy));
    let v: Value = resp.send().await.unwrap().json().await.unwrap();
    v["data"]["id"].as_str().unwrap_or_else(|| panic!("create refused: {v}")).to_string()
}

async fn wait_ready(op: &Operator, token: &str, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let resp = op.http.get(op.url(&format!("/env-instance/{id}"))).bearer_auth(token).send().await.unwrap();
        let v: Value = resp.json().await.unwrap();
        if v["data"]["status"] == "Running" && v["data"]["ready"] == true {
            return v["data"].clone();
        }
        assert_ne!(v["data"]["status"], "Failed", "{id} failed beside leftovers: {v}\n{}", op.log());
        assert!(Instant::now() < deadline, "{id} not ready: {v}\n{}", op.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn network_of(id: &str) -> String {
    let nets = inspect(id)["NetworkSettings"]["Networks"].as_object().cloned().unwrap_or_default();
    nets.keys().next().cloned().unwrap_or_default()
}

#[tokio::test]
async fn leftovers_of_other_operators_and_of_a_lost_store_never_lock_a_tenant_out() {
    let dir = tempfile::tempdir().unwrap();
    let owner = unique_name("owner");
    let token = format!("{owner}-token-0123456789");
    let tokens = tokens_file(dir.path(), &owner, &token);
    let name = unique_name("left");
    let lab = format!("{name}-lab");
    let (other, lost) = (unique_name("other-op"), unique_name("lost-store"));
    let mut planted = Planted::default();
    planted.operators = vec![other.clone(), lost.clone()];

    // Another operator's owner networks under the names before the operator id; a lost store's under today's.
    let old_default = legacy_scoped("any", Some(&owner), "bridge").unwrap();
    let old_lab = legacy_scoped("any", Some(&owner), &lab).unwrap();
    let lost_default = scoped_network(&lost, Some(&owner), "bridge");
    let lost_lab = scoped_network(&lost, Some(&owner), &lab);
    for (net, by) in [(&old_default, &other), (&old_lab, &other), (&lost_default, &lost), (&lost_lab, &lost)] {
        plant(&mut planted, "network", net, by, &owner);
    }
    // One in use by the other operator's sandbox, which never expires; with a volume of its data.
    let busy = format!("{}-busy", unique_name("aenv-o-left"));
    plant(&mut planted, "network", &busy, &other, &owner);
    let volume = service_volume(&other, &format!("aenv-pvc-{name}-data"));
    plant(&mut planted, "volume", &volume, &other, &owner);
    let unused_volume = service_volume(&lost, &format!("aenv-pvc-{name}-data"));
    plant(&mut planted, "volume", &unused_volume, &lost, &owner);
    let sandbox = unique_name("other-sandbox");
    docker_ok(&[
        "run",
        "-d",
        "--name",
        &sandbox,
        "--network",
        &busy,
        "--mount",
        &format!("type=volume,source={volume},target=/data"),
        "--label",
        "aenv.io/managed-by=aenv-operator",
        "--label",
        &format!("aenv.io/operator-id={other}"),
        "--label",
        &format!("aenv.io/instance={sandbox}"),
        "--label",
        "aenv.io/namespace=default",
        "--label",
        &format!("aenv.io/owner={owner}"),
        "--label",
        "aenv.io/expire-at=2999-01-01T00:00:00Z",
        TEST_IMAGE,
    ]);
    planted.containers.push(sandbox.clone());
    docker_ok(&["exec", &sandbox, "sh", "-c", "echo theirs > /data/keep"]);

    let op = Operator::start(BIN, &["--tokens-file", &tokens, "--resync-interval", "1s", "--orphan-grace", "3s"]).await;
    planted.operators.push(op.operator_id.clone());
    // The tenant's sandboxes run, on the default network and on one it names, on networks of this operator.
    let a = create(&op, &token, &name, json!({})).await;
    let b = create(&op, &token, &name, json!({"network": lab})).await;
    for id in [&a, &b] {
        wait_ready(&op, &token, id).await;
    }
    assert_eq!(network_of(&a), scoped_network(&op.operator_id, Some(&owner), "bridge"));
    assert_eq!(network_of(&b), scoped_network(&op.operator_id, Some(&owner), &lab));
    for planted_net in [&old_default, &old_lab, &lost_default, &lost_lab] {
        assert!(![network_of(&a), network_of(&b)].contains(planted_net), "joined a leftover {planted_net}");
    }

    // The unused leftovers go once older than the grace; the one in use stays, and so does its sandbox; no
    // volume of another operator is removed, used or not.
    let deadline = Instant::now() + Duration::from_secs(60);
    while [&old_default, &old_lab, &lost_default, &lost_lab].iter().any(|n| exists("network", n)) {
        assert!(Instant::now() < deadline, "unused leftovers not swept\n{}", op.log());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(exists("network", &busy), "a network in use is never swept");
    assert_eq!(inspect(&sandbox)["State"]["Running"], true, "an unexpired sandbox of another operator stays");
    assert!(exists("volume", &volume) && exists("volume", &unused_volume), "volumes of others stay");
    let data = docker_ok(&["exec", &sandbox, "cat", "/data/keep"]);
    assert_eq!(data.trim(), "theirs");
    // And the tenant's sandboxes still run.
    for id in [&a, &b] {
        wait_ready(&op, &token, id).await;
    }
}

async fn send_as(token: &str, req: reqwest::RequestBuilder) -> (u16, Value) {
    let resp = req.bearer_auth(token).send().await.expect("request");
    let code = resp.status().as_u16();
    (code, resp.json().await.unwrap_or(Value::Null))
}

async fn wait_service(op: &Operator, token: &str, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (_, s) = send_as(token, op.http.get(op.url(&format!("/env-service/{id}")))).await;
        if s["data"]["status"] == "Running" && s["data"]["available_replicas"] == 1 {
            return;
        }
        assert!(Instant::now() < deadline, "{s}\n{}", op.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The replica container of a service (by the template name, unique to one operator here).
fn replica_of(operator_id: &str, name: &str) -> String {
    let out = docker_ok(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=aenv.io/operator-id={operator_id}"),
        "--filter",
        &format!("label=aenv.env_name={name}"),
    ]);
    out.split_whitespace().next().unwrap_or_default().to_string()
}

#[tokio::test]
async fn two_operators_on_one_daemon_with_one_owner_name_share_neither_networks_nor_data() {
    let owner = unique_name("same-owner");
    let token = format!("{owner}-token-0123456789");
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let args =
        |tokens: &str| vec!["--tokens-file".to_string(), tokens.to_string(), "--resync-interval".into(), "1s".into()];
    let (t1, t2) = (tokens_file(d1.path(), &owner, &token), tokens_file(d2.path(), &owner, &token));
    let a1: Vec<String> = args(&t1);
    let a2: Vec<String> = args(&t2);
    let op1 = Operator::start(BIN, &a1.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let op2 = Operator::start(BIN, &a2.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let mut _planted = Planted::default();
    _planted.operators = vec![op1.operator_id.clone(), op2.operator_id.clone()];
    let (n1, n2) = (unique_name("twoa"), unique_name("twob"));
    let pvc = unique_name("data");
    let svc = unique_name("web");

    // Both owners' sandboxes run, each on its own operator's network.
    let s1 = create(&op1, &token, &n1, json!({})).await;
    let s2 = create(&op2, &token, &n2, json!({})).await;
    wait_ready(&op1, &token, &s1).await;
    wait_ready(&op2, &token, &s2).await;
    assert_ne!(network_of(&s1), network_of(&s2), "one owner name, two operators: two networks");

    // A service of the same name and pvc_name on each: two volumes, each written by its own service.
    for (op, name) in [(&op1, &n1), (&op2, &n2)] {
        let body = json!({"name": name, "version": "1", "artifacts": [{"type": "image", "content": TEST_IMAGE}]});
        let (code, resp) = send_as(&token, op.http.post(op.url("/env")).json(&body)).await;
        assert_eq!(code, 200, "{resp}");
        let body =
            json!({"envName": format!("{name}@1"), "service_name": svc, "replicas": 1, "port": 8081, "pvc_name": pvc});
        let (code, resp) = send_as(&token, op.http.post(op.url("/env-service")).json(&body)).await;
        assert_eq!(code, 200, "{resp}");
    }
    wait_service(&op1, &token, &svc).await;
    wait_service(&op2, &token, &svc).await;
    let (r1, r2) = (replica_of(&op1.operator_id, &n1), replica_of(&op2.operator_id, &n2));
    let mount = |r: &str| inspect(r)["Mounts"][0]["Name"].as_str().unwrap_or_default().to_string();
    let (v1, v2) = (mount(&r1), mount(&r2));
    assert!(!v1.is_empty() && v1 != v2, "two operators' services share a volume: {v1} {v2}");
    for (r, text) in [(&r1, "one"), (&r2, "two")] {
        docker_ok(&["exec", r, "sh", "-c", &format!("echo {text} > /home/admin/data/who")]);
    }
    assert_eq!(docker_ok(&["exec", &r2, "cat", "/home/admin/data/who"]).trim(), "two");

    // The first operator's deleteStorage removes its volume, and leaves the second's and its data.
    let (code, resp) =
        send_as(&token, op1.http.delete(op1.url(&format!("/env-service/{svc}?deleteStorage=true")))).await;
    assert_eq!(code, 200, "{resp}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while exists("volume", &v1) {
        assert!(Instant::now() < deadline, "{v1} not removed\n{}", op1.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(exists("volume", &v2), "the other operator's volume stays");
    assert_eq!(docker_ok(&["exec", &r2, "cat", "/home/admin/data/who"]).trim(), "two");
    let (_, s) = send_as(&token, op2.http.get(op2.url(&format!("/env-service/{svc}")))).await;
    assert_eq!(s["data"]["status"], "Running", "{s}");
}
