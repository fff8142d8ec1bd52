//! Bad input gets a clear error, the documented code (121 for bad usage, 122 for a host that
//! cannot run sandboxes, 125 for other failures of nsbox's own) and leaves nothing behind.

use crate::require_root;
use crate::support::*;

/// A usage error: exit 121, `needle` on stderr, nothing on stdout.
fn fails_with(args: &[&str], needle: &str) {
    let run = nsbox(args);
    assert_eq!(run.code, 121, "{args:?}: {run:?}");
    assert!(
        run.stderr.contains(needle),
        "{args:?}: expected {needle:?} in {:?}",
        run.stderr
    );
    assert!(
        run.stdout.is_empty(),
        "{args:?}: stdout belongs to the command: {:?}",
        run.stdout
    );
}

#[test]
fn usage_errors_say_what_is_wrong() {
    fails_with(&["exec", "--no-such-flag", "--", "true"], "--no-such-flag");
    fails_with(&["exec", "--memory", "12xb", "--", "true"], "12xb");
    fails_with(&["exec", "--timeout", "soon", "--", "true"], "soon");
    fails_with(&["exec", "--cpus", "0", "--", "true"], "greater than zero");
    fails_with(
        &["exec", "--user", "nosuchuser", "--", "true"],
        "no user 'nosuchuser' in the sandbox's /etc/passwd",
    );
    fails_with(&["exec", "--net", "wifi", "--", "true"], "wifi");
    fails_with(&["exec"], "no command given");
    fails_with(
        &["exec", "-t", "--json", "--", "true"],
        "cannot be used with",
    );
    fails_with(&["no-such-subcommand"], "no-such-subcommand");
}

#[test]
fn missing_paths_are_reported_before_anything_starts() {
    fails_with(
        &["exec", "--rootfs", "/nonexistent/rootfs", "--", "true"],
        "/nonexistent/rootfs: does not exist",
    );
    fails_with(
        &["exec", "--mount", "/nonexistent/src:/data", "--", "true"],
        "does not exist",
    );
    fails_with(
        &["exec", "--copy", "/nonexistent/src:x", "--", "true"],
        "does not exist",
    );
    fails_with(
        &["exec", "--mount", "/usr:/proc/evil", "--", "true"],
        "inside /proc",
    );
    fails_with(
        &["exec", "--env-file", "/nonexistent/env", "--", "true"],
        "/nonexistent/env",
    );
}

#[test]
fn profiles_are_strict() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[limits]\nmemroy = \"1g\"\n").unwrap();
    fails_with(
        &["exec", "--profile", bad.to_str().unwrap(), "--", "true"],
        "memroy",
    );
    let bad_value = dir.path().join("value.toml");
    std::fs::write(&bad_value, "[limits]\nmemory = \"lots\"\n").unwrap();
    fails_with(
        &[
            "exec",
            "--profile",
            bad_value.to_str().unwrap(),
            "--",
            "true",
        ],
        "limits.memory",
    );
    fails_with(
        &["exec", "--profile", "no-such-profile", "--", "true"],
        "built-in profiles are",
    );
}

#[test]
fn secrets_in_bad_flags_are_not_echoed() {
    let run = nsbox(&[
        "exec",
        "--secret",
        "TOKEN=hunter2-secret",
        "--memory",
        "bad",
        "--",
        "true",
    ]);
    assert_eq!(run.code, 121);
    assert!(!run.stderr.contains("hunter2-secret"), "{}", run.stderr);
    // An error nsbox itself writes, naming a flag's value that contains the secret: masked.
    let run = nsbox(&[
        "exec",
        "--secret",
        "TOKEN=hunter2-secret",
        "--env-file",
        "/nonexistent/hunter2-secret",
        "--",
        "true",
    ]);
    assert_eq!(run.code, 121);
    assert!(
        run.stderr.contains("--env-file /nonexistent/***"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("hunter2-secret"), "{}", run.stderr);
}

#[test]
fn a_session_takes_no_entrypoint_and_checks_its_env_names() {
    let run = nsbox(&["create", "--image", "nosuch:1", "--entrypoint", "x"]);
    assert_eq!(run.code, 121);
    assert!(
        run.stderr.contains("unexpected argument '--entrypoint'"),
        "{}",
        run.stderr
    );
    // Checked before the session is looked for, as for a new sandbox.
    let run = nsbox(&[
        "exec",
        "--session",
        "nosuch",
        "-e",
        "bad-name",
        "--",
        "true",
    ]);
    assert_eq!(run.code, 121);
    assert!(
        run.stderr.contains("not a valid variable name"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_failing_setup_leaves_nothing_behind() {
    require_root!();
    let run = exec(&["--json", "-w", "/etc/passwd/sub", "--", "/bin/true"]);
    assert_eq!(run.code, 125, "{run:?}");
    let evs = events(&run.stdout);
    let id = sandbox_id(&evs);
    let err = evs
        .iter()
        .find(|e| e["type"] == "error")
        .expect("error event");
    assert_eq!(err["phase"], "setup");
    assert!(
        err["message"].as_str().unwrap().contains("/etc/passwd/sub"),
        "{err}"
    );
    assert!(leftover_cgroups(&id).is_empty());
}

#[test]
fn help_teaches() {
    let run = nsbox(&["exec", "--help"]);
    assert_eq!(run.code, 0);
    for needle in [
        "--memory",
        "--timeout",
        "--secret",
        "--mount",
        "Examples:",
        "Exit codes",
    ] {
        assert!(run.stdout.contains(needle), "--help lacks {needle}");
    }
    let run = nsbox(&["--version"]);
    assert_eq!(run.code, 0);
    assert!(run.stdout.starts_with("nsbox "));
}

#[test]
fn without_root_exec_says_so() {
    require_root!();
    use std::os::unix::process::CommandExt;
    let out = nsbox_cmd(&["exec", "--", "true"])
        .uid(65534)
        .gid(65534)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(122),
        "the host (no root) cannot run it"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("need root") && stderr.contains("sudo"),
        "{stderr}"
    );
}
