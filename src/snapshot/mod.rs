//! Snapshots of sessions: `nsbox commit` turns a living session's filesystem into an image in
//! the store; `nsbox fork` copies it into a snapshot layer that forks are stacked on
//! ([`snapshot_for_fork`], [`layer`]). (`nsbox pause`/`resume` are the session supervisor's
//! cgroup freezer, see `session::daemon`; this module is what happens outside it.)
//!
//! # What a commit captures
//! One new layer on top of the session's image: the overlay's upper directory (what the
//! session changed in its root, deletions as OCI whiteouts — with `--writable-root`; without
//! it only /sandbox can change) and the whole working tree /sandbox, which is a mount of its
//! own and not part of the overlay, as an opaque directory. /tmp (scratch) and what nsbox
//! itself writes into every sandbox (hostname, hosts, resolv.conf, its account lines) are left
//! out, as in `nsbox build` (whose capture this reuses). The config is the base image's, plus
//! a history entry, the session's environment (without any variable that holds a `--secret`),
//! its working directory, and the label [`SANDBOX_IN_IMAGE_LABEL`], which makes sandboxes of
//! the image start with the image's /sandbox instead of an empty tmpfs.
//!
//! A session on the host root or a `--rootfs` directory has no image to stack on: its changes
//! alone would not be a root filesystem, so commit refuses it (say so, rather than make an
//! image that cannot run).
//!
//! # Consistency and faults
//! The supervisor freezes the session for the connection that asked for the snapshot and
//! thaws it when that connection closes — after the capture, or when `nsbox commit` dies — so
//! a killed commit never leaves a session frozen. The layer is written into the store's
//! `tmp/`, unpacked through the same verified path as `load`, and the image only exists once
//! the index names it (the last step): a commit killed before that leaves no image, only
//! unreferenced files that `nsbox prune` removes.

pub mod layer;

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::build::capture::{self, Extra};
use crate::image::digest::Digest;
use crate::image::ingest::{self, unpack_stream, Expect};
use crate::image::store::{remove_tree, ImageRecord, Store};
use crate::image::{ImageError, Limits};
use crate::session::client::SessionClient;
use crate::session::protocol::SnapshotInfo;
use crate::session::state::SessionStore;
use crate::session::SessionError;

pub use crate::image::oci::{
    SANDBOX_DIR_IN_IMAGE as SANDBOX_IN_IMAGE, SANDBOX_DIR_LABEL as SANDBOX_IN_IMAGE_LABEL,
};

/// Why a commit failed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{0}")]
    Session(#[from] SessionError),
    #[error("invalid image name {name:?}: {message}")]
    Name { name: String, message: String },
    #[error("session {session} runs on {root}, not on an image: its changes alone are no root filesystem — hint: commit sessions created with --image (`nsbox create --image IMAGE`)")]
    NoImage { session: String, root: String },
    #[error("session {session} is a fork: the files it started with are on its parent's snapshot layer, in no image, and a commit would lose them — hint: commit the parent instead, or `nsbox cp` the files out")]
    Fork { session: String },
    #[error("the session's image {digest} is no longer in the store — hint: it was removed while the session ran; `nsbox cp` the files out instead")]
    BaseGone { digest: String },
    #[error("the session's image: {0}")]
    BaseConfig(String),
    #[error("capturing the session's files: {what}: {source}")]
    Capture {
        what: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Image(#[from] ImageError),
}

/// A committed image and what it took.
#[derive(Debug)]
pub struct Committed {
    pub image: ImageRecord,
    pub entries: u64,
    /// How long the session was frozen.
    pub frozen_secs: f64,
    pub seconds: f64,
}

/// `nsbox commit SESSION NAME[:TAG]`.
pub fn commit(
    sessions: &SessionStore,
    session: &str,
    name: &str,
    state_root: &Path,
) -> Result<Committed, SnapshotError> {
    commit_with_info(sessions, session, name, state_root).map(|(c, _)| c)
}

/// [`commit`], also returning what the session's supervisor said about it (its network
/// policy, for `nsbox fork`).
pub fn commit_with_info(
    sessions: &SessionStore,
    session: &str,
    name: &str,
    state_root: &Path,
) -> Result<(Committed, SnapshotInfo), SnapshotError> {
    let started = Instant::now();
    let tag = crate::image::reference::normalize_name(name).map_err(|e| SnapshotError::Name {
        name: name.to_string(),
        message: e.to_string(),
    })?;
    let client = connect_image_session(sessions, session)?;
    let store = Store::open(state_root)?;
    let _guard = store.load_guard()?;
    let workdir = store.tmp_path("commit");
    std::fs::create_dir(&workdir).map_err(io("create the commit directory"))?;
    let result = commit_in(&store, client, &tag, session, &workdir, started);
    let _ = remove_tree(&workdir);
    result
}

fn io(what: &str) -> impl FnOnce(std::io::Error) -> SnapshotError {
    let what = what.to_string();
    move |source| SnapshotError::Capture { what, source }
}

fn commit_in(
    store: &Store,
    client: SessionClient,
    tag: &str,
    session: &str,
    workdir: &Path,
    started: Instant,
) -> Result<(Committed, SnapshotInfo), SnapshotError> {
    // Frozen from here until `client` is dropped.
    let frozen_at = Instant::now();
    let (info, root, upper) = client.snapshot()?;
    let digest = info.image.clone().ok_or_else(|| SnapshotError::NoImage {
        session: session.to_string(),
        root: client.record.root.clone(),
    })?;
    if !info.extra_layers.is_empty() {
        return Err(SnapshotError::Fork {
            session: session.to_string(),
        });
    }
    let index = store.index()?;
    let base = index
        .images
        .iter()
        .find(|i| i.digest.to_string() == digest)
        .cloned()
        .ok_or(SnapshotError::BaseGone { digest })?;
    let blob_file = workdir.join("layer.tar.gz");
    let captured = capture_session(&info, &root, &upper, &blob_file)?;
    drop((root, upper));
    // The session goes on.
    drop(client);
    let frozen_secs = frozen_at.elapsed().as_secs_f64();

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

    let base_config = std::fs::read(store.blob_path(&base.config))
        .map_err(io("read the session image's config"))?;
    let config_bytes = commit_config(&base_config, &info, &layer.diff_id, session, tag)?;
    // The commit point is the index entry: before it, no image names the layer.
    let record = ingest::store_image_on(store, &base, &layer, config_bytes, tag, None)?;
    let committed = Committed {
        image: record,
        entries: captured.entries,
        frozen_secs,
        seconds: started.elapsed().as_secs_f64(),
    };
    Ok((committed, info))
}

/// The layer: the upper directory, and /sandbox in whole. Both are read through the
/// descriptors the supervisor sent (no path of the host leads there).
fn capture_session(
    info: &SnapshotInfo,
    root: &OwnedFd,
    upper: &OwnedFd,
    out: &Path,
) -> Result<capture::Captured, SnapshotError> {
    let upper_path = PathBuf::from(format!("/proc/self/fd/{}", upper.as_raw_fd()));
    let sandbox = PathBuf::from(format!("/proc/self/fd/{}/sandbox", root.as_raw_fd()));
    // /sandbox is a mount point the sandbox cannot replace (it does not own its mount
    // namespace), but never follow a link there all the same.
    let extras: Vec<Extra<'_>> = match std::fs::symlink_metadata(&sandbox) {
        Ok(m) if m.is_dir() => vec![Extra {
            at: "sandbox",
            dir: &sandbox,
        }],
        _ => Vec::new(),
    };
    capture::capture_with(
        &upper_path,
        &info.layers,
        info.uid_base,
        &extras,
        capture::COMMIT_LEVEL,
        out,
    )
    .map_err(io("write the layer"))
}

/// A client of `session`, which must have started from an image: a session on the host's
/// root or a directory has no image to stack on.
fn connect_image_session(
    sessions: &SessionStore,
    session: &str,
) -> Result<SessionClient, SnapshotError> {
    let client = SessionClient::connect(sessions, session)?;
    if !client.record.root.starts_with("image:") {
        return Err(SnapshotError::NoImage {
            session: session.to_string(),
            root: client.record.root.clone(),
        });
    }
    Ok(client)
}

/// A fork's snapshot of its parent: the parent's files in a snapshot layer of the store
/// (see [`layer`]), leased while this lives — and by every fork's supervisor, which inherits
/// the lease from the `nsbox fork` that made it.
#[derive(Debug)]
pub struct ForkSnapshot {
    /// The forks' layers above their image's, top first: the new snapshot layer, then the
    /// parent's own (a fork of a fork).
    pub layers: Vec<PathBuf>,
    /// The parent's image (manifest digest) and what its supervisor said of it.
    pub image: String,
    pub info: SnapshotInfo,
    pub copied: layer::Copied,
    /// How long the parent was frozen.
    pub frozen_secs: f64,
    _leases: Vec<crate::image::store::Lease>,
}

impl ForkSnapshot {
    /// The image spec of a fork: the parent's image, with the parent's environment and
    /// working directory and its /sandbox kept (it is in the snapshot layer), as a committed
    /// image's config would have them.
    pub fn fork_image(&self, image: &mut crate::image::ImageSpec) {
        let run = &mut image.run;
        run.env = Some(
            self.info
                .env
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect(),
        );
        run.working_dir = Some(self.info.workdir.to_string_lossy().into_owned());
        run.labels
            .get_or_insert_with(Default::default)
            .insert(SANDBOX_IN_IMAGE_LABEL.into(), SANDBOX_IN_IMAGE.into());
    }
}

/// A fork snapshot handed to `nsbox create` processes another process runs (the server's
/// forks: its creates are subprocesses, which inherit no lease): the layers, the parent's
/// image and what its supervisor said. Each create leases the layers itself
/// ([`ForkSnapshot::adopt`]) before the hand-over's maker lets its own lease go.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ForkHandoff {
    pub layers: Vec<PathBuf>,
    pub image: String,
    pub info: SnapshotInfo,
}

impl ForkSnapshot {
    /// What a create in another process needs to stack itself on this snapshot.
    pub fn handoff(&self) -> ForkHandoff {
        ForkHandoff {
            layers: self.layers.clone(),
            image: self.image.clone(),
            info: self.info.clone(),
        }
    }

    /// The snapshot `handoff` describes, leased by this process for as long as it (and every
    /// supervisor forked from it) lives. Refused when a layer is not a snapshot layer of this
    /// store or is gone.
    pub fn adopt(handoff: ForkHandoff, state_root: &Path) -> Result<ForkSnapshot, SnapshotError> {
        let store = Store::open(state_root)?;
        let lease = store.lease_snapshot_layers(&handoff.layers)?;
        Ok(ForkSnapshot {
            layers: handoff.layers,
            image: handoff.image,
            info: handoff.info,
            copied: layer::Copied::default(),
            frozen_secs: 0.0,
            _leases: vec![lease],
        })
    }
}

/// The tar-free snapshot `nsbox fork` stacks its forks on: the session is frozen while its
/// upper directory and /sandbox are copied into a new layer directory under the store's
/// `tmp/` (held from garbage collection by the load guard), then thawed; the layer is moved
/// into `layers/` already leased. A fork killed before that leaves a directory in `tmp/`, after
/// it an unleased layer: both are garbage `nsbox prune` (and `image prune`) collect.
pub fn snapshot_for_fork(
    sessions: &SessionStore,
    session: &str,
    state_root: &Path,
) -> Result<ForkSnapshot, SnapshotError> {
    let client = connect_image_session(sessions, session)?;
    let store = Store::open(state_root)?;
    let _guard = store.load_guard()?;
    let id = crate::ids::new_id();
    let tmp = store.tmp_path("snapshot");
    std::fs::create_dir(&tmp).map_err(io("create the snapshot directory"))?;
    let copied = (|| {
        // Frozen from here until `client` is dropped.
        let frozen_at = Instant::now();
        let (info, root, upper) = client.snapshot()?;
        let image = info.image.clone().ok_or_else(|| SnapshotError::NoImage {
            session: session.to_string(),
            root: client.record.root.clone(),
        })?;
        // The parent's own snapshot layers stay below the new one.
        let parents = store.lease_snapshot_layers(&info.extra_layers)?;
        let upper_path = PathBuf::from(format!("/proc/self/fd/{}", upper.as_raw_fd()));
        let sandbox = PathBuf::from(format!("/proc/self/fd/{}/sandbox", root.as_raw_fd()));
        let sandbox = std::fs::symlink_metadata(&sandbox)
            .is_ok_and(|m| m.is_dir())
            .then_some(sandbox);
        let lowers: Vec<PathBuf> = info
            .extra_layers
            .iter()
            .chain(&info.layers)
            .cloned()
            .collect();
        let copied = layer::copy_session(
            &upper_path,
            sandbox.as_deref(),
            info.uid_base,
            &lowers,
            &tmp,
        )
        .map_err(io("copy the session's files"))?;
        drop((root, upper));
        // The parent goes on.
        drop(client);
        Ok((
            image,
            info,
            parents,
            copied,
            frozen_at.elapsed().as_secs_f64(),
        ))
    })();
    let (image, info, parents, copied, frozen_secs) = match copied {
        Ok(done) => done,
        Err(e) => {
            let _ = remove_tree(&tmp);
            return Err(e);
        }
    };
    let lease = match store.install_snapshot_layer(&tmp, &id) {
        Ok(lease) => lease,
        Err(e) => {
            let _ = remove_tree(&tmp);
            return Err(e.into());
        }
    };
    let mut layers = lease.layers.clone();
    layers.extend(info.extra_layers.iter().cloned());
    Ok(ForkSnapshot {
        layers,
        image,
        info,
        copied,
        frozen_secs,
        _leases: vec![lease, parents],
    })
}

/// The base's config plus the layer, a history entry, the session's env, working directory
/// and the /sandbox label.
fn commit_config(
    base_config: &[u8],
    info: &SnapshotInfo,
    diff_id: &Digest,
    session: &str,
    tag: &str,
) -> Result<Vec<u8>, SnapshotError> {
    let mut config: serde_json::Value = serde_json::from_slice(base_config)
        .map_err(|e| SnapshotError::BaseConfig(format!("its config is not valid JSON: {e}")))?;
    let now = crate::build::rfc3339_now();
    let obj = config
        .as_object_mut()
        .ok_or_else(|| SnapshotError::BaseConfig("its config is not a JSON object".into()))?;
    obj.insert("created".into(), now.clone().into());
    obj.remove("container_config");
    obj.remove("container");
    let rootfs = obj
        .entry("rootfs")
        .or_insert_with(|| serde_json::json!({"type": "layers", "diff_ids": []}));
    if let Some(ids) = rootfs.get_mut("diff_ids").and_then(|v| v.as_array_mut()) {
        ids.push(diff_id.to_string().into());
    }
    let history = obj
        .entry("history")
        .or_insert_with(|| serde_json::json!([]));
    if let Some(h) = history.as_array_mut() {
        h.push(serde_json::json!({
            "created": now,
            "created_by": format!("nsbox commit {session}"),
            "comment": format!("nsbox commit {session} {tag}"),
        }));
    }
    let run = obj.entry("config").or_insert_with(|| serde_json::json!({}));
    if !run.is_object() {
        *run = serde_json::json!({});
    }
    if let Some(run) = run.as_object_mut() {
        let env: Vec<String> = info.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        run.insert("Env".into(), env.into());
        run.insert(
            "WorkingDir".into(),
            info.workdir.to_string_lossy().into_owned().into(),
        );
        let labels = run.entry("Labels").or_insert_with(|| serde_json::json!({}));
        if !labels.is_object() {
            *labels = serde_json::json!({});
        }
        if let Some(l) = labels.as_object_mut() {
            l.insert(SANDBOX_IN_IMAGE_LABEL.into(), SANDBOX_IN_IMAGE.into());
        }
    }
    serde_json::to_vec(&config).map_err(|e| io("write the image config")(std::io::Error::other(e)))
}

/// What `nsbox fork` was asked for, besides the session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForkRequest {
    pub count: u32,
    /// One name per fork, or one name for all (`NAME-1` … `NAME-N`), or none.
    pub names: Vec<String>,
    /// A network policy for the forks; none given: the parent's.
    pub net: Option<String>,
    pub allow: Vec<String>,
    pub deny: Vec<String>,
    /// Further `nsbox create` flags (secrets, environment), given to every fork.
    pub extra: Vec<String>,
}

/// Why a fork request is refused before anything is made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ForkError {
    #[error("--count must be 1 to {MAX_FORKS}, not {0}")]
    Count(u32),
    #[error("{given} --name values for --count {count} — hint: give one name per fork, or one name for all (they get -1, -2, … appended)")]
    Names { given: usize, count: u32 },
}

/// The most forks one `nsbox fork` makes.
pub const MAX_FORKS: u32 = 64;

/// The forks' names (None: unnamed), checked against the count.
pub fn fork_names(req: &ForkRequest) -> Result<Vec<Option<String>>, ForkError> {
    if req.count == 0 || req.count > MAX_FORKS {
        return Err(ForkError::Count(req.count));
    }
    let n = req.count as usize;
    Ok(match req.names.len() {
        0 => vec![None; n],
        1 if n == 1 => vec![Some(req.names[0].clone())],
        1 => (1..=n)
            .map(|i| Some(format!("{}-{i}", req.names[0])))
            .collect(),
        given if given == n => req.names.iter().cloned().map(Some).collect(),
        given => {
            return Err(ForkError::Names {
                given,
                count: req.count,
            })
        }
    })
}

/// The `nsbox create` arguments of one fork of a session (`parent`, `info` from its
/// supervisor) of the image `image` (the snapshot's layers go on top of it; `nsbox fork`
/// parses these in its own process, the serve API runs them): the parent's profile, limits, user,
/// writable root and network policy (unless the request gives one), and the request's
/// extra flags. Secrets are never the parent's: only what `extra` gives again.
pub fn fork_create_args(
    req: &ForkRequest,
    parent: &crate::session::state::SessionRecord,
    info: &SnapshotInfo,
    image: &str,
    name: Option<&str>,
) -> Vec<String> {
    let mut args = vec!["create".to_string(), "--image".into(), image.to_string()];
    if let Some(name) = name {
        args.extend(["--name".into(), name.to_string()]);
    }
    args.extend(["--profile".into(), parent.profile.clone()]);
    if let Some(m) = parent.memory {
        args.extend(["--memory".into(), m.to_string()]);
    }
    if let Some(c) = parent.cpu_millis {
        args.extend(["--cpus".into(), format!("{}", c as f64 / 1000.0)]);
    }
    if let Some(p) = parent.pids {
        args.extend(["--pids".into(), p.to_string()]);
    }
    args.extend(["--user".into(), format!("{}:{}", info.uid, info.gid)]);
    if info.writable_root {
        args.push("--writable-root".into());
    }
    let own_policy = req.net.is_some() || !req.allow.is_empty() || !req.deny.is_empty();
    let (net, allow, deny) = if own_policy {
        (req.net.clone(), &req.allow, &req.deny)
    } else {
        (
            Some(info.network.clone()).filter(|n| !n.is_empty()),
            &info.allow,
            &info.deny,
        )
    };
    if let Some(net) = net {
        args.extend(["--net".into(), net]);
    }
    for a in allow {
        args.extend(["--allow".into(), a.clone()]);
    }
    for d in deny {
        args.extend(["--deny".into(), d.clone()]);
    }
    args.extend(req.extra.iter().cloned());
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> SnapshotInfo {
        SnapshotInfo {
            image: Some("sha256:x".into()),
            layers: Vec::new(),
            env: Vec::new(),
            workdir: "/sandbox".into(),
            uid: 1000,
            gid: 1000,
            uid_base: 100_000,
            network: "filtered".into(),
            allow: vec!["example.com".into()],
            deny: vec!["bad.example.com".into()],
            writable_root: true,
            extra_layers: Vec::new(),
        }
    }

    fn parent() -> crate::session::state::SessionRecord {
        let mut r: crate::session::state::SessionRecord = serde_json::from_value(
            serde_json::json!({"id": "p", "created": 0, "root": "image:x", "profile": "default",
                "network": "filtered", "uid": 1000, "gid": 1000, "supervisor_pid": 1,
                "init_pid": 2, "workdir": "/sandbox"}),
        )
        .unwrap();
        r.memory = Some(1 << 30);
        r.cpu_millis = Some(1500);
        r
    }

    #[test]
    fn names_follow_the_count() {
        let req = |count, names: &[&str]| ForkRequest {
            count,
            names: names.iter().map(|s| s.to_string()).collect(),
            ..ForkRequest::default()
        };
        assert_eq!(fork_names(&req(2, &[])).unwrap(), vec![None, None]);
        assert_eq!(
            fork_names(&req(2, &["t"])).unwrap(),
            vec![Some("t-1".into()), Some("t-2".into())]
        );
        assert_eq!(fork_names(&req(1, &["t"])).unwrap(), vec![Some("t".into())]);
        assert_eq!(
            fork_names(&req(3, &["a", "b"])),
            Err(ForkError::Names { given: 2, count: 3 })
        );
        assert_eq!(fork_names(&req(0, &[])), Err(ForkError::Count(0)));
        assert_eq!(fork_names(&req(65, &[])), Err(ForkError::Count(65)));
    }

    #[test]
    fn a_fork_gets_the_parents_policy_unless_given_and_never_its_secrets() {
        let inherited = fork_create_args(&ForkRequest::default(), &parent(), &info(), "img", None);
        let text = inherited.join(" ");
        assert!(text.contains("--net filtered --allow example.com --deny bad.example.com"));
        assert!(text.contains("--memory 1073741824 --cpus 1.5"), "{text}");
        assert!(text.contains("--writable-root"), "{text}");
        assert!(!text.contains("secret"), "{text}");
        let own = ForkRequest {
            net: Some("none".into()),
            extra: vec!["--secret".into(), "K=v".into()],
            ..ForkRequest::default()
        };
        let text = fork_create_args(&own, &parent(), &info(), "img", Some("f")).join(" ");
        assert!(text.contains("--name f"), "{text}");
        assert!(text.contains("--net none"), "{text}");
        assert!(!text.contains("example.com"), "{text}");
        assert!(text.ends_with("--secret K=v"), "{text}");
    }
}
