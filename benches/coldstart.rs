//! Cold start of a full-isolation sandbox running /bin/true: nsbox side by side with bubblewrap
//! and crun, in one run, back to back and after ~50 ms of idle. Prints medians, the 10th/90th
//! percentiles and the nsbox/peer ratios, then where nsbox's milliseconds go (--timings).
//!
//!     sudo cargo bench --bench coldstart            # NSBOX_BENCH_RUNS=N to change the count
//!
//! Fairness: every tool runs from the same process, interleaved round-robin, so machine noise
//! hits all of them alike. crun refuses "hybrid" cgroup hosts whose cgroup2 mount lists any
//! controller, so on such hosts the bench runs in a private mount namespace without that
//! mount; all three tools then see the same (cgroup v1) layout.
#![allow(clippy::unwrap_used)]

#[path = "common/peers.rs"]
mod peers;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use peers::{percentile, print_comparison, private_cgroup_view, which, Row};

struct Tool {
    name: &'static str,
    argv: Vec<String>,
    /// What the tool sets up, for the report.
    does: &'static str,
}

fn main() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIP coldstart bench: needs root (sudo cargo bench --bench coldstart)");
        return;
    }
    let runs: usize = std::env::var("NSBOX_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let idle = Duration::from_millis(50);
    let scratch = tempfile::tempdir().unwrap();
    let crun_note = private_cgroup_view();

    let nsbox = PathBuf::from(env!("CARGO_BIN_EXE_nsbox"));
    let mut tools =
        vec![Tool {
        name: "nsbox",
        argv: vec![nsbox.display().to_string(), "exec".into(), "--".into(), "/bin/true".into()],
        does: "user+pid+mount+net+uts+ipc+cgroup ns, overlay root, cgroup limits, seccomp, uid 100",
    }];
    if which("bwrap").is_some() {
        tools.push(Tool {
            name: "bwrap",
            argv: "bwrap --unshare-all --ro-bind / / --proc /proc --dev /dev /bin/true"
                .split(' ')
                .map(String::from)
                .collect(),
            does: "user+pid+mount+net+uts+ipc+cgroup ns, ro bind of /; no cgroups, overlay or seccomp",
        });
    } else {
        eprintln!("note: bwrap not installed (apt-get install bubblewrap); skipped");
    }
    match (which("crun"), crun_bundle(scratch.path())) {
        (Some(crun), Some(bundle)) => tools.push(Tool {
            name: "crun",
            argv: vec![
                crun.display().to_string(),
                "--cgroup-manager=cgroupfs".into(),
                "run".into(),
                "--bundle".into(),
                bundle.display().to_string(),
                "nsbox-bench-crun".into(),
            ],
            does: "pid+mount+net+uts+ipc ns, busybox rootfs, cgroup, default seccomp; runs as root",
        }),
        _ => eprintln!("note: crun or busybox-static not installed; crun skipped"),
    }

    println!("nsbox cold-start benchmark: {runs} runs per tool and mode, interleaved");
    if let Some(note) = &crun_note {
        println!("({note})");
    }
    for tool in &tools {
        // Warm caches (binary pages, dentries) and make sure each tool works at all.
        for _ in 0..5 {
            if let Err(e) = run_once(tool) {
                eprintln!("{} does not run: {e}", tool.name);
                std::process::exit(1);
            }
        }
    }
    for (mode, pause) in [("back-to-back", None), ("after 50 ms idle", Some(idle))] {
        let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(runs); tools.len()];
        for _ in 0..runs {
            for (i, tool) in tools.iter().enumerate() {
                if let Some(p) = pause {
                    std::thread::sleep(p);
                }
                samples[i].push(run_once(tool).unwrap().as_secs_f64() * 1e3);
            }
        }
        println!("\n{mode}:");
        let mut rows: Vec<Row<'_>> = tools
            .iter()
            .zip(samples)
            .map(|(tool, samples)| Row {
                name: tool.name,
                samples,
                does: tool.does,
            })
            .collect();
        print_comparison(&mut rows);
    }
    phase_table(&nsbox, 30);
}

/// Runs the tool once; returns the wall time from spawn to exit.
fn run_once(tool: &Tool) -> Result<Duration, String> {
    let start = Instant::now();
    let status = Command::new(&tool.argv[0])
        .args(&tool.argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| e.to_string())?;
    let took = start.elapsed();
    if !status.status.success() {
        return Err(String::from_utf8_lossy(&status.stderr).into_owned());
    }
    Ok(took)
}

/// A minimal OCI bundle for crun: busybox as /bin/true, read-only root, no terminal.
fn crun_bundle(dir: &Path) -> Option<PathBuf> {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(Path::new)
        .find(|p| p.exists())?;
    let bundle = dir.join("crun-bundle");
    std::fs::create_dir_all(bundle.join("rootfs/bin")).ok()?;
    std::fs::copy(busybox, bundle.join("rootfs/bin/busybox")).ok()?;
    std::os::unix::fs::symlink("busybox", bundle.join("rootfs/bin/true")).ok()?;
    let status = Command::new("crun")
        .arg("spec")
        .current_dir(&bundle)
        .status()
        .ok()?;
    if !status.success() {
        return None;
    }
    let path = bundle.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).ok()?).ok()?;
    config["process"]["terminal"] = false.into();
    config["process"]["args"] = serde_json::json!(["/bin/true"]);
    config["root"] = serde_json::json!({ "path": "rootfs", "readonly": true });
    std::fs::write(&path, serde_json::to_string_pretty(&config).ok()?).ok()?;
    Some(bundle)
}

/// Averages nsbox's own --timings over `runs` runs, phase by phase.
fn phase_table(nsbox: &Path, runs: usize) {
    let mut phases: Vec<(String, Vec<f64>)> = Vec::new();
    for _ in 0..runs {
        let out = Command::new(nsbox)
            .args(["exec", "--timings", "--", "/bin/true"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr);
        // Lines look like "   2.278  +  1.745  child started" and "   7.461            total".
        for line in text.lines().skip(1) {
            let words: Vec<&str> = line.split_whitespace().collect();
            let (label, value) = match words.as_slice() {
                [at, "total"] => ("total".to_string(), at.parse::<f64>()),
                [_, "+", delta, rest @ ..] => (rest.join(" "), delta.parse::<f64>()),
                [_, delta, rest @ ..] if delta.starts_with('+') => {
                    (rest.join(" "), delta.trim_start_matches('+').parse::<f64>())
                }
                _ => continue,
            };
            let Ok(value) = value else { continue };
            match phases.iter_mut().find(|(l, _)| *l == label) {
                Some((_, v)) => v.push(value),
                None => phases.push((label, vec![value])),
            }
        }
    }
    println!("\nwhere nsbox's time goes (median of {runs} runs of `nsbox exec --timings -- /bin/true`, ms since the previous mark; marks from the supervisor and the sandbox interleave):");
    for (label, values) in &mut phases {
        println!("  {:>7.3}  {label}", percentile(values, 0.5));
    }
}
