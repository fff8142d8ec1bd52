//! The TLS ClientHello sniffer: any first bytes of a connection give a verdict (or "more"),
//! never a panic; a verdict does not change when more bytes follow.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nsbox::net::sniff::{opening, tls_server_name, Sniffed};

fuzz_target!(|data: &[u8]| {
    let whole = tls_server_name(data);
    // Bytes read later cannot change a decision made on the first ones.
    for cut in [data.len() / 3, data.len() / 2, data.len().saturating_sub(1)] {
        let early = tls_server_name(&data[..cut]);
        if early != Sniffed::NeedMore {
            assert_eq!(early, whole, "cut {cut}");
        }
    }
    let _ = opening(data);
});
