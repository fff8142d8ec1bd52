//! runc's console socket: with `process.terminal`, the engine names a listening unix socket
//! (`--console-socket`); the runtime connects to it and sends the pty master of the process's
//! terminal as one message, the master's name (`/dev/ptmx`, runc's) as the payload and the
//! descriptor as SCM_RIGHTS. The pty itself is made inside the sandbox (its own devpts) by the
//! session's init; this module only connects and sends. It is the engine's side that keeps
//! the master: the runtime closes its copy once sent.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::net::{
    AddressFamily, SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix,
    SocketFlags, SocketType,
};

use super::RuntimeError;

/// The name sent with the master: what runc sends (its master is /dev/ptmx opened).
pub const MASTER_NAME: &str = "/dev/ptmx";

/// A connection to the engine's console socket.
#[derive(Debug)]
pub struct ConsoleSocket {
    socket: OwnedFd,
    path: PathBuf,
}

fn errno(e: rustix::io::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

impl ConsoleSocket {
    /// Connects to `path` (a stream socket, as runc's `net.Dial("unix", ...)`); the error names
    /// the flag and what to check.
    pub fn connect(path: &Path) -> Result<ConsoleSocket, RuntimeError> {
        let refused = |source: io::Error| RuntimeError::ConsoleSocket {
            path: path.to_path_buf(),
            source,
        };
        let socket = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| refused(errno(e)))?;
        let addr = SocketAddrUnix::new(path).map_err(|e| refused(errno(e)))?;
        rustix::net::connect(&socket, &addr).map_err(|e| refused(errno(e)))?;
        Ok(ConsoleSocket {
            socket,
            path: path.to_path_buf(),
        })
    }

    /// A connected socket, for tests and for callers that made their own.
    pub fn from_fd(socket: OwnedFd, path: PathBuf) -> ConsoleSocket {
        ConsoleSocket { socket, path }
    }

    /// Sends `master` (the engine keeps it; the caller then closes its own copy) and closes the
    /// connection.
    pub fn send_master(self, master: BorrowedFd<'_>) -> io::Result<()> {
        let fds = [master];
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
            return Err(io::Error::other("no room for the descriptor"));
        }
        let iov = [io::IoSlice::new(MASTER_NAME.as_bytes())];
        let sent =
            rustix::net::sendmsg(self.socket.as_fd(), &iov, &mut control, SendFlags::NOSIGNAL)
                .map_err(|e| {
                    io::Error::other(format!(
                        "send the pty master to {}: {}",
                        self.path.display(),
                        errno(e)
                    ))
                })?;
        // One message of a few bytes on a stream socket is never cut short, but a receiver
        // that reads a short name must not be handed one.
        if sent != MASTER_NAME.len() {
            return Err(io::Error::other(format!(
                "send the pty master to {}: {sent} of {} bytes sent",
                self.path.display(),
                MASTER_NAME.len()
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};

    /// What runc's receiver (go-runc's `ReceiveMaster`) reads: one message, the name as the
    /// payload, exactly one descriptor, which is the one sent.
    #[test]
    fn the_master_goes_as_one_message_with_its_name_and_one_descriptor() {
        let (ours, engine) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .expect("socketpair");
        let (pipe_r, _pipe_w) = rustix::pipe::pipe().expect("pipe");
        ConsoleSocket::from_fd(ours, PathBuf::from("/test"))
            .send_master(pipe_r.as_fd())
            .expect("send");
        let mut name = [0u8; 4096];
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(2))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut iov = [io::IoSliceMut::new(&mut name)];
        let got = rustix::net::recvmsg(&engine, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC)
            .expect("recvmsg");
        let mut fds = Vec::new();
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = message {
                fds.extend(received);
            }
        }
        assert_eq!(&name[..got.bytes], MASTER_NAME.as_bytes());
        assert_eq!(fds.len(), 1);
        let same = |a: BorrowedFd<'_>, b: BorrowedFd<'_>| {
            let (a, b) = (rustix::fs::fstat(a).unwrap(), rustix::fs::fstat(b).unwrap());
            (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
        };
        assert!(same(fds[0].as_fd(), pipe_r.as_fd()), "the descriptor sent");
        // The sender closed its end: nothing else follows.
        let mut more = [0u8; 1];
        assert_eq!(rustix::io::read(&engine, &mut more).expect("read"), 0);
    }

    #[test]
    fn a_missing_socket_names_the_flag_and_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("no-such.sock");
        let err = ConsoleSocket::connect(&path).expect_err("nothing listens");
        let text = err.to_string();
        assert!(text.contains("--console-socket"), "{text}");
        assert!(text.contains("no-such.sock"), "{text}");
    }
}
