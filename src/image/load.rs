//! Loading images into the store: OCI image layouts (directories), OCI archives and
//! `docker save` archives (tar, optionally gzip- or zstd-compressed; extracted docker-save
//! directories too), several images per file; and importing a root filesystem tarball as a
//! one-layer image.
//!
//! Order of work: read and verify the small documents (index, manifests, configs: digests and
//! sizes checked before parsing), then unpack every layer the store lacks — one thread per
//! layer, as many as there are cores. Each layer's bytes are read once: hashed (blob digest),
//! copied into the blob store and decompressed straight into the layer's files, the
//! uncompressed stream hashed on the way (diff_id). Only when every layer verified are the
//! blobs and layers renamed into place and the images added to the index.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::fs::{self as rfs, FileType, Mode, OFlags, ResolveFlags};

use super::digest::{printable, Digest, HashingReader};
use super::oci::{self, Descriptor, DockerSaveEntry, ImageConfig, Index, Manifest};
use super::reference::normalize_name;
use super::store::{remove_tree, ImageRecord, LayerRecord, Store};
use super::tar::TarReader;
use super::unpack::{self, Compression, IdShift, Limits};
use super::ImageError;
use crate::ids::DEFAULT_UID_BASE;

/// Largest manifest or index accepted.
pub(crate) const MAX_MANIFEST: u64 = 4 << 20;
/// Largest image config accepted.
pub(crate) const MAX_CONFIG: u64 = 16 << 20;
/// Nested indexes followed at most this deep.
const MAX_INDEX_DEPTH: usize = 4;

/// How to load.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    pub limits: Limits,
    /// Name the (single) loaded image this, in addition to the names the file gives it.
    pub tag: Option<String>,
    /// Draw a progress line on stderr.
    pub progress: bool,
    /// Layers unpacked at once (0: one per core).
    pub threads: usize,
}

/// What a load did.
#[derive(Debug, Clone)]
pub struct LoadReport {
    pub images: Vec<ImageRecord>,
    /// Layers unpacked now (the others were in the store already).
    pub unpacked_layers: usize,
    pub reused_layers: usize,
    pub warnings: Vec<String>,
}

/// A file removed when dropped (a decompressed copy of a compressed archive).
struct TempFile(PathBuf);
impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// An open entry of a source, and its size.
type Entry = (Box<dyn Read + Send>, u64);

/// Where an image's files come from.
enum Source {
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

fn input_err(path: &Path, reason: impl Into<String>) -> ImageError {
    ImageError::Input {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn io_at(what: impl Into<String>) -> impl FnOnce(io::Error) -> ImageError {
    let what = what.into();
    move |source| ImageError::Io { what, source }
}

/// "./a//b" → "a/b" (names inside archives; `..` never matches anything).
fn clean_name(name: &str) -> String {
    name.split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect::<Vec<_>>()
        .join("/")
}

impl Source {
    fn open(path: &Path, store: &Store, limits: Limits) -> Result<Source, ImageError> {
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
        let entries = index_tar(&tar_path).map_err(|reason| input_err(path, reason))?;
        Ok(Source::Tar {
            file: tar_path,
            entries,
            shown: path.to_path_buf(),
            _temp: temp,
        })
    }

    fn shown(&self) -> &Path {
        match self {
            Source::Dir { path, .. } => path,
            Source::Tar { shown, .. } => shown,
        }
    }

    /// Opens entry `name`; None when it does not exist.
    fn reader(&self, name: &str) -> Result<Option<Entry>, ImageError> {
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

    fn exists(&self, name: &str) -> bool {
        matches!(self.reader(name), Ok(Some(_)))
    }

    /// Reads a small document; with `digest`, verifies it (and its size) first.
    fn read_doc(
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

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
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
fn index_tar(path: &Path) -> Result<HashMap<String, (u64, u64)>, String> {
    let file = File::open(path).map_err(|e| e.to_string())?;
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    let mut reader = TarReader::with_seek(io::BufReader::new(file), |r, n| {
        r.seek_relative(i64::try_from(n).map_err(io::Error::other)?)
    });
    let mut files: HashMap<String, (u64, u64)> = HashMap::new();
    let mut links: Vec<(String, String)> = Vec::new();
    let not_archive = |e: super::tar::TarError| {
        format!("not an image archive ({e}) — hint: nsbox loads OCI layouts, OCI archives and docker-save archives; a root filesystem tarball is added with `nsbox import`")
    };
    while let Some(h) = reader.next_entry().map_err(not_archive)? {
        let name = clean_name(&String::from_utf8_lossy(&h.path));
        let offset = reader.position();
        if offset + h.size > len {
            return Err("the archive is truncated".into());
        }
        let duplicate = |name: &str| format!("'{}' appears twice in the archive", printable(name));
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

/// A layer to unpack (deduplicated by diff_id when the config gives one).
pub(crate) struct LayerJob {
    /// Where the layer's bytes are: a name in the source (a file, an archive entry, a digest).
    pub source_name: String,
    /// Blob digest and size from a manifest (None for docker-save layers: computed).
    pub blob: Option<(Digest, u64)>,
    pub diff_id: Option<Digest>,
    pub size_hint: u64,
}

pub(crate) struct LayerDone {
    pub blob: Digest,
    pub size: u64,
    pub diff_id: Digest,
    pub compression: Compression,
    pub unpacked_bytes: u64,
}

/// One image found in the source, before its layers are unpacked.
struct Found {
    names: Vec<String>,
    /// (manifest digest, bytes) — None for docker-save (synthesized after unpacking).
    manifest: Option<(Digest, Vec<u8>)>,
    config: (Digest, Vec<u8>),
    parsed: ImageConfig,
    /// Per layer: the job's key, the manifest's descriptor (None for docker-save), diff_id.
    layers: Vec<(String, Option<Descriptor>, Digest)>,
}

/// Loads every image of the layout or archive at `path` into `store`.
pub fn load(store: &Store, path: &Path, opts: &LoadOptions) -> Result<LoadReport, ImageError> {
    let _guard = store.load_guard()?;
    let source = Source::open(path, store, opts.limits)?;
    let mut warnings = Vec::new();
    let stem = source_stem(path);
    let mut jobs: BTreeMap<String, LayerJob> = BTreeMap::new();
    let mut found: Vec<Found> = Vec::new();
    if source.exists("index.json") {
        if !source.exists("oci-layout") {
            return Err(input_err(
                path,
                "has index.json but no oci-layout file: not an OCI image layout",
            ));
        }
        let index: Index = parse_json(
            "index.json",
            &source.read_doc("index.json", "index.json", MAX_MANIFEST, None)?,
        )?;
        for desc in &index.manifests {
            let names = names_from_annotations(desc, &stem, &mut warnings);
            collect_oci(&source, desc, names, 0, &mut found, &mut jobs)?;
        }
    } else if source.exists("manifest.json") {
        let entries: Vec<DockerSaveEntry> = parse_json(
            "manifest.json",
            &source.read_doc("manifest.json", "manifest.json", MAX_MANIFEST, None)?,
        )?;
        for entry in entries {
            let bytes = source.read_doc("image config", &entry.config, MAX_CONFIG, None)?;
            let parsed: ImageConfig = parse_json("image config", &bytes)?;
            check_config(&parsed, entry.layers.len(), path)?;
            let mut layers = Vec::new();
            for (i, layer) in entry.layers.iter().enumerate() {
                let diff_id = parsed.rootfs.diff_ids[i].clone();
                let (_, size) = source.reader(layer)?.ok_or_else(|| {
                    input_err(path, format!("layer '{}' is missing", printable(layer)))
                })?;
                let key = format!("diff:{}", diff_id.hex());
                jobs.entry(key.clone()).or_insert(LayerJob {
                    source_name: layer.clone(),
                    blob: None,
                    diff_id: Some(diff_id.clone()),
                    size_hint: size,
                });
                layers.push((key, None, diff_id));
            }
            let mut names = Vec::new();
            for tag in entry.repo_tags.unwrap_or_default() {
                match normalize_name(&tag) {
                    Ok(n) => names.push(n),
                    Err(e) => warnings.push(format!("name skipped: {e}")),
                }
            }
            found.push(Found {
                names,
                manifest: None,
                config: (Digest::of(&bytes), bytes),
                parsed,
                layers,
            });
        }
    } else {
        return Err(input_err(
            path,
            "not an image: no index.json (OCI) or manifest.json (docker save) — hint: a root filesystem tarball is added with `nsbox import FILE --tag NAME`",
        ));
    }
    // One manifest listed under several tags is one image with several names.
    let mut unique: Vec<Found> = Vec::new();
    for image in found {
        let same = unique.iter_mut().find(|u| {
            image.manifest.is_some()
                && u.manifest.as_ref().map(|m| &m.0) == image.manifest.as_ref().map(|m| &m.0)
        });
        match same {
            Some(existing) => {
                for name in image.names {
                    if !existing.names.contains(&name) {
                        existing.names.push(name);
                    }
                }
            }
            None => unique.push(image),
        }
    }
    let mut found = unique;
    if found.is_empty() {
        return Err(input_err(path, "holds no image"));
    }
    if let Some(tag) = &opts.tag {
        if found.len() != 1 {
            return Err(ImageError::Invalid(format!(
                "--tag names one image, but {} holds {} images",
                path.display(),
                found.len()
            )));
        }
        let name = normalize_name(tag).map_err(ImageError::Reference)?;
        if !found[0].names.contains(&name) {
            found[0].names.push(name);
        }
    }

    // Layers already in the store (and their blobs) are not unpacked again.
    let total = jobs.len();
    let index = store.index()?;
    jobs.retain(|_, job| {
        let Some(diff_id) = &job.diff_id else {
            return true;
        };
        let have_blob = match &job.blob {
            Some((d, _)) => store.has_blob(d),
            // docker-save: any stored blob of this layer will do.
            None => {
                store.has_blob(diff_id)
                    || index
                        .images
                        .iter()
                        .flat_map(|i| i.layers.iter())
                        .any(|l| l.diff_id == *diff_id && store.has_blob(&l.blob))
            }
        };
        !(store.has_layer(diff_id) && have_blob)
    });
    let reused = total - jobs.len();
    let open = |job: &LayerJob| -> Result<Box<dyn Read + Send + '_>, ImageError> {
        let (reader, _) =
            source
                .reader(&job.source_name)?
                .ok_or_else(|| ImageError::MissingBlob {
                    what: "layer",
                    digest: job.source_name.clone(),
                    path: source.shown().to_path_buf(),
                })?;
        Ok(reader)
    };
    let done = unpack_all(store, jobs, opts, "unpacking", &open)?;

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut records = Vec::new();
    for image in found {
        let mut layers = Vec::new();
        for (key, desc, diff_id) in &image.layers {
            let unpacked = done.get(key);
            let record = match (desc, unpacked) {
                // The manifest's descriptor is the truth about the blob.
                (Some(desc), _) => LayerRecord {
                    blob: desc.digest.clone(),
                    media_type: desc.media_type.clone(),
                    size: desc.size,
                    diff_id: diff_id.clone(),
                    unpacked_bytes: match unpacked {
                        Some(d) => d.unpacked_bytes,
                        None => known_unpacked_bytes(store, diff_id)?,
                    },
                },
                (None, Some(d)) => LayerRecord {
                    blob: d.blob.clone(),
                    media_type: layer_media_type(d.compression).to_string(),
                    size: d.size,
                    diff_id: d.diff_id.clone(),
                    unpacked_bytes: d.unpacked_bytes,
                },
                (None, None) => reused_docker_layer(store, diff_id)?,
            };
            layers.push(record);
        }
        let (manifest_digest, manifest_bytes) = match image.manifest {
            Some(m) => m,
            None => synthesize_manifest(&image.config, &layers)?,
        };
        store_doc(store, &manifest_digest, &manifest_bytes)?;
        store_doc(store, &image.config.0, &image.config.1)?;
        let platform = oci::host_platform();
        records.push(ImageRecord {
            digest: manifest_digest,
            names: image.names,
            manifest_size: manifest_bytes.len() as u64,
            config: image.config.0.clone(),
            config_size: image.config.1.len() as u64,
            layers,
            run: image.parsed.config.clone().unwrap_or_default(),
            architecture: image
                .parsed
                .architecture
                .clone()
                .unwrap_or(platform.architecture),
            os: image.parsed.os.clone().unwrap_or(platform.os),
            loaded: now,
            index_digest: None,
            build_hash: None,
        });
    }
    add_to_index(store, &records)?;
    Ok(LoadReport {
        images: records,
        unpacked_layers: done.len(),
        reused_layers: reused,
        warnings,
    })
}

/// File bytes of a layer already in the store (from the index, else counted).
pub(crate) fn known_unpacked_bytes(store: &Store, diff_id: &Digest) -> Result<u64, ImageError> {
    let index = store.index()?;
    Ok(index
        .images
        .iter()
        .flat_map(|im| im.layers.iter())
        .find(|l| l.diff_id == *diff_id)
        .map(|l| l.unpacked_bytes)
        .unwrap_or_else(|| super::store::tree_bytes(&store.layer_path(diff_id))))
}

/// The record of a docker-save layer that was in the store already: the blob an image in the
/// index stored for it, or the uncompressed blob named by its diff_id.
fn reused_docker_layer(store: &Store, diff_id: &Digest) -> Result<LayerRecord, ImageError> {
    let index = store.index()?;
    if let Some(known) = index
        .images
        .iter()
        .flat_map(|im| im.layers.iter())
        .find(|l| l.diff_id == *diff_id && store.has_blob(&l.blob))
    {
        return Ok(known.clone());
    }
    if !store.has_blob(diff_id) {
        return Err(ImageError::Store {
            path: store.layer_path(diff_id),
            reason: "a layer without its blob — hint: `nsbox image prune`, then load again".into(),
        });
    }
    let size = std::fs::metadata(store.blob_path(diff_id))
        .map(|m| m.len())
        .unwrap_or(0);
    Ok(LayerRecord {
        blob: diff_id.clone(),
        media_type: oci::OCI_LAYER_TAR.to_string(),
        size,
        diff_id: diff_id.clone(),
        unpacked_bytes: super::store::tree_bytes(&store.layer_path(diff_id)),
    })
}

fn layer_media_type(c: Compression) -> &'static str {
    match c {
        Compression::None => oci::OCI_LAYER_TAR,
        Compression::Gzip => oci::OCI_LAYER_GZIP,
        Compression::Zstd => oci::OCI_LAYER_ZSTD,
    }
}

pub(crate) fn synthesize_manifest(
    config: &(Digest, Vec<u8>),
    layers: &[LayerRecord],
) -> Result<(Digest, Vec<u8>), ImageError> {
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(oci::OCI_MANIFEST.to_string()),
        config: Descriptor {
            media_type: oci::OCI_CONFIG.to_string(),
            digest: config.0.clone(),
            size: config.1.len() as u64,
            annotations: BTreeMap::new(),
            platform: None,
        },
        layers: layers
            .iter()
            .map(|l| Descriptor {
                media_type: l.media_type.clone(),
                digest: l.blob.clone(),
                size: l.size,
                annotations: BTreeMap::new(),
                platform: None,
            })
            .collect(),
    };
    let bytes = serde_json::to_vec(&manifest).map_err(|e| ImageError::Invalid(e.to_string()))?;
    Ok((Digest::of(&bytes), bytes))
}

/// Writes a small verified document into the blob store (if not there yet).
pub(crate) fn store_doc(store: &Store, digest: &Digest, bytes: &[u8]) -> Result<(), ImageError> {
    if store.has_blob(digest) {
        return Ok(());
    }
    let tmp = store.tmp_path("blob");
    std::fs::write(&tmp, bytes).map_err(io_at(format!("write {}", tmp.display())))?;
    store.install_blob(&tmp, digest)
}

/// Adds `records` to the index: a name moves to the image that now carries it; an image
/// loaded again keeps its old names and gains the new ones.
pub fn add_to_index(store: &Store, records: &[ImageRecord]) -> Result<(), ImageError> {
    store.update_index(|index| {
        for record in records {
            for other in index.images.iter_mut() {
                if other.digest != record.digest {
                    other.names.retain(|n| !record.names.contains(n));
                }
            }
            match index.images.iter_mut().find(|i| i.digest == record.digest) {
                Some(existing) => {
                    for name in &record.names {
                        if !existing.names.contains(name) {
                            existing.names.push(name.clone());
                        }
                    }
                }
                None => index.images.push(record.clone()),
            }
        }
        Ok(())
    })
}

pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(
    what: &str,
    bytes: &[u8],
) -> Result<T, ImageError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ImageError::Invalid(format!("{what} is not valid: {e}")))
}

pub(crate) fn check_config(
    config: &ImageConfig,
    layers: usize,
    path: &Path,
) -> Result<(), ImageError> {
    if config.rootfs.diff_ids.len() != layers {
        return Err(input_err(
            path,
            format!(
                "the image config lists {} layers (diff_ids) but the manifest {}",
                config.rootfs.diff_ids.len(),
                layers
            ),
        ));
    }
    if layers == 0 {
        return Err(input_err(path, "an image without layers"));
    }
    if let Some(os) = &config.os {
        if os != "linux" {
            return Err(input_err(
                path,
                format!("an image for '{}', not linux", printable(os)),
            ));
        }
    }
    Ok(())
}

/// Refuses a manifest whose config is not an OCI or Docker image config (an artifact).
pub(crate) fn check_config_type(manifest: &Manifest) -> Result<(), ImageError> {
    if matches!(
        manifest.config.media_type.as_str(),
        oci::OCI_CONFIG | oci::DOCKER_CONFIG
    ) {
        return Ok(());
    }
    Err(ImageError::MediaType {
        what: "the image config",
        media_type: printable(&manifest.config.media_type),
    })
}

/// Follows `desc` (an index or a manifest) to image manifests and their configs.
fn collect_oci(
    source: &Source,
    desc: &Descriptor,
    names: Vec<String>,
    depth: usize,
    found: &mut Vec<Found>,
    jobs: &mut BTreeMap<String, LayerJob>,
) -> Result<(), ImageError> {
    let blob_name = |d: &Digest| format!("blobs/sha256/{}", d.hex());
    match desc.media_type.as_str() {
        oci::OCI_INDEX | oci::DOCKER_LIST => {
            if depth >= MAX_INDEX_DEPTH {
                return Err(ImageError::Invalid(format!(
                    "indexes nested deeper than {MAX_INDEX_DEPTH} levels"
                )));
            }
            let bytes = source.read_doc(
                "index",
                &blob_name(&desc.digest),
                MAX_MANIFEST,
                Some((&desc.digest, desc.size)),
            )?;
            let index: Index = parse_json("index", &bytes)?;
            let host = oci::host_platform();
            let chosen = oci::pick_platform(&index).ok_or_else(|| {
                ImageError::Invalid(format!(
                    "image index {} has no manifest for {}/{}",
                    desc.digest, host.os, host.architecture
                ))
            })?;
            collect_oci(source, chosen, names, depth + 1, found, jobs)
        }
        oci::OCI_MANIFEST | oci::DOCKER_MANIFEST => {
            let bytes = source.read_doc(
                "manifest",
                &blob_name(&desc.digest),
                MAX_MANIFEST,
                Some((&desc.digest, desc.size)),
            )?;
            let manifest: Manifest = parse_json("manifest", &bytes)?;
            check_config_type(&manifest)?;
            let config_bytes = source.read_doc(
                "image config",
                &blob_name(&manifest.config.digest),
                MAX_CONFIG,
                Some((&manifest.config.digest, manifest.config.size)),
            )?;
            let parsed: ImageConfig = parse_json("image config", &config_bytes)?;
            check_config(&parsed, manifest.layers.len(), source.shown())?;
            let mut layers = Vec::new();
            for (i, layer) in manifest.layers.iter().enumerate() {
                if !oci::LAYER_TYPES.contains(&layer.media_type.as_str()) {
                    return Err(ImageError::MediaType {
                        what: "a layer",
                        media_type: printable(&layer.media_type),
                    });
                }
                let diff_id = parsed.rootfs.diff_ids[i].clone();
                let name = blob_name(&layer.digest);
                if !source.exists(&name) {
                    return Err(ImageError::MissingBlob {
                        what: "layer",
                        digest: layer.digest.to_string(),
                        path: source.shown().to_path_buf(),
                    });
                }
                // Keyed by blob: two blobs with one diff_id (gzip and plain) are both kept
                // for `save`; the layer directory is shared.
                let key = format!("blob:{}", layer.digest.hex());
                jobs.entry(key.clone()).or_insert(LayerJob {
                    source_name: name,
                    blob: Some((layer.digest.clone(), layer.size)),
                    diff_id: Some(diff_id.clone()),
                    size_hint: layer.size,
                });
                layers.push((key, Some(layer.clone()), diff_id));
            }
            found.push(Found {
                names,
                manifest: Some((desc.digest.clone(), bytes)),
                config: (manifest.config.digest.clone(), config_bytes),
                parsed,
                layers,
            });
            Ok(())
        }
        other => Err(ImageError::MediaType {
            what: "a manifest",
            media_type: printable(other),
        }),
    }
}

/// The file or directory name without archive extensions, as an image repository name.
fn source_stem(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let mut stem = name.as_str();
    for ext in [".gz", ".zst", ".tgz", ".tar", ".oci", ".ociarchive"] {
        stem = stem.strip_suffix(ext).unwrap_or(stem);
    }
    let cleaned: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let cleaned = cleaned
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string();
    if cleaned.is_empty() {
        "image".to_string()
    } else {
        cleaned
    }
}

fn names_from_annotations(
    desc: &Descriptor,
    stem: &str,
    warnings: &mut Vec<String>,
) -> Vec<String> {
    let candidate = if let Some(full) = desc.annotations.get(oci::CONTAINERD_NAME) {
        full.clone()
    } else if let Some(r) = desc.annotations.get(oci::REF_NAME) {
        if r.contains(['/', ':']) {
            r.clone()
        } else {
            format!("{stem}:{r}")
        }
    } else {
        return Vec::new();
    };
    match normalize_name(&candidate) {
        Ok(name) => vec![name],
        Err(e) => {
            warnings.push(format!("name skipped: {e}"));
            Vec::new()
        }
    }
}

/// Counts bytes read (for the progress line).
pub(crate) struct Counted<'a, R> {
    pub inner: R,
    pub count: &'a AtomicU64,
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Unpacks `jobs` in parallel (one thread per layer, at most one per core); either every
/// layer is installed or none is added and the error of the first failure is returned.
/// Opens a layer's bytes: a file or archive entry for `load`, a registry download for `pull`.
pub(crate) type OpenLayer<'a> =
    dyn Fn(&LayerJob) -> Result<Box<dyn Read + Send + 'a>, ImageError> + Sync + 'a;

pub(crate) fn unpack_all(
    store: &Store,
    jobs: BTreeMap<String, LayerJob>,
    opts: &LoadOptions,
    label: &str,
    open: &OpenLayer<'_>,
) -> Result<HashMap<String, LayerDone>, ImageError> {
    if jobs.is_empty() {
        return Ok(HashMap::new());
    }
    let total_bytes: u64 = jobs.values().map(|j| j.size_hint).sum();
    let count = jobs.len();
    let threads = if opts.threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        opts.threads
    }
    .min(count)
    .max(1);
    let queue = Mutex::new(jobs.into_iter().collect::<VecDeque<_>>());
    let results: Mutex<Vec<(String, Result<LayerDone, ImageError>)>> = Mutex::new(Vec::new());
    let failed = AtomicBool::new(false);
    let read = AtomicU64::new(0);
    let finished = AtomicUsize::new(0);
    let all_done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        if opts.progress {
            scope.spawn(|| progress_line(label, &read, total_bytes, &finished, count, &all_done));
        }
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| loop {
                    if failed.load(Ordering::Relaxed) {
                        break;
                    }
                    let next = queue.lock().ok().and_then(|mut q| q.pop_front());
                    let Some((key, job)) = next else { break };
                    let result = unpack_layer(store, open, &job, opts.limits, &read);
                    if result.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    finished.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut r) = results.lock() {
                        r.push((key, result));
                    }
                })
            })
            .collect();
        for w in workers {
            let _ = w.join();
        }
        all_done.store(true, Ordering::Relaxed);
    });
    let results = results.into_inner().unwrap_or_default();
    let mut done = HashMap::new();
    let mut first_error = None;
    for (key, result) in results {
        match result {
            Ok(d) => {
                done.insert(key, d);
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    if done.len() != count {
        return Err(ImageError::Invalid(
            "a layer worker stopped unexpectedly".into(),
        ));
    }
    Ok(done)
}

pub(crate) fn progress_line(
    label: &str,
    read: &AtomicU64,
    total: u64,
    finished: &AtomicUsize,
    count: usize,
    done: &AtomicBool,
) {
    use std::io::Write;
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let started = std::time::Instant::now();
    let mut drawn = false;
    while !done.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        if started.elapsed() < Duration::from_millis(300) {
            continue; // short loads draw nothing
        }
        let bytes = read.load(Ordering::Relaxed).min(total);
        let width = 30usize;
        let filled = if total == 0 {
            width
        } else {
            (bytes as f64 / total as f64 * width as f64) as usize
        };
        let bar: String = "#".repeat(filled) + &"-".repeat(width - filled.min(width));
        let _ = write!(
            io::stderr(),
            "\rnsbox: {label} [{bar}] {:.1}/{:.1} MiB, {}/{count} layers ",
            mib(bytes),
            mib(total),
            finished.load(Ordering::Relaxed)
        );
        drawn = true;
    }
    if drawn {
        let _ = writeln!(io::stderr());
    }
}

/// What a single layer unpack checks against.
pub(crate) struct Expect {
    pub blob: Option<(Digest, u64)>,
    pub diff_id: Option<Digest>,
}

fn unpack_layer(
    store: &Store,
    open: &OpenLayer<'_>,
    job: &LayerJob,
    limits: Limits,
    read: &AtomicU64,
) -> Result<LayerDone, ImageError> {
    let reader = open(job)?;
    let expect = Expect {
        blob: job.blob.clone(),
        diff_id: job.diff_id.clone(),
    };
    let shown = job
        .diff_id
        .as_ref()
        .map(|d| d.to_string())
        .unwrap_or_else(|| job.source_name.clone());
    unpack_stream(
        store,
        Counted {
            inner: reader,
            count: read,
        },
        &expect,
        limits,
        &shown,
    )
}

/// Stores, verifies and unpacks one layer stream; installs blob and layer on success.
pub(crate) fn unpack_stream(
    store: &Store,
    reader: impl Read + Send,
    expect: &Expect,
    limits: Limits,
    shown: &str,
) -> Result<LayerDone, ImageError> {
    let dir = store.tmp_path("layer");
    let blob_tmp = store.tmp_path("blob");
    let result = (|| {
        rfs::mkdir(&dir, Mode::from_raw_mode(0o755))
            .map_err(|e| io_at(format!("create {}", dir.display()))(e.into()))?;
        let dir_fd = rfs::open(
            &dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_at(format!("open {}", dir.display()))(e.into()))?;
        let ids = IdShift {
            base: DEFAULT_UID_BASE,
        };
        rfs::fchown(
            &dir_fd,
            Some(rfs::Uid::from_raw(ids.base)),
            Some(rfs::Gid::from_raw(ids.base)),
        )
        .map_err(|e| io_at(format!("chown {}", dir.display()))(e.into()))?;
        let keep_blob = expect.blob.as_ref().is_none_or(|(d, _)| !store.has_blob(d));
        let copy = if keep_blob {
            Some(BufWriter::with_capacity(
                256 << 10,
                File::create(&blob_tmp).map_err(io_at(format!("create {}", blob_tmp.display())))?,
            ))
        } else {
            None
        };
        let limit = expect.blob.as_ref().map_or(u64::MAX, |(_, size)| *size);
        let mut hashing = HashingReader::new(reader, copy, limit);
        let unpacked =
            unpack::unpack(&mut hashing, dir_fd.as_fd(), ids, limits).map_err(|source| {
                ImageError::Layer {
                    layer: shown.to_string(),
                    source,
                }
            })?;
        let (blob, size, _) = hashing
            .finish()
            .map_err(io_at(format!("read layer {shown}")))?;
        if let Some((expected, expected_size)) = &expect.blob {
            if blob != *expected || size != *expected_size {
                return Err(ImageError::DigestMismatch {
                    what: "layer blob",
                    expected: expected.to_string(),
                    actual: format!("{blob} ({size} bytes)"),
                });
            }
        }
        if let Some(expected) = &expect.diff_id {
            if unpacked.diff_id != *expected {
                return Err(ImageError::DigestMismatch {
                    what: "layer diff_id",
                    expected: expected.to_string(),
                    actual: unpacked.diff_id.to_string(),
                });
            }
        }
        if keep_blob {
            store.install_blob(&blob_tmp, &blob)?;
        }
        store.install_layer(&dir, &unpacked.diff_id)?;
        Ok(LayerDone {
            blob,
            size,
            diff_id: unpacked.diff_id.clone(),
            compression: unpacked.compression,
            unpacked_bytes: unpacked.file_bytes,
        })
    })();
    if result.is_err() {
        let _ = remove_tree(&dir);
        let _ = std::fs::remove_file(&blob_tmp);
    }
    result
}

/// Imports a root filesystem tarball (tar, tar.gz, tar.zst) as a one-layer image `name`.
pub fn import(
    store: &Store,
    path: &Path,
    name: &str,
    opts: &LoadOptions,
) -> Result<ImageRecord, ImageError> {
    let name = normalize_name(name).map_err(ImageError::Reference)?;
    let _guard = store.load_guard()?;
    let file = File::open(path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            input_err(path, "does not exist")
        } else {
            input_err(path, e.to_string())
        }
    })?;
    if file.metadata().is_ok_and(|m| m.is_dir()) {
        return Err(input_err(path, "is a directory — hint: `nsbox import` takes a tarball (tar -C DIR -c . > rootfs.tar); an OCI layout directory is loaded with `nsbox load`"));
    }
    let total = file.metadata().map(|m| m.len()).unwrap_or(0);
    let read = AtomicU64::new(0);
    let finished = AtomicUsize::new(0);
    let all_done = AtomicBool::new(false);
    let done = std::thread::scope(|scope| {
        if opts.progress {
            scope.spawn(|| progress_line("unpacking", &read, total, &finished, 1, &all_done));
        }
        let result = unpack_stream(
            store,
            Counted {
                inner: file,
                count: &read,
            },
            &Expect {
                blob: None,
                diff_id: None,
            },
            opts.limits,
            &path.display().to_string(),
        );
        all_done.store(true, Ordering::Relaxed);
        result
    })?;
    let platform = oci::host_platform();
    let config = serde_json::json!({
        "architecture": platform.architecture,
        "os": "linux",
        "config": { "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"] },
        "rootfs": { "type": "layers", "diff_ids": [done.diff_id.to_string()] },
        "history": [ { "created_by": "nsbox import" } ],
    });
    let config_bytes =
        serde_json::to_vec(&config).map_err(|e| ImageError::Invalid(e.to_string()))?;
    let config_digest = Digest::of(&config_bytes);
    let layer = LayerRecord {
        blob: done.blob.clone(),
        media_type: layer_media_type(done.compression).to_string(),
        size: done.size,
        diff_id: done.diff_id.clone(),
        unpacked_bytes: done.unpacked_bytes,
    };
    let (manifest_digest, manifest_bytes) = synthesize_manifest(
        &(config_digest.clone(), config_bytes.clone()),
        std::slice::from_ref(&layer),
    )?;
    store_doc(store, &config_digest, &config_bytes)?;
    store_doc(store, &manifest_digest, &manifest_bytes)?;
    let parsed: ImageConfig = parse_json("image config", &config_bytes)?;
    let record = ImageRecord {
        digest: manifest_digest,
        names: vec![name],
        manifest_size: manifest_bytes.len() as u64,
        config: config_digest,
        config_size: config_bytes.len() as u64,
        layers: vec![layer],
        run: parsed.config.unwrap_or_default(),
        architecture: platform.architecture,
        os: platform.os,
        loaded: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        index_digest: None,
        build_hash: None,
    };
    add_to_index(store, std::slice::from_ref(&record))?;
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stems_become_repository_names() {
        assert_eq!(source_stem(Path::new("/x/My Image.tar.gz")), "my-image");
        assert_eq!(source_stem(Path::new("busybox-oci")), "busybox-oci");
        assert_eq!(source_stem(Path::new("/x/.tar")), "image");
    }

    #[test]
    fn archive_names_are_cleaned() {
        assert_eq!(clean_name("./blobs//sha256/x"), "blobs/sha256/x");
    }
}
