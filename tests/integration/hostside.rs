//! Attacks on nsbox's host-side commands (issue 10): what an earlier sandbox, a planted file or
//! a squatter on a socket could make nsbox do as root on the host. Each test attempts the
//! attack through the real CLI and expects denial.

use std::os::fd::AsFd;
use std::path::Path;
use std::process::Stdio;

use crate::require_root;
use crate::support::*;

/// A session record as the supervisor writes it, with a chosen id and supervisor pid.
fn forged_record(id: &str, supervisor_pid: u32, stopped: bool) -> Vec<u8> {
    let stopped = stopped.then(|| serde_json::json!({"at": 1, "reason": "stopped"}));
    serde_json::to_vec(&serde_json::json!({
        "id": id, "name": null, "created": 1, "root": "host", "profile": "default",
        "network": "none", "memory": null, "cpu_millis": null, "pids": null,
        "uid": 100, "gid": 101, "max_age": null, "supervisor_pid": supervisor_pid,
        "init_pid": 0, "workdir": "/sandbox", "max_output": null, "stopped": stopped,
    }))
    .unwrap()
}

fn private_dir(path: &Path) {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(path)
        .unwrap();
}

fn nsbox_in(run_dir: &Path, args: &[&str]) -> Run {
    nsbox_cmd(args)
        .env("NSBOX_RUN_DIR", run_dir)
        .stdin(Stdio::null())
        .output()
        .expect("run nsbox")
        .into()
}

/// Session references are names: `..` never reaches a record outside the sessions directory,
/// and an id read back from a record is never a path that `rm` would delete.
#[test]
fn session_reference_path_traversal_is_refused() {
    require_root!();
    let run = tempfile::Builder::new()
        .prefix("nsbox-run-")
        .tempdir()
        .unwrap();
    let victim = tempfile::tempdir().unwrap();
    std::fs::write(victim.path().join("precious"), "keep me").unwrap();
    let victim_id = victim.path().to_str().unwrap();
    private_dir(&run.path().join("sessions"));
    // A record outside the store, where `sessions/../planted` leads.
    private_dir(&run.path().join("planted"));
    std::fs::write(
        run.path().join("planted/session.json"),
        forged_record(victim_id, 1, true),
    )
    .unwrap();
    // A record inside the store whose id is a path.
    private_dir(&run.path().join("sessions/aaaaaaaaaaaa"));
    std::fs::write(
        run.path().join("sessions/aaaaaaaaaaaa/session.json"),
        forged_record(victim_id, 1, true),
    )
    .unwrap();
    for args in [
        vec!["rm", "../planted"],
        vec!["rm", "-f", "../planted"],
        vec!["stop", "../planted"],
        vec!["exec", "--session", "../planted", "--", "/bin/true"],
        vec!["rm", "-f", "aaaaaaaaaaaa"],
        vec!["stop", "aaaaaaaaaaaa"],
        vec!["prune"],
    ] {
        let r = nsbox_in(run.path(), &args);
        assert!(
            victim.path().join("precious").exists(),
            "nsbox {args:?} deleted a directory outside the store: {r:?}"
        );
        if args[0] != "prune" {
            assert_ne!(r.code, 0, "nsbox {args:?} accepted a path: {r:?}");
        }
    }
    assert!(run.path().join("planted/session.json").exists());
}

/// `exec --session` sends argv, environment and stdio only to the session's own supervisor:
/// a listener squatting on the control socket's path (here: not the recorded supervisor pid)
/// receives nothing.
#[test]
fn session_socket_impostor_is_refused() {
    require_root!();
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let run = tempfile::Builder::new()
        .prefix("nsbox-run-")
        .tempdir()
        .unwrap();
    let id = "bbbbbbbbbbbb";
    let dir = run.path().join("sessions").join(id);
    private_dir(&dir);
    std::fs::write(dir.join("session.json"), forged_record(id, 1, false)).unwrap();
    // Hold the lock as a supervisor would, so the session looks alive.
    let lock = std::fs::File::create(dir.join("lock")).unwrap();
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).unwrap();
    let listener = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    let addr = SocketAddrUnix::new(dir.join("control.sock")).unwrap();
    rustix::net::bind(&listener, &addr).unwrap();
    rustix::net::listen(&listener, 4).unwrap();
    // Accept one connection and read what the client sends first (nothing, once it checks
    // who listens; the request with the secret otherwise). The client closes either way.
    let got = std::thread::spawn(move || {
        let conn = rustix::net::accept(&listener).unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let n = rustix::net::recv(conn.as_fd(), &mut buf, rustix::net::RecvFlags::empty())
            .map(|(n, _)| n)
            .unwrap_or(0);
        buf.truncate(n);
        buf
    });
    let r = nsbox_cmd(&[
        "exec",
        "--session",
        id,
        "-e",
        "TOKEN=s3cret-for-the-supervisor-only",
        "--",
        "/bin/echo",
        "argv-for-the-supervisor-only",
    ])
    .env("NSBOX_RUN_DIR", run.path())
    .stdin(Stdio::null())
    .output()
    .map(Run::from)
    .unwrap();
    let sent = got.join().unwrap();
    let sent = String::from_utf8_lossy(&sent);
    assert!(
        !sent.contains("s3cret") && !sent.contains("argv-for"),
        "the impostor received the request: {sent:?}"
    );
    assert_eq!(r.code, 125, "{r:?}");
    assert!(r.stderr.contains("not the session's supervisor"), "{r:?}");
    drop(lock);
}
