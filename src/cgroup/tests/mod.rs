//! Unit tests on a fake cgroupfs (no root needed), and root tests against the host's real cgroups
//! in `root`.

mod fixture;
mod root;

use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use fixture::{nsbox_dirs_below, read, FakeHost, HYBRID_HOST, SYSTEMD_V2_HOST, V1_COMOUNT_HOST};

use super::*;

const MIB: u64 = 1024 * 1024;

fn all_limits() -> CgroupLimits {
    CgroupLimits {
        memory_bytes: Some(256 * MIB),
        cpu_millis: Some(1500),
        pids: Some(64),
    }
}

fn hybrid() -> FakeHost {
    FakeHost::new(HYBRID_HOST, "hugetlb", "")
}

fn pure_v2() -> FakeHost {
    let all = "cpuset cpu io memory hugetlb pids rdma misc";
    FakeHost::new(SYSTEMD_V2_HOST, all, all)
}

// ---------------------------------------------------------------- layout

#[test]
fn layout_of_this_hybrid_host_puts_everything_on_v1() {
    let host = hybrid();
    let layout = host.layout();
    assert_eq!(layout.kind(), CgroupKind::Hybrid);
    for (c, dir) in [
        (Controller::Memory, "memory"),
        (Controller::Pids, "pids"),
        (Controller::Cpu, "cpu"),
    ] {
        assert_eq!(
            layout.placement(c),
            &Placement::V1 {
                path: host.path(&format!("/sys/fs/cgroup/{dir}"))
            },
            "{c}"
        );
    }
    let v2 = layout.v2().expect("cgroup2 is mounted");
    assert_eq!(v2.path, host.path("/sys/fs/cgroup/unified"));
    assert_eq!(v2.controllers, vec!["hugetlb"]);
    assert_eq!(layout.v1().len(), 3);

    let summary = layout.summary();
    assert!(summary.contains("hybrid"), "{summary}");
    assert!(
        summary.contains("memory: cgroup v1 at /sys/fs/cgroup/memory; not on cgroup2 at /sys/fs/cgroup/unified: this host mounts it on cgroup v1"),
        "{summary}"
    );
}

#[test]
fn layout_of_pure_v2_systemd_host() {
    let host = pure_v2();
    let layout = host.layout();
    assert_eq!(layout.kind(), CgroupKind::V2);
    for c in Controller::ALL {
        assert_eq!(
            layout.placement(c),
            &Placement::V2 {
                path: host.path("/sys/fs/cgroup"),
                enabled: true
            }
        );
    }
    assert!(layout.v1().is_empty());
    assert!(layout.summary().starts_with("cgroups: cgroup v2\n"));
}

#[test]
fn layout_of_v1_host_with_cpu_cpuacct_comounted() {
    let host = FakeHost::new(V1_COMOUNT_HOST, "", "");
    let layout = host.layout();
    assert_eq!(layout.kind(), CgroupKind::V1);
    assert!(layout.v2().is_none());
    let cpu = layout.hierarchy_of(Controller::Cpu).expect("cpu");
    assert_eq!(cpu.path, host.path("/sys/fs/cgroup/cpu,cpuacct"));
    assert_eq!(cpu.controllers, vec!["cpu", "cpuacct"]);
    assert!(layout
        .summary()
        .contains("cpu:    cgroup v1 at /sys/fs/cgroup/cpu,cpuacct (co-mounted: cpu,cpuacct)"));
    // net_cls,net_prio is a controller mount, but not one nsbox uses.
    assert_eq!(layout.v1().len(), 3);
}

#[test]
fn name_systemd_v1_mount_does_not_make_a_v2_host_hybrid() {
    let text = format!(
        "{SYSTEMD_V2_HOST}40 26 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd\n"
    );
    let host = FakeHost::new(&text, "memory pids cpu", "memory pids cpu");
    assert_eq!(host.layout().kind(), CgroupKind::V2);
}

#[test]
fn missing_controller_is_unavailable_with_a_hint() {
    let text: String = HYBRID_HOST
        .lines()
        .filter(|l| !l.contains("/pids "))
        .map(|l| format!("{l}\n"))
        .collect();
    let host = FakeHost::new(&text, "hugetlb", "");
    let layout = host.layout();
    match layout.placement(Controller::Pids) {
        Placement::Unavailable { reason, hint } => {
            assert!(reason.contains("no cgroup v1 mount carries it"), "{reason}");
            assert!(hint.contains("mount -t cgroup -o pids"), "{hint}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(layout.summary().contains("pids:   UNAVAILABLE"));
}

#[test]
fn no_cgroup_mount_at_all_is_an_error() {
    let entries =
        crate::host::mountinfo::parse("1 0 8:1 / / rw - ext4 /dev/sda1 rw").expect("parse");
    let dir = tempfile::tempdir().expect("tempdir");
    let err = CgroupLayout::from_parts(&entries, dir.path()).expect_err("no cgroups");
    assert!(matches!(err, CgroupError::NotMounted { .. }), "{err}");
    assert!(err.to_string().contains("hint: mount cgroup2"), "{err}");
}

#[test]
fn covered_cgroup_mount_is_ignored() {
    // A tmpfs mounted over /sys/fs/cgroup after the v1 mounts hides them; only the cgroup2
    // mounted on top afterwards is reachable.
    let text = format!(
        "{HYBRID_HOST}50 23 0:40 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n51 50 0:41 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
    );
    let host = FakeHost::new(&text, "memory pids cpu", "memory pids cpu");
    let layout = host.layout();
    assert_eq!(layout.kind(), CgroupKind::V2);
    assert_eq!(layout.v2().expect("v2").path, host.path("/sys/fs/cgroup"));
}

// ---------------------------------------------------------------- create: files and values

#[test]
fn create_on_hybrid_host_writes_v1_limits_and_opens_tasks_fds() {
    let host = hybrid();
    let cg = SandboxCgroup::create(&host.layout(), "abc", &all_limits()).expect("create");
    let mem = host.path("/sys/fs/cgroup/memory/nsbox-abc");
    let pids = host.path("/sys/fs/cgroup/pids/nsbox-abc");
    let cpu = host.path("/sys/fs/cgroup/cpu/nsbox-abc");
    assert_eq!(cg.paths(), vec![mem.clone(), pids.clone(), cpu.clone()]);
    assert_eq!(read(&mem.join("memory.limit_in_bytes")), "268435456");
    assert_eq!(read(&mem.join("memory.memsw.limit_in_bytes")), "268435456");
    assert_eq!(
        read(&mem.join("memory.kmem.tcp.limit_in_bytes")),
        "268435456",
        "v1 charges TCP buffers only with a tcp limit"
    );
    assert_eq!(read(&pids.join("pids.max")), "64");
    assert_eq!(read(&cpu.join("cpu.cfs_period_us")), "100000");
    assert_eq!(read(&cpu.join("cpu.cfs_quota_us")), "150000");
    assert!(cg.warnings().is_empty(), "{:?}", cg.warnings());
    assert!(
        cg.clone_into_fd().is_none(),
        "no controller of ours is on v2 here"
    );
    assert_eq!(cg.self_join_fds().len(), 3);
    // Nothing was created on the (controller-less) cgroup2 mount.
    assert!(nsbox_dirs_below(&host.path("/sys/fs/cgroup/unified")).is_empty());
}

#[test]
fn freezable_sandbox_on_hybrid_host_joins_the_v1_freezer_and_freezes_there() {
    let host = hybrid();
    let layout = host.layout();
    let freezer = host.path("/sys/fs/cgroup/freezer/nsbox-fz");
    // One-shot sandboxes skip the freezer's directory.
    let plain = SandboxCgroup::create(&layout, "plain", &CgroupLimits::default()).expect("create");
    assert!(!plain.can_freeze());
    assert!(matches!(plain.freeze(), Err(CgroupError::NoFreezer)));
    assert!(nsbox_dirs_below(&host.path("/sys/fs/cgroup/freezer")).is_empty());

    let cg = SandboxCgroup::create_with_freezer(&layout, "fz", &CgroupLimits::default(), true)
        .expect("create");
    assert!(cg.paths().contains(&freezer), "{:?}", cg.paths());
    assert_eq!(
        cg.self_join_fds().len(),
        4,
        "the sandbox joins the freezer at start"
    );
    cg.freeze().expect("freeze");
    assert_eq!(read(&freezer.join("freezer.state")), "FROZEN");
    assert_eq!(cg.is_frozen().unwrap(), Some(true));
    cg.thaw().expect("thaw");
    assert_eq!(read(&freezer.join("freezer.state")), "THAWED");
    assert_eq!(cg.is_frozen().unwrap(), Some(false));
    cg.remove().expect("remove");
    assert!(!freezer.exists());
}

#[test]
fn freezable_sandbox_on_pure_v2_uses_cgroup_freeze_in_its_own_dir() {
    let host = pure_v2();
    let cg = SandboxCgroup::create_with_freezer(&host.layout(), "fz", &all_limits(), true)
        .expect("create");
    let dir = host.path("/sys/fs/cgroup/nsbox-fz");
    assert_eq!(cg.paths(), vec![dir.clone()], "no freezer directory on v2");
    // The workload's leaf is frozen, not nsbox-<id>: a charged supervisor is in its sibling.
    let leaf = dir.join("sandbox");
    // The kernel reports the state in cgroup.events; the fake says frozen already.
    host.write(&leaf.join("cgroup.events"), "populated 1\nfrozen 1\n");
    cg.freeze().expect("freeze");
    assert_eq!(read(&leaf.join("cgroup.freeze")), "1");
    assert_eq!(read(&dir.join("cgroup.freeze")), "");
    assert_eq!(cg.is_frozen().unwrap(), Some(true));
}

#[test]
fn join_self_writes_zero_to_each_tasks_fd() {
    let host = hybrid();
    let cg = SandboxCgroup::create(&host.layout(), "j", &CgroupLimits::default()).expect("create");
    join_self(cg.self_join_fds()).expect("join");
    for p in cg.paths() {
        assert_eq!(read(&p.join("tasks")), "0", "{}", p.display());
    }
}

#[test]
fn create_on_pure_v2_puts_the_cpu_limit_above_the_workloads_leaf() {
    let host = pure_v2();
    let cg = SandboxCgroup::create(&host.layout(), "abc", &all_limits()).expect("create");
    let dir = host.path("/sys/fs/cgroup/nsbox-abc");
    let leaf = dir.join("sandbox");
    assert_eq!(cg.paths(), vec![dir.clone()]);
    assert_eq!(cg.process_paths(), vec![leaf.clone()]);
    // cpu on nsbox-<id> (over the workload and a charged supervisor), the rest on the leaf.
    assert_eq!(read(&dir.join("cpu.max")), "150000 100000");
    assert_eq!(read(&dir.join("cgroup.subtree_control")), "+memory +pids");
    assert_eq!(read(&leaf.join("memory.max")), "268435456");
    assert_eq!(read(&leaf.join("memory.swap.max")), "0");
    assert_eq!(read(&leaf.join("memory.oom.group")), "1");
    assert_eq!(read(&leaf.join("pids.max")), "64");
    for file in ["memory.max", "pids.max"] {
        assert_eq!(read(&dir.join(file)), "", "no {file} above the leaf");
    }
    assert_eq!(read(&leaf.join("cpu.max")), "", "no cpu limit on the leaf");
    assert!(cg.self_join_fds().is_empty());
    assert!(cg.warnings().is_empty(), "{:?}", cg.warnings());

    // The sandbox is cloned into the leaf.
    let fd = cg.clone_into_fd().expect("v2 dir fd");
    let st = rustix::fs::fstat(fd.as_fd()).expect("fstat");
    let meta = std::fs::metadata(&leaf).expect("stat");
    assert_eq!((st.st_dev, st.st_ino), (meta.dev(), meta.ino()));
    let fl = rustix::fs::fcntl_getfl(fd).expect("getfl");
    assert!(
        !fl.contains(rustix::fs::OFlags::PATH),
        "O_PATH fds are refused by clone3"
    );
    assert!(fl.contains(rustix::fs::OFlags::DIRECTORY));
    assert!(rustix::io::fcntl_getfd(fd)
        .expect("getfd")
        .contains(rustix::io::FdFlags::CLOEXEC));
}

#[test]
fn create_on_v1_comount_uses_one_dir_for_cpu_and_reads_cpuacct() {
    let host = FakeHost::new(V1_COMOUNT_HOST, "", "");
    let cg = SandboxCgroup::create(&host.layout(), "x", &all_limits()).expect("create");
    let cpu = host.path("/sys/fs/cgroup/cpu,cpuacct/nsbox-x");
    assert_eq!(cg.paths().len(), 3);
    assert!(cg.paths().contains(&cpu));
    assert_eq!(read(&cpu.join("cpu.cfs_quota_us")), "150000");
    for (dir, file) in [
        ("memory", "memory.usage_in_bytes"),
        ("memory", "memory.max_usage_in_bytes"),
        ("pids", "pids.current"),
    ] {
        host.write(
            &host.path(&format!("/sys/fs/cgroup/{dir}/nsbox-x/{file}")),
            "0\n",
        );
    }
    host.write(&cpu.join("cpuacct.usage"), "2500000\n");
    assert_eq!(cg.stats().expect("stats").cpu_usage_usec, Some(2500));
}

#[test]
fn none_limits_write_nothing_but_still_track() {
    let host = pure_v2();
    let _cg = SandboxCgroup::create(&host.layout(), "n", &CgroupLimits::default()).expect("create");
    let dir = host.path("/sys/fs/cgroup/nsbox-n");
    for f in ["memory.max", "memory.swap.max", "pids.max", "cpu.max"] {
        assert_eq!(read(&dir.join(f)), "", "{f}");
        assert_eq!(read(&dir.join("sandbox").join(f)), "", "{f}");
    }
    // Group OOM kill is about how a kill happens, not a limit, so it is always set.
    assert_eq!(read(&dir.join("sandbox/memory.oom.group")), "1");

    let host = hybrid();
    let cg = SandboxCgroup::create(&host.layout(), "n", &CgroupLimits::default()).expect("create");
    assert_eq!(cg.paths().len(), 3, "counters still need the directories");
    for p in cg.paths() {
        for e in std::fs::read_dir(&p).expect("readdir").flatten() {
            assert_eq!(read(&e.path()), "", "{}", e.path().display());
        }
    }
}

#[test]
fn absent_v1_tcp_accounting_is_a_warning_not_an_error() {
    let host = hybrid();
    host.remove("/sys/fs/cgroup/memory/memory.kmem.tcp.limit_in_bytes");
    let cg = SandboxCgroup::create(&host.layout(), "t", &all_limits()).expect("create");
    assert_eq!(cg.warnings().len(), 1);
    assert!(
        cg.warnings()[0].contains("TCP buffers"),
        "{:?}",
        cg.warnings()
    );
}

#[test]
fn absent_swap_accounting_is_a_warning_not_an_error() {
    let host = hybrid();
    host.remove("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes");
    let cg = SandboxCgroup::create(&host.layout(), "s", &all_limits()).expect("create");
    assert_eq!(
        read(&host.path("/sys/fs/cgroup/memory/nsbox-s/memory.limit_in_bytes")),
        "268435456"
    );
    assert_eq!(cg.warnings().len(), 1);
    assert!(
        cg.warnings()[0].contains("swapaccount=1"),
        "{:?}",
        cg.warnings()
    );

    let host = pure_v2();
    host.remove("/sys/fs/cgroup/memory.swap.max");
    let cg = SandboxCgroup::create(&host.layout(), "s", &all_limits()).expect("create");
    assert_eq!(cg.warnings().len(), 1);
    assert!(
        cg.warnings()[0].contains("memory.swap.max is absent"),
        "{:?}",
        cg.warnings()
    );
}

#[test]
fn v2_controller_not_enabled_for_children_fails_with_hint_and_creates_nothing() {
    let host = FakeHost::new(SYSTEMD_V2_HOST, "cpu memory pids", "cpu pids");
    let layout = host.layout();
    assert_eq!(
        layout.placement(Controller::Memory),
        &Placement::V2 {
            path: host.path("/sys/fs/cgroup"),
            enabled: false
        }
    );
    let err = SandboxCgroup::create(&layout, "e", &all_limits()).expect_err("memory not enabled");
    assert!(
        matches!(
            err,
            CgroupError::ControllerNotEnabled {
                controller: Controller::Memory,
                ..
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.starts_with("memory controller is not enabled for child cgroups of "),
        "{msg}"
    );
    assert!(msg.contains("lists: cpu pids"), "{msg}");
    assert!(
        msg.contains("— hint: enable it for child cgroups as root with `echo +memory > "),
        "{msg}"
    );
    assert!(nsbox_dirs_below(host.root()).is_empty());
    // Not a single write to the parent: its subtree_control is as the fixture left it.
    assert_eq!(
        read(&host.path("/sys/fs/cgroup/cgroup.subtree_control")),
        "cpu pids"
    );

    // Without a memory limit the sandbox runs, and says what it cannot track.
    let limits = CgroupLimits {
        memory_bytes: None,
        ..all_limits()
    };
    let cg = SandboxCgroup::create(&layout, "e", &limits).expect("create");
    assert_eq!(
        read(&host.path("/sys/fs/cgroup/nsbox-e/sandbox/pids.max")),
        "64"
    );
    // Only what nsbox-e has is passed to the leaf: no memory.
    assert_eq!(
        read(&host.path("/sys/fs/cgroup/nsbox-e/cgroup.subtree_control")),
        "+pids"
    );
    assert!(
        cg.warnings()[0].starts_with("memory controller not enabled"),
        "{:?}",
        cg.warnings()
    );
}

#[test]
fn unavailable_controller_with_a_limit_fails_without_one_warns() {
    let text: String = HYBRID_HOST
        .lines()
        .filter(|l| !l.contains("/pids "))
        .map(|l| format!("{l}\n"))
        .collect();
    let host = FakeHost::new(&text, "hugetlb", "");
    let err = SandboxCgroup::create(&host.layout(), "u", &all_limits()).expect_err("no pids");
    let msg = err.to_string();
    assert!(msg.starts_with("pids controller not available: "), "{msg}");
    assert!(msg.contains("— hint: mount it on cgroup v1"), "{msg}");
    assert!(nsbox_dirs_below(host.root()).is_empty());

    let limits = CgroupLimits {
        pids: None,
        ..all_limits()
    };
    let cg = SandboxCgroup::create(&host.layout(), "u", &limits).expect("create");
    assert_eq!(cg.paths().len(), 2);
    assert!(cg.warnings()[0].starts_with("pids controller not available"));
}

#[test]
fn read_only_hierarchy_fails_only_when_a_limit_needs_it() {
    let text = HYBRID_HOST.replace(
        "/sys/fs/cgroup/cpu rw,relatime",
        "/sys/fs/cgroup/cpu ro,relatime",
    );
    let host = FakeHost::new(&text, "hugetlb", "");
    let err = SandboxCgroup::create(&host.layout(), "r", &all_limits()).expect_err("ro");
    assert!(
        matches!(
            err,
            CgroupError::ReadOnly {
                controller: Controller::Cpu,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(nsbox_dirs_below(host.root()).is_empty());
    let limits = CgroupLimits {
        cpu_millis: None,
        ..all_limits()
    };
    let cg = SandboxCgroup::create(&host.layout(), "r", &limits).expect("create");
    assert_eq!(cg.paths().len(), 2);
}

#[test]
fn existing_directory_is_never_adopted() {
    let host = pure_v2();
    let theirs = host.path("/sys/fs/cgroup/nsbox-taken");
    std::fs::create_dir(&theirs).expect("mkdir");
    let err = SandboxCgroup::create(&host.layout(), "taken", &all_limits()).expect_err("exists");
    assert!(matches!(err, CgroupError::AlreadyExists { .. }), "{err:?}");
    assert!(err.to_string().contains("nsbox prune"));
    assert!(
        theirs.is_dir(),
        "a directory we did not create must survive"
    );
}

#[test]
fn failure_half_way_removes_what_was_created() {
    let host = hybrid();
    // The cpu hierarchy (created last) lacks a required file: memory and pids dirs exist by
    // then and must be rolled back.
    host.remove("/sys/fs/cgroup/cpu/cpu.cfs_quota_us");
    let err = SandboxCgroup::create(&host.layout(), "half", &all_limits()).expect_err("no quota");
    match &err {
        CgroupError::WriteLimit { file, value, .. } => {
            assert!(
                file.ends_with("nsbox-half/cpu.cfs_quota_us"),
                "{}",
                file.display()
            );
            assert_eq!(value, "150000");
        }
        other => panic!("expected WriteLimit, got {other:?}"),
    }
    assert!(nsbox_dirs_below(host.root()).is_empty());

    // Pure v2: the workload's leaf fails its pids limit; the leaf and nsbox-<id> both go.
    let host = pure_v2();
    host.remove("/sys/fs/cgroup/pids.max");
    let err = SandboxCgroup::create(&host.layout(), "half", &all_limits()).expect_err("no pids");
    assert!(
        matches!(&err, CgroupError::WriteLimit { file, .. } if file.ends_with("nsbox-half/sandbox/pids.max")),
        "{err:?}"
    );
    assert!(!host.path("/sys/fs/cgroup/nsbox-half").exists());
}

#[test]
fn invalid_ids_and_limits_are_rejected_before_any_mkdir() {
    let host = pure_v2();
    let layout = host.layout();
    for id in ["", "../x", "a/b", ".hidden", "-x", "x y", &"a".repeat(65)] {
        let err = SandboxCgroup::create(&layout, id, &all_limits()).expect_err(id);
        assert!(
            matches!(err, CgroupError::InvalidId { .. }),
            "{id}: {err:?}"
        );
    }
    for limits in [
        CgroupLimits {
            memory_bytes: Some(0),
            ..all_limits()
        },
        CgroupLimits {
            pids: Some(0),
            ..all_limits()
        },
        CgroupLimits {
            cpu_millis: Some(9),
            ..all_limits()
        },
        CgroupLimits {
            cpu_millis: Some(u64::MAX),
            ..all_limits()
        },
    ] {
        let err = SandboxCgroup::create(&layout, "ok", &limits).expect_err("limit");
        assert!(
            matches!(err, CgroupError::InvalidLimit { .. }),
            "{limits:?}: {err:?}"
        );
    }
    assert!(nsbox_dirs_below(host.root()).is_empty());
    assert!(SandboxCgroup::create(&layout, "Ok_1.2-3", &all_limits()).is_ok());
}

#[test]
fn cpu_millis_become_quota_per_100ms_period() {
    let host = pure_v2();
    for (millis, expect) in [
        (10, "1000 100000"),
        (250, "25000 100000"),
        (4000, "400000 100000"),
    ] {
        let limits = CgroupLimits {
            cpu_millis: Some(millis),
            ..CgroupLimits::default()
        };
        let cg = SandboxCgroup::create(&host.layout(), "q", &limits).expect("create");
        assert_eq!(read(&cg.paths()[0].join("cpu.max")), expect);
        cg.remove().expect("remove");
    }
}

// ---------------------------------------------------------------- counters

#[test]
fn stats_and_oom_kills_on_v2() {
    let host = pure_v2();
    let cg = SandboxCgroup::create(&host.layout(), "st", &all_limits()).expect("create");
    // The workload's counters, from its leaf (a charged supervisor is in a sibling).
    let dir = &cg.paths()[0];
    let leaf = &cg.process_paths()[0];
    host.write(&leaf.join("memory.current"), "1048576\n");
    host.write(&leaf.join("memory.peak"), "4194304\n");
    host.write(&leaf.join("pids.current"), "3\n");
    host.write(
        &leaf.join("cpu.stat"),
        "usage_usec 12345\nuser_usec 10000\nsystem_usec 2345\n",
    );
    host.write(&dir.join("cpu.stat"), "usage_usec 99999\n");
    host.write(
        &leaf.join("memory.events"),
        "low 0\nhigh 0\nmax 7\noom 2\noom_kill 2\noom_group_kill 1\n",
    );
    assert_eq!(
        cg.stats().expect("stats"),
        CgroupStats {
            memory_current_bytes: Some(MIB),
            memory_peak_bytes: Some(4 * MIB),
            pids_current: Some(3),
            cpu_usage_usec: Some(12345),
        }
    );
    assert_eq!(cg.oom_kills().expect("oom"), 2);
}

#[test]
fn stats_and_oom_kills_on_v1() {
    let host = hybrid();
    let cg = SandboxCgroup::create(&host.layout(), "st", &all_limits()).expect("create");
    let mem = host.path("/sys/fs/cgroup/memory/nsbox-st");
    host.write(&mem.join("memory.usage_in_bytes"), "2097152\n");
    host.write(&mem.join("memory.max_usage_in_bytes"), "3145728\n");
    host.write(
        &mem.join("memory.oom_control"),
        "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
    );
    host.write(
        &host.path("/sys/fs/cgroup/pids/nsbox-st/pids.current"),
        "5\n",
    );
    let stats = cg.stats().expect("stats");
    assert_eq!(stats.memory_current_bytes, Some(2 * MIB));
    assert_eq!(stats.memory_peak_bytes, Some(3 * MIB));
    assert_eq!(stats.pids_current, Some(5));
    // cpuacct is its own mount on this host, so there is no usage to read.
    assert_eq!(stats.cpu_usage_usec, None);
    assert_eq!(cg.oom_kills().expect("oom"), 1);

    host.write(&mem.join("memory.oom_control"), "oom_kill_disable 0\n");
    assert!(matches!(cg.oom_kills(), Err(CgroupError::Parse { .. })));
}

// ---------------------------------------------------------------- removal

#[test]
fn remove_and_drop_remove_every_directory() {
    let host = hybrid();
    let cg = SandboxCgroup::create(&host.layout(), "rm", &all_limits()).expect("create");
    let paths = cg.paths();
    assert!(paths.iter().all(|p| p.is_dir()));
    cg.remove().expect("remove");
    assert!(paths.iter().all(|p| !p.exists()));

    let cg = SandboxCgroup::create(&host.layout(), "rm", &all_limits()).expect("create again");
    let paths = cg.paths();
    drop(cg);
    assert!(paths.iter().all(|p| !p.exists()));
    assert!(nsbox_dirs_below(host.root()).is_empty());

    // Pure v2: the workload's leaf goes first, then nsbox-<id>.
    let host = pure_v2();
    let cg = SandboxCgroup::create(&host.layout(), "rm", &all_limits()).expect("create");
    let (dir, leaf) = (cg.paths()[0].clone(), cg.process_paths()[0].clone());
    assert!(leaf.is_dir() && leaf.parent() == Some(dir.as_path()));
    cg.remove().expect("remove");
    assert!(!dir.exists());
    assert!(nsbox_dirs_below(host.root()).is_empty());
}

#[test]
fn create_at_a_path_makes_its_parents_and_removes_only_those() {
    let host = pure_v2();
    std::fs::create_dir(host.path("/sys/fs/cgroup/kube")).expect("an existing parent");
    let at = CgroupAt::new("/kube/pod1/ctr").expect("a path");
    let cg = SandboxCgroup::create_at(&host.layout(), "abc", &all_limits(), true, Some(&at))
        .expect("create");
    let dir = host.path("/sys/fs/cgroup/kube/pod1/ctr");
    assert_eq!(cg.paths(), vec![dir.clone()]);
    assert_eq!(
        cg.process_paths(),
        cg.paths(),
        "an engine's path has no leaves"
    );
    assert_eq!(read(&dir.join("pids.max")), "64");
    // The parent nsbox made passes the sandbox's controllers on; the existing one is not
    // written.
    assert_eq!(
        read(&host.path("/sys/fs/cgroup/kube/pod1/cgroup.subtree_control")),
        "+memory +pids +cpu"
    );
    // The engine's container owns the directory until it deletes it: the sandbox's removal
    // leaves it (the shim reads it after the exit), `remove_named` removes it.
    let paths = cg.paths();
    cg.remove().expect("remove");
    assert!(dir.is_dir());
    remove_named(host.root(), &paths).expect("remove_named");
    assert!(!dir.exists());
    assert!(!host.path("/sys/fs/cgroup/kube/pod1").exists());
    assert!(host.path("/sys/fs/cgroup/kube").is_dir(), "not nsbox's");
    // The registry of parents goes with its last line: the run directory keeps nothing.
    assert!(!host.path("/run/nsbox/cgroup-parents").exists());

    // A container killed before its delete leaves its parent; prune removes it once empty.
    let at = CgroupAt::new("/kube/pod2/ctr").expect("a path");
    let cg = SandboxCgroup::create_at(&host.layout(), "abd", &all_limits(), true, Some(&at))
        .expect("create");
    let paths = cg.paths();
    drop(cg);
    assert_eq!(
        prune_parents(host.root()),
        0,
        "the parent still holds the container's cgroup"
    );
    assert!(host.path("/run/nsbox/cgroup-parents").exists());
    std::fs::remove_dir_all(&paths[0]).expect("the container's cgroup, as its engine would");
    assert_eq!(prune_parents(host.root()), 1);
    assert!(!host.path("/sys/fs/cgroup/kube/pod2").exists());
    assert!(host.path("/sys/fs/cgroup/kube").is_dir(), "not nsbox's");
    assert!(!host.path("/run/nsbox/cgroup-parents").exists());

    // Hybrid: the same path below every v1 hierarchy used.
    let host = hybrid();
    let at = CgroupAt::new("box").expect("a relative path");
    let cg = SandboxCgroup::create_at(&host.layout(), "abc", &all_limits(), true, Some(&at))
        .expect("create");
    assert!(cg.paths().len() >= 3);
    assert!(cg.paths().iter().all(|p| p.ends_with("box") && p.is_dir()));
    let paths = cg.paths();
    drop(cg);
    assert!(paths.iter().all(|p| p.is_dir()));
    remove_named(host.root(), &paths).expect("remove_named");
    assert!(paths.iter().all(|p| !p.exists()));
}

#[test]
fn cgroup_paths_with_dots_or_only_the_root_are_refused() {
    for bad in ["", "/", "//", "/a/../b", "./a", "a/."] {
        let e = CgroupAt::new(bad).expect_err(bad).to_string();
        assert!(e.contains("invalid cgroup path"), "{bad}: {e}");
    }
    assert_eq!(
        CgroupAt::new("//default//ctr/").unwrap().relative(),
        Path::new("default/ctr")
    );
}

#[test]
fn remove_tolerates_a_directory_already_gone() {
    let host = pure_v2();
    let cg = SandboxCgroup::create(&host.layout(), "gone", &all_limits()).expect("create");
    std::fs::remove_dir_all(&cg.paths()[0]).expect("rm");
    cg.remove().expect("remove");
}

// ---------------------------------------------------------------- leftovers

fn set_age(path: &Path, age: Duration) {
    let when = SystemTime::now() - age;
    std::fs::File::open(path)
        .and_then(|f| f.set_modified(when))
        .expect("set mtime");
}

#[test]
fn leftovers_are_found_with_emptiness_and_age() {
    let host = hybrid();
    let layout = host.layout();
    let old = SandboxCgroup::create(&layout, "old", &all_limits()).expect("create");
    let busy = SandboxCgroup::create(&layout, "busy", &all_limits()).expect("create");
    let old_paths = old.paths();
    // A killed supervisor: its directories stay (forget skips Drop's cleanup).
    std::mem::forget(old);
    std::mem::forget(busy);
    for p in &old_paths {
        set_age(p, Duration::from_secs(7200));
    }
    host.write(&host.path("/sys/fs/cgroup/pids/nsbox-busy/tasks"), "4242\n");
    // Not ours: wrong prefix, invalid id, a plain file.
    std::fs::create_dir(host.path("/sys/fs/cgroup/memory/other")).expect("mkdir");
    std::fs::create_dir(host.path("/sys/fs/cgroup/memory/nsbox-.x")).expect("mkdir");
    host.write(&host.path("/sys/fs/cgroup/memory/nsbox-file"), "");

    let mut found = find_leftovers(&layout).expect("find");
    found.sort_by(|a, b| a.path.cmp(&b.path));
    let summary: Vec<(String, bool)> = found.iter().map(|l| (l.id.clone(), l.empty)).collect();
    assert_eq!(
        summary,
        vec![
            ("busy".to_string(), true),
            ("old".to_string(), true),
            ("busy".to_string(), true),
            ("old".to_string(), true),
            ("busy".to_string(), false),
            ("old".to_string(), true),
        ]
    );
    for l in found.iter().filter(|l| l.id == "old") {
        let age = l.age.expect("age");
        assert!(
            age >= Duration::from_secs(7199) && age < Duration::from_secs(7300),
            "{age:?}"
        );
    }
    for l in found.iter().filter(|l| l.id == "busy") {
        assert!(l.age.expect("age") < Duration::from_secs(60));
    }

    for l in found.iter().filter(|l| l.id == "old") {
        remove_leftover(l).expect("remove old");
        assert!(!l.path.exists());
    }
    let busy_pids = found.iter().find(|l| !l.empty).expect("busy");
    let err = remove_leftover(busy_pids).expect_err("busy");
    assert!(matches!(err, CgroupError::LeftoverBusy { .. }), "{err:?}");
    assert!(busy_pids.path.is_dir());
}

#[test]
fn leftover_with_child_cgroups_is_removed_deepest_first_and_v2_uses_cgroup_events() {
    let host = pure_v2();
    let layout = host.layout();
    std::mem::forget(SandboxCgroup::create(&layout, "nest", &all_limits()).expect("create"));
    let dir = host.path("/sys/fs/cgroup/nsbox-nest");
    std::fs::create_dir_all(dir.join("inner/deeper")).expect("mkdir");
    host.write(&dir.join("inner/deeper/cgroup.procs"), "");
    host.write(&dir.join("cgroup.events"), "populated 1\nfrozen 0\n");

    let found = find_leftovers(&layout).expect("find");
    assert_eq!(found.len(), 1);
    assert!(!found[0].empty, "cgroup.events says populated");
    assert!(remove_leftover(&found[0]).is_err());

    host.write(&dir.join("cgroup.events"), "populated 0\nfrozen 0\n");
    let found = find_leftovers(&layout).expect("find");
    assert!(found[0].empty);
    remove_leftover(&found[0]).expect("remove");
    assert!(nsbox_dirs_below(host.root()).is_empty());
}

#[test]
fn error_messages_name_the_failure_and_carry_hints() {
    let e = CgroupError::Remove {
        path: "/sys/fs/cgroup/nsbox-x".into(),
        source: std::io::Error::from_raw_os_error(libc::EBUSY),
        hint: Some("processes are still in it".into()),
    };
    // The errno's text is the libc's (glibc and musl word EBUSY differently).
    let busy = std::io::Error::from_raw_os_error(libc::EBUSY);
    assert_eq!(
        e.to_string(),
        format!(
            "cannot remove cgroup /sys/fs/cgroup/nsbox-x: {busy} — hint: processes are still in it"
        )
    );
    let e = CgroupError::Remove {
        path: "/x".into(),
        source: std::io::Error::from_raw_os_error(libc::EACCES),
        hint: None,
    };
    assert!(!e.to_string().contains("hint"));
}
