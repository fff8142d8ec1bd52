//! Real-kernel tests: install the compiled default filter in a forked child and attempt the
//! denied calls (no root needed). Each probe is also run in an unfiltered control child, with
//! arguments chosen so the kernel itself would answer differently (EFAULT, EBADF, EINVAL,
//! ESRCH, ...): that proves the filter, not the kernel or the host's configuration, produced
//! the errno. Probes that would have side effects on the host when unfiltered (autoloading
//! socket-family kernel modules) are not run in the control child.
//!
//! The children only make raw syscalls and write a fixed-size result array to a pipe, so
//! forking from the multi-threaded test harness is safe.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::time::{Duration, Instant};

use super::{BpfProgram, SeccompPolicy};
use crate::sys::seccomp::install_filter;

/// A syscall's raw outcome: the return value, or `-errno`.
type Outcome = libc::c_long;

fn outcome(ret: libc::c_long) -> Outcome {
    if ret == -1 {
        -i64::from(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        ret
    }
}

/// What the filtered child must see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Errno(libc::c_int),
    /// Any non-negative result.
    Success,
}

/// What the unfiltered control child shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Control {
    /// The kernel's own answer differs from the expected one for any user.
    Differs,
    /// Differs when run as root (unprivileged, the kernel may itself say EPERM).
    DiffersAsRoot,
    /// Not run unfiltered: it could autoload kernel modules on the host.
    NotRun,
}

#[derive(Clone, Copy)]
struct Probe {
    name: &'static str,
    run: fn(&Fds) -> Outcome,
    expect: Expect,
    control: Control,
}

/// File descriptors the probes use, opened in the child before the filter is installed.
struct Fds {
    /// Read end of a pipe: not a terminal, so unfiltered terminal ioctls fail with ENOTTY.
    pipe_read: libc::c_int,
    pipe_write: libc::c_int,
}

const NONEXISTENT_PID: libc::pid_t = 0x7fff_fff0;
const BAD_POINTER: usize = 1;
const TIOCSTI: u64 = 0x5412;
const TIOCLINUX: u64 = 0x541C;
const FIONREAD: u64 = 0x541B;

fn path(s: &'static CStr) -> u64 {
    s.as_ptr() as u64
}

fn my_pid() -> u64 {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() as u64 }
}

/// Raw syscall with six integer arguments.
fn sys(nr: libc::c_long, args: [u64; 6]) -> Outcome {
    // SAFETY: every probe passes either plain integers or pointers to static NUL-terminated
    // strings / invalid addresses the kernel validates (and rejects with EFAULT); no call
    // here writes to memory the test owns except as documented at the call site.
    outcome(unsafe { libc::syscall(nr, args[0], args[1], args[2], args[3], args[4], args[5]) })
}

/// Reaps `pid` if a probe unexpectedly created a process; 0 means "we are that child".
fn reap_or_exit(ret: Outcome) -> Outcome {
    if ret == 0 {
        // SAFETY: _exit is async-signal-safe and ends the accidental child immediately.
        unsafe { libc::_exit(0) }
    }
    if ret > 0 {
        let mut status = 0;
        // SAFETY: waits for the child this process just created; `status` is a valid out
        // pointer.
        unsafe { libc::waitpid(ret as libc::pid_t, &mut status, 0) };
    }
    ret
}

fn close_if_fd(ret: Outcome) -> Outcome {
    if ret >= 0 {
        // SAFETY: closes the descriptor the probe just created and nothing else uses.
        unsafe { libc::close(ret as libc::c_int) };
    }
    ret
}

const DENIAL_PROBES: &[Probe] = &[
    Probe {
        name: "clone(CLONE_NEWUSER|CLONE_FS|SIGCHLD)",
        // Unfiltered, the kernel rejects NEWUSER together with FS (EINVAL) before creating
        // anything.
        run: |_| {
            reap_or_exit(sys(
                libc::SYS_clone,
                [
                    (libc::CLONE_NEWUSER | libc::CLONE_FS | libc::SIGCHLD) as u64,
                    0,
                    0,
                    0,
                    0,
                    0,
                ],
            ))
        },
        expect: Expect::Errno(libc::EPERM),
        control: Control::Differs,
    },
    Probe {
        name: "clone3(NULL, 0)",
        run: |_| reap_or_exit(sys(libc::SYS_clone3, [0; 6])),
        expect: Expect::Errno(libc::ENOSYS),
        control: Control::Differs,
    },
    Probe {
        name: "mount(type = bad pointer)",
        // Unfiltered: EFAULT copying the type string, before any permission check.
        run: |_| {
            sys(
                libc::SYS_mount,
                [
                    path(c"none"),
                    path(c"/nonexistent-nsbox-probe"),
                    BAD_POINTER as u64,
                    0,
                    0,
                    0,
                ],
            )
        },
        expect: Expect::Errno(libc::EPERM),
        control: Control::Differs,
    },
    Probe {
        name: "umount2(invalid flags)",
        run: |_| {
            sys(
                libc::SYS_umount2,
                [path(c"/nonexistent-nsbox-probe"), 0x8000_0000, 0, 0, 0, 0],
            )
        },
        expect: Expect::Errno(libc::EPERM),
        control: Control::Differs,
    },
    Probe {
        name: "chroot(nonexistent)",
        run: |_| {
            sys(
                libc::SYS_chroot,
                [path(c"/nonexistent-nsbox-probe"), 0, 0, 0, 0, 0],
            )
        },
        expect: Expect::Errno(libc::EPERM),
        control: Control::Differs,
    },
    Probe {
        name: "setns(-1, 0)",
        run: |_| sys(libc::SYS_setns, [u64::MAX, 0, 0, 0, 0, 0]),
        expect: Expect::Errno(libc::EPERM),
        control: Control::Differs,
    },
    Probe {
        name: "bpf(invalid command)",
        run: |_| sys(libc::SYS_bpf, [0xffff, 0, 0, 0, 0, 0]),
        expect: Expect::Errno(libc::EPERM),
        control: Control::DiffersAsRoot,
    },
    Probe {
        name: "perf_event_open(NULL attr)",
        run: |_| sys(libc::SYS_perf_event_open, [0, 0, u64::MAX, u64::MAX, 0, 0]),
        expect: Expect::Errno(libc::EPERM),
        control: Control::Differs,
    },
    Probe {
        name: "keyctl(invalid operation)",
        run: |_| sys(libc::SYS_keyctl, [0xffff, 0, 0, 0, 0, 0]),
        expect: Expect::Errno(libc::EPERM),
        control: Control::Differs,
    },
    Probe {
        name: "add_key(type = bad pointer)",
        run: |_| sys(libc::SYS_add_key, [BAD_POINTER as u64, 0, 0, 0, 0, 0]),
        expect: Expect::Errno(libc::EPERM),
        control: Control::Differs,
    },
    Probe {
        name: "request_key(type = bad pointer)",
        run: |_| sys(libc::SYS_request_key, [BAD_POINTER as u64, 0, 0, 0, 0, 0]),
        expect: Expect::Errno(libc::EPERM),
        control: Control::Differs,
    },
    Probe {
        name: "userfaultfd(invalid flags)",
        run: |_| close_if_fd(sys(libc::SYS_userfaultfd, [0xffff_0000, 0, 0, 0, 0, 0])),
        expect: Expect::Errno(libc::EPERM),
        control: Control::DiffersAsRoot,
    },
    Probe {
        name: "io_uring_setup(0, NULL)",
        run: |_| close_if_fd(sys(libc::SYS_io_uring_setup, [0; 6])),
        expect: Expect::Errno(libc::EPERM),
        // Differs unless the host sets kernel.io_uring_disabled=2.
        control: Control::DiffersAsRoot,
    },
    Probe {
        name: "ptrace(PTRACE_ATTACH, nonexistent pid)",
        run: |_| {
            sys(
                libc::SYS_ptrace,
                [
                    libc::PTRACE_ATTACH as u64,
                    NONEXISTENT_PID as u64,
                    0,
                    0,
                    0,
                    0,
                ],
            )
        },
        expect: Expect::Errno(libc::EPERM),
        control: Control::Differs,
    },
    Probe {
        name: "process_vm_readv(invalid flags)",
        run: |_| sys(libc::SYS_process_vm_readv, [my_pid(), 0, 0, 0, 0, 1]),
        expect: Expect::Errno(libc::EPERM),
        control: Control::Differs,
    },
    Probe {
        name: "pidfd_getfd(-1)",
        run: |_| sys(libc::SYS_pidfd_getfd, [u64::MAX, 0, 0, 0, 0, 0]),
        expect: Expect::Errno(libc::EPERM),
        control: Control::Differs,
    },
    Probe {
        name: "open_by_handle_at(-1, NULL)",
        run: |_| close_if_fd(sys(libc::SYS_open_by_handle_at, [u64::MAX, 0, 0, 0, 0, 0])),
        expect: Expect::Errno(libc::EPERM),
        control: Control::DiffersAsRoot,
    },
    Probe {
        name: "socket(AF_ALG)",
        run: |_| {
            close_if_fd(sys(
                libc::SYS_socket,
                [libc::AF_ALG as u64, libc::SOCK_SEQPACKET as u64, 0, 0, 0, 0],
            ))
        },
        expect: Expect::Errno(libc::EPERM),
        control: Control::NotRun,
    },
    Probe {
        name: "socket(AF_VSOCK)",
        run: |_| {
            close_if_fd(sys(
                libc::SYS_socket,
                [libc::AF_VSOCK as u64, libc::SOCK_STREAM as u64, 0, 0, 0, 0],
            ))
        },
        expect: Expect::Errno(libc::EPERM),
        control: Control::NotRun,
    },
    Probe {
        name: "socket(AF_PACKET)",
        run: |_| {
            close_if_fd(sys(
                libc::SYS_socket,
                [libc::AF_PACKET as u64, libc::SOCK_RAW as u64, 0, 0, 0, 0],
            ))
        },
        expect: Expect::Errno(libc::EPERM),
        control: Control::NotRun,
    },
    Probe {
        name: "socket(AF_NETLINK, NETLINK_NETFILTER)",
        run: |_| {
            close_if_fd(sys(
                libc::SYS_socket,
                [
                    libc::AF_NETLINK as u64,
                    libc::SOCK_RAW as u64,
                    libc::NETLINK_NETFILTER as u64,
                    0,
                    0,
                    0,
                ],
            ))
        },
        expect: Expect::Errno(libc::EPERM),
        control: Control::NotRun,
    },
    Probe {
        name: "socketpair(AF_ALG)",
        run: |_| {
            sys(
                libc::SYS_socketpair,
                [libc::AF_ALG as u64, libc::SOCK_SEQPACKET as u64, 0, 0, 0, 0],
            )
        },
        expect: Expect::Errno(libc::EPERM),
        control: Control::NotRun,
    },
    Probe {
        name: "ioctl(TIOCSTI)",
        // On a pipe the kernel would answer ENOTTY.
        run: |fds| {
            sys(
                libc::SYS_ioctl,
                [fds.pipe_read as u64, TIOCSTI, path(c"x"), 0, 0, 0],
            )
        },
        expect: Expect::Errno(libc::EPERM),
        control: Control::Differs,
    },
    Probe {
        name: "ioctl(TIOCSTI | high bits)",
        run: |fds| {
            sys(
                libc::SYS_ioctl,
                [
                    fds.pipe_read as u64,
                    0xdead_beef_0000_0000 | TIOCSTI,
                    path(c"x"),
                    0,
                    0,
                    0,
                ],
            )
        },
        expect: Expect::Errno(libc::EPERM),
        control: Control::Differs,
    },
    Probe {
        name: "ioctl(TIOCLINUX)",
        run: |fds| {
            sys(
                libc::SYS_ioctl,
                [fds.pipe_read as u64, TIOCLINUX, path(c"x"), 0, 0, 0],
            )
        },
        expect: Expect::Errno(libc::EPERM),
        control: Control::Differs,
    },
    Probe {
        name: "syslog(SYSLOG_ACTION_SIZE_BUFFER)",
        run: |_| sys(libc::SYS_syslog, [10, 0, 0, 0, 0, 0]),
        expect: Expect::Errno(libc::EPERM),
        control: Control::DiffersAsRoot,
    },
    Probe {
        name: "personality(ADDR_NO_RANDOMIZE)",
        run: |_| sys(libc::SYS_personality, [0x0040000, 0, 0, 0, 0, 0]),
        expect: Expect::Errno(libc::EPERM),
        control: Control::Differs,
    },
    // Last: unfiltered, it moves the control child into a new user namespace.
    Probe {
        name: "unshare(CLONE_NEWUSER)",
        run: |_| {
            sys(
                libc::SYS_unshare,
                [libc::CLONE_NEWUSER as u64, 0, 0, 0, 0, 0],
            )
        },
        expect: Expect::Errno(libc::EPERM),
        control: Control::DiffersAsRoot,
    },
];

extern "C" fn thread_main(arg: *mut libc::c_void) -> *mut libc::c_void {
    arg
}

const ORDINARY_WORK: &[Probe] = &[
    Probe {
        name: "open/read /proc/self/stat",
        run: |_| {
            let fd = sys(
                libc::SYS_openat,
                [
                    libc::AT_FDCWD as u64,
                    path(c"/proc/self/stat"),
                    libc::O_RDONLY as u64,
                    0,
                    0,
                    0,
                ],
            );
            if fd < 0 {
                return fd;
            }
            let mut buf = [0u8; 64];
            let n = sys(
                libc::SYS_read,
                [
                    fd as u64,
                    buf.as_mut_ptr() as u64,
                    buf.len() as u64,
                    0,
                    0,
                    0,
                ],
            );
            close_if_fd(fd);
            if n > 0 {
                0
            } else {
                n.min(-1)
            }
        },
        expect: Expect::Success,
        control: Control::Differs,
    },
    Probe {
        name: "write to a pipe",
        run: |fds| {
            sys(
                libc::SYS_write,
                [fds.pipe_write as u64, path(c"ok"), 2, 0, 0, 0],
            )
        },
        expect: Expect::Success,
        control: Control::Differs,
    },
    Probe {
        name: "fork",
        run: |_| {
            // SAFETY: the child only calls _exit.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                // SAFETY: async-signal-safe exit of the forked child.
                unsafe { libc::_exit(7) }
            }
            wait_for_exit_code(pid, 7)
        },
        expect: Expect::Success,
        control: Control::Differs,
    },
    Probe {
        name: "clone(SIGCHLD) without namespace flags",
        run: |_| {
            let pid = sys(libc::SYS_clone, [libc::SIGCHLD as u64, 0, 0, 0, 0, 0]);
            if pid == 0 {
                // SAFETY: async-signal-safe exit of the cloned child.
                unsafe { libc::_exit(9) }
            }
            if pid < 0 {
                return pid;
            }
            wait_for_exit_code(pid as libc::pid_t, 9)
        },
        expect: Expect::Success,
        control: Control::Differs,
    },
    Probe {
        name: "pthread_create + join (glibc tries clone3, falls back to clone; musl uses clone)",
        run: |_| {
            // pthread_t is an integer on glibc and a pointer on musl.
            let mut thread = std::mem::MaybeUninit::<libc::pthread_t>::uninit();
            let token = 0x5eed_usize as *mut libc::c_void;
            // SAFETY: `thread` is a valid out pointer, default attributes, and `thread_main`
            // only returns its argument.
            let rc = unsafe {
                libc::pthread_create(thread.as_mut_ptr(), std::ptr::null(), thread_main, token)
            };
            if rc != 0 {
                return -i64::from(rc);
            }
            // SAFETY: pthread_create succeeded, so it stored the thread's id.
            let thread = unsafe { thread.assume_init() };
            let mut result: *mut libc::c_void = std::ptr::null_mut();
            // SAFETY: joins the thread created above exactly once.
            let rc = unsafe { libc::pthread_join(thread, &mut result) };
            if rc != 0 {
                return -i64::from(rc);
            }
            if result == token {
                0
            } else {
                -1
            }
        },
        expect: Expect::Success,
        control: Control::Differs,
    },
    Probe {
        name: "socket(AF_INET, SOCK_STREAM)",
        run: |_| {
            close_if_fd(sys(
                libc::SYS_socket,
                [libc::AF_INET as u64, libc::SOCK_STREAM as u64, 0, 0, 0, 0],
            ))
        },
        expect: Expect::Success,
        control: Control::Differs,
    },
    Probe {
        name: "socket(AF_INET6, SOCK_DGRAM)",
        run: |_| {
            close_if_fd(sys(
                libc::SYS_socket,
                [libc::AF_INET6 as u64, libc::SOCK_DGRAM as u64, 0, 0, 0, 0],
            ))
        },
        expect: Expect::Success,
        control: Control::Differs,
    },
    Probe {
        name: "socket(AF_NETLINK, NETLINK_ROUTE)",
        run: |_| {
            close_if_fd(sys(
                libc::SYS_socket,
                [libc::AF_NETLINK as u64, libc::SOCK_RAW as u64, 0, 0, 0, 0],
            ))
        },
        expect: Expect::Success,
        control: Control::Differs,
    },
    Probe {
        name: "socketpair(AF_UNIX)",
        run: |_| {
            let mut pair = [0 as libc::c_int; 2];
            let rc = sys(
                libc::SYS_socketpair,
                [
                    libc::AF_UNIX as u64,
                    libc::SOCK_STREAM as u64,
                    0,
                    pair.as_mut_ptr() as u64,
                    0,
                    0,
                ],
            );
            if rc == 0 {
                close_if_fd(i64::from(pair[0]));
                close_if_fd(i64::from(pair[1]));
            }
            rc
        },
        expect: Expect::Success,
        control: Control::Differs,
    },
    Probe {
        name: "ioctl(FIONREAD) on a pipe",
        run: |fds| {
            let mut available: libc::c_int = 0;
            sys(
                libc::SYS_ioctl,
                [
                    fds.pipe_read as u64,
                    FIONREAD,
                    &mut available as *mut libc::c_int as u64,
                    0,
                    0,
                    0,
                ],
            )
        },
        expect: Expect::Success,
        control: Control::Differs,
    },
    Probe {
        name: "personality(query)",
        run: |_| sys(libc::SYS_personality, [0xffff_ffff, 0, 0, 0, 0, 0]),
        expect: Expect::Success,
        control: Control::Differs,
    },
    Probe {
        name: "unshare(CLONE_FS)",
        run: |_| sys(libc::SYS_unshare, [libc::CLONE_FS as u64, 0, 0, 0, 0, 0]),
        expect: Expect::Success,
        control: Control::Differs,
    },
];

/// 0 if `pid` exited with `code`, a negative value otherwise.
fn wait_for_exit_code(pid: libc::pid_t, code: libc::c_int) -> Outcome {
    if pid < 0 {
        return outcome(-1);
    }
    let mut status = 0;
    // SAFETY: waits for our own child; `status` is a valid out pointer.
    let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
    if rc != pid {
        return outcome(-1);
    }
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == code {
        0
    } else {
        -1000 - i64::from(status)
    }
}

/// How a child ended.
#[derive(Debug)]
struct ChildReport {
    outcomes: Vec<Outcome>,
    /// Raw wait status.
    status: libc::c_int,
}

impl ChildReport {
    fn killed_by(&self) -> Option<libc::c_int> {
        libc::WIFSIGNALED(self.status).then(|| libc::WTERMSIG(self.status))
    }
}

const MAX_PROBES: usize = 64;

/// Forks; the child installs `filter` (if any) after PR_SET_NO_NEW_PRIVS, runs `probes`, and
/// reports each outcome through a pipe.
fn run_in_child(filter: Option<&BpfProgram>, probes: &[Probe]) -> ChildReport {
    assert!(probes.len() <= MAX_PROBES);
    let mut report_pipe = [0 as libc::c_int; 2];
    let mut probe_pipe = [0 as libc::c_int; 2];
    // SAFETY: valid out arrays of two descriptors.
    unsafe {
        assert_eq!(libc::pipe2(report_pipe.as_mut_ptr(), libc::O_CLOEXEC), 0);
        assert_eq!(libc::pipe2(probe_pipe.as_mut_ptr(), libc::O_CLOEXEC), 0);
    }
    // SAFETY: the child below only makes raw syscalls (no allocation, no locks the parent's
    // other threads may hold) and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: closing our copy of the read end; the child never returns from this block.
        unsafe { libc::close(report_pipe[0]) };
        if let Some(filter) = filter {
            // SAFETY: plain prctl with integer arguments.
            if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
                // SAFETY: async-signal-safe exit.
                unsafe { libc::_exit(101) }
            }
            if install_filter(filter).is_err() {
                // SAFETY: async-signal-safe exit.
                unsafe { libc::_exit(102) }
            }
        }
        let fds = Fds {
            pipe_read: probe_pipe[0],
            pipe_write: probe_pipe[1],
        };
        let mut outcomes = [0i64; MAX_PROBES];
        for (slot, probe) in outcomes.iter_mut().zip(probes) {
            *slot = (probe.run)(&fds);
        }
        let bytes = probes.len() * std::mem::size_of::<Outcome>();
        // SAFETY: writes `bytes` bytes from the outcomes array, which is at least that long.
        let written = unsafe { libc::write(report_pipe[1], outcomes.as_ptr().cast(), bytes) };
        let code = if written == bytes as isize { 0 } else { 103 };
        // SAFETY: async-signal-safe exit.
        unsafe { libc::_exit(code) }
    }

    // SAFETY: closing the parent's copies of descriptors only the child uses.
    unsafe {
        libc::close(report_pipe[1]);
        libc::close(probe_pipe[0]);
        libc::close(probe_pipe[1]);
    }
    let raw = read_with_timeout(report_pipe[0], Duration::from_secs(30));
    // SAFETY: closing our read end.
    unsafe { libc::close(report_pipe[0]) };
    let mut status = 0;
    // SAFETY: waits for the child forked above; `status` is a valid out pointer.
    let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(waited, pid, "waitpid");
    let outcomes = raw
        .chunks_exact(std::mem::size_of::<Outcome>())
        .map(|chunk| Outcome::from_ne_bytes(chunk.try_into().expect("8 bytes")))
        .collect();
    ChildReport { outcomes, status }
}

fn read_with_timeout(fd: libc::c_int, timeout: Duration) -> Vec<u8> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "child did not report within {timeout:?}");
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let millis = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut pfd, 1, millis) };
        if ready <= 0 {
            continue;
        }
        let mut buf = [0u8; 1024];
        // SAFETY: reads into a local buffer of the given length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            return out;
        }
        out.extend_from_slice(&buf[..n as usize]);
    }
}

fn default_filter() -> BpfProgram {
    SeccompPolicy::builtin("default")
        .and_then(|p| p.compile())
        .expect("default profile compiles")
}

fn describe_outcome(o: Outcome) -> String {
    if o < 0 {
        format!("{o} ({})", std::io::Error::from_raw_os_error((-o) as i32))
    } else {
        format!("{o} (success)")
    }
}

fn matches(expect: Expect, o: Outcome) -> bool {
    match expect {
        Expect::Errno(e) => o == -i64::from(e),
        Expect::Success => o >= 0,
    }
}

fn is_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn check_probes(probes: &[Probe]) {
    let filter = default_filter();
    let filtered = run_in_child(Some(&filter), probes);
    assert!(
        libc::WIFEXITED(filtered.status) && libc::WEXITSTATUS(filtered.status) == 0,
        "filtered child failed: status {:#x} (101: no_new_privs, 102: install_filter, signal {:?})",
        filtered.status,
        filtered.killed_by()
    );
    assert_eq!(
        filtered.outcomes.len(),
        probes.len(),
        "filtered child reported all probes"
    );

    let control_list: Vec<Probe> = probes
        .iter()
        .copied()
        .filter(|p| p.control != Control::NotRun)
        .collect();
    let control = run_in_child(None, &control_list);
    assert_eq!(
        control.outcomes.len(),
        control_list.len(),
        "control child reported all probes: {control:?}"
    );

    let mut failures = Vec::new();
    for (probe, &got) in probes.iter().zip(&filtered.outcomes) {
        if !matches(probe.expect, got) {
            failures.push(format!(
                "{}: filtered got {}, expected {:?}",
                probe.name,
                describe_outcome(got),
                probe.expect
            ));
        }
    }
    for (probe, &unfiltered) in control_list.iter().zip(&control.outcomes) {
        let must_differ = match probe.control {
            Control::Differs => true,
            Control::DiffersAsRoot => is_root(),
            Control::NotRun => false,
        };
        let same = matches(probe.expect, unfiltered);
        let proves = match probe.expect {
            // For denials the kernel's own answer must be something else.
            Expect::Errno(_) => !same,
            // Ordinary work must also succeed without the filter (sanity of the probe).
            Expect::Success => same,
        };
        if must_differ && !proves {
            failures.push(format!(
                "{}: unfiltered control got {} — the probe does not show the filter's effect",
                probe.name,
                describe_outcome(unfiltered)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn denied_calls_fail_with_the_expected_errno_under_the_real_filter() {
    check_probes(DENIAL_PROBES);
}

#[test]
fn ordinary_work_succeeds_under_the_real_filter() {
    check_probes(ORDINARY_WORK);
}

#[test]
fn filter_requires_no_new_privs_when_unprivileged() {
    // Sanity of the install path: without no_new_privs an unprivileged process is refused
    // (root has CAP_SYS_ADMIN and is allowed). Runs the install in a child either way.
    let filter = default_filter();
    // SAFETY: the child only calls install_filter (no allocation) and _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let code = match install_filter(&filter) {
            Ok(()) => 0,
            Err(e) if e.raw_os_error() == Some(libc::EACCES) => 1,
            Err(_) => 2,
        };
        // SAFETY: async-signal-safe exit.
        unsafe { libc::_exit(code) }
    }
    let mut status = 0;
    // SAFETY: waits for the child above.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(libc::WIFEXITED(status));
    let expected = if is_root() { 0 } else { 1 };
    assert_eq!(libc::WEXITSTATUS(status), expected);
}

/// A syscall through the x32 ABI number space kills the process (SIGSYS).
#[cfg(target_arch = "x86_64")]
#[test]
fn x32_syscall_kills_the_process() {
    const PROBE: &[Probe] = &[Probe {
        name: "x32 getpid",
        run: |_| sys(0x4000_0000 | libc::SYS_getpid, [0; 6]),
        expect: Expect::Success,
        control: Control::NotRun,
    }];
    let report = run_in_child(Some(&default_filter()), PROBE);
    assert_eq!(
        report.killed_by(),
        Some(libc::SIGSYS),
        "status {:#x}",
        report.status
    );
}

/// The 32-bit `int 0x80` entry (arch AUDIT_ARCH_I386, where 102 is socketcall) kills the
/// process. Skipped with a message when the kernel has no IA-32 emulation.
#[cfg(target_arch = "x86_64")]
#[test]
fn i386_int80_syscall_kills_the_process() {
    fn int80_getpid(_: &Fds) -> Outcome {
        let ret: i32;
        // SAFETY: i386 syscall 20 (getpid) through the compat entry; it takes no arguments
        // and touches no memory. The kernel may clobber r8–r11 on this path.
        unsafe {
            std::arch::asm!(
                "int 0x80",
                inlateout("eax") 20i32 => ret,
                lateout("r8") _, lateout("r9") _, lateout("r10") _, lateout("r11") _,
                options(nostack)
            );
        }
        i64::from(ret)
    }
    const PROBE: &[Probe] = &[Probe {
        name: "int 0x80 getpid",
        run: int80_getpid,
        expect: Expect::Success,
        control: Control::Differs,
    }];
    let control = run_in_child(None, PROBE);
    if control.killed_by().is_some() || control.outcomes.first().is_none_or(|&o| o <= 0) {
        eprintln!("SKIP: this kernel has no IA-32 emulation (control: {control:?})");
        return;
    }
    let report = run_in_child(Some(&default_filter()), PROBE);
    assert_eq!(
        report.killed_by(),
        Some(libc::SIGSYS),
        "status {:#x}",
        report.status
    );
}

/// Forks a child that sets no_new_privs and installs `filter`; returns how long the
/// `seccomp(SECCOMP_SET_MODE_FILTER)` call took, in nanoseconds.
fn time_install_in_child(filter: &BpfProgram) -> u64 {
    let mut pipe = [0 as libc::c_int; 2];
    // SAFETY: a valid out array of two descriptors.
    let rc = unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2");
    // SAFETY: the child only makes raw syscalls (install_filter does not allocate) and leaves
    // with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let now = || {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: a valid out pointer; clock_gettime is async-signal-safe.
            unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
            ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
        };
        // SAFETY: plain prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            // SAFETY: async-signal-safe exit.
            unsafe { libc::_exit(101) }
        }
        let start = now();
        let installed = install_filter(filter).is_ok();
        let elapsed = now() - start;
        let code = if installed { 0 } else { 102 };
        // SAFETY: writes the 8 bytes of a local u64.
        unsafe { libc::write(pipe[1], (&elapsed as *const u64).cast(), 8) };
        // SAFETY: async-signal-safe exit.
        unsafe { libc::_exit(code) }
    }
    // SAFETY: closing the parent's copy of the write end.
    unsafe { libc::close(pipe[1]) };
    let raw = read_with_timeout(pipe[0], Duration::from_secs(30));
    // SAFETY: closing our read end.
    unsafe { libc::close(pipe[0]) };
    let mut status = 0;
    // SAFETY: waits for the child forked above; `status` is a valid out pointer.
    let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(waited, pid, "waitpid");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child status {status:#x} (101: no_new_privs, 102: install_filter)"
    );
    u64::from_ne_bytes(raw.as_slice().try_into().expect("8 bytes"))
}

/// Path lengths of `filter` as the test interpreter counts them, with all arguments zero.
fn describe_paths(filter: &BpfProgram) -> String {
    use super::bpf_interpreter::{trace, SeccompData};
    use super::syscalls;
    let table = syscalls::native_table();
    let highest = table.iter().map(|&(_, nr)| nr).max().unwrap_or(0);
    let dispatch =
        |nr: u32| trace(filter.instructions(), &SeccompData::native(nr, [0; 6])).dispatch;
    let listed: Vec<usize> = table.iter().map(|&(_, nr)| dispatch(nr)).collect();
    let all: Vec<usize> = (0..=highest).map(dispatch).collect();
    let worst = (0..=1100).map(dispatch).max().unwrap_or(0);
    let mean = |v: &[usize]| v.iter().sum::<usize>() as f64 / v.len() as f64;
    format!(
        "{} instructions; dispatch path (instructions before the first argument load): \
         worst {worst} over 0..=1100, mean {:.1} over the {} named syscalls, \
         mean {:.1} over 0..={highest} (what the kernel's cache emulates)",
        filter.len(),
        mean(&listed),
        listed.len(),
        mean(&all),
    )
}

/// Not a check: prints what installing the default filter costs on this kernel, next to a
/// trivial filter. Run in release mode:
/// `cargo test --release --lib install_cost -- --ignored --nocapture`.
#[test]
#[ignore = "measurement; run with --ignored --nocapture in release mode"]
fn install_cost_of_the_default_filter() {
    const RUNS: usize = 300;
    let trivial = SeccompPolicy::parse("default_action = \"allow\"\n", "trivial")
        .and_then(|p| p.compile())
        .expect("trivial profile compiles");
    let default = default_filter();
    let mut times = [Vec::with_capacity(RUNS), Vec::with_capacity(RUNS)];
    // Interleaved so that noise from other work on the machine hits both alike.
    for _ in 0..RUNS {
        times[0].push(time_install_in_child(&trivial));
        times[1].push(time_install_in_child(&default));
    }
    for ((name, filter), times) in [("trivial", &trivial), ("default", &default)]
        .into_iter()
        .zip(&mut times)
    {
        times.sort_unstable();
        let us = |ns: u64| ns as f64 / 1000.0;
        eprintln!(
            "{name}: install median {:.1} µs (min {:.1}, p90 {:.1}) over {RUNS} runs; {}",
            us(times[RUNS / 2]),
            us(times[0]),
            us(times[RUNS * 9 / 10]),
            describe_paths(filter)
        );
    }
}
