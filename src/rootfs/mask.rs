//! The shared "mask" layer: what a profile hides of the host's root (whiteouts, opaque
//! directories) and the sandbox's account files, built once and reused as an overlay lower
//! layer by every sandbox with the same profile on this host, instead of being rebuilt in each
//! sandbox's upper directory (~150 system calls, about a third of a millisecond).
//!
//! Layers live in `/run/nsbox/masks/<key>`, or `/dev/shm/nsbox-masks/<key>` where /run is part
//! of the root filesystem (root-only directories). They must be on another filesystem than the
//! host's root: overlayfs refuses a lower layer inside another one. The key covers everything the layer is
//! made from: the operations, nsbox's layer format, and the inode, mtime and ctime of every
//! host directory whose entries the operations look at — adding, removing or replacing a
//! hidden entry changes its parent's mtime, so the layer is rebuilt.
//!
//! A layer appears complete or not at all (built under a temporary name, then renamed). Each
//! sandbox's supervisor holds a shared flock on the layer it uses; a layer is deleted only by
//! whoever takes an exclusive lock on it (a rebuild's garbage collection, `nsbox prune`).
//! Anything unexpected (wrong owner, a lock held) makes the caller fall back to building the
//! hiding in the sandbox's own upper layer; the cache never makes a run fail.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, FileType, FlockOperation, Mode, OFlags, CWD};

use super::apply::{self, IdMap, RootfsError};
use super::plan::UpperOp;
use crate::image::store::remove_tree;

/// Where mask layers may live, in order of preference: (filesystem to check, parent dirs to
/// create, the masks directory).
const LOCATIONS: &[(&str, &[&str], &str)] = &[
    ("/run", &["/run/nsbox"], "/run/nsbox/masks"),
    ("/dev/shm", &[], "/dev/shm/nsbox-masks"),
];

/// The first location on another filesystem than `/` (overlayfs refuses a lower layer inside
/// another lower layer).
fn masks_dir() -> Option<(&'static [&'static str], &'static Path)> {
    let root = rfs::stat("/").ok()?;
    LOCATIONS.iter().find_map(|(fs, parents, dir)| {
        let st = rfs::stat(*fs).ok()?;
        (st.st_dev != root.st_dev).then_some((*parents, Path::new(*dir)))
    })
}
/// Bump when the layout of a mask layer changes.
const FORMAT: &str = "nsbox-mask-1";

/// A mask layer in use: its path (an overlay lower) and the lock that keeps it alive.
#[derive(Debug)]
pub struct MaskLayer {
    pub path: PathBuf,
    _lock: OwnedFd,
}

/// Why the cache could not be used (the caller falls back, and logs this).
#[derive(Debug, thiserror::Error)]
pub enum MaskError {
    #[error("{path}: {reason}")]
    Unsafe { path: PathBuf, reason: String },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("building the layer: {0}")]
    Build(#[from] RootfsError),
    #[error("the layer is being removed")]
    Busy,
}

fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(rustix::io::Errno) -> MaskError + 'a {
    move |e| MaskError::Io {
        what,
        path: path.to_path_buf(),
        source: io::Error::from_raw_os_error(e.raw_os_error()),
    }
}

/// Host directories whose entries `ops` inspect (their parents, and the root for
/// KeepOnlyTopLevel).
fn watched_dirs(ops: &[UpperOp]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = vec![PathBuf::from("/")];
    for op in ops {
        let path = match op {
            UpperOp::KeepOnlyTopLevel(_) => continue,
            UpperOp::Hide(p) => p,
            UpperOp::WriteFile { path, .. } | UpperOp::Accounts { path, .. } => path,
        };
        let mut parent = path.parent();
        while let Some(dir) = parent {
            if !dirs.iter().any(|d| d == dir) {
                dirs.push(dir.to_path_buf());
            }
            parent = dir.parent();
        }
    }
    dirs
}

/// The cache key for `ops` applied over the host root, with `ids`.
pub fn key(ops: &[UpperOp], ids: IdMap) -> String {
    let mut h = crate::fingerprint::Fingerprint::default();
    h.field(FORMAT.as_bytes());
    h.field(env!("CARGO_PKG_VERSION").as_bytes());
    h.field(&ids.base.to_le_bytes());
    h.field(format!("{ops:?}").as_bytes());
    for dir in watched_dirs(ops) {
        h.field(dir.as_os_str().as_encoded_bytes());
        match rfs::lstat(&dir) {
            // The stat field types differ between architectures.
            #[allow(clippy::unnecessary_cast)]
            Ok(st) => {
                for n in [
                    st.st_dev as u64,
                    st.st_ino as u64,
                    st.st_mtime as u64,
                    st.st_mtime_nsec as u64,
                    st.st_ctime as u64,
                    st.st_ctime_nsec as u64,
                    st.st_mode as u64,
                ] {
                    h.field(&n.to_le_bytes());
                }
            }
            Err(e) => h.field(&e.raw_os_error().to_le_bytes()),
        }
    }
    format!("{:016x}", h.finish())
}

/// Creates `path` as a root-owned 0700 directory if missing, and checks that what is there is
/// exactly that (a directory others could write to would let them change every sandbox).
fn private_dir(path: &Path) -> Result<(), MaskError> {
    match rfs::mkdir(path, Mode::from_raw_mode(0o700)) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
        Err(e) => return Err(io_err("create", path)(e)),
    }
    let st = rfs::lstat(path).map_err(io_err("inspect", path))?;
    let unsafe_reason = if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        Some("not a directory".to_string())
    } else if st.st_uid != 0 {
        Some(format!("owned by uid {}, not root", st.st_uid))
    } else if st.st_mode & 0o022 != 0 {
        Some(format!(
            "writable by others (mode {:o})",
            st.st_mode & 0o7777
        ))
    } else {
        None
    };
    match unsafe_reason {
        Some(reason) => Err(MaskError::Unsafe {
            path: path.to_path_buf(),
            reason,
        }),
        None => Ok(()),
    }
}

fn open_layer(path: &Path) -> rustix::io::Result<OwnedFd> {
    rfs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Returns the mask layer for `ops` over the host root, building it if needed, locked for as
/// long as the returned value lives.
pub fn prepare(ops: &[UpperOp], ids: IdMap) -> Result<MaskLayer, MaskError> {
    let (parents, masks) = masks_dir().ok_or_else(|| MaskError::Unsafe {
        path: PathBuf::from("/run"),
        reason: "neither /run nor /dev/shm is a filesystem separate from /".into(),
    })?;
    for parent in parents {
        private_dir(Path::new(parent))?;
    }
    private_dir(masks)?;
    let key = key(ops, ids);
    let path = masks.join(&key);
    if let Some(layer) = use_existing(&path)? {
        return Ok(layer);
    }
    let scratch = masks.join(format!(".build-{}", crate::ids::new_id()));
    rfs::mkdir(&scratch, Mode::from_raw_mode(0o755)).map_err(io_err("create", &scratch))?;
    let built = build(&scratch, ops, ids);
    if let Err(e) = built {
        let _ = remove_tree(&scratch);
        return Err(e);
    }
    match rfs::rename(&scratch, &path) {
        Ok(()) => {}
        // Another nsbox built the same layer meanwhile: use that one.
        Err(rustix::io::Errno::EXIST) | Err(rustix::io::Errno::NOTEMPTY) => {
            let _ = remove_tree(&scratch);
        }
        Err(e) => {
            let _ = remove_tree(&scratch);
            return Err(io_err("install", &path)(e));
        }
    }
    let layer = use_existing(&path)?.ok_or(MaskError::Busy)?;
    collect_garbage(masks, &key);
    Ok(layer)
}

/// Opens and share-locks the layer at `path` if it exists and is still the one at that path.
fn use_existing(path: &Path) -> Result<Option<MaskLayer>, MaskError> {
    let fd = match open_layer(path) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(e) => return Err(io_err("open", path)(e)),
    };
    match rfs::flock(&fd, FlockOperation::NonBlockingLockShared) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => return Err(MaskError::Busy),
        Err(e) => return Err(io_err("lock", path)(e)),
    }
    // Garbage collection renames a layer away before deleting it: make sure ours is still the
    // one installed at `path`.
    let ours = rfs::fstat(&fd).map_err(io_err("inspect", path))?;
    match rfs::lstat(path) {
        Ok(now) if now.st_ino == ours.st_ino && now.st_dev == ours.st_dev => Ok(Some(MaskLayer {
            path: path.to_path_buf(),
            _lock: fd,
        })),
        _ => Err(MaskError::Busy),
    }
}

fn build(dir: &Path, ops: &[UpperOp], ids: IdMap) -> Result<(), MaskError> {
    let dir_fd = rfs::open(
        dir,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io_err("open", dir))?;
    let root = rfs::open(
        "/",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io_err("open", Path::new("/")))?;
    apply::prepare_layer(dir_fd.as_fd(), &[root.as_fd()], ids, ops)?;
    Ok(())
}

/// Removes every layer except `keep` that no sandbox uses, and leftovers of interrupted builds.
pub fn collect_garbage(masks: &Path, keep: &str) -> usize {
    let Ok(entries) = std::fs::read_dir(masks) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name == keep {
            continue;
        }
        let path = entry.path();
        if name.starts_with(".build-") || name.starts_with(".trash-") {
            // A builder that died: old enough to be certain nobody is still writing it.
            let old = entry
                .metadata()
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age.as_secs() > 60);
            if old && remove_tree(&path).is_ok() {
                removed += 1;
            }
            continue;
        }
        let Ok(fd) = open_layer(&path) else { continue };
        if rfs::flock(&fd, FlockOperation::NonBlockingLockExclusive).is_err() {
            continue; // in use
        }
        let trash = masks.join(format!(".trash-{}", crate::ids::new_id()));
        if rfs::rename(&path, &trash).is_ok() {
            drop(fd);
            if remove_tree(&trash).is_ok() {
                removed += 1;
            }
        }
    }
    removed
}

/// Removes every mask layer no running sandbox uses, in every location, and the directories
/// that held them once they are empty (for `nsbox prune`).
pub fn prune() -> usize {
    let mut removed = 0;
    for (_, parents, dir) in LOCATIONS {
        let ours = rfs::statat(CWD, *dir, AtFlags::SYMLINK_NOFOLLOW).is_ok_and(|st| {
            st.st_uid == 0 && FileType::from_raw_mode(st.st_mode) == FileType::Directory
        });
        if !ours {
            continue;
        }
        removed += collect_garbage(Path::new(dir), "");
        // Fails (and keeps them) while a layer is still in use.
        if rfs::rmdir(*dir).is_ok() {
            for parent in parents.iter().rev() {
                let _ = rfs::rmdir(*parent);
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_change_with_the_operations_and_ids() {
        let a = vec![UpperOp::Hide("/home".into())];
        let b = vec![UpperOp::Hide("/root".into())];
        let ids = IdMap { base: 1000 };
        assert_eq!(key(&a, ids), key(&a, ids));
        assert_ne!(key(&a, ids), key(&b, ids));
        assert_ne!(key(&a, ids), key(&a, IdMap { base: 2000 }));
        assert_eq!(key(&a, ids).len(), 16);
    }

    #[test]
    fn watched_dirs_are_the_parents_of_what_is_inspected() {
        let ops = vec![
            UpperOp::KeepOnlyTopLevel(vec!["usr".into()]),
            UpperOp::Hide("/var/lib/docker".into()),
            UpperOp::Accounts {
                path: "/etc/passwd".into(),
                lines: vec![],
                merge: false,
            },
        ];
        let dirs = watched_dirs(&ops);
        for d in ["/", "/var", "/var/lib", "/etc"] {
            assert!(dirs.contains(&PathBuf::from(d)), "{d}: {dirs:?}");
        }
        assert_eq!(dirs.len(), 4);
    }
}
