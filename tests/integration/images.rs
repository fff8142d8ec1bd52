//! Images: load (OCI layouts, OCI and docker-save archives), import, save, tag, rmi, prune,
//! and `exec --image` — what the sandbox sees of an image's layers, its run defaults, and
//! the hostile-layer corpus (one test per case of SECURITY.md's image list: each keeps a
//! canary tree outside the store that must stay unchanged, and checks the store stays
//! consistent). Every image is built by the test itself.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::oci_build::*;
use crate::require_root;
use crate::support::*;

/// A test's own state root (parallel tests never share a store) and scratch space.
struct Ctx {
    tmp: tempfile::TempDir,
}

impl Ctx {
    fn new() -> Ctx {
        Ctx {
            tmp: tempfile::tempdir().unwrap(),
        }
    }

    fn store(&self) -> PathBuf {
        self.tmp.path().join("store")
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    fn run(&self, args: &[&str]) -> Run {
        let store = self.store();
        let mut full = vec!["--state-root", store.to_str().unwrap()];
        full.extend_from_slice(args);
        nsbox(&full)
    }

    fn load(&self, path: &Path) -> Run {
        self.run(&["load", path.to_str().unwrap()])
    }

    fn load_ok(&self, path: &Path) -> String {
        let run = self.load(path);
        assert_eq!(run.code, 0, "load failed: {}", run.stderr);
        run.stdout
    }

    fn exec(&self, image: &str, flags: &[&str], cmd: &[&str]) -> Run {
        let mut args = vec!["exec", "--image", image];
        args.extend_from_slice(flags);
        if !cmd.is_empty() {
            args.push("--");
            args.extend_from_slice(cmd);
        }
        self.run(&args)
    }

    fn images(&self) -> Vec<serde_json::Value> {
        let run = self.run(&["images", "--json"]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        serde_json::from_str::<serde_json::Value>(&run.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    /// Every file of the store, with sizes (to compare before and after a failed command).
    fn store_listing(&self) -> Vec<(String, u64)> {
        listing(&self.store())
    }

    /// No image, no layer, no blob, no leftover: what a refused load must leave.
    fn assert_store_clean(&self) {
        assert!(self.images().is_empty(), "no image was added");
        for dir in ["layers", "tmp", "blobs/sha256"] {
            let entries: Vec<_> = std::fs::read_dir(self.store().join(dir))
                .map(|d| d.flatten().map(|e| e.file_name()).collect())
                .unwrap_or_default();
            assert!(entries.is_empty(), "{dir} is not empty: {entries:?}");
        }
    }

    /// A canary tree next to the store: hostile layers aim at it.
    fn canary(&self) -> PathBuf {
        let dir = self.path("canary");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("file"), "canary\n").unwrap();
        std::fs::write(dir.join("sub/inner"), "inner\n").unwrap();
        std::os::unix::fs::symlink("file", dir.join("link")).unwrap();
        dir
    }
}

fn listing(root: &Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let meta = e.path().symlink_metadata().unwrap();
            out.push((
                e.path().display().to_string(),
                if meta.is_dir() { 0 } else { meta.len() },
            ));
            if meta.is_dir() {
                stack.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// Everything about a tree that a write through it could change.
fn snapshot(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = path.symlink_metadata().unwrap();
        let mut xattrs = vec![0u8; 4096];
        let n = rustix::fs::llistxattr(&path, &mut xattrs).unwrap_or(0);
        let mut desc = format!(
            "mode={:o} uid={} gid={} size={} mtime={} xattrs={:?}",
            meta.mode(),
            meta.uid(),
            meta.gid(),
            meta.len(),
            meta.mtime(),
            String::from_utf8_lossy(&xattrs[..n])
        );
        if meta.is_file() {
            desc += &format!(" data={:?}", std::fs::read(&path).unwrap());
        } else if meta.file_type().is_symlink() {
            desc += &format!(" link={:?}", std::fs::read_link(&path).unwrap());
        } else if meta.is_dir() {
            for e in std::fs::read_dir(&path).unwrap().flatten() {
                stack.push(e.path());
            }
        }
        out.insert(path.display().to_string(), desc);
    }
    out
}

fn lines(run: &Run) -> Vec<String> {
    run.stdout.lines().map(String::from).collect()
}

/// The image of most tests: busybox base, then three layers exercising whiteouts, opaque
/// directories, hardlinks, symlinks, owners, modes, mtimes, long names and xattrs, each with
/// another compression.
fn layered_layout(dir: &Path) -> (Layout, Built) {
    layered_layout_with(dir, Comp::Zstd)
}

/// [`layered_layout`] with the third layer compressed as `third` (Docker formats have no zstd).
fn layered_layout_with(dir: &Path, third: Comp) -> (Layout, Built) {
    let mut l2 = Tar::default();
    l2.dir("old/", 0o755)
        .file("old/gone.txt", 0o644, b"gone\n")
        .file("old/stays.txt", 0o644, b"stays\n")
        .dir("opq/", 0o755)
        .file("opq/a", 0o644, b"a\n")
        .file("opq/b", 0o644, b"b\n")
        .dir("keep/", 0o755);
    let mut x = Entry::new("keep/x", b'0', 0o640);
    x.uid = 1000;
    x.gid = 50;
    x.mtime = 1_234_567_890;
    l2.entry(x, b"x-data\n")
        .hardlink("keep/hl", "keep/x")
        .symlink("etc/motd-link", "/etc/motd")
        .file(&format!("long/{}", "n".repeat(150)), 0o644, b"long\n");
    let mut l3 = Tar::default();
    l3.file("old/.wh.gone.txt", 0o644, b"")
        .file("opq/.wh..wh..opq", 0o644, b"")
        .file("opq/c", 0o644, b"c\n")
        .file("etc/motd", 0o644, b"motd\n")
        .dir("work/", 0o777);
    let mut l4 = Tar::default();
    let mut top = Entry::new("top", b'0', 0o644);
    top.xattrs = vec![
        ("user.note", b"hi"),
        ("security.selinux", b"system_u:object_r:x"),
    ];
    l4.entry(top, b"top\n");
    let mut dev = Entry::new("dev-mem", b'3', 0o666);
    dev.link = "";
    l4.entry(dev, b"");
    let mut layout = Layout::new(dir);
    let built = layout.image(
        Some("v1"),
        &[
            (base_layer(), Comp::Gzip),
            (l2.finish(), Comp::Gzip),
            (l3.finish(), third),
            (l4.finish(), Comp::None),
        ],
        serde_json::json!({
            "Env": ["PATH=/bin", "IMG=from-image"],
            "Cmd": ["sh", "-c", "echo from-cmd; pwd"],
            "WorkingDir": "/work",
            "User": "app",
        }),
    );
    (layout, built)
}

/// Issue 10, finding 8: an image sandbox maps to a host id range of its own (not the shared
/// range its layers are stored in), and still sees the layers' owners as built, through
/// idmapped layers; a file it writes belongs to its own range on the host.
#[test]
fn shared_kernel_counters_image_sandbox_has_its_own_host_ids() {
    require_root!();
    let ctx = Ctx::new();
    let (layout, _) = layered_layout(&ctx.path("layout"));
    ctx.load_ok(&layout.dir);
    let out = tempfile::tempdir().unwrap();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    std::fs::set_permissions(out.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let rw = format!("{}:/out:rw", out.path().display());
    let run = ctx.exec(
        "layout:v1",
        &["--mount", &rw],
        &[
            "sh",
            "-c",
            "cat /proc/self/uid_map; stat -c '%u:%g' /keep/x /etc/passwd; touch /out/f",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    // nsbox found out (and noted) whether the kernel can; this threaded test could not.
    if !nsbox::idrange::idmapped_layers_supported(nsbox::idrange::run_dir()) {
        eprintln!("SKIP shared_kernel_counters_image_sandbox_has_its_own_host_ids: this kernel's overlayfs takes no idmapped detached layers (image sandboxes keep the shared range)");
        return;
    }
    let lines = lines(&run);
    let base: u32 = lines[0].split_whitespace().nth(1).unwrap().parse().unwrap();
    assert_ne!(base, nsbox::ids::DEFAULT_UID_BASE, "{lines:?}");
    assert_eq!(
        lines[1..],
        ["1000:50", "0:0"],
        "the layers' owners as built"
    );
    let written = std::fs::metadata(out.path().join("f")).unwrap().uid();
    assert!(
        (base..base + nsbox::ids::IDS_IN_SANDBOX).contains(&written),
        "the workload writes as its own range: {written} (range at {base})"
    );
}

#[test]
fn image_layers_show_through_overlay_as_built() {
    require_root!();
    let ctx = Ctx::new();
    let (layout, built) = layered_layout(&ctx.path("layout"));
    let out = ctx.load_ok(&layout.dir);
    assert!(out.contains("loaded layout:v1"), "{out}");
    let script =
        "ls /old; echo ---; ls /opq; echo ---; cat /keep/x; stat -c '%u:%g %a %Y' /keep/x; \
        [ $(stat -c %i /keep/x) = $(stat -c %i /keep/hl) ] && echo same-inode; \
        readlink /etc/motd-link; cat /etc/motd-link; ls /long | wc -c; \
        test -e /dev-mem || echo no-device; stat -c '%U %a' /etc/passwd /bin/busybox";
    let run = ctx.exec("layout:v1", &[], &["sh", "-c", script]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        lines(&run),
        [
            "stays.txt",
            "---",
            "c",
            "---",
            "x-data",
            "1000:50 640 1234567890",
            "same-inode",
            "/etc/motd",
            "motd",
            "151",
            "no-device",
            "root 644",
            "root 755"
        ],
        "whiteout hides gone.txt, the opaque dir hides a and b, owners/modes/mtimes/links kept"
    );
    // On the host: the xattr kept, the security one dropped, the whiteout and the opaque
    // marker made by nsbox, files owned in the sandbox's id range.
    let layer = |i: usize| {
        ctx.store()
            .join("layers")
            .join(built.diff_ids[i].trim_start_matches("sha256:"))
    };
    let mut value = [0u8; 16];
    // user.* xattrs are kept where the store's filesystem holds them (tmpfs only since
    // Linux 6.6: on older kernels the test's store in /tmp drops them, as documented).
    let probe = ctx.path("xattr-probe");
    std::fs::write(&probe, "").unwrap();
    let fs_has_user_xattrs =
        rustix::fs::setxattr(&probe, "user.probe", b"1", rustix::fs::XattrFlags::empty()).is_ok();
    match rustix::fs::getxattr(layer(3).join("top"), "user.note", &mut value) {
        Ok(n) => assert_eq!(&value[..n], b"hi"),
        Err(e) => assert!(!fs_has_user_xattrs, "user.note lost: {e}"),
    }
    assert!(rustix::fs::getxattr(layer(3).join("top"), "security.selinux", &mut value).is_err());
    let n =
        rustix::fs::getxattr(layer(2).join("opq"), "trusted.overlay.opaque", &mut value).unwrap();
    assert_eq!(&value[..n], b"y");
    let wh = std::fs::symlink_metadata(layer(2).join("old/gone.txt")).unwrap();
    assert_eq!(
        (wh.mode() & 0o170000, wh.rdev()),
        (0o020000, 0),
        "a 0/0 character device"
    );
    let x = std::fs::metadata(layer(1).join("keep/x")).unwrap();
    assert_eq!(
        (x.uid(), x.gid()),
        (
            nsbox::ids::DEFAULT_UID_BASE + 1000,
            nsbox::ids::DEFAULT_UID_BASE + 50
        )
    );
}

#[test]
fn image_run_defaults_apply_unless_overridden() {
    require_root!();
    let ctx = Ctx::new();
    let (mut layout, _) = layered_layout(&ctx.path("layout"));
    layout.image(
        Some("ep"),
        &[(base_layer(), Comp::Gzip)],
        serde_json::json!({"Entrypoint": ["/bin/echo", "ep"], "Cmd": ["default"]}),
    );
    let out = ctx.load_ok(&layout.dir);
    assert!(
        out.contains("layout:v1") && out.contains("layout:ep"),
        "several images in one layout: {out}"
    );
    // Cmd, WorkingDir, Env and User from the image.
    let run = ctx.exec("layout:v1", &[], &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout, "from-cmd\n/work\n");
    let run = ctx.exec(
        "layout:v1",
        &[],
        &["sh", "-c", "id -u; id -g; echo $IMG; echo $PATH; pwd"],
    );
    assert_eq!(
        lines(&run),
        ["1000", "1000", "from-image", "/bin", "/work"],
        "{}",
        run.stderr
    );
    // The command line wins.
    let run = ctx.exec(
        "layout:v1",
        &["-u", "7:8", "-w", "/tmp", "-e", "IMG=flag"],
        &["sh", "-c", "id -u; id -g; echo $IMG; pwd"],
    );
    assert_eq!(lines(&run), ["7", "8", "flag", "/tmp"], "{}", run.stderr);
    // Entrypoint + Cmd; arguments replace Cmd; --entrypoint replaces (or clears) Entrypoint.
    assert_eq!(ctx.exec("layout:ep", &[], &[]).stdout, "ep default\n");
    assert_eq!(ctx.exec("layout:ep", &[], &["given"]).stdout, "ep given\n");
    assert_eq!(
        ctx.exec("layout:ep", &["--entrypoint", "/bin/echo"], &["x"])
            .stdout,
        "x\n"
    );
    assert_eq!(
        ctx.exec("layout:ep", &["--entrypoint", ""], &["/bin/echo", "y"])
            .stdout,
        "y\n"
    );
    // Read-only root by default; --user 0 --writable-root writes the image's root-owned files.
    let run = ctx.exec(
        "layout:v1",
        &["-u", "0"],
        &["sh", "-c", "echo more >> /etc/motd"],
    );
    assert_ne!(run.code, 0, "the root is read-only");
    let run = ctx.exec(
        "layout:v1",
        &["-u", "0", "--writable-root"],
        &["sh", "-c", "echo more >> /etc/motd && cat /etc/motd"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout, "motd\nmore\n");
    // ... in an ephemeral layer: the next sandbox sees the image unchanged.
    assert_eq!(
        ctx.exec("layout:v1", &[], &["cat", "/etc/motd"]).stdout,
        "motd\n"
    );
    // By digest and by digest prefix.
    let digest = ctx.images()[0]["digest"].as_str().unwrap().to_string();
    let short = &digest["sha256:".len().."sha256:".len() + 12];
    for reference in [
        format!("layout@{digest}"),
        digest.clone(),
        short.to_string(),
    ] {
        let run = ctx.exec(&reference, &[], &["/bin/echo", "ok"]);
        assert_eq!(run.stdout, "ok\n", "{reference}: {}", run.stderr);
    }
}

#[test]
fn image_setuid_file_capabilities_and_devices_are_inert() {
    require_root!();
    let ctx = Ctx::new();
    let probe = std::fs::read(probe_dir().join("probe")).unwrap();
    // vfs_cap_data v2, effective, every permitted capability.
    let caps: [u8; 20] = [
        1, 0, 0, 2, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0xff, 0x01, 0, 0, 0, 0, 0, 0,
    ];
    let mut t = Tar::default();
    let mut suid = Entry::new("suid-probe", b'0', 0o4755);
    suid.xattrs = vec![("security.capability", &caps)];
    t.entry(suid, &probe);
    t.entry(Entry::new("sgid-probe", b'0', 0o2755), &probe);
    let mut dev = Entry::new("mem", b'3', 0o666);
    dev.mtime = 1;
    t.raw(&header_block(&Entry::new("kmem", b'3', 0o666), 0));
    t.entry(dev, b"");
    let mut layout = Layout::new(&ctx.path("layout"));
    let built = layout.image(
        Some("s"),
        &[(base_layer(), Comp::Gzip), (t.finish(), Comp::Gzip)],
        serde_json::json!({}),
    );
    ctx.load_ok(&layout.dir);
    for probe in ["/suid-probe", "/sgid-probe"] {
        let run = ctx.exec("layout:s", &[], &[probe, "status"]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        let v: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
        assert_eq!(
            v["Uid"], "100\t100\t100\t100",
            "{probe}: setuid root gains nothing"
        );
        assert_eq!(
            v["Gid"], "101\t101\t101\t101",
            "{probe}: setgid gains nothing"
        );
        assert_eq!(v["CapEff"], "0000000000000000");
        assert_eq!(v["CapPrm"], "0000000000000000");
    }
    let run = ctx.exec(
        "layout:s",
        &[],
        &[
            "sh",
            "-c",
            "stat -c %a /suid-probe; ls /mem /kmem 2>&1 | wc -l",
        ],
    );
    assert_eq!(
        lines(&run),
        ["4755", "2"],
        "setuid bit kept (inert), devices skipped: {}",
        run.stderr
    );
    let host = ctx
        .store()
        .join("layers")
        .join(built.diff_ids[1].trim_start_matches("sha256:"));
    let mut buf = [0u8; 64];
    assert!(
        rustix::fs::getxattr(host.join("suid-probe"), "security.capability", &mut buf).is_err(),
        "file capabilities are dropped"
    );
    let meta = std::fs::metadata(host.join("suid-probe")).unwrap();
    assert_eq!(
        meta.uid(),
        nsbox::ids::DEFAULT_UID_BASE,
        "setuid to the sandbox's root, never host root"
    );
}

#[test]
fn image_with_more_layers_than_mount_options_hold() {
    require_root!();
    let ctx = Ctx::new();
    let mut layers = vec![(base_layer(), Comp::Gzip)];
    for i in 0..300 {
        let mut t = Tar::default();
        t.file(
            &format!("layers/f{i:03}"),
            0o644,
            format!("{i}\n").as_bytes(),
        );
        if i == 299 {
            t.file("layers/.wh.f000", 0o644, b"");
        }
        layers.push((t.finish(), Comp::None));
    }
    let mut layout = Layout::new(&ctx.path("layout"));
    layout.image(Some("many"), &layers, serde_json::json!({}));
    ctx.load_ok(&layout.dir);
    let run = ctx.exec(
        "layout:many",
        &[],
        &[
            "sh",
            "-c",
            "ls /layers | wc -l; cat /layers/f001 /layers/f298",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        lines(&run),
        ["299", "1", "298"],
        "301 layers stacked, the top one whites out f000"
    );
    // Beyond overlayfs's 500 layers: a clear error, nothing left behind.
    for i in 300..500 {
        let mut t = Tar::default();
        t.file(&format!("more/f{i:03}"), 0o644, b"x");
        layers.push((t.finish(), Comp::None));
    }
    let mut layout = Layout::new(&ctx.path("layout2"));
    layout.image(Some("too-many"), &layers, serde_json::json!({}));
    ctx.load_ok(&layout.dir);
    let run = ctx.exec("layout2:too-many", &[], &["true"]);
    assert_eq!(run.code, 125, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("has 501 layers; overlayfs stacks at most 499"),
        "{}",
        run.stderr
    );
}

#[test]
fn interop_skopeo_archives_and_umoci_layouts() {
    require_root!();
    for tool in ["skopeo", "umoci"] {
        assert!(
            Command::new(tool).arg("--version").output().is_ok(),
            "{tool} is needed for this test (apt-get install {tool})"
        );
    }
    let ctx = Ctx::new();
    let (layout, _) = layered_layout_with(&ctx.path("layout"), Comp::Gzip);
    let check = |image: &str| {
        let run = ctx.exec(image, &[], &["sh", "-c", "cat /top; ls /opq"]);
        assert_eq!(run.stdout, "top\nc\n", "{image}: {}", run.stderr);
    };
    let skopeo = |args: &[&str]| {
        checked_output(Command::new("skopeo").arg("--insecure-policy").args(args));
    };
    let oci = format!("oci:{}:v1", layout.dir.display());
    // docker save format (uncompressed layers), also gzip-compressed and extracted.
    let docker = ctx.path("docker.tar");
    skopeo(&[
        "copy",
        &oci,
        &format!("docker-archive:{}:dock/er:1", docker.display()),
    ]);
    ctx.load_ok(&docker);
    check("dock/er:1");
    let gz = ctx.path("docker.tar.gz");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("gzip -c {} > {}", docker.display(), gz.display()))
        .status()
        .unwrap();
    assert!(status.success());
    let run = ctx.run(&["load", gz.to_str().unwrap(), "--tag", "gz:1"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    check("gz:1");
    let extracted = ctx.path("docker-dir");
    std::fs::create_dir(&extracted).unwrap();
    assert!(Command::new("tar")
        .arg("-xf")
        .arg(&docker)
        .arg("-C")
        .arg(&extracted)
        .status()
        .unwrap()
        .success());
    let run = ctx.run(&["load", extracted.to_str().unwrap(), "--tag", "dir:1"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    check("dir:1");
    // An OCI archive.
    let archive = ctx.path("oci-archive.tar");
    skopeo(&[
        "copy",
        &oci,
        &format!("oci-archive:{}:arch", archive.display()),
    ]);
    let run = ctx.run(&["load", archive.to_str().unwrap(), "--tag", "arch:1"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    check("arch:1");
    // A layout made by umoci from a directory.
    let umoci = |args: &[&str]| {
        checked_output(Command::new("umoci").args(args));
    };
    let u = ctx.path("umoci-layout");
    let bundle = ctx.path("bundle");
    let uref = format!("{}:u1", u.display());
    umoci(&["init", "--layout", u.to_str().unwrap()]);
    umoci(&["new", "--image", &uref]);
    umoci(&["unpack", "--image", &uref, bundle.to_str().unwrap()]);
    let rootfs = bundle.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::copy(busybox(), rootfs.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh")).unwrap();
    std::fs::write(rootfs.join("hello"), "from umoci\n").unwrap();
    umoci(&["repack", "--image", &uref, bundle.to_str().unwrap()]);
    umoci(&[
        "config",
        "--image",
        &uref,
        "--config.cmd=/bin/sh",
        "--config.cmd=-c",
        "--config.cmd=/bin/busybox cat /hello",
    ]);
    ctx.load_ok(&u);
    let run = ctx.exec("umoci-layout:u1", &[], &[]);
    assert_eq!(run.stdout, "from umoci\n", "{}", run.stderr);
    // nsbox save writes an OCI archive skopeo reads, with the same digests.
    ctx.load_ok(&layout.dir);
    let saved = ctx.path("saved.tar");
    let run = ctx.run(&["save", "layout:v1", "-o", saved.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let back = ctx.path("back");
    skopeo(&[
        "copy",
        &format!("oci-archive:{}", saved.display()),
        &format!("oci:{}:again", back.display()),
    ]);
    let other = Ctx::new();
    let out = other.load_ok(&saved);
    let original = ctx
        .images()
        .into_iter()
        .find(|i| {
            i["names"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n == "layout:v1")
        })
        .unwrap();
    assert!(
        out.contains(original["digest"].as_str().unwrap()),
        "same manifest digest after save/load: {out}"
    );
    let run = other.exec("layout:v1", &[], &["cat", "/top"]);
    assert_eq!(run.stdout, "top\n", "{}", run.stderr);
}

use std::process::Command;

#[test]
fn import_a_rootfs_tarball() {
    require_root!();
    let ctx = Ctx::new();
    let mut t = Tar::default();
    t.dir("./", 0o755)
        .dir("bin/", 0o755)
        .file("bin/busybox", 0o755, &std::fs::read(busybox()).unwrap())
        .symlink("bin/sh", "busybox")
        .file("marker", 0o600, b"imported\n");
    let file = ctx.path("rootfs.tar.gz");
    std::fs::write(&file, compress(&t.finish(), Comp::Gzip)).unwrap();
    let run = ctx.run(&["import", file.to_str().unwrap(), "--tag", "rootfs:1"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let run = ctx.exec(
        "rootfs:1",
        &["-u", "0"],
        &["sh", "-c", "/bin/busybox cat /marker; echo $PATH"],
    );
    assert_eq!(
        lines(&run),
        [
            "imported",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        ],
        "{}",
        run.stderr
    );
    let run = ctx.exec("rootfs:1", &[], &[]);
    assert_eq!(run.code, 121, "no command and no Cmd: a usage error");
    assert!(
        run.stderr.contains("has no Entrypoint or Cmd"),
        "{}",
        run.stderr
    );
}

#[test]
fn images_tag_rmi_and_prune_keep_the_store_consistent() {
    require_root!();
    let ctx = Ctx::new();
    let (mut layout, built) = layered_layout(&ctx.path("layout"));
    let small = layout.image(
        Some("small"),
        &[(base_layer(), Comp::Gzip)],
        serde_json::json!({}),
    );
    ctx.load_ok(&layout.dir);
    let images = ctx.images();
    assert_eq!(images.len(), 2);
    let big = images
        .iter()
        .find(|i| i["names"][0] == "layout:v1")
        .unwrap();
    assert_eq!(big["layers"], 4);
    assert!(
        big["size"].as_u64().unwrap() > 1 << 20,
        "sizes shown: {big}"
    );
    let table = ctx.run(&["images"]);
    assert!(
        table.stdout.contains("layout:v1") && table.stdout.contains("MiB"),
        "{}",
        table.stdout
    );
    // The base layer is shared: 4 distinct layers on disk for 5 references.
    assert_eq!(
        std::fs::read_dir(ctx.store().join("layers"))
            .unwrap()
            .count(),
        4
    );
    // Loading again unpacks nothing and keeps one copy.
    ctx.load_ok(&layout.dir);
    assert_eq!(ctx.images().len(), 2);

    assert_eq!(ctx.run(&["tag", "layout:small", "other:2"]).code, 0);
    let run = ctx.exec("other:2", &[], &["/bin/echo", "tagged"]);
    assert_eq!(run.stdout, "tagged\n", "{}", run.stderr);
    // Removing one of two names keeps the image.
    let run = ctx.run(&["rmi", "layout:small"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        ctx.exec("other:2", &[], &["/bin/echo", "still"]).stdout,
        "still\n"
    );
    // Removing the last name removes the image and the layers only it used.
    let run = ctx.run(&["rmi", "layout:v1"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("deleted"), "{}", run.stdout);
    let left: Vec<_> = std::fs::read_dir(ctx.store().join("layers"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        left,
        [built.diff_ids[0].trim_start_matches("sha256:")],
        "the shared base layer stays"
    );
    assert!(!ctx
        .path("store/blobs/sha256")
        .join(built.manifest.trim_start_matches("sha256:"))
        .exists());
    assert!(ctx
        .path("store/blobs/sha256")
        .join(small.manifest.trim_start_matches("sha256:"))
        .exists());
    let run = ctx.exec("layout:v1", &[], &["true"]);
    assert_eq!(run.code, 123, "image not found");
    assert!(
        run.stderr.contains("not found") && run.stderr.contains("nsbox images"),
        "{}",
        run.stderr
    );
    // rmi by digest, then prune: nothing left.
    assert_eq!(ctx.run(&["rmi", &small.manifest]).code, 0);
    let run = ctx.run(&["image", "prune"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    ctx.assert_store_clean();
}

#[test]
fn prune_never_removes_layers_a_running_sandbox_uses() {
    require_root!();
    let ctx = Ctx::new();
    let mut layout = Layout::new(&ctx.path("layout"));
    let built = layout.image(
        Some("run"),
        &[(base_layer(), Comp::Gzip)],
        serde_json::json!({}),
    );
    ctx.load_ok(&layout.dir);
    let store = ctx.store();
    let (child, _id) = start_json(&[
        "--state-root",
        store.to_str().unwrap(),
        "--image",
        "layout:run",
        "--",
        "sh",
        "-c",
        "sleep 2; cat /etc/group | wc -l",
    ]);
    let run = ctx.run(&["rmi", "layout:run"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let run = ctx.run(&["image", "prune"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("kept 1"), "{}", run.stdout);
    let layer = store
        .join("layers")
        .join(built.diff_ids[0].trim_start_matches("sha256:"));
    assert!(
        layer.join("bin/busybox").exists(),
        "the running sandbox's layer stays"
    );
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let run = ctx.run(&["image", "prune"]);
    assert!(run.stdout.contains("removed 1 layer"), "{}", run.stdout);
    ctx.assert_store_clean();
}

#[test]
fn two_loads_of_one_image_at_once_both_succeed() {
    require_root!();
    let ctx = Ctx::new();
    let (layout, built) = layered_layout(&ctx.path("layout"));
    let store = ctx.store();
    let spawn = || {
        nsbox_cmd(&[
            "--state-root",
            store.to_str().unwrap(),
            "load",
            layout.dir.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    for child in [a, b] {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(ctx.images().len(), 1);
    let mut layers: Vec<String> = std::fs::read_dir(store.join("layers"))
        .unwrap()
        .flatten()
        .map(|e| format!("sha256:{}", e.file_name().to_string_lossy()))
        .collect();
    layers.sort();
    let mut expected = built.diff_ids.clone();
    expected.sort();
    assert_eq!(layers, expected);
    assert_eq!(
        std::fs::read_dir(store.join("tmp")).unwrap().count(),
        0,
        "no leftovers"
    );
    let run = ctx.exec("layout:v1", &[], &["cat", "/top"]);
    assert_eq!(run.stdout, "top\n", "{}", run.stderr);
}

/// A bad input: exit `code` (125: nsbox failed, 121: bad usage, 123: image not found), a
/// message containing `needle`, the store as before.
fn rejects(ctx: &Ctx, code: i32, args: &[&str], needle: &str) {
    let before = ctx.store_listing();
    let run = ctx.run(args);
    assert_eq!(run.code, code, "{args:?}: {}", run.stderr);
    assert!(
        run.stderr.starts_with("nsbox: ") || run.stderr.starts_with("error: "),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains(needle),
        "{args:?}: expected '{needle}' in: {}",
        run.stderr
    );
    assert_eq!(ctx.store_listing(), before, "{args:?} changed the store");
}

#[test]
fn bad_inputs_are_refused_with_clear_errors() {
    require_root!();
    let ctx = Ctx::new();
    // A store with an image in it: failed loads must leave both alone.
    let mut good = Layout::new(&ctx.path("good"));
    let mut t = Tar::default();
    t.file("good", 0o644, b"good\n");
    good.image(
        Some("g"),
        &[(t.finish(), Comp::Gzip)],
        serde_json::json!({}),
    );
    ctx.load_ok(&good.dir);
    let junk = ctx.path("junk.tar");
    std::fs::write(&junk, "this is not an archive\n".repeat(100)).unwrap();
    rejects(
        &ctx,
        125,
        &["load", junk.to_str().unwrap()],
        "not an image archive",
    );
    rejects(&ctx, 125, &["load", "/nonexistent/image"], "does not exist");
    let rootfs = ctx.path("rootfs.tar");
    let mut t = Tar::default();
    t.file("etc/hostname", 0o644, b"x\n");
    std::fs::write(&rootfs, t.finish()).unwrap();
    rejects(
        &ctx,
        125,
        &["load", rootfs.to_str().unwrap()],
        "nsbox import",
    );

    let mut t = Tar::default();
    t.file("hello", 0o644, b"hello\n");
    let layer = t.finish();
    // A missing layer blob.
    let mut missing = Layout::new(&ctx.path("missing"));
    let built = missing.image(
        Some("m"),
        &[(layer.clone(), Comp::Gzip)],
        serde_json::json!({}),
    );
    std::fs::remove_file(missing.blob_path(&built.layer_blobs[0])).unwrap();
    rejects(
        &ctx,
        125,
        &["load", missing.dir.to_str().unwrap()],
        "is missing",
    );
    // A layer whose bytes do not match its digest (same size).
    let mut corrupt = Layout::new(&ctx.path("corrupt"));
    let built = corrupt.image(
        Some("c"),
        &[(layer.clone(), Comp::None)],
        serde_json::json!({}),
    );
    let path = corrupt.blob_path(&built.layer_blobs[0]);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[600] ^= 0x20;
    std::fs::write(&path, bytes).unwrap();
    rejects(
        &ctx,
        125,
        &["load", corrupt.dir.to_str().unwrap()],
        "digest",
    );
    // diff_ids that do not match the layers.
    let mut wrong = Layout::new(&ctx.path("wrong"));
    let mut other = Tar::default();
    other.file("other", 0o644, b"other\n");
    let built = wrong.image(
        Some("w"),
        &[(layer.clone(), Comp::Gzip)],
        serde_json::json!({}),
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(wrong.blob_path(&built.manifest)).unwrap()).unwrap();
    let config_path = wrong.blob_path(manifest["config"]["digest"].as_str().unwrap());
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
    config["rootfs"]["diff_ids"][0] =
        serde_json::json!(nsbox::image::Digest::of(&other.finish()).to_string());
    let (cd, cs) = wrong.blob(&serde_json::to_vec(&config).unwrap());
    let mut manifest2 = manifest.clone();
    manifest2["config"]["digest"] = serde_json::json!(cd);
    manifest2["config"]["size"] = serde_json::json!(cs);
    let (md, ms) = wrong.blob(&serde_json::to_vec(&manifest2).unwrap());
    std::fs::write(
        wrong.dir.join("index.json"),
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms}]})).unwrap(),
    )
    .unwrap();
    rejects(&ctx, 125, &["load", wrong.dir.to_str().unwrap()], "diff_id");
    // An unknown layer media type.
    let odd = Layout::new(&ctx.path("odd"));
    let (ld, ls) = odd.blob(&layer);
    let config = serde_json::json!({"os": "linux", "rootfs": {"type": "layers", "diff_ids": [nsbox::image::Digest::of(&layer).to_string()]}});
    let (cd, cs) = odd.blob(&serde_json::to_vec(&config).unwrap());
    let manifest = serde_json::json!({"schemaVersion": 2, "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": [{"mediaType": "application/vnd.example.squashfs", "digest": ld, "size": ls}]});
    let (md, ms) = odd.blob(&serde_json::to_vec(&manifest).unwrap());
    std::fs::write(odd.dir.join("index.json"), serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms}]})).unwrap()).unwrap();
    rejects(
        &ctx,
        125,
        &["load", odd.dir.to_str().unwrap()],
        "unknown media type 'application/vnd.example.squashfs'",
    );
    // Unknown images.
    rejects(
        &ctx,
        123,
        &["exec", "--image", "nosuch:1", "--", "true"],
        "image 'nosuch:1' not found",
    );
    rejects(
        &ctx,
        121,
        &["exec", "--image", "Bad Name", "--", "true"],
        "not a valid image name",
    );
    rejects(
        &ctx,
        123,
        &["save", "nosuch", "-o", ctx.path("x.tar").to_str().unwrap()],
        "not found",
    );
    rejects(&ctx, 123, &["rmi", "nosuch"], "not found");
    rejects(
        &ctx,
        121,
        &["exec", "--entrypoint", "x", "--", "true"],
        "--image <NAME",
    );
    assert_eq!(ctx.images().len(), 1);
    assert_eq!(
        std::fs::read_dir(ctx.store().join("tmp")).unwrap().count(),
        0
    );
}

// ---- the hostile-layer corpus ----

/// Loads a one-layer image made of `tar`, which must be refused with `needle` in the
/// message; the canary must be unchanged and the store clean.
fn refused(ctx: &Ctx, canary: &Path, tar: Vec<u8>, comp: Comp, extra: &[&str], needle: &str) {
    let before = snapshot(canary);
    let mut layout = Layout::new(&ctx.path("hostile"));
    layout.image(Some("evil"), &[(tar, comp)], serde_json::json!({}));
    let mut args = vec!["load", layout.dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    let run = ctx.run(&args);
    assert_eq!(run.code, 125, "the layer must be refused: {}", run.stderr);
    assert!(
        run.stderr.contains(needle),
        "expected '{needle}' in: {}",
        run.stderr
    );
    assert_eq!(
        snapshot(canary),
        before,
        "nothing outside the store changed"
    );
    ctx.assert_store_clean();
}

#[test]
fn hostile_layer_dotdot_names() {
    require_root!();
    let ctx = Ctx::new();
    let canary = ctx.canary();
    let mut t = Tar::default();
    t.file("a/../../../../canary/file", 0o644, b"pwned\n");
    refused(&ctx, &canary, t.finish(), Comp::Gzip, &[], "'..'");
}

#[test]
fn hostile_layer_absolute_names() {
    require_root!();
    let ctx = Ctx::new();
    let canary = ctx.canary();
    let mut t = Tar::default();
    t.file(&format!("{}/file", canary.display()), 0o644, b"pwned\n");
    refused(&ctx, &canary, t.finish(), Comp::None, &[], "absolute");
}

#[test]
fn hostile_layer_symlink_to_root_then_write_through_it() {
    require_root!();
    let ctx = Ctx::new();
    let canary = ctx.canary();
    let mut t = Tar::default();
    t.symlink("evil", "/")
        .file(&format!("evil{}/new", canary.display()), 0o644, b"pwned\n");
    refused(&ctx, &canary, t.finish(), Comp::Gzip, &[], "symlink");
    let mut t = Tar::default();
    t.symlink("c", canary.to_str().unwrap())
        .dir("c/sub/", 0o777)
        .file("c/file", 0o644, b"pwned\n");
    refused(&ctx, &canary, t.finish(), Comp::Zstd, &[], "symlink");
}

#[test]
fn hostile_layer_hardlinks_to_outside() {
    require_root!();
    let ctx = Ctx::new();
    let canary = ctx.canary();
    let mut t = Tar::default();
    t.hardlink("h", "../../../canary/file");
    refused(&ctx, &canary, t.finish(), Comp::None, &[], "'..'");
    let mut t = Tar::default();
    t.hardlink("h", &format!("{}/file", canary.display()));
    refused(&ctx, &canary, t.finish(), Comp::None, &[], "absolute");
    let mut t = Tar::default();
    t.symlink("s", canary.to_str().unwrap())
        .hardlink("h", "s/file");
    refused(&ctx, &canary, t.finish(), Comp::None, &[], "symlink");
}

#[test]
fn hostile_layer_whiteout_under_a_symlinked_parent() {
    require_root!();
    let ctx = Ctx::new();
    let canary = ctx.canary();
    let mut t = Tar::default();
    t.symlink("d", canary.to_str().unwrap())
        .file("d/.wh.file", 0o644, b"");
    refused(&ctx, &canary, t.finish(), Comp::Gzip, &[], "symlink");
}

#[test]
fn hostile_layer_opaque_marker_under_a_symlinked_parent() {
    require_root!();
    let ctx = Ctx::new();
    let canary = ctx.canary();
    let mut t = Tar::default();
    t.symlink("d", canary.join("sub").to_str().unwrap())
        .file("d/.wh..wh..opq", 0o644, b"");
    refused(&ctx, &canary, t.finish(), Comp::Gzip, &[], "symlink");
}

#[test]
fn hostile_layer_chmod_chown_through_a_symlink() {
    require_root!();
    let ctx = Ctx::new();
    let canary = ctx.canary();
    // A directory entry over a symlink would chmod/chown the link's target.
    let mut t = Tar::default();
    t.symlink("s", canary.to_str().unwrap());
    let mut e = Entry::new("s/", b'5', 0o777);
    e.uid = 4242;
    t.entry(e, b"");
    refused(
        &ctx,
        &canary,
        t.finish(),
        Comp::None,
        &[],
        "a directory entry where the layer already has a file or symlink",
    );
    // A hardlink to a symlink is a link to the link itself; metadata goes nowhere else. A
    // whiteout-less replacement of the link by a file must not write to its target either.
    let mut t = Tar::default();
    t.symlink("s", canary.join("file").to_str().unwrap())
        .hardlink("h", "s");
    let mut e = Entry::new("s", b'0', 0o777);
    e.uid = 4242;
    t.entry(e, b"replaced\n").file("../escape", 0o644, b"");
    refused(&ctx, &canary, t.finish(), Comp::None, &[], "'..'");
}

#[test]
fn hostile_layer_pax_size_desync() {
    require_root!();
    let ctx = Ctx::new();
    let canary = ctx.canary();
    // CVE-2025-62518: the PAX header says 1024 bytes of data follow the "innocent" header,
    // which says 0; a reader trusting the header would unpack the smuggled entry inside.
    let mut inner = Tar::default();
    inner.file("../../../canary/file", 0o644, b"pwned\n");
    let smuggled = inner.finish();
    let mut t = Tar::default();
    let mut e = Entry::new("innocent", b'0', 0o644);
    e.pax_size = Some(smuggled.len() as u64);
    t.entry(e, b"").raw(&smuggled);
    refused(&ctx, &canary, t.finish(), Comp::Gzip, &[], "disagrees");
}

#[test]
fn hostile_layer_truncated_gzip_and_tar() {
    require_root!();
    let ctx = Ctx::new();
    let canary = ctx.canary();
    let mut t = Tar::default();
    let data: Vec<u8> = (0..400_000u32).flat_map(|i| i.to_le_bytes()).collect();
    t.file("a", 0o644, b"first\n").file("big", 0o644, &data);
    let tar = t.finish();
    // The manifest describes the truncated blob (its digest is right): only the data is bad.
    let gz = compress(&tar, Comp::Gzip);
    let cut = gz[..gz.len() / 2].to_vec();
    let layout = Layout::new(&ctx.path("trunc"));
    let (ld, ls) = layout.blob(&cut);
    let config = serde_json::json!({"os": "linux", "rootfs": {"type": "layers", "diff_ids": [nsbox::image::Digest::of(&tar).to_string()]}});
    let (cd, cs) = layout.blob(&serde_json::to_vec(&config).unwrap());
    let manifest = serde_json::json!({"schemaVersion": 2, "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": ld, "size": ls}]});
    let (md, ms) = layout.blob(&serde_json::to_vec(&manifest).unwrap());
    std::fs::write(layout.dir.join("index.json"), serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms}]})).unwrap()).unwrap();
    let before = snapshot(&canary);
    let run = ctx.load(&layout.dir);
    assert_eq!(run.code, 125, "{}", run.stderr);
    assert!(run.stderr.contains("truncated"), "{}", run.stderr);
    assert_eq!(snapshot(&canary), before);
    ctx.assert_store_clean();
    // A tar cut inside a file's data (uncompressed), via import.
    let file = ctx.path("cut.tar");
    std::fs::write(&file, &tar[..tar.len() / 2]).unwrap();
    let run = ctx.run(&["import", file.to_str().unwrap(), "--tag", "cut:1"]);
    assert_eq!(run.code, 125, "{}", run.stderr);
    assert!(run.stderr.contains("truncated"), "{}", run.stderr);
    ctx.assert_store_clean();
}

#[test]
fn hostile_layer_digest_strings_never_become_paths() {
    require_root!();
    let ctx = Ctx::new();
    let canary = ctx.canary();
    let before = snapshot(&canary);
    let layout = Layout::new(&ctx.path("paths"));
    for digest in [
        "sha256:../../../canary/file",
        "sha256:/etc/passwd",
        "sha512:abc",
    ] {
        std::fs::write(
            layout.dir.join("index.json"),
            serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": 7}]})).unwrap(),
        )
        .unwrap();
        let run = ctx.load(&layout.dir);
        assert_eq!(run.code, 125, "{}", run.stderr);
        assert!(run.stderr.contains("sha256 digest"), "{}", run.stderr);
    }
    // A layer descriptor inside a valid manifest.
    let mut t = Tar::default();
    t.file("x", 0o644, b"x");
    let config = serde_json::json!({"os": "linux", "rootfs": {"type": "layers", "diff_ids": [nsbox::image::Digest::of(&t.finish()).to_string()]}});
    let (cd, cs) = layout.blob(&serde_json::to_vec(&config).unwrap());
    let manifest = serde_json::json!({"schemaVersion": 2, "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": "sha256:../../../../canary/file", "size": 7}]});
    let (md, ms) = layout.blob(&serde_json::to_vec(&manifest).unwrap());
    std::fs::write(layout.dir.join("index.json"), serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms}]})).unwrap()).unwrap();
    let run = ctx.load(&layout.dir);
    assert_eq!(run.code, 125, "{}", run.stderr);
    assert!(run.stderr.contains("sha256 digest"), "{}", run.stderr);
    assert_eq!(snapshot(&canary), before);
    ctx.assert_store_clean();
}

#[test]
fn hostile_layer_decompression_bomb_is_bounded() {
    require_root!();
    let ctx = Ctx::new();
    let canary = ctx.canary();
    let mut t = Tar::default();
    t.file("zeros", 0o644, &vec![0u8; 32 << 20]);
    let bomb = t.finish();
    assert!(compress(&bomb, Comp::Gzip).len() < 1 << 20);
    refused(
        &ctx,
        &canary,
        bomb.clone(),
        Comp::Gzip,
        &["--max-layer-size", "8m"],
        "decompression bomb",
    );
    let mut t = Tar::default();
    for i in 0..300 {
        t.file(&format!("f{i}"), 0o644, b"");
    }
    refused(
        &ctx,
        &canary,
        t.finish(),
        Comp::Zstd,
        &["--max-layer-entries", "100"],
        "more than 100 entries",
    );
    // A compressed archive is bounded as well before it is looked into.
    let archive = ctx.path("bomb.tar.gz");
    std::fs::write(&archive, compress(&bomb, Comp::Gzip)).unwrap();
    let run = ctx.run(&["load", archive.to_str().unwrap(), "--max-layer-size", "8m"]);
    assert_eq!(run.code, 125, "{}", run.stderr);
    assert!(run.stderr.contains("decompression bomb"), "{}", run.stderr);
    ctx.assert_store_clean();
}

#[test]
fn hostile_layer_trusted_xattrs() {
    require_root!();
    let ctx = Ctx::new();
    let canary = ctx.canary();
    let mut t = Tar::default();
    let mut e = Entry::new("d/", b'5', 0o755);
    e.xattrs = vec![("trusted.overlay.opaque", b"y")];
    t.entry(e, b"");
    refused(&ctx, &canary, t.finish(), Comp::Gzip, &[], "trusted");
}

#[test]
fn a_session_on_an_image_keeps_its_layers_until_removed() {
    require_root!();
    let ctx = Ctx::new();
    let run_dir = tempfile::Builder::new()
        .prefix("nsbox-run-")
        .tempdir()
        .unwrap();
    let store = ctx.store();
    let session = |args: &[&str]| -> Run {
        let mut full = vec!["--state-root", store.to_str().unwrap()];
        full.extend_from_slice(args);
        nsbox_cmd(&full)
            .env("NSBOX_RUN_DIR", run_dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap()
            .into()
    };
    let mut t = Tar::default();
    t.file("top", 0o644, b"session top\n");
    let mut layout = Layout::new(&ctx.path("layout"));
    let built = layout.image(
        Some("sess"),
        &[(base_layer(), Comp::Gzip), (t.finish(), Comp::Zstd)],
        serde_json::json!({"User": "app", "WorkingDir": "/tmp"}),
    );
    ctx.load_ok(&layout.dir);
    let created = session(&["create", "--image", "layout:sess"]);
    assert_eq!(created.code, 0, "{}", created.stderr);
    let id = created.stdout.trim().to_string();
    let run = session(&[
        "exec",
        "--session",
        &id,
        "--",
        "/bin/sh",
        "-c",
        "cat /top; id -u",
    ]);
    assert_eq!(lines(&run), ["session top", "1000"], "{}", run.stderr);
    // ps names the image the session runs on.
    let ps: serde_json::Value = serde_json::from_str(&session(&["ps", "--json"]).stdout).unwrap();
    assert_eq!(ps[0]["root"], "image:layout:sess", "{ps}");
    assert!(session(&["ps"]).stdout.contains("image:layout:sess"));
    // The session's supervisor holds the layers: rmi and prune leave them.
    assert_eq!(ctx.run(&["rmi", "layout:sess"]).code, 0);
    let pruned = ctx.run(&["image", "prune"]);
    assert!(pruned.stdout.contains("kept 2"), "{}", pruned.stdout);
    let run = session(&["exec", "--session", &id, "--", "/bin/cat", "/top"]);
    assert_eq!(run.stdout, "session top\n", "{}", run.stderr);
    let removed = session(&["rm", "-f", &id]);
    assert_eq!(removed.code, 0, "{}", removed.stderr);
    assert!(
        eventually(5.0, || {
            ctx.run(&["image", "prune"]);
            std::fs::read_dir(store.join("layers")).unwrap().count() == 0
        }),
        "the layers go once the session is gone"
    );
    assert!(!store
        .join("layers")
        .join(built.diff_ids[0].trim_start_matches("sha256:"))
        .exists());
    ctx.assert_store_clean();
}

#[test]
fn a_multi_platform_index_loads_this_machines_image() {
    require_root!();
    let ctx = Ctx::new();
    multi_arch_layout(&ctx.path("multi"), "2");
    let out = ctx.load_ok(&ctx.path("multi"));
    assert!(out.contains("loaded multi:2"), "{out}");
    assert_eq!(ctx.images().len(), 1, "only this machine's platform");
    let run = ctx.exec("multi:2", &[], &["/bin/cat", "/arch"]);
    assert_eq!(run.stdout, "amd64\n", "{}", run.stderr);
}

#[test]
fn a_whited_out_account_file_is_not_merged_back() {
    require_root!();
    let ctx = Ctx::new();
    let mut t = Tar::default();
    t.file("etc/.wh.passwd", 0o644, b"");
    let mut layout = Layout::new(&ctx.path("wh"));
    layout.image(
        Some("1"),
        &[(base_layer(), Comp::Gzip), (t.finish(), Comp::None)],
        serde_json::json!({}),
    );
    ctx.load_ok(&layout.dir);
    let run = ctx.exec(
        "wh:1",
        &[],
        &["sh", "-c", "grep -c app: /etc/passwd; id -un"],
    );
    assert_eq!(
        lines(&run),
        ["0", "sandbox"],
        "the deleted file's accounts stay deleted: {}",
        run.stderr
    );
}
