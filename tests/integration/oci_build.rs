//! Builds OCI image layouts for the image tests, entry by entry, so the tests control every
//! byte: ordinary images (busybox based) and hostile layers. Nothing binary is committed.

use std::path::{Path, PathBuf};

use nsbox::image::digest::Digest;

/// A tar stream written by hand (ustar + PAX for long names, links and xattrs).
#[derive(Default)]
pub struct Tar {
    out: Vec<u8>,
}

/// One header's fields.
pub struct Entry<'a> {
    pub name: &'a str,
    pub kind: u8,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub link: &'a str,
    pub xattrs: Vec<(&'a str, &'a [u8])>,
    /// Overrides the PAX size record (hostile archives).
    pub pax_size: Option<u64>,
}

impl<'a> Entry<'a> {
    pub fn new(name: &'a str, kind: u8, mode: u32) -> Self {
        Entry {
            name,
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime: 1_700_000_000,
            link: "",
            xattrs: Vec::new(),
            pax_size: None,
        }
    }
}

fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body_len = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body_len + 1;
    while len.to_string().len() + body_len != len {
        len += 1;
    }
    let mut out = format!("{len} {key}=").into_bytes();
    out.extend_from_slice(value);
    out.push(b'\n');
    out
}

/// One raw header block for `e` with `size` bytes of data announced.
pub fn header_block(e: &Entry<'_>, size: u64) -> [u8; 512] {
    let (name, kind, mode, uid, gid, mtime, link) = (
        e.name.as_bytes(),
        e.kind,
        e.mode,
        e.uid,
        e.gid,
        e.mtime,
        e.link.as_bytes(),
    );
    let mut b = [0u8; 512];
    let n = name.len().min(100);
    b[..n].copy_from_slice(&name[..n]);
    let octal = |dst: &mut [u8], v: u64| {
        let text = format!("{:0w$o}", v, w = dst.len() - 1);
        dst[..text.len()].copy_from_slice(text.as_bytes());
    };
    octal(&mut b[100..108], u64::from(mode));
    octal(&mut b[108..116], uid.min(0o7777777));
    octal(&mut b[116..124], gid.min(0o7777777));
    octal(&mut b[124..136], size);
    octal(&mut b[136..148], mtime);
    b[156] = kind;
    let l = link.len().min(100);
    b[157..157 + l].copy_from_slice(&link[..l]);
    b[257..263].copy_from_slice(b"ustar\0");
    b[263..265].copy_from_slice(b"00");
    b[148..156].copy_from_slice(b"        ");
    let sum: u64 = b.iter().map(|x| u64::from(*x)).sum();
    b[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    b
}

impl Tar {
    fn pad(&mut self) {
        let rem = self.out.len() % 512;
        if rem != 0 {
            self.out.resize(self.out.len() + 512 - rem, 0);
        }
    }

    pub fn entry(&mut self, e: Entry<'_>, data: &[u8]) -> &mut Self {
        let mut pax = Vec::new();
        if e.name.len() > 100 {
            pax.extend(pax_record("path", e.name.as_bytes()));
        }
        if e.link.len() > 100 {
            pax.extend(pax_record("linkpath", e.link.as_bytes()));
        }
        if e.uid > 0o7777777 {
            pax.extend(pax_record("uid", e.uid.to_string().as_bytes()));
        }
        for (k, v) in &e.xattrs {
            pax.extend(pax_record(&format!("SCHILY.xattr.{k}"), v));
        }
        if let Some(size) = e.pax_size {
            pax.extend(pax_record("size", size.to_string().as_bytes()));
        }
        if !pax.is_empty() {
            self.out.extend(header_block(
                &Entry::new("PaxHeaders/x", b'x', 0o644),
                pax.len() as u64,
            ));
            self.out.extend(&pax);
            self.pad();
        }
        self.out.extend(header_block(&e, data.len() as u64));
        self.out.extend(data);
        self.pad();
        self
    }

    pub fn dir(&mut self, name: &str, mode: u32) -> &mut Self {
        self.entry(Entry::new(name, b'5', mode), b"")
    }

    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> &mut Self {
        self.entry(Entry::new(name, b'0', mode), data)
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        let mut e = Entry::new(name, b'2', 0o777);
        e.link = target;
        self.entry(e, b"")
    }

    pub fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        let mut e = Entry::new(name, b'1', 0o644);
        e.link = target;
        self.entry(e, b"")
    }

    /// Appends bytes as they are (hand-made headers).
    pub fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.out.extend(bytes);
        self
    }

    pub fn finish(&self) -> Vec<u8> {
        let mut out = self.out.clone();
        out.extend([0u8; 1024]);
        out
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Comp {
    None,
    Gzip,
    Zstd,
}

pub fn compress(data: &[u8], comp: Comp) -> Vec<u8> {
    use std::io::Write;
    match comp {
        Comp::None => data.to_vec(),
        Comp::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        Comp::Zstd => zstd::stream::encode_all(data, 3).unwrap(),
    }
}

fn media_type(comp: Comp) -> &'static str {
    match comp {
        Comp::None => "application/vnd.oci.image.layer.v1.tar",
        Comp::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
        Comp::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
    }
}

/// An OCI image layout directory under construction.
pub struct Layout {
    pub dir: PathBuf,
    manifests: Vec<serde_json::Value>,
}

/// What the tests need to know about a built image.
pub struct Built {
    pub manifest: String,
    pub diff_ids: Vec<String>,
    pub layer_blobs: Vec<String>,
}

impl Layout {
    pub fn new(dir: &Path) -> Layout {
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        Layout {
            dir: dir.to_path_buf(),
            manifests: Vec::new(),
        }
    }

    pub fn blob(&self, bytes: &[u8]) -> (String, u64) {
        let d = Digest::of(bytes);
        std::fs::write(self.dir.join("blobs/sha256").join(d.hex()), bytes).unwrap();
        (d.to_string(), bytes.len() as u64)
    }

    /// Adds an image: layers bottom first (uncompressed tar, compression); `run` is the
    /// config's "config" object.
    pub fn image(
        &mut self,
        tag: Option<&str>,
        layers: &[(Vec<u8>, Comp)],
        run: serde_json::Value,
    ) -> Built {
        let mut descs = Vec::new();
        let mut diff_ids = Vec::new();
        let mut layer_blobs = Vec::new();
        for (tar, comp) in layers {
            diff_ids.push(Digest::of(tar).to_string());
            let (digest, size) = self.blob(&compress(tar, *comp));
            layer_blobs.push(digest.clone());
            descs.push(
                serde_json::json!({"mediaType": media_type(*comp), "digest": digest, "size": size}),
            );
        }
        let config = serde_json::json!({
            "architecture": "amd64", "os": "linux", "config": run,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        let (cd, cs) = self.blob(&serde_json::to_vec(&config).unwrap());
        let manifest = serde_json::json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
            "layers": descs,
        });
        let (md, ms) = self.blob(&serde_json::to_vec(&manifest).unwrap());
        let mut desc = serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms});
        if let Some(tag) = tag {
            desc["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": tag});
        }
        self.manifests.push(desc);
        self.write();
        Built {
            manifest: md,
            diff_ids,
            layer_blobs,
        }
    }

    /// (Re)writes index.json; `edit` may change the manifests' descriptors first.
    pub fn write(&self) {
        let index = serde_json::json!({"schemaVersion": 2, "manifests": self.manifests});
        std::fs::write(
            self.dir.join("index.json"),
            serde_json::to_vec(&index).unwrap(),
        )
        .unwrap();
    }

    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.dir
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    }
}

pub fn busybox() -> PathBuf {
    ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("busybox-static is needed for the image tests (apt-get install busybox-static)")
}

/// A base layer: static busybox as /bin/sh and friends, accounts, /tmp.
pub fn base_layer() -> Vec<u8> {
    let bb = std::fs::read(busybox()).unwrap();
    let mut t = Tar::default();
    t.dir("./", 0o755)
        .dir("bin/", 0o755)
        .file("bin/busybox", 0o755, &bb)
        .symlink("bin/sh", "busybox")
        .dir("etc/", 0o755)
        .file(
            "etc/passwd",
            0o644,
            b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
        )
        .file("etc/group", 0o644, b"root:x:0:\napp:x:1000:\nstaff:x:50:\n")
        .dir("tmp/", 0o1777);
    for applet in [
        "cat", "ls", "stat", "id", "echo", "readlink", "test", "touch", "grep", "wc", "head",
        "sleep", "env", "pwd", "mknod",
    ] {
        t.symlink(&format!("bin/{applet}"), "busybox");
    }
    t.finish()
}

/// A layout whose one entry (tagged `tag`) is a multi-platform index of two busybox images,
/// for arm64 and amd64, each with an /arch file naming its platform. Returns the index's
/// digest.
pub fn multi_arch_layout(dir: &Path, tag: &str) -> String {
    let mut layout = Layout::new(dir);
    let mut descs = Vec::new();
    for arch in ["arm64", "amd64"] {
        let mut t = Tar::default();
        t.file("arch", 0o644, format!("{arch}\n").as_bytes());
        let built = layout.image(
            None,
            &[(base_layer(), Comp::Gzip), (t.finish(), Comp::Gzip)],
            serde_json::json!({}),
        );
        let size = std::fs::metadata(layout.blob_path(&built.manifest))
            .unwrap()
            .len();
        descs.push(serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": built.manifest, "size": size,
            "platform": {"architecture": arch, "os": "linux"}}));
    }
    let index = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": descs});
    let (d, s) = layout.blob(&serde_json::to_vec(&index).unwrap());
    std::fs::write(
        layout.dir.join("index.json"),
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": d, "size": s, "annotations": {"org.opencontainers.image.ref.name": tag}}]})).unwrap(),
    )
    .unwrap();
    d
}

/// Bytes that do not compress, deterministic per seed.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}
