//! One sandbox, from clone to teardown. Three processes take part:
//!
//! - the **host side** (the nsbox process itself): [`handle`] owns a living sandbox (its init,
//!   control socket, cgroup, network) and moves it through its lifecycle — created, started or
//!   exec'd into, killed, torn down; [`supervisor`] is the one-shot run (`nsbox exec`), a
//!   policy over a handle in the shared [`event_loop`] (a session's supervisor,
//!   `crate::session::daemon`, is the other);
//! - the **setup child / init** ([`setup`]), created with clone3 in new mount, pid, uts and
//!   ipc namespaces, then joins the network namespace the host creates meanwhile: builds
//!   the root filesystem as real root, then moves into a user
//!   namespace that owns none of those namespaces, drops to the sandbox uid and becomes pid 1;
//! - the **workload**, forked by the init: seccomp last, then execve.
//!
//! They talk through [`control`] messages. No thread exists at clone time (the host side is
//! single-threaded until then), so the child can run ordinary Rust code without re-executing
//! the binary.

// Stricter than the crate: no silently truncating or sign-losing `as` casts here.
#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::error_impl_error
)]

pub mod control;
pub mod event_loop;
pub mod handle;
pub mod setup;
pub mod supervisor;

pub use handle::{Handle, Lifecycle};
pub use supervisor::{run, Ending, Outcome, SandboxError};
