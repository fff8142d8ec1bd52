//! nsbox as an OCI runtime (`nsbox-runc`) side by side with runc and crun, in one run,
//! interleaved round-robin:
//!
//! 1. the runtime alone: `create`, `start`, wait for the process's exit, `delete` of one
//!    prepared bundle (a busybox-static rootfs running /bin/true), each runtime with its own
//!    `--root`;
//! 2. `ctr run --rm` of the same spec through a containerd the bench starts itself (root,
//!    state and sockets under its temp dir, as tests/integration/runtime.rs does; never the
//!    system service), with `--runc-binary` set to each runtime.
//!
//! Prints medians, the 10th/90th percentiles and the nsbox/peer ratios.
//!
//!     sudo cargo bench --bench runtime              # NSBOX_BENCH_RUNS=N to change the count
//!
//! Fairness: all three read one config.json: a user namespace (uid/gid 0 mapped to a high host
//! range, so runc and crun run rootless-like as nsbox always does; nsbox maps a range of its
//! own instead), pid/mount/network/ipc/uts namespaces, a read-only root, a pids limit, the
//! syscall allowlist of nsbox's default seccomp policy as the spec's `linux.seccomp` (nsbox
//! applies its own policy, with the argument conditions) and no rlimits (crun's `setrlimit(RLIMIT_NOFILE)` fails
//! with EPERM here when the spec asks for more than the bench's hard limit). What still differs
//! is printed beside each figure. In part 1 the bench is a child subreaper, as containerd's shim
//! is, so the process whose pid `create` writes (runc's and crun's container init, nsbox's
//! waiter) becomes its child and its exit is awaited on a pidfd rather than by polling `state`.
//!
//! Cleanup: SIGINT, SIGTERM and SIGHUP are blocked and read from a signalfd between steps; on
//! every way out (an error, a signal, a panic) guards force-delete whatever container is left
//! in each runtime's roots, remove containerd's tasks and containers, stop containerd and
//! remove the temp dir.
#![allow(clippy::unwrap_used)]

#[path = "common/peers.rs"]
mod peers;

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use peers::{percentile, print_comparison, private_cgroup_view, Row};
use rustix::process::{Pid, PidfdFlags, WaitOptions};

/// Host uid/gid of uid/gid 0 in runc's and crun's user namespace (nsbox takes a slot of its
/// own ranges, from 1853030400 up, per sandbox).
const PEER_HOST_ID: u32 = 1_700_000_000;
/// How long one step may take before the bench calls the runtime broken.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

fn main() {
    let code = run();
    // (Every guard has been dropped by now: exit skips destructors.)
    std::process::exit(code);
}

fn run() -> i32 {
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIP runtime bench: needs root (sudo cargo bench --bench runtime)");
        return 0;
    }
    let runs: usize = std::env::var("NSBOX_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let interrupt = Interrupt::take();
    let cgroup_note = private_cgroup_view();
    let scratch = tempfile::tempdir().unwrap();
    // The mapped root of runc's and crun's containers must reach the rootfs through it.
    std::fs::set_permissions(
        scratch.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let Some(rootfs) = busybox_rootfs(scratch.path()) else {
        eprintln!("SKIP runtime bench: needs busybox-static (apt-get install busybox-static)");
        return 0;
    };
    let bundle = scratch.path().join("bundle");
    let seccomp = match seccomp_from_profile() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("runtime bench: nsbox's default seccomp policy does not translate: {e}");
            return 1;
        }
    };
    let spec = spec(&["/bin/true"], "rootfs", &seccomp);
    std::fs::write(
        bundle.join("config.json"),
        serde_json::to_vec_pretty(&spec).unwrap(),
    )
    .unwrap();
    debug_assert!(rootfs.starts_with(&bundle));

    let runtimes = Runtimes(peers_present(scratch.path()));
    println!(
        "nsbox OCI runtime benchmark: {runs} runs per runtime and part, interleaved; runtimes: {}",
        runtimes
            .0
            .iter()
            .map(|r| r.name)
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some(note) = &cgroup_note {
        println!("({note})");
    }
    println!("spec: /bin/true from a busybox-static rootfs (read-only); user ns 0 -> {PEER_HOST_ID} x 65536 for runc/crun; pid, mount, net, ipc, uts ns; pids limit 64; seccomp: nsbox's own, runc/crun the allowlist of nsbox's default profile by name; no rlimits");

    let result = lifecycle_part(&runtimes, &bundle, runs, &interrupt).and_then(|()| {
        ctr_part(
            &runtimes,
            scratch.path(),
            &spec_for_ctr(&bundle, &seccomp),
            runs,
            &interrupt,
        )
    });
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("runtime bench failed: {e}");
            1
        }
    }
}

/// Part 1: create + start + exit + delete, each runtime by itself.
fn lifecycle_part(
    runtimes: &Runtimes,
    bundle: &Path,
    runs: usize,
    interrupt: &Interrupt,
) -> Result<(), String> {
    // As containerd's shim: the container's process (nsbox: its waiter) is re-parented here
    // once `create` exits, so its exit can be awaited and its status read.
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
        .map_err(|e| format!("PR_SET_CHILD_SUBREAPER: {e}"))?;
    let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(runs); runtimes.0.len()];
    // Per runtime, per step (create, start, exit, delete).
    let mut steps: Vec<[Vec<f64>; 4]> = runtimes.0.iter().map(|_| Default::default()).collect();
    let mut n = 0;
    // Warm caches (binary pages, dentries) and make sure each runtime works at all.
    for _ in 0..3 {
        for rt in &runtimes.0 {
            interrupt.check()?;
            n += 1;
            lifecycle(rt, bundle, &format!("rb-{}-{n}", rt.name))
                .map_err(|e| interrupt.explain(e))?;
        }
    }
    for _ in 0..runs {
        for (i, rt) in runtimes.0.iter().enumerate() {
            interrupt.check()?;
            n += 1;
            let took = lifecycle(rt, bundle, &format!("rb-{}-{n}", rt.name))
                .map_err(|e| interrupt.explain(e))?;
            samples[i].push(took.iter().sum::<f64>());
            for (step, ms) in steps[i].iter_mut().zip(took) {
                step.push(ms);
            }
        }
    }
    rustix::process::set_child_subreaper(None)
        .map_err(|e| format!("PR_SET_CHILD_SUBREAPER off: {e}"))?;
    println!("\n1. the runtime alone: create + start + wait for exit + delete ({runs} runs each)");
    report(runtimes, samples, |rt| rt.does);
    println!("  median per step (ms): create | start | until the exit | delete");
    for (rt, steps) in runtimes.0.iter().zip(&mut steps) {
        let [create, start, exit, delete] = steps.each_mut().map(|s| percentile(s, 0.5));
        println!(
            "  {:<6} {create:>7.2} | {start:>7.2} | {exit:>7.2} | {delete:>7.2}",
            rt.name
        );
    }
    Ok(())
}

/// One container's life: the milliseconds of `create`, of `start`, from `start`'s return to
/// the process's exit, and of `delete`.
fn lifecycle(rt: &Runtime, bundle: &Path, id: &str) -> Result<[f64; 4], String> {
    let _ = std::fs::remove_file(&rt.pid_file);
    let bundle = bundle.to_str().unwrap();
    let pid_file = rt.pid_file.to_str().unwrap();
    let mut marks = [Instant::now(); 5];
    rt.run(&["create", "--bundle", bundle, "--pid-file", pid_file, id])?;
    marks[1] = Instant::now();
    let pid = std::fs::read_to_string(&rt.pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .and_then(Pid::from_raw)
        .ok_or_else(|| format!("{}: create wrote no pid to {pid_file}", rt.name))?;
    let pidfd = rustix::process::pidfd_open(pid, PidfdFlags::empty())
        .map_err(|e| format!("{}: pidfd_open({pid:?}): {e}", rt.name))?;
    let opened = Instant::now();
    rt.run(&["start", id])?;
    marks[2] = Instant::now();
    let code = wait_exit(&pidfd, pid).map_err(|e| format!("{} {id}: {e}", rt.name))?;
    marks[3] = Instant::now();
    rt.run(&["delete", id])?;
    marks[4] = Instant::now();
    reap_orphans();
    // (Reading the pid file and opening the pidfd is the bench's part, not the runtime's.)
    let ms = |a: usize, b: usize| (marks[b] - marks[a]).as_secs_f64() * 1e3;
    let took = [
        ms(0, 1),
        (marks[2] - opened).as_secs_f64() * 1e3,
        ms(2, 3),
        ms(3, 4),
    ];
    match code {
        Some(0) | None => Ok(took),
        Some(c) => Err(format!("{} {id}: /bin/true exited with {c}", rt.name)),
    }
}

/// Waits for the process behind `pidfd` to end; its exit code when it is this process's child.
fn wait_exit(pidfd: &OwnedFd, pid: Pid) -> Result<Option<i32>, String> {
    let mut fds = [rustix::event::PollFd::new(
        pidfd,
        rustix::event::PollFlags::IN,
    )];
    let timeout = rustix::event::Timespec {
        tv_sec: STEP_TIMEOUT.as_secs() as i64,
        tv_nsec: 0,
    };
    loop {
        match rustix::event::poll(&mut fds, Some(&timeout)) {
            Ok(0) => return Err(format!("did not exit within {STEP_TIMEOUT:?}")),
            Ok(_) => break,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(format!("poll on its pidfd: {e}")),
        }
    }
    match rustix::process::waitpid(Some(pid), WaitOptions::NOHANG) {
        Ok(Some((_, status))) => Ok(status
            .exit_status()
            .or_else(|| status.terminating_signal().map(|s| 128 + s))),
        // Not re-parented here (the runtime daemonized it elsewhere): no status to check.
        Ok(None) | Err(_) => Ok(None),
    }
}

/// Reaps whatever ended among the processes re-parented to the bench (nsbox's supervisor).
fn reap_orphans() {
    while let Ok(Some(_)) = rustix::process::wait(WaitOptions::NOHANG) {}
}

/// Part 2: `ctr run --rm` through a containerd of the bench's own.
fn ctr_part(
    runtimes: &Runtimes,
    scratch: &Path,
    spec: &serde_json::Value,
    runs: usize,
    interrupt: &Interrupt,
) -> Result<(), String> {
    println!("\n2. ctr run --rm through containerd, --runc-binary set to each ({runs} runs each)");
    let ctrd = match Containerd::start(&scratch.join("containerd")) {
        Ok(c) => c,
        Err(why) => {
            println!("  SKIPPED: {why}");
            return Ok(());
        }
    };
    let spec_path = scratch.join("ctr-config.json");
    std::fs::write(&spec_path, serde_json::to_vec_pretty(spec).unwrap()).unwrap();
    let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(runs); runtimes.0.len()];
    let mut n = 0;
    for round in 0..runs + 2 {
        for (i, rt) in runtimes.0.iter().enumerate() {
            interrupt.check()?;
            n += 1;
            let took = ctrd
                .run(rt, &spec_path, &format!("rb-ctr-{}-{n}", rt.name))
                .map_err(|e| interrupt.explain(e))?;
            // The first two rounds warm containerd's and the shim's pages.
            if round >= 2 {
                samples[i].push(took.as_secs_f64() * 1e3);
            }
        }
    }
    report(runtimes, samples, |rt| rt.does_under_ctr);
    Ok(())
}

fn report(runtimes: &Runtimes, samples: Vec<Vec<f64>>, does: impl Fn(&Runtime) -> &'static str) {
    let mut rows: Vec<Row<'_>> = runtimes
        .0
        .iter()
        .zip(samples)
        .map(|(rt, samples)| Row {
            name: rt.name,
            samples,
            does: does(rt),
        })
        .collect();
    print_comparison(&mut rows);
}

/// One OCI runtime binary with the bench's state for it.
struct Runtime {
    name: &'static str,
    bin: PathBuf,
    /// `--root` of part 1.
    root: PathBuf,
    /// `--runc-root` under containerd (part 2).
    ctr_root: PathBuf,
    pid_file: PathBuf,
    /// The last command's stderr: a file, as a shim's FIFO, since a pipe would be held open
    /// by the container's process after `create`.
    err_file: PathBuf,
    does: &'static str,
    does_under_ctr: &'static str,
}

impl Runtime {
    fn new(
        scratch: &Path,
        name: &'static str,
        bin: PathBuf,
        does: &'static str,
        does_under_ctr: &'static str,
    ) -> Runtime {
        Runtime {
            name,
            bin,
            root: scratch.join(format!("{name}-root")),
            ctr_root: scratch.join(format!("{name}-ctr-root")),
            pid_file: scratch.join(format!("{name}.pid")),
            err_file: scratch.join(format!("{name}.err")),
            does,
            does_under_ctr,
        }
    }

    fn command(&self, root: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--root")
            .arg(root)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        cmd
    }

    fn run(&self, args: &[&str]) -> Result<(), String> {
        let err = File::create(&self.err_file).map_err(|e| e.to_string())?;
        let status = self
            .command(&self.root, args)
            .stderr(err)
            .status()
            .map_err(|e| format!("{}: {e}", self.bin.display()))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!(
                "{} {}: {status}: {}",
                self.name,
                args.join(" "),
                std::fs::read_to_string(&self.err_file).unwrap_or_default()
            ))
        }
    }

    /// `delete --force` of every container left in `root` (an interrupted run).
    fn delete_leftovers(&self, root: &Path) {
        let Ok(entries) = std::fs::read_dir(root) else {
            return;
        };
        for entry in entries.flatten() {
            if !entry.path().is_dir() {
                continue;
            }
            let id = entry.file_name().to_string_lossy().into_owned();
            let _ = self
                .command(root, &["delete", "--force", &id])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// The runtimes of this run, nsbox first; dropping them deletes every container left behind.
struct Runtimes(Vec<Runtime>);

impl Drop for Runtimes {
    fn drop(&mut self) {
        for rt in &self.0 {
            rt.delete_leftovers(&rt.root);
            // containerd's shim runs in a namespace directory below `--runc-root`.
            if let Ok(namespaces) = std::fs::read_dir(&rt.ctr_root) {
                for ns in namespaces.flatten() {
                    rt.delete_leftovers(&ns.path());
                }
            }
        }
        // A deleted container's processes (nsbox's supervisor) may end a moment after
        // `delete` returns: wait for them here rather than leave them to pid 1.
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            match rustix::process::wait(WaitOptions::NOHANG) {
                Ok(Some(_)) => continue,
                Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(10)),
                _ => break,
            }
        }
    }
}

/// nsbox (as `nsbox-runc`, argv[0] dispatch, the way an engine runs it), then runc and crun
/// where installed.
fn peers_present(scratch: &Path) -> Vec<Runtime> {
    let link = scratch.join("nsbox-runc");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_nsbox"), &link).unwrap();
    let mut out = vec![Runtime::new(
        scratch,
        "nsbox",
        link,
        "own user ns range, pid+mount+net+ipc+uts+cgroup ns, overlay root, nsbox's /proc /dev /sys, cgroup (pids), seccomp, no caps; waiter + session supervisor",
        "as above; the shim's pid is nsbox's waiter",
    )];
    for (name, path) in [("runc", "/usr/sbin/runc"), ("crun", "/usr/bin/crun")] {
        if Path::new(path).exists() {
            out.push(Runtime::new(
                scratch,
                name,
                PathBuf::from(path),
                "spec's user ns mapping, pid+mount+net+ipc+uts ns, ro bind root, spec's /proc /dev /sys, cgroup v1 (pids), seccomp (nsbox's allowlist), caps CHOWN+KILL",
                "as above",
            ));
        } else {
            println!("note: {path} not installed; {name} skipped");
        }
    }
    out
}

/// A containerd of the bench's own (config, root, state, sockets under `dir`); dropping it
/// removes its tasks and containers and stops it.
struct Containerd {
    dir: PathBuf,
    child: Child,
}

const CTR: &str = "/usr/bin/ctr";
const CONTAINERD: &str = "/usr/bin/containerd";

impl Containerd {
    fn start(dir: &Path) -> Result<Containerd, String> {
        if !Path::new(CONTAINERD).exists() || !Path::new(CTR).exists() {
            return Err(format!(
                "{CONTAINERD} or {CTR} not installed (apt-get install containerd)"
            ));
        }
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let d = dir.display();
        let config = format!(
            "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{d}/containerd.sock\"\n\
             [ttrpc]\n  address = \"{d}/containerd-ttrpc.sock\"\n"
        );
        std::fs::write(dir.join("config.toml"), config).map_err(|e| e.to_string())?;
        let log = File::create(dir.join("containerd.log")).map_err(|e| e.to_string())?;
        // Its own process group: a Ctrl-C at the terminal must not stop it before the bench
        // has removed what an interrupted `ctr run` left.
        let child = Command::new(CONTAINERD)
            .process_group(0)
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("{CONTAINERD}: {e}"))?;
        let ctrd = Containerd {
            dir: dir.to_path_buf(),
            child,
        };
        let until = Instant::now() + STEP_TIMEOUT;
        while !ctrd.ctr(&["version"]).status().is_ok_and(|s| s.success()) {
            if Instant::now() > until {
                return Err(format!(
                    "containerd did not come up within {STEP_TIMEOUT:?}: {}",
                    std::fs::read_to_string(dir.join("containerd.log")).unwrap_or_default()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(ctrd)
    }

    fn ctr(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(CTR);
        cmd.arg("--address")
            .arg(self.dir.join("containerd.sock"))
            .args(["-n", "nsbox-bench"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd
    }

    /// `ctr run --rm` of the spec (its root path is absolute) with `rt` as the runc binary.
    fn run(&self, rt: &Runtime, spec: &Path, id: &str) -> Result<Duration, String> {
        let err = File::create(&rt.err_file).map_err(|e| e.to_string())?;
        let fifos = self.dir.join("fifos");
        let mut cmd = self.ctr(&[
            "run",
            "--rm",
            "--fifo-dir",
            fifos.to_str().unwrap(),
            "--config",
            spec.to_str().unwrap(),
            "--runc-binary",
            rt.bin.to_str().unwrap(),
            "--runc-root",
            rt.ctr_root.to_str().unwrap(),
            id,
        ]);
        let start = Instant::now();
        let status = cmd
            .stderr(err)
            .status()
            .map_err(|e| format!("{CTR}: {e}"))?;
        let took = start.elapsed();
        if status.success() {
            Ok(took)
        } else {
            Err(format!(
                "ctr run --runc-binary {} {id}: {status}: {}",
                rt.bin.display(),
                std::fs::read_to_string(&rt.err_file).unwrap_or_default()
            ))
        }
    }

    fn list(&self, what: &str) -> Vec<String> {
        self.ctr(&[what, "ls", "-q"])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // What an interrupted `ctr run --rm` left: its task (with the shim) and container.
        for id in self.list("tasks") {
            let _ = self.ctr(&["tasks", "rm", "-f", &id]).status();
        }
        for id in self.list("containers") {
            let _ = self.ctr(&["containers", "rm", &id]).status();
        }
        let pid = Pid::from_child(&self.child);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let until = Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) {
            if Instant::now() > until {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// SIGINT, SIGTERM and SIGHUP, blocked and read between steps, so the guards clean up.
struct Interrupt(OwnedFd);

impl Interrupt {
    fn take() -> Interrupt {
        use nsbox::sys::signal;
        let set = signal::SignalSet::new(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP]);
        signal::block(&set).unwrap();
        Interrupt(signal::signalfd(&set).unwrap())
    }

    fn check(&self) -> Result<(), String> {
        match nsbox::sys::signal::read_signal(self.0.as_fd()) {
            Ok(Some(sig)) => Err(format!(
                "interrupted by {}; cleaning up",
                nsbox::sys::signal::name(sig)
            )),
            _ => Ok(()),
        }
    }

    /// A failed step's error, or the interruption that made it fail (Ctrl-C reaches the
    /// runtime's processes too).
    fn explain(&self, failure: String) -> String {
        match self.check() {
            Err(interrupted) => interrupted,
            Ok(()) => failure,
        }
    }
}

/// A busybox-static rootfs in `scratch/bundle/rootfs`, as the runtime tests build it.
fn busybox_rootfs(scratch: &Path) -> Option<PathBuf> {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(Path::new)
        .find(|p| p.exists())?;
    let rootfs = scratch.join("bundle/rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).ok()?;
    std::fs::copy(busybox, rootfs.join("bin/busybox")).ok()?;
    let installed = Command::new("chroot")
        .arg(&rootfs)
        .args(["/bin/busybox", "--install", "-s", "/bin"])
        .status()
        .ok()?;
    if !installed.success() {
        return None;
    }
    // Mount points for the spec's mounts: runc and crun create none in a read-only root.
    for d in ["proc", "dev", "sys", "tmp"] {
        std::fs::create_dir_all(rootfs.join(d)).ok()?;
    }
    Some(rootfs)
}

/// The one config.json all three runtimes accept (see the module docs).
fn spec(args: &[&str], root: &str, seccomp: &serde_json::Value) -> serde_json::Value {
    let caps = ["CAP_CHOWN", "CAP_KILL"];
    let map = [serde_json::json!({"containerID": 0, "hostID": PEER_HOST_ID, "size": 65536})];
    serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {"args": args, "cwd": "/", "user": {"uid": 0, "gid": 0},
                    "env": ["PATH=/bin"], "terminal": false, "noNewPrivileges": true,
                    "capabilities": {"bounding": caps, "effective": caps, "permitted": caps}},
        "root": {"path": root, "readonly": true},
        "hostname": "bench",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev"]}
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "network"},
                           {"type": "ipc"}, {"type": "uts"}, {"type": "user"}],
            "uidMappings": map,
            "gidMappings": map,
            "resources": {"pids": {"limit": 64}},
            "seccomp": seccomp,
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}

/// `ctr run --config` takes the whole spec and no bundle: the root path must be absolute.
fn spec_for_ctr(bundle: &Path, seccomp: &serde_json::Value) -> serde_json::Value {
    spec(
        &["/bin/true"],
        bundle.join("rootfs").to_str().unwrap(),
        seccomp,
    )
}

/// nsbox's default seccomp policy (profiles/seccomp/default.toml) as the runtime spec's
/// `linux.seccomp`, by syscall name: every syscall some rule allows is allowed, everything
/// else gets the profile's default errno. The argument conditions (clone's namespace flags,
/// socket families, setuid modes) are left out: nsbox's rules are first-match-wins, which
/// libseccomp's rule merging does not express. runc and crun thus compile and load a filter
/// of the same allowlist, a little shorter than nsbox's.
fn seccomp_from_profile() -> Result<serde_json::Value, String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/profiles/seccomp/default.toml");
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let profile: toml::Value = toml::from_str(&text).map_err(|e| format!("{path}: {e}"))?;
    let default = profile
        .get("default_action")
        .and_then(|v| v.as_str())
        .ok_or("no default_action")?;
    let errno = match default {
        "errno:ENOSYS" => libc::ENOSYS,
        "errno:EPERM" => libc::EPERM,
        other => {
            return Err(format!(
                "default_action {other:?} (the bench knows ENOSYS and EPERM)"
            ))
        }
    };
    let mut allowed: Vec<&str> = Vec::new();
    for rule in profile
        .get("rule")
        .and_then(|r| r.as_array())
        .ok_or("no [[rule]]")?
    {
        if rule.get("action").and_then(|a| a.as_str()) != Some("allow") {
            continue;
        }
        for key in ["syscalls", "optional_syscalls"] {
            let names = rule
                .get(key)
                .and_then(|n| n.as_array())
                .into_iter()
                .flatten();
            allowed.extend(names.filter_map(|n| n.as_str()));
        }
    }
    allowed.sort_unstable();
    allowed.dedup();
    if allowed.len() < 100 {
        return Err(format!(
            "only {} syscalls allowed: not the default profile?",
            allowed.len()
        ));
    }
    Ok(serde_json::json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": errno,
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{"names": allowed, "action": "SCMP_ACT_ALLOW"}]
    }))
}
