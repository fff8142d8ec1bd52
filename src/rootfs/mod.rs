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

pub use plan::{build as build_plan, HostFacts, MountOp, RootfsPlan, UpperOp};
