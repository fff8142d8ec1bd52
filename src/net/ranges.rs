//! Address ranges a filtered sandbox never reaches through a name unless a rule names the range
//! explicitly: loopback, private and shared address space, link-local (cloud metadata lives at
//! 169.254.169.254), unique-local and link-local IPv6, and the IPv6 forms that embed or
//! translate IPv4 addresses (mapped, compatible, NAT64, 6to4, Teredo), so an allowed name can
//! never be pointed at the inside of the host's network (DNS rebinding).
//!
//! Also [`Cidr`], the IP range type the policy and the nftables rules use.
//!
//! Pure data and arithmetic; the host's own addresses are checked separately (they are found
//! at run time, see `rtnl::host_addresses`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An IP range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// A range; `addr` is used as given (host bits are the caller's business).
    pub const fn new(addr: IpAddr, prefix: u8) -> Cidr {
        Cidr { addr, prefix }
    }

    /// A range holding exactly `addr`.
    pub fn host(addr: IpAddr) -> Cidr {
        let prefix = if addr.is_ipv4() { 32 } else { 128 };
        Cidr { addr, prefix }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = prefix_mask_32(self.prefix);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = prefix_mask_128(self.prefix);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }

    /// The network mask as bytes (4 or 16), for the kernel rules.
    pub fn mask_bytes(&self) -> Vec<u8> {
        match self.addr {
            IpAddr::V4(_) => prefix_mask_32(self.prefix).to_be_bytes().to_vec(),
            IpAddr::V6(_) => prefix_mask_128(self.prefix).to_be_bytes().to_vec(),
        }
    }

    /// The range's first address: `addr` with the host bits cleared.
    pub fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(v4) => {
                IpAddr::V4(Ipv4Addr::from(u32::from(v4) & prefix_mask_32(self.prefix)))
            }
            IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(
                u128::from(v6) & prefix_mask_128(self.prefix),
            )),
        }
    }

    /// True for a single address (/32 or /128).
    pub fn is_host(&self) -> bool {
        self.prefix == if self.addr.is_ipv4() { 32 } else { 128 }
    }
}

fn prefix_mask_32(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    }
}

fn prefix_mask_128(prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(prefix.min(128)))
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_host() {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.prefix)
        }
    }
}

/// (network, prefix length, what it is). Order does not matter: ranges are checked one by one.
const BLOCKED_V4: &[([u8; 4], u8, &str)] = &[
    ([0, 0, 0, 0], 8, "\"this network\" 0.0.0.0/8"),
    ([10, 0, 0, 0], 8, "private 10.0.0.0/8"),
    (
        [100, 64, 0, 0],
        10,
        "shared address space (CGNAT) 100.64.0.0/10",
    ),
    ([127, 0, 0, 0], 8, "loopback 127.0.0.0/8"),
    (
        [169, 254, 0, 0],
        16,
        "link-local 169.254.0.0/16 (cloud metadata)",
    ),
    ([172, 16, 0, 0], 12, "private 172.16.0.0/12"),
    ([192, 0, 0, 0], 24, "IETF protocol assignments 192.0.0.0/24"),
    ([192, 168, 0, 0], 16, "private 192.168.0.0/16"),
    ([198, 18, 0, 0], 15, "benchmarking 198.18.0.0/15"),
    ([224, 0, 0, 0], 4, "multicast 224.0.0.0/4"),
    ([240, 0, 0, 0], 4, "reserved 240.0.0.0/4 (and broadcast)"),
];

const BLOCKED_V6: &[([u16; 8], u8, &str)] = &[
    ([0, 0, 0, 0, 0, 0, 0, 0], 128, "unspecified ::"),
    ([0, 0, 0, 0, 0, 0, 0, 1], 128, "loopback ::1"),
    (
        [0, 0, 0, 0, 0, 0xffff, 0, 0],
        96,
        "IPv4-mapped IPv6 ::ffff:0:0/96",
    ),
    ([0, 0, 0, 0, 0, 0, 0, 0], 96, "IPv4-compatible IPv6 ::/96"),
    ([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96, "NAT64 64:ff9b::/96"),
    (
        [0x64, 0xff9b, 1, 0, 0, 0, 0, 0],
        48,
        "local NAT64 64:ff9b:1::/48",
    ),
    ([0x100, 0, 0, 0, 0, 0, 0, 0], 64, "discard-only 100::/64"),
    ([0x2001, 0, 0, 0, 0, 0, 0, 0], 32, "Teredo 2001::/32"),
    ([0x2002, 0, 0, 0, 0, 0, 0, 0], 16, "6to4 2002::/16"),
    ([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7, "unique local fc00::/7"),
    ([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10, "link-local fe80::/10"),
    ([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10, "site-local fec0::/10"),
    ([0xff00, 0, 0, 0, 0, 0, 0, 0], 8, "multicast ff00::/8"),
];

/// The blocked range `ip` falls in, described for messages; `None` for a public address.
pub fn blocked_range(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => BLOCKED_V4.iter().find_map(|(net, len, what)| {
            Cidr::new(IpAddr::V4(Ipv4Addr::from(*net)), *len)
                .contains(IpAddr::V4(v4))
                .then_some(*what)
        }),
        IpAddr::V6(v6) => BLOCKED_V6.iter().find_map(|(net, len, what)| {
            let [a, b, c, d, e, f, g, h] = *net;
            Cidr::new(IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h)), *len)
                .contains(IpAddr::V6(v6))
                .then_some(*what)
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocked(s: &str) -> Option<&'static str> {
        blocked_range(s.parse().unwrap())
    }

    #[test]
    fn the_ranges_security_md_names_are_blocked() {
        for addr in [
            "10.1.2.3",
            "127.0.0.1",
            "127.255.0.9",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "100.127.255.254",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.251",
            "::1",
            "::",
            "::ffff:127.0.0.1",
            "::ffff:8.8.8.8",
            "::127.0.0.1",
            "fd00::1",
            "fc00::1",
            "fe80::1",
            "64:ff9b::a00:1",
            "64:ff9b:1::1",
            "2002:a00:1::1",
            "2001:0:4136:e378::1",
            "ff02::1",
        ] {
            assert!(blocked(addr).is_some(), "{addr} must be blocked");
        }
    }

    #[test]
    fn public_and_documentation_addresses_are_not() {
        for addr in [
            "203.0.113.7",
            "198.51.100.1",
            "192.0.2.53",
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "169.255.0.1",
            "2001:db8::1",
            "2606:4700::1111",
            "2a00:1450::1",
        ] {
            assert_eq!(blocked(addr), None, "{addr} is public");
        }
    }

    #[test]
    fn descriptions_name_the_range() {
        assert!(blocked("169.254.169.254").unwrap().contains("metadata"));
        assert!(blocked("::ffff:10.0.0.1").unwrap().contains("mapped"));
    }
}
