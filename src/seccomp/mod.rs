//! Seccomp: nsbox's syscall policy, as data, compiled to classic BPF in pure Rust.
//!
//! Owns: the profile format (`profiles/seccomp/*.toml`), the built-in profiles, the syscall
//! name table, the compiler from a validated [`SeccompPolicy`] to a [`BpfProgram`], and the
//! built-in default compiled ahead of time (`precompiled.rs`, generated; a test fails when it
//! is stale), so a sandbox start neither parses nor compiles it.
//! Must not: install anything or touch the process. That is [`crate::sys::seccomp`], called
//! once by the sandbox's init after it dropped every privilege and set `PR_SET_NO_NEW_PRIVS`,
//! as the last step of setup; the workload inherits the filter through fork (see
//! `docs/setup-order.md`). Nor use `unsafe`, or link libseccomp (1.2–1.5 ms per filter; this
//! compiler targets < 50 µs).
//!
//! # Profile format
//!
//! ```toml
//! description = "optional free text"
//! default_action = "errno:ENOSYS"      # for syscalls no rule matches
//!
//! [[rule]]
//! why = "terminal injection: TIOCSTI pushes input into the controlling terminal"
//! action = "errno:EPERM"               # "allow" | "kill" | "errno:NAME"
//! syscalls = ["ioctl"]                 # must exist on the build's architecture
//! optional_syscalls = []               # names only some architectures have; skipped elsewhere
//! args = [{ index = 1, op = "masked_eq", mask = 0xffffffff, value = 0x5412 }]
//! ```
//!
//! Every key is checked: an unknown key, syscall name, errno or operator is an error that
//! names the file, the line or the rule (`rule #N`, counting from 1 in file order), and a fix.
//!
//! - `action`: `allow`; `kill` (`SECCOMP_RET_KILL_PROCESS`: the whole process dies of
//!   SIGSYS); `errno:NAME` (the syscall fails with that errno and does not run).
//! - `args`: conditions on the syscall's arguments 0–5, all of which must hold (AND). `op` is
//!   `eq ne lt le gt ge` (unsigned, on the full 64-bit register) or `masked_eq`
//!   (`(arg & mask) == value`). The kernel truncates many arguments to 32 bits (`ioctl`'s
//!   `cmd`, `personality`, every `int`), so a *deny* rule on such an argument must use
//!   `masked_eq` with `mask = 0xffffffff`: a 64-bit equality test is bypassed by setting high
//!   bits the kernel ignores. An *allow* rule with a 64-bit `eq` fails closed instead.
//!   Values are TOML integers (a negative one means its 64-bit two's complement, as a
//!   sign-extended `int`) or strings for values above `i64::MAX` (`"0xfffffffffffbf9ff"`).
//! - `syscalls` / `optional_syscalls`: kernel names (`openat`, not `open64`). A name in
//!   `syscalls` must exist on the architecture nsbox was built for; a name that only some
//!   supported architectures have (x86_64's `open`, `fork`, ...) goes in `optional_syscalls`
//!   and is skipped where it does not exist. Names must be known on some architecture and
//!   `optional_syscalls` may not hold names every architecture has, so typos cannot hide.
//!
//! # Semantics
//!
//! For a syscall, the rules that name it are tried in file order; the first rule whose
//! conditions all hold gives the action (a rule without `args` always holds). If none does,
//! `default_action` applies. A rule that can never be reached because an earlier rule names
//! the same syscall without `args` is an error, so write narrow rules before broad ones.
//!
//! Before any rule, the compiled filter kills the process for a syscall made through a
//! non-native ABI (i386 `int 0x80`, arm32 compat) and, on x86_64, for x32 syscall numbers
//! (bit `0x40000000`). Profiles cannot change this. See `compile.rs` for the program layout.

mod compile;
mod error;
mod precompiled;
mod profile;
mod syscalls;

#[cfg(test)]
mod bpf_interpreter;
#[cfg(test)]
mod default_profile_tests;
#[cfg(test)]
mod kernel_tests;

pub use compile::BpfProgram;
pub use error::SeccompError;

use profile::{Action, Rule};

/// Built-in profiles, embedded at build time. `builtin_names` must list the same names.
const BUILTINS: &[(&str, &str)] = &[(
    "default",
    include_str!("../../profiles/seccomp/default.toml"),
)];
const BUILTIN_NAMES: &[&str] = &["default"];

/// A parsed and validated seccomp profile, with syscall names resolved for the native
/// architecture. Compile it with [`SeccompPolicy::compile`].
#[derive(Clone, Debug)]
pub struct SeccompPolicy {
    /// Where the profile came from (a path or `builtin:NAME`), for messages.
    origin: String,
    default_action: Action,
    rules: Vec<Rule>,
}

impl SeccompPolicy {
    /// Parses and validates profile `text`. `origin` (a file path, or `builtin:NAME`) prefixes
    /// every error message.
    pub fn parse(text: &str, origin: &str) -> Result<Self, SeccompError> {
        profile::parse(text, origin)
    }

    /// A profile compiled into the binary: `"default"` is `profiles/seccomp/default.toml`.
    pub fn builtin(name: &str) -> Result<Self, SeccompError> {
        let text = BUILTINS
            .iter()
            .find(|(builtin, _)| *builtin == name)
            .map(|(_, text)| *text)
            .ok_or_else(|| SeccompError::UnknownBuiltin {
                name: name.to_owned(),
                available: BUILTIN_NAMES.join(", "),
            })?;
        Self::parse(text, &format!("builtin:{name}"))
    }

    /// Names accepted by [`SeccompPolicy::builtin`].
    pub fn builtin_names() -> &'static [&'static str] {
        BUILTIN_NAMES
    }

    /// Where this policy came from: a path or `builtin:NAME`.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Compiles the policy to a classic BPF program for the native architecture.
    pub fn compile(&self) -> Result<BpfProgram, SeccompError> {
        compile::compile(self)
    }
}

/// Fingerprint of the embedded `profiles/seccomp/default.toml`.
const DEFAULT_SOURCE_FNV: u64 = crate::fingerprint::fnv1a(BUILTINS[0].1.as_bytes());

/// The default profile, compiled ahead of time for this architecture, when the copy in
/// `precompiled.rs` was made from exactly the embedded text. Saves parsing ~10 KB of TOML on
/// every start; a test keeps the copy current.
fn precompiled_default() -> Option<BpfProgram> {
    #[cfg(target_arch = "x86_64")]
    if precompiled::SOURCE_FNV == DEFAULT_SOURCE_FNV {
        return Some(BpfProgram::from_tuples(precompiled::DEFAULT_X86_64));
    }
    None
}

/// The policy a sandbox uses: a built-in one (compiled only when needed, the default one taken
/// precompiled) or one parsed from a file.
#[derive(Clone, Debug)]
pub enum PolicyRef {
    Builtin(&'static str),
    Parsed(SeccompPolicy),
}

impl PolicyRef {
    /// A built-in policy by name (checked now, compiled later).
    pub fn builtin(name: &str) -> Result<PolicyRef, SeccompError> {
        BUILTIN_NAMES
            .iter()
            .find(|n| **n == name)
            .map(|n| PolicyRef::Builtin(n))
            .ok_or_else(|| SeccompError::UnknownBuiltin {
                name: name.to_owned(),
                available: BUILTIN_NAMES.join(", "),
            })
    }

    /// Where the policy came from, for messages.
    pub fn origin(&self) -> String {
        match self {
            PolicyRef::Builtin(name) => format!("builtin:{name}"),
            PolicyRef::Parsed(p) => p.origin().to_string(),
        }
    }

    /// The BPF program for the native architecture.
    pub fn compile(&self) -> Result<BpfProgram, SeccompError> {
        match self {
            PolicyRef::Builtin("default") => match precompiled_default() {
                Some(program) => Ok(program),
                None => SeccompPolicy::builtin("default")?.compile(),
            },
            PolicyRef::Builtin(name) => SeccompPolicy::builtin(name)?.compile(),
            PolicyRef::Parsed(policy) => policy.compile(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keeps `precompiled.rs` equal to what the compiler makes of the embedded default profile.
    /// After changing the profile or the compiler:
    ///     NSBOX_REGENERATE_SECCOMP=1 cargo test --lib seccomp::tests::precompiled
    #[test]
    #[cfg(target_arch = "x86_64")] // only x86_64 has a precompiled copy
    fn precompiled_default_is_current() {
        let fresh = SeccompPolicy::builtin("default")
            .unwrap()
            .compile()
            .unwrap();
        let tuples: Vec<(u16, u8, u8, u32)> = fresh
            .instructions()
            .iter()
            .map(|i| (i.code, i.jt, i.jf, i.k))
            .collect();
        let current = cfg!(target_arch = "x86_64")
            && precompiled::SOURCE_FNV == DEFAULT_SOURCE_FNV
            && precompiled::DEFAULT_X86_64 == tuples.as_slice();
        if current {
            let program = PolicyRef::builtin("default").unwrap().compile().unwrap();
            assert_eq!(program.len(), fresh.len());
            return;
        }
        if std::env::var("NSBOX_REGENERATE_SECCOMP").as_deref() == Ok("1")
            && cfg!(target_arch = "x86_64")
        {
            let mut out = String::from(
                "//! GENERATED by `NSBOX_REGENERATE_SECCOMP=1 cargo test --lib seccomp::tests::precompiled`.\n\
                 //! Do not edit. The built-in default policy (profiles/seccomp/default.toml) compiled\n\
                 //! ahead of time, so a sandbox start does not parse and compile it; the test\n\
                 //! `precompiled_default_is_current` fails whenever this copy is stale.\n\n",
            );
            out.push_str(&format!("/// FNV-1a of the profile text this was compiled from.\npub(super) const SOURCE_FNV: u64 = {DEFAULT_SOURCE_FNV:#018x};\n\n"));
            out.push_str("/// (code, jt, jf, k) for x86_64.\n#[cfg(target_arch = \"x86_64\")]\n#[rustfmt::skip]\npub(super) const DEFAULT_X86_64: &[(u16, u8, u8, u32)] = &[\n");
            for (code, jt, jf, k) in &tuples {
                out.push_str(&format!("    ({code:#06x}, {jt}, {jf}, {k:#010x}),\n"));
            }
            out.push_str("];\n");
            let path =
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/seccomp/precompiled.rs");
            std::fs::write(&path, out).unwrap();
            eprintln!("regenerated {}", path.display());
            return;
        }
        panic!(
            "src/seccomp/precompiled.rs is stale (the default profile or the compiler changed): \
             run NSBOX_REGENERATE_SECCOMP=1 cargo test --lib seccomp::tests::precompiled"
        );
    }

    #[test]
    fn builtin_names_match_the_embedded_profiles() {
        let embedded: Vec<&str> = BUILTINS.iter().map(|(name, _)| *name).collect();
        assert_eq!(embedded, SeccompPolicy::builtin_names());
        for name in SeccompPolicy::builtin_names() {
            let policy = SeccompPolicy::builtin(name).expect("built-in profile parses");
            assert_eq!(policy.origin(), format!("builtin:{name}"));
            policy.compile().expect("built-in profile compiles");
        }
    }

    #[test]
    fn unknown_builtin_lists_the_available_ones() {
        let err = SeccompPolicy::builtin("strict").expect_err("no such profile");
        assert!(matches!(err, SeccompError::UnknownBuiltin { .. }));
        assert!(err.to_string().contains("default"), "{err}");
    }
}
