//! The sandbox's network namespace. With `--net none` (the default) a sandbox gets a namespace
//! of its own with only loopback, up. The supervisor creates it while the setup child builds
//! the filesystem (creating a network namespace is the slowest part of clone, ~0.5 ms, so doing
//! it in parallel takes it off the start-up path), then hands it to the child, which joins it
//! with setns before anything inside depends on it.
//!
//! With `--net filtered` the namespace then also gets routes through loopback, an nftables
//! ruleset and nsbox's resolver and egress proxy ([`egress`]), which enforce [`policy`]:
//! [`addresses`] is the address plan they share; [`nft`], [`netlink`] and [`rtnl`] speak to
//! the kernel; [`resolver`] with [`dnswire`], and [`proxy`] with [`sniff`], serve the sandbox;
//! [`events`] reports their decisions, and [`nflog`] what the kernel's rules reject on their
//! own.
//!
//! This module never changes the host's network: everything it makes lives inside the
//! sandbox's namespace and dies with it.

pub mod addresses;
pub mod credential;
pub mod credential_http;
pub mod dnswire;
pub mod egress;
pub mod events;
pub mod netlink;
pub mod nflog;
pub mod nft;
pub mod policy;
pub mod proxy;
pub mod ranges;
pub mod resolver;
pub mod rtnl;
pub mod sniff;

pub use egress::{prepare_filtered_namespace, Egress, Prepared};
pub use events::NetEvent;
pub use policy::{EgressPolicy, PolicyError};

use std::io;
use std::os::fd::OwnedFd;

use rustix::fs::{Mode, OFlags};

/// Why the network namespace could not be made.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(
        "cannot create a network namespace: {0} — hint: `nsbox doctor` checks namespace support"
    )]
    Create(io::Error),
    #[error("cannot bring up loopback in the sandbox's network namespace: {0}")]
    Loopback(io::Error),
    #[error("cannot open the new network namespace: {0}")]
    Open(io::Error),
    #[error("cannot return to the host's network namespace: {0}")]
    Return(io::Error),
    #[error("cannot {step}: {source} — hint: `nsbox doctor` checks nf_tables support (modules nf_tables, nft_redir, nft_reject_inet, nf_nat)")]
    Filtered {
        step: &'static str,
        source: io::Error,
    },
    #[error("cannot join the network namespace {}: {reason}", path.display())]
    Join {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("no upstream DNS resolver: /etc/resolv.conf lists no nameserver — hint: give one with --dns-upstream ADDR (or [network] dns_upstream in the profile)")]
    NoUpstream,
    #[error("cannot start the filtered network's resolver and proxy: {0}")]
    Runtime(io::Error),
}

/// Opens the network namespace file at `path` (/run/netns/NAME, /proc/PID/ns/net) for a
/// sandbox to join; anything that is not a namespace file is refused here, one of another
/// type by the kernel when joined.
pub fn open_namespace(path: &std::path::Path) -> Result<OwnedFd, NetError> {
    crate::sys::process::open_namespace(path).map_err(|e| NetError::Join {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Creates a new network namespace with loopback up and returns a descriptor for it. The
/// calling thread enters it to set it up and returns to its own namespace before this returns.
pub fn create_isolated_namespace() -> Result<OwnedFd, NetError> {
    let open = |path: &str| {
        rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| NetError::Open(io::Error::from_raw_os_error(e.raw_os_error())))
    };
    let home = open("/proc/thread-self/ns/net")?;
    crate::sys::process::unshare(crate::sys::process::flags::NEWNET).map_err(NetError::Create)?;
    let created = crate::sys::net::loopback_up()
        .map_err(NetError::Loopback)
        .and_then(|()| open("/proc/thread-self/ns/net"));
    // Back home whatever happened: the caller's own sockets must not end up in the sandbox.
    crate::sys::process::setns(
        std::os::fd::AsFd::as_fd(&home),
        crate::sys::process::flags::NEWNET,
    )
    .map_err(NetError::Return)?;
    created
}
