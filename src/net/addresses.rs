//! The filtered sandbox's address plan, in one place: where nsbox's resolver listens, the
//! egress proxy's port, the sandbox's own IPv6 address, and the resolv.conf that points at the
//! resolver. Everything here exists only inside the sandbox's network namespace, on loopback,
//! in ranges the sandbox can never reach outside anyway. The resolver, the proxy, the nftables
//! rules and the loopback set-up all read these; nothing else may define an address.

use std::net::Ipv6Addr;

/// Where the resolver listens inside the sandbox.
pub const RESOLVER_ADDR: [u8; 4] = [127, 0, 0, 53];
/// The sandbox's /etc/resolv.conf in filtered mode.
pub const RESOLV_CONF: &str = "# nsbox --net filtered: nsbox's resolver answers names the policy allows\nnameserver 127.0.0.53\n";

/// The proxy's port on the sandbox's loopback addresses (below 1024: the workload could not
/// take it even if it were free).
pub const PROXY_PORT: u16 = 888;
const _: () = assert!(PROXY_PORT < 1024);
/// The sandbox's own IPv6 address on loopback (a unique-local address: "nsbox" in hex).
pub const SANDBOX_V6: Ipv6Addr = Ipv6Addr::new(0xfd6e, 0x7362, 0x6f78, 0, 0, 0, 0, 0x53);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_names_the_resolver_address() {
        let [a, b, c, d] = RESOLVER_ADDR;
        assert!(RESOLV_CONF.contains(&format!("nameserver {a}.{b}.{c}.{d}\n")));
    }

    #[test]
    fn the_sandbox_addresses_are_loopback_or_unique_local() {
        assert!(std::net::Ipv4Addr::from(RESOLVER_ADDR).is_loopback());
        assert_eq!(SANDBOX_V6.segments()[0] & 0xfe00, 0xfc00);
    }
}
