//! The one event loop of nsbox's host side. Every process that watches a sandbox — the
//! one-shot `nsbox exec` ([`super::supervisor`]), a session's supervisor
//! (`crate::session::daemon`) and a command run in a session (`crate::session::client`) — is a
//! [`Policy`]: it says which descriptors to watch and what to do when one is ready; [`drive`]
//! polls, dispatches and repeats until the policy is done. What the loops share beyond that
//! lives here too: the tagged [`PollSet`], the exec-status pipe ([`StatusPipe`]) and the
//! timeout timer ([`arm_timer`]).
//!
//! One thread, no async: a poll over a dozen descriptors is all a sandbox needs, and the setup
//! path must stay single-threaded (see `crate::sys::process::clone3_fork`).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use rustix::event::{poll, PollFd, PollFlags};

use super::setup::ExecFailure;

/// The descriptors one poll waits on, each tagged with what it is.
pub struct PollSet<'a, T> {
    pub tags: Vec<T>,
    pub fds: Vec<PollFd<'a>>,
}

impl<T: Copy> Default for PollSet<'_, T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'a, T: Copy> PollSet<'a, T> {
    pub fn new() -> Self {
        PollSet {
            tags: Vec::with_capacity(12),
            fds: Vec::with_capacity(12),
        }
    }

    pub fn add(&mut self, tag: T, fd: BorrowedFd<'a>, flags: PollFlags) {
        self.tags.push(tag);
        self.fds.push(PollFd::from_borrowed_fd(fd, flags));
    }

    /// Waits (up to `timeout`) and returns what became ready, in the order added.
    pub fn wait(mut self, timeout: Option<Duration>) -> rustix::io::Result<Vec<(T, PollFlags)>> {
        let timeout = timeout.map(|t| rustix::time::Timespec {
            tv_sec: i64::try_from(t.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(t.subsec_nanos()),
        });
        match poll(&mut self.fds, timeout.as_ref()) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        }
        Ok(self
            .tags
            .iter()
            .zip(self.fds.iter())
            .filter(|(_, fd)| !fd.revents().is_empty())
            .map(|(tag, fd)| (*tag, fd.revents()))
            .collect())
    }
}

/// What one watcher of a sandbox does with the loop.
pub trait Policy {
    type Tag: Copy;
    type Error;
    /// True once there is nothing left to wait for.
    fn done(&self) -> bool;
    /// Called before each wait (deadlines that act without an event).
    fn before_wait(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
    /// The descriptors to wait on this round.
    fn register<'a>(&'a self, set: &mut PollSet<'a, Self::Tag>);
    /// How long the wait may last (None: until an event).
    fn wait_at_most(&self) -> Option<Duration>;
    /// One descriptor is ready.
    fn on_ready(&mut self, tag: Self::Tag, revents: PollFlags) -> Result<(), Self::Error>;
    /// The wait itself failed.
    fn poll_failed(&mut self, e: rustix::io::Errno) -> Self::Error;
}

/// Runs `policy` until it is done or one of its handlers fails.
pub fn drive<P: Policy>(policy: &mut P) -> Result<(), P::Error> {
    while !policy.done() {
        policy.before_wait()?;
        if policy.done() {
            break;
        }
        let mut set = PollSet::new();
        policy.register(&mut set);
        let wait = policy.wait_at_most();
        let ready = match set.wait(wait) {
            Ok(ready) => ready,
            Err(e) => return Err(policy.poll_failed(e)),
        };
        for (tag, revents) in ready {
            policy.on_ready(tag, revents)?;
        }
    }
    Ok(())
}

/// Reads every pending signal from a signalfd, with the values queued senders attached.
pub fn pending_signal_infos(
    signalfd: BorrowedFd<'_>,
) -> io::Result<Vec<crate::sys::signal::SignalInfo>> {
    let mut signals = Vec::new();
    while let Some(info) = crate::sys::signal::read_signal_info(signalfd)? {
        signals.push(info);
    }
    Ok(signals)
}

/// Reads every pending signal from a signalfd.
pub fn pending_signals(signalfd: BorrowedFd<'_>) -> io::Result<Vec<i32>> {
    let mut signals = Vec::new();
    while let Some(signal) = crate::sys::signal::read_signal(signalfd)? {
        signals.push(signal);
    }
    Ok(signals)
}

/// How a command's exec went, as its status pipe tells: the pipe closes at execve (it is
/// close-on-exec), or carries an [`ExecFailure`] first when the command could not start.
#[derive(Debug)]
pub enum ExecStatus {
    Executed,
    Failed(ExecFailure),
}

/// The read end of a command's exec-status pipe (non-blocking), until it closed.
#[derive(Debug)]
pub struct StatusPipe {
    fd: Option<OwnedFd>,
    buf: Vec<u8>,
}

impl StatusPipe {
    pub fn new(fd: Option<OwnedFd>) -> StatusPipe {
        StatusPipe {
            fd,
            buf: Vec::new(),
        }
    }

    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.fd.as_ref().map(|f| f.as_fd())
    }

    pub fn is_open(&self) -> bool {
        self.fd.is_some()
    }

    /// Reads what is there; `Some` once the pipe closed.
    pub fn read(&mut self) -> io::Result<Option<ExecStatus>> {
        let Some(fd) = &self.fd else {
            return Ok(None);
        };
        let mut buf = [0u8; 4096];
        loop {
            match rustix::io::read(fd, &mut buf) {
                Ok(0) => {
                    self.fd = None;
                    return Ok(Some(Self::status_of(&self.buf)));
                }
                Ok(n) => self.buf.extend_from_slice(&buf[..n]),
                Err(rustix::io::Errno::AGAIN) => return Ok(None),
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(io::Error::from_raw_os_error(e.raw_os_error())),
            }
        }
    }

    /// Nothing written: the exec happened. Something written that is not a failure report
    /// (which nothing but the workload's own fork writes) counts as executed too.
    fn status_of(bytes: &[u8]) -> ExecStatus {
        // Not even a parse when empty: a failed parse computes the error's line and column,
        // whose first use detects the CPU's features (cpuid, slow in a VM) — on every exec.
        if bytes.is_empty() {
            return ExecStatus::Executed;
        }
        match serde_json::from_slice::<ExecFailure>(bytes) {
            Ok(failure) => ExecStatus::Failed(failure),
            Err(_) => ExecStatus::Executed,
        }
    }
}

/// A timerfd that fires once after `limit` (`--timeout`).
pub fn arm_timer(limit: Duration) -> io::Result<OwnedFd> {
    use rustix::time::{
        timerfd_create, timerfd_settime, Itimerspec, TimerfdClockId, TimerfdFlags,
        TimerfdTimerFlags, Timespec,
    };
    let err = |e: rustix::io::Errno| io::Error::from_raw_os_error(e.raw_os_error());
    let fd = timerfd_create(
        TimerfdClockId::Monotonic,
        TimerfdFlags::CLOEXEC | TimerfdFlags::NONBLOCK,
    )
    .map_err(err)?;
    let spec = Itimerspec {
        it_interval: Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        it_value: Timespec {
            tv_sec: i64::try_from(limit.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(limit.subsec_nanos()),
        },
    };
    timerfd_settime(&fd, TimerfdTimerFlags::empty(), &spec).map_err(err)?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A policy that counts a pipe's bytes until it closes.
    struct Counter {
        fd: Option<OwnedFd>,
        bytes: usize,
        rounds: usize,
    }

    impl Policy for Counter {
        type Tag = ();
        type Error = String;
        fn done(&self) -> bool {
            self.fd.is_none()
        }
        fn register<'a>(&'a self, set: &mut PollSet<'a, ()>) {
            if let Some(fd) = &self.fd {
                set.add((), fd.as_fd(), PollFlags::IN);
            }
        }
        fn wait_at_most(&self) -> Option<Duration> {
            None
        }
        fn on_ready(&mut self, (): (), _: PollFlags) -> Result<(), String> {
            self.rounds += 1;
            let mut buf = [0u8; 2];
            match rustix::io::read(self.fd.as_ref().unwrap(), &mut buf) {
                Ok(0) => self.fd = None,
                Ok(n) => self.bytes += n,
                Err(e) => return Err(e.to_string()),
            }
            Ok(())
        }
        fn poll_failed(&mut self, e: rustix::io::Errno) -> String {
            e.to_string()
        }
    }

    #[test]
    fn drive_runs_the_policy_until_done() {
        let (r, w) = rustix::pipe::pipe().unwrap();
        rustix::io::write(&w, b"hello").unwrap();
        drop(w);
        let mut counter = Counter {
            fd: Some(r),
            bytes: 0,
            rounds: 0,
        };
        drive(&mut counter).unwrap();
        assert_eq!(counter.bytes, 5);
        assert_eq!(
            counter.rounds, 4,
            "three reads of at most 2 bytes, then end of file"
        );
    }

    #[test]
    fn status_pipe_tells_exec_from_failure() {
        let (r, w) = rustix::pipe::pipe().unwrap();
        crate::relay::stream::set_nonblocking(r.as_fd()).unwrap();
        let mut pipe = StatusPipe::new(Some(r));
        assert!(pipe.read().unwrap().is_none(), "open and empty: pending");
        drop(w);
        assert!(matches!(pipe.read().unwrap(), Some(ExecStatus::Executed)));
        assert!(!pipe.is_open());

        let (r, w) = rustix::pipe::pipe().unwrap();
        let failure = ExecFailure {
            code: 127,
            message: "command not found: x".into(),
        };
        rustix::io::write(&w, &serde_json::to_vec(&failure).unwrap()).unwrap();
        drop(w);
        let mut pipe = StatusPipe::new(Some(r));
        match pipe.read().unwrap() {
            Some(ExecStatus::Failed(f)) => assert_eq!(f.code, 127),
            other => panic!("{other:?}"),
        }
    }
}
