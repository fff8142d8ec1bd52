//! The first bytes of a proxied connection, read to learn which site the client asks for: the
//! TLS ClientHello's server name (SNI, RFC 6066) or the HTTP/1 request's Host (and an
//! absolute-form target's authority), on whatever port. Pure functions over the bytes read so
//! far; they say when more bytes are needed. A ClientHello is forwarded unchanged; an HTTP
//! request head, parsed strictly, is forwarded with `Connection: close`
//! ([`one_request_only`]).

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

/// How the length of a request's body is known (RFC 9112, 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// Exactly this many bytes (0 when neither Content-Length nor Transfer-Encoding is given).
    Length(u64),
    /// `Transfer-Encoding: chunked`: the length is in the body's own framing.
    Chunked,
}

/// One HTTP/1 request head, parsed strictly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    /// The host asked for (normalized); `None` for an address or an empty Host.
    pub name: Option<String>,
    /// Bytes of the head, its final empty line included.
    pub head_len: usize,
    pub body: Body,
}

/// What the bytes so far say about an HTTP/1 request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpSniff {
    NeedMore,
    /// Not a request nsbox forwards (reason).
    Refused(String),
    Request(HttpRequest),
}

/// Up to 64 bytes of `bytes`, as text for a reason (the event escapes it).
fn excerpt(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(64)];
    let more = if bytes.len() > cut.len() { "..." } else { "" };
    format!("{}{more}", String::from_utf8_lossy(cut))
}

/// RFC 9110 `tchar`: the bytes of a method or a field name.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parses the HTTP/1 request head at the start of `buf` strictly (RFC 9112) and finds the host
/// it is for: the Host header, or the authority of an absolute-form target (which servers
/// prefer), which must then name the same host. Anything a lenient server might read
/// differently from this parser is refused, not guessed at: a line end other than CRLF, a bare
/// CR, an obs-fold continuation line, whitespace before a field's colon, a control byte in a
/// field, a second Host, a missing Host in HTTP/1.1, conflicting or malformed body lengths,
/// userinfo in a target. `CONNECT` is refused: it asks the server to open a tunnel elsewhere,
/// whose far end the proxy could not check.
pub fn http_request(buf: &[u8]) -> HttpSniff {
    let refuse = |why: String| HttpSniff::Refused(why);
    let mut pos = 0;
    let mut request_line: Option<(&[u8], &[u8], &[u8])> = None;
    let mut hosts: Vec<&[u8]> = Vec::new();
    let mut lengths: Vec<&[u8]> = Vec::new();
    let mut encodings: Vec<&[u8]> = Vec::new();
    loop {
        let rest = &buf[pos..];
        let Some(lf) = rest.iter().position(|&b| b == b'\n') else {
            if buf.len() >= MAX_SNIFF {
                return refuse("the HTTP request head is too large".into());
            }
            // A request line starts with a method: fail early on anything else.
            if request_line.is_none() && rest.first().is_some_and(|b| !is_tchar(*b)) {
                return refuse(format!("not an HTTP request: '{}'", excerpt(rest)));
            }
            if let Some(cr) = rest.iter().position(|&b| b == b'\r') {
                if cr + 1 < rest.len() {
                    return refuse(format!(
                        "a bare CR in the request head: '{}'",
                        excerpt(rest)
                    ));
                }
            }
            return HttpSniff::NeedMore;
        };
        if lf == 0 || rest[lf - 1] != b'\r' {
            return refuse(format!(
                "a line of the request head ends in a bare LF: '{}'",
                excerpt(&rest[..lf])
            ));
        }
        let line = &rest[..lf - 1];
        pos += lf + 1;
        if line.contains(&b'\r') {
            return refuse(format!(
                "a bare CR in the request head: '{}'",
                excerpt(line)
            ));
        }
        if request_line.is_none() {
            let mut parts = line.split(|&b| b == b' ');
            let (Some(method), Some(target), Some(version), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return refuse(format!("not an HTTP request line: '{}'", excerpt(line)));
            };
            if method.is_empty() || !method.iter().all(|b| is_tchar(*b)) {
                return refuse(format!("not an HTTP method: '{}'", excerpt(method)));
            }
            if target.is_empty() || !target.iter().all(|b| (0x21..=0x7e).contains(b)) {
                return refuse(format!("not a request target: '{}'", excerpt(target)));
            }
            if version != b"HTTP/1.1" && version != b"HTTP/1.0" {
                return refuse(format!("not HTTP/1.0 or 1.1: '{}'", excerpt(version)));
            }
            request_line = Some((method, target, version));
            continue;
        }
        if line.is_empty() {
            break;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            return refuse(format!(
                "an obs-fold continuation line in the request head: '{}'",
                excerpt(line)
            ));
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return refuse(format!(
                "a header line without a colon: '{}'",
                excerpt(line)
            ));
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.last().is_some_and(|b| *b == b' ' || *b == b'\t') {
            return refuse(format!(
                "whitespace before a header's colon: '{}'",
                excerpt(line)
            ));
        }
        if !name.iter().all(|b| is_tchar(*b)) {
            return refuse(format!("not a header name: '{}'", excerpt(name)));
        }
        // field-value: visible bytes, spaces and tabs, obs-text (RFC 9110, 5.5); no controls.
        if let Some(bad) = value
            .iter()
            .find(|&&b| !(b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b) || b >= 0x80))
        {
            return refuse(format!(
                "byte 0x{bad:02x} in the value of header '{}'",
                excerpt(name)
            ));
        }
        let value = value.trim_ascii();
        if name.eq_ignore_ascii_case(b"host") {
            hosts.push(value);
        } else if name.eq_ignore_ascii_case(b"content-length") {
            lengths.push(value);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            encodings.push(value);
        }
    }
    let Some((method, target, version)) = request_line else {
        return HttpSniff::NeedMore;
    };
    if method == b"CONNECT" {
        return refuse(
            "CONNECT is not forwarded (the tunnel's far end could not be checked)".into(),
        );
    }
    // The request target: origin-form, asterisk-form (OPTIONS only) or absolute-form.
    let absolute = if target[0] == b'/' || (target == b"*" && method == b"OPTIONS") {
        None
    } else {
        match absolute_authority(target) {
            Ok(authority) => Some(authority),
            Err(why) => return refuse(why),
        }
    };
    if target.contains(&b'#') {
        return refuse(format!(
            "a fragment in the request target: '{}'",
            excerpt(target)
        ));
    }
    let host = match hosts.as_slice() {
        [] if version == b"HTTP/1.1" => {
            return refuse("an HTTP/1.1 request without a Host header".into())
        }
        [] => None,
        [one] => Some(*one),
        _ => return refuse("more than one Host header".into()),
    };
    let from_host = match host.filter(|h| !h.is_empty()).map(authority_host) {
        None => None,
        Some(Ok(h)) => Some(h),
        Some(Err(why)) => return refuse(format!("Host: {why}")),
    };
    let from_target = match absolute.map(authority_host) {
        None => None,
        Some(Ok(h)) => Some(h),
        Some(Err(why)) => return refuse(format!("the request target: {why}")),
    };
    let chosen = match (from_target, from_host) {
        (Some(t), Some(h)) if t != h => {
            return refuse("the request target and the Host header name different hosts".into())
        }
        (Some(t), _) => t,
        (None, Some(h)) => h,
        (None, None) => AuthorityHost::Address,
    };
    let body = match (lengths.as_slice(), encodings.as_slice()) {
        ([], []) => Body::Length(0),
        (lengths, []) => {
            let first = lengths[0];
            if lengths.iter().any(|l| *l != first) {
                return refuse("Content-Length headers that disagree".into());
            }
            if first.is_empty() || first.len() > 18 || !first.iter().all(u8::is_ascii_digit) {
                return refuse(format!(
                    "Content-Length '{}' is not a length",
                    excerpt(first)
                ));
            }
            Body::Length(
                std::str::from_utf8(first)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(u64::MAX),
            )
        }
        ([], [coding]) if version == b"HTTP/1.1" && coding.eq_ignore_ascii_case(b"chunked") => {
            Body::Chunked
        }
        ([], _) => {
            return refuse("a Transfer-Encoding other than one 'chunked' in HTTP/1.1".into())
        }
        _ => return refuse("both Content-Length and Transfer-Encoding".into()),
    };
    HttpSniff::Request(HttpRequest {
        name: match chosen {
            AuthorityHost::Name(n) => Some(n),
            AuthorityHost::Address => None,
        },
        head_len: pos,
        body,
    })
}

/// The host part of an authority.
#[derive(Debug, PartialEq, Eq)]
enum AuthorityHost {
    Name(String),
    /// An IP address (not a name): nothing to check it against.
    Address,
}

/// The authority of an absolute-form target: `http://` or `https://`, then up to the path.
fn absolute_authority(target: &[u8]) -> Result<&[u8], String> {
    let lower = target.to_ascii_lowercase();
    let skip = if lower.starts_with(b"http://") {
        7
    } else if lower.starts_with(b"https://") {
        8
    } else {
        return Err(format!("not a request target: '{}'", excerpt(target)));
    };
    let rest = &target[skip..];
    let end = rest
        .iter()
        .position(|b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    Ok(&rest[..end])
}

/// Parses `host[:port]` (RFC 3986 authority without userinfo).
fn authority_host(authority: &[u8]) -> Result<AuthorityHost, String> {
    let bad = || format!("'{}' is not a host name", excerpt(authority));
    if authority.contains(&b'@') {
        return Err(format!(
            "'{}' carries userinfo (user@host)",
            excerpt(authority)
        ));
    }
    let text = std::str::from_utf8(authority).map_err(|_| bad())?;
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (inside, after) = rest.split_once(']').ok_or_else(bad)?;
        inside.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
        (
            None,
            after.strip_prefix(':').or(after.is_empty().then_some("")),
        )
    } else {
        match text.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(text), Some("")),
        }
    };
    let Some(port) = port else { return Err(bad()) };
    if !port.is_empty() && (port.len() > 5 || port.parse::<u16>().is_err()) {
        return Err(format!("'{}' has a bad port", excerpt(authority)));
    }
    let Some(host) = host else {
        return Ok(AuthorityHost::Address);
    };
    if host.parse::<std::net::Ipv4Addr>().is_ok() {
        return Ok(AuthorityHost::Address);
    }
    normalize_name(host)
        .map(AuthorityHost::Name)
        .ok_or_else(bad)
}

/// The host an HTTP/1 request is for ([`http_request`], as a [`Sniffed`]).
pub fn http_host(buf: &[u8]) -> Sniffed {
    match http_request(buf) {
        HttpSniff::NeedMore => Sniffed::NeedMore,
        HttpSniff::Refused(why) => Sniffed::Other(why),
        HttpSniff::Request(r) => Sniffed::Name(r.name),
    }
}

/// Rewrites the request head that [`http_request`] parsed as `request` at the start of `buf`
/// to ask for the connection to close after its response: `Connection`, `Keep-Alive`,
/// `Proxy-Connection` and `Upgrade` headers are replaced by `Connection: close`. A server then
/// serves no further request on the connection (RFC 9112, 9.6). The head is strictly CRLF
/// delimited (the parser refused anything else), so every line is seen here as the server
/// will see it. Bytes after the head are kept.
pub fn one_request_only(buf: &[u8], request: &HttpRequest) -> Vec<u8> {
    let head = &buf[..request.head_len - 2];
    let mut out = Vec::with_capacity(buf.len() + 19);
    for (i, line) in head.split_inclusive(|&b| b == b'\n').enumerate() {
        let name = line.split(|&b| b == b':').next().unwrap_or_default();
        let drop = i > 0
            && [
                &b"connection"[..],
                b"keep-alive",
                b"proxy-connection",
                b"upgrade",
            ]
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h));
        if !drop {
            out.extend_from_slice(line);
        }
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    out.extend_from_slice(&buf[request.head_len..]);
    out
}

/// What the first bytes of a connection are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opening {
    NeedMore,
    /// A TLS ClientHello with this SNI (normalized; `None` without one).
    Tls(Option<String>),
    Http(HttpRequest),
    /// An HTTP request nsbox refuses, or a ClientHello it cannot read (reason).
    Refused(String),
    /// Neither TLS nor HTTP: raw TCP (what the bytes look like).
    Neither(String),
}

/// True when `buf` starts like an HTTP request line: a method, then a space.
fn looks_like_http(buf: &[u8]) -> bool {
    let method = buf.iter().take_while(|b| is_tchar(**b)).count();
    (1..=32).contains(&method) && buf.get(method) == Some(&b' ')
}

/// Recognises a TLS ClientHello (a handshake record) or an HTTP/1 request, whatever the port.
pub fn opening(buf: &[u8]) -> Opening {
    match buf.first() {
        None => Opening::NeedMore,
        Some(0x16) => match tls_server_name(buf) {
            Sniffed::NeedMore => Opening::NeedMore,
            Sniffed::Name(name) => Opening::Tls(name),
            Sniffed::Other(why) => Opening::Refused(why),
        },
        Some(_) => match http_request(buf) {
            HttpSniff::NeedMore => Opening::NeedMore,
            HttpSniff::Refused(why) if looks_like_http(buf) => Opening::Refused(why),
            HttpSniff::Refused(_) => Opening::Neither(format!(
                "neither a TLS ClientHello nor an HTTP request: '{}'",
                excerpt(&buf[..buf.len().min(16)])
            )),
            HttpSniff::Request(r) => Opening::Http(r),
        },
    }
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

    fn request(buf: &[u8]) -> HttpRequest {
        match http_request(buf) {
            HttpSniff::Request(r) => r,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
        }
    }

    fn refused(buf: &[u8]) -> String {
        match http_request(buf) {
            HttpSniff::Refused(why) => why,
            other => panic!(
                "{:?} was not refused: {other:?}",
                String::from_utf8_lossy(buf)
            ),
        }
    }

    #[test]
    fn plain_http_connections_carry_one_request() {
        let req = b"POST /x HTTP/1.1\r\nHost: a.example\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nUpgrade: h2c\r\nX-A: b\r\nContent-Length: 2\r\n\r\nhi";
        let parsed = request(req);
        assert_eq!(parsed.body, Body::Length(2));
        assert_eq!(parsed.head_len, req.len() - 2);
        let out = one_request_only(req, &parsed);
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "POST /x HTTP/1.1\r\nHost: a.example\r\nX-A: b\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"
        );
        assert_eq!(request(&out).name.as_deref(), Some("a.example"));
        let chunked = b"POST / HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: Chunked\r\n\r\n";
        assert_eq!(request(chunked).body, Body::Chunked);
        assert_eq!(
            request(b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n").body,
            Body::Length(0)
        );
    }

    #[test]
    fn http_host_and_absolute_targets() {
        let req = b"GET /simple/ HTTP/1.1\r\nUser-Agent: x\r\nHOST: Files.Example.com:80\r\n\r\n";
        assert_eq!(
            http_host(req),
            Sniffed::Name(Some("files.example.com".into()))
        );
        for cut in [1, 20, req.len() - 1] {
            assert_eq!(http_host(&req[..cut]), Sniffed::NeedMore, "cut {cut}");
        }
        assert_eq!(
            http_host(b"GET http://a.example/x HTTP/1.1\r\nHost: a.example\r\n\r\n"),
            Sniffed::Name(Some("a.example".into()))
        );
        assert_eq!(
            http_host(b"GET HTTP://A.example:8080?q HTTP/1.0\r\n\r\n"),
            Sniffed::Name(Some("a.example".into()))
        );
        assert!(
            refused(b"GET http://evil.example/ HTTP/1.1\r\nHost: a.example\r\n\r\n")
                .contains("different hosts")
        );
        assert!(
            refused(b"GET http://203.0.113.7/ HTTP/1.1\r\nHost: a.example\r\n\r\n")
                .contains("different hosts")
        );
        assert_eq!(http_host(b"GET / HTTP/1.0\r\n\r\n"), Sniffed::Name(None));
        assert_eq!(
            http_host(b"GET / HTTP/1.1\r\nHost: 203.0.113.7:80\r\n\r\n"),
            Sniffed::Name(None)
        );
        assert_eq!(
            http_host(b"GET / HTTP/1.1\r\nHost: [2001:db8::1]:80\r\n\r\n"),
            Sniffed::Name(None)
        );
        assert_eq!(
            http_host(b"OPTIONS * HTTP/1.1\r\nHost: a.example\r\n\r\n"),
            Sniffed::Name(Some("a.example".into()))
        );
        assert!(matches!(http_host(b"\x16\x03\x01"), Sniffed::Other(_)));
    }

    /// Every way a lenient server could read a request differently from the check is refused.
    #[test]
    fn http_smuggling_is_refused() {
        for (req, why) in [
            // A bare LF hides a second request or header from a CRLF-only reader.
            (&b"GET / HTTP/1.1\nHost: a.example\r\n\r\n"[..], "bare LF"),
            (b"GET / HTTP/1.1\r\nHost: a.example\nHost: evil.example\r\n\r\n", "bare LF"),
            (b"GET / HTTP/1.1\r\nHost: a.example\r\n\nGET / HTTP/1.1\r\nHost: evil.example\r\n\r\n", "bare LF"),
            (b"GET / HTTP/1.1\r\nHost: a.example\rX: y\r\n\r\n", "bare CR"),
            (b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\r\n", "bare CR"),
            (b"GET / HTTP/1.1\r\nX: a\r\n Host: evil.example\r\nHost: a.example\r\n\r\n", "obs-fold"),
            (b"GET / HTTP/1.1\r\nHost: a.example\r\n\tb\r\n\r\n", "obs-fold"),
            (b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: evil.example\r\n\r\n", "more than one Host"),
            (b"GET / HTTP/1.1\r\nHost: a.example\r\nhost: a.example\r\n\r\n", "more than one Host"),
            (b"GET / HTTP/1.1\r\nHost : evil.example\r\nHost: a.example\r\n\r\n", "whitespace before"),
            (b"GET / HTTP/1.1\r\nHost\t: a.example\r\n\r\n", "whitespace before"),
            (b"GET / HTTP/1.1\r\nHost: a.example\x00.evil\r\n\r\n", "byte 0x00"),
            (b"GET / HTTP/1.1\r\nHost: a.example\x1b[2J\r\n\r\n", "byte 0x1b"),
            (b"GET / HTTP/1.1\r\nX-\x01: a\r\nHost: a.example\r\n\r\n", "not a header name"),
            (b"GET / HTTP/1.1\r\nHost: a.example evil.example\r\n\r\n", "not a host name"),
            (b"GET / HTTP/1.1\r\n\r\n", "without a Host"),
            (b"GET  / HTTP/1.1\r\nHost: a.example\r\n\r\n", "request line"),
            (b"GET / HTTP/1.1 \r\nHost: a.example\r\n\r\n", "request line"),
            (b"GET / HTTP/2.0\r\nHost: a.example\r\n\r\n", "HTTP/1.0 or 1.1"),
            (b"GET /\x7f HTTP/1.1\r\nHost: a.example\r\n\r\n", "request target"),
            (b"GET evil.example/ HTTP/1.1\r\nHost: a.example\r\n\r\n", "request target"),
            (b"GET http://a.example@evil.example/ HTTP/1.1\r\nHost: evil.example\r\n\r\n", "userinfo"),
            (b"GET /#x HTTP/1.1\r\nHost: a.example\r\n\r\n", "fragment"),
            (b"GET / HTTP/1.1\r\nHost: a.example:99999\r\n\r\n", "bad port"),
            (b"CONNECT evil.example:443 HTTP/1.1\r\nHost: a.example\r\n\r\n", "CONNECT"),
            (b"CONNECT a.example:22 HTTP/1.1\r\nHost: a.example\r\n\r\n", "CONNECT"),
            (b"POST / HTTP/1.1\r\nHost: a.example\r\nContent-Length: 5\r\nContent-Length: 50\r\n\r\n", "disagree"),
            (b"POST / HTTP/1.1\r\nHost: a.example\r\nContent-Length: +5\r\n\r\n", "not a length"),
            (b"POST / HTTP/1.1\r\nHost: a.example\r\nContent-Length: 5, 5\r\n\r\n", "not a length"),
            (b"POST / HTTP/1.1\r\nHost: a.example\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", "both"),
            (b"POST / HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked, identity\r\n\r\n", "Transfer-Encoding"),
            (b"POST / HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", "Transfer-Encoding"),
            (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", "Transfer-Encoding"),
            (b"\r\nGET / HTTP/1.1\r\nHost: a.example\r\n\r\n", "not an HTTP request"),
            (b" GET / HTTP/1.1\r\n", "not an HTTP request"),
        ] {
            let got = refused(req);
            assert!(
                got.contains(why),
                "{:?}: {got:?} (wanted {why:?})",
                String::from_utf8_lossy(req)
            );
        }
        // Refusals come as soon as the bytes show them, before the head is complete.
        assert!(matches!(
            http_request(b"GET / HTTP/1.1\nHost"),
            HttpSniff::Refused(_)
        ));
        assert!(matches!(http_request(b"\x00\x01"), HttpSniff::Refused(_)));
        let big = [b"GET / HTTP/1.1\r\nX: ".as_slice(), &[b'a'; MAX_SNIFF]].concat();
        assert!(refused(&big).contains("too large"));
    }

    #[test]
    fn openings_are_recognised_on_any_port() {
        assert_eq!(opening(b""), Opening::NeedMore);
        assert_eq!(
            opening(&client_hello(Some("a.example"), 4096)),
            Opening::Tls(Some("a.example".into()))
        );
        assert_eq!(opening(&client_hello(None, 4096)[..9]), Opening::NeedMore);
        assert!(matches!(
            opening(b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n"),
            Opening::Http(r) if r.name.as_deref() == Some("a.example")
        ));
        assert_eq!(opening(b"GET / HTTP/1.1\r\n"), Opening::NeedMore);
        // Raw protocols: an SSH banner, a PostgreSQL startup message, TLS-looking garbage.
        assert!(matches!(
            opening(b"SSH-2.0-OpenSSH_9.6\r\n"),
            Opening::Neither(_)
        ));
        assert!(matches!(
            opening(b"\x00\x00\x00\x08\x04\xd2\x16\x2f"),
            Opening::Neither(_)
        ));
        assert!(matches!(
            opening(b"GET / HTTP/1.1\nHost: a.example\n\n"),
            Opening::Refused(r) if r.contains("bare LF")
        ));
        assert!(matches!(
            opening(b"\x16\x01\x00\x00\x01"),
            Opening::Refused(_)
        ));
    }
}
