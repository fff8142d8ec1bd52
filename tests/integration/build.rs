//! `nsbox build` and `nsbox setup`: recipes built on a busybox image the test makes, the
//! result run, unchanged recipes skipped, changed ones rebuilt, failing setups and bad
//! recipes refused with nothing tagged, and a build whose network reaches only the recipe's
//! hosts (in the fake internet of `networld`).

use std::path::{Path, PathBuf};

use crate::oci_build::*;
use crate::require_root;
use crate::support::*;

struct Ctx(StoreCtx);

impl std::ops::Deref for Ctx {
    type Target = StoreCtx;
    fn deref(&self) -> &StoreCtx {
        &self.0
    }
}

impl Ctx {
    /// A store with `base:1` (busybox, with a /data/old file to delete) loaded.
    fn new() -> Ctx {
        let ctx = Ctx(StoreCtx::new());
        let mut layout = Layout::new(&ctx.path("base"));
        let mut t = Tar::default();
        t.dir("data/", 0o755)
            .file("data/old", 0o644, b"old\n")
            .file("data/keep", 0o644, b"keep\n");
        layout.image(
            Some("1"),
            &[(base_layer(), Comp::Gzip), (t.finish(), Comp::Gzip)],
            serde_json::json!({"Env": ["PATH=/bin", "FROM_BASE=yes"]}),
        );
        ctx.ok(&["load", ctx.path("base").to_str().unwrap()]);
        ctx
    }

    fn recipe(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn build(&self, recipe: &Path) -> Run {
        self.run(&["build", "--file", recipe.to_str().unwrap()])
    }

    fn image_count(&self) -> usize {
        self.images().len()
    }
}

const RECIPE: &str = r#"
description = "a test devbox"
base = "base:1"
tag = "devbox:1"
setup = """
mkdir -p /opt/tool/bin
echo tool-v1 > /opt/tool/version
echo '#!/bin/sh' > /opt/tool/bin/hello && echo 'echo hello from the tool' >> /opt/tool/bin/hello
chmod 755 /opt/tool/bin/hello
ln -s /opt/tool/version /opt/tool/current
rm /data/old
echo changed > /data/keep
"""
env = { TOOL_HOME = "/opt/tool" }
"#;

#[test]
fn a_recipe_builds_runs_and_is_skipped_when_unchanged() {
    require_root!();
    let ctx = Ctx::new();
    let recipe = ctx.recipe("devbox.toml", RECIPE);
    let run = ctx.build(&recipe);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.starts_with("built devbox:1"), "{}", run.stdout);
    let first = ctx.digest_of("devbox:1").expect("tagged");

    let run = ctx.run(&[
        "exec",
        "--image",
        "devbox:1",
        "--",
        "sh",
        "-c",
        "cat /opt/tool/version; /opt/tool/bin/hello; readlink /opt/tool/current; echo $TOOL_HOME $FROM_BASE; ls /data; cat /data/keep; stat -c %a /opt/tool/version",
    ]);
    assert_eq!(
        run.stdout,
        "tool-v1\nhello from the tool\n/opt/tool/version\n/opt/tool yes\nkeep\nchanged\n644\n",
        "{}",
        run.stderr
    );
    // Not captured: what nsbox writes into every sandbox (every sandbox writes its own
    // /etc/hostname, so the built layer itself is looked at).
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ctx.store().join("index.json")).unwrap())
            .unwrap();
    let image = index["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["digest"] == first.as_str())
        .expect("the built image in the index");
    let top = image["layers"].as_array().unwrap().last().unwrap()["diff_id"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    let layer = ctx.store().join("layers").join(top);
    assert!(
        layer.join("opt/tool/version").exists(),
        "the recipe's files are in it"
    );
    for nsbox_file in [
        "etc/hostname",
        "etc/hosts",
        "etc/resolv.conf",
        "etc/passwd",
        "etc/group",
    ] {
        assert!(
            std::fs::symlink_metadata(layer.join(nsbox_file)).is_err(),
            "{nsbox_file} was captured"
        );
    }

    // Unchanged: skipped (and no new image).
    let run = ctx.build(&recipe);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.starts_with("unchanged devbox:1"),
        "{}",
        run.stdout
    );
    assert_eq!(ctx.digest_of("devbox:1").unwrap(), first);
    // Comments, the description and key order do not count.
    let reordered = format!(
        "# reformatted\n{}",
        RECIPE.replace("a test devbox", "renamed")
    );
    let run = ctx.build(&ctx.recipe("devbox.toml", &reordered));
    assert!(run.stdout.starts_with("unchanged"), "{}", run.stdout);

    // A changed recipe rebuilds; the image it replaces goes.
    let images_before = ctx.image_count();
    let changed = RECIPE.replace("tool-v1", "tool-v2");
    let run = ctx.build(&ctx.recipe("devbox.toml", &changed));
    assert!(run.stdout.starts_with("built devbox:1"), "{}", run.stdout);
    let second = ctx.digest_of("devbox:1").unwrap();
    assert_ne!(second, first);
    assert_eq!(
        ctx.image_count(),
        images_before,
        "the old build was dropped"
    );
    let run = ctx.run(&[
        "exec",
        "--image",
        "devbox:1",
        "--",
        "cat",
        "/opt/tool/version",
    ]);
    assert_eq!(run.stdout, "tool-v2\n", "{}", run.stderr);

    // --force builds anyway; the first recipe again only retags... once it is built again.
    let run = ctx.run(&[
        "build",
        "--force",
        "--file",
        ctx.path("devbox.toml").to_str().unwrap(),
    ]);
    assert!(run.stdout.starts_with("built"), "{}", run.stdout);
    // The built image is a proper OCI image: save writes it, load reads it back.
    let archive = ctx.path("devbox.oci.tar");
    let run = ctx.run(&["save", "devbox:1", "-o", archive.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let fresh = tempfile::tempdir().unwrap();
    let out = nsbox(&[
        "--state-root",
        fresh.path().join("s").to_str().unwrap(),
        "load",
        archive.to_str().unwrap(),
        "--tag",
        "again:1",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    // Nothing of the build was left in the store's tmp/.
    let tmp: Vec<_> = std::fs::read_dir(ctx.path("store/tmp")).unwrap().collect();
    assert!(tmp.is_empty(), "{tmp:?}");
}

#[test]
fn flags_build_without_a_recipe_file_and_a_new_tag_of_a_built_recipe_is_a_retag() {
    require_root!();
    let ctx = Ctx::new();
    let run = ctx.run(&[
        "build",
        "--base",
        "base:1",
        "--setup",
        "echo made-by-flags > /made",
        "--tag",
        "flags:1",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let run = ctx.run(&["exec", "--image", "flags:1", "--", "cat", "/made"]);
    assert_eq!(run.stdout, "made-by-flags\n", "{}", run.stderr);
    let run = ctx.run(&[
        "build",
        "--base",
        "base:1",
        "--setup",
        "echo made-by-flags > /made",
        "--tag",
        "flags:2",
    ]);
    assert!(run.stdout.starts_with("tagged flags:2"), "{}", run.stdout);
    assert_eq!(ctx.digest_of("flags:1"), ctx.digest_of("flags:2"));
    // Without a tag: a clear error.
    let run = ctx.run(&["build", "--base", "base:1", "--setup", "true"]);
    assert_eq!(run.code, 121, "a usage error");
    assert!(run.stderr.contains("--tag"), "{}", run.stderr);
}

#[test]
fn a_failing_setup_fails_with_its_output_and_tags_nothing() {
    require_root!();
    let ctx = Ctx::new();
    let recipe = ctx.recipe(
        "bad.toml",
        "base = \"base:1\"\ntag = \"bad:1\"\nsetup = \"echo the-setup-said-this; echo and-this >&2; exit 7\"\n",
    );
    let before = ctx.image_count();
    let run = ctx.build(&recipe);
    assert_eq!(run.code, 125);
    assert!(
        run.stderr.contains("the-setup-said-this")
            && run.stderr.contains("and-this")
            && run.stderr.contains("exit 7")
            && run.stderr.contains("no image was tagged"),
        "{}",
        run.stderr
    );
    assert!(run.stdout.is_empty(), "{}", run.stdout);
    assert_eq!(ctx.digest_of("bad:1"), None);
    assert_eq!(ctx.image_count(), before);
    let tmp: Vec<_> = std::fs::read_dir(ctx.path("store/tmp")).unwrap().collect();
    assert!(tmp.is_empty(), "{tmp:?}");
}

#[test]
fn bad_recipes_are_refused_naming_key_and_file() {
    let ctx = Ctx(StoreCtx::new()); // no base image needed
    for (text, needle) in [
        (
            "base = \"base:1\"\ntag = \"x:1\"\ninstal = [\"git\"]\n",
            "instal",
        ),
        (
            "base = \"base:1\"\ntag = \"x:1\"\n[setup]\nscript = \"x\"\n",
            "setup",
        ),
        ("tag = \"x:1\"\nsetup = \"true\"\n", "no base image"),
        (
            "base = \"base:1\"\ntag = \"x:1\"\ninstall = [\"git && curl evil\"]\n",
            "not a package name",
        ),
        ("base = \"base:1\"\ntag = \"Bad Tag\"\n", "tag"),
    ] {
        let recipe = ctx.recipe("r.toml", text);
        let run = ctx.build(&recipe);
        assert_eq!(run.code, 121, "{text}");
        assert!(
            run.stderr.contains(needle) && run.stderr.contains("r.toml"),
            "{text}: {}",
            run.stderr
        );
    }
    assert!(!ctx.path("store/index.json").exists(), "nothing was stored");
}

#[test]
fn setup_builds_the_configured_images_and_skips_unchanged_ones() {
    require_root!();
    let ctx = Ctx::new();
    std::fs::create_dir_all(ctx.path("images")).unwrap();
    ctx.recipe(
        "images/one.toml",
        "base = \"base:1\"\ntag = \"one:1\"\nsetup = \"echo one > /which\"\n",
    );
    ctx.recipe(
        "images/two.toml",
        "base = \"base:1\"\ntag = \"two:1\"\nsetup = \"echo two > /which\"\n",
    );
    std::fs::write(
        ctx.config(),
        "[images.one]\nrecipe = \"images/one.toml\"\n[images.two]\nrecipe = \"images/two.toml\"\ntag = \"second:2\"\n",
    )
    .unwrap();
    let run = ctx.run(&["setup"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout.matches("built ").count(), 2, "{}", run.stdout);
    assert!(run.stdout.contains("built second:2"), "{}", run.stdout);
    let run = ctx.run(&["exec", "--image", "second:2", "--", "cat", "/which"]);
    assert_eq!(run.stdout, "two\n", "{}", run.stderr);

    let run = ctx.run(&["setup"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.stdout.matches("unchanged ").count(),
        2,
        "{}",
        run.stdout
    );

    ctx.recipe(
        "images/one.toml",
        "base = \"base:1\"\ntag = \"one:1\"\nsetup = \"echo one-changed > /which\"\n",
    );
    let run = ctx.run(&["setup"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("built one:1"), "{}", run.stdout);
    assert!(run.stdout.contains("unchanged second:2"), "{}", run.stdout);
}

#[test]
fn a_build_reaches_only_the_hosts_its_recipe_names() {
    require_root!();
    let w = crate::networld::World::start();
    let ctx = Ctx::new();
    std::fs::write(
        ctx.config(),
        format!(
            "[defaults.network]\ndns_upstream = [\"{}\"]\n",
            crate::networld::DNS
        ),
    )
    .unwrap();
    // Not reachable by name (busybox's own resolver: its static wget cannot resolve a refused
    // name without crashing) nor by address.
    let recipe = ctx.recipe(
        "net.toml",
        &format!(
            r#"base = "base:1"
tag = "net:1"
hosts = ["web.allowed.example"]
setup = """
busybox wget -q -O /fetched http://web.allowed.example/index.html
if busybox nslookup other.example; then echo resolved-other; exit 1; fi
if busybox wget -q -T 5 -O /stolen http://{other}/; then echo reached-other; exit 1; fi
echo only-the-named-host
"""
"#,
            other = crate::networld::OTHER4
        ),
    );
    let store = ctx.path("store");
    let config = ctx.config();
    let out: Run = w
        .nsbox_cmd(&[
            "--state-root",
            store.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
            "build",
            "--log-network",
            "--file",
            recipe.to_str().unwrap(),
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
        .into();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("only-the-named-host"), "{}", out.stderr);
    // --log-network shows what the build's network allowed and refused, on stderr.
    let logged = |prefix: &str, name: &str| {
        out.stderr
            .lines()
            .any(|l| l.starts_with(prefix) && l.contains(name))
    };
    assert!(
        logged("nsbox: dns allowed", "web.allowed.example"),
        "{}",
        out.stderr
    );
    assert!(
        logged("nsbox: dns refused", "other.example"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.contains("built net:1"), "{}", out.stdout);
    let run = ctx.run(&["exec", "--image", "net:1", "--", "cat", "/fetched"]);
    assert_eq!(
        run.stdout, "hello from the fake internet\n",
        "{}",
        run.stderr
    );
}

#[test]
fn installs_on_a_base_without_a_package_manager_are_refused_before_any_sandbox() {
    require_root!();
    let ctx = Ctx::new(); // busybox only
    let recipe = ctx.recipe(
        "r.toml",
        "base = \"base:1\"\ntag = \"x:1\"\ninstall = [\"git\"]\n",
    );
    let run = ctx.build(&recipe);
    assert_eq!(run.code, 121, "{run:?}");
    assert!(
        run.stderr.contains(
            "the base base:1 has no package manager nsbox knows (apt-get, apk, dnf, yum) to install git"
        ),
        "{}",
        run.stderr
    );
    // Not the script's own complaint from inside a started sandbox, nor a "setup" failure.
    assert!(!run.stderr.contains("nsbox build:"), "{}", run.stderr);
    assert!(!run.stderr.contains("setup failed"), "{}", run.stderr);
    assert_eq!(ctx.image_count(), 1, "only the base");
}
