//! The plan's mount operations inside the new root (after pivot_root), in the plan's order:
//! each [`MountOp`] becomes a few [`Syscalls`] calls. Which filesystem, which flags, which
//! owner is decided here only as far as the plan's data says; the calls go through the
//! [`super::syscall`] seam so a recording fake checks the sequence without root.

use std::cell::RefCell;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags, CWD};
use rustix::mount::MountFlags;

use super::error::{fail, rustix_err};
use super::syscall::{InRoot, MountPoint, Syscalls};
use super::{HostSource, IdMap, Marker, RootfsError};
use crate::rootfs::plan::{Flags, MountOp, RootfsPlan};
use crate::sys;

/// Applies the plan's mount operations inside the new root (after
/// [`super::pivot_into`]).
pub fn apply_mounts(
    plan: &RootfsPlan,
    sources: &mut [Option<HostSource>],
    ids: IdMap,
    mark: Marker<'_>,
) -> Result<(), RootfsError> {
    let slash = Path::new("/");
    let root = rustix::fs::openat(
        CWD,
        slash,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| fail("open new root", slash)(rustix_err(e)))?;
    let sys = InRoot {
        root: root.as_fd(),
        ids,
    };
    run(&sys, &plan.mounts, sources, ids, mark)
}

/// Interprets `mounts` through `sys`, marking the end of each phase.
fn run(
    sys: &impl Syscalls,
    mounts: &[MountOp],
    sources: &mut [Option<HostSource>],
    ids: IdMap,
    mark: Marker<'_>,
) -> Result<(), RootfsError> {
    let interpreter = Interpreter {
        sys,
        ids,
        empty_dir: RefCell::default(),
    };
    let mut phase: Option<&'static str> = None;
    for op in mounts {
        let this = op.phase();
        if let Some(done) = phase.filter(|p| *p != this) {
            mark(done);
        }
        phase = Some(this);
        interpreter.apply(op, sources)?;
    }
    if let Some(done) = phase {
        mark(done);
    }
    Ok(())
}

struct Interpreter<'a, S> {
    sys: &'a S,
    ids: IdMap,
    /// The first masked directory (an empty read-only tmpfs), bound over the others.
    empty_dir: RefCell<Option<PathBuf>>,
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

/// A path the kernel does not have (a /proc file of an option it was built without) has
/// nothing to hide.
fn absent_is_fine(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

impl<S: Syscalls> Interpreter<'_, S> {
    fn apply(&self, op: &MountOp, sources: &mut [Option<HostSource>]) -> Result<(), RootfsError> {
        let sys = self.sys;
        match op {
            MountOp::Proc { target } => sys
                .mount_proc(target)
                .map_err(fail("mount proc on", target)),
            MountOp::Tmpfs {
                target,
                size,
                mode,
                uid,
                gid,
                flags,
            } => {
                let data = format!(
                    "size={},mode={:o},uid={},gid={}",
                    size.bytes(),
                    mode,
                    self.ids.base + uid,
                    self.ids.base + gid
                );
                sys.mount_new("tmpfs", target, mount_flags(*flags), Some(&data))
                    .map_err(fail("mount tmpfs on", target))
            }
            MountOp::Sysfs { target } | MountOp::Cgroup2 { target } => {
                let (fstype, step) = match op {
                    MountOp::Sysfs { .. } => ("sysfs", "mount sysfs on"),
                    _ => ("cgroup2", "mount cgroup2 on"),
                };
                let flags = MountFlags::RDONLY
                    | MountFlags::NOSUID
                    | MountFlags::NODEV
                    | MountFlags::NOEXEC;
                sys.mount_new(fstype, target, flags, None)
                    .map_err(fail(step, target))
            }
            MountOp::Devpts { target, tty_gid } => {
                let data = format!(
                    "newinstance,ptmxmode=0666,mode=0620,gid={},max={}",
                    self.ids.base + tty_gid,
                    crate::rootfs::plan::DEVPTS_MAX
                );
                sys.mount_new(
                    "devpts",
                    target,
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
            } => sys
                .mknod_char(target, *mode, *major, *minor)
                .map_err(fail("create device", target)),
            MountOp::Symlink { target, points_to } => sys
                .symlink(points_to, target)
                .map_err(fail("create symlink", target)),
            MountOp::Mkdir { target, mode } => sys
                .mkdir(target, *mode)
                .map_err(fail("create directory", target)),
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
                let point = if is_dir {
                    MountPoint::Dir
                } else {
                    MountPoint::File
                };
                sys.attach_tree(fd, target, point, attrs)
                    .map_err(fail("bind", target))
            }
            MountOp::MaskFile { target } => {
                absent_is_fine(sys.bind(Path::new("/dev/null"), target, false))
                    .map_err(fail("mask", target))
            }
            MountOp::MaskDir { target } => {
                // One empty read-only tmpfs serves every masked directory: the first is
                // mounted, the others bind it (cheaper than a new filesystem each).
                let empty = self.empty_dir.borrow().clone();
                let result = match &empty {
                    Some(empty) => sys.bind(empty, target, false),
                    None => {
                        let flags = MountFlags::RDONLY
                            | MountFlags::NOSUID
                            | MountFlags::NODEV
                            | MountFlags::NOEXEC;
                        sys.mount_on_existing("tmpfs", target, flags, "size=4k,mode=0555")
                            .inspect(|()| *self.empty_dir.borrow_mut() = Some(target.clone()))
                    }
                };
                absent_is_fine(result).map_err(fail("mask", target))
            }
            MountOp::KeepDir {
                target,
                uid,
                gid,
                flags,
            } => {
                // The image decides what is there: a symlink (say, to /etc) would make another
                // directory of the read-only root writable. Only a real directory is kept.
                // (Pivoted already: the path is the new root's; its parent is the root.)
                if sys.is_symlink(target) {
                    return Err(fail("keep the image's directory", target)(
                        io::Error::other("it is a symbolic link in the image"),
                    ));
                }
                sys.make_dirs(target, (*uid, *gid))
                    .map_err(fail("create directory", target))?;
                sys.bind(target, target, false)
                    .map_err(fail("bind onto itself", target))?;
                sys.remount(target, mount_flags(*flags) | MountFlags::BIND)
                    .map_err(fail("set mount flags of", target))
            }
            MountOp::ReadOnlyBind { target } => {
                match sys.bind(target, target, true) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
                    Err(e) => return Err(fail("make read-only", target)(e)),
                }
                let flags = MountFlags::BIND
                    | MountFlags::RDONLY
                    | MountFlags::NOSUID
                    | MountFlags::NODEV
                    | MountFlags::NOEXEC;
                sys.remount(target, flags)
                    .map_err(fail("make read-only", target))
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
                sys.copy_in(fd, target, (*uid, *gid))
                    .map_err(fail("copy into", target))
            }
            MountOp::Workdir { target, uid, gid } => sys
                .make_dirs(target, (*uid, *gid))
                .map_err(fail("create working directory", target)),
            MountOp::RemountReadOnly { target, flags } => {
                let flags = mount_flags(*flags) | MountFlags::BIND | MountFlags::RDONLY;
                sys.remount(target, flags)
                    .map_err(fail("make read-only", target))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::os::fd::OwnedFd;

    use super::super::syscall::fake::{Call, Recorder};
    use super::*;
    use crate::profile::{NetworkMode, Profile};
    use crate::rootfs::plan::{self, HostFacts};
    use crate::spec::{ExecRequest, SandboxSpec};

    const BASE: u32 = 1_000_000;

    fn spec_with(f: impl FnOnce(&mut ExecRequest)) -> SandboxSpec {
        let mut req = ExecRequest {
            command: vec!["true".into()],
            ..Default::default()
        };
        f(&mut req);
        SandboxSpec::build(req, &Profile::default_profile().unwrap(), &BTreeMap::new()).unwrap()
    }

    /// Something to stand in for an opened host source: the fake never uses it.
    fn dummy_fd() -> OwnedFd {
        rustix::fs::open("/", OFlags::PATH | OFlags::CLOEXEC, Mode::empty()).unwrap()
    }

    /// Runs the interpreter over `plan` with a recorder; returns the calls and the phases.
    fn interpret(plan: &RootfsPlan, recorder: &Recorder) -> (Vec<Call>, Vec<&'static str>) {
        let mut sources: Vec<Option<HostSource>> = plan
            .host_sources
            .iter()
            .enumerate()
            .map(|(i, _)| {
                let bind = plan
                    .mounts
                    .iter()
                    .any(|op| matches!(op, MountOp::Bind { source, .. } if *source == i));
                Some(if bind {
                    HostSource::Tree {
                        fd: dummy_fd(),
                        is_dir: true,
                    }
                } else {
                    HostSource::Copy {
                        fd: dummy_fd(),
                        is_dir: false,
                    }
                })
            })
            .collect();
        let mut phases = Vec::new();
        run(
            recorder,
            &plan.mounts,
            &mut sources,
            IdMap { base: BASE },
            &mut |p| phases.push(p),
        )
        .unwrap();
        (recorder.calls.borrow().clone(), phases)
    }

    fn position(calls: &[Call], pred: impl Fn(&Call) -> bool) -> usize {
        calls.iter().position(pred).expect("call missing")
    }

    #[test]
    fn host_root_sequence_proc_first_dev_then_masks_then_read_only_root() {
        let plan = plan::build(&spec_with(|_| {}), &HostFacts::default());
        let (calls, phases) = interpret(&plan, &Recorder::default());
        // procfs first, through the fd-based API (no /proc/self/fd before it).
        assert_eq!(calls[0], Call::MountProc("/proc".into()));
        // /dev: a tmpfs owned by the sandbox's root (host id BASE), nosuid and noexec.
        let dev = position(
            &calls,
            |c| matches!(c, Call::MountNew { fstype, target, .. } if fstype == "tmpfs" && target == Path::new("/dev")),
        );
        let Call::MountNew { flags, data, .. } = &calls[dev] else {
            unreachable!()
        };
        assert!(flags.contains(MountFlags::NOSUID | MountFlags::NOEXEC));
        assert!(
            data.as_deref()
                .unwrap()
                .contains(&format!("uid={BASE},gid={BASE}")),
            "{data:?}"
        );
        // devpts maps the tty group through the id map.
        assert!(calls
            .iter()
            .any(|c| matches!(c, Call::MountNew { fstype, data: Some(d), .. }
            if fstype == "devpts" && d.contains(&format!("gid={}", BASE + plan::TTY_GID)))));
        // Kernel files are masked with /dev/null, by path, not recursively.
        assert!(calls.contains(&Call::Bind {
            source: "/dev/null".into(),
            target: "/proc/kcore".into(),
            recursive: false,
        }));
        // The first masked directory gets the one empty tmpfs; the others bind it.
        let first = position(
            &calls,
            |c| matches!(c, Call::MountOnExisting { fstype, .. } if fstype == "tmpfs"),
        );
        let Call::MountOnExisting {
            target: empty,
            flags,
            ..
        } = calls[first].clone()
        else {
            unreachable!()
        };
        assert!(flags.contains(MountFlags::RDONLY | MountFlags::NOEXEC));
        assert!(calls[first..]
            .iter()
            .any(|c| matches!(c, Call::Bind { source, recursive: false, .. } if *source == empty)));
        // Tunables: bound over themselves recursively, then remounted read-only.
        let bind = position(
            &calls,
            |c| matches!(c, Call::Bind { target, recursive: true, .. } if target == Path::new("/proc/sys")),
        );
        assert!(matches!(&calls[bind + 1], Call::Remount { target, flags }
            if target == Path::new("/proc/sys") && flags.contains(MountFlags::BIND | MountFlags::RDONLY)));
        // The last step makes the root read-only, keeping nosuid.
        let Some(Call::Remount { target, flags }) = calls.last() else {
            panic!("{:?}", calls.last())
        };
        assert_eq!(target, Path::new("/"));
        assert!(flags.contains(MountFlags::RDONLY | MountFlags::BIND));
        // Phases are reported once each, in order.
        assert_eq!(phases.first(), Some(&"/proc mounted"));
        assert_eq!(phases.last(), Some(&"root made read-only"));
        let mut unique = phases.clone();
        unique.dedup();
        assert_eq!(unique, phases);
    }

    #[test]
    fn writable_root_is_never_remounted_read_only() {
        let plan = plan::build(
            &spec_with(|r| r.writable_root = true),
            &HostFacts::default(),
        );
        let (calls, _) = interpret(&plan, &Recorder::default());
        assert!(!calls
            .iter()
            .any(|c| matches!(c, Call::Remount { target, .. } if target == Path::new("/"))));
    }

    #[test]
    fn binds_copies_and_the_workdir_get_the_plans_owners_and_flags() {
        let dir = std::env::temp_dir();
        let spec = spec_with(|r| {
            r.user = Some((1000, 1000));
            r.mounts = vec![format!("{}:/data", dir.display())];
            r.copies = vec!["/etc/hostname:notes.txt".into()];
            r.workdir = Some("/sandbox/work".into());
        });
        let plan = plan::build(&spec, &HostFacts::default());
        let (calls, _) = interpret(&plan, &Recorder::default());
        let bind = position(
            &calls,
            |c| matches!(c, Call::AttachTree { target, .. } if target == Path::new("/data")),
        );
        assert_eq!(
            calls[bind],
            Call::AttachTree {
                target: "/data".into(),
                point: MountPoint::Dir,
                attrs: sys::fs::attr::NOSUID | sys::fs::attr::NODEV | sys::fs::attr::RDONLY,
            }
        );
        let copy = position(&calls, |c| matches!(c, Call::CopyIn { .. }));
        assert_eq!(
            calls[copy],
            Call::CopyIn {
                target: "/sandbox/notes.txt".into(),
                owner: (1000, 1000),
            }
        );
        let workdir = position(&calls, |c| matches!(c, Call::MakeDirs { .. }));
        assert_eq!(
            calls[workdir],
            Call::MakeDirs {
                path: "/sandbox/work".into(),
                owner: (1000, 1000),
            }
        );
        // User mounts come after the system's, and the read-only root after them all.
        let sysfs = position(
            &calls,
            |c| matches!(c, Call::MountNew { fstype, .. } if fstype == "sysfs"),
        );
        assert!(sysfs < bind && bind < copy && copy < workdir);
    }

    #[test]
    fn a_workdir_outside_the_sandbox_dir_belongs_to_root() {
        let spec = spec_with(|r| {
            r.user = Some((1000, 1000));
            r.workdir = Some("/opt/work".into());
        });
        let plan = plan::build(&spec, &HostFacts::default());
        let (calls, _) = interpret(&plan, &Recorder::default());
        assert!(calls.contains(&Call::MakeDirs {
            path: "/opt/work".into(),
            owner: (0, 0),
        }));
    }

    #[test]
    fn an_image_gets_the_same_system_mounts_and_a_read_only_root() {
        let spec = spec_with(|r| {
            r.image = Some(crate::image::ImageSpec {
                reference: "devbox:1".into(),
                digest: crate::image::Digest::of(b"manifest"),
                layers: vec![PathBuf::from("/store/layers/top")],
                run: Default::default(),
                user: None,
            })
        });
        let plan = plan::build(&spec, &HostFacts::default());
        let (calls, _) = interpret(&plan, &Recorder::default());
        let host = plan::build(&spec_with(|_| {}), &HostFacts::default());
        let (host_calls, _) = interpret(&host, &Recorder::default());
        // What differs between an image and the host root is the lower layers, not the mounts
        // inside: the same /proc, /dev, /sys, masks and read-only root, in the same order.
        assert_eq!(calls, host_calls);
        assert_eq!(calls[0], Call::MountProc("/proc".into()));
        assert!(
            matches!(calls.last(), Some(Call::Remount { target, .. }) if target == Path::new("/"))
        );
    }

    #[test]
    fn filtered_network_changes_files_not_mounts() {
        let spec = spec_with(|r| {
            r.network = Some(NetworkMode::Filtered);
            r.allow = vec!["example.com".into()];
        });
        let plan = plan::build(&spec, &HostFacts::default());
        let (calls, _) = interpret(&plan, &Recorder::default());
        let host = plan::build(&spec_with(|_| {}), &HostFacts::default());
        let (host_calls, _) = interpret(&host, &Recorder::default());
        assert_eq!(calls, host_calls);
        assert!(plan.upper.iter().chain(&plan.shared).any(|op| matches!(op,
            crate::rootfs::UpperOp::WriteFile { path, contents, .. }
                if path == Path::new("/etc/resolv.conf")
                    && contents == crate::net::addresses::RESOLV_CONF.as_bytes())));
    }

    #[test]
    fn masks_of_paths_this_kernel_lacks_are_skipped_and_errors_name_the_step() {
        let plan = plan::build(&spec_with(|_| {}), &HostFacts::default());
        let recorder = Recorder {
            absent: ["/proc/kcore", "/proc/acpi", "/proc/sys"]
                .into_iter()
                .map(PathBuf::from)
                .collect(),
            ..Default::default()
        };
        let (calls, _) = interpret(&plan, &recorder);
        // An absent tunable is not remounted.
        assert!(!calls.iter().any(
            |c| matches!(c, Call::Remount { target, .. } if target == Path::new("/proc/sys"))
        ));
        // Any other failure stops the interpreter and names the step and the path.
        let broken = Recorder {
            absent: [PathBuf::from("/dev")].into_iter().collect(),
            ..Default::default()
        };
        let mut sources = Vec::new();
        let err = run(
            &broken,
            &plan.mounts,
            &mut sources,
            IdMap { base: BASE },
            &mut |_| {},
        )
        .unwrap_err();
        assert_eq!(err.step, "mount tmpfs on");
        assert_eq!(err.path, Path::new("/dev"));
    }
}
