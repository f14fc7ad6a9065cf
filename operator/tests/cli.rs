//! The real `aenv` CLI (aenvironment==0.1.7, installed by scripts/test into .venv) against the real binary: `aenv
//! init` and `aenv push` call envhub's routes (`exists`, `status`, `POST /env`, `PUT /env/{name}/{version}`), and
//! the project template's `deployConfig.service` becomes the defaults of services made from the template. With
//! tokens on, another tenant's template does not exist for a caller, and only its owner may update or release it.

use std::{
    path::{Path, PathBuf},
    process::Output,
    time::Duration,
};

use aenv_testkit::{Operator, TEST_IMAGE, unique_name};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_aenv-operator");
const ALICE: &str = "alice-cli-token-0123456789abcdef";
const BOB: &str = "bob-cli-token-0123456789abcdef01";

fn venv_bin(name: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let venv = std::env::var_os("AENV_TEST_VENV").map(PathBuf::from).unwrap_or_else(|| root.join(".venv"));
    let bin = venv.join("bin").join(name);
    assert!(
        bin.exists(),
        "{} is missing: run the suites through scripts/test, which installs the CLI (requirements-test.txt) into .venv",
        bin.display()
    );
    bin
}

/// Runs `aenv args…` in `dir` as a user whose home is `home` (its cli_config.json names the token), against `op`.
async fn aenv(op: &Operator, home: &Path, dir: &Path, args: &[&str]) -> Output {
    let run = tokio::process::Command::new(venv_bin("aenv"))
        .args(args)
        .current_dir(dir)
        .env("HOME", home)
        .env("HUB_BACKEND", op.url(""))
        .env("NO_COLOR", "1")
        .env("COLUMNS", "200")
        .output();
    tokio::time::timeout(Duration::from_secs(120), run).await.expect("aenv finished in time").expect("aenv runs")
}

fn text(out: &Output) -> String {
    format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// A home whose CLI config sends `token` to the hub.
fn home_with_token(root: &Path, who: &str, token: &str) -> PathBuf {
    let home = root.join(who);
    std::fs::create_dir_all(home.join(".aenv")).unwrap();
    let config = json!({"hub_config": {"hub_backend": "", "api_key": token, "timeout": 30}});
    std::fs::write(home.join(".aenv/cli_config.json"), config.to_string()).unwrap();
    home
}

async fn call(op: &Operator, method: reqwest::Method, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = op.http.request(method, op.url(path)).bearer_auth(token);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn aenv_init_and_push_register_then_update_a_template_and_release_freezes_it() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.json");
    let list = json!({"tokens": [{"token": ALICE, "owner": "alice"}, {"token": BOB, "owner": "bob"}]});
    std::fs::write(&tokens, list.to_string()).unwrap();
    let op = Operator::start(BIN, &["--tokens-file", &tokens.display().to_string()]).await;
    let alice = home_with_token(dir.path(), "alice", ALICE);
    let bob = home_with_token(dir.path(), "bob", BOB);
    let name = unique_name("cli");
    let env = format!("/env/{name}/1.0.0");

    // `aenv init NAME` asks whether the version exists, then writes the project (its config.json has
    // deployConfig.service, and no image yet).
    let out = aenv(&op, &alice, dir.path(), &["init", &name]).await;
    assert!(out.status.success(), "aenv init failed: {}\n{}", text(&out), op.log());
    let project = dir.path().join(&name);
    let config_path = project.join("config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    assert!(config["deployConfig"]["service"].is_object(), "the CLI's template writes a service: {config}");
    // What `aenv build` would write: the image, here one built locally.
    config["artifacts"] = json!([{"type": "image", "content": TEST_IMAGE}]);
    std::fs::write(&config_path, config.to_string()).unwrap();

    // The first push registers the template (POST /env), with the service defaults and the code URL.
    let out = aenv(&op, &alice, &project, &["push"]).await;
    assert!(text(&out).contains("Push successfully"), "aenv push failed: {}\n{}", text(&out), op.log());
    let (code, t) = call(&op, reqwest::Method::GET, &env, ALICE, None).await;
    assert_eq!(code, 200, "{t}");
    assert_eq!(t["data"]["artifacts"][0]["content"], TEST_IMAGE, "{t}");
    assert_eq!(t["data"]["deploy_config"]["service"]["port"], 8081, "{t}");
    assert_eq!(t["data"]["deploy_config"]["cpu"], "1", "{t}");
    assert!(t["data"]["code_url"].as_str().is_some_and(|u| u.contains(&name)), "codeUrl is kept: {t}");
    let (_, exists) = call(&op, reqwest::Method::GET, &format!("{env}/exists"), ALICE, None).await;
    assert_eq!(exists["data"], json!({"exists": true, "status": 6}), "{exists}");
    let (_, status) = call(&op, reqwest::Method::GET, &format!("{env}/status"), ALICE, None).await;
    assert_eq!(status["data"], json!({"status": "Ready"}), "{status}");

    // `aenv init` of a name that exists stops.
    let again = dir.path().join("again");
    std::fs::create_dir_all(&again).unwrap();
    let out = aenv(&op, &alice, &again, &["init", &name]).await;
    assert!(text(&out).contains("already exists"), "{}", text(&out));

    // Another tenant does not see it: it does not exist for bob, its status is not found, and he cannot update
    // or release it.
    let (_, exists) = call(&op, reqwest::Method::GET, &format!("{env}/exists"), BOB, None).await;
    assert_eq!(exists["data"], json!({"exists": false}), "{exists}");
    let (code, _) = call(&op, reqwest::Method::GET, &format!("{env}/status"), BOB, None).await;
    assert_eq!(code, 404);
    let (code, _) = call(&op, reqwest::Method::PUT, &env, BOB, Some(config.clone())).await;
    assert_eq!(code, 404, "bob's update reaches nothing");
    let (code, _) = call(&op, reqwest::Method::POST, &format!("{env}/release"), BOB, None).await;
    assert_eq!(code, 404, "bob's release reaches nothing");
    // His own push of that name is refused (the name is taken) and changes nothing of alice's.
    let bobs = dir.path().join("bobs");
    std::fs::create_dir_all(&bobs).unwrap();
    let mut his = config.clone();
    his["deployConfig"]["environmentVariables"] = json!({"BY": "bob"});
    std::fs::write(bobs.join("config.json"), his.to_string()).unwrap();
    let out = aenv(&op, &bob, &bobs, &["push"]).await;
    assert!(!text(&out).contains("Push successfully"), "bob's push must fail: {}", text(&out));
    let (_, t) = call(&op, reqwest::Method::GET, &env, ALICE, None).await;
    assert!(t["data"]["deploy_config"]["environment_variables"].get("BY").is_none(), "{t}");

    // The second push updates it (PUT /env/{name}/{version}): what instances start from changes.
    config["deployConfig"]["cpu"] = json!("2");
    config["deployConfig"]["environmentVariables"] = json!({"PUSHED": "twice"});
    std::fs::write(&config_path, config.to_string()).unwrap();
    let out = aenv(&op, &alice, &project, &["push"]).await;
    assert!(text(&out).contains("Push successfully"), "the second push failed: {}\n{}", text(&out), op.log());
    let (_, t) = call(&op, reqwest::Method::GET, &env, ALICE, None).await;
    assert_eq!(t["data"]["deploy_config"]["cpu"], "2", "{t}");
    assert_eq!(t["data"]["deploy_config"]["environment_variables"]["PUSHED"], "twice", "{t}");
    assert_eq!(t["data"]["owner"], "alice", "the owner stays");

    // An update must name the path's environment.
    let mut other = config.clone();
    other["version"] = json!("9.9.9");
    let (code, resp) = call(&op, reqwest::Method::PUT, &env, ALICE, Some(other)).await;
    assert_eq!((code, resp["field"].as_str()), (400, Some("version")), "{resp}");
    // A bad update changes nothing.
    let mut bad = config.clone();
    bad["deployConfig"]["service"]["storageSize"] = json!("lots");
    let (code, resp) = call(&op, reqwest::Method::PUT, &env, ALICE, Some(bad)).await;
    assert_eq!((code, resp["field"].as_str()), (400, Some("deployConfig.service.storageSize")), "{resp}");
    let (_, t) = call(&op, reqwest::Method::GET, &env, ALICE, None).await;
    assert_eq!(t["data"]["deploy_config"]["cpu"], "2", "{t}");

    // A service made from it takes the template's port (8081) and replica count when the request names neither.
    let (code, svc) =
        call(&op, reqwest::Method::POST, "/env-service", ALICE, Some(json!({"envName": format!("{name}@1.0.0")})))
            .await;
    assert_eq!(code, 200, "{svc}");
    assert_eq!((svc["data"]["port"].as_u64(), svc["data"]["replicas"].as_u64()), (Some(8081), Some(1)), "{svc}");
    let id = svc["data"]["id"].as_str().unwrap().to_string();
    let (code, svc) = call(
        &op,
        reqwest::Method::POST,
        "/env-service",
        ALICE,
        Some(json!({"envName": format!("{name}@1.0.0"), "port": 9000, "replicas": 0})),
    )
    .await;
    assert_eq!((code, svc["data"]["port"].as_u64()), (200, Some(9000)), "the request's own fields win: {svc}");
    let id2 = svc["data"]["id"].as_str().unwrap().to_string();
    for id in [&id, &id2] {
        let (code, _) = call(&op, reqwest::Method::DELETE, &format!("/env-service/{id}"), ALICE, None).await;
        assert_eq!(code, 200);
    }

    // While a pool keeps sandboxes of it, an update is refused (they would serve the old spec).
    let pool = unique_name("clipool");
    let (code, resp) = call(
        &op,
        reqwest::Method::POST,
        "/env-pool",
        ALICE,
        Some(json!({"name": pool, "envName": format!("{name}@1.0.0"), "replicas": 0})),
    )
    .await;
    assert_eq!(code, 200, "{resp}");
    let (code, resp) = call(&op, reqwest::Method::PUT, &env, ALICE, Some(config.clone())).await;
    assert_eq!(code, 409, "{resp}");
    assert!(resp["message"].as_str().unwrap_or_default().contains(&pool), "{resp}");
    let (code, _) = call(&op, reqwest::Method::DELETE, &format!("/env-pool/{pool}"), ALICE, None).await;
    assert_eq!(code, 200);

    // Released: final. Its status says so, a second release and any update are refused, and the CLI's push
    // fails; instances are still made from it.
    let (code, resp) = call(&op, reqwest::Method::POST, &format!("{env}/release"), ALICE, None).await;
    assert_eq!((code, resp["data"]["status"].as_i64()), (200, Some(7)), "{resp}");
    let (_, status) = call(&op, reqwest::Method::GET, &format!("{env}/status"), ALICE, None).await;
    assert_eq!(status["data"], json!({"status": "Released"}), "{status}");
    let (code, _) = call(&op, reqwest::Method::POST, &format!("{env}/release"), ALICE, None).await;
    assert_eq!(code, 403, "released once only");
    let (code, resp) = call(&op, reqwest::Method::PUT, &env, ALICE, Some(config.clone())).await;
    assert_eq!(code, 403, "{resp}");
    let out = aenv(&op, &alice, &project, &["push"]).await;
    assert!(!text(&out).contains("Push successfully"), "a push to a released version must fail: {}", text(&out));
    let (code, inst) = call(
        &op,
        reqwest::Method::POST,
        "/env-instance",
        ALICE,
        Some(json!({"envName": format!("{name}@1.0.0"), "ttl": "5m"})),
    )
    .await;
    assert_eq!(code, 200, "{inst}");
    assert_eq!(inst["data"]["env"]["deploy_config"]["environment_variables"]["PUSHED"], "twice", "{inst}");
}

#[tokio::test]
async fn the_sdk_s_mount_points_are_accepted_and_the_instance_says_they_are_not_mounted() {
    let op = Operator::start(BIN, &["--create-wait", "0"]).await;
    let name = unique_name("mnt");
    let (code, resp) = op
        .post_json(
            "/env",
            &json!({"name": name, "version": "1", "artifacts": [{"type": "image", "content": TEST_IMAGE}]}),
        )
        .await;
    assert_eq!(code, 200, "{resp}");
    let (code, inst) = op
        .post_json(
            "/env-instance",
            &json!({"envName": format!("{name}@1"), "mount_points": [
                {"id": "OSS_1", "remote_dir": "/data", "local_dir": "/workspace"}]}),
        )
        .await;
    assert_eq!(code, 200, "mount_points are accepted, as upstream does on Kubernetes: {inst}");
    let id = inst["data"]["id"].as_str().unwrap().to_string();
    let running = op.wait_for(&id, Duration::from_secs(30), |v| v["data"]["status"] == "Running").await;
    let message = running["data"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("not mounted") && message.contains("/workspace"), "{running}");
    // Nothing was mounted there.
    let mounts = aenv_testkit::inspect(&id)["Mounts"].clone();
    assert!(mounts.as_array().is_some_and(|m| m.iter().all(|m| m["Destination"] != "/workspace")), "{mounts}");
    // Still a list of objects.
    let (code, resp) =
        op.post_json("/env-instance", &json!({"envName": format!("{name}@1"), "mount_points": "/workspace"})).await;
    assert_eq!((code, resp["field"].as_str()), (400, Some("mount_points")), "{resp}");
}
