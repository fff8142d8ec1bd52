//! Allocating host id ranges with lock files (see the module docs of [`super`]).

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, FlockOperation, Mode, OFlags};

use crate::ids::{DEFAULT_UID_BASE, IDS_IN_SANDBOX};

/// How many ranges there are. Slot 0 is the shared range at [`DEFAULT_UID_BASE`] (image
/// layers are owned by it) and is never handed out; slot n starts `n` ranges above it. The
/// last range ends below 2^31, away from ids that tools treat as negative or as "no id".
pub const SLOTS: u32 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum IdRangeError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("all {SLOTS} host id ranges are in use — hint: too many sandboxes at once; `nsbox prune` removes what killed ones left")]
    Exhausted,
}

impl crate::report::Diagnose for IdRangeError {
    fn class(&self) -> crate::report::Class {
        crate::report::Class::Failed
    }
    fn phase(&self) -> crate::report::Phase {
        crate::report::Phase::Setup
    }
}

fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(rustix::io::Errno) -> IdRangeError + 'a {
    move |e| IdRangeError::Io {
        what,
        path: path.to_path_buf(),
        source: io::Error::from_raw_os_error(e.raw_os_error()),
    }
}

/// A host id range held by this process (and whatever inherits the lock descriptor).
#[derive(Debug)]
pub struct IdRange {
    slot: u32,
    /// The first host id of the range.
    pub base: u32,
    _lock: OwnedFd,
}

impl IdRange {
    /// The first host id of slot `slot`.
    pub fn base_of(slot: u32) -> u32 {
        DEFAULT_UID_BASE + slot * IDS_IN_SANDBOX
    }

    pub fn slot(&self) -> u32 {
        self.slot
    }

    /// The host uid that owns the sandbox's user namespace: the range's last id, which the
    /// sandbox's map leaves out (see [`super::create_user_namespace`]); uid 65535 inside is
    /// `(uid16_t)-1` and used by nothing.
    pub fn owner(&self) -> u32 {
        self.base + IDS_IN_SANDBOX - 1
    }

    /// The lock directory under a run directory.
    pub fn dir(run_dir: &Path) -> PathBuf {
        run_dir.join("ids")
    }

    /// Takes the lowest free range, writing `owner` (a sandbox id) into its lock file.
    pub fn allocate(run_dir: &Path, owner: &str) -> Result<IdRange, IdRangeError> {
        let dir = Self::dir(run_dir);
        // `prune` removes the directories once no range is held; one removed between our
        // mkdir and open is made again.
        let mut attempts = 0;
        'again: loop {
            attempts += 1;
            private_dir(run_dir)?;
            private_dir(&dir)?;
            for slot in 1..SLOTS {
                let lock = match try_lock(&dir, slot) {
                    Ok(lock) => lock,
                    Err(IdRangeError::Io { source, .. })
                        if attempts < 3 && source.raw_os_error() == Some(libc::ENOENT) =>
                    {
                        continue 'again
                    }
                    Err(e) => return Err(e),
                };
                if let Some(lock) = lock {
                    // Overwritten in place, and truncated only when the old owner's name was
                    // longer (never, with sandbox ids of one length): /run may be a disk
                    // filesystem, where a truncation waits on the journal for up to
                    // milliseconds of every sandbox's start.
                    let _ = rustix::io::pwrite(&lock, owner.as_bytes(), 0);
                    let len = owner.len() as u64;
                    if rfs::fstat(&lock)
                        .is_ok_and(|st| u64::try_from(st.st_size).unwrap_or(0) > len)
                    {
                        let _ = rfs::ftruncate(&lock, len);
                    }
                    return Ok(IdRange {
                        slot,
                        base: Self::base_of(slot),
                        _lock: lock,
                    });
                }
            }
            return Err(IdRangeError::Exhausted);
        }
    }
}

fn private_dir(path: &Path) -> Result<(), IdRangeError> {
    match rfs::mkdir(path, Mode::from_raw_mode(0o700)) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
        Err(e) => return Err(io_err("create", path)(e)),
    }
    let st = rfs::lstat(path).map_err(io_err("inspect", path))?;
    let is_dir = rfs::FileType::from_raw_mode(st.st_mode) == rfs::FileType::Directory;
    if !is_dir || st.st_uid != rustix::process::geteuid().as_raw() || st.st_mode & 0o022 != 0 {
        return Err(IdRangeError::Io {
            what: "refuse to use",
            path: path.to_path_buf(),
            source: io::Error::other("not a private directory of this user"),
        });
    }
    Ok(())
}

/// Locks slot `slot` if it is free. The lock file stays in place between uses; `prune` may
/// remove an idle one, so a lock counts only if the file locked is still the one at the path.
fn try_lock(dir: &Path, slot: u32) -> Result<Option<OwnedFd>, IdRangeError> {
    let path = dir.join(slot.to_string());
    let fd = rfs::open(
        &path,
        OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(io_err("open", &path))?;
    match rfs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => return Ok(None),
        Err(e) => return Err(io_err("lock", &path)(e)),
    }
    let held = rfs::fstat(&fd).map_err(io_err("inspect", &path))?;
    match rfs::lstat(&path) {
        Ok(now) if (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino) => Ok(Some(fd)),
        // Removed (or replaced) by prune between open and lock: try this slot again.
        _ => try_lock(dir, slot),
    }
}

/// Removes the lock files of ranges no process holds (what remains after sandboxes ended or
/// were killed; the kernel released their locks already). Returns how many were removed.
pub fn prune(run_dir: &Path) -> usize {
    let dir = IdRange::dir(run_dir);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(slot) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let path = dir.join(slot.to_string());
        let Ok(fd) = rfs::open(
            &path,
            OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) else {
            continue;
        };
        // Unlinked while locked: an allocator that opened the old file sees it is gone.
        if rfs::flock(&fd, FlockOperation::NonBlockingLockExclusive).is_ok()
            && std::fs::remove_file(&path).is_ok()
        {
            removed += 1;
        }
    }
    // No range held any more: the kernel probe's cached answer goes too (the next sandbox asks
    // again, once), and so do the directories, so a pruned host keeps nothing of nsbox's.
    let names: Vec<String> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if names.iter().all(|n| n.starts_with("idmapped-layers-")) {
        for name in &names {
            let _ = std::fs::remove_file(dir.join(name));
        }
        let _ = std::fs::remove_dir(&dir);
        let _ = std::fs::remove_dir(run_dir);
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_distinct_lowest_first_and_released_on_drop() {
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path().join("run");
        let a = IdRange::allocate(&run, "aaaa").unwrap();
        let b = IdRange::allocate(&run, "bbbb").unwrap();
        assert_eq!((a.slot(), b.slot()), (1, 2));
        assert_eq!(a.base, DEFAULT_UID_BASE + IDS_IN_SANDBOX);
        assert_eq!(b.base, a.base + IDS_IN_SANDBOX);
        assert_eq!(
            std::fs::read_to_string(IdRange::dir(&run).join("2")).unwrap(),
            "bbbb"
        );
        drop(a);
        let c = IdRange::allocate(&run, "cc").unwrap();
        assert_eq!(c.slot(), 1, "a released slot is taken again");
        assert_eq!(
            std::fs::read_to_string(IdRange::dir(&run).join("1")).unwrap(),
            "cc",
            "a shorter owner replaces a longer one"
        );
        // Only idle lock files are pruned.
        drop(b);
        assert_eq!(prune(&run), 1);
        assert!(IdRange::dir(&run).join("1").exists());
        drop(c);
        assert_eq!(prune(&run), 1);
    }

    #[test]
    fn the_last_range_stays_below_two_to_the_31() {
        let end = u64::from(IdRange::base_of(SLOTS - 1)) + u64::from(IDS_IN_SANDBOX);
        assert!(end < 1 << 31, "{end}");
    }

    #[test]
    fn concurrent_allocations_never_share_a_range() {
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path().join("run");
        std::fs::create_dir(&run).unwrap();
        // Separate processes would use separate open files; separate opens in threads do too.
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let run = run.clone();
                std::thread::spawn(move || {
                    if i % 4 == 0 {
                        prune(&run);
                    }
                    IdRange::allocate(&run, "x").unwrap()
                })
            })
            .collect();
        let ranges: Vec<IdRange> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let mut slots: Vec<u32> = ranges.iter().map(IdRange::slot).collect();
        slots.sort_unstable();
        slots.dedup();
        assert_eq!(slots.len(), 16);
    }
}
