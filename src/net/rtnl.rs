//! Routing netlink: the default routes through loopback that let a filtered sandbox's
//! `connect()` reach the nftables rules at all, and the list of the host's own addresses (which
//! DNS answers must not point at).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::addresses::SANDBOX_V6;
use super::netlink::{
    attributes, MessageBuf, NetlinkSocket, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REQUEST,
};

const RTM_NEWADDR: u16 = 20;
const IFA_F_NODAD: u8 = 0x02;
const RT_SCOPE_HOST: u8 = 254;
const RTM_GETADDR: u16 = 22;
const RTM_NEWROUTE: u16 = 24;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_STATIC: u8 = 4;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
const RTN_UNICAST: u8 = 1;
const RTA_OIF: u16 = 4;
const RTA_PREFSRC: u16 = 7;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
/// The loopback device of every network namespace.
const LOOPBACK_IFINDEX: u32 = 1;

/// Adds `default dev lo src 127.0.0.1` and `default dev lo` (IPv6) in the current thread's
/// network namespace. Without a route, `connect()` to an outside address fails with
/// ENETUNREACH before netfilter sees a packet; with these, every packet goes to the nftables
/// rules, which redirect or reject it. The IPv4 source must be given: loopback's address has
/// host scope and would not be chosen for a link-scope route. Returns whether IPv6 is there.
pub fn add_loopback_default_routes(sock: &mut NetlinkSocket) -> io::Result<bool> {
    let mut m = MessageBuf::new();
    let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
    m.begin(
        RTM_NEWROUTE,
        flags,
        sock.seq(),
        &rtmsg(libc::AF_INET as u8, RT_SCOPE_LINK),
    );
    m.attr_u32(RTA_OIF, LOOPBACK_IFINDEX);
    m.attr(RTA_PREFSRC, &Ipv4Addr::LOCALHOST.octets());
    m.end();
    sock.transact(&m)?;
    let mut m = MessageBuf::new();
    m.begin(
        RTM_NEWROUTE,
        flags,
        sock.seq(),
        &rtmsg(libc::AF_INET6 as u8, RT_SCOPE_UNIVERSE),
    );
    m.attr_u32(RTA_OIF, LOOPBACK_IFINDEX);
    m.end();
    match sock.transact(&m) {
        Ok(()) => Ok(true),
        // IPv6 disabled on this host (ipv6.disable=1 or no module): nothing to route.
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EAFNOSUPPORT) | Some(libc::EOPNOTSUPP) | Some(libc::EACCES)
            ) =>
        {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Gives loopback an IPv4 address other than 127.0.0.1 (the resolver's, 127.0.0.53) and, with
/// IPv6, [`SANDBOX_V6`]. The C library's `getaddrinfo(AI_ADDRCONFIG)` (used by `getent ahosts`
/// and many programs) returns no addresses of a family for which the host has nothing but
/// 127.0.0.1 or ::1; with these, names resolve as on a host with a network. Both addresses
/// exist only inside the sandbox and lie in ranges it can never reach outside anyway.
pub fn add_loopback_addresses(sock: &mut NetlinkSocket, ipv6: bool) -> io::Result<()> {
    let mut m = MessageBuf::new();
    let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
    let index = LOOPBACK_IFINDEX.to_ne_bytes();
    let ifaddrmsg = |family: u8, prefix: u8, flags: u8, scope: u8| {
        [
            family, prefix, flags, scope, index[0], index[1], index[2], index[3],
        ]
    };
    let v4 = super::addresses::RESOLVER_ADDR;
    m.begin(
        RTM_NEWADDR,
        flags,
        sock.seq(),
        &ifaddrmsg(libc::AF_INET as u8, 32, 0, RT_SCOPE_HOST),
    );
    m.attr(IFA_LOCAL, &v4);
    m.attr(IFA_ADDRESS, &v4);
    m.end();
    if ipv6 {
        m.begin(
            RTM_NEWADDR,
            flags,
            sock.seq(),
            &ifaddrmsg(libc::AF_INET6 as u8, 128, IFA_F_NODAD, RT_SCOPE_UNIVERSE),
        );
        m.attr(IFA_ADDRESS, &SANDBOX_V6.octets());
        m.end();
    }
    sock.transact(&m)
}

fn rtmsg(family: u8, scope: u8) -> [u8; 12] {
    // family, dst_len, src_len, tos, table, protocol, scope, type, flags (u32)
    [
        family,
        0,
        0,
        0,
        RT_TABLE_MAIN,
        RTPROT_STATIC,
        scope,
        RTN_UNICAST,
        0,
        0,
        0,
        0,
    ]
}

/// Every address configured on an interface of the current network namespace.
pub fn host_addresses(sock: &mut NetlinkSocket) -> io::Result<Vec<IpAddr>> {
    let mut m = MessageBuf::new();
    let seq = sock.seq();
    m.begin(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, seq, &[0u8; 8]);
    m.end();
    let mut out = Vec::new();
    for msg in sock.dump(&m, seq)? {
        if msg.kind != RTM_NEWADDR || msg.payload.len() < 8 {
            continue;
        }
        let family = i32::from(msg.payload[0]);
        let mut local = None;
        let mut address = None;
        for (kind, data) in attributes(&msg.payload[8..]) {
            let ip = match (family, data.len()) {
                (libc::AF_INET, 4) => IpAddr::V4(Ipv4Addr::new(data[0], data[1], data[2], data[3])),
                (libc::AF_INET6, 16) => {
                    let mut b = [0u8; 16];
                    b.copy_from_slice(data);
                    IpAddr::V6(Ipv6Addr::from(b))
                }
                _ => continue,
            };
            match kind {
                IFA_LOCAL => local = Some(ip),
                IFA_ADDRESS => address = Some(ip),
                _ => {}
            }
        }
        // On point-to-point links IFA_ADDRESS is the peer; IFA_LOCAL is ours.
        if let Some(ip) = local.or(address) {
            if !out.contains(&ip) {
                out.push(ip);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hosts_addresses_include_loopback() {
        let Ok(mut sock) = NetlinkSocket::open(crate::net::netlink::ROUTE) else {
            return;
        };
        let addrs = host_addresses(&mut sock).unwrap();
        assert!(
            addrs.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)),
            "{addrs:?}"
        );
    }
}
