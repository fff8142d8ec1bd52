//! nsbox's DNS resolver for a filtered sandbox: a UDP and a TCP socket on 127.0.0.53:53 inside
//! the sandbox's namespace (its resolv.conf points there), served from the supervisor.
//!
//! For each query: only A, AAAA and CNAME questions for names the policy allows are forwarded;
//! everything else is answered REFUSED at once with an extended DNS error (RFC 8914, "Blocked")
//! saying why. REFUSED rather than NXDOMAIN because the name may well exist: a refusal is the
//! truth, a DNS-aware tool (dig, an agent reading it) can tell policy from a typo, and the C
//! library turns it into a temporary failure ("could not resolve host") without caching it.
//!
//! Forwarding builds a fresh query (only the lowercased name and the type leave the sandbox:
//! no client-chosen id, flags, EDNS options or extra records reach the upstream) and sends it
//! from the host's namespace to the upstream resolvers. The answer is checked: every name of a
//! CNAME chain must be allowed, and every address must be outside the blocked ranges (unless a
//! rule names the range) and outside the host's own addresses. Only the chain's records go back
//! (no authority or additional records), with TTLs capped; the addresses are added to the
//! sandbox's nftables sets *before* the answer is sent.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;

use super::dnswire::{
    self, build_response, parse, parse_header, Message, Question, RData, Record, Response,
    CLASS_IN, EDE_BLOCKED, EDNS_UDP_SIZE, RCODE_FORMERR, RCODE_NOERROR, RCODE_NOTIMP,
    RCODE_REFUSED, RCODE_SERVFAIL, TYPE_A, TYPE_AAAA, TYPE_CNAME,
};
use super::egress::{AllowError, Shared};
use super::events::{Decision, NetEvent};
use super::policy::{normalize_name, AnswerVerdict, EgressPolicy, NameVerdict};

/// Longest TTL handed to the sandbox (its caches must not outlive the kernel's set entries).
pub const MAX_TTL: u32 = 3600;
/// Shortest time an address stays reachable after an answer, whatever its TTL.
pub const MIN_REACHABLE: Duration = Duration::from_secs(300);
/// How much longer an address stays reachable than the TTL the sandbox got.
pub const REACHABLE_MARGIN: Duration = Duration::from_secs(60);
/// Longest CNAME chain followed.
const MAX_CHAIN: usize = 8;
/// Queries forwarded at once (more get SERVFAIL at once).
pub(crate) const MAX_IN_FLIGHT: usize = 256;
/// TCP connections from the sandbox at once.
const MAX_TCP_CLIENTS: usize = 64;

/// How long an address from an answer with this (capped) TTL stays reachable.
pub fn reachable_for(ttl: u32) -> Duration {
    Duration::from_secs(u64::from(ttl)).max(MIN_REACHABLE) + REACHABLE_MARGIN
}

/// A query that passed the policy, waiting for the upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    client: Client,
    /// Lowercased name sent upstream.
    pub name: String,
    pub qtype: u16,
    /// The allow rule that matched the name.
    pub rule: String,
}

/// What the client needs in its response.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Client {
    id: u16,
    recursion_desired: bool,
    question: Option<Question>,
    edns: bool,
    max_len: usize,
}

impl Client {
    fn respond(&self, rcode: u8, answers: &[Record], ede: Option<&str>) -> Vec<u8> {
        build_response(&Response {
            id: self.id,
            recursion_desired: self.recursion_desired,
            rcode,
            question: self.question.as_ref(),
            answers,
            edns: self.edns,
            ede: ede.map(|text| (EDE_BLOCKED, text)),
            max_len: self.max_len,
        })
    }
}

/// What to do with a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryPlan {
    /// Not a query: no answer.
    Drop,
    /// Answer at once (a refusal or an error).
    Respond(Vec<u8>, Option<NetEvent>),
    Forward(Forward),
}

/// Decides on a query from the sandbox (`udp`: it came over UDP, so the answer's size is
/// bounded by what the client advertised).
pub fn plan_query(policy: &EgressPolicy, bytes: &[u8], udp: bool) -> QueryPlan {
    let msg = match parse(bytes) {
        Ok(m) => m,
        Err(_) => {
            return match parse_header(bytes) {
                Some(h) if !h.is_response() => {
                    let client = Client {
                        id: h.id,
                        recursion_desired: h.recursion_desired(),
                        question: None,
                        edns: false,
                        max_len: 512,
                    };
                    QueryPlan::Respond(client.respond(RCODE_FORMERR, &[], None), None)
                }
                _ => QueryPlan::Drop,
            }
        }
    };
    if msg.header.is_response() {
        return QueryPlan::Drop;
    }
    let max_len = if udp {
        msg.edns_udp_size.map_or(512, |s| {
            usize::from(s).clamp(512, usize::from(EDNS_UDP_SIZE))
        })
    } else {
        usize::from(u16::MAX)
    };
    let question = msg.questions.first().cloned();
    let normalized = question.as_ref().and_then(|q| normalize_name(&q.name));
    let mut client = Client {
        id: msg.header.id,
        recursion_desired: msg.header.recursion_desired(),
        // A question is echoed only when it is a plain host name (it is re-encoded).
        question: question.clone().filter(|_| normalized.is_some()),
        edns: msg.edns_udp_size.is_some(),
        max_len,
    };
    if msg.header.opcode() != 0 {
        return QueryPlan::Respond(client.respond(RCODE_NOTIMP, &[], None), None);
    }
    let (Some(q), 1) = (question, msg.header.qdcount) else {
        client.question = None;
        return QueryPlan::Respond(client.respond(RCODE_FORMERR, &[], None), None);
    };
    let shown = normalized
        .clone()
        .unwrap_or_else(|| q.name.to_ascii_lowercase());
    let refuse = |client: &Client, reason: String, rule: Option<String>| {
        let text = format!("nsbox: {reason}");
        QueryPlan::Respond(
            client.respond(RCODE_REFUSED, &[], Some(&text)),
            Some(NetEvent::Dns {
                decision: Decision::Refused,
                name: shown.clone(),
                qtype: dnswire::type_name(q.qtype),
                rcode: "REFUSED",
                addresses: vec![],
                ttl: None,
                rule,
                reason,
            }),
        )
    };
    let Some(name) = normalized else {
        return refuse(&client, "the name is not a host name".into(), None);
    };
    if q.qclass != CLASS_IN {
        return refuse(&client, format!("query class {} is not IN", q.qclass), None);
    }
    let rule = match policy.check_name(&name) {
        NameVerdict::Allowed(rule) => rule.text.clone(),
        NameVerdict::Denied(rule) => {
            return refuse(
                &client,
                format!("{name} is denied by '{}'", rule.text),
                Some(rule.text.clone()),
            )
        }
        NameVerdict::NotListed => {
            return refuse(&client, format!("{name} is not on the allowlist"), None)
        }
    };
    if !matches!(q.qtype, TYPE_A | TYPE_AAAA | TYPE_CNAME) {
        return refuse(
            &client,
            format!(
                "query type {} is not allowed (only A, AAAA, CNAME)",
                dnswire::type_name(q.qtype)
            ),
            Some(rule),
        );
    }
    QueryPlan::Forward(Forward {
        client,
        name,
        qtype: q.qtype,
        rule,
    })
}

/// What the upstream's answer amounts to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnswerCheck {
    /// Hand it on: the records of the chain (TTLs capped), the addresses to allow, the
    /// smallest TTL, and every name of the chain.
    Allowed {
        records: Vec<Record>,
        addresses: Vec<IpAddr>,
        ttl: u32,
        names: Vec<String>,
    },
    /// An error code from upstream (NXDOMAIN, SERVFAIL, ...), passed on without records.
    Rcode(u8),
    Refused {
        reason: String,
        rule: Option<String>,
    },
}

/// Checks an upstream answer to `name`/`qtype` against the policy.
pub fn check_answer(
    policy: &EgressPolicy,
    host_addrs: &[IpAddr],
    name: &str,
    qtype: u16,
    reply: &Message,
) -> AnswerCheck {
    if reply.header.rcode() != RCODE_NOERROR {
        return AnswerCheck::Rcode(reply.header.rcode());
    }
    let mut records = Vec::new();
    let mut names = vec![name.to_string()];
    let mut current = name.to_string();
    let mut ttl = MAX_TTL;
    let is_at = |r: &Record, owner: &str| r.class == CLASS_IN && r.name.eq_ignore_ascii_case(owner);
    for hop in 0..=MAX_CHAIN {
        let Some((target, rec_ttl)) = reply.answers.iter().find_map(|r| match &r.data {
            RData::Cname(t) if is_at(r, &current) => Some((t.clone(), r.ttl)),
            _ => None,
        }) else {
            break;
        };
        if hop == MAX_CHAIN {
            return AnswerCheck::Refused {
                reason: format!("the CNAME chain of {name} is longer than {MAX_CHAIN}"),
                rule: None,
            };
        }
        let Some(target) = normalize_name(&target) else {
            return AnswerCheck::Refused {
                reason: format!("{current} is an alias of something that is not a host name"),
                rule: None,
            };
        };
        match policy.check_name(&target) {
            NameVerdict::Allowed(_) => {}
            NameVerdict::Denied(rule) => {
                return AnswerCheck::Refused {
                    reason: format!(
                        "{current} is an alias of {target}, denied by '{}'",
                        rule.text
                    ),
                    rule: Some(rule.text.clone()),
                }
            }
            NameVerdict::NotListed => {
                return AnswerCheck::Refused {
                    reason: format!(
                        "{current} is an alias of {target}, which is not on the allowlist (allow it too if the alias is expected)"
                    ),
                    rule: None,
                }
            }
        }
        if names.contains(&target) {
            return AnswerCheck::Refused {
                reason: format!("the CNAME chain of {name} loops"),
                rule: None,
            };
        }
        ttl = ttl.min(rec_ttl);
        records.push(Record {
            name: current.clone(),
            rtype: TYPE_CNAME,
            class: CLASS_IN,
            ttl: rec_ttl.min(MAX_TTL),
            data: RData::Cname(target.clone()),
        });
        names.push(target.clone());
        current = target;
    }
    let mut addresses = Vec::new();
    for r in reply.answers.iter().filter(|r| is_at(r, &current)) {
        let ip = match (&r.data, qtype) {
            (RData::A(a), TYPE_A) => IpAddr::V4(*a),
            (RData::Aaaa(a), TYPE_AAAA) => IpAddr::V6(*a),
            _ => continue,
        };
        match policy.check_answer(ip, host_addrs) {
            AnswerVerdict::Ok => {}
            AnswerVerdict::Denied(rule) => {
                return AnswerCheck::Refused {
                    reason: format!("the answer {ip} for {name} is denied by '{}'", rule.text),
                    rule: Some(rule.text.clone()),
                }
            }
            AnswerVerdict::Blocked(range) => {
                return AnswerCheck::Refused {
                    reason: format!("the answer {ip} for {name} is in a blocked range: {range}"),
                    rule: None,
                }
            }
        }
        ttl = ttl.min(r.ttl);
        if !addresses.contains(&ip) {
            addresses.push(ip);
            records.push(Record {
                name: current.clone(),
                rtype: r.rtype,
                class: CLASS_IN,
                ttl: r.ttl.min(MAX_TTL),
                data: r.data.clone(),
            });
        }
    }
    AnswerCheck::Allowed {
        records,
        addresses,
        ttl,
        names,
    }
}

/// Answers one query from the sandbox; `None` when nothing is to be sent back.
pub(crate) async fn answer(shared: &Shared, bytes: &[u8], udp: bool) -> Option<Vec<u8>> {
    // A credential's placeholder as a label of a name: an exfiltration attempt to report (the
    // query is decided as any other; the placeholder is useless to whoever sees it).
    if let Some(creds) = shared.policy.credentials.as_deref() {
        for e in super::credential::report_stray(creds, bytes, "the resolver", "dns name") {
            shared.events.send(e);
        }
    }
    let fwd = match plan_query(&shared.policy, bytes, udp) {
        QueryPlan::Drop => return None,
        QueryPlan::Respond(bytes, event) => {
            if let Some(e) = event {
                shared.events.send(e);
            }
            return Some(bytes);
        }
        QueryPlan::Forward(fwd) => fwd,
    };
    let event = |decision, rcode: u8, addresses: Vec<IpAddr>, ttl, reason: String| NetEvent::Dns {
        decision,
        name: fwd.name.clone(),
        qtype: dnswire::type_name(fwd.qtype),
        rcode: dnswire::rcode_name(rcode),
        addresses,
        ttl,
        rule: Some(fwd.rule.clone()),
        reason,
    };
    let Ok(_permit) = shared.dns_in_flight.try_acquire() else {
        shared.events.send(event(
            Decision::Failed,
            RCODE_SERVFAIL,
            vec![],
            None,
            "too many queries in flight".into(),
        ));
        return Some(fwd.client.respond(RCODE_SERVFAIL, &[], None));
    };
    let reply = match exchange(&shared.upstreams, &fwd.name, fwd.qtype).await {
        Ok(reply) => reply,
        Err(reason) => {
            shared.events.send(event(
                Decision::Failed,
                RCODE_SERVFAIL,
                vec![],
                None,
                reason,
            ));
            return Some(fwd.client.respond(RCODE_SERVFAIL, &[], None));
        }
    };
    match check_answer(
        &shared.policy,
        &shared.host_addrs,
        &fwd.name,
        fwd.qtype,
        &reply,
    ) {
        AnswerCheck::Rcode(rcode) => {
            shared.events.send(event(
                Decision::Allowed,
                rcode,
                vec![],
                None,
                format!(
                    "allowed by '{}'; upstream answered {}",
                    fwd.rule,
                    dnswire::rcode_name(rcode)
                ),
            ));
            Some(fwd.client.respond(rcode, &[], None))
        }
        AnswerCheck::Refused { reason, rule } => {
            shared.events.send(NetEvent::Dns {
                decision: Decision::Refused,
                name: fwd.name.clone(),
                qtype: dnswire::type_name(fwd.qtype),
                rcode: "REFUSED",
                addresses: vec![],
                ttl: None,
                rule: rule.or(Some(fwd.rule.clone())),
                reason: reason.clone(),
            });
            Some(
                fwd.client
                    .respond(RCODE_REFUSED, &[], Some(&format!("nsbox: {reason}"))),
            )
        }
        AnswerCheck::Allowed {
            records,
            addresses,
            ttl,
            names,
        } => {
            if !addresses.is_empty() {
                match shared.allow(&addresses, &names, reachable_for(ttl)) {
                    Ok(()) => {}
                    Err(AllowError::Full(reason)) => {
                        shared.events.send(event(
                            Decision::Refused,
                            RCODE_REFUSED,
                            vec![],
                            None,
                            reason.clone(),
                        ));
                        let text = format!("nsbox: {reason}");
                        return Some(fwd.client.respond(RCODE_REFUSED, &[], Some(&text)));
                    }
                    Err(AllowError::Kernel(e)) => {
                        shared.events.send(event(
                            Decision::Failed,
                            RCODE_SERVFAIL,
                            vec![],
                            None,
                            format!("cannot add the addresses to the sandbox's rules: {e}"),
                        ));
                        return Some(fwd.client.respond(RCODE_SERVFAIL, &[], None));
                    }
                }
            }
            let via = if names.len() > 1 {
                format!(" via {}", names[1..].join(" -> "))
            } else {
                String::new()
            };
            shared.events.send(event(
                Decision::Allowed,
                RCODE_NOERROR,
                addresses,
                Some(ttl),
                format!("allowed by '{}'{via}", fwd.rule),
            ));
            Some(fwd.client.respond(RCODE_NOERROR, &records, None))
        }
    }
}

/// Serves DNS over UDP until the task is dropped.
pub(crate) async fn serve_udp(socket: UdpSocket, shared: Arc<Shared>) {
    let socket = Arc::new(socket);
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
            // Out of descriptors or memory: let the rest run, then try again.
            tokio::time::sleep(super::egress::RETRY_PAUSE).await;
            continue;
        };
        let query = buf[..n].to_vec();
        let (socket, shared) = (socket.clone(), shared.clone());
        tokio::spawn(async move {
            if let Some(reply) = answer(&shared, &query, true).await {
                let _ = socket.send_to(&reply, peer).await;
            }
        });
    }
}

/// Serves DNS over TCP (length-prefixed messages, several per connection).
pub(crate) async fn serve_tcp(listener: TcpListener, shared: Arc<Shared>) {
    let clients = Arc::new(Semaphore::new(MAX_TCP_CLIENTS));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of descriptors or memory: let the rest run, then try again.
            tokio::time::sleep(super::egress::RETRY_PAUSE).await;
            continue;
        };
        let Ok(permit) = clients.clone().try_acquire_owned() else {
            continue; // dropped: the client sees the connection close
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = serve_tcp_client(stream, &shared).await;
        });
    }
}

async fn serve_tcp_client(mut stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let idle = Duration::from_secs(10);
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(idle, stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return Ok(()),
        }
        let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if tokio::time::timeout(idle, stream.read_exact(&mut query))
            .await
            .is_err()
        {
            return Ok(());
        }
        let Some(reply) = answer(shared, &query, false).await else {
            return Ok(());
        };
        let mut out = (reply.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(&reply);
        stream.write_all(&out).await?;
    }
}

/// Asks the upstream resolvers (from the host's namespace); UDP first, TCP when truncated.
pub(crate) async fn exchange(
    upstreams: &[SocketAddr],
    name: &str,
    qtype: u16,
) -> Result<Message, String> {
    let mut last = "no upstream resolver is configured".to_string();
    for wait in [Duration::from_millis(1500), Duration::from_millis(3000)] {
        for upstream in upstreams {
            match tokio::time::timeout(wait, udp_exchange(*upstream, name, qtype)).await {
                Ok(Ok(reply)) if reply.header.truncated() => {
                    match tokio::time::timeout(
                        Duration::from_secs(5),
                        tcp_exchange(*upstream, name, qtype),
                    )
                    .await
                    {
                        Ok(Ok(reply)) => return Ok(reply),
                        Ok(Err(e)) => last = format!("upstream {upstream} over TCP: {e}"),
                        Err(_) => last = format!("upstream {upstream} did not answer over TCP"),
                    }
                }
                Ok(Ok(reply)) => return Ok(reply),
                Ok(Err(e)) => last = format!("upstream {upstream}: {e}"),
                Err(_) => last = format!("upstream {upstream} did not answer"),
            }
        }
    }
    Err(last)
}

fn query_id() -> u16 {
    let mut b = [0u8; 2];
    if getrandom::fill(&mut b).is_err() {
        let t = super::egress::coarse_nanos();
        b = [(t >> 8) as u8, t as u8];
    }
    u16::from_ne_bytes(b)
}

/// True when `reply` answers our query `id` for `name`/`qtype`.
fn matches_query(reply: &Message, id: u16, name: &str, qtype: u16) -> bool {
    reply.header.id == id
        && reply.header.is_response()
        && reply.questions.len() == 1
        && reply.questions[0].qtype == qtype
        && reply.questions[0].name.eq_ignore_ascii_case(name)
}

async fn udp_exchange(upstream: SocketAddr, name: &str, qtype: u16) -> std::io::Result<Message> {
    let local: SocketAddr = if upstream.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(upstream).await?;
    let id = query_id();
    socket.send(&dnswire::build_query(id, name, qtype)).await?;
    let mut buf = vec![0u8; 4096];
    loop {
        let n = socket.recv(&mut buf).await?;
        // Anything that is not the answer to this query (spoofed, stale) is ignored.
        if let Ok(reply) = parse(&buf[..n]) {
            if matches_query(&reply, id, name, qtype) {
                return Ok(reply);
            }
        }
    }
}

async fn tcp_exchange(upstream: SocketAddr, name: &str, qtype: u16) -> std::io::Result<Message> {
    let mut stream = TcpStream::connect(upstream).await?;
    let id = query_id();
    let query = dnswire::build_query(id, name, qtype);
    let mut out = (query.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(&query);
    stream.write_all(&out).await?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await?;
    let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut reply).await?;
    let reply = parse(&reply).map_err(std::io::Error::other)?;
    if !matches_query(&reply, id, name, qtype) {
        return Err(std::io::Error::other("the answer does not match the query"));
    }
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::dnswire::{build_query, RCODE_NXDOMAIN, TYPE_TXT};

    fn policy(allow: &[&str], deny: &[&str]) -> EgressPolicy {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        EgressPolicy::parse(&s(allow), &s(deny), &[]).unwrap()
    }

    fn refused(plan: &QueryPlan) -> (u8, String) {
        match plan {
            QueryPlan::Respond(bytes, Some(NetEvent::Dns { reason, .. })) => {
                (parse(bytes).unwrap().header.rcode(), reason.clone())
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn only_allowed_names_and_address_types_are_forwarded() {
        let p = policy(&["*.allowed.example"], &["secret.allowed.example"]);
        let q = |name: &str, t: u16| plan_query(&p, &build_query(1, name, t), true);
        assert!(
            matches!(q("Web.Allowed.Example", TYPE_A), QueryPlan::Forward(f) if f.name == "web.allowed.example")
        );
        assert!(matches!(
            q("web.allowed.example", TYPE_AAAA),
            QueryPlan::Forward(_)
        ));
        let (rcode, why) = refused(&q("secret.evil.example", TYPE_A));
        assert_eq!(rcode, RCODE_REFUSED);
        assert!(why.contains("not on the allowlist"), "{why}");
        let (_, why) = refused(&q("secret.allowed.example", TYPE_A));
        assert!(why.contains("denied"), "{why}");
        for t in [TYPE_TXT, dnswire::TYPE_ANY, dnswire::TYPE_AXFR, 65] {
            let (rcode, why) = refused(&q("web.allowed.example", t));
            assert_eq!(rcode, RCODE_REFUSED);
            assert!(why.contains("query type"), "{why}");
        }
    }

    #[test]
    fn refusals_carry_an_extended_error_when_the_client_speaks_edns() {
        let p = policy(&[], &[]);
        let QueryPlan::Respond(bytes, _) =
            plan_query(&p, &build_query(77, "x.example", TYPE_A), true)
        else {
            panic!()
        };
        let r = parse(&bytes).unwrap();
        assert_eq!(r.header.id, 77);
        assert_eq!(r.questions[0].name, "x.example");
        assert!(r.edns_udp_size.is_some());
        assert!(bytes
            .windows(20)
            .any(|w| w.starts_with(b"nsbox: x.example")));
    }

    #[test]
    fn garbage_gets_formerr_or_nothing() {
        let p = policy(&["*"], &[]);
        assert_eq!(plan_query(&p, &[1], true), QueryPlan::Drop);
        let QueryPlan::Respond(bytes, None) =
            plan_query(&p, &[0, 9, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0], true)
        else {
            panic!()
        };
        assert_eq!(parse(&bytes).unwrap().header.rcode(), RCODE_FORMERR);
        // A response sent to the resolver is ignored.
        let mut resp = build_query(3, "a.example", TYPE_A);
        resp[2] |= 0x80;
        assert_eq!(plan_query(&p, &resp, true), QueryPlan::Drop);
    }

    fn reply(rcode: u8, answers: Vec<Record>) -> Message {
        Message {
            header: dnswire::Header {
                id: 1,
                flags: 0x8180 | u16::from(rcode),
                qdcount: 1,
                ancount: answers.len() as u16,
                nscount: 0,
                arcount: 0,
            },
            questions: vec![],
            answers,
            edns_udp_size: None,
        }
    }

    fn rec(name: &str, data: RData, ttl: u32) -> Record {
        let rtype = match data {
            RData::A(_) => TYPE_A,
            RData::Aaaa(_) => TYPE_AAAA,
            RData::Cname(_) => TYPE_CNAME,
            RData::Other(_) => TYPE_TXT,
        };
        Record {
            name: name.into(),
            rtype,
            class: CLASS_IN,
            ttl,
            data,
        }
    }

    #[test]
    fn cname_chains_are_checked_name_by_name() {
        let p = policy(&["www.allowed.example", "*.cdn.example"], &[]);
        let a = |s: &str| RData::A(s.parse().unwrap());
        let ok = reply(
            0,
            vec![
                rec(
                    "www.allowed.example",
                    RData::Cname("edge.cdn.example".into()),
                    600,
                ),
                rec("edge.cdn.example", a("203.0.113.7"), 30),
                rec("unrelated.example", a("203.0.113.99"), 30),
            ],
        );
        match check_answer(&p, &[], "www.allowed.example", TYPE_A, &ok) {
            AnswerCheck::Allowed {
                records,
                addresses,
                ttl,
                names,
            } => {
                assert_eq!(addresses, vec!["203.0.113.7".parse::<IpAddr>().unwrap()]);
                assert_eq!(ttl, 30);
                assert_eq!(names, ["www.allowed.example", "edge.cdn.example"]);
                assert_eq!(records.len(), 2, "the unrelated record is dropped");
            }
            other => panic!("{other:?}"),
        }
        let bad = reply(
            0,
            vec![
                rec(
                    "www.allowed.example",
                    RData::Cname("other.example".into()),
                    600,
                ),
                rec("other.example", a("203.0.113.8"), 30),
            ],
        );
        assert!(matches!(
            check_answer(&p, &[], "www.allowed.example", TYPE_A, &bad),
            AnswerCheck::Refused { reason, .. } if reason.contains("other.example")
        ));
        let looped = reply(
            0,
            vec![
                rec("a.cdn.example", RData::Cname("b.cdn.example".into()), 60),
                rec("b.cdn.example", RData::Cname("a.cdn.example".into()), 60),
            ],
        );
        assert!(matches!(
            check_answer(&p, &[], "a.cdn.example", TYPE_A, &looped),
            AnswerCheck::Refused { .. }
        ));
    }

    #[test]
    fn rebinding_answers_are_refused_unless_the_range_is_allowed() {
        let p = policy(&["*.allowed.example"], &[]);
        let host: Vec<IpAddr> = vec!["198.51.100.2".parse().unwrap()];
        for (t, data) in [
            (TYPE_A, RData::A("10.1.2.3".parse().unwrap())),
            (TYPE_A, RData::A("127.0.0.1".parse().unwrap())),
            (TYPE_A, RData::A("169.254.169.254".parse().unwrap())),
            (TYPE_A, RData::A("198.51.100.2".parse().unwrap())),
            (TYPE_AAAA, RData::Aaaa("::ffff:127.0.0.1".parse().unwrap())),
            (TYPE_AAAA, RData::Aaaa("fd00::1".parse().unwrap())),
        ] {
            let r = reply(0, vec![rec("x.allowed.example", data.clone(), 60)]);
            assert!(
                matches!(
                    check_answer(&p, &host, "x.allowed.example", t, &r),
                    AnswerCheck::Refused { .. }
                ),
                "{data:?}"
            );
        }
        let p = policy(&["*.allowed.example", "10.0.0.0/8"], &[]);
        let r = reply(
            0,
            vec![rec(
                "x.allowed.example",
                RData::A("10.1.2.3".parse().unwrap()),
                60,
            )],
        );
        assert!(matches!(
            check_answer(&p, &host, "x.allowed.example", TYPE_A, &r),
            AnswerCheck::Allowed { .. }
        ));
        assert_eq!(
            check_answer(
                &p,
                &host,
                "x.allowed.example",
                TYPE_A,
                &reply(RCODE_NXDOMAIN, vec![])
            ),
            AnswerCheck::Rcode(RCODE_NXDOMAIN)
        );
    }

    #[test]
    fn ttls_are_capped_and_addresses_outlive_them() {
        let p = policy(&["x.example"], &[]);
        let r = reply(
            0,
            vec![rec(
                "x.example",
                RData::A("203.0.113.1".parse().unwrap()),
                86400,
            )],
        );
        let AnswerCheck::Allowed { records, ttl, .. } =
            check_answer(&p, &[], "x.example", TYPE_A, &r)
        else {
            panic!()
        };
        assert_eq!(ttl, MAX_TTL);
        assert_eq!(records[0].ttl, MAX_TTL);
        assert!(reachable_for(0) >= MIN_REACHABLE);
        assert!(reachable_for(MAX_TTL) > Duration::from_secs(u64::from(MAX_TTL)));
    }
}
