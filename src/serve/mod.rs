//! `nsbox serve`: the same sandboxes as a service. One process answers a REST API (`/v1`) on a
//! unix socket in the run directory (protected by file permissions, like a container engine's
//! socket) and, when asked, on TCP with API keys.
//!
//! What it owns, and what it must not do:
//! - it never forks and never builds a namespace: the server runs a tokio runtime, and the
//!   setup path must not fork from a threaded process (DESIGN.md). A sandbox is made by running
//!   `nsbox create --json` (this binary) as a subprocess, so every sandbox the server makes is an
//!   ordinary session (`nsbox ps` lists it, `nsbox prune` cleans what a killed server left);
//! - commands run through the session's control socket, exactly as `nsbox exec --session`
//!   does, with the output pipes read by the runtime ([`exec`]);
//! - files are resolved inside the sandbox's root as `nsbox cp` resolves them ([`files`]);
//! - which sessions belong to the server (and to which key) is a small record per sandbox
//!   under the state root ([`sandboxes`]), so a restarted server adopts the living ones.
//!
//! Design notes: docs/serve.md. The API: docs/openapi.json (served at /v1/openapi.json).

/// Set by the server on each `nsbox create` it runs, to its own pid: the create dies with the
/// server (see `cli::session::create`), so a server killed mid-create leaves no session.
pub const CREATE_PARENT_ENV: &str = "NSBOX_CREATE_PARENT";

pub mod api;
pub mod audit;
pub mod client;
pub mod e2b;
pub mod exec;
pub mod files;
pub mod keys;
pub mod metrics;
pub mod pool;
pub mod sandboxes;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Why the server (or a key command) failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}: {1}")]
    Io(&'static str, std::io::Error),
    #[error("the key file {path} is damaged: {message} — hint: restore it, or remove it and make new keys with `nsbox serve key add`")]
    KeyFile { path: PathBuf, message: String },
    #[error("a key named {0} exists — hint: `nsbox serve key rm {0}` first, or pick another name")]
    KeyExists(String),
    #[error("{0:?} is not a key name — hint: use letters, digits, '-', '_' and '.' (at most 64)")]
    BadKeyName(String),
    #[error("refusing to serve plain HTTP on {0}, which is not a loopback address — hint: give --tls-cert and --tls-key, or listen on 127.0.0.1 or [::1]")]
    PlainRemote(SocketAddr),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("{0} — hint: stop it first, or give this one its own --state-root and --socket")]
    Busy(String),
    #[error("{path}: {message}")]
    Unsafe { path: PathBuf, message: String },
}

/// How the server runs (from `nsbox serve`'s flags).
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The unix socket (default: `serve.sock` in the run directory).
    pub socket: PathBuf,
    pub listen: Option<SocketAddr>,
    /// TLS on the TCP listener: certificate chain and private key, PEM files.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Where keys, the audit log and the records of owned sandboxes live (`STATE_ROOT/serve`).
    pub serve_dir: PathBuf,
    /// Passed to every `nsbox create` the server runs.
    pub state_root: PathBuf,
    pub config: Option<PathBuf>,
    /// This binary, run as `nsbox create` for each sandbox.
    pub exe: PathBuf,
    /// Most sandboxes at once, over all keys.
    pub max_sandboxes: usize,
    /// Largest request body (file uploads); JSON bodies are capped at [`api::MAX_JSON`].
    pub max_body: usize,
    /// Most connections open at once (more are closed on accept).
    pub max_connections: usize,
    /// On SIGTERM, leave the sandboxes running (a restarted server adopts them).
    pub keep: bool,
    /// Warm-pool entries: what their sandboxes match, a name for metrics, the size.
    pub pool: Vec<(sandboxes::PoolKey, String, usize)>,
}

/// The run directory's serve socket (same run directory as the sessions).
pub fn default_socket() -> PathBuf {
    match std::env::var_os("NSBOX_RUN_DIR") {
        Some(dir) if Path::new(&dir).is_absolute() => PathBuf::from(dir).join("serve.sock"),
        _ => Path::new(crate::session::state::RUN_DIR).join("serve.sock"),
    }
}

/// Creates `dir` (mode 0700) if missing and refuses one that others could write or that
/// belongs to someone else: keys and the audit log live there.
pub(crate) fn private_dir(dir: &Path) -> Result<(), ServeError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) => return Err(ServeError::Io("create the server's directory", e)),
    }
    let meta =
        std::fs::symlink_metadata(dir).map_err(|e| ServeError::Io("inspect a directory", e))?;
    let me = rustix::process::geteuid().as_raw();
    if !meta.is_dir() || meta.uid() != me || meta.mode() & 0o022 != 0 {
        return Err(ServeError::Unsafe {
            path: dir.to_path_buf(),
            message: "not a private directory of this user — hint: it must be a directory owned by the server's user, not writable by others".into(),
        });
    }
    Ok(())
}

/// The TLS settings of the TCP listener (HTTP/1.1 only; TLS 1.2 and 1.3 with ring's defaults).
pub fn tls_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, ServeError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect())
        .map_err(|e| ServeError::Tls(format!("{}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(ServeError::Tls(format!(
            "{}: no certificate (PEM) in it",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| ServeError::Tls(format!("{}: {e}", key.display())))?;
    let mut config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ServeError::Tls(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| ServeError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Runs the server until SIGTERM or SIGINT.
pub fn run(options: ServeOptions) -> Result<(), ServeError> {
    if let Some(addr) = options.listen {
        if !addr.ip().is_loopback() && options.tls.is_none() {
            return Err(ServeError::PlainRemote(addr));
        }
    }
    private_dir(&options.serve_dir)?;
    if let Some((cert, key)) = &options.tls {
        // Checked before anything listens, so a bad file is a clear start-up error.
        tls_config(cert, key)?;
    }
    // A current-thread runtime: blocking work (creates, copies, stops) goes to its blocking
    // pool; nothing in this process forks.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ServeError::Io("start the runtime", e))?;
    runtime.block_on(api::serve(options))
}
