//! Validated policy → classic BPF program for `seccomp(SECCOMP_SET_MODE_FILTER)`.
//!
//! Owns: the program layout and a tiny assembler with forward labels.
//! Must not: interpret profile text or make policy decisions; the only policy here is the
//! fixed prologue (wrong architecture or x32 → kill), which no profile may weaken.
//!
//! # Program layout
//!
//! 1. `A = arch`; not the native `AUDIT_ARCH_*` → `KILL_PROCESS`. A syscall entered through
//!    another ABI (i386 `int 0x80`, arm32 compat) has different numbers and would otherwise
//!    be judged by the wrong table (the classic 32-bit `socketcall` bypass).
//! 2. `A = nr`; on x86_64, `nr >= 0x40000000` (`__X32_SYSCALL_BIT`) → `KILL_PROCESS`. x32
//!    syscalls report the x86_64 arch value, so only the number tells them apart.
//! 3. Dispatch: a balanced binary search on `nr`. The compiler first cuts all numbers
//!    `0..=u32::MAX` into [`Range`]s of consecutive numbers with the same [`Outcome`]: a
//!    syscall decided without looking at arguments has its action, a syscall with argument
//!    conditions has its handler (step 4), and every number no rule names (the gaps between
//!    listed numbers and everything above the highest one) has `default_action`. Neighbours
//!    with the same outcome merge, so the search compares against range boundaries, not
//!    against every syscall. Each node of the search tree is `jge start_of_upper_half`; a
//!    half that is a single range is a jump into the *target table* right after the tree:
//!    one `ret ACTION` per distinct action and one `ja handler` per distinct handler. With
//!    `R` ranges every syscall number costs at most ⌈log2 R⌉ `jge`s and one `ret` (plus a
//!    `ja` into its handler) after the prologue.
//! 4. Handlers, one per distinct list of rules (syscalls named by exactly the same rules
//!    share one). A handler tries its rules in file order: each condition jumps to the next
//!    rule when it fails; a rule whose conditions all hold returns its action; after the last
//!    rule, `ret default_action`.
//!
//! For example, on x86_64, `default_action = "errno:ENOSYS"` with three rules: `ioctl`
//! (16) with `args[1] & 0xffffffff == TIOCSTI` → `errno:EPERM`; `ioctl`, `read` (0) and
//! `write` (1) → `allow`; `mount` (165) → `errno:EPERM`. The ranges are 0–1 allow,
//! 2–15 default, 16 handler, 17–164 default, 165 EPERM, 166– default:
//!
//! ```text
//!         ld  [4]                 ; arch                              (1)
//!         jeq #0xc000003e, +1, 0  ; AUDIT_ARCH_X86_64
//!         ret #KILL_PROCESS
//!         ld  [0]                 ; nr                                (2)
//!         jge #0x40000000, 0, +1
//!         ret #KILL_PROCESS
//!         jge #17, upper, lower                                       (3) tree
//! lower:  jge #2, l2, allow
//! l2:     jge #16, ioctl, enosys
//! upper:  jge #165, u2, enosys
//! u2:     jge #166, enosys, eperm
//! allow:  ret #ALLOW                                                  (3) table
//! enosys: ret #ERRNO(ENOSYS)
//! ioctl:  ja  h0
//! eperm:  ret #ERRNO(EPERM)
//! h0:     ld  [24]                ; args[1], low word                 (4) handlers
//!         jeq #0x5412, 0, +1
//!         ret #ERRNO(EPERM)
//!         ret #ALLOW
//! ```
//!
//! The accumulator holds `nr` throughout steps 2–3. Only handlers load arguments, and a
//! handler is entered, never left, so it need not restore `A`.
//!
//! # Jump offsets
//!
//! Conditional jumps have 8-bit offsets, `ja` a 32-bit one, and the assembler refuses any
//! offset that does not fit instead of truncating it. A search tree and its target table form
//! a *block*; in a block of at most [`MAX_BLOCK`] instructions every jump is short, because
//! they all go forward within the block. A set of ranges too large for one block (hundreds of
//! alternating outcomes; the default profile needs one block) is split in two with
//! `jge mid ? 0 : +1; ja upper; <lower block>; upper: <upper block>`, recursively, each half
//! with its own table. Handlers are reached only through `ja`, so they may be any length;
//! inside one, a failing condition jumps at most over the rest of its rule, which the
//! profile's limit of 16 conditions per rule keeps short.
//!
//! # Why a tree
//!
//! The search reads nothing but `nr` and argument-free outcomes are plain `ret`s, so the
//! kernel's seccomp action cache (Linux 5.11+) learns which syscalls are always allowed and
//! skips the filter for them entirely. To learn it, `seccomp_cache_prepare()` emulates the
//! program once per syscall number when the filter is installed: with a tree that is about
//! `n·log2 R` emulated instructions instead of the `n²/2` of a linear `jeq` chain, and the
//! program is shorter, which also shortens the kernel's checking and JIT.

use super::error::SeccompError;
use super::profile::{Action, Comparison, Condition, Rule};
use super::syscalls::Arch;
use super::SeccompPolicy;

/// The kernel's limit on program length (`BPF_MAXINSNS`).
pub(crate) const MAX_INSTRUCTIONS: usize = 4096;

/// x32 syscalls are x86_64 numbers with this bit set (`__X32_SYSCALL_BIT`).
pub(crate) const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// Longest block (search tree plus target table) whose jumps are all short: its first
/// instruction reaches its last with an offset of 255.
const MAX_BLOCK: usize = 256;

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

    /// A program this compiler produced earlier, stored as (code, jt, jf, k) tuples
    /// (see `precompiled.rs`).
    pub(super) fn from_tuples(tuples: &[(u16, u8, u8, u32)]) -> BpfProgram {
        BpfProgram {
            instructions: tuples
                .iter()
                .map(|&(code, jt, jf, k)| libc::sock_filter { code, jt, jf, k })
                .collect(),
        }
    }
}

/// Compiles `policy` for the native architecture.
pub(super) fn compile(policy: &SeccompPolicy) -> Result<BpfProgram, SeccompError> {
    let arch = Arch::native().ok_or(SeccompError::UnsupportedArchitecture {
        arch: std::env::consts::ARCH,
    })?;
    let dispatch = Dispatch::new(policy);

    let mut asm = Assembler::with_capacity(2 * dispatch.ranges.len() + 16);
    emit_prologue(&mut asm, arch);
    let handlers: Vec<Label> = dispatch.handlers.iter().map(|_| asm.label()).collect();
    emit_block(&mut asm, &dispatch.ranges, &handlers);
    for (rules, &label) in dispatch.handlers.iter().zip(&handlers) {
        asm.bind(label);
        let rules = rules.iter().map(|&index| &policy.rules[index]);
        emit_handler(&mut asm, rules, policy.default_action);
    }

    let instructions = asm.finish()?;
    if instructions.len() > MAX_INSTRUCTIONS {
        return Err(SeccompError::ProgramTooLong {
            len: instructions.len(),
            max: MAX_INSTRUCTIONS,
        });
    }
    Ok(BpfProgram { instructions })
}

/// What the search does with a syscall number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// Return the action; the arguments do not matter.
    Ret(Action),
    /// Enter handler `n` of [`Dispatch::handlers`], which looks at the arguments.
    Handler(usize),
}

/// Numbers from `start` up to the next range's `start` (or `u32::MAX`) share `outcome`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Range {
    start: u32,
    outcome: Outcome,
}

/// The policy as the search sees it (step 3 of the layout).
#[derive(Debug)]
struct Dispatch {
    /// Sorted by `start`, the first starting at 0, neighbours with different outcomes: a
    /// partition of all `u32` syscall numbers.
    ranges: Vec<Range>,
    /// For each handler, the indices of its rules in file order.
    handlers: Vec<Vec<usize>>,
}

impl Dispatch {
    fn new(policy: &SeccompPolicy) -> Self {
        // (syscall, rule index) for every name in every rule, sorted: each syscall's rules
        // end up adjacent and in file order.
        let mut pairs: Vec<(u32, usize)> = Vec::with_capacity(512);
        for (index, rule) in policy.rules.iter().enumerate() {
            pairs.extend(rule.syscalls.iter().map(|&nr| (nr, index)));
        }
        pairs.sort_unstable();

        let default = Outcome::Ret(policy.default_action);
        let mut dispatch = Dispatch {
            ranges: Vec::with_capacity(2 * pairs.len() + 1),
            handlers: Vec::new(),
        };
        // The first number no range covers yet; u64 so that it can pass u32::MAX.
        let mut uncovered: u64 = 0;
        for group in pairs.chunk_by(|a, b| a.0 == b.0) {
            let nr = group[0].0;
            let outcome = match group {
                [(_, index)] if policy.rules[*index].conditions.is_empty() => {
                    Outcome::Ret(policy.rules[*index].action)
                }
                _ => dispatch.handler_for(group.iter().map(|&(_, index)| index).collect()),
            };
            if uncovered < u64::from(nr) {
                dispatch.push(uncovered as u32, default);
            }
            dispatch.push(nr, outcome);
            uncovered = u64::from(nr) + 1;
        }
        if let Ok(start) = u32::try_from(uncovered) {
            dispatch.push(start, default);
        }
        dispatch
    }

    /// The handler for syscalls named by exactly `rules`, shared when one already exists.
    fn handler_for(&mut self, rules: Vec<usize>) -> Outcome {
        let index = match self.handlers.iter().position(|known| *known == rules) {
            Some(index) => index,
            None => {
                self.handlers.push(rules);
                self.handlers.len() - 1
            }
        };
        Outcome::Handler(index)
    }

    /// Appends a range starting at `start`, or extends the last one if it has `outcome`.
    fn push(&mut self, start: u32, outcome: Outcome) {
        if self.ranges.last().map(|last| last.outcome) != Some(outcome) {
            self.ranges.push(Range { start, outcome });
        }
    }
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

/// Step 3 of the layout: sends `A = nr`, which lies within `ranges` (at least one), to its
/// range's outcome. Every path out of a block ends in a `ret` or a `ja`, so blocks and
/// handlers can follow each other in any order.
fn emit_block(asm: &mut Assembler, ranges: &[Range], handlers: &[Label]) {
    // The block's distinct outcomes, in order of first use, and each range's slot among them.
    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut slots: Vec<usize> = Vec::with_capacity(ranges.len());
    for range in ranges {
        let slot = match outcomes.iter().position(|&known| known == range.outcome) {
            Some(slot) => slot,
            None => {
                outcomes.push(range.outcome);
                outcomes.len() - 1
            }
        };
        slots.push(slot);
    }
    // One `jge` per boundary between ranges, then the table.
    if ranges.len() - 1 + outcomes.len() > MAX_BLOCK {
        // Too large for short jumps: one node whose far side is a `ja`, then two blocks.
        let (lower, upper) = ranges.split_at(ranges.len() / 2);
        let (lower_label, upper_label) = (asm.label(), asm.label());
        asm.jump(
            Jump::Ge,
            upper[0].start,
            Target::Next,
            Target::Label(lower_label),
        );
        asm.goto(upper_label);
        asm.bind(lower_label);
        emit_block(asm, lower, handlers);
        asm.bind(upper_label);
        emit_block(asm, upper, handlers);
        return;
    }

    let table: Vec<Label> = outcomes.iter().map(|_| asm.label()).collect();
    let leaves: Vec<(u32, Label)> = ranges
        .iter()
        .zip(&slots)
        .map(|(range, &slot)| (range.start, table[slot]))
        .collect();
    emit_tree(asm, &leaves);
    for (outcome, label) in outcomes.into_iter().zip(table) {
        asm.bind(label);
        match outcome {
            Outcome::Ret(action) => asm.ret(action.ret_value()),
            Outcome::Handler(index) => asm.goto(handlers[index]),
        }
    }
}

/// The search tree over `leaves`, each a range's start and the label of its outcome: a node
/// is `jge start_of_upper_half`, and a half that is a single range jumps straight to that
/// range's label. Emits nothing for a single range, whose label the caller binds next.
fn emit_tree(asm: &mut Assembler, leaves: &[(u32, Label)]) {
    if leaves.len() < 2 {
        return;
    }
    let (lower, upper) = leaves.split_at(leaves.len() / 2);
    let mut subtree = |half: &[(u32, Label)]| match half {
        [(_, leaf)] => *leaf,
        _ => asm.label(),
    };
    let (lower_label, upper_label) = (subtree(lower), subtree(upper));
    asm.jump(
        Jump::Ge,
        upper[0].0,
        Target::Label(upper_label),
        Target::Label(lower_label),
    );
    if lower.len() > 1 {
        asm.bind(lower_label);
        emit_tree(asm, lower);
    }
    if upper.len() > 1 {
        asm.bind(upper_label);
        emit_tree(asm, upper);
    }
}

/// Step 4 of the layout: a handler for the syscalls named by exactly `rules`. Entered only
/// through `ja` from a target table.
fn emit_handler<'a>(asm: &mut Assembler, rules: impl Iterator<Item = &'a Rule>, default: Action) {
    for rule in rules {
        if rule.conditions.is_empty() {
            // Always holds, so the default cannot be reached (nor any later rule, which the
            // profile parser refuses).
            asm.ret(rule.action.ret_value());
            return;
        }
        let next_rule = asm.label();
        for condition in &rule.conditions {
            emit_condition(asm, condition, next_rule);
        }
        asm.ret(rule.action.ret_value());
        asm.bind(next_rule);
    }
    asm.ret(default.ret_value());
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
        check, describe, native_arch, reference, run, trace, SeccompData,
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

    /// A handler far longer than 255 instructions is reached through a `ja` (32-bit offset)
    /// from the target table, and the syscalls placed after it still dispatch.
    #[test]
    fn long_handlers_and_many_syscalls_dispatch_correctly() {
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
        // Many plain syscalls with the same action.
        let plain: Vec<String> = syscalls::native_table()
            .into_iter()
            .map(|(name, _)| name)
            .filter(|name| *name != "read" && *name != "write")
            .take(259)
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

    /// Instructions of the prologue a native syscall executes: `ld arch; jeq; ld nr` and,
    /// on x86_64, the x32 `jge`.
    fn prologue_steps() -> usize {
        if native_arch() == Arch::X86_64 {
            4
        } else {
            3
        }
    }

    fn ceil_log2(n: usize) -> usize {
        n.next_power_of_two().trailing_zeros() as usize
    }

    /// Every number in 0..=1100, both neighbours of every number the policy names (where
    /// ranges begin and end), and the edges of the number space: 0, `u32::MAX`, and around
    /// the x32 bit and the sign bit of the kernel's `int nr`.
    fn probe_numbers(policy: &SeccompPolicy) -> Vec<u32> {
        let mut numbers: Vec<u32> = (0..=1100).collect();
        for rule in &policy.rules {
            for &nr in &rule.syscalls {
                numbers.extend([nr.saturating_sub(1), nr, nr.saturating_add(1)]);
            }
        }
        numbers.extend([
            X32_SYSCALL_BIT - 2,
            X32_SYSCALL_BIT - 1,
            X32_SYSCALL_BIT,
            0x7fff_ffff,
            0x8000_0000,
            u32::MAX - 1,
            u32::MAX,
        ]);
        numbers.sort_unstable();
        numbers.dedup();
        numbers
    }

    /// The compiled program agrees with the rules for every probe number and argument vector.
    fn assert_matches_everywhere(policy: &SeccompPolicy, program: &BpfProgram, args: &[[u64; 6]]) {
        for nr in probe_numbers(policy) {
            for args in args {
                let data = SeccompData::native(nr, *args);
                let got = run(program.instructions(), &data);
                let expected = reference(policy, &data);
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

    fn default_policy() -> SeccompPolicy {
        SeccompPolicy::builtin("default").expect("default profile parses")
    }

    #[test]
    fn ranges_partition_the_numbers_and_merge_equal_neighbours() {
        // read/write and pread64/pwrite64 are adjacent pairs, with a gap between the pairs,
        // on every supported architecture. Neighbours with the same action merge, the
        // errno:ENOSYS rule for getpid merges with the default around it, and the two syscalls
        // named by the same conditional rule share one handler.
        let text = "default_action = \"errno:ENOSYS\"\n\
            [[rule]]\nwhy = \"c\"\naction = \"allow\"\nsyscalls = [\"pread64\", \"pwrite64\"]\n\
            args = [{ index = 0, op = \"eq\", value = 1 }]\n\
            [[rule]]\nwhy = \"a\"\naction = \"allow\"\nsyscalls = [\"read\", \"write\"]\n\
            [[rule]]\nwhy = \"n\"\naction = \"errno:ENOSYS\"\nsyscalls = [\"getpid\"]\n";
        let (policy, program) = compile_text(text);
        let dispatch = Dispatch::new(&policy);
        let default = Outcome::Ret(policy.default_action);
        let (read, write) = (nr("read"), nr("write"));
        let (pread, pwrite) = (nr("pread64"), nr("pwrite64"));
        assert_eq!((read + 1, pread + 1), (write, pwrite), "numbers assumed");
        assert!(
            write + 1 < pread && pwrite + 1 < nr("getpid"),
            "numbers assumed"
        );
        let range = |start, outcome| Range { start, outcome };
        // x86_64's read is syscall 0, so no default range comes before it there.
        let below_read = (read > 0).then(|| range(0, default));
        let expected: Vec<Range> = below_read
            .into_iter()
            .chain([
                range(read, Outcome::Ret(Action::Allow)),
                range(write + 1, default),
                range(pread, Outcome::Handler(0)),
                range(pwrite + 1, default),
            ])
            .collect();
        assert_eq!(dispatch.ranges, expected);
        assert_eq!(dispatch.handlers, [vec![0]]);
        assert_matches_everywhere(&policy, &program, &[[0; 6], [1; 6]]);
    }

    #[test]
    fn syscalls_with_different_rule_lists_get_their_own_handlers() {
        let text = "default_action = \"errno:EPERM\"\n\
            [[rule]]\nwhy = \"c\"\naction = \"allow\"\nsyscalls = [\"read\", \"write\", \"ioctl\"]\n\
            args = [{ index = 0, op = \"eq\", value = 1 }]\n\
            [[rule]]\nwhy = \"w\"\naction = \"errno:EACCES\"\nsyscalls = [\"write\"]\n\
            args = [{ index = 1, op = \"gt\", value = 5 }]\n\
            [[rule]]\nwhy = \"i\"\naction = \"kill\"\nsyscalls = [\"ioctl\"]\n";
        let (policy, program) = compile_text(text);
        assert_eq!(
            Dispatch::new(&policy).handlers,
            [vec![0], vec![0, 1], vec![0, 2]]
        );
        let mut args = vec![[0; 6], [1; 6], [1, 6, 0, 0, 0, 0], [0, 6, 0, 0, 0, 0]];
        args.push([1 << 32 | 1, 1 << 32, 0, 0, 0, 0]);
        assert_matches_everywhere(&policy, &program, &args);
    }

    #[test]
    fn default_profile_matches_the_rules_for_every_number() {
        let policy = default_policy();
        let program = policy.compile().expect("default profile compiles");
        check(program.instructions());
        let mut args = vec![[0; 6], [u64::MAX; 6], [1 << 32; 6]];
        for value in [
            1,
            2,
            10,
            16,
            0x5412,
            0x541C,
            0x8,
            0x20000,
            0x20008,
            0x7e02_0000,
        ] {
            args.push([value; 6]);
            args.push([value | 1 << 32; 6]);
        }
        assert_matches_everywhere(&policy, &program, &args);
    }

    /// The point of the tree: any syscall number finds its `ret` or handler after the
    /// prologue, ⌈log2 R⌉ `jge`s over the R ranges, and one `ret` or `ja`, where R is at
    /// most twice the number of listed syscalls plus one.
    #[test]
    fn default_profile_dispatch_path_is_logarithmic() {
        let policy = default_policy();
        let program = policy.compile().expect("default profile compiles");
        let listed: std::collections::BTreeSet<u32> = policy
            .rules
            .iter()
            .flat_map(|rule| rule.syscalls.iter().copied())
            .collect();
        let ranges = Dispatch::new(&policy).ranges.len();
        assert!(ranges <= 2 * listed.len() + 1, "{ranges} ranges");
        let bound = prologue_steps() + ceil_log2(ranges) + 1;
        let mut worst = 0;
        for nr in probe_numbers(&policy) {
            let data = SeccompData::native(nr, [0; 6]);
            let path = trace(program.instructions(), &data);
            assert!(path.dispatch <= bound, "nr {nr}: {path:?}, bound {bound}");
            worst = worst.max(path.dispatch);
        }
        // A regression to a linear chain would make this hundreds.
        assert!(worst <= 16, "worst dispatch path {worst} instructions");
    }

    /// Every syscall of the native table with alternating actions gives hundreds of ranges, so
    /// the search no longer fits one block of short jumps: it is split into blocks joined by
    /// `ja`. Behind it, a handler of ~600 instructions, and a second handler that the `ja`s
    /// from the target tables must jump over the first to reach.
    #[test]
    fn search_too_large_for_short_jumps_is_split_into_blocks() {
        let table = syscalls::native_table();
        let names = |parity: u32| -> String {
            table
                .iter()
                .filter(|&&(name, nr)| nr % 2 == parity && name != "read" && name != "write")
                .map(|(name, _)| format!("\"{name}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let conditions: Vec<String> = (0..15u64)
            .map(|j| format!("{{ index = {}, op = \"ne\", value = {} }}", j % 6, 1000 + j))
            .collect();
        let mut text = String::from("default_action = \"errno:ENOSYS\"\n");
        for i in 0..8 {
            text.push_str(&format!(
                "[[rule]]\nwhy = \"long {i}\"\naction = \"errno:E2BIG\"\nsyscalls = [\"read\"]\n\
                 args = [{{ index = 0, op = \"eq\", value = {i} }}, {}]\n",
                conditions.join(", ")
            ));
        }
        text.push_str(
            "[[rule]]\nwhy = \"w\"\naction = \"errno:EACCES\"\nsyscalls = [\"write\"]\n\
             args = [{ index = 0, op = \"eq\", value = 3 }]\n",
        );
        text.push_str(&format!(
            "[[rule]]\nwhy = \"even\"\naction = \"allow\"\nsyscalls = [{}]\n\
             [[rule]]\nwhy = \"odd\"\naction = \"errno:EPERM\"\nsyscalls = [{}]\n",
            names(0),
            names(1)
        ));
        let (policy, program) = compile_text(&text);
        let ranges = Dispatch::new(&policy).ranges;
        assert!(ranges.len() > MAX_BLOCK, "{} ranges", ranges.len());
        let insns = program.instructions();
        let ja = opcode(libc::BPF_JMP | libc::BPF_JA);
        let jge = opcode(libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K);
        // The search starts with a split: `jge mid ? 0 : +1; ja upper`.
        let search = if native_arch() == Arch::X86_64 { 6 } else { 4 };
        assert_eq!(
            (insns[search].code, insns[search].jt, insns[search].jf),
            (jge, 0, 1)
        );
        assert_eq!(insns[search + 1].code, ja);
        let far = insns.iter().filter(|i| i.code == ja && i.k > 255).count();
        assert!(far > 0, "no ja needs more than 8 bits");

        let mut args = vec![[0; 6], [1000, 1001, 1002, 1003, 1004, 1005]];
        for i in 0..9 {
            args.push([i, 1001, 0, 0, 0, 0]);
            args.push([i, 0, 0, 0, 0, 0]);
        }
        assert_matches_everywhere(&policy, &program, &args);
        for nr in probe_numbers(&policy) {
            let path = trace(program.instructions(), &SeccompData::native(nr, [0; 6]));
            // A split is a search node plus at most one `ja` on a path; fewer than 1024
            // ranges split at most twice.
            let bound = prologue_steps() + ceil_log2(ranges.len()) + 1 + 2;
            assert!(path.dispatch <= bound, "nr {nr}: {path:?}, bound {bound}");
        }
    }

    /// Blocks of every size around [`MAX_BLOCK`]: the first `m` syscalls by number, with
    /// alternating actions, for every `m`. The assembler refuses any jump that does not fit,
    /// so a `MAX_BLOCK` too large for the tree's real jump distances fails to compile here.
    #[test]
    fn every_search_size_compiles_and_dispatches() {
        let mut table = syscalls::native_table();
        table.sort_unstable_by_key(|&(_, nr)| nr);
        let mut sizes = std::collections::BTreeSet::new();
        for m in 1..=table.len() {
            let (even, odd): (Vec<_>, Vec<_>) = table[..m]
                .iter()
                .enumerate()
                .map(|(i, (name, _))| (i, format!("\"{name}\"")))
                .partition(|(i, _)| i % 2 == 0);
            let list = |names: Vec<(usize, String)>| {
                names
                    .into_iter()
                    .map(|(_, n)| n)
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let mut text = format!(
                "default_action = \"errno:ENOSYS\"\n\
                 [[rule]]\nwhy = \"e\"\naction = \"allow\"\nsyscalls = [{}]\n",
                list(even)
            );
            if !odd.is_empty() {
                text.push_str(&format!(
                    "[[rule]]\nwhy = \"o\"\naction = \"errno:EPERM\"\nsyscalls = [{}]\n",
                    list(odd)
                ));
            }
            let (policy, program) = compile_text(&text);
            let ranges = Dispatch::new(&policy).ranges.len();
            sizes.insert(ranges);
            let highest = table[m - 1].1;
            for nr in (0..=highest + 1).chain([X32_SYSCALL_BIT - 1]) {
                let data = SeccompData::native(nr, [0; 6]);
                assert_eq!(
                    run(program.instructions(), &data),
                    reference(&policy, &data),
                    "m {m}, nr {nr}"
                );
            }
        }
        // The sweep crossed the limit of one block (up to 3 outcomes in its table).
        assert!(sizes.range(MAX_BLOCK - 8..=MAX_BLOCK - 2).next().is_some());
        assert!(sizes.range(MAX_BLOCK - 1..=MAX_BLOCK + 8).next().is_some());
    }

    /// Random policies over the whole native table: many ranges, plain and conditional
    /// syscalls interleaved, handlers shared and long. Every number is checked.
    #[test]
    fn large_random_policies_match_the_reference_for_every_number() {
        let mut seed: u64 = 0x1319_8A2E_0370_7344;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let pick = |r: u64, n: usize| (r % n as u64) as usize;
        let actions = [
            "allow",
            "kill",
            "errno:EPERM",
            "errno:EACCES",
            "errno:ENOSYS",
        ];
        let ops = ["eq", "ne", "lt", "le", "gt", "ge", "masked_eq"];
        let table = syscalls::native_table();
        let mut split = 0;
        for round in 0..12 {
            // Fewer actions in some rounds make longer runs of one outcome.
            let action_count = 1 + round % actions.len();
            let mut plain: Vec<Vec<&str>> = vec![Vec::new(); action_count];
            let mut conditional: [Vec<&str>; 3] = Default::default();
            for &(name, _) in &table {
                match pick(next(), 8) {
                    0 => {} // not named: default
                    1 | 2 => {
                        // Named by a random non-empty subset of the three conditional rules,
                        // and sometimes by a plain rule after them.
                        let subset = 1 + pick(next(), 7);
                        for (bit, names) in conditional.iter_mut().enumerate() {
                            if subset & (1 << bit) != 0 {
                                names.push(name);
                            }
                        }
                        if next() % 2 == 0 {
                            plain[pick(next(), action_count)].push(name);
                        }
                    }
                    _ => plain[pick(next(), action_count)].push(name),
                }
            }
            let quote = |names: &[&str]| {
                names
                    .iter()
                    .map(|name| format!("\"{name}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let mut text = format!(
                "default_action = \"{}\"\n",
                actions[pick(next(), actions.len())]
            );
            for names in conditional.iter().filter(|names| !names.is_empty()) {
                let count = if next() % 3 == 0 {
                    16
                } else {
                    1 + pick(next(), 3)
                };
                let mut conditions = Vec::new();
                for _ in 0..count {
                    let op = ops[pick(next(), ops.len())];
                    let value = BOUNDARY[pick(next(), BOUNDARY.len())];
                    let index = pick(next(), 6);
                    conditions.push(if op == "masked_eq" {
                        let mask = BOUNDARY[pick(next(), BOUNDARY.len())] | 1;
                        format!(
                            "{{ index = {index}, op = \"masked_eq\", mask = \"{mask:#x}\", value = \"{:#x}\" }}",
                            value & mask
                        )
                    } else {
                        format!("{{ index = {index}, op = \"{op}\", value = \"{value:#x}\" }}")
                    });
                }
                text.push_str(&format!(
                    "[[rule]]\nwhy = \"c\"\naction = \"{}\"\nsyscalls = [{}]\nargs = [{}]\n",
                    actions[pick(next(), actions.len())],
                    quote(names),
                    conditions.join(", ")
                ));
            }
            for (action, names) in actions.iter().zip(&plain) {
                if !names.is_empty() {
                    text.push_str(&format!(
                        "[[rule]]\nwhy = \"p\"\naction = \"{action}\"\nsyscalls = [{}]\n",
                        quote(names)
                    ));
                }
            }
            let (policy, program) = compile_text(&text);
            let dispatch = Dispatch::new(&policy);
            if dispatch.ranges.len() > MAX_BLOCK {
                split += 1;
            }
            let mut args = vec![[0; 6]];
            for _ in 0..5 {
                let mut vector = [0u64; 6];
                for arg in &mut vector {
                    *arg = BOUNDARY[pick(next(), BOUNDARY.len())];
                }
                args.push(vector);
            }
            assert_matches_everywhere(&policy, &program, &args);
        }
        assert!(split > 0, "no round needed more than one block");
    }
}
