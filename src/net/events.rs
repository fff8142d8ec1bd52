//! What the resolver and the proxy decided, as events for the supervisor: JSON lines in the
//! `--json` stream and the session's network log (the conventions of `relay::events`: a `type`
//! tag, snake_case fields) and human lines on stderr with `--log-network`.
//!
//! Names and reasons carry bytes the workload chose (a Host header, a DNS label). Every string
//! of an event is escaped ([`escape`]) before it is written anywhere, so a line is always one
//! line of printable ASCII: no newline forges another entry, no escape sequence reaches a
//! terminal, in the text lines and the JSON alike.

use std::net::IpAddr;

use serde::Serialize;

/// The outcome of one decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// The policy allowed it.
    Allowed,
    /// The policy refused it.
    Refused,
    /// The policy allowed it but it did not work (upstream unreachable, timeout).
    Failed,
}

impl Decision {
    fn as_str(self) -> &'static str {
        match self {
            Decision::Allowed => "allowed",
            Decision::Refused => "refused",
            Decision::Failed => "failed",
        }
    }
}

/// One network event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum NetEvent {
    /// A DNS query from the sandbox and what it got.
    Dns {
        decision: Decision,
        /// The name asked for (lowercase).
        name: String,
        /// The query type ("A", "AAAA", "TXT", ...).
        qtype: String,
        /// The response code the sandbox got ("NOERROR", "REFUSED", "NXDOMAIN", ...).
        rcode: &'static str,
        /// Addresses in the answer (now reachable from the sandbox).
        addresses: Vec<IpAddr>,
        /// TTL the sandbox was given, in seconds.
        #[serde(skip_serializing_if = "Option::is_none")]
        ttl: Option<u32>,
        /// The allow or deny rule that decided, as written.
        #[serde(skip_serializing_if = "Option::is_none")]
        rule: Option<String>,
        reason: String,
    },
    /// A TCP connection from the sandbox, as the proxy saw it.
    Connection {
        decision: Decision,
        /// The destination the sandbox connected to.
        address: IpAddr,
        port: u16,
        /// The name it was for: TLS SNI or HTTP Host when checked, else an allowed name that
        /// resolved to the address.
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        rule: Option<String>,
        reason: String,
    },
    /// A packet the sandbox's rules rejected that is not a TCP connection (UDP, ICMP, ...).
    Packet {
        decision: Decision,
        /// "udp", "icmp", ...
        protocol: String,
        address: IpAddr,
        #[serde(skip_serializing_if = "Option::is_none")]
        port: Option<u16>,
        reason: String,
    },
    /// The proxy put a credential's real value into a request to a host bound to it
    /// ([`super::credential`]); never the value itself.
    CredentialInjected {
        /// The credential's name (its variable).
        credential: String,
        host: String,
        /// The header it went into.
        header: String,
    },
    /// A credential's placeholder was on its way somewhere the credential is not for (another
    /// host, the URL, the body): it went on unchanged, useless, and this reports the attempt.
    CredentialRefused {
        credential: String,
        host: String,
        /// Where it was: "header NAME", "url", "body", "dns".
        place: String,
    },
    /// Events were dropped because the supervisor could not keep up.
    NetworkEventsDropped { count: u64 },
}

/// `text` with everything but printable ASCII escaped: `\\` for a backslash, `\n`, `\r`, `\t`,
/// `\xNN` for other bytes below 0x80 and `\u{N}` above (C1 controls, bidirectional marks and
/// the like included).
pub fn escape(text: &str) -> std::borrow::Cow<'_, str> {
    if text
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'\\')
    {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            ' '..='~' => out.push(c),
            c if (c as u32) < 0x80 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
        }
    }
    std::borrow::Cow::Owned(out)
}

fn escape_owned(text: &mut String) {
    if let std::borrow::Cow::Owned(escaped) = escape(text) {
        *text = escaped;
    }
}

impl NetEvent {
    /// The event with every string escaped ([`escape`]).
    pub fn escaped(&self) -> NetEvent {
        let mut e = self.clone();
        match &mut e {
            NetEvent::Dns {
                name,
                qtype,
                rule,
                reason,
                ..
            } => {
                for s in [name, qtype, reason].into_iter().chain(rule.as_mut()) {
                    escape_owned(s);
                }
            }
            NetEvent::Connection {
                name, rule, reason, ..
            } => {
                for s in [reason]
                    .into_iter()
                    .chain(name.as_mut())
                    .chain(rule.as_mut())
                {
                    escape_owned(s);
                }
            }
            NetEvent::Packet {
                protocol, reason, ..
            } => {
                for s in [protocol, reason] {
                    escape_owned(s);
                }
            }
            NetEvent::CredentialInjected {
                credential,
                host,
                header,
            } => {
                for s in [credential, host, header] {
                    escape_owned(s);
                }
            }
            NetEvent::CredentialRefused {
                credential,
                host,
                place,
            } => {
                for s in [credential, host, place] {
                    escape_owned(s);
                }
            }
            NetEvent::NetworkEventsDropped { .. } => {}
        }
        e
    }

    /// One JSON line (with the newline), strings escaped.
    pub fn to_json_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(&self.escaped()).unwrap_or_else(|e| {
            format!("{{\"type\":\"error\",\"phase\":\"run\",\"message\":\"cannot encode network event: {e}\",\"code\":125}}").into_bytes()
        });
        line.push(b'\n');
        line
    }

    /// One human line for stderr (with the newline), strings escaped.
    pub fn to_text_line(&self) -> String {
        match &self.escaped() {
            NetEvent::Dns {
                decision,
                name,
                qtype,
                rcode,
                addresses,
                reason,
                ..
            } => {
                let answer = if addresses.is_empty() {
                    (*rcode).to_string()
                } else {
                    addresses
                        .iter()
                        .map(|a| a.to_string())
                        .collect::<Vec<_>>()
                        .join(" ")
                };
                format!(
                    "nsbox: dns {} {qtype} {name} -> {answer} ({reason})\n",
                    decision.as_str()
                )
            }
            NetEvent::Connection {
                decision,
                address,
                port,
                name,
                reason,
                ..
            } => {
                let dst = match address {
                    IpAddr::V4(a) => format!("{a}:{port}"),
                    IpAddr::V6(a) => format!("[{a}]:{port}"),
                };
                let name = name.as_deref().map(|n| format!(" {n}")).unwrap_or_default();
                format!(
                    "nsbox: connection {} {dst}{name} ({reason})\n",
                    decision.as_str()
                )
            }
            NetEvent::Packet {
                decision,
                protocol,
                address,
                port,
                reason,
            } => {
                let dst = match (address, port) {
                    (IpAddr::V4(a), Some(port)) => format!("{a}:{port}"),
                    (IpAddr::V6(a), Some(port)) => format!("[{a}]:{port}"),
                    (a, None) => a.to_string(),
                };
                format!("nsbox: {protocol} {} {dst} ({reason})\n", decision.as_str())
            }
            NetEvent::CredentialInjected {
                credential,
                host,
                header,
            } => format!("nsbox: credential {credential} injected for {host} ({header})\n"),
            NetEvent::CredentialRefused {
                credential,
                host,
                place,
            } => format!(
                "nsbox: credential {credential} refused: its placeholder went to {host} ({place}), which it is not for; sent unchanged\n"
            ),
            NetEvent::NetworkEventsDropped { count } => {
                format!("nsbox: {count} network events dropped (too many at once)\n")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_have_a_type_tag_and_snake_case_fields() {
        let e = NetEvent::Dns {
            decision: Decision::Refused,
            name: "secret.evil.example".into(),
            qtype: "TXT".into(),
            rcode: "REFUSED",
            addresses: vec![],
            ttl: None,
            rule: None,
            reason: "not on the allowlist".into(),
        };
        let v: serde_json::Value = serde_json::from_slice(&e.to_json_line()).unwrap();
        assert_eq!(v["type"], "dns");
        assert_eq!(v["decision"], "refused");
        assert_eq!(v["rcode"], "REFUSED");
        assert!(v.get("ttl").is_none());
        assert!(e
            .to_text_line()
            .contains("dns refused TXT secret.evil.example"));
        let c = NetEvent::Connection {
            decision: Decision::Allowed,
            address: "2001:db8::7".parse().unwrap(),
            port: 443,
            name: Some("api.example.com".into()),
            rule: Some("*.example.com".into()),
            reason: "allowed".into(),
        };
        let v: serde_json::Value = serde_json::from_slice(&c.to_json_line()).unwrap();
        assert_eq!(v["type"], "connection");
        assert_eq!(v["address"], "2001:db8::7");
        assert_eq!(v["port"], 443);
        assert!(c
            .to_text_line()
            .contains("[2001:db8::7]:443 api.example.com"));
    }

    /// A name or reason the workload chose cannot forge a line or reach a terminal.
    #[test]
    fn log_injection_is_escaped() {
        let hostile = "evil.example\r\nnsbox: connection allowed 203.0.113.9:443 (forged)\x1b[2J\u{9b}31m\u{202e}\\x1b";
        let c = NetEvent::Connection {
            decision: Decision::Refused,
            address: "203.0.113.30".parse().unwrap(),
            port: 80,
            name: Some(hostile.into()),
            rule: None,
            reason: format!("HTTP Host: '{hostile}' is not a host name"),
        };
        let text = c.to_text_line();
        assert_eq!(text.matches('\n').count(), 1, "{text:?}");
        assert!(text.ends_with('\n'));
        assert!(
            text.bytes()
                .all(|b| b == b'\n' || (0x20..0x7f).contains(&b)),
            "{text:?}"
        );
        assert!(
            text.contains(r"evil.example\r\nnsbox: connection allowed"),
            "{text}"
        );
        assert!(text.contains(r"\x1b[2J\u{9b}31m\u{202e}\\x1b"), "{text}");
        let json = c.to_json_line();
        assert_eq!(json.iter().filter(|b| **b == b'\n').count(), 1);
        assert!(json.iter().all(|b| *b == b'\n' || (0x20..0x7f).contains(b)));
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(
            v["name"],
            r"evil.example\r\nnsbox: connection allowed 203.0.113.9:443 (forged)\x1b[2J\u{9b}31m\u{202e}\\x1b"
        );
        assert_eq!(escape("plain.example"), "plain.example");
    }
}
