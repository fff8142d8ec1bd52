//! `nsbox import`: a root filesystem tarball (tar, tar.gz, tar.zst) becomes a one-layer image,
//! through the same [`super::ingest`] pipeline as `nsbox load`.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::digest::Digest;
use super::ingest::{
    add_to_index, input_err, layer_media_type, parse_json, progress_line, store_doc,
    synthesize_manifest, unpack_stream, Counted, Expect, LoadOptions,
};
use super::oci::{self, ImageConfig};
use super::reference::normalize_name;
use super::store::{ImageRecord, LayerRecord, Store};
use super::ImageError;

/// Imports a root filesystem tarball (tar, tar.gz, tar.zst) as a one-layer image `name`.
pub fn import(
    store: &Store,
    path: &Path,
    name: &str,
    opts: &LoadOptions,
) -> Result<ImageRecord, ImageError> {
    let name = normalize_name(name).map_err(ImageError::Reference)?;
    let _guard = store.load_guard()?;
    let file = File::open(path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            input_err(path, "does not exist")
        } else {
            input_err(path, e.to_string())
        }
    })?;
    if file.metadata().is_ok_and(|m| m.is_dir()) {
        return Err(input_err(path, "is a directory — hint: `nsbox import` takes a tarball (tar -C DIR -c . > rootfs.tar); an OCI layout directory is loaded with `nsbox load`"));
    }
    let total = file.metadata().map(|m| m.len()).unwrap_or(0);
    let read = AtomicU64::new(0);
    let finished = AtomicUsize::new(0);
    let all_done = AtomicBool::new(false);
    let done = std::thread::scope(|scope| {
        if opts.progress {
            scope.spawn(|| progress_line("unpacking", &read, total, &finished, 1, &all_done));
        }
        let result = unpack_stream(
            store,
            Counted {
                inner: file,
                count: &read,
            },
            &Expect {
                blob: None,
                diff_id: None,
            },
            opts.limits,
            &path.display().to_string(),
        );
        all_done.store(true, Ordering::Relaxed);
        result
    })?;
    let platform = oci::host_platform();
    let config = serde_json::json!({
        "architecture": platform.architecture,
        "os": "linux",
        "config": { "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"] },
        "rootfs": { "type": "layers", "diff_ids": [done.diff_id.to_string()] },
        "history": [ { "created_by": "nsbox import" } ],
    });
    let config_bytes = serde_json::to_vec(&config).map_err(|e| ImageError::Io {
        what: "encode an image document".into(),
        source: e.into(),
    })?;
    let config_digest = Digest::of(&config_bytes);
    let layer = LayerRecord {
        blob: done.blob.clone(),
        media_type: layer_media_type(done.compression).to_string(),
        size: done.size,
        diff_id: done.diff_id.clone(),
        unpacked_bytes: done.unpacked_bytes,
    };
    let (manifest_digest, manifest_bytes) = synthesize_manifest(
        &(config_digest.clone(), config_bytes.clone()),
        std::slice::from_ref(&layer),
    )?;
    store_doc(store, &config_digest, &config_bytes)?;
    store_doc(store, &manifest_digest, &manifest_bytes)?;
    let parsed: ImageConfig = parse_json("image config", &config_bytes)?;
    let record = ImageRecord {
        digest: manifest_digest,
        names: vec![name],
        manifest_size: manifest_bytes.len() as u64,
        config: config_digest,
        config_size: config_bytes.len() as u64,
        layers: vec![layer],
        run: parsed.config.unwrap_or_default(),
        architecture: platform.architecture,
        os: platform.os,
        loaded: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        index_digest: None,
        build_hash: None,
    };
    add_to_index(store, std::slice::from_ref(&record))?;
    Ok(record)
}
