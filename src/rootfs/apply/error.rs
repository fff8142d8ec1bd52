//! [`RootfsError`]: which step of building the root filesystem failed, on which path, and
//! what to do about it.

use std::io;
use std::path::{Path, PathBuf};

/// A failed step of building the root filesystem.
#[derive(Debug, thiserror::Error)]
#[error("{step} {}: {source}", path.display())]
pub struct RootfsError {
    pub step: &'static str,
    pub path: PathBuf,
    pub source: io::Error,
}

impl RootfsError {
    /// What to do about it, from the step and the errno.
    pub fn hint(&self) -> Option<&'static str> {
        let hint = hint(self.step, &self.source);
        (!hint.is_empty()).then_some(hint)
    }
}

fn hint(step: &str, err: &io::Error) -> &'static str {
    match (step, err.raw_os_error()) {
        (_, Some(libc::ENOSPC)) => {
            "the sandbox filesystem is full; raise --sandbox-size, --tmp-size or --root-size"
        }
        ("mount overlay", Some(libc::ENODEV)) => {
            "this kernel has no overlayfs; load it with `modprobe overlay` (nsbox doctor checks this)"
        }
        ("mount overlay", Some(libc::EINVAL)) => {
            "overlayfs refused these layers (too deeply stacked, or an unsupported lower filesystem)"
        }
        (_, Some(libc::EPERM)) => "nsbox needs to run as root (nsbox doctor explains what is missing)",
        _ => "",
    }
}

pub(super) fn fail<'a>(
    step: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> RootfsError + 'a {
    move |source| RootfsError {
        step,
        path: path.to_path_buf(),
        source,
    }
}

pub(super) fn rustix_err(e: rustix::io::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}
