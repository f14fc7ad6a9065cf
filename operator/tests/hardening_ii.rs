//! Hardening II, the operator's side, as a hostile tenant would try it, against the real binary and the
//! real Docker daemon: a flood of connections that never finish their headers, the proxy handing the tenant's
//! token to the sandbox, other tenants' templates, endless TTLs and body-less POSTs.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aenv_testkit::{Operator, TEST_IMAGE, create_body, unique_name};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

const BIN: &str = env!("CARGO_BIN_EXE_aenv-operator");

fn running(v: &Value) -> bool {
    v["data"]["status"] == "Running"
}

/// A script that runs the operator with an open-file limit of `nofile` (the operator's own limit; the test's is
/// untouched).
fn with_nofile(dir: &Path, nofile: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("aenv-operator-limited");
    std::fs::write(&path, format!("#!/bin/sh\nulimit -n {nofile} || exit 97\nexec '{BIN}' \"$@\"\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Opens a connection from `from` to `to` and sends the start of a request head that never ends.
async fn unfinished(from: IpAddr, to: SocketAddr) -> Option<TcpStream> {
    let socket = TcpSocket::new_v4().ok()?;
    socket.bind(SocketAddr::new(from, 0)).ok()?;
    let mut stream = tokio::time::timeout(Duration::from_secs(2), socket.connect(to)).await.ok()?.ok()?;
    // A refused connection may be closed before this write lands; that is fine.
    let _ = stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: flood\r\nX-Slow: ").await;
    Some(stream)
}

/// Whether the server closed `stream` (EOF, or a reset) within `within`; what it sent before is returned.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&got).into_owned()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

fn loopback(a: u8, b: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, a, b))
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

fn container_exists(id: &str) -> bool {
    aenv_testkit::docker(&["inspect", "--type", "container", id]).status.success()
}

/// Finding 3: 300+ connections that never finish their headers neither exhaust the operator's descriptors nor
/// stop the reconciler, the TTLs or the Docker client. The operator runs with `ulimit -n 256`, so that without
/// the caps the flood alone would use up every descriptor it has.
#[tokio::test]
async fn a_flood_of_unfinished_requests_leaves_health_ttls_and_docker_working() {
    let dir = tempfile::tempdir().unwrap();
    let bin = with_nofile(dir.path(), 256);
    let op = Operator::start(
        bin.to_str().unwrap(),
        &["--header-read-timeout", "3s", "--max-connections-per-ip", "16", "--resync-interval", "1s"],
    )
    .await;
    let pid = op.pid().unwrap();
    let log = op.log();
    assert!(log.contains("--max-connections lowered"), "the cap is held to a quarter of 256:\n{log}");
    let api: SocketAddr = op.url("").trim_start_matches("http://").parse().unwrap();
    let proxy: SocketAddr = op.proxy_addr.parse().unwrap();

    // An instance that expires while the API is flooded.
    let name = unique_name("flood");
    let (code, created) =
        op.post_json("/env-instance", &create_body(&name, TEST_IMAGE, json!({"ttl": "12s", "readiness": false}))).await;
    assert_eq!(code, 200, "{created}");
    let id = created["data"]["id"].as_str().unwrap().to_string();
    op.wait_for(&id, Duration::from_secs(30), running).await;
    let expires = Instant::now() + Duration::from_secs(12);

    // One address, 300 unfinished requests: 16 are held, the rest closed at once (with a 503), and /healthz still
    // answers other addresses while they are held.
    let mut one_address = Vec::new();
    for _ in 0..300 {
        one_address.extend(unfinished(loopback(1, 1), api).await);
    }
    assert_eq!(one_address.len(), 300, "every connect was answered by the kernel");
    let mut refused = 0;
    let started = Instant::now();
    for stream in one_address.iter_mut().rev().take(284) {
        if let Some(text) = closed_within(stream, Duration::from_millis(200)).await {
            assert!(text.is_empty() || text.starts_with("HTTP/1.1 503"), "{text}");
            refused += 1;
        }
    }
    assert_eq!(refused, 284, "all but 16 connections of one address closed at once");
    assert!(started.elapsed() < Duration::from_secs(5), "closed at once, not after a timeout");
    let healthz = op.http.get(op.url("/healthz")).send().await.unwrap();
    assert_eq!(healthz.status().as_u16(), 200, "another address is served while one address holds its cap");
    // The held ones end at the header-read timeout (3 s).
    let mut held = one_address.into_iter().take(16).collect::<Vec<_>>();
    for stream in &mut held {
        assert!(closed_within(stream, Duration::from_secs(6)).await.is_some(), "an unfinished head timed out");
    }

    // Many addresses, again and again, on both listeners, until the instance's TTL has passed: 400 API and 100
    // proxy connections per round, held 1 s each.
    let flood = tokio::spawn(async move {
        let mut peak = 0;
        let mut refused_at_once = 0usize;
        let mut round = 0u8;
        let stop = expires + Duration::from_secs(3);
        while Instant::now() < stop {
            let mut streams = Vec::new();
            for i in 0..500u32 {
                let from = loopback(2 + round % 8, (i % 250 + 1) as u8);
                let to = if i < 400 { api } else { proxy };
                streams.extend(unfinished(from, to).await);
            }
            peak = peak.max(open_fds(pid));
            tokio::time::sleep(Duration::from_millis(300)).await;
            for s in &mut streams {
                if closed_within(s, Duration::from_millis(1)).await.is_some() {
                    refused_at_once += 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(700)).await;
            round = round.wrapping_add(1);
        }
        (peak, refused_at_once)
    });
    // Meanwhile the reconciler removes the expired instance on time, through the Docker client.
    while container_exists(&id) {
        assert!(
            Instant::now() < expires + Duration::from_secs(5),
            "the instance's container outlived its TTL under the flood:\n{}",
            op.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (peak, refused_at_once) = flood.await.unwrap();
    eprintln!(
        "flood: peak {peak} descriptors in the operator (limit 256), {refused_at_once} connections closed at once"
    );
    assert!(peak < 200, "the operator held {peak} descriptors at the peak of the flood (limit 256)");
    assert!(refused_at_once > 1000, "connections beyond the caps were closed at once ({refused_at_once})");
    // After the flood, the API answers again as soon as the flood's last sockets are closed on its side (until
    // then a connection over the cap is told 503 at once, which is the cap working).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let healthz = op.http.get(op.url("/healthz")).send().await.unwrap();
        if healthz.status().as_u16() == 200 {
            break;
        }
        assert_eq!(healthz.status().as_u16(), 503, "only the cap's answer, never another");
        assert!(Instant::now() < deadline, "the API did not answer after the flood\n{}", op.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, gone) = op.get(&format!("/env-instance/{id}")).await;
    assert_eq!(code, 404, "{gone}");
    let log = op.log();
    assert!(!log.contains("Too many open files"), "{log}");
    let (_, metrics) = op.get("/metrics").await;
    let metrics = metrics.as_str().unwrap_or_default().to_string();
    assert!(metrics.contains("aenv_http_connections_refused_total{listener=\"api\",reason=\"address_full\"}"));
    assert!(metrics.contains("listener=\"proxy\""), "{metrics}");
}

/// Finding 3: a kept-alive connection that sends nothing is closed after --idle-timeout; bad limits are refused.
#[tokio::test]
async fn idle_connections_are_closed_and_bad_limits_refused() {
    let op = Operator::start(BIN, &["--idle-timeout", "2s", "--header-read-timeout", "30s"]).await;
    let api: SocketAddr = op.url("").trim_start_matches("http://").parse().unwrap();
    let mut stream = TcpStream::connect(api).await.unwrap();
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 256];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let started = Instant::now();
    assert!(closed_within(&mut stream, Duration::from_secs(6)).await.is_some(), "the idle connection was closed");
    assert!(started.elapsed() >= Duration::from_millis(1500), "not before the idle timeout");

    for (flag, value) in [("--header-read-timeout", "0s"), ("--max-connections", "0"), ("--max-ttl", "forever")] {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(BIN)
            .args(["serve", "--api-listen", "127.0.0.1:0", "--proxy-listen", "127.0.0.1:0", flag, value])
            .arg("--data-dir")
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(flag), "{flag} {value}: {stderr}");
    }
}

fn tokens_file(dir: &Path) -> PathBuf {
    let path = dir.join("tokens.json");
    std::fs::write(
        &path,
        json!({"tokens": [
            {"token": "alice-token-0123456789", "owner": "alice"},
            {"token": "bob-token-0123456789", "owner": "bob"},
            {"token": "root-token-0123456789", "owner": "ops", "admin": true},
        ]})
        .to_string(),
    )
    .unwrap();
    path
}

/// A sandbox whose /cgi-bin/env prints the request headers it received (busybox httpd hands them to CGI as
/// HTTP_* variables), and that answers /health like the test image.
const ECHO_HEADERS: &str = "mkdir -p /srv/cgi-bin && cp /www/health /srv/health && \
printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\nenv\\n' > /srv/cgi-bin/env && \
chmod +x /srv/cgi-bin/env && exec httpd -f -p 8081 -h /srv";

async fn echo_instance(op: &Operator, token: Option<&str>) -> (String, String) {
    let name = unique_name("echo");
    let mut req = op.http.post(op.url("/env-instance")).json(&create_body(
        &name,
        TEST_IMAGE,
        json!({"arguments": ["sh", "-c", ECHO_HEADERS]}),
    ));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let created: Value = req.send().await.unwrap().json().await.unwrap();
    let id = created["data"]["id"].as_str().unwrap_or_else(|| panic!("{created}")).to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut get = op.http.get(op.url(&format!("/env-instance/{id}")));
        if let Some(t) = token {
            get = get.bearer_auth(t);
        }
        let v: Value = get.send().await.unwrap().json().await.unwrap();
        if running(&v) && v["data"]["ready"] == true {
            return (id, v["data"]["ip"].as_str().unwrap().to_string());
        }
        assert!(Instant::now() < deadline, "{v}\n{}", op.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Finding 7: the caller's token and the proxy's routing headers never reach the sandbox.
#[tokio::test]
async fn the_proxy_never_hands_the_token_to_the_sandbox() {
    let op = Operator::start(BIN, &[]).await;
    let (id, ip) = echo_instance(&op, None).await;
    let resp = op
        .http
        .get(op.proxy_url("/cgi-bin/env?q=1"))
        .header("AEnvCore-MCPProxy-URL", format!("http://{ip}:8081"))
        .header("AEnvCore-EnvInstance-ID", &id)
        .header("Authorization", "Bearer alice-token-0123456789")
        .header("X-Marker", "kept")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let seen = resp.text().await.unwrap();
    assert!(seen.contains("HTTP_X_MARKER=kept") && seen.contains("QUERY_STRING=q=1"), "other headers pass: {seen}");
    for secret in ["alice-token", "HTTP_AUTHORIZATION", "HTTP_AENVCORE_MCPPROXY_URL", "HTTP_AENVCORE_ENVINSTANCE_ID"] {
        assert!(!seen.contains(secret), "{secret} reached the sandbox:\n{seen}");
    }
}

/// Finding 7: with --proxy-auth the proxy needs a token and reaches only the caller's own instances; the token
/// still never reaches the sandbox.
#[tokio::test]
async fn proxy_auth_needs_a_token_and_the_owner() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = tokens_file(dir.path()).display().to_string();
    let op = Operator::start(BIN, &["--tokens-file", &tokens, "--proxy-auth"]).await;
    let (id, ip) = echo_instance(&op, Some("alice-token-0123456789")).await;
    let via = |token: Option<&str>| {
        let mut req = op
            .http
            .get(op.proxy_url("/cgi-bin/env"))
            .header("AEnvCore-MCPProxy-URL", format!("http://{ip}:8081"))
            .header("AEnvCore-EnvInstance-ID", &id);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    let resp = via(Some("alice-token-0123456789")).await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let seen = resp.text().await.unwrap();
    assert!(seen.contains("REQUEST_METHOD=GET") && !seen.contains("alice-token"), "{seen}");
    for (token, status) in [(None, 401), (Some("not-a-token-at-all"), 401), (Some("bob-token-0123456789"), 403)] {
        let resp = via(token).await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "{token:?}");
        let body: Value = resp.json().await.unwrap();
        assert!(body["error"].is_string(), "{body}");
    }
    // The gateway's own /health stays open, as the SDK probes it.
    assert_eq!(op.http.get(op.proxy_url("/health")).send().await.unwrap().status().as_u16(), 200);

    let out = std::process::Command::new(BIN)
        .args(["serve", "--api-listen", "127.0.0.1:0", "--proxy-listen", "127.0.0.1:0", "--proxy-auth"])
        .arg("--data-dir")
        .arg(dir.path().join("other"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--proxy-auth needs --tokens-file"));
}

/// Finding 5: a template belongs to the tenant that registered it.
#[tokio::test]
async fn templates_belong_to_their_owner() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = tokens_file(dir.path()).display().to_string();
    let op = Operator::start(BIN, &["--tokens-file", &tokens]).await;
    let call = |method: reqwest::Method, path: &str, token: &str, body: Option<Value>| {
        let mut req = op.http.request(method, op.url(path)).bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    use reqwest::Method;
    const ALICE: &str = "alice-token-0123456789";
    const BOB: &str = "bob-token-0123456789";
    const ADMIN: &str = "root-token-0123456789";
    let name = unique_name("tpl");
    let template = |version: &str, shared: bool| {
        json!({"name": name, "version": version, "shared": shared,
               "artifacts": [{"type": "image", "content": TEST_IMAGE}],
               "deployConfig": {"environment_variables": {"API_SECRET": "s3cret-of-alice"}, "arguments": ["sleep", "600"]}})
    };
    let (code, v) = call(Method::POST, "/env", ALICE, Some(template("1.0.0", false))).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!((v["data"]["owner"].as_str(), v["data"]["shared"].as_bool()), (Some("alice"), Some(false)));
    let (code, v) = call(Method::POST, "/env", ALICE, Some(template("2.0.0", true))).await;
    assert_eq!(code, 200, "{v}");

    // Bob and alice's private template: not there for him in any way.
    let private = format!("/env/{name}/1.0.0");
    assert_eq!(call(Method::GET, &private, BOB, None).await.0, 404);
    assert_eq!(call(Method::DELETE, &private, BOB, None).await.0, 404);
    assert_eq!(call(Method::POST, &format!("{private}/warmup"), BOB, None).await.0, 404);
    let (_, listed) = call(Method::GET, &format!("/env?name={name}"), BOB, None).await;
    let versions: Vec<&str> = listed["data"].as_array().unwrap().iter().filter_map(|t| t["version"].as_str()).collect();
    assert_eq!(versions, ["2.0.0"], "{listed}");
    let (code, v) = call(Method::POST, "/env-instance", BOB, Some(json!({"envName": format!("{name}@1.0.0")}))).await;
    assert_eq!(code, 404, "{v}");
    // He cannot take its name and version over, and the refusal tells him nothing of whose it is.
    let (code, v) = call(Method::POST, "/env", BOB, Some(template("1.0.0", true))).await;
    assert_eq!(code, 409, "{v}");
    assert!(v["message"].as_str().unwrap().contains("is taken"), "{v}");
    assert!(!v.to_string().contains("alice"), "{v}");
    // Its shared one is his to see: that refusal may name the owner.
    let (code, v) = call(Method::POST, "/env", BOB, Some(template("2.0.0", true))).await;
    assert_eq!(code, 409, "{v}");
    assert!(v["message"].as_str().unwrap().contains("belongs to owner alice"), "{v}");

    // The shared one: he reads it without its environment, creates from it, cannot delete it.
    let shared = format!("/env/{name}/2.0.0");
    let (code, v) = call(Method::GET, &shared, BOB, None).await;
    assert_eq!(code, 200, "{v}");
    assert!(!v.to_string().contains("s3cret-of-alice"), "{v}");
    assert!(!listed.to_string().contains("s3cret-of-alice"), "{listed}");
    let (code, v) = call(Method::POST, "/env-instance", BOB, Some(json!({"envName": format!("{name}@2.0.0")}))).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["data"]["owner"], "bob");
    let bobs = v["data"]["id"].as_str().unwrap().to_string();
    let (code, v) = call(Method::DELETE, &shared, BOB, None).await;
    assert_eq!(code, 403, "{v}");
    assert!(v["message"].as_str().unwrap().contains("owner alice"), "{v}");
    // Alice sees her own variables.
    let (_, v) = call(Method::GET, &shared, ALICE, None).await;
    assert!(v.to_string().contains("s3cret-of-alice"), "{v}");
    // An admin token may delete any tenant's template; the owner may delete her own.
    assert_eq!(call(Method::DELETE, &shared, ADMIN, None).await.0, 200);
    assert_eq!(call(Method::DELETE, &private, ALICE, None).await.0, 200);
    assert_eq!(call(Method::GET, &shared, ALICE, None).await.0, 404);
    call(Method::DELETE, &format!("/env-instance/{bobs}"), BOB, None).await;

    let (code, v) = call(
        Method::POST,
        "/env",
        ALICE,
        Some(json!({"name": name, "version": "3", "shared": "yes",
        "artifacts": [{"type": "image", "content": TEST_IMAGE}]})),
    )
    .await;
    assert_eq!(code, 400, "{v}");
    assert!(v["message"].as_str().unwrap().contains("field `shared`"), "{v}");
}

/// Finding 9a: TTLs beyond --max-ttl (7 days by default) are refused with a 400 naming the field.
#[tokio::test]
async fn ttls_beyond_the_maximum_are_refused() {
    let op = Operator::start(BIN, &[]).await;
    let name = unique_name("ttl");
    for ttl in ["9999999999999h", "169h"] {
        let (code, v) = op.post_json("/env-instance", &create_body(&name, TEST_IMAGE, json!({"ttl": ttl}))).await;
        assert_eq!(code, 400, "{ttl}: {v}");
        let msg = v["message"].as_str().unwrap();
        assert!(msg.contains("field `deployConfig.ttl`") && msg.contains("--max-ttl 168h"), "{msg}");
    }
    let (code, v) = op
        .post_json(
            "/env",
            &json!({"name": name, "version": "1", "artifacts": [{"type": "image", "content": TEST_IMAGE}],
            "deployConfig": {"ttl": "1000h"}}),
        )
        .await;
    assert_eq!(code, 400, "{v}");
    let (code, v) = op
        .post_json(
            "/env",
            &json!({"name": name, "version": "1", "artifacts": [{"type": "image", "content": TEST_IMAGE}]}),
        )
        .await;
    assert_eq!(code, 200, "{v}");
    let (code, v) = op.post_json("/env-instance", &json!({"envName": format!("{name}@1"), "ttl": "200h"})).await;
    assert_eq!(code, 400, "{v}");
    assert!(v["message"].as_str().unwrap().contains("field `ttl`"), "{v}");
    let (code, v) = op
        .post_json("/env-instance", &create_body(&name, TEST_IMAGE, json!({"ttl": "168h", "readiness": false})))
        .await;
    assert_eq!(code, 200, "the maximum itself is allowed: {v}");
    op.delete(&format!("/env-instance/{}", v["data"]["id"].as_str().unwrap())).await;

    let op = Operator::start(BIN, &["--max-ttl", "1h"]).await;
    let (code, v) = op.post_json("/env-instance", &create_body(&name, TEST_IMAGE, json!({"ttl": "90m"}))).await;
    assert_eq!(code, 400, "{v}");
    assert!(v["message"].as_str().unwrap().contains("--max-ttl 1h"), "{v}");
    // A default TTL longer than the maximum is a configuration error.
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(BIN)
        .args(["serve", "--api-listen", "127.0.0.1:0", "--proxy-listen", "127.0.0.1:0", "--max-ttl", "1h"])
        .args(["--default-ttl", "2h", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--max-ttl"));
}

/// Finding 9c: a POST without a body answers 411 (no Content-Length) or 400 (empty), never 405, and creates
/// nothing.
#[tokio::test]
async fn posts_without_a_body_are_refused_not_405() {
    let op = Operator::start(BIN, &[]).await;
    let api: SocketAddr = op.url("").trim_start_matches("http://").parse().unwrap();
    for path in ["/env-instance", "/env", "/pods"] {
        for (head, status) in [("", "411"), ("Content-Length: 0\r\n", "400")] {
            let mut stream = TcpStream::connect(api).await.unwrap();
            let request = format!("POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{head}\r\n");
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await.unwrap();
            assert!(answer.starts_with(&format!("HTTP/1.1 {status}")), "POST {path} {head:?}: {answer}");
        }
    }
    assert!(op.containers().is_empty());
    let (_, list) = op.get("/env-instance").await;
    assert_eq!(list["data"], json!([]), "{list}");
}

/// Finding 6: a 0-byte store is refused with the fix in the message; a new store leaves the lost one's sandboxes
/// alone until their expiry label passes (plus --orphan-grace), then removes them; it never touches an unexpired
/// one (operators sharing one daemon must not remove each other's sandboxes).
#[tokio::test]
async fn a_lost_store_is_refused_and_its_sandboxes_go_at_their_expiry() {
    let mut op = Operator::start(BIN, &["--orphan-grace", "4s", "--resync-interval", "1s"]).await;
    let name = unique_name("lost");
    let create = |ttl: &str| create_body(&name, TEST_IMAGE, json!({"ttl": ttl, "readiness": false}));
    let (_, short) = op.post_json("/env-instance", &create("12s")).await;
    let (_, long) = op.post_json("/env-instance", &create("10m")).await;
    let short = short["data"]["id"].as_str().unwrap().to_string();
    let long = long["data"]["id"].as_str().unwrap().to_string();
    op.wait_for(&short, Duration::from_secs(30), running).await;
    op.wait_for(&long, Duration::from_secs(30), running).await;
    let lost_id = op.operator_id.clone();
    let expire_at: jiff::Timestamp = aenv_testkit::inspect(&short)["Config"]["Labels"]["aenv.io/expire-at"]
        .as_str()
        .expect("the expiry label")
        .parse()
        .unwrap();

    // The store file is emptied while the operator is down: it refuses to start, and says what to do.
    op.kill9();
    let store = op.data_dir.path().join("store");
    std::fs::write(store.join("aenv.redb"), b"").unwrap();
    let out = std::process::Command::new(BIN)
        .args(["serve", "--api-listen", "127.0.0.1:0", "--proxy-listen", "127.0.0.1:0", "--data-dir"])
        .arg(&store)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("0 bytes") && stderr.contains("aenv.redb.lost"), "{stderr}");
    // Following the message: move it away and start with a new store (a new operator id).
    std::fs::rename(store.join("aenv.redb"), store.join("aenv.redb.lost")).unwrap();
    op.restart(BIN).await;
    assert_ne!(op.operator_id, lost_id);
    let cleanup = scopeguard_rm(lost_id.clone());
    let reported = |log: &str| {
        log.lines().any(|l| l.contains("this store is new") && l.contains(&format!("other_operator_id=\"{lost_id}\"")))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !reported(&op.log()) {
        assert!(Instant::now() < deadline, "the new store reports the lost one's sandboxes:\n{}", op.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Past its expiry but within the grace: still there. Past both: removed. The unexpired one stays.
    let until = |t: jiff::Timestamp| {
        let ms = t.as_millisecond() - jiff::Timestamp::now().as_millisecond();
        Duration::from_millis(ms.max(0) as u64)
    };
    tokio::time::sleep(until(expire_at) + Duration::from_secs(1)).await;
    assert!(container_exists(&short), "removed before --orphan-grace passed");
    let deadline = Instant::now() + until(expire_at) + Duration::from_secs(4 + 8);
    while container_exists(&short) {
        assert!(Instant::now() < deadline, "the lost store's expired sandbox was not removed:\n{}", op.log());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(container_exists(&long), "an unexpired sandbox of another operator id was removed");
    assert!(op.log().contains("removing an expired object of another operator"));
    drop(cleanup);
}

/// Removes the containers of `operator_id` when dropped (the lost store's, which no operator of this test owns).
fn scopeguard_rm(operator_id: String) -> impl Drop {
    struct Rm(String);
    impl Drop for Rm {
        fn drop(&mut self) {
            let names = aenv_testkit::containers_with_label(&format!("aenv.io/operator-id={}", self.0));
            if !names.is_empty() {
                let mut args = vec!["rm", "-f", "-v"];
                args.extend(names.iter().map(String::as_str));
                let _ = aenv_testkit::docker(&args);
            }
        }
    }
    Rm(operator_id)
}
