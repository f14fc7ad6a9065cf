//! The Kubernetes engine's exec and files against a fake API server written here (no real API server or kubelet
//! exists on this machine). The fake speaks the Pod exec API as the API server does: a WebSocket upgrade of
//! `GET /api/v1/namespaces/<ns>/pods/<name>/exec?command=...&container=...&stdin=...` with the
//! `v5.channel.k8s.io` (or `v4`) subprotocol, then binary frames whose first byte is the channel (0 stdin,
//! 1 stdout, 2 stderr, 3 the `Status` at the end, 255 a v5 close of a channel). Like a kubelet, it runs the
//! command it is sent, as a process on this host, so the engine's shell wrapper, its kill of a command past its
//! timeout and its `tar` scripts for files run for real (with the host's dash, GNU tar and procfs; an image's
//! busybox may differ). A program the "image" lacks (a list, or a PATH without it) is answered as the runtime
//! answers it: a `Failure` status with no exit code.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use aenv_core::{
    Engine, EnvInstance, EnvInstanceSpec, ErrorKind, ExecExit, ExecOutput, ExecRequest, FileUpload, PathContent,
    SandboxPath,
};
use aenv_engine_k8s::{KubeEngine, KubeEngineConfig};
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    sync::mpsc,
};
use tokio_tungstenite::tungstenite::{
    Message,
    handshake::server::{ErrorResponse, Request, Response},
};

/// One exec the fake API server received.
#[derive(Clone, Debug, Default)]
struct Call {
    pod: String,
    container: Option<String>,
    command: Vec<String>,
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
    /// What came on the stdin channel.
    input: Vec<u8>,
    /// A v5 close of the stdin channel came.
    input_closed: bool,
}

#[derive(Clone)]
struct Behaviour {
    /// The subprotocol it answers.
    protocol: &'static str,
    /// Programs the "image" does not have: answered as the runtime answers a missing binary.
    missing: Vec<String>,
    /// The PATH commands run with.
    path: String,
}

struct FakeApi {
    url: String,
    calls: Arc<Mutex<Vec<Call>>>,
}

impl FakeApi {
    async fn start(behaviour: Behaviour) -> FakeApi {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let calls = Arc::new(Mutex::new(Vec::new()));
        let log = calls.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, behaviour.clone(), log.clone()));
            }
        });
        FakeApi { url, calls }
    }

    fn engine(&self) -> KubeEngine {
        let config = kube::Config::new(self.url.parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        KubeEngine::new(client, KubeEngineConfig::new("op-1", "sandboxes")).unwrap()
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }
}

fn host() -> Behaviour {
    Behaviour {
        protocol: "v5.channel.k8s.io",
        missing: Vec::new(),
        path: std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()),
    }
}

/// `application/x-www-form-urlencoded` decoding of one value.
fn decode(text: &str) -> String {
    let bytes = text.replace('+', " ").into_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
            out.push(u8::from_str_radix(hex, 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

fn status_frame(status: serde_json::Value) -> Message {
    let mut frame = vec![3u8];
    frame.extend(serde_json::to_vec(&status).unwrap());
    Message::binary(frame)
}

async fn serve(stream: tokio::net::TcpStream, behaviour: Behaviour, log: Arc<Mutex<Vec<Call>>>) {
    let seen: Arc<Mutex<Option<Call>>> = Arc::default();
    let seen_in = seen.clone();
    let protocol = behaviour.protocol;
    // The signature is tungstenite's handshake callback.
    #[allow(clippy::result_large_err)]
    let callback = move |request: &Request, mut response: Response| -> Result<Response, ErrorResponse> {
        let path = request.uri().path().to_string();
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        // api/v1/namespaces/<ns>/pods/<name>/exec
        let pod = match parts.as_slice() {
            ["api", "v1", "namespaces", "sandboxes", "pods", pod, "exec"] if *pod != "gone" => pod.to_string(),
            _ => {
                let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "reason": "NotFound", "code": 404, "message": format!("pods not found: {path}")});
                let mut error = ErrorResponse::new(Some(body.to_string()));
                *error.status_mut() = http::StatusCode::NOT_FOUND;
                error.headers_mut().insert("content-type", "application/json".parse().unwrap());
                return Err(error);
            }
        };
        let mut call = Call { pod, ..Default::default() };
        for pair in request.uri().query().unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = decode(value);
            match key {
                "command" => call.command.push(value),
                "container" => call.container = Some(value),
                "stdin" => call.stdin = value == "true",
                "stdout" => call.stdout = value == "true",
                "stderr" => call.stderr = value == "true",
                "tty" => call.tty = value == "true",
                _ => {}
            }
        }
        *seen_in.lock().unwrap() = Some(call);
        response.headers_mut().insert("sec-websocket-protocol", protocol.parse().unwrap());
        Ok(response)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else { return };
    let Some(call) = seen.lock().unwrap().take() else { return };
    let (mut sink, mut source) = ws.split();
    let index = {
        let mut log = log.lock().unwrap();
        log.push(call.clone());
        log.len() - 1
    };

    let missing = call.command.first().is_none_or(|p| behaviour.missing.contains(p));
    let spawned = if missing {
        Err(std::io::Error::from(std::io::ErrorKind::NotFound))
    } else {
        tokio::process::Command::new(&call.command[0])
            .args(&call.command[1..])
            .env("PATH", &behaviour.path)
            .stdin(if call.stdin { std::process::Stdio::piped() } else { std::process::Stdio::null() })
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
    };
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            // As containerd answers an exec of a program that is not there: no exit code, the runtime's words.
            let message = format!(
                "Internal error occurred: error executing command in container: failed to exec in container: OCI runtime exec failed: exec failed: unable to start container process: exec: {:?}: executable file not found in $PATH ({e})",
                call.command.first().cloned().unwrap_or_default()
            );
            let _ = sink
                .send(status_frame(json!({"metadata": {}, "status": "Failure", "reason": "InternalError",
                    "message": message, "code": 500})))
                .await;
            let _ = sink.close().await;
            return;
        }
    };

    // Frames out: one writer for both output channels and the status.
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(64);
    for (channel, reader) in [
        (1u8, Box::new(child.stdout.take().unwrap()) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        (2u8, Box::new(child.stderr.take().unwrap())),
    ] {
        let tx = out_tx.clone();
        tokio::spawn(async move {
            let mut reader = reader;
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match reader.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let mut frame = vec![channel];
                        frame.extend_from_slice(&buf[..n]);
                        if tx.send(frame).await.is_err() {
                            break;
                        }
                    }
                }
            }
        });
    }
    drop(out_tx);
    // Frames in: stdin and its close.
    let mut stdin = child.stdin.take();
    let input_log = log.clone();
    let reader = tokio::spawn(async move {
        while let Some(Ok(message)) = source.next().await {
            let Message::Binary(frame) = message else {
                if matches!(message, Message::Close(_)) {
                    break;
                }
                continue;
            };
            match frame.first() {
                Some(0) => {
                    input_log.lock().unwrap()[index].input.extend_from_slice(&frame[1..]);
                    if let Some(pipe) = stdin.as_mut() {
                        let _ = pipe.write_all(&frame[1..]).await;
                    }
                }
                Some(255) if frame.get(1) == Some(&0) => {
                    input_log.lock().unwrap()[index].input_closed = true;
                    stdin = None;
                }
                _ => {}
            }
        }
    });
    while let Some(frame) = out_rx.recv().await {
        if sink.send(Message::binary(frame)).await.is_err() {
            // The client went away: as the kubelet may, the process is left to its fate (here: killed on drop
            // when the test ends).
            reader.abort();
            let _ = child.wait().await;
            return;
        }
    }
    let status = child.wait().await.unwrap();
    use std::os::unix::process::ExitStatusExt;
    let code = status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    let status = if code == 0 {
        json!({"metadata": {}, "status": "Success"})
    } else {
        json!({"metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
            "message": format!("command terminated with non-zero exit code: exit status {code}"),
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]}})
    };
    let _ = sink.send(status_frame(status)).await;
    let _ = sink.close().await;
    reader.abort();
}

fn instance(name: &str) -> EnvInstance {
    let mut inst = EnvInstance::new(
        name,
        EnvInstanceSpec {
            env_name: "terminal".into(),
            env_version: "1".into(),
            image: Some("aenv-test/sandbox:local".into()),
            ..Default::default()
        },
    );
    inst.metadata.namespace = Some("default".into());
    inst
}

fn request(command: &[&str]) -> ExecRequest {
    ExecRequest {
        command: command.iter().map(|s| s.to_string()).collect(),
        timeout: Duration::from_secs(30),
        ..Default::default()
    }
}

/// The whole answer of an exec: stdout, stderr, exit.
async fn run(engine: &KubeEngine, inst: &EnvInstance, request: ExecRequest) -> (String, String, ExecExit) {
    let mut stream = engine.exec(inst, request);
    let (mut out, mut err, mut exit) = (Vec::new(), Vec::new(), None);
    while let Some(item) = tokio::time::timeout(Duration::from_secs(60), stream.next()).await.expect("exec hung") {
        match item.expect("exec failed") {
            ExecOutput::Stdout(b) => out.extend(b),
            ExecOutput::Stderr(b) => err.extend(b),
            ExecOutput::Exited(e) => {
                assert!(exit.is_none(), "two exits");
                exit = Some(e);
            }
        }
    }
    (String::from_utf8(out).unwrap(), String::from_utf8(err).unwrap(), exit.expect("no exit at the end"))
}

async fn exec_error(engine: &KubeEngine, inst: &EnvInstance, request: ExecRequest) -> aenv_core::EngineError {
    let mut stream = engine.exec(inst, request);
    match stream.next().await {
        Some(Err(e)) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_command_runs_with_its_environment_directory_and_input() {
    let api = FakeApi::start(host()).await;
    let engine = api.engine();
    let dir = tempfile::tempdir().unwrap();
    let dir_path = dir.path().canonicalize().unwrap();
    let mut req = request(&["sh", "-c", "pwd; echo \"$GREETING\"; cat; echo oops >&2; exit 3"]);
    req.env = BTreeMap::from([("GREETING".into(), "hello 'there' $HOME".into())]);
    req.workdir = Some(dir_path.to_str().unwrap().into());
    req.stdin = Some(b"from stdin\n".to_vec());
    let (out, err, exit) = run(&engine, &instance("box-1"), req).await;
    assert_eq!(out, format!("{}\nhello 'there' $HOME\nfrom stdin\n", dir_path.display()));
    assert_eq!(err, "oops\n");
    assert_eq!(exit, ExecExit { exit_code: Some(3), ..Default::default() });

    let calls = api.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    let call = &calls[0];
    assert_eq!(call.pod, "box-1");
    assert_eq!(call.container.as_deref(), Some("main"));
    assert!(call.stdin && call.stdout && call.stderr && !call.tty, "{call:?}");
    // The wrapper, then the command as given (no shell re-parses it).
    assert_eq!(&call.command[..2], ["sh", "-c"]);
    assert_eq!(call.command[3..], ["sh", "sh", "-c", "pwd; echo \"$GREETING\"; cat; echo oops >&2; exit 3"]);
    assert_eq!(call.input, b"from stdin\n");
    assert!(call.input_closed, "the end of the input was not signalled on the v5 close channel");

    // Without input the command reads end-of-file at once, and no stdin channel is asked for.
    let (out, _, exit) = run(&engine, &instance("box-1"), request(&["cat"])).await;
    assert_eq!((out.as_str(), exit.exit_code), ("", Some(0)));
    assert!(!api.calls()[1].stdin);
}

#[tokio::test]
async fn output_is_streamed_as_it_is_written() {
    let api = FakeApi::start(host()).await;
    let engine = api.engine();
    // The first line comes while the command still runs (it waits for a file that appears only after).
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("go");
    let script = format!("echo first; while [ ! -e {0} ]; do sleep 0.05; done; echo second", flag.display());
    let mut stream = engine.exec(&instance("box-1"), request(&["sh", "-c", &script]));
    let first = tokio::time::timeout(Duration::from_secs(20), stream.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(first, ExecOutput::Stdout(b"first\n".to_vec()));
    std::fs::write(&flag, b"").unwrap();
    let mut rest = Vec::new();
    while let Some(item) = stream.next().await {
        rest.push(item.unwrap());
    }
    assert_eq!(
        rest,
        [
            ExecOutput::Stdout(b"second\n".to_vec()),
            ExecOutput::Exited(ExecExit { exit_code: Some(0), ..Default::default() })
        ]
    );
}

#[tokio::test]
async fn a_missing_program_is_its_exit_code_not_an_error() {
    let api = FakeApi::start(host()).await;
    let engine = api.engine();
    let (out, err, exit) = run(&engine, &instance("box-1"), request(&["no-such-program-aenv"])).await;
    assert_eq!(exit.exit_code, Some(127), "stdout {out:?} stderr {err:?}");
    assert!(err.contains("no-such-program-aenv") && err.contains("not found"), "{err:?}");
    assert_eq!(out, "", "the pid line of the wrapper leaked");
    // A file that is not executable: 126.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("script");
    std::fs::write(&file, "#!/bin/sh\necho hi\n").unwrap();
    let (_, err, exit) = run(&engine, &instance("box-1"), request(&[file.to_str().unwrap()])).await;
    assert_eq!(exit.exit_code, Some(126), "{err:?}");
}

#[tokio::test]
async fn a_timeout_kills_the_command_and_what_it_started() {
    let api = FakeApi::start(host()).await;
    let engine = api.engine();
    // A child, and a double-forked one that left the command's process tree (its parent exited at once).
    let mut req = request(&["sh", "-c", "(sleep 301 & echo $!); sleep 300 & echo $!; wait"]);
    req.timeout = Duration::from_secs(2);
    let (out, err, exit) = run(&engine, &instance("box-1"), req).await;
    assert!(exit.timed_out && exit.killed, "{exit:?} {err:?}");
    assert_eq!(exit.exit_code, Some(137), "{exit:?}");
    let children: Vec<u32> = out.split_whitespace().map(|p| p.parse().unwrap()).collect();
    assert_eq!(children.len(), 2, "{out:?}");
    for child in children {
        // The children the command started are gone too (or zombies awaiting their reaper).
        let mut alive = true;
        for _ in 0..100 {
            alive = match std::fs::read_to_string(format!("/proc/{child}/stat")) {
                Ok(stat) => !stat[stat.rfind(')').unwrap() + 1..].trim_start().starts_with('Z'),
                Err(_) => false,
            };
            if !alive {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(!alive, "the sleep {child} the command started survived its kill");
    }
    // The kill was a second exec in the same container, naming the wrapper's pid.
    let calls = api.calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[1].container.as_deref(), Some("main"));
    assert_eq!(&calls[1].command[..2], ["sh", "-c"]);
    assert!(calls[1].command[2].contains("kill -KILL"), "{:?}", calls[1].command);
    assert!(calls[1].command[4].parse::<u32>().is_ok(), "{:?}", calls[1].command);
}

#[tokio::test]
async fn without_sh_in_the_image_commands_run_bare() {
    let api = FakeApi::start(Behaviour { missing: vec!["sh".into()], ..host() }).await;
    let engine = api.engine();
    let (out, err, exit) = run(&engine, &instance("box-1"), request(&["echo", "bare"])).await;
    assert_eq!((out.as_str(), exit.exit_code), ("bare\n", Some(0)), "{err:?}");
    let calls = api.calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].command[0], "sh");
    assert_eq!(calls[1].command, ["echo", "bare"]);

    // A program that is not there either: 127, with the runtime's words.
    let (_, err, exit) = run(&engine, &instance("box-1"), request(&["no-such-program-aenv"])).await;
    assert_eq!(exit.exit_code, Some(127));
    assert!(err.contains("executable file not found"), "{err:?}");

    // env and workdir need the shell: a clear refusal, nothing run.
    let mut req = request(&["echo", "x"]);
    req.env = BTreeMap::from([("A".into(), "1".into())]);
    let e = exec_error(&engine, &instance("box-1"), req).await;
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert!(e.message().contains("no `sh`") && e.message().contains("`env`"), "{e}");

    // Past its timeout it cannot be killed, and the answer says so.
    let mut req = request(&["sleep", "30"]);
    req.timeout = Duration::from_secs(1);
    let (_, _, exit) = run(&engine, &instance("box-1"), req).await;
    assert!(exit.timed_out && !exit.killed, "{exit:?}");
    assert!(exit.message.as_deref().unwrap_or_default().contains("could not be killed"), "{exit:?}");
}

#[tokio::test]
async fn bad_requests_and_missing_pods_are_clear_errors() {
    let api = FakeApi::start(host()).await;
    let engine = api.engine();
    let mut req = request(&["id"]);
    req.user = Some("1000".into());
    let e = exec_error(&engine, &instance("box-1"), req).await;
    assert_eq!(e.kind(), ErrorKind::Permanent);
    assert!(e.message().contains("field `user`"), "{e}");

    let mut req = request(&["env"]);
    req.env = BTreeMap::from([("NOT-A-NAME".into(), "1".into())]);
    let e = exec_error(&engine, &instance("box-1"), req).await;
    assert!(e.kind() == ErrorKind::Permanent && e.message().contains("field `env`"), "{e}");
    assert!(api.calls().is_empty(), "a refused request reached the API server");

    let mut req = request(&["true"]);
    req.service = Some("db".into());
    let e = exec_error(&engine, &instance("box-1"), req).await;
    assert!(e.kind() == ErrorKind::Permanent && e.message().contains("query `service`"), "{e}");
    assert!(api.calls().is_empty(), "a refused request reached the API server");

    let e = exec_error(&engine, &instance("gone"), request(&["true"])).await;
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    let path = SandboxPath::parse("/etc/hostname").unwrap();
    let e = engine.read_path(&instance("gone"), None, &path, 1024).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
}

#[tokio::test]
async fn a_v4_server_answers_too() {
    let api = FakeApi::start(Behaviour { protocol: "v4.channel.k8s.io", ..host() }).await;
    let engine = api.engine();
    let (out, _, exit) = run(&engine, &instance("box-1"), request(&["sh", "-c", "echo v4; exit 5"])).await;
    assert_eq!((out.as_str(), exit.exit_code), ("v4\n", Some(5)));
}

fn upload(path: &Path, bytes: &[u8], mode: Option<u32>) -> FileUpload {
    FileUpload { mode, ..FileUpload::from_bytes(SandboxPath::parse(path.to_str().unwrap()).unwrap(), bytes.to_vec()) }
}

fn sandbox_path(path: &Path) -> SandboxPath {
    SandboxPath::parse(path.to_str().unwrap()).unwrap()
}

#[tokio::test]
async fn files_go_in_and_come_out() {
    let api = FakeApi::start(host()).await;
    let engine = api.engine();
    let inst = instance("box-1");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();

    // A file up (binary, with a mode), and back.
    let bytes: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let file = root.join("data.bin");
    engine.write_file(&inst, upload(&file, &bytes, Some(0o600))).await.unwrap();
    assert_eq!(std::fs::read(&file).unwrap(), bytes);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o7777, 0o600);
    match engine.read_path(&inst, None, &sandbox_path(&file), 1 << 20).await.unwrap() {
        PathContent::File { size, mode, body } => {
            assert_eq!(size, bytes.len() as u64);
            assert_eq!(aenv_core::collect_body(body).await.unwrap(), bytes);
            assert_eq!(mode & 0o7777, 0o600);
        }
        other => panic!("not a file: {other:?}"),
    }
    // Written over: the new bytes.
    engine.write_file(&inst, upload(&file, b"short", None)).await.unwrap();
    assert_eq!(std::fs::read(&file).unwrap(), b"short");

    // A directory comes as a tar under its own name.
    std::fs::create_dir(root.join("tree")).unwrap();
    std::fs::write(root.join("tree/a.txt"), b"A").unwrap();
    match engine.read_path(&inst, None, &sandbox_path(&root.join("tree")), 1 << 20).await.unwrap() {
        PathContent::Directory { body } => {
            let tar = aenv_core::collect_body(body).await.unwrap();
            let names: Vec<String> = tar::Archive::new(tar.as_slice())
                .entries()
                .unwrap()
                .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
                .collect();
            assert!(names.iter().any(|n| n == "tree/a.txt"), "{names:?}");
        }
        other => panic!("not a directory: {other:?}"),
    }

    // The calls carry the paths as arguments, never inside the script.
    for call in api.calls() {
        assert_eq!(call.container.as_deref(), Some("main"));
        assert!(!call.command[2].contains(root.to_str().unwrap()), "a path went into the script: {call:?}");
    }
}

#[tokio::test]
async fn file_errors_say_what_is_wrong() {
    let api = FakeApi::start(host()).await;
    let engine = api.engine();
    let inst = instance("box-1");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    std::fs::write(root.join("file"), b"0123456789").unwrap();
    std::fs::create_dir(root.join("sub")).unwrap();

    let kind = |r: Result<(), aenv_core::EngineError>| r.unwrap_err().kind();
    // Missing things are 404s.
    let e = engine.read_path(&inst, None, &sandbox_path(&root.join("nothing")), 100).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    let e = engine.read_path(&inst, None, &sandbox_path(&root.join("file/under")), 100).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert_eq!(kind(engine.write_file(&inst, upload(&root.join("no/dir/x"), b"x", None)).await), ErrorKind::NotFound);
    // A parent that is a file, and a file over a directory: conflicts.
    assert_eq!(kind(engine.write_file(&inst, upload(&root.join("file/x"), b"x", None)).await), ErrorKind::Conflict);
    assert_eq!(kind(engine.write_file(&inst, upload(&root.join("sub"), b"x", None)).await), ErrorKind::Conflict);
    assert!(root.join("sub").is_dir());
    // Too large: refused before the bytes move, and a directory past the limit as it streams.
    let e = engine.read_path(&inst, None, &sandbox_path(&root.join("file")), 9).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TooLarge, "{e}");
    assert!(e.message().contains("10 bytes"), "{e}");
    std::fs::write(root.join("sub/big"), vec![b'x'; 300_000]).unwrap();
    let e = engine.read_path(&inst, None, &sandbox_path(&root.join("sub")), 1000).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TooLarge, "{e}");
    // A link is not followed.
    std::os::unix::fs::symlink("/etc/hostname", root.join("link")).unwrap();
    let e = engine.read_path(&inst, None, &sandbox_path(&root.join("link")), 1 << 20).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Permanent, "{e}");

    // Names with shell syntax are names, not commands.
    let odd = root.join("a;$(touch pwned) `touch pwned2`'\"");
    engine.write_file(&inst, upload(&odd, b"odd", None)).await.unwrap();
    assert_eq!(std::fs::read(&odd).unwrap(), b"odd");
    assert!(!Path::new("pwned").exists() && !root.join("pwned").exists() && !Path::new("pwned2").exists());
}

/// A directory holding links to the host's `sh`, `cat`, `wc` and `chmod` only: an image without `tar`.
fn tools_without_tar() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    for tool in ["sh", "cat", "wc", "chmod"] {
        let found = ["/bin", "/usr/bin"].iter().map(|d| PathBuf::from(d).join(tool)).find(|p| p.exists()).unwrap();
        std::os::unix::fs::symlink(found, dir.path().join(tool)).unwrap();
    }
    let path = dir.path().to_str().unwrap().to_string();
    (dir, path)
}

#[tokio::test]
async fn an_image_without_tar_or_sh_is_told_what_files_need() {
    let (_tools, path) = tools_without_tar();
    let api = FakeApi::start(Behaviour { path, ..host() }).await;
    let engine = api.engine();
    let inst = instance("box-1");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f");
    std::fs::write(&file, b"x").unwrap();
    let e = engine.read_path(&inst, None, &sandbox_path(&file), 100).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    assert!(e.message().contains("`tar`"), "{e}");
    let e = engine.write_file(&inst, upload(&dir.path().join("g"), b"y", None)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    assert!(!dir.path().join("g").exists());

    let api = FakeApi::start(Behaviour { missing: vec!["sh".into()], ..host() }).await;
    let e = api.engine().read_path(&inst, None, &sandbox_path(&file), 100).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    assert!(e.message().contains("`sh`"), "{e}");
}
