//! Opening a host path that nsbox reads as root on the user's behalf (the sources of `--copy`,
//! `--mount` and `nsbox cp HOST SESSION:`) without following a symbolic link anywhere in it.
//!
//! Such a path often lies in a directory an earlier sandbox could write (a `:rw` workspace, a
//! tree `nsbox cp` brought out): a workload that planted `repo -> /root/.ssh` there would
//! otherwise have the next job's `--copy ./work/repo` read root-only files for it, or its
//! `--mount` show a hidden host directory. A link's owner says nothing about who planted it
//! (`nsbox cp` writes what it copies out as root), so no link is trusted: the path is opened
//! component by component from `/` with `O_NOFOLLOW`, and a symlink anywhere in it (the last
//! component included) is refused with an error that names the link and its resolved path.
//! Writing that resolved path is the explicit way to accept a link: then the path holds no
//! link left to follow, and nsbox follows nothing the user did not type.
//!
//! The only change made to the typed path is lexical, once, up front: it is made absolute
//! (relative to the working directory, which the kernel reports link-free) and `.` and `..`
//! are removed. Removing `..` by text is exact here because no component of the path may be a
//! link, and a `..` after a real directory leads to its parent.
//!
//! The caller gets the opened descriptor and copies or binds from it, never by path again, so
//! a link swapped in after the check is never followed either.

use std::ffi::OsStr;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{self as rfs, FileType, Mode, OFlags};

#[derive(Debug, thiserror::Error)]
pub enum HostPathError {
    #[error("{path}: {link} is a symbolic link (to {target}); nsbox does not follow links in a host source, since whatever could write there (an earlier sandbox's workspace) may have planted it — hint: if you trust the link, write the path it leads to{resolved}")]
    Symlink {
        path: PathBuf,
        link: PathBuf,
        target: PathBuf,
        /// ": /real/path" when it could be worked out, for the hint.
        resolved: String,
    },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

impl HostPathError {
    /// The message without the path it is about (for callers whose error names it already).
    pub fn reason(&self) -> String {
        match self {
            HostPathError::Symlink {
                link,
                target,
                resolved,
                ..
            } => format!(
                "{} is a symbolic link (to {}); nsbox does not follow links in a host source, since whatever could write there (an earlier sandbox's workspace) may have planted it — hint: if you trust the link, write the path it leads to{resolved}",
                link.display(),
                target.display()
            ),
            HostPathError::Io { source, .. } => source.to_string(),
        }
    }
}

/// How the last component is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `O_PATH`: for a bind mount (`open_tree` on the descriptor) or a check.
    Path,
    /// `O_RDONLY | O_NONBLOCK | O_NOCTTY`: to copy from (a fifo swapped in never blocks).
    Read,
}

/// The typed path made absolute, without `.` and `..` (see the module docs for why this is
/// exact). Fails only when a relative path meets an unreadable working directory.
pub fn lexical_absolute(path: &Path) -> io::Result<PathBuf> {
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()?.join(path)
    };
    let mut out = PathBuf::from("/");
    for c in joined.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Ok(out)
}

fn errno(e: rustix::io::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

/// Opens `path` without following a symlink in any component, and returns the descriptor with
/// its status. A symlink anywhere is [`HostPathError::Symlink`].
pub fn open_no_follow(path: &Path, access: Access) -> Result<(OwnedFd, rfs::Stat), HostPathError> {
    let io_err = |source: io::Error| HostPathError::Io {
        path: path.to_path_buf(),
        source,
    };
    let abs = lexical_absolute(path).map_err(io_err)?;
    let names: Vec<&OsStr> = abs
        .components()
        .filter_map(|c| match c {
            Component::Normal(part) => Some(part),
            _ => None,
        })
        .collect();
    let mut dir = rfs::open(
        "/",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_err(errno(e)))?;
    let mut walked = PathBuf::from("/");
    let Some((last, parents)) = names.split_last() else {
        let st = rfs::fstat(&dir).map_err(|e| io_err(errno(e)))?;
        if access == Access::Read {
            dir = rfs::open("/", read_flags(), Mode::empty()).map_err(|e| io_err(errno(e)))?;
        }
        return Ok((dir, st));
    };
    for name in parents {
        walked.push(name);
        let next = rfs::openat(
            &dir,
            *name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_err(errno(e)))?;
        let st = rfs::fstat(&next).map_err(|e| io_err(errno(e)))?;
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => dir = next,
            FileType::Symlink => return Err(symlink_error(path, &abs, &walked, &next)),
            _ => return Err(io_err(io::Error::from_raw_os_error(libc::ENOTDIR))),
        }
    }
    walked.push(last);
    // The last component is first opened as a path (a symlink then opens as itself and is
    // refused by type); only a file or directory is then opened for reading, relative to the
    // same parent, and checked to be the same inode.
    let fd = rfs::openat(
        &dir,
        *last,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_err(errno(e)))?;
    let st = rfs::fstat(&fd).map_err(|e| io_err(errno(e)))?;
    if FileType::from_raw_mode(st.st_mode) == FileType::Symlink {
        return Err(symlink_error(path, &abs, &walked, &fd));
    }
    if access == Access::Path {
        return Ok((fd, st));
    }
    let read = rfs::openat(&dir, *last, read_flags(), Mode::empty()).map_err(|e| match e {
        rustix::io::Errno::LOOP => symlink_error(path, &abs, &walked, &fd),
        e => io_err(errno(e)),
    })?;
    let again = rfs::fstat(&read).map_err(|e| io_err(errno(e)))?;
    if (again.st_dev, again.st_ino) != (st.st_dev, st.st_ino) {
        return Err(io_err(io::Error::other(
            "it was replaced while being opened",
        )));
    }
    Ok((read, again))
}

/// Reads the whole regular file at `path`, opened as [`open_no_follow`] does (for small host
/// files nsbox reads on the user's behalf, such as `--env-file`).
pub fn read_no_follow(path: &Path) -> Result<Vec<u8>, HostPathError> {
    let (fd, st) = open_no_follow(path, Access::Read)?;
    let io_err = |source: io::Error| HostPathError::Io {
        path: path.to_path_buf(),
        source,
    };
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(io_err(io::Error::other("not a regular file")));
    }
    let mut text = Vec::new();
    io::Read::read_to_end(&mut std::fs::File::from(fd), &mut text).map_err(io_err)?;
    Ok(text)
}

fn read_flags() -> OFlags {
    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC
}

/// The refusal for the link `link` (opened as `fd`), found while opening `path`.
fn symlink_error(path: &Path, abs: &Path, link: &Path, fd: &OwnedFd) -> HostPathError {
    let target = rfs::readlinkat(fd, "", Vec::new())
        .map(|t| PathBuf::from(OsStr::from_bytes(t.to_bytes())))
        .unwrap_or_else(|_| PathBuf::from("?"));
    // For the hint only: where the link leads today. Never opened by nsbox.
    let resolved = std::fs::canonicalize(abs)
        .map(|p| format!(": {}", p.display()))
        .unwrap_or_default();
    HostPathError::Symlink {
        path: path.to_path_buf(),
        link: link.to_path_buf(),
        target,
        resolved,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_absolute_drops_dots_and_climbs_by_text() {
        assert_eq!(
            lexical_absolute(Path::new("/a/./b/../c/")).unwrap(),
            PathBuf::from("/a/c")
        );
        assert_eq!(
            lexical_absolute(Path::new("/../../x")).unwrap(),
            PathBuf::from("/x")
        );
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(lexical_absolute(Path::new("x")).unwrap(), cwd.join("x"));
    }

    #[test]
    fn links_anywhere_in_the_path_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::fs::write(real.join("file"), "data").unwrap();
        std::os::unix::fs::symlink(&real, tmp.path().join("parent-link")).unwrap();
        std::os::unix::fs::symlink(real.join("file"), tmp.path().join("last-link")).unwrap();

        let (fd, st) = open_no_follow(&real.join("file"), Access::Read).unwrap();
        assert_eq!(FileType::from_raw_mode(st.st_mode), FileType::RegularFile);
        let mut text = String::new();
        io::Read::read_to_string(&mut std::fs::File::from(fd), &mut text).unwrap();
        assert_eq!(text, "data");
        assert!(open_no_follow(&real, Access::Path).is_ok());

        for (path, link) in [
            (tmp.path().join("parent-link/file"), "parent-link"),
            (tmp.path().join("last-link"), "last-link"),
        ] {
            for access in [Access::Path, Access::Read] {
                let err = open_no_follow(&path, access).unwrap_err();
                let HostPathError::Symlink {
                    link: found,
                    resolved,
                    ..
                } = &err
                else {
                    panic!("{err}");
                };
                assert_eq!(found, &tmp.path().join(link), "{err}");
                assert!(resolved.contains("real"), "{err}");
            }
        }
        let missing = open_no_follow(&tmp.path().join("nope"), Access::Path).unwrap_err();
        assert!(matches!(missing, HostPathError::Io { .. }), "{missing}");
    }
}
