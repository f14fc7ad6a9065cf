//! Operations on a running container (issue 15): exec through the exec API (create, start attached, inspect for
//! the exit code), files through the archive API (a tar of one file up, a tar of a path down).

use std::time::Duration;

use aenv_core::{
    EngineError, ErrorKind, ExecExit, ExecOutput, ExecRequest, FileUpload, InstanceStats, PathContent, SandboxPath,
};
use bollard::{
    Docker,
    container::LogOutput,
    exec::{StartExecOptions, StartExecResults},
    models::ExecConfig,
    query_parameters::{
        CommitContainerOptionsBuilder, ContainerArchiveInfoOptionsBuilder, DownloadFromContainerOptionsBuilder,
        RemoveImageOptionsBuilder, StatsOptionsBuilder, UploadToContainerOptionsBuilder,
    },
};
use futures::{StreamExt, stream::BoxStream};
use tokio::{io::AsyncWriteExt, sync::mpsc};
use tracing::{debug, warn};

use crate::error::classify;

/// Sorts a failure of an operation on a container: its absence is [`ErrorKind::NotFound`], a container that is
/// paused or stopped (the daemon's 409) [`ErrorKind::Conflict`]; anything else as [`classify`] does.
pub(crate) fn classify_op(context: &str, err: bollard::errors::Error) -> EngineError {
    match &err {
        bollard::errors::Error::DockerResponseServerError { status_code: 404, message } => {
            EngineError::new(ErrorKind::NotFound, format!("{context}: {message}")).with_source(err)
        }
        bollard::errors::Error::DockerResponseServerError { status_code: 409, message } => {
            EngineError::new(ErrorKind::Conflict, format!("{context}: {message}")).with_source(err)
        }
        _ => classify(context, err),
    }
}

/// Runs `request` in `container`, streaming what it writes; the exit is the last item.
pub(crate) fn exec(
    docker: Docker,
    container: String,
    request: ExecRequest,
) -> BoxStream<'static, Result<ExecOutput, EngineError>> {
    let (tx, rx) = mpsc::channel(32);
    tokio::spawn(async move {
        if let Err(e) = run_exec(&docker, &container, request, &tx).await {
            let _ = tx.send(Err(e)).await;
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx).boxed()
}

type Sender = mpsc::Sender<Result<ExecOutput, EngineError>>;

async fn run_exec(docker: &Docker, container: &str, request: ExecRequest, tx: &Sender) -> Result<(), EngineError> {
    let context = format!("running a command in {container}");
    let config = ExecConfig {
        attach_stdin: Some(request.stdin.is_some()),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        tty: Some(false),
        env: (!request.env.is_empty()).then(|| request.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        cmd: Some(request.command.clone()),
        user: request.user.clone(),
        working_dir: request.workdir.clone(),
        ..Default::default()
    };
    let created = docker.create_exec(container, config).await.map_err(|e| classify_op(&context, e))?;
    let started = docker
        .start_exec(&created.id, Some(StartExecOptions { detach: false, tty: false, output_capacity: None }))
        .await;
    let (mut output, input) = match started {
        Ok(StartExecResults::Attached { output, input }) => (output, input),
        Ok(StartExecResults::Detached) => {
            return Err(EngineError::transient(format!("{context}: the daemon did not attach to the command")));
        }
        // The runtime could not start the program (no such file, not executable): the daemon may answer the
        // start itself with its message; the exit code is in the inspect.
        Err(bollard::errors::Error::DockerResponseServerError { status_code, message }) if status_code >= 500 => {
            let _ = tx.send(Ok(ExecOutput::Stderr(format!("{message}\n").into_bytes()))).await;
            let exit = finished(docker, &created.id, false, false, None).await;
            let _ = tx.send(Ok(ExecOutput::Exited(exit))).await;
            return Ok(());
        }
        Err(e) => return Err(classify_op(&context, e)),
    };
    // Input goes on its own task, so that a command that writes before it reads cannot block on us.
    if let Some(stdin) = request.stdin {
        let mut input = input;
        tokio::spawn(async move {
            if let Err(e) = input.write_all(&stdin).await {
                debug!(error = %e, "writing a command's input");
            }
            // Closes the command's input (the daemon passes the half-close on).
            let _ = input.shutdown().await;
        });
    } else {
        drop(input);
    }
    let deadline = tokio::time::sleep(request.timeout);
    tokio::pin!(deadline);
    let mut gone = false;
    let timed_out = loop {
        tokio::select! {
            item = output.next() => match item {
                None => break false,
                Some(Ok(LogOutput::StdOut { message } | LogOutput::Console { message })) => {
                    if tx.send(Ok(ExecOutput::Stdout(message.to_vec()))).await.is_err() { gone = true; break false; }
                }
                Some(Ok(LogOutput::StdErr { message })) => {
                    if tx.send(Ok(ExecOutput::Stderr(message.to_vec()))).await.is_err() { gone = true; break false; }
                }
                Some(Ok(LogOutput::StdIn { .. })) => {}
                Some(Err(e)) => return Err(classify_op(&context, e)),
            },
            () = &mut deadline => break true,
            () = tx.closed() => { gone = true; break false; }
        }
    };
    // A caller that went away takes its command with it, as a timeout does.
    let mut message = None;
    let killed = if timed_out || gone {
        match kill_exec(docker, &created.id).await {
            Ok(()) => true,
            Err(why) => {
                warn!(container, reason = %why, "could not kill a command past its timeout");
                message = Some(why);
                false
            }
        }
    } else {
        false
    };
    let exit = finished(docker, &created.id, timed_out, killed, message).await;
    let _ = tx.send(Ok(ExecOutput::Exited(exit))).await;
    Ok(())
}

/// The exit of exec `id`: the daemon may mark it ended a moment after its output closes, so the inspect is
/// repeated for up to 2 s.
async fn finished(docker: &Docker, id: &str, timed_out: bool, killed: bool, message: Option<String>) -> ExecExit {
    let mut exit_code = None;
    for _ in 0..100 {
        match docker.inspect_exec(id).await {
            Ok(inspect) if inspect.running != Some(true) => {
                exit_code = inspect.exit_code;
                break;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => {
                debug!(error = %e, "inspecting an exec");
                break;
            }
        }
    }
    ExecExit { exit_code, timed_out, killed, message }
}

/// Kills an exec's process and everything it started. Docker has no API for that: the process is found by the
/// host pid the daemon reports, checked to be in the container's cgroup (a pid can be reused), and killed with
/// its descendants. That needs the daemon on this host and the right to signal its processes (root, as the
/// operator runs next to a local daemon); otherwise the reason is returned.
async fn kill_exec(docker: &Docker, id: &str) -> Result<(), String> {
    let inspect =
        docker.inspect_exec(id).await.map_err(|e| format!("the daemon did not say which process it is: {e}"))?;
    if inspect.running == Some(false) {
        return Ok(());
    }
    let (Some(pid), Some(container_id)) = (inspect.pid.filter(|p| *p > 0), inspect.container_id) else {
        return Err("the daemon did not say which process it is".into());
    };
    let pid = i32::try_from(pid).map_err(|_| format!("the daemon reported pid {pid}"))?;
    tokio::task::spawn_blocking(move || kill_tree(pid, &container_id))
        .await
        .map_err(|e| format!("the kill did not run: {e}"))?
}

fn kill_tree(pid: i32, container_id: &str) -> Result<(), String> {
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).map_err(|e| {
        format!(
            "process {pid} is not visible to the operator ({e}): the Docker daemon runs on another host or in another pid namespace; the command may still run"
        )
    })?;
    if !cgroup.contains(container_id) {
        return Err(format!("process {pid} is not the command's any more (it is not in the container's cgroup)"));
    }
    // Children first would race with them forking; SIGKILL the whole tree as found, top first: a killed parent
    // cannot start more, and orphans keep their pid until reaped, so the list stays valid.
    let mut tree = vec![pid];
    let mut i = 0;
    let table = process_table();
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(table.iter().filter(|(_, ppid)| *ppid == parent).map(|(p, _)| *p));
        i += 1;
    }
    for p in &tree {
        // SAFETY: kill(2) with a pid and a signal number has no memory-safety preconditions.
        let rc = unsafe { libc::kill(*p, libc::SIGKILL) };
        if rc != 0 && *p == pid {
            return Err(format!("process {pid} could not be killed: {}", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// (pid, parent pid) of every process in /proc.
fn process_table() -> Vec<(i32, i32)> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|entry| {
        let pid: i32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // `pid (comm) state ppid ...`: comm may hold spaces and parentheses, so read after the last `)`.
        let rest = &stat[stat.rfind(')')? + 1..];
        let ppid = rest.split_whitespace().nth(1)?.parse().ok()?;
        Some((pid, ppid))
    })
    .collect()
}

/// Go's `os.ModeDir`, as the archive API's path stat reports modes.
const GO_MODE_DIR: u32 = 1 << 31;

/// The daemon's stat of `path` (a HEAD of the archive API): `None` when there is nothing there.
async fn stat(
    docker: &Docker,
    container: &str,
    path: &str,
    context: &str,
) -> Result<Option<bollard::container::PathStatResponse>, EngineError> {
    let options = ContainerArchiveInfoOptionsBuilder::default().path(path).build();
    match docker.get_container_archive_info(container, Some(options)).await {
        Ok(stat) => Ok(Some(stat)),
        // A path under a file (`/etc/passwd/x`): the daemon's stat fails with a bare 500 rather than a 404. Its
        // container exists (the instance is running), so there is nothing at that path.
        Err(bollard::errors::Error::DockerResponseServerError { status_code: 500, .. }) => Ok(None),
        Err(e) => match classify_op(context, e) {
            e if e.kind() == ErrorKind::NotFound => Ok(None),
            e => Err(e),
        },
    }
}

/// Reads `path` in `container` through the archive API: at most `max_bytes` of tar.
pub(crate) async fn read_path(
    docker: &Docker,
    container: &str,
    path: &SandboxPath,
    max_bytes: u64,
) -> Result<PathContent, EngineError> {
    let context = format!("reading {} in {container}", path.as_str());
    // A file known to be too large is refused before a byte of it moves.
    match stat(docker, container, path.as_str(), &context).await? {
        None => {
            return Err(EngineError::new(ErrorKind::NotFound, format!("no such file or directory: {}", path.as_str())));
        }
        Some(s) if s.file_mode & GO_MODE_DIR == 0 && s.size > 0 && s.size as u64 > max_bytes => {
            return Err(EngineError::new(
                ErrorKind::TooLarge,
                format!("{} is {} bytes, more than this operator serves ({max_bytes} bytes)", path.as_str(), s.size),
            ));
        }
        Some(_) => {}
    }
    let options = DownloadFromContainerOptionsBuilder::default().path(path.as_str()).build();
    let mut stream = docker.download_from_container(container, Some(options));
    let mut tar = Vec::new();
    // The archive of a file is the file, a 512-byte header and padding: allow for those over the limit.
    let cap = max_bytes.saturating_add(64 * 1024);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| classify_op(&context, e))?;
        tar.extend_from_slice(&chunk);
        if tar.len() as u64 > cap {
            return Err(EngineError::new(
                ErrorKind::TooLarge,
                format!("{} is larger than this operator serves ({max_bytes} bytes)", path.as_str()),
            ));
        }
    }
    PathContent::from_tar(path, tar, max_bytes)
}

/// Writes one file into `container`: a tar holding it, extracted in its parent directory.
pub(crate) async fn write_file(docker: &Docker, container: &str, upload: FileUpload) -> Result<(), EngineError> {
    let context = format!("writing {} in {container}", upload.path.as_str());
    // The parent first: the daemon answers a stat under a file with a bare 500.
    match stat(docker, container, upload.path.parent(), &context).await? {
        Some(s) if s.file_mode & GO_MODE_DIR != 0 => {}
        Some(_) => {
            return Err(EngineError::new(
                ErrorKind::Conflict,
                format!("{} is not a directory: the file cannot go in it", upload.path.parent()),
            ));
        }
        None => {
            return Err(EngineError::new(
                ErrorKind::NotFound,
                format!("no such directory: {} (make it first, such as with exec mkdir -p)", upload.path.parent()),
            ));
        }
    }
    // The daemon answers a file over a directory with a bare 500: say it plainly, before anything is sent.
    if let Some(s) = stat(docker, container, upload.path.as_str(), &context).await?
        && s.file_mode & GO_MODE_DIR != 0
    {
        return Err(EngineError::new(
            ErrorKind::Conflict,
            format!("{} is a directory: a file cannot replace it; name a path inside it", upload.path.as_str()),
        ));
    }
    let tar = upload
        .to_tar(jiff::Timestamp::now().as_second().max(0) as u64)
        .map_err(|e| EngineError::permanent(format!("{context}: {e}")).with_source(e))?;
    let options = UploadToContainerOptionsBuilder::default()
        .path(upload.path.parent())
        // A file may not replace a directory (nor the reverse).
        .no_overwrite_dir_non_dir("true")
        .build();
    docker
        .upload_to_container(container, Some(options), bollard::body_full(tar.into()))
        .await
        .map_err(|e| classify_op(&context, e))
}

/// One stats read of `container`. Not `one_shot`: the daemon then takes its two samples a second apart within
/// the one read, which is what a CPU percentage needs (a one-shot read has no earlier sample to compare with).
pub(crate) async fn stats(docker: &Docker, container: &str) -> Result<InstanceStats, EngineError> {
    let context = format!("reading the stats of {container}");
    let options = StatsOptionsBuilder::default().stream(false).one_shot(false).build();
    let read = docker
        .stats(container, Some(options))
        .next()
        .await
        .ok_or_else(|| EngineError::transient(format!("{context}: the daemon answered nothing")))?
        .map_err(|e| classify_op(&context, e))?;
    Ok(stats_of(&read))
}

/// What `docker stats` shows, from the daemon's counters.
fn stats_of(s: &bollard::models::ContainerStatsResponse) -> InstanceStats {
    let total = |c: Option<&bollard::models::ContainerCpuStats>| {
        c.map(|c| (c.cpu_usage.as_ref().and_then(|u| u.total_usage).unwrap_or(0), c.system_cpu_usage.unwrap_or(0)))
    };
    let cpu_percent = match (total(s.cpu_stats.as_ref()), total(s.precpu_stats.as_ref())) {
        (Some((cpu, sys)), Some((pre_cpu, pre_sys))) if sys > pre_sys && pre_sys > 0 => {
            let cpus = s.cpu_stats.as_ref().and_then(|c| c.online_cpus.map(u64::from)).filter(|n| *n > 0).unwrap_or(1);
            Some(cpu.saturating_sub(pre_cpu) as f64 / (sys - pre_sys) as f64 * cpus as f64 * 100.0)
        }
        _ => None,
    };
    let memory = s.memory_stats.as_ref();
    let cache = memory
        .and_then(|m| m.stats.as_ref())
        .and_then(|st| st.get("total_inactive_file").or_else(|| st.get("inactive_file")).copied())
        .unwrap_or(0);
    let (mut rx, mut tx) = (0u64, 0u64);
    for net in s.networks.iter().flat_map(|n| n.values()) {
        rx = rx.saturating_add(net.rx_bytes.unwrap_or(0));
        tx = tx.saturating_add(net.tx_bytes.unwrap_or(0));
    }
    let (mut read, mut write) = (0u64, 0u64);
    for entry in s.blkio_stats.iter().flat_map(|b| b.io_service_bytes_recursive.iter().flatten()) {
        match entry.op.as_deref().map(str::to_ascii_lowercase).as_deref() {
            Some("read") => read = read.saturating_add(entry.value.unwrap_or(0)),
            Some("write") => write = write.saturating_add(entry.value.unwrap_or(0)),
            _ => {}
        }
    }
    InstanceStats {
        cpu_percent,
        memory_bytes: memory.and_then(|m| m.usage).unwrap_or(0).saturating_sub(cache),
        memory_limit_bytes: memory.and_then(|m| m.limit),
        pids: s.pids_stats.as_ref().and_then(|p| p.current),
        network_rx_bytes: rx,
        network_tx_bytes: tx,
        block_read_bytes: read,
        block_write_bytes: write,
    }
}

/// Label on a snapshot image: the instance it was taken from.
pub(crate) const SNAPSHOT_OF: &str = "aenv.io/snapshot-of";
/// Label on a snapshot image: the operator id that made it.
pub(crate) const SNAPSHOT_BY: &str = "aenv.io/snapshot-by";
/// Label on a snapshot image: the template (`name@version`) it was made for.
pub(crate) const SNAPSHOT_TEMPLATE: &str = "aenv.io/snapshot-template";
/// Where snapshot images are named: `aenv-snapshot/<name>:<version>` is the image of template `name@version`.
pub(crate) const SNAPSHOT_REPO_PREFIX: &str = "aenv-snapshot/";

/// Commits `container`'s filesystem as `reference` (`repo:tag`). Docker makes the container's config (its labels
/// included) the image's, and containers inherit an image's labels: every label of the container is blanked in
/// the image, so that no container started from it looks like this operator's, or carries an old expiry, unless
/// the operator labels it itself.
pub(crate) async fn snapshot(
    docker: &Docker,
    container: &str,
    reference: &str,
    operator_id: &str,
) -> Result<String, EngineError> {
    let context = format!("snapshotting {container}");
    let (repo, tag) = reference
        .rsplit_once(':')
        .ok_or_else(|| EngineError::permanent(format!("{context}: {reference:?} has no tag")))?;
    let inspect = docker
        .inspect_container(container, None::<bollard::query_parameters::InspectContainerOptions>)
        .await
        .map_err(|e| classify_op(&context, e))?;
    let mut labels: std::collections::HashMap<String, String> =
        inspect.config.and_then(|c| c.labels).unwrap_or_default().into_keys().map(|k| (k, String::new())).collect();
    labels.insert(SNAPSHOT_OF.into(), container.to_string());
    labels.insert(SNAPSHOT_BY.into(), operator_id.to_string());
    if let Some(name) = repo.strip_prefix(SNAPSHOT_REPO_PREFIX) {
        labels.insert(SNAPSHOT_TEMPLATE.into(), format!("{name}@{tag}"));
    }
    // A paused container is committed as it is (Docker pauses a running one for the commit itself).
    let options = CommitContainerOptionsBuilder::default()
        .container(container)
        .repo(repo)
        .tag(tag)
        .comment("aenv-operator snapshot")
        .pause(true)
        .build();
    let config = bollard::models::ContainerConfig { labels: Some(labels), ..Default::default() };
    let made = docker.commit_container(options, config).await.map_err(|e| classify_op(&context, e))?;
    Ok(made.id)
}

/// Whether memory checkpoints could be taken, from the daemon's experimental flag and `criu` on the host.
pub(crate) fn checkpoint_support(
    experimental: Option<bool>,
    criu: Option<&std::path::Path>,
    check: Option<Result<(), String>>,
) -> aenv_core::CheckpointSupport {
    if let (Some(true), Some(path), Some(Err(why))) = (experimental, criu, &check) {
        return aenv_core::CheckpointSupport {
            available: false,
            reason: format!(
                "the daemon's experimental mode is on and criu is at {}, but `criu check` fails on this host: {why}",
                path.display()
            ),
        };
    }
    let (available, reason) = match (experimental, criu) {
        (None, _) => (false, "the daemon's /info could not be read".to_string()),
        (Some(false), _) => (
            false,
            "the Docker daemon's experimental mode is off (memory checkpoints need \"experimental\": true in its daemon.json, and CRIU on its host)"
                .to_string(),
        ),
        (Some(true), None) => (
            false,
            "the daemon's experimental mode is on, but criu is not on this host's PATH (apt-get install criu)".to_string(),
        ),
        (Some(true), Some(path)) => (
            true,
            format!(
                "the daemon's experimental mode is on and criu is at {}; this operator does not take memory checkpoints yet (snapshots save the filesystem)",
                path.display()
            ),
        ),
    };
    aenv_core::CheckpointSupport { available, reason }
}

/// Runs `criu check` (at most 10 s): its complaint when it fails.
pub(crate) async fn criu_check(criu: &std::path::Path) -> Result<(), String> {
    let run = tokio::process::Command::new(criu).arg("check").kill_on_drop(true).output();
    match tokio::time::timeout(Duration::from_secs(10), run).await {
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => {
            let text = String::from_utf8_lossy(&out.stderr);
            let last = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no output").trim().to_string();
            Err(format!("{} ({last})", out.status))
        }
        Ok(Err(e)) => Err(format!("it could not be run: {e}")),
        Err(_) => Err("it did not finish in 10 s".into()),
    }
}

/// Every snapshot image on the daemon (labelled `aenv.io/snapshot-by` with a value), one per reference under
/// `aenv-snapshot/`.
pub(crate) async fn list_snapshots(docker: &Docker) -> Result<Vec<aenv_core::SnapshotImage>, EngineError> {
    let filters = std::collections::HashMap::from([("label", vec![SNAPSHOT_BY])]);
    let options = bollard::query_parameters::ListImagesOptionsBuilder::default().filters(&filters).build();
    let images = docker.list_images(Some(options)).await.map_err(|e| classify("listing snapshot images", e))?;
    let mut out = Vec::new();
    for image in images {
        let Some(operator_id) = image.labels.get(SNAPSHOT_BY).filter(|v| !v.is_empty()) else { continue };
        let template = image.labels.get(SNAPSHOT_TEMPLATE).filter(|v| !v.is_empty()).cloned();
        let created = jiff::Timestamp::from_second(image.created).ok();
        for reference in image.repo_tags.iter().filter(|r| r.starts_with(SNAPSHOT_REPO_PREFIX)) {
            out.push(aenv_core::SnapshotImage {
                reference: reference.clone(),
                operator_id: operator_id.clone(),
                template: template.clone(),
                created,
            });
        }
    }
    Ok(out)
}

/// Removes a snapshot image (not forced: an image still in use is a conflict).
pub(crate) async fn remove_snapshot(docker: &Docker, reference: &str) -> Result<(), EngineError> {
    let context = format!("removing the snapshot image {reference}");
    let options = RemoveImageOptionsBuilder::default().force(false).noprune(false).build();
    match docker.remove_image(reference, Some(options), None).await {
        Ok(_) => Ok(()),
        Err(e) => match classify_op(&context, e) {
            e if e.kind() == ErrorKind::NotFound => Ok(()),
            e => Err(e),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_need_the_experimental_daemon_and_criu() {
        let criu = Some(std::path::Path::new("/usr/sbin/criu"));
        let off = checkpoint_support(Some(false), criu, None);
        assert!(!off.available && off.reason.contains("experimental mode is off"), "{off:?}");
        let no_criu = checkpoint_support(Some(true), None, None);
        assert!(!no_criu.available && no_criu.reason.contains("criu is not"), "{no_criu:?}");
        let unknown = checkpoint_support(None, None, None);
        assert!(!unknown.available && unknown.reason.contains("/info"), "{unknown:?}");
        let broken = checkpoint_support(Some(true), criu, Some(Err("exit status: 1 (no vdso)".into())));
        assert!(
            !broken.available && broken.reason.contains("criu check") && broken.reason.contains("vdso"),
            "{broken:?}"
        );
        let both = checkpoint_support(Some(true), criu, Some(Ok(())));
        assert!(both.available && both.reason.contains("/usr/sbin/criu"), "{both:?}");
    }
}
