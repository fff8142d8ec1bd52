//! `nsbox doctor` (filled in once the cgroup module lands).
#[derive(Debug, clap::Args)]
pub struct DoctorArgs {}
pub fn run(_args: DoctorArgs) -> i32 { 0 }
