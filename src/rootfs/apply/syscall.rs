//! The seam between the mount interpreter ([`super::mounts`]) and the kernel: [`Syscalls`] is
//! every privileged operation the interpreter makes inside the new root, [`InRoot`] the real
//! one, and `Recorder` (tests only) a fake that records the calls, so the order and flags of
//! a plan's mounts are unit-tested without root.
//!
//! Targets are paths inside the new root. [`InRoot`] resolves each with
//! openat2(RESOLVE_IN_ROOT) and mounts on the resulting descriptor, so a symlink the image or
//! the workload planted cannot send a mount outside the root; the trait keeps that promise
//! for every implementation by taking paths, never descriptors, from the interpreter.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, ResolveFlags, CWD};
use rustix::mount::{
    self as rmount, FsMountFlags, FsOpenFlags, MountAttrFlags, MountFlags, MoveMountFlags,
};

use super::error::rustix_err;
use super::{relative_to_root, IdMap};
use crate::sys;

/// Where a mount goes inside the new root; created (owned by the sandbox's root) when missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountPoint {
    Dir,
    File,
}

/// The privileged operations of the mount interpreter. Owners are the sandbox's own
/// (inside) ids; the implementation maps them to host ids.
pub trait Syscalls {
    /// Makes sure directory `path` exists, creating missing components (mode 0755) owned by
    /// `owner`.
    fn make_dirs(&self, path: &Path, owner: (u32, u32)) -> io::Result<()>;
    /// A fresh procfs on the directory `target` (nosuid, nodev, noexec).
    fn mount_proc(&self, target: &Path) -> io::Result<()>;
    /// A new filesystem of type `fstype` on the directory `target`, created when missing.
    fn mount_new(
        &self,
        fstype: &str,
        target: &Path,
        flags: MountFlags,
        data: Option<&str>,
    ) -> io::Result<()>;
    /// Attaches a detached mount tree (from open_tree) at `target`, after setting `attrs`
    /// (`sys::fs::attr` bits) on it.
    fn attach_tree(
        &self,
        tree: OwnedFd,
        target: &Path,
        point: MountPoint,
        attrs: u64,
    ) -> io::Result<()>;
    /// Binds `source` (a path inside the root, or /dev/null) on the existing `target`.
    fn bind(&self, source: &Path, target: &Path, recursive: bool) -> io::Result<()>;
    /// Whether the last component of `target` is a symbolic link.
    fn is_symlink(&self, target: &Path) -> bool;
    /// mount(2) by path on an existing `target` (no creation; ENOENT when absent).
    fn mount_on_existing(
        &self,
        fstype: &str,
        target: &Path,
        flags: MountFlags,
        data: &str,
    ) -> io::Result<()>;
    /// Changes the flags of the mount at `target` (MS_REMOUNT).
    fn remount(&self, target: &Path, flags: MountFlags) -> io::Result<()>;
    fn mknod_char(&self, target: &Path, mode: u32, major: u32, minor: u32) -> io::Result<()>;
    fn symlink(&self, points_to: &Path, target: &Path) -> io::Result<()>;
    fn mkdir(&self, target: &Path, mode: u32) -> io::Result<()>;
    /// Copies the host file or tree `source` to `target`, owned by `owner`; missing parent
    /// directories are created owned by `owner` too.
    fn copy_in(&self, source: OwnedFd, target: &Path, owner: (u32, u32)) -> io::Result<()>;
}

/// The real [`Syscalls`], after pivot_root: every path resolves inside `root`.
pub struct InRoot<'a> {
    pub root: BorrowedFd<'a>,
    pub ids: IdMap,
}

/// The sandbox's root user, inside.
const ROOT_OWNED: (u32, u32) = (0, 0);

fn fd_path(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

impl InRoot<'_> {
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
}

impl Syscalls for InRoot<'_> {
    fn make_dirs(&self, path: &Path, owner: (u32, u32)) -> io::Result<()> {
        self.dir(path, owner).map(drop)
    }

    fn mount_proc(&self, target: &Path) -> io::Result<()> {
        let dir = self.dir(target, ROOT_OWNED)?;
        // The first mount inside: /proc/self/fd does not exist yet, so this one uses the
        // fd-based mount API directly.
        let fs = rmount::fsopen("proc", FsOpenFlags::FSOPEN_CLOEXEC).map_err(rustix_err)?;
        rmount::fsconfig_create(&fs).map_err(rustix_err)?;
        let mnt = rmount::fsmount(
            &fs,
            FsMountFlags::FSMOUNT_CLOEXEC,
            MountAttrFlags::MOUNT_ATTR_NOSUID
                | MountAttrFlags::MOUNT_ATTR_NODEV
                | MountAttrFlags::MOUNT_ATTR_NOEXEC,
        )
        .map_err(rustix_err)?;
        rmount::move_mount(
            &mnt,
            "",
            &dir,
            "",
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
        )
        .map_err(rustix_err)
    }

    fn mount_new(
        &self,
        fstype: &str,
        target: &Path,
        flags: MountFlags,
        data: Option<&str>,
    ) -> io::Result<()> {
        let dir = self.dir(target, ROOT_OWNED)?;
        let data = data
            .map(CString::new)
            .transpose()
            .map_err(io::Error::other)?;
        rmount::mount(
            fstype,
            fd_path(&dir).as_str(),
            fstype,
            flags,
            data.as_deref(),
        )
        .map_err(rustix_err)
    }

    fn attach_tree(
        &self,
        tree: OwnedFd,
        target: &Path,
        point: MountPoint,
        attrs: u64,
    ) -> io::Result<()> {
        sys::fs::set_mount_attrs(tree.as_fd(), attrs)?;
        let to = match point {
            MountPoint::Dir => self.dir(target, ROOT_OWNED),
            MountPoint::File => self.file(target),
        }?;
        rmount::move_mount(
            &tree,
            "",
            &to,
            "",
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
        )
        .map_err(rustix_err)
    }

    fn is_symlink(&self, target: &Path) -> bool {
        std::fs::symlink_metadata(target).is_ok_and(|m| m.file_type().is_symlink())
    }

    fn bind(&self, source: &Path, target: &Path, recursive: bool) -> io::Result<()> {
        if recursive {
            rmount::mount_bind_recursive(source, target)
        } else {
            rmount::mount_bind(source, target)
        }
        .map_err(rustix_err)
    }

    fn mount_on_existing(
        &self,
        fstype: &str,
        target: &Path,
        flags: MountFlags,
        data: &str,
    ) -> io::Result<()> {
        let data = CString::new(data).map_err(io::Error::other)?;
        rmount::mount(fstype, target, fstype, flags, data.as_c_str()).map_err(rustix_err)
    }

    fn remount(&self, target: &Path, flags: MountFlags) -> io::Result<()> {
        rmount::mount_remount(target, flags, "").map_err(rustix_err)
    }

    fn mknod_char(&self, target: &Path, mode: u32, major: u32, minor: u32) -> io::Result<()> {
        rfs::mknodat(
            CWD,
            target,
            FileType::CharacterDevice,
            Mode::from_raw_mode(mode),
            rfs::makedev(major, minor),
        )
        .map_err(rustix_err)
    }

    fn symlink(&self, points_to: &Path, target: &Path) -> io::Result<()> {
        rfs::symlinkat(points_to, CWD, target).map_err(rustix_err)
    }

    fn mkdir(&self, target: &Path, mode: u32) -> io::Result<()> {
        rfs::mkdirat(CWD, target, Mode::from_raw_mode(mode)).map_err(rustix_err)
    }

    fn copy_in(&self, source: OwnedFd, target: &Path, owner: (u32, u32)) -> io::Result<()> {
        let parent = self
            .dir(target.parent().unwrap_or(Path::new("/")), owner)
            .and_then(|p| self.reopen_dir(&p))?;
        let name = target
            .file_name()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        let host_owner = (self.ids.base + owner.0, self.ids.base + owner.1);
        let mut copier = crate::rootfs::copy::TreeCopy::new(Some(host_owner), false);
        copier.open_entry(source, parent.as_fd(), name)
    }
}

/// A fake [`Syscalls`] that records every call (tests only).
#[cfg(test)]
pub mod fake {
    use std::cell::RefCell;
    use std::collections::HashSet;
    use std::path::PathBuf;

    use super::*;

    /// One recorded call, with the arguments that matter.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Call {
        MakeDirs {
            path: PathBuf,
            owner: (u32, u32),
        },
        MountProc(PathBuf),
        MountNew {
            fstype: String,
            target: PathBuf,
            flags: MountFlags,
            data: Option<String>,
        },
        AttachTree {
            target: PathBuf,
            point: MountPoint,
            attrs: u64,
        },
        Bind {
            source: PathBuf,
            target: PathBuf,
            recursive: bool,
        },
        MountOnExisting {
            fstype: String,
            target: PathBuf,
            flags: MountFlags,
            data: String,
        },
        Remount {
            target: PathBuf,
            flags: MountFlags,
        },
        MknodChar {
            target: PathBuf,
            mode: u32,
            major: u32,
            minor: u32,
        },
        Symlink {
            points_to: PathBuf,
            target: PathBuf,
        },
        Mkdir {
            target: PathBuf,
            mode: u32,
        },
        CopyIn {
            target: PathBuf,
            owner: (u32, u32),
        },
    }

    impl Call {
        /// The path the call acts on.
        pub fn target(&self) -> &Path {
            match self {
                Call::MakeDirs { path, .. } => path,
                Call::MountProc(target)
                | Call::MountNew { target, .. }
                | Call::AttachTree { target, .. }
                | Call::Bind { target, .. }
                | Call::MountOnExisting { target, .. }
                | Call::Remount { target, .. }
                | Call::MknodChar { target, .. }
                | Call::Symlink { target, .. }
                | Call::Mkdir { target, .. }
                | Call::CopyIn { target, .. } => target,
            }
        }
    }

    /// Records calls; paths in `absent` fail with ENOENT (a kernel without that file).
    #[derive(Default)]
    pub struct Recorder {
        pub calls: RefCell<Vec<Call>>,
        pub absent: HashSet<PathBuf>,
    }

    impl Recorder {
        fn record(&self, call: Call) -> io::Result<()> {
            let missing = self.absent.contains(call.target());
            self.calls.borrow_mut().push(call);
            if missing {
                Err(io::Error::from_raw_os_error(libc::ENOENT))
            } else {
                Ok(())
            }
        }
    }

    impl Syscalls for Recorder {
        fn make_dirs(&self, path: &Path, owner: (u32, u32)) -> io::Result<()> {
            self.record(Call::MakeDirs {
                path: path.into(),
                owner,
            })
        }
        fn mount_proc(&self, target: &Path) -> io::Result<()> {
            self.record(Call::MountProc(target.into()))
        }
        fn mount_new(
            &self,
            fstype: &str,
            target: &Path,
            flags: MountFlags,
            data: Option<&str>,
        ) -> io::Result<()> {
            self.record(Call::MountNew {
                fstype: fstype.into(),
                target: target.into(),
                flags,
                data: data.map(str::to_string),
            })
        }
        fn attach_tree(
            &self,
            _tree: OwnedFd,
            target: &Path,
            point: MountPoint,
            attrs: u64,
        ) -> io::Result<()> {
            self.record(Call::AttachTree {
                target: target.into(),
                point,
                attrs,
            })
        }
        fn is_symlink(&self, _target: &Path) -> bool {
            false
        }

        fn bind(&self, source: &Path, target: &Path, recursive: bool) -> io::Result<()> {
            self.record(Call::Bind {
                source: source.into(),
                target: target.into(),
                recursive,
            })
        }
        fn mount_on_existing(
            &self,
            fstype: &str,
            target: &Path,
            flags: MountFlags,
            data: &str,
        ) -> io::Result<()> {
            self.record(Call::MountOnExisting {
                fstype: fstype.into(),
                target: target.into(),
                flags,
                data: data.into(),
            })
        }
        fn remount(&self, target: &Path, flags: MountFlags) -> io::Result<()> {
            self.record(Call::Remount {
                target: target.into(),
                flags,
            })
        }
        fn mknod_char(&self, target: &Path, mode: u32, major: u32, minor: u32) -> io::Result<()> {
            self.record(Call::MknodChar {
                target: target.into(),
                mode,
                major,
                minor,
            })
        }
        fn symlink(&self, points_to: &Path, target: &Path) -> io::Result<()> {
            self.record(Call::Symlink {
                points_to: points_to.into(),
                target: target.into(),
            })
        }
        fn mkdir(&self, target: &Path, mode: u32) -> io::Result<()> {
            self.record(Call::Mkdir {
                target: target.into(),
                mode,
            })
        }
        fn copy_in(&self, _source: OwnedFd, target: &Path, owner: (u32, u32)) -> io::Result<()> {
            self.record(Call::CopyIn {
                target: target.into(),
                owner,
            })
        }
    }
}
