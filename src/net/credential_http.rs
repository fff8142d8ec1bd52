//! HTTP/1 framing for the intercepted path ([`super::credential::intercept`]): where one request
//! ends and the next begins on a keep-alive connection, so every request is parsed, checked and
//! injected on its own. Request heads go through [`super::sniff::http_request`] (the strict
//! parser plain HTTP uses); this module adds what a connection carrying several requests needs:
//! the end of a chunked body, and the few header facts the relay acts on.

/// Longest chunk-size line (with extensions) or trailer line accepted.
const MAX_LINE: usize = 8 * 1024;

/// Where a chunked body (RFC 9112, 7.1) is, byte by byte: the data is skipped over in bulk,
/// the framing around it is checked strictly (CRLF only, hex sizes, no control bytes), as the
/// head is, so nsbox and the server agree on where the next request starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunked {
    /// In a chunk-size line: hex digits so far, the size, whether in an extension, length.
    Size {
        digits: u32,
        size: u64,
        ext: bool,
        len: usize,
    },
    /// After the size line's CR.
    SizeLf {
        size: u64,
    },
    /// Bytes of chunk data left.
    Data(u64),
    DataCr,
    DataLf,
    /// In a trailer line (after the last chunk) of this many bytes so far.
    Trailer {
        len: usize,
    },
    /// After a trailer line's CR; `empty` when the line was the final empty one.
    TrailerLf {
        empty: bool,
    },
    Done,
}

impl Default for Chunked {
    fn default() -> Chunked {
        Chunked::Size {
            digits: 0,
            size: 0,
            ext: false,
            len: 0,
        }
    }
}

impl Chunked {
    /// Follows `data` (the next bytes of the body): `Ok(Some(n))` when the body ends after
    /// `n` bytes of it, `Ok(None)` when all of it is body and more is to come.
    pub fn feed(&mut self, data: &[u8]) -> Result<Option<usize>, String> {
        let mut i = 0;
        while i < data.len() {
            if let Chunked::Data(left) = *self {
                let take = left.min((data.len() - i) as u64);
                i += take as usize;
                *self = if take == left {
                    Chunked::DataCr
                } else {
                    Chunked::Data(left - take)
                };
                continue;
            }
            let b = data[i];
            i += 1;
            let visible = |b: u8| b == b'\t' || b >= 0x20 && b != 0x7f;
            *self = match *self {
                Chunked::Size {
                    digits,
                    size,
                    ext,
                    len,
                } => {
                    if len >= MAX_LINE {
                        return Err("a chunk-size line is too long".into());
                    }
                    if b == b'\r' {
                        if digits == 0 {
                            return Err("a chunk without a size".into());
                        }
                        Chunked::SizeLf { size }
                    } else if ext {
                        if !visible(b) {
                            return Err(format!("byte 0x{b:02x} in a chunk extension"));
                        }
                        Chunked::Size {
                            digits,
                            size,
                            ext,
                            len: len + 1,
                        }
                    } else if b == b';' && digits > 0 {
                        Chunked::Size {
                            digits,
                            size,
                            ext: true,
                            len: len + 1,
                        }
                    } else if let Some(d) = (b as char).to_digit(16) {
                        if digits >= 15 {
                            return Err("a chunk size too large".into());
                        }
                        Chunked::Size {
                            digits: digits + 1,
                            size: size * 16 + u64::from(d),
                            ext,
                            len: len + 1,
                        }
                    } else {
                        return Err(format!("byte 0x{b:02x} in a chunk size"));
                    }
                }
                Chunked::SizeLf { size } => {
                    if b != b'\n' {
                        return Err("a chunk-size line not ended by CRLF".into());
                    }
                    if size == 0 {
                        Chunked::Trailer { len: 0 }
                    } else {
                        Chunked::Data(size)
                    }
                }
                Chunked::DataCr if b == b'\r' => Chunked::DataLf,
                Chunked::DataLf if b == b'\n' => Chunked::default(),
                Chunked::DataCr | Chunked::DataLf => {
                    return Err("chunk data not followed by CRLF".into())
                }
                Chunked::Trailer { len } => {
                    if b == b'\r' {
                        Chunked::TrailerLf { empty: len == 0 }
                    } else if !visible(b) || len >= MAX_LINE {
                        return Err("a malformed trailer line".into());
                    } else {
                        Chunked::Trailer { len: len + 1 }
                    }
                }
                Chunked::TrailerLf { empty } => {
                    if b != b'\n' {
                        return Err("a trailer line not ended by CRLF".into());
                    }
                    if empty {
                        *self = Chunked::Done;
                        return Ok(Some(i));
                    }
                    Chunked::Trailer { len: 0 }
                }
                Chunked::Data(_) | Chunked::Done => unreachable!("handled above"),
            };
        }
        Ok(None)
    }
}

/// Whether the request head (CRLF lines, as the strict parser accepted it) asks to switch
/// protocols (an `Upgrade` header: WebSocket, usually).
pub fn asks_upgrade(head: &[u8]) -> bool {
    head.split(|&b| b == b'\n').skip(1).any(|line| {
        line.split(|&b| b == b':')
            .next()
            .is_some_and(|name| name.eq_ignore_ascii_case(b"upgrade"))
    })
}

/// Whether a response head (the bytes up to its empty line) switches protocols.
pub fn switches_protocols(head: &[u8]) -> bool {
    head.starts_with(b"HTTP/1.1 101 ") || head.starts_with(b"HTTP/1.1 101\r")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end_of(body: &[u8], step: usize) -> Result<Option<usize>, String> {
        let mut c = Chunked::default();
        let mut at = 0;
        for piece in body.chunks(step) {
            if let Some(n) = c.feed(piece)? {
                return Ok(Some(at + n));
            }
            at += piece.len();
        }
        Ok(None)
    }

    #[test]
    fn chunked_bodies_end_where_the_server_sees_them_end() {
        let body = b"5;ext=1\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nX-T: 1\r\n\r\nGET /next";
        let end = body.len() - "GET /next".len();
        for step in [1, 2, 3, 7, body.len()] {
            assert_eq!(end_of(body, step), Ok(Some(end)), "step {step}");
        }
        assert_eq!(end_of(b"0\r\n\r\n", 1), Ok(Some(5)));
        assert_eq!(end_of(b"5\r\nhel", 4), Ok(None));
    }

    #[test]
    fn chunked_framing_a_server_could_read_otherwise_is_refused() {
        for bad in [
            &b"5\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhelloX\r\n0\r\n\r\n",
            b"\r\n",
            b" 5\r\nhello\r\n0\r\n\r\n",
            b"5 \r\nhello\r\n0\r\n\r\n",
            b"-5\r\n",
            b"ffffffffffffffff\r\n",
            b"0x5\r\nhello\r\n",
            b"0\r\nX: a\nb\r\n\r\n",
            b"0\r\n\n",
        ] {
            assert!(
                end_of(bad, 1).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn upgrades_are_recognised() {
        assert!(asks_upgrade(
            b"GET /ws HTTP/1.1\r\nHost: a\r\nupgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        ));
        assert!(!asks_upgrade(b"GET /upgrade: HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(switches_protocols(
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n"
        ));
        assert!(!switches_protocols(b"HTTP/1.1 200 OK\r\n\r\n"));
    }
}
