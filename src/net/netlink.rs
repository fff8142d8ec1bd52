//! Netlink, spoken directly: a message builder (headers, attributes, nesting) and a socket that
//! sends a request and waits for its acknowledgements. Used for the sandbox's nftables ruleset
//! and set elements (`NETLINK_NETFILTER`) and for routes and addresses (`NETLINK_ROUTE`).
//!
//! Why not libnftnl/libmnl: nsbox is a static binary; the ruleset is small and fixed, and the
//! resolver adds set elements on its hot path. Building the messages here keeps the whole path
//! in safe Rust (rustix sockets, byte vectors), without a C library to link or `unsafe` FFI.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use rustix::net::netlink::SocketAddrNetlink;
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};

pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;
pub const NLM_F_APPEND: u16 = 0x800;
pub const NLM_F_DUMP: u16 = 0x300;
/// Marks an attribute whose payload is more attributes.
pub const NLA_F_NESTED: u16 = 0x8000;

const HEADER_LEN: usize = 16;

/// `NETLINK_ROUTE` (protocol number 0, which rustix spells as no protocol).
pub const ROUTE: Option<rustix::net::Protocol> = None;
/// `NETLINK_NETFILTER`.
pub const NETFILTER: Option<rustix::net::Protocol> = Some(rustix::net::netlink::NETFILTER);

/// Rounds up to netlink's 4-byte alignment.
pub const fn align(n: usize) -> usize {
    (n + 3) & !3
}

/// A buffer of netlink messages under construction.
#[derive(Debug, Default)]
pub struct MessageBuf {
    buf: Vec<u8>,
    msg_start: Option<usize>,
    /// Sequence numbers of the messages that asked for an acknowledgement.
    acked: Vec<u32>,
}

impl MessageBuf {
    pub fn new() -> MessageBuf {
        MessageBuf::default()
    }

    /// Starts a message; `payload_header` is the family header (nfgenmsg, rtmsg, ...).
    pub fn begin(&mut self, kind: u16, flags: u16, seq: u32, payload_header: &[u8]) {
        debug_assert!(self.msg_start.is_none(), "message not ended");
        self.msg_start = Some(self.buf.len());
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // length, patched in end()
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it
        self.buf.extend_from_slice(payload_header);
        self.pad();
        if flags & NLM_F_ACK != 0 {
            self.acked.push(seq);
        }
    }

    /// Ends the current message.
    pub fn end(&mut self) {
        if let Some(start) = self.msg_start.take() {
            let len = (self.buf.len() - start) as u32;
            self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
        }
    }

    fn pad(&mut self) {
        let padded = align(self.buf.len());
        self.buf.resize(padded, 0);
    }

    /// An attribute with raw bytes.
    pub fn attr(&mut self, kind: u16, data: &[u8]) {
        let len = (4 + data.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
    }

    /// A NUL-terminated string attribute.
    pub fn attr_str(&mut self, kind: u16, s: &str) {
        let mut data = Vec::with_capacity(s.len() + 1);
        data.extend_from_slice(s.as_bytes());
        data.push(0);
        self.attr(kind, &data);
    }

    /// A big-endian u32 (nftables' integers are in network order).
    pub fn attr_be32(&mut self, kind: u16, v: u32) {
        self.attr(kind, &v.to_be_bytes());
    }

    pub fn attr_be64(&mut self, kind: u16, v: u64) {
        self.attr(kind, &v.to_be_bytes());
    }

    /// A host-order u32 (rtnetlink's integers).
    pub fn attr_u32(&mut self, kind: u16, v: u32) {
        self.attr(kind, &v.to_ne_bytes());
    }

    /// Opens a nested attribute; pass the returned mark to [`Self::nest_end`].
    pub fn nest_begin(&mut self, kind: u16) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        start
    }

    pub fn nest_end(&mut self, start: usize) {
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }

    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Sequence numbers whose acknowledgement [`NetlinkSocket::transact`] waits for.
    pub fn acked(&self) -> &[u32] {
        &self.acked
    }
}

/// One received message: type, flags, sequence number, payload (after the 16-byte header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub kind: u16,
    pub seq: u32,
    pub payload: Vec<u8>,
}

/// Splits a datagram into messages (ignores a truncated tail).
pub fn split_messages(mut data: &[u8]) -> Vec<Received> {
    let mut out = Vec::new();
    while data.len() >= HEADER_LEN {
        let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
        if len < HEADER_LEN || len > data.len() {
            break;
        }
        out.push(Received {
            kind: u16::from_ne_bytes([data[4], data[5]]),
            seq: u32::from_ne_bytes([data[8], data[9], data[10], data[11]]),
            payload: data[HEADER_LEN..len].to_vec(),
        });
        data = &data[align(len).min(data.len())..];
    }
    out
}

/// Iterates over the attributes in `data`: (type without flags, payload).
pub fn attributes(mut data: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while data.len() >= 4 {
        let len = u16::from_ne_bytes([data[0], data[1]]) as usize;
        let kind = u16::from_ne_bytes([data[2], data[3]]) & 0x3fff;
        if len < 4 || len > data.len() {
            break;
        }
        out.push((kind, &data[4..len]));
        data = &data[align(len).min(data.len())..];
    }
    out
}

/// A netlink socket of one protocol, in the network namespace it was created in.
#[derive(Debug)]
pub struct NetlinkSocket {
    fd: OwnedFd,
    next_seq: u32,
}

impl NetlinkSocket {
    /// Opens a socket for `protocol` ([`ROUTE`] or [`NETFILTER`]).
    pub fn open(protocol: Option<rustix::net::Protocol>) -> io::Result<NetlinkSocket> {
        let fd = rustix::net::socket_with(
            AddressFamily::NETLINK,
            SocketType::RAW,
            SocketFlags::CLOEXEC,
            protocol,
        )
        .map_err(errno)?;
        rustix::net::bind(&fd, &SocketAddrNetlink::new(0, 0)).map_err(errno)?;
        // Replies come at once (the kernel handles a request inside sendmsg); a bound wait
        // only guards against a bug hanging the supervisor.
        rustix::net::sockopt::set_socket_timeout(
            &fd,
            rustix::net::sockopt::Timeout::Recv,
            Some(Duration::from_secs(2)),
        )
        .map_err(errno)?;
        Ok(NetlinkSocket { fd, next_seq: 1 })
    }

    /// A fresh sequence number.
    pub fn seq(&mut self) -> u32 {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1).max(1);
        seq
    }

    /// Sends `msgs` and waits until every message that asked for an acknowledgement got one.
    /// The first error the kernel reports is returned (for a batch, the whole batch is then
    /// void).
    pub fn transact(&mut self, msgs: &MessageBuf) -> io::Result<()> {
        self.send(msgs.bytes())?;
        let mut waiting: Vec<u32> = msgs.acked().to_vec();
        let mut buf = vec![0u8; 64 * 1024];
        let mut first_error: Option<io::Error> = None;
        while !waiting.is_empty() {
            let n = self.recv(&mut buf)?;
            for msg in split_messages(&buf[..n]) {
                if msg.kind != NLMSG_ERROR || msg.payload.len() < 4 {
                    continue;
                }
                let Some(pos) = waiting.iter().position(|s| *s == msg.seq) else {
                    continue; // a late answer to an earlier request
                };
                waiting.swap_remove(pos);
                let code = i32::from_ne_bytes([
                    msg.payload[0],
                    msg.payload[1],
                    msg.payload[2],
                    msg.payload[3],
                ]);
                if code != 0 && first_error.is_none() {
                    first_error = Some(io::Error::from_raw_os_error(-code));
                    // After an error the kernel may not acknowledge the rest of a batch.
                    waiting.clear();
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Sends a dump request and collects every reply message up to NLMSG_DONE.
    pub fn dump(&mut self, msgs: &MessageBuf, seq: u32) -> io::Result<Vec<Received>> {
        self.send(msgs.bytes())?;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = self.recv(&mut buf)?;
            for msg in split_messages(&buf[..n]) {
                if msg.seq != seq {
                    continue;
                }
                match msg.kind {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let code = msg
                            .payload
                            .get(..4)
                            .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                            .unwrap_or(-libc::EIO);
                        if code != 0 {
                            return Err(io::Error::from_raw_os_error(-code));
                        }
                    }
                    _ => out.push(msg),
                }
            }
        }
    }

    fn send(&self, bytes: &[u8]) -> io::Result<()> {
        let sent = rustix::net::sendto(
            self.fd.as_fd(),
            bytes,
            SendFlags::empty(),
            &SocketAddrNetlink::new(0, 0),
        )
        .map_err(errno)?;
        if sent != bytes.len() {
            return Err(io::Error::other("netlink request sent only in part"));
        }
        Ok(())
    }

    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match rustix::net::recv(self.fd.as_fd(), &mut *buf, RecvFlags::empty()) {
                Ok((n, _)) => return Ok(n),
                Err(rustix::io::Errno::INTR) => continue,
                Err(rustix::io::Errno::AGAIN) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the kernel did not answer a netlink request",
                    ))
                }
                Err(e) => return Err(errno(e)),
            }
        }
    }
}

fn errno(e: rustix::io::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_nested_attributes_are_laid_out_as_the_kernel_expects() {
        let mut m = MessageBuf::new();
        m.begin(0x0a00, NLM_F_REQUEST | NLM_F_ACK, 7, &[1, 0, 0, 0]);
        m.attr_str(1, "abc"); // 4 + 4 bytes
        let nest = m.nest_begin(2);
        m.attr_be32(1, 0x01020304);
        m.nest_end(nest);
        m.end();
        let b = m.bytes();
        assert_eq!(b.len(), 16 + 4 + 8 + 4 + 8);
        assert_eq!(
            u32::from_ne_bytes(b[0..4].try_into().unwrap()) as usize,
            b.len()
        );
        assert_eq!(&b[20..28], &[8, 0, 1, 0, b'a', b'b', b'c', 0]);
        assert_eq!(u16::from_ne_bytes([b[30], b[31]]), 2 | NLA_F_NESTED);
        assert_eq!(u16::from_ne_bytes([b[28], b[29]]), 12);
        assert_eq!(&b[36..40], &[1, 2, 3, 4]);
        assert_eq!(m.acked(), &[7]);
        let msgs = split_messages(b);
        assert_eq!(msgs.len(), 1);
        assert_eq!((msgs[0].kind, msgs[0].seq), (0x0a00, 7));
        let attrs = attributes(&msgs[0].payload[4..]);
        assert_eq!(attrs.len(), 2);
        assert_eq!(attrs[0], (1, &b"abc\0"[..]));
        assert_eq!(attributes(attrs[1].1), vec![(1, &[1u8, 2, 3, 4][..])]);
    }

    #[test]
    fn truncated_input_is_ignored() {
        assert!(split_messages(&[1, 2, 3]).is_empty());
        assert!(split_messages(&[200, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_empty());
        assert!(attributes(&[9, 0, 1, 0, 1]).is_empty());
    }
}
