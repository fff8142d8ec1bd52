//! `nsbox pull`: resolve a reference to this machine's manifest, verify it, fetch and verify
//! the config, then download the layers the store lacks — several at once, each streamed
//! straight into the unpacker (hashed, stored and unpacked in one pass, as `nsbox load`
//! does) — and add the image to the index.
//!
//! Nothing is half-stored: a layer is renamed into the store only once its blob digest and
//! diff_id verified, and the image enters the index only when all of them did. Layers that
//! verified before a failure stay in the store (unreferenced until a later pull uses them, or
//! `nsbox image prune` removes them), so a pull run again downloads only what is missing.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use super::auth::CredentialStore;
use super::client::{is_index, Client};
use super::reference::RemoteRef;
use super::{RegistryError, RegistrySettings};
use crate::image::digest::{printable, Digest};
use crate::image::ingest::{
    add_to_index, check_config, check_config_type, known_unpacked_bytes, parse_json, store_doc,
    unpack_all, LayerJob, LoadOptions, MAX_CONFIG, MAX_MANIFEST,
};
use crate::image::oci::{self, ImageConfig, Index, Manifest};
use crate::image::store::{ImageRecord, LayerRecord, Store};
use crate::image::{ImageError, Limits};

/// Layers downloaded at once unless told otherwise: downloads wait on the network more than
/// on the CPU, so more than one per core pays.
pub const DEFAULT_JOBS: usize = 4;

/// How to pull.
#[derive(Debug, Clone)]
pub struct PullOptions {
    pub limits: Limits,
    /// Draw a progress line on stderr.
    pub progress: bool,
    /// Layers downloaded at once (0: [`DEFAULT_JOBS`]).
    pub jobs: usize,
    pub settings: RegistrySettings,
    pub credentials: CredentialStore,
}

/// When `--image` pulls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PullPolicy {
    /// Pull when the store does not have the image.
    Missing,
    /// Pull every time (layers the store has are not downloaded again).
    Always,
    /// Never pull.
    Never,
}

impl std::str::FromStr for PullPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "missing" => Ok(PullPolicy::Missing),
            "always" => Ok(PullPolicy::Always),
            "never" => Ok(PullPolicy::Never),
            other => Err(format!(
                "'{other}' is not a pull policy: use \"missing\", \"always\" or \"never\""
            )),
        }
    }
}

/// Why [`ensure`] could not make an image present.
#[derive(Debug, thiserror::Error)]
pub enum EnsureError {
    #[error("{0}")]
    Reference(Box<RegistryError>),
    #[error("image '{reference}' not found in the store (`nsbox images` lists what is there), and pulling it from {registry} failed: {source}")]
    NotFound {
        reference: String,
        registry: String,
        source: Box<RegistryError>,
    },
    #[error("pulling {reference}: {source}")]
    Pull {
        reference: String,
        source: Box<RegistryError>,
    },
    #[error(transparent)]
    Store(#[from] ImageError),
}

/// Makes sure `reference` is in the store as `policy` says: pulls it when missing
/// (`missing`), every time (`always`), or never. A bare digest or digest prefix names a
/// stored image only. `options` gives the pull options for a registry.
pub fn ensure(
    reference: &str,
    policy: PullPolicy,
    state_root: &Path,
    options: impl FnOnce(&str) -> PullOptions,
) -> Result<(), EnsureError> {
    use crate::image::reference::Reference;
    let present = || -> Result<bool, ImageError> {
        let Some(store) = Store::open_existing(state_root)? else {
            return Ok(false);
        };
        let index = store.index()?;
        match store.resolve(&index, reference) {
            Ok(_) => Ok(true),
            Err(ImageError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    };
    let wanted = match policy {
        PullPolicy::Never => false,
        PullPolicy::Always => true,
        PullPolicy::Missing => !present()?,
    };
    let pullable = matches!(
        Reference::parse(reference),
        Ok(Reference::Name(_)) | Ok(Reference::Digest(_))
    ) && !reference.starts_with("sha256:");
    if !wanted || !pullable {
        return Ok(());
    }
    let remote = RemoteRef::parse(reference)
        .map_err(|e| EnsureError::Reference(Box::new(RegistryError::Reference(e))))?;
    let store = Store::open(state_root)?;
    let opts = options(&remote.registry);
    let report = pull(&store, reference, &opts).map_err(|source| match policy {
        PullPolicy::Missing => EnsureError::NotFound {
            reference: reference.to_string(),
            registry: remote.registry.clone(),
            source: Box::new(source),
        },
        _ => EnsureError::Pull {
            reference: reference.to_string(),
            source: Box::new(source),
        },
    })?;
    tracing::info!(
        image = %report.image.digest,
        downloaded = report.downloaded_layers,
        "pulled"
    );
    Ok(())
}

/// What a pull did.
#[derive(Debug, Clone)]
pub struct PullReport {
    pub image: ImageRecord,
    pub remote: RemoteRef,
    pub downloaded_layers: usize,
    pub reused_layers: usize,
    pub warnings: Vec<String>,
}

/// Pulls `reference` into `store`.
pub fn pull(
    store: &Store,
    reference: &str,
    opts: &PullOptions,
) -> Result<PullReport, RegistryError> {
    let remote = RemoteRef::parse(reference).map_err(RegistryError::Reference)?;
    let credentials = opts.credentials.lookup(&remote.registry)?;
    let client = Client::new(&remote, &opts.settings, credentials)?;
    let _guard = store.load_guard()?;
    let mut warnings = Vec::new();

    let (bytes, media_type, announced) =
        client.manifest(&remote.manifest_reference(), MAX_MANIFEST)?;
    let top = Digest::of(&bytes);
    if let Some(pinned) = &remote.digest {
        if top != *pinned {
            return Err(mismatch("manifest", pinned, &top));
        }
    } else if let Some(announced) = announced.as_deref().and_then(|d| Digest::parse(d).ok()) {
        if top != announced {
            return Err(mismatch("manifest", &announced, &top));
        }
    }
    let kind = effective_media_type(&media_type, &bytes);
    let (manifest_digest, manifest_bytes, index_digest) = if is_index(&kind) {
        let index: Index = parse_json("the image index", &bytes)?;
        let host = oci::host_platform();
        let desc = oci::pick_platform(&index).ok_or_else(|| {
            RegistryError::Protocol(format!(
                "{remote} has no image for {}/{} (its index lists {}) — hint: pick an image built for this machine",
                host.os,
                host.architecture,
                platforms(&index)
            ))
        })?;
        if is_index(&desc.media_type) {
            return Err(RegistryError::Protocol(format!(
                "{remote}: an index inside an index is not supported"
            )));
        }
        let (child, _, _) = client.manifest(&desc.digest.to_string(), MAX_MANIFEST)?;
        let actual = Digest::of(&child);
        if actual != desc.digest || child.len() as u64 != desc.size {
            return Err(mismatch("manifest", &desc.digest, &actual));
        }
        (desc.digest.clone(), child, Some(top))
    } else {
        (top, bytes, None)
    };
    let kind = effective_media_type("", &manifest_bytes);
    if kind.starts_with(SCHEMA1) {
        return Err(RegistryError::Protocol(format!(
            "{remote} is a Docker schema 1 image, which nsbox does not read — hint: push it again with a current tool (schema 2 / OCI)"
        )));
    }
    let manifest: Manifest = parse_json("the manifest", &manifest_bytes)?;
    check_config_type(&manifest)?;
    if manifest.config.size > MAX_CONFIG {
        return Err(RegistryError::Protocol(format!(
            "{remote}: the image config is {} bytes (at most {MAX_CONFIG})",
            manifest.config.size
        )));
    }
    let config_bytes = client.small_blob(&manifest.config.digest, MAX_CONFIG)?;
    let actual = Digest::of(&config_bytes);
    if actual != manifest.config.digest || config_bytes.len() as u64 != manifest.config.size {
        return Err(mismatch("image config", &manifest.config.digest, &actual));
    }
    let parsed: ImageConfig = parse_json("the image config", &config_bytes)?;
    check_config(
        &parsed,
        manifest.layers.len(),
        Path::new(&remote.to_string()),
    )?;
    let host = oci::host_platform();
    if let Some(arch) = parsed.architecture.as_deref() {
        if arch != host.architecture {
            warnings.push(format!(
                "the image is built for {}, this machine is {}: its programs may not run",
                printable(arch),
                host.architecture
            ));
        }
    }

    let mut jobs: BTreeMap<String, LayerJob> = BTreeMap::new();
    let mut reused = 0;
    for (layer, diff_id) in manifest.layers.iter().zip(&parsed.rootfs.diff_ids) {
        if !oci::LAYER_TYPES.contains(&layer.media_type.as_str()) {
            return Err(ImageError::MediaType {
                what: "a layer",
                media_type: printable(&layer.media_type),
            }
            .into());
        }
        let key = layer.digest.to_string();
        if jobs.contains_key(&key) {
            continue;
        }
        if store.has_layer(diff_id) && store.has_blob(&layer.digest) {
            reused += 1;
            continue;
        }
        jobs.insert(
            key.clone(),
            LayerJob {
                source_name: key,
                blob: Some((layer.digest.clone(), layer.size)),
                diff_id: Some(diff_id.clone()),
                size_hint: layer.size,
            },
        );
    }
    let downloaded = jobs.len();
    let failure: Arc<Mutex<Option<RegistryError>>> = Arc::new(Mutex::new(None));
    let open = |job: &LayerJob| -> Result<Box<dyn Read + Send + '_>, ImageError> {
        let (digest, size) = job
            .blob
            .clone()
            .ok_or_else(|| ImageError::Invalid("a layer without a digest".into()))?;
        Ok(Box::new(client.blob_reader(&digest, size, failure.clone())))
    };
    let load_opts = LoadOptions {
        limits: opts.limits,
        tag: None,
        progress: opts.progress,
        threads: if opts.jobs == 0 {
            DEFAULT_JOBS
        } else {
            opts.jobs
        },
    };
    let done = unpack_all(store, jobs, &load_opts, "pulling", &open).map_err(|e| {
        // A network failure shows to the unpacker as a short stream: report its cause.
        match failure.lock().ok().and_then(|mut f| f.take()) {
            Some(network) => network,
            None => RegistryError::Image(e),
        }
    })?;

    let mut layers = Vec::new();
    for (desc, diff_id) in manifest.layers.iter().zip(&parsed.rootfs.diff_ids) {
        let unpacked_bytes = match done.get(&desc.digest.to_string()) {
            Some(d) => d.unpacked_bytes,
            None => known_unpacked_bytes(store, diff_id)?,
        };
        layers.push(LayerRecord {
            blob: desc.digest.clone(),
            media_type: desc.media_type.clone(),
            size: desc.size,
            diff_id: diff_id.clone(),
            unpacked_bytes,
        });
    }
    store_doc(store, &manifest_digest, &manifest_bytes)?;
    store_doc(store, &manifest.config.digest, &config_bytes)?;
    let record = ImageRecord {
        digest: manifest_digest,
        names: remote.store_name().into_iter().collect(),
        manifest_size: manifest_bytes.len() as u64,
        config: manifest.config.digest.clone(),
        config_size: config_bytes.len() as u64,
        layers,
        run: parsed.config.clone().unwrap_or_default(),
        architecture: parsed.architecture.clone().unwrap_or(host.architecture),
        os: parsed.os.clone().unwrap_or(host.os),
        loaded: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        index_digest,
        build_hash: None,
    };
    add_to_index(store, std::slice::from_ref(&record))?;
    Ok(PullReport {
        image: record,
        remote,
        downloaded_layers: downloaded,
        reused_layers: reused,
        warnings,
    })
}

fn mismatch(what: &'static str, expected: &Digest, actual: &Digest) -> RegistryError {
    ImageError::DigestMismatch {
        what,
        expected: expected.to_string(),
        actual: actual.to_string(),
    }
    .into()
}

/// Docker's schema 1 manifests (`...v1+json`, `...v1+prettyjws`).
const SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1";

/// The response's media type, or the document's own `mediaType` when the registry sent a
/// generic one.
fn effective_media_type(header: &str, bytes: &[u8]) -> String {
    if !header.is_empty() && header != "application/json" && header != "text/plain" {
        return header.to_string();
    }
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
        #[serde(rename = "schemaVersion")]
        schema_version: Option<u64>,
    }
    match serde_json::from_slice::<Probe>(bytes) {
        // Schema 1 documents name no media type.
        Ok(Probe {
            schema_version: Some(1),
            ..
        }) => SCHEMA1.to_string(),
        Ok(Probe {
            media_type: Some(m),
            ..
        }) => m,
        Ok(Probe {
            manifests: Some(_), ..
        }) => oci::OCI_INDEX.to_string(),
        _ => oci::OCI_MANIFEST.to_string(),
    }
}

fn platforms(index: &Index) -> String {
    let list: Vec<String> = index
        .manifests
        .iter()
        .filter_map(|m| m.platform.as_ref())
        .map(|p| format!("{}/{}", p.os, p.architecture))
        .collect();
    if list.is_empty() {
        "no platforms".into()
    } else {
        list.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema1_manifests_are_recognised_by_their_body_or_header() {
        let body = br#"{"schemaVersion": 1, "name": "x", "tag": "1", "fsLayers": []}"#;
        assert!(effective_media_type("", body).starts_with(SCHEMA1));
        assert!(effective_media_type("application/json", body).starts_with(SCHEMA1));
        let header = "application/vnd.docker.distribution.manifest.v1+prettyjws";
        assert!(effective_media_type(header, b"{}").starts_with(SCHEMA1));
        let oci = br#"{"schemaVersion": 2, "config": {}, "layers": []}"#;
        assert_eq!(effective_media_type("", oci), oci::OCI_MANIFEST);
    }
}
