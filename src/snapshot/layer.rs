//! A fork's snapshot layer: a living session's files copied, as they are, into a layer
//! directory of the image store — no tar, no gzip, no hash (what made `nsbox fork` as slow as
//! `nsbox commit`).
//!
//! The copy is made while the session is frozen, from the two trees its supervisor hands over
//! (the overlay's upper directory and `/sandbox`, see `crate::snapshot`), and stays in
//! overlayfs's own format, since it is only ever an overlay lower layer: a deleted path stays
//! a 0/0 character device, a directory that replaced a lower one keeps
//! `trusted.overlay.opaque=y`, and `/sandbox` is put in whole as an opaque directory (so the
//! image's own `/sandbox` does not show through). Owners are shifted from the session's host
//! range back to the store's shared one (`DEFAULT_UID_BASE`), like every unpacked layer, so
//! each fork sees them through its own id range. Modes, times, symlinks, hard links and
//! `user.*` xattrs are kept; left out is what `nsbox commit` leaves out (the files nsbox writes
//! into every sandbox, device nodes other than whiteouts, FIFOs, sockets, other xattrs).
//!
//! Nothing in the tree is followed: the session cannot change it while it is frozen, and
//! every entry is read with `O_NOFOLLOW`/`lstat`; the copy is written under a directory this
//! process just created.

use std::collections::HashMap;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, FileType, Gid, Mode, Timespec, Timestamps, Uid, CWD};

use crate::build::capture::{
    is_opaque, only_nsbox_accounts, user_xattrs, ACCOUNT_FILES, NSBOX_FILES,
};
use crate::ids::{DEFAULT_UID_BASE, IDS_IN_SANDBOX};

/// What was copied.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Copied {
    pub entries: u64,
    pub bytes: u64,
}

fn errno(e: rustix::io::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

fn context(what: &str, path: &Path) -> impl FnOnce(io::Error) -> io::Error {
    let text = format!("{what} {}", path.display());
    move |e| io::Error::new(e.kind(), format!("{text}: {e}"))
}

/// Copies a session's files into `dst`, an empty directory: the upper directory `upper` (host
/// ids from `uid_base`; `lowers` are the layers below it, top first, to tell nsbox's own
/// account lines from the session's) and, when given, `/sandbox` in whole as `dst/sandbox`.
pub fn copy_session(
    upper: &Path,
    sandbox: Option<&Path>,
    uid_base: u32,
    lowers: &[PathBuf],
    dst: &Path,
) -> io::Result<Copied> {
    let mut copy = Copy {
        uid_base,
        lowers,
        links: HashMap::new(),
        copied: Copied::default(),
    };
    // The layer's root takes the upper root's owner and mode (overlay shows the top layer's).
    let root = std::fs::symlink_metadata(upper).map_err(context("inspect", upper))?;
    copy.tree(upper, dst, true)?;
    copy.attributes(dst, &root, true)?;
    if let Some(sandbox) = sandbox {
        let meta = std::fs::symlink_metadata(sandbox).map_err(context("inspect", sandbox))?;
        let to = dst.join("sandbox");
        rfs::mkdir(&to, Mode::from_raw_mode(0o700)).map_err(errno)?;
        copy.tree(sandbox, &to, false)?;
        copy.attributes(&to, &meta, true)?;
        rfs::setxattr(
            &to,
            "trusted.overlay.opaque",
            b"y",
            rfs::XattrFlags::empty(),
        )
        .map_err(errno)
        .map_err(context("mark opaque", &to))?;
        copy.copied.entries += 1;
    }
    Ok(copy.copied)
}

struct Copy<'a> {
    uid_base: u32,
    lowers: &'a [PathBuf],
    /// First copy of each (dev, inode) with several links.
    links: HashMap<(u64, u64), PathBuf>,
    copied: Copied,
}

impl Copy<'_> {
    /// A host id of the session as the store's shared range has it (ids outside the
    /// session's range become nobody, as in a committed layer).
    fn shift(&self, id: u32) -> u32 {
        let inside = match id.checked_sub(self.uid_base) {
            Some(inside) if inside < IDS_IN_SANDBOX => inside,
            _ => 65534,
        };
        DEFAULT_UID_BASE + inside
    }

    /// Owner, mode (after the owner: chown clears setuid bits; not for symlinks and
    /// whiteouts) and times of the copy at `to`, from `meta`.
    fn attributes(&self, to: &Path, meta: &std::fs::Metadata, set_mode: bool) -> io::Result<()> {
        let flags = AtFlags::SYMLINK_NOFOLLOW;
        rfs::chownat(
            CWD,
            to,
            Some(Uid::from_raw(self.shift(meta.uid()))),
            Some(Gid::from_raw(self.shift(meta.gid()))),
            flags,
        )
        .map_err(errno)
        .map_err(context("set the owner of", to))?;
        if set_mode {
            rfs::chmod(to, Mode::from_raw_mode(meta.mode() & 0o7777))
                .map_err(errno)
                .map_err(context("set the mode of", to))?;
        }
        let t = |sec: i64, nsec: i64| Timespec {
            tv_sec: sec,
            tv_nsec: nsec as _,
        };
        let times = Timestamps {
            last_access: t(meta.atime(), meta.atime_nsec()),
            last_modification: t(meta.mtime(), meta.mtime_nsec()),
        };
        rfs::utimensat(CWD, to, &times, flags)
            .map_err(errno)
            .map_err(context("set the times of", to))
    }

    fn xattrs(from: &Path, to: &Path) -> io::Result<()> {
        for (name, value) in user_xattrs(from) {
            rfs::lsetxattr(to, name.as_str(), &value, rfs::XattrFlags::empty())
                .map_err(errno)
                .map_err(context("set an xattr of", to))?;
        }
        Ok(())
    }

    /// Copies the contents of directory `from` into the existing directory `to`
    /// (`is_upper`: `from` is the upper directory, whose whiteouts, opaque directories and
    /// nsbox files are kept or left out; its own `sandbox` is /sandbox's, copied apart).
    fn tree(&mut self, from: &Path, to: &Path, is_upper: bool) -> io::Result<()> {
        // Depth-first; directories get their attributes after their contents (their times).
        let mut stack: Vec<(PathBuf, bool)> = vec![(PathBuf::new(), false)];
        while let Some((rel, done)) = stack.pop() {
            if done {
                if !rel.as_os_str().is_empty() {
                    let meta = std::fs::symlink_metadata(from.join(&rel))?;
                    self.attributes(&to.join(&rel), &meta, true)?;
                }
                continue;
            }
            stack.push((rel.clone(), true));
            let dir = from.join(&rel);
            for entry in std::fs::read_dir(&dir).map_err(context("list", &dir))? {
                let entry = entry?;
                let name = entry.file_name();
                let path = rel.join(&name);
                let text = path.to_string_lossy();
                let (src, dst) = (from.join(&path), to.join(&path));
                if is_upper {
                    if rel.as_os_str().is_empty() && name == "sandbox" {
                        continue;
                    }
                    if NSBOX_FILES.contains(&text.as_ref()) {
                        continue;
                    }
                    if ACCOUNT_FILES.contains(&text.as_ref())
                        && only_nsbox_accounts(&src, self.lowers, &text)
                    {
                        continue;
                    }
                }
                let meta = std::fs::symlink_metadata(&src).map_err(context("inspect", &src))?;
                let ft = meta.file_type();
                if ft.is_dir() {
                    rfs::mkdir(&dst, Mode::from_raw_mode(0o700))
                        .map_err(errno)
                        .map_err(context("create", &dst))?;
                    Self::xattrs(&src, &dst)?;
                    if is_upper && is_opaque(&src) {
                        rfs::setxattr(
                            &dst,
                            "trusted.overlay.opaque",
                            b"y",
                            rfs::XattrFlags::empty(),
                        )
                        .map_err(errno)
                        .map_err(context("mark opaque", &dst))?;
                    }
                    stack.push((path, false));
                } else if ft.is_char_device() && meta.rdev() == 0 && is_upper {
                    // A whiteout: the path was deleted in the session.
                    rfs::mknodat(CWD, &dst, FileType::CharacterDevice, Mode::empty(), 0)
                        .map_err(errno)
                        .map_err(context("create the whiteout", &dst))?;
                    self.attributes(&dst, &meta, false)?;
                } else if ft.is_symlink() {
                    let target = std::fs::read_link(&src)?;
                    rfs::symlinkat(target.as_os_str().as_bytes(), CWD, &dst)
                        .map_err(errno)
                        .map_err(context("create", &dst))?;
                    self.attributes(&dst, &meta, false)?;
                } else if ft.is_file() {
                    let key = (meta.dev(), meta.ino());
                    if meta.nlink() > 1 {
                        if let Some(first) = self.links.get(&key) {
                            rfs::linkat(CWD, first, CWD, &dst, AtFlags::empty())
                                .map_err(errno)
                                .map_err(context("link", &dst))?;
                            self.copied.entries += 1;
                            continue;
                        }
                        self.links.insert(key, dst.clone());
                    }
                    self.copied.bytes += file(&src, &dst)?;
                    Self::xattrs(&src, &dst)?;
                    self.attributes(&dst, &meta, true)?;
                } else {
                    // Devices, FIFOs, sockets: no layer has them.
                    continue;
                }
                self.copied.entries += 1;
            }
        }
        Ok(())
    }
}

/// Copies a regular file's data (the kernel's copy: `copy_file_range` or `sendfile`), and
/// only its data: holes stay holes, so a sparse file the session made (which costs its tmpfs
/// nothing) costs the store's disk nothing either. Returns the bytes of data copied.
fn file(src: &Path, dst: &Path) -> io::Result<u64> {
    let from = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(src)
        .map_err(context("open", src))?;
    let mut to = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dst)
        .map_err(context("create", dst))?;
    let size = from.metadata()?.len();
    let mut copied = 0;
    let mut at = 0;
    while at < size {
        // The next data, and where it ends; ENXIO: only a hole is left.
        let start = match rfs::seek(&from, rfs::SeekFrom::Data(at)) {
            Ok(start) => start,
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(context("read", src)(errno(e))),
        };
        let end = rfs::seek(&from, rfs::SeekFrom::Hole(start))
            .map_err(errno)
            .map_err(context("read", src))?
            .min(size);
        rfs::seek(&from, rfs::SeekFrom::Start(start)).map_err(errno)?;
        rfs::seek(&to, rfs::SeekFrom::Start(start)).map_err(errno)?;
        let n = io::copy(&mut (&from).take(end - start), &mut to).map_err(context("copy", src))?;
        copied += n;
        if n < end - start {
            // The file shrank (it cannot while the session is frozen; stop all the same).
            break;
        }
        at = end;
    }
    // A hole at the end.
    to.set_len(size).map_err(context("size", dst))?;
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::os::unix::fs::PermissionsExt;

    fn root() -> bool {
        rustix::process::geteuid().is_root()
    }

    #[test]
    fn keeps_whiteouts_opaque_dirs_links_modes_and_shifts_owners() {
        if !root() {
            eprintln!("SKIP: needs root (owners, whiteouts, trusted.* xattrs)");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let (upper, sandbox, dst) = (
            tmp.path().join("upper"),
            tmp.path().join("sandbox"),
            tmp.path().join("dst"),
        );
        for d in [&upper, &sandbox, &dst] {
            std::fs::create_dir(d).unwrap();
        }
        let base = 200_000;
        std::fs::create_dir(upper.join("opq")).unwrap();
        rfs::setxattr(
            upper.join("opq"),
            "trusted.overlay.opaque",
            b"y",
            rfs::XattrFlags::empty(),
        )
        .unwrap();
        rfs::mknodat(
            CWD,
            upper.join("gone"),
            FileType::CharacterDevice,
            Mode::empty(),
            0,
        )
        .unwrap();
        std::fs::write(upper.join("opq/f"), "data").unwrap();
        std::fs::set_permissions(upper.join("opq/f"), std::fs::Permissions::from_mode(0o4750))
            .unwrap();
        rfs::chown(
            upper.join("opq/f"),
            Some(Uid::from_raw(base + 1000)),
            Some(Gid::from_raw(base + 50)),
        )
        .unwrap();
        std::fs::set_permissions(upper.join("opq/f"), std::fs::Permissions::from_mode(0o4750))
            .unwrap();
        std::fs::hard_link(upper.join("opq/f"), upper.join("hard")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", upper.join("link")).unwrap();
        std::fs::create_dir(upper.join("etc")).unwrap();
        std::fs::write(upper.join("etc/hostname"), "parent").unwrap();
        std::fs::create_dir(upper.join("sandbox")).unwrap();
        std::fs::write(upper.join("sandbox/stale"), "x").unwrap();
        std::fs::write(sandbox.join("w"), "work").unwrap();
        // 1 GiB that is all hole but 4 bytes in the middle.
        let sparse = File::create(sandbox.join("sparse")).unwrap();
        sparse.set_len(1 << 30).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&sparse, b"mid!", 1 << 29).unwrap();
        rfs::chown(sandbox.join("w"), Some(Uid::from_raw(7)), None).unwrap();

        let copied = copy_session(&upper, Some(&sandbox), base, &[], &dst).unwrap();
        assert!(
            (12..=8 + 8192).contains(&copied.bytes),
            "f (once for both links), w and the sparse file's data: {copied:?}"
        );
        let sparse = std::fs::metadata(dst.join("sandbox/sparse")).unwrap();
        assert_eq!(sparse.len(), 1 << 30);
        assert!(sparse.blocks() * 512 < 1 << 20, "holes stay holes");
        let mut mid = [0u8; 4];
        std::os::unix::fs::FileExt::read_exact_at(
            &File::open(dst.join("sandbox/sparse")).unwrap(),
            &mut mid,
            1 << 29,
        )
        .unwrap();
        assert_eq!(&mid, b"mid!");

        let st = std::fs::symlink_metadata(dst.join("gone")).unwrap();
        assert!(
            st.file_type().is_char_device() && st.rdev() == 0,
            "a whiteout"
        );
        assert!(is_opaque(&dst.join("opq")));
        assert!(is_opaque(&dst.join("sandbox")), "/sandbox is put in whole");
        let f = std::fs::symlink_metadata(dst.join("opq/f")).unwrap();
        assert_eq!(f.mode() & 0o7777, 0o4750);
        assert_eq!(
            (f.uid(), f.gid()),
            (DEFAULT_UID_BASE + 1000, DEFAULT_UID_BASE + 50)
        );
        assert_eq!(f.ino(), std::fs::metadata(dst.join("hard")).unwrap().ino());
        assert_eq!(
            std::fs::read_link(dst.join("link")).unwrap(),
            Path::new("/etc/passwd")
        );
        assert!(
            !dst.join("etc/hostname").exists(),
            "nsbox's own files stay out"
        );
        assert!(
            !dst.join("sandbox/stale").exists(),
            "/sandbox is the session's"
        );
        assert_eq!(
            std::fs::read_to_string(dst.join("sandbox/w")).unwrap(),
            "work"
        );
        // Outside the session's range: nobody.
        let w = std::fs::symlink_metadata(dst.join("sandbox/w")).unwrap();
        assert_eq!(w.uid(), DEFAULT_UID_BASE + 65534);
    }
}
