//! `process.rlimits` of a container, set on the sandbox's init before the process starts: every
//! process of the sandbox (the container's, and `exec`'s) is forked by that init and inherits
//! them. A limit above the hard limit nsbox can set is **clamped** to it, with a warning in the
//! `--log` file, rather than refused: podman asks `RLIMIT_NOFILE` 1048576 of every container,
//! and raising a hard limit needs CAP_SYS_RESOURCE, which a runtime in a container (as on
//! this machine, where crun then fails the same `podman run`) may not hold.

use oci_spec::runtime::{PosixRlimit, PosixRlimitType};
use rustix::process::{Pid, Resource, Rlimit};

use super::{Log, RuntimeError};

/// One planned limit: its field name, resource, soft and hard values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub field: String,
    pub name: String,
    pub resource: Resource,
    pub soft: u64,
    pub hard: u64,
}

fn resource(typ: PosixRlimitType) -> Resource {
    match typ {
        PosixRlimitType::RlimitCpu => Resource::Cpu,
        PosixRlimitType::RlimitFsize => Resource::Fsize,
        PosixRlimitType::RlimitData => Resource::Data,
        PosixRlimitType::RlimitStack => Resource::Stack,
        PosixRlimitType::RlimitCore => Resource::Core,
        PosixRlimitType::RlimitRss => Resource::Rss,
        PosixRlimitType::RlimitNproc => Resource::Nproc,
        PosixRlimitType::RlimitNofile => Resource::Nofile,
        PosixRlimitType::RlimitMemlock => Resource::Memlock,
        PosixRlimitType::RlimitAs => Resource::As,
        PosixRlimitType::RlimitLocks => Resource::Locks,
        PosixRlimitType::RlimitSigpending => Resource::Sigpending,
        PosixRlimitType::RlimitMsgqueue => Resource::Msgqueue,
        PosixRlimitType::RlimitNice => Resource::Nice,
        PosixRlimitType::RlimitRtprio => Resource::Rtprio,
        PosixRlimitType::RlimitRttime => Resource::Rttime,
    }
}

/// Checks `process.rlimits`: a soft limit above its hard one is refused, naming the field.
pub fn plan(rlimits: &[PosixRlimit]) -> Result<Vec<Planned>, RuntimeError> {
    rlimits
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let field = format!("process.rlimits[{i}]");
            let name = r.typ().to_string();
            if r.soft() > r.hard() {
                return Err(RuntimeError::Refused {
                    field,
                    reason: format!(
                        "{name}: soft {} is above hard {} — hint: make soft at most hard",
                        r.soft(),
                        r.hard()
                    ),
                });
            }
            Ok(Planned {
                field,
                name,
                resource: resource(r.typ()),
                soft: r.soft(),
                hard: r.hard(),
            })
        })
        .collect()
}

/// Sets each limit on `init_pid`; one above the init's current hard limit that cannot be
/// raised (no CAP_SYS_RESOURCE) is clamped to that hard limit and logged.
pub fn set_on(init_pid: i32, limits: &[Planned], log: &Log) -> Result<(), RuntimeError> {
    let pid = Pid::from_raw(init_pid).ok_or_else(|| RuntimeError::Io {
        what: format!("pid {init_pid}"),
        source: std::io::Error::other("not a pid"),
    })?;
    let as_rlimit = |v: u64| (v != u64::MAX).then_some(v);
    let from_rlimit = |v: Option<u64>| v.unwrap_or(u64::MAX);
    for l in limits {
        let asked = Rlimit {
            current: as_rlimit(l.soft),
            maximum: as_rlimit(l.hard),
        };
        let result = match rustix::process::prlimit(Some(pid), l.resource, asked) {
            Err(rustix::io::Errno::PERM) => {
                // Raising the hard limit needs CAP_SYS_RESOURCE: clamp to what it is now.
                let now = current(init_pid, l.resource)?;
                let hard = l.hard.min(from_rlimit(now.maximum));
                let soft = l.soft.min(hard);
                log.write(
                    "warning",
                    &format!(
                        "config.json: {} ({}): soft {} hard {} is above the hard limit nsbox can set ({hard}): clamped to soft {soft} hard {hard}",
                        l.field, l.name, l.soft, l.hard
                    ),
                );
                rustix::process::prlimit(
                    Some(pid),
                    l.resource,
                    Rlimit {
                        current: as_rlimit(soft),
                        maximum: as_rlimit(hard),
                    },
                )
            }
            other => other,
        };
        result.map_err(|e| RuntimeError::Refused {
            field: l.field.clone(),
            reason: format!("{}: cannot be set: {e}", l.name),
        })?;
    }
    Ok(())
}

/// The init's current limit (read with prlimit, changing nothing).
#[allow(unsafe_code)] // prlimit with no new limit; the block says why it is sound
fn current(init_pid: i32, resource: Resource) -> Result<Rlimit, RuntimeError> {
    let mut old = libc::rlimit64 {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a null new limit reads only; `old` is a valid out pointer for the call.
    let ret = unsafe {
        libc::prlimit64(
            init_pid,
            // The resource's type is the libc's own (an enum on glibc, c_int on musl).
            resource as _,
            std::ptr::null(),
            &mut old,
        )
    };
    if ret != 0 {
        return Err(RuntimeError::io("read the sandbox's limits")(
            std::io::Error::last_os_error(),
        ));
    }
    let maybe = |v: u64| (v != libc::RLIM64_INFINITY).then_some(v);
    Ok(Rlimit {
        current: maybe(old.rlim_cur),
        maximum: maybe(old.rlim_max),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rlimit(json: serde_json::Value) -> PosixRlimit {
        serde_json::from_value(json).expect("rlimit")
    }

    #[test]
    fn limits_are_planned_and_a_soft_above_hard_refused() {
        let ok = plan(&[rlimit(
            serde_json::json!({"type": "RLIMIT_NOFILE", "soft": 1048576, "hard": 1048576}),
        )])
        .expect("plan");
        assert_eq!(ok[0].resource, Resource::Nofile);
        assert_eq!(ok[0].name, "RLIMIT_NOFILE");
        assert_eq!((ok[0].soft, ok[0].hard), (1_048_576, 1_048_576));
        let bad = plan(&[
            rlimit(serde_json::json!({"type": "RLIMIT_CORE", "soft": 0, "hard": 0})),
            rlimit(serde_json::json!({"type": "RLIMIT_NPROC", "soft": 10, "hard": 5})),
        ]);
        match bad {
            Err(RuntimeError::Refused { field, .. }) => assert_eq!(field, "process.rlimits[1]"),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
}
