//! Validated policy → classic BPF program for `seccomp(SECCOMP_SET_MODE_FILTER)`.
//!
//! Owns: the program layout and a tiny assembler with forward labels.
//! Must not: interpret profile text or make policy decisions; the only policy here is the
//! fixed prologue (wrong architecture or x32 → kill), which no profile may weaken.
//!
//! Program layout, in order:
//!
//! 1. `A = arch`; not the native `AUDIT_ARCH_*` → `KILL_PROCESS`. A syscall entered through
//!    another ABI (i386 `int 0x80`, arm32 compat) has different numbers and would otherwise
//!    be judged by the wrong table (the classic 32-bit `socketcall` bypass).
//! 2. `A = nr`; on x86_64, `nr >= 0x40000000` (`__X32_SYSCALL_BIT`) → `KILL_PROCESS`. x32
//!    syscalls report the x86_64 arch value, so only the number tells them apart.
//! 3. Syscalls that have argument conditions, in number order, each as
//!    `jeq nr → handler; ja skip; handler…; skip:`. A handler tries the syscall's rules in
//!    file order: each condition jumps to the next rule when it fails; a rule whose conditions
//!    all hold returns its action; after the last rule, `ret default_action`. Every path out
//!    of a handler is a `ret`, and the only long jump (`ja`) has a 32-bit offset, so a handler
//!    may be any size.
//! 4. Syscalls decided without looking at arguments, grouped by action in chunks of at most
//!    [`CHUNK`]: `jeq nr1 → ret; jeq nr2 → ret; …; jeq nrN → ret else skip; ret ACTION`.
//! 5. `ret default_action`.
//!
//! Every conditional jump is short by construction (inside a chunk or a rule), and the
//! assembler refuses any offset that does not fit 8 bits instead of truncating it. The
//! accumulator holds `nr` throughout steps 3–4 because handlers are only entered, never
//! left, after they load arguments.
//!
//! Steps 4–5 never read arguments, so the kernel's seccomp action cache (Linux 5.11+) learns
//! that those syscalls are always allowed and skips the program for them entirely.

use std::collections::BTreeMap;

use super::error::SeccompError;
use super::profile::{Action, Comparison, Condition, Rule};
use super::syscalls::Arch;
use super::SeccompPolicy;

/// The kernel's limit on program length (`BPF_MAXINSNS`).
pub(crate) const MAX_INSTRUCTIONS: usize = 4096;

/// x32 syscalls are x86_64 numbers with this bit set (`__X32_SYSCALL_BIT`).
pub(crate) const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// Syscalls per "same action" chunk; the first `jeq` of a chunk jumps `CHUNK - 1` ahead.
const CHUNK: usize = 128;

/// Offsets in `struct seccomp_data` (`<linux/seccomp.h>`): `int nr; __u32 arch;
/// __u64 instruction_pointer; __u64 args[6];`. Both supported architectures are
/// little-endian, so the low word of an argument comes first.
const OFFSET_NR: u32 = 0;
const OFFSET_ARCH: u32 = 4;
const OFFSET_ARGS: u32 = 16;

#[cfg(not(target_endian = "little"))]
compile_error!("the seccomp compiler assumes little-endian seccomp_data argument words");

fn arg_low_word(arg: u8) -> u32 {
    OFFSET_ARGS + 8 * u32::from(arg)
}

fn arg_high_word(arg: u8) -> u32 {
    arg_low_word(arg) + 4
}

/// A compiled seccomp filter for the native architecture, ready for
/// [`crate::sys::seccomp::install_filter`]. Only [`super::SeccompPolicy::compile`] makes one,
/// so its length is always between 1 and [`MAX_INSTRUCTIONS`].
#[derive(Clone, Debug)]
pub struct BpfProgram {
    instructions: Vec<libc::sock_filter>,
}

impl BpfProgram {
    /// Number of instructions.
    pub fn len(&self) -> usize {
        self.instructions.len()
    }

    /// Always false: a compiled program ends in at least one `ret`.
    pub fn is_empty(&self) -> bool {
        self.instructions.is_empty()
    }

    /// The instructions, as the kernel expects them in `sock_fprog.filter`.
    pub fn instructions(&self) -> &[libc::sock_filter] {
        &self.instructions
    }
}

/// Compiles `policy` for the native architecture.
pub(super) fn compile(policy: &SeccompPolicy) -> Result<BpfProgram, SeccompError> {
    let arch = Arch::native().ok_or(SeccompError::UnsupportedArchitecture {
        arch: std::env::consts::ARCH,
    })?;

    // Each syscall's rules, in file order. BTreeMap: deterministic output, filtered syscalls
    // in number order.
    let mut rules_by_nr: BTreeMap<u32, Vec<&Rule>> = BTreeMap::new();
    for rule in &policy.rules {
        for &(_, nr) in &rule.syscalls {
            rules_by_nr.entry(nr).or_default().push(rule);
        }
    }
    let mut with_conditions: Vec<(u32, Vec<&Rule>)> = Vec::new();
    let mut by_action: BTreeMap<Action, Vec<u32>> = BTreeMap::new();
    for (nr, rules) in rules_by_nr {
        match rules.as_slice() {
            [only] if only.conditions.is_empty() => {
                by_action.entry(only.action).or_default().push(nr)
            }
            _ => with_conditions.push((nr, rules)),
        }
    }

    let mut asm = Assembler::default();
    emit_prologue(&mut asm, arch);
    for (nr, rules) in &with_conditions {
        emit_handler(&mut asm, *nr, rules, policy.default_action);
    }
    for (action, numbers) in &by_action {
        for chunk in numbers.chunks(CHUNK) {
            emit_chunk(&mut asm, chunk, *action);
        }
    }
    asm.ret(policy.default_action.ret_value());

    let instructions = asm.finish()?;
    if instructions.len() > MAX_INSTRUCTIONS {
        return Err(SeccompError::ProgramTooLong {
            len: instructions.len(),
            max: MAX_INSTRUCTIONS,
        });
    }
    Ok(BpfProgram { instructions })
}

fn emit_prologue(asm: &mut Assembler, arch: Arch) {
    let arch_ok = asm.label();
    asm.load(OFFSET_ARCH);
    asm.jump(
        Jump::Eq,
        arch.audit_arch(),
        Target::Label(arch_ok),
        Target::Next,
    );
    asm.ret(Action::KillProcess.ret_value());
    asm.bind(arch_ok);

    asm.load(OFFSET_NR);
    if arch == Arch::X86_64 {
        let nr_ok = asm.label();
        asm.jump(
            Jump::Ge,
            X32_SYSCALL_BIT,
            Target::Next,
            Target::Label(nr_ok),
        );
        asm.ret(Action::KillProcess.ret_value());
        asm.bind(nr_ok);
    }
}

/// Step 3 of the layout: one syscall with argument conditions. Expects `A = nr`.
fn emit_handler(asm: &mut Assembler, nr: u32, rules: &[&Rule], default: Action) {
    let handler = asm.label();
    let skip = asm.label();
    asm.jump(Jump::Eq, nr, Target::Label(handler), Target::Next);
    asm.goto(skip);
    asm.bind(handler);
    for rule in rules {
        let next_rule = asm.label();
        for condition in &rule.conditions {
            emit_condition(asm, condition, next_rule);
        }
        asm.ret(rule.action.ret_value());
        asm.bind(next_rule);
    }
    asm.ret(default.ret_value());
    asm.bind(skip);
}

/// Falls through when `condition` holds, jumps to `fail` otherwise. Clobbers `A`.
///
/// cBPF compares 32-bit words, unsigned. A 64-bit comparison decides on the high words
/// unless they are equal, and only then compares the low words.
fn emit_condition(asm: &mut Assembler, condition: &Condition, fail: Label) {
    let hi = high_word(condition.value);
    let lo = low_word(condition.value);
    let pass = asm.label();
    let (pass_t, fail_t, next) = (Target::Label(pass), Target::Label(fail), Target::Next);
    if !matches!(condition.cmp, Comparison::MaskedEq { .. }) {
        asm.load(arg_high_word(condition.arg));
    }
    match condition.cmp {
        Comparison::Eq => {
            asm.jump(Jump::Eq, hi, next, fail_t);
            asm.load(arg_low_word(condition.arg));
            asm.jump(Jump::Eq, lo, next, fail_t);
        }
        Comparison::Ne => {
            asm.jump(Jump::Eq, hi, next, pass_t);
            asm.load(arg_low_word(condition.arg));
            asm.jump(Jump::Eq, lo, fail_t, next);
        }
        Comparison::Gt | Comparison::Ge => {
            // high > value's high: holds; high < value's high: fails; equal: low decides.
            asm.jump(Jump::Gt, hi, pass_t, next);
            asm.jump(Jump::Eq, hi, next, fail_t);
            asm.load(arg_low_word(condition.arg));
            let low_test = if condition.cmp == Comparison::Gt {
                Jump::Gt
            } else {
                Jump::Ge
            };
            asm.jump(low_test, lo, next, fail_t);
        }
        Comparison::Lt | Comparison::Le => {
            // high > value's high: fails; high < value's high: holds; equal: low decides.
            asm.jump(Jump::Gt, hi, fail_t, next);
            asm.jump(Jump::Eq, hi, next, pass_t);
            asm.load(arg_low_word(condition.arg));
            // lt fails when low >= value's low; le fails when low > value's low.
            let low_test = if condition.cmp == Comparison::Lt {
                Jump::Ge
            } else {
                Jump::Gt
            };
            asm.jump(low_test, lo, fail_t, next);
        }
        Comparison::MaskedEq { mask } => {
            // A word whose mask is zero cannot change the result (the profile parser rejects
            // value bits outside the mask), so it is not tested: `ioctl` commands and
            // `personality` values, which the kernel reads as 32-bit, cost two instructions.
            if high_word(mask) != 0 {
                asm.load(arg_high_word(condition.arg));
                asm.and_unless_all_ones(high_word(mask));
                asm.jump(Jump::Eq, hi, next, fail_t);
            }
            if low_word(mask) != 0 {
                asm.load(arg_low_word(condition.arg));
                asm.and_unless_all_ones(low_word(mask));
                asm.jump(Jump::Eq, lo, next, fail_t);
            }
        }
    }
    asm.bind(pass);
}

/// Step 4 of the layout: `numbers` (at most [`CHUNK`]) all get `action`. Expects `A = nr`.
fn emit_chunk(asm: &mut Assembler, numbers: &[u32], action: Action) {
    let ret = asm.label();
    let after = asm.label();
    for (i, &nr) in numbers.iter().enumerate() {
        let on_mismatch = if i + 1 == numbers.len() {
            Target::Label(after)
        } else {
            Target::Next
        };
        asm.jump(Jump::Eq, nr, Target::Label(ret), on_mismatch);
    }
    asm.bind(ret);
    asm.ret(action.ret_value());
    asm.bind(after);
}

fn high_word(value: u64) -> u32 {
    (value >> 32) as u32
}

fn low_word(value: u64) -> u32 {
    value as u32
}

// ---------------------------------------------------------------------------------------------
// Assembler
// ---------------------------------------------------------------------------------------------

/// A forward jump target, bound to an instruction index once.
#[derive(Clone, Copy, Debug)]
struct Label(usize);

#[derive(Clone, Copy, Debug)]
enum Target {
    /// The next instruction (offset 0).
    Next,
    Label(Label),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Jump {
    Eq,
    Gt,
    Ge,
}

#[derive(Clone, Copy, Debug)]
enum Op {
    /// `A = *(u32 *)(seccomp_data + offset)`
    Load(u32),
    /// `A &= k`
    And(u32),
    /// `if A <jump> k goto jt else goto jf` (8-bit offsets)
    Jump {
        jump: Jump,
        k: u32,
        jt: Target,
        jf: Target,
    },
    /// `goto label` (32-bit offset)
    Goto(Label),
    /// `return k`
    Ret(u32),
}

#[derive(Default)]
struct Assembler {
    ops: Vec<Op>,
    /// Instruction index of each label, once bound.
    labels: Vec<Option<usize>>,
}

impl Assembler {
    fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }

    fn bind(&mut self, label: Label) {
        debug_assert!(self.labels[label.0].is_none(), "label bound twice");
        self.labels[label.0] = Some(self.ops.len());
    }

    fn load(&mut self, offset: u32) {
        self.ops.push(Op::Load(offset));
    }

    fn and_unless_all_ones(&mut self, mask: u32) {
        if mask != u32::MAX {
            self.ops.push(Op::And(mask));
        }
    }

    fn jump(&mut self, jump: Jump, k: u32, jt: Target, jf: Target) {
        self.ops.push(Op::Jump { jump, k, jt, jf });
    }

    fn goto(&mut self, label: Label) {
        self.ops.push(Op::Goto(label));
    }

    fn ret(&mut self, value: u32) {
        self.ops.push(Op::Ret(value));
    }

    /// Distance from the instruction after `at` to `label`; forward only.
    fn distance(&self, at: usize, label: Label) -> Result<usize, SeccompError> {
        let bug = |detail: String| SeccompError::CompilerBug { detail };
        let target = self.labels[label.0]
            .ok_or_else(|| bug(format!("jump at {at} to a label that was never placed")))?;
        target
            .checked_sub(at + 1)
            .ok_or_else(|| bug(format!("backward jump at {at} to {target}")))
    }

    fn short_offset(&self, at: usize, target: Target) -> Result<u8, SeccompError> {
        let distance = match target {
            Target::Next => 0,
            Target::Label(label) => self.distance(at, label)?,
        };
        u8::try_from(distance).map_err(|_| SeccompError::CompilerBug {
            detail: format!(
                "conditional jump at {at} spans {distance} instructions, classic BPF allows 255"
            ),
        })
    }

    fn finish(self) -> Result<Vec<libc::sock_filter>, SeccompError> {
        let mut out = Vec::with_capacity(self.ops.len());
        for (at, op) in self.ops.iter().enumerate() {
            let insn = match *op {
                Op::Load(offset) => stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, offset),
                Op::And(mask) => stmt(libc::BPF_ALU | libc::BPF_AND | libc::BPF_K, mask),
                Op::Ret(value) => stmt(libc::BPF_RET | libc::BPF_K, value),
                Op::Goto(label) => {
                    let distance = self.distance(at, label)?;
                    let k = u32::try_from(distance).map_err(|_| SeccompError::CompilerBug {
                        detail: format!("jump at {at} spans {distance} instructions"),
                    })?;
                    stmt(libc::BPF_JMP | libc::BPF_JA, k)
                }
                Op::Jump { jump, k, jt, jf } => {
                    let code = match jump {
                        Jump::Eq => libc::BPF_JEQ,
                        Jump::Gt => libc::BPF_JGT,
                        Jump::Ge => libc::BPF_JGE,
                    };
                    libc::sock_filter {
                        code: opcode(libc::BPF_JMP | code | libc::BPF_K),
                        jt: self.short_offset(at, jt)?,
                        jf: self.short_offset(at, jf)?,
                        k,
                    }
                }
            };
            out.push(insn);
        }
        Ok(out)
    }
}

/// BPF opcodes are built from `u32` constants in libc but stored as `u16`; every
/// combination used here is below 0x100.
fn opcode(code: u32) -> u16 {
    code as u16
}

fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: opcode(code),
        jt: 0,
        jf: 0,
        k,
    }
}
