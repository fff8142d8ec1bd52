//! Talking to a session from an nsbox command: run a command in it (relayed, masked and capped
//! exactly like a one-shot exec), ask for its stats, stop it, or get its root for copies.

// Stricter than the crate: no silently truncating or sign-losing `as` casts here.
#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::error_impl_error
)]

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rustix::event::PollFlags;
use rustix::fs::{Mode, OFlags};
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

use super::protocol::{Reply, Request, SessionStats, SnapshotInfo};
use super::state::{SessionRecord, SessionState, SessionStore};
use super::SessionError;
use crate::relay::stream::{Relay, RelayConfig, RelayFd};
use crate::relay::{Event, Usage};
use crate::sandbox::control;
use crate::sandbox::event_loop::{self, arm_timer, ExecStatus, Policy, PollSet, StatusPipe};
use crate::sandbox::supervisor::{now_ns, CommandFacts, Ending, Outcome, STOP_GRACE};
use crate::sys;
use crate::units::ByteSize;

/// After a command ended, how long output still held open by its background children is
/// relayed before the exec returns.
const DRAIN_AFTER_END: Duration = Duration::from_millis(100);

/// A connection to a living session.
#[derive(Debug)]
pub struct SessionClient {
    socket: OwnedFd,
    pub record: SessionRecord,
    /// Where the session's commands' output is kept (`nsbox logs`).
    output_log: PathBuf,
}

/// A command to run in a session. The default is the plain case: no stdin, no terminal, raw
/// output, the session's own timeout and output cap.
#[derive(Debug, Clone, Default)]
pub struct SessionExec {
    pub argv: Vec<OsString>,
    /// Set on top of the session's environment.
    pub env: Vec<(String, String)>,
    /// `env` is the whole environment: none of the session's.
    pub replace_env: bool,
    pub workdir: Option<PathBuf>,
    pub stdin: bool,
    pub tty: bool,
    /// The terminal's (rows, columns); None: the size of this process's terminal.
    pub winsize: Option<(u16, u16)>,
    pub json: bool,
    pub timeout: Option<Duration>,
    /// None: the session's default.
    pub max_output: Option<Option<ByteSize>>,
    /// Marks JSON output events (`"setup"` for a session's setup script).
    pub phase: Option<&'static str>,
    /// Raw output of the command goes to stderr (see `RelayConfig::stdout_to_stderr`).
    pub output_to_stderr: bool,
    /// With `json`: one `--result-json` document instead of events.
    pub result: bool,
    /// Write the `start` event once the command runs (it then carries the exec id).
    pub start_event: bool,
    /// The session's `--label`s, for the start event.
    pub labels: Option<std::collections::BTreeMap<String, String>>,
    /// Values to mask on top of the session's own secrets (this command's `--secret-env`).
    pub secrets: Vec<String>,
    /// Another uid:gid of the sandbox than its user's (never with capabilities).
    pub user: Option<(u32, u32)>,
}

/// What a command may take besides [`SessionExec`]'s plain data: descriptors and a hand-off.
#[derive(Default)]
pub struct ExecAttach {
    /// The command is forked at once but waits, before its exec, until this can be read
    /// (the OCI runtime's start FIFO: `create` makes the process, `start` lets it run).
    pub gate: Option<OwnedFd>,
    /// With a terminal: where the pty master goes instead of this process's relay (the OCI
    /// runtime's console socket). Called once, as soon as the command exists; an error ends
    /// the exec (and with it the command).
    pub on_terminal: Option<TerminalHandoff>,
}

/// Takes a command's pty master (see [`ExecAttach::on_terminal`]).
pub type TerminalHandoff = Box<dyn FnOnce(OwnedFd) -> Result<(), SessionError>>;

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> SessionError {
    move |e| SessionError::Io(what, e)
}

fn errno(what: &'static str) -> impl FnOnce(rustix::io::Errno) -> SessionError {
    move |e| SessionError::Io(what, io::Error::from_raw_os_error(e.raw_os_error()))
}

impl SessionClient {
    /// Connects to the session `id_or_name` (id, unique id prefix, or name).
    pub fn connect(store: &SessionStore, id_or_name: &str) -> Result<SessionClient, SessionError> {
        let record = store.resolve(id_or_name)?;
        match store.state(&record) {
            SessionState::Running => {}
            SessionState::Stopped => {
                return Err(SessionError::NotRunning {
                    id: record.id.clone(),
                    why: record.stopped.map(|s| s.reason).unwrap_or_default(),
                })
            }
            SessionState::Dead => {
                return Err(SessionError::NotRunning {
                    id: record.id.clone(),
                    why: "its supervisor was killed (`nsbox prune` cleans up)".into(),
                })
            }
        }
        let socket = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(errno("create a socket"))?;
        let path = store.socket(&record.id);
        let addr = SocketAddrUnix::new(&path).map_err(errno("session socket"))?;
        rustix::net::connect(&socket, &addr).map_err(|e| SessionError::NotRunning {
            id: record.id.clone(),
            why: format!("its socket does not answer ({e})"),
        })?;
        super::state::check_supervisor_peer(socket.as_fd(), &record, &path)?;
        let output_log = store.output_log(&record.id);
        Ok(SessionClient {
            socket,
            record,
            output_log,
        })
    }

    fn send(&self, request: &Request, fds: &[BorrowedFd<'_>]) -> Result<(), SessionError> {
        control::send(self.socket.as_fd(), request, fds).map_err(io_err("talk to the session"))
    }

    fn recv(&self) -> Result<Option<(Reply, Vec<OwnedFd>)>, SessionError> {
        loop {
            match control::recv::<Reply>(self.socket.as_fd()) {
                Ok(r) => return Ok(r),
                Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) => continue,
                Err(e) => return Err(SessionError::Io("talk to the session", e)),
            }
        }
    }

    fn request(&self, request: &Request) -> Result<(Reply, Vec<OwnedFd>), SessionError> {
        self.send(request, &[])?;
        self.recv()?.ok_or_else(|| SessionError::NotRunning {
            id: self.record.id.clone(),
            why: "it ended".into(),
        })
    }

    pub fn stats(&self) -> Result<SessionStats, SessionError> {
        match self.request(&Request::Stats)? {
            (Reply::Stats(stats), _) => Ok(stats),
            (other, _) => Err(SessionError::Protocol(format!("{other:?}"))),
        }
    }

    /// Stops the session (TERM to everything, KILL after `grace`) and waits until it ended.
    pub fn stop(self, grace: Duration, reason: &str) -> Result<(), SessionError> {
        self.stop_without_waiting(grace, reason)?;
        // After its answer, the supervisor closes the socket when everything is gone.
        while self.recv()?.is_some() {}
        Ok(())
    }

    /// Starts stopping the session (TERM to every command, KILL after `grace`) and returns
    /// once the supervisor has answered, without waiting for the teardown: a later
    /// [`SessionClient::stop`] waits for it.
    pub fn stop_without_waiting(&self, grace: Duration, reason: &str) -> Result<(), SessionError> {
        self.send(
            &Request::Stop {
                grace_ms: u64::try_from(grace.as_millis()).unwrap_or(u64::MAX),
                reason: reason.to_string(),
            },
            &[],
        )?;
        self.recv().map(drop)
    }

    /// Freezes (`nsbox pause`) or thaws (`nsbox resume`) the session; true when it changed.
    pub fn set_frozen(&self, frozen: bool) -> Result<bool, SessionError> {
        match self.request(&Request::Freeze { frozen })? {
            (Reply::Frozen { changed, .. }, _) => Ok(changed),
            (Reply::Refused { message }, _) => Err(SessionError::Refused(message)),
            (other, _) => Err(SessionError::Protocol(format!("{other:?}"))),
        }
    }

    /// Freezes the session until this client is dropped, and returns its root and upper
    /// directories (O_PATH) with what a commit needs to know.
    pub fn snapshot(&self) -> Result<(SnapshotInfo, OwnedFd, OwnedFd), SessionError> {
        match self.request(&Request::Snapshot)? {
            (Reply::Snapshot(info), fds) => {
                let mut fds = fds.into_iter();
                match (fds.next(), fds.next()) {
                    (Some(root), Some(upper)) => Ok((info, root, upper)),
                    _ => Err(SessionError::Protocol("no snapshot descriptors".into())),
                }
            }
            (Reply::Refused { message }, _) => Err(SessionError::Refused(message)),
            (other, _) => Err(SessionError::Protocol(format!("{other:?}"))),
        }
    }

    /// The sandbox's root directory (O_PATH), the sandbox user and the uid base.
    pub fn open_root(&self) -> Result<(OwnedFd, u32, u32, u32), SessionError> {
        match self.request(&Request::OpenRoot)? {
            (Reply::Root { uid, gid, uid_base }, fds) => {
                let root = fds
                    .into_iter()
                    .next()
                    .ok_or_else(|| SessionError::Protocol("no root descriptor".into()))?;
                Ok((root, uid, gid, uid_base))
            }
            (Reply::Refused { message }, _) => Err(SessionError::Refused(message)),
            (other, _) => Err(SessionError::Protocol(format!("{other:?}"))),
        }
    }

    /// Runs a command in the session and relays it to completion.
    pub fn exec(self, ex: SessionExec, t0: u64) -> Result<Outcome, SessionError> {
        self.exec_with(ex, t0, ExecAttach::default())
    }

    /// [`SessionClient::exec`], with a gate and a terminal hand-off.
    pub fn exec_with(
        self,
        ex: SessionExec,
        t0: u64,
        extra: ExecAttach,
    ) -> Result<Outcome, SessionError> {
        let signalfd = sys::signal::take_relay_signals().map_err(io_err("take over signals"))?;
        let timer = ex
            .timeout
            .map(arm_timer)
            .transpose()
            .map_err(io_err("arm timeout"))?;

        let pipe = || {
            rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
                .map_err(errno("create a pipe"))
        };
        let (status_read, status_write) = pipe()?;
        let (stdin_pipe, out_pipe, err_pipe) = if ex.tty {
            (None, None, None)
        } else {
            (
                if ex.stdin { Some(pipe()?) } else { None },
                Some(pipe()?),
                Some(pipe()?),
            )
        };
        let devnull =
            rustix::fs::open("/dev/null", OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
                .map_err(errno("open /dev/null"))?;
        let mut attached: Vec<BorrowedFd<'_>> = Vec::new();
        if !ex.tty {
            attached.push(
                stdin_pipe
                    .as_ref()
                    .map_or(devnull.as_fd(), |(r, _)| r.as_fd()),
            );
            attached.extend(out_pipe.as_ref().map(|(_, w)| w.as_fd()));
            attached.extend(err_pipe.as_ref().map(|(_, w)| w.as_fd()));
        }
        attached.extend(extra.gate.as_ref().map(|g| g.as_fd()));
        attached.push(status_write.as_fd());
        let winsize = ex.tty.then(|| {
            ex.winsize.or_else(|| {
                [0, 1, 2]
                    .into_iter()
                    .find_map(|fd| {
                        rustix::termios::tcgetwinsize(crate::relay::stream::std_fd(fd)).ok()
                    })
                    .map(|ws| (ws.ws_row, ws.ws_col))
            })
        });
        self.send(
            &Request::Exec {
                argv: ex.argv.iter().map(|a| a.as_bytes().to_vec()).collect(),
                env: ex.env.clone(),
                replace_env: ex.replace_env,
                workdir: ex.workdir.clone(),
                tty: ex.tty,
                winsize: winsize.flatten(),
                gated: extra.gate.is_some(),
                failure_on_terminal: extra.on_terminal.is_some(),
                user: ex.user,
            },
            &attached,
        )?;
        drop(attached);
        // The command holds the gate now. Ours would outlive it: the runtime's `start` must
        // find the start FIFO without a reader (ENXIO) once the gated command is gone.
        drop(extra.gate);
        drop(status_write);
        let stdin_dst = stdin_pipe.map(|(_, w)| w);
        let out = out_pipe.map(|(r, _)| r);
        let err = err_pipe.map(|(r, _)| r);
        crate::relay::stream::set_nonblocking(status_read.as_fd())
            .map_err(io_err("configure pipe"))?;

        let mut run = ClientRun {
            client: &self,
            ex: &ex,
            signalfd: signalfd.as_fd(),
            timer,
            relay: None,
            pending: Some((out, err, stdin_dst)),
            status: StatusPipe::new(Some(status_read)),
            facts: CommandFacts::default(),
            ended_at: None,
            stop_deadline: None,
            refused: None,
            socket_open: true,
            exec_id: None,
            usage: Usage::default(),
            on_terminal: extra.on_terminal,
        };
        let result = event_loop::drive(&mut run);
        let relay_truncated = run.relay.as_ref().is_some_and(|r| r.truncated());
        let capture = run
            .relay
            .as_mut()
            .map(|r| r.take_capture())
            .unwrap_or_default();
        if let Some(relay) = run.relay.as_mut() {
            relay.finish();
        }
        result?;
        if let Some(message) = run.refused {
            return Err(SessionError::Refused(message));
        }
        let facts = std::mem::take(&mut run.facts);
        // An exec failure is the command's own; the OOM flag covers commands that ran.
        let oom = facts.oom && facts.exec_failure.is_none();
        let Some(ending) = Ending::of_session_command(facts, ex.timeout.unwrap_or_default()) else {
            return Err(SessionError::NotRunning {
                id: self.record.id.clone(),
                why: "it ended while the command ran".into(),
            });
        };
        Ok(Outcome {
            id: self.record.id.clone(),
            ending,
            oom,
            truncated: relay_truncated,
            duration: Duration::from_nanos(now_ns().saturating_sub(t0)),
            marks: Vec::new(),
            warnings: Vec::new(),
            memory_limit: self.record.memory.map(ByteSize),
            in_session: true,
            exec_id: run.exec_id,
            usage: run.usage,
            capture,
            kept: None,
        })
    }
}

type PendingStreams = (Option<OwnedFd>, Option<OwnedFd>, Option<OwnedFd>);

/// A command running in a session, seen from the `nsbox exec --session` that runs it: the
/// client's policy in the shared event loop.
struct ClientRun<'a> {
    client: &'a SessionClient,
    ex: &'a SessionExec,
    signalfd: BorrowedFd<'a>,
    timer: Option<OwnedFd>,
    relay: Option<Relay>,
    /// The streams, until the command started (and the relay knows the secrets).
    pending: Option<PendingStreams>,
    status: StatusPipe,
    facts: CommandFacts,
    ended_at: Option<Instant>,
    stop_deadline: Option<Instant>,
    refused: Option<String>,
    socket_open: bool,
    exec_id: Option<u64>,
    usage: Usage,
    on_terminal: Option<TerminalHandoff>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Tag {
    Socket,
    Signal,
    Status,
    Timer,
    Relay(RelayFd),
}

impl Policy for ClientRun<'_> {
    type Tag = Tag;
    type Error = SessionError;

    fn done(&self) -> bool {
        let ended = self.facts.status.is_some();
        if self.refused.is_some() || !self.socket_open && !ended {
            return true;
        }
        let streams_done = self.relay.as_ref().is_none_or(|r| r.streams_closed())
            || self
                .ended_at
                .is_some_and(|t| t.elapsed() >= DRAIN_AFTER_END);
        ended && !self.status.is_open() && streams_done
    }

    fn before_wait(&mut self) -> Result<(), SessionError> {
        if let Some(deadline) = self.stop_deadline {
            if Instant::now() >= deadline && self.facts.status.is_none() {
                self.stop_deadline = None;
                self.signal(libc::SIGKILL)?;
            }
        }
        Ok(())
    }

    fn register<'a>(&'a self, set: &mut PollSet<'a, Tag>) {
        set.add(Tag::Signal, self.signalfd, PollFlags::IN);
        if self.socket_open {
            set.add(Tag::Socket, self.client.socket.as_fd(), PollFlags::IN);
        }
        if let Some(fd) = self.status.fd() {
            set.add(Tag::Status, fd, PollFlags::IN);
        }
        if let Some(fd) = &self.timer {
            set.add(Tag::Timer, fd.as_fd(), PollFlags::IN);
        }
        if let Some(relay) = &self.relay {
            relay.register(&mut set.tags, &mut set.fds, Tag::Relay);
        }
    }

    fn wait_at_most(&self) -> Option<Duration> {
        let mut wait: Option<Duration> = None;
        if let Some(deadline) = self.stop_deadline {
            wait = Some(deadline.saturating_duration_since(Instant::now()));
        }
        if let Some(at) = self.ended_at {
            let left = DRAIN_AFTER_END.saturating_sub(at.elapsed());
            wait = Some(wait.map_or(left, |w| w.min(left)));
        }
        wait
    }

    fn on_ready(&mut self, tag: Tag, revents: PollFlags) -> Result<(), SessionError> {
        match tag {
            Tag::Signal => self.on_signals()?,
            Tag::Socket => self.on_reply()?,
            Tag::Status => match self.status.read().map_err(io_err("read exec status"))? {
                Some(ExecStatus::Failed(f)) => self.facts.exec_failure = Some(f),
                Some(ExecStatus::Executed) | None => {}
            },
            Tag::Timer => {
                self.timer = None;
                if self.facts.status.is_none() {
                    self.facts.timed_out = true;
                    self.signal(libc::SIGKILL)?;
                }
            }
            Tag::Relay(which) => {
                if let Some(relay) = self.relay.as_mut() {
                    relay
                        .handle(which, revents)
                        .map_err(|e| SessionError::Io(e.what, e.source))?;
                }
            }
        }
        Ok(())
    }

    fn poll_failed(&mut self, e: rustix::io::Errno) -> SessionError {
        errno("wait for events")(e)
    }
}

impl ClientRun<'_> {
    fn signal(&self, signal: i32) -> Result<(), SessionError> {
        if self.socket_open {
            self.client.send(&Request::Signal { signal }, &[])?;
        }
        Ok(())
    }

    fn on_signals(&mut self) -> Result<(), SessionError> {
        for signal in event_loop::pending_signals(self.signalfd).map_err(io_err("read signals"))? {
            match signal {
                libc::SIGWINCH => {
                    if let Some(relay) = &self.relay {
                        relay.resize_terminal();
                    }
                }
                _ if self.facts.status.is_some() => {}
                _ => {
                    let first = self.facts.interrupted.is_none();
                    self.facts.interrupted.get_or_insert(signal);
                    if first {
                        self.signal(signal)?;
                        self.stop_deadline = Some(Instant::now() + STOP_GRACE);
                    } else {
                        self.signal(libc::SIGKILL)?;
                    }
                }
            }
        }
        Ok(())
    }
    fn on_reply(&mut self) -> Result<(), SessionError> {
        let Some((reply, fds)) = self.client.recv()? else {
            self.socket_open = false;
            return Ok(());
        };
        match reply {
            Reply::ExecStarted {
                mut secrets,
                exec_id,
            } => {
                self.exec_id = Some(exec_id);
                secrets.extend(self.ex.secrets.iter().cloned());
                let (out, err, stdin) = self.pending.take().unwrap_or((None, None, None));
                let max_output = self
                    .ex
                    .max_output
                    .unwrap_or(self.client.record.max_output.map(ByteSize));
                let mut relay = Relay::new(
                    RelayConfig {
                        json: self.ex.json,
                        tty: self.ex.tty,
                        stdin: self.ex.stdin,
                        max_output,
                        phase: self.ex.phase,
                        stdout_to_stderr: self.ex.output_to_stderr,
                        result: self.ex.json && self.ex.result,
                        exec_id: Some(exec_id),
                    },
                    &secrets,
                    out,
                    err,
                    stdin,
                )
                .map_err(|e| SessionError::Io(e.what, e.source))?;
                match (fds.into_iter().next(), self.on_terminal.take()) {
                    (Some(master), Some(handoff)) => handoff(master)?,
                    (Some(master), None) => relay
                        .attach_terminal(master)
                        .map_err(|e| SessionError::Io(e.what, e.source))?,
                    // A caller waiting for the hand-off (the runtime's `create`) must not wait
                    // for a command that may be gated until it returns.
                    (None, Some(_)) => {
                        return Err(SessionError::Protocol(
                            "the command started without its pty master".into(),
                        ))
                    }
                    (None, None) => {}
                }
                match crate::relay::log::OutputLog::open(&self.client.output_log, exec_id) {
                    Ok(log) => relay.keep_in(log),
                    Err(e) => tracing::warn!("the session's output is not kept: {e}"),
                }
                if self.ex.json && self.ex.start_event {
                    let record = &self.client.record;
                    relay.event(&Event::Start {
                        id: &record.id,
                        profile: &record.profile,
                        network: &record.network,
                        labels: self.ex.labels.as_ref(),
                    });
                }
                self.relay = Some(relay);
            }
            Reply::ExecEnded {
                code,
                signal,
                oom,
                usage,
            } => {
                self.facts.status = Some((code, signal));
                self.facts.oom = oom;
                self.usage = usage;
                self.ended_at = Some(Instant::now());
            }
            Reply::Refused { message } => self.refused = Some(message),
            other => return Err(SessionError::Protocol(format!("{other:?}"))),
        }
        Ok(())
    }
}
