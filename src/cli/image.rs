//! The image commands: `load`, `import`, `images`, `tag`, `rmi`, `save`, `image prune`.
//! Every failure exits with its code (see `crate::exit`: 123 for an image the store lacks,
//! 121 for a bad name, 125 otherwise) and a message on stderr; listings go to stdout.

use std::path::{Path, PathBuf};

use super::error;
use crate::image::ingest::LoadOptions;
use crate::image::store::{self, ImageRecord, Store};
use crate::image::{import, load};
use crate::image::{ImageError, Limits};
use crate::units::ByteSize;

const LOAD_HELP: &str = "\
Accepted: an OCI image layout directory (skopeo copy ... oci:DIR:TAG, umoci), an OCI archive
(skopeo ... oci-archive:FILE, buildah push ... oci-archive:FILE), a `docker save` archive or
its extracted directory; archives may be gzip- or zstd-compressed; layers may be tar, tar+gzip
or tar+zstd. Every image in the file is loaded; names come from the file (RepoTags, or the
layout's ref.name annotation as FILE-STEM:TAG) and --tag.

Layers are verified against their digests, unpacked once per diff_id (in parallel, one per
core) and refused whole if any entry would write outside the layer (.., absolute names,
symlinked parents, hardlinks out, trusted.* xattrs, PAX size desync, truncated data, or more
than the --max-layer-* bounds).

Examples:
  skopeo copy docker-archive:app.tar oci:app-oci:1.0 && nsbox load app-oci
  nsbox load build/devbox.oci.tar --tag devbox:latest
  nsbox exec --image devbox -- make test";

/// `nsbox load PATH`.
#[derive(Debug, clap::Args)]
#[command(after_help = LOAD_HELP)]
pub struct LoadArgs {
    /// An OCI layout directory, an OCI archive or a docker-save archive (.tar, .tar.gz, .tar.zst).
    #[arg(value_name = "PATH")]
    path: PathBuf,
    /// Also name the image NAME[:TAG] (the file must hold exactly one image).
    #[arg(long, value_name = "NAME[:TAG]")]
    tag: Option<String>,
    #[command(flatten)]
    bounds: Bounds,
    /// No progress line, even on a terminal.
    #[arg(long, short = 'q')]
    quiet: bool,
}

/// Bounds against decompression bombs.
#[derive(Debug, clap::Args)]
pub(super) struct Bounds {
    /// Refuse a layer larger than this uncompressed (its tar stream).
    #[arg(long, value_name = "SIZE", default_value = "64g")]
    max_layer_size: ByteSize,
    /// Refuse a layer with more entries than this.
    #[arg(long, value_name = "N", default_value_t = 4_000_000)]
    max_layer_entries: u64,
}

impl Bounds {
    pub(super) fn limits(&self) -> Limits {
        Limits {
            max_bytes: self.max_layer_size.bytes(),
            max_entries: self.max_layer_entries,
        }
    }
}

/// `nsbox import FILE --tag NAME`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example:\n  tar -C rootfs -c . | gzip > rootfs.tar.gz && nsbox import rootfs.tar.gz --tag mybox:1\n\nThe image gets PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin and no\nentrypoint or command: give one to `nsbox exec`."
)]
pub struct ImportArgs {
    /// A root filesystem tarball: tar, tar.gz or tar.zst.
    #[arg(value_name = "ROOTFS.tar[.gz|.zst]")]
    path: PathBuf,
    /// The image's name.
    #[arg(long, value_name = "NAME[:TAG]", required = true)]
    tag: String,
    #[command(flatten)]
    bounds: Bounds,
    /// No progress line, even on a terminal.
    #[arg(long, short = 'q')]
    quiet: bool,
}

/// `nsbox images`.
#[derive(Debug, clap::Args)]
pub struct ImagesArgs {
    /// Same as --format json: one JSON array on stdout instead of a table.
    #[arg(long, conflicts_with = "format")]
    json: bool,
    /// Print only the image ids (short digests, usable wherever an image is named).
    #[arg(long, short = 'q', conflicts_with_all = ["json", "format"])]
    quiet: bool,
    /// table (default), json, or a template over the JSON fields, e.g.
    /// '{{.Names}}\t{{.Size}}'.
    #[arg(long, value_name = "json|table|TEMPLATE")]
    format: Option<super::listing::Format>,
}

/// `nsbox tag IMAGE NAME`.
#[derive(Debug, clap::Args)]
pub struct TagArgs {
    /// An image: NAME[:TAG], NAME@sha256:..., or a digest (prefix).
    #[arg(value_name = "IMAGE")]
    image: String,
    /// The new name, NAME[:TAG] (moved from the image that had it).
    #[arg(value_name = "NAME[:TAG]")]
    name: String,
}

/// `nsbox rmi IMAGE...`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "A NAME[:TAG] removes that name; the image goes when no name is left. A digest removes\nthe image with all its names. Layers no other image uses are deleted unless a running\nsandbox uses them (`nsbox image prune` removes those later)."
)]
pub struct RmiArgs {
    /// Images to remove: NAME[:TAG] (that name), or a digest or its prefix (the image).
    #[arg(value_name = "IMAGE", required = true)]
    images: Vec<String>,
}

/// `nsbox save IMAGE -o FILE`.
#[derive(Debug, clap::Args)]
pub struct SaveArgs {
    /// The image to write: NAME[:TAG], NAME@sha256:..., or a digest (prefix).
    #[arg(value_name = "IMAGE")]
    image: String,
    /// The OCI archive to write (replaced atomically if it exists).
    #[arg(long, short = 'o', value_name = "FILE", required = true)]
    output: PathBuf,
}

/// `nsbox image ...`.
#[derive(Debug, clap::Subcommand)]
pub enum ImageCommand {
    /// Delete layers and blobs no image references (layers in use by running sandboxes stay),
    /// and leftovers of interrupted loads. Waits for loads in progress.
    Prune,
}

fn fail(e: impl Into<crate::report::Failure>) -> i32 {
    let failure = e.into();
    error(&failure.to_string());
    failure.exit_code()
}

fn open_store(root: &Path) -> Result<Store, ImageError> {
    Store::open(root)
}

fn show_progress(quiet: bool) -> bool {
    !quiet && rustix::termios::isatty(std::io::stderr())
}

fn mib(bytes: u64) -> String {
    ByteSize(bytes).to_string()
}

pub fn load(args: LoadArgs, state_root: &Path) -> i32 {
    let store = match open_store(state_root) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let opts = LoadOptions {
        limits: args.bounds.limits(),
        tag: args.tag,
        progress: show_progress(args.quiet),
        threads: 0,
    };
    match load::load(&store, &args.path, &opts) {
        Ok(report) => {
            for w in &report.warnings {
                error(&format!("warning: {w}"));
            }
            for image in &report.images {
                println!(
                    "loaded {} ({}, {} layers, {})",
                    names(image),
                    image.digest,
                    image.layers.len(),
                    mib(image.unpacked_bytes())
                );
            }
            tracing::info!(
                unpacked = report.unpacked_layers,
                reused = report.reused_layers,
                "load finished"
            );
            0
        }
        Err(e) => fail(e),
    }
}

pub fn import(args: ImportArgs, state_root: &Path) -> i32 {
    let store = match open_store(state_root) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let opts = LoadOptions {
        limits: args.bounds.limits(),
        tag: None,
        progress: show_progress(args.quiet),
        threads: 1,
    };
    match import::import(&store, &args.path, &args.tag, &opts) {
        Ok(image) => {
            println!(
                "imported {} ({}, {})",
                names(&image),
                image.digest,
                mib(image.unpacked_bytes())
            );
            0
        }
        Err(e) => fail(e),
    }
}

fn names(image: &ImageRecord) -> String {
    if image.names.is_empty() {
        "<untagged>".to_string()
    } else {
        image.names.join(", ")
    }
}

fn age(loaded: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(loaded);
    let s = now.saturating_sub(loaded);
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86_399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

pub fn images(args: ImagesArgs, state_root: &Path) -> i32 {
    let index = match Store::open_existing(state_root) {
        Ok(Some(store)) => match store.index() {
            Ok(index) => index,
            Err(e) => return fail(e),
        },
        Ok(None) => Default::default(),
        Err(e) => return fail(e),
    };
    if args.quiet {
        for image in &index.images {
            println!("{}", image.digest.short());
        }
        return 0;
    }
    let format = match args.json {
        true => super::listing::Format::Json,
        false => args.format.unwrap_or(super::listing::Format::Table),
    };
    if format != super::listing::Format::Table {
        let list: Vec<serde_json::Value> = index
            .images
            .iter()
            .map(|i| {
                serde_json::json!({
                    "names": i.names,
                    "digest": i.digest,
                    "config": i.config,
                    "layers": i.layers.len(),
                    "size": i.unpacked_bytes(),
                    "blob_size": i.blob_bytes(),
                    "architecture": i.architecture,
                    "os": i.os,
                    "loaded": i.loaded,
                })
            })
            .collect();
        match format {
            super::listing::Format::Template(template) => {
                for row in &list {
                    println!("{}", super::listing::render(&template, row));
                }
            }
            _ => println!("{}", serde_json::Value::Array(list)),
        }
        return 0;
    }
    println!(
        "{:<32} {:<14} {:>6} {:>10} {:>10}  LOADED",
        "NAME", "DIGEST", "LAYERS", "SIZE", "STORED"
    );
    for image in &index.images {
        let rows: Vec<String> = if image.names.is_empty() {
            vec!["<untagged>".into()]
        } else {
            image.names.clone()
        };
        for name in rows {
            println!(
                "{:<32} {:<14} {:>6} {:>10} {:>10}  {}",
                name,
                image.digest.short(),
                image.layers.len(),
                mib(image.unpacked_bytes()),
                mib(image.blob_bytes()),
                age(image.loaded)
            );
        }
    }
    0
}

pub fn tag(args: TagArgs, state_root: &Path) -> i32 {
    let store = match open_store(state_root) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let name = match crate::image::reference::normalize_name(&args.name) {
        Ok(n) => n,
        Err(e) => return fail(e),
    };
    let result = store.update_index(|index| {
        let digest = store.resolve(index, &args.image)?.digest.clone();
        for image in index.images.iter_mut() {
            if image.digest == digest {
                if !image.names.contains(&name) {
                    image.names.push(name.clone());
                }
            } else {
                image.names.retain(|n| *n != name);
            }
        }
        Ok(digest)
    });
    match result {
        Ok(digest) => {
            println!("tagged {digest} as {name}");
            0
        }
        Err(e) => fail(e),
    }
}

pub fn rmi(args: RmiArgs, state_root: &Path) -> i32 {
    let store = match Store::open_existing(state_root) {
        Ok(Some(s)) => s,
        Ok(None) => {
            return fail(ImageError::NotFound {
                reference: args.images.join(" "),
            })
        }
        Err(e) => return fail(e),
    };
    let result = store.remove_images(&args.images);
    match result {
        Ok(messages) => {
            for m in messages {
                println!("{m}");
            }
            // Reclaim space now unless a load is writing (then `image prune` does it later).
            match store.collect_garbage(false) {
                Ok(Some(report)) if report.layers + report.blobs > 0 => {
                    println!("freed {}", mib(report.bytes));
                }
                Ok(_) => {}
                Err(e) => error(&format!("warning: cleaning up: {e}")),
            }
            0
        }
        Err(e) => fail(e),
    }
}

pub fn prune(_cmd: ImageCommand, state_root: &Path) -> i32 {
    let store = match Store::open_existing(state_root) {
        Ok(Some(s)) => s,
        Ok(None) => {
            println!(
                "nothing to remove (no image store at {})",
                state_root.display()
            );
            return 0;
        }
        Err(e) => return fail(e),
    };
    match store.collect_garbage(true) {
        Ok(Some(r)) => {
            println!(
                "removed {} layer(s), {} blob(s), {} unfinished load(s); freed {}",
                r.layers,
                r.blobs,
                r.temporaries,
                mib(r.bytes)
            );
            if r.in_use > 0 {
                println!(
                    "kept {} unreferenced layer(s) that running sandboxes use",
                    r.in_use
                );
            }
            0
        }
        Ok(None) => fail("the image store is busy"),
        Err(e) => fail(e),
    }
}

pub fn save(args: SaveArgs, state_root: &Path) -> i32 {
    let store = match Store::open_existing(state_root) {
        Ok(Some(s)) => s,
        Ok(None) => {
            return fail(ImageError::NotFound {
                reference: args.image,
            })
        }
        Err(e) => return fail(e),
    };
    let index = match store.index() {
        Ok(i) => i,
        Err(e) => return fail(e),
    };
    let image = match store.resolve(&index, &args.image) {
        Ok(i) => i,
        Err(e) => return fail(e),
    };
    match crate::image::save::save(&store, image, &args.output) {
        Ok(size) => {
            println!(
                "saved {} to {} ({})",
                image.digest,
                args.output.display(),
                mib(size)
            );
            0
        }
        Err(e) => fail(e),
    }
}

/// The state root from `--state-root`, `NSBOX_STATE_ROOT` or the default.
pub fn state_root(flag: Option<&Path>) -> PathBuf {
    store::state_root(flag)
}
