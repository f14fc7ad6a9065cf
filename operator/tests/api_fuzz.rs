//! schemathesis (installed by scripts/test into .venv) fuzzes the REST API from docs/openapi.json against the
//! real binary: examples, coverage, fuzzing and stateful phases. No request may get a 5xx, and the operator must
//! not panic. `--no-pull` keeps every generated image name away from registries.

use std::{path::PathBuf, time::Duration};

use aenv_testkit::Operator;

const BIN: &str = env!("CARGO_BIN_EXE_aenv-operator");

#[tokio::test]
async fn schemathesis_finds_no_server_error() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let venv = std::env::var_os("AENV_TEST_VENV").map(PathBuf::from).unwrap_or_else(|| root.join(".venv"));
    let st = venv.join("bin/st");
    assert!(st.exists(), "{} is missing: run the suites through scripts/test (requirements-test.txt)", st.display());
    let op = Operator::start(BIN, &["--no-pull", "--default-ttl", "2m"]).await;
    let out = tokio::time::timeout(
        Duration::from_secs(600),
        tokio::process::Command::new(&st)
            .args(["run", &op.url("/openapi.json"), "--checks", "not_a_server_error", "-n", "25", "--seed", "7"])
            .args(["--request-timeout", "10"])
            .env("SCHEMATHESIS_HOOKS", "")
            .output(),
    )
    .await
    .expect("schemathesis finished in time")
    .expect("schemathesis runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "schemathesis found failures:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let summary = stdout.lines().find(|l| l.contains(" generated, ")).unwrap_or_default().to_string();
    assert!(summary.contains("passed") && !summary.contains("failed"), "{stdout}");
    assert!(!op.log().contains("panicked"), "the operator panicked:\n{}", op.log());
    eprintln!("schemathesis: {}", summary.trim());
    // What the fuzzer made is removed with the operator (testkit), instances first.
    for item in op.get("/env-instance").await.1["data"].as_array().cloned().unwrap_or_default() {
        if let Some(id) = item["id"].as_str() {
            op.delete(&format!("/env-instance/{id}")).await;
        }
    }
}
