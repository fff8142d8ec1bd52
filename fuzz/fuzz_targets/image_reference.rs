//! Image references and digests: local names (`nsbox images`, `--image`), remote references
//! (`nsbox pull`) and digests. Any text gives a value or an error, never a panic; normalising
//! is idempotent, and what a parsed remote reference prints parses back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nsbox::image::digest::Digest;
use nsbox::image::reference::{normalize_name, Reference};
use nsbox::registry::reference::RemoteRef;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = Reference::parse(text);
    if let Ok(name) = normalize_name(text) {
        assert_eq!(normalize_name(&name).as_ref(), Ok(&name), "normalize twice");
    }
    if let Ok(digest) = Digest::parse(text) {
        assert_eq!(Digest::parse(&digest.to_string()).ok(), Some(digest));
    }
    if let Ok(remote) = RemoteRef::parse(text) {
        let _ = remote.api_host();
        let _ = remote.store_name();
        let _ = remote.is_loopback();
        let again = format!(
            "{}/{}{}",
            remote.registry,
            remote.repository,
            match (&remote.tag, &remote.digest) {
                (_, Some(d)) => format!("@{d}"),
                (Some(t), None) => format!(":{t}"),
                (None, None) => String::new(),
            }
        );
        let reparsed = RemoteRef::parse(&again)
            .unwrap_or_else(|e| panic!("{again:?} from {text:?} does not parse: {e}"));
        assert_eq!(reparsed.repository, remote.repository, "{again:?}");
        assert_eq!(reparsed.digest, remote.digest, "{again:?}");
    }
});
