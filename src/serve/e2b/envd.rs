//! The in-sandbox API of E2B's daemon, answered from outside the sandbox: `process.Process`
//! (Start, Connect, List, SendSignal, SendInput, CloseStdin, Update), `filesystem.Filesystem` (Stat, ListDir,
//! MakeDir, Move, Remove) and `/files`.
//! Which sandbox: the `E2b-Sandbox-Id` header; its access token: `X-Access-Token`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use tokio::sync::mpsc;

use super::super::api::{self, full, json_response, ChannelBody, RespBody, Server};
use super::super::exec::{CommandEvent, CommandRequest};
use super::super::files::{self, FileError};
use super::super::sandboxes::{OnExpiry, Owned};
use super::connect::{self, Code, Codec, RpcError};
use super::proto;
use crate::session::client::SessionClient;

/// Largest file read through `/files`.
const MAX_FILE_READ: usize = 64 << 20;
/// Most entries a ListDir returns.
const MAX_LIST: usize = 10_000;
/// The keep-alive period when the client names none (E2B's SDKs ask for 50 s).
const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(50);

/// Process ids the SDK sees: nsbox does not expose the sandbox's pids, so each started
/// command gets a number of its own (only unique within this server).
static NEXT_PID: AtomicU32 = AtomicU32::new(1000);

/// A command started through `process.Process/Start`, while it runs.
struct Process {
    sandbox: String,
    config: serde_json::Value,
    tag: Option<String>,
    signals: mpsc::Sender<i32>,
    stdin: Option<super::super::exec::StdinPipe>,
    /// A command on a terminal: its input, size and signals.
    pty: Option<mpsc::Sender<super::pty::PtyControl>>,
    watchers: Arc<Watchers>,
}

fn processes() -> &'static std::sync::Mutex<HashMap<u32, Process>> {
    static PROCESSES: OnceLock<std::sync::Mutex<HashMap<u32, Process>>> = OnceLock::new();
    PROCESSES.get_or_init(Default::default)
}

fn lock_processes() -> std::sync::MutexGuard<'static, HashMap<u32, Process>> {
    processes().lock().unwrap_or_else(|p| p.into_inner())
}

/// Forgets a process when it ends (however it ends).
struct Registered(u32);

impl Drop for Registered {
    fn drop(&mut self) {
        lock_processes().remove(&self.0);
    }
}

/// The pid a `ProcessSelector` names in sandbox `sandbox` (by pid or by tag).
fn select(sandbox: &str, selector: &serde_json::Value) -> Result<u32, RpcError> {
    let table = lock_processes();
    let found = if let Some(pid) = selector["pid"].as_u64() {
        table
            .get_key_value(&(pid as u32))
            .filter(|(_, p)| p.sandbox == sandbox)
            .map(|(k, _)| *k)
    } else if let Some(tag) = selector["tag"].as_str() {
        table
            .iter()
            .find(|(_, p)| p.sandbox == sandbox && p.tag.as_deref() == Some(tag))
            .map(|(k, _)| *k)
    } else {
        return Err(RpcError::new(
            Code::InvalidArgument,
            "process: a pid or a tag is required",
        ));
    };
    found.ok_or_else(|| RpcError::new(Code::NotFound, "no such process (it ended, or never ran)"))
}

fn header<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// The user E2B's SDKs run as by default; nsbox runs everything as the sandbox's user.
const DEFAULT_USER: &str = "user";

/// The user a request asks for: `Authorization: Basic base64("NAME:")` (RPCs and files) or
/// `?username=` (files).
fn requested_user(req: &Request<Incoming>) -> Option<String> {
    use base64::Engine;
    if let Some(basic) = header(req, "authorization").and_then(|h| h.strip_prefix("Basic ")) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(basic.trim())
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&decoded).into_owned();
        return Some(text.split(':').next().unwrap_or("").to_string());
    }
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| *k == "username")
        .map(|(_, v)| super::decode(v))
}

/// An error of the plain HTTP endpoints (`/files`, `/health`), in envd's shape.
fn http_error(status: StatusCode, message: impl Into<String>) -> Response<RespBody> {
    json_response(
        status,
        &serde_json::json!({"code": status.as_u16(), "message": message.into()}),
    )
}

fn file_rpc_error(e: FileError) -> RpcError {
    RpcError::new(Code::from_status(e.status), e.message)
}

/// Reads what is left of a refused request's body (bounded in size and time): hyper closes a
/// connection whose request body was not read, and a client that reuses it from its pool (the
/// SDKs do) then fails with "error sending request" instead of reading the refusal.
async fn drain(req: Request<Incoming>) {
    let body = http_body_util::Limited::new(req.into_body(), 1 << 20);
    let _ = tokio::time::timeout(Duration::from_secs(5), body.collect()).await;
}

pub(super) async fn handle(
    server: Arc<Server>,
    req: Request<Incoming>,
    id: String,
) -> Response<RespBody> {
    let path = req.uri().path().to_string();
    let rpc = path.starts_with("/process.Process/") || path.starts_with("/filesystem.Filesystem/");
    let streaming = path == "/process.Process/Start" || path == "/process.Process/Connect";
    let fail = |e: RpcError| {
        if streaming {
            e.stream()
        } else if rpc {
            e.unary()
        } else {
            http_error(e.code.status(), e.message)
        }
    };
    let Some(owned) = server.registry.get(&id, None) else {
        // As E2B's proxy answers for a sandbox that is gone, for RPCs too: the SDKs turn this
        // into "not running" (`is_running()` False, SandboxNotRunningException).
        return http_error(
            StatusCode::BAD_GATEWAY,
            format!("The sandbox {id} was not found (killed, or its timeout passed)"),
        );
    };
    let mut paused = super::is_paused(&server, &owned.id);
    if let (
        true,
        OnExpiry::Pause {
            auto_resume: true,
            resume_secs,
        },
    ) = (paused, owned.on_expiry)
    {
        // E2B's auto-resume: a request to a paused sandbox thaws it, for another timeout.
        if server.set_frozen(&owned.id, false).await.is_ok() {
            paused = false;
            let _ = server.registry.set_expiry(
                &owned.id,
                Some(crate::session::state::now_secs() + resume_secs),
            );
        }
    }
    if paused {
        // As E2B's proxy answers for a paused sandbox: its processes are frozen, so nothing
        // in it answers until a connect or resume.
        drain(req).await;
        return http_error(
            StatusCode::BAD_GATEWAY,
            format!("The sandbox {id} is paused — Sandbox.connect() resumes it"),
        );
    }
    let token = header(&req, "x-access-token").unwrap_or("");
    if !super::token_matches(&owned.id, token.as_bytes()) {
        drain(req).await;
        return fail(RpcError::new(
            Code::Unauthenticated,
            "missing or wrong X-Access-Token for this sandbox (connect to the sandbox again to get one)",
        ));
    }
    let as_root = match requested_user(&req).as_deref() {
        None | Some(DEFAULT_USER) => false,
        Some("root") => true,
        Some(other) => {
            let message = format!("running as {other:?} is not served by nsbox: E2B's \"user\" is the sandbox's user, and \"root\" is uid 0 of the sandbox, without capabilities");
            drain(req).await;
            return fail(RpcError::new(Code::Unimplemented, message));
        }
    };
    let result = match (req.method().clone(), path.as_str()) {
        (Method::GET, "/health") => {
            let mut resp = Response::new(full(""));
            *resp.status_mut() = StatusCode::NO_CONTENT;
            return resp;
        }
        (Method::POST, "/process.Process/Start") => start(&server, &owned, req, as_root).await,
        (Method::POST, "/process.Process/Connect") => connect_process(&owned, req).await,
        (Method::POST, p)
            if matches!(
                p,
                "/process.Process/SendSignal"
                    | "/process.Process/SendInput"
                    | "/process.Process/CloseStdin"
                    | "/process.Process/List"
                    | "/process.Process/Update"
            ) =>
        {
            let method = p.trim_start_matches("/process.Process/").to_string();
            process_unary(&owned, req, &method).await
        }
        (Method::POST, p) if p.starts_with("/filesystem.Filesystem/") => {
            let method = p.trim_start_matches("/filesystem.Filesystem/").to_string();
            filesystem(&server, &owned, req, &method, as_root).await
        }
        (Method::GET, "/files") => return download(&server, &owned, req).await,
        (Method::POST, "/files") => return upload(&server, &owned, req, as_root).await,
        (_, p) if rpc => {
            // Read before answering, so the connection stays usable (see `drain`).
            let message = format!("{p} is not served by nsbox yet (docs/e2b.md lists what is)");
            drain(req).await;
            Err(RpcError::new(Code::Unimplemented, message))
        }
        (m, p) => {
            drain(req).await;
            return http_error(
                StatusCode::NOT_FOUND,
                format!("no {m} {p} in nsbox's in-sandbox API"),
            );
        }
    };
    result.unwrap_or_else(fail)
}

async fn read_body(req: Request<Incoming>, cap: usize) -> Result<Bytes, RpcError> {
    api::body_bytes(req, cap)
        .await
        .map_err(|e| RpcError::new(Code::from_status(e.status.as_u16()), e.message))
}

/// A unary call: its codec and `service/Method`.
struct Call {
    codec: Codec,
    method: String,
}

async fn unary_request(req: Request<Incoming>) -> Result<(serde_json::Value, Call), RpcError> {
    let codec = connect::codec(header(&req, "content-type"), false)?;
    let method = req.uri().path().trim_start_matches('/').to_string();
    let body = read_body(req, api::MAX_JSON).await?;
    let value = match codec {
        Codec::Proto => proto::request(&method, &body)?,
        Codec::Json => {
            let body: &[u8] = if body.is_empty() { b"{}" } else { &body };
            serde_json::from_slice(body).map_err(|e| {
                RpcError::new(
                    Code::InvalidArgument,
                    format!("the request is not JSON: {e}"),
                )
            })?
        }
    };
    Ok((value, Call { codec, method }))
}

fn unary_answer(call: &Call, value: serde_json::Value) -> Result<Response<RespBody>, RpcError> {
    let body = match call.codec {
        Codec::Json => Bytes::from(value.to_string()),
        Codec::Proto => Bytes::from(proto::answer(&call.method, &value)),
    };
    let mut resp = Response::new(full(body));
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(call.codec.content_type(false)),
    );
    Ok(resp)
}

async fn session(server: &Server, owned: &Owned) -> Result<SessionClient, RpcError> {
    server
        .client(&owned.id)
        .await
        .map_err(|e| RpcError::new(Code::Unavailable, e.message))
}

/// `process.Process/Start`: runs `cmd args…` in the sandbox and streams its events.
async fn start(
    server: &Arc<Server>,
    owned: &Owned,
    req: Request<Incoming>,
    as_root: bool,
) -> Result<Response<RespBody>, RpcError> {
    let (codec, keepalive, request) = stream_request(req, "process.Process/Start").await?;
    let encode = encoder(codec);
    let pty_size = match &request["pty"] {
        serde_json::Value::Null => None,
        pty => {
            let dim = |k: &str| {
                pty["size"][k]
                    .as_u64()
                    .filter(|n| (1..=u16::MAX as u64).contains(n))
                    .map(|n| n as u16)
            };
            match (dim("rows"), dim("cols")) {
                (Some(rows), Some(cols)) => Some((rows, cols)),
                _ => {
                    return Err(RpcError::new(
                        Code::InvalidArgument,
                        "pty.size: rows and cols from 1 (PTYs are served over the JSON codec)",
                    ))
                }
            }
        }
    };
    let process = &request["process"];
    let cmd = process["cmd"]
        .as_str()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| RpcError::new(Code::InvalidArgument, "process.cmd is required"))?;
    let mut argv = vec![cmd.to_string()];
    for arg in process["args"].as_array().into_iter().flatten() {
        argv.push(
            arg.as_str()
                .ok_or_else(|| RpcError::new(Code::InvalidArgument, "process.args: strings"))?
                .to_string(),
        );
    }
    let mut env = std::collections::BTreeMap::new();
    for (k, v) in process["envs"].as_object().into_iter().flatten() {
        let v = v
            .as_str()
            .ok_or_else(|| RpcError::new(Code::InvalidArgument, "process.envs: strings"))?;
        env.insert(k.clone(), v.to_string());
    }
    let cwd = process["cwd"]
        .as_str()
        .filter(|c| !c.is_empty())
        .map(str::to_string);
    let stdin_open = request["stdin"].as_bool() == Some(true);
    let config = serde_json::json!({
        "cmd": argv[0],
        "args": argv[1..],
        "envs": env,
        "cwd": cwd,
    });
    let prepared = CommandRequest {
        argv: Some(argv),
        cwd,
        env,
        stdin_open,
        ..Default::default()
    }
    .prepare()
    .map_err(|m| RpcError::new(Code::InvalidArgument, m))?;
    let record = server
        .store
        .read_record(&owned.id)
        .map_err(|e| RpcError::new(Code::Unavailable, e.to_string()))?;
    let mut prepared = api::personalised(owned, prepared);
    prepared.user = as_root.then_some((0, 0));
    if let Some((rows, cols)) = pty_size {
        let running = super::pty::start(&server.store, &record, prepared, rows, cols)
            .await
            .map_err(|m| RpcError::new(Code::FailedPrecondition, m))?;
        let tag = request["tag"].as_str().map(str::to_string);
        return Ok(pty_stream(
            owned, config, tag, running, keepalive, encode, codec,
        ));
    }
    let mut running = super::super::exec::start(&server.store, &record, prepared)
        .await
        .map_err(|e| {
            let e = api::start_error(e);
            let code = match e.code {
                "command_not_found" => Code::NotFound,
                "not_running" => Code::Unavailable,
                _ => Code::Internal,
            };
            RpcError::new(code, e.message)
        })?;
    let tag = request["tag"].as_str().map(str::to_string);
    let watchers = Arc::<Watchers>::default();
    let (pid, watcher) = register(Process {
        sandbox: owned.id.clone(),
        config,
        tag,
        signals: running.signals.clone(),
        stdin: running.stdin.clone(),
        pty: None,
        watchers: watchers.clone(),
    });
    tokio::spawn(async move {
        let mut registered = Some(Registered(pid));
        loop {
            let watched = match running.events.recv().await {
                Some(CommandEvent::Stdout(c)) | Some(CommandEvent::Stderr(c))
                    if c.data.is_none() && c.data_b64.is_none() =>
                {
                    continue
                }
                Some(CommandEvent::Stdout(c)) => Watched::Event(data_event("stdout", c)),
                Some(CommandEvent::Stderr(c)) => Watched::Event(data_event("stderr", c)),
                Some(CommandEvent::Truncated { .. }) => continue,
                Some(CommandEvent::Ended(o)) => {
                    let code = o.exit_code();
                    let status = match o.signal_name() {
                        Some(sig) => format!("signal: {sig}"),
                        None => format!("exit status {code}"),
                    };
                    let mut end =
                        serde_json::json!({"exitCode": code, "exited": true, "status": status});
                    if let Some(m) = o.message() {
                        end["error"] = m.into();
                    }
                    Watched::End(serde_json::json!({"event": {"end": end}}))
                }
                Some(CommandEvent::Failed(m)) => Watched::Failed(m),
                None => Watched::Failed("the command's events ended without its status".into()),
            };
            if watchers.deliver(watched, &mut registered).await {
                break;
            }
        }
    });
    Ok(watch_stream(pid, watcher, keepalive, encode, codec))
}

/// A running command's events, for every stream that watches it: the Start call's that made
/// it and each Connect's. Each event reaches every watcher in order (the slowest one paces the
/// command's output, as a pipe would); a watcher whose client went away is dropped. As under
/// E2B's daemon, the command goes on without watchers: it ends by itself, by a signal, or
/// with its sandbox.
#[derive(Default)]
struct Watchers(std::sync::Mutex<Vec<mpsc::Sender<Arc<Watched>>>>);

/// What a watcher hears: an event to forward, then the end or the reason there is none.
enum Watched {
    Event(serde_json::Value),
    End(serde_json::Value),
    Failed(String),
}

impl Watchers {
    fn subscribe(&self) -> mpsc::Receiver<Arc<Watched>> {
        let (tx, rx) = mpsc::channel(4);
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(tx);
        rx
    }

    /// Hands `watched` to every watcher; true when it was the last (the end, or why there
    /// is none). The command is forgotten (`registered`) before anyone hears of its end: a
    /// kill after `wait` finds nothing, and no Connect can subscribe to a command that has
    /// ended.
    async fn deliver(&self, watched: Watched, registered: &mut Option<Registered>) -> bool {
        let last = !matches!(watched, Watched::Event(_));
        if last {
            drop(registered.take());
        }
        self.publish(Arc::new(watched)).await;
        last
    }

    async fn publish(&self, watched: Arc<Watched>) {
        let senders = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for tx in senders {
            if tx.send(watched.clone()).await.is_err() {
                self.0
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .retain(|t| !t.same_channel(&tx));
            }
        }
    }
}

/// Enters a started command in the process table under a new pid, with its first watcher
/// (the Start call's stream).
fn register(process: Process) -> (u32, mpsc::Receiver<Arc<Watched>>) {
    let pid = NEXT_PID.fetch_add(1, Ordering::Relaxed);
    let watcher = process.watchers.subscribe();
    lock_processes().insert(pid, process);
    (pid, watcher)
}

/// The stream one watcher of command `pid` answers with: the start event, the command's
/// events from now on, keep-alives while it is quiet, and the end.
fn watch_stream(
    pid: u32,
    mut watcher: mpsc::Receiver<Arc<Watched>>,
    keepalive: Duration,
    encode: impl Fn(&serde_json::Value) -> Bytes + Send + 'static,
    codec: Codec,
) -> Response<RespBody> {
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    tokio::spawn(async move {
        let start = serde_json::json!({"event": {"start": {"pid": pid}}});
        if tx.send(encode(&start)).await.is_err() {
            return;
        }
        let mut tick = tokio::time::interval(keepalive);
        tick.tick().await;
        let failure = loop {
            let watched = tokio::select! {
                w = watcher.recv() => w,
                _ = tick.tick() => {
                    let ka = serde_json::json!({"event": {"keepalive": {}}});
                    if tx.send(encode(&ka)).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            let Some(watched) = watched else {
                break Some(RpcError::new(
                    Code::Unavailable,
                    "the command's events ended",
                ));
            };
            match &*watched {
                Watched::Event(v) => {
                    // A client gone: this watcher is dropped, the command goes on.
                    if tx.send(encode(v)).await.is_err() {
                        return;
                    }
                }
                Watched::End(v) => {
                    if tx.send(encode(v)).await.is_err() {
                        return;
                    }
                    break None;
                }
                Watched::Failed(m) => break Some(RpcError::new(Code::Unavailable, m.clone())),
            }
        };
        let _ = tx.send(connect::end_frame(failure.as_ref())).await;
    });
    let mut resp = Response::new(ChannelBody { rx }.boxed());
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(codec.content_type(true)),
    );
    resp
}

/// `process.Process/Connect`: another stream of a running command's events, from now on
/// (E2B's `commands.connect(pid)`).
async fn connect_process(
    owned: &Owned,
    req: Request<Incoming>,
) -> Result<Response<RespBody>, RpcError> {
    let (codec, keepalive, request) = stream_request(req, "process.Process/Connect").await?;
    let pid = select(&owned.id, &request["process"])?;
    // Under the table's lock: a command still listed has not published its end yet, so this
    // watcher hears it.
    let watcher = lock_processes()
        .get(&pid)
        .map(|p| p.watchers.subscribe())
        .ok_or_else(|| RpcError::new(Code::NotFound, "the process ended"))?;
    Ok(watch_stream(pid, watcher, keepalive, encoder(codec), codec))
}

/// A server-streaming call's request: its codec, the keep-alive period the client asks for
/// and its message (as protobuf-JSON).
async fn stream_request(
    req: Request<Incoming>,
    method: &str,
) -> Result<(Codec, Duration, serde_json::Value), RpcError> {
    let codec = connect::codec(header(&req, "content-type"), true)?;
    let keepalive = keepalive_of(&req);
    let body = read_body(req, api::MAX_JSON).await?;
    let message = connect::unwrap_request(&body)?;
    let request = match codec {
        Codec::Proto => proto::request(method, message)?,
        Codec::Json => serde_json::from_slice(message).map_err(|e| {
            RpcError::new(
                Code::InvalidArgument,
                format!("the request is not JSON: {e}"),
            )
        })?,
    };
    Ok((codec, keepalive, request))
}

/// How a stream's events are written in `codec`.
fn encoder(codec: Codec) -> impl Fn(&serde_json::Value) -> Bytes + Send + 'static {
    move |v: &serde_json::Value| match codec {
        Codec::Json => connect::frame(v),
        Codec::Proto => connect::frame_bytes(&proto::event(v)),
    }
}

/// The keep-alive period the client asks for (`Keepalive-Ping-Interval`, seconds).
fn keepalive_of(req: &Request<Incoming>) -> Duration {
    header(req, "keepalive-ping-interval")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|s| *s > 0)
        .map_or(DEFAULT_KEEPALIVE, Duration::from_secs)
}

/// A command on a terminal: its output as `pty` data, then its end, to each watcher.
fn pty_stream(
    owned: &Owned,
    config: serde_json::Value,
    tag: Option<String>,
    mut running: super::pty::PtyCommand,
    keepalive: Duration,
    encode: impl Fn(&serde_json::Value) -> Bytes + Send + 'static,
    codec: Codec,
) -> Response<RespBody> {
    use super::pty::{PtyControl, PtyEvent};
    use base64::Engine;
    // Signals go to the terminal's command through its control channel.
    let (signals, mut signal_rx) = mpsc::channel::<i32>(4);
    let control = running.control.clone();
    tokio::spawn(async move {
        while let Some(s) = signal_rx.recv().await {
            if control.send(PtyControl::Signal(s)).await.is_err() {
                break;
            }
        }
    });
    let watchers = Arc::<Watchers>::default();
    let (pid, watcher) = register(Process {
        sandbox: owned.id.clone(),
        config,
        tag,
        signals,
        stdin: None,
        pty: Some(running.control.clone()),
        watchers: watchers.clone(),
    });
    tokio::spawn(async move {
        let mut registered = Some(Registered(pid));
        loop {
            let watched = match running.events.recv().await {
                Some(PtyEvent::Data(bytes)) => {
                    let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
                    Watched::Event(serde_json::json!({"event": {"data": {"pty": b64}}}))
                }
                Some(PtyEvent::Ended { code, signal }) => {
                    let status = match signal {
                        Some(s) => format!("signal: {s}"),
                        None => format!("exit status {code}"),
                    };
                    Watched::End(
                        serde_json::json!({"event": {"end": {"exitCode": code, "exited": true, "status": status}}}),
                    )
                }
                Some(PtyEvent::Failed(m)) => Watched::Failed(m),
                None => Watched::Failed("the terminal's events ended without its status".into()),
            };
            if watchers.deliver(watched, &mut registered).await {
                break;
            }
        }
    });
    watch_stream(pid, watcher, keepalive, encode, codec)
}

/// `SendSignal`, `SendInput`, `CloseStdin` and `List` of `process.Process`.
async fn process_unary(
    owned: &Owned,
    req: Request<Incoming>,
    method: &str,
) -> Result<Response<RespBody>, RpcError> {
    use base64::Engine;
    let (request, call) = unary_request(req).await?;
    if method == "List" {
        let table = lock_processes();
        let mut rows: Vec<(u32, serde_json::Value)> = table
            .iter()
            .filter(|(_, p)| p.sandbox == owned.id)
            .map(|(pid, p)| {
                let mut info = serde_json::json!({"config": p.config, "pid": pid});
                if let Some(tag) = &p.tag {
                    info["tag"] = tag.clone().into();
                }
                (*pid, info)
            })
            .collect();
        rows.sort_by_key(|(pid, _)| *pid);
        let processes: Vec<serde_json::Value> = rows.into_iter().map(|(_, v)| v).collect();
        return unary_answer(&call, serde_json::json!({ "processes": processes }));
    }
    let pid = select(&owned.id, &request["process"])?;
    let (signals, stdin, pty) = {
        let table = lock_processes();
        let p = table
            .get(&pid)
            .ok_or_else(|| RpcError::new(Code::NotFound, "the process ended"))?;
        (p.signals.clone(), p.stdin.clone(), p.pty.clone())
    };
    match method {
        "SendSignal" => {
            let signal = match request["signal"].as_str() {
                Some("SIGNAL_SIGKILL") => libc::SIGKILL,
                Some("SIGNAL_SIGTERM") => libc::SIGTERM,
                _ => match request["signal"].as_i64() {
                    Some(9) => libc::SIGKILL,
                    Some(15) => libc::SIGTERM,
                    _ => {
                        return Err(RpcError::new(
                            Code::InvalidArgument,
                            "signal: SIGNAL_SIGKILL or SIGNAL_SIGTERM",
                        ))
                    }
                },
            };
            signals
                .send(signal)
                .await
                .map_err(|_| RpcError::new(Code::NotFound, "the process ended"))?;
        }
        "Update" => {
            let pty = pty.ok_or_else(|| {
                RpcError::new(Code::FailedPrecondition, "the process has no terminal")
            })?;
            let dim = |k: &str| {
                request["pty"]["size"][k]
                    .as_u64()
                    .filter(|n| (1..=u16::MAX as u64).contains(n))
                    .map(|n| n as u16)
            };
            let (Some(rows), Some(cols)) = (dim("rows"), dim("cols")) else {
                return Err(RpcError::new(
                    Code::InvalidArgument,
                    "pty.size: rows and cols from 1",
                ));
            };
            pty.send(super::pty::PtyControl::Resize { rows, cols })
                .await
                .map_err(|_| RpcError::new(Code::NotFound, "the process ended"))?;
        }
        "SendInput" if request["input"]["pty"].is_string() => {
            let pty = pty.ok_or_else(|| {
                RpcError::new(Code::FailedPrecondition, "the process has no terminal")
            })?;
            let data = base64::engine::general_purpose::STANDARD
                .decode(request["input"]["pty"].as_str().unwrap_or(""))
                .map_err(|e| RpcError::new(Code::InvalidArgument, format!("input.pty: {e}")))?;
            pty.send(super::pty::PtyControl::Input(data))
                .await
                .map_err(|_| RpcError::new(Code::NotFound, "the process ended"))?;
        }
        "SendInput" | "CloseStdin" => {
            use tokio::io::AsyncWriteExt;
            let pipe = stdin.ok_or_else(|| {
                RpcError::new(
                    Code::FailedPrecondition,
                    "the process was started without stdin (start it with stdin=True)",
                )
            })?;
            let mut guard = pipe.lock().await;
            if method == "CloseStdin" {
                *guard = None;
            } else {
                let data = base64::engine::general_purpose::STANDARD
                    .decode(request["input"]["stdin"].as_str().unwrap_or(""))
                    .map_err(|e| {
                        RpcError::new(Code::InvalidArgument, format!("input.stdin: {e}"))
                    })?;
                let w = guard.as_mut().ok_or_else(|| {
                    RpcError::new(Code::FailedPrecondition, "the process's stdin was closed")
                })?;
                w.write_all(&data)
                    .await
                    .map_err(|e| RpcError::new(Code::FailedPrecondition, e.to_string()))?;
            }
        }
        other => {
            return Err(RpcError::new(
                Code::Unimplemented,
                format!("process.Process/{other} is not served"),
            ))
        }
    }
    unary_answer(&call, serde_json::json!({}))
}

fn data_event(stream: &str, chunk: crate::relay::Chunk) -> serde_json::Value {
    use base64::Engine;
    let mut bytes = Vec::new();
    api::push_chunk(&mut bytes, chunk);
    let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
    serde_json::json!({"event": {"data": {stream: b64}}})
}

/// The `path` field of a request, required.
fn path_of(request: &serde_json::Value, field: &str) -> Result<String, RpcError> {
    request[field]
        .as_str()
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .ok_or_else(|| RpcError::new(Code::InvalidArgument, format!("{field} is required")))
}

type FsCall = Box<dyn FnOnce(&SessionClient) -> Result<serde_json::Value, FileError> + Send>;

async fn filesystem(
    server: &Server,
    owned: &Owned,
    req: Request<Incoming>,
    method: &str,
    as_root: bool,
) -> Result<Response<RespBody>, RpcError> {
    let (request, call) = unary_request(req).await?;
    let client = session(server, owned).await?;
    // Each method makes one blocking call with the session.
    let run = |f: FsCall| async move {
        tokio::task::spawn_blocking(move || f(&client))
            .await
            .map_err(|e| RpcError::new(Code::Internal, e.to_string()))?
            .map_err(file_rpc_error)
    };
    let answer = match method {
        "Stat" => {
            let path = path_of(&request, "path")?;
            let st = run(Box::new(move |c| files::stat(c, &path))).await?;
            serde_json::json!({"entry": entry_info(&st, None)})
        }
        "ListDir" => {
            let path = path_of(&request, "path")?;
            // envd's depth: 1 is the directory's own entries, each level more goes one
            // directory further (symbolic links are listed, not followed).
            let depth = match &request["depth"] {
                serde_json::Value::Null => 1,
                v => v
                    .as_u64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                    .filter(|d| *d >= 1)
                    .ok_or_else(|| {
                        RpcError::new(Code::InvalidArgument, "depth: a whole number from 1")
                    })?,
            };
            let entries = run(Box::new(move |c| list_tree(c, &path, depth))).await?;
            serde_json::json!({ "entries": entries })
        }
        "MakeDir" => {
            let path = path_of(&request, "path")?;
            let st = run(Box::new(move |c| {
                // envd answers "already exists" for a path that is there (the SDK's
                // make_dir then returns False).
                if files::stat(c, &path).is_ok() {
                    return Err(FileError {
                        status: 409,
                        code: "exists",
                        message: format!("{path} already exists"),
                    });
                }
                files::mkdir(c, &path, as_root)?;
                files::stat(c, &path)
            }))
            .await?;
            serde_json::json!({"entry": entry_info(&st, None)})
        }
        "Move" => {
            let source = path_of(&request, "source")?;
            let destination = path_of(&request, "destination")?;
            let st = run(Box::new(move |c| {
                files::rename(c, &source, &destination)?;
                files::stat(c, &destination)
            }))
            .await?;
            serde_json::json!({"entry": entry_info(&st, None)})
        }
        "CreateWatcher" => {
            let path = path_of(&request, "path")?;
            let recursive = request["recursive"].as_bool() == Some(true);
            let client = session(server, owned).await?;
            let (dir, inside) =
                tokio::task::spawn_blocking(move || files::open_dir(&client, &path))
                    .await
                    .map_err(|e| RpcError::new(Code::Internal, e.to_string()))?
                    .map_err(file_rpc_error)?;
            let sid = owned.id.clone();
            let live: std::collections::HashSet<String> = server
                .registry
                .list(None)
                .into_iter()
                .map(|o| o.id)
                .collect();
            // Blocking: a recursive watch reads the whole tree.
            let id = tokio::task::spawn_blocking(move || {
                let alive = |id: &str| live.contains(id);
                super::watch::create(&sid, dir, recursive.then_some(inside), &alive)
            })
            .await
            .map_err(|e| RpcError::new(Code::Internal, e.to_string()))??;
            return unary_answer(&call, serde_json::json!({ "watcherId": id }));
        }
        "GetWatcherEvents" => {
            let id = path_of(&request, "watcherId")?;
            let store = server.store.clone();
            let sid = owned.id.clone();
            let events = tokio::task::spawn_blocking(move || {
                let open = |path: &std::path::Path| {
                    let client = SessionClient::connect(&store, &sid).ok()?;
                    files::open_dir(&client, path.to_str()?)
                        .ok()
                        .map(|(fd, _)| fd)
                };
                super::watch::events(&sid, &id, &open)
            })
            .await
            .map_err(|e| RpcError::new(Code::Internal, e.to_string()))??;
            return unary_answer(&call, serde_json::json!({ "events": events }));
        }
        "RemoveWatcher" => {
            let id = path_of(&request, "watcherId")?;
            super::watch::remove(&owned.id, &id)?;
            return unary_answer(&call, serde_json::json!({}));
        }
        "Remove" => {
            let path = path_of(&request, "path")?;
            run(Box::new(move |c| {
                files::remove(c, &path).map(|()| serde_json::json!({}))
            }))
            .await?
        }
        other => {
            return Err(RpcError::new(
                Code::Unimplemented,
                format!("filesystem.Filesystem/{other} is not served by nsbox yet"),
            ))
        }
    };
    unary_answer(&call, answer)
}

/// The entries under `path` down to `depth` levels, each directory's entries after it (as
/// a walk lists them), at most `MAX_LIST` in all: a bigger tree is refused, not cut short.
fn list_tree(
    client: &SessionClient,
    path: &str,
    depth: u64,
) -> Result<serde_json::Value, FileError> {
    fn walk(
        client: &SessionClient,
        dir: &str,
        level: u64,
        depth: u64,
        out: &mut Vec<serde_json::Value>,
    ) -> Result<(), FileError> {
        let listing = files::list(client, dir, MAX_LIST + 1 - out.len().min(MAX_LIST))?;
        let here = listing["path"].as_str().unwrap_or("/").to_string();
        for e in listing["entries"].as_array().into_iter().flatten() {
            let info = entry_info(e, Some(&here));
            let sub = info["path"].as_str().unwrap_or("").to_string();
            out.push(info);
            if out.len() > MAX_LIST || listing["truncated"].as_bool() == Some(true) {
                return Err(FileError {
                    status: 400,
                    code: "too_many",
                    message: format!(
                        "more than {MAX_LIST} entries under {path:?}: list a smaller depth",
                        path = here
                    ),
                });
            }
            if level < depth && e["type"].as_str() == Some("directory") {
                walk(client, &sub, level + 1, depth, out)?;
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(client, path, 1, depth, &mut out)?;
    Ok(serde_json::Value::Array(out))
}

/// nsbox's stat JSON as E2B's `EntryInfo` (protobuf JSON: camelCase, int64 as a string,
/// enums by name). `dir`: the listed directory, for entries that carry only a name.
fn entry_info(st: &serde_json::Value, dir: Option<&str>) -> serde_json::Value {
    let name = st["name"].as_str().unwrap_or("");
    let path = match (st["path"].as_str(), dir) {
        (Some(p), _) => p.to_string(),
        (None, Some(d)) => format!("{}/{name}", d.trim_end_matches('/')),
        (None, None) => name.to_string(),
    };
    let kind = st["type"].as_str().unwrap_or("");
    let file_type = match kind {
        "file" => "FILE_TYPE_FILE",
        "directory" => "FILE_TYPE_DIRECTORY",
        "symlink" => "FILE_TYPE_SYMLINK",
        _ => "FILE_TYPE_UNSPECIFIED",
    };
    let mode = st["mode"]
        .as_str()
        .and_then(|m| u32::from_str_radix(m, 8).ok())
        .unwrap_or(0);
    let owner = |id: &serde_json::Value| match id.as_u64() {
        Some(0) => "root".to_string(),
        Some(n) => n.to_string(),
        None => String::new(),
    };
    serde_json::json!({
        "name": name,
        "type": file_type,
        "path": path,
        "size": st["size"].as_u64().unwrap_or(0).to_string(),
        "mode": mode,
        "permissions": permissions(kind, mode),
        "owner": owner(&st["uid"]),
        "group": owner(&st["gid"]),
        "modifiedTime": crate::units::rfc3339(st["mtime"].as_i64().unwrap_or(0).max(0) as u64),
    })
}

/// `ls -l` style permissions ("drwxr-xr-x").
fn permissions(kind: &str, mode: u32) -> String {
    let mut s = String::with_capacity(10);
    s.push(match kind {
        "directory" => 'd',
        "symlink" => 'l',
        _ => '-',
    });
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

fn query_path(req: &Request<Incoming>) -> Option<String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| *k == "path")
        .map(|(_, v)| super::decode(v))
        .filter(|p| !p.is_empty())
}

fn file_http_error(e: FileError) -> Response<RespBody> {
    http_error(
        StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST),
        e.message,
    )
}

/// `GET /files?path=`: a file's bytes.
async fn download(server: &Server, owned: &Owned, req: Request<Incoming>) -> Response<RespBody> {
    let Some(path) = query_path(&req) else {
        return http_error(StatusCode::BAD_REQUEST, "the `path` parameter is required");
    };
    let client = match session(server, owned).await {
        Ok(c) => c,
        Err(e) => return http_error(StatusCode::BAD_GATEWAY, e.message),
    };
    let data =
        tokio::task::spawn_blocking(move || files::read(&client, &path, MAX_FILE_READ)).await;
    match data {
        Ok(Ok(bytes)) => {
            let mut resp = Response::new(full(bytes));
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            resp
        }
        Ok(Err(e)) => file_http_error(e),
        Err(e) => http_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `POST /files`: an octet-stream body to `?path=`, or multipart/form-data parts (each to
/// `?path=` when one part is sent, else to its filename). Answers E2B's `[WriteInfo]`.
async fn upload(
    server: &Server,
    owned: &Owned,
    req: Request<Incoming>,
    as_root: bool,
) -> Response<RespBody> {
    let query = query_path(&req);
    let content_type = header(&req, "content-type").unwrap_or("").to_string();
    if header(&req, "content-encoding").is_some_and(|e| e != "identity") {
        return http_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "compressed uploads are not served by nsbox yet",
        );
    }
    let body = match api::body_bytes(req, server.options.max_body).await {
        Ok(b) => b,
        Err(e) => return http_error(e.status, e.message),
    };
    let mut writes: Vec<(String, Vec<u8>)> = Vec::new();
    if content_type.starts_with("multipart/form-data") {
        let parts = match multipart(&content_type, &body) {
            Ok(p) => p,
            Err(m) => return http_error(StatusCode::BAD_REQUEST, m),
        };
        let single = parts.len() == 1;
        for (filename, data) in parts {
            let path = match (&query, filename) {
                (Some(q), _) if single => q.clone(),
                (_, Some(f)) if !f.is_empty() => f,
                _ => return http_error(StatusCode::BAD_REQUEST, "a part without a file name"),
            };
            writes.push((path, data));
        }
    } else {
        let Some(path) = query else {
            return http_error(StatusCode::BAD_REQUEST, "the `path` parameter is required");
        };
        writes.push((path, body.to_vec()));
    }
    let client = match session(server, owned).await {
        Ok(c) => c,
        Err(e) => return http_error(StatusCode::BAD_GATEWAY, e.message),
    };
    let done = tokio::task::spawn_blocking(move || {
        let mut infos = Vec::new();
        for (path, data) in writes {
            files::write(&client, &path, &data, as_root)?;
            let st = files::stat(&client, &path)?;
            infos.push(serde_json::json!({
                "name": st["name"],
                "type": "file",
                "path": st["path"],
            }));
        }
        Ok::<_, FileError>(infos)
    })
    .await;
    match done {
        Ok(Ok(infos)) => json_response(StatusCode::OK, &serde_json::Value::Array(infos)),
        Ok(Err(e)) => file_http_error(e),
        Err(e) => http_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// A part of a multipart body: its file name, its content.
type Part = (Option<String>, Vec<u8>);

/// The parts of a multipart/form-data body.
fn multipart(content_type: &str, body: &[u8]) -> Result<Vec<Part>, String> {
    let boundary = content_type
        .split(';')
        .map(str::trim)
        .find_map(|p| p.strip_prefix("boundary="))
        .map(|b| b.trim_matches('"'))
        .filter(|b| !b.is_empty())
        .ok_or("multipart/form-data without a boundary")?;
    let delimiter = format!("--{boundary}");
    let d = delimiter.as_bytes();
    let find = |hay: &[u8], needle: &[u8], from: usize| {
        hay.get(from..)
            .and_then(|h| h.windows(needle.len()).position(|w| w == needle))
            .map(|i| i + from)
    };
    let mut parts = Vec::new();
    let mut at = find(body, d, 0).ok_or("no multipart boundary in the body")? + d.len();
    loop {
        if body.get(at..at + 2) == Some(b"--") {
            return Ok(parts);
        }
        // Past the CRLF after the boundary, the part's headers end at a blank line.
        let start = at + 2;
        let headers_end =
            find(body, b"\r\n\r\n", start).ok_or("a multipart part without headers")?;
        let headers = String::from_utf8_lossy(&body[start..headers_end]).into_owned();
        let content_start = headers_end + 4;
        let next = find(body, d, content_start).ok_or("a multipart body without its end")?;
        // The content ends before the CRLF that precedes the next boundary.
        let content_end = next
            .checked_sub(2)
            .filter(|e| *e >= content_start)
            .ok_or("a malformed multipart part")?;
        let filename = headers
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("content-disposition"))
            .and_then(|l| {
                l.split(';')
                    .map(str::trim)
                    .find_map(|p| p.strip_prefix("filename="))
                    .map(|f| f.trim_matches('"').to_string())
            });
        parts.push((filename, body[content_start..content_end].to_vec()));
        at = next + d.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_parts_and_names() {
        let body = b"--XX\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a/b.txt\"\r\nContent-Type: application/octet-stream\r\n\r\nline1\r\nline2\r\n--XX\r\nContent-Disposition: form-data; name=\"file\"; filename=\"c\"\r\n\r\n\r\n--XX--\r\n";
        let parts = multipart("multipart/form-data; boundary=XX", body).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].0.as_deref(), Some("a/b.txt"));
        assert_eq!(parts[0].1, b"line1\r\nline2");
        assert_eq!(parts[1].1, b"");
        assert!(multipart("multipart/form-data", body).is_err());
        assert!(multipart("multipart/form-data; boundary=XX", b"--XX\r\nnope").is_err());
    }

    #[test]
    fn entries_look_like_envd_entries() {
        let st = serde_json::json!({"name": "a.txt", "type": "file", "size": 5, "mode": "0644", "mtime": 0, "uid": 0, "gid": 1000});
        let e = entry_info(&st, Some("/sandbox/"));
        assert_eq!(e["path"], "/sandbox/a.txt");
        assert_eq!(e["type"], "FILE_TYPE_FILE");
        assert_eq!(e["size"], "5");
        assert_eq!(e["permissions"], "-rw-r--r--");
        assert_eq!(e["owner"], "root");
        assert_eq!(e["group"], "1000");
    }
}
