//! Operations on a running sandbox (issue 15): running a command in it (exec) and moving files in and out. The
//! types engines and the service share; the checks on what a request may ask that need no backend (an absolute,
//! normalised path).

use std::{collections::BTreeMap, io::Read, time::Duration};

use thiserror::Error;

use crate::{EngineError, ErrorKind};

/// A command to run in an instance.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecRequest {
    /// The program and its arguments (no shell: `["sh", "-c", "..."]` when one is wanted).
    pub command: Vec<String>,
    /// Added to the container's environment for this command.
    pub env: BTreeMap<String, String>,
    /// The working directory (the image's when `None`).
    pub workdir: Option<String>,
    /// `user`, `user:group`, `uid` or `uid:gid` (the image's user when `None`).
    pub user: Option<String>,
    /// Written to the command's standard input, which is then closed; no input at all when `None`.
    pub stdin: Option<Vec<u8>>,
    /// How long the command may run; it is killed past that.
    pub timeout: Duration,
    /// Which service of a compose stack runs it (the stack's main service when `None`); a single-container
    /// instance takes none.
    pub service: Option<String>,
}

/// One piece of what a command writes, or its end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExecOutput {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// The command ended (or was killed): always the last item of the stream.
    Exited(ExecExit),
}

/// How a command ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecExit {
    /// Its exit code (126 when the program cannot be run, 127 when it is not found, 137 when killed); `None` when
    /// the engine could not tell.
    pub exit_code: Option<i64>,
    /// It ran past its timeout.
    pub timed_out: bool,
    /// Whether the process was killed after its timeout (false: it may still run, see `message`).
    pub killed: bool,
    /// What the engine has to say about the end (why the kill failed).
    pub message: Option<String>,
}

/// What a path in an instance holds, read through [`crate::Engine::read_path`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathContent {
    /// A regular file's bytes, and its mode bits.
    File { bytes: Vec<u8>, mode: u32 },
    /// A directory, as a tar archive of it (its entries under the directory's own name).
    Directory { tar: Vec<u8> },
}

/// A file to write into an instance, through [`crate::Engine::write_file`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileUpload {
    /// Where (absolute and normalised: see [`SandboxPath`]).
    pub path: SandboxPath,
    pub bytes: Vec<u8>,
    /// Permission bits (`0o644` when `None`).
    pub mode: Option<u32>,
    /// Numeric owner (`uid`, `gid`); root when `None`.
    pub owner: Option<(u64, u64)>,
    /// Which service of a compose stack it goes into (see [`ExecRequest::service`]).
    pub service: Option<String>,
}

impl FileUpload {
    /// The upload as a tar of one regular file named by the file's own name (to be extracted in its parent
    /// directory), with its mode (`0o644` by default), owner (`0:0` by default) and `mtime` (seconds).
    pub fn to_tar(&self, mtime: u64) -> std::io::Result<Vec<u8>> {
        let mut header = tar::Header::new_gnu();
        header.set_size(self.bytes.len() as u64);
        header.set_mode(self.mode.unwrap_or(0o644));
        let (uid, gid) = self.owner.unwrap_or((0, 0));
        header.set_uid(uid);
        header.set_gid(gid);
        header.set_mtime(mtime);
        header.set_entry_type(tar::EntryType::Regular);
        let mut builder = tar::Builder::new(Vec::with_capacity(self.bytes.len() + 2048));
        builder.append_data(&mut header, self.path.file_name(), self.bytes.as_slice())?;
        builder.into_inner()
    }
}

impl PathContent {
    /// What a tar of `path` holds, as the backend made it (Docker's archive API, or `tar -cf - -C parent name`
    /// in the container): a directory's tar as it is, a regular file's bytes and mode. A link or a device is
    /// [`ErrorKind::Permanent`], a file over `max_bytes` [`ErrorKind::TooLarge`], an archive that does not read
    /// [`ErrorKind::Transient`].
    pub fn from_tar(path: &SandboxPath, tar: Vec<u8>, max_bytes: u64) -> Result<PathContent, EngineError> {
        let context = format!("reading {}", path.as_str());
        let bad = |e: std::io::Error| {
            EngineError::transient(format!("{context}: the archive of it does not read: {e}")).with_source(e)
        };
        // The file's bytes and mode; `None` for a directory, whose tar is the answer (once nothing borrows it).
        let file = {
            let mut archive = tar::Archive::new(tar.as_slice());
            let mut entries = archive.entries().map_err(bad)?;
            let Some(first) = entries.next() else {
                return Err(EngineError::transient(format!("{context}: the archive of it is empty")));
            };
            let mut first = first.map_err(bad)?;
            let header = first.header();
            if header.entry_type().is_dir() {
                None
            } else if !header.entry_type().is_file() {
                return Err(EngineError::permanent(format!(
                    "{} is not a regular file or a directory (a link or a device): read what it points to",
                    path.as_str()
                )));
            } else {
                let mode = header.mode().unwrap_or(0o644);
                let size = header.size().unwrap_or(0);
                if size > max_bytes {
                    return Err(EngineError::new(
                        ErrorKind::TooLarge,
                        format!(
                            "{} is {size} bytes, more than this operator serves ({max_bytes} bytes)",
                            path.as_str()
                        ),
                    ));
                }
                let mut bytes = Vec::with_capacity(size.min(max_bytes) as usize);
                first.read_to_end(&mut bytes).map_err(bad)?;
                Some(PathContent::File { bytes, mode })
            }
        };
        Ok(file.unwrap_or(PathContent::Directory { tar }))
    }
}

/// Resource use of an instance, from one read of the engine's counters.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceStats {
    /// CPU use over the engine's sampling interval, in percent of one CPU (200 = two CPUs busy); `None` when the
    /// engine had no earlier sample to compare with.
    pub cpu_percent: Option<f64>,
    /// Memory in use, page cache not counted (as `docker stats` shows it).
    pub memory_bytes: u64,
    /// The memory limit (the host's memory when the instance has none).
    pub memory_limit_bytes: Option<u64>,
    /// Processes and threads.
    pub pids: Option<u64>,
    pub network_rx_bytes: u64,
    pub network_tx_bytes: u64,
    pub block_read_bytes: u64,
    pub block_write_bytes: u64,
}

/// A path in an instance that is absolute and has no `.`, `..` or empty component: what the file routes accept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxPath(String);

/// Why a path was refused.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum PathError {
    #[error("the path must be absolute (start with /), got {0:?}")]
    Relative(String),
    #[error("the path may not contain `.` or `..` components, got {0:?}")]
    Escaping(String),
    #[error("the path may not contain a NUL byte or be longer than 4096 bytes")]
    Malformed,
    #[error("the path must name something under / (not / itself)")]
    Root,
}

impl SandboxPath {
    /// Checks `text`: absolute, no `.`/`..`, no NUL, at most 4096 bytes; repeated and trailing slashes are dropped.
    pub fn parse(text: &str) -> Result<Self, PathError> {
        if text.len() > 4096 || text.contains('\0') {
            return Err(PathError::Malformed);
        }
        if !text.starts_with('/') {
            return Err(PathError::Relative(text.to_string()));
        }
        let mut parts = Vec::new();
        for part in text.split('/') {
            match part {
                "" => {}
                "." | ".." => return Err(PathError::Escaping(text.to_string())),
                p => parts.push(p),
            }
        }
        if parts.is_empty() {
            return Err(PathError::Root);
        }
        Ok(SandboxPath(format!("/{}", parts.join("/"))))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The directory that holds it (`/` for a top-level name).
    pub fn parent(&self) -> &str {
        match self.0.rfind('/') {
            Some(0) | None => "/",
            Some(i) => &self.0[..i],
        }
    }

    /// Its last component.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_absolute_and_normalised() {
        let p = SandboxPath::parse("//tmp//a/b.txt/").unwrap();
        assert_eq!(p.as_str(), "/tmp/a/b.txt");
        assert_eq!(p.parent(), "/tmp/a");
        assert_eq!(p.file_name(), "b.txt");
        assert_eq!(SandboxPath::parse("/x").unwrap().parent(), "/");
        assert_eq!(SandboxPath::parse("tmp/x"), Err(PathError::Relative("tmp/x".into())));
        assert_eq!(SandboxPath::parse("/tmp/../etc/passwd"), Err(PathError::Escaping("/tmp/../etc/passwd".into())));
        assert_eq!(SandboxPath::parse("/tmp/./x"), Err(PathError::Escaping("/tmp/./x".into())));
        assert_eq!(SandboxPath::parse("/"), Err(PathError::Root));
        assert_eq!(SandboxPath::parse("/a\0b"), Err(PathError::Malformed));
        assert_eq!(SandboxPath::parse(""), Err(PathError::Relative(String::new())));
    }

    #[test]
    fn an_upload_tar_reads_back_as_the_file() {
        let path = SandboxPath::parse("/tmp/a.txt").unwrap();
        let upload = FileUpload {
            path: path.clone(),
            bytes: b"hello".to_vec(),
            mode: Some(0o600),
            owner: Some((7, 8)),
            service: None,
        };
        let tar = upload.to_tar(0).unwrap();
        let mut archive = tar::Archive::new(tar.as_slice());
        let entry = archive.entries().unwrap().next().unwrap().unwrap();
        assert_eq!(entry.path().unwrap().to_str(), Some("a.txt"));
        assert_eq!((entry.header().uid().unwrap(), entry.header().gid().unwrap()), (7, 8));
        assert_eq!(
            PathContent::from_tar(&path, tar.clone(), 5).unwrap(),
            PathContent::File { bytes: b"hello".to_vec(), mode: 0o600 }
        );
        assert_eq!(PathContent::from_tar(&path, tar, 4).unwrap_err().kind(), ErrorKind::TooLarge);
        assert_eq!(PathContent::from_tar(&path, Vec::new(), 4).unwrap_err().kind(), ErrorKind::Transient);
    }

    #[test]
    fn a_directory_tar_is_passed_on_and_a_link_is_refused() {
        let path = SandboxPath::parse("/srv/d").unwrap();
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_size(0);
        header.set_mode(0o755);
        builder.append_data(&mut header, "d/", std::io::empty()).unwrap();
        let tar = builder.into_inner().unwrap();
        assert_eq!(PathContent::from_tar(&path, tar.clone(), 0).unwrap(), PathContent::Directory { tar });
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        builder.append_link(&mut header, "l", "/etc/shadow").unwrap();
        let tar = builder.into_inner().unwrap();
        assert_eq!(PathContent::from_tar(&path, tar, 100).unwrap_err().kind(), ErrorKind::Permanent);
    }
}
