//! `nsbox-*` cgroup directories whose supervisor is gone, for `nsbox prune`.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::fsops::{read_optional, remove_cgroup_dir};
use super::layout::{CgroupLayout, CgroupVersion};
use super::{validate_id, CgroupError, DIR_PREFIX};

/// Removal of a leftover gives exiting tasks the same grace as a normal removal.
const PATIENCE: Duration = Duration::from_secs(1);

/// One `nsbox-<id>` directory found in a hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftover {
    pub path: PathBuf,
    /// The sandbox id from the directory name.
    pub id: String,
    pub version: CgroupVersion,
    /// No process in it or in a cgroup below it (only empty ones can be removed).
    pub empty: bool,
    /// Time since the directory was created (its mtime; cgroupfs sets it when the directory and
    /// its files are made). `None` if the clock or the file system cannot tell.
    pub age: Option<Duration>,
}

/// Every `nsbox-*` directory in the hierarchies of `layout`. Names that are not a valid sandbox id
/// are not nsbox's and are left out. A running sandbox's cgroup is listed too (not empty): the
/// caller decides by id and age what is a leftover.
pub fn find_leftovers(layout: &CgroupLayout) -> Result<Vec<Leftover>, CgroupError> {
    let mut found = Vec::new();
    for h in layout.hierarchies() {
        let entries = std::fs::read_dir(&h.path).map_err(|source| CgroupError::Read {
            path: h.path.clone(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| CgroupError::Read {
                path: h.path.clone(),
                source,
            })?;
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_prefix(DIR_PREFIX)) else {
                continue;
            };
            if validate_id(id).is_err() {
                continue;
            }
            let path = entry.path();
            // symlink_metadata: never follow a link, even though cgroupfs has none.
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue; // removed meanwhile
            };
            if !meta.is_dir() {
                continue;
            }
            let age = meta
                .modified()
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok());
            found.push(Leftover {
                empty: is_empty(&path, h.version)?,
                path,
                id: id.to_string(),
                version: h.version,
                age,
            });
        }
    }
    Ok(found)
}

/// Remove a leftover directory and any cgroups below it, deepest first. Refuses while processes
/// are in it: they may belong to a sandbox whose supervisor is still alive.
pub fn remove_leftover(leftover: &Leftover) -> Result<(), CgroupError> {
    if !is_empty(&leftover.path, leftover.version)? {
        return Err(CgroupError::LeftoverBusy {
            path: leftover.path.clone(),
        });
    }
    let mut dirs = Vec::new();
    collect_dirs(&leftover.path, &mut dirs)?;
    // collect_dirs lists parents before children; remove children first.
    for dir in dirs.iter().rev() {
        remove_cgroup_dir(dir, PATIENCE).map_err(|source| CgroupError::Remove {
            hint: (source.raw_os_error() == Some(libc::EBUSY)).then(|| {
                "a process entered it after the emptiness check; stop it first".to_string()
            }),
            path: dir.clone(),
            source,
        })?;
    }
    Ok(())
}

/// True when no task is in `dir` or below it. v2 `cgroup.events` answers for the whole subtree;
/// otherwise (v1, or v2 without it) every directory's task list is checked. v1 uses `tasks`,
/// not `cgroup.procs`, because a single thread can be a member on its own there.
fn is_empty(dir: &Path, version: CgroupVersion) -> Result<bool, CgroupError> {
    if version == CgroupVersion::V2 {
        let events = dir.join("cgroup.events");
        if let Some(text) = read_optional(&events)? {
            if let Some(line) = text.lines().find(|l| l.starts_with("populated ")) {
                return Ok(line.trim_end() == "populated 0");
            }
        }
    }
    let list = match version {
        CgroupVersion::V1 => "tasks",
        CgroupVersion::V2 => "cgroup.procs",
    };
    let mut dirs = Vec::new();
    collect_dirs(dir, &mut dirs)?;
    for d in dirs {
        if let Some(text) = read_optional(&d.join(list))? {
            if text.lines().any(|l| !l.trim().is_empty()) {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// `dir` and every directory below it (not following symlinks), parents first.
fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), CgroupError> {
    out.push(dir.to_path_buf());
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(CgroupError::Read {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    for entry in entries {
        let entry = entry.map_err(|source| CgroupError::Read {
            path: dir.to_path_buf(),
            source,
        })?;
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if is_dir {
            collect_dirs(&entry.path(), out)?;
        }
    }
    Ok(())
}

/// The file whose flock marks a sandbox cgroup as in use: the v2 directory itself, or the v1
/// `tasks` file (the descriptors a running supervisor holds anyway).
fn lock_target(leftover: &Leftover) -> PathBuf {
    match leftover.version {
        CgroupVersion::V2 => leftover.path.clone(),
        CgroupVersion::V1 => leftover.path.join("tasks"),
    }
}

/// Marks a sandbox's cgroup as in use for as long as this process lives: a shared flock on the
/// descriptors it holds. A killed supervisor's lock goes with it.
pub fn hold_in_use(cgroup: &super::SandboxCgroup) {
    let fds = cgroup
        .v2_dir_fd()
        .into_iter()
        .chain(cgroup.self_join_fds().iter().map(|fd| {
            use std::os::fd::AsFd;
            fd.as_fd()
        }));
    for fd in fds {
        let _ = rustix::fs::flock(fd, rustix::fs::FlockOperation::NonBlockingLockShared);
    }
}

/// True when a live nsbox process holds the leftover's cgroup (see [`hold_in_use`]).
pub fn in_use(leftover: &Leftover) -> bool {
    let target = lock_target(leftover);
    let flags = match leftover.version {
        CgroupVersion::V2 => rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
        CgroupVersion::V1 => rustix::fs::OFlags::WRONLY,
    } | rustix::fs::OFlags::CLOEXEC
        | rustix::fs::OFlags::NOFOLLOW;
    let Ok(fd) = rustix::fs::open(&target, flags, rustix::fs::Mode::empty()) else {
        return false;
    };
    matches!(
        rustix::fs::flock(&fd, rustix::fs::FlockOperation::NonBlockingLockExclusive),
        Err(rustix::io::Errno::WOULDBLOCK)
    )
}
