//! Root tests against the real cgroups of the machine running them (hybrid on the dev host, pure
//! v2 in `shared/tools/vm-run`). They SKIP loudly without root, and fail instead when
//! `NSBOX_TEST_REQUIRE_ROOT=1`. Every cgroup they make is `nsbox-t<pid>-<name>` and is removed,
//! which each test checks with `find /sys/fs/cgroup -maxdepth 4`.
//!
//! Joining: on v1 a test thread calls `join_self` (a `tasks` write moves only the calling thread,
//! exactly what the single-threaded sandbox child does) and spawns the helper process from that
//! thread, so the helper starts inside; the thread then exits and leaves the cgroup. On v2 the
//! test writes the helper's pid to `cgroup.procs` (the real code uses clone3 with
//! `clone_into_fd`, which needs `unsafe` that lives in src/sys, not here).
//!
//! The helper is this test binary again, running `helper_process` with `NSBOX_CGROUP_HELPER`
//! set; it waits for a line on stdin before acting so the test can put it in the cgroup first.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cgroup::{
    find_leftovers, join_self, remove_leftover, CgroupError, CgroupLayout, CgroupLimits,
    CgroupVersion, Controller, Placement, SandboxCgroup,
};

const MIB: u64 = 1024 * 1024;
const HELPER_ENV: &str = "NSBOX_CGROUP_HELPER";
const HELPER_TEST: &str = "cgroup::tests::root::helper_process";

/// `Some(layout)` when the test can run: root, and memory/pids/cpu all usable.
fn setup(test: &str) -> Option<CgroupLayout> {
    let require = std::env::var("NSBOX_TEST_REQUIRE_ROOT").as_deref() == Ok("1");
    let skip = |why: String| {
        assert!(
            !require,
            "{test}: {why}, and NSBOX_TEST_REQUIRE_ROOT=1 forbids skipping"
        );
        // Straight to fd 2, not eprintln!: the harness captures the macros' output of passing
        // tests, and a skip must be seen.
        let _ = writeln!(
            std::io::stderr(),
            "SKIP {test}: {why} (set NSBOX_TEST_REQUIRE_ROOT=1 to make this a failure)"
        );
        None
    };
    if !rustix::process::geteuid().is_root() {
        return skip("needs root".to_string());
    }
    let layout = match CgroupLayout::detect() {
        Ok(l) => l,
        Err(e) => return skip(format!("no usable cgroups: {e}")),
    };
    for c in Controller::ALL {
        match layout.placement(c) {
            Placement::V1 { .. } | Placement::V2 { enabled: true, .. } => {}
            other => return skip(format!("{c} controller not usable here: {other:?}")),
        }
    }
    Some(layout)
}

fn test_id(name: &str) -> String {
    format!("t{}-{name}", std::process::id())
}

/// The equivalent of `find /sys/fs/cgroup -maxdepth 4 -name nsbox-<id>` must print nothing.
fn assert_nothing_left(id: &str) {
    let out = Command::new("find")
        .args(["/sys/fs/cgroup", "-maxdepth", "4", "-name"])
        .arg(format!("nsbox-{id}"))
        .output()
        .expect("run find");
    let found = String::from_utf8_lossy(&out.stdout);
    assert!(found.trim().is_empty(), "left behind:\n{found}");
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .trim()
        .to_string()
}

fn dir_of(cg: &SandboxCgroup, layout: &CgroupLayout, c: Controller) -> PathBuf {
    let h = layout.hierarchy_of(c).expect("placed");
    cg.paths()
        .into_iter()
        .find(|p| p.parent() == Some(h.path.as_path()))
        .expect("dir for controller")
}

/// Kills and reaps the helper if a test fails half-way, so the cgroup can still be removed.
struct Helper {
    child: Child,
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Helper {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Let the helper start its work.
    fn go(&mut self) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        stdin.write_all(b"go\n").expect("write gate");
        stdin.flush().expect("flush");
    }

    /// Wait for the helper to exit; its stdout and status.
    fn finish(mut self, limit: Duration) -> (String, std::process::ExitStatus) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                let mut out = String::new();
                if let Some(mut s) = self.child.stdout.take() {
                    s.read_to_string(&mut out).expect("read helper output");
                }
                return (out, status);
            }
            assert!(
                start.elapsed() < limit,
                "helper still running after {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn helper_command(mode: &str) -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("current_exe"));
    cmd.args(["--exact", HELPER_TEST, "--nocapture", "--test-threads=1"])
        .env(HELPER_ENV, mode)
        .env_remove("NSBOX_TEST_REQUIRE_ROOT")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    cmd
}

/// Start the helper inside the sandbox cgroup, the way the real code will: v1 via `join_self`
/// from a thread, v2 via `cgroup.procs` (standing in for CLONE_INTO_CGROUP).
fn spawn_in(cg: &SandboxCgroup, mode: &str) -> Helper {
    let helper = if cg.self_join_fds().is_empty() {
        Helper {
            child: helper_command(mode).spawn().expect("spawn helper"),
        }
    } else {
        let (helper, tid) = std::thread::scope(|s| {
            s.spawn(|| {
                join_self(cg.self_join_fds()).expect("join_self");
                let tid = rustix::thread::gettid().as_raw_nonzero().get();
                let helper = Helper {
                    child: helper_command(mode).spawn().expect("spawn helper"),
                };
                (helper, tid)
            })
            .join()
            .expect("join thread")
        });
        // The joining thread has exited; wait until the kernel has taken it off the tasks lists
        // so the helper is alone in the cgroups (it must not be an OOM candidate or count as a
        // pid).
        wait_until(Duration::from_secs(2), || {
            cg.paths().iter().all(|p| {
                let tasks = std::fs::read_to_string(p.join("tasks")).unwrap_or_default();
                !tasks.lines().any(|l| l.trim() == tid.to_string())
            })
        });
        helper
    };
    if let Some(v2) = cg
        .paths()
        .into_iter()
        .find(|p| std::fs::metadata(p.join("cgroup.events")).is_ok())
    {
        std::fs::write(v2.join("cgroup.procs"), helper.pid().to_string()).expect("cgroup.procs");
    }
    // The helper must be inside before it is told to go.
    let own = std::fs::read_to_string(format!("/proc/{}/cgroup", helper.pid())).expect("cgroup");
    assert!(own.contains(&format!("/nsbox-{}", cg.id())), "{own}");
    helper
}

fn wait_until(limit: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(
            start.elapsed() < limit,
            "condition not reached in {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Not a test of its own: the helper process for the tests below. Does nothing unless
/// `NSBOX_CGROUP_HELPER` is set.
#[test]
fn helper_process() {
    let Ok(mode) = std::env::var(HELPER_ENV) else {
        return;
    };
    if let Some(spec) = mode.strip_prefix("join-fds:") {
        join_through_parent_fds(spec);
    }
    let mut gate = String::new();
    BufReader::new(std::io::stdin())
        .read_line(&mut gate)
        .expect("gate");
    match mode.as_str() {
        // Start `sleep` children until the kernel refuses; report how many and why.
        "forkbomb" => {
            let mut children = Vec::new();
            let errno = loop {
                match Command::new("sleep").arg("30").stdin(Stdio::null()).spawn() {
                    Ok(c) => children.push(c),
                    Err(e) => break e.raw_os_error().unwrap_or(-1),
                }
                if children.len() > 10_000 {
                    break 0;
                }
            };
            let threads = std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count());
            println!(
                "HELPER spawned={} threads={threads} errno={errno}",
                children.len()
            );
            for mut c in children {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        // Allocate and touch memory until killed; 1 GiB means the limit did not hold.
        "alloc" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            for _ in 0..1024 {
                hoard.push(vec![1u8; MIB as usize]);
            }
            println!("HELPER survived {} MiB", hoard.len());
        }
        // Stay until killed.
        "sleep" => std::thread::sleep(Duration::from_secs(60)),
        // Already joined above; the gate only says the test has looked.
        m if m.starts_with("join-fds:") => {}
        other => panic!("unknown helper mode {other}"),
    }
}

/// Helper mode `join-fds:<parent pid>:<fd>,<fd>,...`: take the parent's v1 `tasks` fds (the
/// same open files, opened by the parent as root) with pidfd_getfd, as a cloned sandbox child
/// would have inherited them, join through them and report which thread joined.
fn join_through_parent_fds(spec: &str) {
    let (ppid, fds) = spec.split_once(':').expect("spec");
    let ppid = rustix::process::Pid::from_raw(ppid.parse().expect("ppid")).expect("pid");
    let pidfd = rustix::process::pidfd_open(ppid, rustix::process::PidfdFlags::empty())
        .expect("pidfd_open");
    let fds: Vec<_> = fds
        .split(',')
        .map(|n| {
            rustix::process::pidfd_getfd(
                &pidfd,
                n.parse().expect("fd"),
                rustix::process::PidfdGetfdFlags::empty(),
            )
            .expect("pidfd_getfd")
        })
        .collect();
    join_self(&fds).expect("join_self");
    println!(
        "HELPER joined tid={}",
        rustix::thread::gettid().as_raw_nonzero()
    );
}

#[test]
fn root_child_process_joins_v1_through_the_fds_create_opened() {
    let Some(layout) = setup("root_child_process_joins_v1_through_the_fds_create_opened") else {
        return;
    };
    let id = test_id("fdjoin");
    let cg = SandboxCgroup::create(&layout, &id, &CgroupLimits::default()).expect("create");
    if cg.self_join_fds().is_empty() {
        eprintln!("no v1 hierarchy on this host: nothing joins through tasks fds");
        return;
    }
    use std::os::fd::AsRawFd;
    let fds: Vec<String> = cg
        .self_join_fds()
        .iter()
        .map(|fd| fd.as_raw_fd().to_string())
        .collect();
    let spec = format!("join-fds:{}:{}", std::process::id(), fds.join(","));
    let mut helper = Helper {
        child: helper_command(&spec).spawn().expect("spawn helper"),
    };
    // Kept open until the helper exits, so its last lines do not hit a closed pipe.
    let mut reader = BufReader::new(helper.child.stdout.take().expect("stdout"));
    let tid = reader
        .by_ref()
        .lines()
        .map_while(Result::ok)
        .find_map(|l| {
            l.find("HELPER joined tid=")
                .map(|i| l[i + "HELPER joined tid=".len()..].trim().to_string())
        })
        .expect("helper reports its join");
    let text = std::fs::read_to_string(format!("/proc/{}/task/{tid}/cgroup", helper.pid()))
        .expect("task cgroup");
    for c in Controller::ALL {
        if layout.hierarchy_of(c).expect("placed").version != CgroupVersion::V1 {
            continue;
        }
        let line = text
            .lines()
            .find(|l| {
                l.split(':')
                    .nth(1)
                    .is_some_and(|ctl| ctl.split(',').any(|n| n == c.name()))
            })
            .unwrap_or_else(|| panic!("no {c} line in\n{text}"));
        assert!(line.ends_with(&format!("/nsbox-{id}")), "{c}: {line}");
    }
    helper.go();
    let (_, status) = helper.finish(Duration::from_secs(60));
    assert!(status.success(), "{status:?}");
    drop(reader);
    cg.remove().expect("remove");
    assert_nothing_left(&id);
}

#[test]
fn root_create_writes_limits_the_kernel_reports_back() {
    let Some(layout) = setup("root_create_writes_limits_the_kernel_reports_back") else {
        return;
    };
    let id = test_id("limits");
    let limits = CgroupLimits {
        memory_bytes: Some(64 * MIB),
        cpu_millis: Some(500),
        pids: Some(16),
    };
    let cg = SandboxCgroup::create(&layout, &id, &limits).expect("create");
    eprintln!(
        "layout:\n{layout}paths: {:?}\nwarnings: {:?}",
        cg.paths(),
        cg.warnings()
    );

    let mem = dir_of(&cg, &layout, Controller::Memory);
    let pids = dir_of(&cg, &layout, Controller::Pids);
    let cpu = dir_of(&cg, &layout, Controller::Cpu);
    match layout
        .hierarchy_of(Controller::Memory)
        .expect("memory")
        .version
    {
        CgroupVersion::V2 => {
            assert_eq!(read(&mem.join("memory.max")), "67108864");
            if mem.join("memory.swap.max").exists() {
                assert_eq!(read(&mem.join("memory.swap.max")), "0");
            }
            assert_eq!(read(&mem.join("memory.oom.group")), "1");
        }
        CgroupVersion::V1 => {
            assert_eq!(read(&mem.join("memory.limit_in_bytes")), "67108864");
            if mem.join("memory.memsw.limit_in_bytes").exists() {
                assert_eq!(read(&mem.join("memory.memsw.limit_in_bytes")), "67108864");
            }
        }
    }
    assert_eq!(read(&pids.join("pids.max")), "16");
    match layout.hierarchy_of(Controller::Cpu).expect("cpu").version {
        CgroupVersion::V2 => assert_eq!(read(&cpu.join("cpu.max")), "50000 100000"),
        CgroupVersion::V1 => {
            assert_eq!(read(&cpu.join("cpu.cfs_period_us")), "100000");
            assert_eq!(read(&cpu.join("cpu.cfs_quota_us")), "50000");
        }
    }
    let stats = cg.stats().expect("stats");
    assert_eq!(stats.pids_current, Some(0));
    assert_eq!(cg.oom_kills().expect("oom_kills"), 0);

    let paths = cg.paths();
    cg.remove().expect("remove");
    assert!(paths.iter().all(|p| !p.exists()));
    assert_nothing_left(&id);
}

#[test]
fn root_joined_process_is_in_every_sandbox_cgroup() {
    let Some(layout) = setup("root_joined_process_is_in_every_sandbox_cgroup") else {
        return;
    };
    let id = test_id("join");
    let cg = SandboxCgroup::create(&layout, &id, &CgroupLimits::default()).expect("create");

    // The fds match the layout: a v2 directory fd iff a controller is on v2, and one tasks
    // fd per v1 directory.
    let v1_dirs = cg
        .paths()
        .iter()
        .filter(|p| !p.join("cgroup.events").exists())
        .count();
    assert_eq!(cg.self_join_fds().len(), v1_dirs);
    match layout.v2().filter(|_| v1_dirs < cg.paths().len()) {
        Some(v2) => {
            use std::os::unix::fs::MetadataExt;
            let fd = cg.clone_into_fd().expect("v2 fd");
            let st = rustix::fs::fstat(fd).expect("fstat");
            let dir = v2.path.join(format!("nsbox-{id}"));
            let meta = std::fs::metadata(&dir).expect("stat v2 dir");
            assert_eq!(
                (st.st_dev, st.st_ino),
                (meta.dev(), meta.ino()),
                "fd is {}",
                dir.display()
            );
            let fl = rustix::fs::fcntl_getfl(fd).expect("getfl");
            assert!(!fl.contains(rustix::fs::OFlags::PATH));
            assert!(fl.contains(rustix::fs::OFlags::DIRECTORY));
            assert!(
                !fl.contains(rustix::fs::OFlags::WRONLY) && !fl.contains(rustix::fs::OFlags::RDWR)
            );
            assert!(rustix::io::fcntl_getfd(fd)
                .expect("getfd")
                .contains(rustix::io::FdFlags::CLOEXEC));
        }
        None => assert!(cg.clone_into_fd().is_none()),
    }

    let helper = spawn_in(&cg, "sleep");
    let text = std::fs::read_to_string(format!("/proc/{}/cgroup", helper.pid())).expect("cgroup");
    let want = format!("/nsbox-{id}");
    for c in Controller::ALL {
        let line = match layout.hierarchy_of(c).expect("placed").version {
            CgroupVersion::V2 => text.lines().find(|l| l.starts_with("0::")),
            CgroupVersion::V1 => text.lines().find(|l| {
                l.split(':')
                    .nth(1)
                    .is_some_and(|ctl| ctl.split(',').any(|n| n == c.name()))
            }),
        };
        let line = line.unwrap_or_else(|| panic!("no {c} line in\n{text}"));
        assert!(line.ends_with(&want), "{c}: {line}");
    }
    assert_eq!(
        cg.stats().expect("stats").pids_current,
        Some(
            std::fs::read_dir(format!("/proc/{}/task", helper.pid()))
                .expect("task")
                .count() as u64
        )
    );

    // A running sandbox is listed, not empty, and prune refuses it.
    let mine: Vec<_> = find_leftovers(&layout)
        .expect("find")
        .into_iter()
        .filter(|l| l.id == id)
        .collect();
    assert_eq!(mine.len(), cg.paths().len());
    let busy = mine.iter().find(|l| !l.empty).expect("a non-empty one");
    assert!(matches!(
        remove_leftover(busy),
        Err(CgroupError::LeftoverBusy { .. })
    ));

    drop(helper);
    cg.remove().expect("remove");
    assert_nothing_left(&id);
}

#[test]
fn root_pids_limit_stops_a_fork_bomb() {
    let Some(layout) = setup("root_pids_limit_stops_a_fork_bomb") else {
        return;
    };
    let id = test_id("pids");
    let limits = CgroupLimits {
        pids: Some(8),
        ..CgroupLimits::default()
    };
    let cg = SandboxCgroup::create(&layout, &id, &limits).expect("create");
    let mut helper = spawn_in(&cg, "forkbomb");
    helper.go();
    let (out, status) = helper.finish(Duration::from_secs(120));
    assert!(status.success(), "{status:?}\n{out}");
    let line = out
        .lines()
        .find_map(|l| l.find("HELPER ").map(|i| &l[i..]))
        .unwrap_or_else(|| panic!("no report in\n{out}"));
    let field = |k: &str| -> i64 {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(&format!("{k}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{k} in {line}"))
    };
    assert_eq!(field("errno"), i64::from(libc::EAGAIN), "{line}");
    // Every task counts: the helper's own threads plus the sleeps it started.
    assert_eq!(field("spawned") + field("threads"), 8, "{line}");
    cg.remove().expect("remove");
    assert_nothing_left(&id);
}

#[test]
fn root_memory_limit_oom_kills_and_is_counted() {
    let Some(layout) = setup("root_memory_limit_oom_kills_and_is_counted") else {
        return;
    };
    let id = test_id("oom");
    let limits = CgroupLimits {
        memory_bytes: Some(48 * MIB),
        ..CgroupLimits::default()
    };
    let cg = SandboxCgroup::create(&layout, &id, &limits).expect("create");
    let mut helper = spawn_in(&cg, "alloc");
    helper.go();
    let (out, status) = helper.finish(Duration::from_secs(120));
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}\n{out}");
    assert!(cg.oom_kills().expect("oom_kills") >= 1);
    let stats = cg.stats().expect("stats");
    let peak = stats.memory_peak_bytes.expect("peak");
    assert!(peak > 40 * MIB && peak <= 48 * MIB, "peak {peak}");
    cg.remove().expect("remove");
    assert_nothing_left(&id);
}

#[test]
fn root_leftover_of_a_killed_supervisor_is_found_and_removed() {
    let Some(layout) = setup("root_leftover_of_a_killed_supervisor_is_found_and_removed") else {
        return;
    };
    let id = test_id("left");
    let cg = SandboxCgroup::create(&layout, &id, &CgroupLimits::default()).expect("create");
    let paths = cg.paths();
    // As if the supervisor had been SIGKILLed: nothing runs its cleanup.
    std::mem::forget(cg);
    let mine: Vec<_> = find_leftovers(&layout)
        .expect("find")
        .into_iter()
        .filter(|l| l.id == id)
        .collect();
    assert_eq!(mine.len(), paths.len());
    for l in &mine {
        assert!(l.empty, "{l:?}");
        assert!(l.age.expect("age") < Duration::from_secs(60), "{l:?}");
        remove_leftover(l).expect("remove leftover");
    }
    assert_nothing_left(&id);
}
