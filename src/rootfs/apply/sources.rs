//! The host paths a plan binds or copies, opened while the host's filesystem is still
//! reachable (before pivot_root): detached mount trees for binds, plain descriptors for copies.

use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::{FileType, Mode, OFlags};
use rustix::mount::{self as rmount, OpenTreeFlags};

use crate::host::path::{open_no_follow, Access};
use crate::rootfs::plan::{BindIdmap, MountOp, RootfsPlan};
use crate::sys;

use super::error::{fail, rustix_err};
use super::RootfsError;

/// A host path opened before pivot_root, for a bind mount or a copy.
#[derive(Debug)]
pub enum HostSource {
    /// A detached copy of a mount tree (open_tree), ready to attach.
    Tree { fd: OwnedFd, is_dir: bool },
    /// An open file or directory to copy from.
    Copy { fd: OwnedFd, is_dir: bool },
}

/// Opens every host source of the plan while the host's filesystem is still reachable. A
/// writable bind with an id mapping in the plan becomes an idmapped mount; where that cannot
/// be, it stays a plain bind and `warnings` says so.
pub fn open_host_sources(
    plan: &RootfsPlan,
    warnings: &mut Vec<String>,
) -> Result<Vec<HostSource>, RootfsError> {
    let mut out = Vec::with_capacity(plan.host_sources.len());
    for (index, path) in plan.host_sources.iter().enumerate() {
        let is_bind = plan
            .mounts
            .iter()
            .any(|op| matches!(op, MountOp::Bind { source, .. } if *source == index));
        // Opened without following a link anywhere in the path (crate::host::path), then
        // bound or copied from the descriptor, never by path again.
        let access = if is_bind { Access::Path } else { Access::Read };
        let (opened, st) = open_no_follow(path, access)
            .map_err(|e| fail("open source", path)(std::io::Error::other(e.reason())))?;
        let is_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
        if is_bind {
            let fd = rmount::open_tree(
                &opened,
                "",
                OpenTreeFlags::OPEN_TREE_CLONE
                    | OpenTreeFlags::OPEN_TREE_CLOEXEC
                    | OpenTreeFlags::AT_RECURSIVE
                    | OpenTreeFlags::AT_EMPTY_PATH,
            )
            .map_err(|e| fail("open mount source", path)(rustix_err(e)))?;
            if let Some(idmap) = plan.bind_idmaps.get(&index) {
                if let Err(why) = idmap_tree(&fd, idmap, (st.st_uid, st.st_gid)) {
                    warnings.push(format!(
                        "--mount {}:rw is not idmapped ({why}): the sandbox writes there as its own host uid, files of the directory's owner show as nobody",
                        path.display()
                    ));
                }
            }
            out.push(HostSource::Tree { fd, is_dir });
        } else {
            out.push(HostSource::Copy { fd: opened, is_dir });
        }
    }
    Ok(out)
}

/// Applies a writable bind's id mapping to its detached tree. The owner the mapping was made
/// for must still be the directory's (it was read by the supervisor, before this child
/// opened the path again).
fn idmap_tree(tree: &OwnedFd, idmap: &BindIdmap, owner: (u32, u32)) -> Result<(), String> {
    if owner != (idmap.uid, idmap.gid) {
        return Err(format!(
            "its owner changed from {}:{} to {}:{} meanwhile",
            idmap.uid, idmap.gid, owner.0, owner.1
        ));
    }
    // A path nsbox made (the supervisor's descriptor), not one from the user.
    let userns = rustix::fs::open(
        &idmap.userns,
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("its user namespace: {e}"))?;
    sys::fs::set_mount_idmap(tree.as_fd(), userns.as_fd()).map_err(|e| match e.raw_os_error() {
        Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => {
            format!("the filesystem or kernel cannot idmap mounts: {e}")
        }
        _ => e.to_string(),
    })
}
