//! Directory watchers (`filesystem.Filesystem/CreateWatcher`, `GetWatcherEvents`,
//! `RemoveWatcher`): inotify from outside the sandbox, on a directory opened inside its root,
//! read when the client polls. A recursive watcher watches every directory under the one
//! asked for (opened one name at a time from its parent, links not followed), and each
//! directory made later, opened inside the root again when its event is read.

use std::collections::HashMap;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
use rustix::fs::{Mode, OFlags};

use super::connect::{Code, RpcError};

/// Most watchers per sandbox (each holds an inotify instance of the server's).
const MAX_PER_SANDBOX: usize = 32;
/// Most events kept between polls (more are dropped, as a full inotify queue drops them).
const MAX_EVENTS: usize = 4096;
/// Most directories one recursive watcher watches (more: the create is refused).
const MAX_DIRS: usize = 4096;

/// What the watcher reports changes of.
const MASK: WatchFlags = WatchFlags::CREATE
    .union(WatchFlags::DELETE)
    .union(WatchFlags::MODIFY)
    .union(WatchFlags::CLOSE_WRITE)
    .union(WatchFlags::MOVED_FROM)
    .union(WatchFlags::MOVED_TO)
    .union(WatchFlags::ATTRIB);

/// A watch: the inotify instance only (the directory is not kept open, so a watcher never
/// keeps a removed sandbox's mounts busy; the kernel drops the watch when they go).
struct Watcher {
    sandbox: String,
    inotify: OwnedFd,
    /// Recursive: each watch's directory relative to the watched one ("" for itself), and
    /// the watched directory's path inside the sandbox (to open new directories by).
    tree: Option<(HashMap<i32, String>, PathBuf)>,
}

/// Watches `dir` as `rel` and, below it, every directory (each opened by a single name from
/// its parent, links not followed), adding them to `wds`.
fn watch_tree(
    inotify: &OwnedFd,
    dir: OwnedFd,
    rel: String,
    wds: &mut HashMap<i32, String>,
) -> Result<(), RpcError> {
    if wds.len() >= MAX_DIRS {
        return Err(RpcError::new(
            Code::ResourceExhausted,
            format!("more than {MAX_DIRS} directories to watch: watch a smaller tree"),
        ));
    }
    let wd = add(inotify, &dir)?;
    wds.insert(wd, rel.clone());
    let mut subdirs = Vec::new();
    for entry in rustix::fs::Dir::read_from(&dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "." || name == ".." || entry.file_type() != rustix::fs::FileType::Directory {
            continue;
        }
        subdirs.push(name);
    }
    for name in subdirs {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        // Gone meanwhile, or not a directory after all: not watched.
        let Ok(sub) = rustix::fs::openat(&dir, name.as_str(), flags, Mode::empty()) else {
            continue;
        };
        let sub_rel = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        watch_tree(inotify, sub, sub_rel, wds)?;
    }
    Ok(())
}

/// Adds a watch on the directory itself, through its descriptor: nothing inside the sandbox
/// is resolved by the path.
fn add(inotify: &OwnedFd, dir: &impl AsFd) -> Result<i32, RpcError> {
    let path = format!("/proc/self/fd/{}", dir.as_fd().as_raw_fd());
    inotify::add_watch(inotify, path.as_str(), MASK).map_err(io)
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
    recursive: Option<PathBuf>,
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
    let tree = match recursive {
        Some(inside) => {
            let mut wds = HashMap::new();
            watch_tree(&fd, dir, String::new(), &mut wds)?;
            Some((wds, inside))
        }
        None => {
            add(&fd, &dir)?;
            drop(dir);
            None
        }
    };
    let mut bytes = [0u8; 12];
    let _ = getrandom::fill(&mut bytes);
    let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    lock().insert(
        id.clone(),
        Watcher {
            sandbox: sandbox.to_string(),
            inotify: fd,
            tree,
        },
    );
    Ok(id)
}

/// The events since the last poll, as E2B's `FilesystemEvent`s (names relative to the
/// watched directory). `open` opens a directory inside the sandbox's root by its path there
/// (a recursive watcher's new directories).
pub fn events(
    sandbox: &str,
    id: &str,
    open: &dyn Fn(&Path) -> Option<OwnedFd>,
) -> Result<Vec<serde_json::Value>, RpcError> {
    let mut table = lock();
    let w = table
        .get_mut(id)
        .filter(|w| w.sandbox == sandbox)
        .ok_or_else(|| RpcError::new(Code::NotFound, format!("no watcher {id}")))?;
    let mut buf = [MaybeUninit::<u8>::uninit(); 8192];
    let mut out = Vec::new();
    let mut new_dirs = Vec::new();
    {
        let mut reader = inotify::Reader::new(&w.inotify, &mut buf);
        loop {
            let event = match reader.next() {
                Ok(e) => e,
                Err(rustix::io::Errno::AGAIN) => break,
                Err(e) => return Err(io(e)),
            };
            let flags = event.events();
            if flags.contains(ReadFlags::IGNORED) {
                if let Some((wds, _)) = &mut w.tree {
                    wds.remove(&event.wd());
                }
                continue;
            }
            let Some(name) = event.file_name() else {
                continue;
            };
            let name = name.to_string_lossy().into_owned();
            let name = match &w.tree {
                Some((wds, _)) => match wds.get(&event.wd()) {
                    Some(rel) if !rel.is_empty() => format!("{rel}/{name}"),
                    _ => name,
                },
                None => name,
            };
            let kind = if flags.intersects(ReadFlags::CREATE | ReadFlags::MOVED_TO) {
                if flags.contains(ReadFlags::ISDIR) && w.tree.is_some() {
                    new_dirs.push(name.clone());
                }
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
                out.push(serde_json::json!({"name": name, "type": kind}));
            }
        }
    }
    if let Some((wds, inside)) = &mut w.tree {
        for rel in new_dirs {
            // A directory that is gone again, or a tree too big, is not watched; what was
            // made in it before its watch began is not reported (as inotify itself misses it).
            if let Some(dir) = open(&inside.join(&rel)) {
                let _ = watch_tree(&w.inotify, dir, rel, wds);
            }
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
