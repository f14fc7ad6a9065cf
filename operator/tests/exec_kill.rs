//! The kill of a command past its timeout, against the real binary and daemon, as a tenant would try to escape
//! it: children that leave the command's process tree (a double fork, `setsid`), a request that sets the marker
//! the kill looks for, and an operator killed (-9) while the command runs. What a command that ended in time left
//! running on purpose (a server in the background) is never killed.

use std::time::{Duration, Instant};

use aenv_testkit::{Operator, TEST_IMAGE, create_body, docker, unique_name};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_aenv-operator");

/// The children a hostile command leaves: one double-forked (its parent exits, it is the container init's), one in
/// a session of its own, and the command's own.
const ESCAPING: &str = "(sleep 2222 &); setsid sleep 3333 & sleep 4444";
const ESCAPING_SLEEPS: [&str; 3] = ["sleep 2222", "sleep 3333", "sleep 4444"];

async fn running_instance(op: &Operator, name: &str) -> String {
    let (status, body) =
        op.post_json("/env-instance", &create_body(name, TEST_IMAGE, json!({"ttl": "10m", "readiness": false}))).await;
    assert_eq!(status, 200, "{body}");
    let id = body["data"]["id"].as_str().unwrap().to_string();
    op.wait_for(&id, Duration::from_secs(60), |v| v["data"]["status"] == "Running").await;
    id
}

async fn exec(op: &Operator, id: &str, body: Value) -> (u16, Value) {
    op.post_json(&format!("/env-instance/{id}/exec"), &body).await
}

/// The command lines running in container `id`, as the daemon sees them (`docker top`: host /proc, every process
/// of the container whatever its parent).
fn top(id: &str) -> String {
    let out = docker(&["top", id, "-o", "pid,args"]);
    assert!(out.status.success(), "docker top {id}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn running_any(id: &str, what: &[&str]) -> Vec<String> {
    let top = top(id);
    what.iter().filter(|w| top.contains(*w)).map(|w| w.to_string()).collect()
}

#[tokio::test]
async fn a_timeout_kills_double_forked_and_setsid_children_even_when_the_request_sets_the_marker() {
    let op = Operator::start(BIN, &[]).await;
    let id = running_instance(&op, &unique_name("execk")).await;
    // A command that ended in time leaves its background server running: that is not killed, now or later.
    let (status, body) =
        exec(&op, &id, json!({"command": ["sh", "-c", "sleep 5555 </dev/null >/dev/null 2>&1 &"], "timeout": 2})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["timedOut"], false, "{body}");

    let started = Instant::now();
    // The request names the marker variable itself: it must not choose (or clear) what the kill looks for.
    let (status, body) =
        exec(&op, &id, json!({"command": ["sh", "-c", ESCAPING], "timeout": 2, "env": {"AENV_EXEC_ID": "mine"}})).await;
    assert_eq!(status, 200, "{body}");
    assert!(started.elapsed() < Duration::from_secs(10), "answered after {:?}", started.elapsed());
    assert_eq!(body["data"]["timedOut"], true, "{body}");
    assert_eq!(body["data"]["killed"], true, "{body}");
    assert_eq!(body["data"]["exitCode"], 137, "{body}");
    // Nothing of it is left in the container, wherever in the process tree it went.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = running_any(&id, &ESCAPING_SLEEPS);
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "left running past the timeout: {left:?}\n{}", top(&id));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(running_any(&id, &["sleep 5555"]), ["sleep 5555"], "{}", top(&id));

    // A command whose own process ended but whose double-forked child holds its output open is killed too.
    let (_, body) = exec(&op, &id, json!({"command": ["sh", "-c", "(sleep 2223 &)"], "timeout": 2})).await;
    assert_eq!(body["data"]["timedOut"], true, "{body}");
    assert_eq!(body["data"]["killed"], true, "{body}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(running_any(&id, &["sleep 2223"]).is_empty(), "{}", top(&id));
    assert_eq!(running_any(&id, &["sleep 5555"]), ["sleep 5555"], "{}", top(&id));
}

#[tokio::test]
async fn a_command_does_not_outlive_its_timeout_when_the_operator_is_killed_during_it() {
    let mut op = Operator::start(BIN, &[]).await;
    let id = running_instance(&op, &unique_name("execk9")).await;
    let (_, body) =
        exec(&op, &id, json!({"command": ["sh", "-c", "sleep 5556 </dev/null >/dev/null 2>&1 &"], "timeout": 2})).await;
    assert_eq!(body["data"]["timedOut"], false, "{body}");

    let request = op
        .http
        .post(op.url(&format!("/env-instance/{id}/exec")))
        .json(&json!({"command": ["sh", "-c", ESCAPING], "timeout": 3}))
        .send();
    let pending = tokio::spawn(request);
    let deadline = Instant::now() + Duration::from_secs(10);
    while running_any(&id, &ESCAPING_SLEEPS).len() < 3 {
        assert!(Instant::now() < deadline, "the command did not start: {}", top(&id));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = Instant::now();
    op.kill9();
    let _ = pending.await;
    op.restart(BIN).await;
    // The restarted operator finishes the kill once the deadline passed: within a bounded time, all are gone.
    let bound = Duration::from_secs(20);
    loop {
        let left = running_any(&id, &ESCAPING_SLEEPS);
        if left.is_empty() {
            break;
        }
        assert!(started.elapsed() < bound, "still running {bound:?} after the kill -9: {left:?}\n{}", op.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(started.elapsed() >= Duration::from_secs(2), "killed before its deadline: {:?}", started.elapsed());
    let (_, metrics) = op.get("/metrics").await;
    let metrics = metrics.as_str().map(str::to_string).unwrap_or_else(|| metrics.to_string());
    let killed: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("aenv_overdue_commands_killed_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no counter of the kill: {metrics}"));
    // The three sleeps, and the shell when it had not yet replaced itself by its last command.
    assert!(killed >= 3, "the three sleeps (and the shell): {killed}");
    // What a command that ended in time started outlives the restart and every resync after it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(running_any(&id, &["sleep 5556"]), ["sleep 5556"], "{}", top(&id));
    // The restarted operator runs commands as before.
    let (_, body) = exec(&op, &id, json!({"command": ["echo", "hi"]})).await;
    assert_eq!(body["data"]["stdout"], "hi\n", "{body}");
}
