//! The ingest pipeline every way into the store shares (`nsbox load`, `nsbox import`, `nsbox
//! pull`, `nsbox build`): read and verify the small documents (digests and sizes checked before
//! parsing), then unpack every layer the store lacks — one thread per layer, as many as there
//! are cores. Each layer's bytes are read once: hashed (blob digest), copied into the blob
//! store and decompressed straight into the layer's files, the uncompressed stream hashed on
//! the way (diff_id). Only when every layer verified are the blobs and layers renamed into
//! place and the images added to the index.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::File;
use std::io::{self, BufWriter, Read};
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use rustix::fs::{self as rfs, Mode, OFlags};

use super::digest::{printable, Digest, HashingReader};
use super::oci::{self, Descriptor, ImageConfig, Manifest};
use super::store::{remove_tree, ImageRecord, LayerRecord, Store};
use super::unpack::{self, Compression, IdShift, Limits};
use super::ImageError;
use crate::ids::DEFAULT_UID_BASE;

/// How to load (`nsbox load`, `nsbox import`, the layers of a pull).
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

/// Largest manifest or index accepted.
pub(crate) const MAX_MANIFEST: u64 = 4 << 20;
/// Largest image config accepted.
pub(crate) const MAX_CONFIG: u64 = 16 << 20;

pub(crate) fn input_err(path: &Path, reason: impl Into<String>) -> ImageError {
    ImageError::Input {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

pub(crate) fn io_at(what: impl Into<String>) -> impl FnOnce(io::Error) -> ImageError {
    let what = what.into();
    move |source| ImageError::Io { what, source }
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

pub(crate) fn layer_media_type(c: Compression) -> &'static str {
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
    let bytes = serde_json::to_vec(&manifest).map_err(|e| ImageError::Io {
        what: "encode an image document".into(),
        source: e.into(),
    })?;
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

/// Stores an image made of `base`'s layers plus `layer` (gzip, already in the store) with
/// `config_bytes` as its config, named `tag`, and adds it to the index — the last step, so an
/// interrupted caller leaves no image. What `nsbox build` and `nsbox commit` share.
pub(crate) fn store_image_on(
    store: &Store,
    base: &ImageRecord,
    layer: &LayerDone,
    config_bytes: Vec<u8>,
    tag: &str,
    build_hash: Option<String>,
) -> Result<ImageRecord, ImageError> {
    let config_digest = Digest::of(&config_bytes);
    let parsed: oci::ImageConfig = parse_json("the new image's config", &config_bytes)?;
    let mut layers = base.layers.clone();
    layers.push(LayerRecord {
        blob: layer.blob.clone(),
        media_type: oci::OCI_LAYER_GZIP.to_string(),
        size: layer.size,
        diff_id: layer.diff_id.clone(),
        unpacked_bytes: layer.unpacked_bytes,
    });
    let (manifest_digest, manifest_bytes) =
        synthesize_manifest(&(config_digest.clone(), config_bytes.clone()), &layers)?;
    store_doc(store, &config_digest, &config_bytes)?;
    store_doc(store, &manifest_digest, &manifest_bytes)?;
    let record = ImageRecord {
        digest: manifest_digest,
        names: vec![tag.to_string()],
        manifest_size: manifest_bytes.len() as u64,
        config: config_digest,
        config_size: config_bytes.len() as u64,
        layers,
        run: parsed.config.unwrap_or_default(),
        architecture: base.architecture.clone(),
        os: base.os.clone(),
        loaded: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        index_digest: None,
        build_hash,
    };
    add_to_index(store, std::slice::from_ref(&record))?;
    Ok(record)
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
