//! Content digests: `sha256:<64 lowercase hex>`, validated before one ever becomes part of a
//! path (a digest string from a manifest is attacker-controlled: `sha256:../../etc` must never
//! reach the filesystem, as in CVE-2024-3727).

use std::fmt;
use std::io::{self, Read, Write};

use sha2::{Digest as _, Sha256};

use super::reference::ReferenceError;

/// A validated sha256 digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

impl Digest {
    /// Parses `sha256:<hex>`; anything else (other algorithms, wrong length, upper case,
    /// separators) is refused.
    pub fn parse(text: &str) -> Result<Digest, ReferenceError> {
        let hex = text
            .strip_prefix("sha256:")
            .ok_or_else(|| ReferenceError::NotSha256(printable(text)))?;
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(ReferenceError::BadDigest(printable(text)));
        }
        Ok(Digest {
            hex: hex.to_string(),
        })
    }

    /// The 64 hex digits: safe as a file name.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The first 12 hex digits, for tables.
    pub fn short(&self) -> &str {
        &self.hex[..12]
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        let mut h = Hasher::default();
        h.update(bytes);
        h.finish()
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Digest::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Cuts and escapes hostile text for messages.
pub fn printable(text: &str) -> String {
    let cut: String = text.chars().take(80).collect();
    let mut out = cut.escape_default().to_string();
    if text.chars().count() > 80 {
        out.push_str("...");
    }
    out
}

/// An incremental sha256.
#[derive(Default, Clone)]
pub struct Hasher(Sha256);

impl Hasher {
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    pub fn finish(self) -> Digest {
        let out = self.0.finalize();
        let mut hex = String::with_capacity(64);
        for b in out {
            hex.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
            hex.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
        }
        Digest { hex }
    }
}

/// A reader that hashes and counts what passes through it, and optionally copies it to a
/// writer (the blob file), so a layer is stored, verified and unpacked in one pass.
pub struct HashingReader<R, W> {
    inner: R,
    hasher: Hasher,
    copy: Option<W>,
    count: u64,
    /// Reading past this many bytes fails (a blob larger than its descriptor said).
    limit: u64,
}

impl<R: Read, W: Write> HashingReader<R, W> {
    pub fn new(inner: R, copy: Option<W>, limit: u64) -> Self {
        HashingReader {
            inner,
            hasher: Hasher::default(),
            copy,
            count: 0,
            limit,
        }
    }

    /// Reads what is left, then returns the digest, the byte count and the copy.
    pub fn finish(mut self) -> io::Result<(Digest, u64, Option<W>)> {
        let mut buf = vec![0u8; 64 << 10];
        while self.read(&mut buf)? != 0 {}
        if let Some(w) = self.copy.as_mut() {
            w.flush()?;
        }
        Ok((self.hasher.finish(), self.count, self.copy))
    }
}

impl<R: Read, W: Write> Read for HashingReader<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        if self.count > self.limit {
            return Err(io::Error::other(format!(
                "more than {} bytes (the size its descriptor declares)",
                self.limit
            )));
        }
        self.hasher.update(&buf[..n]);
        if let Some(w) = self.copy.as_mut() {
            w.write_all(&buf[..n])?;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_digests_parse() {
        let good = format!("sha256:{}", "a".repeat(64));
        assert_eq!(Digest::parse(&good).unwrap().hex(), "a".repeat(64));
        for bad in [
            "sha256:../../../../etc/passwd".to_string(),
            format!("sha256:{}", "A".repeat(64)),
            format!("sha512:{}", "a".repeat(64)),
            format!("sha256:{}/", "a".repeat(63)),
            "sha256:".to_string(),
            "a".repeat(64),
        ] {
            assert!(Digest::parse(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn known_digest() {
        assert_eq!(
            Digest::of(b"").to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn hashing_reader_copies_and_limits() {
        let mut out = Vec::new();
        let r = HashingReader::new(&b"abc"[..], Some(&mut out), 3);
        let (d, n, _) = r.finish().unwrap();
        assert_eq!(n, 3);
        assert_eq!(d, Digest::of(b"abc"));
        assert_eq!(out, b"abc");
        let r = HashingReader::<_, Vec<u8>>::new(&b"abcd"[..], None, 3);
        assert!(r.finish().is_err());
    }
}
