//! `--result-json`: instead of a stream of events, one JSON document once the command ended —
//! its exit code and how it ended, its output (masked and capped like the stream's), and what
//! it used. The relay captures into a [`Capture`]; the CLI edge writes the [`ResultDoc`].

use base64::Engine;
use serde::Serialize;

use super::events::{rfc3339_now, Usage};

/// What the relay kept for the result document instead of writing it.
#[derive(Debug, Default, Clone)]
pub struct Capture {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The network events of the run, as the stream would have carried them.
    pub network: Vec<serde_json::Value>,
}

/// nsbox's own failure, when there was one.
#[derive(Debug, Serialize)]
pub struct ResultError {
    pub phase: String,
    pub message: String,
    pub hint: Option<String>,
}

/// The one document `--result-json` prints. Output that is not valid UTF-8 comes as
/// `stdout_b64`/`stderr_b64` instead of `stdout`/`stderr`.
#[derive(Debug, Serialize)]
pub struct ResultDoc {
    /// The sandbox or session id (null when nsbox failed before it existed).
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exec_id: Option<u64>,
    /// nsbox's exit status (the command's own code, 128+n for a signal, or a reserved code).
    pub code: i32,
    pub signal: Option<String>,
    pub oom: bool,
    pub timeout: bool,
    pub stdout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdout_b64: Option<String>,
    pub stderr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stderr_b64: Option<String>,
    /// Output beyond `--max-output` was dropped.
    pub truncated: bool,
    pub duration_ms: f64,
    #[serde(flatten)]
    pub usage: Usage,
    pub error: Option<ResultError>,
    pub warnings: Vec<String>,
    pub network: Vec<serde_json::Value>,
    /// When the document was written.
    pub ts: String,
}

/// Output as text when it is valid UTF-8, else as base64: (text, base64).
pub fn text_or_base64(bytes: Vec<u8>) -> (Option<String>, Option<String>) {
    match String::from_utf8(bytes) {
        Ok(text) => (Some(text), None),
        Err(e) => (
            None,
            Some(base64::engine::general_purpose::STANDARD.encode(e.as_bytes())),
        ),
    }
}

impl ResultDoc {
    /// A document for an nsbox failure before or around the command (no output).
    pub fn failed(code: i32, error: ResultError, duration_ms: f64) -> ResultDoc {
        ResultDoc {
            id: None,
            exec_id: None,
            code,
            signal: None,
            oom: false,
            timeout: false,
            stdout: Some(String::new()),
            stdout_b64: None,
            stderr: Some(String::new()),
            stderr_b64: None,
            truncated: false,
            duration_ms,
            usage: Usage::default(),
            error: Some(error),
            warnings: Vec::new(),
            network: Vec::new(),
            ts: rfc3339_now(),
        }
    }

    /// The document as one line of JSON with the newline.
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).unwrap_or_else(|e| {
            format!("{{\"code\":125,\"error\":{{\"phase\":\"run\",\"message\":\"cannot encode the result: {e}\",\"hint\":null}}}}")
                .into_bytes()
        });
        line.push(b'\n');
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_text_or_base64() {
        assert_eq!(text_or_base64(b"ok".to_vec()), (Some("ok".into()), None));
        assert_eq!(text_or_base64(vec![0xff]), (None, Some("/w==".into())));
        let mut doc = ResultDoc::failed(
            125,
            ResultError {
                phase: "setup".into(),
                message: "no".into(),
                hint: None,
            },
            1.0,
        );
        doc.stdout = None;
        doc.stdout_b64 = Some("/w==".into());
        let v: serde_json::Value = serde_json::from_slice(&doc.to_line()).unwrap();
        assert_eq!(v["code"], 125);
        assert!(v["stdout"].is_null());
        assert_eq!(v["stdout_b64"], "/w==");
        assert_eq!(v["stderr"], "");
        assert!(v.get("stderr_b64").is_none());
        assert!(v["memory_peak_bytes"].is_null());
        assert_eq!(v["error"]["phase"], "setup");
    }
}
