//! `nsbox prune` (filled in once the cgroup module lands).
#[derive(Debug, clap::Args)]
pub struct PruneArgs {}
pub fn run(_args: PruneArgs) -> i32 { 0 }
