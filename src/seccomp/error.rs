//! The one error type of the seccomp module. Every variant names what failed and, where the
//! user can fix it, says how. `origin` is the profile's path or `builtin:NAME`.

/// Why a seccomp profile could not be loaded or compiled.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The TOML itself is malformed, or has a key/type the format does not know.
    #[error("{origin}: invalid seccomp profile: {message}")]
    Syntax { origin: String, message: String },

    /// `SeccompPolicy::builtin` was asked for a profile that is not compiled in.
    #[error(
        "no built-in seccomp profile named `{name}` — hint: built-in profiles are: {available}"
    )]
    UnknownBuiltin { name: String, available: String },

    /// A rule names a syscall no supported architecture has.
    #[error("{origin}: rule #{rule}: unknown syscall `{name}` — hint: {hint}")]
    UnknownSyscall {
        origin: String,
        rule: usize,
        name: String,
        hint: String,
    },

    /// A rule lists, under `syscalls`, a name that exists only on other architectures.
    #[error(
        "{origin}: rule #{rule}: syscall `{name}` does not exist on {arch} — hint: move it to \
         `optional_syscalls` if it only exists on some architectures"
    )]
    NotOnThisArch {
        origin: String,
        rule: usize,
        name: String,
        arch: &'static str,
    },

    /// A name under `optional_syscalls` exists everywhere, so marking it optional only hides
    /// a mistake.
    #[error(
        "{origin}: rule #{rule}: `{name}` exists on every supported architecture — hint: list \
         it under `syscalls`, not `optional_syscalls`"
    )]
    NeedlesslyOptional {
        origin: String,
        rule: usize,
        name: String,
    },

    /// The same name appears twice in one rule.
    #[error("{origin}: rule #{rule}: syscall `{name}` is listed twice — hint: remove one")]
    DuplicateSyscall {
        origin: String,
        rule: usize,
        name: String,
    },

    /// A rule can never match because an earlier rule decides the syscall unconditionally.
    #[error(
        "{origin}: rule #{rule} can never match `{name}`: rule #{earlier} already decides it \
         for every argument — hint: rules are tried in file order; move the rule with `args` \
         before the one without"
    )]
    UnreachableRule {
        origin: String,
        rule: usize,
        name: String,
        earlier: usize,
    },

    /// A rule without any syscall name.
    #[error("{origin}: rule #{rule} names no syscall — hint: add `syscalls = [\"...\"]`")]
    EmptyRule { origin: String, rule: usize },

    /// A rule without a reason. Policy is reviewed by people; every entry says why.
    #[error("{origin}: rule #{rule} has an empty `why` — hint: say why this rule exists")]
    MissingWhy { origin: String, rule: usize },

    /// An action string that is not `allow`, `kill` or `errno:NAME`.
    #[error(
        "{origin}: {place}: unknown action `{value}` — hint: use \"allow\", \"kill\" or \
         \"errno:NAME\" (for example \"errno:EPERM\")"
    )]
    UnknownAction {
        origin: String,
        place: String,
        value: String,
    },

    /// `errno:NAME` with a name nsbox does not know.
    #[error("{origin}: {place}: unknown errno `{name}` — hint: use one of {known}")]
    UnknownErrno {
        origin: String,
        place: String,
        name: String,
        known: String,
    },

    /// An argument condition that cannot be compiled as written.
    #[error("{origin}: rule #{rule}: condition #{condition}: {problem}")]
    InvalidCondition {
        origin: String,
        rule: usize,
        condition: usize,
        problem: String,
    },

    /// The host architecture has no syscall table in nsbox.
    #[error(
        "seccomp filters are not supported on {arch} — hint: nsbox supports x86_64 and aarch64"
    )]
    UnsupportedArchitecture { arch: &'static str },

    /// The compiled program exceeds the kernel's limit (BPF_MAXINSNS).
    #[error(
        "compiled seccomp program has {len} instructions, the kernel accepts at most {max} — \
         hint: merge rules or drop argument conditions"
    )]
    ProgramTooLong { len: usize, max: usize },

    /// The compiler produced a jump it cannot encode (for example a conditional jump longer
    /// than classic BPF's 8-bit offset). Every conditional jump is local by construction, so
    /// this is a bug in nsbox, not in the profile; it is reported instead of truncated.
    #[error("internal error in the seccomp compiler (a bug in nsbox, please report it): {detail}")]
    CompilerBug { detail: String },
}
