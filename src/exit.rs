//! nsbox's exit codes. The command's own status passes through unchanged; a command killed by
//! signal N gives 128+N; the codes below are reserved for what nsbox itself reports. Never
//! renumber: scripts depend on them.
//!
//! | code | meaning |
//! |------|---------|
//! | 0–255 | the command's own exit status |
//! | 124 | the command ran longer than `--timeout`; every process of the sandbox was killed |
//! | 125 | nsbox failed: bad usage, bad profile, missing host feature, or sandbox setup failed |
//! | 126 | the command was found but could not be executed (permission, format) |
//! | 127 | the command was not found |
//! | 128+N | the command was killed by signal N (130 = SIGINT, 143 = SIGTERM) |
//! | 137 | also: killed by the kernel's OOM killer at the memory limit (stderr / the JSON exit event say so) |

/// The command ran past `--timeout`.
pub const TIMEOUT: i32 = 124;
/// nsbox itself failed (usage, configuration, host, setup).
pub const NSBOX_FAILED: i32 = 125;
/// The command could not be executed.
pub const NOT_EXECUTABLE: i32 = 126;
/// The command was not found.
pub const NOT_FOUND: i32 = 127;
/// Base of "killed by signal N".
pub const SIGNAL_BASE: i32 = 128;
/// Killed by the OOM killer (SIGKILL).
pub const OOM: i32 = SIGNAL_BASE + 9;
