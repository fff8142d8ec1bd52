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
/// so its length is always between 1 and 4096 (`BPF_MAXINSNS`).
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

    // (syscall, rule index) for every name in every rule, sorted: each syscall's rules end
    // up adjacent and in file order. One flat vector keeps the compile allocation-light.
    let mut pairs: Vec<(u32, usize)> = Vec::with_capacity(512);
    for (index, rule) in policy.rules.iter().enumerate() {
        pairs.extend(rule.syscalls.iter().map(|&nr| (nr, index)));
    }
    pairs.sort_unstable();

    let mut asm = Assembler::with_capacity(pairs.len() * 2 + 16);
    emit_prologue(&mut asm, arch);

    // Step 3: syscalls whose answer depends on arguments (or on several rules).
    let mut plain: Vec<(Action, u32)> = Vec::with_capacity(pairs.len());
    for group in pairs.chunk_by(|a, b| a.0 == b.0) {
        let nr = group[0].0;
        match group {
            [(_, index)] if policy.rules[*index].conditions.is_empty() => {
                plain.push((policy.rules[*index].action, nr));
            }
            _ => {
                let rules = group.iter().map(|&(_, index)| &policy.rules[index]);
                emit_handler(&mut asm, nr, rules, policy.default_action);
            }
        }
    }

    // Step 4: everything else, grouped by action.
    plain.sort_unstable();
    for same_action in plain.chunk_by(|a, b| a.0 == b.0) {
        for chunk in same_action.chunks(CHUNK) {
            emit_chunk(&mut asm, chunk, same_action[0].0);
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
fn emit_handler<'a>(
    asm: &mut Assembler,
    nr: u32,
    rules: impl Iterator<Item = &'a Rule>,
    default: Action,
) {
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

/// Step 4 of the layout: the syscalls in `chunk` (at most [`CHUNK`]) all get `action`.
/// Expects `A = nr`.
fn emit_chunk(asm: &mut Assembler, chunk: &[(Action, u32)], action: Action) {
    let ret = asm.label();
    let after = asm.label();
    for (i, &(_, nr)) in chunk.iter().enumerate() {
        let on_mismatch = if i + 1 == chunk.len() {
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

struct Assembler {
    ops: Vec<Op>,
    /// Instruction index of each label, once bound.
    labels: Vec<Option<usize>>,
}

impl Assembler {
    fn with_capacity(instructions: usize) -> Self {
        Assembler {
            ops: Vec::with_capacity(instructions),
            labels: Vec::with_capacity(instructions / 2),
        }
    }

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seccomp::bpf_interpreter::{
        check, describe, native_arch, reference, run, SeccompData,
    };
    use crate::seccomp::syscalls::{self, Lookup};

    const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
    const DENY: u32 = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;

    fn nr(name: &str) -> u32 {
        match syscalls::lookup(name) {
            Lookup::Native { nr, .. } => nr,
            other => panic!("{name}: {other:?}"),
        }
    }

    fn compile_text(text: &str) -> (SeccompPolicy, BpfProgram) {
        let policy = SeccompPolicy::parse(text, "test").unwrap_or_else(|e| panic!("{e}\n{text}"));
        let program = policy.compile().unwrap_or_else(|e| panic!("{e}\n{text}"));
        check(program.instructions());
        (policy, program)
    }

    /// Values around every 32-bit word boundary of a 64-bit argument.
    const BOUNDARY: &[u64] = &[
        0,
        1,
        0x7fff_ffff,
        0x8000_0000,
        0xffff_fffe,
        0xffff_ffff,
        0x1_0000_0000,
        0x1_0000_0001,
        0x1_ffff_ffff,
        0x2_0000_0000,
        0x7fff_ffff_ffff_ffff,
        0x8000_0000_0000_0000,
        0xffff_ffff_0000_0000,
        0xffff_fffe_ffff_ffff,
        u64::MAX - 1,
        u64::MAX,
    ];

    #[test]
    fn comparisons_are_64_bit_at_the_word_boundaries() {
        type Holds = fn(u64, u64) -> bool;
        let ops: &[(&str, Holds)] = &[
            ("eq", |a, v| a == v),
            ("ne", |a, v| a != v),
            ("lt", |a, v| a < v),
            ("le", |a, v| a <= v),
            ("gt", |a, v| a > v),
            ("ge", |a, v| a >= v),
        ];
        for (index, &(op, holds)) in ops.iter().enumerate() {
            // Use a different argument slot per operator so every offset is exercised.
            let arg = index % 6;
            for &value in BOUNDARY {
                let text = format!(
                    "default_action = \"errno:EPERM\"\n[[rule]]\nwhy = \"t\"\naction = \"allow\"\n\
                     syscalls = [\"read\"]\nargs = [{{ index = {arg}, op = \"{op}\", value = \"{value:#x}\" }}]\n"
                );
                let (_, program) = compile_text(&text);
                for &probe in BOUNDARY {
                    let mut args = [0x5555_5555_5555_5555; 6];
                    args[arg] = probe;
                    let got = run(
                        program.instructions(),
                        &SeccompData::native(nr("read"), args),
                    );
                    let expected = if holds(probe, value) { ALLOW } else { DENY };
                    assert_eq!(
                        got,
                        expected,
                        "arg{arg} = {probe:#x} {op} {value:#x}: {}",
                        describe(got)
                    );
                }
            }
        }
    }

    #[test]
    fn masked_eq_compares_both_words() {
        let masks = [
            0xffff_ffff,
            0xffff_ffff_0000_0000,
            u64::MAX,
            0x8000_0000_0000_0001,
            0x1_0000_0000,
            0x7e02_0000,
        ];
        for mask in masks {
            for value in [
                0,
                mask,
                mask & 0xffff_ffff,
                mask & !0xffff_ffff,
                mask & 0x8000_0000_0000_0000,
            ] {
                let text = format!(
                    "default_action = \"errno:EPERM\"\n[[rule]]\nwhy = \"t\"\naction = \"allow\"\n\
                     syscalls = [\"ioctl\"]\nargs = [{{ index = 1, op = \"masked_eq\", mask = \"{mask:#x}\", value = \"{value:#x}\" }}]\n"
                );
                let (_, program) = compile_text(&text);
                for &probe in BOUNDARY.iter().chain(&[mask, value, value | !mask, !value]) {
                    let args = [0, probe, 0, 0, 0, 0];
                    let got = run(
                        program.instructions(),
                        &SeccompData::native(nr("ioctl"), args),
                    );
                    let expected = if probe & mask == value { ALLOW } else { DENY };
                    assert_eq!(
                        got,
                        expected,
                        "{probe:#x} & {mask:#x} == {value:#x}: {}",
                        describe(got)
                    );
                }
            }
        }
    }

    #[test]
    fn conditions_are_anded_and_rules_are_tried_in_order() {
        let text = "default_action = \"errno:ENOSYS\"\n\
            [[rule]]\nwhy = \"a\"\naction = \"errno:EACCES\"\nsyscalls = [\"read\", \"write\"]\n\
            args = [{ index = 0, op = \"eq\", value = 1 }]\n\
            [[rule]]\nwhy = \"range\"\naction = \"allow\"\nsyscalls = [\"read\"]\n\
            args = [{ index = 0, op = \"ge\", value = 1 }, { index = 0, op = \"lt\", value = 10 }, { index = 2, op = \"ne\", value = 7 }]\n\
            [[rule]]\nwhy = \"rest\"\naction = \"kill\"\nsyscalls = [\"read\"]\n";
        let (_, program) = compile_text(text);
        let read = |args: [u64; 6]| {
            run(
                program.instructions(),
                &SeccompData::native(nr("read"), args),
            )
        };
        let write = |args: [u64; 6]| {
            run(
                program.instructions(),
                &SeccompData::native(nr("write"), args),
            )
        };
        let eacces = libc::SECCOMP_RET_ERRNO | libc::EACCES as u32;
        let enosys = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
        let kill = libc::SECCOMP_RET_KILL_PROCESS;
        assert_eq!(read([1, 0, 7, 0, 0, 0]), eacces, "first rule wins");
        assert_eq!(read([5, 0, 0, 0, 0, 0]), ALLOW);
        assert_eq!(read([9, 0, 0, 0, 0, 0]), ALLOW);
        assert_eq!(
            read([5, 0, 7, 0, 0, 0]),
            kill,
            "one false condition fails the rule"
        );
        assert_eq!(read([10, 0, 0, 0, 0, 0]), kill);
        assert_eq!(read([0, 0, 0, 0, 0, 0]), kill);
        assert_eq!(read([(1 << 32) | 5, 0, 0, 0, 0, 0]), kill);
        assert_eq!(write([1, 0, 0, 0, 0, 0]), eacces);
        assert_eq!(
            write([2, 0, 0, 0, 0, 0]),
            enosys,
            "no rule matched: default"
        );
    }

    #[test]
    fn prologue_checks_arch_then_x32_then_dispatches() {
        let (_, program) = compile_text("default_action = \"allow\"\n");
        let insns = program.instructions();
        let ld = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
        assert_eq!((insns[0].code, insns[0].k), (ld, OFFSET_ARCH));
        assert_eq!(insns[1].k, native_arch().audit_arch());
        assert_eq!(insns[2].k, libc::SECCOMP_RET_KILL_PROCESS);
        assert_eq!((insns[3].code, insns[3].k), (ld, OFFSET_NR));
        let expected_len = if native_arch() == Arch::X86_64 { 7 } else { 5 };
        assert_eq!(program.len(), expected_len, "{insns:?}");
        assert_eq!(insns[program.len() - 1].k, ALLOW);
        assert!(!program.is_empty());
    }

    /// A handler far longer than 255 instructions is still skipped correctly (the skip is an
    /// unconditional `ja` with a 32-bit offset), and syscalls after it still dispatch.
    #[test]
    fn long_handlers_and_chunks_dispatch_correctly() {
        let mut text = String::from("default_action = \"errno:ENOSYS\"\n");
        for i in 0..20u64 {
            // 16 conditions, 15 of them always true, so each rule is ~70 instructions.
            let mut conditions = vec![format!("{{ index = 0, op = \"eq\", value = {i} }}")];
            for j in 1..16u64 {
                conditions.push(format!(
                    "{{ index = {}, op = \"ne\", value = {} }}",
                    j % 6,
                    1_000_000 + j
                ));
            }
            text.push_str(&format!(
                "[[rule]]\nwhy = \"r{i}\"\naction = \"errno:E2BIG\"\nsyscalls = [\"read\"]\nargs = [{}]\n",
                conditions.join(", ")
            ));
        }
        text.push_str(
            "[[rule]]\nwhy = \"w\"\naction = \"errno:EACCES\"\nsyscalls = [\"write\"]\n\
             args = [{ index = 0, op = \"eq\", value = 3 }]\n",
        );
        // More than one chunk of plain syscalls with the same action.
        let plain: Vec<String> = syscalls::native_table()
            .into_iter()
            .map(|(name, _)| name)
            .filter(|name| *name != "read" && *name != "write")
            .take(CHUNK * 2 + 3)
            .map(|name| format!("\"{name}\""))
            .collect();
        text.push_str(&format!(
            "[[rule]]\nwhy = \"plain\"\naction = \"allow\"\nsyscalls = [{}]\n",
            plain.join(", ")
        ));
        let (policy, program) = compile_text(&text);
        assert!(program.len() > 1000, "{}", program.len());
        let e2big = libc::SECCOMP_RET_ERRNO | libc::E2BIG as u32;
        let read = |a0: u64| {
            run(
                program.instructions(),
                &SeccompData::native(nr("read"), [a0, 0, 0, 0, 0, 0]),
            )
        };
        assert_eq!(read(0), e2big);
        assert_eq!(read(19), e2big);
        assert_eq!(read(20), libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32);
        let write = |a0: u64| {
            run(
                program.instructions(),
                &SeccompData::native(nr("write"), [a0, 0, 0, 0, 0, 0]),
            )
        };
        assert_eq!(write(3), libc::SECCOMP_RET_ERRNO | libc::EACCES as u32);
        for (name, number) in syscalls::native_table() {
            let data = SeccompData::native(number, [3, 1_000_001, 0, 0, 0, 0]);
            assert_eq!(
                run(program.instructions(), &data),
                reference(&policy, &data),
                "{name}"
            );
        }
    }

    #[test]
    fn too_long_programs_are_refused() {
        let mut text = String::from("default_action = \"errno:ENOSYS\"\n");
        for i in 0..70u64 {
            let conditions: Vec<String> = (0..16u64)
                .map(|j| {
                    format!(
                        "{{ index = {}, op = \"eq\", value = {} }}",
                        j % 6,
                        i * 100 + j
                    )
                })
                .collect();
            text.push_str(&format!(
                "[[rule]]\nwhy = \"r{i}\"\naction = \"allow\"\nsyscalls = [\"read\"]\nargs = [{}]\n",
                conditions.join(", ")
            ));
        }
        let policy = SeccompPolicy::parse(&text, "test").expect("valid profile");
        match policy.compile() {
            Err(SeccompError::ProgramTooLong { len, max }) => {
                assert!(len > max);
                assert_eq!(max, MAX_INSTRUCTIONS);
            }
            other => panic!("expected ProgramTooLong, got {other:?}"),
        }
    }

    #[test]
    fn assembler_refuses_long_conditional_jumps() {
        let mut asm = Assembler::with_capacity(300);
        let far = asm.label();
        asm.jump(Jump::Eq, 0, Target::Label(far), Target::Next);
        for _ in 0..256 {
            asm.ret(0);
        }
        asm.bind(far);
        asm.ret(0);
        assert!(matches!(
            asm.finish(),
            Err(SeccompError::CompilerBug { .. })
        ));

        let mut asm = Assembler::with_capacity(300);
        let near = asm.label();
        asm.jump(Jump::Eq, 0, Target::Label(near), Target::Next);
        for _ in 0..255 {
            asm.ret(0);
        }
        asm.bind(near);
        asm.ret(1);
        let prog = asm.finish().expect("255 fits");
        assert_eq!(prog[0].jt, 255);

        let mut asm = Assembler::with_capacity(300);
        let unbound = asm.label();
        asm.goto(unbound);
        assert!(matches!(
            asm.finish(),
            Err(SeccompError::CompilerBug { .. })
        ));
    }

    /// Random policies (through the parser) against random and boundary inputs: the compiled
    /// program must agree with the rules evaluated directly.
    #[test]
    fn random_policies_match_the_reference() {
        let mut seed: u64 = 0x243F_6A88_85A3_08D3;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let names = [
            "read", "write", "ioctl", "socket", "clone", "openat", "mmap", "kill",
        ];
        let ops = ["eq", "ne", "lt", "le", "gt", "ge", "masked_eq"];
        let actions = [
            "allow",
            "kill",
            "errno:EPERM",
            "errno:EACCES",
            "errno:ENOSYS",
        ];
        let pick = |r: u64, n: usize| (r % n as u64) as usize;
        for _ in 0..150 {
            let mut text = format!(
                "default_action = \"{}\"\n",
                actions[pick(next(), actions.len())]
            );
            let mut closed: Vec<&str> = Vec::new();
            for _ in 0..(1 + pick(next(), 8)) {
                let open: Vec<&str> = names
                    .iter()
                    .copied()
                    .filter(|n| !closed.contains(n))
                    .collect();
                if open.is_empty() {
                    break;
                }
                let count = 1 + pick(next(), 3.min(open.len()));
                let start = pick(next(), open.len());
                let chosen: Vec<&str> =
                    (0..count).map(|k| open[(start + k) % open.len()]).collect();
                let unconditional = pick(next(), 4) == 0;
                let mut rule = format!(
                    "[[rule]]\nwhy = \"r\"\naction = \"{}\"\nsyscalls = [{}]\n",
                    actions[pick(next(), actions.len())],
                    chosen
                        .iter()
                        .map(|n| format!("\"{n}\""))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                if unconditional {
                    closed.extend(&chosen);
                } else {
                    let mut conditions = Vec::new();
                    for _ in 0..(1 + pick(next(), 3)) {
                        let op = ops[pick(next(), ops.len())];
                        let value = BOUNDARY[pick(next(), BOUNDARY.len())];
                        let index = pick(next(), 6);
                        if op == "masked_eq" {
                            let mask = BOUNDARY[pick(next(), BOUNDARY.len())] | 1;
                            conditions.push(format!(
                                "{{ index = {index}, op = \"masked_eq\", mask = \"{mask:#x}\", value = \"{:#x}\" }}",
                                value & mask
                            ));
                        } else {
                            conditions.push(format!(
                                "{{ index = {index}, op = \"{op}\", value = \"{value:#x}\" }}"
                            ));
                        }
                    }
                    rule.push_str(&format!("args = [{}]\n", conditions.join(", ")));
                }
                text.push_str(&rule);
            }
            let (policy, program) = compile_text(&text);
            for _ in 0..300 {
                let number = nr(names[pick(next(), names.len())]);
                let mut args = [0u64; 6];
                for arg in &mut args {
                    *arg = if next() % 2 == 0 {
                        BOUNDARY[pick(next(), BOUNDARY.len())]
                    } else {
                        next()
                    };
                }
                let data = SeccompData::native(number, args);
                let got = run(program.instructions(), &data);
                let expected = reference(&policy, &data);
                assert_eq!(got, expected, "{text}\nnr {number} args {args:#x?}");
            }
        }
    }
}
