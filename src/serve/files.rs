//! Files in a sandbox, for the API: every path is made absolute and refused if it climbs
//! (`..`) by [`inside_path`], exactly as `nsbox cp` does, then resolved from the sandbox's
//! root descriptor with openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS): a symlink the
//! workload planted can only lead somewhere else inside the sandbox. Writes and new
//! directories go through `nsbox cp`'s tar path ([`copy_in_tar`]), so what is written belongs
//! to the sandbox user. Reads open with O_NONBLOCK and refuse anything but regular files (a
//! FIFO or a device planted at the path cannot hang or flood the server). All blocking: run
//! on the blocking pool.

use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, ResolveFlags};

use crate::session::client::SessionClient;
use crate::session::copy::{copy_in_tar, copy_in_tar_as, copy_out_tar, inside_path};
use crate::session::SessionError;

/// Why a file operation failed; `status` is the HTTP status it maps to.
#[derive(Debug)]
pub struct FileError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

fn bad(code: &'static str, message: impl Into<String>) -> FileError {
    FileError {
        status: 400,
        code,
        message: message.into(),
    }
}

fn from_errno(path: &Path, e: rustix::io::Errno) -> FileError {
    let (status, code) = match e {
        rustix::io::Errno::NOENT => (404, "not_found"),
        rustix::io::Errno::NOTDIR => (400, "not_a_directory"),
        rustix::io::Errno::ISDIR => (400, "is_a_directory"),
        rustix::io::Errno::LOOP => (400, "symlink"),
        rustix::io::Errno::XDEV => (400, "escapes_root"),
        rustix::io::Errno::EXIST => (409, "exists"),
        rustix::io::Errno::NOTEMPTY => (409, "not_empty"),
        rustix::io::Errno::ACCESS | rustix::io::Errno::PERM | rustix::io::Errno::ROFS => {
            (403, "denied")
        }
        _ => (500, "io"),
    };
    FileError {
        status,
        code,
        message: format!("{} (in the sandbox): {e}", path.display()),
    }
}

fn session_err(e: SessionError) -> FileError {
    match e {
        SessionError::Copy(m) => bad("bad_path", m),
        SessionError::NotRunning { .. } => FileError {
            status: 409,
            code: "not_running",
            message: e.to_string(),
        },
        other => FileError {
            status: 500,
            code: "io",
            message: other.to_string(),
        },
    }
}

const RESOLVE: ResolveFlags = ResolveFlags::IN_ROOT.union(ResolveFlags::NO_MAGICLINKS);

fn open_in(root: BorrowedFd<'_>, path: &Path, flags: OFlags) -> Result<OwnedFd, FileError> {
    let rel = path.strip_prefix("/").unwrap_or(path);
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    rfs::openat2(
        root,
        rel,
        flags | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
        RESOLVE,
    )
    .map_err(|e| from_errno(path, e))
}

/// A resolved path: the root, the absolute path inside, the sandbox user on the host.
struct Target {
    root: OwnedFd,
    inside: PathBuf,
    uid_base: u32,
}

fn target(client: &SessionClient, path: &str) -> Result<Target, FileError> {
    if path.is_empty() || path.contains('\0') {
        return Err(bad("bad_path", "the path is empty or has a NUL byte"));
    }
    let inside = inside_path(Path::new(path), &client.record.workdir).map_err(session_err)?;
    let (root, _uid, _gid, uid_base) = client.open_root().map_err(session_err)?;
    Ok(Target {
        root,
        inside,
        uid_base,
    })
}

fn kind(mode: u32) -> &'static str {
    match FileType::from_raw_mode(mode) {
        FileType::RegularFile => "file",
        FileType::Directory => "directory",
        FileType::Symlink => "symlink",
        FileType::Fifo => "fifo",
        FileType::Socket => "socket",
        FileType::CharacterDevice | FileType::BlockDevice => "device",
        FileType::Unknown => "unknown",
    }
}

fn stat_json(name: &str, st: &rfs::Stat, uid_base: u32) -> serde_json::Value {
    serde_json::json!({
        "name": name,
        "type": kind(st.st_mode),
        "size": st.st_size,
        "mode": format!("{:04o}", st.st_mode & 0o7777),
        "mtime": st.st_mtime,
        // The ids inside the sandbox.
        "uid": st.st_uid.saturating_sub(uid_base),
        "gid": st.st_gid.saturating_sub(uid_base),
    })
}

/// Reads a regular file, at most `cap` bytes (more: 413).
pub fn read(client: &SessionClient, path: &str, cap: usize) -> Result<Vec<u8>, FileError> {
    let t = target(client, path)?;
    let fd = open_in(t.root.as_fd(), &t.inside, OFlags::RDONLY | OFlags::NONBLOCK)?;
    let st = rfs::fstat(&fd).map_err(|e| from_errno(&t.inside, e))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(bad(
            "not_a_file",
            format!(
                "{} is a {}, not a regular file — hint: list directories with /files/list",
                t.inside.display(),
                kind(st.st_mode)
            ),
        ));
    }
    let mut data = Vec::new();
    std::fs::File::from(fd)
        .take(cap as u64 + 1)
        .read_to_end(&mut data)
        .map_err(|e| FileError {
            status: 500,
            code: "io",
            message: format!("read {}: {e}", t.inside.display()),
        })?;
    if data.len() > cap {
        return Err(FileError {
            status: 413,
            code: "too_large",
            message: format!("{} is larger than {cap} bytes", t.inside.display()),
        });
    }
    Ok(data)
}

/// Metadata of a path (a symlink itself, not what it points at).
pub fn stat(client: &SessionClient, path: &str) -> Result<serde_json::Value, FileError> {
    let t = target(client, path)?;
    let fd = open_in(t.root.as_fd(), &t.inside, OFlags::PATH)?;
    let st = rfs::fstat(&fd).map_err(|e| from_errno(&t.inside, e))?;
    let name = t
        .inside
        .file_name()
        .map_or("/".into(), |n| n.to_string_lossy());
    let mut v = stat_json(&name, &st, t.uid_base);
    v["path"] = t.inside.display().to_string().into();
    Ok(v)
}

/// The entries of a directory (at most `max` of them).
pub fn list(
    client: &SessionClient,
    path: &str,
    max: usize,
) -> Result<serde_json::Value, FileError> {
    let t = target(client, path)?;
    let dir = open_in(
        t.root.as_fd(),
        &t.inside,
        OFlags::RDONLY | OFlags::DIRECTORY,
    )?;
    let mut entries = Vec::new();
    let mut truncated = false;
    let reader = rfs::Dir::read_from(&dir).map_err(|e| from_errno(&t.inside, e))?;
    for entry in reader {
        let entry = entry.map_err(|e| from_errno(&t.inside, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "." || name == ".." {
            continue;
        }
        if entries.len() >= max {
            truncated = true;
            break;
        }
        if let Ok(st) = rfs::statat(&dir, entry.file_name(), AtFlags::SYMLINK_NOFOLLOW) {
            entries.push(stat_json(&name, &st, t.uid_base));
        }
    }
    entries.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    Ok(serde_json::json!({
        "path": t.inside.display().to_string(),
        "entries": entries,
        "truncated": truncated,
    }))
}

fn parent_and_name(inside: &Path) -> Result<(&Path, &str), FileError> {
    match (inside.parent(), inside.file_name().and_then(|n| n.to_str())) {
        (Some(parent), Some(name)) => Ok((parent, name)),
        _ => Err(bad(
            "bad_path",
            format!("{}: not a file's path (a name is needed)", inside.display()),
        )),
    }
}

/// Writes a file (replacing one that is there); missing parent directories are made. It
/// belongs to the sandbox user, or to root with `as_root`.
pub fn write(
    client: &SessionClient,
    path: &str,
    data: &[u8],
    as_root: bool,
) -> Result<(), FileError> {
    let inside = inside_path(Path::new(path), &client.record.workdir).map_err(session_err)?;
    let (parent, name) = parent_and_name(&inside)?;
    let mut tar = crate::image::tar::TarWriter::new(Vec::with_capacity(data.len() + 2048));
    let io = |e: std::io::Error| FileError {
        status: 500,
        code: "io",
        message: e.to_string(),
    };
    tar.file(name, data.len() as u64, &mut &data[..])
        .map_err(io)?;
    let tar = tar.finish().map_err(io)?;
    copy_in_tar_as(client, &tar[..], parent, as_root).map_err(session_err)?;
    Ok(())
}

/// Makes a directory and its missing parents (owned by the sandbox user, or by root with
/// `as_root`).
pub fn mkdir(client: &SessionClient, path: &str, as_root: bool) -> Result<(), FileError> {
    let inside = inside_path(Path::new(path), &client.record.workdir).map_err(session_err)?;
    let tar = crate::image::tar::TarWriter::new(Vec::new())
        .finish()
        .map_err(|e| FileError {
            status: 500,
            code: "io",
            message: e.to_string(),
        })?;
    copy_in_tar_as(client, &tar[..], &inside, as_root).map_err(session_err)?;
    Ok(())
}

/// Removes a file, a symlink (not what it points at) or an empty directory.
pub fn remove(client: &SessionClient, path: &str) -> Result<(), FileError> {
    let t = target(client, path)?;
    let (parent, name) = parent_and_name(&t.inside)?;
    let dir = open_in(t.root.as_fd(), parent, OFlags::RDONLY | OFlags::DIRECTORY)?;
    match rfs::unlinkat(&dir, name, AtFlags::empty()) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::ISDIR) => {
            rfs::unlinkat(&dir, name, AtFlags::REMOVEDIR).map_err(|e| from_errno(&t.inside, e))
        }
        Err(e) => Err(from_errno(&t.inside, e)),
    }
}

/// A directory of the sandbox, opened inside its root (for watching it from outside), and its
/// path inside.
pub fn open_dir(client: &SessionClient, path: &str) -> Result<(OwnedFd, PathBuf), FileError> {
    let t = target(client, path)?;
    let fd = open_in(
        t.root.as_fd(),
        &t.inside,
        OFlags::RDONLY | OFlags::DIRECTORY,
    )?;
    Ok((fd, t.inside))
}

/// Renames `from` to `to` inside the sandbox (both resolved inside its root; the parent of
/// `to` must exist; a file at `to` is replaced, as rename(2) does). Used by the E2B API.
pub fn rename(client: &SessionClient, from: &str, to: &str) -> Result<(), FileError> {
    let src = target(client, from)?;
    if to.is_empty() || to.contains('\0') {
        return Err(bad("bad_path", "the path is empty or has a NUL byte"));
    }
    let dst = inside_path(Path::new(to), &client.record.workdir).map_err(session_err)?;
    let (src_parent, src_name) = parent_and_name(&src.inside)?;
    let (dst_parent, dst_name) = parent_and_name(&dst)?;
    let flags = OFlags::RDONLY | OFlags::DIRECTORY;
    let src_dir = open_in(src.root.as_fd(), src_parent, flags)?;
    let dst_dir = open_in(src.root.as_fd(), dst_parent, flags)?;
    // Single names under directories opened inside the root: nothing on the way is followed.
    rfs::renameat(&src_dir, src_name, &dst_dir, dst_name).map_err(|e| from_errno(&src.inside, e))
}

/// Extracts a tar stream (plain, gzip or zstd) into the directory `path` (made if missing),
/// through `nsbox cp -`'s extractor and its rules for hostile archives.
pub fn write_tar(client: &SessionClient, path: &str, data: &[u8]) -> Result<usize, FileError> {
    let inside = inside_path(Path::new(path), &client.record.workdir).map_err(session_err)?;
    copy_in_tar(client, data, &inside)
        .map(|report| report.written)
        .map_err(session_err)
}

/// A writer that refuses more than `cap` bytes.
struct Capped {
    out: Vec<u8>,
    cap: usize,
}

impl std::io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.out.len() + buf.len() > self.cap {
            return Err(std::io::Error::other("too large"));
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `path` (a file or a tree) as a tar stream, as `nsbox cp ID:PATH -` writes it; at most
/// `cap` bytes (more: 413).
pub fn read_tar(client: &SessionClient, path: &str, cap: usize) -> Result<Vec<u8>, FileError> {
    let mut out = Capped {
        out: Vec::new(),
        cap,
    };
    match copy_out_tar(client, Path::new(path), &mut out, Some(cap as u64)) {
        Ok(_) => Ok(out.out),
        Err(_) if out.out.len() + 512 * 1024 > cap => Err(FileError {
            status: 413,
            code: "too_large",
            message: format!("{path}: the tar stream is larger than {cap} bytes"),
        }),
        Err(e) => Err(session_err(e)),
    }
}
