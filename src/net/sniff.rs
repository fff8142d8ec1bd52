//! The first bytes of a proxied connection, read to learn which site the client asks for: the
//! TLS ClientHello's server name (SNI, RFC 6066) on port 443 and the HTTP/1 request's Host
//! (and an absolute-form target's authority) on port 80. Pure functions over the bytes read so
//! far; they say when more bytes are needed. The bytes are forwarded unchanged afterwards.

use super::policy::normalize_name;

/// At most this many bytes are read before deciding.
pub const MAX_SNIFF: usize = 32 * 1024;

/// What the bytes so far say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sniffed {
    /// Not enough bytes yet.
    NeedMore,
    /// Not the protocol expected on this port (reason).
    Other(String),
    /// The name asked for (normalized); `None` when the protocol allows leaving it out and
    /// the client did.
    Name(Option<String>),
}

/// Looks for the SNI in a TLS ClientHello, which may span several records.
pub fn tls_server_name(buf: &[u8]) -> Sniffed {
    // Reassemble the handshake bytes from consecutive handshake records.
    let mut handshake = Vec::new();
    let mut pos = 0;
    loop {
        let Some(header) = buf.get(pos..pos + 5) else {
            return Sniffed::NeedMore;
        };
        if header[0] != 0x16 {
            return Sniffed::Other(if pos == 0 {
                "not TLS (no handshake record)".into()
            } else {
                "a TLS record other than a handshake before the ClientHello ended".into()
            });
        }
        if header[1] != 3 {
            return Sniffed::Other("not TLS (bad record version)".into());
        }
        let len = u16::from_be_bytes([header[3], header[4]]) as usize;
        let Some(body) = buf.get(pos + 5..pos + 5 + len) else {
            return Sniffed::NeedMore;
        };
        handshake.extend_from_slice(body);
        pos += 5 + len;
        if handshake.len() >= 4 {
            if handshake[0] != 1 {
                return Sniffed::Other(
                    "the first TLS handshake message is not a ClientHello".into(),
                );
            }
            let msg_len =
                u32::from_be_bytes([0, handshake[1], handshake[2], handshake[3]]) as usize;
            if handshake.len() >= 4 + msg_len {
                return client_hello_sni(&handshake[4..4 + msg_len]);
            }
        }
        if pos >= MAX_SNIFF {
            return Sniffed::Other("the ClientHello is too large".into());
        }
    }
}

fn client_hello_sni(hello: &[u8]) -> Sniffed {
    let bad = || Sniffed::Other("malformed ClientHello".into());
    let mut r = Cursor { buf: hello, pos: 0 };
    // legacy_version(2) random(32)
    if r.skip(34).is_none() {
        return bad();
    }
    let Some(session) = r.u8() else { return bad() };
    if r.skip(session as usize).is_none() {
        return bad();
    }
    let Some(suites) = r.u16() else { return bad() };
    if r.skip(suites as usize).is_none() {
        return bad();
    }
    let Some(compression) = r.u8() else {
        return bad();
    };
    if r.skip(compression as usize).is_none() {
        return bad();
    }
    if r.pos == hello.len() {
        return Sniffed::Name(None); // no extensions at all
    }
    let Some(ext_len) = r.u16() else { return bad() };
    let Some(mut exts) = r.take(ext_len as usize).map(|b| Cursor { buf: b, pos: 0 }) else {
        return bad();
    };
    while exts.pos < exts.buf.len() {
        let (Some(kind), Some(len)) = (exts.u16(), exts.u16()) else {
            return bad();
        };
        let Some(data) = exts.take(len as usize) else {
            return bad();
        };
        if kind != 0 {
            continue;
        }
        // server_name: list length, then (type, length, name) entries; type 0 is host_name.
        let mut list = Cursor { buf: data, pos: 0 };
        let Some(list_len) = list.u16() else {
            return bad();
        };
        if list_len as usize != data.len() - 2 {
            return bad();
        }
        while list.pos < list.buf.len() {
            let (Some(name_type), Some(name_len)) = (list.u8(), list.u16()) else {
                return bad();
            };
            let Some(name) = list.take(name_len as usize) else {
                return bad();
            };
            if name_type == 0 {
                let name = std::str::from_utf8(name).unwrap_or_default();
                if name.parse::<std::net::IpAddr>().is_ok() {
                    return Sniffed::Name(None); // an address is not a server name
                }
                return match normalize_name(name) {
                    Some(n) => Sniffed::Name(Some(n)),
                    None => Sniffed::Other("the SNI is not a host name".into()),
                };
            }
        }
        return Sniffed::Name(None);
    }
    Sniffed::Name(None)
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let b = self.buf.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(b)
    }
    fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
}

/// Looks for the host an HTTP/1 request is for: the Host header, and the authority of an
/// absolute-form target (`GET http://host/ HTTP/1.1`), which servers prefer over Host. When
/// both are present they must agree.
pub fn http_host(buf: &[u8]) -> Sniffed {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() >= MAX_SNIFF {
            return Sniffed::Other("the HTTP request head is too large".into());
        }
        // A request line must start with a method: fail early on anything else.
        if !buf.is_empty() && !buf[0].is_ascii_uppercase() {
            return Sniffed::Other("not an HTTP request".into());
        }
        return Sniffed::NeedMore;
    };
    let Ok(head) = std::str::from_utf8(&buf[..end]) else {
        return Sniffed::Other("the HTTP request head is not text".into());
    };
    let mut lines = head.split("\r\n");
    let request = lines.next().unwrap_or_default();
    let mut parts = request.split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Sniffed::Other("not an HTTP request line".into());
    };
    if method.is_empty()
        || !method.bytes().all(|b| b.is_ascii_uppercase())
        || !version.starts_with("HTTP/1.")
    {
        return Sniffed::Other("not an HTTP/1 request".into());
    }
    let mut hosts = Vec::new();
    for line in lines {
        if let Some((key, value)) = line.split_once(':') {
            if key.trim().eq_ignore_ascii_case("host") {
                hosts.push(value.trim());
            }
        }
    }
    if hosts.len() > 1 {
        return Sniffed::Other("more than one Host header".into());
    }
    let lower = target.to_ascii_lowercase();
    let absolute = lower
        .strip_prefix("http://")
        .or_else(|| lower.strip_prefix("https://"))
        .map(|rest| {
            let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
            authority.rsplit('@').next().unwrap_or_default().to_string()
        });
    let header = hosts.first().map(|h| h.to_string());
    let wanted: Vec<String> = absolute.into_iter().chain(header).collect();
    let mut names = Vec::new();
    for authority in &wanted {
        if is_ip_literal(authority) {
            continue; // an address is not a name
        }
        match host_of(authority) {
            Some(name) => names.push(name),
            None => return Sniffed::Other(format!("'{authority}' is not a host name")),
        }
    }
    names.dedup();
    match names.len() {
        0 => Sniffed::Name(None),
        1 => Sniffed::Name(names.pop()),
        _ => Sniffed::Other("the request target and the Host header name different hosts".into()),
    }
}

/// Rewrites the HTTP/1 request at the start of `buf` (whose head [`http_host`] accepted) to ask
/// for the connection to close after its response: `Connection`, `Keep-Alive` and
/// `Proxy-Connection` headers are replaced by `Connection: close`. A server then serves no
/// further request on the connection (RFC 9112, 9.6), so a second request — for another host,
/// on a shared address — cannot follow the one that was checked. Bytes after the head are kept.
pub fn one_request_only(buf: &[u8]) -> Vec<u8> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return buf.to_vec();
    };
    let head = &buf[..end];
    let mut out = Vec::with_capacity(buf.len() + 19);
    let mut keep = true;
    for (i, line) in head.split(|&b| b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let continuation = line.first().is_some_and(|b| *b == b' ' || *b == b'\t');
        if i > 0 && !continuation {
            let name = line.split(|&b| b == b':').next().unwrap_or_default();
            keep = ![&b"connection"[..], b"keep-alive", b"proxy-connection"]
                .iter()
                .any(|h| name.trim_ascii().eq_ignore_ascii_case(h));
        }
        if keep {
            out.extend_from_slice(line);
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    out.extend_from_slice(&buf[end + 4..]);
    out
}

/// "203.0.113.7", "203.0.113.7:80", "[2001:db8::1]:80".
fn is_ip_literal(authority: &str) -> bool {
    authority.parse::<std::net::IpAddr>().is_ok()
        || authority.parse::<std::net::SocketAddr>().is_ok()
        || authority
            .strip_prefix('[')
            .and_then(|a| a.split_once(']'))
            .is_some_and(|(ip, _)| ip.parse::<std::net::Ipv6Addr>().is_ok())
}

/// The host of an authority "host[:port]", normalized.
fn host_of(authority: &str) -> Option<String> {
    let host = match authority.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    };
    normalize_name(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ClientHello with the given SNI, split into records of at most `record` bytes.
    fn client_hello(sni: Option<&str>, record: usize) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7u8; 32]);
        body.push(0); // session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one cipher suite
        body.extend_from_slice(&[1, 0]); // null compression
        let mut exts = Vec::new();
        exts.extend_from_slice(&[0x00, 0x2b, 0, 3, 2, 3, 4]); // supported_versions
        if let Some(name) = sni {
            let n = name.as_bytes();
            let mut list = vec![0u8];
            list.extend_from_slice(&(n.len() as u16).to_be_bytes());
            list.extend_from_slice(n);
            let mut ext = (list.len() as u16).to_be_bytes().to_vec();
            ext.extend_from_slice(&list);
            exts.extend_from_slice(&[0, 0]);
            exts.extend_from_slice(&(ext.len() as u16).to_be_bytes());
            exts.extend_from_slice(&ext);
        }
        exts.extend_from_slice(&[0xff, 0x01, 0, 1, 0]); // renegotiation_info
        body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        body.extend_from_slice(&exts);
        let mut hs = vec![1];
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        let mut out = Vec::new();
        for chunk in hs.chunks(record) {
            out.extend_from_slice(&[0x16, 3, 1]);
            out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }

    #[test]
    fn sni_is_found_also_across_records_and_partial_reads() {
        let hello = client_hello(Some("Web.Allowed.Example"), 4096);
        assert_eq!(
            tls_server_name(&hello),
            Sniffed::Name(Some("web.allowed.example".into()))
        );
        let split = client_hello(Some("web.allowed.example"), 20);
        assert_eq!(
            tls_server_name(&split),
            Sniffed::Name(Some("web.allowed.example".into()))
        );
        for cut in [0, 3, 5, 30, split.len() - 1] {
            assert_eq!(
                tls_server_name(&split[..cut]),
                Sniffed::NeedMore,
                "cut {cut}"
            );
        }
        assert_eq!(
            tls_server_name(&client_hello(None, 4096)),
            Sniffed::Name(None)
        );
    }

    #[test]
    fn non_tls_and_bad_hellos_are_other() {
        assert!(matches!(
            tls_server_name(b"GET / HTTP/1.1\r\n"),
            Sniffed::Other(_)
        ));
        let mut hello = client_hello(Some("a.example"), 4096);
        hello[5] = 2; // ServerHello
        assert!(matches!(tls_server_name(&hello), Sniffed::Other(_)));
        let mut bad_name = client_hello(Some("a.exa mple"), 4096);
        assert!(matches!(tls_server_name(&bad_name), Sniffed::Other(r) if r.contains("SNI")));
        bad_name.truncate(10);
        assert_eq!(tls_server_name(&bad_name), Sniffed::NeedMore);
    }

    #[test]
    fn plain_http_connections_carry_one_request() {
        let req = b"POST /x HTTP/1.1\r\nHost: a.example\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nX-Folded: a\r\n b\r\nContent-Length: 2\r\n\r\nhiGET /";
        let out = one_request_only(req);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /x HTTP/1.1\r\nHost: a.example\r\nX-Folded: a\r\n b\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhiGET /"
        );
        assert_eq!(
            http_host(&one_request_only(req)),
            Sniffed::Name(Some("a.example".into()))
        );
    }

    #[test]
    fn http_host_and_absolute_targets() {
        let req = b"GET /simple/ HTTP/1.1\r\nUser-Agent: x\r\nHOST: Files.Example.com:80\r\n\r\n";
        assert_eq!(
            http_host(req),
            Sniffed::Name(Some("files.example.com".into()))
        );
        assert_eq!(http_host(&req[..20]), Sniffed::NeedMore);
        assert_eq!(
            http_host(b"GET http://a.example/x HTTP/1.1\r\nHost: a.example\r\n\r\n"),
            Sniffed::Name(Some("a.example".into()))
        );
        assert!(matches!(
            http_host(b"GET http://evil.example/ HTTP/1.1\r\nHost: a.example\r\n\r\n"),
            Sniffed::Other(r) if r.contains("different hosts")
        ));
        assert!(matches!(
            http_host(b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n"),
            Sniffed::Other(_)
        ));
        assert_eq!(http_host(b"GET / HTTP/1.0\r\n\r\n"), Sniffed::Name(None));
        assert!(matches!(http_host(b"\x16\x03\x01"), Sniffed::Other(_)));
        assert_eq!(
            http_host(b"GET / HTTP/1.1\r\nHost: 203.0.113.7:80\r\n\r\n"),
            Sniffed::Name(None)
        );
    }
}
