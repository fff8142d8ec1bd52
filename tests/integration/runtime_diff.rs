//! Differential tests of nsbox's OCI runtime against runc and crun: the same bundles, each
//! runtime with a `--root` of its own, through the same lifecycle (create, state, start, the
//! process's exit, kill, delete, the errors of `kill` of a stopped container and `delete` of an
//! unknown id), and what the process sees inside (/proc/self/status, the mountpoints of
//! /proc/self/mountinfo with their ro/rw flags, hostname, cwd, environment).
//!
//! runc and crun must agree; where nsbox differs from them, the difference must be one of
//! [`DIFFERENCES`] (the same table is in docs/runtime.md, "Differences from runc and crun"),
//! and every row of it must still be observed, so the table cannot go stale.
//!
//! runc and crun do not keep a detached container's exit status: the container's process is
//! reparented to the nearest subreaper when `create` exits. `create` therefore runs under a
//! small python3 subreaper ([`REAPER`]) that reports each child it reaps, as a shim is one; for
//! nsbox the pid file's process is its waiter, reaped there the same way.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::require_root;
use crate::runtime::{config, Bundle};
use crate::support::{eventually, nsbox_bin, skip};

/// Every difference from runc and crun that nsbox has on purpose: (field, runc's and crun's
/// value, nsbox's value, why). Mirrored in docs/runtime.md.
const DIFFERENCES: &[(&str, &str, &str, &str)] = &[
    (
        "exit after kill TERM",
        "still running",
        "143",
        "the process is not the pid namespace's pid 1 (nsbox's init is), so SIGTERM without a handler ends it; runc's and crun's pid 1 ignores it",
    ),
    (
        "/proc/self/status CapBnd",
        "0000000000000021",
        "0000000000000000",
        "the floor: the workload keeps no capability, whatever process.capabilities says",
    ),
    (
        "/proc/self/status CapEff",
        "0000000000000021",
        "0000000000000000",
        "the floor: no capabilities",
    ),
    (
        "/proc/self/status CapPrm",
        "0000000000000021",
        "0000000000000000",
        "the floor: no capabilities",
    ),
    (
        "/proc/self/status Seccomp",
        "0",
        "2",
        "the floor: nsbox's seccomp filter always applies (linux.seccomp is not honoured; the spec here has none)",
    ),
    (
        "mount /dev (ro/rw)",
        "rw",
        "ro",
        "nsbox's own minimal /dev, read-only: no device node can be made in it",
    ),
    (
        "mount /dev/mqueue (ro/rw)",
        "rw",
        "(none)",
        "nsbox mounts no mqueue filesystem: its /dev is its own minimal one (POSIX message queues are not part of nsbox's tested surface)",
    ),
    (
        "mount /run (ro/rw)",
        "rw",
        "(none)",
        "tmpfs mounts of the spec are not honoured: the writable places are nsbox's /tmp, /sandbox and, with root.readonly false, the root's overlay",
    ),
    (
        "other mountpoints",
        "(none)",
        "/sandbox rw, /tmp rw, masks under /proc and /sys",
        "nsbox's writable /tmp and /sandbox, and its own masked paths (more than the spec's, whatever it lists)",
    ),
];

/// The subreaper `create` runs under (argv: REPORT PROGRAM ARGS...): runs the command, then
/// reaps every child (the orphaned container process among them) and writes "create CODE"
/// and "PID WAIT-STATUS" lines to REPORT.
const REAPER: &str = r#"
import ctypes, os, subprocess, sys
if ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
    sys.exit("prctl(PR_SET_CHILD_SUBREAPER) failed")
report = open(sys.argv[1], "w")
report.write("create %d\n" % subprocess.call(sys.argv[2:]))
report.flush()
while True:
    try:
        pid, status = os.wait()
    except ChildProcessError:
        break
    report.write("%d %d\n" % (pid, status))
    report.flush()
"#;

/// One runtime under test: its name and the command that runs it.
struct Runtime {
    name: &'static str,
    argv: Vec<OsString>,
}

/// nsbox, runc and crun; None (after a SKIP) where runc, crun or python3 is missing, which
/// NSBOX_TEST_REQUIRE_ROOT=1 makes a failure.
fn runtimes() -> Option<Vec<Runtime>> {
    for (tool, path) in [
        ("runc", "/usr/sbin/runc"),
        ("crun", "/usr/bin/crun"),
        ("python3", "python3"),
    ] {
        let found = Command::new(path)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            let why =
                format!("{tool} ({path}) is not installed (apt-get install runc crun python3)");
            if std::env::var("NSBOX_TEST_REQUIRE_ROOT").as_deref() == Ok("1") {
                panic!("{why}, and NSBOX_TEST_REQUIRE_ROOT=1 forbids skipping");
            }
            skip(module_path!(), &why);
            return None;
        }
    }
    Some(vec![
        Runtime {
            name: "nsbox",
            argv: vec![nsbox_bin().into(), "runtime".into()],
        },
        Runtime {
            name: "runc",
            argv: vec!["/usr/sbin/runc".into()],
        },
        Runtime {
            name: "crun",
            argv: vec!["/usr/bin/crun".into()],
        },
    ])
}

/// On a hybrid cgroup host crun refuses to run when the cgroup2 mount (here
/// /sys/fs/cgroup/unified) lists controllers. As benches/common/peers.rs does, the test's
/// thread (and so every runtime it starts) gets a private mount namespace without that mount;
/// nsbox uses the v1 controllers either way. Nothing of the host's mounts changes.
fn private_cgroup_view() {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let unified = mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let mount_point = left.split(' ').nth(4)?;
        (right.starts_with("cgroup2 ") && mount_point != "/sys/fs/cgroup")
            .then(|| mount_point.to_string())
    });
    let Some(unified) = unified else { return };
    let controllers =
        std::fs::read_to_string(Path::new(&unified).join("cgroup.controllers")).unwrap_or_default();
    if controllers.trim().is_empty() {
        return;
    }
    // Per thread: the test harness runs each test on a thread of its own, and unsharing the
    // mount namespace unshares only the calling thread's filesystem context.
    nsbox::sys::process::unshare(nsbox::sys::process::flags::NEWNS).unwrap();
    rustix::mount::mount_change(
        "/",
        rustix::mount::MountPropagationFlags::PRIVATE | rustix::mount::MountPropagationFlags::REC,
    )
    .unwrap();
    rustix::mount::unmount(unified.as_str(), rustix::mount::UnmountFlags::DETACH).unwrap();
}

/// The bundles' spec: runtime.rs's, with what runc's default spec has besides (a /dev/shm,
/// masked and read-only paths, no_new_privs, the capabilities in every set), a cwd other than
/// / and an environment of its own; `user` is process.user.
fn spec(args: &[&str], user: (u32, u32)) -> serde_json::Value {
    let mut spec = config(args);
    let caps = serde_json::json!(["CAP_CHOWN", "CAP_KILL"]);
    spec["process"]["user"] = serde_json::json!({"uid": user.0, "gid": user.1});
    spec["process"]["cwd"] = "/bin".into();
    spec["process"]["env"] = serde_json::json!(["PATH=/bin", "DIFF_TEST=one two"]);
    spec["process"]["noNewPrivileges"] = true.into();
    spec["process"]["capabilities"] = serde_json::json!({
        "bounding": caps, "effective": caps, "permitted": caps,
    });
    // runc's default mounts (`runc spec`) but the cgroup one, and runtime.rs's /run.
    spec["mounts"] = serde_json::json!([
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/run", "type": "tmpfs", "source": "tmpfs"}
    ]);
    spec["linux"]["maskedPaths"] = serde_json::json!(MASKED);
    spec["linux"]["readonlyPaths"] = serde_json::json!(READONLY);
    spec
}

/// The spec's masked and read-only paths (runc's defaults that exist on the hosts the tests run
/// on: a path that does not exist is not masked).
const MASKED: &[&str] = &[
    "/proc/keys",
    "/proc/timer_list",
    "/proc/acpi",
    "/sys/firmware",
];
const READONLY: &[&str] = &["/proc/sys", "/proc/bus"];
/// The spec's mountpoints besides those and the root.
const MOUNTS: &[&str] = &[
    "/",
    "/proc",
    "/dev",
    "/dev/pts",
    "/dev/shm",
    "/dev/mqueue",
    "/sys",
    "/run",
];

/// What the process of the inspecting bundles prints: the lines of /proc/self/status the test
/// compares, hostname, cwd, the environment the runtime gave it (the shell's, not one it added to)
/// and mountinfo, each line tagged.
const INSPECT: &str =
    "grep -E '^(Uid|Gid|NoNewPrivs|Seccomp|CapEff|CapPrm|CapBnd):' /proc/self/status \
     | sed 's/^/status /'; echo \"hostname $(hostname)\"; echo \"cwd $(pwd)\"; \
     tr '\\000' '\\n' </proc/$$/environ | sed 's/^/env /'; sed 's/^/mount /' /proc/self/mountinfo";

/// One container's run under the reaper: the bundle, its id, and the running reaper.
struct Container<'a> {
    bundle: &'a Bundle,
    id: String,
    reaper: Child,
}

impl<'a> Container<'a> {
    /// `create` (under the reaper), which must succeed.
    fn create(bundle: &'a Bundle, id: &str) -> Container<'a> {
        let cmd = bundle.create_cmd(id, &[]);
        let out = std::fs::OpenOptions::new()
            .append(true)
            .open(bundle.path(&format!("{id}.out")))
            .unwrap();
        let err = std::fs::OpenOptions::new()
            .append(true)
            .open(bundle.path(&format!("{id}.err")))
            .unwrap();
        let report = bundle.path(&format!("{id}.reaped"));
        let reaper = Command::new("python3")
            .arg("-c")
            .arg(REAPER)
            .arg(&report)
            .arg(cmd.get_program())
            .args(cmd.get_args())
            .env_remove("NSBOX_LOG")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap();
        let c = Container {
            bundle,
            id: id.to_string(),
            reaper,
        };
        assert!(
            eventually(20.0, || c.reaped().contains_key("create")),
            "create {id} did not finish: {}",
            c.file("err")
        );
        assert_eq!(c.reaped()["create"], 0, "create {id}: {}", c.file("err"));
        c
    }

    fn file(&self, ext: &str) -> String {
        std::fs::read_to_string(self.bundle.path(&format!("{}.{ext}", self.id))).unwrap_or_default()
    }

    /// The reaper's report: "create" → create's exit code, each reaped pid → its wait status.
    fn reaped(&self) -> BTreeMap<String, i32> {
        self.file("reaped")
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(' ')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect()
    }

    fn pid(&self) -> String {
        self.file("pid").trim().to_string()
    }

    fn status(&self) -> String {
        self.bundle.status(&self.id)
    }

    /// Waits for the stopped state; the process's exit as its caller sees it: the exit code,
    /// or 128 + the signal that ended it, from the wait status the reaper got for the pid in
    /// the pid file (what a shim sees: nsbox's pid is its waiter, which exits with the
    /// process's status).
    fn exit(&mut self, runtime: &str) -> String {
        assert!(
            eventually(20.0, || self.status() == "stopped"),
            "{runtime}: {} did not stop",
            self.id
        );
        let pid = self.pid();
        assert!(
            eventually(20.0, || self.reaped().contains_key(&pid)),
            "{runtime}: the reaper never reaped {pid}: {:?}",
            self.reaped()
        );
        let status = self.reaped()[&pid];
        let (code, signal) = (status >> 8 & 0xff, status & 0x7f);
        (if signal == 0 { code } else { 128 + signal }).to_string()
    }

    /// `delete` (which must succeed), and the reaper's end.
    fn delete(mut self) {
        let run = self.bundle.runtime(&["delete", "--force", &self.id]);
        assert_eq!(run.code, 0, "delete {}: {}", self.id, run.stderr);
        assert!(eventually(20.0, || self
            .reaper
            .try_wait()
            .unwrap()
            .is_some()));
    }
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        if self.reaper.try_wait().ok().flatten().is_none() {
            let _ = self.bundle.runtime(&["delete", "--force", &self.id]);
            let _ = self.reaper.kill();
            let _ = self.reaper.wait();
        }
    }
}

/// A JSON value's shape: its type, and for an object each key's shape.
fn shape(v: &serde_json::Value) -> String {
    if let Some(o) = v.as_object() {
        // crun's own key, the name of a systemd scope (set even with cgroupfs): not runc's,
        // not the spec's.
        if o.contains_key("systemd-scope") {
            let mut o = o.clone();
            o.remove("systemd-scope");
            return shape(&serde_json::Value::Object(o));
        }
    }
    match v {
        serde_json::Value::Null => "null".into(),
        serde_json::Value::Bool(_) => "bool".into(),
        serde_json::Value::Number(_) => "number".into(),
        serde_json::Value::String(_) => "string".into(),
        serde_json::Value::Array(_) => "array".into(),
        serde_json::Value::Object(o) => {
            let keys: Vec<String> = o
                .iter()
                .map(|(k, v)| match v {
                    serde_json::Value::Object(_) => format!("{k}:object"),
                    _ => format!("{k}:{}", shape(v)),
                })
                .collect();
            format!("{{{}}}", keys.join(","))
        }
    }
}

/// A container id of this test process's own: runc and crun name their cgroups after it.
fn container_id(name: &str) -> String {
    format!("nsbox-diff-{}-{name}", std::process::id())
}

/// The lifecycle facts of one runtime: state shapes and transitions, exit codes, errors.
fn lifecycle(rt: &Runtime, facts: &mut BTreeMap<String, String>) {
    let b = Bundle::with_runtime(spec(&["/bin/sleep", "4721"], (0, 0)), rt.argv.clone());
    let sleeper = container_id("sleeper");
    let mut c = Container::create(&b, &sleeper);
    let created = b.state(&sleeper);
    facts.insert(
        "state after create: status".into(),
        created["status"].to_string(),
    );
    facts.insert("state: keys and types".into(), shape(&created));
    facts.insert(
        "state after create: pid is the pid file's".into(),
        (created["pid"].as_i64().map(|p| p.to_string()) == Some(c.pid())).to_string(),
    );
    let start = b.runtime(&["start", &sleeper]);
    facts.insert("start: exit code".into(), start.code.to_string());
    let running = b.state(&sleeper);
    facts.insert(
        "state after start: status".into(),
        running["status"].to_string(),
    );
    facts.insert("state after start: keys and types".into(), shape(&running));
    let term = b.runtime(&["kill", &sleeper, "TERM"]);
    facts.insert("kill TERM: exit code".into(), term.code.to_string());
    // Long enough for a SIGTERM that ends the process to be seen as stopped, on a busy host
    // too (1 s was not always, under CI's load beside a fuzzer); runc and crun wait it all.
    let ended = eventually(5.0, || c.status() == "stopped");
    let after_term = if ended {
        c.exit(rt.name)
    } else {
        "still running".to_string()
    };
    facts.insert("exit after kill TERM".into(), after_term);
    if !ended {
        let kill = b.runtime(&["kill", &sleeper, "KILL"]);
        assert_eq!(kill.code, 0, "{}: kill KILL: {}", rt.name, kill.stderr);
        facts.insert("exit after kill KILL".into(), c.exit(rt.name));
    }
    let stopped = b.state(&sleeper);
    facts.insert(
        "state after exit: status".into(),
        stopped["status"].to_string(),
    );
    facts.insert("state after exit: keys and types".into(), shape(&stopped));
    let kill_stopped = b.runtime(&["kill", &sleeper, "KILL"]);
    facts.insert(
        "kill of a stopped container: fails".into(),
        (kill_stopped.code != 0).to_string(),
    );
    c.delete();
    let gone = b.runtime(&["state", &sleeper]);
    facts.insert(
        "state after delete: fails".into(),
        (gone.code != 0).to_string(),
    );
    let unknown = b.runtime(&["delete", "no-such-container"]);
    facts.insert(
        "delete of an unknown id: fails".into(),
        (unknown.code != 0).to_string(),
    );

    // KILL of a running process (the TERM one above may have ended it already).
    let killed = container_id("killed");
    let mut c = Container::create(&b, &killed);
    assert_eq!(b.runtime(&["start", &killed]).code, 0);
    assert_eq!(b.runtime(&["kill", &killed, "KILL"]).code, 0);
    facts.insert("exit after kill KILL".into(), c.exit(rt.name));
    c.delete();

    for (id, code) in [("zero", 0), ("seven", 7)] {
        let b = Bundle::with_runtime(
            spec(&["/bin/sh", "-c", &format!("exit {code}")], (0, 0)),
            rt.argv.clone(),
        );
        let id = &container_id(id);
        let mut c = Container::create(&b, id);
        assert_eq!(b.runtime(&["start", id]).code, 0, "{}: start {id}", rt.name);
        facts.insert(format!("exit of `exit {code}`"), c.exit(rt.name));
        c.delete();
    }
}

/// What the process sees inside, as process.user `user` (`who` names it in the facts).
fn inside(rt: &Runtime, who: &str, user: (u32, u32), facts: &mut BTreeMap<String, String>) {
    let b = Bundle::with_runtime(spec(&["/bin/sh", "-c", INSPECT], user), rt.argv.clone());
    let inspect = container_id("inspect");
    let mut c = Container::create(&b, &inspect);
    assert_eq!(b.runtime(&["start", &inspect]).code, 0);
    assert_eq!(c.exit(rt.name), "0", "{}: {}", rt.name, c.file("err"));
    let out = c.file("out");
    c.delete();
    let mut env = Vec::new();
    let mut mounts = BTreeMap::new();
    for line in out.lines() {
        let Some((tag, rest)) = line.split_once(' ') else {
            continue;
        };
        match tag {
            "status" => {
                let (key, value) = rest.split_once(':').unwrap();
                let value = value.split_whitespace().collect::<Vec<_>>().join(" ");
                facts.insert(format!("{who}: /proc/self/status {key}"), value);
            }
            "hostname" | "cwd" => {
                facts.insert(format!("{who}: {tag}"), rest.to_string());
            }
            "env" => env.push(rest.to_string()),
            "mount" => {
                // Each mountpoint and its per-mount ro/rw flag; the last mount of a place is
                // the one the process sees.
                let fields: Vec<&str> = rest.split(' ').collect();
                let ro = fields[5].split(',').next().unwrap();
                mounts.insert(fields[4].to_string(), ro.to_string());
            }
            _ => {}
        }
    }
    env.sort();
    facts.insert(format!("{who}: env"), env.join(" "));
    for place in MOUNTS.iter().chain(READONLY) {
        let flag = mounts.remove(*place).unwrap_or_else(|| "(none)".into());
        facts.insert(format!("{who}: mount {place} (ro/rw)"), flag);
    }
    // A masked path is a mount over it (runc binds /dev/null over a file read-write, crun
    // read-only; both mount a read-only tmpfs over a directory): whether it is masked counts.
    for place in MASKED {
        let masked = mounts.remove(*place).is_some();
        facts.insert(format!("{who}: masked {place}"), masked.to_string());
    }
    // Further masks (which paths depends on the kernel: only those that exist are masked)
    // count as one.
    let mut others: Vec<String> = mounts
        .iter()
        .filter(|(p, _)| !p.starts_with("/proc/") && !p.starts_with("/sys/"))
        .map(|(p, f)| format!("{p} {f}"))
        .collect();
    if mounts
        .keys()
        .any(|p| p.starts_with("/proc/") || p.starts_with("/sys/"))
    {
        others.push("masks under /proc and /sys".into());
    }
    if others.is_empty() {
        others.push("(none)".into());
    }
    facts.insert(format!("{who}: other mountpoints"), others.join(", "));
}

#[test]
fn runtime_diff_matches_runc_and_crun_but_for_the_documented_differences() {
    require_root!();
    let Some(runtimes) = runtimes() else { return };
    private_cgroup_view();
    let mut all: Vec<(&str, BTreeMap<String, String>)> = Vec::new();
    for rt in &runtimes {
        let mut facts = BTreeMap::new();
        lifecycle(rt, &mut facts);
        inside(rt, "root", (0, 0), &mut facts);
        inside(rt, "uid 1000", (1000, 1000), &mut facts);
        all.push((rt.name, facts));
    }
    let [(_, nsbox), (_, runc), (_, crun)] = &all[..] else {
        unreachable!()
    };
    // What runc (and so, below, crun and nsbox) must say, so that a fact all three get wrong
    // the same way does not pass unseen.
    for (key, expected) in [
        ("state after create: status", "\"created\""),
        ("state after start: status", "\"running\""),
        ("state after exit: status", "\"stopped\""),
        ("state after create: pid is the pid file's", "true"),
        ("exit of `exit 0`", "0"),
        ("exit of `exit 7`", "7"),
        ("exit after kill KILL", "137"),
        ("kill of a stopped container: fails", "true"),
        ("delete of an unknown id: fails", "true"),
        ("root: /proc/self/status Uid", "0 0 0 0"),
        ("uid 1000: /proc/self/status Gid", "1000 1000 1000 1000"),
        ("root: /proc/self/status NoNewPrivs", "1"),
        ("root: hostname", "oci-box"),
        ("root: cwd", "/bin"),
        // HOME: runc's and crun's for a user the rootfs has no /etc/passwd entry for.
        ("root: env", "DIFF_TEST=one two HOME=/ PATH=/bin"),
        ("root: mount / (ro/rw)", "ro"),
        ("root: mount /proc/sys (ro/rw)", "ro"),
        ("root: masked /proc/keys", "true"),
        ("root: masked /proc/acpi", "true"),
    ] {
        assert_eq!(
            runc.get(key).map(String::as_str),
            Some(expected),
            "runc: {key}"
        );
    }
    let keys: std::collections::BTreeSet<&String> =
        nsbox.keys().chain(runc.keys()).chain(crun.keys()).collect();
    let absent = "(none)".to_string();
    let mut problems = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for key in keys {
        let (n, r, c) = (
            nsbox.get(key).unwrap_or(&absent),
            runc.get(key).unwrap_or(&absent),
            crun.get(key).unwrap_or(&absent),
        );
        if r != c {
            problems.push(format!("runc and crun differ: {key}: runc {r}, crun {c}"));
            continue;
        }
        if n == r {
            continue;
        }
        // The table's fields are the same for the process as root and as uid 1000.
        let field = ["root: ", "uid 1000: "]
            .iter()
            .find_map(|who| key.strip_prefix(who))
            .unwrap_or(key);
        match DIFFERENCES.iter().find(|d| d.0 == field) {
            Some(d) if d.1 == r && d.2 == n => {
                seen.insert(d.0);
            }
            _ => problems.push(format!("{key}: runc/crun {r:?}, nsbox {n:?}")),
        }
    }
    let docs = include_str!("../../docs/runtime.md");
    for d in DIFFERENCES {
        let row = format!("| `{}` | `{}` | `{}` | {} |", d.0, d.1, d.2, d.3);
        if !docs.contains(&row) {
            problems.push(format!("docs/runtime.md lacks the row {row}"));
        }
        if !seen.contains(d.0) {
            problems.push(format!(
                "documented but not observed: {} ({} vs {})",
                d.0, d.1, d.2
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "differences from runc and crun that DIFFERENCES does not list (or rows it lists that no longer hold):\n{}",
        problems.join("\n")
    );
}
