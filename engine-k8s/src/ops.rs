//! Operations on a running Pod through the Pod exec API (`pods/exec`, a WebSocket speaking
//! `v5.channel.k8s.io` or `v4.channel.k8s.io`): commands, and files as `kubectl cp` moves them (a tar through
//! `tar` in the container).
//!
//! The exec API has no working directory, environment, user or kill of its own, so a command runs under a small
//! `sh` wrapper: it writes its pid on stdout (read and removed here), exports the request's environment, changes
//! to its working directory and `exec`s the command, which keeps that pid. Past the timeout a second exec stops
//! and kills that process and its descendants. An image without `sh` still runs commands: the wrapper's failure
//! to start is seen (the runtime answers with no exit code and the wrapper wrote nothing) and the command runs
//! bare, without `env`/`workdir` (refused then) and without a kill at its timeout (said in the answer).
//!
//! What the image must have: `sh` for `env`, `workdir` and the timeout kill; `sh` and `tar` (and `cat`,
//! `chmod`) for files, as `kubectl cp` needs `tar`.

use std::time::Duration;

use aenv_core::{EngineError, ErrorKind, ExecExit, ExecOutput, ExecRequest, FileUpload, PathContent, SandboxPath};
use futures::{StreamExt, stream::BoxStream};
use k8s_openapi::{api::core::v1::Pod, apimachinery::pkg::apis::meta::v1::Status};
use kube::{
    Api,
    api::{AttachParams, AttachedProcess},
};
use tokio::{io::AsyncWriteExt, sync::mpsc};
use tokio_util::io::ReaderStream;
use tracing::{debug, warn};

use crate::{error::classify_op, pod::CONTAINER_NAME};

/// What the wrapper writes on stdout before anything else: `aenv-exec-pid:<pid>\n`.
const PID_MARKER: &[u8] = b"aenv-exec-pid:";

/// Buffer of each stream between the WebSocket and this module.
const PIPE_BYTES: usize = 64 * 1024;

/// Most of a helper command's stderr kept for a message.
const HELPER_STDERR: usize = 4096;

/// How long a helper command (the kill, a file's move) may take before it is given up, beyond its data.
const HELPER_TIMEOUT: Duration = Duration::from_secs(120);

/// Stops a process and every descendant (found through `/proc/<pid>/task/*/children`), top first so that none
/// forks meanwhile, then kills them. `$1` is the pid. Then kills every process of the container whose environment carries the command's marker (`$2`: the
/// wrapper exports it, every descendant inherits it), which finds those that left the tree (a double fork,
/// `setsid`), scanning again while it finds some.
const KILL_TREE: &str = r#"t() { kill -STOP "$1" 2>/dev/null; for c in $(cat /proc/"$1"/task/*/children 2>/dev/null); do t "$c"; done; kill -KILL "$1" 2>/dev/null; }
kill -0 "$1" 2>/dev/null && t "$1"
m="AENV_EXEC_ID=$2"
for i in 1 2 3 4 5; do
  f=
  for d in /proc/[0-9]*; do
    if tr '\0' '\n' < "$d/environ" 2>/dev/null | grep -qxF "$m"; then kill -KILL "${d#/proc/}" 2>/dev/null && f=1; fi
  done
  [ -n "$f" ] || break
done
exit 0"#;

/// The variable that marks the processes of one command, for its kill.
const EXEC_ID_VAR: &str = "AENV_EXEC_ID";

/// Exit codes of the file scripts, chosen outside what `sh` (1, 2, 126, 127) and `tar` (1, 2) use.
const NO_TAR: i64 = 43;
const MISSING: i64 = 44;
const TOO_LARGE: i64 = 45;
const PARENT_NOT_DIR: i64 = 46;
const IS_DIR: i64 = 47;

/// Reads `$1` (a file or directory) as a tar of `$3` in `$2`, refusing a regular file over `$4` bytes first.
const READ_SCRIPT: &str = r#"command -v tar >/dev/null 2>&1 || exit 43
if [ ! -e "$1" ] && [ ! -L "$1" ]; then exit 44; fi
if [ -f "$1" ] && [ ! -L "$1" ]; then s=$(wc -c < "$1") || exit 2; if [ "$s" -gt "$4" ]; then echo "$s" >&2; exit 45; fi; fi
exec tar -cf - -C "$2" -- "$3""#;

/// Extracts the tar on stdin (one file, `$2`) in directory `$1` and sets its mode to `$3`. The checks that fail
/// read the input first, so that the client's upload ends before the answer.
const WRITE_SCRIPT: &str = r#"command -v tar >/dev/null 2>&1 || { cat >/dev/null; exit 43; }
if [ ! -d "$1" ]; then cat >/dev/null; if [ -e "$1" ]; then exit 46; fi; exit 44; fi
if [ -d "$1/$2" ] && [ ! -L "$1/$2" ]; then cat >/dev/null; exit 47; fi
tar -xf - -C "$1" || exit $?
chmod "$3" "$1/$2" 2>/dev/null || true"#;

/// What a run of a command came to.
enum Ended {
    /// The runtime's exit code.
    Code(i64),
    /// The runtime could not start it (no such program): its message, and no exit code.
    NotStarted(String),
    /// The stream closed without a status.
    Unknown,
}

/// The exit a status carries: `Success` is 0, a failure names its code as a cause `ExitCode`; a failure without
/// one is a command the runtime could not start.
fn ended(status: Option<Status>) -> Ended {
    let Some(status) = status else { return Ended::Unknown };
    if status.status.as_deref() == Some("Success") {
        return Ended::Code(0);
    }
    let code = status
        .details
        .as_ref()
        .and_then(|d| d.causes.as_ref())
        .into_iter()
        .flatten()
        .find(|c| c.reason.as_deref() == Some("ExitCode"))
        .and_then(|c| c.message.as_deref()?.trim().parse().ok());
    match code {
        Some(code) => Ended::Code(code),
        None => Ended::NotStarted(status.message.unwrap_or_else(|| "the command could not be started".into())),
    }
}

/// A started command: its output streams and its status.
struct Started {
    process: AttachedProcess,
    stdout: ReaderStream<tokio::io::ReadHalf<tokio::io::SimplexStream>>,
    stderr: ReaderStream<tokio::io::ReadHalf<tokio::io::SimplexStream>>,
}

impl Started {
    /// The exit, once both streams ended (the status comes after the output); at most `wait` for it.
    async fn status(&mut self, wait: Duration) -> Ended {
        match self.process.take_status() {
            Some(status) => match tokio::time::timeout(wait, status).await {
                Ok(status) => ended(status),
                Err(_) => Ended::Unknown,
            },
            None => Ended::Unknown,
        }
    }
}

/// Starts `command` in the Pod's main container; `stdin` is written to its input, which is then closed.
async fn start(
    pods: &Api<Pod>,
    pod: &str,
    command: Vec<String>,
    stdin: Option<Vec<u8>>,
    context: &str,
) -> Result<Started, EngineError> {
    let params = AttachParams::default()
        .container(CONTAINER_NAME)
        .stdin(stdin.is_some())
        .stdout(true)
        .stderr(true)
        .max_stdin_buf_size(PIPE_BYTES)
        .max_stdout_buf_size(PIPE_BYTES)
        .max_stderr_buf_size(PIPE_BYTES);
    let mut process = pods.exec(pod, command, &params).await.map_err(|e| classify_op(context, e))?;
    let (Some(stdout), Some(stderr)) = (process.stdout(), process.stderr()) else {
        return Err(EngineError::transient(format!("{context}: the exec stream has no output")));
    };
    if let Some(bytes) = stdin
        && let Some(mut input) = process.stdin()
    {
        // On its own task, so that a command that writes before it reads cannot block on us.
        tokio::spawn(async move {
            if let Err(e) = input.write_all(&bytes).await {
                debug!(error = %e, "writing a command's input");
            }
            let _ = input.shutdown().await;
        });
    }
    Ok(Started { process, stdout: ReaderStream::new(stdout), stderr: ReaderStream::new(stderr) })
}

/// A helper command's whole output and exit.
struct Collected {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    ended: Ended,
}

/// Runs a helper command to its end: `None` when its stdout grows past `max_stdout` (it is then abandoned).
async fn collect(
    pods: &Api<Pod>,
    pod: &str,
    command: Vec<String>,
    stdin: Option<Vec<u8>>,
    max_stdout: u64,
    context: &str,
) -> Result<Option<Collected>, EngineError> {
    let mut started = start(pods, pod, command, stdin, context).await?;
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let (mut out_open, mut err_open) = (true, true);
    let deadline = tokio::time::sleep(HELPER_TIMEOUT);
    tokio::pin!(deadline);
    while out_open || err_open {
        tokio::select! {
            chunk = started.stdout.next(), if out_open => match chunk {
                Some(Ok(bytes)) => {
                    stdout.extend_from_slice(&bytes);
                    if stdout.len() as u64 > max_stdout {
                        return Ok(None);
                    }
                }
                Some(Err(e)) => return Err(stream_broke(context, e)),
                None => out_open = false,
            },
            chunk = started.stderr.next(), if err_open => match chunk {
                Some(Ok(bytes)) => {
                    let room = HELPER_STDERR.saturating_sub(stderr.len());
                    stderr.extend_from_slice(&bytes[..bytes.len().min(room)]);
                }
                Some(Err(e)) => return Err(stream_broke(context, e)),
                None => err_open = false,
            },
            () = &mut deadline => {
                return Err(EngineError::transient(format!(
                    "{context}: no answer in {} s",
                    HELPER_TIMEOUT.as_secs()
                )));
            }
        }
    }
    let ended = started.status(Duration::from_secs(5)).await;
    Ok(Some(Collected { stdout, stderr, ended }))
}

fn stream_broke(context: &str, e: std::io::Error) -> EngineError {
    EngineError::transient(format!("{context}: the exec stream broke: {e}")).with_source(e)
}

fn quote(text: &str, field: &str) -> Result<String, EngineError> {
    shlex::try_quote(text)
        .map(|q| q.into_owned())
        .map_err(|_| EngineError::permanent(format!("field `{field}` contains a NUL character")))
}

/// `sh -c <wrapper> sh <command...>`: the wrapper writes its pid, sets the environment and the directory, and
/// becomes the command.
fn wrapped(request: &ExecRequest, marker: &str) -> Result<Vec<String>, EngineError> {
    let mut script = String::from("printf 'aenv-exec-pid:%s\\n' \"$$\"\n");
    for (name, value) in request.env.iter().filter(|(name, _)| name.as_str() != EXEC_ID_VAR) {
        let is_identifier = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !is_identifier {
            return Err(EngineError::permanent(format!(
                "field `env` has the name {name:?}: on the Kubernetes engine a variable's name must be letters, digits and '_', not starting with a digit (the command's environment is set by `sh`)"
            )));
        }
        script.push_str(&format!("export {name}={}\n", quote(value, &format!("env.{name}"))?));
    }
    if let Some(dir) = &request.workdir {
        script.push_str(&format!("cd {} || exit 126\n", quote(dir, "workdir")?));
    }
    // Last, so that the request's `env` cannot set it: the marker is hex, nothing to quote.
    script.push_str(&format!("export {EXEC_ID_VAR}={marker}\n"));
    script.push_str("exec \"$@\"");
    let mut command = vec!["sh".to_string(), "-c".into(), script, "sh".into()];
    command.extend(request.command.iter().cloned());
    Ok(command)
}

/// Runs `request` in Pod `pod`, streaming what it writes; the exit is the last item.
pub(crate) fn exec(
    pods: Api<Pod>,
    pod: String,
    request: ExecRequest,
) -> BoxStream<'static, Result<ExecOutput, EngineError>> {
    let (tx, rx) = mpsc::channel(32);
    tokio::spawn(async move {
        if let Err(e) = run_exec(&pods, &pod, request, &tx).await {
            let _ = tx.send(Err(e)).await;
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx).boxed()
}

type Sender = mpsc::Sender<Result<ExecOutput, EngineError>>;

async fn run_exec(pods: &Api<Pod>, pod: &str, request: ExecRequest, tx: &Sender) -> Result<(), EngineError> {
    let context = format!("running a command in Pod {pod}");
    if request.command.is_empty() {
        return Err(EngineError::permanent("field `command` is empty: name the program to run"));
    }
    if request.user.is_some() {
        return Err(EngineError::permanent(
            "field `user`: the Kubernetes engine runs commands as the Pod's own user (the Pod exec API cannot switch users); leave `user` out, or set the user in the image or the Pod's securityContext",
        ));
    }
    let marker = format!("{:032x}", rand::random::<u128>());
    let command = wrapped(&request, &marker)?;
    match run(pods, pod, command, &request, Some(&marker), tx, &context).await? {
        None => Ok(()),
        // `sh` could not be started: the image has none. The command runs bare.
        Some(why) => {
            if !request.env.is_empty() || request.workdir.is_some() {
                return Err(EngineError::new(
                    ErrorKind::Unsupported,
                    format!(
                        "the image has no `sh`, which the Kubernetes engine needs to set `env` and `workdir` for a command (the runtime said: {why}); leave them out, or add a shell to the image"
                    ),
                ));
            }
            debug!(pod, "no sh in the image: the command runs bare");
            // Unwrapped, a program that cannot start is an exit (127), never `Some`.
            run(pods, pod, request.command.clone(), &request, None, tx, &context).await.map(|_| ())
        }
    }
}

/// Runs `command` (the wrapper when `wrapper`, the command's marker), sending its output and exit to `tx`. `Some(message)` when the
/// wrapper itself could not start (no `sh`): then nothing was sent.
async fn run(
    pods: &Api<Pod>,
    pod: &str,
    command: Vec<String>,
    request: &ExecRequest,
    wrapper: Option<&str>,
    tx: &Sender,
    context: &str,
) -> Result<Option<String>, EngineError> {
    let mut started = start(pods, pod, command, request.stdin.clone(), context).await?;
    // The wrapper's first line (its pid), until it is read whole.
    let mut head: Option<Vec<u8>> = wrapper.map(|_| Vec::new());
    let mut pid: Option<u32> = None;
    let (mut out_open, mut err_open) = (true, true);
    let deadline = tokio::time::sleep(request.timeout);
    tokio::pin!(deadline);
    let mut gone = false;
    let mut timed_out = false;
    while out_open || err_open {
        tokio::select! {
            chunk = started.stdout.next(), if out_open => match chunk {
                Some(Ok(bytes)) => {
                    let bytes = match head.as_mut() {
                        None => bytes.to_vec(),
                        Some(buf) => {
                            buf.extend_from_slice(&bytes);
                            match split_marker(buf) {
                                Marker::Incomplete => continue,
                                Marker::Pid(p, rest) => { pid = Some(p); head = None; rest }
                                Marker::Absent => head.take().unwrap_or_default(),
                            }
                        }
                    };
                    if !bytes.is_empty() && tx.send(Ok(ExecOutput::Stdout(bytes))).await.is_err() {
                        gone = true;
                        break;
                    }
                }
                Some(Err(e)) => return Err(stream_broke(context, e)),
                None => out_open = false,
            },
            chunk = started.stderr.next(), if err_open => match chunk {
                Some(Ok(bytes)) => {
                    if tx.send(Ok(ExecOutput::Stderr(bytes.to_vec()))).await.is_err() {
                        gone = true;
                        break;
                    }
                }
                Some(Err(e)) => return Err(stream_broke(context, e)),
                None => err_open = false,
            },
            () = &mut deadline => { timed_out = true; break; }
            () = tx.closed() => { gone = true; break; }
        }
    }
    if let Some(rest) = head.take().filter(|b| !b.is_empty()) {
        let _ = tx.send(Ok(ExecOutput::Stdout(rest))).await;
    }
    if !(timed_out || gone) {
        let exit = match started.status(Duration::from_secs(5)).await {
            Ended::Code(code) => ExecExit { exit_code: Some(code), ..Default::default() },
            Ended::NotStarted(why) if wrapper.is_some() && pid.is_none() => return Ok(Some(why)),
            // The runtime could not start the program: as Docker does, its message and 127.
            Ended::NotStarted(why) => {
                let _ = tx.send(Ok(ExecOutput::Stderr(format!("{why}\n").into_bytes()))).await;
                ExecExit { exit_code: Some(127), ..Default::default() }
            }
            Ended::Unknown => {
                return Err(EngineError::transient(format!(
                    "{context}: the API server closed the exec stream without the command's exit"
                )));
            }
        };
        let _ = tx.send(Ok(ExecOutput::Exited(exit))).await;
        return Ok(None);
    }
    // Past its timeout, or its caller went away: the command goes, with what it started.
    let (killed, message) = match pid {
        Some(pid) => match kill_tree(pods, pod, pid, wrapper.unwrap_or_default()).await {
            Ok(()) => (true, None),
            Err(why) => {
                warn!(pod, reason = %why, "could not kill a command past its timeout");
                (false, Some(why))
            }
        },
        None => (
            false,
            Some(
                "the image has no `sh`, so the command could not be killed; its exec stream was closed, and it may run on until the sandbox goes"
                    .to_string(),
            ),
        ),
    };
    let exit_code = match started.status(Duration::from_secs(2)).await {
        Ended::Code(code) => Some(code),
        _ if killed => Some(137),
        _ => None,
    };
    started.process.abort();
    let exit = ExecExit { exit_code, timed_out, killed, message };
    let _ = tx.send(Ok(ExecOutput::Exited(exit))).await;
    Ok(None)
}

enum Marker {
    /// Not a whole line yet.
    Incomplete,
    /// The pid, and what followed the line.
    Pid(u32, Vec<u8>),
    /// The output does not start with the marker (it is all the command's).
    Absent,
}

fn split_marker(buf: &[u8]) -> Marker {
    let n = buf.len().min(PID_MARKER.len());
    if buf[..n] != PID_MARKER[..n] {
        return Marker::Absent;
    }
    let Some(end) = buf.iter().position(|b| *b == b'\n') else {
        return if buf.len() > PID_MARKER.len() + 20 { Marker::Absent } else { Marker::Incomplete };
    };
    match std::str::from_utf8(&buf[PID_MARKER.len()..end]).ok().and_then(|p| p.parse().ok()) {
        Some(pid) => Marker::Pid(pid, buf[end + 1..].to_vec()),
        None => Marker::Absent,
    }
}

/// Stops and kills process `pid` of the Pod's container and its descendants, through a second exec.
async fn kill_tree(pods: &Api<Pod>, pod: &str, pid: u32, marker: &str) -> Result<(), String> {
    let context = format!("killing a command in Pod {pod}");
    let command =
        vec!["sh".to_string(), "-c".into(), KILL_TREE.into(), "sh".into(), pid.to_string(), marker.to_string()];
    match collect(pods, pod, command, None, 4096, &context).await {
        Ok(Some(Collected { ended: Ended::Code(0), .. })) => Ok(()),
        Ok(Some(Collected { ended: Ended::Code(code), stderr, .. })) => {
            Err(format!("the kill ended with {code}: {}", String::from_utf8_lossy(&stderr).trim()))
        }
        Ok(Some(Collected { ended: Ended::NotStarted(why), .. })) => Err(format!("the kill could not start: {why}")),
        Ok(_) => Err("the kill did not answer".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// The answer to a file script that did not end well.
fn file_failure(context: &str, path: &str, collected: Collected) -> EngineError {
    let stderr = String::from_utf8_lossy(&collected.stderr).trim().to_string();
    match collected.ended {
        Ended::Code(NO_TAR) => EngineError::unsupported(format!(
            "{context}: files move in and out of a Pod through `tar` in its image (as `kubectl cp` does), and this image has none: add tar (GNU or busybox) to it, or move the bytes with exec"
        )),
        Ended::Code(MISSING) => EngineError::new(ErrorKind::NotFound, format!("no such file or directory: {path}")),
        Ended::Code(PARENT_NOT_DIR) => EngineError::new(
            ErrorKind::Conflict,
            format!("{path}'s parent is not a directory: the file cannot go in it"),
        ),
        Ended::Code(IS_DIR) => EngineError::new(
            ErrorKind::Conflict,
            format!("{path} is a directory: a file cannot replace it; name a path inside it"),
        ),
        Ended::Code(code) => EngineError::permanent(format!("{context}: tar ended with {code}: {stderr}")),
        Ended::NotStarted(why) => EngineError::unsupported(format!(
            "{context}: files move in and out of a Pod through `sh` and `tar` in its image, and `sh` could not be started ({why}): add a shell and tar to the image"
        )),
        Ended::Unknown => EngineError::transient(format!(
            "{context}: the API server closed the exec stream without the command's exit; try again"
        )),
    }
}

/// Reads `path` in Pod `pod`: `tar -cf - -C parent name` in the container, at most `max_bytes` of it.
pub(crate) async fn read_path(
    pods: &Api<Pod>,
    pod: &str,
    path: &SandboxPath,
    max_bytes: u64,
) -> Result<PathContent, EngineError> {
    let context = format!("reading {} in Pod {pod}", path.as_str());
    let command = vec![
        "sh".to_string(),
        "-c".into(),
        READ_SCRIPT.into(),
        "sh".into(),
        path.as_str().into(),
        path.parent().into(),
        path.file_name().into(),
        max_bytes.to_string(),
    ];
    // The archive of a file is the file, a 512-byte header and padding: allow for those over the limit.
    let cap = max_bytes.saturating_add(64 * 1024);
    let too_large = || {
        EngineError::new(
            ErrorKind::TooLarge,
            format!("{} is larger than this operator serves ({max_bytes} bytes)", path.as_str()),
        )
    };
    let Some(collected) = collect(pods, pod, command, None, cap, &context).await? else {
        return Err(too_large());
    };
    match collected.ended {
        Ended::Code(0) => PathContent::from_tar(path, collected.stdout, max_bytes),
        Ended::Code(TOO_LARGE) => {
            let size = String::from_utf8_lossy(&collected.stderr).trim().to_string();
            Err(EngineError::new(
                ErrorKind::TooLarge,
                format!("{} is {size} bytes, more than this operator serves ({max_bytes} bytes)", path.as_str()),
            ))
        }
        _ => Err(file_failure(&context, path.as_str(), collected)),
    }
}

/// Writes one file into Pod `pod`: a tar of it extracted by `tar -xf - -C parent` in the container. The owner
/// is the tar's (`tar` run as root keeps it; a Pod running as another user owns what it writes).
pub(crate) async fn write_file(pods: &Api<Pod>, pod: &str, upload: FileUpload) -> Result<(), EngineError> {
    let context = format!("writing {} in Pod {pod}", upload.path.as_str());
    let (path, mode) = (upload.path.clone(), upload.mode);
    // The exec API takes standard input whole here: the archive is collected (the service bounds its size).
    let tar = upload
        .into_tar_bytes(jiff::Timestamp::now().as_second().max(0) as u64)
        .await
        .map_err(|e| EngineError::permanent(format!("{context}: {e}")).with_source(e))?;
    let command = vec![
        "sh".to_string(),
        "-c".into(),
        WRITE_SCRIPT.into(),
        "sh".into(),
        path.parent().into(),
        path.file_name().into(),
        format!("{:o}", mode.unwrap_or(0o644) & 0o7777),
    ];
    let Some(collected) = collect(pods, pod, command, Some(tar), 64 * 1024, &context).await? else {
        return Err(EngineError::transient(format!("{context}: tar wrote more than expected")));
    };
    match collected.ended {
        Ended::Code(0) => Ok(()),
        _ => Err(file_failure(&context, path.as_str(), collected)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pid_line_is_taken_off_the_output() {
        assert!(matches!(split_marker(b"aenv-ex"), Marker::Incomplete));
        assert!(matches!(split_marker(b"aenv-exec-pid:12"), Marker::Incomplete));
        match split_marker(b"aenv-exec-pid:12\nhello") {
            Marker::Pid(12, rest) => assert_eq!(rest, b"hello"),
            _ => panic!("the pid was not read"),
        }
        assert!(matches!(split_marker(b"hello"), Marker::Absent));
        assert!(matches!(split_marker(b"aenv-exec-pid:x\n"), Marker::Absent));
    }

    #[test]
    fn statuses_give_exit_codes() {
        let status: Status = serde_json::from_value(serde_json::json!({
            "metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
            "message": "command terminated with non-zero exit code: exit status 3",
            "details": {"causes": [{"reason": "ExitCode", "message": "3"}]}
        }))
        .unwrap();
        assert!(matches!(ended(Some(status)), Ended::Code(3)));
        let ok: Status = serde_json::from_value(serde_json::json!({"metadata": {}, "status": "Success"})).unwrap();
        assert!(matches!(ended(Some(ok)), Ended::Code(0)));
        let start: Status = serde_json::from_value(serde_json::json!({
            "metadata": {}, "status": "Failure", "reason": "InternalError",
            "message": "exec: \"nope\": executable file not found in $PATH"
        }))
        .unwrap();
        assert!(matches!(ended(Some(start)), Ended::NotStarted(m) if m.contains("nope")));
        assert!(matches!(ended(None), Ended::Unknown));
    }

    #[test]
    fn the_wrapper_quotes_what_it_is_given() {
        let request = ExecRequest {
            command: vec!["echo".into(), "$HOME".into()],
            env: [("A".to_string(), "x'; rm -rf /".to_string())].into(),
            workdir: Some("/tmp/a b".into()),
            ..Default::default()
        };
        let command = wrapped(&request, "00").unwrap();
        assert_eq!(&command[..2], ["sh", "-c"]);
        assert!(command[2].contains(r#"export A="x'; rm -rf /""#), "{}", command[2]);
        assert!(command[2].contains("cd '/tmp/a b' || exit 126"), "{}", command[2]);
        assert_eq!(&command[3..], ["sh", "echo", "$HOME"]);
        let bad = ExecRequest { env: [("A-B".to_string(), "1".to_string())].into(), ..request };
        assert_eq!(wrapped(&bad, "00").unwrap_err().kind(), ErrorKind::Permanent);
    }
}
