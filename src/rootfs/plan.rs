//! Building the root filesystem plan: pure code, no system calls, unit-tested without root.

use std::path::{Path, PathBuf};

use crate::profile::{NetworkMode, RootChoice, SysMode};
use crate::spec::SandboxSpec;
use crate::units::ByteSize;

/// Ptys one sandbox's devpts may hold (`max=`). The host's `kernel.pty.max` is shared by every
/// devpts instance (less `kernel.pty.reserve`, kept for the host's own), so without a bound one
/// sandbox could take every pty the other sandboxes would get.
pub const DEVPTS_MAX: u32 = 256;

/// Everything the setup child does to build the sandbox's filesystem, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootfsPlan {
    /// Overlay lower layers, top first.
    pub lowers: Vec<PathBuf>,
    /// Size of the tmpfs holding the overlay's upper and work directories.
    pub scratch_size: ByteSize,
    /// Changes that are the same for every sandbox with this profile on this host (what the
    /// host root hides, the accounts). [`super::final_plan`] builds them once into a cached
    /// lower layer (see [`super::mask`]) or, when it cannot, moves them to `upper`: a final
    /// plan has none left.
    pub shared: Vec<UpperOp>,
    /// Prepared in the upper directory before the overlay is mounted (per sandbox).
    pub upper: Vec<UpperOp>,
    /// Host paths opened before pivot_root; [`MountOp::Bind`] and [`MountOp::CopyIn`] refer to
    /// them by index.
    pub host_sources: Vec<PathBuf>,
    /// Applied inside the new root after pivot_root, in order.
    pub mounts: Vec<MountOp>,
    /// Writable binds (by index into `host_sources`) shown through an idmapped mount that
    /// writes as the source's owner (see `crate::idrange::idmap_writable_binds`); filled in by
    /// [`super::final_plan`].
    pub bind_idmaps: std::collections::BTreeMap<usize, BindIdmap>,
    /// A host directory whose `upper/` and `work/` hold the overlay's writes instead of the
    /// scratch tmpfs (`nsbox build` captures them as a layer).
    pub upper_dir: Option<PathBuf>,
}

impl RootfsPlan {
    /// The shared changes are already made in the cached layer at `layer`: it becomes the
    /// top lower layer, and nothing of them is left to do.
    pub fn use_mask_layer(&mut self, layer: PathBuf) {
        self.lowers.insert(0, layer);
        self.shared.clear();
    }

    /// No cached layer: the shared changes are made in this sandbox's upper layer, before its
    /// own ones.
    pub fn make_shared_in_upper(&mut self) {
        let shared = std::mem::take(&mut self.shared);
        self.upper.splice(0..0, shared);
    }
}

/// A change to the overlay's upper directory, made before the overlay exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpperOp {
    /// Remove from view every top-level entry of the lower layers whose name is not listed
    /// (whiteouts), so only the system and its toolchains show from a host's root.
    KeepOnlyTopLevel(Vec<String>),
    /// Hide what the lower layers have at this path: a directory becomes empty (opaque), a
    /// file disappears (whiteout). Symlinks and missing paths are left alone.
    Hide(PathBuf),
    /// A file with fixed contents, owned by the sandbox's root.
    WriteFile {
        path: PathBuf,
        contents: Vec<u8>,
        mode: u32,
    },
    /// An account database (/etc/passwd or /etc/group): `Replace` writes exactly `lines`;
    /// `Merge` keeps the lower layer's file and appends the lines whose id it lacks.
    Accounts {
        path: PathBuf,
        lines: Vec<AccountLine>,
        merge: bool,
    },
}

/// One line of /etc/passwd or /etc/group, with the numeric id it defines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountLine {
    pub id: u32,
    pub line: String,
}

/// Mount flags the plan cares about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flags {
    pub nosuid: bool,
    pub nodev: bool,
    pub noexec: bool,
    pub readonly: bool,
}

impl Flags {
    /// nosuid + nodev: the usual flags for writable scratch space.
    pub const SCRATCH: Flags = Flags {
        nosuid: true,
        nodev: true,
        noexec: false,
        readonly: false,
    };
    /// nosuid + nodev + noexec: pseudo filesystems.
    pub const PSEUDO: Flags = Flags {
        nosuid: true,
        nodev: true,
        noexec: true,
        readonly: false,
    };
}

/// One step inside the new root. Ids are the sandbox's own (inside) ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountOp {
    /// A fresh procfs for the sandbox's pid namespace.
    Proc {
        target: PathBuf,
    },
    /// The root's own directory (from the image) bound onto itself, so it stays writable when
    /// the root is made read-only: /sandbox of an image made by `nsbox commit`. Created (owned
    /// by uid:gid) if missing. Its writes go to the overlay's upper layer, so they are bounded
    /// by the root's scratch size and charged to the sandbox's memory like the rest.
    KeepDir {
        target: PathBuf,
        uid: u32,
        gid: u32,
        flags: Flags,
    },
    Tmpfs {
        target: PathBuf,
        size: ByteSize,
        mode: u32,
        uid: u32,
        gid: u32,
        flags: Flags,
    },
    /// sysfs, read-only.
    Sysfs {
        target: PathBuf,
    },
    /// The sandbox's own cgroup (v2, through its cgroup namespace), read-only.
    Cgroup2 {
        target: PathBuf,
    },
    /// A private devpts instance, holding at most [`DEVPTS_MAX`] ptys.
    Devpts {
        target: PathBuf,
        tty_gid: u32,
    },
    /// A character device node.
    CharDevice {
        target: PathBuf,
        major: u32,
        minor: u32,
        mode: u32,
    },
    Symlink {
        target: PathBuf,
        points_to: PathBuf,
    },
    Mkdir {
        target: PathBuf,
        mode: u32,
    },
    /// A host path (by index into `host_sources`) bound at `target`, recursively.
    Bind {
        source: usize,
        target: PathBuf,
        readonly: bool,
    },
    /// Hide a file with /dev/null; skipped when the file does not exist.
    MaskFile {
        target: PathBuf,
    },
    /// Hide a directory with an empty read-only tmpfs; skipped when absent.
    MaskDir {
        target: PathBuf,
    },
    /// Bind a path over itself read-only; skipped when absent.
    ReadOnlyBind {
        target: PathBuf,
    },
    /// Copy a host file or tree (by index into `host_sources`) to `target`, owned by uid:gid.
    CopyIn {
        source: usize,
        target: PathBuf,
        uid: u32,
        gid: u32,
    },
    /// Make sure the working directory exists (created as uid:gid when missing; the plan
    /// decides the owner).
    Workdir {
        target: PathBuf,
        uid: u32,
        gid: u32,
    },
    /// Make an existing mount read-only, keeping `flags`.
    RemountReadOnly {
        target: PathBuf,
        flags: Flags,
    },
}

impl MountOp {
    /// The phase this step belongs to, for `--timings`.
    pub fn phase(&self) -> &'static str {
        match self {
            MountOp::Proc { .. } => "/proc mounted",
            MountOp::Tmpfs { target, .. } if target.starts_with("/dev") => "/dev built",
            MountOp::CharDevice { .. }
            | MountOp::Symlink { .. }
            | MountOp::Mkdir { .. }
            | MountOp::Devpts { .. } => "/dev built",
            MountOp::Sysfs { .. } | MountOp::Cgroup2 { .. } => "/sys mounted",
            MountOp::MaskFile { .. } | MountOp::MaskDir { .. } | MountOp::ReadOnlyBind { .. } => {
                "/proc and /sys masked"
            }
            MountOp::Tmpfs { .. } | MountOp::KeepDir { .. } => "/tmp and /sandbox mounted",
            MountOp::Bind { .. } => "bind mounts attached",
            MountOp::CopyIn { .. } => "files copied in",
            MountOp::Workdir { .. } | MountOp::RemountReadOnly { .. } => "root made read-only",
        }
    }
}

/// Facts about the host the plan depends on (kept out of the spec so the plan stays pure).
#[derive(Debug, Clone, Default)]
pub struct HostFacts {
    /// The sandbox has its own cgroup v2 directory (pure or partly v2 host).
    pub cgroup2_inside: bool,
    /// Contents of the host's /etc/resolv.conf, for `--net host` (`--net filtered` points the
    /// sandbox at nsbox's resolver instead).
    pub resolv_conf: Option<Vec<u8>>,
}

/// The sandbox user's own writable directory (a tmpfs), its default working directory.
pub const SANDBOX_DIR: &str = "/sandbox";

/// The tty group inside the sandbox (Debian's number).
pub const TTY_GID: u32 = 5;

/// Files under /proc that expose the host kernel and are hidden behind /dev/null.
pub const PROC_MASKED_FILES: &[&str] = &[
    "/proc/kcore",
    "/proc/keys",
    "/proc/key-users",
    "/proc/timer_list",
    "/proc/sched_debug",
    "/proc/latency_stats",
    "/proc/kpagecount",
    "/proc/kpageflags",
    "/proc/kpagecgroup",
    "/proc/kallsyms",
    "/proc/config.gz",
    "/proc/sysrq-trigger",
];
/// Directories under /proc and /sys that are replaced by an empty read-only tmpfs.
pub const MASKED_DIRS: &[&str] = &[
    "/proc/acpi",
    "/proc/scsi",
    "/proc/asound",
    "/proc/driver",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
    "/sys/kernel/debug",
    "/sys/kernel/security",
];
/// Kernel tunables stay readable but not writable.
pub const PROC_READ_ONLY: &[&str] = &["/proc/sys", "/proc/irq", "/proc/bus", "/proc/fs"];

/// Builds the plan for `spec`.
pub fn build(spec: &SandboxSpec, host: &HostFacts) -> RootfsPlan {
    // An image root is treated like a chosen directory: shown whole, its accounts merged.
    let lowers = match (&spec.image, &spec.root) {
        (Some(image), _) => spec
            .extra_lowers
            .iter()
            .chain(&image.layers)
            .cloned()
            .collect(),
        (None, RootChoice::Host) => vec![PathBuf::from("/")],
        (None, RootChoice::Dir(dir)) => vec![dir.clone()],
    };
    let replace_accounts = spec.image.is_none() && matches!(spec.root, RootChoice::Host);

    let mut shared: Vec<UpperOp> = Vec::new();
    if replace_accounts {
        let mut keep = spec.host_root_visible.clone();
        // The sandbox's own mount points must exist whatever the profile says.
        for own in ["proc", "dev", "sys", "tmp", "etc"] {
            if !keep.iter().any(|k| k == own) {
                keep.push(own.to_string());
            }
        }
        shared.push(UpperOp::KeepOnlyTopLevel(keep));
    }
    // `hide` is about host data; an image's /root or /home are the image's own files.
    if spec.image.is_none() {
        shared.extend(spec.hide.iter().cloned().map(UpperOp::Hide));
    }
    shared.push(UpperOp::Accounts {
        path: "/etc/passwd".into(),
        lines: passwd_lines(spec.uid, spec.gid),
        merge: !replace_accounts,
    });
    shared.push(UpperOp::Accounts {
        path: "/etc/group".into(),
        lines: group_lines(spec.gid),
        merge: !replace_accounts,
    });
    let mut upper: Vec<UpperOp> = Vec::new();
    upper.push(UpperOp::WriteFile {
        path: "/etc/hostname".into(),
        contents: format!("{}\n", spec.hostname).into_bytes(),
        mode: 0o644,
    });
    upper.push(UpperOp::WriteFile {
        path: "/etc/hosts".into(),
        contents: format!(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{}\n",
            spec.hostname
        )
        .into_bytes(),
        mode: 0o644,
    });
    let resolv = match (spec.network, &host.resolv_conf) {
        (NetworkMode::Host, Some(text)) => text.clone(),
        (NetworkMode::Host, None) => b"# nsbox: the host has no /etc/resolv.conf\n".to_vec(),
        (NetworkMode::None, _) => b"# nsbox: --net none: no network, no DNS\n".to_vec(),
        (NetworkMode::Filtered, _) => crate::net::addresses::RESOLV_CONF.as_bytes().to_vec(),
    };
    upper.push(UpperOp::WriteFile {
        path: "/etc/resolv.conf".into(),
        contents: resolv,
        mode: 0o644,
    });
    // Secretless credentials: the sandbox's CA, alone and with the system roots (the
    // variables of `Credentials::trust_env` point TLS clients at them).
    if let Some(creds) = &spec.egress.credentials {
        upper.push(UpperOp::WriteFile {
            path: crate::net::credential::SANDBOX_CA_PATH.into(),
            contents: creds.ca_pem.clone().into_bytes(),
            mode: 0o644,
        });
        upper.push(UpperOp::WriteFile {
            path: crate::net::credential::SANDBOX_BUNDLE_PATH.into(),
            contents: creds.bundle.clone(),
            mode: 0o644,
        });
    }

    let mut mounts = vec![MountOp::Proc {
        target: "/proc".into(),
    }];
    mounts.extend(dev_ops(spec.sizes.shm));
    if spec.sys == SysMode::ReadOnly {
        mounts.push(MountOp::Sysfs {
            target: "/sys".into(),
        });
        if host.cgroup2_inside {
            mounts.push(MountOp::Cgroup2 {
                target: "/sys/fs/cgroup".into(),
            });
        }
    }
    for file in PROC_MASKED_FILES {
        mounts.push(MountOp::MaskFile {
            target: PathBuf::from(file),
        });
    }
    for dir in MASKED_DIRS {
        if dir.starts_with("/sys/") && spec.sys == SysMode::Absent {
            continue;
        }
        mounts.push(MountOp::MaskDir {
            target: PathBuf::from(dir),
        });
    }
    for path in PROC_READ_ONLY {
        mounts.push(MountOp::ReadOnlyBind {
            target: PathBuf::from(path),
        });
    }
    mounts.push(MountOp::Tmpfs {
        target: "/tmp".into(),
        size: spec.sizes.tmp,
        mode: 0o1777,
        uid: 0,
        gid: 0,
        flags: Flags::SCRATCH,
    });
    if spec
        .image
        .as_ref()
        .is_some_and(|i| i.run.sandbox_dir_in_image())
    {
        // A committed session's image brings its /sandbox: keep it, in the root's overlay.
        mounts.push(MountOp::KeepDir {
            target: SANDBOX_DIR.into(),
            uid: spec.uid,
            gid: spec.gid,
            flags: Flags::SCRATCH,
        });
    } else {
        mounts.push(MountOp::Tmpfs {
            target: SANDBOX_DIR.into(),
            size: spec.sizes.sandbox,
            mode: 0o755,
            uid: spec.uid,
            gid: spec.gid,
            flags: Flags::SCRATCH,
        });
    }
    // `--tmpfs`: like /tmp. The command line refused targets inside a bind mount, so the
    // binds below never cover one.
    for t in &spec.tmpfs {
        mounts.push(MountOp::Tmpfs {
            target: t.target.clone(),
            size: t.size,
            mode: 0o1777,
            uid: 0,
            gid: 0,
            flags: Flags::SCRATCH,
        });
    }

    let mut host_sources = Vec::new();
    // Parents before children, so a mount inside another user mount lands on top of it.
    let mut binds: Vec<_> = spec.mounts.iter().collect();
    binds.sort_by_key(|m| m.target.components().count());
    for bind in binds {
        host_sources.push(bind.source.clone());
        mounts.push(MountOp::Bind {
            source: host_sources.len() - 1,
            target: bind.target.clone(),
            readonly: bind.readonly,
        });
    }
    for copy in &spec.copies {
        host_sources.push(copy.source.clone());
        mounts.push(MountOp::CopyIn {
            source: host_sources.len() - 1,
            target: copy.target.clone(),
            uid: spec.uid,
            gid: spec.gid,
        });
    }
    // A working directory the command creates under its own /sandbox is its own; anywhere
    // else in the root it belongs to the sandbox's root, like the rest of the system.
    let (uid, gid) = if spec.workdir.starts_with(SANDBOX_DIR) {
        (spec.uid, spec.gid)
    } else {
        (0, 0)
    };
    mounts.push(MountOp::Workdir {
        target: spec.workdir.clone(),
        uid,
        gid,
    });
    mounts.push(MountOp::RemountReadOnly {
        target: "/dev".into(),
        flags: Flags {
            nosuid: true,
            nodev: false,
            noexec: true,
            readonly: true,
        },
    });
    if !spec.writable_root {
        mounts.push(MountOp::RemountReadOnly {
            target: "/".into(),
            flags: Flags {
                nosuid: true,
                nodev: true,
                noexec: false,
                readonly: true,
            },
        });
    }

    // A chosen root directory's own accounts are merged per sandbox (its files are its own
    // business, and they may change between runs); only the host root's layer is cached.
    if !replace_accounts {
        upper.splice(0..0, shared.drain(..));
    }
    RootfsPlan {
        lowers,
        scratch_size: spec.sizes.root,
        shared,
        upper,
        host_sources,
        mounts,
        bind_idmaps: Default::default(),
        upper_dir: spec.upper_dir.clone(),
    }
}

/// The id mapping of one writable bind: a user namespace (a path to its descriptor, held by
/// the supervisor) mapping the source's owner, `uid`:`gid` on disk, to the sandbox user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindIdmap {
    pub userns: PathBuf,
    pub uid: u32,
    pub gid: u32,
}

/// The minimal /dev: a small tmpfs with the usual nodes, a private devpts and /dev/shm.
fn dev_ops(shm_size: ByteSize) -> Vec<MountOp> {
    let dev = Path::new("/dev");
    let mut ops = vec![MountOp::Tmpfs {
        target: dev.into(),
        size: ByteSize(64 << 10),
        mode: 0o755,
        uid: 0,
        gid: 0,
        flags: Flags {
            nosuid: true,
            nodev: false,
            noexec: true,
            readonly: false,
        },
    }];
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        ops.push(MountOp::CharDevice {
            target: dev.join(name),
            major,
            minor,
            mode: 0o666,
        });
    }
    for (name, to) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        ops.push(MountOp::Symlink {
            target: dev.join(name),
            points_to: PathBuf::from(to),
        });
    }
    ops.push(MountOp::Mkdir {
        target: dev.join("pts"),
        mode: 0o755,
    });
    ops.push(MountOp::Mkdir {
        target: dev.join("shm"),
        mode: 0o1777,
    });
    ops.push(MountOp::Devpts {
        target: dev.join("pts"),
        tty_gid: TTY_GID,
    });
    ops.push(MountOp::Tmpfs {
        target: dev.join("shm"),
        size: shm_size,
        mode: 0o1777,
        uid: 0,
        gid: 0,
        flags: Flags::SCRATCH,
    });
    ops
}

fn passwd_lines(uid: u32, gid: u32) -> Vec<AccountLine> {
    let mut lines = vec![AccountLine {
        id: 0,
        line: "root:x:0:0:root:/root:/bin/sh".into(),
    }];
    if uid != 0 && uid != 65534 {
        lines.push(AccountLine {
            id: uid,
            line: format!("sandbox:x:{uid}:{gid}:nsbox sandbox user:/sandbox:/bin/sh"),
        });
    }
    lines.push(AccountLine {
        id: 65534,
        line: "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin".into(),
    });
    lines
}

fn group_lines(gid: u32) -> Vec<AccountLine> {
    let mut lines = vec![
        AccountLine {
            id: 0,
            line: "root:x:0:".into(),
        },
        AccountLine {
            id: TTY_GID,
            line: format!("tty:x:{TTY_GID}:"),
        },
    ];
    if gid != 0 && gid != TTY_GID && gid != 65534 {
        lines.push(AccountLine {
            id: gid,
            line: format!("sandbox:x:{gid}:"),
        });
    }
    lines.push(AccountLine {
        id: 65534,
        line: "nogroup:x:65534:".into(),
    });
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Profile;
    use crate::spec::{ExecRequest, SandboxSpec};
    use std::collections::BTreeMap;

    fn spec_with(f: impl FnOnce(&mut ExecRequest)) -> SandboxSpec {
        let mut req = ExecRequest {
            command: vec!["true".into()],
            ..Default::default()
        };
        f(&mut req);
        SandboxSpec::build(req, &Profile::default_profile().unwrap(), &BTreeMap::new()).unwrap()
    }

    fn position(plan: &RootfsPlan, pred: impl Fn(&MountOp) -> bool) -> usize {
        plan.mounts
            .iter()
            .position(pred)
            .expect("operation missing from plan")
    }

    #[test]
    fn host_root_plan_hides_user_data_and_replaces_accounts() {
        let spec = spec_with(|_| {});
        let plan = build(&spec, &HostFacts::default());
        assert_eq!(plan.lowers, vec![PathBuf::from("/")]);
        let keep = plan
            .shared
            .iter()
            .find_map(|op| match op {
                UpperOp::KeepOnlyTopLevel(keep) => Some(keep.clone()),
                _ => None,
            })
            .expect("host root hides unlisted top-level entries");
        assert!(keep.iter().any(|k| k == "usr") && keep.iter().any(|k| k == "proc"));
        for hidden in ["/home", "/root", "/run", "/tmp", "/var/tmp"] {
            assert!(
                plan.shared.contains(&UpperOp::Hide(hidden.into())),
                "{hidden}"
            );
        }
        let passwd = plan
            .shared
            .iter()
            .find_map(|op| match op {
                UpperOp::Accounts { path, lines, merge } if path == Path::new("/etc/passwd") => {
                    Some((lines.clone(), *merge))
                }
                _ => None,
            })
            .unwrap();
        assert!(!passwd.1, "host accounts must not leak into the sandbox");
        assert!(passwd
            .0
            .iter()
            .any(|l| l.line.starts_with("sandbox:x:100:101:")));
    }

    #[test]
    fn rootfs_plan_merges_accounts() {
        let spec = spec_with(|r| r.rootfs = Some(std::env::temp_dir()));
        let plan = build(&spec, &HostFacts::default());
        assert_eq!(plan.lowers, vec![std::env::temp_dir()]);
        assert!(
            !plan
                .upper
                .iter()
                .any(|op| matches!(op, UpperOp::KeepOnlyTopLevel(_))),
            "a chosen rootfs is shown whole"
        );
        assert!(
            plan.shared.is_empty(),
            "a chosen rootfs gets no cached layer"
        );
        assert!(plan
            .upper
            .iter()
            .any(|op| matches!(op, UpperOp::Accounts { merge: true, .. })));
    }

    #[test]
    fn image_plan_stacks_its_layers_and_hides_nothing_of_them() {
        let layers = vec![
            PathBuf::from("/store/layers/top"),
            PathBuf::from("/store/layers/base"),
        ];
        let spec = spec_with(|r| {
            r.image = Some(crate::image::ImageSpec {
                reference: "devbox:1".into(),
                digest: crate::image::Digest::of(b"manifest"),
                layers: layers.clone(),
                run: Default::default(),
                user: None,
            })
        });
        let plan = build(&spec, &HostFacts::default());
        assert_eq!(plan.lowers, layers, "top layer first");
        assert!(plan.shared.is_empty(), "an image gets no cached host mask");
        assert!(!plan
            .upper
            .iter()
            .any(|op| matches!(op, UpperOp::Hide(_) | UpperOp::KeepOnlyTopLevel(_))));
        assert!(
            plan.upper
                .iter()
                .any(|op| matches!(op, UpperOp::Accounts { merge: true, .. })),
            "the image's accounts are kept"
        );
        assert!(
            matches!(plan.mounts.last(), Some(MountOp::RemountReadOnly { target, .. }) if target == Path::new("/"))
        );
    }

    #[test]
    fn proc_comes_first_and_read_only_root_comes_last() {
        let spec = spec_with(|_| {});
        let plan = build(&spec, &HostFacts::default());
        assert!(matches!(plan.mounts[0], MountOp::Proc { .. }));
        assert!(matches!(
            plan.mounts.last(),
            Some(MountOp::RemountReadOnly { target, flags }) if target == Path::new("/") && flags.readonly && flags.nosuid
        ));
        // /dev exists before its nodes; devpts after its mount point.
        let dev = position(
            &plan,
            |op| matches!(op, MountOp::Tmpfs { target, .. } if target == Path::new("/dev")),
        );
        let null = position(
            &plan,
            |op| matches!(op, MountOp::CharDevice { target, .. } if target == Path::new("/dev/null")),
        );
        let mask = position(&plan, |op| matches!(op, MountOp::MaskFile { .. }));
        assert!(
            dev < null && null < mask,
            "masks bind /dev/null, so /dev comes first"
        );
        for f in ["/proc/kcore", "/proc/sysrq-trigger", "/proc/keys"] {
            assert!(
                plan.mounts
                    .contains(&MountOp::MaskFile { target: f.into() }),
                "{f}"
            );
        }
        assert!(plan.mounts.contains(&MountOp::ReadOnlyBind {
            target: "/proc/sys".into()
        }));
    }

    #[test]
    fn writable_root_skips_the_final_remount() {
        let spec = spec_with(|r| r.writable_root = true);
        let plan = build(&spec, &HostFacts::default());
        assert!(!plan.mounts.iter().any(
            |op| matches!(op, MountOp::RemountReadOnly { target, .. } if target == Path::new("/"))
        ));
    }

    #[test]
    fn the_plan_decides_the_workdirs_owner() {
        let owner = |workdir: &str| {
            let spec = spec_with(|r| {
                r.user = Some((1000, 1001));
                r.workdir = Some(workdir.into());
            });
            build(&spec, &HostFacts::default())
                .mounts
                .iter()
                .find_map(|op| match op {
                    MountOp::Workdir { uid, gid, .. } => Some((*uid, *gid)),
                    _ => None,
                })
                .expect("a workdir step")
        };
        assert_eq!(owner("/sandbox/project"), (1000, 1001));
        assert_eq!(owner("/sandbox"), (1000, 1001));
        assert_eq!(owner("/opt/project"), (0, 0));
        assert_eq!(
            owner("/sandboxes"),
            (0, 0),
            "a prefix of the name is not inside"
        );
    }

    #[test]
    fn a_final_plan_has_no_shared_changes_left() {
        let spec = spec_with(|_| {});
        let draft = build(&spec, &HostFacts::default());
        assert!(!draft.shared.is_empty());

        let mut cached = draft.clone();
        cached.use_mask_layer("/run/nsbox/masks/k".into());
        assert!(cached.shared.is_empty());
        assert_eq!(cached.lowers[0], PathBuf::from("/run/nsbox/masks/k"));
        assert_eq!(cached.lowers[1..], draft.lowers[..]);
        assert_eq!(cached.upper, draft.upper);

        let mut uncached = draft.clone();
        uncached.make_shared_in_upper();
        assert!(uncached.shared.is_empty());
        assert_eq!(uncached.lowers, draft.lowers);
        // The shared changes come first: the sandbox's own files may sit inside hidden dirs.
        assert_eq!(uncached.upper[..draft.shared.len()], draft.shared[..]);
        assert_eq!(uncached.upper[draft.shared.len()..], draft.upper[..]);
    }

    #[test]
    fn sandbox_dir_belongs_to_the_sandbox_user() {
        let spec = spec_with(|r| r.user = Some((1000, 1000)));
        let plan = build(&spec, &HostFacts::default());
        assert!(plan.mounts.iter().any(|op| matches!(op,
            MountOp::Tmpfs { target, uid: 1000, gid: 1000, mode: 0o755, .. } if target == Path::new("/sandbox"))));
    }

    #[test]
    fn a_committed_image_keeps_its_sandbox_dir_instead_of_a_tmpfs() {
        let with_labels = |labels: Option<BTreeMap<String, String>>| {
            let spec = spec_with(|r| {
                r.image = Some(crate::image::ImageSpec {
                    reference: "snap:1".into(),
                    digest: crate::image::Digest::of(b"manifest"),
                    layers: vec![PathBuf::from("/store/layers/top")],
                    run: crate::image::RunConfig {
                        labels,
                        ..Default::default()
                    },
                    user: None,
                })
            });
            build(&spec, &HostFacts::default())
        };
        let is_sandbox_tmpfs = |op: &MountOp| matches!(op, MountOp::Tmpfs { target, .. } if target == Path::new("/sandbox"));
        let is_kept = |op: &MountOp| matches!(op, MountOp::KeepDir { target, .. } if target == Path::new("/sandbox"));
        let label = |v: &str| {
            Some(BTreeMap::from([(
                crate::image::oci::SANDBOX_DIR_LABEL.to_string(),
                v.to_string(),
            )]))
        };
        let committed = with_labels(label(crate::image::oci::SANDBOX_DIR_IN_IMAGE));
        assert!(committed.mounts.iter().any(is_kept));
        assert!(!committed.mounts.iter().any(is_sandbox_tmpfs));
        for other in [None, label("something-else")] {
            let plan = with_labels(other);
            assert!(plan.mounts.iter().any(is_sandbox_tmpfs));
            assert!(!plan.mounts.iter().any(is_kept));
        }
    }

    #[test]
    fn user_mounts_come_after_system_mounts_parents_first() {
        let spec = spec_with(|r| {
            r.mounts = vec!["/usr:/sandbox/a/b".into(), "/etc:/sandbox/a:rw".into()];
        });
        let plan = build(&spec, &HostFacts::default());
        let sandbox = position(
            &plan,
            |op| matches!(op, MountOp::Tmpfs { target, .. } if target == Path::new("/sandbox")),
        );
        let outer = position(
            &plan,
            |op| matches!(op, MountOp::Bind { target, .. } if target == Path::new("/sandbox/a")),
        );
        let inner = position(
            &plan,
            |op| matches!(op, MountOp::Bind { target, .. } if target == Path::new("/sandbox/a/b")),
        );
        assert!(sandbox < outer && outer < inner);
        assert_eq!(plan.host_sources.len(), 2);
        assert!(plan.mounts.contains(&MountOp::Bind {
            source: 0,
            target: "/sandbox/a".into(),
            readonly: false
        }));
    }

    #[test]
    fn no_sys_means_no_sysfs_and_no_sys_masks() {
        let mut spec = spec_with(|_| {});
        spec.sys = SysMode::Absent;
        let plan = build(
            &spec,
            &HostFacts {
                cgroup2_inside: true,
                resolv_conf: None,
            },
        );
        assert!(!plan
            .mounts
            .iter()
            .any(|op| matches!(op, MountOp::Sysfs { .. } | MountOp::Cgroup2 { .. })));
        assert!(!plan
            .mounts
            .iter()
            .any(|op| matches!(op, MountOp::MaskDir { target } if target.starts_with("/sys"))));
    }

    #[test]
    fn cgroup2_view_only_when_the_sandbox_has_a_v2_cgroup() {
        let spec = spec_with(|_| {});
        let without = build(&spec, &HostFacts::default());
        assert!(!without
            .mounts
            .iter()
            .any(|op| matches!(op, MountOp::Cgroup2 { .. })));
        let with = build(
            &spec,
            &HostFacts {
                cgroup2_inside: true,
                resolv_conf: None,
            },
        );
        assert!(with
            .mounts
            .iter()
            .any(|op| matches!(op, MountOp::Cgroup2 { .. })));
    }

    #[test]
    fn host_network_gets_the_host_resolver_config() {
        let spec = spec_with(|r| r.network = Some(NetworkMode::Host));
        let plan = build(
            &spec,
            &HostFacts {
                cgroup2_inside: false,
                resolv_conf: Some(b"nameserver 192.0.2.53\n".to_vec()),
            },
        );
        assert!(plan.upper.iter().any(|op| matches!(op,
            UpperOp::WriteFile { path, contents, .. } if path == Path::new("/etc/resolv.conf") && contents.starts_with(b"nameserver 192.0.2.53"))));
    }
}
