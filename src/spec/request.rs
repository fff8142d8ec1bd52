//! [`ExecRequest`]: what the command line asked for, before the profile fills the gaps and
//! [`super::SandboxSpec::build`] validates it.

use std::ffi::OsString;
use std::path::PathBuf;

use crate::image::ImageSpec;
use crate::profile::NetworkMode;
use crate::units::{ByteSize, CpuQuota, Limit, Timeout};

/// What the command line asked for. `None` / empty means "the profile decides".
#[derive(Debug, Default, Clone)]
pub struct ExecRequest {
    pub command: Vec<OsString>,
    pub rootfs: Option<PathBuf>,
    /// An image from the store (resolved and locked by the caller).
    pub image: Option<ImageSpec>,
    /// With an image: replaces its Entrypoint ("" clears it).
    pub entrypoint: Option<String>,
    pub network: Option<NetworkMode>,
    /// An existing network namespace to join instead of making one (with the isolated
    /// network only): the OCI runtime's `linux.namespaces[].path` of a pod's sandbox, a file
    /// such as /run/netns/NAME or /proc/PID/ns/net. Not a command-line flag.
    pub net_namespace: Option<PathBuf>,
    /// Existing IPC and UTS namespaces to join instead of new ones (a pod's, from the OCI
    /// runtime; with the UTS one the pod's hostname is kept). Not command-line flags.
    pub ipc_namespace: Option<PathBuf>,
    pub uts_namespace: Option<PathBuf>,
    /// With the filtered network: the namespace is an OCI pod's (the runtime's
    /// `io.nsbox.net.*` annotations; see [`crate::net::prepare_filtered_namespace`]), which may
    /// be `net_namespace`. Not a command-line flag.
    pub pod_egress: bool,
    /// `--allow` / `--deny` patterns and `--dns-upstream` addresses (filtered network).
    pub allow: Vec<String>,
    pub deny: Vec<String>,
    pub dns_upstream: Vec<String>,
    pub log_network: bool,
    pub hostname: Option<String>,
    pub user: Option<(u32, u32)>,
    pub workdir: Option<PathBuf>,
    pub writable_root: bool,
    pub sandbox_size: Option<ByteSize>,
    pub tmp_size: Option<ByteSize>,
    pub root_size: Option<ByteSize>,
    pub mounts: Vec<String>,
    pub copies: Vec<String>,
    pub memory: Option<Limit<ByteSize>>,
    pub cpus: Option<Limit<CpuQuota>>,
    pub pids: Option<Limit<u64>>,
    pub timeout: Option<Limit<Timeout>>,
    pub max_output: Option<Limit<ByteSize>>,
    pub env: Vec<String>,
    pub env_files: Vec<PathBuf>,
    pub secrets: Vec<String>,
    pub secret_env: Vec<String>,
    /// `--credential NAME=HOST[,HOST...]`: secretless credentials (filtered network).
    pub credentials: Vec<String>,
    pub interactive: bool,
    pub tty: bool,
    pub json: bool,
    pub timings: bool,
}
