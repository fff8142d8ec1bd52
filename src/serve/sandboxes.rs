//! The sandboxes a server owns: made by running `nsbox create --json` as a subprocess (the
//! server never forks), recorded in `serve/sandboxes/ID.json` (owner key, labels, time to
//! live) so a restarted server adopts the living ones, and counted against the global and
//! per-key limits.

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ServeOptions;
use crate::session::client::SessionClient;
use crate::session::state::{now_secs, SessionRecord, SessionState, SessionStore};

/// What `POST /v1/sandboxes` accepts. Unknown fields are refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    /// An image in the server's store; none: the host's root, read-only.
    pub image: Option<String>,
    pub profile: Option<String>,
    #[serde(default)]
    pub limits: Limits,
    pub network: Option<NetworkRequest>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Set as environment and masked in all output.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    /// Secretless credentials (`nsbox create --credential`, docs/credentials.md; a filtered
    /// network): the sandbox's NAME holds a placeholder, the value goes only into requests
    /// to `hosts`.
    #[serde(default)]
    pub credentials: BTreeMap<String, CredentialRequest>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The sandbox is deleted this long after it was made ("30m").
    pub ttl: Option<String>,
    /// The sandbox stops after being idle this long (`nsbox create --max-age`).
    pub idle_timeout: Option<String>,
    /// A shell script run before the sandbox is handed over; if it fails, nothing is created.
    pub setup: Option<String>,
    pub setup_timeout: Option<String>,
    pub name: Option<String>,
    pub workdir: Option<String>,
    /// Over a sandbox limit, wait this long for a place before answering 429 (at most 5m).
    pub wait_for_capacity: Option<String>,
    /// What the time to live's end does (E2B's lifecycle; not part of `/v1`).
    #[serde(skip)]
    pub on_expiry: OnExpiry,
    /// A fork's snapshot hand-over file (the server's forks; not part of `/v1`).
    #[serde(skip)]
    pub fork_snapshot: Option<PathBuf>,
}

/// What happens to a sandbox when its time to live is over.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnExpiry {
    /// Deleted.
    #[default]
    Delete,
    /// Frozen (E2B's `on_timeout="pause"`) until a connect or resume; with `auto_resume`,
    /// the next in-sandbox request thaws it too.
    Pause {
        auto_resume: bool,
        /// Seconds a sandbox resumed by a request lives on (its create's time to live).
        #[serde(default)]
        resume_secs: u64,
    },
}

impl OnExpiry {
    fn is_delete(&self) -> bool {
        *self == OnExpiry::Delete
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub memory: Option<String>,
    /// A number of cores ("1.5" or 1.5).
    pub cpus: Option<serde_json::Value>,
    pub pids: Option<u64>,
    /// Default output cap of each command.
    pub max_output: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkRequest {
    /// "none", "filtered" or "host".
    pub mode: String,
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub deny: Vec<String>,
    /// Record every network decision (`GET /v1/sandboxes/{id}/network-log`).
    #[serde(default)]
    pub log: bool,
}

/// One secretless credential of a create request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialRequest {
    pub value: String,
    pub hosts: Vec<String>,
    /// Only these headers receive the value (`NAME:HEADER=HOST`); none: any header.
    #[serde(default)]
    pub headers: Vec<String>,
}

/// The owner recorded for idle warm-pool sandboxes.
pub const POOL_KEY: &str = "@pool";
/// The owner recorded for a create under way: written when `nsbox create` names its id (its
/// first event), replaced by the real record when the create is done. A record still pending
/// when a server stops, or when the next server starts, is a create nobody will answer for:
/// its session is removed.
pub const PENDING_KEY: &str = "@pending";
/// Names the server's directory to a create it runs, which records itself there as pending
/// before it confirms its session: so no moment exists at which a confirmed session is
/// unknown to the server's records, whenever the server is killed.
pub const CREATE_RECORDS_ENV: &str = "NSBOX_CREATE_RECORDS";

/// What a create run by `nsbox serve` does before it confirms its session (see
/// [`CREATE_RECORDS_ENV`]).
pub fn record_pending_create(serve_dir: &Path, id: &str) -> std::io::Result<()> {
    Registry::new(serve_dir).record_placeholder(id, PENDING_KEY)
}

/// The server's record of a sandbox it owns.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Owned {
    pub id: String,
    /// The key that made it ("local" for the unix socket).
    pub key: String,
    pub labels: BTreeMap<String, String>,
    pub created: u64,
    /// Unix seconds after which the server deletes it.
    pub expires_at: Option<u64>,
    pub image: Option<String>,
    /// Environment and secrets given at claim time to a sandbox from the warm pool: the
    /// server adds them to every command (the session itself was made before the request).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "OnExpiry::is_delete")]
    pub on_expiry: OnExpiry,
}

/// What a warm-pool sandbox must match to serve a create: image, profile, network policy.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolKey {
    pub image: Option<String>,
    pub profile: Option<String>,
    pub network: Option<(String, Vec<String>, Vec<String>)>,
}

/// A request the server refuses before running anything.
#[derive(Debug)]
pub struct Invalid(pub String);

fn env_name_ok(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && name.len() <= 256
}

fn label_ok(key: &str, value: &str) -> bool {
    !key.is_empty()
        && key.len() <= 63
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
        && value.len() <= 255
        && !value.chars().any(char::is_control)
}

/// Values go to the subprocess as `--flag=VALUE` (never as separate words, so a value cannot
/// become a flag); this only refuses what no flag accepts.
fn plain(field: &str, value: &str) -> Result<(), Invalid> {
    if value.is_empty() || value.len() > 4096 || value.contains('\0') || value.contains('\n') {
        return Err(Invalid(format!(
            "{field}: empty, too long, or has NUL/newline"
        )));
    }
    Ok(())
}

fn flag(args: &mut Vec<String>, name: &str, value: &str) -> Result<(), Invalid> {
    plain(name, value)?;
    args.push(format!("--{name}={value}"));
    Ok(())
}

/// Parses a duration as the CLI does ("30s", "10m").
pub fn duration(field: &str, value: &str) -> Result<Duration, Invalid> {
    crate::units::parse_duration(value).map_err(|e| Invalid(format!("{field}: {value:?}: {e}")))
}

/// The `nsbox create` arguments and the environment (secrets) for a request.
pub struct CreatePlan {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub expires_in: Option<Duration>,
}

impl CreateRequest {
    /// The pool this request can be served from: only requests whose other settings are
    /// applied at claim time (env, secrets, labels, setup script, time to live) qualify.
    pub fn pool_key(&self) -> Option<PoolKey> {
        let l = &self.limits;
        let plain = l.memory.is_none()
            && l.cpus.is_none()
            && l.pids.is_none()
            && l.max_output.is_none()
            && self.idle_timeout.is_none()
            && self.setup_timeout.is_none()
            && self.name.is_none()
            && self.workdir.is_none()
            && self.credentials.is_empty()
            && self.fork_snapshot.is_none()
            && !self.network.as_ref().is_some_and(|n| n.log);
        plain.then(|| PoolKey {
            image: self.image.clone(),
            profile: self.profile.clone(),
            network: self
                .network
                .as_ref()
                .map(|n| (n.mode.clone(), n.allow.clone(), n.deny.clone())),
        })
    }

    pub fn plan(&self) -> Result<CreatePlan, Invalid> {
        let mut args = vec!["create".to_string(), "--json".to_string()];
        if let Some(image) = &self.image {
            flag(&mut args, "image", image)?;
        }
        if let Some(file) = &self.fork_snapshot {
            args.push(format!("--fork-snapshot={}", file.display()));
        }
        if let Some(profile) = &self.profile {
            flag(&mut args, "profile", profile)?;
        }
        if let Some(m) = &self.limits.memory {
            flag(&mut args, "memory", m)?;
        }
        match &self.limits.cpus {
            None => {}
            Some(serde_json::Value::Number(n)) => flag(&mut args, "cpus", &n.to_string())?,
            Some(serde_json::Value::String(s)) => flag(&mut args, "cpus", s)?,
            Some(_) => return Err(Invalid("limits.cpus: a number of cores".into())),
        }
        if let Some(p) = self.limits.pids {
            flag(&mut args, "pids", &p.to_string())?;
        }
        if let Some(m) = &self.limits.max_output {
            flag(&mut args, "max-output", m)?;
        }
        let mut env = Vec::new();
        if let Some(net) = &self.network {
            if !["none", "filtered", "host"].contains(&net.mode.as_str()) {
                return Err(Invalid(format!(
                    "network.mode: {:?} (none, filtered or host)",
                    net.mode
                )));
            }
            flag(&mut args, "net", &net.mode)?;
            for a in &net.allow {
                flag(&mut args, "allow", a)?;
            }
            for d in &net.deny {
                flag(&mut args, "deny", d)?;
            }
            if net.log {
                args.push("--log-network".into());
            }
        }
        // The value travels in the subprocess's environment, as a secret does.
        for (k, c) in &self.credentials {
            if !env_name_ok(k) || k.starts_with("NSBOX_") || c.value.is_empty() {
                return Err(Invalid(format!(
                    "credentials: {k:?} is not a usable name (a variable name, not NSBOX_*), or its value is empty"
                )));
            }
            let headers = if c.headers.is_empty() {
                String::new()
            } else {
                format!(":{}", c.headers.join(","))
            };
            let entry = format!("{k}{headers}={}", c.hosts.join(","));
            crate::net::credential::Credential::binding(&entry)
                .map_err(|e| Invalid(format!("credentials: {e}")))?;
            args.push(format!("--credential={entry}"));
            env.push((k.clone(), c.value.clone()));
        }
        for (k, v) in &self.env {
            if !env_name_ok(k) || v.contains('\0') {
                return Err(Invalid(format!("env: {k:?} is not a variable name")));
            }
            args.push(format!("--env={k}={v}"));
        }
        for (k, v) in &self.secrets {
            // A secret travels in the subprocess's environment (never on its command line,
            // which every user can read); names nsbox itself reads are refused.
            if !env_name_ok(k) || k.starts_with("NSBOX_") || v.contains('\0') || v.is_empty() {
                return Err(Invalid(format!(
                    "secrets: {k:?} is not a usable name (a variable name, not NSBOX_*), or its value is empty"
                )));
            }
            args.push(format!("--secret-env={k}"));
            env.push((k.clone(), v.clone()));
        }
        if self.labels.len() > 32 || !self.labels.iter().all(|(k, v)| label_ok(k, v)) {
            return Err(Invalid(
                "labels: at most 32; keys of letters, digits and -_./ (63 at most), values of 255 characters at most".into(),
            ));
        }
        if let Some(t) = &self.idle_timeout {
            duration("idle_timeout", t)?;
            flag(&mut args, "max-age", t)?;
        }
        let expires_in = self
            .ttl
            .as_deref()
            .map(|t| duration("ttl", t))
            .transpose()?;
        if let Some(s) = &self.setup {
            if s.contains('\0') {
                return Err(Invalid("setup: has NUL".into()));
            }
            args.push(format!("--setup={s}"));
        }
        if let Some(t) = &self.setup_timeout {
            duration("setup_timeout", t)?;
            flag(&mut args, "timeout", t)?;
        }
        if let Some(n) = &self.name {
            if !crate::session::state::valid_name(n) {
                return Err(Invalid(format!("name: {n:?} is not a session name")));
            }
            flag(&mut args, "name", n)?;
        }
        if let Some(w) = &self.workdir {
            flag(&mut args, "workdir", w)?;
        }
        Ok(CreatePlan {
            args,
            env,
            expires_in,
        })
    }
}

/// Why `nsbox create` did not make a sandbox.
#[derive(Debug)]
pub struct CreateFailed {
    pub phase: String,
    pub message: String,
    pub hint: Option<String>,
    pub code: i32,
}

/// Runs `nsbox create --json` and returns the new session's id. Blocking (run it on the
/// blocking pool).
pub fn create_session(
    options: &ServeOptions,
    plan: &CreatePlan,
    registry: &Registry,
) -> Result<String, CreateFailed> {
    let _in_flight = registry.create_started();
    let failed = |message: String| CreateFailed {
        phase: "setup".into(),
        message,
        hint: None,
        code: crate::exit::NSBOX_FAILED,
    };
    let mut cmd = Command::new(&options.exe);
    cmd.arg(format!("--state-root={}", options.state_root.display()));
    if let Some(c) = &options.config {
        cmd.arg(format!("--config={}", c.display()));
    }
    cmd.args(&plan.args)
        .envs(plan.env.iter().map(|(k, v)| (k, v)))
        .env(super::CREATE_PARENT_ENV, std::process::id().to_string())
        // The create runs here, whatever server the server's own environment names.
        .env_remove("NSBOX_HOST")
        .env(CREATE_RECORDS_ENV, &options.serve_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd
        .spawn()
        .map_err(|e| failed(format!("run {}: {e}", options.exe.display())))?;
    let mut id = None;
    let mut error = None;
    let mut pending: Option<String> = None;
    if let Some(out) = child.stdout.take() {
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            match event["type"].as_str() {
                Some("start") => {
                    if let Some(started) = event["id"].as_str() {
                        if let Err(e) = registry.record_placeholder(started, PENDING_KEY) {
                            tracing::warn!("create {started}: record it as pending: {e}");
                        }
                        pending = Some(started.to_string());
                    }
                }
                Some("created") => id = event["id"].as_str().map(str::to_string),
                Some("error") => {
                    error = Some(CreateFailed {
                        phase: event["phase"].as_str().unwrap_or("setup").to_string(),
                        message: event["message"].as_str().unwrap_or_default().to_string(),
                        hint: event["hint"].as_str().map(str::to_string),
                        code: event["code"]
                            .as_i64()
                            .and_then(|c| i32::try_from(c).ok())
                            .unwrap_or(crate::exit::NSBOX_FAILED),
                    })
                }
                _ => {}
            }
        }
    }
    let status = child.wait();
    // A failed create removed its own session; its pending record goes too. A successful
    // one keeps the record until the caller replaces it (insert, record_pool_member).
    if let (Some(p), true) = (&pending, id.is_none() || error.is_some()) {
        let _ = std::fs::remove_file(registry.record_path(p));
    }
    match (id, error) {
        (Some(id), None) => Ok(id),
        (_, Some(e)) => Err(e),
        (None, None) => Err(failed(format!(
            "nsbox create ended ({status:?}) without a sandbox"
        ))),
    }
}

/// Stops and removes a session (what `nsbox rm -f` does). Blocking.
pub fn remove_session(store: &SessionStore, id: &str) -> Result<(), String> {
    let record = store.read_record(id).map_err(|e| e.to_string())?;
    if store.state(&record) == SessionState::Running {
        SessionClient::connect(store, id)
            .and_then(|c| {
                c.stop(
                    Duration::from_secs(2),
                    "deleted through the nsbox serve API",
                )
            })
            .map_err(|e| e.to_string())?;
    }
    let record = store.read_record(id).map_err(|e| e.to_string())?;
    store.remove(&record).map_err(|e| e.to_string())
}

/// Over a limit: who, and the limit.
#[derive(Debug)]
pub struct OverCapacity {
    pub per_key: bool,
    pub limit: usize,
}

/// The owned sandboxes and the creates under way.
#[derive(Debug)]
pub struct Registry {
    dir: PathBuf,
    state: Mutex<RegistryState>,
}

#[derive(Debug, Default)]
struct RegistryState {
    owned: HashMap<String, Owned>,
    /// Creates under way, by key (counted against the limits).
    pending: HashMap<String, usize>,
    /// `nsbox create` processes running (API creates and pool refills).
    creates_running: usize,
}

/// A running `nsbox create`, counted while it lives (see `Registry::creates_running`).
pub struct CreateInFlight<'a>(&'a Registry);

impl Drop for CreateInFlight<'_> {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.creates_running = state.creates_running.saturating_sub(1);
    }
}

/// A place under a limit, held while a create runs; given back when dropped.
#[derive(Debug)]
pub struct Reservation<'a> {
    registry: &'a Registry,
    key: String,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut state = self.registry.lock();
        if let Some(n) = state.pending.get_mut(&self.key) {
            *n = n.saturating_sub(1);
        }
    }
}

impl Registry {
    pub fn new(serve_dir: &Path) -> Registry {
        Registry {
            dir: serve_dir.join("sandboxes"),
            state: Mutex::new(RegistryState::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RegistryState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Takes over the sandboxes a previous server left: living ones are owned again, the
    /// records of ended ones are dropped (and their sessions removed).
    pub fn adopt(&self, store: &SessionStore) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        let mut adopted = 0;
        for entry in entries.flatten() {
            let path = entry.path();
            let owned: Option<Owned> = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            let Some(owned) = owned else {
                let _ = std::fs::remove_file(&path);
                continue;
            };
            // A previous server's idle pool members are not adopted: a fresh pool is made;
            // nor are creates it never confirmed to anyone (pending).
            let running = owned.key != POOL_KEY
                && owned.key != PENDING_KEY
                && store
                    .read_record(&owned.id)
                    .is_ok_and(|r| store.state(&r) == SessionState::Running);
            if running {
                self.lock().owned.insert(owned.id.clone(), owned);
                adopted += 1;
            } else {
                let _ = remove_session(store, &owned.id);
                let _ = std::fs::remove_file(&path);
            }
        }
        adopted
    }

    /// Reserves a place for `key`'s create, or says which limit is reached.
    pub fn reserve(
        &self,
        key: &str,
        key_limit: Option<usize>,
        global_limit: usize,
    ) -> Result<Reservation<'_>, OverCapacity> {
        let mut state = self.lock();
        let pending_all: usize = state.pending.values().sum();
        if state.owned.len() + pending_all >= global_limit {
            return Err(OverCapacity {
                per_key: false,
                limit: global_limit,
            });
        }
        if let Some(limit) = key_limit {
            let mine = state.owned.values().filter(|o| o.key == key).count()
                + state.pending.get(key).copied().unwrap_or(0);
            if mine >= limit {
                return Err(OverCapacity {
                    per_key: true,
                    limit,
                });
            }
        }
        *state.pending.entry(key.to_string()).or_default() += 1;
        Ok(Reservation {
            registry: self,
            key: key.to_string(),
        })
    }

    fn create_started(&self) -> CreateInFlight<'_> {
        self.lock().creates_running += 1;
        CreateInFlight(self)
    }

    /// How many `nsbox create` processes are running for this server.
    pub fn creates_running(&self) -> usize {
        self.lock().creates_running
    }

    /// Removes the sessions of creates that were still pending (their record never replaced):
    /// what a stopping server does last, and what `adopt` does for a killed one.
    pub fn remove_pending(&self, store: &SessionStore) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let owned: Option<Owned> = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            if let Some(owned) = owned.filter(|o| o.key == PENDING_KEY) {
                let _ = remove_session(store, &owned.id);
                let _ = std::fs::remove_file(&path);
            }
        }
    }

    /// Records an idle pool member on disk only (so a killed server's pool is cleaned up by
    /// the next one); it is owned, and counted, once claimed.
    pub fn record_pool_member(&self, id: &str) -> std::io::Result<()> {
        self.record_placeholder(id, POOL_KEY)
    }

    /// A record on disk only, owned by `key` (`POOL_KEY` or `PENDING_KEY`): never adopted.
    fn record_placeholder(&self, id: &str, key: &str) -> std::io::Result<()> {
        super::private_dir(&self.dir).map_err(|e| std::io::Error::other(e.to_string()))?;
        let owned = Owned {
            id: id.to_string(),
            key: key.into(),
            labels: BTreeMap::new(),
            created: now_secs(),
            expires_at: None,
            image: None,
            env: Vec::new(),
            secrets: Vec::new(),
            on_expiry: OnExpiry::Delete,
        };
        let bytes = serde_json::to_vec(&owned).map_err(std::io::Error::other)?;
        write_private(&self.record_path(id), &bytes)
    }

    pub fn forget_pool_member(&self, id: &str) {
        let _ = std::fs::remove_file(self.record_path(id));
    }

    /// Records a new sandbox (on disk first, so a crash right after still leaves it adoptable).
    pub fn insert(&self, owned: Owned, _reservation: Reservation<'_>) -> std::io::Result<()> {
        super::private_dir(&self.dir).map_err(|e| std::io::Error::other(e.to_string()))?;
        let bytes = serde_json::to_vec(&owned).map_err(std::io::Error::other)?;
        write_private(&self.record_path(&owned.id), &bytes)?;
        self.lock().owned.insert(owned.id.clone(), owned);
        Ok(())
    }

    /// The sandbox `id` if it is owned and `key` may see it (None: any key).
    pub fn get(&self, id: &str, key: Option<&str>) -> Option<Owned> {
        let state = self.lock();
        let owned = state.owned.get(id)?;
        key.is_none_or(|k| owned.key == k).then(|| owned.clone())
    }

    pub fn list(&self, key: Option<&str>) -> Vec<Owned> {
        let mut all: Vec<Owned> = self
            .lock()
            .owned
            .values()
            .filter(|o| key.is_none_or(|k| o.key == k))
            .cloned()
            .collect();
        all.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        all
    }

    /// Sets when the server deletes the sandbox (unix seconds; None: never), on disk too.
    pub fn set_expiry(&self, id: &str, expires_at: Option<u64>) -> std::io::Result<()> {
        let mut state = self.lock();
        let Some(owned) = state.owned.get_mut(id) else {
            return Err(std::io::Error::from(std::io::ErrorKind::NotFound));
        };
        owned.expires_at = expires_at;
        let bytes = serde_json::to_vec(&*owned).map_err(std::io::Error::other)?;
        write_private(&self.record_path(id), &bytes)
    }

    /// Forgets a sandbox (after it was removed).
    pub fn forget(&self, id: &str) {
        self.lock().owned.remove(id);
        let _ = std::fs::remove_file(self.record_path(id));
    }

    /// Sandboxes whose time to live is over, each returned once with what to do (their
    /// deadline is cleared, so a deletion under way is not started again, and a paused
    /// sandbox waits without one until a connect sets a new one).
    pub fn expired(&self) -> Vec<(String, OnExpiry)> {
        let now = now_secs();
        let mut state = self.lock();
        let mut out = Vec::new();
        for owned in state.owned.values_mut() {
            if owned.expires_at.is_some_and(|t| t <= now) {
                owned.expires_at = None;
                out.push((owned.id.clone(), owned.on_expiry));
            }
        }
        out
    }
}

/// Writes a file only root reads (records may hold a claimed sandbox's secrets).
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    std::fs::rename(&tmp, path)
}

/// The JSON view of a sandbox.
pub fn view(owned: &Owned, record: Option<&SessionRecord>, state: &str) -> serde_json::Value {
    serde_json::json!({
        "id": owned.id,
        "name": record.and_then(|r| r.name.clone()),
        "state": state,
        "created": owned.created,
        "expires_at": owned.expires_at,
        "image": owned.image,
        "profile": record.map(|r| r.profile.clone()),
        "network": record.map(|r| r.network.clone()),
        "limits": {
            "memory": record.and_then(|r| r.memory),
            "cpus": record.and_then(|r| r.cpu_millis).map(|c| c as f64 / 1000.0),
            "pids": record.and_then(|r| r.pids),
        },
        "idle_timeout_secs": record.and_then(|r| r.max_age),
        "workdir": record.map(|r| r.workdir.clone()),
        "labels": owned.labels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_never_become_flags() {
        let req = CreateRequest {
            image: Some("--rootfs=/".into()),
            env: [("A".to_string(), "--net=host".to_string())].into(),
            ..Default::default()
        };
        let plan = req.plan().unwrap();
        assert!(plan.args.contains(&"--image=--rootfs=/".to_string()));
        assert!(plan.args.contains(&"--env=A=--net=host".to_string()));
        assert!(!plan
            .args
            .iter()
            .any(|a| a == "--net=host" || a == "--rootfs=/"));
    }

    #[test]
    fn secrets_stay_off_the_command_line() {
        let req = CreateRequest {
            secrets: [("TOKEN".to_string(), "s3cr3t".to_string())].into(),
            ..Default::default()
        };
        let plan = req.plan().unwrap();
        assert!(plan.args.iter().all(|a| !a.contains("s3cr3t")));
        assert_eq!(plan.env, vec![("TOKEN".into(), "s3cr3t".into())]);
        let bad = CreateRequest {
            secrets: [("NSBOX_RUN_DIR".to_string(), "/tmp".to_string())].into(),
            ..Default::default()
        };
        assert!(bad.plan().is_err());
    }

    #[test]
    fn credentials_become_flags_with_their_values_in_the_environment() {
        let req: CreateRequest = serde_json::from_str(
            r#"{"network": {"mode": "filtered", "allow": ["api.example.com"]},
                "credentials": {"LLM_KEY": {"value": "sk-s3cr3t", "hosts": ["api.example.com"],
                "headers": ["x-api-key"]}}}"#,
        )
        .unwrap();
        assert!(req.pool_key().is_none());
        let plan = req.plan().unwrap();
        assert!(plan
            .args
            .contains(&"--credential=LLM_KEY:x-api-key=api.example.com".to_string()));
        assert!(plan.args.iter().all(|a| !a.contains("s3cr3t")));
        assert_eq!(plan.env, vec![("LLM_KEY".into(), "sk-s3cr3t".into())]);
        let bad: CreateRequest = serde_json::from_str(
            r#"{"network": {"mode": "filtered"}, "credentials": {"K": {"value": "v", "hosts": ["*.example.com"]}}}"#,
        )
        .unwrap();
        assert!(bad.plan().is_err());
    }

    #[test]
    fn limits_count_pending_creates() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::new(dir.path());
        let a = reg.reserve("k", Some(1), 10).unwrap();
        assert!(reg.reserve("k", Some(1), 10).unwrap_err().per_key);
        drop(a);
        let _b = reg.reserve("k", Some(1), 10).unwrap();
        let _c = reg.reserve("other", None, 2).unwrap();
        assert!(!reg.reserve("third", None, 2).unwrap_err().per_key);
    }
}
