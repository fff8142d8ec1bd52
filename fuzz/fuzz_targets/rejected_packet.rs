//! Reports of rejected packets (nfnetlink_log messages around IP packets) never panic, and
//! their events are single lines.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nsbox::net::nflog;

fuzz_target!(|data: &[u8]| {
    for event in nflog::events(data)
        .into_iter()
        .chain(nflog::parse_packet(data))
    {
        let line = event.to_text_line();
        assert_eq!(line.matches('\n').count(), 1);
    }
});
