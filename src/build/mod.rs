//! `nsbox build`: devbox images from a recipe ([`recipe`]). The installs and the setup run
//! as root (uid 0 without capabilities) in a sandbox on the base image whose writes go to a
//! kept upper directory in the store's `tmp/`; its network is `filtered` to the hosts the
//! recipe names (or `none` when it names none). What they changed is captured as one new
//! layer ([`capture`]), unpacked into the store through the same verified path as `load`,
//! and a proper OCI image is written: the base's config with the new diff_id, a history
//! entry, the recipe's Env and a label with the recipe hash, and a manifest.
//!
//! The hash of the recipe and the base's digest is recorded with the image: a build whose
//! tag already names an image with that hash does nothing (`--force` builds anyway), one
//! whose hash another image has only moves the tag. A failing setup fails the build with its
//! output (already relayed on stderr) and tags nothing.

pub mod capture;
pub mod recipe;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use rustix::fs::{self as rfs, Mode};

pub use recipe::{Recipe, RecipeFile};

use crate::config::Config;
use crate::ids::DEFAULT_UID_BASE;
use crate::image::digest::Digest;
use crate::image::ingest::{self, add_to_index, unpack_stream, Expect};
use crate::image::store::{remove_tree, ImageRecord, Store};
use crate::image::{ImageError, Limits};
use crate::profile::{NetworkMode, Profile};
use crate::registry::pull::PullPolicy;
use crate::spec::{ExecRequest, SandboxSpec};
use crate::units::ByteSize;
use crate::units::{Limit, Timeout};

/// The label the recipe hash is recorded under in the image config.
pub const HASH_LABEL: &str = "org.nsbox.recipe.hash";

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("recipe {origin}: {message}")]
    Recipe { origin: String, message: String },
    #[error("base image: {0}")]
    Base(#[from] crate::registry::pull::EnsureError),
    #[error("base image: {0}")]
    BaseMissing(ImageError),
    #[error("base image: {0}")]
    BaseConfig(String),
    #[error("the build sandbox: {0}")]
    Profile(#[from] crate::profile::ProfileError),
    #[error("the build sandbox: {0}")]
    Spec(#[from] crate::spec::SpecError),
    #[error("the build sandbox: {0}")]
    Sandbox(#[from] crate::sandbox::SandboxError),
    #[error("the setup failed (exit {code}{detail}); no image was tagged — its output is above")]
    SetupFailed { code: i32, detail: String },
    #[error("capturing the build's changes: {what}: {source}")]
    Capture {
        what: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Image(#[from] ImageError),
}

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    pub recipe: Recipe,
    /// The recipe file, or "command line".
    pub origin: String,
    pub tag: String,
    pub force: bool,
    /// Print the filtered network's decisions on stderr (not part of the recipe's hash).
    pub log_network: bool,
}

/// What a build did.
#[derive(Debug, Clone)]
pub enum BuildOutcome {
    /// The tag already named an image of this recipe and base.
    Unchanged(ImageRecord),
    /// Another image had this recipe's hash: the tag now names it.
    Retagged(ImageRecord),
    Built {
        image: ImageRecord,
        seconds: f64,
        entries: u64,
    },
}

/// Builds (or skips) `req` into the store at `state_root`.
pub fn build(
    req: &BuildRequest,
    state_root: &Path,
    config: &Config,
    t0: u64,
) -> Result<BuildOutcome, BuildError> {
    let tag =
        crate::image::reference::normalize_name(&req.tag).map_err(|e| BuildError::Recipe {
            origin: req.origin.clone(),
            message: format!("tag: {e}"),
        })?;
    // The base is pulled only when missing (never, if the config says so): its digest is part
    // of the hash, so a base that moved (`nsbox pull BASE`) makes the next build a new one.
    let policy = match config.pull.policy {
        PullPolicy::Never => PullPolicy::Never,
        _ => PullPolicy::Missing,
    };
    crate::registry::pull::ensure(&req.recipe.base, policy, state_root, |registry| {
        config.pull_options(state_root, registry, false)
    })?;
    let store = Store::open(state_root)?;
    let index = store.index()?;
    let base = store
        .resolve(&index, &req.recipe.base)
        .map_err(BuildError::BaseMissing)?
        .clone();
    let hash = req.recipe.hash(&base.digest);
    if !req.force {
        let complete = |i: &ImageRecord| i.layers.iter().all(|l| store.has_layer(&l.diff_id));
        if let Some(same) = index
            .images
            .iter()
            .find(|i| i.names.contains(&tag) && i.build_hash.as_deref() == Some(&hash))
        {
            if complete(same) {
                return Ok(BuildOutcome::Unchanged(same.clone()));
            }
        }
        if let Some(other) = index
            .images
            .iter()
            .find(|i| i.build_hash.as_deref() == Some(&hash) && complete(i))
        {
            let mut named = other.clone();
            named.names = vec![tag.clone()];
            add_to_index(&store, std::slice::from_ref(&named))?;
            let now = store.index()?;
            let updated = now
                .images
                .iter()
                .find(|i| i.digest == named.digest)
                .cloned()
                .unwrap_or(named);
            return Ok(BuildOutcome::Retagged(updated));
        }
    }

    let started = Instant::now();
    let _guard = store.load_guard()?;
    let root = crate::image::open_root(state_root, &base.digest.to_string())?;
    if !req.recipe.install.is_empty() && !has_package_manager(&root.spec().layers) {
        return Err(BuildError::Recipe {
            origin: req.origin.clone(),
            message: format!(
                "the base {} has no package manager nsbox knows (apt-get, apk, dnf, yum) to install {} — hint: choose a base that has one (debian, ubuntu, alpine, fedora), or add the programs with `setup` commands",
                req.recipe.base,
                req.recipe.install.join(" ")
            ),
        });
    }
    let workdir = store.tmp_path("build");
    let result = run_and_capture(req, &store, config, &root, &base, &workdir, &hash, &tag, t0);
    let _ = remove_tree(&workdir);
    let (image, entries) = result?;
    drop(root);
    // The image this tag named before, if a build made it and nothing else names it now, is
    // not worth keeping: drop it (its layers go at the next garbage collection).
    let replaced: Vec<Digest> = index
        .images
        .iter()
        .filter(|i| i.names == [tag.clone()] && i.build_hash.is_some() && i.digest != image.digest)
        .map(|i| i.digest.clone())
        .collect();
    if !replaced.is_empty() {
        store.update_index(|idx| {
            idx.images
                .retain(|i| !(replaced.contains(&i.digest) && i.names.is_empty()));
            Ok(())
        })?;
    }
    Ok(BuildOutcome::Built {
        image,
        seconds: started.elapsed().as_secs_f64(),
        entries,
    })
}

/// Whether the base has one of the package managers the build script knows, checked in its
/// layers before any sandbox starts (a base without one would fail only inside the build).
/// Files are looked up as the overlay shows them, without following symlinks: the places
/// distributions install the real programs.
fn has_package_manager(layers: &[PathBuf]) -> bool {
    const PROGRAMS: &[&str] = &[
        "usr/bin/apt-get",
        "sbin/apk",
        "usr/sbin/apk",
        "usr/bin/apk",
        "usr/bin/dnf",
        "usr/bin/dnf-3",
        "usr/bin/dnf5",
        "usr/bin/yum",
    ];
    PROGRAMS
        .iter()
        .any(|p| crate::image::read_image_file(layers, p).is_some())
}

#[allow(clippy::too_many_arguments)]
fn run_and_capture(
    req: &BuildRequest,
    store: &Store,
    config: &Config,
    root: &crate::image::ImageRoot,
    base: &ImageRecord,
    workdir: &Path,
    hash: &str,
    tag: &str,
    t0: u64,
) -> Result<(ImageRecord, u64), BuildError> {
    let io = |what: &str| {
        let what = what.to_string();
        move |source: std::io::Error| BuildError::Capture { what, source }
    };
    let upper = workdir.join("upper");
    rfs::mkdir(workdir, Mode::from_raw_mode(0o700))
        .map_err(|e| io("create the build directory")(e.into()))?;
    for dir in [&upper, &workdir.join("work")] {
        rfs::mkdir(dir, Mode::from_raw_mode(0o755))
            .map_err(|e| io("create the build directory")(e.into()))?;
    }
    // The root directory of the merged view is the upper's: owned by the image's root.
    rfs::chown(
        &upper,
        Some(rfs::Uid::from_raw(DEFAULT_UID_BASE)),
        Some(rfs::Gid::from_raw(DEFAULT_UID_BASE)),
    )
    .map_err(|e| io("chown the build directory")(e.into()))?;

    let image_spec = root.spec();
    let mut spec = sandbox_spec(req, config, image_spec.clone())?;
    spec.upper_dir = Some(workdir.to_path_buf());
    let outcome = crate::sandbox::run(&spec, t0)?;
    let code = outcome.exit_code();
    if code != 0 {
        return Err(BuildError::SetupFailed {
            code,
            detail: outcome
                .message()
                .map(|m| format!(": {m}"))
                .unwrap_or_default(),
        });
    }

    let blob_file = workdir.join("layer.tar.gz");
    let captured = capture::capture(&upper, &image_spec.layers, DEFAULT_UID_BASE, &blob_file)
        .map_err(io("write the layer"))?;
    let layer = unpack_stream(
        store,
        File::open(&blob_file).map_err(io("read the layer"))?,
        &Expect {
            blob: Some((captured.digest.clone(), captured.size)),
            diff_id: Some(captured.diff_id.clone()),
        },
        Limits::default(),
        &captured.diff_id.to_string(),
    )?;

    // The config: the base's, plus the layer, a history entry, the recipe's Env and label.
    let base_config =
        std::fs::read(store.blob_path(&base.config)).map_err(io("read the base's config"))?;
    let mut config_json: serde_json::Value = serde_json::from_slice(&base_config)
        .map_err(|e| BuildError::BaseConfig(format!("its config is not valid JSON: {e}")))?;
    let now = rfc3339_now();
    let obj = config_json
        .as_object_mut()
        .ok_or_else(|| BuildError::BaseConfig("its config is not a JSON object".into()))?;
    obj.insert("created".into(), now.clone().into());
    obj.remove("container_config");
    obj.remove("container");
    let rootfs = obj
        .entry("rootfs")
        .or_insert_with(|| serde_json::json!({"type": "layers", "diff_ids": []}));
    if let Some(ids) = rootfs.get_mut("diff_ids").and_then(|v| v.as_array_mut()) {
        ids.push(layer.diff_id.to_string().into());
    }
    let history = obj
        .entry("history")
        .or_insert_with(|| serde_json::json!([]));
    if let Some(h) = history.as_array_mut() {
        h.push(serde_json::json!({
            "created": now,
            "created_by": history_line(&req.recipe),
            "comment": format!("nsbox build {} ({})", tag, req.origin),
        }));
    }
    let run = obj.entry("config").or_insert_with(|| serde_json::json!({}));
    if let Some(run) = run.as_object_mut() {
        let mut env: Vec<String> = run
            .get("Env")
            .and_then(|e| e.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        for (k, v) in &req.recipe.env {
            env.retain(|e| e.split_once('=').map(|(n, _)| n) != Some(k.as_str()));
            env.push(format!("{k}={v}"));
        }
        run.insert("Env".into(), env.into());
        let labels = run.entry("Labels").or_insert_with(|| serde_json::json!({}));
        if !labels.is_object() {
            *labels = serde_json::json!({});
        }
        if let Some(l) = labels.as_object_mut() {
            l.insert(HASH_LABEL.into(), hash.into());
        }
    }
    let config_bytes = serde_json::to_vec(&config_json)
        .map_err(|e| io("write the image config")(std::io::Error::other(e)))?;
    let record = ingest::store_image_on(
        store,
        base,
        &layer,
        config_bytes,
        tag,
        Some(hash.to_string()),
    )?;
    Ok((record, captured.entries))
}

/// The build's sandbox: the base image, root without capabilities, a writable root, the
/// recipe's hosts as its only network (none without hosts), the config's defaults for the
/// rest.
fn sandbox_spec(
    req: &BuildRequest,
    config: &Config,
    image: crate::spec::ImageSpec,
) -> Result<SandboxSpec, BuildError> {
    let profile = Profile::load_layered("default", &config.defaults)?;
    let recipe = &req.recipe;
    let mut env = vec!["HOME=/root".to_string()];
    env.extend(recipe.env.iter().map(|(k, v)| format!("{k}={v}")));
    let request = ExecRequest {
        command: vec!["/bin/sh".into(), "-c".into(), recipe.script().into()],
        rootfs: None,
        image: Some(image),
        entrypoint: Some(String::new()),
        // With --log-network and no hosts, a filtered network that allows nothing: every
        // lookup is refused and logged, which tells what the recipe's hosts must be.
        network: Some(if recipe.hosts.is_empty() && !req.log_network {
            NetworkMode::None
        } else {
            NetworkMode::Filtered
        }),
        net_namespace: None,
        ipc_namespace: None,
        uts_namespace: None,
        pod_egress: false,
        allow: recipe.hosts.clone(),
        deny: Vec::new(),
        dns_upstream: Vec::new(),
        log_network: req.log_network,
        hostname: Some("nsbox-build".into()),
        user: Some((0, 0)),
        workdir: Some(PathBuf::from("/")),
        writable_root: true,
        sandbox_size: None,
        tmp_size: None,
        root_size: None,
        mounts: Vec::new(),
        copies: Vec::new(),
        memory: recipe
            .memory
            .as_deref()
            .and_then(|m| m.parse::<ByteSize>().ok())
            .map(Limit::Value),
        cpus: None,
        pids: None,
        timeout: recipe
            .timeout
            .as_deref()
            .and_then(|t| t.parse::<Timeout>().ok())
            .map(Limit::Value),
        max_output: Some(Limit::Unlimited),
        env,
        env_files: Vec::new(),
        secrets: Vec::new(),
        secret_env: Vec::new(),
        credentials: Vec::new(),
        interactive: false,
        tty: false,
        json: false,
        timings: false,
    };
    let host_env: BTreeMap<String, String> = std::env::vars().collect();
    Ok(SandboxSpec::build(request, &profile, &host_env)?)
}

/// The history line of a build: what it installed and ran, shortened.
fn history_line(recipe: &Recipe) -> String {
    let mut parts = Vec::new();
    if !recipe.install.is_empty() {
        parts.push(format!("install {}", recipe.install.join(" ")));
    }
    if let Some(setup) = &recipe.setup {
        let first: String = setup
            .trim()
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(80)
            .collect();
        parts.push(format!("setup: {first}"));
    }
    format!("nsbox build: {}", parts.join("; "))
}

/// Now as RFC 3339 (UTC), as image configs write times.
pub(crate) fn rfc3339_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    crate::units::rfc3339(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339() {
        let t = rfc3339_now();
        assert_eq!(t.len(), 20, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z'), "{t}");
    }
}
