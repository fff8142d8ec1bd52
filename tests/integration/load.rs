//! Load (issue 10): 100 sandboxes at once × 10 commands each, one-shots and sessions mixed,
//! a fifth of them on the filtered network. Every command's output must arrive complete and in
//! its place (its own stdout and stderr, nothing of a neighbour's), the host must keep
//! starting processes throughout, and nothing may be left afterwards.
//!
//! Half the slots are sessions (created at once, then sent their 10 commands), half run their
//! 10 commands as 10 one-shot sandboxes in turn; all slots run in parallel, so about 100
//! sandboxes exist at a time. `NSBOX_LOAD_SANDBOXES` and `NSBOX_LOAD_COMMANDS` change the
//! figures; the peak seen is printed.

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use crate::require_root;
use crate::support::*;

fn figure(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

/// What command `k` of slot `slot` prints: a distinct line, many times, on stdout, and one
/// line on stderr.
fn command(slot: usize, k: usize) -> (String, String, String) {
    let tag = format!("s{slot}c{k}");
    let script = format!("yes {tag} | head -n 3000; echo err-{tag} >&2");
    (
        script,
        format!("{tag}\n").repeat(3000),
        format!("err-{tag}\n"),
    )
}

#[test]
fn load_100_sandboxes_times_10_commands_each() {
    require_root!();
    let _serial = prune_lock();
    let slots = figure("NSBOX_LOAD_SANDBOXES", 100);
    let commands = figure("NSBOX_LOAD_COMMANDS", 10);
    let run_dir = tempfile::Builder::new()
        .prefix("nsbox-load-")
        .tempdir()
        .unwrap();
    let dir = run_dir.path().to_path_buf();
    let cmd = move |args: &[&str]| {
        let mut c = nsbox_cmd(args);
        c.env("NSBOX_RUN_DIR", &dir).stdin(Stdio::null());
        c
    };
    let in_flight = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let ids = Arc::new(Mutex::new(Vec::new()));
    let barrier = Arc::new(Barrier::new(slots));
    let done = Arc::new(AtomicBool::new(false));

    // The host stays responsive: a process started every 100 ms throughout (the slowest
    // start is printed; a start that never completes fails the test).
    let watchdog = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let mut slowest = Duration::ZERO;
            let mut starts = 0;
            while !done.load(Ordering::Relaxed) {
                let t = Instant::now();
                let status = std::process::Command::new("/bin/true").status().unwrap();
                assert!(status.success());
                slowest = slowest.max(t.elapsed());
                starts += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            (starts, slowest)
        })
    };

    let started = Instant::now();
    let workers: Vec<_> = (0..slots)
        .map(|slot| {
            let cmd = cmd.clone();
            let in_flight = Arc::clone(&in_flight);
            let peak = Arc::clone(&peak);
            let ids = Arc::clone(&ids);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                let filtered = slot % 10 < 2;
                let net: &[&str] = if filtered {
                    &["--allow", "192.0.2.1:80"]
                } else {
                    &[]
                };
                let enter = || {
                    let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                };
                let leave = || {
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                };
                if slot % 2 == 0 {
                    // A session: created with the others, then sent its commands.
                    let name = format!("load{slot}");
                    let mut args = vec!["create", "--name", &name];
                    args.extend_from_slice(net);
                    let out = cmd(&args).output().unwrap();
                    let r: Run = out.into();
                    assert_eq!(r.code, 0, "slot {slot}: create: {r:?}");
                    ids.lock().unwrap().push(r.stdout.trim().to_string());
                    enter();
                    barrier.wait();
                    for k in 0..commands {
                        let (script, stdout, stderr) = command(slot, k);
                        let r: Run = cmd(&["exec", "--session", &name, "--", "sh", "-c", &script])
                            .output()
                            .unwrap()
                            .into();
                        assert_eq!(r.code, 0, "slot {slot} command {k}: {}", r.stderr);
                        assert!(
                            r.stdout == stdout,
                            "slot {slot} command {k}: stdout differs"
                        );
                        assert_eq!(r.stderr, stderr, "slot {slot} command {k}");
                    }
                    let r: Run = cmd(&["rm", "-f", &name]).output().unwrap().into();
                    assert_eq!(r.code, 0, "slot {slot}: rm: {r:?}");
                    leave();
                } else {
                    barrier.wait();
                    for k in 0..commands {
                        let (script, stdout, stderr) = command(slot, k);
                        let mut args = vec!["exec", "--json"];
                        args.extend_from_slice(net);
                        args.extend_from_slice(&["--", "sh", "-c", &script]);
                        enter();
                        let r: Run = cmd(&args).output().unwrap().into();
                        leave();
                        let evs = events(&r.stdout);
                        ids.lock().unwrap().push(sandbox_id(&evs));
                        let text = |kind: &str| -> String {
                            evs.iter()
                                .filter(|e| e["type"] == kind)
                                .map(|e| e["data"].as_str().unwrap())
                                .collect()
                        };
                        assert_eq!(r.code, 0, "slot {slot} command {k}: {r:?}");
                        assert!(
                            text("stdout") == stdout,
                            "slot {slot} command {k}: stdout differs"
                        );
                        assert_eq!(text("stderr"), stderr, "slot {slot} command {k}");
                    }
                }
            })
        })
        .collect();
    let mut failures = Vec::new();
    for (slot, w) in workers.into_iter().enumerate() {
        if let Err(e) = w.join() {
            failures.push(format!(
                "slot {slot}: {}",
                e.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default()
            ));
        }
    }
    let elapsed = started.elapsed();
    done.store(true, Ordering::Relaxed);
    let (starts, slowest) = watchdog.join().expect("the host kept starting processes");
    assert!(failures.is_empty(), "{failures:#?}");
    eprintln!(
        "load: {slots} sandboxes x {commands} commands in {elapsed:?}, peak {} at once; host: {starts} process starts, slowest {slowest:?}",
        peak.load(Ordering::SeqCst)
    );

    // Nothing left: no process, cgroup or session of any of them.
    let ids = ids.lock().unwrap().clone();
    assert_eq!(ids.len(), slots / 2 + (slots - slots / 2) * commands);
    assert!(
        eventually(30.0, || ids
            .iter()
            .all(|id| leftover_cgroups(id).is_empty())),
        "cgroups left: {:?}",
        ids.iter()
            .flat_map(|id| leftover_cgroups(id))
            .collect::<Vec<_>>()
    );
    let mut left = Vec::new();
    let mut stack = vec![run_dir.path().to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if ids.iter().any(|id| name.contains(id.as_str())) {
                left.push(e.path());
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
    }
    assert!(left.is_empty(), "session state left: {left:?}");
}
