//! `nsbox prune`: removes stopped sessions, and what nsbox processes that were killed
//! (SIGKILL, power loss) left on the host. A one-shot sandbox keeps nothing on the host but its
//! cgroup and its record (`ps -a`; its mounts and namespaces die with its processes), so
//! leftovers are stale one-shot records and `nsbox-<id>` cgroups that are empty
//! and not held by a live nsbox. It also removes cached mask layers (see
//! `crate::rootfs::mask`) that no running sandbox uses, and collects the image store's
//! garbage as `nsbox image prune` does — unless a load is writing — which is what a killed
//! `nsbox commit`, `fork` or load leaves there, and a fork's snapshot layer once its last
//! fork is gone.

use std::time::Duration;

use super::error;
use crate::cgroup::{self, CgroupLayout};
use crate::exit;

/// A cgroup this young may belong to a sandbox that is being created right now (its
/// supervisor made it but does not hold it yet). `--min-age` changes it.
const MIN_AGE: Duration = Duration::from_secs(1);

#[derive(Debug, clap::Args)]
pub struct PruneArgs {
    /// Only list what would be removed.
    #[arg(long)]
    dry_run: bool,
    /// Only remove stopped sessions that stopped at least this long ago (e.g. 24h); sessions
    /// whose supervisor was killed are removed regardless. Default: the config's
    /// cleanup.prune_older_than.
    #[arg(long, value_name = "DURATION")]
    older_than: Option<crate::units::Timeout>,
    /// Leave leftover cgroups younger than this alone: one that young may belong to a sandbox
    /// being created right now. Default: 1s; 0 when nothing else creates sandboxes (tests).
    #[arg(long, value_name = "DURATION")]
    min_age: Option<crate::units::Timeout>,
}

pub fn run(args: PruneArgs, config: &crate::config::Config, state_root: &std::path::Path) -> i32 {
    let layout = match CgroupLayout::detect() {
        Ok(layout) => layout,
        Err(e) => {
            error(&e.to_string());
            return exit::NSBOX_FAILED;
        }
    };
    let leftovers = match cgroup::find_leftovers(&layout) {
        Ok(found) => found,
        Err(e) => {
            error(&e.to_string());
            return exit::NSBOX_FAILED;
        }
    };
    let (mut removed, mut failed) = super::session::prune_sessions(
        args.older_than
            .map(|t| t.0)
            .or(config.cleanup.prune_older_than),
        args.dry_run,
    );
    // Records of one-shots whose nsbox was killed (a live one removes its own).
    let oneshots = crate::session::oneshot::OneShotStore::system();
    for record in oneshots.list() {
        if oneshots.is_live(&record) {
            continue;
        }
        if args.dry_run {
            println!(
                "would remove one-shot record {} (its nsbox was killed)",
                record.id
            );
            continue;
        }
        match oneshots.remove(&record.id) {
            Ok(()) => {
                removed += 1;
                println!(
                    "removed  one-shot record {} (its nsbox was killed)",
                    record.id
                );
            }
            Err(e) => {
                failed = true;
                error(&format!(
                    "could not remove one-shot record {}: {e}",
                    record.id
                ));
            }
        }
    }
    // Sessions removed above took their cgroups along; look again.
    let leftovers = if removed > 0 {
        cgroup::find_leftovers(&layout).unwrap_or_default()
    } else {
        leftovers
    };
    let min_age = args.min_age.map_or(MIN_AGE, |t| t.0);
    for leftover in leftovers {
        let path = leftover.path.display();
        if cgroup::in_use(&leftover) {
            println!("in use   {path} (a running nsbox holds it)");
            continue;
        }
        if !leftover.empty {
            println!("skipped  {path}: processes still run in it (a sandbox without its supervisor?); kill them, then prune again");
            continue;
        }
        if leftover.age.is_some_and(|age| age < min_age) {
            println!(
                "skipped  {path}: created less than {} ago (--min-age)",
                crate::units::format_duration(min_age)
            );
            continue;
        }
        if args.dry_run {
            println!("would remove {path}");
            continue;
        }
        match cgroup::remove_leftover(&leftover) {
            Ok(()) => {
                removed += 1;
                println!("removed  {path}");
            }
            Err(e) => {
                failed = true;
                error(&format!("could not remove {path}: {e}"));
            }
        }
    }
    if !args.dry_run {
        oneshots.remove_dir_if_empty();
        // Parents made for OCI containers' cgroupsPath whose containers were killed.
        let parents = cgroup::prune_parents(layout.fs_root());
        if parents > 0 {
            println!("removed  {parents} empty cgroup parent(s) made for OCI containers");
        }
        // Cached mask layers no running sandbox uses (rebuilt on the next run when needed).
        let layers = crate::rootfs::mask::prune();
        if layers > 0 {
            println!("removed  {layers} unused cached mask layer(s)");
        }
        // The kernel released the ranges of ended sandboxes with their locks; drop the files.
        let ranges = crate::idrange::prune(crate::idrange::run_dir());
        if ranges > 0 {
            println!("removed  {ranges} idle host id range lock(s)");
        }
        // Sessions removed above released their layers' leases.
        match crate::image::store::Store::open_existing(state_root) {
            Ok(Some(store)) => match store.collect_garbage(false) {
                Ok(Some(r)) => {
                    removed += r.layers + r.temporaries;
                    if r.layers + r.blobs + r.temporaries > 0 {
                        println!(
                            "removed  {} unused image layer(s), {} blob(s), {} unfinished write(s) of the image store",
                            r.layers, r.blobs, r.temporaries
                        );
                    }
                }
                Ok(None) => println!(
                    "skipped  the image store: a load is writing to it (`nsbox image prune` waits for it)"
                ),
                Err(e) => {
                    failed = true;
                    error(&format!("could not clean up the image store: {e}"));
                }
            },
            Ok(None) => {}
            // Not nsbox's own leftovers: say so, and leave the store to `nsbox image prune`.
            Err(e) => error(&format!("warning: the image store was not cleaned up: {e}")),
        }
        println!("{removed} leftover(s) removed");
    }
    if failed {
        exit::NSBOX_FAILED
    } else {
        0
    }
}
