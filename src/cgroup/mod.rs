//! TEMPORARY stub until the cgroup branch lands.
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::PathBuf;
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroup: {0}")]
    Other(String),
}
#[derive(Debug, Clone)]
pub struct CgroupLayout;
impl CgroupLayout {
    pub fn detect() -> Result<Self, CgroupError> { Ok(CgroupLayout) }
}
#[derive(Debug, Clone, Default)]
pub struct CgroupLimits { pub memory_bytes: Option<u64>, pub cpu_millis: Option<u64>, pub pids: Option<u64> }
#[derive(Debug, Default)]
pub struct CgroupStats { pub memory_current: Option<u64>, pub memory_peak: Option<u64>, pub pids_current: Option<u64>, pub cpu_usage_usec: Option<u64> }
#[derive(Debug)]
pub struct SandboxCgroup { fds: Vec<OwnedFd> }
impl SandboxCgroup {
    pub fn create(_layout: &CgroupLayout, _id: &str, _limits: &CgroupLimits) -> Result<Self, CgroupError> { Ok(SandboxCgroup { fds: Vec::new() }) }
    pub fn clone_into_fd(&self) -> Option<BorrowedFd<'_>> { None }
    pub fn self_join_fds(&self) -> &[OwnedFd] { &self.fds }
    pub fn oom_kills(&self) -> Result<u64, CgroupError> { Ok(0) }
    pub fn stats(&self) -> Result<CgroupStats, CgroupError> { Ok(CgroupStats::default()) }
    pub fn paths(&self) -> Vec<PathBuf> { Vec::new() }
    pub fn remove(self) -> Result<(), CgroupError> { Ok(()) }
    pub fn warnings(&self) -> Vec<String> { Vec::new() }
}
pub fn join_self(_fds: &[OwnedFd]) -> std::io::Result<()> { Ok(()) }
