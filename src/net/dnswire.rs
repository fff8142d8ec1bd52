//! The DNS wire format, as much of it as nsbox's resolver needs (RFC 1035, RFC 6891 EDNS,
//! RFC 8914 extended errors): headers, questions, A/AAAA/CNAME records, OPT; anything else is
//! kept as opaque bytes. Input comes from the hostile workload and from upstream servers, so
//! parsing is strict and bounded: compression pointers only point backwards, names are at most
//! 255 bytes, every length is checked. Label bytes outside letters, digits, '-' and '_' are
//! escaped (`\046`), so such a name can never equal an allowed name.
//!
//! Why not a DNS library: the crates that cover this pull in URL and IDNA stacks and a newer
//! compiler than nsbox requires; this is a few hundred lines with their own tests.

use std::net::{Ipv4Addr, Ipv6Addr};

pub const TYPE_A: u16 = 1;
pub const TYPE_CNAME: u16 = 5;
pub const TYPE_TXT: u16 = 16;
pub const TYPE_AAAA: u16 = 28;
pub const TYPE_OPT: u16 = 41;
pub const TYPE_AXFR: u16 = 252;
pub const TYPE_ANY: u16 = 255;
pub const CLASS_IN: u16 = 1;

pub const RCODE_NOERROR: u8 = 0;
pub const RCODE_FORMERR: u8 = 1;
pub const RCODE_SERVFAIL: u8 = 2;
pub const RCODE_NXDOMAIN: u8 = 3;
pub const RCODE_NOTIMP: u8 = 4;
pub const RCODE_REFUSED: u8 = 5;

const FLAG_QR: u16 = 0x8000;
const FLAG_TC: u16 = 0x0200;
const FLAG_RD: u16 = 0x0100;
const FLAG_RA: u16 = 0x0080;

/// Extended DNS error codes (RFC 8914) nsbox uses.
pub const EDE_BLOCKED: u16 = 15;
pub const EDE_PROHIBITED: u16 = 18;

/// The UDP payload size nsbox advertises and accepts (the DNS flag day 2020 value).
pub const EDNS_UDP_SIZE: u16 = 1232;

/// Why bytes are not a DNS message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("DNS message truncated")]
    Truncated,
    #[error("bad name in DNS message")]
    BadName,
    #[error("bad record data in DNS message")]
    BadData,
}

/// The fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub id: u16,
    pub flags: u16,
    pub qdcount: u16,
    pub ancount: u16,
    pub nscount: u16,
    pub arcount: u16,
}

impl Header {
    pub fn is_response(&self) -> bool {
        self.flags & FLAG_QR != 0
    }
    pub fn opcode(&self) -> u8 {
        ((self.flags >> 11) & 0xf) as u8
    }
    pub fn rcode(&self) -> u8 {
        (self.flags & 0xf) as u8
    }
    pub fn truncated(&self) -> bool {
        self.flags & FLAG_TC != 0
    }
    pub fn recursion_desired(&self) -> bool {
        self.flags & FLAG_RD != 0
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    /// Labels joined with '.', as received (case kept), no trailing dot; "" is the root.
    pub name: String,
    pub qtype: u16,
    pub qclass: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RData {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Cname(String),
    Other(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub name: String,
    pub rtype: u16,
    pub class: u16,
    pub ttl: u32,
    pub data: RData,
}

/// A parsed message. Authority records are skipped; of the additional section only the OPT
/// record's UDP size is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub header: Header,
    pub questions: Vec<Question>,
    pub answers: Vec<Record>,
    /// The UDP payload size of an OPT record, if the message had one.
    pub edns_udp_size: Option<u16>,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Result<u8, WireError> {
        let b = *self.buf.get(self.pos).ok_or(WireError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes([self.u8()?, self.u8()?]))
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes([
            self.u8()?,
            self.u8()?,
            self.u8()?,
            self.u8()?,
        ]))
    }
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(n).ok_or(WireError::Truncated)?;
        let b = self.buf.get(self.pos..end).ok_or(WireError::Truncated)?;
        self.pos = end;
        Ok(b)
    }

    /// Reads a (possibly compressed) name.
    fn name(&mut self) -> Result<String, WireError> {
        let mut out = String::new();
        let mut wire_len = 0usize;
        let mut pos = self.pos;
        // Where reading continues once the name is done (after the first pointer).
        let mut resume: Option<usize> = None;
        // Pointers must go strictly backwards: no loops, bounded work.
        let mut limit = pos;
        loop {
            let len = *self.buf.get(pos).ok_or(WireError::Truncated)? as usize;
            match len & 0xc0 {
                0x00 => {
                    pos += 1;
                    if len == 0 {
                        break;
                    }
                    let label = self.buf.get(pos..pos + len).ok_or(WireError::Truncated)?;
                    wire_len += len + 1;
                    if wire_len > 255 {
                        return Err(WireError::BadName);
                    }
                    if !out.is_empty() {
                        out.push('.');
                    }
                    push_label(&mut out, label);
                    pos += len;
                }
                0xc0 => {
                    let lo = *self.buf.get(pos + 1).ok_or(WireError::Truncated)? as usize;
                    let target = ((len & 0x3f) << 8) | lo;
                    if target >= limit {
                        return Err(WireError::BadName);
                    }
                    resume.get_or_insert(pos + 2);
                    limit = target;
                    pos = target;
                }
                _ => return Err(WireError::BadName),
            }
        }
        self.pos = resume.unwrap_or(pos);
        Ok(out)
    }
}

/// Appends a label, escaping every byte that is not a letter, digit, '-' or '_'.
fn push_label(out: &mut String, label: &[u8]) {
    for &b in label {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b as char);
        } else {
            out.push_str(&format!("\\{b:03}"));
        }
    }
}

/// Parses a message.
pub fn parse(buf: &[u8]) -> Result<Message, WireError> {
    let mut r = Reader { buf, pos: 0 };
    let header = Header {
        id: r.u16()?,
        flags: r.u16()?,
        qdcount: r.u16()?,
        ancount: r.u16()?,
        nscount: r.u16()?,
        arcount: r.u16()?,
    };
    let mut questions = Vec::new();
    for _ in 0..header.qdcount {
        questions.push(Question {
            name: r.name()?,
            qtype: r.u16()?,
            qclass: r.u16()?,
        });
    }
    let mut answers = Vec::new();
    for _ in 0..header.ancount {
        answers.push(record(&mut r)?);
    }
    for _ in 0..header.nscount {
        record(&mut r)?;
    }
    let mut edns_udp_size = None;
    for _ in 0..header.arcount {
        let rec = record(&mut r)?;
        if rec.rtype == TYPE_OPT && rec.name.is_empty() {
            edns_udp_size = Some(rec.class);
        }
    }
    Ok(Message {
        header,
        questions,
        answers,
        edns_udp_size,
    })
}

/// Parses just the header (to answer FORMERR to a message that is not otherwise readable).
pub fn parse_header(buf: &[u8]) -> Option<Header> {
    let mut r = Reader { buf, pos: 0 };
    Some(Header {
        id: r.u16().ok()?,
        flags: r.u16().ok()?,
        qdcount: r.u16().ok()?,
        ancount: r.u16().ok()?,
        nscount: r.u16().ok()?,
        arcount: r.u16().ok()?,
    })
}

fn record(r: &mut Reader<'_>) -> Result<Record, WireError> {
    let name = r.name()?;
    let rtype = r.u16()?;
    let class = r.u16()?;
    let ttl = r.u32()?;
    let len = r.u16()? as usize;
    let start = r.pos;
    let data = match (rtype, len) {
        (TYPE_A, 4) => {
            let b = r.bytes(4)?;
            RData::A(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
        }
        (TYPE_AAAA, 16) => {
            let mut b = [0u8; 16];
            b.copy_from_slice(r.bytes(16)?);
            RData::Aaaa(Ipv6Addr::from(b))
        }
        (TYPE_A, _) | (TYPE_AAAA, _) => return Err(WireError::BadData),
        (TYPE_CNAME, _) => {
            let target = r.name()?;
            if r.pos != start + len {
                return Err(WireError::BadData);
            }
            RData::Cname(target)
        }
        _ => RData::Other(r.bytes(len)?.to_vec()),
    };
    Ok(Record {
        name,
        rtype,
        class,
        ttl,
        data,
    })
}

/// Writes a name given as dot-separated labels (letters, digits, '-', '_' only: callers pass
/// names that passed `policy::normalize_name`, or names this module produced).
fn write_name(out: &mut Vec<u8>, name: &str) {
    if !name.is_empty() {
        for label in name.split('.') {
            let bytes = label.as_bytes();
            let len = bytes.len().min(63);
            out.push(len as u8);
            out.extend_from_slice(&bytes[..len]);
        }
    }
    out.push(0);
}

fn write_header(out: &mut Vec<u8>, h: &Header) {
    for v in [h.id, h.flags, h.qdcount, h.ancount, h.nscount, h.arcount] {
        out.extend_from_slice(&v.to_be_bytes());
    }
}

/// A query for `name`/`qtype` with recursion desired and an EDNS record.
pub fn build_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    write_header(
        &mut out,
        &Header {
            id,
            flags: FLAG_RD,
            qdcount: 1,
            ancount: 0,
            nscount: 0,
            arcount: 1,
        },
    );
    write_name(&mut out, name);
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    write_opt(&mut out, None);
    out
}

fn write_opt(out: &mut Vec<u8>, ede: Option<(u16, &str)>) {
    out.push(0); // root name
    out.extend_from_slice(&TYPE_OPT.to_be_bytes());
    out.extend_from_slice(&EDNS_UDP_SIZE.to_be_bytes());
    out.extend_from_slice(&0u32.to_be_bytes()); // extended rcode, version 0, no flags
    match ede {
        Some((code, text)) => {
            let text = &text.as_bytes()[..text.len().min(200)];
            let opt_len = 2 + text.len();
            out.extend_from_slice(&((4 + opt_len) as u16).to_be_bytes());
            out.extend_from_slice(&15u16.to_be_bytes()); // option code: extended DNS error
            out.extend_from_slice(&(opt_len as u16).to_be_bytes());
            out.extend_from_slice(&code.to_be_bytes());
            out.extend_from_slice(text);
        }
        None => out.extend_from_slice(&0u16.to_be_bytes()),
    }
}

/// What a response says.
#[derive(Debug, Clone)]
pub struct Response<'a> {
    pub id: u16,
    pub recursion_desired: bool,
    pub rcode: u8,
    pub question: Option<&'a Question>,
    pub answers: &'a [Record],
    /// Include an OPT record (only when the query had one).
    pub edns: bool,
    /// An extended DNS error (code, text) in the OPT record.
    pub ede: Option<(u16, &'a str)>,
    /// Longest message the client accepts; beyond it the answers are dropped and TC set.
    pub max_len: usize,
}

/// Encodes a response.
pub fn build_response(resp: &Response<'_>) -> Vec<u8> {
    let encode = |answers: &[Record], truncated: bool| {
        let mut flags = FLAG_QR | FLAG_RA | u16::from(resp.rcode & 0xf);
        if resp.recursion_desired {
            flags |= FLAG_RD;
        }
        if truncated {
            flags |= FLAG_TC;
        }
        let mut out = Vec::with_capacity(512);
        write_header(
            &mut out,
            &Header {
                id: resp.id,
                flags,
                qdcount: u16::from(resp.question.is_some()),
                ancount: answers.len() as u16,
                nscount: 0,
                arcount: u16::from(resp.edns),
            },
        );
        if let Some(q) = resp.question {
            write_name(&mut out, &q.name);
            out.extend_from_slice(&q.qtype.to_be_bytes());
            out.extend_from_slice(&q.qclass.to_be_bytes());
        }
        for rec in answers {
            write_name(&mut out, &rec.name);
            out.extend_from_slice(&rec.rtype.to_be_bytes());
            out.extend_from_slice(&rec.class.to_be_bytes());
            out.extend_from_slice(&rec.ttl.to_be_bytes());
            let mut data = Vec::new();
            match &rec.data {
                RData::A(a) => data.extend_from_slice(&a.octets()),
                RData::Aaaa(a) => data.extend_from_slice(&a.octets()),
                RData::Cname(target) => write_name(&mut data, target),
                RData::Other(bytes) => data.extend_from_slice(bytes),
            }
            out.extend_from_slice(&(data.len() as u16).to_be_bytes());
            out.extend_from_slice(&data);
        }
        if resp.edns {
            write_opt(&mut out, resp.ede);
        }
        out
    };
    let full = encode(resp.answers, false);
    if full.len() <= resp.max_len {
        full
    } else {
        encode(&[], true)
    }
}

/// The DNS type's mnemonic, for events.
pub fn type_name(t: u16) -> String {
    match t {
        TYPE_A => "A".into(),
        2 => "NS".into(),
        TYPE_CNAME => "CNAME".into(),
        6 => "SOA".into(),
        12 => "PTR".into(),
        15 => "MX".into(),
        TYPE_TXT => "TXT".into(),
        TYPE_AAAA => "AAAA".into(),
        33 => "SRV".into(),
        64 => "SVCB".into(),
        65 => "HTTPS".into(),
        251 => "IXFR".into(),
        TYPE_AXFR => "AXFR".into(),
        TYPE_ANY => "ANY".into(),
        other => format!("TYPE{other}"),
    }
}

/// The response code's mnemonic, for events.
pub fn rcode_name(rcode: u8) -> &'static str {
    match rcode {
        RCODE_NOERROR => "NOERROR",
        RCODE_FORMERR => "FORMERR",
        RCODE_SERVFAIL => "SERVFAIL",
        RCODE_NXDOMAIN => "NXDOMAIN",
        RCODE_NOTIMP => "NOTIMP",
        RCODE_REFUSED => "REFUSED",
        _ => "OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(name: &str, data: RData) -> Record {
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
            ttl: 300,
            data,
        }
    }

    #[test]
    fn queries_and_responses_round_trip() {
        let q = parse(&build_query(0x1234, "api.example.com", TYPE_AAAA)).unwrap();
        assert_eq!(q.header.id, 0x1234);
        assert!(q.header.recursion_desired() && !q.header.is_response());
        assert_eq!(q.questions[0].name, "api.example.com");
        assert_eq!(q.questions[0].qtype, TYPE_AAAA);
        assert_eq!(q.edns_udp_size, Some(EDNS_UDP_SIZE));

        let answers = vec![
            answer("www.example.com", RData::Cname("cdn.example.net".into())),
            answer("cdn.example.net", RData::A("203.0.113.7".parse().unwrap())),
            answer(
                "cdn.example.net",
                RData::Aaaa("2001:db8::7".parse().unwrap()),
            ),
        ];
        let bytes = build_response(&Response {
            id: 7,
            recursion_desired: true,
            rcode: RCODE_NOERROR,
            question: Some(&q.questions[0]),
            answers: &answers,
            edns: true,
            ede: Some((EDE_PROHIBITED, "blocked")),
            max_len: 1232,
        });
        let r = parse(&bytes).unwrap();
        assert!(r.header.is_response() && !r.header.truncated());
        assert_eq!(r.header.rcode(), RCODE_NOERROR);
        assert_eq!(r.answers, answers);
        assert_eq!(r.edns_udp_size, Some(EDNS_UDP_SIZE));
    }

    #[test]
    fn oversized_responses_are_truncated() {
        let q = Question {
            name: "x.example".into(),
            qtype: TYPE_A,
            qclass: CLASS_IN,
        };
        let answers: Vec<Record> = (0..40)
            .map(|i| answer("x.example", RData::A(Ipv4Addr::new(203, 0, 113, i))))
            .collect();
        let bytes = build_response(&Response {
            id: 1,
            recursion_desired: true,
            rcode: RCODE_NOERROR,
            question: Some(&q),
            answers: &answers,
            edns: false,
            ede: None,
            max_len: 512,
        });
        assert!(bytes.len() <= 512);
        let r = parse(&bytes).unwrap();
        assert!(r.header.truncated());
        assert!(r.answers.is_empty());
    }

    #[test]
    fn compression_pointers_are_followed_backwards_only() {
        // Header, then question "a.example" at 12, then an answer whose name points to 12.
        let mut m = vec![0, 1, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
        m.extend_from_slice(&[
            1, b'a', 7, b'e', b'x', b'a', b'm', b'p', b'l', b'e', 0, 0, 1, 0, 1,
        ]);
        m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 203, 0, 113, 1]);
        let r = parse(&m).unwrap();
        assert_eq!(r.answers[0].name, "a.example");
        assert_eq!(r.answers[0].data, RData::A("203.0.113.1".parse().unwrap()));
        // A pointer to itself (a loop) and a forward pointer are refused.
        let mut looped = m.clone();
        looped[28] = 27;
        assert_eq!(parse(&looped), Err(WireError::BadName));
        let mut forward = m.clone();
        forward[28] = 200;
        assert!(parse(&forward).is_err());
    }

    #[test]
    fn odd_label_bytes_are_escaped_so_they_never_match_a_name() {
        let mut m = vec![0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        m.extend_from_slice(&[
            5, b'a', b'.', b'b', 0xff, b'C', 3, b'c', b'o', b'm', 0, 0, 1, 0, 1,
        ]);
        let q = parse(&m).unwrap();
        assert_eq!(q.questions[0].name, "a\\046b\\255C.com");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let base = build_query(9, "api.example.com", TYPE_A);
        for round in 0..20_000 {
            let mut m = base.clone();
            for _ in 0..(round % 5 + 1) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let i = (seed as usize) % m.len();
                m[i] = (seed >> 32) as u8;
            }
            m.truncate((seed >> 40) as usize % (m.len() + 1));
            let _ = parse(&m);
        }
        assert_eq!(parse(&[0, 1]), Err(WireError::Truncated));
        assert!(parse(&[]).is_err());
    }

    #[test]
    fn names_longer_than_255_bytes_are_refused() {
        let mut m = vec![0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        for _ in 0..5 {
            m.push(63);
            m.extend_from_slice(&[b'a'; 63]);
        }
        m.extend_from_slice(&[0, 0, 1, 0, 1]);
        assert_eq!(parse(&m), Err(WireError::BadName));
    }
}
