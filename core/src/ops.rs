//! Operations on a running sandbox (issue 15): running a command in it (exec) and moving files in and out. The
//! types engines and the service share; the checks on what a request may ask that need no backend (an absolute,
//! normalised path).

use std::{collections::BTreeMap, time::Duration};

use thiserror::Error;

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
}
