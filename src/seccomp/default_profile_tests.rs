//! Tests of the built-in default profile, run through the compiled program with the test
//! interpreter: the denials SECURITY.md requires, the allowances real software needs, and a
//! sweep comparing the compiled program with the rules evaluated directly.

use super::bpf_interpreter::{
    check, describe, native_arch, reference, run, SeccompData, AUDIT_ARCH_I386,
};
use super::profile::Action;
use super::syscalls::{self, Arch, Lookup};
use super::{BpfProgram, SeccompPolicy};

const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
const KILL: u32 = libc::SECCOMP_RET_KILL_PROCESS;

fn errno(e: libc::c_int) -> u32 {
    libc::SECCOMP_RET_ERRNO | e as u32
}

const EPERM: libc::c_int = libc::EPERM;
const ENOSYS: libc::c_int = libc::ENOSYS;

fn default_policy() -> SeccompPolicy {
    SeccompPolicy::builtin("default").expect("default profile parses")
}

fn default_program() -> BpfProgram {
    let program = default_policy()
        .compile()
        .expect("default profile compiles");
    check(program.instructions());
    program
}

fn nr(name: &str) -> u32 {
    match syscalls::lookup(name) {
        Lookup::Native { nr, .. } => nr,
        other => panic!("{name} is not a native syscall: {other:?}"),
    }
}

/// Argument vectors every "decided without arguments" syscall must give the same answer for.
fn arg_patterns() -> Vec<[u64; 6]> {
    let mut patterns = vec![[0; 6], [u64::MAX; 6], [0xffff_ffff; 6], [1 << 32; 6]];
    // A few deterministic pseudo-random vectors (xorshift64).
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..8 {
        let mut args = [0u64; 6];
        for arg in &mut args {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *arg = x;
        }
        patterns.push(args);
    }
    patterns
}

fn eval(program: &BpfProgram, name: &str, args: [u64; 6]) -> u32 {
    run(program.instructions(), &SeccompData::native(nr(name), args))
}

fn assert_action(program: &BpfProgram, name: &str, args: [u64; 6], expected: u32) {
    let got = eval(program, name, args);
    assert_eq!(
        got,
        expected,
        "{name}({args:#x?}): got {}, expected {}",
        describe(got),
        describe(expected)
    );
}

/// The denials SECURITY.md and the design brief require, with the action each must get for
/// any arguments. Names missing on this architecture (x86-only iopl, ioperm) are skipped.
const MUST_DENY: &[(&str, libc::c_int)] = &[
    ("setns", EPERM),
    ("clone3", ENOSYS),
    ("mount", EPERM),
    ("umount2", EPERM),
    ("pivot_root", EPERM),
    ("fsopen", EPERM),
    ("fsconfig", EPERM),
    ("fsmount", EPERM),
    ("fspick", EPERM),
    ("move_mount", EPERM),
    ("open_tree", EPERM),
    ("open_tree_attr", EPERM),
    ("mount_setattr", EPERM),
    ("chroot", EPERM),
    ("bpf", EPERM),
    ("perf_event_open", EPERM),
    ("keyctl", EPERM),
    ("add_key", EPERM),
    ("request_key", EPERM),
    ("userfaultfd", EPERM),
    ("io_uring_setup", EPERM),
    ("io_uring_enter", EPERM),
    ("io_uring_register", EPERM),
    ("kexec_load", EPERM),
    ("kexec_file_load", EPERM),
    ("init_module", EPERM),
    ("finit_module", EPERM),
    ("delete_module", EPERM),
    ("ptrace", EPERM),
    ("process_vm_readv", EPERM),
    ("process_vm_writev", EPERM),
    ("pidfd_getfd", EPERM),
    ("kcmp", EPERM),
    ("open_by_handle_at", EPERM),
    ("reboot", EPERM),
    ("swapon", EPERM),
    ("swapoff", EPERM),
    ("syslog", EPERM),
    ("acct", EPERM),
    ("settimeofday", EPERM),
    ("clock_settime", EPERM),
    ("quotactl", EPERM),
    ("iopl", EPERM),
    ("ioperm", EPERM),
];

#[test]
fn every_required_denial_holds_for_any_arguments() {
    let program = default_program();
    for &(name, e) in MUST_DENY {
        let Lookup::Native { .. } = syscalls::lookup(name) else {
            assert!(
                name == "iopl" || name == "ioperm",
                "{name} must exist natively"
            );
            continue;
        };
        for args in arg_patterns() {
            assert_action(&program, name, args, errno(e));
        }
    }
}

/// Syscalls that some rule with `args` names: their answer depends on arguments.
fn argument_filtered(policy: &SeccompPolicy) -> Vec<u32> {
    policy
        .rules
        .iter()
        .filter(|r| !r.conditions.is_empty())
        .flat_map(|r| r.syscalls.iter().copied())
        .collect()
}

/// Every syscall the profile denies without conditions gets its errno, whatever the
/// arguments: nothing in the compiled program looks at arguments for them.
#[test]
fn every_unconditional_denial_in_the_profile_holds() {
    let policy = default_policy();
    let program = default_program();
    let filtered = argument_filtered(&policy);
    let mut checked = 0;
    for rule in policy.rules.iter().filter(|r| r.conditions.is_empty()) {
        let Action::Errno(e) = rule.action else {
            continue;
        };
        for nr in &rule.syscalls {
            if filtered.contains(nr) {
                continue;
            }
            let name = syscalls::name_of(*nr).expect("numbers come from the table");
            for args in arg_patterns() {
                assert_action(&program, name, args, errno(libc::c_int::from(e)));
            }
            checked += 1;
        }
    }
    assert!(checked > 40, "only {checked} denials found");
}

#[test]
fn every_unconditionally_allowed_syscall_is_allowed() {
    let policy = default_policy();
    let program = default_program();
    let filtered = argument_filtered(&policy);
    let mut checked = 0;
    for rule in policy.rules.iter().filter(|r| r.conditions.is_empty()) {
        if rule.action != Action::Allow {
            continue;
        }
        for nr in &rule.syscalls {
            if filtered.contains(nr) {
                continue;
            }
            let name = syscalls::name_of(*nr).expect("numbers come from the table");
            for args in arg_patterns() {
                assert_action(&program, name, args, ALLOW);
            }
            checked += 1;
        }
    }
    assert!(checked > 250, "only {checked} allowed syscalls found");
}

/// What compilers, shells, package managers and runtimes cannot live without. Guards
/// against a profile edit that drops one of them.
#[test]
fn essential_syscalls_are_allowed() {
    let program = default_program();
    let essentials = [
        "read",
        "write",
        "openat",
        "close",
        "newfstatat",
        "statx",
        "mmap",
        "mprotect",
        "munmap",
        "brk",
        "rt_sigaction",
        "rt_sigprocmask",
        "rt_sigreturn",
        "execve",
        "exit_group",
        "wait4",
        "futex",
        "set_robust_list",
        "rseq",
        "prlimit64",
        "getrandom",
        "pipe2",
        "dup3",
        "fcntl",
        "getdents64",
        "epoll_pwait",
        "ppoll",
        "connect",
        "sendto",
        "recvfrom",
        "prctl",
        "sched_getaffinity",
        "uname",
        "readlinkat",
        "unlinkat",
        "renameat2",
        "mkdirat",
        "faccessat2",
        "getcwd",
        "chdir",
        "umask",
        "kill",
        "tgkill",
        "seccomp",
        "memfd_create",
        "copy_file_range",
        "inotify_add_watch",
        "fsync",
    ];
    for name in essentials {
        assert_action(&program, name, [0; 6], ALLOW);
    }
    if native_arch() == Arch::X86_64 {
        for name in [
            "open",
            "stat",
            "fork",
            "vfork",
            "arch_prctl",
            "pipe",
            "poll",
            "access",
        ] {
            assert_action(&program, name, [0; 6], ALLOW);
        }
    }
}

#[test]
fn clone_is_allowed_without_namespace_flags_only() {
    let program = default_program();
    let sigchld = libc::SIGCHLD as u64;
    let fork_flags = (libc::CLONE_CHILD_SETTID | libc::CLONE_CHILD_CLEARTID) as u64 | sigchld;
    let thread_flags = (libc::CLONE_VM
        | libc::CLONE_FS
        | libc::CLONE_FILES
        | libc::CLONE_SIGHAND
        | libc::CLONE_THREAD
        | libc::CLONE_SYSVSEM
        | libc::CLONE_SETTLS
        | libc::CLONE_PARENT_SETTID
        | libc::CLONE_CHILD_CLEARTID) as u64;
    let vfork_flags = (libc::CLONE_VM | libc::CLONE_VFORK) as u64 | sigchld;
    for flags in [
        0,
        sigchld,
        fork_flags,
        thread_flags,
        vfork_flags,
        0xffff_ffff_0000_0000,
    ] {
        assert_action(&program, "clone", [flags, 0, 0, 0, 0, 0], ALLOW);
    }
    let namespace_flags = [
        libc::CLONE_NEWUSER,
        libc::CLONE_NEWNS,
        libc::CLONE_NEWPID,
        libc::CLONE_NEWNET,
        libc::CLONE_NEWUTS,
        libc::CLONE_NEWIPC,
        libc::CLONE_NEWCGROUP,
    ];
    for flag in namespace_flags {
        let flag = flag as u64;
        for flags in [
            flag,
            flag | sigchld,
            flag | thread_flags,
            flag | 0xffff_ffff_0000_0000,
        ] {
            assert_action(&program, "clone", [flags, 0, 0, 0, 0, 0], errno(EPERM));
        }
    }
    // Other arguments never matter.
    assert_action(
        &program,
        "clone",
        [sigchld, u64::MAX, u64::MAX, 0, 0, 0],
        ALLOW,
    );
    assert_action(&program, "clone3", [0, 88, 0, 0, 0, 0], errno(ENOSYS));
}

#[test]
fn unshare_is_allowed_for_private_state_only() {
    let program = default_program();
    for flags in [0, libc::CLONE_FS, libc::CLONE_FILES, libc::CLONE_SYSVSEM] {
        assert_action(&program, "unshare", [flags as u64, 0, 0, 0, 0, 0], ALLOW);
    }
    let denied = [
        libc::CLONE_NEWUSER as u64,
        libc::CLONE_NEWNS as u64,
        libc::CLONE_NEWNET as u64,
        libc::CLONE_NEWTIME as u64,
        (libc::CLONE_NEWUSER | libc::CLONE_FS) as u64,
        1 << 40, // a flag a future kernel might define
        libc::CLONE_FS as u64 | 1 << 63,
    ];
    for flags in denied {
        assert_action(&program, "unshare", [flags, 0, 0, 0, 0, 0], errno(EPERM));
    }
}

#[test]
fn terminal_injection_ioctls_are_denied_whatever_the_high_bits() {
    let program = default_program();
    const TIOCSTI: u64 = 0x5412;
    const TIOCLINUX: u64 = 0x541C;
    for cmd in [TIOCSTI, TIOCLINUX] {
        for high in [0u64, 1 << 32, 0xdead_beef << 32, 0xffff_ffff << 32] {
            for fd in [0, 1, u64::MAX] {
                assert_action(
                    &program,
                    "ioctl",
                    [fd, high | cmd, 0, 0, 0, 0],
                    errno(EPERM),
                );
            }
        }
    }
    // Neighbouring and ordinary commands stay allowed.
    for cmd in [
        0x5401, /* TCGETS */
        0x5413, /* TIOCGWINSZ */
        0x541B, /* FIONREAD */
        0x5411,
        0x5412 | 0x100,
        0x541D,
    ] {
        assert_action(&program, "ioctl", [1, cmd, 0, 0, 0, 0], ALLOW);
    }
}

#[test]
fn socket_families_are_restricted() {
    let program = default_program();
    let stream = libc::SOCK_STREAM as u64;
    let dgram_cloexec = (libc::SOCK_DGRAM | libc::SOCK_CLOEXEC) as u64;
    let raw = libc::SOCK_RAW as u64;
    for call in ["socket", "socketpair"] {
        for family in [libc::AF_UNIX, libc::AF_INET, libc::AF_INET6] {
            for ty in [stream, dgram_cloexec] {
                assert_action(&program, call, [family as u64, ty, 0, 0, 0, 0], ALLOW);
            }
        }
        let netlink = libc::AF_NETLINK as u64;
        assert_action(
            &program,
            call,
            [netlink, raw, libc::NETLINK_ROUTE as u64, 0, 0, 0],
            ALLOW,
        );
        for protocol in [
            libc::NETLINK_NETFILTER,
            libc::NETLINK_AUDIT,
            libc::NETLINK_KOBJECT_UEVENT,
            libc::NETLINK_GENERIC,
            libc::NETLINK_SOCK_DIAG,
            libc::NETLINK_XFRM,
        ] {
            assert_action(
                &program,
                call,
                [netlink, raw, protocol as u64, 0, 0, 0],
                errno(EPERM),
            );
        }
        // Protocol with garbage high bits is not NETLINK_ROUTE to the filter: refused.
        assert_action(
            &program,
            call,
            [netlink, raw, 1 << 32, 0, 0, 0],
            errno(EPERM),
        );
        for family in [
            libc::AF_ALG,
            libc::AF_VSOCK,
            libc::AF_PACKET,
            libc::AF_KEY,
            libc::AF_BLUETOOTH,
            libc::AF_CAN,
            libc::AF_TIPC,
            libc::AF_RDS,
            libc::AF_XDP,
            libc::AF_UNSPEC,
        ] {
            assert_action(
                &program,
                call,
                [family as u64, stream, 0, 0, 0, 0],
                errno(EPERM),
            );
        }
        // The kernel truncates the family to int; high bits must not smuggle AF_ALG through,
        // and an allowed family with high bits set fails closed.
        let alg_high = (1u64 << 32) | libc::AF_ALG as u64;
        assert_action(&program, call, [alg_high, stream, 0, 0, 0, 0], errno(EPERM));
        let inet_high = (1u64 << 32) | libc::AF_INET as u64;
        assert_action(
            &program,
            call,
            [inet_high, stream, 0, 0, 0, 0],
            errno(EPERM),
        );
    }
}

#[test]
fn personality_allows_dockers_values_only() {
    let program = default_program();
    for value in [
        0u64,
        0x8,
        0x20000,
        0x20008,
        0xffff_ffff,
        u64::MAX,
        0x1_0000_0008,
    ] {
        assert_action(&program, "personality", [value, 0, 0, 0, 0, 0], ALLOW);
    }
    for value in [
        0x0040000u64, /* ADDR_NO_RANDOMIZE */
        0x0400000,    /* READ_IMPLIES_EXEC */
        0x1,
        0x20009,
    ] {
        assert_action(
            &program,
            "personality",
            [value, 0, 0, 0, 0, 0],
            errno(EPERM),
        );
    }
}

#[test]
fn foreign_architectures_are_killed() {
    let program = default_program();
    let foreign = match native_arch() {
        Arch::X86_64 => vec![AUDIT_ARCH_I386, Arch::Aarch64.audit_arch(), 0],
        Arch::Aarch64 => vec![
            0x4000_0028, /* AUDIT_ARCH_ARM */
            Arch::X86_64.audit_arch(),
            0,
        ],
    };
    for arch in foreign {
        // i386 socketcall is 102, i386 getpid is 20: every number is killed, allowed or not.
        for nr in [0, 20, 102, nr("read"), nr("socket"), 0x4000_0000] {
            let data = SeccompData {
                arch,
                ..SeccompData::native(nr, [0; 6])
            };
            let got = run(program.instructions(), &data);
            assert_eq!(got, KILL, "arch {arch:#x} nr {nr}: {}", describe(got));
        }
    }
}

#[test]
fn x32_syscalls_are_killed() {
    if native_arch() != Arch::X86_64 {
        return;
    }
    let program = default_program();
    let x32_bit = 0x4000_0000u32;
    for nr in [
        x32_bit,
        x32_bit | nr("read"),
        x32_bit | nr("getpid"),
        x32_bit | 514, // x32 ioctl
        x32_bit | 521, // x32 ptrace
        u32::MAX,      // nr -1
    ] {
        let got = run(program.instructions(), &SeccompData::native(nr, [0; 6]));
        assert_eq!(got, KILL, "nr {nr:#x}: {}", describe(got));
    }
}

#[test]
fn unknown_and_unlisted_numbers_get_enosys() {
    let program = default_program();
    let unlisted = [
        "statmount",
        "listmount",
        "lsm_get_self_attr",
        "file_setattr",
        "setxattrat",
    ];
    for name in unlisted {
        assert_action(&program, name, [0; 6], errno(ENOSYS));
    }
    for number in [470, 500, 1000, 0x3fff_ffff] {
        assert_eq!(syscalls::name_of(number), None);
        let got = run(program.instructions(), &SeccompData::native(number, [0; 6]));
        assert_eq!(got, errno(ENOSYS), "nr {number}: {}", describe(got));
    }
}

/// Differential check: for every syscall number up to 600 (and a few far ones), with
/// boundary and random arguments, the compiled program returns exactly what the rules say.
#[test]
fn compiled_program_matches_the_rules_everywhere() {
    let policy = default_policy();
    let program = default_program();
    let mut patterns = arg_patterns();
    for value in [
        1u64,
        2,
        10,
        16,
        38,
        40,
        0x5412,
        0x541C,
        0x8,
        0x20000,
        0x1000_0000,
    ] {
        patterns.push([value; 6]);
        patterns.push([value | 1 << 32; 6]);
    }
    for nr in (0..600).chain([0x3fff_ffff, 0x4000_0000, u32::MAX]) {
        for args in &patterns {
            let data = SeccompData::native(nr, *args);
            let expected = reference(&policy, &data);
            let got = run(program.instructions(), &data);
            assert_eq!(
                got,
                expected,
                "nr {nr} args {args:#x?}: {} vs {}",
                describe(got),
                describe(expected)
            );
        }
    }
}

#[test]
fn default_profile_is_portable() {
    // Every name under `syscalls` must exist on every supported architecture, so the profile
    // parses on aarch64 builds too (which this machine cannot run).
    let text = include_str!("../../profiles/seccomp/default.toml");
    let table: toml::Table = toml::from_str(text).expect("toml");
    let rules = table["rule"].as_array().expect("rules");
    for (i, rule) in rules.iter().enumerate() {
        let Some(names) = rule.get("syscalls").and_then(|s| s.as_array()) else {
            continue;
        };
        for name in names {
            let name = name.as_str().expect("string");
            for arch in Arch::ALL {
                assert!(
                    syscalls::exists_on(name, arch),
                    "rule #{}: {name} missing on {arch:?}",
                    i + 1
                );
            }
        }
    }
}

#[test]
fn default_program_is_small() {
    let program = default_program();
    // Not a performance test: a guard that the layout stays compact (a regression to one
    // jeq/ret pair per syscall would roughly double this).
    assert!(program.len() < 600, "{} instructions", program.len());
}

#[test]
fn setuid_and_setgid_modes_are_refused_and_others_allowed() {
    let program = default_program();
    const SUID: u64 = 0o4000;
    const SGID: u64 = 0o2000;
    const O_CREAT: u64 = 0o100;
    const O_TMPFILE: u64 = 0o20200000;
    const O_RDWR: u64 = 0o2;
    for bit in [SUID, SGID, SUID | SGID] {
        let mode = 0o755 | bit;
        assert_action(&program, "fchmod", [3, mode, 0, 0, 0, 0], errno(EPERM));
        assert_action(&program, "fchmodat", [3, 0, mode, 0, 0, 0], errno(EPERM));
        assert_action(&program, "fchmodat2", [3, 0, mode, 0, 0, 0], errno(EPERM));
        assert_action(
            &program,
            "mknodat",
            [3, 0, mode | 0o100000, 0, 0, 0],
            errno(EPERM),
        );
        assert_action(
            &program,
            "openat",
            [3, 0, O_CREAT | O_RDWR, mode, 0, 0],
            errno(EPERM),
        );
        assert_action(
            &program,
            "openat",
            [3, 0, O_TMPFILE | O_RDWR, mode, 0, 0],
            errno(EPERM),
        );
        #[cfg(target_arch = "x86_64")]
        {
            assert_action(&program, "chmod", [0, mode, 0, 0, 0, 0], errno(EPERM));
            assert_action(&program, "creat", [0, mode, 0, 0, 0, 0], errno(EPERM));
            assert_action(
                &program,
                "open",
                [0, O_CREAT | O_RDWR, mode, 0, 0, 0],
                errno(EPERM),
            );
        }
    }
    // Ordinary modes, and a mode without O_CREAT/O_TMPFILE (where it means nothing), pass.
    for mode in [0o644u64, 0o755, 0o1777, 0o600] {
        assert_action(&program, "fchmod", [3, mode, 0, 0, 0, 0], ALLOW);
        assert_action(&program, "fchmodat", [3, 0, mode, 0, 0, 0], ALLOW);
        assert_action(
            &program,
            "openat",
            [3, 0, O_CREAT | O_RDWR, mode, 0, 0],
            ALLOW,
        );
    }
    assert_action(&program, "openat", [3, 0, O_RDWR, 0o4755, 0, 0], ALLOW);
    // openat2 carries its mode in memory: not available (libc falls back to openat).
    assert_action(&program, "openat2", [3, 0, 0, 24, 0, 0], errno(ENOSYS));
}
