//! Snapshots belong to their owner: against the real binary and the real Docker daemon, with two tenants. A
//! snapshot's image is used only through its template (never by naming the image, however it is spelled), a taken
//! version tells another tenant nothing, concurrent snapshots of one version leave one template with its image,
//! the caps refuse before anything is committed, and a snapshot outlives its sandbox until its template goes.

use std::{path::Path, time::Duration};

use aenv_testkit::{Operator, create_body, docker, docker_ok, ensure_bare_test_image, ensure_test_image, unique_name};
use reqwest::Method;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_aenv-operator");
const ALICE: &str = "alice-token-0123456789";
const BOB: &str = "bob-token-0123456789";
const ADMIN: &str = "root-token-0123456789";
/// What alice's sandbox holds that no one else may read: in its environment and in a file.
const SECRET_ENV: &str = "alice-env-secret-7f3a";
const SECRET_FILE: &str = "alice-file-secret-91c2";

/// A tokens file for alice, bob and an admin; the owners' names are the test's own (other tests and other
/// operators on the daemon have their alices too). Its path and alice's owner name.
fn tokens_file(dir: &Path, bob_max: Option<u32>) -> (String, String) {
    let path = dir.join("tokens.json");
    let alice = unique_name("alice");
    let mut bob = json!({"token": BOB, "owner": unique_name("bob")});
    if let Some(max) = bob_max {
        bob["maxInstances"] = json!(max);
    }
    std::fs::write(
        &path,
        json!({"tokens": [
            {"token": ALICE, "owner": alice},
            bob,
            {"token": ADMIN, "owner": "ops", "admin": true},
        ]})
        .to_string(),
    )
    .unwrap();
    (path.display().to_string(), alice)
}

async fn call(op: &Operator, method: Method, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = op.http.request(method, op.url(path)).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    (status, resp.json::<Value>().await.unwrap_or(Value::Null))
}

/// A running sandbox of `token`'s, of env `name`, from the image without EXPOSE, with `env` in its environment.
async fn sandbox(op: &Operator, token: &str, name: &str, env: Value) -> String {
    let body = create_body(
        name,
        ensure_bare_test_image(),
        json!({"ttl": "15m", "readiness": false, "environment_variables": env, "arguments": ["sleep", "3600"]}),
    );
    let (code, v) = call(op, Method::POST, "/env-instance", token, Some(body)).await;
    assert_eq!(code, 200, "{v}");
    let id = v["data"]["id"].as_str().unwrap().to_string();
    wait_status(op, token, &id, "Running").await;
    id
}

async fn wait_status(op: &Operator, token: &str, id: &str, status: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let (_, v) = call(op, Method::GET, &format!("/env-instance/{id}"), token, None).await;
        if v["data"]["status"] == status {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{id} never became {status}: {v}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn exec(op: &Operator, token: &str, id: &str, command: &[&str]) -> Value {
    let (code, v) =
        call(op, Method::POST, &format!("/env-instance/{id}/exec"), token, Some(json!({"command": command}))).await;
    assert_eq!(code, 200, "{v}");
    v
}

fn image_exists(image: &str) -> bool {
    docker(&["image", "inspect", image]).status.success()
}

fn image_id(image: &str) -> String {
    docker_ok(&["image", "inspect", "-f", "{{.Id}}", image]).trim().to_string()
}

/// Ids of the snapshot images operator `operator_id` made.
fn snapshot_images(operator_id: &str) -> Vec<String> {
    let out =
        docker_ok(&["images", "-q", "--no-trunc", "--filter", &format!("label=aenv.io/snapshot-by={operator_id}")]);
    let mut ids: Vec<String> = out.lines().map(str::to_string).filter(|l| !l.is_empty()).collect();
    ids.sort();
    ids.dedup();
    ids
}

/// Snapshot images labelled as made for template `template` (`name@version`).
fn images_for(template: &str) -> Vec<String> {
    let out =
        docker_ok(&["images", "-q", "--no-trunc", "--filter", &format!("label=aenv.io/snapshot-template={template}")]);
    let mut ids: Vec<String> = out.lines().map(str::to_string).filter(|l| !l.is_empty()).collect();
    ids.dedup();
    ids
}

/// Containers of any state started from image `id` (or from an image made from it).
fn containers_of(id: &str) -> Vec<String> {
    let out = docker_ok(&["ps", "-a", "-q", "--filter", &format!("ancestor={id}")]);
    out.lines().map(str::to_string).filter(|l| !l.is_empty()).collect()
}

/// Versions of templates of `name` that `token` sees.
async fn versions(op: &Operator, token: &str, name: &str) -> Vec<String> {
    let (_, v) = call(op, Method::GET, &format!("/env?name={name}"), token, None).await;
    let mut out: Vec<String> =
        v["data"].as_array().into_iter().flatten().filter_map(|t| t["version"].as_str().map(str::to_string)).collect();
    out.sort();
    out
}

async fn delete_template_when_free(op: &Operator, token: &str, name: &str, version: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (code, v) = call(op, Method::DELETE, &format!("/env/{name}/{version}"), token, None).await;
        if code == 200 {
            return;
        }
        assert_eq!(code, 409, "{v}");
        assert!(tokio::time::Instant::now() < deadline, "{name}@{version} could not be deleted: {v}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn delete_instance(op: &Operator, token: &str, id: &str) {
    call(op, Method::DELETE, &format!("/env-instance/{id}"), token, None).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, v) = call(op, Method::GET, &format!("/env-instance/{id}"), token, None).await;
        if v["code"] == 404 && !docker(&["inspect", id]).status.success() {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{id} was not removed: {v}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn another_tenant_can_use_a_snapshot_only_through_its_template_and_learns_nothing_of_it() {
    ensure_test_image();
    let dir = tempfile::tempdir().unwrap();
    let (tokens, alice_owner) = tokens_file(dir.path(), None);
    let op = Operator::start(BIN, &["--tokens-file", &tokens]).await;
    let name = unique_name("secretsnap");
    let alice = sandbox(&op, ALICE, &name, json!({"ALICE_SECRET": SECRET_ENV})).await;
    exec(&op, ALICE, &alice, &["sh", "-c", &format!("mkdir -p /data && echo {SECRET_FILE} > /data/secret")]).await;
    let (code, snap) =
        call(&op, Method::POST, &format!("/env-instance/{alice}/snapshot"), ALICE, Some(json!({"version": "v1"})))
            .await;
    assert_eq!(code, 200, "{snap}");
    let image = snap["data"]["image"].as_str().unwrap().to_string();
    assert!(image_exists(&image), "{snap}");
    // The image's name is the snapshot's own: not the one a tenant could guess from the template's name.
    let guessable = format!("aenv-snapshot/{name}:v1");
    assert_ne!(image, guessable);
    assert!(!image_exists(&guessable));
    let id = image_id(&image);
    let hex = id.trim_start_matches("sha256:").to_string();

    // Bob names the image every way the daemon would find it: as an inline create, a template, a compose
    // service, a service's image. Each is a 400 naming the field; nothing runs it.
    let spellings = [
        image.clone(),
        format!("docker.io/{image}"),
        format!("index.docker.io/{image}"),
        guessable.clone(),
        id.clone(),
        hex.clone(),
        hex[..12].to_string(),
        hex[..3].to_string(),
    ];
    for spelled in &spellings {
        let body = create_body(&unique_name("steal"), spelled, json!({"ttl": "5m", "readiness": false}));
        let (code, v) = call(&op, Method::POST, "/env-instance", BOB, Some(body)).await;
        assert_eq!(code, 400, "inline {spelled}: {v}");
        assert!(v["message"].as_str().unwrap().contains("field `image`"), "{v}");
        let template = json!({"name": unique_name("stealtpl"), "version": "1", "shared": false,
            "artifacts": [{"type": "image", "content": spelled}], "deployConfig": {"ttl": "5m"}});
        let (code, v) = call(&op, Method::POST, "/env", BOB, Some(template)).await;
        assert_eq!(code, 400, "template {spelled}: {v}");
        assert!(v["message"].as_str().unwrap().contains("field `image`"), "{v}");
    }
    let compose =
        format!("services:\n  app:\n    image: docker.io/{image}\n    command: [\"cat\", \"/data/secret\"]\n");
    let body = json!({"name": unique_name("stealstack"), "version": "1",
        "deployConfig": {"composeFile": compose, "ttl": "5m"}});
    let (code, v) = call(&op, Method::POST, "/env-instance", BOB, Some(body)).await;
    assert_eq!(code, 400, "{v}");
    assert!(v["message"].as_str().unwrap().contains("services.app.image"), "{v}");

    // His own service, then its image replaced by alice's snapshot: refused, the service unchanged.
    let bobs = unique_name("bobsvc");
    let template = json!({"name": bobs, "version": "1.0.0",
        "artifacts": [{"type": "image", "content": aenv_testkit::TEST_IMAGE}], "deployConfig": {"ttl": "10m"}});
    assert_eq!(call(&op, Method::POST, "/env", BOB, Some(template)).await.0, 200);
    let svc = unique_name("websvc");
    let (code, v) = call(
        &op,
        Method::POST,
        "/env-service",
        BOB,
        Some(json!({"envName": format!("{bobs}@1.0.0"), "service_name": svc, "replicas": 1})),
    )
    .await;
    assert_eq!(code, 200, "{v}");
    for spelled in [image.clone(), hex[..8].to_string()] {
        let (code, v) =
            call(&op, Method::PUT, &format!("/env-service/{svc}"), BOB, Some(json!({"image": spelled}))).await;
        assert_eq!(code, 400, "{v}");
        assert!(v["message"].as_str().unwrap().contains("field `image`"), "{v}");
    }
    let (code, v) = call(&op, Method::POST, "/env-service", BOB, Some(json!({"envName": format!("{name}@v1")}))).await;
    assert_ne!(code, 200, "{v}");
    // Nor through the template: it is alice's and not shared.
    let (code, v) = call(&op, Method::POST, "/env-instance", BOB, Some(json!({"envName": format!("{name}@v1")}))).await;
    assert_eq!(code, 404, "{v}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(containers_of(&id).is_empty(), "something runs alice's snapshot: {:?}", containers_of(&id));

    // A version alice holds: bob's snapshot of his own sandbox of the same name is refused with what a taken name
    // that he cannot see gets, whether it is a snapshot or a template she registered.
    let private = json!({"name": name, "version": "v9", "shared": false,
        "artifacts": [{"type": "image", "content": aenv_testkit::TEST_IMAGE}], "deployConfig": {"ttl": "5m"}});
    assert_eq!(call(&op, Method::POST, "/env", ALICE, Some(private)).await.0, 200);
    let bob = sandbox(&op, BOB, &name, json!({})).await;
    let before = snapshot_images(&op.operator_id);
    let (code, on_snapshot) =
        call(&op, Method::POST, &format!("/env-instance/{bob}/snapshot"), BOB, Some(json!({"version": "v1"}))).await;
    assert_eq!(code, 409, "{on_snapshot}");
    let (code, on_template) =
        call(&op, Method::POST, &format!("/env-instance/{bob}/snapshot"), BOB, Some(json!({"version": "v9"}))).await;
    assert_eq!(code, 409, "{on_template}");
    let (m1, m9) = (on_snapshot["message"].as_str().unwrap(), on_template["message"].as_str().unwrap());
    assert_eq!(m1.replace("v1", "V"), m9.replace("v9", "V"), "the two refusals differ");
    for word in ["alice", &alice_owner, "snapshot", "aenv-snapshot", &image, &alice, SECRET_ENV] {
        assert!(!on_snapshot.to_string().contains(word), "{word:?} in {on_snapshot}");
    }
    assert_eq!(snapshot_images(&op.operator_id), before, "a refused snapshot committed an image");

    // Alice's instance runs from her snapshot; the admin's delete is refused without naming it.
    let (code, v) =
        call(&op, Method::POST, "/env-instance", ALICE, Some(json!({"envName": format!("{name}@v1")}))).await;
    assert_eq!(code, 200, "{v}");
    let from_snapshot = v["data"]["id"].as_str().unwrap().to_string();
    wait_status(&op, ALICE, &from_snapshot, "Running").await;
    let out = exec(&op, ALICE, &from_snapshot, &["sh", "-c", "cat /data/secret; echo $ALICE_SECRET"]).await;
    assert_eq!(out["data"]["stdout"], format!("{SECRET_FILE}\n{SECRET_ENV}\n"), "{out}");
    let (code, v) = call(&op, Method::DELETE, &format!("/env/{name}/v1"), ADMIN, None).await;
    assert_eq!(code, 409, "{v}");
    assert!(!v.to_string().contains(&from_snapshot), "{v}");
    assert!(image_exists(&image));

    delete_instance(&op, ALICE, &from_snapshot).await;
    delete_template_when_free(&op, ALICE, &name, "v1").await;
    assert!(!image_exists(&image), "the snapshot image outlived its template");
    call(&op, Method::DELETE, &format!("/env-service/{svc}"), BOB, None).await;
    for (token, id) in [(ALICE, &alice), (BOB, &bob)] {
        delete_instance(&op, token, id).await;
    }
    call(&op, Method::DELETE, &format!("/env/{name}/v9"), ALICE, None).await;
    call(&op, Method::DELETE, &format!("/env/{bobs}/1.0.0"), BOB, None).await;
}

#[tokio::test]
async fn concurrent_snapshots_of_one_version_leave_one_template_whose_image_exists() {
    let dir = tempfile::tempdir().unwrap();
    let (tokens, _) = tokens_file(dir.path(), None);
    let op = Operator::start(BIN, &["--tokens-file", &tokens]).await;
    let name = unique_name("racesnap");
    // Two sandboxes of one environment name per owner: the same owner's snapshots and two owners' race.
    let mut sandboxes = Vec::new();
    for token in [ALICE, ALICE, BOB, BOB] {
        sandboxes.push((token, sandbox(&op, token, &name, json!({})).await));
    }
    for round in 0..5 {
        let version = format!("r{round}");
        let answers = futures::future::join_all(sandboxes.iter().map(|(token, id)| {
            let (op, version) = (&op, version.clone());
            async move {
                call(
                    op,
                    Method::POST,
                    &format!("/env-instance/{id}/snapshot"),
                    token,
                    Some(json!({"version": version})),
                )
                .await
            }
        }))
        .await;
        let won: Vec<&(u16, Value)> = answers.iter().filter(|(code, _)| *code == 200).collect();
        assert_eq!(won.len(), 1, "round {round}: {answers:?}");
        assert!(answers.iter().all(|(code, _)| *code == 200 || *code == 409), "round {round}: {answers:?}");
        let image = won[0].1["data"]["image"].as_str().unwrap().to_string();
        assert!(image_exists(&image), "round {round}: the winner's image is gone: {answers:?}");
        let template = format!("{name}@{version}");
        assert_eq!(images_for(&template), vec![image_id(&image)], "round {round}: one image for {template}");
        // The template the winner was told of is there, for its owner, with that image.
        let winner = if answers.iter().position(|(code, _)| *code == 200).unwrap() < 2 { ALICE } else { BOB };
        let (code, t) = call(&op, Method::GET, &format!("/env/{name}/{version}"), winner, None).await;
        assert_eq!(code, 200, "{t}");
        assert_eq!(t["data"]["artifacts"][0]["content"], image.as_str(), "{t}");
        delete_template_when_free(&op, winner, &name, &version).await;
        assert!(!image_exists(&image));
    }
    for (token, id) in &sandboxes {
        delete_instance(&op, token, id).await;
    }
}

#[tokio::test]
async fn caps_refuse_a_snapshot_or_a_fork_before_anything_is_committed() {
    let dir = tempfile::tempdir().unwrap();
    let (tokens, _) = tokens_file(dir.path(), Some(2));
    let op =
        Operator::start(BIN, &["--tokens-file", &tokens, "--max-snapshots-per-owner", "2", "--max-instances", "6"])
            .await;
    let name = unique_name("capsnap");
    let alice = sandbox(&op, ALICE, &name, json!({})).await;
    for version in ["c1", "c2"] {
        let (code, v) = call(
            &op,
            Method::POST,
            &format!("/env-instance/{alice}/snapshot"),
            ALICE,
            Some(json!({"version": version})),
        )
        .await;
        assert_eq!(code, 200, "{v}");
    }
    let images = snapshot_images(&op.operator_id);
    assert_eq!(images.len(), 2, "{images:?}");
    let (code, v) =
        call(&op, Method::POST, &format!("/env-instance/{alice}/snapshot"), ALICE, Some(json!({"version": "c3"})))
            .await;
    assert_eq!(code, 403, "{v}");
    assert!(v["message"].as_str().unwrap().contains("--max-snapshots-per-owner"), "{v}");
    let (code, v) =
        call(&op, Method::POST, &format!("/env-instance/{alice}/fork"), ALICE, Some(json!({"count": 1}))).await;
    assert_eq!(code, 403, "{v}");
    assert_eq!(snapshot_images(&op.operator_id), images, "a refused snapshot committed an image");
    assert_eq!(versions(&op, ALICE, &name).await, ["c1", "c2"]);
    // Caps are per owner: bob's snapshot is his own count.
    let bob = sandbox(&op, BOB, &name, json!({})).await;
    let (code, v) =
        call(&op, Method::POST, &format!("/env-instance/{bob}/snapshot"), BOB, Some(json!({"version": "b1"}))).await;
    assert_eq!(code, 200, "{v}");
    let images = snapshot_images(&op.operator_id);

    // A fork past bob's maxInstances (he holds 1 of 2) and one past the operator's --max-instances: refused,
    // and nothing is left of them: no image, no template, no instance.
    let (code, v) = call(&op, Method::POST, &format!("/env-instance/{bob}/fork"), BOB, Some(json!({"count": 2}))).await;
    assert_eq!(code, 403, "{v}");
    assert!(v["message"].as_str().unwrap().contains("limit"), "{v}");
    assert_eq!(snapshot_images(&op.operator_id), images, "a refused fork committed an image");
    assert_eq!(versions(&op, BOB, &name).await, ["b1"]);
    // Room for one more snapshot of alice's, so that only the instance cap can refuse her fork.
    delete_template_when_free(&op, ALICE, &name, "c2").await;
    let images = snapshot_images(&op.operator_id);
    let (code, v) =
        call(&op, Method::POST, &format!("/env-instance/{alice}/fork"), ALICE, Some(json!({"count": 30}))).await;
    assert_eq!(code, 403, "{v}");
    assert!(v["message"].as_str().unwrap().contains("6 live instances"), "{v}");
    assert_eq!(snapshot_images(&op.operator_id), images, "a refused fork committed an image");
    assert_eq!(versions(&op, ALICE, &name).await, ["c1"]);
    assert_eq!(versions(&op, BOB, &name).await, ["b1"]);
    let (_, listed) = call(&op, Method::GET, "/env-instance", BOB, None).await;
    assert_eq!(listed["data"].as_array().map(Vec::len), Some(1), "{listed}");

    for (token, id) in [(ALICE, &alice), (BOB, &bob)] {
        delete_instance(&op, token, id).await;
    }
    delete_template_when_free(&op, ALICE, &name, "c1").await;
    delete_template_when_free(&op, BOB, &name, "b1").await;
    assert!(snapshot_images(&op.operator_id).is_empty());
}

#[tokio::test]
async fn the_bytes_cap_counts_the_owner_s_snapshots_and_the_sandbox_before_the_commit() {
    let dir = tempfile::tempdir().unwrap();
    let (tokens, _) = tokens_file(dir.path(), None);
    // The image is about 2 MB: one snapshot of a sandbox with 2 MiB of its own fits in 6 MiB, a second does not.
    let op = Operator::start(BIN, &["--tokens-file", &tokens, "--max-snapshot-bytes-per-owner", "6Mi"]).await;
    let name = unique_name("bytesnap");
    let alice = sandbox(&op, ALICE, &name, json!({})).await;
    exec(&op, ALICE, &alice, &["sh", "-c", "head -c 2097152 /dev/urandom > /big"]).await;
    let (code, v) =
        call(&op, Method::POST, &format!("/env-instance/{alice}/snapshot"), ALICE, Some(json!({"version": "s1"})))
            .await;
    assert_eq!(code, 200, "{v}");
    let images = snapshot_images(&op.operator_id);
    let (code, v) =
        call(&op, Method::POST, &format!("/env-instance/{alice}/snapshot"), ALICE, Some(json!({"version": "s2"})))
            .await;
    assert_eq!(code, 403, "{v}");
    assert!(v["message"].as_str().unwrap().contains("--max-snapshot-bytes-per-owner 6Mi"), "{v}");
    assert_eq!(snapshot_images(&op.operator_id), images, "a refused snapshot committed an image");
    assert_eq!(versions(&op, ALICE, &name).await, ["s1"]);
    // Bob's bytes are his own.
    let bob = sandbox(&op, BOB, &name, json!({})).await;
    let (code, v) =
        call(&op, Method::POST, &format!("/env-instance/{bob}/snapshot"), BOB, Some(json!({"version": "b1"}))).await;
    assert_eq!(code, 200, "{v}");
    for (token, id) in [(ALICE, &alice), (BOB, &bob)] {
        delete_instance(&op, token, id).await;
    }
    delete_template_when_free(&op, ALICE, &name, "s1").await;
    delete_template_when_free(&op, BOB, &name, "b1").await;
}

#[tokio::test]
async fn a_snapshot_outlives_its_sandbox_until_its_template_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let (tokens, _) = tokens_file(dir.path(), None);
    let op = Operator::start(BIN, &["--tokens-file", &tokens]).await;
    let name = unique_name("keptsnap");
    let alice = sandbox(&op, ALICE, &name, json!({"ALICE_SECRET": SECRET_ENV})).await;
    exec(&op, ALICE, &alice, &["sh", "-c", &format!("echo {SECRET_FILE} > /kept")]).await;
    let (code, snap) =
        call(&op, Method::POST, &format!("/env-instance/{alice}/snapshot"), ALICE, Some(json!({"version": "k1"})))
            .await;
    assert_eq!(code, 200, "{snap}");
    let image = snap["data"]["image"].as_str().unwrap().to_string();
    delete_instance(&op, ALICE, &alice).await;
    // The sandbox is gone; its snapshot stays with its template and starts sandboxes with its files.
    assert!(image_exists(&image));
    let (code, v) =
        call(&op, Method::POST, "/env-instance", ALICE, Some(json!({"envName": format!("{name}@k1")}))).await;
    assert_eq!(code, 200, "{v}");
    let again = v["data"]["id"].as_str().unwrap().to_string();
    wait_status(&op, ALICE, &again, "Running").await;
    let out = exec(&op, ALICE, &again, &["cat", "/kept"]).await;
    assert_eq!(out["data"]["stdout"], format!("{SECRET_FILE}\n"), "{out}");
    delete_instance(&op, ALICE, &again).await;
    // Deleting the template removes the image.
    delete_template_when_free(&op, ALICE, &name, "k1").await;
    assert!(!image_exists(&image), "the snapshot image outlived its template");
    assert!(images_for(&format!("{name}@k1")).is_empty());
}
