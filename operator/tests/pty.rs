//! Interactive terminals against the real binary and the real Docker daemon, through a real WebSocket client: a
//! shell that echoes, a window that resizes, Ctrl-C reaching the foreground program, escape sequences passing
//! unchanged, the exit code, refusals before the upgrade (another tenant, an image without the program), and
//! abandoned terminals that leave no descriptors behind.

use std::time::{Duration, Instant};

use aenv_testkit::{Operator, TEST_IMAGE, create_body, docker_ok, unique_name};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream, connect_async,
    tungstenite::{Message, client::IntoClientRequest, http::HeaderValue},
};

const BIN: &str = env!("CARGO_BIN_EXE_aenv-operator");

type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

async fn running_instance(op: &Operator, name: &str, image: &str) -> String {
    let (status, body) =
        op.post_json("/env-instance", &create_body(name, image, json!({"ttl": "10m", "readiness": false}))).await;
    assert_eq!(status, 200, "{body}");
    let id = body["data"]["id"].as_str().unwrap().to_string();
    op.wait_for(&id, Duration::from_secs(60), |v| v["data"]["status"] == "Running").await;
    id
}

fn ws_url(op: &Operator, path: &str) -> String {
    op.url(path).replacen("http://", "ws://", 1)
}

/// Opens the terminal at `path`, or the HTTP status it was refused with.
async fn connect(op: &Operator, path: &str, token: Option<&str>) -> Result<Socket, u16> {
    let mut request = ws_url(op, path).into_client_request().unwrap();
    if let Some(t) = token {
        request.headers_mut().insert("authorization", HeaderValue::from_str(&format!("Bearer {t}")).unwrap());
    }
    match connect_async(request).await {
        Ok((socket, _)) => Ok(socket),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("connecting {path}: {e}"),
    }
}

/// What the terminal shows, read until `want` is in it (all of it returned), within 20 s.
async fn read_until(socket: &mut Socket, screen: &mut Vec<u8>, want: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !screen.windows(want.len()).any(|w| w == want) {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = tokio::time::timeout(left, socket.next()).await.unwrap_or_else(|_| {
            panic!(
                "{:?} did not show within 20 s; the screen: {:?}",
                String::from_utf8_lossy(want),
                String::from_utf8_lossy(screen)
            )
        });
        match frame {
            Some(Ok(Message::Binary(b))) => screen.extend_from_slice(&b),
            Some(Ok(Message::Text(t))) => {
                panic!("unexpected control frame {t} before {:?}", String::from_utf8_lossy(want))
            }
            Some(Ok(_)) => {}
            other => panic!(
                "the socket ended ({other:?}) before {:?}: {:?}",
                String::from_utf8_lossy(want),
                String::from_utf8_lossy(screen)
            ),
        }
    }
}

async fn type_in(socket: &mut Socket, text: &[u8]) {
    socket.send(Message::binary(text.to_vec())).await.unwrap();
}

/// Reads to the end: the `exit` frame's code, then a close.
async fn exit_code(socket: &mut Socket) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, socket.next()).await.expect("the exit frame comes") {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                assert_eq!(v["type"], "exit", "{v}");
                let closed = tokio::time::timeout(Duration::from_secs(5), socket.next()).await.unwrap();
                assert!(matches!(closed, Some(Ok(Message::Close(_))) | None), "{closed:?}");
                return v["exitCode"].clone();
            }
            Some(Ok(_)) => {}
            other => panic!("the socket ended without an exit frame: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_shell_echoes_resizes_passes_escapes_and_answers_its_exit_code() {
    let op = Operator::start(BIN, &[]).await;
    let id = running_instance(&op, &unique_name("pty"), TEST_IMAGE).await;
    let mut socket = connect(&op, &format!("/env-instance/{id}/pty?cols=100&rows=30"), None).await.unwrap();
    let mut screen = Vec::new();

    // Typed input is echoed by the terminal, and the command's output follows.
    type_in(&mut socket, b"echo hel''lo-$((6*7))\r").await;
    read_until(&mut socket, &mut screen, b"hel''lo").await;
    read_until(&mut socket, &mut screen, b"hello-42").await;

    // A resize frame is taken without an error frame and the terminal goes on. (The size itself cannot be read
    // back in this fixture: its busybox `stty size` fails TIOCGWINSZ even under `docker exec -t`.)
    socket.send(Message::text(json!({"type": "resize", "cols": 132, "rows": 43}).to_string())).await.unwrap();
    type_in(&mut socket, b"echo resized-$((40+3))\r").await;
    read_until(&mut socket, &mut screen, b"resized-43").await;

    // Escape sequences come through byte for byte (printf writes ESC[31m, a NUL-free CSI, and ESC]0;t BEL).
    screen.clear();
    type_in(&mut socket, b"printf '\\033[31mred\\033[0m\\033]0;title\\007done\\n'\r").await;
    read_until(&mut socket, &mut screen, b"\x1b[31mred\x1b[0m\x1b]0;title\x07done").await;

    // A control frame that is not one answers an error frame, and the terminal goes on.
    socket.send(Message::text("not json")).await.unwrap();
    loop {
        // Output still on its way (the prompt) may come first.
        match tokio::time::timeout(Duration::from_secs(10), socket.next()).await.unwrap() {
            Some(Ok(Message::Text(t))) => {
                assert!(t.contains("\"error\"") && t.contains("control message"), "{t}");
                break;
            }
            Some(Ok(Message::Binary(_))) => {}
            other => panic!("{other:?}"),
        }
    }

    type_in(&mut socket, b"exit 3\r").await;
    assert_eq!(exit_code(&mut socket).await, 3);
}

#[tokio::test]
async fn ctrl_c_stops_the_foreground_program_and_the_prompt_returns() {
    let op = Operator::start(BIN, &[]).await;
    let id = running_instance(&op, &unique_name("pty-int"), TEST_IMAGE).await;
    let mut socket = connect(&op, &format!("/env-instance/{id}/pty"), None).await.unwrap();
    let mut screen = Vec::new();
    type_in(&mut socket, b"sleep 100; echo slept\r").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    type_in(&mut socket, &[0x03]).await;
    type_in(&mut socket, b"echo after-$((1+1))\r").await;
    read_until(&mut socket, &mut screen, b"after-2").await;
    assert!(started.elapsed() < Duration::from_secs(20));
    // The typed line echoes "echo slept"; the word on a line of its own would be the command's output.
    assert!(!screen.windows(7).any(|w| w == b"\nslept\r"), "{:?}", String::from_utf8_lossy(&screen));

    // The signal control frame does the same.
    type_in(&mut socket, b"sleep 100\r").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    socket.send(Message::text(json!({"type": "signal", "signal": "SIGINT"}).to_string())).await.unwrap();
    // The interrupted sleep's status is 128 + SIGINT.
    type_in(&mut socket, b"echo status-$?\r").await;
    read_until(&mut socket, &mut screen, b"status-130").await;
    type_in(&mut socket, b"exit 0\r").await;
    assert_eq!(exit_code(&mut socket).await, 0);
}

/// An image of one static binary and nothing else: busybox named `/sleep`, so there is no `/bin/sh`.
fn shell_less_image() -> &'static str {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    const TAG: &str = "aenv-test/shell-less:local";
    BUILT.get_or_init(|| {
        if aenv_testkit::docker(&["image", "inspect", TAG]).status.success() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let busybox = ["/bin/busybox", "/usr/bin/busybox"].into_iter().find(|p| std::path::Path::new(p).exists());
        std::fs::copy(busybox.expect("busybox-static on the host"), dir.path().join("sleep")).unwrap();
        let tar = dir.path().join("root.tar");
        let out = std::process::Command::new("tar")
            .args(["-C", dir.path().to_str().unwrap(), "-cf", tar.to_str().unwrap(), "sleep"])
            .output()
            .unwrap();
        assert!(out.status.success());
        docker_ok(&["import", "-c", "CMD [\"/sleep\", \"100000\"]", tar.to_str().unwrap(), TAG]);
    });
    TAG
}

#[tokio::test]
async fn refusals_come_before_the_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.json");
    std::fs::write(
        &tokens,
        json!({"tokens": [{"token": "alice-token-0123456789", "owner": "alice"}, {"token": "bob-token-0123456789", "owner": "bob"}]})
            .to_string(),
    )
    .unwrap();
    let op = Operator::start(BIN, &["--tokens-file", tokens.to_str().unwrap()]).await;
    let resp = op
        .http
        .post(op.url("/env-instance"))
        .bearer_auth("alice-token-0123456789")
        .json(&create_body(&unique_name("alice-pty"), shell_less_image(), json!({"ttl": "10m", "readiness": false})))
        .send()
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    let id = body["data"]["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v: Value = op
            .http
            .get(op.url(&format!("/env-instance/{id}")))
            .bearer_auth("alice-token-0123456789")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v["data"]["status"] == "Running" {
            break;
        }
        assert!(Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let path = format!("/env-instance/{id}/pty");
    // Another tenant does not see it; no token is refused.
    assert_eq!(connect(&op, &path, Some("bob-token-0123456789")).await.err(), Some(404));
    assert_eq!(connect(&op, &path, None).await.err(), Some(401));
    // The owner is told that the image has no /bin/sh, and how to pick a program.
    assert_eq!(connect(&op, &path, Some("alice-token-0123456789")).await.err(), Some(400));
    let answer = op
        .http
        .get(op.url(&path))
        .bearer_auth("alice-token-0123456789")
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 400);
    let text = answer.text().await.unwrap();
    assert!(text.contains("/bin/sh") && text.contains("cmd"), "{text}");
    // A plain GET (no upgrade headers) is a 426 saying how to ask, never a 405 for the method the path answers.
    let plain = op.http.get(op.url(&path)).bearer_auth("alice-token-0123456789").send().await.unwrap();
    assert_eq!(plain.status().as_u16(), 426);
    assert!(plain.text().await.unwrap().contains("Upgrade: websocket"));
    // A bad window size names the parameter.
    assert_eq!(connect(&op, &format!("{path}?cols=0"), Some("alice-token-0123456789")).await.err(), Some(400));
    // The program the image has runs (busybox as `sleep`, answering its usage on a bad argument).
    let mut socket =
        connect(&op, &format!("{path}?cmd=%5B%22%2Fsleep%22%2C%22x%22%5D"), Some("alice-token-0123456789"))
            .await
            .unwrap();
    let code = exit_code(&mut socket).await;
    assert_eq!(code, 1, "busybox sleep with a bad argument");
}

/// The operator's open descriptors.
fn open_fds(op: &Operator) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", op.pid().expect("the operator runs"))).map(|d| d.count()).unwrap_or(0)
}

#[tokio::test]
async fn abandoned_terminals_end_their_program_and_leave_no_descriptors() {
    let op = Operator::start(BIN, &[]).await;
    let name = unique_name("pty-flood");
    let id = running_instance(&op, &name, TEST_IMAGE).await;
    // Warm up once (the daemon's pooled connections), then measure.
    let mut socket = connect(&op, &format!("/env-instance/{id}/pty"), None).await.unwrap();
    let mut screen = Vec::new();
    type_in(&mut socket, b"echo warm-$((1+2))\r").await;
    read_until(&mut socket, &mut screen, b"warm-3").await;
    drop(socket);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let baseline = open_fds(&op);
    for _ in 0..4 {
        let mut open = Vec::new();
        for i in 0..15 {
            let mut socket = connect(&op, &format!("/env-instance/{id}/pty"), None).await.unwrap();
            let mut screen = Vec::new();
            let marker = format!("pty-abandoned-{i}-$((0+{i}))");
            type_in(&mut socket, format!("sleep 1000 & echo {marker}\r").as_bytes()).await;
            read_until(&mut socket, &mut screen, format!("pty-abandoned-{i}-{i}").as_bytes()).await;
            open.push(socket);
        }
        // Dropped without a close frame: the TCP connection just goes.
        drop(open);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut now = open_fds(&op);
    while now > baseline + 5 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        now = open_fds(&op);
    }
    assert!(now <= baseline + 5, "descriptors went from {baseline} to {now} after 60 abandoned terminals");
    // Their shells (and what they started) were ended: no `sleep 1000` is left in the container.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = op
            .post_json(
                &format!("/env-instance/{id}/exec"),
                &json!({"command": ["sh", "-c", "ps -o args | grep -c '^sleep 1000' || true"]}),
            )
            .await;
        let left = body["data"]["stdout"].as_str().unwrap_or_default().trim().to_string();
        if left == "0" {
            break;
        }
        assert!(Instant::now() < deadline, "sleeps left behind by abandoned terminals: {left} ({body})");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
