//! A fake cgroupfs in a temp dir, built from a mountinfo fixture: every cgroup mount becomes a
//! directory holding the control files a *child* cgroup would get on that host (the code under
//! test copies those names into each directory it creates, see `fsops::populate_fixture`).

use std::path::{Path, PathBuf};

use tempfile::TempDir;

use crate::cgroup::CgroupLayout;
use crate::host::mountinfo;

/// This development machine, verbatim (hybrid: controllers on v1, cgroup2 nearly empty).
pub const HYBRID_HOST: &str = "\
23 1 0:21 / /sys rw,nosuid,nodev,noexec,relatime - sysfs sysfs rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

/// A systemd host on pure cgroup v2 (Debian 12 / Fedora style).
pub const SYSTEMD_V2_HOST: &str = "\
22 28 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
26 22 0:24 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:8 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
27 22 0:25 / /sys/fs/pstore rw,nosuid,nodev,noexec,relatime shared:9 - pstore pstore rw
";

/// A v1 host (CentOS 7 / Ubuntu 16.04 style): `cpu,cpuacct` and `net_cls,net_prio` co-mounted,
/// no cgroup2 at all.
pub const V1_COMOUNT_HOST: &str = "\
18 60 0:17 / /sys rw,nosuid,nodev,noexec,relatime shared:6 - sysfs sysfs rw
24 18 0:20 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:7 - tmpfs tmpfs ro,mode=755
25 24 0:21 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:8 - cgroup cgroup rw,xattr,release_agent=/usr/lib/systemd/systemd-cgroups-agent,name=systemd
28 24 0:24 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,cpu,cpuacct
29 24 0:25 / /sys/fs/cgroup/net_cls,net_prio rw,nosuid,nodev,noexec,relatime shared:12 - cgroup cgroup rw,net_cls,net_prio
30 24 0:26 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup rw,memory
31 24 0:27 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,pids
";

const V1_COMMON: &[&str] = &["tasks", "cgroup.procs", "notify_on_release"];
const V1_MEMORY: &[&str] = &[
    "memory.limit_in_bytes",
    "memory.memsw.limit_in_bytes",
    "memory.kmem.tcp.limit_in_bytes",
    "memory.oom_control",
    "memory.usage_in_bytes",
    "memory.max_usage_in_bytes",
];
const V1_PIDS: &[&str] = &["pids.max", "pids.current"];
const V1_CPU: &[&str] = &["cpu.cfs_period_us", "cpu.cfs_quota_us", "cpu.shares"];
const V1_CPUACCT: &[&str] = &["cpuacct.usage", "cpuacct.stat"];
const V1_FREEZER: &[&str] = &["freezer.state"];
const V2_CORE: &[&str] = &[
    "cgroup.procs",
    "cgroup.events",
    "cgroup.type",
    "cgroup.freeze",
    "cpu.stat",
];
const V2_MEMORY: &[&str] = &[
    "memory.max",
    "memory.swap.max",
    "memory.oom.group",
    "memory.events",
    "memory.current",
    "memory.peak",
];
const V2_PIDS: &[&str] = &["pids.max", "pids.current"];
const V2_CPU: &[&str] = &["cpu.max", "cpu.weight"];

pub struct FakeHost {
    dir: TempDir,
    mountinfo: String,
}

impl FakeHost {
    /// Build the fake tree for `mountinfo`. `v2_controllers` / `v2_subtree` are the contents of
    /// the cgroup2 root's `cgroup.controllers` and `cgroup.subtree_control`; a v2 child gets the
    /// files of the controllers in `v2_subtree` only, as on a real host.
    pub fn new(mountinfo: &str, v2_controllers: &str, v2_subtree: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let host = FakeHost {
            dir,
            mountinfo: mountinfo.to_string(),
        };
        for e in mountinfo::parse(mountinfo).expect("fixture mountinfo") {
            let path = host.path(&e.mount_point.to_string_lossy());
            match e.fs_type.as_str() {
                "cgroup" => {
                    std::fs::create_dir_all(&path).expect("mkdir");
                    let mut files: Vec<&str> = V1_COMMON.to_vec();
                    for (ctl, set) in [
                        ("memory", V1_MEMORY),
                        ("pids", V1_PIDS),
                        ("cpu", V1_CPU),
                        ("cpuacct", V1_CPUACCT),
                        ("freezer", V1_FREEZER),
                    ] {
                        if e.has_super_option(ctl) {
                            files.extend(set);
                        }
                    }
                    host.touch_all(&path, &files);
                }
                "cgroup2" => {
                    std::fs::create_dir_all(&path).expect("mkdir");
                    host.write(&path.join("cgroup.controllers"), v2_controllers);
                    host.write(&path.join("cgroup.subtree_control"), v2_subtree);
                    let mut files: Vec<&str> = V2_CORE.to_vec();
                    for (ctl, set) in [("memory", V2_MEMORY), ("pids", V2_PIDS), ("cpu", V2_CPU)] {
                        if v2_subtree.split_whitespace().any(|c| c == ctl) {
                            files.extend(set);
                        }
                    }
                    host.touch_all(&path, &files);
                }
                _ => {}
            }
        }
        host
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// `host_path` (absolute, as on the host) inside the fake root.
    pub fn path(&self, host_path: &str) -> PathBuf {
        self.root().join(host_path.trim_start_matches('/'))
    }

    pub fn layout(&self) -> CgroupLayout {
        let entries = mountinfo::parse(&self.mountinfo).expect("fixture mountinfo");
        CgroupLayout::from_parts(&entries, self.root()).expect("layout")
    }

    pub fn write(&self, path: &Path, text: &str) {
        std::fs::write(path, text).expect("write fixture file");
    }

    pub fn remove(&self, host_path: &str) {
        std::fs::remove_file(self.path(host_path)).expect("remove fixture file");
    }

    fn touch_all(&self, dir: &Path, files: &[&str]) {
        for f in files {
            let p = dir.join(f);
            if !p.exists() {
                self.write(&p, "");
            }
        }
    }
}

/// Contents of a file, for assertions.
pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Names of `nsbox-*` entries anywhere below `dir`, for "nothing left behind" checks.
pub fn nsbox_dirs_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                if e.file_name().to_string_lossy().starts_with("nsbox-") {
                    out.push(p.clone());
                }
                stack.push(p);
            }
        }
    }
    out
}
