//! The host paths a plan binds or copies, opened while the host's filesystem is still
//! reachable (before pivot_root): detached mount trees for binds, plain descriptors for copies.

use std::os::fd::OwnedFd;

use rustix::fs::FileType;
use rustix::mount::{self as rmount, OpenTreeFlags};

use crate::host::path::{open_no_follow, Access};
use crate::rootfs::plan::{MountOp, RootfsPlan};

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

/// Opens every host source of the plan while the host's filesystem is still reachable.
pub fn open_host_sources(plan: &RootfsPlan) -> Result<Vec<HostSource>, RootfsError> {
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
            out.push(HostSource::Tree { fd, is_dir });
        } else {
            out.push(HostSource::Copy { fd: opened, is_dir });
        }
    }
    Ok(out)
}
