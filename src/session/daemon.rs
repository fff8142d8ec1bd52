//! A session's supervisor: the small process that owns one living sandbox (its cgroup, its
//! init, its network) and serves the nsbox commands that use it. There is no daemon for all
//! sessions: `nsbox create` forks one supervisor per session, which detaches and is found
//! through the session's directory (lock, socket, record).
//!
//! The sandbox itself is a [`Handle`] created to serve ([`Handle::create`]: built, init
//! waiting); the supervisor is the session's policy over it in the shared event loop
//! (`crate::sandbox::event_loop`), as `nsbox exec` is the one-shot's: it accepts clients,
//! turns their requests into exec requests on the handle, reports each command's end, and
//! stops the session when asked, when idle past `--max-age`, or when the sandbox ends.
//!
//! If the supervisor dies, the sandbox's init gets its parent-death signal and every process
//! of the sandbox dies with it; `nsbox prune` then removes what is left (cgroup, directory).

// Stricter than the crate: no silently truncating or sign-losing `as` casts here.
#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::error_impl_error
)]

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rustix::event::PollFlags;
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
use serde::{Deserialize, Serialize};

use super::protocol::{Reply, Request, SessionStats, SnapshotInfo};
use super::state::{now_secs, SessionRecord, SessionStore, Stopped};
use super::SessionError;
use crate::profile::RootChoice;
use crate::relay::Usage;
use crate::sandbox::control::{self, ExecRequest, ToSupervisor};
use crate::sandbox::event_loop::{self, Policy, PollSet};
use crate::sandbox::handle::{Handle, HandleEvent, HandleSource};
use crate::sandbox::supervisor::now_ns;
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

/// How long a session lives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lifetimes {
    /// Stop once idle this long (`--max-age`).
    pub max_age: Option<Duration>,
    /// Stop this long after it started, busy or not (`--ttl`).
    pub ttl: Option<Duration>,
    /// Remove the stopped session this long after it stopped (`--rm`, `--rm-grace`).
    pub remove_after: Option<Duration>,
    /// What `max_age` of idleness does (`--idle-action`).
    pub idle_action: IdleAction,
}

/// What a session idle longer than its `--max-age` does (`--idle-action`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum IdleAction {
    /// Stop it, like `nsbox stop` (its processes end; its files stay until `rm`).
    #[default]
    Stop,
    /// Pause it, like `nsbox pause`: it keeps its processes and memory but uses no CPU until
    /// `nsbox resume` (after which its idle clock starts again).
    Pause,
}

impl IdleAction {
    pub fn as_str(self) -> &'static str {
        match self {
            IdleAction::Stop => "stop",
            IdleAction::Pause => "pause",
        }
    }
}

impl std::str::FromStr for IdleAction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "stop" => Ok(IdleAction::Stop),
            "pause" => Ok(IdleAction::Pause),
            _ => Err(format!("{s:?} is not an idle action (pause or stop)")),
        }
    }
}

/// Starts a session for `spec`: forks its supervisor, waits until the sandbox is ready.
pub fn start(
    spec: &SandboxSpec,
    name: Option<&str>,
    max_age: Option<Duration>,
    store: &SessionStore,
) -> Result<(SessionRecord, PendingSession), SessionError> {
    let lifetimes = Lifetimes {
        max_age,
        ..Lifetimes::default()
    };
    start_with(spec, name, lifetimes, store)
}

/// [`start`] with every lifetime setting.
#[allow(unsafe_code)] // the fork; the block says why it is sound
pub fn start_with(
    spec: &SandboxSpec,
    name: Option<&str>,
    lifetimes: Lifetimes,
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
    // SAFETY: nsbox is single-threaded here (sessions are created before any thread starts),
    // and the child ends through `exit_now`, never returning into the caller's frames.
    let pid = unsafe { sys::process::fork() }
        .map_err(|e| SessionError::Io("fork the session supervisor", e))?;
    if pid == 0 {
        let _abort = sys::process::AbortOnPanic;
        drop(ready_r);
        drop(ack_w);
        let code = supervise(spec, name, lifetimes, store, ready_w, ack_r);
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
#[allow(unsafe_code)] // standard streams renumbered; each block says why it is sound
fn supervise(
    spec: &SandboxSpec,
    name: Option<&str>,
    lifetimes: Lifetimes,
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
            // SAFETY: 0-2 are this detached process's standard streams, replaced on purpose;
            // nothing here holds them as owned descriptors.
            let _ = unsafe { sys::fs::dup_onto(null.as_fd(), target) };
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
        // SAFETY: stderr (already /dev/null) becomes the session's log; nothing owns fd 2.
        let _ = unsafe { sys::fs::dup_onto(log.as_fd(), 2) };
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
        max_age: lifetimes.max_age.map(|d| d.as_secs().max(1)),
        ttl: lifetimes.ttl.map(|d| d.as_secs()),
        remove_after: lifetimes.remove_after.map(|d| d.as_secs()),
        supervisor_pid: std::process::id(),
        init_pid: 0,
        workdir: spec.workdir.clone(),
        max_output: spec.limits.max_output.map(|m| m.bytes()),
        stopped: None,
        paused: false,
    };
    if let Err(e) = store.write_record(&record) {
        return cleanup(e.to_string());
    }
    crate::fault::phase("session-recorded", &spec.id);
    let socket_path = store.socket(&spec.id);
    let listener = match listen(&socket_path) {
        Ok(l) => l,
        Err(e) => return cleanup(format!("listen on {}: {e}", socket_path.display())),
    };
    // On failure the handle's drop tears down whatever was made.
    let mut handle = match Handle::create(spec) {
        Ok(created) => created.handle,
        Err(e) => return cleanup(e.to_string()),
    };
    record.init_pid = handle.pid();
    if let Err(e) = store.write_record(&record) {
        drop(handle);
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
    crate::fault::phase("session-ready", &spec.id);
    // This supervisor serves this one session: its work is the session's. After the caller
    // was answered: the move takes the kernel's cgroup threadgroup lock, whose first taker
    // after a quiet spell waits for an RCU grace period (about 10 ms on a busy VM), which
    // `nsbox create` then no longer waits for.
    handle.charge_supervisor();
    // The CLI's and the start-up's code pages are done with (see the function).
    sys::mem::release_code_pages();

    let mut daemon = Daemon {
        spec,
        store,
        record,
        handle,
        signalfd: signalfd.as_fd(),
        listener,
        socket_path,
        clients: Vec::new(),
        next_client: 0,
        execs: BTreeMap::new(),
        next_exec: 1,
        ack: Some(ack),
        max_age: lifetimes.max_age,
        idle_action: lifetimes.idle_action,
        deadline: lifetimes.ttl.map(|ttl| Instant::now() + ttl),
        last_activity: Instant::now(),
        stopping: None,
        remove_on_exit: false,
        stop_reason: None,
        _lock: lock,
    };
    if let Err(e) = event_loop::drive(&mut daemon) {
        tracing::error!("poll: {e}");
        daemon.stop("the supervisor failed");
        daemon.handle.kill();
    }
    daemon.finish();
    let record = daemon.record.clone();
    let removed = daemon.remove_on_exit;
    // The session is over: `ps` shows it stopped (with why) from here on.
    drop(daemon);
    if let (Some(grace), false) = (lifetimes.remove_after, removed) {
        remove_after_grace(store, &record, grace);
    }
    0
}

/// `--rm`: waits out the grace period (the record says why the session stopped meanwhile),
/// then removes the session — unless someone removed it already, or it is another one now.
fn remove_after_grace(store: &SessionStore, record: &SessionRecord, grace: Duration) {
    std::thread::sleep(grace);
    match store.read_record(&record.id) {
        Ok(now) if now.created == record.created && now.stopped.is_some() => {
            if let Err(e) = store.remove(&now) {
                tracing::warn!("--rm: could not remove the session: {e}");
            }
        }
        _ => {}
    }
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

struct Client {
    id: u64,
    fd: OwnedFd,
    /// The command this connection runs, if any.
    exec: Option<u64>,
    /// The connection holds the session frozen for a snapshot (`nsbox commit`).
    snapshot: bool,
}

struct ExecState {
    client: u64,
    /// The program run (argv[0], secrets masked), for the exec event.
    program: String,
    oom_before: u64,
    /// The session cgroup's CPU usage when the command started: its exit reports the delta.
    cpu_before: Option<u64>,
}

struct Daemon<'a> {
    spec: &'a SandboxSpec,
    store: &'a SessionStore,
    record: SessionRecord,
    handle: Handle,
    signalfd: BorrowedFd<'a>,
    listener: OwnedFd,
    socket_path: PathBuf,
    clients: Vec<Client>,
    next_client: u64,
    execs: BTreeMap<u64, ExecState>,
    next_exec: u64,
    /// `nsbox create` has not confirmed yet.
    ack: Option<OwnedFd>,
    max_age: Option<Duration>,
    idle_action: IdleAction,
    /// `--ttl`: stopped at this moment, busy or not.
    deadline: Option<Instant>,
    last_activity: Instant,
    /// When stopping: the deadline for the processes to end by themselves.
    stopping: Option<Instant>,
    remove_on_exit: bool,
    stop_reason: Option<String>,
    _lock: OwnedFd,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Tag {
    Signal,
    Sandbox(HandleSource),
    Listener,
    Client(u64),
    Ack,
}

impl Policy for Daemon<'_> {
    type Tag = Tag;
    type Error = rustix::io::Errno;

    /// The session ends with its sandbox.
    fn done(&self) -> bool {
        !self.handle.state().init_alive()
    }

    fn before_wait(&mut self) -> Result<(), rustix::io::Errno> {
        if self.stopping.is_none() && self.idle_expired() {
            match self.idle_action {
                IdleAction::Stop => self.stop("idle longer than --max-age"),
                IdleAction::Pause => match self.set_frozen(true) {
                    Ok(_) => tracing::info!("paused: idle longer than --max-age"),
                    // Not retried in a loop: the idle clock starts again.
                    Err(e) => {
                        tracing::warn!("--idle-action pause: {e}");
                        self.last_activity = Instant::now();
                    }
                },
            }
        }
        if self.stopping.is_none() && self.deadline.is_some_and(|d| Instant::now() >= d) {
            self.stop("reached its --ttl");
        }
        if let Some(deadline) = self.stopping {
            let quiet = self.execs.is_empty() && self.processes_left() <= 1;
            if quiet || Instant::now() >= deadline {
                self.handle.kill();
            }
        }
        Ok(())
    }

    fn register<'a>(&'a self, set: &mut PollSet<'a, Tag>) {
        set.add(Tag::Signal, self.signalfd, PollFlags::IN);
        set.add(Tag::Listener, self.listener.as_fd(), PollFlags::IN);
        for c in &self.clients {
            set.add(Tag::Client(c.id), c.fd.as_fd(), PollFlags::IN);
        }
        self.handle.register(set, Tag::Sandbox);
        if let Some(ack) = &self.ack {
            set.add(Tag::Ack, ack.as_fd(), PollFlags::IN);
        }
    }

    fn wait_at_most(&self) -> Option<Duration> {
        self.next_wakeup()
    }

    fn on_ready(&mut self, tag: Tag, _: PollFlags) -> Result<(), rustix::io::Errno> {
        match tag {
            Tag::Signal => self.on_signal(),
            Tag::Listener => self.accept(),
            Tag::Client(id) => self.on_client(id),
            Tag::Sandbox(source) => match self.handle.on_ready(source) {
                Ok(events) => events.into_iter().for_each(|e| self.on_sandbox(e)),
                Err(e) => tracing::warn!("{e}"),
            },
            Tag::Ack => self.on_ack(),
        }
        Ok(())
    }

    fn poll_failed(&mut self, e: rustix::io::Errno) -> rustix::io::Errno {
        e
    }
}

impl Daemon<'_> {
    fn next_wakeup(&self) -> Option<Duration> {
        if self.stopping.is_some() {
            return Some(STOP_POLL);
        }
        let floor = Duration::from_millis(10);
        let ttl = self
            .deadline
            .map(|d| d.saturating_duration_since(Instant::now()).max(floor));
        let idle = match self.max_age {
            Some(max_age) if self.idle_counts() => Some(
                max_age
                    .saturating_sub(self.last_activity.elapsed())
                    .max(floor),
            ),
            _ => None,
        };
        match (ttl, idle) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn idle_expired(&self) -> bool {
        match self.max_age {
            Some(max_age) => self.idle_counts() && self.last_activity.elapsed() >= max_age,
            None => false,
        }
    }

    /// Whether the idle clock runs: no command is running, and the session is not already
    /// paused when idleness would only pause it (a paused session idles on until `resume`,
    /// which is a request and so restarts the clock; with `stop`, a paused session still stops).
    fn idle_counts(&self) -> bool {
        self.execs.is_empty() && !(self.idle_action == IdleAction::Pause && self.record.paused)
    }

    /// Processes in the sandbox's cgroup (init included), from its pids controller.
    fn processes_left(&self) -> u64 {
        self.handle
            .stats()
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
        // A paused session is thawed first: its init must run to pass the TERM on, and its
        // processes to act on it.
        if self.frozen() {
            if let Err(e) = self.handle.thaw() {
                tracing::warn!("thaw before stopping: {e}");
            }
            self.record.paused = false;
            self.clients.iter_mut().for_each(|c| c.snapshot = false);
        }
        self.stop_reason.get_or_insert_with(|| reason.to_string());
        self.stopping = Some(Instant::now() + grace);
        self.handle.broadcast(libc::SIGTERM);
    }

    fn on_signal(&mut self) {
        for signal in event_loop::pending_signals(self.signalfd).unwrap_or_default() {
            if signal != libc::SIGPIPE {
                self.stop(&format!("the supervisor got {}", sys::signal::name(signal)));
            }
        }
    }

    fn on_ack(&mut self) {
        let Some(ack) = &self.ack else { return };
        let mut buf = [0u8; 8];
        match rustix::io::read(ack, &mut buf) {
            Ok(n) if n > 0 && &buf[..n] == b"ok" => {
                self.ack = None;
                // Confirmed by its creator: the session exists for everyone from here on.
                let mut event = self.store.lifecycle_event(&self.record, "create");
                event.insert("root".into(), self.record.root.clone().into());
                event.insert("network".into(), self.record.network.clone().into());
                self.store.emit(event);
            }
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
                snapshot: false,
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
                    replace_env,
                    workdir,
                    tty,
                    winsize,
                    gated,
                    failure_on_terminal,
                    user,
                },
                fds,
            ) => self.exec(
                id,
                argv,
                (env, replace_env),
                workdir,
                (tty, winsize, failure_on_terminal),
                user,
                gated,
                fds,
            ),
            (Request::Signal { signal }, _) => {
                let exec = self
                    .clients
                    .iter()
                    .find(|c| c.id == id)
                    .and_then(|c| c.exec);
                if let Some(exec_id) = exec {
                    self.handle.signal_command(exec_id, signal);
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
            (Request::Freeze { frozen }, _) => {
                let reply = match self.set_frozen(frozen) {
                    Ok(changed) => Reply::Frozen { frozen, changed },
                    Err(message) => Reply::Refused { message },
                };
                self.reply(id, &reply, &[]);
            }
            (Request::Snapshot, _) => match self.snapshot(id) {
                Ok((info, root, upper)) => {
                    self.reply(id, &Reply::Snapshot(info), &[root.as_fd(), upper.as_fd()])
                }
                Err(message) => self.reply(id, &Reply::Refused { message }, &[]),
            },
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

    /// Whether a connection holds the session frozen for a snapshot.
    fn snapshot_held(&self) -> bool {
        self.clients.iter().any(|c| c.snapshot)
    }

    /// Frozen by `nsbox pause` or for a snapshot.
    fn frozen(&self) -> bool {
        self.record.paused || self.snapshot_held()
    }

    /// Freezes the session for connection `client` and opens its root and upper directory.
    fn snapshot(&mut self, client: u64) -> Result<(SnapshotInfo, OwnedFd, OwnedFd), String> {
        if self.stopping.is_some() {
            return Err("the session is stopping".into());
        }
        if !self.frozen() {
            if let Err(e) = self.handle.freeze() {
                let _ = self.handle.thaw();
                return Err(e.to_string());
            }
        }
        if let Some(c) = self.clients.iter_mut().find(|c| c.id == client) {
            c.snapshot = true;
        }
        let root = self.open_root()?;
        let upper = self
            .handle
            .open_upper()
            .map_err(|e| format!("cannot open the sandbox's upper layer: {e}"))?;
        let secrets = &self.spec.secrets;
        let info = SnapshotInfo {
            image: self.spec.image.as_ref().map(|i| i.digest.to_string()),
            layers: self
                .spec
                .image
                .as_ref()
                .map(|i| i.layers.clone())
                .unwrap_or_default(),
            env: self
                .spec
                .env
                .iter()
                .filter(|(_, v)| {
                    !secrets
                        .iter()
                        .any(|s| !s.is_empty() && v.contains(s.as_str()))
                })
                .cloned()
                .collect(),
            workdir: self.spec.workdir.clone(),
            uid: self.spec.uid,
            gid: self.spec.gid,
            uid_base: self.spec.uid_base,
            network: self.spec.network.as_str().to_string(),
            allow: self
                .spec
                .egress
                .allow
                .iter()
                .map(|r| r.text.clone())
                .collect(),
            deny: self
                .spec
                .egress
                .deny
                .iter()
                .map(|r| r.text.clone())
                .collect(),
            writable_root: self.spec.writable_root,
            extra_layers: self.spec.extra_lowers.clone(),
        };
        Ok((info, root, upper))
    }

    /// `nsbox pause` / `nsbox resume`. Returns whether anything changed. The record says it,
    /// for `nsbox ps`. While a snapshot holds the session frozen, only the record changes.
    fn set_frozen(&mut self, frozen: bool) -> Result<bool, String> {
        if self.stopping.is_some() {
            return Err("the session is stopping".into());
        }
        if self.record.paused == frozen {
            return Ok(false);
        }
        let done = if self.snapshot_held() {
            Ok(())
        } else if frozen {
            self.handle.freeze()
        } else {
            self.handle.thaw()
        };
        if let Err(e) = done {
            // A half-done freeze is undone: a session is either running or paused.
            if frozen {
                let _ = self.handle.thaw();
            }
            return Err(e.to_string());
        }
        self.record.paused = frozen;
        if let Err(e) = self.store.write_record(&self.record) {
            tracing::warn!("{e}");
        }
        let action = if frozen { "pause" } else { "resume" };
        self.store
            .emit(self.store.lifecycle_event(&self.record, action));
        Ok(true)
    }

    fn open_root(&self) -> Result<OwnedFd, String> {
        if self.stopping.is_some() {
            return Err("the session is stopping".into());
        }
        self.handle
            .open_root()
            .map_err(|e| format!("cannot open the sandbox's root: {e}"))
    }

    #[allow(clippy::too_many_arguments)]
    fn exec(
        &mut self,
        client: u64,
        argv: Vec<Vec<u8>>,
        // The request's variables, and whether they are all of the command's environment.
        (env, replace_env): (Vec<(String, String)>, bool),
        workdir: Option<PathBuf>,
        // (tty, winsize, failure_on_terminal): the command's terminal, if any.
        (tty, winsize, failure_on_terminal): (bool, Option<(u16, u16)>, bool),
        user: Option<(u32, u32)>,
        gated: bool,
        fds: Vec<OwnedFd>,
    ) {
        let busy = self
            .clients
            .iter()
            .any(|c| c.id == client && c.exec.is_some());
        if self.stopping.is_some() || busy || argv.is_empty() || self.frozen() {
            // A paused session refuses commands instead of queueing them: its init is frozen
            // and could not start one, and a caller left waiting would look hung.
            let message = if argv.is_empty() {
                "no command given".to_string()
            } else if busy {
                "this connection already runs a command".to_string()
            } else if self.stopping.is_some() {
                "the session is stopping".to_string()
            } else if !self.record.paused {
                "the session is frozen while `nsbox commit` captures it — hint: try again when the commit is done".to_string()
            } else {
                format!(
                    "the session is paused — hint: `nsbox resume {}` first",
                    self.record.name.as_deref().unwrap_or(&self.record.id)
                )
            };
            self.reply(client, &Reply::Refused { message }, &[]);
            return;
        }
        let mut full_env = if replace_env {
            Vec::new()
        } else {
            self.spec.env.clone()
        };
        if user.is_some_and(|(uid, _)| uid == 0) && !replace_env {
            // Root's own account, as a login would set it; the request's variables still win.
            for (k, v) in [("HOME", "/root"), ("USER", "root"), ("LOGNAME", "root")] {
                match full_env.iter_mut().find(|(key, _)| key == k) {
                    Some(slot) => slot.1 = v.to_string(),
                    None => full_env.push((k.to_string(), v.to_string())),
                }
            }
        }
        for (k, v) in env {
            match full_env.iter_mut().find(|(key, _)| *key == k) {
                Some(slot) => slot.1 = v,
                None => full_env.push((k, v)),
            }
        }
        let exec_id = self.next_exec;
        self.next_exec += 1;
        let program = crate::relay::Masker::new(&self.spec.secrets).mask_str(
            &String::from_utf8_lossy(argv.first().map_or(&[][..], |a| a)),
        );
        let request = ExecRequest {
            exec_id,
            argv,
            env: full_env,
            workdir: workdir.unwrap_or_else(|| self.spec.workdir.clone()),
            tty,
            winsize,
            gated,
            failure_on_terminal,
            user,
        };
        let attached: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
        let sent = self.handle.exec(request, &attached);
        drop(attached);
        drop(fds);
        match sent {
            Ok(()) => {
                crate::fault::phase("session-exec-sent", &self.spec.id);
                let oom_before = self.handle.oom_kills();
                let cpu_before = self.handle.stats().and_then(|s| s.cpu_usage_usec);
                self.execs.insert(
                    exec_id,
                    ExecState {
                        client,
                        program,
                        oom_before,
                        cpu_before,
                    },
                );
                if let Some(c) = self.clients.iter_mut().find(|c| c.id == client) {
                    c.exec = Some(exec_id);
                }
            }
            Err(e) => self.reply(
                client,
                &Reply::Refused {
                    message: e.to_string(),
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
        // A snapshot's freeze ends with its connection (also when `nsbox commit` was killed).
        if client.snapshot && !self.frozen() && self.stopping.is_none() {
            if let Err(e) = self.handle.thaw() {
                tracing::warn!("thaw after a snapshot: {e}");
            }
        }
        // A command outlives nothing of its caller's: `nsbox exec` killed, command killed.
        if let Some(exec_id) = client.exec {
            self.handle.signal_command(exec_id, libc::SIGKILL);
        }
        self.last_activity = Instant::now();
    }

    fn on_sandbox(&mut self, event: HandleEvent) {
        match event {
            HandleEvent::Message(ToSupervisor::ExecStarted { exec_id }, fds) => {
                if let Some(state) = self.execs.get(&exec_id) {
                    let attached: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
                    self.reply(
                        state.client,
                        &Reply::ExecStarted {
                            secrets: self.spec.secrets.clone(),
                            exec_id,
                        },
                        &attached,
                    );
                    // After the reply: the caller's command never waits for the journal.
                    let mut event = self.store.lifecycle_event(&self.record, "exec");
                    event.insert("exec_id".into(), exec_id.into());
                    event.insert("command".into(), state.program.clone().into());
                    self.store.emit(event);
                }
            }
            HandleEvent::Message(
                ToSupervisor::ExecEnded {
                    exec_id,
                    code,
                    signal,
                },
                _,
            ) => {
                if let Some(state) = self.execs.remove(&exec_id) {
                    let oom =
                        self.handle.oom_kills() > state.oom_before && signal == Some(libc::SIGKILL);
                    // The session's cgroup is all there is to measure: CPU time over the
                    // command's life (with whatever else ran then), the session's memory peak.
                    let stats = self.handle.stats();
                    let usage = Usage {
                        memory_peak_bytes: stats.and_then(|s| s.memory_peak_bytes),
                        cpu_usage_usec: stats
                            .and_then(|s| s.cpu_usage_usec)
                            .zip(state.cpu_before)
                            .map(|(now, before)| now.saturating_sub(before)),
                    };
                    self.reply(
                        state.client,
                        &Reply::ExecEnded {
                            code,
                            signal,
                            oom,
                            usage,
                        },
                        &[],
                    );
                    self.command_done(state.client);
                    // After the reply (the caller waits for nothing else), before this
                    // supervisor reads another request: events stay in order.
                    let mut event = self.store.lifecycle_event(&self.record, "exit");
                    event.insert("exec_id".into(), exec_id.into());
                    let status = code.or(signal.map(|s| crate::exit::SIGNAL_BASE + s));
                    event.insert("code".into(), status.into());
                    if let Some(signal) = signal {
                        event.insert("signal".into(), sys::signal::name(signal).into());
                    }
                    if oom {
                        event.insert("oom".into(), true.into());
                    }
                    self.store.emit(event);
                }
                self.last_activity = Instant::now();
            }
            HandleEvent::Message(ToSupervisor::ExecRefused { exec_id, message }, _) => {
                if let Some(state) = self.execs.remove(&exec_id) {
                    self.reply(state.client, &Reply::Refused { message }, &[]);
                    self.command_done(state.client);
                }
            }
            HandleEvent::Message(other, _) => {
                tracing::warn!("unexpected message from the sandbox: {}", other.kind())
            }
            HandleEvent::ControlClosed => {}
            HandleEvent::InitEnded => {
                if self.stop_reason.is_none() {
                    self.stop_reason = Some(if self.handle.oom_kills() > 0 {
                        "the sandbox ran out of memory".into()
                    } else {
                        "the sandbox ended unexpectedly".into()
                    });
                }
            }
            HandleEvent::Network(events) => self.log_network(events),
        }
    }

    fn command_done(&mut self, client: u64) {
        if let Some(c) = self.clients.iter_mut().find(|c| c.id == client) {
            c.exec = None;
        }
    }

    fn stats(&self) -> SessionStats {
        let cg = self.handle.stats();
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
            paused: self.record.paused,
        }
    }

    /// Appends network events to the session's network log (JSON lines, secrets masked):
    /// commands of a session share its network, so its events belong to no one command.
    fn log_network(&mut self, events: Vec<crate::net::NetEvent>) {
        if events.is_empty() || !self.spec.log_network {
            return;
        }
        let masker = crate::relay::Masker::for_network_events(&self.spec.secrets);
        // JSON lines, the `--json` stream's network events with their time.
        let text: String = events
            .iter()
            .map(|e| {
                let line = crate::relay::events::stamp_line(&e.to_json_line(), None);
                masker.mask_str(&String::from_utf8_lossy(&line))
            })
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

    /// After the sandbox ended: tell the remaining clients, remove the cgroup and the socket,
    /// record how it ended (or remove everything, for an interrupted create).
    fn finish(&mut self) {
        crate::fault::phase("session-teardown", &self.spec.id);
        let events = self.handle.stop_network();
        self.log_network(events);
        for (_, state) in std::mem::take(&mut self.execs) {
            self.reply(
                state.client,
                &Reply::ExecEnded {
                    code: None,
                    signal: Some(libc::SIGKILL),
                    oom: false,
                    usage: Usage::default(),
                },
                &[],
            );
        }
        let warning = self.handle.teardown();
        if let Some(w) = warning {
            tracing::warn!("{w}");
        }
        let _ = std::fs::remove_file(&self.socket_path);
        self.record.stopped = Some(Stopped {
            at: now_secs(),
            reason: self.stop_reason.clone().unwrap_or_else(|| "stopped".into()),
        });
        if self.remove_on_exit {
            let _ = self.store.remove_quietly(&self.record);
        } else {
            let _ = self.store.write_record(&self.record);
            let mut event = self.store.lifecycle_event(&self.record, "stop");
            if let Some(stopped) = &self.record.stopped {
                event.insert("reason".into(), stopped.reason.clone().into());
            }
            self.store.emit(event);
        }
        tracing::info!(at = now_ns(), "session ended");
        crate::fault::phase("session-ended", &self.record.id);
        // Clients waiting for the end (`nsbox stop`) see their socket close as we exit.
    }
}
