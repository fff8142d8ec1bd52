//! Typed messages between the supervisor (host side) and the sandbox's setup child / init,
//! over a SOCK_SEQPACKET socket pair: one JSON message per packet, file descriptors attached
//! with SCM_RIGHTS where a message carries one (the pty master).

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// From the sandbox to the supervisor.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "msg", rename_all = "snake_case")]
pub enum ToSupervisor {
    /// Setup failed at `step`; the sandbox is about to exit.
    SetupFailed { step: String, message: String },
    /// The workload process exists (its exec follows). A pty master may be attached.
    Started {
        /// (phase, monotonic nanoseconds) marks taken inside the sandbox.
        marks: Vec<(String, u64)>,
        warnings: Vec<String>,
    },
    /// The workload ended; the init exits next, which ends every process of the sandbox.
    Exited {
        code: Option<i32>,
        signal: Option<i32>,
    },
    /// (Serve mode) The sandbox is built; the init waits for commands.
    Ready {
        marks: Vec<(String, u64)>,
        warnings: Vec<String>,
    },
    /// (Serve mode) A command was forked. With a terminal, its pty master is attached.
    ExecStarted { exec_id: u64 },
    /// (Serve mode) A command ended.
    ExecEnded {
        exec_id: u64,
        code: Option<i32>,
        signal: Option<i32>,
    },
    /// (Serve mode) A command could not even be forked.
    ExecRefused { exec_id: u64, message: String },
}

/// A command to run in a living sandbox (sessions). Its standard streams and the pipe its
/// exec failure is reported on travel as attached descriptors: [stdin, stdout, stderr,
/// status], or [status] alone with a terminal (the init then makes the pty).
#[derive(Debug, Serialize, Deserialize, PartialEq, Clone)]
pub struct ExecRequest {
    pub exec_id: u64,
    /// The command and its arguments (bytes: arguments need not be UTF-8).
    pub argv: Vec<Vec<u8>>,
    /// The complete environment.
    pub env: Vec<(String, String)>,
    pub workdir: std::path::PathBuf,
    pub tty: bool,
    /// (rows, columns) of the caller's terminal.
    pub winsize: Option<(u16, u16)>,
}

/// From the supervisor to the sandbox.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "msg", rename_all = "snake_case")]
pub enum ToSandbox {
    /// The sandbox's user namespace (mapped), attached first; when the cgroup was created after
    /// clone (cgroup v1 hosts), its `tasks` descriptors follow: join it, then the namespace.
    Identity,
    /// The sandbox's network namespace, attached (created in parallel by the supervisor).
    NetNamespace,
    /// The network namespace could not be created (before `NetNamespace`), or a filtered
    /// network could not be set up in it (instead of `Identity`).
    NetFailed { message: String },
    /// The user namespace or the cgroup could not be made; the sandbox must give up.
    IdentityFailed { message: String },
    /// (Serve mode) Run a command.
    Exec(ExecRequest),
    /// (Serve mode) Send a signal to a command's process group.
    Signal { exec_id: u64, signal: i32 },
    /// (Serve mode) Send a signal to every process of the sandbox (but the init).
    Broadcast { signal: i32 },
}

/// Largest message accepted (marks and warnings are small).
const MAX_MESSAGE: usize = 64 * 1024;
/// Most descriptors one message carries (the user namespace and up to three v1 cgroups).
const MAX_FDS: usize = 4;

/// Sends one message, with `fds` attached.
pub fn send<T: Serialize>(
    socket: BorrowedFd<'_>,
    msg: &T,
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    let bytes = serde_json::to_vec(msg).map_err(io::Error::other)?;
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other(
            "too many descriptors for one control message",
        ));
    }
    let iov = [io::IoSlice::new(&bytes)];
    rustix::net::sendmsg(socket, &iov, &mut control, SendFlags::NOSIGNAL)
        .map_err(|e| io::Error::from_raw_os_error(e.raw_os_error()))?;
    Ok(())
}

/// Receives one message and the descriptors attached to it. `Ok(None)` at end of stream (the
/// other side is gone); `WouldBlock` when nothing is waiting on a non-blocking socket.
pub fn recv<T: DeserializeOwned>(socket: BorrowedFd<'_>) -> io::Result<Option<(T, Vec<OwnedFd>)>> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [io::IoSliceMut::new(&mut buf)];
    let result = rustix::net::recvmsg(socket, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC)
        .map_err(|e| io::Error::from_raw_os_error(e.raw_os_error()))?;
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    if result.bytes == 0 {
        return Ok(None);
    }
    let msg = serde_json::from_slice(&buf[..result.bytes]).map_err(io::Error::other)?;
    Ok(Some((msg, fds)))
}

/// True when the other end of the socket has been closed (the peer process died), without
/// consuming a message.
pub fn peer_gone(socket: BorrowedFd<'_>) -> bool {
    let mut byte = [0u8; 1];
    match rustix::net::recv(
        socket.as_fd(),
        &mut byte,
        RecvFlags::PEEK | RecvFlags::DONTWAIT,
    ) {
        Ok((0, _)) => true,
        Ok(_) => false,
        Err(rustix::io::Errno::AGAIN) => false,
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::net::{AddressFamily, SocketFlags, SocketType};

    #[test]
    fn messages_and_descriptors_round_trip() {
        let (a, b) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        let (r, _w) = rustix::pipe::pipe().unwrap();
        let msg = ToSupervisor::Started {
            marks: vec![("mounts".into(), 42)],
            warnings: vec![],
        };
        send(a.as_fd(), &msg, &[r.as_fd()]).unwrap();
        let (got, fds): (ToSupervisor, _) = recv(b.as_fd()).unwrap().unwrap();
        assert_eq!(got, msg);
        assert_eq!(fds.len(), 1);
        assert!(!peer_gone(b.as_fd()));
        drop(a);
        assert!(peer_gone(b.as_fd()));
        assert!(recv::<ToSupervisor>(b.as_fd()).unwrap().is_none());
    }
}
