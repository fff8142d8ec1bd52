//! Typed messages between the supervisor (host side) and the sandbox's setup child / init,
//! over a SOCK_SEQPACKET socket pair: one JSON message per packet, file descriptors attached
//! with SCM_RIGHTS where a message carries one (the pty master).
//!
//! Where one side must wait for one particular message before it can go on, it calls a typed
//! wait ([`wait_for_net_namespace`], [`wait_for_identity`] in the child; [`wait_ready`] on the
//! host) that returns that message's contents or a [`ChannelError`] naming what was expected
//! and what came instead; call sites do not match raw messages.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// A failed setup step, as the sandbox reports it: which step, what went wrong, what to do
/// about it, and the errno at its root (so the host tells "this host refused" from other
/// failures by number, never by text).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepFailure {
    pub step: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno: Option<i32>,
}

impl StepFailure {
    /// A failure with neither hint nor errno.
    pub fn new(step: impl Into<String>, message: impl Into<String>) -> StepFailure {
        StepFailure {
            step: step.into(),
            message: message.into(),
            hint: None,
            errno: None,
        }
    }
}

impl std::fmt::Display for StepFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.step, self.message)
    }
}

/// From the sandbox to the supervisor.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "msg", rename_all = "snake_case")]
pub enum ToSupervisor {
    /// Setup failed at `step`; the sandbox is about to exit.
    SetupFailed(StepFailure),
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
/// status], or [status] alone with a terminal (the init then makes the pty); a gated command's
/// gate comes right before the status pipe.
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
    /// The command is forked (its pty made and sent back) at once, but waits on the attached
    /// gate until something can be read from it before its exec: the OCI runtime's `create`
    /// with a terminal, whose `start` comes later.
    #[serde(default)]
    pub gated: bool,
    /// With a terminal: an exec failure is also written on it, since the caller handed the
    /// master on (the OCI runtime's console socket) and can show the failure nowhere else.
    #[serde(default)]
    pub failure_on_terminal: bool,
    /// uid:gid inside the sandbox to run as (sessions only: `exec --session -u`, E2B's
    /// `user="root"`, an OCI `exec` of another user), never with capabilities; None: the
    /// sandbox user.
    #[serde(default)]
    pub user: Option<(u32, u32)>,
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

impl ToSupervisor {
    /// The message's name on the wire, for errors.
    pub fn kind(&self) -> &'static str {
        match self {
            ToSupervisor::SetupFailed { .. } => "setup_failed",
            ToSupervisor::Started { .. } => "started",
            ToSupervisor::Exited { .. } => "exited",
            ToSupervisor::Ready { .. } => "ready",
            ToSupervisor::ExecStarted { .. } => "exec_started",
            ToSupervisor::ExecEnded { .. } => "exec_ended",
            ToSupervisor::ExecRefused { .. } => "exec_refused",
        }
    }
}

impl ToSandbox {
    /// The message's name on the wire, for errors.
    pub fn kind(&self) -> &'static str {
        match self {
            ToSandbox::Identity => "identity",
            ToSandbox::NetNamespace => "net_namespace",
            ToSandbox::NetFailed { .. } => "net_failed",
            ToSandbox::IdentityFailed { .. } => "identity_failed",
            ToSandbox::Exec(_) => "exec",
            ToSandbox::Signal { .. } => "signal",
            ToSandbox::Broadcast { .. } => "broadcast",
        }
    }
}

/// Why a typed wait did not return the message it waited for.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("expected {expected} from the other side, got {got}")]
    Unexpected {
        expected: &'static str,
        got: &'static str,
    },
    #[error("the other side ended while {expected} was awaited")]
    Closed { expected: &'static str },
    /// The other side reported that `step` failed (and gives up).
    #[error("{0}")]
    Failed(StepFailure),
    #[error("{expected} came without its descriptor")]
    MissingFd { expected: &'static str },
    #[error("control channel: {0}")]
    Io(#[from] io::Error),
}

/// What the init reports once a sandbox is built and waits for commands.
#[derive(Debug)]
pub struct Ready {
    pub marks: Vec<(String, u64)>,
    pub warnings: Vec<String>,
    /// The overlay's upper directory (O_PATH), attached by sandboxes that serve.
    pub upper: Option<OwnedFd>,
}

/// The sandbox's identity, as the setup child receives it: the mapped user namespace and, on
/// cgroup v1 hosts, the cgroup's `tasks` descriptors to join first.
#[derive(Debug)]
pub struct Identity {
    pub userns: OwnedFd,
    pub cgroup_tasks: Vec<OwnedFd>,
}

/// Receives one message, waiting for it on a blocking or non-blocking socket alike.
fn recv_waiting<T: DeserializeOwned>(
    socket: BorrowedFd<'_>,
    expected: &'static str,
) -> Result<(T, Vec<OwnedFd>), ChannelError> {
    loop {
        match recv::<T>(socket) {
            Ok(Some(received)) => return Ok(received),
            Ok(None) => return Err(ChannelError::Closed { expected }),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let mut fds = [rustix::event::PollFd::new(
                    &socket,
                    rustix::event::PollFlags::IN,
                )];
                match rustix::event::poll(&mut fds, None) {
                    Ok(_) | Err(rustix::io::Errno::INTR) => {}
                    Err(e) => return Err(io::Error::from_raw_os_error(e.raw_os_error()).into()),
                }
            }
            // The peer ended with our messages unread: reported once, ahead of what it had
            // already sent (say, why setup failed). Keep reading.
            Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// (Child) Waits for the network namespace the supervisor creates in parallel.
pub fn wait_for_net_namespace(socket: BorrowedFd<'_>) -> Result<OwnedFd, ChannelError> {
    const EXPECTED: &str = "net_namespace";
    match recv_waiting::<ToSandbox>(socket, EXPECTED)? {
        (ToSandbox::NetNamespace, fds) => fds
            .into_iter()
            .next()
            .ok_or(ChannelError::MissingFd { expected: EXPECTED }),
        (ToSandbox::NetFailed { message }, _) => Err(ChannelError::Failed(StepFailure::new(
            "create network namespace",
            message,
        ))),
        (other, _) => Err(ChannelError::Unexpected {
            expected: EXPECTED,
            got: other.kind(),
        }),
    }
}

/// (Child) Waits for the sandbox's identity: its user namespace and, on cgroup v1 hosts, the
/// cgroup to join. The supervisor sends a failure instead when it could not make either, or
/// when the filtered network could not be set up.
pub fn wait_for_identity(socket: BorrowedFd<'_>) -> Result<Identity, ChannelError> {
    const EXPECTED: &str = "identity";
    match recv_waiting::<ToSandbox>(socket, EXPECTED)? {
        (ToSandbox::Identity, fds) => {
            let mut fds = fds.into_iter();
            let userns = fds
                .next()
                .ok_or(ChannelError::MissingFd { expected: EXPECTED })?;
            Ok(Identity {
                userns,
                cgroup_tasks: fds.collect(),
            })
        }
        (ToSandbox::IdentityFailed { message }, _) => Err(ChannelError::Failed(StepFailure::new(
            "prepare user namespace",
            message,
        ))),
        (ToSandbox::NetFailed { message }, _) => Err(ChannelError::Failed(StepFailure::new(
            "set up the filtered network",
            message,
        ))),
        (other, _) => Err(ChannelError::Unexpected {
            expected: EXPECTED,
            got: other.kind(),
        }),
    }
}

/// (Host) Waits until a sandbox created to serve commands is built, or for the reason its
/// setup failed.
pub fn wait_ready(socket: BorrowedFd<'_>) -> Result<Ready, ChannelError> {
    const EXPECTED: &str = "ready";
    match recv_waiting::<ToSupervisor>(socket, EXPECTED)? {
        (ToSupervisor::Ready { marks, warnings }, fds) => Ok(Ready {
            marks,
            warnings,
            upper: fds.into_iter().next(),
        }),
        (ToSupervisor::SetupFailed(failure), _) => Err(ChannelError::Failed(failure)),
        (other, _) => Err(ChannelError::Unexpected {
            expected: EXPECTED,
            got: other.kind(),
        }),
    }
}

/// Largest message accepted (marks and warnings are small).
const MAX_MESSAGE: usize = 64 * 1024;
/// Most descriptors one message carries (a gated command's three streams, gate and status
/// pipe; the user namespace and up to three v1 cgroups).
const MAX_FDS: usize = 5;

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

    fn pair() -> (OwnedFd, OwnedFd) {
        rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap()
    }

    #[test]
    fn wait_ready_returns_the_ready_message() {
        let (host, child) = pair();
        let ready = ToSupervisor::Ready {
            marks: vec![("seccomp loaded".into(), 7)],
            warnings: vec!["w".into()],
        };
        send(child.as_fd(), &ready, &[]).unwrap();
        let got = wait_ready(host.as_fd()).unwrap();
        assert_eq!(got.marks, vec![("seccomp loaded".to_string(), 7)]);
        assert_eq!(got.warnings, vec!["w".to_string()]);
    }

    #[test]
    fn wait_ready_names_what_came_instead() {
        let (host, child) = pair();
        send(
            child.as_fd(),
            &ToSupervisor::ExecStarted { exec_id: 1 },
            &[],
        )
        .unwrap();
        match wait_ready(host.as_fd()) {
            Err(ChannelError::Unexpected { expected, got }) => {
                assert_eq!((expected, got), ("ready", "exec_started"))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn wait_ready_reports_setup_failure_and_hang_up() {
        let (host, child) = pair();
        rustix::io::ioctl_fionbio(&host, true).unwrap();
        let failed = ToSupervisor::SetupFailed(StepFailure {
            step: "mount".into(),
            message: "denied".into(),
            hint: Some("run as root".into()),
            errno: Some(libc::EPERM),
        });
        send(child.as_fd(), &failed, &[]).unwrap();
        match wait_ready(host.as_fd()) {
            Err(ChannelError::Failed(f)) => {
                assert_eq!((f.step.as_str(), f.message.as_str()), ("mount", "denied"));
                // Hint and errno travel as fields.
                assert_eq!(
                    (f.hint.as_deref(), f.errno),
                    (Some("run as root"), Some(libc::EPERM))
                );
            }
            other => panic!("{other:?}"),
        }
        drop(child);
        assert!(matches!(
            wait_ready(host.as_fd()),
            Err(ChannelError::Closed { expected: "ready" })
        ));
    }

    #[test]
    fn wait_for_identity_takes_the_namespace_and_cgroup_descriptors() {
        let (host, child) = pair();
        let (a, b) = rustix::pipe::pipe().unwrap();
        send(host.as_fd(), &ToSandbox::Identity, &[a.as_fd(), b.as_fd()]).unwrap();
        let identity = wait_for_identity(child.as_fd()).unwrap();
        assert_eq!(identity.cgroup_tasks.len(), 1);

        send(host.as_fd(), &ToSandbox::Identity, &[]).unwrap();
        assert!(matches!(
            wait_for_identity(child.as_fd()),
            Err(ChannelError::MissingFd { .. })
        ));
        send(host.as_fd(), &ToSandbox::NetNamespace, &[a.as_fd()]).unwrap();
        assert!(matches!(
            wait_for_identity(child.as_fd()),
            Err(ChannelError::Unexpected {
                expected: "identity",
                got: "net_namespace"
            })
        ));
        let refused = ToSandbox::NetFailed {
            message: "no nft".into(),
        };
        send(host.as_fd(), &refused, &[]).unwrap();
        match wait_for_identity(child.as_fd()) {
            Err(ChannelError::Failed(f)) => assert_eq!(f.step, "set up the filtered network"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn wait_for_net_namespace_takes_its_descriptor() {
        let (host, child) = pair();
        let (a, _b) = rustix::pipe::pipe().unwrap();
        send(host.as_fd(), &ToSandbox::NetNamespace, &[a.as_fd()]).unwrap();
        assert!(wait_for_net_namespace(child.as_fd()).is_ok());
        send(host.as_fd(), &ToSandbox::Identity, &[a.as_fd()]).unwrap();
        assert!(matches!(
            wait_for_net_namespace(child.as_fd()),
            Err(ChannelError::Unexpected { .. })
        ));
        drop(host);
        assert!(matches!(
            wait_for_net_namespace(child.as_fd()),
            Err(ChannelError::Closed { .. })
        ));
    }

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
