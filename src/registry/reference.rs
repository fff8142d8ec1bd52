//! Remote image references, with Docker's rules: `python:3.12` is
//! `docker.io/library/python:3.12`, `team/app` is `docker.io/team/app:latest`, a first path
//! component with a `.` or `:` (or `localhost`) is a registry host, `NAME@sha256:...` pins a
//! manifest (or index) digest.

use crate::image::digest::{printable, Digest};
use crate::image::reference::{normalize_name, ReferenceError};

/// Why a text is not a reference nsbox can pull.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{text}' is not a valid image reference: {problem} — hint: write NAME[:TAG] or NAME@sha256:DIGEST, e.g. python:3.12, ghcr.io/org/devbox:1, localhost:5000/app@sha256:...")]
pub struct RemoteRefError {
    /// The reference, made printable.
    pub text: String,
    pub problem: RemoteRefProblem,
}

/// What is wrong with a remote reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemoteRefProblem {
    #[error("it is empty")]
    Empty,
    #[error("no tag")]
    NoTag,
    #[error(transparent)]
    Invalid(#[from] ReferenceError),
}

/// Docker Hub as users write it, and the host its API lives on.
pub const DOCKER_HUB: &str = "docker.io";
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// A reference to an image in a registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteRef {
    /// The registry as written (`docker.io` for Docker Hub), host[:port].
    pub registry: String,
    /// The repository path in that registry (`library/python`).
    pub repository: String,
    /// The tag (`latest` when neither a tag nor a digest was given).
    pub tag: Option<String>,
    /// A pinned digest (wins over the tag).
    pub digest: Option<Digest>,
}

impl RemoteRef {
    pub fn parse(text: &str) -> Result<RemoteRef, RemoteRefError> {
        let bad = |problem: RemoteRefProblem| RemoteRefError {
            text: printable(text),
            problem,
        };
        let invalid = |e: ReferenceError| bad(RemoteRefProblem::Invalid(e));
        if text.is_empty() {
            return Err(bad(RemoteRefProblem::Empty));
        }
        let (name, digest) = match text.split_once('@') {
            Some((name, d)) => (name, Some(Digest::parse(d).map_err(invalid)?)),
            None => (text, None),
        };
        // The full name with its tag, checked by the store's rules (lowercase repository,
        // valid host, tag characters).
        let normalized = normalize_name(name).map_err(invalid)?;
        let last_slash = name.rfind('/').map_or(0, |i| i + 1);
        let explicit_tag = name[last_slash..].contains(':');
        let (path, tag) = normalized
            .rsplit_once(':')
            .ok_or_else(|| bad(RemoteRefProblem::NoTag))?;
        let (registry, repository) = match path.split_once('/') {
            Some((host, rest)) if host.contains(['.', ':']) || host == "localhost" => {
                let host = if host == "index.docker.io" {
                    DOCKER_HUB
                } else {
                    host
                };
                (host.to_string(), rest.to_string())
            }
            _ => (DOCKER_HUB.to_string(), path.to_string()),
        };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        let tag = match (&digest, explicit_tag) {
            (Some(_), false) => None,
            _ => Some(tag.to_string()),
        };
        Ok(RemoteRef {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The host (and port) the registry's API answers on.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// What the manifest URL names: the digest when pinned, else the tag.
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_string(),
        }
    }

    /// The name the pulled image gets in the store (`python:3.12`,
    /// `ghcr.io/org/devbox:1`); None for a pull by digest alone, which is found by digest.
    pub fn store_name(&self) -> Option<String> {
        if self.digest.is_some() {
            return None;
        }
        let tag = self.tag.as_deref().unwrap_or("latest");
        normalize_name(&format!("{}/{}:{tag}", self.registry, self.repository)).ok()
    }

    /// Whether the registry is on this machine (plain HTTP is allowed there).
    pub fn is_loopback(&self) -> bool {
        is_loopback_host(&self.registry)
    }
}

impl std::fmt::Display for RemoteRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// `localhost`, 127.0.0.0/8 or `[::1]`, with or without a port.
pub fn is_loopback_host(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        registry.split(':').next().unwrap_or("")
    };
    host == "localhost"
        || host == "::1"
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(text: &str) -> RemoteRef {
        RemoteRef::parse(text).unwrap()
    }

    #[test]
    fn docker_rules() {
        let p = r("python:3.12");
        assert_eq!(p.registry, "docker.io");
        assert_eq!(p.repository, "library/python");
        assert_eq!(p.tag.as_deref(), Some("3.12"));
        assert_eq!(p.api_host(), "registry-1.docker.io");
        assert_eq!(p.store_name().unwrap(), "python:3.12");
        let t = r("team/app");
        assert_eq!(t.repository, "team/app");
        assert_eq!(t.tag.as_deref(), Some("latest"));
        assert_eq!(t.store_name().unwrap(), "team/app:latest");
        let d = r("docker.io/library/alpine");
        assert_eq!(d.repository, "library/alpine");
        assert_eq!(d.store_name().unwrap(), "alpine:latest");
        let g = r("ghcr.io/org/devbox:1");
        assert_eq!(g.registry, "ghcr.io");
        assert_eq!(g.repository, "org/devbox");
        assert_eq!(g.api_host(), "ghcr.io");
        assert_eq!(g.store_name().unwrap(), "ghcr.io/org/devbox:1");
        let l = r("localhost:5000/app");
        assert_eq!(l.registry, "localhost:5000");
        assert_eq!(l.repository, "app");
        assert!(l.is_loopback());
        assert!(r("127.0.0.1:41234/x/y:2").is_loopback());
        assert!(!g.is_loopback());
    }

    #[test]
    fn digests_pin() {
        let hex = "ab".repeat(32);
        let d = r(&format!("ghcr.io/org/devbox@sha256:{hex}"));
        assert_eq!(d.tag, None);
        assert_eq!(d.manifest_reference(), format!("sha256:{hex}"));
        assert_eq!(d.store_name(), None);
        let both = r(&format!("busybox:1@sha256:{hex}"));
        assert_eq!(both.tag.as_deref(), Some("1"));
        assert_eq!(both.manifest_reference(), format!("sha256:{hex}"));
    }

    #[test]
    fn malformed_references_say_how_to_write_one() {
        for bad in [
            "",
            "Python",
            "a//b",
            "x:",
            "x@sha256:1234",
            "x@md5:abc",
            "bad host!/x",
            "-x",
            "x y",
        ] {
            let e = RemoteRef::parse(bad).unwrap_err().to_string();
            assert!(e.contains("hint"), "{bad}: {e}");
        }
    }
}
