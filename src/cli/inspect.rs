//! `nsbox inspect`: sessions and images as one JSON array on stdout (Docker's shape: one
//! object per argument, in order), so `nsbox inspect X | jq` always parses.

use std::path::Path;

use clap::{Args, ValueEnum};

use super::error;
use crate::exit;
use crate::image::store::Store;
use crate::session::state::SessionStore;

/// Flags of `nsbox inspect`.
#[derive(Debug, Args)]
#[command(
    after_help = "A session is looked up first (id, id prefix or name), then an image (NAME[:TAG], digest\nor prefix); --type picks one. Examples:\n  nsbox inspect mysession | jq '.[0].labels'\n  nsbox inspect --type image python:3.12 | jq -r '.[0].digest'"
)]
pub struct InspectArgs {
    /// Sessions or images.
    #[arg(value_name = "SESSION|IMAGE", required = true)]
    pub(super) targets: Vec<String>,
    /// Look only for this kind of object.
    #[arg(long = "type", value_name = "KIND", value_enum)]
    pub(super) kind: Option<Kind>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(super) enum Kind {
    Session,
    Image,
}

pub fn run(args: InspectArgs, state_root: &Path) -> i32 {
    let sessions = SessionStore::system();
    let images = Store::open_existing(state_root).ok().flatten();
    let index = images.as_ref().and_then(|s| s.index().ok());
    let mut found = Vec::new();
    let mut code = 0;
    for target in &args.targets {
        let session = (args.kind != Some(Kind::Image))
            .then(|| sessions.resolve(target).ok())
            .flatten();
        if let Some(record) = session {
            let mut value = super::session::session_json(&sessions, &record);
            value["type"] = "session".into();
            value["created"] = record.created.into();
            value["profile"] = record.profile.clone().into();
            value["uid"] = record.uid.into();
            value["gid"] = record.gid.into();
            value["workdir"] = record.workdir.display().to_string().into();
            value["max_output"] = record.max_output.into();
            found.push(value);
            continue;
        }
        let image = match (args.kind != Some(Kind::Session), &images, &index) {
            (true, Some(store), Some(index)) => store.resolve(index, target).ok(),
            _ => None,
        };
        match image.map(serde_json::to_value) {
            Some(Ok(mut value)) => {
                value["type"] = "image".into();
                found.push(value);
            }
            _ => {
                let what = match args.kind {
                    Some(Kind::Session) => "session",
                    Some(Kind::Image) => "image",
                    None => "session or image",
                };
                error(&format!(
                    "no {what} '{}' — hint: `nsbox ps` lists the sessions, `nsbox images` the images",
                    target.escape_debug()
                ));
                code = exit::NSBOX_FAILED;
            }
        }
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&found).unwrap_or_else(|_| "[]".into())
    );
    code
}
