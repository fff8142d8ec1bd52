//! The content-addressed image store under nsbox's state root (default `/var/lib/nsbox`):
//!
//! ```text
//! <root>/                 root-only (0700), checked on every open
//!   index.json            the images: names, manifest/config digests, layers, run defaults
//!   index.lock            flock: writers of index.json take it exclusively
//!   gc.lock               flock: loads hold it shared, garbage collection exclusively
//!   blobs/sha256/<hex>    manifests, configs and layer blobs exactly as loaded (for `save`)
//!   layers/<hex>/         each layer unpacked once, by diff_id, shared by images and sandboxes
//!   layers/snapshot-<id>/ a fork's snapshot layer (`crate::snapshot::layer`): in no image,
//!                         kept only while a sandbox holds its lease
//!   tmp/                  unpacks and downloads in progress (renamed into place when complete)
//! ```
//!
//! Consistency: blobs and layers appear complete or not at all (written under `tmp/`, then
//! renamed); index.json is replaced atomically under `index.lock`, so readers never lock.
//! Layers are siblings on one filesystem, never nested (overlayfs refuses overlapping layers).
//! A sandbox holds a shared flock on every layer it uses for its whole life; garbage
//! collection deletes a layer only after taking an exclusive flock on it, so it never removes
//! what a running sandbox uses, and waits for loads in progress (`gc.lock`).

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, FileType, FlockOperation, Mode, OFlags, ResolveFlags};
use serde::{Deserialize, Serialize};

use super::digest::Digest;
use super::oci::RunConfig;
use super::reference::Reference;
use super::ImageError;

/// Where nsbox keeps state when neither `--state-root` nor `NSBOX_STATE_ROOT` says otherwise.
pub const DEFAULT_STATE_ROOT: &str = "/var/lib/nsbox";

/// The state root: the flag, else `NSBOX_STATE_ROOT`, else [`DEFAULT_STATE_ROOT`].
pub fn state_root(flag: Option<&Path>) -> PathBuf {
    if let Some(dir) = flag {
        return dir.to_path_buf();
    }
    match std::env::var_os("NSBOX_STATE_ROOT") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(DEFAULT_STATE_ROOT),
    }
}

const INDEX_VERSION: u32 = 1;

/// Everything the store knows about its images.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StoreIndex {
    pub version: u32,
    pub images: Vec<ImageRecord>,
}

/// One image: a manifest, its config and its layers (bottom first, as in the manifest).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageRecord {
    /// The manifest's digest: the image's identity.
    pub digest: Digest,
    /// `name:tag` references; may be empty (then only the digest finds it).
    pub names: Vec<String>,
    pub manifest_size: u64,
    pub config: Digest,
    pub config_size: u64,
    pub layers: Vec<LayerRecord>,
    pub run: RunConfig,
    pub architecture: String,
    pub os: String,
    /// When the image was loaded (seconds since the epoch).
    pub loaded: u64,
    /// The digest of the multi-platform index it was pulled through, if any: a reference
    /// pinned to that digest finds this image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_digest: Option<Digest>,
    /// For an image `nsbox build` made: the hash of its recipe and base (an unchanged recipe
    /// is not built again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_hash: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LayerRecord {
    /// The blob as stored (compressed or not).
    pub blob: Digest,
    pub media_type: String,
    pub size: u64,
    /// sha256 of the uncompressed tar: the unpacked layer's name.
    pub diff_id: Digest,
    /// Bytes of file data in the unpacked layer.
    pub unpacked_bytes: u64,
}

impl ImageRecord {
    /// Bytes of file data in all layers.
    pub fn unpacked_bytes(&self) -> u64 {
        self.layers.iter().map(|l| l.unpacked_bytes).sum()
    }

    /// Bytes of the stored blobs (what `save` writes).
    pub fn blob_bytes(&self) -> u64 {
        self.manifest_size + self.config_size + self.layers.iter().map(|l| l.size).sum::<u64>()
    }
}

/// An exclusive or shared flock, released on drop.
#[derive(Debug)]
pub struct FileLock {
    _fd: OwnedFd,
}

/// The layers of an image, locked for as long as this lives (a sandbox's lease).
#[derive(Debug)]
pub struct Lease {
    /// Overlay lower directories, top layer first.
    pub layers: Vec<PathBuf>,
    _locks: Vec<OwnedFd>,
}

/// What garbage collection removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GcReport {
    pub layers: usize,
    pub blobs: usize,
    pub bytes: u64,
    /// Unreferenced layers kept because a running sandbox uses them.
    pub in_use: usize,
    pub temporaries: usize,
}

/// The store at one state root.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> ImageError {
    let what = what.into();
    move |source| ImageError::Io { what, source }
}

fn errno(what: impl Into<String>) -> impl FnOnce(rustix::io::Errno) -> ImageError {
    let what = what.into();
    move |e| ImageError::Io {
        what,
        source: io::Error::from_raw_os_error(e.raw_os_error()),
    }
}

/// Creates `path` as a root-owned directory no one else can enter, or checks that what is
/// there is exactly that (a store others could write to would let them change every image).
fn private_dir(path: &Path, create: bool) -> Result<bool, ImageError> {
    if create {
        match rfs::mkdir(path, Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(rustix::io::Errno::ACCESS) | Err(rustix::io::Errno::PERM) => {
                return Err(ImageError::Store {
                    path: path.to_path_buf(),
                    reason:
                        "permission denied — hint: the image store is root's; run nsbox as root"
                            .into(),
                })
            }
            Err(e) => return Err(errno(format!("create {}", path.display()))(e)),
        }
    }
    let st = match rfs::lstat(path) {
        Ok(st) => st,
        Err(rustix::io::Errno::NOENT) if !create => return Ok(false),
        Err(e) => return Err(errno(format!("inspect {}", path.display()))(e)),
    };
    let euid = rustix::process::geteuid().as_raw();
    let reason = if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        Some("not a directory (a symlink or file is there)".to_string())
    } else if st.st_uid != euid {
        Some(format!(
            "owned by uid {}, not by uid {euid} (nsbox's user){}",
            st.st_uid,
            if st.st_uid == 0 {
                " — hint: the image store is root's; run nsbox as root"
            } else {
                ""
            }
        ))
    } else if st.st_mode & 0o077 != 0 {
        Some(format!(
            "open to other users (mode {:o}; the store must be 0700)",
            st.st_mode & 0o7777
        ))
    } else {
        None
    };
    match reason {
        Some(reason) => Err(ImageError::Store {
            path: path.to_path_buf(),
            reason,
        }),
        None => Ok(true),
    }
}

fn lock(path: &Path, op: FlockOperation) -> Result<Option<FileLock>, ImageError> {
    let fd = rfs::open(
        path,
        OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(errno(format!("open {}", path.display())))?;
    match rfs::flock(&fd, op) {
        Ok(()) => Ok(Some(FileLock { _fd: fd })),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
        Err(e) => Err(errno(format!("lock {}", path.display()))(e)),
    }
}

impl Store {
    /// Opens the store at `root`, creating it when missing.
    pub fn open(root: &Path) -> Result<Store, ImageError> {
        let store = Store {
            root: root.to_path_buf(),
        };
        if let Some(parent) = root.parent() {
            if !parent.as_os_str().is_empty() && !parent.is_dir() {
                return Err(ImageError::Store {
                    path: root.to_path_buf(),
                    reason: format!("its parent {} does not exist", parent.display()),
                });
            }
        }
        private_dir(root, true)?;
        for dir in ["blobs", "blobs/sha256", "layers", "tmp"] {
            private_dir(&root.join(dir), true)?;
        }
        Ok(store)
    }

    /// Opens an existing store for reading; None when there is none yet (no images).
    pub fn open_existing(root: &Path) -> Result<Option<Store>, ImageError> {
        if !private_dir(root, false)? {
            return Ok(None);
        }
        Ok(Some(Store {
            root: root.to_path_buf(),
        }))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    pub fn layer_path(&self, diff_id: &Digest) -> PathBuf {
        self.root.join("layers").join(diff_id.hex())
    }

    /// A fresh name under `tmp/`.
    pub fn tmp_path(&self, what: &str) -> PathBuf {
        self.root
            .join("tmp")
            .join(format!("{what}-{}", crate::ids::new_id()))
    }

    pub fn has_blob(&self, digest: &Digest) -> bool {
        rfs::lstat(self.blob_path(digest))
            .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::RegularFile)
    }

    pub fn has_layer(&self, diff_id: &Digest) -> bool {
        rfs::lstat(self.layer_path(diff_id))
            .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Directory)
    }

    /// Reads index.json (an empty index when there is none).
    pub fn index(&self) -> Result<StoreIndex, ImageError> {
        let path = self.root.join("index.json");
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(StoreIndex {
                    version: INDEX_VERSION,
                    images: Vec::new(),
                })
            }
            Err(e) => return Err(io_err(format!("read {}", path.display()))(e)),
        };
        let index: StoreIndex = serde_json::from_slice(&text).map_err(|e| ImageError::Store {
            path: path.clone(),
            reason: format!("unreadable ({e}); move it away to start an empty store"),
        })?;
        if index.version != INDEX_VERSION {
            return Err(ImageError::Store {
                path,
                reason: format!(
                    "written by another nsbox version (format {}, this nsbox reads {INDEX_VERSION})",
                    index.version
                ),
            });
        }
        Ok(index)
    }

    /// Changes index.json under its lock: reads the current index, applies `change`, and
    /// replaces the file atomically.
    pub fn update_index<T>(
        &self,
        change: impl FnOnce(&mut StoreIndex) -> Result<T, ImageError>,
    ) -> Result<T, ImageError> {
        let _lock = lock(&self.root.join("index.lock"), FlockOperation::LockExclusive)?;
        let mut index = self.index()?;
        let out = change(&mut index)?;
        let tmp = self.tmp_path("index");
        let write = || -> io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(&index).map_err(io::Error::other)?)?;
            // No fsync: on ext4 (data=ordered) it would flush every layer file the load just
            // wrote, tripling a load's time; the rename keeps the index whole (see README,
            // Known limits, for what a power loss can cost).
            std::fs::rename(&tmp, self.root.join("index.json"))
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_file(&tmp);
            return Err(io_err("write the image index")(e));
        }
        Ok(out)
    }

    /// Held shared by every load while it writes blobs and layers not yet in the index.
    pub fn load_guard(&self) -> Result<FileLock, ImageError> {
        lock(&self.root.join("gc.lock"), FlockOperation::LockShared)?
            .ok_or_else(|| ImageError::Invalid("could not lock the image store".into()))
    }

    /// `nsbox rmi`: each of `images` by name loses that name (the image goes with its last
    /// one); by digest, the image goes. What was done, a line each ("untagged NAME",
    /// "deleted DIGEST"); the layers and blobs are left for [`Store::collect_garbage`].
    pub fn remove_images(&self, images: &[String]) -> Result<Vec<String>, ImageError> {
        self.update_index(|index| {
            let mut messages = Vec::new();
            for text in images {
                let digest = self.resolve(index, text)?.digest.clone();
                let by_name = matches!(
                    crate::image::reference::Reference::parse(text),
                    Ok(crate::image::reference::Reference::Name(_))
                );
                let Some(pos) = index.images.iter().position(|i| i.digest == digest) else {
                    continue;
                };
                if by_name {
                    let name = crate::image::reference::normalize_name(text)
                        .map_err(ImageError::Reference)?;
                    index.images[pos].names.retain(|n| *n != name);
                    messages.push(format!("untagged {name}"));
                    if !index.images[pos].names.is_empty() {
                        continue;
                    }
                }
                index.images.remove(pos);
                messages.push(format!("deleted {digest}"));
            }
            Ok(messages)
        })
    }

    /// Moves a complete blob from `tmp` into place.
    pub fn install_blob(&self, tmp: &Path, digest: &Digest) -> Result<(), ImageError> {
        std::fs::rename(tmp, self.blob_path(digest)).map_err(io_err(format!("store blob {digest}")))
    }

    /// Moves a complete layer directory from `tmp` into place. When another nsbox installed
    /// the same layer meanwhile, that one is kept and `tmp` removed.
    pub fn install_layer(&self, tmp: &Path, diff_id: &Digest) -> Result<(), ImageError> {
        match rfs::rename(tmp, self.layer_path(diff_id)) {
            Ok(()) => Ok(()),
            Err(rustix::io::Errno::EXIST) | Err(rustix::io::Errno::NOTEMPTY) => {
                remove_tree(tmp).map_err(io_err(format!("remove {}", tmp.display())))
            }
            Err(e) => Err(errno(format!("store layer {diff_id}"))(e)),
        }
    }

    /// Finds the image `reference` names.
    pub fn resolve<'a>(
        &self,
        index: &'a StoreIndex,
        text: &str,
    ) -> Result<&'a ImageRecord, ImageError> {
        let reference = Reference::parse(text).map_err(ImageError::Reference)?;
        let not_found = || ImageError::NotFound {
            reference: text.to_string(),
        };
        match reference {
            Reference::Name(name) => index
                .images
                .iter()
                .find(|i| i.names.contains(&name))
                .ok_or_else(not_found),
            Reference::Digest(d) => index
                .images
                .iter()
                .find(|i| i.digest == d || i.index_digest.as_ref() == Some(&d))
                .ok_or_else(not_found),
            Reference::Prefix(prefix) => {
                let found: Vec<_> = index
                    .images
                    .iter()
                    .filter(|i| i.digest.hex().starts_with(&prefix))
                    .collect();
                match found.as_slice() {
                    [one] => Ok(one),
                    [] => {
                        // A hex-looking name ("cafe42") may still be a name.
                        let name = super::reference::normalize_name(text)
                            .map_err(ImageError::Reference)?;
                        index
                            .images
                            .iter()
                            .find(|i| i.names.contains(&name))
                            .ok_or_else(not_found)
                    }
                    many => Err(ImageError::Reference(
                        super::reference::ReferenceError::Ambiguous {
                            prefix: text.to_string(),
                            count: many.len(),
                        },
                    )),
                }
            }
        }
    }

    /// Where `nsbox fork` installs the snapshot layer `id`.
    pub fn snapshot_layer_path(&self, id: &str) -> PathBuf {
        self.root.join("layers").join(format!("snapshot-{id}"))
    }

    /// Moves a complete snapshot layer from `tmp` into place, leased: no image names it, so
    /// garbage collection removes it as soon as nobody holds the lease (the lock is taken
    /// before the rename, so there is no moment it could be collected while still wanted).
    pub fn install_snapshot_layer(&self, tmp: &Path, id: &str) -> Result<Lease, ImageError> {
        let path = self.snapshot_layer_path(id);
        let fd = rfs::open(
            tmp,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno(format!("open {}", tmp.display())))?;
        rfs::flock(&fd, FlockOperation::LockShared)
            .map_err(errno(format!("lock {}", tmp.display())))?;
        rfs::rename(tmp, &path).map_err(errno(format!("store snapshot layer {id}")))?;
        Ok(Lease {
            layers: vec![path],
            _locks: vec![fd],
        })
    }

    /// Leases snapshot layers already in place (a fork of a fork stacks its parent's too);
    /// fails when one is gone or being removed.
    pub fn lease_snapshot_layers(&self, dirs: &[PathBuf]) -> Result<Lease, ImageError> {
        let mut locks = Vec::with_capacity(dirs.len());
        for dir in dirs {
            let gone = || {
                ImageError::Store {
                path: dir.clone(),
                reason: "a snapshot layer of the session (a fork) is missing, being removed, or in another store — hint: fork with the --state-root the session was made with".into(),
            }
            };
            if dir.parent() != Some(&self.root.join("layers"))
                || !dir
                    .file_name()
                    .is_some_and(|n| n.as_bytes().starts_with(b"snapshot-"))
            {
                return Err(gone());
            }
            locks.push(lock_layer_dir(dir).ok_or_else(gone)?);
        }
        Ok(Lease {
            layers: dirs.to_vec(),
            _locks: locks,
        })
    }

    /// Locks the image's layers (shared) for a sandbox's life; top layer first.
    pub fn lease(&self, image: &ImageRecord) -> Result<Lease, ImageError> {
        let mut layers = Vec::with_capacity(image.layers.len());
        let mut locks = Vec::with_capacity(image.layers.len());
        let mut seen = BTreeSet::new();
        for layer in image.layers.iter().rev() {
            // The same layer twice in one image (rare, but valid) is one lower directory.
            if !seen.insert(layer.diff_id.clone()) {
                continue;
            }
            let path = self.layer_path(&layer.diff_id);
            let gone = || ImageError::Store {
                path: path.clone(),
                reason: format!(
                    "layer {} of image {} is missing or being removed — hint: load the image again",
                    layer.diff_id.short(),
                    image.digest.short()
                ),
            };
            let fd = lock_layer_dir(&path).ok_or_else(gone)?;
            layers.push(path);
            locks.push(fd);
        }
        Ok(Lease {
            layers,
            _locks: locks,
        })
    }

    /// Removes blobs and layers no image references, layers no sandbox uses, and leftovers of
    /// interrupted loads. With `wait`, waits for loads in progress; without, returns None when
    /// one is running.
    pub fn collect_garbage(&self, wait: bool) -> Result<Option<GcReport>, ImageError> {
        let op = if wait {
            FlockOperation::LockExclusive
        } else {
            FlockOperation::NonBlockingLockExclusive
        };
        let Some(_gc) = lock(&self.root.join("gc.lock"), op)? else {
            return Ok(None);
        };
        let mut report = GcReport::default();
        // No load runs now: everything under tmp/ is a leftover — but for an index being
        // replaced (`tag` and `rmi` write it without gc.lock), so its lock is taken too.
        let _index = lock(&self.root.join("index.lock"), FlockOperation::LockExclusive)?;
        for entry in read_dir(&self.root.join("tmp"))? {
            let path = self.root.join("tmp").join(&entry);
            let removed = match rfs::lstat(&path) {
                Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                    remove_tree(&path).is_ok()
                }
                Ok(_) => std::fs::remove_file(&path).is_ok(),
                Err(_) => false,
            };
            if removed {
                report.temporaries += 1;
            }
        }
        drop(_index);
        // The index cannot gain references while we hold gc.lock (only loads add images, and
        // `tag` only adds names), so a snapshot is enough.
        let index = self.index()?;
        let mut blobs: BTreeSet<String> = BTreeSet::new();
        let mut layers: BTreeSet<String> = BTreeSet::new();
        for image in &index.images {
            blobs.insert(image.digest.hex().to_string());
            blobs.insert(image.config.hex().to_string());
            for layer in &image.layers {
                blobs.insert(layer.blob.hex().to_string());
                layers.insert(layer.diff_id.hex().to_string());
            }
        }
        let blob_dir = self.root.join("blobs/sha256");
        for name in read_dir(&blob_dir)? {
            if blobs.contains(&name) {
                continue;
            }
            let path = blob_dir.join(&name);
            let size = rfs::lstat(&path).map(|st| st.st_size as u64).unwrap_or(0);
            if std::fs::remove_file(&path).is_ok() {
                report.blobs += 1;
                report.bytes += size;
            }
        }
        let layer_dir = self.root.join("layers");
        for name in read_dir(&layer_dir)? {
            if layers.contains(&name) {
                continue;
            }
            let path = layer_dir.join(&name);
            let Ok(fd) = rfs::open(
                &path,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            ) else {
                continue;
            };
            if rfs::flock(&fd, FlockOperation::NonBlockingLockExclusive).is_err() {
                report.in_use += 1;
                continue;
            }
            let trash = self.tmp_path("trash");
            if rfs::rename(&path, &trash).is_ok() {
                drop(fd);
                report.bytes += tree_bytes(&trash);
                if remove_tree(&trash).is_ok() {
                    report.layers += 1;
                }
            }
        }
        Ok(Some(report))
    }
}

/// A shared lock on the layer directory at `path`, or None when it is missing or being
/// removed (garbage collection renames a layer away before deleting it).
fn lock_layer_dir(path: &Path) -> Option<OwnedFd> {
    let fd = rfs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    rfs::flock(&fd, FlockOperation::NonBlockingLockShared).ok()?;
    let ours = rfs::fstat(&fd).ok()?;
    match rfs::lstat(path) {
        Ok(now) if now.st_ino == ours.st_ino && now.st_dev == ours.st_dev => Some(fd),
        _ => None,
    }
}

fn read_dir(dir: &Path) -> Result<Vec<String>, ImageError> {
    let entries = std::fs::read_dir(dir).map_err(io_err(format!("list {}", dir.display())))?;
    Ok(entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect())
}

fn open_below(root: BorrowedFd<'_>, rel: &[u8]) -> rustix::io::Result<OwnedFd> {
    let path: &OsStr = if rel.is_empty() {
        OsStr::new(".")
    } else {
        OsStr::from_bytes(rel)
    };
    rfs::openat2(
        root,
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_XDEV,
    )
}

/// Visits every directory below `path` (never following symlinks) without holding one
/// descriptor per level, so trees of any depth work; calls `f(dir, name, stat)` per entry.
fn walk(
    path: &Path,
    mut f: impl FnMut(BorrowedFd<'_>, &OsStr, &rfs::Stat) -> io::Result<()>,
    mut after_dir: impl FnMut(BorrowedFd<'_>, &[u8]) -> io::Result<()>,
) -> io::Result<()> {
    let err = |e: rustix::io::Errno| io::Error::from_raw_os_error(e.raw_os_error());
    let root = rfs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(err)?;
    // (relative path, children already pushed)
    let mut stack: Vec<(Vec<u8>, bool)> = vec![(Vec::new(), false)];
    while let Some((rel, expanded)) = stack.pop() {
        if expanded {
            after_dir(root.as_fd(), &rel)?;
            continue;
        }
        stack.push((rel.clone(), true));
        let dir = open_below(root.as_fd(), &rel).map_err(err)?;
        for entry in rfs::Dir::read_from(&dir).map_err(err)? {
            let entry = entry.map_err(err)?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let name = OsStr::from_bytes(name);
            let st = rfs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW).map_err(err)?;
            if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                let mut child = rel.clone();
                if !child.is_empty() {
                    child.push(b'/');
                }
                child.extend_from_slice(name.as_bytes());
                stack.push((child, false));
            }
            f(dir.as_fd(), name, &st)?;
        }
    }
    Ok(())
}

/// Deletes a directory tree without following symlinks (BuildKit CVE-2024-23652: a link
/// planted in a layer must not make removal delete its target).
pub fn remove_tree(path: &Path) -> io::Result<()> {
    let err = |e: rustix::io::Errno| io::Error::from_raw_os_error(e.raw_os_error());
    walk(
        path,
        |dir, name, st| {
            if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
                rfs::unlinkat(dir, name, AtFlags::empty()).map_err(err)?;
            }
            Ok(())
        },
        |root, rel| {
            if rel.is_empty() {
                return Ok(());
            }
            let (parent, name) = match rel.iter().rposition(|b| *b == b'/') {
                Some(i) => (&rel[..i], &rel[i + 1..]),
                None => (&b""[..], rel),
            };
            let parent = open_below(root, parent).map_err(err)?;
            rfs::unlinkat(&parent, OsStr::from_bytes(name), AtFlags::REMOVEDIR).map_err(err)
        },
    )?;
    std::fs::remove_dir(path)
}

/// Bytes of regular files below `path` (allocated size is not what users compare).
pub fn tree_bytes(path: &Path) -> u64 {
    let mut total = 0u64;
    let _ = walk(
        path,
        |_, _, st| {
            if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile {
                total += st.st_size as u64;
            }
            Ok(())
        },
        |_, _| Ok(()),
    );
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remove_tree_handles_depth_and_never_follows_links() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep"), "x").unwrap();
        let tree = tempfile::tempdir().unwrap();
        let root = tree.path().join("t");
        let mut deep = root.clone();
        for _ in 0..300 {
            deep.push("d");
        }
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::write(deep.join("f"), "x").unwrap();
        std::os::unix::fs::symlink(outside.path(), root.join("link")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("keep"), deep.join("l")).unwrap();
        assert_eq!(tree_bytes(&root), 1);
        remove_tree(&root).unwrap();
        assert!(!root.exists());
        assert!(outside.path().join("keep").exists());
    }

    #[test]
    fn a_store_open_to_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        Store::open(&root).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = Store::open(&root).unwrap_err().to_string();
        assert!(e.contains("0700"), "{e}");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&root, &link).unwrap();
        assert!(Store::open(&link).is_err());
    }
}
