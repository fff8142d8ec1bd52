//! `nsbox pull`, `login`, `logout` and `exec --image --pull` against a real registry on
//! loopback (Debian's docker-registry, see `registry_support`), once without auth, once with
//! htpasswd basic auth, once behind token auth; images built by the test and pushed with
//! skopeo. Faults (a corrupt blob, a dropped connection, a registry that goes away mid-pull)
//! are real too: a corrupted file in the registry's storage, a proxy that cuts connections.

use std::path::Path;

use crate::oci_build::*;
use crate::registry_support::*;
use crate::require_root;
use crate::support::*;

/// A test's own store, config and docker config (nothing of the host's is read).
type Ctx = StoreCtx;

/// A registry with `auth`, a test context, and the hello image (saying `greeting`) pushed
/// as `repo_tag`; None (after a SKIP) when the tools are missing. Returns the reference.
fn hello_registry(
    auth: Auth,
    repo_tag: &str,
    greeting: &str,
) -> Option<(LocalRegistry, Ctx, String)> {
    if !tools_present() {
        return None;
    }
    let registry = LocalRegistry::start(auth);
    let ctx = Ctx::new();
    hello_layout(&ctx.path("hello"), greeting);
    registry.push(&ctx.path("hello"), "1", repo_tag, false);
    let reference = format!("{}/{repo_tag}", registry.host());
    Some((registry, ctx, reference))
}

/// A two-layer busybox image (base + a layer with /hello) in an OCI layout, tagged `1`.
fn hello_layout(dir: &Path, greeting: &str) -> Built {
    let mut layout = Layout::new(dir);
    let mut t = Tar::default();
    t.file("hello", 0o644, greeting.as_bytes());
    layout.image(
        Some("1"),
        &[(base_layer(), Comp::Gzip), (t.finish(), Comp::Gzip)],
        serde_json::json!({"Env": ["GREETING=from-registry"]}),
    )
}

/// An image of base + two multi-MiB uncompressed layers (for cutting downloads).
fn big_layout(dir: &Path) -> Built {
    let mut layout = Layout::new(dir);
    let mut layers = vec![(base_layer(), Comp::Gzip)];
    for i in 0..2u64 {
        let mut t = Tar::default();
        t.file(&format!("big{i}"), 0o644, &noise(i + 7, 3 << 20));
        layers.push((t.finish(), Comp::None));
    }
    layout.image(Some("1"), &layers, serde_json::json!({}))
}

#[test]
fn pull_by_tag_and_by_digest_then_run() {
    require_root!();
    if !tools_present() {
        return;
    }
    let registry = LocalRegistry::start(Auth::None);
    let ctx = Ctx::new();
    let built = hello_layout(&ctx.path("hello"), "hello from a registry\n");
    registry.push(&ctx.path("hello"), "1", "test/hello:1", false);
    let reference = format!("{}/test/hello:1", registry.host());

    let out = ctx.ok(&["pull", &reference]);
    assert!(out.contains(&format!("pulled {reference}")), "{out}");
    assert!(out.contains("2 downloaded, 0 already here"), "{out}");
    let images = ctx.images();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0]["names"][0], reference.as_str());
    let run = ctx.run(&[
        "exec",
        "--image",
        &reference,
        "--pull",
        "never",
        "--",
        "sh",
        "-c",
        "cat /hello; echo $GREETING",
    ]);
    assert_eq!(
        run.stdout, "hello from a registry\nfrom-registry\n",
        "{}",
        run.stderr
    );
    // Again: nothing to download.
    let out = ctx.ok(&["pull", &reference]);
    assert!(out.contains("0 downloaded, 2 already here"), "{out}");

    // By digest, into another store: the manifest is the one skopeo pushed (same bytes as
    // the layout's when skopeo keeps them), found by digest, no name.
    let digest = images[0]["digest"].as_str().unwrap().to_string();
    let other = Ctx::new();
    let by_digest = format!("{}/test/hello@{digest}", registry.host());
    let out = other.ok(&["pull", &by_digest]);
    assert!(out.contains(&digest), "{out}");
    let listed = other.images();
    assert_eq!(listed.len(), 1);
    assert!(listed[0]["names"].as_array().unwrap().is_empty());
    let run = other.run(&["exec", "--image", &by_digest, "--", "cat", "/hello"]);
    assert_eq!(run.stdout, "hello from a registry\n", "{}", run.stderr);
    // The layers' diff_ids are the test's own: the pull verified and kept them.
    for diff_id in &built.diff_ids {
        assert!(other
            .store()
            .join("layers")
            .join(diff_id.trim_start_matches("sha256:"))
            .is_dir());
    }
}

#[test]
fn exec_pulls_a_missing_image_unless_told_never() {
    require_root!();
    let Some((registry, ctx, reference)) =
        hello_registry(Auth::None, "test/hello:2", "pulled on demand\n")
    else {
        return;
    };

    let run = ctx.run(&[
        "exec", "--image", &reference, "--pull", "never", "--", "cat", "/hello",
    ]);
    assert_eq!(run.code, nsbox::exit::IMAGE_NOT_FOUND, "{}", run.stderr);
    assert!(run.stderr.contains("not found"), "{}", run.stderr);
    assert!(ctx.images().is_empty());

    let run = ctx.run(&["exec", "--image", &reference, "--", "cat", "/hello"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.stdout, "pulled on demand\n",
        "stdout is the workload's alone"
    );
    assert_eq!(ctx.images().len(), 1);

    // A name neither stored nor in the registry: a clear error.
    let missing = format!("{}/test/nothing:1", registry.host());
    ctx.refused_with(
        nsbox::exit::IMAGE_NOT_FOUND,
        &["exec", "--image", &missing, "--", "true"],
        &["not found", "test/nothing"],
    );

    // The config's pull policy applies when --pull is not given.
    std::fs::write(ctx.config(), "[pull]\npolicy = \"never\"\n").unwrap();
    let other = format!("{}/test/hello:3", registry.host());
    registry.push(&ctx.path("hello"), "1", "test/hello:3", false);
    let run = ctx.run(&["exec", "--image", &other, "--", "cat", "/hello"]);
    assert_eq!(
        run.code,
        nsbox::exit::IMAGE_NOT_FOUND,
        "policy never: {}",
        run.stderr
    );
}

#[test]
fn a_multi_arch_index_pulls_this_machines_image() {
    require_root!();
    if !tools_present() {
        return;
    }
    let registry = LocalRegistry::start(Auth::None);
    let ctx = Ctx::new();
    let index_digest = multi_arch_layout(&ctx.path("multi"), "2");
    registry.push(&ctx.path("multi"), "2", "test/multi:2", true);

    let reference = format!("{}/test/multi:2", registry.host());
    ctx.ok(&["pull", &reference]);
    assert_eq!(ctx.images().len(), 1, "only this machine's platform");
    let run = ctx.run(&["exec", "--image", &reference, "--", "cat", "/arch"]);
    assert_eq!(run.stdout, "amd64\n", "{}", run.stderr);
    // The index digest the user pinned finds the image it resolved to.
    let pinned = format!("{}/test/multi@{index_digest}", registry.host());
    let other = Ctx::new();
    other.ok(&["pull", &pinned]);
    let run = other.run(&[
        "exec", "--image", &pinned, "--pull", "never", "--", "cat", "/arch",
    ]);
    assert_eq!(run.stdout, "amd64\n", "{}", run.stderr);
}

#[test]
fn a_corrupted_blob_is_rejected_and_nothing_is_stored() {
    require_root!();
    if !tools_present() {
        return;
    }
    let registry = LocalRegistry::start(Auth::None);
    let ctx = Ctx::new();
    let mut layout = Layout::new(&ctx.path("corrupt"));
    let mut t = Tar::default();
    t.file("payload", 0o644, &noise(3, 64 << 10));
    layout.image(
        Some("1"),
        &[(t.finish(), Comp::Gzip)],
        serde_json::json!({}),
    );
    registry.push(&layout.dir, "1", "test/corrupt:1", false);
    let layer = registry.layer_digests("test/corrupt:1")[0].clone();
    let blob = registry.blob_file(&layer);
    let mut bytes = std::fs::read(&blob).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();

    ctx.refused(
        &["pull", &format!("{}/test/corrupt:1", registry.host())],
        &["corrupt"],
    );
    ctx.assert_store_empty();
}

#[test]
fn basic_auth_login_and_wrong_credentials() {
    require_root!();
    let Some((registry, ctx, reference)) =
        hello_registry(Auth::Basic, "private/hello:1", "behind basic auth\n")
    else {
        return;
    };
    let host = registry.host();

    // No credentials: says how to log in.
    ctx.refused(&["pull", &reference], &[&format!("nsbox login {host}")]);
    // Wrong password: refused, nothing saved.
    let run = ctx.run_stdin(
        &["login", &host, "-u", USER, "--password-stdin"],
        "wrong-password\n",
    );
    assert_eq!(run.code, 125, "{}", run.stderr);
    assert!(
        run.stderr.contains("rejected") && run.stderr.contains("nothing was saved"),
        "{}",
        run.stderr
    );
    assert!(!ctx.store().join("auth.json").exists());
    // Wrong credentials in docker's config.json: the error names the user and the file.
    let docker_auth = base64_of(&format!("{USER}:not-it"));
    std::fs::write(
        ctx.path("docker/config.json"),
        format!(r#"{{"auths":{{"{host}":{{"auth":"{docker_auth}"}}}}}}"#),
    )
    .unwrap();
    let run = ctx.run(&["pull", &reference]);
    assert_eq!(run.code, 125);
    assert!(
        run.stderr.contains(USER)
            && run.stderr.contains("docker/config.json")
            && run.stderr.contains("rejected"),
        "{}",
        run.stderr
    );
    ctx.assert_store_empty();
    // Right credentials in docker's file work.
    let docker_auth = base64_of(&format!("{USER}:{PASSWORD}"));
    std::fs::write(
        ctx.path("docker/config.json"),
        format!(r#"{{"auths":{{"{host}":{{"auth":"{docker_auth}"}}}}}}"#),
    )
    .unwrap();
    ctx.ok(&["pull", &reference]);
    std::fs::remove_file(ctx.path("docker/config.json")).unwrap();
    // nsbox login: saved root-only, used by the next pull, forgotten by logout.
    let out = ctx
        .run_stdin(
            &["login", &host, "-u", USER, "--password-stdin"],
            &format!("{PASSWORD}\n"),
        )
        .stdout;
    assert!(out.contains("logged in"), "{out}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(ctx.store().join("auth.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let auth = std::fs::read_to_string(ctx.store().join("auth.json")).unwrap();
    assert!(!auth.contains(PASSWORD), "stored encoded, as docker does");
    let out = ctx.ok(&["pull", &reference]);
    assert!(out.contains("pulled"), "{out}");
    let out = ctx.ok(&["logout", &host]);
    assert!(out.contains("removed"), "{out}");
    let run = ctx.run(&["pull", &reference]);
    assert_eq!(run.code, 125, "no credentials after logout");
    assert!(run.stderr.contains("nsbox login"), "{}", run.stderr);
}

fn base64_of(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[test]
fn token_auth_pulls_with_a_bearer_token() {
    require_root!();
    let Some((registry, ctx, reference)) =
        hello_registry(Auth::Token, "team/hello:1", "behind token auth\n")
    else {
        return;
    };
    let host = registry.host();

    let run = ctx.run(&["pull", &reference]);
    assert_eq!(
        run.code, 125,
        "anonymous pulls are refused by the token service"
    );
    assert!(run.stderr.contains("nsbox login"), "{}", run.stderr);
    let run = ctx.run_stdin(
        &["login", &host, "-u", USER, "--password-stdin"],
        &format!("{PASSWORD}\n"),
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    ctx.ok(&["pull", &reference]);
    let run = ctx.run(&["exec", "--image", &reference, "--", "cat", "/hello"]);
    assert_eq!(run.stdout, "behind token auth\n", "{}", run.stderr);
    let token = registry.token.as_ref().unwrap();
    let asked = token.requests.lock().unwrap().clone();
    assert!(
        asked
            .iter()
            .any(|r| r.contains("scope=repository%3Ateam%2Fhello%3Apull")
                || r.contains("scope=repository:team/hello:pull")),
        "a pull-scoped token was asked for: {asked:?}"
    );
}

#[test]
fn a_dropped_connection_is_resumed_with_range() {
    require_root!();
    if !tools_present() {
        return;
    }
    let registry = LocalRegistry::start(Auth::None);
    let ctx = Ctx::new();
    big_layout(&ctx.path("big"));
    registry.push(&ctx.path("big"), "1", "test/big:1", false);
    let target = registry.layer_digests("test/big:1")[1].clone();
    let proxy = CutProxy::start(
        registry.port,
        Fault::CutOnce {
            blob: target.clone(),
            after: 1 << 20,
        },
    );
    let out = ctx.ok(&["pull", &format!("{}/test/big:1", proxy.host())]);
    assert!(out.contains("3 downloaded"), "{out}");
    let ranged: Vec<String> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.contains(&target) && r.to_ascii_lowercase().contains("range: bytes="))
        .collect();
    assert_eq!(
        ranged.len(),
        1,
        "one resumed request: {:?}",
        proxy.requests()
    );
    assert!(!ranged[0].contains("range: bytes=0-"), "{ranged:?}");
}

#[test]
fn a_registry_gone_mid_pull_fails_clearly_and_the_next_pull_reuses_verified_layers() {
    require_root!();
    if !tools_present() {
        return;
    }
    let registry = LocalRegistry::start(Auth::None);
    let ctx = Ctx::new();
    big_layout(&ctx.path("big"));
    registry.push(&ctx.path("big"), "1", "test/big:1", false);
    let layer_blobs = registry.layer_digests("test/big:1");
    // With one download at a time, layers are fetched in digest order: stop during the last.
    let mut blobs = layer_blobs.clone();
    blobs.sort();
    let last = blobs.last().unwrap().clone();
    if layer_blobs[0] == last {
        // The small base layer sorts last: cutting it would not test a multi-MiB transfer;
        // stop during the big one that sorts last instead.
        blobs.pop();
    }
    let target = blobs.last().unwrap().clone();
    let proxy = CutProxy::start(
        registry.port,
        Fault::Stop {
            blob: target.clone(),
            after: 1 << 20,
        },
    );
    let reference = format!("{}/test/big:1", proxy.host());
    ctx.refused(
        &["pull", "--jobs", "1", &reference],
        &["cannot reach registry", &proxy.host()],
    );
    assert!(ctx.images().is_empty(), "no image was added");
    assert_eq!(ctx.entries("tmp"), 0, "nothing half-stored");
    let verified_before = ctx.entries("layers");
    assert!(
        verified_before >= 1,
        "layers fetched before the stop stay verified"
    );

    proxy.up();
    let before = proxy.requests().len();
    let out = ctx.ok(&["pull", "--jobs", "1", &reference]);
    assert!(
        out.contains(&format!("{verified_before} already here")),
        "{out}"
    );
    let second: Vec<String> = proxy.requests()[before..].to_vec();
    assert!(
        second.iter().any(|r| r.contains(&target)),
        "the cut layer is fetched again: {second:?}"
    );
    let refetched = layer_blobs
        .iter()
        .filter(|b| second.iter().any(|r| r.contains(b.as_str())))
        .count();
    assert_eq!(
        refetched,
        layer_blobs.len() - verified_before,
        "only what was missing: {second:?}"
    );
    let run = ctx.run(&[
        "exec",
        "--image",
        &reference,
        "--",
        "sh",
        "-c",
        "wc -c < /big1",
    ]);
    assert_eq!(run.stdout.trim(), (3 << 20).to_string(), "{}", run.stderr);
}

#[test]
fn https_with_the_configs_ca_and_refused_without_it() {
    require_root!();
    if !tools_present() {
        return;
    }
    let registry = LocalRegistry::start_with(Auth::None, true);
    let ctx = Ctx::new();
    hello_layout(&ctx.path("hello"), "over https\n");
    registry.push(&ctx.path("hello"), "1", "tls/hello:1", false);
    let reference = format!("{}/tls/hello:1", registry.host());
    let host = registry.host();
    // HTTPS without the CA: the certificate is not trusted.
    std::fs::write(
        ctx.config(),
        format!("[registries.\"{host}\"]\ntls = true\n"),
    )
    .unwrap();
    let run = ctx.refused(&["pull", &reference], &[&host]);
    assert!(
        run.stderr.to_lowercase().contains("certificate"),
        "{}",
        run.stderr
    );
    ctx.assert_store_empty();
    // With the CA the config names (relative to the config file's directory; a CA file
    // means HTTPS even on loopback).
    std::fs::copy(registry.ca(), ctx.path("test-ca.pem")).unwrap();
    std::fs::write(
        ctx.config(),
        format!("[registries.\"{host}\"]\nca_file = \"test-ca.pem\"\n"),
    )
    .unwrap();
    ctx.ok(&["pull", &reference]);
    let run = ctx.run(&["exec", "--image", &reference, "--", "cat", "/hello"]);
    assert_eq!(run.stdout, "over https\n", "{}", run.stderr);
}

#[test]
fn malformed_references_are_refused_with_a_hint() {
    let ctx = Ctx::new();
    for bad in [
        "UPPER/case",
        "a//b",
        "x@sha256:1234",
        "x:-tag",
        "bad host/x",
    ] {
        let run = ctx.run(&["pull", bad]);
        assert_eq!(run.code, 121, "{bad}: a usage error");
        assert!(
            run.stderr.contains("not a valid") && run.stderr.contains("hint"),
            "{bad}: {}",
            run.stderr
        );
    }
    assert!(!ctx.store().exists(), "nothing was created");
}
