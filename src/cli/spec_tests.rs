//! Argument → spec, without root: the command line as a user types it, parsed by clap and
//! turned into the validated [`SandboxSpec`] the privileged code receives, or into the
//! [`Failure`] (with its exit code) the user sees.

use std::path::PathBuf;
use std::time::Duration;

use super::exec::{build_spec, ExecExtras};
use super::Command;
use crate::config::Config;
use crate::exit;
use crate::profile::NetworkMode;
use crate::report::{Failure, Phase};
use crate::spec::SandboxSpec;
use crate::units::ByteSize;

fn spec_from(args: &[&str]) -> Result<SandboxSpec, Failure> {
    let mut argv = vec!["nsbox", "exec"];
    argv.extend_from_slice(args);
    let cli = super::parse_from(argv).map_err(|e| Failure::usage(e.to_string()))?;
    let Command::Exec(args) = cli.command else {
        panic!("not an exec")
    };
    let args = args.run;
    let extras = ExecExtras {
        command: args.command,
        entrypoint: args.entrypoint,
        timeout: args.timeout,
        max_output: args.max_output,
        interactive: args.interactive,
        tty: args.tty,
        json: args.json,
        timings: args.timings,
    };
    build_spec(args.sandbox, extras, None, &Config::builtin())
}

#[test]
fn flags_become_the_spec() {
    let spec = spec_from(&[
        "--memory",
        "256m",
        "--cpus",
        "1.5",
        "--pids",
        "64",
        "--timeout",
        "30s",
        "--user",
        "1000:1001",
        "-w",
        "/sandbox/src",
        "--hostname",
        "box",
        "-e",
        "A=1",
        "--json",
        "--",
        "make",
        "test",
    ])
    .unwrap();
    assert_eq!(spec.command, ["make", "test"]);
    assert_eq!(spec.limits.memory, Some(ByteSize::mib(256)));
    assert_eq!(spec.limits.cpus.map(|c| c.to_string()), Some("1.5".into()));
    assert_eq!(spec.limits.pids, Some(64));
    assert_eq!(spec.limits.timeout, Some(Duration::from_secs(30)));
    assert_eq!((spec.uid, spec.gid), (1000, 1001));
    assert_eq!(spec.workdir, PathBuf::from("/sandbox/src"));
    assert_eq!(spec.hostname, "box");
    assert!(spec.env.contains(&("A".into(), "1".into())));
    assert!(spec.io.json && !spec.io.tty && !spec.io.stdin);
    assert_eq!(spec.network, NetworkMode::None, "no network unless asked");
    assert_eq!(spec.profile_name, "default");
}

#[test]
fn none_switches_a_profile_limit_off_and_allow_implies_filtered() {
    let spec = spec_from(&["--memory", "none", "--allow", "example.com", "--", "true"]).unwrap();
    assert_eq!(spec.limits.memory, None);
    assert_eq!(spec.network, NetworkMode::Filtered);
}

#[test]
fn mounts_and_copies_are_resolved_against_the_host() {
    let spec = spec_from(&[
        "--mount",
        "/usr:/opt/usr",
        "--copy",
        "/etc/hostname:notes.txt",
        "--",
        "true",
    ])
    .unwrap();
    assert_eq!(spec.mounts.len(), 1);
    assert!(spec.mounts[0].readonly, "binds are read-only unless :rw");
    assert_eq!(spec.copies[0].target, PathBuf::from("/sandbox/notes.txt"));
}

#[test]
fn bad_arguments_are_usage_failures_with_code_121() {
    for args in [
        &["--memory", "12xb", "--", "true"][..],
        &["--no-such-flag", "--", "true"],
        &["--"],
        &["--hostname", "bad_name", "--", "true"],
        &["--mount", "/usr:/proc/x", "--", "true"],
        &["--user", "nosuchuser", "--", "true"],
        &["--net", "host", "--allow", "example.com", "--", "true"],
        &["--profile", "no-such-profile", "--", "true"],
    ] {
        let failure = spec_from(args).unwrap_err();
        assert_eq!(failure.exit_code(), exit::USAGE, "{args:?}: {failure}");
        assert_eq!(failure.phase, Phase::Usage, "{args:?}");
    }
    let profile = spec_from(&["--profile", "no-such-profile", "--", "true"]).unwrap_err();
    assert!(
        profile
            .hint
            .as_deref()
            .unwrap()
            .contains("built-in profiles"),
        "{profile:?}"
    );
}
