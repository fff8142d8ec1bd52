//! The sandbox's root filesystem: what it looks like ([`plan`], pure) and how it is built
//! ([`apply`], privileged, runs only in the setup child inside the sandbox's own mount
//! namespace).
//!
//! Shape: an overlay whose lower layer is the host's root (read-only) or a given directory,
//! whose upper layer lives on a tmpfs private to the sandbox. Host user data is hidden by
//! opaque directories and whiteouts placed in the upper layer before the overlay is mounted
//! (no extra mounts), then the process pivots into the overlay and detaches the host's root.
//! Fresh /proc (with masks), /dev, /sys, /tmp and /sandbox are mounted inside, then the user's
//! binds and copies, then the root is made read-only.
//!
//! Nothing here is ever mounted in the host's mount namespace, so nothing can be left behind:
//! the mounts disappear with the sandbox's last process.

pub mod apply;
pub mod copy;
pub mod mask;
pub mod plan;

pub use plan::{HostFacts, MountOp, RootfsPlan, UpperOp};

use crate::spec::SandboxSpec;

/// The root filesystem plan for `spec`, final: what the profile hides of the host root is the
/// same for every sandbox, so it comes from the cached mask layer (built now if needed, and
/// locked for as long as the returned layer lives); without the cache the setup child makes
/// the same changes in its own upper layer. The interpreter then only follows the plan.
pub fn final_plan(spec: &SandboxSpec, host: &HostFacts) -> (RootfsPlan, Option<mask::MaskLayer>) {
    let mut plan = plan::build(spec, host);
    if plan.shared.is_empty() {
        return (plan, None);
    }
    match mask::prepare(
        &plan.shared,
        apply::IdMap {
            base: spec.uid_base,
        },
    ) {
        Ok(layer) => {
            plan.use_mask_layer(layer.path.clone());
            (plan, Some(layer))
        }
        Err(e) => {
            tracing::debug!("mask layer cache not used: {e}");
            plan.make_shared_in_upper();
            (plan, None)
        }
    }
}
