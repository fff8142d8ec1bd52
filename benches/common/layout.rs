//! Shared by the image benchmarks: OCI layouts made of real trees (gzip layers), medians.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nsbox::image::digest::Digest;

/// One OCI layout: its directory, and each layer's gzip blob.
pub struct Bench {
    pub layout: PathBuf,
    pub blobs: Vec<PathBuf>,
    pub uncompressed: u64,
}

/// The directory where the benches keep their layouts between runs (shared by the
/// unpack and pull benches: both use the same tree).
pub fn bench_cache(target_tmpdir: &str) -> PathBuf {
    let cache = PathBuf::from(target_tmpdir).join("bench-unpack");
    std::fs::create_dir_all(&cache).unwrap();
    cache
}

/// The host directories whose files make the benches' layers: `NSBOX_BENCH_TREE`
/// (space-separated), by default /usr/bin and /usr/include.
pub fn tree_roots() -> Vec<String> {
    let tree = std::env::var("NSBOX_BENCH_TREE").unwrap_or_else(|_| "/usr/bin /usr/include".into());
    tree.split_whitespace().map(String::from).collect()
}

pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// The entries directly below each root (their subtrees go along), sorted.
pub fn list_entries(roots: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for root in roots {
        let mut names: Vec<String> = std::fs::read_dir(root)
            .unwrap()
            .flatten()
            .map(|e| {
                format!(
                    "{}/{}",
                    root.trim_start_matches('/'),
                    e.file_name().to_string_lossy()
                )
            })
            .collect();
        names.sort();
        out.extend(names);
    }
    out
}

/// Builds (or reuses) an OCI layout whose layers are tars of `groups`, gzip level 6.
pub fn build_layout(cache: &Path, name: &str, groups: &[Vec<String>]) -> Bench {
    let layout = cache.join(name);
    let done = layout.join("done");
    let blobs_dir = layout.join("blobs/sha256");
    if !done.exists() {
        let _ = std::fs::remove_dir_all(&layout);
        std::fs::create_dir_all(&blobs_dir).unwrap();
        eprintln!(
            "(building the {name} benchmark layout once; cached in {})",
            cache.display()
        );
        let layers: Vec<(String, String, u64, u64)> = std::thread::scope(|s| {
            let handles: Vec<_> = groups
                .iter()
                .map(|group| {
                    let blobs_dir = blobs_dir.clone();
                    s.spawn(move || {
                        let list = group.join("\n");
                        let mut child = Command::new("tar")
                            .args(["-C", "/", "--no-recursion", "-cf", "-", "--files-from", "-"])
                            .stdin(Stdio::piped())
                            .stdout(Stdio::piped())
                            .spawn()
                            .unwrap();
                        // --no-recursion with explicit lists would drop subtrees: list them.
                        let mut all = Vec::new();
                        for entry in list.lines() {
                            walk(Path::new("/").join(entry).as_path(), entry, &mut all);
                        }
                        let mut stdin = child.stdin.take().unwrap();
                        let input = all.join("\n");
                        let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
                        let out = child.wait_with_output().unwrap();
                        writer.join().unwrap().unwrap();
                        let tar = out.stdout;
                        let diff_id = Digest::of(&tar);
                        let mut gz =
                            flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
                        gz.write_all(&tar).unwrap();
                        let blob = gz.finish().unwrap();
                        let digest = Digest::of(&blob);
                        std::fs::write(blobs_dir.join(digest.hex()), &blob).unwrap();
                        (
                            diff_id.to_string(),
                            digest.to_string(),
                            blob.len() as u64,
                            tar.len() as u64,
                        )
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let write_blob = |bytes: &[u8]| {
            let d = Digest::of(bytes);
            std::fs::write(blobs_dir.join(d.hex()), bytes).unwrap();
            (d.to_string(), bytes.len())
        };
        let config = serde_json::json!({"architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.0.clone()).collect::<Vec<_>>()}});
        let (cd, cs) = write_blob(&serde_json::to_vec(&config).unwrap());
        let manifest = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
            "layers": layers.iter().map(|l| serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": l.1, "size": l.2})).collect::<Vec<_>>()});
        let (md, ms) = write_blob(&serde_json::to_vec(&manifest).unwrap());
        std::fs::write(
            layout.join("oci-layout"),
            r#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();
        std::fs::write(
            layout.join("index.json"),
            serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": md, "size": ms, "annotations": {"org.opencontainers.image.ref.name": "bench"}}]})).unwrap(),
        )
        .unwrap();
        let sizes: Vec<String> = layers.iter().map(|l| format!("{} {}", l.1, l.3)).collect();
        std::fs::write(&done, sizes.join("\n")).unwrap();
    }
    let info = std::fs::read_to_string(&done).unwrap();
    let mut blobs = Vec::new();
    let mut uncompressed = 0;
    for line in info.lines() {
        let (digest, size) = line.split_once(' ').unwrap();
        blobs.push(blobs_dir.join(digest.trim_start_matches("sha256:")));
        uncompressed += size.parse::<u64>().unwrap();
    }
    Bench {
        layout,
        blobs,
        uncompressed,
    }
}

pub fn walk(path: &Path, rel: &str, out: &mut Vec<String>) {
    out.push(rel.to_string());
    let Ok(meta) = path.symlink_metadata() else {
        return;
    };
    if meta.is_dir() {
        let mut children: Vec<_> = std::fs::read_dir(path)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        children.sort();
        for c in children {
            let c = c.to_string_lossy().into_owned();
            walk(&path.join(&c), &format!("{rel}/{c}"), out);
        }
    }
}

/// A tmpfs mounted for the bench, unmounted when dropped.
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    pub fn mount(dir: &Path) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=6g,mode=0700", "nsbox-bench"])
            .arg(dir)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mounting a tmpfs for the bench failed");
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}
