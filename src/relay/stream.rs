//! The relay between one sandboxed command and nsbox's caller: the command's stdout/stderr
//! (or its pty) to nsbox's stdout/stderr, masked, capped, raw or as JSON events, and nsbox's
//! stdin to the command. It owns those descriptors but not the loop: the caller (the one-shot
//! supervisor, or the client of a session exec) polls what [`Relay::watch`] lists and hands
//! ready descriptors back to [`Relay::handle`].

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::event::{PollFd, PollFlags};
use rustix::fs::OFlags;

use super::result::Capture;
use super::{Event, Masker, Sink, Utf8Chunker};
use crate::units::ByteSize;

/// How the relay presents output.
#[derive(Debug, Clone, Copy)]
pub struct RelayConfig {
    /// Write JSON events instead of raw bytes.
    pub json: bool,
    /// The command's output comes from a pty (one stream); stdin goes to it.
    pub tty: bool,
    /// Relay nsbox's stdin to the command.
    pub stdin: bool,
    /// Relay at most this many bytes of output.
    pub max_output: Option<ByteSize>,
    /// Marks output events ("setup" for a session's setup script; "run" when None).
    pub phase: Option<&'static str>,
    /// With `json`: keep the output (masked, capped) for the `--result-json` document instead
    /// of writing events.
    pub result: bool,
    /// A session command's exec id, stamped on every event.
    pub exec_id: Option<u64>,
    /// In raw mode, the command's stdout goes to nsbox's stderr too (a setup script's output,
    /// so that stdout carries only the session id).
    pub stdout_to_stderr: bool,
}

/// A descriptor the relay wants polled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayFd {
    /// The command's stdout (or the pty master).
    Out,
    /// The command's stderr.
    Err,
    /// nsbox's stdin, readable.
    StdinSrc,
    /// The command's stdin, writable.
    StdinDst,
    /// nsbox's stdout, writable.
    SinkOut,
    /// nsbox's stderr, writable.
    SinkErr,
}

/// A failed relay operation.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct RelayError {
    pub what: &'static str,
    pub source: io::Error,
}

fn errno(what: &'static str) -> impl FnOnce(rustix::io::Errno) -> RelayError {
    move |e| RelayError {
        what,
        source: io::Error::from_raw_os_error(e.raw_os_error()),
    }
}

const READ_CHUNK: usize = 64 * 1024;

/// nsbox's own standard stream `fd` (0, 1 or 2).
pub fn std_fd(fd: i32) -> BorrowedFd<'static> {
    match fd {
        0 => rustix::stdio::stdin(),
        1 => rustix::stdio::stdout(),
        _ => rustix::stdio::stderr(),
    }
}

/// Sets O_NONBLOCK on a descriptor nsbox owns alone.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let err = |e: rustix::io::Errno| io::Error::from_raw_os_error(e.raw_os_error());
    let flags = rustix::fs::fcntl_getfl(fd).map_err(err)?;
    rustix::fs::fcntl_setfl(fd, flags | OFlags::NONBLOCK).map_err(err)
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

/// The relay for one command.
pub struct Relay {
    cfg: RelayConfig,
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
    terminal: Option<RawTerminal>,
    buf: Vec<u8>,
    capture: Capture,
    log: Option<super::log::OutputLog>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("relayed", &self.relayed)
            .field("truncated", &self.truncated)
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// A relay for the command's `out`/`err` (None with a pty: it arrives later through
    /// [`Relay::attach_terminal`]) and `stdin_dst` (the write end of its stdin pipe).
    pub fn new(
        cfg: RelayConfig,
        secrets: &[String],
        out: Option<OwnedFd>,
        err: Option<OwnedFd>,
        stdin_dst: Option<OwnedFd>,
    ) -> Result<Relay, RelayError> {
        for fd in [&out, &err, &stdin_dst].into_iter().flatten() {
            set_nonblocking(fd.as_fd()).map_err(|source| RelayError {
                what: "configure pipe",
                source,
            })?;
        }
        Ok(Relay {
            cfg,
            out,
            err,
            stdin_dst,
            stdin_buf: Vec::new(),
            stdin_open: cfg.stdin,
            stdout: Sink::new(std_fd(1)),
            stderr: Sink::new(std_fd(2)),
            maskers: [Masker::new(secrets), Masker::new(secrets)],
            chunkers: [Utf8Chunker::default(), Utf8Chunker::default()],
            relayed: 0,
            truncated: false,
            terminal: None,
            buf: vec![0u8; READ_CHUNK],
            capture: Capture::default(),
            log: None,
        })
    }

    /// True once the command's output streams have ended (or been dropped).
    pub fn streams_closed(&self) -> bool {
        self.out.is_none() && self.err.is_none()
    }

    /// Output beyond the cap was dropped.
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// The descriptors to poll now, with what to wait for.
    pub fn watch(&self) -> Vec<(RelayFd, BorrowedFd<'_>, PollFlags)> {
        let mut w = Vec::with_capacity(6);
        // Backpressure: stop reading the command when its output cannot go anywhere yet.
        let out_full = self.stdout.is_full();
        let err_full = if self.cfg.json {
            out_full
        } else {
            self.stderr.is_full()
        };
        if let (Some(fd), false) = (&self.out, out_full) {
            w.push((RelayFd::Out, fd.as_fd(), PollFlags::IN));
        }
        if let (Some(fd), false) = (&self.err, err_full) {
            w.push((RelayFd::Err, fd.as_fd(), PollFlags::IN));
        }
        if self.stdin_open && self.stdin_dst.is_some() && self.stdin_buf.len() < READ_CHUNK {
            w.push((RelayFd::StdinSrc, std_fd(0), PollFlags::IN));
        }
        if let (Some(fd), false) = (&self.stdin_dst, self.stdin_buf.is_empty()) {
            w.push((RelayFd::StdinDst, fd.as_fd(), PollFlags::OUT));
        }
        if self.stdout.wants_write() {
            w.push((RelayFd::SinkOut, self.stdout.fd(), PollFlags::OUT));
        }
        if self.stderr.wants_write() {
            w.push((RelayFd::SinkErr, self.stderr.fd(), PollFlags::OUT));
        }
        w
    }

    /// Adds what [`Relay::watch`] lists to a poll set, tagged with `tag(which)`.
    pub fn register<'a, T: Copy>(
        &'a self,
        tags: &mut Vec<T>,
        fds: &mut Vec<PollFd<'a>>,
        tag: impl Fn(RelayFd) -> T,
    ) {
        for (which, fd, flags) in self.watch() {
            tags.push(tag(which));
            fds.push(PollFd::from_borrowed_fd(fd, flags));
        }
    }

    /// Handles a descriptor that became ready.
    pub fn handle(&mut self, which: RelayFd, revents: PollFlags) -> Result<(), RelayError> {
        match which {
            RelayFd::Out => self.on_output(0)?,
            RelayFd::Err => self.on_output(1)?,
            RelayFd::StdinSrc => self.on_stdin(revents)?,
            RelayFd::StdinDst => self.flush_stdin()?,
            RelayFd::SinkOut => self.stdout.flush_some().map_err(|source| RelayError {
                what: "write to stdout",
                source,
            })?,
            RelayFd::SinkErr => self.stderr.flush_some().map_err(|source| RelayError {
                what: "write to stderr",
                source,
            })?,
        }
        if self.stdout.is_closed() && self.out.is_some() && !self.cfg.tty {
            // Nobody reads our stdout any more: close the command's, so it gets SIGPIPE like
            // any writer into a closed pipeline.
            self.out = None;
        }
        Ok(())
    }

    /// Takes the pty master of a `-t` command: its output, and its input with `-i` (the
    /// caller's terminal goes raw until the relay finishes).
    pub fn attach_terminal(&mut self, master: OwnedFd) -> Result<(), RelayError> {
        set_nonblocking(master.as_fd()).map_err(|source| RelayError {
            what: "configure terminal",
            source,
        })?;
        if self.cfg.stdin {
            let dup =
                rustix::io::fcntl_dupfd_cloexec(&master, 3).map_err(errno("configure terminal"))?;
            self.stdin_dst = Some(dup);
            let stdin = std_fd(0);
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

    /// Copies the caller's terminal size to the command's pty (on SIGWINCH).
    pub fn resize_terminal(&self) {
        if let (true, Some(master)) = (self.cfg.tty, &self.out) {
            for fd in [0, 1, 2] {
                if let Ok(ws) = rustix::termios::tcgetwinsize(std_fd(fd)) {
                    let _ = rustix::termios::tcsetwinsize(master, ws);
                    break;
                }
            }
        }
    }

    /// Queues a JSON event line on stdout (in order with the command's output events). With
    /// `--result-json` nothing is written: the document says it all at the end.
    pub fn event(&mut self, event: &Event<'_>) {
        if !self.cfg.result {
            self.stdout.push(&event.to_line_for(self.cfg.exec_id));
        }
    }

    /// Queues a line of nsbox's own (a network event) on stdout or stderr, in order with the
    /// command's output; it does not count against the output cap.
    pub fn push_line(&mut self, to_stderr: bool, line: &[u8]) {
        if to_stderr {
            self.stderr.push(line);
        } else {
            self.stdout.push(line);
        }
    }

    /// Queues one JSON object of nsbox's own (a network event) in the event stream, stamped
    /// like the relay's events; kept for the document with `--result-json`.
    pub fn push_json(&mut self, object: &[u8]) {
        let line = super::events::stamp_line(object, self.cfg.exec_id);
        if self.cfg.result {
            if let Ok(value) = serde_json::from_slice(&line) {
                self.capture.network.push(value);
            }
        } else {
            self.stdout.push(&line);
        }
    }

    /// Also keeps the output (as relayed: masked, capped) in a session's output log.
    pub fn keep_in(&mut self, log: super::log::OutputLog) {
        self.log = Some(log);
    }

    /// What was kept for `--result-json` (empty otherwise).
    pub fn take_capture(&mut self) -> Capture {
        std::mem::take(&mut self.capture)
    }

    /// Queues one of nsbox's own messages on stderr (raw mode only).
    pub fn message(&mut self, text: &str) {
        self.stderr.push(format!("nsbox: {text}\n").as_bytes());
    }

    fn on_output(&mut self, stream: usize) -> Result<(), RelayError> {
        let src = if stream == 0 { &self.out } else { &self.err };
        let Some(fd) = src else {
            return Ok(());
        };
        let n = match rustix::io::read(fd, &mut self.buf) {
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
            let data = &self.buf[..n];
            self.maskers[stream].push(data, &mut masked);
        }
        self.emit(stream, &masked, n == 0);
        Ok(())
    }

    /// Applies the output cap and queues bytes (or JSON events) for the caller.
    fn emit(&mut self, stream: usize, data: &[u8], end: bool) {
        let mut data = data;
        if let Some(limit) = self.cfg.max_output {
            let left = limit.bytes().saturating_sub(self.relayed) as usize;
            if data.len() > left {
                data = &data[..left];
                if !self.truncated {
                    self.truncated = true;
                    if self.cfg.json {
                        self.event(&Event::Truncated {
                            limit: limit.bytes(),
                        });
                    } else {
                        self.stderr.push(
                            format!(
                                "\nnsbox: output truncated at {limit} (--max-output); further output is dropped while the command runs on\n"
                            )
                            .as_bytes(),
                        );
                    }
                }
            }
        }
        self.relayed += data.len() as u64;
        if let Some(log) = self.log.as_mut() {
            log.record(stream, self.cfg.phase.unwrap_or("run"), data);
        }
        if self.cfg.json && self.cfg.result {
            let kept = if stream == 0 {
                &mut self.capture.stdout
            } else {
                &mut self.capture.stderr
            };
            kept.extend_from_slice(data);
        } else if self.cfg.json {
            let mut chunks = Vec::new();
            if !data.is_empty() {
                chunks = self.chunkers[stream].push(data);
            }
            if end {
                chunks.extend(self.chunkers[stream].finish());
            }
            for mut chunk in chunks {
                chunk.phase = Some(self.cfg.phase.unwrap_or("run"));
                let event = if stream == 0 {
                    Event::Stdout(chunk)
                } else {
                    Event::Stderr(chunk)
                };
                self.stdout.push(&event.to_line_for(self.cfg.exec_id));
            }
        } else if stream == 0 && !self.cfg.stdout_to_stderr {
            self.stdout.push(data);
        } else {
            self.stderr.push(data);
        }
    }

    fn on_stdin(&mut self, revents: PollFlags) -> Result<(), RelayError> {
        let room = READ_CHUNK - self.stdin_buf.len();
        match rustix::io::read(std_fd(0), &mut self.buf[..room]) {
            Ok(0) => self.close_stdin(),
            Ok(n) => {
                let data = self.buf[..n].to_vec();
                self.stdin_buf.extend_from_slice(&data);
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
        if self.stdin_buf.is_empty() && !self.cfg.tty {
            // End of input reaches the command as end of file. (A terminal has no end of file:
            // the user types ^D.)
            self.stdin_dst = None;
        }
    }

    fn flush_stdin(&mut self) -> Result<(), RelayError> {
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
        if !self.stdin_open && !self.cfg.tty {
            self.stdin_dst = None;
        }
        Ok(())
    }

    /// Restores the caller's terminal and writes out everything queued (blocking).
    pub fn finish(&mut self) {
        self.terminal = None;
        let _ = self.stdout.flush_all();
        let _ = self.stderr.flush_all();
    }
}
