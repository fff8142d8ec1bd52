//! The `--json` event stream: one JSON object per line on stdout. The schema is documented in
//! the README and is the same for every kind of exec.

use base64::Engine;
use serde::Serialize;

/// One event. `type` names the variant.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event<'a> {
    /// The sandbox exists and the command is starting.
    Start {
        id: &'a str,
        profile: &'a str,
        network: &'a str,
        /// The sandbox's `--label`s (absent when it has none).
        #[serde(skip_serializing_if = "Option::is_none")]
        labels: Option<&'a std::collections::BTreeMap<String, String>>,
    },
    /// `nsbox create` made a session (after its setup script, if any, succeeded).
    Created { id: &'a str, name: Option<&'a str> },
    /// A chunk of the command's stdout. `data` holds UTF-8 text; output that is not valid UTF-8
    /// comes as `data_b64` instead.
    Stdout(Chunk),
    /// A chunk of the command's stderr (same fields as stdout).
    Stderr(Chunk),
    /// More than `limit` bytes of output: the rest is dropped.
    Truncated { limit: u64 },
    /// Something the user should know that did not stop the run.
    Warning { phase: &'a str, message: String },
    /// nsbox failed. `phase` is "usage", "image", "setup" (before the command ran) or "run";
    /// `hint` says what to do (null when there is nothing to add); `code` is the exit code.
    Error {
        phase: &'a str,
        message: String,
        hint: Option<String>,
        code: i32,
    },
    /// The sandbox ended. `code` is nsbox's exit status.
    Exit {
        code: i32,
        /// The signal that ended the command, if any ("SIGKILL").
        signal: Option<String>,
        oom: bool,
        timeout: bool,
        truncated: bool,
        duration_ms: f64,
    },
}

/// A piece of output, as text when it is valid UTF-8.
#[derive(Debug, Serialize)]
pub struct Chunk {
    /// "setup" for the output of a session's setup script; absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_b64: Option<String>,
}

impl Event<'_> {
    /// The event as one line of JSON (with the trailing newline).
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).unwrap_or_else(|e| {
            format!("{{\"type\":\"error\",\"phase\":\"run\",\"message\":\"cannot encode event: {e}\",\"code\":125}}")
                .into_bytes()
        });
        line.push(b'\n');
        line
    }
}

/// Cuts a byte stream into chunks at UTF-8 character boundaries, so a character split across
/// two reads still arrives as text.
#[derive(Debug, Default)]
pub struct Utf8Chunker {
    carry: Vec<u8>,
}

impl Utf8Chunker {
    /// Turns the next bytes into chunks: text as far as it is valid UTF-8, binary after that
    /// (an incomplete character at the end is held for the next read).
    pub fn push(&mut self, input: &[u8]) -> Vec<Chunk> {
        let mut bytes = std::mem::take(&mut self.carry);
        bytes.extend_from_slice(input);
        let mut chunks = Vec::new();
        match std::str::from_utf8(&bytes) {
            Ok(_) => chunks.extend(text_chunk(bytes)),
            Err(e) if e.error_len().is_none() => {
                self.carry = bytes.split_off(e.valid_up_to());
                chunks.extend(text_chunk(bytes));
            }
            Err(e) => {
                let rest = bytes.split_off(e.valid_up_to());
                chunks.extend(text_chunk(bytes));
                chunks.push(binary_chunk(&rest));
            }
        }
        chunks
    }

    /// Ends the stream: whatever is held goes out as binary.
    pub fn finish(&mut self) -> Option<Chunk> {
        let rest = std::mem::take(&mut self.carry);
        (!rest.is_empty()).then(|| binary_chunk(&rest))
    }
}

fn text_chunk(bytes: Vec<u8>) -> Option<Chunk> {
    if bytes.is_empty() {
        return None;
    }
    let text = String::from_utf8(bytes).ok()?;
    Some(Chunk {
        phase: None,
        data: Some(text),
        data_b64: None,
    })
}

fn binary_chunk(bytes: &[u8]) -> Chunk {
    Chunk {
        phase: None,
        data: None,
        data_b64: Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_have_a_type_tag() {
        let line = Event::Exit {
            code: 3,
            signal: None,
            oom: false,
            timeout: false,
            truncated: false,
            duration_ms: 1.5,
        }
        .to_line();
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["type"], "exit");
        assert_eq!(v["code"], 3);
        assert!(line.ends_with(b"\n"));
        let chunk = Utf8Chunker::default().push(b"hi").pop().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&Event::Stdout(chunk).to_line()).unwrap();
        assert_eq!(v["type"], "stdout");
        assert_eq!(v["data"], "hi");
        assert!(v.get("data_b64").is_none());
    }

    #[test]
    fn split_characters_are_joined() {
        let mut c = Utf8Chunker::default();
        let euro = "€".as_bytes();
        let first = c.push(&[b'a', euro[0]]).pop().unwrap();
        assert_eq!(first.data.as_deref(), Some("a"));
        assert!(c.push(&euro[1..2]).is_empty());
        let last = c.push(&euro[2..]).pop().unwrap();
        assert_eq!(last.data.as_deref(), Some("€"));
        assert!(c.finish().is_none());
    }

    #[test]
    fn binary_output_is_base64() {
        let mut c = Utf8Chunker::default();
        let chunks = c.push(&[b'o', b'k', 0xff, 0xfe, b'x']);
        assert_eq!(
            chunks[0].data.as_deref(),
            Some("ok"),
            "the valid prefix stays text"
        );
        assert_eq!(chunks[1].data, None);
        assert_eq!(chunks[1].data_b64.as_deref(), Some("//54"));
        c.push(&[0xe2]);
        let rest = c.finish().unwrap();
        assert_eq!(rest.data_b64.as_deref(), Some("4g=="));
    }
}
