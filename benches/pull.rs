//! Pull benchmark, as root: a multi-layer image (gzip layers made from a tar of /usr/bin and
//! /usr/include, split into four) pushed into a real registry on loopback (Debian's
//! docker-registry, started here with a temporary config), then pulled into a runnable image
//! side by side, interleaved, three runs each (median), everything on a tmpfs:
//!
//! - `nsbox pull` into an empty store: manifest, config, layers downloaded in parallel,
//!   every digest verified, unpacked as they arrive;
//! - `skopeo copy docker://... oci:DIR` (download and verify into an OCI layout) followed by
//!   `umoci unpack` (layout → runnable root filesystem), and by `tar -xzf` per layer.
//!
//!     sudo cargo bench --bench pull      # NSBOX_BENCH_TREE="/usr/share" for another tree
//!
//! Generated layers are cached in target/tmp/bench-unpack (shared with the unpack bench).
#![allow(clippy::unwrap_used)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "common/layout.rs"]
mod layout;
use layout::{bench_cache, build_layout, list_entries, median, tree_roots, Tmpfs};

/// A registry on loopback, killed on drop.
struct Registry {
    child: Child,
    port: u16,
}

impl Registry {
    fn start(dir: &Path) -> Registry {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.join("registry-data").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry (apt-get install docker-registry)");
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the registry did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Registry { child, port }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn main() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIP pull bench: needs root (sudo cargo bench --bench pull)");
        return;
    }
    for tool in ["docker-registry", "skopeo", "umoci"] {
        if Command::new(tool).arg("--version").output().is_err() {
            eprintln!("SKIP pull bench: {tool} is not installed (see .ci/run)");
            return;
        }
    }
    let nsbox = PathBuf::from(env!("CARGO_BIN_EXE_nsbox"));
    let cache = bench_cache(env!("CARGO_TARGET_TMPDIR"));
    let roots = tree_roots();
    let entries = list_entries(&roots);
    let layers = 4usize;
    let mut groups: Vec<Vec<String>> = vec![Vec::new(); layers];
    for (i, e) in entries.iter().enumerate() {
        groups[i % layers].push(e.clone());
    }
    let bench = build_layout(&cache, &format!("l{layers}"), &groups);
    let compressed: u64 = bench
        .blobs
        .iter()
        .map(|b| std::fs::metadata(b).unwrap().len())
        .sum();

    let tmpfs = Tmpfs::mount(&cache.join("tmpfs-pull"));
    let work = tmpfs.0.clone();
    let registry = Registry::start(&work);
    let reference = format!("127.0.0.1:{}/bench/tree:1", registry.port);
    let pushed = Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:bench", bench.layout.display()))
        .arg(format!("docker://{reference}"))
        .status()
        .unwrap();
    assert!(pushed.success(), "skopeo push failed");

    let dest = work.join("dest");
    type Make<'a> = Box<dyn Fn(&Path) -> Vec<Command> + 'a>;
    let skopeo = |dir: &Path| {
        let mut c = Command::new("skopeo");
        c.args(["copy", "--quiet", "--src-tls-verify=false"])
            .arg(format!("docker://{reference}"))
            .arg(format!("oci:{}:bench", dir.join("oci").display()));
        c
    };
    let tools: Vec<(&str, Make<'_>)> = vec![
        (
            "nsbox pull",
            Box::new(|dir: &Path| {
                let mut c = Command::new(&nsbox);
                c.arg("--state-root")
                    .arg(dir.join("store"))
                    .args(["pull", "-q"])
                    .arg(&reference);
                vec![c]
            }),
        ),
        (
            "skopeo copy + umoci unpack",
            Box::new(|dir: &Path| {
                let mut u = Command::new("umoci");
                u.arg("unpack")
                    .arg("--image")
                    .arg(format!("{}:bench", dir.join("oci").display()))
                    .arg(dir.join("bundle"));
                vec![skopeo(dir), u]
            }),
        ),
        (
            "skopeo copy + tar -xzf",
            Box::new(|dir: &Path| {
                let mut t = Command::new("sh");
                t.arg("-c").arg(format!(
                    "mkdir -p {root} && for l in $(python3 -c 'import json,sys; m=json.load(open(sys.argv[1]+\"/index.json\"))[\"manifests\"][0][\"digest\"].split(\":\")[1]; print(\" \".join(x[\"digest\"].split(\":\")[1] for x in json.load(open(sys.argv[1]+\"/blobs/sha256/\"+m))[\"layers\"]))' {oci}); do tar -xzf {oci}/blobs/sha256/$l -C {root}; done",
                    root = dir.join("root").display(),
                    oci = dir.join("oci").display()
                ));
                vec![skopeo(dir), t]
            }),
        ),
    ];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); tools.len()];
    let mut copy_only: Vec<f64> = Vec::new();
    for _ in 0..3 {
        for (i, (name, make)) in tools.iter().enumerate() {
            let _ = std::fs::remove_dir_all(&dest);
            std::fs::create_dir_all(&dest).unwrap();
            rustix::fs::sync();
            std::thread::sleep(Duration::from_millis(300));
            let t = Instant::now();
            for (step, mut cmd) in make(&dest).into_iter().enumerate() {
                let out = cmd.stdout(Stdio::null()).output().unwrap();
                assert!(
                    out.status.success(),
                    "{name} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                if step == 0 && i == 1 {
                    copy_only.push(t.elapsed().as_secs_f64());
                }
            }
            times[i].push(t.elapsed().as_secs_f64());
        }
    }
    let _ = std::fs::remove_dir_all(&dest);
    drop(registry);
    println!(
        "\npull of a {layers}-layer image from a registry on loopback into a runnable root, on tmpfs: {} ({} MB uncompressed, {} MB gzip), 3 runs each, median",
        roots.join(" "),
        bench.uncompressed / 1_000_000,
        compressed / 1_000_000
    );
    println!(
        "  {:<30} {:>9} {:>12} {:>10}",
        "tool", "seconds", "MB/s (gzip)", "vs nsbox"
    );
    let nsbox_median = median(&mut times[0].clone());
    for (i, (name, _)) in tools.iter().enumerate() {
        let m = median(&mut times[i]);
        println!(
            "  {:<30} {:>9.2} {:>12.0} {:>9.2}x",
            name,
            m,
            compressed as f64 / 1e6 / m,
            m / nsbox_median
        );
    }
    println!(
        "  {:<30} {:>9.2}   (download and verify only, no unpacking)",
        "skopeo copy alone",
        median(&mut copy_only)
    );
    drop(tmpfs);
}
