//! `nsbox pull`, `nsbox login`, `nsbox logout`, and the `--pull` policy of `exec --image` and
//! `create --image`.

use std::io::{BufRead, Write};
use std::path::Path;

use super::error;
use super::image::Bounds;
use crate::config::Config;
use crate::image::store::Store;
use crate::registry::auth::{CredentialStore, Credentials, Found};
use crate::registry::client::Client;
use crate::registry::pull::{EnsureError, PullPolicy};
use crate::registry::{self, PullOptions, RemoteRef};

const PULL_HELP: &str = "\
References follow Docker's rules: python:3.12 is docker.io/library/python:3.12, team/app is
docker.io/team/app:latest, a first component with a '.' or ':' (or localhost) names the
registry: ghcr.io/org/devbox:1, localhost:5000/app@sha256:...

A multi-platform index resolves to this machine's image. Every manifest, config and layer is
verified against its digest; layers are downloaded in parallel, resumed where a connection
dropped, and unpacked as they arrive. Layers already in the store are not downloaded again.
Registries on loopback are spoken to in plain HTTP; any other over HTTPS (see the config
file's [registries] for a private CA or an insecure registry).

Credentials: `nsbox login REGISTRY`, else docker's ~/.docker/config.json.

Examples:
  nsbox pull python:3.12
  nsbox pull ghcr.io/org/devbox@sha256:4f5c...
  nsbox exec --image python:3.12 -- python3 -V        pulls first when missing";

/// `nsbox pull REF`.
#[derive(Debug, clap::Args)]
#[command(after_help = PULL_HELP)]
pub struct PullArgs {
    /// NAME[:TAG] or NAME@sha256:DIGEST.
    #[arg(value_name = "REF")]
    reference: String,
    /// Allow plain HTTP to a registry that is not on this machine.
    #[arg(long)]
    insecure_http: bool,
    /// Layers downloaded at once (default 4, or the config's pull.jobs).
    #[arg(long, value_name = "N")]
    jobs: Option<usize>,
    #[command(flatten)]
    bounds: Bounds,
    /// No progress line, even on a terminal.
    #[arg(long, short = 'q')]
    quiet: bool,
}

/// `nsbox login REGISTRY`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "The password is read from stdin with --password-stdin, else asked for on the terminal.\nCredentials are checked against the registry, then saved in STATE_ROOT/auth.json (root-only,\nmode 0600; docker's format). Docker Hub is docker.io.\n\nExample:\n  echo \"$TOKEN\" | nsbox login ghcr.io -u me --password-stdin"
)]
pub struct LoginArgs {
    /// The registry: host[:port] (docker.io for Docker Hub).
    #[arg(value_name = "REGISTRY")]
    registry: String,
    /// The user name.
    #[arg(long, short = 'u', value_name = "USER")]
    username: String,
    /// Read the password (or token) from stdin (one line).
    #[arg(long)]
    password_stdin: bool,
    /// Allow plain HTTP to a registry that is not on this machine.
    #[arg(long)]
    insecure_http: bool,
}

/// `nsbox logout REGISTRY`.
#[derive(Debug, clap::Args)]
pub struct LogoutArgs {
    /// The registry whose saved credentials to delete (e.g. ghcr.io, docker.io).
    #[arg(value_name = "REGISTRY")]
    registry: String,
}

fn fail(e: impl Into<crate::report::Failure>) -> i32 {
    let failure = e.into();
    error(&failure.to_string());
    failure.exit_code()
}

fn tty_progress(quiet: bool) -> bool {
    !quiet && rustix::termios::isatty(std::io::stderr())
}

fn pull_options(
    config: &Config,
    state_root: &Path,
    registry: &str,
    insecure_http: bool,
    progress: bool,
) -> PullOptions {
    let mut opts = config.pull_options(state_root, registry, progress);
    opts.settings.insecure_http |= insecure_http;
    opts
}

pub fn pull(args: PullArgs, state_root: &Path, config: &Config) -> i32 {
    let remote = match RemoteRef::parse(&args.reference) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let store = match Store::open(state_root) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let mut opts = pull_options(
        config,
        state_root,
        &remote.registry,
        args.insecure_http,
        tty_progress(args.quiet),
    );
    opts.limits = args.bounds.limits();
    if let Some(jobs) = args.jobs {
        opts.jobs = jobs.max(1);
    }
    match registry::pull(&store, &args.reference, &opts) {
        Ok(report) => {
            for w in &report.warnings {
                error(&format!("warning: {w}"));
            }
            let name = report
                .image
                .names
                .first()
                .cloned()
                .unwrap_or_else(|| report.remote.to_string());
            println!(
                "pulled {name} ({}, {} layers: {} downloaded, {} already here)",
                report.image.digest,
                report.image.layers.len(),
                report.downloaded_layers,
                report.reused_layers
            );
            0
        }
        Err(e) => fail(e),
    }
}

/// Resolves `--image REF` under a pull policy (see [`registry::pull::ensure`]).
pub(super) fn ensure_image(
    reference: &str,
    policy: PullPolicy,
    state_root: &Path,
    config: &Config,
) -> Result<(), EnsureError> {
    registry::pull::ensure(reference, policy, state_root, |registry| {
        config.pull_options(state_root, registry, tty_progress(false))
    })
}

pub fn login(args: LoginArgs, state_root: &Path, config: &Config) -> i32 {
    let registry = match normalize_registry(&args.registry) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let password = match read_password(args.password_stdin) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    if args.username.is_empty() || password.is_empty() {
        return fail("login: the user name and password must not be empty");
    }
    let credentials = Credentials {
        username: args.username.clone(),
        password,
    };
    let remote = RemoteRef {
        registry: registry.clone(),
        repository: String::new(),
        tag: None,
        digest: None,
    };
    let mut settings = config.registry_settings(&registry);
    settings.insecure_http |= args.insecure_http;
    let store = CredentialStore::new(state_root);
    let found = Found {
        credentials: credentials.clone(),
        origin: "the command line".into(),
    };
    let checked = Client::new(&remote, &settings, Some(found)).and_then(|c| c.ping());
    if let Err(e) = checked {
        return fail(format!(
            "login to {registry} failed, nothing was saved: {e}"
        ));
    }
    if let Err(e) = Store::open(state_root).map_err(|e| e.to_string()) {
        return fail(e);
    }
    match store.save(&registry, &credentials) {
        Ok(()) => {
            println!(
                "logged in to {registry} as {} (saved in {})",
                args.username,
                store.own.display()
            );
            0
        }
        Err(e) => fail(e),
    }
}

pub fn logout(args: LogoutArgs, state_root: &Path) -> i32 {
    let registry = match normalize_registry(&args.registry) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    match CredentialStore::new(state_root).remove(&registry) {
        Ok(true) => {
            println!("removed the credentials for {registry}");
            0
        }
        Ok(false) => {
            println!("no credentials saved for {registry}");
            0
        }
        Err(e) => fail(e),
    }
}

/// `REGISTRY` as `login` takes it: host[:port], with Docker Hub's aliases folded to docker.io.
fn normalize_registry(text: &str) -> Result<String, String> {
    let host = text
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/');
    let host = host.strip_suffix("/v1").unwrap_or(host);
    let host = match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io",
        h => h,
    };
    // Checked with the reference rules: host/x must parse with host as the registry.
    match RemoteRef::parse(&format!("{host}/x")) {
        Ok(r) if r.registry == host || host == "docker.io" => Ok(host.to_string()),
        _ => Err(format!(
            "'{}' is not a registry host — hint: write host[:port], e.g. ghcr.io, localhost:5000, docker.io",
            crate::image::digest::printable(text)
        )),
    }
}

/// The password from stdin, or asked for on the terminal without echo.
fn read_password(from_stdin: bool) -> Result<String, String> {
    let stdin = std::io::stdin();
    if from_stdin {
        let mut line = String::new();
        stdin
            .lock()
            .read_line(&mut line)
            .map_err(|e| format!("reading the password from stdin: {e}"))?;
        return Ok(line.trim_end_matches(['\n', '\r']).to_string());
    }
    if !rustix::termios::isatty(&stdin) {
        return Err(
            "no password: stdin is not a terminal — hint: pipe it in with --password-stdin".into(),
        );
    }
    let saved = rustix::termios::tcgetattr(&stdin).map_err(|e| e.to_string())?;
    let mut quiet = saved.clone();
    quiet.local_modes &= !rustix::termios::LocalModes::ECHO;
    let _ = rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Flush, &quiet);
    eprint!("Password: ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    let _ = rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Flush, &saved);
    eprintln!();
    read.map_err(|e| format!("reading the password: {e}"))?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}
