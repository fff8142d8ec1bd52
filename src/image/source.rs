//! Where `nsbox load` reads an image from: an OCI layout or extracted docker-save directory, or
//! a tar archive (optionally gzip- or zstd-compressed, decompressed once to a temporary file so
//! entries can be read at their offsets). Names inside are resolved without following symlinks
//! out of the directory.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, FileType, Mode, OFlags, ResolveFlags};

use super::digest::{printable, Digest};
use super::ingest::{input_err, io_at};
use super::store::Store;
use super::tar::TarReader;
use super::unpack::{Compression, Limits};
use super::ImageError;

/// A file removed when dropped (a decompressed copy of a compressed archive).
pub(super) struct TempFile(PathBuf);
impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// An open entry of a source, and its size.
pub(super) type Entry = (Box<dyn Read + Send>, u64);

/// Where an image's files come from.
pub(super) enum Source {
    /// An OCI layout or extracted docker-save directory.
    Dir { fd: OwnedFd, path: PathBuf },
    /// A tar archive: entry name → (data offset, size).
    Tar {
        file: PathBuf,
        entries: HashMap<String, (u64, u64)>,
        shown: PathBuf,
        _temp: Option<TempFile>,
    },
}

/// "./a//b" → "a/b" (names inside archives; `..` never matches anything).
pub(super) fn clean_name(name: &str) -> String {
    name.split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect::<Vec<_>>()
        .join("/")
}

impl Source {
    pub(super) fn open(path: &Path, store: &Store, limits: Limits) -> Result<Source, ImageError> {
        let meta = std::fs::metadata(path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                input_err(path, "does not exist")
            } else {
                input_err(path, e.to_string())
            }
        })?;
        if meta.is_dir() {
            let fd = rfs::open(
                path,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| input_err(path, e.to_string()))?;
            return Ok(Source::Dir {
                fd,
                path: path.to_path_buf(),
            });
        }
        let mut file = File::open(path).map_err(|e| input_err(path, e.to_string()))?;
        let mut magic = [0u8; 4];
        let n = read_up_to(&mut file, &mut magic).map_err(|e| input_err(path, e.to_string()))?;
        let compression = Compression::detect(&magic[..n]);
        let (tar_path, temp) = if compression == Compression::None {
            (path.to_path_buf(), None)
        } else {
            // Layers inside are read at random offsets, in parallel: decompress once to a
            // temporary file in the store (on the store's filesystem, removed afterwards).
            let tmp = store.tmp_path("archive");
            let guard = TempFile(tmp.clone());
            file.seek(SeekFrom::Start(0))
                .map_err(|e| input_err(path, e.to_string()))?;
            let input = io::BufReader::with_capacity(256 << 10, file);
            let mut out = File::create(&tmp).map_err(io_at(format!("create {}", tmp.display())))?;
            // Bounded like a layer: a compressed archive could be a bomb too.
            let bound = limits.max_bytes.saturating_add(1);
            let copied = match compression {
                Compression::Gzip => io::copy(
                    &mut flate2::bufread::MultiGzDecoder::new(input).take(bound),
                    &mut out,
                ),
                _ => zstd::stream::read::Decoder::with_buffer(input)
                    .and_then(|d| io::copy(&mut d.take(bound), &mut out)),
            };
            let copied = copied.map_err(|e| input_err(path, format!("decompressing: {e}")))?;
            if copied >= bound {
                return Err(input_err(
                    path,
                    format!(
                        "decompresses to more than {} bytes (a decompression bomb?) — hint: raise the bound with --max-layer-size if the archive is genuine",
                        limits.max_bytes
                    ),
                ));
            }
            (tmp, Some(guard))
        };
        let entries = index_tar(&tar_path, path)?;
        Ok(Source::Tar {
            file: tar_path,
            entries,
            shown: path.to_path_buf(),
            _temp: temp,
        })
    }

    pub(super) fn shown(&self) -> &Path {
        match self {
            Source::Dir { path, .. } => path,
            Source::Tar { shown, .. } => shown,
        }
    }

    /// Opens entry `name`; None when it does not exist.
    pub(super) fn reader(&self, name: &str) -> Result<Option<Entry>, ImageError> {
        match self {
            Source::Dir { fd, path } => {
                // Names come from documents inside the image: resolve them below the
                // directory only (a `../` or an absolute symlink does not leave it).
                let file = match rfs::openat2(
                    fd.as_fd(),
                    clean_name(name).as_str(),
                    OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK,
                    Mode::empty(),
                    ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
                ) {
                    Ok(fd) => fd,
                    Err(rustix::io::Errno::NOENT) => return Ok(None),
                    Err(e) => {
                        return Err(input_err(
                            &path.join(name),
                            format!("cannot open: {e} (names must stay inside the directory)"),
                        ))
                    }
                };
                let st =
                    rfs::fstat(&file).map_err(|e| input_err(&path.join(name), e.to_string()))?;
                if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
                    return Err(input_err(&path.join(name), "not a regular file"));
                }
                Ok(Some((Box::new(File::from(file)), st.st_size as u64)))
            }
            Source::Tar { file, entries, .. } => {
                let Some(&(offset, size)) = entries.get(&clean_name(name)) else {
                    return Ok(None);
                };
                let mut f = File::open(file).map_err(io_at(format!("open {}", file.display())))?;
                f.seek(SeekFrom::Start(offset))
                    .map_err(io_at(format!("read {}", file.display())))?;
                Ok(Some((Box::new(f.take(size)), size)))
            }
        }
    }

    pub(super) fn exists(&self, name: &str) -> bool {
        matches!(self.reader(name), Ok(Some(_)))
    }

    /// Reads a small document; with `digest`, verifies it (and its size) first.
    pub(super) fn read_doc(
        &self,
        what: &'static str,
        name: &str,
        max: u64,
        expect: Option<(&Digest, u64)>,
    ) -> Result<Vec<u8>, ImageError> {
        let missing = || match expect {
            Some((d, _)) => ImageError::MissingBlob {
                what,
                digest: d.to_string(),
                path: self.shown().to_path_buf(),
            },
            None => input_err(
                self.shown(),
                format!("{what} '{}' is missing", printable(name)),
            ),
        };
        let (reader, size) = self.reader(name)?.ok_or_else(missing)?;
        if size > max {
            return Err(input_err(
                self.shown(),
                format!(
                    "{what} '{}' is {size} bytes (at most {max})",
                    printable(name)
                ),
            ));
        }
        if let Some((d, expected)) = expect {
            if size != expected {
                return Err(ImageError::DigestMismatch {
                    what,
                    expected: format!("{d} ({expected} bytes)"),
                    actual: format!("of another size ({size} bytes)"),
                });
            }
        }
        let mut data = Vec::with_capacity(size as usize);
        reader
            .take(max + 1)
            .read_to_end(&mut data)
            .map_err(io_at(format!("read {what}")))?;
        if let Some((d, _)) = expect {
            let actual = Digest::of(&data);
            if actual != *d {
                return Err(ImageError::DigestMismatch {
                    what,
                    expected: d.to_string(),
                    actual: actual.to_string(),
                });
            }
        }
        Ok(data)
    }
}

pub(super) fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Lists a tar file's regular files (name → data offset, size) without reading their data.
/// Symlinks to other entries (docker save links identical layers) resolve to their target.
/// Errors name `shown` (the file the user gave; `path` may be its decompressed copy).
fn index_tar(path: &Path, shown: &Path) -> Result<HashMap<String, (u64, u64)>, ImageError> {
    let file = File::open(path).map_err(io_at(format!("open {}", shown.display())))?;
    let len = file
        .metadata()
        .map_err(io_at(format!("inspect {}", shown.display())))?
        .len();
    let mut reader = TarReader::with_seek(io::BufReader::new(file), |r, n| {
        r.seek_relative(i64::try_from(n).map_err(io::Error::other)?)
    });
    let mut files: HashMap<String, (u64, u64)> = HashMap::new();
    let mut links: Vec<(String, String)> = Vec::new();
    let not_archive = |e: super::tar::TarError| {
        input_err(shown, format!("not an image archive ({e}) — hint: nsbox loads OCI layouts, OCI archives and docker-save archives; a root filesystem tarball is added with `nsbox import`"))
    };
    while let Some(h) = reader.next_entry().map_err(not_archive)? {
        let name = clean_name(&String::from_utf8_lossy(&h.path));
        let offset = reader.position();
        if offset + h.size > len {
            return Err(input_err(shown, "the archive is truncated"));
        }
        let duplicate = |name: &str| {
            input_err(
                shown,
                format!("'{}' appears twice in the archive", printable(name)),
            )
        };
        match h.kind {
            super::tar::Kind::File => {
                if files.contains_key(&name) {
                    return Err(duplicate(&name));
                }
                files.insert(name, (offset, h.size));
            }
            super::tar::Kind::Symlink => {
                let target = String::from_utf8_lossy(&h.link).into_owned();
                let base = name.rsplit_once('/').map_or("", |(dir, _)| dir);
                let joined = if target.starts_with('/') {
                    target
                } else {
                    format!("{base}/{target}")
                };
                let mut parts: Vec<&str> = Vec::new();
                for part in joined.split('/') {
                    match part {
                        "" | "." => {}
                        ".." => {
                            parts.pop();
                        }
                        p => parts.push(p),
                    }
                }
                links.push((name, parts.join("/")));
            }
            _ => {}
        }
    }
    for (name, target) in links {
        if let Some(found) = files.get(&target).copied() {
            files.entry(name).or_insert(found);
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_names_are_cleaned() {
        assert_eq!(clean_name("./blobs//sha256/x"), "blobs/sha256/x");
    }
}
