//! Test support: the local test image (built without a registry), the docker CLI, and an operator process to
//! drive over HTTP. Tests talk to the real Docker daemon; nothing here mocks it.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use serde_json::Value;

/// The test environment image: busybox, answering `GET /health` on 8081 like AEnvironment images.
pub const TEST_IMAGE: &str = "aenv-test/sandbox:local";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// Runs `docker ARGS`, returning its output (never panics on a non-zero exit).
pub fn docker(args: &[&str]) -> Output {
    Command::new("docker").args(args).output().expect("the docker CLI must be installed to run these tests")
}

/// `docker ARGS`, stdout as text; panics with stderr on failure.
pub fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(out.status.success(), "docker {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Builds the test image once per test process, when it is not there yet.
pub fn ensure_test_image() -> &'static str {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        if docker(&["image", "inspect", TEST_IMAGE]).status.success() {
            return;
        }
        let script = workspace_root().join("scripts/build-test-image.sh");
        let out = Command::new("bash").arg(&script).arg(TEST_IMAGE).output().expect("run build-test-image.sh");
        assert!(out.status.success(), "building {TEST_IMAGE} failed: {}", String::from_utf8_lossy(&out.stderr));
    });
    TEST_IMAGE
}

/// Container names (without the leading '/') matching a label filter, all states.
pub fn containers_with_label(label: &str) -> Vec<String> {
    let out = docker_ok(&["ps", "-a", "--filter", &format!("label={label}"), "--format", "{{.Names}}"]);
    let mut names: Vec<String> = out.lines().map(str::to_string).filter(|l| !l.is_empty()).collect();
    names.sort();
    names
}

/// `docker inspect` of one container, as JSON.
pub fn inspect(name: &str) -> Value {
    let out = docker_ok(&["inspect", name]);
    let v: Value = serde_json::from_str(&out).expect("docker inspect prints JSON");
    v[0].clone()
}

/// A unique, valid environment name for one test.
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{prefix}-{}-{:x}{}", std::process::id() % 100_000, nanos % 0xffff, N.fetch_add(1, Ordering::Relaxed))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free loopback port")
}

/// An operator process on a private data dir and port.
pub struct Operator {
    child: Option<Child>,
    pub data_dir: tempfile::TempDir,
    pub port: u16,
    pub operator_id: String,
    extra_args: Vec<String>,
    log_path: PathBuf,
    pub http: reqwest::Client,
}

impl Operator {
    /// Starts `aenv-operator serve` (the binary at `bin`) and waits until its API answers.
    pub async fn start(bin: &str, extra_args: &[&str]) -> Operator {
        ensure_test_image();
        let data_dir = tempfile::tempdir().expect("temp dir");
        let log_path = data_dir.path().join("operator.log");
        let mut op = Operator {
            child: None,
            port: 0,
            operator_id: String::new(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            log_path,
            data_dir,
            http: reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("http client"),
        };
        op.spawn(bin).await;
        op
    }

    async fn spawn(&mut self, bin: &str) {
        for _attempt in 0..5 {
            self.port = free_port();
            let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log_path).expect("log file");
            let child = Command::new(bin)
                .arg("serve")
                .arg("--data-dir")
                .arg(self.data_dir.path().join("store"))
                .arg("--api-listen")
                .arg(format!("127.0.0.1:{}", self.port))
                .args(&self.extra_args)
                .env("RUST_LOG", "info,aenv_operator=debug")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn aenv-operator");
            self.child = Some(child);
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                    let log = self.log();
                    if log.contains("Address already in use") {
                        break;
                    }
                    panic!("aenv-operator exited with {status}:\n{log}");
                }
                if self.http.get(self.url("/healthz")).send().await.is_ok() {
                    self.operator_id = self
                        .log()
                        .split("operator_id=\"")
                        .nth(1)
                        .and_then(|rest| rest.split('"').next())
                        .unwrap_or_default()
                        .to_string();
                    assert!(!self.operator_id.is_empty(), "no operator id in the log:\n{}", self.log());
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            self.kill9();
        }
        panic!("aenv-operator did not come up:\n{}", self.log());
    }

    /// The operator's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the operator again on the same data dir.
    pub async fn restart(&mut self, bin: &str) {
        self.kill9();
        self.spawn(bin).await;
    }

    /// Every container labelled with this operator's id.
    pub fn containers(&self) -> Vec<String> {
        containers_with_label(&format!("aenv.io/operator-id={}", self.operator_id))
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send(self.http.post(self.url(path)).json(body)).await
    }

    pub async fn post_raw(&self, path: &str, body: &str) -> (u16, Value) {
        self.send(self.http.post(self.url(path)).header("content-type", "application/json").body(body.to_string()))
            .await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.send(self.http.get(self.url(path))).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.send(self.http.delete(self.url(path))).await
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> (u16, Value) {
        let resp = req.send().await.expect("request to the operator");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// Polls `GET /env-instance/{id}` until `pred` holds; returns the last instance JSON.
    pub async fn wait_for(&self, id: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let (_, body) = self.get(&format!("/env-instance/{id}")).await;
            if pred(&body) {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "instance {id} did not get there in {timeout:?}; last: {body}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill9();
        if !self.operator_id.is_empty() {
            let names = self.containers();
            if !names.is_empty() {
                let mut args = vec!["rm", "-f", "-v"];
                args.extend(names.iter().map(String::as_str));
                let _ = docker(&args);
            }
        }
    }
}

/// The inline create body of the Docker-engine guide, for `image`.
pub fn create_body(name: &str, image: &str, deploy: Value) -> Value {
    serde_json::json!({
        "name": name,
        "version": "1.0.0",
        "owner": "test",
        "artifacts": [{"type": "image", "content": image}],
        "deployConfig": deploy,
    })
}
