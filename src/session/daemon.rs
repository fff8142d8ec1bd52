//! A session's supervisor: the small process that owns one living sandbox (its cgroup, its
//! init, its network) and serves the nsbox commands that use it. There is no daemon for all
//! sessions: `nsbox create` forks one supervisor per session, which detaches and is found
//! through the session's directory (lock, socket, record).
//!
//! If the supervisor dies, the sandbox's init gets its parent-death signal and every process
//! of the sandbox dies with it; `nsbox prune` then removes what is left (cgroup, directory).

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rustix::event::PollFlags;
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
use rustix::process::WaitIdOptions;
use serde::{Deserialize, Serialize};

use super::protocol::{Reply, Request, SessionStats};
use super::state::{now_secs, SessionRecord, SessionStore, Stopped};
use super::SessionError;
use crate::profile::RootChoice;
use crate::sandbox::control::{self, ExecRequest, ToSandbox, ToSupervisor};
use crate::sandbox::supervisor::{launch, now_ns, InitMode, Launched, PollSet};
use crate::spec::SandboxSpec;
use crate::sys;

/// How often a stopping session checks whether its processes are gone.
const STOP_POLL: Duration = Duration::from_millis(20);

/// What the supervisor tells `nsbox create` once the sandbox is up (or failed).
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case")]
enum ReadyMessage {
    Ready { record: Box<SessionRecord> },
    Failed { phase: String, message: String },
}

/// A session that is up but not yet confirmed: unless [`PendingSession::commit`] is called,
/// its supervisor tears it down (also when this process dies first), so an interrupted
/// `nsbox create` never leaves a session nobody knows about.
#[derive(Debug)]
pub struct PendingSession {
    ack: OwnedFd,
}

impl PendingSession {
    pub fn commit(self) {
        let _ = rustix::io::write(&self.ack, b"ok");
    }
    /// Tears the session down (and removes it).
    pub fn abort(self) {}
}

/// Starts a session for `spec`: forks its supervisor, waits until the sandbox is ready.
pub fn start(
    spec: &SandboxSpec,
    name: Option<&str>,
    max_age: Option<Duration>,
    store: &SessionStore,
) -> Result<(SessionRecord, PendingSession), SessionError> {
    let pipe = || {
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(|e| {
            SessionError::Io(
                "create a pipe",
                io::Error::from_raw_os_error(e.raw_os_error()),
            )
        })
    };
    let (ready_r, ready_w) = pipe()?;
    let (ack_r, ack_w) = pipe()?;
    let pid =
        sys::process::fork().map_err(|e| SessionError::Io("fork the session supervisor", e))?;
    if pid == 0 {
        drop(ready_r);
        drop(ack_w);
        let code = supervise(spec, name, max_age, store, ready_w, ack_r);
        sys::process::exit_now(code);
    }
    drop(ready_w);
    drop(ack_r);
    let mut text = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match rustix::io::read(&ready_r, &mut buf) {
            Ok(0) => break,
            Ok(n) => text.extend_from_slice(&buf[..n]),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                return Err(SessionError::Io(
                    "read from the session supervisor",
                    io::Error::from_raw_os_error(e.raw_os_error()),
                ))
            }
        }
    }
    match serde_json::from_slice::<ReadyMessage>(&text) {
        Ok(ReadyMessage::Ready { record }) => Ok((*record, PendingSession { ack: ack_w })),
        Ok(ReadyMessage::Failed { phase, message }) => Err(SessionError::Start { phase, message }),
        Err(_) => Err(SessionError::Start {
            phase: "setup".into(),
            message: "the session supervisor ended before the sandbox was ready".into(),
        }),
    }
}

fn report(ready: &OwnedFd, message: &ReadyMessage) {
    if let Ok(bytes) = serde_json::to_vec(message) {
        let _ = rustix::io::write(ready, &bytes);
    }
}

/// The supervisor process: returns its exit code.
fn supervise(
    spec: &SandboxSpec,
    name: Option<&str>,
    max_age: Option<Duration>,
    store: &SessionStore,
    ready: OwnedFd,
    ack: OwnedFd,
) -> i32 {
    // Detach from the caller's session and terminal.
    let _ = rustix::process::setsid();
    let _ = rustix::process::chdir("/");
    if let Ok(null) = rustix::fs::open(
        "/dev/null",
        rustix::fs::OFlags::RDWR,
        rustix::fs::Mode::empty(),
    ) {
        for target in 0..3 {
            let _ = sys::fs::dup_onto(null.as_fd(), target);
        }
    }
    let signals =
        sys::signal::SignalSet::new(&[libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGPIPE]);
    let signalfd = match sys::signal::block(&signals).and_then(|()| sys::signal::signalfd(&signals))
    {
        Ok(fd) => fd,
        Err(e) => {
            report(
                &ready,
                &ReadyMessage::Failed {
                    phase: "setup".into(),
                    message: format!("signals: {e}"),
                },
            );
            return crate::exit::NSBOX_FAILED;
        }
    };
    let fail = |phase: &str, message: String| {
        report(
            &ready,
            &ReadyMessage::Failed {
                phase: phase.into(),
                message,
            },
        );
        crate::exit::NSBOX_FAILED
    };
    let lock = match store.create(&spec.id, name) {
        Ok(lock) => lock,
        Err(e) => return fail("setup", e.to_string()),
    };
    // From here on the directory exists: remove it again on any failure before "ready".
    let cleanup = |msg: String| {
        let _ = store.remove_dir(&spec.id);
        if let Some(name) = name {
            store.release_name(name, &spec.id);
        }
        fail("setup", msg)
    };
    if let Ok(log) = rustix::fs::open(
        store.log(&spec.id),
        rustix::fs::OFlags::WRONLY
            | rustix::fs::OFlags::CREATE
            | rustix::fs::OFlags::APPEND
            | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::from_raw_mode(0o600),
    ) {
        let _ = sys::fs::dup_onto(log.as_fd(), 2);
    }
    let mut record = SessionRecord {
        id: spec.id.clone(),
        name: name.map(str::to_string),
        created: now_secs(),
        root: match (&spec.image, &spec.root) {
            (Some(image), _) => format!("image:{}", image.reference),
            (None, RootChoice::Host) => "host".to_string(),
            (None, RootChoice::Dir(d)) => format!("dir:{}", d.display()),
        },
        profile: spec.profile_name.clone(),
        network: spec.network.as_str().to_string(),
        memory: spec.limits.memory.map(|m| m.bytes()),
        cpu_millis: spec.limits.cpus.map(|c| c.0),
        pids: spec.limits.pids,
        uid: spec.uid,
        gid: spec.gid,
        max_age: max_age.map(|d| d.as_secs().max(1)),
        supervisor_pid: std::process::id(),
        init_pid: 0,
        workdir: spec.workdir.clone(),
        max_output: spec.limits.max_output.map(|m| m.bytes()),
        stopped: None,
    };
    if let Err(e) = store.write_record(&record) {
        return cleanup(e.to_string());
    }
    let socket_path = store.socket(&spec.id);
    let listener = match listen(&socket_path) {
        Ok(l) => l,
        Err(e) => return cleanup(format!("listen on {}: {e}", socket_path.display())),
    };
    let mut launched = match launch(spec, InitMode::Serve, Vec::new()) {
        Ok(l) => l,
        Err(e) => return cleanup(e.to_string()),
    };
    if let Err(message) = wait_ready(&mut launched) {
        drop(launched);
        return cleanup(message);
    }
    record.init_pid = launched.pid;
    if let Err(e) = store.write_record(&record) {
        drop(launched);
        return cleanup(e.to_string());
    }
    report(
        &ready,
        &ReadyMessage::Ready {
            record: Box::new(record.clone()),
        },
    );
    drop(ready);
    tracing::info!(id = %spec.id, "session ready");
    // The CLI's and the start-up's code pages are done with (see the function).
    sys::mem::release_code_pages();

    let mut daemon = Daemon {
        spec,
        store,
        record,
        launched,
        listener,
        socket_path,
        clients: Vec::new(),
        next_client: 0,
        execs: BTreeMap::new(),
        next_exec: 1,
        ack: Some(ack),
        max_age,
        last_activity: Instant::now(),
        stopping: None,
        remove_on_exit: false,
        init_gone: false,
        stop_reason: None,
        _lock: lock,
    };
    daemon.run(signalfd.as_fd());
    daemon.finish();
    0
}

/// Binds the session's socket (root only: its directory is 0700).
fn listen(path: &std::path::Path) -> io::Result<OwnedFd> {
    let err = |e: rustix::io::Errno| io::Error::from_raw_os_error(e.raw_os_error());
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )
    .map_err(err)?;
    let addr = SocketAddrUnix::new(path).map_err(err)?;
    rustix::net::bind(&fd, &addr).map_err(err)?;
    rustix::net::listen(&fd, 64).map_err(err)?;
    Ok(fd)
}

/// Waits for the init's "ready" (or the reason setup failed).
fn wait_ready(launched: &mut Launched) -> Result<(), String> {
    let control = launched.control.as_ref().ok_or("no control socket")?;
    loop {
        let mut set = PollSet::new();
        set.add(0, control.as_fd(), PollFlags::IN);
        if let Some(pidfd) = &launched.pidfd {
            set.add(1, pidfd.as_fd(), PollFlags::IN);
        }
        let ready = set.wait(None).map_err(|e| e.to_string())?;
        for (tag, _) in ready {
            if tag == 1 {
                // The init ended; drain what it said first.
                if let Ok(Some((ToSupervisor::SetupFailed { step, message }, _))) =
                    control::recv::<ToSupervisor>(control.as_fd())
                {
                    return Err(format!("sandbox setup failed: {step}: {message}"));
                }
                return Err("the sandbox ended before it was ready".into());
            }
            match control::recv::<ToSupervisor>(control.as_fd()) {
                Ok(Some((ToSupervisor::Ready { .. }, _))) => return Ok(()),
                Ok(Some((ToSupervisor::SetupFailed { step, message }, _))) => {
                    return Err(format!("sandbox setup failed: {step}: {message}"))
                }
                Ok(Some(_)) => {}
                Ok(None) => return Err("the sandbox ended before it was ready".into()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    }
}

struct Client {
    id: u64,
    fd: OwnedFd,
    /// The command this connection runs, if any.
    exec: Option<u64>,
}

struct ExecState {
    client: u64,
    oom_before: u64,
}

struct Daemon<'a> {
    spec: &'a SandboxSpec,
    store: &'a SessionStore,
    record: SessionRecord,
    launched: Launched,
    listener: OwnedFd,
    socket_path: PathBuf,
    clients: Vec<Client>,
    next_client: u64,
    execs: BTreeMap<u64, ExecState>,
    next_exec: u64,
    /// `nsbox create` has not confirmed yet.
    ack: Option<OwnedFd>,
    max_age: Option<Duration>,
    last_activity: Instant,
    /// When stopping: the deadline for the processes to end by themselves.
    stopping: Option<Instant>,
    remove_on_exit: bool,
    init_gone: bool,
    stop_reason: Option<String>,
    _lock: OwnedFd,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Tag {
    Listener,
    Client(u64),
    Control,
    Init,
    Signal,
    Ack,
    Network,
}

impl Daemon<'_> {
    fn control(&self) -> Option<BorrowedFd<'_>> {
        self.launched.control.as_ref().map(|c| c.as_fd())
    }

    fn run(&mut self, signalfd: BorrowedFd<'_>) {
        while !self.init_gone {
            if let Some(deadline) = self.stopping {
                let quiet = self.execs.is_empty() && self.processes_left() <= 1;
                if quiet || Instant::now() >= deadline {
                    self.kill_sandbox();
                }
            }
            let mut set = PollSet::new();
            set.add(Tag::Signal, signalfd, PollFlags::IN);
            set.add(Tag::Listener, self.listener.as_fd(), PollFlags::IN);
            for c in &self.clients {
                set.add(Tag::Client(c.id), c.fd.as_fd(), PollFlags::IN);
            }
            if let Some(control) = self.launched.control.as_ref() {
                set.add(Tag::Control, control.as_fd(), PollFlags::IN);
            }
            if let Some(pidfd) = &self.launched.pidfd {
                set.add(Tag::Init, pidfd.as_fd(), PollFlags::IN);
            }
            if let Some(ack) = &self.ack {
                set.add(Tag::Ack, ack.as_fd(), PollFlags::IN);
            }
            if let Some(egress) = &self.launched.egress {
                set.add(Tag::Network, egress.wake_fd(), PollFlags::IN);
            }
            let timeout = self.next_wakeup();
            let ready = match set.wait(timeout) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!("poll: {e}");
                    self.stop("the supervisor failed");
                    self.kill_sandbox();
                    break;
                }
            };
            for (tag, _) in ready {
                match tag {
                    Tag::Signal => self.on_signal(signalfd),
                    Tag::Listener => self.accept(),
                    Tag::Client(id) => self.on_client(id),
                    Tag::Control => self.on_control(),
                    Tag::Init => self.reap_init(),
                    Tag::Ack => self.on_ack(),
                    Tag::Network => {
                        let events = self
                            .launched
                            .egress
                            .as_mut()
                            .map(|e| e.take_events())
                            .unwrap_or_default();
                        self.log_network(events);
                    }
                }
            }
            if self.stopping.is_none() && self.idle_expired() {
                self.stop("idle longer than --max-age");
            }
        }
    }

    fn next_wakeup(&self) -> Option<Duration> {
        if self.stopping.is_some() {
            return Some(STOP_POLL);
        }
        let max_age = self.max_age?;
        if !self.execs.is_empty() {
            return None;
        }
        Some(
            max_age
                .saturating_sub(self.last_activity.elapsed())
                .max(Duration::from_millis(10)),
        )
    }

    fn idle_expired(&self) -> bool {
        match self.max_age {
            Some(max_age) => self.execs.is_empty() && self.last_activity.elapsed() >= max_age,
            None => false,
        }
    }

    /// Processes in the sandbox's cgroup (init included), from its pids controller.
    fn processes_left(&self) -> u64 {
        self.launched
            .cgroup
            .as_ref()
            .and_then(|c| c.stats().ok())
            .and_then(|s| s.pids_current)
            .unwrap_or(0)
    }

    fn stop(&mut self, reason: &str) {
        if self.stopping.is_some() {
            return;
        }
        self.stop_with_grace(reason, Duration::from_secs(5));
    }

    fn stop_with_grace(&mut self, reason: &str, grace: Duration) {
        tracing::info!(reason, "stopping the session");
        self.stop_reason.get_or_insert_with(|| reason.to_string());
        self.stopping = Some(Instant::now() + grace);
        if let Some(control) = self.control() {
            let _ = control::send(
                control,
                &ToSandbox::Broadcast {
                    signal: libc::SIGTERM,
                },
                &[],
            );
        }
    }

    fn kill_sandbox(&mut self) {
        if let Some(pidfd) = &self.launched.pidfd {
            // Killing the pid namespace's init kills every process in the namespace.
            let _ = sys::signal::pidfd_kill(pidfd.as_fd(), libc::SIGKILL);
        }
    }

    fn on_signal(&mut self, signalfd: BorrowedFd<'_>) {
        while let Ok(Some(signal)) = sys::signal::read_signal(signalfd) {
            if signal != libc::SIGPIPE {
                self.stop(&format!("the supervisor got {}", sys::signal::name(signal)));
            }
        }
    }

    fn on_ack(&mut self) {
        let Some(ack) = &self.ack else { return };
        let mut buf = [0u8; 8];
        match rustix::io::read(ack, &mut buf) {
            Ok(n) if n > 0 && &buf[..n] == b"ok" => self.ack = None,
            Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => {}
            _ => {
                // `nsbox create` ended without taking the session: remove it.
                self.ack = None;
                self.remove_on_exit = true;
                self.stop_with_grace("create was interrupted", Duration::ZERO);
            }
        }
    }

    fn accept(&mut self) {
        while let Ok(fd) =
            rustix::net::accept_with(&self.listener, SocketFlags::CLOEXEC | SocketFlags::NONBLOCK)
        {
            self.next_client += 1;
            self.clients.push(Client {
                id: self.next_client,
                fd,
                exec: None,
            });
            self.last_activity = Instant::now();
        }
    }

    fn reply(&self, client: u64, reply: &Reply, fds: &[BorrowedFd<'_>]) {
        if let Some(c) = self.clients.iter().find(|c| c.id == client) {
            let _ = control::send(c.fd.as_fd(), reply, fds);
        }
    }

    fn on_client(&mut self, id: u64) {
        let Some(client) = self.clients.iter().find(|c| c.id == id) else {
            return;
        };
        let received = match control::recv::<Request>(client.fd.as_fd()) {
            Ok(Some(r)) => r,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Ok(None) | Err(_) => {
                self.disconnect(id);
                return;
            }
        };
        self.last_activity = Instant::now();
        match received {
            (
                Request::Exec {
                    argv,
                    env,
                    workdir,
                    tty,
                    winsize,
                },
                fds,
            ) => self.exec(id, argv, env, workdir, tty, winsize, fds),
            (Request::Signal { signal }, _) => {
                let exec = self
                    .clients
                    .iter()
                    .find(|c| c.id == id)
                    .and_then(|c| c.exec);
                if let (Some(exec_id), Some(control)) = (exec, self.control()) {
                    let _ = control::send(control, &ToSandbox::Signal { exec_id, signal }, &[]);
                }
            }
            (Request::Stats, _) => {
                let stats = self.stats();
                self.reply(id, &Reply::Stats(stats), &[]);
            }
            (Request::Stop { grace_ms, reason }, _) => {
                self.stop_with_grace(&reason, Duration::from_millis(grace_ms));
                self.reply(id, &Reply::Stopping, &[]);
            }
            (Request::OpenRoot, _) => match self.open_root() {
                Ok(root) => self.reply(
                    id,
                    &Reply::Root {
                        uid: self.spec.uid,
                        gid: self.spec.gid,
                        uid_base: self.spec.uid_base,
                    },
                    &[root.as_fd()],
                ),
                Err(e) => self.reply(id, &Reply::Refused { message: e }, &[]),
            },
        }
    }

    fn open_root(&self) -> Result<OwnedFd, String> {
        if self.launched.pidfd.is_none() || self.stopping.is_some() {
            return Err("the session is stopping".into());
        }
        // The init is alive (we hold its pidfd and have not reaped it), so the pid is its.
        rustix::fs::open(
            format!("/proc/{}/root", self.launched.pid).as_str(),
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| format!("cannot open the sandbox's root: {e}"))
    }

    #[allow(clippy::too_many_arguments)]
    fn exec(
        &mut self,
        client: u64,
        argv: Vec<Vec<u8>>,
        env: Vec<(String, String)>,
        workdir: Option<PathBuf>,
        tty: bool,
        winsize: Option<(u16, u16)>,
        fds: Vec<OwnedFd>,
    ) {
        let busy = self
            .clients
            .iter()
            .any(|c| c.id == client && c.exec.is_some());
        if self.stopping.is_some() || busy || argv.is_empty() {
            let message = if argv.is_empty() {
                "no command given"
            } else if busy {
                "this connection already runs a command"
            } else {
                "the session is stopping"
            };
            self.reply(
                client,
                &Reply::Refused {
                    message: message.into(),
                },
                &[],
            );
            return;
        }
        let mut full_env = self.spec.env.clone();
        for (k, v) in env {
            match full_env.iter_mut().find(|(key, _)| *key == k) {
                Some(slot) => slot.1 = v,
                None => full_env.push((k, v)),
            }
        }
        let exec_id = self.next_exec;
        self.next_exec += 1;
        let request = ExecRequest {
            exec_id,
            argv,
            env: full_env,
            workdir: workdir.unwrap_or_else(|| self.spec.workdir.clone()),
            tty,
            winsize,
        };
        let attached: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
        let sent = self
            .control()
            .map(|control| control::send(control, &ToSandbox::Exec(request), &attached));
        drop(fds);
        match sent {
            Some(Ok(())) => {
                let oom_before = self
                    .launched
                    .cgroup
                    .as_ref()
                    .and_then(|c| c.oom_kills().ok())
                    .unwrap_or(0);
                self.execs.insert(exec_id, ExecState { client, oom_before });
                if let Some(c) = self.clients.iter_mut().find(|c| c.id == client) {
                    c.exec = Some(exec_id);
                }
            }
            _ => self.reply(
                client,
                &Reply::Refused {
                    message: "the sandbox is gone".into(),
                },
                &[],
            ),
        }
    }

    fn disconnect(&mut self, id: u64) {
        let Some(index) = self.clients.iter().position(|c| c.id == id) else {
            return;
        };
        let client = self.clients.swap_remove(index);
        // A command outlives nothing of its caller's: `nsbox exec` killed, command killed.
        if let (Some(exec_id), Some(control)) = (client.exec, self.control()) {
            let _ = control::send(
                control,
                &ToSandbox::Signal {
                    exec_id,
                    signal: libc::SIGKILL,
                },
                &[],
            );
        }
        self.last_activity = Instant::now();
    }

    fn on_control(&mut self) {
        loop {
            let Some(control) = self.control() else {
                return;
            };
            let received = match control::recv::<ToSupervisor>(control) {
                Ok(Some(m)) => m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) => continue,
                Ok(None) | Err(_) => {
                    self.launched.control = None;
                    return;
                }
            };
            match received {
                (ToSupervisor::ExecStarted { exec_id }, fds) => {
                    if let Some(state) = self.execs.get(&exec_id) {
                        let attached: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
                        self.reply(
                            state.client,
                            &Reply::ExecStarted {
                                secrets: self.spec.secrets.clone(),
                            },
                            &attached,
                        );
                    }
                }
                (
                    ToSupervisor::ExecEnded {
                        exec_id,
                        code,
                        signal,
                    },
                    _,
                ) => {
                    if let Some(state) = self.execs.remove(&exec_id) {
                        let oom_now = self
                            .launched
                            .cgroup
                            .as_ref()
                            .and_then(|c| c.oom_kills().ok())
                            .unwrap_or(0);
                        let oom = oom_now > state.oom_before && signal == Some(libc::SIGKILL);
                        self.reply(state.client, &Reply::ExecEnded { code, signal, oom }, &[]);
                        if let Some(c) = self.clients.iter_mut().find(|c| c.id == state.client) {
                            c.exec = None;
                        }
                    }
                    self.last_activity = Instant::now();
                }
                (ToSupervisor::ExecRefused { exec_id, message }, _) => {
                    if let Some(state) = self.execs.remove(&exec_id) {
                        self.reply(state.client, &Reply::Refused { message }, &[]);
                        if let Some(c) = self.clients.iter_mut().find(|c| c.id == state.client) {
                            c.exec = None;
                        }
                    }
                }
                _ => {}
            }
        }
    }

    fn reap_init(&mut self) {
        let Some(pidfd) = &self.launched.pidfd else {
            return;
        };
        if let Ok(Some(_)) = rustix::process::waitid(
            rustix::process::WaitId::PidFd(pidfd.as_fd()),
            WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
        ) {
            self.launched.pidfd = None;
            self.init_gone = true;
            if self.stop_reason.is_none() {
                let oom = self
                    .launched
                    .cgroup
                    .as_ref()
                    .and_then(|c| c.oom_kills().ok())
                    .unwrap_or(0)
                    > 0;
                self.stop_reason = Some(if oom {
                    "the sandbox ran out of memory".into()
                } else {
                    "the sandbox ended unexpectedly".into()
                });
            }
        }
    }

    fn stats(&self) -> SessionStats {
        let cg = self.launched.cgroup.as_ref().and_then(|c| c.stats().ok());
        SessionStats {
            memory_current_bytes: cg.as_ref().and_then(|s| s.memory_current_bytes),
            memory_peak_bytes: cg.as_ref().and_then(|s| s.memory_peak_bytes),
            memory_limit_bytes: self.record.memory,
            pids_current: cg.as_ref().and_then(|s| s.pids_current),
            pids_limit: self.record.pids,
            cpu_usage_usec: cg.as_ref().and_then(|s| s.cpu_usage_usec),
            commands_running: self.execs.len(),
            idle_secs: if self.execs.is_empty() {
                self.last_activity.elapsed().as_secs()
            } else {
                0
            },
        }
    }

    /// After the sandbox ended: tell the remaining clients, remove the cgroup and the socket,
    /// record how it ended (or remove everything, for an interrupted create).
    /// Appends network events to the session's network log (JSON lines, secrets masked):
    /// commands of a session share its network, so its events belong to no one command.
    fn log_network(&mut self, events: Vec<crate::net::NetEvent>) {
        if events.is_empty() || !self.spec.log_network {
            return;
        }
        let masker = crate::relay::Masker::for_network_events(&self.spec.secrets);
        let text: String = events
            .iter()
            .map(|e| masker.mask_str(&String::from_utf8_lossy(&e.to_json_line())))
            .collect();
        let path = self.store.network_log(&self.record.id);
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()));
        if let Err(e) = written {
            tracing::warn!("{}: {e}", path.display());
        }
    }

    fn finish(&mut self) {
        if let Some(mut egress) = self.launched.egress.take() {
            let events = egress.stop();
            self.log_network(events);
        }
        for (_, state) in std::mem::take(&mut self.execs) {
            self.reply(
                state.client,
                &Reply::ExecEnded {
                    code: None,
                    signal: Some(libc::SIGKILL),
                    oom: false,
                },
                &[],
            );
        }
        let warning = self.launched.teardown();
        if let Some(w) = warning {
            tracing::warn!("{w}");
        }
        let _ = std::fs::remove_file(&self.socket_path);
        self.record.stopped = Some(Stopped {
            at: now_secs(),
            reason: self.stop_reason.clone().unwrap_or_else(|| "stopped".into()),
        });
        if self.remove_on_exit {
            let _ = self.store.remove(&self.record);
        } else {
            let _ = self.store.write_record(&self.record);
        }
        tracing::info!(at = now_ns(), "session ended");
        // Clients waiting for the end (`nsbox stop`) see their socket close as we exit.
    }
}
