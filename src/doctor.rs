//! Host checks for `nsbox doctor`: each one tries the real thing where that is cheap (a
//! throw-away child in new namespaces, an overlay mount in a private mount namespace, a
//! cgroup with the default limits, a trial sandbox), says what works and what to do when it
//! does not. Creates nothing that outlives the check.

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::time::Instant;

use serde::Serialize;

use crate::cgroup::{CgroupLayout, CgroupLimits, Controller, Placement, SandboxCgroup};
use crate::profile::Profile;
use crate::seccomp::SeccompPolicy;
use crate::spec::{ExecRequest, SandboxSpec};
use crate::sys;

/// The verdict of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// Works, with a caveat; `nsbox exec` still works.
    Warn,
    /// `nsbox exec` will not work until this is fixed.
    Fail,
}

/// One check: what was looked at, the verdict, and what to do.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Check {
    fn ok(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            name,
            status: Status::Ok,
            detail: detail.into(),
            hint: None,
        }
    }
    fn warn(name: &'static str, detail: impl Into<String>, hint: impl Into<String>) -> Check {
        Check {
            name,
            status: Status::Warn,
            detail: detail.into(),
            hint: Some(hint.into()),
        }
    }
    fn fail(name: &'static str, detail: impl Into<String>, hint: impl Into<String>) -> Check {
        Check {
            name,
            status: Status::Fail,
            detail: detail.into(),
            hint: Some(hint.into()),
        }
    }
}

/// Runs every check, in dependency order. The trial sandbox runs only when the checks before it
/// passed. The caller must be single-threaded (namespaces are tried with a real clone).
pub fn run_checks() -> Vec<Check> {
    let root = rustix::process::geteuid().is_root();
    let mut checks = vec![check_root(), check_kernel(), check_user_namespaces()];
    checks.push(check_namespaces());
    if root {
        checks.push(check_overlay());
        checks.extend(check_cgroups());
    } else {
        checks.push(Check::warn(
            "overlayfs",
            "not checked",
            "needs root: run `sudo nsbox doctor`",
        ));
        checks.push(Check::warn(
            "cgroups",
            "not checked",
            "needs root: run `sudo nsbox doctor`",
        ));
    }
    checks.push(check_seccomp());
    checks.push(check_filtered_network());
    if checks.iter().all(|c| c.status != Status::Fail) {
        checks.push(check_trial());
    }
    checks
}

fn check_root() -> Check {
    if rustix::process::geteuid().is_root() {
        Check::ok("root", "running as root")
    } else {
        Check::fail(
            "root",
            "not running as root",
            "nsbox needs root for now (rootless operation is planned): run it with sudo",
        )
    }
}

/// (major, minor) of the running kernel.
pub fn kernel_version() -> Option<(u32, u32, String)> {
    let uname = rustix::system::uname();
    let release = uname.release().to_string_lossy().into_owned();
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor, release))
}

fn check_kernel() -> Check {
    match kernel_version() {
        Some((major, minor, release)) if (major, minor) >= (5, 15) => {
            Check::ok("kernel", format!("Linux {release} (5.15 or newer)"))
        }
        Some((major, minor, release)) if (major, minor) >= (5, 7) => Check::warn(
            "kernel",
            format!("Linux {release} is older than 5.15, the oldest nsbox is tested on"),
            "upgrade the kernel if something fails",
        ),
        Some((_, _, release)) => Check::fail(
            "kernel",
            format!("Linux {release} lacks clone3 with CLONE_INTO_CGROUP and openat2"),
            "nsbox needs Linux 5.7 or newer (5.15+ recommended)",
        ),
        None => Check::warn(
            "kernel",
            "cannot read the kernel version",
            "check `uname -r`",
        ),
    }
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

fn check_user_namespaces() -> Check {
    if read_trimmed("/proc/sys/user/max_user_namespaces").as_deref() == Some("0") {
        return Check::fail(
            "user namespaces",
            "user.max_user_namespaces is 0",
            "allow them: sysctl -w user.max_user_namespaces=15000 (and persist it in /etc/sysctl.d)",
        );
    }
    Check::ok("user namespaces", "allowed (user.max_user_namespaces > 0)")
}

/// Runs `f` in a child created with `flags`; the child's exit code is `f`'s result.
fn in_child(flags: u64, f: impl FnOnce() -> i32) -> std::io::Result<i32> {
    match sys::process::clone3_fork(flags, None)? {
        sys::process::Forked::Child => sys::process::exit_now(f()),
        sys::process::Forked::Parent { pidfd, .. } => {
            let status = rustix::process::waitid(
                rustix::process::WaitId::PidFd(std::os::fd::AsFd::as_fd(&pidfd)),
                rustix::process::WaitIdOptions::EXITED,
            )
            .map_err(|e| std::io::Error::from_raw_os_error(e.raw_os_error()))?;
            Ok(status.and_then(|s| s.exit_status()).unwrap_or(-1))
        }
    }
}

fn check_namespaces() -> Check {
    use sys::process::flags::*;
    let flags = NEWUSER | NEWNS | NEWPID | NEWNET | NEWUTS | NEWIPC | NEWCGROUP;
    match in_child(flags, || 0) {
        Ok(0) => Check::ok("namespaces", "user, mount, pid, net, uts, ipc and cgroup namespaces can be created"),
        Ok(code) => Check::fail("namespaces", format!("a child in new namespaces exited with {code}"), "run `nsbox doctor -vv` and report this"),
        Err(e) => Check::fail(
            "namespaces",
            format!("cannot create namespaces: {e}"),
            "user namespaces may be blocked by policy (AppArmor's apparmor_restrict_unprivileged_userns, a container runtime's seccomp profile, or sysctl kernel.unprivileged_userns_clone); run nsbox on the host or in a privileged container",
        ),
    }
}

fn check_overlay() -> Check {
    use sys::process::flags::NEWNS;
    let listed = std::fs::read_to_string("/proc/filesystems")
        .map(|s| s.lines().any(|l| l.trim_end().ends_with("overlay")))
        .unwrap_or(false);
    // Try a real overlay mount in a private mount namespace (this also autoloads the module).
    let tried = in_child(NEWNS, || {
        use rustix::mount::{mount, mount_change, MountFlags, MountPropagationFlags};
        let run = || -> Result<(), rustix::io::Errno> {
            mount_change(
                "/",
                MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
            )?;
            mount(
                "nsbox-doctor",
                "/tmp",
                "tmpfs",
                MountFlags::empty(),
                c"size=1m",
            )?;
            for d in ["/tmp/l", "/tmp/u", "/tmp/w", "/tmp/m"] {
                rustix::fs::mkdir(d, rustix::fs::Mode::from_raw_mode(0o755))?;
            }
            mount(
                "overlay",
                "/tmp/m",
                "overlay",
                MountFlags::empty(),
                c"lowerdir=/tmp/l,upperdir=/tmp/u,workdir=/tmp/w",
            )
        };
        match run() {
            Ok(()) => 0,
            Err(e) => e.raw_os_error(),
        }
    });
    match tried {
        Ok(0) => Check::ok("overlayfs", "overlay mounts work"),
        Ok(errno) => Check::fail(
            "overlayfs",
            format!(
                "an overlay mount failed: {}{}",
                std::io::Error::from_raw_os_error(errno),
                if listed {
                    ""
                } else {
                    " (overlay is not in /proc/filesystems)"
                }
            ),
            "load the module (`modprobe overlay`) or use a kernel with CONFIG_OVERLAY_FS",
        ),
        Err(e) => Check::fail(
            "overlayfs",
            format!("cannot test overlay: {e}"),
            "see the namespaces check",
        ),
    }
}

fn check_cgroups() -> Vec<Check> {
    let layout = match CgroupLayout::detect() {
        Ok(l) => l,
        Err(e) => {
            return vec![Check::fail(
                "cgroups",
                e.to_string(),
                "mount cgroup2 at /sys/fs/cgroup (most distributions do this at boot)",
            )]
        }
    };
    let mut checks = Vec::new();
    let mut placements = Vec::new();
    for c in Controller::ALL {
        let where_ = match layout.placement(c) {
            Placement::V2 { enabled: true, .. } => "v2".to_string(),
            Placement::V2 { enabled: false, .. } => {
                "v2 (not enabled for child cgroups)".to_string()
            }
            Placement::V1 { path } => format!("v1 at {}", path.display()),
            Placement::Unavailable { .. } => "unavailable".to_string(),
        };
        placements.push(format!("{}: {where_}", c.name()));
    }
    checks.push(Check::ok(
        "cgroup layout",
        format!("{} — {}", layout.kind(), placements.join(", ")),
    ));
    // The definitive test: a cgroup with the default profile's limits, removed at once.
    let limits = match Profile::default_profile() {
        Ok(p) => CgroupLimits {
            memory_bytes: p.memory.map(|m| m.bytes()),
            cpu_millis: p.cpus.map(|c| c.0),
            pids: p.pids,
        },
        Err(_) => CgroupLimits::default(),
    };
    let id = format!("doctor{}", crate::ids::new_id());
    match SandboxCgroup::create(&layout, &id, &limits) {
        Ok(cgroup) => {
            let warnings = cgroup.warnings().to_vec();
            let removed = cgroup.remove();
            checks.push(if let Err(e) = removed {
                Check::warn(
                    "cgroup limits",
                    format!("created, but removal failed: {e}"),
                    "run `nsbox prune`",
                )
            } else if warnings.is_empty() {
                Check::ok(
                    "cgroup limits",
                    "memory, cpu and pids limits can be set (swap off)",
                )
            } else {
                Check::warn(
                    "cgroup limits",
                    warnings.join("; "),
                    "limits still apply; see the caveat above",
                )
            });
        }
        Err(e) => checks.push(Check::fail(
            "cgroup limits",
            e.to_string(),
            "fix the controller named above, or run with --memory none / --cpus none / --pids none",
        )),
    }
    checks
}

fn check_seccomp() -> Check {
    let actions = read_trimmed("/proc/sys/kernel/seccomp/actions_avail").unwrap_or_default();
    if !actions.contains("errno") || !actions.contains("kill_process") {
        return Check::fail(
            "seccomp",
            format!("seccomp filter actions available: '{actions}'"),
            "use a kernel built with CONFIG_SECCOMP_FILTER",
        );
    }
    match SeccompPolicy::builtin("default").and_then(|p| p.compile()) {
        Ok(program) => Check::ok(
            "seccomp",
            format!(
                "filters supported; the default policy compiles to {} instructions",
                program.len()
            ),
        ),
        Err(e) => Check::fail(
            "seccomp",
            format!("the default policy does not compile: {e}"),
            "report this as a bug",
        ),
    }
}

/// `--net filtered` for real, as root: a throw-away network namespace gets the routes,
/// addresses, sockets and nftables rules a filtered sandbox gets. A failure is a warning:
/// `--net none` and `--net host` do not need any of it.
fn check_filtered_network() -> Check {
    if !rustix::process::geteuid().is_root() {
        let loaded = std::path::Path::new("/sys/module/nf_tables").exists();
        return if loaded {
            Check::warn(
                "filtered network",
                "nf_tables is loaded; the rest is not checked",
                "needs root: run `sudo nsbox doctor`",
            )
        } else {
            Check::warn(
                "filtered network",
                "the nf_tables module is not loaded; --net none and --net host do not need it",
                "`modprobe nf_tables` before using --net filtered",
            )
        };
    }
    let policy = crate::net::EgressPolicy {
        // Given, so the check does not depend on the host's resolv.conf (checked below).
        dns_upstream: vec![std::net::SocketAddr::from(([192, 0, 2, 53], 53))],
        ..Default::default()
    };
    let prepared = crate::net::create_isolated_namespace()
        .and_then(|ns| crate::net::prepare_filtered_namespace(ns.as_fd(), &policy, false));
    if let Err(e) = prepared {
        return Check::warn(
            "filtered network",
            format!("--net filtered cannot work here: {e}"),
            "load nf_tables, nft_redir, nft_reject_inet and nf_nat (`modprobe` them), or use --net none / host",
        );
    }
    let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    if crate::net::policy::resolv_conf_nameservers(&resolv).is_empty() {
        return Check::warn(
            "filtered network",
            "works, but /etc/resolv.conf lists no nameserver to use upstream",
            "give `--dns-upstream ADDR` (or [network] dns_upstream in a profile) with --net filtered",
        );
    }
    Check::ok(
        "filtered network",
        "routes, nftables rules, resolver and proxy sockets set up in a test namespace",
    )
}

fn check_trial() -> Check {
    let profile = match Profile::default_profile() {
        Ok(p) => p,
        Err(e) => return Check::fail("trial sandbox", e.to_string(), "report this as a bug"),
    };
    let request = ExecRequest {
        command: vec!["/bin/true".into()],
        ..Default::default()
    };
    let spec = match SandboxSpec::build(request, &profile, &BTreeMap::new()) {
        Ok(s) => s,
        Err(e) => return Check::fail("trial sandbox", e.to_string(), "report this as a bug"),
    };
    let started = Instant::now();
    match crate::sandbox::run(&spec, crate::sandbox::supervisor::now_ns()) {
        Ok(outcome) if outcome.exit_code() == 0 => Check::ok(
            "trial sandbox",
            format!(
                "`nsbox exec -- /bin/true` ran with full isolation in {:.1} ms",
                started.elapsed().as_secs_f64() * 1e3
            ),
        ),
        Ok(outcome) => Check::fail(
            "trial sandbox",
            format!(
                "/bin/true ended with status {}{}",
                outcome.exit_code(),
                outcome
                    .message()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            ),
            "run `nsbox exec -v -- /bin/true` to see where it fails",
        ),
        Err(e) => Check::fail(
            "trial sandbox",
            e.to_string(),
            "run `nsbox exec -v -- /bin/true` to see where it fails",
        ),
    }
}
