//! Shared by the benches that run nsbox side by side with its peers (coldstart, runtime):
//! percentiles, the comparison table, finding a peer's binary, and the private cgroup view
//! crun needs on hybrid hosts.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The `q` quantile (0.5 = median) of `samples`, which it sorts.
pub fn percentile(samples: &mut [f64], q: f64) -> f64 {
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let idx = ((samples.len() as f64 - 1.0) * q).round() as usize;
    samples[idx]
}

/// One tool's samples (ms) in a comparison; the first row of a table is nsbox's.
pub struct Row<'a> {
    pub name: &'a str,
    pub samples: Vec<f64>,
    /// What the tool sets up, for the report.
    pub does: &'a str,
}

/// Prints median, p10 and p90 per tool, then each peer's median ratio to the first row
/// (nsbox); returns the medians in row order.
pub fn print_comparison(rows: &mut [Row<'_>]) -> Vec<f64> {
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(4).max(6);
    println!(
        "  {:<width$} {:>9} {:>9} {:>9}   isolation",
        "tool", "median", "p10", "p90"
    );
    let medians: Vec<f64> = rows
        .iter_mut()
        .map(|r| percentile(&mut r.samples, 0.5))
        .collect();
    for (row, median) in rows.iter_mut().zip(&medians) {
        println!(
            "  {:<width$} {:>7.2}ms {:>7.2}ms {:>7.2}ms   {}",
            row.name,
            median,
            percentile(&mut row.samples, 0.1),
            percentile(&mut row.samples, 0.9),
            row.does
        );
    }
    let first = rows.first().map(|r| r.name).unwrap_or("nsbox");
    for (row, median) in rows.iter().zip(&medians).skip(1) {
        println!(
            "  {first}/{:<5} median ratio: {:.2}",
            row.name,
            medians[0] / median
        );
    }
    medians
}

/// `name` in `$PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.exists())
    })
}

/// On a hybrid host whose cgroup2 mount lists a controller, crun refuses to start; give this
/// process (and the tools it runs) a private mount namespace without that mount.
pub fn private_cgroup_view() -> Option<String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let unified = mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let mount_point = left.split(' ').nth(4)?;
        (right.starts_with("cgroup2 ") && mount_point != "/sys/fs/cgroup")
            .then(|| mount_point.to_string())
    })?;
    let controllers =
        std::fs::read_to_string(Path::new(&unified).join("cgroup.controllers")).ok()?;
    if controllers.trim().is_empty() {
        return None;
    }
    nsbox::sys::process::unshare(nsbox::sys::process::flags::NEWNS).ok()?;
    rustix::mount::mount_change(
        "/",
        rustix::mount::MountPropagationFlags::PRIVATE | rustix::mount::MountPropagationFlags::REC,
    )
    .ok()?;
    rustix::mount::unmount(unified.as_str(), rustix::mount::UnmountFlags::DETACH).ok()?;
    Some(format!(
        "hybrid host: the bench hides the cgroup2 mount at {unified} from all tools so crun runs; nsbox uses the v1 controllers either way"
    ))
}
