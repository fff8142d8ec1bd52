//! OCI images: the content-addressed store ([`store`]), loading layouts and archives
//! ([`load`]), importing a root filesystem tarball, saving an image as an OCI archive
//! ([`save`]), and unpacking layers safely ([`unpack`], with its strict [`tar`] reader).
//!
//! What this module owns: turning untrusted image files into read-only layer directories that
//! the sandbox stacks with overlayfs, and the store's consistency (see `store`'s docs). What it
//! must not do: mount anything, or run anything from an image — the sandbox does that, inside
//! its own namespaces, from the layer directories this module leaves behind.

pub mod digest;
pub mod import;
pub mod ingest;
pub mod load;
pub mod oci;
pub mod reference;
pub mod save;
mod source;
pub mod store;
pub mod tar;
pub mod unpack;

use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, FileType, Mode, OFlags, ResolveFlags};

pub use digest::Digest;
pub use oci::RunConfig;
pub use store::{ImageRecord, Lease, Store, DEFAULT_STATE_ROOT};
pub use unpack::{Limits, UnpackError};

/// Why an image operation failed. Messages name the file or digest and, where the user can
/// do something about it, end with a hint.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{}: {reason}", path.display())]
    Input { path: PathBuf, reason: String },
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("layer {layer} refused: {source} (nothing of it was kept)")]
    Layer { layer: String, source: UnpackError },
    #[error("{what} {expected}: the content's digest is {actual} — the image is corrupt or was tampered with")]
    DigestMismatch {
        what: &'static str,
        expected: String,
        actual: String,
    },
    #[error("{what} {digest} is missing from {} — hint: the layout or archive is incomplete", path.display())]
    MissingBlob {
        what: &'static str,
        digest: String,
        path: PathBuf,
    },
    #[error("unknown media type '{media_type}' for {what} — hint: nsbox reads OCI and Docker v2 images (layers: tar, tar+gzip, tar+zstd)")]
    MediaType {
        what: &'static str,
        media_type: String,
    },
    #[error("image '{reference}' not found — hint: `nsbox images` lists the loaded images; `nsbox load` and `nsbox import` add some")]
    NotFound { reference: String },
    #[error("{0}")]
    Reference(#[from] reference::ReferenceError),
    #[error(
        "image '{reference}': User '{user}': {source} — hint: override it with --user UID[:GID]"
    )]
    User {
        reference: String,
        user: String,
        source: ImageUserError,
    },
    #[error("image store {}: {reason}", path.display())]
    Store { path: PathBuf, reason: String },
    #[error("{0}")]
    Invalid(String),
}

/// What a sandbox spec needs of an image: plain data (the layers are locked by the
/// [`ImageRoot`] it came from).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    /// What the user asked for, and the manifest digest it resolved to.
    pub reference: String,
    pub digest: Digest,
    /// Layer directories, top first (overlay lower layers).
    pub layers: Vec<PathBuf>,
    /// The run defaults from the image config.
    pub run: RunConfig,
    /// The image's `User`, as uid:gid (None: the image names no user).
    pub user: Option<(u32, u32)>,
}

/// An image ready to be a sandbox's root: its layers, locked while this lives.
#[derive(Debug)]
pub struct ImageRoot {
    spec: ImageSpec,
    _lease: Lease,
}

impl ImageRoot {
    pub fn spec(&self) -> ImageSpec {
        self.spec.clone()
    }
}

/// The most layers overlayfs stacks (the kernel's OVL_MAX_STACK), with one left for the
/// sandbox's own upper layer.
pub const MAX_LAYERS: usize = 499;

/// Resolves `reference` in the store at `state_root` and locks its layers.
pub fn open_root(state_root: &Path, reference: &str) -> Result<ImageRoot, ImageError> {
    let Some(store) = Store::open_existing(state_root)? else {
        return Err(ImageError::NotFound {
            reference: reference.to_string(),
        });
    };
    let index = store.index()?;
    let image = store.resolve(&index, reference)?;
    if image.layers.len() > MAX_LAYERS {
        return Err(ImageError::Invalid(format!(
            "image '{reference}' has {} layers; overlayfs stacks at most {MAX_LAYERS} — hint: flatten the image (e.g. export its root filesystem and `nsbox import` it)",
            image.layers.len()
        )));
    }
    let lease = store.lease(image)?;
    let user = match image.run.user.as_deref() {
        None | Some("") => None,
        Some(spec) => {
            Some(
                resolve_user(&lease.layers, spec).map_err(|source| ImageError::User {
                    reference: reference.to_string(),
                    user: digest::printable(spec),
                    source,
                })?,
            )
        }
    };
    Ok(ImageRoot {
        spec: ImageSpec {
            reference: reference.to_string(),
            digest: image.digest.clone(),
            layers: lease.layers.clone(),
            run: image.run.clone(),
            user,
        },
        _lease: lease,
    })
}

/// Why an image's `User` does not name ids nsbox can run as.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageUserError {
    #[error("no user '{0}' in the image's /etc/passwd")]
    NoUser(String),
    #[error("no group '{0}' in the image's /etc/group")]
    NoGroup(String),
    #[error("ids above {max} cannot be mapped into the sandbox")]
    Unmappable { max: u32 },
}

/// Resolves an image `User` ("uid", "uid:gid", "name", "name:group") against the image's own
/// /etc/passwd and /etc/group, read from its layers (top first) without following symlinks.
pub fn resolve_user(layers: &[PathBuf], spec: &str) -> Result<(u32, u32), ImageUserError> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let passwd = read_image_file(layers, "etc/passwd");
    let lookup = |text: &Option<Vec<u8>>, name: &str, gid_field: bool| -> Option<(u32, u32)> {
        let text = text.as_ref()?;
        String::from_utf8_lossy(text).lines().find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.first() != Some(&name) || fields.len() < 3 {
                return None;
            }
            let id = fields[2].parse().ok()?;
            let gid = if gid_field {
                fields.get(3)?.parse().ok()?
            } else {
                id
            };
            Some((id, gid))
        })
    };
    let (uid, primary_gid) = match user.parse::<u32>() {
        Ok(uid) => {
            // A numeric user keeps the primary group the image gives it, else group 0.
            let gid = passwd
                .as_ref()
                .and_then(|text| {
                    String::from_utf8_lossy(text).lines().find_map(|line| {
                        let f: Vec<&str> = line.split(':').collect();
                        (f.len() > 3 && f[2].parse() == Ok(uid)).then(|| f[3].parse().ok())?
                    })
                })
                .unwrap_or(0);
            (uid, gid)
        }
        Err(_) => lookup(&passwd, user, true)
            .ok_or_else(|| ImageUserError::NoUser(digest::printable(user)))?,
    };
    let gid = match group {
        None => primary_gid,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                let groups = read_image_file(layers, "etc/group");
                lookup(&groups, g, false)
                    .map(|(gid, _)| gid)
                    .ok_or_else(|| ImageUserError::NoGroup(digest::printable(g)))?
            }
        },
    };
    let max = crate::ids::IDS_IN_SANDBOX;
    if uid >= max || gid >= max {
        return Err(ImageUserError::Unmappable { max: max - 1 });
    }
    Ok((uid, gid))
}

/// A small file of the image as the overlay would show it: the top layer that has the path
/// (or a whiteout for it) decides. Symlinks anywhere on the path make it unreadable here.
pub(crate) fn read_image_file(layers: &[PathBuf], rel: &str) -> Option<Vec<u8>> {
    for layer in layers {
        let dir = rfs::open(
            layer,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ok()?;
        match rfs::openat2(
            dir.as_fd(),
            rel,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_XDEV,
        ) {
            Ok(fd) => {
                let st = rfs::fstat(&fd).ok()?;
                if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
                    return None; // a whiteout, or something that is not a file
                }
                let mut buf = Vec::new();
                io::Read::read_to_end(
                    &mut io::Read::take(std::fs::File::from(fd), 1 << 20),
                    &mut buf,
                )
                .ok()?;
                return Some(buf);
            }
            Err(rustix::io::Errno::NOENT) => {
                // An opaque parent directory in this layer hides the lower layers' file.
                let parent = Path::new(rel)
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty());
                if let Some(parent) = parent {
                    if let Ok(pfd) = rfs::openat2(
                        dir.as_fd(),
                        parent,
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_XDEV,
                    ) {
                        let mut value = [0u8; 4];
                        if rfs::fgetxattr(&pfd, "trusted.overlay.opaque", &mut value)
                            .is_ok_and(|n| value[..n] == *b"y")
                        {
                            return None;
                        }
                    }
                }
                continue;
            }
            Err(_) => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_resolve_against_the_image_files() {
        let top = tempfile::tempdir().unwrap();
        let bottom = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(bottom.path().join("etc")).unwrap();
        std::fs::write(
            bottom.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(bottom.path().join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        let layers = vec![top.path().to_path_buf(), bottom.path().to_path_buf()];
        assert_eq!(resolve_user(&layers, "app").unwrap(), (1000, 1001));
        assert_eq!(resolve_user(&layers, "app:staff").unwrap(), (1000, 50));
        assert_eq!(resolve_user(&layers, "1000").unwrap(), (1000, 1001));
        assert_eq!(resolve_user(&layers, "4242").unwrap(), (4242, 0));
        assert_eq!(resolve_user(&layers, "7:8").unwrap(), (7, 8));
        assert_eq!(
            resolve_user(&layers, "ghost").unwrap_err(),
            ImageUserError::NoUser("ghost".into())
        );
        assert!(resolve_user(&layers, "70000").is_err());
        // A file in a higher layer wins.
        std::fs::create_dir_all(top.path().join("etc")).unwrap();
        std::fs::write(top.path().join("etc/passwd"), "app:x:5:6::/:/bin/sh\n").unwrap();
        assert_eq!(resolve_user(&layers, "app").unwrap(), (5, 6));
    }
}
