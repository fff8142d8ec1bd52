//! The HTTP side: listeners, authentication, routing, the JSON error shape, the audit log, and
//! shutdown. Handlers turn requests into calls of [`super::sandboxes`], [`super::exec`] and
//! [`super::files`]; blocking work runs on the runtime's blocking pool. Children: `http` (the
//! error shape, bodies, queries), `commands` (running, detached, signals, stdin), `files` (the
//! file routes and the network log).

mod commands;
mod files;
mod http;
mod snapshots;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::{combinators::BoxBody, BodyExt, Full, Limited};
use hyper::body::{Body, Bytes, Frame, Incoming};
use hyper::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::mpsc;

use super::audit::{AuditEntry, AuditLog};
use super::exec::{CommandEvent, CommandRequest, StartError};
use super::keys::KeyStore;
use super::metrics::Metrics;
use super::pool::{Claim, Pool};
use super::sandboxes::{self, CreateRequest, OnExpiry, Owned, Registry};
use super::{ServeError, ServeOptions};
use crate::relay::Event;
use crate::session::client::SessionClient;
use crate::session::state::{now_secs, SessionState, SessionStore};

use commands::*;
use files::read_tail;
use http::*;
use snapshots::{CommitRequest, ForkRequest};
// What the E2B API (super::e2b) builds on.
pub(super) use commands::{personalised, push_chunk, start_error};
pub(super) use http::{body_bytes, full, json_response, ApiError, ChannelBody, RespBody};

/// Largest JSON request body.
pub const MAX_JSON: usize = 1 << 20;
/// Largest file read through the API.
const MAX_FILE_READ: usize = 64 << 20;
/// Most entries a directory listing returns.
const MAX_LIST: usize = 10_000;
/// The longest `wait_for_capacity` honoured.
const MAX_CAPACITY_WAIT: Duration = Duration::from_secs(300);
/// How often a create waiting for capacity looks again.
const CAPACITY_POLL: Duration = Duration::from_millis(50);
/// How long a client may take to send a request body (uploads included).
const BODY_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a client may take to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// `POST .../stop`: the grace between TERM and KILL when none is given (`nsbox stop`'s), and
/// the longest honoured.
const STOP_GRACE: Duration = Duration::from_secs(5);
const MAX_STOP_GRACE: Duration = Duration::from_secs(300);
/// On SIGTERM, how long running commands get to finish before the sandboxes are removed.
const DRAIN_GRACE: Duration = Duration::from_secs(10);
/// The OpenAPI document (also in the repository as docs/openapi.json).
pub const OPENAPI: &str = include_str!("../../../docs/openapi.json");

pub(super) struct Server {
    pub(super) options: ServeOptions,
    pub(super) keys: KeyStore,
    pub(super) audit: AuditLog,
    pub(super) registry: Registry,
    pub(super) store: SessionStore,
    commands: AtomicUsize,
    draining: std::sync::atomic::AtomicBool,
    pool: Pool,
    metrics: Metrics,
    /// Detached commands' events, by command id.
    detached: std::sync::Mutex<std::collections::HashMap<String, Arc<Detached>>>,
    /// Open connections (at most `--max-connections`).
    connections: Arc<tokio::sync::Semaphore>,
    /// Commands running through the API, by command id.
    running: std::sync::Mutex<std::collections::HashMap<String, RunningInfo>>,
}

/// The body of `POST /v1/sandboxes/{id}/stop`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StopRequest {
    /// Between TERM and KILL ("5s"; at most 5m).
    grace: Option<String>,
}

/// Who is asking.
#[derive(Debug, Clone)]
pub(super) struct Caller {
    /// The key's name, or "local" (unix socket, no key).
    pub(super) name: String,
    pub(super) max_sandboxes: Option<usize>,
    /// Sees every sandbox the server owns (unix socket without a key).
    pub(super) all: bool,
}

impl Caller {
    pub(super) fn scope(&self) -> Option<&str> {
        (!self.all).then_some(self.name.as_str())
    }
}

/// Every route: method, path template (as in the OpenAPI document), audit action. The
/// router below matches the same paths; a unit test checks this table against the document.
const ROUTES: &[(&str, &str, &str)] = &[
    ("GET", "/v1/health", "health"),
    ("GET", "/v1/openapi.json", "openapi"),
    ("POST", "/v1/sandboxes", "sandbox.create"),
    ("GET", "/v1/sandboxes", "sandbox.list"),
    ("GET", "/v1/sandboxes/{id}", "sandbox.get"),
    ("DELETE", "/v1/sandboxes/{id}", "sandbox.delete"),
    ("GET", "/v1/sandboxes/{id}/stats", "sandbox.stats"),
    ("POST", "/v1/sandboxes/{id}/stop", "sandbox.stop"),
    ("POST", "/v1/sandboxes/{id}/pause", "sandbox.pause"),
    ("POST", "/v1/sandboxes/{id}/resume", "sandbox.resume"),
    ("POST", "/v1/sandboxes/{id}/commit", "sandbox.commit"),
    ("POST", "/v1/sandboxes/{id}/fork", "sandbox.fork"),
    (
        "GET",
        "/v1/sandboxes/{id}/network-log",
        "sandbox.network_log",
    ),
    ("POST", "/v1/sandboxes/{id}/commands", "command.run"),
    ("GET", "/v1/sandboxes/{id}/commands", "command.list"),
    (
        "POST",
        "/v1/sandboxes/{id}/commands/{cid}/signal",
        "command.signal",
    ),
    (
        "POST",
        "/v1/sandboxes/{id}/commands/{cid}/stdin",
        "command.stdin",
    ),
    (
        "GET",
        "/v1/sandboxes/{id}/commands/{cid}/events",
        "command.attach",
    ),
    ("GET", "/v1/sandboxes/{id}/files", "file.read"),
    ("PUT", "/v1/sandboxes/{id}/files", "file.write"),
    ("DELETE", "/v1/sandboxes/{id}/files", "file.remove"),
    ("GET", "/v1/sandboxes/{id}/files/list", "file.list"),
    ("GET", "/v1/sandboxes/{id}/files/stat", "file.stat"),
    ("POST", "/v1/sandboxes/{id}/files/mkdir", "file.mkdir"),
    ("GET", "/metrics", "metrics"),
];

/// The audit action and sandbox of a request, from its method and path.
fn action_of(method: &Method, parts: &[&str]) -> (&'static str, Option<String>) {
    for (m, template, action) in ROUTES {
        let t: Vec<&str> = template.split('/').filter(|p| !p.is_empty()).collect();
        if *m == method.as_str()
            && t.len() == parts.len()
            && t.iter()
                .zip(parts)
                .all(|(t, p)| t.starts_with('{') || t == p)
        {
            let sandbox = t
                .iter()
                .position(|t| *t == "{id}")
                .map(|i| parts[i].to_string());
            return (action, sandbox);
        }
    }
    ("other", None)
}

impl Server {
    /// The caller, from the bearer token (required on TCP; optional on the unix socket).
    fn authenticate(&self, req: &Request<Incoming>, tcp: bool) -> Result<Caller, ApiError> {
        let unauthorized = |m: &str| {
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m).hint(
                "send `Authorization: Bearer TOKEN` with a key from `nsbox serve key add NAME`",
            )
        };
        let Some(header) = req.headers().get(AUTHORIZATION) else {
            if tcp {
                return Err(unauthorized("an API key is required"));
            }
            return Ok(Caller {
                name: "local".into(),
                max_sandboxes: None,
                all: true,
            });
        };
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| unauthorized("the Authorization header is not `Bearer TOKEN`"))?;
        match self.keys.verify(token) {
            Ok(Some(key)) => Ok(Caller {
                name: key.name,
                max_sandboxes: key.max_sandboxes,
                all: false,
            }),
            Ok(None) => Err(unauthorized("unknown or removed API key")),
            Err(e) => Err(ApiError::internal(e.to_string())),
        }
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>, tcp: bool) -> Response<RespBody> {
        // E2B's control API and in-sandbox API (docs/e2b.md) share this listener.
        if super::e2b::claims(&req) {
            return super::e2b::handle(self, req, tcp).await;
        }
        let path = req.uri().path().to_string();
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        let (action, sandbox) = action_of(req.method(), &parts);
        let caller = self.authenticate(&req, tcp);
        let key_name = caller.as_ref().map_or("-".to_string(), |c| c.name.clone());
        let result = match caller {
            Err(e) => {
                drain(req).await;
                Err(e)
            }
            Ok(caller) => self.read_then_route(req, &parts, caller).await,
        };
        let resp = result.unwrap_or_else(|e| e.response());
        let error_code = (!resp.status().is_success()).then(|| {
            resp.headers()
                .get("x-nsbox-error")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        });
        // The sandbox a create made is named in its answer's Location header.
        let created = resp
            .headers()
            .get(hyper::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|l| l.rsplit('/').next())
            .map(str::to_string);
        if !matches!(action, "other" | "health" | "openapi" | "metrics") {
            self.audit.record(&AuditEntry {
                time_ms: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis())
                    .unwrap_or_default(),
                key: &key_name,
                action,
                sandbox: created.as_deref().or(sandbox.as_deref()),
                status: resp.status().as_u16(),
                error: error_code.as_deref().filter(|c| !c.is_empty()),
            });
        }
        resp
    }

    /// Reads the whole body (capped: 413 beyond) before any route may refuse: hyper closes a
    /// connection whose request body was left unread, and a keep-alive client's next request
    /// on it would then fail instead of this one reading its refusal. Every /v1 body is a
    /// bounded JSON document, file or stdin chunk, so nothing is lost by reading it first.
    async fn read_then_route(
        self: &Arc<Self>,
        req: Request<Incoming>,
        parts: &[&str],
        caller: Caller,
    ) -> Result<Response<RespBody>, ApiError> {
        let (head, body) = req.into_parts();
        let cap = self.options.max_body.max(MAX_JSON);
        let bytes = body_bytes(Request::new(body), cap).await?;
        self.route(Request::from_parts(head, Full::new(bytes)), parts, caller)
            .await
    }

    async fn route(
        self: &Arc<Self>,
        req: Req,
        parts: &[&str],
        caller: Caller,
    ) -> Result<Response<RespBody>, ApiError> {
        let method = req.method().clone();
        let q = query(&req)?;
        match (&method, parts) {
            (&Method::GET, ["v1", "openapi.json"]) => {
                let mut resp = Response::new(full(OPENAPI));
                resp.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                Ok(resp)
            }
            (&Method::GET, ["v1", "health"]) => Ok(json_response(
                StatusCode::OK,
                &serde_json::json!({"status": if self.draining.load(Ordering::Relaxed) {"draining"} else {"ok"}}),
            )),
            (&Method::GET, ["metrics"]) => {
                let text = self
                    .metrics
                    .render(&self.pool.sizes(), self.registry.list(None).len());
                let mut resp = Response::new(full(text));
                resp.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                Ok(resp)
            }
            (&Method::POST, ["v1", "sandboxes"]) => {
                // Run to the end even if the client goes away meanwhile: a sandbox made by a
                // create is then still recorded (and listed for its key), never leaked.
                let server = self.clone();
                tokio::spawn(async move { server.create(req, &caller).await })
                    .await
                    .map_err(|e| ApiError::internal(format!("create: {e}")))?
            }
            (&Method::GET, ["v1", "sandboxes"]) => Ok(self.list(&caller, &q)),
            (&Method::GET, ["v1", "sandboxes", id]) => {
                let owned = self.owned(id, &caller)?;
                Ok(json_response(StatusCode::OK, &self.view(&owned)))
            }
            (&Method::DELETE, ["v1", "sandboxes", id]) => {
                let owned = self.owned(id, &caller)?;
                let server = self.clone();
                let sid = owned.id.clone();
                tokio::spawn(async move { server.delete(&sid).await })
                    .await
                    .map_err(|e| ApiError::internal(format!("delete: {e}")))??;
                Ok(json_response(
                    StatusCode::OK,
                    &serde_json::json!({"id": owned.id, "deleted": true}),
                ))
            }
            (&Method::POST, ["v1", "sandboxes", id, "stop"]) => {
                let owned = self.owned(id, &caller)?;
                // No body is the default grace.
                let bytes = body_bytes(req, MAX_JSON).await?;
                let body: StopRequest = if bytes.iter().all(u8::is_ascii_whitespace) {
                    StopRequest::default()
                } else {
                    serde_json::from_slice(&bytes).map_err(|e| {
                        ApiError::new(
                            StatusCode::BAD_REQUEST,
                            "bad_json",
                            format!("the request body: {e}"),
                        )
                        .hint("{\"grace\": \"5s\"}, or no body")
                    })?
                };
                let grace = body
                    .grace
                    .as_deref()
                    .map(|g| sandboxes::duration("grace", g))
                    .transpose()
                    .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid", e.0))?
                    .unwrap_or(STOP_GRACE)
                    .min(MAX_STOP_GRACE);
                let running = self.alive(&owned.id);
                if running {
                    let client = self.client(&owned.id).await?;
                    blocking(move || {
                        client
                            .stop(grace, "stopped through the nsbox serve API")
                            .map_err(|e| ApiError::internal(e.to_string()))
                    })
                    .await?;
                }
                let mut view = self.view(&owned);
                view["was_running"] = running.into();
                Ok(json_response(StatusCode::OK, &view))
            }
            (&Method::GET, ["v1", "sandboxes", id, "stats"]) => {
                let owned = self.owned(id, &caller)?;
                let client = self.client(&owned.id).await?;
                let stats = blocking(move || {
                    client
                        .stats()
                        .map_err(|e| ApiError::internal(e.to_string()))
                })
                .await?;
                Ok(json_response(
                    StatusCode::OK,
                    &serde_json::to_value(stats).unwrap_or_default(),
                ))
            }
            (&Method::POST, ["v1", "sandboxes", id, action @ ("pause" | "resume")]) => {
                let owned = self.owned(id, &caller)?;
                self.pause_or_resume(&owned, *action == "pause").await
            }
            (&Method::POST, ["v1", "sandboxes", id, "commit"]) => {
                let owned = self.owned(id, &caller)?;
                let body: CommitRequest = json_body(req).await?;
                // To the end even if the client goes away: the freeze is released by then.
                let server = self.clone();
                tokio::spawn(async move { server.commit_route(&owned, body).await })
                    .await
                    .map_err(|e| ApiError::internal(format!("commit: {e}")))?
            }
            (&Method::POST, ["v1", "sandboxes", id, "fork"]) => {
                let owned = self.owned(id, &caller)?;
                let body: ForkRequest = json_body(req).await?;
                // As a create: what is made is recorded (or removed), never leaked.
                let server = self.clone();
                tokio::spawn(async move { server.fork(&owned, body, &caller).await })
                    .await
                    .map_err(|e| ApiError::internal(format!("fork: {e}")))?
            }
            (&Method::GET, ["v1", "sandboxes", id, "network-log"]) => {
                let owned = self.owned(id, &caller)?;
                let path = self.store.network_log(&owned.id);
                let text = blocking(move || read_tail(&path, MAX_JSON)).await?;
                let mut resp = Response::new(full(text));
                resp.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                );
                Ok(resp)
            }
            (&Method::GET, ["v1", "sandboxes", id, "commands"]) => {
                let owned = self.owned(id, &caller)?;
                let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
                let mut rows: Vec<serde_json::Value> = running
                    .iter()
                    .filter(|(_, r)| r.sandbox == owned.id)
                    .map(|(cid, r)| {
                        serde_json::json!({"id": cid, "argv": r.argv, "started_ms": r.started_ms})
                    })
                    .collect();
                rows.sort_by_key(|r| r["started_ms"].as_u64());
                Ok(json_response(
                    StatusCode::OK,
                    &serde_json::json!({ "commands": rows }),
                ))
            }
            (&Method::POST, ["v1", "sandboxes", id, "commands", cid, "signal"]) => {
                let owned = self.owned(id, &caller)?;
                let body: serde_json::Value = json_body(req).await?;
                let keys_ok = body
                    .as_object()
                    .is_some_and(|o| o.keys().all(|k| k == "signal"));
                let signal = parse_signal(&body["signal"])
                    .filter(|_| keys_ok)
                    .ok_or_else(|| {
                        ApiError::new(
                            StatusCode::BAD_REQUEST,
                            "invalid",
                            "expected {\"signal\": NAME or NUMBER} (TERM, KILL, INT, HUP, QUIT, USR1, USR2, CONT, STOP)",
                        )
                    })?;
                let sender = self
                    .running
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(*cid)
                    .filter(|r| r.sandbox == owned.id)
                    .map(|r| r.signals.clone())
                    .ok_or_else(|| {
                        ApiError::new(
                            StatusCode::NOT_FOUND,
                            "no_such_command",
                            format!("no running command {cid} in sandbox {}", owned.id),
                        )
                    })?;
                let _ = sender.send(signal).await;
                Ok(json_response(
                    StatusCode::OK,
                    &serde_json::json!({"ok": true}),
                ))
            }
            (&Method::GET, ["v1", "sandboxes", id, "commands", cid, "events"]) => {
                let owned = self.owned(id, &caller)?;
                let sse = req
                    .headers()
                    .get(ACCEPT)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|a| a.contains("text/event-stream"));
                let entry = self
                    .detached
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(*cid)
                    .filter(|d| d.sandbox == owned.id)
                    .cloned()
                    .ok_or_else(|| {
                        ApiError::new(
                            StatusCode::NOT_FOUND,
                            "no_such_command",
                            format!("no detached command {cid} in sandbox {}", owned.id),
                        )
                        .hint("start it with POST .../commands?detach=true; events are kept 10 minutes after it ended")
                    })?;
                let (tx, rx) = mpsc::channel::<Bytes>(4);
                tokio::spawn(async move {
                    let mut progress = entry.progress.subscribe();
                    let mut from = 0;
                    loop {
                        progress.borrow_and_update();
                        let (lines, done) = {
                            let log = entry.lock();
                            (log.lines[from..].to_vec(), log.done)
                        };
                        from += lines.len();
                        for line in lines {
                            if tx.send(frame(line.to_vec(), sse)).await.is_err() {
                                return;
                            }
                        }
                        if done || progress.changed().await.is_err() {
                            return;
                        }
                    }
                });
                let mut resp = Response::new(ChannelBody { rx }.boxed());
                resp.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static(if sse {
                        "text/event-stream"
                    } else {
                        "application/x-ndjson"
                    }),
                );
                Ok(resp)
            }
            (&Method::POST, ["v1", "sandboxes", id, "commands", cid, "stdin"]) => {
                let owned = self.owned(id, &caller)?;
                let close = flag(&q, "close");
                let pipe = self
                    .running
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(*cid)
                    .filter(|r| r.sandbox == owned.id)
                    .map(|r| r.stdin.clone())
                    .ok_or_else(|| {
                        ApiError::new(
                            StatusCode::NOT_FOUND,
                            "no_such_command",
                            format!("no running command {cid} in sandbox {}", owned.id),
                        )
                    })?
                    .ok_or_else(|| {
                        ApiError::new(
                            StatusCode::CONFLICT,
                            "stdin_closed",
                            "the command's stdin is not open",
                        )
                        .hint("start the command with \"stdin_open\": true")
                    })?;
                let data = body_bytes(req, self.options.max_body).await?;
                let write = async {
                    use tokio::io::AsyncWriteExt;
                    let mut guard = pipe.lock().await;
                    let Some(w) = guard.as_mut() else {
                        return Err(ApiError::new(
                            StatusCode::CONFLICT,
                            "stdin_closed",
                            "the command's stdin was closed",
                        ));
                    };
                    w.write_all(&data).await.map_err(|e| {
                        ApiError::new(StatusCode::CONFLICT, "stdin_closed", e.to_string())
                    })?;
                    if close {
                        *guard = None;
                    }
                    Ok(())
                };
                // A command that does not read its input cannot hold the request forever.
                tokio::time::timeout(BODY_TIMEOUT, write)
                    .await
                    .map_err(|_| {
                        ApiError::new(
                            StatusCode::REQUEST_TIMEOUT,
                            "stdin_timeout",
                            "the command did not read its input",
                        )
                    })??;
                Ok(json_response(
                    StatusCode::OK,
                    &serde_json::json!({"ok": true}),
                ))
            }
            (&Method::POST, ["v1", "sandboxes", id, "commands"]) => {
                let owned = self.owned(id, &caller)?;
                let wait = flag(&q, "wait");
                let sse = req
                    .headers()
                    .get(ACCEPT)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|a| a.contains("text/event-stream"));
                let detach = flag(&q, "detach");
                let body: CommandRequest = json_body(req).await?;
                self.run_command(&owned.id, body, wait && !detach, sse, detach)
                    .await
            }
            (_, ["v1", "sandboxes", id, "files", rest @ ..]) => {
                let owned = self.owned(id, &caller)?;
                let path = param(&q, "path")
                    .ok_or_else(|| ApiError::bad("the `path` query parameter is required"))?
                    .to_string();
                // A tar stream: `?format=tar` (read) or a tar body (write).
                let tar = param(&q, "format") == Some("tar")
                    || req
                        .headers()
                        .get(CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|t| t.starts_with("application/x-tar"));
                self.files(req, &owned.id, rest, path, tar).await
            }
            (_, ["v1", ..]) | (_, ["metrics"]) => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "no_route",
                format!("no {method} {}", parts.join("/")),
            )
            .hint("see /v1/openapi.json")),
            _ => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "no_route",
                "the API lives under /v1",
            )),
        }
    }

    pub(super) fn owned(&self, id: &str, caller: &Caller) -> Result<Owned, ApiError> {
        self.registry
            .get(id, caller.scope())
            .ok_or_else(|| ApiError::not_found(id))
    }

    pub(super) fn view(&self, owned: &Owned) -> serde_json::Value {
        let record = self.store.read_record(&owned.id).ok();
        let state = record
            .as_ref()
            .map_or("gone", |r| match self.store.state(r) {
                SessionState::Running => "running",
                SessionState::Stopped => "stopped",
                SessionState::Dead => "dead",
            });
        sandboxes::view(owned, record.as_ref(), state)
    }

    fn list(&self, caller: &Caller, q: &[(String, String)]) -> Response<RespBody> {
        let filters: Vec<(&str, &str)> = q
            .iter()
            .filter(|(k, _)| k == "label")
            .map(|(_, v)| v.split_once('=').unwrap_or((v.as_str(), "")))
            .collect();
        let rows: Vec<serde_json::Value> = self
            .registry
            .list(caller.scope())
            .iter()
            .filter(|o| {
                filters
                    .iter()
                    .all(|(k, v)| o.labels.get(*k).is_some_and(|have| have == v))
            })
            .map(|o| self.view(o))
            .collect();
        json_response(StatusCode::OK, &serde_json::json!({ "sandboxes": rows }))
    }

    pub(super) async fn client(&self, id: &str) -> Result<SessionClient, ApiError> {
        let store = self.store.clone();
        let id = id.to_string();
        blocking(move || {
            SessionClient::connect(&store, &id).map_err(|e| {
                ApiError::new(StatusCode::CONFLICT, "not_running", e.to_string()).hint(
                    "the sandbox ended (idle timeout, or its processes were killed); DELETE it",
                )
            })
        })
        .await
    }

    async fn create(
        self: &Arc<Self>,
        req: Req,
        caller: &Caller,
    ) -> Result<Response<RespBody>, ApiError> {
        let body: CreateRequest = json_body(req).await?;
        let owned = self.create_owned(body, caller).await?;
        let mut resp = json_response(StatusCode::CREATED, &self.view(&owned));
        if let Ok(v) = HeaderValue::from_str(&format!("/v1/sandboxes/{}", owned.id)) {
            resp.headers_mut().insert(hyper::header::LOCATION, v);
        }
        Ok(resp)
    }

    /// Makes (or claims from the pool) and records a sandbox for `caller` (also the E2B
    /// API's create).
    pub(super) async fn create_owned(
        self: &Arc<Self>,
        body: CreateRequest,
        caller: &Caller,
    ) -> Result<Owned, ApiError> {
        if self.draining.load(Ordering::Relaxed) {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "draining",
                "the server is shutting down",
            ));
        }
        let plan = body
            .plan()
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid", e.0))?;
        let plan_expires = plan.expires_in;
        let wait = body
            .wait_for_capacity
            .as_deref()
            .map(|w| sandboxes::duration("wait_for_capacity", w))
            .transpose()
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid", e.0))?
            .unwrap_or_default()
            .min(MAX_CAPACITY_WAIT);
        let deadline = tokio::time::Instant::now() + wait;
        let reservation = loop {
            match self.registry.reserve(
                &caller.name,
                caller.max_sandboxes,
                self.options.max_sandboxes,
            ) {
                Ok(r) => break Ok(r),
                Err(_)
                    if tokio::time::Instant::now() < deadline
                        && !self.draining.load(Ordering::Relaxed) =>
                {
                    tokio::time::sleep(CAPACITY_POLL).await
                }
                Err(over) => break Err(over),
            }
        }
        .map_err(over_capacity)?;
        let t0 = std::time::Instant::now();
        let pool_key = body.pool_key();
        let claim = match &pool_key {
            None => Claim::NoEntry,
            Some(k) => loop {
                // A pool member that ended meanwhile (killed, say) is dropped, not handed out.
                match self.pool.claim(k) {
                    Claim::Hit(id) if !self.alive(&id) => {
                        let server = self.clone();
                        tokio::spawn(async move {
                            let _ = server.delete(&id).await;
                            server.registry.forget_pool_member(&id);
                        });
                    }
                    other => break other,
                }
            },
        };
        let (id, pooled) = match claim {
            Claim::Hit(id) => (id, true),
            other => {
                if other == Claim::Miss {
                    self.metrics.claims_miss.fetch_add(1, Ordering::Relaxed);
                }
                let server = self.clone();
                let created = tokio::task::spawn_blocking(move || {
                    sandboxes::create_session(&server.options, &plan, &server.registry)
                })
                .await
                .map_err(|e| ApiError::internal(format!("a worker failed: {e}")))?;
                self.metrics.cold_create_latency.observe(t0.elapsed());
                let id = created.map_err(|f| {
                    self.metrics.create_failures.fetch_add(1, Ordering::Relaxed);
                    let mut e = ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "create_failed",
                        f.message.clone(),
                    );
                    e.hint = f.hint.clone();
                    e.exit_code = Some(f.code);
                    if f.phase == "setup" && f.code != crate::exit::NSBOX_FAILED {
                        // `nsbox create` says so itself; the prefix is for other wordings.
                        if !f.message.starts_with("the setup script") {
                            e.message = format!("the setup script failed: {}", f.message);
                        }
                        e.code = "setup_failed";
                    }
                    e
                })?;
                self.metrics.creates.fetch_add(1, Ordering::Relaxed);
                (id, false)
            }
        };
        let expires_in = plan_expires;
        let now = now_secs();
        let owned = Owned {
            id: id.clone(),
            key: caller.name.clone(),
            labels: body.labels,
            created: now,
            expires_at: expires_in.map(|d| now + d.as_secs()),
            image: body.image,
            // A pooled sandbox was made before this request: its env and secrets are added
            // by the server to every command (a cold one has them from `nsbox create`).
            env: if pooled {
                body.env.into_iter().collect()
            } else {
                Vec::new()
            },
            secrets: if pooled {
                body.secrets.into_iter().collect()
            } else {
                Vec::new()
            },
            on_expiry: body.on_expiry,
        };
        if let Err(e) = self.registry.insert(owned.clone(), reservation) {
            // Not recorded, so not adoptable: better gone than leaked.
            let store = self.store.clone();
            let _ =
                tokio::task::spawn_blocking(move || sandboxes::remove_session(&store, &id)).await;
            return Err(ApiError::internal(format!("record the sandbox: {e}")));
        }
        if pooled {
            if let Some(script) = body.setup {
                self.claim_setup(&owned, script).await?;
            }
            self.metrics.claims_hit.fetch_add(1, Ordering::Relaxed);
            self.metrics.claim_latency.observe(t0.elapsed());
        }
        Ok(owned)
    }

    fn alive(&self, id: &str) -> bool {
        self.store
            .read_record(id)
            .is_ok_and(|r| self.store.state(&r) == SessionState::Running)
    }

    pub(super) async fn delete(&self, id: &str) -> Result<(), ApiError> {
        let store = self.store.clone();
        let sid = id.to_string();
        let removed =
            blocking(move || sandboxes::remove_session(&store, &sid).map_err(ApiError::internal))
                .await;
        match removed {
            Ok(()) => {
                self.registry.forget(id);
                Ok(())
            }
            // Already gone (prune, rm): forget it too.
            Err(_) if self.store.read_record(id).is_err() => {
                self.registry.forget(id);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

/// Serves one connection, if the server has room for another (else it is closed at once).
fn serve_connection<S>(server: Arc<Server>, stream: S, tcp: bool)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Ok(permit) = server.connections.clone().try_acquire_owned() else {
        tracing::warn!(
            "connection refused: {} connections open",
            server.options.max_connections
        );
        return;
    };
    tokio::spawn(async move {
        let _permit = permit;
        let service = hyper::service::service_fn(move |req| {
            let server = server.clone();
            async move { Ok::<_, Infallible>(server.handle(req, tcp).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .serve_connection(TokioIo::new(stream), service);
        if let Err(e) = conn.await {
            tracing::debug!("connection: {e}");
        }
    });
}

/// Keeps the warm pool filled: one create at a time per entry, woken by claims.
async fn refill(server: Arc<Server>) {
    loop {
        if server.draining.load(Ordering::Relaxed) {
            return;
        }
        for (index, key) in server.pool.wanted() {
            let server = server.clone();
            tokio::spawn(async move {
                let plan = match super::pool::request_for(&key).plan() {
                    // Idle in the pool as long as it takes: no idle timeout (a claimed one
                    // keeps none; its ttl, if any, applies).
                    Ok(mut plan) => {
                        plan.args.push("--max-age=none".into());
                        plan
                    }
                    Err(e) => {
                        tracing::warn!("pool entry: {}", e.0);
                        server.pool.filled(index, None);
                        return;
                    }
                };
                let t0 = std::time::Instant::now();
                let creator = server.clone();
                let made = tokio::task::spawn_blocking(move || {
                    sandboxes::create_session(&creator.options, &plan, &creator.registry)
                })
                .await;
                server.metrics.cold_create_latency.observe(t0.elapsed());
                match made {
                    Ok(Ok(id)) => {
                        server.metrics.creates.fetch_add(1, Ordering::Relaxed);
                        if let Err(e) = server.registry.record_pool_member(&id) {
                            tracing::warn!("pool: record {id}: {e}");
                        }
                        if server.draining.load(Ordering::Relaxed) {
                            let store = server.store.clone();
                            let sid = id.clone();
                            let _ = tokio::task::spawn_blocking(move || {
                                sandboxes::remove_session(&store, &sid)
                            })
                            .await;
                            server.registry.forget_pool_member(&id);
                        } else {
                            server.pool.filled(index, Some(id));
                        }
                    }
                    Ok(Err(f)) => {
                        server
                            .metrics
                            .create_failures
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::warn!("pool: create failed: {}", f.message);
                        server.pool.filled(index, None);
                    }
                    Err(_) => server.pool.filled(index, None),
                }
                server.pool.wake.notify_one();
            });
        }
        tokio::select! {
            _ = server.pool.wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// Takes `serve/lock` (an exclusive flock) or says who holds it.
fn lock_serve_dir(dir: &std::path::Path) -> Result<std::fs::File, ServeError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| ServeError::Io("open the server's lock", e))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(ServeError::Busy(format!(
            "another nsbox serve uses {} (it holds {})",
            dir.display(),
            path.display()
        ))),
        Err(e) => Err(ServeError::Io(
            "lock the server's directory",
            std::io::Error::from_raw_os_error(e.raw_os_error()),
        )),
    }
}

/// Binds the unix socket: a stale one is replaced; the socket is 0600 (root's, like the run
/// directory it lives in).
fn bind_unix(path: &std::path::Path) -> Result<tokio::net::UnixListener, ServeError> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        super::private_dir(dir)?;
    }
    // A socket someone answers on belongs to a running server: never take it over.
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(ServeError::Busy(format!(
            "another server listens on {}",
            path.display()
        )));
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(ServeError::Io("remove a stale socket", e)),
    }
    let listener =
        tokio::net::UnixListener::bind(path).map_err(|e| ServeError::Io("bind the socket", e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| ServeError::Io("chmod the socket", e))?;
    Ok(listener)
}

/// The server's main loop: listeners, the time-to-live reaper, and shutdown.
pub async fn serve(options: ServeOptions) -> Result<(), ServeError> {
    // One server per state root: a second would adopt, and on SIGTERM remove, the first's
    // sandboxes. The lock is held until this function returns.
    let _lock = lock_serve_dir(&options.serve_dir)?;
    let audit =
        AuditLog::open(&options.serve_dir).map_err(|e| ServeError::Io("open the audit log", e))?;
    let server = Arc::new(Server {
        keys: KeyStore::new(&options.serve_dir),
        registry: Registry::new(&options.serve_dir),
        store: SessionStore::system(),
        audit,
        commands: AtomicUsize::new(0),
        draining: std::sync::atomic::AtomicBool::new(false),
        pool: Pool::new(options.pool.clone()),
        running: std::sync::Mutex::new(std::collections::HashMap::new()),
        detached: std::sync::Mutex::new(std::collections::HashMap::new()),
        connections: Arc::new(tokio::sync::Semaphore::new(options.max_connections)),
        metrics: Metrics::default(),
        options,
    });
    // Caught before anything is adopted or announced: a SIGTERM from then on stops the server
    // through its drain (which removes what it owns), never by the default action.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| ServeError::Io("catch SIGTERM", e))?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| ServeError::Io("catch SIGINT", e))?;
    {
        let s = server.clone();
        let adopted = tokio::task::spawn_blocking(move || s.registry.adopt(&s.store))
            .await
            .unwrap_or(0);
        if adopted > 0 {
            tracing::info!("adopted {adopted} sandboxes of a previous server");
        }
    }
    let unix = bind_unix(&server.options.socket)?;
    let tcp = match server.options.listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| ServeError::Io("bind the TCP address", e))?,
        ),
        None => None,
    };
    // One line on stdout when ready (tests and scripts wait for it).
    println!(
        "{}",
        serde_json::json!({
            "type": "listening",
            "socket": server.options.socket,
            "tcp": tcp.as_ref().and_then(|l| l.local_addr().ok()).map(|a| a.to_string()),
            "tls": server.options.tls.is_some(),
            "pid": std::process::id(),
        })
    );
    let tls = match &server.options.tls {
        Some((cert, key)) => Some(tokio_rustls::TlsAcceptor::from(Arc::new(
            super::tls_config(cert, key)?,
        ))),
        None => None,
    };
    if !server.pool.is_empty() {
        tokio::spawn(refill(server.clone()));
    }
    let mut reaper = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            conn = unix.accept() => {
                if let Ok((stream, _)) = conn {
                    serve_connection(server.clone(), stream, false);
                }
            }
            conn = async {
                match &tcp {
                    Some(l) => l.accept().await,
                    None => std::future::pending().await,
                }
            } => {
                if let Ok((stream, _)) = conn {
                    let _ = stream.set_nodelay(true);
                    match &tls {
                        None => serve_connection(server.clone(), stream, true),
                        Some(acceptor) => {
                            let acceptor = acceptor.clone();
                            let server = server.clone();
                            tokio::spawn(async move {
                                let handshake =
                                    tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream)).await;
                                match handshake {
                                    Ok(Ok(stream)) => serve_connection(server, stream, true),
                                    Ok(Err(e)) => tracing::debug!("TLS handshake: {e}"),
                                    Err(_) => tracing::debug!("TLS handshake timed out"),
                                }
                            });
                        }
                    }
                }
            }
            _ = reaper.tick() => {
                for (id, action) in server.registry.expired() {
                    tracing::info!("sandbox {id}: time to live is over");
                    let server = server.clone();
                    // Deleted (or paused) beside the accept loop, which must not wait for it.
                    tokio::spawn(async move {
                        let done = match action {
                            OnExpiry::Delete => server.delete(&id).await.map(drop),
                            OnExpiry::Pause { .. } => server.set_frozen(&id, true).await.map(drop),
                        };
                        if let Err(e) = done {
                            tracing::warn!("sandbox {id}: {}", e.message);
                        }
                    });
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    // Drain: no new sandboxes; running commands get a grace period; then the sandboxes go.
    server.draining.store(true, Ordering::SeqCst);
    drop(unix);
    drop(tcp);
    let _ = std::fs::remove_file(&server.options.socket);
    let deadline = tokio::time::Instant::now() + DRAIN_GRACE;
    while server.commands.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for id in server.pool.drain() {
        let store = server.store.clone();
        let sid = id.clone();
        let _ = tokio::task::spawn_blocking(move || sandboxes::remove_session(&store, &sid)).await;
        server.registry.forget_pool_member(&id);
    }
    // Creates under way finish (or fail) first: one that completed while the server stopped
    // would otherwise be a session nobody answers for. A create that hangs is left to die
    // with the server (it holds a parent-death signal) after the grace period.
    let deadline = tokio::time::Instant::now() + DRAIN_GRACE;
    while server.registry.creates_running() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if !server.options.keep {
        for owned in server.registry.list(None) {
            if let Err(e) = server.delete(&owned.id).await {
                tracing::warn!("sandbox {}: {}", owned.id, e.message);
            }
        }
    }
    // Creates that finished but were never handed to a caller (even with --keep: no caller
    // knows of them).
    let s = server.clone();
    let _ = tokio::task::spawn_blocking(move || s.registry.remove_pending(&s.store)).await;
    Ok(())
}

/// The 429 of a create over the caller's or the server's limit.
fn over_capacity(over: sandboxes::OverCapacity) -> ApiError {
    ApiError {
        status: StatusCode::TOO_MANY_REQUESTS,
        code: if over.per_key {
            "key_limit"
        } else {
            "server_full"
        },
        message: format!(
            "{} {} sandboxes at once",
            if over.per_key {
                "this key may hold"
            } else {
                "the server holds at most"
            },
            over.limit
        ),
        hint: Some("delete a sandbox, or retry later".into()),
        retry_after: Some(1),
        exit_code: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The document the server serves lists exactly the routes it answers.
    #[test]
    fn openapi_document_matches_the_routes() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        let mut documented = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in ["get", "put", "post", "delete", "patch"] {
                if item.get(method).is_some() {
                    documented.push((method.to_uppercase(), path.clone()));
                }
            }
        }
        let mut routed: Vec<(String, String)> = ROUTES
            .iter()
            .map(|(m, p, _)| (m.to_string(), p.to_string()))
            .collect();
        documented.sort();
        routed.sort();
        assert_eq!(documented, routed);
    }

    #[test]
    fn actions_name_the_sandbox() {
        let (action, id) = action_of(&Method::PUT, &["v1", "sandboxes", "abc", "files"]);
        assert_eq!((action, id.as_deref()), ("file.write", Some("abc")));
        assert_eq!(action_of(&Method::PATCH, &["v1", "sandboxes"]).0, "other");
    }

    #[test]
    fn query_values_are_decoded() {
        assert_eq!(percent_decode("a%2Fb+c").unwrap(), "a/b c");
        assert!(percent_decode("%zz").is_err());
    }
}
