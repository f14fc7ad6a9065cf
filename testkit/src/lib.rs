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

/// The test image without `EXPOSE`: it declares no port, as many users' images do (the same entrypoint still
/// answers `GET /health` on 8081).
pub const BARE_TEST_IMAGE: &str = "aenv-test/sandbox:noexpose";

/// Builds `tag` with `scripts/build-test-image.sh TAG EXPOSE` when it is not there yet.
fn build_test_image(tag: &str, expose: &str) {
    if docker(&["image", "inspect", tag]).status.success() {
        return;
    }
    let script = workspace_root().join("scripts/build-test-image.sh");
    let out = Command::new("bash").arg(&script).arg(tag).arg(expose).output().expect("run build-test-image.sh");
    assert!(out.status.success(), "building {tag} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Builds the test image once per test process, when it is not there yet.
pub fn ensure_test_image() -> &'static str {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| build_test_image(TEST_IMAGE, "8081"));
    TEST_IMAGE
}

/// An image built for another platform than this host's (linux/arm64 here; its command an ELF header for that
/// machine), made by `scripts/build-foreign-image.sh`: it starts and exits with `exec format error`.
pub const FOREIGN_TEST_IMAGE: &str = "aenv-test/foreign-arch:local";

/// Builds [`FOREIGN_TEST_IMAGE`] once per test process, when it is not there yet.
pub fn ensure_foreign_test_image() -> &'static str {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        if docker(&["image", "inspect", FOREIGN_TEST_IMAGE]).status.success() {
            return;
        }
        let script = workspace_root().join("scripts/build-foreign-image.sh");
        let out =
            Command::new("bash").arg(&script).arg(FOREIGN_TEST_IMAGE).output().expect("run build-foreign-image.sh");
        assert!(out.status.success(), "building {FOREIGN_TEST_IMAGE} failed: {}", String::from_utf8_lossy(&out.stderr));
    });
    FOREIGN_TEST_IMAGE
}

/// Builds [`BARE_TEST_IMAGE`] once per test process, when it is not there yet.
pub fn ensure_bare_test_image() -> &'static str {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| build_test_image(BARE_TEST_IMAGE, ""));
    BARE_TEST_IMAGE
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

/// A loopback port free at the moment of asking (for daemons that cannot report the port they bound).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free loopback port")
}

/// An operator process on a private data dir and port.
pub struct Operator {
    child: Option<Child>,
    pub data_dir: tempfile::TempDir,
    pub port: u16,
    api_host: String,
    /// `host:port` of the data-plane proxy.
    pub proxy_addr: String,
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
            api_host: "127.0.0.1".into(),
            proxy_addr: String::new(),
            operator_id: String::new(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            log_path,
            data_dir,
            http: http_client(),
        };
        op.spawn(bin).await;
        op
    }

    async fn spawn(&mut self, bin: &str) {
        // The operator binds port 0 and logs the address it got: no two operators can race for one port.
        let log_start = std::fs::metadata(&self.log_path).map(|m| m.len() as usize).unwrap_or(0);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log_path).expect("log file");
        let mut listen = Vec::new();
        for flag in ["--api-listen", "--proxy-listen"] {
            if !self.extra_args.iter().any(|a| a == flag) {
                listen.extend([flag.to_string(), "127.0.0.1:0".to_string()]);
            }
        }
        let child = Command::new(bin)
            .arg("serve")
            .arg("--data-dir")
            .arg(self.data_dir.path().join("store"))
            .args(&listen)
            .args(&self.extra_args)
            .env("RUST_LOG", "info,aenv_operator=debug")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn aenv-operator");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("aenv-operator exited with {status}:\n{}", self.log());
            }
            let log = self.log();
            let this_run = log.get(log_start..).unwrap_or_default();
            let field = |name: &str| {
                this_run
                    .lines()
                    .find_map(|l| l.split(&format!("{name}=")).nth(1))
                    .map(|rest| rest.split_whitespace().next().unwrap_or_default().trim_matches('"').to_string())
            };
            if let (Some(addr), Some(proxy), Some(id)) = (field("addr"), field("proxy_addr"), field("operator_id")) {
                self.port = addr.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port in the log");
                self.api_host = addr.rsplit_once(':').map(|(h, _)| h.to_string()).unwrap_or_default();
                self.proxy_addr = proxy;
                self.operator_id = id;
                if self.http.get(self.url("/healthz")).send().await.is_ok() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "aenv-operator did not come up:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The operator process's id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The operator's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}:{}{path}", self.api_host, self.port)
    }

    /// `http://<proxy address><path>`.
    pub fn proxy_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy_addr)
    }

    /// SIGKILL, no chance to clean up. The client's pool is dropped with it: a kept-alive connection to the dead
    /// process would otherwise be picked for the next request (which then fails as an incomplete message).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.http = http_client();
    }

    /// Starts the operator again on the same data dir.
    pub async fn restart(&mut self, bin: &str) {
        self.kill9();
        self.spawn(bin).await;
    }

    /// Starts the operator again on the same data dir with other flags (a policy changed across a restart).
    pub async fn restart_with(&mut self, bin: &str, extra_args: &[&str]) {
        self.extra_args = extra_args.iter().map(|s| s.to_string()).collect();
        self.restart(bin).await;
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
            // Twice: a create the killed operator had sent may still complete in the daemon just after the first
            // listing.
            for pass in 0..2 {
                if pass == 1 {
                    std::thread::sleep(Duration::from_millis(500));
                }
                let names = self.containers();
                if !names.is_empty() {
                    let mut args = vec!["rm", "-f", "-v"];
                    args.extend(names.iter().map(String::as_str));
                    let _ = docker(&args);
                }
            }
            // Then the user and owner networks it made (each holds one of the daemon's address pools).
            let filter = format!("label=aenv.io/network-of={}", self.operator_id);
            let out = docker(&["network", "ls", "-q", "--filter", &filter]);
            let ids = String::from_utf8_lossy(&out.stdout).into_owned();
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let mut args = vec!["network", "rm"];
                args.extend(ids);
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

/// A second Docker daemon of the test's own (root only): its own data root, socket, bridge interface and,
/// optionally, a TLS listener on loopback that verifies client certificates.
///
/// It never runs with `--bridge none`: a daemon started that way deletes the host's `docker0`, which belongs to
/// the main daemon. It gets a bridge interface of its own instead, removed when it is dropped.
pub struct PrivateDaemon {
    dir: tempfile::TempDir,
    child: Option<Child>,
    args: Vec<String>,
    /// The bridge interface of its default network (`aenvt...`).
    pub bridge: String,
    /// The network namespace it runs in, when not the host's.
    netns: Option<String>,
    /// `unix:///.../docker.sock`
    pub socket: String,
    /// `tcp://127.0.0.1:PORT` when TLS is on.
    pub tls_host: Option<String>,
    /// A containerd of its own, run beside it rather than by it (as systemd runs containerd.service).
    containerd: Option<Child>,
}

impl PrivateDaemon {
    /// Starts the daemon and loads the test image into it. `live_restore` keeps containers running across a
    /// daemon restart.
    pub fn start(tls: bool, live_restore: bool) -> PrivateDaemon {
        Self::start_in(tls, live_restore, None, "{}", false)
    }

    /// [`PrivateDaemon::start`] (no TLS, live restore) over a containerd the test runs beside the daemon, as a
    /// host's service manager runs them: killing the daemon leaves containerd, and what it holds, running.
    pub fn start_with_own_containerd() -> PrivateDaemon {
        Self::start_in(false, true, None, "{}", true)
    }

    /// [`PrivateDaemon::start`] with `daemon_json` as its own daemon.json (such as `{"experimental": true}`).
    pub fn start_with_config(tls: bool, live_restore: bool, daemon_json: &str) -> PrivateDaemon {
        Self::start_in(tls, live_restore, None, daemon_json, false)
    }

    /// Starts the daemon in the network namespace `netns` (`ip netns add`), with a bridge of its own made there;
    /// only the network namespace changes (`nsenter --net`: `ip netns exec` would hide the cgroup mounts).
    fn start_in(
        tls: bool,
        live_restore: bool,
        netns: Option<&str>,
        daemon_json: &str,
        own_containerd: bool,
    ) -> PrivateDaemon {
        ensure_test_image();
        let dir = tempfile::Builder::new().prefix("aenv-dockerd-").tempdir().expect("temp dir");
        let root = dir.path().to_path_buf();
        std::fs::write(root.join("daemon.json"), daemon_json).expect("daemon.json");
        let socket = format!("unix://{}", root.join("docker.sock").display());
        let bridge = match netns {
            None => make_bridge(),
            Some(ns) => {
                let name = "aenvtb0".to_string();
                for args in [
                    vec!["-n", ns, "link", "add", "name", &name, "type", "bridge"],
                    vec!["-n", ns, "addr", "add", "172.31.1.1/24", "dev", &name],
                    vec!["-n", ns, "link", "set", &name, "up"],
                ] {
                    let ok = Command::new("ip").args(&args).status().is_ok_and(|s| s.success());
                    assert!(ok, "ip {args:?}");
                }
                name
            }
        };
        let mut args: Vec<String> = vec![
            "--config-file".into(),
            root.join("daemon.json").display().to_string(),
            "--data-root".into(),
            root.join("data").display().to_string(),
            "--exec-root".into(),
            root.join("exec").display().to_string(),
            "--pidfile".into(),
            root.join("docker.pid").display().to_string(),
            "-H".into(),
            socket.clone(),
            "--bridge".into(),
            bridge.clone(),
            "--iptables=false".into(),
            "--ip-masq=false".into(),
        ];
        if live_restore {
            args.push("--live-restore".into());
        }
        let containerd = own_containerd.then(|| {
            let sock = root.join("containerd.sock");
            std::fs::write(root.join("containerd.toml"), "version = 2\n").expect("containerd config");
            let log = std::fs::File::create(root.join("containerd.log")).expect("containerd log");
            let child = Command::new("containerd")
                .arg("--config")
                .arg(root.join("containerd.toml"))
                .arg("--address")
                .arg(&sock)
                .arg("--root")
                .arg(root.join("containerd-root"))
                .arg("--state")
                .arg(root.join("containerd-state"))
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("containerd must be installed for this test");
            let deadline = Instant::now() + Duration::from_secs(30);
            while !sock.exists() {
                assert!(Instant::now() < deadline, "containerd did not come up");
                std::thread::sleep(Duration::from_millis(50));
            }
            args.push("--containerd".into());
            args.push(sock.display().to_string());
            child
        });
        let mut tls_host = None;
        if tls {
            let certs = make_certs(&root);
            let port = free_port();
            tls_host = Some(format!("tcp://127.0.0.1:{port}"));
            args.extend([
                "-H".into(),
                format!("tcp://127.0.0.1:{port}"),
                "--tlsverify".into(),
                "--tlscacert".into(),
                certs.join("ca.pem").display().to_string(),
                "--tlscert".into(),
                certs.join("server-cert.pem").display().to_string(),
                "--tlskey".into(),
                certs.join("server-key.pem").display().to_string(),
            ]);
        }
        let mut d = PrivateDaemon {
            dir,
            child: None,
            args,
            bridge,
            socket,
            tls_host,
            netns: netns.map(String::from),
            containerd,
        };
        d.start_again();
        let mut save =
            Command::new("docker").args(["save", TEST_IMAGE]).stdout(Stdio::piped()).spawn().expect("docker save");
        let load = Command::new("docker")
            .args(["-H", &d.socket, "load", "-q"])
            .stdin(save.stdout.take().expect("save output"))
            .output()
            .expect("docker load");
        let _ = save.wait();
        assert!(load.status.success(), "loading the test image: {}", String::from_utf8_lossy(&load.stderr));
        d
    }

    /// Starts the daemon (again) with the same arguments and waits until it answers.
    pub fn start_again(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("dockerd.log"))
            .expect("dockerd log");
        let mut command = match &self.netns {
            None => Command::new("dockerd"),
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/var/run/netns/{ns}")).arg("dockerd");
                c
            }
        };
        let child = command
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("dockerd must be installed (and the tests run as root) for private-daemon tests");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.docker(&["version"]).status.success() {
            assert!(Instant::now() < deadline, "private dockerd did not come up:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills the daemon (SIGKILL: no chance to record what it was doing) and waits for it to exit.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the daemon (SIGTERM) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// `docker -H <socket> ARGS`.
    pub fn docker(&self, args: &[&str]) -> Output {
        Command::new("docker").args(["-H", &self.socket]).args(args).output().expect("docker CLI")
    }

    /// The certificate directory a client with a valid certificate uses (ca.pem, cert.pem, key.pem).
    pub fn client_certs(&self) -> PathBuf {
        self.dir.path().join("certs/client")
    }

    /// A client certificate directory whose cert.pem is signed by another CA: the daemon must refuse it.
    pub fn rogue_certs(&self) -> PathBuf {
        self.dir.path().join("certs/rogue")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }
}

impl Drop for PrivateDaemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            let ids = String::from_utf8_lossy(&self.docker(&["ps", "-aq"]).stdout).into_owned();
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f"];
                args.extend(ids);
                let _ = self.docker(&args);
            }
        }
        self.stop();
        if let Some(mut containerd) = self.containerd.take() {
            let _ = Command::new("kill").arg("-TERM").arg(containerd.id().to_string()).status();
            let _ = containerd.wait();
        }
        if self.netns.is_none() {
            let _ = Command::new("ip").args(["link", "del", &self.bridge]).stderr(Stdio::null()).status();
        }
        for dir in ["exec", "containerd-state"] {
            let _ = Command::new("umount").arg("-R").arg(self.dir.path().join(dir)).stderr(Stdio::null()).status();
        }
    }
}

/// A private daemon in swarm mode, the single manager of its own swarm (`docker swarm init --advertise-addr
/// 127.0.0.1`), with the test image loaded. Its `docker_gwbridge` is made first with a bridge interface named by
/// the test (`aenvg...`), so it never takes the host's `docker_gwbridge` name; the swarm listens on a loopback port
/// of its own. Swarm's gossip port (7946) cannot be moved, so swarm daemons are held one at a time on the host (a
/// file lock), by every test process. When dropped it leaves the swarm, stops, and its interfaces are deleted.
pub struct SwarmDaemon {
    pub daemon: PrivateDaemon,
    gwbridge: String,
    /// The address the manager advertises (127.0.0.1, or its end of the veth pair when it has a worker).
    pub manager_addr: String,
    /// A worker node: a second daemon in a network namespace of its own, on a veth pair to the host.
    pub worker: Option<PrivateDaemon>,
    worker_netns: Option<String>,
    _lock: std::fs::File,
}

impl SwarmDaemon {
    /// A swarm of one manager on 127.0.0.1.
    pub fn start() -> SwarmDaemon {
        Self::start_with(false)
    }

    /// A swarm of a manager and a worker: the worker is a dockerd in a network namespace of its own
    /// (`aenvsw<pid>`), reached over a veth pair (the manager at 172.30.N.1, the worker at 172.30.N.2), joined with
    /// the worker token. Both nodes carry the label `aenv.node=manager|worker`.
    pub fn start_with_worker() -> SwarmDaemon {
        Self::start_with(true)
    }

    fn start_with(with_worker: bool) -> SwarmDaemon {
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(std::env::temp_dir().join("aenv-test-swarm.lock"))
            .expect("swarm lock file");
        lock.lock().expect("swarm lock");
        let ip = |args: &[&str]| {
            let ok = Command::new("ip").args(args).status().is_ok_and(|s| s.success());
            assert!(ok, "ip {args:?}");
        };
        // The veth pair first (before any daemon), so that a failure leaves only it to remove.
        let mut worker_netns = None;
        let mut manager_addr = "127.0.0.1".to_string();
        if with_worker {
            let pid = std::process::id() % 100_000;
            let ns = format!("aenvsw{pid}");
            let used = String::from_utf8_lossy(&Command::new("ip").args(["-4", "addr"]).output().expect("ip").stdout)
                .into_owned();
            let n = (0..250u32)
                .map(|i| (pid + i) % 250 + 1)
                .find(|n| !used.contains(&format!("172.30.{n}.")))
                .expect("a free /30");
            let (host_end, ns_end) = (format!("aenvsv{pid}"), format!("aenvsw{pid}p"));
            ip(&["netns", "add", &ns]);
            worker_netns = Some(ns.clone());
            ip(&["link", "add", &host_end, "type", "veth", "peer", "name", &ns_end]);
            ip(&["link", "set", &ns_end, "netns", &ns]);
            ip(&["addr", "add", &format!("172.30.{n}.1/30"), "dev", &host_end]);
            ip(&["link", "set", &host_end, "up"]);
            ip(&["-n", &ns, "addr", "add", &format!("172.30.{n}.2/30"), "dev", &ns_end]);
            ip(&["-n", &ns, "link", "set", &ns_end, "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            manager_addr = format!("172.30.{n}.1");
        }
        let daemon = PrivateDaemon::start(false, false);
        let gwbridge = format!("aenvg{}", &daemon.bridge[5..]);
        let mut swarm = SwarmDaemon { daemon, gwbridge, manager_addr, worker: None, worker_netns, _lock: lock };
        swarm.docker_ok(&[
            "network",
            "create",
            "--driver",
            "bridge",
            "--opt",
            &format!("com.docker.network.bridge.name={}", swarm.gwbridge),
            "--opt",
            "com.docker.network.bridge.enable_icc=false",
            "--opt",
            "com.docker.network.bridge.enable_ip_masquerade=true",
            "docker_gwbridge",
        ]);
        let port = free_port();
        let listen = format!("{}:{port}", swarm.manager_addr);
        let out = swarm.docker(&["swarm", "init", "--advertise-addr", &swarm.manager_addr, "--listen-addr", &listen]);
        assert!(out.status.success(), "swarm init: {}\n{}", String::from_utf8_lossy(&out.stderr), swarm.daemon.log());
        let manager_node = swarm.docker_ok(&["node", "ls", "-q"]);
        swarm.docker_ok(&["node", "update", "--label-add", "aenv.node=manager", &manager_node]);
        if let Some(ns) = swarm.worker_netns.clone() {
            let worker = PrivateDaemon::start_in(false, false, Some(&ns), "{}", false);
            let token = swarm.docker_ok(&["swarm", "join-token", "-q", "worker"]);
            let worker_addr = swarm.manager_addr.trim_end_matches(".1").to_string() + ".2";
            let out = worker.docker(&["swarm", "join", "--token", &token, "--advertise-addr", &worker_addr, &listen]);
            swarm.worker = Some(worker);
            assert!(out.status.success(), "swarm join: {}", String::from_utf8_lossy(&out.stderr));
            let ids = swarm.docker_ok(&["node", "ls", "-q"]);
            let worker_node =
                ids.split_whitespace().find(|id| *id != manager_node).expect("the worker in the node list").to_string();
            swarm.docker_ok(&["node", "update", "--label-add", "aenv.node=worker", &worker_node]);
        }
        swarm
    }

    /// `docker -H <socket> ARGS` on the manager.
    pub fn docker(&self, args: &[&str]) -> Output {
        self.daemon.docker(args)
    }

    /// `docker -H <socket> ARGS` on the manager, which must succeed; its stdout, trimmed.
    pub fn docker_ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The id of the manager node.
    pub fn node_id(&self) -> String {
        self.docker_ok(&["node", "inspect", "self", "--format", "{{.ID}}"])
    }
}

impl Drop for SwarmDaemon {
    fn drop(&mut self) {
        let services = String::from_utf8_lossy(&self.daemon.docker(&["service", "ls", "-q"]).stdout).into_owned();
        let services: Vec<&str> = services.split_whitespace().collect();
        if !services.is_empty() {
            let mut args = vec!["service", "rm"];
            args.extend(services);
            let _ = self.daemon.docker(&args);
        }
        // The worker first (its containers go with it), then the manager.
        if let Some(mut worker) = self.worker.take() {
            let _ = worker.docker(&["swarm", "leave", "--force"]);
            worker.stop();
            drop(worker);
        }
        let ids = String::from_utf8_lossy(&self.daemon.docker(&["ps", "-aq"]).stdout).into_owned();
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(ids);
            let _ = self.daemon.docker(&args);
        }
        let _ = self.daemon.docker(&["swarm", "leave", "--force"]);
        self.daemon.stop();
        let _ = Command::new("ip").args(["link", "del", &self.gwbridge]).stderr(Stdio::null()).status();
        if let Some(ns) = &self.worker_netns {
            // Its end of the veth pair goes with it, and so does the host's.
            let _ = Command::new("ip").args(["netns", "del", ns]).stderr(Stdio::null()).status();
        }
    }
}

/// A bridge interface for a private daemon, on a /24 of 172.31.0.0/16 that no other interface uses.
fn make_bridge() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let used =
        String::from_utf8_lossy(&Command::new("ip").args(["-4", "addr"]).output().expect("ip").stdout).into_owned();
    let pid = std::process::id();
    for _ in 0..200 {
        let n = N.fetch_add(1, Ordering::Relaxed);
        let subnet = (pid + n * 7) % 250 + 1;
        let prefix = format!("172.31.{subnet}.");
        if used.contains(&prefix) {
            continue;
        }
        let name = format!("aenvt{}x{n}", pid % 100_000);
        let ok = Command::new("ip")
            .args(["link", "add", "name", &name, "type", "bridge"])
            .status()
            .is_ok_and(|s| s.success())
            && Command::new("ip")
                .args(["addr", "add", &format!("{prefix}1/24"), "dev", &name])
                .status()
                .is_ok_and(|s| s.success())
            && Command::new("ip").args(["link", "set", &name, "up"]).status().is_ok_and(|s| s.success());
        if ok {
            return name;
        }
        let _ = Command::new("ip").args(["link", "del", &name]).status();
    }
    panic!("could not make a bridge interface for a private dockerd (the tests must run as root)");
}

/// A CA, a server certificate for 127.0.0.1 and two client certificate directories: `client` (signed by the CA)
/// and `rogue` (signed by another CA), made with the openssl CLI.
fn make_certs(root: &Path) -> PathBuf {
    let certs = root.join("certs");
    for d in ["client", "rogue"] {
        std::fs::create_dir_all(certs.join(d)).expect("cert dirs");
    }
    let run = |args: &[&str]| {
        let out = Command::new("openssl").args(args).current_dir(&certs).output().expect("openssl CLI");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    std::fs::write(
        certs.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .expect("server.ext");
    std::fs::write(certs.join("client.ext"), "extendedKeyUsage=clientAuth\n").expect("client.ext");
    // A self-signed CA: `<name>.pem` and `<name>-key.pem`.
    let new_ca = |name: &str, cn: &str| {
        let (cert, key) = (format!("{name}.pem"), format!("{name}-key.pem"));
        run(&[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &cert, "-days", "2", "-subj", cn,
        ]);
    };
    // A key and a certificate for `cn`, signed by the CA `ca` with the extensions file `ext`.
    let issue = |key: &str, cert: &str, cn: &str, ca: &str, ext: &str| {
        let csr = format!("{cert}.csr");
        run(&["req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", &csr, "-subj", cn]);
        let (ca_cert, ca_key) = (format!("{ca}.pem"), format!("{ca}-key.pem"));
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_cert,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            cert,
            "-days",
            "2",
            "-extfile",
            ext,
        ]);
    };
    new_ca("ca", "/CN=aenv-test-ca");
    issue("server-key.pem", "server-cert.pem", "/CN=localhost", "ca", "server.ext");
    issue("client/key.pem", "client/cert.pem", "/CN=aenv-client", "ca", "client.ext");
    new_ca("rogue-ca", "/CN=rogue-ca");
    issue("rogue/key.pem", "rogue/cert.pem", "/CN=rogue-client", "rogue-ca", "client.ext");
    for d in ["client", "rogue"] {
        std::fs::copy(certs.join("ca.pem"), certs.join(d).join("ca.pem")).expect("ca.pem");
    }
    certs
}

/// A Docker registry of the test's own on a loopback port (Debian's `docker-registry`, i.e. distribution), for
/// real pulls without the internet. Docker treats 127.0.0.0/8 registries as insecure, so plain HTTP works.
pub struct LocalRegistry {
    dir: tempfile::TempDir,
    child: Option<Child>,
    port: u16,
}

impl LocalRegistry {
    pub fn start() -> LocalRegistry {
        let dir = tempfile::Builder::new().prefix("aenv-registry-").tempdir().expect("temp dir");
        let port = free_port();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("data").display()
            ),
        )
        .expect("registry config");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry must be installed (apt-get install docker-registry; scripts/test does it)");
        let reg = LocalRegistry { dir, child: Some(child), port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the local registry did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        reg
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Pushes a local image as `repo_tag` and removes the local tag, so that using it needs a pull. Returns the
    /// full reference.
    pub fn push(&self, image: &str, repo_tag: &str) -> String {
        let reference = format!("{}/{repo_tag}", self.host());
        docker_ok(&["tag", image, &reference]);
        docker_ok(&["push", &reference]);
        docker_ok(&["rmi", &reference]);
        reference
    }
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = &self.dir;
    }
}

/// Memory of a process, from /proc/PID/status: (peak resident `VmHWM`, resident now `VmRSS`), in KiB.
pub fn resident_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status.lines().find_map(|l| l.strip_prefix(name)).and_then(|rest| rest.split_whitespace().next()?.parse().ok())
    };
    Some((field("VmHWM:")?, field("VmRSS:")?))
}

/// Starts counting process `pid`'s peak resident memory again from what it holds now (`clear_refs` 5); false
/// when the kernel did not take it (then `VmHWM` is the peak since the start).
pub fn reset_peak_memory(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// The command of [`collected_exec_load`]: `bytes` NUL bytes on stdout and as many on stderr, at once (NUL is
/// the costliest byte to answer in JSON: `\u0000`).
pub fn nul_output_command(bytes: u64) -> Value {
    let script = format!("head -c {bytes} /dev/zero & head -c {bytes} /dev/zero >&2; wait");
    serde_json::json!({"command": ["sh", "-c", script], "timeout": 300})
}

/// `count` collected execs at once in instance `id` of the operator at `api` (`http://host:port`), each printing
/// `bytes` NUL bytes on stdout and on stderr: each answer's status and `truncated`.
pub async fn collected_exec_load(
    http: &reqwest::Client,
    api: &str,
    id: &str,
    count: usize,
    bytes: u64,
) -> Vec<(u16, Option<bool>)> {
    let url = format!("{api}/env-instance/{id}/exec");
    let body = nul_output_command(bytes);
    let runs = (0..count).map(|_| {
        let request = http.post(&url).json(&body).timeout(Duration::from_secs(600));
        async move {
            let Ok(resp) = request.send().await else { return (0, None) };
            let status = resp.status().as_u16();
            let answer: Value = resp.json().await.unwrap_or_default();
            (status, answer["data"]["truncated"].as_bool())
        }
    });
    futures::future::join_all(runs).await
}

/// `count` uploads at once of `bytes` each (with their length) to `/tmp/load-N` in instance `id`: each status.
pub async fn upload_load(http: &reqwest::Client, api: &str, id: &str, count: usize, bytes: usize) -> Vec<u16> {
    let runs = (0..count).map(|n| {
        let request = http
            .put(format!("{api}/env-instance/{id}/files?path=/tmp/load-{n}"))
            .body(bytes_of(bytes))
            .timeout(Duration::from_secs(600));
        async move { request.send().await.map(|r| r.status().as_u16()).unwrap_or(0) }
    });
    futures::future::join_all(runs).await
}

/// `count` downloads at once of `/tmp/load-N` in instance `id` (as [`upload_load`] left them), each read as it
/// comes and counted, never held: each status, announced length and bytes read.
pub async fn download_load(http: &reqwest::Client, api: &str, id: &str, count: usize) -> Vec<(u16, Option<u64>, u64)> {
    let runs = (0..count).map(|n| {
        let request =
            http.get(format!("{api}/env-instance/{id}/files?path=/tmp/load-{n}")).timeout(Duration::from_secs(600));
        async move {
            let Ok(mut resp) = request.send().await else { return (0, None, 0) };
            let (status, announced) = (resp.status().as_u16(), resp.content_length());
            let mut read = 0u64;
            while let Ok(Some(chunk)) = resp.chunk().await {
                read += chunk.len() as u64;
            }
            (status, announced, read)
        }
    });
    futures::future::join_all(runs).await
}

/// `n` bytes of a repeating pattern, shared cheaply between requests.
fn bytes_of(n: usize) -> reqwest::Body {
    static CACHE: std::sync::Mutex<Option<(usize, &'static [u8])>> = std::sync::Mutex::new(None);
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    let slice = match *cache {
        Some((len, s)) if len == n => s,
        _ => {
            let s: &'static [u8] = Vec::leak((0..n).map(|i| (i % 251) as u8).collect());
            *cache = Some((n, s));
            s
        }
    };
    reqwest::Body::from(slice)
}

/// The client a test talks to an operator with. It drops a kept-alive connection after 5 s unused, before the
/// operator closes it (`--header-read-timeout`, 10 s, also bounds the wait for a connection's next request): a
/// request sent on a connection the server is closing at that instant fails as an incomplete message.
fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_idle_timeout(Duration::from_secs(5))
        .build()
        .expect("http client")
}
