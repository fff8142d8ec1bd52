//! Applying a [`RootfsPlan`](crate::rootfs::RootfsPlan): the privileged interpreter. Runs in the sandbox's setup child, as
//! real root, inside the sandbox's fresh mount namespace, before any workload code exists.
//!
//! Every path that an image, a rootfs directory or the workload could influence is resolved
//! without following symlinks out of the root: lower layers are walked component by component
//! with O_NOFOLLOW, and targets inside the new root are opened with openat2(RESOLVE_IN_ROOT)
//! and mounted on through their file descriptor.
//!
//! The stages, in the order the setup child calls them:
//! - `sources`: open the host paths the plan binds or copies, while the host is reachable;
//! - `newroot`: private mounts, scratch tmpfs, the upper layer (`upper`), the overlay,
//!   pivot_root;
//! - `mounts`: the plan's mount operations inside the new root, through the `syscall`
//!   seam so their order and flags are unit-tested without root.
//!
//! The interpreter decides nothing the plan could decide: owners, flags and order all come
//! from the plan.

mod error;
mod mounts;
mod newroot;
mod sources;
pub(crate) mod syscall;
mod upper;

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{self as rfs, Mode, OFlags};

pub use error::RootfsError;
pub use mounts::apply_mounts;
pub use newroot::{build_new_root, pivot_into};
pub use sources::{open_host_sources, HostSource};
pub use upper::prepare_layer;

/// Maps the sandbox's own ids to host ids (inside id N is host id base + N).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMap {
    pub base: u32,
}

impl IdMap {
    fn uid(self, inside: u32) -> rfs::Uid {
        rfs::Uid::from_raw(self.base + inside)
    }
    fn gid(self, inside: u32) -> rfs::Gid {
        rfs::Gid::from_raw(self.base + inside)
    }
}

/// Called with a phase name each time a phase of the build ends (for `--timings`).
pub type Marker<'a> = &'a mut dyn FnMut(&'static str);

fn open_dir(dir: BorrowedFd<'_>, path: &Path) -> io::Result<OwnedFd> {
    rfs::openat(
        dir,
        path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(error::rustix_err)
}

fn relative_to_root(path: &Path) -> &Path {
    path.strip_prefix("/").unwrap_or(path)
}
