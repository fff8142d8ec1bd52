//! `nsbox serve`: a create claimed from the warm pool until its first command's exit, over
//! the API on the unix socket, side by side (interleaved, one run) with a cold
//! `nsbox exec -- /bin/true` and bubblewrap's cold start; then cold creates per second and
//! their p50/p99 at concurrency 1, 4 and 16.
//!
//!     sudo cargo bench --bench serve        # NSBOX_BENCH_RUNS=N (default 50)
//!
//! The warm figure is what a client waits for: the claim (personalised at claim time), then
//! `POST .../commands?wait=true` of `/bin/true` until its exit. The server's own share of a
//! claim is `nsbox_pool_claim_seconds` from /metrics.
#![allow(clippy::unwrap_used)]

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nsbox::serve::client::ServeClient;

fn percentile(samples: &mut [f64], q: f64) -> f64 {
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    samples[((samples.len() as f64 - 1.0) * q).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn report(name: &str, samples: &mut [f64]) {
    let (p10, p50, p90) = (
        percentile(samples, 0.1),
        percentile(samples, 0.5),
        percentile(samples, 0.9),
    );
    println!("{name:<34} p10 {p10:8.2} ms   p50 {p50:8.2} ms   p90 {p90:8.2} ms");
}

/// Reads one metric from /metrics (over the unix socket, with curl).
fn metric(socket: &std::path::Path, series: &str) -> f64 {
    let out = Command::new("curl")
        .args([
            "-s",
            "--unix-socket",
            socket.to_str().unwrap(),
            "localhost/metrics",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(f64::NAN)
}

fn main() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIP serve bench: needs root (sudo cargo bench --bench serve)");
        return;
    }
    let runs: usize = std::env::var("NSBOX_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let nsbox = PathBuf::from(env!("CARGO_BIN_EXE_nsbox"));
    let dir = tempfile::Builder::new()
        .prefix("nsbox-bench-serve-")
        .tempdir()
        .unwrap();
    let socket = dir.path().join("serve.sock");
    let state = dir.path().join("state");
    let run_dir = dir.path().join("run");
    let mut server = Command::new(&nsbox)
        .arg("--state-root")
        .arg(&state)
        .args([
            "serve",
            "--pool",
            "host=4",
            "--max-sandboxes",
            "64",
            "--socket",
        ])
        .arg(&socket)
        .env("NSBOX_RUN_DIR", &run_dir)
        .env_remove("NSBOX_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let api = ServeClient::unix(&socket);
    let ready = r#"nsbox_pool_size{entry="host"}"#;
    let wait_full = || {
        let deadline = Instant::now() + Duration::from_secs(60);
        while metric(&socket, ready) < 4.0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    let bwrap = Command::new("bwrap").arg("--version").output().is_ok();

    let (mut warm, mut cold, mut bw) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        wait_full();
        let t0 = Instant::now();
        let sb = api
            .create(&serde_json::json!({"env": {"RUN": "1"}}))
            .unwrap();
        let id = sb["id"].as_str().unwrap().to_string();
        let r = api
            .run(&id, &serde_json::json!({"argv": ["/bin/true"]}))
            .unwrap();
        warm.push(ms(t0.elapsed()));
        assert_eq!(r["exit_code"], 0);
        api.delete(&id).unwrap();

        let t0 = Instant::now();
        let st = Command::new(&nsbox)
            .args(["exec", "--", "/bin/true"])
            .env("NSBOX_RUN_DIR", &run_dir)
            .stdin(Stdio::null())
            .status()
            .unwrap();
        cold.push(ms(t0.elapsed()));
        assert!(st.success());

        if bwrap {
            let t0 = Instant::now();
            let st = Command::new("bwrap")
                .args(["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"])
                .args(["--unshare-all", "--die-with-parent", "/bin/true"])
                .status()
                .unwrap();
            bw.push(ms(t0.elapsed()));
            assert!(st.success());
        }
    }
    println!("{runs} runs, interleaved");
    report("warm claim + first command exit", &mut warm);
    report("cold nsbox exec -- /bin/true", &mut cold);
    if bwrap {
        report("bwrap cold start", &mut bw);
        println!(
            "warm / bwrap median: {:.2}x",
            percentile(&mut warm, 0.5) / percentile(&mut bw, 0.5)
        );
    }
    let (sum, count) = (
        metric(&socket, "nsbox_pool_claim_seconds_sum"),
        metric(&socket, "nsbox_pool_claim_seconds_count"),
    );
    println!(
        "server work per claim (nsbox_pool_claim_seconds): {:.3} ms over {count} claims",
        sum / count * 1000.0
    );

    // Cold creates (limits of their own, so never from the pool) at several concurrencies.
    for concurrency in [1usize, 4, 16] {
        let total = concurrency * 4;
        let t0 = Instant::now();
        let mut times: Vec<f64> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..concurrency)
                .map(|_| {
                    let api = api.clone();
                    scope.spawn(move || {
                        let mut mine = Vec::new();
                        for _ in 0..total / concurrency {
                            let t = Instant::now();
                            let sb = api
                                .create(&serde_json::json!({"limits": {"pids": 256}}))
                                .unwrap();
                            mine.push(ms(t.elapsed()));
                            api.delete(sb["id"].as_str().unwrap()).unwrap();
                        }
                        mine
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        let wall = t0.elapsed().as_secs_f64();
        println!(
            "cold creates, concurrency {concurrency:>2}: {:6.1}/s (with deletes)   p50 {:7.2} ms   p99 {:7.2} ms",
            total as f64 / wall,
            percentile(&mut times, 0.5),
            percentile(&mut times, 0.99)
        );
    }
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(server.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    );
    let _ = server.wait();
}
