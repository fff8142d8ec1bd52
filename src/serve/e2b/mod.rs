//! E2B compatibility: the E2B SDKs drive `nsbox serve` unchanged when `E2B_API_URL` and
//! `E2B_SANDBOX_URL` both point at the server's TCP listener.
//!
//! Two APIs share the listener with `/v1`:
//! - the control API (`/sandboxes`, `/v2/sandboxes`), authenticated by `X-API-Key` with an
//!   nsbox serve key: a sandbox is an ordinary server sandbox (a session), its template an
//!   image, its timeout the server's time to live, its metadata labels, its envVars env;
//! - the in-sandbox daemon's API (E2B's "envd"), which the SDK addresses by the
//!   `E2b-Sandbox-Id` header: the process and filesystem services over the Connect protocol
//!   and the `/files` endpoints. nsbox's supervisor does from outside what envd does inside
//!   the VM: commands run through the session's control socket (`serve::exec`), files are
//!   resolved inside the sandbox's root (`serve::files`); nothing runs in the sandbox for it.
//!   Each sandbox has an access token (the SDK's `envdAccessToken`), required on every
//!   in-sandbox request.
//!
//! Design notes and what is not served: docs/e2b.md.

mod connect;
mod envd;
mod proto;
mod pty;
mod watch;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Method, Request, Response, StatusCode};

use super::api::{json_response, ApiError, Caller, RespBody, Server};
use super::sandboxes::{CreateRequest, NetworkRequest, OnExpiry, Owned};
use crate::session::state::now_secs;

/// The envd version the server claims: the SDK turns features on by it (0.5.7: stdin,
/// default user, octet-stream uploads), and none newer is promised.
pub const ENVD_VERSION: &str = "0.5.7";
/// The template the SDKs ask for when none is named.
const DEFAULT_TEMPLATE: &str = "base";
/// Which image E2B's default template means (unset: the host's root, read-only, as a
/// `/v1` create without an image).
const TEMPLATE_ENV: &str = "NSBOX_E2B_TEMPLATE";
/// The label that keeps the template name a sandbox was asked for.
const TEMPLATE_LABEL: &str = "e2b.template";
/// E2B's default sandbox timeout, seconds.
const DEFAULT_TIMEOUT: u64 = 300;
/// The longest timeout E2B allows (24 h).
const MAX_TIMEOUT: u64 = 24 * 3600;

/// Whether a request is for the E2B APIs (control paths, the Connect services, or any
/// request naming a sandbox in E2B's header).
pub(super) fn claims(req: &Request<Incoming>) -> bool {
    let path = req.uri().path();
    req.headers().contains_key("e2b-sandbox-id")
        || path == "/sandboxes"
        || path.starts_with("/sandboxes/")
        || path == "/v2/sandboxes"
        || path.starts_with("/v2/sandboxes/")
        || path.starts_with("/process.Process/")
        || path.starts_with("/filesystem.Filesystem/")
}

/// The access token of each sandbox (made at create or connect; a restarted server makes
/// new ones at the next connect).
fn tokens() -> &'static Mutex<HashMap<String, String>> {
    static TOKENS: OnceLock<Mutex<HashMap<String, String>>> = OnceLock::new();
    TOKENS.get_or_init(Default::default)
}

fn token_for(id: &str) -> String {
    let mut map = tokens().lock().unwrap_or_else(|p| p.into_inner());
    map.entry(id.to_string())
        .or_insert_with(|| {
            let mut bytes = [0u8; 24];
            let _ = getrandom::fill(&mut bytes);
            bytes.iter().map(|b| format!("{b:02x}")).collect()
        })
        .clone()
}

fn token_matches(id: &str, given: &[u8]) -> bool {
    let map = tokens().lock().unwrap_or_else(|p| p.into_inner());
    let Some(want) = map.get(id) else {
        return false;
    };
    let want = want.as_bytes();
    // Compared in full, so the time does not say how much matched.
    want.len() == given.len() && want.iter().zip(given).fold(0u8, |d, (a, b)| d | (a ^ b)) == 0
}

fn forget_token(id: &str) {
    tokens()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(id);
}

/// An error in the control API's shape (`{"code": status, "message"}`), which the SDKs turn
/// into their exceptions by status (401: authentication, 404: not found, 429: rate limit).
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    message: String,
}

impl Refusal {
    fn response(&self) -> Response<RespBody> {
        json_response(
            self.status,
            &serde_json::json!({"code": self.status.as_u16(), "message": self.message}),
        )
    }
}

fn control_error(status: StatusCode, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        message: message.into(),
    }
}

fn from_api(e: ApiError) -> Refusal {
    control_error(e.status, e.message)
}

/// Answers an E2B request and writes it to the audit log (as `e2b.*` actions; in-sandbox
/// requests under the key that owns the sandbox).
pub(super) async fn handle(
    server: Arc<Server>,
    req: Request<Incoming>,
    tcp: bool,
) -> Response<RespBody> {
    let path = req.uri().path().to_string();
    let envd_id = req
        .headers()
        .get("e2b-sandbox-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != "v2")
        .collect();
    let action = action_of(req.method(), &parts, envd_id.is_some());
    let mut sandbox = envd_id
        .clone()
        .or_else(|| parts.get(1).map(|s| s.to_string()));
    let mut key = envd_id
        .as_deref()
        .and_then(|id| server.registry.get(id, None))
        .map_or_else(|| "-".to_string(), |o| o.key);
    let resp = match envd_id {
        Some(id) => envd::handle(server.clone(), req, id).await,
        None => match authenticate(&server, &req, tcp) {
            Err(refusal) => refusal.response(),
            Ok(caller) => {
                key = caller.name.clone();
                control(server.clone(), req, caller)
                    .await
                    .unwrap_or_else(|refusal| refusal.response())
            }
        },
    };
    if action != "e2b.health" {
        if action == "e2b.sandbox.create" {
            sandbox = resp
                .headers()
                .get(hyper::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|l| l.rsplit('/').next())
                .map(str::to_string);
        }
        server.audit.record(&super::audit::AuditEntry {
            time_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or_default(),
            key: &key,
            action,
            sandbox: sandbox.as_deref(),
            status: resp.status().as_u16(),
            error: None,
        });
    }
    resp
}

/// The audit action of an E2B request.
fn action_of(method: &Method, parts: &[&str], envd: bool) -> &'static str {
    if envd {
        return match (method, parts) {
            (_, ["health"]) => "e2b.health",
            (&Method::GET, ["files"]) => "e2b.file.read",
            (&Method::POST, ["files"]) => "e2b.file.write",
            (_, ["process.Process", "Start"]) => "e2b.command.run",
            (_, ["process.Process", _]) => "e2b.command.control",
            (_, ["filesystem.Filesystem", "ListDir" | "Stat"]) => "e2b.file.list",
            (_, ["filesystem.Filesystem", _]) => "e2b.file.change",
            _ => "e2b.other",
        };
    }
    match (method, parts) {
        (&Method::POST, ["sandboxes"]) => "e2b.sandbox.create",
        (&Method::GET, ["sandboxes"]) => "e2b.sandbox.list",
        (&Method::GET, ["sandboxes", _]) => "e2b.sandbox.get",
        (&Method::DELETE, ["sandboxes", _]) => "e2b.sandbox.delete",
        (&Method::POST, ["sandboxes", _, "timeout"]) => "e2b.sandbox.timeout",
        (&Method::POST, ["sandboxes", _, "connect"]) => "e2b.sandbox.connect",
        (&Method::POST, ["sandboxes", _, "pause"]) => "e2b.sandbox.pause",
        (&Method::POST, ["sandboxes", _, "resume"]) => "e2b.sandbox.resume",
        (&Method::POST, ["sandboxes", _, "snapshots"]) => "e2b.sandbox.snapshot",
        _ => "e2b.other",
    }
}

/// The caller, from `X-API-Key` (required on TCP; the unix socket without one is local).
fn authenticate(server: &Server, req: &Request<Incoming>, tcp: bool) -> Result<Caller, Refusal> {
    let Some(header) = req.headers().get("x-api-key") else {
        if tcp {
            return Err(control_error(
                StatusCode::UNAUTHORIZED,
                "an API key is required (X-API-Key: a key from `nsbox serve key add NAME`)",
            ));
        }
        return Ok(Caller {
            name: "local".into(),
            max_sandboxes: None,
            all: true,
        });
    };
    let token = header.to_str().unwrap_or("").trim();
    match server.keys.verify(token) {
        Ok(Some(key)) => Ok(Caller {
            name: key.name,
            max_sandboxes: key.max_sandboxes,
            all: false,
        }),
        Ok(None) => Err(control_error(
            StatusCode::UNAUTHORIZED,
            "unknown or removed API key — make one with `nsbox serve key add NAME`",
        )),
        Err(e) => Err(control_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            e.to_string(),
        )),
    }
}

type Answer = Result<Response<RespBody>, Refusal>;

fn json_body(bytes: &[u8]) -> Result<serde_json::Value, Refusal> {
    if bytes.is_empty() {
        return Ok(serde_json::json!({}));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        control_error(
            StatusCode::BAD_REQUEST,
            format!("the body is not JSON: {e}"),
        )
    })
}

async fn control(server: Arc<Server>, req: Request<Incoming>, caller: Caller) -> Answer {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let method = req.method().clone();
    // Every body is read (JSON, capped) before any answer: hyper closes a connection whose
    // request body was left unread, and the SDKs' pooled clients would then fail their next
    // request on it instead of reading this one's refusal.
    let bytes = super::api::body_bytes(req, super::api::MAX_JSON)
        .await
        .map_err(from_api)?;
    let parts = match parts.as_slice() {
        ["v2", rest @ ..] => rest.to_vec(),
        other => other.to_vec(),
    };
    match (&method, parts.as_slice()) {
        (&Method::POST, ["sandboxes"]) => {
            let body = json_body(&bytes)?;
            // To the end even if the client goes away: a made sandbox is recorded, not leaked.
            let s = server.clone();
            tokio::spawn(async move { create(s, body, caller).await })
                .await
                .map_err(|e| control_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        }
        (&Method::GET, ["sandboxes"]) => Ok(list(&server, &caller, &query)),
        (&Method::GET, ["sandboxes", _, "metrics" | "logs"] | ["sandboxes", "metrics"]) => {
            // The SDKs read these as lists; nsbox keeps no history.
            Ok(json_response(StatusCode::OK, &serde_json::json!([])))
        }
        (&Method::GET, ["sandboxes", id]) => {
            let owned = owned(&server, id, &caller)?;
            Ok(json_response(StatusCode::OK, &detail(&server, &owned)))
        }
        (&Method::DELETE, ["sandboxes", id]) => {
            let owned = owned(&server, id, &caller)?;
            let s = server.clone();
            let sid = owned.id.clone();
            tokio::spawn(async move { s.delete(&sid).await })
                .await
                .map_err(|e| control_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
                .map_err(from_api)?;
            forget_token(&owned.id);
            watch::forget_sandbox(&owned.id);
            Ok(empty(StatusCode::NO_CONTENT))
        }
        (&Method::POST, ["sandboxes", id, "timeout"]) => {
            let owned = owned(&server, id, &caller)?;
            let body = json_body(&bytes)?;
            let secs = timeout_of(&body)?;
            set_timeout(&server, &owned, secs)?;
            Ok(empty(StatusCode::NO_CONTENT))
        }
        (&Method::POST, ["sandboxes", id, "connect"]) => {
            let owned = owned(&server, id, &caller)?;
            let body = json_body(&bytes)?;
            let secs = timeout_of(&body)?;
            // Connecting resumes a paused sandbox (201, as E2B answers a resume) and never
            // shortens a sandbox's life.
            let resumed = resume_if_paused(&server, &owned, &body).await?;
            let wanted = now_secs() + secs;
            // A sandbox paused by its timeout has no deadline until it is resumed.
            let paused_by_timeout = resumed && owned.expires_at.is_none();
            if paused_by_timeout || owned.expires_at.is_some_and(|t| t < wanted) {
                set_timeout(&server, &owned, secs)?;
            }
            let status = if resumed {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok(json_response(status, &created_view(&owned)))
        }
        (&Method::POST, ["sandboxes", id, "pause"]) => {
            let owned = owned(&server, id, &caller)?;
            let body = json_body(&bytes)?;
            if body["memory"].as_bool() == Some(false) {
                return Err(control_error(
                    StatusCode::BAD_REQUEST,
                    "a filesystem-only pause (mode=\"filesystem\", a reboot on resume) is not served by nsbox: its pause freezes every process in memory (mode=\"full\")",
                ));
            }
            if !set_frozen(&server, &owned, true).await? {
                return Err(control_error(
                    StatusCode::CONFLICT,
                    format!("sandbox {} is already paused", owned.id),
                ));
            }
            Ok(empty(StatusCode::NO_CONTENT))
        }
        (&Method::POST, ["sandboxes", id, "resume"]) => {
            let owned = owned(&server, id, &caller)?;
            let body = json_body(&bytes)?;
            let secs = timeout_of(&body)?;
            if !resume_if_paused(&server, &owned, &body).await? {
                return Err(control_error(
                    StatusCode::CONFLICT,
                    format!("sandbox {} is not paused", owned.id),
                ));
            }
            set_timeout(&server, &owned, secs)?;
            Ok(json_response(StatusCode::CREATED, &created_view(&owned)))
        }
        (&Method::POST, ["sandboxes", id, "snapshots"]) => {
            let owned = owned(&server, id, &caller)?;
            let body = json_body(&bytes)?;
            let s = server.clone();
            tokio::spawn(async move { snapshot(&s, &owned, &body).await })
                .await
                .map_err(|e| control_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        }
        (&Method::POST, ["sandboxes", _, "fork"]) => Err(control_error(
            StatusCode::NOT_IMPLEMENTED,
            "nsbox serve does not fork sandboxes (no memory snapshots): snapshot one and create from the snapshot",
        )),
        _ => Err(control_error(
            StatusCode::NOT_FOUND,
            format!("no {method} {path} in nsbox's E2B API (docs/e2b.md lists what is served)"),
        )),
    }
}

fn empty(status: StatusCode) -> Response<RespBody> {
    let mut resp = Response::new(super::api::full(""));
    *resp.status_mut() = status;
    resp
}

fn owned(server: &Server, id: &str, caller: &Caller) -> Result<Owned, Refusal> {
    server.owned(id, caller).map_err(|_| {
        control_error(
            StatusCode::NOT_FOUND,
            format!("sandbox {id} not found (killed, timed out, or made with another key)"),
        )
    })
}

fn timeout_of(body: &serde_json::Value) -> Result<u64, Refusal> {
    match &body["timeout"] {
        serde_json::Value::Null => Ok(DEFAULT_TIMEOUT),
        v => v.as_u64().filter(|t| *t <= MAX_TIMEOUT).ok_or_else(|| {
            control_error(
                StatusCode::BAD_REQUEST,
                format!("timeout: whole seconds up to {MAX_TIMEOUT}"),
            )
        }),
    }
}

fn set_timeout(server: &Server, owned: &Owned, secs: u64) -> Result<(), Refusal> {
    server
        .registry
        .set_expiry(&owned.id, Some(now_secs() + secs))
        .map_err(|e| control_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// Whether the sandbox's session is frozen (`nsbox pause`, or an E2B pause).
fn is_paused(server: &Server, id: &str) -> bool {
    server.store.read_record(id).is_ok_and(|r| r.paused)
}

/// Freezes (`true`) or thaws the sandbox's processes with the cgroup freezer, as `nsbox
/// pause`/`resume` do; true when it changed.
async fn set_frozen(server: &Server, owned: &Owned, frozen: bool) -> Result<bool, Refusal> {
    server.set_frozen(&owned.id, frozen).await.map_err(from_api)
}

/// Thaws a paused sandbox (connect, resume); true when it was paused. A resume that asks for
/// a reboot (`memory: false`, the SDK's `on_resume="reboot"`) is refused: a frozen sandbox
/// can only carry on where it stopped.
async fn resume_if_paused(
    server: &Server,
    owned: &Owned,
    body: &serde_json::Value,
) -> Result<bool, Refusal> {
    if !is_paused(server, &owned.id) {
        return Ok(false);
    }
    if body["memory"].as_bool() == Some(false) {
        return Err(control_error(
            StatusCode::BAD_REQUEST,
            "a reboot on resume (on_resume=\"reboot\") is not served by nsbox: a paused sandbox carries on where it was frozen",
        ));
    }
    set_frozen(server, owned, false).await
}

/// `create_snapshot`: the sandbox's files as an nsbox image (`nsbox commit`; the sandbox is
/// frozen meanwhile), whose name is a template for later creates. Files only: a memory
/// snapshot asked for by name is refused.
async fn snapshot(server: &Server, owned: &Owned, body: &serde_json::Value) -> Answer {
    if body["memory"].as_bool() == Some(true) {
        return Err(control_error(
            StatusCode::BAD_REQUEST,
            "memory snapshots are not served by nsbox: a snapshot is the sandbox's files (mode=\"filesystem\")",
        ));
    }
    let name = match body["name"].as_str().filter(|n| !n.is_empty()) {
        Some(n) => n.to_string(),
        None => format!("e2b-snapshot-{}:{}", owned.id, now_secs()),
    };
    match server.commit(&owned.id, &name).await {
        Ok(_) => Ok(json_response(
            StatusCode::CREATED,
            &serde_json::json!({"snapshotID": name, "names": [name]}),
        )),
        Err(e) if e.code == "no_image" => Err(control_error(
            StatusCode::BAD_REQUEST,
            format!(
                "{} (a snapshot needs a sandbox made from an image template)",
                e.message
            ),
        )),
        Err(e) => Err(from_api(e)),
    }
}

/// A string map from a JSON object (metadata, envVars); anything else is refused.
fn string_map(
    body: &serde_json::Value,
    field: &str,
) -> Result<std::collections::BTreeMap<String, String>, Refusal> {
    match &body[field] {
        serde_json::Value::Null => Ok(Default::default()),
        serde_json::Value::Object(o) => o
            .iter()
            .map(|(k, v)| match v.as_str() {
                Some(s) => Ok((k.clone(), s.to_string())),
                None => Err(control_error(
                    StatusCode::BAD_REQUEST,
                    format!("{field}.{k}: a string"),
                )),
            })
            .collect(),
        _ => Err(control_error(
            StatusCode::BAD_REQUEST,
            format!("{field}: an object of strings"),
        )),
    }
}

async fn create(server: Arc<Server>, body: serde_json::Value, caller: Caller) -> Answer {
    let template = body["templateID"]
        .as_str()
        .filter(|t| !t.is_empty())
        .unwrap_or(DEFAULT_TEMPLATE)
        .to_string();
    let image = if template == DEFAULT_TEMPLATE {
        std::env::var(TEMPLATE_ENV).ok().filter(|i| !i.is_empty())
    } else {
        Some(template.clone())
    };
    let secs = timeout_of(&body)?;
    let mut labels = string_map(&body, "metadata")?;
    labels.insert(TEMPLATE_LABEL.into(), template);
    let env = string_map(&body, "envVars")?;
    let on_expiry = lifecycle_of(&body, secs)?;
    // Refused rather than ignored: the caller would otherwise believe it has them.
    for (field, what) in [("mcp", "MCP servers"), ("volumeMounts", "volume mounts")] {
        if body[field].as_bool() == Some(true)
            || (body[field].is_object() || body[field].as_array().is_some_and(|a| !a.is_empty()))
        {
            return Err(control_error(
                StatusCode::BAD_REQUEST,
                format!("{what} are not served by nsbox (docs/e2b.md)"),
            ));
        }
    }
    let network = network_of(&body)?;
    let request = CreateRequest {
        image,
        env,
        labels,
        ttl: Some(format!("{secs}s")),
        network,
        on_expiry,
        ..Default::default()
    };
    let owned = server
        .create_owned(request, &caller)
        .await
        .map_err(|e| match e.code {
            // An unknown template is the SDK's "not found".
            "create_failed" if e.message.contains("image") => {
                control_error(StatusCode::NOT_FOUND, format!("template: {}", e.message))
            }
            _ => from_api(e),
        })?;
    // Tokens of sandboxes that ended meanwhile (time to live, removed elsewhere) go.
    tokens()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|id, _| server.registry.get(id, None).is_some());
    let mut resp = json_response(StatusCode::CREATED, &created_view(&owned));
    if let Ok(v) = HeaderValue::from_str(&format!("/sandboxes/{}", owned.id)) {
        resp.headers_mut().insert(hyper::header::LOCATION, v);
    }
    Ok(resp)
}

/// E2B's lifecycle: `autoPause` (the SDK's `on_timeout="pause"`) freezes the sandbox when
/// its timeout is over instead of killing it, and `autoResume.enabled` lets the next
/// in-sandbox request thaw it. A pause that keeps only the filesystem (`autoPauseMemory:
/// false`) is refused: nsbox's pause is the freezer, which keeps memory.
fn lifecycle_of(body: &serde_json::Value, secs: u64) -> Result<OnExpiry, Refusal> {
    let flag = |field: &str, v: &serde_json::Value| match v {
        serde_json::Value::Null => Ok(false),
        serde_json::Value::Bool(b) => Ok(*b),
        _ => Err(control_error(
            StatusCode::BAD_REQUEST,
            format!("{field}: true or false"),
        )),
    };
    let pause = flag("autoPause", &body["autoPause"])?;
    let auto_resume = flag("autoResume.enabled", &body["autoResume"]["enabled"])?;
    if !body["autoResume"].is_null() && !body["autoResume"].is_object() {
        return Err(control_error(
            StatusCode::BAD_REQUEST,
            "autoResume: an object {\"enabled\": true|false}",
        ));
    }
    if !pause {
        if auto_resume {
            return Err(control_error(
                StatusCode::BAD_REQUEST,
                "autoResume needs autoPause (on_timeout=\"pause\")",
            ));
        }
        return Ok(OnExpiry::Delete);
    }
    if body["autoPauseMemory"].as_bool() == Some(false) {
        return Err(control_error(
            StatusCode::BAD_REQUEST,
            "a filesystem-only auto-pause (mode=\"filesystem\") is not served by nsbox: its pause freezes every process in memory (mode=\"full\")",
        ));
    }
    Ok(OnExpiry::Pause {
        auto_resume,
        resume_secs: secs,
    })
}

/// E2B's egress options on nsbox's networks. Served: `allow_internet_access=False` (no
/// network), and an allow-list (`deny_out=[ALL_TRAFFIC]` with `allow_out`, plus more
/// `deny_out` entries) as the filtered network. Anything that would need an open network, or
/// that nsbox has no equivalent for, is refused; no option: the server's policy.
fn network_of(body: &serde_json::Value) -> Result<Option<NetworkRequest>, Refusal> {
    const ALL_TRAFFIC: &str = "0.0.0.0/0";
    let refuse = |m: &str| {
        Err(control_error(
            StatusCode::BAD_REQUEST,
            format!("{m} (docs/e2b.md: what nsbox serves of E2B's network options)"),
        ))
    };
    let net = &body["network"];
    if body["allow_internet_access"].as_bool() == Some(false) {
        if !net.is_null() {
            return refuse("allow_internet_access=False with network options");
        }
        return Ok(Some(NetworkRequest {
            mode: "none".into(),
            allow: Vec::new(),
            deny: Vec::new(),
            log: false,
        }));
    }
    let Some(options) = net.as_object() else {
        return Ok(None);
    };
    if let Some(other) = options
        .keys()
        .find(|k| !matches!(k.as_str(), "allowOut" | "denyOut"))
    {
        return refuse(&format!("network.{other} is not served by nsbox"));
    }
    let list = |field: &str| -> Option<Vec<String>> {
        match &options.get(field) {
            None => Some(Vec::new()),
            Some(v) => v
                .as_array()?
                .iter()
                .map(|e| e.as_str().map(str::to_string))
                .collect(),
        }
    };
    let (Some(allow), Some(deny)) = (list("allowOut"), list("denyOut")) else {
        return refuse("network.allowOut and network.denyOut: lists of strings");
    };
    if !deny.iter().any(|d| d == ALL_TRAFFIC) {
        return refuse(
            "only allow-lists are served: give deny_out=[ALL_TRAFFIC] and the allowed hosts in allow_out",
        );
    }
    Ok(Some(NetworkRequest {
        mode: "filtered".into(),
        allow,
        deny: deny.into_iter().filter(|d| d != ALL_TRAFFIC).collect(),
        log: false,
    }))
}

fn template_of(owned: &Owned) -> String {
    owned
        .labels
        .get(TEMPLATE_LABEL)
        .cloned()
        .or_else(|| owned.image.clone())
        .unwrap_or_else(|| DEFAULT_TEMPLATE.into())
}

/// The labels a caller gave (the template label is the server's own).
fn metadata_of(owned: &Owned) -> serde_json::Value {
    let m: serde_json::Map<String, serde_json::Value> = owned
        .labels
        .iter()
        .filter(|(k, _)| *k != TEMPLATE_LABEL)
        .map(|(k, v)| (k.clone(), v.clone().into()))
        .collect();
    serde_json::Value::Object(m)
}

/// E2B's `Sandbox` (the answer to create and connect).
fn created_view(owned: &Owned) -> serde_json::Value {
    serde_json::json!({
        "templateID": template_of(owned),
        "sandboxID": owned.id,
        "clientID": "nsbox",
        "envdVersion": ENVD_VERSION,
        "envdAccessToken": token_for(&owned.id),
        "domain": null,
    })
}

/// E2B's `SandboxDetail` / `ListedSandbox`.
fn detail(server: &Server, owned: &Owned) -> serde_json::Value {
    let view = server.view(owned);
    let end = owned.expires_at.unwrap_or(owned.created + MAX_TIMEOUT);
    let memory_mb = view["limits"]["memory"].as_u64().map_or(0, |b| b >> 20);
    let cpus = view["limits"]["cpus"]
        .as_f64()
        .map_or(0, |c| c.ceil() as u64);
    serde_json::json!({
        "templateID": template_of(owned),
        "sandboxID": owned.id,
        "clientID": "nsbox",
        "startedAt": crate::units::rfc3339(owned.created),
        "endAt": crate::units::rfc3339(end),
        "cpuCount": cpus,
        "memoryMB": memory_mb,
        "diskSizeMB": 0,
        "state": if is_paused(server, &owned.id) { "paused" } else { "running" },
        "lifecycle": {
            "onTimeout": if owned.on_expiry == OnExpiry::Delete { "kill" } else { "pause" },
            "autoResume": matches!(owned.on_expiry, OnExpiry::Pause { auto_resume: true, .. }),
        },
        "envdVersion": ENVD_VERSION,
        "envdAccessToken": token_for(&owned.id),
        "metadata": metadata_of(owned),
    })
}

/// Lists the caller's sandboxes; `metadata=k%3Dv%26k2%3Dv2` and `state=running,paused`
/// filter.
fn list(server: &Server, caller: &Caller, query: &str) -> Response<RespBody> {
    let mut wanted: Vec<(String, String)> = Vec::new();
    let mut states: Vec<String> = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = decode(v);
        match k {
            "metadata" | "query" => {
                for kv in v.split('&').filter(|p| !p.is_empty()) {
                    let (mk, mv) = kv.split_once('=').unwrap_or((kv, ""));
                    wanted.push((decode(mk), decode(mv)));
                }
            }
            "state" => states.extend(v.split(',').map(str::to_string)),
            _ => {}
        }
    }
    let rows: Vec<serde_json::Value> = server
        .registry
        .list(caller.scope())
        .iter()
        .filter(|o| {
            wanted
                .iter()
                .all(|(k, v)| o.labels.get(k).is_some_and(|have| have == v))
        })
        .map(|o| detail(server, o))
        .filter(|d| {
            states.is_empty()
                || states
                    .iter()
                    .any(|s| d["state"].as_str() == Some(s.as_str()))
        })
        .collect();
    json_response(StatusCode::OK, &serde_json::Value::Array(rows))
}

/// Percent-decoding ('+' is a space in a query); bad escapes are kept as they are.
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(crate::units::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(crate::units::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(crate::units::rfc3339(1_796_428_799), "2026-12-04T23:59:59Z");
    }

    #[test]
    fn queries_decode() {
        assert_eq!(decode("a%3Db%26c%3Dd"), "a=b&c=d");
        assert_eq!(decode("x+y%zz"), "x y%zz");
    }

    #[test]
    fn tokens_are_per_sandbox_and_checked_in_full() {
        let t = token_for("e2b-test-a");
        assert_eq!(t, token_for("e2b-test-a"));
        assert_ne!(t, token_for("e2b-test-b"));
        assert!(token_matches("e2b-test-a", t.as_bytes()));
        assert!(!token_matches("e2b-test-a", &t.as_bytes()[1..]));
        assert!(!token_matches("e2b-test-b", t.as_bytes()));
        forget_token("e2b-test-a");
        assert!(!token_matches("e2b-test-a", t.as_bytes()));
    }
}
