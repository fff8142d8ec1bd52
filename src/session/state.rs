//! Where sessions live on the host, and what is written about them.
//!
//! ```text
//! <run dir>/sessions/<id>/session.json   the record (what, since when, how it ended)
//! <run dir>/sessions/<id>/lock           held (flock) by the session's supervisor while it lives
//! <run dir>/sessions/<id>/control.sock   the supervisor's socket (root only)
//! <run dir>/sessions/<id>/supervisor.log the supervisor's own messages
//! <run dir>/sessions/<id>/network.log    DNS and connection decisions (--log-network)
//! <run dir>/sessions/<id>/output.log     the commands' output, masked, bounded (`nsbox logs`)
//! <run dir>/names/<name>                 the id a name stands for (claimed with O_EXCL)
//! <run dir>/oneshots/<id>.json           a running one-shot sandbox (`crate::session::oneshot`)
//! <run dir>/events.jsonl, events.jsonl.1 the lifecycle journal (`crate::session::journal`)
//! ```
//!
//! The run directory is `/run/nsbox` (root-only), or `$NSBOX_RUN_DIR` when set (an absolute
//! path; tests give each case its own). Everything takes the directory as an argument so unit
//! tests use a temporary one.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::fs::{self as rfs, FlockOperation, Mode, OFlags};
use serde::{Deserialize, Serialize};

/// nsbox's runtime state directory.
pub const RUN_DIR: &str = "/run/nsbox";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("no session '{0}' — hint: `nsbox ps` lists the sessions")]
    Unknown(String),
    #[error("the name '{0}' is taken by session {1} — hint: choose another name, or `nsbox rm` that session")]
    NameTaken(String, String),
    #[error("'{0}' is not a valid session name: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")]
    BadName(String),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("session record {path} is not valid: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("refusing to talk to {path}: {message} — hint: something other than the session's supervisor listens there; `nsbox stop` the session and report it")]
    NotTheSupervisor { path: PathBuf, message: String },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StateError + 'a {
    move |source| StateError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

fn errno_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(rustix::io::Errno) -> StateError + 'a {
    move |e| StateError::Io {
        what,
        path: path.to_path_buf(),
        source: io::Error::from_raw_os_error(e.raw_os_error()),
    }
}

/// What is recorded about a session (`session.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SessionRecord {
    pub id: String,
    pub name: Option<String>,
    /// Unix seconds.
    pub created: u64,
    /// "host", "dir:PATH" or "image:REF".
    pub root: String,
    /// The seccomp/capability profile's name.
    #[serde(default)]
    pub profile: String,
    pub network: String,
    pub memory: Option<u64>,
    pub cpu_millis: Option<u64>,
    pub pids: Option<u64>,
    pub uid: u32,
    pub gid: u32,
    /// Idle sessions are stopped after this many seconds.
    pub max_age: Option<u64>,
    /// `--ttl`: stopped this many seconds after `created`, busy or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u64>,
    /// `--rm`: removed this many seconds after it stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remove_after: Option<u64>,
    pub supervisor_pid: u32,
    /// The sandbox's init, as a host pid (0 until it runs).
    pub init_pid: i32,
    /// Where commands start by default.
    pub workdir: PathBuf,
    /// Default output cap of a command run in the session.
    pub max_output: Option<u64>,
    /// Set when the session ended.
    pub stopped: Option<Stopped>,
    /// `nsbox pause` froze its processes (until `nsbox resume`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
}

/// How a session ended.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Stopped {
    /// Unix seconds.
    pub at: u64,
    pub reason: String,
}

/// What `nsbox ps` shows for a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionState {
    /// Its supervisor is alive.
    Running,
    /// It ended (stop, idle, its sandbox died) and is waiting for `rm` or `prune`.
    Stopped,
    /// Its supervisor was killed: `prune` cleans up after it.
    Dead,
}

/// `$NSBOX_RUN_DIR` if set to an absolute path, else [`RUN_DIR`].
pub fn system_run_dir() -> PathBuf {
    match std::env::var_os("NSBOX_RUN_DIR") {
        Some(dir) if Path::new(&dir).is_absolute() => PathBuf::from(dir),
        _ => PathBuf::from(RUN_DIR),
    }
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// The sessions' directories under a run directory.
#[derive(Debug, Clone)]
pub struct SessionStore {
    run_dir: PathBuf,
}

impl SessionStore {
    pub fn new(run_dir: impl Into<PathBuf>) -> SessionStore {
        SessionStore {
            run_dir: run_dir.into(),
        }
    }

    /// The store under [`system_run_dir`].
    pub fn system() -> SessionStore {
        SessionStore::new(system_run_dir())
    }

    fn sessions(&self) -> PathBuf {
        self.run_dir.join("sessions")
    }

    fn names(&self) -> PathBuf {
        self.run_dir.join("names")
    }

    pub fn dir(&self, id: &str) -> PathBuf {
        self.sessions().join(id)
    }

    pub fn socket(&self, id: &str) -> PathBuf {
        self.dir(id).join("control.sock")
    }

    pub fn log(&self, id: &str) -> PathBuf {
        self.dir(id).join("supervisor.log")
    }

    /// The session's network decisions, one line each (`--net filtered --log-network`).
    pub fn network_log(&self, id: &str) -> PathBuf {
        self.dir(id).join("network.log")
    }

    /// The commands' relayed output, JSON lines (see `relay::log`).
    pub fn output_log(&self, id: &str) -> PathBuf {
        self.dir(id).join("output.log")
    }

    fn record_path(&self, id: &str) -> PathBuf {
        self.dir(id).join("session.json")
    }

    fn private_dir(path: &Path) -> Result<(), StateError> {
        match rfs::mkdir(path, Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(errno_err("create", path)(e)),
        }
        let st = rfs::lstat(path).map_err(errno_err("inspect", path))?;
        let is_dir = rfs::FileType::from_raw_mode(st.st_mode) == rfs::FileType::Directory;
        if !is_dir || st.st_uid != rustix::process::geteuid().as_raw() || st.st_mode & 0o022 != 0 {
            return Err(StateError::Io {
                what: "refuse to use",
                path: path.to_path_buf(),
                source: io::Error::other("not a private directory of this user"),
            });
        }
        Ok(())
    }

    /// Creates the session's directory and takes its lock (held as long as the returned
    /// descriptor lives). Claims `name` first, if given.
    pub fn create(&self, id: &str, name: Option<&str>) -> Result<OwnedFd, StateError> {
        Self::private_dir(&self.run_dir)?;
        Self::private_dir(&self.sessions())?;
        if let Some(name) = name {
            self.claim_name(name, id)?;
        }
        let dir = self.dir(id);
        let created =
            rfs::mkdir(&dir, Mode::from_raw_mode(0o700)).map_err(errno_err("create", &dir));
        if let Err(e) = created {
            if let Some(name) = name {
                let _ = std::fs::remove_file(self.names().join(name));
            }
            return Err(e);
        }
        let lock_path = dir.join("lock");
        let lock = rfs::open(
            &lock_path,
            OFlags::RDWR | OFlags::CREATE | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::from_raw_mode(0o600),
        )
        .map_err(errno_err("create", &lock_path))?;
        rfs::flock(&lock, FlockOperation::NonBlockingLockExclusive)
            .map_err(errno_err("lock", &lock_path))?;
        Ok(lock)
    }

    fn claim_name(&self, name: &str, id: &str) -> Result<(), StateError> {
        if !valid_name(name) {
            return Err(StateError::BadName(name.to_string()));
        }
        let names = self.names();
        Self::private_dir(&names)?;
        let path = names.join(name);
        match rfs::open(
            &path,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::from_raw_mode(0o600),
        ) {
            Ok(fd) => {
                rustix::io::write(&fd, id.as_bytes()).map_err(errno_err("write", &path))?;
                Ok(())
            }
            Err(rustix::io::Errno::EXIST) => {
                let owner = std::fs::read_to_string(&path).unwrap_or_default();
                Err(StateError::NameTaken(
                    name.to_string(),
                    owner.trim().to_string(),
                ))
            }
            Err(e) => Err(errno_err("claim name", &path)(e)),
        }
    }

    /// Writes the record atomically (temp file + rename).
    pub fn write_record(&self, record: &SessionRecord) -> Result<(), StateError> {
        let path = self.record_path(&record.id);
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(record).map_err(|e| StateError::Corrupt {
            path: path.clone(),
            message: e.to_string(),
        })?;
        std::fs::write(&tmp, text).map_err(io_err("write", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_err("write", &path))
    }

    /// Reads the record of session `id`. `id` must be a name (never a path: a reference such
    /// as `../../tmp/x` would read a record planted outside the store), and the record must
    /// name the directory it was read from: an id read back from disk is used to build paths
    /// (the control socket, the directory `rm` deletes), so a forged one is refused here.
    pub fn read_record(&self, id: &str) -> Result<SessionRecord, StateError> {
        if !valid_name(id) {
            return Err(StateError::Unknown(id.to_string()));
        }
        let path = self.record_path(id);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StateError::Unknown(id.to_string()))
            }
            Err(e) => return Err(io_err("read", &path)(e)),
        };
        let record: SessionRecord =
            serde_json::from_slice(&text).map_err(|e| StateError::Corrupt {
                path: path.clone(),
                message: e.to_string(),
            })?;
        check_record_names(&record, id).map_err(|message| StateError::Corrupt { path, message })?;
        Ok(record)
    }

    /// Whether a live supervisor holds the session's lock.
    pub fn is_live(&self, id: &str) -> bool {
        let path = self.dir(id).join("lock");
        let Ok(fd) = rfs::open(
            &path,
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
        ) else {
            return false;
        };
        matches!(
            rfs::flock(&fd, FlockOperation::NonBlockingLockShared),
            Err(rustix::io::Errno::WOULDBLOCK)
        )
    }

    pub fn state(&self, record: &SessionRecord) -> SessionState {
        if self.is_live(&record.id) {
            SessionState::Running
        } else if record.stopped.is_some() {
            SessionState::Stopped
        } else {
            SessionState::Dead
        }
    }

    /// Every session with a readable record, oldest first.
    pub fn list(&self) -> Vec<SessionRecord> {
        let Ok(entries) = std::fs::read_dir(self.sessions()) else {
            return Vec::new();
        };
        let mut records: Vec<SessionRecord> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter_map(|id| self.read_record(&id).ok())
            .collect();
        records.sort_by_key(|r| (r.created, r.id.clone()));
        records
    }

    /// Session directories that have no readable record (a supervisor killed while creating).
    pub fn orphan_dirs(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.sessions()) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|id| valid_name(id) && self.read_record(id).is_err() && !self.is_live(id))
            .collect()
    }

    /// Finds a session by id, id prefix (unique) or name.
    /// A reference is a name, never a path: anything else is unknown.
    pub fn resolve(&self, id_or_name: &str) -> Result<SessionRecord, StateError> {
        if !valid_name(id_or_name) {
            return Err(StateError::Unknown(id_or_name.to_string()));
        }
        if let Ok(id) = std::fs::read_to_string(self.names().join(id_or_name)) {
            if let Ok(record) = self.read_record(id.trim()) {
                return Ok(record);
            }
        }
        if let Ok(record) = self.read_record(id_or_name) {
            return Ok(record);
        }
        let matches: Vec<SessionRecord> = self
            .list()
            .into_iter()
            .filter(|r| r.id.starts_with(id_or_name) && id_or_name.len() >= 3)
            .collect();
        match matches.len() {
            1 => matches
                .into_iter()
                .next()
                .ok_or_else(|| StateError::Unknown(id_or_name.into())),
            _ => Err(StateError::Unknown(id_or_name.to_string())),
        }
    }

    /// Removes a session's directory and name (an `rm` event in the journal). The caller made
    /// sure it is not live.
    pub fn remove(&self, record: &SessionRecord) -> Result<(), StateError> {
        let event = self.lifecycle_event(record, "rm");
        self.remove_quietly(record)?;
        self.emit(event);
        Ok(())
    }

    /// [`Self::remove`] without an event: for a session that was never announced (its
    /// create was interrupted).
    pub fn remove_quietly(&self, record: &SessionRecord) -> Result<(), StateError> {
        if let Some(name) = &record.name {
            self.release_name(name, &record.id);
        }
        self.remove_dir(&record.id)
    }

    /// The lifecycle journal beside the sessions (`nsbox events`).
    pub fn journal(&self) -> super::journal::Journal {
        super::journal::Journal::new(&self.run_dir)
    }

    /// A session's labels (`create --label`), kept beside its record.
    pub fn labels(&self, id: &str) -> std::collections::BTreeMap<String, String> {
        std::fs::read(self.dir(id).join("labels.json"))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    /// A lifecycle event about `record`, with its labels; the caller adds its own fields.
    pub fn lifecycle_event(
        &self,
        record: &SessionRecord,
        action: &str,
    ) -> serde_json::Map<String, serde_json::Value> {
        let mut event = super::journal::event(
            action,
            super::journal::Kind::Session,
            &record.id,
            record.name.as_deref(),
        );
        let labels = self.labels(&record.id);
        if !labels.is_empty() {
            event.insert("labels".into(), serde_json::json!(labels));
        }
        event
    }

    /// Appends an event to the journal; a failure is logged, never fatal.
    pub fn emit(&self, event: serde_json::Map<String, serde_json::Value>) {
        if let Err(e) = self.journal().append(&serde_json::Value::Object(event)) {
            tracing::warn!("recording a lifecycle event: {e}");
        }
    }

    /// Frees `name` if it still stands for `id`.
    pub fn release_name(&self, name: &str, id: &str) {
        if !valid_name(name) {
            return;
        }
        let path = self.names().join(name);
        if std::fs::read_to_string(&path).is_ok_and(|owner| owner.trim() == id) {
            let _ = std::fs::remove_file(&path);
        }
    }

    /// Removes a session directory (its files are plain files; no link is followed).
    pub fn remove_dir(&self, id: &str) -> Result<(), StateError> {
        // The last line of defence: whatever the caller read, only a name below sessions/ is
        // ever removed.
        if !valid_name(id) {
            return Err(StateError::BadName(id.to_string()));
        }
        let dir = self.dir(id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("remove", &dir)(e)),
        }
    }

    /// Removes the store's directories if they hold nothing (after the last session is gone).
    pub fn remove_if_empty(&self) {
        for dir in [self.sessions(), self.names(), self.run_dir.clone()] {
            let _ = std::fs::remove_dir(dir);
        }
    }

    /// Age of a record (since creation, or since it stopped).
    pub fn age(record: &SessionRecord, since_stop: bool) -> Duration {
        let at = match (&record.stopped, since_stop) {
            (Some(s), true) => s.at,
            _ => record.created,
        };
        Duration::from_secs(now_secs().saturating_sub(at))
    }
}

/// Checks who accepted a connection to a session's control socket, before anything (argv,
/// environment, stdio descriptors) is sent there: it must run as root, as nsbox's supervisors
/// do, and be the supervisor the record names (the process that bound and listens on the
/// socket; SO_PEERCRED reports the listener's credentials as of `listen`). A stale record
/// whose pid was reused by a root process still fails the pid check unless that process also
/// listens on this very path, which only root could arrange.
pub fn check_supervisor_peer(
    socket: std::os::fd::BorrowedFd<'_>,
    record: &SessionRecord,
    path: &Path,
) -> Result<(), StateError> {
    let refuse = |message: String| StateError::NotTheSupervisor {
        path: path.to_path_buf(),
        message,
    };
    let cred = rustix::net::sockopt::socket_peercred(socket)
        .map_err(|e| refuse(format!("cannot read its credentials ({e})")))?;
    let (pid, uid) = (cred.pid.as_raw_nonzero().get(), cred.uid.as_raw());
    if uid != 0 {
        return Err(refuse(format!("its listener runs as uid {uid}, not root")));
    }
    if u32::try_from(pid).ok() != Some(record.supervisor_pid) {
        return Err(refuse(format!(
            "its listener is pid {pid}, not the session's supervisor (pid {})",
            record.supervisor_pid
        )));
    }
    Ok(())
}

/// Checks that a record read from `sessions/<dir_name>/` names that directory, and that its
/// session name (used as a path under names/) is a name.
fn check_record_names(record: &SessionRecord, dir_name: &str) -> Result<(), String> {
    if record.id != dir_name {
        return Err(format!(
            "its id {:?} is not the name of its directory {dir_name:?}",
            record.id
        ));
    }
    if let Some(name) = &record.name {
        if !valid_name(name) {
            return Err(format!("its session name {name:?} is not a valid name"));
        }
    }
    Ok(())
}

/// Session names: like sandbox ids and file names, nothing that could be a path.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, name: Option<&str>) -> SessionRecord {
        SessionRecord {
            id: id.into(),
            name: name.map(str::to_string),
            created: now_secs(),
            root: "host".into(),
            profile: "default".into(),
            network: "none".into(),
            memory: Some(1 << 30),
            cpu_millis: None,
            pids: Some(64),
            uid: 100,
            gid: 101,
            max_age: None,
            ttl: None,
            remove_after: None,
            supervisor_pid: std::process::id(),
            init_pid: 0,
            workdir: PathBuf::from("/sandbox"),
            max_output: None,
            stopped: None,
            paused: false,
        }
    }

    #[test]
    fn create_record_resolve_and_remove() {
        let tmp = tempfile::tempdir().unwrap();
        let store = SessionStore::new(tmp.path().join("run"));
        let lock = store.create("abc123def456", Some("builder")).unwrap();
        store
            .write_record(&record("abc123def456", Some("builder")))
            .unwrap();
        assert!(store.is_live("abc123def456"), "the lock marks it live");
        assert_eq!(store.resolve("builder").unwrap().id, "abc123def456");
        assert_eq!(store.resolve("abc123def456").unwrap().id, "abc123def456");
        assert_eq!(
            store.resolve("abc1").unwrap().id,
            "abc123def456",
            "a unique prefix"
        );
        assert!(matches!(store.resolve("nope"), Err(StateError::Unknown(_))));
        let r = store.read_record("abc123def456").unwrap();
        assert_eq!(store.state(&r), SessionState::Running);
        drop(lock);
        assert_eq!(
            store.state(&r),
            SessionState::Dead,
            "no supervisor, no stop record"
        );
        let mut stopped = r.clone();
        stopped.stopped = Some(Stopped {
            at: now_secs(),
            reason: "stopped".into(),
        });
        store.write_record(&stopped).unwrap();
        assert_eq!(store.state(&stopped), SessionState::Stopped);
        store.remove(&stopped).unwrap();
        assert!(store.list().is_empty());
        assert!(store.resolve("builder").is_err(), "the name is free again");
    }

    #[test]
    fn names_are_exclusive_and_checked() {
        let tmp = tempfile::tempdir().unwrap();
        let store = SessionStore::new(tmp.path().join("run"));
        let _a = store.create("aaaaaaaaaaaa", Some("one")).unwrap();
        let err = store.create("bbbbbbbbbbbb", Some("one")).unwrap_err();
        assert!(
            matches!(err, StateError::NameTaken(_, ref id) if id == "aaaaaaaaaaaa"),
            "{err}"
        );
        assert!(
            !store.dir("bbbbbbbbbbbb").exists(),
            "nothing left by a refused create"
        );
        for bad in ["", "../x", "a/b", "-x", &"x".repeat(65)] {
            assert!(
                matches!(
                    store.create("cccccccccccc", Some(bad)),
                    Err(StateError::BadName(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn references_and_ids_on_disk_are_names_never_paths() {
        let tmp = tempfile::tempdir().unwrap();
        let store = SessionStore::new(tmp.path().join("run"));
        drop(store.create("eeeeeeeeeeee", None).unwrap());
        // A record planted outside the store, reachable with `..`.
        let outside = tmp.path().join("planted");
        std::fs::create_dir(&outside).unwrap();
        let hostile = record("../../victim", None);
        std::fs::write(
            outside.join("session.json"),
            serde_json::to_vec(&hostile).unwrap(),
        )
        .unwrap();
        for bad in ["../../planted", "../sessions/eeeeeeeeeeee", "/etc", ""] {
            assert!(
                matches!(store.resolve(bad), Err(StateError::Unknown(_))),
                "{bad}"
            );
        }
        // A record whose id is not its directory's name is corrupt, not obeyed.
        std::fs::write(
            store.dir("eeeeeeeeeeee").join("session.json"),
            serde_json::to_vec(&hostile).unwrap(),
        )
        .unwrap();
        assert!(matches!(
            store.read_record("eeeeeeeeeeee"),
            Err(StateError::Corrupt { .. })
        ));
        assert!(store.list().is_empty());
        assert!(matches!(
            store.remove_dir("../../victim"),
            Err(StateError::BadName(_))
        ));
        assert_eq!(store.orphan_dirs(), vec!["eeeeeeeeeeee".to_string()]);
    }

    #[test]
    fn records_without_a_file_are_orphans() {
        let tmp = tempfile::tempdir().unwrap();
        let store = SessionStore::new(tmp.path().join("run"));
        drop(store.create("dddddddddddd", None).unwrap());
        assert_eq!(store.orphan_dirs(), vec!["dddddddddddd".to_string()]);
        store.remove_dir("dddddddddddd").unwrap();
        assert!(store.orphan_dirs().is_empty());
    }
}
