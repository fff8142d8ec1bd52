//! The fault-injection hook of the kill tests (tests/integration/faults.rs): a named point in
//! setup and teardown where nsbox, when asked through its environment, stops itself so that a
//! test can kill it there (SIGKILL, SIGTERM, SIGINT) and then check that `nsbox prune` leaves
//! nothing behind.
//!
//! `NSBOX_FAULT_PHASE=NAME` makes the process that reaches phase NAME append
//! "NAME SANDBOX-ID PID" to the file `NSBOX_FAULT_REPORT` (when set), then stop with SIGSTOP.
//! Unset, a phase costs one read of a cached value: the environment is looked at once per
//! process, at the first phase, which comes after nsbox's cold start work has been planned.
//! The phases are listed in [`PHASES`] (and docs/hardening.md).

use std::sync::OnceLock;

/// Every phase nsbox marks, in the order a sandbox meets them. The kill tests iterate over
/// these; a name passed to [`phase`] that is not here is a bug (checked in debug builds).
pub const PHASES: &[&str] = &[
    // Handle::launch (one-shots, sessions, the server's sandboxes)
    "cgroup-created",
    "cloned",
    "network-prepared",
    "launched",
    // the one-shot supervisor
    "running",
    "teardown",
    "cleaned-up",
    // the session supervisor
    "session-recorded",
    "session-ready",
    "session-exec-sent",
    "session-teardown",
    "session-ended",
];

/// The phase to stop at and where to say so, read once.
struct Fault {
    phase: String,
    report: Option<std::path::PathBuf>,
}

fn fault() -> Option<&'static Fault> {
    static FAULT: OnceLock<Option<Fault>> = OnceLock::new();
    FAULT
        .get_or_init(|| {
            let phase = std::env::var("NSBOX_FAULT_PHASE").ok()?;
            Some(Fault {
                phase,
                report: std::env::var_os("NSBOX_FAULT_REPORT").map(Into::into),
            })
        })
        .as_ref()
}

/// Marks phase `name` of sandbox `id`: stops this process there when the kill tests ask for
/// it (see the module docs); otherwise does nothing.
pub fn phase(name: &'static str, id: &str) {
    debug_assert!(PHASES.contains(&name), "unlisted fault phase {name}");
    let Some(fault) = fault() else {
        return;
    };
    if fault.phase != name {
        return;
    }
    let pid = rustix::process::getpid().as_raw_nonzero().get();
    if let Some(report) = &fault.report {
        use std::io::Write;
        // One short append: lines from concurrent processes do not interleave.
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(report)
        {
            let _ = file.write_all(format!("{name} {id} {pid}\n").as_bytes());
        }
    }
    // SIGSTOP cannot be blocked or caught: the test sees the stop in /proc and then kills,
    // or continues, this process.
    let _ = crate::sys::signal::kill(pid, libc::SIGSTOP);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_are_unique() {
        let mut seen = std::collections::BTreeSet::new();
        for p in PHASES {
            assert!(seen.insert(*p), "{p} listed twice");
        }
    }
}
