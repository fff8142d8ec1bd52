//! Applying a [`RootfsPlan`]: the privileged interpreter. Runs in the sandbox's setup child, as
//! real root, inside the sandbox's fresh mount namespace, before any workload code exists.
//!
//! Every path that an image, a rootfs directory or the workload could influence is resolved
//! without following symlinks out of the root: lower layers are walked component by component
//! with O_NOFOLLOW, and targets inside the new root are opened with openat2(RESOLVE_IN_ROOT)
//! and mounted on through their file descriptor.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, ResolveFlags, XattrFlags, CWD};
use rustix::mount::{
    self as rmount, FsMountFlags, FsOpenFlags, MountAttrFlags, MountFlags, MountPropagationFlags,
    MoveMountFlags, OpenTreeFlags, UnmountFlags,
};

use super::plan::{AccountLine, Flags, MountOp, RootfsPlan, UpperOp};
use crate::host::path::{open_no_follow, Access};
use crate::sys;

/// Maps the sandbox's own ids to host ids (inside id N is host id base + N).
#[derive(Debug, Clone, Copy)]
pub struct IdMap {
    pub base: u32,
}

impl IdMap {
    fn uid(self, inside: u32) -> rfs::Uid {
        rfs::Uid::from_raw(self.base + inside)
    }
    fn gid(self, inside: u32) -> rfs::Gid {
        rfs::Gid::from_raw(self.base + inside)
    }
}

/// A failed step of building the root filesystem.
#[derive(Debug, thiserror::Error)]
#[error("{step} {}: {source}{}", path.display(), hint(step, source))]
pub struct RootfsError {
    pub step: &'static str,
    pub path: PathBuf,
    pub source: io::Error,
}

fn hint(step: &str, err: &io::Error) -> &'static str {
    match (step, err.raw_os_error()) {
        (_, Some(libc::ENOSPC)) => {
            " — hint: the sandbox filesystem is full; raise --sandbox-size, --tmp-size or --root-size"
        }
        ("mount overlay", Some(libc::ENODEV)) => {
            " — hint: this kernel has no overlayfs; load it with `modprobe overlay` (nsbox doctor checks this)"
        }
        ("mount overlay", Some(libc::EINVAL)) => {
            " — hint: overlayfs refused these layers (too deeply stacked, or an unsupported lower filesystem)"
        }
        (_, Some(libc::EPERM)) => " — hint: nsbox needs to run as root (nsbox doctor explains what is missing)",
        _ => "",
    }
}

fn fail<'a>(step: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> RootfsError + 'a {
    move |source| RootfsError {
        step,
        path: path.to_path_buf(),
        source,
    }
}

fn rustix_err(e: rustix::io::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

/// A host path opened before pivot_root, for a bind mount or a copy.
#[derive(Debug)]
pub enum HostSource {
    /// A detached copy of a mount tree (open_tree), ready to attach.
    Tree { fd: OwnedFd, is_dir: bool },
    /// An open file or directory to copy from.
    Copy { fd: OwnedFd, is_dir: bool },
}

/// Opens every host source of the plan while the host's filesystem is still reachable.
pub fn open_host_sources(plan: &RootfsPlan) -> Result<Vec<HostSource>, RootfsError> {
    let mut out = Vec::with_capacity(plan.host_sources.len());
    for (index, path) in plan.host_sources.iter().enumerate() {
        let is_bind = plan
            .mounts
            .iter()
            .any(|op| matches!(op, MountOp::Bind { source, .. } if *source == index));
        // Opened without following a link anywhere in the path (crate::host::path), then
        // bound or copied from the descriptor, never by path again.
        let access = if is_bind { Access::Path } else { Access::Read };
        let (opened, st) = open_no_follow(path, access)
            .map_err(|e| fail("open source", path)(io::Error::other(e.reason())))?;
        let is_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
        if is_bind {
            let fd = rmount::open_tree(
                &opened,
                "",
                OpenTreeFlags::OPEN_TREE_CLONE
                    | OpenTreeFlags::OPEN_TREE_CLOEXEC
                    | OpenTreeFlags::AT_RECURSIVE
                    | OpenTreeFlags::AT_EMPTY_PATH,
            )
            .map_err(|e| fail("open mount source", path)(rustix_err(e)))?;
            out.push(HostSource::Tree { fd, is_dir });
        } else {
            out.push(HostSource::Copy { fd: opened, is_dir });
        }
    }
    Ok(out)
}

/// Where the scratch tmpfs (overlay upper/work and the new root's mount point) goes: a directory
/// of the host root that exists everywhere. Mounting there only affects our private namespace.
fn scratch_dir() -> &'static Path {
    for candidate in ["/tmp", "/mnt", "/var/tmp", "/run", "/dev"] {
        if std::fs::symlink_metadata(candidate).is_ok_and(|m| m.is_dir()) {
            return Path::new(candidate);
        }
    }
    Path::new("/tmp")
}

/// Builds the new root before pivot_root: makes every mount private, mounts a scratch tmpfs,
/// prepares the overlay's upper directory and mounts the overlay. Returns the new root's path.
/// Called with a phase name each time a phase of the build ends (for `--timings`).
pub type Marker<'a> = &'a mut dyn FnMut(&'static str);

pub fn build_new_root(
    plan: &RootfsPlan,
    ids: IdMap,
    mark: Marker<'_>,
) -> Result<PathBuf, RootfsError> {
    let root = Path::new("/");
    // Nothing we mount may propagate back to the host's mount namespace.
    rmount::mount_change(
        root,
        MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
    )
    .map_err(|e| fail("make mounts private", root)(rustix_err(e)))?;

    // Open the lower layers before anything is mounted: the scratch tmpfs may cover the path
    // they live under (a --rootfs below /tmp). The overlay gets them as /proc/self/fd/N.
    let mut lowers = Vec::with_capacity(plan.lowers.len());
    for lower in &plan.lowers {
        lowers.push(open_dir(CWD, lower).map_err(fail("open lower layer", lower))?);
    }
    // A kept upper directory (`nsbox build`) may also lie below the scratch mount point.
    let kept = match &plan.upper_dir {
        Some(dir) => {
            let (upper, work) = (dir.join("upper"), dir.join("work"));
            Some((
                open_dir(CWD, &upper).map_err(fail("open upper directory", &upper))?,
                open_dir(CWD, &work).map_err(fail("open work directory", &work))?,
            ))
        }
        None => None,
    };
    let scratch = scratch_dir();
    let data = CString::new(format!("size={},mode=0700", plan.scratch_size.bytes()))
        .map_err(|e| fail("mount scratch tmpfs", scratch)(io::Error::other(e)))?;
    rmount::mount(
        "nsbox-scratch",
        scratch,
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV,
        data.as_c_str(),
    )
    .map_err(|e| fail("mount scratch tmpfs", scratch)(rustix_err(e)))?;
    let (upper, work) = match &kept {
        Some((upper, work)) => (
            PathBuf::from(format!("/proc/self/fd/{}", upper.as_raw_fd())),
            PathBuf::from(format!("/proc/self/fd/{}", work.as_raw_fd())),
        ),
        None => (scratch.join("upper"), scratch.join("work")),
    };
    let new_root = scratch.join("root");
    let made: &[&PathBuf] = if kept.is_some() {
        &[&new_root]
    } else {
        &[&upper, &work, &new_root]
    };
    for dir in made {
        rfs::mkdir(*dir, Mode::from_raw_mode(0o755))
            .map_err(|e| fail("create scratch directory", dir)(rustix_err(e)))?;
    }

    let upper_fd = open_dir(CWD, &upper).map_err(fail("open upper directory", &upper))?;
    let upper_layer = UpperLayer {
        upper: upper_fd.as_fd(),
        lowers: lowers.iter().map(|l| l.as_fd()).collect(),
        ids,
        dirs: Default::default(),
    };
    mark("scratch mounted");
    for op in &plan.upper {
        upper_layer.apply(op)?;
    }
    mark("upper layer prepared");

    // Each lower layer by its descriptor, under `prefix`.
    let options = |prefix: &str| {
        let lowerdir = lowers
            .iter()
            .map(|fd| format!("{prefix}{}", fd.as_raw_fd()))
            .collect::<Vec<_>>()
            .join(":");
        format!(
            "lowerdir={lowerdir},upperdir={},workdir={},index=off",
            escape_overlay_path(&upper),
            escape_overlay_path(&work)
        )
    };
    let full = options("/proc/self/fd/");
    // Images with many layers: mount(2) copies one page of options. Each layer is then named
    // by its descriptor's number alone, resolved from /proc/self/fd as the working directory
    // (overlayfs resolves relative lower paths from the caller's): overlayfs's limit of 500
    // layers fits (`crate::image::MAX_LAYERS` keeps images below it), on every kernel.
    let relative = full.len() >= OVERLAY_OPTIONS_MAX;
    let options = if relative { options("") } else { full };
    let options =
        CString::new(options).map_err(|e| fail("mount overlay", &new_root)(io::Error::other(e)))?;
    let previous = if relative {
        let here =
            open_dir(CWD, Path::new(".")).map_err(fail("open the working directory", &new_root))?;
        rustix::process::chdir("/proc/self/fd")
            .map_err(|e| fail("enter /proc/self/fd", &new_root)(rustix_err(e)))?;
        Some(here)
    } else {
        None
    };
    let mounted = rmount::mount(
        "overlay",
        &new_root,
        "overlay",
        MountFlags::NOSUID | MountFlags::NODEV,
        options.as_c_str(),
    );
    if let Some(here) = previous {
        rustix::process::fchdir(&here)
            .map_err(|e| fail("return to the working directory", &new_root)(rustix_err(e)))?;
    }
    mounted.map_err(|e| fail("mount overlay", &new_root)(rustix_err(e)))?;
    mark("overlay mounted");
    Ok(new_root)
}

/// Directories nsbox creates inside the sandbox are owned by its root unless said otherwise.
const ROOT_OWNED: (u32, u32) = (0, 0);

/// mount(2) copies at most one page of options; stay below it.
const OVERLAY_OPTIONS_MAX: usize = 4000;

/// Applies upper-layer operations to `dir` (a directory of the host) as seen over `lowers`:
/// how the cached mask layer ([`super::mask`]) is built.
pub fn prepare_layer(
    dir: BorrowedFd<'_>,
    lowers: &[BorrowedFd<'_>],
    ids: IdMap,
    ops: &[UpperOp],
) -> Result<(), RootfsError> {
    let layer = UpperLayer {
        upper: dir,
        lowers: lowers.to_vec(),
        ids,
        dirs: Default::default(),
    };
    for op in ops {
        layer.apply(op)?;
    }
    Ok(())
}

/// Overlay options separate layers with ':' and options with ','; both are escaped with '\'.
fn escape_overlay_path(path: &Path) -> String {
    let mut out = String::new();
    for c in path.to_string_lossy().chars() {
        if matches!(c, ':' | ',' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Switches the process's root to `new_root` and detaches the host's root entirely, so no path
/// resolved from here on can reach a host file.
pub fn pivot_into(new_root: &Path) -> Result<(), RootfsError> {
    rustix::process::chdir(new_root)
        .map_err(|e| fail("enter new root", new_root)(rustix_err(e)))?;
    // pivot_root(".", ".") stacks the old root on top of the new one; detaching "." then
    // removes the old root without needing a directory for it inside the new root.
    rustix::process::pivot_root(".", ".")
        .map_err(|e| fail("pivot_root", new_root)(rustix_err(e)))?;
    rmount::unmount(".", UnmountFlags::DETACH)
        .map_err(|e| fail("detach host root", Path::new("/"))(rustix_err(e)))?;
    rustix::process::chdir("/")
        .map_err(|e| fail("enter new root", Path::new("/"))(rustix_err(e)))?;
    Ok(())
}

/// Applies the plan's mount operations inside the new root (after [`pivot_into`]).
pub fn apply_mounts(
    plan: &RootfsPlan,
    sources: &mut [Option<HostSource>],
    ids: IdMap,
    mark: Marker<'_>,
) -> Result<(), RootfsError> {
    let slash = Path::new("/");
    let root = open_dir(CWD, slash).map_err(fail("open new root", slash))?;
    let ctx = Inside {
        root: root.as_fd(),
        ids,
        empty_dir: Default::default(),
    };
    let mut phase: Option<&'static str> = None;
    for op in &plan.mounts {
        let this = op.phase();
        if let Some(done) = phase.filter(|p| *p != this) {
            mark(done);
        }
        phase = Some(this);
        ctx.apply(op, sources)?;
    }
    if let Some(done) = phase {
        mark(done);
    }
    Ok(())
}

fn open_dir(dir: BorrowedFd<'_>, path: &Path) -> io::Result<OwnedFd> {
    rfs::openat(
        dir,
        path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(rustix_err)
}

/// The overlay's upper directory and the lower layers it covers.
struct UpperLayer<'a> {
    upper: BorrowedFd<'a>,
    lowers: Vec<BorrowedFd<'a>>,
    ids: IdMap,
    /// Upper directories already prepared (by in-sandbox path), so entries that share parents
    /// (/var/log, /var/mail, ...) do not redo the work.
    dirs: std::cell::RefCell<std::collections::HashMap<PathBuf, std::rc::Rc<OwnedFd>>>,
}

/// What the lower layers hold at a path, looked up without following symlinks.
enum LowerEntry {
    Missing,
    /// A component on the way is a symlink or not a directory: leave this path alone.
    Unreachable,
    Found(rfs::Stat),
}

impl UpperLayer<'_> {
    fn apply(&self, op: &UpperOp) -> Result<(), RootfsError> {
        match op {
            UpperOp::KeepOnlyTopLevel(keep) => self.keep_only_top_level(keep),
            UpperOp::Hide(path) => self.hide(path),
            UpperOp::WriteFile {
                path,
                contents,
                mode,
            } => self.write_file(path, contents, *mode),
            UpperOp::Accounts { path, lines, merge } => {
                let mut text = Vec::new();
                if *merge {
                    if let Some(existing) = self.read_lower_file(path) {
                        text = existing;
                        if !text.is_empty() && !text.ends_with(b"\n") {
                            text.push(b'\n');
                        }
                    }
                }
                let present = account_ids(&text);
                for AccountLine { id, line } in lines {
                    if !present.contains(id) {
                        text.extend_from_slice(line.as_bytes());
                        text.push(b'\n');
                    }
                }
                self.write_file(path, &text, 0o644)
            }
        }
    }

    fn relative(path: &Path) -> Vec<&OsStr> {
        path.components()
            .filter_map(|c| match c {
                Component::Normal(p) => Some(p),
                _ => None,
            })
            .collect()
    }

    /// Looks `path` up in the lower layers, top first. A symlink anywhere on the way (or a
    /// non-directory parent) makes the path unreachable: it is then left alone. One openat2
    /// per layer: RESOLVE_NO_SYMLINKS refuses any link, RESOLVE_BENEATH any escape.
    fn lower_entry(&self, path: &Path) -> LowerEntry {
        let rel = relative_to_root(path);
        if rel.as_os_str().is_empty() {
            return LowerEntry::Unreachable;
        }
        for lower in &self.lowers {
            match rfs::openat2(
                lower,
                rel,
                OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::NO_SYMLINKS | ResolveFlags::BENEATH | ResolveFlags::NO_XDEV,
            ) {
                Ok(fd) => {
                    return match rfs::fstat(&fd) {
                        Ok(st) => LowerEntry::Found(st),
                        Err(_) => LowerEntry::Unreachable,
                    }
                }
                // The final component itself may be a symlink: O_PATH|O_NOFOLLOW opens the link,
                // but RESOLVE_NO_SYMLINKS refuses it with ELOOP. Tell the two cases apart.
                Err(rustix::io::Errno::LOOP) => {
                    let Some(parent) = rel.parent() else {
                        return LowerEntry::Unreachable;
                    };
                    let parent_ok = parent.as_os_str().is_empty()
                        || rfs::openat2(
                            lower,
                            parent,
                            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                            Mode::empty(),
                            ResolveFlags::NO_SYMLINKS
                                | ResolveFlags::BENEATH
                                | ResolveFlags::NO_XDEV,
                        )
                        .is_ok();
                    if !parent_ok {
                        return LowerEntry::Unreachable;
                    }
                    return match rfs::statat(lower, rel, AtFlags::SYMLINK_NOFOLLOW) {
                        Ok(st) => LowerEntry::Found(st),
                        Err(_) => LowerEntry::Unreachable,
                    };
                }
                Err(rustix::io::Errno::NOENT) => continue,
                Err(_) => return LowerEntry::Unreachable,
            }
        }
        LowerEntry::Missing
    }

    fn read_lower_file(&self, path: &Path) -> Option<Vec<u8>> {
        let parts = Self::relative(path);
        for lower in &self.lowers {
            let mut dir: Option<OwnedFd> = None;
            let mut ok = true;
            for (i, part) in parts.iter().enumerate() {
                let last = i + 1 == parts.len();
                let at = dir.as_ref().map_or(*lower, |d| d.as_fd());
                let flags = if last {
                    OFlags::RDONLY
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC
                        | OFlags::NOCTTY
                        | OFlags::NONBLOCK
                } else {
                    OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
                };
                match rfs::openat(at, *part, flags, Mode::empty()) {
                    Ok(fd) => dir = Some(fd),
                    Err(_) => {
                        // An image layer's whiteout (a 0/0 character device) deletes the
                        // file of the layers below: there is none to read.
                        let whiteout =
                            rfs::statat(at, *part, AtFlags::SYMLINK_NOFOLLOW).is_ok_and(|st| {
                                FileType::from_raw_mode(st.st_mode) == FileType::CharacterDevice
                                    && st.st_rdev == 0
                            });
                        if whiteout {
                            return None;
                        }
                        ok = false;
                        break;
                    }
                }
            }
            if let (true, Some(fd)) = (ok, dir) {
                let is_file = rfs::fstat(&fd)
                    .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::RegularFile);
                if !is_file {
                    return None;
                }
                let mut buf = Vec::new();
                let mut file = File::from(fd);
                // Account files are small; a huge one is not an account file.
                let limited = io::Read::take(&mut file, 1 << 20);
                return io::Read::read_to_end(&mut { limited }, &mut buf)
                    .ok()
                    .map(|_| buf);
            }
        }
        None
    }

    /// Creates the upper directories leading to `path` (not `path` itself), copying mode and
    /// owner from the lower layer so merged directories look unchanged. Returns the parent fd,
    /// or None when a lower component is a symlink (then the path is left alone).
    fn upper_parent(&self, path: &Path) -> Result<Option<std::rc::Rc<OwnedFd>>, RootfsError> {
        let Some(parent) = path.parent() else {
            return Ok(None);
        };
        self.upper_dir(parent)
    }

    /// The upper directory for `path`, created (mirroring the lower one) if needed.
    fn upper_dir(&self, path: &Path) -> Result<Option<std::rc::Rc<OwnedFd>>, RootfsError> {
        if let Some(fd) = self.dirs.borrow().get(path) {
            return Ok(Some(fd.clone()));
        }
        let fd = if path == Path::new("/") || path.as_os_str().is_empty() {
            rfs::openat(
                self.upper,
                ".",
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| fail("open upper directory", path)(rustix_err(e)))?
        } else {
            let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
                return Ok(None);
            };
            let Some(parent_fd) = self.upper_dir(parent)? else {
                return Ok(None);
            };
            let (mode, uid, gid) = match self.lower_entry(path) {
                LowerEntry::Found(st)
                    if FileType::from_raw_mode(st.st_mode) == FileType::Directory =>
                {
                    (st.st_mode & 0o7777, st.st_uid, st.st_gid)
                }
                LowerEntry::Missing => (0o755, self.ids.base, self.ids.base),
                _ => return Ok(None),
            };
            match rfs::mkdirat(&*parent_fd, name, Mode::from_raw_mode(mode)) {
                Ok(()) if (uid, gid) != (0, 0) => {
                    rfs::chownat(
                        &*parent_fd,
                        name,
                        Some(rfs::Uid::from_raw(uid)),
                        Some(rfs::Gid::from_raw(gid)),
                        AtFlags::SYMLINK_NOFOLLOW,
                    )
                    .map_err(|e| fail("prepare upper directory", path)(rustix_err(e)))?;
                }
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(fail("prepare upper directory", path)(rustix_err(e))),
            }
            rfs::openat(
                &*parent_fd,
                name,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| fail("prepare upper directory", path)(rustix_err(e)))?
        };
        let fd = std::rc::Rc::new(fd);
        self.dirs
            .borrow_mut()
            .insert(path.to_path_buf(), fd.clone());
        Ok(Some(fd))
    }

    fn keep_only_top_level(&self, keep: &[String]) -> Result<(), RootfsError> {
        let slash = Path::new("/");
        for lower in &self.lowers {
            let dir = rfs::openat(
                lower,
                ".",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| fail("list lower layer", slash)(rustix_err(e)))?;
            let entries = rfs::Dir::read_from(&dir)
                .map_err(|e| fail("list lower layer", slash)(rustix_err(e)))?;
            for entry in entries {
                let entry = entry.map_err(|e| fail("list lower layer", slash)(rustix_err(e)))?;
                let name = OsStr::from_bytes(entry.file_name().to_bytes());
                if name == "." || name == ".." || keep.iter().any(|k| OsStr::new(k) == name) {
                    continue;
                }
                rfs::mknodat(
                    self.upper,
                    name,
                    FileType::CharacterDevice,
                    Mode::empty(),
                    rfs::makedev(0, 0),
                )
                .or_else(|e| {
                    if e == rustix::io::Errno::EXIST {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })
                .map_err(|e| fail("hide", &slash.join(name))(rustix_err(e)))?;
            }
        }
        Ok(())
    }

    fn hide(&self, path: &Path) -> Result<(), RootfsError> {
        let rel = relative_to_root(path);
        let top_level = rel.components().count() == 1;
        if top_level && rfs::statat(self.upper, rel, AtFlags::SYMLINK_NOFOLLOW).is_ok() {
            // Already decided (whited out as an unlisted top-level entry).
            return Ok(());
        }
        let st = match self.lower_entry(path) {
            LowerEntry::Found(st) => st,
            LowerEntry::Missing | LowerEntry::Unreachable => return Ok(()),
        };
        let Some(parent) = self.upper_parent(path)? else {
            return Ok(());
        };
        let Some(name) = path.file_name() else {
            return Ok(());
        };
        match FileType::from_raw_mode(st.st_mode) {
            // A link resolves inside the sandbox's root, where its target is hidden or not on
            // its own terms; removing it would only break programs.
            FileType::Symlink => Ok(()),
            FileType::Directory => {
                rfs::mkdirat(&*parent, name, Mode::from_raw_mode(st.st_mode & 0o7777))
                    .or_else(|e| {
                        if e == rustix::io::Errno::EXIST {
                            Ok(())
                        } else {
                            Err(e)
                        }
                    })
                    .map_err(|e| fail("hide directory", path)(rustix_err(e)))?;
                let dir = rfs::openat(
                    &*parent,
                    name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| fail("hide directory", path)(rustix_err(e)))?;
                if (st.st_uid, st.st_gid) != (0, 0) {
                    rfs::fchown(
                        &dir,
                        Some(rfs::Uid::from_raw(st.st_uid)),
                        Some(rfs::Gid::from_raw(st.st_gid)),
                    )
                    .map_err(|e| fail("hide directory", path)(rustix_err(e)))?;
                }
                // An opaque upper directory hides everything below it in the lower layers.
                rfs::fsetxattr(&dir, "trusted.overlay.opaque", b"y", XattrFlags::empty())
                    .map_err(|e| fail("hide directory", path)(rustix_err(e)))
            }
            _ => {
                // A whiteout: a 0/0 character device in the upper layer.
                rfs::mknodat(
                    &*parent,
                    name,
                    FileType::CharacterDevice,
                    Mode::empty(),
                    rfs::makedev(0, 0),
                )
                .or_else(|e| {
                    if e == rustix::io::Errno::EXIST {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })
                .map_err(|e| fail("hide file", path)(rustix_err(e)))
            }
        }
    }

    fn write_file(&self, path: &Path, contents: &[u8], mode: u32) -> Result<(), RootfsError> {
        let Some(parent) = self.upper_parent(path)? else {
            return Ok(());
        };
        let Some(name) = path.file_name() else {
            return Ok(());
        };
        let fd = rfs::openat(
            &*parent,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode),
        )
        .map_err(|e| fail("write file", path)(rustix_err(e)))?;
        rfs::fchown(&fd, Some(self.ids.uid(0)), Some(self.ids.gid(0)))
            .map_err(|e| fail("write file", path)(rustix_err(e)))?;
        File::from(fd)
            .write_all(contents)
            .map_err(fail("write file", path))
    }
}

/// The numeric ids (third field) already defined in an account file.
fn account_ids(text: &[u8]) -> Vec<u32> {
    text.split(|b| *b == b'\n')
        .filter_map(|line| {
            let field = line.split(|b| *b == b':').nth(2)?;
            std::str::from_utf8(field).ok()?.trim().parse().ok()
        })
        .collect()
}

/// The new root, after pivot_root: all paths resolve inside it.
struct Inside<'a> {
    root: BorrowedFd<'a>,
    ids: IdMap,
    /// The first masked directory (an empty read-only tmpfs), bound over the others.
    empty_dir: std::cell::RefCell<Option<PathBuf>>,
}

fn fd_path(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

fn mount_flags(flags: Flags) -> MountFlags {
    let mut f = MountFlags::empty();
    if flags.nosuid {
        f |= MountFlags::NOSUID;
    }
    if flags.nodev {
        f |= MountFlags::NODEV;
    }
    if flags.noexec {
        f |= MountFlags::NOEXEC;
    }
    if flags.readonly {
        f |= MountFlags::RDONLY;
    }
    f
}

fn relative_to_root(path: &Path) -> &Path {
    path.strip_prefix("/").unwrap_or(path)
}

impl Inside<'_> {
    /// Opens (as O_PATH) the directory `path` inside the root, creating missing directories as
    /// `owner` (inside ids). Symlinks are followed only within the root.
    fn dir(&self, path: &Path, owner: (u32, u32)) -> io::Result<OwnedFd> {
        let rel = relative_to_root(path);
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
        let target = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        match rfs::openat2(self.root, target, flags, Mode::empty(), resolve) {
            Ok(fd) => Ok(fd),
            Err(rustix::io::Errno::NOENT) => {
                let parent = path.parent().unwrap_or(Path::new("/"));
                let name = path
                    .file_name()
                    .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
                let parent_fd = self.dir(parent, owner)?;
                let parent_dir = self.reopen_dir(&parent_fd)?;
                match rfs::mkdirat(&parent_dir, name, Mode::from_raw_mode(0o755)) {
                    Ok(()) => {
                        let (uid, gid) = owner;
                        rfs::chownat(
                            &parent_dir,
                            name,
                            Some(self.ids.uid(uid)),
                            Some(self.ids.gid(gid)),
                            AtFlags::SYMLINK_NOFOLLOW,
                        )
                        .map_err(rustix_err)?;
                    }
                    Err(rustix::io::Errno::EXIST) => {}
                    Err(e) => return Err(rustix_err(e)),
                }
                rfs::openat2(self.root, rel, flags, Mode::empty(), resolve).map_err(rustix_err)
            }
            Err(e) => Err(rustix_err(e)),
        }
    }

    /// Turns an O_PATH directory fd into one usable with *at() calls that create entries.
    fn reopen_dir(&self, fd: &OwnedFd) -> io::Result<OwnedFd> {
        rfs::openat(
            fd,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(rustix_err)
    }

    /// Opens (as O_PATH) the file `path`, creating an empty file when missing.
    fn file(&self, path: &Path) -> io::Result<OwnedFd> {
        let rel = relative_to_root(path);
        let resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
        let flags = OFlags::PATH | OFlags::CLOEXEC;
        match rfs::openat2(self.root, rel, flags, Mode::empty(), resolve) {
            Ok(fd) => Ok(fd),
            Err(rustix::io::Errno::NOENT) => {
                let parent = self.dir(path.parent().unwrap_or(Path::new("/")), ROOT_OWNED)?;
                let parent = self.reopen_dir(&parent)?;
                let name = path
                    .file_name()
                    .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
                drop(
                    rfs::openat(
                        &parent,
                        name,
                        OFlags::WRONLY | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::from_raw_mode(0o644),
                    )
                    .map_err(rustix_err)?,
                );
                rfs::openat2(self.root, rel, flags, Mode::empty(), resolve).map_err(rustix_err)
            }
            Err(e) => Err(rustix_err(e)),
        }
    }

    fn apply(&self, op: &MountOp, sources: &mut [Option<HostSource>]) -> Result<(), RootfsError> {
        match op {
            MountOp::Proc { target } => {
                let dir = self
                    .dir(target, ROOT_OWNED)
                    .map_err(fail("mount proc on", target))?;
                // The first mount inside: /proc/self/fd does not exist yet, so this one uses the
                // fd-based mount API directly.
                let fs = rmount::fsopen("proc", FsOpenFlags::FSOPEN_CLOEXEC)
                    .map_err(|e| fail("mount proc on", target)(rustix_err(e)))?;
                rmount::fsconfig_create(&fs)
                    .map_err(|e| fail("mount proc on", target)(rustix_err(e)))?;
                let mnt = rmount::fsmount(
                    &fs,
                    FsMountFlags::FSMOUNT_CLOEXEC,
                    MountAttrFlags::MOUNT_ATTR_NOSUID
                        | MountAttrFlags::MOUNT_ATTR_NODEV
                        | MountAttrFlags::MOUNT_ATTR_NOEXEC,
                )
                .map_err(|e| fail("mount proc on", target)(rustix_err(e)))?;
                rmount::move_mount(
                    &mnt,
                    "",
                    &dir,
                    "",
                    MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH
                        | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
                )
                .map_err(|e| fail("mount proc on", target)(rustix_err(e)))
            }
            MountOp::Tmpfs {
                target,
                size,
                mode,
                uid,
                gid,
                flags,
            } => {
                let dir = self
                    .dir(target, ROOT_OWNED)
                    .map_err(fail("mount tmpfs on", target))?;
                let data = format!(
                    "size={},mode={:o},uid={},gid={}",
                    size.bytes(),
                    mode,
                    self.ids.base + uid,
                    self.ids.base + gid
                );
                self.mount_fs("tmpfs", &dir, "tmpfs", mount_flags(*flags), Some(&data))
                    .map_err(fail("mount tmpfs on", target))
            }
            MountOp::Sysfs { target } | MountOp::Cgroup2 { target } => {
                let (fstype, step) = match op {
                    MountOp::Sysfs { .. } => ("sysfs", "mount sysfs on"),
                    _ => ("cgroup2", "mount cgroup2 on"),
                };
                let dir = self.dir(target, ROOT_OWNED).map_err(fail(step, target))?;
                let flags = MountFlags::RDONLY
                    | MountFlags::NOSUID
                    | MountFlags::NODEV
                    | MountFlags::NOEXEC;
                self.mount_fs(fstype, &dir, fstype, flags, None)
                    .map_err(fail(step, target))
            }
            MountOp::Devpts { target, tty_gid } => {
                let dir = self
                    .dir(target, ROOT_OWNED)
                    .map_err(fail("mount devpts on", target))?;
                let data = format!(
                    "newinstance,ptmxmode=0666,mode=0620,gid={},max={}",
                    self.ids.base + tty_gid,
                    super::plan::DEVPTS_MAX
                );
                self.mount_fs(
                    "devpts",
                    &dir,
                    "devpts",
                    MountFlags::NOSUID | MountFlags::NOEXEC,
                    Some(&data),
                )
                .map_err(fail("mount devpts on", target))
            }
            MountOp::CharDevice {
                target,
                major,
                minor,
                mode,
            } => rfs::mknodat(
                CWD,
                target,
                FileType::CharacterDevice,
                Mode::from_raw_mode(*mode),
                rfs::makedev(*major, *minor),
            )
            .map_err(|e| fail("create device", target)(rustix_err(e))),
            MountOp::Symlink { target, points_to } => rfs::symlinkat(points_to, CWD, target)
                .map_err(|e| fail("create symlink", target)(rustix_err(e))),
            MountOp::Mkdir { target, mode } => {
                rfs::mkdirat(CWD, target, Mode::from_raw_mode(*mode))
                    .map_err(|e| fail("create directory", target)(rustix_err(e)))
            }
            MountOp::Bind {
                source,
                target,
                readonly,
            } => {
                let Some(HostSource::Tree { fd, is_dir }) =
                    sources.get_mut(*source).and_then(Option::take)
                else {
                    return Err(fail("bind", target)(io::Error::other(
                        "source was not opened",
                    )));
                };
                let mut attrs = sys::fs::attr::NOSUID | sys::fs::attr::NODEV;
                if *readonly {
                    attrs |= sys::fs::attr::RDONLY;
                }
                sys::fs::set_mount_attrs(fd.as_fd(), attrs).map_err(fail("bind", target))?;
                let to = if is_dir {
                    self.dir(target, ROOT_OWNED)
                } else {
                    self.file(target)
                }
                .map_err(fail("bind", target))?;
                rmount::move_mount(
                    &fd,
                    "",
                    &to,
                    "",
                    MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH
                        | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
                )
                .map_err(|e| fail("bind", target)(rustix_err(e)))
            }
            MountOp::MaskFile { target } => match rmount::mount_bind("/dev/null", target) {
                // Absent on this kernel: nothing to hide.
                Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
                Err(e) => Err(fail("mask", target)(rustix_err(e))),
            },
            MountOp::MaskDir { target } => {
                // One empty read-only tmpfs serves every masked directory: the first is
                // mounted, the others bind it (cheaper than a new filesystem each).
                let empty = self.empty_dir.borrow().clone();
                let result = match &empty {
                    Some(empty) => rmount::mount_bind(empty, target),
                    None => {
                        let flags = MountFlags::RDONLY
                            | MountFlags::NOSUID
                            | MountFlags::NODEV
                            | MountFlags::NOEXEC;
                        rmount::mount("tmpfs", target, "tmpfs", flags, c"size=4k,mode=0555")
                            .inspect(|()| *self.empty_dir.borrow_mut() = Some(target.clone()))
                    }
                };
                match result {
                    // Absent on this kernel: nothing to hide.
                    Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
                    Err(e) => Err(fail("mask", target)(rustix_err(e))),
                }
            }
            MountOp::ReadOnlyBind { target } => {
                match rmount::mount_bind_recursive(target, target) {
                    Ok(()) => {}
                    Err(rustix::io::Errno::NOENT) => return Ok(()),
                    Err(e) => return Err(fail("make read-only", target)(rustix_err(e))),
                }
                let flags = MountFlags::BIND
                    | MountFlags::RDONLY
                    | MountFlags::NOSUID
                    | MountFlags::NODEV
                    | MountFlags::NOEXEC;
                rmount::mount_remount(target, flags, "")
                    .map_err(|e| fail("make read-only", target)(rustix_err(e)))
            }
            MountOp::CopyIn {
                source,
                target,
                uid,
                gid,
            } => {
                let Some(HostSource::Copy { fd, .. }) =
                    sources.get_mut(*source).and_then(Option::take)
                else {
                    return Err(fail("copy", target)(io::Error::other(
                        "source was not opened",
                    )));
                };
                self.copy_in(fd, target, (*uid, *gid))
            }
            MountOp::Workdir { target, uid, gid } => {
                let owner = if target.starts_with("/sandbox") {
                    (*uid, *gid)
                } else {
                    ROOT_OWNED
                };
                self.dir(target, owner)
                    .map(drop)
                    .map_err(fail("create working directory", target))
            }
            MountOp::RemountReadOnly { target, flags } => {
                let flags = mount_flags(*flags) | MountFlags::BIND | MountFlags::RDONLY;
                rmount::mount_remount(target, flags, "")
                    .map_err(|e| fail("make read-only", target)(rustix_err(e)))
            }
        }
    }

    fn mount_fs(
        &self,
        source: &str,
        target: &OwnedFd,
        fstype: &str,
        flags: MountFlags,
        data: Option<&str>,
    ) -> io::Result<()> {
        let data = data
            .map(CString::new)
            .transpose()
            .map_err(io::Error::other)?;
        rmount::mount(
            source,
            fd_path(target).as_str(),
            fstype,
            flags,
            data.as_deref(),
        )
        .map_err(rustix_err)
    }

    /// Copies a host file or tree to `target` (inside the sandbox's working tmpfs), owned by
    /// `owner`, keeping permission bits (minus setuid/setgid) and modification times. Symlinks
    /// inside a tree are copied as symlinks, never followed.
    fn copy_in(&self, src: OwnedFd, target: &Path, owner: (u32, u32)) -> Result<(), RootfsError> {
        let parent = self
            .dir(target.parent().unwrap_or(Path::new("/sandbox")), owner)
            .and_then(|p| self.reopen_dir(&p))
            .map_err(fail("copy into", target))?;
        let name = target
            .file_name()
            .ok_or_else(|| fail("copy into", target)(io::Error::from_raw_os_error(libc::EINVAL)))?;
        let host_owner = (self.ids.base + owner.0, self.ids.base + owner.1);
        let mut copier = super::copy::TreeCopy::new(Some(host_owner), false);
        copier
            .open_entry(src, parent.as_fd(), name)
            .map_err(fail("copy into", target))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_paths_are_escaped() {
        assert_eq!(
            escape_overlay_path(Path::new("/a:b,c\\d")),
            "/a\\:b\\,c\\\\d"
        );
        assert_eq!(escape_overlay_path(Path::new("/")), "/");
    }

    #[test]
    fn account_ids_reads_the_third_field() {
        let text = b"root:x:0:0:root:/root:/bin/sh\nsandbox:x:100:101::/sandbox:/bin/sh\nbroken\n";
        assert_eq!(account_ids(text), vec![0, 100]);
        assert_eq!(account_ids(b"root:x:0:\ntty:x:5:\n"), vec![0, 5]);
    }
}
