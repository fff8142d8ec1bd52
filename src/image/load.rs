//! `nsbox load`: OCI image layouts (directories), OCI archives and `docker save` archives (tar,
//! optionally gzip- or zstd-compressed; extracted docker-save directories too), several images
//! per file. Reads them through `image::source`, finds the images (following indexes), and
//! hands their layers to the [`super::ingest`] pipeline that `nsbox import`, `nsbox pull` and
//! `nsbox build` share.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use super::digest::{printable, Digest};
use super::ingest::{
    add_to_index, check_config, check_config_type, input_err, known_unpacked_bytes,
    layer_media_type, parse_json, store_doc, synthesize_manifest, unpack_all, LayerJob,
    LoadOptions, MAX_CONFIG, MAX_MANIFEST,
};
use super::oci::{self, Descriptor, DockerSaveEntry, ImageConfig, Index, Manifest};
use super::reference::normalize_name;
use super::source::Source;
use super::store::{ImageRecord, LayerRecord, Store};
use super::ImageError;

/// Nested indexes followed at most this deep.
const MAX_INDEX_DEPTH: usize = 4;

/// What a load did.
#[derive(Debug, Clone)]
pub struct LoadReport {
    pub images: Vec<ImageRecord>,
    /// Layers unpacked now (the others were in the store already).
    pub unpacked_layers: usize,
    pub reused_layers: usize,
    pub warnings: Vec<String>,
}

/// One image found in the source, before its layers are unpacked.
struct Found {
    names: Vec<String>,
    /// (manifest digest, bytes) — None for docker-save (synthesized after unpacking).
    manifest: Option<(Digest, Vec<u8>)>,
    config: (Digest, Vec<u8>),
    parsed: ImageConfig,
    /// Per layer: the job's key, the manifest's descriptor (None for docker-save), diff_id.
    layers: Vec<(String, Option<Descriptor>, Digest)>,
}

/// Loads every image of the layout or archive at `path` into `store`.
pub fn load(store: &Store, path: &Path, opts: &LoadOptions) -> Result<LoadReport, ImageError> {
    let _guard = store.load_guard()?;
    let source = Source::open(path, store, opts.limits)?;
    let mut warnings = Vec::new();
    let stem = source_stem(path);
    let mut jobs: BTreeMap<String, LayerJob> = BTreeMap::new();
    let mut found: Vec<Found> = Vec::new();
    if source.exists("index.json") {
        if !source.exists("oci-layout") {
            return Err(input_err(
                path,
                "has index.json but no oci-layout file: not an OCI image layout",
            ));
        }
        let index: Index = parse_json(
            "index.json",
            &source.read_doc("index.json", "index.json", MAX_MANIFEST, None)?,
        )?;
        for desc in &index.manifests {
            let names = names_from_annotations(desc, &stem, &mut warnings);
            collect_oci(&source, desc, names, 0, &mut found, &mut jobs)?;
        }
    } else if source.exists("manifest.json") {
        let entries: Vec<DockerSaveEntry> = parse_json(
            "manifest.json",
            &source.read_doc("manifest.json", "manifest.json", MAX_MANIFEST, None)?,
        )?;
        for entry in entries {
            let bytes = source.read_doc("image config", &entry.config, MAX_CONFIG, None)?;
            let parsed: ImageConfig = parse_json("image config", &bytes)?;
            check_config(&parsed, entry.layers.len(), path)?;
            let mut layers = Vec::new();
            for (i, layer) in entry.layers.iter().enumerate() {
                let diff_id = parsed.rootfs.diff_ids[i].clone();
                let (_, size) = source.reader(layer)?.ok_or_else(|| {
                    input_err(path, format!("layer '{}' is missing", printable(layer)))
                })?;
                let key = format!("diff:{}", diff_id.hex());
                jobs.entry(key.clone()).or_insert(LayerJob {
                    source_name: layer.clone(),
                    blob: None,
                    diff_id: Some(diff_id.clone()),
                    size_hint: size,
                });
                layers.push((key, None, diff_id));
            }
            let mut names = Vec::new();
            for tag in entry.repo_tags.unwrap_or_default() {
                match normalize_name(&tag) {
                    Ok(n) => names.push(n),
                    Err(e) => warnings.push(format!("name skipped: {e}")),
                }
            }
            found.push(Found {
                names,
                manifest: None,
                config: (Digest::of(&bytes), bytes),
                parsed,
                layers,
            });
        }
    } else {
        return Err(input_err(
            path,
            "not an image: no index.json (OCI) or manifest.json (docker save) — hint: a root filesystem tarball is added with `nsbox import FILE --tag NAME`",
        ));
    }
    // One manifest listed under several tags is one image with several names.
    let mut unique: Vec<Found> = Vec::new();
    for image in found {
        let same = unique.iter_mut().find(|u| {
            image.manifest.is_some()
                && u.manifest.as_ref().map(|m| &m.0) == image.manifest.as_ref().map(|m| &m.0)
        });
        match same {
            Some(existing) => {
                for name in image.names {
                    if !existing.names.contains(&name) {
                        existing.names.push(name);
                    }
                }
            }
            None => unique.push(image),
        }
    }
    let mut found = unique;
    if found.is_empty() {
        return Err(input_err(path, "holds no image"));
    }
    if let Some(tag) = &opts.tag {
        if found.len() != 1 {
            return Err(ImageError::Invalid(format!(
                "--tag names one image, but {} holds {} images",
                path.display(),
                found.len()
            )));
        }
        let name = normalize_name(tag).map_err(ImageError::Reference)?;
        if !found[0].names.contains(&name) {
            found[0].names.push(name);
        }
    }

    // Layers already in the store (and their blobs) are not unpacked again.
    let total = jobs.len();
    let index = store.index()?;
    jobs.retain(|_, job| {
        let Some(diff_id) = &job.diff_id else {
            return true;
        };
        let have_blob = match &job.blob {
            Some((d, _)) => store.has_blob(d),
            // docker-save: any stored blob of this layer will do.
            None => {
                store.has_blob(diff_id)
                    || index
                        .images
                        .iter()
                        .flat_map(|i| i.layers.iter())
                        .any(|l| l.diff_id == *diff_id && store.has_blob(&l.blob))
            }
        };
        !(store.has_layer(diff_id) && have_blob)
    });
    let reused = total - jobs.len();
    let open = |job: &LayerJob| -> Result<Box<dyn Read + Send + '_>, ImageError> {
        let (reader, _) =
            source
                .reader(&job.source_name)?
                .ok_or_else(|| ImageError::MissingBlob {
                    what: "layer",
                    digest: job.source_name.clone(),
                    path: source.shown().to_path_buf(),
                })?;
        Ok(reader)
    };
    let done = unpack_all(store, jobs, opts, "unpacking", &open)?;

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut records = Vec::new();
    for image in found {
        let mut layers = Vec::new();
        for (key, desc, diff_id) in &image.layers {
            let unpacked = done.get(key);
            let record = match (desc, unpacked) {
                // The manifest's descriptor is the truth about the blob.
                (Some(desc), _) => LayerRecord {
                    blob: desc.digest.clone(),
                    media_type: desc.media_type.clone(),
                    size: desc.size,
                    diff_id: diff_id.clone(),
                    unpacked_bytes: match unpacked {
                        Some(d) => d.unpacked_bytes,
                        None => known_unpacked_bytes(store, diff_id)?,
                    },
                },
                (None, Some(d)) => LayerRecord {
                    blob: d.blob.clone(),
                    media_type: layer_media_type(d.compression).to_string(),
                    size: d.size,
                    diff_id: d.diff_id.clone(),
                    unpacked_bytes: d.unpacked_bytes,
                },
                (None, None) => reused_docker_layer(store, diff_id)?,
            };
            layers.push(record);
        }
        let (manifest_digest, manifest_bytes) = match image.manifest {
            Some(m) => m,
            None => synthesize_manifest(&image.config, &layers)?,
        };
        store_doc(store, &manifest_digest, &manifest_bytes)?;
        store_doc(store, &image.config.0, &image.config.1)?;
        let platform = oci::host_platform();
        records.push(ImageRecord {
            digest: manifest_digest,
            names: image.names,
            manifest_size: manifest_bytes.len() as u64,
            config: image.config.0.clone(),
            config_size: image.config.1.len() as u64,
            layers,
            run: image.parsed.config.clone().unwrap_or_default(),
            architecture: image
                .parsed
                .architecture
                .clone()
                .unwrap_or(platform.architecture),
            os: image.parsed.os.clone().unwrap_or(platform.os),
            loaded: now,
            index_digest: None,
            build_hash: None,
        });
    }
    add_to_index(store, &records)?;
    Ok(LoadReport {
        images: records,
        unpacked_layers: done.len(),
        reused_layers: reused,
        warnings,
    })
}

/// The record of a docker-save layer that was in the store already: the blob an image in the
/// index stored for it, or the uncompressed blob named by its diff_id.
fn reused_docker_layer(store: &Store, diff_id: &Digest) -> Result<LayerRecord, ImageError> {
    let index = store.index()?;
    if let Some(known) = index
        .images
        .iter()
        .flat_map(|im| im.layers.iter())
        .find(|l| l.diff_id == *diff_id && store.has_blob(&l.blob))
    {
        return Ok(known.clone());
    }
    if !store.has_blob(diff_id) {
        return Err(ImageError::Store {
            path: store.layer_path(diff_id),
            reason: "a layer without its blob — hint: `nsbox image prune`, then load again".into(),
        });
    }
    let size = std::fs::metadata(store.blob_path(diff_id))
        .map(|m| m.len())
        .unwrap_or(0);
    Ok(LayerRecord {
        blob: diff_id.clone(),
        media_type: oci::OCI_LAYER_TAR.to_string(),
        size,
        diff_id: diff_id.clone(),
        unpacked_bytes: super::store::tree_bytes(&store.layer_path(diff_id)),
    })
}

/// Follows `desc` (an index or a manifest) to image manifests and their configs.
fn collect_oci(
    source: &Source,
    desc: &Descriptor,
    names: Vec<String>,
    depth: usize,
    found: &mut Vec<Found>,
    jobs: &mut BTreeMap<String, LayerJob>,
) -> Result<(), ImageError> {
    let blob_name = |d: &Digest| format!("blobs/sha256/{}", d.hex());
    match desc.media_type.as_str() {
        oci::OCI_INDEX | oci::DOCKER_LIST => {
            if depth >= MAX_INDEX_DEPTH {
                return Err(ImageError::Invalid(format!(
                    "indexes nested deeper than {MAX_INDEX_DEPTH} levels"
                )));
            }
            let bytes = source.read_doc(
                "index",
                &blob_name(&desc.digest),
                MAX_MANIFEST,
                Some((&desc.digest, desc.size)),
            )?;
            let index: Index = parse_json("index", &bytes)?;
            let host = oci::host_platform();
            let chosen = oci::pick_platform(&index).ok_or_else(|| {
                ImageError::Invalid(format!(
                    "image index {} has no manifest for {}/{}",
                    desc.digest, host.os, host.architecture
                ))
            })?;
            collect_oci(source, chosen, names, depth + 1, found, jobs)
        }
        oci::OCI_MANIFEST | oci::DOCKER_MANIFEST => {
            let bytes = source.read_doc(
                "manifest",
                &blob_name(&desc.digest),
                MAX_MANIFEST,
                Some((&desc.digest, desc.size)),
            )?;
            let manifest: Manifest = parse_json("manifest", &bytes)?;
            check_config_type(&manifest)?;
            let config_bytes = source.read_doc(
                "image config",
                &blob_name(&manifest.config.digest),
                MAX_CONFIG,
                Some((&manifest.config.digest, manifest.config.size)),
            )?;
            let parsed: ImageConfig = parse_json("image config", &config_bytes)?;
            check_config(&parsed, manifest.layers.len(), source.shown())?;
            let mut layers = Vec::new();
            for (i, layer) in manifest.layers.iter().enumerate() {
                if !oci::LAYER_TYPES.contains(&layer.media_type.as_str()) {
                    return Err(ImageError::MediaType {
                        what: "a layer",
                        media_type: printable(&layer.media_type),
                    });
                }
                let diff_id = parsed.rootfs.diff_ids[i].clone();
                let name = blob_name(&layer.digest);
                if !source.exists(&name) {
                    return Err(ImageError::MissingBlob {
                        what: "layer",
                        digest: layer.digest.to_string(),
                        path: source.shown().to_path_buf(),
                    });
                }
                // Keyed by blob: two blobs with one diff_id (gzip and plain) are both kept
                // for `save`; the layer directory is shared.
                let key = format!("blob:{}", layer.digest.hex());
                jobs.entry(key.clone()).or_insert(LayerJob {
                    source_name: name,
                    blob: Some((layer.digest.clone(), layer.size)),
                    diff_id: Some(diff_id.clone()),
                    size_hint: layer.size,
                });
                layers.push((key, Some(layer.clone()), diff_id));
            }
            found.push(Found {
                names,
                manifest: Some((desc.digest.clone(), bytes)),
                config: (manifest.config.digest.clone(), config_bytes),
                parsed,
                layers,
            });
            Ok(())
        }
        other => Err(ImageError::MediaType {
            what: "a manifest",
            media_type: printable(other),
        }),
    }
}

/// The file or directory name without archive extensions, as an image repository name.
fn source_stem(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let mut stem = name.as_str();
    for ext in [".gz", ".zst", ".tgz", ".tar", ".oci", ".ociarchive"] {
        stem = stem.strip_suffix(ext).unwrap_or(stem);
    }
    let cleaned: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let cleaned = cleaned
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string();
    if cleaned.is_empty() {
        "image".to_string()
    } else {
        cleaned
    }
}

fn names_from_annotations(
    desc: &Descriptor,
    stem: &str,
    warnings: &mut Vec<String>,
) -> Vec<String> {
    let candidate = if let Some(full) = desc.annotations.get(oci::CONTAINERD_NAME) {
        full.clone()
    } else if let Some(r) = desc.annotations.get(oci::REF_NAME) {
        if r.contains(['/', ':']) {
            r.clone()
        } else {
            format!("{stem}:{r}")
        }
    } else {
        return Vec::new();
    };
    match normalize_name(&candidate) {
        Ok(name) => vec![name],
        Err(e) => {
            warnings.push(format!("name skipped: {e}"));
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stems_become_repository_names() {
        assert_eq!(source_stem(Path::new("/x/My Image.tar.gz")), "my-image");
        assert_eq!(source_stem(Path::new("busybox-oci")), "busybox-oci");
        assert_eq!(source_stem(Path::new("/x/.tar")), "image");
    }
}
