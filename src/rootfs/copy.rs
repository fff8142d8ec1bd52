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

/// What a tree walk does with what it finds. `Place` is where the current directory's
/// entries go (a destination directory, a path prefix in an archive).
pub trait TreeVisitor {
    type Place;
    /// A directory, before its entries: returns the place for them.
    fn enter_dir(
        &mut self,
        at: &Self::Place,
        name: &OsStr,
        st: &rfs::Stat,
    ) -> io::Result<Self::Place>;
    /// The same directory after its entries (times set last: creating entries changes them).
    fn leave_dir(&mut self, place: Self::Place, st: &rfs::Stat) -> io::Result<()>;
    /// A regular file, opened (O_NOFOLLOW) for reading.
    fn file(
        &mut self,
        at: &Self::Place,
        name: &OsStr,
        src: OwnedFd,
        st: &rfs::Stat,
    ) -> io::Result<()>;
    fn symlink(
        &mut self,
        at: &Self::Place,
        name: &OsStr,
        target: &CStr,
        st: &rfs::Stat,
    ) -> io::Result<()>;
    /// A device, fifo or socket (never opened: a fifo could block forever).
    fn special(&mut self, name: &OsStr);
}

/// Walks the entry `name` of `src_dir` (a file, a symlink or a whole tree), never following
/// a symlink, handing what it finds to `visitor`; the top entry arrives as `name_out`.
pub fn walk<V: TreeVisitor>(
    visitor: &mut V,
    src_dir: BorrowedFd<'_>,
    name: &OsStr,
    at: &V::Place,
    name_out: &OsStr,
) -> io::Result<()> {
    let st = rfs::statat(src_dir, name, AtFlags::SYMLINK_NOFOLLOW).map_err(err)?;
    walk_entry(visitor, src_dir, name, &st, at, name_out, 0)
}

fn walk_entry<V: TreeVisitor>(
    visitor: &mut V,
    src_dir: BorrowedFd<'_>,
    name: &OsStr,
    st: &rfs::Stat,
    at: &V::Place,
    name_out: &OsStr,
    depth: usize,
) -> io::Result<()> {
    let flags = match FileType::from_raw_mode(st.st_mode) {
        FileType::Directory => OFlags::RDONLY | OFlags::DIRECTORY,
        FileType::RegularFile => OFlags::RDONLY | OFlags::NOCTTY | OFlags::NONBLOCK,
        FileType::Symlink => {
            let link = rfs::readlinkat(src_dir, name, Vec::new()).map_err(err)?;
            return visitor.symlink(at, name_out, link.as_c_str(), st);
        }
        _ => {
            visitor.special(name);
            return Ok(());
        }
    };
    let src = rfs::openat(
        src_dir,
        name,
        flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(err)?;
    walk_open(visitor, src, st, at, name_out, depth)
}

/// Walks an already opened file or directory `src` (whose status is `st`).
pub fn walk_open<V: TreeVisitor>(
    visitor: &mut V,
    src: OwnedFd,
    st: &rfs::Stat,
    at: &V::Place,
    name_out: &OsStr,
    depth: usize,
) -> io::Result<()> {
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        return visitor.file(at, name_out, src, st);
    }
    if depth > MAX_COPY_DEPTH {
        return Err(io::Error::other(format!(
            "the tree is deeper than {MAX_COPY_DEPTH} levels"
        )));
    }
    let place = visitor.enter_dir(at, name_out, st)?;
    for entry in rfs::Dir::read_from(&src).map_err(err)? {
        let entry = entry.map_err(err)?;
        let child: &CStr = entry.file_name();
        if child.to_bytes() == b"." || child.to_bytes() == b".." {
            continue;
        }
        let child_name = OsStr::from_bytes(child.to_bytes());
        let cst = rfs::statat(&src, child, AtFlags::SYMLINK_NOFOLLOW).map_err(err)?;
        walk_entry(
            visitor,
            src.as_fd(),
            child_name,
            &cst,
            &place,
            child_name,
            depth + 1,
        )?;
    }
    visitor.leave_dir(place, st)
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
        let dst = rustix::io::fcntl_dupfd_cloexec(dst_dir, 3).map_err(err)?;
        walk(self, src_dir, name, &dst, name_out)
    }

    /// Copies the already opened file or directory `src` to `name_out` in `dst_dir`.
    pub fn open_entry(
        &mut self,
        src: OwnedFd,
        dst_dir: BorrowedFd<'_>,
        name_out: &OsStr,
    ) -> io::Result<()> {
        let st = rfs::fstat(&src).map_err(err)?;
        let dst = rustix::io::fcntl_dupfd_cloexec(dst_dir, 3).map_err(err)?;
        walk_open(self, src, &st, &dst, name_out, 0)
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

    fn write_file(
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
}

/// Copying: the place is the destination directory.
impl TreeVisitor for TreeCopy {
    type Place = OwnedFd;

    fn enter_dir(&mut self, at: &OwnedFd, name: &OsStr, _: &rfs::Stat) -> io::Result<OwnedFd> {
        let parent = at.as_fd();
        match rfs::mkdirat(parent, name, Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(err(e)),
        }
        let dst = rfs::openat(
            parent,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(err)?;
        Ok(dst)
    }

    fn leave_dir(&mut self, place: OwnedFd, st: &rfs::Stat) -> io::Result<()> {
        self.finish(place.as_fd(), st)?;
        self.written += 1;
        Ok(())
    }

    fn file(&mut self, at: &OwnedFd, name: &OsStr, src: OwnedFd, st: &rfs::Stat) -> io::Result<()> {
        self.write_file(src, at.as_fd(), name, st)
    }

    fn symlink(
        &mut self,
        at: &OwnedFd,
        name: &OsStr,
        target: &CStr,
        _: &rfs::Stat,
    ) -> io::Result<()> {
        let dst_dir = at.as_fd();
        self.clear(dst_dir, name)?;
        rfs::symlinkat(target, dst_dir, name).map_err(err)?;
        if let Some((uid, gid)) = self.owner {
            rfs::chownat(
                dst_dir,
                name,
                Some(rfs::Uid::from_raw(uid)),
                Some(rfs::Gid::from_raw(gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(err)?;
        }
        self.written += 1;
        Ok(())
    }

    fn special(&mut self, _: &OsStr) {
        self.skipped += 1;
    }
}
