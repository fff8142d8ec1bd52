//! An OCI bundle's `config.json`, mapped onto nsbox's request ([`ExecRequest`]): what nsbox can
//! honour becomes flags; what its floor forbids is refused with the field's name; what nsbox
//! provides itself (its /proc, /dev, /sys, capabilities, seccomp, user namespace) is noted and
//! ignored. docs/runtime.md lists every field. This module reads only the bundle; it creates
//! nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{Capability, LinuxNamespaceType, Mount, Spec};

use super::RuntimeError;
use crate::net::EgressPolicy;
use crate::profile::NetworkMode;
use crate::spec::ExecRequest;
use crate::units::{ByteSize, CpuQuota, Limit};

/// What `create` needs from a bundle.
#[derive(Debug)]
pub struct BundlePlan {
    pub request: ExecRequest,
    pub annotations: BTreeMap<String, String>,
    /// Fields accepted but not honoured (logged at `create`).
    pub ignored: Vec<String>,
    /// `process.terminal`: the process gets a pty, whose master goes to `--console-socket`.
    pub terminal: bool,
    /// `process.consoleSize` as (rows, columns).
    pub console_size: Option<(u16, u16)>,
    /// `linux.sysctl`: `net.*` keys only, as (path under /proc/sys, value), written in the
    /// sandbox's own network namespace from its user namespace ([`super::sysctl`]).
    pub sysctls: Vec<(String, String)>,
    /// `process.rlimits`, set on the sandbox's init ([`super::rlimit`]).
    pub rlimits: Vec<super::rlimit::Planned>,
    /// `linux.cgroupsPath` as given (checked at `create`, which knows `--systemd-cgroup`).
    pub cgroups_path: Option<String>,
}

/// `linux.sysctl` checked: only `net.*` keys, and only with a network namespace of the
/// sandbox's own (not the host's, not a pod's joined by path, whose owner is not the
/// sandbox's user namespace). Each becomes its path under /proc/sys.
fn sysctls(
    sysctl: &std::collections::HashMap<String, String>,
    own_netns: bool,
) -> Result<Vec<(String, String)>, RuntimeError> {
    let mut out = Vec::new();
    let mut keys: Vec<_> = sysctl.keys().collect();
    keys.sort();
    for key in keys {
        let field = format!("linux.sysctl.{key}");
        let well_formed = !key.is_empty()
            && key.split('.').all(|part| {
                !part.is_empty()
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            });
        if !well_formed {
            return Err(refuse(field, "not a sysctl name (dot-separated words)"));
        }
        if !key.starts_with("net.") {
            return Err(refuse(
                field,
                "only network sysctls (net.*) are supported: they are written in the sandbox's own network namespace; others would change the host — hint: remove it from the engine's sysctl settings",
            ));
        }
        if !own_netns {
            return Err(refuse(
                field,
                "a net.* sysctl needs a network namespace of the container's own; without one (the host's network, or a pod's joined by path) it would change a network nsbox does not own — hint: remove it, or give the container its own network namespace",
            ));
        }
        out.push((key.replace('.', "/"), sysctl[key].clone()));
    }
    Ok(out)
}

/// `process.consoleSize` as (rows, columns); sizes beyond a terminal's range are clamped.
fn console_size(process: &oci_spec::runtime::Process) -> Option<(u16, u16)> {
    let clamp = |n: u64| u16::try_from(n).unwrap_or(u16::MAX);
    process
        .console_size()
        .as_ref()
        .map(|b| (clamp(b.height()), clamp(b.width())))
        .filter(|&(rows, cols)| rows > 0 && cols > 0)
}

/// Mount destinations nsbox provides itself, with the types an engine uses for them.
const PROVIDED: &[(&str, &[&str])] = &[
    ("/proc", &["proc"]),
    ("/dev", &["tmpfs", "devtmpfs"]),
    ("/dev/pts", &["devpts"]),
    ("/dev/shm", &["tmpfs", "shm"]),
    ("/dev/mqueue", &["mqueue"]),
    ("/sys", &["sysfs"]),
    ("/sys/fs/cgroup", &["cgroup", "cgroup2"]),
];

fn refuse(field: impl Into<String>, reason: impl Into<String>) -> RuntimeError {
    RuntimeError::Refused {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The process of `exec --process FILE` (the runtime spec's `process` object) as a command for
/// the container's session. `user` is the session's; another uid:gid runs the command as that
/// user of the container (never with capabilities, as every process of it). CAP_SYS_ADMIN is
/// refused, naming the field. `terminal` and `consoleSize` become the command's
/// `tty` and `winsize`.
///
/// Its environment is process.json's `env` alone (runc's and crun's `exec`), with `HOME` from
/// the container's `/etc/passwd` for the process's uid when `env` has none (`rootfs`: the
/// container's root directory, when known).
pub fn exec_of(
    process: &oci_spec::runtime::Process,
    user: (u32, u32),
    rootfs: Option<&Path>,
) -> Result<crate::session::client::SessionExec, RuntimeError> {
    let refuse = |field: &str, reason: &str| RuntimeError::ProcessRefused {
        field: field.into(),
        reason: reason.into(),
    };
    let args = process.args().clone().unwrap_or_default();
    if args.is_empty() {
        return Err(refuse("args", "empty: nothing to run"));
    }
    let asked = (process.user().uid(), process.user().gid());
    if asked.0 >= crate::ids::IDS_IN_SANDBOX || asked.1 >= crate::ids::IDS_IN_SANDBOX {
        return Err(refuse(
            "user",
            &format!(
                "uid:gid {}:{} is outside the ids a container maps (0 to {})",
                asked.0,
                asked.1,
                crate::ids::IDS_IN_SANDBOX - 1
            ),
        ));
    }
    if process
        .capabilities()
        .as_ref()
        .and_then(|c| c.bounding().as_ref())
        .is_some_and(|b| b.contains(&Capability::SysAdmin))
    {
        return Err(refuse(
            "capabilities.bounding",
            "CAP_SYS_ADMIN (a privileged process) is refused: the workload keeps no capability",
        ));
    }
    let mut env: Vec<(String, String)> = process
        .env()
        .iter()
        .flatten()
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    if !env.iter().any(|(k, _)| k == "HOME") {
        let home = rootfs.and_then(|r| passwd_home(r, asked.0));
        env.push(("HOME".into(), home.unwrap_or_else(|| "/".into())));
    }
    Ok(crate::session::client::SessionExec {
        argv: args.into_iter().map(Into::into).collect(),
        env,
        replace_env: true,
        workdir: Some(process.cwd().clone()),
        stdin: true,
        tty: process.terminal().unwrap_or(false),
        winsize: console_size(process),
        user: (asked != user).then_some(asked),
        ..Default::default()
    })
}

/// Reads `bundle/config.json`.
pub fn load(bundle: &Path) -> Result<Spec, RuntimeError> {
    let path = bundle.join("config.json");
    Spec::load(&path).map_err(|e| RuntimeError::Bundle {
        path,
        reason: e.to_string(),
    })
}

/// The home directory of `uid` in the root filesystem's /etc/passwd, if it names one: what runc
/// and crun set HOME to when the spec's env has none (and "/" without). The file is opened with
/// the root as "/" (openat2 RESOLVE_IN_ROOT), so a symlink in the bundle's root never reads a
/// host file.
fn passwd_home(rootfs: &Path, uid: u32) -> Option<String> {
    use rustix::fs::{self as rfs, Mode, OFlags, ResolveFlags};
    let root = rfs::open(
        rootfs,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let fd = rfs::openat2(
        &root,
        "etc/passwd",
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )
    .ok()?;
    let file = std::fs::File::from(fd);
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::Read::take(file, 1 << 20), &mut text).ok()?;
    text.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() >= 7 && fields[2].parse() == Ok(uid) && !fields[5].is_empty())
            .then(|| fields[5].to_string())
    })
}

/// The annotation that turns nsbox's filtered network on for a pod: what it may reach, as
/// `--allow` patterns separated by commas or white space.
pub const NET_ALLOW: &str = "io.nsbox.net.allow";
/// What it may never reach (`--deny` patterns).
pub const NET_DENY: &str = "io.nsbox.net.deny";
/// containerd's CRI: "sandbox" for a pod's sandbox container, "container" for the others.
const CRI_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// Where its resolver sends the names it allows (`--dns-upstream`; default: the host's
/// /etc/resolv.conf).
pub const NET_DNS_UPSTREAM: &str = "io.nsbox.net.dns-upstream";

/// The `io.nsbox.net.*` annotations: with any of them, the container's network namespace (its
/// own, or the pod's it joins by path) gets nsbox's ruleset, resolver and proxy for the
/// container's life ([`crate::net::prepare_filtered_namespace`] with `pod`). Each annotation
/// is checked here, so that a bad one is refused by name before anything is made.
fn pod_egress(spec: &Spec, req: &mut ExecRequest, has_netns: bool) -> Result<(), RuntimeError> {
    let notes = spec.annotations().clone().unwrap_or_default();
    let list = |key: &str| -> Vec<String> {
        notes.get(key).map_or_else(Vec::new, |v| {
            v.split(|c: char| c == ',' || c.is_whitespace())
                .filter(|p| !p.is_empty())
                .map(str::to_string)
                .collect()
        })
    };
    if ![NET_ALLOW, NET_DENY, NET_DNS_UPSTREAM]
        .iter()
        .any(|k| notes.contains_key(*k))
    {
        return Ok(());
    }
    // containerd's CRI passes pod annotations to every container of the pod: the pod's
    // sandbox container filters the namespace they all join; the others only join it.
    if notes.get(CRI_CONTAINER_TYPE).map(String::as_str) == Some("container") {
        return Ok(());
    }
    let field = |key: &str| format!("annotations.{key}");
    if !has_netns {
        return Err(refuse(
            field(NET_ALLOW),
            "nsbox's filtered network needs a network namespace: the container runs in the host's — hint: give the container (or its pod) a network namespace, or remove the io.nsbox.net.* annotations",
        ));
    }
    let (allow, deny, dns) = (list(NET_ALLOW), list(NET_DENY), list(NET_DNS_UPSTREAM));
    for (key, result) in [
        (NET_ALLOW, EgressPolicy::parse(&allow, &[], &[])),
        (NET_DENY, EgressPolicy::parse(&[], &deny, &[])),
        (NET_DNS_UPSTREAM, EgressPolicy::parse(&[], &[], &dns)),
    ] {
        result.map_err(|e| refuse(field(key), e.to_string()))?;
    }
    req.network = Some(NetworkMode::Filtered);
    req.allow = allow;
    req.deny = deny;
    req.dns_upstream = dns;
    req.pod_egress = true;
    Ok(())
}

/// Maps `spec` (of the bundle in `bundle`) onto a request, or says which field nsbox refuses.
pub fn plan(spec: &Spec, bundle: &Path) -> Result<BundlePlan, RuntimeError> {
    let mut req = ExecRequest::default();
    let mut ignored = Vec::new();

    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| refuse("process", "missing: nothing to run"))?;
    let args = process.args().clone().unwrap_or_default();
    if args.is_empty() {
        return Err(refuse("process.args", "empty: nothing to run"));
    }
    req.command = args.into_iter().map(Into::into).collect();
    req.env = process.env().clone().unwrap_or_default();
    let root_dir = spec.root().as_ref().map(|r| {
        if r.path().is_absolute() {
            r.path().clone()
        } else {
            bundle.join(r.path())
        }
    });
    if !req.env.iter().any(|e| e.starts_with("HOME=")) {
        let uid = process.user().uid();
        let home = root_dir.as_deref().and_then(|r| passwd_home(r, uid));
        req.env
            .push(format!("HOME={}", home.as_deref().unwrap_or("/")));
    }
    req.workdir = Some(process.cwd().clone());
    let user = process.user();
    req.user = Some((user.uid(), user.gid()));
    if let Some(caps) = process.capabilities() {
        if caps
            .bounding()
            .as_ref()
            .is_some_and(|b| b.contains(&Capability::SysAdmin))
        {
            return Err(refuse(
                "process.capabilities.bounding",
                "CAP_SYS_ADMIN (a privileged container) is refused: the workload keeps no capability",
            ));
        }
        ignored.push("process.capabilities (the workload has none)".into());
    }
    let rlimits = super::rlimit::plan(process.rlimits().as_deref().unwrap_or_default())?;
    if process.apparmor_profile().is_some() || process.selinux_label().is_some() {
        ignored.push("process.apparmorProfile/selinuxLabel".into());
    }

    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| refuse("root", "missing: nsbox needs the bundle's root filesystem"))?;
    let root_path = if root.path().is_absolute() {
        root.path().clone()
    } else {
        bundle.join(root.path())
    };
    req.rootfs = Some(root_path);
    req.writable_root = !root.readonly().unwrap_or(false);
    req.hostname = spec.hostname().clone().filter(|h| !h.is_empty());

    for (i, mount) in spec.mounts().iter().flatten().enumerate() {
        match mount_flag(i, mount)? {
            MountPlan::Provided => {}
            MountPlan::Bind(flag) => req.mounts.push(flag),
            MountPlan::Ignored(what) => ignored.push(what),
        }
    }

    if spec.hooks().is_some() {
        return Err(refuse(
            "hooks",
            "hooks run on the host as root; nsbox runs none",
        ));
    }

    let linux = spec.linux().as_ref();
    let namespaces = linux
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    for (i, ns) in namespaces.iter().enumerate() {
        match ns.path() {
            // A pod's network namespace (its sandbox container's, set up by the CNI): the
            // container joins it, and keeps nsbox's own user, pid, mount, ipc and uts ones.
            Some(path) if ns.typ() == LinuxNamespaceType::Network => {
                req.net_namespace = Some(path.clone());
            }
            Some(path) if ns.typ() == LinuxNamespaceType::Ipc => {
                req.ipc_namespace = Some(path.clone());
            }
            Some(path) if ns.typ() == LinuxNamespaceType::Uts => {
                req.uts_namespace = Some(path.clone());
            }
            Some(_) => {
                return Err(refuse(
                    format!("linux.namespaces[{i}].path"),
                    "joining an existing namespace other than a pod's network, ipc or uts one is not supported yet",
                ))
            }
            None => {}
        }
    }
    let has = |t: LinuxNamespaceType| namespaces.iter().any(|n| n.typ() == t);
    if !has(LinuxNamespaceType::Pid) {
        return Err(refuse(
            "linux.namespaces",
            "no pid namespace: the host's PID namespace is refused",
        ));
    }
    if !has(LinuxNamespaceType::Mount) {
        return Err(refuse(
            "linux.namespaces",
            "no mount namespace: the host's mount namespace is refused",
        ));
    }
    // No network namespace in the spec: the host's network, as asked (podman --network host).
    req.network = Some(if has(LinuxNamespaceType::Network) {
        NetworkMode::None
    } else {
        NetworkMode::Host
    });
    pod_egress(spec, &mut req, has(LinuxNamespaceType::Network))?;
    let mut sysctls_planned = Vec::new();
    let mut cgroups_path = None;
    if let Some(linux) = linux {
        if linux.devices().as_ref().is_some_and(|d| !d.is_empty()) {
            return Err(refuse(
                "linux.devices",
                "host devices are refused; the sandbox has nsbox's minimal /dev",
            ));
        }
        if let Some(sysctl) = linux.sysctl() {
            let own_netns = has(LinuxNamespaceType::Network) && req.net_namespace.is_none();
            sysctls_planned = sysctls(sysctl, own_netns)?;
        }
        if linux.uid_mappings().is_some() || linux.gid_mappings().is_some() {
            ignored.push("linux.uidMappings/gidMappings (nsbox maps its own range)".into());
        }
        if linux.seccomp().is_some() {
            ignored.push("linux.seccomp (nsbox's own filter applies)".into());
        }
        cgroups_path = linux
            .cgroups_path()
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned())
            .filter(|p| !p.is_empty());
        if let Some(resources) = linux.resources() {
            if let Some(limit) = resources.memory().as_ref().and_then(|m| m.limit()) {
                if limit > 0 {
                    req.memory = Some(Limit::Value(ByteSize(limit.unsigned_abs())));
                }
            }
            if let Some(cpu) = resources.cpu() {
                if let (Some(quota), Some(period)) = (cpu.quota(), cpu.period()) {
                    if quota > 0 && period > 0 {
                        let millis = quota.unsigned_abs().saturating_mul(1000) / period;
                        req.cpus = Some(Limit::Value(CpuQuota(millis.max(1))));
                    }
                }
            }
            if let Some(pids) = resources.pids() {
                if pids.limit() > 0 {
                    req.pids = Some(Limit::Value(pids.limit().unsigned_abs()));
                }
            }
        }
    }
    if !has(LinuxNamespaceType::User) {
        ignored.push("linux.namespaces without user (nsbox adds one)".into());
    }
    // The engine's limits, not the profile's: unlimited unless the spec sets them.
    req.memory.get_or_insert(Limit::Unlimited);
    req.cpus.get_or_insert(Limit::Unlimited);
    req.pids.get_or_insert(Limit::Unlimited);
    req.max_output = Some(Limit::Unlimited);

    let annotations = spec
        .annotations()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    Ok(BundlePlan {
        request: req,
        annotations,
        ignored,
        terminal: process.terminal().unwrap_or(false),
        console_size: console_size(process),
        sysctls: sysctls_planned,
        rlimits,
        cgroups_path,
    })
}

enum MountPlan {
    /// nsbox mounts its own there.
    Provided,
    /// A `--mount SRC:DST:ro|rw` value.
    Bind(String),
    Ignored(String),
}

fn mount_flag(i: usize, mount: &Mount) -> Result<MountPlan, RuntimeError> {
    let dst = mount.destination();
    let typ = mount.typ().clone().unwrap_or_default();
    let options = mount.options().clone().unwrap_or_default();
    let is_bind = typ == "bind" || options.iter().any(|o| o == "bind" || o == "rbind");
    if !is_bind {
        if let Some((_, types)) = PROVIDED.iter().find(|(d, _)| Path::new(d) == dst) {
            if types.contains(&typ.as_str()) {
                return Ok(MountPlan::Provided);
            }
        }
        if typ == "tmpfs" {
            // nsbox's writable places are its own /tmp, /sandbox and (root.readonly false)
            // the root's overlay.
            return Ok(MountPlan::Ignored(format!(
                "mounts[{i}] (tmpfs at {})",
                dst.display()
            )));
        }
        return Err(refuse(
            format!("mounts[{i}].type"),
            format!("a '{typ}' mount at {} is not supported", dst.display()),
        ));
    }
    if PROVIDED.iter().any(|(d, _)| Path::new(d) == dst) {
        // podman binds its own shm directory at /dev/shm: the sandbox has its own there.
        return Ok(MountPlan::Ignored(format!(
            "mounts[{i}] (a bind at {}, which the sandbox provides itself)",
            dst.display()
        )));
    }
    let source: PathBuf = mount
        .source()
        .clone()
        .ok_or_else(|| refuse(format!("mounts[{i}].source"), "a bind mount needs a source"))?;
    let mode = if options.iter().any(|o| o == "ro") {
        "ro"
    } else {
        "rw"
    };
    Ok(MountPlan::Bind(format!(
        "{}:{}:{mode}",
        source.display(),
        dst.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn home_comes_from_the_roots_passwd_and_never_from_the_hosts() {
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("rootfs/etc");
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(
            etc.join("passwd"),
            "root:x:0:0:root:/root:/bin/sh\nu:x:1000:1000::/home/u:/bin/sh\nbad:line\n",
        )
        .unwrap();
        let root = dir.path().join("rootfs");
        assert_eq!(passwd_home(&root, 0).as_deref(), Some("/root"));
        assert_eq!(passwd_home(&root, 1000).as_deref(), Some("/home/u"));
        assert_eq!(passwd_home(&root, 7), None);
        assert_eq!(passwd_home(&dir.path().join("missing"), 0), None);
        // A symlink to the host's /etc/passwd resolves inside the root, where nothing is.
        let linked = dir.path().join("linked");
        std::fs::create_dir_all(linked.join("etc")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", linked.join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("/../../../../etc", linked.join("e")).unwrap();
        assert_eq!(passwd_home(&linked, 0), None);
    }

    #[test]
    fn a_spec_without_home_gets_runcs_home_and_one_with_it_keeps_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let plan_env = |json: &str| plan(&spec(json), dir.path()).unwrap().request.env;
        assert_eq!(plan_env(BASE), ["PATH=/bin", "HOME=/"]);
        let with_home = BASE.replace(r#""env": ["PATH=/bin"]"#, r#""env": ["HOME=/x"]"#);
        assert_eq!(plan_env(&with_home), ["HOME=/x"]);
    }

    fn spec(json: &str) -> Spec {
        serde_json::from_str(json).expect("test spec")
    }

    const BASE: &str = r#"{
        "ociVersion": "1.0.2",
        "process": {"args": ["/bin/echo", "hi"], "cwd": "/", "user": {"uid": 0, "gid": 0},
                    "env": ["PATH=/bin"]},
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "box",
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
                   {"destination": "/run", "type": "tmpfs", "source": "tmpfs"}],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "network"}],
                  "resources": {"memory": {"limit": 67108864}, "pids": {"limit": 50},
                                "cpu": {"quota": 50000, "period": 100000}}}
    }"#;

    fn with(patch: impl FnOnce(&mut serde_json::Value)) -> Spec {
        let mut v: serde_json::Value = serde_json::from_str(BASE).expect("base");
        patch(&mut v);
        spec(&v.to_string())
    }

    fn refused_field(s: &Spec) -> String {
        match plan(s, Path::new("/b")) {
            Err(RuntimeError::Refused { field, .. }) => field,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_plain_spec_maps_onto_flags() {
        let p = plan(&spec(BASE), Path::new("/b")).expect("plan");
        let r = &p.request;
        assert_eq!(r.command, vec!["/bin/echo", "hi"]);
        assert_eq!(r.rootfs.as_deref(), Some(Path::new("/b/rootfs")));
        assert!(!r.writable_root);
        assert_eq!(r.hostname.as_deref(), Some("box"));
        assert_eq!(r.user, Some((0, 0)));
        assert_eq!(r.network, Some(NetworkMode::None));
        assert!(matches!(r.memory, Some(Limit::Value(ByteSize(67108864)))));
        assert!(matches!(r.cpus, Some(Limit::Value(CpuQuota(500)))));
        assert!(matches!(r.pids, Some(Limit::Value(50))));
        assert!(r.mounts.is_empty(), "proc is nsbox's own, tmpfs ignored");
        assert!(p.ignored.iter().any(|i| i.contains("tmpfs at /run")));
    }

    #[test]
    fn the_floor_refuses_naming_the_field() {
        let privileged = with(|v| {
            v["process"]["capabilities"] = serde_json::json!({"bounding": ["CAP_SYS_ADMIN"]})
        });
        assert_eq!(refused_field(&privileged), "process.capabilities.bounding");
        let host_pid = with(|v| {
            v["linux"]["namespaces"] = serde_json::json!([{"type": "mount"}]);
        });
        assert_eq!(refused_field(&host_pid), "linux.namespaces");
        let join = with(|v| {
            v["linux"]["namespaces"][1] =
                serde_json::json!({"type": "mount", "path": "/proc/1/ns/mnt"});
        });
        assert_eq!(refused_field(&join), "linux.namespaces[1].path");
        let devices = with(|v| {
            v["linux"]["devices"] =
                serde_json::json!([{"path": "/dev/sda", "type": "b", "major": 8, "minor": 0}]);
        });
        assert_eq!(refused_field(&devices), "linux.devices");
        let sysfs_rw = with(|v| {
            v["mounts"][1] =
                serde_json::json!({"destination": "/host", "type": "sysfs", "source": "sysfs"});
        });
        assert_eq!(refused_field(&sysfs_rw), "mounts[1].type");
    }

    #[test]
    fn a_terminal_and_its_size_are_planned() {
        let plain = plan(&spec(BASE), Path::new("/b")).expect("plan");
        assert!(!plain.terminal);
        assert_eq!(plain.console_size, None);
        let tty = with(|v| {
            v["process"]["terminal"] = serde_json::json!(true);
            v["process"]["consoleSize"] = serde_json::json!({"height": 40, "width": 132});
        });
        let p = plan(&tty, Path::new("/b")).expect("plan");
        assert!(p.terminal);
        assert_eq!(p.console_size, Some((40, 132)));
        let huge = with(|v| {
            v["process"]["consoleSize"] = serde_json::json!({"height": 70000, "width": 0});
        });
        let p = plan(&huge, Path::new("/b")).expect("plan");
        assert_eq!(p.console_size, None, "a zero width is no size");
        let process: oci_spec::runtime::Process = serde_json::from_value(serde_json::json!({
            "args": ["/bin/sh"], "cwd": "/", "user": {"uid": 0, "gid": 0},
            "terminal": true, "consoleSize": {"height": 70000, "width": 80}
        }))
        .expect("process");
        let ex = exec_of(&process, (0, 0), None).expect("exec");
        assert!(ex.tty);
        // process.json's env is the whole environment (none given: only runc's HOME).
        assert!(ex.replace_env);
        assert_eq!(ex.env, [("HOME".to_string(), "/".to_string())]);
        assert_eq!(ex.winsize, Some((u16::MAX, 80)), "clamped");
    }

    #[test]
    fn net_annotations_filter_the_pods_network_and_bad_ones_are_refused_by_name() {
        let annotated = with(|v| {
            v["annotations"] = serde_json::json!({
                "io.nsbox.net.allow": "web.allowed.example, *.cdn.example:443\n203.0.113.0/24",
                "io.nsbox.net.deny": "evil.example",
                "io.nsbox.net.dns-upstream": "192.0.2.53"
            });
        });
        let p = plan(&annotated, Path::new("/b")).expect("plan");
        assert_eq!(p.request.network, Some(NetworkMode::Filtered));
        assert!(p.request.pod_egress);
        assert_eq!(
            p.request.allow,
            ["web.allowed.example", "*.cdn.example:443", "203.0.113.0/24"]
        );
        assert_eq!(p.request.deny, ["evil.example"]);
        assert_eq!(p.request.dns_upstream, ["192.0.2.53"]);
        // Joined by path: still filtered (the pod's namespace).
        let joined = with(|v| {
            v["annotations"] = serde_json::json!({"io.nsbox.net.allow": "a.example"});
            v["linux"]["namespaces"][2] =
                serde_json::json!({"type": "network", "path": "/run/netns/pod-1"});
        });
        let p = plan(&joined, Path::new("/b")).expect("plan");
        assert_eq!(p.request.network, Some(NetworkMode::Filtered));
        assert_eq!(
            p.request.net_namespace.as_deref(),
            Some(Path::new("/run/netns/pod-1"))
        );
        for (key, value) in [
            ("io.nsbox.net.allow", "http://x.example/"),
            ("io.nsbox.net.deny", "a.example:99999"),
            ("io.nsbox.net.dns-upstream", "not-an-address"),
        ] {
            let bad = with(|v| v["annotations"] = serde_json::json!({ key: value }));
            let e = plan(&bad, Path::new("/b")).expect_err(value).to_string();
            assert!(e.contains(&format!("annotations.{key}")), "{key}: {e}");
        }
        let host = with(|v| {
            v["annotations"] = serde_json::json!({"io.nsbox.net.allow": "a.example"});
            v["linux"]["namespaces"] = serde_json::json!([{"type": "pid"}, {"type": "mount"}]);
        });
        let e = plan(&host, Path::new("/b"))
            .expect_err("host network")
            .to_string();
        assert!(e.contains("needs a network namespace"), "{e}");
        // The pod's other containers (containerd passes them the pod's annotations too) join
        // the namespace the sandbox container filters.
        let member = with(|v| {
            v["annotations"] = serde_json::json!({"io.nsbox.net.allow": "a.example",
                "io.kubernetes.cri.container-type": "container"});
        });
        assert_eq!(
            plan(&member, Path::new("/b")).unwrap().request.network,
            Some(NetworkMode::None)
        );
        // Without them, nothing changes.
        assert_eq!(
            plan(&with(|_| {}), Path::new("/b"))
                .unwrap()
                .request
                .network,
            Some(NetworkMode::None)
        );
    }

    #[test]
    fn net_sysctls_are_planned_and_others_refused_naming_the_key() {
        let ping = with(|v| {
            v["linux"]["sysctl"] = serde_json::json!({"net.ipv4.ping_group_range": "0 0"});
        });
        let p = plan(&ping, Path::new("/b")).expect("plan");
        assert_eq!(
            p.sysctls,
            vec![("net/ipv4/ping_group_range".to_string(), "0 0".to_string())]
        );
        let kernel = with(|v| v["linux"]["sysctl"] = serde_json::json!({"kernel.shmmax": "1"}));
        assert_eq!(refused_field(&kernel), "linux.sysctl.kernel.shmmax");
        let escape = with(|v| {
            v["linux"]["sysctl"] = serde_json::json!({"net.ipv4/../../kernel.x": "1"});
        });
        assert_eq!(
            refused_field(&escape),
            "linux.sysctl.net.ipv4/../../kernel.x"
        );
        let dotdot = with(|v| v["linux"]["sysctl"] = serde_json::json!({"net..ipv4": "1"}));
        assert_eq!(refused_field(&dotdot), "linux.sysctl.net..ipv4");
        let host_net = with(|v| {
            v["linux"]["namespaces"] = serde_json::json!([{"type": "pid"}, {"type": "mount"}]);
            v["linux"]["sysctl"] = serde_json::json!({"net.ipv4.ip_forward": "1"});
        });
        assert_eq!(refused_field(&host_net), "linux.sysctl.net.ipv4.ip_forward");
        let pod_net = with(|v| {
            v["linux"]["namespaces"][2] =
                serde_json::json!({"type": "network", "path": "/run/netns/pod-1"});
            v["linux"]["sysctl"] = serde_json::json!({"net.ipv4.ip_forward": "1"});
        });
        assert_eq!(refused_field(&pod_net), "linux.sysctl.net.ipv4.ip_forward");
    }

    #[test]
    fn a_bind_onto_a_place_the_sandbox_provides_is_ignored() {
        let shm = with(|v| {
            v["mounts"][1] = serde_json::json!({"destination": "/dev/shm", "type": "bind",
                "source": "/var/lib/containers/x/userdata/shm", "options": ["rbind"]});
        });
        let p = plan(&shm, Path::new("/b")).expect("plan");
        assert!(p.request.mounts.is_empty());
        assert!(
            p.ignored.iter().any(|i| i.contains("/dev/shm")),
            "{:?}",
            p.ignored
        );
    }

    #[test]
    fn a_network_namespace_path_is_joined() {
        let s = with(|v| {
            v["linux"]["namespaces"][2] =
                serde_json::json!({"type": "network", "path": "/run/netns/pod-1"});
        });
        let p = plan(&s, Path::new("/b")).expect("plan");
        assert_eq!(p.request.network, Some(NetworkMode::None));
        assert_eq!(
            p.request.net_namespace.as_deref(),
            Some(std::path::Path::new("/run/netns/pod-1"))
        );
    }

    #[test]
    fn bind_mounts_keep_their_mode_and_no_netns_means_the_host_network() {
        let s = with(|v| {
            v["mounts"][1] = serde_json::json!({"destination": "/data", "type": "bind",
                "source": "/srv/data", "options": ["rbind", "ro"]});
            v["linux"]["namespaces"] = serde_json::json!([{"type": "pid"}, {"type": "mount"}]);
        });
        let p = plan(&s, Path::new("/b")).expect("plan");
        assert_eq!(p.request.mounts, vec!["/srv/data:/data:ro"]);
        assert_eq!(p.request.network, Some(NetworkMode::Host));
    }
}
