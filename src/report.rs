//! How nsbox reports its own failures. Every error a user can meet knows three things besides
//! its message: its [`Phase`] (when it happened), its [`Class`] (which decides the exit code,
//! see [`crate::exit`]) and its hint (what to do). [`Diagnose`] gives them for each module's
//! error type; [`Failure`] carries them to the CLI, which prints `nsbox: MESSAGE — hint: HINT`
//! or, with `--json`, an `error` event with `phase`, `message`, `hint` and `code` as fields.
//!
//! Hints: many errors still write theirs into their message after " — hint: " (the one
//! separator every nsbox error uses, so the text reads well wherever it is printed); [`Failure`]
//! keeps the two apart. Errors that carry their hint as a field give it through
//! [`Diagnose::hint`] instead (the sandbox's setup steps do: the setup child sends step,
//! message, hint and errno apart), decided from their fields (an errno), never from their text.
//!
//! This module must not decide anything else: which error is which class is each impl's
//! business, written next to the others below so the whole table is reviewed at once.

use std::fmt;

use crate::exit;

/// What kind of failure, as far as a script is concerned: each has its own exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// The command line, a profile, the config file or a recipe is wrong; nothing was started.
    Usage,
    /// This host cannot run the sandbox (not root, a kernel feature or cgroup controller
    /// missing); `nsbox doctor` says what.
    HostNotCapable,
    /// The image is not in the store, and was not (or could not be) pulled.
    ImageNotFound,
    /// Anything else: the sandbox could not be set up, or nsbox failed.
    Failed,
}

impl Class {
    /// nsbox's exit code for this class (see the table in [`crate::exit`]).
    pub const fn exit_code(self) -> i32 {
        match self {
            Class::Usage => exit::USAGE,
            Class::HostNotCapable => exit::HOST_NOT_CAPABLE,
            Class::ImageNotFound => exit::IMAGE_NOT_FOUND,
            Class::Failed => exit::NSBOX_FAILED,
        }
    }
}

/// When a failure happened: the `phase` of the JSON `error` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Reading the command line, the profile and the config.
    Usage,
    /// Finding, pulling or loading an image.
    Image,
    /// Building the sandbox, up to the command's exec.
    Setup,
    /// After the command started.
    Run,
}

impl Phase {
    pub const fn as_str(self) -> &'static str {
        match self {
            Phase::Usage => "usage",
            Phase::Image => "image",
            Phase::Setup => "setup",
            Phase::Run => "run",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Phase, class and hint of an error (its message is its `Display`).
pub trait Diagnose: std::error::Error {
    fn class(&self) -> Class;
    fn phase(&self) -> Phase;
    /// A hint the message does not already carry.
    fn hint(&self) -> Option<String> {
        None
    }
}

/// The separator between an error's message and its hint.
const HINT: &str = " — hint: ";

/// One failure of nsbox, ready to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub phase: Phase,
    pub class: Class,
    pub message: String,
    pub hint: Option<String>,
}

impl Failure {
    /// The failure `error` describes.
    pub fn of<E: Diagnose + ?Sized>(error: &E) -> Failure {
        let text = error.to_string();
        let (message, hint) = match text.split_once(HINT) {
            Some((message, hint)) => (message.to_string(), Some(hint.to_string())),
            None => (text, None),
        };
        Failure {
            phase: error.phase(),
            class: error.class(),
            message,
            hint: error.hint().or(hint),
        }
    }

    /// A failure the CLI finds itself (flags that do not go together, ...).
    pub fn new(class: Class, phase: Phase, message: impl Into<String>) -> Failure {
        Failure {
            phase,
            class,
            message: message.into(),
            hint: None,
        }
    }

    /// A usage error: the command line is wrong.
    pub fn usage(message: impl Into<String>) -> Failure {
        Failure::new(Class::Usage, Phase::Usage, message)
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Failure {
        self.hint = Some(hint.into());
        self
    }

    /// nsbox's exit code for this failure.
    pub fn exit_code(&self) -> i32 {
        self.class.exit_code()
    }

    /// Applies `f` to the message and the hint (masking secrets).
    pub fn map_text(mut self, f: impl Fn(&str) -> String) -> Failure {
        self.message = f(&self.message);
        self.hint = self.hint.map(|h| f(&h));
        self
    }
}

/// "MESSAGE — hint: HINT", as printed on stderr.
impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "{HINT}{hint}")?;
        }
        Ok(())
    }
}

impl<E: Diagnose> From<E> for Failure {
    fn from(error: E) -> Failure {
        Failure::of(&error)
    }
}

/// A failure the CLI words itself: nsbox failed (125) unless said otherwise.
impl From<String> for Failure {
    fn from(message: String) -> Failure {
        Failure::new(Class::Failed, Phase::Setup, message)
    }
}

impl From<&str> for Failure {
    fn from(message: &str) -> Failure {
        Failure::from(message.to_string())
    }
}

// The table: every error type the CLI meets, and what it means for a script.

use crate::build::BuildError;
use crate::cgroup::CgroupError;
use crate::config::ConfigError;
use crate::image::reference::ReferenceError;
use crate::image::ImageError;
use crate::net::{NetError, PolicyError};
use crate::profile::ProfileError;
use crate::registry::pull::EnsureError;
use crate::registry::reference::RemoteRefError;
use crate::registry::RegistryError;
use crate::sandbox::SandboxError;
use crate::seccomp::SeccompError;
use crate::session::state::StateError;
use crate::session::SessionError;
use crate::spec::SpecError;
use crate::units::UnitError;

macro_rules! usage_errors {
    ($($t:ty),*) => {$(
        impl Diagnose for $t {
            fn class(&self) -> Class {
                Class::Usage
            }
            fn phase(&self) -> Phase {
                Phase::Usage
            }
        }
    )*};
}

usage_errors!(
    ProfileError,
    ConfigError,
    UnitError,
    PolicyError,
    SeccompError,
    ReferenceError,
    RemoteRefError
);

impl Diagnose for SpecError {
    fn class(&self) -> Class {
        Class::Usage
    }
    fn phase(&self) -> Phase {
        Phase::Usage
    }
}

impl Diagnose for ImageError {
    fn class(&self) -> Class {
        match self {
            ImageError::NotFound { .. } => Class::ImageNotFound,
            ImageError::Reference(_) => Class::Usage,
            _ => Class::Failed,
        }
    }
    fn phase(&self) -> Phase {
        match self {
            ImageError::Reference(_) => Phase::Usage,
            _ => Phase::Image,
        }
    }
}

impl Diagnose for RegistryError {
    fn class(&self) -> Class {
        match self {
            RegistryError::NotFound { .. } => Class::ImageNotFound,
            RegistryError::Reference(_) | RegistryError::Settings(_) => Class::Usage,
            RegistryError::Image(e) => e.class(),
            _ => Class::Failed,
        }
    }
    fn phase(&self) -> Phase {
        match self {
            RegistryError::Reference(_) | RegistryError::Settings(_) => Phase::Usage,
            _ => Phase::Image,
        }
    }
}

impl Diagnose for EnsureError {
    fn class(&self) -> Class {
        match self {
            EnsureError::NotFound { .. } => Class::ImageNotFound,
            EnsureError::Reference(e) | EnsureError::Pull { source: e, .. } => e.class(),
            EnsureError::Store(e) => e.class(),
        }
    }
    fn phase(&self) -> Phase {
        match self {
            EnsureError::Reference(e) => e.phase(),
            _ => Phase::Image,
        }
    }
}

impl Diagnose for CgroupError {
    fn class(&self) -> Class {
        match self {
            CgroupError::NotMounted { .. }
            | CgroupError::ControllerUnavailable { .. }
            | CgroupError::ControllerNotEnabled { .. }
            | CgroupError::ReadOnly { .. } => Class::HostNotCapable,
            CgroupError::InvalidLimit { .. } => Class::Usage,
            _ => Class::Failed,
        }
    }
    fn phase(&self) -> Phase {
        Phase::Setup
    }
}

impl Diagnose for NetError {
    fn class(&self) -> Class {
        match self {
            NetError::Create(_) | NetError::Filtered { .. } => Class::HostNotCapable,
            NetError::NoUpstream => Class::Usage,
            _ => Class::Failed,
        }
    }
    fn phase(&self) -> Phase {
        Phase::Setup
    }
}

impl Diagnose for SandboxError {
    fn class(&self) -> Class {
        match self {
            SandboxError::NotRoot => Class::HostNotCapable,
            SandboxError::Cgroup(e) => e.class(),
            SandboxError::Network(e) => e.class(),
            // The setup child sends the errno of a failed step along (never decided from the
            // text): the host refused what the sandbox needs (a mount, a namespace, a
            // capability the kernel or an LSM denies).
            SandboxError::Setup(failure) => match failure.errno {
                Some(libc::EPERM | libc::EACCES) => Class::HostNotCapable,
                _ => Class::Failed,
            },
            _ => Class::Failed,
        }
    }
    fn hint(&self) -> Option<String> {
        match self {
            SandboxError::Setup(failure) => failure.hint.clone(),
            _ => None,
        }
    }
    fn phase(&self) -> Phase {
        match self {
            SandboxError::Died(_) => Phase::Run,
            _ => Phase::Setup,
        }
    }
}

/// Session commands (`ps`, `stop`, `rm`, `cp`) report these with 125; `exec --session` and
/// `create` do the same, so a script sees one code for "no such session".
impl Diagnose for StateError {
    fn class(&self) -> Class {
        Class::Failed
    }
    fn phase(&self) -> Phase {
        Phase::Setup
    }
}

impl Diagnose for SessionError {
    fn class(&self) -> Class {
        match self {
            SessionError::State(e) => e.class(),
            SessionError::Sandbox(e) => e.class(),
            _ => Class::Failed,
        }
    }
    fn phase(&self) -> Phase {
        match self {
            SessionError::Sandbox(e) => Diagnose::phase(e),
            SessionError::NotRunning { .. }
            | SessionError::Refused(_)
            | SessionError::Protocol(_) => Phase::Run,
            _ => Phase::Setup,
        }
    }
}

impl Diagnose for BuildError {
    fn class(&self) -> Class {
        match self {
            BuildError::Recipe { .. } => Class::Usage,
            BuildError::Base(e) => e.class(),
            BuildError::BaseMissing(e) | BuildError::Image(e) => e.class(),
            BuildError::Profile(e) => e.class(),
            BuildError::Spec(e) => e.class(),
            BuildError::Sandbox(e) => e.class(),
            BuildError::BaseConfig(_)
            | BuildError::SetupFailed { .. }
            | BuildError::Capture { .. } => Class::Failed,
        }
    }
    fn phase(&self) -> Phase {
        match self {
            BuildError::Recipe { .. } | BuildError::Profile(_) | BuildError::Spec(_) => {
                Phase::Usage
            }
            BuildError::Base(e) => e.phase(),
            BuildError::BaseMissing(e) | BuildError::Image(e) => e.phase(),
            BuildError::BaseConfig(_) => Phase::Image,
            BuildError::Sandbox(e) => Diagnose::phase(e),
            BuildError::SetupFailed { .. } => Phase::Run,
            BuildError::Capture { .. } => Phase::Image,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::path::PathBuf;

    use super::*;
    use crate::cgroup::Controller;
    use crate::sandbox::control::StepFailure;

    fn code_of(e: &impl Diagnose) -> i32 {
        Failure::of(e).exit_code()
    }

    #[test]
    fn each_class_has_its_own_documented_code() {
        assert_eq!(Class::Usage.exit_code(), 121);
        assert_eq!(Class::HostNotCapable.exit_code(), 122);
        assert_eq!(Class::ImageNotFound.exit_code(), 123);
        assert_eq!(Class::Failed.exit_code(), 125);
    }

    #[test]
    fn usage_errors_exit_121() {
        assert_eq!(code_of(&SpecError::NoCommand), exit::USAGE);
        assert_eq!(code_of(&SpecError::Hostname("x_y".into())), exit::USAGE);
        let unit: UnitError = "12xb".parse::<crate::units::ByteSize>().unwrap_err();
        assert_eq!(code_of(&unit), exit::USAGE);
        assert_eq!(
            code_of(&ProfileError::Parse {
                origin: "p".into(),
                message: "m".into()
            }),
            exit::USAGE
        );
        assert_eq!(
            code_of(&ConfigError::Invalid {
                path: "/etc/nsbox/config.toml".into(),
                message: "m".into()
            }),
            exit::USAGE
        );
        assert_eq!(
            code_of(&ImageError::Reference(ReferenceError::BadName(
                "Bad".into()
            ))),
            exit::USAGE
        );
        assert_eq!(
            code_of(&BuildError::Recipe {
                origin: "r".into(),
                message: "m".into()
            }),
            exit::USAGE
        );
        assert_eq!(
            code_of(&SandboxError::Network(NetError::NoUpstream)),
            exit::USAGE
        );
    }

    #[test]
    fn host_errors_exit_122() {
        assert_eq!(code_of(&SandboxError::NotRoot), exit::HOST_NOT_CAPABLE);
        let cgroup = CgroupError::ControllerUnavailable {
            controller: Controller::Memory,
            reason: "r".into(),
            hint: "h".into(),
        };
        assert_eq!(code_of(&cgroup), exit::HOST_NOT_CAPABLE);
        assert_eq!(
            code_of(&SandboxError::Cgroup(cgroup)),
            exit::HOST_NOT_CAPABLE
        );
        assert_eq!(
            code_of(&SandboxError::Network(NetError::Create(
                io::Error::from_raw_os_error(libc::EPERM)
            ))),
            exit::HOST_NOT_CAPABLE
        );
        // A setup step the host refused (its errno travels with it): 122, with the step's
        // own hint as a field.
        for errno in [libc::EPERM, libc::EACCES] {
            let refused = SandboxError::Setup(StepFailure {
                step: "build root filesystem".into(),
                message: "make mounts private /: Operation not permitted".into(),
                hint: Some(
                    "nsbox needs to run as root (nsbox doctor explains what is missing)".into(),
                ),
                errno: Some(errno),
            });
            let failure = Failure::of(&refused);
            assert_eq!(failure.exit_code(), exit::HOST_NOT_CAPABLE, "errno {errno}");
            assert!(failure.hint.unwrap().contains("nsbox doctor"));
            assert!(!failure.message.contains("hint"));
        }
        // Other errnos, and none at all, stay 125 whatever the text says.
        for errno in [Some(libc::ENOSPC), Some(libc::EINVAL), None] {
            let failed = SandboxError::Setup(StepFailure {
                step: "mount sandbox filesystems".into(),
                message: "mount /proc: Operation not permitted".into(),
                hint: None,
                errno,
            });
            assert_eq!(code_of(&failed), exit::NSBOX_FAILED, "errno {errno:?}");
        }
    }

    /// The setup child's errors keep errno and hint apart from the text they print.
    #[test]
    fn rootfs_errors_carry_errno_and_hint_as_fields() {
        let e = crate::rootfs::apply::RootfsError {
            step: "make mounts private",
            path: "/".into(),
            source: io::Error::from_raw_os_error(libc::EPERM),
        };
        assert!(!e.to_string().contains("hint"), "{e}");
        assert!(e.hint().unwrap().contains("nsbox doctor"));
        let full = crate::rootfs::apply::RootfsError {
            step: "mount overlay",
            path: "/x".into(),
            source: io::Error::from_raw_os_error(libc::ENOSPC),
        };
        assert!(full.hint().unwrap().contains("--sandbox-size"));
        let plain = crate::rootfs::apply::RootfsError {
            step: "mount overlay",
            path: "/x".into(),
            source: io::Error::from_raw_os_error(libc::ENOENT),
        };
        assert_eq!(plain.hint(), None);
    }

    #[test]
    fn missing_images_exit_123() {
        let missing = ImageError::NotFound {
            reference: "nosuch:1".into(),
        };
        assert_eq!(code_of(&missing), exit::IMAGE_NOT_FOUND);
        let unpullable = EnsureError::NotFound {
            reference: "nosuch:1".into(),
            registry: "127.0.0.1:1".into(),
            source: Box::new(RegistryError::Unreachable {
                registry: "127.0.0.1:1".into(),
                reason: "refused".into(),
            }),
        };
        assert_eq!(code_of(&unpullable), exit::IMAGE_NOT_FOUND);
        assert_eq!(
            code_of(&RegistryError::NotFound { what: "x:1".into() }),
            exit::IMAGE_NOT_FOUND
        );
        assert_eq!(
            code_of(&BuildError::BaseMissing(missing)),
            exit::IMAGE_NOT_FOUND
        );
    }

    #[test]
    fn everything_else_exits_125() {
        let failed = SandboxError::Setup(StepFailure {
            step: "mount sandbox filesystems".into(),
            message: "create working directory /etc/passwd/sub: Not a directory".into(),
            hint: None,
            errno: Some(libc::ENOTDIR),
        });
        assert_eq!(code_of(&failed), exit::NSBOX_FAILED);
        assert_eq!(Failure::of(&failed).hint, None);
        assert_eq!(
            code_of(&SandboxError::Died("gone".into())),
            exit::NSBOX_FAILED
        );
        assert_eq!(
            code_of(&StateError::Unknown("s".into())),
            exit::NSBOX_FAILED
        );
        assert_eq!(
            code_of(&ImageError::Store {
                path: PathBuf::from("/x"),
                reason: "r".into()
            }),
            exit::NSBOX_FAILED
        );
        assert_eq!(
            code_of(&BuildError::SetupFailed {
                code: 1,
                detail: String::new()
            }),
            exit::NSBOX_FAILED
        );
        assert_eq!(Failure::from("the image store is busy").exit_code(), 125);
    }

    #[test]
    fn phases_say_when() {
        assert_eq!(Failure::of(&SpecError::NoCommand).phase, Phase::Usage);
        assert_eq!(
            Failure::of(&ImageError::NotFound {
                reference: "x".into()
            })
            .phase,
            Phase::Image
        );
        assert_eq!(Failure::of(&SandboxError::NotRoot).phase, Phase::Setup);
        assert_eq!(
            Failure::of(&SandboxError::Died("x".into())).phase,
            Phase::Run
        );
    }

    #[test]
    fn the_hint_is_kept_apart_from_the_message() {
        let f = Failure::of(&ImageError::NotFound {
            reference: "nosuch:1".into(),
        });
        assert_eq!(f.message, "image 'nosuch:1' not found");
        assert!(f.hint.as_deref().unwrap().starts_with("`nsbox images`"));
        // Printed as one line again, as the error itself reads.
        assert_eq!(
            f.to_string(),
            ImageError::NotFound {
                reference: "nosuch:1".into()
            }
            .to_string()
        );
        let plain = Failure::of(&SandboxError::Died("gone".into()));
        assert_eq!(plain.hint, None);
        let masked = f.map_text(|t| t.replace("nosuch", "***"));
        assert_eq!(masked.message, "image '***:1' not found");
    }
}
