//! Snapshot commands of sessions: `nsbox pause`, `nsbox resume` (the cgroup freezer) and
//! `nsbox commit` (a session's filesystem as an image in the store).

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
    sessions: Vec<String>,
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
            Ok((id, true)) => println!("{id}"),
            Ok((id, false)) => println!(
                "{id} (already {})",
                if frozen { "paused" } else { "running" }
            ),
            Err(e) => {
                error(&e.to_string());
                code = exit::NSBOX_FAILED;
            }
        }
    }
    code
}

/// Flags of `nsbox commit`.
#[derive(Debug, Args)]
pub struct CommitArgs {
    /// The session (id or name).
    #[arg(value_name = "ID|NAME")]
    session: String,
    /// The image's name, NAME[:TAG] (`:latest` when no tag is given).
    #[arg(value_name = "NAME[:TAG]")]
    name: String,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
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
