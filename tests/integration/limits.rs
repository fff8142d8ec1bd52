//! Resource limits (SECURITY.md "Resources"): each bomb is contained by its limit, reported
//! clearly, and the host keeps working. These run on the hybrid host and, from .ci/run, in the
//! pure cgroup v2 guest.

use std::time::{Duration, Instant};

use crate::require_root;
use crate::support::*;

#[test]
fn limits_memory_bomb_ends_with_the_oom_code() {
    require_root!();
    let run = exec(&[
        "--memory",
        "64m",
        "--",
        "python3",
        "-c",
        "x = b'a' * (400 * 1024 * 1024)",
    ]);
    assert_eq!(run.code, 137, "{}", run.stderr);
    assert!(
        run.stderr.contains("out of memory") && run.stderr.contains("64 MiB"),
        "{}",
        run.stderr
    );
    let run = exec(&[
        "--json",
        "--memory",
        "64m",
        "--",
        "python3",
        "-c",
        "x = b'a' * (400 * 1024 * 1024)",
    ]);
    let evs = events(&run.stdout);
    let exit = evs.last().unwrap();
    assert_eq!(exit["oom"], true, "{exit}");
    assert_eq!(exit["signal"], "SIGKILL");
    assert!(leftover_cgroups(&sandbox_id(&evs)).is_empty());
}

#[test]
fn limits_fork_bomb_is_contained() {
    require_root!();
    // At most --pids processes exist at once; the rest of the forks fail.
    const FORKER: &str = "import os, time\nfor i in range(40):\n    try:\n        if os.fork() == 0:\n            time.sleep(5); os._exit(0)\n    except OSError:\n        pass\nprint(len([p for p in os.listdir('/proc') if p.isdigit()]), flush=True)\nos._exit(0)\n";
    let run = exec(&["--pids", "12", "--", "python3", "-c", FORKER]);
    let count: u32 = run
        .stdout
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{run:?}"));
    assert!(count <= 12, "{count} processes with --pids 12");
    // A real fork bomb, stopped by the deadline, while the host keeps forking. The shell
    // forks once, for the bomb, while pids are plenty, then `exec`s its sleep: it needs no
    // pid the bomb could take first (forking the bomb's pipeline itself failed under load,
    // exit 2).
    let start = Instant::now();
    let run = exec(&[
        "--pids",
        "64",
        "--timeout",
        "2s",
        "--",
        "/bin/sh",
        "-c",
        "(b() { b | b & }; b) & exec sleep 60",
    ]);
    assert_eq!(run.code, 124, "{}", run.stderr);
    assert!(start.elapsed() < Duration::from_secs(15));
    assert_eq!(
        exec(&["--", "/bin/true"]).code,
        0,
        "the host still starts sandboxes"
    );
}

#[test]
fn limits_timeout_kills_every_process() {
    require_root!();
    let start = Instant::now();
    let run = exec(&[
        "--timeout",
        "1s",
        "--",
        "/bin/sh",
        "-c",
        "trap '' TERM INT; sleep 31337 & sleep 31338",
    ]);
    assert_eq!(run.code, 124);
    assert!(run.stderr.contains("timed out after 1s"), "{}", run.stderr);
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "{:?}",
        start.elapsed()
    );
    assert!(
        eventually(3.0, || host_processes_matching("sleep 3133").is_empty()),
        "the command and its children are gone"
    );
}

#[test]
fn limits_output_flood_is_capped() {
    require_root!();
    let run = exec(&[
        "--max-output",
        "1m",
        "--",
        "/bin/sh",
        "-c",
        "yes | head -c 10485760; echo done >&2",
    ]);
    assert_eq!(run.code, 0);
    assert_eq!(run.stdout.len(), 1 << 20);
    assert!(
        run.stderr.contains("output truncated at 1 MiB"),
        "{}",
        run.stderr
    );
    let run = exec(&[
        "--json",
        "--max-output",
        "100k",
        "--",
        "/bin/sh",
        "-c",
        "yes | head -c 1000000",
    ]);
    let evs = events(&run.stdout);
    assert!(evs.iter().any(|e| e["type"] == "truncated"));
    assert_eq!(evs.last().unwrap()["truncated"], true);
    let relayed: usize = evs
        .iter()
        .filter(|e| e["type"] == "stdout")
        .map(|e| e["data"].as_str().unwrap().len())
        .sum();
    assert_eq!(relayed, 100 * 1024);
}

#[test]
fn limits_are_written_to_the_sandbox_cgroup() {
    require_root!();
    let (mut child, id) = start_json(&[
        "--memory", "96m", "--cpus", "0.5", "--pids", "33", "--", "sleep", "3.0137",
    ]);
    // Once the command runs, the limits are in place (they are written before any process
    // enters the cgroup; the start event may come before that).
    assert!(eventually(10.0, || !host_processes_matching(
        "sleep 3.0137"
    )
    .is_empty()));
    assert!(!leftover_cgroups(&id).is_empty());
    let dirs = sandbox_cgroup_dirs(&id);
    let read = |name: &str| -> Option<String> {
        dirs.iter()
            .find_map(|d| std::fs::read_to_string(d.join(name)).ok())
            .map(|s| s.trim().to_string())
    };
    let memory = read("memory.max")
        .or_else(|| read("memory.limit_in_bytes"))
        .expect("memory limit file");
    assert_eq!(memory, (96u64 << 20).to_string());
    assert_eq!(read("pids.max").expect("pids.max"), "33");
    let cpu = read("cpu.max")
        .or_else(|| read("cpu.cfs_quota_us"))
        .expect("cpu quota file");
    assert!(cpu.starts_with("50000"), "{cpu}");
    let swap = read("memory.swap.max").or_else(|| read("memory.memsw.limit_in_bytes"));
    if let Some(swap) = swap {
        assert!(
            swap == "0" || swap == (96u64 << 20).to_string(),
            "swap off: {swap}"
        );
    }
    assert!(child.wait().unwrap().success());
    assert!(
        leftover_cgroups(&id).is_empty(),
        "the cgroup is removed at the end"
    );
}
