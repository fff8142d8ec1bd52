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
    #[arg(long, value_name = "FILE", requires_all = ["tls_key", "listen"])]
    tls_cert: Option<PathBuf>,
    /// The TLS private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Most sandboxes at once, over all keys (more: 429).
    #[arg(long, value_name = "N", default_value_t = 64)]
    max_sandboxes: usize,
    /// Largest request body, in bytes (file uploads).
    #[arg(long, value_name = "BYTES", default_value_t = 64 << 20)]
    max_body: usize,
    /// Most connections open at once, over both listeners (more are closed on accept).
    #[arg(long, value_name = "N", default_value_t = 1024)]
    max_connections: usize,
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
        name: String,
        /// Most sandboxes this key may hold at once.
        #[arg(long, value_name = "N")]
        max_sandboxes: Option<usize>,
    },
    /// List the keys (names and limits; tokens are not kept).
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Remove a key (its requests are refused at once).
    Rm { name: String },
}

pub fn run(args: ServeArgs, state_root: &Path, config: Option<&Path>) -> i32 {
    let serve_dir = state_root.join("serve");
    match args.command {
        Some(ServeCommand::Key(cmd)) => keys(cmd, &serve_dir),
        None => {
            let exe = match std::env::current_exe() {
                Ok(exe) => exe,
                Err(e) => {
                    error(&format!("find nsbox's own binary: {e}"));
                    return exit::NSBOX_FAILED;
                }
            };
            let options = ServeOptions {
                socket: args.socket.unwrap_or_else(serve::default_socket),
                listen: args.listen,
                tls: args.tls_cert.zip(args.tls_key),
                serve_dir,
                state_root: state_root.to_path_buf(),
                config: config.map(Path::to_path_buf),
                exe,
                max_sandboxes: args.max_sandboxes,
                max_body: args.max_body,
                max_connections: args.max_connections,
                keep: args.keep,
                pool: args.pool,
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
