//! Unpacking one layer (a tar stream, gzip/zstd/uncompressed) into an empty directory that
//! becomes an overlay lower layer.
//!
//! Every entry is written through file descriptors, never through a path the kernel would
//! resolve freely: parents are opened with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS) below
//! the layer directory, leaves are created with O_CREAT|O_EXCL|O_NOFOLLOW (or mkdirat,
//! symlinkat, linkat, mknodat on the parent fd), and owners, modes, times and xattrs are set
//! on the entry's own descriptor or with AT_SYMLINK_NOFOLLOW. So no entry name, symlink or
//! hardlink can make a write land outside the layer, and a symlinked parent refuses the layer.
//!
//! The rules (documented in docs/images.md, tested by the hostile-layer corpus):
//! - names: relative; `..`, absolute names, NUL and empty names are refused;
//! - owners: image uid/gid N becomes host id `base + N` (the sandbox's mapping), so inside the
//!   sandbox files have their image owners; ids beyond the sandbox's range become nobody;
//! - modes (setuid/setgid included: inert, the root is mounted nosuid and the sandbox runs
//!   with no_new_privs and no capabilities), mtimes, hardlinks, symlinks are kept;
//! - xattrs: `user.*` kept; `security.*` (file capabilities, SELinux labels) and `system.*`
//!   (ACLs) dropped; `trusted.*` refuses the layer (`trusted.overlay.*` would change what
//!   overlayfs shows);
//! - device nodes and FIFOs are skipped (the root is mounted nodev; programs create FIFOs at
//!   run time);
//! - whiteouts: `.wh.NAME` becomes an overlay whiteout (a 0/0 character device made by nsbox),
//!   `.wh..wh..opq` sets `trusted.overlay.opaque=y` on its directory; other `.wh..wh.` names
//!   (aufs bookkeeping) are skipped;
//! - bounds: at most `max_bytes` of uncompressed stream and `max_entries` entries.
//!
//! [`extract`] applies the same writer to `nsbox cp - SESSION:DIR` (a tar stream from the user
//! into a living sandbox) with two differences: every entry belongs to the sandbox user, with
//! setuid/setgid bits dropped, and `.wh.` names are ordinary files (whiteouts mean something
//! only to overlayfs layers).

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::mpsc;

use rustix::fs::{
    self as rfs, AtFlags, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps, XattrFlags,
};

use super::digest::{Digest, Hasher};
use super::tar::{Header, Kind, TarError, TarReader};
use crate::ids::IDS_IN_SANDBOX;

/// Bounds on one layer (a decompression bomb stops here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Uncompressed bytes of the layer's tar stream.
    pub max_bytes: u64,
    /// Entries in the layer.
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 64 << 30,
            max_entries: 4_000_000,
        }
    }
}

/// How a layer is compressed, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn detect(magic: &[u8]) -> Compression {
        if magic.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// What unpacking a layer found.
#[derive(Debug, Clone)]
pub struct Unpacked {
    /// sha256 of the uncompressed stream (the layer's diff_id).
    pub diff_id: Digest,
    pub compression: Compression,
    /// Bytes of the uncompressed stream.
    pub tar_bytes: u64,
    pub entries: u64,
    /// Bytes of file data written.
    pub file_bytes: u64,
    /// Device nodes and FIFOs skipped.
    pub skipped_special: u64,
    /// Extended attributes dropped (security.*, system.*, unsupported).
    pub dropped_xattrs: u64,
}

/// Why a layer was refused.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("{0}")]
    Tar(#[from] TarError),
    #[error("entry '{path}': {reason}")]
    Refused { path: String, reason: String },
    #[error("entry '{path}': {what}: {source}")]
    Io {
        path: String,
        what: &'static str,
        source: io::Error,
    },
    #[error("the layer is larger than {limit} bytes uncompressed (a decompression bomb?) — hint: raise the bound with --max-layer-size if the image is genuine")]
    TooLarge { limit: u64 },
    #[error("the layer has more than {limit} entries — hint: raise the bound with --max-layer-entries if the image is genuine")]
    TooManyEntries { limit: u64 },
    #[error("decompressing: {0} (truncated or corrupt compressed data)")]
    Decompress(io::Error),
}

#[derive(Debug)]
struct BoundExceeded;
impl std::fmt::Display for BoundExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("uncompressed size bound exceeded")
    }
}
impl std::error::Error for BoundExceeded {}

/// The uncompressed stream: hashed (diff_id), counted and bounded.
struct Uncompressed<R> {
    inner: R,
    hasher: Hasher,
    count: u64,
    limit: u64,
}

impl<R: Read> Read for Uncompressed<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let room = self.limit.saturating_sub(self.count);
        // Read one byte past the bound to tell "exactly at the bound" from "beyond it".
        let want = buf
            .len()
            .min(usize::try_from(room + 1).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.count += n as u64;
        if self.count > self.limit {
            return Err(io::Error::other(BoundExceeded));
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Image ids → host ids.
#[derive(Debug, Clone, Copy)]
pub struct IdShift {
    pub base: u32,
}

/// Who owns what is written.
#[derive(Debug, Clone, Copy)]
enum Owners {
    /// A layer: the archive's ids, shifted into the sandbox's range.
    Image(IdShift),
    /// `nsbox cp`: everything belongs to this host uid/gid (the sandbox user).
    Fixed { uid: u32, gid: u32 },
}

impl Owners {
    fn uid(self, id: u64) -> u32 {
        match self {
            Owners::Image(shift) => shift.host(id),
            Owners::Fixed { uid, .. } => uid,
        }
    }

    fn gid(self, id: u64) -> u32 {
        match self {
            Owners::Image(shift) => shift.host(id),
            Owners::Fixed { gid, .. } => gid,
        }
    }

    /// Mode bits kept: all of them in a layer (setuid is inert there), none of setuid/setgid
    /// for a copy into a living sandbox.
    fn mode(self, mode: u32) -> u32 {
        match self {
            Owners::Image(_) => mode & 0o7777,
            Owners::Fixed { .. } => mode & 0o1777,
        }
    }

    /// `.wh.` names are overlay whiteouts only in layers.
    fn whiteouts(self) -> bool {
        matches!(self, Owners::Image(_))
    }
}

impl IdShift {
    fn host(self, id: u64) -> u32 {
        // Ids the sandbox cannot map show as nobody (65534) inside.
        let inside = if id < u64::from(IDS_IN_SANDBOX) {
            id as u32
        } else {
            65534
        };
        self.base + inside
    }
}

fn errno(e: rustix::io::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

/// Size of the chunks the decompressing thread hands to the writing thread.
const CHUNK: usize = 1 << 20;
/// Chunks in flight between the two threads.
const PIPELINE_DEPTH: usize = 4;

/// Unpacks the layer read from `input` (any compression) into the empty directory `dir`.
///
/// Two threads: one decompresses and hashes (diff_id) the stream, the other parses the tar
/// and writes files, so a single layer uses two cores as `tar -xz` does with its gzip child.
pub fn unpack(
    input: impl Read + Send,
    dir: BorrowedFd<'_>,
    ids: IdShift,
    limits: Limits,
) -> Result<Unpacked, UnpackError> {
    write_archive(input, dir, Owners::Image(ids), limits)
}

/// Extracts a tar stream (any compression) into the existing directory `dir` of a living
/// sandbox, as `uid`/`gid`: existing files are replaced, directories merged, a symlinked
/// parent refuses the entry (see the module's rules).
pub fn extract(
    input: impl Read + Send,
    dir: BorrowedFd<'_>,
    (uid, gid): (u32, u32),
    limits: Limits,
) -> Result<Unpacked, UnpackError> {
    write_archive(input, dir, Owners::Fixed { uid, gid }, limits)
}

fn write_archive(
    input: impl Read + Send,
    dir: BorrowedFd<'_>,
    owners: Owners,
    limits: Limits,
) -> Result<Unpacked, UnpackError> {
    let mut buffered = BufReader::with_capacity(256 << 10, input);
    let magic = buffered.fill_buf().map_err(UnpackError::Decompress)?;
    let compression = Compression::detect(magic);
    let classify = |e: TarError| match e {
        TarError::Io(io)
            if io
                .get_ref()
                .is_some_and(|inner| inner.is::<BoundExceeded>()) =>
        {
            UnpackError::TooLarge {
                limit: limits.max_bytes,
            }
        }
        TarError::Io(io) => UnpackError::Decompress(io),
        other => UnpackError::Tar(other),
    };
    std::thread::scope(|scope| {
        let (full_tx, full_rx) = mpsc::sync_channel::<io::Result<Vec<u8>>>(PIPELINE_DEPTH);
        let (empty_tx, empty_rx) = mpsc::channel::<Vec<u8>>();
        let producer =
            scope.spawn(move || decompress(buffered, compression, limits, full_tx, empty_rx));
        let mut writer = LayerWriter::new(dir, owners)?;
        let mut tar = TarReader::new(ChunkReader {
            chunks: full_rx,
            recycle: empty_tx,
            current: Vec::new(),
            pos: 0,
        });
        let mut entries = 0u64;
        let mut buf = vec![0u8; 256 << 10];
        while let Some(header) = tar.next_entry().map_err(classify)? {
            entries += 1;
            if entries > limits.max_entries {
                return Err(UnpackError::TooManyEntries {
                    limit: limits.max_entries,
                });
            }
            writer.entry(&header, &mut tar, &mut buf, &classify)?;
        }
        // Whatever follows the end-of-archive blocks is part of the diff_id, and reading to
        // the end makes the decompressor check its trailer (a truncated gzip fails here).
        let mut rest = tar.into_inner();
        loop {
            match rest.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(classify(TarError::Io(e))),
            }
        }
        drop(rest);
        let (hasher, count) = producer.join().map_err(|_| {
            UnpackError::Decompress(io::Error::other("the decompressing thread panicked"))
        })?;
        writer.finish()?;
        Ok(Unpacked {
            diff_id: hasher.finish(),
            compression,
            tar_bytes: count,
            entries,
            file_bytes: writer.file_bytes,
            skipped_special: writer.skipped_special,
            dropped_xattrs: writer.dropped_xattrs,
        })
    })
}

/// The decompressing thread: reads the whole stream in chunks, hashing and bounding it, and
/// sends the chunks on (an error ends the stream). Returns the hash and the byte count.
fn decompress<R: BufRead>(
    input: R,
    compression: Compression,
    limits: Limits,
    chunks: mpsc::SyncSender<io::Result<Vec<u8>>>,
    recycled: mpsc::Receiver<Vec<u8>>,
) -> (Hasher, u64) {
    let decoder: io::Result<Box<dyn Read>> = match compression {
        Compression::None => Ok(Box::new(input)),
        Compression::Gzip => Ok(Box::new(flate2::bufread::MultiGzDecoder::new(input))),
        Compression::Zstd => {
            zstd::stream::read::Decoder::with_buffer(input).map(|d| Box::new(d) as Box<dyn Read>)
        }
    };
    let mut stream = match decoder {
        Ok(inner) => Uncompressed {
            inner,
            hasher: Hasher::default(),
            count: 0,
            limit: limits.max_bytes,
        },
        Err(e) => {
            let _ = chunks.send(Err(e));
            return (Hasher::default(), 0);
        }
    };
    loop {
        let mut chunk = recycled.try_recv().unwrap_or_default();
        chunk.resize(CHUNK, 0);
        let mut filled = 0;
        let result = loop {
            match stream.read(&mut chunk[filled..]) {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    filled += n;
                    if filled >= CHUNK / 2 {
                        break Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        chunk.truncate(filled);
        if filled > 0 && chunks.send(Ok(chunk)).is_err() {
            break; // the writer stopped (it failed): nothing more to do
        }
        match result {
            Ok(()) if filled == 0 => break,
            Ok(()) => {}
            Err(e) => {
                let _ = chunks.send(Err(e));
                break;
            }
        }
    }
    (stream.hasher, stream.count)
}

/// The writing thread's view of the stream: the chunks, in order; buffers go back for reuse.
struct ChunkReader {
    chunks: mpsc::Receiver<io::Result<Vec<u8>>>,
    recycle: mpsc::Sender<Vec<u8>>,
    current: Vec<u8>,
    pos: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.current.len() {
            let used = std::mem::take(&mut self.current);
            if used.capacity() > 0 {
                let _ = self.recycle.send(used);
            }
            self.pos = 0;
            match self.chunks.recv() {
                Ok(Ok(chunk)) => self.current = chunk,
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0), // the stream ended
            }
        }
        let n = out.len().min(self.current.len() - self.pos);
        out[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Splits an entry name into components: relative, no `..`, no NUL; `.` and empty
/// components (from `./` prefixes and doubled slashes) are dropped.
fn components(name: &[u8]) -> Result<Vec<&[u8]>, String> {
    if name.first() == Some(&b'/') {
        return Err(
            "an absolute name (entries must be relative to where the archive is unpacked)".into(),
        );
    }
    if name.contains(&0) {
        return Err("a NUL byte in the name".into());
    }
    let mut out = Vec::new();
    for part in name.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                return Err(
                    "'..' in the name (entries must stay inside where the archive is unpacked)"
                        .into(),
                )
            }
            _ => out.push(part),
        }
    }
    Ok(out)
}

fn shown(name: &[u8]) -> String {
    super::digest::printable(&String::from_utf8_lossy(name))
}

/// A small cache of open parent directories (tar entries come grouped by directory).
const DIR_CACHE: usize = 32;

struct LayerWriter<'a> {
    root: BorrowedFd<'a>,
    owners: Owners,
    cache: Vec<(Vec<u8>, OwnedFd)>,
    /// Directories whose mtime is set at the end (creating children changes it).
    dir_times: Vec<(Vec<u8>, (i64, u32))>,
    file_bytes: u64,
    skipped_special: u64,
    dropped_xattrs: u64,
}

impl<'a> LayerWriter<'a> {
    fn new(root: BorrowedFd<'a>, owners: Owners) -> Result<Self, UnpackError> {
        Ok(LayerWriter {
            root,
            owners,
            cache: Vec::new(),
            dir_times: Vec::new(),
            file_bytes: 0,
            skipped_special: 0,
            dropped_xattrs: 0,
        })
    }

    fn refuse(path: &[u8], reason: impl Into<String>) -> UnpackError {
        UnpackError::Refused {
            path: shown(path),
            reason: reason.into(),
        }
    }

    fn io(path: &[u8], what: &'static str) -> impl FnOnce(rustix::io::Errno) -> UnpackError {
        let path = shown(path);
        move |e| UnpackError::Io {
            path,
            what,
            source: errno(e),
        }
    }

    /// Opens directory `parts` below the layer root, creating missing directories (owned by
    /// the image's root, 0755). A symlink or a non-directory on the way refuses the layer.
    fn dir(&mut self, parts: &[&[u8]], name: &[u8]) -> Result<BorrowedFd<'_>, UnpackError> {
        let key = parts.join(&b'/');
        if let Some(i) = self.cache.iter().position(|(k, _)| *k == key) {
            return Ok(self.cache[i].1.as_fd());
        }
        let fd = if parts.is_empty() {
            rfs::openat(
                self.root,
                ".",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(Self::io(name, "open the layer directory"))?
        } else {
            match open_beneath(self.root, &key) {
                Ok(fd) => fd,
                Err(rustix::io::Errno::NOENT) => self.create_dirs(parts, name)?,
                Err(e) => return Err(Self::parent_error(name, e)),
            }
        };
        if self.cache.len() >= DIR_CACHE {
            self.cache.remove(0);
        }
        self.cache.push((key, fd));
        let last = self.cache.len() - 1;
        Ok(self.cache[last].1.as_fd())
    }

    fn parent_error(name: &[u8], e: rustix::io::Errno) -> UnpackError {
        match e {
            rustix::io::Errno::LOOP | rustix::io::Errno::XDEV | rustix::io::Errno::NOTDIR => {
                Self::refuse(
                    name,
                    "a parent is a symlink or not a directory (writes through symlinks are refused)",
                )
            }
            other => Self::io(name, "open its parent directory")(other),
        }
    }

    fn create_dirs(&mut self, parts: &[&[u8]], name: &[u8]) -> Result<OwnedFd, UnpackError> {
        let mut cur = rfs::openat(
            self.root,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(Self::io(name, "open the layer directory"))?;
        for part in parts {
            let part = OsStr::from_bytes(part);
            match rfs::mkdirat(&cur, part, Mode::from_raw_mode(0o755)) {
                Ok(()) => {
                    rfs::chownat(
                        &cur,
                        part,
                        Some(rfs::Uid::from_raw(self.owners.uid(0))),
                        Some(rfs::Gid::from_raw(self.owners.gid(0))),
                        AtFlags::SYMLINK_NOFOLLOW,
                    )
                    .map_err(Self::io(name, "create a parent directory"))?;
                }
                Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(Self::io(name, "create a parent directory")(e)),
            }
            cur = rfs::openat(
                &cur,
                part,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| Self::parent_error(name, e))?;
        }
        Ok(cur)
    }

    fn entry<R: Read>(
        &mut self,
        h: &Header,
        tar: &mut TarReader<R>,
        buf: &mut [u8],
        classify: &dyn Fn(TarError) -> UnpackError,
    ) -> Result<(), UnpackError> {
        let parts = components(&h.path).map_err(|r| Self::refuse(&h.path, r))?;
        let Some((leaf, parents)) = parts.split_last() else {
            // The layer's root ("./"): only its metadata applies.
            if h.kind != Kind::Directory {
                return Err(Self::refuse(&h.path, "the layer's root is not a directory"));
            }
            let root = self.dir(&[], &h.path)?;
            let fd = rfs::openat(
                root,
                ".",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(Self::io(&h.path, "open the layer directory"))?;
            self.metadata(fd.as_fd(), h)?;
            self.dir_times.push((Vec::new(), h.mtime));
            return Ok(());
        };
        let leaf: &[u8] = leaf;
        if let (true, Some(hidden)) = (self.owners.whiteouts(), leaf.strip_prefix(b".wh.")) {
            return self.whiteout(&h.path, parents, hidden);
        }
        let owners = self.owners;
        match h.kind {
            Kind::CharDevice | Kind::BlockDevice | Kind::Fifo => {
                self.skipped_special += 1;
                Ok(())
            }
            Kind::Directory => {
                let parent = self.dir(parents, &h.path)?;
                let name = OsStr::from_bytes(leaf);
                match rfs::mkdirat(parent, name, Mode::from_raw_mode(0o700)) {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                    Err(e) => return Err(Self::io(&h.path, "create directory")(e)),
                }
                let fd = rfs::openat(
                    parent,
                    name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| match e {
                    rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR => Self::refuse(
                        &h.path,
                        "a directory entry where the layer already has a file or symlink",
                    ),
                    e => Self::io(&h.path, "open directory")(e),
                })?;
                self.metadata(fd.as_fd(), h)?;
                self.dir_times.push((parts.join(&b'/'), h.mtime));
                Ok(())
            }
            Kind::File => {
                let parent = self.dir(parents, &h.path)?;
                let name = OsStr::from_bytes(leaf);
                let fd = create_replacing(parent, name, |p, n| {
                    rfs::openat(
                        p,
                        n,
                        OFlags::WRONLY
                            | OFlags::CREATE
                            | OFlags::EXCL
                            | OFlags::NOFOLLOW
                            | OFlags::CLOEXEC,
                        Mode::from_raw_mode(0o600),
                    )
                })
                .map_err(|e| Self::leaf_error(&h.path, "create file", e))?;
                let mut file = File::from(fd);
                loop {
                    let n = tar.read_data(buf).map_err(classify)?;
                    if n == 0 {
                        break;
                    }
                    file.write_all(&buf[..n])
                        .map_err(|source| UnpackError::Io {
                            path: shown(&h.path),
                            what: "write file",
                            source,
                        })?;
                }
                self.file_bytes += h.size;
                self.metadata(file.as_fd(), h)?;
                set_times(file.as_fd(), h.mtime).map_err(Self::io(&h.path, "set times"))
            }
            Kind::Symlink => {
                if h.link.is_empty() || h.link.contains(&0) {
                    return Err(Self::refuse(
                        &h.path,
                        "an empty or NUL-containing symlink target",
                    ));
                }
                let parent = self.dir(parents, &h.path)?;
                let name = OsStr::from_bytes(leaf);
                let target = OsStr::from_bytes(&h.link);
                create_replacing(parent, name, |p, n| rfs::symlinkat(target, p, n))
                    .map_err(|e| Self::leaf_error(&h.path, "create symlink", e))?;
                rfs::chownat(
                    parent,
                    name,
                    Some(rfs::Uid::from_raw(owners.uid(h.uid))),
                    Some(rfs::Gid::from_raw(owners.gid(h.gid))),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(Self::io(&h.path, "set the symlink's owner"))?;
                rfs::utimensat(
                    parent,
                    name,
                    &timestamps(h.mtime),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(Self::io(&h.path, "set the symlink's times"))
            }
            Kind::HardLink => {
                let target = components(&h.link)
                    .map_err(|r| Self::refuse(&h.path, format!("hardlink target: {r}")))?;
                let Some((tleaf, tparents)) = target.split_last() else {
                    return Err(Self::refuse(&h.path, "a hardlink to the layer's root"));
                };
                let tkey = tparents.join(&b'/');
                let tparent = if tparents.is_empty() {
                    rfs::openat(
                        self.root,
                        ".",
                        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                        Mode::empty(),
                    )
                } else {
                    open_beneath(self.root, &tkey)
                }
                .map_err(|e| match e {
                    rustix::io::Errno::NOENT => {
                        Self::refuse(&h.path, "the hardlink's target is not in this layer")
                    }
                    e => Self::parent_error(&h.path, e),
                })?;
                let tname = OsStr::from_bytes(tleaf);
                match rfs::statat(&tparent, tname, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) => match FileType::from_raw_mode(st.st_mode) {
                        FileType::RegularFile | FileType::Symlink => {}
                        _ => {
                            return Err(Self::refuse(
                                &h.path,
                                "a hardlink to a directory, device or whiteout",
                            ))
                        }
                    },
                    Err(rustix::io::Errno::NOENT) => {
                        return Err(Self::refuse(
                            &h.path,
                            "the hardlink's target is not in this layer",
                        ))
                    }
                    Err(e) => return Err(Self::io(&h.path, "inspect the hardlink's target")(e)),
                }
                let parent = self.dir(parents, &h.path)?;
                let name = OsStr::from_bytes(leaf);
                if parents == tparents && leaf == *tleaf {
                    return Ok(());
                }
                create_replacing(parent, name, |p, n| {
                    rfs::linkat(&tparent, tname, p, n, AtFlags::empty())
                })
                .map_err(|e| Self::leaf_error(&h.path, "create hardlink", e))
            }
        }
    }

    fn leaf_error(path: &[u8], what: &'static str, e: rustix::io::Errno) -> UnpackError {
        match e {
            rustix::io::Errno::ISDIR => {
                Self::refuse(path, "replaces a directory of the same layer")
            }
            e => Self::io(path, what)(e),
        }
    }

    fn whiteout(
        &mut self,
        path: &[u8],
        parents: &[&[u8]],
        hidden: &[u8],
    ) -> Result<(), UnpackError> {
        let parent = self.dir(parents, path)?;
        if hidden == b".wh..opq" {
            // The directory's contents in lower layers are hidden.
            return rfs::fsetxattr(parent, "trusted.overlay.opaque", b"y", XattrFlags::empty())
                .map_err(Self::io(path, "mark the directory opaque"));
        }
        if hidden.starts_with(b".wh.") {
            return Ok(()); // aufs bookkeeping (.wh..wh.plnk, .wh..wh.aufs)
        }
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            return Err(Self::refuse(path, "a whiteout without a valid name"));
        }
        let name = OsStr::from_bytes(hidden);
        match rfs::mknodat(
            parent,
            name,
            FileType::CharacterDevice,
            Mode::empty(),
            rfs::makedev(0, 0),
        ) {
            // The same layer has the entry itself: it hides the lower layers already.
            Ok(()) | Err(rustix::io::Errno::EXIST) => Ok(()),
            Err(e) => Err(Self::io(path, "create whiteout")(e)),
        }
    }

    /// Owner, mode and xattrs of an entry, on its own descriptor (chown before chmod: chown
    /// clears setuid bits).
    fn metadata(&mut self, fd: BorrowedFd<'_>, h: &Header) -> Result<(), UnpackError> {
        rfs::fchown(
            fd,
            Some(rfs::Uid::from_raw(self.owners.uid(h.uid))),
            Some(rfs::Gid::from_raw(self.owners.gid(h.gid))),
        )
        .map_err(Self::io(&h.path, "set owner"))?;
        rfs::fchmod(fd, Mode::from_raw_mode(self.owners.mode(h.mode)))
            .map_err(Self::io(&h.path, "set mode"))?;
        for (name, value) in &h.xattrs {
            if name.starts_with("trusted.") {
                return Err(Self::refuse(
                    &h.path,
                    format!(
                        "a '{}' extended attribute (trusted.* would change what overlayfs shows)",
                        super::digest::printable(name)
                    ),
                ));
            }
            if !name.starts_with("user.") {
                self.dropped_xattrs += 1;
                continue;
            }
            match rfs::fsetxattr(fd, name.as_str(), value, XattrFlags::empty()) {
                Ok(()) => {}
                Err(rustix::io::Errno::NOTSUP)
                | Err(rustix::io::Errno::INVAL)
                | Err(rustix::io::Errno::RANGE)
                | Err(rustix::io::Errno::NOSPC) => {
                    self.dropped_xattrs += 1;
                }
                Err(e) => return Err(Self::io(&h.path, "set an extended attribute")(e)),
            }
        }
        Ok(())
    }

    /// Directory times, deepest first, once nothing more is created in them.
    fn finish(&mut self) -> Result<(), UnpackError> {
        self.cache.clear();
        let times = std::mem::take(&mut self.dir_times);
        for (path, mtime) in times.iter().rev() {
            let fd = if path.is_empty() {
                rfs::openat(
                    self.root,
                    ".",
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                    Mode::empty(),
                )
            } else {
                open_beneath(self.root, path)
            }
            .map_err(Self::io(path, "reopen directory"))?;
            set_times(fd.as_fd(), *mtime).map_err(Self::io(path, "set times"))?;
        }
        Ok(())
    }
}

/// Opens a directory below `root` without following any symlink or leaving the tree.
fn open_beneath(root: BorrowedFd<'_>, path: &[u8]) -> rustix::io::Result<OwnedFd> {
    rfs::openat2(
        root,
        OsStr::from_bytes(path),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH
            | ResolveFlags::NO_SYMLINKS
            | ResolveFlags::NO_MAGICLINKS
            | ResolveFlags::NO_XDEV,
    )
}

/// Runs `create`; when the name exists (a later entry of the same name wins, as in tar), the
/// old non-directory is unlinked and `create` runs once more. A directory is never replaced.
fn create_replacing<T>(
    parent: BorrowedFd<'_>,
    name: &OsStr,
    mut create: impl FnMut(BorrowedFd<'_>, &OsStr) -> rustix::io::Result<T>,
) -> rustix::io::Result<T> {
    match create(parent, name) {
        Err(rustix::io::Errno::EXIST) => {
            let st = rfs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW)?;
            if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                return Err(rustix::io::Errno::ISDIR);
            }
            rfs::unlinkat(parent, name, AtFlags::empty())?;
            create(parent, name)
        }
        other => other,
    }
}

fn timestamps(mtime: (i64, u32)) -> Timestamps {
    let t = Timespec {
        tv_sec: mtime.0,
        tv_nsec: mtime.1.min(999_999_999) as _,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

fn set_times(fd: BorrowedFd<'_>, mtime: (i64, u32)) -> rustix::io::Result<()> {
    rfs::futimens(fd, &timestamps(mtime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert_eq!(
            components(b"./a//b/./c").unwrap(),
            vec![&b"a"[..], b"b", b"c"]
        );
        assert!(components(b"./").unwrap().is_empty());
        assert!(components(b"/etc/passwd").is_err());
        assert!(components(b"a/../../b").is_err());
        assert!(components(b"..").is_err());
    }

    #[test]
    fn ids_shift_into_the_sandbox_range() {
        let ids = IdShift { base: 1000 };
        assert_eq!(ids.host(0), 1000);
        assert_eq!(ids.host(65535), 1000 + 65535);
        assert_eq!(ids.host(70000), 1000 + 65534);
        assert_eq!(ids.host(u64::MAX), 1000 + 65534);
    }

    #[test]
    fn compression_is_detected_by_magic() {
        assert_eq!(Compression::detect(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(
            Compression::detect(&[0x28, 0xb5, 0x2f, 0xfd]),
            Compression::Zstd
        );
        assert_eq!(Compression::detect(b"etc/"), Compression::None);
    }
}
