//! The one-shot run (`nsbox exec`): a policy over a [`Handle`] in the shared event loop. It
//! launches the sandbox with its command, relays stdin/stdout/stderr (masking secrets, capping
//! output), enforces the timeout, forwards signals, reports the ending ([`Outcome`]) and tears
//! everything down — on every path, errors and Ctrl-C included.
//!
//! One thread, one poll loop ([`super::event_loop`]). Signals arrive through a signalfd that
//! exists before anything else is created, so a Ctrl-C during setup is handled like any other
//! event. With `--net filtered` a second thread serves the resolver and the proxy
//! (`crate::net::egress`); it starts after the last clone (the user namespace helper) and
//! reaches the poll loop only through an event channel and an eventfd.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use rustix::event::PollFlags;

use super::control::ToSupervisor;
use super::event_loop::{self, ExecStatus, Policy, PollSet, StatusPipe};
use super::handle::{Handle, HandleEvent, HandleSource, InitMode, KeptFilesystem};
use super::setup::{self, ExecFailure};
use crate::cgroup::CgroupError;
use crate::relay::result::Capture;
use crate::relay::stream::{Relay, RelayConfig, RelayError, RelayFd};
use crate::relay::{Masker, Usage};
use crate::seccomp::SeccompError;
use crate::session::journal;
use crate::session::oneshot::{self, OneShotRecord, OneShotStore};
use crate::spec::SandboxSpec;
use crate::units::{format_duration, ByteSize};
use crate::{exit, sys};

pub const STOP_GRACE: Duration = Duration::from_secs(2);

/// Why a sandbox could not be run.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("sandboxes need root for now (rootless operation is planned) — hint: run nsbox with sudo; `nsbox doctor` checks the rest")]
    NotRoot,
    #[error("{0}")]
    Cgroup(#[from] CgroupError),
    #[error("seccomp policy: {0}")]
    Seccomp(#[from] SeccompError),
    #[error("sandbox setup failed: {0}")]
    Setup(super::control::StepFailure),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: io::Error,
    },
    #[error("the sandbox ended unexpectedly: {0}")]
    Died(String),
    #[error("{0}")]
    Network(#[from] crate::net::NetError),
}

impl SandboxError {
    /// "setup" when the command never ran, "run" otherwise.
    pub fn phase(&self) -> &'static str {
        match self {
            SandboxError::Died(_) => "run",
            _ => "setup",
        }
    }
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> SandboxError {
    move |source| SandboxError::Io { what, source }
}

/// How the command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    Exited(i32),
    Signaled(i32),
    /// The command never started (not found, not executable, bad working directory).
    ExecFailed {
        code: i32,
        message: String,
    },
    /// `--timeout` expired; every process was killed.
    TimedOut(Duration),
    /// nsbox received this signal and tore the sandbox down.
    Interrupted(i32),
}

/// The result of a sandbox run.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub id: String,
    pub ending: Ending,
    /// The kernel's OOM killer killed a process at the memory limit.
    pub oom: bool,
    /// Output beyond `--max-output` was dropped.
    pub truncated: bool,
    pub duration: Duration,
    /// (phase, nanoseconds since nsbox started), for `--timings`.
    pub marks: Vec<(String, u64)>,
    pub warnings: Vec<String>,
    pub memory_limit: Option<ByteSize>,
    /// The command ran in a session: a timeout or interrupt ended the command's process
    /// group, not the sandbox.
    pub in_session: bool,
    /// A session command's exec id.
    pub exec_id: Option<u64>,
    /// What the command used, where the cgroup tells (see [`Usage`]).
    pub usage: Usage,
    /// The output kept for `--result-json`.
    pub capture: Capture,
    /// With `exec --out`: the sandbox's filesystem, still mounted, to copy from.
    pub kept: Option<std::sync::Arc<KeptFilesystem>>,
}

impl Outcome {
    /// nsbox's exit status for this outcome (see [`crate::exit`]).
    pub fn exit_code(&self) -> i32 {
        match &self.ending {
            Ending::Exited(code) => *code,
            Ending::Signaled(sig) => exit::SIGNAL_BASE + sig,
            Ending::ExecFailed { code, .. } => *code,
            Ending::TimedOut(_) => exit::TIMEOUT,
            Ending::Interrupted(sig) => exit::SIGNAL_BASE + sig,
        }
    }

    /// The human message nsbox prints on stderr for this ending, if any.
    pub fn message(&self) -> Option<String> {
        match &self.ending {
            Ending::ExecFailed { message, .. } => Some(message.clone()),
            Ending::TimedOut(limit) => Some(format!(
                "timed out after {} (--timeout); {} killed",
                format_duration(*limit),
                if self.in_session {
                    "the command and its process group were"
                } else {
                    "every process of the sandbox was"
                }
            )),
            Ending::Signaled(libc::SIGKILL) if self.oom => Some(format!(
                "out of memory: the sandbox reached its memory limit{} and the kernel killed the command (exit code {})",
                self.memory_limit
                    .map(|m| format!(" of {m} (--memory)"))
                    .unwrap_or_default(),
                exit::OOM
            )),
            Ending::Interrupted(sig) => Some(format!(
                "interrupted by {}; {}",
                sys::signal::name(*sig),
                if self.in_session {
                    "the command was killed (the session runs on)"
                } else {
                    "the sandbox was torn down"
                }
            )),
            _ if self.oom => Some(format!(
                "a process in the sandbox was killed by the OOM killer at the memory limit{}",
                self.memory_limit
                    .map(|m| format!(" of {m} (--memory)"))
                    .unwrap_or_default()
            )),
            _ => None,
        }
    }

    /// The signal that ended the command, by name.
    pub fn signal_name(&self) -> Option<String> {
        match &self.ending {
            Ending::Signaled(sig) => Some(sys::signal::name(*sig)),
            _ => None,
        }
    }
}

/// Monotonic nanoseconds; compare with the marks of an [`Outcome`].
pub fn now_ns() -> u64 {
    setup::now_ns()
}

/// What the host learned about a command while it ran; [`Ending`] is built from it.
#[derive(Debug, Default)]
pub(crate) struct CommandFacts {
    /// The init reported the command started (one-shot).
    pub started: bool,
    /// The command never ran (its status pipe said why).
    pub exec_failure: Option<ExecFailure>,
    /// (exit code, terminating signal), as the init reported it.
    pub status: Option<(Option<i32>, Option<i32>)>,
    pub timed_out: bool,
    /// The first signal nsbox received and passed on (or acted on).
    pub interrupted: Option<i32>,
    /// `nsbox stop` asked the one-shot to stop (TERM now, KILL after its grace).
    pub stop_requested: bool,
    /// ...and its grace ran out: the sandbox was killed.
    pub stop_killed: bool,
    /// The OOM killer killed a process of the sandbox.
    pub oom: bool,
}

impl Ending {
    /// How a one-shot run ended, or why it failed. A setup failure comes first (nothing ran),
    /// then an exec failure, then what the init reported; without a report the sandbox was
    /// killed (timeout, OOM group kill, interrupt) or died.
    pub(crate) fn of_one_shot(
        facts: CommandFacts,
        setup_failure: Option<super::control::StepFailure>,
        timeout: Duration,
    ) -> Result<Ending, SandboxError> {
        if let Some(failure) = setup_failure {
            return Err(SandboxError::Setup(failure));
        }
        if let Some(f) = facts.exec_failure {
            return Ok(Ending::ExecFailed {
                code: f.code,
                message: f.message,
            });
        }
        match facts.status {
            Some((Some(code), _)) => Ok(Ending::Exited(code)),
            Some((None, Some(sig))) => Ok(Ending::Signaled(sig)),
            Some((None, None)) => Err(SandboxError::Died(
                "the command's status was not reported".into(),
            )),
            None if facts.timed_out => Ok(Ending::TimedOut(timeout)),
            // With memory.oom.group (cgroup v2) the OOM killer ends every process of the
            // sandbox at once, init included, so nobody was left to report the status.
            None if facts.oom && facts.started => Ok(Ending::Signaled(libc::SIGKILL)),
            // `nsbox stop` killed it after the grace: as if by SIGKILL (137), like Docker.
            None if facts.stop_killed => Ok(Ending::Signaled(libc::SIGKILL)),
            None => match facts.interrupted {
                Some(sig) => Ok(Ending::Interrupted(sig)),
                None if !facts.started => {
                    Err(SandboxError::Setup(super::control::StepFailure::new(
                        "start",
                        "the sandbox's init exited before the command started",
                    )))
                }
                None => Err(SandboxError::Died(
                    "the sandbox's init exited without a status".into(),
                )),
            },
        }
    }

    /// How a command run in a session ended (None: its end was never reported — the session
    /// went away). The session kills only the command's process group, so a kill after a
    /// timeout or an interrupt is reported as that.
    pub(crate) fn of_session_command(facts: CommandFacts, timeout: Duration) -> Option<Ending> {
        if let Some(f) = facts.exec_failure {
            return Some(Ending::ExecFailed {
                code: f.code,
                message: f.message,
            });
        }
        Some(match facts.status? {
            (Some(code), _) => Ending::Exited(code),
            (None, Some(_)) if facts.timed_out => Ending::TimedOut(timeout),
            (None, Some(sig)) => match facts.interrupted {
                Some(by) if sig == libc::SIGKILL => Ending::Interrupted(by),
                _ => Ending::Signaled(sig),
            },
            (None, None) => Ending::Signaled(libc::SIGKILL),
        })
    }
}

/// Runs `spec` to completion (`nsbox exec`). `t0` is when nsbox started (monotonic ns).
pub fn run(spec: &SandboxSpec, t0: u64) -> Result<Outcome, SandboxError> {
    let marks: Vec<(String, u64)> = vec![("arguments parsed".into(), now_ns())];
    // Signals first: from here on Ctrl-C is an event, not a death with state left behind.
    let signalfd = sys::signal::take_relay_signals().map_err(io_err("take over signals"))?;
    let timer = match spec.limits.timeout {
        Some(limit) => Some(event_loop::arm_timer(limit).map_err(io_err("arm timeout"))?),
        None => None,
    };

    // Where the cgroup cannot tell the CPU time (cgroup v1 without cpuacct beside cpu), the
    // reaped sandbox can: its init reaps everything in it, and this process reaps the init.
    let cpu_before = sys::process::children_cpu_usec().ok();
    let launch = Handle::launch(spec, InitMode::RunCommand, marks)?;
    let streams = launch.streams;
    let relay = Relay::new(
        RelayConfig {
            json: spec.io.json,
            tty: spec.io.tty,
            stdin: spec.io.stdin,
            max_output: spec.limits.max_output,
            phase: None,
            stdout_to_stderr: false,
            result: spec.io.result,
            exec_id: None,
        },
        &spec.secrets,
        streams.stdout,
        streams.stderr,
        streams.stdin,
    )
    .map_err(relay_err)?;
    let mut sandbox = Running {
        spec,
        t0,
        handle: launch.handle,
        signalfd: signalfd.as_fd(),
        timer,
        status: StatusPipe::new(streams.status),
        relay,
        facts: CommandFacts::default(),
        setup_failure: None,
        stop_deadline: None,
        marks: launch.marks,
        inner_marks: Vec::new(),
        warnings: launch.warnings,
        event_masker: Masker::for_network_events(&spec.secrets),
        cpu_before,
        kept: None,
        published: None,
        announced: false,
        charge_at: Some(now_ns() + u64::try_from(CHARGE_AFTER.as_nanos()).unwrap_or(u64::MAX)),
    };
    crate::fault::phase("running", &spec.id);
    let result = event_loop::drive(&mut sandbox);
    sandbox.finish(result)
}

fn relay_err(e: RelayError) -> SandboxError {
    SandboxError::Io {
        what: e.what,
        source: e.source,
    }
}

/// How long a one-shot runs before its supervisor is charged to the sandbox's cpu cgroup
/// (`Handle::charge_supervisor`). Moving a process between cgroups takes the kernel's
/// threadgroup lock for writing, which waits for an RCU grace period when the lock was idle —
/// milliseconds, and every fork on the host (the workload's own included) waits with it. A
/// short command's supervisor does next to nothing, so only a sandbox that lives this long,
/// the kind that can make its proxy, resolver or relay work hard, pays for the move.
const CHARGE_AFTER: Duration = Duration::from_millis(250);

/// A running one-shot sandbox, seen from the host: the policy `nsbox exec` runs the loop with.
struct Running<'a> {
    spec: &'a SandboxSpec,
    t0: u64,
    handle: Handle,
    signalfd: BorrowedFd<'a>,
    timer: Option<OwnedFd>,
    status: StatusPipe,
    relay: Relay,
    facts: CommandFacts,
    setup_failure: Option<super::control::StepFailure>,
    stop_deadline: Option<u64>,
    marks: Vec<(String, u64)>,
    inner_marks: Vec<(String, u64)>,
    warnings: Vec<String>,
    /// Masks secrets in network events (a name looked up may carry one).
    event_masker: Masker,
    /// This process's children's CPU time before the sandbox started.
    cpu_before: Option<u64>,
    /// The sandbox's filesystem, kept for `exec --out`.
    kept: Option<KeptFilesystem>,
    /// When the supervisor moves into the sandbox's cpu cgroup (see [`CHARGE_AFTER`]).
    charge_at: Option<u64>,
    /// Where the one-shot's record was written once its command started (see `publish`).
    published: Option<OneShotStore>,
    /// Its start event was written: an exit event follows.
    announced: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Source {
    Signal,
    Sandbox(HandleSource),
    ExecStatus,
    Timer,
    Relay(RelayFd),
}

impl Policy for Running<'_> {
    type Tag = Source;
    type Error = SandboxError;

    fn done(&self) -> bool {
        !self.handle.state().init_alive()
            && self.relay.streams_closed()
            && !self.status.is_open()
            && !self.handle.control_open()
    }

    fn before_wait(&mut self) -> Result<(), SandboxError> {
        if self.charge_at.is_some_and(|at| now_ns() >= at) {
            self.charge_at = None;
            if self.handle.state().init_alive() {
                self.handle.charge_supervisor();
            }
        }
        if let Some(deadline) = self.stop_deadline {
            if now_ns() >= deadline {
                self.stop_deadline = None;
                self.facts.stop_killed = self.facts.stop_requested;
                self.handle.kill();
            }
        }
        Ok(())
    }

    fn register<'a>(&'a self, set: &mut PollSet<'a, Source>) {
        set.add(Source::Signal, self.signalfd, PollFlags::IN);
        // The network before the output: an event is queued before the sandbox hears of the
        // decision, so when both are ready the event came first.
        self.handle.register(set, Source::Sandbox);
        if let Some(fd) = self.status.fd() {
            set.add(Source::ExecStatus, fd, PollFlags::IN);
        }
        if let Some(fd) = &self.timer {
            set.add(Source::Timer, fd.as_fd(), PollFlags::IN);
        }
        self.relay
            .register(&mut set.tags, &mut set.fds, Source::Relay);
    }

    fn wait_at_most(&self) -> Option<Duration> {
        [self.stop_deadline, self.charge_at]
            .into_iter()
            .flatten()
            .min()
            .map(|deadline| Duration::from_nanos(deadline.saturating_sub(now_ns())))
    }

    fn on_ready(&mut self, tag: Source, revents: PollFlags) -> Result<(), SandboxError> {
        match tag {
            Source::Signal => self.on_signals()?,
            Source::Sandbox(source) => {
                for event in self.handle.on_ready(source)? {
                    self.on_sandbox(event)?;
                }
            }
            Source::ExecStatus => match self.status.read().map_err(io_err("read exec status"))? {
                Some(ExecStatus::Executed) => {
                    self.marks.push(("command executed".into(), now_ns()))
                }
                Some(ExecStatus::Failed(f)) => self.facts.exec_failure = Some(f),
                None => {}
            },
            Source::Relay(which) => self.relay.handle(which, revents).map_err(relay_err)?,
            Source::Timer => {
                self.timer = None;
                if self.handle.state().init_alive() {
                    self.facts.timed_out = true;
                    // What a timed-out command left (test reports) is what --out is for too.
                    if self.spec.keep_filesystem {
                        self.keep_filesystem();
                    }
                    self.handle.kill();
                }
            }
        }
        Ok(())
    }

    fn poll_failed(&mut self, e: rustix::io::Errno) -> SandboxError {
        SandboxError::Io {
            what: "wait for events",
            source: io::Error::from_raw_os_error(e.raw_os_error()),
        }
    }
}

impl Running<'_> {
    fn on_signals(&mut self) -> Result<(), SandboxError> {
        let signals =
            event_loop::pending_signal_infos(self.signalfd).map_err(io_err("read signals"))?;
        for info in signals {
            let signal = info.signal;
            match signal {
                libc::SIGWINCH => self.relay.resize_terminal(),
                _ if !self.handle.state().init_alive() => {}
                // `nsbox stop`: a TERM queued by root with the grace period in milliseconds.
                libc::SIGTERM if self.facts.started && info.queued_by_root.is_some() => {
                    let grace = Duration::from_millis(info.queued_by_root.unwrap_or_default());
                    self.stop_requested(grace);
                }
                _ => {
                    let first = self.facts.interrupted.is_none();
                    self.facts.interrupted.get_or_insert(signal);
                    if first && self.facts.started {
                        // Give the command a chance to end cleanly, like a terminal would.
                        self.handle.signal_init(signal);
                        let grace = u64::try_from(STOP_GRACE.as_nanos()).unwrap_or(u64::MAX);
                        self.stop_deadline = Some(now_ns().saturating_add(grace));
                    } else {
                        self.handle.kill();
                    }
                }
            }
        }
        Ok(())
    }

    /// `nsbox stop ID`: TERM to the command now, KILL to the sandbox after `grace`; a second
    /// request changes nothing.
    fn stop_requested(&mut self, grace: Duration) {
        if self.facts.stop_requested {
            return;
        }
        self.facts.stop_requested = true;
        self.facts.interrupted.get_or_insert(libc::SIGTERM);
        self.handle.signal_init(libc::SIGTERM);
        let grace_ns = u64::try_from(grace.as_nanos()).unwrap_or(u64::MAX);
        self.stop_deadline = Some(now_ns().saturating_add(grace_ns));
        let mut event = self.lifecycle_event("stop");
        event.insert(
            "grace_ms".into(),
            u64::try_from(grace.as_millis()).unwrap_or(u64::MAX).into(),
        );
        journal::emit(event);
    }

    fn lifecycle_event(&self, action: &str) -> serde_json::Map<String, serde_json::Value> {
        let mut event = journal::event(action, journal::Kind::OneShot, &self.spec.id, None);
        if !self.spec.labels.is_empty() {
            event.insert("labels".into(), serde_json::json!(self.spec.labels));
        }
        event
    }

    /// Makes the running one-shot visible to `ps -a`, `inspect`, `stop`, `wait` and `events`:
    /// its record and its start event. Written once the command runs (the cold start's path
    /// to the command never waits for them), one small file and one journal line.
    fn publish(&mut self) {
        let spec = self.spec;
        let masker = (!spec.secrets.is_empty()).then(|| Masker::new(&spec.secrets));
        let command: Vec<String> = spec
            .command
            .iter()
            .map(|arg| {
                let arg = arg.to_string_lossy();
                masker
                    .as_ref()
                    .map_or(arg.to_string(), |m| m.mask_str(&arg))
            })
            .collect();
        let pid = std::process::id();
        let record = OneShotRecord {
            id: spec.id.clone(),
            supervisor_pid: pid,
            supervisor_start: oneshot::process_start_ticks(std::path::Path::new("/proc"), pid)
                .unwrap_or_default(),
            created: crate::session::state::now_secs(),
            root: match (&spec.image, &spec.root) {
                (Some(image), _) => format!("image:{}", image.reference),
                (None, crate::profile::RootChoice::Host) => "host".to_string(),
                (None, crate::profile::RootChoice::Dir(d)) => format!("dir:{}", d.display()),
            },
            network: spec.network.as_str().to_string(),
            command,
            labels: spec.labels.clone(),
        };
        let store = OneShotStore::system();
        match store.write(&record) {
            Ok(()) => self.published = Some(store),
            Err(e) => tracing::warn!("recording the one-shot for nsbox ps: {e}"),
        }
        self.announced = true;
        let mut event = self.lifecycle_event("start");
        event.insert("root".into(), record.root.into());
        event.insert("command".into(), serde_json::json!(record.command));
        event.insert("pid".into(), pid.into());
        journal::emit(event);
    }

    /// The one-shot is over: its exit event, then its record goes (in that order, so `wait`
    /// finds the code once the record is gone).
    fn unpublish(&mut self, result: &Result<Outcome, SandboxError>, stopped: bool) {
        if !std::mem::take(&mut self.announced) {
            return;
        }
        let mut event = self.lifecycle_event("exit");
        let code = match result {
            Ok(outcome) => {
                if let Some(signal) = outcome.signal_name() {
                    event.insert("signal".into(), signal.into());
                }
                if outcome.oom {
                    event.insert("oom".into(), true.into());
                }
                outcome.exit_code()
            }
            Err(e) => crate::report::Failure::of(e).exit_code(),
        };
        event.insert("code".into(), code.into());
        if stopped {
            event.insert("stopped".into(), true.into());
        }
        journal::emit(event);
        if let Some(store) = self.published.take() {
            if let Err(e) = store.remove(&self.spec.id) {
                tracing::warn!("removing the one-shot's record: {e}");
            }
        }
    }

    fn on_sandbox(&mut self, event: HandleEvent) -> Result<(), SandboxError> {
        match event {
            HandleEvent::Message(ToSupervisor::SetupFailed(failure), _) => {
                self.setup_failure = Some(failure);
            }
            HandleEvent::Message(ToSupervisor::Started { marks, warnings }, fds) => {
                self.facts.started = true;
                self.inner_marks = marks;
                self.warnings.extend(warnings);
                self.marks.push(("workload started".into(), now_ns()));
                if let Some(master) = fds.into_iter().next() {
                    self.relay.attach_terminal(master).map_err(relay_err)?;
                }
                self.publish();
            }
            HandleEvent::Message(ToSupervisor::Exited { code, signal }, _) => {
                self.marks.push(("command exited".into(), now_ns()));
                self.facts.status = Some((code, signal));
                if self.spec.keep_filesystem {
                    // The init waits for this (see `setup::InitRole`): take the filesystem,
                    // then end every process of the sandbox before anything is copied.
                    self.keep_filesystem();
                    self.handle.kill();
                }
            }
            HandleEvent::Message(other, _) => {
                return Err(SandboxError::Died(format!(
                    "unexpected message from the sandbox: {}",
                    other.kind()
                )))
            }
            HandleEvent::InitEnded => self.marks.push(("sandbox ended".into(), now_ns())),
            HandleEvent::ControlClosed => {}
            HandleEvent::Network(events) => self.emit_network(events),
        }
        Ok(())
    }

    /// Queues network events: JSON lines in the `--json` stream, text on stderr with
    /// `--log-network`. They are nsbox's own lines, not the command's output: no output cap.
    fn emit_network(&mut self, events: Vec<crate::net::NetEvent>) {
        for event in events {
            if self.spec.io.json {
                let line = String::from_utf8_lossy(&event.to_json_line()).into_owned();
                self.relay
                    .push_json(self.event_masker.mask_str(&line).as_bytes());
            } else if self.spec.log_network {
                let line = event.to_text_line();
                self.relay
                    .push_line(true, self.event_masker.mask_str(&line).as_bytes());
            }
        }
    }

    /// Takes hold of the sandbox's filesystem for `exec --out` (while its init lives).
    fn keep_filesystem(&mut self) {
        if self.kept.is_some() {
            return;
        }
        match self.handle.keep_filesystem() {
            Ok(kept) => self.kept = Some(kept),
            Err(e) => self
                .warnings
                .push(format!("cannot keep the sandbox's files for --out: {e}")),
        }
    }

    /// Tears down whatever is left, turns the state into an outcome, and takes the one-shot's
    /// record down.
    fn finish(mut self, loop_result: Result<(), SandboxError>) -> Result<Outcome, SandboxError> {
        let stopped = self.facts.stop_requested;
        let result = self.finish_run(loop_result);
        self.unpublish(&result, stopped);
        result
    }

    fn finish_run(
        &mut self,
        loop_result: Result<(), SandboxError>,
    ) -> Result<Outcome, SandboxError> {
        crate::fault::phase("teardown", &self.spec.id);
        if loop_result.is_err() {
            self.teardown();
        }
        let events = self.handle.stop_network();
        self.emit_network(events);
        self.relay.finish();
        self.facts.oom = self.handle.oom_kills() > 0;
        // The sandbox's cgroup is the command's (and its children's): read before it goes.
        // Only the JSON exit event and the --result-json document show it; a plain run skips
        // the reads (they are on the way out of every one-shot).
        let wants_usage = self.spec.io.json || self.spec.io.result;
        let mut usage = match wants_usage {
            true => self.handle.stats().map_or_else(Usage::default, |s| Usage {
                memory_peak_bytes: s.memory_peak_bytes,
                cpu_usage_usec: s.cpu_usage_usec,
            }),
            false => Usage::default(),
        };
        self.teardown();
        if wants_usage && usage.cpu_usage_usec.is_none() && !self.handle.state().init_alive() {
            usage.cpu_usage_usec = sys::process::children_cpu_usec()
                .ok()
                .zip(self.cpu_before)
                .map(|(now, before)| now.saturating_sub(before));
        }
        crate::fault::phase("cleaned-up", &self.spec.id);
        loop_result?;
        self.marks.push(("cleaned up".into(), now_ns()));

        let facts = std::mem::take(&mut self.facts);
        let oom = facts.oom;
        let ending = Ending::of_one_shot(
            facts,
            self.setup_failure.take(),
            self.spec.limits.timeout.unwrap_or_default(),
        )?;
        let mut marks = std::mem::take(&mut self.marks);
        marks.append(&mut self.inner_marks);
        marks.sort_by_key(|(_, t)| *t);
        let marks = marks
            .into_iter()
            .map(|(label, t)| (label, t.saturating_sub(self.t0)))
            .collect();
        Ok(Outcome {
            id: self.spec.id.clone(),
            ending,
            oom,
            truncated: self.relay.truncated(),
            duration: Duration::from_nanos(now_ns().saturating_sub(self.t0)),
            marks,
            warnings: std::mem::take(&mut self.warnings),
            memory_limit: self.spec.limits.memory,
            in_session: false,
            exec_id: None,
            usage,
            capture: self.relay.take_capture(),
            kept: self.kept.take().map(std::sync::Arc::new),
        })
    }

    /// Kills the sandbox if it still runs, reaps it and removes its cgroup. Idempotent.
    fn teardown(&mut self) {
        if let Some(warning) = self.handle.teardown() {
            self.warnings.push(warning);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(3);

    fn exited(code: i32) -> CommandFacts {
        CommandFacts {
            started: true,
            status: Some((Some(code), None)),
            ..Default::default()
        }
    }

    #[test]
    fn one_shot_reports_the_command_status() {
        assert_eq!(
            Ending::of_one_shot(exited(3), None, LIMIT).unwrap(),
            Ending::Exited(3)
        );
        let killed = CommandFacts {
            started: true,
            status: Some((None, Some(9))),
            ..Default::default()
        };
        assert_eq!(
            Ending::of_one_shot(killed, None, LIMIT).unwrap(),
            Ending::Signaled(9)
        );
    }

    #[test]
    fn one_shot_setup_and_exec_failures_come_first() {
        let failed = Ending::of_one_shot(
            exited(0),
            Some(super::super::control::StepFailure::new("mount", "no")),
            LIMIT,
        );
        assert!(matches!(failed, Err(SandboxError::Setup(f)) if f.step == "mount"));
        let facts = CommandFacts {
            exec_failure: Some(ExecFailure {
                code: exit::NOT_FOUND,
                message: "command not found: x".into(),
            }),
            ..exited(0)
        };
        let ending = Ending::of_one_shot(facts, None, LIMIT).unwrap();
        assert!(matches!(ending, Ending::ExecFailed { code, .. } if code == exit::NOT_FOUND));
    }

    #[test]
    fn one_shot_without_a_report_was_killed_or_died() {
        let timed_out = CommandFacts {
            started: true,
            timed_out: true,
            interrupted: Some(libc::SIGINT),
            ..Default::default()
        };
        assert_eq!(
            Ending::of_one_shot(timed_out, None, LIMIT).unwrap(),
            Ending::TimedOut(LIMIT)
        );
        let oom = CommandFacts {
            started: true,
            oom: true,
            ..Default::default()
        };
        assert_eq!(
            Ending::of_one_shot(oom, None, LIMIT).unwrap(),
            Ending::Signaled(libc::SIGKILL)
        );
        let interrupted = CommandFacts {
            interrupted: Some(libc::SIGTERM),
            ..Default::default()
        };
        assert_eq!(
            Ending::of_one_shot(interrupted, None, LIMIT).unwrap(),
            Ending::Interrupted(libc::SIGTERM)
        );
        assert!(matches!(
            Ending::of_one_shot(CommandFacts::default(), None, LIMIT),
            Err(SandboxError::Setup(f)) if f.step == "start"
        ));
        let started = CommandFacts {
            started: true,
            ..Default::default()
        };
        assert!(matches!(
            Ending::of_one_shot(started, None, LIMIT),
            Err(SandboxError::Died(_))
        ));
    }

    #[test]
    fn a_stopped_one_shot_ends_as_if_signalled() {
        // The command died of the TERM: its own report, 143.
        let termed = CommandFacts {
            started: true,
            stop_requested: true,
            interrupted: Some(libc::SIGTERM),
            status: Some((None, Some(libc::SIGTERM))),
            ..Default::default()
        };
        let ending = Ending::of_one_shot(termed, None, LIMIT).unwrap();
        assert_eq!(ending, Ending::Signaled(libc::SIGTERM));
        // Killed after the grace, nobody left to report: SIGKILL, 137 (not "interrupted").
        let killed = CommandFacts {
            started: true,
            stop_requested: true,
            stop_killed: true,
            interrupted: Some(libc::SIGTERM),
            ..Default::default()
        };
        assert_eq!(
            Ending::of_one_shot(killed, None, LIMIT).unwrap(),
            Ending::Signaled(libc::SIGKILL)
        );
        // The init went down on the TERM itself before reporting: as if by the TERM.
        let init_termed = CommandFacts {
            started: true,
            stop_requested: true,
            interrupted: Some(libc::SIGTERM),
            ..Default::default()
        };
        assert_eq!(
            Ending::of_one_shot(init_termed, None, LIMIT).unwrap(),
            Ending::Interrupted(libc::SIGTERM)
        );
    }

    #[test]
    fn session_command_kills_are_named_for_their_cause() {
        let killed = |timed_out, interrupted| CommandFacts {
            status: Some((None, Some(libc::SIGKILL))),
            timed_out,
            interrupted,
            ..Default::default()
        };
        assert_eq!(
            Ending::of_session_command(killed(true, None), LIMIT),
            Some(Ending::TimedOut(LIMIT))
        );
        assert_eq!(
            Ending::of_session_command(killed(false, Some(libc::SIGINT)), LIMIT),
            Some(Ending::Interrupted(libc::SIGINT))
        );
        assert_eq!(
            Ending::of_session_command(killed(false, None), LIMIT),
            Some(Ending::Signaled(libc::SIGKILL))
        );
        let terminated = CommandFacts {
            status: Some((None, Some(libc::SIGTERM))),
            interrupted: Some(libc::SIGTERM),
            ..Default::default()
        };
        assert_eq!(
            Ending::of_session_command(terminated, LIMIT),
            Some(Ending::Signaled(libc::SIGTERM)),
            "a command that ended on the forwarded signal itself reports that signal"
        );
        assert_eq!(
            Ending::of_session_command(exited(0), LIMIT),
            Some(Ending::Exited(0))
        );
        assert_eq!(
            Ending::of_session_command(CommandFacts::default(), LIMIT),
            None
        );
    }
}
