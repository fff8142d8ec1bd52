//! `nsbox serve` (the API server) and `nsbox serve key add|ls|rm` (its API keys).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use super::error;
use crate::exit;
use crate::serve::keys::KeyStore;
use crate::serve::{self, ServeOptions};

/// Flags of `nsbox serve`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ServeArgs {
    #[command(subcommand)]
    command: Option<ServeCommand>,
    /// The unix socket to listen on (default: serve.sock in the run directory, mode 0600).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Also listen on TCP (every request needs an API key; plain HTTP on loopback only).
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<SocketAddr>,
    /// Serve TCP over TLS with this certificate chain (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The TLS private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Most sandboxes at once, over all keys (more: 429) [default: 64].
    #[arg(long, value_name = "N")]
    max_sandboxes: Option<usize>,
    /// Largest request body, in bytes (file uploads) [default: 64 MiB].
    #[arg(long, value_name = "BYTES")]
    max_body: Option<usize>,
    /// Most connections open at once, over both listeners (more are closed on accept)
    /// [default: 1024].
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// On SIGTERM, leave the sandboxes running (the next server adopts them).
    #[arg(long)]
    keep: bool,
    /// Keep N idle sandboxes of IMAGE ready (`host` for the host's root); creates that match
    /// take one. Options after commas: net=MODE, allow=HOST, deny=HOST, profile=NAME.
    #[arg(long = "pool", value_name = "IMAGE=N[,net=..][,allow=..]", value_parser = crate::serve::pool::parse_entry)]
    pool: Vec<(crate::serve::sandboxes::PoolKey, String, usize)>,
}

#[derive(Debug, Subcommand)]
enum ServeCommand {
    /// API keys.
    #[command(subcommand)]
    Key(KeyCommand),
}

#[derive(Debug, Subcommand)]
enum KeyCommand {
    /// Make a key; prints its token once (only a hash is kept).
    Add {
        /// The key's name (in `key ls`, the audit log and limits).
        name: String,
        /// Most sandboxes this key may hold at once.
        #[arg(long, value_name = "N")]
        max_sandboxes: Option<usize>,
    },
    /// List the keys (names and limits; tokens are not kept).
    Ls {
        /// One JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove a key (its requests are refused at once).
    Rm {
        /// The name given to `key add`.
        name: String,
    },
}

pub fn run(args: ServeArgs, state_root: &Path, config: Option<&Path>) -> i32 {
    let serve_dir = state_root.join("serve");
    match args.command {
        Some(ServeCommand::Key(cmd)) => keys(cmd, &serve_dir),
        None => {
            let options = match options(args, serve_dir, state_root, config) {
                Ok(options) => options,
                // Flags and the config's [serve] section: a usage error.
                Err(message) => {
                    error(&message);
                    return exit::USAGE;
                }
            };
            match serve::run(options) {
                Ok(()) => 0,
                Err(e) => {
                    error(&e.to_string());
                    exit::NSBOX_FAILED
                }
            }
        }
    }
}

/// The server's settings: flags first, then the config's `[serve]`, then the built-in
/// defaults.
fn options(
    args: ServeArgs,
    serve_dir: PathBuf,
    state_root: &Path,
    config: Option<&Path>,
) -> Result<ServeOptions, String> {
    let exe = std::env::current_exe().map_err(|e| format!("find nsbox's own binary: {e}"))?;
    let file = super::settings::load(config)
        .map_err(|e| e.to_string())?
        .serve;
    let listen = match (args.listen, &file.listen) {
        (Some(a), _) => Some(a),
        (None, Some(text)) => Some(text.parse::<SocketAddr>().map_err(|e| {
            format!(
                "config serve.listen = {text:?}: {e} — hint: ADDR:PORT, e.g. \"127.0.0.1:8080\""
            )
        })?),
        (None, None) => None,
    };
    let tls = match (
        args.tls_cert.zip(args.tls_key),
        file.tls_cert.zip(file.tls_key),
    ) {
        (Some(flags), _) => Some(flags),
        (None, from_file) => from_file,
    };
    if tls.is_some() && listen.is_none() {
        return Err(
            "TLS is for the TCP listener — hint: give --listen ADDR:PORT (or serve.listen)".into(),
        );
    }
    let pool = if args.pool.is_empty() {
        file.pool
            .iter()
            .map(|entry| {
                crate::serve::pool::parse_entry(entry)
                    .map_err(|e| format!("config serve.pool: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?
    } else {
        args.pool
    };
    Ok(ServeOptions {
        socket: args
            .socket
            .or(file.socket)
            .unwrap_or_else(serve::default_socket),
        listen,
        tls,
        serve_dir,
        state_root: state_root.to_path_buf(),
        config: config.map(Path::to_path_buf),
        exe,
        max_sandboxes: args.max_sandboxes.or(file.max_sandboxes).unwrap_or(64),
        max_body: args
            .max_body
            .or(file.max_body.and_then(|b| usize::try_from(b).ok()))
            .unwrap_or(64 << 20),
        max_connections: args
            .max_connections
            .or(file.max_connections)
            .unwrap_or(1024),
        keep: args.keep,
        pool,
    })
}

fn keys(cmd: KeyCommand, serve_dir: &Path) -> i32 {
    let store = KeyStore::new(serve_dir);
    let result = match cmd {
        KeyCommand::Add {
            name,
            max_sandboxes,
        } => store
            .add(&name, max_sandboxes)
            .map(|token| println!("{token}")),
        KeyCommand::Ls { json } => store.list().map(|keys| {
            if json {
                let rows: Vec<serde_json::Value> = keys
                    .iter()
                    .map(|k| {
                        serde_json::json!({
                            "name": k.name,
                            "created": k.created,
                            "max_sandboxes": k.max_sandboxes,
                        })
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(rows));
            } else {
                println!("{:<24} {:>12} MAX_SANDBOXES", "NAME", "CREATED");
                for k in keys {
                    println!(
                        "{:<24} {:>12} {}",
                        k.name,
                        k.created,
                        k.max_sandboxes.map_or("-".into(), |m| m.to_string())
                    );
                }
            }
        }),
        KeyCommand::Rm { name } => match store.remove(&name) {
            Ok(true) => Ok(()),
            Ok(false) => {
                error(&format!("no key named {name} — hint: `nsbox serve key ls`"));
                return exit::NSBOX_FAILED;
            }
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            error(&e.to_string());
            exit::NSBOX_FAILED
        }
    }
}
