//! The sandbox's root filesystem: what it looks like ([`plan`], pure data, unit-tested; made
//! final by [`final_plan`]) and how it is built ([`apply`], the privileged interpreter, which
//! runs only in the setup child inside the sandbox's own mount namespace and decides nothing
//! the plan could). [`mask`] caches what a profile hides of the host root; [`copy`] copies host
//! files in.
//!
//! Shape: an overlay whose lower layers are the host's root (read-only) under the cached mask
//! layer, a given directory, or an image's layers; its upper layer lives on a tmpfs private to
//! the sandbox (or, for `nsbox build`, in a kept directory). Host user data is hidden by opaque
//! directories and whiteouts — in the mask layer, or in the upper layer when the cache cannot
//! be used — never by extra mounts; then the process pivots into the overlay and detaches the
//! host's root. Fresh /proc (with masks), /dev, /sys, /tmp and /sandbox are mounted inside,
//! then the user's binds and copies, the working directory, then /dev and the root are made
//! read-only.
//!
//! Nothing here is ever mounted in the host's mount namespace, so nothing can be left behind:
//! the mounts disappear with the sandbox's last process.

pub mod apply;
pub mod copy;
pub mod mask;
pub mod plan;

pub use plan::{HostFacts, MountOp, RootfsPlan, UpperOp};

use crate::spec::SandboxSpec;

/// What keeps a final plan's paths valid: the cached mask layer (locked while it lives) and
/// the idmapped clones of an image's layers (the plan names them as `/proc/PID/fd/N`). Held by
/// the sandbox's owner until the sandbox is gone.
#[derive(Debug, Default)]
pub struct PlanHold {
    _mask_layer: Option<mask::MaskLayer>,
    _idmapped_layers: Vec<std::os::fd::OwnedFd>,
    _bind_idmaps: Vec<std::os::fd::OwnedFd>,
}

/// The root filesystem plan for `spec`, final: what the profile hides of the host root is the
/// same for every sandbox, so it comes from the cached mask layer (built now if needed, and
/// locked for as long as the returned hold lives); without the cache the setup child makes
/// the same changes in its own upper layer. An image seen by a sandbox with its own host id
/// range gets idmapped clones of its layers (see [`crate::idrange`]). The interpreter then only
/// follows the plan.
pub fn final_plan(spec: &SandboxSpec, host: &HostFacts) -> std::io::Result<(RootfsPlan, PlanHold)> {
    let mut plan = plan::build(spec, host);
    let mut hold = PlanHold::default();
    // Image layers belong to the shared id range; a sandbox with its own sees them shifted.
    if spec.image.is_some() && spec.uid_base != crate::ids::DEFAULT_UID_BASE {
        hold._idmapped_layers = crate::idrange::idmap_lowers(&mut plan, spec.uid_base)?;
    }
    // Writable binds write as their directory's owner where the kernel can idmap them.
    hold._bind_idmaps = crate::idrange::idmap_writable_binds(&mut plan, spec);
    if plan.shared.is_empty() {
        return Ok((plan, hold));
    }
    match mask::prepare(
        &plan.shared,
        apply::IdMap {
            base: spec.uid_base,
        },
    ) {
        Ok(layer) => {
            plan.use_mask_layer(layer.path.clone());
            hold._mask_layer = Some(layer);
        }
        Err(e) => {
            tracing::debug!("mask layer cache not used: {e}");
            plan.make_shared_in_upper();
        }
    }
    Ok((plan, hold))
}
