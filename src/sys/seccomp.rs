//! Installs a compiled seccomp filter on the calling thread. The policy and the compiler live
//! in [`crate::seccomp`]; this file only hands the program to the kernel.

use std::io;

use crate::seccomp::BpfProgram;

/// Installs `prog` with `seccomp(SECCOMP_SET_MODE_FILTER, 0, &prog)`.
///
/// The caller must have set `PR_SET_NO_NEW_PRIVS` first (without `CAP_SYS_ADMIN` the kernel
/// refuses the filter otherwise, with `EACCES`). The filter applies to the calling thread and
/// is inherited across `fork`, `clone` and `execve`; it can never be removed. nsbox calls this
/// from the single-threaded sandbox init right before `execve`, so no thread synchronisation
/// (`SECCOMP_FILTER_FLAG_TSYNC`) is needed. It does not allocate, so it is safe to call in a
/// child after `fork` of a multi-threaded process.
pub fn install_filter(prog: &BpfProgram) -> io::Result<()> {
    let instructions = prog.instructions();
    // `BpfProgram` guarantees 1..=4096 instructions; check again rather than let a bad
    // length reach the kernel as a truncated `u16`.
    let len = match libc::c_ushort::try_from(instructions.len()) {
        Ok(len) if len > 0 => len,
        _ => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
    };
    let fprog = libc::sock_fprog {
        len,
        // The kernel only reads the program; `sock_fprog` declares the pointer mutable.
        filter: instructions.as_ptr().cast_mut(),
    };
    // SAFETY: `fprog` points at `len` initialised `sock_filter`s owned by `prog`, which
    // outlives the call; the kernel copies the program before returning and never writes
    // through the pointer. The flags argument is 0 and the third argument is a valid
    // `sock_fprog` as SECCOMP_SET_MODE_FILTER requires.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0 as libc::c_uint,
            &fprog as *const libc::sock_fprog,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
