//! Operations on a running sandbox (issue 15): exec, files, pause and resume. Each finds the instance the caller may see, checks
//! that it is in a state to serve the operation, and hands it to the engine.

use std::sync::Arc;

use aenv_core::{
    EngineError, EnvInstance, ErrorKind, ExecExit, ExecOutput, ExecRequest, FileUpload, InstanceStats, PathContent,
    Phase, SandboxPath,
};
use futures::{StreamExt, stream::BoxStream};
use tracing::info;

use super::{Principal, ServiceError, Services};

/// Largest file (or directory archive) moved in or out of a sandbox in one request (64 MiB).
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// Most output kept of each of a command's streams in a collected answer (16 MiB); past it the answer says
/// `truncated` (a streamed exec has no such limit).
pub const MAX_EXEC_OUTPUT: usize = 16 * 1024 * 1024;

/// A command's whole answer, collected.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ExecResult {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit: ExecExit,
    /// Output beyond [`MAX_EXEC_OUTPUT`] was dropped.
    pub truncated: bool,
}

impl From<EngineError> for ServiceError {
    fn from(e: EngineError) -> Self {
        ServiceError::Engine(e)
    }
}

impl Services {
    /// The instance `id` as an operation finds it: visible to `caller`, not being deleted, running.
    fn operable(&self, id: &str, caller: Option<&Principal>) -> Result<Arc<EnvInstance>, ServiceError> {
        let inst = self
            .instance(id, caller)
            .ok_or_else(|| ServiceError::NotFound(format!("env instance \"{id}\" not found")))?;
        if inst.is_deleting() {
            return Err(ServiceError::Conflict(format!("env instance \"{id}\" is being deleted")));
        }
        if inst.spec.paused || inst.phase() == Phase::Paused {
            return Err(ServiceError::Conflict(format!(
                "env instance \"{id}\" is paused: resume it first (POST /env-instance/{id}/resume)"
            )));
        }
        match inst.phase() {
            Phase::Running => Ok(inst),
            phase => Err(ServiceError::Conflict(format!(
                "env instance \"{id}\" is {}, not Running: wait until it runs",
                phase.as_str()
            ))),
        }
    }

    /// Asks for instance `id` to be paused (`paused`) or resumed: the desired state (`spec.paused`) is recorded,
    /// durable when this returns, and the controller applies it. Asking for the state it already asks for changes
    /// nothing.
    pub async fn set_paused(
        &self,
        id: &str,
        caller: Option<&Principal>,
        paused: bool,
    ) -> Result<Arc<EnvInstance>, ServiceError> {
        for _ in 0..8 {
            let inst = self
                .instance(id, caller)
                .ok_or_else(|| ServiceError::NotFound(format!("env instance \"{id}\" not found")))?;
            if inst.is_deleting() {
                return Err(ServiceError::Conflict(format!("env instance \"{id}\" is being deleted")));
            }
            self.engine.can_pause(&inst.spec)?;
            if !matches!(inst.phase(), Phase::Running | Phase::Paused) {
                return Err(ServiceError::Conflict(format!(
                    "env instance \"{id}\" is {}: only a Running instance can be paused or resumed",
                    inst.phase().as_str()
                )));
            }
            if inst.spec.paused == paused {
                return Ok(inst);
            }
            let mut next = (*inst).clone();
            next.spec.paused = paused;
            let now = jiff::Timestamp::now();
            if paused && self.limits.limits.pause_extends_ttl {
                next.stop_ttl_clock(now);
            } else if !paused {
                next.restart_ttl_clock(now)
                    .map_err(|e| ServiceError::Invalid(format!("field `deployConfig.ttl`: {e}")))?;
            }
            match self.instances.replace(&next).await {
                Ok(Some(stored)) => {
                    info!(instance = %id, paused, "pause state requested");
                    return Ok(stored);
                }
                Ok(None) => return Err(ServiceError::NotFound(format!("env instance \"{id}\" not found"))),
                // Its status changed meanwhile (the controller wrote it): read it again.
                Err(crate::Error::Conflict(_)) => continue,
                Err(source) => return Err(ServiceError::store("the pause state could not be recorded", source)),
            }
        }
        Err(ServiceError::Busy(format!("env instance \"{id}\" kept changing; try again")))
    }

    /// The resource use of instance `id` (running or paused): of `service` of a stack (its main one when `None`).
    pub async fn stats(
        &self,
        id: &str,
        caller: Option<&Principal>,
        service: Option<&str>,
    ) -> Result<InstanceStats, ServiceError> {
        let inst = self
            .instance(id, caller)
            .ok_or_else(|| ServiceError::NotFound(format!("env instance \"{id}\" not found")))?;
        if !matches!(inst.phase(), Phase::Running | Phase::Paused) || inst.is_deleting() {
            return Err(ServiceError::Conflict(format!(
                "env instance \"{id}\" is {}: stats are read from a Running or Paused instance",
                aenv_core::Phase::as_str(inst.phase())
            )));
        }
        Ok(self.engine.stats(&inst, service).await?)
    }

    /// Saves instance `id`'s filesystem as a new template `name@version` (its environment's name; `version`, or
    /// `snap-<random>`), owned by `caller`, whose image is the snapshot (never pulled). The image goes with the
    /// template.
    pub async fn snapshot(
        &self,
        id: &str,
        caller: Option<&Principal>,
        version: Option<String>,
    ) -> Result<Arc<aenv_core::Environment>, ServiceError> {
        let inst = self
            .instance(id, caller)
            .ok_or_else(|| ServiceError::NotFound(format!("env instance \"{id}\" not found")))?;
        if inst.is_deleting() || !matches!(inst.phase(), Phase::Running | Phase::Paused) {
            return Err(ServiceError::Conflict(format!(
                "env instance \"{id}\" is {}: only a Running or Paused instance can be snapshotted",
                if inst.is_deleting() { "being deleted" } else { inst.phase().as_str() }
            )));
        }
        let name = inst.spec.env_name.clone();
        let version = version.unwrap_or_else(|| format!("snap-{}", crate::store::random_suffix(8)));
        if self.find_template(&name, &version).is_some() {
            return Err(ServiceError::Conflict(format!(
                "environment \"{name}@{version}\" exists already; name another version"
            )));
        }
        let reference = format!("aenv-snapshot/{name}:{version}");
        self.engine.snapshot(&inst, &reference).await?;
        let mut spec = inst.spec.clone();
        spec.image = Some(reference.clone());
        spec.image_pull_policy = Some(aenv_core::PullPolicy::Never);
        spec.compose_file = None;
        spec.paused = false;
        spec.owner = None;
        spec.env_version = version;
        let meta = super::TemplateMeta { description: format!("snapshot of env instance {id}"), ..Default::default() };
        match self.register_template_of(spec, meta, caller, Some(reference.clone())).await {
            Ok(template) => {
                info!(instance = %id, image = %reference, "snapshot taken");
                Ok(template)
            }
            Err(e) => {
                // The template was not recorded: its image has no owner.
                if let Err(rm) = self.engine.remove_snapshot(&reference).await {
                    tracing::warn!(image = %reference, error = %rm, "could not remove an unregistered snapshot");
                }
                Err(e)
            }
        }
    }

    /// Snapshots instance `id` and starts `count` instances of the snapshot for `caller`: the template and the
    /// new instances' ids. A create that is refused (a cap) stops the fork; the refusal names those made before.
    pub async fn fork(
        &self,
        id: &str,
        caller: Option<&Principal>,
        count: usize,
    ) -> Result<(Arc<aenv_core::Environment>, Vec<String>), ServiceError> {
        let template = self.snapshot(id, caller, None).await?;
        let (name, version) = (template.spec.name.clone(), template.spec.version.clone());
        let ttl = self.instance(id, caller).and_then(|i| i.spec.ttl.clone());
        let mut made = Vec::with_capacity(count);
        for _ in 0..count {
            let request = super::CreateRequest::FromTemplate {
                name: name.clone(),
                version: version.clone(),
                overrides: super::Overrides { ttl: ttl.clone(), ..Default::default() },
            };
            let created = match self.resolve(request, caller) {
                Ok(spec) => self.create(spec, caller).await,
                Err(e) => Err(e),
            };
            match created {
                Ok(inst) => made.push(inst.metadata.name.clone().unwrap_or_default()),
                Err(e) if made.is_empty() => return Err(e),
                Err(e) => {
                    return Err(ServiceError::Forbidden(format!(
                        "the fork stopped after {} of {count} instances ({}) of {name}@{version}: {e}",
                        made.len(),
                        made.join(", ")
                    )));
                }
            }
        }
        Ok((template, made))
    }

    /// Runs a command in instance `id`: its output as it comes, then its exit.
    pub fn exec(
        &self,
        id: &str,
        caller: Option<&Principal>,
        request: ExecRequest,
    ) -> Result<BoxStream<'static, Result<ExecOutput, EngineError>>, ServiceError> {
        let inst = self.operable(id, caller)?;
        Ok(self.engine.exec(&inst, request))
    }

    /// Runs a command in instance `id` and collects its answer.
    pub async fn exec_collected(
        &self,
        id: &str,
        caller: Option<&Principal>,
        request: ExecRequest,
    ) -> Result<ExecResult, ServiceError> {
        let mut stream = self.exec(id, caller, request)?;
        let mut result = ExecResult::default();
        let mut exited = false;
        while let Some(item) = stream.next().await {
            match item? {
                ExecOutput::Stdout(bytes) => result.truncated |= keep(&mut result.stdout, &bytes),
                ExecOutput::Stderr(bytes) => result.truncated |= keep(&mut result.stderr, &bytes),
                ExecOutput::Exited(exit) => {
                    result.exit = exit;
                    exited = true;
                }
            }
        }
        if !exited {
            return Err(ServiceError::Engine(EngineError::transient(
                "the command's output ended without its exit; try again",
            )));
        }
        Ok(result)
    }

    /// Reads `path` in instance `id` (a file, or a directory as a tar), in `service` of a stack (its main one when
    /// `None`).
    pub async fn read_path(
        &self,
        id: &str,
        caller: Option<&Principal>,
        service: Option<&str>,
        path: &SandboxPath,
    ) -> Result<PathContent, ServiceError> {
        let inst = self.operable(id, caller)?;
        Ok(self.engine.read_path(&inst, service, path, MAX_FILE_BYTES).await.map_err(not_found_path(path))?)
    }

    /// Writes one file in instance `id`.
    pub async fn write_file(
        &self,
        id: &str,
        caller: Option<&Principal>,
        upload: FileUpload,
    ) -> Result<(), ServiceError> {
        if upload.bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(ServiceError::TooLarge(format!(
                "the file is {} bytes; this operator takes at most {MAX_FILE_BYTES}",
                upload.bytes.len()
            )));
        }
        let inst = self.operable(id, caller)?;
        let path = upload.path.clone();
        self.engine.write_file(&inst, upload).await.map_err(not_found_path(&path))?;
        Ok(())
    }
}

/// A missing path says which (the daemon's message names the container's internals).
fn not_found_path(path: &SandboxPath) -> impl FnOnce(EngineError) -> EngineError + '_ {
    move |e| {
        if e.kind() == ErrorKind::NotFound {
            e.reworded(|daemon| format!("no such file or directory: {} ({daemon})", path.as_str()))
        } else {
            e
        }
    }
}

/// Appends what fits under [`MAX_EXEC_OUTPUT`]; true when some did not.
fn keep(buf: &mut Vec<u8>, bytes: &[u8]) -> bool {
    let room = MAX_EXEC_OUTPUT.saturating_sub(buf.len());
    buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
    bytes.len() > room
}
