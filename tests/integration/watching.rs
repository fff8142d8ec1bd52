//! Watching sandboxes from another terminal: one-shots in `ps -a`, `inspect`, `stop` and
//! `prune`; the host-wide `nsbox events` stream; `nsbox wait`. Each test has its own run
//! directory (`NSBOX_RUN_DIR`), so it sees only its own sandboxes and events.

use std::io::BufRead;
use std::process::{Child, Stdio};
use std::sync::mpsc;

use crate::require_root;
use crate::support::*;

/// One test's run directory (its sessions removed when it goes).
struct Host(RunDir);

impl std::ops::Deref for Host {
    type Target = RunDir;
    fn deref(&self) -> &RunDir {
        &self.0
    }
}

impl Host {
    fn new() -> Host {
        Host(RunDir::new())
    }

    fn json(&self, args: &[&str]) -> Vec<serde_json::Value> {
        serde_json::from_str::<serde_json::Value>(&self.ok(args))
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    /// Starts `nsbox ARGS` in the background (its output discarded, stderr kept).
    fn spawn(&self, args: &[&str]) -> Child {
        self.cmd(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start nsbox")
    }

    /// The id of the one running one-shot, once `ps -a` lists it.
    fn one_shot_id(&self) -> String {
        let mut id = String::new();
        assert!(
            eventually(20.0, || {
                id = self.ok(&["ps", "-a", "-q"]).trim().to_string();
                !id.is_empty()
            }),
            "ps -a never listed the one-shot"
        );
        assert_eq!(id.len(), 12, "{id:?}");
        id
    }

    fn records(&self) -> usize {
        std::fs::read_dir(self.path().join("oneshots"))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

#[test]
fn ps_all_lists_a_running_one_shot_and_stop_ends_it() {
    require_root!();
    let host = Host::new();
    let child = host.spawn(&["run", "--label", "job=42", "--", "sleep", "31421"]);
    let id = host.one_shot_id();
    let rows = host.json(&["ps", "-a", "--format", "json"]);
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    assert_eq!(row["id"], id.as_str());
    assert_eq!(row["type"], "one-shot");
    assert_eq!(row["state"], "running");
    assert_eq!(row["labels"]["job"], "42");
    assert_eq!(row["command"], serde_json::json!(["sleep", "31421"]));
    assert_eq!(row["pid"], child.id());
    // Sessions only without -a; the filters apply to one-shots too.
    assert!(host.json(&["ps", "--json"]).is_empty());
    assert_eq!(
        host.ok(&["ps", "-a", "-q", "-f", "label=job=42"]).trim(),
        id
    );
    assert_eq!(host.ok(&["ps", "-a", "-q", "-f", "label=job=7"]).trim(), "");
    assert_eq!(host.ok(&["ps", "-a", "-q", "-f", "state=dead"]).trim(), "");
    let table = host.ok(&["ps", "-a"]);
    assert!(
        table.contains("TYPE") && table.contains("one-shot"),
        "{table}"
    );
    assert!(table.contains("sleep 31421"), "{table}");
    let inspected = host.json(&["inspect", &id[..6]]);
    assert_eq!(inspected[0]["type"], "one-shot");
    assert_eq!(inspected[0]["id"], id.as_str());

    // stop: TERM to the command, which dies of it: 143, and the record goes with it.
    assert_eq!(host.ok(&["stop", "-t", "10s", &id]).trim(), id);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(143), "{out:?}");
    assert!(host_processes_matching("sleep 31421").is_empty());
    assert_eq!(host.ok(&["ps", "-a", "-q"]).trim(), "");
    assert_eq!(host.records(), 0, "the record is removed");
    assert!(leftover_cgroups(&id).is_empty());

    // A command that ignores TERM is killed after the grace: 137.
    let child = host.spawn(&[
        "run",
        "--",
        "/bin/sh",
        "-c",
        "trap '' TERM; sleep 31422; sleep 31422",
    ]);
    let id = host.one_shot_id();
    assert!(eventually(10.0, || !host_processes_matching("sleep 31422").is_empty()));
    assert_eq!(host.ok(&["stop", "--time", "300ms", &id]).trim(), id);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(137), "{out:?}");
    assert!(host_processes_matching("sleep 31422").is_empty());
    assert_eq!(host.records(), 0);
}

#[test]
fn prune_removes_the_record_of_a_killed_one_shot() {
    require_root!();
    let _serial = prune_lock();
    let host = Host::new();
    let mut child = host.spawn(&["run", "--", "sleep", "31423"]);
    let id = host.one_shot_id();
    // SIGKILL: its nsbox has no chance to remove the record.
    child.kill().unwrap();
    let _ = child.wait();
    assert!(eventually(10.0, || host_processes_matching("sleep 31423").is_empty()));
    let rows = host.json(&["ps", "-a", "--json"]);
    assert_eq!(rows[0]["state"], "dead", "{rows:?}");
    assert_eq!(host.ok(&["ps", "-a", "-q", "-f", "state=dead"]).trim(), id);
    assert_eq!(
        host.ok(&["stop", &id]).trim(),
        format!("{id} (already stopped)")
    );
    // wait: nothing reported its end; it counts as killed.
    let waited = host.run(&["wait", &id]);
    assert_eq!(waited.code, 137, "{waited:?}");
    assert_eq!(waited.stdout.trim(), "137");
    let dry = host.ok(&["prune", "--dry-run"]);
    assert!(
        dry.contains(&format!("would remove one-shot record {id}")),
        "{dry}"
    );
    assert_eq!(host.records(), 1, "a dry run removes nothing");
    let pruned = host.ok(&["prune", "--min-age", "0"]);
    assert!(
        pruned.contains(&format!("removed  one-shot record {id}")),
        "{pruned}"
    );
    assert_eq!(host.records(), 0);
    assert_eq!(host.ok(&["ps", "-a", "-q"]).trim(), "");
}

/// Reads `nsbox events` lines in the background.
fn follow_events(host: &Host, args: &[&str]) -> (Child, mpsc::Receiver<serde_json::Value>) {
    let mut full = vec!["events"];
    full.extend_from_slice(args);
    let mut child = host
        .cmd(&full)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let event = serde_json::from_str(&line).expect("each line is one JSON object");
            if tx.send(event).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// Collects events from `rx` until `done` holds for what was collected (or 20 s passed).
fn collect_until(
    rx: &mpsc::Receiver<serde_json::Value>,
    done: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !done(&seen) && std::time::Instant::now() < deadline {
        if let Ok(event) = rx.recv_timeout(std::time::Duration::from_millis(100)) {
            seen.push(event);
        }
    }
    seen
}

fn types_of<'a>(events: &'a [serde_json::Value], id: &str) -> Vec<&'a str> {
    events
        .iter()
        .filter(|e| e["id"] == id)
        .map(|e| e["type"].as_str().unwrap())
        .collect()
}

#[test]
fn events_streams_session_and_one_shot_lifecycles_live() {
    require_root!();
    let host = Host::new();
    // A fresh run directory has no events: --since makes the follower read from the start,
    // so nothing is missed however late it starts.
    let (mut follower, rx) = follow_events(&host, &["--since", "10m"]);
    let session = host.ok(&["create", "--label", "pr=7"]).trim().to_string();
    let exec = host.run(&["exec", "--session", &session, "--", "sh", "-c", "exit 4"]);
    assert_eq!(exec.code, 4, "{exec:?}");
    host.ok(&["pause", &session]);
    host.ok(&["resume", &session]);
    host.ok(&["stop", &session]);
    host.ok(&["rm", &session]);
    let one_shot = host.run(&["run", "--label", "job=9", "--", "sh", "-c", "exit 3"]);
    assert_eq!(one_shot.code, 3, "{one_shot:?}");
    let seen = collect_until(&rx, |seen| {
        seen.iter()
            .any(|e| e["kind"] == "one-shot" && e["type"] == "exit")
    });
    let _ = follower.kill();
    let _ = follower.wait();
    assert_eq!(
        types_of(&seen, &session),
        ["create", "exec", "exit", "pause", "resume", "stop", "rm"],
        "{seen:#?}"
    );
    let of_session: Vec<&serde_json::Value> = seen
        .iter()
        .filter(|e| e["id"] == session.as_str())
        .collect();
    for e in &of_session {
        assert_eq!(e["kind"], "session");
        assert_eq!(e["labels"]["pr"], "7");
        let time = e["time"].as_str().unwrap();
        assert!(time.ends_with('Z') && time.len() == 24, "RFC 3339: {time}");
    }
    assert_eq!(of_session[1]["command"], "sh");
    assert_eq!(of_session[2]["code"], 4);
    assert_eq!(of_session[2]["exec_id"], of_session[1]["exec_id"]);
    assert!(of_session[5]["reason"]
        .as_str()
        .unwrap()
        .contains("nsbox stop"));
    let shot: Vec<&serde_json::Value> = seen.iter().filter(|e| e["kind"] == "one-shot").collect();
    assert_eq!(shot.len(), 2, "{shot:#?}");
    assert_eq!(shot[0]["type"], "start");
    assert_eq!(shot[0]["labels"]["job"], "9");
    assert_eq!(
        shot[0]["command"],
        serde_json::json!(["sh", "-c", "exit 3"])
    );
    assert_eq!(shot[1]["type"], "exit");
    assert_eq!(shot[1]["code"], 3);
    assert_eq!(shot[0]["id"], shot[1]["id"]);

    // What is kept, filtered, without following.
    let exits = host.ok(&["events", "--no-follow", "--filter", "type=exit"]);
    let codes: Vec<i64> = exits
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["code"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(codes, [4, 3]);
    let labelled = host.ok(&[
        "events",
        "--no-follow",
        "-f",
        "label=job=9",
        "-f",
        "kind=one-shot",
    ]);
    assert_eq!(labelled.lines().count(), 2, "{labelled}");
    let future = host.ok(&["events", "--no-follow", "--since", "2099-01-01T00:00:00Z"]);
    assert_eq!(future, "");
    let past = host.ok(&["events", "--until", "2000-01-01T00:00:00Z"]);
    assert_eq!(past, "", "an --until in the past prints and exits");

    // Mistakes are usage errors, with what to type instead.
    let bad = host.run(&["events", "--since", "yesterday"]);
    assert_eq!(bad.code, 121, "{bad:?}");
    assert!(bad.stderr.contains("RFC 3339"), "{bad:?}");
    let bad = host.run(&["events", "--filter", "colour=red"]);
    assert_eq!(bad.code, 121, "{bad:?}");
    assert!(bad.stderr.contains("not an event filter"), "{bad:?}");
}

#[test]
fn wait_prints_exit_codes_and_refuses_unknown_ids() {
    require_root!();
    let host = Host::new();
    // The command runs until the test opens its gate (a file in a host directory).
    let gate = tempfile::tempdir().unwrap();
    let mount = format!("{}:/gate", gate.path().display());
    let child = host.spawn(&[
        "run",
        "-v",
        &mount,
        "--",
        "sh",
        "-c",
        "while [ ! -e /gate/open ]; do sleep 0.05; done; exit 7",
    ]);
    let id = host.one_shot_id();
    let (tx, rx) = mpsc::channel();
    {
        let mut waiter = host.cmd(&["wait", &id]);
        std::thread::spawn(move || {
            let _ = tx.send(Run::from(waiter.stdin(Stdio::null()).output().unwrap()));
        });
    }
    std::fs::write(gate.path().join("open"), "").unwrap();
    // Whether wait found it running or already ended (in the journal), it reports its code.
    let waited = rx.recv_timeout(std::time::Duration::from_secs(30)).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(waited.code, 7, "{waited:?}");
    assert_eq!(waited.stdout.trim(), "7");
    // An ended one-shot is found in the journal, by id or prefix.
    let again = host.run(&["wait", &id[..5]]);
    assert_eq!((again.code, again.stdout.trim()), (7, "7"), "{again:?}");

    // A session: blocks until it is stopped, then 0.
    let session = host.ok(&["create"]).trim().to_string();
    let waiter = host
        .cmd(&["wait", &session])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    host.ok(&["stop", &session]);
    let waited: Run = waiter.wait_with_output().unwrap().into();
    assert_eq!((waited.code, waited.stdout.trim()), (0, "0"), "{waited:?}");
    // Several: one code per line, the last one's as the exit status.
    let both = host.run(&["wait", &session, &id]);
    assert_eq!(both.code, 7, "{both:?}");
    assert_eq!(both.stdout, "0\n7\n");
    host.ok(&["rm", &session]);
    // Removed, it is still found in the journal.
    let gone = host.run(&["wait", &session]);
    assert_eq!((gone.code, gone.stdout.trim()), (0, "0"), "{gone:?}");

    // Unknown ids: a usage error naming the id, with where to look.
    for bad in ["nosuchid", "../etc", "ab"] {
        let r = host.run(&["wait", bad]);
        assert_eq!(r.code, 121, "{bad}: {r:?}");
        assert!(
            r.stderr.contains("no session or one-shot sandbox") && r.stderr.contains("ps -a"),
            "{r:?}"
        );
    }
    let r = host.run(&["wait", &id, "nosuchid"]);
    assert_eq!((r.code, r.stdout.as_str()), (121, "7\n"), "{r:?}");
    let r = host.run(&["stop", "nosuchid"]);
    assert_eq!(r.code, 125, "{r:?}");
    assert!(r.stderr.contains("no session or running one-shot"), "{r:?}");
    let r = host.run(&["inspect", "nosuchid"]);
    assert_eq!(r.code, 125, "{r:?}");
    assert!(r.stderr.contains("ps -a"), "{r:?}");
}
