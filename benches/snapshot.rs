//! Snapshots: `nsbox pause` + `nsbox resume` latency, and `nsbox commit` time for sessions
//! holding 10 MB and 500 MB of files in /sandbox (2 GB with NSBOX_BENCH_BIG=1), against a fresh
//! `nsbox create` plus `nsbox cp` of the same files in (what a user does without commit), and
//! `nsbox fork` of the same session with 1 and 10 forks.
//!
//!     sudo cargo bench --bench snapshot      # NSBOX_BENCH_RUNS=N (pause/resume pairs),
//!                                            # NSBOX_BENCH_SIZES=10,500 (MB)
//!
//! The files are random (incompressible): commit time is mostly gzip of the new layer, so
//! this is its worst case; source trees compress several times better.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn main() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIP snapshot bench: needs root (sudo cargo bench --bench snapshot)");
        return;
    }
    let runs: usize = std::env::var("NSBOX_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let nsbox = PathBuf::from(env!("CARGO_BIN_EXE_nsbox"));
    let tmp = tempfile::Builder::new()
        .prefix("nsbox-bench-snap-")
        .tempdir()
        .unwrap();
    let store = tmp.path().join("store");
    let run_dir = tmp.path().join("run");
    std::fs::create_dir_all(&run_dir).unwrap();
    let config = tmp.path().join("config.toml");
    std::fs::write(&config, "").unwrap();
    let cmd = |args: &[&str]| {
        let mut c = Command::new(&nsbox);
        c.arg("--state-root")
            .arg(&store)
            .arg("--config")
            .arg(&config)
            .args(args)
            .env("NSBOX_RUN_DIR", &run_dir)
            .env_remove("NSBOX_LOG")
            .stdin(Stdio::null());
        c
    };
    let ok = |args: &[&str]| -> String {
        let out = cmd(args).output().unwrap();
        assert!(out.status.success(), "nsbox {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    import_busybox(tmp.path(), &ok);

    // Pause + resume of an idle session.
    let id = ok(&["create", "--image", "bb:1", "--max-age", "none"]);
    let id = id.trim();
    let mut pause = Vec::new();
    let mut resume = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        ok(&["pause", id]);
        pause.push(t.elapsed());
        let t = Instant::now();
        ok(&["resume", id]);
        resume.push(t.elapsed());
    }
    report("nsbox pause (whole command)", &mut pause);
    report("nsbox resume (whole command)", &mut resume);
    ok(&["rm", "-f", id]);

    let mut sizes: Vec<u64> = match std::env::var("NSBOX_BENCH_SIZES") {
        Ok(list) => list
            .split(',')
            .filter_map(|s| s.trim().parse().ok())
            .collect(),
        Err(_) => vec![10, 500],
    };
    if std::env::var("NSBOX_BENCH_BIG").as_deref() == Ok("1") {
        sizes.push(2048);
    }
    for mb in sizes {
        let limit = format!("{}m", mb * 2 + 64);
        let id = ok(&[
            "create",
            "--image",
            "bb:1",
            "--max-age",
            "none",
            "--sandbox-size",
            &limit,
            "--memory",
            "8g",
        ]);
        let id = id.trim().to_string();
        ok(&[
            "exec",
            "--session",
            &id,
            "--",
            "/bin/sh",
            "-c",
            &format!("dd if=/dev/urandom of=/sandbox/data bs=1M count={mb} 2>/dev/null"),
        ]);
        let t = Instant::now();
        let done = ok(&["commit", "--json", &id, &format!("snap{mb}:1")]);
        let commit = t.elapsed();
        let done: serde_json::Value = serde_json::from_str(&done).unwrap();
        let frozen = done["frozen_secs"].as_f64().unwrap_or(f64::NAN) * 1000.0;

        // The same files into a fresh session, the way without commit.
        let host_copy = tmp.path().join(format!("data{mb}"));
        ok(&[
            "cp",
            &format!("{id}:/sandbox/data"),
            host_copy.to_str().unwrap(),
        ]);
        let t = Instant::now();
        let fresh = ok(&[
            "create",
            "--image",
            "bb:1",
            "--max-age",
            "none",
            "--sandbox-size",
            &limit,
            "--memory",
            "8g",
        ]);
        ok(&[
            "cp",
            host_copy.to_str().unwrap(),
            &format!("{}:/sandbox/data", fresh.trim()),
        ]);
        let copy = t.elapsed();
        // And starting from the committed image.
        let t = Instant::now();
        let from_image = ok(&[
            "create",
            "--image",
            &format!("snap{mb}:1"),
            "--max-age",
            "none",
        ]);
        let start = t.elapsed();
        println!(
            "{mb:>5} MB: commit {:>8.1} ms (frozen {frozen:>8.1} ms) | create + cp in {:>8.1} ms | create from the committed image {:>7.1} ms",
            ms(commit),
            ms(copy),
            ms(start)
        );
        for s in [fresh.trim(), from_image.trim()] {
            ok(&["rm", "-f", s]);
        }
        // `nsbox fork` of the same session, 1 and 10 forks (each then removed).
        for n in [1, 10] {
            let t = Instant::now();
            let out = ok(&["fork", "--json", &id, "--count", &n.to_string()]);
            let took = t.elapsed();
            let out: serde_json::Value = serde_json::from_str(&out).unwrap();
            let frozen = out["frozen_secs"].as_f64().unwrap_or(f64::NAN) * 1000.0;
            println!(
                "{mb:>5} MB: fork --count {n:>2} {:>8.1} ms (parent frozen {frozen:>8.1} ms)",
                ms(took)
            );
            for f in out["forks"].as_array().unwrap() {
                ok(&["rm", "-f", f.as_str().unwrap()]);
            }
        }
        ok(&["rm", "-f", &id]);
        let _ = std::fs::remove_file(&host_copy);
    }
}

/// `bb:1`: static busybox with a few applet links, imported as a rootfs tarball.
fn import_busybox(dir: &Path, ok: &dyn Fn(&[&str]) -> String) {
    let root = dir.join("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("tmp")).unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::copy(
        ["/bin/busybox", "/usr/bin/busybox"]
            .iter()
            .find(|p| Path::new(p).exists())
            .expect("busybox-static is needed"),
        root.join("bin/busybox"),
    )
    .unwrap();
    for applet in ["sh", "dd", "true", "cat"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    let tar = dir.join("rootfs.tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
    ok(&["import", tar.to_str().unwrap(), "--tag", "bb:1"]);
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn report(what: &str, samples: &mut [Duration]) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    println!(
        "{what:<32} median {:>6.2} ms  p95 {:>6.2} ms  ({} runs)",
        ms(at(0.5)),
        ms(at(0.95)),
        samples.len()
    );
}
