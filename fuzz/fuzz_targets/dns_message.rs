//! The resolver's front: a DNS message from the sandbox (any bytes) is parsed and planned
//! without a panic, and an upstream answer (any bytes that parse) is checked without one.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use nsbox::net::{dnswire, resolver, EgressPolicy};

fn policy() -> &'static EgressPolicy {
    static POLICY: OnceLock<EgressPolicy> = OnceLock::new();
    POLICY.get_or_init(|| {
        let allow = [
            "*.allowed.example",
            "web.example.com",
            r"re:api[0-9]+\.example\.org",
            "10.0.0.0/8",
        ]
        .map(String::from);
        EgressPolicy::parse(&allow, &["secret.allowed.example".to_string()], &[]).unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = resolver::plan_query(policy(), data, true);
    let _ = resolver::plan_query(policy(), data, false);
    if let Ok(message) = dnswire::parse(data) {
        let host = ["198.51.100.2".parse().unwrap()];
        for (name, qtype) in [("web.allowed.example", 1), ("web.allowed.example", 28)] {
            let _ = resolver::check_answer(policy(), &host, name, qtype, &message);
        }
        if let Some(q) = message.questions.first() {
            let _ = resolver::check_answer(policy(), &host, &q.name, q.qtype, &message);
        }
    }
});
