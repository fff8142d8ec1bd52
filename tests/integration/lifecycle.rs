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
    // Prune leaves cgroups younger than a second alone (a sandbox may be starting).
    std::thread::sleep(Duration::from_millis(1100));
    let dry = nsbox(&["prune", "--dry-run"]);
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
    let run = nsbox(&["prune"]);
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
    let script = "echo $(hostname) > /tmp/mine; echo $(hostname) > /sandbox/mine; sleep 1; cat /tmp/mine /sandbox/mine; ls /tmp /sandbox | grep -c mine; ls /proc | grep -c '^[0-9]'";
    let a =
        std::thread::spawn(move || exec(&["--hostname", "box-a", "--", "/bin/sh", "-c", script]));
    let b =
        std::thread::spawn(move || exec(&["--hostname", "box-b", "--", "/bin/sh", "-c", script]));
    let (a, b) = (a.join().unwrap(), b.join().unwrap());
    assert_eq!(
        a.stdout.lines().take(2).collect::<Vec<_>>(),
        ["box-a", "box-a"],
        "{a:?}"
    );
    assert_eq!(
        b.stdout.lines().take(2).collect::<Vec<_>>(),
        ["box-b", "box-b"],
        "{b:?}"
    );
    for run in [&a, &b] {
        let procs: u32 = run.stdout.lines().last().unwrap().parse().unwrap();
        assert!(procs <= 5, "only its own processes: {run:?}");
    }
}

#[test]
fn prune_never_touches_a_running_sandbox() {
    require_root!();
    let _serial = prune_lock();
    let (mut child, id) = start_json(&["--", "sleep", "31342"]);
    assert!(eventually(5.0, || !host_processes_matching("sleep 31342").is_empty()));
    std::thread::sleep(Duration::from_millis(1100));
    let run = nsbox(&["prune"]);
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
