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
use crate::relay::{Event, Masker, Sink, Utf8Chunker};
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
                "timed out after {} (--timeout); every process of the sandbox was killed",
                format_duration(*limit)
            )),
            Ending::Signaled(libc::SIGKILL) if self.oom => Some(format!(
                "out of memory: the sandbox reached its memory limit{} and the kernel killed the command (exit code {})",
                self.memory_limit
                    .map(|m| format!(" of {m} (--memory)"))
                    .unwrap_or_default(),
                exit::OOM
            )),
            Ending::Interrupted(sig) => Some(format!(
                "interrupted by {}; the sandbox was torn down",
                sys::signal::name(*sig)
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

/// Runs `spec` to completion. `t0` is when nsbox started (monotonic ns), for timings.
pub fn run(spec: &SandboxSpec, t0: u64) -> Result<Outcome, SandboxError> {
    let mut marks: Vec<(String, u64)> = vec![("arguments parsed".into(), now_ns())];
    if !rustix::process::geteuid().is_root() {
        return Err(SandboxError::NotRoot);
    }

    // Signals first: from here on Ctrl-C is an event, not a death with state left behind.
    let signals = sys::signal::SignalSet::new(&[
        libc::SIGINT,
        libc::SIGTERM,
        libc::SIGHUP,
        libc::SIGQUIT,
        libc::SIGWINCH,
    ]);
    sys::signal::block(&signals).map_err(io_err("block signals"))?;
    let signalfd = sys::signal::signalfd(&signals).map_err(io_err("create signalfd"))?;

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
    // What the profile hides of the host root is the same for every sandbox: use (or build)
    // the cached layer for it; without it the child builds the same thing in its upper layer.
    let _mask_layer = if plan.shared.is_empty() {
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
    let (stdin_pipe, stdout_pipe, stderr_pipe) = if spec.io.tty {
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
    let winsize = if spec.io.tty {
        [1, 0, 2]
            .into_iter()
            .find_map(|fd| rustix::termios::tcgetwinsize(borrow_std(fd)).ok())
    } else {
        None
    };
    let timer = match spec.limits.timeout {
        Some(limit) => Some(arm_timer(limit).map_err(io_err("arm timeout"))?),
        None => None,
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
            plan: &plan,
            seccomp: &bpf,
            control: control_child.as_fd(),
            exec_status: exec_write.as_fd(),
            stdio: child_stdio,
            cgroup_tasks: early_cgroup.as_ref().map_or(&[][..], |c| c.self_join_fds()),
            late_cgroup: early_cgroup.is_none(),
            late_netns: spec.network != NetworkMode::Host,
            winsize,
        }),
        sys::process::Forked::Parent { pid, pidfd } => (pid, pidfd),
    };
    marks.push(("clone returned".into(), now_ns()));
    // While the child builds its filesystem: its network namespace (needed first), on v1
    // hosts its cgroup, then its user namespace. Step off this CPU so the child, queued here,
    // starts at once instead of after this work.
    let saved_affinity = sys::process::step_aside();
    let mut egress = None;
    match spec.network {
        NetworkMode::None => {
            send_network_namespace(control_parent.as_fd());
            marks.push(("network namespace created".into(), now_ns()));
        }
        NetworkMode::Filtered => {
            // The child may join the namespace at once; the rules, routes and sockets follow
            // while it builds its filesystem, all before the identity that lets it go on.
            if let Some(ns) = send_network_namespace(control_parent.as_fd()) {
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
    let cgroup = match early_cgroup {
        Some(cgroup) => cgroup,
        None => {
            let cgroup = SandboxCgroup::create(&layout, &spec.id, &limits);
            let cgroup = match cgroup {
                Ok(cgroup) => cgroup,
                Err(e) => {
                    let _ = sys::signal::pidfd_kill(pidfd.as_fd(), libc::SIGKILL);
                    let _ = rustix::process::waitid(
                        rustix::process::WaitId::PidFd(pidfd.as_fd()),
                        WaitIdOptions::EXITED,
                    );
                    return Err(e.into());
                }
            };
            crate::cgroup::hold_in_use(&cgroup);
            marks.push(("cgroup created".into(), now_ns()));
            cgroup
        }
    };
    let egress = match egress.transpose() {
        Ok(egress) => {
            send_identity(control_parent.as_fd(), spec, &cgroup, !uses_v2);
            marks.push(("user namespace created".into(), now_ns()));
            egress
        }
        Err(e) => {
            // Instead of its identity the child learns why, and gives up.
            let _ = control::send(
                control_parent.as_fd(),
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
    let wanted = spec.io.json || spec.log_network;
    let egress = match egress.map(|p| p.start(wanted)).transpose() {
        Ok(egress) => egress,
        Err(e) => {
            let _ = sys::signal::pidfd_kill(pidfd.as_fd(), libc::SIGKILL);
            let _ = rustix::process::waitid(
                rustix::process::WaitId::PidFd(pidfd.as_fd()),
                WaitIdOptions::EXITED,
            );
            let _ = cgroup.remove();
            return Err(e.into());
        }
    };
    if egress.is_some() {
        marks.push(("resolver and proxy started".into(), now_ns()));
    }
    sys::process::restore_affinity(saved_affinity);
    let mut warnings: Vec<String> = cgroup.warnings().to_vec();
    // The child's ends belong to the child now.
    drop(control_child);
    drop(exec_write);
    let stdin_dst = stdin_pipe.map(|(r, w)| {
        drop(r);
        w
    });
    let stdout_src = stdout_pipe.map(|(r, w)| {
        drop(w);
        r
    });
    let stderr_src = stderr_pipe.map(|(r, w)| {
        drop(w);
        r
    });
    for fd in [&stdin_dst, &stdout_src, &stderr_src].into_iter().flatten() {
        set_nonblocking(fd.as_fd()).map_err(io_err("configure pipe"))?;
    }
    set_nonblocking(control_parent.as_fd()).map_err(io_err("configure control socket"))?;
    set_nonblocking(exec_read.as_fd()).map_err(io_err("configure pipe"))?;

    let mut sandbox = Running {
        spec,
        t0,
        pid,
        pidfd: Some(pidfd),
        cgroup: Some(cgroup),
        control: Some(control_parent),
        exec_status: Some(exec_read),
        exec_buf: Vec::new(),
        out: stdout_src,
        err: stderr_src,
        stdin_dst,
        stdin_buf: Vec::new(),
        stdin_open: spec.io.stdin,
        stdout: Sink::new(borrow_std(1)),
        stderr: Sink::new(borrow_std(2)),
        maskers: [Masker::new(&spec.secrets), Masker::new(&spec.secrets)],
        chunkers: [Utf8Chunker::default(), Utf8Chunker::default()],
        relayed: 0,
        truncated: false,
        started: false,
        setup_failure: None,
        exec_failure: None,
        workload_status: None,
        init_reaped: false,
        timed_out: false,
        interrupted: None,
        stop_deadline: None,
        marks,
        inner_marks: Vec::new(),
        warnings: Vec::new(),
        terminal: None,
        egress,
        // Names in network events are lowercased: mask the secrets' lowercase forms too.
        event_masker: Masker::new(
            &spec
                .secrets
                .iter()
                .flat_map(|s| [s.clone(), s.to_ascii_lowercase()])
                .collect::<Vec<_>>(),
        ),
    };
    sandbox.warnings.append(&mut warnings);
    let result = sandbox.event_loop(signalfd.as_fd(), timer.as_ref().map(|t| t.as_fd()));
    sandbox.finish(result)
}

fn borrow_std(fd: i32) -> BorrowedFd<'static> {
    match fd {
        0 => rustix::stdio::stdin(),
        1 => rustix::stdio::stdout(),
        _ => rustix::stdio::stderr(),
    }
}

fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let flags =
        rustix::fs::fcntl_getfl(fd).map_err(|e| io::Error::from_raw_os_error(e.raw_os_error()))?;
    rustix::fs::fcntl_setfl(fd, flags | OFlags::NONBLOCK)
        .map_err(|e| io::Error::from_raw_os_error(e.raw_os_error()))
}

fn arm_timer(limit: Duration) -> io::Result<OwnedFd> {
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
    let result = sys::process::create_user_namespace(spec.uid_base, IDS_IN_SANDBOX);
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

/// Restores the caller's terminal settings when dropped.
struct RawTerminal {
    fd: BorrowedFd<'static>,
    saved: rustix::termios::Termios,
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ =
            rustix::termios::tcsetattr(self.fd, rustix::termios::OptionalActions::Now, &self.saved);
    }
}

/// A running sandbox, seen from the host.
struct Running<'a> {
    spec: &'a SandboxSpec,
    t0: u64,
    pid: i32,
    pidfd: Option<OwnedFd>,
    cgroup: Option<SandboxCgroup>,
    control: Option<OwnedFd>,
    exec_status: Option<OwnedFd>,
    exec_buf: Vec<u8>,
    /// The command's stdout (or the pty master with -t).
    out: Option<OwnedFd>,
    err: Option<OwnedFd>,
    stdin_dst: Option<OwnedFd>,
    stdin_buf: Vec<u8>,
    stdin_open: bool,
    stdout: Sink<'static>,
    stderr: Sink<'static>,
    maskers: [Masker; 2],
    chunkers: [Utf8Chunker; 2],
    relayed: u64,
    truncated: bool,
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
    terminal: Option<RawTerminal>,
    /// The filtered network's resolver and proxy (`--net filtered`).
    egress: Option<crate::net::Egress>,
    /// Masks secrets in network events (a name looked up may carry one).
    event_masker: Masker,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Source {
    Signal,
    Init,
    Control,
    ExecStatus,
    Out,
    Err,
    StdinSrc,
    StdinDst,
    SinkOut,
    SinkErr,
    Timer,
    Network,
}

const READ_CHUNK: usize = 64 * 1024;

/// The descriptors one poll waits on, each tagged with what it is.
#[derive(Default)]
struct PollSet<'a> {
    tags: Vec<Source>,
    fds: Vec<PollFd<'a>>,
}

impl<'a> PollSet<'a> {
    fn add(&mut self, tag: Source, fd: BorrowedFd<'a>, flags: PollFlags) {
        self.tags.push(tag);
        self.fds.push(PollFd::from_borrowed_fd(fd, flags));
    }
}

impl Running<'_> {
    fn done(&self) -> bool {
        self.init_reaped
            && self.out.is_none()
            && self.err.is_none()
            && self.exec_status.is_none()
            && self.control.is_none()
    }

    fn event_loop(
        &mut self,
        signalfd: BorrowedFd<'_>,
        mut timer: Option<BorrowedFd<'_>>,
    ) -> Result<(), SandboxError> {
        let stdin = borrow_std(0);
        let mut buf = vec![0u8; READ_CHUNK];
        while !self.done() {
            let mut set = PollSet::default();
            set.add(Source::Signal, signalfd, PollFlags::IN);
            if let (false, Some(pidfd)) = (self.init_reaped, &self.pidfd) {
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
            if let Some(egress) = &self.egress {
                set.add(Source::Network, egress.wake_fd(), PollFlags::IN);
            }
            if let (Some(fd), false) = (&self.out, self.stdout.is_full()) {
                set.add(Source::Out, fd.as_fd(), PollFlags::IN);
            }
            let err_full = if self.spec.io.json {
                self.stdout.is_full()
            } else {
                self.stderr.is_full()
            };
            if let (Some(fd), false) = (&self.err, err_full) {
                set.add(Source::Err, fd.as_fd(), PollFlags::IN);
            }
            if self.stdin_open && self.stdin_dst.is_some() && self.stdin_buf.len() < READ_CHUNK {
                set.add(Source::StdinSrc, stdin, PollFlags::IN);
            }
            if let (Some(fd), false) = (&self.stdin_dst, self.stdin_buf.is_empty()) {
                set.add(Source::StdinDst, fd.as_fd(), PollFlags::OUT);
            }
            if self.stdout.wants_write() {
                set.add(Source::SinkOut, self.stdout.fd(), PollFlags::OUT);
            }
            if self.stderr.wants_write() {
                set.add(Source::SinkErr, self.stderr.fd(), PollFlags::OUT);
            }
            if let Some(fd) = timer {
                set.add(Source::Timer, fd, PollFlags::IN);
            }
            let wait = self.stop_deadline.map(|deadline| {
                let left = deadline.saturating_sub(now_ns());
                rustix::time::Timespec {
                    tv_sec: (left / 1_000_000_000) as _,
                    tv_nsec: (left % 1_000_000_000) as _,
                }
            });
            let PollSet { tags, mut fds } = set;
            match poll(&mut fds, wait.as_ref()) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(errno("wait for events")(e)),
            }
            let ready: Vec<(Source, PollFlags)> = tags
                .iter()
                .zip(fds.iter())
                .filter(|(_, fd)| !fd.revents().is_empty())
                .map(|(tag, fd)| (*tag, fd.revents()))
                .collect();
            drop(fds);
            for (tag, revents) in ready {
                match tag {
                    Source::Signal => self.on_signals(signalfd)?,
                    Source::Init => self.reap_init()?,
                    Source::Control => self.on_control()?,
                    Source::ExecStatus => self.on_exec_status(&mut buf)?,
                    Source::Out => self.on_output(0, &mut buf)?,
                    Source::Err => self.on_output(1, &mut buf)?,
                    Source::StdinSrc => self.on_stdin(&mut buf, revents)?,
                    Source::StdinDst => self.flush_stdin()?,
                    Source::SinkOut => self
                        .stdout
                        .flush_some()
                        .map_err(io_err("write to stdout"))?,
                    Source::SinkErr => self
                        .stderr
                        .flush_some()
                        .map_err(io_err("write to stderr"))?,
                    Source::Network => {
                        let events = self
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
            if self.stdout.is_closed() && self.out.is_some() && !self.spec.io.tty {
                // Nobody reads our stdout any more: close the command's, so it gets SIGPIPE like
                // any writer into a closed pipeline.
                self.out = None;
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
        if let (false, Some(pidfd)) = (self.init_reaped, &self.pidfd) {
            // Killing the pid namespace's init kills every process in the namespace.
            let _ = sys::signal::pidfd_kill(pidfd.as_fd(), libc::SIGKILL);
        }
    }

    fn on_signals(&mut self, signalfd: BorrowedFd<'_>) -> Result<(), SandboxError> {
        while let Some(signal) =
            sys::signal::read_signal(signalfd).map_err(io_err("read signals"))?
        {
            match signal {
                libc::SIGWINCH => {
                    if let (true, Some(master)) = (self.spec.io.tty, &self.out) {
                        for fd in [0, 1, 2] {
                            if let Ok(ws) = rustix::termios::tcgetwinsize(borrow_std(fd)) {
                                let _ = rustix::termios::tcsetwinsize(master, ws);
                                break;
                            }
                        }
                    }
                }
                _ => {
                    if self.init_reaped {
                        continue;
                    }
                    let first = self.interrupted.is_none();
                    self.interrupted.get_or_insert(signal);
                    if first && self.started {
                        // Give the command a chance to end cleanly, like a terminal would.
                        let _ = sys::signal::kill(self.pid, signal);
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
        let Some(pidfd) = &self.pidfd else {
            return Ok(());
        };
        match rustix::process::waitid(
            rustix::process::WaitId::PidFd(pidfd.as_fd()),
            WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
        ) {
            Ok(Some(_)) => {
                self.init_reaped = true;
                self.marks.push(("sandbox ended".into(), now_ns()));
            }
            Ok(None) => {}
            Err(rustix::io::Errno::CHILD) => self.init_reaped = true,
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
                        self.attach_terminal(master)?;
                    }
                }
                (ToSupervisor::Exited { code, signal }, _) => {
                    self.marks.push(("command exited".into(), now_ns()));
                    self.workload_status = Some((code, signal));
                }
            }
        }
    }

    fn attach_terminal(&mut self, master: OwnedFd) -> Result<(), SandboxError> {
        set_nonblocking(master.as_fd()).map_err(io_err("configure terminal"))?;
        if self.spec.io.stdin {
            let dup =
                rustix::io::fcntl_dupfd_cloexec(&master, 3).map_err(errno("configure terminal"))?;
            self.stdin_dst = Some(dup);
            let stdin = borrow_std(0);
            if rustix::termios::isatty(stdin) {
                if let Ok(saved) = rustix::termios::tcgetattr(stdin) {
                    let mut raw = saved.clone();
                    raw.make_raw();
                    if rustix::termios::tcsetattr(
                        stdin,
                        rustix::termios::OptionalActions::Now,
                        &raw,
                    )
                    .is_ok()
                    {
                        self.terminal = Some(RawTerminal { fd: stdin, saved });
                    }
                }
            }
        }
        self.out = Some(master);
        Ok(())
    }

    fn on_exec_status(&mut self, buf: &mut [u8]) -> Result<(), SandboxError> {
        let Some(fd) = &self.exec_status else {
            return Ok(());
        };
        loop {
            match rustix::io::read(fd, &mut *buf) {
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

    fn on_output(&mut self, stream: usize, buf: &mut [u8]) -> Result<(), SandboxError> {
        let src = if stream == 0 { &self.out } else { &self.err };
        let Some(fd) = src else {
            return Ok(());
        };
        let n = match rustix::io::read(fd, &mut *buf) {
            Ok(n) => n,
            Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => return Ok(()),
            // A pty master reports EIO once every slave descriptor is closed.
            Err(rustix::io::Errno::IO) => 0,
            Err(e) => return Err(errno("read the command's output")(e)),
        };
        let mut masked = Vec::with_capacity(n + 16);
        if n == 0 {
            self.maskers[stream].finish(&mut masked);
            if stream == 0 {
                self.out = None;
            } else {
                self.err = None;
            }
        } else {
            self.maskers[stream].push(&buf[..n], &mut masked);
        }
        self.emit(stream, &masked, n == 0);
        Ok(())
    }

    /// Applies the output cap and queues bytes (or JSON events) for the caller.
    fn emit(&mut self, stream: usize, data: &[u8], end: bool) {
        let mut data = data;
        if let Some(limit) = self.spec.limits.max_output {
            let left = limit.bytes().saturating_sub(self.relayed) as usize;
            if data.len() > left {
                data = &data[..left];
                if !self.truncated {
                    self.truncated = true;
                    self.note_truncation(limit);
                }
            }
        }
        self.relayed += data.len() as u64;
        if self.spec.io.json {
            let mut chunks = Vec::new();
            if !data.is_empty() {
                chunks = self.chunkers[stream].push(data);
            }
            if end {
                chunks.extend(self.chunkers[stream].finish());
            }
            for chunk in chunks {
                let event = if stream == 0 {
                    Event::Stdout(chunk)
                } else {
                    Event::Stderr(chunk)
                };
                self.stdout.push(&event.to_line());
            }
        } else if stream == 0 {
            self.stdout.push(data);
        } else {
            self.stderr.push(data);
        }
    }

    /// Queues network events: JSON lines in the `--json` stream, text on stderr with
    /// `--log-network`. They are nsbox's own lines, not the command's output: no output cap.
    fn emit_network(&mut self, events: Vec<crate::net::NetEvent>) {
        for event in events {
            if self.spec.io.json {
                let line = String::from_utf8_lossy(&event.to_json_line()).into_owned();
                self.stdout
                    .push(self.event_masker.mask_str(&line).as_bytes());
            } else if self.spec.log_network {
                let line = event.to_text_line();
                self.stderr
                    .push(self.event_masker.mask_str(&line).as_bytes());
            }
        }
    }

    fn note_truncation(&mut self, limit: ByteSize) {
        if self.spec.io.json {
            self.stdout.push(
                &Event::Truncated {
                    limit: limit.bytes(),
                }
                .to_line(),
            );
        } else {
            self.stderr.push(
                format!(
                    "\nnsbox: output truncated at {limit} (--max-output); further output is dropped while the command runs on\n"
                )
                .as_bytes(),
            );
        }
    }

    fn on_stdin(&mut self, buf: &mut [u8], revents: PollFlags) -> Result<(), SandboxError> {
        let room = READ_CHUNK - self.stdin_buf.len();
        match rustix::io::read(borrow_std(0), &mut buf[..room]) {
            Ok(0) => self.close_stdin(),
            Ok(n) => {
                self.stdin_buf.extend_from_slice(&buf[..n]);
                self.flush_stdin()?;
            }
            Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => {}
            Err(_) if revents.intersects(PollFlags::HUP | PollFlags::ERR | PollFlags::NVAL) => {
                self.close_stdin()
            }
            Err(e) => return Err(errno("read stdin")(e)),
        }
        Ok(())
    }

    fn close_stdin(&mut self) {
        self.stdin_open = false;
        if self.stdin_buf.is_empty() && !self.spec.io.tty {
            // End of input reaches the command as end of file. (A terminal has no end of file:
            // the user types ^D.)
            self.stdin_dst = None;
        }
    }

    fn flush_stdin(&mut self) -> Result<(), SandboxError> {
        let Some(fd) = &self.stdin_dst else {
            self.stdin_buf.clear();
            return Ok(());
        };
        while !self.stdin_buf.is_empty() {
            match rustix::io::write(fd, &self.stdin_buf) {
                Ok(n) => {
                    self.stdin_buf.drain(..n);
                }
                Err(rustix::io::Errno::AGAIN) => return Ok(()),
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::PIPE) | Err(rustix::io::Errno::IO) => {
                    // The command closed its stdin.
                    self.stdin_buf.clear();
                    self.stdin_dst = None;
                    self.stdin_open = false;
                    return Ok(());
                }
                Err(e) => return Err(errno("write to the command's stdin")(e)),
            }
        }
        if !self.stdin_open && !self.spec.io.tty {
            self.stdin_dst = None;
        }
        Ok(())
    }

    /// Tears down whatever is left, then turns the state into an outcome.
    fn finish(mut self, loop_result: Result<(), SandboxError>) -> Result<Outcome, SandboxError> {
        self.terminal = None;
        if loop_result.is_err() {
            self.teardown();
        }
        if let Some(mut egress) = self.egress.take() {
            let events = egress.stop();
            self.emit_network(events);
        }
        let _ = self.stdout.flush_all();
        let _ = self.stderr.flush_all();
        let oom = self
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
            truncated: self.truncated,
            duration: Duration::from_nanos(now_ns().saturating_sub(self.t0)),
            marks,
            warnings: std::mem::take(&mut self.warnings),
            memory_limit: self.spec.limits.memory,
        })
    }

    /// Kills the sandbox if it still runs, reaps it and removes its cgroup. Idempotent.
    fn teardown(&mut self) {
        if let Some(pidfd) = self.pidfd.take() {
            if !self.init_reaped {
                let _ = sys::signal::pidfd_kill(pidfd.as_fd(), libc::SIGKILL);
                let _ = rustix::process::waitid(
                    rustix::process::WaitId::PidFd(pidfd.as_fd()),
                    WaitIdOptions::EXITED,
                );
                self.init_reaped = true;
            }
        }
        if let Some(cgroup) = self.cgroup.take() {
            if let Err(e) = cgroup.remove() {
                self.warnings.push(format!(
                    "could not remove the sandbox's cgroup: {e} — `nsbox prune` removes it later"
                ));
            }
        }
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.teardown();
    }
}
