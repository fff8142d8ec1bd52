//! File-descriptor and mount calls rustix lacks: close_range, mount_setattr.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use super::check;

/// Marks every descriptor >= `first` close-on-exec (so nothing of nsbox's survives execve).
pub fn cloexec_from(first: u32) -> io::Result<()> {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range only changes flags of our own descriptors.
    let ret = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, CLOSE_RANGE_CLOEXEC) };
    check(ret).map(drop)
}

/// Closes every descriptor in `first..=last`.
///
/// # Safety
/// No descriptor in the range may be used afterwards: an `OwnedFd` or `File` that owns one
/// would later close (or use) a number that may by then name another file. The caller makes
/// sure their owners are forgotten or never used again (a forked child that ends through
/// `exit_now`).
pub unsafe fn close_range(first: u32, last: u32) -> io::Result<()> {
    if first > last {
        return Ok(());
    }
    // SAFETY: closes only descriptors in the range, which the caller guarantees are not used
    // afterwards (see above).
    let ret = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) };
    check(ret).map(drop)
}

/// Mount attributes for [`set_mount_attrs`].
pub mod attr {
    pub const RDONLY: u64 = 0x1;
    pub const NOSUID: u64 = 0x2;
    pub const NODEV: u64 = 0x4;
    pub const NOEXEC: u64 = 0x8;
}

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// mount_setattr(2) on a mount fd (e.g. from open_tree), recursively: sets `set` flags.
pub fn set_mount_attrs(mount: BorrowedFd<'_>, set: u64) -> io::Result<()> {
    let attr = MountAttr {
        attr_set: set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    const AT_RECURSIVE: libc::c_uint = 0x8000;
    // SAFETY: the empty path with AT_EMPTY_PATH refers to `mount` itself; `attr` is valid for
    // the size passed.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            mount.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint | AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    check(ret).map(drop)
}

/// dup2(2) onto a fixed descriptor number (0, 1, 2 for a child's standard streams). The new
/// descriptor does not have close-on-exec.
///
/// # Safety
/// Whatever `target` referred to is closed and replaced: no owner (`OwnedFd`, `File`,
/// `std::io::Stdin` buffering aside) may rely on `target` naming its old file afterwards. The
/// caller designates `target` for this purpose.
pub unsafe fn dup_onto(fd: BorrowedFd<'_>, target: std::os::fd::RawFd) -> io::Result<()> {
    // SAFETY: dup2 only manipulates the descriptor table; the caller guarantees nothing relies
    // on `target`'s previous file (replaced atomically).
    let ret = unsafe { libc::dup2(fd.as_raw_fd(), target) };
    check(ret as libc::c_long).map(drop)
}

/// mount_setattr(2) with `MOUNT_ATTR_IDMAP`: the detached mount `mount` (from
/// `open_tree(OPEN_TREE_CLONE)`) shows its files' ids through the id mapping of the user
/// namespace `userns` (see `crate::idrange`).
pub fn set_mount_idmap(mount: BorrowedFd<'_>, userns: BorrowedFd<'_>) -> io::Result<()> {
    const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
    let userns_fd =
        u64::try_from(userns.as_raw_fd()).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd,
    };
    // SAFETY: the empty path with AT_EMPTY_PATH refers to `mount` itself; `attr` is valid for
    // the size passed and outlives the call, which only reads it.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            mount.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    check(ret).map(drop)
}
