//! The real AEnvironment Python SDK (aenvironment==0.1.7, installed by scripts/test into .venv) against the real
//! binary and real containers. The SDK always uses ports 8080 and 8081 of the host in its URL, so the operator
//! listens on a loopback address of its own (127.77.x.y) on those ports.

use std::{path::PathBuf, time::Duration};

use aenv_testkit::{Operator, TEST_IMAGE, unique_name};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_aenv-operator");

fn venv_python() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let venv = std::env::var_os("AENV_TEST_VENV").map(PathBuf::from).unwrap_or_else(|| root.join(".venv"));
    let python = venv.join("bin/python");
    assert!(
        python.exists(),
        "{} is missing: run the suites through scripts/test, which installs the SDK (requirements-test.txt) into .venv",
        python.display()
    );
    python
}

#[tokio::test]
async fn the_python_sdk_works_unchanged() {
    let python = venv_python();
    let host = format!("127.77.{}.{}", std::process::id() % 250 + 1, (std::process::id() / 250) % 250 + 1);
    let op =
        Operator::start(BIN, &["--api-listen", &format!("{host}:8080"), "--proxy-listen", &format!("{host}:8081")])
            .await;
    let name = unique_name("sdk");
    let (code, resp) = op
        .post_json(
            "/env",
            &json!({"name": name, "version": "1.0.0", "artifacts": [{"type": "image", "content": TEST_IMAGE}]}),
        )
        .await;
    assert_eq!(code, 200, "{resp}");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/sdk/sdk_flow.py");
    let out = tokio::time::timeout(
        Duration::from_secs(240),
        tokio::process::Command::new(&python).arg(&script).arg(&host).arg(format!("{name}@1.0.0")).output(),
    )
    .await
    .expect("the SDK flow finished in time")
    .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "SDK flow failed:\n{stdout}\n{stderr}\n--- operator log ---\n{}", op.log());
    assert!(stdout.contains("all SDK steps passed"), "{stdout}");
    eprintln!("{stdout}");

    // With a warm pool, the SDK's Environment(...).initialize() is served from it (its create answered Running).
    let (code, resp) = op
        .post_json("/env-pool", &json!({"name": "sdk-warm", "envName": format!("{name}@1.0.0"), "replicas": 1}))
        .await;
    assert_eq!(code, 200, "{resp}");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while op.get("/env-pool/sdk-warm").await.1["data"]["ready"] != 1 {
        assert!(std::time::Instant::now() < deadline, "the pool did not fill\n{}", op.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../bench/scripts/sdk_init.py");
    let out = tokio::process::Command::new(&python)
        .arg(&script)
        .arg(&host)
        .arg(format!("{name}@1.0.0"))
        .arg("1")
        .output()
        .await
        .expect("python runs");
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), op.log());
    // The pool's status counts the hit a moment after the claim.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let pool = op.get("/env-pool/sdk-warm").await.1;
        if pool["data"]["hits"] == 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the SDK's create was not served from the pool: {pool}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
