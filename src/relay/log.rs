//! A session's retained output (`nsbox logs`): what each `exec --session` relays — masked and
//! capped exactly as its caller got it — appended to one file of JSON lines, the `--json`
//! stream's `stdout`/`stderr` events (with `ts` and `exec_id`). The file is bounded: once it
//! holds [`OUTPUT_LOG_CAP`] bytes a `truncated` line is added and later output is not kept.
//! Several commands may append at once: each event is one `write` to an O_APPEND file.

use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{Mode, OFlags};

use super::events::{Chunk, Event};

/// The most a session's output log holds.
pub const OUTPUT_LOG_CAP: u64 = 16 << 20;

/// The output log of one command of a session.
#[derive(Debug)]
pub struct OutputLog {
    file: OwnedFd,
    exec_id: u64,
    cap: u64,
    full: bool,
}

impl OutputLog {
    /// Opens (creating, mode 0600) the log at `path` for the command `exec_id`. The path is
    /// in the session's private directory; no link is followed at its end.
    pub fn open(path: &Path, exec_id: u64) -> io::Result<OutputLog> {
        let file = rustix::fs::open(
            path,
            OFlags::WRONLY | OFlags::CREATE | OFlags::APPEND | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| io::Error::from_raw_os_error(e.raw_os_error()))?;
        Ok(OutputLog {
            file,
            exec_id,
            cap: OUTPUT_LOG_CAP,
            full: false,
        })
    }

    /// Keeps a piece of (already masked and capped) output: `stream` 0 is stdout, 1 stderr.
    /// Failures only stop the keeping: the command's own output goes on.
    pub fn record(&mut self, stream: usize, phase: &'static str, data: &[u8]) {
        if self.full || data.is_empty() {
            return;
        }
        let size = rustix::fs::fstat(&self.file).map_or(0, |st| st.st_size.unsigned_abs());
        let line = if size >= self.cap {
            self.full = true;
            Event::Truncated { limit: self.cap }.to_line_for(Some(self.exec_id))
        } else {
            let (data, data_b64) = match std::str::from_utf8(data) {
                Ok(text) => (Some(text.to_string()), None),
                Err(_) => {
                    use base64::Engine;
                    (
                        None,
                        Some(base64::engine::general_purpose::STANDARD.encode(data)),
                    )
                }
            };
            let chunk = Chunk {
                phase: Some(phase),
                data,
                data_b64,
            };
            let event = if stream == 0 {
                Event::Stdout(chunk)
            } else {
                Event::Stderr(chunk)
            };
            event.to_line_for(Some(self.exec_id))
        };
        if rustix::io::write(&self.file, &line).is_err() {
            self.full = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_events_and_the_log_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("output.log");
        let mut log = OutputLog::open(&path, 3).unwrap();
        log.cap = 200;
        log.record(0, "run", b"hello\n");
        log.record(1, "run", &[0xff]);
        log.record(0, "run", &[b'x'; 300]);
        log.record(0, "run", b"dropped");
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["type"], "stdout");
        assert_eq!(lines[0]["data"], "hello\n");
        assert_eq!(lines[0]["exec_id"], 3);
        assert_eq!(lines[1]["type"], "stderr");
        assert_eq!(lines[1]["data_b64"], "/w==");
        assert_eq!(lines.last().unwrap()["type"], "truncated");
        assert!(!text.contains("dropped"));
    }
}
