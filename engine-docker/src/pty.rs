//! Interactive terminals through the exec API: an exec created with a TTY, started attached (the daemon hijacks
//! the connection: what is written goes to the terminal, what the terminal shows comes back as one stream), and
//! resized through its own call. The program lives as long as its caller holds on: when the input ends or the
//! output is dropped, its processes are killed as a timed-out command's are (see [`crate::kill`]), so that no
//! abandoned terminal keeps a process or the daemon's connection open.

use std::time::Duration;

use aenv_core::{EngineError, ErrorKind, PtyInput, PtyOutput, PtyRequest, WindowSize};
use bollard::{
    Docker,
    container::LogOutput,
    exec::{ResizeExecOptions, StartExecOptions, StartExecResults},
    models::ExecConfig,
};
use futures::{StreamExt, stream::BoxStream};
use tokio::{io::AsyncWriteExt, sync::mpsc};
use tracing::{debug, warn};

use crate::{
    kill::{self, Journal, Marker},
    ops::{classify_op, kill_exec, stat},
};

/// How long a terminal may outlive an operator that died holding it: the journal's deadline, past which a
/// restarted operator kills it.
const ORPHAN_DEADLINE: Duration = Duration::from_secs(24 * 3600);

/// Starts `request` on a terminal in `container`.
pub(crate) async fn pty(
    docker: Docker,
    container: String,
    request: PtyRequest,
    mut input: BoxStream<'static, PtyInput>,
    journal: Journal,
) -> Result<BoxStream<'static, Result<PtyOutput, EngineError>>, EngineError> {
    let context = format!("starting a terminal in {container}");
    let program = request.command.first().cloned().unwrap_or_default();
    // A program given by path is looked for first: a missing one is the caller's to fix (pass another `cmd`), and
    // is said before anything runs rather than as text on a terminal.
    if program.starts_with('/') && stat(&docker, &container, &program, &context).await?.is_none() {
        return Err(EngineError::new(
            ErrorKind::Permanent,
            format!(
                "{program} is not in the sandbox's image: pass the program to run as `cmd` (for example cmd=/bin/bash)"
            ),
        ));
    }
    let marker = Marker::new();
    let mut env: Vec<String> =
        request.env.iter().filter(|(k, _)| k.as_str() != kill::EXEC_ID_VAR).map(|(k, v)| format!("{k}={v}")).collect();
    if !request.env.contains_key("TERM") {
        env.push("TERM=xterm".into());
    }
    env.push(marker.env_entry());
    let config = ExecConfig {
        attach_stdin: Some(true),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        tty: Some(true),
        console_size: Some(vec![usize::from(request.size.rows), usize::from(request.size.cols)]),
        env: Some(env),
        cmd: Some(request.command.clone()),
        user: request.user.clone(),
        working_dir: request.workdir.clone(),
        ..Default::default()
    };
    let created = docker.create_exec(&container, config).await.map_err(|e| classify_op(&context, e))?;
    let container_id =
        docker.inspect_exec(&created.id).await.map_err(|e| classify_op(&context, e))?.container_id.ok_or_else(
            || EngineError::transient(format!("{context}: the daemon did not say which container runs it")),
        )?;
    let journalled = journal.record(&marker, &container_id, ORPHAN_DEADLINE).map_err(EngineError::transient)?;
    let started = docker
        .start_exec(&created.id, Some(StartExecOptions { detach: false, tty: true, output_capacity: None }))
        .await;
    let (mut output, mut stdin) = match started {
        Ok(StartExecResults::Attached { output, input }) => (output, input),
        Ok(StartExecResults::Detached) => {
            return Err(EngineError::transient(format!("{context}: the daemon did not attach to the terminal")));
        }
        Err(bollard::errors::Error::DockerResponseServerError { status_code, message }) if status_code >= 500 => {
            return Err(EngineError::new(ErrorKind::Permanent, format!("{context}: {message}")));
        }
        Err(e) => return Err(classify_op(&context, e)),
    };
    let (tx, rx) = mpsc::channel::<Result<PtyOutput, EngineError>>(32);
    let exec_id = created.id;
    tokio::spawn(async move {
        let _journalled = journalled;
        let mut gone = false;
        loop {
            tokio::select! {
                item = output.next() => match item {
                    None => break,
                    Some(Ok(LogOutput::StdOut { message } | LogOutput::Console { message } | LogOutput::StdErr { message })) => {
                        if tx.send(Ok(PtyOutput::Bytes(message.to_vec()))).await.is_err() {
                            gone = true;
                            break;
                        }
                    }
                    Some(Ok(LogOutput::StdIn { .. })) => {}
                    Some(Err(e)) => {
                        let _ = tx.send(Err(classify_op("reading a terminal", e))).await;
                        gone = true;
                        break;
                    }
                },
                typed = input.next() => match typed {
                    Some(PtyInput::Bytes(bytes)) => {
                        if let Err(e) = stdin.write_all(&bytes).await {
                            debug!(error = %e, "writing to a terminal");
                        }
                    }
                    Some(PtyInput::Resize(size)) => resize(&docker, &exec_id, size).await,
                    None => { gone = true; break; }
                },
                () = tx.closed() => { gone = true; break; }
            }
        }
        drop(stdin);
        if gone && let Err(why) = kill_exec(&docker, &exec_id, &container_id, &marker).await {
            warn!(container, reason = %why, "could not end an abandoned terminal");
        }
        let code = exit_code(&docker, &exec_id).await;
        let _ = tx.send(Ok(PtyOutput::Exited(code))).await;
    });
    Ok(tokio_stream::wrappers::ReceiverStream::new(rx).boxed())
}

async fn resize(docker: &Docker, exec_id: &str, size: WindowSize) {
    if let Err(e) = docker.resize_exec(exec_id, ResizeExecOptions { width: size.cols, height: size.rows }).await {
        debug!(error = %e, "resizing a terminal");
    }
}

/// The exit code of exec `id`: the daemon may mark it ended a moment after its output closes, so the inspect is
/// repeated for up to 2 s.
async fn exit_code(docker: &Docker, id: &str) -> Option<i64> {
    for _ in 0..100 {
        match docker.inspect_exec(id).await {
            Ok(inspect) if inspect.running != Some(true) => return inspect.exit_code,
            Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => {
                debug!(error = %e, "inspecting a terminal's exec");
                return None;
            }
        }
    }
    None
}
