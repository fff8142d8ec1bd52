//! [`Handle`]: the host's one owner of a living sandbox — its init (pid and pidfd), its
//! control socket, its cgroup, its filtered network and its cached mask layer — with a small
//! method surface and an OCI-shaped [`Lifecycle`]:
//!
//! ```text
//! Creating ──ready──▶ Created ──exec / started──▶ Running
//!     │                  │                          │
//!     └──────────────── kill ───────────────────────┴──▶ Killed ──reaped──▶ Stopped
//!                                                        (any state) ──teardown──▶ TornDown
//! ```
//!
//! Two ways in: [`Handle::launch`] clones a sandbox whose init runs the spec's command at once
//! (`nsbox exec`); [`Handle::create`] builds one whose init waits, and returns once it is
//! ready, so commands can be run in it later with [`Handle::exec`] — the path sessions use,
//! and the one a warm pool or an OCI `create`/`start` pair builds on. Either way the watchers
//! (one-shot run, session supervisor) are policies over the same handle in the one event loop
//! of [`super::event_loop`]: they register the handle's descriptors ([`Handle::register`]) and
//! turn what it reports ([`Handle::on_ready`]) into their own decisions.
//!
//! Teardown (kill, reap, remove the cgroup, stop the network) is idempotent and also runs on
//! drop, so no error path leaves a sandbox behind.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::event::PollFlags;
use rustix::fs::{Mode, OFlags};
use rustix::net::{AddressFamily, SocketFlags, SocketType};
use rustix::process::WaitIdOptions;

use super::control::{self, ExecRequest, ToSandbox, ToSupervisor};
use super::event_loop::PollSet;
use super::setup::{self, ChildSetup};
use super::supervisor::{now_ns, SandboxError};
use crate::cgroup::{
    CgroupError, CgroupLayout, CgroupLimits, CgroupStats, Controller, Placement, SandboxCgroup,
};
use crate::ids::IDS_IN_SANDBOX;
use crate::net::NetEvent;
use crate::profile::NetworkMode;
use crate::rootfs::{self, HostFacts};
use crate::spec::SandboxSpec;
use crate::sys;
use crate::units::ByteSize;

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> SandboxError {
    move |source| SandboxError::Io { what, source }
}

fn errno(what: &'static str) -> impl FnOnce(rustix::io::Errno) -> SandboxError {
    move |e| SandboxError::Io {
        what,
        source: io::Error::from_raw_os_error(e.raw_os_error()),
    }
}

/// What the setup child becomes once the sandbox is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitMode {
    /// Fork the spec's command at once; end when it ends (`nsbox exec`).
    RunCommand,
    /// Wait for commands from the supervisor; end when told to (sessions).
    Serve,
}

/// Where a sandbox is in its life, seen from the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// The setup child builds the sandbox (namespaces, root, network, identity).
    Creating,
    /// Built: namespaces, root, cgroup and network ready; the init waits for a command.
    Created,
    /// A command was started in it (the one-shot's, or a command exec'd into it).
    Running,
    /// Every process of the sandbox was sent SIGKILL; the init is not reaped yet.
    Killed,
    /// The init was reaped (every process of the sandbox is gone); the cgroup may remain.
    Stopped,
    /// Cgroup removed, network stopped, descriptors closed.
    TornDown,
}

/// What moves a sandbox along its [`Lifecycle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The init reported the sandbox built (`Ready`).
    Ready,
    /// A command started (`Started`, or an exec request sent).
    Started,
    Kill,
    Reaped,
    Teardown,
}

impl Lifecycle {
    /// The state after `t`. Late news never moves a sandbox backwards: a kill after the init
    /// was reaped, or a start report after a kill, leaves the state as it is.
    pub fn after(self, t: Transition) -> Lifecycle {
        use Lifecycle::*;
        match (self, t) {
            (_, Transition::Teardown) | (TornDown, _) => TornDown,
            (_, Transition::Reaped) | (Stopped, _) => Stopped,
            (_, Transition::Kill) | (Killed, _) => Killed,
            (Creating, Transition::Ready) => Created,
            (_, Transition::Started) => Running,
            (state, Transition::Ready) => state,
        }
    }

    /// The state's name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Lifecycle::Creating => "being created",
            Lifecycle::Created => "created",
            Lifecycle::Running => "running",
            Lifecycle::Killed => "killed",
            Lifecycle::Stopped => "stopped",
            Lifecycle::TornDown => "torn down",
        }
    }

    /// Whether a command may be started in the sandbox now.
    pub fn takes_commands(self) -> bool {
        matches!(self, Lifecycle::Created | Lifecycle::Running)
    }

    /// Whether the init may still be alive (not reaped).
    pub fn init_alive(self) -> bool {
        matches!(
            self,
            Lifecycle::Creating | Lifecycle::Created | Lifecycle::Running | Lifecycle::Killed
        )
    }
}

/// The descriptors of a handle a policy waits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandleSource {
    /// Messages from the init.
    Control,
    /// The init's pidfd: readable once it exited.
    Init,
    /// The filtered network's event channel.
    Network,
}

/// What a ready [`HandleSource`] brought.
#[derive(Debug)]
pub enum HandleEvent {
    Message(ToSupervisor, Vec<OwnedFd>),
    /// The init's end of the control socket is closed (it exited).
    ControlClosed,
    /// The init was reaped: every process of the sandbox is gone.
    InitEnded,
    Network(Vec<NetEvent>),
}

/// Why a command could not be given to a sandbox.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    #[error("the sandbox takes no commands now (it is {})", .0.name())]
    NotAccepting(Lifecycle),
    #[error("the sandbox is gone: {0}")]
    Gone(io::Error),
}

/// A living sandbox, owned by the host. Dropping it tears the sandbox down.
#[derive(Debug)]
pub struct Handle {
    id: String,
    pid: i32,
    pidfd: Option<OwnedFd>,
    /// The control socket to the init (non-blocking), until the init closed it.
    control: Option<OwnedFd>,
    cgroup: Option<SandboxCgroup>,
    /// The overlay's upper directory (O_PATH), for sandboxes that serve (`nsbox commit`).
    upper: Option<OwnedFd>,
    /// The filtered network's resolver and proxy (`--net filtered`).
    egress: Option<crate::net::Egress>,
    state: Lifecycle,
    /// The cached mask layer and idmapped image layers the plan names, kept while the
    /// sandbox uses them.
    _plan_hold: rootfs::PlanHold,
}

/// The host's ends of the one-shot command's streams (`InitMode::RunCommand`; all `None` with
/// a terminal, whose master arrives with the start report, and for sandboxes that serve).
#[derive(Debug, Default)]
pub struct CommandStreams {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
    /// The exec-status pipe's read end (non-blocking).
    pub status: Option<OwnedFd>,
}

/// A sandbox just launched: the handle, the one-shot command's streams, what setup so far
/// measured and warned about.
#[derive(Debug)]
pub struct Launch {
    pub handle: Handle,
    pub streams: CommandStreams,
    pub marks: Vec<(String, u64)>,
    pub warnings: Vec<String>,
}

impl Handle {
    /// Creates a sandbox that waits for commands, and returns once it is built (`Created`):
    /// run them with [`Handle::exec`]. Marks and warnings of the setup come with it.
    pub fn create(spec: &SandboxSpec) -> Result<Launch, SandboxError> {
        let mut launch = Handle::launch(spec, InitMode::Serve, Vec::new())?;
        let ready = launch.handle.wait_ready()?;
        launch.marks.extend(ready.marks);
        launch.warnings.extend(ready.warnings);
        Ok(launch)
    }

    /// The sandbox's id (its cgroup's and its directories' name).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The init's pid in the host's pid namespace.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    pub fn state(&self) -> Lifecycle {
        self.state
    }

    fn advance(&mut self, t: Transition) {
        self.state = self.state.after(t);
    }

    /// Whether the init's end of the control socket may still have something to say.
    pub fn control_open(&self) -> bool {
        self.control.is_some()
    }

    /// Waits until a sandbox launched to serve is built (or for the reason it is not).
    pub fn wait_ready(&mut self) -> Result<control::Ready, SandboxError> {
        let control = self
            .control
            .as_ref()
            .ok_or_else(|| SandboxError::Died("the sandbox's control socket is closed".into()))?;
        match control::wait_ready(control.as_fd()) {
            Ok(mut ready) => {
                self.upper = ready.upper.take();
                self.advance(Transition::Ready);
                Ok(ready)
            }
            Err(control::ChannelError::Failed(failure)) => Err(SandboxError::Setup(failure)),
            Err(control::ChannelError::Closed { .. }) => Err(SandboxError::Setup(
                control::StepFailure::new("start", "the sandbox ended before it was ready"),
            )),
            Err(e) => Err(SandboxError::Died(e.to_string())),
        }
    }

    fn send(&self, msg: &ToSandbox, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let control = self.control.as_ref().ok_or_else(|| {
            io::Error::new(io::ErrorKind::BrokenPipe, "the control socket is closed")
        })?;
        control::send(control.as_fd(), msg, fds)
    }

    /// Runs a command in a sandbox that serves: its streams and status pipe are attached
    /// (see [`ExecRequest`]); the init answers `ExecStarted` (or `ExecRefused`), later
    /// `ExecEnded`, through [`Handle::on_ready`].
    pub fn exec(
        &mut self,
        request: ExecRequest,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), HandleError> {
        if !self.state.takes_commands() {
            return Err(HandleError::NotAccepting(self.state));
        }
        self.send(&ToSandbox::Exec(request), fds)
            .map_err(HandleError::Gone)?;
        self.advance(Transition::Started);
        Ok(())
    }

    /// Sends `signal` to the process group of the command `exec_id` (sandboxes that serve).
    pub fn signal_command(&self, exec_id: u64, signal: i32) {
        let _ = self.send(&ToSandbox::Signal { exec_id, signal }, &[]);
    }

    /// Sends `signal` to every process of the sandbox but its init (sandboxes that serve).
    pub fn broadcast(&self, signal: i32) {
        let _ = self.send(&ToSandbox::Broadcast { signal }, &[]);
    }

    /// Sends `signal` to the init, which passes it to the command it runs (one-shot).
    pub fn signal_init(&self, signal: i32) {
        if let (true, Some(pidfd)) = (self.state.init_alive(), &self.pidfd) {
            let _ = sys::signal::pidfd_kill(pidfd.as_fd(), signal);
        }
    }

    /// Kills every process of the sandbox (killing a pid namespace's init kills all of it).
    pub fn kill(&mut self) {
        if let (true, Some(pidfd)) = (self.state.init_alive(), &self.pidfd) {
            let _ = sys::signal::pidfd_kill(pidfd.as_fd(), libc::SIGKILL);
            self.thaw_to_die();
            self.advance(Transition::Kill);
        }
    }

    /// Freezes every process of the sandbox (`nsbox pause`): they keep their memory but are
    /// not scheduled. Commands cannot be started meanwhile (the init is frozen too).
    pub fn freeze(&self) -> Result<(), CgroupError> {
        self.cgroup.as_ref().ok_or(CgroupError::NoFreezer)?.freeze()
    }

    /// Lets a frozen sandbox run again.
    pub fn thaw(&self) -> Result<(), CgroupError> {
        self.cgroup.as_ref().ok_or(CgroupError::NoFreezer)?.thaw()
    }

    /// Whether the sandbox is frozen now (`false` without a freezer or once it ended).
    pub fn is_frozen(&self) -> bool {
        self.cgroup
            .as_ref()
            .and_then(|c| c.is_frozen().ok().flatten())
            .unwrap_or(false)
    }

    /// A frozen task acts on a SIGKILL only once thawed (cgroup v1), and the pid namespace's
    /// init must run to kill the rest: thaw after the kill was sent, so no user code runs.
    fn thaw_to_die(&self) {
        if let Some(c) = &self.cgroup {
            if c.is_frozen().ok().flatten().unwrap_or(false) {
                let _ = c.thaw();
            }
        }
    }

    /// Reaps the init if it exited; true once it has been.
    pub fn try_reap(&mut self) -> Result<bool, SandboxError> {
        let Some(pidfd) = &self.pidfd else {
            return Ok(!self.state.init_alive());
        };
        match rustix::process::waitid(
            rustix::process::WaitId::PidFd(pidfd.as_fd()),
            WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
        ) {
            Ok(Some(_)) | Err(rustix::io::Errno::CHILD) => {
                self.pidfd = None;
                self.advance(Transition::Reaped);
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(e) => Err(errno("wait for the sandbox")(e)),
        }
    }

    /// The filtered network's events since the last call (secrets not yet masked).
    pub fn take_network_events(&mut self) -> Vec<NetEvent> {
        self.egress
            .as_mut()
            .map(|e| e.take_events())
            .unwrap_or_default()
    }

    /// Stops the filtered network's resolver and proxy; returns their last events.
    pub fn stop_network(&mut self) -> Vec<NetEvent> {
        self.egress.take().map(|mut e| e.stop()).unwrap_or_default()
    }

    /// Processes the kernel's OOM killer killed in the sandbox so far.
    pub fn oom_kills(&self) -> u64 {
        self.cgroup
            .as_ref()
            .and_then(|c| c.oom_kills().ok())
            .unwrap_or(0)
    }

    /// The sandbox cgroup's counters (None once it is removed or when unreadable).
    pub fn stats(&self) -> Option<CgroupStats> {
        self.cgroup.as_ref().and_then(|c| c.stats().ok())
    }

    /// The sandbox's root directory (O_PATH), while its init lives.
    pub fn open_root(&self) -> io::Result<OwnedFd> {
        if self.pidfd.is_none() || !self.state.init_alive() {
            return Err(io::Error::other("the sandbox has ended"));
        }
        // The init is alive (we hold its pidfd and have not reaped it), so the pid is its.
        rustix::fs::open(
            format!("/proc/{}/root", self.pid).as_str(),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io::Error::from_raw_os_error(e.raw_os_error()))
    }

    /// The sandbox's filesystem as it is, kept past the end of its processes: its root
    /// directory and its mount namespace. While the namespace descriptor is open the kernel
    /// keeps every mount of the sandbox attached, so the root still leads into /sandbox, /tmp
    /// and the mounts (a root directory alone would be left without them). For `exec --out`.
    pub fn keep_filesystem(&self) -> io::Result<KeptFilesystem> {
        let root = self.open_root()?;
        let mount_ns = rustix::fs::open(
            format!("/proc/{}/ns/mnt", self.pid).as_str(),
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io::Error::from_raw_os_error(e.raw_os_error()))?;
        // Still the init's: it was alive when the root was opened and is not reaped yet.
        if !self.state.init_alive() {
            return Err(io::Error::other("the sandbox has ended"));
        }
        Ok(KeptFilesystem {
            root,
            _mount_ns: mount_ns,
        })
    }

    /// The overlay's upper directory (O_PATH), while the init lives: what the sandbox changed
    /// in its root (whiteouts and all), for `nsbox commit`.
    pub fn open_upper(&self) -> io::Result<OwnedFd> {
        match &self.upper {
            Some(upper) if self.state.init_alive() => upper.try_clone(),
            _ => Err(io::Error::other(
                "the sandbox's upper layer is not available",
            )),
        }
    }

    /// Adds the handle's descriptors to a poll: the control socket first (so a report the
    /// init sent before it exited is read before its end), then the init, then the network.
    pub fn register<'a, T: Copy>(
        &'a self,
        set: &mut PollSet<'a, T>,
        tag: impl Fn(HandleSource) -> T,
    ) {
        if let Some(control) = &self.control {
            set.add(tag(HandleSource::Control), control.as_fd(), PollFlags::IN);
        }
        if let (true, Some(pidfd)) = (self.state.init_alive(), &self.pidfd) {
            set.add(tag(HandleSource::Init), pidfd.as_fd(), PollFlags::IN);
        }
        if let Some(egress) = &self.egress {
            set.add(tag(HandleSource::Network), egress.wake_fd(), PollFlags::IN);
        }
    }

    /// Handles a ready source: reads every waiting message, reaps the init, or drains the
    /// network's events. Reports move the lifecycle (`Ready`, `Started`).
    pub fn on_ready(&mut self, source: HandleSource) -> Result<Vec<HandleEvent>, SandboxError> {
        let mut events = Vec::new();
        match source {
            HandleSource::Control => {
                while let Some(fd) = &self.control {
                    match control::recv::<ToSupervisor>(fd.as_fd()) {
                        Ok(Some((msg, fds))) => {
                            match msg {
                                ToSupervisor::Ready { .. } => self.advance(Transition::Ready),
                                ToSupervisor::Started { .. } => self.advance(Transition::Started),
                                _ => {}
                            }
                            events.push(HandleEvent::Message(msg, fds));
                        }
                        Ok(None) => {
                            self.control = None;
                            events.push(HandleEvent::ControlClosed);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        // The init ended with our messages unread: the kernel reports that once,
                        // ahead of what it had already sent us (say, why setup failed).
                        Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) => {}
                        Err(e) => {
                            self.control = None;
                            return Err(io_err("read from the sandbox")(e));
                        }
                    }
                }
            }
            HandleSource::Init => {
                if self.try_reap()? {
                    events.push(HandleEvent::InitEnded);
                }
            }
            HandleSource::Network => events.push(HandleEvent::Network(self.take_network_events())),
        }
        Ok(events)
    }

    /// Charges this process, the sandbox's own supervisor, to the sandbox's CPU limit and
    /// usage where the host allows it safely (see `SandboxCgroup::charge_supervisor`). Never
    /// for a process that supervises several sandboxes (`nsbox serve`).
    pub fn charge_supervisor(&mut self) -> bool {
        match self.cgroup.as_mut().map(SandboxCgroup::charge_supervisor) {
            Some(Ok(charged)) => charged,
            Some(Err(e)) => {
                tracing::warn!(id = %self.id, "supervisor CPU not charged to the sandbox: {e}");
                false
            }
            None => false,
        }
    }

    /// Kills the sandbox if it still runs, reaps it, stops its network and removes its cgroup.
    /// Idempotent; returns a warning when the cgroup could not be removed.
    pub fn teardown(&mut self) -> Option<String> {
        // Its thread ends with it (what it still had to report is dropped).
        drop(self.egress.take());
        if let Some(pidfd) = self.pidfd.take() {
            let _ = sys::signal::pidfd_kill(pidfd.as_fd(), libc::SIGKILL);
            self.thaw_to_die();
            let _ = rustix::process::waitid(
                rustix::process::WaitId::PidFd(pidfd.as_fd()),
                WaitIdOptions::EXITED,
            );
        }
        self.control = None;
        self.advance(Transition::Teardown);
        let cgroup = self.cgroup.take()?;
        cgroup.remove().err().map(|e| {
            format!("could not remove the sandbox's cgroup: {e} — `nsbox prune` removes it later")
        })
    }
}

/// A sandbox's filesystem held open after its processes ended (see
/// [`Handle::keep_filesystem`]); released when dropped.
#[derive(Debug)]
pub struct KeptFilesystem {
    /// The sandbox's root directory (O_PATH).
    pub root: OwnedFd,
    _mount_ns: OwnedFd,
}

impl Drop for Handle {
    fn drop(&mut self) {
        let _ = self.teardown();
    }
}

impl Handle {
    /// Creates the sandbox for `spec`: cgroup, plan, clone3 into new namespaces, and (in parallel
    /// with the child's filesystem work) the network namespace, the v1 cgroup and the user
    /// namespace. Returns as soon as the child has everything it needs (`Creating`); the
    /// caller's loop then watches the control socket for the start (or the failure), or
    /// [`Handle::wait_ready`] waits for a sandbox that serves. `marks` collects timings.
    pub fn launch(
        spec: &SandboxSpec,
        mode: InitMode,
        mut marks: Vec<(String, u64)>,
    ) -> Result<Launch, SandboxError> {
        if !rustix::process::geteuid().is_root() {
            return Err(SandboxError::NotRoot);
        }
        let layout = CgroupLayout::detect()?;
        // Sandboxes that serve (sessions) can be paused; one-shots skip the freezer's directory.
        let freezable = matches!(mode, InitMode::Serve);
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
        // Made before clone on v2, after it on v1 (see above).
        let make_cgroup = |marks: &mut Vec<(String, u64)>| {
            let cgroup = SandboxCgroup::create_at(
                &layout,
                &spec.id,
                &limits,
                freezable,
                spec.cgroup_at.as_ref(),
            )?;
            // While this supervisor lives, `nsbox prune` sees the cgroup as in use.
            crate::cgroup::hold_in_use(&cgroup);
            marks.push(("cgroup created".into(), now_ns()));
            crate::fault::phase("cgroup-created", &spec.id);
            Ok::<_, CgroupError>(cgroup)
        };
        let early_cgroup = if uses_v2 {
            Some(make_cgroup(&mut marks)?)
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
        let (plan, plan_hold) = rootfs::final_plan(spec, &host)
            .map_err(io_err("show the image's layers in the sandbox's id range"))?;
        let bpf = spec.seccomp.compile()?;
        marks.push(("plan and seccomp ready".into(), now_ns()));

        let (control_parent, control_child) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(errno("create control socket"))?;
        let (exec_read, exec_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(errno("create pipe"))?;
        let devnull = rustix::fs::open("/dev/null", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
            .map_err(errno("open /dev/null"))?;
        let pipe = || {
            rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(errno("create pipe"))
        };
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
                .find_map(|fd| rustix::termios::tcgetwinsize(crate::relay::stream::std_fd(fd)).ok())
        } else {
            None
        };

        // A pod's IPC and UTS namespaces (the OCI runtime's paths), joined by the child at once.
        let mut joined = Vec::new();
        for (path, flag, what) in [
            (
                &spec.ipc_namespace,
                sys::process::flags::NEWIPC,
                "open the IPC namespace to join",
            ),
            (
                &spec.uts_namespace,
                sys::process::flags::NEWUTS,
                "open the UTS namespace to join",
            ),
        ] {
            if let Some(path) = path {
                joined.push((
                    sys::process::open_namespace(path).map_err(io_err(what))?,
                    flag,
                ));
            }
        }
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
                join: &joined,
            }),
            sys::process::Forked::Parent { pid, pidfd } => (pid, pidfd),
        };
        marks.push(("clone returned".into(), now_ns()));
        crate::fault::phase("cloned", &spec.id);
        let mut handle = Handle {
            id: spec.id.clone(),
            pid,
            pidfd: Some(pidfd),
            cgroup: early_cgroup,
            upper: None,
            control: Some(control_parent),
            egress: None,
            state: Lifecycle::Creating,
            _plan_hold: plan_hold,
        };
        let mut warnings = Vec::new();
        // While the child builds its filesystem: its network namespace (needed first), on v1
        // hosts its cgroup, then its user namespace. Step off this CPU so the child, queued here,
        // starts at once instead of after this work.
        let saved_affinity = sys::process::step_aside();
        let control_fd = handle
            .control
            .as_ref()
            .map(|c| c.as_fd())
            .ok_or_else(|| SandboxError::Died("control socket missing".into()))?;
        let mut egress = None;
        match spec.network {
            NetworkMode::None => match &spec.net_namespace {
                // A pod's: joined, not made (its owner set it up and keeps it).
                Some(path) => {
                    send_joined_namespace(control_fd, path);
                    marks.push(("network namespace opened".into(), now_ns()));
                }
                None => {
                    send_network_namespace(control_fd);
                    marks.push(("network namespace created".into(), now_ns()));
                }
            },
            NetworkMode::Filtered => {
                // The child may join the namespace at once; the rules, routes and sockets follow
                // while it builds its filesystem, all before the identity that lets it go on.
                // An OCI pod's may be one made elsewhere, joined (its filter set up the same).
                let ns = match &spec.net_namespace {
                    Some(path) => send_joined_namespace(control_fd, path),
                    None => send_network_namespace(control_fd),
                };
                if let Some(ns) = ns {
                    marks.push(("network namespace created".into(), now_ns()));
                    egress = Some(crate::net::prepare_filtered_namespace(
                        ns.as_fd(),
                        &spec.egress,
                        spec.pod_egress,
                    ));
                    marks.push(("filtered network prepared".into(), now_ns()));
                }
            }
            NetworkMode::Host => {}
        }
        if handle.cgroup.is_none() {
            // On failure, dropping the handle kills and reaps the child.
            handle.cgroup = Some(make_cgroup(&mut marks)?);
        }
        crate::fault::phase("network-prepared", &spec.id);
        let egress = match egress.transpose() {
            Ok(egress) => {
                if let Some(cgroup) = &handle.cgroup {
                    send_identity(control_fd, spec, cgroup, !uses_v2);
                    warnings = cgroup.warnings().to_vec();
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
        // On failure, dropping the handle kills and reaps the child and removes the cgroup.
        handle.egress = egress.map(|p| p.start(wanted)).transpose()?;
        if handle.egress.is_some() {
            marks.push(("resolver and proxy started".into(), now_ns()));
        }
        sys::process::restore_affinity(saved_affinity);
        // The child's ends belong to the child now.
        drop(control_child);
        drop(exec_write);
        let streams = CommandStreams {
            stdin: stdin_pipe.map(|(r, w)| {
                drop(r);
                w
            }),
            stdout: stdout_pipe.map(|(r, w)| {
                drop(w);
                r
            }),
            stderr: stderr_pipe.map(|(r, w)| {
                drop(w);
                r
            }),
            // A sandbox that serves gets a status pipe with each command.
            status: (mode == InitMode::RunCommand).then_some(exec_read),
        };
        for fd in [&handle.control, &streams.status].into_iter().flatten() {
            crate::relay::stream::set_nonblocking(fd.as_fd())
                .map_err(io_err("configure the sandbox's descriptors"))?;
        }
        crate::fault::phase("launched", &spec.id);
        Ok(Launch {
            handle,
            streams,
            marks,
            warnings,
        })
    }
}

/// Creates the sandbox's user namespace (mapped) and sends it to the child, with the cgroup's
/// `tasks` descriptors when the child joins its cgroup late (cgroup v1 hosts).
fn send_identity(socket: BorrowedFd<'_>, spec: &SandboxSpec, cgroup: &SandboxCgroup, late: bool) {
    // A sandbox with its own host id range gets a namespace owned by that range, not by root
    // (crate::idrange); its creator is reaped before this returns.
    let result = match spec.userns_owner {
        Some(owner) => crate::idrange::create_user_namespace(spec.uid_base, IDS_IN_SANDBOX, owner)
            .map(|(userns, creator)| (userns, (Some(creator), None))),
        None => sys::process::create_user_namespace(spec.uid_base, IDS_IN_SANDBOX)
            .map(|(userns, helper)| (userns, (None, Some(helper)))),
    };
    let _ = match result {
        Ok((userns, helper)) => {
            let mut fds = vec![userns.as_fd()];
            if late {
                fds.extend(cgroup.self_join_fds().iter().map(|f| f.as_fd()));
            }
            let sent = control::send(socket, &ToSandbox::Identity, &fds);
            // The creator's exit and reaping overlap the child's next steps.
            drop(helper);
            sent
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
    send_namespace(socket, crate::net::create_isolated_namespace())
}

/// Opens the existing network namespace at `path` and sends it to the child, which joins it
/// (`setns` with CLONE_NEWNET refuses a namespace of another type); a failure to open it is
/// the child's failure to report, as for a new one.
fn send_joined_namespace(socket: BorrowedFd<'_>, path: &std::path::Path) -> Option<OwnedFd> {
    send_namespace(socket, crate::net::open_namespace(path))
}

fn send_namespace(
    socket: BorrowedFd<'_>,
    ns: Result<OwnedFd, crate::net::NetError>,
) -> Option<OwnedFd> {
    match ns {
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

#[cfg(test)]
mod tests {
    use super::Lifecycle::*;
    use super::Transition as T;

    #[test]
    fn a_sandbox_that_serves_goes_created_then_running() {
        let s = Creating.after(T::Ready);
        assert_eq!(s, Created);
        assert!(s.takes_commands());
        let s = s.after(T::Started);
        assert_eq!(s, Running);
        assert!(s.takes_commands());
        assert_eq!(s.after(T::Ready), Running, "a late ready changes nothing");
    }

    #[test]
    fn a_one_shot_goes_from_creating_to_running() {
        assert_eq!(Creating.after(T::Started), Running);
        assert!(!Creating.takes_commands(), "not before it is built");
    }

    #[test]
    fn the_end_is_kill_then_reap_then_teardown_and_never_goes_back() {
        for start in [Creating, Created, Running] {
            let killed = start.after(T::Kill);
            assert_eq!(killed, Killed);
            assert!(killed.init_alive() && !killed.takes_commands());
            assert_eq!(killed.after(T::Started), Killed);
            assert_eq!(killed.after(T::Ready), Killed);
            let stopped = killed.after(T::Reaped);
            assert_eq!(stopped, Stopped);
            assert!(!stopped.init_alive());
            assert_eq!(stopped.after(T::Kill), Stopped);
            assert_eq!(stopped.after(T::Started), Stopped);
            assert_eq!(stopped.after(T::Teardown), TornDown);
        }
        // The init may end by itself (the command ended, or the OOM killer), without a kill.
        assert_eq!(Running.after(T::Reaped), Stopped);
        for t in [T::Ready, T::Started, T::Kill, T::Reaped, T::Teardown] {
            assert_eq!(TornDown.after(t), TornDown, "teardown is final");
        }
        // Teardown from any state: also the error paths' way out.
        for s in [Creating, Created, Running, Killed, Stopped] {
            assert_eq!(s.after(T::Teardown), TornDown);
        }
    }
}
