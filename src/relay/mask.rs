//! Secret masking for a byte stream that arrives in arbitrary pieces.
//!
//! A secret may be split across two reads ("hun" + "ter2"), so the masker holds back the
//! shortest tail that could still become a secret, and only that: output that cannot be the
//! start of a secret passes straight through, so interactive prompts are not delayed.

use aho_corasick::{AhoCorasick, MatchKind};

/// What replaces every occurrence of a secret.
pub const MASK: &[u8] = b"***";

/// Masks a set of secret values in one stream.
#[derive(Debug, Clone)]
pub struct Masker {
    searcher: Option<AhoCorasick>,
    secrets: Vec<Vec<u8>>,
    longest: usize,
    pending: Vec<u8>,
}

impl Masker {
    /// A masker for network events: names in them are lowercased, so the secrets' lowercase
    /// forms are masked too.
    pub fn for_network_events(secrets: &[String]) -> Masker {
        Masker::new(
            &secrets
                .iter()
                .flat_map(|s| [s.clone(), s.to_ascii_lowercase()])
                .collect::<Vec<_>>(),
        )
    }

    /// A masker for `secrets` (empty values are ignored).
    pub fn new<S: AsRef<[u8]>>(secrets: &[S]) -> Masker {
        let mut secrets: Vec<Vec<u8>> = secrets
            .iter()
            .map(|s| s.as_ref().to_vec())
            .filter(|s| !s.is_empty())
            .collect();
        secrets.sort();
        secrets.dedup();
        let longest = secrets.iter().map(Vec::len).max().unwrap_or(0);
        let searcher = if secrets.is_empty() {
            None
        } else {
            AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .build(&secrets)
                .ok()
        };
        Masker {
            searcher,
            secrets,
            longest,
            pending: Vec::new(),
        }
    }

    /// True when there is nothing to mask (output passes through untouched).
    pub fn is_noop(&self) -> bool {
        self.searcher.is_none()
    }

    /// Feeds `input`; appends what can safely be released to `out`.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let Some(searcher) = &self.searcher else {
            out.extend_from_slice(input);
            return;
        };
        self.pending.extend_from_slice(input);
        let len = self.pending.len();
        // The first position from which the rest of the buffer could still grow into a secret.
        let window_start = len.saturating_sub(self.longest.saturating_sub(1));
        let mut release = len;
        for start in window_start..len {
            let tail = &self.pending[start..];
            if self
                .secrets
                .iter()
                .any(|s| s.len() > tail.len() && s.starts_with(tail))
            {
                release = start;
                break;
            }
        }
        // Matches that start before `release` are final: a longer secret starting at the same
        // place would make that place part of a held tail (see the module docs).
        let mut emitted = 0;
        for m in searcher.find_iter(&self.pending) {
            if m.start() >= release {
                break;
            }
            out.extend_from_slice(&self.pending[emitted..m.start()]);
            out.extend_from_slice(MASK);
            emitted = m.end();
        }
        let release = release.max(emitted);
        out.extend_from_slice(&self.pending[emitted..release]);
        self.pending.drain(..release);
    }

    /// Ends the stream: releases the held tail, masked.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if let Some(searcher) = &self.searcher {
            let mut emitted = 0;
            for m in searcher.find_iter(&self.pending) {
                out.extend_from_slice(&self.pending[emitted..m.start()]);
                out.extend_from_slice(MASK);
                emitted = m.end();
            }
            out.extend_from_slice(&self.pending[emitted..]);
            self.pending.clear();
        }
    }

    /// Masks a complete string (for nsbox's own messages).
    pub fn mask_str(&self, text: &str) -> String {
        let mut copy = Masker::new(&self.secrets);
        let mut out = Vec::new();
        copy.push(text.as_bytes(), &mut out);
        copy.finish(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(secrets: &[&str], pieces: &[&str]) -> String {
        let mut m = Masker::new(secrets);
        let mut out = Vec::new();
        for p in pieces {
            m.push(p.as_bytes(), &mut out);
        }
        m.finish(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn masks_whole_occurrences() {
        assert_eq!(run(&["hunter2"], &["pw=hunter2 ok"]), "pw=*** ok");
        assert_eq!(run(&["abc"], &["abcabc"]), "******");
    }

    #[test]
    fn masks_secrets_split_across_reads_at_every_position() {
        let text = "token=sk-live-0123456789 end";
        for cut in 0..=text.len() {
            let (a, b) = text.split_at(cut);
            assert_eq!(
                run(&["sk-live-0123456789"], &[a, b]),
                "token=*** end",
                "cut at {cut}"
            );
        }
        // One byte at a time.
        let pieces: Vec<String> = text.chars().map(String::from).collect();
        let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
        assert_eq!(run(&["sk-live-0123456789"], &refs), "token=*** end");
    }

    #[test]
    fn prefers_the_longest_secret() {
        assert_eq!(run(&["abc", "abcdef"], &["xabcdefy"]), "x***y");
        assert_eq!(run(&["abc", "abcdef"], &["xabc", "defy"]), "x***y");
        assert_eq!(run(&["abc", "abcdef"], &["xabc", "dzz"]), "x***dzz");
    }

    #[test]
    fn releases_output_that_cannot_be_a_secret_at_once() {
        let mut m = Masker::new(&["secret"]);
        let mut out = Vec::new();
        m.push(b"$ ", &mut out);
        assert_eq!(out, b"$ ", "a prompt must not wait for more output");
        out.clear();
        m.push(b"the sec", &mut out);
        assert_eq!(out, b"the ", "a possible secret prefix is held");
        out.clear();
        m.push(b"ond", &mut out);
        assert_eq!(out, b"second");
    }

    #[test]
    fn no_secrets_is_a_pass_through() {
        let mut m = Masker::new::<&str>(&[]);
        assert!(m.is_noop());
        let mut out = Vec::new();
        m.push(b"anything", &mut out);
        assert_eq!(out, b"anything");
    }

    #[test]
    fn mask_str_masks_messages() {
        let m = Masker::new(&["p4ss"]);
        assert_eq!(m.mask_str("cannot run p4ss"), "cannot run ***");
    }
}
