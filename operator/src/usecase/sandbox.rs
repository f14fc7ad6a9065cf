//! Operations on a running sandbox: exec, files, pause and resume. Each finds the instance the caller may see, checks
//! that it is in a state to serve the operation, and hands it to the engine.

use std::{sync::Arc, time::Duration};

use aenv_core::{
    EngineError, EnvInstance, ErrorKind, ExecExit, ExecOutput, ExecRequest, FileUpload, InstanceStats, PathContent,
    Phase, PtyInput, PtyOutput, PtyRequest, SandboxPath,
};
use futures::{StreamExt, stream::BoxStream};
use tracing::info;

use super::{Principal, UseCaseError, UseCases, limits::HeavyPermit};

/// Largest file (or directory archive) moved in or out of a sandbox in one request (64 MiB).
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// A command's whole answer, collected.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ExecResult {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit: ExecExit,
    /// Output beyond `--max-exec-output` was dropped.
    pub truncated: bool,
}

impl From<EngineError> for UseCaseError {
    fn from(e: EngineError) -> Self {
        UseCaseError::Engine(e)
    }
}

/// The longest a pause or resume answer waits for the phase to follow the request.
pub const PAUSE_WAIT: Duration = Duration::from_secs(5);

impl UseCases {
    /// A place among the heavy requests (exec, files) of whoever acts on `inst`: the caller's owner, without
    /// tokens the instance's owner, or the instance itself when it has none. [`UseCaseError::Overloaded`] when
    /// that owner runs `--max-heavy-requests-per-owner` already.
    fn heavy(&self, inst: &EnvInstance, caller: Option<&Principal>) -> Result<HeavyPermit, UseCaseError> {
        let owner = match (caller, inst.spec.owner.as_deref()) {
            (Some(p), _) => format!("owner:{}", p.owner),
            (None, Some(owner)) => format!("owner:{owner}"),
            (None, None) => format!("instance:{}", inst.metadata.name.as_deref().unwrap_or_default()),
        };
        super::limits::enter_heavy(&self.heavy, owner, self.limits.limits.max_heavy_requests_per_owner)
    }

    /// The instance `id` as an operation finds it: visible to `caller`, not being deleted, running.
    fn operable(&self, id: &str, caller: Option<&Principal>) -> Result<Arc<EnvInstance>, UseCaseError> {
        let inst = self
            .instance(id, caller)
            .ok_or_else(|| UseCaseError::NotFound(format!("env instance \"{id}\" not found")))?;
        if inst.is_deleting() {
            return Err(UseCaseError::Conflict(format!("env instance \"{id}\" is being deleted")));
        }
        if inst.spec.paused || inst.phase() == Phase::Paused {
            return Err(UseCaseError::Conflict(format!(
                "env instance \"{id}\" is paused: resume it first (POST /env-instance/{id}/resume)"
            )));
        }
        match inst.phase() {
            Phase::Running => Ok(inst),
            phase => Err(UseCaseError::Conflict(format!(
                "env instance \"{id}\" is {}, not Running: wait until it runs",
                phase.as_str()
            ))),
        }
    }

    /// A URL on the data-plane proxy that reaches `port` of instance `id` with no other credential for
    /// `minutes` (1 to [`super::presign::MAX_MINUTES`]), and when it expires. The instance must be running and
    /// the caller's.
    pub fn presign(
        &self,
        id: &str,
        caller: Option<&Principal>,
        port: u16,
        minutes: i64,
    ) -> Result<(String, jiff::Timestamp), UseCaseError> {
        let inst = self.operable(id, caller)?;
        let expires = jiff::Timestamp::now()
            .checked_add(jiff::SignedDuration::from_mins(minutes.clamp(1, super::presign::MAX_MINUTES)))
            .map_err(|e| {
                UseCaseError::field("expiration_time_in_minutes", format!("field `expiration_time_in_minutes`: {e}"))
            })?;
        let grant = super::presign::Grant {
            instance: id.to_string(),
            uid: inst.metadata.uid.clone().unwrap_or_default(),
            port,
            expires: expires.as_second(),
        };
        let base = self.proxy_url.as_deref().unwrap_or_default();
        Ok((format!("{base}{}{}/", super::presign::PATH_PREFIX, self.signer.sign(&grant)), expires))
    }

    /// Pauses (`paused`) or resumes instance `id` and answers it in the state asked for: the desired state
    /// (`spec.paused`) is recorded, durable, the controller applies it (a few milliseconds: the cgroup freezer),
    /// and the answer waits for its phase to follow, at most [`PAUSE_WAIT`] (then it says what holds). Asking for
    /// the state it already asks for changes nothing.
    pub async fn set_paused(
        &self,
        id: &str,
        caller: Option<&Principal>,
        paused: bool,
    ) -> Result<Arc<EnvInstance>, UseCaseError> {
        let asked = self.request_paused(id, caller, paused).await?;
        let target = if paused { Phase::Paused } else { Phase::Running };
        let key = crate::store::key_of(asked.as_ref());
        let settled = |i: Option<&EnvInstance>| {
            i.is_none_or(|i| {
                i.is_deleting() || i.phase() == target || i.phase().is_terminal() || i.spec.paused != paused
            })
        };
        Ok(crate::store::wait_for(self.stores.instances.as_ref(), &key, PAUSE_WAIT, settled).await.unwrap_or(asked))
    }

    /// Records the pause state asked for (see [`UseCases::set_paused`]).
    async fn request_paused(
        &self,
        id: &str,
        caller: Option<&Principal>,
        paused: bool,
    ) -> Result<Arc<EnvInstance>, UseCaseError> {
        let mut attempts = super::retry::Attempts::new();
        while attempts.next().await {
            let inst = self
                .instance(id, caller)
                .ok_or_else(|| UseCaseError::NotFound(format!("env instance \"{id}\" not found")))?;
            if inst.is_deleting() {
                return Err(UseCaseError::Conflict(format!("env instance \"{id}\" is being deleted")));
            }
            self.engine.can_pause(&inst.spec)?;
            if !matches!(inst.phase(), Phase::Running | Phase::Paused) {
                return Err(UseCaseError::Conflict(format!(
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
                    .map_err(|e| UseCaseError::field("deployConfig.ttl", format!("field `deployConfig.ttl`: {e}")))?;
            }
            match self.stores.instances.replace(&next).await {
                Ok(Some(stored)) => {
                    info!(instance = %id, paused, "pause state requested");
                    return Ok(stored);
                }
                Ok(None) => return Err(UseCaseError::NotFound(format!("env instance \"{id}\" not found"))),
                // Its status changed meanwhile (the controller wrote it): read it again.
                Err(crate::Error::Conflict(_)) => continue,
                Err(source) => return Err(UseCaseError::store("the pause state could not be recorded", source)),
            }
        }
        Err(UseCaseError::Busy(format!("env instance \"{id}\" kept changing; try again")))
    }

    /// The resource use of instance `id` (running or paused): of `service` of a stack (its main one when `None`).
    pub async fn stats(
        &self,
        id: &str,
        caller: Option<&Principal>,
        service: Option<&str>,
    ) -> Result<InstanceStats, UseCaseError> {
        let inst = self
            .instance(id, caller)
            .ok_or_else(|| UseCaseError::NotFound(format!("env instance \"{id}\" not found")))?;
        if !matches!(inst.phase(), Phase::Running | Phase::Paused) || inst.is_deleting() {
            return Err(UseCaseError::Conflict(format!(
                "env instance \"{id}\" is {}: stats are read from a Running or Paused instance",
                aenv_core::Phase::as_str(inst.phase())
            )));
        }
        Ok(self.engine.stats(&inst, service).await?)
    }

    /// Saves instance `id`'s filesystem as a new template `name@version` (its environment's name; `version`, or
    /// `snap-<random>`), owned by `caller`, whose image is the snapshot (never pulled, named
    /// `aenv-snapshot/<name>:<version>.<random>`, so that no one can guess it). The image goes with the template.
    ///
    /// Within the caller's snapshot caps (count and bytes), checked before anything is committed. The template is
    /// recorded first, marked pending (which reserves `name@version`: of two snapshots of one version, the second
    /// is refused before it commits anything), then the image is committed, then the mark goes; a commit that
    /// fails takes the record back.
    pub async fn snapshot(
        &self,
        id: &str,
        caller: Option<&Principal>,
        version: Option<String>,
    ) -> Result<Arc<aenv_core::Environment>, UseCaseError> {
        let inst = self
            .instance(id, caller)
            .ok_or_else(|| UseCaseError::NotFound(format!("env instance \"{id}\" not found")))?;
        if inst.is_deleting() || !matches!(inst.phase(), Phase::Running | Phase::Paused) {
            return Err(UseCaseError::Conflict(format!(
                "env instance \"{id}\" is {}: only a Running or Paused instance can be snapshotted",
                if inst.is_deleting() { "being deleted" } else { inst.phase().as_str() }
            )));
        }
        let name = inst.spec.env_name.clone();
        let version = version.unwrap_or_else(|| format!("snap-{}", crate::store::random_suffix(8)));
        if self.find_template(&name, &version).is_some() {
            return Err(self.taken(&name, &version, caller));
        }
        // One owner's snapshots are taken one at a time, so that its caps count every one of them.
        let owner_lock = self.snapshot_lock(caller);
        let _one_at_a_time = owner_lock.lock().await;
        self.check_snapshot_caps(&inst, caller).await?;
        let reference = format!("aenv-snapshot/{name}:{version}.{}", crate::store::random_suffix(12));
        let mut spec = inst.spec.clone();
        spec.image = Some(reference.clone());
        spec.image_pull_policy = Some(aenv_core::PullPolicy::Never);
        spec.compose_file = None;
        spec.paused = false;
        spec.owner = None;
        spec.env_version = version.clone();
        let meta = super::TemplateMeta { description: format!("snapshot of env instance {id}"), ..Default::default() };
        let annotations = [
            (super::templates::SNAPSHOT_IMAGE_ANNOTATION.to_string(), reference.clone()),
            (super::templates::SNAPSHOT_PENDING_ANNOTATION.to_string(), "true".to_string()),
        ]
        .into();
        let reserved = self.record_template(spec, meta, caller, annotations).await?;
        if let Err(e) = self.engine.snapshot(&inst, &reference, &format!("{name}@{version}")).await {
            if let Err(rm) = self.discard_template(&reserved).await {
                tracing::warn!(env = %format!("{name}@{version}"), error = %rm, "could not take back a snapshot's template (the sweep will)");
            }
            return Err(e.into());
        }
        let template = self.finish_snapshot(&reserved).await?;
        info!(instance = %id, image = %reference, "snapshot taken");
        Ok(template)
    }

    /// Refuses a snapshot of `inst` past `caller`'s caps: the number of snapshots it holds, and their bytes (the
    /// sizes the engine reports for its snapshot images, plus the sandbox's current size).
    async fn check_snapshot_caps(&self, inst: &EnvInstance, caller: Option<&Principal>) -> Result<(), UseCaseError> {
        let owner = caller.map(|p| p.owner.as_str());
        let mine = self.stores.templates.list_where(&|t: &aenv_core::Environment| {
            super::templates::snapshot_image_of(t).is_some() && t.spec.owner.as_deref() == owner
        });
        let who = owner.map_or_else(|| "this operator".to_string(), |o| format!("owner {o}"));
        let limits = &self.limits.limits;
        if mine.len() >= limits.max_snapshots_per_owner {
            return Err(UseCaseError::Forbidden(format!(
                "{who} holds {} snapshots, the most allowed (--max-snapshots-per-owner {}); delete one first (DELETE /env/<name>/<version>)",
                mine.len(),
                limits.max_snapshots_per_owner
            )));
        }
        let sizes: std::collections::HashMap<String, u64> = self
            .engine
            .list_snapshots()
            .await?
            .into_iter()
            .filter_map(|i| i.size.map(|size| (i.reference, size)))
            .collect();
        let held: u64 =
            mine.iter().filter_map(|t| super::templates::snapshot_image_of(t).and_then(|image| sizes.get(image))).sum();
        let this = self.engine.snapshot_size(inst).await?.unwrap_or(0);
        let max = &limits.max_snapshot_bytes_per_owner;
        if held.saturating_add(this) > max.bytes {
            return Err(UseCaseError::Forbidden(format!(
                "{who} holds {held} bytes of snapshots and this sandbox is {this} bytes: more than allowed (--max-snapshot-bytes-per-owner {}); delete a snapshot first (DELETE /env/<name>/<version>)",
                max.text
            )));
        }
        Ok(())
    }

    /// The lock one owner's snapshots take in turn.
    fn snapshot_lock(&self, caller: Option<&Principal>) -> Arc<tokio::sync::Mutex<()>> {
        let owner = caller.map(|p| p.owner.clone()).unwrap_or_default();
        let mut locks = self.snapshot_locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(owner).or_default().clone()
    }

    /// Clears the pending mark of snapshot template `reserved`, whose image is committed: the template is usable
    /// from then on. A template deleted meanwhile takes its image with it.
    pub(super) async fn finish_snapshot(
        &self,
        reserved: &aenv_core::Environment,
    ) -> Result<Arc<aenv_core::Environment>, UseCaseError> {
        let key = self.key(&aenv_core::Environment::object_name(&reserved.spec.name, &reserved.spec.version));
        let mut attempts = super::retry::Attempts::new();
        while attempts.next().await {
            let Some(current) = self.stores.templates.get(&key).filter(|t| t.metadata.uid == reserved.metadata.uid)
            else {
                break;
            };
            let mut next = (*current).clone();
            if let Some(a) = next.metadata.annotations.as_mut() {
                a.remove(super::templates::SNAPSHOT_PENDING_ANNOTATION);
            }
            match self.stores.templates.replace(&next).await {
                Ok(Some(stored)) => return Ok(stored),
                Ok(None) => break,
                Err(crate::Error::Conflict(_)) => continue,
                Err(source) => {
                    return Err(UseCaseError::store("the snapshot's template could not be recorded", source));
                }
            }
        }
        // Deleted meanwhile: the image has no template.
        if let Some(image) = super::templates::snapshot_image_of(reserved) {
            self.engine.remove_snapshot(image).await?;
        }
        Err(UseCaseError::Conflict(format!(
            "environment \"{}@{}\" was deleted while its snapshot was taken",
            reserved.spec.name, reserved.spec.version
        )))
    }

    /// Snapshots instance `id` and starts `count` instances of the snapshot for `caller`: the template and the
    /// new instances' ids. The caps on instances are checked first: a fork they refuse commits nothing; one whose
    /// first create is refused takes its snapshot back. A create refused later stops the fork; the refusal names
    /// those made before.
    pub async fn fork(
        &self,
        id: &str,
        caller: Option<&Principal>,
        count: usize,
    ) -> Result<(Arc<aenv_core::Environment>, Vec<String>), UseCaseError> {
        if self.instance(id, caller).is_some() {
            self.check_instance_room(caller, count)?;
        }
        let template = self.snapshot(id, caller, None).await?;
        let (name, version) = (template.spec.name.clone(), template.spec.version.clone());
        let ttl = self.instance(id, caller).and_then(|i| i.spec.ttl.clone());
        let mut made = Vec::with_capacity(count);
        for _ in 0..count {
            let request = super::CreateRequest::FromTemplate {
                name: name.clone(),
                version: version.clone(),
                overrides: Box::new(super::Overrides { ttl: ttl.clone(), ..Default::default() }),
            };
            let created = match self.resolve(request, caller) {
                Ok(spec) => self.create(spec, caller).await,
                Err(e) => Err(e),
            };
            match created {
                Ok(inst) => made.push(inst.metadata.name.clone().unwrap_or_default()),
                Err(e) if made.is_empty() => {
                    if let Err(rm) = self.discard_template(&template).await {
                        tracing::warn!(env = %format!("{name}@{version}"), error = %rm, "could not take back a refused fork's snapshot");
                    }
                    return Err(e);
                }
                Err(e) => {
                    return Err(UseCaseError::Forbidden(format!(
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
    ) -> Result<BoxStream<'static, Result<ExecOutput, EngineError>>, UseCaseError> {
        let inst = self.operable(id, caller)?;
        let permit = self.heavy(&inst, caller)?;
        // The place is held as long as the output is read.
        Ok(self
            .engine
            .exec(&inst, request)
            .map(move |item| {
                let _held = &permit;
                item
            })
            .boxed())
    }

    /// Starts a program on a terminal in instance `id` (see [`aenv_core::Engine::pty`]): its screen then its exit,
    /// for as long as `input` is fed and the answer read.
    pub async fn pty(
        &self,
        id: &str,
        caller: Option<&Principal>,
        request: PtyRequest,
        input: BoxStream<'static, PtyInput>,
    ) -> Result<BoxStream<'static, Result<PtyOutput, EngineError>>, UseCaseError> {
        let inst = self.operable(id, caller)?;
        Ok(self.engine.pty(&inst, request, input).await?)
    }

    /// Runs a command in instance `id` and collects its answer.
    pub async fn exec_collected(
        &self,
        id: &str,
        caller: Option<&Principal>,
        request: ExecRequest,
    ) -> Result<ExecResult, UseCaseError> {
        let mut stream = self.exec(id, caller, request)?;
        let mut result = ExecResult::default();
        let mut exited = false;
        let max = self.limits.limits.max_exec_output;
        while let Some(item) = stream.next().await {
            match item? {
                ExecOutput::Stdout(bytes) => result.truncated |= keep(&mut result.stdout, &bytes, max),
                ExecOutput::Stderr(bytes) => result.truncated |= keep(&mut result.stderr, &bytes, max),
                ExecOutput::Exited(exit) => {
                    result.exit = exit;
                    exited = true;
                }
            }
        }
        if !exited {
            return Err(UseCaseError::Engine(EngineError::transient(
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
    ) -> Result<PathContent, UseCaseError> {
        let inst = self.operable(id, caller)?;
        let permit = self.heavy(&inst, caller)?;
        let content =
            self.engine.read_path(&inst, service, path, MAX_FILE_BYTES).await.map_err(not_found_path(path))?;
        // The read is heavy until its last byte is taken: the body holds the owner's slot.
        let held = move |body: aenv_core::ByteStream| {
            body.map(move |piece| {
                let _slot = &permit;
                piece
            })
            .boxed()
        };
        Ok(match content {
            PathContent::File { size, mode, body } => PathContent::File { size, mode, body: held(body) },
            PathContent::Directory { body } => PathContent::Directory { body: held(body) },
        })
    }

    /// Writes one file in instance `id`.
    pub async fn write_file(
        &self,
        id: &str,
        caller: Option<&Principal>,
        upload: FileUpload,
    ) -> Result<(), UseCaseError> {
        if upload.size > MAX_FILE_BYTES {
            return Err(UseCaseError::TooLarge(format!(
                "the file is {} bytes; this operator takes at most {MAX_FILE_BYTES}",
                upload.size
            )));
        }
        let inst = self.operable(id, caller)?;
        let _permit = self.heavy(&inst, caller)?;
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

/// Appends what fits under `max` bytes; true when some did not.
fn keep(buf: &mut Vec<u8>, bytes: &[u8], max: usize) -> bool {
    let room = max.saturating_sub(buf.len());
    buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
    bytes.len() > room
}
