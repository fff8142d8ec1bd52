//! mount_setattr(2), which rustix does not wrap: idmapped mounts (see `crate::idrange`).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use super::check;

/// `struct mount_attr` (linux/mount.h), version 0.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// Makes the detached mount `mount` (from `open_tree(OPEN_TREE_CLONE)`) show its files' ids
/// through the id mapping of the user namespace `userns`.
pub fn set_idmap(mount: BorrowedFd<'_>, userns: BorrowedFd<'_>) -> io::Result<()> {
    let fd =
        u64::try_from(userns.as_raw_fd()).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: fd,
    };
    // SAFETY: the path is a NUL-terminated empty string, `attr` is a valid, initialised
    // `struct mount_attr` that lives across the call, and its size is passed with it; the
    // kernel only reads it.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            mount.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    check(ret).map(drop)
}
