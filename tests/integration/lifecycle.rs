//! Ctrl-C, SIGTERM, a killed supervisor, prune, and concurrent sandboxes.

use std::process::Child;
use std::time::{Duration, Instant};

use crate::require_root;
use crate::support::*;

fn signal(child: &Child, sig: i32) {
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
        rustix::process::Signal::from_named_raw(sig).unwrap(),
    )
    .unwrap();
}

#[test]
fn ctrl_c_tears_the_sandbox_down() {
    require_root!();
    let (mut child, id) = start_json(&["--", "sleep", "31339"]);
    assert!(eventually(5.0, || !host_processes_matching("sleep 31339").is_empty()));
    let t = Instant::now();
    signal(&child, libc::SIGINT);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(t.elapsed() < Duration::from_secs(3));
    assert!(host_processes_matching("sleep 31339").is_empty());
    assert!(leftover_cgroups(&id).is_empty());
}

#[test]
fn sigterm_kills_a_command_that_ignores_it_after_the_grace_period() {
    require_root!();
    let (mut child, id) = start_json(&[
        "--",
        "/bin/sh",
        "-c",
        "trap '' TERM INT; sleep 31340; sleep 31340",
    ]);
    assert!(eventually(5.0, || !host_processes_matching("sleep 31340").is_empty()));
    let t = Instant::now();
    signal(&child, libc::SIGTERM);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(143));
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(6),
        "{took:?}"
    );
    assert!(host_processes_matching("sleep 31340").is_empty());
    assert!(leftover_cgroups(&id).is_empty());
}

#[test]
fn a_killed_supervisor_takes_its_sandbox_along_and_prune_cleans_up() {
    require_root!();
    let _serial = prune_lock();
    let (mut child, id) = start_json(&["--", "sleep", "31341"]);
    assert!(eventually(5.0, || !host_processes_matching("sleep 31341").is_empty()));
    signal(&child, libc::SIGKILL);
    child.wait().unwrap();
    assert!(
        eventually(5.0, || host_processes_matching("sleep 31341").is_empty()),
        "the sandbox's processes die with the supervisor"
    );
    assert!(
        !leftover_cgroups(&id).is_empty(),
        "the killed supervisor could not remove its cgroup"
    );
    // Prune leaves cgroups younger than --min-age alone (a sandbox may be starting)...
    let young = nsbox(&["prune", "--min-age", "1h"]);
    assert_eq!(young.code, 0, "{young:?}");
    assert!(
        young
            .stdout
            .lines()
            .any(|l| l.starts_with("skipped") && l.contains(&id) && l.contains("1h")),
        "{}",
        young.stdout
    );
    assert!(!leftover_cgroups(&id).is_empty());
    // ...by default those younger than a second; nothing else here creates this sandbox's
    // cgroup, so no minimum age.
    let dry = nsbox(&["prune", "--dry-run", "--min-age", "0"]);
    assert_eq!(dry.code, 0, "{dry:?}");
    assert!(
        dry.stdout.contains("would remove") && dry.stdout.contains(&id),
        "{}",
        dry.stdout
    );
    assert!(
        !leftover_cgroups(&id).is_empty(),
        "a dry run removes nothing"
    );
    let run = nsbox(&["prune", "--min-age", "0"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        leftover_cgroups(&id).is_empty(),
        "prune removed {:?}",
        leftover_cgroups(&id)
    );
}

#[test]
fn concurrent_sandboxes_do_not_see_each_other() {
    require_root!();
    // Each sandbox writes files named after itself in /tmp and /sandbox, says so, then waits on
    // its stdin: the test lets both go on only once both have written, so the two run at the
    // same time by construction (not by a sleep), and each then lists what it sees.
    let script = "h=$(hostname); echo $h > /tmp/mine-$h; echo $h > /sandbox/mine-$h; \
                  echo written; read go; \
                  cat /tmp/mine-* /sandbox/mine-*; ls /tmp /sandbox | grep -c mine; \
                  ls /proc | grep -c '^[0-9]'";
    let start = |name: &str| {
        nsbox_cmd(&[
            "exec",
            "-i",
            "--hostname",
            name,
            "--",
            "/bin/sh",
            "-c",
            script,
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run nsbox")
    };
    let mut boxes = [start("box-a"), start("box-b")];
    for child in &mut boxes {
        let mut line = String::new();
        let stdout = child.stdout.as_mut().unwrap();
        // One byte at a time: nothing beyond the line may be consumed here.
        let mut byte = [0u8; 1];
        while !line.ends_with('\n') {
            let n = std::io::Read::read(stdout, &mut byte).unwrap();
            if n == 0 {
                // Say why: the sandbox's own error is on its stderr.
                let mut stderr = String::new();
                let _ = std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr);
                panic!("the sandbox ended before writing: {line:?}; stderr: {stderr}");
            }
            line.push(byte[0] as char);
        }
        assert_eq!(line, "written\n");
    }
    // Both have written and both still run: let them look.
    let outputs: Vec<Run> = boxes
        .into_iter()
        .map(|mut child| {
            std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"go\n").unwrap();
            drop(child.stdin.take());
            child.wait_with_output().unwrap().into()
        })
        .collect();
    for (run, name) in outputs.iter().zip(["box-a", "box-b"]) {
        assert_eq!(run.code, 0, "{run:?}");
        let lines: Vec<&str> = run.stdout.lines().collect();
        assert_eq!(
            lines[..3],
            [name, name, "2"],
            "only its own files in /tmp and /sandbox: {run:?}"
        );
        let procs: u32 = lines[3].parse().unwrap();
        assert!(procs <= 5, "only its own processes: {run:?}");
    }
}

#[test]
fn a_sandbox_created_now_runs_its_commands_later_and_tears_down() {
    require_root!();
    // examples/lifecycle.rs drives the library's sandbox::Handle without a supervisor:
    // create (the init waits), two commands one after the other, kill, reap, teardown.
    let out = std::process::Command::new(probe_dir().join("lifecycle"))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run examples/lifecycle (cargo build --examples)");
    let run = Run::from(out);
    assert_eq!(run.code, 0, "{run:?}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(
        lines[..8],
        [
            "state created",
            "first one",
            "state running",
            "second left-by-the-first",
            "state killed",
            "state stopped",
            "state torn down",
            lines[7],
        ],
        "{run:?}"
    );
    let id = lines[7].strip_prefix("id ").expect("the sandbox's id");
    assert!(
        leftover_cgroups(id).is_empty(),
        "{:?}",
        leftover_cgroups(id)
    );
}

#[test]
fn prune_never_touches_a_running_sandbox() {
    require_root!();
    let _serial = prune_lock();
    let (mut child, id) = start_json(&["--", "sleep", "31342"]);
    assert!(eventually(5.0, || !host_processes_matching("sleep 31342").is_empty()));
    // No minimum age: the lock, not the cgroup's age, is what protects a running sandbox.
    let run = nsbox(&["prune", "--min-age", "0"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("in use"), "{}", run.stdout);
    assert!(!leftover_cgroups(&id).is_empty());
    assert!(
        !host_processes_matching("sleep 31342").is_empty(),
        "the sandbox still runs"
    );
    signal(&child, libc::SIGTERM);
    child.wait().unwrap();
    assert!(leftover_cgroups(&id).is_empty());
}
