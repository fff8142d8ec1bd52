//! Writing to nsbox's own stdout/stderr from an event loop without ever blocking it.
//!
//! These descriptors are shared with whoever started nsbox, so they are never switched to
//! non-blocking mode. Instead each write is sized so it cannot block: for a pipe, no more than
//! the free space in it; for a socket, MSG_DONTWAIT. Regular files never block; terminals only
//! when stopped (Ctrl-S), which the user asked for.

use std::io;
use std::os::fd::BorrowedFd;

use rustix::fs::FileType;

/// A queue of bytes for one of nsbox's output descriptors.
#[derive(Debug)]
pub struct Sink<'a> {
    fd: BorrowedFd<'a>,
    kind: SinkKind,
    queue: Vec<u8>,
    sent: usize,
    closed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SinkKind {
    Pipe { capacity: usize },
    Socket,
    Other,
}

/// Above this many queued bytes the relay stops reading from the sandbox (backpressure).
pub const HIGH_WATER: usize = 1 << 20;

impl<'a> Sink<'a> {
    pub fn new(fd: BorrowedFd<'a>) -> Sink<'a> {
        let kind = match rustix::fs::fstat(fd) {
            Ok(st) => match FileType::from_raw_mode(st.st_mode) {
                FileType::Fifo => SinkKind::Pipe {
                    capacity: rustix::pipe::fcntl_getpipe_size(fd).unwrap_or(65536),
                },
                FileType::Socket => SinkKind::Socket,
                _ => SinkKind::Other,
            },
            Err(_) => SinkKind::Other,
        };
        Sink {
            fd,
            kind,
            queue: Vec::new(),
            sent: 0,
            closed: false,
        }
    }

    pub fn fd(&self) -> BorrowedFd<'a> {
        self.fd
    }

    /// Queues bytes (dropped silently once the reader went away).
    pub fn push(&mut self, data: &[u8]) {
        if !self.closed {
            self.queue.extend_from_slice(data);
        }
    }

    pub fn pending(&self) -> usize {
        self.queue.len() - self.sent
    }

    /// True when the loop should wait for this descriptor to become writable.
    pub fn wants_write(&self) -> bool {
        !self.closed && self.pending() > 0
    }

    /// True when the sandbox's output should wait for this sink to drain.
    pub fn is_full(&self) -> bool {
        self.pending() >= HIGH_WATER
    }

    /// True once a write failed with EPIPE: the reader is gone.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Writes as much as can be written without blocking.
    pub fn flush_some(&mut self) -> io::Result<()> {
        while self.wants_write() {
            let data = &self.queue[self.sent..];
            let result = match self.kind {
                SinkKind::Pipe { capacity } => {
                    let used = rustix::io::ioctl_fionread(self.fd).unwrap_or(0) as usize;
                    let free = capacity.saturating_sub(used);
                    if free == 0 {
                        break;
                    }
                    rustix::io::write(self.fd, &data[..data.len().min(free)])
                }
                SinkKind::Socket => rustix::net::send(
                    self.fd,
                    data,
                    rustix::net::SendFlags::DONTWAIT | rustix::net::SendFlags::NOSIGNAL,
                ),
                SinkKind::Other => rustix::io::write(self.fd, data),
            };
            match result {
                Ok(n) => self.sent += n,
                Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => break,
                Err(rustix::io::Errno::PIPE) => {
                    self.closed = true;
                    self.queue.clear();
                    self.sent = 0;
                    return Ok(());
                }
                Err(e) => return Err(io::Error::from_raw_os_error(e.raw_os_error())),
            }
        }
        if self.sent == self.queue.len() {
            self.queue.clear();
            self.sent = 0;
        } else if self.sent > HIGH_WATER {
            self.queue.drain(..self.sent);
            self.sent = 0;
        }
        Ok(())
    }

    /// Writes everything, blocking if needed (at the very end of a run).
    pub fn flush_all(&mut self) -> io::Result<()> {
        while self.wants_write() {
            match rustix::io::write(self.fd, &self.queue[self.sent..]) {
                Ok(n) => self.sent += n,
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::AGAIN) => {
                    let mut fds = [rustix::event::PollFd::new(
                        &self.fd,
                        rustix::event::PollFlags::OUT,
                    )];
                    let _ = rustix::event::poll(&mut fds, None);
                }
                Err(rustix::io::Errno::PIPE) => {
                    self.closed = true;
                    break;
                }
                Err(e) => return Err(io::Error::from_raw_os_error(e.raw_os_error())),
            }
        }
        self.queue.clear();
        self.sent = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn pipe_writes_never_block_and_keep_order() {
        let (r, w) = rustix::pipe::pipe().unwrap();
        let mut sink = Sink::new(w.as_fd());
        let big = vec![b'x'; 300_000];
        sink.push(&big);
        sink.push(b"END");
        // The pipe holds 64 KiB: a blocking write of 300 KB would hang this test.
        sink.flush_some().unwrap();
        assert!(sink.wants_write());
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        while sink.wants_write() || got.len() < 300_003 {
            let n = rustix::io::read(&r, &mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
            sink.flush_some().unwrap();
        }
        assert_eq!(got.len(), 300_003);
        assert!(got.ends_with(b"END"));
    }

    #[test]
    fn a_closed_reader_marks_the_sink_closed() {
        let (r, w) = rustix::pipe::pipe().unwrap();
        drop(r);
        let mut sink = Sink::new(w.as_fd());
        sink.push(b"data");
        sink.flush_some().unwrap();
        assert!(sink.is_closed());
        assert!(!sink.wants_write());
    }
}
