//! Signal masks and signalfd: the supervisor and the init read signals as events instead of
//! running handlers.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::check;

/// A set of signal numbers.
#[derive(Clone, Copy)]
pub struct SignalSet(libc::sigset_t);

impl std::fmt::Debug for SignalSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SignalSet")
    }
}

impl SignalSet {
    pub fn new(signals: &[i32]) -> Self {
        // SAFETY: sigemptyset/sigaddset initialise and modify the local sigset_t only.
        unsafe {
            let mut set = std::mem::zeroed::<libc::sigset_t>();
            libc::sigemptyset(&mut set);
            for &s in signals {
                libc::sigaddset(&mut set, s);
            }
            SignalSet(set)
        }
    }
}

/// Blocks `set` for this thread (so the signals wait in a signalfd instead of running handlers).
pub fn block(set: &SignalSet) -> io::Result<()> {
    // SAFETY: the set is a valid sigset_t; the old mask is not requested.
    let ret = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set.0, std::ptr::null_mut()) };
    if ret != 0 {
        return Err(io::Error::from_raw_os_error(ret));
    }
    Ok(())
}

/// Prepares signals for execve, as a freshly started program expects: every signal unblocked
/// and none ignored. execve itself resets caught signals to their defaults; only ignored ones
/// survive it, and the only one nsbox ignores is SIGPIPE (Rust's runtime does that at start).
pub fn reset_for_exec() -> io::Result<()> {
    // SAFETY: setting SIG_DFL installs no handler code.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    // SAFETY: an empty set is valid; unblocking everything touches only our mask.
    let ret = unsafe {
        let mut empty = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut empty);
        libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut())
    };
    if ret != 0 {
        return Err(io::Error::from_raw_os_error(ret));
    }
    Ok(())
}

/// A signalfd for `set` (which must be blocked), non-blocking and close-on-exec.
pub fn signalfd(set: &SignalSet) -> io::Result<OwnedFd> {
    // SAFETY: creates a new descriptor from a valid sigset_t.
    let fd = unsafe { libc::signalfd(-1, &set.0, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
    check(fd as libc::c_long)?;
    // SAFETY: signalfd returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The signals a process that relays a command takes over (Ctrl-C, termination, hangup,
/// quit, window size): blocked, and delivered through the returned signalfd instead.
pub fn take_relay_signals() -> io::Result<OwnedFd> {
    let set = SignalSet::new(&[
        libc::SIGINT,
        libc::SIGTERM,
        libc::SIGHUP,
        libc::SIGQUIT,
        libc::SIGWINCH,
    ]);
    block(&set)?;
    signalfd(&set)
}

/// Reads one pending signal from a signalfd; `None` when none is pending.
pub fn read_signal(fd: BorrowedFd<'_>) -> io::Result<Option<i32>> {
    Ok(read_signal_info(fd)?.map(|info| info.signal))
}

/// A signal read from a signalfd, with the value a [`queue`] sender attached to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignalInfo {
    pub signal: i32,
    /// Set when the signal was sent queued (si_code SI_QUEUE, by [`pidfd_queue`] or
    /// `sigqueue`) by root: its value.
    pub queued_by_root: Option<u64>,
    /// The sender's pid as this process's pid namespace sees it: 0 for a sender outside it
    /// (or the kernel), so a sandbox's init can tell the supervisor's signals from the
    /// workload's.
    pub sender_pid: u32,
}

/// The `siginfo_t` of a queued signal as the kernel reads it on 64-bit Linux: signo, errno,
/// code, then (8-aligned) the sender's pid and uid and the value; 128 bytes in all.
#[repr(C)]
struct QueuedSigInfo {
    signo: i32,
    errno: i32,
    code: i32,
    _pad: i32,
    pid: i32,
    uid: u32,
    value: u64,
    _rest: [u8; 96],
}

/// Sends `signal` with a value through a pidfd (like `sigqueue`, without its pid-reuse race);
/// a signalfd reader sees it in [`SignalInfo::queued_by_root`]. `nsbox stop` passes a
/// one-shot's grace period this way.
pub fn pidfd_queue(pidfd: BorrowedFd<'_>, signal: i32, value: u64) -> io::Result<()> {
    const _: () = assert!(std::mem::size_of::<QueuedSigInfo>() == 128);
    let info = QueuedSigInfo {
        signo: signal,
        errno: 0,
        code: libc::SI_QUEUE,
        _pad: 0,
        pid: i32::try_from(std::process::id()).unwrap_or(0),
        uid: rustix::process::getuid().as_raw(),
        value,
        _rest: [0; 96],
    };
    // SAFETY: pidfd_send_signal reads 128 bytes of siginfo from a valid pointer (the kernel
    // accepts a caller-built one whose si_code is negative, as SI_QUEUE is); the fd is
    // borrowed and valid.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            &info as *const QueuedSigInfo,
            0,
        )
    };
    check(ret).map(drop)
}

/// Reads one pending signal, with its sender's queued value; `None` when none is pending.
pub fn read_signal_info(fd: BorrowedFd<'_>) -> io::Result<Option<SignalInfo>> {
    // SAFETY: signalfd_siginfo is plain data; zeroed is a valid value.
    let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::signalfd_siginfo>();
    // SAFETY: `info` is valid for `size` bytes of writes.
    let n = unsafe {
        libc::read(
            fd.as_raw_fd(),
            &mut info as *mut _ as *mut libc::c_void,
            size,
        )
    };
    if n < 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::WouldBlock {
            return Ok(None);
        }
        return Err(err);
    }
    if usize::try_from(n).ok() != Some(size) {
        return Ok(None);
    }
    let signal = i32::try_from(info.ssi_signo).map_err(io::Error::other)?;
    let queued_by_root =
        (info.ssi_code == libc::SI_QUEUE && info.ssi_uid == 0).then_some(info.ssi_ptr);
    Ok(Some(SignalInfo {
        signal,
        queued_by_root,
        sender_pid: info.ssi_pid,
    }))
}

/// Sends a signal to a process (or, with a negative pid, a process group).
pub fn kill(pid: i32, signal: i32) -> io::Result<()> {
    // SAFETY: kill takes plain integers.
    let ret = unsafe { libc::kill(pid, signal) };
    check(ret as libc::c_long).map(drop)
}

/// Sends a signal through a pidfd (no pid-reuse race).
pub fn pidfd_kill(pidfd: BorrowedFd<'_>, signal: i32) -> io::Result<()> {
    // SAFETY: pidfd_send_signal with a NULL siginfo; the fd is borrowed and valid.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    check(ret).map(drop)
}

/// The conventional name of a signal ("SIGKILL").
pub fn name(signal: i32) -> String {
    let name = match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGCHLD => "SIGCHLD",
        libc::SIGCONT => "SIGCONT",
        libc::SIGSTOP => "SIGSTOP",
        libc::SIGTSTP => "SIGTSTP",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGSYS => "SIGSYS",
        libc::SIGWINCH => "SIGWINCH",
        _ => return format!("signal {signal}"),
    };
    name.to_string()
}
