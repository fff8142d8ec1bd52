//! A strict tar reader (and the small writer `nsbox save` needs).
//!
//! Layers are hostile input, so the reader accepts one reading of an archive and refuses
//! everything ambiguous instead of guessing the way a lenient reader would: ustar and GNU
//! headers with valid checksums, GNU long names and links, PAX extended headers (path,
//! linkpath, size, uid, gid, mtime, xattrs). Refused: a PAX `size` that disagrees with the
//! header's size (the desync behind CVE-2025-62518: two readers would see different entries),
//! data attached to entries that have none (directories, links, devices), sparse and other
//! rare entry types, duplicate extended headers for one entry, malformed PAX records, bad
//! checksums, and an archive that ends before its end-of-archive block.
//!
//! The reader only parses; it never touches the filesystem (see `unpack`).

use std::io::{self, Read, Write};

/// Largest extended header (PAX, GNU long name) accepted: names and xattrs, not file data.
const MAX_META: u64 = 1 << 20;
/// The largest size a ustar header's 11 octal digits can hold.
const MAX_OCTAL_SIZE: u64 = 0o777_7777_7777;

/// Why an archive was refused.
#[derive(Debug, thiserror::Error)]
pub enum TarError {
    #[error("the archive ends in the middle of {0} (truncated archive)")]
    Truncated(&'static str),
    #[error("header {index}: {reason}")]
    Malformed { index: u64, reason: String },
    #[error("reading the archive: {0}")]
    Io(#[from] io::Error),
}

/// The kinds of entries a layer may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    HardLink,
    Symlink,
    CharDevice,
    BlockDevice,
    Directory,
    Fifo,
}

/// One entry's header, extended headers applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The entry's name as written (not yet validated as a path).
    pub path: Vec<u8>,
    /// Link target (hardlinks and symlinks).
    pub link: Vec<u8>,
    pub kind: Kind,
    /// Bytes of data that follow (regular files only; zero otherwise).
    pub size: u64,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// Seconds and nanoseconds since the epoch.
    pub mtime: (i64, u32),
    /// Extended attributes from PAX records (SCHILY.xattr.* and LIBARCHIVE.xattr.*).
    pub xattrs: Vec<(String, Vec<u8>)>,
}

/// Values from a PAX extended header that override the next header's fields.
#[derive(Debug, Default)]
struct Pax {
    path: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u64>,
    gid: Option<u64>,
    mtime: Option<(i64, u32)>,
    xattrs: Vec<(String, Vec<u8>)>,
}

/// Reads entries one after another from a stream.
pub struct TarReader<R> {
    inner: R,
    /// Data bytes of the current entry not yet read by the caller.
    remaining: u64,
    /// Padding after the current entry's data.
    padding: u64,
    /// Headers read so far (for messages).
    index: u64,
    done: bool,
    /// Bytes consumed from `inner` so far.
    position: u64,
    /// Skips data by seeking instead of reading (indexing an archive file).
    seek: Option<fn(&mut R, u64) -> io::Result<()>>,
}

impl<R: Read> TarReader<R> {
    pub fn new(inner: R) -> Self {
        TarReader {
            inner,
            remaining: 0,
            padding: 0,
            index: 0,
            done: false,
            position: 0,
            seek: None,
        }
    }

    /// A reader that skips entry data with `seek` (the caller checks sizes against the file).
    pub fn with_seek(inner: R, seek: fn(&mut R, u64) -> io::Result<()>) -> Self {
        let mut reader = TarReader::new(inner);
        reader.seek = Some(seek);
        reader
    }

    /// Offset in the stream of the current entry's data (right after its header).
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The underlying stream (to drain what follows the end-of-archive blocks).
    pub fn into_inner(self) -> R {
        self.inner
    }

    fn malformed(&self, reason: impl Into<String>) -> TarError {
        TarError::Malformed {
            index: self.index,
            reason: reason.into(),
        }
    }

    /// Reads exactly `buf.len()` bytes; a short read is a truncated archive.
    fn fill(&mut self, buf: &mut [u8], what: &'static str) -> Result<(), TarError> {
        let mut at = 0;
        while at < buf.len() {
            match self.inner.read(&mut buf[at..]) {
                Ok(0) => return Err(TarError::Truncated(what)),
                Ok(n) => {
                    at += n;
                    self.position += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Err(TarError::Truncated(what))
                }
                Err(e) => return Err(TarError::Io(e)),
            }
        }
        Ok(())
    }

    fn skip(&mut self, mut n: u64, what: &'static str) -> Result<(), TarError> {
        if let Some(seek) = self.seek {
            seek(&mut self.inner, n)?;
            self.position += n;
            return Ok(());
        }
        let mut buf = [0u8; 8192];
        while n > 0 {
            let take = n.min(buf.len() as u64) as usize;
            self.fill(&mut buf[..take], what)?;
            n -= take as u64;
        }
        Ok(())
    }

    fn read_meta(&mut self, size: u64) -> Result<Vec<u8>, TarError> {
        if size > MAX_META {
            return Err(self.malformed(format!(
                "an extended header of {size} bytes (at most {MAX_META})"
            )));
        }
        let mut data = vec![0u8; size as usize];
        self.fill(&mut data, "an extended header")?;
        self.skip(pad(size), "an extended header")?;
        Ok(data)
    }

    /// The next entry, or None after the end-of-archive block.
    pub fn next_entry(&mut self) -> Result<Option<Header>, TarError> {
        if self.done {
            return Ok(None);
        }
        let rest = self.remaining + self.padding;
        self.remaining = 0;
        self.padding = 0;
        self.skip(rest, "an entry's data")?;

        let mut pax: Option<Pax> = None;
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        loop {
            let mut block = [0u8; 512];
            self.fill(&mut block, "a header (no end-of-archive block)")?;
            self.index += 1;
            if block.iter().all(|b| *b == 0) {
                if pax.is_some() || long_name.is_some() || long_link.is_some() {
                    return Err(
                        self.malformed("an extended header is followed by the end of the archive")
                    );
                }
                // The second zero block is often followed by record padding; a writer that
                // stopped after one is tolerated (what follows is drained and hashed anyway).
                self.done = true;
                return Ok(None);
            }
            check_checksum(&block).map_err(|r| self.malformed(r))?;
            let magic = &block[257..265];
            let gnu = magic == b"ustar  \0";
            let posix = &magic[..6] == b"ustar\0";
            if !gnu && !posix {
                return Err(self.malformed("not a ustar, PAX or GNU tar header"));
            }
            let size =
                number(&block[124..136]).map_err(|r| self.malformed(format!("size: {r}")))?;
            let typeflag = block[156];
            match typeflag {
                b'x' => {
                    if pax.is_some() {
                        return Err(self.malformed("two PAX headers for one entry"));
                    }
                    let data = self.read_meta(size)?;
                    pax = Some(parse_pax(&data).map_err(|r| self.malformed(r))?);
                    continue;
                }
                b'g' => {
                    // Global headers carry comments in practice; one that changes how
                    // entries read would be read differently by different tools.
                    let data = self.read_meta(size)?;
                    let global = parse_pax(&data).map_err(|r| self.malformed(r))?;
                    if global.path.is_some()
                        || global.link.is_some()
                        || global.size.is_some()
                        || global.uid.is_some()
                        || global.gid.is_some()
                        || !global.xattrs.is_empty()
                    {
                        return Err(self.malformed(
                            "a global PAX header that changes entries (path, size, ids or xattrs)",
                        ));
                    }
                    continue;
                }
                b'L' | b'K' => {
                    let slot_taken = if typeflag == b'L' {
                        long_name.is_some()
                    } else {
                        long_link.is_some()
                    };
                    if slot_taken {
                        return Err(self.malformed("two GNU long-name headers for one entry"));
                    }
                    let mut data = self.read_meta(size)?;
                    if let Some(end) = data.iter().position(|b| *b == 0) {
                        data.truncate(end);
                    }
                    if typeflag == b'L' {
                        long_name = Some(data);
                    } else {
                        long_link = Some(data);
                    }
                    continue;
                }
                _ => {}
            }
            let kind = match typeflag {
                b'0' | 0 | b'7' => Kind::File,
                b'1' => Kind::HardLink,
                b'2' => Kind::Symlink,
                b'3' => Kind::CharDevice,
                b'4' => Kind::BlockDevice,
                b'5' => Kind::Directory,
                b'6' => Kind::Fifo,
                other => {
                    return Err(self.malformed(format!(
                        "unsupported entry type '{}'",
                        (other as char).escape_default()
                    )))
                }
            };
            let pax = pax.unwrap_or_default();
            let mut path = c_string(&block[0..100]);
            if posix && block[345] != 0 {
                let mut full = c_string(&block[345..500]);
                full.push(b'/');
                full.extend_from_slice(&path);
                path = full;
            }
            if let Some(long) = long_name {
                path = long;
            }
            if let Some(p) = pax.path {
                path = p;
            }
            let mut link = c_string(&block[157..257]);
            if let Some(long) = long_link {
                link = long;
            }
            if let Some(l) = pax.link {
                link = l;
            }
            let size = match pax.size {
                Some(p) if p == size || (p > MAX_OCTAL_SIZE && size == 0) => p,
                Some(p) => {
                    return Err(self.malformed(format!(
                        "the PAX size ({p}) disagrees with the header's size ({size})"
                    )))
                }
                None => size,
            };
            if kind != Kind::File && size != 0 {
                return Err(
                    self.malformed(format!("a {kind:?} entry carries {size} bytes of data"))
                );
            }
            let field = |range: std::ops::Range<usize>, name: &str| {
                number(&block[range]).map_err(|r| format!("{name}: {r}"))
            };
            let mode = field(100..108, "mode").map_err(|r| self.malformed(r))?;
            let uid = match pax.uid {
                Some(u) => u,
                None => field(108..116, "uid").map_err(|r| self.malformed(r))?,
            };
            let gid = match pax.gid {
                Some(g) => g,
                None => field(116..124, "gid").map_err(|r| self.malformed(r))?,
            };
            let mtime = match pax.mtime {
                Some(t) => t,
                None => {
                    let secs = field(136..148, "mtime").map_err(|r| self.malformed(r))?;
                    (i64::try_from(secs).unwrap_or(i64::MAX), 0)
                }
            };
            self.remaining = size;
            self.padding = pad(size);
            return Ok(Some(Header {
                path,
                link,
                kind,
                size,
                mode: (mode & 0o7777) as u32,
                uid,
                gid,
                mtime,
                xattrs: pax.xattrs,
            }));
        }
    }

    /// Reads the current entry's data; returns 0 at its end. A short archive is an error.
    pub fn read_data(&mut self, buf: &mut [u8]) -> Result<usize, TarError> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let take = self.remaining.min(buf.len() as u64) as usize;
        loop {
            match self.inner.read(&mut buf[..take]) {
                Ok(0) => return Err(TarError::Truncated("a file's data")),
                Ok(n) => {
                    self.remaining -= n as u64;
                    self.position += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Err(TarError::Truncated("a file's data"))
                }
                Err(e) => return Err(TarError::Io(e)),
            }
        }
    }
}

fn pad(size: u64) -> u64 {
    (512 - size % 512) % 512
}

fn c_string(field: &[u8]) -> Vec<u8> {
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    field[..end].to_vec()
}

fn check_checksum(block: &[u8; 512]) -> Result<(), String> {
    let stored = number(&block[148..156]).map_err(|r| format!("checksum: {r}"))?;
    let mut unsigned: u64 = 0;
    let mut signed: i64 = 0;
    for (i, b) in block.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { *b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    if stored == unsigned || i64::try_from(stored).is_ok_and(|s| s == signed) {
        Ok(())
    } else {
        Err("bad header checksum (not a tar archive, or a corrupted one)".into())
    }
}

/// A numeric header field: octal digits (leading spaces allowed, ended by NUL or space), or
/// GNU base-256 (first byte 0x80) for values that do not fit.
fn number(field: &[u8]) -> Result<u64, String> {
    if let Some(first) = field.first() {
        if *first & 0x80 != 0 {
            if *first != 0x80 {
                return Err("a negative or oversized base-256 number".into());
            }
            let mut value: u64 = 0;
            for b in &field[1..] {
                if value >> 56 != 0 {
                    return Err("a base-256 number larger than 64 bits".into());
                }
                value = (value << 8) | u64::from(*b);
            }
            return Ok(value);
        }
    }
    let text: &[u8] = {
        let start = field.iter().position(|b| *b != b' ').unwrap_or(field.len());
        let rest = &field[start..];
        let end = rest
            .iter()
            .position(|b| *b == 0 || *b == b' ')
            .unwrap_or(rest.len());
        if rest[end..].iter().any(|b| *b != 0 && *b != b' ') {
            return Err("garbage after an octal number".into());
        }
        &rest[..end]
    };
    let mut value: u64 = 0;
    for b in text {
        if !(b'0'..=b'7').contains(b) {
            return Err(format!(
                "'{}' in an octal number",
                (*b as char).escape_default()
            ));
        }
        value = value
            .checked_mul(8)
            .and_then(|v| v.checked_add(u64::from(b - b'0')))
            .ok_or("an octal number larger than 64 bits")?;
    }
    Ok(value)
}

fn parse_pax(data: &[u8]) -> Result<Pax, String> {
    let mut pax = Pax::default();
    let mut rest = data;
    while !rest.is_empty() {
        let space = rest
            .iter()
            .position(|b| *b == b' ')
            .ok_or("a PAX record without a length")?;
        let len: usize = std::str::from_utf8(&rest[..space])
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse().ok())
            .ok_or("a PAX record with a bad length")?;
        if len <= space + 1 || len > rest.len() || rest[len - 1] != b'\n' {
            return Err("a PAX record whose length does not match its contents".into());
        }
        let record = &rest[space + 1..len - 1];
        rest = &rest[len..];
        let eq = record
            .iter()
            .position(|b| *b == b'=')
            .ok_or("a PAX record without '='")?;
        let key = std::str::from_utf8(&record[..eq]).map_err(|_| "a PAX key that is not UTF-8")?;
        let value = &record[eq + 1..];
        let decimal = |v: &[u8]| -> Result<u64, String> {
            std::str::from_utf8(v)
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("PAX {key}: not a decimal number"))
        };
        match key {
            "path" => pax.path = Some(value.to_vec()),
            "linkpath" => pax.link = Some(value.to_vec()),
            "size" => pax.size = Some(decimal(value)?),
            "uid" => pax.uid = Some(decimal(value)?),
            "gid" => pax.gid = Some(decimal(value)?),
            "mtime" => pax.mtime = Some(pax_time(value)?),
            _ => {
                if let Some(name) = key
                    .strip_prefix("SCHILY.xattr.")
                    .or_else(|| key.strip_prefix("LIBARCHIVE.xattr."))
                {
                    if name.is_empty() {
                        return Err("a PAX xattr record without a name".into());
                    }
                    pax.xattrs.push((name.to_string(), value.to_vec()));
                }
                // Other keys (atime, ctime, comments, charset, GNU sparse maps are refused
                // through their entry type) do not change what is written.
                if key.starts_with("GNU.sparse") {
                    return Err("GNU sparse files are not supported".into());
                }
            }
        }
    }
    Ok(pax)
}

/// A PAX time: decimal seconds with an optional fraction, possibly negative.
fn pax_time(value: &[u8]) -> Result<(i64, u32), String> {
    let text = std::str::from_utf8(value).map_err(|_| "PAX mtime: not text")?;
    let (negative, text) = match text.strip_prefix('-') {
        Some(t) => (true, t),
        None => (false, text),
    };
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    let bad = || "PAX mtime: not a time".to_string();
    if secs.is_empty() || !secs.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let secs: i64 = secs.parse().map_err(|_| bad())?;
    let mut nanos: u32 = 0;
    for (i, digit) in frac.bytes().take(9).enumerate() {
        nanos += u32::from(digit - b'0') * 10u32.pow(8 - i as u32);
    }
    Ok(if negative {
        if nanos == 0 {
            (-secs, 0)
        } else {
            (-secs - 1, 1_000_000_000 - nanos)
        }
    } else {
        (secs, nanos)
    })
}

/// What [`TarWriter::entry`] writes for one entry.
#[derive(Debug, Clone, Copy)]
pub struct EntryMeta<'a> {
    /// The name in the archive (directories may end in `/`).
    pub path: &'a [u8],
    /// `File`, `Directory`, `Symlink` or `HardLink`.
    pub kind: Kind,
    /// The target of a symlink or hardlink (a name in the archive).
    pub link: &'a [u8],
    /// Bytes of data (files only).
    pub size: u64,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// Seconds since the epoch.
    pub mtime: i64,
}

/// Writes a ustar archive; names and link targets longer than ustar holds go into a PAX
/// extended header, as GNU tar and bsdtar write them.
pub struct TarWriter<W: Write> {
    out: W,
}

impl<W: Write> TarWriter<W> {
    pub fn new(out: W) -> Self {
        TarWriter { out }
    }

    fn header(&mut self, e: &EntryMeta<'_>, typeflag: u8) -> io::Result<()> {
        let mut block = [0u8; 512];
        let name = &e.path[..e.path.len().min(100)];
        block[..name.len()].copy_from_slice(name);
        let link = &e.link[..e.link.len().min(100)];
        block[157..157 + link.len()].copy_from_slice(link);
        let octal = |dst: &mut [u8], value: u64| {
            // Values that do not fit are in the PAX header; the field keeps its largest value.
            let max = (1u64 << (3 * (dst.len() - 1))) - 1;
            let text = format!("{:0width$o}", value.min(max), width = dst.len() - 1);
            dst[..text.len()].copy_from_slice(text.as_bytes());
        };
        octal(&mut block[100..108], u64::from(e.mode & 0o7777));
        octal(&mut block[108..116], e.uid);
        octal(&mut block[116..124], e.gid);
        octal(&mut block[124..136], e.size);
        octal(&mut block[136..148], e.mtime.max(0) as u64);
        block[156] = typeflag;
        block[257..263].copy_from_slice(b"ustar\0");
        block[263..265].copy_from_slice(b"00");
        block[148..156].copy_from_slice(b"        ");
        let sum: u64 = block.iter().map(|b| u64::from(*b)).sum();
        let text = format!("{sum:06o}\0 ");
        block[148..156].copy_from_slice(text.as_bytes());
        self.out.write_all(&block)
    }

    /// Writes one entry; a file's `size` bytes are copied from `data`.
    pub fn entry(&mut self, e: &EntryMeta<'_>, data: Option<&mut dyn Read>) -> io::Result<()> {
        self.entry_with_xattrs(e, &[], data)
    }

    /// Like [`TarWriter::entry`], with extended attributes as PAX `SCHILY.xattr.*` records
    /// (`nsbox build` keeps a layer's `user.*` attributes).
    pub fn entry_with_xattrs(
        &mut self,
        e: &EntryMeta<'_>,
        xattrs: &[(String, Vec<u8>)],
        data: Option<&mut dyn Read>,
    ) -> io::Result<()> {
        let typeflag = match e.kind {
            Kind::File => b'0',
            Kind::HardLink => b'1',
            Kind::Directory => b'5',
            Kind::Symlink => b'2',
            other => return Err(io::Error::other(format!("cannot write a {other:?} entry"))),
        };
        let mut pax = Vec::new();
        for (name, value) in xattrs {
            pax.extend(pax_record(format!("SCHILY.xattr.{name}").as_bytes(), value));
        }
        if e.path.len() > 100 {
            pax.extend(pax_record(b"path", e.path));
        }
        if e.link.len() > 100 {
            pax.extend(pax_record(b"linkpath", e.link));
        }
        if e.size > MAX_OCTAL_SIZE {
            pax.extend(pax_record(b"size", e.size.to_string().as_bytes()));
        }
        for (key, id) in [(&b"uid"[..], e.uid), (&b"gid"[..], e.gid)] {
            if id > 0o7777777 {
                pax.extend(pax_record(key, id.to_string().as_bytes()));
            }
        }
        if !pax.is_empty() {
            let meta = EntryMeta {
                path: b"PaxHeader",
                kind: Kind::File,
                link: b"",
                size: pax.len() as u64,
                mode: 0o644,
                uid: 0,
                gid: 0,
                mtime: e.mtime,
            };
            self.header(&meta, b'x')?;
            self.out.write_all(&pax)?;
            self.out
                .write_all(&[0u8; 512][..pad(pax.len() as u64) as usize])?;
        }
        let size = if e.kind == Kind::File { e.size } else { 0 };
        self.header(&EntryMeta { size, ..*e }, typeflag)?;
        if size == 0 {
            return Ok(());
        }
        let data = data.ok_or_else(|| io::Error::other("a file entry without data"))?;
        let copied = io::copy(&mut data.take(size), &mut self.out)?;
        if copied != size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{}: expected {size} bytes, got {copied} (did the file shrink while it was copied?)",
                    String::from_utf8_lossy(e.path)
                ),
            ));
        }
        self.out.write_all(&[0u8; 512][..pad(size) as usize])
    }

    pub fn directory(&mut self, name: &str) -> io::Result<()> {
        self.entry(&plain(name.as_bytes(), Kind::Directory, 0, 0o755), None)
    }

    /// A regular file whose `size` bytes are copied from `data`.
    pub fn file(&mut self, name: &str, size: u64, data: &mut dyn Read) -> io::Result<()> {
        self.entry(&plain(name.as_bytes(), Kind::File, size, 0o644), Some(data))
    }

    /// Writes the end-of-archive blocks and returns the output.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&[0u8; 1024])?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// An entry owned by root with no time (what `nsbox save` writes: reproducible archives).
fn plain(path: &[u8], kind: Kind, size: u64, mode: u32) -> EntryMeta<'_> {
    EntryMeta {
        path,
        kind,
        link: b"",
        size,
        mode,
        uid: 0,
        gid: 0,
        mtime: 0,
    }
}

/// One PAX record: "LEN KEY=VALUE\n", LEN counting itself.
fn pax_record(key: &[u8], value: &[u8]) -> Vec<u8> {
    let body_len = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body_len + 1;
    while len.to_string().len() + body_len != len {
        len += 1;
    }
    let mut out = len.to_string().into_bytes();
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds one raw header block (for hostile-archive tests).
    pub fn raw_header(name: &[u8], typeflag: u8, size_field: u64, link: &[u8]) -> [u8; 512] {
        let mut block = [0u8; 512];
        block[..name.len()].copy_from_slice(name);
        let octal = |dst: &mut [u8], value: u64| {
            let text = format!("{:0width$o}", value, width = dst.len() - 1);
            dst[..text.len()].copy_from_slice(text.as_bytes());
        };
        octal(&mut block[100..108], 0o644);
        octal(&mut block[108..116], 0);
        octal(&mut block[116..124], 0);
        octal(&mut block[124..136], size_field);
        octal(&mut block[136..148], 1_700_000_000);
        block[156] = typeflag;
        block[157..157 + link.len()].copy_from_slice(link);
        block[257..263].copy_from_slice(b"ustar\0");
        block[263..265].copy_from_slice(b"00");
        block[148..156].copy_from_slice(b"        ");
        let sum: u64 = block.iter().map(|b| u64::from(*b)).sum();
        block[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        block
    }

    pub fn pax_record(key: &str, value: &str) -> Vec<u8> {
        super::pax_record(key.as_bytes(), value.as_bytes())
    }

    fn padded(data: &[u8]) -> Vec<u8> {
        let mut v = data.to_vec();
        v.resize(v.len() + pad(data.len() as u64) as usize, 0);
        v
    }

    fn entries(archive: &[u8]) -> Result<Vec<(Header, Vec<u8>)>, TarError> {
        let mut r = TarReader::new(archive);
        let mut out = Vec::new();
        while let Some(h) = r.next_entry()? {
            let mut data = Vec::new();
            let mut buf = [0u8; 7];
            loop {
                let n = r.read_data(&mut buf)?;
                if n == 0 {
                    break;
                }
                data.extend_from_slice(&buf[..n]);
            }
            out.push((h, data));
        }
        Ok(out)
    }

    #[test]
    fn writer_output_reads_back() {
        let mut w = TarWriter::new(Vec::new());
        w.directory("blobs/").unwrap();
        w.file("blobs/a", 5, &mut &b"hello"[..]).unwrap();
        let bytes = w.finish().unwrap();
        let got = entries(&bytes).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0.kind, Kind::Directory);
        assert_eq!(got[1].0.path, b"blobs/a");
        assert_eq!(got[1].1, b"hello");
    }

    #[test]
    fn long_names_links_and_metadata_round_trip() {
        let long = "dir/".repeat(40) + "file";
        let target = "../".repeat(50) + "t";
        let mut w = TarWriter::new(Vec::new());
        let file = EntryMeta {
            path: long.as_bytes(),
            kind: Kind::File,
            link: b"",
            size: 3,
            mode: 0o751,
            uid: 100,
            gid: 10_000_000,
            mtime: 1_700_000_123,
        };
        w.entry(&file, Some(&mut &b"abc"[..])).unwrap();
        let link = EntryMeta {
            path: b"l",
            kind: Kind::Symlink,
            link: target.as_bytes(),
            size: 0,
            ..file
        };
        w.entry(&link, None).unwrap();
        let got = entries(&w.finish().unwrap()).unwrap();
        assert_eq!(got[0].0.path, long.as_bytes());
        assert_eq!(got[0].0.mode & 0o7777, 0o751);
        assert_eq!((got[0].0.uid, got[0].0.gid), (100, 10_000_000));
        assert_eq!(got[0].0.mtime, (1_700_000_123, 0));
        assert_eq!(got[0].1, b"abc");
        assert_eq!(got[1].0.kind, Kind::Symlink);
        assert_eq!(got[1].0.link, target.as_bytes());
        // A file that shrank under the writer is an error, not a short archive.
        let mut w = TarWriter::new(Vec::new());
        assert!(w.entry(&file, Some(&mut &b"a"[..])).is_err());
    }

    #[test]
    fn pax_overrides_and_xattrs_apply() {
        let mut pax = pax_record("path", &"d/".repeat(80));
        pax.extend(pax_record("SCHILY.xattr.user.k", "v"));
        pax.extend(pax_record("mtime", "1700000000.5"));
        let mut a = raw_header(b"PaxHeader", b'x', pax.len() as u64, b"").to_vec();
        a.extend(padded(&pax));
        a.extend(raw_header(b"short", b'0', 3, b""));
        a.extend(padded(b"abc"));
        a.extend([0u8; 1024]);
        let got = entries(&a).unwrap();
        assert_eq!(got[0].0.path.len(), 160);
        assert_eq!(got[0].0.xattrs, vec![("user.k".into(), b"v".to_vec())]);
        assert_eq!(got[0].0.mtime, (1_700_000_000, 500_000_000));
        assert_eq!(got[0].1, b"abc");
    }

    #[test]
    fn pax_size_desync_is_refused() {
        // CVE-2025-62518: the PAX header says 1024 bytes follow, the ustar header says 0. A
        // reader using the header's size would parse the file's contents as headers.
        let pax = pax_record("size", "1024");
        let mut a = raw_header(b"PaxHeader", b'x', pax.len() as u64, b"").to_vec();
        a.extend(padded(&pax));
        a.extend(raw_header(b"innocent", b'0', 0, b""));
        a.extend(raw_header(b"smuggled", b'0', 0, b""));
        a.extend([0u8; 1024]);
        let err = entries(&a).unwrap_err().to_string();
        assert!(err.contains("disagrees"), "{err}");
    }

    #[test]
    fn truncation_and_garbage_are_refused() {
        let mut a = raw_header(b"f", b'0', 600, b"").to_vec();
        a.extend([1u8; 100]);
        assert!(matches!(entries(&a), Err(TarError::Truncated(_))));
        let a = raw_header(b"f", b'0', 0, b"").to_vec();
        assert!(matches!(entries(&a), Err(TarError::Truncated(_))));
        assert!(entries(&[7u8; 1024]).is_err());
        let mut bad = raw_header(b"f", b'0', 0, b"");
        bad[0] = b'g';
        assert!(entries(&bad).unwrap_err().to_string().contains("checksum"));
    }

    #[test]
    fn data_on_a_directory_or_link_is_refused() {
        let mut a = raw_header(b"d/", b'5', 512, b"").to_vec();
        a.extend([0u8; 512 + 1024]);
        assert!(entries(&a).unwrap_err().to_string().contains("carries"));
        let mut a = raw_header(b"s", b'S', 0, b"").to_vec();
        a.extend([0u8; 1024]);
        assert!(entries(&a).unwrap_err().to_string().contains("unsupported"));
    }

    #[test]
    fn numbers_parse_strictly() {
        assert_eq!(number(b"0000644\0").unwrap(), 0o644);
        assert_eq!(number(b"  644 \0").unwrap(), 0o644);
        assert_eq!(number(&[0x80, 0, 0, 0, 0, 0, 0, 1, 0]).unwrap(), 256);
        assert!(number(b"0009\0").is_err());
        assert!(number(&[0xff, 0xff]).is_err());
        assert_eq!(pax_time(b"-1.5").unwrap(), (-2, 500_000_000));
        assert!(parse_pax(b"5 a=b\n").is_err());
        assert!(parse_pax(b"99 path=x\n").is_err());
    }
}
