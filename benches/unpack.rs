//! Image benchmarks, as root:
//!
//! 1. Unpack throughput of gzip layers (a tar of /usr/bin and /usr/include, a few hundred MB,
//!    as one layer and split into four): `nsbox load` (digests verified, blobs stored, layers
//!    unpacked one per core) side by side with GNU `tar -xzf` (tar + a gzip process, layer
//!    after layer) and `umoci unpack`, interleaved, three runs each, after `sync`.
//! 2. Cold start of `nsbox exec -- /bin/true` on the host root versus `--image` (a busybox
//!    image of one and of ten layers), interleaved.
//!
//!     sudo cargo bench --bench unpack      # NSBOX_BENCH_TREE="/usr/share" to unpack another tree
//!
//! Generated layers are cached in target/tmp/bench-unpack (delete it to rebuild).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nsbox::image::digest::Digest;

#[path = "common/layout.rs"]
mod layout;
use layout::{bench_cache, build_layout, list_entries, median, tree_roots, Tmpfs};

fn main() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIP unpack bench: needs root (sudo cargo bench --bench unpack)");
        return;
    }
    let nsbox = PathBuf::from(env!("CARGO_BIN_EXE_nsbox"));
    let cache = bench_cache(env!("CARGO_TARGET_TMPDIR"));
    let roots = tree_roots();
    // In memory first (what the tools cost, without this VM's noisy disk), then on disk,
    // where "+sync" adds the time to write everything out.
    let tmpfs = Tmpfs::mount(&cache.join("tmpfs"));
    unpack_bench(&nsbox, &cache, &roots, &tmpfs.0, "tmpfs");
    drop(tmpfs);
    unpack_bench(&nsbox, &cache, &roots, &cache.join("work"), "disk");
    coldstart_bench(&nsbox);
}

/// Builds the command that unpacks into a destination directory.
type MakeCommand<'a> = Box<dyn Fn(&Path) -> Command + 'a>;

fn unpack_bench(nsbox: &Path, cache: &Path, roots: &[String], work: &Path, medium: &str) {
    let entries = list_entries(roots);
    let mut configs = Vec::new();
    for layers in [1usize, 4] {
        let mut groups: Vec<Vec<String>> = vec![Vec::new(); layers];
        for (i, e) in entries.iter().enumerate() {
            groups[i % layers].push(e.clone());
        }
        configs.push((layers, build_layout(cache, &format!("l{layers}"), &groups)));
    }
    let have_umoci = Command::new("umoci").arg("--version").output().is_ok();
    println!(
        "\nunpack throughput on {medium}: {} ({} MB uncompressed), 3 runs each, median, after sync",
        roots.join(" "),
        configs[0].1.uncompressed / 1_000_000
    );
    println!(
        "  {:<8} {:<22} {:>9} {:>10} {:>9}",
        "layers", "tool", "seconds", "MB/s", "+sync"
    );
    for (layers, bench) in &configs {
        let mut tools: Vec<(&str, MakeCommand<'_>)> = vec![
            (
                "tar -xzf (per layer)",
                Box::new(|dest: &Path| {
                    let script = bench
                        .blobs
                        .iter()
                        .map(|b| format!("tar -xzf {} -C {}", b.display(), dest.display()))
                        .collect::<Vec<_>>()
                        .join(" && ");
                    let mut c = Command::new("sh");
                    c.arg("-c")
                        .arg(format!("mkdir -p {} && {script}", dest.display()));
                    c
                }),
            ),
            (
                "nsbox load",
                Box::new(|dest: &Path| {
                    let mut c = Command::new(nsbox);
                    c.arg("--state-root")
                        .arg(dest)
                        .arg("load")
                        .arg("-q")
                        .arg(&bench.layout);
                    c
                }),
            ),
        ];
        if have_umoci {
            tools.push((
                "umoci unpack",
                Box::new(|dest: &Path| {
                    let mut c = Command::new("umoci");
                    c.arg("unpack")
                        .arg("--image")
                        .arg(format!("{}:bench", bench.layout.display()))
                        .arg(dest);
                    c
                }),
            ));
        }
        let mut times: Vec<Vec<f64>> = vec![Vec::new(); tools.len()];
        let mut synced: Vec<Vec<f64>> = vec![Vec::new(); tools.len()];
        for _ in 0..3 {
            for (i, (name, make)) in tools.iter().enumerate() {
                let dest = work.join("dest");
                let _ = std::fs::remove_dir_all(&dest);
                sync_and_settle();
                let t = Instant::now();
                let out = make(&dest)
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .output()
                    .unwrap();
                let secs = t.elapsed().as_secs_f64();
                rustix::fs::sync();
                let with_sync = t.elapsed().as_secs_f64();
                assert!(
                    out.status.success(),
                    "{name} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                times[i].push(secs);
                synced[i].push(with_sync);
                let _ = std::fs::remove_dir_all(&dest);
            }
        }
        let mut medians = Vec::new();
        for (i, (name, _)) in tools.iter().enumerate() {
            let m = median(&mut times[i]);
            medians.push(m);
            println!(
                "  {:<8} {:<22} {:>9.2} {:>10.0} {:>9.2}",
                layers,
                name,
                m,
                bench.uncompressed as f64 / 1e6 / m,
                median(&mut synced[i])
            );
        }
        println!(
            "  {:<8} nsbox speed vs tar: {:.2}x{}",
            layers,
            medians[0] / medians[1],
            if have_umoci {
                format!(", vs umoci: {:.2}x", medians[2] / medians[1])
            } else {
                String::new()
            }
        );
    }
    let _ = std::fs::remove_dir_all(work.join("dest"));
}

fn sync_and_settle() {
    rustix::fs::sync();
    std::thread::sleep(Duration::from_millis(300));
}

/// A busybox root filesystem tar with `layers` layers, as an OCI layout; returns its dir.
fn busybox_layout(dir: &Path, layers: usize) -> PathBuf {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("busybox-static is needed (apt-get install busybox-static)");
    let root = dir.join(format!("rootfs{layers}"));
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy(&busybox, root.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", root.join("bin/true")).unwrap();
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
    let layout = dir.join(format!("bb{layers}"));
    std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    let write_blob = |bytes: &[u8]| {
        let d = Digest::of(bytes);
        std::fs::write(layout.join("blobs/sha256").join(d.hex()), bytes).unwrap();
        (d.to_string(), bytes.len())
    };
    let mut diff_ids = Vec::new();
    let mut descs = Vec::new();
    for i in 0..layers {
        let tar = if i == 0 {
            Command::new("tar")
                .arg("-C")
                .arg(&root)
                .args(["-cf", "-", "."])
                .output()
                .unwrap()
                .stdout
        } else {
            let extra = dir.join(format!("extra{layers}-{i}"));
            std::fs::create_dir_all(extra.join("etc")).unwrap();
            std::fs::write(extra.join(format!("etc/layer{i}")), format!("{i}\n")).unwrap();
            Command::new("tar")
                .arg("-C")
                .arg(&extra)
                .args(["-cf", "-", "."])
                .output()
                .unwrap()
                .stdout
        };
        diff_ids.push(Digest::of(&tar).to_string());
        let (d, s) = write_blob(&tar);
        descs.push(serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": s}));
    }
    let config = serde_json::json!({"os": "linux", "config": {"Env": ["PATH=/bin"]}, "rootfs": {"type": "layers", "diff_ids": diff_ids}});
    let (cd, cs) = write_blob(&serde_json::to_vec(&config).unwrap());
    let manifest = serde_json::json!({"schemaVersion": 2, "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs}, "layers": descs});
    let (md, ms) = write_blob(&serde_json::to_vec(&manifest).unwrap());
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": md, "size": ms, "annotations": {"org.opencontainers.image.ref.name": "latest"}}]})).unwrap()).unwrap();
    layout
}

fn coldstart_bench(nsbox: &Path) {
    let runs: usize = std::env::var("NSBOX_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let mut variants: Vec<(String, Vec<String>)> = vec![(
        "host root".into(),
        vec!["exec".into(), "--".into(), "/bin/true".into()],
    )];
    for layers in [1usize, 10] {
        let layout = busybox_layout(tmp.path(), layers);
        let out = Command::new(nsbox)
            .arg("--state-root")
            .arg(&store)
            .arg("load")
            .arg("-q")
            .arg(&layout)
            .arg("--tag")
            .arg(format!("bb:{layers}"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        variants.push((
            format!(
                "--image ({layers} layer{})",
                if layers == 1 { "" } else { "s" }
            ),
            vec![
                "--state-root".into(),
                store.display().to_string(),
                "exec".into(),
                "--image".into(),
                format!("bb:{layers}"),
                "--".into(),
                "/bin/true".into(),
            ],
        ));
    }
    for (_, args) in &variants {
        for _ in 0..5 {
            assert!(Command::new(nsbox).args(args).status().unwrap().success());
        }
    }
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for _ in 0..runs {
        for (i, (_, args)) in variants.iter().enumerate() {
            let t = Instant::now();
            let status = Command::new(nsbox)
                .args(args)
                .stdout(Stdio::null())
                .status()
                .unwrap();
            samples[i].push(t.elapsed().as_secs_f64() * 1e3);
            assert!(status.success());
        }
    }
    println!("\ncold start of /bin/true, {runs} runs each, interleaved:");
    let base = median(&mut samples[0].clone());
    for (i, (name, _)) in variants.iter().enumerate() {
        let s = &mut samples[i];
        let m = median(s);
        s.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "  {:<22} median {:>6.2} ms   p10 {:>6.2}   p90 {:>6.2}   vs host root {:.2}",
            name,
            m,
            s[s.len() / 10],
            s[s.len() * 9 / 10],
            m / base
        );
    }
}
