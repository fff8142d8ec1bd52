//! `--user`/`-u`: numbers as before, or names looked up in the sandbox root's own account
//! files (Docker's `-u NAME`).
//!
//! The sandbox's /etc/passwd is not the host's: on the host's root nsbox writes its own
//! (root, sandbox, nobody; host accounts never show), and an image or a `--rootfs` directory
//! keeps its files with nsbox's `sandbox` line merged in. Names are resolved against the
//! same files, read without following symlinks (`image::resolve_user`), so a name can never
//! pick up a host account. uid 0 stays allowed as `--user 0` always was: root inside the
//! sandbox's user namespace, without capabilities.

use std::path::{Path, PathBuf};

use crate::report::Failure;

/// The accounts nsbox itself writes into every sandbox's /etc/passwd (see rootfs/plan.rs).
const BUILTIN: &[(&str, (u32, u32))] = &[
    ("root", (0, 0)),
    ("sandbox", (100, 101)),
    ("nobody", (65534, 65534)),
];

/// Resolves `text` ("UID[:GID]" or "NAME[:GROUP]") for a sandbox whose root is `rootfs`,
/// `image`, or (neither) the host's root.
pub(super) fn resolve(
    text: &str,
    rootfs: Option<&Path>,
    image: Option<&crate::spec::ImageSpec>,
) -> Result<(u32, u32), Failure> {
    let numeric = text
        .split(':')
        .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()));
    if numeric {
        return crate::profile::parse_user(text).map_err(|e| Failure::usage(format!("--user {e}")));
    }
    let (user, group) = match text.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (text, None),
    };
    let builtin = |name: &str| {
        BUILTIN
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, ids)| *ids)
    };
    let layers: Vec<PathBuf> = match (image, rootfs) {
        (Some(image), _) => image.layers.clone(),
        (None, Some(dir)) => vec![dir.to_path_buf()],
        (None, None) => Vec::new(),
    };
    let ids = if layers.is_empty() {
        // The host's root: only nsbox's own accounts exist inside.
        let (uid, primary) = builtin(user).ok_or_else(|| not_found(text, "user", user))?;
        let gid = match group {
            None => primary,
            Some(g) => match g.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => builtin(g)
                    .map(|(_, gid)| gid)
                    .ok_or_else(|| not_found(text, "group", g))?,
            },
        };
        (uid, gid)
    } else {
        match crate::image::resolve_user(&layers, text) {
            Ok(ids) => ids,
            // nsbox's own `sandbox` account is merged into the root's files.
            Err(e) => match (builtin(user), group) {
                (Some(ids), None) => ids,
                _ => {
                    let root = if image.is_some() {
                        "the image's".to_string()
                    } else {
                        format!("--rootfs {}'s", layers[0].display())
                    };
                    return Err(Failure::usage(format!(
                        "--user '{text}': {}",
                        e.to_string().replace("the image's", &root)
                    ))
                    .with_hint(format!(
                        "names are looked up in {root} /etc/passwd and /etc/group; give UID[:GID] instead"
                    )));
                }
            },
        }
    };
    crate::profile::parse_user(&format!("{}:{}", ids.0, ids.1))
        .map_err(|e| Failure::usage(format!("--user {e}")))
}

fn not_found(text: &str, what: &str, name: &str) -> Failure {
    Failure::usage(format!(
        "--user '{text}': no {what} '{name}' in the sandbox's /etc/{} — on the host's root it has only root, sandbox and nobody (host accounts never show inside); give UID[:GID] instead",
        if what == "user" { "passwd" } else { "group" }
    ))
}
