//! nsbox as an OCI runtime: runc's command sequence (create, state, start, state, delete; kill)
//! driven directly against bundles built here from busybox, as containerd's runc shim drives
//! it. The runtime's waiter is not this process's child, so its exit status is read from the
//! `exit` file it leaves in the container's state directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::require_root;
use crate::support::{eventually, host_processes_matching, leftover_cgroups, nsbox_bin, Run};

/// A bundle (config.json + busybox rootfs) and a state root, in one temp dir, and the runtime
/// that runs it: nsbox unless [`Bundle::with_runtime`] (runtime_diff.rs runs runc and crun).
pub(crate) struct Bundle {
    dir: tempfile::TempDir,
    runtime: Vec<std::ffi::OsString>,
}

impl Bundle {
    pub(crate) fn new(config: serde_json::Value) -> Bundle {
        Bundle::with_runtime(config, vec![nsbox_bin().into(), "runtime".into()])
    }

    /// The bundle run by `runtime` (its program and any leading arguments), which takes runc's
    /// global flags (`--root`, `--log`, `--log-format json`).
    pub(crate) fn with_runtime(
        config: serde_json::Value,
        runtime: Vec<std::ffi::OsString>,
    ) -> Bundle {
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .iter()
            .find(|p| Path::new(p).exists())
            .expect("busybox-static is needed for this test (apt-get install busybox-static)");
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bundle/rootfs/bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::copy(busybox, bin.join("busybox")).unwrap();
        let installed = Command::new("chroot")
            .arg(dir.path().join("bundle/rootfs"))
            .args(["/bin/busybox", "--install", "-s", "/bin"])
            .status()
            .unwrap();
        assert!(installed.success());
        std::fs::write(
            dir.path().join("bundle/config.json"),
            serde_json::to_vec_pretty(&config).unwrap(),
        )
        .unwrap();
        Bundle { dir, runtime }
    }

    pub(crate) fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// `nsbox runtime --root R --log L --log-format json ARGS`, stdin from /dev/null.
    pub(crate) fn runtime(&self, args: &[&str]) -> Run {
        self.runtime_cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .unwrap()
            .into()
    }

    fn runtime_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.runtime[0]);
        cmd.args(&self.runtime[1..])
            .arg("--root")
            .arg(self.path("state"))
            .arg("--log")
            .arg(self.path("log.json"))
            .args(["--log-format", "json"])
            .args(args)
            .env_remove("NSBOX_LOG")
            .stdin(Stdio::null());
        cmd
    }

    /// `create` with the container's streams in files (as a shim passes its FIFOs).
    fn create(&self, id: &str) -> Run {
        self.create_with(id, &[])
    }

    /// `create` with `flags` besides the bundle and the pid file. (The waiter keeps create's
    /// streams: pipes would stay open as long as the container.)
    fn create_with(&self, id: &str, flags: &[&str]) -> Run {
        let status = self.create_cmd(id, flags).status().unwrap();
        Run {
            code: status.code().unwrap_or(-1),
            stdout: String::new(),
            stderr: std::fs::read_to_string(self.path(&format!("{id}.err"))).unwrap_or_default(),
        }
    }

    /// The `create` command of [`Bundle::create_with`], not started: its stdout and stderr are
    /// the files ID.out and ID.err, its pid file ID.pid.
    pub(crate) fn create_cmd(&self, id: &str, flags: &[&str]) -> Command {
        let out = std::fs::File::create(self.path(&format!("{id}.out"))).unwrap();
        let err = std::fs::File::create(self.path(&format!("{id}.err"))).unwrap();
        let bundle = self.path("bundle");
        let pid_file = self.path(&format!("{id}.pid"));
        let mut args = vec![
            "create",
            "--bundle",
            bundle.to_str().unwrap(),
            "--pid-file",
            pid_file.to_str().unwrap(),
        ];
        args.extend_from_slice(flags);
        args.push(id);
        let mut cmd = self.runtime_cmd(&args);
        cmd.stdout(out).stderr(err);
        cmd
    }

    pub(crate) fn state(&self, id: &str) -> serde_json::Value {
        let run = self.runtime(&["state", id]);
        assert_eq!(run.code, 0, "state {id}: {}", run.stderr);
        serde_json::from_str(&run.stdout).unwrap()
    }

    pub(crate) fn status(&self, id: &str) -> String {
        self.state(id)["status"].as_str().unwrap().to_string()
    }

    /// The nsbox id of the container's sandbox (its cgroup's name).
    fn session(&self, id: &str) -> String {
        let text = std::fs::read(self.path(&format!("state/{id}/state.json"))).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&text).unwrap();
        v["session"].as_str().unwrap().to_string()
    }
}

/// A test that fails half-way leaves no container running: whatever is still in the bundle's
/// state root is force-deleted (before the temp dir goes, which holds that root).
impl Drop for Bundle {
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir(self.path("state")) else {
            return;
        };
        for entry in entries.flatten() {
            if let Some(id) = entry.file_name().to_str() {
                let _ = self
                    .runtime_cmd(&["delete", "--force", id])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

pub(crate) fn config(args: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {"args": args, "cwd": "/", "user": {"uid": 0, "gid": 0},
                    "env": ["PATH=/bin"], "terminal": false,
                    "capabilities": {"bounding": ["CAP_CHOWN", "CAP_KILL"]}},
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "oci-box",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts"},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs"},
            {"destination": "/run", "type": "tmpfs", "source": "tmpfs"}
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "network"},
                           {"type": "ipc"}, {"type": "uts"}],
            "resources": {"pids": {"limit": 64}}
        },
        "annotations": {"io.example.team": "agents"}
    })
}

#[test]
fn runtime_runs_a_bundle_through_runcs_sequence() {
    require_root!();
    let b = Bundle::new(config(&[
        "/bin/sh",
        "-c",
        "echo hello from $(hostname); cat /proc/self/uid_map; exit 3",
    ]));
    let created = b.create("c1");
    assert_eq!(created.code, 0, "create: {}", created.stderr);
    let pid: i32 = std::fs::read_to_string(b.path("c1.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let state = b.state("c1");
    assert_eq!(state["status"], "created");
    assert_eq!(state["pid"], pid, "state's pid is the pid file's");
    assert_eq!(state["ociVersion"], "1.0.2");
    assert_eq!(state["annotations"]["io.example.team"], "agents");
    assert!(state["bundle"].as_str().unwrap().ends_with("/bundle"));
    let session = b.session("c1");
    assert!(
        !leftover_cgroups(&session).is_empty(),
        "the created sandbox has its cgroup"
    );
    assert!(
        std::fs::read_to_string(b.path("c1.out"))
            .unwrap()
            .is_empty(),
        "nothing runs before start"
    );

    let started = b.runtime(&["start", "c1"]);
    assert_eq!(started.code, 0, "start: {}", started.stderr);
    assert!(
        eventually(30.0, || b.status("c1") == "stopped"),
        "the container stops when its process ends"
    );
    assert_eq!(b.state("c1")["pid"], 0);
    let out = std::fs::read_to_string(b.path("c1.out")).unwrap();
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("hello from oci-box"), "{out}");
    // uid 0 inside is not host uid 0: the map's first line maps 0 to a high host id.
    let map: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    assert_eq!(map.first(), Some(&"0"), "{out}");
    assert_ne!(map.get(1), Some(&"0"), "never host root: {out}");
    assert_eq!(
        std::fs::read_to_string(b.path("state/c1/exit")).unwrap(),
        "3",
        "the process's exit status"
    );
    let again = b.runtime(&["start", "c1"]);
    assert_ne!(again.code, 0, "a stopped container does not start again");

    let deleted = b.runtime(&["delete", "c1"]);
    assert_eq!(deleted.code, 0, "delete: {}", deleted.stderr);
    assert!(!b.path("state/c1").exists(), "no state left");
    assert!(leftover_cgroups(&session).is_empty(), "no cgroup left");
    let gone = b.runtime(&["state", "c1"]);
    assert_ne!(gone.code, 0);
    assert!(gone.stderr.contains("does not exist"), "{}", gone.stderr);
}

#[test]
fn runtime_kill_ends_a_long_running_container() {
    require_root!();
    let b = Bundle::new(config(&["/bin/sleep", "4711"]));
    assert_eq!(b.create("term").code, 0);
    assert_eq!(b.runtime(&["start", "term"]).code, 0);
    assert_eq!(b.status("term"), "running");
    assert!(eventually(30.0, || !host_processes_matching(
        "/bin/sleep 4711"
    )
    .is_empty()));
    let refused = b.runtime(&["delete", "term"]);
    assert_ne!(refused.code, 0, "a running container needs --force");
    assert!(refused.stderr.contains("--force"), "{}", refused.stderr);
    let kill = b.runtime(&["kill", "term", "TERM"]);
    assert_eq!(kill.code, 0, "kill: {}", kill.stderr);
    assert!(eventually(30.0, || b.status("term") == "stopped"));
    assert_eq!(
        std::fs::read_to_string(b.path("state/term/exit")).unwrap(),
        "143",
        "ended by SIGTERM"
    );
    let session = b.session("term");
    assert_eq!(b.runtime(&["delete", "term"]).code, 0);
    assert!(leftover_cgroups(&session).is_empty());

    // SIGKILL by number, to a container never started; then delete --force of a running one.
    assert_eq!(b.create("never").code, 0);
    let session = b.session("never");
    assert_eq!(b.runtime(&["kill", "never", "9"]).code, 0);
    assert!(eventually(30.0, || b.status("never") == "stopped"));
    assert_eq!(b.runtime(&["delete", "never"]).code, 0);
    assert!(leftover_cgroups(&session).is_empty());

    assert_eq!(b.create("forced").code, 0);
    assert_eq!(b.runtime(&["start", "forced"]).code, 0);
    let session = b.session("forced");
    let forced = b.runtime(&["delete", "--force", "forced"]);
    assert_eq!(forced.code, 0, "{}", forced.stderr);
    assert!(!b.path("state/forced").exists());
    assert!(leftover_cgroups(&session).is_empty());
    assert!(
        eventually(10.0, || host_processes_matching("/bin/sleep 4711")
            .is_empty()),
        "no process of the containers is left"
    );
}

/// The runtime spec's `process` object for `exec --process`, written into the bundle's dir.
fn process_file(
    b: &Bundle,
    name: &str,
    args: &[&str],
    patch: impl FnOnce(&mut serde_json::Value),
) -> PathBuf {
    let mut process = serde_json::json!({"args": args, "cwd": "/tmp", "user": {"uid": 0, "gid": 0},
                                         "env": ["PATH=/bin", "GREETING=hi"], "terminal": false});
    patch(&mut process);
    let path = b.path(name);
    std::fs::write(&path, serde_json::to_vec(&process).unwrap()).unwrap();
    path
}

#[test]
fn runtime_exec_ps_pause_and_resume_a_running_container() {
    require_root!();
    let mut spec = config(&["/bin/sleep", "4712"]);
    spec["process"]["env"] = serde_json::json!(["PATH=/bin", "FROM_CONFIG=yes"]);
    let b = Bundle::new(spec);
    assert_eq!(b.create("live").code, 0);
    let refused = b.runtime(&["exec", "--process", "/nonexistent", "live"]);
    assert_ne!(refused.code, 0, "exec in a created container is refused");
    assert_eq!(b.runtime(&["start", "live"]).code, 0);
    assert!(eventually(30.0, || !host_processes_matching(
        "/bin/sleep 4712"
    )
    .is_empty()));

    // Attached: the process's output and exit status are exec's; env and cwd are the file's.
    let p = process_file(
        &b,
        "p1.json",
        &["/bin/sh", "-c", "echo $GREETING in $(pwd); exit 5"],
        |_| {},
    );
    let run = b.runtime(&["exec", "--process", p.to_str().unwrap(), "live"]);
    assert_eq!(run.code, 5, "{}", run.stderr);
    assert_eq!(run.stdout.trim(), "hi in /tmp", "{}", run.stderr);
    // The file's env is the whole environment, as under runc and crun: nothing of the
    // container's (FROM_CONFIG), and HOME as runc sets it (no /etc/passwd here: "/").
    let p = process_file(&b, "env.json", &["/bin/env"], |_| {});
    let run = b.runtime(&["exec", "--process", p.to_str().unwrap(), "live"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let mut env: Vec<&str> = run.stdout.lines().collect();
    env.sort_unstable();
    assert_eq!(
        env,
        ["GREETING=hi", "HOME=/", "PATH=/bin"],
        "{}",
        run.stderr
    );

    // Detached, as the shim runs it: the pid file names the process that exits with its status.
    let p = process_file(
        &b,
        "p2.json",
        &[
            "/bin/sh",
            "-c",
            "echo detached > /tmp/mark; exec sleep 4713",
        ],
        |_| {},
    );
    let pid_file = b.path("exec.pid");
    // Its streams go to files (as the shim's FIFOs): a pipe would stay open while it runs.
    let out = std::fs::File::create(b.path("exec.out")).unwrap();
    let status = b
        .runtime_cmd(&[
            "exec",
            "--process",
            p.to_str().unwrap(),
            "--detach",
            "--pid-file",
            pid_file.to_str().unwrap(),
            "live",
        ])
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .status()
        .unwrap();
    let run = Run {
        code: status.code().unwrap_or(-1),
        stdout: String::new(),
        stderr: std::fs::read_to_string(b.path("exec.out")).unwrap_or_default(),
    };
    assert_eq!(run.code, 0, "{}", run.stderr);
    let exec_pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        Path::new(&format!("/proc/{exec_pid}")).exists(),
        "the exec's waiter lives"
    );
    assert!(eventually(30.0, || !host_processes_matching("sleep 4713").is_empty()));

    // ps: the sandbox's processes, host pids, as a JSON array.
    let ps = b.runtime(&["ps", "--format", "json", "live"]);
    assert_eq!(ps.code, 0, "{}", ps.stderr);
    let pids: Vec<i32> = serde_json::from_str(&ps.stdout).unwrap();
    // (Any one match: an earlier, failed run may have left its own sleepers behind.)
    for cmd in ["/bin/sleep 4712", "sleep 4713"] {
        let found = host_processes_matching(cmd)
            .into_iter()
            .any(|pid| pids.contains(&i32::try_from(pid).unwrap()));
        assert!(found, "{cmd} in ps: {pids:?}");
    }

    // pause freezes (state says so), resume thaws.
    assert_eq!(b.runtime(&["pause", "live"]).code, 0);
    assert_eq!(b.status("live"), "paused");
    let sleeper = pids[1];
    let frozen_state = std::fs::read_to_string(format!("/proc/{sleeper}/stat")).unwrap();
    let after_paren = &frozen_state[frozen_state.rfind(')').unwrap() + 2..];
    assert!(
        after_paren.starts_with('S') || after_paren.starts_with('D'),
        "{frozen_state}"
    );
    assert_eq!(b.runtime(&["resume", "live"]).code, 0);
    assert_eq!(b.status("live"), "running");
    let run = b.runtime(&[
        "exec",
        "--process",
        process_file(&b, "p3.json", &["/bin/cat", "/tmp/mark"], |_| {})
            .to_str()
            .unwrap(),
        "live",
    ]);
    assert_eq!(
        (run.code, run.stdout.trim()),
        (0, "detached"),
        "{}",
        run.stderr
    );

    // Another user of the container (`podman exec -u`, `kubectl exec` of a pod whose
    // container runs as another uid), without capabilities.
    let other = process_file(
        &b,
        "p5.json",
        &[
            "/bin/sh",
            "-c",
            "id -u; id -g; grep CapEff /proc/self/status",
        ],
        |p| p["user"] = serde_json::json!({"uid": 1000, "gid": 1001}),
    );
    let run = b.runtime(&["exec", "--process", other.to_str().unwrap(), "live"]);
    assert_eq!(
        (run.code, run.stdout.split_whitespace().collect::<Vec<_>>()),
        (0, vec!["1000", "1001", "CapEff:", "0000000000000000"]),
        "{}",
        run.stderr
    );
    // Refusals name the field or the flag.
    let other = process_file(&b, "p6.json", &["/bin/true"], |p| {
        p["user"] = serde_json::json!({"uid": 70000, "gid": 0})
    });
    let run = b.runtime(&["exec", "--process", other.to_str().unwrap(), "live"]);
    assert!(
        run.code != 0 && run.stderr.contains("user"),
        "{}",
        run.stderr
    );
    let run = b.runtime(&["update", "--resources", "-", "live"]);
    assert!(
        run.code != 0 && run.stderr.contains("--resources"),
        "{}",
        run.stderr
    );

    let session = b.session("live");
    assert_eq!(b.runtime(&["delete", "--force", "live"]).code, 0);
    assert!(leftover_cgroups(&session).is_empty());
    assert!(eventually(10.0, || host_processes_matching("sleep 4713")
        .is_empty()
        && host_processes_matching("/bin/sleep 4712").is_empty()));
    assert!(
        eventually(10.0, || !Path::new(&format!("/proc/{exec_pid}/stat"))
            .exists()
            || std::fs::read_to_string(format!("/proc/{exec_pid}/stat"))
                .unwrap_or_default()
                .contains(") Z")),
        "the exec's waiter ended with the container"
    );
}

#[test]
fn runtime_refuses_a_privileged_spec_naming_the_field_in_its_json_log() {
    require_root!();
    let mut cfg = config(&["/bin/true"]);
    cfg["process"]["capabilities"]["bounding"] = serde_json::json!(["CAP_SYS_ADMIN"]);
    let b = Bundle::new(cfg);
    let run = b.create("priv");
    assert_ne!(run.code, 0, "a privileged spec is refused");
    assert!(
        run.stderr.contains("process.capabilities.bounding"),
        "{}",
        run.stderr
    );
    assert!(!b.path("state/priv").exists(), "nothing was made");
    // containerd's shim reads the last error from --log as a JSON line.
    let log = std::fs::read_to_string(b.path("log.json")).unwrap();
    let last: serde_json::Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
    assert_eq!(last["level"], "error");
    assert!(
        last["msg"]
            .as_str()
            .unwrap()
            .contains("process.capabilities.bounding"),
        "{log}"
    );

    let mut host_pid = config(&["/bin/true"]);
    host_pid["linux"]["namespaces"] = serde_json::json!([{"type": "mount"}]);
    std::fs::write(
        b.path("bundle/config.json"),
        serde_json::to_vec(&host_pid).unwrap(),
    )
    .unwrap();
    let run = b.create("hostpid");
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains("linux.namespaces") && run.stderr.contains("PID namespace"),
        "{}",
        run.stderr
    );
}

#[test]
fn runtime_answers_as_nsbox_runc_by_its_name() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("nsbox-runc");
    std::os::unix::fs::symlink(nsbox_bin(), &link).unwrap();
    let out = Command::new(&link).arg("features").output().unwrap();
    assert!(out.status.success());
    let features: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(features["ociVersionMax"].as_str().is_some());
    assert!(features["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!("user")));
}

/// A containerd of the test's own (root, state, sockets under a temp dir; never the system
/// service), stopped when dropped.
struct Containerd {
    dir: tempfile::TempDir,
    child: std::process::Child,
}

impl Containerd {
    fn start() -> Containerd {
        assert!(
            Path::new("/usr/bin/containerd").exists() && Path::new("/usr/bin/ctr").exists(),
            "containerd is needed for this test (apt-get install containerd)"
        );
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let config = format!(
            "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{d}/containerd.sock\"\n\
             [ttrpc]\n  address = \"{d}/containerd-ttrpc.sock\"\n"
        );
        std::fs::write(dir.path().join("config.toml"), config).unwrap();
        let log = std::fs::File::create(dir.path().join("containerd.log")).unwrap();
        let child = Command::new("/usr/bin/containerd")
            .arg("--config")
            .arg(dir.path().join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let ctrd = Containerd { dir, child };
        assert!(
            eventually(30.0, || ctrd.ctr(&["version"]).code == 0),
            "containerd did not come up: {}",
            std::fs::read_to_string(ctrd.dir.path().join("containerd.log")).unwrap_or_default()
        );
        ctrd
    }

    fn ctr(&self, args: &[&str]) -> Run {
        Command::new("/usr/bin/ctr")
            .arg("--address")
            .arg(self.dir.path().join("containerd.sock"))
            .args(["-n", "nsbox-test"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
            .into()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let pid = rustix::process::Pid::from_child(&self.child);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let _ = self.child.wait();
    }
}

/// A bundle whose rootfs serves as `ctr run --rootfs` (its config.json is not used: ctr makes
/// one), nsbox linked as `nsbox-runc` beside it, and a containerd of the test's own: the
/// bundle (kept for its directory), the rootfs, the runtime binary, its root, the FIFO dir.
fn under_containerd() -> (Bundle, PathBuf, PathBuf, PathBuf, PathBuf, Containerd) {
    let b = Bundle::new(config(&["/bin/true"]));
    let rootfs = b.path("bundle/rootfs");
    for d in ["proc", "dev", "sys", "run", "tmp", "etc"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    let runc = b.path("nsbox-runc");
    std::os::unix::fs::symlink(nsbox_bin(), &runc).unwrap();
    let (runc_root, fifos) = (b.path("runc-root"), b.path("fifos"));
    (b, rootfs, runc, runc_root, fifos, Containerd::start())
}

#[test]
fn runtime_runs_under_containerd_with_ctr_run() {
    require_root!();
    let (_b, rootfs, runc, runc_root, fifos, ctrd) = under_containerd();
    // (The shim's own socket still goes to /run/containerd/s/, which containerd fixes.)
    let run = ctrd.ctr(&[
        "run",
        "--rm",
        "--fifo-dir",
        fifos.to_str().unwrap(),
        "--rootfs",
        "--runc-binary",
        runc.to_str().unwrap(),
        "--runc-root",
        runc_root.to_str().unwrap(),
        rootfs.to_str().unwrap(),
        "hello1",
        "/bin/sh",
        "-c",
        "echo hello; exit 7",
    ]);
    assert_eq!(run.code, 7, "stdout {} stderr {}", run.stdout, run.stderr);
    assert_eq!(run.stdout.trim(), "hello", "{}", run.stderr);
    assert!(
        ctrd.ctr(&["task", "ls", "-q"]).stdout.trim().is_empty(),
        "no task left"
    );
    // The runtime's state for the container is gone (the shim deleted it).
    let left: Vec<_> = std::fs::read_dir(runc_root.join("nsbox-test"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "runtime state left: {left:?}");
}

/// `ctr run -t`: the shim hands nsbox its console socket, gets the pty master of a terminal
/// made in the sandbox and relays it to ctr's own terminal (here `script`'s pty).
#[test]
fn runtime_runs_a_terminal_container_under_containerd_with_ctr_run_t() {
    require_root!();
    assert!(
        Path::new("/usr/bin/script").exists(),
        "script (util-linux) is needed for this test"
    );
    let (_b, rootfs, runc, runc_root, fifos, ctrd) = under_containerd();
    // ctr -t needs a terminal of its own: `script` gives it one and passes its status on.
    let ctr = format!(
        "/usr/bin/ctr --address {} -n nsbox-test run -t --rm --fifo-dir {} --rootfs \
         --runc-binary {} --runc-root {} {} tty1 /bin/sh -c 'echo in $(tty); exit 7'",
        ctrd.dir.path().join("containerd.sock").display(),
        fifos.display(),
        runc.display(),
        runc_root.display(),
        rootfs.display(),
    );
    let run: Run = Command::new("/usr/bin/script")
        .args(["-q", "-e", "-c", &ctr, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .unwrap()
        .into();
    assert_eq!(run.code, 7, "stdout {} stderr {}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("in /dev/pts/"),
        "the container's own terminal: {:?}",
        run.stdout
    );
    assert!(
        ctrd.ctr(&["task", "ls", "-q"]).stdout.trim().is_empty(),
        "no task left"
    );

    // `ctr task exec -t` into a running container: the shim's `exec --detach --tty
    // --console-socket`; then a plain `ctr task exec`.
    let socket = ctrd.dir.path().join("containerd.sock");
    let run = ctrd.ctr(&[
        "run",
        "-d",
        "--fifo-dir",
        fifos.to_str().unwrap(),
        "--rootfs",
        "--runc-binary",
        runc.to_str().unwrap(),
        "--runc-root",
        runc_root.to_str().unwrap(),
        rootfs.to_str().unwrap(),
        "tty2",
        "/bin/sleep",
        "4716",
    ]);
    assert_eq!(run.code, 0, "ctr run -d: {}", run.stderr);
    let exec = format!(
        "/usr/bin/ctr --address {} -n nsbox-test task exec -t --fifo-dir {} --exec-id e1 tty2 \
         /bin/sh -c 'echo in $(tty); exit 9'",
        socket.display(),
        fifos.display(),
    );
    let run: Run = Command::new("/usr/bin/script")
        .args(["-q", "-e", "-c", &exec, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .unwrap()
        .into();
    assert_eq!(run.code, 9, "stdout {} stderr {}", run.stdout, run.stderr);
    assert!(run.stdout.contains("in /dev/pts/"), "{:?}", run.stdout);
    let run = ctrd.ctr(&[
        "task",
        "exec",
        "--fifo-dir",
        fifos.to_str().unwrap(),
        "--exec-id",
        "e2",
        "tty2",
        "/bin/sh",
        "-c",
        "echo plain; exit 2",
    ]);
    assert_eq!(run.code, 2, "stdout {} stderr {}", run.stdout, run.stderr);
    assert_eq!(run.stdout.trim(), "plain", "{}", run.stderr);
    let killed = ctrd.ctr(&["task", "kill", "-s", "SIGKILL", "tty2"]);
    assert_eq!(killed.code, 0, "{}", killed.stderr);
    assert!(
        eventually(30.0, || ctrd.ctr(&["task", "delete", "tty2"]).code == 0),
        "the killed task is deleted"
    );
    assert_eq!(ctrd.ctr(&["container", "delete", "tty2"]).code, 0);
    assert!(
        host_processes_matching("/bin/sleep 4716").is_empty(),
        "no process of the container is left"
    );
}

/// Runs `ip ARGS`, which must succeed.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {args:?}: {out:?}");
}

/// A named network namespace (`ip netns add`), as a CNI makes one for a pod; deleted on drop.
struct PodNetns(String);

impl PodNetns {
    fn add(name: &str) -> PodNetns {
        ip(&["netns", "add", name]);
        PodNetns(name.to_string())
    }
}

impl Drop for PodNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// A pod's network namespace (what Kubernetes' sandbox container and the CNI set up) is
/// joined by path: the container sees the pod's interface and address, not a new empty
/// namespace, and keeps nsbox's own other namespaces; the namespace outlives the container.
/// A path for another namespace type, or a path that is no namespace, is refused.
#[test]
fn runtime_joins_a_pods_network_namespace_by_path() {
    require_root!();
    let name = format!("nsbox-pod-{}", std::process::id());
    let _gone = PodNetns::add(&name);
    ip(&[
        "-n", &name, "link", "add", "pod0", "type", "veth", "peer", "name", "pod1",
    ]);
    ip(&["-n", &name, "addr", "add", "192.0.2.77/24", "dev", "pod0"]);
    ip(&["-n", &name, "link", "set", "pod0", "up"]);
    let netns = format!("/run/netns/{name}");
    let mut spec = config(&["/bin/sh", "-c", "cat /proc/net/dev; cat /proc/net/fib_trie"]);
    spec["linux"]["namespaces"][2] = serde_json::json!({"type": "network", "path": netns});
    let b = Bundle::new(spec);
    let created = b.create("pod");
    assert_eq!(created.code, 0, "create: {}", created.stderr);
    let session = b.session("pod");
    assert_eq!(b.runtime(&["start", "pod"]).code, 0);
    assert!(eventually(30.0, || b.status("pod") == "stopped"));
    let out = std::fs::read_to_string(b.path("pod.out")).unwrap();
    assert!(out.contains("pod0:"), "the pod's interface: {out}");
    assert!(out.contains("192.0.2.77"), "the pod's address: {out}");
    assert_eq!(b.runtime(&["delete", "pod"]).code, 0);
    assert!(leftover_cgroups(&session).is_empty(), "no cgroup left");
    // The pod's namespace is its owner's: still there, interface and all.
    let still = Command::new("ip")
        .args(["-n", &name, "link", "show", "pod0"])
        .output()
        .unwrap();
    assert!(
        still.status.success(),
        "the namespace outlives the container"
    );

    // Another type of namespace by path, and a path that is no namespace file.
    let mut spec = config(&["/bin/true"]);
    spec["linux"]["namespaces"][0] =
        serde_json::json!({"type": "pid", "path": "/proc/self/ns/pid"});
    let refused = Bundle::new(spec).create("pid");
    assert_ne!(refused.code, 0);
    assert!(
        refused.stderr.contains("linux.namespaces[0].path"),
        "{}",
        refused.stderr
    );
    let mut spec = config(&["/bin/true"]);
    spec["linux"]["namespaces"][2] =
        serde_json::json!({"type": "network", "path": "/etc/hostname"});
    let not_ns = Bundle::new(spec).create("notns");
    assert_ne!(not_ns.code, 0);
    assert!(
        not_ns.stderr.contains("not a namespace file"),
        "{}",
        not_ns.stderr
    );
}

/// A pod's IPC and UTS namespaces by path: the container sees the pod's System V shared
/// memory and keeps the pod's hostname (nsbox does not rename it), while its pid, mount and
/// user namespaces stay its own.
#[test]
fn runtime_joins_a_pods_ipc_and_uts_namespaces_by_path() {
    require_root!();
    // The pod: a process in new IPC and UTS namespaces, with a hostname and a segment.
    let mut pod = Command::new("unshare")
        .args([
            "--ipc",
            "--uts",
            "sh",
            "-c",
            "hostname pod-host && ipcmk -M 4096 >/dev/null && echo ready && exec sleep 120",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the pod");
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(pod.stdout.take().unwrap()),
        &mut ready,
    )
    .unwrap();
    assert_eq!(ready, "ready\n");
    let ns = |kind: &str| format!("/proc/{}/ns/{kind}", pod.id());
    let mut spec = config(&[
        "/bin/sh",
        "-c",
        "hostname; cat /proc/sysvipc/shm | wc -l; cat /proc/1/comm",
    ]);
    spec["linux"]["namespaces"][3] = serde_json::json!({"type": "ipc", "path": ns("ipc")});
    spec["linux"]["namespaces"][4] = serde_json::json!({"type": "uts", "path": ns("uts")});
    let b = Bundle::new(spec);
    let created = b.create("pod2");
    assert_eq!(created.code, 0, "create: {}", created.stderr);
    assert_eq!(b.runtime(&["start", "pod2"]).code, 0);
    assert!(eventually(30.0, || b.status("pod2") == "stopped"));
    let out = std::fs::read_to_string(b.path("pod2.out")).unwrap();
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    let _ = pod.kill();
    let _ = pod.wait();
    assert_eq!(
        lines.first(),
        Some(&"pod-host"),
        "the pod's hostname: {out}"
    );
    assert_eq!(
        lines.get(1),
        Some(&"2"),
        "the pod's segment (a header and one line): {out}"
    );
    assert_ne!(lines.get(2), Some(&"sleep"), "its own pid namespace: {out}");
    assert!(lines.len() == 3, "{out}");
    assert_eq!(b.runtime(&["delete", "pod2"]).code, 0);
}

/// The engine's side of `--console-socket` (go-runc's `NewTempConsoleSocket` and
/// `ReceiveMaster`): a listening unix socket; the runtime sends one message, the master's name
/// as the payload and the master as its one descriptor.
struct ConsoleReceiver {
    listener: std::os::unix::net::UnixListener,
    path: PathBuf,
}

impl ConsoleReceiver {
    fn new(b: &Bundle, name: &str) -> ConsoleReceiver {
        let path = b.path(name);
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        ConsoleReceiver { listener, path }
    }

    fn path(&self) -> &str {
        self.path.to_str().unwrap()
    }

    /// Accepts the runtime's connection and reads its one message: (name, master).
    fn receive(&self) -> (String, std::os::fd::OwnedFd) {
        use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
        use std::mem::MaybeUninit;
        let (conn, _) = self.listener.accept().unwrap();
        let mut name = [0u8; 4096];
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(2))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut iov = [std::io::IoSliceMut::new(&mut name)];
        let got =
            rustix::net::recvmsg(&conn, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC).unwrap();
        let mut fds = Vec::new();
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = message {
                fds.extend(received);
            }
        }
        assert_eq!(fds.len(), 1, "exactly one descriptor");
        let name = String::from_utf8_lossy(&name[..got.bytes]).into_owned();
        (name, fds.pop().unwrap())
    }
}

/// Types `input` into the terminal and reads everything it shows until the process behind it
/// is gone (the master then reads EIO). A reader thread, so a process that never ends fails
/// the test instead of hanging it.
fn converse(master: std::os::fd::OwnedFd, input: &str) -> String {
    use std::io::{Read, Write};
    let mut terminal = std::fs::File::from(master);
    terminal.write_all(input.as_bytes()).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut shown = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match terminal.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => shown.extend_from_slice(&buf[..n]),
            }
        }
        let _ = tx.send(String::from_utf8_lossy(&shown).into_owned());
    });
    rx.recv_timeout(std::time::Duration::from_secs(60))
        .expect("the terminal's process did not end")
}

/// The first `/dev/pts/N` a terminal showed.
fn pts_name(shown: &str) -> Option<&str> {
    let start = shown.find("/dev/pts/")?;
    let rest = &shown[start..];
    let end = rest
        .char_indices()
        .skip("/dev/pts/".len())
        .find(|(_, c)| !c.is_ascii_digit())
        .map_or(rest.len(), |(i, _)| i);
    Some(&rest[..end]).filter(|n| n.len() > "/dev/pts/".len())
}

fn create_with_console(b: &Bundle, id: &str, console: &str) -> Run {
    b.create_with(id, &["--console-socket", console])
}

/// `process.terminal`: `create` sends the pty master of a terminal made in the sandbox's own
/// devpts to the console socket before it returns; the process runs on it after `start`, as
/// an interactive shell with a controlling terminal, and its exit status is the container's.
#[test]
fn runtime_gives_a_terminal_process_its_pty_through_the_console_socket() {
    require_root!();
    let mut cfg = config(&["/bin/sh"]);
    cfg["process"]["terminal"] = serde_json::json!(true);
    cfg["process"]["consoleSize"] = serde_json::json!({"height": 33, "width": 101});
    let b = Bundle::new(cfg);
    let console = ConsoleReceiver::new(&b, "console.sock");
    let created = create_with_console(&b, "tty1", console.path());
    assert_eq!(created.code, 0, "create: {}", created.stderr);
    // `create` returned: the master is already waiting on the socket.
    let (name, master) = console.receive();
    assert_eq!(name, "/dev/ptmx", "runc's name for the master");
    assert!(rustix::termios::isatty(&master), "a terminal's master");
    let size = rustix::termios::tcgetwinsize(&master).unwrap();
    assert_eq!((size.ws_row, size.ws_col), (33, 101), "process.consoleSize");
    assert_eq!(b.status("tty1"), "created", "nothing runs before start");
    let session = b.session("tty1");

    let started = b.runtime(&["start", "tty1"]);
    assert_eq!(started.code, 0, "start: {}", started.stderr);
    let shown = converse(master, "echo hi$((6*7)); tty; exit 3\n");
    assert!(shown.contains("hi42"), "the shell's output: {shown:?}");
    let pts = pts_name(&shown).unwrap_or_else(|| panic!("tty names a pts: {shown:?}"));
    assert!(!shown.contains("not a tty"), "{shown:?}");
    assert!(eventually(30.0, || b.status("tty1") == "stopped"));
    assert_eq!(
        std::fs::read_to_string(b.path("state/tty1/exit")).unwrap(),
        "3",
        "the process's exit status ({pts})"
    );
    let deleted = b.runtime(&["delete", "tty1"]);
    assert_eq!(deleted.code, 0, "delete: {}", deleted.stderr);
    assert!(leftover_cgroups(&session).is_empty(), "no cgroup left");

    // A created terminal container killed before its start: its process ends with the signal.
    let console = ConsoleReceiver::new(&b, "console2.sock");
    assert_eq!(
        create_with_console(&b, "tty2", console.path()).code,
        0,
        "create tty2"
    );
    let (_, master) = console.receive();
    assert_eq!(b.runtime(&["kill", "tty2", "TERM"]).code, 0);
    assert!(eventually(30.0, || b.status("tty2") == "stopped"));
    assert_eq!(
        std::fs::read_to_string(b.path("state/tty2/exit")).unwrap(),
        "143",
        "ended by SIGTERM at its gate"
    );
    drop(master);
    assert_eq!(b.runtime(&["delete", "tty2"]).code, 0);

    // A program that is not there: the reason shows on the terminal (the engine's only view
    // of the process), the status is 127.
    let mut missing = config(&["/nonexistent"]);
    missing["process"]["terminal"] = serde_json::json!(true);
    std::fs::write(
        b.path("bundle/config.json"),
        serde_json::to_vec(&missing).unwrap(),
    )
    .unwrap();
    let console = ConsoleReceiver::new(&b, "console3.sock");
    let created = create_with_console(&b, "tty3", console.path());
    assert_eq!(created.code, 0, "create: {}", created.stderr);
    let (_, master) = console.receive();
    assert_eq!(b.runtime(&["start", "tty3"]).code, 0);
    let shown = converse(master, "");
    assert!(
        shown.contains("command not found") && shown.contains("/nonexistent"),
        "{shown:?}"
    );
    assert!(eventually(30.0, || b.status("tty3") == "stopped"));
    assert_eq!(
        std::fs::read_to_string(b.path("state/tty3/exit")).unwrap(),
        "127"
    );
    assert_eq!(b.runtime(&["delete", "tty3"]).code, 0);
}

/// `exec --detach --tty --console-socket` (the shim's `exec -t`): the master goes to the
/// socket before `exec` returns; the process's exit status is its waiter's (read here by a
/// subreaper, as the shim is one).
#[test]
fn runtime_exec_with_a_tty_sends_its_master_to_the_console_socket() {
    require_root!();
    let b = Bundle::new(config(&["/bin/sleep", "4714"]));
    assert_eq!(b.create("execty").code, 0);
    assert_eq!(b.runtime(&["start", "execty"]).code, 0);
    let p = process_file(&b, "tty.json", &["/bin/sh"], |p| {
        p["consoleSize"] = serde_json::json!({"height": 24, "width": 90})
    });
    let console = ConsoleReceiver::new(&b, "exec-console.sock");
    let pid_file = b.path("exec-tty.pid");
    // A subreaper runs `exec` and then waits for the waiter it leaves behind.
    let reaper = "import ctypes, os, subprocess, sys\n\
                  ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)\n\
                  r = subprocess.run(sys.argv[2:])\n\
                  if r.returncode != 0: sys.exit(100 + r.returncode)\n\
                  pid = int(open(sys.argv[1]).read())\n\
                  _, status = os.waitpid(pid, 0)\n\
                  print(os.waitstatus_to_exitcode(status))\n";
    let mut cmd = Command::new("python3");
    cmd.args(["-c", reaper])
        .arg(&pid_file)
        .arg(nsbox_bin())
        .arg("runtime")
        .arg("--root")
        .arg(b.path("state"))
        .args([
            "exec",
            "--detach",
            "--tty",
            "--console-socket",
            console.path(),
            "--pid-file",
            pid_file.to_str().unwrap(),
            "--process",
            p.to_str().unwrap(),
            "execty",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let reaper = cmd.spawn().expect("python3 is needed for this test");
    let (name, master) = console.receive();
    assert_eq!(name, "/dev/ptmx");
    let size = rustix::termios::tcgetwinsize(&master).unwrap();
    assert_eq!((size.ws_row, size.ws_col), (24, 90), "process.consoleSize");
    let shown = converse(master, "echo ${GREETING}x; tty; exit 4\n");
    assert!(shown.contains("hix"), "the process's env: {shown:?}");
    assert!(pts_name(&shown).is_some(), "tty names a pts: {shown:?}");
    let out = reaper.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "4",
        "the exec's exit status: {out:?}"
    );
    assert_eq!(b.status("execty"), "running", "the container goes on");

    // The process file's own `terminal: true` asks for a terminal as --tty does.
    let p = process_file(&b, "tty3.json", &["/bin/sh", "-c", "tty; exit 0"], |p| {
        p["terminal"] = serde_json::json!(true)
    });
    let console = ConsoleReceiver::new(&b, "exec-console3.sock");
    let run = b.runtime(&[
        "exec",
        "--detach",
        "--console-socket",
        console.path(),
        "--process",
        p.to_str().unwrap(),
        "execty",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let (_, master) = console.receive();
    let shown = converse(master, "");
    assert!(pts_name(&shown).is_some(), "tty names a pts: {shown:?}");

    // An attached `exec --tty` (no socket) relays the terminal on its own streams.
    let run = b.runtime(&[
        "exec",
        "--tty",
        "--process",
        process_file(&b, "tty2.json", &["/bin/sh", "-c", "tty; exit 6"], |_| {})
            .to_str()
            .unwrap(),
        "execty",
    ]);
    assert_eq!(run.code, 6, "{}", run.stderr);
    assert!(pts_name(&run.stdout).is_some(), "{:?}", run.stdout);
    let session = b.session("execty");
    assert_eq!(b.runtime(&["delete", "--force", "execty"]).code, 0);
    assert!(leftover_cgroups(&session).is_empty());
}

/// runc's rules for terminals, each refusal naming the flag or field and making nothing.
#[test]
fn runtime_refuses_terminal_and_console_socket_mismatches() {
    require_root!();
    let mut cfg = config(&["/bin/sh"]);
    cfg["process"]["terminal"] = serde_json::json!(true);
    let b = Bundle::new(cfg);
    // A terminal and no socket.
    let run = b.create("nosock");
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains("process.terminal") && run.stderr.contains("--console-socket"),
        "{}",
        run.stderr
    );
    assert!(!b.path("state/nosock").exists(), "nothing was made");
    // A socket path where nothing listens, and one that does not exist.
    let missing = b.path("no-such.sock");
    let run = create_with_console(&b, "missing", missing.to_str().unwrap());
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains("--console-socket") && run.stderr.contains("no-such.sock"),
        "{}",
        run.stderr
    );
    assert!(!b.path("state/missing").exists(), "nothing was made");
    let file = b.path("not-a-socket");
    std::fs::write(&file, b"").unwrap();
    let run = create_with_console(&b, "notsock", file.to_str().unwrap());
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("--console-socket"), "{}", run.stderr);
    assert!(!b.path("state/notsock").exists(), "nothing was made");

    // A socket and no terminal.
    let plain = Bundle::new(config(&["/bin/sleep", "4715"]));
    let console = ConsoleReceiver::new(&plain, "console.sock");
    let run = create_with_console(&plain, "noterm", console.path());
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains("--console-socket") && run.stderr.contains("process.terminal"),
        "{}",
        run.stderr
    );
    assert!(!plain.path("state/noterm").exists());

    // exec: --detach with a terminal needs the socket; an attached exec takes none; a socket
    // needs a terminal.
    assert_eq!(plain.create("live").code, 0);
    assert_eq!(plain.runtime(&["start", "live"]).code, 0);
    let p = process_file(&plain, "p.json", &["/bin/true"], |_| {});
    let p = p.to_str().unwrap();
    let socket = console.path();
    let missing = missing.to_str().unwrap();
    let cases: [(&[&str], &str); 4] = [
        (&["--detach", "--tty"], "--console-socket"),
        (&["--tty", "--console-socket", socket], "--detach"),
        (&["--detach", "--console-socket", socket], "--tty"),
        (
            &["--detach", "--tty", "--console-socket", missing],
            "--console-socket",
        ),
    ];
    for (flags, named) in cases {
        let mut args = vec!["exec"];
        args.extend_from_slice(flags);
        args.extend(["--process", p, "live"]);
        let run = plain.runtime(&args);
        assert!(
            run.code != 0 && run.stderr.contains(named),
            "{flags:?}: {}",
            run.stderr
        );
    }
    let session = plain.session("live");
    assert_eq!(plain.runtime(&["delete", "--force", "live"]).code, 0);
    assert!(leftover_cgroups(&session).is_empty());
}

/// podman (Debian's 4.3.1, through conmon) with nsbox-runc as its OCI runtime, kept in a temp
/// dir of its own: its storage (`--root`, vfs), run state (`--runroot`, `--tmpdir`), events
/// file are all there; `--network none` needs no CNI or netavark. The runtime keeps its state
/// in its default root (/run/nsbox-runc): podman 4.3 does not pass `--runtime-flag` on to the
/// `delete` of its cleanup process, so a root of the test's own would keep every container.
/// The image is a busybox rootfs brought in with `podman import`.
struct Podman {
    b: Bundle,
}

impl Podman {
    fn new() -> Podman {
        assert!(
            Path::new("/usr/bin/podman").exists() && Path::new("/usr/bin/conmon").exists(),
            "podman and conmon are needed for this test (apt-get install podman)"
        );
        let b = Bundle::new(config(&["/bin/true"]));
        let rootfs = b.path("bundle/rootfs");
        for d in ["proc", "dev", "sys", "run", "tmp", "etc"] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        std::os::unix::fs::symlink(nsbox_bin(), b.path("nsbox-runc")).unwrap();
        let tar = b.path("image.tar");
        let packed = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .unwrap();
        assert!(packed.success());
        let p = Podman { b };
        let imported = p.run(&["import", tar.to_str().unwrap(), "localhost/nsbox-test:1"]);
        assert_eq!(imported.code, 0, "podman import: {}", imported.stderr);
        p
    }

    fn cmd(&self) -> Command {
        let mut cmd = Command::new("/usr/bin/podman");
        let path = |rel: &str| self.b.path(rel).to_str().unwrap().to_string();
        cmd.args(["--root", &path("podman/root")])
            .args(["--runroot", &path("podman/runroot")])
            .args(["--tmpdir", &path("podman/tmp")])
            .args(["--storage-driver", "vfs"])
            .args(["--cgroup-manager", "cgroupfs"])
            .args(["--events-backend", "file"])
            .args(["--runtime", &path("nsbox-runc")])
            .env_remove("NSBOX_LOG")
            .env_remove("CONTAINERS_CONF")
            .stdin(Stdio::null());
        cmd
    }

    fn run(&self, args: &[&str]) -> Run {
        self.cmd().args(args).output().unwrap().into()
    }

    /// `podman ARGS` with a terminal of its own (`script` gives it one and passes its status on).
    fn run_in_terminal(&self, args: &[&str]) -> Run {
        let cmd = self.cmd();
        let mut line: Vec<String> = std::iter::once(cmd.get_program())
            .chain(cmd.get_args())
            .map(|a| a.to_str().unwrap().to_string())
            .collect();
        line.extend(args.iter().map(|a| a.to_string()));
        let quoted: Vec<String> = line
            .iter()
            .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
            .collect();
        Command::new("/usr/bin/script")
            .args(["-q", "-e", "-c", &quoted.join(" "), "/dev/null"])
            .env_remove("NSBOX_LOG")
            .env_remove("CONTAINERS_CONF")
            .stdin(Stdio::null())
            .output()
            .unwrap()
            .into()
    }

    /// The nsbox session (cgroup name) of container `cid`, from the runtime's state.
    fn session(cid: &str) -> Option<String> {
        std::fs::read_dir("/run/nsbox-runc")
            .ok()?
            .flatten()
            .filter_map(|e| std::fs::read(e.path().join("state.json")).ok())
            .filter_map(|t| serde_json::from_slice::<serde_json::Value>(&t).ok())
            .find(|v| v["id"] == cid)
            .and_then(|v| v["session"].as_str().map(String::from))
    }

    /// The container id podman wrote to `--cidfile` `name`.
    fn cid(&self, name: &str) -> String {
        std::fs::read_to_string(self.b.path(name))
            .unwrap()
            .trim()
            .to_string()
    }

    /// Nothing of the containers `cids` is left: no podman container, no runtime state, no
    /// mount under the test's dir, no process of `needle`; then podman's dirs are removed.
    fn assert_nothing_left(self, cids: &[String], needle: &str) {
        let ps = self.run(&["ps", "-a", "-q"]);
        assert_eq!(ps.code, 0, "{}", ps.stderr);
        assert!(ps.stdout.trim().is_empty(), "no container: {}", ps.stdout);
        for cid in cids {
            assert_eq!(cid.len(), 64, "a podman id: {cid}");
            assert_eq!(
                Podman::session(cid),
                None,
                "no runtime state left for {cid}"
            );
            assert!(
                leftover_cgroups(&format!("libpod-{cid}")).is_empty(),
                "no cgroup left for {cid}"
            );
        }
        let dir = self.b.path("");
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let under: Vec<_> = mounts
            .lines()
            .filter(|l| l.contains(dir.to_str().unwrap().trim_end_matches('/')))
            .collect();
        assert!(under.is_empty(), "no mount left: {under:?}");
        assert!(
            host_processes_matching(needle).is_empty(),
            "no process of the containers is left"
        );
        let podman = self.b.path("podman");
        std::fs::remove_dir_all(&podman).unwrap();
        assert!(!podman.exists());
    }
}

/// `podman run` through nsbox-runc: the process's output and exit code come back; podman's
/// `net.ipv4.ping_group_range "0 0"` (its `--network none` default) is written in the
/// container's own network namespace, read in its user namespace (gid 0 is the container's
/// root group); `podman run -it` gives the process a terminal of the sandbox's devpts.
#[test]
fn runtime_podman_runs_a_container_with_its_exit_code_and_a_terminal() {
    require_root!();
    let p = Podman::new();
    let cidfile = p.b.path("run.cid");
    let run = p.run(&[
        "run",
        "--rm",
        "--cidfile",
        cidfile.to_str().unwrap(),
        "--network",
        "none",
        "localhost/nsbox-test:1",
        "/bin/sh",
        "-c",
        "echo out-4718; echo err-4718 >&2; cat /proc/sys/net/ipv4/ping_group_range; exit 3",
    ]);
    assert_eq!(run.code, 3, "stdout {} stderr {}", run.stdout, run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.first(), Some(&"out-4718"), "{}", run.stdout);
    assert_eq!(
        lines
            .get(1)
            .map(|l| l.split_whitespace().collect::<Vec<_>>()),
        Some(vec!["0", "0"]),
        "the sysctl, in the container's terms: {}",
        run.stdout
    );
    assert!(run.stderr.contains("err-4718"), "{}", run.stderr);

    // `--ulimit` reaches the process (and podman's default RLIMIT_NOFILE 1048576 is set, or
    // clamped to the hard limit nsbox can set: ours, without CAP_SYS_RESOURCE).
    let limits = p.run(&[
        "run",
        "--rm",
        "--ulimit",
        "nofile=1000:2000",
        "--network",
        "none",
        "localhost/nsbox-test:1",
        "/bin/sh",
        "-c",
        "echo $(ulimit -n) $(ulimit -Hn)",
    ]);
    assert_eq!(limits.code, 0, "{}", limits.stderr);
    assert_eq!(limits.stdout.trim(), "1000 2000");
    let limits = p.run(&[
        "run",
        "--rm",
        "--network",
        "none",
        "localhost/nsbox-test:1",
        "/bin/sh",
        "-c",
        "echo $(ulimit -n) $(ulimit -Hn)",
    ]);
    assert_eq!(limits.code, 0, "{}", limits.stderr);
    let ours = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .maximum
        .unwrap_or(u64::MAX);
    let expected = 1_048_576u64.min(ours);
    assert_eq!(limits.stdout.trim(), format!("{expected} {expected}"));

    let cidfile = p.b.path("tty.cid");
    let tty = p.run_in_terminal(&[
        "run",
        "-it",
        "--rm",
        "--cidfile",
        cidfile.to_str().unwrap(),
        "--network",
        "none",
        "localhost/nsbox-test:1",
        "/bin/sh",
        "-c",
        "echo in $(tty); exit 7",
    ]);
    assert_eq!(tty.code, 7, "stdout {} stderr {}", tty.stdout, tty.stderr);
    assert!(tty.stdout.contains("in /dev/pts/"), "{:?}", tty.stdout);
    let cids = [p.cid("run.cid"), p.cid("tty.cid")];
    p.assert_nothing_left(&cids, "4718");
}

/// A detached podman container: `podman exec` (plain, and `-it` under `script`) runs in its
/// sandbox with the process's exit code; `podman stop` ends it, `podman rm` removes it, and
/// nothing is left: no runtime state, no nsbox cgroup, no mount, no process.
#[test]
fn runtime_podman_exec_stop_and_rm_a_detached_container_leave_nothing() {
    require_root!();
    let p = Podman::new();
    let run = p.run(&[
        "run",
        "-d",
        "--name",
        "c4719",
        "--network",
        "none",
        "localhost/nsbox-test:1",
        "/bin/sleep",
        "4719",
    ]);
    assert_eq!(run.code, 0, "stdout {} stderr {}", run.stdout, run.stderr);
    let cid = run.stdout.trim().to_string();
    assert!(
        Podman::session(&cid).is_some(),
        "the container's runtime state"
    );
    // The sandbox's cgroup is podman's cgroupsPath, `libpod_parent/libpod-<cid>`.
    assert!(
        !leftover_cgroups(&format!("libpod-{cid}")).is_empty(),
        "the sandbox's cgroup"
    );

    let exec = p.run(&["exec", "c4719", "/bin/sh", "-c", "echo in-exec; exit 5"]);
    assert_eq!(
        exec.code, 5,
        "stdout {} stderr {}",
        exec.stdout, exec.stderr
    );
    assert_eq!(exec.stdout.trim(), "in-exec");
    let exec = p.run_in_terminal(&["exec", "-it", "c4719", "/bin/sh", "-c", "echo in $(tty)"]);
    assert_eq!(
        exec.code, 0,
        "stdout {} stderr {}",
        exec.stdout, exec.stderr
    );
    assert!(exec.stdout.contains("in /dev/pts/"), "{:?}", exec.stdout);

    let stop = p.run(&["stop", "-t", "5", "c4719"]);
    assert_eq!(stop.code, 0, "{}", stop.stderr);
    let status = p.run(&["inspect", "-f", "{{.State.Status}}", "c4719"]);
    assert_eq!(status.stdout.trim(), "exited", "{}", status.stderr);
    assert!(host_processes_matching("/bin/sleep 4719").is_empty());
    let rm = p.run(&["rm", "c4719"]);
    assert_eq!(rm.code, 0, "{}", rm.stderr);
    p.assert_nothing_left(&[cid], "4719");
}

/// `linux.sysctl`: a key outside `net.*` is refused naming it, and so is a net key the kernel
/// does not have (written in the sandbox, whose network namespace is its own); nothing is left.
#[test]
fn runtime_refuses_sysctls_it_cannot_write_naming_the_key() {
    require_root!();
    let mut cfg = config(&["/bin/true"]);
    cfg["linux"]["sysctl"] = serde_json::json!({"kernel.shmmax": "1024"});
    let b = Bundle::new(cfg);
    let run = b.create("s1");
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains("linux.sysctl.kernel.shmmax"),
        "{}",
        run.stderr
    );
    let mut cfg = config(&["/bin/true"]);
    cfg["linux"]["sysctl"] = serde_json::json!({"net.ipv4.no_such_key_4720": "1"});
    std::fs::write(
        b.path("bundle/config.json"),
        serde_json::to_vec_pretty(&cfg).unwrap(),
    )
    .unwrap();
    let run = b.create("s2");
    assert_ne!(run.code, 0);
    assert!(
        run.stderr
            .contains("linux.sysctl.net.ipv4.no_such_key_4720"),
        "{}",
        run.stderr
    );
    let left: Vec<_> = std::fs::read_dir(b.path("state"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "nothing left: {left:?}");
}

/// The cgroup of `pid` in the hierarchy holding `controller` (v1), or its v2 cgroup: the
/// path /proc/PID/cgroup gives, as containerd's shim reads it for stats and OOM events.
fn cgroup_of(pid: &str, controller: &str) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let lines: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| {
            let mut p = l.splitn(3, ':');
            let _ = p.next()?;
            Some((p.next()?.to_string(), p.next()?.to_string()))
        })
        .collect();
    lines
        .iter()
        .find(|(c, _)| c.split(',').any(|c| c == controller))
        .or_else(|| lines.iter().find(|(c, _)| c.is_empty()))
        .map(|(_, path)| path.clone())
}

/// The sandbox's cgroup directory holding `file` (from `state.json`'s `cgroups`).
fn cgroup_file(b: &Bundle, id: &str, file: &str) -> PathBuf {
    let text = std::fs::read(b.path(&format!("state/{id}/state.json"))).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&text).unwrap();
    v["cgroups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| PathBuf::from(d.as_str().unwrap()).join(file))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("no {file} in the cgroups of {id}: {v}"))
}

/// The first of `files` (one per cgroup version) found in the sandbox's cgroup directories,
/// or above a cgroup v2 workload leaf (`nsbox-ID/sandbox`, whose cpu limit is on its parent).
fn cgroup_read_any(b: &Bundle, id: &str, files: &[&str]) -> String {
    let text = std::fs::read(b.path(&format!("state/{id}/state.json"))).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&text).unwrap();
    let mut dirs: Vec<PathBuf> = Vec::new();
    for d in v["cgroups"].as_array().unwrap() {
        let d = PathBuf::from(d.as_str().unwrap());
        let parent = d
            .ends_with("sandbox")
            .then(|| d.parent().map(Path::to_path_buf))
            .flatten();
        dirs.push(d);
        dirs.extend(parent);
    }
    files
        .iter()
        .find_map(|f| {
            dirs.iter()
                .find_map(|d| std::fs::read_to_string(d.join(f)).ok())
        })
        .unwrap_or_else(|| panic!("none of {files:?} in the cgroups of {id}: {v}"))
}

/// `linux.cgroupsPath` is where the sandbox's cgroup is, the pid in the pid file (the waiter)
/// is in it, as the shim expects, and `delete` removes it with the parents it made.
#[test]
fn runtime_puts_the_container_at_its_cgroups_path_with_the_pid_files_process() {
    require_root!();
    let mut cfg = config(&["/bin/sleep", "4712"]);
    cfg["linux"]["cgroupsPath"] = serde_json::json!("/nsbox-itest-cgpath/box1");
    let b = Bundle::new(cfg);
    let created = b.create("box1");
    assert_eq!(created.code, 0, "{}", created.stderr);
    let pid = std::fs::read_to_string(b.path("box1.pid")).unwrap();
    for controller in ["memory", "pids"] {
        assert_eq!(
            cgroup_of(&pid, controller).as_deref(),
            Some("/nsbox-itest-cgpath/box1"),
            "the waiter's {controller} cgroup"
        );
    }
    assert_eq!(b.runtime(&["start", "box1"]).code, 0);
    assert!(eventually(30.0, || !host_processes_matching(
        "/bin/sleep 4712"
    )
    .is_empty()));
    let sleeper = host_processes_matching("/bin/sleep 4712")[0].to_string();
    assert_eq!(
        cgroup_of(&sleeper, "memory").as_deref(),
        Some("/nsbox-itest-cgpath/box1"),
        "the workload is in the same cgroup"
    );
    let pids_max = cgroup_file(&b, "box1", "pids.max");
    assert!(pids_max
        .to_string_lossy()
        .contains("/nsbox-itest-cgpath/box1/"));
    assert_eq!(std::fs::read_to_string(&pids_max).unwrap().trim(), "64");
    let forced = b.runtime(&["delete", "--force", "box1"]);
    assert_eq!(forced.code, 0, "{}", forced.stderr);
    assert!(
        eventually(10.0, || leftover_cgroups("nsbox-itest-cgpath").is_empty()),
        "cgroup left: {:?}",
        leftover_cgroups("nsbox-itest-cgpath")
    );

    // Paths nsbox will not take, each refused naming the field, nothing left behind.
    for (path, flags, why) in [
        ("/a/../b", &[][..], "`..`"),
        ("/", &[][..], "root"),
        (
            "system.slice:nsbox:box2",
            &["--systemd-cgroup"][..],
            "systemd",
        ),
    ] {
        let mut cfg = config(&["/bin/true"]);
        cfg["linux"]["cgroupsPath"] = serde_json::json!(path);
        std::fs::write(
            b.path("bundle/config.json"),
            serde_json::to_vec(&cfg).unwrap(),
        )
        .unwrap();
        let bundle = b.path("bundle");
        let mut args: Vec<&str> = flags.to_vec();
        args.extend(["create", "--bundle", bundle.to_str().unwrap(), "box2"]);
        let cmd = b.runtime_cmd(&[]).args(&args).output().unwrap();
        let run: Run = cmd.into();
        assert_ne!(run.code, 0, "{path}");
        assert!(
            run.stderr.contains("linux.cgroupsPath") && run.stderr.contains(why),
            "{path}: {}",
            run.stderr
        );
        assert!(!b.path("state/box2").exists());
    }
}

/// `update --resources` changes the running container's limits: a lowered pids limit makes a
/// fork inside fail, lifting it lets it through; memory and cpu land in the cgroup's files.
/// Bad input is refused by name.
#[test]
fn runtime_update_changes_a_running_containers_limits() {
    require_root!();
    let b = Bundle::new(config(&["/bin/sleep", "4713"]));
    assert_eq!(b.create("upd").code, 0);
    assert_eq!(b.runtime(&["start", "upd"]).code, 0);
    assert!(eventually(30.0, || !host_processes_matching(
        "/bin/sleep 4713"
    )
    .is_empty()));
    let update = |json: &str| {
        crate::support::run_with_input(
            b.runtime_cmd(&["update", "--resources", "-", "upd"]),
            json.as_bytes(),
        )
    };
    let forks = process_file(
        &b,
        "forks.json",
        &[
            "/bin/sh",
            "-c",
            "/bin/true & /bin/true & /bin/true & wait; echo forked",
        ],
        |_| {},
    );
    let exec_forks = || b.runtime(&["exec", "--process", forks.to_str().unwrap(), "upd"]);

    // Room for the exec'd shell and one child, no more.
    let current: u64 = std::fs::read_to_string(cgroup_file(&b, "upd", "pids.current"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let lowered = update(&format!("{{\"pids\":{{\"limit\":{}}}}}", current + 2));
    assert_eq!(lowered.code, 0, "{}", lowered.stderr);
    assert_eq!(
        std::fs::read_to_string(cgroup_file(&b, "upd", "pids.max"))
            .unwrap()
            .trim(),
        (current + 2).to_string()
    );
    let starved = exec_forks();
    assert!(
        starved.stderr.contains("can't fork")
            || starved.stderr.contains("Resource temporarily unavailable"),
        "a fork past the lowered limit fails: code {} stdout {} stderr {}",
        starved.code,
        starved.stdout,
        starved.stderr
    );
    let lifted = update(r#"{"pids":{"limit":-1}}"#);
    assert_eq!(lifted.code, 0, "{}", lifted.stderr);
    assert_eq!(
        std::fs::read_to_string(cgroup_file(&b, "upd", "pids.max"))
            .unwrap()
            .trim(),
        "max"
    );
    let fed = exec_forks();
    assert_eq!(fed.code, 0, "{}", fed.stderr);
    assert_eq!(fed.stdout.trim(), "forked");

    // Memory and cpu, from a file this time.
    std::fs::write(
        b.path("res.json"),
        r#"{"memory":{"limit":134217728},"cpu":{"quota":50000,"period":100000}}"#,
    )
    .unwrap();
    let res = b.path("res.json");
    let set = b.runtime(&["update", "--resources", res.to_str().unwrap(), "upd"]);
    assert_eq!(set.code, 0, "{}", set.stderr);
    let memory = cgroup_read_any(&b, "upd", &["memory.max", "memory.limit_in_bytes"]);
    assert_eq!(memory.trim(), "134217728");
    let cpu = cgroup_read_any(&b, "upd", &["cpu.max", "cpu.cfs_quota_us"]);
    assert!(cpu.starts_with("50000"), "{cpu}");

    // Bad input: named, nothing changed.
    for (json, says) in [
        ("{\"pids\": ", "not valid JSON"),
        (r#"{"memory":{"swap":1}}"#, "memory.swap: not supported"),
        (r#"{"blockIO":{"weight":100}}"#, "blockIO: not supported"),
        (r#"{"pids":{"limit":"ten"}}"#, "pids.limit"),
    ] {
        let run = update(json);
        assert_ne!(run.code, 0, "{json}");
        assert!(run.stderr.contains(says), "{json}: {}", run.stderr);
    }
    let unknown = crate::support::run_with_input(
        b.runtime_cmd(&["update", "--resources", "-", "no-such-box"]),
        br#"{"pids":{"limit":5}}"#,
    );
    assert_ne!(unknown.code, 0);
    assert!(
        unknown
            .stderr
            .contains("container no-such-box does not exist"),
        "{}",
        unknown.stderr
    );
    let missing = b.runtime(&["update", "upd"]);
    assert_ne!(missing.code, 0);
    assert!(missing.stderr.contains("--resources"), "{}", missing.stderr);

    let session = b.session("upd");
    assert_eq!(b.runtime(&["delete", "--force", "upd"]).code, 0);
    assert!(eventually(10.0, || leftover_cgroups(&session).is_empty()));
}

/// Under containerd: the shim's `task metrics` read the container's cgroup (at its
/// `--cgroup` path) through the pid nsbox wrote, and an allocation past `--memory-limit` is an
/// OOM event (`/tasks/oom`) on `ctr events`, the task ending killed.
#[test]
fn runtime_under_containerd_gives_task_metrics_and_oom_events() {
    require_root!();
    let (b, rootfs, runc, runc_root, fifos, ctrd) = under_containerd();
    let run_detached = |id: &str, extra: &[&str], cmd: &[&str]| {
        let mut args = vec![
            "run",
            "-d",
            "--fifo-dir",
            fifos.to_str().unwrap(),
            "--rootfs",
            "--runc-binary",
            runc.to_str().unwrap(),
            "--runc-root",
            runc_root.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        args.push(rootfs.to_str().unwrap());
        args.push(id);
        args.extend_from_slice(cmd);
        ctrd.ctr(&args)
    };

    let run = run_detached(
        "metrics1",
        &["--cgroup", "/nsbox-itest-ctr/metrics1"],
        &["/bin/sh", "-c", "sleep 4714 & sleep 4715"],
    );
    assert_eq!(run.code, 0, "{} {}", run.stdout, run.stderr);
    assert!(eventually(30.0, || !host_processes_matching("sleep 4715").is_empty()));
    let metrics = ctrd.ctr(&["task", "metrics", "metrics1"]);
    assert_eq!(metrics.code, 0, "{}", metrics.stderr);
    let value = |name: &str| -> Option<u64> {
        metrics.stdout.lines().find_map(|l| {
            let mut parts = l.split_whitespace();
            (parts.next() == Some(name))
                .then(|| parts.next().and_then(|v| v.parse().ok()))
                .flatten()
        })
    };
    // sh, two sleeps, the sandbox's init (and nsbox's waiter, which the shim knows).
    let pids = value("pids.current").unwrap_or_else(|| panic!("{}", metrics.stdout));
    assert!((4..=8).contains(&pids), "{}", metrics.stdout);
    let memory = value("memory.usage_in_bytes")
        .or_else(|| value("memory.usage"))
        .unwrap_or_else(|| panic!("{}", metrics.stdout));
    assert!(memory > 100_000, "{}", metrics.stdout);
    assert_eq!(
        ctrd.ctr(&["task", "kill", "-s", "SIGKILL", "metrics1"])
            .code,
        0
    );
    assert!(eventually(30.0, || ctrd
        .ctr(&["task", "delete", "metrics1"])
        .code
        == 0));
    assert_eq!(ctrd.ctr(&["container", "delete", "metrics1"]).code, 0);
    assert!(
        eventually(10.0, || leftover_cgroups("nsbox-itest-ctr").is_empty()),
        "{:?}",
        leftover_cgroups("nsbox-itest-ctr")
    );

    // The OOM: `ctr events` runs from before the container starts.
    let events_out = b.path("events.txt");
    let mut events = Command::new("/usr/bin/ctr")
        .arg("--address")
        .arg(ctrd.dir.path().join("containerd.sock"))
        .args(["-n", "nsbox-test", "events"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&events_out).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let run = run_detached(
        "oom1",
        &[
            "--memory-limit",
            "33554432",
            "--cgroup",
            "/nsbox-itest-ctr/oom1",
        ],
        // dd's buffer is one 64 MiB allocation it fills: twice the limit.
        &[
            "/bin/sh",
            "-c",
            "dd if=/dev/zero of=/dev/null bs=64M count=4",
        ],
    );
    assert_eq!(run.code, 0, "{} {}", run.stdout, run.stderr);
    let oom_seen = eventually(30.0, || {
        std::fs::read_to_string(&events_out)
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains("/tasks/oom") && l.contains("oom1"))
    });
    let exited = eventually(30.0, || {
        std::fs::read_to_string(&events_out)
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains("/tasks/exit") && l.contains("oom1"))
    });
    let _ = events.kill();
    let _ = events.wait();
    let seen = std::fs::read_to_string(&events_out).unwrap_or_default();
    assert!(oom_seen, "no OOM event: {seen}");
    assert!(exited, "no exit: {seen}");
    let exit_line = seen
        .lines()
        .find(|l| l.contains("/tasks/exit") && l.contains("oom1"))
        .unwrap();
    assert!(
        exit_line.contains("\"exit_status\":137"),
        "killed by the OOM killer: {exit_line}"
    );
    assert!(eventually(30.0, || ctrd
        .ctr(&["task", "delete", "oom1"])
        .code
        == 0));
    assert_eq!(ctrd.ctr(&["container", "delete", "oom1"]).code, 0);
    assert!(
        eventually(10.0, || leftover_cgroups("nsbox-itest-ctr").is_empty()),
        "{:?}",
        leftover_cgroups("nsbox-itest-ctr")
    );
}

/// Issue 13's egress in a cluster: the `io.nsbox.net.*` annotations on a pod's sandbox
/// container put nsbox's ruleset, resolver and proxy in the pod's network namespace (made
/// here as a CNI would: an interface, an address and a default route of its own) for the
/// container's life. Another container of the pod, joining the namespace by path and
/// annotated with nothing, is filtered the same: its DNS (to the engine's resolver address)
/// reaches nsbox's resolver, an allowed name is served through the proxy, other names and
/// addresses are refused. Deleting the sandbox container removes the rules; the namespace
/// stays its owner's. A bad annotation is refused by name.
#[test]
fn runtime_filters_a_pods_egress_from_its_sandbox_containers_annotations() {
    use crate::networld::{World, DNS, OTHER4, WEB4};
    require_root!();
    let world = World::start();
    let runtime = || -> Vec<std::ffi::OsString> {
        vec![
            "nsenter".into(),
            format!("--net=/run/netns/{}", world.host_ns).into(),
            nsbox_bin().into(),
            "runtime".into(),
        ]
    };
    let name = format!("nsbox-fpod-{}", std::process::id());
    let _gone = PodNetns::add(&name);
    // The pod's end of a veth pair, the other end in the world's host (as a CNI bridge's).
    ip(&["-n", &name, "link", "set", "lo", "up"]);
    ip(&[
        "-n", &name, "link", "add", "pod0", "type", "veth", "peer", "name", "pod1",
    ]);
    ip(&["-n", &name, "link", "set", "pod1", "netns", &world.host_ns]);
    ip(&["-n", &name, "addr", "add", "192.0.2.77/32", "dev", "pod0"]);
    ip(&["-n", &name, "link", "set", "pod0", "up"]);
    ip(&["-n", &name, "route", "add", "default", "dev", "pod0"]);
    ip(&[
        "-n",
        &world.host_ns,
        "addr",
        "add",
        "192.0.2.78/32",
        "dev",
        "pod1",
    ]);
    ip(&["-n", &world.host_ns, "link", "set", "pod1", "up"]);
    ip(&[
        "-n",
        &world.host_ns,
        "route",
        "add",
        "192.0.2.77/32",
        "dev",
        "pod1",
    ]);
    let probe = crate::support::probe_dir();
    let probe_mount = serde_json::json!({"destination": "/opt/nsbox-probe", "type": "bind",
        "source": probe, "options": ["rbind", "ro"]});
    let netns = format!("/run/netns/{name}");
    let tables = || {
        let out = Command::new("ip")
            .args(["netns", "exec", &name, "nft", "list", "tables"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    // A bad annotation: refused by name, nothing made.
    let mut bad = config(&["/bin/true"]);
    bad["linux"]["namespaces"][2] = serde_json::json!({"type": "network", "path": netns});
    bad["annotations"] = serde_json::json!({"io.nsbox.net.allow": "http://web.allowed.example/"});
    let b = Bundle::with_runtime(bad, runtime());
    let refused = b.create("bad");
    assert_ne!(refused.code, 0);
    let log = std::fs::read_to_string(b.path("log.json")).unwrap_or_default();
    assert!(log.contains("annotations.io.nsbox.net.allow"), "{log}");
    assert!(!tables().contains("nsbox"), "{}", tables());

    // The pod's sandbox container, annotated; it serves on port 9000 (a pod takes
    // connections as well as making them).
    let mut pause = config(&["/opt/nsbox-probe/probe", "serve-bulk", "0.0.0.0:9000"]);
    pause["linux"]["namespaces"][2] = serde_json::json!({"type": "network", "path": netns});
    pause["mounts"]
        .as_array_mut()
        .unwrap()
        .push(probe_mount.clone());
    let annotations = serde_json::json!({
        "io.nsbox.net.allow": "web.allowed.example",
        "io.nsbox.net.dns-upstream": DNS,
        "io.kubernetes.cri.container-type": "sandbox",
    });
    pause["annotations"] = annotations.clone();
    let pod_annotations = annotations.clone();
    let pod = Bundle::with_runtime(pause, runtime());
    let created = pod.create("pause");
    assert_eq!(created.code, 0, "create: {}", created.stderr);
    assert_eq!(pod.runtime(&["start", "pause"]).code, 0);
    assert!(tables().contains("table inet nsbox"), "{}", tables());
    // A connection from outside the pod is answered: its replies leave.
    assert!(eventually(30.0, || std::fs::read_to_string(
        pod.path("pause.out")
    )
    .is_ok_and(|o| o.contains("ready"))));
    let fetched = world.in_host(&[
        probe.join("probe").to_str().unwrap(),
        "fetch",
        "192.0.2.77:9000",
        "100000",
    ]);
    let fetched = String::from_utf8_lossy(&fetched.stdout);
    assert!(fetched.starts_with("ok 100000 "), "{fetched}");

    // An application container of the pod: joins by path, filters nothing itself, the engine's
    // resolv.conf (the world's resolver), nsbox's probe. (The request ends with a body byte:
    // the shell's $(...) would strip the head's last newline.)
    let resolv = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(resolv.path(), format!("nameserver {DNS}\n")).unwrap();
    let script = format!(
        "P=/opt/nsbox-probe/probe; \
         echo dns $($P dns {DNS} web.allowed.example 1); \
         echo web $($P tcp {WEB4}:80 \"$(printf 'GET / HTTP/1.0\\r\\nHost: web.allowed.example\\r\\nContent-Length: 1\\r\\n\\r\\nx')\"); \
         echo otherdns $($P dns {DNS} other.example 1); \
         echo other $($P tcp {OTHER4}:80)"
    );
    let mut app = config(&["/bin/sh", "-c", &script]);
    app["linux"]["namespaces"][2] = serde_json::json!({"type": "network", "path": netns});
    // containerd's CRI gives every container of the pod the pod's annotations.
    app["annotations"] = annotations;
    app["annotations"]["io.kubernetes.cri.container-type"] = "container".into();
    let mounts = app["mounts"].as_array_mut().unwrap();
    mounts.push(probe_mount);
    mounts.push(
        serde_json::json!({"destination": "/etc/resolv.conf", "type": "bind",
        "source": resolv.path(), "options": ["bind", "ro"]}),
    );
    let app = Bundle::with_runtime(app, runtime());
    let created = app.create("app");
    assert_eq!(created.code, 0, "create: {}", created.stderr);
    assert_eq!(app.runtime(&["start", "app"]).code, 0);
    assert!(eventually(60.0, || app.status("app") == "stopped"));
    let out = std::fs::read_to_string(app.path("app.out")).unwrap();
    let line = |tag: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("{tag} ")))
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(line("dns"), "dns ok rcode 0 answers 1", "{out}");
    assert!(
        line("web").contains("hello from the fake internet"),
        "{out}"
    );
    assert_eq!(line("otherdns"), "otherdns ok rcode 5 answers 0", "{out}");
    assert_eq!(line("other"), "other error ECONNREFUSED", "{out}");
    assert_eq!(app.runtime(&["delete", "app"]).code, 0);
    // The refused name never reached the world's resolver.
    assert!(
        !world.dns_log().contains("other.example"),
        "{}",
        world.dns_log()
    );

    // The sandbox container's end takes its rules along; the namespace stays.
    let session = pod.session("pause");
    assert_eq!(pod.runtime(&["kill", "pause", "KILL"]).code, 0);
    assert!(eventually(30.0, || pod.status("pause") == "stopped"));
    assert_eq!(pod.runtime(&["delete", "pause"]).code, 0);
    assert!(
        eventually(10.0, || !tables().contains("nsbox")),
        "{}",
        tables()
    );
    assert!(Path::new(&netns).exists());
    assert!(leftover_cgroups(&session).is_empty(), "no cgroup left");

    // A supervisor killed outright leaves its table (the pod stays closed, not open); the
    // next sandbox container in the same namespace replaces it (its proxy's and resolver's
    // ports were free: no live supervisor served the namespace).
    let mut again = config(&["/bin/sleep", "600"]);
    again["linux"]["namespaces"][2] = serde_json::json!({"type": "network", "path": netns});
    again["annotations"] = pod_annotations.clone();
    let again = Bundle::with_runtime(again, runtime());
    assert_eq!(again.create("pause2").code, 0);
    let session = again.session("pause2");
    let record = again.path(&format!("state/pause2/run/sessions/{session}/session.json"));
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    let supervisor = record["supervisor_pid"].as_i64().unwrap();
    assert!(tables().contains("table inet nsbox"), "{}", tables());
    let _ = Command::new("kill")
        .args(["-KILL", &supervisor.to_string()])
        .status();
    assert!(eventually(10.0, || !Path::new(&format!(
        "/proc/{supervisor}"
    ))
    .exists()));
    assert_eq!(again.runtime(&["delete", "--force", "pause2"]).code, 0);
    assert!(
        tables().contains("table inet nsbox"),
        "left by the killed supervisor"
    );
    let third = again.create("pause3");
    assert_eq!(third.code, 0, "a stale table is replaced: {}", third.stderr);
    assert!(tables().contains("table inet nsbox"), "{}", tables());
    assert_eq!(again.runtime(&["delete", "--force", "pause3"]).code, 0);
    assert!(
        eventually(10.0, || !tables().contains("nsbox")),
        "{}",
        tables()
    );
    let _ = crate::support::nsbox(&["prune"]);
}
