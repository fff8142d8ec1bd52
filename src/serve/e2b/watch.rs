//! Directory watchers (`filesystem.Filesystem/CreateWatcher`, `GetWatcherEvents`,
//! `RemoveWatcher`): inotify from outside the sandbox, on a directory opened inside its root,
//! read when the client polls. Non-recursive only.

use std::collections::HashMap;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::sync::{Mutex, OnceLock};

use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};

use super::connect::{Code, RpcError};

/// Most watchers per sandbox (each holds an inotify instance of the server's).
const MAX_PER_SANDBOX: usize = 32;
/// Most events kept between polls (more are dropped, as a full inotify queue drops them).
const MAX_EVENTS: usize = 4096;

/// A watch: the inotify instance only (the directory is not kept open, so a watcher never
/// keeps a removed sandbox's mounts busy; the kernel drops the watch when they go).
struct Watcher {
    sandbox: String,
    inotify: OwnedFd,
}

fn watchers() -> &'static Mutex<HashMap<String, Watcher>> {
    static WATCHERS: OnceLock<Mutex<HashMap<String, Watcher>>> = OnceLock::new();
    WATCHERS.get_or_init(Default::default)
}

fn lock() -> std::sync::MutexGuard<'static, HashMap<String, Watcher>> {
    watchers().lock().unwrap_or_else(|p| p.into_inner())
}

fn io(e: rustix::io::Errno) -> RpcError {
    RpcError::new(Code::Internal, format!("inotify: {e}"))
}

/// Starts watching `dir` (opened inside the sandbox's root) for sandbox `sandbox`; first drops
/// the watchers of sandboxes that are no longer `alive` (timed out, removed elsewhere).
pub fn create(
    sandbox: &str,
    dir: OwnedFd,
    alive: &dyn Fn(&str) -> bool,
) -> Result<String, RpcError> {
    lock().retain(|_, w| alive(&w.sandbox));
    if lock().values().filter(|w| w.sandbox == sandbox).count() >= MAX_PER_SANDBOX {
        return Err(RpcError::new(
            Code::ResourceExhausted,
            format!("at most {MAX_PER_SANDBOX} watchers per sandbox: remove one first"),
        ));
    }
    let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK).map_err(io)?;
    // The directory itself, through its descriptor: nothing inside the sandbox is resolved.
    let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&dir));
    let mask = WatchFlags::CREATE
        | WatchFlags::DELETE
        | WatchFlags::MODIFY
        | WatchFlags::CLOSE_WRITE
        | WatchFlags::MOVED_FROM
        | WatchFlags::MOVED_TO
        | WatchFlags::ATTRIB;
    inotify::add_watch(&fd, path.as_str(), mask).map_err(io)?;
    drop(dir);
    let mut bytes = [0u8; 12];
    let _ = getrandom::fill(&mut bytes);
    let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    lock().insert(
        id.clone(),
        Watcher {
            sandbox: sandbox.to_string(),
            inotify: fd,
        },
    );
    Ok(id)
}

/// The events since the last poll, as E2B's `FilesystemEvent`s.
pub fn events(sandbox: &str, id: &str) -> Result<Vec<serde_json::Value>, RpcError> {
    let table = lock();
    let w = table
        .get(id)
        .filter(|w| w.sandbox == sandbox)
        .ok_or_else(|| RpcError::new(Code::NotFound, format!("no watcher {id}")))?;
    let mut buf = [MaybeUninit::<u8>::uninit(); 8192];
    let mut reader = inotify::Reader::new(&w.inotify, &mut buf);
    let mut out = Vec::new();
    loop {
        let event = match reader.next() {
            Ok(e) => e,
            Err(rustix::io::Errno::AGAIN) => break,
            Err(e) => return Err(io(e)),
        };
        let Some(name) = event.file_name() else {
            continue;
        };
        let flags = event.events();
        let kind = if flags.intersects(ReadFlags::CREATE | ReadFlags::MOVED_TO) {
            "EVENT_TYPE_CREATE"
        } else if flags.contains(ReadFlags::DELETE) {
            "EVENT_TYPE_REMOVE"
        } else if flags.contains(ReadFlags::MOVED_FROM) {
            "EVENT_TYPE_RENAME"
        } else if flags.intersects(ReadFlags::MODIFY | ReadFlags::CLOSE_WRITE) {
            "EVENT_TYPE_WRITE"
        } else if flags.contains(ReadFlags::ATTRIB) {
            "EVENT_TYPE_CHMOD"
        } else {
            continue;
        };
        if out.len() < MAX_EVENTS {
            out.push(serde_json::json!({"name": name.to_string_lossy(), "type": kind}));
        }
    }
    Ok(out)
}

pub fn remove(sandbox: &str, id: &str) -> Result<(), RpcError> {
    let mut table = lock();
    match table.get(id) {
        Some(w) if w.sandbox == sandbox => {
            table.remove(id);
            Ok(())
        }
        _ => Err(RpcError::new(Code::NotFound, format!("no watcher {id}"))),
    }
}

/// Drops a removed sandbox's watchers.
pub fn forget_sandbox(sandbox: &str) {
    lock().retain(|_, w| w.sandbox != sandbox);
}
