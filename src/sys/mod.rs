//! The only home of `unsafe` code in nsbox: thin, documented wrappers around the system calls
//! that rustix does not cover safely (clone3, fork/execve, signalfd, seccomp, a few ioctls and
//! prctls), and the binary's allocator ([`arena`]). Every block carries a `// SAFETY:` line.
//!
//! Where soundness depends on the caller — [`process::fork`] (single-threaded, the child never
//! returns into the parent's frames), [`fs::dup_onto`] and [`fs::close_range`] (no owner relies
//! on the descriptors replaced or closed), [`process::hide_arguments`] (no later `std::env`) —
//! the wrapper is an `unsafe fn` with a `# Safety` section, and each call site outside this
//! module allows `unsafe_code` for that function alone and says in its `// SAFETY:` line why
//! the invariant holds there. Forked children hold a [`process::AbortOnPanic`] guard: a panic
//! aborts instead of unwinding into the parent's destructors.

// Stricter than the crate: no silently truncating or sign-losing `as` casts here.
#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::error_impl_error
)]
#![allow(unsafe_code)]

pub mod arena;
pub mod fs;
pub mod mem;
pub mod net;
pub mod process;
pub mod seccomp;
pub mod signal;

/// Converts a libc return value (-1 + errno) into an `io::Result`.
fn check(ret: libc::c_long) -> std::io::Result<libc::c_long> {
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}
