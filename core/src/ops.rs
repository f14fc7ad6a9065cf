//! Operations on a running sandbox: running a command in it (exec) and moving files in and out. The
//! types engines and the service share; the checks on what a request may ask that need no backend (an absolute,
//! normalised path).

use std::{collections::BTreeMap, io::Read, time::Duration};

use futures::StreamExt;
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
pub enum PathContent {
    /// A regular file: its length, its mode bits and its bytes as they come (exactly `size` of them; a body that
    /// ends early ends with an error).
    File { size: u64, mode: u32, body: ByteStream },
    /// A directory, as a tar archive of it (its entries under the directory's own name), as it comes.
    Directory { body: ByteStream },
}

impl std::fmt::Debug for PathContent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PathContent::File { size, mode, .. } => {
                f.debug_struct("File").field("size", size).field("mode", mode).finish_non_exhaustive()
            }
            PathContent::Directory { .. } => f.debug_struct("Directory").finish_non_exhaustive(),
        }
    }
}

/// A body of bytes held in memory, as one piece.
pub fn body_of(bytes: Vec<u8>) -> ByteStream {
    futures::stream::once(async move { Ok(bytes::Bytes::from(bytes)) }).boxed()
}

/// A body collected whole (for tests and for backends that need it whole; mind its size).
pub async fn collect_body(mut body: ByteStream) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    while let Some(piece) = body.next().await {
        bytes.extend_from_slice(&piece?);
    }
    Ok(bytes)
}

/// Bytes in pieces as they come (an upload's body as the client sends it).
pub type ByteStream = futures::stream::BoxStream<'static, std::io::Result<bytes::Bytes>>;

/// A file to write into an instance, through [`crate::Engine::write_file`]: its bytes stream through, never held
/// whole.
pub struct FileUpload {
    /// Where (absolute and normalised: see [`SandboxPath`]).
    pub path: SandboxPath,
    /// Its length: the body yields exactly this many bytes (more or fewer fails the write).
    pub size: u64,
    pub body: ByteStream,
    /// Permission bits (`0o644` when `None`).
    pub mode: Option<u32>,
    /// Numeric owner (`uid`, `gid`); root when `None`.
    pub owner: Option<(u64, u64)>,
    /// Which service of a compose stack it goes into (see [`ExecRequest::service`]).
    pub service: Option<String>,
}

impl std::fmt::Debug for FileUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileUpload")
            .field("path", &self.path)
            .field("size", &self.size)
            .field("mode", &self.mode)
            .field("owner", &self.owner)
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl FileUpload {
    /// An upload of `bytes` held in memory (root-owned, mode `0o644`).
    pub fn from_bytes(path: SandboxPath, bytes: Vec<u8>) -> FileUpload {
        let size = bytes.len() as u64;
        FileUpload { path, size, body: body_of(bytes), mode: None, owner: None, service: None }
    }

    /// The upload as a tar of one regular file named by the file's own name (to be extracted in its parent
    /// directory), with its mode (`0o644` by default), owner (`0:0` by default) and `mtime` (seconds), streamed:
    /// the header, the body as it comes, the padding and the end of the archive. A body that yields more or
    /// fewer than `size` bytes ends the stream with an error (so a partial file is never extracted whole).
    pub fn into_tar(self, mtime: u64) -> std::io::Result<ByteStream> {
        let mut header = tar::Header::new_gnu();
        header.set_size(self.size);
        header.set_mode(self.mode.unwrap_or(0o644));
        let (uid, gid) = self.owner.unwrap_or((0, 0));
        header.set_uid(uid);
        header.set_gid(gid);
        header.set_mtime(mtime);
        header.set_entry_type(tar::EntryType::Regular);
        // The header (and a long-name entry before it when the name needs one), without the data: the tar
        // builder writes no data and no padding for an empty reader.
        let mut builder = tar::Builder::new(Vec::with_capacity(2048));
        builder.append_data(&mut header, self.path.file_name(), std::io::empty())?;
        let mut head = builder.into_inner()?;
        head.truncate(head.len().saturating_sub(1024));
        let size = self.size;
        let padding = (512 - size % 512) % 512;
        let tail = vec![0u8; padding as usize + 1024];
        let invalid = |kind, message: String| std::io::Error::new(kind, message);
        // (the body, bytes seen, the tail still to send); `None` once the stream has ended or failed.
        let checked = futures::stream::unfold(Some((self.body, 0u64, tail)), move |state| async move {
            let (mut body, seen, tail) = state?;
            match body.next().await {
                Some(Ok(piece)) => {
                    let seen = seen + piece.len() as u64;
                    if seen > size {
                        let e = invalid(
                            std::io::ErrorKind::InvalidData,
                            format!("the body is longer than its declared {size} bytes"),
                        );
                        return Some((Err(e), None));
                    }
                    Some((Ok(piece), Some((body, seen, tail))))
                }
                Some(Err(e)) => Some((Err(e), None)),
                None if seen != size => {
                    let e = invalid(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("the body ended after {seen} of its declared {size} bytes"),
                    );
                    Some((Err(e), None))
                }
                None => Some((Ok(bytes::Bytes::from(tail)), None)),
            }
        });
        Ok(futures::stream::once(async move { Ok(bytes::Bytes::from(head)) }).chain(checked).boxed())
    }

    /// [`FileUpload::into_tar`], collected (for a backend that takes the archive whole; at most `size` plus a few
    /// KiB).
    pub async fn into_tar_bytes(self, mtime: u64) -> std::io::Result<Vec<u8>> {
        let mut tar = Vec::with_capacity(usize::try_from(self.size).unwrap_or(0).saturating_add(4096));
        let mut stream = self.into_tar(mtime)?;
        while let Some(piece) = stream.next().await {
            tar.extend_from_slice(&piece?);
        }
        Ok(tar)
    }
}

impl PathContent {
    /// What a tar of `path` holds, collected whole as the backend made it (`tar -cf - -C parent name` in the
    /// container): a directory's tar as it is, a regular file's bytes and mode. A link or a device is
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
                Some(PathContent::File { size: bytes.len() as u64, mode, body: body_of(bytes) })
            }
        };
        Ok(file.unwrap_or_else(|| PathContent::Directory { body: body_of(tar) }))
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
            mode: Some(0o600),
            owner: Some((7, 8)),
            ..FileUpload::from_bytes(path.clone(), b"hello".to_vec())
        };
        let tar = futures::executor::block_on(upload.into_tar_bytes(0)).unwrap();
        let mut archive = tar::Archive::new(tar.as_slice());
        let entry = archive.entries().unwrap().next().unwrap().unwrap();
        assert_eq!(entry.path().unwrap().to_str(), Some("a.txt"));
        assert_eq!((entry.header().uid().unwrap(), entry.header().gid().unwrap()), (7, 8));
        match PathContent::from_tar(&path, tar.clone(), 5).unwrap() {
            PathContent::File { size, mode, body } => {
                assert_eq!((size, mode), (5, 0o600));
                assert_eq!(futures::executor::block_on(collect_body(body)).unwrap(), b"hello");
            }
            other => panic!("not a file: {other:?}"),
        }
        assert_eq!(PathContent::from_tar(&path, tar, 4).unwrap_err().kind(), ErrorKind::TooLarge);
        assert_eq!(PathContent::from_tar(&path, Vec::new(), 4).unwrap_err().kind(), ErrorKind::Transient);
    }

    #[test]
    fn an_upload_of_another_length_than_declared_fails() {
        let path = SandboxPath::parse("/tmp/a.txt").unwrap();
        let long = FileUpload { size: 3, ..FileUpload::from_bytes(path.clone(), b"hello".to_vec()) };
        assert!(futures::executor::block_on(long.into_tar_bytes(0)).is_err());
        let short = FileUpload { size: 9, ..FileUpload::from_bytes(path.clone(), b"hello".to_vec()) };
        assert!(futures::executor::block_on(short.into_tar_bytes(0)).is_err());
        // A name longer than a tar header holds goes in a long-name entry.
        let name = format!("/tmp/{}", "n".repeat(200));
        let upload = FileUpload::from_bytes(SandboxPath::parse(&name).unwrap(), vec![7u8; 1000]);
        let tar = futures::executor::block_on(upload.into_tar_bytes(0)).unwrap();
        let mut archive = tar::Archive::new(tar.as_slice());
        let mut entry = archive.entries().unwrap().next().unwrap().unwrap();
        assert_eq!(entry.path().unwrap().to_str().map(str::len), Some(200));
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        assert_eq!(bytes, vec![7u8; 1000]);
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
        match PathContent::from_tar(&path, tar.clone(), 0).unwrap() {
            PathContent::Directory { body } => {
                assert_eq!(futures::executor::block_on(collect_body(body)).unwrap(), tar);
            }
            other => panic!("not a directory: {other:?}"),
        }
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        builder.append_link(&mut header, "l", "/etc/shadow").unwrap();
        let tar = builder.into_inner().unwrap();
        assert_eq!(PathContent::from_tar(&path, tar, 100).unwrap_err().kind(), ErrorKind::Permanent);
    }
}
