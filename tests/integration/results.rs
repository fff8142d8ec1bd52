//! Results for programs: every `--json` event stamped (time, exec id), run output marked, the
//! exit event with what the command used, and `--result-json`'s one document — for one-shots
//! and session commands; a secret for one session command.

use std::process::Stdio;

use crate::require_root;
use crate::support::*;

/// A session store of this test's own (sessions of concurrent tests never meet).
pub(crate) struct Sessions {
    dir: tempfile::TempDir,
    made: std::cell::RefCell<Vec<String>>,
}

impl Sessions {
    pub(crate) fn new() -> Sessions {
        Sessions {
            dir: tempfile::Builder::new()
                .prefix("nsbox-run-")
                .tempdir()
                .unwrap(),
            made: Default::default(),
        }
    }

    pub(crate) fn cmd(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = nsbox_cmd(args);
        cmd.env("NSBOX_RUN_DIR", self.dir.path());
        cmd.stdin(Stdio::null());
        cmd
    }

    pub(crate) fn run(&self, args: &[&str]) -> Run {
        self.cmd(args).output().expect("run nsbox").into()
    }

    pub(crate) fn create(&self, args: &[&str]) -> String {
        let mut full = vec!["create"];
        full.extend_from_slice(args);
        let r = self.run(&full);
        assert_eq!(r.code, 0, "{r:?}");
        let id = r.stdout.trim().to_string();
        self.made.borrow_mut().push(id.clone());
        id
    }
}

impl Drop for Sessions {
    fn drop(&mut self) {
        for id in self.made.borrow().iter() {
            let _ = self.run(&["rm", "-f", id]);
        }
    }
}

/// "2026-12-04T14:52:01.123Z"
fn is_timestamp(v: &serde_json::Value) -> bool {
    v.as_str().is_some_and(|s| {
        s.len() == 24
            && s.ends_with('Z')
            && s.as_bytes()[10] == b'T'
            && s[..4].parse::<u32>().is_ok_and(|y| y >= 2024)
    })
}

/// A busy loop long enough that its CPU time is not zero.
const BUSY: &str = "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done";

#[test]
fn json_events_carry_time_phase_and_usage() {
    require_root!();
    let script = format!("{BUSY}; echo hi; echo err >&2; exit 3");
    let r = exec(&["--json", "--", "/bin/sh", "-c", &script]);
    assert_eq!(r.code, 3, "{r:?}");
    let ev = events(&r.stdout);
    for e in &ev {
        assert!(is_timestamp(&e["ts"]), "every event has a time: {e}");
        assert!(e.get("exec_id").is_none(), "a one-shot has no exec id: {e}");
    }
    let out = ev.iter().find(|e| e["type"] == "stdout").unwrap();
    assert_eq!(out["data"], "hi\n");
    assert_eq!(out["phase"], "run");
    let err = ev.iter().find(|e| e["type"] == "stderr").unwrap();
    assert_eq!(err["phase"], "run");
    let exit = ev.last().unwrap();
    assert_eq!(exit["type"], "exit");
    assert!(
        exit["memory_peak_bytes"].as_u64().is_some_and(|b| b > 0),
        "the sandbox cgroup's memory peak: {exit}"
    );
    assert!(
        exit["cpu_usage_usec"].as_u64().is_some_and(|u| u > 0),
        "the command's CPU time: {exit}"
    );
}

#[test]
fn result_json_prints_one_document() {
    require_root!();
    // Output masked and capped like the stream's; binary output as base64.
    let r = exec(&[
        "--result-json",
        "--secret",
        "TOKEN=hunter2-secret",
        "--",
        "/bin/sh",
        "-c",
        "echo out $TOKEN; printf 'e\\377' >&2; exit 7",
    ]);
    assert_eq!(r.code, 7, "{r:?}");
    assert_eq!(r.stdout.lines().count(), 1, "one document: {r:?}");
    let doc: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(doc["code"], 7);
    assert_eq!(doc["stdout"], "out ***\n");
    assert!(doc["stderr"].is_null());
    assert_eq!(doc["stderr_b64"], "Zf8=");
    assert_eq!(doc["truncated"], false);
    assert_eq!(doc["timeout"], false);
    assert_eq!(doc["oom"], false);
    assert!(doc["signal"].is_null());
    assert!(doc["error"].is_null());
    assert!(doc["duration_ms"].as_f64().is_some_and(|d| d > 0.0));
    assert!(doc["memory_peak_bytes"].as_u64().is_some());
    assert!(doc["id"].as_str().is_some_and(|id| id.len() == 12));
    assert!(is_timestamp(&doc["ts"]));
    assert!(!r.stdout.contains("hunter2"));

    let capped = exec(&[
        "--result-json",
        "--max-output",
        "4",
        "--",
        "/bin/echo",
        "123456789",
    ]);
    let doc: serde_json::Value = serde_json::from_str(&capped.stdout).unwrap();
    assert_eq!(doc["stdout"], "1234");
    assert_eq!(doc["truncated"], true);

    let timed = exec(&[
        "--result-json",
        "--timeout",
        "300ms",
        "--",
        "sleep",
        "31403",
    ]);
    assert_eq!(timed.code, 124, "{timed:?}");
    let doc: serde_json::Value = serde_json::from_str(&timed.stdout).unwrap();
    assert_eq!(doc["timeout"], true);
    assert_eq!(doc["code"], 124);

    let signaled = exec(&["--result-json", "--", "/bin/sh", "-c", "kill -TERM $$"]);
    let doc: serde_json::Value = serde_json::from_str(&signaled.stdout).unwrap();
    assert_eq!(doc["signal"], "SIGTERM");
    assert_eq!(doc["code"], 143);

    // nsbox's own failure is the same document, with `error`.
    let bad = exec(&[
        "--result-json",
        "--rootfs",
        "/nonexistent-31404",
        "--",
        "true",
    ]);
    assert_eq!(bad.code, 121, "{bad:?}");
    assert_eq!(bad.stdout.lines().count(), 1, "{bad:?}");
    let doc: serde_json::Value = serde_json::from_str(&bad.stdout).unwrap();
    assert_eq!(doc["code"], 121);
    assert_eq!(doc["error"]["phase"], "usage");
    assert!(doc["id"].is_null());

    // Not with --json or -t.
    let both = exec(&["--result-json", "--json", "--", "true"]);
    assert_ne!(both.code, 0);
}

#[test]
fn network_events_are_stamped_and_kept_in_the_result() {
    require_root!();
    // A name off the allowlist is refused by nsbox's resolver itself: nothing leaves the host.
    let flags = ["--net", "filtered", "--allow", "only.example"];
    let cmd = ["--", "getent", "hosts", "refused-31411.example"];
    let r = exec(&[&["--json"][..], &flags, &cmd].concat());
    let ev = events(&r.stdout);
    let dns: Vec<_> = ev.iter().filter(|e| e["type"] == "dns").collect();
    assert!(!dns.is_empty(), "{r:?}");
    for e in &dns {
        assert!(is_timestamp(&e["ts"]), "{e}");
        assert_eq!(e["decision"], "refused");
    }
    let r = exec(&[&["--result-json"][..], &flags, &cmd].concat());
    let doc: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let network = doc["network"].as_array().unwrap();
    assert!(!network.is_empty(), "{doc}");
    assert!(network.iter().all(|e| e["type"] == "dns"
        && e["name"] == "refused-31411.example"
        && is_timestamp(&e["ts"])));
}

#[test]
fn session_results_carry_the_exec_id_and_session_usage() {
    require_root!();
    let s = Sessions::new();
    let id = s.create(&["--secret", "TOKEN=hunter2-secret"]);
    let script = format!("{BUSY}; echo $TOKEN; exit 2");
    let r = s.run(&[
        "exec",
        "--session",
        &id,
        "--json",
        "--",
        "/bin/sh",
        "-c",
        &script,
    ]);
    assert_eq!(r.code, 2, "{r:?}");
    let ev = events(&r.stdout);
    assert_eq!(ev[0]["type"], "start", "{ev:?}");
    assert_eq!(ev[0]["id"], id.as_str());
    let exec_id = ev[0]["exec_id"].as_u64().expect("start has the exec id");
    for e in &ev {
        assert_eq!(e["exec_id"], exec_id, "every event has the exec id: {e}");
        assert!(is_timestamp(&e["ts"]), "{e}");
    }
    let out = ev.iter().find(|e| e["type"] == "stdout").unwrap();
    assert_eq!(out["data"], "***\n");
    assert_eq!(out["phase"], "run");
    let exit = ev.last().unwrap();
    assert_eq!(exit["type"], "exit");
    // The session's cgroup: its memory peak is always measurable here.
    assert!(
        exit["memory_peak_bytes"].as_u64().is_some_and(|b| b > 0),
        "{exit}"
    );

    let r = s.run(&[
        "exec",
        "--session",
        &id,
        "--result-json",
        "--",
        "/bin/sh",
        "-c",
        "echo out; echo err >&2",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    let doc: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(doc["id"], id.as_str());
    assert!(
        doc["exec_id"].as_u64().is_some_and(|n| n > exec_id),
        "a later command has a later id: {doc}"
    );
    assert_eq!(doc["stdout"], "out\n");
    assert_eq!(doc["stderr"], "err\n");
    assert_eq!(doc["code"], 0);
}

#[test]
fn a_secret_for_one_session_command_is_masked_and_not_kept() {
    require_root!();
    let s = Sessions::new();
    let id = s.create(&[]);
    let r: Run = s
        .cmd(&[
            "exec",
            "--session",
            &id,
            "--secret-env",
            "MINTED_TOKEN",
            "--",
            "/bin/sh",
            "-c",
            "echo token=$MINTED_TOKEN",
        ])
        .env("MINTED_TOKEN", "gho_minted-31405")
        .output()
        .unwrap()
        .into();
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stdout, "token=***\n");
    // The next command of the session does not see it.
    let later = s.run(&[
        "exec",
        "--session",
        &id,
        "--",
        "/bin/sh",
        "-c",
        "echo later=$MINTED_TOKEN",
    ]);
    assert_eq!(later.stdout, "later=\n", "{later:?}");
    // A value on the command line is refused, without echoing it.
    let inline = s.run(&[
        "exec",
        "--session",
        &id,
        "--secret-env",
        "MINTED_TOKEN=gho_inline-31406",
        "--",
        "true",
    ]);
    assert_eq!(inline.code, 121, "{inline:?}");
    assert!(!inline.stderr.contains("gho_inline"), "{inline:?}");
    // Other sandbox-defining flags are still refused with --session.
    let other = s.run(&["exec", "--session", &id, "--memory", "64m", "--", "true"]);
    assert_eq!(other.code, 121, "{other:?}");
}

#[test]
fn logs_show_a_sessions_output_masked_and_follow_until_it_stops() {
    require_root!();
    let s = Sessions::new();
    let id = s.create(&["--secret", "TOKEN=hunter2-secret", "--setup", "echo set up"]);
    let r = s.run(&[
        "exec",
        "--session",
        &id,
        "--",
        "/bin/sh",
        "-c",
        "echo out $TOKEN; echo err >&2",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    let logs = s.run(&["logs", &id]);
    assert_eq!(logs.code, 0, "{logs:?}");
    assert_eq!(logs.stdout, "set up\nout ***\n");
    assert_eq!(logs.stderr, "err\n");
    let json = s.run(&["logs", "--json", &id]);
    let ev = events(&json.stdout);
    assert_eq!(ev[0]["phase"], "setup");
    assert_eq!(ev[1]["phase"], "run");
    assert!(ev
        .iter()
        .all(|e| is_timestamp(&e["ts"]) && e["exec_id"].is_u64()));
    assert!(!json.stdout.contains("hunter2"));

    // -f prints what comes later, and ends when the session stops.
    let follower = s
        .cmd(&["logs", "-f", &id])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let r = s.run(&["exec", "--session", &id, "--", "echo", "later"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(s.run(&["stop", &id]).code, 0);
    let out = follower.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "set up\nout ***\nlater\n"
    );
    // A stopped session's output stays readable until it is removed.
    assert_eq!(s.run(&["logs", &id]).stdout, "set up\nout ***\nlater\n");
    assert_eq!(s.run(&["logs", "nosuch-31409"]).code, 121);
}
