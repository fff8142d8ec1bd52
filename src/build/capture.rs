//! Turns a build sandbox's overlay upper directory into a layer blob (tar + gzip): what the
//! installs and the setup changed, with deletions as OCI whiteouts.
//!
//! The upper directory is in overlayfs's format: a deleted path is a 0/0 character device
//! (→ `.wh.NAME`), a directory that replaced a lower one carries `trusted.overlay.opaque=y`
//! (→ `.wh..wh..opq`), owners are the sandbox's host ids (→ shifted back to image ids).
//! The sandbox has ended when this runs (its pid namespace, and every process in it, is
//! gone), so nothing changes the tree under us; still, symlinks are never followed and files
//! are opened with `O_NOFOLLOW`. Entries are written in sorted order, so the same tree gives
//! the same diff_id.
//!
//! Left out: what nsbox itself writes into every sandbox (`/etc/hostname`, `/etc/hosts`,
//! `/etc/resolv.conf`, and the account lines it merges into `/etc/passwd` and `/etc/group`),
//! device nodes other than whiteouts, FIFOs and sockets, and xattrs other than `user.*`.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::ids::IDS_IN_SANDBOX;
use crate::image::digest::{Digest, Hasher};
use crate::image::tar::{EntryMeta, Kind, TarWriter};

/// Files nsbox writes into every sandbox's root; never part of a built layer.
pub(crate) const NSBOX_FILES: &[&str] = &["etc/hostname", "etc/hosts", "etc/resolv.conf"];
/// Account files nsbox merges its users into (kept only when the build changed more).
pub(crate) const ACCOUNT_FILES: &[&str] = &["etc/passwd", "etc/group"];
/// The accounts nsbox adds when an image lacks them.
const NSBOX_ACCOUNTS: &[&str] = &["root", "tty", "nobody", "nogroup", "sandbox"];

/// The layer made from an upper directory.
#[derive(Debug, Clone)]
pub struct Captured {
    /// The gzip blob's digest and size.
    pub digest: Digest,
    pub size: u64,
    /// The uncompressed tar's digest.
    pub diff_id: Digest,
    /// Entries written.
    pub entries: u64,
}

/// A writer that hashes and counts what passes through it.
struct HashingWriter<W> {
    inner: W,
    hasher: Hasher,
    count: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A directory that goes into the layer at `at` (a top-level name), replacing whatever the
/// layers below and the upper directory have there (an opaque directory): a session's
/// working directory, a mount of its own that is not part of the overlay.
#[derive(Debug, Clone, Copy)]
pub struct Extra<'a> {
    pub at: &'a str,
    pub dir: &'a Path,
}

/// Writes the layer of `upper` (host ids from `uid_base`) to `out` as tar+gzip. `lowers`
/// (top first) are the layers below, to tell nsbox's own account lines from the build's.
pub fn capture(
    upper: &Path,
    lowers: &[PathBuf],
    uid_base: u32,
    out: &Path,
) -> io::Result<Captured> {
    capture_with(upper, lowers, uid_base, &[], BUILD_LEVEL, out)
}

/// gzip level of a build's layer: built once, pulled and saved many times.
const BUILD_LEVEL: u32 = 6;
/// gzip level of a commit's layer: the session is frozen while it is written, and level 1 is
/// several times faster for little more size.
pub const COMMIT_LEVEL: u32 = 1;

/// [`capture`], plus `extras` put in whole (see [`Extra`]), compressed at gzip `level`.
pub fn capture_with(
    upper: &Path,
    lowers: &[PathBuf],
    uid_base: u32,
    extras: &[Extra<'_>],
    level: u32,
    out: &Path,
) -> io::Result<Captured> {
    let file = File::create(out)?;
    let compressed = HashingWriter {
        inner: io::BufWriter::with_capacity(256 << 10, file),
        hasher: Hasher::default(),
        count: 0,
    };
    let gz = flate2::write::GzEncoder::new(compressed, flate2::Compression::new(level));
    let tar_stream = HashingWriter {
        inner: gz,
        hasher: Hasher::default(),
        count: 0,
    };
    let mut walk = Walk {
        tar: TarWriter::new(tar_stream),
        entries: 0,
        links: HashMap::new(),
        uid_base,
        lowers,
    };
    let skip: Vec<&str> = extras.iter().map(|e| e.at).collect();
    walk.tree(upper, Path::new(""), &skip)?;
    for extra in extras {
        // The directory itself, then its opaque marker, then its contents.
        let meta = std::fs::symlink_metadata(extra.dir)?;
        let mut dir_name = extra.at.as_bytes().to_vec();
        dir_name.push(b'/');
        let base = walk.meta(&dir_name, &meta);
        walk.tar.entry(
            &EntryMeta {
                kind: Kind::Directory,
                ..base
            },
            None,
        )?;
        let mut opq = dir_name.clone();
        opq.extend_from_slice(b".wh..wh..opq");
        marker(&mut walk.tar, &opq, &base)?;
        walk.entries += 2;
        walk.tree(extra.dir, Path::new(extra.at), &[])?;
    }
    let Walk { tar, entries, .. } = walk;
    let tar_stream = tar.finish()?;
    let diff_id = tar_stream.hasher.finish();
    let mut compressed = tar_stream.inner.finish()?;
    compressed.flush()?;
    let size = compressed.count;
    let digest = compressed.hasher.finish();
    // No fsync: the file is a temporary, read back at once by the caller, which stores the
    // blob the way `load` does. (Syncing it made a 500 MB commit wait seconds for writeback,
    // with the session frozen.)
    compressed.inner.into_inner().map_err(|e| e.into_error())?;
    Ok(Captured {
        digest,
        size,
        diff_id,
        entries,
    })
}

/// The depth-first walk of one or more trees into one tar stream.
struct Walk<'a, W: Write> {
    tar: TarWriter<W>,
    entries: u64,
    /// First path written for each (dev, inode) with several links.
    links: HashMap<(u64, u64), Vec<u8>>,
    uid_base: u32,
    lowers: &'a [PathBuf],
}

impl<W: Write> Walk<'_, W> {
    /// Host ids shifted back to the image's (ids outside the sandbox's range become nobody).
    fn shift(&self, id: u32) -> u64 {
        match id.checked_sub(self.uid_base) {
            Some(inside) if inside < IDS_IN_SANDBOX => u64::from(inside),
            _ => 65534,
        }
    }

    fn meta<'p>(&self, path: &'p [u8], meta: &std::fs::Metadata) -> EntryMeta<'p> {
        EntryMeta {
            path,
            kind: Kind::File,
            link: b"",
            size: 0,
            mode: meta.mode() & 0o7777,
            uid: self.shift(meta.uid()),
            gid: self.shift(meta.gid()),
            mtime: meta.mtime(),
        }
    }

    /// Writes the tree at `root` under the layer path `prefix` (empty: the upper directory
    /// itself, whose whiteouts, opaque directories and nsbox files are translated or left
    /// out; top-level names in `skip` are left out too).
    fn tree(&mut self, root: &Path, prefix: &Path, skip: &[&str]) -> io::Result<()> {
        let is_upper = prefix.as_os_str().is_empty();
        // Depth-first in sorted order; `stack` holds directories still to list.
        let mut stack: Vec<PathBuf> = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            let mut names: Vec<_> = std::fs::read_dir(root.join(&rel))?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<Result<_, _>>()?;
            names.sort();
            let mut subdirs = Vec::new();
            for name in names {
                let path = rel.join(&name);
                let full = root.join(&path);
                let meta = std::fs::symlink_metadata(&full)?;
                let rel_text = prefix.join(&path).as_os_str().as_bytes().to_vec();
                let rel_str = String::from_utf8_lossy(&rel_text).into_owned();
                if rel.as_os_str().is_empty() && skip.iter().any(|s| name == **s) {
                    continue;
                }
                if is_upper && NSBOX_FILES.contains(&rel_str.as_str()) {
                    continue;
                }
                if is_upper
                    && ACCOUNT_FILES.contains(&rel_str.as_str())
                    && only_nsbox_accounts(&full, self.lowers, &rel_str)
                {
                    continue;
                }
                let ft = meta.file_type();
                let base = self.meta(&rel_text, &meta);
                if is_upper && ft.is_char_device() && meta.rdev() == 0 {
                    // A whiteout: the path was deleted.
                    let mut wh = rel_text[..rel_text.len() - name.as_bytes().len()].to_vec();
                    wh.extend_from_slice(b".wh.");
                    wh.extend_from_slice(name.as_bytes());
                    marker(&mut self.tar, &wh, &base)?;
                } else if ft.is_dir() {
                    let mut dir_name = rel_text.clone();
                    dir_name.push(b'/');
                    self.tar.entry_with_xattrs(
                        &EntryMeta {
                            path: &dir_name,
                            kind: Kind::Directory,
                            ..base
                        },
                        &user_xattrs(&full),
                        None,
                    )?;
                    if is_upper && is_opaque(&full) {
                        let mut opq = dir_name.clone();
                        opq.extend_from_slice(b".wh..wh..opq");
                        marker(&mut self.tar, &opq, &base)?;
                        self.entries += 1;
                    }
                    subdirs.push(path);
                } else if ft.is_symlink() {
                    let target = std::fs::read_link(&full)?;
                    self.tar.entry(
                        &EntryMeta {
                            kind: Kind::Symlink,
                            link: target.as_os_str().as_bytes(),
                            ..base
                        },
                        None,
                    )?;
                } else if ft.is_file() {
                    let key = (meta.dev(), meta.ino());
                    if meta.nlink() > 1 {
                        if let Some(first) = self.links.get(&key) {
                            self.tar.entry(
                                &EntryMeta {
                                    kind: Kind::HardLink,
                                    link: first,
                                    ..base
                                },
                                None,
                            )?;
                            self.entries += 1;
                            continue;
                        }
                        self.links.insert(key, rel_text.clone());
                    }
                    let mut f = open_nofollow(&full)?;
                    self.tar.entry_with_xattrs(
                        &EntryMeta {
                            size: meta.len(),
                            ..base
                        },
                        &user_xattrs(&full),
                        Some(&mut f),
                    )?;
                } else {
                    // Devices, FIFOs, sockets: the unpacker would skip them too.
                    continue;
                }
                self.entries += 1;
            }
            // Pushed in reverse so they are listed in sorted order.
            stack.extend(subdirs.into_iter().rev());
        }
        Ok(())
    }
}

/// A whiteout or opaque marker: an empty file owned by root.
fn marker<W: Write>(tar: &mut TarWriter<W>, path: &[u8], like: &EntryMeta<'_>) -> io::Result<()> {
    tar.entry(
        &EntryMeta {
            path,
            kind: Kind::File,
            size: 0,
            mode: 0o644,
            uid: 0,
            gid: 0,
            ..*like
        },
        Some(&mut io::empty()),
    )
}

fn open_nofollow(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

pub(crate) fn is_opaque(dir: &Path) -> bool {
    let mut value = [0u8; 4];
    rustix::fs::lgetxattr(dir, "trusted.overlay.opaque", &mut value)
        .is_ok_and(|n| value[..n] == *b"y")
}

/// The `user.*` extended attributes of `path` (others are not part of a layer).
pub(crate) fn user_xattrs(path: &Path) -> Vec<(String, Vec<u8>)> {
    let mut names = vec![0u8; 4096];
    let Ok(n) = rustix::fs::llistxattr(path, &mut names) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for name in names[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        if !name.starts_with(b"user.") {
            continue;
        }
        let name = String::from_utf8_lossy(name).into_owned();
        let mut value = vec![0u8; 64 << 10];
        if let Ok(len) = rustix::fs::lgetxattr(path, name.as_str(), &mut value) {
            value.truncate(len);
            out.push((name, value));
        }
    }
    out.sort();
    out
}

/// Whether an account file in the upper layer differs from the layers below only by the
/// lines nsbox merges in (then the build did not touch it).
pub(crate) fn only_nsbox_accounts(upper_file: &Path, lowers: &[PathBuf], rel: &str) -> bool {
    let Ok(mut f) = open_nofollow(upper_file) else {
        return false;
    };
    let mut text = String::new();
    if f.read_to_string(&mut text).is_err() {
        return false;
    }
    let lower = crate::image::read_image_file(lowers, rel).unwrap_or_default();
    let lower = String::from_utf8_lossy(&lower);
    let lower_lines: Vec<&str> = lower.lines().collect();
    let upper_lines: Vec<&str> = text.lines().collect();
    lower_lines.iter().all(|l| upper_lines.contains(l))
        && upper_lines
            .iter()
            .filter(|l| !lower_lines.contains(l))
            .all(|l| NSBOX_ACCOUNTS.contains(&l.split(':').next().unwrap_or("")))
}
