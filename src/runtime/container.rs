//! One container's life under `--root`: `<root>/<id>/` holds `state.json` (what `create`
//! decided), `start.fifo` (the waiter blocks on it until `start`), `started` (a marker) and
//! `run/` (the session store of the container's one session). The status is never stored: it
//! is read from the waiter's process (alive and started: running; alive: created; gone:
//! stopped), so a killed engine or shim can never leave a stale status behind.
//!
//! With a terminal (`process.terminal`), the process must exist at `create`, since its pty
//! master goes to the engine's console socket before `create` returns: the waiter then runs
//! it at once, gated on the start FIFO (the command waits inside the sandbox, before its exec,
//! until `start` writes), hands the master over and reports that to `create` on a pipe.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use rustix::fs::{Mode, OFlags};
use serde::{Deserialize, Serialize};

use super::console::ConsoleSocket;
use super::{bundle, Log, RuntimeError};
use crate::profile::Profile;
use crate::session::client::{ExecAttach, SessionClient, SessionExec, TerminalHandoff};
use crate::session::daemon;
use crate::session::state::SessionStore;
use crate::session::SessionError;
use crate::spec::SandboxSpec;
use crate::sys;

/// What `create` recorded (`state.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub bundle: PathBuf,
    /// The waiter: the pid the engine knows the container by.
    pub pid: i32,
    /// Its start time (clock ticks since boot), so a reused pid is not mistaken for it.
    pub pid_start: u64,
    /// The nsbox id of the container's session (its sandbox and cgroup name).
    pub session: String,
    /// The sandbox's init, in the host's pid namespace.
    pub init_pid: i32,
    pub created: u64,
    pub annotations: BTreeMap<String, String>,
    /// The sandbox's cgroup directories (the waiter is in them too, for the shim's stats and
    /// OOM events); `update` writes there.
    #[serde(default)]
    pub cgroups: Vec<PathBuf>,
}

/// A container's status, as the runtime spec names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Stopped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Stopped => "stopped",
        }
    }
}

/// `state`'s answer (the runtime spec's state, plus runc's `created`, `rootfs` and `owner`).
#[derive(Debug, Serialize)]
pub struct State {
    #[serde(rename = "ociVersion")]
    pub oci_version: &'static str,
    pub id: String,
    pub status: &'static str,
    pub pid: i32,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: String,
    /// runc's and crun's key (tools read their state with one shape): runc's value for a
    /// container of a runtime run as root, "" (crun says "root"); nsbox has no rootless mode.
    pub owner: &'static str,
    pub annotations: BTreeMap<String, String>,
}

fn check_id(id: &str) -> Result<(), RuntimeError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(RuntimeError::BadId(id.into()))
    }
}

/// The longest id kept as its own directory name. The session's control socket lives under
/// the container's directory, and a unix socket's path must fit in 108 bytes: podman's ids
/// are 64 hex digits, which under `/run/nsbox-runc` would not.
const DIR_NAME_MAX: usize = 32;

fn dir(root: &Path, id: &str) -> Result<PathBuf, RuntimeError> {
    check_id(id)?;
    if id.len() <= DIR_NAME_MAX {
        return Ok(root.join(id));
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(id.as_bytes());
    let name: String = digest
        .iter()
        .take(DIR_NAME_MAX / 2)
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(root.join(name))
}

fn store(dir: &Path) -> SessionStore {
    SessionStore::new(dir.join("run"))
}

fn read_record(root: &Path, id: &str) -> Result<(PathBuf, Record), RuntimeError> {
    let dir = dir(root, id)?;
    let text = match std::fs::read(dir.join("state.json")) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(RuntimeError::NotFound(id.into()))
        }
        Err(e) => return Err(RuntimeError::io(format!("read {}", dir.display()))(e)),
    };
    let record: Record = serde_json::from_slice(&text).map_err(|e| RuntimeError::Io {
        what: format!("{}/state.json", dir.display()),
        source: std::io::Error::other(e),
    })?;
    // A long id's directory is named by its digest: the record says whose it is.
    if record.id != id {
        return Err(RuntimeError::NotFound(id.into()));
    }
    Ok((dir, record))
}

/// Writes `bytes` to `path` through a temporary file and a rename (readers never see half).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RuntimeError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(RuntimeError::io(format!("write {}", path.display())))
}

/// A process's start time from /proc (None when gone, a zombie, or unreadable).
fn live_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is the state (field 3); the start time is field 22.
    if matches!(fields.first(), Some(&"Z") | Some(&"X")) {
        return None;
    }
    fields.get(19)?.parse().ok()
}

fn status(dir: &Path, record: &Record) -> Status {
    match live_start_time(record.pid) {
        Some(start) if start == record.pid_start => {
            if dir.join("started").exists() {
                Status::Running
            } else {
                Status::Created
            }
        }
        _ => Status::Stopped,
    }
}

/// `create`: builds the sandbox (its init waiting), forks the waiter, writes the pid file;
/// with a terminal, returns once its pty master went to `console_socket`.
pub fn create(
    root: &Path,
    id: &str,
    bundle_dir: &Path,
    pid_file: Option<&Path>,
    console_socket: Option<&Path>,
    systemd_cgroup: bool,
    log: &Log,
) -> Result<(), RuntimeError> {
    let dir = dir(root, id)?;
    let bundle_dir = std::fs::canonicalize(bundle_dir)
        .map_err(RuntimeError::io(format!("bundle {}", bundle_dir.display())))?;
    // Read and check everything before anything is made.
    let oci = bundle::load(&bundle_dir)?;
    let plan = bundle::plan(&oci, &bundle_dir)?;
    let mut profile = Profile::load("default").map_err(|e| RuntimeError::Profile(e.to_string()))?;
    // The spec's env is the process's whole environment (runc's and crun's rule): none of the
    // profile's (its HOME=/sandbox and LANG).
    profile.env.clear();
    let mut spec = SandboxSpec::build(plan.request, &profile, &BTreeMap::new())?;
    spec.cgroup_at = cgroup_at(plan.cgroups_path.as_deref(), systemd_cgroup)?;
    for what in &plan.ignored {
        log.write("warning", &format!("config.json: {what}: not honoured"));
    }
    // runc's rules: a terminal needs the socket (nothing else could take it once `create`
    // returned), and a socket needs a terminal to send.
    let console = match (plan.terminal, console_socket) {
        (true, None) => {
            return Err(RuntimeError::Refused {
                field: "process.terminal".into(),
                reason: "true, but no --console-socket was given: the terminal's pty master has nowhere to go — hint: pass --console-socket PATH (a listening unix socket), or set process.terminal to false".into(),
            })
        }
        (false, Some(path)) => {
            return Err(RuntimeError::TerminalFlags(format!(
                "--console-socket {}: process.terminal is false, so there is no terminal to send — hint: set process.terminal to true, or leave out --console-socket",
                path.display()
            )))
        }
        (true, Some(path)) => Some(ConsoleSocket::connect(path)?),
        (false, None) => None,
    };
    let terminal = console.map(|socket| (socket, plan.console_size));

    std::fs::create_dir_all(root)
        .map_err(RuntimeError::io(format!("create {}", root.display())))?;
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(RuntimeError::Exists(id.into()))
        }
        Err(e) => return Err(RuntimeError::io(format!("create {}", dir.display()))(e)),
    }
    let result = create_in(
        &dir,
        id,
        &bundle_dir,
        &spec,
        Keep {
            sysctls: &plan.sysctls,
            rlimits: &plan.rlimits,
            log,
            annotations: plan.annotations,
        },
        pid_file,
        terminal,
    );
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

/// `linux.cgroupsPath` as nsbox places the sandbox's cgroup: the same path below the root of
/// every hierarchy it uses (an absolute path from the root; a relative one from where nsbox's
/// own cgroups go, which is the same root). The systemd form belongs to `--systemd-cgroup`,
/// which nsbox does not implement.
fn cgroup_at(
    path: Option<&str>,
    systemd_cgroup: bool,
) -> Result<Option<crate::cgroup::CgroupAt>, RuntimeError> {
    let Some(path) = path else {
        return Ok(None);
    };
    if systemd_cgroup {
        return Err(RuntimeError::Refused {
            field: "linux.cgroupsPath".into(),
            reason: format!("{path:?} with --systemd-cgroup: nsbox manages its cgroups on cgroupfs itself, not through systemd units — hint: configure the engine for cgroupfs (containerd: SystemdCgroup = false; podman: --cgroup-manager cgroupfs), or leave cgroupsPath out"),
        });
    }
    crate::cgroup::CgroupAt::new(path)
        .map(Some)
        .map_err(|e| RuntimeError::Refused {
            field: "linux.cgroupsPath".into(),
            reason: format!("{e} — hint: give a path like /nsbox/ID"),
        })
}

/// The sandbox's cgroup directories (as its supervisor made them: the plan is the same for
/// the same spec and host) and, for each, this process's own `cgroup.procs` in that
/// hierarchy: where the waiter goes back to before the sandbox's cgroup is removed.
fn sandbox_cgroups(spec: &SandboxSpec) -> Result<(Vec<PathBuf>, Vec<OwnedFd>), RuntimeError> {
    let layout = crate::cgroup::CgroupLayout::detect()?;
    let limits = crate::cgroup::CgroupLimits {
        memory_bytes: spec.limits.memory.map(crate::units::ByteSize::bytes),
        cpu_millis: spec.limits.cpus.map(|c| c.0),
        pids: spec.limits.pids,
    };
    let dirs =
        crate::cgroup::planned_dirs(&layout, &spec.id, &limits, true, spec.cgroup_at.as_ref())?;
    let mut paths = Vec::new();
    let mut back = Vec::new();
    for (hierarchy, path) in dirs {
        back.push(crate::cgroup::own_cgroup_procs(&hierarchy)?);
        paths.push(path);
    }
    Ok((paths, back))
}

/// What `create` keeps of the bundle besides the sandbox's spec.
struct Keep<'a> {
    /// Written in the sandbox before its process starts.
    sysctls: &'a [(String, String)],
    /// Set on the sandbox's init before the process starts.
    rlimits: &'a [super::rlimit::Planned],
    log: &'a Log,
    /// Returned by `state`.
    annotations: BTreeMap<String, String>,
}

fn create_in(
    dir: &Path,
    id: &str,
    bundle_dir: &Path,
    spec: &SandboxSpec,
    keep: Keep<'_>,
    pid_file: Option<&Path>,
    terminal: Option<(ConsoleSocket, Option<(u16, u16)>)>,
) -> Result<(), RuntimeError> {
    let fifo = dir.join("start.fifo");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        Mode::from_raw_mode(0o600),
        0,
    )
    .map_err(|e| RuntimeError::Io {
        what: format!("create {}", fifo.display()),
        source: std::io::Error::from_raw_os_error(e.raw_os_error()),
    })?;
    let store = store(dir);
    let (cgroups, back) = sandbox_cgroups(spec)?;
    let (session, pending) = daemon::start(spec, None, None, &store)?;
    pending.commit();
    // Before the process exists: it starts with the sysctls the engine asked for.
    let prepared = super::sysctl::write_in(session.init_pid, keep.sysctls)
        .and_then(|()| super::rlimit::set_on(session.init_pid, keep.rlimits, keep.log));
    if let Err(e) = prepared {
        stop_session(&store, &session.id);
        remove_cgroups(&cgroups);
        return Err(e);
    }
    let (console, winsize) = match terminal {
        Some((socket, size)) => (Some(socket), size),
        None => (None, None),
    };
    let exec = SessionExec {
        argv: spec.command.clone(),
        // With a terminal, the engine writes to the pty master; there is no stdin to relay.
        stdin: console.is_none(),
        tty: console.is_some(),
        winsize,
        ..Default::default()
    };
    // Opened here, before `create` returns, so a `start` that follows at once finds a
    // reader. Read-write: the waiter's reads block until `start` writes, never see an EOF.
    let start_fd =
        rustix::fs::open(&fifo, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty()).map_err(|e| {
            RuntimeError::Io {
                what: format!("open {}", fifo.display()),
                source: std::io::Error::from_raw_os_error(e.raw_os_error()),
            }
        });
    let pid = match start_fd
        .and_then(|fd| fork_waiter(fd, &fifo, &store, &session.id, exec, console, back))
    {
        Ok(pid) => pid,
        Err(e) => {
            stop_session(&store, &session.id);
            remove_cgroups(&cgroups);
            return Err(e);
        }
    };
    // The shim reads the cgroup of the pid in the pid file for its stats and OOM events
    // (containerd's runc shim: /proc/PID/cgroup at create), so the waiter joins the sandbox's
    // cgroups before that pid is written. It runs nothing of the workload's and holds no
    // cgroup fd the workload could reach.
    if let Some(e) = cgroups
        .iter()
        .find_map(|d| crate::cgroup::move_process(d, pid).err())
    {
        kill_pid(pid);
        stop_session(&store, &session.id);
        remove_cgroups(&cgroups);
        return Err(e.into());
    }
    let record = Record {
        id: id.into(),
        bundle: bundle_dir.to_path_buf(),
        pid,
        pid_start: live_start_time(pid).unwrap_or(0),
        session: session.id.clone(),
        init_pid: session.init_pid,
        created: session.created,
        annotations: keep.annotations,
        cgroups,
    };
    let written = serde_json::to_vec_pretty(&record)
        .map_err(|e| RuntimeError::io("encode state.json")(std::io::Error::other(e)))
        .and_then(|bytes| write_atomic(&dir.join("state.json"), &bytes))
        .and_then(|()| match pid_file {
            Some(path) => write_atomic(path, pid.to_string().as_bytes()),
            None => Ok(()),
        });
    if let Err(e) = written {
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid).ok_or_else(|| e_pid(pid))?,
            rustix::process::Signal::KILL,
        );
        stop_session(&store, &session.id);
        remove_cgroups(&record.cgroups);
        return Err(e);
    }
    Ok(())
}

fn e_pid(pid: i32) -> RuntimeError {
    RuntimeError::Io {
        what: format!("pid {pid}"),
        source: std::io::Error::other("not a pid"),
    }
}

/// Forks the waiter (see the module docs of [`super`]); returns its pid. With a `console`,
/// returns once the terminal's master was sent there (or the error that kept it from it).
#[allow(unsafe_code)] // the fork; the block says why it is sound
fn fork_waiter(
    start_fd: OwnedFd,
    fifo: &Path,
    store: &SessionStore,
    session: &str,
    exec: SessionExec,
    console: Option<ConsoleSocket>,
    back: Vec<OwnedFd>,
) -> Result<i32, RuntimeError> {
    let handoff = console.map(TerminalReport::new).transpose()?;
    // SAFETY: the runtime is single-threaded (the session's supervisor was forked, no thread
    // was started here), and the child ends through `exit_now`, never returning.
    let pid = unsafe { sys::process::fork() }.map_err(RuntimeError::io("fork the waiter"))?;
    if pid == 0 {
        let _abort = sys::process::AbortOnPanic;
        let code = waiter(
            start_fd,
            fifo,
            store,
            session,
            exec,
            handoff.map(|h| h.into_sender()),
            &back,
        );
        sys::process::exit_now(code);
    }
    drop(start_fd);
    drop(back);
    if let Some(handoff) = handoff {
        if let Err(e) = handoff.wait() {
            kill_pid(pid);
            return Err(e);
        }
    }
    Ok(pid)
}

fn kill_pid(pid: i32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

/// The waiter: waits for `start`, runs the container's process in the session with the
/// streams `create` was given, stops the session, and exits with the process's status. With a
/// terminal, the process runs at once, gated on the start FIFO, and its master goes to the
/// console socket.
fn waiter(
    start_fd: OwnedFd,
    fifo: &Path,
    store: &SessionStore,
    session: &str,
    exec: SessionExec,
    console: Option<TerminalSender>,
    back: &[OwnedFd],
) -> i32 {
    // Out of the caller's process group: a Ctrl-C meant for the engine is not the container's.
    let _ = rustix::process::setsid();
    let code = match console {
        Some(console) => run_with_console(store, session, exec, Some(start_fd), console),
        None => {
            // Blocks until `start` writes.
            let mut go = [0u8; 5];
            let read = std::fs::File::from(start_fd).read_exact(&mut go);
            if read.is_err() || &go != b"start" {
                leave_cgroups(back);
                stop_session(store, session);
                return crate::exit::NSBOX_FAILED;
            }
            run_in_session(store, session, exec)
        }
    };
    // The container ends with its process: whatever else runs in the sandbox goes too. The
    // exit is reported (this process ends) as soon as the supervisor has the stop, as runc's
    // is when its pid 1 ends; the teardown goes on in the supervisor, and `delete` waits for
    // it. The waiter leaves the sandbox's cgroups first: the supervisor removes them, which
    // the kernel refuses while a process is in them.
    leave_cgroups(back);
    if let Ok(client) = SessionClient::connect(store, session) {
        let _ = client.stop_without_waiting(Duration::ZERO, "the container stopped");
    }
    // For `delete` and for callers that are not the waiter's parent (tests, debugging).
    let _ = std::fs::write(fifo.with_file_name("exit"), code.to_string());
    code
}

/// Removes the container's cgroup directories (see [`crate::cgroup::remove_named`]); a failure
/// is logged, since the container is going anyway.
fn remove_cgroups(dirs: &[PathBuf]) {
    if let Err(e) = crate::cgroup::remove_named(Path::new("/"), dirs) {
        tracing::warn!("{e}");
    }
}

/// Moves this process back to the cgroups it came from (`create`'s, the engine's).
fn leave_cgroups(back: &[OwnedFd]) {
    for fd in back {
        // "0": the writing process. A failure leaves the supervisor's removal to retry.
        let _ = rustix::io::write(fd, b"0");
    }
}

/// Runs `exec` in the session with this process's streams; its exit status (128+N for a
/// signal N), or nsbox's own failure code with the reason on stderr.
fn run_in_session(store: &SessionStore, session: &str, exec: SessionExec) -> i32 {
    outcome_code(
        SessionClient::connect(store, session)
            .and_then(|c| c.exec(exec, crate::sandbox::supervisor::now_ns())),
    )
}

/// A session command's exit status, or nsbox's own failure code with the reason on stderr.
fn outcome_code(result: Result<crate::sandbox::supervisor::Outcome, SessionError>) -> i32 {
    match result {
        Ok(outcome) => {
            if let Some(message) = outcome.message() {
                eprintln!("nsbox-runc: {message}");
            }
            outcome.exit_code()
        }
        Err(e) => {
            eprintln!("nsbox-runc: {e}");
            crate::exit::NSBOX_FAILED
        }
    }
}

/// The pipe on which a waiter tells the runtime command that forked it whether the terminal's
/// master reached the console socket: `ok`, or why not, then end of file.
struct TerminalReport {
    read: OwnedFd,
    sender: TerminalSender,
}

/// The waiter's side: the console socket and the write end of the report pipe.
struct TerminalSender {
    socket: ConsoleSocket,
    report: OwnedFd,
}

impl TerminalReport {
    fn new(socket: ConsoleSocket) -> Result<TerminalReport, RuntimeError> {
        let (read, report) =
            rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(|e| {
                RuntimeError::Io {
                    what: "create a pipe".into(),
                    source: std::io::Error::from_raw_os_error(e.raw_os_error()),
                }
            })?;
        Ok(TerminalReport {
            read,
            sender: TerminalSender { socket, report },
        })
    }

    /// In the forked waiter: its part (the runtime command's copy of the socket and the
    /// report pipe's read end go with the rest of its memory).
    fn into_sender(self) -> TerminalSender {
        self.sender
    }

    /// In the runtime command, after the fork: drops its copies of the waiter's ends, then
    /// reads the report to its end.
    fn wait(self) -> Result<(), RuntimeError> {
        let TerminalReport { read, sender } = self;
        drop(sender);
        let mut text = String::new();
        std::fs::File::from(read)
            .read_to_string(&mut text)
            .map_err(RuntimeError::io("read the terminal's report"))?;
        match text.as_str() {
            "ok" => Ok(()),
            "" => Err(RuntimeError::Terminal(
                "the waiter ended before it reported".into(),
            )),
            why => Err(RuntimeError::Terminal(why.to_string())),
        }
    }
}

/// Runs `exec` (with a terminal) in the session, its pty master handed to the console socket
/// as soon as the command exists, and reports the hand-off (or why it failed) on the report
/// pipe; then waits for the command like [`run_in_session`].
fn run_with_console(
    store: &SessionStore,
    session: &str,
    exec: SessionExec,
    gate: Option<OwnedFd>,
    console: TerminalSender,
) -> i32 {
    let TerminalSender { socket, report } = console;
    release_callers_streams();
    // Shared by the hand-off (which reports success) and this function (which reports a
    // failure if the hand-off never happened); the waiter is single-threaded.
    let report = Rc::new(RefCell::new(Some(report)));
    let report_ok = Rc::clone(&report);
    let handoff: TerminalHandoff = Box::new(move |master: OwnedFd| {
        socket
            .send_master(master.as_fd())
            .map_err(|e| SessionError::Io("--console-socket", e))?;
        // The engine holds the master now; ours would keep the terminal open after it closed.
        drop(master);
        if let Some(fd) = report_ok.borrow_mut().take() {
            let _ = rustix::io::write(&fd, b"ok");
        }
        Ok(())
    });
    let result = SessionClient::connect(store, session).and_then(|c| {
        c.exec_with(
            exec,
            crate::sandbox::supervisor::now_ns(),
            ExecAttach {
                gate,
                on_terminal: Some(handoff),
            },
        )
    });
    let unsent = report.borrow_mut().take();
    if let Some(fd) = unsent {
        let why = match &result {
            Err(e) => e.to_string(),
            Ok(outcome) => outcome
                .message()
                .unwrap_or_else(|| "the process ended before its terminal existed".into()),
        };
        let _ = rustix::io::write(&fd, why.as_bytes());
    }
    outcome_code(result)
}

/// In a waiter whose process has a terminal: /dev/null on 0-2 instead of the streams of the
/// runtime command that forked it. With a console socket, the engine reads that command's
/// output to its end (go-runc's `create` does), which would otherwise come only when the
/// container ends. What goes wrong before the hand-off travels on the report pipe instead.
#[allow(unsafe_code)] // dup2 onto 0-2; the block says why it is sound
fn release_callers_streams() {
    let Ok(devnull) = rustix::fs::open("/dev/null", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
    else {
        return;
    };
    for target in 0..3 {
        // SAFETY: a freshly forked waiter: nothing in it relies on 0-2 naming the caller's
        // files (std's handles write through the numbers, whatever they name).
        let _ = unsafe { sys::fs::dup_onto(devnull.as_fd(), target) };
    }
}

/// Stops the session now and waits until its sandbox and cgroup are gone (no-op if it ended).
fn stop_session(store: &SessionStore, session: &str) {
    if let Ok(client) = SessionClient::connect(store, session) {
        let _ = client.stop(Duration::ZERO, "the container stopped");
    }
}

/// `start`: lets the waiter run the container's process.
pub fn start(root: &Path, id: &str) -> Result<(), RuntimeError> {
    let (dir, record) = read_record(root, id)?;
    let status = status(&dir, &record);
    if status != Status::Created {
        return Err(RuntimeError::WrongState {
            id: id.into(),
            status: status.as_str(),
            what: "only a created container can be started",
        });
    }
    std::fs::write(dir.join("started"), b"").map_err(RuntimeError::io("mark the start"))?;
    // Non-blocking: fails (ENXIO) instead of hanging if the waiter is gone.
    let fifo = rustix::fs::open(
        dir.join("start.fifo"),
        OFlags::WRONLY | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| RuntimeError::Io {
        what: "signal the container's start".into(),
        source: std::io::Error::from_raw_os_error(e.raw_os_error()),
    })?;
    rustix::io::write(&fifo, b"start").map_err(|e| RuntimeError::Io {
        what: "signal the container's start".into(),
        source: std::io::Error::from_raw_os_error(e.raw_os_error()),
    })?;
    Ok(())
}

/// `state`.
pub fn state(root: &Path, id: &str) -> Result<State, RuntimeError> {
    let (dir, record) = read_record(root, id)?;
    let status = status(&dir, &record);
    let shown = if status != Status::Stopped && paused(&dir, &record) {
        "paused"
    } else {
        status.as_str()
    };
    let rootfs = rootfs_of(&record).unwrap_or_default();
    Ok(State {
        oci_version: "1.0.2",
        id: record.id,
        status: shown,
        pid: if status == Status::Stopped {
            0
        } else {
            record.pid
        },
        bundle: record.bundle,
        rootfs,
        created: crate::units::rfc3339(record.created),
        owner: "",
        annotations: record.annotations,
    })
}

/// Sends `signal` to the container's process (through the waiter, which passes INT, TERM,
/// HUP and QUIT on to it). SIGKILL, and `--all`, end the whole sandbox.
pub fn kill(root: &Path, id: &str, signal: i32, all: bool) -> Result<(), RuntimeError> {
    let (dir, record) = read_record(root, id)?;
    if status(&dir, &record) == Status::Stopped {
        return Err(RuntimeError::WrongState {
            id: id.into(),
            status: "stopped",
            what: "there is nothing to signal",
        });
    }
    signal_waiter(&record, signal)?;
    if signal == libc::SIGKILL || all {
        stop_session(&store(&dir), &record.session);
    }
    Ok(())
}

fn signal_waiter(record: &Record, signal: i32) -> Result<(), RuntimeError> {
    let pid = rustix::process::Pid::from_raw(record.pid).ok_or_else(|| e_pid(record.pid))?;
    let pidfd = match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::SRCH) => return Ok(()),
        Err(e) => {
            return Err(RuntimeError::Io {
                what: "open the container's process".into(),
                source: std::io::Error::from_raw_os_error(e.raw_os_error()),
            })
        }
    };
    // Checked after the pidfd is held: the pid cannot be reused under it any more.
    if live_start_time(record.pid) != Some(record.pid_start) {
        return Ok(());
    }
    sys::signal::pidfd_kill(pidfd.as_fd(), signal)
        .map_err(RuntimeError::io("signal the container's process"))
}

/// `delete`: ends what is left (with --force, or of a container never started) and removes the
/// container's directory.
pub fn delete(root: &Path, id: &str, force: bool) -> Result<(), RuntimeError> {
    let (dir, record) = match read_record(root, id) {
        // Like runc: a forced delete of what is already gone succeeds (the shim's cleanup).
        Err(RuntimeError::NotFound(_)) if force => return Ok(()),
        other => other?,
    };
    let status = status(&dir, &record);
    if status == Status::Running && !force {
        return Err(RuntimeError::WrongState {
            id: id.into(),
            status: "running",
            what: "stop it first, or use --force",
        });
    }
    if status != Status::Stopped {
        signal_waiter(&record, libc::SIGKILL)?;
    }
    let store = store(&dir);
    stop_session(&store, &record.session);
    wait_gone(&record);
    wait_supervisor_gone(&store, &record.session);
    // A cgroup at the bundle's cgroupsPath outlives the sandbox until here, as runc's does
    // (the shim reads it after the exit); nsbox's own `nsbox-<id>` went with the session.
    remove_cgroups(&record.cgroups);
    std::fs::remove_dir_all(&dir).map_err(RuntimeError::io(format!("remove {}", dir.display())))
}

/// Waits (up to 10 s) until the session's supervisor has exited (it holds the session's lock
/// until then). It removes its socket before it writes the session's last record and event, so
/// a `delete` whose stop found no socket would otherwise race those writes and fail to remove
/// the container's directory ("Directory not empty").
fn wait_supervisor_gone(store: &SessionStore, session: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while store.is_live(session) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits (up to 10 s) until the waiter has exited.
fn wait_gone(record: &Record) {
    let Some(pid) = rustix::process::Pid::from_raw(record.pid) else {
        return;
    };
    let Ok(pidfd) = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) else {
        return;
    };
    if live_start_time(record.pid) != Some(record.pid_start) {
        return;
    }
    let mut fds = [rustix::event::PollFd::new(
        &pidfd,
        rustix::event::PollFlags::IN,
    )];
    let timeout = rustix::event::Timespec {
        tv_sec: 10,
        tv_nsec: 0,
    };
    let _ = rustix::event::poll(&mut fds, Some(&timeout));
}

fn running(root: &Path, id: &str, what: &'static str) -> Result<(PathBuf, Record), RuntimeError> {
    in_state(root, id, what, |s| s == Status::Running)
}

/// The container's record, if its status is one `ok` accepts; else why not, with `what`.
fn in_state(
    root: &Path,
    id: &str,
    what: &'static str,
    ok: impl Fn(Status) -> bool,
) -> Result<(PathBuf, Record), RuntimeError> {
    let (dir, record) = read_record(root, id)?;
    let status = status(&dir, &record);
    if !ok(status) {
        return Err(RuntimeError::WrongState {
            id: id.into(),
            status: status.as_str(),
            what,
        });
    }
    Ok((dir, record))
}

/// `update --resources`: writes the new limits to the container's cgroup (see
/// [`super::update`]); a stopped container has none left to change.
pub fn update(
    root: &Path,
    id: &str,
    update: &super::update::ResourceUpdate,
) -> Result<(), RuntimeError> {
    let (_, record) = in_state(
        root,
        id,
        "update needs a created or running container",
        |s| s != Status::Stopped,
    )?;
    // Without a cgroupsPath on cgroup v2 the container is in its workload leaf, and its cpu
    // limit is on the leaf's parent (`SandboxCgroup::charge_supervisor`).
    let mut dirs = record.cgroups.clone();
    for dir in &record.cgroups {
        if dir.ends_with(crate::cgroup::WORKLOAD_LEAF) {
            dirs.extend(dir.parent().map(Path::to_path_buf));
        }
    }
    for w in super::update::plan_writes(&dirs, update)? {
        std::fs::write(&w.file, &w.value).map_err(|source| {
            crate::cgroup::CgroupError::WriteLimit {
                file: w.file.clone(),
                value: w.value.clone(),
                source,
            }
        })?;
    }
    Ok(())
}

/// How `exec` runs its process (its flags besides the container and the process file).
#[derive(Debug, Clone, Copy, Default)]
pub struct ExecMode<'a> {
    pub detach: bool,
    pub pid_file: Option<&'a Path>,
    /// `--tty`: a terminal even if the process file does not ask for one.
    pub tty: bool,
    pub console_socket: Option<&'a Path>,
}

/// `exec --process FILE`: runs another process in a running container's sandbox. Detached,
/// a forked exec waiter (the pid in `pid_file`, re-parented to the engine's subreaper like the
/// container's waiter) runs it and exits with its status; attached, this process does and the
/// status is returned. The process runs as the container's user: a different
/// `process.user` is refused. With a terminal (`--tty` or `process.terminal`), detached, the
/// pty master goes to `--console-socket` before `exec` returns; attached, this process relays
/// the terminal on its own streams (runc's rules, and runc's refusals of other mixes).
pub fn exec(
    root: &Path,
    id: &str,
    process_file: &Path,
    mode: ExecMode<'_>,
) -> Result<i32, RuntimeError> {
    let ExecMode {
        detach,
        pid_file,
        tty,
        console_socket,
    } = mode;
    let text = std::fs::read(process_file)
        .map_err(RuntimeError::io(format!("read {}", process_file.display())))?;
    let process: oci_spec::runtime::Process =
        serde_json::from_slice(&text).map_err(|e| RuntimeError::Bundle {
            path: process_file.to_path_buf(),
            reason: e.to_string(),
        })?;
    let (dir, record) = running(root, id, "only a running container can run another process")?;
    let store = store(&dir);
    let session = SessionClient::connect(&store, &record.session)?;
    let rootfs = rootfs_of(&record);
    let mut exec = bundle::exec_of(
        &process,
        (session.record.uid, session.record.gid),
        rootfs.as_deref(),
    )?;
    drop(session);
    exec.tty |= tty;
    let console = match (exec.tty, detach, console_socket) {
        (true, true, None) => {
            return Err(RuntimeError::TerminalFlags(
                "a terminal (--tty or process.terminal) with --detach needs --console-socket: the pty master has nowhere else to go — hint: pass --console-socket PATH, or leave out --tty and process.terminal".into(),
            ))
        }
        (false, _, Some(path)) => {
            return Err(RuntimeError::TerminalFlags(format!(
                "--console-socket {}: the process has no terminal to send (neither --tty nor process.terminal) — hint: add --tty, or leave out --console-socket",
                path.display()
            )))
        }
        (true, false, Some(path)) => {
            return Err(RuntimeError::TerminalFlags(format!(
                "--console-socket {}: only with --detach; an attached exec relays its terminal itself — hint: add --detach, or leave out --console-socket",
                path.display()
            )))
        }
        (true, true, Some(path)) => Some(ConsoleSocket::connect(path)?),
        (_, _, None) => None,
    };
    if console.is_some() {
        // The engine writes to the pty master; there is no stdin to relay.
        exec.stdin = false;
    }
    if !detach {
        if let Some(path) = pid_file {
            write_atomic(path, std::process::id().to_string().as_bytes())?;
        }
        return Ok(run_in_session(&store, &record.session, exec));
    }
    let pid = fork_exec_waiter(&store, &record.session, exec, console)?;
    if let Some(path) = pid_file {
        write_atomic(path, pid.to_string().as_bytes())?;
    }
    Ok(0)
}

/// Forks a detached `exec`'s waiter; returns its pid. With a `console`, returns once the
/// terminal's master was sent there (or the error that kept it from it).
#[allow(unsafe_code)] // the fork; the block says why it is sound
fn fork_exec_waiter(
    store: &SessionStore,
    session: &str,
    exec: SessionExec,
    console: Option<ConsoleSocket>,
) -> Result<i32, RuntimeError> {
    let handoff = console.map(TerminalReport::new).transpose()?;
    // SAFETY: the runtime is single-threaded (no thread was started here), and the child ends
    // through `exit_now`, never returning.
    let pid = unsafe { sys::process::fork() }.map_err(RuntimeError::io("fork the exec waiter"))?;
    if pid == 0 {
        let _abort = sys::process::AbortOnPanic;
        let _ = rustix::process::setsid();
        let code = match handoff {
            Some(handoff) => run_with_console(store, session, exec, None, handoff.into_sender()),
            None => run_in_session(store, session, exec),
        };
        sys::process::exit_now(code);
    }
    if let Some(handoff) = handoff {
        if let Err(e) = handoff.wait() {
            kill_pid(pid);
            return Err(e);
        }
    }
    Ok(pid)
}

/// The container's root directory, as its bundle's config.json names it.
fn rootfs_of(record: &Record) -> Option<PathBuf> {
    bundle::load(&record.bundle)
        .ok()
        .and_then(|s| s.root().as_ref().map(|r| record.bundle.join(r.path())))
}

/// `ps`: the host pids of the container's processes (every process in its sandbox's pid
/// namespace, the sandbox's init included), ascending.
pub fn pids(root: &Path, id: &str) -> Result<Vec<i32>, RuntimeError> {
    let (dir, record) = read_record(root, id)?;
    if status(&dir, &record) == Status::Stopped {
        return Ok(Vec::new());
    }
    let ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok();
    let Some(theirs) = ns(&record.init_pid.to_string()) else {
        return Ok(Vec::new());
    };
    let entries = std::fs::read_dir("/proc").map_err(RuntimeError::io("read /proc"))?;
    let mut pids: Vec<i32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter(|pid| ns(&pid.to_string()).as_ref() == Some(&theirs))
        .collect();
    pids.sort_unstable();
    Ok(pids)
}

/// `pause` (`frozen`) and `resume`: freezes or thaws every process of the sandbox.
pub fn set_paused(root: &Path, id: &str, frozen: bool) -> Result<(), RuntimeError> {
    let (dir, record) = in_state(
        root,
        id,
        "only a created or running container can be paused or resumed",
        |s| s != Status::Stopped,
    )?;
    SessionClient::connect(&store(&dir), &record.session)?.set_frozen(frozen)?;
    Ok(())
}

/// Whether the container's sandbox is frozen (`state` then says "paused").
fn paused(dir: &Path, record: &Record) -> bool {
    store(dir)
        .read_record(&record.session)
        .is_ok_and(|r| r.paused)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_is_rfc3339() {
        assert_eq!(crate::units::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(crate::units::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(crate::units::rfc3339(1_796_396_288), "2026-12-04T14:58:08Z");
    }

    #[test]
    fn ids_are_names_not_paths() {
        for bad in ["", ".", "..", "a/b", "../x", "a b"] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
        for good in ["c1", "abc_DEF-1.2", &"x".repeat(128)] {
            assert!(check_id(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn long_ids_get_short_directories_that_fit_a_socket_path() {
        let root = Path::new(super::super::DEFAULT_ROOT);
        let podman = "a".repeat(64);
        let long = dir(root, &podman).expect("dir");
        assert_eq!(long.file_name().map(|n| n.len()), Some(DIR_NAME_MAX));
        assert_ne!(long, dir(root, &"b".repeat(64)).expect("dir"));
        assert_eq!(dir(root, "c1").expect("dir"), root.join("c1"));
        let socket = store(&long).socket("0123456789ab");
        assert!(socket.as_os_str().len() < 108, "{}", socket.display());
    }

    #[test]
    fn this_process_is_alive_and_has_a_start_time() {
        let me = i32::try_from(std::process::id()).expect("pid");
        assert!(live_start_time(me).is_some());
        assert!(live_start_time(i32::MAX).is_none());
    }
}
