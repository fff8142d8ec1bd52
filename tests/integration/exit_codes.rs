//! Every exit code of the table in README ("Exit codes") and `src/exit.rs`, from the real
//! binary: the command's own status, 121 bad usage, 122 host not capable, 123 image not
//! found, 124 timeout, 125 nsbox failed, 126 not executable, 127 not found, 128+N signals,
//! 137 OOM (`limits::limits_memory_bomb_ends_with_the_oom_code`). With `--json`, nsbox's own failures come with an `error` event that carries the
//! phase, the message, the hint and the same code.

use crate::require_root;
use crate::support::*;

fn error_event(run: &Run) -> serde_json::Value {
    events(&run.stdout)
        .into_iter()
        .find(|e| e["type"] == "error")
        .unwrap_or_else(|| panic!("no error event: {run:?}"))
}

#[test]
fn exit_code_table_from_the_real_binary() {
    require_root!();
    // The command's own status passes through.
    assert_eq!(exec(&["--", "true"]).code, 0);
    assert_eq!(exec(&["--", "/bin/sh", "-c", "exit 3"]).code, 3);
    // 121: bad usage, before anything starts.
    let usage = exec(&["--json", "--no-such-flag", "--", "true"]);
    assert_eq!(usage.code, 121, "{usage:?}");
    let usage = exec(&["--json", "--hostname", "bad_name", "--", "true"]);
    assert_eq!(usage.code, 121, "{usage:?}");
    let err = error_event(&usage);
    assert_eq!(err["phase"], "usage");
    assert_eq!(err["code"], 121);
    // 123: an image the store does not have (the tests' config never pulls).
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let missing = nsbox(&[
        "--state-root",
        store.to_str().unwrap(),
        "exec",
        "--json",
        "--image",
        "nosuch-nsbox-image:1",
        "--",
        "true",
    ]);
    assert_eq!(missing.code, 123, "{missing:?}");
    let err = error_event(&missing);
    assert_eq!(err["phase"], "image");
    assert!(err["message"]
        .as_str()
        .unwrap()
        .contains("'nosuch-nsbox-image:1' not found"));
    assert!(
        err["hint"].as_str().unwrap().contains("nsbox images"),
        "the hint is a field of its own: {err}"
    );
    assert!(!err["message"].as_str().unwrap().contains("hint:"), "{err}");
    // 124: --timeout.
    assert_eq!(exec(&["--timeout", "300ms", "--", "sleep", "30"]).code, 124);
    // 125: the sandbox could not be set up.
    let setup = exec(&["--json", "-w", "/etc/passwd/sub", "--", "true"]);
    assert_eq!(setup.code, 125, "{setup:?}");
    assert_eq!(error_event(&setup)["phase"], "setup");
    // 126 and 127: the command could not be executed, or not found.
    assert_eq!(exec(&["--", "/etc/passwd"]).code, 126);
    assert_eq!(exec(&["--", "no-such-command-nsbox"]).code, 127);
    // 128+N: killed by signal N.
    assert_eq!(
        exec(&["--", "/bin/sh", "-c", "kill -TERM $$"]).code,
        128 + 15
    );
}

#[test]
fn a_host_that_cannot_run_sandboxes_exits_122() {
    require_root!();
    use std::os::unix::process::CommandExt;
    // Without root, this host cannot make a sandbox: 122, and the hint says what to do.
    let out = nsbox_cmd(&["exec", "--json", "--", "true"])
        .uid(65534)
        .gid(65534)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let run: Run = out.into();
    assert_eq!(run.code, 122, "{run:?}");
    let err = error_event(&run);
    assert_eq!(err["phase"], "setup");
    assert_eq!(err["code"], 122);
    assert!(err["hint"].as_str().unwrap().contains("sudo"), "{err}");
}
