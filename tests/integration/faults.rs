//! Fault injection: nsbox killed (SIGKILL) or interrupted (SIGTERM, SIGINT) at every named
//! phase of setup and teardown (`nsbox::fault::PHASES`), for each kind of sandbox: one-shots
//! (with and without the filtered network), session creates, session execs and stops. After
//! each kill, `nsbox prune` must leave nothing of that sandbox on the host: no process, no
//! cgroup (v1 or v2 hierarchy), no mount, no network namespace, link or nftables table named
//! after it, no session state, no id-range lock, nothing in /dev/shm. An interrupted nsbox
//! (SIGTERM, SIGINT) must clean up by itself, before any prune.
//!
//! nsbox stops itself at the phase (`NSBOX_FAULT_PHASE`, see src/fault.rs), so each kill lands
//! exactly there instead of at a random moment. Each test runs every phase with every signal
//! once; `NSBOX_FAULT_ITERATIONS=N` runs N kills per class instead (the figure is 200;
//! docs/hardening.md has the measured run).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use crate::require_root;
use crate::support::*;

const SIGNALS: [i32; 3] = [libc::SIGKILL, libc::SIGTERM, libc::SIGINT];

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        _ => "SIGINT",
    }
}

/// Kills per class: every phase with every signal, or `NSBOX_FAULT_ITERATIONS`.
fn iterations(phases: usize) -> usize {
    std::env::var("NSBOX_FAULT_ITERATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(phases * SIGNALS.len())
}

/// One test's session store and fault report file.
struct Faults {
    dir: tempfile::TempDir,
}

impl Faults {
    fn new() -> Faults {
        Faults {
            dir: tempfile::Builder::new()
                .prefix("nsbox-faults-")
                .tempdir()
                .unwrap(),
        }
    }

    fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    fn report(&self) -> PathBuf {
        self.dir.path().join("report")
    }

    fn cmd(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = nsbox_cmd(args);
        cmd.env("NSBOX_RUN_DIR", self.run_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd
    }

    fn run(&self, args: &[&str]) -> Run {
        self.cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .unwrap()
            .into()
    }

    /// `cmd` with the fault hook armed at `phase`.
    fn armed(&self, phase: &str, args: &[&str]) -> std::process::Command {
        let _ = std::fs::remove_file(self.report());
        let mut cmd = self.cmd(args);
        cmd.env("NSBOX_FAULT_PHASE", phase)
            .env("NSBOX_FAULT_REPORT", self.report());
        cmd
    }

    /// Waits until a process stopped at `phase`; its sandbox id and pid. Panics (with what
    /// the command said) when `watch` ended first: the phase was never reached.
    fn stopped_at(&self, phase: &str, watch: &mut Child) -> (String, i32) {
        let mut found = None;
        let reached = eventually(120.0, || {
            if found.is_none() {
                found = std::fs::read_to_string(self.report())
                    .ok()
                    .and_then(|text| {
                        text.lines()
                            .find(|l| l.starts_with(&format!("{phase} ")))
                            .map(str::to_string)
                    })
                    .and_then(|line| {
                        let mut parts = line.split(' ').skip(1);
                        Some((parts.next()?.to_string(), parts.next()?.parse().ok()?))
                    });
            }
            match &found {
                Some((_, pid)) => is_stopped(*pid),
                None => matches!(watch.try_wait(), Ok(Some(_))),
            }
        });
        match found {
            Some(found) if reached => found,
            _ => {
                let _ = watch.kill();
                let mut err = String::new();
                if let Some(mut e) = watch.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                panic!(
                    "phase {phase} was never reached ({:?}): {err}",
                    watch.try_wait()
                );
            }
        }
    }

    /// `nsbox prune` of everything idle, sessions included.
    fn prune(&self) {
        let r = self.run(&["prune", "--min-age", "0", "--older-than", "0s"]);
        assert_eq!(r.code, 0, "prune: {r:?}");
    }
}

impl Drop for Faults {
    /// A failed test still removes the sessions of its store (a create orphaned by a killed
    /// server would otherwise run on after the test).
    fn drop(&mut self) {
        let listed = self.run(&["ps", "-q"]);
        for id in listed.stdout.split_whitespace() {
            let _ = self.run(&["rm", "-f", id]);
        }
    }
}

fn is_stopped(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // "pid (comm) S ...": the state follows the last ')'.
            let rest = &stat[stat.rfind(')')? + 1..];
            rest.split_whitespace().next().map(|s| s == "T")
        })
        .unwrap_or(false)
}

fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|s| s == "Z" || s == "X"),
    }
}

/// Delivers `signal` to the process stopped at its phase: a SIGKILL ends it at once; a
/// SIGTERM or SIGINT is queued, and the process continued to handle it.
fn deliver(pid: i32, signal: i32) {
    let send = |sig: i32| {
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid).unwrap(),
            rustix::process::Signal::from_named_raw(sig).unwrap(),
        );
    };
    send(signal);
    if signal != libc::SIGKILL {
        send(libc::SIGCONT);
    }
}

/// Waits for a child (the CLI) to end; kills it when it does not within a generous time.
fn reap(child: &mut Child) {
    if !eventually(60.0, || matches!(child.try_wait(), Ok(Some(_)))) {
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// What is left on the host of sandbox `id`, one line each (empty: nothing).
fn leftovers(id: &str, run_dir: &Path, pruned: bool) -> Vec<String> {
    let mut left = Vec::new();
    // Processes in its cgroups (any hierarchy).
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if std::fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|c| c.contains(id)) {
            left.push(format!("process {pid} in its cgroup"));
        }
    }
    for cgroup in leftover_cgroups(id) {
        left.push(format!("cgroup {}", cgroup.display()));
    }
    // Mounts in the host's mount table.
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in mountinfo.lines().filter(|l| l.contains(id)) {
        left.push(format!("mount {line}"));
    }
    // Named network namespaces and links (nsbox's are anonymous; a named one would leak).
    let short = &id[..8];
    for dir in ["/run/netns", "/sys/class/net"] {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().contains(short) {
                left.push(format!("{dir}/{}", e.file_name().to_string_lossy()));
            }
        }
    }
    if let Ok(out) = std::process::Command::new("nft")
        .args(["list", "tables"])
        .output()
    {
        for line in String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains(short))
        {
            left.push(format!("nftables {line}"));
        }
    }
    // Session state, id-range locks, shared memory.
    if run_dir.join(id).exists() || run_dir.join("sessions").join(id).exists() {
        left.push(format!("session state of {id} in {}", run_dir.display()));
    }
    for e in std::fs::read_dir(nsbox::idrange::run_dir().join("ids"))
        .into_iter()
        .flatten()
        .flatten()
    {
        // A range is held while its lock is; the released lock's file stays until prune (the
        // next sandbox may take the slot again) and must be gone after it.
        if std::fs::read_to_string(e.path()).is_ok_and(|owner| owner == id)
            && (pruned || !lock_free(&e.path()))
        {
            left.push(format!("id range lock {}", e.path().display()));
        }
    }
    for e in std::fs::read_dir("/dev/shm")
        .into_iter()
        .flatten()
        .flatten()
    {
        if e.file_name().to_string_lossy().contains(id) {
            left.push(format!("/dev/shm/{}", e.file_name().to_string_lossy()));
        }
    }
    left
}

/// Whether nobody holds the lock of the file at `path`.
fn lock_free(path: &Path) -> bool {
    use rustix::fs::{flock, FlockOperation};
    std::fs::File::open(path)
        .is_ok_and(|file| flock(&file, FlockOperation::NonBlockingLockShared).is_ok())
}

/// Files under the run directory that name `id` (session state), recursively.
fn state_naming(id: &str, run_dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![run_dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().contains(id) {
                found.push(e.path());
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
    }
    found
}

/// Checks that nothing of `id` is left: for an interrupted nsbox before prune already
/// (`clean_by_itself`), and in every case after `nsbox prune`.
fn assert_nothing_left(f: &Faults, what: &str, id: &str, clean_by_itself: bool) {
    if clean_by_itself {
        let ok = eventually(30.0, || leftovers(id, &f.run_dir(), false).is_empty());
        assert!(
            ok,
            "{what}: left before prune: {:?}",
            leftovers(id, &f.run_dir(), false)
        );
    }
    // A process still dying (its cgroup not yet empty) is waited for, then pruned.
    let clean = eventually(30.0, || {
        f.prune();
        leftovers(id, &f.run_dir(), true).is_empty() && state_naming(id, &f.run_dir()).is_empty()
    });
    assert!(
        clean,
        "{what}: left after prune: {:?} {:?}",
        leftovers(id, &f.run_dir(), true),
        state_naming(id, &f.run_dir())
    );
}

/// Runs `iterations` kills of `class`: each picks a phase and a signal (all combinations in
/// turn), starts the command armed at that phase with `start`, and kills the process that
/// stopped there. Returns the number of kills.
fn kill_loop(
    class: &str,
    phases: &[&str],
    mut start: impl FnMut(&Faults, &str) -> Child,
    clean_by_itself: impl Fn(&str, i32) -> bool,
) -> usize {
    let _serial = prune_lock();
    let f = Faults::new();
    let n = iterations(phases.len());
    for i in 0..n {
        let phase = phases[i % phases.len()];
        let signal = SIGNALS[(i / phases.len()) % SIGNALS.len()];
        let what = format!("{class} #{i}: {} at {phase}", signal_name(signal));
        let mut child = start(&f, phase);
        let (id, pid) = f.stopped_at(phase, &mut child);
        deliver(pid, signal);
        assert!(
            eventually(60.0, || gone(pid)),
            "{what}: the process did not end"
        );
        reap(&mut child);
        assert_nothing_left(&f, &what, &id, clean_by_itself(phase, signal));
    }
    eprintln!(
        "{class}: {n} kills at {} phases, nothing left",
        phases.len()
    );
    n
}

const LAUNCH: &[&str] = &["cgroup-created", "cloned", "network-prepared", "launched"];

#[test]
fn faults_one_shot_killed_at_every_phase_leaves_nothing() {
    require_root!();
    let mut phases = LAUNCH.to_vec();
    phases.extend(["running", "teardown", "cleaned-up"]);
    kill_loop(
        "one-shot",
        &phases,
        |f, phase| {
            f.armed(phase, &["exec", "--", "sh", "-c", "echo hi"])
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        },
        |_, signal| signal != libc::SIGKILL,
    );
}

#[test]
fn faults_filtered_one_shot_killed_at_every_phase_leaves_nothing() {
    require_root!();
    let mut phases = LAUNCH.to_vec();
    phases.extend(["running", "teardown"]);
    kill_loop(
        "filtered one-shot",
        &phases,
        |f, phase| {
            f.armed(
                phase,
                &[
                    "exec",
                    "--allow",
                    "192.0.2.1:80",
                    "--",
                    "sh",
                    "-c",
                    "echo hi",
                ],
            )
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
        },
        |_, signal| signal != libc::SIGKILL,
    );
}

#[test]
fn faults_session_create_killed_at_every_phase_leaves_nothing() {
    require_root!();
    let mut phases = LAUNCH.to_vec();
    phases.extend(["session-recorded", "session-ready"]);
    let mut name = 0;
    kill_loop(
        "session create",
        &phases,
        |f, phase| {
            name += 1;
            f.armed(phase, &["create", "--name", &format!("fault{name}")])
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        },
        // An interrupted session supervisor stops its sandbox but keeps the stopped session's
        // record for `ps` (prune removes it): its cgroups, mounts and processes go by
        // themselves; the record is checked after prune.
        |_, _| false,
    );
}

#[test]
fn faults_session_exec_and_stop_killed_at_every_phase_leave_nothing() {
    require_root!();
    let phases = ["session-exec-sent", "session-teardown", "session-ended"];
    let mut name = 0;
    let mut sessions = Vec::new();
    kill_loop(
        "session exec/stop",
        &phases,
        |f, phase| {
            // The supervisor reads its fault phase when it starts: a fresh session each time,
            // then the exec or stop that reaches the phase.
            name += 1;
            let session = format!("faultx{name}");
            let created = f
                .armed(phase, &["create", "--name", &session])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .output()
                .unwrap();
            assert!(created.status.success(), "create: {created:?}");
            sessions.push(session.clone());
            let args: Vec<&str> = if phase == "session-exec-sent" {
                vec![
                    "exec",
                    "--session",
                    &session,
                    "--",
                    "sh",
                    "-c",
                    "sleep 31417 & echo x > /sandbox/f; wait",
                ]
            } else {
                vec!["stop", "--grace", "200ms", &session]
            };
            f.cmd(&args).stderr(Stdio::piped()).spawn().unwrap()
        },
        |_, _| false,
    );
}

/// The phase hook costs nothing when unset, and stops nothing: an unarmed run is an ordinary
/// run, and a run armed at a phase that this kind of sandbox never reaches is too.
#[test]
fn faults_an_unreached_phase_changes_nothing() {
    require_root!();
    let f = Faults::new();
    let out = f
        .armed("session-ready", &["exec", "--", "echo", "fine"])
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "fine\n");
    assert!(!f.report().exists(), "nothing stopped");
}

/// `nsbox serve` killed (or interrupted) while a create it runs for an API client is at each
/// phase: the create dies with the server, or the server removes it as it stops, and after
/// prune nothing of that sandbox is left. The stopped create's supervisor is continued after
/// the server's kill, as if the kill had landed at that moment.
#[test]
fn faults_server_killed_during_a_create_leaves_nothing() {
    require_root!();
    let _serial = prune_lock();
    let mut phases = LAUNCH.to_vec();
    phases.extend(["session-recorded", "session-ready"]);
    let f = Faults::new();
    let n = iterations(phases.len());
    let mut adopted = 0;
    for i in 0..n {
        let phase = phases[i % phases.len()];
        let signal = SIGNALS[(i / phases.len()) % SIGNALS.len()];
        let what = format!("server create #{i}: {} at {phase}", signal_name(signal));
        let socket = f.dir.path().join("serve.sock");
        let state = f.dir.path().join("state");
        let mut server = f
            .armed(
                phase,
                &[
                    "--state-root",
                    state.to_str().unwrap(),
                    "serve",
                    "--socket",
                    socket.to_str().unwrap(),
                ],
            )
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut ready = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(server.stdout.take().unwrap()),
            &mut ready,
        )
        .unwrap();
        assert!(
            ready.contains('{'),
            "{what}: the server is ready: {ready:?}"
        );
        let mut client = std::process::Command::new("curl")
            .args(["-sS", "--unix-socket", socket.to_str().unwrap()])
            .args(["-XPOST", "localhost/v1/sandboxes", "-d", "{}"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let (id, stopped) = f.stopped_at(phase, &mut client);
        deliver(i32::try_from(server.id()).unwrap(), signal);
        deliver(stopped, libc::SIGCONT);
        reap(&mut server);
        reap(&mut client);
        if !eventually(2.0, || gone(stopped)) {
            // The create was done (confirmed) before the server died: its sandbox lives on for
            // the next server, which adopts it, and removes it when told to stop.
            let mut next = f
                .cmd(&[
                    "--state-root",
                    state.to_str().unwrap(),
                    "serve",
                    "--socket",
                    socket.to_str().unwrap(),
                ])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let mut ready = String::new();
            std::io::BufRead::read_line(
                &mut std::io::BufReader::new(next.stdout.take().unwrap()),
                &mut ready,
            )
            .unwrap();
            deliver(i32::try_from(next.id()).unwrap(), libc::SIGTERM);
            reap(&mut next);
            if eventually(2.0, || gone(stopped)) {
                adopted += 1;
            }
        }
        if !eventually(2.0, || gone(stopped)) {
            // A create that completed while the server stopped, or that the server never
            // recorded as confirmed before its kill, must not outlive both servers: the
            // stopping server waits for it and removes it, the next one removes what a
            // killed server left pending.
            let ps = f.run(&["ps"]);
            let _ = f.run(&["rm", "-f", &id]);
            panic!("{what}: the create's session outlived the server and its successor: {ps:?}");
        }
        assert!(
            eventually(60.0, || gone(stopped)),
            "{what}: the create's supervisor did not end"
        );
        let _ = std::fs::remove_file(&socket);
        assert_nothing_left(&f, &what, &id, false);
    }
    eprintln!(
        "server create: {n} kills at {} phases ({adopted} adopted by the next server), \
         nothing left",
        phases.len()
    );
}
