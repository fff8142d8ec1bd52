//! The strict HTTP/1 request parser: any bytes give a verdict (or "more"), never a panic; an
//! accepted head, rewritten to `Connection: close`, parses again to the same host and body
//! (the server sees what was checked); a verdict does not change when more bytes follow.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nsbox::net::sniff::{http_request, one_request_only, opening, HttpSniff};

fuzz_target!(|data: &[u8]| {
    let whole = http_request(data);
    if let HttpSniff::Request(request) = &whole {
        assert!(request.head_len <= data.len());
        let rewritten = one_request_only(data, request);
        match http_request(&rewritten) {
            HttpSniff::Request(again) => {
                assert_eq!(again.name, request.name);
                assert_eq!(again.body, request.body);
                assert_eq!(
                    &rewritten[again.head_len..],
                    &data[request.head_len..],
                    "the bytes after the head are kept"
                );
            }
            other => panic!("the rewritten head does not parse: {other:?}"),
        }
    }
    for cut in [data.len() / 2, data.len().saturating_sub(1)] {
        if let HttpSniff::Request(early) = http_request(&data[..cut]) {
            // A complete head stays the same head.
            assert_eq!(HttpSniff::Request(early), whole, "cut {cut}");
        }
    }
    let _ = opening(data);
});
