//! Killing what a command run through the exec API started. Docker has no API to kill an exec, and a command's
//! descendants need not stay in its process tree: a double fork (`(sleep 1 &)`) leaves it for the container's init,
//! `setsid` for a session of its own. So every exec runs with a marker in its environment, `AENV_EXEC_ID=<random>`,
//! which every process it starts inherits; at the timeout every process of the container (host `/proc`: its cgroup
//! names the container) whose environment carries the marker is killed, with the exec's own process tree (the pid
//! the daemon reports, for a descendant that replaced its environment but stayed a child), scanning again until
//! none is left (one may fork between a scan and its kill).
//!
//! The operator may die while a command runs (a crash, a kill -9): the exec is journalled, a file per command in a
//! directory of the operator's (the marker, the container and the deadline), written before the command starts and
//! removed once it ended or was killed. Journalled commands of a process that is gone are killed by
//! [`Journal::kill_overdue`] once their deadline passed (every resync, the first at start). A command that ended in
//! time leaves nothing in the journal, so what it left running on purpose (a server started in the background)
//! is never killed later.
//!
//! Limits: the operator must see the daemon's processes (the daemon on this host, the operator root in the host
//! pid namespace); a process that both leaves the tree and replaces its whole environment (`setsid env -i ...`)
//! is not found (`/proc/<pid>/environ` is the environment a program was started with).

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tracing::{debug, warn};

/// The variable that marks the processes of one command.
pub const EXEC_ID_VAR: &str = "AENV_EXEC_ID";

/// How many times the container's processes are scanned for a command's before its kill is given up: each pass
/// kills what the one before found, so only a command that forks faster than a scan of `/proc` outlives them all.
const PASSES: usize = 50;

/// One command's marker: random, so that no other command's processes carry it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Marker(String);

impl Marker {
    pub(crate) fn new() -> Self {
        Marker(format!("{:032x}", rand::random::<u128>()))
    }

    /// `AENV_EXEC_ID=<marker>`, as it is given to the command and as it reads in `/proc/<pid>/environ`.
    pub(crate) fn env_entry(&self) -> String {
        format!("{EXEC_ID_VAR}={}", self.0)
    }
}

/// One process of the container.
struct Process {
    pid: i32,
    ppid: i32,
    marked: bool,
}

/// The live processes (zombies left out: they are dead, and their environment reads empty) whose cgroup names
/// `container_id`, each with whether it carries `entry`.
fn container_processes(container_id: &str, entry: &[u8]) -> Vec<Process> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| {
        let pid: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        if !cgroup.contains(container_id) {
            return None;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // `pid (comm) state ppid ...`: comm may hold spaces and parentheses, so read after the last `)`.
        let mut rest = stat[stat.rfind(')')? + 1..].split_whitespace();
        if rest.next()? == "Z" {
            return None;
        }
        let ppid = rest.next()?.parse().ok()?;
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let marked = environ.split(|b| *b == 0).any(|e| e == entry);
        Some(Process { pid, ppid, marked })
    })
    .collect()
}

/// Kills the command marked `marker` in container `container_id`: every process carrying the marker, and the tree
/// under `pid` (the command's own process, when the daemon reported one running). The number killed.
pub(crate) fn kill_command(container_id: &str, marker: &Marker, pid: Option<i32>) -> Result<usize, String> {
    if let Some(pid) = pid {
        // The command's own process tells whether the operator sees the daemon's processes at all.
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).map_err(|e| {
            format!(
                "process {pid} is not visible to the operator ({e}): the Docker daemon runs on another host or in another pid namespace; the command may still run"
            )
        })?;
        if !cgroup.contains(container_id) {
            return Err(format!("process {pid} is not the command's any more (it is not in the container's cgroup)"));
        }
    }
    let entry = marker.env_entry().into_bytes();
    let mut killed = 0;
    for pass in 0..PASSES {
        let processes = container_processes(container_id, &entry);
        // A running container has a process at least (its init): seeing none, the operator sees none of its.
        if pass == 0 && processes.is_empty() {
            return Err(format!(
                "no process of container {container_id} is visible to the operator: the container is gone, or the Docker daemon runs on another host or in another pid namespace"
            ));
        }
        let mut targets: Vec<i32> = processes.iter().filter(|p| p.marked).map(|p| p.pid).collect();
        let mut i = 0;
        if let Some(pid) = pid.filter(|p| processes.iter().any(|q| q.pid == *p)) {
            targets.push(pid);
        }
        while i < targets.len() {
            let parent = targets[i];
            targets.extend(processes.iter().filter(|p| p.ppid == parent && !p.marked).map(|p| p.pid));
            i += 1;
        }
        targets.sort_unstable();
        targets.dedup();
        if targets.is_empty() {
            return Ok(killed);
        }
        for p in targets {
            // SAFETY: kill(2) with a pid and a signal number has no memory-safety preconditions.
            if unsafe { libc::kill(p, libc::SIGKILL) } == 0 {
                killed += 1;
            }
        }
    }
    Err(format!("the command's processes were still forking after {PASSES} kills"))
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The commands running now, in a directory of files (one per command: its marker names it, and it holds the
/// container id and the deadline in unix seconds), so that a restarted operator can kill those that outlived
/// their deadline. Without a directory nothing is journalled (and nothing is killed after a crash).
#[derive(Clone, Debug, Default)]
pub struct Journal {
    dir: Option<PathBuf>,
    /// The markers of this process's own commands (their files are not overdue leftovers: their exec kills them).
    live: Arc<Mutex<HashSet<String>>>,
}

/// A journalled command: its file is removed when it is dropped (the command ended or was killed).
pub(crate) struct Entry {
    journal: Journal,
    marker: String,
}

impl Journal {
    pub fn new(dir: Option<PathBuf>) -> Self {
        Journal { dir, live: Arc::default() }
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the command marked `marker` in container `container_id`, due to end by `timeout` from now.
    pub(crate) fn record(&self, marker: &Marker, container_id: &str, timeout: Duration) -> Result<Entry, String> {
        self.live().insert(marker.0.clone());
        let entry = Entry { journal: self.clone(), marker: marker.0.clone() };
        if let Some(dir) = &self.dir {
            let deadline = unix_now().saturating_add(timeout.as_secs()).saturating_add(1);
            std::fs::create_dir_all(dir)
                .and_then(|()| std::fs::write(dir.join(&marker.0), format!("{container_id}\n{deadline}\n")))
                .map_err(|e| format!("recording the command in {}: {e}", dir.display()))?;
        }
        Ok(entry)
    }

    /// Kills the journalled commands of an earlier process whose deadline passed, and forgets them (also when
    /// they cannot be killed: that will not change). The number of processes killed.
    pub(crate) fn kill_overdue(&self) -> usize {
        let Some(dir) = &self.dir else { return 0 };
        let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
        let now = unix_now();
        let mut killed = 0;
        for e in entries.flatten() {
            let Some(marker) = e.file_name().to_str().map(str::to_string) else { continue };
            if self.live().contains(&marker) {
                continue;
            }
            let path = e.path();
            let Some((container_id, deadline)) = read_entry(&path) else {
                forget(&path);
                continue;
            };
            if deadline > now {
                continue;
            }
            match kill_command(&container_id, &Marker(marker), None) {
                Ok(n) => {
                    if n > 0 {
                        warn!(container = %container_id, processes = n, "killed a command that outlived its timeout while the operator was down");
                    }
                    killed += n;
                }
                Err(why) => {
                    warn!(container = %container_id, reason = %why, "could not kill a command that outlived its timeout")
                }
            }
            forget(&path);
        }
        killed
    }
}

fn read_entry(path: &Path) -> Option<(String, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut lines = text.lines();
    let container_id = lines.next()?.trim();
    // A container id is hex; anything else is not a file of ours (and must not match any cgroup by accident).
    if container_id.len() < 12 || !container_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some((container_id.to_string(), lines.next()?.trim().parse().ok()?))
}

fn forget(path: &Path) {
    if let Err(e) = std::fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        debug!(path = %path.display(), error = %e, "removing a journalled command");
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.journal.live().remove(&self.marker);
        if let Some(dir) = &self.journal.dir {
            forget(&dir.join(&self.marker));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_read_back_and_a_foreign_file_is_not_taken_for_one() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::new(Some(dir.path().to_path_buf()));
        let marker = Marker::new();
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let entry = journal.record(&marker, id, Duration::from_secs(5)).unwrap();
        let (container, deadline) = read_entry(&dir.path().join(&marker.0)).unwrap();
        assert_eq!(container, id);
        assert!(deadline >= unix_now() + 5);
        // Its own process's commands are not overdue, whatever their deadline.
        assert_eq!(journal.kill_overdue(), 0);
        assert!(dir.path().join(&marker.0).exists());
        drop(entry);
        assert!(!dir.path().join(&marker.0).exists(), "an ended command leaves nothing behind");
        std::fs::write(dir.path().join("x"), "/ \n0\n").unwrap();
        assert_eq!(read_entry(&dir.path().join("x")), None);
        assert_eq!(journal.kill_overdue(), 0);
        assert!(!dir.path().join("x").exists());
    }
}
