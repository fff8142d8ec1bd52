//! The only home of `unsafe` in nsbox: thin, documented wrappers around the system calls that
//! rustix does not cover safely (clone3, fork/execve, signalfd, seccomp, a few ioctls and
//! prctls). Every block carries a `// SAFETY:` line. Callers elsewhere stay in safe Rust.
#![allow(unsafe_code)]

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
