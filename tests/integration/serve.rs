//! `nsbox serve`: a real server, real sandboxes, real HTTP clients (curl, and Python's
//! urllib from the standard library). Every test kills its server by pid and checks that
//! nothing it made is left.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use crate::require_root;
use crate::support::nsbox_cmd;

/// One server with its own state root, socket and loopback port (also used by `remote`).
pub(crate) struct TestServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pub(crate) socket: PathBuf,
    pub(crate) tcp: String,
}

impl TestServer {
    /// A server whose TCP listener speaks TLS with a fresh self-signed certificate for
    /// 127.0.0.1; the certificate's path, to trust (kept with the server's directory). An
    /// end-entity certificate: rustls clients refuse a CA certificate as a server's.
    pub(crate) fn start_tls() -> (TestServer, PathBuf) {
        let dir = tempfile::Builder::new()
            .prefix("nsbox-serve-")
            .tempdir()
            .unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let made = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
                "-addext",
                "basicConstraints=critical,CA:FALSE",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .unwrap();
        assert!(made.status.success(), "{made:?}");
        let server = TestServer::start_in(
            dir,
            &[
                "--tls-cert",
                cert.to_str().unwrap(),
                "--tls-key",
                key.to_str().unwrap(),
            ],
        );
        (server, cert)
    }

    pub(crate) fn start(extra: &[&str]) -> TestServer {
        let dir = tempfile::Builder::new()
            .prefix("nsbox-serve-")
            .tempdir()
            .unwrap();
        TestServer::start_in(dir, extra)
    }

    fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> TestServer {
        let socket = dir.path().join("serve.sock");
        let state = dir.path().join("state");
        let mut args = vec![
            "--state-root",
            state.to_str().unwrap(),
            "serve",
            "--socket",
            socket.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        let mut child = nsbox_cmd(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start nsbox serve");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let ready: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        let tcp = ready["tcp"].as_str().unwrap().to_string();
        TestServer {
            child: Some(child),
            dir,
            socket,
            tcp,
        }
    }

    /// Loads the tests' base image (busybox, `PATH=/bin`) into the server's store as `tag`.
    pub(crate) fn load_base_image(&self, tag: &str) {
        let layout = self.dir.path().join("layout");
        crate::oci_build::Layout::new(&layout).image(
            Some("1"),
            &[(crate::oci_build::base_layer(), crate::oci_build::Comp::Gzip)],
            serde_json::json!({"Env": ["PATH=/bin"]}),
        );
        let loaded = nsbox_cmd(&[
            "--state-root",
            self.state().to_str().unwrap(),
            "load",
            layout.to_str().unwrap(),
            "--tag",
            tag,
        ])
        .output()
        .unwrap();
        assert!(loaded.status.success(), "{loaded:?}");
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub(crate) fn key(&self, name: &str, max: Option<usize>) -> String {
        let max = max.map(|m| m.to_string());
        let state = self.state();
        let mut args = vec![
            "--state-root",
            state.to_str().unwrap(),
            "serve",
            "key",
            "add",
            name,
        ];
        if let Some(m) = &max {
            args.extend(["--max-sandboxes", m.as_str()]);
        }
        let out = nsbox_cmd(&args).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    fn remove_key(&self, name: &str) {
        let st = self.state();
        let out = nsbox_cmd(&[
            "--state-root",
            st.to_str().unwrap(),
            "serve",
            "key",
            "rm",
            name,
        ])
        .output()
        .unwrap();
        assert!(out.status.success(), "{out:?}");
    }

    /// curl over the unix socket (no key): (status, headers, body).
    fn local(&self, args: &[&str]) -> (u16, String, String) {
        let mut full = vec!["--unix-socket", self.socket.to_str().unwrap()];
        full.extend_from_slice(args);
        curl(&full)
    }

    /// curl over TCP, with `token` as the bearer if given.
    fn remote(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (u16, String, String) {
        let url = format!("http://{}{path}", self.tcp);
        let auth = token.map(|t| format!("Authorization: Bearer {t}"));
        let mut args = vec!["-X", method, url.as_str()];
        if let Some(a) = &auth {
            args.extend(["-H", a.as_str()]);
        }
        if let Some(b) = body {
            args.extend(["--data-binary", b]);
        }
        curl(&args)
    }

    /// The sandboxes the server has on record (its own bookkeeping, on disk).
    fn recorded(&self) -> Vec<String> {
        std::fs::read_dir(self.state().join("serve/sandboxes"))
            .map(|d| {
                d.flatten()
                    .filter_map(|e| {
                        e.file_name()
                            .to_str()?
                            .strip_suffix(".json")
                            .map(str::to_string)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// SIGTERM by pid, and wait: the server removes what it made.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
                rustix::process::Signal::TERM,
            );
            let _ = child.wait();
        }
    }

    /// SIGKILL by pid (the sandboxes stay, for the next server to adopt).
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let ids = self.recorded();
        self.stop();
        // Whatever a failed test left: removed like `nsbox rm -f` would.
        for id in ids {
            let _ = nsbox_cmd(&["rm", "-f", &id]).output();
        }
    }
}

fn curl(args: &[&str]) -> (u16, String, String) {
    let head = tempfile::NamedTempFile::new().unwrap();
    let out = Command::new("curl")
        .args([
            "-sS",
            "-N",
            "-D",
            head.path().to_str().unwrap(),
            "-w",
            "\n%{http_code}",
        ])
        .args(args)
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    let headers = std::fs::read_to_string(head.path()).unwrap_or_default();
    (code.trim().parse().unwrap_or(0), headers, body.to_string())
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{body:?}: {e}"))
}

fn session_ids() -> Vec<String> {
    let out = nsbox_cmd(&["ps", "--json"]).output().unwrap();
    json(&String::from_utf8_lossy(&out.stdout))
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

const PYTHON_CLIENT: &str = r#"
import base64, json, os, sys, urllib.request, urllib.error
base = os.environ["NSBOX_URL"]
key = os.environ["NSBOX_KEY"]

def call(method, path, body=None, raw=None, stream=False):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Authorization", "Bearer " + key)
    try:
        resp = urllib.request.urlopen(req)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
    if stream:
        return resp.status, [json.loads(line) for line in resp]
    payload = resp.read()
    if resp.headers.get("Content-Type") == "application/json":
        return resp.status, json.loads(payload)
    return resp.status, payload

out = {}
status, sb = call("POST", "/v1/sandboxes", {
    "network": {"mode": "filtered", "allow": ["api.example.com"], "deny": ["evil.example.com"], "log": True},
    "secrets": {"GH_TOKEN": "ghp_secretvalue123"},
    "env": {"JOB": "minion-7"},
    "labels": {"job": "minion-7"},
    "limits": {"memory": "256m", "pids": 128},
})
assert status == 201, (status, sb)
sid = sb["id"]
out["id"] = sid
out["network"] = sb["network"]
status, listed = call("GET", "/v1/sandboxes?label=job%3Dminion-7")
out["listed"] = [s["id"] for s in listed["sandboxes"]]
status, _ = call("PUT", "/v1/sandboxes/%s/files?path=repo/build.sh" % sid,
                 raw=b"echo building $JOB\necho token=$GH_TOKEN\necho artifact > out.txt\necho warn >&2\n")
out["put"] = status
status, events = call("POST", "/v1/sandboxes/%s/commands" % sid,
                      {"argv": ["sh", "build.sh"], "cwd": "/sandbox/repo"}, stream=True)
out["step1_status"] = status
out["step1_types"] = [e["type"] for e in events]
out["step1_stdout"] = "".join(e.get("data", "") for e in events if e["type"] == "stdout")
out["step1_stderr"] = "".join(e.get("data", "") for e in events if e["type"] == "stderr")
out["step1_exit"] = events[-1]
status, events = call("POST", "/v1/sandboxes/%s/commands" % sid,
                      {"shell": "echo linting; exit 2"}, stream=True)
out["step2_exit"] = events[-1]
status, res = call("POST", "/v1/sandboxes/%s/commands?wait=true" % sid,
                   {"shell": "getent hosts evil.example.com || echo refused"})
out["dns"] = res["stdout"]
status, log = call("GET", "/v1/sandboxes/%s/network-log" % sid)
out["netlog"] = log.decode()
status, res = call("POST", "/v1/sandboxes/%s/commands?wait=true" % sid,
                   {"argv": ["cat"], "stdin": "from stdin"})
out["stdin"] = res["stdout"]
status, res = call("POST", "/v1/sandboxes/%s/commands?wait=true" % sid,
                   {"argv": ["sleep", "30"], "timeout": "1s"})
out["timeout"] = [res["exit_code"], res["timeout"]]
status, artifact = call("GET", "/v1/sandboxes/%s/files?path=/sandbox/repo/out.txt" % sid)
out["artifact"] = artifact.decode()
status, stats = call("GET", "/v1/sandboxes/%s/stats" % sid)
out["stats_pids"] = stats["pids_limit"]
status, gone = call("DELETE", "/v1/sandboxes/%s" % sid)
out["delete"] = status
status, after = call("GET", "/v1/sandboxes/%s" % sid)
out["after_delete"] = status
print(json.dumps(out))
"#;

/// The agent-pipeline flow through Python's urllib over TCP with a key: create with a
/// filtered network and a secret, put a file in, run steps with streamed output, see a
/// failing step's code, fetch an artifact, delete.
#[test]
fn serve_minions_flow_over_tcp_with_python() {
    require_root!();
    let server = TestServer::start(&[]);
    let key = server.key("minions", None);
    let out = Command::new("python3")
        .args(["-c", PYTHON_CLIENT])
        .env("NSBOX_URL", format!("http://{}", server.tcp))
        .env("NSBOX_KEY", &key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = json(&String::from_utf8_lossy(&out.stdout));
    let id = r["id"].as_str().unwrap();
    assert_eq!(r["network"], "filtered");
    assert_eq!(r["listed"], serde_json::json!([id]));
    assert_eq!(r["put"], 200);
    assert_eq!(r["step1_status"], 200);
    assert_eq!(r["step1_types"][0], "start");
    assert_eq!(r["step1_stdout"], "building minion-7\ntoken=***\n");
    assert_eq!(r["step1_stderr"], "warn\n");
    assert_eq!(r["step1_exit"]["type"], "exit");
    assert_eq!(r["step1_exit"]["code"], 0);
    assert_eq!(r["step2_exit"]["code"], 2);
    assert_eq!(r["dns"], "refused\n");
    assert!(
        r["netlog"].as_str().unwrap().contains("evil.example.com"),
        "the network log records the refusal: {}",
        r["netlog"]
    );
    assert_eq!(r["stdin"], "from stdin");
    assert_eq!(r["timeout"], serde_json::json!([124, true]));
    assert_eq!(r["artifact"], "artifact\n");
    assert_eq!(r["stats_pids"], 128);
    assert_eq!(r["delete"], 200);
    assert_eq!(r["after_delete"], 404);
    assert!(!session_ids().contains(&id.to_string()));
    assert!(server.recorded().is_empty());
    // The audit log names what was done, never the secret or the token.
    let audit = std::fs::read_to_string(server.state().join("serve/audit.log")).unwrap();
    assert!(audit.contains("\"action\":\"sandbox.create\""));
    assert!(audit.contains("\"key\":\"minions\""));
    assert!(!audit.contains("ghp_secretvalue123") && !audit.contains(&key));
}

/// curl on the unix socket: SSE, the file operations, and paths that try to leave the root.
#[test]
fn serve_files_and_streams_over_the_unix_socket_with_curl() {
    require_root!();
    let server = TestServer::start(&[]);
    let mode = std::fs::metadata(&server.socket).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );
    let (code, headers, body) = server.local(&["-XPOST", "localhost/v1/sandboxes", "-d", "{}"]);
    assert_eq!(code, 201, "{body}");
    let id = json(&body)["id"].as_str().unwrap().to_string();
    assert!(headers
        .to_lowercase()
        .contains(&format!("location: /v1/sandboxes/{id}")));
    assert!(
        session_ids().contains(&id),
        "`nsbox ps` lists the server's sandbox"
    );
    let url = |p: &str| format!("localhost/v1/sandboxes/{id}{p}");

    // Server-sent events when the client asks for them.
    let (code, headers, body) = server.local(&[
        "-XPOST",
        &url("/commands"),
        "-H",
        "Accept: text/event-stream",
        "-d",
        r#"{"shell":"echo one; echo two"}"#,
    ]);
    assert_eq!(code, 200);
    assert!(headers.contains("text/event-stream"));
    assert!(body.contains("event: start\n"));
    assert!(body.contains("event: stdout\ndata: {\"type\":\"stdout\""));
    assert!(body.contains("event: exit\n"));

    // Another user of the sandbox for one command, never with capabilities; a bad one is a 400.
    let (code, _, body) = server.local(&[
        "-XPOST",
        &format!("{}?wait=true", url("/commands")),
        "-d",
        r#"{"shell":"id -u; id -g; grep CapEff /proc/self/status","user":"root"}"#,
    ]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        json(&body)["stdout"]
            .as_str()
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["0", "0", "CapEff:", "0000000000000000"],
        "{body}"
    );
    let (code, _, body) = server.local(&[
        "-XPOST",
        &format!("{}?wait=true", url("/commands")),
        "-d",
        r#"{"argv":["id","-u"],"user":"1234:1234"}"#,
    ]);
    assert_eq!(
        (code, json(&body)["stdout"].as_str()),
        (200, Some("1234\n")),
        "{body}"
    );
    let (code, _, body) = server.local(&[
        "-XPOST",
        &url("/commands"),
        "-d",
        r#"{"argv":["true"],"user":"postgres"}"#,
    ]);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("user"), "{body}");

    // A running command is listed and can be signalled; its stream then ends with 128+15.
    let stream = Command::new("curl")
        .args([
            "-sS",
            "-N",
            "--unix-socket",
            server.socket.to_str().unwrap(),
            "-XPOST",
        ])
        .arg(url("/commands"))
        .args(["-d", r#"{"argv":["sleep","300"]}"#])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut cid = String::new();
    assert!(crate::support::eventually(30.0, || {
        let (_, _, body) = server.local(&[&url("/commands")]);
        match json(&body)["commands"][0]["id"].as_str() {
            Some(c) => {
                cid = c.to_string();
                true
            }
            None => false,
        }
    }));
    let (_, _, body) = server.local(&[&url("/commands")]);
    assert_eq!(
        json(&body)["commands"][0]["argv"],
        serde_json::json!(["sleep", "300"])
    );
    let (code, _, body) = server.local(&[
        "-XPOST",
        &url("/commands/nope/signal"),
        "-d",
        r#"{"signal":"TERM"}"#,
    ]);
    assert_eq!(
        (code, json(&body)["code"].as_str()),
        (404, Some("no_such_command"))
    );
    let (code, _, _) = server.local(&[
        "-XPOST",
        &url(&format!("/commands/{cid}/signal")),
        "-d",
        r#"{"signal":"BOGUS"}"#,
    ]);
    assert_eq!(code, 400);
    let (code, _, _) = server.local(&[
        "-XPOST",
        &url(&format!("/commands/{cid}/signal")),
        "-d",
        r#"{"signal":"TERM"}"#,
    ]);
    assert_eq!(code, 200);
    let out = stream.wait_with_output().unwrap();
    let events = crate::support::events(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(events.last().unwrap()["code"], 143, "{events:?}");
    assert_eq!(events.last().unwrap()["signal"], "SIGTERM");
    let (_, _, body) = server.local(&[&url("/commands")]);
    assert_eq!(json(&body)["commands"], serde_json::json!([]));

    // Input sent to a running command, then closed.
    let stream = Command::new("curl")
        .args([
            "-sS",
            "-N",
            "--unix-socket",
            server.socket.to_str().unwrap(),
            "-XPOST",
        ])
        .arg(url("/commands"))
        .args([
            "-d",
            r#"{"argv":["cat"],"stdin":"first\n","stdin_open":true}"#,
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut cid = String::new();
    assert!(crate::support::eventually(30.0, || {
        let (_, _, body) = server.local(&[&url("/commands")]);
        json(&body)["commands"][0]["id"]
            .as_str()
            .map(|c| cid = c.to_string())
            .is_some()
    }));
    let stdin = url(&format!("/commands/{cid}/stdin"));
    let (code, _, _) = server.local(&["-XPOST", &stdin, "--data-binary", "second\n"]);
    assert_eq!(code, 200);
    let (code, _, _) = server.local(&[
        "-XPOST",
        &format!("{stdin}?close=true"),
        "--data-binary",
        "third\n",
    ]);
    assert_eq!(code, 200);
    let out = stream.wait_with_output().unwrap();
    let events = crate::support::events(&String::from_utf8_lossy(&out.stdout));
    let text: String = events
        .iter()
        .filter(|e| e["type"] == "stdout")
        .map(|e| e["data"].as_str().unwrap())
        .collect();
    assert_eq!(text, "first\nsecond\nthird\n");
    assert_eq!(events.last().unwrap()["code"], 0);

    // A detached command: its id at once, its events for whoever attaches, as often as asked.
    let (code, _, body) = server.local(&[
        "-XPOST",
        &url("/commands?detach=true"),
        "-d",
        r#"{"shell":"echo a; sleep 1; echo b >&2; exit 3"}"#,
    ]);
    assert_eq!(code, 202, "{body}");
    let cid = json(&body)["command_id"].as_str().unwrap().to_string();
    for _ in 0..2 {
        let (code, _, body) = server.local(&[&url(&format!("/commands/{cid}/events"))]);
        assert_eq!(code, 200);
        let events = crate::support::events(&body);
        let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["start", "stdout", "stderr", "exit"], "{body}");
        assert_eq!(
            (events[1]["data"].as_str(), events[2]["data"].as_str()),
            (Some("a\n"), Some("b\n"))
        );
        assert_eq!(events[3]["code"], 3);
    }
    let (code, _, _) = server.local(&[&url("/commands/nope/events")]);
    assert_eq!(code, 404);

    // Files: write (parents made), read, stat, list, mkdir, remove.
    let (code, _, _) = server.local(&[
        "-XPUT",
        &url("/files?path=/sandbox/w/a.txt"),
        "--data-binary",
        "hello",
    ]);
    assert_eq!(code, 200);
    let (code, _, body) = server.local(&[&url("/files?path=/sandbox/w/a.txt")]);
    assert_eq!((code, body.as_str()), (200, "hello"));
    let (_, _, body) = server.local(&[&url("/files/stat?path=w/a.txt")]);
    let st = json(&body);
    assert_eq!(
        (st["type"].as_str(), st["size"].as_u64(), st["uid"].as_u64()),
        (Some("file"), Some(5), Some(100))
    );
    let (code, _, _) = server.local(&["-XPOST", &url("/files/mkdir?path=/sandbox/w/d/e")]);
    assert_eq!(code, 200);
    let (_, _, body) = server.local(&[&url("/files/list?path=/sandbox/w")]);
    let names: Vec<String> = json(&body)["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["a.txt", "d"]);
    let (code, _, _) = server.local(&["-XDELETE", &url("/files?path=/sandbox/w/a.txt")]);
    assert_eq!(code, 200);
    let (code, _, _) = server.local(&[&url("/files?path=/sandbox/w/a.txt")]);
    assert_eq!(code, 404);
    let (code, _, body) = server.local(&["-XDELETE", &url("/files?path=/sandbox/w")]);
    assert_eq!(
        (code, json(&body)["code"].as_str()),
        (409, Some("not_empty"))
    );

    // Trees as tar streams, in and out; a hostile archive is refused and writes nothing.
    let tars = tempfile::tempdir().unwrap();
    let made = Command::new("python3")
        .arg("-c")
        .arg(
            r#"
import io, sys, tarfile
def tar(path, entries):
    with tarfile.open(path, "w") as t:
        for name, data in entries:
            info = tarfile.TarInfo(name); info.size = len(data)
            t.addfile(info, io.BytesIO(data))
tar(sys.argv[1] + "/good.tar", [("repo/a.txt", b"A"), ("repo/src/b.txt", b"BB")])
tar(sys.argv[1] + "/evil.tar", [("../../../../../../" + sys.argv[1].lstrip("/") + "/escaped", b"x")])
"#,
        )
        .arg(tars.path())
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let good = format!("@{}/good.tar", tars.path().display());
    let evil = format!("@{}/evil.tar", tars.path().display());
    let (code, _, body) = server.local(&[
        "-XPUT",
        "-H",
        "Content-Type: application/x-tar",
        &url("/files?path=/sandbox/t"),
        "--data-binary",
        &good,
    ]);
    assert_eq!(
        (code, json(&body)["entries"].as_u64().is_some()),
        (200, true),
        "{body}"
    );
    let (_, _, body) = server.local(&[&url("/files?path=/sandbox/t/repo/src/b.txt")]);
    assert_eq!(body, "BB");
    let (code, _, _) = server.local(&[
        "-XPUT",
        "-H",
        "Content-Type: application/x-tar",
        &url("/files?path=/sandbox/t"),
        "--data-binary",
        &evil,
    ]);
    assert!((400..500).contains(&code), "hostile tar: {code}");
    assert!(
        !tars.path().join("escaped").exists(),
        "nothing written on the host"
    );
    let out_tar = tars.path().join("out.tar");
    let got = Command::new("curl")
        .args([
            "-sS",
            "--unix-socket",
            server.socket.to_str().unwrap(),
            "-o",
        ])
        .arg(&out_tar)
        .arg(url("/files?path=/sandbox/t/repo&format=tar"))
        .status()
        .unwrap();
    assert!(got.success());
    let listing = Command::new("tar")
        .arg("-tf")
        .arg(&out_tar)
        .output()
        .unwrap();
    let names = String::from_utf8_lossy(&listing.stdout).into_owned();
    assert!(
        names.contains("repo/a.txt") && names.contains("repo/src/b.txt"),
        "{names}"
    );

    let (code, _, _) = server.local(&["-XDELETE", &url("")]);
    assert_eq!(code, 200);
    assert!(!session_ids().contains(&id));

    // A time to live: the server deletes the sandbox by itself.
    let (code, _, body) =
        server.local(&["-XPOST", "localhost/v1/sandboxes", "-d", r#"{"ttl":"1s"}"#]);
    assert_eq!(code, 201, "{body}");
    let short = json(&body)["id"].as_str().unwrap().to_string();
    assert!(json(&body)["expires_at"].as_u64().is_some());
    assert!(crate::support::eventually(30.0, || {
        !session_ids().contains(&short) && server.recorded().is_empty()
    }));
    let (code, _, _) = server.local(&[&format!("localhost/v1/sandboxes/{short}")]);
    assert_eq!(code, 404);
}

/// No key, a wrong key, a removed key: 401 and nothing created; a key over its limit: 429
/// with Retry-After; a key does not see another key's sandboxes.
#[test]
fn serve_auth_refuses_bad_keys_and_enforces_key_limits() {
    require_root!();
    let server = TestServer::start(&[]);
    let one = server.key("one", Some(1));
    let other = server.key("other", None);
    let gone = server.key("gone", None);
    server.remove_key("gone");
    for token in [None, Some("nsbox_0000"), Some(gone.as_str()), Some("")] {
        let (code, _, body) = server.remote(token, "POST", "/v1/sandboxes", Some("{}"));
        assert_eq!(code, 401, "{token:?}: {body}");
        assert_eq!(json(&body)["code"], "unauthorized");
    }
    assert!(
        server.recorded().is_empty(),
        "nothing created without a key"
    );
    let (code, _, body) = server.remote(Some(&one), "POST", "/v1/sandboxes", Some("{}"));
    assert_eq!(code, 201, "{body}");
    let id = json(&body)["id"].as_str().unwrap().to_string();
    let (code, headers, body) = server.remote(Some(&one), "POST", "/v1/sandboxes", Some("{}"));
    assert_eq!(
        (code, json(&body)["code"].as_str()),
        (429, Some("key_limit"))
    );
    assert!(headers.to_lowercase().contains("retry-after: 1"));
    assert_eq!(server.recorded(), std::slice::from_ref(&id));
    let (code, _, _) = server.remote(Some(&other), "GET", &format!("/v1/sandboxes/{id}"), None);
    assert_eq!(code, 404, "another key's sandbox is invisible");
    let (_, _, body) = server.remote(Some(&other), "GET", "/v1/sandboxes", None);
    assert_eq!(json(&body)["sandboxes"], serde_json::json!([]));
    // A create that may wait for capacity: 429 when no place frees in time...
    let (code, _, body) = server.remote(
        Some(&one),
        "POST",
        "/v1/sandboxes",
        Some(r#"{"wait_for_capacity":"300ms"}"#),
    );
    assert_eq!(
        (code, json(&body)["code"].as_str()),
        (429, Some("key_limit"))
    );
    // ...and the place a delete frees when one does.
    let waiter = Command::new("curl")
        .args(["-sS", "-w", "\n%{http_code}", "-XPOST", "-H"])
        .arg(format!("Authorization: Bearer {one}"))
        .arg(format!("http://{}/v1/sandboxes", server.tcp))
        .args(["-d", r#"{"wait_for_capacity":"60s"}"#])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (code, _, _) = server.remote(Some(&one), "DELETE", &format!("/v1/sandboxes/{id}"), None);
    assert_eq!(code, 200);
    let out = waiter.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    assert_eq!(code, "201", "{body}");
    let id = json(body)["id"].as_str().unwrap().to_string();
    // Removing a key takes effect at once.
    server.remove_key("one");
    let (code, _, _) = server.remote(Some(&one), "GET", &format!("/v1/sandboxes/{id}"), None);
    assert_eq!(code, 401);
}

/// Malformed, oversized and unknown-field bodies, an unknown sandbox, a program that does not
/// exist: each a 4xx with a JSON error, and nothing made or changed.
#[test]
fn serve_bad_input_is_refused_with_json_errors() {
    require_root!();
    let server = TestServer::start(&["--max-body", "4096"]);
    // The document the server serves is the one the repository keeps.
    let (code, _, served) = server.local(&["localhost/v1/openapi.json"]);
    let kept =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json")).unwrap();
    assert_eq!((code, served.trim_end()), (200, kept.trim_end()));
    let cases: &[(&str, &str, &str, u16, &str)] = &[
        ("POST", "/v1/sandboxes", "{\"image\":", 400, "bad_json"),
        ("POST", "/v1/sandboxes", "[1,2]", 400, "bad_json"),
        ("POST", "/v1/sandboxes", r#"{"imag":"x"}"#, 400, "bad_json"),
        (
            "POST",
            "/v1/sandboxes",
            r#"{"limits":{"memroy":"1g"}}"#,
            400,
            "bad_json",
        ),
        (
            "POST",
            "/v1/sandboxes",
            r#"{"network":{"mode":"open"}}"#,
            400,
            "invalid",
        ),
        (
            "POST",
            "/v1/sandboxes",
            r#"{"secrets":{"NSBOX_RUN_DIR":"/"}}"#,
            400,
            "invalid",
        ),
        (
            "GET",
            "/v1/sandboxes/doesnotexist",
            "",
            404,
            "sandbox_not_found",
        ),
        (
            "POST",
            "/v1/sandboxes/doesnotexist/commands",
            r#"{"argv":["true"]}"#,
            404,
            "sandbox_not_found",
        ),
        ("GET", "/v1/nothing", "", 404, "no_route"),
    ];
    for (method, path, body, status, code) in cases {
        let body = (!body.is_empty()).then_some(*body);
        let (got, _, text) = server.local(&[
            "-X",
            method,
            &format!("localhost{path}"),
            "--data-binary",
            body.unwrap_or(""),
        ]);
        assert_eq!(
            (got, json(&text)["code"].as_str()),
            (*status, Some(*code)),
            "{method} {path} {body:?}: {text}"
        );
    }
    let big = format!(r#"{{"labels":{{"a":"{}"}}}}"#, "x".repeat(2 << 20));
    let big_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(big_file.path(), &big).unwrap();
    let at = format!("@{}", big_file.path().display());
    let (code, _, text) = server.local(&["-XPOST", "localhost/v1/sandboxes", "--data-binary", &at]);
    assert_eq!(
        (code, json(&text)["code"].as_str()),
        (413, Some("body_too_large"))
    );
    assert!(server.recorded().is_empty(), "no bad create made a sandbox");

    let (_, _, body) = server.local(&["-XPOST", "localhost/v1/sandboxes", "-d", "{}"]);
    let id = json(&body)["id"].as_str().unwrap().to_string();
    let cmd = format!("localhost/v1/sandboxes/{id}/commands");
    for (body, status, code) in [
        (r#"{"argv":["/no/such/program"]}"#, 422, "command_not_found"),
        (r#"{"argv":[]}"#, 400, "invalid"),
        (r#"{"argv":["true"],"shell":"true"}"#, 400, "invalid"),
        (r#"{"argv":["true"],"timeout":"soon"}"#, 400, "invalid"),
        (r#"{"argv":["true"],"tty":true}"#, 400, "bad_json"),
    ] {
        let (got, _, text) = server.local(&["-XPOST", &cmd, "-d", body]);
        assert_eq!(
            (got, json(&text)["code"].as_str()),
            (status, Some(code)),
            "{body}: {text}"
        );
    }
    // An upload over --max-body is refused and writes nothing.
    let file = format!("localhost/v1/sandboxes/{id}/files?path=/sandbox/big");
    let (code, _, _) = server.local(&["-XPUT", &file, "--data-binary", &at]);
    assert_eq!(code, 413);
    let (code, _, _) = server.local(&[&file]);
    assert_eq!(code, 404, "the refused upload left no file");

    // A client that gives up during a create: the sandbox is still recorded and listed, so
    // nothing leaks.
    let (code, _, _) = server.local(&[
        "-m",
        "0.5",
        "-XPOST",
        "localhost/v1/sandboxes",
        "-d",
        r#"{"labels":{"gave":"up"},"setup":"sleep 2"}"#,
    ]);
    assert_ne!(code, 201, "the client gave up before the answer");
    assert!(crate::support::eventually(30.0, || {
        let (_, _, body) = server.local(&["localhost/v1/sandboxes?label=gave%3Dup"]);
        json(&body)["sandboxes"]
            .as_array()
            .is_some_and(|a| a.len() == 1)
    }));
}

/// A server killed with SIGKILL leaves its sandboxes running; the next server on the same
/// state root adopts them, and its SIGTERM removes them.
#[test]
fn serve_restarted_server_adopts_living_sandboxes() {
    require_root!();
    let mut first = TestServer::start(&[]);
    let (code, _, body) = first.local(&[
        "-XPOST",
        "localhost/v1/sandboxes",
        "-d",
        r#"{"labels":{"run":"1"}}"#,
    ]);
    assert_eq!(code, 201, "{body}");
    let id = json(&body)["id"].as_str().unwrap().to_string();
    let pid = first.pid();
    first.kill();
    assert!(
        rustix::process::test_kill_process(rustix::process::Pid::from_raw(pid).unwrap()).is_err()
    );
    assert!(
        session_ids().contains(&id),
        "the sandbox outlives a killed server"
    );
    let dir = std::mem::replace(&mut first.dir, tempfile::tempdir().unwrap());
    drop(first);
    let mut second = TestServer::start_in(dir, &[]);
    let (code, _, body) = second.local(&[&format!("localhost/v1/sandboxes/{id}")]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["labels"]["run"], "1");
    let (_, _, body) = second.local(&[
        "-XPOST",
        &format!("localhost/v1/sandboxes/{id}/commands?wait=true"),
        "-d",
        r#"{"argv":["echo","still here"]}"#,
    ]);
    assert_eq!(json(&body)["stdout"], "still here\n");
    second.stop();
    assert!(
        !session_ids().contains(&id),
        "SIGTERM removed the adopted sandbox"
    );
    assert!(second.recorded().is_empty());
}

/// The value of one metric line (`NAME{LABELS}` exactly as written).
fn metric(server: &TestServer, series: &str) -> f64 {
    let (_, _, text) = server.local(&["localhost/metrics"]);
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

/// The warm pool: a matching create is a hit (personalised at claim time: env, secret,
/// setup script, labels), an entry with nothing ready is a miss, a request with its own
/// limits is not a claim at all; the pool refills; the metrics count exactly that; SIGTERM
/// removes pool members too.
#[test]
fn serve_warm_pool_hits_misses_refills_and_metrics() {
    require_root!();
    let mut server = TestServer::start(&[
        "--pool",
        "host=1",
        "--pool",
        "host=0,net=filtered,allow=api.example.com",
    ]);
    let ready = r#"nsbox_pool_size{entry="host"}"#;
    assert!(crate::support::eventually(60.0, || metric(&server, ready) == 1.0));
    assert_eq!(metric(&server, r#"nsbox_pool_target{entry="host"}"#), 1.0);
    let create = |body: &str| {
        let (code, _, text) = server.local(&["-XPOST", "localhost/v1/sandboxes", "-d", body]);
        assert_eq!(code, 201, "{body}: {text}");
        json(&text)["id"].as_str().unwrap().to_string()
    };
    let hit = create(
        r#"{"env":{"STEP":"lint"},"secrets":{"TOKEN":"pool-secret-42"},"labels":{"job":"p"},"setup":"echo prepared > /sandbox/ready"}"#,
    );
    assert_eq!(
        metric(&server, r#"nsbox_pool_claims_total{result="hit"}"#),
        1.0
    );
    let (_, _, body) = server.local(&[
        "-XPOST",
        &format!("localhost/v1/sandboxes/{hit}/commands?wait=true"),
        "-d",
        r#"{"shell":"echo $STEP $TOKEN; cat /sandbox/ready"}"#,
    ]);
    assert_eq!(json(&body)["stdout"], "lint ***\nprepared\n");
    let (_, _, body) = server.local(&["localhost/v1/sandboxes?label=job%3Dp"]);
    assert_eq!(json(&body)["sandboxes"][0]["id"], hit.as_str());

    let miss = create(r#"{"network":{"mode":"filtered","allow":["api.example.com"]}}"#);
    assert_eq!(
        metric(&server, r#"nsbox_pool_claims_total{result="miss"}"#),
        1.0
    );
    assert!(
        crate::support::eventually(60.0, || metric(&server, ready) == 1.0),
        "refilled"
    );
    let second = create("{}");
    let cold = create(r#"{"limits":{"pids":64}}"#);
    assert_eq!(
        metric(&server, r#"nsbox_pool_claims_total{result="hit"}"#),
        2.0
    );
    assert_eq!(
        metric(&server, r#"nsbox_pool_claims_total{result="miss"}"#),
        1.0
    );
    assert_eq!(metric(&server, "nsbox_pool_claim_seconds_count"), 2.0);
    assert_eq!(metric(&server, "nsbox_sandboxes_alive"), 4.0);
    assert!(metric(&server, "nsbox_commands_total") >= 2.0);
    // A claimed sandbox is never handed out again.
    let ids = [&hit, &miss, &second, &cold];
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), 4);
    assert!(crate::support::eventually(60.0, || metric(&server, ready) == 1.0));
    let pool_member = server
        .recorded()
        .into_iter()
        .find(|id| !ids.contains(&id))
        .expect("the refilled pool member is recorded");
    // A pool member that ended while idle is dropped at claim time, never handed out.
    let stopped = nsbox_cmd(&["stop", &pool_member]).output().unwrap();
    assert!(stopped.status.success(), "{stopped:?}");
    let fresh = create("{}");
    assert_ne!(fresh, pool_member);
    let (_, _, body) = server.local(&[
        "-XPOST",
        &format!("localhost/v1/sandboxes/{fresh}/commands?wait=true"),
        "-d",
        r#"{"argv":["true"]}"#,
    ]);
    assert_eq!(json(&body)["exit_code"], 0);
    server.stop();
    let left = session_ids();
    for id in ids.into_iter().chain([&pool_member, &fresh]) {
        assert!(!left.contains(id), "{id} left after SIGTERM");
    }
}

fn vm_rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

/// A client that starts a flood of output and never reads it: the command is held back
/// (back-pressure), the server's memory stays bounded, other clients are served meanwhile,
/// and when the stalled client goes away its command is killed.
#[test]
fn serve_stalled_stream_neither_stalls_others_nor_grows_memory() {
    require_root!();
    let server = TestServer::start(&[]);
    let (_, _, body) = server.local(&["-XPOST", "localhost/v1/sandboxes", "-d", "{}"]);
    let id = json(&body)["id"].as_str().unwrap().to_string();
    let before = vm_rss_kib(server.pid());
    // 256 MiB of output requested by a client that reads nothing.
    let request = format!(
        "POST /v1/sandboxes/{id}/commands HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n{body}",
        body = r#"{"shell":"head -c 268435456 /dev/zero | tr '\\0' x"}"#,
        len = r#"{"shell":"head -c 268435456 /dev/zero | tr '\\0' x"}"#.len()
    );
    let mut stalled = std::os::unix::net::UnixStream::connect(&server.socket).unwrap();
    std::io::Write::write_all(&mut stalled, request.as_bytes()).unwrap();
    let stats = format!("localhost/v1/sandboxes/{id}/stats");
    assert!(crate::support::eventually(30.0, || {
        let (_, _, body) = server.local(&[&stats]);
        json(&body)["commands_running"] == 1
    }));
    // Other clients, and other commands in the same sandbox, are answered meanwhile.
    for _ in 0..3 {
        let (code, _, body) = server.local(&[
            "-XPOST",
            &format!("localhost/v1/sandboxes/{id}/commands?wait=true"),
            "-d",
            r#"{"argv":["echo","served"]}"#,
        ]);
        assert_eq!(
            (code, json(&body)["stdout"].as_str()),
            (200, Some("served\n"))
        );
    }
    let (code, _, _) = server.local(&["localhost/v1/sandboxes"]);
    assert_eq!(code, 200);
    // Nothing of the 256 MiB piles up in the server.
    let after = vm_rss_kib(server.pid());
    assert!(
        after < before + 32 * 1024,
        "server RSS grew from {before} KiB to {after} KiB"
    );
    let relayed = metric(&server, "nsbox_relayed_bytes_total");
    assert!(
        relayed < 64.0 * 1024.0 * 1024.0,
        "{relayed} bytes relayed to a client that reads nothing"
    );
    // The client goes away: its command is killed.
    drop(stalled);
    assert!(crate::support::eventually(30.0, || {
        let (_, _, body) = server.local(&[&stats]);
        json(&body)["commands_running"] == 0
    }));
}

/// TCP with TLS: a client that trusts the certificate is served (with a key); plain HTTP on
/// the TLS port gets nothing; plain HTTP on a non-loopback address is refused at start.
#[test]
fn serve_tls_listener_and_plain_remote_refusal() {
    require_root!();
    let refused = nsbox_cmd(&[
        "serve",
        "--socket",
        "/nonexistent/x.sock",
        "--listen",
        "0.0.0.0:0",
    ])
    .output()
    .unwrap();
    assert_eq!(refused.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--tls-cert"));

    let (server, cert) = TestServer::start_tls();
    let token = server.key("tls", None);
    let url = format!("https://{}/v1/sandboxes", server.tcp);
    let auth = format!("Authorization: Bearer {token}");
    let (code, _, body) = curl(&["--cacert", cert.to_str().unwrap(), "-H", &auth, &url]);
    assert_eq!(
        (code, body.contains("\"sandboxes\"")),
        (200, true),
        "{body}"
    );
    let (code, _, _) = curl(&["--cacert", cert.to_str().unwrap(), &url]);
    assert_eq!(code, 401);
    let (code, _, _) = curl(&["-H", &auth, &format!("http://{}/v1/sandboxes", server.tcp)]);
    assert_ne!(code, 200, "plain HTTP on the TLS port");
}

/// The crate's own client type drives a sandbox over the unix socket and over TCP.
#[test]
fn serve_rust_client_type_drives_a_sandbox() {
    require_root!();
    use nsbox::serve::client::{ClientError, ServeClient};
    let server = TestServer::start(&[]);
    let local = ServeClient::unix(&server.socket);
    let sb = local
        .create(&serde_json::json!({"labels": {"via": "rust"}, "secrets": {"K": "rust-secret"}}))
        .unwrap();
    let id = sb["id"].as_str().unwrap();
    local
        .write_file(id, "dir/in file.txt", b"bytes\x00\xff")
        .unwrap();
    assert_eq!(
        local.read_file(id, "/sandbox/dir/in file.txt").unwrap(),
        b"bytes\x00\xff"
    );
    let r = local
        .run(id, &serde_json::json!({"shell": "echo $K; exit 4"}))
        .unwrap();
    assert_eq!(
        (r["exit_code"].as_i64(), r["stdout"].as_str()),
        (Some(4), Some("***\n"))
    );
    let mut lines = Vec::new();
    let last = local
        .run_streaming(id, &serde_json::json!({"argv": ["seq", "3"]}), |e| {
            if e["type"] == "stdout" {
                lines.push(e["data"].as_str().unwrap().to_string());
            }
        })
        .unwrap();
    assert_eq!(lines.concat(), "1\n2\n3\n");
    assert_eq!(
        (last["type"].as_str(), last["code"].as_i64()),
        (Some("exit"), Some(0))
    );
    assert_eq!(local.list(Some("via=rust")).unwrap().len(), 1);
    match local.run(id, &serde_json::json!({"argv": ["no-such-program"]})) {
        Err(ClientError::Api {
            status: 422, code, ..
        }) => assert_eq!(code, "command_not_found"),
        other => panic!("{other:?}"),
    }
    let token = server.key("rust", None);
    let remote = ServeClient::tcp(server.tcp.clone(), token);
    assert!(
        remote.list(None).unwrap().is_empty(),
        "a key sees only its own sandboxes"
    );
    assert!(matches!(
        ServeClient::tcp(server.tcp.clone(), "nsbox_nope").list(None),
        Err(ClientError::Api { status: 401, .. })
    ));
    local.delete(id).unwrap();
    assert!(matches!(
        local.get(id),
        Err(ClientError::Api { status: 404, .. })
    ));
}

const PYTHON_LOAD: &str = r#"
import json, os, urllib.request
from concurrent.futures import ThreadPoolExecutor
base, key = os.environ["NSBOX_URL"], os.environ["NSBOX_KEY"]
SANDBOXES, COMMANDS, LINES = 16, 6, 3000

def call(method, path, body=None):
    req = urllib.request.Request(base + path, data=json.dumps(body).encode() if body is not None else None, method=method)
    req.add_header("Authorization", "Bearer " + key)
    with urllib.request.urlopen(req) as resp:
        if "ndjson" in resp.headers.get("Content-Type", ""):
            return [json.loads(l) for l in resp]
        return json.loads(resp.read())

def job(i):
    sid = call("POST", "/v1/sandboxes", {"labels": {"load": str(i)}})["id"]
    bad = []
    for j in range(COMMANDS):
        tag = "S%dC%d" % (i, j)
        want = "".join("%s %d\n" % (tag, n) for n in range(1, LINES + 1))
        cmd = {"shell": "seq %d | sed 's/^/%s /'; echo %s >&2" % (LINES, tag, tag)}
        if j % 2:
            r = call("POST", "/v1/sandboxes/%s/commands?wait=true" % sid, cmd)
            out, err, code = r["stdout"], r["stderr"], r["exit_code"]
        else:
            ev = call("POST", "/v1/sandboxes/%s/commands" % sid, cmd)
            out = "".join(e.get("data", "") for e in ev if e["type"] == "stdout")
            err = "".join(e.get("data", "") for e in ev if e["type"] == "stderr")
            code = ev[-1]["code"]
        if out != want or err != tag + "\n" or code != 0:
            bad.append(tag)
    call("DELETE", "/v1/sandboxes/%s" % sid)
    return sid, bad

with ThreadPoolExecutor(SANDBOXES) as pool:
    results = list(pool.map(job, range(SANDBOXES)))
print(json.dumps({"ids": [r[0] for r in results], "bad": sum((r[1] for r in results), [])}))
"#;

/// Many sandboxes at once, several commands each, half streamed and half waited for: every
/// output complete and in its own response, nothing left after the deletes.
#[test]
fn serve_concurrent_sandboxes_keep_outputs_apart() {
    require_root!();
    let server = TestServer::start(&[]);
    let key = server.key("load", None);
    let out = Command::new("python3")
        .args(["-c", PYTHON_LOAD])
        .env("NSBOX_URL", format!("http://{}", server.tcp))
        .env("NSBOX_KEY", &key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(
        r["bad"],
        serde_json::json!([]),
        "outputs mixed or incomplete"
    );
    let ids: std::collections::HashSet<&str> = r["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 16);
    let left = session_ids();
    assert!(ids.iter().all(|id| !left.iter().any(|l| l == id)));
    assert!(server.recorded().is_empty());
    assert_eq!(metric(&server, "nsbox_sandboxes_alive"), 0.0);
}

/// Connections beyond --max-connections are closed at once; a freed slot is usable again.
#[test]
fn serve_connection_cap_closes_extra_connections() {
    require_root!();
    let server = TestServer::start(&["--max-connections", "2"]);
    let idle: Vec<_> = (0..2)
        .map(|_| std::os::unix::net::UnixStream::connect(&server.socket).unwrap())
        .collect();
    // The two idle connections hold both slots (accepted in order, before the next one).
    assert!(crate::support::eventually(30.0, || server
        .local(&["localhost/v1/health"])
        .0
        == 0));
    drop(idle);
    assert!(crate::support::eventually(30.0, || server
        .local(&["localhost/v1/health"])
        .0
        == 200));
}

/// SIGKILL mid-load: sandboxes with commands streaming when the server dies are adopted by
/// the next server, their orphaned commands end, and everything goes on SIGTERM.
#[test]
fn serve_sigkill_mid_stream_then_restart_adopts_and_cleans() {
    require_root!();
    let mut first = TestServer::start(&[]);
    let mut ids = Vec::new();
    let mut streams = Vec::new();
    for _ in 0..3 {
        let (_, _, body) = first.local(&["-XPOST", "localhost/v1/sandboxes", "-d", "{}"]);
        let id = json(&body)["id"].as_str().unwrap().to_string();
        streams.push(
            Command::new("curl")
                .args([
                    "-sS",
                    "-N",
                    "--unix-socket",
                    first.socket.to_str().unwrap(),
                    "-XPOST",
                ])
                .arg(format!("localhost/v1/sandboxes/{id}/commands"))
                .args([
                    "-d",
                    r#"{"shell":"while :; do echo tick; sleep 0.05; done"}"#,
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        ids.push(id);
    }
    for id in &ids {
        let stats = format!("localhost/v1/sandboxes/{id}/stats");
        assert!(crate::support::eventually(30.0, || {
            json(&first.local(&[&stats]).2)["commands_running"] == 1
        }));
    }
    first.kill();
    for mut s in streams {
        let _ = s.wait();
    }
    let dir = std::mem::replace(&mut first.dir, tempfile::tempdir().unwrap());
    drop(first);
    let mut second = TestServer::start_in(dir, &[]);
    let (_, _, body) = second.local(&["localhost/v1/sandboxes"]);
    let adopted: Vec<String> = json(&body)["sandboxes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    for id in &ids {
        assert!(adopted.contains(id), "{id} adopted");
        // The command whose client died with the server does not run on forever.
        let stats = format!("localhost/v1/sandboxes/{id}/stats");
        assert!(crate::support::eventually(30.0, || {
            json(&second.local(&[&stats]).2)["commands_running"] == 0
        }));
        let (_, _, body) = second.local(&[
            "-XPOST",
            &format!("localhost/v1/sandboxes/{id}/commands?wait=true"),
            "-d",
            r#"{"argv":["echo","ok"]}"#,
        ]);
        assert_eq!(json(&body)["stdout"], "ok\n");
    }
    second.stop();
    let left = session_ids();
    assert!(
        ids.iter().all(|id| !left.contains(id)),
        "SIGTERM removed every adopted sandbox"
    );
}

/// `[serve]` in the config file sets the server's defaults (flags win); unknown keys are
/// refused.
#[test]
fn serve_config_section_sets_defaults() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("nsbox.toml");
    std::fs::write(
        &config,
        "[pull]\npolicy = \"never\"\n[serve]\nmax_sandboxes = 1\npool = [\"host=1\"]\nmax_body = \"1k\"\n",
    )
    .unwrap();
    let server = TestServer::start(&["--config", config.to_str().unwrap()]);
    assert!(crate::support::eventually(60.0, || {
        metric(&server, r#"nsbox_pool_size{entry="host"}"#) == 1.0
    }));
    let (code, _, body) = server.local(&["-XPOST", "localhost/v1/sandboxes", "-d", "{}"]);
    assert_eq!(code, 201, "{body}");
    let id = json(&body)["id"].as_str().unwrap().to_string();
    let (code, _, body) = server.local(&["-XPOST", "localhost/v1/sandboxes", "-d", "{}"]);
    assert_eq!(
        (code, json(&body)["code"].as_str()),
        (429, Some("server_full"))
    );
    let big = "x".repeat(2048);
    let (code, _, _) = server.local(&[
        "-XPUT",
        &format!("localhost/v1/sandboxes/{id}/files?path=f"),
        "--data-binary",
        &big,
    ]);
    assert_eq!(code, 413, "serve.max_body applies");

    std::fs::write(&config, "[serve]\nmax_sandbox = 1\n").unwrap();
    let out = nsbox_cmd(&[
        "serve",
        "--config",
        config.to_str().unwrap(),
        "--socket",
        "/nonexistent/s.sock",
    ])
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(nsbox::exit::USAGE));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("max_sandbox"),
        "{out:?}"
    );
}

/// Path escapes through the file API (docker cp CVE-2018-15664 class): `..` is refused, and
/// symlinks the workload plants (to a host directory, a host file) resolve inside the
/// sandbox's root for writes, mkdir and reads; a FIFO planted at a path neither hangs nor
/// feeds the server.
#[test]
fn serve_file_api_path_escapes_are_denied() {
    require_root!();
    let server = TestServer::start(&[]);
    let (code, _, body) = server.local(&["-XPOST", "localhost/v1/sandboxes", "-d", "{}"]);
    assert_eq!(code, 201, "{body}");
    let id = json(&body)["id"].as_str().unwrap().to_string();
    let url = |p: &str| format!("localhost/v1/sandboxes/{id}{p}");
    // Escapes: `..` is refused; symlinks planted inside resolve inside the sandbox's root.
    let host_dir = tempfile::tempdir().unwrap();
    let host = host_dir.path().display().to_string();
    let (code, _, body) = server.local(&[&url("/files?path=../../etc/shadow")]);
    assert_eq!(
        (code, json(&body)["code"].as_str()),
        (400, Some("bad_path"))
    );
    let plant = format!(
        r#"{{"shell":"ln -s {host} /sandbox/dirlink && ln -s {host}/f /sandbox/filelink && mkfifo /sandbox/fifo"}}"#
    );
    let (code, _, body) = server.local(&["-XPOST", &url("/commands?wait=true"), "-d", &plant]);
    assert_eq!(
        (code, json(&body)["exit_code"].as_i64()),
        (200, Some(0)),
        "{body}"
    );
    server.local(&[
        "-XPUT",
        &url("/files?path=/sandbox/dirlink/pwned"),
        "--data-binary",
        "x",
    ]);
    server.local(&[
        "-XPUT",
        &url("/files?path=/sandbox/filelink"),
        "--data-binary",
        "x",
    ]);
    server.local(&["-XPOST", &url("/files/mkdir?path=/sandbox/dirlink/newdir")]);
    assert_eq!(
        std::fs::read_dir(host_dir.path()).unwrap().count(),
        0,
        "nothing written on the host"
    );
    // A FIFO planted at the path neither hangs nor feeds the server.
    let (code, _, body) = server.local(&[&url("/files?path=/sandbox/fifo")]);
    assert_eq!(
        (code, json(&body)["code"].as_str()),
        (400, Some("not_a_file"))
    );

    // A host file behind a planted symlink is not read.
    std::fs::write(host_dir.path().join("secret"), "host-secret").unwrap();
    let plant = format!(r#"{{"shell":"ln -s {host}/secret /sandbox/secretlink"}}"#);
    server.local(&["-XPOST", &url("/commands?wait=true"), "-d", &plant]);
    let (code, _, body) = server.local(&[&url("/files?path=/sandbox/secretlink")]);
    assert!(!body.contains("host-secret"), "{code}: {body}");
    let (code, _, body) = server.local(&[&url("/files/list?path=/sandbox/dirlink")]);
    assert!(!body.contains("secret"), "{code}: {body}");
}

/// A second server on the same state root or socket refuses to start (it would adopt, and
/// remove, the first one's sandboxes).
#[test]
fn serve_second_server_on_the_same_state_refuses() {
    require_root!();
    let server = TestServer::start(&[]);
    let state = server.state();
    let other_socket = server.dir.path().join("other.sock");
    let out = nsbox_cmd(&[
        "--state-root",
        state.to_str().unwrap(),
        "serve",
        "--socket",
        other_socket.to_str().unwrap(),
    ])
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("another nsbox serve"),
        "{out:?}"
    );
    let elsewhere = tempfile::tempdir().unwrap();
    let out = nsbox_cmd(&[
        "--state-root",
        elsewhere.path().to_str().unwrap(),
        "serve",
        "--socket",
        server.socket.to_str().unwrap(),
    ])
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("another server listens"),
        "{out:?}"
    );
    assert_eq!(
        server.local(&["localhost/v1/health"]).0,
        200,
        "the first server still serves"
    );
}

/// One keep-alive connection: `refused` is sent with its body arriving only after the
/// headers (as a slow or pooled client sends it), then a health check on the same
/// connection. Both must be answered: a server that answered before reading the body would
/// have the connection closed under it (hyper does so) and the second request would fail.
fn refused_then_good(mut conn: impl std::io::Read + std::io::Write, refused: &str) -> String {
    let body = r#"{"argv":["true"],"signal":"TERM"}"#;
    write!(
        conn,
        "{refused} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    conn.flush().unwrap();
    // Not a timed assertion: only makes the body a separate read on the server's side.
    std::thread::sleep(std::time::Duration::from_millis(200));
    conn.write_all(body.as_bytes()).unwrap();
    conn.write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    let _ = conn.read_to_string(&mut text);
    text
}

/// Every /v1 refusal (no key, unknown sandbox, unknown command, unknown route) reads the
/// request body first, so a keep-alive client's next request on the connection is answered.
#[test]
fn serve_early_refusals_keep_the_connection_usable() {
    require_root!();
    let server = TestServer::start(&[]);
    let (code, _, body) = server.local(&["-XPOST", "http://x/v1/sandboxes", "-d", "{}"]);
    assert_eq!(code, 201, "{body}");
    let id = json(&body)["id"].as_str().unwrap().to_string();
    let refusals = [
        "POST /v1/sandboxes/nope/commands".to_string(),
        format!("POST /v1/sandboxes/{id}/commands/nope/signal"),
        format!("POST /v1/sandboxes/{id}/commands/nope/stdin"),
        "PUT /v1/sandboxes/nope/files?path=/x".to_string(),
        format!("PUT /v1/sandboxes/{id}/files"),
        "POST /v1/nothing-here".to_string(),
    ];
    for refused in &refusals {
        let conn = std::os::unix::net::UnixStream::connect(&server.socket).unwrap();
        let text = refused_then_good(conn, refused);
        assert_eq!(text.matches("HTTP/1.1 ").count(), 2, "{refused}:\n{text}");
        let last = text.rsplit("HTTP/1.1 ").next().unwrap();
        assert!(
            last.starts_with("200") && last.contains("ok"),
            "{refused}:\n{text}"
        );
    }
    // Over TCP without a key: the 401 too.
    let conn = std::net::TcpStream::connect(&server.tcp).unwrap();
    let text = refused_then_good(conn, "POST /v1/sandboxes");
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    assert_eq!(text.matches("HTTP/1.1 ").count(), 2, "{text}");
    assert_eq!(
        server.recorded(),
        std::slice::from_ref(&id),
        "nothing else made"
    );
    let (code, _, _) = server.local(&["-XDELETE", &format!("http://x/v1/sandboxes/{id}")]);
    assert_eq!(code, 200);
}

/// Snapshots through the API (`/v1/sandboxes/{id}/pause|resume|commit|fork`): a paused
/// sandbox refuses commands until resumed; a commit is an image that runs with the sandbox's
/// files; forks start from those files, diverge, and never get the parent's secret; a fork
/// over the key's limit is a 429 that keeps nothing; another key cannot touch the sandbox.
#[test]
fn serve_pause_resume_commit_and_fork() {
    require_root!();
    let server = TestServer::start(&[]);
    server.load_base_image("snapbase:1");
    let state = server.state();
    let st = state.to_str().unwrap();
    let key = server.key("snap", Some(3));
    let other = server.key("other", None);
    let call = |token: &str, method: &str, path: &str, body: Option<&str>| {
        server.remote(Some(token), method, path, body)
    };
    let run = |id: &str, shell: &str| {
        let body = serde_json::json!({ "shell": shell }).to_string();
        let (code, _, out) = call(
            &key,
            "POST",
            &format!("/v1/sandboxes/{id}/commands?wait=true"),
            Some(&body),
        );
        (code, out)
    };
    let (code, _, body) = call(
        &key,
        "POST",
        "/v1/sandboxes",
        Some(
            r#"{"image":"snapbase:1","secrets":{"TOKEN":"s3cret-v4lue"},"labels":{"role":"parent"}}"#,
        ),
    );
    assert_eq!(code, 201, "{body}");
    let parent = json(&body)["id"].as_str().unwrap().to_string();
    let (code, out) = run(&parent, "echo parent > /sandbox/f; echo ${TOKEN:-none}");
    assert_eq!(
        (code, json(&out)["stdout"].as_str()),
        (200, Some("***\n")),
        "{out}"
    );

    // Pause: commands are refused until resume; pausing twice or resuming a running one is a
    // conflict.
    let path = |what: &str| format!("/v1/sandboxes/{parent}/{what}");
    let (code, _, body) = call(&key, "POST", &path("pause"), None);
    assert_eq!(
        (code, json(&body)["paused"].as_bool()),
        (200, Some(true)),
        "{body}"
    );
    let (code, _, body) = call(&key, "POST", &path("pause"), None);
    assert_eq!(
        (code, json(&body)["code"].as_str()),
        (409, Some("already_paused")),
        "{body}"
    );
    let (code, out) = run(&parent, "echo while paused");
    assert_eq!(code, 409, "a command in a paused sandbox: {out}");
    assert!(out.contains("paused"), "{out}");
    let (code, _, body) = call(&key, "POST", &path("resume"), None);
    assert_eq!(
        (code, json(&body)["paused"].as_bool()),
        (200, Some(false)),
        "{body}"
    );
    let (code, _, body) = call(&key, "POST", &path("resume"), None);
    assert_eq!(
        (code, json(&body)["code"].as_str()),
        (409, Some("not_paused")),
        "{body}"
    );
    let (code, out) = run(&parent, "echo resumed");
    assert_eq!(
        (code, json(&out)["stdout"].as_str()),
        (200, Some("resumed\n")),
        "{out}"
    );

    // Commit: an image of the sandbox's files, which runs anywhere nsbox runs.
    let (code, _, body) = call(
        &key,
        "POST",
        &path("commit"),
        Some(r#"{"image":"snapped:1"}"#),
    );
    assert_eq!(code, 201, "{body}");
    assert!(
        json(&body)["digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:"),
        "{body}"
    );
    let shown = nsbox_cmd(&[
        "--state-root",
        st,
        "run",
        "--image",
        "snapped:1",
        "--",
        "cat",
        "/sandbox/f",
    ])
    .output()
    .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&shown.stdout),
        "parent\n",
        "{shown:?}"
    );
    let (code, _, body) = call(
        &key,
        "POST",
        &path("commit"),
        Some(r#"{"image":"Bad Name!"}"#),
    );
    assert_eq!(code, 400, "{body}");
    let (code, _, body) = call(
        &key,
        "POST",
        &path("commit"),
        Some(r#"{"image":"x","extra":1}"#),
    );
    assert_eq!(code, 400, "unknown fields are refused: {body}");

    // Another key: the sandbox does not exist for it.
    for what in ["pause", "resume", "fork"] {
        let (code, _, body) = call(&other, "POST", &path(what), Some("{}"));
        assert_eq!(code, 404, "{what} by another key: {body}");
    }

    // Fork twice (the key's limit of 3 is reached): each starts from the parent's files,
    // without its secret, and their writes stay their own.
    let (code, _, body) = call(
        &key,
        "POST",
        &path("fork"),
        Some(r#"{"count":2,"labels":{"role":"fork"}}"#),
    );
    assert_eq!(code, 201, "{body}");
    let forks: Vec<String> = json(&body)["sandboxes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(forks.len(), 2);
    for (i, fork) in forks.iter().enumerate() {
        let (code, out) = run(
            fork,
            &format!("cat /sandbox/f; echo ${{TOKEN:-none}}; echo {i} > /sandbox/mine"),
        );
        assert_eq!(
            (code, json(&out)["stdout"].as_str()),
            (200, Some("parent\nnone\n")),
            "{out}"
        );
    }
    for (i, fork) in forks.iter().enumerate() {
        let (_, out) = run(fork, "cat /sandbox/mine");
        assert_eq!(
            json(&out)["stdout"],
            format!("{i}\n"),
            "each fork keeps its own write"
        );
    }
    let (_, out) = run(&parent, "cat /sandbox/mine 2>&1 || echo absent");
    assert!(
        json(&out)["stdout"].as_str().unwrap().ends_with("absent\n"),
        "{out}"
    );
    // Over the limit: 429, and no fork is kept.
    let (code, _, body) = call(&key, "POST", &path("fork"), Some(r#"{"count":1}"#));
    assert_eq!(code, 429, "{body}");
    let (_, _, body) = call(&key, "GET", "/v1/sandboxes", None);
    assert_eq!(
        json(&body)["sandboxes"].as_array().unwrap().len(),
        3,
        "{body}"
    );
    // The forks stand on a snapshot layer of the store (no image was committed for them),
    // and run as the parent's user, over the parent's files with their owners.
    let snapshot_layers = std::fs::read_dir(state.join("layers"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("snapshot-"))
        .count();
    assert_eq!(snapshot_layers, 1, "one snapshot layer for both forks");
    let (_, parent_ids) = run(&parent, "id -u; stat -c %u /sandbox/f");
    let (_, fork_ids) = run(&forks[0], "id -u; stat -c %u /sandbox/f");
    assert_eq!(json(&fork_ids)["stdout"], json(&parent_ids)["stdout"]);
    let leftovers: Vec<_> = std::fs::read_dir(state.join("serve/sandboxes"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("fork-"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "hand-over files are removed: {leftovers:?}"
    );
    // The snapshot the forks stand on is nobody's image name (its layers stay while used).
    let images = nsbox_cmd(&["--state-root", st, "images", "--json"])
        .output()
        .unwrap();
    let images = String::from_utf8_lossy(&images.stdout);
    assert!(!images.contains("nsbox-fork-"), "{images}");
    // The forks outlive their parent.
    let (code, _, _) = call(&key, "DELETE", &format!("/v1/sandboxes/{parent}"), None);
    assert_eq!(code, 200);
    let (code, out) = run(&forks[0], "cat /sandbox/f");
    assert_eq!(
        (code, json(&out)["stdout"].as_str()),
        (200, Some("parent\n")),
        "{out}"
    );
    for fork in &forks {
        let (code, _, _) = call(&key, "DELETE", &format!("/v1/sandboxes/{fork}"), None);
        assert_eq!(code, 200);
    }
    // The audit log names each operation.
    let audit = std::fs::read_to_string(state.join("serve/audit.log")).unwrap();
    for action in [
        "sandbox.pause",
        "sandbox.resume",
        "sandbox.commit",
        "sandbox.fork",
    ] {
        assert!(
            audit.contains(&format!("\"action\":\"{action}\"")),
            "{action}"
        );
    }
    assert!(!audit.contains("s3cret-v4lue"));
    assert!(server.recorded().is_empty());
}
