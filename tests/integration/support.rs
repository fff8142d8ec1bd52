//! Helpers shared by the integration tests: running the real nsbox binary, the probe, root
//! checks, and leftovers checks.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// Tests that need root call this first. Without root they print a loud SKIP and return false;
/// with NSBOX_TEST_REQUIRE_ROOT=1 (as in CI) they fail instead.
pub fn have_root(test: &str) -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    if std::env::var("NSBOX_TEST_REQUIRE_ROOT").as_deref() == Ok("1") {
        panic!(
            "{} needs root, and NSBOX_TEST_REQUIRE_ROOT=1 forbids skipping it",
            test_name(test)
        );
    }
    skip(
        test,
        "needs root (set NSBOX_TEST_REQUIRE_ROOT=1 to make this a failure)",
    );
    false
}

/// The running test's name: libtest names each test's thread after it ("module::test").
/// `fallback` (say, `module_path!()`) where the thread has no name.
pub fn test_name(fallback: &str) -> String {
    std::thread::current()
        .name()
        .filter(|n| *n != "main")
        .map_or_else(|| fallback.to_string(), str::to_string)
}

/// Says loudly that the running test is skipped, and why: "SKIP module::test: why". Written
/// straight to file descriptor 2, because the test harness captures `eprintln!` and shows it
/// only for failing tests — a skipped test passes, and its SKIP line would vanish.
pub fn skip(fallback: &str, why: &str) {
    let line = format!("SKIP {}: {why}\n", test_name(fallback));
    let _ = rustix::io::write(rustix::stdio::stderr(), line.as_bytes());
}

/// Returns early from a test that needs root (see [`have_root`]).
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::support::have_root(module_path!()) {
            return;
        }
    };
}

pub fn nsbox_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_nsbox"))
}

/// The directory holding the probe (built by `cargo test` as an example).
pub fn probe_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/integration-HASH → target/<profile>/examples
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("examples"))
        .expect("target directory layout");
    assert!(
        dir.join("probe").exists(),
        "the probe is not built: run the suite with `cargo test` (which builds examples), or `cargo build --example probe` first"
    );
    dir
}

/// Where the probe appears inside a sandbox.
pub const PROBE: &str = "/opt/nsbox-probe/probe";

/// `--mount` arguments that make the probe available inside.
pub fn probe_mount() -> Vec<String> {
    vec![
        "--mount".into(),
        format!("{}:/opt/nsbox-probe", probe_dir().display()),
    ]
}

/// The result of one nsbox invocation.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// Runs `nsbox ARGS...` to completion with stdin from /dev/null.
pub fn nsbox(args: &[&str]) -> Run {
    nsbox_cmd(args)
        .stdin(Stdio::null())
        .output()
        .expect("run nsbox")
        .into()
}

pub fn nsbox_cmd(args: &[&str]) -> Command {
    let mut cmd = Command::new(nsbox_bin());
    cmd.args(args);
    cmd.env_remove("NSBOX_LOG");
    // Never the host's own sessions: tests that prune must not touch them.
    cmd.env("NSBOX_RUN_DIR", test_run_dir());
    // Never the host's config, and never a pull a test did not ask for: `--image` of a name
    // the store lacks would otherwise ask Docker Hub (a DNS query leaving the machine).
    // Tests of pulls and of the config pass --config, which takes precedence.
    cmd.env("NSBOX_CONFIG", test_config());
    cmd
}

/// The config file every nsbox run of the tests reads unless it passes `--config`.
pub fn test_config() -> &'static std::path::Path {
    static FILE: std::sync::OnceLock<tempfile::TempPath> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        let file = tempfile::Builder::new()
            .prefix("nsbox-test-config-")
            .suffix(".toml")
            .tempfile()
            .expect("a temporary config file");
        std::fs::write(file.path(), "[pull]\npolicy = \"never\"\n").expect("write the test config");
        // Readable by the tests that run nsbox as another user.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(0o644))
            .expect("chmod the test config");
        file.into_temp_path()
    })
}

/// The session store of this test process (tests that make sessions use their own).
pub fn test_run_dir() -> &'static std::path::Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        tempfile::Builder::new()
            .prefix("nsbox-test-run-")
            .tempdir()
            .expect("a temporary run directory")
    })
    .path()
}

/// Tests that run `nsbox prune` (which removes every unused nsbox cgroup on the host) or
/// check that a leftover survives a dry run hold this, so they never race each other.
pub fn prune_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs `nsbox exec ARGS...`.
pub fn exec(args: &[&str]) -> Run {
    let mut full = vec!["exec"];
    full.extend_from_slice(args);
    nsbox(&full)
}

/// Runs the probe inside a sandbox with extra exec flags; returns its JSON report.
pub fn probe(mode: &str, flags: &[&str]) -> (Run, serde_json::Value) {
    let mount = probe_mount();
    let mut args: Vec<&str> = vec!["exec"];
    args.extend(mount.iter().map(String::as_str));
    args.extend_from_slice(flags);
    args.extend_from_slice(&["--", PROBE, mode]);
    let run = nsbox(&args);
    let value = serde_json::from_str(run.stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "probe output is not JSON ({e}): code {} stdout {:?} stderr {:?}",
            run.code, run.stdout, run.stderr
        )
    });
    (run, value)
}

/// Parses `--json` output into events.
pub fn events(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON event ({e}): {l:?}"))
        })
        .collect()
}

/// The sandbox id from a `--json` start event.
pub fn sandbox_id(events: &[serde_json::Value]) -> String {
    events
        .iter()
        .find(|e| e["type"] == "start")
        .and_then(|e| e["id"].as_str())
        .expect("a start event with an id")
        .to_string()
}

/// Host cgroup directories that carry this sandbox id (must be none once nsbox exited).
pub fn leftover_cgroups(id: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![(PathBuf::from("/sys/fs/cgroup"), 0)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            if !e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                continue;
            }
            if e.file_name().to_string_lossy().contains(id) {
                found.push(path.clone());
            }
            if depth < 3 {
                stack.push((path, depth + 1));
            }
        }
    }
    found
}

/// The cgroup directories holding sandbox `id`'s limits and counters: [`leftover_cgroups`]'
/// ones, each preceded by its cgroup v2 workload leaf (`sandbox`) where it has one (the cpu
/// limit is on `nsbox-<id>`, memory and pids on the leaf).
pub fn sandbox_cgroup_dirs(id: &str) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for dir in leftover_cgroups(id) {
        let leaf = dir.join("sandbox");
        if leaf.is_dir() {
            dirs.push(leaf);
        }
        dirs.push(dir);
    }
    dirs
}

/// Host processes whose command line starts with `needle`.
/// Runs `cmd` with `input` on its stdin (then closed); its output and status.
pub fn run_with_input(mut cmd: Command, input: &[u8]) -> Run {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap().into()
}

pub fn host_processes_matching(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.starts_with(needle) {
                pids.push(pid);
            }
        }
    }
    pids
}

/// Waits up to `secs` for `f` to hold.
pub fn eventually(secs: f64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs_f64(secs);
    while std::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    f()
}

/// Starts `nsbox exec --json ARGS` in the background; returns the child and the sandbox id
/// once the start event arrived. The rest of stdout is drained so the sandbox never blocks.
pub fn start_json(args: &[&str]) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut full = vec!["exec", "--json"];
    full.extend_from_slice(args);
    let mut child = nsbox_cmd(&full)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start nsbox");
    let mut reader = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = String::new();
    reader.read_line(&mut first).expect("start event");
    let id = sandbox_id(&events(&first));
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut reader, &mut sink);
    });
    (child, id)
}

/// A test's own image store and config file (empty unless the test writes one) in a
/// temporary directory, and docker's config directory (`DOCKER_CONFIG`): nothing of the
/// host's store, config or credentials is read.
pub struct StoreCtx {
    tmp: tempfile::TempDir,
}

impl StoreCtx {
    pub fn new() -> StoreCtx {
        let ctx = StoreCtx {
            tmp: tempfile::tempdir().unwrap(),
        };
        std::fs::write(ctx.config(), "").unwrap();
        std::fs::create_dir_all(ctx.path("docker")).unwrap();
        ctx
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    pub fn store(&self) -> PathBuf {
        self.path("store")
    }

    pub fn config(&self) -> PathBuf {
        self.path("config.toml")
    }

    /// `nsbox --state-root STORE --config CONFIG ARGS...`, not started.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let store = self.store();
        let config = self.config();
        let mut full = vec![
            "--state-root",
            store.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ];
        full.extend_from_slice(args);
        let mut cmd = nsbox_cmd(&full);
        cmd.env("DOCKER_CONFIG", self.path("docker"));
        cmd
    }

    /// `nsbox --state-root STORE --config CONFIG ARGS...` with `stdin` as its input.
    pub fn run_stdin(&self, args: &[&str], stdin: &str) -> Run {
        run_with_input(self.cmd(args), stdin.as_bytes())
    }

    pub fn run(&self, args: &[&str]) -> Run {
        self.run_stdin(args, "")
    }

    /// Runs nsbox, which must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let run = self.run(args);
        assert_eq!(run.code, 0, "nsbox {args:?} failed: {}", run.stderr);
        run.stdout
    }

    /// Runs nsbox, which must fail with exit code 125 and say each of `needles`.
    pub fn refused(&self, args: &[&str], needles: &[&str]) -> Run {
        self.refused_with(nsbox::exit::NSBOX_FAILED, args, needles)
    }

    /// Runs nsbox, which must fail with exit code `code` and say each of `needles`.
    pub fn refused_with(&self, code: i32, args: &[&str], needles: &[&str]) -> Run {
        let run = self.run(args);
        assert_eq!(run.code, code, "nsbox {args:?}: {}", run.stderr);
        for needle in needles {
            assert!(run.stderr.contains(needle), "{needle:?}: {}", run.stderr);
        }
        run
    }

    /// `nsbox images --json`.
    pub fn images(&self) -> Vec<serde_json::Value> {
        let out = self.ok(&["images", "--json"]);
        serde_json::from_str::<serde_json::Value>(&out)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    /// No image, layer, blob or leftover: what a failed pull into an empty store leaves.
    pub fn assert_store_empty(&self) {
        assert!(self.images().is_empty(), "no image was added");
        for dir in ["layers", "tmp", "blobs/sha256"] {
            let entries: Vec<_> = std::fs::read_dir(self.store().join(dir))
                .map(|d| d.flatten().map(|e| e.file_name()).collect())
                .unwrap_or_default();
            assert!(entries.is_empty(), "{dir} is not empty: {entries:?}");
        }
    }

    /// How many entries the store's directory `dir` has.
    pub fn entries(&self, dir: &str) -> usize {
        std::fs::read_dir(self.store().join(dir))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// The digest of the image `name` names, if one does.
    pub fn digest_of(&self, name: &str) -> Option<String> {
        self.images()
            .into_iter()
            .find(|i| {
                i["names"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|n| n.as_str() == Some(name))
            })
            .map(|i| i["digest"].as_str().unwrap().to_string())
    }
}

impl Default for StoreCtx {
    fn default() -> Self {
        StoreCtx::new()
    }
}

/// Runs `cmd`, which must succeed; its stdout.
pub fn checked_output(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A small deterministic generator for tests that pick random moments (seed it and print the
/// seed, so a failure can be replayed).
pub struct Lcg(pub u64);

impl Lcg {
    pub fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

/// A run directory of a test's own (`NSBOX_RUN_DIR`), with nsbox run in it; its sessions
/// are removed when it goes, also when the test failed half-way: a session left running would
/// outlive its directory and fail the leftover check of every later run.
pub struct RunDir(tempfile::TempDir);

impl RunDir {
    pub fn new() -> RunDir {
        RunDir(
            tempfile::Builder::new()
                .prefix("nsbox-run-")
                .tempdir()
                .unwrap(),
        )
    }

    pub fn path(&self) -> &std::path::Path {
        self.0.path()
    }

    /// `nsbox ARGS` in this run directory, not started.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = nsbox_cmd(args);
        cmd.env("NSBOX_RUN_DIR", self.path());
        cmd
    }

    /// Runs `nsbox ARGS` here with no input.
    pub fn run(&self, args: &[&str]) -> Run {
        self.cmd(args)
            .stdin(Stdio::null())
            .output()
            .expect("run nsbox")
            .into()
    }

    /// Runs `nsbox ARGS` here, which must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let r = self.run(args);
        assert_eq!(r.code, 0, "nsbox {args:?}: {r:?}");
        r.stdout
    }

    /// Every session id this directory ever held state for.
    pub fn ids(&self) -> std::collections::BTreeSet<String> {
        std::fs::read_dir(self.path().join("sessions"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }
}

impl Default for RunDir {
    fn default() -> Self {
        RunDir::new()
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let mut ids = self.ids();
        if let Ok(listed) = self.cmd(&["ps", "-q"]).stdin(Stdio::null()).output() {
            ids.extend(
                String::from_utf8_lossy(&listed.stdout)
                    .split_whitespace()
                    .map(str::to_string),
            );
        }
        for id in ids {
            let _ = self.run(&["rm", "-f", &id]);
        }
    }
}
