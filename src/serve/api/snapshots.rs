//! Snapshots through the API: pause and resume (the cgroup freezer, as `nsbox pause`/`resume`),
//! commit (the sandbox's files as an image, as `nsbox commit`) and fork (new sandboxes stacked
//! copy-on-write on one snapshot of its files, as `nsbox fork`). The E2B API's pause, resume
//! and snapshot calls use the same functions.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::*;
use crate::snapshot::{self, SnapshotError};

/// What `POST /v1/sandboxes/{id}/commit` accepts.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CommitRequest {
    /// The image's name, NAME[:TAG] (`:latest` when no tag).
    pub image: String,
}

/// What `POST /v1/sandboxes/{id}/fork` accepts.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ForkRequest {
    /// How many sandboxes (1 to 64; default 1).
    pub count: Option<u32>,
    /// One name per fork, or one for all (`NAME-1` … `NAME-N`).
    #[serde(default)]
    pub names: Vec<String>,
    /// The forks' network policy; none: the parent's.
    pub network: Option<sandboxes::NetworkRequest>,
    /// Added to the parent's environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The forks' secrets: never the parent's, only these.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub ttl: Option<String>,
    pub idle_timeout: Option<String>,
}

impl Server {
    /// Freezes (`true`) or thaws the sandbox's processes; true when that changed its state.
    pub(in crate::serve) async fn set_frozen(
        &self,
        id: &str,
        frozen: bool,
    ) -> Result<bool, ApiError> {
        let client = self.client(id).await?;
        blocking(move || {
            client
                .set_frozen(frozen)
                .map_err(|e| ApiError::new(StatusCode::CONFLICT, "freeze_refused", e.to_string()))
        })
        .await
    }

    /// `pause` (frozen) or `resume`: 409 when the sandbox already is so.
    pub(super) async fn pause_or_resume(
        &self,
        owned: &Owned,
        frozen: bool,
    ) -> Result<Response<RespBody>, ApiError> {
        if !self.set_frozen(&owned.id, frozen).await? {
            let (code, message, hint) = if frozen {
                (
                    "already_paused",
                    "is already paused",
                    "POST .../resume lets it run again",
                )
            } else {
                ("not_paused", "is not paused", "POST .../pause freezes it")
            };
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                code,
                format!("sandbox {} {message}", owned.id),
            )
            .hint(hint));
        }
        Ok(json_response(
            StatusCode::OK,
            &serde_json::json!({"id": owned.id, "paused": frozen}),
        ))
    }

    /// Commits the sandbox's files as the image `name` (the sandbox is frozen meanwhile and
    /// goes on afterwards); with what its supervisor said of it.
    pub(in crate::serve) async fn commit(
        &self,
        id: &str,
        name: &str,
    ) -> Result<(snapshot::Committed, crate::session::protocol::SnapshotInfo), ApiError> {
        let store = self.store.clone();
        let state_root = self.options.state_root.clone();
        let (id, name) = (id.to_string(), name.to_string());
        blocking(move || {
            snapshot::commit_with_info(&store, &id, &name, &state_root).map_err(|e| match e {
                SnapshotError::Name { .. } => ApiError::bad(e.to_string()),
                SnapshotError::NoImage { .. } => {
                    ApiError::new(StatusCode::BAD_REQUEST, "no_image", e.to_string())
                }
                SnapshotError::Fork { .. } => {
                    ApiError::new(StatusCode::BAD_REQUEST, "fork", e.to_string())
                }
                _ => ApiError::internal(e.to_string()),
            })
        })
        .await
    }

    pub(super) async fn commit_route(
        &self,
        owned: &Owned,
        body: CommitRequest,
    ) -> Result<Response<RespBody>, ApiError> {
        let (done, _) = self.commit(&owned.id, &body.image).await?;
        Ok(json_response(
            StatusCode::CREATED,
            &serde_json::json!({
                "image": done.image.names.first().cloned().unwrap_or(body.image),
                "digest": done.image.digest.to_string(),
                "entries": done.entries,
                "frozen_seconds": done.frozen_secs,
                "seconds": done.seconds,
            }),
        ))
    }

    /// Forks: one snapshot of the sandbox's files (the tar-free snapshot layer `nsbox fork`
    /// makes, see [`snapshot::snapshot_for_fork`]), then one create per fork stacked on it
    /// (each counted against the caller's and the server's limits: over them, the forks
    /// made are removed and the answer is the create's 429). Each create leases the layer
    /// itself; the server's lease ends with this request, so a layer no fork uses is garbage
    /// for `nsbox prune`.
    pub(super) async fn fork(
        self: &Arc<Self>,
        owned: &Owned,
        body: ForkRequest,
        caller: &Caller,
    ) -> Result<Response<RespBody>, ApiError> {
        let request = snapshot::ForkRequest {
            count: body.count.unwrap_or(1),
            names: body.names.clone(),
            ..Default::default()
        };
        let names = snapshot::fork_names(&request).map_err(|e| ApiError::bad(e.to_string()))?;
        let parent = self
            .store
            .read_record(&owned.id)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        // Not even one more sandbox fits: refused before the parent is frozen and copied.
        drop(
            self.registry
                .reserve(
                    &caller.name,
                    caller.max_sandboxes,
                    self.options.max_sandboxes,
                )
                .map_err(over_capacity)?,
        );
        let snap = {
            let store = self.store.clone();
            let state_root = self.options.state_root.clone();
            let id = owned.id.clone();
            blocking(move || {
                snapshot::snapshot_for_fork(&store, &id, &state_root).map_err(|e| match e {
                    SnapshotError::NoImage { .. } => {
                        ApiError::new(StatusCode::BAD_REQUEST, "no_image", e.to_string())
                    }
                    _ => ApiError::internal(e.to_string()),
                })
            })
            .await?
        };
        // The hand-over file each create reads: root-only, beside the server's records, where
        // a killed server's is removed by the next one (it is not a sandbox's record).
        let handoff = self.options.serve_dir.join("sandboxes").join(format!(
            "fork-{}-{}.json",
            owned.id,
            crate::ids::new_id()
        ));
        let text = serde_json::to_vec(&snap.handoff())
            .map_err(|e| ApiError::internal(format!("describe the fork snapshot: {e}")))?;
        sandboxes::write_private(&handoff, &text)
            .map_err(|e| ApiError::internal(format!("write {}: {e}", handoff.display())))?;
        // Removed however this request ends (a client that goes away drops it mid-way).
        let _handoff_file = RemoveOnDrop(&handoff);
        let info = &snap.info;
        let mut env: BTreeMap<String, String> = owned.env.iter().cloned().collect();
        env.extend(body.env.clone());
        let network = body.network.or_else(|| {
            (!info.network.is_empty()).then(|| sandboxes::NetworkRequest {
                mode: info.network.clone(),
                allow: info.allow.clone(),
                deny: info.deny.clone(),
                log: false,
            })
        });
        let mut made: Vec<Owned> = Vec::new();
        let mut failure = None;
        for name in names {
            let create = CreateRequest {
                image: Some(snap.image.clone()),
                fork_snapshot: Some(handoff.clone()),
                profile: Some(parent.profile.clone()),
                limits: sandboxes::Limits {
                    memory: parent.memory.map(|m| m.to_string()),
                    cpus: parent
                        .cpu_millis
                        .map(|c| serde_json::json!(c as f64 / 1000.0)),
                    pids: parent.pids,
                    max_output: None,
                },
                network: network.clone(),
                env: env.clone(),
                secrets: body.secrets.clone(),
                labels: body.labels.clone(),
                ttl: body.ttl.clone(),
                idle_timeout: body.idle_timeout.clone(),
                name,
                ..Default::default()
            };
            match self.create_owned(create, caller).await {
                Ok(o) => made.push(o),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if failure.is_some() {
            for o in &made {
                let _ = self.delete(&o.id).await;
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        let views: Vec<serde_json::Value> = made.iter().map(|o| self.view(o)).collect();
        Ok(json_response(
            StatusCode::CREATED,
            &serde_json::json!({"parent": owned.id, "sandboxes": views}),
        ))
    }
}

/// Removes a file when dropped.
struct RemoveOnDrop<'a>(&'a std::path::Path);

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0);
    }
}
