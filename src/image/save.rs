//! `nsbox save`: writes an image from the store as an OCI archive (a tar of an OCI image
//! layout) with the blobs exactly as they were loaded, so digests stay the same and other
//! tools (skopeo, podman, containerd) read it back.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use super::oci::{self, Descriptor, Index};
use super::store::{ImageRecord, Store};
use super::ImageError;

/// Writes `image` to `out` (a temporary name next to it first, renamed when complete).
pub fn save(store: &Store, image: &ImageRecord, out: &Path) -> Result<u64, ImageError> {
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.nsbox-{}", crate::ids::new_id()));
    let io = |what: String| move |source: std::io::Error| ImageError::Io { what, source };
    let result = (|| {
        let file = File::create(&tmp).map_err(io(format!("create {}", tmp.display())))?;
        let mut tar = super::tar::TarWriter::new(BufWriter::with_capacity(1 << 20, file));
        let layout = format!("{{\"imageLayoutVersion\":\"{}\"}}", oci::OCI_LAYOUT_VERSION);
        tar.file("oci-layout", layout.len() as u64, &mut layout.as_bytes())
            .map_err(io("write oci-layout".into()))?;
        let mut manifests = Vec::new();
        let base = Descriptor {
            media_type: oci::OCI_MANIFEST.to_string(),
            digest: image.digest.clone(),
            size: image.manifest_size,
            annotations: BTreeMap::new(),
            platform: None,
        };
        if image.names.is_empty() {
            manifests.push(base.clone());
        }
        for full in &image.names {
            let mut desc = base.clone();
            let tag = full.rsplit_once(':').map_or("latest", |(_, t)| t);
            desc.annotations
                .insert(oci::REF_NAME.to_string(), tag.to_string());
            desc.annotations
                .insert(oci::CONTAINERD_NAME.to_string(), full.clone());
            manifests.push(desc);
        }
        // The stored manifest may be Docker's: its descriptor must say so.
        let manifest_bytes = std::fs::read(store.blob_path(&image.digest))
            .map_err(io(format!("read manifest {}", image.digest)))?;
        if let Ok(m) = serde_json::from_slice::<oci::Manifest>(&manifest_bytes) {
            if let Some(mt) = m.media_type {
                for d in &mut manifests {
                    d.media_type = mt.clone();
                }
            }
        }
        let index = Index {
            schema_version: 2,
            media_type: Some(oci::OCI_INDEX.to_string()),
            manifests,
        };
        let index_bytes = serde_json::to_vec(&index).map_err(|e| ImageError::Io {
            what: "encode an image document".into(),
            source: e.into(),
        })?;
        tar.file(
            "index.json",
            index_bytes.len() as u64,
            &mut index_bytes.as_slice(),
        )
        .map_err(io("write index.json".into()))?;
        tar.directory("blobs/").map_err(io("write blobs/".into()))?;
        tar.directory("blobs/sha256/")
            .map_err(io("write blobs/".into()))?;
        let mut blobs = vec![image.digest.clone(), image.config.clone()];
        for layer in &image.layers {
            if !blobs.contains(&layer.blob) {
                blobs.push(layer.blob.clone());
            }
        }
        for digest in &blobs {
            let path = store.blob_path(digest);
            let mut f = File::open(&path).map_err(|_| ImageError::MissingBlob {
                what: "blob",
                digest: digest.to_string(),
                path: store.root().to_path_buf(),
            })?;
            let size = f
                .metadata()
                .map_err(io(format!("read {}", path.display())))?
                .len();
            tar.file(&format!("blobs/sha256/{}", digest.hex()), size, &mut f)
                .map_err(io(format!("write blob {digest}")))?;
        }
        let mut out_file = tar.finish().map_err(io("finish the archive".into()))?;
        out_file.flush().map_err(io("finish the archive".into()))?;
        let size = out_file.get_ref().metadata().map(|m| m.len()).unwrap_or(0);
        drop(out_file);
        std::fs::rename(&tmp, out).map_err(io(format!("write {}", out.display())))?;
        Ok(size)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
