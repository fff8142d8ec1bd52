//! Identifiers and id ranges every layer shares: the sandbox's user-namespace id range, the
//! host ids it maps to, and fresh random ids for sandboxes and scratch names. A leaf: imports
//! nothing from nsbox.

/// How many ids the sandbox's user namespace maps (inside 0..65536).
pub const IDS_IN_SANDBOX: u32 = 65536;

/// First host uid/gid of the range nsbox maps into every sandbox (inside id N is host id
/// `DEFAULT_UID_BASE + N`). Chosen far above the ranges that /etc/subuid, systemd (dynamic
/// users, nspawn) and distributions hand out, so no host user or other engine owns these ids.
/// Host uid 0 is never mapped.
pub const DEFAULT_UID_BASE: u32 = 0x6e73_0000; // 1853030400 ("ns")

/// A fresh sandbox id: 12 lowercase hex digits from the kernel's random pool.
pub fn new_id() -> String {
    let mut bytes = [0u8; 6];
    // The getrandom syscall itself, not the getrandom crate: in nsbox's static build the crate
    // cannot find glibc's getrandom and falls back to polling /dev/random and reading
    // /dev/urandom (five syscalls and an fd kept open on every sandbox's start). It only fails
    // (or comes back short) before the pool is initialised at early boot; fall back to
    // time+pid so an id is still unique enough on this host.
    let filled = rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty());
    if !filled.is_ok_and(|n| n == bytes.len()) {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let mixed = nanos ^ (u128::from(std::process::id()) << 64);
        bytes.copy_from_slice(&mixed.to_le_bytes()[..6]);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
