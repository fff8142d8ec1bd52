//! Registry authentication: the `WWW-Authenticate` challenge (Basic or Bearer, RFC 7235 /
//! the distribution token spec) and the credentials nsbox may answer it with — its own, saved
//! by `nsbox login` in a root-only file under the state root, else docker's
//! `config.json` (`auths.<registry>.auth`, base64 `user:password`).
//!
//! Credentials never leave this module except as an `Authorization` header to the registry
//! (or its token realm) they were saved for.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::reference::DOCKER_HUB;
use super::RegistryError;

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    /// `realm` (the token endpoint), `service`, `scope`.
    Bearer(BTreeMap<String, String>),
}

/// Parses the first Basic or Bearer challenge of a `WWW-Authenticate` value:
/// `Bearer realm="https://auth.example/token",service="registry.example",scope="repository:x:pull"`.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut params = BTreeMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String =
            std::iter::from_fn(|| chars.next_if(|c| *c != '=' && *c != ',')).collect();
        if key.is_empty() {
            break;
        }
        if chars.next() != Some('=') {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = std::iter::from_fn(|| chars.next_if(|c| *c != ',')).collect();
        }
        params.insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
    }
    params
        .contains_key("realm")
        .then_some(Challenge::Bearer(params))
}

/// A user name and password (or token) for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, ***)", self.username)
    }
}

impl Credentials {
    /// The `Authorization` value for Basic auth.
    pub fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }

    fn from_auth_field(auth: &str) -> Option<Credentials> {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .ok()?;
        let text = String::from_utf8(raw).ok()?;
        let (user, pass) = text.split_once(':')?;
        Some(Credentials {
            username: user.to_string(),
            password: pass.to_string(),
        })
    }
}

/// docker's (and nsbox's) credentials file: `{"auths": {"registry": {"auth": "base64"}}}`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    /// Other keys of docker's file (credsStore, credHelpers, ...) are kept as they are.
    #[serde(flatten)]
    other: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct AuthEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    auth: Option<String>,
    #[serde(flatten)]
    other: BTreeMap<String, serde_json::Value>,
}

/// The key a registry is known by in a credentials file: docker writes Docker Hub as
/// `https://index.docker.io/v1/`, others as `host[:port]`, sometimes with a scheme or path.
fn key_matches(key: &str, registry: &str) -> bool {
    let host = key
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or("");
    let canonical = |h: &str| match h {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => DOCKER_HUB.to_string(),
        other => other.to_string(),
    };
    canonical(host) == canonical(registry)
}

/// Where credentials are looked up: nsbox's own file first, then docker's.
#[derive(Debug, Clone)]
pub struct CredentialStore {
    /// `<state root>/auth.json`, root-only.
    pub own: PathBuf,
    /// docker's config.json (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`).
    pub docker: Option<PathBuf>,
}

/// Where credentials came from (for messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub credentials: Credentials,
    pub origin: PathBuf,
}

impl CredentialStore {
    pub fn new(state_root: &Path) -> CredentialStore {
        let docker = match std::env::var_os("DOCKER_CONFIG") {
            Some(dir) if !dir.is_empty() => Some(PathBuf::from(dir).join("config.json")),
            _ => std::env::var_os("HOME")
                .filter(|h| !h.is_empty())
                .map(|h| PathBuf::from(h).join(".docker/config.json")),
        };
        CredentialStore {
            own: state_root.join("auth.json"),
            docker,
        }
    }

    /// Credentials for `registry`, if either file has some.
    pub fn lookup(&self, registry: &str) -> Result<Option<Found>, RegistryError> {
        for path in std::iter::once(&self.own).chain(self.docker.as_ref()) {
            let Some(file) = read_file(path)? else {
                continue;
            };
            let found = file
                .auths
                .iter()
                .filter(|(key, _)| key_matches(key, registry))
                .find_map(|(_, entry)| {
                    entry.auth.as_deref().and_then(Credentials::from_auth_field)
                });
            if let Some(credentials) = found {
                return Ok(Some(Found {
                    credentials,
                    origin: path.clone(),
                }));
            }
        }
        Ok(None)
    }

    /// Saves credentials for `registry` in nsbox's own file (mode 0600, replaced atomically).
    pub fn save(&self, registry: &str, credentials: &Credentials) -> Result<(), RegistryError> {
        let mut file = read_file(&self.own)?.unwrap_or_default();
        file.auths.retain(|key, _| !key_matches(key, registry));
        let raw = format!("{}:{}", credentials.username, credentials.password);
        file.auths.insert(
            registry.to_string(),
            AuthEntry {
                auth: Some(base64::engine::general_purpose::STANDARD.encode(raw)),
                other: BTreeMap::new(),
            },
        );
        write_file(&self.own, &file)
    }

    /// Forgets `registry` in nsbox's own file; false when it had nothing for it.
    pub fn remove(&self, registry: &str) -> Result<bool, RegistryError> {
        let Some(mut file) = read_file(&self.own)? else {
            return Ok(false);
        };
        let before = file.auths.len();
        file.auths.retain(|key, _| !key_matches(key, registry));
        if file.auths.len() == before {
            return Ok(false);
        }
        write_file(&self.own, &file)?;
        Ok(true)
    }
}

fn read_file(path: &Path) -> Result<Option<AuthFile>, RegistryError> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(RegistryError::Credentials(format!(
                "cannot read {}: {e}",
                path.display()
            )))
        }
    };
    serde_json::from_slice(&text).map(Some).map_err(|e| {
        RegistryError::Credentials(format!(
            "{} is not a valid credentials file ({e}) — hint: fix or remove it, then `nsbox login` again",
            path.display()
        ))
    })
}

fn write_file(path: &Path, file: &AuthFile) -> Result<(), RegistryError> {
    let fail = |e: std::io::Error| {
        RegistryError::Credentials(format!("cannot write {}: {e}", path.display()))
    };
    let bytes = serde_json::to_vec_pretty(file).map_err(|e| fail(std::io::Error::other(e)))?;
    let tmp = path.with_extension(format!("tmp-{}", crate::ids::new_id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        fail(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/ubuntu:pull""#,
        )
        .unwrap();
        let Challenge::Bearer(p) = c else {
            panic!("not bearer")
        };
        assert_eq!(p["realm"], "https://auth.docker.io/token");
        assert_eq!(p["service"], "registry.docker.io");
        assert_eq!(p["scope"], "repository:library/ubuntu:pull");
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        let Some(Challenge::Bearer(p)) =
            parse_challenge(r#"bearer realm=http://127.0.0.1:1/t, error="insufficient_scope""#)
        else {
            panic!("unquoted")
        };
        assert_eq!(p["realm"], "http://127.0.0.1:1/t");
        assert_eq!(parse_challenge("Bearer service=x"), None);
        assert_eq!(parse_challenge("Negotiate abc"), None);
    }

    #[test]
    fn credentials_round_trip_and_docker_keys_match() {
        let dir = tempfile::tempdir().unwrap();
        let docker = dir.path().join("docker.json");
        std::fs::write(
            &docker,
            r#"{"auths":{"https://index.docker.io/v1/":{"auth":"aHViOnNlY3JldA=="}},"credsStore":"x"}"#,
        )
        .unwrap();
        let store = CredentialStore {
            own: dir.path().join("auth.json"),
            docker: Some(docker.clone()),
        };
        let hub = store.lookup("docker.io").unwrap().unwrap();
        assert_eq!(hub.credentials.username, "hub");
        assert_eq!(hub.credentials.password, "secret");
        assert_eq!(hub.origin, docker);
        assert!(store.lookup("ghcr.io").unwrap().is_none());
        let c = Credentials {
            username: "me".into(),
            password: "p:w".into(),
        };
        store.save("127.0.0.1:5000", &c).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&store.own).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            store.lookup("127.0.0.1:5000").unwrap().unwrap().credentials,
            c
        );
        assert!(format!("{c:?}").contains("***"));
        assert!(!format!("{c:?}").contains("p:w"));
        assert!(store.remove("127.0.0.1:5000").unwrap());
        assert!(!store.remove("127.0.0.1:5000").unwrap());
        assert!(store.lookup("127.0.0.1:5000").unwrap().is_none());
    }
}
