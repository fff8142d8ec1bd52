//! `nsbox cp`: files and trees into and out of a living sandbox.
//!
//! The session's supervisor hands over a descriptor of the sandbox's root (its init's root
//! directory). Every path inside is resolved from it with openat2(RESOLVE_IN_ROOT |
//! RESOLVE_NO_MAGICLINKS), then walked name by name with O_NOFOLLOW: a symlink the workload
//! planted, even one swapped in while the copy runs, can only point somewhere else inside the
//! sandbox, never at a host file (docker cp CVE-2018-15664). Symlinks are copied as symlinks.
//!
//! With `-` instead of a host path the copy is a tar stream: written to stdout from a tree
//! inside ([`copy_out_tar`]), or read from stdin into a directory inside ([`copy_in_tar`],
//! through the same writer that unpacks image layers, with its rules for hostile archives).
//!
//! `nsbox --host URL cp` copies through a server's files API, as tar streams: [`host_tar`]
//! writes a host tree as one, [`host_extract`] writes one to a host path, with the rules of
//! the local copy on both sides (no host link followed; the same naming).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, ResolveFlags};

use super::client::SessionClient;
use super::state::valid_name;
use super::SessionError;
use crate::host::path::{open_no_follow, Access, HostPathError};
use crate::image::tar::{EntryMeta, Kind, TarWriter};
use crate::rootfs::copy::{over_budget, remove_entry, walk, walk_open, TreeCopy, TreeVisitor};

/// One side of `nsbox cp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Host(PathBuf),
    /// `SESSION:PATH`.
    Session {
        session: String,
        path: PathBuf,
    },
}

/// Parses `SESSION:PATH` (a session id or name, a colon, a path) or a host path.
pub fn parse_endpoint(arg: &str) -> Endpoint {
    if let Some((session, path)) = arg.split_once(':') {
        if valid_name(session) && !path.is_empty() {
            return Endpoint::Session {
                session: session.to_string(),
                path: PathBuf::from(path),
            };
        }
    }
    Endpoint::Host(PathBuf::from(arg))
}

/// What a copy did.
#[derive(Debug, Clone, Copy, Default)]
pub struct CopyReport {
    pub written: usize,
    /// Devices, fifos and sockets left out.
    pub skipped: usize,
}

fn copy_err(what: impl std::fmt::Display, e: impl std::fmt::Display) -> SessionError {
    SessionError::Copy(format!("{what}: {e}"))
}

fn errno(e: rustix::io::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

/// The absolute path inside the sandbox for `path` (relative paths start at the session's
/// working directory). `..` is refused: a copy names a place in the sandbox, not a way out.
pub fn inside_path(path: &Path, workdir: &Path) -> Result<PathBuf, SessionError> {
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(SessionError::Copy(format!(
            "{}: '..' is not allowed in a sandbox path (copies stay inside the sandbox)",
            path.display()
        )));
    }
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        workdir.join(path)
    };
    let mut out = PathBuf::from("/");
    for c in joined.components() {
        if let Component::Normal(part) = c {
            out.push(part);
        }
    }
    Ok(out)
}

/// Resolves a directory inside the sandbox, creating missing ones (owned by `owner`) when asked.
fn inside_dir(
    root: BorrowedFd<'_>,
    path: &Path,
    create: Option<(u32, u32)>,
) -> io::Result<OwnedFd> {
    let rel = path.strip_prefix("/").unwrap_or(path);
    let resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
    let open = |p: &Path| {
        let target = if p.as_os_str().is_empty() {
            Path::new(".")
        } else {
            p
        };
        rfs::openat2(
            root,
            target,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            resolve,
        )
    };
    match open(rel) {
        Ok(fd) => Ok(fd),
        Err(rustix::io::Errno::NOENT) if create.is_some() => {
            let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
                return Err(io::Error::from_raw_os_error(libc::ENOENT));
            };
            let parent_fd = inside_dir(root, parent, create)?;
            match rfs::mkdirat(&parent_fd, name, Mode::from_raw_mode(0o755)) {
                Ok(()) => {
                    if let Some((uid, gid)) = create {
                        rfs::chownat(
                            &parent_fd,
                            name,
                            Some(rfs::Uid::from_raw(uid)),
                            Some(rfs::Gid::from_raw(gid)),
                            AtFlags::SYMLINK_NOFOLLOW,
                        )
                        .map_err(errno)?;
                    }
                }
                Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(errno(e)),
            }
            rfs::openat(
                &parent_fd,
                name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(errno)
        }
        Err(e) => Err(errno(e)),
    }
}

/// The directory holding `inside` (an absolute path in the sandbox), and the entry's name.
fn inside_entry(
    root: BorrowedFd<'_>,
    inside: &Path,
) -> Result<(OwnedFd, std::ffi::OsString), SessionError> {
    let (Some(parent), Some(name)) = (inside.parent(), inside.file_name()) else {
        return Err(copy_err(
            inside.display(),
            "copy a file or directory below /",
        ));
    };
    let dir = inside_dir(root, parent, None)
        .map_err(|e| copy_err(format!("{} (in the sandbox)", parent.display()), e))?;
    Ok((dir, name.to_os_string()))
}

fn is_dir_at(dir: BorrowedFd<'_>, name: &OsStr) -> bool {
    rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Directory)
}

/// Explains the errors users hit when writing into a sandbox.
fn write_hint(e: io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EROFS) => format!(
            "{e} (the sandbox's root is read-only: copy into /sandbox, /tmp or a :rw mount)"
        ),
        Some(libc::ENOSPC) => {
            format!("{e} (the sandbox's filesystem is full: see --sandbox-size / --tmp-size)")
        }
        _ => e.to_string(),
    }
}

/// Copies the host file or tree `src` to `dst` inside the session. An existing directory at
/// `dst` receives `src` under its own name; missing parents are created. What is written
/// belongs to the sandbox user; files already there are replaced.
pub fn copy_in(client: &SessionClient, src: &Path, dst: &Path) -> Result<CopyReport, SessionError> {
    let (root, uid, gid, base) = client.open_root()?;
    let owner = (base + uid, base + gid);
    let inside = inside_path(dst, &client.record.workdir)?;
    let src_name = src.file_name().ok_or_else(|| {
        copy_err(
            src.display(),
            "the source has no file name (use a path such as ./dir)",
        )
    })?;
    // No link in the host path is followed (crate::host::path): an earlier sandbox may have
    // planted it where this copy reads.
    let (src_fd, _) =
        open_no_follow(src, Access::Read).map_err(|e| copy_err(src.display(), e.reason()))?;
    // Into an existing directory, or as the named path?
    let existing_dir = inside_dir(root.as_fd(), &inside, None).ok();
    let (dst_dir, name) = match existing_dir {
        Some(dir) if inside != Path::new("/") || src_name != "/" => (dir, src_name.to_os_string()),
        _ => {
            let parent = inside.parent().unwrap_or(Path::new("/"));
            let name = inside
                .file_name()
                .ok_or_else(|| copy_err(inside.display(), "not a file name"))?;
            let dir = inside_dir(root.as_fd(), parent, Some(owner)).map_err(|e| {
                copy_err(
                    format!("{} (in the sandbox)", parent.display()),
                    write_hint(e),
                )
            })?;
            (dir, name.to_os_string())
        }
    };
    let mut copy = TreeCopy::new(Some(owner), true);
    copy.open_entry(src_fd, dst_dir.as_fd(), &name)
        .map_err(|e| {
            copy_err(
                format!("copy {} to {}", src.display(), inside.display()),
                write_hint(e),
            )
        })?;
    Ok(CopyReport {
        written: copy.written,
        skipped: copy.skipped,
    })
}

/// Copies `src` inside the session to the host path `dst`. An existing directory at `dst`
/// receives it under its own name. Symlinks inside the sandbox are copied as symlinks: a link
/// the workload planted never makes nsbox read what it points at.
///
/// At most `max_bytes` of data are written (holes and hard links cost nothing, see
/// [`crate::rootfs::copy`]); a copy that would write more fails, and what it created is
/// removed again.
pub fn copy_out(
    client: &SessionClient,
    src: &Path,
    dst: &Path,
    max_bytes: Option<u64>,
) -> Result<CopyReport, SessionError> {
    let (root, _, _, _) = client.open_root()?;
    copy_out_of_root(root.as_fd(), &client.record.workdir, src, dst, max_bytes)
}

/// [`copy_out`] from a sandbox's root directory `root` (relative `src` paths start at
/// `workdir`): a session's, or a one-shot's kept past its end for `exec --out`.
pub fn copy_out_of_root(
    root: BorrowedFd<'_>,
    workdir: &Path,
    src: &Path,
    dst: &Path,
    max_bytes: Option<u64>,
) -> Result<CopyReport, SessionError> {
    let inside = inside_path(src, workdir)?;
    let (src_dir, name) = inside_entry(root, &inside)?;
    let name = name.as_os_str();
    rfs::statat(&src_dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| copy_err(format!("{} (in the sandbox)", inside.display()), e))?;
    let (host_fd, dst_is_dir, out_name) = host_destination(dst, name)?;
    if !dst_is_dir && is_dir_at(host_fd.as_fd(), &out_name) && !is_dir_at(src_dir.as_fd(), name) {
        return Err(copy_err(dst.display(), "is a directory"));
    }
    let existed = rfs::statat(&host_fd, &out_name, AtFlags::SYMLINK_NOFOLLOW).is_ok();
    let mut copy = TreeCopy::new(None, true).with_max_bytes(max_bytes);
    if let Err(e) = copy.entry(src_dir.as_fd(), name, host_fd.as_fd(), &out_name) {
        if !existed {
            let _ = remove_entry(host_fd.as_fd(), &out_name);
        }
        return Err(copy_err(
            format!("copy {} to {}", inside.display(), dst.display()),
            e,
        ));
    }
    Ok(CopyReport {
        written: copy.written,
        skipped: copy.skipped,
    })
}

/// Where a copy out lands on the host: an existing directory at `dst` (which receives the
/// entry under its own `name`), or `dst`'s parent (created if missing) and `dst`'s name. No link
/// in the host path is followed, as for sources: writing as root through a link planted in an
/// earlier sandbox's workspace would put files wherever it points.
fn host_destination(
    dst: &Path,
    name: &OsStr,
) -> Result<(OwnedFd, bool, std::ffi::OsString), SessionError> {
    let refuse = |e: HostPathError| copy_err(dst.display(), e.reason());
    match open_no_follow(dst, Access::Path) {
        Ok((fd, st)) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
            return Ok((fd, true, name.to_os_string()))
        }
        Ok(_) => {}
        Err(HostPathError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(refuse(e)),
    }
    let parent = match dst.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let out = dst
        .file_name()
        .ok_or_else(|| copy_err(dst.display(), "not a file name"))?;
    let fd = match open_no_follow(&parent, Access::Path) {
        Ok((fd, _)) => fd,
        // A link before the missing part is found first (the path is walked in order), so
        // creating the rest cannot go through one.
        Err(HostPathError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            std::fs::create_dir_all(&parent).map_err(|e| copy_err(parent.display(), e))?;
            open_no_follow(&parent, Access::Path)
                .map_err(|e| copy_err(parent.display(), e.reason()))?
                .0
        }
        Err(e) => return Err(copy_err(parent.display(), e.reason())),
    };
    Ok((fd, false, out.to_os_string()))
}

/// Extracts a tar stream (plain, gzip or zstd) from `input` into the directory `dst` inside
/// the session (created, with its parents, if missing). Everything written belongs to the
/// sandbox user.
pub fn copy_in_tar(
    client: &SessionClient,
    input: impl io::Read + Send,
    dst: &Path,
) -> Result<CopyReport, SessionError> {
    copy_in_tar_as(client, input, dst, false)
}

/// [`copy_in_tar`], owned by root of the sandbox when `as_root` (E2B's `user="root"`).
pub fn copy_in_tar_as(
    client: &SessionClient,
    input: impl io::Read + Send,
    dst: &Path,
    as_root: bool,
) -> Result<CopyReport, SessionError> {
    let (root, uid, gid, base) = client.open_root()?;
    let owner = if as_root {
        (base, base)
    } else {
        (base + uid, base + gid)
    };
    let inside = inside_path(dst, &client.record.workdir)?;
    let dir = inside_dir(root.as_fd(), &inside, Some(owner)).map_err(|e| {
        let e = if e.raw_os_error() == Some(libc::ENOTDIR) {
            io::Error::other("not a directory (a tar stream is extracted into a directory)")
        } else {
            e
        };
        copy_err(
            format!("{} (in the sandbox)", inside.display()),
            write_hint(e),
        )
    })?;
    let done = crate::image::unpack::extract(input, dir.as_fd(), owner, Default::default())
        .map_err(|e| match e {
            crate::image::unpack::UnpackError::Io { path, what, source } => copy_err(
                format!("extract into {}", inside.display()),
                format!("{path}: {what}: {}", write_hint(source)),
            ),
            e => copy_err(
                format!("the tar stream on stdin (into {})", inside.display()),
                e,
            ),
        })?;
    Ok(CopyReport {
        written: done.entries as usize,
        skipped: done.skipped_special as usize,
    })
}

/// Writes `src` inside the session (a file, or a tree) as a tar stream to `out`; entry names
/// start with `src`'s own name, owners are the ids inside the sandbox.
///
/// Hard links are written as tar hard-link entries; the file data in the stream (holes
/// included: tar has no portable way to leave them out) is bounded by `max_bytes`.
pub fn copy_out_tar(
    client: &SessionClient,
    src: &Path,
    out: impl io::Write,
    max_bytes: Option<u64>,
) -> Result<CopyReport, SessionError> {
    let (root, _, _, base) = client.open_root()?;
    let inside = inside_path(src, &client.record.workdir)?;
    let (src_dir, name) = inside_entry(root.as_fd(), &inside)?;
    let name = name.as_os_str();
    let mut visitor = TarOut {
        tar: TarWriter::new(io::BufWriter::with_capacity(256 << 10, out)),
        base,
        written: 0,
        skipped: 0,
        links: HashMap::new(),
        max_bytes,
        bytes: 0,
    };
    walk(&mut visitor, src_dir.as_fd(), name, &Vec::new(), name)
        .and_then(|()| visitor.tar.finish().map(drop))
        .map_err(|e| {
            copy_err(
                format!("{} (in the sandbox) to stdout", inside.display()),
                e,
            )
        })?;
    Ok(CopyReport {
        written: visitor.written,
        skipped: visitor.skipped,
    })
}

/// Writes the host file or tree `src` as a tar stream to `out`, its top entry named
/// `name_out` (what `nsbox --host URL cp SRC ID:DST` sends). No link in `src`'s path is
/// followed, and links in the tree are written as links, as [`copy_in`] does.
pub fn host_tar(
    src: &Path,
    name_out: &OsStr,
    out: impl io::Write,
) -> Result<CopyReport, SessionError> {
    let (fd, st) =
        open_no_follow(src, Access::Read).map_err(|e| copy_err(src.display(), e.reason()))?;
    let mut visitor = TarOut {
        tar: TarWriter::new(io::BufWriter::with_capacity(256 << 10, out)),
        base: 0,
        written: 0,
        skipped: 0,
        links: HashMap::new(),
        max_bytes: None,
        bytes: 0,
    };
    walk_open(&mut visitor, fd, &st, &Vec::new(), name_out, 0)
        .and_then(|()| visitor.tar.finish().map(drop))
        .map_err(|e| copy_err(format!("read {}", src.display()), e))?;
    Ok(CopyReport {
        written: visitor.written,
        skipped: visitor.skipped,
    })
}

/// Writes a tar stream whose entries start with `name` (a server's tar of a path so named)
/// to the host path `dst`, as [`copy_out`] would: an existing directory at `dst` receives
/// `name`; otherwise the entry becomes `dst` (its parent made if missing). The stream goes
/// through the image unpacker, with its rules for hostile archives; what is written belongs
/// to the caller.
pub fn host_extract(
    input: impl io::Read + Send,
    name: &OsStr,
    dst: &Path,
) -> Result<CopyReport, SessionError> {
    let (host_fd, dst_is_dir, out_name) = host_destination(dst, name)?;
    let owner = (
        rustix::process::geteuid().as_raw(),
        rustix::process::getegid().as_raw(),
    );
    let open_dir = |at: BorrowedFd<'_>, n: &OsStr| {
        rfs::openat(
            at,
            n,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| copy_err(dst.display(), e))
    };
    let unpack = |into: BorrowedFd<'_>| {
        crate::image::unpack::extract(input, into, owner, Default::default())
            .map(|done| CopyReport {
                written: done.entries as usize,
                skipped: done.skipped_special as usize,
            })
            .map_err(|e| copy_err(format!("extract into {}", dst.display()), e))
    };
    if dst_is_dir {
        let dir = open_dir(host_fd.as_fd(), OsStr::new("."))?;
        return unpack(dir.as_fd());
    }
    // Elsewhere under another name: unpacked beside it first, then renamed into place, so
    // that a stream that fails half-way leaves nothing at `dst`.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let staging = format!(".nsbox-cp-{}-{nanos}", std::process::id());
    rfs::mkdirat(&host_fd, staging.as_str(), Mode::from_raw_mode(0o700))
        .map_err(|e| copy_err(dst.display(), e))?;
    let result = open_dir(host_fd.as_fd(), OsStr::new(&staging)).and_then(|dir| {
        let report = unpack(dir.as_fd())?;
        let st = rfs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW).map_err(|e| {
            copy_err(
                dst.display(),
                format!(
                    "the server's stream holds no {}: {e}",
                    name.to_string_lossy()
                ),
            )
        })?;
        if FileType::from_raw_mode(st.st_mode) != FileType::Directory
            && is_dir_at(host_fd.as_fd(), &out_name)
        {
            return Err(copy_err(dst.display(), "is a directory"));
        }
        rfs::renameat(&dir, name, &host_fd, out_name.as_os_str())
            .map_err(|e| copy_err(dst.display(), e))?;
        Ok(report)
    });
    let _ = remove_entry(host_fd.as_fd(), OsStr::new(&staging));
    result
}

/// Writes what a walk finds as tar entries; the place is the path prefix ("repo/src/").
struct TarOut<W: io::Write> {
    tar: TarWriter<W>,
    /// The sandbox's host uid base: owners are written as the ids inside.
    base: u32,
    written: usize,
    skipped: usize,
    /// Source (device, inode) of a file with several links → the path of its first entry.
    links: HashMap<(u64, u64), Vec<u8>>,
    max_bytes: Option<u64>,
    /// File data written so far.
    bytes: u64,
}

impl<W: io::Write> TarOut<W> {
    fn meta<'a>(&self, path: &'a [u8], kind: Kind, st: &rfs::Stat) -> EntryMeta<'a> {
        let inside = |id: u32| {
            u64::from(
                id.checked_sub(self.base)
                    .filter(|i| *i < crate::ids::IDS_IN_SANDBOX)
                    .unwrap_or(65534),
            )
        };
        EntryMeta {
            path,
            kind,
            link: b"",
            size: if kind == Kind::File {
                st.st_size as u64
            } else {
                0
            },
            mode: st.st_mode & 0o7777,
            uid: inside(st.st_uid),
            gid: inside(st.st_gid),
            mtime: st.st_mtime,
        }
    }
}

fn joined(prefix: &[u8], name: &OsStr) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    let mut path = prefix.to_vec();
    path.extend_from_slice(name.as_bytes());
    path
}

impl<W: io::Write> TreeVisitor for TarOut<W> {
    type Place = Vec<u8>;

    fn enter_dir(&mut self, at: &Vec<u8>, name: &OsStr, st: &rfs::Stat) -> io::Result<Vec<u8>> {
        let mut path = joined(at, name);
        path.push(b'/');
        let meta = self.meta(&path, Kind::Directory, st);
        self.tar.entry(&meta, None)?;
        self.written += 1;
        Ok(path)
    }

    fn leave_dir(&mut self, _: Vec<u8>, _: &rfs::Stat) -> io::Result<()> {
        Ok(())
    }

    fn file(&mut self, at: &Vec<u8>, name: &OsStr, src: OwnedFd, st: &rfs::Stat) -> io::Result<()> {
        let path = joined(at, name);
        let key = (st.st_dev, st.st_ino);
        if st.st_nlink > 1 {
            if let Some(first) = self.links.get(&key) {
                let meta = EntryMeta {
                    link: first,
                    ..self.meta(&path, Kind::HardLink, st)
                };
                self.tar.entry(&meta, None)?;
                self.written += 1;
                return Ok(());
            }
        }
        let meta = self.meta(&path, Kind::File, st);
        if let Some(max) = self.max_bytes {
            if self.bytes.saturating_add(meta.size) > max {
                return Err(over_budget(max));
            }
        }
        self.bytes += meta.size;
        let mut file = std::fs::File::from(src);
        self.tar.entry(&meta, Some(&mut file))?;
        if st.st_nlink > 1 && self.links.len() < 1 << 20 {
            self.links.insert(key, path);
        }
        self.written += 1;
        Ok(())
    }

    fn symlink(
        &mut self,
        at: &Vec<u8>,
        name: &OsStr,
        target: &std::ffi::CStr,
        st: &rfs::Stat,
    ) -> io::Result<()> {
        let path = joined(at, name);
        let meta = EntryMeta {
            link: target.to_bytes(),
            ..self.meta(&path, Kind::Symlink, st)
        };
        self.tar.entry(&meta, None)?;
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

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            parse_endpoint("abc123:/sandbox/x"),
            Endpoint::Session {
                session: "abc123".into(),
                path: "/sandbox/x".into()
            }
        );
        assert_eq!(
            parse_endpoint("./local/file"),
            Endpoint::Host("./local/file".into())
        );
        assert_eq!(
            parse_endpoint("/abs:weird"),
            Endpoint::Host("/abs:weird".into())
        );
        assert_eq!(parse_endpoint("c:"), Endpoint::Host("c:".into()));
    }

    /// A host tree goes out as tar and comes back under the names `cp` gives: into an
    /// existing directory under its own name, or as the named path.
    #[test]
    fn host_tar_and_extract_round_trip() {
        let src = tempfile::tempdir().unwrap();
        let tree = src.path().join("tree");
        std::fs::create_dir_all(tree.join("sub")).unwrap();
        std::fs::write(tree.join("sub/a.txt"), "alpha").unwrap();
        std::os::unix::fs::symlink("sub/a.txt", tree.join("link")).unwrap();
        let mut tar = Vec::new();
        let report = host_tar(&tree, OsStr::new("renamed"), &mut tar).unwrap();
        assert_eq!(report.written, 4);

        let dst = tempfile::tempdir().unwrap();
        host_extract(&tar[..], OsStr::new("renamed"), dst.path()).unwrap();
        let into = dst.path().join("renamed");
        assert_eq!(
            std::fs::read_to_string(into.join("sub/a.txt")).unwrap(),
            "alpha"
        );
        assert_eq!(
            std::fs::read_link(into.join("link")).unwrap(),
            Path::new("sub/a.txt")
        );

        let named = dst.path().join("new/place");
        host_extract(&tar[..], OsStr::new("renamed"), &named).unwrap();
        assert_eq!(
            std::fs::read_to_string(named.join("sub/a.txt")).unwrap(),
            "alpha"
        );
        let left: Vec<_> = std::fs::read_dir(dst.path().join("new")).unwrap().collect();
        assert_eq!(left.len(), 1, "no staging directory is left");

        // A stream that lacks the named entry changes nothing at the destination.
        let missing = dst.path().join("absent");
        assert!(host_extract(&tar[..], OsStr::new("other"), &missing).is_err());
        assert!(!missing.exists());
        assert!(host_tar(Path::new("/nonexistent/x"), OsStr::new("x"), Vec::new()).is_err());
    }

    #[test]
    fn inside_paths_are_absolute_and_never_climb() {
        let wd = Path::new("/sandbox");
        assert_eq!(
            inside_path(Path::new("repo"), wd).unwrap(),
            PathBuf::from("/sandbox/repo")
        );
        assert_eq!(
            inside_path(Path::new("/tmp/./x/"), wd).unwrap(),
            PathBuf::from("/tmp/x")
        );
        assert!(inside_path(Path::new("../etc"), wd).is_err());
        assert!(inside_path(Path::new("/sandbox/../../etc/passwd"), wd).is_err());
    }
}
