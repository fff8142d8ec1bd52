//! Faults in the image store's writers: `nsbox load`, `pull` and `build` killed (SIGKILL) at
//! random moments of their work. faults.rs stops a sandbox at named phases; these commands'
//! work is reading, verifying, unpacking and installing blobs and layers, spread over their
//! whole run, so each kill lands after a random delay within the time an uninterrupted run
//! takes here (measured first).
//!
//! After each kill the store must be consistent as it is — every image it lists runs, with the
//! content its writer gave it — and after `nsbox prune` and `nsbox image prune` it must hold
//! nothing half-made: tmp/ empty, every blob's bytes matching its digest. (What a killed
//! build's sandbox leaves on the host is the one-shot's case in faults.rs.) Every third
//! iteration the command then runs again to its end and must make the image an uninterrupted
//! run made (the same digest for load and pull). Each test's own store, and a seed printed so
//! that a failure can be replayed (`NSBOX_FAULT_SEED`). `NSBOX_FAULT_ITERATIONS=N` runs N
//! kills per command (docs/hardening.md has a run of 200 each); the default is 6.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use sha2::Digest as _;

use crate::oci_build::*;
use crate::registry_support::*;
use crate::require_root;
use crate::support::*;

fn iterations() -> usize {
    std::env::var("NSBOX_FAULT_ITERATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(6)
}

fn seed() -> u64 {
    std::env::var("NSBOX_FAULT_SEED")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}

/// One writer of the store: the command, the image name it makes, and what `cat /marker`
/// prints in a sandbox of that image.
struct Writer<'a> {
    class: &'static str,
    args: Vec<String>,
    image: String,
    marker: &'a str,
}

impl Writer<'_> {
    fn argv(&self) -> Vec<&str> {
        self.args.iter().map(String::as_str).collect()
    }

    /// Runs the command to its end; the digest of the image it made and how long the command
    /// took.
    fn complete(&self, ctx: &StoreCtx) -> (String, Duration) {
        let started = Instant::now();
        ctx.ok(&self.argv());
        let took = started.elapsed();
        let digest = ctx.digest_of(&self.image).expect("the image is named");
        let shown = ctx.ok(&[
            "exec",
            "--image",
            &self.image,
            "--pull",
            "never",
            "--",
            "cat",
            "/marker",
        ]);
        assert_eq!(shown, self.marker, "{}: the image's content", self.class);
        (digest, took)
    }

    /// Removes every image but `keep` (the build's base), and what only they used, so the next
    /// run has all its work to do (a load also names the image after its file).
    fn forget(&self, ctx: &StoreCtx, keep: &[String]) {
        for image in ctx.images() {
            if keep.iter().any(|k| image["digest"] == k.as_str()) {
                continue;
            }
            for name in image["names"].as_array().unwrap() {
                ctx.ok(&["rmi", name.as_str().unwrap()]);
            }
        }
        ctx.ok(&["image", "prune"]);
    }
}

/// The store as it is after a kill: every image it lists runs (all its layers are there and
/// unpacked), and the writer's image, when named, has the writer's content.
fn assert_images_usable(ctx: &StoreCtx, writer: &Writer<'_>, what: &str) {
    for image in ctx.images() {
        let digest = image["digest"].as_str().unwrap();
        let run = ctx.run(&[
            "exec", "--image", digest, "--pull", "never", "--", "cat", "/marker",
        ]);
        let named = image["names"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n.as_str() == Some(writer.image.as_str()));
        if named {
            assert_eq!(
                (run.code, run.stdout.as_str()),
                (0, writer.marker),
                "{what}: image {digest}: {}",
                run.stderr
            );
        } else {
            // Another image (the build's base): it runs; it has no marker.
            assert!(
                run.code == 0 || run.stderr.contains("/marker"),
                "{what}: image {digest} does not run: {run:?}"
            );
        }
    }
}

/// After prune: nothing half-made is left, and every blob is what its name says.
fn assert_nothing_half_made(ctx: &StoreCtx, what: &str) {
    let tmp: Vec<_> = std::fs::read_dir(ctx.store().join("tmp"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(tmp.is_empty(), "{what}: left in tmp/ after prune: {tmp:?}");
    let blobs = ctx.store().join("blobs/sha256");
    for entry in std::fs::read_dir(&blobs).into_iter().flatten().flatten() {
        let bytes = std::fs::read(entry.path()).unwrap();
        let hex: String = sha2::Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            entry.file_name().to_string_lossy(),
            hex,
            "{what}: a blob whose bytes are not its digest"
        );
    }
}

/// Kills `writer` at random moments, `iterations()` times; checks the store after each.
fn kill_at_random_moments(ctx: &StoreCtx, writer: &Writer<'_>) {
    // Tests that prune with no minimum age would take the build's sandbox from under it.
    let _serial = prune_lock();
    let seed = seed();
    eprintln!("{}: NSBOX_FAULT_SEED={seed}", writer.class);
    let mut rng = Lcg(seed);
    // The image an uninterrupted run makes, and how long that run takes.
    let keep: Vec<String> = ctx
        .images()
        .iter()
        .map(|i| i["digest"].as_str().unwrap().to_string())
        .collect();
    let (reference, took) = writer.complete(ctx);
    let window = took.as_micros() as u64 * 11 / 10;
    writer.forget(ctx, &keep);
    let n = iterations();
    let (mut finished_first, mut killed) = (0, 0);
    for i in 0..n {
        let delay = rng.next() % window.max(1);
        let what = format!("{} #{i} (killed after {delay} µs)", writer.class);
        let mut child = ctx
            .cmd(&writer.argv())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros(delay));
        match child.try_wait().unwrap() {
            Some(_) => finished_first += 1,
            None => {
                let _ = child.kill(); // SIGKILL
                killed += 1;
            }
        }
        let _ = child.wait();
        assert_images_usable(ctx, writer, &what);
        // The default minimum age: another test run's sandbox being created right now is not
        // this test's to remove (the store's leftovers are image prune's, whatever their age).
        let pruned = ctx.run(&["prune", "--older-than", "0s"]);
        assert_eq!(pruned.code, 0, "{what}: prune: {pruned:?}");
        ctx.ok(&["image", "prune"]);
        assert_nothing_half_made(ctx, &what);
        assert_images_usable(ctx, writer, &what);
        if i % 3 == 2 {
            let (again, _) = writer.complete(ctx);
            if writer.class != "build" {
                assert_eq!(
                    again, reference,
                    "{what}: a run after the kill made another image"
                );
            }
        }
        writer.forget(ctx, &keep);
    }
    eprintln!(
        "{}: {killed} kills in {n} runs ({finished_first} ended before their moment), store consistent",
        writer.class
    );
}

/// An image of busybox and one layer with /marker and `mib` MiB that does not compress (the
/// layer stored uncompressed: the test's own gzip would cost more than the test).
fn marked_layout(dir: &Path, marker: &str, mib: usize) {
    let mut layout = Layout::new(dir);
    let mut t = Tar::default();
    t.file("marker", 0o644, marker.as_bytes())
        .file("payload", 0o644, &noise(11, mib << 20));
    layout.image(
        Some("1"),
        &[(base_layer(), Comp::Gzip), (t.finish(), Comp::None)],
        serde_json::json!({"Env": ["PATH=/bin"]}),
    );
}

#[test]
fn store_faults_load_killed_at_random_moments_leaves_a_consistent_store() {
    require_root!();
    let ctx = StoreCtx::new();
    marked_layout(&ctx.path("layout"), "loaded\n", 16);
    let writer = Writer {
        class: "load",
        args: vec![
            "load".into(),
            ctx.path("layout").display().to_string(),
            "--tag".into(),
            "faulty:1".into(),
        ],
        image: "faulty:1".into(),
        marker: "loaded\n",
    };
    kill_at_random_moments(&ctx, &writer);
}

#[test]
fn store_faults_pull_killed_at_random_moments_leaves_a_consistent_store() {
    require_root!();
    if !tools_present() {
        return;
    }
    let registry = LocalRegistry::start(Auth::None);
    let ctx = StoreCtx::new();
    marked_layout(&ctx.path("layout"), "pulled\n", 16);
    registry.push(&ctx.path("layout"), "1", "faults/pulled:1", false);
    let reference = format!("{}/faults/pulled:1", registry.host());
    let writer = Writer {
        class: "pull",
        args: vec!["pull".into(), reference.clone()],
        image: reference.clone(),
        marker: "pulled\n",
    };
    kill_at_random_moments(&ctx, &writer);
}

#[test]
fn store_faults_build_killed_at_random_moments_leaves_a_consistent_store() {
    require_root!();
    let ctx = StoreCtx::new();
    marked_layout(&ctx.path("base"), "base\n", 1);
    ctx.ok(&[
        "load",
        ctx.path("base").to_str().unwrap(),
        "--tag",
        "base:1",
    ]);
    let recipe = ctx.path("recipe.toml");
    std::fs::write(
        &recipe,
        r#"
base = "base:1"
tag = "built:1"
setup = """
head -c 8000000 /dev/urandom > /opt-payload
echo built > /marker
"""
"#,
    )
    .unwrap();
    let writer = Writer {
        class: "build",
        args: vec![
            "build".into(),
            "--file".into(),
            recipe.display().to_string(),
        ],
        image: "built:1".into(),
        marker: "built\n",
    };
    kill_at_random_moments(&ctx, &writer);
}
