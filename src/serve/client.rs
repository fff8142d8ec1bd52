//! A small blocking client of `nsbox serve` for programs that embed nsbox, and for `nsbox
//! --host` (crate::cli's remote module): HTTP/1.1 over the unix socket, plain TCP or TLS (one
//! connection per call), JSON in and out, errors as the server's `{code, message, hint}`.
//!
//! ```no_run
//! use nsbox::serve::client::ServeClient;
//! let api = ServeClient::unix("/run/nsbox/serve.sock");
//! let sandbox = api.create(&serde_json::json!({"labels": {"job": "7"}}))?;
//! let id = sandbox["id"].as_str().unwrap_or_default();
//! api.write_file(id, "/sandbox/hello.txt", b"hi")?;
//! let result = api.run(id, &serde_json::json!({"argv": ["cat", "hello.txt"]}))?;
//! assert_eq!(result["stdout"], "hi");
//! api.delete(id)?;
//! # Ok::<(), nsbox::serve::client::ClientError>(())
//! ```

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Largest response header block accepted.
const MAX_HEAD: usize = 64 * 1024;

/// How long a TCP connect may take before the server counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The CA bundles tried for `https://` servers (Debian's, then Red Hat's).
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
];

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error. `exit_code` is the nsbox exit code the failure
    /// has (when the server knows one: a create or a command that could not start).
    #[error("{status} {code}: {message}{}", hint.as_ref().map(|h| format!(" — hint: {h}")).unwrap_or_default())]
    Api {
        status: u16,
        code: String,
        message: String,
        hint: Option<String>,
        exit_code: Option<i32>,
    },
    /// No server answers at the address.
    #[error("cannot reach nsbox serve at {to}: {source} — hint: is `nsbox serve` running there, and is the address right (--host or NSBOX_HOST)?")]
    Connect { to: String, source: std::io::Error },
    /// The TLS handshake failed (most often: a certificate this client does not trust).
    #[error("TLS with nsbox serve at {to} failed: {message} — hint: NSBOX_CA_FILE (or `ServeClient::from_url`'s CA file) names a PEM file of the CA to trust, besides the system's")]
    Tls { to: String, message: String },
    /// The address is not one the client understands.
    #[error("{0}")]
    Address(String),
    #[error("talk to the server: {0}")]
    Io(#[from] std::io::Error),
    #[error("the server's answer: {0}")]
    Protocol(String),
}

#[derive(Clone)]
enum Endpoint {
    Unix(PathBuf),
    Tcp(String),
    /// `host:port`, the name the certificate must carry, and the trust.
    Tls {
        addr: String,
        name: rustls_pki_types::ServerName<'static>,
        config: Arc<rustls::ClientConfig>,
    },
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Endpoint {
    fn describe(&self) -> String {
        match self {
            Endpoint::Unix(path) => format!("unix://{}", path.display()),
            Endpoint::Tcp(addr) => format!("http://{addr}"),
            Endpoint::Tls { addr, .. } => format!("https://{addr}"),
        }
    }
}

/// A command started with [`ServeClient::start_command`]: its id (for stdin and signals) and
/// its events as they come.
pub struct CommandStream {
    /// The server's id of the command (`x-nsbox-command`).
    pub command_id: Option<String>,
    events: Box<dyn BufRead + Send>,
}

impl CommandStream {
    /// The next event; `None` at the end of the stream.
    pub fn next_event(&mut self) -> Option<Result<serde_json::Value, ClientError>> {
        let mut line = String::new();
        match self.events.read_line(&mut line) {
            Ok(0) => None,
            Ok(_) => {
                Some(serde_json::from_str(&line).map_err(|e| ClientError::Protocol(e.to_string())))
            }
            Err(e) => Some(Err(e.into())),
        }
    }
}

/// What [`ServeClient::send`] got back: the status, the command id header, the body.
struct Answer {
    status: u16,
    command_id: Option<String>,
    body: Box<dyn BufRead + Send>,
}

/// A client of one server.
#[derive(Debug, Clone)]
pub struct ServeClient {
    endpoint: Endpoint,
    token: Option<String>,
}

/// Percent-encodes a query value.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

impl ServeClient {
    /// The server on a unix socket (no key needed there).
    pub fn unix(path: impl Into<PathBuf>) -> ServeClient {
        ServeClient {
            endpoint: Endpoint::Unix(path.into()),
            token: None,
        }
    }

    /// The server at `host:port` over plain TCP (loopback); a key is needed.
    pub fn tcp(addr: impl Into<String>, token: impl Into<String>) -> ServeClient {
        ServeClient {
            endpoint: Endpoint::Tcp(addr.into()),
            token: Some(token.into()),
        }
    }

    pub fn with_token(mut self, token: impl Into<String>) -> ServeClient {
        self.token = Some(token.into());
        self
    }

    /// The server at `url`: `unix:///path/to/socket`, `http://host:port` or
    /// `https://host:port` (trusting the system's CAs, and those in the PEM file `ca_file`).
    pub fn from_url(
        url: &str,
        token: Option<String>,
        ca_file: Option<&Path>,
    ) -> Result<ServeClient, ClientError> {
        let bad = |why: &str| {
            ClientError::Address(format!(
                "{url:?}: {why} — hint: unix:///run/nsbox/serve.sock, http://127.0.0.1:7070 or https://host:7443"
            ))
        };
        let endpoint = if let Some(path) = url.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(bad("the socket path must be absolute (unix:///path)"));
            }
            Endpoint::Unix(PathBuf::from(path))
        } else {
            let (tls, rest) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
                (Some(rest), _) => (false, rest),
                (_, Some(rest)) => (true, rest),
                _ => return Err(bad("not a unix://, http:// or https:// address")),
            };
            let authority = rest.strip_suffix('/').unwrap_or(rest);
            if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
                return Err(bad("give only host and port, no path"));
            }
            let (host, addr) = split_authority(authority, if tls { 443 } else { 80 })
                .ok_or_else(|| bad("the port is not a number"))?;
            if tls {
                let name = rustls_pki_types::ServerName::try_from(host.to_string())
                    .map_err(|e| bad(&format!("{host}: {e}")))?;
                Endpoint::Tls {
                    addr,
                    name,
                    config: Arc::new(tls_client_config(ca_file)?),
                }
            } else {
                Endpoint::Tcp(addr)
            }
        };
        Ok(ServeClient { endpoint, token })
    }

    /// The server's address, as a URL.
    pub fn address(&self) -> String {
        self.endpoint.describe()
    }

    /// Whether the server is reached over TCP (where it needs a key).
    pub fn is_tcp(&self) -> bool {
        !matches!(self.endpoint, Endpoint::Unix(_))
    }

    fn connect(&self) -> Result<Box<dyn Stream>, ClientError> {
        let unreachable = |source: std::io::Error| ClientError::Connect {
            to: self.endpoint.describe(),
            source,
        };
        let tcp = |addr: &str| -> Result<std::net::TcpStream, ClientError> {
            use std::net::ToSocketAddrs;
            let mut last = std::io::Error::other("the name has no address");
            for a in addr.to_socket_addrs().map_err(unreachable)? {
                match std::net::TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
                    Ok(s) => {
                        let _ = s.set_nodelay(true);
                        return Ok(s);
                    }
                    Err(e) => last = e,
                }
            }
            Err(unreachable(last))
        };
        Ok(match &self.endpoint {
            Endpoint::Unix(path) => {
                Box::new(std::os::unix::net::UnixStream::connect(path).map_err(unreachable)?)
            }
            Endpoint::Tcp(addr) => Box::new(tcp(addr)?),
            Endpoint::Tls { addr, name, config } => {
                let conn = rustls::ClientConnection::new(config.clone(), name.clone())
                    .map_err(|e| ClientError::Protocol(format!("TLS: {e}")))?;
                let mut stream = rustls::StreamOwned::new(conn, tcp(addr)?);
                // The handshake now, so that a certificate that is not trusted is said as such.
                while stream.conn.is_handshaking() {
                    stream
                        .conn
                        .complete_io(&mut stream.sock)
                        .map_err(|e| ClientError::Tls {
                            to: self.endpoint.describe(),
                            message: e.to_string(),
                        })?;
                }
                Box::new(stream)
            }
        })
    }

    /// Sends one request; returns the status, the command id header and a reader of the
    /// (de-chunked) body.
    fn send(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> Result<Answer, ClientError> {
        let mut stream = self.connect()?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: nsbox\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
            body.len()
        );
        if let Some(t) = &self.token {
            head.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes())?;
        stream.write_all(body)?;
        stream.flush()?;
        let mut reader = BufReader::new(stream);
        let mut status_line = String::new();
        reader.read_line(&mut status_line)?;
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| ClientError::Protocol(format!("status line {status_line:?}")))?;
        let (mut chunked, mut length, mut seen) = (false, None, 0);
        let mut command_id = None;
        loop {
            let mut line = String::new();
            let n = reader.read_line(&mut line)?;
            seen += n;
            if n == 0 || seen > MAX_HEAD {
                return Err(ClientError::Protocol(
                    "headers cut short or too long".into(),
                ));
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                let value = value.trim();
                match name.to_ascii_lowercase().as_str() {
                    "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
                    "content-length" => length = value.parse::<u64>().ok(),
                    "x-nsbox-command" => command_id = Some(value.to_string()),
                    _ => {}
                }
            }
        }
        let body: Box<dyn BufRead + Send> = if chunked {
            Box::new(BufReader::new(Chunked {
                inner: reader,
                left: 0,
                done: false,
            }))
        } else if let Some(len) = length {
            Box::new(reader.take(len))
        } else {
            Box::new(reader)
        };
        Ok(Answer {
            status,
            command_id,
            body,
        })
    }

    fn call(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> Result<Vec<u8>, ClientError> {
        let mut answer = self.send(method, path, content_type, body)?;
        let mut data = Vec::new();
        answer.body.read_to_end(&mut data)?;
        if !(200..300).contains(&answer.status) {
            return Err(api_error(answer.status, &data));
        }
        Ok(data)
    }

    fn json(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value, ClientError> {
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let data = self.call(
            method,
            path,
            "application/json",
            body.as_deref().unwrap_or_default(),
        )?;
        serde_json::from_slice(&data).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// `POST /v1/sandboxes`: the new sandbox.
    pub fn create(&self, request: &serde_json::Value) -> Result<serde_json::Value, ClientError> {
        self.json("POST", "/v1/sandboxes", Some(request))
    }

    /// `GET /v1/sandboxes` (optionally those with the label `KEY=VALUE`).
    pub fn list(&self, label: Option<&str>) -> Result<Vec<serde_json::Value>, ClientError> {
        let path = match label {
            Some(l) => format!("/v1/sandboxes?label={}", encode(l)),
            None => "/v1/sandboxes".into(),
        };
        let v = self.json("GET", &path, None)?;
        Ok(v["sandboxes"].as_array().cloned().unwrap_or_default())
    }

    pub fn get(&self, id: &str) -> Result<serde_json::Value, ClientError> {
        self.json("GET", &format!("/v1/sandboxes/{}", encode(id)), None)
    }

    pub fn delete(&self, id: &str) -> Result<(), ClientError> {
        self.json("DELETE", &format!("/v1/sandboxes/{}", encode(id)), None)
            .map(drop)
    }

    /// Runs a command to its end (`?wait=true`): exit_code, stdout, stderr, ...
    pub fn run(
        &self,
        id: &str,
        command: &serde_json::Value,
    ) -> Result<serde_json::Value, ClientError> {
        self.json(
            "POST",
            &format!("/v1/sandboxes/{}/commands?wait=true", encode(id)),
            Some(command),
        )
    }

    /// Runs a command, handing each streamed event to `on_event` as it arrives; returns the
    /// last event (`exit`, or `error`).
    pub fn run_streaming(
        &self,
        id: &str,
        command: &serde_json::Value,
        mut on_event: impl FnMut(&serde_json::Value),
    ) -> Result<serde_json::Value, ClientError> {
        let mut stream = self.start_command(id, command)?;
        let mut last = serde_json::Value::Null;
        while let Some(event) = stream.next_event() {
            let event = event?;
            on_event(&event);
            last = event;
        }
        Ok(last)
    }

    /// Starts a command and returns its stream of events (and its id, for
    /// [`ServeClient::send_stdin`] and [`ServeClient::signal`] while it runs).
    pub fn start_command(
        &self,
        id: &str,
        command: &serde_json::Value,
    ) -> Result<CommandStream, ClientError> {
        let body = serde_json::to_vec(command).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let answer = self.send(
            "POST",
            &format!("/v1/sandboxes/{}/commands", encode(id)),
            "application/json",
            &body,
        )?;
        if !(200..300).contains(&answer.status) {
            let mut data = Vec::new();
            answer.body.take(MAX_HEAD as u64).read_to_end(&mut data)?;
            return Err(api_error(answer.status, &data));
        }
        Ok(CommandStream {
            command_id: answer.command_id,
            events: answer.body,
        })
    }

    /// Writes `data` to a running command's stdin (started with `stdin_open`); `close`
    /// closes it afterwards.
    pub fn send_stdin(
        &self,
        id: &str,
        command_id: &str,
        data: &[u8],
        close: bool,
    ) -> Result<(), ClientError> {
        self.call(
            "POST",
            &format!(
                "/v1/sandboxes/{}/commands/{}/stdin{}",
                encode(id),
                encode(command_id),
                if close { "?close=true" } else { "" }
            ),
            "application/octet-stream",
            data,
        )
        .map(drop)
    }

    /// Sends a signal (by name: "TERM", "KILL", ...) to a running command.
    pub fn signal(&self, id: &str, command_id: &str, signal: &str) -> Result<(), ClientError> {
        self.json(
            "POST",
            &format!(
                "/v1/sandboxes/{}/commands/{}/signal",
                encode(id),
                encode(command_id)
            ),
            Some(&serde_json::json!({ "signal": signal })),
        )
        .map(drop)
    }

    /// Stops a sandbox (TERM to every process, KILL after `grace`); it stays listed as
    /// stopped until deleted.
    pub fn stop(&self, id: &str, grace: Duration) -> Result<serde_json::Value, ClientError> {
        self.json(
            "POST",
            &format!("/v1/sandboxes/{}/stop", encode(id)),
            Some(&serde_json::json!({ "grace": format!("{}ms", grace.as_millis()) })),
        )
    }

    /// Resource use of a sandbox (`nsbox stats`' numbers).
    pub fn stats(&self, id: &str) -> Result<serde_json::Value, ClientError> {
        self.json("GET", &format!("/v1/sandboxes/{}/stats", encode(id)), None)
    }

    /// `POST .../commit`: the image made from the sandbox's files (`image`, `digest`, ...).
    pub fn commit(&self, id: &str, image: &str) -> Result<serde_json::Value, ClientError> {
        self.json(
            "POST",
            &format!("/v1/sandboxes/{}/commit", encode(id)),
            Some(&serde_json::json!({ "image": image })),
        )
    }

    /// `POST .../fork`: the new sandboxes (`sandboxes`, one view each).
    pub fn fork(
        &self,
        id: &str,
        request: &serde_json::Value,
    ) -> Result<serde_json::Value, ClientError> {
        self.json(
            "POST",
            &format!("/v1/sandboxes/{}/fork", encode(id)),
            Some(request),
        )
    }

    /// Pauses (`frozen`) or resumes a sandbox; false when it already was so.
    pub fn set_frozen(&self, id: &str, frozen: bool) -> Result<bool, ClientError> {
        let action = if frozen { "pause" } else { "resume" };
        match self.json(
            "POST",
            &format!("/v1/sandboxes/{}/{action}", encode(id)),
            None,
        ) {
            Ok(_) => Ok(true),
            Err(ClientError::Api {
                status: 409, code, ..
            }) if code == "already_paused" || code == "not_paused" => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// What is at `path` in the sandbox (`type`, `size`, `mode`, ...).
    pub fn stat(&self, id: &str, path: &str) -> Result<serde_json::Value, ClientError> {
        self.json(
            "GET",
            &format!(
                "/v1/sandboxes/{}/files/stat?path={}",
                encode(id),
                encode(path)
            ),
            None,
        )
    }

    /// Extracts a tar stream into the directory `dir` in the sandbox (made if missing).
    pub fn write_tar(&self, id: &str, dir: &str, tar: &[u8]) -> Result<(), ClientError> {
        self.call(
            "PUT",
            &format!("/v1/sandboxes/{}/files?path={}", encode(id), encode(dir)),
            "application/x-tar",
            tar,
        )
        .map(drop)
    }

    /// `path` in the sandbox (a file or a tree) as a tar stream, its entries named from
    /// `path`'s own name.
    pub fn read_tar(&self, id: &str, path: &str) -> Result<Vec<u8>, ClientError> {
        self.call(
            "GET",
            &format!(
                "/v1/sandboxes/{}/files?path={}&format=tar",
                encode(id),
                encode(path)
            ),
            "application/octet-stream",
            &[],
        )
    }

    pub fn write_file(&self, id: &str, path: &str, data: &[u8]) -> Result<(), ClientError> {
        self.call(
            "PUT",
            &format!("/v1/sandboxes/{}/files?path={}", encode(id), encode(path)),
            "application/octet-stream",
            data,
        )
        .map(drop)
    }

    pub fn read_file(&self, id: &str, path: &str) -> Result<Vec<u8>, ClientError> {
        self.call(
            "GET",
            &format!("/v1/sandboxes/{}/files?path={}", encode(id), encode(path)),
            "application/octet-stream",
            &[],
        )
    }
}

/// `host[:port]` (a bracketed IPv6 address too) → (host, `host:port`).
fn split_authority(authority: &str, default_port: u16) -> Option<(&str, String)> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        match after.strip_prefix(':') {
            Some(port) => (host, port.parse::<u16>().ok()?),
            None if after.is_empty() => (host, default_port),
            None => return None,
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, port.parse::<u16>().ok()?),
            None => (authority, default_port),
        }
    };
    let addr = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    Some((host, addr))
}

/// The trust of an `https://` server: the system's CAs, and those of `ca_file`.
fn tls_client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, ClientError> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let mut add = |pem: &[u8]| {
        let certs = rustls_pki_types::CertificateDer::pem_slice_iter(pem).filter_map(Result::ok);
        roots.add_parsable_certificates(certs).0
    };
    if let Some(text) = SYSTEM_BUNDLES.iter().find_map(|p| std::fs::read(p).ok()) {
        add(&text);
    }
    if let Some(path) = ca_file {
        let text = std::fs::read(path)
            .map_err(|e| ClientError::Address(format!("CA file {}: {e}", path.display())))?;
        if add(&text) == 0 {
            return Err(ClientError::Address(format!(
                "CA file {}: no PEM certificate in it",
                path.display()
            )));
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ClientError::Protocol(format!("TLS: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn api_error(status: u16, body: &[u8]) -> ClientError {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    ClientError::Api {
        status,
        code: v["code"].as_str().unwrap_or("unknown").to_string(),
        message: v["message"].as_str().map_or_else(
            || String::from_utf8_lossy(body).into_owned(),
            str::to_string,
        ),
        hint: v["hint"].as_str().map(str::to_string),
        exit_code: v["exit_code"].as_i64().and_then(|c| i32::try_from(c).ok()),
    }
}

/// A chunked transfer-encoded body.
struct Chunked<R> {
    inner: R,
    left: u64,
    done: bool,
}

impl<R: BufRead> Read for Chunked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            let mut line = String::new();
            self.inner.read_line(&mut line)?;
            let size = line.trim().split(';').next().unwrap_or_default();
            self.left = u64::from_str_radix(size, 16)
                .map_err(|_| std::io::Error::other(format!("bad chunk size {line:?}")))?;
            if self.left == 0 {
                self.done = true;
                return Ok(0);
            }
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.left -= n as u64;
        if self.left == 0 {
            let mut crlf = String::new();
            self.inner.read_line(&mut crlf)?;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_are_decoded() {
        let raw = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
        let mut out = String::new();
        Chunked {
            inner: &raw[..],
            left: 0,
            done: false,
        }
        .read_to_string(&mut out)
        .unwrap();
        assert_eq!(out, "hello world");
        assert_eq!(encode("a b/c=d"), "a%20b/c%3Dd");
    }

    #[test]
    fn addresses_parse_or_say_what_is_wrong() {
        let ok = |url: &str| ServeClient::from_url(url, None, None).unwrap().address();
        assert_eq!(
            ok("unix:///run/nsbox/serve.sock"),
            "unix:///run/nsbox/serve.sock"
        );
        assert_eq!(ok("http://127.0.0.1:7070"), "http://127.0.0.1:7070");
        assert_eq!(ok("http://127.0.0.1:7070/"), "http://127.0.0.1:7070");
        assert_eq!(ok("http://box"), "http://box:80");
        assert_eq!(ok("http://[::1]:9"), "http://[::1]:9");
        assert_eq!(ok("https://localhost:7443"), "https://localhost:7443");
        for bad in [
            "unix://relative.sock",
            "tcp://127.0.0.1:1",
            "127.0.0.1:7070",
            "http://host:port",
            "http://host:1/v1",
            "http://user@host:1",
            "http://",
        ] {
            match ServeClient::from_url(bad, None, None) {
                Err(ClientError::Address(m)) => assert!(m.contains("hint: unix://"), "{m}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }
}
