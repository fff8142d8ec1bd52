//! Test-only: a classic-BPF interpreter for seccomp programs, a checker with the kernel's
//! rules, and a direct evaluator of a policy that compiled programs are compared against.
//!
//! The interpreter is written from the cBPF definition (`<linux/filter.h>`), independently of
//! the compiler, and refuses any instruction the compiler is not expected to emit.

use super::compile::{MAX_INSTRUCTIONS, X32_SYSCALL_BIT};
use super::profile::Action;
use super::syscalls::Arch;
use super::SeccompPolicy;

/// `AUDIT_ARCH_I386`: what an `int 0x80` syscall reports on x86_64.
pub(crate) const AUDIT_ARCH_I386: u32 = 0x4000_0003;

/// `struct seccomp_data` as the kernel fills it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SeccompData {
    pub(crate) nr: i32,
    pub(crate) arch: u32,
    pub(crate) instruction_pointer: u64,
    pub(crate) args: [u64; 6],
}

impl SeccompData {
    /// A native syscall with the given arguments.
    pub(crate) fn native(nr: u32, args: [u64; 6]) -> Self {
        SeccompData {
            nr: nr as i32,
            arch: native_arch().audit_arch(),
            instruction_pointer: 0x7fff_dead_beef,
            args,
        }
    }

    /// The 64 bytes the filter reads, little-endian like both supported architectures.
    fn bytes(&self) -> [u8; 64] {
        let mut out = [0u8; 64];
        out[0..4].copy_from_slice(&self.nr.to_le_bytes());
        out[4..8].copy_from_slice(&self.arch.to_le_bytes());
        out[8..16].copy_from_slice(&self.instruction_pointer.to_le_bytes());
        for (i, arg) in self.args.iter().enumerate() {
            out[16 + 8 * i..24 + 8 * i].copy_from_slice(&arg.to_le_bytes());
        }
        out
    }
}

pub(crate) fn native_arch() -> Arch {
    Arch::native().expect("tests run on a supported architecture")
}

/// Checks `prog` the way the kernel's `bpf_check_classic` and `seccomp_check_filter` would,
/// restricted to the instructions nsbox emits. Panics with the reason on any violation.
pub(crate) fn check(prog: &[libc::sock_filter]) {
    assert!(!prog.is_empty(), "empty program");
    assert!(
        prog.len() <= MAX_INSTRUCTIONS,
        "program too long: {}",
        prog.len()
    );
    let last = prog[prog.len() - 1];
    assert_eq!(
        u32::from(last.code),
        libc::BPF_RET | libc::BPF_K,
        "program must end in ret"
    );
    for (pc, insn) in prog.iter().enumerate() {
        let code = u32::from(insn.code);
        let remaining = prog.len() - pc - 1;
        match code {
            c if c == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS => {
                assert!(
                    insn.k % 4 == 0 && insn.k < 64,
                    "pc {pc}: bad load offset {}",
                    insn.k
                );
            }
            c if c == libc::BPF_ALU | libc::BPF_AND | libc::BPF_K => {}
            c if c == libc::BPF_RET | libc::BPF_K => {}
            c if c == libc::BPF_JMP | libc::BPF_JA => {
                assert!((insn.k as usize) < remaining, "pc {pc}: ja out of range");
            }
            c if c == libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K
                || c == libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K
                || c == libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K =>
            {
                assert!(usize::from(insn.jt) < remaining, "pc {pc}: jt out of range");
                assert!(usize::from(insn.jf) < remaining, "pc {pc}: jf out of range");
            }
            other => panic!("pc {pc}: unexpected opcode {other:#x}"),
        }
    }
}

/// Runs `prog` on `data` and returns the filter's `SECCOMP_RET_*` value.
pub(crate) fn run(prog: &[libc::sock_filter], data: &SeccompData) -> u32 {
    trace(prog, data).ret
}

/// What one run of a program did, for path-length checks.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Trace {
    /// The filter's `SECCOMP_RET_*` value.
    pub(crate) ret: u32,
    /// Instructions executed, the final `ret` included.
    pub(crate) executed: usize,
    /// Instructions executed before the first load of an argument word (all of them when the
    /// program never reads an argument): the cost of finding the syscall's handler.
    pub(crate) dispatch: usize,
}

/// Runs `prog` on `data`, counting the instructions executed.
pub(crate) fn trace(prog: &[libc::sock_filter], data: &SeccompData) -> Trace {
    let bytes = data.bytes();
    let mut acc: u32 = 0;
    let mut pc = 0usize;
    let mut dispatch = None;
    // Jumps only go forward, so the program terminates within `prog.len()` steps.
    for executed in 1..=prog.len() + 1 {
        let insn = prog
            .get(pc)
            .unwrap_or_else(|| panic!("fell off the program at {pc}"));
        let code = u32::from(insn.code);
        pc += 1;
        if code == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS {
            let at = insn.k as usize;
            if at >= 16 && dispatch.is_none() {
                dispatch = Some(executed - 1);
            }
            let word: [u8; 4] = bytes[at..at + 4].try_into().expect("4 bytes");
            acc = u32::from_le_bytes(word);
        } else if code == libc::BPF_ALU | libc::BPF_AND | libc::BPF_K {
            acc &= insn.k;
        } else if code == libc::BPF_RET | libc::BPF_K {
            return Trace {
                ret: insn.k,
                executed,
                dispatch: dispatch.unwrap_or(executed),
            };
        } else if code == libc::BPF_JMP | libc::BPF_JA {
            pc += insn.k as usize;
        } else {
            let taken = if code == libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K {
                acc == insn.k
            } else if code == libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K {
                acc > insn.k
            } else if code == libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K {
                acc >= insn.k
            } else {
                panic!("unexpected opcode {code:#x} at {}", pc - 1)
            };
            pc += usize::from(if taken { insn.jt } else { insn.jf });
        }
    }
    panic!("program did not return")
}

/// What `policy` says about `data`, evaluated directly from the rules (the specification the
/// compiled program must agree with), including the fixed architecture and x32 checks.
pub(crate) fn reference(policy: &SeccompPolicy, data: &SeccompData) -> u32 {
    let arch = native_arch();
    if data.arch != arch.audit_arch() {
        return Action::KillProcess.ret_value();
    }
    let nr = data.nr as u32;
    if arch == Arch::X86_64 && nr >= X32_SYSCALL_BIT {
        return Action::KillProcess.ret_value();
    }
    for rule in &policy.rules {
        let names_it = rule.syscalls.contains(&nr);
        if names_it && rule.conditions.iter().all(|c| c.holds(&data.args)) {
            return rule.action.ret_value();
        }
    }
    policy.default_action.ret_value()
}

/// Human-readable form of a `SECCOMP_RET_*` value, for assertion messages.
pub(crate) fn describe(ret: u32) -> String {
    match ret & libc::SECCOMP_RET_ACTION_FULL {
        libc::SECCOMP_RET_ALLOW => "ALLOW".to_owned(),
        libc::SECCOMP_RET_KILL_PROCESS => "KILL_PROCESS".to_owned(),
        libc::SECCOMP_RET_ERRNO => format!("ERRNO({})", ret & libc::SECCOMP_RET_DATA),
        other => format!("{other:#x}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stmt(code: u32, k: u32) -> libc::sock_filter {
        libc::sock_filter {
            code: code as u16,
            jt: 0,
            jf: 0,
            k,
        }
    }

    fn jump(code: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
        libc::sock_filter {
            code: (libc::BPF_JMP | code | libc::BPF_K) as u16,
            jt,
            jf,
            k,
        }
    }

    /// The interpreter itself is tested on a hand-assembled program, so a bug in it cannot
    /// hide a matching bug in the compiler.
    #[test]
    fn interpreter_runs_a_hand_written_program() {
        let ld = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
        let ret = libc::BPF_RET | libc::BPF_K;
        let prog = [
            stmt(ld, 0),                                            // A = nr
            jump(libc::BPF_JEQ, 7, 0, 1),                           // nr == 7 ?
            stmt(ret, 1),                                           //   -> 1
            stmt(ld, 20),                                           // A = args[0] high
            jump(libc::BPF_JGT, 5, 2, 0),                           // > 5 -> ret 2
            stmt(libc::BPF_ALU | libc::BPF_AND | libc::BPF_K, 0x4), // A &= 4
            jump(libc::BPF_JGE, 4, 1, 2),                           // >= 4 -> ret 3 else ja
            stmt(ret, 2),
            stmt(ret, 3),
            stmt(libc::BPF_JMP | libc::BPF_JA, 0),
            stmt(ret, 4),
        ];
        check(&prog);
        let with = |nr: i32, arg0: u64| SeccompData {
            nr,
            arch: 0,
            instruction_pointer: 0,
            args: [arg0, 0, 0, 0, 0, 0],
        };
        assert_eq!(run(&prog, &with(7, 0)), 1);
        assert_eq!(run(&prog, &with(8, 6 << 32)), 2);
        assert_eq!(run(&prog, &with(8, 4 << 32)), 3);
        assert_eq!(run(&prog, &with(8, 1 << 32)), 4);
        let t = trace(&prog, &with(7, 0));
        assert_eq!((t.executed, t.dispatch), (3, 3));
        let t = trace(&prog, &with(8, 1 << 32));
        assert_eq!(
            (t.executed, t.dispatch),
            (8, 2),
            "ld nr and jeq come before ld arg"
        );
    }

    #[test]
    #[should_panic(expected = "jt out of range")]
    fn checker_rejects_a_jump_past_the_end() {
        check(&[
            jump(libc::BPF_JEQ, 0, 1, 0),
            stmt(libc::BPF_RET | libc::BPF_K, 0),
        ]);
    }

    #[test]
    #[should_panic(expected = "bad load offset")]
    fn checker_rejects_loads_outside_seccomp_data() {
        check(&[
            stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 64),
            stmt(libc::BPF_RET | libc::BPF_K, 0),
        ]);
    }
}
