//! Messages between nsbox commands (clients) and a session's supervisor, over the session's
//! SOCK_SEQPACKET socket: one JSON message per packet, descriptors attached with SCM_RIGHTS
//! (the same framing as `sandbox::control`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::relay::Usage;

/// From a client to the supervisor.
#[derive(Debug, Serialize, Deserialize, PartialEq, Clone)]
#[serde(tag = "msg", rename_all = "snake_case")]
pub enum Request {
    /// Run a command. Attached: [stdin, stdout, stderr, status], or [status] with a terminal;
    /// `gated`: a gate before the status (see `sandbox::control::ExecRequest::gated`).
    Exec {
        argv: Vec<Vec<u8>>,
        /// Variables set on top of the session's environment.
        env: Vec<(String, String)>,
        /// `env` is the command's whole environment, not laid over the session's (the OCI
        /// runtime's `exec`, whose process.json says all of it, as runc's does).
        #[serde(default)]
        replace_env: bool,
        workdir: Option<PathBuf>,
        tty: bool,
        winsize: Option<(u16, u16)>,
        #[serde(default)]
        gated: bool,
        /// See `sandbox::control::ExecRequest::failure_on_terminal`.
        #[serde(default)]
        failure_on_terminal: bool,
        /// Another uid:gid of the sandbox than its user's (never with capabilities).
        #[serde(default)]
        user: Option<(u32, u32)>,
    },
    /// A signal for this connection's command (its process group).
    Signal { signal: i32 },
    /// Resource usage and activity.
    Stats,
    /// End the session: TERM to every command, KILL after `grace_ms`.
    Stop { grace_ms: u64, reason: String },
    /// A descriptor for the sandbox's root directory (for `nsbox cp`).
    OpenRoot,
    /// Freeze (`true`, `nsbox pause`) or thaw (`false`, `nsbox resume`) every process.
    Freeze { frozen: bool },
    /// Freeze the session while this connection lasts and attach its root and its overlay's
    /// upper directory (for `nsbox commit`): it thaws when the connection closes, however
    /// the client ends.
    Snapshot,
}

/// From the supervisor to a client.
#[derive(Debug, Serialize, Deserialize, PartialEq, Clone)]
#[serde(tag = "msg", rename_all = "snake_case")]
pub enum Reply {
    /// The command runs. With a terminal, its pty master is attached.
    ExecStarted {
        /// Values to mask in the command's output.
        secrets: Vec<String>,
        /// The command's id in the session (stamped on `--json` events).
        #[serde(default)]
        exec_id: u64,
    },
    /// The command ended.
    ExecEnded {
        code: Option<i32>,
        signal: Option<i32>,
        /// The OOM killer killed a process of the session while the command ran.
        oom: bool,
        /// Measured on the session's cgroup (see `relay::Usage`).
        #[serde(default)]
        usage: Usage,
    },
    /// The request was refused.
    Refused {
        message: String,
    },
    Stats(SessionStats),
    /// The session is stopping; the socket closes when it has.
    Stopping,
    /// The session is now frozen (`true`) or running (`false`); `changed` is false when it
    /// already was.
    Frozen {
        frozen: bool,
        changed: bool,
    },
    /// The session is frozen for this connection; attached: [root, upper directory].
    Snapshot(SnapshotInfo),
    /// The sandbox's root directory is attached; files copied in belong to uid:gid (inside ids,
    /// host ids are these plus `uid_base`).
    Root {
        uid: u32,
        gid: u32,
        uid_base: u32,
    },
}

/// `nsbox stats`.
#[derive(Debug, Serialize, Deserialize, PartialEq, Clone, Default)]
pub struct SessionStats {
    pub memory_current_bytes: Option<u64>,
    pub memory_peak_bytes: Option<u64>,
    pub memory_limit_bytes: Option<u64>,
    pub pids_current: Option<u64>,
    pub pids_limit: Option<u64>,
    pub cpu_usage_usec: Option<u64>,
    pub commands_running: usize,
    pub idle_secs: u64,
    /// Frozen by `nsbox pause`.
    #[serde(default)]
    pub paused: bool,
}

/// What `nsbox commit` needs besides the two directories.
#[derive(Debug, Serialize, Deserialize, PartialEq, Clone)]
pub struct SnapshotInfo {
    /// The image the session started from (manifest digest), `None` for a host or directory
    /// root.
    pub image: Option<String>,
    /// The image's layer directories, top first.
    pub layers: Vec<PathBuf>,
    /// The session's environment, without any variable that holds a secret.
    pub env: Vec<(String, String)>,
    pub workdir: PathBuf,
    /// The sandbox user (inside ids).
    pub uid: u32,
    pub gid: u32,
    /// Host id of the sandbox's root.
    pub uid_base: u32,
    /// The network policy, for `nsbox fork`: the mode and the patterns as given.
    #[serde(default)]
    pub network: String,
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub deny: Vec<String>,
    #[serde(default)]
    pub writable_root: bool,
    /// A fork's snapshot layers (above `layers`, top first): its parent's files, in no image.
    #[serde(default)]
    pub extra_layers: Vec<PathBuf>,
}
