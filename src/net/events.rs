//! What the resolver and the proxy decided, as events for the supervisor: JSON lines in the
//! `--json` stream (the conventions of `relay::events`: a `type` tag, snake_case fields) and
//! human lines on stderr with `--log-network`.

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
    /// Events were dropped because the supervisor could not keep up.
    NetworkEventsDropped { count: u64 },
}

impl NetEvent {
    /// One JSON line (with the newline).
    pub fn to_json_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).unwrap_or_else(|e| {
            format!("{{\"type\":\"error\",\"phase\":\"run\",\"message\":\"cannot encode network event: {e}\",\"code\":125}}").into_bytes()
        });
        line.push(b'\n');
        line
    }

    /// One human line for stderr (with the newline).
    pub fn to_text_line(&self) -> String {
        match self {
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
}
