//! Host id ranges of sandboxes, and the user namespaces that map them.
//!
//! Every sandbox used to map its ids to one shared host range and have its user namespace
//! owned by host root. The kernel keeps several per-user counters by host uid or by the owner
//! of a user namespace, so one sandbox could exhaust them for every other sandbox and for
//! root's own services (inotify instances, pending signals, epoll watches, pipe pages, file
//! descriptors in flight, message queue bytes). Here each sandbox gets a range of its own:
//!
//! - [`IdRange::allocate`] takes a free slot of [`SLOTS`] ranges of [`crate::spec::IDS_IN_SANDBOX`]
//!   ids above [`crate::spec::DEFAULT_UID_BASE`], by taking an exclusive `flock` on
//!   `<run dir>/ids/<slot>`. The kernel drops the lock when the last process holding it ends
//!   (the supervisor, and the sandbox's init, which inherits it), so a killed supervisor
//!   releases its range with its sandbox; `nsbox prune` only removes the idle lock files.
//!   Slots are taken lowest first, which keeps the set of ranges in use (and the per-range
//!   mask-layer cache) as small as the number of sandboxes running at once.
//! - [`create_user_namespace`] creates the sandbox's user namespace from a throw-away child
//!   that first becomes the range's last id (left out of the map): the namespace's owner, and so the level at which
//!   the kernel charges the namespace's ucounts in the host's namespace, is that uid and not
//!   root. Inside the new namespace the child also sets the limits the kernel lets a namespace
//!   owner set (`/proc/sys/user/max_user_namespaces` = 0).
//!
//! Image layers are unpacked once, owned by the shared range; a sandbox whose root is an image
//! sees them through idmapped clones shifted into its own range ([`idmap_lowers`]) where the
//! kernel's overlayfs takes such layers ([`idmapped_layers_supported`], tried once per boot).
//! Elsewhere image sandboxes keep mapping the shared range, with namespace owners of their
//! own still.

mod binds;
mod layers;
mod range;
mod userns;

pub use binds::idmap_writable_binds;
pub use layers::{idmap_lowers, supported as idmapped_layers_supported};
pub use range::{prune, IdRange, IdRangeError, SLOTS};
pub use userns::create_user_namespace;

use std::path::Path;

use crate::spec::SandboxSpec;

/// Where the lock files of ranges live: host ids are host-wide, so always under
/// [`crate::session::state::RUN_DIR`] (not a test's own `NSBOX_RUN_DIR`).
pub fn run_dir() -> &'static Path {
    Path::new(crate::session::state::RUN_DIR)
}

/// Takes a range for the sandbox of `spec` and points the spec at it: its ids (unless its root
/// is an image, see the module docs) and the owner of its user namespace. The range is held
/// as long as the returned value (and every process that inherited its lock) lives. Without
/// root nothing is taken (and the sandbox fails later, saying it needs root).
pub fn assign(spec: &mut SandboxSpec) -> Result<Option<IdRange>, IdRangeError> {
    if !rustix::process::geteuid().is_root() {
        return Ok(None);
    }
    let range = IdRange::allocate(run_dir(), &spec.id)?;
    // An image's layers are shown in the range through idmapped mounts where the kernel can.
    if spec.image.is_none() || layers::supported(run_dir()) {
        spec.uid_base = range.base;
    }
    spec.userns_owner = Some(range.owner());
    Ok(Some(range))
}
