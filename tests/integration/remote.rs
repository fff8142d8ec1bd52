//! `nsbox --host URL` / `NSBOX_HOST`: the real binary as a client of a real `nsbox serve`
//! started by the test, over the unix socket and over TCP with a key. The local run of the
//! same command is the reference for output, documents and exit codes.

use std::io::Write;
use std::process::Stdio;

use crate::require_root;
use crate::serve::TestServer;
use crate::support::{eventually, nsbox_cmd, run_with_input, Run};

/// How to reach a server: `NSBOX_HOST` and, for TCP, `NSBOX_API_KEY`.
struct Remote {
    host: String,
    key: Option<String>,
}

impl Remote {
    fn unix(server: &TestServer) -> Remote {
        Remote {
            host: format!("unix://{}", server.socket.display()),
            key: None,
        }
    }

    fn tcp(server: &TestServer, key: &str) -> Remote {
        Remote {
            host: format!("http://{}", server.tcp),
            key: Some(key.to_string()),
        }
    }

    fn cmd(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = nsbox_cmd(args);
        cmd.env("NSBOX_HOST", &self.host)
            .env_remove("NSBOX_API_KEY");
        if let Some(k) = &self.key {
            cmd.env("NSBOX_API_KEY", k);
        }
        cmd
    }

    fn run(&self, args: &[&str]) -> Run {
        self.cmd(args)
            .stdin(Stdio::null())
            .output()
            .expect("run nsbox")
            .into()
    }

    fn run_stdin(&self, args: &[&str], input: &[u8]) -> Run {
        run_with_input(self.cmd(args), input)
    }

    /// The sandboxes the server lists for this caller.
    fn listed(&self) -> Vec<String> {
        let out = self.run(&["ps", "-q"]);
        assert_eq!(out.code, 0, "{out:?}");
        out.stdout.lines().map(str::to_string).collect()
    }
}

fn local(args: &[&str]) -> Run {
    nsbox_cmd(args)
        .env_remove("NSBOX_HOST")
        .stdin(Stdio::null())
        .output()
        .unwrap()
        .into()
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

/// The keys of an object and their JSON kinds (null, bool, number, string, ...).
fn shape(v: &serde_json::Value) -> Vec<(String, &'static str)> {
    let kind = |v: &serde_json::Value| match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "bool",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    };
    let mut keys: Vec<(String, &'static str)> = v
        .as_object()
        .unwrap()
        .iter()
        // Resource use is null where the cgroup does not tell (a session's first read).
        .filter(|(k, _)| !["memory_peak_bytes", "cpu_usage_usec", "ts"].contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), kind(v)))
        .collect();
    keys.sort();
    keys
}

/// A one-shot through the unix socket: exit codes, stdout and stderr apart, the timeout,
/// `--json` and `--result-json` as locally, a command that is not found, a refused host-only
/// flag; nothing is left on the server afterwards.
#[test]
fn remote_run_over_the_unix_socket_behaves_like_local() {
    require_root!();
    let server = TestServer::start(&[]);
    let remote = Remote::unix(&server);

    let out = remote.run(&["run", "--", "sh", "-c", "echo out; echo err >&2; exit 3"]);
    assert_eq!(
        (out.code, out.stdout.as_str(), out.stderr.as_str()),
        (3, "out\n", "err\n"),
        "{out:?}"
    );
    let out = remote.run(&["run", "--", "true"]);
    assert_eq!((out.code, out.stdout.as_str()), (0, ""), "{out:?}");

    let out = remote.run(&["run", "--timeout", "1s", "--", "sleep", "30"]);
    assert_eq!(out.code, 124, "{out:?}");
    assert!(out.stderr.contains("timed out after 1s"), "{out:?}");

    // --result-json: the local document's shape, with the command's values.
    let script = "printf 'x\\n'; printf 'y' >&2; exit 2";
    let there = remote.run(&["run", "--result-json", "--", "sh", "-c", script]);
    let here = local(&["run", "--result-json", "--", "sh", "-c", script]);
    assert_eq!((there.code, here.code), (2, 2), "{there:?} {here:?}");
    let (there, here) = (json(&there.stdout), json(&here.stdout));
    assert_eq!(shape(&there), shape(&here), "{there} vs {here}");
    for field in [
        "code", "stdout", "stderr", "timeout", "oom", "signal", "error",
    ] {
        assert_eq!(there[field], here[field], "{field}: {there} vs {here}");
    }

    // --json: the same events, in the same order and shape.
    let there = remote.run(&[
        "run",
        "--json",
        "-l",
        "job=7",
        "--",
        "sh",
        "-c",
        "echo hi; exit 4",
    ]);
    let here = local(&[
        "run",
        "--json",
        "-l",
        "job=7",
        "--",
        "sh",
        "-c",
        "echo hi; exit 4",
    ]);
    assert_eq!((there.code, here.code), (4, 4));
    let events = |text: &str| -> Vec<serde_json::Value> { text.lines().map(json).collect() };
    let (there, here) = (events(&there.stdout), events(&here.stdout));
    let types = |e: &[serde_json::Value]| -> Vec<String> {
        e.iter()
            .map(|e| e["type"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(types(&there), types(&here));
    for (a, b) in there.iter().zip(&here) {
        assert_eq!(shape(a), shape(b), "{a} vs {b}");
    }
    assert_eq!(there[0]["labels"]["job"], "7");
    assert_eq!(there[1]["data"], "hi\n");
    assert_eq!(there.last().unwrap()["code"], 4);

    // --out copies out of the sandbox before it is deleted.
    let outdir = tempfile::tempdir().unwrap();
    let spec = format!("/sandbox/made:{}", outdir.path().join("got").display());
    let out = remote.run(&[
        "run",
        "--out",
        &spec,
        "--",
        "sh",
        "-c",
        "mkdir made; echo x > made/f",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        std::fs::read_to_string(outdir.path().join("got/made/f")).unwrap(),
        "x\n"
    );

    // The server's own failures keep their code: an image it does not have.
    let out = remote.run(&["run", "--image", "no-such-image-xyz:1", "--", "true"]);
    assert_eq!(out.code, 123, "{out:?}");
    assert!(out.stderr.contains("no-such-image-xyz"), "{out:?}");

    let out = remote.run(&["run", "--", "no-such-program-xyz"]);
    assert_eq!(out.code, 127, "{out:?}");
    assert!(out.stderr.contains("no-such-program-xyz"), "{out:?}");

    // A flag that names something on this machine is refused by name; nothing is made.
    let out = remote.run(&["run", "-v", "/tmp:/data", "--", "true"]);
    assert_eq!(out.code, 121, "{out:?}");
    assert!(out.stderr.contains("--mount/-v"), "{out:?}");
    let out = remote.run(&["run", "--json", "--copy", "/etc/hostname:x", "--", "true"]);
    assert_eq!(out.code, 121, "{out:?}");
    let events = out.stdout.lines().map(json).collect::<Vec<_>>();
    assert!(
        events[0]["message"].as_str().unwrap().contains("--copy"),
        "{events:?}"
    );
    // A command with no remote form is refused too.
    let out = remote.run(&["images"]);
    assert_eq!(out.code, 121, "{out:?}");
    assert!(out.stderr.contains("nsbox images"), "{out:?}");

    assert!(remote.listed().is_empty(), "every one-shot was deleted");
}

/// A session over TCP with a key: create, exec with stdin, cp both ways (a tree and a file,
/// a tar stream), ps, stop, rm; a wrong and a missing key, an unreachable server.
#[test]
fn remote_session_flow_over_tcp_with_a_key() {
    require_root!();
    let server = TestServer::start(&[]);
    let key = server.key("cli", None);
    let remote = Remote::tcp(&server, &key);

    let out = remote.run(&[
        "create",
        "--name",
        "remote-one",
        "-l",
        "job=42",
        "-e",
        "GREETING=hi",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let id = out.stdout.trim().to_string();
    assert_eq!(remote.listed(), vec![id.clone()]);
    let out = remote.run(&["ps", "--json", "--filter", "label=job=42"]);
    let rows = json(&out.stdout);
    assert_eq!(rows[0]["id"], id.as_str(), "{rows}");
    assert_eq!(rows[0]["name"], "remote-one");
    assert_eq!(rows[0]["state"], "running");
    let out = remote.run(&["ps", "--filter", "label=job=other", "-q"]);
    assert_eq!(out.stdout, "");

    let out = remote.run_stdin(
        &[
            "exec",
            "--session",
            &id,
            "-i",
            "--",
            "sh",
            "-c",
            "cat; echo $GREETING >&2; exit 5",
        ],
        b"from stdin\n",
    );
    assert_eq!(
        (out.code, out.stdout.as_str(), out.stderr.as_str()),
        (5, "from stdin\n", "hi\n"),
        "{out:?}"
    );

    // cp in: a tree into an existing directory (under its own name), a file as a new name.
    let host = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(host.path().join("tree/sub")).unwrap();
    std::fs::write(host.path().join("tree/sub/a.txt"), "alpha\n").unwrap();
    std::fs::write(host.path().join("file.txt"), "file\n").unwrap();
    let tree = host.path().join("tree");
    let out = remote.run(&["cp", tree.to_str().unwrap(), &format!("{id}:/sandbox/")]);
    assert_eq!(out.code, 0, "{out:?}");
    let file = host.path().join("file.txt");
    let out = remote.run(&["cp", file.to_str().unwrap(), &format!("{id}:renamed.txt")]);
    assert_eq!(out.code, 0, "{out:?}");
    let out = remote.run(&[
        "exec",
        "--session",
        &id,
        "--",
        "sh",
        "-c",
        "cat /sandbox/tree/sub/a.txt /sandbox/renamed.txt; stat -c %u /sandbox/tree/sub/a.txt",
    ]);
    assert_eq!(out.stdout, "alpha\nfile\n100\n", "{out:?}");

    // cp out: the tree as a new path, a file into an existing directory, a tar stream.
    let back = host.path().join("back");
    let out = remote.run(&["cp", &format!("{id}:/sandbox/tree"), back.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        std::fs::read_to_string(back.join("sub/a.txt")).unwrap(),
        "alpha\n"
    );
    let out = remote.run(&[
        "cp",
        &format!("{id}:renamed.txt"),
        host.path().to_str().unwrap(),
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        std::fs::read_to_string(host.path().join("renamed.txt")).unwrap(),
        "file\n"
    );
    let tar = remote
        .cmd(&["cp", &format!("{id}:/sandbox/tree"), "-"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(tar.status.success(), "{tar:?}");
    let listing = std::process::Command::new("tar")
        .arg("-t")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child.stdin.take().unwrap().write_all(&tar.stdout)?;
            child.wait_with_output()
        })
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&listing.stdout),
        "tree/\ntree/sub/\ntree/sub/a.txt\n"
    );
    let missing = remote.run(&["cp", &format!("{id}:/sandbox/none"), back.to_str().unwrap()]);
    assert_eq!(missing.code, 125, "{missing:?}");
    assert!(missing.stderr.contains("/sandbox/none"), "{missing:?}");

    // -u: another user of the sandbox for one command, as locally; a name the server does not
    // know is its 400.
    let out = remote.run(&["exec", "--session", &id, "-u", "root", "--", "id", "-u"]);
    assert_eq!((out.code, out.stdout.as_str()), (0, "0\n"), "{out:?}");
    let out = remote.run(&["exec", "--session", &id, "-u", "postgres", "--", "true"]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("user"), "{out:?}");

    // stats, pause and resume, printed as locally.
    let out = remote.run(&["stats", "--json", &id]);
    assert_eq!(out.code, 0, "{out:?}");
    let stats = json(&out.stdout);
    assert!(stats["pids_current"].as_u64().is_some(), "{out:?}");
    assert_eq!(stats["paused"], false, "{out:?}");
    let out = remote.run(&["stats", &id]);
    assert!(out.stdout.starts_with("memory "), "{out:?}");
    let out = remote.run(&["pause", &id]);
    assert_eq!((out.code, out.stdout.trim()), (0, id.as_str()), "{out:?}");
    let out = remote.run(&["pause", &id]);
    assert_eq!(
        out.stdout.trim(),
        format!("{id} (already paused)"),
        "{out:?}"
    );
    assert_eq!(
        json(&remote.run(&["stats", "--json", &id]).stdout)["paused"],
        true
    );
    let out = remote.run(&["exec", "--session", &id, "--", "true"]);
    assert_ne!(out.code, 0, "a paused sandbox runs nothing: {out:?}");
    let out = remote.run(&["resume", &id]);
    assert_eq!((out.code, out.stdout.trim()), (0, id.as_str()), "{out:?}");
    let out = remote.run(&["resume", &id]);
    assert_eq!(
        out.stdout.trim(),
        format!("{id} (already running)"),
        "{out:?}"
    );
    assert_eq!(
        remote.run(&["exec", "--session", &id, "--", "true"]).code,
        0
    );
    let out = remote.run(&["stats", "no-such-sandbox"]);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(out.stderr.contains("404"), "{out:?}");

    // rm refuses a running sandbox without -f; stop, then rm.
    let out = remote.run(&["rm", &id]);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(out.stderr.contains("is running"), "{out:?}");
    let out = remote.run(&["stop", "-t", "1s", &id]);
    assert_eq!((out.code, out.stdout.trim()), (0, id.as_str()), "{out:?}");
    let out = remote.run(&["ps", "--json"]);
    assert_eq!(json(&out.stdout)[0]["state"], "stopped", "{out:?}");
    let out = remote.run(&["rm", &id]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(remote.listed().is_empty());
    let out = remote.run(&["exec", "--session", &id, "--", "true"]);
    assert_eq!(out.code, 121, "{out:?}");
    assert!(out.stderr.contains("404 sandbox_not_found"), "{out:?}");

    // A setup script that fails: its exit code, and nothing is left.
    let out = remote.run(&["create", "--setup", "echo broken >&2; exit 7"]);
    assert_eq!(out.code, 7, "{out:?}");
    assert!(
        out.stderr.contains("the setup script failed (exit 7)"),
        "{out:?}"
    );
    assert!(remote.listed().is_empty());

    // Keys: wrong and missing; the server unreachable.
    let wrong = Remote::tcp(&server, "nsbox_not_a_key");
    let out = wrong.run(&["run", "--", "true"]);
    assert_eq!(out.code, 121, "{out:?}");
    assert!(
        out.stderr.contains("401 unauthorized") && out.stderr.contains("NSBOX_API_KEY"),
        "{out:?}"
    );
    let keyless = Remote {
        host: format!("http://{}", server.tcp),
        key: None,
    };
    let out = keyless.run(&["ps"]);
    assert_eq!(out.code, 121, "{out:?}");
    assert!(out.stderr.contains("NSBOX_API_KEY is not set"), "{out:?}");
    // A port nobody listens on: the server's own port after it stopped.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let gone = Remote {
        host: format!("http://127.0.0.1:{port}"),
        key: Some(key.clone()),
    };
    let out = gone.run(&["run", "--", "true"]);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(out.stderr.contains("cannot reach nsbox serve"), "{out:?}");
    let out = nsbox_cmd(&["--host", "ftp://x", "ps"]).output().unwrap();
    assert_eq!(out.status.code(), Some(121), "{out:?}");
}

/// `commit` and `fork` through the server print what the local commands print; the forks see
/// the parent's files; bad requests are the server's 4xx with the local exit codes.
#[test]
fn remote_commit_and_fork_print_as_locally() {
    require_root!();
    let server = TestServer::start(&[]);
    server.load_base_image("remotebase:1");
    let remote = Remote::tcp(&server, &server.key("snap", None));

    let out = remote.run(&["create", "--image", "remotebase:1"]);
    assert_eq!(out.code, 0, "{out:?}");
    let id = out.stdout.trim().to_string();
    let out = remote.run(&[
        "exec",
        "--session",
        &id,
        "--",
        "sh",
        "-c",
        "echo kept > /sandbox/mark",
    ]);
    assert_eq!(out.code, 0, "{out:?}");

    let out = remote.run(&["commit", &id, "remotecommit:2"]);
    assert_eq!(out.code, 0, "{out:?}");
    let (name, digest) = out.stdout.trim().split_once(' ').expect("name digest");
    assert!(name.ends_with("remotecommit:2"), "{out:?}");
    assert!(digest.starts_with("sha256:"), "{out:?}");
    assert!(out.stderr.contains("committed"), "{out:?}");
    let out = remote.run(&["commit", "no-such-sandbox", "x:1"]);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(out.stderr.contains("404"), "{out:?}");

    let out = remote.run(&["fork", &id, "-n", "2", "--name", "remote-kid"]);
    assert_eq!(out.code, 0, "{out:?}");
    let kids: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(kids.len(), 2, "{out:?}");
    assert!(out.stderr.contains("not carried over"), "{out:?}");
    for kid in &kids {
        let out = remote.run(&["exec", "--session", kid, "--", "cat", "/sandbox/mark"]);
        assert_eq!((out.code, out.stdout.trim()), (0, "kept"), "{out:?}");
    }
    let out = remote.run(&["ps", "-q", "--filter", "name=remote-kid-1"]);
    assert_eq!(out.stdout.trim(), kids[0], "{out:?}");
    let out = remote.run(&["fork", &id, "-n", "0"]);
    assert_eq!(out.code, 121, "a bad count is the server's 400: {out:?}");
    assert_eq!(remote.listed().len(), 3, "nothing made by the refused fork");

    let mut all = vec!["rm", "-f", id.as_str()];
    all.extend(&kids);
    assert_eq!(remote.run(&all).code, 0);
    assert!(remote.listed().is_empty());
}

/// Ctrl-C during a remote one-shot deletes its sandbox, and the run exits 130 as locally.
#[test]
fn remote_run_interrupted_deletes_its_sandbox() {
    require_root!();
    let server = TestServer::start(&[]);
    let remote = Remote::unix(&server);
    let child = remote
        .cmd(&["run", "--", "sleep", "60"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        eventually(30.0, || remote.listed().len() == 1),
        "the sandbox appears"
    );
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
        rustix::process::Signal::INT,
    )
    .unwrap();
    let out: Run = child.wait_with_output().unwrap().into();
    assert_eq!(out.code, 130, "{out:?}");
    assert!(out.stderr.contains("interrupted by SIGINT"), "{out:?}");
    assert!(remote.listed().is_empty(), "the sandbox was deleted");
}

/// An `https://` server: trusted through `NSBOX_CA_FILE`, refused without it.
#[test]
fn remote_over_tls_trusts_only_the_given_ca() {
    require_root!();
    let (server, cert) = TestServer::start_tls();
    let remote = Remote {
        host: format!("https://{}", server.tcp),
        key: Some(server.key("tls", None)),
    };
    let out: Run = remote
        .cmd(&["run", "--", "echo", "over tls"])
        .env("NSBOX_CA_FILE", &cert)
        .stdin(Stdio::null())
        .output()
        .unwrap()
        .into();
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "over tls\n"),
        "{out:?}"
    );
    let out = remote.run(&["run", "--", "true"]);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(
        out.stderr.contains("TLS with nsbox serve") && out.stderr.contains("NSBOX_CA_FILE"),
        "{out:?}"
    );
}
