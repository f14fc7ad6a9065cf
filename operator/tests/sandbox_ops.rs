//! Sandbox operations against the real binary and the real Docker daemon, as a tenant would use them
//! and as a hostile one would try them: exec (collected, streamed, past its timeout, of a missing binary in an
//! image without a shell), files in and out (byte-identical, mode and owner, directories as tars, paths that
//! escape, sizes over the limit), and the owner scoping of both.

use std::time::{Duration, Instant};

use aenv_testkit::{Operator, TEST_IMAGE, create_body, docker_ok, unique_name};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_aenv-operator");

/// An image of one static binary and nothing else: no shell, no PATH programs. The binary is busybox named
/// `/sleep`, so it runs as `sleep` (busybox picks its applet from its name) and nothing else.
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

async fn running_instance(op: &Operator, name: &str, image: &str) -> String {
    let (status, body) =
        op.post_json("/env-instance", &create_body(name, image, json!({"ttl": "10m", "readiness": false}))).await;
    assert_eq!(status, 200, "{body}");
    let id = body["data"]["id"].as_str().unwrap().to_string();
    op.wait_for(&id, Duration::from_secs(60), |v| v["data"]["status"] == "Running").await;
    id
}

async fn exec(op: &Operator, id: &str, body: Value) -> (u16, Value) {
    op.post_json(&format!("/env-instance/{id}/exec"), &body).await
}

#[tokio::test]
async fn exec_runs_a_command_with_its_env_workdir_user_and_stdin_and_answers_its_exit() {
    let op = Operator::start(BIN, &[]).await;
    let id = running_instance(&op, &unique_name("exec"), TEST_IMAGE).await;
    let (status, body) = exec(
        &op,
        &id,
        json!({
            "command": ["sh", "-c", "echo out; echo err >&2; pwd; id -u; echo $GREETING; cat; exit 3"],
            "env": {"GREETING": "hello there"},
            "workdir": "/tmp",
            "user": "65534",
            "stdin": "piped in\n",
        }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let data = &body["data"];
    assert_eq!(data["exitCode"], 3, "{body}");
    assert_eq!(data["stdout"], "out\n/tmp\n65534\nhello there\npiped in\n", "{body}");
    assert_eq!(data["stderr"], "err\n", "{body}");
    assert_eq!(data["timedOut"], false);

    // A plain success, and a command with no input reads EOF at once rather than hanging.
    let (_, body) = exec(&op, &id, json!({"command": ["cat"], "timeout": 5})).await;
    assert_eq!(body["data"]["exitCode"], 0, "{body}");
    assert_eq!(body["data"]["timedOut"], false, "{body}");
}

#[tokio::test]
async fn a_command_past_its_timeout_is_killed_with_what_it_started_and_the_answer_says_so() {
    let op = Operator::start(BIN, &[]).await;
    let id = running_instance(&op, &unique_name("exect"), TEST_IMAGE).await;
    let started = Instant::now();
    // The shell starts a child that would outlive the shell if only the shell were killed.
    let (status, body) =
        exec(&op, &id, json!({"command": ["sh", "-c", "echo begun; sleep 300 & sleep 301"], "timeout": 1})).await;
    let took = started.elapsed();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["timedOut"], true, "{body}");
    assert_eq!(body["data"]["killed"], true, "{body}");
    assert_eq!(body["data"]["exitCode"], 137, "{body}");
    assert_eq!(body["data"]["stdout"], "begun\n", "{body}");
    assert!(took < Duration::from_secs(6), "answered after {took:?}");
    // Neither sleep is left running in the sandbox.
    let (_, ps) = exec(&op, &id, json!({"command": ["ps", "-o", "args"]})).await;
    let ps = ps["data"]["stdout"].as_str().unwrap().to_string();
    assert!(!ps.contains("sleep 30"), "left behind:\n{ps}");
}

#[tokio::test]
async fn exec_of_a_missing_binary_answers_its_exit_code_and_message_even_without_a_shell() {
    let op = Operator::start(BIN, &[]).await;
    let id = running_instance(&op, &unique_name("bare"), shell_less_image()).await;
    for command in [json!(["sh", "-c", "true"]), json!(["/bin/ls"]), json!(["/"])] {
        let (status, body) = exec(&op, &id, json!({"command": command})).await;
        assert_eq!(status, 200, "{command}: {body}");
        let code = body["data"]["exitCode"].as_i64().unwrap_or_default();
        assert!(code == 126 || code == 127, "{command}: {body}");
        // The daemon sends the runtime's message on the command's output (stdout on this daemon).
        let said = format!(
            "{}{}",
            body["data"]["stdout"].as_str().unwrap_or_default(),
            body["data"]["stderr"].as_str().unwrap_or_default()
        );
        assert!(said.contains("exec"), "the runtime's message is missing: {body}");
    }
    // The one binary there runs.
    let (_, body) = exec(&op, &id, json!({"command": ["/sleep", "0"]})).await;
    assert_eq!(body["data"]["exitCode"], 0, "{body}");
}

#[tokio::test]
async fn exec_streams_its_output_as_server_sent_events_ending_with_the_exit() {
    let op = Operator::start(BIN, &[]).await;
    let id = running_instance(&op, &unique_name("execs"), TEST_IMAGE).await;
    let body = json!({"command": ["sh", "-c", "echo one; sleep 1; echo two >&2; exit 4"]});
    for (query, accept) in [("?stream=true", None), ("", Some("text/event-stream"))] {
        let mut req = op.http.post(op.url(&format!("/env-instance/{id}/exec{query}"))).json(&body);
        if let Some(a) = accept {
            req = req.header("accept", a);
        }
        let mut resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        // The first line arrives before the command ends (a second later).
        let first = String::from_utf8(resp.chunk().await.unwrap().unwrap().to_vec()).unwrap();
        assert!(first.contains("event: stdout\ndata: \"one\\n\""), "{first}");
        // Streamed, not collected: the first chunk holds neither what the command writes a second later nor its exit.
        assert!(!first.contains("two") && !first.contains("event: exit"), "the output was not streamed: {first}");
        let mut rest = String::new();
        while let Some(chunk) = resp.chunk().await.unwrap() {
            rest.push_str(&String::from_utf8_lossy(&chunk));
        }
        assert!(rest.contains("event: stderr\ndata: \"two\\n\""), "{rest}");
        assert!(rest.trim_end().ends_with("event: exit\ndata: {\"exitCode\":4,\"timedOut\":false}"), "{rest}");
    }
}

#[tokio::test]
async fn exec_refuses_bad_input_and_unknown_instances_changing_nothing() {
    let op = Operator::start(BIN, &[]).await;
    let id = running_instance(&op, &unique_name("execb"), TEST_IMAGE).await;
    for (body, field) in [
        (json!({"command": "ls -l"}), "command"),
        (json!({"command": []}), "command"),
        (json!({"command": ["ls"], "workdir": "../etc"}), "workdir"),
        (json!({"command": ["ls"], "timeout": 0}), "timeout"),
        (json!({"command": ["ls"], "timeout": 86400}), "timeout"),
        (json!({"command": ["ls"], "env": {"A=B": "x"}}), "env"),
        (json!({"command": ["ls"], "privileged": true}), "privileged"),
    ] {
        let (status, answer) = exec(&op, &id, body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(answer["message"].as_str().unwrap_or_default().contains(field), "{body}: {answer}");
    }
    let (status, answer) = op.post_raw(&format!("/env-instance/{id}/exec"), "{not json").await;
    assert_eq!(status, 400, "{answer}");
    let (status, answer) = exec(&op, "no-such-instance-1", json!({"command": ["true"]})).await;
    assert_eq!(status, 404, "{answer}");
    // A user the image does not know is the caller's mistake, not the operator's.
    let (status, answer) = exec(&op, &id, json!({"command": ["true"], "user": "nosuchuser"})).await;
    assert!(status == 400 || (status == 200 && answer["data"]["exitCode"] != 0), "{status} {answer}");
}

#[tokio::test]
async fn files_go_in_and_out_byte_identical_with_mode_and_owner() {
    let op = Operator::start(BIN, &[]).await;
    let id = running_instance(&op, &unique_name("files"), TEST_IMAGE).await;
    // 1 MiB that is not text, not compressible and not aligned to the tar block size.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let bytes: Vec<u8> = (0..(1 << 20) + 77)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    let url = op.url(&format!("/env-instance/{id}/files?path=/tmp/d/blob.bin&mode=750&owner=1000:2000"));
    let (_, _) = exec(&op, &id, json!({"command": ["mkdir", "/tmp/d"]})).await;
    let resp = op.http.put(&url).body(bytes.clone()).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let (_, stat) = exec(&op, &id, json!({"command": ["stat", "-c", "%a %u %g %s", "/tmp/d/blob.bin"]})).await;
    assert_eq!(stat["data"]["stdout"], format!("750 1000 2000 {}\n", bytes.len()), "{stat}");

    let resp = op.http.get(op.url(&format!("/env-instance/{id}/files?path=/tmp/d/blob.bin"))).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/octet-stream");
    assert_eq!(resp.headers()["x-aenv-file-mode"], "750");
    let back = resp.bytes().await.unwrap();
    assert!(back.as_ref() == bytes.as_slice(), "the file came back different ({} bytes)", back.len());

    // A directory comes back as a tar holding the file.
    let resp = op.http.get(op.url(&format!("/env-instance/{id}/files?path=/tmp/d"))).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/x-tar");
    let tar = resp.bytes().await.unwrap();
    let mut archive = tar::Archive::new(tar.as_ref());
    let names: Vec<String> =
        archive.entries().unwrap().map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned()).collect();
    assert!(names.iter().any(|n| n == "d/blob.bin"), "{names:?}");

    // Replacing a file overwrites it; an empty file is a file.
    let resp =
        op.http.put(op.url(&format!("/env-instance/{id}/files?path=/tmp/d/blob.bin"))).body("").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let resp = op.http.get(op.url(&format!("/env-instance/{id}/files?path=/tmp/d/blob.bin"))).send().await.unwrap();
    assert_eq!(resp.bytes().await.unwrap().len(), 0);
}

#[tokio::test]
async fn files_refuse_escaping_paths_missing_paths_and_oversized_uploads() {
    let op = Operator::start(BIN, &[]).await;
    let id = running_instance(&op, &unique_name("filesb"), TEST_IMAGE).await;
    let put = |path: &str, body: Vec<u8>| {
        op.http.put(op.url(&format!("/env-instance/{id}/files?path={path}"))).body(body).send()
    };
    for path in ["tmp/x", "/tmp/../etc/passwd", "/tmp/./x", "/", "%2Ftmp%2F..%2Fetc%2Fshadow"] {
        let resp = put(path, b"x".to_vec()).await.unwrap();
        assert_eq!(resp.status(), 400, "{path}");
        let body: Value = resp.json().await.unwrap();
        assert!(body["message"].as_str().unwrap().contains("path"), "{body}");
        let resp = op.http.get(op.url(&format!("/env-instance/{id}/files?path={path}"))).send().await.unwrap();
        assert_eq!(resp.status(), 400, "{path}");
    }
    let resp = op.http.get(op.url(&format!("/env-instance/{id}/files"))).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    // Missing: a path, a parent directory, an instance.
    for missing in ["/no/such/file", "/etc/passwd/x", "/etc/passwd/x/y"] {
        let resp = op.http.get(op.url(&format!("/env-instance/{id}/files?path={missing}"))).send().await.unwrap();
        assert_eq!(resp.status(), 404, "{missing}");
    }
    let resp = put("/no/such/dir/file", b"x".to_vec()).await.unwrap();
    assert_eq!(resp.status(), 404, "{}", resp.text().await.unwrap());
    let resp = op.http.get(op.url("/env-instance/nobody-1/files?path=/etc/passwd")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    // A file may not replace a directory, nor go under a file.
    let resp = put("/tmp", b"x".to_vec()).await.unwrap();
    assert_eq!(resp.status(), 409);
    let resp = put("/etc/passwd/x", b"x".to_vec()).await.unwrap();
    assert_eq!(resp.status(), 409);
    // Over the limit (64 MiB): 413, and nothing is written.
    // The operator answers from the declared length, without reading the body, and closes: a client still
    // writing may see the close (a broken pipe) before the answer, which is a refusal too.
    match put("/tmp/big", vec![7u8; 64 * 1024 * 1024 + 1]).await {
        Ok(resp) => assert_eq!(resp.status(), 413),
        Err(e) => assert!(e.is_request() && !e.is_timeout(), "refused before the body was read, not {e}"),
    }
    let (_, ls) = exec(&op, &id, json!({"command": ["ls", "/tmp"]})).await;
    assert!(!ls["data"]["stdout"].as_str().unwrap().contains("big"), "{ls}");
    // A bad mode or owner is refused before anything is written.
    for q in ["mode=999", "owner=root"] {
        let resp =
            op.http.put(op.url(&format!("/env-instance/{id}/files?path=/tmp/m&{q}"))).body("x").send().await.unwrap();
        assert_eq!(resp.status(), 400, "{q}");
    }
    let (_, ls) = exec(&op, &id, json!({"command": ["ls", "/tmp"]})).await;
    assert!(!ls["data"]["stdout"].as_str().unwrap().contains('m'), "{ls}");
}

#[tokio::test]
async fn another_tenant_can_neither_exec_nor_read_nor_write_files() {
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
        .json(&create_body(&unique_name("alice"), TEST_IMAGE, json!({"ttl": "10m"})))
        .send()
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    let id = body["data"]["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let resp = op
            .http
            .get(op.url(&format!("/env-instance/{id}")))
            .bearer_auth("alice-token-0123456789")
            .send()
            .await
            .unwrap();
        let v: Value = resp.json().await.unwrap();
        if v["data"]["status"] == "Running" {
            break;
        }
        assert!(Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let exec_url = op.url(&format!("/env-instance/{id}/exec"));
    let files_url = op.url(&format!("/env-instance/{id}/files?path=/tmp/owned"));
    let cmd = json!({"command": ["touch", "/tmp/pwned"]});
    for token in [Some("bob-token-0123456789"), None] {
        let with = |r: reqwest::RequestBuilder| if let Some(t) = token { r.bearer_auth(t) } else { r };
        let resp = with(op.http.post(&exec_url).json(&cmd)).send().await.unwrap();
        assert!(resp.status() == 404 || resp.status() == 401, "{token:?}: {}", resp.status());
        let resp = with(op.http.post(format!("{exec_url}?stream=true")).json(&cmd)).send().await.unwrap();
        assert!(resp.status() == 404 || resp.status() == 401, "{token:?}: {}", resp.status());
        let resp = with(op.http.put(&files_url).body("x")).send().await.unwrap();
        assert!(resp.status() == 404 || resp.status() == 401, "{token:?}: {}", resp.status());
        let resp =
            with(op.http.get(op.url(&format!("/env-instance/{id}/files?path=/etc/passwd")))).send().await.unwrap();
        assert!(resp.status() == 404 || resp.status() == 401, "{token:?}: {}", resp.status());
    }
    // Nothing reached the sandbox; its owner sees that.
    let resp = op
        .http
        .post(&exec_url)
        .bearer_auth("alice-token-0123456789")
        .json(&json!({"command": ["ls", "/tmp"]}))
        .send()
        .await
        .unwrap();
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["data"]["exitCode"], 0, "{v}");
    let listing = v["data"]["stdout"].as_str().unwrap();
    assert!(!listing.contains("pwned") && !listing.contains("owned"), "{v}");
}

fn docker_paused(container: &str) -> bool {
    aenv_testkit::inspect(container)["State"]["Paused"] == true
}

#[tokio::test]
async fn pause_freezes_the_sandbox_across_an_operator_restart_and_resume_brings_it_back_as_it_was() {
    let mut op = Operator::start(BIN, &["--resync-interval", "1s"]).await;
    let id = running_instance(&op, &unique_name("pause"), TEST_IMAGE).await;
    // A process of the sandbox's own, and a file: both must be there after the pause.
    let (_, body) =
        exec(&op, &id, json!({"command": ["sh", "-c", "echo kept > /tmp/state; (sleep 1000 &) ; true"]})).await;
    assert_eq!(body["data"]["exitCode"], 0, "{body}");
    let started_at = aenv_testkit::inspect(&id)["State"]["StartedAt"].clone();

    let t = Instant::now();
    let (status, body) = op.post_json(&format!("/env-instance/{id}/pause"), &json!({})).await;
    let answered = t.elapsed();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["status"], "Paused", "the answer is in the state asked for: {body}");
    assert!(docker_paused(&id), "the container is frozen when the answer says so");
    eprintln!("pause answered in {answered:?}");

    // A paused sandbox runs nothing: exec and files answer 409 and say what to do.
    let (status, body) = exec(&op, &id, json!({"command": ["true"]})).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["message"].as_str().unwrap().contains("resume"), "{body}");
    let resp = op.http.get(op.url(&format!("/env-instance/{id}/files?path=/tmp/state"))).send().await.unwrap();
    assert_eq!(resp.status(), 409);
    let resp = op.http.put(op.url(&format!("/env-instance/{id}/files?path=/tmp/x"))).body("x").send().await.unwrap();
    assert_eq!(resp.status(), 409);
    // Pausing again changes nothing.
    let (status, _) = op.post_json(&format!("/env-instance/{id}/pause"), &json!({})).await;
    assert_eq!(status, 200);

    // Across a restart of the operator (killed, no clean-up), it stays paused: the desired state is in the store.
    op.restart(BIN).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_, v) = op.get(&format!("/env-instance/{id}")).await;
    assert_eq!(v["data"]["status"], "Paused", "{v}");
    assert!(docker_paused(&id), "the restarted operator unfroze it");

    // Unpaused outside the operator, it is frozen again: the spec holds.
    aenv_testkit::docker_ok(&["unpause", &id]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !docker_paused(&id) {
        assert!(Instant::now() < deadline, "not paused again after an unpause by hand");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (status, body) = op.post_json(&format!("/env-instance/{id}/resume"), &json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["status"], "Running", "the answer is in the state asked for: {body}");
    assert!(!docker_paused(&id));
    // The same container, its file and its process.
    assert_eq!(aenv_testkit::inspect(&id)["State"]["StartedAt"], started_at);
    let (_, body) =
        exec(&op, &id, json!({"command": ["sh", "-c", "cat /tmp/state; ps -o args | grep -c '^sleep 1000'"]})).await;
    assert_eq!(body["data"]["stdout"], "kept\n1\n", "{body}");
}

#[tokio::test]
async fn pause_refuses_unknown_instances_and_a_paused_sandbox_still_expires() {
    let op = Operator::start(BIN, &[]).await;
    let (status, _) = op.post_json("/env-instance/nobody-123/pause", &json!({})).await;
    assert_eq!(status, 404);
    let (status, _) = op.post_json("/env-instance/nobody-123/resume", &json!({})).await;
    assert_eq!(status, 404);
    let (status, body) =
        op.post_json("/env-instance", &create_body(&unique_name("pttl"), TEST_IMAGE, json!({"ttl": "6s"}))).await;
    assert_eq!(status, 200, "{body}");
    let id = body["data"]["id"].as_str().unwrap().to_string();
    op.wait_for(&id, Duration::from_secs(30), |v| v["data"]["status"] == "Running").await;
    let (status, _) = op.post_json(&format!("/env-instance/{id}/pause"), &json!({})).await;
    assert_eq!(status, 200);
    op.wait_for(&id, Duration::from_secs(10), |v| v["data"]["status"] == "Paused").await;
    // The TTL keeps running while paused: the instance and its (frozen) container go at the expiry.
    op.wait_for(&id, Duration::from_secs(20), |v| v["code"] == 404 || v["data"].is_null()).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while aenv_testkit::docker(&["inspect", "--type", "container", &id]).status.success() {
        assert!(Instant::now() < deadline, "the paused container outlived its TTL");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn stats_show_which_sandbox_eats_the_cpu_and_memory() {
    let op = Operator::start(BIN, &[]).await;
    let busy = running_instance(&op, &unique_name("busy"), TEST_IMAGE).await;
    let idle = running_instance(&op, &unique_name("idle"), TEST_IMAGE).await;
    // One sandbox spins a CPU and holds 40 MiB in /dev/shm (a tmpfs, charged to its memory).
    let (_, body) = exec(
        &op,
        &busy,
        json!({"command": ["sh", "-c", "(while :; do :; done) >/dev/null 2>&1 & dd if=/dev/zero of=/dev/shm/f bs=1M count=40 2>/dev/null; true"]}),
    )
    .await;
    assert_eq!(body["data"]["exitCode"], 0, "{body}");
    let (status, b) = op.get(&format!("/env-instance/{busy}/stats")).await;
    assert_eq!(status, 200, "{b}");
    let (_, i) = op.get(&format!("/env-instance/{idle}/stats")).await;
    let (b, i) = (&b["data"], &i["data"]);
    let cpu = |v: &Value| v["cpuPercent"].as_f64().unwrap_or(-1.0);
    assert!(cpu(b) > 50.0, "busy: {b}");
    assert!((0.0..20.0).contains(&cpu(i)), "idle: {i}");
    assert!(b["memoryLimitBytes"].as_u64().unwrap_or(0) > 0, "{b}");
    let mem = |v: &Value| v["memoryBytes"].as_u64().unwrap_or(0);
    assert!(mem(b) >= 40 << 20 && mem(b) > mem(i) + (30 << 20), "busy {b}, idle {i}");
    assert!(b["pids"].as_u64().unwrap_or(0) >= 2, "{b}");
    for key in ["memoryBytes", "networkRxBytes", "networkTxBytes", "blockReadBytes", "blockWriteBytes"] {
        assert!(b[key].is_u64(), "{key}: {b}");
    }
    // Missing and foreign instances: 404.
    let (status, _) = op.get("/env-instance/nobody-9/stats").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn with_pause_extends_ttl_the_clock_stops_while_paused_and_runs_again_on_resume() {
    let op = Operator::start(BIN, &["--pause-extends-ttl"]).await;
    let (status, body) =
        op.post_json("/env-instance", &create_body(&unique_name("pext"), TEST_IMAGE, json!({"ttl": "8s"}))).await;
    assert_eq!(status, 200, "{body}");
    let id = body["data"]["id"].as_str().unwrap().to_string();
    op.wait_for(&id, Duration::from_secs(30), |v| v["data"]["status"] == "Running").await;
    let (status, _) = op.post_json(&format!("/env-instance/{id}/pause"), &json!({})).await;
    assert_eq!(status, 200);
    // Well past its TTL, it is still there, paused.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let (status, v) = op.get(&format!("/env-instance/{id}")).await;
    assert_eq!(status, 200, "expired while paused: {v}");
    assert_eq!(v["data"]["status"], "Paused", "{v}");
    let resumed = Instant::now();
    let (status, _) = op.post_json(&format!("/env-instance/{id}/resume"), &json!({})).await;
    assert_eq!(status, 200);
    // Then the rest of its TTL runs (at most 8 s of it), and it goes.
    op.wait_for(&id, Duration::from_secs(20), |v| v["code"] == 404).await;
    let lived = resumed.elapsed();
    // It had about 7 s left when paused; without the stopped clock it would go at once on resume.
    assert!(lived > Duration::from_secs(3) && lived < Duration::from_secs(10), "lived {lived:?} after resume");
}

fn image_exists(reference: &str) -> bool {
    aenv_testkit::docker(&["image", "inspect", reference]).status.success()
}

#[tokio::test]
async fn a_snapshot_is_a_template_of_the_sandbox_s_files_forks_start_from_it_and_it_goes_with_its_template() {
    let op = Operator::start(BIN, &[]).await;
    let name = unique_name("snap");
    let id = running_instance(&op, &name, TEST_IMAGE).await;
    let (_, body) = exec(&op, &id, json!({"command": ["sh", "-c", "echo saved-state > /tmp/state"]})).await;
    assert_eq!(body["data"]["exitCode"], 0, "{body}");

    // Bad input first: nothing is made.
    for (body, field) in [
        (json!({"version": "a b"}), "version"),
        (json!({"version": "-x"}), "version"),
        (json!({"version": []}), "version"),
        (json!({"tag": "x"}), "tag"),
    ] {
        let (status, answer) = op.post_json(&format!("/env-instance/{id}/snapshot"), &body).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(answer["message"].as_str().unwrap().contains(field), "{answer}");
    }
    for body in [json!({}), json!({"count": 0}), json!({"count": 33}), json!({"count": "two"}), json!({"count": 1.5})] {
        let (status, answer) = op.post_json(&format!("/env-instance/{id}/fork"), &body).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(answer["message"].as_str().unwrap().contains("count"), "{answer}");
    }
    let (status, _) = op.post_json("/env-instance/nobody-4/snapshot", &json!({})).await;
    assert_eq!(status, 404);
    let (status, _) = op.post_json("/env-instance/nobody-4/fork", &json!({"count": 1})).await;
    assert_eq!(status, 404);
    let (_, list) = op.get(&format!("/env/{name}")).await;
    assert!(!list.to_string().contains("aenv-snapshot"), "{list}");

    let (status, body) = op.post_json(&format!("/env-instance/{id}/snapshot"), &json!({"version": "v2"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["envName"], format!("{name}@v2"));
    let image = body["data"]["image"].as_str().unwrap().to_string();
    assert!(image.starts_with(&format!("aenv-snapshot/{name}:v2.")), "{body}");
    assert!(image_exists(&image));
    // The image carries none of the sandbox's labels: a container started from it by hand is not the operator's.
    let labels = aenv_testkit::docker_ok(&["image", "inspect", "-f", "{{json .Config.Labels}}", &image]);
    let labels: Value = serde_json::from_str(&labels).unwrap();
    for key in ["aenv.io/managed-by", "aenv.io/operator-id", "aenv.io/instance", "aenv.io/expire-at"] {
        assert!(labels[key].as_str().unwrap_or_default().is_empty(), "{key}: {labels}");
    }
    // The same version again: 409, and the image stays the first one's.
    let (status, _) = op.post_json(&format!("/env-instance/{id}/snapshot"), &json!({"version": "v2"})).await;
    assert_eq!(status, 409);

    // An SDK create from the snapshot starts with the saved files.
    let (status, body) = op.post_json("/env-instance", &json!({"envName": format!("{name}@v2")})).await;
    assert_eq!(status, 200, "{body}");
    let from_snapshot = body["data"]["id"].as_str().unwrap().to_string();
    op.wait_for(&from_snapshot, Duration::from_secs(60), |v| v["data"]["status"] == "Running").await;
    let (_, body) = exec(&op, &from_snapshot, json!({"command": ["cat", "/tmp/state"]})).await;
    assert_eq!(body["data"]["stdout"], "saved-state\n", "{body}");

    // A fork: a snapshot and N instances of it, each with the files.
    let (status, body) = op.post_json(&format!("/env-instance/{id}/fork"), &json!({"count": 3})).await;
    assert_eq!(status, 200, "{body}");
    let fork_env = body["data"]["envName"].as_str().unwrap().to_string();
    let (_, fork_template) = op.get(&format!("/env/{}", fork_env.replace('@', "/"))).await;
    let fork_image = fork_template["data"]["artifacts"][0]["content"].as_str().unwrap_or_default().to_string();
    assert!(image_exists(&fork_image), "{fork_template}");
    let forks: Vec<String> =
        body["data"]["instances"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    assert_eq!(forks.len(), 3, "{body}");
    for f in &forks {
        op.wait_for(f, Duration::from_secs(60), |v| v["data"]["status"] == "Running").await;
        let (_, body) = exec(&op, f, json!({"command": ["cat", "/tmp/state"]})).await;
        assert_eq!(body["data"]["stdout"], "saved-state\n", "{f}: {body}");
    }

    // The template cannot go while an instance runs from it; once they are gone, it goes with its image.
    let (status, answer) = op.delete(&format!("/env/{name}/v2")).await;
    assert_eq!(status, 409, "{answer}");
    assert!(image_exists(&image));
    op.delete(&format!("/env-instance/{from_snapshot}")).await;
    op.wait_for(&from_snapshot, Duration::from_secs(30), |v| v["code"] == 404).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, answer) = op.delete(&format!("/env/{name}/v2")).await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 409, "{answer}");
        assert!(Instant::now() < deadline, "{answer}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!image_exists(&image), "the snapshot image outlived its template");
    // The fork's snapshot goes the same way.
    for f in &forks {
        op.delete(&format!("/env-instance/{f}")).await;
    }
    let fork_version = fork_env.rsplit_once('@').unwrap().1.to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    while op.delete(&format!("/env/{name}/{fork_version}")).await.0 != 200 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!image_exists(&fork_image));
}

/// Two services, each writing its name where the other does: which container an operation reached shows.
const TWO_SERVICES: &str = r#"
services:
  app:
    image: ${IMAGE}
    labels: ["aenv.main=true"]
    command: ["sh", "-c", "echo app > /tmp/who; exec sleep 3600"]
  db:
    image: ${IMAGE}
    command: ["sh", "-c", "echo db > /tmp/who; exec sleep 3600"]
"#;

#[tokio::test]
async fn on_a_compose_stack_exec_files_and_stats_reach_the_service_named_and_the_main_one_by_default() {
    let op = Operator::start(BIN, &[]).await;
    let body = json!({"name": unique_name("stackops"), "version": "1.0.0", "owner": "test",
        "deployConfig": {"composeFile": TWO_SERVICES, "environment_variables": {"IMAGE": TEST_IMAGE}, "ttl": "10m"}});
    let (code, created) = op.post_json("/env-instance", &body).await;
    assert_eq!(code, 200, "{created}");
    let id = created["data"]["id"].as_str().unwrap().to_string();
    op.wait_for(&id, Duration::from_secs(90), |v| v["data"]["status"] == "Running").await;
    let who = json!({"command": ["cat", "/tmp/who"]});

    // The main service by default, the one named otherwise.
    let (code, out) = exec(&op, &id, who.clone()).await;
    assert_eq!((code, out["data"]["stdout"].as_str()), (200, Some("app\n")), "{out}");
    let (code, out) = op.post_json(&format!("/env-instance/{id}/exec?service=db"), &who).await;
    assert_eq!((code, out["data"]["stdout"].as_str()), (200, Some("db\n")), "{out}");
    let (code, out) = op.post_json(&format!("/env-instance/{id}/exec?service=app"), &who).await;
    assert_eq!((code, out["data"]["stdout"].as_str()), (200, Some("app\n")), "{out}");

    // A file put into db is in db, not in app.
    let resp = op
        .http
        .put(op.url(&format!("/env-instance/{id}/files?path=/tmp/only-db&service=db")))
        .body("db's file")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let resp =
        op.http.get(op.url(&format!("/env-instance/{id}/files?path=/tmp/only-db&service=db"))).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), b"db's file");
    let resp = op.http.get(op.url(&format!("/env-instance/{id}/files?path=/tmp/only-db"))).send().await.unwrap();
    assert_eq!(resp.status(), 404, "the main service has db's file");

    // Stats of one service.
    let (code, stats) = op.get(&format!("/env-instance/{id}/stats?service=db")).await;
    assert_eq!(code, 200, "{stats}");
    assert!(stats["data"]["pids"].as_u64().unwrap_or(0) >= 1, "{stats}");

    // A service the stack does not have: 400 naming those it has; never another container of the host.
    let other = running_instance(&op, &unique_name("single"), TEST_IMAGE).await;
    for service in ["nope", "../db", other.as_str()] {
        let (code, out) = op.post_json(&format!("/env-instance/{id}/exec?service={service}"), &who).await;
        assert_eq!(code, 400, "{service}: {out}");
        assert!(out["message"].as_str().unwrap().contains("app, db"), "{out}");
    }
    let (code, out) = op.get(&format!("/env-instance/{id}/stats?service=nope")).await;
    assert_eq!(code, 400, "{out}");
    let resp =
        op.http.get(op.url(&format!("/env-instance/{id}/files?path=/tmp/who&service=nope"))).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    // A single container takes no service.
    let (code, out) = op.post_json(&format!("/env-instance/{other}/exec?service=app"), &who).await;
    assert_eq!(code, 400, "{out}");
    assert!(out["message"].as_str().unwrap().contains("query `service`"), "{out}");
    let (code, out) = op.post_json(&format!("/env-instance/{id}/exec?service="), &who).await;
    assert_eq!(code, 400, "{out}");

    for i in [&id, &other] {
        let (code, _) = op.delete(&format!("/env-instance/{i}")).await;
        assert_eq!(code, 200);
    }
}

#[tokio::test]
async fn a_paused_stack_freezes_every_service_stays_frozen_across_a_restart_and_resumes_as_it_was() {
    let mut op = Operator::start(BIN, &[]).await;
    let body = json!({"name": unique_name("stackpause"), "version": "1.0.0", "owner": "test",
        "deployConfig": {"composeFile": TWO_SERVICES, "environment_variables": {"IMAGE": TEST_IMAGE}, "ttl": "10m"}});
    let (code, created) = op.post_json("/env-instance", &body).await;
    assert_eq!(code, 200, "{created}");
    let id = created["data"]["id"].as_str().unwrap().to_string();
    op.wait_for(&id, Duration::from_secs(90), |v| v["data"]["status"] == "Running").await;
    let containers = [format!("{id}-app-1"), format!("{id}-db-1")];
    let started: Vec<Value> =
        containers.iter().map(|c| aenv_testkit::inspect(c)["State"]["StartedAt"].clone()).collect();

    let (code, out) = op.post_json(&format!("/env-instance/{id}/pause"), &json!({})).await;
    assert_eq!(code, 200, "{out}");
    op.wait_for(&id, Duration::from_secs(10), |v| v["data"]["status"] == "Paused").await;
    for c in &containers {
        assert!(docker_paused(c), "{c} is not frozen");
    }
    let (code, out) = op.post_json(&format!("/env-instance/{id}/exec?service=db"), &json!({"command": ["true"]})).await;
    assert_eq!(code, 409, "{out}");

    // A kill and restart of the operator keeps it paused; a service unpaused by hand is frozen again.
    op.restart(BIN).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_, v) = op.get(&format!("/env-instance/{id}")).await;
    assert_eq!(v["data"]["status"], "Paused", "{v}");
    aenv_testkit::docker_ok(&["unpause", &containers[1]]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !docker_paused(&containers[1]) {
        assert!(Instant::now() < deadline, "db was not paused again after an unpause by hand");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (code, out) = op.post_json(&format!("/env-instance/{id}/resume"), &json!({})).await;
    assert_eq!(code, 200, "{out}");
    op.wait_for(&id, Duration::from_secs(10), |v| v["data"]["status"] == "Running").await;
    for (c, at) in containers.iter().zip(&started) {
        assert!(!docker_paused(c), "{c} is still frozen");
        assert_eq!(&aenv_testkit::inspect(c)["State"]["StartedAt"], at, "{c} was restarted, not resumed");
    }
    let (_, out) =
        op.post_json(&format!("/env-instance/{id}/exec?service=db"), &json!({"command": ["cat", "/tmp/who"]})).await;
    assert_eq!(out["data"]["stdout"], "db\n", "{out}");
    let (code, _) = op.delete(&format!("/env-instance/{id}")).await;
    assert_eq!(code, 200);
}

/// A snapshot image made by hand as the operator labels its own (`docker commit` of a container of the test
/// image): what a lost template, or a crash between the commit and the template's record, leaves on the daemon.
fn labelled_snapshot(reference: &str, operator_id: &str, template: &str) {
    let base = unique_name("snapbase");
    docker_ok(&["create", "--name", &base, TEST_IMAGE]);
    docker_ok(&[
        "commit",
        "-c",
        &format!("LABEL aenv.io/snapshot-by={operator_id} aenv.io/snapshot-template={template}"),
        &base,
        reference,
    ]);
    docker_ok(&["rm", "-f", &base]);
}

#[tokio::test]
async fn snapshot_images_no_template_owns_are_swept_and_owned_used_or_foreign_ones_stay() {
    let op = Operator::start(BIN, &["--orphan-grace", "1s", "--resync-interval", "1s"]).await;
    // A real snapshot, with its template: it stays.
    let name = unique_name("sweep");
    let id = running_instance(&op, &name, TEST_IMAGE).await;
    let (code, snap) = op.post_json(&format!("/env-instance/{id}/snapshot"), &json!({"version": "kept"})).await;
    assert_eq!(code, 200, "{snap}");
    let kept = snap["data"]["image"].as_str().unwrap().to_string();
    assert_eq!(aenv_testkit::inspect(&kept)["Config"]["Labels"]["aenv.io/snapshot-template"], format!("{name}@kept"));
    assert_eq!(aenv_testkit::inspect(&kept)["Config"]["Labels"]["aenv.io/snapshot-by"], op.operator_id.as_str());

    // This operator's, with no template: swept. Another operator's: left alone. This operator's, without a
    // template but used by a container: left alone.
    let orphan = format!("aenv-snapshot/{}:lost", unique_name("orphan"));
    labelled_snapshot(&orphan, &op.operator_id, "gone@lost");
    let foreign = format!("aenv-snapshot/{}:theirs", unique_name("foreign"));
    labelled_snapshot(&foreign, "another-operator-id", "theirs@1");
    let used = format!("aenv-snapshot/{}:used", unique_name("used"));
    labelled_snapshot(&used, &op.operator_id, "gone@used");
    let user = unique_name("snapuser");
    docker_ok(&["create", "--name", &user, &used]);

    let deadline = Instant::now() + Duration::from_secs(30);
    while image_exists(&orphan) {
        assert!(Instant::now() < deadline, "the snapshot image no template owns was not swept");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Several sweeps later, the others are still there.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(image_exists(&kept), "a snapshot with its template was swept");
    assert!(image_exists(&foreign), "another operator's snapshot was swept");
    assert!(image_exists(&used), "a snapshot a container uses was swept");

    docker_ok(&["rm", "-f", &user]);
    docker_ok(&["rmi", &foreign]);
    // Unused now, it is this operator's to sweep: it may be gone already.
    let _ = aenv_testkit::docker(&["rmi", &used]);
    let (code, _) = op.delete(&format!("/env-instance/{id}")).await;
    assert_eq!(code, 200);
    let (name, version) = (name.as_str(), "kept");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body) = op.delete(&format!("/env/{name}/{version}")).await;
        if code == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the template could not be deleted: {body}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(!image_exists(&kept));
}
