//! Pulling images from OCI distribution registries (Docker Hub, ghcr.io, a registry on
//! loopback, ...): references with Docker's rules ([`reference`]), the HTTP client with its
//! auth challenges, retries and resumed downloads ([`client`]), credentials ([`auth`]), and
//! the pull itself ([`pull`]), which verifies every digest and hands the layers to the image
//! store's unpacker.
//!
//! What this module must not do: write into the store other than through `image::load`'s
//! staging (tmp/, then rename) and index update, or send credentials anywhere but the
//! registry (and its token realm) they were saved for.

pub mod auth;
pub mod client;
pub mod pull;
pub mod reference;

use std::path::PathBuf;
use std::time::Duration;

pub use pull::{pull, PullOptions, PullReport};
pub use reference::RemoteRef;

use crate::image::ImageError;

/// How to talk to one registry (from the config file and flags).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistrySettings {
    /// Allow plain HTTP to a registry that is not on loopback.
    pub insecure_http: bool,
    /// Force HTTPS (true) or plain HTTP (false); None: HTTPS except on loopback (where a
    /// `ca_file` still means HTTPS).
    pub tls: Option<bool>,
    /// PEM certificates to trust instead of the built-in roots.
    pub ca_file: Option<PathBuf>,
    /// Base delay between retries (default 250 ms).
    pub retry_delay: Option<Duration>,
}

/// Why a pull or login failed. Each says which registry, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{0}")]
    Reference(#[from] reference::RemoteRefError),
    #[error("cannot reach registry {registry}: {reason} — hint: check the address and that the registry is up; a pull run again reuses the layers already verified")]
    Unreachable { registry: String, reason: String },
    #[error("registry {registry}: {reason} — hint: {hint}")]
    Auth {
        registry: String,
        reason: String,
        hint: String,
    },
    #[error("{what}: not found in the registry — hint: check the name and tag (or digest)")]
    NotFound { what: String },
    #[error("{url} answered HTTP {status}")]
    Http { url: String, status: u16 },
    #[error("{0}")]
    Protocol(String),
    #[error("registry {registry} is not on this machine, and plain HTTP to it is refused — hint: use its HTTPS address, or pass --insecure-http (or set insecure_http in the config) if you trust the network")]
    Insecure { registry: String },
    #[error("{0}")]
    Credentials(String),
    #[error("{0}")]
    Settings(String),
    #[error(transparent)]
    Image(#[from] ImageError),
}
