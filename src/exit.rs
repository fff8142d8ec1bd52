//! nsbox's exit codes. The command's own status passes through unchanged; a command killed by
//! signal N gives 128+N; the codes below are reserved for what nsbox itself reports, one per
//! kind of failure a script may want to tell apart ([`crate::report::Class`] decides which).
//! Never renumber: scripts depend on them. A command can exit with any of these codes itself;
//! `--json` tells the two apart (nsbox's own failures come with an `error` event).
//!
//! | code | meaning |
//! |------|---------|
//! | 0–255 | the command's own exit status |
//! | 121 | bad usage: a flag, argument, profile, config file or recipe is wrong; nothing was started |
//! | 122 | this host cannot run the sandbox: not root, or a kernel feature, namespace or cgroup controller is missing (`nsbox doctor` says which) |
//! | 123 | the image is not in the store and was not (or could not be) pulled |
//! | 124 | the command ran longer than `--timeout`; every process of the sandbox was killed |
//! | 125 | nsbox failed: the sandbox could not be set up, or another failure of nsbox's own |
//! | 126 | the command was found but could not be executed (permission, format) |
//! | 127 | the command was not found |
//! | 128+N | the command was killed by signal N (130 = SIGINT, 143 = SIGTERM; a one-shot ended by `nsbox stop`: 143, or 137 when killed after the grace) |
//! | 137 | also: killed by the kernel's OOM killer at the memory limit (stderr / the JSON exit event say so) |
//!
//! Before 121–123 existed, those failures exited with 125.

/// A flag, argument, profile, config file or recipe is wrong.
pub const USAGE: i32 = 121;
/// This host cannot run the sandbox (privileges, kernel features, cgroup controllers).
pub const HOST_NOT_CAPABLE: i32 = 122;
/// The image is not in the store and was not pulled.
pub const IMAGE_NOT_FOUND: i32 = 123;
/// The command ran past `--timeout`.
pub const TIMEOUT: i32 = 124;
/// nsbox itself failed (sandbox setup, internal).
pub const NSBOX_FAILED: i32 = 125;
/// The command could not be executed.
pub const NOT_EXECUTABLE: i32 = 126;
/// The command was not found.
pub const NOT_FOUND: i32 = 127;
/// Base of "killed by signal N".
pub const SIGNAL_BASE: i32 = 128;
/// Killed by the OOM killer (SIGKILL).
pub const OOM: i32 = SIGNAL_BASE + 9;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::sandbox::{Ending, Outcome};

    fn outcome(ending: Ending, oom: bool) -> Outcome {
        Outcome {
            id: "t".into(),
            ending,
            oom,
            truncated: false,
            duration: Duration::ZERO,
            marks: Vec::new(),
            warnings: Vec::new(),
            memory_limit: None,
            in_session: false,
            exec_id: None,
            usage: Default::default(),
            capture: Default::default(),
            kept: None,
        }
    }

    #[test]
    fn outcomes_map_to_the_documented_codes() {
        let cases = [
            (Ending::Exited(0), false, 0),
            (Ending::Exited(3), false, 3),
            (Ending::Exited(255), false, 255),
            // A command may exit with nsbox's own codes: passed through unchanged.
            (Ending::Exited(125), false, 125),
            (Ending::Signaled(libc::SIGINT), false, 130),
            (Ending::Signaled(libc::SIGTERM), false, 143),
            (Ending::Signaled(libc::SIGKILL), true, OOM),
            (
                Ending::ExecFailed {
                    code: NOT_FOUND,
                    message: String::new(),
                },
                false,
                127,
            ),
            (
                Ending::ExecFailed {
                    code: NOT_EXECUTABLE,
                    message: String::new(),
                },
                false,
                126,
            ),
            (Ending::TimedOut(Duration::from_secs(1)), false, TIMEOUT),
            (Ending::Interrupted(libc::SIGTERM), false, 143),
        ];
        for (ending, oom, code) in cases {
            let o = outcome(ending.clone(), oom);
            assert_eq!(o.exit_code(), code, "{ending:?}");
        }
    }

    #[test]
    fn reserved_codes_are_distinct_and_fixed() {
        let codes = [
            USAGE,
            HOST_NOT_CAPABLE,
            IMAGE_NOT_FOUND,
            TIMEOUT,
            NSBOX_FAILED,
            NOT_EXECUTABLE,
            NOT_FOUND,
        ];
        assert_eq!(codes, [121, 122, 123, 124, 125, 126, 127]);
        assert_eq!(OOM, 137);
    }
}
