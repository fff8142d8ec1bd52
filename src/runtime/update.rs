//! `update --resources`: the runtime-spec `linux.resources` JSON a shim sends (containerd's
//! `ctr task update`, the kubelet's in-place resize), checked whole before anything is
//! written, then written to the control files of the container's cgroup directories (those
//! `create` recorded in `state.json`). Only what nsbox can apply is taken; every other field
//! that is set is refused by its name, so an engine never believes a limit holds that does not.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::RuntimeError;

/// The fields nsbox applies. `None`: not in the JSON (left as it is).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResourceUpdate {
    /// `memory.limit` in bytes; `Some(None)` is unlimited (-1).
    pub memory: Option<Option<u64>>,
    /// `pids.limit`; `Some(None)` is unlimited (0 or -1, as runc takes them).
    pub pids: Option<Option<u64>>,
    /// `cpu.quota` in µs per period; `Some(None)` is unlimited (-1).
    pub cpu_quota: Option<Option<u64>>,
    /// `cpu.period` in µs.
    pub cpu_period: Option<u64>,
    /// `cpu.shares` (cgroup v1's weight, 2..262144; v2's `cpu.weight` is derived as runc does).
    pub cpu_shares: Option<u64>,
}

/// The fields of each section nsbox applies; anything else set is refused by name.
const TAKEN: &[(&str, &[&str])] = &[
    ("memory", &["limit"]),
    ("pids", &["limit"]),
    ("cpu", &["quota", "period", "shares"]),
];

impl ResourceUpdate {
    /// Parses and checks `text` (a `LinuxResources` object).
    pub fn parse(text: &str) -> Result<ResourceUpdate, RuntimeError> {
        let bad = |m: String| RuntimeError::Resources(m);
        let value: Value = serde_json::from_str(text).map_err(|e| {
            bad(format!(
                "not valid JSON ({e}) — hint: give a runtime-spec linux.resources object, e.g. {{\"memory\":{{\"limit\":268435456}},\"pids\":{{\"limit\":64}}}}"
            ))
        })?;
        let Value::Object(top) = value else {
            return Err(bad(
                "not a JSON object — hint: give a runtime-spec linux.resources object".into(),
            ));
        };
        let mut update = ResourceUpdate::default();
        for (section, body) in &top {
            if body.is_null() {
                continue;
            }
            let Some((_, fields)) = TAKEN.iter().find(|(s, _)| s == section) else {
                if is_empty(body) {
                    continue;
                }
                return Err(bad(format!(
                    "{section}: not supported by nsbox (it applies memory.limit, pids.limit, cpu.quota, cpu.period and cpu.shares) — hint: leave {section} out"
                )));
            };
            let Value::Object(body) = body else {
                return Err(bad(format!("{section}: not a JSON object")));
            };
            for (field, v) in body {
                if v.is_null() {
                    continue;
                }
                if !fields.contains(&field.as_str()) {
                    return Err(bad(format!(
                        "{section}.{field}: not supported by nsbox (of {section} it applies {}) — hint: leave {section}.{field} out",
                        fields.join(", ")
                    )));
                }
                let n = v
                    .as_i64()
                    .ok_or_else(|| bad(format!("{section}.{field}: {v} is not an integer")))?;
                let name = format!("{section}.{field}");
                match (section.as_str(), field.as_str()) {
                    ("memory", "limit") => update.memory = Some(unlimited_if(n, &[-1], &name)?),
                    ("pids", "limit") => update.pids = Some(unlimited_if(n, &[-1, 0], &name)?),
                    ("cpu", "quota") => update.cpu_quota = Some(unlimited_if(n, &[-1], &name)?),
                    ("cpu", "period") => update.cpu_period = Some(positive(n, &name)?),
                    ("cpu", "shares") => update.cpu_shares = Some(positive(n, &name)?),
                    _ => unreachable!("every field of TAKEN is matched"),
                }
            }
        }
        if update.memory == Some(Some(0)) {
            return Err(bad("memory.limit: 0 bytes leaves nothing to run in — hint: give a limit in bytes, or -1 for none".into()));
        }
        if let Some(p) = update.cpu_period {
            if !(1_000..=1_000_000).contains(&p) {
                return Err(bad(format!(
                    "cpu.period: {p} µs is outside the kernel's 1000..1000000"
                )));
            }
        }
        if let Some(Some(q)) = update.cpu_quota {
            if q < 1_000 {
                return Err(bad(format!(
                    "cpu.quota: {q} µs is below the kernel's minimum of 1000"
                )));
            }
        }
        Ok(update)
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.values().all(Value::is_null),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

fn unlimited_if(n: i64, unlimited: &[i64], name: &str) -> Result<Option<u64>, RuntimeError> {
    if unlimited.contains(&n) {
        return Ok(None);
    }
    u64::try_from(n).map(Some).map_err(|_| {
        RuntimeError::Resources(format!(
            "{name}: {n} is negative (use {} for no limit)",
            unlimited[0]
        ))
    })
}

fn positive(n: i64, name: &str) -> Result<u64, RuntimeError> {
    u64::try_from(n)
        .ok()
        .filter(|&v| v > 0)
        .ok_or_else(|| RuntimeError::Resources(format!("{name}: {n} must be more than 0")))
}

/// One control file write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub file: PathBuf,
    pub value: String,
}

/// The writes for `update` to the container's cgroup directories `dirs`, in the order the
/// kernel takes them. Each directory's version is told by its files (`memory.max` is v2,
/// `memory.limit_in_bytes` v1, and so on), so this works on v1, v2 and hybrid hosts alike.
pub fn plan_writes(dirs: &[PathBuf], update: &ResourceUpdate) -> Result<Vec<Write>, RuntimeError> {
    let find = |file: &str| dirs.iter().find(|d| d.join(file).exists());
    let missing = |field: &str, controller: &str| {
        RuntimeError::Resources(format!(
            "{field}: the container has no {controller} cgroup on this host (nsbox could not use the {controller} controller when it was created; `nsbox doctor` says why)"
        ))
    };
    let w = |dir: &Path, file: &str, value: String| Write {
        file: dir.join(file),
        value,
    };
    let mut out = Vec::new();
    if let Some(limit) = update.memory {
        if let Some(dir) = find("memory.max") {
            out.push(w(
                dir,
                "memory.max",
                limit.map_or("max".into(), |b| b.to_string()),
            ));
        } else if let Some(dir) = find("memory.limit_in_bytes") {
            let value = limit.map_or("-1".into(), |b| b.to_string());
            // The kernel keeps memsw >= limit at every step: raise memsw first, lower it last.
            // nsbox keeps them equal (no swap beyond the limit), as at create.
            let current = std::fs::read_to_string(dir.join("memory.limit_in_bytes"))
                .ok()
                .and_then(|t| t.trim().parse::<u64>().ok())
                .unwrap_or(u64::MAX);
            let raising = limit.is_none_or(|b| b > current);
            let memsw = dir.join("memory.memsw.limit_in_bytes").exists();
            if raising && memsw {
                out.push(w(dir, "memory.memsw.limit_in_bytes", value.clone()));
            }
            out.push(w(dir, "memory.limit_in_bytes", value.clone()));
            if !raising && memsw {
                out.push(w(dir, "memory.memsw.limit_in_bytes", value));
            }
        } else {
            return Err(missing("memory.limit", "memory"));
        }
    }
    if let Some(limit) = update.pids {
        let dir = find("pids.max").ok_or_else(|| missing("pids.limit", "pids"))?;
        out.push(w(
            dir,
            "pids.max",
            limit.map_or("max".into(), |n| n.to_string()),
        ));
    }
    if update.cpu_quota.is_some() || update.cpu_period.is_some() {
        if let Some(dir) = find("cpu.max") {
            // cpu.max is "QUOTA PERIOD"; a part not given keeps its current value.
            let current = std::fs::read_to_string(dir.join("cpu.max")).unwrap_or_default();
            let mut parts = current.split_whitespace();
            let (cur_quota, cur_period) = (
                parts.next().unwrap_or("max").to_string(),
                parts.next().unwrap_or("100000").to_string(),
            );
            let quota = match update.cpu_quota {
                Some(q) => q.map_or("max".into(), |q| q.to_string()),
                None => cur_quota,
            };
            let period = update.cpu_period.map_or(cur_period, |p| p.to_string());
            out.push(w(dir, "cpu.max", format!("{quota} {period}")));
        } else if let Some(dir) = find("cpu.cfs_quota_us") {
            if let Some(p) = update.cpu_period {
                out.push(w(dir, "cpu.cfs_period_us", p.to_string()));
            }
            if let Some(q) = update.cpu_quota {
                out.push(w(
                    dir,
                    "cpu.cfs_quota_us",
                    q.map_or("-1".into(), |q| q.to_string()),
                ));
            }
        } else {
            return Err(missing("cpu.quota/cpu.period", "cpu"));
        }
    }
    if let Some(shares) = update.cpu_shares {
        if let Some(dir) = find("cpu.weight") {
            out.push(w(dir, "cpu.weight", shares_to_weight(shares).to_string()));
        } else if let Some(dir) = find("cpu.shares") {
            out.push(w(dir, "cpu.shares", shares.to_string()));
        } else {
            return Err(missing("cpu.shares", "cpu"));
        }
    }
    Ok(out)
}

/// cgroup v1 `cpu.shares` (2..262144) to v2 `cpu.weight` (1..10000), runc's conversion.
fn shares_to_weight(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_memory_pids_and_cpu() {
        let u = ResourceUpdate::parse(
            r#"{"memory":{"limit":67108864},"pids":{"limit":-1},"cpu":{"quota":50000,"period":100000,"shares":1024},"devices":[]}"#,
        )
        .unwrap();
        assert_eq!(u.memory, Some(Some(64 << 20)));
        assert_eq!(u.pids, Some(None));
        assert_eq!(u.cpu_quota, Some(Some(50_000)));
        assert_eq!(u.cpu_period, Some(100_000));
        assert_eq!(u.cpu_shares, Some(1024));
    }

    #[test]
    fn refuses_what_it_cannot_apply_by_name() {
        for (json, name) in [
            (r#"{"memory":{"swap":1}}"#, "memory.swap"),
            (r#"{"blockIO":{"weight":10}}"#, "blockIO"),
            (r#"{"cpu":{"cpus":"0-1"}}"#, "cpu.cpus"),
            (r#"{"pids":{"limit":-5}}"#, "pids.limit"),
            (r#"{"memory":{"limit":"1g"}}"#, "memory.limit"),
            (r#"{"cpu":{"period":10}}"#, "cpu.period"),
        ] {
            let e = ResourceUpdate::parse(json).unwrap_err().to_string();
            assert!(e.contains(name), "{json}: {e}");
        }
        let e = ResourceUpdate::parse("{memory").unwrap_err().to_string();
        assert!(e.contains("not valid JSON"), "{e}");
        let e = ResourceUpdate::parse("[]").unwrap_err().to_string();
        assert!(e.contains("not a JSON object"), "{e}");
    }

    #[test]
    fn writes_follow_the_files_of_each_version() {
        let tmp = tempfile::tempdir().unwrap();
        let v2 = tmp.path().join("v2");
        std::fs::create_dir(&v2).unwrap();
        for f in ["memory.max", "pids.max", "cpu.weight"] {
            std::fs::write(v2.join(f), "max\n").unwrap();
        }
        std::fs::write(v2.join("cpu.max"), "max 100000\n").unwrap();
        let u = ResourceUpdate::parse(
            r#"{"memory":{"limit":1048576},"pids":{"limit":5},"cpu":{"quota":20000,"shares":1024}}"#,
        )
        .unwrap();
        let writes = plan_writes(std::slice::from_ref(&v2), &u).unwrap();
        let got: Vec<_> = writes
            .iter()
            .map(|w| {
                (
                    w.file.file_name().unwrap().to_str().unwrap(),
                    w.value.as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("memory.max", "1048576"),
                ("pids.max", "5"),
                ("cpu.max", "20000 100000"),
                ("cpu.weight", "39"),
            ]
        );

        let v1 = tmp.path().join("v1");
        std::fs::create_dir(&v1).unwrap();
        std::fs::write(v1.join("memory.limit_in_bytes"), "1000\n").unwrap();
        std::fs::write(v1.join("memory.memsw.limit_in_bytes"), "1000\n").unwrap();
        // The files written for a memory limit, in order.
        let order = |limit: u64| -> Vec<String> {
            let update =
                ResourceUpdate::parse(&format!(r#"{{"memory":{{"limit":{limit}}}}}"#)).unwrap();
            plan_writes(std::slice::from_ref(&v1), &update)
                .unwrap()
                .into_iter()
                .map(|w| w.file.file_name().unwrap().to_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(
            order(2000),
            ["memory.memsw.limit_in_bytes", "memory.limit_in_bytes"]
        );
        assert_eq!(
            order(500),
            ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"]
        );

        let e = plan_writes(std::slice::from_ref(&v1), &u)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("pids.limit: the container has no pids cgroup"),
            "{e}"
        );
    }
}
