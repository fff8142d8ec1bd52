//! FNV-1a fingerprints: cheap, stable (unlike std's hasher) and usable at compile time. They
//! tell whether a cached or precompiled artefact still matches what it was made from; they are
//! not a defence against a hostile input (nothing hostile chooses these inputs).

/// FNV-1a of `bytes`, usable in constants.
pub const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash = OFFSET;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(PRIME);
        i += 1;
    }
    hash
}

const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0000_0100_0000_01b3;

/// An incremental fingerprint over several fields; each field is delimited, so ("ab", "c")
/// and ("a", "bc") differ.
#[derive(Debug, Clone, Copy)]
pub struct Fingerprint(u64);

impl Default for Fingerprint {
    fn default() -> Self {
        Fingerprint(OFFSET)
    }
}

impl Fingerprint {
    pub fn field(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(PRIME);
        }
        self.0 ^= 0xff;
        self.0 = self.0.wrapping_mul(PRIME);
    }

    pub fn finish(self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values_and_field_boundaries() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        let mut a = Fingerprint::default();
        a.field(b"ab");
        a.field(b"c");
        let mut b = Fingerprint::default();
        b.field(b"a");
        b.field(b"bc");
        assert_ne!(a.finish(), b.finish());
    }
}
