//! Image layers shown in a sandbox's own id range through idmapped mounts.
//!
//! Layers are unpacked once into the store, owned by the shared range at
//! [`DEFAULT_UID_BASE`]. A sandbox with a range of its own sees them through a detached clone
//! of each layer whose ids are shifted from the shared range to its own (`mount_setattr`
//! with `MOUNT_ATTR_IDMAP`); the overlay takes those clones as its lower layers. This needs a
//! kernel whose overlayfs accepts detached, idmapped layers; [`supported`] finds out once per
//! boot, and without it image sandboxes keep the shared range.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::CWD;
use rustix::mount::{self as rmount, OpenTreeFlags};

use crate::ids::{DEFAULT_UID_BASE, IDS_IN_SANDBOX};
use crate::rootfs::RootfsPlan;
use crate::sys::fs::set_mount_idmap;

fn errno(e: rustix::io::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

/// Points every lower layer of `plan` at an idmapped clone of it that shows the shared range's
/// ids as `to_base`'s. The returned descriptors back the `/proc/self/fd/N` paths now in the
/// plan: keep them open until the sandbox's child has been cloned (it inherits them).
pub fn idmap_lowers(plan: &mut RootfsPlan, to_base: u32) -> io::Result<Vec<OwnedFd>> {
    // Owned like the sandbox's own namespace: by the range's last id, which no file of the
    // sandbox can have (see `super::create_user_namespace`).
    let owner = to_base + IDS_IN_SANDBOX - 1;
    let userns =
        super::userns::create_mapping(DEFAULT_UID_BASE, to_base, IDS_IN_SANDBOX - 1, owner)?;
    let mut held = Vec::with_capacity(plan.lowers.len());
    for lower in &mut plan.lowers {
        let tree = idmapped_clone(lower, &userns)?;
        // Through the supervisor's descriptor table: the sandbox's child closes what it
        // inherits before it builds the root, and opens its lower layers by path.
        *lower = PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            tree.as_raw_fd()
        ));
        held.push(tree);
    }
    Ok(held)
}

fn idmapped_clone(dir: &Path, userns: &OwnedFd) -> io::Result<OwnedFd> {
    let tree = rmount::open_tree(
        CWD,
        dir,
        OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
    )
    .map_err(errno)?;
    set_mount_idmap(tree.as_fd(), userns.as_fd())?;
    Ok(tree)
}

/// Whether this kernel's overlayfs takes detached, idmapped lower layers. Tried once per boot
/// and kernel in a throw-away child with a private mount namespace (an overlay of one
/// idmapped, detached layer over a scratch tmpfs); the answer is kept in
/// `<run dir>/ids/idmapped-layers-<kernel release>`. Without a definite answer (a threaded
/// caller cannot fork), the answer is no, and nothing is kept.
pub fn supported(run_dir: &Path) -> bool {
    let release = rustix::system::uname()
        .release()
        .to_string_lossy()
        .replace('/', "_");
    let cache = super::IdRange::dir(run_dir).join(format!("idmapped-layers-{release}"));
    match std::fs::read(&cache).as_deref() {
        Ok(b"yes") => return true,
        Ok(b"no") => return false,
        _ => {}
    }
    let Some(works) = probe(&super::IdRange::dir(run_dir)) else {
        return false;
    };
    let tmp = cache.with_extension(format!("tmp{}", std::process::id()));
    if std::fs::write(&tmp, if works { "yes" } else { "no" }).is_ok() {
        let _ = std::fs::rename(&tmp, &cache);
    }
    works
}

/// Runs the trial (see [`supported`]) in `dir`; None when it could not be run at all.
fn probe(dir: &Path) -> Option<bool> {
    use crate::sys::process::{clone3_fork, exit_now, flags, Forked};
    let scratch = dir.join(format!("probe-{}", std::process::id()));
    std::fs::create_dir(&scratch).ok()?;
    let result = match clone3_fork(flags::NEWNS, None) {
        Ok(Forked::Child) => {
            let _abort = crate::sys::process::AbortOnPanic;
            exit_now(if trial(&scratch).is_ok() { 0 } else { 1 })
        }
        Ok(Forked::Parent { pidfd, .. }) => rustix::process::waitid(
            rustix::process::WaitId::PidFd(pidfd.as_fd()),
            rustix::process::WaitIdOptions::EXITED,
        )
        .ok()
        .flatten()
        .and_then(|status| status.exit_status())
        .map(|code| code == 0),
        Err(_) => None,
    };
    // The child's mounts went with its namespace; what is left is the empty directory.
    let _ = std::fs::remove_dir(&scratch);
    result
}

/// In a private mount namespace: an overlay whose only lower layer is an idmapped clone.
fn trial(scratch: &Path) -> io::Result<()> {
    use rustix::mount::{MountFlags, MountPropagationFlags};
    rmount::mount_change(
        "/",
        MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
    )
    .map_err(errno)?;
    rmount::mount("nsbox-probe", scratch, "tmpfs", MountFlags::empty(), None).map_err(errno)?;
    for d in ["lower", "upper", "work", "mnt"] {
        std::fs::create_dir(scratch.join(d))?;
    }
    // Owned by the shared range's first id, which owns no sandbox's namespace (a process of
    // a namespace's owner has every capability in it).
    let base = super::IdRange::base_of(1);
    let userns =
        super::userns::create_mapping(DEFAULT_UID_BASE, base, IDS_IN_SANDBOX, DEFAULT_UID_BASE)?;
    let lower = idmapped_clone(&scratch.join("lower"), &userns)?;
    let options = format!(
        "lowerdir=/proc/self/fd/{},upperdir={},workdir={}",
        lower.as_raw_fd(),
        scratch.join("upper").display(),
        scratch.join("work").display()
    );
    let options = std::ffi::CString::new(options).map_err(io::Error::other)?;
    rmount::mount(
        "overlay",
        scratch.join("mnt"),
        "overlay",
        MountFlags::empty(),
        Some(options.as_c_str()),
    )
    .map_err(errno)
}
