//! Network interface calls for the sandbox's own network namespace.

use std::io;
use std::os::fd::AsRawFd;

// libc's `ioctl` takes its request as `c_ulong` on glibc and as `c_int` on musl, while the
// constants are `c_ulong` on both; both numbers fit either type.
#[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
const GET_FLAGS: libc::Ioctl = libc::SIOCGIFFLAGS as libc::Ioctl;
#[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
const SET_FLAGS: libc::Ioctl = libc::SIOCSIFFLAGS as libc::Ioctl;

/// Brings the loopback interface up (a new network namespace starts with it down).
pub fn loopback_up() -> io::Result<()> {
    let sock = rustix::net::socket(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::DGRAM,
        None,
    )?;
    // SAFETY: ifreq is plain data; zeroed is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = libc::c_char::from_ne_bytes([*src]);
    }
    // SAFETY: SIOCGIFFLAGS fills `req` (valid, with a NUL-terminated name) for the socket.
    let ret = unsafe { libc::ioctl(sock.as_raw_fd(), GET_FLAGS, &mut req) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    let up = libc::c_short::try_from(libc::IFF_UP | libc::IFF_RUNNING).map_err(io::Error::other)?;
    // SAFETY: the union field written by SIOCGIFFLAGS is ifru_flags.
    unsafe {
        req.ifr_ifru.ifru_flags |= up;
    }
    // SAFETY: SIOCSIFFLAGS reads `req`, valid for the call.
    let ret = unsafe { libc::ioctl(sock.as_raw_fd(), SET_FLAGS, &req) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
