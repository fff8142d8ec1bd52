//! Running a command in a session from the server: the same request `nsbox exec --session`
//! sends over the session's control socket, with pipes for stdin, stdout, stderr and the exec
//! status attached (SCM_RIGHTS). The pipes are read by the runtime; nothing here forks.
//!
//! Output goes through a bounded channel to the HTTP response: a client that stops reading
//! stops the reads from the pipes, so the command blocks on its writes (back-pressure) and the
//! server holds at most the channel's few chunks. Output beyond the command's cap is dropped
//! with one `truncated` event; secrets are masked before anything leaves.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
use serde::Deserialize;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::mpsc;

use crate::relay::{Chunk, Masker, Utf8Chunker};
use crate::sandbox::control;
use crate::sandbox::setup::ExecFailure;
use crate::sandbox::supervisor::{Ending, Outcome};
use crate::session::protocol::{Reply, Request};
use crate::session::state::{SessionRecord, SessionStore};

/// After a command ended, how long output still held open by its background children is
/// relayed (as `nsbox exec --session` does).
const DRAIN_AFTER_END: Duration = Duration::from_millis(100);
/// Default output cap of a command run through the API (stdout and stderr together).
pub const DEFAULT_MAX_OUTPUT: u64 = 16 << 20;
/// Events buffered between the pipes and a slow client.
const CHANNEL_DEPTH: usize = 16;

/// What `POST /v1/sandboxes/{id}/commands` accepts.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandRequest {
    /// The program and its arguments (exactly one of `argv` and `shell`).
    pub argv: Option<Vec<String>>,
    /// A shell string, run as `/bin/sh -c STRING`.
    pub shell: Option<String>,
    pub cwd: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// "30s", "5m".
    pub timeout: Option<String>,
    /// Text written to the command's stdin (then closed).
    pub stdin: Option<String>,
    /// Bytes (base64) written to its stdin.
    pub stdin_b64: Option<String>,
    /// Bytes of output kept (stdout and stderr together); the rest is dropped.
    pub max_output: Option<u64>,
    /// Keep stdin open after `stdin`/`stdin_b64` for `POST .../commands/{cid}/stdin`.
    #[serde(default)]
    pub stdin_open: bool,
    /// Another user of the sandbox: "root", "UID" or "UID:GID" (never with capabilities).
    pub user: Option<String>,
}

/// A command checked and ready to send.
#[derive(Debug, Clone)]
pub struct PreparedCommand {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
    pub timeout: Option<Duration>,
    pub stdin: Option<Vec<u8>>,
    pub max_output: u64,
    /// Values masked on top of the session's own secrets (secrets a pooled sandbox received
    /// when it was claimed).
    pub secrets: Vec<String>,
    pub stdin_open: bool,
    /// Another uid:gid of the sandbox than its user's (E2B's `user="root"`: 0:0).
    pub user: Option<(u32, u32)>,
}

impl CommandRequest {
    pub fn prepare(self) -> Result<PreparedCommand, String> {
        let argv = match (self.argv, self.shell) {
            (Some(argv), None) if !argv.is_empty() => argv,
            (None, Some(shell)) => vec!["/bin/sh".into(), "-c".into(), shell],
            _ => return Err("give exactly one of `argv` (a non-empty list) and `shell`".into()),
        };
        if argv.iter().any(|a| a.contains('\0')) {
            return Err("argv: an argument has a NUL byte".into());
        }
        for (k, v) in &self.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                return Err(format!("env: {k:?} is not a variable name"));
            }
        }
        let timeout = self
            .timeout
            .as_deref()
            .map(|t| super::sandboxes::duration("timeout", t).map_err(|e| e.0))
            .transpose()?;
        let stdin = match (self.stdin, self.stdin_b64) {
            (Some(_), Some(_)) => return Err("give at most one of `stdin` and `stdin_b64`".into()),
            (Some(text), None) => Some(text.into_bytes()),
            (None, Some(b64)) => {
                use base64::Engine;
                Some(
                    base64::engine::general_purpose::STANDARD
                        .decode(b64)
                        .map_err(|e| format!("stdin_b64: {e}"))?,
                )
            }
            (None, None) => None,
        };
        Ok(PreparedCommand {
            argv,
            env: self.env.into_iter().collect(),
            cwd: self.cwd.map(PathBuf::from),
            timeout,
            stdin,
            max_output: self.max_output.unwrap_or(DEFAULT_MAX_OUTPUT),
            secrets: Vec::new(),
            stdin_open: self.stdin_open,
            user: self
                .user
                .as_deref()
                .map(|u| match u {
                    "root" => Ok((0, 0)),
                    ids => crate::profile::parse_user(ids).map_err(|e| format!("user: {e}")),
                })
                .transpose()?,
        })
    }
}

/// What a running command reports, in order: output, at most one `Truncated`, then `Ended`.
#[derive(Debug)]
pub enum CommandEvent {
    Stdout(Chunk),
    Stderr(Chunk),
    Truncated {
        limit: u64,
    },
    Ended(Box<Outcome>),
    /// The session went away or the socket failed while the command ran.
    Failed(String),
}

/// Why a command did not start.
#[derive(Debug)]
pub enum StartError {
    /// The session is not running (or its socket does not answer).
    NotRunning(String),
    /// The program could not be executed (not found, not executable, bad cwd).
    Exec(ExecFailure),
    /// The supervisor refused the request.
    Refused(String),
    Io(String),
}

fn errno(what: &str) -> impl FnOnce(rustix::io::Errno) -> StartError + '_ {
    move |e| StartError::Io(format!("{what}: {e}"))
}

/// A started command: its events arrive on `events`; dropping the receiver (the client went
/// away) kills the command.
pub struct RunningCommand {
    pub events: mpsc::Receiver<CommandEvent>,
    /// Signals for the command's process group (`POST .../commands/{cid}/signal`).
    pub signals: mpsc::Sender<i32>,
    /// Its stdin, when the request kept it open (`POST .../commands/{cid}/stdin`).
    pub stdin: Option<StdinPipe>,
}

/// A command's stdin kept open for later writes; `None` inside once closed.
pub type StdinPipe = std::sync::Arc<tokio::sync::Mutex<Option<pipe::Sender>>>;

struct Session {
    socket: AsyncFd<OwnedFd>,
}

impl Session {
    fn send(&self, request: &Request, fds: &[std::os::fd::BorrowedFd<'_>]) -> io::Result<()> {
        control::send(self.socket.get_ref().as_fd(), request, fds)
    }

    /// The next reply; None when the supervisor closed the socket.
    async fn recv(&self) -> io::Result<Option<Reply>> {
        loop {
            let mut guard = self.socket.readable().await?;
            match control::recv::<Reply>(self.socket.get_ref().as_fd()) {
                Ok(Some((reply, _fds))) => return Ok(Some(reply)),
                Ok(None) => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => guard.clear_ready(),
                Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }
}

/// Connects to the session's control socket (non-blocking, owned by the runtime).
fn connect(store: &SessionStore, record: &SessionRecord) -> Result<Session, StartError> {
    let socket = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(errno("create a socket"))?;
    let addr = SocketAddrUnix::new(store.socket(&record.id)).map_err(errno("session socket"))?;
    rustix::net::connect(&socket, &addr)
        .map_err(|e| StartError::NotRunning(format!("its socket does not answer ({e})")))?;
    crate::relay::stream::set_nonblocking(socket.as_fd())
        .map_err(|e| StartError::Io(format!("configure the socket: {e}")))?;
    let socket = AsyncFd::new(socket).map_err(|e| StartError::Io(format!("register: {e}")))?;
    Ok(Session { socket })
}

/// Starts `cmd` in the session and returns once it runs (or could not start: the HTTP status
/// then says so before any output was sent).
pub async fn start(
    store: &SessionStore,
    record: &SessionRecord,
    cmd: PreparedCommand,
) -> Result<RunningCommand, StartError> {
    let session = connect(store, record)?;
    let pipe = || {
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(errno("create a pipe"))
    };
    let (status_r, status_w) = pipe()?;
    let (stdin_r, stdin_w) = pipe()?;
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    session
        .send(
            &Request::Exec {
                argv: cmd.argv.iter().map(|a| a.as_bytes().to_vec()).collect(),
                env: cmd.env.clone(),
                replace_env: false,
                workdir: cmd.cwd.clone(),
                tty: false,
                winsize: None,
                gated: false,
                failure_on_terminal: false,
                user: cmd.user,
            },
            &[
                stdin_r.as_fd(),
                out_w.as_fd(),
                err_w.as_fd(),
                status_w.as_fd(),
            ],
        )
        .map_err(|e| StartError::NotRunning(format!("talk to the session: {e}")))?;
    drop((stdin_r, out_w, err_w, status_w));
    let t0 = Instant::now();

    // The supervisor answers ExecStarted (or Refused); the status pipe then reaches its end
    // when the program was executed, or carries why it could not be.
    let mut secrets = None;
    let reg = |fd: OwnedFd| {
        pipe::Receiver::from_owned_fd(fd).map_err(|e| StartError::Io(format!("pipe: {e}")))
    };
    let mut status = reg(status_r)?;
    let mut status_buf = Vec::new();
    let mut status_done = false;
    let mut early_end = None;
    while secrets.is_none() || !status_done {
        tokio::select! {
            reply = session.recv(), if secrets.is_none() || early_end.is_none() => {
                match reply.map_err(|e| StartError::Io(format!("talk to the session: {e}")))? {
                    Some(Reply::ExecStarted { secrets: s, .. }) => secrets = Some(s),
                    Some(Reply::Refused { message }) => return Err(StartError::Refused(message)),
                    Some(Reply::ExecEnded { code, signal, oom, .. }) => early_end = Some((code, signal, oom)),
                    Some(other) => return Err(StartError::Io(format!("unexpected answer: {other:?}"))),
                    None => return Err(StartError::NotRunning("it ended".into())),
                }
            }
            n = status.read_buf(&mut status_buf), if !status_done => {
                match n {
                    Ok(0) => status_done = true,
                    Ok(_) if status_buf.len() > 64 * 1024 => status_done = true,
                    Ok(_) => {}
                    Err(e) => return Err(StartError::Io(format!("read the exec status: {e}"))),
                }
            }
        }
    }
    if !status_buf.is_empty() {
        if let Ok(failure) = serde_json::from_slice::<ExecFailure>(&status_buf) {
            return Err(StartError::Exec(failure));
        }
    }
    let mut secrets = secrets.unwrap_or_default();
    secrets.extend(cmd.secrets.iter().cloned());
    let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
    let (signals, signal_rx) = mpsc::channel(4);
    let run = Run {
        session,
        tx,
        signals: signal_rx,
        id: record.id.clone(),
        memory_limit: record.memory,
        masks: [Masker::new(&secrets), Masker::new(&secrets)],
        chunkers: [Utf8Chunker::default(), Utf8Chunker::default()],
        sent: 0,
        limit: cmd.max_output,
        truncated: false,
        deadline: cmd.timeout.map(|t| tokio::time::Instant::now() + t),
        timeout: cmd.timeout,
        timed_out: false,
        client_gone: false,
        t0,
    };
    // Input is written by its own task, so a command that does not read it cannot stall
    // the output; with no input the pipe closes at once (end of file), unless the client
    // keeps it open to send more later (`stdin_open`).
    let stdin = if cmd.stdin.is_some() || cmd.stdin_open {
        let writer = pipe::Sender::from_owned_fd(stdin_w)
            .map_err(|e| StartError::Io(format!("pipe: {e}")))?;
        let shared: StdinPipe = std::sync::Arc::new(tokio::sync::Mutex::new(Some(writer)));
        let input = cmd.stdin.unwrap_or_default();
        let keep = cmd.stdin_open;
        let task_pipe = shared.clone();
        tokio::spawn(async move {
            let mut guard = task_pipe.lock().await;
            if let Some(w) = guard.as_mut() {
                let _ = w.write_all(&input).await;
            }
            if !keep {
                *guard = None;
            }
        });
        keep.then_some(shared)
    } else {
        drop(stdin_w);
        None
    };
    let out = reg(out_r)?;
    let err = reg(err_r)?;
    tokio::spawn(run.drive(out, err, early_end));
    Ok(RunningCommand {
        events: rx,
        signals,
        stdin,
    })
}

struct Run {
    session: Session,
    tx: mpsc::Sender<CommandEvent>,
    signals: mpsc::Receiver<i32>,
    id: String,
    memory_limit: Option<u64>,
    masks: [Masker; 2],
    chunkers: [Utf8Chunker; 2],
    sent: u64,
    limit: u64,
    truncated: bool,
    deadline: Option<tokio::time::Instant>,
    timeout: Option<Duration>,
    timed_out: bool,
    client_gone: bool,
    t0: Instant,
}

impl Run {
    /// Kills the command's process group (timeout, or nobody is listening any more).
    fn kill(&self) {
        let _ = self.session.send(
            &Request::Signal {
                signal: libc::SIGKILL,
            },
            &[],
        );
    }

    /// Sends an event to the client, waiting while its buffer is full; the command's
    /// deadline still applies while waiting.
    async fn emit(&mut self, event: CommandEvent) {
        if self.client_gone {
            return;
        }
        let send = self.tx.send(event);
        tokio::pin!(send);
        loop {
            let deadline = self.deadline.filter(|_| !self.timed_out);
            tokio::select! {
                r = &mut send => {
                    if r.is_err() {
                        self.client_gone = true;
                        self.kill();
                    }
                    return;
                }
                _ = sleep_until(deadline) => {
                    self.timed_out = true;
                    self.kill();
                }
            }
        }
    }

    /// Masks, caps and forwards one read of output (`which`: 0 stdout, 1 stderr).
    async fn output(&mut self, which: usize, bytes: &[u8], end: bool) {
        let mut masked = Vec::with_capacity(bytes.len());
        self.masks[which].push(bytes, &mut masked);
        if end {
            self.masks[which].finish(&mut masked);
        }
        let room = self.limit.saturating_sub(self.sent);
        let keep = masked
            .len()
            .min(usize::try_from(room).unwrap_or(usize::MAX));
        if keep < masked.len() && !self.truncated {
            masked.truncate(keep);
            self.truncated = true;
        } else if self.truncated {
            masked.clear();
        }
        self.sent += masked.len() as u64;
        let mut chunks = self.chunkers[which].push(&masked);
        if end || self.truncated {
            chunks.extend(self.chunkers[which].finish());
        }
        for chunk in chunks {
            let event = if which == 0 {
                CommandEvent::Stdout(chunk)
            } else {
                CommandEvent::Stderr(chunk)
            };
            self.emit(event).await;
        }
    }

    async fn drive(
        mut self,
        mut out: pipe::Receiver,
        mut err: pipe::Receiver,
        mut ended: Option<(Option<i32>, Option<i32>, bool)>,
    ) {
        let mut open = [true, true];
        let mut bufs = [vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]];
        let mut socket_open = true;
        let mut drain_until: Option<tokio::time::Instant> = ended.map(|_| drain_deadline());
        let mut told_truncated = false;
        loop {
            if ended.is_some() && (!open[0] && !open[1]) {
                break;
            }
            if !socket_open && ended.is_none() {
                self.emit(CommandEvent::Failed(
                    "the session ended while the command ran".into(),
                ))
                .await;
                return;
            }
            let deadline = self.deadline.filter(|_| !self.timed_out);
            let [buf_out, buf_err] = &mut bufs;
            tokio::select! {
                n = out.read(buf_out), if open[0] => {
                    let n = n.unwrap_or(0);
                    if n == 0 { open[0] = false; }
                    let data = buf_out[..n].to_vec();
                    self.output(0, &data, n == 0).await;
                }
                n = err.read(buf_err), if open[1] => {
                    let n = n.unwrap_or(0);
                    if n == 0 { open[1] = false; }
                    let data = buf_err[..n].to_vec();
                    self.output(1, &data, n == 0).await;
                }
                Some(signal) = self.signals.recv(), if ended.is_none() => {
                    let _ = self.session.send(&Request::Signal { signal }, &[]);
                }
                reply = self.session.recv(), if socket_open && ended.is_none() => {
                    match reply {
                        Ok(Some(Reply::ExecEnded { code, signal, oom, .. })) => {
                            ended = Some((code, signal, oom));
                            drain_until = Some(drain_deadline());
                        }
                        Ok(Some(_)) => {}
                        Ok(None) | Err(_) => socket_open = false,
                    }
                }
                _ = sleep_until(deadline) => {
                    self.timed_out = true;
                    self.kill();
                }
                _ = sleep_until(drain_until) => break,
            }
            if self.truncated && !told_truncated {
                told_truncated = true;
                let limit = self.limit;
                self.emit(CommandEvent::Truncated { limit }).await;
            }
        }
        let Some((code, signal, oom)) = ended else {
            return;
        };
        let ending = match (code, signal) {
            (Some(code), _) => Ending::Exited(code),
            (None, Some(_)) if self.timed_out => Ending::TimedOut(self.timeout.unwrap_or_default()),
            (None, Some(sig)) => Ending::Signaled(sig),
            (None, None) => Ending::Signaled(libc::SIGKILL),
        };
        let outcome = Outcome {
            id: self.id.clone(),
            ending,
            oom,
            truncated: self.truncated,
            duration: self.t0.elapsed(),
            marks: Vec::new(),
            warnings: Vec::new(),
            memory_limit: self.memory_limit.map(crate::units::ByteSize),
            in_session: true,
            exec_id: None,
            usage: crate::relay::Usage::default(),
            capture: Default::default(),
            kept: None,
        };
        self.emit(CommandEvent::Ended(Box::new(outcome))).await;
    }
}

fn drain_deadline() -> tokio::time::Instant {
    tokio::time::Instant::now() + DRAIN_AFTER_END
}

/// Sleeps until `at`, or forever when there is no deadline.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
