//! The records of running one-shot sandboxes (`nsbox run`, `nsbox exec` without --session),
//! so that `ps -a`, `inspect`, `stop` and `wait` find them:
//!
//! ```text
//! <run dir>/oneshots/<id>.json   id, supervisor pid and start time, root, command, labels
//! ```
//!
//! The one-shot's own nsbox process (its supervisor) writes the record once its command
//! started — one small write and a rename, off the cold start's path to the command — and
//! removes it when the sandbox is gone. A supervisor killed with SIGKILL leaves its record:
//! the pid's start time (`/proc/PID/stat`) tells a live supervisor from a reused pid, and
//! `nsbox prune` removes the stale ones.
//!
//! Everything takes the run directory (and `/proc`) as arguments so unit tests use temporary
//! ones.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::state::valid_name;

/// What is recorded about a running one-shot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OneShotRecord {
    pub id: String,
    /// The nsbox process that supervises the sandbox (it relays, and `stop` signals it).
    pub supervisor_pid: u32,
    /// Its start time in clock ticks after boot (`/proc/PID/stat`, field 22): a pid reused
    /// by another process has another.
    pub supervisor_start: u64,
    /// Unix seconds.
    pub created: u64,
    /// "host", "dir:PATH" or "image:REF".
    pub root: String,
    pub network: String,
    /// The command, its secrets masked.
    pub command: Vec<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// The one-shot records under a run directory.
#[derive(Debug, Clone)]
pub struct OneShotStore {
    dir: PathBuf,
    proc_root: PathBuf,
}

impl OneShotStore {
    pub fn new(run_dir: impl AsRef<Path>, proc_root: impl Into<PathBuf>) -> OneShotStore {
        OneShotStore {
            dir: run_dir.as_ref().join("oneshots"),
            proc_root: proc_root.into(),
        }
    }

    /// The store under `crate::session::state::system_run_dir()`, with the host's /proc.
    pub fn system() -> OneShotStore {
        OneShotStore::new(super::state::system_run_dir(), "/proc")
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Writes `record` (a temporary file renamed into place, so a reader never sees half of
    /// it). The directory is made on first use only.
    pub fn write(&self, record: &OneShotRecord) -> io::Result<()> {
        if !valid_name(&record.id) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not an id"));
        }
        let text = serde_json::to_vec(record).map_err(io::Error::other)?;
        let tmp = self.dir.join(format!(".{}.tmp", record.id));
        let create = || {
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&tmp)
        };
        let mut file = match create() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&self.dir)?;
                create()?
            }
            other => other?,
        };
        io::Write::write_all(&mut file, &text)?;
        drop(file);
        std::fs::rename(&tmp, self.path(&record.id))
    }

    /// Removes a record (gone already is fine).
    /// Removes the records' directory when it holds none (`nsbox prune`: a run directory
    /// left with nothing but the event journal).
    pub fn remove_dir_if_empty(&self) {
        let _ = std::fs::remove_dir(&self.dir);
    }

    pub fn remove(&self, id: &str) -> io::Result<()> {
        if !valid_name(id) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not an id"));
        }
        match std::fs::remove_file(self.path(id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// The record of `id`, which must be a name (never a path) and match what it holds.
    pub fn read(&self, id: &str) -> Option<OneShotRecord> {
        if !valid_name(id) {
            return None;
        }
        let bytes = std::fs::read(self.path(id)).ok()?;
        let record: OneShotRecord = serde_json::from_slice(&bytes).ok()?;
        (record.id == id).then_some(record)
    }

    /// Every readable record, oldest first.
    pub fn list(&self) -> Vec<OneShotRecord> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut records: Vec<OneShotRecord> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name();
                let id = name.to_str()?.strip_suffix(".json")?.to_string();
                self.read(&id)
            })
            .collect();
        records.sort_by_key(|r| (r.created, r.id.clone()));
        records
    }

    /// A one-shot by id or unique id prefix (at least 3 characters).
    pub fn resolve(&self, reference: &str) -> Option<OneShotRecord> {
        if let Some(record) = self.read(reference) {
            return Some(record);
        }
        if reference.len() < 3 || !valid_name(reference) {
            return None;
        }
        let mut matches = self
            .list()
            .into_iter()
            .filter(|r| r.id.starts_with(reference));
        match (matches.next(), matches.next()) {
            (Some(one), None) => Some(one),
            _ => None,
        }
    }

    /// Whether the record's supervisor still runs (same pid, same start time).
    pub fn is_live(&self, record: &OneShotRecord) -> bool {
        process_start_ticks(&self.proc_root, record.supervisor_pid) == Some(record.supervisor_start)
    }
}

/// A process's start time in clock ticks after boot (field 22 of `/proc/PID/stat`), None
/// when there is no such process.
pub fn process_start_ticks(proc_root: &Path, pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces or ')': fields are
    // counted after its last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, pid: u32, start: u64) -> OneShotRecord {
        OneShotRecord {
            id: id.into(),
            supervisor_pid: pid,
            supervisor_start: start,
            created: 1,
            root: "host".into(),
            network: "none".into(),
            command: vec!["/bin/true".into()],
            labels: BTreeMap::from([("job".into(), "42".into())]),
        }
    }

    fn fake_proc(root: &Path, pid: u32, start: u64) {
        let dir = root.join(pid.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        // A command name with a space and a ')' in it.
        let mut fields = vec!["S".to_string()];
        fields.extend((4..22).map(|n| n.to_string()));
        fields.push(start.to_string());
        fields.push("0".into());
        std::fs::write(
            dir.join("stat"),
            format!("{pid} (nsbox x) y) {}", fields.join(" ")),
        )
        .unwrap();
    }

    #[test]
    fn records_are_written_listed_resolved_and_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let store = OneShotStore::new(tmp.path().join("run"), tmp.path().join("proc"));
        store.write(&record("aaa111", 10, 5)).unwrap();
        store.write(&record("aab222", 11, 6)).unwrap();
        assert_eq!(store.list().len(), 2);
        assert_eq!(store.resolve("aaa111").unwrap().supervisor_pid, 10);
        assert_eq!(store.resolve("aab").unwrap().id, "aab222");
        assert!(store.resolve("aa").is_none(), "too short a prefix");
        assert!(store.resolve("zzz").is_none());
        for bad in ["../x", "", "/etc/passwd"] {
            assert!(store.resolve(bad).is_none(), "{bad}");
            assert!(store.remove(bad).is_err(), "{bad}");
        }
        store.remove("aaa111").unwrap();
        store.remove("aaa111").unwrap();
        assert_eq!(store.list().len(), 1);
        assert!(
            !tmp.path().join("run/oneshots/.aaa111.tmp").exists(),
            "no temporary file left"
        );
    }

    #[test]
    fn a_supervisor_is_live_only_with_its_own_start_time() {
        let tmp = tempfile::tempdir().unwrap();
        let proc_root = tmp.path().join("proc");
        let store = OneShotStore::new(tmp.path().join("run"), &proc_root);
        fake_proc(&proc_root, 77, 12345);
        assert_eq!(process_start_ticks(&proc_root, 77), Some(12345));
        assert!(store.is_live(&record("a1", 77, 12345)));
        assert!(!store.is_live(&record("a1", 77, 999)), "a reused pid");
        assert!(!store.is_live(&record("a1", 78, 12345)), "no such process");
        // The real /proc: this process is live under its own start time.
        let me = std::process::id();
        let start = process_start_ticks(Path::new("/proc"), me).unwrap();
        assert!(OneShotStore::new(tmp.path(), "/proc").is_live(&record("a2", me, start)));
    }
}
