//! How long sessions live: `create --ttl` (a hard lifetime, busy or not) and `--rm` (removed
//! after a grace period once stopped).

use crate::require_root;
use crate::results::Sessions;
use crate::support::*;

fn ps(s: &Sessions) -> Vec<serde_json::Value> {
    let r = s.run(&["ps", "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    serde_json::from_str::<serde_json::Value>(&r.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn find(s: &Sessions, id: &str) -> Option<serde_json::Value> {
    ps(s).into_iter().find(|r| r["id"] == id)
}

#[test]
fn a_ttl_session_is_stopped_at_its_deadline_even_while_busy_and_removed_with_rm() {
    require_root!();
    let s = Sessions::new();
    let id = s.create(&[
        "--ttl",
        "1s",
        "--rm",
        "--rm-grace",
        "1s",
        "--max-age",
        "none",
    ]);
    let listed = find(&s, &id).unwrap();
    assert_eq!(listed["ttl_secs"], 1, "{listed}");
    assert_eq!(listed["rm_after_secs"], 1, "{listed}");
    // Busy past the deadline: the command is ended with the session.
    let r = s.run(&["exec", "--session", &id, "--", "sleep", "31408"]);
    assert_eq!(r.code, 143, "ended by the stop's SIGTERM: {r:?}");
    // Stopped, with why, during the grace period...
    assert!(
        eventually(10.0, || find(&s, &id)
            .is_some_and(|r| r["state"] == "stopped")),
        "{:?}",
        find(&s, &id)
    );
    assert_eq!(
        find(&s, &id).unwrap()["stopped"]["reason"],
        "reached its --ttl"
    );
    // ...then gone.
    assert!(
        eventually(10.0, || find(&s, &id).is_none()),
        "{:?}",
        find(&s, &id)
    );
    assert!(host_processes_matching("31408").is_empty());
}

#[test]
fn rm_removes_a_stopped_session_and_ttl_alone_keeps_it() {
    require_root!();
    let s = Sessions::new();
    let kept = s.create(&["--ttl", "1s"]);
    let removed = s.create(&["--rm", "--rm-grace", "0s"]);
    let r = s.run(&["stop", &removed]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(eventually(10.0, || find(&s, &removed).is_none()));
    // --ttl alone: stopped at the deadline, kept for inspection until rm/prune.
    assert!(eventually(10.0, || find(&s, &kept)
        .is_some_and(|r| r["state"] == "stopped")));
    assert_eq!(
        find(&s, &kept).unwrap()["stopped"]["reason"],
        "reached its --ttl"
    );
    // --rm-grace needs --rm; a bad --ttl is a usage error.
    assert_ne!(s.run(&["create", "--rm-grace", "1s"]).code, 0);
    assert_ne!(s.run(&["create", "--ttl", "soon"]).code, 0);
}
