//! What `--credential` costs per HTTPS request: the time curl reports for one request
//! (`time_total`: connect, TLS, request, response; no process start-up) through the injecting
//! path (TLS ended and re-made by the proxy), through the plain proxied path (end-to-end TLS,
//! spliced) and direct (no nsbox), and the throughput of a large download through each. In
//! the fake internet of the integration tests (tests/integration/networld.rs). Each path
//! trusts one CA file, except the last row: the sandbox's whole bundle, as curl with no flag
//! reads it. The first table's requests say `Connection: close` (one request per connection,
//! each with its own TLS handshake); the keep-alive table sends them all on one connection
//! (one curl, many URLs), which the injecting path now carries too, each request checked
//! and injected. Those are HEAD requests: the test server (Python's http.server) writes a
//! response's head and body separately, and on a reused connection Nagle's algorithm on its
//! side meets the client's delayed ACK, 40 ms a request on every path, direct included.
//!
//!     sudo cargo bench --bench credentials   # NSBOX_BENCH_RUNS (requests, default 200),
//!                                            # NSBOX_BENCH_MIB (download, default 256)
#![allow(clippy::unwrap_used)]

use std::process::Stdio;

/// What networld.rs needs from the integration tests' support module.
mod support {
    use std::path::PathBuf;

    pub fn nsbox_bin() -> PathBuf {
        PathBuf::from(env!("CARGO_BIN_EXE_nsbox"))
    }

    pub fn probe_dir() -> PathBuf {
        let exe = std::env::current_exe().expect("bench path");
        exe.parent()
            .and_then(|deps| deps.parent())
            .map(|profile| profile.join("examples"))
            .expect("target layout")
    }

    pub fn probe_mount() -> Vec<String> {
        vec![
            "--mount".into(),
            format!("{}:/opt/nsbox-probe", probe_dir().display()),
        ]
    }

    /// A finished run (networld's `sh` returns one; this bench does not use it).
    #[derive(Debug)]
    #[allow(dead_code)]
    pub struct Run {
        pub code: i32,
        pub stdout: String,
        pub stderr: String,
    }

    impl From<std::process::Output> for Run {
        fn from(o: std::process::Output) -> Run {
            Run {
                code: o.status.code().unwrap_or(-1),
                stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
            }
        }
    }
}

#[path = "../tests/integration/networld.rs"]
mod networld;

use networld::{World, WEB4};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

const KEY: &str = "sk-bench-not-a-real-key";

fn main() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIP credentials bench: needs root (sudo cargo bench --bench credentials)");
        return;
    }
    let runs: usize = env_or("NSBOX_BENCH_RUNS", 200);
    let mib: u64 = env_or("NSBOX_BENCH_MIB", 256);
    let world = World::start();
    let big = world.dir.path().join("www").join("big.bin");
    let file = std::fs::File::create(&big).unwrap();
    file.set_len(mib << 20).unwrap();
    let url = "https://web.allowed.example/index.html";
    let big_url = "https://web.allowed.example/big.bin";
    let timing = format!(
        "for i in $(seq {runs}); do curl -sS -o /dev/null -w '%{{time_total}}\\n' $CA -H \"Connection: close\" -H \"x-api-key: $LLM_KEY\" {url}; done"
    );
    let urls: String = (0..runs).map(|_| format!("-o /dev/null {url} ")).collect();
    let keep_alive =
        format!("curl -sS --head -w '%{{time_total}}\\n' $CA -H \"x-api-key: $LLM_KEY\" {urls}");
    let download = format!("curl -sS -o /dev/null -w '%{{speed_download}}\\n' $CA {big_url}");
    println!("nsbox credentials benchmark ({runs} sequential HTTPS requests; {mib} MiB download)");
    println!(
        "load average before: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    let ca = world.dir.path().join("ca.pem").display().to_string();
    let direct = |script: &str| {
        let full = format!(
            "CA='--cacert {ca} --resolve web.allowed.example:443:{WEB4}'; LLM_KEY={KEY}; {script}"
        );
        let out = world.in_host(&["sh", "-c", &full]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let sandbox = |extra: &[&str], ca: &str, script: &str| {
        let flags = world.filtered_flags();
        let mut args: Vec<&str> = vec!["exec"];
        args.extend(flags.iter().map(String::as_str));
        args.extend_from_slice(&["--allow", "web.allowed.example"]);
        args.extend_from_slice(extra);
        let full = format!("CA='{ca}'; {script}");
        args.extend_from_slice(&["--", "sh", "-c", &full]);
        let out = world
            .nsbox_cmd(&args)
            .env("LLM_KEY", KEY)
            .env("NSBOX_EGRESS_CA_FILE", world.dir.path().join("ca.pem"))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let inject = ["--credential", "LLM_KEY=web.allowed.example"];
    let plain_ca = "--cacert /world/ca.pem";
    type Path<'a> = (&'a str, Box<dyn Fn(&str) -> String + 'a>);
    let paths: [Path; 4] = [
        ("direct (no nsbox)", Box::new(|s: &str| direct(s))),
        (
            "proxied (end-to-end TLS)",
            Box::new(|s: &str| sandbox(&[], plain_ca, s)),
        ),
        (
            "injecting (--credential)",
            Box::new(|s: &str| sandbox(&inject, "--cacert /etc/nsbox-ca.pem", s)),
        ),
        // With no flag curl reads SSL_CERT_FILE, the system roots + the sandbox CA, at every
        // start: a client-side cost a long-lived client pays once.
        (
            "injecting, whole bundle",
            Box::new(|s: &str| sandbox(&inject, "", s)),
        ),
    ];
    println!(
        "\nper request (ms)          {:>8} {:>8}   download (MiB/s)",
        "median", "p99"
    );
    let mut kept = Vec::new();
    for (name, run) in &paths {
        let mut ka: Vec<f64> = run(&keep_alive)
            .lines()
            .filter_map(|l| l.trim().parse::<f64>().ok())
            .map(|s| s * 1e3)
            .collect();
        assert_eq!(ka.len(), runs, "{name}: some keep-alive requests failed");
        ka.sort_by(|a, b| a.total_cmp(b));
        kept.push((name, percentile(&ka, 0.5), percentile(&ka, 0.99)));
        let mut samples: Vec<f64> = run(&timing)
            .lines()
            .filter_map(|l| l.trim().parse::<f64>().ok())
            .map(|s| s * 1e3)
            .collect();
        assert_eq!(samples.len(), runs, "{name}: some requests failed");
        samples.sort_by(|a, b| a.total_cmp(b));
        let speed: f64 = run(&download).trim().parse().unwrap_or(0.0);
        println!(
            "  {:<24} {:>8.2} {:>8.2}   {:>8.0}",
            name,
            percentile(&samples, 0.5),
            percentile(&samples, 0.99),
            speed / (1u64 << 20) as f64
        );
    }
    println!(
        "\nkeep-alive, one connection (ms per request) {:>8} {:>8}",
        "median", "p99"
    );
    for (name, median, p99) in kept {
        println!("  {:<24} {:>26.2} {:>8.2}", name, median, p99);
    }
}
