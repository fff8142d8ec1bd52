//! The sandbox side: the setup child created by clone3, which becomes the sandbox's init
//! (pid 1), and the workload process it forks.
//!
//! The order of the steps below is the one in `docs/setup-order.md` (the only numbered list
//! of it); each step here says why it is where it is. The supervisor meanwhile creates the
//! network namespace, on v1 hosts the cgroup, and the user namespace, and sends them over the
//! control socket (see `supervisor.rs`).

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{Mode, OFlags};
use rustix::termios::Winsize;
use serde::{Deserialize, Serialize};

use super::control::{self, ExecRequest, ToSandbox, ToSupervisor};
use crate::exit;
use crate::profile::NetworkMode;
use crate::rootfs::apply::{self, HostSource, IdMap};
use crate::rootfs::RootfsPlan;
use crate::seccomp::BpfProgram;
use crate::spec::SandboxSpec;
use crate::sys;

/// Everything the setup child needs, prepared by the supervisor before clone3. The child gets
/// a copy of this memory; descriptors are the supervisor's numbers, inherited by the clone.
#[derive(Debug)]
pub struct ChildSetup<'a> {
    pub spec: &'a SandboxSpec,
    /// Run the spec's command now, or wait for commands (sessions).
    pub mode: super::handle::InitMode,
    pub plan: &'a RootfsPlan,
    pub seccomp: &'a BpfProgram,
    pub control: BorrowedFd<'a>,
    pub exec_status: BorrowedFd<'a>,
    /// What becomes the workload's stdin, stdout, stderr (all /dev/null with a tty).
    pub stdio: [BorrowedFd<'a>; 3],
    pub cgroup_tasks: &'a [OwnedFd],
    /// The cgroup's `tasks` descriptors arrive with the id maps (cgroup v1 hosts).
    pub late_cgroup: bool,
    pub winsize: Option<Winsize>,
    /// Namespaces to enter in place of the new ones clone made (a pod's IPC and UTS), with
    /// their clone flag.
    pub join: &'a [(OwnedFd, u64)],
}

/// Why the workload never ran, sent through the exec-status pipe.
#[derive(Debug, Serialize, Deserialize)]
pub struct ExecFailure {
    pub code: i32,
    pub message: String,
}

/// A failed setup step.
type Failure = control::StepFailure;

/// What a setup step's error tells besides its text: the errno at its root (EPERM and EACCES
/// say this host refused; see [`crate::report`]) and a hint of its own.
pub(crate) trait StepError: std::fmt::Display {
    fn errno(&self) -> Option<i32>;
    fn hint(&self) -> Option<String> {
        None
    }
}

impl StepError for io::Error {
    fn errno(&self) -> Option<i32> {
        self.raw_os_error()
    }
}

impl StepError for rustix::io::Errno {
    fn errno(&self) -> Option<i32> {
        Some(self.raw_os_error())
    }
}

impl StepError for crate::rootfs::apply::RootfsError {
    fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }
    fn hint(&self) -> Option<String> {
        self.hint().map(str::to_string)
    }
}

impl StepError for control::ChannelError {
    fn errno(&self) -> Option<i32> {
        match self {
            control::ChannelError::Io(e) => e.raw_os_error(),
            control::ChannelError::Failed(f) => f.errno,
            _ => None,
        }
    }
}

fn at<E: StepError>(step: &str) -> impl FnOnce(E) -> Failure + '_ {
    move |e| Failure {
        step: step.to_string(),
        message: e.to_string(),
        hint: e.hint(),
        errno: e.errno(),
    }
}

/// Signals the init forwards to the workload's process group.
const FORWARDED: &[i32] = &[
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// Monotonic clock in nanoseconds (shared with the supervisor's clock).
pub fn now_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    // The monotonic clock is never negative.
    u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(t.tv_nsec).unwrap_or(0)
}

/// Entry point of the setup child. Never returns: ends as the sandbox's init.
pub fn child_main(setup: ChildSetup<'_>) -> ! {
    // A panic here, in the init or in a process it forks must not unwind into the
    // supervisor's frames copied with the fork (their destructors own host resources).
    let _abort = sys::process::AbortOnPanic;
    match run(&setup) {
        Ok(never) => match never {},
        Err(f) => {
            let _ = control::send(setup.control, &ToSupervisor::SetupFailed(f), &[]);
            sys::process::exit_now(exit::NSBOX_FAILED)
        }
    }
}

enum Never {}

#[allow(unsafe_code)] // descriptor renumbering and forks; each block says why it is sound
fn run(s: &ChildSetup<'_>) -> Result<Never, Failure> {
    let mut marks: Vec<(String, u64)> = vec![("child started".into(), now_ns())];
    let mut warnings: Vec<String> = Vec::new();

    // First, die with the supervisor: a killed supervisor must never leave a sandbox
    // running. It may have died between clone and here, so check the control socket too.
    sys::process::set_parent_death_signal(libc::SIGKILL).map_err(at("set parent-death signal"))?;
    if control::peer_gone(s.control) {
        sys::process::exit_now(exit::NSBOX_FAILED);
    }
    rustix::process::umask(Mode::empty());

    // Standard streams, then close everything else: nothing of the supervisor's may stay
    // reachable from inside.
    for (target, fd) in (0..).zip(s.stdio) {
        // SAFETY: this forked child owns nothing on 0-2 (it ends through exit_now or execve,
        // never dropping the supervisor's owners copied with the fork).
        unsafe { dup_onto(fd, target) }.map_err(at("set up standard streams"))?;
    }
    let mut keep: Vec<RawFd> = vec![s.control.as_raw_fd(), s.exec_status.as_raw_fd()];
    keep.extend(s.cgroup_tasks.iter().map(|fd| fd.as_raw_fd()));
    keep.extend(s.join.iter().map(|(fd, _)| fd.as_raw_fd()));
    // SAFETY: the owners of the descriptors closed here are the supervisor's, copied with the
    // fork; this child never drops or uses them (it ends through exit_now, aborts on panic).
    unsafe { close_all_except(&keep) }.map_err(at("close inherited descriptors"))?;

    // Cgroups now on v2 (clone3 placed us already); on v1 hosts with the identity below,
    // while still real root.
    if !s.late_cgroup {
        join_cgroup(s.cgroup_tasks)?;
        // These belong to the supervisor's memory, copied into ours and never dropped here:
        // close them by number, they are root-opened handles on host cgroup files.
        for fd in s.cgroup_tasks {
            let n = fd.as_raw_fd().unsigned_abs();
            // SAFETY: as above: their owner is the supervisor's copy, never dropped here.
            let _ = unsafe { sys::fs::close_range(n, n) };
        }
    }

    // A pod's namespaces, entered while this process is still real root (their owner is the
    // host's user namespace), before anything is mounted in them (/dev/mqueue follows IPC).
    for (fd, flag) in s.join {
        sys::process::setns(fd.as_fd(), *flag).map_err(at("join the pod's namespace"))?;
        let n = fd.as_raw_fd().unsigned_abs();
        // SAFETY: the owner is the supervisor's copy, never dropped in this child.
        let _ = unsafe { sys::fs::close_range(n, n) };
    }

    // Before anything of the sandbox exists: nothing inside may inspect this process.
    sys::process::set_non_dumpable().map_err(at("make init non-dumpable"))?;
    // SAFETY: this child is single-threaded (cloned from a single-threaded supervisor) and
    // never reads std::env.
    unsafe { sys::process::hide_arguments() }.map_err(at("replace init's arguments"))?;
    marks.push(("namespaces joined".into(), now_ns()));

    // The filesystem: host sources first, while host paths are still reachable.
    let ids = IdMap {
        base: s.spec.uid_base,
    };
    let mut sources: Vec<Option<HostSource>> = apply::open_host_sources(s.plan, &mut warnings)
        .map_err(at("open host paths"))?
        .into_iter()
        .map(Some)
        .collect();
    marks.push(("host paths opened".into(), now_ns()));
    let mut mark = |phase: &'static str| marks.push((phase.to_string(), now_ns()));
    let (new_root, upper) =
        apply::build_new_root(s.plan, ids, &mut mark).map_err(at("build root filesystem"))?;
    // A session's supervisor gets the overlay's upper directory with the ready report (for
    // `nsbox commit`); nothing of the sandbox keeps it.
    let upper = (s.mode == super::handle::InitMode::Serve).then_some(upper);
    apply::pivot_into(&new_root).map_err(at("enter root filesystem"))?;
    mark("pivoted into the new root");
    // Except with --net host, the network namespace arrives as a message: the supervisor
    // creates it (loopback up, filtered rules made) while this child builds its filesystem.
    if s.spec.network != NetworkMode::Host {
        join_network_namespace(s.control)?;
        mark("network namespace joined");
    }
    apply::apply_mounts(s.plan, &mut sources, ids, &mut mark)
        .map_err(at("mount sandbox filesystems"))?;
    drop(sources);

    // Hostname: the UTS namespace is ours (a pod's keeps the pod's name).
    if s.spec.uts_namespace.is_none() {
        rustix::system::sethostname(s.spec.hostname.as_bytes()).map_err(at("set hostname"))?;
    }
    marks.push(("hostname set".into(), now_ns()));

    // What needs no identity is done before waiting for it: the supervisor is still making
    // it, so this costs the start nothing. Privileges change nothing here (the signal mask,
    // a descriptor the init keeps, plain memory).
    let serve = s.mode == super::handle::InitMode::Serve;
    let command = if serve {
        None
    } else {
        Some(Command::prepare(s.spec).map_err(at("prepare command"))?)
    };
    let signals = sys::signal::SignalSet::new(&[&[libc::SIGCHLD][..], FORWARDED].concat());
    sys::signal::block(&signals).map_err(at("block signals"))?;
    let signalfd = sys::signal::signalfd(&signals).map_err(at("create signalfd"))?;
    let last_capability = sys::process::last_capability();

    // Identity, once nothing needs real root: join the cgroup (on v1 hosts), then the user
    // namespace the supervisor created and mapped in parallel. It owns none of the
    // sandbox's other namespaces, so even a process that regained every capability inside
    // it could not touch the mounts, the network or the hostname.
    let identity = control::wait_for_identity(s.control)
        .map_err(|e| channel_failure("join user namespace", e))?;
    if s.late_cgroup {
        join_cgroup(&identity.cgroup_tasks)?;
    }
    sys::process::setns(identity.userns.as_fd(), sys::process::flags::NEWUSER)
        .map_err(at("join user namespace"))?;
    marks.push(("user namespace mapped".into(), now_ns()));

    // Become the sandbox user for good, before any code of the sandbox runs. A session's
    // init instead stays uid 0 of the sandbox's user namespace with the capabilities it
    // needs to start each command as its user (the sandbox's, root without capabilities,
    // another uid); each command drops them for good (see `become_command_user`).
    if serve {
        drop_privileges(0, 0, last_capability, &SERVING_CAPABILITIES)?;
    } else {
        drop_privileges(s.spec.uid, s.spec.gid, last_capability, &[])?;
    }
    // The credential change cleared the parent-death signal: set it again and re-check.
    sys::process::set_parent_death_signal(libc::SIGKILL).map_err(at("set parent-death signal"))?;
    if control::peer_gone(s.control) {
        sys::process::exit_now(exit::NSBOX_FAILED);
    }

    // As the sandbox user, so the user owns the terminal.
    let tty = if s.spec.io.tty && !serve {
        Some(open_pty(s.winsize).map_err(at("allocate a terminal"))?)
    } else {
        None
    };
    marks.push(("privileges dropped".into(), now_ns()));
    // The workload's umask (until here 0, so nsbox's own files got exactly the modes it
    // chose); the command, or a session's every command, inherits it through fork.
    rustix::process::umask(Mode::from_bits_truncate(s.spec.umask));

    // Seccomp last: nothing privileged is left; the workload inherits it through fork.
    crate::sys::seccomp::install_filter(s.seccomp).map_err(at("load the seccomp filter"))?;
    marks.push(("seccomp loaded".into(), now_ns()));

    let Some(command) = command else {
        // Sessions: the init waits for commands instead of running one.
        detach_streams(s.exec_status)?;
        let attached: Vec<BorrowedFd<'_>> = upper.iter().map(|u| u.as_fd()).collect();
        control::send(
            s.control,
            &ToSupervisor::Ready { marks, warnings },
            &attached,
        )
        .map_err(at("report ready"))?;
        drop(attached);
        drop(upper);
        // The start-up code is done with; the idle loop needs little of it.
        sys::mem::release_code_pages();
        let role = InitRole::Serve {
            uid: s.spec.uid,
            gid: s.spec.gid,
            last_capability,
        };
        init_loop(s.control, signalfd.as_fd(), role, Vec::new());
    };

    // The workload.
    // SAFETY: the init is single-threaded; the workload ends through execve or exit_now, and
    // the guard in `child_main` aborts a panic.
    let workload = unsafe { sys::process::fork() }.map_err(at("fork workload"))?;
    if workload == 0 {
        let failure = exec_workload(&command, tty.as_ref().map(|t| t.slave.as_fd()), None);
        let _ = rustix::io::write(
            s.exec_status,
            &serde_json::to_vec(&failure).unwrap_or_default(),
        );
        sys::process::exit_now(failure.code);
    }

    // Init: what is left of this process is the sandbox's pid 1.
    detach_streams(s.exec_status)?;
    marks.push(("workload forked".into(), now_ns()));
    let master = tty.map(|t| {
        drop(t.slave);
        t.master
    });
    let attached: Vec<BorrowedFd<'_>> = master.iter().map(|m| m.as_fd()).collect();
    control::send(
        s.control,
        &ToSupervisor::Started { marks, warnings },
        &attached,
    )
    .map_err(at("report start"))?;
    drop(master);
    init_loop(
        s.control,
        signalfd.as_fd(),
        InitRole::OneCommand {
            hold_after_exit: s.spec.keep_filesystem,
        },
        vec![(0, workload)],
    )
}

/// The init keeps none of the command's streams (so they end when the command's processes
/// do) and not the exec-status pipe (so its end of file means "exec happened").
#[allow(unsafe_code)] // descriptors renumbered in the init; each block says why it is sound
fn detach_streams(exec_status: BorrowedFd<'_>) -> Result<(), Failure> {
    let devnull = rustix::fs::open("/dev/null", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
        .map_err(at("open /dev/null"))?;
    for target in 0..3 {
        // SAFETY: the init owns nothing on 0-2 (its stdio was set up by number).
        unsafe { dup_onto(devnull.as_fd(), target) }.map_err(at("detach init's streams"))?;
    }
    let n = exec_status.as_raw_fd().unsigned_abs();
    // SAFETY: the pipe's owner is the supervisor's copy, never dropped in this process; the
    // `exec_status` borrow is not used after this.
    let _ = unsafe { sys::fs::close_range(n, n) };
    Ok(())
}

/// Joins the sandbox's cgroup by writing "0" to its v1 `tasks` files (cheap: no global
/// lock, unlike moving another process), then gives the sandbox its own cgroup namespace
/// rooted there. On v2 the `tasks` list is empty: clone3 placed us already.
fn join_cgroup(tasks: &[OwnedFd]) -> Result<(), Failure> {
    crate::cgroup::join_self(tasks).map_err(at("join cgroup"))?;
    sys::process::unshare(sys::process::flags::NEWCGROUP).map_err(at("create cgroup namespace"))
}

/// Waits for the network namespace the supervisor creates in parallel, and joins it.
fn join_network_namespace(control_fd: BorrowedFd<'_>) -> Result<(), Failure> {
    let ns = control::wait_for_net_namespace(control_fd)
        .map_err(|e| channel_failure("join network namespace", e))?;
    sys::process::setns(ns.as_fd(), sys::process::flags::NEWNET)
        .map_err(at("join network namespace"))
}

/// A typed wait that failed: the supervisor's own report of a failed step keeps its step; a
/// supervisor that is gone ends the child quietly (its parent-death signal is on its way).
fn channel_failure(step: &str, e: control::ChannelError) -> Failure {
    match e {
        control::ChannelError::Failed(failure) => failure,
        control::ChannelError::Closed { .. } => sys::process::exit_now(exit::NSBOX_FAILED),
        other => at(step)(other),
    }
}

/// Puts `fd` on `target` (a standard stream) without close-on-exec.
///
/// # Safety
/// As `sys::fs::dup_onto`: nothing may rely on `target`'s previous file. Called only in the
/// processes forked for the sandbox, whose standard streams nothing owns.
#[allow(unsafe_code)]
unsafe fn dup_onto(fd: BorrowedFd<'_>, target: RawFd) -> io::Result<()> {
    if fd.as_raw_fd() == target {
        // dup2 onto itself would keep CLOEXEC; clear it explicitly.
        return rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())
            .map_err(|e| io::Error::from_raw_os_error(e.raw_os_error()));
    }
    // SAFETY: the caller's guarantee is the one `sys::fs::dup_onto` needs.
    unsafe { sys::fs::dup_onto(fd, target) }
}

/// Closes every descriptor >= 3 that is not in `keep`.
///
/// # Safety
/// As `sys::fs::close_range`: the closed descriptors' owners must never be used or dropped
/// afterwards (in the setup child they are the supervisor's, copied with the fork).
#[allow(unsafe_code)]
unsafe fn close_all_except(keep: &[RawFd]) -> io::Result<()> {
    let mut keep: Vec<u32> = keep
        .iter()
        .filter_map(|&fd| u32::try_from(fd).ok())
        .filter(|&fd| fd >= 3)
        .collect();
    keep.sort_unstable();
    keep.dedup();
    let mut next = 3u32;
    for fd in keep {
        if fd > next {
            // SAFETY: the caller's guarantee covers every descriptor not kept.
            unsafe { sys::fs::close_range(next, fd - 1) }?;
        }
        next = fd + 1;
    }
    // SAFETY: as above.
    unsafe { sys::fs::close_range(next, u32::MAX) }
}

/// Becomes `uid`:`gid` for good: the bounding set emptied but for `keep`, securebits locked
/// (uid 0 gains nothing at exec), the permitted and effective sets `keep`, nothing
/// inheritable or ambient, no_new_privs. A one-shot's init keeps nothing; a session's, see
/// [`SERVING_CAPABILITIES`].
fn drop_privileges(
    uid: u32,
    gid: u32,
    last_capability: libc::c_ulong,
    keep: &[u32],
) -> Result<(), Failure> {
    use rustix::process::{Gid, Uid};
    use rustix::thread::{set_thread_groups, set_thread_res_gid, set_thread_res_uid};
    sys::process::drop_bounding_set_except(last_capability, keep)
        .map_err(at("drop bounding capabilities"))?;
    sys::process::lock_securebits().map_err(at("lock securebits"))?;
    let g = Gid::from_raw(gid);
    set_thread_groups(&[g]).map_err(at("set supplementary groups"))?;
    set_thread_res_gid(g, g, g).map_err(at("set gid"))?;
    let u = Uid::from_raw(uid);
    set_thread_res_uid(u, u, u).map_err(at("set uid"))?;
    sys::process::set_capabilities(keep).map_err(at("set capabilities"))?;
    sys::process::clear_ambient().map_err(at("clear ambient capabilities"))?;
    sys::process::set_no_new_privs().map_err(at("set no_new_privs"))?;
    Ok(())
}

/// What a session's init keeps, in the sandbox's user namespace only, as its uid and gid 0
/// (that namespace owns none of the sandbox's other namespaces): setuid and setgid to start
/// a command as its user, setpcap to empty the command's bounding set, kill to signal
/// commands of another uid than its own (timeouts, Ctrl-C, stop). The workload cannot reach
/// it: a command as the sandbox user has another uid, and one as root lacks the
/// capabilities the init holds, which ptrace, /proc/1/mem and signals all require.
const SERVING_CAPABILITIES: [u32; 4] = [
    sys::process::CAP_KILL,
    sys::process::CAP_SETGID,
    sys::process::CAP_SETUID,
    sys::process::CAP_SETPCAP,
];

/// In a command forked by a session's init: become `uid`:`gid` (root for E2B's
/// `user="root"`) with no capability left in any set, the bounding set included, for good.
fn become_command_user(uid: u32, gid: u32, last_capability: libc::c_ulong) -> io::Result<()> {
    use rustix::process::{Gid, Uid};
    use rustix::thread::{set_thread_groups, set_thread_res_gid, set_thread_res_uid};
    let err = |e: rustix::io::Errno| io::Error::from_raw_os_error(e.raw_os_error());
    // The bounding set first: emptying it needs CAP_SETPCAP, which the uid change clears.
    sys::process::drop_bounding_set(last_capability)?;
    let g = Gid::from_raw(gid);
    set_thread_groups(&[g]).map_err(err)?;
    set_thread_res_gid(g, g, g).map_err(err)?;
    let u = Uid::from_raw(uid);
    set_thread_res_uid(u, u, u).map_err(err)?;
    // Leaving uid 0 cleared them already; staying uid 0 (root) did not.
    sys::process::clear_capabilities()
}

/// Runs `f` with the effective ids `uid`:`gid` (so what it creates belongs to them), then
/// returns to root. The real and saved ids stay 0, so the way back needs no privilege, and
/// the effective capabilities come back with the effective uid.
fn as_effective_user<T>(uid: u32, gid: u32, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    use rustix::process::{Gid, Uid};
    use rustix::thread::{set_thread_res_gid, set_thread_res_uid};
    let err = |e: rustix::io::Errno| io::Error::from_raw_os_error(e.raw_os_error());
    set_thread_res_gid(Gid::ROOT, Gid::from_raw(gid), Gid::ROOT).map_err(err)?;
    set_thread_res_uid(Uid::ROOT, Uid::from_raw(uid), Uid::ROOT).map_err(err)?;
    let result = f();
    let back = set_thread_res_uid(Uid::ROOT, Uid::ROOT, Uid::ROOT)
        .and_then(|()| set_thread_res_gid(Gid::ROOT, Gid::ROOT, Gid::ROOT));
    if back.is_err() {
        // An init left with the wrong identity could start commands as it: stop instead.
        sys::process::exit_now(exit::NSBOX_FAILED);
    }
    result
}

struct Pty {
    master: OwnedFd,
    slave: OwnedFd,
}

/// Allocates a terminal in the sandbox's own devpts, as the sandbox user (so the user owns the
/// slave, as after a login).
fn open_pty(winsize: Option<Winsize>) -> io::Result<Pty> {
    let err = |e: rustix::io::Errno| io::Error::from_raw_os_error(e.raw_os_error());
    let master = rustix::fs::open(
        "/dev/ptmx",
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(err)?;
    rustix::pty::unlockpt(&master).map_err(err)?;
    let name = rustix::pty::ptsname(&master, Vec::new()).map_err(err)?;
    let slave = rustix::fs::open(
        name.as_c_str(),
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(err)?;
    if let Some(ws) = winsize {
        rustix::termios::tcsetwinsize(&slave, ws).map_err(err)?;
    }
    Ok(Pty { master, slave })
}

/// The command, ready for execve (converted before fork).
struct Command {
    argv: Vec<CString>,
    envp: Vec<CString>,
    candidates: Vec<CString>,
    name: String,
    search_path: String,
    workdir: CString,
    workdir_shown: String,
}

impl Command {
    fn prepare(spec: &SandboxSpec) -> io::Result<Command> {
        let argv: Vec<&[u8]> = spec.command.iter().map(|a| a.as_bytes()).collect();
        Command::from_parts(&argv, &spec.env, &spec.workdir)
    }

    fn from_parts<A: AsRef<[u8]>>(
        args: &[A],
        env: &[(String, String)],
        workdir: &Path,
    ) -> io::Result<Command> {
        let cstr = |bytes: &[u8]| CString::new(bytes).map_err(io::Error::other);
        let argv = args
            .iter()
            .map(|a| cstr(a.as_ref()))
            .collect::<io::Result<Vec<_>>>()?;
        let envp = env
            .iter()
            .map(|(k, v)| cstr(format!("{k}={v}").as_bytes()))
            .collect::<io::Result<Vec<_>>>()?;
        let first: &OsStr = args
            .first()
            .map(|a| OsStr::from_bytes(a.as_ref()))
            .unwrap_or_default();
        let search_path = env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".to_string());
        let candidates = if first.as_bytes().contains(&b'/') {
            vec![cstr(first.as_bytes())?]
        } else {
            search_path
                .split(':')
                .map(|dir| if dir.is_empty() { "." } else { dir })
                .map(|dir| cstr(Path::new(dir).join(first).as_os_str().as_bytes()))
                .collect::<io::Result<Vec<_>>>()?
        };
        Ok(Command {
            argv,
            envp,
            candidates,
            name: first.to_string_lossy().into_owned(),
            search_path,
            workdir: cstr(workdir.as_os_str().as_bytes())?,
            workdir_shown: workdir.display().to_string(),
        })
    }
}

/// The workload side of the fork: returns only when the command could not be started. With a
/// `gate`, the last step before the exec is waiting until the gate can be read.
#[allow(unsafe_code)] // the terminal onto 0-2; the block says why it is sound
fn exec_workload(
    cmd: &Command,
    tty: Option<BorrowedFd<'_>>,
    gate: Option<BorrowedFd<'_>>,
) -> ExecFailure {
    let setup_failure = |what: &str, e: io::Error| ExecFailure {
        code: exit::NSBOX_FAILED,
        message: format!("{what}: {e}"),
    };
    let errno = |e: rustix::io::Errno| io::Error::from_raw_os_error(e.raw_os_error());
    // A new session: the workload has no controlling terminal of the caller's, so TIOCSTI
    // injection into it is impossible (seccomp refuses TIOCSTI as well).
    if let Err(e) = rustix::process::setsid() {
        return setup_failure("start a new session", errno(e));
    }
    if let Some(slave) = tty {
        if let Err(e) = rustix::process::ioctl_tiocsctty(slave) {
            return setup_failure("attach the terminal", errno(e));
        }
        for target in 0..3 {
            // SAFETY: a freshly forked workload: nothing in it owns 0-2.
            if let Err(e) = unsafe { dup_onto(slave, target) } {
                return setup_failure("attach the terminal", e);
            }
        }
    }
    // A session's `exec -w DIR` creates DIR like a new sandbox's -w does (as the sandbox user).
    let mut entered = rustix::process::chdir(cmd.workdir.as_c_str());
    if entered == Err(rustix::io::Errno::NOENT) {
        let path = std::path::Path::new(std::ffi::OsStr::from_bytes(cmd.workdir.as_bytes()));
        if std::fs::create_dir_all(path).is_ok() {
            entered = rustix::process::chdir(cmd.workdir.as_c_str());
        }
    }
    if let Err(e) = entered {
        return setup_failure(
            &format!("enter the working directory {}", cmd.workdir_shown),
            errno(e),
        );
    }
    if let Err(e) = sys::signal::reset_for_exec() {
        return setup_failure("reset signals", e);
    }
    // After the signal reset, so a signal for a command still at its gate (`kill` of a
    // created container) ends it as it would end the program.
    if let Some(gate) = gate {
        if let Err(e) = wait_at_gate(gate) {
            return setup_failure("wait for the start", e);
        }
    }
    if let Err(e) = sys::fs::cloexec_from(3) {
        return setup_failure("close descriptors", e);
    }
    let mut not_executable: Option<(String, io::Error)> = None;
    for path in &cmd.candidates {
        let err = sys::process::execve(path, &cmd.argv, &cmd.envp);
        match err.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ENOTDIR) => continue,
            Some(libc::EACCES) | Some(libc::ENOEXEC) | Some(libc::EISDIR) | Some(libc::ETXTBSY) => {
                if not_executable.is_none() {
                    not_executable = Some((path.to_string_lossy().into_owned(), err));
                }
            }
            _ => {
                return ExecFailure {
                    code: exit::NOT_EXECUTABLE,
                    message: format!("cannot execute {}: {err}", path.to_string_lossy()),
                }
            }
        }
    }
    match not_executable {
        Some((path, err)) => {
            let why = match err.raw_os_error() {
                Some(libc::ENOEXEC) => {
                    "not an executable format (a script needs a #! line)".to_string()
                }
                Some(libc::EISDIR) => "it is a directory".to_string(),
                _ => err.to_string(),
            };
            ExecFailure {
                code: exit::NOT_EXECUTABLE,
                message: format!("cannot execute {path}: {why}"),
            }
        }
        None if cmd.name.contains('/') => ExecFailure {
            code: exit::NOT_FOUND,
            message: format!(
                "command not found: {} does not exist in the sandbox",
                cmd.name
            ),
        },
        None => ExecFailure {
            code: exit::NOT_FOUND,
            message: format!(
                "command not found: {} (searched PATH={})",
                cmd.name, cmd.search_path
            ),
        },
    }
}

/// Blocks until the gate yields data (the runtime's `start` writes to it); its end without
/// data means the command is not to run.
fn wait_at_gate(gate: BorrowedFd<'_>) -> io::Result<()> {
    let mut buf = [0u8; 16];
    loop {
        match rustix::io::read(gate, &mut buf) {
            Ok(0) => return Err(io::Error::other("the gate closed without a start")),
            Ok(_) => return Ok(()),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(io::Error::from_raw_os_error(e.raw_os_error())),
        }
    }
}

/// The init's wait: until a signal or a message from the supervisor arrives. Returns which of
/// the two descriptors is ready; an init that cannot poll ends (and with it the sandbox).
fn wait_init_events(control_fd: BorrowedFd<'_>, signalfd: BorrowedFd<'_>) -> [bool; 2] {
    use rustix::event::{poll, PollFd, PollFlags};
    loop {
        let mut fds = [
            PollFd::new(&signalfd, PollFlags::IN),
            PollFd::new(&control_fd, PollFlags::IN),
        ];
        match poll(&mut fds, None) {
            Ok(_) => return fds.map(|f| !f.revents().is_empty()),
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => sys::process::exit_now(exit::NSBOX_FAILED),
        }
    }
}

/// What the init runs: the spec's one command (its end ends the sandbox), or the commands the
/// supervisor sends (a session; the sandbox ends when the supervisor goes away).
enum InitRole {
    /// `hold_after_exit` (`exec --out`): after reporting the command's end, stay until the
    /// supervisor has taken hold of the filesystem (it then kills the init).
    OneCommand { hold_after_exit: bool },
    /// A session's: commands are started as `uid`:`gid` or as root (see
    /// [`SERVING_CAPABILITIES`]).
    Serve {
        uid: u32,
        gid: u32,
        last_capability: libc::c_ulong,
    },
}

/// pid 1: runs the commands (`running`, by exec id and pid; the one-shot's command has id 0),
/// reaps every child, forwards signals to the commands' process groups and reports each
/// command's end. A one-shot init exits when its command does; the kernel then kills whatever
/// is left in the namespace.
fn init_loop(
    control_fd: BorrowedFd<'_>,
    signalfd: BorrowedFd<'_>,
    role: InitRole,
    mut running: Vec<(u64, i32)>,
) -> ! {
    loop {
        let [_, control_ready] = wait_init_events(control_fd, signalfd);
        if control_ready {
            match control::recv::<ToSandbox>(control_fd) {
                Ok(Some((request, attached))) => {
                    if let InitRole::Serve {
                        uid,
                        gid,
                        last_capability,
                    } = role
                    {
                        let user = (uid, gid, last_capability);
                        serve_request(control_fd, request, attached, &mut running, user);
                    }
                }
                // The supervisor is gone (its parent-death signal reaches us too). End now.
                Ok(None) | Err(_) => sys::process::exit_now(match role {
                    InitRole::OneCommand { .. } => exit::NSBOX_FAILED,
                    InitRole::Serve { .. } => 0,
                }),
            }
        }
        while let Ok(Some(info)) = sys::signal::read_signal_info(signalfd) {
            // Only the supervisor's signals are relayed; it sends from outside the sandbox's
            // pid namespace, so its pid reads as 0 here. A process of the sandbox that
            // signals pid 1 (the init ignores nothing it has blocked) is not obeyed.
            let signal = info.signal;
            if signal == libc::SIGCHLD || info.sender_pid != 0 {
                continue;
            }
            // Each command leads its own session and process group.
            for (_, pid) in &running {
                let _ = sys::signal::kill(-*pid, signal);
            }
        }
        loop {
            let mut status = 0;
            let pid = sys::process::wait_any_nohang(&mut status);
            if pid <= 0 {
                break;
            }
            let Some(index) = running.iter().position(|(_, p)| *p == pid) else {
                continue;
            };
            let (exec_id, _) = running.swap_remove(index);
            let (code, signal) = sys::process::decode_wait_status(status);
            match role {
                InitRole::OneCommand { hold_after_exit } => {
                    let _ = control::send(control_fd, &ToSupervisor::Exited { code, signal }, &[]);
                    if hold_after_exit {
                        // Until the supervisor kills us or goes away (signals stay blocked:
                        // nothing else needs an answer now).
                        let mut fds = [rustix::event::PollFd::new(
                            &control_fd,
                            rustix::event::PollFlags::IN,
                        )];
                        while let Err(rustix::io::Errno::INTR) = rustix::event::poll(&mut fds, None)
                        {
                        }
                    }
                    sys::process::exit_now(0);
                }
                InitRole::Serve { .. } => {
                    let _ = control::send(
                        control_fd,
                        &ToSupervisor::ExecEnded {
                            exec_id,
                            code,
                            signal,
                        },
                        &[],
                    );
                }
            }
        }
    }
}

/// One request to a session's init.
fn serve_request(
    control_fd: BorrowedFd<'_>,
    request: ToSandbox,
    attached: Vec<OwnedFd>,
    running: &mut Vec<(u64, i32)>,
    user: (u32, u32, libc::c_ulong),
) {
    match request {
        ToSandbox::Exec(request) => {
            let exec_id = request.exec_id;
            match spawn_command(&request, attached, user) {
                Ok((pid, master)) => {
                    running.push((exec_id, pid));
                    let fds: Vec<BorrowedFd<'_>> = master.iter().map(|m| m.as_fd()).collect();
                    let _ = control::send(control_fd, &ToSupervisor::ExecStarted { exec_id }, &fds);
                }
                Err(e) => {
                    let _ = control::send(
                        control_fd,
                        &ToSupervisor::ExecRefused {
                            exec_id,
                            message: e.to_string(),
                        },
                        &[],
                    );
                }
            }
        }
        ToSandbox::Signal { exec_id, signal } => {
            if let Some((_, pid)) = running.iter().find(|(id, _)| *id == exec_id) {
                // Each command leads its own session and process group.
                let _ = sys::signal::kill(-*pid, signal);
            }
        }
        ToSandbox::Broadcast { signal } => {
            // -1: every process this one may signal, which is every process of the sandbox
            // but the init itself.
            let _ = sys::signal::kill(-1, signal);
        }
        _ => {}
    }
}

/// Forks one session command. Returns its pid and, with a terminal, the pty master.
#[allow(unsafe_code)] // the fork and the command's streams; each block says why it is sound
fn spawn_command(
    request: &ExecRequest,
    attached: Vec<OwnedFd>,
    (uid, gid, last_capability): (u32, u32, libc::c_ulong),
) -> io::Result<(i32, Option<OwnedFd>)> {
    let (uid, gid) = request.user.unwrap_or((uid, gid));
    let command = Command::from_parts(&request.argv, &request.env, &request.workdir)?;
    let expected = if request.tty { 1 } else { 4 } + usize::from(request.gated);
    if attached.len() != expected {
        return Err(io::Error::other(format!(
            "expected {expected} descriptors with the request, got {}",
            attached.len()
        )));
    }
    let pty = if request.tty {
        let winsize = request.winsize.map(|(rows, cols)| Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        });
        // Owned by the command's user, as after a login.
        Some(as_effective_user(uid, gid, || open_pty(winsize))?)
    } else {
        None
    };
    let status = attached
        .last()
        .ok_or_else(|| io::Error::other("no status pipe"))?;
    let gate = request
        .gated
        .then(|| attached.get(attached.len().wrapping_sub(2)))
        .flatten()
        .map(|g| g.as_fd());
    // SAFETY: the init is single-threaded; the child ends through execve or exit_now, and the
    // guard in `child_main` aborts a panic.
    let pid = unsafe { sys::process::fork() }?;
    if pid == 0 {
        if let Err(e) = become_command_user(uid, gid, last_capability) {
            let failure = ExecFailure {
                code: exit::NSBOX_FAILED,
                message: format!("become the command's user: {e}"),
            };
            let _ = rustix::io::write(status, &serde_json::to_vec(&failure).unwrap_or_default());
            sys::process::exit_now(failure.code);
        }
        if pty.is_none() {
            for (target, fd) in (0..).zip(attached.iter().take(3)) {
                // SAFETY: a freshly forked command: nothing in it owns 0-2.
                if let Err(e) = unsafe { dup_onto(fd.as_fd(), target) } {
                    let failure = ExecFailure {
                        code: exit::NSBOX_FAILED,
                        message: format!("set up standard streams: {e}"),
                    };
                    let _ = rustix::io::write(
                        status,
                        &serde_json::to_vec(&failure).unwrap_or_default(),
                    );
                    sys::process::exit_now(failure.code);
                }
            }
        }
        let failure = exec_workload(&command, pty.as_ref().map(|p| p.slave.as_fd()), gate);
        if let (Some(pty), true) = (&pty, request.failure_on_terminal) {
            let _ = rustix::io::write(
                &pty.slave,
                format!("nsbox: {}\n", failure.message).as_bytes(),
            );
        }
        let _ = rustix::io::write(status, &serde_json::to_vec(&failure).unwrap_or_default());
        sys::process::exit_now(failure.code);
    }
    drop(attached);
    Ok((pid, pty.map(|p| p.master)))
}
