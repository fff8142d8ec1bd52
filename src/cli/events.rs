//! `nsbox events` (the host-wide lifecycle journal, printed and followed as JSON lines) and
//! `nsbox wait` (block until sessions or one-shot sandboxes stopped, print their codes).

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Args;
use serde_json::Value;

use super::error;
use crate::exit;
use crate::session::journal::{self, Journal};
use crate::session::oneshot::OneShotStore;
use crate::session::state::{SessionRecord, SessionState, SessionStore};

/// How often a follower looks for new lines (and `wait` for an end).
const POLL: Duration = Duration::from_millis(50);

/// Flags of `nsbox events`.
#[derive(Debug, Args)]
#[command(
    after_help = "Each line is one JSON object: time (RFC 3339, UTC), type (create, exec, exit, stop, rm,\npause, resume for sessions; start, stop, exit for one-shots), id, name, kind (session or\none-shot), labels, and the type's fields (exit: code, signal; exec/exit: exec_id; stop:\nreason or grace_ms). Examples:\n  nsbox events                                   follow from now on (Ctrl-C ends it)\n  nsbox events --since 1h --no-follow            the last hour's events, then exit\n  nsbox events --filter type=exit --filter label=job=42 | jq .code"
)]
pub struct EventsArgs {
    /// Print kept events from this time on first: a duration back from now (10m, 2h), a Unix
    /// timestamp, or an RFC 3339 time.
    #[arg(long, value_name = "DURATION|TIME")]
    since: Option<String>,
    /// Stop at this time (same forms as --since); one in the past prints kept events only.
    #[arg(long, value_name = "DURATION|TIME")]
    until: Option<String>,
    /// Only events that match: type=TYPE, id=ID|PREFIX, name=NAME, kind=session|one-shot,
    /// label=KEY or label=KEY=VALUE. Repeatable: the same key again is an alternative,
    /// different keys must all match.
    #[arg(long, short = 'f', value_name = "KEY=VALUE", value_parser = parse_filter)]
    filter: Vec<EventFilter>,
    /// Print the kept events (from --since, else all of them) and exit instead of following.
    #[arg(long)]
    no_follow: bool,
}

/// An `events --filter`.
#[derive(Debug, Clone)]
pub enum EventFilter {
    Type(String),
    Id(String),
    Name(String),
    Kind(String),
    Label(String, Option<String>),
}

fn parse_filter(text: &str) -> Result<EventFilter, String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("'{text}': expected KEY=VALUE (type=exit, id=ID, label=job=42)"))?;
    match key {
        "type" | "event" => Ok(EventFilter::Type(value.to_string())),
        "id" | "container" => Ok(EventFilter::Id(value.to_string())),
        "name" => Ok(EventFilter::Name(value.to_string())),
        "kind" if ["session", "one-shot"].contains(&value) => {
            Ok(EventFilter::Kind(value.to_string()))
        }
        "kind" => Err(format!("'{value}': the kinds are session and one-shot")),
        "label" => Ok(match value.split_once('=') {
            Some((k, v)) => EventFilter::Label(k.to_string(), Some(v.to_string())),
            None => EventFilter::Label(value.to_string(), None),
        }),
        other => Err(format!(
            "'{other}' is not an event filter: use type, id, name, kind or label"
        )),
    }
}

impl EventFilter {
    /// Filters with the same key are alternatives (Docker's rule).
    fn key(&self) -> &'static str {
        match self {
            EventFilter::Type(_) => "type",
            EventFilter::Id(_) => "id",
            EventFilter::Name(_) => "name",
            EventFilter::Kind(_) => "kind",
            EventFilter::Label(..) => "label",
        }
    }

    fn matches(&self, event: &Value) -> bool {
        let text = |key: &str| event[key].as_str().unwrap_or_default();
        match self {
            EventFilter::Type(t) => text("type") == t,
            EventFilter::Id(id) => text("id").starts_with(id.as_str()) && !id.is_empty(),
            EventFilter::Name(n) => text("name") == n,
            EventFilter::Kind(k) => text("kind") == k,
            EventFilter::Label(k, None) => event["labels"].get(k).is_some(),
            EventFilter::Label(k, Some(v)) => event["labels"][k].as_str() == Some(v.as_str()),
        }
    }
}

/// Whether `event` passes every key's filters.
fn selected(filters: &[EventFilter], event: &Value) -> bool {
    filters.iter().all(|f| {
        filters
            .iter()
            .filter(|g| g.key() == f.key())
            .any(|g| g.matches(event))
    })
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

pub fn events(args: EventsArgs) -> i32 {
    let now = now_millis();
    let parse = |flag: &str, text: &Option<String>| -> Result<Option<i64>, i32> {
        match text.as_deref().map(|t| journal::parse_instant(t, now)) {
            None => Ok(None),
            Some(Ok(t)) => Ok(Some(t)),
            Some(Err(e)) => {
                error(&format!("--{flag}: {e}"));
                Err(exit::USAGE)
            }
        }
    };
    let (since, until) = match (parse("since", &args.since), parse("until", &args.until)) {
        (Ok(since), Ok(until)) => (since, until),
        (Err(code), _) | (_, Err(code)) => return code,
    };
    let follow = !args.no_follow && until.is_none_or(|u| u > now);
    // Without --since, a follower starts at the end (only what happens from now on), as
    // Docker's does; --since and --no-follow read what is kept first.
    let mut follower = Journal::system().follow(since.is_some() || args.no_follow);
    let mut out = std::io::stdout().lock();
    loop {
        for event in follower.next_events() {
            let time = journal::event_millis(&event).unwrap_or(i64::MIN);
            if since.is_some_and(|s| time < s) {
                continue;
            }
            if until.is_some_and(|u| time > u) {
                return 0;
            }
            if !selected(&args.filter, &event) {
                continue;
            }
            // A closed stdout (`| head`) ends the command quietly.
            if writeln!(out, "{event}").and_then(|()| out.flush()).is_err() {
                return 0;
            }
        }
        if !follow || until.is_some_and(|u| now_millis() > u) {
            return 0;
        }
        std::thread::sleep(POLL);
    }
}

/// Flags of `nsbox wait`.
#[derive(Debug, Args)]
#[command(
    after_help = "Prints one exit code per line: a one-shot's is its command's (143 or 137 when `nsbox stop`\nended it); a session's is 0 when it was stopped (stop, --max-age, --ttl), 137 when it ran out of\nmemory or its supervisor was killed, 125 when its sandbox ended unexpectedly. A one-shot\nor session that already ended (and was removed) is found in the event journal. Exits with the\nlast one's code (121 if an id is unknown)."
)]
pub struct WaitArgs {
    /// Sessions (id, unique id prefix or name) or one-shot sandboxes (id or unique prefix).
    #[arg(value_name = "ID|NAME", required = true)]
    targets: Vec<String>,
}

pub fn wait(args: WaitArgs) -> i32 {
    let sessions = SessionStore::system();
    let oneshots = OneShotStore::system();
    let journal = Journal::system();
    let mut last = 0;
    let mut unknown = false;
    for target in &args.targets {
        let code = if let Ok(record) = sessions.resolve(target) {
            Some(wait_session(&sessions, record))
        } else if let Some(record) = oneshots.resolve(target) {
            while oneshots.read(&record.id).is_some() && oneshots.is_live(&record) {
                std::thread::sleep(POLL);
            }
            Some(one_shot_code(&journal, &record.id).unwrap_or_else(|| {
                error(&format!(
                    "one-shot {}: its nsbox process was killed before it could report; counted as SIGKILL",
                    record.id
                ));
                exit::SIGNAL_BASE + libc::SIGKILL
            }))
        } else {
            ended_code(&journal, target)
        };
        match code {
            Some(code) => {
                println!("{code}");
                last = code;
            }
            None => {
                error(&format!(
                    "no session or one-shot sandbox '{}' — hint: `nsbox ps -a` lists them",
                    target.escape_debug()
                ));
                unknown = true;
            }
        }
    }
    let _ = std::io::stdout().flush();
    if unknown {
        exit::USAGE
    } else {
        last
    }
}

fn wait_session(store: &SessionStore, record: SessionRecord) -> i32 {
    while store.state(&record) == SessionState::Running {
        std::thread::sleep(POLL);
    }
    // Re-read: the supervisor recorded how it ended; removed meanwhile (`--rm`), the journal
    // still says.
    match store.read_record(&record.id) {
        Ok(now) => session_code(store.state(&now), &now),
        Err(_) => ended_code(&store.journal(), &record.id).unwrap_or(0),
    }
}

/// What `wait` reports for a session that is not running.
fn session_code(state: SessionState, record: &SessionRecord) -> i32 {
    match (state, &record.stopped) {
        (SessionState::Dead, _) => exit::SIGNAL_BASE + libc::SIGKILL,
        (_, Some(stopped)) => reason_code(&stopped.reason),
        (_, None) => 0,
    }
}

/// A stopped session's code, from why it stopped.
fn reason_code(reason: &str) -> i32 {
    if reason.contains("out of memory") {
        exit::OOM
    } else if reason.contains("ended unexpectedly") {
        exit::NSBOX_FAILED
    } else {
        0
    }
}

/// The code of one-shot `id`'s exit event, the latest one kept.
fn one_shot_code(journal: &Journal, id: &str) -> Option<i32> {
    journal
        .read_all()
        .iter()
        .rev()
        .find(|e| e["kind"] == "one-shot" && e["type"] == "exit" && e["id"] == id)
        .and_then(event_code)
}

/// A one-shot or session that ended (and is gone) before `wait` was called, found in the
/// journal by id, unique id prefix or (a session's) name: its latest end's code.
fn ended_code(journal: &Journal, reference: &str) -> Option<i32> {
    let ends: Vec<Value> = journal.read_all().into_iter().filter(is_end).collect();
    let named = |e: &&Value| {
        let id = e["id"].as_str().unwrap_or_default();
        id == reference
            || (reference.len() >= 3 && id.starts_with(reference))
            || e["name"].as_str() == Some(reference)
    };
    let mut ids: Vec<&str> = ends
        .iter()
        .filter(named)
        .filter_map(|e| e["id"].as_str())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    match ids.as_slice() {
        [id] => ends
            .iter()
            .rev()
            .find(|e| e["id"] == *id)
            .and_then(event_code),
        _ => None,
    }
}

/// A one-shot's exit or a session's stop.
fn is_end(event: &Value) -> bool {
    (event["kind"] == "one-shot" && event["type"] == "exit")
        || (event["kind"] == "session" && event["type"] == "stop")
}

fn event_code(event: &Value) -> Option<i32> {
    match event["kind"].as_str() {
        Some("session") => Some(reason_code(event["reason"].as_str().unwrap_or_default())),
        _ => event["code"].as_i64().and_then(|c| i32::try_from(c).ok()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_of_one_key_are_alternatives_and_keys_all_must_match() {
        let event = serde_json::json!({"type": "exit", "id": "abc123", "name": null,
            "kind": "one-shot", "labels": {"job": "42"}});
        let f = |t: &str| parse_filter(t).unwrap();
        assert!(selected(&[], &event));
        assert!(selected(&[f("type=exit"), f("type=start")], &event));
        assert!(!selected(&[f("type=exit"), f("kind=session")], &event));
        assert!(selected(
            &[f("id=abc"), f("label=job=42"), f("label=job")],
            &event
        ));
        assert!(!selected(&[f("label=job=7")], &event));
        assert!(!selected(&[f("label=pr")], &event));
        assert!(!selected(&[f("name=x")], &event));
        for bad in ["type", "colour=red", "kind=vm"] {
            assert!(parse_filter(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn session_codes_say_how_it_ended() {
        let mut record: SessionRecord = serde_json::from_value(serde_json::json!({
            "id": "s1", "name": null, "created": 1, "root": "host", "network": "none",
            "memory": null, "cpu_millis": null, "pids": null, "uid": 100, "gid": 101,
            "max_age": null, "supervisor_pid": 1, "init_pid": 0, "workdir": "/sandbox",
            "max_output": null, "stopped": {"at": 2, "reason": "stopped by nsbox stop"}
        }))
        .unwrap();
        assert_eq!(session_code(SessionState::Stopped, &record), 0);
        assert_eq!(session_code(SessionState::Dead, &record), 137);
        record.stopped.as_mut().unwrap().reason = "the sandbox ran out of memory".into();
        assert_eq!(session_code(SessionState::Stopped, &record), 137);
    }

    #[test]
    fn ended_sandboxes_are_found_in_the_journal() {
        let tmp = tempfile::tempdir().unwrap();
        let journal = Journal::new(tmp.path());
        for (id, code) in [("abc111", 3), ("abd222", 143), ("abc111", 4)] {
            let mut e = journal::event("exit", journal::Kind::OneShot, id, None);
            e.insert("code".into(), code.into());
            journal.append(&Value::Object(e)).unwrap();
        }
        for (id, name, reason) in [
            ("fff111", "builder", "stopped by nsbox stop"),
            ("eee222", "big", "the sandbox ran out of memory"),
        ] {
            let mut e = journal::event("stop", journal::Kind::Session, id, Some(name));
            e.insert("reason".into(), reason.into());
            journal.append(&Value::Object(e)).unwrap();
            // A session's command's exit is not the session's end.
            let mut e = journal::event("exit", journal::Kind::Session, id, Some(name));
            e.insert("code".into(), 9.into());
            journal.append(&Value::Object(e)).unwrap();
        }
        assert_eq!(ended_code(&journal, "abc111"), Some(4), "the latest");
        assert_eq!(ended_code(&journal, "abd"), Some(143));
        assert_eq!(ended_code(&journal, "ab"), None, "too short");
        assert_eq!(ended_code(&journal, "zzz"), None);
        assert_eq!(ended_code(&journal, "builder"), Some(0));
        assert_eq!(ended_code(&journal, "eee"), Some(137));
        assert_eq!(one_shot_code(&journal, "abd222"), Some(143));
        assert_eq!(one_shot_code(&journal, "fff111"), None);
    }
}
