//! Reports of what the sandbox's rules reject without the proxy ever seeing it: a TCP
//! connection to an address no allowed name resolved to, a UDP datagram, an ICMP echo. The
//! `report_out` chain ([`super::nft::Ruleset::report`]) sends the first bytes of such packets
//! to nfnetlink_log (rate-limited in the kernel); this socket, bound inside the sandbox's
//! namespace, reads them, and [`parse_packet`] turns each into an event.
//!
//! The kernel sends each report (the rule's queue threshold is 1; by default it would gather
//! 100, or wait a second) before the packet is rejected, so
//! by the time the workload sees its error the report is waiting here (the supervisor reads
//! what is left when the sandbox ends, too).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::net::netlink::SocketAddrNetlink;
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};

use super::events::{Decision, NetEvent};
use super::netlink::{
    attributes, split_messages, MessageBuf, NLMSG_ERROR, NLM_F_ACK, NLM_F_REQUEST,
};

/// The nfnetlink_log group of the sandbox's reports (groups are per network namespace).
pub const GROUP: u16 = 1;

const NFNL_SUBSYS_ULOG: u16 = 4;
const NFULNL_MSG_PACKET: u16 = 0;
const NFULNL_MSG_CONFIG: u16 = 1;
const NFULA_CFG_CMD: u16 = 1;
const NFULA_CFG_MODE: u16 = 2;
const NFULNL_CFG_CMD_BIND: u8 = 1;
const NFULNL_COPY_PACKET: u8 = 2;
const NFULA_PAYLOAD: u16 = 9;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMPV6: u8 = 58;

fn errno(e: rustix::io::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

/// Opens a socket bound to [`GROUP`] in the calling thread's network namespace (call it
/// inside the sandbox's), non-blocking, copying [`super::nft::REPORT_SNAPLEN`] bytes of each
/// packet.
pub fn open() -> io::Result<OwnedFd> {
    let fd = rustix::net::socket_with(
        AddressFamily::NETLINK,
        SocketType::RAW,
        SocketFlags::CLOEXEC,
        super::netlink::NETFILTER,
    )
    .map_err(errno)?;
    rustix::net::bind(&fd, &SocketAddrNetlink::new(0, 0)).map_err(errno)?;
    // A bounded receive buffer: beyond it the kernel drops reports (ENOBUFS), never memory.
    let _ = rustix::net::sockopt::set_socket_recv_buffer_size(&fd, 64 * 1024);
    let mut m = MessageBuf::new();
    let kind = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG;
    let group = GROUP.to_be_bytes();
    let header = [0, 0, group[0], group[1]]; // nfgenmsg: AF_UNSPEC, version 0, group
    m.begin(kind, NLM_F_REQUEST | NLM_F_ACK, 1, &header);
    m.attr(NFULA_CFG_CMD, &[NFULNL_CFG_CMD_BIND]);
    m.end();
    m.begin(kind, NLM_F_REQUEST | NLM_F_ACK, 2, &header);
    let range = super::nft::REPORT_SNAPLEN.to_be_bytes();
    m.attr(
        NFULA_CFG_MODE,
        &[
            range[0],
            range[1],
            range[2],
            range[3],
            NFULNL_COPY_PACKET,
            0,
        ],
    );
    m.end();
    rustix::net::sendto(
        &fd,
        m.bytes(),
        SendFlags::empty(),
        &SocketAddrNetlink::new(0, 0),
    )
    .map_err(errno)?;
    rustix::net::sockopt::set_socket_timeout(
        &fd,
        rustix::net::sockopt::Timeout::Recv,
        Some(std::time::Duration::from_secs(2)),
    )
    .map_err(errno)?;
    let mut acked = 0;
    let mut buf = vec![0u8; 8192];
    while acked < 2 {
        let (n, _) = rustix::net::recv(&fd, &mut buf, RecvFlags::empty()).map_err(errno)?;
        for msg in split_messages(&buf[..n]) {
            if msg.kind == NLMSG_ERROR && msg.payload.len() >= 4 {
                let code = i32::from_ne_bytes([
                    msg.payload[0],
                    msg.payload[1],
                    msg.payload[2],
                    msg.payload[3],
                ]);
                if code != 0 {
                    return Err(io::Error::from_raw_os_error(-code));
                }
                acked += 1;
            }
        }
    }
    rustix::io::ioctl_fionbio(&fd, true).map_err(errno)?;
    Ok(fd)
}

/// Reads every report waiting on `fd` (non-blocking) as events.
pub fn drain(fd: BorrowedFd<'_>) -> Vec<NetEvent> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match rustix::net::recv(fd.as_fd(), &mut buf, RecvFlags::DONTWAIT) {
            Ok((0, _)) => break,
            Ok((n, _)) => out.extend(events(&buf[..n.min(buf.len())])),
            // ENOBUFS: reports were lost to a full buffer; go on with what follows.
            Err(rustix::io::Errno::NOBUFS) | Err(rustix::io::Errno::INTR) => continue,
            Err(_) => break,
        }
    }
    out
}

/// The events of one datagram of nfnetlink_log messages.
pub fn events(datagram: &[u8]) -> Vec<NetEvent> {
    split_messages(datagram)
        .into_iter()
        .filter(|m| m.kind == (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET)
        .filter_map(|m| {
            let attrs = m.payload.get(4..)?;
            let (_, packet) = attributes(attrs)
                .into_iter()
                .find(|(kind, _)| *kind == NFULA_PAYLOAD)?;
            parse_packet(packet)
        })
        .collect()
}

/// What a rejected IPv4 or IPv6 packet (from its network header on) was: a refused TCP
/// connection or another protocol's packet.
pub fn parse_packet(packet: &[u8]) -> Option<NetEvent> {
    let (proto, address, transport): (u8, IpAddr, &[u8]) = match packet.first()? >> 4 {
        4 => {
            let ihl = usize::from(packet.first()? & 0x0f) * 4;
            let dst: [u8; 4] = packet.get(16..20)?.try_into().ok()?;
            (
                *packet.get(9)?,
                IpAddr::V4(Ipv4Addr::from(dst)),
                packet.get(ihl.max(20)..).unwrap_or_default(),
            )
        }
        6 => {
            let dst: [u8; 16] = packet.get(24..40)?.try_into().ok()?;
            (
                *packet.get(6)?,
                IpAddr::V6(Ipv6Addr::from(dst)),
                packet.get(40..).unwrap_or_default(),
            )
        }
        _ => return None,
    };
    let port = transport
        .get(2..4)
        .map(|p| u16::from_be_bytes([p[0], p[1]]));
    let reason = format!(
        "no allowed name of this sandbox resolved to {address}, and no --allow range covers it (rejected by the sandbox's rules)"
    );
    Some(match (proto, port) {
        (IPPROTO_TCP, Some(port)) => NetEvent::Connection {
            decision: Decision::Refused,
            address,
            port,
            name: None,
            rule: None,
            reason,
        },
        (IPPROTO_UDP, _) => NetEvent::Packet {
            decision: Decision::Refused,
            protocol: "udp".into(),
            address,
            port,
            reason: "only TCP leaves a filtered sandbox (UDP, QUIC and ICMP are rejected)".into(),
        },
        (p, _) => NetEvent::Packet {
            decision: Decision::Refused,
            protocol: match p {
                IPPROTO_ICMP | IPPROTO_ICMPV6 => "icmp".into(),
                IPPROTO_TCP => "tcp".into(),
                other => format!("ip protocol {other}"),
            },
            address,
            port: None,
            reason: "only TCP leaves a filtered sandbox (UDP, QUIC and ICMP are rejected)".into(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4(proto: u8, dst: [u8; 4], dport: u16) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, proto, 0, 0, 127, 0, 0, 1];
        p.extend_from_slice(&dst);
        p.extend_from_slice(&[0x9c, 0x40]);
        p.extend_from_slice(&dport.to_be_bytes());
        p.extend_from_slice(&[0; 16]);
        p
    }

    #[test]
    fn rejected_packets_become_events() {
        let tcp = parse_packet(&ipv4(IPPROTO_TCP, [203, 0, 113, 20], 80)).unwrap();
        assert!(matches!(
            &tcp,
            NetEvent::Connection { decision: Decision::Refused, port: 80, address, reason, .. }
                if address.to_string() == "203.0.113.20" && reason.contains("no allowed name")
        ));
        let udp = parse_packet(&ipv4(IPPROTO_UDP, [203, 0, 113, 10], 9999)).unwrap();
        assert!(matches!(
            &udp,
            NetEvent::Packet { protocol, port: Some(9999), .. } if protocol == "udp"
        ));
        let mut v6 = vec![0x60, 0, 0, 0, 0, 8, IPPROTO_ICMPV6, 64];
        v6.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        v6.extend_from_slice(&"2001:db8:2::10".parse::<Ipv6Addr>().unwrap().octets());
        v6.extend_from_slice(&[128, 0, 0, 0]);
        assert!(matches!(
            parse_packet(&v6),
            Some(NetEvent::Packet { protocol, port: None, .. }) if protocol == "icmp"
        ));
        // Truncated or foreign bytes are no event, never a panic.
        for bad in [&[][..], &[0x45], &[0x45, 0, 0], &[0x60; 30], &[0x15; 40]] {
            assert!(parse_packet(bad).is_none(), "{bad:?}");
        }
        assert!(matches!(
            parse_packet(&ipv4(IPPROTO_TCP, [203, 0, 113, 20], 80)[..20]),
            Some(NetEvent::Packet { .. })
        ));
    }

    #[test]
    fn log_messages_are_unwrapped() {
        let mut m = MessageBuf::new();
        m.begin(
            (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET,
            0,
            0,
            &[2, 0, 0, 1],
        );
        m.attr(1, &[8, 0, 3, 0]); // NFULA_PACKET_HDR
        m.attr(NFULA_PAYLOAD, &ipv4(IPPROTO_UDP, [203, 0, 113, 10], 443));
        m.end();
        m.begin(NLMSG_ERROR, 0, 0, &[0, 0, 0, 0]);
        m.end();
        let events = events(m.bytes());
        assert_eq!(events.len(), 1);
        assert!(matches!(
            &events[0],
            NetEvent::Packet {
                port: Some(443),
                ..
            }
        ));
    }
}
