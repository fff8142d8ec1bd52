//! Secretless credentials over real HTTP/1.1 traffic (docs/credentials.md, "Requests on a
//! connection"): keep-alive and pipelined requests each checked and injected, a placeholder
//! smuggled into a later request for another host refused, server-sent events streamed, a
//! WebSocket upgrade, HTTP/2 clients falling back to 1.1, `git push` to a git smart-HTTP
//! server demanding a token, and a 1 GiB upload with the supervisor's memory staying small.

use std::io::{BufRead, Write};
use std::process::Stdio;

use crate::networld::*;
use crate::require_root;
use crate::support::*;

const PORT: u16 = 9445;

/// HTTPS (the world's test CA) on [`PORT`], every address. Each request is logged (client
/// port, method, path, headers, and for /upload the body's length) to a file the sandbox
/// cannot see. /sse streams one event, then a second only once /ack has been requested (so a
/// client sees the second only if the first reached it unbuffered); /ws answers a WebSocket
/// upgrade and echoes one frame; /git/... runs `git http-backend`, demanding Basic auth with
/// the token given; /upload counts a (chunked or sized) body.
const SERVER_PY: &str = r#"
import base64, hashlib, http.server, os, socket, ssl, subprocess, sys, threading
log, cert, key, git_root, token = sys.argv[1:6]
lock = threading.Lock()
acked = threading.Event()
want_auth = "Basic " + base64.b64encode(("x-access-token:" + token).encode()).decode()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def record(self, extra=""):
        with lock, open(log, "a") as f:
            f.write("%d %s %s\n%s%s\n--\n" % (self.client_address[1], self.command, self.path,
                    str(self.headers), extra))
    def body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            total, parts = 0, []
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b""):
                        pass
                    return total, b"".join(parts)
                left = size
                while left:
                    piece = self.rfile.read(min(left, 1 << 20))
                    left -= len(piece)
                    total += len(piece)
                    if len(parts) < 64:
                        parts.append(piece)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        total = 0
        parts = []
        while total < n:
            piece = self.rfile.read(min(n - total, 1 << 20))
            if not piece:
                break
            total += len(piece)
            parts.append(piece)
        return total, b"".join(parts)
    def send(self, code, out, headers=()):
        self.send_response(code)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
    def answer(self):
        if self.path.startswith("/git/"):
            return self.git()
        if self.path == "/ws":
            return self.ws()
        if self.path == "/sse":
            self.record()
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"data: one\n\n")
            self.wfile.flush()
            two = b"data: two-after-ack\n\n" if acked.wait(60) else b"data: two-without-ack\n\n"
            self.wfile.write(two)
            self.wfile.flush()
            self.close_connection = True
            return
        if self.path == "/ack":
            acked.set()
        total, body = self.body()
        extra = "len=%d\n" % total if self.path == "/upload" else body[:4096].decode("latin-1")
        self.record(extra)
        self.send(200, b"ok\n")
    do_GET = do_POST = do_PUT = answer
    def ws(self):
        self.record()
        accept = base64.b64encode(hashlib.sha1((self.headers["Sec-WebSocket-Key"] +
                 "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        b0, b1 = self.rfile.read(2)
        mask = self.rfile.read(4)
        data = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(b1 & 0x7f)))
        out = b"echo:" + data
        self.wfile.write(bytes([0x81, len(out)]) + out)
        self.wfile.flush()
        self.close_connection = True
    def git(self):
        total, body = self.body()
        self.record()
        if self.headers.get("Authorization") != want_auth:
            return self.send(401, b"token required\n", [("WWW-Authenticate", 'Basic realm="git"')])
        path, _, query = self.path[len("/git"):].partition("?")
        env = dict(os.environ, GIT_PROJECT_ROOT=git_root, GIT_HTTP_EXPORT_ALL="1",
                   PATH_INFO=path, QUERY_STRING=query, REQUEST_METHOD=self.command,
                   REMOTE_USER="token", REMOTE_ADDR="198.51.100.2",
                   CONTENT_TYPE=self.headers.get("Content-Type", ""),
                   CONTENT_LENGTH=str(len(body)))
        if self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
        if self.headers.get("Git-Protocol"):
            env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
        out = subprocess.run(["git", "http-backend"], input=body, env=env,
                             capture_output=True).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        code, headers = 200, []
        for line in head.split(b"\r\n"):
            k, _, v = line.decode().partition(": ")
            if k.lower() == "status":
                code = int(v.split()[0])
            elif k:
                headers.append((k, v))
        self.send(code, payload, headers)
    def log_message(self, *a):
        pass
class S(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True
    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()
s = S(("::", 9445), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
s.socket = ctx.wrap_socket(s.socket, server_side=True)
print("ready", flush=True)
s.serve_forever()
"#;

/// A raw HTTP/1.1 client inside the sandbox (Python, trusting the sandbox CA through
/// SSL_CERT_FILE): sends argv[1] (with `KEY` replaced by $LLM_KEY and `\r\n` escapes) in one
/// write on one TLS connection to web.allowed.example:9445, prints how many "ok" responses
/// came back before the connection ended.
const PIPE_PY: &str = r#"
import os, socket, ssl, sys
text = sys.argv[1].replace("KEY", os.environ["LLM_KEY"]).replace("\\r\\n", "\r\n")
ctx = ssl.create_default_context()
s = ctx.wrap_socket(socket.create_connection(("web.allowed.example", 9445), timeout=20),
                    server_hostname="web.allowed.example")
s.sendall(text.encode())
got = b""
want = int(sys.argv[2])
while got.count(b"\r\n\r\nok\n") < want:
    try:
        piece = s.recv(65536)
    except (ConnectionError, ssl.SSLError):
        break
    if not piece:
        break
    got += piece
print("%s=%d" % (sys.argv[3], got.count(b"\r\n\r\nok\n")))
"#;

/// A WebSocket client (Python, stdlib): upgrade with the key in x-api-key, send one frame,
/// print the status line and the echoed frame.
const WS_PY: &str = r#"
import base64, os, socket, ssl
ctx = ssl.create_default_context()
s = ctx.wrap_socket(socket.create_connection(("web.allowed.example", 9445), timeout=20),
                    server_hostname="web.allowed.example")
k = base64.b64encode(os.urandom(16)).decode()
s.sendall(("GET /ws HTTP/1.1\r\nHost: web.allowed.example:9445\r\nUpgrade: websocket\r\n"
           "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
           "x-api-key: %s\r\n\r\n" % (k, os.environ["LLM_KEY"])).encode())
got = b""
while b"\r\n\r\n" not in got:
    got += s.recv(4096)
head, rest = got.split(b"\r\n\r\n", 1)
print("ws-status=" + head.split(b"\r\n")[0].decode())
msg, mask = b"hello over ws", os.urandom(4)
s.sendall(bytes([0x81, 0x80 | len(msg)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(msg)))
while len(rest) < 2 or len(rest) < 2 + rest[1]:
    rest += s.recv(4096)
print("ws-frame=" + rest[2:2 + rest[1]].decode())
"#;

struct Server {
    dir: tempfile::TempDir,
}

impl Server {
    /// Starts the server; `token` is what the git endpoint demands.
    fn start(w: &mut World, token: &str) -> Server {
        let dir = tempfile::Builder::new()
            .prefix("nsb-credh-")
            .tempdir()
            .expect("temp dir");
        let d = dir.path().display().to_string();
        let wd = w.dir.path().display().to_string();
        let script = format!(
            r#"set -e; cd '{d}'
git init -q -b main src
echo 'first' > src/README
git -C src add README
git -C src -c user.name=t -c user.email=t@example.com commit -qm first
git clone -q --bare src repo.git"#
        );
        let ok = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .status()
            .expect("git");
        assert!(ok.success());
        let (log, cert, key) = (
            format!("{d}/requests.log"),
            format!("{wd}/server.pem"),
            format!("{wd}/server.key"),
        );
        let ns = w.inet_ns.clone();
        w.spawn_server(
            &ns,
            &[
                "/usr/bin/python3",
                "-c",
                SERVER_PY,
                &log,
                &cert,
                &key,
                &d,
                token,
            ],
        );
        Server { dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("requests.log")).unwrap_or_default()
    }

    /// The logged requests whose first line contains `path`.
    fn requests(&self, path: &str) -> Vec<String> {
        self.log()
            .split("\n--\n")
            .filter(|r| {
                r.lines()
                    .next()
                    .is_some_and(|l| l.split(' ').nth(2) == Some(path))
            })
            .map(str::to_string)
            .collect()
    }

    /// The client port a logged request came from.
    fn port(request: &str) -> &str {
        request.split(' ').next().unwrap_or_default()
    }
}

fn real_key() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("sk-real-{}y{nanos}", std::process::id())
}

fn command(w: &World, key: &str, script: &str) -> std::process::Command {
    let flags = w.filtered_flags();
    let mut args: Vec<&str> = vec!["exec", "--json"];
    args.extend(flags.iter().map(String::as_str));
    args.extend_from_slice(&[
        "--allow",
        "web.allowed.example",
        "--allow",
        "cdn.allowed.example",
        "--credential",
        "LLM_KEY=web.allowed.example",
        "--env",
        "HOME=/tmp",
        "--",
        "sh",
        "-c",
        script,
    ]);
    let mut cmd = w.nsbox_cmd(&args);
    cmd.env("LLM_KEY", key).env(
        "NSBOX_EGRESS_CA_FILE",
        w.dir.path().join("ca.pem").display().to_string(),
    );
    cmd
}

fn output(events: &[serde_json::Value]) -> String {
    events
        .iter()
        .filter(|e| e["type"] == "stdout")
        .filter_map(|e| e["data"].as_str())
        .collect()
}

/// Intercepted connections (the proxy's "allowed ... TLS intercepted" events) to PORT.
fn intercepted(events: &[serde_json::Value]) -> usize {
    events
        .iter()
        .filter(|e| {
            e["type"] == "connection"
                && e["port"] == PORT
                && e["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("TLS intercepted"))
        })
        .count()
}

#[test]
fn credential_keep_alive_pipelining_sse_websocket_and_http2() {
    require_root!();
    let mut w = World::start();
    let key = real_key();
    let server = Server::start(&mut w, &key);
    let url = format!("https://web.allowed.example:{PORT}");
    let pipe = |label: &str, want: usize, text: &str| {
        format!("python3 -c '{PIPE_PY}' '{text}' {want} {label}\n")
    };
    let mut script = String::new();
    // Keep-alive: curl sends three requests on one connection.
    script += &format!("curl -sS -m 20 -H \"x-api-key: $LLM_KEY\" {url}/ka1 {url}/ka2 {url}/ka3\n");
    // Pipelined: three requests in one write, each injected, three answers.
    let three: String = (1..=3)
        .map(|i| format!("GET /pipe{i} HTTP/1.1\\r\\nHost: web.allowed.example\\r\\nx-api-key: KEY\\r\\n\\r\\n"))
        .collect();
    script += &pipe("pipelined", 3, &three);
    // A chunked body, then a second request on the same connection.
    script += &pipe(
        "chunked",
        2,
        "POST /chunked HTTP/1.1\\r\\nHost: web.allowed.example\\r\\nTransfer-Encoding: chunked\\r\\nx-api-key: KEY\\r\\n\\r\\n5\\r\\nhello\\r\\n0\\r\\n\\r\\nGET /after-chunked HTTP/1.1\\r\\nHost: web.allowed.example\\r\\nAuthorization: Bearer KEY\\r\\n\\r\\n",
    );
    // Attacks: a later request on the connection for another host, after a sized body and
    // after a chunked one (where a lenient relay would stop looking), and a later upgrade.
    script += &pipe(
        "smuggle_host",
        2,
        "GET /smuggle1 HTTP/1.1\\r\\nHost: web.allowed.example\\r\\nx-api-key: KEY\\r\\n\\r\\nGET /smuggle2 HTTP/1.1\\r\\nHost: cdn.allowed.example\\r\\nx-api-key: KEY\\r\\n\\r\\n",
    );
    script += &pipe(
        "smuggle_chunked",
        2,
        "POST /smuggle3 HTTP/1.1\\r\\nHost: web.allowed.example\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n0\\r\\n\\r\\nGET /smuggle4 HTTP/1.1\\r\\nHost: cdn.allowed.example\\r\\nx-api-key: KEY\\r\\n\\r\\n",
    );
    script += &pipe(
        "smuggle_upgrade",
        2,
        "GET /smuggle5 HTTP/1.1\\r\\nHost: web.allowed.example\\r\\n\\r\\nGET /smuggle6 HTTP/1.1\\r\\nHost: web.allowed.example\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\nx-api-key: KEY\\r\\n\\r\\n",
    );
    // Server-sent events: the second event comes only after the client, having seen the
    // first, asks for /ack; a proxy that buffered the stream would never see it.
    script += &format!(
        r#"curl -sS -N -m 60 -H "x-api-key: $LLM_KEY" {url}/sse | while read -r line; do
  [ -n "$line" ] && echo "sse $line"
  [ "$line" = "data: one" ] && curl -sS -m 20 -H "x-api-key: $LLM_KEY" {url}/ack >/dev/null
done
"#
    );
    script += &format!("python3 -c '{WS_PY}'\n");
    // HTTP/2 offered: ALPN settles on HTTP/1.1 and the request works.
    script += &format!(
        "curl -sS -m 20 --http2 -o /dev/null -w 'h2-offered=%{{http_version}} %{{http_code}}\\n' -H \"x-api-key: $LLM_KEY\" {url}/h2\n"
    );
    let r: Run = command(&w, &key, &script)
        .stdin(Stdio::null())
        .output()
        .expect("nsbox")
        .into();
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        !r.stdout.contains(&key) && !r.stderr.contains(&key),
        "{r:?}"
    );
    let events = events(&r.stdout);
    let out = output(&events);
    let log = server.log();

    // Keep-alive: one connection (one client port, one interception), each request injected.
    let ka: Vec<String> = (1..=3)
        .flat_map(|i| server.requests(&format!("/ka{i}")))
        .collect();
    assert_eq!(ka.len(), 3, "{log}");
    assert!(
        ka.iter()
            .all(|r| r.contains(&format!("x-api-key: {key}\n"))),
        "{log}"
    );
    assert!(
        ka.iter().all(|r| Server::port(r) == Server::port(&ka[0])),
        "{log}"
    );
    // Pipelined and after a chunked body: every request arrived injected.
    assert!(out.contains("pipelined=3\n"), "{out}");
    assert!(out.contains("chunked=2\n"), "{out}");
    for path in ["/pipe1", "/pipe2", "/pipe3", "/chunked"] {
        let got = server.requests(path);
        assert_eq!(got.len(), 1, "{path}: {log}");
        assert!(got[0].contains(&format!("x-api-key: {key}\n")), "{log}");
    }
    assert!(server.requests("/chunked")[0].ends_with("hello"), "{log}");
    assert!(
        server.requests("/after-chunked")[0].contains(&format!("Authorization: Bearer {key}\n")),
        "{log}"
    );
    // The smuggled requests never left: the connection ended after the honest one.
    for label in ["smuggle_host", "smuggle_chunked", "smuggle_upgrade"] {
        assert!(out.contains(&format!("{label}=1\n")), "{out}");
    }
    for path in ["/smuggle2", "/smuggle4", "/smuggle6"] {
        assert!(server.requests(path).is_empty(), "{path}: {log}");
    }
    assert_eq!(server.requests("/smuggle1").len(), 1, "{log}");
    let refused = |what: &str| {
        events.iter().any(|e| {
            e["type"] == "connection"
                && e["decision"] == "refused"
                && e["reason"].as_str().is_some_and(|r| r.contains(what))
        })
    };
    assert!(
        refused("the Host header (cdn.allowed.example) is not the TLS SNI"),
        "{events:#?}"
    );
    assert!(
        refused("only the first request may switch protocols"),
        "{events:#?}"
    );
    // SSE: the first event reached the client before the stream went on.
    assert!(out.contains("sse data: one\n"), "{out}");
    assert!(out.contains("sse data: two-after-ack\n"), "{out}");
    assert!(server.requests("/sse")[0].contains(&format!("x-api-key: {key}\n")));
    // WebSocket: upgraded with the key injected into the upgrade request, then relayed.
    assert!(out.contains("ws-status=HTTP/1.1 101"), "{out}");
    assert!(out.contains("ws-frame=echo:hello over ws\n"), "{out}");
    assert!(
        server.requests("/ws")[0].contains(&format!("x-api-key: {key}\n")),
        "{log}"
    );
    // HTTP/2 offered, HTTP/1.1 spoken.
    assert!(out.contains("h2-offered=1.1 200\n"), "{out}");
    assert!(server.requests("/h2")[0].contains(&format!("x-api-key: {key}\n")));
    // One interception per connection: keep-alive did not open more.
    let connections = 1 + 5 + 2 + 1 + 1;
    assert_eq!(intercepted(&events), connections, "{events:#?}");
    let injected = events
        .iter()
        .filter(|e| e["type"] == "credential_injected")
        .count();
    // ka 3, pipe 3, chunked 2, smuggle1 (the other smuggle connections' honest requests
    // carry no key), sse 2 (the stream and the ack), ws, h2.
    assert_eq!(injected, 3 + 3 + 2 + 1 + 2 + 1 + 1, "{events:#?}");
}

#[test]
fn credential_git_push_over_https_with_a_token() {
    require_root!();
    let mut w = World::start();
    let key = real_key();
    let server = Server::start(&mut w, &key);
    let script = format!(
        r#"set -e
cd /tmp
git clone -q "https://x-access-token:$LLM_KEY@web.allowed.example:{PORT}/git/repo.git" work
cd work
echo 'pushed from a sandbox' > PUSHED
git add PUSHED
git -c user.name=agent -c user.email=agent@example.com commit -qm 'from the sandbox'
git push -q origin main
echo pushed
"#
    );
    let r: Run = command(&w, &key, &script)
        .stdin(Stdio::null())
        .output()
        .expect("nsbox")
        .into();
    assert_eq!(r.code, 0, "{r:?}\n{}", server.log());
    assert!(
        !r.stdout.contains(&key) && !r.stderr.contains(&key),
        "{r:?}"
    );
    let out = output(&events(&r.stdout));
    assert!(out.contains("pushed\n"), "{out}");
    // The server's repository has the commit, received with the real token.
    let shown = std::process::Command::new("git")
        .args(["--git-dir"])
        .arg(server.dir.path().join("repo.git"))
        .args(["show", "main:PUSHED"])
        .output()
        .expect("git show");
    assert_eq!(
        String::from_utf8_lossy(&shown.stdout),
        "pushed from a sandbox\n"
    );
    let basic = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("x-access-token:{key}"),
    );
    let pushes = server.requests("/git/repo.git/git-receive-pack");
    assert!(!pushes.is_empty(), "{}", server.log());
    assert!(
        pushes
            .iter()
            .any(|p| p.contains(&format!("Authorization: Basic {basic}\n"))),
        "{}",
        server.log()
    );
}

/// The largest peak resident size (KiB) of the nsbox processes under `pid` (the supervisor
/// and its helpers; the workload's programs are not nsbox).
fn nsbox_peak_rss_kib(pid: u32) -> u64 {
    let nsbox = std::fs::canonicalize(nsbox_bin()).expect("nsbox binary");
    let mut peak = 0;
    let mut stack = vec![pid];
    let mut seen = std::collections::HashSet::new();
    while let Some(p) = stack.pop() {
        if !seen.insert(p) {
            continue;
        }
        let is_nsbox = std::fs::read_link(format!("/proc/{p}/exe")).is_ok_and(|e| e == nsbox);
        if is_nsbox {
            let status = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
            if let Some(kib) = status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
            {
                peak = peak.max(kib);
            }
        }
        for task in std::fs::read_dir(format!("/proc/{p}/task"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            stack.extend(
                children
                    .split_whitespace()
                    .filter_map(|c| c.parse::<u32>().ok()),
            );
        }
    }
    peak
}

#[test]
fn credential_one_gib_upload_streams_with_the_supervisor_memory_bounded() {
    require_root!();
    let mut w = World::start();
    let key = real_key();
    let server = Server::start(&mut w, &key);
    // The upload (chunked, from a pipe: nothing holds it whole), then the workload waits for
    // the test to have looked at the supervisor.
    let script = format!(
        r#"head -c 1073741824 /dev/zero | curl -sS -m 600 -T - -H "x-api-key: $LLM_KEY" https://web.allowed.example:{PORT}/upload
echo uploaded
read -r _"#
    );
    let mut cmd = w.nsbox_cmd(&[]);
    // Not --json: a plain line tells the test the upload is through.
    let flags = w.filtered_flags();
    let mut args: Vec<&str> = vec!["exec", "-i"];
    args.extend(flags.iter().map(String::as_str));
    args.extend_from_slice(&[
        "--allow",
        "web.allowed.example",
        "--credential",
        "LLM_KEY=web.allowed.example",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    cmd.args(&args)
        .env("LLM_KEY", &key)
        .env(
            "NSBOX_EGRESS_CA_FILE",
            w.dir.path().join("ca.pem").display().to_string(),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("nsbox");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut seen = String::new();
    for line in lines.by_ref() {
        let line = line.expect("stdout");
        seen.push_str(&line);
        seen.push('\n');
        if line == "uploaded" {
            break;
        }
    }
    let peak_kib = nsbox_peak_rss_kib(child.id());
    let _ = stdin.write_all(b"\n");
    drop(stdin);
    let r: Run = child.wait_with_output().expect("nsbox").into();
    assert_eq!(r.code, 0, "{seen}{r:?}");
    assert_eq!(seen, "ok\nuploaded\n", "{r:?}");
    let got = server.requests("/upload");
    assert_eq!(got.len(), 1, "{}", server.log());
    assert!(
        got[0].contains(&format!("x-api-key: {key}\n")),
        "{}",
        got[0]
    );
    assert!(
        got[0].contains(&format!("len={}\n", 1u64 << 30)),
        "{}",
        got[0]
    );
    // Streamed: the supervisor held a sliver of the GiB (its whole peak, startup included).
    eprintln!("nsbox peak RSS during a 1 GiB intercepted upload: {peak_kib} KiB");
    assert!(peak_kib > 0 && peak_kib < 128 * 1024, "{peak_kib} KiB");
}

/// Bindings from a profile (`[network] credentials`), in the header form: the value goes into
/// the named header only; the placeholder in another header arrives unchanged and is reported.
#[test]
fn credential_from_a_profile_goes_only_into_its_named_header() {
    require_root!();
    let mut w = World::start();
    let key = real_key();
    let server = Server::start(&mut w, &key);
    let profile = tempfile::Builder::new()
        .suffix(".toml")
        .tempfile()
        .expect("profile");
    std::fs::write(
        profile.path(),
        "[network]\nmode = \"filtered\"\nallow = [\"web.allowed.example\"]\ncredentials = [\"LLM_KEY:x-api-key=web.allowed.example\"]\n",
    )
    .unwrap();
    let flags = w.filtered_flags();
    let mut args: Vec<&str> = vec!["exec", "--json"];
    args.extend(flags.iter().map(String::as_str));
    let script = format!(
        r#"curl -sS -m 20 -H "x-api-key: $LLM_KEY" -H "X-Debug: $LLM_KEY" https://web.allowed.example:{PORT}/named"#
    );
    let path = profile.path().display().to_string();
    args.extend_from_slice(&["--profile", &path, "--", "sh", "-c", &script]);
    let r: Run = w
        .nsbox_cmd(&args)
        .env("LLM_KEY", &key)
        .env(
            "NSBOX_EGRESS_CA_FILE",
            w.dir.path().join("ca.pem").display().to_string(),
        )
        .stdin(Stdio::null())
        .output()
        .expect("nsbox")
        .into();
    assert_eq!(r.code, 0, "{r:?}");
    let events = events(&r.stdout);
    let got = server.requests("/named");
    assert_eq!(got.len(), 1, "{}", server.log());
    assert!(
        got[0].contains(&format!("x-api-key: {key}\n")),
        "{}",
        got[0]
    );
    assert!(
        got[0].contains("X-Debug: nsbox-cred-llm_key-"),
        "{}",
        got[0]
    );
    assert_eq!(got[0].matches(&key).count(), 1, "{}", got[0]);
    assert!(
        events.iter().any(|e| e["type"] == "credential_refused"
            && e["place"] == "header x-debug"
            && e["host"] == "web.allowed.example"),
        "{events:#?}"
    );
}
