//! Presigned URLs against the real daemon: `POST /env-instance/{id}/presign-url` gives a URL on the data-plane
//! proxy that reaches one port of one sandbox with no other credential; a tampered, foreign or stale URL gets a
//! 403 and reaches nothing; URLs survive an operator restart (the key is in the store) and die with the sandbox.

use std::time::Duration;

use aenv_testkit::{Operator, TEST_IMAGE, create_body, unique_name};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_aenv-operator");

async fn running(op: &Operator, name: &str) -> String {
    let (code, v) = op.post_json("/env-instance", &create_body(name, TEST_IMAGE, json!({}))).await;
    assert_eq!(code, 200, "{v}");
    let id = v["data"]["id"].as_str().unwrap().to_string();
    op.wait_for(&id, Duration::from_secs(30), |v| v["data"]["ready"] == true).await;
    id
}

async fn presign(op: &Operator, id: &str, body: Value) -> (u16, Value) {
    op.post_json(&format!("/env-instance/{id}/presign-url"), &body).await
}

/// A GET of `url` with no credential: the status and the body.
async fn get(op: &Operator, url: &str) -> (u16, String) {
    let resp = op.http.get(url).timeout(Duration::from_secs(10)).send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap_or_default())
}

#[tokio::test]
async fn a_presigned_url_reaches_its_port_only_and_outlives_a_restart_but_not_its_sandbox() {
    let mut op = Operator::start(BIN, &[]).await;
    let id = running(&op, &unique_name("presign")).await;
    let (code, v) = presign(&op, &id, json!({"port": 8081, "expiration_time_in_minutes": 5})).await;
    assert_eq!(code, 200, "{v}");
    let url = v["data"]["url"].as_str().expect("data.url, as the SDK reads it").to_string();
    assert!(url.starts_with(&op.proxy_url("/presigned/")), "on the data-plane proxy: {url}");
    assert!(v["data"]["expire_at"].is_string(), "{v}");
    let (code, text) = get(&op, &format!("{url}health")).await;
    assert_eq!(code, 200, "the sandbox's own /health, with no header or token: {text}");

    // Altered: another port, another instance, a flipped byte of the signature, no token at all.
    let token = url.trim_end_matches('/').rsplit('/').next().unwrap().to_string();
    let (payload, signature) = token.split_once('.').unwrap();
    let mut flipped = signature.to_string().into_bytes();
    let last = flipped.len() - 1;
    flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).unwrap();
    use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
    let decoded = String::from_utf8(URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    let other_port = URL_SAFE_NO_PAD.encode(decoded.replace(":8081:", ":22:"));
    for forged in
        [format!("{payload}.{flipped}"), format!("{other_port}.{signature}"), payload.to_string(), "x.y".to_string()]
    {
        let (code, text) = get(&op, &op.proxy_url(&format!("/presigned/{forged}/health"))).await;
        assert_eq!(code, 403, "{forged}: {text}");
    }

    // Another operator's key does not verify here, nor ours there.
    let other = Operator::start(BIN, &[]).await;
    let their = running(&other, &unique_name("theirs")).await;
    let (_, v) = presign(&other, &their, json!({"port": 8081})).await;
    let their_url = v["data"]["url"].as_str().unwrap().to_string();
    let their_token = their_url.trim_end_matches('/').rsplit('/').next().unwrap();
    let (code, _) = get(&op, &op.proxy_url(&format!("/presigned/{their_token}/health"))).await;
    assert_eq!(code, 403, "signed by another operator");

    // A restart keeps the key: the URL still works (the test's operator listens on new ports after it: the path
    // is the URL's, the address the new one).
    let path = format!("/presigned/{token}/health");
    op.restart(BIN).await;
    let url = op.proxy_url(&format!("/presigned/{token}/"));
    let (code, text) = get(&op, &op.proxy_url(&path)).await;
    assert_eq!(code, 200, "after a restart: {text}");

    // Gone with its sandbox.
    let (code, _) = op.delete(&format!("/env-instance/{id}")).await;
    assert_eq!(code, 200);
    let (code, text) = get(&op, &format!("{url}health")).await;
    assert_eq!(code, 403, "{text}");
}

#[tokio::test]
async fn presign_bodies_and_owners_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.json");
    std::fs::write(
        &tokens,
        json!({"tokens": [
            {"token": "alice-token-0123456789", "owner": "alice"},
            {"token": "bob-token-0123456789ab", "owner": "bob"},
        ]})
        .to_string(),
    )
    .unwrap();
    let op = Operator::start(BIN, &["--tokens-file", tokens.to_str().unwrap()]).await;
    let as_user = |token: &str, body: Value, id: &str| {
        op.http.post(op.url(&format!("/env-instance/{id}/presign-url"))).bearer_auth(token).json(&body)
    };
    let create = create_body(&unique_name("owned"), TEST_IMAGE, json!({}));
    let v: Value = op
        .http
        .post(op.url("/env-instance"))
        .bearer_auth("alice-token-0123456789")
        .json(&create)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = v["data"]["id"].as_str().unwrap().to_string();
    let r = as_user("bob-token-0123456789ab", json!({"port": 8081}), &id).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404, "bob cannot presign alice's sandbox");
    for (body, field) in [
        (json!({}), "port"),
        (json!({"port": 0}), "port"),
        (json!({"port": 70000}), "port"),
        (json!({"port": "http"}), "port"),
        (json!({"port": 8081, "expiration_time_in_minutes": 0}), "expiration_time_in_minutes"),
        (json!({"port": 8081, "expiration_time_in_minutes": 100000}), "expiration_time_in_minutes"),
        (json!({"port": 8081, "extra": 1}), "extra"),
    ] {
        let r = as_user("alice-token-0123456789", body.clone(), &id).send().await.unwrap();
        let code = r.status().as_u16();
        let v: Value = r.json().await.unwrap();
        assert_eq!(code, 400, "{body}: {v}");
        assert!(v["message"].as_str().unwrap_or_default().contains(field), "{body} names `{field}`: {v}");
    }
}
