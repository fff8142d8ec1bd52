//! Profile text → validated policy.
//!
//! Owns: the TOML schema (strict: unknown keys are errors), action and errno names, argument
//! conditions, and every check that can be made before compiling (names resolve on this
//! architecture, no rule is unreachable, conditions can match).
//! Must not: emit BPF; that is `compile.rs`, which trusts what this file validated.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use super::error::SeccompError;
use super::syscalls::{self, Arch, Lookup};
use super::SeccompPolicy;

/// At most this many conditions per rule. Keeps every conditional jump inside a rule far
/// below classic BPF's 8-bit offset limit (6 instructions per condition at most).
pub(super) const MAX_CONDITIONS_PER_RULE: usize = 16;

/// Syscall arguments are numbered 0..=5 (`seccomp_data.args`).
const MAX_ARG_INDEX: u32 = 5;

// ---------------------------------------------------------------------------------------------
// Validated model (what the compiler consumes)
// ---------------------------------------------------------------------------------------------

/// What the filter returns for a syscall.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Action {
    /// Run the syscall.
    Allow,
    /// Fail the syscall with this errno without running it.
    Errno(u16),
    /// Kill the whole process (SECCOMP_RET_KILL_PROCESS), as if by an uncatchable SIGSYS.
    KillProcess,
}

impl Action {
    /// The `SECCOMP_RET_*` value the filter returns.
    pub(crate) fn ret_value(self) -> u32 {
        match self {
            Action::Allow => libc::SECCOMP_RET_ALLOW,
            Action::Errno(errno) => libc::SECCOMP_RET_ERRNO | u32::from(errno),
            Action::KillProcess => libc::SECCOMP_RET_KILL_PROCESS,
        }
    }
}

/// How one argument is compared. All comparisons are unsigned and 64-bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Comparison {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    /// `(arg & mask) == value`; `value` has no bits outside `mask` (checked here).
    MaskedEq {
        mask: u64,
    },
}

/// One condition on one syscall argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Condition {
    pub(crate) arg: u8,
    pub(crate) cmp: Comparison,
    pub(crate) value: u64,
}

impl Condition {
    /// The condition evaluated directly, as the reference the compiled program must match.
    #[cfg(test)]
    pub(crate) fn holds(&self, args: &[u64; 6]) -> bool {
        let arg = args[usize::from(self.arg)];
        match self.cmp {
            Comparison::Eq => arg == self.value,
            Comparison::Ne => arg != self.value,
            Comparison::Lt => arg < self.value,
            Comparison::Le => arg <= self.value,
            Comparison::Gt => arg > self.value,
            Comparison::Ge => arg >= self.value,
            Comparison::MaskedEq { mask } => arg & mask == self.value,
        }
    }
}

/// A validated rule: resolved syscall numbers for the native architecture.
#[derive(Clone, Debug)]
pub(crate) struct Rule {
    pub(crate) action: Action,
    /// Native syscall numbers; names absent on this architecture were dropped.
    pub(crate) syscalls: Vec<u32>,
    /// ANDed; empty means "always".
    pub(crate) conditions: Vec<Condition>,
}

// ---------------------------------------------------------------------------------------------
// File schema
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    /// Free text for people; not used by the compiler.
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
    default_action: String,
    #[serde(default, rename = "rule")]
    rules: Vec<RuleFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    why: String,
    action: String,
    #[serde(default)]
    syscalls: Vec<String>,
    #[serde(default)]
    optional_syscalls: Vec<String>,
    #[serde(default)]
    args: Vec<ConditionFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConditionFile {
    index: u32,
    op: OpFile,
    value: ArgValue,
    #[serde(default)]
    mask: Option<ArgValue>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum OpFile {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    MaskedEq,
}

/// A 64-bit argument value. TOML integers are signed 64-bit, so values above `i64::MAX` are
/// written as strings (`"0xfffffffffffbf9ff"`), and a negative integer means its 64-bit two's
/// complement — what the kernel sees when libc passes a negative `int` (e.g. `-100` for
/// AT_FDCWD is 0xffffffffffffff9c).
#[derive(Clone, Copy)]
struct ArgValue(u64);

impl<'de> Deserialize<'de> for ArgValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ArgValueVisitor;

        impl Visitor<'_> for ArgValueVisitor {
            type Value = ArgValue;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an integer, or a string holding a decimal or 0x-prefixed hex u64")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ArgValue, E> {
                // Two's complement on purpose; see the type's docs.
                Ok(ArgValue(v as u64))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ArgValue, E> {
                Ok(ArgValue(v))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<ArgValue, E> {
                let digits = v.replace('_', "");
                let parsed = match digits
                    .strip_prefix("0x")
                    .or_else(|| digits.strip_prefix("0X"))
                {
                    Some(hex) => u64::from_str_radix(hex, 16),
                    None => digits.parse::<u64>(),
                };
                parsed.map(ArgValue).map_err(|_| {
                    E::custom(format!(
                        "`{v}` is not a u64 (write decimal digits or 0x followed by hex digits)"
                    ))
                })
            }
        }

        deserializer.deserialize_any(ArgValueVisitor)
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing and validation
// ---------------------------------------------------------------------------------------------

/// Parses and validates a profile for the native architecture.
pub(super) fn parse(text: &str, origin: &str) -> Result<SeccompPolicy, SeccompError> {
    let arch = Arch::native().ok_or(SeccompError::UnsupportedArchitecture {
        arch: std::env::consts::ARCH,
    })?;
    let file: ProfileFile = toml::from_str(text).map_err(|e| SeccompError::Syntax {
        origin: origin.to_owned(),
        // toml's message spans several lines (a source excerpt); drop the trailing newline.
        message: e.to_string().trim_end().to_owned(),
    })?;

    let default_action = parse_action(&file.default_action, origin, "default_action")?;

    // By syscall id (see `syscalls::Lookup`): the number of the first rule that decides it
    // for every argument, 0 while none has.
    let mut decided_by = vec![0usize; syscalls::table_len()];
    let mut rules = Vec::with_capacity(file.rules.len());
    for (index, raw) in file.rules.iter().enumerate() {
        let number = index + 1;
        rules.push(validate_rule(raw, number, origin, arch, &mut decided_by)?);
    }

    Ok(SeccompPolicy {
        origin: origin.to_owned(),
        default_action,
        rules,
    })
}

fn validate_rule(
    raw: &RuleFile,
    number: usize,
    origin: &str,
    arch: Arch,
    decided_by: &mut [usize],
) -> Result<Rule, SeccompError> {
    if raw.why.trim().is_empty() {
        return Err(SeccompError::MissingWhy {
            origin: origin.to_owned(),
            rule: number,
        });
    }
    let action = parse_action(&raw.action, origin, &format!("rule #{number}"))?;
    if raw.syscalls.is_empty() && raw.optional_syscalls.is_empty() {
        return Err(SeccompError::EmptyRule {
            origin: origin.to_owned(),
            rule: number,
        });
    }

    let mut conditions = Vec::with_capacity(raw.args.len());
    for (index, cond) in raw.args.iter().enumerate() {
        conditions.push(validate_condition(cond, number, index + 1, origin)?);
    }
    if conditions.len() > MAX_CONDITIONS_PER_RULE {
        return Err(SeccompError::InvalidCondition {
            origin: origin.to_owned(),
            rule: number,
            condition: MAX_CONDITIONS_PER_RULE + 1,
            problem: format!(
                "a rule may have at most {MAX_CONDITIONS_PER_RULE} conditions — hint: split it"
            ),
        });
    }

    let listed = raw.syscalls.iter().map(|n| (n, false));
    let optional = raw.optional_syscalls.iter().map(|n| (n, true));
    let mut ids: Vec<usize> = Vec::with_capacity(raw.syscalls.len() + raw.optional_syscalls.len());
    let mut syscalls = Vec::with_capacity(ids.capacity());
    for (name, is_optional) in listed.chain(optional) {
        let (id, native) = resolve(name, is_optional, number, origin, arch)?;
        if ids.contains(&id) {
            return Err(SeccompError::DuplicateSyscall {
                origin: origin.to_owned(),
                rule: number,
                name: name.clone(),
            });
        }
        if decided_by[id] != 0 {
            return Err(SeccompError::UnreachableRule {
                origin: origin.to_owned(),
                rule: number,
                name: name.clone(),
                earlier: decided_by[id],
            });
        }
        ids.push(id);
        syscalls.extend(native);
    }
    if conditions.is_empty() {
        for id in ids {
            decided_by[id] = number;
        }
    }

    Ok(Rule {
        action,
        syscalls,
        conditions,
    })
}

/// The table id of `name` and its native number (`None` for an optional name this
/// architecture lacks).
fn resolve(
    name: &str,
    is_optional: bool,
    rule: usize,
    origin: &str,
    arch: Arch,
) -> Result<(usize, Option<u32>), SeccompError> {
    match syscalls::lookup(name) {
        Lookup::Native {
            everywhere: true, ..
        } if is_optional => Err(SeccompError::NeedlesslyOptional {
            origin: origin.to_owned(),
            rule,
            name: name.to_owned(),
        }),
        Lookup::Native { id, nr, .. } => Ok((id, Some(nr))),
        Lookup::OtherArch { id } if is_optional => Ok((id, None)),
        Lookup::OtherArch { .. } => Err(SeccompError::NotOnThisArch {
            origin: origin.to_owned(),
            rule,
            name: name.to_owned(),
            arch: arch.name(),
        }),
        Lookup::Unknown => Err(SeccompError::UnknownSyscall {
            origin: origin.to_owned(),
            rule,
            name: name.to_owned(),
            hint: unknown_syscall_hint(name),
        }),
    }
}

fn unknown_syscall_hint(name: &str) -> String {
    let closest = syscalls::known_names()
        .map(|known| (edit_distance(name, known), known))
        .min();
    match closest {
        Some((distance, known)) if distance <= 3 => format!("did you mean `{known}`?"),
        _ => "use the kernel's name as in `man 2 syscalls` (for example `openat`, not `open64`)"
            .to_owned(),
    }
}

/// Levenshtein distance, for "did you mean" hints only.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
}

fn validate_condition(
    raw: &ConditionFile,
    rule: usize,
    condition: usize,
    origin: &str,
) -> Result<Condition, SeccompError> {
    let invalid = |problem: String| SeccompError::InvalidCondition {
        origin: origin.to_owned(),
        rule,
        condition,
        problem,
    };
    let arg = match u8::try_from(raw.index) {
        Ok(arg) if u32::from(arg) <= MAX_ARG_INDEX => arg,
        _ => {
            return Err(invalid(format!(
                "argument index {} is out of range — hint: syscalls have arguments 0 to {MAX_ARG_INDEX}",
                raw.index
            )))
        }
    };
    let value = raw.value.0;
    let cmp = match (raw.op, raw.mask) {
        (OpFile::MaskedEq, None) => return Err(invalid(
            "op \"masked_eq\" needs a `mask` — hint: mask = 0xffffffff compares the low 32 bits"
                .to_owned(),
        )),
        (OpFile::MaskedEq, Some(ArgValue(0))) => {
            return Err(invalid(
                "mask 0 makes the condition always true — hint: drop the condition".to_owned(),
            ))
        }
        (OpFile::MaskedEq, Some(ArgValue(mask))) => {
            if value & !mask != 0 {
                return Err(invalid(format!(
                    "value {value:#x} has bits outside mask {mask:#x}, so it can never match — \
                     hint: the value is compared after masking"
                )));
            }
            Comparison::MaskedEq { mask }
        }
        (_, Some(_)) => {
            return Err(invalid(
                "`mask` only applies to op = \"masked_eq\" — hint: remove it".to_owned(),
            ))
        }
        (OpFile::Eq, None) => Comparison::Eq,
        (OpFile::Ne, None) => Comparison::Ne,
        (OpFile::Lt, None) => Comparison::Lt,
        (OpFile::Le, None) => Comparison::Le,
        (OpFile::Gt, None) => Comparison::Gt,
        (OpFile::Ge, None) => Comparison::Ge,
    };
    Ok(Condition { arg, cmp, value })
}

/// `allow`, `kill`, or `errno:NAME`.
fn parse_action(text: &str, origin: &str, place: &str) -> Result<Action, SeccompError> {
    match text {
        "allow" => return Ok(Action::Allow),
        "kill" => return Ok(Action::KillProcess),
        _ => {}
    }
    let Some(name) = text.strip_prefix("errno:") else {
        return Err(SeccompError::UnknownAction {
            origin: origin.to_owned(),
            place: place.to_owned(),
            value: text.to_owned(),
        });
    };
    errno_by_name(name)
        .map(Action::Errno)
        .ok_or_else(|| SeccompError::UnknownErrno {
            origin: origin.to_owned(),
            place: place.to_owned(),
            name: name.to_owned(),
            known: ERRNOS
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// Errnos a profile may return. The ones a denial would plausibly use; extend as needed.
const ERRNOS: &[(&str, libc::c_int)] = &[
    ("EPERM", libc::EPERM),
    ("ENOENT", libc::ENOENT),
    ("ESRCH", libc::ESRCH),
    ("EINTR", libc::EINTR),
    ("EIO", libc::EIO),
    ("ENXIO", libc::ENXIO),
    ("E2BIG", libc::E2BIG),
    ("ENOEXEC", libc::ENOEXEC),
    ("EBADF", libc::EBADF),
    ("ECHILD", libc::ECHILD),
    ("EAGAIN", libc::EAGAIN),
    ("ENOMEM", libc::ENOMEM),
    ("EACCES", libc::EACCES),
    ("EFAULT", libc::EFAULT),
    ("EBUSY", libc::EBUSY),
    ("EEXIST", libc::EEXIST),
    ("EXDEV", libc::EXDEV),
    ("ENODEV", libc::ENODEV),
    ("ENOTDIR", libc::ENOTDIR),
    ("EISDIR", libc::EISDIR),
    ("EINVAL", libc::EINVAL),
    ("ENFILE", libc::ENFILE),
    ("EMFILE", libc::EMFILE),
    ("ENOTTY", libc::ENOTTY),
    ("ETXTBSY", libc::ETXTBSY),
    ("EFBIG", libc::EFBIG),
    ("ENOSPC", libc::ENOSPC),
    ("ESPIPE", libc::ESPIPE),
    ("EROFS", libc::EROFS),
    ("EMLINK", libc::EMLINK),
    ("EPIPE", libc::EPIPE),
    ("ENOSYS", libc::ENOSYS),
    ("ENOTSOCK", libc::ENOTSOCK),
    ("EPROTONOSUPPORT", libc::EPROTONOSUPPORT),
    ("ESOCKTNOSUPPORT", libc::ESOCKTNOSUPPORT),
    ("EOPNOTSUPP", libc::EOPNOTSUPP),
    ("ENOTSUP", libc::ENOTSUP),
    ("EPFNOSUPPORT", libc::EPFNOSUPPORT),
    ("EAFNOSUPPORT", libc::EAFNOSUPPORT),
    ("EADDRNOTAVAIL", libc::EADDRNOTAVAIL),
    ("ENETUNREACH", libc::ENETUNREACH),
    ("ECONNREFUSED", libc::ECONNREFUSED),
    ("EHOSTUNREACH", libc::EHOSTUNREACH),
];

fn errno_by_name(name: &str) -> Option<u16> {
    ERRNOS
        .iter()
        .find(|(n, _)| *n == name)
        .and_then(|(_, value)| u16::try_from(*value).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGIN: &str = "test.toml";

    fn parse_err(text: &str) -> SeccompError {
        match parse(text, ORIGIN) {
            Ok(_) => panic!("profile unexpectedly parsed:\n{text}"),
            Err(e) => e,
        }
    }

    fn one_rule(rule_body: &str) -> String {
        format!("default_action = \"errno:ENOSYS\"\n[[rule]]\nwhy = \"test\"\n{rule_body}\n")
    }

    #[test]
    fn minimal_profile_parses() {
        let policy = parse(
            &one_rule("action = \"allow\"\nsyscalls = [\"read\", \"write\"]"),
            ORIGIN,
        )
        .expect("valid profile");
        assert_eq!(policy.default_action, Action::Errno(libc::ENOSYS as u16));
        assert_eq!(policy.rules.len(), 1);
        assert_eq!(policy.rules[0].syscalls.len(), 2);
        assert_eq!(policy.rules[0].action, Action::Allow);
    }

    #[test]
    fn unknown_top_level_key_is_an_error() {
        let err = parse_err("default_action = \"allow\"\ndefault_acton = \"kill\"\n");
        assert!(matches!(err, SeccompError::Syntax { .. }), "{err}");
        assert!(err.to_string().contains("default_acton"), "{err}");
        assert!(err.to_string().contains(ORIGIN), "{err}");
    }

    #[test]
    fn unknown_rule_key_is_an_error() {
        let err = parse_err(&one_rule(
            "action = \"allow\"\nsyscalls = [\"read\"]\ncomment = \"x\"",
        ));
        assert!(matches!(err, SeccompError::Syntax { .. }), "{err}");
        assert!(err.to_string().contains("comment"), "{err}");
    }

    #[test]
    fn unknown_condition_key_is_an_error() {
        let err = parse_err(&one_rule(
            "action = \"allow\"\nsyscalls = [\"read\"]\nargs = [{ index = 0, op = \"eq\", value = 1, vaule = 2 }]",
        ));
        assert!(matches!(err, SeccompError::Syntax { .. }), "{err}");
    }

    #[test]
    fn missing_default_action_is_an_error() {
        let err = parse_err("[[rule]]\nwhy = \"x\"\naction = \"allow\"\nsyscalls = [\"read\"]\n");
        assert!(matches!(err, SeccompError::Syntax { .. }), "{err}");
        assert!(err.to_string().contains("default_action"), "{err}");
    }

    #[test]
    fn unknown_syscall_is_an_error_with_a_hint() {
        let err = parse_err(&one_rule("action = \"allow\"\nsyscalls = [\"opennat\"]"));
        match &err {
            SeccompError::UnknownSyscall {
                name, rule, hint, ..
            } => {
                assert_eq!(name, "opennat");
                assert_eq!(*rule, 1);
                assert!(hint.contains("openat"), "{hint}");
            }
            other => panic!("wrong error: {other}"),
        }
    }

    #[test]
    fn i386_only_names_are_unknown() {
        // socketcall exists only on 32-bit x86; such processes are killed by the arch check.
        let err = parse_err(&one_rule("action = \"allow\"\nsyscalls = [\"socketcall\"]"));
        assert!(matches!(err, SeccompError::UnknownSyscall { .. }), "{err}");
    }

    #[test]
    fn optional_names_are_checked_too() {
        let err = parse_err(&one_rule(
            "action = \"allow\"\noptional_syscalls = [\"no_such_call\"]",
        ));
        assert!(matches!(err, SeccompError::UnknownSyscall { .. }), "{err}");
        let err = parse_err(&one_rule(
            "action = \"allow\"\noptional_syscalls = [\"read\"]",
        ));
        assert!(
            matches!(err, SeccompError::NeedlesslyOptional { .. }),
            "{err}"
        );
    }

    #[test]
    fn arch_specific_name_must_be_optional() {
        let text = one_rule("action = \"allow\"\nsyscalls = [\"open\"]");
        match Arch::native() {
            Some(Arch::X86_64) => assert!(parse(&text, ORIGIN).is_ok()),
            _ => assert!(matches!(
                parse_err(&text),
                SeccompError::NotOnThisArch { .. }
            )),
        }
        let optional = parse(
            &one_rule("action = \"allow\"\noptional_syscalls = [\"open\"]"),
            ORIGIN,
        )
        .expect("optional arch-specific name");
        let expected = usize::from(Arch::native() == Some(Arch::X86_64));
        assert_eq!(optional.rules[0].syscalls.len(), expected);
    }

    #[test]
    fn bad_errno_is_an_error() {
        let err = parse_err(&one_rule("action = \"errno:EPREM\"\nsyscalls = [\"read\"]"));
        match &err {
            SeccompError::UnknownErrno {
                name, place, known, ..
            } => {
                assert_eq!(name, "EPREM");
                assert_eq!(place, "rule #1");
                assert!(known.contains("EPERM"));
            }
            other => panic!("wrong error: {other}"),
        }
        let err = parse_err("default_action = \"errno:42\"\n");
        assert!(matches!(err, SeccompError::UnknownErrno { .. }), "{err}");
    }

    #[test]
    fn bad_action_is_an_error() {
        for action in ["deny", "errno", "ALLOW", "kill_thread", ""] {
            let err = parse_err(&one_rule(&format!(
                "action = \"{action}\"\nsyscalls = [\"read\"]"
            )));
            assert!(
                matches!(err, SeccompError::UnknownAction { .. }),
                "{action}: {err}"
            );
        }
    }

    #[test]
    fn actions_and_errnos_map_to_seccomp_values() {
        let check = |text: &str, expected: Action| {
            assert_eq!(parse_action(text, ORIGIN, "x").expect(text), expected);
        };
        check("allow", Action::Allow);
        check("kill", Action::KillProcess);
        check("errno:EPERM", Action::Errno(1));
        check("errno:ENOSYS", Action::Errno(38));
        check("errno:EAFNOSUPPORT", Action::Errno(97));
        check("errno:EACCES", Action::Errno(13));
        assert_eq!(Action::Allow.ret_value(), 0x7fff_0000);
        assert_eq!(Action::KillProcess.ret_value(), 0x8000_0000);
        assert_eq!(Action::Errno(1).ret_value(), 0x0005_0001);
    }

    #[test]
    fn bad_op_is_an_error() {
        let err = parse_err(&one_rule(
            "action = \"allow\"\nsyscalls = [\"read\"]\nargs = [{ index = 0, op = \"contains\", value = 1 }]",
        ));
        assert!(matches!(err, SeccompError::Syntax { .. }), "{err}");
        assert!(
            err.to_string().contains("masked_eq"),
            "lists valid ops: {err}"
        );
    }

    #[test]
    fn arg_index_six_is_an_error() {
        let err = parse_err(&one_rule(
            "action = \"allow\"\nsyscalls = [\"read\"]\nargs = [{ index = 6, op = \"eq\", value = 1 }]",
        ));
        match &err {
            SeccompError::InvalidCondition {
                rule,
                condition,
                problem,
                ..
            } => {
                assert_eq!((*rule, *condition), (1, 1));
                assert!(problem.contains("index 6"), "{problem}");
            }
            other => panic!("wrong error: {other}"),
        }
        assert!(parse(
            &one_rule("action = \"allow\"\nsyscalls = [\"read\"]\nargs = [{ index = 5, op = \"eq\", value = 1 }]"),
            ORIGIN
        )
        .is_ok());
    }

    #[test]
    fn mask_rules() {
        let rule = |cond: &str| {
            one_rule(&format!(
                "action = \"allow\"\nsyscalls = [\"ioctl\"]\nargs = [{cond}]"
            ))
        };
        let missing = parse_err(&rule("{ index = 1, op = \"masked_eq\", value = 1 }"));
        assert!(
            matches!(missing, SeccompError::InvalidCondition { .. }),
            "{missing}"
        );
        let stray = parse_err(&rule("{ index = 1, op = \"eq\", value = 1, mask = 1 }"));
        assert!(
            matches!(stray, SeccompError::InvalidCondition { .. }),
            "{stray}"
        );
        let outside = parse_err(&rule(
            "{ index = 1, op = \"masked_eq\", mask = 0xff, value = 0x100 }",
        ));
        assert!(outside.to_string().contains("never match"), "{outside}");
        let zero = parse_err(&rule(
            "{ index = 1, op = \"masked_eq\", mask = 0, value = 0 }",
        ));
        assert!(
            matches!(zero, SeccompError::InvalidCondition { .. }),
            "{zero}"
        );
    }

    #[test]
    fn values_cover_the_full_u64_range() {
        let policy = parse(
            &one_rule(
                "action = \"allow\"\nsyscalls = [\"read\"]\nargs = [\
                 { index = 0, op = \"le\", value = \"0xffff_ffff_ffff_ffff\" },\
                 { index = 1, op = \"ne\", value = -100 },\
                 { index = 2, op = \"ge\", value = \"18446744073709551615\" },\
                 { index = 3, op = \"lt\", value = 0x7fffffffffffffff }]",
            ),
            ORIGIN,
        )
        .expect("valid values");
        let values: Vec<u64> = policy.rules[0].conditions.iter().map(|c| c.value).collect();
        assert_eq!(
            values,
            vec![u64::MAX, 0xffff_ffff_ffff_ff9c, u64::MAX, i64::MAX as u64]
        );
        let err = parse_err(&one_rule(
            "action = \"allow\"\nsyscalls = [\"read\"]\nargs = [{ index = 0, op = \"eq\", value = \"0x1_0000_0000_0000_0000\" }]",
        ));
        assert!(matches!(err, SeccompError::Syntax { .. }), "{err}");
    }

    #[test]
    fn rule_shape_errors() {
        let err = parse_err(&one_rule("action = \"allow\""));
        assert!(
            matches!(err, SeccompError::EmptyRule { rule: 1, .. }),
            "{err}"
        );
        let err = parse_err(
            "default_action = \"allow\"\n[[rule]]\nwhy = \"  \"\naction = \"allow\"\nsyscalls = [\"read\"]\n",
        );
        assert!(
            matches!(err, SeccompError::MissingWhy { rule: 1, .. }),
            "{err}"
        );
        let err = parse_err(
            "default_action = \"allow\"\n[[rule]]\naction = \"allow\"\nsyscalls = [\"read\"]\n",
        );
        assert!(
            matches!(err, SeccompError::Syntax { .. }),
            "why is required: {err}"
        );
        let err = parse_err(&one_rule(
            "action = \"allow\"\nsyscalls = [\"read\", \"read\"]",
        ));
        assert!(
            matches!(err, SeccompError::DuplicateSyscall { .. }),
            "{err}"
        );
        let many = vec!["{ index = 0, op = \"ne\", value = 1 }"; MAX_CONDITIONS_PER_RULE + 1];
        let err = parse_err(&one_rule(&format!(
            "action = \"allow\"\nsyscalls = [\"read\"]\nargs = [{}]",
            many.join(", ")
        )));
        assert!(
            matches!(err, SeccompError::InvalidCondition { .. }),
            "{err}"
        );
    }

    #[test]
    fn rule_after_an_unconditional_one_is_unreachable() {
        let text = "default_action = \"allow\"\n\
            [[rule]]\nwhy = \"a\"\naction = \"allow\"\nsyscalls = [\"read\", \"ioctl\"]\n\
            [[rule]]\nwhy = \"b\"\naction = \"errno:EPERM\"\nsyscalls = [\"ioctl\"]\n\
            args = [{ index = 1, op = \"masked_eq\", mask = 0xffffffff, value = 0x5412 }]\n";
        match parse_err(text) {
            SeccompError::UnreachableRule {
                rule,
                earlier,
                name,
                ..
            } => {
                assert_eq!((rule, earlier, name.as_str()), (2, 1, "ioctl"));
            }
            other => panic!("wrong error: {other}"),
        }
        // The other order is the intended way to write it.
        let ok = "default_action = \"allow\"\n\
            [[rule]]\nwhy = \"b\"\naction = \"errno:EPERM\"\nsyscalls = [\"ioctl\"]\n\
            args = [{ index = 1, op = \"masked_eq\", mask = 0xffffffff, value = 0x5412 }]\n\
            [[rule]]\nwhy = \"a\"\naction = \"allow\"\nsyscalls = [\"read\", \"ioctl\"]\n";
        assert!(parse(ok, ORIGIN).is_ok());
    }

    #[test]
    fn errors_name_the_origin() {
        let err = match parse("default_action = 3", "/etc/nsbox/custom.toml") {
            Ok(_) => panic!("parsed"),
            Err(e) => e,
        };
        assert!(
            err.to_string().starts_with("/etc/nsbox/custom.toml:"),
            "{err}"
        );
    }

    #[test]
    fn edit_distance_basics() {
        assert_eq!(edit_distance("openat", "openat"), 0);
        assert_eq!(edit_distance("opennat", "openat"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
    }
}
