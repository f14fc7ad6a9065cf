//! Tenants, tried as a hostile one would: with tokens on, two owners' sandboxes share no network (neither the
//! default one nor one both name), while one owner's sandboxes on one network reach each other, and the operator's
//! probe and proxy still reach them all. The real binary, the real daemon.

use std::time::{Duration, Instant};

use aenv_testkit::{Operator, TEST_IMAGE, create_body, docker, docker_ok, inspect, unique_name};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_aenv-operator");
const ALICE: &str = "alice-token-0123456789";
const BOB: &str = "bob-token-0123456789";

fn tokens_file(dir: &std::path::Path) -> String {
    let path = dir.join("tokens.json");
    let tokens = json!({"tokens": [{"token": ALICE, "owner": "alice"}, {"token": BOB, "owner": "bob"}]});
    std::fs::write(&path, tokens.to_string()).unwrap();
    path.display().to_string()
}

async fn create(op: &Operator, token: &str, name: &str, deploy: Value) -> String {
    let resp = op.http.post(op.url("/env-instance")).bearer_auth(token).json(&create_body(name, TEST_IMAGE, deploy));
    let v: Value = resp.send().await.unwrap().json().await.unwrap();
    v["data"]["id"].as_str().unwrap_or_else(|| panic!("create refused: {v}")).to_string()
}

async fn wait_ready(op: &Operator, token: &str, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let resp = op.http.get(op.url(&format!("/env-instance/{id}"))).bearer_auth(token).send().await.unwrap();
        let v: Value = resp.json().await.unwrap();
        // Ready: the operator's probe reached the sandbox on its owner's network from the host.
        if v["data"]["status"] == "Running" && v["data"]["ready"] == true {
            return v["data"].clone();
        }
        assert!(Instant::now() < deadline, "{id} not ready: {v}\n{}", op.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The one network a container is on.
fn network_of(id: &str) -> String {
    let nets = inspect(id)["NetworkSettings"]["Networks"].as_object().cloned().unwrap_or_default();
    assert_eq!(nets.len(), 1, "{id}: {nets:?}");
    nets.keys().next().cloned().unwrap_or_default()
}

/// Whether `from` gets an answer from `ip`:8081 (busybox wget under `timeout`: its own -T crashes here).
fn reaches(from: &str, ip: &str) -> bool {
    let out = docker(&["exec", from, "timeout", "3", "wget", "-qO-", &format!("http://{ip}:8081/health")]);
    out.status.success() && String::from_utf8_lossy(&out.stdout).contains("healthy")
}

#[tokio::test]
async fn owners_share_no_network_and_one_owner_s_sandboxes_reach_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = tokens_file(dir.path());
    let op = Operator::start(BIN, &["--tokens-file", &tokens, "--resync-interval", "1s", "--orphan-grace", "1s"]).await;
    let _cleanup = Cleanup(op.operator_id.clone());
    let name = unique_name("tenant");
    let lab = format!("{name}-lab");
    let a1 = create(&op, ALICE, &name, json!({})).await;
    let a2 = create(&op, ALICE, &name, json!({})).await;
    let a_lab1 = create(&op, ALICE, &name, json!({"network": lab})).await;
    let a_lab2 = create(&op, ALICE, &name, json!({"network": lab})).await;
    let b1 = create(&op, BOB, &name, json!({})).await;
    let b_lab = create(&op, BOB, &name, json!({"network": lab})).await;
    // Asking for Docker's default bridge by name does not lead onto the network every tenant would share.
    let b_bridge = create(&op, BOB, &name, json!({"network": "bridge"})).await;
    let mut ip = std::collections::HashMap::new();
    for (token, id) in
        [(ALICE, &a1), (ALICE, &a2), (ALICE, &a_lab1), (ALICE, &a_lab2), (BOB, &b1), (BOB, &b_lab), (BOB, &b_bridge)]
    {
        let v = wait_ready(&op, token, id).await;
        ip.insert(id.clone(), v["ip"].as_str().unwrap().to_string());
    }

    // Each owner has a network of its own, labelled as the operator's; a named network is the owner's too.
    let (alice_net, bob_net) = (network_of(&a1), network_of(&b1));
    assert_eq!(network_of(&a2), alice_net);
    assert!(alice_net.starts_with("aenv-o-") && bob_net.starts_with("aenv-o-") && alice_net != bob_net);
    assert_eq!(network_of(&b_bridge), bob_net, "`bridge` is the owner's own network");
    let (alice_lab, bob_lab) = (network_of(&a_lab1), network_of(&b_lab));
    assert_eq!(network_of(&a_lab2), alice_lab);
    assert_ne!(alice_lab, bob_lab, "two owners naming {lab} land on two networks");
    assert!(alice_lab.ends_with(&lab) && bob_lab.ends_with(&lab));
    assert!(!docker(&["network", "inspect", &lab]).status.success(), "no unscoped {lab}");
    let n: Value = serde_json::from_str(&docker_ok(&["network", "inspect", &alice_net])).unwrap();
    assert_eq!(n[0]["Labels"]["aenv.io/network-of"], op.operator_id.as_str());
    assert_eq!(n[0]["Labels"]["aenv.io/owner"], "alice");

    // No traffic between owners, on the default network or on the one both named.
    assert!(!reaches(&a1, &ip[&b1]), "alice reached bob's sandbox");
    assert!(!reaches(&b1, &ip[&a1]), "bob reached alice's sandbox");
    assert!(!reaches(&a_lab1, &ip[&b_lab]), "alice reached bob's sandbox on {lab}");
    assert!(!reaches(&b_lab, &ip[&a_lab2]), "bob reached alice's sandbox on {lab}");
    // One owner's sandboxes on one network reach each other.
    assert!(reaches(&a1, &ip[&a2]), "alice's sandboxes on her network");
    assert!(reaches(&a_lab1, &ip[&a_lab2]), "alice's sandboxes on her {lab}");

    // The data-plane proxy reaches a sandbox on an owner network.
    let resp = op
        .http
        .get(op.proxy_url("/health"))
        .header("AEnvCore-MCPProxy-URL", format!("http://{}:8081", ip[&b1]))
        .header("AEnvCore-EnvInstance-ID", b1.clone())
        .send()
        .await
        .unwrap();
    assert!(resp.text().await.unwrap().contains("healthy"));

    // An owner network goes with its last sandbox: deleted through the API...
    for id in [&a1, &a2] {
        let resp = op.http.delete(op.url(&format!("/env-instance/{id}"))).bearer_auth(ALICE).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200);
    }
    wait_gone(&alice_net).await;
    // ... or removed by hand (the sweep finds the network no container uses).
    docker_ok(&["rm", "-f", &b1, &b_bridge]);
    wait_gone(&bob_net).await;
    assert!(docker(&["network", "inspect", &bob_lab]).status.success(), "bob's {lab} is still in use");
}

async fn wait_gone(network: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while docker(&["network", "inspect", network]).status.success() {
        assert!(Instant::now() < deadline, "network {network} outlived its last sandbox");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Removes the operator's containers, then its networks, when the test ends (passed or not).
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for kind in ["container", "network"] {
            let label = match kind {
                "container" => format!("aenv.io/operator-id={}", self.0),
                _ => format!("aenv.io/network-of={}", self.0),
            };
            let filter = format!("label={label}");
            let mut ls = vec![kind, "ls", "-q", "--filter", &filter];
            if kind == "container" {
                ls.push("-a");
            }
            let out = docker(&ls);
            let ids = String::from_utf8_lossy(&out.stdout).into_owned();
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let mut args = vec![kind, "rm"];
                if kind == "container" {
                    args.push("-f");
                }
                args.extend(ids);
                let _ = docker(&args);
            }
        }
    }
}
