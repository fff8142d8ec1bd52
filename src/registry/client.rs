//! A client for one repository of an OCI distribution registry (the `/v2/` API): manifests
//! and blobs over HTTPS (rustls; plain HTTP only for loopback registries or when explicitly
//! allowed), answering `401` challenges with a bearer token from the realm the registry names
//! or with Basic credentials, retrying what a flaky network breaks, and resuming a blob
//! download with `Range` where the connection dropped.
//!
//! Synchronous on purpose: layers are downloaded by a few threads that each feed a layer
//! straight into the unpacker (`image::load`), which is blocking code too.

use std::io::{self, Read};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ureq::http::Response;
use ureq::Body;

use super::auth::{parse_challenge, Challenge, Found};
use super::reference::{is_loopback_host, RemoteRef};
use super::{RegistryError, RegistrySettings};
use crate::image::digest::{printable, Digest};
use crate::image::oci;

/// Requests that failed for reasons a retry may fix (connection refused or reset, 5xx, 429)
/// are tried this many times in all.
const ATTEMPTS: u32 = 4;
/// A blob whose connection keeps dropping without delivering a byte is given up after this
/// many reconnects in a row.
const STALLED_RECONNECTS: u32 = 5;

/// What `Accept` says for manifests: every manifest and index format nsbox reads.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// One repository of one registry, with the authorization it earned so far.
pub struct Client {
    agent: ureq::Agent,
    /// `https://host[:port]` or `http://...`.
    base: String,
    registry: String,
    repository: String,
    insecure_http: bool,
    credentials: Option<Found>,
    /// The `Authorization` value in use (a bearer token, or Basic credentials).
    authorization: Mutex<Option<String>>,
    /// Base delay between retries (tests and benches may shorten it).
    backoff: Duration,
}

/// A transient failure is retried; a final one is returned.
enum Failure {
    Transient(RegistryError),
    Final(RegistryError),
}

impl Client {
    pub fn new(
        reference: &RemoteRef,
        settings: &RegistrySettings,
        credentials: Option<Found>,
    ) -> Result<Client, RegistryError> {
        let loopback = reference.is_loopback();
        // A CA file only makes sense for HTTPS; otherwise HTTPS except on loopback.
        let https = settings
            .tls
            .unwrap_or(settings.ca_file.is_some() || (!loopback && !settings.insecure_http));
        if !https && !loopback && !settings.insecure_http {
            return Err(RegistryError::Insecure {
                registry: reference.registry.clone(),
            });
        }
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(ca) = &settings.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| RegistryError::Settings(format!("CA file {}: {e}", ca.display())))?;
            let mut certs = Vec::new();
            for item in ureq::tls::parse_pem(&pem) {
                if let Ok(ureq::tls::PemItem::Certificate(c)) = item {
                    certs.push(c);
                }
            }
            if certs.is_empty() {
                return Err(RegistryError::Settings(format!(
                    "CA file {} holds no PEM certificate",
                    ca.display()
                )));
            }
            tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&certs));
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(15)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            // A connection that stops delivering is treated like a dropped one (resumed).
            .timeout_per_read(Some(Duration::from_secs(60)))
            .max_redirects(5)
            .user_agent(concat!("nsbox/", env!("CARGO_PKG_VERSION")))
            .tls_config(tls.build())
            .max_idle_connections_per_host(8)
            .build()
            .into();
        Ok(Client {
            agent,
            base: format!(
                "{}://{}",
                if https { "https" } else { "http" },
                reference.api_host()
            ),
            registry: reference.registry.clone(),
            repository: reference.repository.clone(),
            insecure_http: settings.insecure_http,
            credentials,
            authorization: Mutex::new(None),
            backoff: settings.retry_delay.unwrap_or(Duration::from_millis(250)),
        })
    }

    /// Checks that the registry answers the API and accepts our credentials (`nsbox login`).
    pub fn ping(&self) -> Result<(), RegistryError> {
        let url = format!("{}/v2/", self.base);
        let resp = self.send(&url, None, None)?;
        match resp.status().as_u16() {
            200..=299 => Ok(()),
            404 => Err(RegistryError::Protocol(format!(
                "{} does not serve the registry API (/v2/ answered 404) — hint: check the address",
                self.registry
            ))),
            code => Err(self.status_error(&url, code)),
        }
    }

    /// Fetches a manifest or index by tag or digest: (bytes, media type, the digest the
    /// registry says it has).
    pub fn manifest(
        &self,
        reference: &str,
        max: u64,
    ) -> Result<(Vec<u8>, String, Option<String>), RegistryError> {
        let url = format!("{}/v2/{}/manifests/{reference}", self.base, self.repository);
        let mut resp = self.send(&url, Some(MANIFEST_ACCEPT), None)?;
        match resp.status().as_u16() {
            200 => {}
            404 => {
                return Err(RegistryError::NotFound {
                    what: format!("{}/{}:{reference}", self.registry, self.repository),
                })
            }
            code => return Err(self.status_error(&url, code)),
        }
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|s| s.split(';').next().unwrap_or(s).trim().to_string())
        };
        let media_type = header("content-type").unwrap_or_default();
        let digest = header("docker-content-digest");
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(max)
            .read_to_vec()
            .map_err(|e| self.transfer_error(&url, &e.to_string()))?;
        Ok((bytes, media_type, digest))
    }

    /// Fetches a small blob (an image config) whole.
    pub fn small_blob(&self, digest: &Digest, max: u64) -> Result<Vec<u8>, RegistryError> {
        let mut reader = self.open_blob(digest, 0)?;
        let mut bytes = Vec::new();
        (&mut reader)
            .take(max + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| self.transfer_error(&self.blob_url(digest), &e.to_string()))?;
        Ok(bytes)
    }

    fn blob_url(&self, digest: &Digest) -> String {
        format!("{}/v2/{}/blobs/{digest}", self.base, self.repository)
    }

    /// Opens a blob at byte `offset` (a `Range` request when not 0; a registry that ignores
    /// it is read past the bytes we have).
    fn open_blob(
        &self,
        digest: &Digest,
        offset: u64,
    ) -> Result<ureq::BodyReader<'static>, RegistryError> {
        let url = self.blob_url(digest);
        let resp = self.send(&url, None, (offset > 0).then_some(offset))?;
        let code = resp.status().as_u16();
        let mut reader = match code {
            200 | 206 => resp.into_body().into_reader(),
            404 => {
                return Err(RegistryError::NotFound {
                    what: format!("blob {digest} in {}/{}", self.registry, self.repository),
                })
            }
            code => return Err(self.status_error(&url, code)),
        };
        if offset > 0 && code == 200 {
            let skipped = io::copy(&mut (&mut reader).take(offset), &mut io::sink())
                .map_err(|e| self.transfer_error(&url, &e.to_string()))?;
            if skipped != offset {
                return Err(self.transfer_error(&url, "the blob is shorter than before"));
            }
        }
        Ok(reader)
    }

    /// A reader of the whole blob that reconnects (resuming at the byte it stopped at) when
    /// the connection drops. `size` is the descriptor's: the reader delivers exactly that
    /// many bytes, and the caller verifies their digest.
    pub fn blob_reader<'c>(
        &'c self,
        digest: &Digest,
        size: u64,
        failure: Arc<Mutex<Option<RegistryError>>>,
    ) -> BlobReader<'c> {
        BlobReader {
            client: self,
            digest: digest.clone(),
            size,
            pos: 0,
            body: None,
            stalls: 0,
            failure,
        }
    }

    /// GET with the current authorization; answers one 401 challenge, retries transient
    /// failures.
    fn send(
        &self,
        url: &str,
        accept: Option<&str>,
        range: Option<u64>,
    ) -> Result<Response<Body>, RegistryError> {
        let mut challenged = false;
        let mut attempt = 1;
        loop {
            let result = self.send_once(url, accept, range).and_then(|resp| {
                let code = resp.status().as_u16();
                if code == 401 {
                    return Ok(resp);
                }
                if code == 429 || (500..600).contains(&code) {
                    return Err(Failure::Transient(self.status_error(url, code)));
                }
                Ok(resp)
            });
            match result {
                Ok(resp) if resp.status().as_u16() == 401 => {
                    if challenged {
                        return Err(self.rejected(url));
                    }
                    challenged = true;
                    let header = resp
                        .headers()
                        .get("www-authenticate")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    self.authenticate(&header)?;
                }
                Ok(resp) => return Ok(resp),
                Err(Failure::Final(e)) => return Err(e),
                Err(Failure::Transient(e)) => {
                    if attempt >= ATTEMPTS {
                        return Err(e);
                    }
                    tracing::debug!(url, attempt, error = %e, "retrying");
                    std::thread::sleep(self.backoff * 2u32.pow(attempt - 1));
                    attempt += 1;
                }
            }
        }
    }

    fn send_once(
        &self,
        url: &str,
        accept: Option<&str>,
        range: Option<u64>,
    ) -> Result<Response<Body>, Failure> {
        let mut req = self.agent.get(url);
        if let Some(accept) = accept {
            req = req.header("Accept", accept);
        }
        if let Some(offset) = range {
            req = req.header("Range", format!("bytes={offset}-"));
        }
        let authorization = self.authorization.lock().ok().and_then(|a| a.clone());
        if let Some(auth) = authorization {
            req = req.header("Authorization", auth);
        }
        req.call().map_err(|e| {
            let transient = matches!(
                e,
                ureq::Error::Io(_) | ureq::Error::Timeout(_) | ureq::Error::ConnectionFailed
            );
            let err = RegistryError::Unreachable {
                registry: self.registry.clone(),
                reason: e.to_string(),
            };
            if transient {
                Failure::Transient(err)
            } else {
                Failure::Final(err)
            }
        })
    }

    /// Answers a challenge: fetches a bearer token from its realm, or uses Basic
    /// credentials.
    fn authenticate(&self, header: &str) -> Result<(), RegistryError> {
        let value = match parse_challenge(header) {
            Some(Challenge::Basic) => match &self.credentials {
                Some(found) => found.credentials.basic_header(),
                None => return Err(self.needs_login()),
            },
            Some(Challenge::Bearer(params)) => format!("Bearer {}", self.token(&params)?),
            None => {
                return Err(RegistryError::Auth {
                    registry: self.registry.clone(),
                    reason: format!(
                        "it asks for an authentication scheme nsbox does not speak ('{}')",
                        printable(header)
                    ),
                    hint: "nsbox answers Basic and Bearer (token) challenges".into(),
                })
            }
        };
        if let Ok(mut a) = self.authorization.lock() {
            *a = Some(value);
        }
        Ok(())
    }

    /// A bearer token for pulling this repository, from the challenge's realm (sent our
    /// credentials, if we have some, as Basic auth).
    fn token(
        &self,
        params: &std::collections::BTreeMap<String, String>,
    ) -> Result<String, RegistryError> {
        let realm = &params["realm"];
        let realm_host = realm
            .strip_prefix("http://")
            .map(|rest| rest.split('/').next().unwrap_or(""));
        if let Some(host) = realm_host {
            if !is_loopback_host(host) && !self.insecure_http {
                return Err(RegistryError::Auth {
                    registry: self.registry.clone(),
                    reason: format!("its token service {realm} is plain HTTP"),
                    hint: "credentials and tokens travel over HTTPS only, except to loopback or with --insecure-http".into(),
                });
            }
        } else if !realm.starts_with("https://") {
            return Err(RegistryError::Auth {
                registry: self.registry.clone(),
                reason: format!("its token realm '{}' is not a URL", printable(realm)),
                hint: "the registry is misconfigured".into(),
            });
        }
        // `nsbox login` pings /v2/ for no repository: then no scope (as docker login does).
        let scope = params.get("scope").cloned().or_else(|| {
            (!self.repository.is_empty()).then(|| format!("repository:{}:pull", self.repository))
        });
        let mut attempt = 1;
        let mut resp = loop {
            let mut req = self.agent.get(realm);
            if let Some(scope) = &scope {
                req = req.query("scope", scope);
            }
            if let Some(service) = params.get("service") {
                req = req.query("service", service);
            }
            if let Some(found) = &self.credentials {
                req = req
                    .query("account", &found.credentials.username)
                    .header("Authorization", found.credentials.basic_header());
            }
            match req.call() {
                Ok(resp) => break resp,
                Err(e) if attempt < ATTEMPTS => {
                    tracing::debug!(realm, attempt, error = %e, "retrying token request");
                    std::thread::sleep(self.backoff * 2u32.pow(attempt - 1));
                    attempt += 1;
                }
                Err(e) => {
                    return Err(RegistryError::Unreachable {
                        registry: format!("{} (token service {realm})", self.registry),
                        reason: e.to_string(),
                    })
                }
            }
        };
        match resp.status().as_u16() {
            200 => {}
            401 | 403 => return Err(self.rejected(realm)),
            code => return Err(self.status_error(realm, code)),
        }
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
        }
        let body = resp
            .body_mut()
            .with_config()
            .limit(1 << 20)
            .read_to_vec()
            .map_err(|e| self.transfer_error(realm, &e.to_string()))?;
        let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|e| {
            RegistryError::Protocol(format!("the token service {realm} answered no token: {e}"))
        })?;
        parsed
            .token
            .or(parsed.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                RegistryError::Protocol(format!("the token service {realm} answered no token"))
            })
    }

    fn needs_login(&self) -> RegistryError {
        RegistryError::Auth {
            registry: self.registry.clone(),
            reason: "it requires credentials and none are saved for it".into(),
            hint: format!("`nsbox login {}` (or `docker login`) first", self.registry),
        }
    }

    fn rejected(&self, url: &str) -> RegistryError {
        match &self.credentials {
            None => self.needs_login(),
            Some(found) => RegistryError::Auth {
                registry: self.registry.clone(),
                reason: format!(
                    "the credentials of user '{}' (from {}) were rejected ({})",
                    printable(&found.credentials.username),
                    found.origin.display(),
                    url
                ),
                hint: format!(
                    "check user and password, then `nsbox login {}` again",
                    self.registry
                ),
            },
        }
    }

    fn status_error(&self, url: &str, code: u16) -> RegistryError {
        RegistryError::Http {
            url: url.to_string(),
            status: code,
        }
    }

    fn transfer_error(&self, url: &str, reason: &str) -> RegistryError {
        RegistryError::Unreachable {
            registry: self.registry.clone(),
            reason: format!("reading {url}: {reason}"),
        }
    }
}

/// A blob's bytes, reconnecting with `Range` where a connection dropped. A failure it cannot
/// recover from is also left in `failure`, so the caller reports the network's error rather
/// than what the unpacker made of a short stream.
pub struct BlobReader<'c> {
    client: &'c Client,
    digest: Digest,
    size: u64,
    pos: u64,
    body: Option<ureq::BodyReader<'static>>,
    stalls: u32,
    failure: Arc<Mutex<Option<RegistryError>>>,
}

impl BlobReader<'_> {
    fn give_up(&self, e: RegistryError) -> io::Error {
        let message = e.to_string();
        if let Ok(mut slot) = self.failure.lock() {
            slot.get_or_insert(e);
        }
        io::Error::other(message)
    }
}

impl Read for BlobReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pos >= self.size || buf.is_empty() {
                return Ok(0);
            }
            if self.body.is_none() {
                if self.pos > 0 {
                    tracing::info!(digest = %self.digest, offset = self.pos, "resuming blob download");
                }
                match self.client.open_blob(&self.digest, self.pos) {
                    Ok(body) => self.body = Some(body),
                    Err(e) => return Err(self.give_up(e)),
                }
            }
            let want = buf.len().min((self.size - self.pos) as usize);
            let Some(body) = self.body.as_mut() else {
                continue;
            };
            let reason = match body.read(&mut buf[..want]) {
                Ok(0) => "the connection closed early".to_string(),
                Ok(n) => {
                    self.pos += n as u64;
                    self.stalls = 0;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => e.to_string(),
            };
            self.body = None;
            self.stalls += 1;
            if self.stalls > STALLED_RECONNECTS {
                return Err(self.give_up(RegistryError::Unreachable {
                    registry: self.client.registry.clone(),
                    reason: format!(
                        "blob {} stopped at byte {} of {}: {reason}",
                        self.digest, self.pos, self.size
                    ),
                }));
            }
            tracing::debug!(digest = %self.digest, offset = self.pos, %reason, "blob connection lost");
            std::thread::sleep(self.client.backoff * self.stalls);
        }
    }
}

/// Whether a manifest's media type (from the response, or its own `mediaType`) is an index.
pub fn is_index(media_type: &str) -> bool {
    matches!(media_type, oci::OCI_INDEX | oci::DOCKER_LIST)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_is_for_loopback_or_an_explicit_choice() {
        let remote = RemoteRef::parse("registry.example:5000/x:1").unwrap();
        let plain = RegistrySettings {
            tls: Some(false),
            ..Default::default()
        };
        let e = Client::new(&remote, &plain, None)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("--insecure-http"), "{e}");
        let insecure = RegistrySettings {
            tls: Some(false),
            insecure_http: true,
            ..Default::default()
        };
        assert!(Client::new(&remote, &insecure, None).is_ok());
        let local = RemoteRef::parse("127.0.0.1:5000/x:1").unwrap();
        let client = Client::new(&local, &RegistrySettings::default(), None).unwrap();
        assert!(client.base.starts_with("http://"));
        let client = Client::new(&remote, &RegistrySettings::default(), None).unwrap();
        assert!(client.base.starts_with("https://"));
        let missing_ca = RegistrySettings {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        };
        assert!(Client::new(&remote, &missing_ca, None).is_err());
    }
}
