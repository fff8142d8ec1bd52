//! Snapshot commands of sessions: `nsbox pause`, `nsbox resume` (the cgroup freezer),
//! `nsbox commit` (a session's filesystem as an image in the store) and `nsbox fork` (sessions
//! stacked on a snapshot layer of one).

use std::path::Path;

use clap::Args;

use super::error;
use crate::exit;
use crate::session::client::SessionClient;
use crate::session::state::SessionStore;

/// Flags of `nsbox pause` and `nsbox resume`.
#[derive(Debug, Args)]
pub struct FreezeArgs {
    /// Sessions (ids or names).
    #[arg(value_name = "ID|NAME", required = true)]
    pub(super) sessions: Vec<String>,
}

/// `nsbox pause` (`frozen`) or `nsbox resume`: prints each session's id, with a note when it
/// already was in that state.
pub fn freeze(args: FreezeArgs, frozen: bool) -> i32 {
    let store = SessionStore::system();
    let mut code = 0;
    for s in &args.sessions {
        match SessionClient::connect(&store, s).and_then(|c| {
            let id = c.record.id.clone();
            c.set_frozen(frozen).map(|changed| (id, changed))
        }) {
            Ok((id, changed)) => print_frozen(&id, frozen, changed),
            Err(e) => {
                error(&e.to_string());
                code = exit::NSBOX_FAILED;
            }
        }
    }
    code
}

/// A line of `nsbox pause`/`resume`.
pub(super) fn print_frozen(id: &str, frozen: bool, changed: bool) {
    if changed {
        println!("{id}");
    } else {
        println!(
            "{id} (already {})",
            if frozen { "paused" } else { "running" }
        );
    }
}

/// Flags of `nsbox commit`.
#[derive(Debug, Args)]
pub struct CommitArgs {
    /// The session (id or name).
    #[arg(value_name = "ID|NAME")]
    pub(super) session: String,
    /// The image's name, NAME[:TAG] (`:latest` when no tag is given).
    #[arg(value_name = "NAME[:TAG]")]
    pub(super) name: String,
    /// Print the result as JSON.
    #[arg(long)]
    pub(super) json: bool,
}

/// `nsbox commit`: prints the image's name and digest.
pub fn commit(args: CommitArgs, state_root: &Path) -> i32 {
    let sessions = SessionStore::system();
    match crate::snapshot::commit(&sessions, &args.session, &args.name, state_root) {
        Ok(done) => {
            let name = done.image.names.first().cloned().unwrap_or_default();
            if args.json {
                let out = serde_json::json!({
                    "name": name,
                    "digest": done.image.digest.to_string(),
                    "entries": done.entries,
                    "frozen_secs": done.frozen_secs,
                    "seconds": done.seconds,
                });
                println!("{out}");
            } else {
                println!("{name} {}", done.image.digest);
                eprintln!(
                    "nsbox: committed {} entries in {:.2}s (the session was frozen {:.2}s)",
                    done.entries, done.seconds, done.frozen_secs
                );
            }
            0
        }
        Err(e) => {
            error(&e.to_string());
            exit::NSBOX_FAILED
        }
    }
}

/// Flags of `nsbox fork`.
#[derive(Debug, Args)]
pub struct ForkArgs {
    /// The session (id or name).
    #[arg(value_name = "ID|NAME")]
    pub(super) session: String,
    /// How many forks (1 to 64).
    #[arg(long, short = 'n', default_value_t = 1, value_name = "N")]
    pub(super) count: u32,
    /// The forks' names: one per fork, or one for all (NAME-1 … NAME-N). Repeatable.
    #[arg(long, value_name = "NAME")]
    pub(super) name: Vec<String>,
    /// The forks' network: none, filtered or host (default: the parent's, with its --allow
    /// and --deny).
    #[arg(long, visible_alias = "network", value_name = "MODE")]
    pub(super) net: Option<String>,
    /// With --net filtered: what the forks may reach (replaces the parent's list).
    #[arg(long, value_name = "PATTERN")]
    pub(super) allow: Vec<String>,
    #[arg(long, value_name = "PATTERN")]
    pub(super) deny: Vec<String>,
    /// A secret for the forks, NAME=VALUE (the parent's are never inherited). Repeatable.
    #[arg(long = "secret", value_name = "NAME=VALUE")]
    pub(super) secrets: Vec<String>,
    /// A secret from nsbox's environment, NAME. Repeatable.
    #[arg(long = "secret-env", value_name = "NAME")]
    pub(super) secret_env: Vec<String>,
    /// Print the forks as JSON.
    #[arg(long)]
    pub(super) json: bool,
}

/// `nsbox create`'s flags, for parsing a fork's (see [`crate::snapshot::fork_create_args`]).
#[derive(Debug, clap::Parser)]
#[command(no_binary_name = true)]
struct ForkCreate {
    #[command(flatten)]
    create: super::session::CreateArgs,
}

/// `nsbox fork`: the session's files, copied once into a snapshot layer while it is frozen,
/// and N sessions stacked on it (copy-on-write: each has its own upper layer), made in this
/// process. Prints each fork's id.
pub fn fork(args: ForkArgs, state_root: &Path, config: &crate::config::Config) -> i32 {
    let started = std::time::Instant::now();
    let mut extra = vec!["--pull".to_string(), "never".into()];
    for s in &args.secrets {
        extra.extend(["--secret".to_string(), s.clone()]);
    }
    for s in &args.secret_env {
        extra.extend(["--secret-env".to_string(), s.clone()]);
    }
    let req = crate::snapshot::ForkRequest {
        count: args.count,
        names: args.name,
        net: args.net,
        allow: args.allow,
        deny: args.deny,
        extra,
    };
    let names = match crate::snapshot::fork_names(&req) {
        Ok(n) => n,
        Err(e) => {
            error(&e.to_string());
            return exit::USAGE;
        }
    };
    let sessions = SessionStore::system();
    let parent = match SessionClient::connect(&sessions, &args.session) {
        Ok(c) => c.record.clone(),
        Err(e) => {
            error(&e.to_string());
            return exit::NSBOX_FAILED;
        }
    };
    // Leased until this process ends, and by every fork's supervisor (forked from here).
    let snapshot = match crate::snapshot::snapshot_for_fork(&sessions, &parent.id, state_root) {
        Ok(s) => s,
        Err(e) => {
            error(&e.to_string());
            return exit::NSBOX_FAILED;
        }
    };
    let snapshot_secs = started.elapsed().as_secs_f64();
    let mut made: Vec<String> = Vec::new();
    let mut code = 0;
    for name in &names {
        let argv = crate::snapshot::fork_create_args(
            &req,
            &parent,
            &snapshot.info,
            &snapshot.image,
            name.as_deref(),
        );
        let parsed = match <ForkCreate as clap::Parser>::try_parse_from(argv.iter().skip(1)) {
            Ok(p) => p,
            Err(e) => {
                error(&format!("fork {}: {e}", made.len() + 1));
                code = exit::USAGE;
                break;
            }
        };
        match super::session::create_fork(parsed.create, state_root, config, &snapshot) {
            Ok(record) => made.push(record.id),
            Err(failed) => {
                error(&format!(
                    "fork {} of {}: create failed; the forks made are removed",
                    made.len() + 1,
                    names.len()
                ));
                code = failed;
                break;
            }
        }
    }
    if code != 0 {
        let exe = std::env::current_exe().unwrap_or_else(|_| "nsbox".into());
        for id in &made {
            let _ = std::process::Command::new(&exe)
                .args(["rm", "-f", id])
                .stdout(std::process::Stdio::null())
                .status();
        }
        return code;
    }
    if args.json {
        let out = serde_json::json!({
            "parent": parent.id,
            "forks": made,
            "frozen_secs": snapshot.frozen_secs,
            "snapshot_secs": snapshot_secs,
            "copied_bytes": snapshot.copied.bytes,
            "seconds": started.elapsed().as_secs_f64(),
        });
        println!("{out}");
    } else {
        for id in &made {
            println!("{id}");
        }
        eprintln!(
            "nsbox: {} fork(s) of {} from its files (frozen {:.2}s); processes are not carried over — the forks start with no commands running",
            made.len(),
            parent.id,
            snapshot.frozen_secs
        );
    }
    0
}
