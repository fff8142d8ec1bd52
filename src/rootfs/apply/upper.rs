//! The overlay's upper layer, prepared before the overlay is mounted (and the cached mask
//! layer, built the same way): opaque directories and whiteouts that hide host paths, files
//! nsbox writes, account databases merged with the lower layers'. Lower layers are walked
//! without following symlinks; a path reached through a link is left alone.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, ResolveFlags, XattrFlags};

use crate::rootfs::plan::{AccountLine, UpperOp};

use super::error::{fail, rustix_err};
use super::{relative_to_root, IdMap, RootfsError};

/// Applies upper-layer operations to `dir` (a directory of the host) as seen over `lowers`:
/// how the cached mask layer ([`crate::rootfs::mask`]) is built.
pub fn prepare_layer(
    dir: BorrowedFd<'_>,
    lowers: &[BorrowedFd<'_>],
    ids: IdMap,
    ops: &[UpperOp],
) -> Result<(), RootfsError> {
    let layer = UpperLayer::new(dir, lowers.to_vec(), ids);
    for op in ops {
        layer.apply(op)?;
    }
    Ok(())
}

/// The overlay's upper directory and the lower layers it covers.
pub(super) struct UpperLayer<'a> {
    upper: BorrowedFd<'a>,
    lowers: Vec<BorrowedFd<'a>>,
    ids: IdMap,
    /// Upper directories already prepared (by in-sandbox path), so entries that share parents
    /// (/var/log, /var/mail, ...) do not redo the work.
    dirs: std::cell::RefCell<std::collections::HashMap<PathBuf, std::rc::Rc<OwnedFd>>>,
}

/// What the lower layers hold at a path, looked up without following symlinks.
enum LowerEntry {
    Missing,
    /// A component on the way is a symlink or not a directory: leave this path alone.
    Unreachable,
    Found(rfs::Stat),
}

impl<'a> UpperLayer<'a> {
    pub(super) fn new(upper: BorrowedFd<'a>, lowers: Vec<BorrowedFd<'a>>, ids: IdMap) -> Self {
        UpperLayer {
            upper,
            lowers,
            ids,
            dirs: Default::default(),
        }
    }
    pub(super) fn apply(&self, op: &UpperOp) -> Result<(), RootfsError> {
        match op {
            UpperOp::KeepOnlyTopLevel(keep) => self.keep_only_top_level(keep),
            UpperOp::Hide(path) => self.hide(path),
            UpperOp::WriteFile {
                path,
                contents,
                mode,
            } => self.write_file(path, contents, *mode),
            UpperOp::Accounts { path, lines, merge } => {
                let mut text = Vec::new();
                if *merge {
                    if let Some(existing) = self.read_lower_file(path) {
                        text = existing;
                        if !text.is_empty() && !text.ends_with(b"\n") {
                            text.push(b'\n');
                        }
                    }
                }
                let present = account_ids(&text);
                for AccountLine { id, line } in lines {
                    if !present.contains(id) {
                        text.extend_from_slice(line.as_bytes());
                        text.push(b'\n');
                    }
                }
                self.write_file(path, &text, 0o644)
            }
        }
    }

    fn relative(path: &Path) -> Vec<&OsStr> {
        path.components()
            .filter_map(|c| match c {
                Component::Normal(p) => Some(p),
                _ => None,
            })
            .collect()
    }

    /// Looks `path` up in the lower layers, top first. A symlink anywhere on the way (or a
    /// non-directory parent) makes the path unreachable: it is then left alone. One openat2
    /// per layer: RESOLVE_NO_SYMLINKS refuses any link, RESOLVE_BENEATH any escape.
    fn lower_entry(&self, path: &Path) -> LowerEntry {
        let rel = relative_to_root(path);
        if rel.as_os_str().is_empty() {
            return LowerEntry::Unreachable;
        }
        for lower in &self.lowers {
            match rfs::openat2(
                lower,
                rel,
                OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::NO_SYMLINKS | ResolveFlags::BENEATH | ResolveFlags::NO_XDEV,
            ) {
                Ok(fd) => {
                    return match rfs::fstat(&fd) {
                        Ok(st) => LowerEntry::Found(st),
                        Err(_) => LowerEntry::Unreachable,
                    }
                }
                // The final component itself may be a symlink: O_PATH|O_NOFOLLOW opens the link,
                // but RESOLVE_NO_SYMLINKS refuses it with ELOOP. Tell the two cases apart.
                Err(rustix::io::Errno::LOOP) => {
                    let Some(parent) = rel.parent() else {
                        return LowerEntry::Unreachable;
                    };
                    let parent_ok = parent.as_os_str().is_empty()
                        || rfs::openat2(
                            lower,
                            parent,
                            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                            Mode::empty(),
                            ResolveFlags::NO_SYMLINKS
                                | ResolveFlags::BENEATH
                                | ResolveFlags::NO_XDEV,
                        )
                        .is_ok();
                    if !parent_ok {
                        return LowerEntry::Unreachable;
                    }
                    return match rfs::statat(lower, rel, AtFlags::SYMLINK_NOFOLLOW) {
                        Ok(st) => LowerEntry::Found(st),
                        Err(_) => LowerEntry::Unreachable,
                    };
                }
                Err(rustix::io::Errno::NOENT) => continue,
                Err(_) => return LowerEntry::Unreachable,
            }
        }
        LowerEntry::Missing
    }

    fn read_lower_file(&self, path: &Path) -> Option<Vec<u8>> {
        let parts = Self::relative(path);
        for lower in &self.lowers {
            let mut dir: Option<OwnedFd> = None;
            let mut ok = true;
            for (i, part) in parts.iter().enumerate() {
                let last = i + 1 == parts.len();
                let at = dir.as_ref().map_or(*lower, |d| d.as_fd());
                let flags = if last {
                    OFlags::RDONLY
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC
                        | OFlags::NOCTTY
                        | OFlags::NONBLOCK
                } else {
                    OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
                };
                match rfs::openat(at, *part, flags, Mode::empty()) {
                    Ok(fd) => dir = Some(fd),
                    Err(_) => {
                        // An image layer's whiteout (a 0/0 character device) deletes the
                        // file of the layers below: there is none to read.
                        let whiteout =
                            rfs::statat(at, *part, AtFlags::SYMLINK_NOFOLLOW).is_ok_and(|st| {
                                FileType::from_raw_mode(st.st_mode) == FileType::CharacterDevice
                                    && st.st_rdev == 0
                            });
                        if whiteout {
                            return None;
                        }
                        ok = false;
                        break;
                    }
                }
            }
            if let (true, Some(fd)) = (ok, dir) {
                let is_file = rfs::fstat(&fd)
                    .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::RegularFile);
                if !is_file {
                    return None;
                }
                let mut buf = Vec::new();
                let mut file = File::from(fd);
                // Account files are small; a huge one is not an account file.
                let limited = io::Read::take(&mut file, 1 << 20);
                return io::Read::read_to_end(&mut { limited }, &mut buf)
                    .ok()
                    .map(|_| buf);
            }
        }
        None
    }

    /// Creates the upper directories leading to `path` (not `path` itself), copying mode and
    /// owner from the lower layer so merged directories look unchanged. Returns the parent fd,
    /// or None when a lower component is a symlink (then the path is left alone).
    fn upper_parent(&self, path: &Path) -> Result<Option<std::rc::Rc<OwnedFd>>, RootfsError> {
        let Some(parent) = path.parent() else {
            return Ok(None);
        };
        self.upper_dir(parent)
    }

    /// The upper directory for `path`, created (mirroring the lower one) if needed.
    fn upper_dir(&self, path: &Path) -> Result<Option<std::rc::Rc<OwnedFd>>, RootfsError> {
        if let Some(fd) = self.dirs.borrow().get(path) {
            return Ok(Some(fd.clone()));
        }
        let fd = if path == Path::new("/") || path.as_os_str().is_empty() {
            rfs::openat(
                self.upper,
                ".",
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| fail("open upper directory", path)(rustix_err(e)))?
        } else {
            let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
                return Ok(None);
            };
            let Some(parent_fd) = self.upper_dir(parent)? else {
                return Ok(None);
            };
            let (mode, uid, gid) = match self.lower_entry(path) {
                LowerEntry::Found(st)
                    if FileType::from_raw_mode(st.st_mode) == FileType::Directory =>
                {
                    (st.st_mode & 0o7777, st.st_uid, st.st_gid)
                }
                LowerEntry::Missing => (0o755, self.ids.base, self.ids.base),
                _ => return Ok(None),
            };
            match rfs::mkdirat(&*parent_fd, name, Mode::from_raw_mode(mode)) {
                Ok(()) if (uid, gid) != (0, 0) => {
                    rfs::chownat(
                        &*parent_fd,
                        name,
                        Some(rfs::Uid::from_raw(uid)),
                        Some(rfs::Gid::from_raw(gid)),
                        AtFlags::SYMLINK_NOFOLLOW,
                    )
                    .map_err(|e| fail("prepare upper directory", path)(rustix_err(e)))?;
                }
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(fail("prepare upper directory", path)(rustix_err(e))),
            }
            rfs::openat(
                &*parent_fd,
                name,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| fail("prepare upper directory", path)(rustix_err(e)))?
        };
        let fd = std::rc::Rc::new(fd);
        self.dirs
            .borrow_mut()
            .insert(path.to_path_buf(), fd.clone());
        Ok(Some(fd))
    }

    fn keep_only_top_level(&self, keep: &[String]) -> Result<(), RootfsError> {
        let slash = Path::new("/");
        for lower in &self.lowers {
            let dir = rfs::openat(
                lower,
                ".",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| fail("list lower layer", slash)(rustix_err(e)))?;
            let entries = rfs::Dir::read_from(&dir)
                .map_err(|e| fail("list lower layer", slash)(rustix_err(e)))?;
            for entry in entries {
                let entry = entry.map_err(|e| fail("list lower layer", slash)(rustix_err(e)))?;
                let name = OsStr::from_bytes(entry.file_name().to_bytes());
                if name == "." || name == ".." || keep.iter().any(|k| OsStr::new(k) == name) {
                    continue;
                }
                rfs::mknodat(
                    self.upper,
                    name,
                    FileType::CharacterDevice,
                    Mode::empty(),
                    rfs::makedev(0, 0),
                )
                .or_else(|e| {
                    if e == rustix::io::Errno::EXIST {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })
                .map_err(|e| fail("hide", &slash.join(name))(rustix_err(e)))?;
            }
        }
        Ok(())
    }

    fn hide(&self, path: &Path) -> Result<(), RootfsError> {
        let rel = relative_to_root(path);
        let top_level = rel.components().count() == 1;
        if top_level && rfs::statat(self.upper, rel, AtFlags::SYMLINK_NOFOLLOW).is_ok() {
            // Already decided (whited out as an unlisted top-level entry).
            return Ok(());
        }
        let st = match self.lower_entry(path) {
            LowerEntry::Found(st) => st,
            LowerEntry::Missing | LowerEntry::Unreachable => return Ok(()),
        };
        let Some(parent) = self.upper_parent(path)? else {
            return Ok(());
        };
        let Some(name) = path.file_name() else {
            return Ok(());
        };
        match FileType::from_raw_mode(st.st_mode) {
            // A link resolves inside the sandbox's root, where its target is hidden or not on
            // its own terms; removing it would only break programs.
            FileType::Symlink => Ok(()),
            FileType::Directory => {
                rfs::mkdirat(&*parent, name, Mode::from_raw_mode(st.st_mode & 0o7777))
                    .or_else(|e| {
                        if e == rustix::io::Errno::EXIST {
                            Ok(())
                        } else {
                            Err(e)
                        }
                    })
                    .map_err(|e| fail("hide directory", path)(rustix_err(e)))?;
                let dir = rfs::openat(
                    &*parent,
                    name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| fail("hide directory", path)(rustix_err(e)))?;
                if (st.st_uid, st.st_gid) != (0, 0) {
                    rfs::fchown(
                        &dir,
                        Some(rfs::Uid::from_raw(st.st_uid)),
                        Some(rfs::Gid::from_raw(st.st_gid)),
                    )
                    .map_err(|e| fail("hide directory", path)(rustix_err(e)))?;
                }
                // An opaque upper directory hides everything below it in the lower layers.
                rfs::fsetxattr(&dir, "trusted.overlay.opaque", b"y", XattrFlags::empty())
                    .map_err(|e| fail("hide directory", path)(rustix_err(e)))
            }
            _ => {
                // A whiteout: a 0/0 character device in the upper layer.
                rfs::mknodat(
                    &*parent,
                    name,
                    FileType::CharacterDevice,
                    Mode::empty(),
                    rfs::makedev(0, 0),
                )
                .or_else(|e| {
                    if e == rustix::io::Errno::EXIST {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })
                .map_err(|e| fail("hide file", path)(rustix_err(e)))
            }
        }
    }

    fn write_file(&self, path: &Path, contents: &[u8], mode: u32) -> Result<(), RootfsError> {
        let Some(parent) = self.upper_parent(path)? else {
            return Ok(());
        };
        let Some(name) = path.file_name() else {
            return Ok(());
        };
        let fd = rfs::openat(
            &*parent,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode),
        )
        .map_err(|e| fail("write file", path)(rustix_err(e)))?;
        rfs::fchown(&fd, Some(self.ids.uid(0)), Some(self.ids.gid(0)))
            .map_err(|e| fail("write file", path)(rustix_err(e)))?;
        File::from(fd)
            .write_all(contents)
            .map_err(fail("write file", path))
    }
}

/// The numeric ids (third field) already defined in an account file.
fn account_ids(text: &[u8]) -> Vec<u32> {
    text.split(|b| *b == b'\n')
        .filter_map(|line| {
            let field = line.split(|b| *b == b':').nth(2)?;
            std::str::from_utf8(field).ok()?.trim().parse().ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_ids_reads_the_third_field() {
        let text = b"root:x:0:0:root:/root:/bin/sh\nsandbox:x:100:101::/sandbox:/bin/sh\nbroken\n";
        assert_eq!(account_ids(text), vec![0, 100]);
        assert_eq!(account_ids(b"root:x:0:\ntty:x:5:\n"), vec![0, 5]);
    }
}
