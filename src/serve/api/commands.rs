//! Commands through the API: running (streamed, waited for, detached), listing, signals,
//! stdin, and the events of detached commands.

use super::*;

/// What the server knows of a running command.
#[derive(Debug, Clone)]
pub(super) struct RunningInfo {
    pub(super) sandbox: String,
    pub(super) argv: Vec<String>,
    pub(super) started_ms: u128,
    pub(super) signals: mpsc::Sender<i32>,
    pub(super) stdin: Option<crate::serve::exec::StdinPipe>,
}

pub(super) fn unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default()
}

/// A signal by name ("TERM", "SIGKILL") or number.
pub(super) fn parse_signal(v: &serde_json::Value) -> Option<i32> {
    if let Some(n) = v.as_i64() {
        return i32::try_from(n).ok().filter(|n| (1..=64).contains(n));
    }
    let name = v.as_str()?.to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    Some(match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "TERM" => libc::SIGTERM,
        "CONT" => libc::SIGCONT,
        "STOP" => libc::SIGSTOP,
        _ => return None,
    })
}

/// One event as a line of the `--json` stream.
pub(super) fn event_line(event: CommandEvent) -> Vec<u8> {
    match event {
        CommandEvent::Stdout(c) => Event::Stdout(c).to_line(),
        CommandEvent::Stderr(c) => Event::Stderr(c).to_line(),
        CommandEvent::Truncated { limit } => Event::Truncated { limit }.to_line(),
        CommandEvent::Ended(o) => Event::Exit {
            code: o.exit_code(),
            signal: o.signal_name(),
            oom: o.oom,
            timeout: matches!(o.ending, crate::sandbox::supervisor::Ending::TimedOut(_)),
            truncated: o.truncated,
            duration_ms: o.duration.as_secs_f64() * 1000.0,
            usage: o.usage,
        }
        .to_line(),
        CommandEvent::Failed(message) => Event::Error {
            phase: "run",
            message,
            hint: None,
            code: crate::exit::NSBOX_FAILED,
        }
        .to_line(),
    }
}

/// An event line as sent: as is (NDJSON), or as a server-sent event.
pub(super) fn frame(line: Vec<u8>, sse: bool) -> Bytes {
    if !sse {
        return Bytes::from(line);
    }
    let kind = serde_json::from_slice::<serde_json::Value>(&line)
        .ok()
        .and_then(|v| v["type"].as_str().map(str::to_string))
        .unwrap_or_default();
    let data = String::from_utf8_lossy(&line);
    Bytes::from(format!("event: {kind}\ndata: {}\n\n", data.trim_end()))
}

/// Output a detached command keeps for clients that attach (more: dropped, with one
/// `truncated` event).
pub(super) const DETACHED_BUFFER: usize = 4 << 20;

/// How long a detached command's events are kept after it ended.
pub(super) const DETACHED_KEEP: Duration = Duration::from_secs(600);

/// A detached command's events, for clients that attach (`GET .../commands/{cid}/events`).
pub(super) struct Detached {
    pub(super) sandbox: String,
    pub(super) log: std::sync::Mutex<DetachedLog>,
    /// Bumped on every new line (attached clients wait on it).
    pub(super) progress: tokio::sync::watch::Sender<usize>,
}

#[derive(Default)]
pub(super) struct DetachedLog {
    pub(super) lines: Vec<Bytes>,
    pub(super) bytes: usize,
    pub(super) truncated: bool,
    pub(super) done: bool,
}

impl Detached {
    pub(super) fn new(sandbox: &str) -> Detached {
        Detached {
            sandbox: sandbox.to_string(),
            log: std::sync::Mutex::new(DetachedLog::default()),
            progress: tokio::sync::watch::channel(0).0,
        }
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, DetachedLog> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn push(&self, line: Bytes) {
        let mut log = self.lock();
        let output =
            line.starts_with(b"{\"type\":\"stdout\"") || line.starts_with(b"{\"type\":\"stderr\"");
        if output && log.bytes + line.len() > DETACHED_BUFFER {
            if !log.truncated {
                log.truncated = true;
                let limit = DETACHED_BUFFER as u64;
                log.lines
                    .push(Bytes::from(Event::Truncated { limit }.to_line()));
            }
        } else {
            log.bytes += line.len();
            log.lines.push(line);
        }
        let n = log.lines.len();
        drop(log);
        self.progress.send_replace(n);
    }

    pub(super) fn finish(&self) {
        let n = {
            let mut log = self.lock();
            log.done = true;
            log.lines.len()
        };
        // A change even when no line was added, so waiting clients see the end.
        self.progress.send_replace(n + 1);
    }
}

/// A command with the env and secrets a pooled sandbox received at claim time (the
/// request's own env wins).
pub(in crate::serve) fn personalised(
    owned: &Owned,
    mut cmd: crate::serve::exec::PreparedCommand,
) -> crate::serve::exec::PreparedCommand {
    if owned.env.is_empty() && owned.secrets.is_empty() {
        return cmd;
    }
    let mut env: Vec<(String, String)> = owned.env.clone();
    env.extend(owned.secrets.iter().cloned());
    env.append(&mut cmd.env);
    cmd.env = env;
    cmd.secrets
        .extend(owned.secrets.iter().map(|(_, v)| v.clone()));
    cmd
}

pub(in crate::serve) fn start_error(e: StartError) -> ApiError {
    match e {
        StartError::Exec(f) => {
            let mut e = ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                if f.code == crate::exit::NOT_FOUND {
                    "command_not_found"
                } else {
                    "exec_failed"
                },
                f.message,
            );
            e.hint = Some(format!("exit code {}", f.code));
            e.exit_code = Some(f.code);
            e
        }
        StartError::NotRunning(m) => ApiError::new(StatusCode::CONFLICT, "not_running", m),
        StartError::Refused(m) => ApiError::new(StatusCode::CONFLICT, "refused", m),
        StartError::Io(m) => ApiError::internal(m),
    }
}

pub(super) fn chunk_len(chunk: &crate::relay::Chunk) -> u64 {
    chunk.data.as_ref().map_or(0, |d| d.len() as u64)
        + chunk
            .data_b64
            .as_ref()
            .map_or(0, |d| d.len() as u64 * 3 / 4)
}

pub(in crate::serve) fn push_chunk(out: &mut Vec<u8>, chunk: crate::relay::Chunk) {
    use base64::Engine;
    if let Some(text) = chunk.data {
        out.extend_from_slice(text.as_bytes());
    } else if let Some(b64) = chunk.data_b64 {
        if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(b64) {
            out.extend_from_slice(&bytes);
        }
    }
}

/// Counts a running command (shutdown waits for them) and keeps it listed while it runs.
pub(super) struct CommandGuard(pub(super) Arc<Server>, pub(super) String);

impl CommandGuard {
    pub(super) fn new(server: Arc<Server>, command_id: String) -> CommandGuard {
        server.commands.fetch_add(1, Ordering::SeqCst);
        CommandGuard(server, command_id)
    }
}

impl Drop for CommandGuard {
    fn drop(&mut self) {
        self.0.commands.fetch_sub(1, Ordering::SeqCst);
        self.0
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.1);
    }
}

/// 12 random hex digits.
pub(super) fn new_command_id() -> String {
    let mut bytes = [0u8; 6];
    let _ = getrandom::fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Server {
    pub(super) fn count_output(&self, event: &CommandEvent) {
        if let CommandEvent::Stdout(c) | CommandEvent::Stderr(c) = event {
            self.metrics
                .bytes_relayed
                .fetch_add(chunk_len(c), Ordering::Relaxed);
        }
    }

    /// Runs a create request's setup script in a sandbox claimed from the pool; if it fails
    /// the sandbox is deleted and the create fails, as `nsbox create --setup` does.
    pub(super) async fn claim_setup(&self, owned: &Owned, script: String) -> Result<(), ApiError> {
        let cmd = CommandRequest {
            shell: Some(script),
            ..Default::default()
        }
        .prepare()
        .map_err(|m| ApiError::new(StatusCode::BAD_REQUEST, "invalid", m))?;
        let result = self.run_collected(owned, cmd).await;
        let failure = match result {
            Ok((code, _, stderr)) if code != 0 => Some(format!(
                "the setup script failed (exit {code}): {}",
                String::from_utf8_lossy(&stderr).trim_end()
            )),
            Ok(_) => None,
            Err(e) => Some(format!("the setup script could not run: {}", e.message)),
        };
        if let Some(message) = failure {
            let _ = self.delete(&owned.id).await;
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "setup_failed",
                message,
            ));
        }
        Ok(())
    }

    /// Runs a command to its end: (exit code, stdout, stderr).
    pub(super) async fn run_collected(
        &self,
        owned: &Owned,
        cmd: crate::serve::exec::PreparedCommand,
    ) -> Result<(i32, Vec<u8>, Vec<u8>), ApiError> {
        let record = self
            .store
            .read_record(&owned.id)
            .map_err(|e| ApiError::new(StatusCode::CONFLICT, "not_running", e.to_string()))?;
        let cmd = personalised(owned, cmd);
        let mut running = crate::serve::exec::start(&self.store, &record, cmd)
            .await
            .map_err(start_error)?;
        self.metrics.commands.fetch_add(1, Ordering::Relaxed);
        let (mut out, mut err, mut code) = (Vec::new(), Vec::new(), crate::exit::NSBOX_FAILED);
        while let Some(event) = running.events.recv().await {
            match event {
                CommandEvent::Stdout(c) => push_chunk(&mut out, c),
                CommandEvent::Stderr(c) => push_chunk(&mut err, c),
                CommandEvent::Ended(o) => code = o.exit_code(),
                CommandEvent::Truncated { .. } | CommandEvent::Failed(_) => {}
            }
        }
        Ok((code, out, err))
    }

    pub(super) async fn run_command(
        self: &Arc<Self>,
        id: &str,
        body: CommandRequest,
        wait: bool,
        sse: bool,
        detach: bool,
    ) -> Result<Response<RespBody>, ApiError> {
        let cmd = body
            .prepare()
            .map_err(|m| ApiError::new(StatusCode::BAD_REQUEST, "invalid", m))?;
        let record = self
            .store
            .read_record(id)
            .map_err(|e| ApiError::new(StatusCode::CONFLICT, "not_running", e.to_string()))?;
        let owned = self
            .registry
            .get(id, None)
            .ok_or_else(|| ApiError::not_found(id))?;
        let cmd = personalised(&owned, cmd);
        let argv = cmd.argv.clone();
        let mut running = crate::serve::exec::start(&self.store, &record, cmd)
            .await
            .map_err(start_error)?;
        self.metrics.commands.fetch_add(1, Ordering::Relaxed);
        let command_id = new_command_id();
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                command_id.clone(),
                RunningInfo {
                    sandbox: id.to_string(),
                    argv: argv.clone(),
                    started_ms: unix_ms(),
                    signals: running.signals.clone(),
                    stdin: running.stdin.clone(),
                },
            );
        let guard = CommandGuard::new(self.clone(), command_id.clone());
        if wait {
            let mut stdout = Vec::new();
            let mut stderr = Vec::new();
            let mut result = serde_json::json!({});
            while let Some(event) = running.events.recv().await {
                match event {
                    CommandEvent::Stdout(c) => {
                        self.metrics
                            .bytes_relayed
                            .fetch_add(chunk_len(&c), Ordering::Relaxed);
                        push_chunk(&mut stdout, c)
                    }
                    CommandEvent::Stderr(c) => {
                        self.metrics
                            .bytes_relayed
                            .fetch_add(chunk_len(&c), Ordering::Relaxed);
                        push_chunk(&mut stderr, c)
                    }
                    CommandEvent::Truncated { .. } => {}
                    CommandEvent::Ended(o) => {
                        result = serde_json::json!({
                            "exit_code": o.exit_code(),
                            "signal": o.signal_name(),
                            "oom": o.oom,
                            "timeout": matches!(o.ending, crate::sandbox::supervisor::Ending::TimedOut(_)),
                            "truncated": o.truncated,
                            "duration_ms": o.duration.as_secs_f64() * 1000.0,
                            "message": o.message(),
                        })
                    }
                    CommandEvent::Failed(m) => {
                        return Err(ApiError::new(StatusCode::CONFLICT, "not_running", m))
                    }
                }
            }
            drop(guard);
            result["command_id"] = command_id.clone().into();
            result["stdout"] = String::from_utf8_lossy(&stdout).into_owned().into();
            result["stderr"] = String::from_utf8_lossy(&stderr).into_owned().into();
            return Ok(json_response(StatusCode::OK, &result));
        }
        let start = Event::Start {
            id: &record.id,
            profile: &record.profile,
            network: &record.network,
            labels: None,
        }
        .to_line();
        if detach {
            let entry = Arc::new(Detached::new(id));
            self.detached
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(command_id.clone(), entry.clone());
            let server = self.clone();
            let cid = command_id.clone();
            tokio::spawn(async move {
                entry.push(Bytes::from(start));
                while let Some(event) = running.events.recv().await {
                    server.count_output(&event);
                    entry.push(Bytes::from(event_line(event)));
                }
                entry.finish();
                drop(guard);
                // Kept a while for a client that attaches late, then forgotten.
                tokio::time::sleep(DETACHED_KEEP).await;
                server
                    .detached
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&cid);
            });
            return Ok(json_response(
                StatusCode::ACCEPTED,
                &serde_json::json!({ "command_id": command_id }),
            ));
        }
        let (tx, rx) = mpsc::channel::<Bytes>(4);
        let server = self.clone();
        tokio::spawn(async move {
            let _guard = guard;
            if tx.send(frame(start, sse)).await.is_err() {
                return;
            }
            while let Some(event) = running.events.recv().await {
                server.count_output(&event);
                // A client gone: dropping the events kills the command.
                if tx.send(frame(event_line(event), sse)).await.is_err() {
                    return;
                }
            }
        });
        let mut resp = Response::new(ChannelBody { rx }.boxed());
        if let Ok(v) = HeaderValue::from_str(&command_id) {
            resp.headers_mut().insert("x-nsbox-command", v);
        }
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
}
