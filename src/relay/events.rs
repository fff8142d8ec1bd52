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
        /// The command's resource use as the cgroup tells it (null where it does not): see
        /// [`Usage`].
        #[serde(flatten)]
        usage: Usage,
    },
}

/// What a command used, read from a cgroup. A one-shot's numbers are its sandbox's cgroup (the
/// whole sandbox, which is the command). A session command's are the session's cgroup: CPU time
/// is the session's usage between the command's start and end (other commands running at the
/// same time count too), the memory peak is the session's high-water mark since it was created.
#[derive(Debug, Clone, Copy, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Usage {
    /// v2 `memory.peak`, v1 `memory.max_usage_in_bytes`.
    pub memory_peak_bytes: Option<u64>,
    /// v2 `cpu.stat` `usage_usec`, v1 `cpuacct.usage`.
    pub cpu_usage_usec: Option<u64>,
}

/// A piece of output, as text when it is valid UTF-8.
#[derive(Debug, Serialize)]
pub struct Chunk {
    /// "setup" for the output of a session's setup script, "run" for the command's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_b64: Option<String>,
}

impl Event<'_> {
    /// The event as one line of JSON (with the trailing newline), stamped with the time.
    pub fn to_line(&self) -> Vec<u8> {
        self.to_line_for(None)
    }

    /// The event as one line of JSON, stamped with the time and, in a session, the exec id.
    pub fn to_line_for(&self, exec_id: Option<u64>) -> Vec<u8> {
        let line = serde_json::to_vec(self).unwrap_or_else(|e| {
            format!("{{\"type\":\"error\",\"phase\":\"run\",\"message\":\"cannot encode event: {e}\",\"code\":125}}")
                .into_bytes()
        });
        stamp_line(&line, exec_id)
    }
}

/// Adds `ts` (the wall clock, RFC 3339 UTC with milliseconds) and `exec_id` (when given) to one
/// JSON object, keeping its own fields first; the result ends with a newline. Network events
/// (`net::events`) go through here too, so every line of the stream carries the same stamp.
pub fn stamp_line(object: &[u8], exec_id: Option<u64>) -> Vec<u8> {
    let trimmed = object.trim_ascii_end();
    let Some(body) = trimmed.strip_suffix(b"}") else {
        let mut line = trimmed.to_vec();
        line.push(b'\n');
        return line;
    };
    let mut line = Vec::with_capacity(trimmed.len() + 64);
    line.extend_from_slice(body);
    let empty = body.trim_ascii_end().ends_with(b"{");
    line.extend_from_slice(if empty { b"\"ts\":\"" } else { b",\"ts\":\"" });
    line.extend_from_slice(rfc3339_now().as_bytes());
    line.push(b'"');
    if let Some(id) = exec_id {
        line.extend_from_slice(format!(",\"exec_id\":{id}").as_bytes());
    }
    line.extend_from_slice(b"}\n");
    line
}

/// The wall clock now as "2026-12-04T14:52:01.123Z".
pub fn rfc3339_now() -> String {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    crate::units::rfc3339_millis(since.as_secs(), since.subsec_millis())
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
            usage: Usage {
                memory_peak_bytes: Some(4096),
                cpu_usage_usec: None,
            },
        }
        .to_line_for(Some(7));
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["type"], "exit");
        assert_eq!(v["code"], 3);
        assert_eq!(v["memory_peak_bytes"], 4096);
        assert!(v["cpu_usage_usec"].is_null());
        assert_eq!(v["exec_id"], 7);
        assert!(v["ts"].as_str().unwrap().ends_with('Z'));
        assert!(line.ends_with(b"\n"));
        let chunk = Utf8Chunker::default().push(b"hi").pop().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&Event::Stdout(chunk).to_line()).unwrap();
        assert_eq!(v["type"], "stdout");
        assert_eq!(v["data"], "hi");
        assert!(v.get("data_b64").is_none());
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(
            crate::units::rfc3339_millis(0, 0),
            "1970-01-01T00:00:00.000Z"
        );
        assert_eq!(
            crate::units::rfc3339_millis(951_782_400, 5),
            "2000-02-29T00:00:00.005Z"
        );
        assert_eq!(
            crate::units::rfc3339_millis(1_796_395_921, 123),
            "2026-12-04T14:52:01.123Z"
        );
        let line = stamp_line(b"{\"type\":\"dns\"}\n", None);
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["type"], "dns");
        assert!(v.get("exec_id").is_none());
        let v: serde_json::Value = serde_json::from_slice(&stamp_line(b"{}", Some(1))).unwrap();
        assert_eq!(v["exec_id"], 1);
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
