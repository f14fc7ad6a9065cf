//! Operations on a running container: exec through the exec API (create, start attached, inspect for
//! the exit code), files through the archive API (a tar of one file up, a tar of a path down).

use std::time::Duration;

use aenv_core::{
    ByteStream, EngineError, ErrorKind, ExecExit, ExecOutput, ExecRequest, FileUpload, InstanceStats, PathContent,
    SandboxPath,
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

use crate::{
    error::classify,
    kill::{self, Journal, Marker},
};

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
    journal: Journal,
) -> BoxStream<'static, Result<ExecOutput, EngineError>> {
    let (tx, rx) = mpsc::channel(32);
    tokio::spawn(async move {
        if let Err(e) = run_exec(&docker, &container, request, &journal, &tx).await {
            let _ = tx.send(Err(e)).await;
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx).boxed()
}

type Sender = mpsc::Sender<Result<ExecOutput, EngineError>>;

async fn run_exec(
    docker: &Docker,
    container: &str,
    request: ExecRequest,
    journal: &Journal,
    tx: &Sender,
) -> Result<(), EngineError> {
    let context = format!("running a command in {container}");
    // The marker every process of the command inherits (the request cannot set or change it), so that its kill
    // finds them wherever they went.
    let marker = Marker::new();
    let env = request
        .env
        .iter()
        .filter(|(k, _)| k.as_str() != kill::EXEC_ID_VAR)
        .map(|(k, v)| format!("{k}={v}"))
        .chain([marker.env_entry()])
        .collect();
    let config = ExecConfig {
        attach_stdin: Some(request.stdin.is_some()),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        tty: Some(false),
        env: Some(env),
        cmd: Some(request.command.clone()),
        user: request.user.clone(),
        working_dir: request.workdir.clone(),
        ..Default::default()
    };
    let created = docker.create_exec(container, config).await.map_err(|e| classify_op(&context, e))?;
    // Journalled before it starts, so that no command runs that a restarted operator would not know of.
    let container_id =
        docker.inspect_exec(&created.id).await.map_err(|e| classify_op(&context, e))?.container_id.ok_or_else(
            || EngineError::transient(format!("{context}: the daemon did not say which container runs it")),
        )?;
    let _journalled = journal.record(&marker, &container_id, request.timeout).map_err(EngineError::transient)?;
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
    // The deadline is watched while the output is handed on too: a caller that stops reading (its buffer full)
    // cannot hold the command past its timeout.
    let timed_out = loop {
        let item = tokio::select! {
            item = output.next() => item,
            () = &mut deadline => break true,
            () = tx.closed() => { gone = true; break false; }
        };
        let piece = match item {
            None => break false,
            Some(Ok(LogOutput::StdOut { message } | LogOutput::Console { message })) => {
                ExecOutput::Stdout(message.to_vec())
            }
            Some(Ok(LogOutput::StdErr { message })) => ExecOutput::Stderr(message.to_vec()),
            Some(Ok(LogOutput::StdIn { .. })) => continue,
            Some(Err(e)) => return Err(classify_op(&context, e)),
        };
        tokio::select! {
            sent = tx.send(Ok(piece)) => if sent.is_err() { gone = true; break false; },
            () = &mut deadline => break true,
        }
    };
    // A caller that went away takes its command with it, as a timeout does.
    let mut message = None;
    let killed = if timed_out || gone {
        match kill_exec(docker, &created.id, &container_id, &marker).await {
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

/// Kills an exec's processes and everything they started (see [`crate::kill`]): the daemon says which process
/// the command is, if it still runs; the marker finds the rest. That needs the daemon on this host and the right
/// to signal its processes (root, as the operator runs next to a local daemon); otherwise the reason is returned.
pub(crate) async fn kill_exec(docker: &Docker, id: &str, container_id: &str, marker: &Marker) -> Result<(), String> {
    let inspect =
        docker.inspect_exec(id).await.map_err(|e| format!("the daemon did not say which process it is: {e}"))?;
    let pid = match inspect.pid.filter(|p| *p > 0) {
        Some(pid) if inspect.running != Some(false) => {
            Some(i32::try_from(pid).map_err(|_| format!("the daemon reported pid {pid}"))?)
        }
        _ => None,
    };
    let (container_id, marker) = (container_id.to_string(), marker.clone());
    tokio::task::spawn_blocking(move || kill::kill_command(&container_id, &marker, pid).map(|_| ()))
        .await
        .map_err(|e| format!("the kill did not run: {e}"))?
}

/// Go's `os.ModeDir`, as the archive API's path stat reports modes.
const GO_MODE_DIR: u32 = 1 << 31;

/// The daemon's stat of `path` (a HEAD of the archive API): `None` when there is nothing there.
pub(crate) async fn stat(
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

/// Reads `path` in `container` through the archive API, streamed: a file's bytes as the daemon sends them (its
/// tar header read off the front), a directory's tar as it is. Neither is ever held whole: memory per download is
/// a few chunks whatever the size.
///
/// A file known to be over `max_bytes` is refused before a byte moves (the stat says its size); a directory's
/// size is not known beforehand, so its tar ends with an error once past `max_bytes` (the client sees a body cut
/// short, never a whole-looking archive).
pub(crate) async fn read_path(
    docker: &Docker,
    container: &str,
    path: &SandboxPath,
    max_bytes: u64,
) -> Result<PathContent, EngineError> {
    let context = format!("reading {} in {container}", path.as_str());
    let is_dir = match stat(docker, container, path.as_str(), &context).await? {
        None => {
            return Err(EngineError::new(ErrorKind::NotFound, format!("no such file or directory: {}", path.as_str())));
        }
        Some(s) if s.file_mode & GO_MODE_DIR == 0 && s.size > 0 && s.size as u64 > max_bytes => {
            return Err(EngineError::new(
                ErrorKind::TooLarge,
                format!("{} is {} bytes, more than this operator serves ({max_bytes} bytes)", path.as_str(), s.size),
            ));
        }
        Some(s) => s.file_mode & GO_MODE_DIR != 0,
    };
    let options = DownloadFromContainerOptionsBuilder::default().path(path.as_str()).build();
    let tar =
        docker.download_from_container(container, Some(options)).map(|piece| piece.map_err(std::io::Error::other));
    if is_dir {
        return Ok(PathContent::Directory { body: capped(tar.boxed(), max_bytes, path.as_str().to_string()) });
    }
    file_of_tar(path, tar.boxed(), max_bytes).await
}

/// The first entry of a tar stream, a regular file, as its size, mode and bytes (the rest of the archive is not
/// read). A directory there (the path changed since its stat) is [`ErrorKind::Transient`]; a link or a device
/// [`ErrorKind::Permanent`]; over `max_bytes` [`ErrorKind::TooLarge`].
async fn file_of_tar(path: &SandboxPath, tar: ByteStream, max_bytes: u64) -> Result<PathContent, EngineError> {
    let context = format!("reading {}", path.as_str());
    let bad = |e: std::io::Error| {
        EngineError::transient(format!("{context}: the archive of it does not read: {e}")).with_source(e)
    };
    let mut archive = tokio_tar::Archive::new(tokio_util::io::StreamReader::new(tar));
    let mut entries = archive.entries().map_err(bad)?;
    let Some(first) = entries.next().await else {
        return Err(EngineError::transient(format!("{context}: the archive of it is empty")));
    };
    let first = first.map_err(bad)?;
    let header = first.header();
    let kind = header.entry_type();
    if kind.is_dir() {
        return Err(EngineError::transient(format!("{context}: it became a directory while read; read it again")));
    }
    if !kind.is_file() {
        return Err(EngineError::permanent(format!(
            "{} is not a regular file or a directory (a link or a device): read what it points to",
            path.as_str()
        )));
    }
    let mode = header.mode().unwrap_or(0o644);
    let size = header.size().map_err(bad)?;
    if size > max_bytes {
        return Err(EngineError::new(
            ErrorKind::TooLarge,
            format!("{} is {size} bytes, more than this operator serves ({max_bytes} bytes)", path.as_str()),
        ));
    }
    Ok(PathContent::File { size, mode, body: tokio_util::io::ReaderStream::new(first).boxed() })
}

/// `body`, ending with an error once it has yielded more than `max_bytes` (plus the tar's own headers and
/// padding, which a directory of small files has many of: 64 KiB, as a file's archive allows).
fn capped(body: ByteStream, max_bytes: u64, what: String) -> ByteStream {
    let cap = max_bytes.saturating_add(64 * 1024);
    futures::stream::unfold(Some((body, 0u64)), move |state| {
        let what = what.clone();
        async move {
            let (mut body, seen) = state?;
            match body.next().await {
                Some(Ok(piece)) if seen + piece.len() as u64 > cap => Some((
                    Err(std::io::Error::new(
                        std::io::ErrorKind::FileTooLarge,
                        format!("{what} is larger than this operator serves ({max_bytes} bytes); read a part of it"),
                    )),
                    None,
                )),
                Some(Ok(piece)) => {
                    let seen = seen + piece.len() as u64;
                    Some((Ok(piece), Some((body, seen))))
                }
                Some(Err(e)) => Some((Err(e), None)),
                None => None,
            }
        }
    })
    .boxed()
}

/// Writes one file into `container`: a tar holding it, extracted in its parent directory.
pub(crate) async fn write_file(docker: &Docker, container: &str, upload: FileUpload) -> Result<(), EngineError> {
    let context = format!("writing {} in {container}", upload.path.as_str());
    refuse_fixed_target(docker, container, &upload.path, &context).await?;
    let parent = upload.path.parent().to_string();
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
        .into_tar(jiff::Timestamp::now().as_second().max(0) as u64)
        .map_err(|e| EngineError::permanent(format!("{context}: {e}")).with_source(e))?;
    let options = UploadToContainerOptionsBuilder::default()
        .path(parent.as_str())
        // A file may not replace a directory (nor the reverse).
        .no_overwrite_dir_non_dir("true")
        .build();
    // Streamed: the archive goes to the daemon as the client's body comes, never held whole.
    docker
        .upload_to_container(container, Some(options), bollard::body_try_stream(tar))
        .await
        .map_err(|e| classify_op(&context, e))
}

/// Refuses, before anything is sent, a write Docker would refuse for good with a bare 500 (one that says only
/// its message): told by the container's inspect, never by the message.
async fn refuse_fixed_target(
    docker: &Docker,
    container: &str,
    path: &SandboxPath,
    context: &str,
) -> Result<(), EngineError> {
    let inspect = docker
        .inspect_container(container, None::<bollard::query_parameters::InspectContainerOptions>)
        .await
        .map_err(|e| classify_op(context, e))?;
    let managed = [
        ("/etc/hosts", inspect.hosts_path.as_deref()),
        ("/etc/hostname", inspect.hostname_path.as_deref()),
        ("/etc/resolv.conf", inspect.resolv_conf_path.as_deref()),
    ];
    let managed: Vec<&str> =
        managed.iter().filter(|(_, host)| host.is_some_and(|h| !h.is_empty())).map(|(p, _)| *p).collect();
    let mounts: Vec<(String, bool)> = inspect
        .mounts
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| Some((m.destination?, m.rw.unwrap_or(true))))
        .collect();
    let read_only_root = inspect.host_config.and_then(|h| h.readonly_rootfs).unwrap_or(false);
    match fixed_target(path.as_str(), &managed, &mounts, read_only_root) {
        None => Ok(()),
        Some(why) => Err(EngineError::new(ErrorKind::Conflict, format!("{context}: {why}"))),
    }
}

/// Why writing `path` cannot succeed in a container with these Docker-managed files (bind-mounted from the host),
/// these mounts (destination, writable) and this root filesystem: the extraction replaces the file, which a mount
/// point never allows and a read-only filesystem neither; `None` when it may.
fn fixed_target(path: &str, managed: &[&str], mounts: &[(String, bool)], read_only_root: bool) -> Option<String> {
    if managed.contains(&path) {
        return Some(format!(
            "{path} is bind-mounted into the sandbox by Docker and cannot be replaced through the files API; write its content in place with exec instead (such as `sh -c 'cat > {path}'` with the content as stdin)"
        ));
    }
    if mounts.iter().any(|(dest, _)| dest == path) {
        return Some(format!(
            "{path} is a mount point of the sandbox and cannot be replaced through the files API; write its content in place with exec instead"
        ));
    }
    let under = |dest: &str| path.strip_prefix(dest).is_some_and(|rest| rest.starts_with('/') || dest == "/");
    let covering = mounts.iter().filter(|(dest, _)| under(dest)).max_by_key(|(dest, _)| dest.len());
    match covering {
        Some((dest, false)) => {
            Some(format!("{path} is on a read-only mount of the sandbox ({dest}): nothing can be written there"))
        }
        Some((_, true)) => None,
        None if read_only_root => Some(format!(
            "the sandbox's root filesystem is read-only: {path} cannot be written (write under a writable mount, such as a tmpfs)"
        )),
        None => None,
    }
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
/// Where snapshot images are named: `aenv-snapshot/<name>:<version>.<random>` is an image of template
/// `name@version` (the random part makes each snapshot's name its own, never one a caller could guess).
pub(crate) const SNAPSHOT_REPO_PREFIX: &str = "aenv-snapshot/";

/// Why naming `image` directly is refused, if it is: it is under the snapshot repository (however the registry
/// part is spelled: `docker.io/aenv-snapshot/...` is the same local image), or it is an image id or a prefix of
/// one (`sha256:...`, or a bare hex string), which the daemon looks up among every image on the host, snapshots
/// included.
pub fn snapshot_spelling(image: &str) -> Option<&'static str> {
    let image = image.trim().to_ascii_lowercase();
    let hex = image.strip_prefix("sha256:").unwrap_or(&image);
    if image.starts_with("sha256:") || (!hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit())) {
        return Some(
            "is an image id (or a prefix of one), which could name any image on the host, snapshots included: name the image by repository and tag",
        );
    }
    let path = match image.split_once('/') {
        Some((first, rest)) if first.contains('.') || first.contains(':') || first == "localhost" => rest,
        _ => image.as_str(),
    };
    let path = path.strip_prefix("library/").unwrap_or(path);
    path.starts_with(SNAPSHOT_REPO_PREFIX).then_some(
        "is a snapshot image: a snapshot is used through its template (create with `envName` name@version), by those the template's sharing allows",
    )
}

/// [`snapshot_spelling`] as a refusal naming `field`.
pub fn refuse_snapshot_image(image: &str, field: &str) -> Result<(), aenv_core::InvalidSpec> {
    match snapshot_spelling(image) {
        None => Ok(()),
        Some(why) => Err(aenv_core::InvalidSpec::new(field, format!("field `{field}`: {image:?} {why}"))),
    }
}

/// Refuses a spec whose image, or one of whose stack's images, [`snapshot_spelling`] refuses, naming the field
/// (`image`, `services.<name>.image`).
pub fn refuse_snapshot_images(
    spec: &aenv_core::EnvInstanceSpec,
    policy: &crate::Policy,
) -> Result<(), aenv_core::InvalidSpec> {
    match spec.workload() {
        aenv_core::Workload::Stack { compose_file } => {
            // A file that does not plan is refused by the engine's validation, naming what is wrong with it.
            let Ok(stack) = crate::compose::plan(spec, compose_file, policy) else { return Ok(()) };
            for svc in &stack.services {
                refuse_snapshot_image(&svc.image, &format!("services.{}.image", svc.name))?;
            }
            Ok(())
        }
        aenv_core::Workload::Container { image } => image.map_or(Ok(()), |i| refuse_snapshot_image(i, "image")),
    }
}

/// Commits `container`'s filesystem as `reference` (`repo:tag`), the image of `template` (`name@version`).
/// Docker makes the container's config (its labels included) the image's, and containers inherit an image's
/// labels: every label of the container is blanked in the image, so that no container started from it looks like
/// this operator's, or carries an old expiry, unless the operator labels it itself.
pub(crate) async fn snapshot(
    docker: &Docker,
    container: &str,
    reference: &str,
    template: &str,
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
    labels.insert(SNAPSHOT_TEMPLATE.into(), template.to_string());
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

/// What a commit of `container` would weigh: its size with its image's layers (`SizeRootFs`, the measure
/// `docker images` gives the committed image), when the daemon reports it.
pub(crate) async fn snapshot_size(docker: &Docker, container: &str) -> Result<Option<u64>, EngineError> {
    let options = bollard::query_parameters::InspectContainerOptionsBuilder::default().size(true).build();
    let inspect = docker
        .inspect_container(container, Some(options))
        .await
        .map_err(|e| classify_op(&format!("measuring {container}"), e))?;
    Ok(inspect.size_root_fs.and_then(|s| u64::try_from(s).ok()))
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
/// `aenv-snapshot/`, with its size.
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
                size: u64::try_from(image.size).ok(),
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
    fn snapshot_images_are_refused_however_they_are_spelled() {
        for image in [
            "aenv-snapshot/env:1.abc",
            "docker.io/aenv-snapshot/env:1",
            "index.docker.io/aenv-snapshot/env@sha256:0123",
            "localhost:5000/aenv-snapshot/env",
            "docker.io/library/aenv-snapshot/env:1",
            " AENV-SNAPSHOT/env:1",
            "sha256:5e2ab43652be8c7ab0a9c6d7ad394c8172bd348036243ec0fb4c71b42e8d9358",
            "sha256:5e",
            "5e2a",
            "5",
            "cafe",
        ] {
            assert!(snapshot_spelling(image).is_some(), "{image:?} passed");
        }
        for image in
            ["alpine:3.20", "aenv-snapshot:1", "team/aenv-snapshot/x", "cafe:1", "ghcr.io/x/y@sha256:0a", "bad-image"]
        {
            assert!(snapshot_spelling(image).is_none(), "{image:?} refused");
        }
        let e = refuse_snapshot_image("docker.io/aenv-snapshot/x:1", "services.web.image").unwrap_err();
        assert_eq!(e.field, "services.web.image");
        assert!(e.message.contains("`services.web.image`") && e.message.contains("template"), "{}", e.message);
    }

    #[test]
    fn writes_docker_refuses_for_good_are_told_by_the_container_s_mounts() {
        let managed = ["/etc/hosts", "/etc/resolv.conf"];
        let mounts = vec![("/data".to_string(), true), ("/ro".to_string(), false), ("/etc/app.conf".to_string(), true)];
        let why = |p: &str, ro: bool| fixed_target(p, &managed, &mounts, ro);
        assert!(why("/etc/hosts", false).is_some_and(|w| w.contains("bind-mounted into the sandbox by Docker")));
        assert!(why("/etc/app.conf", false).is_some_and(|w| w.contains("mount point")));
        assert!(why("/ro/a", false).is_some_and(|w| w.contains("read-only mount")));
        assert!(why("/rot/a", false).is_none(), "a prefix of a name is not a parent");
        assert!(why("/tmp/a", false).is_none());
        assert!(why("/etc/hostname", false).is_none(), "a file Docker does not manage here");
        assert!(why("/tmp/a", true).is_some_and(|w| w.contains("root filesystem is read-only")));
        assert!(why("/data/a", true).is_none(), "a writable mount over a read-only root");
    }

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
