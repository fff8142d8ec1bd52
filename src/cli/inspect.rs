//! `nsbox inspect`: sessions, running one-shot sandboxes and images as one JSON array on stdout (Docker's shape: one
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
    after_help = "A session is looked up first (id, id prefix or name), then a running one-shot, then an image (NAME[:TAG], digest\nor prefix); --type picks one. Examples:\n  nsbox inspect mysession | jq '.[0].labels'\n  nsbox inspect --type image python:3.12 | jq -r '.[0].digest'"
)]
pub struct InspectArgs {
    /// Sessions, one-shot sandboxes or images.
    #[arg(value_name = "SESSION|ONE-SHOT|IMAGE", required = true)]
    pub(super) targets: Vec<String>,
    /// Look only for this kind of object.
    #[arg(long = "type", value_name = "KIND", value_enum)]
    pub(super) kind: Option<Kind>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(super) enum Kind {
    Session,
    /// A running one-shot sandbox (`ps -a`).
    OneShot,
    Image,
}

pub fn run(args: InspectArgs, state_root: &Path) -> i32 {
    let sessions = SessionStore::system();
    let oneshots = crate::session::oneshot::OneShotStore::system();
    let images = Store::open_existing(state_root).ok().flatten();
    let index = images.as_ref().and_then(|s| s.index().ok());
    let mut found = Vec::new();
    let mut code = 0;
    for target in &args.targets {
        let session = matches!(args.kind, None | Some(Kind::Session))
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
        let one_shot = matches!(args.kind, None | Some(Kind::OneShot))
            .then(|| oneshots.resolve(target))
            .flatten();
        if let Some(record) = one_shot {
            let live = oneshots.is_live(&record);
            found.push(super::session::one_shot_json(&record, live));
            continue;
        }
        let image = match (
            matches!(args.kind, None | Some(Kind::Image)),
            &images,
            &index,
        ) {
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
                    Some(Kind::OneShot) => "running one-shot sandbox",
                    Some(Kind::Image) => "image",
                    None => "session, one-shot sandbox or image",
                };
                error(&format!(
                    "no {what} '{}' — hint: `nsbox ps -a` lists the sessions and one-shots, `nsbox images` the images",
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
