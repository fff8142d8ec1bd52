//! The sandbox's network namespace. With `--net none` (the default) a sandbox gets a namespace
//! of its own with only loopback, up. It is created by a supervisor thread while the setup
//! child builds the filesystem (creating a network namespace is the slowest part of clone, so
//! doing it in parallel takes it off the start-up path), then handed to the child, which joins
//! it with setns before anything inside depends on it.
//!
//! This module creates namespaces only; it never changes the host's network.

use std::io;
use std::os::fd::OwnedFd;

use rustix::fs::{Mode, OFlags};

/// Why the network namespace could not be made.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot create a network namespace: {0} — hint: `nsbox doctor` checks namespace support")]
    Create(io::Error),
    #[error("cannot bring up loopback in the sandbox's network namespace: {0}")]
    Loopback(io::Error),
    #[error("cannot open the new network namespace: {0}")]
    Open(io::Error),
}

/// Moves the calling thread into a new network namespace with loopback up and returns a
/// descriptor for it. Call from a thread that exists only for this: the thread stays in the
/// new namespace until it ends.
pub fn create_isolated_namespace() -> Result<OwnedFd, NetError> {
    crate::sys::process::unshare(crate::sys::process::flags::NEWNET).map_err(NetError::Create)?;
    crate::sys::net::loopback_up().map_err(NetError::Loopback)?;
    rustix::fs::open(
        "/proc/thread-self/ns/net",
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| NetError::Open(io::Error::from_raw_os_error(e.raw_os_error())))
}
