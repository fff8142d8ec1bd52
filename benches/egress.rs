//! What `--net filtered` costs: start-up against `--net none` and bubblewrap, the resolver's
//! added latency per query, throughput of a large download through the egress proxy against
//! the same download without nsbox, and proxied connections per second. The network parts run
//! in the fake internet the integration tests use (tests/integration/networld.rs): nothing
//! leaves the machine.
//!
//!     sudo cargo bench --bench egress     # NSBOX_BENCH_RUNS (start-ups, default 100),
//!                                         # NSBOX_BENCH_BYTES (download, default 1 GiB)
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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

use networld::{World, DNS, TCP4};

const PROBE: &str = "/opt/nsbox-probe/probe";
const BULK_PORT: u16 = 9000;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIP egress bench: needs root (sudo cargo bench --bench egress)");
        return;
    }
    // The probe (an example) is the client and the bulk server; cargo bench does not build it.
    let built = Command::new(env!("CARGO"))
        .args(["build", "--release", "--example", "probe"])
        .status()
        .unwrap();
    assert!(built.success(), "cannot build the probe");

    let runs: usize = env_or("NSBOX_BENCH_RUNS", 100);
    let bytes: u64 = env_or("NSBOX_BENCH_BYTES", 1u64 << 30);
    println!("nsbox egress benchmark");
    // The figures are only as quiet as the machine: other work on these cores shows up in
    // every ratio below (the proxied download needs a third busy thread).
    println!(
        "load average before: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    startup(runs);

    let mut world = World::start();
    let probe = support::probe_dir().join("probe").display().to_string();
    let bulk = format!("{TCP4}:{BULK_PORT}");
    let inet = world.inet_ns.clone();
    world.spawn_server(&inet, &[&probe, "serve-bulk", &bulk]);
    resolver_latency(&world, &probe);
    throughput(&world, &probe, &bulk, bytes);
    connections(&world, &probe, &bulk);
}

/// Wall-clock time of one command, start to exit.
fn time_once(argv: &[String]) -> Duration {
    let t0 = Instant::now();
    let status = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    let elapsed = t0.elapsed();
    assert!(status.success(), "{argv:?} failed");
    elapsed
}

fn startup(runs: usize) {
    let nsbox = support::nsbox_bin().display().to_string();
    let words = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
    let mut tools: Vec<(&str, Vec<String>)> = vec![
        ("nsbox --net none", words(&format!("{nsbox} exec --net none -- /bin/true"))),
        (
            "nsbox --net filtered",
            words(&format!(
                "{nsbox} exec --net filtered --allow api.example.com --dns-upstream {DNS} -- /bin/true"
            )),
        ),
    ];
    let has_bwrap = Command::new("bwrap")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if has_bwrap {
        tools.push((
            "bwrap --unshare-all",
            words("bwrap --unshare-all --ro-bind / / --proc /proc --dev /dev /bin/true"),
        ));
    }
    for (_, argv) in &tools {
        for _ in 0..5 {
            time_once(argv);
        }
    }
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); tools.len()];
    for _ in 0..runs {
        for (i, (_, argv)) in tools.iter().enumerate() {
            samples[i].push(time_once(argv).as_secs_f64() * 1e3);
        }
    }
    println!("\nstart-up of `exec -- /bin/true`, {runs} runs each, interleaved (ms):");
    println!("  {:<22} {:>8} {:>8} {:>8}", "", "median", "p10", "p90");
    let mut medians = Vec::new();
    for (i, (name, _)) in tools.iter().enumerate() {
        let s = &mut samples[i];
        s.sort_by(|a, b| a.total_cmp(b));
        let median = percentile(s, 0.5);
        medians.push(median);
        println!(
            "  {:<22} {:>8.2} {:>8.2} {:>8.2}",
            name,
            median,
            percentile(s, 0.1),
            percentile(s, 0.9)
        );
    }
    println!(
        "  filtered / none: {:.2} (target <= 1.5)",
        medians[1] / medians[0]
    );
    if has_bwrap {
        println!(
            "  filtered / bwrap: {:.2} (target <= 3)",
            medians[1] / medians[2]
        );
    }
}

/// Runs a probe inside a filtered sandbox in the world; returns its "ok ..." detail.
fn in_sandbox(world: &World, allow: &str, probe_args: &[&str]) -> String {
    let flags = world.filtered_flags();
    let mut args: Vec<&str> = vec!["exec"];
    args.extend(flags.iter().map(String::as_str));
    args.extend_from_slice(&["--allow", allow, "--", PROBE]);
    args.extend_from_slice(probe_args);
    let out = world
        .nsbox_cmd(&args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    ok_detail(&String::from_utf8_lossy(&out.stdout), &out.stderr)
}

/// Runs the probe directly in the world's host namespace (no nsbox).
fn direct(world: &World, probe: &str, probe_args: &[&str]) -> String {
    let mut args = vec![probe];
    args.extend_from_slice(probe_args);
    let out = world.in_host(&args);
    ok_detail(&String::from_utf8_lossy(&out.stdout), &out.stderr)
}

fn ok_detail(stdout: &str, stderr: &[u8]) -> String {
    stdout
        .trim()
        .strip_prefix("ok ")
        .unwrap_or_else(|| panic!("probe failed: {stdout} {}", String::from_utf8_lossy(stderr)))
        .to_string()
}

fn two_numbers(detail: &str) -> (f64, f64) {
    let mut it = detail.split_whitespace().map(|w| w.parse::<f64>().unwrap());
    (it.next().unwrap(), it.next().unwrap())
}

fn resolver_latency(world: &World, probe: &str) {
    let name = "web.allowed.example";
    let count = "500";
    let (d50, d90) = two_numbers(&direct(world, probe, &["dnsbench", DNS, name, count]));
    let (n50, n90) = two_numbers(&in_sandbox(
        world,
        name,
        &["dnsbench", "127.0.0.53", name, count],
    ));
    println!("\nDNS round trip, {count} sequential A queries (µs):");
    println!("  {:<34} {:>8} {:>8}", "", "median", "p90");
    println!(
        "  {:<34} {:>8.0} {:>8.0}",
        "direct to the upstream (no nsbox)", d50, d90
    );
    println!(
        "  {:<34} {:>8.0} {:>8.0}",
        "through nsbox's resolver", n50, n90
    );
    println!("  added by the resolver: {:.0} µs (median)", n50 - d50);
}

fn throughput(world: &World, probe: &str, bulk: &str, bytes: u64) {
    let n = bytes.to_string();
    let allow = bulk.to_string();
    let mut direct_rates = Vec::new();
    let mut proxied_rates = Vec::new();
    for _ in 0..5 {
        direct_rates.push(two_numbers(&direct(world, probe, &["fetch", bulk, &n])).1);
        proxied_rates.push(two_numbers(&in_sandbox(world, &allow, &["fetch", bulk, &n])).1);
    }
    direct_rates.sort_by(|a, b| a.total_cmp(b));
    proxied_rates.sort_by(|a, b| a.total_cmp(b));
    let (d, p) = (direct_rates[2], proxied_rates[2]);
    println!(
        "\ndownload of {} MiB (median of 5, interleaved, MB/s):",
        bytes >> 20
    );
    println!("  without nsbox (same namespace, same route)  {d:>8.0}");
    println!("  through the egress proxy                    {p:>8.0}");
    println!("  proxied / direct: {:.2} (target >= 0.8)", p / d);
}

fn connections(world: &World, probe: &str, bulk: &str) {
    let secs = "2";
    let mut ds = Vec::new();
    let mut ps = Vec::new();
    for _ in 0..3 {
        ds.push(
            direct(world, probe, &["connloop", bulk, secs])
                .parse::<f64>()
                .unwrap(),
        );
        ps.push(
            in_sandbox(world, bulk, &["connloop", bulk, secs])
                .parse::<f64>()
                .unwrap(),
        );
    }
    ds.sort_by(|a, b| a.total_cmp(b));
    ps.sort_by(|a, b| a.total_cmp(b));
    let (d, p) = (ds[1], ps[1]);
    println!("\nsequential connections (connect, 1 byte each way, close) per second, median of 3:");
    println!("  without nsbox             {d:>8.0}");
    println!("  through the egress proxy  {p:>8.0}");
    println!("  proxied / direct: {:.2}", p / d);
}
