//! API keys of `nsbox serve`: a token is shown once, when it is made; only its SHA-256 is kept,
//! in a root-only file under the state root (`serve/keys.json`, mode 0600). The server reads
//! the file on every authenticated request, so `nsbox serve key rm` takes effect at once.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::ServeError;

/// Tokens start with this, so a leaked one is recognisable (secret scanners, logs).
pub const TOKEN_PREFIX: &str = "nsbox_";

/// One key as stored: never the token itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    pub name: String,
    /// Hex SHA-256 of the token.
    pub sha256: String,
    /// Unix seconds.
    pub created: u64,
    /// Most sandboxes this key may hold at once (None: only the server's limit).
    pub max_sandboxes: Option<usize>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    keys: Vec<ApiKey>,
}

/// The key file of a state root.
#[derive(Debug, Clone)]
pub struct KeyStore {
    path: PathBuf,
}

fn hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Compares without an early exit, so the time taken says nothing about how much matched.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn valid_key_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

impl KeyStore {
    pub fn new(serve_dir: &Path) -> KeyStore {
        KeyStore {
            path: serve_dir.join("keys.json"),
        }
    }

    fn load(&self) -> Result<KeyFile, ServeError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| ServeError::KeyFile {
                path: self.path.clone(),
                message: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(KeyFile::default()),
            Err(e) => Err(ServeError::Io("read the key file", e)),
        }
    }

    /// Replaces the file atomically (a temporary file renamed over it), mode 0600.
    fn save(&self, file: &KeyFile) -> Result<(), ServeError> {
        let dir = self.path.parent().unwrap_or(Path::new("/"));
        super::private_dir(dir)?;
        let tmp = dir.join(".keys.json.tmp");
        let bytes = serde_json::to_vec_pretty(file).map_err(std::io::Error::other);
        let write = || -> std::io::Result<()> {
            let _ = std::fs::remove_file(&tmp);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&bytes?)?;
            f.sync_all()?;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
            std::fs::rename(&tmp, &self.path)
        };
        write().map_err(|e| ServeError::Io("write the key file", e))
    }

    /// Makes a key; returns the token (shown once, never stored).
    pub fn add(&self, name: &str, max_sandboxes: Option<usize>) -> Result<String, ServeError> {
        if !valid_key_name(name) {
            return Err(ServeError::BadKeyName(name.to_string()));
        }
        let mut file = self.load()?;
        if file.keys.iter().any(|k| k.name == name) {
            return Err(ServeError::KeyExists(name.to_string()));
        }
        let mut random = [0u8; 32];
        getrandom::fill(&mut random)
            .map_err(|e| ServeError::Io("get random bytes", std::io::Error::other(e)))?;
        let token: String = std::iter::once(TOKEN_PREFIX.to_string())
            .chain(random.iter().map(|b| format!("{b:02x}")))
            .collect();
        file.keys.push(ApiKey {
            name: name.to_string(),
            sha256: hash(&token),
            created: crate::session::state::now_secs(),
            max_sandboxes,
        });
        self.save(&file)?;
        Ok(token)
    }

    pub fn list(&self) -> Result<Vec<ApiKey>, ServeError> {
        Ok(self.load()?.keys)
    }

    /// Removes a key; false if there was none of that name.
    pub fn remove(&self, name: &str) -> Result<bool, ServeError> {
        let mut file = self.load()?;
        let before = file.keys.len();
        file.keys.retain(|k| k.name != name);
        if file.keys.len() == before {
            return Ok(false);
        }
        self.save(&file)?;
        Ok(true)
    }

    /// The key a bearer token belongs to, if any.
    pub fn verify(&self, token: &str) -> Result<Option<ApiKey>, ServeError> {
        let digest = hash(token);
        // Every key is compared, so the time does not say which one matched.
        let mut found = None;
        for key in self.load()?.keys {
            if same(&key.sha256, &digest) {
                found = Some(key);
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_stored_only_as_its_hash() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(&dir.path().join("serve"));
        let token = store.add("ci", Some(2)).unwrap();
        assert!(token.starts_with(TOKEN_PREFIX));
        let text = std::fs::read_to_string(dir.path().join("serve/keys.json")).unwrap();
        assert!(!text.contains(&token));
        let mode = std::fs::metadata(dir.path().join("serve/keys.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(store.verify(&token).unwrap().unwrap().name, "ci");
        assert!(store.verify("nsbox_wrong").unwrap().is_none());
        assert!(matches!(
            store.add("ci", None),
            Err(ServeError::KeyExists(_))
        ));
        assert!(matches!(
            store.add("a b", None),
            Err(ServeError::BadKeyName(_))
        ));
        assert!(store.remove("ci").unwrap());
        assert!(store.verify(&token).unwrap().is_none());
        assert!(!store.remove("ci").unwrap());
    }
}
