//! Small file operations on cgroupfs shared by the rest of the module, and the two places where a
//! fake cgroupfs (a plain directory in unit tests) has to stand in for the kernel.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::thread::sleep;
use std::time::{Duration, Instant};

use rustix::fs::{FsWord, Mode, OFlags};

use super::CgroupError;

/// `statfs` magic of cgroup v1 (`CGROUP_SUPER_MAGIC`).
const CGROUP_SUPER_MAGIC: FsWord = 0x0027_e0eb;
/// `statfs` magic of cgroup2 (`CGROUP2_SUPER_MAGIC`).
const CGROUP2_SUPER_MAGIC: FsWord = 0x6367_7270;

/// True when `path` is on a real cgroup filesystem (v1 or v2). Decides whether the kernel or the
/// test-fixture code below populates and removes directories.
pub(crate) fn is_cgroupfs(path: &Path) -> bool {
    rustix::fs::statfs(path)
        .map(|st| st.f_type == CGROUP_SUPER_MAGIC || st.f_type == CGROUP2_SUPER_MAGIC)
        .unwrap_or(false)
}

/// Read a whole control file; `None` when it does not exist (older kernel, controller absent).
pub(crate) fn read_optional(path: &Path) -> Result<Option<String>, CgroupError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CgroupError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Read a whole control file that must exist.
pub(crate) fn read_required(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Parse a single-number file such as `memory.current` or `pids.current`.
pub(crate) fn parse_number(path: &Path, text: &str) -> Result<u64, CgroupError> {
    text.trim().parse().map_err(|_| CgroupError::Parse {
        path: path.to_path_buf(),
        reason: format!("expected a number, found {:?}", text.trim()),
    })
}

/// Find `key N` in a flat-keyed file such as `memory.events`, `cpu.stat`, `memory.oom_control`.
pub(crate) fn keyed_number(path: &Path, text: &str, key: &str) -> Result<Option<u64>, CgroupError> {
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        if parts.next() == Some(key) {
            let value = parts.next().unwrap_or_default();
            return parse_number(path, value).map(Some);
        }
    }
    Ok(None)
}

/// Outcome of writing an optional control file.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Written {
    Yes,
    /// The file does not exist in this cgroup (feature absent on this kernel or host).
    Absent,
}

/// Write `value` to the control file `name` in the cgroup open as `dir`, in one `write` (cgroupfs
/// parses each write on its own). Opened relative to the directory fd so the path is not walked
/// again; `O_NOFOLLOW` because nothing in a cgroup directory is a symlink.
pub(crate) fn write_control(
    dir: &OwnedFd,
    dir_path: &Path,
    name: &str,
    value: &str,
) -> Result<Written, CgroupError> {
    let file = dir_path.join(name);
    let fd = match rustix::fs::openat(
        dir.as_fd(),
        name,
        OFlags::WRONLY | OFlags::TRUNC | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(Written::Absent),
        Err(e) => {
            return Err(CgroupError::WriteLimit {
                file,
                value: value.to_string(),
                source: e.into(),
            })
        }
    };
    match rustix::io::write(&fd, value.as_bytes()) {
        Ok(n) if n == value.len() => Ok(Written::Yes),
        Ok(_) => Err(CgroupError::WriteLimit {
            file,
            value: value.to_string(),
            source: io::ErrorKind::WriteZero.into(),
        }),
        Err(e) => Err(CgroupError::WriteLimit {
            file,
            value: value.to_string(),
            source: e.into(),
        }),
    }
}

/// `rmdir` a cgroup directory. `EBUSY` means tasks are still leaving (a killed process is
/// counted until it is fully released), so retry with backoff for up to `patience`. A directory
/// that is already gone counts as removed.
pub(crate) fn remove_cgroup_dir(path: &Path, patience: Duration) -> io::Result<()> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        match std::fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && start.elapsed() < patience => {
                sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) && !is_cgroupfs(path) => {
                // Fake cgroupfs (unit tests): the control files are real files here, while the
                // kernel would drop them with the directory. Never reached on cgroupfs, where
                // ENOTEMPTY means child cgroups.
                remove_fixture_files(path)?;
                return std::fs::remove_dir(path);
            }
            Err(e) => return Err(e),
        }
    }
}

fn remove_fixture_files(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if !entry.file_type()?.is_dir() {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// Fake cgroupfs only: give a new directory the control files the kernel would create, modelled
/// as "the same file names as the hierarchy root, empty". Fixtures therefore put the files a
/// child cgroup should have (and leave out the ones a test wants absent) into the fake root.
pub(crate) fn populate_fixture(root: &Path, dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(root)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::File::create(dir.join(entry.file_name()))?;
        }
    }
    Ok(())
}
