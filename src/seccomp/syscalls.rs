//! Syscall names and numbers for the architectures nsbox compiles filters for.
//!
//! Owns: the name → number table used to resolve profile names, and which architectures know
//! which names (so a profile can be checked for portability on any build machine).
//! Must not: guess. A name that is not in this table is an error in the profile, and numbers
//! come from `libc::SYS_*` except for the few the pinned libc lacks (see [`nr`]).

use libc::c_long;

/// An architecture nsbox can build a seccomp filter for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Arch {
    X86_64,
    Aarch64,
}

/// `AUDIT_ARCH_*` values from `<linux/audit.h>` (libc does not export them): the ELF machine
/// number with the 64-bit and little-endian flags set.
const AUDIT_ARCH_64BIT: u32 = 0x8000_0000;
const AUDIT_ARCH_LE: u32 = 0x4000_0000;
const EM_X86_64: u32 = 62;
const EM_AARCH64: u32 = 183;

impl Arch {
    /// Every supported architecture, for portability checks of profiles.
    #[cfg(test)]
    pub(crate) const ALL: [Arch; 2] = [Arch::X86_64, Arch::Aarch64];

    /// The architecture this binary runs on, if nsbox supports it.
    pub(crate) fn native() -> Option<Arch> {
        if cfg!(target_arch = "x86_64") {
            Some(Arch::X86_64)
        } else if cfg!(target_arch = "aarch64") {
            Some(Arch::Aarch64)
        } else {
            None
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    /// The value the kernel puts in `seccomp_data.arch` for native syscalls.
    pub(crate) fn audit_arch(self) -> u32 {
        match self {
            Arch::X86_64 => EM_X86_64 | AUDIT_ARCH_64BIT | AUDIT_ARCH_LE,
            Arch::Aarch64 => EM_AARCH64 | AUDIT_ARCH_64BIT | AUDIT_ARCH_LE,
        }
    }
}

/// Syscall numbers: everything from `libc`, plus the numbers libc 0.2.191 lacks for an
/// architecture. Local items shadow the glob import, so if libc later gains one of these the
/// local value (checked against the kernel's tables) still wins and must agree.
/// Sources: arch/x86/entry/syscalls/syscall_64.tbl and scripts/syscall.tbl (Linux 6.18).
#[allow(non_upper_case_globals, dead_code)]
mod nr {
    use libc::c_long;
    pub(super) use libc::*;

    // Missing from libc's gnu (or musl) aarch64 module although arm64 has them
    // (arm64 builds the generic table with the renameat and rlimit ABIs).
    #[cfg(target_arch = "aarch64")]
    pub(super) const SYS_renameat: c_long = 38;
    #[cfg(target_arch = "aarch64")]
    pub(super) const SYS_sync_file_range: c_long = 84;
    #[cfg(target_arch = "aarch64")]
    pub(super) const SYS_getrlimit: c_long = 163;
    #[cfg(target_arch = "aarch64")]
    pub(super) const SYS_setrlimit: c_long = 164;
    #[cfg(target_arch = "aarch64")]
    pub(super) const SYS_io_pgetevents: c_long = 292;
    #[cfg(target_arch = "aarch64")]
    pub(super) const SYS_kexec_file_load: c_long = 294;
    #[cfg(target_arch = "aarch64")]
    pub(super) const SYS_fchmodat2: c_long = 452;

    #[cfg(target_arch = "x86_64")]
    pub(super) const SYS_io_pgetevents: c_long = 333;

    // Added after libc 0.2.191's tables; numbered identically on x86_64 and arm64 (the
    // unified numbering that starts at 424).
    pub(super) const SYS_cachestat: c_long = 451;
    pub(super) const SYS_map_shadow_stack: c_long = 453;
    pub(super) const SYS_futex_wake: c_long = 454;
    pub(super) const SYS_futex_wait: c_long = 455;
    pub(super) const SYS_futex_requeue: c_long = 456;
    pub(super) const SYS_statmount: c_long = 457;
    pub(super) const SYS_listmount: c_long = 458;
    pub(super) const SYS_lsm_get_self_attr: c_long = 459;
    pub(super) const SYS_lsm_set_self_attr: c_long = 460;
    pub(super) const SYS_lsm_list_modules: c_long = 461;
    pub(super) const SYS_setxattrat: c_long = 463;
    pub(super) const SYS_getxattrat: c_long = 464;
    pub(super) const SYS_listxattrat: c_long = 465;
    pub(super) const SYS_removexattrat: c_long = 466;
    pub(super) const SYS_open_tree_attr: c_long = 467;
    pub(super) const SYS_file_getattr: c_long = 468;
    pub(super) const SYS_file_setattr: c_long = 469;
}

/// Builds the two tables below from lists of `SYS_*` identifiers. Each list must be sorted by
/// name (a test checks it) so lookups can binary-search. Numbers are only compiled in for the
/// architectures that have the syscall; elsewhere the entry carries `None`, so the names are
/// still known for portability checks.
macro_rules! syscall_table {
    (
        common: [$($common:ident),* $(,)?],
        x86_64_only: [$($x86:ident),* $(,)?] $(,)?
    ) => {
        /// Syscalls that exist on x86_64 and aarch64.
        #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
        static COMMON: &[(&str, Option<c_long>)] = &[$((stringify!($common), Some(nr::$common))),*];
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        static COMMON: &[(&str, Option<c_long>)] = &[$((stringify!($common), None)),*];

        /// Legacy syscalls only x86_64 has (aarch64 uses the `*at` and newer forms).
        #[cfg(target_arch = "x86_64")]
        static X86_64_ONLY: &[(&str, Option<c_long>)] = &[$((stringify!($x86), Some(nr::$x86))),*];
        #[cfg(not(target_arch = "x86_64"))]
        static X86_64_ONLY: &[(&str, Option<c_long>)] = &[$((stringify!($x86), None)),*];
    };
}

syscall_table! {
    common: [
        SYS_accept, SYS_accept4, SYS_acct, SYS_add_key, SYS_adjtimex, SYS_bind, SYS_bpf, SYS_brk,
        SYS_cachestat, SYS_capget, SYS_capset, SYS_chdir, SYS_chroot, SYS_clock_adjtime,
        SYS_clock_getres, SYS_clock_gettime, SYS_clock_nanosleep, SYS_clock_settime, SYS_clone,
        SYS_clone3, SYS_close, SYS_close_range, SYS_connect, SYS_copy_file_range,
        SYS_delete_module, SYS_dup, SYS_dup3, SYS_epoll_create1, SYS_epoll_ctl, SYS_epoll_pwait,
        SYS_epoll_pwait2, SYS_eventfd2, SYS_execve, SYS_execveat, SYS_exit, SYS_exit_group,
        SYS_faccessat, SYS_faccessat2, SYS_fadvise64, SYS_fallocate, SYS_fanotify_init,
        SYS_fanotify_mark, SYS_fchdir, SYS_fchmod, SYS_fchmodat, SYS_fchmodat2, SYS_fchown,
        SYS_fchownat, SYS_fcntl, SYS_fdatasync, SYS_fgetxattr, SYS_file_getattr, SYS_file_setattr,
        SYS_finit_module, SYS_flistxattr, SYS_flock, SYS_fremovexattr, SYS_fsconfig, SYS_fsetxattr,
        SYS_fsmount, SYS_fsopen, SYS_fspick, SYS_fstat, SYS_fstatfs, SYS_fsync, SYS_ftruncate,
        SYS_futex, SYS_futex_requeue, SYS_futex_wait, SYS_futex_waitv, SYS_futex_wake,
        SYS_get_mempolicy, SYS_get_robust_list, SYS_getcpu, SYS_getcwd, SYS_getdents64,
        SYS_getegid, SYS_geteuid, SYS_getgid, SYS_getgroups, SYS_getitimer, SYS_getpeername,
        SYS_getpgid, SYS_getpid, SYS_getppid, SYS_getpriority, SYS_getrandom, SYS_getresgid,
        SYS_getresuid, SYS_getrlimit, SYS_getrusage, SYS_getsid, SYS_getsockname, SYS_getsockopt,
        SYS_gettid, SYS_gettimeofday, SYS_getuid, SYS_getxattr, SYS_getxattrat, SYS_init_module,
        SYS_inotify_add_watch, SYS_inotify_init1, SYS_inotify_rm_watch, SYS_io_cancel,
        SYS_io_destroy, SYS_io_getevents, SYS_io_pgetevents, SYS_io_setup, SYS_io_submit,
        SYS_io_uring_enter, SYS_io_uring_register, SYS_io_uring_setup, SYS_ioctl, SYS_ioprio_get,
        SYS_ioprio_set, SYS_kcmp, SYS_kexec_file_load, SYS_kexec_load, SYS_keyctl, SYS_kill,
        SYS_landlock_add_rule, SYS_landlock_create_ruleset, SYS_landlock_restrict_self,
        SYS_lgetxattr, SYS_linkat, SYS_listen, SYS_listmount, SYS_listxattr, SYS_listxattrat,
        SYS_llistxattr, SYS_lookup_dcookie, SYS_lremovexattr, SYS_lseek, SYS_lsetxattr,
        SYS_lsm_get_self_attr, SYS_lsm_list_modules, SYS_lsm_set_self_attr, SYS_madvise,
        SYS_map_shadow_stack, SYS_mbind, SYS_membarrier, SYS_memfd_create, SYS_memfd_secret,
        SYS_migrate_pages, SYS_mincore, SYS_mkdirat, SYS_mknodat, SYS_mlock, SYS_mlock2,
        SYS_mlockall, SYS_mmap, SYS_mount, SYS_mount_setattr, SYS_move_mount, SYS_move_pages,
        SYS_mprotect, SYS_mq_getsetattr, SYS_mq_notify, SYS_mq_open, SYS_mq_timedreceive,
        SYS_mq_timedsend, SYS_mq_unlink, SYS_mremap, SYS_mseal, SYS_msgctl, SYS_msgget, SYS_msgrcv,
        SYS_msgsnd, SYS_msync, SYS_munlock, SYS_munlockall, SYS_munmap, SYS_name_to_handle_at,
        SYS_nanosleep, SYS_newfstatat, SYS_nfsservctl, SYS_open_by_handle_at, SYS_open_tree,
        SYS_open_tree_attr, SYS_openat, SYS_openat2, SYS_perf_event_open, SYS_personality,
        SYS_pidfd_getfd, SYS_pidfd_open, SYS_pidfd_send_signal, SYS_pipe2, SYS_pivot_root,
        SYS_pkey_alloc, SYS_pkey_free, SYS_pkey_mprotect, SYS_ppoll, SYS_prctl, SYS_pread64,
        SYS_preadv, SYS_preadv2, SYS_prlimit64, SYS_process_madvise, SYS_process_mrelease,
        SYS_process_vm_readv, SYS_process_vm_writev, SYS_pselect6, SYS_ptrace, SYS_pwrite64,
        SYS_pwritev, SYS_pwritev2, SYS_quotactl, SYS_quotactl_fd, SYS_read, SYS_readahead,
        SYS_readlinkat, SYS_readv, SYS_reboot, SYS_recvfrom, SYS_recvmmsg, SYS_recvmsg,
        SYS_remap_file_pages, SYS_removexattr, SYS_removexattrat, SYS_renameat, SYS_renameat2,
        SYS_request_key, SYS_restart_syscall, SYS_rseq, SYS_rt_sigaction, SYS_rt_sigpending,
        SYS_rt_sigprocmask, SYS_rt_sigqueueinfo, SYS_rt_sigreturn, SYS_rt_sigsuspend,
        SYS_rt_sigtimedwait, SYS_rt_tgsigqueueinfo, SYS_sched_get_priority_max,
        SYS_sched_get_priority_min, SYS_sched_getaffinity, SYS_sched_getattr, SYS_sched_getparam,
        SYS_sched_getscheduler, SYS_sched_rr_get_interval, SYS_sched_setaffinity,
        SYS_sched_setattr, SYS_sched_setparam, SYS_sched_setscheduler, SYS_sched_yield,
        SYS_seccomp, SYS_semctl, SYS_semget, SYS_semop, SYS_semtimedop, SYS_sendfile, SYS_sendmmsg,
        SYS_sendmsg, SYS_sendto, SYS_set_mempolicy, SYS_set_mempolicy_home_node,
        SYS_set_robust_list, SYS_set_tid_address, SYS_setdomainname, SYS_setfsgid, SYS_setfsuid,
        SYS_setgid, SYS_setgroups, SYS_sethostname, SYS_setitimer, SYS_setns, SYS_setpgid,
        SYS_setpriority, SYS_setregid, SYS_setresgid, SYS_setresuid, SYS_setreuid, SYS_setrlimit,
        SYS_setsid, SYS_setsockopt, SYS_settimeofday, SYS_setuid, SYS_setxattr, SYS_setxattrat,
        SYS_shmat, SYS_shmctl, SYS_shmdt, SYS_shmget, SYS_shutdown, SYS_sigaltstack, SYS_signalfd4,
        SYS_socket, SYS_socketpair, SYS_splice, SYS_statfs, SYS_statmount, SYS_statx, SYS_swapoff,
        SYS_swapon, SYS_symlinkat, SYS_sync, SYS_sync_file_range, SYS_syncfs, SYS_sysinfo,
        SYS_syslog, SYS_tee, SYS_tgkill, SYS_timer_create, SYS_timer_delete, SYS_timer_getoverrun,
        SYS_timer_gettime, SYS_timer_settime, SYS_timerfd_create, SYS_timerfd_gettime,
        SYS_timerfd_settime, SYS_times, SYS_tkill, SYS_truncate, SYS_umask, SYS_umount2, SYS_uname,
        SYS_unlinkat, SYS_unshare, SYS_userfaultfd, SYS_utimensat, SYS_vhangup, SYS_vmsplice,
        SYS_wait4, SYS_waitid, SYS_write, SYS_writev,    ],
    x86_64_only: [
        SYS__sysctl, SYS_access, SYS_afs_syscall, SYS_alarm, SYS_arch_prctl, SYS_chmod, SYS_chown,
        SYS_creat, SYS_dup2, SYS_epoll_create, SYS_epoll_ctl_old, SYS_epoll_wait,
        SYS_epoll_wait_old, SYS_eventfd, SYS_fork, SYS_futimesat, SYS_get_thread_area,
        SYS_getdents, SYS_getpgrp, SYS_getpmsg, SYS_inotify_init, SYS_ioperm, SYS_iopl, SYS_lchown,
        SYS_link, SYS_lstat, SYS_mkdir, SYS_mknod, SYS_modify_ldt, SYS_open, SYS_pause, SYS_pipe,
        SYS_poll, SYS_putpmsg, SYS_readlink, SYS_rename, SYS_rmdir, SYS_security, SYS_select,
        SYS_set_thread_area, SYS_signalfd, SYS_stat, SYS_symlink, SYS_sysfs, SYS_time, SYS_tuxcall,
        SYS_unlink, SYS_uselib, SYS_ustat, SYS_utime, SYS_utimes, SYS_vfork, SYS_vserver,
    ],
}

/// What the table knows about a syscall name. `id` identifies the name on every
/// architecture (its position in the table), so duplicate checks need no hashing and work for
/// names this architecture lacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// Exists on the native architecture with number `nr`; `everywhere` if every supported
    /// architecture has it.
    Native {
        id: usize,
        nr: u32,
        everywhere: bool,
    },
    /// Known, but only on other supported architectures.
    OtherArch { id: usize },
    /// Not a syscall nsbox knows on any supported architecture.
    Unknown,
}

/// Number of distinct names in the table; every `id` is below it.
pub(crate) fn table_len() -> usize {
    COMMON.len() + X86_64_ONLY.len()
}

fn strip(sys: &'static str) -> &'static str {
    sys.strip_prefix("SYS_").unwrap_or(sys)
}

/// Index of `name` in `table`, and its native number if any.
fn find(
    table: &'static [(&'static str, Option<c_long>)],
    name: &str,
) -> Option<(usize, Option<c_long>)> {
    table
        .binary_search_by(|(sys, _)| strip(sys).cmp(name))
        .ok()
        .map(|i| (i, table[i].1))
}

/// Resolves `name` for the native architecture (at most two binary searches: this runs for
/// every name in a profile on every sandbox start).
pub(crate) fn lookup(name: &str) -> Lookup {
    let (id, number, everywhere) = match find(COMMON, name) {
        Some((i, number)) => (i, number, true),
        None => match find(X86_64_ONLY, name) {
            Some((i, number)) => (COMMON.len() + i, number, false),
            None => return Lookup::Unknown,
        },
    };
    match number {
        // Numbers are small and non-negative on every supported architecture.
        Some(nr) => {
            u32::try_from(nr).map_or(Lookup::Unknown, |nr| Lookup::Native { id, nr, everywhere })
        }
        None => Lookup::OtherArch { id },
    }
}

/// Whether `arch` has a syscall called `name` (independent of the build architecture).
#[cfg(test)]
pub(crate) fn exists_on(name: &str, arch: Arch) -> bool {
    find(COMMON, name).is_some() || (arch == Arch::X86_64 && find(X86_64_ONLY, name).is_some())
}

/// Every known name, for "did you mean" hints.
pub(crate) fn known_names() -> impl Iterator<Item = &'static str> {
    COMMON.iter().chain(X86_64_ONLY).map(|(sys, _)| strip(sys))
}

/// The native name of syscall number `number`.
#[cfg(test)]
pub(crate) fn name_of(number: u32) -> Option<&'static str> {
    COMMON
        .iter()
        .chain(X86_64_ONLY)
        .find(|(_, nr)| *nr == Some(c_long::from(number)))
        .map(|(sys, _)| strip(sys))
}

/// Every native (name, number) pair, for tests that sweep the whole table.
#[cfg(test)]
pub(crate) fn native_table() -> Vec<(&'static str, u32)> {
    COMMON
        .iter()
        .chain(X86_64_ONLY)
        .filter_map(|(sys, nr)| Some((strip(sys), u32::try_from((*nr)?).ok()?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_sorted_prefixed_and_disjoint() {
        for table in [COMMON, X86_64_ONLY] {
            for (sys, _) in table {
                assert!(sys.starts_with("SYS_"), "{sys}");
            }
            for pair in table.windows(2) {
                assert!(
                    strip(pair[0].0) < strip(pair[1].0),
                    "table not sorted at {} / {}",
                    pair[0].0,
                    pair[1].0
                );
            }
        }
        for (sys, _) in X86_64_ONLY {
            assert!(find(COMMON, strip(sys)).is_none(), "{sys} listed twice");
        }
    }

    #[test]
    fn native_numbers_are_unique() {
        let mut seen = std::collections::BTreeMap::new();
        for (name, nr) in native_table() {
            if let Some(other) = seen.insert(nr, name) {
                panic!("{name} and {other} share number {nr}");
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn known_x86_64_numbers() {
        // Spot checks against arch/x86/entry/syscalls/syscall_64.tbl.
        for (name, nr) in [
            ("read", 0),
            ("ioctl", 16),
            ("socket", 41),
            ("clone", 56),
            ("ptrace", 101),
            ("io_pgetevents", 333),
            ("clone3", 435),
            ("cachestat", 451),
            ("fchmodat2", 452),
            ("mseal", 462),
            ("open_tree_attr", 467),
            ("file_setattr", 469),
        ] {
            assert!(
                matches!(lookup(name), Lookup::Native { nr: n, .. } if n == nr),
                "{name}"
            );
        }
        assert_eq!(name_of(101), Some("ptrace"));
    }

    #[test]
    fn audit_arch_values_match_linux_audit_h() {
        // AUDIT_ARCH_X86_64 and AUDIT_ARCH_AARCH64 from <linux/audit.h>. The interpreter
        // tests take "native" from the same function, so only this test (and the kernel
        // test) would notice a wrong value.
        assert_eq!(Arch::X86_64.audit_arch(), 0xC000_003E);
        assert_eq!(Arch::Aarch64.audit_arch(), 0xC000_00B7);
    }

    #[test]
    fn arch_specific_names() {
        assert!(exists_on("open", Arch::X86_64));
        assert!(!exists_on("open", Arch::Aarch64));
        assert!(exists_on("openat", Arch::Aarch64));
        assert!(exists_on("getrlimit", Arch::Aarch64));
        assert_eq!(lookup("no_such_syscall"), Lookup::Unknown);
        if Arch::native() == Some(Arch::Aarch64) {
            assert!(matches!(lookup("open"), Lookup::OtherArch { .. }));
        }
    }
}
