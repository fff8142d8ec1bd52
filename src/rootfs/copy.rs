//! Copying a file or a tree between two directories given as descriptors, without ever
//! following a symlink: used for `--copy` (host to a new sandbox) and `nsbox cp` (host to a
//! living sandbox and back). Symlinks are copied as symlinks, devices, fifos and sockets are
//! skipped (a fifo could block the copy forever), modes (minus setuid/setgid) and modification
//! times are kept. Every name is opened relative to an already-open directory with O_NOFOLLOW,
//! so a symlink swapped in while the copy runs makes it fail, never wander.
//!
//! A copy writes no more than its source really holds, since the source may be a hostile
//! sandbox's tree: holes in sparse files stay holes (`SEEK_DATA`/`SEEK_HOLE`; a 1 TiB
//! `truncate` costs nothing), a file with several hard links is written once and linked for
//! the others, no file is read past the size it had when the walk found it, and an optional
//! budget ([`TreeCopy::max_bytes`]) bounds the data written in all; a file that would cross it
//! is removed again and the copy fails.

use std::collections::HashMap;
use std::ffi::{CStr, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use rustix::fs::{
    self as rfs, AtFlags, FileType, Mode, OFlags, ResolveFlags, SeekFrom, Timestamps,
};

/// Deep trees are copied recursively; beyond this depth the copy fails instead of exhausting
/// descriptors.
pub const MAX_COPY_DEPTH: usize = 256;

fn err(e: rustix::io::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

/// Hard-linked files remembered per copy; beyond this many, further links are copied as files
/// (the byte budget still bounds them).
const MAX_TRACKED_LINKS: usize = 1 << 20;

/// What a copy writes per read/write call.
const CHUNK: usize = 256 << 10;

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
    /// Data bytes the copy may write in all (holes and hard links cost nothing); None: no bound.
    pub max_bytes: Option<u64>,
    /// Data bytes written so far.
    pub bytes: u64,
    /// Hard links written as links.
    pub linked: usize,
    /// The destination directory the copy started in (hard links are made relative to it).
    root: Option<OwnedFd>,
    /// Names from `root` down to the directory being written.
    path: Vec<OsString>,
    /// Source (device, inode) of a file with several links → where its first copy went
    /// (relative to `root`) and that copy's (device, inode).
    links: HashMap<(u64, u64), (PathBuf, (u64, u64))>,
}

/// The error of a copy that would write more than its budget.
pub fn over_budget(max: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::FileTooLarge,
        format!("the copy would write more than {max} bytes (--max-size)"),
    )
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

/// Removes the entry `name` of `dir` and everything below it, never following a link (what a
/// failed copy created is taken back this way).
pub fn remove_entry(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    remove_below(dir, name, 0)
}

fn remove_below(dir: BorrowedFd<'_>, name: &OsStr, depth: usize) -> io::Result<()> {
    let st = rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).map_err(err)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        return rfs::unlinkat(dir, name, AtFlags::empty()).map_err(err);
    }
    if depth > MAX_COPY_DEPTH + 1 {
        return Err(io::Error::other(format!(
            "the tree is deeper than {MAX_COPY_DEPTH} levels"
        )));
    }
    let sub = rfs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(err)?;
    let mut names = Vec::new();
    for entry in rfs::Dir::read_from(&sub).map_err(err)? {
        let entry = entry.map_err(err)?;
        let child = entry.file_name().to_bytes();
        if child != b"." && child != b".." {
            names.push(OsStr::from_bytes(child).to_os_string());
        }
    }
    for child in names {
        remove_below(sub.as_fd(), &child, depth + 1)?;
    }
    rfs::unlinkat(dir, name, AtFlags::REMOVEDIR).map_err(err)
}

impl TreeCopy {
    pub fn new(owner: Option<(u32, u32)>, replace: bool) -> TreeCopy {
        TreeCopy {
            owner,
            replace,
            skipped: 0,
            written: 0,
            max_bytes: None,
            bytes: 0,
            linked: 0,
            root: None,
            path: Vec::new(),
            links: HashMap::new(),
        }
    }

    /// Bounds the data bytes the copy writes.
    pub fn with_max_bytes(mut self, max: Option<u64>) -> TreeCopy {
        self.max_bytes = max;
        self
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
        self.root = Some(rustix::io::fcntl_dupfd_cloexec(dst_dir, 3).map_err(err)?);
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
        self.root = Some(rustix::io::fcntl_dupfd_cloexec(dst_dir, 3).map_err(err)?);
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
        let key = (st.st_dev, st.st_ino);
        if st.st_nlink > 1 {
            if let Some(first) = self.links.get(&key) {
                if self.link_to_first(first, dst_dir, name) {
                    self.linked += 1;
                    self.written += 1;
                    return Ok(());
                }
            }
        }
        let dst = rfs::openat(
            dst_dir,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(err)?;
        let from = File::from(src);
        let to = File::from(dst);
        let size = u64::try_from(st.st_size).unwrap_or(0);
        let copied = self
            .copy_data(&from, &to, size)
            .and_then(|()| self.finish(to.as_fd(), st));
        if let Err(e) = copied {
            // No partial file stays behind (a budget crossed, a disk full).
            drop(to);
            let _ = rfs::unlinkat(dst_dir, name, AtFlags::empty());
            return Err(e);
        }
        if st.st_nlink > 1 && self.links.len() < MAX_TRACKED_LINKS {
            let out = rfs::fstat(&to).map_err(err)?;
            let mut rel: PathBuf = self.path.iter().collect();
            rel.push(name);
            self.links.insert(key, (rel, (out.st_dev, out.st_ino)));
        }
        self.written += 1;
        Ok(())
    }

    /// Copies the first `size` bytes of `from` to `to`, data extents only: holes stay holes
    /// (the length is set at the end), and what the file grew by after it was found is not read.
    fn copy_data(&mut self, from: &File, to: &File, size: u64) -> io::Result<()> {
        let mut buf = vec![0u8; CHUNK.min(usize::try_from(size).unwrap_or(CHUNK)).max(1)];
        let mut pos = 0u64;
        while pos < size {
            let data = match rfs::seek(from, SeekFrom::Data(pos)) {
                Ok(d) => d,
                // No data after pos: the rest is a hole.
                Err(rustix::io::Errno::NXIO) => break,
                // A filesystem without SEEK_DATA: everything is data.
                Err(rustix::io::Errno::INVAL | rustix::io::Errno::OPNOTSUPP) => pos,
                Err(e) => return Err(err(e)),
            };
            if data >= size {
                break;
            }
            let end = match rfs::seek(from, SeekFrom::Hole(data)) {
                Ok(h) => h.min(size),
                Err(_) => size,
            };
            let mut at = data;
            while at < end {
                let want = usize::try_from(end - at).unwrap_or(CHUNK).min(buf.len());
                let n = from.read_at(&mut buf[..want], at)?;
                if n == 0 {
                    // The file shrank while it was copied: what is left is what there is.
                    return to.set_len(at.max(pos));
                }
                let n64 = n as u64;
                if let Some(max) = self.max_bytes {
                    if self.bytes.saturating_add(n64) > max {
                        return Err(over_budget(max));
                    }
                }
                to.write_all_at(&buf[..n], at)?;
                self.bytes += n64;
                at += n64;
            }
            pos = end;
        }
        to.set_len(size)
    }

    /// Makes `name` in `dst_dir` a hard link to the first copy of the same source file, found
    /// below the copy's root without following any link and checked to be the inode this copy
    /// wrote (the destination may be a hostile sandbox's tree). False: copy the data instead.
    fn link_to_first(
        &self,
        first: &(PathBuf, (u64, u64)),
        dst_dir: BorrowedFd<'_>,
        name: &OsStr,
    ) -> bool {
        let (rel, written) = first;
        let (Some(root), Some(last)) = (&self.root, rel.file_name()) else {
            return false;
        };
        let parent = match rel.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => std::path::Path::new("."),
        };
        let Ok(dir) = rfs::openat2(
            root,
            parent,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH
                | ResolveFlags::NO_SYMLINKS
                | ResolveFlags::NO_MAGICLINKS
                | ResolveFlags::NO_XDEV,
        ) else {
            return false;
        };
        let same = rfs::statat(&dir, last, AtFlags::SYMLINK_NOFOLLOW)
            .is_ok_and(|st| (st.st_dev, st.st_ino) == *written);
        same && rfs::linkat(&dir, last, dst_dir, name, AtFlags::empty()).is_ok()
    }
}

/// Copying: the place is the destination directory.
impl TreeVisitor for TreeCopy {
    type Place = OwnedFd;

    fn enter_dir(&mut self, at: &OwnedFd, name: &OsStr, _: &rfs::Stat) -> io::Result<OwnedFd> {
        self.path.push(name.to_os_string());
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
        self.path.pop();
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn dir_fd(path: &std::path::Path) -> OwnedFd {
        rfs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap()
    }

    #[test]
    fn holes_stay_holes_and_links_stay_links() {
        let src = tempfile::tempdir().unwrap();
        let tree = src.path().join("tree");
        std::fs::create_dir_all(tree.join("sub")).unwrap();
        let sparse = std::fs::File::create(tree.join("sparse")).unwrap();
        sparse.set_len(1 << 30).unwrap();
        sparse.write_all_at(b"middle", 1 << 29).unwrap();
        std::fs::write(tree.join("a"), "linked").unwrap();
        std::fs::hard_link(tree.join("a"), tree.join("b")).unwrap();
        std::fs::hard_link(tree.join("a"), tree.join("sub/c")).unwrap();

        let dst = tempfile::tempdir().unwrap();
        let mut copy = TreeCopy::new(None, false).with_max_bytes(Some(1 << 20));
        copy.entry(
            dir_fd(src.path()).as_fd(),
            OsStr::new("tree"),
            dir_fd(dst.path()).as_fd(),
            OsStr::new("out"),
        )
        .unwrap();
        let out = dst.path().join("out");
        let meta = std::fs::metadata(out.join("sparse")).unwrap();
        assert_eq!(meta.len(), 1 << 30);
        assert!(meta.blocks() * 512 < 1 << 20, "{} blocks", meta.blocks());
        let mut word = [0u8; 6];
        std::fs::File::open(out.join("sparse"))
            .unwrap()
            .read_exact_at(&mut word, 1 << 29)
            .unwrap();
        assert_eq!(&word, b"middle");
        let ino = |p: &str| std::fs::metadata(out.join(p)).unwrap().ino();
        assert_eq!(ino("a"), ino("b"));
        assert_eq!(ino("a"), ino("sub/c"));
        assert_eq!(copy.linked, 2);
        assert!(copy.bytes < 1 << 20, "{} bytes", copy.bytes);
    }

    #[test]
    fn a_copy_over_its_budget_fails_and_leaves_no_partial_file() {
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("big"), vec![7u8; 3 << 20]).unwrap();
        let dst = tempfile::tempdir().unwrap();
        let mut copy = TreeCopy::new(None, false).with_max_bytes(Some(1 << 20));
        let e = copy
            .entry(
                dir_fd(src.path()).as_fd(),
                OsStr::new("big"),
                dir_fd(dst.path()).as_fd(),
                OsStr::new("big"),
            )
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::FileTooLarge, "{e}");
        assert!(!dst.path().join("big").exists());
    }

    #[test]
    fn remove_entry_never_follows_links() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep"), "x").unwrap();
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("t/d")).unwrap();
        std::os::unix::fs::symlink(outside.path(), tmp.path().join("t/d/link")).unwrap();
        remove_entry(dir_fd(tmp.path()).as_fd(), OsStr::new("t")).unwrap();
        assert!(!tmp.path().join("t").exists());
        assert!(outside.path().join("keep").exists());
    }
}
