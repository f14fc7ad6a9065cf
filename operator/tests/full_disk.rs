//! A full disk under the embedded store, against the real binary and daemon: the store's directory is a small
//! tmpfs of the test's own, filled to the last byte while the operator runs, then freed. Root only (it mounts).

use std::{
    io::Write,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aenv_testkit::{Operator, TEST_IMAGE, create_body, docker, unique_name};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_aenv-operator");

fn running(v: &Value) -> bool {
    v["data"]["status"] == "Running"
}

fn is_root() -> bool {
    std::process::Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// A tmpfs of `size` mounted on a directory; unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "mount: {}", String::from_utf8_lossy(&out.stderr));
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes `path` until the file system refuses another byte.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0x5a_u8; 4096];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    // Byte by byte for the last partial block.
    while f.write(&[0]).is_ok_and(|n| n == 1) {}
    let _ = f.sync_all();
}

async fn create(op: &Operator, ttl: &str) -> (u16, Value) {
    let mut body = create_body(&unique_name("disk"), TEST_IMAGE, json!({}));
    body["ttl"] = json!(ttl);
    op.post_json("/env-instance", &body).await
}

async fn readyz(op: &Operator) -> (u16, Value) {
    op.get("/readyz").await
}

#[tokio::test]
async fn a_full_disk_fails_writes_retryably_says_so_in_readyz_and_recovers_once_space_is_back() {
    if !is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let mut op = Operator::start(BIN, &[]).await;
    // The store moves onto a 16 MiB tmpfs of its own (the operator stopped meanwhile).
    op.kill9();
    let store = op.data_dir.path().join("store");
    let saved = op.data_dir.path().join("store.saved");
    std::fs::rename(&store, &saved).unwrap();
    let _tmpfs = Tmpfs::mount(&store, "16m");
    for entry in std::fs::read_dir(&saved).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), store.join(entry.file_name())).unwrap();
    }
    op.restart(BIN).await;

    let (code, kept) = create(&op, "30m").await;
    assert_eq!(code, 200, "{kept}");
    let kept = kept["data"]["id"].as_str().unwrap().to_string();
    op.wait_for(&kept, Duration::from_secs(60), running).await;
    // One that expires while the disk is full: its container goes, its record can only go once the store writes.
    let (code, expiring) = create(&op, "12s").await;
    assert_eq!(code, 200, "{expiring}");
    let expiring = expiring["data"]["id"].as_str().unwrap().to_string();
    op.wait_for(&expiring, Duration::from_secs(60), running).await;

    let filler = store.join("filler");
    fill(&filler);
    // Writes fail once redb needs a page it has not freed before; every create answered 200 before that is kept.
    let mut accepted = vec![kept.clone()];
    let mut refused = None;
    for _ in 0..500 {
        let (code, body) = create(&op, "30m").await;
        match code {
            200 => accepted.push(body["data"]["id"].as_str().unwrap().to_string()),
            _ => {
                refused = Some((code, body));
                break;
            }
        }
    }
    let (code, body) = refused.expect("a create on a full disk was refused");
    assert_eq!(code, 503, "a full disk is retryable: {body}");
    assert!(body.to_string().contains("cannot write"), "the answer says why: {body}");
    let (code, ready) = readyz(&op).await;
    assert_eq!(code, 503, "{ready}");
    assert!(ready["reason"].as_str().unwrap_or_default().starts_with("store:"), "readyz names the store: {ready}");

    // The expired sandbox's container goes even so; its record stays until the store can write.
    let deadline = Instant::now() + Duration::from_secs(60);
    while docker(&["inspect", &expiring]).status.success() {
        assert!(Instant::now() < deadline, "the expired container was not removed:\n{}", op.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(readyz(&op).await.0, 503, "still not ready while the disk is full");

    // Space comes back: without a restart, writes go through again, readyz is ready, the expired record goes.
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, ready) = readyz(&op).await;
        if code == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the store did not recover: {ready}\n{}", op.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (code, body) = create(&op, "30m").await;
    assert_eq!(code, 200, "a create after the recovery: {body}");
    accepted.push(body["data"]["id"].as_str().unwrap().to_string());
    let deadline = Instant::now() + Duration::from_secs(30);
    while op.get(&format!("/env-instance/{expiring}")).await.0 != 404 {
        assert!(Instant::now() < deadline, "the expired instance still reads as live:\n{}", op.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    op.wait_for(&kept, Duration::from_secs(10), running).await;

    // Nothing accepted was lost, across a restart too.
    op.restart(BIN).await;
    for id in &accepted {
        let (code, body) = op.get(&format!("/env-instance/{id}")).await;
        assert_eq!(code, 200, "accepted {id} was lost: {body}");
    }
    for id in &accepted {
        op.delete(&format!("/env-instance/{id}")).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while !op.containers().is_empty() {
        assert!(Instant::now() < deadline, "containers left: {:?}", op.containers());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    op.kill9();
}
