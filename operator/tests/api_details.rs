//! The API's answers to details a client gets wrong, against the real binary (and the real Docker daemon where a
//! sandbox is needed): a repeated, undecodable or out-of-range query parameter is a 400 naming it on every route
//! that reads one; a wrong-typed field of every JSON body is a 400 naming its path; every 405 says in `Allow` what
//! the path answers; a file Docker refuses to replace for good is a
//! 409 saying why; a service or pool name another owner holds is refused without a word about that owner.

use std::time::{Duration, Instant};

use aenv_testkit::{BARE_TEST_IMAGE, Operator, create_body, ensure_bare_test_image, ensure_test_image, unique_name};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_aenv-operator");

fn openapi() -> Value {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// `template` with every `{name}` segment filled in.
fn concrete(template: &str) -> String {
    template.split('/').map(|s| if s.starts_with('{') { "x1" } else { s }).collect::<Vec<_>>().join("/")
}

/// A value of `schema` that the schema accepts.
fn good_value(schema: &Value) -> String {
    if let Some(first) = schema["enum"].as_array().and_then(|e| e.first()) {
        return first.as_str().map(str::to_string).unwrap_or_else(|| first.to_string());
    }
    match schema["type"].as_str() {
        Some("boolean") => "true".into(),
        Some("integer") => "1".into(),
        _ => "/tmp/a".into(),
    }
}

/// A value the schema refuses, when it has a rule to break (an enum, a type).
fn bad_value(schema: &Value) -> Option<&'static str> {
    (schema.get("enum").is_some() || matches!(schema["type"].as_str(), Some("boolean" | "integer"))).then_some("AAA")
}

async fn send(op: &Operator, method: &str, path_and_query: &str, token: Option<&str>) -> (u16, Value, String) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = op.http.request(method, op.url(path_and_query)).body("{}").header("content-type", "application/json");
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("request");
    let code = resp.status().as_u16();
    let allow = resp.headers().get("allow").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    (code, resp.json().await.unwrap_or(Value::Null), allow)
}

/// Every query parameter of docs/openapi.json, on its route: given twice, with a broken percent-escape, or (when
/// the schema has a rule) with a value outside it, the answer is a 400 whose message names the parameter; never
/// a 405, never a 2xx. Before this change, `deleteStorage` twice answered 405 and the rest 200.
#[tokio::test]
async fn repeated_malformed_or_unknown_query_values_are_400_naming_the_parameter_on_every_route() {
    let op = Operator::start(BIN, &["--no-pull"]).await;
    let doc = openapi();
    let mut tried = 0;
    for (template, ops) in doc["paths"].as_object().unwrap() {
        for (method, op_doc) in ops.as_object().unwrap() {
            let params: Vec<&Value> = op_doc["parameters"]
                .as_array()
                .map(|p| p.iter().filter(|p| p["in"] == "query").collect())
                .unwrap_or_default();
            let path = concrete(template);
            for p in params {
                let name = p["name"].as_str().unwrap();
                let good = good_value(&p["schema"]);
                let mut cases =
                    vec![format!("{name}={good}&{name}={good}"), format!("{name}=%zz"), format!("{name}=%ff")];
                if let Some(bad) = bad_value(&p["schema"]) {
                    cases.push(format!("{name}={bad}"));
                }
                for query in cases {
                    let (code, body, _) = send(&op, &method.to_uppercase(), &format!("{path}?{query}"), None).await;
                    assert_eq!(code, 400, "{method} {path}?{query}: {body}");
                    let message = body["message"].as_str().unwrap_or_default();
                    assert!(message.contains(&format!("`{name}`")), "{method} {path}?{query} names {name}: {body}");
                    tried += 1;
                }
            }
        }
    }
    assert!(tried >= 60, "only {tried} cases: the document lost its query parameters?");
    // The controller's one filter, spelled out, and what it accepts.
    let (code, body, _) = send(&op, "GET", "/pods?filter=AAA", None).await;
    assert_eq!(code, 400, "{body}");
    assert!(body["message"].as_str().unwrap().contains("`filter` must be one of `expired`"), "{body}");
    assert_eq!(send(&op, "GET", "/pods?filter=expired", None).await.0, 200);
    assert_eq!(send(&op, "GET", "/env-instance/list?status=Running&utm_source=x", None).await.0, 200);
}

/// For each path of docs/openapi.json, a method it does not answer gets a 405 with `Allow` listing exactly the
/// methods that answer there, each of which is then answered (not 405). Before this change no 405 had `Allow`.
#[tokio::test]
async fn every_405_says_in_allow_what_the_path_answers() {
    let op = Operator::start(BIN, &["--no-pull"]).await;
    let doc = openapi();
    for (template, ops) in doc["paths"].as_object().unwrap() {
        let path = concrete(template);
        let declared: Vec<String> = ops.as_object().unwrap().keys().map(|m| m.to_uppercase()).collect();
        let other = ["PATCH", "PUT", "DELETE", "POST", "GET"].into_iter().find(|m| !declared.iter().any(|d| d == m));
        let Some(other) = other else { continue };
        let (code, body, allow) = send(&op, other, &path, None).await;
        if code != 405 {
            // Another path's route of that method takes this one (`DELETE /env-instance/list` is a delete of id
            // `list`): then that method is in no 405 of the path either.
            continue;
        }
        let listed: Vec<&str> = allow.split(", ").filter(|m| !m.is_empty()).collect();
        for m in &declared {
            assert!(listed.contains(&m.as_str()), "{other} {path}: Allow {allow:?} lacks {m}; {body}");
        }
        for m in &listed {
            let (code, body, _) = send(&op, m, &path, None).await;
            assert_ne!(code, 405, "{m} {path} is in Allow but answers 405: {body}");
        }
        assert!(body["message"].as_str().unwrap().contains(&allow), "{body}");
    }
    let (code, _, allow) = send(&op, "PATCH", "/env-instance/some-id", None).await;
    assert_eq!((code, allow.as_str()), (405, "DELETE, GET"));
}

async fn wait_running(op: &Operator, id: &str) {
    op.wait_for(id, Duration::from_secs(120), |d| d["data"]["status"] == "Running").await;
}

/// A write Docker refuses for good (the files it bind-mounts into every container, a read-only mount) is a 409
/// with the reason and a fix, not a retryable 503; a write beside them works. Before this change `/etc/hosts`
/// answered 503 (the daemon's bare 500). The image has no EXPOSE.
#[tokio::test]
async fn a_file_docker_refuses_for_good_is_a_409_saying_why() {
    let image = ensure_bare_test_image();
    assert_eq!(image, BARE_TEST_IMAGE);
    let op = Operator::start(BIN, &["--no-pull"]).await;
    let (code, resp) = op.post_json("/env-instance", &create_body(&unique_name("ro"), image, json!({}))).await;
    assert_eq!(code, 200, "{resp}");
    let id = resp["data"]["id"].as_str().unwrap().to_string();
    wait_running(&op, &id).await;
    for path in ["/etc/hosts", "/etc/resolv.conf", "/etc/hostname"] {
        let url = op.url(&format!("/env-instance/{id}/files?path={path}"));
        let resp = op.http.put(url).body("127.0.0.1 evil\n").send().await.unwrap();
        let code = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert_eq!(code, 409, "{path}: {body}");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(message.contains("bind-mounted into the sandbox by Docker") && message.contains("exec"), "{body}");
    }
    let url = op.url(&format!("/env-instance/{id}/files?path=/tmp/fine.txt"));
    let resp = op.http.put(url).body("ok\n").send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200, "{:?}", resp.text().await);
    op.delete(&format!("/env-instance/{id}")).await;
}

async fn as_owner(token: &str, req: reqwest::RequestBuilder) -> (u16, Value) {
    let resp = req.bearer_auth(token).send().await.expect("request");
    let code = resp.status().as_u16();
    (code, resp.json().await.unwrap_or(Value::Null))
}

/// Service and pool names are one namespace for all tenants: bob asking for alice's names gets a 409 that says
/// the name is taken and nothing more (not her name, not that she may `PUT` it, not that it is being deleted),
/// the same words whatever state hers is in; alice's own 409 still helps her. Without `--proxy-auth` a service's
/// address answers without a token (documented as open: the SDK calls it without one), with it only the owner.
#[tokio::test]
async fn another_owner_s_409_for_a_taken_name_says_nothing_of_the_holder() {
    const ALICE: &str = "alice-token-0123456789";
    const BOB: &str = "bob-token-0123456789";
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.json");
    std::fs::write(
        &tokens,
        json!({"tokens": [{"token": ALICE, "owner": "alice-the-holder"}, {"token": BOB, "owner": "bob"}]}).to_string(),
    )
    .unwrap();
    let op = Operator::start(BIN, &["--no-pull", "--tokens-file", &tokens.display().to_string()]).await;
    let mut envs = Vec::new();
    for token in [ALICE, BOB] {
        let name = unique_name("names");
        let body =
            json!({"name": name, "version": "1.0.0", "artifacts": [{"type": "image", "content": ensure_test_image()}]});
        let (code, resp) = as_owner(token, op.http.post(op.url("/env")).json(&body)).await;
        assert_eq!(code, 200, "{resp}");
        envs.push(format!("{name}@1.0.0"));
    }
    let service = |env: &str| json!({"envName": env, "service_name": "web", "replicas": 1, "port": 8081});
    let pool = |env: &str| json!({"name": "warm", "envName": env, "replicas": 0});
    let (code, resp) = as_owner(ALICE, op.http.post(op.url("/env-service")).json(&service(&envs[0]))).await;
    assert_eq!(code, 200, "{resp}");
    let url = resp["data"]["service_url"].as_str().unwrap().to_string();
    let (code, resp) = as_owner(ALICE, op.http.post(op.url("/env-pool")).json(&pool(&envs[0]))).await;
    assert_eq!(code, 200, "{resp}");

    let refusals = |what: &'static str| {
        let op = &op;
        let envs = &envs;
        async move {
            let (path, body) =
                if what == "service" { ("/env-service", service(&envs[1])) } else { ("/env-pool", pool(&envs[1])) };
            let (code, resp) = as_owner(BOB, op.http.post(op.url(path)).json(&body)).await;
            assert_eq!(code, 409, "{what}: {resp}");
            let message = resp["message"].as_str().unwrap_or_default().to_string();
            for leak in ["alice", "PUT", "deleted", "exists already", "replica"] {
                assert!(!message.contains(leak), "bob's 409 for the {what} tells {leak:?}: {message}");
            }
            assert!(message.contains("is taken"), "{message}");
            message
        }
    };
    let service_words = refusals("service").await;
    let pool_words = refusals("pool").await;
    let (code, resp) = as_owner(ALICE, op.http.post(op.url("/env-service")).json(&service(&envs[0]))).await;
    assert_eq!(code, 409, "{resp}");
    assert!(resp["message"].as_str().unwrap().contains("PUT /env-service/web"), "the owner is still helped: {resp}");

    // Open without --proxy-auth, as documented: a request without a token reaches the ready replica.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let code = op.http.get(format!("{url}/health")).send().await.unwrap().status().as_u16();
        if code == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "service_url never answered ({code})\n{}", op.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Being deleted, hers is still refused to bob in the same words.
    let (code, resp) = as_owner(ALICE, op.http.delete(op.url("/env-service/web"))).await;
    assert_eq!(code, 200, "{resp}");
    let (code, resp) = as_owner(BOB, op.http.post(op.url("/env-service")).json(&service(&envs[1]))).await;
    if code == 409 {
        assert_eq!(resp["message"].as_str().unwrap_or_default(), service_words, "{resp}");
    } else {
        // Hers went already; then the name was free and bob has it now.
        assert_eq!(code, 200, "{resp}");
        as_owner(BOB, op.http.delete(op.url("/env-service/web"))).await;
    }
    assert!(pool_words.contains("`name`"), "{pool_words}");
    as_owner(ALICE, op.http.delete(op.url("/env-pool/warm"))).await;
}

/// Every JSON request body of docs/openapi.json, posted to the real binary with one field of the wrong type: a 400
/// whose message names the field's path, the envelope carrying it as `field` (the controller API, which answers
/// plain text as the Go controller does, names it in its text). The bodies are decoded before anything is looked
/// up, so the ids in the paths need not exist.
#[tokio::test]
async fn a_wrong_typed_field_of_every_body_is_a_400_naming_its_path() {
    let op = Operator::start(BIN, &["--no-pull"]).await;
    let image = json!([{"type": "image", "content": "aenv-test/none:1"}]);
    let cases: Vec<(&str, &str, Value, &str)> = vec![
        ("POST", "/env-instance", json!({"envName": "a@1", "labels": {"team": []}}), "labels.team"),
        (
            "POST",
            "/env-instance",
            json!({"name": "e", "artifacts": image, "deployConfig": {"ports": [8080, []]}}),
            "deployConfig.ports[1]",
        ),
        (
            "POST",
            "/env",
            json!({"name": "e", "version": "1", "artifacts": [{"type": "image", "content": {}}]}),
            "artifacts[0].content",
        ),
        (
            "PUT",
            "/env/x1/x1",
            json!({"artifacts": image, "deployConfig": {"service": {"port": "http"}}}),
            "deployConfig.service.port",
        ),
        ("POST", "/pods", json!({"name": "e", "artifacts": image, "deployConfig": {"cpu": []}}), "deployConfig.cpu"),
        (
            "POST",
            "/services",
            json!({"name": "e", "artifacts": image, "deployConfig": {"replicas": "two"}}),
            "deployConfig.replicas",
        ),
        ("POST", "/env-pool", json!({"name": "w", "envName": "a@1", "replicas": []}), "replicas"),
        ("PUT", "/env-pool/x1", json!({"replicas": {}}), "replicas"),
        ("POST", "/env-service", json!({"envName": "a@1", "port": "http"}), "port"),
        ("PUT", "/env-service/x1", json!({"environment_variables": {"A": []}}), "environment_variables.A"),
        ("PUT", "/services/x1", json!({"replicas": 1.5}), "replicas"),
        ("POST", "/env-instance/x1/exec", json!({"command": ["ls", []]}), "command[1]"),
        ("POST", "/env-instance/x1/snapshot", json!({"version": []}), "version"),
        ("POST", "/env-instance/x1/fork", json!({"count": "many"}), "count"),
        ("POST", "/env-instance/x1/presign-url", json!({"port": "http"}), "port"),
    ];
    let mut covered = std::collections::BTreeSet::new();
    for (method, path, body, field) in &cases {
        let resp = op
            .http
            .request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), op.url(path))
            .json(body)
            .send()
            .await
            .expect("request");
        let code = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        assert_eq!(code, 400, "{method} {path} {body}: {text}");
        match serde_json::from_str::<Value>(&text) {
            Ok(envelope) => {
                assert_eq!(envelope["field"], *field, "{method} {path} {body}: {envelope}");
                let message = envelope["message"].as_str().unwrap_or_default();
                assert!(message.contains(&format!("`{field}`")), "{method} {path}: {message}");
            }
            // The controller API: plain text, as the Go controller writes it.
            Err(_) => assert!(
                text.starts_with("Invalid request body: ") && text.contains(&format!("`{field}`")),
                "{method} {path} {body}: {text}"
            ),
        }
        // Ids are written `x1`, as `concrete` fills a template in.
        covered.insert((method.to_lowercase(), path.to_string()));
    }
    // Every JSON body of the document is tried.
    let doc = openapi();
    for (template, ops) in doc["paths"].as_object().unwrap() {
        for (method, op_doc) in ops.as_object().unwrap() {
            if op_doc.pointer("/requestBody/content/application~1json").is_some() {
                assert!(
                    covered.contains(&(method.clone(), concrete(template))),
                    "{method} {template} takes a JSON body and has no wrong-typed case here"
                );
            }
        }
    }
}
