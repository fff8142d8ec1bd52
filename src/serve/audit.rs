//! The audit log: one JSON line per request (time, key name, action, sandbox, result) in
//! `serve/audit.log` under the state root, mode 0600. Request bodies, tokens, environment and
//! secrets are never written: an entry names what was done, not with what.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;

use serde::Serialize;

/// One line of the log.
#[derive(Debug, Serialize)]
pub struct AuditEntry<'a> {
    /// Unix milliseconds.
    pub time_ms: u128,
    /// The API key's name; "local" for the unix socket without a key; "-" when none matched.
    pub key: &'a str,
    /// "sandbox.create", "command.run", "file.write", ...
    pub action: &'a str,
    pub sandbox: Option<&'a str>,
    /// The HTTP status of the answer.
    pub status: u16,
    /// The error code when the request failed.
    pub error: Option<&'a str>,
}

/// The open log file (appends are serialised so lines never interleave).
#[derive(Debug)]
pub struct AuditLog {
    file: Mutex<std::fs::File>,
}

impl AuditLog {
    pub fn open(serve_dir: &Path) -> std::io::Result<AuditLog> {
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(serve_dir.join("audit.log"))?;
        Ok(AuditLog {
            file: Mutex::new(file),
        })
    }

    pub fn record(&self, entry: &AuditEntry<'_>) {
        let Ok(mut line) = serde_json::to_vec(entry) else {
            return;
        };
        line.push(b'\n');
        let mut file = match self.file.lock() {
            Ok(f) => f,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Err(e) = file.write_all(&line) {
            tracing::warn!("audit log: {e}");
        }
    }
}
