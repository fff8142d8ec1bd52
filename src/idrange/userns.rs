//! Creating a sandbox's user namespace owned by an unprivileged host uid.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::{Mode, OFlags};
use rustix::pipe::{pipe_with, PipeFlags};
use rustix::process::{Gid, Uid};

use crate::sys::process::{clone3_fork, exit_now, flags, unshare, Forked};

fn errno(e: rustix::io::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

/// What the child reports at each step.
const OK: u8 = 0;
const FAILED: u8 = 1;

/// Per-namespace limits the namespace's owner sets inside it (`/proc/sys/user/*` are per user
/// namespace). Nested user namespaces are refused by seccomp already; this holds even if a
/// profile allowed them. The other `max_*` counters (inotify, fanotify, the other namespace
/// kinds) are charged to the owner's uid in the host's namespace as well, which is the bound
/// that matters between sandboxes; the namespace kinds are left alone because the sandbox's
/// own setup may still create some inside it.
const LIMITS: &[(&str, &str)] = &[("/proc/sys/user/max_user_namespaces", "0")];

/// Creates a user namespace mapping inside ids 0..`count` to host ids `base`.., owned by host
/// uid/gid `owner` (not root), sets its [`LIMITS`], and returns a descriptor for it, with its
/// creator: the namespace is ready for use at once, and the creator is told to go and is
/// reaped when that is dropped (after the descriptor is sent on, off the critical path). An owner
/// inside the range ends the mapping below it: a process running as a namespace's owner in
/// the parent namespace has every capability in it, so the sandbox must not be able to make
/// a file (a setuid one, say, in a `:rw` mount) owned by that id.
///
/// The owner is whoever creates the namespace, so a throw-away child drops to `owner` first
/// and then unshares; the caller (root) writes the maps, which needs CAP_SETUID over the
/// parent namespace only. The caller must be single-threaded (see [`clone3_fork`]).
pub fn create_user_namespace(base: u32, count: u32, owner: u32) -> io::Result<(OwnedFd, Creator)> {
    match create_with_maps_deferred(&map_line(0, base, mapped_below(base, count, owner)), owner) {
        Ok((fd, creator)) => Ok((fd, creator)),
        Err(e) => {
            // The sandbox still gets its own range; only the owner-level counters fall back
            // to root's, as before ranges existed.
            tracing::warn!("the sandbox's user namespace is owned by root: making it as host uid {owner} failed ({e})");
            crate::sys::process::create_user_namespace(base, count)
                .map(|(userns, helper)| (userns, Creator(CreatorKind::Root(helper))))
        }
    }
}

/// The throw-away process that made a user namespace: dropping this lets it exit and reaps it.
#[derive(Debug)]
pub struct Creator(CreatorKind);

#[derive(Debug)]
enum CreatorKind {
    Owned {
        /// Closing it tells the creator to exit.
        to_child: Option<OwnedFd>,
        pidfd: OwnedFd,
    },
    Root(#[allow(dead_code)] crate::sys::process::UsernsHelper),
}

impl Drop for Creator {
    fn drop(&mut self) {
        if let CreatorKind::Owned { to_child, pidfd } = &mut self.0 {
            drop(to_child.take());
            let _ = rustix::process::waitid(
                rustix::process::WaitId::PidFd(pidfd.as_fd()),
                rustix::process::WaitIdOptions::EXITED,
            );
        }
    }
}

fn map_line(first: u32, base: u32, count: u32) -> String {
    format!("{first} {base} {count}\n")
}

/// How many ids from `base` to map so that `owner` is not among them.
fn mapped_below(base: u32, count: u32, owner: u32) -> u32 {
    match owner.checked_sub(base) {
        Some(offset) if offset < count => offset,
        _ => count,
    }
}

/// Like [`create_user_namespace`] with any mapping: ids `first`.. to host ids `base`.. (for
/// idmapped mounts, where the "inside" ids are the ones on disk). No fallback.
pub(super) fn create_mapping(first: u32, base: u32, count: u32, owner: u32) -> io::Result<OwnedFd> {
    let map = map_line(first, base, count);
    create_with_maps(&map, &map, owner)
}

/// Like [`create_mapping`] with the uid and gid maps given as written to `/proc/PID/*_map`.
pub(super) fn create_with_maps(uid_map: &str, gid_map: &str, owner: u32) -> io::Result<OwnedFd> {
    // The creator is reaped here, before returning.
    create_with_maps_apart(uid_map, gid_map, owner).map(|(fd, _creator)| fd)
}

fn create_with_maps_deferred(map: &str, owner: u32) -> io::Result<(OwnedFd, Creator)> {
    create_with_maps_apart(map, map, owner)
}

fn create_with_maps_apart(
    uid_map: &str,
    gid_map: &str,
    owner: u32,
) -> io::Result<(OwnedFd, Creator)> {
    let (to_parent_read, to_parent) = pipe_with(PipeFlags::CLOEXEC).map_err(errno)?;
    let (from_parent, to_child) = pipe_with(PipeFlags::CLOEXEC).map_err(errno)?;
    match clone3_fork(0, None)? {
        Forked::Child => {
            let _abort = crate::sys::process::AbortOnPanic;
            drop(to_parent_read);
            drop(to_child);
            let say = |b: u8| {
                let _ = rustix::io::write(&to_parent, &[b]);
            };
            // CAP_SYS_ADMIN is kept through the uid change: hosts that refuse user namespaces
            // to unprivileged processes (AppArmor's restrict_unprivileged_userns, Debian's
            // unprivileged_userns_clone=0) still let this child make one. The owner is the
            // effective uid either way; the child's capabilities do not carry into the
            // namespace, where it has all of them as its creator anyway.
            let became = rustix::thread::set_keep_capabilities(true)
                .and_then(|()| rustix::thread::set_thread_groups(&[]))
                .and_then(|()| {
                    let g = Gid::from_raw(owner);
                    rustix::thread::set_thread_res_gid(g, g, g)
                })
                .and_then(|()| {
                    let u = Uid::from_raw(owner);
                    rustix::thread::set_thread_res_uid(u, u, u)
                })
                .and_then(|()| {
                    let admin = rustix::thread::CapabilitySet::SYS_ADMIN;
                    rustix::thread::set_capabilities(
                        None,
                        rustix::thread::CapabilitySets {
                            effective: admin,
                            permitted: admin,
                            inheritable: rustix::thread::CapabilitySet::empty(),
                        },
                    )
                });
            if became.is_err() || unshare(flags::NEWUSER).is_err() {
                say(FAILED);
                exit_now(1)
            }
            say(OK);
            // Mapped once the parent says so; then set the namespace's limits.
            let mut byte = [0u8; 1];
            if !matches!(rustix::io::read(&from_parent, &mut byte), Ok(1)) {
                exit_now(1)
            }
            let set = LIMITS
                .iter()
                .all(|(path, value)| std::fs::write(path, value).is_ok());
            say(if set { OK } else { FAILED });
            // Wait until the parent holds the namespace (the pipe closes), then vanish.
            let _ = rustix::io::read(&from_parent, &mut byte);
            exit_now(0)
        }
        Forked::Parent { pid, pidfd } => {
            drop(to_parent);
            drop(from_parent);
            let heard = |what: &str| -> io::Result<()> {
                let mut byte = [FAILED; 1];
                match rustix::io::read(&to_parent_read, &mut byte) {
                    Ok(1) if byte[0] == OK => Ok(()),
                    _ => Err(io::Error::other(format!(
                        "the namespace's creator (as host uid {owner}) could not {what}"
                    ))),
                }
            };
            let result = heard("create it")
                .and_then(|()| {
                    std::fs::write(format!("/proc/{pid}/uid_map"), uid_map)?;
                    std::fs::write(format!("/proc/{pid}/gid_map"), gid_map)
                })
                .and_then(|()| rustix::io::write(&to_child, &[OK]).map(drop).map_err(errno))
                .and_then(|()| heard("set its limits"))
                .and_then(|()| {
                    rustix::fs::open(
                        format!("/proc/{pid}/ns/user").as_str(),
                        OFlags::RDONLY | OFlags::CLOEXEC,
                        Mode::empty(),
                    )
                    .map_err(errno)
                });
            // On failure the creator is told to go and reaped here; on success when the
            // caller drops it.
            let creator = Creator(CreatorKind::Owned {
                to_child: Some(to_child),
                pidfd,
            });
            result.map(|fd| (fd, creator))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owner_is_never_mapped() {
        assert_eq!(mapped_below(1000, 65536, 1000 + 65535), 65535);
        assert_eq!(mapped_below(1000, 65536, 999), 65536);
        assert_eq!(mapped_below(1000, 65536, 1000 + 65536), 65536);
        assert_eq!(mapped_below(1000, 65536, 1000), 0);
    }
}
