//! Secretless credentials (`--credential NAME=HOST[,HOST...]`): the sandbox holds a
//! placeholder, the real value lives only in the supervisor and on the wire.
//!
//! The workload's `NAME` is `nsbox-cred-<name>-<random>`: unique per sandbox, unguessable,
//! recognisable. For a TLS connection whose SNI is a host bound to a credential, the proxy
//! ([`intercept`]) terminates TLS with a certificate from a per-sandbox CA (made at start; its
//! key never leaves the supervisor's memory; name-constrained to the bound hosts, so it can
//! vouch for nothing else), opens a verified TLS connection upstream (the host's system roots
//! plus [`EGRESS_CA_FILE_ENV`]), and forwards the connection's requests one by one
//! (keep-alive and pipelining): each head through the strict parser of [`super::sniff`], its
//! Host checked against the SNI, the real value put where a header holds a placeholder (and
//! inside the base64 of `Authorization: Basic`; with `NAME:HEADER=...` only in that header),
//! its body relayed to its end by its framing ([`super::credential_http`]). A first request
//! that upgrades (WebSocket) turns the connection into a relay once the server answers 101.
//! ALPN offers only `http/1.1`, so an HTTP/2 client falls back. Other hosts stay end to end
//! TLS.
//!
//! A placeholder seen anywhere else — a header to a host the credential is not for, the
//! request line, the body bytes that came with the head, a plain HTTP request — goes on
//! unchanged (it is useless there) and is reported as `credential_refused`; so is one in a DNS
//! query ([`super::resolver`]). Body bytes after the head are relayed without a scan.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use base64::Engine;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};

use super::credential_http;
use super::egress::Shared;
use super::events::{Decision, NetEvent};
use super::sniff::{self, Body, MAX_SNIFF};

/// What every placeholder starts with.
pub const PLACEHOLDER_PREFIX: &str = "nsbox-cred-";
/// A PEM file of extra CAs the proxy trusts for upstream connections (besides the host's
/// system roots): for a company's TLS-inspecting gateway, or a test network.
pub const EGRESS_CA_FILE_ENV: &str = "NSBOX_EGRESS_CA_FILE";
/// The sandbox CA's certificate alone, inside the sandbox (for `NODE_EXTRA_CA_CERTS`).
pub const SANDBOX_CA_PATH: &str = "/etc/nsbox-ca.pem";
/// The system roots plus the sandbox CA, inside the sandbox (`SSL_CERT_FILE` and friends).
pub const SANDBOX_BUNDLE_PATH: &str = "/etc/nsbox-ca-bundle.pem";
/// Where the host's system roots are looked for (Debian, then Fedora).
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
];
const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// Errors making a sandbox's credentials ready.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("--credential '{entry}': {reason}")]
    Binding { entry: String, reason: String },
    #[error("--credential: cannot make the sandbox's certificate authority: {0}")]
    Authority(String),
    #[error("--credential: no CA certificates to check upstream hosts with ({0}) — hint: set {EGRESS_CA_FILE_ENV} to a PEM file")]
    Roots(String),
}

/// One credential: its variable, the hosts it is for, its placeholder and its real value.
#[derive(Clone)]
pub struct Credential {
    pub name: String,
    pub hosts: Vec<String>,
    /// The headers the value may go into (lowercase); empty: any header.
    pub headers: Vec<String>,
    pub placeholder: String,
    value: String,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("name", &self.name)
            .field("hosts", &self.hosts)
            .field("headers", &self.headers)
            .field("placeholder", &self.placeholder)
            .field("value", &"***")
            .finish()
    }
}

impl Credential {
    /// `NAME[:HEADER[,HEADER...]]=HOST[,HOST...]`, the value of NAME taken from `host_env`.
    /// With headers, the value goes only into those (a placeholder in any other header
    /// stays, and is reported).
    pub fn parse(
        entry: &str,
        host_env: &std::collections::BTreeMap<String, String>,
    ) -> Result<Credential, CredentialError> {
        let bad = |reason: String| CredentialError::Binding {
            entry: entry.to_string(),
            reason,
        };
        let (name, headers, hosts) = Credential::binding(entry)?;
        let name = name.as_str();
        // The value goes into header lines: a control byte would let it forge another.
        let value = host_env
            .get(name)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                bad(format!(
                    "{name} is not set (or empty) in nsbox's environment"
                ))
            })?;
        if value.bytes().any(|b| b.is_ascii_control()) {
            return Err(bad(format!(
                "the value of {name} contains a control character (it cannot go into a header)"
            )));
        }
        Ok(Credential {
            name: name.to_string(),
            hosts,
            headers,
            placeholder: placeholder(name)?,
            value: value.clone(),
        })
    }

    /// The parts of `NAME[:HEADER,...]=HOST[,HOST...]` (checked; no value needed): for a
    /// profile or the config, checked when read.
    pub fn binding(entry: &str) -> Result<(String, Vec<String>, Vec<String>), CredentialError> {
        let bad = |reason: String| CredentialError::Binding {
            entry: entry.to_string(),
            reason,
        };
        let (name, hosts) = entry
            .split_once('=')
            .ok_or_else(|| bad("expected NAME[:HEADER]=HOST[,HOST...]".into()))?;
        let (name, headers) = match name.split_once(':') {
            None => (name, Vec::new()),
            Some((name, headers)) => {
                let headers: Vec<String> = headers
                    .split(',')
                    .map(|h| h.trim().to_ascii_lowercase())
                    .collect();
                if let Some(h) = headers.iter().find(|h| {
                    h.is_empty()
                        || !h
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
                }) {
                    return Err(bad(format!("'{h}' is not a header name")));
                }
                (name, headers)
            }
        };
        if !crate::profile::valid_env_name(name) {
            return Err(bad(
                "not a valid variable name (letters, digits, '_')".into()
            ));
        }
        let hosts: Vec<String> = hosts
            .split(',')
            .map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase())
            .collect();
        for host in &hosts {
            let ok = !host.is_empty()
                && host.len() <= 253
                && host.contains('.')
                && !host
                    .rsplit('.')
                    .next()
                    .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
                && host.split('.').all(|l| {
                    !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
            if !ok {
                return Err(bad(format!(
                    "'{host}' is not a host name (a DNS name such as api.example.com; no wildcards or addresses)"
                )));
            }
        }
        Ok((name.to_string(), headers, hosts))
    }

    /// The real value (for masking nsbox's own output).
    pub fn value(&self) -> &str {
        &self.value
    }

    fn is_for(&self, host: &str) -> bool {
        self.hosts.iter().any(|h| h.eq_ignore_ascii_case(host))
    }

    /// Whether the value may go into header `name` (to a host it is for).
    fn goes_into(&self, name: &str) -> bool {
        self.headers.is_empty() || self.headers.iter().any(|h| h.eq_ignore_ascii_case(name))
    }
}

/// `nsbox-cred-<name>-<32 hex digits of randomness>`.
fn placeholder(name: &str) -> Result<String, CredentialError> {
    let mut random = [0u8; 16];
    getrandom::fill(&mut random).map_err(|e| {
        CredentialError::Authority(format!("the kernel's random source failed: {e}"))
    })?;
    let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!(
        "{PLACEHOLDER_PREFIX}{}-{hex}",
        name.to_ascii_lowercase()
    ))
}

/// A sandbox's credentials, its CA and what the proxy needs to use them.
pub struct Credentials {
    pub bindings: Vec<Credential>,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    ca_der: rustls::pki_types::CertificateDer<'static>,
    /// The CA certificate (PEM) and the bundle the sandbox trusts (system roots + CA).
    pub ca_pem: String,
    pub bundle: Vec<u8>,
    upstream: Arc<rustls::ClientConfig>,
    /// One server configuration (leaf certificate) per bound host, made on first use.
    servers: Mutex<HashMap<String, Arc<rustls::ServerConfig>>>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("bindings", &self.bindings)
            .finish_non_exhaustive()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Credentials {
    /// Makes the CA and the upstream trust for `bindings`. `extra_ca`: a PEM file of more
    /// CAs for upstream connections ([`EGRESS_CA_FILE_ENV`]).
    pub fn new(
        bindings: Vec<Credential>,
        extra_ca: Option<&Path>,
    ) -> Result<Credentials, CredentialError> {
        let auth = |e: rcgen::Error| CredentialError::Authority(e.to_string());
        let key = rcgen::KeyPair::generate().map_err(auth)?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(auth)?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "nsbox sandbox credential CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let mut hosts: Vec<String> = bindings.iter().flat_map(|c| c.hosts.clone()).collect();
        hosts.sort();
        hosts.dedup();
        // The CA can vouch for the bound hosts only, whatever else trusts it.
        params.name_constraints = Some(rcgen::NameConstraints {
            permitted_subtrees: hosts
                .iter()
                .map(|h| rcgen::GeneralSubtree::DnsName(h.clone()))
                .collect(),
            excluded_subtrees: Vec::new(),
        });
        let ca = params.self_signed(&key).map_err(auth)?;
        let ca_pem = ca.pem();
        let ca_der = ca.der().clone();
        let issuer = rcgen::Issuer::new(params, key);

        let mut roots = rustls::RootCertStore::empty();
        let mut system = Vec::new();
        for path in SYSTEM_BUNDLES {
            if let Ok(text) = std::fs::read(path) {
                system = text;
                break;
            }
        }
        add_pem(&mut roots, &system);
        if let Some(path) = extra_ca {
            let text = std::fs::read(path)
                .map_err(|e| CredentialError::Roots(format!("{}: {e}", path.display())))?;
            if add_pem(&mut roots, &text) == 0 {
                return Err(CredentialError::Roots(format!(
                    "{}: no certificate in it",
                    path.display()
                )));
            }
        }
        if roots.is_empty() {
            return Err(CredentialError::Roots(format!(
                "none of {} exists",
                SYSTEM_BUNDLES.join(", ")
            )));
        }
        let mut upstream = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| CredentialError::Authority(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        upstream.alpn_protocols = vec![b"http/1.1".to_vec()];

        let mut bundle = system;
        if !bundle.is_empty() && !bundle.ends_with(b"\n") {
            bundle.push(b'\n');
        }
        bundle.extend_from_slice(ca_pem.as_bytes());
        Ok(Credentials {
            bindings,
            issuer,
            ca_der,
            ca_pem,
            bundle,
            upstream: Arc::new(upstream),
            servers: Mutex::new(HashMap::new()),
        })
    }

    /// Whether a connection to `host` is intercepted.
    pub fn binds(&self, host: &str) -> bool {
        self.bindings.iter().any(|c| c.is_for(host))
    }

    /// Variables that point TLS clients inside the sandbox at the bundle.
    pub fn trust_env() -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = [
            "SSL_CERT_FILE",
            "REQUESTS_CA_BUNDLE",
            "CURL_CA_BUNDLE",
            "GIT_SSL_CAINFO",
            "PIP_CERT",
        ]
        .iter()
        .map(|k| (k.to_string(), SANDBOX_BUNDLE_PATH.to_string()))
        .collect();
        env.push(("NODE_EXTRA_CA_CERTS".into(), SANDBOX_CA_PATH.into()));
        env
    }

    fn server_config(&self, host: &str) -> Result<Arc<rustls::ServerConfig>, String> {
        let mut servers = self.servers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(config) = servers.get(host) {
            return Ok(config.clone());
        }
        let err = |e: rcgen::Error| e.to_string();
        let key = rcgen::KeyPair::generate().map_err(err)?;
        let mut params = rcgen::CertificateParams::new(vec![host.to_string()]).map_err(err)?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, host);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let leaf = params.signed_by(&key, &self.issuer).map_err(err)?;
        let key_der = rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der());
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone(), self.ca_der.clone()],
                key_der.into(),
            )
            .map_err(|e| e.to_string())?;
        // One request per connection, HTTP/1.1 only: a client offering h2 downgrades.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let config = Arc::new(config);
        servers.insert(host.to_string(), config.clone());
        Ok(config)
    }
}

impl PartialEq for Credentials {
    /// Each sandbox's credentials are its own: equal only to themselves.
    fn eq(&self, other: &Credentials) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Eq for Credentials {}

fn add_pem(roots: &mut rustls::RootCertStore, pem: &[u8]) -> usize {
    use rustls::pki_types::pem::PemObject;
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(pem).filter_map(Result::ok);
    roots.add_parsable_certificates(certs).0
}

/// What a request head showed about a credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// The real value went into this header.
    Injected { credential: String, header: String },
    /// The placeholder was here (a place it is not for) and went on unchanged.
    Refused { credential: String, place: String },
}

/// Rewrites the header lines of `head` (an HTTP/1 request head) bound for `host`: each
/// placeholder of a credential for `host` in a header value (or in the decoded
/// `Authorization: Basic` token) becomes the real value; any placeholder elsewhere stays and
/// is reported.
pub fn inject(head: &[u8], host: &str, creds: &[Credential]) -> (Vec<u8>, Vec<Finding>) {
    let mut out = Vec::with_capacity(head.len() + 64);
    let mut found = Vec::new();
    let refuse = |found: &mut Vec<Finding>, c: &Credential, place: String| {
        found.push(Finding::Refused {
            credential: c.name.clone(),
            place,
        })
    };
    for (i, line) in head.split_inclusive(|&b| b == b'\n').enumerate() {
        if i == 0 {
            for c in creds.iter().filter(|c| contains(line, &c.placeholder)) {
                refuse(&mut found, c, "url".into());
            }
            out.extend_from_slice(line);
            continue;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            out.extend_from_slice(line);
            continue;
        };
        let name = String::from_utf8_lossy(&line[..colon]).to_string();
        let value = &line[colon + 1..];
        let Ok(value_text) = std::str::from_utf8(value) else {
            out.extend_from_slice(line);
            continue;
        };
        let mut new_value = value_text.to_string();
        for c in creds {
            if new_value.contains(&c.placeholder) {
                if c.is_for(host) && c.goes_into(&name) {
                    new_value = new_value.replace(&c.placeholder, &c.value);
                    found.push(Finding::Injected {
                        credential: c.name.clone(),
                        header: name.to_ascii_lowercase(),
                    });
                } else {
                    refuse(
                        &mut found,
                        c,
                        format!("header {}", name.to_ascii_lowercase()),
                    );
                }
            }
        }
        if name.eq_ignore_ascii_case("authorization")
            || name.eq_ignore_ascii_case("proxy-authorization")
        {
            new_value = basic(&new_value, host, creds, &name, &mut found);
        }
        out.extend_from_slice(name.as_bytes());
        out.push(b':');
        out.extend_from_slice(new_value.as_bytes());
    }
    (out, found)
}

/// The `Basic` token of an Authorization value, placeholders inside replaced.
fn basic(
    value: &str,
    host: &str,
    creds: &[Credential],
    name: &str,
    found: &mut Vec<Finding>,
) -> String {
    let trimmed = value.trim();
    let Some(scheme) = trimmed.get(..6) else {
        return value.to_string();
    };
    if !scheme.eq_ignore_ascii_case("basic ") {
        return value.to_string();
    }
    let engine = base64::engine::general_purpose::STANDARD;
    let Ok(decoded) = engine.decode(trimmed[6..].trim()) else {
        return value.to_string();
    };
    let Ok(mut text) = String::from_utf8(decoded) else {
        return value.to_string();
    };
    let mut changed = false;
    for c in creds {
        if text.contains(&c.placeholder) {
            if c.is_for(host) && c.goes_into(name) {
                text = text.replace(&c.placeholder, &c.value);
                changed = true;
                found.push(Finding::Injected {
                    credential: c.name.clone(),
                    header: format!("{} (basic)", name.to_ascii_lowercase()),
                });
            } else {
                found.push(Finding::Refused {
                    credential: c.name.clone(),
                    place: format!("header {} (basic)", name.to_ascii_lowercase()),
                });
            }
        }
    }
    if !changed {
        return value.to_string();
    }
    let end = if value.ends_with("\r\n") {
        "\r\n"
    } else {
        "\n"
    };
    format!(" Basic {}{end}", engine.encode(text))
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Reports every placeholder in `bytes` (a request to `host` that nsbox does not rewrite:
/// plain HTTP, or body bytes) as refused at `place`.
pub fn report_stray(creds: &Credentials, bytes: &[u8], host: &str, place: &str) -> Vec<NetEvent> {
    if !contains(bytes, PLACEHOLDER_PREFIX) {
        return Vec::new();
    }
    creds
        .bindings
        .iter()
        .filter(|c| contains(bytes, &c.placeholder))
        .map(|c| NetEvent::CredentialRefused {
            credential: c.name.clone(),
            host: host.to_string(),
            place: place.to_string(),
        })
        .collect()
}

/// Bytes already read, then the stream (the ClientHello the proxy sniffed goes to rustls).
struct Prefixed {
    prefix: Vec<u8>,
    at: usize,
    inner: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.at < self.prefix.len() {
            let n = buf.remaining().min(self.prefix.len() - self.at);
            let at = self.at;
            buf.put_slice(&self.prefix[at..at + n]);
            self.at += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serves one intercepted connection: `head` is the ClientHello already read, `host` its
/// SNI (bound to a credential and allowed by `rule` for the port).
pub(crate) async fn intercept(
    client: TcpStream,
    head: Vec<u8>,
    dst: SocketAddr,
    host: String,
    rule: String,
    shared: &Shared,
    creds: &Credentials,
) {
    let event = |decision, reason: String| NetEvent::Connection {
        decision,
        address: dst.ip().to_canonical(),
        port: dst.port(),
        name: Some(host.clone()),
        rule: Some(rule.clone()),
        reason,
    };
    let config = match creds.server_config(&host) {
        Ok(c) => c,
        Err(e) => {
            shared.events.send(event(
                Decision::Failed,
                format!("cannot make a certificate for {host}: {e}"),
            ));
            return;
        }
    };
    // TLS flights and the response's records are small writes: Nagle would hold them back.
    let _ = client.set_nodelay(true);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let stream = Prefixed {
        prefix: head,
        at: 0,
        inner: client,
    };
    let inside = match tokio::time::timeout(TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            shared.events.send(event(
                Decision::Refused,
                format!("TLS with the sandbox failed (does it trust the sandbox CA?): {e}"),
            ));
            return;
        }
        Err(_) => {
            shared.events.send(event(
                Decision::Refused,
                "TLS with the sandbox timed out".into(),
            ));
            return;
        }
    };
    // The first request head, through the same strict parser as plain HTTP, before anything
    // goes upstream.
    let (mut in_read, mut in_write) = tokio::io::split(inside);
    let mut reader = Requests {
        inner: &mut in_read,
        buf: Vec::with_capacity(16 << 10),
    };
    let first = match reader.head(&host, Some(TIMEOUT)).await {
        Ok(Some(request)) => request,
        Ok(None) => {
            shared.events.send(event(
                Decision::Refused,
                "no complete HTTP request inside TLS".into(),
            ));
            return;
        }
        Err(reason) => {
            shared.events.send(event(Decision::Refused, reason));
            let _ = in_write.shutdown().await;
            return;
        }
    };

    // Upstream: a TLS connection the proxy verifies, to the address the sandbox chose.
    let connect = async {
        let socket = if dst.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        let tcp = socket.connect(dst).await?;
        let _ = tcp.set_nodelay(true);
        let server_name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        tokio_rustls::TlsConnector::from(creds.upstream.clone())
            .connect(server_name, tcp)
            .await
    };
    let upstream = match tokio::time::timeout(TIMEOUT, connect).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let reason = format!("upstream {host} ({dst}): {e}");
            return bad_gateway(&mut in_write, shared, event(Decision::Failed, reason)).await;
        }
        Err(_) => {
            let reason = format!(
                "upstream {host} ({dst}): no answer in {}s",
                TIMEOUT.as_secs()
            );
            return bad_gateway(&mut in_write, shared, event(Decision::Failed, reason)).await;
        }
    };
    shared.events.send(event(
        Decision::Allowed,
        format!("allowed by '{rule}'; TLS intercepted for credentials"),
    ));
    let (up_read, mut up_write) = tokio::io::split(upstream);
    // Only a connection's first request may switch protocols (WebSocket): its response is
    // the first on the connection, so the response side can tell whether it did.
    let (verdict_tx, verdict_rx) = tokio::sync::oneshot::channel::<bool>();
    let upgrade = credential_http::asks_upgrade(&reader.buf[..first.head_len]);
    let requests = async {
        let outcome = forward_requests(
            &mut reader,
            &mut up_write,
            first,
            upgrade.then_some(verdict_rx),
            &host,
            shared,
            creds,
        )
        .await;
        if let Err(Some(reason)) = outcome {
            // Nothing more goes upstream; the answers to the requests already forwarded
            // still come back.
            shared.events.send(event(Decision::Refused, reason));
        }
        // The client is done sending (or refused): pass the half-close on and let the
        // responses finish.
        let _ = up_write.shutdown().await;
        std::future::pending::<()>().await
    };
    let response = relay_responses(up_read, &mut in_write, creds, upgrade.then_some(verdict_tx));
    tokio::select! {
        () = requests => {}
        () = response => {}
    }
}

/// The client's side of an intercepted connection: bytes read and not yet forwarded.
struct Requests<'a, R> {
    inner: &'a mut R,
    buf: Vec<u8>,
}

impl<R: AsyncRead + Unpin> Requests<'_, R> {
    /// Reads more into `buf`: false at the end of the stream (or an error).
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 << 10];
        match self.inner.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// The next request head at the start of `buf`, parsed strictly and for `host` (the
    /// SNI): `Ok(None)` when the client ends cleanly between requests, `Err(reason)` for
    /// anything refused (a request for another host included: the intercepting certificate
    /// speaks for `host` only).
    async fn head(
        &mut self,
        host: &str,
        timeout: Option<std::time::Duration>,
    ) -> Result<Option<sniff::HttpRequest>, String> {
        let request = loop {
            match sniff::http_request(&self.buf) {
                sniff::HttpSniff::Request(r) => break r,
                sniff::HttpSniff::Refused(why) => return Err(format!("inside TLS: {why}")),
                sniff::HttpSniff::NeedMore if self.buf.len() >= MAX_SNIFF => {
                    return Err("the request head is too large".into())
                }
                sniff::HttpSniff::NeedMore => {}
            }
            let more = match timeout {
                Some(t) => tokio::time::timeout(t, self.fill()).await.unwrap_or(false),
                None => self.fill().await,
            };
            if !more {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err("the client ended inside a request head".into())
                };
            }
        };
        if !request
            .name
            .as_deref()
            .is_some_and(|h| h.eq_ignore_ascii_case(host))
        {
            return Err(format!(
                "the Host header ({}) is not the TLS SNI ({host})",
                request.name.as_deref().unwrap_or("none")
            ));
        }
        Ok(Some(request))
    }
}

/// Forwards the requests of an intercepted connection upstream, one at a time in order
/// (keep-alive and pipelining): each head is parsed and checked, its placeholders replaced
/// and reported, and its body relayed to exactly its end (Content-Length or the chunked
/// framing), so the next head is found where the server will find it. After a first request
/// that asks to upgrade, `verdict` says whether the server switched protocols; if it did, the
/// rest is relayed as it comes. `Ok` when the client ends; `Err` when nothing more may go
/// (with the reason to report, if any).
async fn forward_requests<R, W>(
    reader: &mut Requests<'_, R>,
    up: &mut W,
    first: sniff::HttpRequest,
    mut verdict: Option<tokio::sync::oneshot::Receiver<bool>>,
    host: &str,
    shared: &Shared,
    creds: &Credentials,
) -> Result<(), Option<String>>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut next = Some(first);
    let mut first_request = true;
    loop {
        let request = match next.take() {
            Some(r) => r,
            None => match reader.head(host, None).await.map_err(Some)? {
                Some(r) => r,
                None => return Ok(()),
            },
        };
        let head = &reader.buf[..request.head_len];
        if !std::mem::take(&mut first_request) && credential_http::asks_upgrade(head) {
            return Err(Some(
                "an Upgrade in a later request of a connection (only the first request may switch protocols)".into(),
            ));
        }
        let (new_head, findings) = inject(head, host, &creds.bindings);
        let new_head = identity_encoding(&new_head);
        for finding in findings {
            shared.events.send(match finding {
                Finding::Injected { credential, header } => NetEvent::CredentialInjected {
                    credential,
                    host: host.to_string(),
                    header,
                },
                Finding::Refused { credential, place } => NetEvent::CredentialRefused {
                    credential,
                    host: host.to_string(),
                    place,
                },
            });
        }
        reader.buf.drain(..request.head_len);
        // The body bytes that came with the head are looked at (cheaply); the rest is not.
        let with_head = match request.body {
            Body::Length(n) => &reader.buf[..reader.buf.len().min(n as usize)],
            Body::Chunked => &reader.buf[..],
        };
        for e in report_stray(creds, with_head, host, "body") {
            shared.events.send(e);
        }
        up.write_all(&new_head).await.map_err(|_| None)?;
        match request.body {
            Body::Length(mut left) => {
                while left > 0 {
                    if reader.buf.is_empty() && !reader.fill().await {
                        return Err(None);
                    }
                    let take = reader
                        .buf
                        .len()
                        .min(usize::try_from(left).unwrap_or(usize::MAX));
                    up.write_all(&reader.buf[..take]).await.map_err(|_| None)?;
                    reader.buf.drain(..take);
                    left -= take as u64;
                }
            }
            Body::Chunked => {
                let mut framing = credential_http::Chunked::default();
                loop {
                    if reader.buf.is_empty() && !reader.fill().await {
                        return Err(None);
                    }
                    let end = framing
                        .feed(&reader.buf)
                        .map_err(|why| Some(format!("inside TLS: chunked body: {why}")))?;
                    let take = end.unwrap_or(reader.buf.len());
                    up.write_all(&reader.buf[..take]).await.map_err(|_| None)?;
                    reader.buf.drain(..take);
                    if end.is_some() {
                        break;
                    }
                }
            }
        }
        up.flush().await.map_err(|_| None)?;
        let Some(rx) = verdict.take() else {
            continue;
        };
        // The first request asked to upgrade: wait for the server's answer to it.
        if rx.await.unwrap_or(false) {
            // Switched (a WebSocket, say): from here the bytes are the new protocol's.
            up.write_all(&reader.buf).await.map_err(|_| None)?;
            reader.buf.clear();
            let _ = tokio::io::copy(reader.inner, up).await;
            return Ok(());
        }
    }
}

/// How long bytes that may begin a real value wait for the next read before they go on (a
/// stream that pauses on them is not held up longer than this).
const MASK_HOLD: std::time::Duration = std::time::Duration::from_millis(20);

/// Relays the upstream's bytes to the sandbox through [`ValueMask`]. With `verdict`, the first
/// response head is looked at and whether it switches protocols is sent.
async fn relay_responses<R, W>(
    mut up: R,
    inside: &mut W,
    creds: &Credentials,
    mut verdict: Option<tokio::sync::oneshot::Sender<bool>>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // A server that reflects a request header (an echo endpoint, an error message quoting
    // the key) would hand the value to the sandbox: it comes back as asterisks instead.
    let mut mask = ValueMask::new(creds.bindings.iter().map(|c| c.value.as_bytes()));
    let mut first_head = Vec::new();
    let mut chunk = vec![0u8; 16 << 10];
    loop {
        let read = up.read(&mut chunk);
        let n = if mask.holding() {
            match tokio::time::timeout(MASK_HOLD, read).await {
                Ok(r) => r,
                Err(_) => {
                    let held = mask.finish();
                    if inside.write_all(&held).await.is_err() || inside.flush().await.is_err() {
                        return;
                    }
                    continue;
                }
            }
        } else {
            read.await
        };
        let n = match n {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(tx) = verdict.take() {
            first_head.extend_from_slice(&chunk[..n]);
            if let Some(end) = first_head.windows(4).position(|w| w == b"\r\n\r\n") {
                let _ = tx.send(credential_http::switches_protocols(&first_head[..end + 4]));
                first_head = Vec::new();
            } else if first_head.len() >= MAX_SNIFF {
                let _ = tx.send(false);
                first_head = Vec::new();
            } else {
                verdict = Some(tx);
            }
        }
        let out = mask.push(&chunk[..n]);
        if inside.write_all(&out).await.is_err() || inside.flush().await.is_err() {
            return;
        }
    }
    let _ = inside.write_all(&mask.finish()).await;
    let _ = inside.shutdown().await;
}

/// `head` (a complete request head, CRLF line ends) asking for an uncompressed response: its
/// `Accept-Encoding` lines become one `Accept-Encoding: identity`, so the response mask
/// ([`ValueMask`]) sees the bytes a server sends.
fn identity_encoding(head: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(head.len() + 32);
    let body = head.strip_suffix(b"\r\n").unwrap_or(head);
    for line in body.split_inclusive(|&b| b == b'\n') {
        let name = line.split(|&b| b == b':').next().unwrap_or_default();
        if !name.eq_ignore_ascii_case(b"accept-encoding") {
            out.extend_from_slice(line);
        }
    }
    out.extend_from_slice(b"Accept-Encoding: identity\r\n\r\n");
    out
}

/// Replaces real values in a byte stream with as many asterisks (lengths, hence HTTP framing,
/// stay). Bytes that may be the start of a value split across reads are held back until the
/// next read decides; anything else goes on at once (a streamed response is not delayed).
/// A compressed body is not looked into.
struct ValueMask {
    values: Vec<Vec<u8>>,
    searcher: Option<aho_corasick::AhoCorasick>,
    held: Vec<u8>,
}

impl ValueMask {
    fn new<'a>(values: impl Iterator<Item = &'a [u8]>) -> ValueMask {
        let values: Vec<Vec<u8>> = values
            .filter(|v| !v.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
        let searcher = aho_corasick::AhoCorasick::builder()
            .match_kind(aho_corasick::MatchKind::LeftmostLongest)
            .build(&values)
            .ok();
        ValueMask {
            values,
            searcher,
            held: Vec::new(),
        }
    }

    fn push(&mut self, data: &[u8]) -> Vec<u8> {
        let mut buf = std::mem::take(&mut self.held);
        buf.extend_from_slice(data);
        if let Some(searcher) = &self.searcher {
            let found: Vec<_> = searcher.find_iter(&buf).map(|m| m.range()).collect();
            for range in found {
                buf[range].fill(b'*');
            }
        }
        let keep = self
            .values
            .iter()
            .map(|v| {
                (1..v.len().min(buf.len() + 1))
                    .rev()
                    .find(|&k| buf.ends_with(&v[..k]))
                    .unwrap_or(0)
            })
            .max()
            .unwrap_or(0);
        self.held = buf.split_off(buf.len() - keep);
        buf
    }

    fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.held)
    }

    /// Whether bytes are held back.
    fn holding(&self) -> bool {
        !self.held.is_empty()
    }
}

/// Reports `e` and answers the sandbox with a 502 saying why (no upstream bytes went out).
async fn bad_gateway<S: AsyncWrite + Unpin>(inside: &mut S, shared: &Shared, e: NetEvent) {
    let why = match &e {
        NetEvent::Connection { reason, .. } => super::events::escape(reason).into_owned(),
        _ => String::new(),
    };
    shared.events.send(e);
    let body = format!("nsbox: refused: {why}\n");
    let response = format!(
        "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = inside.write_all(response.as_bytes()).await;
    let _ = inside.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cred(name: &str, hosts: &[&str], value: &str) -> Credential {
        Credential {
            name: name.into(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            headers: Vec::new(),
            placeholder: placeholder(name).unwrap(),
            value: value.into(),
        }
    }

    #[test]
    fn values_in_a_response_become_asterisks_even_split_across_reads() {
        let mut m = ValueMask::new([&b"sk-real"[..]].into_iter());
        let mut out = m.push(b"key=sk-re");
        // Only the possible start of the value waits.
        assert_eq!(out, b"key=");
        out.extend(m.push(b"al; again sk-real, done s"));
        out.extend(m.finish());
        assert_eq!(out, b"key=*******; again *******, done s");
    }

    /// A keep-alive response that ends in what may be the start of a value (the value is
    /// "sk-real", the body ends in "s") reaches the client without waiting for more bytes
    /// that never come; a whole value in it is masked.
    #[test]
    fn a_response_ending_like_a_value_is_not_held_back() {
        if !Path::new(SYSTEM_BUNDLES[0]).exists() {
            return; // No system roots to make Credentials with here.
        }
        let creds = Credentials::new(vec![cred("KEY", &["a.example"], "sk-real")], None).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (mut server, up) = tokio::io::duplex(4096);
            let (mut inside, mut client) = tokio::io::duplex(4096);
            let relay = tokio::spawn(async move {
                relay_responses(up, &mut inside, &creds, None).await;
            });
            let response = b"HTTP/1.1 200 OK\r\nContent-Length: 15\r\n\r\nsk-real is hers";
            server.write_all(response).await.unwrap();
            let mut got = vec![0u8; response.len()];
            // The server keeps the connection open: only the hold timer lets the "s" go.
            client.read_exact(&mut got).await.unwrap();
            assert!(got.ends_with(b"\r\n\r\n******* is hers"), "{got:?}");
            drop(server);
            relay.await.unwrap();
        });
    }

    #[test]
    fn intercepted_requests_ask_for_identity_encoding() {
        let head =
            b"GET / HTTP/1.1\r\nHost: a.example\r\naccept-encoding: gzip, br\r\nX: y\r\n\r\n";
        assert_eq!(
            identity_encoding(head),
            b"GET / HTTP/1.1\r\nHost: a.example\r\nX: y\r\nAccept-Encoding: identity\r\n\r\n"
        );
    }

    #[test]
    fn placeholders_are_recognisable_and_unique() {
        let a = placeholder("API_KEY").unwrap();
        assert!(a.starts_with("nsbox-cred-api_key-"), "{a}");
        assert_eq!(a.len(), "nsbox-cred-api_key-".len() + 32);
        assert_ne!(a, placeholder("API_KEY").unwrap());
    }

    #[test]
    fn headers_to_a_bound_host_get_the_value_others_are_reported() {
        let key = cred("KEY", &["api.example.com"], "sk-real");
        let gh = cred("GH", &["git.example.com"], "ghp-real");
        let creds = [key.clone(), gh.clone()];
        let head = format!(
            "POST /v1?k={p} HTTP/1.1\r\nHost: api.example.com\r\nx-api-key: {p}\r\nAuthorization: Bearer {p}\r\nX-Other: {g}\r\n\r\n",
            p = key.placeholder,
            g = gh.placeholder
        );
        let (out, found) = inject(head.as_bytes(), "api.example.com", &creds);
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains("x-api-key: sk-real\r\n"), "{out}");
        assert!(out.contains("Authorization: Bearer sk-real\r\n"), "{out}");
        // The URL and the other credential's header keep their placeholders.
        assert!(out.starts_with(&format!("POST /v1?k={} ", key.placeholder)));
        assert!(out.contains(&format!("X-Other: {}\r\n", gh.placeholder)));
        assert!(!out.contains("ghp-real"));
        assert_eq!(
            found,
            [
                Finding::Refused {
                    credential: "KEY".into(),
                    place: "url".into()
                },
                Finding::Injected {
                    credential: "KEY".into(),
                    header: "x-api-key".into()
                },
                Finding::Injected {
                    credential: "KEY".into(),
                    header: "authorization".into()
                },
                Finding::Refused {
                    credential: "GH".into(),
                    place: "header x-other".into()
                },
            ]
        );
    }

    #[test]
    fn basic_auth_is_rewritten_inside_its_base64() {
        let gh = cred("GH", &["git.example.com"], "ghp-real");
        let engine = base64::engine::general_purpose::STANDARD;
        let token = engine.encode(format!("x-access-token:{}", gh.placeholder));
        let head = format!(
            "GET / HTTP/1.1\r\nHost: git.example.com\r\nAuthorization: Basic {token}\r\n\r\n"
        );
        let (out, found) = inject(
            head.as_bytes(),
            "git.example.com",
            std::slice::from_ref(&gh),
        );
        let out = String::from_utf8(out).unwrap();
        let want = engine.encode("x-access-token:ghp-real");
        assert!(
            out.contains(&format!("Authorization: Basic {want}\r\n")),
            "{out}"
        );
        assert_eq!(found.len(), 1);
        // To another host, it stays as it was.
        let (out, found) = inject(head.as_bytes(), "evil.example.com", &[gh]);
        assert_eq!(out, head.as_bytes());
        assert!(
            matches!(&found[0], Finding::Refused { place, .. } if place == "header authorization (basic)")
        );
    }

    #[test]
    fn a_binding_with_a_header_injects_only_there() {
        let env: std::collections::BTreeMap<String, String> =
            [("KEY".to_string(), "sk-real".to_string())].into();
        let c = Credential::parse("KEY:X-Api-Key=api.example.com", &env).unwrap();
        assert_eq!(c.headers, ["x-api-key"]);
        let head = format!(
            "GET / HTTP/1.1\r\nHost: api.example.com\r\nx-api-key: {p}\r\nX-Debug: {p}\r\nAuthorization: Basic {b}\r\n\r\n",
            p = c.placeholder,
            b = base64::engine::general_purpose::STANDARD.encode(format!("u:{}", c.placeholder)),
        );
        let (out, found) = inject(head.as_bytes(), "api.example.com", std::slice::from_ref(&c));
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains("x-api-key: sk-real\r\n"), "{out}");
        assert!(
            out.contains(&format!("X-Debug: {}\r\n", c.placeholder)),
            "{out}"
        );
        assert_eq!(out.matches("sk-real").count(), 1, "{out}");
        assert_eq!(
            found[1..],
            [
                Finding::Refused {
                    credential: "KEY".into(),
                    place: "header x-debug".into()
                },
                Finding::Refused {
                    credential: "KEY".into(),
                    place: "header authorization (basic)".into()
                },
            ]
        );
        let two = Credential::parse("KEY:authorization,x-api-key=api.example.com", &env).unwrap();
        assert_eq!(two.headers, ["authorization", "x-api-key"]);
        for bad in [
            "KEY:=a.example.com",
            "KEY:x y=a.example.com",
            "KEY:a,=a.example.com",
        ] {
            assert!(Credential::parse(bad, &env).is_err(), "{bad}");
        }
    }

    #[test]
    fn bindings_parse_and_values_never_appear_in_errors() {
        let env: std::collections::BTreeMap<String, String> = [
            ("KEY".to_string(), "sk-real".to_string()),
            ("BAD".to_string(), "a\r\nInjected: 1".to_string()),
        ]
        .into();
        let c = Credential::parse("KEY=API.example.com,b.example.com.", &env).unwrap();
        assert_eq!(c.hosts, ["api.example.com", "b.example.com"]);
        assert!(!format!("{c:?}").contains("sk-real"));
        for bad in [
            "KEY",
            "KEY=",
            "KEY=*.example.com",
            "KEY=192.0.2.1",
            "NOPE=a.example.com",
            "BAD=a.example.com",
        ] {
            let e = Credential::parse(bad, &env).unwrap_err().to_string();
            assert!(!e.contains("sk-real") && !e.contains("Injected"), "{e}");
        }
    }
}
