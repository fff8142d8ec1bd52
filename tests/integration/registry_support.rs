//! A real registry on loopback for the pull tests: Debian's `docker-registry` (the CNCF
//! distribution registry) with a temporary config and storage, optionally behind htpasswd
//! basic auth or token auth (a tiny token server here signs JWTs with `openssl`), images
//! pushed into it with `skopeo`; and a TCP proxy that can cut a blob download or play a
//! registry that went away. Everything listens on 127.0.0.1 and is stopped on drop.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;

use crate::support::{checked_output, eventually};

pub const USER: &str = "agent";
pub const PASSWORD: &str = "s3cret-pass";

/// How the registry authenticates.
pub enum Auth {
    None,
    /// htpasswd with [`USER`]/[`PASSWORD`].
    Basic,
    /// Bearer tokens from a [`TokenServer`] that knows [`USER`]/[`PASSWORD`].
    Token,
}

/// Whether the tools the registry tests need are installed (CI installs them).
pub fn tools_present() -> bool {
    let ok = [
        "/usr/bin/docker-registry",
        "/usr/bin/skopeo",
        "/usr/bin/htpasswd",
        "/usr/bin/openssl",
    ]
    .iter()
    .all(|p| Path::new(p).exists());
    if !ok && std::env::var("NSBOX_TEST_REQUIRE_ROOT").as_deref() != Ok("1") {
        crate::support::skip(
            module_path!(),
            "registry tests need docker-registry, skopeo, apache2-utils and openssl",
        );
    }
    assert!(
        ok || std::env::var("NSBOX_TEST_REQUIRE_ROOT").as_deref() != Ok("1"),
        "the registry tests need docker-registry, skopeo, apache2-utils and openssl (see .ci/run)"
    );
    ok
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `docker-registry serve`.
pub struct LocalRegistry {
    child: Child,
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub token: Option<TokenServer>,
}

impl LocalRegistry {
    pub fn start(auth: Auth) -> LocalRegistry {
        Self::start_with(auth, false)
    }

    /// With `tls`, the registry serves HTTPS with a certificate for 127.0.0.1 signed by a
    /// test CA ([`LocalRegistry::ca`]).
    pub fn start_with(auth: Auth, tls: bool) -> LocalRegistry {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let tls_yaml = if tls {
            make_tls(dir.path())
        } else {
            String::new()
        };
        let mut token = None;
        let auth_yaml = match auth {
            Auth::None => String::new(),
            Auth::Basic => {
                let out = checked_output(Command::new("htpasswd").args(["-Bbn", USER, PASSWORD]));
                let file = dir.path().join("htpasswd");
                std::fs::write(&file, out).unwrap();
                format!(
                    "auth:\n  htpasswd:\n    realm: nsbox-test\n    path: {}\n",
                    file.display()
                )
            }
            Auth::Token => {
                let server = TokenServer::start(dir.path());
                let yaml = format!(
                    "auth:\n  token:\n    realm: http://127.0.0.1:{}/token\n    service: nsbox-test-registry\n    issuer: nsbox-test-issuer\n    rootcertbundle: {}\n",
                    server.port,
                    server.cert.display()
                );
                token = Some(server);
                yaml
            }
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{tls_yaml}{auth_yaml}",
            dir.path().join("data").display()
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        let registry = LocalRegistry {
            child,
            dir,
            port,
            token,
        };
        assert!(
            eventually(15.0, || TcpStream::connect(("127.0.0.1", port)).is_ok()),
            "the registry did not come up: {}",
            std::fs::read_to_string(registry.dir.path().join("registry.log")).unwrap_or_default()
        );
        registry
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The test CA of a registry started with TLS.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// Pushes the OCI layout `dir`'s image `tag` (or its whole index with `all`) as
    /// `repo:tag` with skopeo.
    pub fn push(&self, layout: &Path, src_tag: &str, dest: &str, all: bool) {
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--quiet", "--dest-tls-verify=false"]);
        if all {
            cmd.arg("--all");
        }
        if self.ca().exists() {
            cmd.arg(format!(
                "--dest-cert-dir={}",
                self.dir.path().join("certs.d").display()
            ));
        }
        if self.token.is_some() || Path::new(&self.dir.path().join("htpasswd")).exists() {
            cmd.arg(format!("--dest-creds={USER}:{PASSWORD}"));
        }
        checked_output(
            cmd.arg(format!("oci:{}:{src_tag}", layout.display()))
                .arg(format!("docker://{}/{dest}", self.host())),
        );
    }

    /// The layer digests of `repo:tag` as the registry has them (skopeo compresses
    /// uncompressed layers on push, so they may differ from the layout's).
    pub fn layer_digests(&self, repo_tag: &str) -> Vec<String> {
        let out = checked_output(
            Command::new("skopeo")
                .args(["inspect", "--raw", "--tls-verify=false"])
                .arg(format!("docker://{}/{repo_tag}", self.host())),
        );
        let manifest: serde_json::Value = serde_json::from_slice(&out).unwrap();
        manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_string())
            .collect()
    }

    /// The file the registry stores a blob in.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A CA and a server certificate for 127.0.0.1 in `dir` (ca.crt; server.crt/key); returns
/// the registry's `tls:` config. skopeo finds the CA in `certs.d/`.
fn make_tls(dir: &Path) -> String {
    let openssl = |args: &[&str]| {
        checked_output(Command::new("openssl").args(args).current_dir(dir));
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=nsbox test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
        "-out",
        "server.crt",
    ]);
    std::fs::create_dir_all(dir.join("certs.d")).unwrap();
    std::fs::copy(dir.join("ca.crt"), dir.join("certs.d/ca.crt")).unwrap();
    format!(
        "  tls:\n    certificate: {}\n    key: {}\n",
        dir.join("server.crt").display(),
        dir.join("server.key").display()
    )
}

/// A token service in the distribution spec's shape: `GET /token?service=&scope=` with Basic
/// credentials answers a JWT (RS256, signed by `openssl`, its certificate in `x5c`) that
/// grants the scope's actions; anonymous or wrong credentials get 401.
pub struct TokenServer {
    pub port: u16,
    pub cert: PathBuf,
    /// Request lines seen.
    pub requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TokenServer {
    fn start(dir: &Path) -> TokenServer {
        let key = dir.join("token.key");
        let cert = dir.join("token.crt");
        checked_output(
            Command::new("openssl")
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                ])
                .args(["-subj", "/CN=nsbox-test-token"])
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&cert),
        );
        let der = checked_output(
            Command::new("openssl")
                .args(["x509", "-outform", "DER", "-in"])
                .arg(&cert),
        );
        let x5c = base64::engine::general_purpose::STANDARD.encode(der);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (log, halt) = (requests.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !halt.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        serve_token(stream, &key, &x5c, &log);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        TokenServer {
            port,
            cert,
            requests,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn query_param(path: &str, key: &str) -> Option<String> {
    let query = path.split_once('?')?.1;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| {
            // Percent-decoding of what ureq and skopeo encode in scopes (':' ',' '/').
            let mut out = Vec::new();
            let bytes = v.as_bytes();
            let mut i = 0;
            while i < bytes.len() {
                if bytes[i] == b'%' && i + 2 < bytes.len() {
                    let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                    if let Ok(b) = u8::from_str_radix(hex, 16) {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                }
                out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
                i += 1;
            }
            String::from_utf8_lossy(&out).into_owned()
        })
    })
}

fn serve_token(mut stream: TcpStream, key: &Path, x5c: &str, log: &Mutex<Vec<String>>) {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let line = head.lines().next().unwrap_or("").to_string();
    log.lock().unwrap().push(line.clone());
    let path = line.split(' ').nth(1).unwrap_or("");
    let expected = format!(
        "basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
    );
    let authorized = head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("authorization:")
            && l[14..].trim().eq_ignore_ascii_case(&expected)
    });
    if !authorized {
        let _ = stream.write_all(
            b"HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: 27\r\nConnection: close\r\n\r\n{\"details\":\"unauthorized\"}\n",
        );
        return;
    }
    let mut access = Vec::new();
    // Several scope parameters may be given (skopeo asks for pull,push).
    let query = path.split_once('?').map_or("", |q| q.1);
    for pair in query.split('&') {
        if !pair.starts_with("scope=") {
            continue;
        }
        let scope = query_param(&format!("?{pair}"), "scope").unwrap_or_default();
        let parts: Vec<&str> = scope.split(':').collect();
        if parts.len() == 3 {
            access.push(serde_json::json!({"type": parts[0], "name": parts[1],
                "actions": parts[2].split(',').collect::<Vec<_>>()}));
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [x5c]});
    let claims = serde_json::json!({
        "iss": "nsbox-test-issuer", "sub": USER, "aud": query_param(path, "service").unwrap_or_default(),
        "exp": now + 300, "nbf": now - 10, "iat": now, "jti": format!("{now}-{}", access.len()),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        b64url(&serde_json::to_vec(&header).unwrap()),
        b64url(&serde_json::to_vec(&claims).unwrap())
    );
    let mut openssl = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    openssl
        .stdin
        .take()
        .unwrap()
        .write_all(signing_input.as_bytes())
        .unwrap();
    let signature = openssl.wait_with_output().unwrap().stdout;
    let token = format!("{signing_input}.{}", b64url(&signature));
    let body = serde_json::to_vec(
        &serde_json::json!({"token": token, "access_token": token, "expires_in": 300}),
    )
    .unwrap();
    let _ = stream.write_all(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    let _ = stream.write_all(&body);
}

/// What the proxy does to one blob's download once `after` bytes of its response passed.
#[derive(Clone)]
pub enum Fault {
    /// Close that connection, once; later requests pass.
    CutOnce { blob: String, after: u64 },
    /// The registry goes away: every connection is closed and new ones are dropped until
    /// [`CutProxy::up`].
    Stop { blob: String, after: u64 },
}

struct ProxyState {
    fault: Option<Fault>,
    down: bool,
    /// Request heads seen (request line and headers).
    requests: Vec<String>,
    live: Vec<TcpStream>,
}

/// A TCP proxy in front of a registry that injects [`Fault`]s.
pub struct CutProxy {
    pub port: u16,
    state: Arc<Mutex<ProxyState>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CutProxy {
    pub fn start(upstream: u16, fault: Fault) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(ProxyState {
            fault: Some(fault),
            down: false,
            requests: Vec::new(),
            live: Vec::new(),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, halt) = (state.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !halt.load(Ordering::Relaxed) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let _ = client.set_nonblocking(false);
                if st.lock().unwrap().down {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                {
                    let mut s = st.lock().unwrap();
                    s.live.push(client.try_clone().unwrap());
                    s.live.push(server.try_clone().unwrap());
                }
                spawn_pipes(client, server, st.clone());
            }
        });
        CutProxy {
            port,
            state,
            stop,
            thread: Some(thread),
        }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The registry is back.
    pub fn up(&self) {
        let mut s = self.state.lock().unwrap();
        s.down = false;
        s.fault = None;
    }

    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for s in self.state.lock().unwrap().live.drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn spawn_pipes(client: TcpStream, server: TcpStream, state: Arc<Mutex<ProxyState>>) {
    // The blob the current request on this connection asks for (requests on one connection
    // are sequential: ureq does not pipeline).
    let current: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let (cur, st) = (current.clone(), state.clone());
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match c_in.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let text = String::from_utf8_lossy(&buf[..n]);
            if text.starts_with("GET ") {
                let head = text.split("\r\n\r\n").next().unwrap_or("").to_string();
                let blob = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|p| p.split("/blobs/").nth(1))
                    .map(str::to_string);
                *cur.lock().unwrap() = blob;
                st.lock().unwrap().requests.push(head);
            }
            if s_out.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = s_out.shutdown(Shutdown::Write);
    });
    let (mut s_in, mut c_out) = (server, client);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 16 << 10];
        let mut sent_for: Option<(String, u64)> = None;
        loop {
            let n = match s_in.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let blob = current.lock().unwrap().clone();
            let count = match (&mut sent_for, &blob) {
                (Some((b, c)), Some(now)) if b == now => {
                    *c += n as u64;
                    *c
                }
                (_, Some(now)) => {
                    sent_for = Some((now.clone(), n as u64));
                    n as u64
                }
                _ => 0,
            };
            let mut s = state.lock().unwrap();
            let hit = match (&s.fault, &blob) {
                (Some(Fault::CutOnce { blob: b, after }), Some(now))
                | (Some(Fault::Stop { blob: b, after }), Some(now)) => b == now && count > *after,
                _ => false,
            };
            if hit {
                if let Some(Fault::Stop { .. }) = s.fault {
                    s.down = true;
                    for l in s.live.drain(..) {
                        let _ = l.shutdown(Shutdown::Both);
                    }
                }
                s.fault = None;
                let _ = c_out.shutdown(Shutdown::Both);
                let _ = s_in.shutdown(Shutdown::Both);
                break;
            }
            drop(s);
            if c_out.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = c_out.shutdown(Shutdown::Write);
    });
}
