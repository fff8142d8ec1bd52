//! Per-sandbox cgroups: where the controllers live on this host, creating one cgroup per sandbox
//! with its limits, the fds that put the sandbox into it cheaply, its counters, and removal
//! (including leftovers of a killed supervisor, for `nsbox prune`).
//!
//! # What it owns
//! - [`CgroupLayout`]: for each controller nsbox uses (memory, pids, cpu), whether it is on the
//!   unified (v2) hierarchy, on a cgroup v1 mount (possibly co-mounted, e.g. `cpu,cpuacct`), or
//!   unavailable. Detected from `/proc/self/mountinfo` and the hierarchy's own files, never from
//!   an assumed `/sys/fs/cgroup` layout, because hosts are pure v2, hybrid (this development
//!   machine: controllers on v1, an almost empty cgroup2 at `/sys/fs/cgroup/unified`) or v1.
//! - [`SandboxCgroup`]: the directories `<hierarchy root>/nsbox-<id>` (or a [`CgroupAt`] path an
//!   OCI bundle's `cgroupsPath` names, with the parents it needs), one per distinct hierarchy
//!   used, with the limits written before any process enters.
//! - [`find_leftovers`] / [`remove_leftover`]: `nsbox-*` directories that outlived their sandbox.
//!
//! # What it must not do
//! - Write to any cgroup it did not create. In particular it never enables controllers in a
//!   parent's `cgroup.subtree_control`: that belongs to whoever owns the parent (systemd, the
//!   container runtime, the admin); when a controller is not enabled, creation fails with a hint.
//! - Move processes itself. The join is done by the process that starts the sandbox, through the
//!   fds opened here (see below), because the slow part is the move, not the directory. The one
//!   exception is [`move_process`], for the OCI runtime's waiter, which an engine's shim expects
//!   in the container's cgroup (`docs/runtime.md`, *Cgroups*).
//! - Kill processes. Stopping the sandbox belongs to the supervisor; removal only succeeds once
//!   the cgroup is empty (the kernel refuses otherwise, and so does [`remove_leftover`]).
//!
//! # Why the join API looks like it does
//! Moving a process by writing its pid to `cgroup.procs` takes the global
//! `cgroup_threadgroup_rwsem` for writing, which costs 5–16 ms on a host that was idle (an RCU
//! grace period). Two paths avoid it, so [`SandboxCgroup::create`] opens their fds up front and
//! the starting code only has to use them:
//! - v2: `clone3(CLONE_INTO_CGROUP)` with [`SandboxCgroup::clone_into_fd`] starts the child
//!   directly inside the cgroup.
//! - v1: the still single-threaded child writes `0` (itself) into each v1 `tasks` file with
//!   [`join_self`] (measured 0.45 ms against 5.5 ms for a `cgroup.procs` write).
//!
//! # Tests
//! Every file access goes through the hierarchy paths of a [`CgroupLayout`], and
//! [`CgroupLayout::from_parts`] takes an injected root, so unit tests run on a fake cgroupfs in a
//! temp dir. Root-only tests in `tests::root` exercise the real kernel files of the host (and of
//! the pure-v2 VM, `shared/tools/vm-run`).

mod fsops;
mod layout;
mod leftover;
mod sandbox;

#[cfg(test)]
mod tests;

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::host::mountinfo::MountinfoError;

pub use layout::{CgroupKind, CgroupLayout, CgroupVersion, Hierarchy, Placement};
pub use leftover::{find_leftovers, hold_in_use, in_use, remove_leftover, Leftover};
pub use sandbox::{
    join_self, move_process, own_cgroup_procs, planned_dirs, prune_parents, remove_named, CgroupAt,
    SandboxCgroup, SUPERVISOR_LEAF, WORKLOAD_LEAF,
};

/// Prefix of every cgroup directory nsbox creates; `nsbox prune` looks for it.
pub const DIR_PREFIX: &str = "nsbox-";

/// The controllers nsbox puts limits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Controller {
    Memory,
    Pids,
    Cpu,
}

impl Controller {
    /// All of them, in the order nsbox handles them.
    pub const ALL: [Controller; 3] = [Controller::Memory, Controller::Pids, Controller::Cpu];

    /// The kernel's name, as in `cgroup.controllers` and v1 mount options.
    pub fn name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Pids => "pids",
            Controller::Cpu => "cpu",
        }
    }
}

impl fmt::Display for Controller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Limits for one sandbox. `None` leaves the kernel default (no limit) in place.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupLimits {
    /// Memory in bytes; swap is turned off for the sandbox when this is set.
    pub memory_bytes: Option<u64>,
    /// CPU bandwidth in thousandths of a core: 1500 = 1.5 cores.
    pub cpu_millis: Option<u64>,
    /// Maximum number of tasks (processes and threads).
    pub pids: Option<u64>,
}

/// Counters of a sandbox cgroup. `None` where this host does not provide the value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupStats {
    /// v2 `memory.current`, v1 `memory.usage_in_bytes`.
    pub memory_current_bytes: Option<u64>,
    /// v2 `memory.peak` (kernel 5.19+), v1 `memory.max_usage_in_bytes`.
    pub memory_peak_bytes: Option<u64>,
    /// `pids.current`.
    pub pids_current: Option<u64>,
    /// v2 `cpu.stat` `usage_usec`; v1 `cpuacct.usage` when cpuacct is co-mounted with cpu.
    pub cpu_usage_usec: Option<u64>,
}

/// Everything that can go wrong in this module. Messages say what failed; where the user can fix
/// it they end in "— hint: ...".
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(transparent)]
    Mountinfo(#[from] MountinfoError),

    #[error("no cgroup filesystem is mounted (none in {}) — hint: mount cgroup2, e.g. `mount -t cgroup2 none /sys/fs/cgroup`", mountinfo.display())]
    NotMounted { mountinfo: PathBuf },

    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("cannot parse {}: {reason}", path.display())]
    Parse { path: PathBuf, reason: String },

    #[error("{controller} controller not available: {reason} — hint: {hint}")]
    ControllerUnavailable {
        controller: Controller,
        reason: String,
        hint: String,
    },

    #[error("{controller} controller is not enabled for child cgroups of {} (its cgroup.subtree_control lists: {enabled}) — hint: {hint}", parent.display())]
    ControllerNotEnabled {
        controller: Controller,
        parent: PathBuf,
        enabled: String,
        hint: String,
    },

    #[error("the cgroup hierarchy at {} carrying {controller} is mounted read-only — hint: nsbox needs a writable cgroup mount to set a {controller} limit (in a container: a private cgroup namespace with a delegated, writable cgroupfs)", path.display())]
    ReadOnly {
        path: PathBuf,
        controller: Controller,
    },

    #[error("invalid sandbox id {id:?}: {reason}")]
    InvalidId { id: String, reason: &'static str },

    #[error("invalid cgroup path {path:?}: {reason}")]
    InvalidPath { path: String, reason: &'static str },

    #[error("invalid {limit} limit {value}: {reason}")]
    InvalidLimit {
        limit: &'static str,
        value: u64,
        reason: &'static str,
    },

    #[error("cgroup {} already exists — hint: a sandbox with this id is running, or a killed nsbox left it behind (`nsbox prune` removes leftovers)", path.display())]
    AlreadyExists { path: PathBuf },

    #[error("cannot create cgroup {}: {source}", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("cannot open {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("cannot write {value:?} to {}: {source}", file.display())]
    WriteLimit {
        file: PathBuf,
        value: String,
        #[source]
        source: io::Error,
    },

    #[error("cannot remove cgroup {}: {source}{}", path.display(), hint_suffix(hint.as_deref()))]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
        hint: Option<String>,
    },

    #[error("the sandbox cannot be paused: it has no cgroup v2 directory (cgroup.freeze) and no cgroup v1 freezer directory — hint: pausing needs cgroup v2, or the freezer controller mounted on cgroup v1 (`mount -t cgroup -o freezer cgroup /sys/fs/cgroup/freezer`)")]
    NoFreezer,

    #[error("cgroup {} did not become {state} within {after:?} — hint: a process may be stuck in the kernel (uninterruptible sleep); try again", path.display())]
    FreezeTimeout {
        path: PathBuf,
        state: &'static str,
        after: std::time::Duration,
    },

    #[error("leftover cgroup {} still has processes — hint: a sandbox may still be running in it; stop it first (its pids are in {}/cgroup.procs)", path.display(), path.display())]
    LeftoverBusy { path: PathBuf },
}

fn hint_suffix(hint: Option<&str>) -> String {
    hint.map(|h| format!(" — hint: {h}")).unwrap_or_default()
}

/// Sandbox ids become directory names, so they are checked before any path is built from them.
pub(crate) fn validate_id(id: &str) -> Result<(), CgroupError> {
    let invalid = |reason| {
        Err(CgroupError::InvalidId {
            id: id.to_string(),
            reason,
        })
    };
    if id.is_empty() || id.len() > 64 {
        return invalid("must be 1 to 64 characters");
    }
    if !id.as_bytes()[0].is_ascii_alphanumeric() {
        return invalid("must start with a letter or digit");
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return invalid("may only contain ASCII letters, digits, '-', '_' and '.'");
    }
    Ok(())
}
