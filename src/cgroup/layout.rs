//! Where each controller lives on this host, found from the mount table and the hierarchies' own
//! files. Read-only: nothing here writes to a cgroup.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::host::mountinfo::{self, MountEntry};

use super::fsops::{is_cgroupfs, read_optional, read_required};
use super::{CgroupError, Controller};

/// Controllers a cgroup v1 mount can carry; a v1 mount with none of them (`name=systemd`) is only
/// a process-tracking hierarchy and does not make a host "hybrid".
const V1_CONTROLLERS: &[&str] = &[
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "net_cls",
    "net_prio",
    "blkio",
    "perf_event",
    "hugetlb",
    "pids",
    "rdma",
    "misc",
];

/// The v1 controller that freezes a cgroup's tasks (`nsbox pause`).
pub(crate) const FREEZER: &str = "freezer";

/// How the host arranges its cgroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupKind {
    /// Only the unified hierarchy carries controllers (current distributions).
    V2,
    /// cgroup2 is mounted, but controllers (some or all) are on v1 mounts.
    Hybrid,
    /// No cgroup2 mount; controllers on v1 mounts only.
    V1,
}

impl fmt::Display for CgroupKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CgroupKind::V2 => "cgroup v2",
            CgroupKind::Hybrid => "hybrid (cgroup v1 controllers + cgroup2)",
            CgroupKind::V1 => "cgroup v1",
        })
    }
}

/// Version of one hierarchy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

/// One mounted cgroup hierarchy nsbox may create directories in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    pub version: CgroupVersion,
    /// Mount point as the mount table names it (for messages about the host).
    pub mount_point: PathBuf,
    /// The same directory under the layout's root: every file access uses this.
    pub path: PathBuf,
    /// v2: the root's `cgroup.controllers`; v1: the controllers in the mount options.
    pub controllers: Vec<String>,
    /// v2: the root's `cgroup.subtree_control` (controllers child cgroups get); v1: empty.
    pub subtree_control: Vec<String>,
    /// Mounted `ro` (typical in containers): nsbox cannot create cgroups here.
    pub read_only: bool,
    /// False only for fake cgroupfs trees in unit tests (see `fsops`).
    pub(crate) on_cgroupfs: bool,
}

impl Hierarchy {
    fn carries(&self, c: Controller) -> bool {
        self.controllers.iter().any(|n| n == c.name())
    }
}

/// Where one controller lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// On the unified hierarchy. `enabled`: listed in the root's `cgroup.subtree_control`, so a
    /// child cgroup (the sandbox's) gets its files.
    V2 { path: PathBuf, enabled: bool },
    /// On the cgroup v1 mount at `path` (which may carry other controllers too).
    V1 { path: PathBuf },
    /// Nowhere usable; `reason` says what was looked at, `hint` what the user can do.
    Unavailable { reason: String, hint: String },
}

/// For each controller nsbox uses, where it lives. Built once per run; plain data afterwards.
#[derive(Debug, Clone)]
pub struct CgroupLayout {
    kind: CgroupKind,
    v2: Option<Hierarchy>,
    /// Distinct v1 hierarchies that carry at least one controller nsbox uses.
    v1: Vec<Hierarchy>,
    memory: Placement,
    pids: Placement,
    cpu: Placement,
    /// The v1 hierarchy carrying the freezer, used to pause sandboxes that have no cgroup v2
    /// directory (on v2, `cgroup.freeze` is in every cgroup and needs no controller).
    freezer_v1: Option<Hierarchy>,
    /// The root every file access is prefixed with (for reading `/proc/self/cgroup` later).
    fs_root: PathBuf,
    /// Mounts that were ignored and why (shown by `summary`).
    notes: Vec<String>,
}

impl CgroupLayout {
    /// Detect the layout of the host nsbox runs on, from `/proc/self/mountinfo`.
    pub fn detect() -> Result<Self, CgroupError> {
        let entries = mountinfo::read_self()?;
        Self::build(&entries, Path::new("/"), true)
    }

    /// Build a layout from a mount table and a root that prefixes every file access (`/` for the
    /// host, a temp dir holding a fake cgroupfs in unit tests). Hierarchies that are not on a
    /// real cgroup filesystem are accepted here as fixtures; [`CgroupLayout::detect`] ignores
    /// them instead.
    pub fn from_parts(mountinfo: &[MountEntry], fs_root: &Path) -> Result<Self, CgroupError> {
        Self::build(mountinfo, fs_root, false)
    }

    fn build(
        entries: &[MountEntry],
        fs_root: &Path,
        require_cgroupfs: bool,
    ) -> Result<Self, CgroupError> {
        let mut notes = Vec::new();
        let mut v2: Option<Hierarchy> = None;
        let mut v1_all: Vec<Hierarchy> = Vec::new();

        for entry in mountinfo::visible(entries) {
            let version = match entry.fs_type.as_str() {
                "cgroup2" => CgroupVersion::V2,
                "cgroup" => CgroupVersion::V1,
                _ => continue,
            };
            // A v1 hierarchy without memory, pids or cpu is of no use to nsbox: skip it before
            // touching the filesystem (a host may mount a dozen of them).
            if version == CgroupVersion::V1
                && !Controller::ALL
                    .iter()
                    .any(|c| entry.has_super_option(c.name()))
                && !entry.has_super_option(FREEZER)
            {
                continue;
            }
            let path = under_root(fs_root, &entry.mount_point);
            if !path.is_dir() {
                notes.push(format!(
                    "ignored {} mount at {}: not a directory here",
                    entry.fs_type,
                    entry.mount_point.display()
                ));
                continue;
            }
            let on_cgroupfs = is_cgroupfs(&path);
            if require_cgroupfs && !on_cgroupfs {
                notes.push(format!(
                    "ignored {} mount at {}: the path is not a cgroup filesystem (covered by another mount?)",
                    entry.fs_type,
                    entry.mount_point.display()
                ));
                continue;
            }
            match version {
                CgroupVersion::V2 => {
                    if v2.is_some() {
                        // The first visible mount wins; more mounts of the one unified
                        // hierarchy add nothing.
                        continue;
                    }
                    v2 = Some(Hierarchy {
                        version,
                        mount_point: entry.mount_point.clone(),
                        controllers: read_list(&path.join("cgroup.controllers"))?,
                        subtree_control: read_list(&path.join("cgroup.subtree_control"))?,
                        path,
                        read_only: entry.is_read_only(),
                        on_cgroupfs,
                    });
                }
                CgroupVersion::V1 => {
                    let controllers: Vec<String> = V1_CONTROLLERS
                        .iter()
                        .filter(|c| entry.has_super_option(c))
                        .map(|c| c.to_string())
                        .collect();
                    if controllers.is_empty() {
                        continue; // name=systemd and friends: no controller to use
                    }
                    // A v1 hierarchy can be mounted more than once (bind mounts); the
                    // first visible mount of a controller set wins.
                    if v1_all.iter().any(|h| h.controllers == controllers) {
                        continue;
                    }
                    v1_all.push(Hierarchy {
                        version,
                        mount_point: entry.mount_point.clone(),
                        path,
                        controllers,
                        subtree_control: Vec::new(),
                        read_only: entry.is_read_only(),
                        on_cgroupfs,
                    });
                }
            }
        }

        let kind = match (&v2, v1_all.is_empty()) {
            (Some(_), true) => CgroupKind::V2,
            (Some(_), false) => CgroupKind::Hybrid,
            (None, false) => CgroupKind::V1,
            (None, true) => {
                return Err(CgroupError::NotMounted {
                    mountinfo: PathBuf::from(mountinfo::SELF_MOUNTINFO),
                })
            }
        };

        let place = |c: Controller| -> Placement {
            if let Some(h) = v2.as_ref().filter(|h| h.carries(c)) {
                return Placement::V2 {
                    path: h.path.clone(),
                    enabled: h.subtree_control.iter().any(|n| n == c.name()),
                };
            }
            if let Some(h) = v1_all.iter().find(|h| h.carries(c)) {
                return Placement::V1 {
                    path: h.path.clone(),
                };
            }
            unavailable(c, kind, v2.as_ref())
        };
        let (memory, pids, cpu) = (
            place(Controller::Memory),
            place(Controller::Pids),
            place(Controller::Cpu),
        );

        // Keep only the v1 hierarchies a controller of ours was placed on, in controller order.
        let mut v1: Vec<Hierarchy> = Vec::new();
        for p in [&memory, &pids, &cpu] {
            if let Placement::V1 { path } = p {
                if let Some(h) = v1_all.iter().find(|h| &h.path == path) {
                    if !v1.iter().any(|k| k.path == h.path) {
                        v1.push(h.clone());
                    }
                }
            }
        }

        let freezer_v1 = v1_all
            .iter()
            .find(|h| h.controllers.iter().any(|c| c == FREEZER))
            .cloned();

        Ok(CgroupLayout {
            kind,
            v2,
            v1,
            memory,
            pids,
            cpu,
            freezer_v1,
            // Only `summary` (nsbox doctor) shows these: read them there, not on every start.
            fs_root: fs_root.to_path_buf(),
            notes,
        })
    }

    /// Pure v2, hybrid, or v1.
    /// The root every file access is prefixed with (`/` on a real host).
    pub(crate) fn fs_root(&self) -> &Path {
        &self.fs_root
    }

    pub fn kind(&self) -> CgroupKind {
        self.kind
    }

    /// Where `controller` lives.
    pub fn placement(&self, controller: Controller) -> &Placement {
        match controller {
            Controller::Memory => &self.memory,
            Controller::Pids => &self.pids,
            Controller::Cpu => &self.cpu,
        }
    }

    /// The unified hierarchy, if cgroup2 is mounted.
    pub fn v2(&self) -> Option<&Hierarchy> {
        self.v2.as_ref()
    }

    /// The v1 hierarchies that carry memory, pids or cpu.
    pub fn v1(&self) -> &[Hierarchy] {
        &self.v1
    }

    /// The hierarchy a controller is placed on (`None` when unavailable).
    pub fn hierarchy_of(&self, controller: Controller) -> Option<&Hierarchy> {
        match self.placement(controller) {
            Placement::V2 { .. } => self.v2.as_ref(),
            Placement::V1 { path } => self.v1.iter().find(|h| &h.path == path),
            Placement::Unavailable { .. } => None,
        }
    }

    /// The v1 freezer hierarchy, if one is mounted (see [`crate::cgroup::Freezer`]).
    pub fn freezer_v1(&self) -> Option<&Hierarchy> {
        self.freezer_v1.as_ref()
    }

    /// Every hierarchy nsbox may create directories in (v2 first), for leftover scans.
    pub fn hierarchies(&self) -> Vec<&Hierarchy> {
        let mut all: Vec<&Hierarchy> = self.v2.iter().chain(self.v1.iter()).collect();
        if let Some(f) = &self.freezer_v1 {
            if !all.iter().any(|h| h.path == f.path) {
                all.push(f);
            }
        }
        all
    }

    /// A few lines for `nsbox doctor`: the kind, where each controller lives and why.
    pub fn summary(&self) -> String {
        let mut out = format!("cgroups: {}\n", self.kind);
        if let Some(h) = &self.v2 {
            out.push_str(&format!(
                "  cgroup2 at {}: controllers [{}], enabled for children [{}]{}\n",
                h.mount_point.display(),
                h.controllers.join(" "),
                h.subtree_control.join(" "),
                if h.read_only { ", read-only" } else { "" }
            ));
        }
        for c in Controller::ALL {
            let line = match self.placement(c) {
                Placement::V2 { enabled: true, .. } => "cgroup v2".to_string(),
                Placement::V2 { enabled: false, .. } => {
                    "cgroup v2, but NOT enabled in the root's cgroup.subtree_control: a limit on it fails".to_string()
                }
                Placement::V1 { path } => {
                    let h = self.v1.iter().find(|h| &h.path == path);
                    let mut s = format!(
                        "cgroup v1 at {}",
                        h.map_or(path.as_path(), |h| &h.mount_point).display()
                    );
                    if let Some(h) = h.filter(|h| h.controllers.len() > 1) {
                        s.push_str(&format!(" (co-mounted: {})", h.controllers.join(",")));
                    }
                    if let Some(v2) = &self.v2 {
                        s.push_str(&format!(
                            "; not on cgroup2 at {}: this host mounts it on cgroup v1",
                            v2.mount_point.display()
                        ));
                    }
                    if h.is_some_and(|h| h.read_only) {
                        s.push_str("; read-only");
                    }
                    s
                }
                Placement::Unavailable { reason, hint } => {
                    format!("UNAVAILABLE: {reason} — hint: {hint}")
                }
            };
            out.push_str(&format!("  {:<8}{line}\n", format!("{c}:")));
        }
        // Where `nsbox pause` freezes a session (see `SandboxCgroup::create_with_freezer`).
        let on_v2 = Controller::ALL
            .iter()
            .any(|c| matches!(self.placement(*c), Placement::V2 { enabled: true, .. }));
        let freezer = match (&self.freezer_v1, on_v2) {
            (_, true) => "cgroup v2 (cgroup.freeze)".to_string(),
            (Some(h), false) if !h.read_only => {
                format!("cgroup v1 at {}", h.mount_point.display())
            }
            (Some(h), false) => format!(
                "UNAVAILABLE: cgroup v1 at {} is read-only (`nsbox pause` fails)",
                h.mount_point.display()
            ),
            (None, false) => "UNAVAILABLE: no controller of nsbox's on cgroup v2 and no cgroup v1 freezer mount (`nsbox pause` fails)".to_string(),
        };
        out.push_str(&format!("  {:<8}{freezer}\n", "freezer:"));
        // Where nsbox itself runs (`/proc/self/cgroup`), for `nsbox doctor`.
        let self_cgroups = read_self_cgroups(&self.fs_root);
        if !self_cgroups.is_empty() {
            let here: Vec<String> = self_cgroups
                .iter()
                .map(|(h, p)| {
                    if h.is_empty() {
                        format!("unified:{p}")
                    } else {
                        format!("{h}:{p}")
                    }
                })
                .collect();
            out.push_str(&format!("  nsbox runs in: {}\n", here.join(" ")));
        }
        for note in &self.notes {
            out.push_str(&format!("  note: {note}\n"));
        }
        out
    }
}

impl fmt::Display for CgroupLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.summary())
    }
}

fn unavailable(c: Controller, kind: CgroupKind, v2: Option<&Hierarchy>) -> Placement {
    let on_v2 = v2.map(|h| {
        format!(
            "not listed in {}",
            h.mount_point.join("cgroup.controllers").display()
        )
    });
    let reason = match (kind, on_v2) {
        (CgroupKind::V2, Some(v2)) => v2,
        (_, Some(v2)) => format!("{v2} and no cgroup v1 mount carries it"),
        (_, None) => "no cgroup v1 mount carries it and cgroup2 is not mounted".to_string(),
    };
    let hint = match kind {
        CgroupKind::V2 => format!(
            "the kernel may lack it or have it disabled (`cgroup_disable={c}` on the kernel command line); inside a container, the parent cgroup must delegate it"
        ),
        CgroupKind::Hybrid | CgroupKind::V1 => format!(
            "mount it on cgroup v1 (`mkdir -p /sys/fs/cgroup/{c} && mount -t cgroup -o {c} cgroup /sys/fs/cgroup/{c}`), or boot with `systemd.unified_cgroup_hierarchy=1` to put all controllers on cgroup v2"
        ),
    };
    Placement::Unavailable { reason, hint }
}

/// `fs_root` + an absolute path from the mount table.
pub(crate) fn under_root(fs_root: &Path, path: &Path) -> PathBuf {
    fs_root.join(path.strip_prefix("/").unwrap_or(path))
}

/// A space-separated list file (`cgroup.controllers`, `cgroup.subtree_control`).
fn read_list(path: &Path) -> Result<Vec<String>, CgroupError> {
    Ok(read_required(path)?
        .split_whitespace()
        .map(str::to_string)
        .collect())
}

/// `/proc/self/cgroup` under `fs_root`, as `(controllers, path)`; empty when unreadable (fake
/// roots without it, or no procfs), because it is only informational.
pub(crate) fn read_self_cgroups(fs_root: &Path) -> Vec<(String, String)> {
    let path = under_root(fs_root, Path::new("/proc/self/cgroup"));
    let Ok(Some(text)) = read_optional(&path) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let _id = parts.next()?;
            let controllers = parts.next()?;
            let cgroup = parts.next()?;
            Some((controllers.to_string(), cgroup.to_string()))
        })
        .collect()
}
