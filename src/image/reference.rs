//! Image references as users type them: `NAME[:TAG]`, `NAME@sha256:...`, `sha256:...`, or a
//! unique prefix of an image digest (as `nsbox images` shows it).

use super::digest::Digest;

/// What a reference asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    /// `name:tag` (`:latest` added when no tag was given).
    Name(String),
    /// A manifest digest (with or without a name in front).
    Digest(Digest),
    /// At least 6 hex digits of a manifest digest.
    Prefix(String),
}

/// Why a text is not an image name, reference or digest. Each names the text (made printable)
/// and what a valid one looks like.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("'{0}' is not a sha256 digest (sha256:<64 hex digits>)")]
    NotSha256(String),
    #[error("'{0}' is not a valid sha256 digest (64 lowercase hex digits)")]
    BadDigest(String),
    #[error("'{0}': a tag is 1-128 letters, digits, '_', '.', '-' (not starting with '.' or '-')")]
    BadTag(String),
    #[error("'{0}': a bad registry host")]
    BadHost(String),
    #[error("'{0}' is not a valid image name: use lowercase letters, digits, '.', '_', '-' and '/' (e.g. devbox:1.0, registry.example:5000/team/devbox)")]
    BadName(String),
    #[error("'{prefix}' matches {count} images — give more digits of the digest")]
    Ambiguous { prefix: String, count: usize },
}

impl Reference {
    pub fn parse(text: &str) -> Result<Reference, ReferenceError> {
        if let Some((name, digest)) = text.split_once('@') {
            check_repository(name)?;
            return Digest::parse(digest).map(Reference::Digest);
        }
        if text.starts_with("sha256:") {
            return Digest::parse(text).map(Reference::Digest);
        }
        if text.len() >= 6
            && text.len() < 64
            && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Ok(Reference::Prefix(text.to_string()));
        }
        normalize_name(text).map(Reference::Name)
    }
}

/// `repo` → `repo:latest`; checks the characters of both parts. Docker Hub names are kept
/// in their familiar form (`docker.io/library/alpine` is `alpine`), as `docker save` does.
pub fn normalize_name(text: &str) -> Result<String, ReferenceError> {
    // `library/` goes only before an official image's one-component name: Docker Hub's
    // `library/a/b` is a repository of its own, not `a/b`. And `docker.io/` stays when what
    // follows starts with a registry host of its own (`docker.io/docker.io/x` is the Hub's
    // repository `docker.io/x`): stripped, either would name another image, and normalising
    // the result again would change it. Both found by fuzz/image_reference.
    let official = ["docker.io/library/", "index.docker.io/library/"]
        .iter()
        .find_map(|prefix| text.strip_prefix(prefix))
        .filter(|rest| !rest.contains('/'));
    let hub = || {
        ["docker.io/", "index.docker.io/"]
            .iter()
            .find_map(|prefix| text.strip_prefix(prefix))
            .filter(|rest| !starts_with_host(rest))
    };
    let text = official.or_else(hub).unwrap_or(text);
    let last_slash = text.rfind('/').map_or(0, |i| i + 1);
    let (repo, tag) = match text[last_slash..].rfind(':') {
        Some(i) => (&text[..last_slash + i], &text[last_slash + i + 1..]),
        None => (text, "latest"),
    };
    check_repository(repo)?;
    let tag_ok = !tag.is_empty()
        && tag.len() <= 128
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        && !tag.starts_with(['.', '-']);
    if !tag_ok {
        return Err(ReferenceError::BadTag(super::digest::printable(text)));
    }
    Ok(format!("{repo}:{tag}"))
}

/// Whether `name`'s first component is a registry host (`host.example/...`, `host:5000/...`,
/// `localhost/...`), as [`check_repository`] reads it.
fn starts_with_host(name: &str) -> bool {
    name.split_once('/')
        .is_some_and(|(host, _)| host.contains(['.', ':']) || host == "localhost")
}

fn check_repository(repo: &str) -> Result<(), ReferenceError> {
    // An optional registry host (may carry a port) before the first '/'.
    let path = match repo.split_once('/') {
        Some((host, rest)) if host.contains(['.', ':']) || host == "localhost" => {
            let (name, port) = host.split_once(':').unwrap_or((host, "80"));
            let host_ok = !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && name.split('.').all(|label| {
                    !label.is_empty()
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                        && !label.starts_with('-')
                });
            if !host_ok {
                return Err(ReferenceError::BadHost(super::digest::printable(repo)));
            }
            rest
        }
        _ => repo,
    };
    let ok = !path.is_empty()
        && repo.len() <= 255
        && path.split('/').all(|part| {
            !part.is_empty()
                && part.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
                })
                && part.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        });
    if ok {
        Ok(())
    } else {
        Err(ReferenceError::BadName(super::digest::printable(repo)))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn normalizing_a_name_twice_changes_nothing() {
        // fuzz/image_reference found `docker.io/docker.io/r/ar/aest` normalised to
        // `docker.io/r/ar/aest:latest`, which normalised again to `r/ar/aest:latest`.
        for text in [
            "docker.io/docker.io/r/ar/aest",
            "index.docker.io/ghcr.io/org/x:1",
            "docker.io/library/alpine",
            "docker.io/team/app:2",
            "docker.io/library/ibrary/aa",
        ] {
            let once = super::normalize_name(text).unwrap();
            assert_eq!(super::normalize_name(&once).unwrap(), once, "{text}");
        }
        assert_eq!(
            super::normalize_name("docker.io/docker.io/r/x").unwrap(),
            "docker.io/docker.io/r/x:latest"
        );
        assert_eq!(
            super::normalize_name("docker.io/library/alpine").unwrap(),
            "alpine:latest"
        );
        assert_eq!(
            super::normalize_name("docker.io/team/app:2").unwrap(),
            "team/app:2"
        );
    }

    use super::*;

    #[test]
    fn names_get_a_tag_and_are_checked() {
        assert_eq!(normalize_name("busybox").unwrap(), "busybox:latest");
        assert_eq!(normalize_name("a/b:1.0").unwrap(), "a/b:1.0");
        assert_eq!(
            normalize_name("docker.io/library/alpine:3").unwrap(),
            "alpine:3"
        );
        assert_eq!(normalize_name("docker.io/team/x").unwrap(), "team/x:latest");
        assert_eq!(
            normalize_name("localhost:5000/x").unwrap(),
            "localhost:5000/x:latest"
        );
        for bad in ["", "Upper", "a//b", "x:", "x:-t", "../x", "a b", "/abs"] {
            assert!(normalize_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn references_parse() {
        let hex = "ab".repeat(32);
        assert_eq!(
            Reference::parse(&format!("x@sha256:{hex}")).unwrap(),
            Reference::Digest(Digest::parse(&format!("sha256:{hex}")).unwrap())
        );
        assert_eq!(
            Reference::parse("abcdef12").unwrap(),
            Reference::Prefix("abcdef12".into())
        );
        assert_eq!(
            Reference::parse("devbox").unwrap(),
            Reference::Name("devbox:latest".into())
        );
        assert!(Reference::parse("x@sha256:../../etc").is_err());
    }
}
