//! Sessions: the latency of `nsbox exec --session ID -- /bin/true` against a one-shot
//! `nsbox exec -- /bin/true` (interleaved, in one run), and the memory of idle session
//! supervisors with 100 sessions open.
//!
//!     sudo cargo bench --bench session       # NSBOX_BENCH_RUNS=N, NSBOX_BENCH_SESSIONS=N
//!
//! Memory is reported three ways per supervisor, from /proc/PID/smaps_rollup: RSS (every page
//! mapped, including the nsbox binary's code, which all supervisors share through the page
//! cache), PSS (shared pages divided among the processes sharing them: what one more session
//! really costs) and private (pages only this process has). The session's init (its pid 1,
//! charged to the sandbox's own cgroup) is listed apart.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn main() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIP session bench: needs root (sudo cargo bench --bench session)");
        return;
    }
    let env_num = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let runs = env_num("NSBOX_BENCH_RUNS", 200);
    let sessions = env_num("NSBOX_BENCH_SESSIONS", 100);
    let nsbox = PathBuf::from(env!("CARGO_BIN_EXE_nsbox"));
    let run_dir = tempfile::Builder::new()
        .prefix("nsbox-bench-run-")
        .tempdir()
        .unwrap();
    let cmd = |args: &[&str]| {
        let mut c = Command::new(&nsbox);
        c.args(args)
            .env("NSBOX_RUN_DIR", run_dir.path())
            .env_remove("NSBOX_LOG")
            .stdin(Stdio::null());
        c
    };

    latency(&cmd, runs);
    memory(&cmd, run_dir.path(), sessions);
}

fn latency(cmd: &dyn Fn(&[&str]) -> Command, runs: usize) {
    let out = cmd(&["create", "--max-age", "none"]).output().unwrap();
    assert!(out.status.success(), "create: {out:?}");
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let variants: [(&str, Vec<&str>); 2] = [
        ("one-shot exec", vec!["exec", "--", "/bin/true"]),
        (
            "exec --session",
            vec!["exec", "--session", &id, "--", "/bin/true"],
        ),
    ];
    let time = |args: &[&str]| {
        let t = Instant::now();
        let status = cmd(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "nsbox {args:?} failed");
        t.elapsed()
    };
    for (_, args) in &variants {
        for _ in 0..5 {
            time(args);
        }
    }
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for _ in 0..runs {
        for (i, (_, args)) in variants.iter().enumerate() {
            samples[i].push(time(args).as_secs_f64() * 1e3);
        }
    }
    println!("exec latency: {runs} runs each, interleaved (ms)");
    println!("{:<16} {:>8} {:>8} {:>8}", "", "p10", "median", "p90");
    let mut medians = Vec::new();
    for (i, (name, _)) in variants.iter().enumerate() {
        let s = &mut samples[i];
        let (p10, p50, p90) = (percentile(s, 0.1), percentile(s, 0.5), percentile(s, 0.9));
        medians.push(p50);
        println!("{name:<16} {p10:>8.2} {p50:>8.2} {p90:>8.2}");
    }
    println!(
        "exec --session / one-shot (median): {:.2} (target: below 1)\n",
        medians[1] / medians[0]
    );
    let _ = cmd(&["rm", "-f", &id]).output();
}

/// Creates `n` idle sessions, measures their supervisors, removes them.
fn memory(cmd: &dyn Fn(&[&str]) -> Command, run_dir: &Path, n: usize) {
    let t = Instant::now();
    let mut ids = Vec::new();
    for _ in 0..n {
        let out = cmd(&["create", "--max-age", "none"]).output().unwrap();
        assert!(out.status.success(), "create: {out:?}");
        ids.push(String::from_utf8(out.stdout).unwrap().trim().to_string());
    }
    let created = t.elapsed();
    // Let them settle into their idle loops.
    std::thread::sleep(Duration::from_millis(500));
    let mut sup = Vec::new();
    let mut init = Vec::new();
    for id in &ids {
        let record: serde_json::Value = serde_json::from_slice(
            &std::fs::read(run_dir.join("sessions").join(id).join("session.json")).unwrap(),
        )
        .unwrap();
        let pid = record["supervisor_pid"].as_u64().unwrap();
        let init_pid = record["init_pid"].as_u64().unwrap();
        sup.push(rollup(pid));
        init.push(rollup(init_pid));
    }
    println!(
        "idle sessions: {n} open (created in {:.2} s, {:.1} ms each)",
        created.as_secs_f64(),
        created.as_secs_f64() * 1e3 / n as f64
    );
    println!(
        "{:<22} {:>10} {:>10} {:>10}",
        "KiB per process", "RSS", "PSS", "private"
    );
    for (name, rows) in [("supervisor (mean)", &sup), ("session init (mean)", &init)] {
        let mean = |f: fn(&Mem) -> u64| rows.iter().map(f).sum::<u64>() / rows.len() as u64;
        println!(
            "{name:<22} {:>10} {:>10} {:>10}",
            mean(|m| m.rss),
            mean(|m| m.pss),
            mean(|m| m.private)
        );
    }
    let max_pss = sup.iter().map(|m| m.pss).max().unwrap_or(0);
    let max_rss = sup.iter().map(|m| m.rss).max().unwrap_or(0);
    println!(
        "supervisor max: RSS {max_rss} KiB, PSS {max_pss} KiB (target: at most 2048 KiB each)"
    );
    for id in &ids {
        let _ = cmd(&["rm", "-f", id]).output();
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Mem {
    rss: u64,
    pss: u64,
    private: u64,
}

fn rollup(pid: u64) -> Mem {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |key: &str| {
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Mem {
        rss: field("Rss:"),
        pss: field("Pss:"),
        private: field("Private_Clean:") + field("Private_Dirty:"),
    }
}

fn percentile(samples: &mut [f64], q: f64) -> f64 {
    samples.sort_by(|a, b| a.total_cmp(b));
    let i = ((samples.len() - 1) as f64 * q).round() as usize;
    samples[i]
}
