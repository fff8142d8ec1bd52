//! The host side of a sandbox: creates its cgroup, clones the setup child into new
//! namespaces, writes the user namespace maps, relays stdin/stdout/stderr (masking secrets,
//! capping output), enforces the timeout, forwards signals, reports the ending and removes
//! everything it created — on every path, errors and Ctrl-C included.
//!
//! One thread, one poll loop. Signals arrive through a signalfd that exists before anything
//! else is created, so a Ctrl-C during setup is handled like any other event. With
//! `--net filtered` a second thread serves the resolver and the proxy (`crate::net::egress`);
//! it starts after the last clone (the user namespace helper) and reaches the poll loop only
//! through an event channel and an eventfd.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use rustix::event::{poll, PollFd, PollFlags};
use rustix::fs::{Mode, OFlags};
use rustix::net::{AddressFamily, SocketFlags, SocketType};
use rustix::process::WaitIdOptions;

use super::control::{self, ToSandbox, ToSupervisor};
use super::setup::{self, ChildSetup, ExecFailure};
use crate::cgroup::{
    CgroupError, CgroupLayout, CgroupLimits, Controller, Placement, SandboxCgroup,
};
use crate::profile::NetworkMode;
use crate::relay::stream::{Relay, RelayConfig, RelayError, RelayFd};
use crate::relay::Masker;
use crate::rootfs::{self, HostFacts};
use crate::seccomp::SeccompError;
use crate::spec::units::{format_duration, ByteSize};
use crate::spec::{SandboxSpec, IDS_IN_SANDBOX};
use crate::{exit, sys};

/// How long the command has to end after nsbox forwarded SIGINT/SIGTERM before every process
/// of the sandbox is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(2);

/// Why a sandbox could not be run.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("sandboxes need root for now (rootless operation is planned) — hint: run nsbox with sudo; `nsbox doctor` checks the rest")]
    NotRoot,
    #[error("{0}")]
    Cgroup(#[from] CgroupError),
    #[error("seccomp policy: {0}")]
    Seccomp(#[from] SeccompError),
    #[error("sandbox setup failed: {step}: {message}")]
    Setup { step: String, message: String },
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: io::Error,
    },
    #[error("the sandbox ended unexpectedly: {0}")]
    Died(String),
    #[error("{0}")]
    Network(#[from] crate::net::NetError),
}

impl SandboxError {
    /// "setup" when the command never ran, "run" otherwise.
    pub fn phase(&self) -> &'static str {
        match self {
            SandboxError::Died(_) => "run",
            _ => "setup",
        }
    }
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> SandboxError {
    move |source| SandboxError::Io { what, source }
}

fn errno(what: &'static str) -> impl FnOnce(rustix::io::Errno) -> SandboxError {
    move |e| SandboxError::Io {
        what,
        source: io::Error::from_raw_os_error(e.raw_os_error()),
    }
}

/// How the command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    Exited(i32),
    Signaled(i32),
    /// The command never started (not found, not executable, bad working directory).
    ExecFailed {
        code: i32,
        message: String,
    },
    /// `--timeout` expired; every process was killed.
    TimedOut(Duration),
    /// nsbox received this signal and tore the sandbox down.
    Interrupted(i32),
}

/// The result of a sandbox run.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub id: String,
    pub ending: Ending,
    /// The kernel's OOM killer killed a process at the memory limit.
    pub oom: bool,
    /// Output beyond `--max-output` was dropped.
    pub truncated: bool,
    pub duration: Duration,
    /// (phase, nanoseconds since nsbox started), for `--timings`.
    pub marks: Vec<(String, u64)>,
    pub warnings: Vec<String>,
    pub memory_limit: Option<ByteSize>,
    /// The command ran in a session: a timeout or interrupt ended the command's process
    /// group, not the sandbox.
    pub in_session: bool,
}

impl Outcome {
    /// nsbox's exit status for this outcome (see [`crate::exit`]).
    pub fn exit_code(&self) -> i32 {
        match &self.ending {
            Ending::Exited(code) => *code,
            Ending::Signaled(sig) => exit::SIGNAL_BASE + sig,
            Ending::ExecFailed { code, .. } => *code,
            Ending::TimedOut(_) => exit::TIMEOUT,
            Ending::Interrupted(sig) => exit::SIGNAL_BASE + sig,
        }
    }

    /// The human message nsbox prints on stderr for this ending, if any.
    pub fn message(&self) -> Option<String> {
        match &self.ending {
            Ending::ExecFailed { message, .. } => Some(message.clone()),
            Ending::TimedOut(limit) => Some(format!(
                "timed out after {} (--timeout); {} killed",
                format_duration(*limit),
                if self.in_session {
                    "the command and its process group were"
                } else {
                    "every process of the sandbox was"
                }
            )),
            Ending::Signaled(libc::SIGKILL) if self.oom => Some(format!(
                "out of memory: the sandbox reached its memory limit{} and the kernel killed the command (exit code {})",
                self.memory_limit
                    .map(|m| format!(" of {m} (--memory)"))
                    .unwrap_or_default(),
                exit::OOM
            )),
            Ending::Interrupted(sig) => Some(format!(
                "interrupted by {}; {}",
                sys::signal::name(*sig),
                if self.in_session {
                    "the command was killed (the session runs on)"
                } else {
                    "the sandbox was torn down"
                }
            )),
            _ if self.oom => Some(format!(
                "a process in the sandbox was killed by the OOM killer at the memory limit{}",
                self.memory_limit
                    .map(|m| format!(" of {m} (--memory)"))
                    .unwrap_or_default()
            )),
            _ => None,
        }
    }

    /// The signal that ended the command, by name.
    pub fn signal_name(&self) -> Option<String> {
        match &self.ending {
            Ending::Signaled(sig) => Some(sys::signal::name(*sig)),
            _ => None,
        }
    }
}

/// Monotonic nanoseconds; compare with the marks of an [`Outcome`].
pub fn now_ns() -> u64 {
    setup::now_ns()
}

/// What the setup child becomes once the sandbox is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitMode {
    /// Fork the spec's command at once; end when it ends (`nsbox exec`).
    RunCommand,
    /// Wait for commands from the supervisor; end when told to (sessions).
    Serve,
}

/// A sandbox whose setup child exists and is building the sandbox, seen from the host.
/// Dropping it kills and reaps the child and removes the cgroup.
#[derive(Debug)]
pub struct Launched {
    pub pid: i32,
    pub pidfd: Option<OwnedFd>,
    pub cgroup: Option<SandboxCgroup>,
    /// The control socket to the child / init.
    pub control: Option<OwnedFd>,
    /// Read end of the pipe the command's exec failure is reported on (RunCommand).
    pub exec_status: Option<OwnedFd>,
    /// The command's stdout / stderr (read ends) and stdin (write end) (RunCommand, no tty).
    pub out: Option<OwnedFd>,
    pub err: Option<OwnedFd>,
    pub stdin: Option<OwnedFd>,
    pub marks: Vec<(String, u64)>,
    pub warnings: Vec<String>,
    /// The filtered network's resolver and proxy (`--net filtered`).
    pub egress: Option<crate::net::Egress>,
    /// The cached mask layer, locked while the sandbox uses it.
    _mask_layer: Option<rootfs::mask::MaskLayer>,
    /// Idmapped clones of the image's layers, which the child opens through this process.
    _idmapped_layers: Vec<OwnedFd>,
}

impl Launched {
    /// Kills the sandbox if it still runs, reaps it and removes its cgroup. Idempotent.
    pub fn teardown(&mut self) -> Option<String> {
        // Its thread ends with it (what it still had to report is dropped).
        drop(self.egress.take());
        if let Some(pidfd) = self.pidfd.take() {
            let _ = sys::signal::pidfd_kill(pidfd.as_fd(), libc::SIGKILL);
            let _ = rustix::process::waitid(
                rustix::process::WaitId::PidFd(pidfd.as_fd()),
                WaitIdOptions::EXITED,
            );
        }
        let cgroup = self.cgroup.take()?;
        cgroup.remove().err().map(|e| {
            format!("could not remove the sandbox's cgroup: {e} — `nsbox prune` removes it later")
        })
    }
}

impl Drop for Launched {
    fn drop(&mut self) {
        let _ = self.teardown();
    }
}

/// Creates the sandbox for `spec`: cgroup, plan, clone3 into new namespaces, and (in parallel
/// with the child's filesystem work) the network namespace, the v1 cgroup and the user
/// namespace. Returns as soon as the child has everything it needs; the caller's loop then
/// watches the control socket for the start (or the failure). `marks` collects timings.
pub fn launch(
    spec: &SandboxSpec,
    mode: InitMode,
    mut marks: Vec<(String, u64)>,
) -> Result<Launched, SandboxError> {
    if !rustix::process::geteuid().is_root() {
        return Err(SandboxError::NotRoot);
    }
    let layout = CgroupLayout::detect()?;
    let limits = CgroupLimits {
        memory_bytes: spec.limits.memory.map(ByteSize::bytes),
        cpu_millis: spec.limits.cpus.map(|c| c.0),
        pids: spec.limits.pids,
    };
    // On cgroup v2 the child is cloned straight into its cgroup (CLONE_INTO_CGROUP), so the
    // cgroup must exist first. With only v1 controllers the child joins through `tasks` files
    // instead, so the cgroup is created after clone, while the child builds its filesystem.
    let uses_v2 = Controller::ALL
        .iter()
        .any(|c| matches!(layout.placement(*c), Placement::V2 { enabled: true, .. }));
    let early_cgroup = if uses_v2 {
        let cgroup = SandboxCgroup::create(&layout, &spec.id, &limits)?;
        // While this supervisor lives, `nsbox prune` sees the cgroup as in use.
        crate::cgroup::hold_in_use(&cgroup);
        marks.push(("cgroup created".into(), now_ns()));
        Some(cgroup)
    } else {
        None
    };

    let host = HostFacts {
        cgroup2_inside: uses_v2,
        resolv_conf: match spec.network {
            NetworkMode::Host => std::fs::read("/etc/resolv.conf").ok(),
            NetworkMode::None | NetworkMode::Filtered => None,
        },
    };
    let mut plan = rootfs::build_plan(spec, &host);
    // Image layers belong to the shared id range; a sandbox with its own sees them shifted.
    // The child reaches the clones through this process's descriptors (held in `Launched`).
    let idmapped_layers = if spec.image.is_some() && spec.uid_base != crate::spec::DEFAULT_UID_BASE
    {
        crate::idrange::idmap_lowers(&mut plan, spec.uid_base)
            .map_err(io_err("show the image's layers in the sandbox's id range"))?
    } else {
        Vec::new()
    };
    // What the profile hides of the host root is the same for every sandbox: use (or build)
    // the cached layer for it; without it the child builds the same thing in its upper layer.
    let mask_layer = if plan.shared.is_empty() {
        None
    } else {
        match rootfs::mask::prepare(
            &plan.shared,
            rootfs::apply::IdMap {
                base: spec.uid_base,
            },
        ) {
            Ok(layer) => {
                plan.lowers.insert(0, layer.path.clone());
                plan.shared.clear();
                Some(layer)
            }
            Err(e) => {
                tracing::debug!("mask layer cache not used: {e}");
                let shared = std::mem::take(&mut plan.shared);
                plan.upper.splice(0..0, shared);
                None
            }
        }
    };
    let bpf = spec.seccomp.compile()?;
    marks.push(("plan and seccomp ready".into(), now_ns()));

    let (control_parent, control_child) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(errno("create control socket"))?;
    let (exec_read, exec_write) =
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(errno("create pipe"))?;
    let devnull = rustix::fs::open("/dev/null", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
        .map_err(errno("open /dev/null"))?;
    let pipe =
        || rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(errno("create pipe"));
    let (stdin_pipe, stdout_pipe, stderr_pipe) = if spec.io.tty || mode == InitMode::Serve {
        (None, None, None)
    } else {
        (
            if spec.io.stdin { Some(pipe()?) } else { None },
            Some(pipe()?),
            Some(pipe()?),
        )
    };
    let child_stdio: [BorrowedFd<'_>; 3] = [
        stdin_pipe
            .as_ref()
            .map_or(devnull.as_fd(), |(r, _)| r.as_fd()),
        stdout_pipe
            .as_ref()
            .map_or(devnull.as_fd(), |(_, w)| w.as_fd()),
        stderr_pipe
            .as_ref()
            .map_or(devnull.as_fd(), |(_, w)| w.as_fd()),
    ];
    let winsize = if spec.io.tty && mode == InitMode::RunCommand {
        [1, 0, 2]
            .into_iter()
            .find_map(|fd| rustix::termios::tcgetwinsize(std_fd(fd)).ok())
    } else {
        None
    };

    // No CLONE_NEWNET: the network namespace is made in parallel (see crate::net).
    let ns = sys::process::flags::NEWNS
        | sys::process::flags::NEWPID
        | sys::process::flags::NEWUTS
        | sys::process::flags::NEWIPC;
    marks.push(("clone".into(), now_ns()));
    let forked =
        sys::process::clone3_fork(ns, early_cgroup.as_ref().and_then(|c| c.clone_into_fd()))
            .map_err(io_err("create the sandbox's namespaces"))?;
    let (pid, pidfd) = match forked {
        sys::process::Forked::Child => setup::child_main(ChildSetup {
            spec,
            mode,
            plan: &plan,
            seccomp: &bpf,
            control: control_child.as_fd(),
            exec_status: exec_write.as_fd(),
            stdio: child_stdio,
            cgroup_tasks: early_cgroup.as_ref().map_or(&[][..], |c| c.self_join_fds()),
            late_cgroup: early_cgroup.is_none(),
            winsize,
        }),
        sys::process::Forked::Parent { pid, pidfd } => (pid, pidfd),
    };
    marks.push(("clone returned".into(), now_ns()));
    let mut launched = Launched {
        pid,
        pidfd: Some(pidfd),
        cgroup: early_cgroup,
        control: Some(control_parent),
        exec_status: Some(exec_read),
        out: None,
        err: None,
        stdin: None,
        marks: Vec::new(),
        warnings: Vec::new(),
        egress: None,
        _mask_layer: mask_layer,
        _idmapped_layers: idmapped_layers,
    };
    // While the child builds its filesystem: its network namespace (needed first), on v1
    // hosts its cgroup, then its user namespace. Step off this CPU so the child, queued here,
    // starts at once instead of after this work.
    let saved_affinity = sys::process::step_aside();
    let control_fd = launched
        .control
        .as_ref()
        .map(|c| c.as_fd())
        .ok_or_else(|| SandboxError::Died("control socket missing".into()))?;
    let mut egress = None;
    match spec.network {
        NetworkMode::None => {
            send_network_namespace(control_fd);
            marks.push(("network namespace created".into(), now_ns()));
        }
        NetworkMode::Filtered => {
            // The child may join the namespace at once; the rules, routes and sockets follow
            // while it builds its filesystem, all before the identity that lets it go on.
            if let Some(ns) = send_network_namespace(control_fd) {
                marks.push(("network namespace created".into(), now_ns()));
                egress = Some(crate::net::prepare_filtered_namespace(
                    ns.as_fd(),
                    &spec.egress,
                ));
                marks.push(("filtered network prepared".into(), now_ns()));
            }
        }
        NetworkMode::Host => {}
    }
    if launched.cgroup.is_none() {
        // On failure, dropping `launched` kills and reaps the child.
        let cgroup = SandboxCgroup::create(&layout, &spec.id, &limits)?;
        crate::cgroup::hold_in_use(&cgroup);
        marks.push(("cgroup created".into(), now_ns()));
        launched.cgroup = Some(cgroup);
    }
    let egress = match egress.transpose() {
        Ok(egress) => {
            if let Some(cgroup) = &launched.cgroup {
                send_identity(control_fd, spec, cgroup, !uses_v2);
                launched.warnings = cgroup.warnings().to_vec();
            }
            marks.push(("user namespace created".into(), now_ns()));
            egress
        }
        Err(e) => {
            // Instead of its identity the child learns why, and gives up.
            let _ = control::send(
                control_fd,
                &ToSandbox::NetFailed {
                    message: e.to_string(),
                },
                &[],
            );
            None
        }
    };
    // The user namespace helper is gone: from here the supervisor may have threads. The
    // resolver and the proxy get theirs (their sockets queue whatever arrives before).
    // Events are wanted where someone reads them: a one-shot's --json stream or
    // --log-network; a session's network log with --log-network.
    let wanted = match mode {
        InitMode::RunCommand => spec.io.json || spec.log_network,
        InitMode::Serve => spec.log_network,
    };
    // On failure, dropping `launched` kills and reaps the child and removes the cgroup.
    launched.egress = egress.map(|p| p.start(wanted)).transpose()?;
    if launched.egress.is_some() {
        marks.push(("resolver and proxy started".into(), now_ns()));
    }
    sys::process::restore_affinity(saved_affinity);
    // The child's ends belong to the child now.
    drop(control_child);
    drop(exec_write);
    launched.stdin = stdin_pipe.map(|(r, w)| {
        drop(r);
        w
    });
    launched.out = stdout_pipe.map(|(r, w)| {
        drop(w);
        r
    });
    launched.err = stderr_pipe.map(|(r, w)| {
        drop(w);
        r
    });
    for fd in [&launched.control, &launched.exec_status]
        .into_iter()
        .flatten()
    {
        set_nonblocking(fd.as_fd()).map_err(io_err("configure the sandbox's descriptors"))?;
    }
    launched.marks = marks;
    Ok(launched)
}

/// Runs `spec` to completion (`nsbox exec`). `t0` is when nsbox started (monotonic ns).
pub fn run(spec: &SandboxSpec, t0: u64) -> Result<Outcome, SandboxError> {
    let marks: Vec<(String, u64)> = vec![("arguments parsed".into(), now_ns())];
    // Signals first: from here on Ctrl-C is an event, not a death with state left behind.
    let signalfd = sys::signal::take_relay_signals().map_err(io_err("take over signals"))?;
    let timer = match spec.limits.timeout {
        Some(limit) => Some(arm_timer(limit).map_err(io_err("arm timeout"))?),
        None => None,
    };

    let mut launched = launch(spec, InitMode::RunCommand, marks)?;
    let relay = Relay::new(
        RelayConfig {
            json: spec.io.json,
            tty: spec.io.tty,
            stdin: spec.io.stdin,
            max_output: spec.limits.max_output,
            phase: None,
            stdout_to_stderr: false,
        },
        &spec.secrets,
        launched.out.take(),
        launched.err.take(),
        launched.stdin.take(),
    )
    .map_err(relay_err)?;
    let mut sandbox = Running {
        spec,
        t0,
        control: launched.control.take(),
        exec_status: launched.exec_status.take(),
        exec_buf: Vec::new(),
        relay,
        started: false,
        setup_failure: None,
        exec_failure: None,
        workload_status: None,
        init_reaped: false,
        timed_out: false,
        interrupted: None,
        stop_deadline: None,
        marks: std::mem::take(&mut launched.marks),
        inner_marks: Vec::new(),
        warnings: std::mem::take(&mut launched.warnings),
        launched,
        event_masker: Masker::for_network_events(&spec.secrets),
    };
    let result = sandbox.event_loop(signalfd.as_fd(), timer.as_ref().map(|t| t.as_fd()));
    sandbox.finish(result)
}

pub(crate) fn std_fd(fd: i32) -> BorrowedFd<'static> {
    crate::relay::stream::std_fd(fd)
}

fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    crate::relay::stream::set_nonblocking(fd)
}

fn relay_err(e: RelayError) -> SandboxError {
    SandboxError::Io {
        what: e.what,
        source: e.source,
    }
}

pub(crate) fn arm_timer(limit: Duration) -> io::Result<OwnedFd> {
    use rustix::time::{
        timerfd_create, timerfd_settime, Itimerspec, TimerfdClockId, TimerfdFlags,
        TimerfdTimerFlags, Timespec,
    };
    let err = |e: rustix::io::Errno| io::Error::from_raw_os_error(e.raw_os_error());
    let fd = timerfd_create(
        TimerfdClockId::Monotonic,
        TimerfdFlags::CLOEXEC | TimerfdFlags::NONBLOCK,
    )
    .map_err(err)?;
    let spec = Itimerspec {
        it_interval: Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        it_value: Timespec {
            tv_sec: limit.as_secs() as _,
            tv_nsec: limit.subsec_nanos() as _,
        },
    };
    timerfd_settime(&fd, TimerfdTimerFlags::empty(), &spec).map_err(err)?;
    Ok(fd)
}

/// Creates the sandbox's user namespace (mapped) and sends it to the child, with the cgroup's
/// `tasks` descriptors when the child joins its cgroup late (cgroup v1 hosts).
fn send_identity(socket: BorrowedFd<'_>, spec: &SandboxSpec, cgroup: &SandboxCgroup, late: bool) {
    let result = match spec.userns_owner {
        Some(owner) => crate::idrange::create_user_namespace(spec.uid_base, IDS_IN_SANDBOX, owner),
        None => sys::process::create_user_namespace(spec.uid_base, IDS_IN_SANDBOX),
    };
    let _ = match result {
        Ok(userns) => {
            let mut fds = vec![userns.as_fd()];
            if late {
                fds.extend(cgroup.self_join_fds().iter().map(|f| f.as_fd()));
            }
            control::send(socket, &ToSandbox::Identity, &fds)
        }
        Err(e) => control::send(
            socket,
            &ToSandbox::IdentityFailed {
                message: format!("cannot create the sandbox's user namespace: {e}"),
            },
            &[],
        ),
    };
}

/// Creates the sandbox's network namespace and sends it to the child; returns it (None when
/// it could not be made: the child was told why).
fn send_network_namespace(socket: BorrowedFd<'_>) -> Option<OwnedFd> {
    match crate::net::create_isolated_namespace() {
        Ok(ns) => {
            let _ = control::send(socket, &ToSandbox::NetNamespace, &[ns.as_fd()]);
            Some(ns)
        }
        Err(e) => {
            let _ = control::send(
                socket,
                &ToSandbox::NetFailed {
                    message: e.to_string(),
                },
                &[],
            );
            None
        }
    }
}

/// A running one-shot sandbox, seen from the host.
struct Running<'a> {
    spec: &'a SandboxSpec,
    t0: u64,
    launched: Launched,
    control: Option<OwnedFd>,
    exec_status: Option<OwnedFd>,
    exec_buf: Vec<u8>,
    relay: Relay,
    started: bool,
    setup_failure: Option<(String, String)>,
    exec_failure: Option<ExecFailure>,
    workload_status: Option<(Option<i32>, Option<i32>)>,
    init_reaped: bool,
    timed_out: bool,
    interrupted: Option<i32>,
    stop_deadline: Option<u64>,
    marks: Vec<(String, u64)>,
    inner_marks: Vec<(String, u64)>,
    warnings: Vec<String>,
    /// Masks secrets in network events (a name looked up may carry one).
    event_masker: Masker,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Source {
    Signal,
    Init,
    Control,
    ExecStatus,
    Timer,
    Relay(RelayFd),
    Network,
}

/// The descriptors one poll waits on, each tagged with what it is.
pub(crate) struct PollSet<'a, T> {
    pub tags: Vec<T>,
    pub fds: Vec<PollFd<'a>>,
}

impl<'a, T: Copy> PollSet<'a, T> {
    pub fn new() -> Self {
        PollSet {
            tags: Vec::with_capacity(12),
            fds: Vec::with_capacity(12),
        }
    }

    pub fn add(&mut self, tag: T, fd: BorrowedFd<'a>, flags: PollFlags) {
        self.tags.push(tag);
        self.fds.push(PollFd::from_borrowed_fd(fd, flags));
    }

    /// Waits (up to `timeout`) and returns what became ready.
    pub fn wait(mut self, timeout: Option<Duration>) -> rustix::io::Result<Vec<(T, PollFlags)>> {
        let timeout = timeout.map(|t| rustix::time::Timespec {
            tv_sec: t.as_secs() as _,
            tv_nsec: t.subsec_nanos() as _,
        });
        match poll(&mut self.fds, timeout.as_ref()) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        }
        Ok(self
            .tags
            .iter()
            .zip(self.fds.iter())
            .filter(|(_, fd)| !fd.revents().is_empty())
            .map(|(tag, fd)| (*tag, fd.revents()))
            .collect())
    }
}

impl Running<'_> {
    fn done(&self) -> bool {
        self.init_reaped
            && self.relay.streams_closed()
            && self.exec_status.is_none()
            && self.control.is_none()
    }

    fn event_loop(
        &mut self,
        signalfd: BorrowedFd<'_>,
        mut timer: Option<BorrowedFd<'_>>,
    ) -> Result<(), SandboxError> {
        while !self.done() {
            let mut set = PollSet::new();
            set.add(Source::Signal, signalfd, PollFlags::IN);
            if let (false, Some(pidfd)) = (self.init_reaped, &self.launched.pidfd) {
                set.add(Source::Init, pidfd.as_fd(), PollFlags::IN);
            }
            if let Some(fd) = &self.control {
                set.add(Source::Control, fd.as_fd(), PollFlags::IN);
            }
            if let Some(fd) = &self.exec_status {
                set.add(Source::ExecStatus, fd.as_fd(), PollFlags::IN);
            }
            // Before the output: an event is queued before the sandbox hears of the decision,
            // so when both are ready the event came first.
            if let Some(egress) = &self.launched.egress {
                set.add(Source::Network, egress.wake_fd(), PollFlags::IN);
            }
            if let Some(fd) = timer {
                set.add(Source::Timer, fd, PollFlags::IN);
            }
            self.relay
                .register(&mut set.tags, &mut set.fds, Source::Relay);
            let wait = self
                .stop_deadline
                .map(|deadline| Duration::from_nanos(deadline.saturating_sub(now_ns())));
            let ready = set.wait(wait).map_err(errno("wait for events"))?;
            for (tag, revents) in ready {
                match tag {
                    Source::Signal => self.on_signals(signalfd)?,
                    Source::Init => self.reap_init()?,
                    Source::Control => self.on_control()?,
                    Source::ExecStatus => self.on_exec_status()?,
                    Source::Relay(which) => self.relay.handle(which, revents).map_err(relay_err)?,
                    Source::Network => {
                        let events = self
                            .launched
                            .egress
                            .as_mut()
                            .map(|e| e.take_events())
                            .unwrap_or_default();
                        self.emit_network(events);
                    }
                    Source::Timer => {
                        timer = None;
                        if !self.init_reaped {
                            self.timed_out = true;
                            self.kill_sandbox();
                        }
                    }
                }
            }
            if let Some(deadline) = self.stop_deadline {
                if now_ns() >= deadline && !self.init_reaped {
                    self.stop_deadline = None;
                    self.kill_sandbox();
                }
            }
        }
        Ok(())
    }

    fn kill_sandbox(&mut self) {
        if let (false, Some(pidfd)) = (self.init_reaped, &self.launched.pidfd) {
            // Killing the pid namespace's init kills every process in the namespace.
            let _ = sys::signal::pidfd_kill(pidfd.as_fd(), libc::SIGKILL);
        }
    }

    fn on_signals(&mut self, signalfd: BorrowedFd<'_>) -> Result<(), SandboxError> {
        while let Some(signal) =
            sys::signal::read_signal(signalfd).map_err(io_err("read signals"))?
        {
            match signal {
                libc::SIGWINCH => self.relay.resize_terminal(),
                _ => {
                    if self.init_reaped {
                        continue;
                    }
                    let first = self.interrupted.is_none();
                    self.interrupted.get_or_insert(signal);
                    if first && self.started {
                        // Give the command a chance to end cleanly, like a terminal would.
                        let _ = sys::signal::kill(self.launched.pid, signal);
                        self.stop_deadline = Some(now_ns() + STOP_GRACE.as_nanos() as u64);
                    } else {
                        self.kill_sandbox();
                    }
                }
            }
        }
        Ok(())
    }

    fn reap_init(&mut self) -> Result<(), SandboxError> {
        let Some(pidfd) = &self.launched.pidfd else {
            return Ok(());
        };
        match rustix::process::waitid(
            rustix::process::WaitId::PidFd(pidfd.as_fd()),
            WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
        ) {
            Ok(Some(_)) => {
                self.init_reaped = true;
                self.launched.pidfd = None;
                self.marks.push(("sandbox ended".into(), now_ns()));
            }
            Ok(None) => {}
            Err(rustix::io::Errno::CHILD) => {
                self.init_reaped = true;
                self.launched.pidfd = None;
            }
            Err(e) => return Err(errno("wait for the sandbox")(e)),
        }
        Ok(())
    }

    fn on_control(&mut self) -> Result<(), SandboxError> {
        loop {
            let Some(fd) = &self.control else {
                return Ok(());
            };
            let received = match control::recv::<ToSupervisor>(fd.as_fd()) {
                Ok(Some(msg)) => msg,
                Ok(None) => {
                    self.control = None;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                // The sandbox ended with our messages unread: the kernel reports that once,
                // ahead of what it had already sent us (say, why setup failed). Keep reading.
                Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) => continue,
                Err(e) => return Err(io_err("read from the sandbox")(e)),
            };
            match received {
                (ToSupervisor::SetupFailed { step, message }, _) => {
                    self.setup_failure = Some((step, message));
                }
                (ToSupervisor::Started { marks, warnings }, fds) => {
                    self.started = true;
                    self.inner_marks = marks;
                    self.warnings.extend(warnings);
                    self.marks.push(("workload started".into(), now_ns()));
                    if let Some(master) = fds.into_iter().next() {
                        self.relay.attach_terminal(master).map_err(relay_err)?;
                    }
                }
                (ToSupervisor::Exited { code, signal }, _) => {
                    self.marks.push(("command exited".into(), now_ns()));
                    self.workload_status = Some((code, signal));
                }
                (other, _) => {
                    return Err(SandboxError::Died(format!(
                        "unexpected message from the sandbox: {other:?}"
                    )))
                }
            }
        }
    }

    fn on_exec_status(&mut self) -> Result<(), SandboxError> {
        let Some(fd) = &self.exec_status else {
            return Ok(());
        };
        let mut buf = [0u8; 4096];
        loop {
            match rustix::io::read(fd, &mut buf) {
                Ok(0) => {
                    if !self.exec_buf.is_empty() {
                        self.exec_failure = serde_json::from_slice(&self.exec_buf).ok();
                    } else {
                        self.marks.push(("command executed".into(), now_ns()));
                    }
                    self.exec_status = None;
                    return Ok(());
                }
                Ok(n) => self.exec_buf.extend_from_slice(&buf[..n]),
                Err(rustix::io::Errno::AGAIN) => return Ok(()),
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(errno("read exec status")(e)),
            }
        }
    }

    /// Queues network events: JSON lines in the `--json` stream, text on stderr with
    /// `--log-network`. They are nsbox's own lines, not the command's output: no output cap.
    fn emit_network(&mut self, events: Vec<crate::net::NetEvent>) {
        for event in events {
            if self.spec.io.json {
                let line = String::from_utf8_lossy(&event.to_json_line()).into_owned();
                self.relay
                    .push_line(false, self.event_masker.mask_str(&line).as_bytes());
            } else if self.spec.log_network {
                let line = event.to_text_line();
                self.relay
                    .push_line(true, self.event_masker.mask_str(&line).as_bytes());
            }
        }
    }

    /// Tears down whatever is left, then turns the state into an outcome.
    fn finish(mut self, loop_result: Result<(), SandboxError>) -> Result<Outcome, SandboxError> {
        if loop_result.is_err() {
            self.teardown();
        }
        if let Some(mut egress) = self.launched.egress.take() {
            let events = egress.stop();
            self.emit_network(events);
        }
        self.relay.finish();
        let oom = self
            .launched
            .cgroup
            .as_ref()
            .is_some_and(|c| c.oom_kills().unwrap_or(0) > 0);
        self.teardown();
        loop_result?;
        self.marks.push(("cleaned up".into(), now_ns()));

        if let Some((step, message)) = self.setup_failure.take() {
            return Err(SandboxError::Setup { step, message });
        }
        let ending = if let Some(f) = self.exec_failure.take() {
            Ending::ExecFailed {
                code: f.code,
                message: f.message,
            }
        } else if let Some((code, signal)) = self.workload_status {
            match (code, signal) {
                (Some(code), _) => Ending::Exited(code),
                (None, Some(sig)) => Ending::Signaled(sig),
                (None, None) => {
                    return Err(SandboxError::Died(
                        "the command's status was not reported".into(),
                    ))
                }
            }
        } else if self.timed_out {
            Ending::TimedOut(self.spec.limits.timeout.unwrap_or_default())
        } else if oom && self.started {
            // With memory.oom.group (cgroup v2) the OOM killer ends every process of the
            // sandbox at once, init included, so nobody was left to report the status.
            Ending::Signaled(libc::SIGKILL)
        } else if let Some(sig) = self.interrupted {
            Ending::Interrupted(sig)
        } else if !self.started {
            return Err(SandboxError::Setup {
                step: "start".into(),
                message: "the sandbox's init exited before the command started".into(),
            });
        } else {
            return Err(SandboxError::Died(
                "the sandbox's init exited without a status".into(),
            ));
        };
        let mut marks = std::mem::take(&mut self.marks);
        marks.append(&mut self.inner_marks);
        marks.sort_by_key(|(_, t)| *t);
        let marks = marks
            .into_iter()
            .map(|(label, t)| (label, t.saturating_sub(self.t0)))
            .collect();
        Ok(Outcome {
            id: self.spec.id.clone(),
            ending,
            oom,
            truncated: self.relay.truncated(),
            duration: Duration::from_nanos(now_ns().saturating_sub(self.t0)),
            marks,
            warnings: std::mem::take(&mut self.warnings),
            memory_limit: self.spec.limits.memory,
            in_session: false,
        })
    }

    /// Kills the sandbox if it still runs, reaps it and removes its cgroup. Idempotent.
    fn teardown(&mut self) {
        if let Some(warning) = self.launched.teardown() {
            self.warnings.push(warning);
        }
        self.init_reaped = true;
    }
}
