//! Writable host mounts (`--mount SRC:DST:rw`) that write as the directory's owner.
//!
//! A plain bind shows host files with their host ids, which the sandbox's user namespace does
//! not map (they appear as `nobody`), and what the sandbox writes belongs to its host uid
//! (its range's first id + the sandbox uid) — so a workspace owned by a host user, or by root,
//! is not writable, or fills up with files of a stranger's uid. Here the bind becomes an
//! idmapped mount whose user namespace maps exactly one pair: the directory's owner on disk
//! (uid and gid, from the directory itself) to the sandbox user's host ids. Inside, the
//! directory and every file of that owner belong to the sandbox user; what it creates belongs
//! on disk to the directory's owner; files of anyone else stay unmapped (`nobody`, not
//! writable as them). A shared directory (world-writable or sticky) is left a plain bind.
//!
//! The namespaces are made here, in the supervisor, before the sandbox's child is cloned (the
//! child sits in a new pid namespace whose `/proc` would not match); the child opens them as
//! `/proc/<supervisor>/fd/N` and applies them to its detached clone of the source
//! (`rootfs::apply::open_host_sources`). Where the filesystem or kernel cannot idmap, the bind
//! stays plain and the sandbox gets a warning.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

use crate::host::path::{open_no_follow, Access};
use crate::rootfs::plan::{BindIdmap, MountOp, RootfsPlan};
use crate::spec::SandboxSpec;

/// For every writable bind of `plan`, a user namespace mapping its source's owner to the
/// sandbox user, named in `plan.bind_idmaps`. The returned descriptors back those paths: keep
/// them until the child is cloned. Needs the sandbox's own range (`spec.userns_owner`, which
/// owns the namespaces too: an id no file of the sandbox can have). A source that cannot be
/// opened is left to the child, which reports it.
pub fn idmap_writable_binds(plan: &mut RootfsPlan, spec: &SandboxSpec) -> Vec<OwnedFd> {
    let Some(ns_owner) = spec.userns_owner else {
        return Vec::new();
    };
    let writable: Vec<usize> = plan
        .mounts
        .iter()
        .filter_map(|op| match op {
            MountOp::Bind {
                source,
                readonly: false,
                ..
            } => Some(*source),
            _ => None,
        })
        .collect();
    let mut held = Vec::new();
    for index in writable {
        let Some(path) = plan.host_sources.get(index) else {
            continue;
        };
        let Ok((_, st)) = open_no_follow(path, Access::Path) else {
            continue;
        };
        // A shared directory (world-writable or sticky, like /tmp) has no one owner to write
        // as: writing there as its owner — root, for /tmp — would be writing as someone else
        // among everyone. It stays a plain bind.
        if st.st_mode & 0o1002 != 0 {
            continue;
        }
        let uid_map = format!("{} {} 1\n", st.st_uid, spec.uid_base + spec.uid);
        let gid_map = format!("{} {} 1\n", st.st_gid, spec.uid_base + spec.gid);
        match super::userns::create_with_maps(&uid_map, &gid_map, ns_owner) {
            Ok(userns) => {
                plan.bind_idmaps.insert(
                    index,
                    BindIdmap {
                        userns: PathBuf::from(format!(
                            "/proc/{}/fd/{}",
                            std::process::id(),
                            userns.as_raw_fd()
                        )),
                        uid: st.st_uid,
                        gid: st.st_gid,
                    },
                );
                held.push(userns);
            }
            Err(e) => tracing::warn!(
                "{}: no idmapped mount (cannot make its user namespace: {e}); writes go as the sandbox's host uid",
                path.display()
            ),
        }
    }
    held
}
