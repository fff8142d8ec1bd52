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
/// Runs `cmd` (no streams), SIGKILLs it `delay` µs later unless it ended first, and reaps
/// it; true when it was killed.
fn kill_after(mut cmd: std::process::Command, delay: u64) -> bool {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_micros(delay));
    let killed = child.try_wait().unwrap().is_none() && child.kill().is_ok();
    let _ = child.wait();
    killed
}

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
        if kill_after(ctx.cmd(&writer.argv()), delay) {
            killed += 1;
        } else {
            finished_first += 1;
        }
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

/// Kills for the fork test (each costs a fork, a wait past prune's minimum age and checks);
/// `NSBOX_FAULT_ITERATIONS` gives more.
const FORK_KILLS: usize = 30;

/// `nsbox fork` killed (SIGKILL) at random moments of its work: freezing the parent, copying its
/// files, making the forks. After each kill, `nsbox prune` with its default minimum age (the
/// test waits past it) must leave no half-made fork — no session directory, cgroup or mount
/// (the forks' network namespaces live only in their processes and mounts) of a fork that
/// `ps` does not show running — no snapshot image tagged, nothing in the store's tmp/, every
/// blob its digest; the parent must run on with its files; a fork that `ps` shows running must
/// be whole (the parent's files). Then the forks are removed, and after another prune no layer
/// the index does not name is left (the snapshot layer went with its last fork). The test's
/// own run directory, so `ps` and the session directories are only this test's.
#[test]
fn store_faults_fork_killed_at_random_moments_leaves_no_half_made_fork() {
    require_root!();
    let _serial = prune_lock();
    let ctx = StoreCtx::new();
    marked_layout(&ctx.path("base"), "base\n", 1);
    ctx.ok(&[
        "load",
        ctx.path("base").to_str().unwrap(),
        "--tag",
        "base:1",
    ]);
    let run_dir = RunDir::new();
    let nsbox = |args: &[&str]| -> std::process::Command {
        let mut c = ctx.cmd(args);
        c.env("NSBOX_RUN_DIR", run_dir.path());
        c
    };
    let run = |args: &[&str]| -> Run {
        nsbox(args)
            .stdin(Stdio::null())
            .output()
            .expect("run nsbox")
            .into()
    };
    let ok = |args: &[&str]| -> String {
        let r = run(args);
        assert_eq!(r.code, 0, "nsbox {args:?}: {r:?}");
        r.stdout
    };
    ok(&[
        "create",
        "--name",
        "fparent",
        "--image",
        "base:1",
        "--net",
        "none",
        "--sandbox-size",
        "256m",
        "--max-age",
        "none",
    ]);
    // Enough data that copying it is a good part of the fork's time.
    let fill = ok(&[
        "exec",
        "--session",
        "fparent",
        "--",
        "/bin/sh",
        "-c",
        "head -c 40000000 /dev/urandom > /sandbox/data && echo forked > /sandbox/marker \
         && busybox md5sum /sandbox/data",
    ]);
    let sum = fill.split_whitespace().next().unwrap().to_string();
    let whole = format!("forked\n{sum}\n");
    let shows_parents_files = |who: &str| -> Run {
        run(&[
            "exec",
            "--session",
            who,
            "--",
            "/bin/sh",
            "-c",
            "cat /sandbox/marker; busybox md5sum /sandbox/data | busybox cut -d' ' -f1",
        ])
    };
    // Running sessions by name (ps of this run directory).
    let running = || -> Vec<(String, String)> {
        let rows: serde_json::Value = serde_json::from_str(&ok(&["ps", "--json"])).unwrap();
        rows.as_array()
            .unwrap()
            .iter()
            .filter(|r| r["state"] == "running")
            .map(|r| {
                (
                    r["id"].as_str().unwrap().to_string(),
                    r["name"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    };
    let parent_id = running()
        .into_iter()
        .find(|(_, n)| n == "fparent")
        .unwrap()
        .0;
    let fork_args = ["fork", "fparent", "--count", "2", "--name", "kf"];
    // How long an uninterrupted fork takes.
    let started = Instant::now();
    ok(&fork_args);
    let window = started.elapsed().as_micros() as u64 * 11 / 10;
    for name in ["kf-1", "kf-2"] {
        assert_eq!(
            shows_parents_files(name).stdout,
            whole,
            "an uninterrupted fork"
        );
        ok(&["rm", "-f", name]);
    }

    let seed = seed();
    eprintln!("fork: NSBOX_FAULT_SEED={seed}");
    let mut rng = Lcg(seed);
    let n = std::env::var("NSBOX_FAULT_ITERATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(FORK_KILLS);
    let (mut finished_first, mut killed, mut forks_left) = (0, 0, 0);
    for i in 0..n {
        let delay = rng.next() % window.max(1);
        let what = format!("fork #{i} (killed after {delay} µs)");
        if kill_after(nsbox(&fork_args), delay) {
            killed += 1;
        } else {
            finished_first += 1;
        }
        // Past prune's default minimum age (1 s) for what the kill left.
        std::thread::sleep(Duration::from_millis(1500));
        let seen_before = run_dir.ids();
        let pruned = run(&["prune"]);
        assert_eq!(pruned.code, 0, "{what}: prune: {pruned:?}");

        let live = running();
        let live_ids: Vec<&str> = live.iter().map(|(id, _)| id.as_str()).collect();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        for id in seen_before.iter().chain(run_dir.ids().iter()) {
            if live_ids.contains(&id.as_str()) {
                continue;
            }
            assert!(
                !run_dir.path().join("sessions").join(id).exists(),
                "{what}: session directory of {id}, which is not running, after prune: {pruned:?}"
            );
            assert!(
                leftover_cgroups(id).is_empty(),
                "{what}: cgroups of {id}, which is not running: {:?}",
                leftover_cgroups(id)
            );
            assert!(
                !mounts.contains(id.as_str()),
                "{what}: mounts of {id}, which is not running"
            );
        }
        assert!(
            live.iter().any(|(id, _)| *id == parent_id),
            "{what}: the parent is gone"
        );
        assert_eq!(
            shows_parents_files("fparent").stdout,
            whole,
            "{what}: the parent's files"
        );
        for (_, name) in live.iter().filter(|(id, _)| *id != parent_id) {
            assert!(name.starts_with("kf-"), "{what}: an unknown session {name}");
            assert_eq!(
                shows_parents_files(name).stdout,
                whole,
                "{what}: fork {name}, which ps shows running"
            );
            forks_left += 1;
        }
        let images = ok(&["images"]);
        assert!(
            !images.contains("nsbox-fork"),
            "{what}: a snapshot image is still tagged: {images}"
        );
        assert_nothing_half_made(&ctx, &what);

        // The forks gone, the snapshot layer goes too.
        for (_, name) in live.iter().filter(|(id, _)| *id != parent_id) {
            ok(&["rm", "-f", name]);
        }
        ok(&["prune"]);
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(ctx.store().join("index.json")).unwrap())
                .unwrap();
        let named: std::collections::BTreeSet<String> = index["images"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|i| i["layers"].as_array().unwrap().iter())
            .map(|l| l["diff_id"].as_str().unwrap().to_string())
            .collect();
        let layers: Vec<String> = std::fs::read_dir(ctx.store().join("layers"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|l| !named.iter().any(|d| d.ends_with(l.as_str())))
            .collect();
        assert!(
            layers.is_empty(),
            "{what}: layers no image names and no fork uses: {layers:?}"
        );
    }
    ok(&["rm", "-f", "fparent"]);
    eprintln!(
        "fork: {killed} kills in {n} runs ({finished_first} ended before their moment, \
         {forks_left} forks whole after a kill), nothing half-made"
    );
}
