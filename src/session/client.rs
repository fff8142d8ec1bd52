//! Talking to a session from an nsbox command: run a command in it (relayed, masked and capped
//! exactly like a one-shot exec), ask for its stats, stop it, or get its root for copies.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rustix::event::PollFlags;
use rustix::fs::{Mode, OFlags};
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

use super::protocol::{Reply, Request, SessionStats};
use super::state::{SessionRecord, SessionState, SessionStore};
use super::SessionError;
use crate::relay::stream::{Relay, RelayConfig, RelayFd};
use crate::sandbox::control;
use crate::sandbox::setup::ExecFailure;
use crate::sandbox::supervisor::{arm_timer, now_ns, Ending, Outcome, PollSet, STOP_GRACE};
use crate::spec::units::ByteSize;
use crate::sys;

/// After a command ended, how long output still held open by its background children is
/// relayed before the exec returns.
const DRAIN_AFTER_END: Duration = Duration::from_millis(100);

/// A connection to a living session.
#[derive(Debug)]
pub struct SessionClient {
    socket: OwnedFd,
    pub record: SessionRecord,
}

/// A command to run in a session.
#[derive(Debug, Clone)]
pub struct SessionExec {
    pub argv: Vec<OsString>,
    /// Set on top of the session's environment.
    pub env: Vec<(String, String)>,
    pub workdir: Option<PathBuf>,
    pub stdin: bool,
    pub tty: bool,
    pub json: bool,
    pub timeout: Option<Duration>,
    /// None: the session's default.
    pub max_output: Option<Option<ByteSize>>,
    /// Marks JSON output events (`"setup"` for a session's setup script).
    pub phase: Option<&'static str>,
    /// Raw output of the command goes to stderr (see `RelayConfig::stdout_to_stderr`).
    pub output_to_stderr: bool,
    /// Values masked in this command's output besides the session's own secrets (the
    /// values of `exec --session --secret`).
    pub secrets: Vec<String>,
}

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
        Ok(SessionClient { socket, record })
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
        self.send(
            &Request::Stop {
                grace_ms: grace.as_millis() as u64,
                reason: reason.to_string(),
            },
            &[],
        )?;
        // The supervisor answers, then closes the socket when everything is gone.
        while self.recv()?.is_some() {}
        Ok(())
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
        attached.push(status_write.as_fd());
        let winsize = ex.tty.then(|| {
            [0, 1, 2]
                .into_iter()
                .find_map(|fd| rustix::termios::tcgetwinsize(crate::relay::stream::std_fd(fd)).ok())
                .map(|ws| (ws.ws_row, ws.ws_col))
        });
        self.send(
            &Request::Exec {
                argv: ex.argv.iter().map(|a| a.as_bytes().to_vec()).collect(),
                env: ex.env.clone(),
                workdir: ex.workdir.clone(),
                tty: ex.tty,
                winsize: winsize.flatten(),
            },
            &attached,
        )?;
        drop(attached);
        drop(status_write);
        let stdin_dst = stdin_pipe.map(|(_, w)| w);
        let out = out_pipe.map(|(r, _)| r);
        let err = err_pipe.map(|(r, _)| r);
        crate::relay::stream::set_nonblocking(status_read.as_fd())
            .map_err(io_err("configure pipe"))?;

        let mut run = ClientRun {
            client: &self,
            ex: &ex,
            relay: None,
            pending: Some((out, err, stdin_dst)),
            status: Some(status_read),
            status_buf: Vec::new(),
            ended: None,
            ended_at: None,
            exec_failure: None,
            timed_out: false,
            interrupted: None,
            stop_deadline: None,
            refused: None,
            socket_open: true,
        };
        let result = run.event_loop(signalfd.as_fd(), timer.as_ref().map(|t| t.as_fd()));
        let relay_truncated = run.relay.as_ref().is_some_and(|r| r.truncated());
        if let Some(relay) = run.relay.as_mut() {
            relay.finish();
        }
        result?;
        if let Some(message) = run.refused {
            return Err(SessionError::Refused(message));
        }
        let (ending, oom) = if let Some(f) = run.exec_failure.take() {
            (
                Ending::ExecFailed {
                    code: f.code,
                    message: f.message,
                },
                false,
            )
        } else if let Some((code, signal, oom)) = run.ended {
            match (code, signal) {
                (Some(code), _) => (Ending::Exited(code), oom),
                (None, Some(sig)) if run.timed_out => {
                    let _ = sig;
                    (Ending::TimedOut(ex.timeout.unwrap_or_default()), oom)
                }
                (None, Some(sig)) => match run.interrupted {
                    Some(by) if sig == libc::SIGKILL => (Ending::Interrupted(by), oom),
                    _ => (Ending::Signaled(sig), oom),
                },
                (None, None) => (Ending::Signaled(libc::SIGKILL), oom),
            }
        } else {
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
        })
    }
}

type PendingStreams = (Option<OwnedFd>, Option<OwnedFd>, Option<OwnedFd>);

struct ClientRun<'a> {
    client: &'a SessionClient,
    ex: &'a SessionExec,
    relay: Option<Relay>,
    /// The streams, until the command started (and the relay knows the secrets).
    pending: Option<PendingStreams>,
    status: Option<OwnedFd>,
    status_buf: Vec<u8>,
    ended: Option<(Option<i32>, Option<i32>, bool)>,
    ended_at: Option<Instant>,
    exec_failure: Option<ExecFailure>,
    timed_out: bool,
    interrupted: Option<i32>,
    stop_deadline: Option<Instant>,
    refused: Option<String>,
    socket_open: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Tag {
    Socket,
    Signal,
    Status,
    Timer,
    Relay(RelayFd),
}

impl ClientRun<'_> {
    fn done(&self) -> bool {
        if self.refused.is_some() || !self.socket_open && self.ended.is_none() {
            return true;
        }
        let streams_done = self.relay.as_ref().is_none_or(|r| r.streams_closed())
            || self
                .ended_at
                .is_some_and(|t| t.elapsed() >= DRAIN_AFTER_END);
        self.ended.is_some() && self.status.is_none() && streams_done
    }

    fn event_loop(
        &mut self,
        signalfd: BorrowedFd<'_>,
        mut timer: Option<BorrowedFd<'_>>,
    ) -> Result<(), SessionError> {
        while !self.done() {
            let mut set = PollSet::new();
            set.add(Tag::Signal, signalfd, PollFlags::IN);
            if self.socket_open {
                set.add(Tag::Socket, self.client.socket.as_fd(), PollFlags::IN);
            }
            if let Some(fd) = &self.status {
                set.add(Tag::Status, fd.as_fd(), PollFlags::IN);
            }
            if let Some(fd) = timer {
                set.add(Tag::Timer, fd, PollFlags::IN);
            }
            if let Some(relay) = &self.relay {
                relay.register(&mut set.tags, &mut set.fds, Tag::Relay);
            }
            let mut wait: Option<Duration> = None;
            if let Some(deadline) = self.stop_deadline {
                wait = Some(deadline.saturating_duration_since(Instant::now()));
            }
            if let Some(at) = self.ended_at {
                let left = DRAIN_AFTER_END.saturating_sub(at.elapsed());
                wait = Some(wait.map_or(left, |w| w.min(left)));
            }
            let ready = set.wait(wait).map_err(errno("wait for events"))?;
            for (tag, revents) in ready {
                match tag {
                    Tag::Signal => self.on_signals(signalfd)?,
                    Tag::Socket => self.on_reply()?,
                    Tag::Status => self.on_status()?,
                    Tag::Timer => {
                        timer = None;
                        if self.ended.is_none() {
                            self.timed_out = true;
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
            }
            if let Some(deadline) = self.stop_deadline {
                if Instant::now() >= deadline && self.ended.is_none() {
                    self.stop_deadline = None;
                    self.signal(libc::SIGKILL)?;
                }
            }
        }
        Ok(())
    }

    fn signal(&self, signal: i32) -> Result<(), SessionError> {
        if self.socket_open {
            self.client.send(&Request::Signal { signal }, &[])?;
        }
        Ok(())
    }

    fn on_signals(&mut self, signalfd: BorrowedFd<'_>) -> Result<(), SessionError> {
        while let Some(signal) =
            sys::signal::read_signal(signalfd).map_err(io_err("read signals"))?
        {
            match signal {
                libc::SIGWINCH => {
                    if let Some(relay) = &self.relay {
                        relay.resize_terminal();
                    }
                }
                _ if self.ended.is_some() => {}
                _ => {
                    let first = self.interrupted.is_none();
                    self.interrupted.get_or_insert(signal);
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
            Reply::ExecStarted { mut secrets } => {
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
                    },
                    &secrets,
                    out,
                    err,
                    stdin,
                )
                .map_err(|e| SessionError::Io(e.what, e.source))?;
                if let Some(master) = fds.into_iter().next() {
                    relay
                        .attach_terminal(master)
                        .map_err(|e| SessionError::Io(e.what, e.source))?;
                }
                self.relay = Some(relay);
            }
            Reply::ExecEnded { code, signal, oom } => {
                self.ended = Some((code, signal, oom));
                self.ended_at = Some(Instant::now());
            }
            Reply::Refused { message } => self.refused = Some(message),
            other => return Err(SessionError::Protocol(format!("{other:?}"))),
        }
        Ok(())
    }

    fn on_status(&mut self) -> Result<(), SessionError> {
        let Some(fd) = &self.status else {
            return Ok(());
        };
        let mut buf = [0u8; 4096];
        loop {
            match rustix::io::read(fd, &mut buf) {
                Ok(0) => {
                    if !self.status_buf.is_empty() {
                        self.exec_failure = serde_json::from_slice(&self.status_buf).ok();
                    }
                    self.status = None;
                    return Ok(());
                }
                Ok(n) => self.status_buf.extend_from_slice(&buf[..n]),
                Err(rustix::io::Errno::AGAIN) => return Ok(()),
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(errno("read exec status")(e)),
            }
        }
    }
}
