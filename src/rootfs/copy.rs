//! Copying a file or a tree between two directories given as descriptors, without ever
//! following a symlink: used for `--copy` (host to a new sandbox) and `nsbox cp` (host to a
//! living sandbox and back). Symlinks are copied as symlinks, devices, fifos and sockets are
//! skipped (a fifo could block the copy forever), modes (minus setuid/setgid) and modification
//! times are kept. Every name is opened relative to an already-open directory with O_NOFOLLOW,
//! so a symlink swapped in while the copy runs makes it fail, never wander.

use std::ffi::{CStr, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, Timestamps};

/// Deep trees are copied recursively; beyond this depth the copy fails instead of exhausting
/// descriptors.
pub const MAX_COPY_DEPTH: usize = 256;

fn err(e: rustix::io::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

/// One copy: who owns what it creates, and whether it may replace what is there.
#[derive(Debug)]
pub struct TreeCopy {
    /// Host uid/gid for everything created; None keeps the copying process's own.
    pub owner: Option<(u32, u32)>,
    /// Replace existing files and symlinks (directories are merged either way).
    pub replace: bool,
    /// Entries skipped (devices, fifos, sockets).
    pub skipped: usize,
    /// Files, directories and symlinks written.
    pub written: usize,
}

impl TreeCopy {
    pub fn new(owner: Option<(u32, u32)>, replace: bool) -> TreeCopy {
        TreeCopy {
            owner,
            replace,
            skipped: 0,
            written: 0,
        }
    }

    /// Copies the entry `name` of directory `src_dir` to `name_out` in `dst_dir`.
    pub fn entry(
        &mut self,
        src_dir: BorrowedFd<'_>,
        name: &OsStr,
        dst_dir: BorrowedFd<'_>,
        name_out: &OsStr,
    ) -> io::Result<()> {
        let st = rfs::statat(src_dir, name, AtFlags::SYMLINK_NOFOLLOW).map_err(err)?;
        self.dispatch(src_dir, name, &st, dst_dir, name_out, 0)
    }

    fn dispatch(
        &mut self,
        src_dir: BorrowedFd<'_>,
        name: &OsStr,
        st: &rfs::Stat,
        dst_dir: BorrowedFd<'_>,
        name_out: &OsStr,
        depth: usize,
    ) -> io::Result<()> {
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => {
                let sub = rfs::openat(
                    src_dir,
                    name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(err)?;
                self.dir(sub.as_fd(), dst_dir, name_out, st, depth)
            }
            FileType::RegularFile => {
                let file = rfs::openat(
                    src_dir,
                    name,
                    OFlags::RDONLY
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC
                        | OFlags::NOCTTY
                        | OFlags::NONBLOCK,
                    Mode::empty(),
                )
                .map_err(err)?;
                self.file(file, dst_dir, name_out, st)
            }
            FileType::Symlink => {
                let link = rfs::readlinkat(src_dir, name, Vec::new()).map_err(err)?;
                self.clear(dst_dir, name_out)?;
                rfs::symlinkat(link.as_c_str(), dst_dir, name_out).map_err(err)?;
                if let Some((uid, gid)) = self.owner {
                    rfs::chownat(
                        dst_dir,
                        name_out,
                        Some(rfs::Uid::from_raw(uid)),
                        Some(rfs::Gid::from_raw(gid)),
                        AtFlags::SYMLINK_NOFOLLOW,
                    )
                    .map_err(err)?;
                }
                self.written += 1;
                Ok(())
            }
            // Devices, fifos and sockets are not files to copy.
            _ => {
                self.skipped += 1;
                Ok(())
            }
        }
    }

    /// Makes room for a new file or symlink at `name` (when replacing is allowed).
    fn clear(&self, dst_dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
        if !self.replace {
            return Ok(());
        }
        match rfs::statat(dst_dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} is a directory", name.to_string_lossy()),
                ))
            }
            Ok(_) => rfs::unlinkat(dst_dir, name, AtFlags::empty()).map_err(err),
            Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(err(e)),
        }
    }

    fn finish(&self, fd: BorrowedFd<'_>, st: &rfs::Stat) -> io::Result<()> {
        if let Some((uid, gid)) = self.owner {
            rfs::fchown(
                fd,
                Some(rfs::Uid::from_raw(uid)),
                Some(rfs::Gid::from_raw(gid)),
            )
            .map_err(err)?;
        }
        rfs::fchmod(fd, Mode::from_raw_mode(st.st_mode & 0o1777)).map_err(err)?;
        let times = Timestamps {
            last_access: rfs::Timespec {
                tv_sec: st.st_atime,
                tv_nsec: st.st_atime_nsec as _,
            },
            last_modification: rfs::Timespec {
                tv_sec: st.st_mtime,
                tv_nsec: st.st_mtime_nsec as _,
            },
        };
        rfs::futimens(fd, &times).map_err(err)
    }

    /// Copies an open regular file to `name` in `dst_dir`.
    pub fn file(
        &mut self,
        src: OwnedFd,
        dst_dir: BorrowedFd<'_>,
        name: &OsStr,
        st: &rfs::Stat,
    ) -> io::Result<()> {
        self.clear(dst_dir, name)?;
        let dst = rfs::openat(
            dst_dir,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(err)?;
        let mut from = File::from(src);
        let mut to = File::from(dst);
        io::copy(&mut from, &mut to)?;
        self.finish(to.as_fd(), st)?;
        self.written += 1;
        Ok(())
    }

    /// Copies the open directory `src` to `name` in `dst_parent` (merging into an existing
    /// directory there).
    pub fn dir(
        &mut self,
        src: BorrowedFd<'_>,
        dst_parent: BorrowedFd<'_>,
        name: &OsStr,
        st: &rfs::Stat,
        depth: usize,
    ) -> io::Result<()> {
        if depth > MAX_COPY_DEPTH {
            return Err(io::Error::other(format!(
                "the tree is deeper than {MAX_COPY_DEPTH} levels"
            )));
        }
        match rfs::mkdirat(dst_parent, name, Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(err(e)),
        }
        let dst = rfs::openat(
            dst_parent,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(err)?;
        for entry in rfs::Dir::read_from(src).map_err(err)? {
            let entry = entry.map_err(err)?;
            let child: &CStr = entry.file_name();
            if child.to_bytes() == b"." || child.to_bytes() == b".." {
                continue;
            }
            let child_name = OsStr::from_bytes(child.to_bytes());
            let cst = rfs::statat(src, child, AtFlags::SYMLINK_NOFOLLOW).map_err(err)?;
            self.dispatch(src, child_name, &cst, dst.as_fd(), child_name, depth + 1)?;
        }
        self.finish(dst.as_fd(), st)?;
        self.written += 1;
        Ok(())
    }
}
