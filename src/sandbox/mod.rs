//! One sandbox, from clone to teardown. Three processes take part:
//!
//! - the **supervisor** ([`supervisor`], host side, the nsbox process itself): cgroup, id maps,
//!   output relay, timeout, signals, exit status, clean-up;
//! - the **setup child / init** ([`setup`]), created with clone3 in new mount, pid, uts and
//!   ipc namespaces, then joins the network namespace the supervisor creates meanwhile: builds
//!   the root filesystem as real root, then moves into a user
//!   namespace that owns none of those namespaces, drops to the sandbox uid and becomes pid 1;
//! - the **workload**, forked by the init: seccomp last, then execve.
//!
//! They talk through [`control`] messages. No thread exists at clone time (the supervisor is
//! single-threaded), so the child can run ordinary Rust code without re-executing the binary.

pub mod control;
pub mod setup;
pub mod supervisor;

pub use supervisor::{run, Ending, Outcome, SandboxError};
