//! Sessions: `nsbox create`, `exec --session`, `cp`, `ps`, `stats`, `stop`, `rm`, `prune`,
//! idle expiry, the setup phase, and crash safety. Each test has its own run directory
//! (`NSBOX_RUN_DIR`), so sessions of concurrent tests never meet.

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::require_root;
use crate::support::*;

/// One test's session store, cleaned when dropped.
struct Store(RunDir);

impl std::ops::Deref for Store {
    type Target = RunDir;
    fn deref(&self) -> &RunDir {
        &self.0
    }
}

impl Store {
    fn new() -> Store {
        Store(RunDir::new())
    }

    /// `nsbox create ARGS` → the session id.
    fn create(&self, args: &[&str]) -> String {
        let mut full = vec!["create"];
        full.extend_from_slice(args);
        let id = self.ok(&full).trim().to_string();
        assert_eq!(id.len(), 12, "create prints the id: {id:?}");
        id
    }

    /// `nsbox exec --session S -- sh -c SCRIPT`.
    fn sh(&self, session: &str, script: &str) -> Run {
        self.run(&["exec", "--session", session, "--", "/bin/sh", "-c", script])
    }

    fn ps(&self) -> Vec<serde_json::Value> {
        let out = self.ok(&["ps", "--json"]);
        serde_json::from_str::<serde_json::Value>(&out)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    fn state(&self, id: &str) -> Option<String> {
        self.ps()
            .iter()
            .find(|s| s["id"] == id)
            .map(|s| s["state"].as_str().unwrap().to_string())
    }

    fn record(&self, id: &str) -> Option<serde_json::Value> {
        let text =
            std::fs::read(self.path().join("sessions").join(id).join("session.json")).ok()?;
        serde_json::from_slice(&text).ok()
    }
}

/// Processes of the host that are in a cgroup of session `id`.
fn processes_in(id: &str) -> Vec<u32> {
    let needle = format!("nsbox-{id}");
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if std::fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|c| c.contains(&needle))
        {
            pids.push(pid);
        }
    }
    pids
}

/// Host processes whose environment names this run directory (supervisors, CLIs).
fn processes_of_store(store: &Store) -> Vec<u32> {
    let needle = format!("NSBOX_RUN_DIR={}", store.path().display());
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        if let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) {
            if env.split(|b| *b == 0).any(|v| v == needle.as_bytes()) {
                pids.push(pid);
            }
        }
    }
    pids
}

/// A cgroup directory of session `id` carrying `file` (e.g. pids.current).
fn cgroup_file(id: &str, file: &str) -> Option<PathBuf> {
    sandbox_cgroup_dirs(id)
        .into_iter()
        .map(|d| d.join(file))
        .find(|f| f.exists())
}

fn read_number(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn kill(pid: u32, sig: i32) {
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::from_named_raw(sig).unwrap(),
    );
}

#[test]
fn files_and_background_processes_persist_between_execs() {
    require_root!();
    let store = Store::new();
    let id = store.create(&["--name", "persist"]);

    let w = store.sh("persist", "echo hello > notes.txt; pwd");
    assert_eq!(w.code, 0, "{w:?}");
    assert_eq!(w.stdout.trim(), "/sandbox");
    let r = store.sh(&id, "cat /sandbox/notes.txt");
    assert_eq!(r.stdout, "hello\n", "{r:?}");

    // A background process outlives the exec that started it and the next exec sees it.
    let bg = store.sh(&id, "sleep 31401 >/dev/null 2>&1 & echo $!");
    assert_eq!(bg.code, 0, "{bg:?}");
    let seen = store.sh(
        &id,
        "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done",
    );
    assert!(seen.stdout.contains("sleep 31401"), "{seen:?}");
    // ...as a process of the session's own pid namespace (small pids, not the host's).
    let pid: u32 = bg.stdout.trim().parse().unwrap();
    assert!(pid < 100, "pid {pid} is from the session's pid namespace");
    assert!(!host_processes_matching("sleep 31401").is_empty());

    // Each exec gets its own exit status.
    assert_eq!(store.sh(&id, "exit 7").code, 7);
    assert_eq!(store.sh(&id, "kill -9 $$").code, 137);
    let missing = store.run(&["exec", "--session", &id, "--", "no-such-command-xyz"]);
    assert_eq!(missing.code, 127, "{missing:?}");

    store.ok(&["stop", &id]);
    assert!(
        eventually(5.0, || host_processes_matching("sleep 31401").is_empty()),
        "stop ends the background process too"
    );
}

#[test]
fn concurrent_execs_each_get_their_own_output_and_exit_code() {
    require_root!();
    let store = Store::new();
    let id = store.create(&[]);
    let children: Vec<(usize, Child)> = (0..4)
        .map(|i| {
            let script = format!(
                "for n in 1 2 3 4 5; do echo out-{i}-$n; echo err-{i}-$n >&2; sleep 0.05; done; exit {}",
                10 + i
            );
            let child = store
                .cmd(&["exec", "--session", &id, "--", "/bin/sh", "-c", &script])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            (i, child)
        })
        .collect();
    for (i, child) in children {
        let r: Run = child.wait_with_output().unwrap().into();
        assert_eq!(r.code, 10 + i as i32, "{r:?}");
        let want_out: String = (1..=5).map(|n| format!("out-{i}-{n}\n")).collect();
        let want_err: String = (1..=5).map(|n| format!("err-{i}-{n}\n")).collect();
        assert_eq!(r.stdout, want_out);
        assert_eq!(r.stderr, want_err);
    }
}

#[test]
fn session_exec_options_and_json_events() {
    require_root!();
    let store = Store::new();
    let id = store.create(&["--secret", "TOKEN=hunter2-secret", "--max-output", "none"]);

    // -e, -w, the secret masked, the same JSON schema as one-shot exec.
    let r = store.run(&[
        "exec",
        "--session",
        &id,
        "--json",
        "-e",
        "GREETING=hi",
        "-w",
        "/tmp/work",
        "--",
        "/bin/sh",
        "-c",
        "echo $GREETING $PWD $TOKEN; echo oops >&2; exit 3",
    ]);
    assert_eq!(r.code, 3, "{r:?}");
    let ev = events(&r.stdout);
    assert_eq!(ev[0]["type"], "start");
    assert_eq!(ev[0]["id"], id.as_str());
    assert_eq!(ev[0]["profile"], "default");
    let stdout: String = ev
        .iter()
        .filter(|e| e["type"] == "stdout")
        .map(|e| e["data"].as_str().unwrap())
        .collect();
    assert_eq!(stdout, "hi /tmp/work ***\n");
    assert!(ev
        .iter()
        .any(|e| e["type"] == "stderr" && e["data"] == "oops\n"));
    let exit = ev.last().unwrap();
    assert_eq!(exit["type"], "exit");
    assert_eq!(exit["code"], 3);
    assert!(!r.stdout.contains("hunter2"));

    // stdin with -i.
    let mut child = store
        .cmd(&["exec", "--session", &id, "-i", "--", "tr", "a-z", "A-Z"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"shout\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "SHOUT\n");

    // --timeout kills the command, not the session.
    let t = store.run(&[
        "exec",
        "--session",
        &id,
        "--timeout",
        "300ms",
        "--",
        "sleep",
        "31402",
    ]);
    assert_eq!(t.code, 124, "{t:?}");
    assert!(t.stderr.contains("timed out"), "{t:?}");
    assert!(eventually(5.0, || host_processes_matching("sleep 31402").is_empty()));
    assert_eq!(store.sh(&id, "true").code, 0, "the session runs on");

    // --max-output caps one command.
    let big = store.run(&[
        "exec",
        "--session",
        &id,
        "--max-output",
        "1k",
        "--",
        "/bin/sh",
        "-c",
        "head -c 100000 /dev/zero | tr '\\0' x",
    ]);
    assert_eq!(big.code, 0, "{big:?}");
    assert_eq!(big.stdout.len(), 1024);
    assert!(big.stderr.contains("truncated"), "{big:?}");

    // Ctrl-C on the CLI ends the command; the session runs on.
    let child = store
        .cmd(&["exec", "--session", &id, "--", "sleep", "31403"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(eventually(5.0, || !host_processes_matching("sleep 31403").is_empty()));
    kill(child.id(), libc::SIGINT);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    assert!(eventually(5.0, || host_processes_matching("sleep 31403").is_empty()));
    assert_eq!(store.state(&id).as_deref(), Some("running"));

    // A CLI killed outright takes its command along; the session runs on.
    let mut child = store
        .cmd(&["exec", "--session", &id, "--", "sleep", "31410"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    assert!(eventually(5.0, || !host_processes_matching("sleep 31410").is_empty()));
    kill(child.id(), libc::SIGKILL);
    let _ = child.wait();
    assert!(eventually(5.0, || host_processes_matching("sleep 31410").is_empty()));
    assert_eq!(store.sh(&id, "echo alive").stdout, "alive\n");
}

/// A tree with modes, an empty directory, a symlink and an executable.
fn make_tree(root: &Path) {
    std::fs::create_dir_all(root.join("src/deep/er")).unwrap();
    std::fs::create_dir_all(root.join("empty")).unwrap();
    std::fs::write(root.join("src/main.rs"), "fn main() {}\n").unwrap();
    std::fs::write(root.join("src/deep/er/data.bin"), [0u8, 1, 2, 255]).unwrap();
    std::fs::write(root.join("run.sh"), "#!/bin/sh\necho ran\n").unwrap();
    std::fs::write(root.join("private"), "key\n").unwrap();
    std::os::unix::fs::symlink("src/main.rs", root.join("link")).unwrap();
    let mode = |p: &str, m: u32| {
        std::fs::set_permissions(root.join(p), std::fs::Permissions::from_mode(m)).unwrap()
    };
    mode("run.sh", 0o755);
    mode("private", 0o600);
    mode("src/deep", 0o751);
    mode("empty", 0o700);
}

/// Relative path → (kind, mode, content) of every entry below `root`.
fn describe(root: &Path) -> Vec<(String, String, u32, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let mode = md.mode() & 0o7777;
            if md.is_dir() {
                out.push((rel, "dir".into(), mode, Vec::new()));
                stack.push(p);
            } else if md.file_type().is_symlink() {
                let target = std::fs::read_link(&p).unwrap();
                out.push((
                    rel,
                    "link".into(),
                    0,
                    target.display().to_string().into_bytes(),
                ));
            } else {
                out.push((rel, "file".into(), mode, std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn cp_copies_trees_both_ways_with_modes_and_empty_dirs() {
    require_root!();
    let store = Store::new();
    let id = store.create(&["--name", "cpy"]);
    let host = tempfile::tempdir().unwrap();
    let src = host.path().join("repo");
    make_tree(&src);

    // Into a path whose parents do not exist yet.
    store.ok(&["cp", src.to_str().unwrap(), "cpy:/sandbox/a/b/repo"]);
    let inside = store.sh(
        "cpy",
        "cd /sandbox/a/b/repo && stat -c '%n %a %U' run.sh private src/deep empty && ./run.sh && readlink link && cat src/main.rs",
    );
    assert_eq!(inside.code, 0, "{inside:?}");
    assert_eq!(
        inside.stdout,
        "run.sh 755 sandbox\nprivate 600 sandbox\nsrc/deep 751 sandbox\nempty 700 sandbox\nran\nsrc/main.rs\nfn main() {}\n"
    );
    // Parents created for the copy belong to the sandbox user too.
    let parent = store.sh("cpy", "stat -c '%U' /sandbox/a/b");
    assert_eq!(parent.stdout, "sandbox\n");

    // The workload changes the tree; copy it back out.
    store.sh(
        "cpy",
        "cd /sandbox/a/b/repo && echo more >> src/main.rs && mkdir -p new/empty2",
    );
    let back = host.path().join("back");
    store.ok(&[
        "cp",
        &format!("{id}:/sandbox/a/b/repo"),
        back.to_str().unwrap(),
    ]);
    let mut want = describe(&src);
    for entry in want.iter_mut() {
        if entry.0 == "src/main.rs" {
            entry.3 = b"fn main() {}\nmore\n".to_vec();
        }
    }
    let got: Vec<_> = describe(&back)
        .into_iter()
        .filter(|e| !e.0.starts_with("new"))
        .collect();
    assert_eq!(got, want);
    assert!(back.join("new/empty2").is_dir());
    // Copied-out files belong to whoever ran nsbox cp.
    assert_eq!(std::fs::metadata(back.join("run.sh")).unwrap().uid(), 0);

    // A single file, into an existing directory (keeps its name) and relative to the workdir.
    std::fs::write(host.path().join("one.txt"), "one\n").unwrap();
    store.ok(&[
        "cp",
        host.path().join("one.txt").to_str().unwrap(),
        "cpy:/tmp",
    ]);
    store.ok(&[
        "cp",
        host.path().join("one.txt").to_str().unwrap(),
        "cpy:rel/two.txt",
    ]);
    let r = store.sh("cpy", "cat /tmp/one.txt /sandbox/rel/two.txt");
    assert_eq!(r.stdout, "one\none\n");
    // Out into an existing host directory.
    let outdir = host.path().join("outdir");
    std::fs::create_dir(&outdir).unwrap();
    store.ok(&["cp", "cpy:/tmp/one.txt", outdir.to_str().unwrap()]);
    assert_eq!(
        std::fs::read_to_string(outdir.join("one.txt")).unwrap(),
        "one\n"
    );
}

#[test]
fn cp_never_follows_a_planted_symlink_to_the_host() {
    require_root!();
    let store = Store::new();
    let id = store.create(&[]);
    // The canary lives in the host's /tmp, which the sandbox does not see (its /tmp is its own).
    let host = tempfile::tempdir().unwrap();
    let canary = host.path().join("canary");
    std::fs::write(&canary, "host secret\n").unwrap();
    let canary_dir = host.path().display().to_string();
    let plant = store.sh(
        &id,
        &format!(
            "ln -s {canary} /sandbox/evil && ln -s ../../../../../../..{canary_dir} /sandbox/evildir && ln -s /proc/1/root/etc /sandbox/magic && mkdir -p /sandbox/dir",
            canary = canary.display()
        ),
    );
    assert_eq!(plant.code, 0, "{plant:?}");

    // Copy out: the symlink is copied as a symlink, never as the canary's content.
    let out = host.path().join("out");
    store.ok(&["cp", &format!("{id}:/sandbox/evil"), out.to_str().unwrap()]);
    assert!(std::fs::symlink_metadata(&out)
        .unwrap()
        .file_type()
        .is_symlink());
    // Through the link to a directory: resolved inside the sandbox, where no canary exists.
    let through = store.run(&[
        "cp",
        &format!("{id}:/sandbox/evildir/canary"),
        host.path().join("through").to_str().unwrap(),
    ]);
    assert_eq!(through.code, 125, "{through:?}");
    assert!(!host.path().join("through").exists());
    // Magic links (/proc/PID/root) are refused outright.
    let magic = store.run(&[
        "cp",
        &format!("{id}:/sandbox/magic/hostname"),
        host.path().join("magic").to_str().unwrap(),
    ]);
    assert_eq!(magic.code, 125, "{magic:?}");

    // Copy in: writing "to" the links writes inside the sandbox, the canary stays as it was.
    let payload = host.path().join("payload");
    std::fs::write(&payload, "overwritten\n").unwrap();
    store.ok(&[
        "cp",
        payload.to_str().unwrap(),
        &format!("{id}:/sandbox/evil"),
    ]);
    // Through a dangling link to a directory: parents are never created through a symlink.
    let r = store.run(&[
        "cp",
        payload.to_str().unwrap(),
        &format!("{id}:/sandbox/evildir/canary"),
    ]);
    assert_eq!(r.code, 125, "{r:?}");
    assert_eq!(std::fs::read_to_string(&canary).unwrap(), "host secret\n");
    assert_eq!(
        std::fs::read_dir(host.path()).unwrap().count(),
        3,
        "canary, out, payload"
    );
    let inside = store.sh(
        &id,
        "test -f /sandbox/evil && ! test -L /sandbox/evil && cat /sandbox/evil",
    );
    assert_eq!(inside.stdout, "overwritten\n", "{inside:?}");

    // A swap race: the workload flips a directory and a symlink to the host as fast as it can
    // while the host copies into and out of it; the canary is never touched.
    let flipper = store
        .cmd(&[
            "exec", "--session", &id, "--", "/bin/sh", "-c",
            &format!(
                "cd /sandbox; while true; do mkdir -p race.d; mv race.d race 2>/dev/null; rm -rf race; ln -s {} race; rm -f race; done",
                host.path().display()
            ),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..40 {
        let _ = store.run(&[
            "cp",
            payload.to_str().unwrap(),
            &format!("{id}:/sandbox/race/canary"),
        ]);
        let _ = store.run(&[
            "cp",
            &format!("{id}:/sandbox/race/canary"),
            host.path().join("raced").to_str().unwrap(),
        ]);
        if host.path().join("raced").exists() {
            assert_eq!(
                std::fs::read_to_string(host.path().join("raced")).unwrap(),
                "overwritten\n",
                "only the sandbox's own copy can come out"
            );
            std::fs::remove_file(host.path().join("raced")).unwrap();
        }
    }
    kill(flipper.id(), libc::SIGINT);
    let _ = flipper.wait_with_output();
    assert_eq!(std::fs::read_to_string(&canary).unwrap(), "host secret\n");
}

#[test]
fn ps_and_stats_show_the_cgroup_numbers() {
    require_root!();
    let store = Store::new();
    let id = store.create(&["--name", "numbers", "--memory", "256m", "--pids", "64"]);
    store.sh(
        &id,
        "sleep 31404 & sleep 31404 & sleep 31404 & head -c 40000000 /dev/zero > /tmp/fill",
    );

    let ps = store.ps();
    let row = ps.iter().find(|s| s["id"] == id.as_str()).unwrap();
    assert_eq!(row["name"], "numbers");
    assert_eq!(row["state"], "running");
    assert_eq!(row["network"], "none");
    assert_eq!(row["root"], "host");
    assert_eq!(row["memory"], 256 * 1024 * 1024);
    assert_eq!(row["pids"], 64);
    let table = store.ok(&["ps"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&id) && l.contains("numbers") && l.contains("running")),
        "{table}"
    );

    let stats: serde_json::Value =
        serde_json::from_str(&store.ok(&["stats", "numbers", "--json"])).unwrap();
    let pids_file = cgroup_file(&id, "pids.current").expect("a pids cgroup");
    assert_eq!(stats["pids_current"], read_number(&pids_file));
    assert_eq!(stats["pids_current"], 4, "init and three sleeps: {stats}");
    assert_eq!(stats["pids_limit"], 64);
    assert_eq!(stats["memory_limit_bytes"], 256 * 1024 * 1024);
    let mem_file = cgroup_file(&id, "memory.current")
        .or_else(|| cgroup_file(&id, "memory.usage_in_bytes"))
        .expect("a memory cgroup");
    let file_bytes = read_number(&mem_file);
    let stat_bytes = stats["memory_current_bytes"].as_u64().unwrap();
    assert!(stat_bytes >= 40_000_000, "the 40 MB in /tmp count: {stats}");
    assert!(
        stat_bytes.abs_diff(file_bytes) < file_bytes / 10,
        "stats {stat_bytes} vs {} {file_bytes}",
        mem_file.display()
    );
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        // Pure cgroup v2: cpu.stat is there, and matches the file.
        let cpu = stats["cpu_usage_usec"]
            .as_u64()
            .expect("cpu time on cgroup v2");
        let file = cgroup_file(&id, "cpu.stat").unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        let from_file: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("usage_usec "))
            .unwrap()
            .parse()
            .unwrap();
        assert!(cpu > 0 && cpu <= from_file, "{cpu} vs {from_file}");
    } else if let Some(cpu) = stats["cpu_usage_usec"].as_u64() {
        assert!(cpu > 0);
    }
    assert_eq!(stats["commands_running"], 0);
    let human = store.ok(&["stats", &id]);
    assert!(human.contains("processes  4 of 64"), "{human}");
}

#[test]
fn stop_rm_and_prune_remove_sessions_completely() {
    require_root!();
    let _serial = prune_lock();
    let store = Store::new();
    let a = store.create(&["--name", "alpha"]);
    let b = store.create(&[]);
    let c = store.create(&[]);
    // A background process that ignores SIGTERM, and a command that runs while stop comes.
    let bg = store.sh(&a, "(trap '' TERM; sleep 31405) >/dev/null 2>&1 &");
    assert_eq!(bg.code, 0, "{bg:?}");
    let _ = &c;
    let running = store
        .cmd(&[
            "exec",
            "--session",
            &a,
            "--",
            "/bin/sh",
            "-c",
            "trap '' TERM; sleep 31407; sleep 31407",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(eventually(5.0, || !host_processes_matching("sleep 31407").is_empty()));
    let t = Instant::now();
    store.ok(&["stop", "--grace", "500ms", "alpha"]);
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
    let out = running.wait_with_output().unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(host_processes_matching("sleep 31407").is_empty());
    assert!(host_processes_matching("sleep 31405").is_empty());
    assert!(processes_in(&a).is_empty());
    assert!(leftover_cgroups(&a).is_empty(), "stop removes the cgroups");
    assert_eq!(store.state(&a).as_deref(), Some("stopped"));
    // A stopped session keeps its name until removed, and says why it is not running.
    let refused = store.sh("alpha", "true");
    assert_eq!(refused.code, 125, "{refused:?}");
    assert!(refused.stderr.contains("not running"), "{refused:?}");
    assert_eq!(
        store.ok(&["stop", &a]).trim(),
        format!("{a} (already stopped)")
    );

    // rm refuses a running session without -f, and removes it with -f.
    let r = store.run(&["rm", &b]);
    assert_eq!(r.code, 125);
    assert!(r.stderr.contains("is running"), "{r:?}");
    store.ok(&["rm", "-f", &b]);
    assert!(!store.ids().contains(&b));
    assert!(leftover_cgroups(&b).is_empty());

    // prune removes stopped sessions (not running ones), and --older-than spares young ones.
    let p = store.ok(&["prune", "--older-than", "1h"]);
    assert!(!p.contains(&a), "{p}");
    assert!(store.ids().contains(&a));
    let p = store.ok(&["prune"]);
    assert!(p.contains(&a), "{p}");
    assert!(!store.ids().contains(&a));
    assert!(store.ids().contains(&c), "running sessions are not pruned");
    assert!(!store.path().join("names/alpha").exists());
    // The name is free again.
    let again = store.create(&["--name", "alpha"]);
    store.ok(&["rm", "-f", "alpha"]);
    assert!(!store.ids().contains(&again));
}

#[test]
fn idle_sessions_are_stopped_after_max_age() {
    require_root!();
    let store = Store::new();
    let idle = store.create(&["--max-age", "1s"]);
    let busy = store.create(&["--max-age", "1s"]);
    let keep = store.create(&["--max-age", "none"]);
    // A command that runs keeps its session alive past the max age.
    let long = store
        .cmd(&["exec", "--session", &busy, "--", "sleep", "2.5"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        eventually(6.0, || store.state(&idle).as_deref() == Some("stopped")),
        "idle session expires"
    );
    assert_eq!(store.state(&busy).as_deref(), Some("running"));
    assert!(store.record(&idle).unwrap()["stopped"]["reason"]
        .as_str()
        .unwrap()
        .contains("idle"));
    assert!(leftover_cgroups(&idle).is_empty());
    let out = long.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(eventually(6.0, || store.state(&busy).as_deref() == Some("stopped")));
    assert_eq!(store.state(&keep).as_deref(), Some("running"));
}

#[test]
fn setup_script_runs_as_its_own_phase() {
    require_root!();
    let store = Store::new();
    // Success: raw setup output goes to stderr, stdout carries only the id.
    let r = store.run(&[
        "create",
        "--secret",
        "TOKEN=setup-secret-42",
        "--setup",
        "echo cloning $TOKEN; echo ready > /sandbox/state",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    let id = r.stdout.trim().to_string();
    assert_eq!(id.len(), 12, "{r:?}");
    assert!(r.stderr.contains("cloning ***"), "{r:?}");
    assert!(!r.stderr.contains("setup-secret-42"));
    assert_eq!(store.sh(&id, "cat /sandbox/state").stdout, "ready\n");

    // JSON: setup events carry phase=setup, then "created".
    let script = host_script("echo step one; echo warn >&2");
    let r = store.run(&[
        "create",
        "--json",
        "--name",
        "js",
        "--setup-file",
        script.path().to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    let ev = events(&r.stdout);
    assert_eq!(ev[0]["type"], "start");
    let out: Vec<_> = ev.iter().filter(|e| e["type"] == "stdout").collect();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0]["phase"], "setup");
    assert_eq!(out[0]["data"], "step one\n");
    assert!(ev
        .iter()
        .any(|e| e["type"] == "stderr" && e["phase"] == "setup"));
    let created = ev.last().unwrap();
    assert_eq!(created["type"], "created");
    assert_eq!(created["name"], "js");
    assert_eq!(created["id"], ev[0]["id"]);

    // Failure: create fails with the script's exit code and output, and the session is gone.
    let before = store.ids();
    let r = store.run(&[
        "create",
        "--name",
        "broken",
        "--json",
        "--setup",
        "echo partial; exit 9",
    ]);
    assert_eq!(r.code, 9, "{r:?}");
    let ev = events(&r.stdout);
    let failed_id = ev[0]["id"].as_str().unwrap().to_string();
    assert!(ev
        .iter()
        .any(|e| e["type"] == "stdout" && e["data"] == "partial\n" && e["phase"] == "setup"));
    let err = ev.last().unwrap();
    assert_eq!(err["type"], "error");
    assert_eq!(err["phase"], "setup");
    assert_eq!(err["code"], 9);
    assert_eq!(store.ids(), before, "the failed session left no directory");
    assert!(!store.path().join("names/broken").exists());
    assert!(processes_in(&failed_id).is_empty());
    assert!(leftover_cgroups(&failed_id).is_empty());

    // A setup that runs past its --timeout fails the same way.
    let r = store.run(&["create", "--timeout", "300ms", "--setup", "sleep 31408"]);
    assert_eq!(r.code, 124, "{r:?}");
    assert_eq!(store.ids(), before);
    assert!(host_processes_matching("sleep 31408").is_empty());
}

fn host_script(text: &str) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), text).unwrap();
    f
}

#[test]
fn bad_input_gets_clear_errors() {
    require_root!();
    let store = Store::new();
    let unknown = store.run(&["exec", "--session", "nosuch", "--", "true"]);
    assert_eq!(unknown.code, 125);
    assert!(
        unknown.stderr.contains("no session 'nosuch'"),
        "{unknown:?}"
    );
    for args in [
        vec!["stats", "nosuch"],
        vec!["stop", "nosuch"],
        vec!["rm", "nosuch"],
        vec!["cp", "nosuch:/x", "/tmp/nsbox-never-written"],
    ] {
        let r = store.run(&args);
        assert_eq!(r.code, 125, "{args:?}: {r:?}");
        assert!(r.stderr.contains("nosuch"), "{args:?}: {r:?}");
    }

    let id = store.create(&["--name", "taken"]);
    let dup = store.run(&["create", "--name", "taken"]);
    assert_eq!(dup.code, 125);
    assert!(dup.stderr.contains("'taken' is taken"), "{dup:?}");
    let bad_name = store.run(&["create", "--name", "no/slashes"]);
    assert_eq!(bad_name.code, 121, "a usage error: {bad_name:?}");
    assert_eq!(store.ids().len(), 1, "failed creates leave nothing");

    // Copies name places inside the sandbox: no climbing out.
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("f"), "x").unwrap();
    for dst in ["taken:../../etc/passwd", "taken:/sandbox/../../../tmp/x"] {
        let r = store.run(&["cp", host.path().join("f").to_str().unwrap(), dst]);
        assert_eq!(r.code, 125, "{dst}: {r:?}");
        assert!(r.stderr.contains("'..' is not allowed"), "{r:?}");
    }
    let r = store.run(&[
        "cp",
        "taken:../etc/passwd",
        host.path().join("out").to_str().unwrap(),
    ]);
    assert_eq!(r.code, 125);
    assert!(!host.path().join("out").exists());
    let r = store.run(&["cp", "/etc/hostname", "/tmp/nsbox-never-written"]);
    assert_eq!(r.code, 125);
    assert!(r.stderr.contains("SESSION:PATH"), "{r:?}");
    let r = store.run(&["cp", "/nonexistent-nsbox-src", "taken:/sandbox/x"]);
    assert_eq!(r.code, 125);
    assert!(r.stderr.contains("nonexistent-nsbox-src"), "{r:?}");
    // Read-only places inside say so.
    let r = store.run(&[
        "cp",
        host.path().join("f").to_str().unwrap(),
        "taken:/usr/bin/f",
    ]);
    assert_eq!(r.code, 125);
    assert!(r.stderr.contains("read-only"), "{r:?}");

    // One-shot flags do not silently vanish with --session.
    let r = store.run(&["exec", "--session", "taken", "--memory", "1g", "--", "true"]);
    assert_eq!(r.code, 121, "a usage error");
    assert!(r.stderr.contains("--memory"), "{r:?}");

    store.ok(&["stop", &id]);
    let r = store.sh(&id, "true");
    assert_eq!(r.code, 125);
    assert!(r.stderr.contains("is not running"), "{r:?}");
    let r = store.run(&[
        "cp",
        host.path().join("f").to_str().unwrap(),
        "taken:/sandbox/f",
    ]);
    assert_eq!(r.code, 125);
    assert!(r.stderr.contains("is not running"), "{r:?}");
}

/// Kill -9 the supervisor or the CLI at random moments of create, exec, cp and stop, many
/// times; then nothing of those sandboxes may survive, and prune leaves nothing behind.
#[test]
fn crash_safety_under_random_kills() {
    require_root!();
    let _serial = prune_lock();
    let store = Store::new();
    let host = tempfile::tempdir().unwrap();
    make_tree(&host.path().join("tree"));
    let tree = host.path().join("tree");
    let mut rng = Lcg(std::process::id() as u64 ^ 0x9e37_79b9_7f4a_7c15);
    let mut live: Option<String> = None;
    let mut seen = BTreeSet::new();
    let (mut supervisor_kills, mut cli_kills) = (0, 0);
    // Kill moments spread over the time a whole create takes here (slow hosts, such as a
    // software-emulated VM, need a wider window than 40 ms).
    let started = std::time::Instant::now();
    let calibration = store.run(&["create", "--name", "calibration"]);
    assert_eq!(calibration.code, 0, "{calibration:?}");
    let window = (started.elapsed().as_micros() as u64 * 3 / 2).max(40_000);
    assert_eq!(store.run(&["rm", "-f", "calibration"]).code, 0);
    for i in 0..60 {
        // Make sure there is a session to work on (or create one as the step under test).
        let action = rng.next() % 4;
        let (args, target): (Vec<String>, Option<String>) = match (&live, action) {
            (None, _) | (_, 0) => (vec!["create".into(), "--name".into(), format!("crash{i}")], None),
            (Some(id), 1) => (
                vec!["exec".into(), "--session".into(), id.clone(), "--".into(), "/bin/sh".into(), "-c".into(),
                     "sleep 31409 & echo x > /sandbox/f; head -c 2000000 /dev/zero > /tmp/z; sleep 0.05".into()],
                Some(id.clone()),
            ),
            (Some(id), 2) => (
                vec!["cp".into(), tree.display().to_string(), format!("{id}:/sandbox/t{i}")],
                Some(id.clone()),
            ),
            (Some(id), _) => (vec!["stop".into(), "--grace".into(), "200ms".into(), id.clone()], Some(id.clone())),
        };
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut child = store
            .cmd(&argv)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros(rng.next() % window));
        // Kill the CLI, or the supervisor of the session concerned.
        let victim_supervisor = rng.next() % 2 == 0;
        let ids = store.ids();
        let supervisor = if victim_supervisor {
            let id = target
                .clone()
                .or_else(|| ids.iter().find(|i| !seen.contains(*i)).cloned());
            id.and_then(|id| store.record(&id))
                .and_then(|r| r["supervisor_pid"].as_u64())
        } else {
            None
        };
        match supervisor {
            Some(pid) if pid > 1 => {
                supervisor_kills += 1;
                kill(pid as u32, libc::SIGKILL)
            }
            _ => {
                cli_kills += 1;
                kill(child.id(), libc::SIGKILL)
            }
        }
        let _ = child.wait();
        seen.extend(store.ids());
        // Continue with a session that still runs, if any.
        live = store
            .ps()
            .iter()
            .find(|s| s["state"] == "running")
            .map(|s| s["id"].as_str().unwrap().to_string());
        // Keep the number of live sessions small.
        for s in store.ps().iter().filter(|s| s["state"] == "running") {
            let id = s["id"].as_str().unwrap();
            if Some(id) != live.as_deref() {
                let _ = store.run(&["stop", "--grace", "100ms", id]);
            }
        }
    }
    if let Some(id) = &live {
        let _ = store.run(&["stop", "--grace", "100ms", id]);
    }
    seen.extend(store.ids());
    eprintln!(
        "crash loop: {} sessions, {supervisor_kills} supervisors and {cli_kills} CLIs killed",
        seen.len()
    );
    assert!(seen.len() >= 5, "the loop made sessions: {seen:?}");
    assert!(supervisor_kills >= 5 && cli_kills >= 5);

    // Nothing of those sandboxes survives.
    assert!(
        eventually(10.0, || seen.iter().all(|id| processes_in(id).is_empty())),
        "processes survive: {:?}",
        seen.iter()
            .map(|id| (id, processes_in(id)))
            .filter(|(_, p)| !p.is_empty())
            .collect::<Vec<_>>()
    );
    assert!(
        eventually(10.0, || processes_of_store(&store).is_empty()),
        "{:?}",
        processes_of_store(&store)
    );
    assert!(host_processes_matching("sleep 31409").is_empty());

    // After prune: no cgroup, no state dir, no name.
    let p = store.run(&["prune", "--min-age", "0"]);
    assert_eq!(p.code, 0, "{p:?}");
    for id in &seen {
        assert!(
            leftover_cgroups(id).is_empty(),
            "cgroups of {id}: {:?}",
            leftover_cgroups(id)
        );
    }
    assert!(
        store.ids().is_empty(),
        "state dirs remain: {:?}",
        store.ids()
    );
    let names: Vec<_> = std::fs::read_dir(store.path().join("names"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(names.is_empty(), "names remain: {names:?}");
    // Mounts of the sandboxes lived in their own mount namespaces; none reached the host.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for id in &seen {
        assert!(!mounts.contains(id.as_str()), "a mount of {id} on the host");
    }
}

/// Runs `nsbox cp ARGS` with `input` on stdin.
fn cp_with_stdin(store: &Store, args: &[&str], input: &[u8]) -> Run {
    use std::io::Write;
    let mut child = store
        .cmd(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out.into()
}

#[test]
fn cp_streams_tar_archives_both_ways() {
    require_root!();
    let store = Store::new();
    let id = store.create(&[]);
    let host = tempfile::tempdir().unwrap();
    let src = host.path().join("proj");
    make_tree(&src);
    let long = "d".repeat(60) + "/" + &"e".repeat(60);
    std::fs::create_dir_all(src.join(&long)).unwrap();
    std::fs::write(src.join(&long).join("deep.txt"), "deep\n").unwrap();

    // In: a tar stream made by GNU tar (gzip-compressed), into a directory that does not exist.
    let archive = std::process::Command::new("tar")
        .args(["-cz", "-C", host.path().to_str().unwrap(), "proj"])
        .output()
        .unwrap();
    assert!(archive.status.success());
    let r = cp_with_stdin(
        &store,
        &["cp", "-", &format!("{id}:/sandbox/in")],
        &archive.stdout,
    );
    assert_eq!(r.code, 0, "{r:?}");
    let inside = store.sh(
        &id,
        &format!("cd /sandbox/in/proj && stat -c '%n %a %U' run.sh private src/deep empty && readlink link && cat {long}/deep.txt"),
    );
    assert_eq!(
        inside.stdout,
        "run.sh 755 sandbox\nprivate 600 sandbox\nsrc/deep 751 sandbox\nempty 700 sandbox\nsrc/main.rs\ndeep\n",
        "{inside:?}"
    );

    // Out: our tar stream, read by GNU tar, gives back the same tree.
    let out = store
        .cmd(&["cp", &format!("{id}:/sandbox/in/proj"), "-"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let back = host.path().join("back");
    std::fs::create_dir(&back).unwrap();
    let mut tar = std::process::Command::new("tar")
        .args(["-x", "-C", back.to_str().unwrap()])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        tar.stdin.take().unwrap().write_all(&out.stdout).unwrap();
    }
    assert!(tar.wait().unwrap().success());
    assert_eq!(describe(&back.join("proj")), describe(&src));
    // GNU tar lists the owners inside the sandbox.
    let listing = std::process::Command::new("tar")
        .args(["-tv", "--numeric-owner"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(&out.stdout)?;
            c.wait_with_output()
        })
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(
        listing.lines().all(|l| l.contains(" 100/101 ")),
        "{listing}"
    );

    // A single file comes out as a one-entry archive.
    let one = store
        .cmd(&["cp", &format!("{id}:/sandbox/in/proj/run.sh"), "-"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(one.status.success());
    assert_eq!(&one.stdout[..6], b"run.sh");
}

#[test]
fn cp_refuses_hostile_tar_streams() {
    require_root!();
    let store = Store::new();
    let id = store.create(&[]);
    let host = tempfile::tempdir().unwrap();
    let canary_dir = host.path().join("canary");
    std::fs::create_dir(&canary_dir).unwrap();
    std::fs::write(canary_dir.join("c"), "host\n").unwrap();
    // The workload plants a symlink to the canary's directory in the target.
    store.sh(
        &id,
        &format!(
            "mkdir -p /sandbox/t && ln -s {} /sandbox/t/planted",
            canary_dir.display()
        ),
    );
    let make = |script: &str| -> Vec<u8> {
        checked_output(std::process::Command::new("python3").args(["-c", &format!(
                "import io, sys, tarfile\nbuf = io.BytesIO()\nt = tarfile.open(fileobj=buf, mode='w')\ndef add(name, data=b'x', kind=tarfile.REGTYPE, link=''):\n    i = tarfile.TarInfo(name); i.type = kind; i.linkname = link; i.size = len(data) if kind == tarfile.REGTYPE else 0\n    t.addfile(i, io.BytesIO(data) if kind == tarfile.REGTYPE else None)\n{script}\nt.close()\nsys.stdout.buffer.write(buf.getvalue())\n"
        )]))
    };
    let canary = canary_dir.join("c");
    let cases = [
        ("dot-dot", make("add('../escape')")),
        ("absolute", make(&format!("add('{}')", canary.display()))),
        (
            "through the planted link",
            make("add('planted/c', b'pwned')"),
        ),
        (
            "own symlink then through it",
            make(&format!(
                "add('l', kind=tarfile.SYMTYPE, link='{}')\nadd('l/c', b'pwned')",
                canary_dir.display()
            )),
        ),
        (
            "hardlink outside",
            make(&format!(
                "add('h', kind=tarfile.LNKTYPE, link='{}')",
                canary.display()
            )),
        ),
        (
            "hardlink climbing",
            make("add('h', kind=tarfile.LNKTYPE, link='../../etc/passwd')"),
        ),
    ];
    for (what, archive) in cases {
        let r = cp_with_stdin(&store, &["cp", "-", &format!("{id}:/sandbox/t")], &archive);
        assert_eq!(r.code, 125, "{what}: {r:?}");
        assert!(r.stderr.contains("nsbox:"), "{what}: {r:?}");
        assert_eq!(
            std::fs::read_to_string(&canary).unwrap(),
            "host\n",
            "{what}"
        );
        assert_eq!(std::fs::read_dir(&canary_dir).unwrap().count(), 1, "{what}");
    }
    // Garbage and truncated streams are refused with a clear error too.
    let r = cp_with_stdin(
        &store,
        &["cp", "-", &format!("{id}:/sandbox/t")],
        b"not a tar stream at all",
    );
    assert_eq!(r.code, 125, "{r:?}");
    let good = make("add('ok.txt', b'fine')");
    let r = cp_with_stdin(
        &store,
        &["cp", "-", &format!("{id}:/sandbox/t")],
        &good[..700],
    );
    assert_eq!(r.code, 125, "{r:?}");
    assert!(r.stderr.contains("truncated"), "{r:?}");
    // And a tar stream needs a directory to go into.
    store.sh(&id, "echo f > /sandbox/file");
    let r = cp_with_stdin(&store, &["cp", "-", &format!("{id}:/sandbox/file")], &good);
    assert_eq!(r.code, 125, "{r:?}");
    assert!(r.stderr.contains("not a directory"), "{r:?}");
    let r = cp_with_stdin(&store, &["cp", "-", &format!("{id}:/sandbox/t")], &good);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(store.sh(&id, "cat /sandbox/t/ok.txt").stdout, "fine");
}

/// `exec --session -u root`: uid 0 of the sandbox with no capability in any set; a command
/// of the sandbox user cannot signal or trace the session's init (which holds the
/// capabilities to start commands as either), and a signal to pid 1 from inside is not
/// relayed to the session's commands; `-u UID:GID` runs as that user, a name nsbox did not
/// write is refused.
#[test]
fn session_exec_as_another_user_has_no_capabilities_and_cannot_reach_the_init() {
    require_root!();
    let store = Store::new();
    let id = store.create(&[]);
    let status =
        "id -u; id -g; echo $HOME; grep -E '^Cap(Prm|Eff|Bnd|Amb)' /proc/self/status | tr -d '\\t'";
    let root = store.run(&[
        "exec",
        "--session",
        &id,
        "-u",
        "root",
        "--",
        "sh",
        "-c",
        status,
    ]);
    assert_eq!(root.code, 0, "{root:?}");
    assert_eq!(
        root.stdout.split_whitespace().collect::<Vec<_>>(),
        [
            "0",
            "0",
            "/root",
            "CapPrm:0000000000000000",
            "CapEff:0000000000000000",
            "CapBnd:0000000000000000",
            "CapAmb:0000000000000000"
        ],
        "{root:?}"
    );
    let user = store.sh(&id, status);
    assert!(user.stdout.starts_with("100\n101\n"), "{user:?}");
    // The default user: another uid than the init's, no CAP_KILL.
    let r = store.sh(
        &id,
        "kill -TERM 1; echo rc=$?; cat /proc/1/environ >/dev/null; echo rc=$?",
    );
    assert_eq!(
        r.stdout
            .lines()
            .filter(|l| l.starts_with("rc="))
            .collect::<Vec<_>>(),
        ["rc=1", "rc=1"],
        "{r:?}"
    );
    // Root may signal pid 1 (same uid), but the init relays only the supervisor's signals: the
    // command that sent it carries on.
    let r = store.run(&[
        "exec",
        "--session",
        &id,
        "-u",
        "0",
        "--",
        "sh",
        "-c",
        "kill -TERM 1; sleep 0.3; echo alive",
    ]);
    assert_eq!((r.code, r.stdout.as_str()), (0, "alive\n"), "{r:?}");
    // Another uid (docker exec -u): its own, without capabilities.
    let other = store.run(&[
        "exec",
        "--session",
        &id,
        "-u",
        "1000:1002",
        "--",
        "sh",
        "-c",
        status,
    ]);
    assert!(
        other.stdout.starts_with("1000\n1002\n")
            && other.stdout.contains("CapEff:0000000000000000"),
        "{other:?}"
    );
    // A name nsbox did not write is not looked up in a running session.
    let named = store.run(&["exec", "--session", &id, "-u", "postgres", "--", "true"]);
    assert_eq!(named.code, 121, "{named:?}");
    assert!(named.stderr.contains("UID[:GID]"), "{named:?}");
    assert_eq!(store.sh(&id, "true").code, 0, "the session runs on");
}
