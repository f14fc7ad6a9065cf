//! Drop-in AEnvironment compatibility: Environment templates and the SDK's create form, the list routes, the
//! controller's `/pods` byte for byte, the data-plane proxy, image warmup and the OpenAPI document, against the
//! real binary and the real Docker daemon.

use std::time::{Duration, Instant};

use aenv_testkit::{LocalRegistry, Operator, TEST_IMAGE, docker, inspect, unique_name};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_aenv-operator");

fn running(v: &Value) -> bool {
    v["data"]["status"] == "Running"
}

fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v.as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default();
    k.sort();
    k
}

async fn register(op: &Operator, name: &str, deploy: Value) {
    let body = json!({
        "name": name, "version": "1.0.1", "description": "a test environment", "tags": ["swe"],
        "code_url": "oss://bucket/code", "artifacts": [{"type": "image", "content": TEST_IMAGE}], "deployConfig": deploy,
    });
    let (code, resp) = op.post_json("/env", &body).await;
    assert_eq!(code, 200, "{resp}");
}

#[tokio::test]
async fn templates_and_the_sdk_create_form() {
    // Upstream's answer, at once and `Pending`.
    let op = Operator::start(BIN, &["--create-wait", "0"]).await;
    let name = unique_name("tmpl");
    register(&op, &name, json!({"cpu": "500m", "ttl": "20m", "environment_variables": {"FROM_TEMPLATE": "1"}})).await;
    let (code, env) = op.get(&format!("/env/{name}/1.0.1")).await;
    assert_eq!(code, 200);
    let env = &env["data"];
    for key in ["id", "name", "description", "version", "code_url", "status", "created_at", "updated_at"] {
        assert!(env.get(key).is_some(), "Env.{key} missing: {env}");
    }
    assert_eq!((env["description"].as_str(), env["tags"][0].as_str()), (Some("a test environment"), Some("swe")));
    assert_eq!(env["deploy_config"]["ttl"], "20m");
    let (code, _) = op
        .post_json(
            "/env",
            &json!({"name": name, "version": "1.0.1", "artifacts": [{"type": "image", "content": TEST_IMAGE}]}),
        )
        .await;
    assert_eq!(code, 409, "a version is registered once");
    let (_, list) = op.get(&format!("/env?name={name}")).await;
    assert_eq!(list["data"].as_array().map(Vec::len), Some(1));

    // The SDK's body, as create_env_instance() sends it.
    let sdk_body = json!({"envName": format!("{name}@1.0.1"), "datasource": "", "ttl": "",
        "environment_variables": {"FROM_SDK": "2"}, "arguments": [], "owner": "alice", "labels": {"exp": "e1"}});
    let (code, created) = op.post_json("/env-instance", &sdk_body).await;
    assert_eq!(code, 200, "{created}");
    assert_eq!(created["data"]["status"], "Pending");
    let id = created["data"]["id"].as_str().unwrap().to_string();
    let v = op.wait_for(&id, Duration::from_secs(30), running).await;
    assert_eq!(v["data"]["ttl"], "20m", "the template's TTL, since the SDK sent none");
    assert_eq!(v["data"]["owner"], "alice");
    assert_eq!(v["data"]["labels"]["exp"], "e1");
    assert_eq!(v["data"]["env"]["name"], name.as_str());
    let c = inspect(&id);
    assert_eq!(c["HostConfig"]["NanoCpus"], 500_000_000i64);
    let envs: Vec<&str> = c["Config"]["Env"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(envs.contains(&"FROM_TEMPLATE=1") && envs.contains(&"FROM_SDK=2"), "{envs:?}");

    // The list routes: {items} for the SDK, arrays for the CLI.
    let (_, items) = op.get("/env-instance/list").await;
    assert!(items["data"]["items"].as_array().unwrap().iter().any(|i| i["id"] == id.as_str()), "{items}");
    for path in [
        format!("/env-instance/{name}@1.0.1/list"),
        format!("/env-instance/{name}/list"),
        "/env-instance/*/list".into(),
    ] {
        let (code, list) = op.get(&path).await;
        assert_eq!(code, 200);
        assert!(list["data"].as_array().unwrap().iter().any(|i| i["id"] == id.as_str()), "{path}: {list}");
    }
    let (_, by_status) = op.get("/env-instance/list?status=Failed").await;
    assert!(!by_status["data"]["items"].as_array().unwrap().iter().any(|i| i["id"] == id.as_str()));

    // Client mistakes are 4xx with success false (upstream answers 500).
    let (code, resp) = op.post_json("/env-instance", &json!({"envName": format!("{name}@9.9.9")})).await;
    assert_eq!((code, &resp["success"]), (404, &json!(false)), "{resp}");
    let (code, resp) = op.post_json("/env-instance", &json!({"envName": name})).await;
    assert_eq!(code, 400, "{resp}");
    assert!(resp["message"].as_str().unwrap().contains("name@version"));

    let (code, _) = op.delete(&format!("/env/{name}/1.0.1")).await;
    assert_eq!(code, 200);
    let (code, _) = op.get(&format!("/env/{name}/1.0.1")).await;
    assert_eq!(code, 404);
}

/// The raw text of a response, its status and content type.
async fn raw(op: &Operator, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, String, String) {
    let mut req = op.http.request(method, op.url(path));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let ctype = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    (status, ctype, resp.text().await.unwrap())
}

#[tokio::test]
async fn controller_pods_api_field_for_field() {
    let op = Operator::start(BIN, &[]).await;
    let name = unique_name("pods");
    // What the api-service sends: Env.ToJSON() with snake and camel keys, deployConfig with keys of envhub's.
    let deploy = json!({"cpu": "1", "memory": "256Mi", "ttl": "30m", "owner": "alice", "podTemplate": "singleContainer",
        "os": "linux", "dataSource": "", "environment_variables": {"K": "V"}, "arguments": []});
    let body = json!({"id": "", "name": name, "description": "", "version": "1.0.1", "tags": ["t"], "code_url": "",
        "codeUrl": "", "status": 6, "artifacts": [{"id": "", "type": "image", "content": TEST_IMAGE}],
        "build_config": null, "buildConfig": null, "test_config": null, "testConfig": null,
        "deploy_config": deploy, "deployConfig": deploy, "created_at": "2025-10-10T11:11:11Z", "createdAt": "2025-10-10T11:11:11Z"});
    let (status, ctype, text) = raw(&op, reqwest::Method::POST, "/pods", Some(body)).await;
    assert_eq!((status, ctype.as_str()), (201, "application/json"), "{text}");
    assert!(text.ends_with("}\n"), "json.Encoder ends with a newline: {text:?}");
    assert!(text.starts_with(r#"{"success":true,"code":0,"data":{"id":""#), "Go field order: {text}");
    let created: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(keys(&created), ["code", "data", "success"]);
    assert_eq!(keys(&created["data"]), ["id", "ip", "owner", "status", "ttl"]);
    assert_eq!(created["data"]["status"], "Pending");
    assert_eq!((created["data"]["ip"].as_str(), created["data"]["ttl"].as_str()), (Some(""), Some("")));
    assert_eq!(created["data"]["owner"], "alice");
    let id = created["data"]["id"].as_str().unwrap().to_string();

    let deadline = Instant::now() + Duration::from_secs(30);
    let got = loop {
        let (status, _, text) = raw(&op, reqwest::Method::GET, &format!("/pods/{id}"), None).await;
        assert_eq!(status, 200);
        let v: Value = serde_json::from_str(&text).unwrap();
        if v["data"]["status"] == "Running" {
            break v;
        }
        assert!(Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(keys(&got["data"]), ["id", "ip", "owner", "status", "ttl"]);
    assert_eq!(got["data"]["ttl"], "30m");
    assert!(!got["data"]["ip"].as_str().unwrap().is_empty());

    let (_, _, text) = raw(&op, reqwest::Method::GET, &format!("/pods?envName={name}"), None).await;
    let list: Value = serde_json::from_str(&text).unwrap();
    let item = &list["data"][0];
    assert_eq!(keys(item), ["created_at", "envname", "id", "ip", "owner", "status", "ttl", "version"]);
    assert_eq!((item["envname"].as_str(), item["version"].as_str()), (Some(name.as_str()), Some("1.0.1")));
    assert!(item["created_at"].as_str().unwrap().ends_with('Z'));
    let (_, _, text) = raw(&op, reqwest::Method::GET, "/pods?envName=nobody-here", None).await;
    assert_eq!(text, "{\"success\":true,\"code\":0,\"data\":null}\n", "an empty list is null");
    let (_, _, text) = raw(&op, reqwest::Method::GET, &format!("/pods?filter=expired&envName={name}"), None).await;
    assert_eq!(text, "{\"success\":true,\"code\":0,\"data\":null}\n", "nothing outlives its TTL here");

    let (status, ctype, text) = raw(&op, reqwest::Method::GET, "/pods/nope-abc123", None).await;
    assert_eq!(
        (status, ctype.as_str(), text.as_str()),
        (404, "text/plain; charset=utf-8", "failed to get pod failed: err is pods \"nope-abc123\" not found\n")
    );
    let (status, _, text) = raw(&op, reqwest::Method::GET, "/pods/", None).await;
    assert_eq!((status, text.as_str()), (400, "missing pod name\n"));
    let resp = op.http.post(op.url("/pods")).body("{not json").send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    assert!(resp.text().await.unwrap().starts_with("Invalid request body: "));

    let (status, _, text) = raw(&op, reqwest::Method::DELETE, &format!("/pods/{id}"), None).await;
    assert_eq!((status, text.as_str()), (200, "{\"success\":true,\"code\":0,\"data\":true}\n"));
    let (status, _, text) = raw(&op, reqwest::Method::DELETE, "/pods/nope-abc123", None).await;
    assert_eq!((status, text.as_str()), (404, "failed to delete Pod failed: err is pods \"nope-abc123\" not found\n"));
}

const SSE_CGI: &str = "mkdir -p /www/cgi-bin /www/a && echo hello > /www/a/b && \
printf '#!/bin/sh\\nprintf \"Content-Type: text/event-stream\\\\r\\\\n\\\\r\\\\n\"\\necho \"data: one $QUERY_STRING\"; echo\\nsleep 2\\necho \"data: two\"; echo\\n' > /www/cgi-bin/sse && \
chmod +x /www/cgi-bin/sse && exec httpd -f -p 8081 -h /www";

#[tokio::test]
async fn data_plane_proxy_forwards_to_our_instances_only_and_streams() {
    let op = Operator::start(BIN, &[]).await;
    let name = unique_name("proxy");
    let body = aenv_testkit::create_body(&name, TEST_IMAGE, json!({"arguments": ["sh", "-c", SSE_CGI]}));
    let (_, created) = op.post_json("/env-instance", &body).await;
    let id = created["data"]["id"].as_str().unwrap().to_string();
    let v = op.wait_for(&id, Duration::from_secs(30), |v| running(v) && v["data"]["ready"] == true).await;
    let ip = v["data"]["ip"].as_str().unwrap().to_string();
    let target = format!("http://{ip}:8081");
    let via = |path: &str| {
        op.http
            .get(op.proxy_url(path))
            .header("AEnvCore-MCPProxy-URL", target.clone())
            .header("AEnvCore-EnvInstance-ID", id.clone())
    };

    // Health, as the SDK checks it.
    let health: Value = via("/health").send().await.unwrap().json().await.unwrap();
    assert_eq!(health["success"], true);
    assert_eq!(health["data"]["status"], "success");
    // Path kept.
    assert_eq!(via("/a/b").send().await.unwrap().text().await.unwrap().trim(), "hello");
    // Server-sent events stream through: the first event arrives on its own, before the script's 2 s pause ends
    // and the second is written (a buffering proxy would hand both over together).
    let mut resp = via("/cgi-bin/sse?q=1").send().await.unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let first = resp.chunk().await.unwrap().unwrap();
    let first = String::from_utf8_lossy(&first).into_owned();
    assert!(first.contains("data: one q=1"), "query kept: {first:?}");
    assert!(!first.contains("data: two"), "streamed, not buffered: {first:?}");
    let mut rest = String::new();
    while let Some(chunk) = resp.chunk().await.unwrap() {
        rest.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(rest.contains("data: two"), "{rest}");

    // Without the header, /health is the gateway's own.
    let own: Value = op.http.get(op.proxy_url("/health")).send().await.unwrap().json().await.unwrap();
    assert_eq!(own, json!({"status": "healthy", "message": "MCP Gateway is running"}));
    // Not an open proxy.
    for other in ["http://127.0.0.1:22", "http://10.255.255.1:8081", &format!("http://{ip}.nip.io:8081")] {
        let resp = op.http.get(op.proxy_url("/health")).header("AEnvCore-MCPProxy-URL", other).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 403, "{other}");
    }
    // A deleted instance is no longer a target.
    op.delete(&format!("/env-instance/{id}")).await;
    let resp = via("/health").send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 403);
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
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn warmup_pre_pulls_a_templates_images_with_progress() {
    let registry = LocalRegistry::start();
    let image = registry.push(TEST_IMAGE, "aenv/warm:1");
    // A registry on loopback: refused unless listed.
    let op = Operator::start(BIN, &["--registry-allow", &registry.host()]).await;
    let name = unique_name("warm");
    let body = json!({"name": name, "version": "1", "artifacts": [{"type": "image", "content": image}]});
    let (code, resp) = op.post_json("/env", &body).await;
    assert_eq!(code, 200, "{resp}");
    assert!(!docker(&["image", "inspect", &image]).status.success(), "not on the host before the warmup");
    let (code, started) = op.post_json(&format!("/env/{name}/1/warmup"), &json!({})).await;
    assert_eq!(code, 202, "{started}");
    let done = warmup_done(&op, &format!("{name}/1"), Duration::from_secs(60)).await;
    assert_eq!(done["data"]["images"][0]["image"], image.as_str());
    assert_eq!(done["data"]["images"][0]["state"], "Pulled", "{done}");
    assert!(docker(&["image", "inspect", &image]).status.success(), "on the host after the warmup");
    // A second warmup finds it present.
    op.post_json(&format!("/env/{name}/1/warmup"), &json!({})).await;
    let state = warmup_done(&op, &format!("{name}/1"), Duration::from_secs(10)).await;
    assert_eq!(state["data"]["images"][0]["state"], "Present", "{state}");
    // A template whose image cannot be had reports the daemon's reason.
    let bad = format!("{name}-bad");
    let body = json!({"name": bad, "version": "1", "artifacts": [{"type": "image", "content": format!("{}/aenv/missing:1", registry.host())}]});
    op.post_json("/env", &body).await;
    op.post_json(&format!("/env/{bad}/1/warmup"), &json!({})).await;
    let state = warmup_done(&op, &format!("{bad}/1"), Duration::from_secs(60)).await;
    assert_eq!(state["data"]["images"][0]["state"], "Failed", "{state}");
    assert!(!state["data"]["images"][0]["detail"].as_str().unwrap_or_default().is_empty());
    let (code, _) = op.get("/env/nothing/1/warmup").await;
    assert_eq!(code, 404);
    docker(&["rmi", &image]);
}

#[tokio::test]
async fn openapi_document_is_served_and_every_path_exists() {
    let op = Operator::start(BIN, &[]).await;
    let (code, doc) = op.get("/openapi.json").await;
    assert_eq!(code, 200);
    let on_disk: Value = serde_json::from_str(include_str!("../../docs/openapi.json")).unwrap();
    assert_eq!(doc, on_disk);
    for (path, item) in doc["paths"].as_object().unwrap() {
        let concrete = path
            .replace("{id}", "x-abcdef")
            .replace("{pattern}", "*")
            .replace("{name}", "x")
            .replace("{version}", "1")
            .replace("{replica}", "x-1");
        for method in item.as_object().unwrap().keys() {
            let resp = op.http.request(method.to_uppercase().parse().unwrap(), op.url(&concrete)).send().await.unwrap();
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap();
            assert!(!text.contains("no such route"), "{method} {path} is documented but not routed");
            assert!(status < 500, "{method} {path}: {status} {text}");
        }
    }
}

#[tokio::test]
async fn a_template_can_hold_a_compose_stack_and_warmup_pulls_each_service() {
    let registry = LocalRegistry::start();
    let side_image = registry.push(TEST_IMAGE, "aenv/side:1");
    let op = Operator::start(BIN, &["--registry-allow", &registry.host()]).await;
    let name = unique_name("stacktmpl");
    let compose = format!(
        "services:\n  main:\n    image: {TEST_IMAGE}\n    labels: [aenv.main=true]\n    depends_on: [side]\n  side:\n    image: {side_image}\n"
    );
    let (code, resp) =
        op.post_json("/env", &json!({"name": name, "version": "2", "deployConfig": {"composeFile": compose}})).await;
    assert_eq!(code, 200, "{resp}");
    op.post_json(&format!("/env/{name}/2/warmup"), &json!({})).await;
    let state = warmup_done(&op, &format!("{name}/2"), Duration::from_secs(60)).await;
    let images = state["data"]["images"].as_array().unwrap();
    assert_eq!(images.len(), 2, "one entry per service image: {state}");
    assert_eq!((images[0]["image"].as_str(), images[0]["state"].as_str()), (Some(TEST_IMAGE), Some("Present")));
    assert_eq!((images[1]["image"].as_str(), images[1]["state"].as_str()), (Some(side_image.as_str()), Some("Pulled")));

    let (code, created) = op.post_json("/env-instance", &json!({"envName": format!("{name}@2")})).await;
    assert_eq!(code, 200, "{created}");
    let id = created["data"]["id"].as_str().unwrap().to_string();
    let v = op.wait_for(&id, Duration::from_secs(60), running).await;
    let services: Vec<&str> =
        v["data"]["services"].as_array().unwrap().iter().filter_map(|s| s["name"].as_str()).collect();
    assert_eq!(services, ["main", "side"], "{v}");
    op.delete(&format!("/env-instance/{id}")).await;
    op.wait_for(&id, Duration::from_secs(20), |v| v["code"] == 404).await;
    docker(&["rmi", &side_image]);
}

#[tokio::test]
async fn images_from_internal_registries_need_registry_allow() {
    let registry = LocalRegistry::start();
    let image = registry.push(TEST_IMAGE, "aenv/guarded:1");
    let op = Operator::start(BIN, &[]).await;
    let name = unique_name("registry");
    // Loopback, link-local (cloud metadata), localhost: refused before anything is stored or pulled; and the
    // machine's own name, which the hosts file maps to loopback, judged by that address, not by its spelling.
    let own_name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string();
    let by_name = image.replace("127.0.0.1", &own_name);
    assert_ne!(by_name, image, "the registry is on 127.0.0.1");
    for refused in [image.as_str(), &by_name, "169.254.169.254/latest/x:1", "localhost:5000/x", "10.1.2.3:80/x"] {
        let body = aenv_testkit::create_body(&name, refused, json!({}));
        let (code, resp) = op.post_json("/env-instance", &body).await;
        assert_eq!(code, 400, "{refused}: {resp}");
        let msg = resp["message"].as_str().unwrap_or_default();
        assert!(msg.contains("`image`") && msg.contains("--registry-allow"), "{refused}: {msg}");
        // A compose service's image, and a template, the same.
        let compose = format!("services:\n  web:\n    image: {refused}\n");
        let body = json!({"name": name, "deployConfig": {"composeFile": compose}});
        let (code, resp) = op.post_json("/env-instance", &body).await;
        assert_eq!(code, 400, "{refused}: {resp}");
        assert!(resp["message"].as_str().unwrap_or_default().contains("`services.web.image`"), "{resp}");
        let body = json!({"name": name, "version": "1", "artifacts": [{"type": "image", "content": refused}]});
        let (code, resp) = op.post_json("/env", &body).await;
        assert_eq!(code, 400, "{refused}: {resp}");
    }
    let (_, list) = op.get(&format!("/env-instance?envName={name}")).await;
    assert_eq!(list["data"], json!([]), "nothing was stored");
    assert!(!docker(&["image", "inspect", &image]).status.success(), "nothing was pulled");

    // Listed, it is pulled and runs.
    let op = Operator::start(BIN, &["--registry-allow", &registry.host()]).await;
    let (code, created) = op.post_json("/env-instance", &aenv_testkit::create_body(&name, &image, json!({}))).await;
    assert_eq!(code, 200, "{created}");
    let id = created["data"]["id"].as_str().unwrap().to_string();
    op.wait_for(&id, Duration::from_secs(60), running).await;
    // Another port of the same host is not listed.
    let other = image.replace(&registry.host(), "127.0.0.1:1");
    let (code, _) = op.post_json("/env-instance", &aenv_testkit::create_body(&name, &other, json!({}))).await;
    assert_eq!(code, 400);
    op.delete(&format!("/env-instance/{id}")).await;
    op.wait_for(&id, Duration::from_secs(20), |v| v["code"] == 404).await;
    docker(&["rmi", &image]);

    // A template registered while the registry was listed, then the operator restarted without the flag: its
    // warmup refuses before any pull, and a create from it is refused.
    let mut op = op;
    let body = json!({"name": name, "version": "1", "artifacts": [{"type": "image", "content": image}]});
    let (code, resp) = op.post_json("/env", &body).await;
    assert_eq!(code, 200, "{resp}");
    op.restart_with(BIN, &[]).await;
    let (code, started) = op.post_json(&format!("/env/{name}/1/warmup"), &json!({})).await;
    assert_eq!(code, 202, "{started}");
    let state = warmup_done(&op, &format!("{name}/1"), Duration::from_secs(20)).await;
    assert_eq!(state["data"]["images"][0]["state"], "Failed", "{state}");
    let detail = state["data"]["images"][0]["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("--registry-allow"), "{detail}");
    assert!(!docker(&["image", "inspect", &image]).status.success(), "nothing was pulled");
    let (code, resp) = op.post_json("/env-instance", &json!({"envName": format!("{name}@1")})).await;
    assert_eq!(code, 400, "{resp}");
}
