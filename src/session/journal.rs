//! The host-wide journal of lifecycle events that `nsbox events` prints and follows: sessions
//! created, commands run in them and their ends, stops, removals, pauses; one-shot sandboxes
//! started, stopped and ended.
//!
//! ```text
//! <run dir>/events.jsonl     one JSON object per line, appended by every nsbox process
//! <run dir>/events.jsonl.1   the previous file, once the current one grew past its cap
//! ```
//!
//! Every writer opens the file with O_APPEND and writes one whole line (at most
//! [`MAX_LINE`] bytes) in one `write`: the kernel moves the offset and copies the line under
//! the inode's lock, so lines of concurrent writers never interleave and no lock file is
//! needed. A writer that finds the file past its cap renames it to `.1` (replacing the old
//! one) under a non-blocking `flock`, and only if the name still points at the file it wrote
//! to, so two writers never both rotate. Readers follow by descriptor: when the name points at
//! a new file, they read the old one to its end, then start on the new one.
//!
//! Writing is best effort: a sandbox never fails because its event could not be recorded.
//! This module must not decide what an event means; its callers do.

use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

/// The journal's file name under the run directory.
pub const FILE: &str = "events.jsonl";
/// The previous file after a rotation.
pub const OLD_FILE: &str = "events.jsonl.1";
/// The longest line written: one `write` of at most this much is never split.
pub const MAX_LINE: usize = 4096;
/// The current file is rotated once it is larger than this (so the journal keeps between
/// one and two of these of the latest events).
pub const DEFAULT_MAX_BYTES: u64 = 1 << 20;

/// What an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Session,
    OneShot,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Session => "session",
            Kind::OneShot => "one-shot",
        }
    }
}

/// The journal under a run directory.
#[derive(Debug, Clone)]
pub struct Journal {
    dir: PathBuf,
    max_bytes: u64,
}

impl Journal {
    pub fn new(run_dir: impl Into<PathBuf>) -> Journal {
        Journal {
            dir: run_dir.into(),
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }

    /// The journal under `crate::session::state::system_run_dir()`.
    pub fn system() -> Journal {
        Journal::new(super::state::system_run_dir())
    }

    /// A journal rotated past `max_bytes` (tests).
    pub fn with_max_bytes(mut self, max_bytes: u64) -> Journal {
        self.max_bytes = max_bytes;
        self
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    pub fn old_path(&self) -> PathBuf {
        self.dir.join(OLD_FILE)
    }

    /// Appends one event as one line. An event too long for one line loses its labels and
    /// command first (it says so with `"truncated": true`).
    pub fn append(&self, event: &Value) -> io::Result<()> {
        let line = encode(event)?;
        let path = self.path();
        let open = || {
            std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&path)
        };
        let mut file = match open() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&self.dir)?;
                open()?
            }
            other => other?,
        };
        // One write call: write_all only loops on a short write, which a regular file on a
        // local filesystem does not do for 4 KiB.
        io::Write::write_all(&mut file, &line)?;
        if file.metadata()?.len() > self.max_bytes {
            self.rotate(&file);
        }
        Ok(())
    }

    /// Renames the full file to `.1`, once: under a non-blocking lock, and only while the
    /// name still points at the file this writer wrote to (another writer may have rotated
    /// it already, and the name is a fresh file then).
    fn rotate(&self, file: &std::fs::File) {
        use rustix::fs::{flock, FlockOperation};
        if flock(file, FlockOperation::NonBlockingLockExclusive).is_err() {
            return;
        }
        let ours = file.metadata().ok().map(|m| (m.dev(), m.ino()));
        let named = std::fs::symlink_metadata(self.path())
            .ok()
            .map(|m| (m.dev(), m.ino()));
        if ours.is_some() && ours == named {
            if let Err(e) = std::fs::rename(self.path(), self.old_path()) {
                tracing::warn!("rotating the event journal: {e}");
            }
        }
    }

    /// Every event kept (the old file's, then the current one's), as parsed lines; lines that
    /// do not parse are skipped.
    pub fn read_all(&self) -> Vec<Value> {
        let mut events = Vec::new();
        for path in [self.old_path(), self.path()] {
            if let Ok(bytes) = std::fs::read(&path) {
                events.extend(parse_lines(&bytes));
            }
        }
        events
    }

    /// A reader that starts after everything kept so far (or, with `from_start`, at the
    /// beginning of the old file) and returns new events as they are appended.
    pub fn follow(&self, from_start: bool) -> Follower {
        let mut follower = Follower {
            journal: self.clone(),
            file: None,
            pending: Vec::new(),
            backlog: Vec::new(),
        };
        if from_start {
            if let Ok(bytes) = std::fs::read(self.old_path()) {
                follower.backlog = parse_lines(&bytes);
            }
        }
        follower.open_current(!from_start);
        follower
    }
}

/// Serializes an event as one line (with its newline), shortened to fit [`MAX_LINE`].
fn encode(event: &Value) -> io::Result<Vec<u8>> {
    let mut line = serde_json::to_vec(event).map_err(io::Error::other)?;
    if line.len() >= MAX_LINE {
        let mut short = event.clone();
        if let Some(map) = short.as_object_mut() {
            map.remove("labels");
            map.remove("command");
            map.insert("truncated".into(), Value::Bool(true));
        }
        line = serde_json::to_vec(&short).map_err(io::Error::other)?;
        if line.len() >= MAX_LINE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an event longer than 4 KiB",
            ));
        }
    }
    line.push(b'\n');
    Ok(line)
}

fn parse_lines(bytes: &[u8]) -> Vec<Value> {
    bytes
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect()
}

/// Follows the journal across rotations (see the module docs).
#[derive(Debug)]
pub struct Follower {
    journal: Journal,
    file: Option<std::fs::File>,
    /// The start of a line a writer has not finished (never, with single writes; but a
    /// reader may still see a file mid-copy).
    pending: Vec<u8>,
    /// Events read before the current file (the old file, when following from the start).
    backlog: Vec<Value>,
}

impl Follower {
    fn open_current(&mut self, at_end: bool) {
        self.file = std::fs::File::open(self.journal.path()).ok();
        if let (true, Some(file)) = (at_end, self.file.as_mut()) {
            let _ = file.seek(SeekFrom::End(0));
        }
        self.pending.clear();
    }

    /// The events appended since the last call (none when nothing is new).
    pub fn next_events(&mut self) -> Vec<Value> {
        let mut events = std::mem::take(&mut self.backlog);
        events.extend(self.read_new());
        // Rotated (or created) since: finish the old file, then read the new one from its
        // beginning.
        let current = std::fs::symlink_metadata(self.journal.path())
            .ok()
            .map(|m| (m.dev(), m.ino()));
        let ours = self
            .file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map(|m| (m.dev(), m.ino()));
        if current.is_some() && current != ours {
            self.open_current(false);
            events.extend(self.read_new());
        }
        events
    }

    fn read_new(&mut self) -> Vec<Value> {
        let Some(file) = self.file.as_mut() else {
            return Vec::new();
        };
        let mut bytes = Vec::new();
        if file.read_to_end(&mut bytes).is_err() {
            return Vec::new();
        }
        self.pending.extend_from_slice(&bytes);
        match self.pending.iter().rposition(|&b| b == b'\n') {
            Some(end) => {
                let whole: Vec<u8> = self.pending.drain(..=end).collect();
                parse_lines(&whole)
            }
            None => Vec::new(),
        }
    }
}

/// A new event: its time (RFC 3339, UTC, milliseconds), type, id, name and kind; callers add
/// their fields to the returned object.
pub fn event(action: &str, kind: Kind, id: &str, name: Option<&str>) -> Map<String, Value> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let mut map = Map::new();
    map.insert(
        "time".into(),
        crate::units::rfc3339_millis(now.as_secs(), now.subsec_millis()).into(),
    );
    map.insert("type".into(), action.into());
    map.insert("id".into(), id.into());
    map.insert("name".into(), name.into());
    map.insert("kind".into(), kind.as_str().into());
    map
}

/// Appends `event` to the system journal; a failure is logged, never fatal.
pub fn emit(event: Map<String, Value>) {
    if let Err(e) = Journal::system().append(&Value::Object(event)) {
        tracing::warn!("recording a lifecycle event: {e}");
    }
}

/// Milliseconds since the Unix epoch of an event's `time`.
pub fn event_millis(event: &Value) -> Option<i64> {
    parse_rfc3339_millis(event["time"].as_str()?)
}

/// Parses `--since`/`--until`: a duration back from `now_millis` with a unit ("10m", "1h30m",
/// "2.5s"), a Unix timestamp in seconds ("1764870000", fractions allowed, as Docker takes
/// it), or an RFC 3339 time ("2026-12-04T19:20:00Z", "...:00.5+01:00"). Returns milliseconds
/// since the epoch.
pub fn parse_instant(text: &str, now_millis: i64) -> Result<i64, String> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Ok((secs * 1000.0) as i64);
        }
    }
    if let Some(t) = parse_rfc3339_millis(text) {
        return Ok(t);
    }
    match crate::units::parse_duration(text) {
        Ok(d) => Ok(now_millis - i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2)),
        Err(_) => Err(format!(
            "'{text}' is not a time: use a duration back from now (10m, 2h), a Unix timestamp, or an RFC 3339 time (2026-12-04T19:20:00Z)"
        )),
    }
}

/// "YYYY-MM-DDTHH:MM:SS[.fff][Z|±HH:MM]" in milliseconds since the epoch.
pub fn parse_rfc3339_millis(t: &str) -> Option<i64> {
    let b = t.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let n = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = t.get(r)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    let (y, m, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (hh, mm, ss) = (n(11..13)?, n(14..16)?, n(17..19)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let mut rest = &t[19..];
    let mut millis = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let padded = format!("{:0<3}", &frac[..digits.min(3)]);
        millis = padded.parse::<i64>().ok()?;
        rest = &frac[digits..];
    }
    let offset_secs = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && rest.as_bytes()[3] == b':' => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let oh: i64 = rest.get(1..3)?.parse().ok()?;
            let om: i64 = rest.get(4..6)?.parse().ok()?;
            sign * (oh * 3600 + om * 60)
        }
        _ => return None,
    };
    let days = crate::units::days_from_civil(y, m, d);
    Some((days * 86_400 + hh * 3600 + mm * 60 + ss - offset_secs) * 1000 + millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(i: usize, writer: usize) -> Value {
        let mut e = event("exec", Kind::Session, &format!("w{writer}"), None);
        e.insert("seq".into(), i.into());
        // Long enough that interleaved bytes would break the JSON.
        e.insert("pad".into(), "x".repeat(900).into());
        Value::Object(e)
    }

    #[test]
    fn concurrent_appenders_never_interleave_lines() {
        let tmp = tempfile::tempdir().unwrap();
        let journal = Journal::new(tmp.path().join("run"));
        let threads: Vec<_> = (0..4)
            .map(|w| {
                let journal = journal.clone();
                std::thread::spawn(move || {
                    for i in 0..200 {
                        journal.append(&sample(i, w)).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let bytes = std::fs::read(journal.path()).unwrap();
        let lines: Vec<&[u8]> = bytes
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        assert_eq!(lines.len(), 800);
        for w in 0..4 {
            let seqs: Vec<u64> = lines
                .iter()
                .map(|l| serde_json::from_slice::<Value>(l).expect("a whole line"))
                .filter(|e| e["id"] == format!("w{w}"))
                .map(|e| e["seq"].as_u64().unwrap())
                .collect();
            assert_eq!(seqs, (0..200).collect::<Vec<u64>>(), "writer {w} in order");
        }
    }

    #[test]
    fn rotation_keeps_one_old_file_and_readers_follow_it() {
        let tmp = tempfile::tempdir().unwrap();
        let journal = Journal::new(tmp.path()).with_max_bytes(10_000);
        journal.append(&sample(0, 0)).unwrap();
        let mut follower = journal.follow(false);
        assert!(follower.next_events().is_empty(), "starts at the end");
        for i in 1..40 {
            journal.append(&sample(i, 0)).unwrap();
        }
        assert!(journal.old_path().exists(), "rotated");
        // Absent right after a rotation, until the next event.
        assert!(std::fs::metadata(journal.path()).map_or(0, |m| m.len()) <= 11_000);
        let seen: Vec<u64> = follower
            .next_events()
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect();
        // The follower read its file (renamed away since) to its end, then the current one
        // from its beginning; what rotated away twice in between is gone.
        let current: Vec<u64> = std::fs::read(journal.path())
            .map(|b| parse_lines(&b))
            .unwrap_or_default()
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(seen.first(), Some(&1), "{seen:?}");
        assert!(seen.ends_with(&current), "{seen:?} / {current:?}");
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "in order: {seen:?}");
        // Follows across a rotation that happens between two reads.
        for i in 40..45 {
            journal.append(&sample(i, 0)).unwrap();
        }
        let more: Vec<u64> = follower
            .next_events()
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(more, (40..45).collect::<Vec<u64>>());
    }

    #[test]
    fn overlong_events_lose_labels_then_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let journal = Journal::new(tmp.path());
        let mut e = event("start", Kind::OneShot, "abc", None);
        e.insert(
            "labels".into(),
            serde_json::json!({"big": "y".repeat(5000)}),
        );
        journal.append(&Value::Object(e.clone())).unwrap();
        let kept = journal.read_all();
        assert_eq!(kept[0]["truncated"], true);
        assert!(kept[0].get("labels").is_none());
        e.insert("other".into(), "z".repeat(5000).into());
        assert!(journal.append(&Value::Object(e)).is_err());
        assert_eq!(journal.read_all().len(), 1);
    }

    #[test]
    fn times_parse_as_durations_timestamps_and_rfc3339() {
        let now = 1_764_870_000_000;
        assert_eq!(parse_instant("10m", now), Ok(now - 600_000));
        assert_eq!(parse_instant("1h30m", now), Ok(now - 5_400_000));
        assert_eq!(parse_instant("1764870000", now), Ok(1_764_870_000_000));
        assert_eq!(parse_instant("1764870000.25", now), Ok(1_764_870_000_250));
        assert_eq!(
            parse_instant("2026-12-04T14:58:08Z", now),
            Ok(1_796_396_288_000)
        );
        assert_eq!(
            parse_instant("2026-12-04T15:58:08.5+01:00", now),
            Ok(1_796_396_288_500)
        );
        for bad in [
            "",
            "yesterday",
            "2026-13-04T00:00:00Z",
            "2026-12-04T14:58:08",
            "-5",
        ] {
            assert!(parse_instant(bad, now).is_err(), "{bad}");
        }
        // What `event` writes reads back.
        let e = Value::Object(event("stop", Kind::Session, "x", None));
        let t = event_millis(&e).unwrap();
        let wall = i64::try_from(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis(),
        )
        .unwrap();
        assert!((wall - t).abs() < 5_000);
    }
}
