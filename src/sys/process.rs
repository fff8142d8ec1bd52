//! Process creation and identity: clone3 with namespaces, fork, execve, capabilities, the
//! process title. Used by the sandbox's supervisor, setup child and init.

use std::ffi::CString;
use std::io;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};

use super::check;

/// Namespace and cgroup flags for [`clone3_fork`].
pub mod flags {
    pub const NEWNS: u64 = libc::CLONE_NEWNS as u64;
    pub const NEWPID: u64 = libc::CLONE_NEWPID as u64;
    pub const NEWNET: u64 = libc::CLONE_NEWNET as u64;
    pub const NEWUTS: u64 = libc::CLONE_NEWUTS as u64;
    pub const NEWIPC: u64 = libc::CLONE_NEWIPC as u64;
    pub const NEWCGROUP: u64 = libc::CLONE_NEWCGROUP as u64;
    pub const NEWUSER: u64 = libc::CLONE_NEWUSER as u64;
}

const CLONE_PIDFD: u64 = 0x1000;
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `struct clone_args` up to CLONE_ARGS_SIZE_VER2 (with `cgroup`), kernel 5.7+.
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Which side of a fork we are on.
#[derive(Debug)]
pub enum Forked {
    Child,
    Parent { pid: i32, pidfd: OwnedFd },
}

/// Number of threads of this process, from /proc/self/stat (field 20).
pub fn thread_count() -> io::Result<usize> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let after_comm = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| io::Error::other("malformed /proc/self/stat"))?;
    after_comm
        .split_whitespace()
        .nth(17)
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| io::Error::other("malformed /proc/self/stat"))
}

/// Forks like fork(2) but into new namespaces, returning a pidfd for the child, and optionally
/// directly into a cgroup v2 directory (CLONE_INTO_CGROUP: no migration, no global lock).
///
/// The caller must be single-threaded: the child is a copy of only the calling thread, and
/// continuing to run arbitrary Rust code there is sound only if no other thread held a lock.
/// This is checked; a threaded caller gets an error instead of a fork.
pub fn clone3_fork(ns_flags: u64, cgroup: Option<BorrowedFd<'_>>) -> io::Result<Forked> {
    if thread_count()? != 1 {
        return Err(io::Error::other(
            "internal error: the sandbox must be created from a single-threaded process",
        ));
    }
    let mut pidfd: libc::c_int = -1;
    let mut args = CloneArgs {
        flags: ns_flags | CLONE_PIDFD,
        pidfd: &mut pidfd as *mut libc::c_int as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..Default::default()
    };
    if let Some(fd) = cgroup {
        use std::os::fd::AsRawFd;
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = u64::from(fd.as_raw_fd().unsigned_abs());
    }
    // SAFETY: clone3 with stack = 0 behaves like fork: the child continues on a copy-on-write
    // copy of this thread's stack. `args` and `pidfd` outlive the call. The process is
    // single-threaded (checked above), so the child's copy of the heap and of every lock is
    // consistent and the child may keep running Rust code.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match check(ret)? {
        0 => Ok(Forked::Child),
        pid => {
            // SAFETY: with CLONE_PIDFD the kernel stored a new, owned file descriptor in `pidfd`.
            let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
            Ok(Forked::Parent {
                pid: i32::try_from(pid).map_err(|_| invalid("pid"))?,
                pidfd,
            })
        }
    }
}

/// Plain fork(2). Returns 0 in the child, the child's pid in the parent.
///
/// # Safety
/// The caller must be single-threaded: the child is a copy of the calling thread alone, and
/// running arbitrary Rust code there (allocating, locking) is sound only if no other thread
/// could have held a lock at the fork. The child must end through [`exit_now`] or execve,
/// never by returning into frames whose destructors own the parent's resources; an
/// [`AbortOnPanic`] guard keeps a panic from unwinding into them.
pub unsafe fn fork() -> io::Result<i32> {
    // SAFETY: the caller guarantees this process is single-threaded (see above).
    let ret = unsafe { libc::fork() };
    check(libc::c_long::from(ret)).and_then(|pid| i32::try_from(pid).map_err(|_| invalid("pid")))
}

/// The error for a value the kernel interface cannot take (or gave back out of range).
fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("{what} out of range"))
}

/// Held by a forked child for its whole life: a panic there aborts the process instead of
/// unwinding, which would run the parent's destructors (say, a cgroup's removal or a session
/// record's write) in the child. Dropping the guard during an unwind aborts; a child that ends
/// normally leaves through [`exit_now`], so the guard is never dropped outside an unwind.
#[derive(Debug)]
pub struct AbortOnPanic;

impl Drop for AbortOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Not `std::process::abort()`: musl's abort raises the signal at the thread id it
            // cached in the parent (clone3 does not refresh it as fork(3) does), which could
            // be the supervisor. Signal this process by its real pid, and end if that failed.
            let _ = rustix::process::kill_process(
                rustix::process::getpid(),
                rustix::process::Signal::ABORT,
            );
            exit_now(128 + libc::SIGABRT);
        }
    }
}

/// execve(2). Returns only on failure.
pub fn execve(path: &CString, argv: &[CString], envp: &[CString]) -> io::Error {
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut env_ptrs: Vec<*const libc::c_char> = envp.iter().map(|e| e.as_ptr()).collect();
    env_ptrs.push(std::ptr::null());
    // SAFETY: every pointer refers to a NUL-terminated string kept alive by `argv`/`envp` for the
    // duration of the call, and both arrays are NULL-terminated.
    unsafe { libc::execve(path.as_ptr(), argv_ptrs.as_ptr(), env_ptrs.as_ptr()) };
    io::Error::last_os_error()
}

/// unshare(2) for namespace flags.
pub fn unshare(ns_flags: u64) -> io::Result<()> {
    let ns_flags = libc::c_int::try_from(ns_flags).map_err(|_| invalid("namespace flags"))?;
    // SAFETY: unshare takes plain flags and touches no memory of ours.
    let ret = unsafe { libc::unshare(ns_flags) };
    check(ret as libc::c_long).map(drop)
}

/// Immediately ends the process without running destructors or atexit handlers (for forked
/// children whose parent owns the real cleanup).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and is always safe to call.
    unsafe { libc::_exit(code) }
}

/// The highest capability number this kernel knows (63 when it cannot tell: capabilities it
/// does not know are refused one by one, harmlessly).
pub fn last_capability() -> libc::c_ulong {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<libc::c_ulong>().ok())
        .unwrap_or(63)
}

/// Drops every capability up to `last` (see [`last_capability`]) from the bounding set (needs
/// CAP_SETPCAP in the current user ns).
pub fn drop_bounding_set(last: libc::c_ulong) -> io::Result<()> {
    drop_bounding_set_except(last, &[])
}

/// Capability numbers (linux/capability.h).
pub const CAP_KILL: u32 = 5;
pub const CAP_SETGID: u32 = 6;
pub const CAP_SETUID: u32 = 7;
pub const CAP_SETPCAP: u32 = 8;

/// Drops every capability up to `last` but those in `keep` from the bounding set (needs
/// CAP_SETPCAP in the current user ns).
pub fn drop_bounding_set_except(last: libc::c_ulong, keep: &[u32]) -> io::Result<()> {
    for cap in (0..=last).filter(|c| !keep.iter().any(|k| libc::c_ulong::from(*k) == *c)) {
        // SAFETY: PR_CAPBSET_DROP takes an integer argument; no memory is passed.
        let ret = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        if ret < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EINVAL) {
                return Err(err);
            }
        }
    }
    Ok(())
}

/// Sets the permitted and effective capability sets of this thread to `caps` (numbers below
/// 64), the inheritable set to nothing.
pub fn set_capabilities(caps: &[u32]) -> io::Result<()> {
    let mut header = libc_cap_header {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let mut data = [libc_cap_data::default(); 2];
    for &cap in caps {
        let word = &mut data[(cap / 32) as usize % 2];
        word.permitted |= 1 << (cap % 32);
        word.effective |= 1 << (cap % 32);
    }
    // SAFETY: capset reads a v3 header and two data structs, both valid for the call.
    let ret = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_mut_ptr()) };
    check(ret).map(drop)
}

/// Clears the permitted, effective and inheritable capability sets of this thread.
pub fn clear_capabilities() -> io::Result<()> {
    set_capabilities(&[])
}

#[repr(C)]
struct libc_cap_header {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct libc_cap_data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Clears the ambient capability set.
pub fn clear_ambient() -> io::Result<()> {
    // SAFETY: integer-only prctl.
    let ret = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    check(ret as libc::c_long).map(drop)
}

/// Locks the "no root" securebits: uid 0 inside gains nothing at exec, ambient raises are
/// forbidden, and none of this can be undone.
pub fn lock_securebits() -> io::Result<()> {
    const SECBIT_NOROOT: libc::c_ulong = 1 << 0;
    const SECBIT_NOROOT_LOCKED: libc::c_ulong = 1 << 1;
    const SECBIT_NO_SETUID_FIXUP_LOCKED: libc::c_ulong = 1 << 3;
    const SECBIT_KEEP_CAPS_LOCKED: libc::c_ulong = 1 << 5;
    const SECBIT_NO_CAP_AMBIENT_RAISE: libc::c_ulong = 1 << 6;
    const SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED: libc::c_ulong = 1 << 7;
    let bits = SECBIT_NOROOT
        | SECBIT_NOROOT_LOCKED
        | SECBIT_NO_SETUID_FIXUP_LOCKED
        | SECBIT_KEEP_CAPS_LOCKED
        | SECBIT_NO_CAP_AMBIENT_RAISE
        | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED;
    // SAFETY: integer-only prctl.
    let ret = unsafe { libc::prctl(libc::PR_SET_SECUREBITS, bits, 0, 0, 0) };
    check(ret as libc::c_long).map(drop)
}

/// Sets no_new_privs: execve can never grant privileges again (setuid bits, file caps).
pub fn set_no_new_privs() -> io::Result<()> {
    // SAFETY: integer-only prctl.
    let ret = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    check(ret as libc::c_long).map(drop)
}

/// Sends `signal` to us when the parent (the thread that forked us) dies.
pub fn set_parent_death_signal(signal: i32) -> io::Result<()> {
    let signal = libc::c_ulong::try_from(signal).map_err(|_| invalid("signal"))?;
    // SAFETY: integer-only prctl.
    let ret = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, signal, 0, 0, 0) };
    check(ret as libc::c_long).map(drop)
}

/// Makes this process non-dumpable: no core dumps, and /proc/PID files and ptrace need
/// CAP_SYS_PTRACE — the workload cannot reach into it (runc CVE-2019-5736 class).
pub fn set_non_dumpable() -> io::Result<()> {
    // SAFETY: integer-only prctl.
    let ret = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    check(ret as libc::c_long).map(drop)
}

/// The title /proc/PID/cmdline shows once [`hide_arguments`] ran.
const INIT_TITLE: &[u8] = b"nsbox-init";

/// Overwrites this process's argument and environment strings in place, so pid 1 of the sandbox
/// never shows the supervisor's command line or environment (which may hold --secret values)
/// in /proc/1/cmdline. Needs no capability (unlike PR_SET_MM).
///
/// # Safety
/// Call only in a single-threaded process that no longer reads `std::env` (the arguments and
/// environment std captured point into the memory overwritten here).
pub unsafe fn hide_arguments() -> io::Result<()> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let after_comm = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| io::Error::other("malformed /proc/self/stat"))?;
    // Fields 48-51 (1-based) are arg_start, arg_end, env_start, env_end; after the comm field
    // the first one is field 3.
    let fields: Vec<usize> = after_comm
        .split_whitespace()
        .skip(45)
        .take(4)
        .filter_map(|f| f.parse().ok())
        .collect();
    let [arg_start, arg_end, env_start, env_end] = fields[..] else {
        return Err(io::Error::other(
            "/proc/self/stat lacks the argument addresses",
        ));
    };
    // The short name (comm) that ps shows by default, too.
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes from the pointer.
    unsafe {
        libc::prctl(
            libc::PR_SET_NAME,
            c"nsbox-init".as_ptr() as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    for (start, end, title) in [
        (arg_start, arg_end, INIT_TITLE),
        (env_start, env_end, &b""[..]),
    ] {
        if end <= start {
            continue;
        }
        let len = end - start;
        // SAFETY: [start, end) is this process's own argument (or environment) string area, set
        // up by the kernel at exec and mapped writable for the process's whole life. Nothing
        // reads these strings concurrently or later: the caller guarantees the process is
        // single-threaded and does not use std::env afterwards.
        unsafe {
            let area = start as *mut u8;
            std::ptr::write_bytes(area, 0, len);
            std::ptr::copy_nonoverlapping(title.as_ptr(), area, title.len().min(len - 1));
        }
    }
    Ok(())
}

/// waitpid(-1, WNOHANG): the pid of a child that changed state (0 if none, -1 on error such
/// as no children at all), its raw status in `status`.
pub fn wait_any_nohang(status: &mut libc::c_int) -> i32 {
    // SAFETY: `status` is a valid out-pointer for the call.
    unsafe { libc::waitpid(-1, status, libc::WNOHANG) }
}

/// Splits a wait status into (exit code, terminating signal).
pub fn decode_wait_status(status: libc::c_int) -> (Option<i32>, Option<i32>) {
    if libc::WIFEXITED(status) {
        (Some(libc::WEXITSTATUS(status)), None)
    } else if libc::WIFSIGNALED(status) {
        (None, Some(libc::WTERMSIG(status)))
    } else {
        (None, None)
    }
}

/// setns(2): moves the calling thread into the namespace `fd` refers to.
/// Opens a namespace file (/proc/PID/ns/KIND, or a bind mount of one such as /run/netns/NAME)
/// for a later `setns`; a file that is not one (not on nsfs) is refused. Its type is checked
/// by `setns` itself, which refuses a namespace of another type than the flag names.
pub fn open_namespace(path: &std::path::Path) -> io::Result<std::os::fd::OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    let errno = |e: rustix::io::Errno| io::Error::from_raw_os_error(e.raw_os_error());
    let fd =
        rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).map_err(errno)?;
    // nsfs's magic number: the files of /proc/PID/ns and their bind mounts.
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    let fs = rustix::fs::fstatfs(&fd).map_err(errno)?;
    // f_type's width differs between architectures (i64 here).
    #[allow(clippy::useless_conversion)]
    let f_type = i64::from(fs.f_type);
    if f_type != NSFS_MAGIC {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a namespace file",
        ));
    }
    Ok(fd)
}

pub fn setns(fd: std::os::fd::BorrowedFd<'_>, ns_flag: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let ns_flag = libc::c_int::try_from(ns_flag).map_err(|_| invalid("namespace flag"))?;
    // SAFETY: setns takes a descriptor we borrow for the call and a flag; no memory is passed.
    let ret = unsafe { libc::setns(fd.as_raw_fd(), ns_flag) };
    check(ret as libc::c_long).map(drop)
}

/// Moves the calling thread off the CPU it runs on, to the other CPUs it may use, and returns
/// its previous CPU mask (None when it may use only one CPU). A child just forked is queued on
/// the parent's CPU and waits there while the parent stays busy; stepping aside lets it start
/// at once while the parent works in parallel elsewhere.
pub fn step_aside() -> Option<rustix::thread::CpuSet> {
    let original = rustix::thread::sched_getaffinity(None).ok()?;
    let current = rustix::thread::sched_getcpu();
    let mut others = original;
    others.unset(current);
    if others.count() == 0 {
        return None;
    }
    rustix::thread::sched_setaffinity(None, &others).ok()?;
    Some(original)
}

/// Restores a CPU mask saved by [`step_aside`].
pub fn restore_affinity(original: Option<rustix::thread::CpuSet>) {
    if let Some(mask) = original {
        let _ = rustix::thread::sched_setaffinity(None, &mask);
    }
}

/// The throw-away process a user namespace was made with: told to end when this is created,
/// reaped when this is dropped — after the namespace was handed on, so its exit is off the
/// sandbox's start path.
#[derive(Debug)]
pub struct UsernsHelper {
    pidfd: OwnedFd,
}

impl Drop for UsernsHelper {
    fn drop(&mut self) {
        use std::os::fd::AsFd;
        let _ = rustix::process::waitid(
            rustix::process::WaitId::PidFd(self.pidfd.as_fd()),
            rustix::process::WaitIdOptions::EXITED,
        );
    }
}

/// Creates a user namespace mapping inside ids 0..`count` to host ids `base`.. and returns a
/// descriptor for it. A user namespace needs a process to be created and mapped, so a
/// throw-away child is cloned into one, mapped, referenced, and ended (reaped when the
/// returned [`UsernsHelper`] is dropped). The caller must be single-threaded (see
/// [`clone3_fork`]).
pub fn create_user_namespace(base: u32, count: u32) -> io::Result<(OwnedFd, UsernsHelper)> {
    let (wait_read, wait_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| io::Error::from_raw_os_error(e.raw_os_error()))?;
    match clone3_fork(flags::NEWUSER, None)? {
        Forked::Child => {
            let _abort = AbortOnPanic;
            // Wait until the parent has what it needs (the pipe closes), then vanish.
            drop(wait_write);
            let mut byte = [0u8; 1];
            let _ = rustix::io::read(&wait_read, &mut byte);
            exit_now(0)
        }
        Forked::Parent { pid, pidfd } => {
            drop(wait_read);
            let map = format!("0 {base} {count}\n");
            let result = std::fs::write(format!("/proc/{pid}/uid_map"), &map)
                .and_then(|()| std::fs::write(format!("/proc/{pid}/gid_map"), &map))
                .and_then(|()| {
                    rustix::fs::open(
                        format!("/proc/{pid}/ns/user").as_str(),
                        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
                        rustix::fs::Mode::empty(),
                    )
                    .map_err(|e| io::Error::from_raw_os_error(e.raw_os_error()))
                });
            // The helper ends now; the caller reaps it by dropping the helper handle.
            drop(wait_write);
            let helper = UsernsHelper { pidfd };
            result.map(|ns| (ns, helper))
        }
    }
}

/// CPU time (user + system, microseconds) of this process's reaped children and of the
/// children they reaped in turn (`getrusage(RUSAGE_CHILDREN)`).
pub fn children_cpu_usec() -> io::Result<u64> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `usage` is a valid, writable rusage; the kernel fills it in whole on success.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, usage.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: getrusage succeeded, so the struct is initialised (and it was zeroed before).
    let usage = unsafe { usage.assume_init() };
    let micros = |tv: libc::timeval| {
        u64::try_from(tv.tv_sec).unwrap_or(0) * 1_000_000 + u64::try_from(tv.tv_usec).unwrap_or(0)
    };
    Ok(micros(usage.ru_utime) + micros(usage.ru_stime))
}
