//! The nftables ruleset inside a filtered sandbox's network namespace, as a plan (plain data,
//! unit-tested) and its encoding as one nf_tables netlink transaction.
//!
//! ```text
//! table inet nsbox {
//!   set allow4 { type ipv4_addr; flags timeout; }    # filled by the resolver
//!   set allow6 { type ipv6_addr; flags timeout; }
//!   chain nat_out { type nat hook output priority -100; policy accept;
//!     ip daddr 127.0.0.0/8 accept                    # the sandbox's own addresses stay local
//!     ip6 daddr { ::1, fd6e:7362:6f78::53 } accept
//!     <denied range> [tcp dport P] accept            # deny wins: never redirected
//!     meta l4proto tcp ip daddr @allow4 redirect to :PROXY
//!     meta l4proto tcp ip6 daddr @allow6 redirect to :PROXY
//!     meta l4proto tcp <allowed range> [tcp dport P] redirect to :PROXY
//!   }
//!   chain report_out { type filter hook output priority -50; policy accept;
//!     <the sandbox's own addresses> accept           # (redirected connections included)
//!     limit rate 20/second burst 50 log group 1      # reported (see `nflog`); own transaction
//!   }
//!   chain filter_out { type filter hook output priority 0; policy drop;
//!     ip daddr 127.0.0.0/8 accept                    # loopback: resolver, proxy, own services
//!     ip6 daddr { ::1, fd6e:7362:6f78::53 } accept  # the sandbox's own addresses
//!     meta l4proto tcp reject with tcp reset         # everything else fails at once
//!     reject with icmpx admin-prohibited
//!   }
//! }
//! ```
//!
//! The nat chain runs first, so a redirected connection reaches the filter chain with a
//! loopback destination; every other packet leaving the sandbox is rejected. Nothing here runs
//! in the host's namespace.

use std::net::IpAddr;
use std::time::Duration;

use super::netlink::{
    MessageBuf, NetlinkSocket, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST,
};
use super::ranges::Cidr;

/// Rejected packets reported per second at most (and in a burst): enough to see what a
/// workload tried, too few to keep the supervisor busy.
pub const REPORT_RATE: u64 = 20;
pub const REPORT_BURST: u32 = 50;
/// Bytes of a reported packet copied: the IP and transport headers.
pub const REPORT_SNAPLEN: u32 = 64;

/// The table's name inside the sandbox's namespace.
pub const TABLE: &str = "nsbox";
pub const SET_V4: &str = "allow4";
pub const SET_V6: &str = "allow6";
const SET_ID_V4: u32 = 1;
const SET_ID_V6: u32 = 2;

// nfnetlink / nf_tables numbers (linux/netfilter/nfnetlink.h, nf_tables.h).
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFPROTO_INET: u8 = 1;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
const NF_INET_LOCAL_OUT: u32 = 3;
const NF_DROP: i32 = 0;
const NF_ACCEPT: i32 = 1;
const NFT_SET_TIMEOUT: u32 = 0x10;
/// nft's datatype numbers, so `nft list ruleset` shows the sets properly.
const TYPE_IPADDR: u32 = 7;
const TYPE_IP6ADDR: u32 = 8;
const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;
const NFT_META_NFPROTO: u32 = 15;
/// `NFT_CT_STATE`: the connection's state bits (host byte order, 32 bits).
const NFT_CT_STATE: u32 = 0;
/// `NF_CT_STATE_BIT(IP_CT_ESTABLISHED) | NF_CT_STATE_BIT(IP_CT_RELATED)`.
const CT_ESTABLISHED_OR_RELATED: u32 = 0x2 | 0x4;
const IPPROTO_UDP: u8 = 17;
/// Where a pod's DNS queries are redirected: the resolver on 127.0.0.1 (see
/// [`Ruleset::for_pod`]).
pub const DNS_PORT: u16 = 53;
const NFT_META_L4PROTO: u32 = 16;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 2;
const NFT_REJECT_TCP_RST: u32 = 1;
const NFT_REJECT_ICMPX_UNREACH: u32 = 2;
const NFT_REJECT_ICMPX_ADMIN_PROHIBITED: u8 = 3;
const IPPROTO_TCP: u8 = 6;

// Attribute numbers.
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;

/// One step of a rule. Every step works on register 1 (16 bytes), except verdicts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// Load a meta key (`NFT_META_*`).
    Meta(u32),
    /// Load bytes of a header.
    Payload {
        base: u32,
        offset: u32,
        len: u32,
    },
    /// reg1 &= mask.
    Mask(Vec<u8>),
    /// Continue only if reg1 == these bytes.
    CmpEq(Vec<u8>),
    /// Continue only if reg1 != these bytes.
    CmpNeq(Vec<u8>),
    /// Load a conntrack key (`NFT_CT_*`) of the packet's connection.
    Ct(u32),
    /// Continue only if reg1 is in the named set.
    Lookup {
        set: &'static str,
        set_id: u32,
    },
    /// reg1 = bytes.
    Load(Vec<u8>),
    /// Redirect to the port in reg1 on the loopback address.
    Redirect,
    /// Accept (no further rules of this chain).
    Accept,
    RejectTcpReset,
    RejectAdminProhibited,
    /// Continue at most `rate` times a second (bursts of `burst`).
    Limit {
        rate: u64,
        burst: u32,
    },
    /// Send the packet's first bytes to nfnetlink_log group `group`.
    Log {
        group: u16,
    },
}

/// One rule, with a note saying why it is there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RulePlan {
    pub chain: &'static str,
    pub exprs: Vec<Expr>,
    pub why: String,
}

/// A base chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainPlan {
    pub name: &'static str,
    pub kind: &'static str,
    pub priority: i32,
    pub policy_accept: bool,
}

/// Everything the sandbox's namespace gets, before it is encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    pub chains: Vec<ChainPlan>,
    pub rules: Vec<RulePlan>,
}

impl Ruleset {
    /// The ruleset for a proxy on `proxy_port` (both loopback addresses), with `allowed` ranges
    /// (and ports) redirected regardless of DNS and `denied` ranges never redirected.
    pub fn plan(
        proxy_port: u16,
        allowed: &[(Cidr, Option<u16>)],
        denied: &[(Cidr, Option<u16>)],
    ) -> Ruleset {
        let chains = vec![
            ChainPlan {
                name: "nat_out",
                kind: "nat",
                priority: -100,
                policy_accept: true,
            },
            ChainPlan {
                name: "filter_out",
                kind: "filter",
                priority: 0,
                policy_accept: false,
            },
        ];
        let mut rules = Vec::new();
        // The sandbox's own addresses are never redirected, whatever range a rule names
        // (`--allow 0.0.0.0/0` must not send the sandbox's loopback traffic to the proxy).
        for (family, offset, len, value) in own_addresses() {
            rules.push(RulePlan {
                chain: "nat_out",
                exprs: vec![
                    Expr::Meta(NFT_META_NFPROTO),
                    Expr::CmpEq(vec![family]),
                    Expr::Payload {
                        base: NFT_PAYLOAD_NETWORK_HEADER,
                        offset,
                        len,
                    },
                    Expr::CmpEq(value),
                    Expr::Accept,
                ],
                why: "the sandbox's own addresses stay local".into(),
            });
        }
        let redirect = |mut exprs: Vec<Expr>| {
            exprs.push(Expr::Load(proxy_port.to_be_bytes().to_vec()));
            exprs.push(Expr::Redirect);
            exprs
        };
        for (cidr, port) in denied {
            let mut exprs = match_range(cidr, *port);
            exprs.push(Expr::Accept);
            rules.push(RulePlan {
                chain: "nat_out",
                exprs,
                why: format!("denied {cidr}{}: never redirected", port_note(*port)),
            });
        }
        for (family, set, set_id, offset, len) in [
            (NFPROTO_IPV4, SET_V4, SET_ID_V4, 16, 4),
            (NFPROTO_IPV6, SET_V6, SET_ID_V6, 24, 16),
        ] {
            rules.push(RulePlan {
                chain: "nat_out",
                exprs: redirect(vec![
                    Expr::Meta(NFT_META_L4PROTO),
                    Expr::CmpEq(vec![IPPROTO_TCP]),
                    Expr::Meta(NFT_META_NFPROTO),
                    Expr::CmpEq(vec![family]),
                    Expr::Payload {
                        base: NFT_PAYLOAD_NETWORK_HEADER,
                        offset,
                        len,
                    },
                    Expr::Lookup { set, set_id },
                ]),
                why: format!(
                    "TCP to addresses allowed names resolved to ({set}) goes to the proxy"
                ),
            });
        }
        for (cidr, port) in allowed {
            rules.push(RulePlan {
                chain: "nat_out",
                exprs: redirect(match_range(cidr, *port)),
                why: format!("allowed {cidr}{} goes to the proxy", port_note(*port)),
            });
        }
        for (family, offset, len, value) in own_addresses() {
            rules.push(RulePlan {
                chain: "filter_out",
                exprs: vec![
                    Expr::Meta(NFT_META_NFPROTO),
                    Expr::CmpEq(vec![family]),
                    Expr::Payload {
                        base: NFT_PAYLOAD_NETWORK_HEADER,
                        offset,
                        len,
                    },
                    Expr::CmpEq(value),
                    Expr::Accept,
                ],
                why: "the sandbox's own addresses: the resolver, the proxy after redirection, \
                      its own services"
                    .into(),
            });
        }
        rules.push(RulePlan {
            chain: "filter_out",
            exprs: vec![
                Expr::Meta(NFT_META_L4PROTO),
                Expr::CmpEq(vec![IPPROTO_TCP]),
                Expr::RejectTcpReset,
            ],
            why: "any other TCP: connection refused at once".into(),
        });
        rules.push(RulePlan {
            chain: "filter_out",
            exprs: vec![Expr::RejectAdminProhibited],
            why: "everything else (UDP, QUIC, ICMP, other protocols): rejected at once".into(),
        });
        Ruleset { chains, rules }
    }

    /// The ruleset in a pod's network namespace (the OCI runtime's `io.nsbox.net.*`
    /// annotations), where the containers' resolv.conf is the engine's, not nsbox's, and the
    /// pod may serve connections that come in:
    /// - DNS to any address (UDP and TCP port 53, IPv4) is redirected to nsbox's resolver,
    ///   which listens on 127.0.0.1:53 there, before anything else is decided;
    /// - packets of connections already established or related to one leave (the replies to
    ///   connections that came in; an outgoing connection was redirected or refused at its
    ///   first packet, so it is established only through the proxy).
    pub fn for_pod(mut self) -> Ruleset {
        let dns = [IPPROTO_UDP, IPPROTO_TCP].map(|proto| RulePlan {
            chain: "nat_out",
            exprs: vec![
                Expr::Meta(NFT_META_NFPROTO),
                Expr::CmpEq(vec![NFPROTO_IPV4]),
                Expr::Meta(NFT_META_L4PROTO),
                Expr::CmpEq(vec![proto]),
                Expr::Payload {
                    base: NFT_PAYLOAD_TRANSPORT_HEADER,
                    offset: 2,
                    len: 2,
                },
                Expr::CmpEq(DNS_PORT.to_be_bytes().to_vec()),
                Expr::Load(DNS_PORT.to_be_bytes().to_vec()),
                Expr::Redirect,
            ],
            why: format!(
                "DNS ({}) to any address goes to nsbox's resolver",
                if proto == IPPROTO_UDP { "UDP" } else { "TCP" }
            ),
        });
        let mut rules: Vec<RulePlan> = dns.into_iter().collect();
        rules.push(established("filter_out"));
        rules.append(&mut self.rules);
        self.rules = rules;
        self
    }

    /// [`Ruleset::report`] for a pod: replies to connections that came in are not reported.
    pub fn report_for_pod(group: u16) -> Ruleset {
        let mut r = Ruleset::report(group);
        r.rules.insert(0, established("report_out"));
        r
    }

    /// The chain that reports what the filter chain rejects: every packet leaving the sandbox
    /// for an address other than its own (after redirection: the redirected ones are its own)
    /// goes to nfnetlink_log `group`, at most [`REPORT_RATE`] a second. Loaded after the
    /// ruleset, on its own: without nfnetlink_log in the kernel the sandbox works the same,
    /// unreported.
    pub fn report(group: u16) -> Ruleset {
        let mut rules: Vec<RulePlan> = own_addresses()
            .into_iter()
            .map(|(family, offset, len, value)| RulePlan {
                chain: "report_out",
                exprs: vec![
                    Expr::Meta(NFT_META_NFPROTO),
                    Expr::CmpEq(vec![family]),
                    Expr::Payload {
                        base: NFT_PAYLOAD_NETWORK_HEADER,
                        offset,
                        len,
                    },
                    Expr::CmpEq(value),
                    Expr::Accept,
                ],
                why: "the sandbox's own addresses (and what was redirected to the proxy)".into(),
            })
            .collect();
        rules.push(RulePlan {
            chain: "report_out",
            exprs: vec![
                Expr::Limit {
                    rate: REPORT_RATE,
                    burst: REPORT_BURST,
                },
                Expr::Log { group },
            ],
            why: "what filter_out rejects is reported (rate-limited)".into(),
        });
        Ruleset {
            chains: vec![ChainPlan {
                name: "report_out",
                kind: "filter",
                // After nat_out (redirection), before filter_out (the rejects).
                priority: -50,
                policy_accept: true,
            }],
            rules,
        }
    }

    /// The whole ruleset as one transaction (all or nothing).
    pub fn encode(&self, sock: &mut NetlinkSocket) -> MessageBuf {
        self.encode_into(sock, true)
    }

    /// More chains and rules for the table the ruleset made, as one transaction.
    pub fn encode_more(&self, sock: &mut NetlinkSocket) -> MessageBuf {
        self.encode_into(sock, false)
    }

    fn encode_into(&self, sock: &mut NetlinkSocket, with_table: bool) -> MessageBuf {
        let mut m = MessageBuf::new();
        batch_begin(&mut m, sock.seq());
        let create = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
        if !with_table {
            self.encode_chains(&mut m, sock);
            batch_end(&mut m, sock.seq());
            return m;
        }
        m.begin(
            nft_type(NFT_MSG_NEWTABLE),
            create,
            sock.seq(),
            &nfgen(NFPROTO_INET),
        );
        m.attr_str(1, TABLE); // NFTA_TABLE_NAME
        m.attr_be32(2, 0); // NFTA_TABLE_FLAGS
        m.end();
        for (name, id, key_type, key_len) in [
            (SET_V4, SET_ID_V4, TYPE_IPADDR, 4),
            (SET_V6, SET_ID_V6, TYPE_IP6ADDR, 16),
        ] {
            m.begin(
                nft_type(NFT_MSG_NEWSET),
                create,
                sock.seq(),
                &nfgen(NFPROTO_INET),
            );
            m.attr_str(1, TABLE); // NFTA_SET_TABLE
            m.attr_str(2, name); // NFTA_SET_NAME
            m.attr_be32(3, NFT_SET_TIMEOUT); // NFTA_SET_FLAGS
            m.attr_be32(4, key_type); // NFTA_SET_KEY_TYPE
            m.attr_be32(5, key_len); // NFTA_SET_KEY_LEN
            m.attr_be32(10, id); // NFTA_SET_ID
            m.end();
        }
        self.encode_chains(&mut m, sock);
        batch_end(&mut m, sock.seq());
        m
    }

    fn encode_chains(&self, m: &mut MessageBuf, sock: &mut NetlinkSocket) {
        let create = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
        for chain in &self.chains {
            m.begin(
                nft_type(NFT_MSG_NEWCHAIN),
                create,
                sock.seq(),
                &nfgen(NFPROTO_INET),
            );
            m.attr_str(1, TABLE); // NFTA_CHAIN_TABLE
            m.attr_str(3, chain.name); // NFTA_CHAIN_NAME
            let hook = m.nest_begin(4); // NFTA_CHAIN_HOOK
            m.attr_be32(1, NF_INET_LOCAL_OUT); // NFTA_HOOK_HOOKNUM
            m.attr_be32(2, chain.priority as u32); // NFTA_HOOK_PRIORITY
            m.nest_end(hook);
            m.attr_be32(
                5,
                if chain.policy_accept {
                    NF_ACCEPT
                } else {
                    NF_DROP
                } as u32,
            );
            m.attr_str(7, chain.kind); // NFTA_CHAIN_TYPE
            m.end();
        }
        let append = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND;
        for rule in &self.rules {
            m.begin(
                nft_type(NFT_MSG_NEWRULE),
                append,
                sock.seq(),
                &nfgen(NFPROTO_INET),
            );
            m.attr_str(1, TABLE); // NFTA_RULE_TABLE
            m.attr_str(2, rule.chain); // NFTA_RULE_CHAIN
            let list = m.nest_begin(4); // NFTA_RULE_EXPRESSIONS
            for expr in &rule.exprs {
                encode_expr(m, expr);
            }
            m.nest_end(list);
            m.end();
        }
    }
}

/// (family, header offset, length, value) of the sandbox's own destinations: 127.0.0.0/8 (one
/// byte: 127), ::1 and the sandbox's unique-local address (see `rtnl::add_loopback_addresses`).
fn own_addresses() -> [(u8, u32, u32, Vec<u8>); 3] {
    [
        (NFPROTO_IPV4, 16, 1, vec![127]),
        (
            NFPROTO_IPV6,
            24,
            16,
            std::net::Ipv6Addr::LOCALHOST.octets().to_vec(),
        ),
        (
            NFPROTO_IPV6,
            24,
            16,
            super::addresses::SANDBOX_V6.octets().to_vec(),
        ),
    ]
}

/// Accepts packets of established connections and those related to one, in `chain`.
fn established(chain: &'static str) -> RulePlan {
    RulePlan {
        chain,
        exprs: vec![
            Expr::Ct(NFT_CT_STATE),
            Expr::Mask(CT_ESTABLISHED_OR_RELATED.to_ne_bytes().to_vec()),
            Expr::CmpNeq(vec![0; 4]),
            Expr::Accept,
        ],
        why: "replies to connections that came in (and what relates to them)".into(),
    }
}

/// Removes nsbox's table (and with it every chain, rule and set in it) from the namespace the
/// socket was opened in: for a pod's namespace, which outlives the container that filtered it.
pub fn encode_delete_table(sock: &mut NetlinkSocket) -> MessageBuf {
    let mut m = MessageBuf::new();
    batch_begin(&mut m, sock.seq());
    m.begin(
        nft_type(NFT_MSG_DELTABLE),
        NLM_F_REQUEST | NLM_F_ACK,
        sock.seq(),
        &nfgen(NFPROTO_INET),
    );
    m.attr_str(1, TABLE); // NFTA_TABLE_NAME
    m.end();
    batch_end(&mut m, sock.seq());
    m
}

fn port_note(port: Option<u16>) -> String {
    port.map(|p| format!(" port {p}")).unwrap_or_default()
}

/// Matches TCP to `cidr` (and `port`).
fn match_range(cidr: &Cidr, port: Option<u16>) -> Vec<Expr> {
    let (family, offset, len, addr) = match cidr.addr {
        IpAddr::V4(a) => (NFPROTO_IPV4, 16, 4, a.octets().to_vec()),
        IpAddr::V6(a) => (NFPROTO_IPV6, 24, 16, a.octets().to_vec()),
    };
    let mut exprs = vec![
        Expr::Meta(NFT_META_L4PROTO),
        Expr::CmpEq(vec![IPPROTO_TCP]),
        Expr::Meta(NFT_META_NFPROTO),
        Expr::CmpEq(vec![family]),
        Expr::Payload {
            base: NFT_PAYLOAD_NETWORK_HEADER,
            offset,
            len,
        },
    ];
    if !cidr.is_host() {
        exprs.push(Expr::Mask(cidr.mask_bytes()));
    }
    exprs.push(Expr::CmpEq(addr));
    if let Some(port) = port {
        exprs.push(Expr::Payload {
            base: NFT_PAYLOAD_TRANSPORT_HEADER,
            offset: 2,
            len: 2,
        });
        exprs.push(Expr::CmpEq(port.to_be_bytes().to_vec()));
    }
    exprs
}

fn nft_type(msg: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | msg
}

/// The nfgenmsg header: family, version 0, resource id 0.
fn nfgen(family: u8) -> [u8; 4] {
    [family, 0, 0, 0]
}

fn batch_begin(m: &mut MessageBuf, seq: u32) {
    let res = NFNL_SUBSYS_NFTABLES.to_be_bytes();
    m.begin(
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        seq,
        &[0, 0, res[0], res[1]],
    );
    m.end();
}

fn batch_end(m: &mut MessageBuf, seq: u32) {
    let res = NFNL_SUBSYS_NFTABLES.to_be_bytes();
    m.begin(
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        seq,
        &[0, 0, res[0], res[1]],
    );
    m.end();
}

fn data_value(m: &mut MessageBuf, kind: u16, bytes: &[u8]) {
    let nest = m.nest_begin(kind);
    m.attr(NFTA_DATA_VALUE, bytes);
    m.nest_end(nest);
}

fn encode_expr(m: &mut MessageBuf, expr: &Expr) {
    let elem = m.nest_begin(NFTA_LIST_ELEM);
    let name = match expr {
        Expr::Meta(_) => "meta",
        Expr::Payload { .. } => "payload",
        Expr::Mask(_) => "bitwise",
        Expr::CmpEq(_) | Expr::CmpNeq(_) => "cmp",
        Expr::Ct(_) => "ct",
        Expr::Lookup { .. } => "lookup",
        Expr::Load(_) | Expr::Accept => "immediate",
        Expr::Redirect => "redir",
        Expr::RejectTcpReset | Expr::RejectAdminProhibited => "reject",
        Expr::Limit { .. } => "limit",
        Expr::Log { .. } => "log",
    };
    m.attr_str(NFTA_EXPR_NAME, name);
    let data = m.nest_begin(NFTA_EXPR_DATA);
    match expr {
        Expr::Meta(key) => {
            m.attr_be32(1, NFT_REG_1); // NFTA_META_DREG
            m.attr_be32(2, *key); // NFTA_META_KEY
        }
        Expr::Payload { base, offset, len } => {
            m.attr_be32(1, NFT_REG_1); // NFTA_PAYLOAD_DREG
            m.attr_be32(2, *base);
            m.attr_be32(3, *offset);
            m.attr_be32(4, *len);
        }
        Expr::Mask(mask) => {
            m.attr_be32(1, NFT_REG_1); // NFTA_BITWISE_SREG
            m.attr_be32(2, NFT_REG_1); // NFTA_BITWISE_DREG
            m.attr_be32(3, mask.len() as u32); // NFTA_BITWISE_LEN
            data_value(m, 4, mask); // NFTA_BITWISE_MASK
            data_value(m, 5, &vec![0u8; mask.len()]); // NFTA_BITWISE_XOR
        }
        Expr::CmpEq(bytes) => {
            m.attr_be32(1, NFT_REG_1); // NFTA_CMP_SREG
            m.attr_be32(2, 0); // NFTA_CMP_OP: NFT_CMP_EQ
            data_value(m, 3, bytes); // NFTA_CMP_DATA
        }
        Expr::CmpNeq(bytes) => {
            m.attr_be32(1, NFT_REG_1); // NFTA_CMP_SREG
            m.attr_be32(2, 1); // NFTA_CMP_OP: NFT_CMP_NEQ
            data_value(m, 3, bytes); // NFTA_CMP_DATA
        }
        Expr::Ct(key) => {
            m.attr_be32(1, NFT_REG_1); // NFTA_CT_DREG
            m.attr_be32(2, *key); // NFTA_CT_KEY
        }
        Expr::Lookup { set, set_id } => {
            m.attr_str(1, set); // NFTA_LOOKUP_SET
            m.attr_be32(2, NFT_REG_1); // NFTA_LOOKUP_SREG
            m.attr_be32(4, *set_id); // NFTA_LOOKUP_SET_ID
        }
        Expr::Load(bytes) => {
            m.attr_be32(1, NFT_REG_1); // NFTA_IMMEDIATE_DREG
            data_value(m, 2, bytes); // NFTA_IMMEDIATE_DATA
        }
        Expr::Accept => {
            m.attr_be32(1, NFT_REG_VERDICT);
            let imm = m.nest_begin(2); // NFTA_IMMEDIATE_DATA
            let verdict = m.nest_begin(NFTA_DATA_VERDICT);
            m.attr_be32(NFTA_VERDICT_CODE, NF_ACCEPT as u32);
            m.nest_end(verdict);
            m.nest_end(imm);
        }
        Expr::Redirect => {
            m.attr_be32(1, NFT_REG_1); // NFTA_REDIR_REG_PROTO_MIN
            m.attr_be32(2, NFT_REG_1); // NFTA_REDIR_REG_PROTO_MAX
            m.attr_be32(3, NF_NAT_RANGE_PROTO_SPECIFIED); // NFTA_REDIR_FLAGS
        }
        Expr::RejectTcpReset => {
            m.attr_be32(1, NFT_REJECT_TCP_RST);
            m.attr(2, &[0]);
        }
        Expr::RejectAdminProhibited => {
            m.attr_be32(1, NFT_REJECT_ICMPX_UNREACH);
            m.attr(2, &[NFT_REJECT_ICMPX_ADMIN_PROHIBITED]);
        }
        Expr::Limit { rate, burst } => {
            m.attr_be64(1, *rate); // NFTA_LIMIT_RATE
            m.attr_be64(2, 1); // NFTA_LIMIT_UNIT: per second
            m.attr_be32(3, *burst); // NFTA_LIMIT_BURST
            m.attr_be32(4, 0); // NFTA_LIMIT_TYPE: packets
            m.attr_be32(5, 0); // NFTA_LIMIT_FLAGS
        }
        Expr::Log { group } => {
            m.attr(1, &group.to_be_bytes()); // NFTA_LOG_GROUP
            m.attr_be32(3, REPORT_SNAPLEN); // NFTA_LOG_SNAPLEN
            m.attr(4, &1u16.to_be_bytes()); // NFTA_LOG_QTHRESHOLD: each report at once
        }
    }
    m.nest_end(data);
    m.nest_end(elem);
}

/// Makes `addrs` members of the allowed sets for `timeout`, as one transaction. An address
/// already present is removed and added again, which sets its timeout on every kernel (newer
/// kernels update a timeout in place, older ones keep the old one).
pub fn encode_allow(sock: &mut NetlinkSocket, addrs: &[IpAddr], timeout: Duration) -> MessageBuf {
    let mut m = MessageBuf::new();
    batch_begin(&mut m, sock.seq());
    let v4: Vec<Vec<u8>> = addrs
        .iter()
        .filter_map(|a| match a {
            IpAddr::V4(v4) => Some(v4.octets().to_vec()),
            IpAddr::V6(_) => None,
        })
        .collect();
    let v6: Vec<Vec<u8>> = addrs
        .iter()
        .filter_map(|a| match a {
            IpAddr::V6(v6) => Some(v6.octets().to_vec()),
            IpAddr::V4(_) => None,
        })
        .collect();
    let ms = timeout.as_millis().min(u128::from(u64::MAX)) as u64;
    for (set, keys) in [(SET_V4, v4), (SET_V6, v6)] {
        if keys.is_empty() {
            continue;
        }
        for (msg, flags, with_timeout) in [
            (NFT_MSG_NEWSETELEM, NLM_F_CREATE, true),
            (NFT_MSG_DELSETELEM, 0, false),
            (NFT_MSG_NEWSETELEM, NLM_F_CREATE | NLM_F_EXCL, true),
        ] {
            m.begin(
                nft_type(msg),
                NLM_F_REQUEST | NLM_F_ACK | flags,
                sock.seq(),
                &nfgen(NFPROTO_INET),
            );
            m.attr_str(1, TABLE); // NFTA_SET_ELEM_LIST_TABLE
            m.attr_str(2, set); // NFTA_SET_ELEM_LIST_SET
            let list = m.nest_begin(3); // NFTA_SET_ELEM_LIST_ELEMENTS
            for key in &keys {
                let elem = m.nest_begin(NFTA_LIST_ELEM);
                data_value(&mut m, 1, key); // NFTA_SET_ELEM_KEY
                if with_timeout {
                    m.attr_be64(4, ms); // NFTA_SET_ELEM_TIMEOUT (milliseconds)
                }
                m.nest_end(elem);
            }
            m.nest_end(list);
            m.end();
        }
    }
    batch_end(&mut m, sock.seq());
    m
}

/// A readable form of a rule, for tests and debugging (close to `nft list ruleset`).
pub fn describe(rule: &RulePlan) -> String {
    let parts: Vec<String> = rule
        .exprs
        .iter()
        .map(|e| match e {
            Expr::Meta(NFT_META_L4PROTO) => "l4proto".into(),
            Expr::Meta(NFT_META_NFPROTO) => "nfproto".into(),
            Expr::Meta(k) => format!("meta {k}"),
            Expr::Payload { base, offset, len } => format!("payload {base}@{offset}:{len}"),
            Expr::Mask(m) => format!("& {}", hex(m)),
            Expr::CmpEq(b) => format!("== {}", hex(b)),
            Expr::CmpNeq(b) => format!("!= {}", hex(b)),
            Expr::Ct(NFT_CT_STATE) => "ct state".into(),
            Expr::Ct(k) => format!("ct {k}"),
            Expr::Lookup { set, .. } => format!("@{set}"),
            Expr::Load(b) => format!("load {}", hex(b)),
            Expr::Redirect => "redirect".into(),
            Expr::Accept => "accept".into(),
            Expr::RejectTcpReset => "reject tcp-reset".into(),
            Expr::RejectAdminProhibited => "reject admin-prohibited".into(),
            Expr::Limit { rate, burst } => format!("limit {rate}/s burst {burst}"),
            Expr::Log { group } => format!("log group {group}"),
        })
        .collect();
    format!("{}: {}", rule.chain, parts.join(" "))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        let (a, p) = s.split_once('/').unwrap();
        Cidr::new(a.parse().unwrap(), p.parse().unwrap())
    }

    #[test]
    fn the_filter_chain_lets_only_loopback_through_and_rejects_the_rest() {
        let r = Ruleset::plan(888, &[], &[]);
        let filter: Vec<String> = r
            .rules
            .iter()
            .filter(|r| r.chain == "filter_out")
            .map(describe)
            .collect();
        assert_eq!(
            filter,
            [
                "filter_out: nfproto == 02 payload 1@16:1 == 7f accept",
                "filter_out: nfproto == 0a payload 1@24:16 == 00000000000000000000000000000001 accept",
                "filter_out: nfproto == 0a payload 1@24:16 == fd6e73626f7800000000000000000053 accept",
                "filter_out: l4proto == 06 reject tcp-reset",
                "filter_out: reject admin-prohibited",
            ]
        );
        let chains: Vec<_> = r.chains.iter().map(|c| (c.name, c.policy_accept)).collect();
        assert_eq!(chains, [("nat_out", true), ("filter_out", false)]);
    }

    #[test]
    fn the_sandboxs_own_addresses_are_never_redirected() {
        let r = Ruleset::plan(888, &[(cidr("0.0.0.0/0"), None)], &[]);
        let nat: Vec<String> = r
            .rules
            .iter()
            .filter(|r| r.chain == "nat_out")
            .map(describe)
            .collect();
        assert_eq!(nat[0], "nat_out: nfproto == 02 payload 1@16:1 == 7f accept");
        assert!(nat[1].contains("00000000000000000000000000000001 accept"));
        assert!(nat[2].contains("fd6e73626f7800000000000000000053 accept"));
        assert!(nat.last().unwrap().contains("redirect"));
    }

    #[test]
    fn denied_ranges_come_before_every_redirect() {
        let r = Ruleset::plan(
            888,
            &[(cidr("203.0.113.0/24"), Some(5432))],
            &[(cidr("203.0.113.9/32"), None)],
        );
        let nat: Vec<String> = r
            .rules
            .iter()
            .filter(|r| r.chain == "nat_out")
            .skip(3) // the sandbox's own addresses, as in the filter chain
            .map(describe)
            .collect();
        assert_eq!(
            nat,
            [
                "nat_out: l4proto == 06 nfproto == 02 payload 1@16:4 == cb007109 accept",
                "nat_out: l4proto == 06 nfproto == 02 payload 1@16:4 @allow4 load 0378 redirect",
                "nat_out: l4proto == 06 nfproto == 0a payload 1@24:16 @allow6 load 0378 redirect",
                "nat_out: l4proto == 06 nfproto == 02 payload 1@16:4 & ffffff00 == cb007100 payload 2@2:2 == 1538 load 0378 redirect",
            ]
        );
    }

    #[test]
    fn rejected_packets_are_reported_at_a_bounded_rate() {
        let r = Ruleset::report(1);
        assert_eq!(
            (
                r.chains[0].name,
                r.chains[0].priority,
                r.chains[0].policy_accept
            ),
            ("report_out", -50, true)
        );
        let rules: Vec<String> = r.rules.iter().map(describe).collect();
        assert_eq!(rules.len(), 4);
        assert!(
            rules[..3].iter().all(|r| r.ends_with("accept")),
            "{rules:?}"
        );
        assert_eq!(
            rules[3], "report_out: limit 20/s burst 50 log group 1",
            "the sandbox's own addresses first, then everything else"
        );
    }

    #[test]
    fn a_pods_ruleset_sends_dns_to_the_resolver_and_lets_replies_out_first() {
        let pod = Ruleset::plan(888, &[], &[]).for_pod();
        let text: Vec<String> = pod.rules.iter().map(describe).collect();
        // DNS (UDP, TCP) is redirected before the own-address rules could let it through.
        assert!(
            text[0].starts_with(
                "nat_out: nfproto == 02 l4proto == 11 payload 2@2:2 == 0035 load 0035 redirect"
            ),
            "{text:?}"
        );
        assert!(
            text[1].starts_with("nat_out: nfproto == 02 l4proto == 06"),
            "{text:?}"
        );
        // Replies leave before the filter's first reject.
        let first_filter = text
            .iter()
            .position(|t| t.starts_with("filter_out"))
            .unwrap();
        assert!(text[first_filter].contains("ct state"), "{text:?}");
        assert!(
            text[first_filter].ends_with("!= 00000000 accept"),
            "{text:?}"
        );
        // Everything of the plain ruleset follows, in its order.
        let plain = Ruleset::plan(888, &[], &[]);
        assert_eq!(pod.rules.len(), plain.rules.len() + 3);
        assert!(pod.rules.ends_with(&plain.rules));
        let report = Ruleset::report_for_pod(1);
        assert!(describe(&report.rules[0]).contains("ct state"));
        // The plain ruleset has none of it.
        assert!(plain
            .rules
            .iter()
            .all(|r| !describe(r).contains("ct state")));
    }

    #[test]
    fn the_transaction_is_framed_as_one_batch() {
        let Ok(mut sock) = NetlinkSocket::open(crate::net::netlink::NETFILTER) else {
            return; // no netlink here (a restricted build sandbox): encoding needs only seq()
        };
        let m = Ruleset::plan(888, &[], &[]).encode(&mut sock);
        let msgs = super::super::netlink::split_messages(m.bytes());
        assert_eq!(msgs.first().map(|m| m.kind), Some(NFNL_MSG_BATCH_BEGIN));
        assert_eq!(msgs.last().map(|m| m.kind), Some(NFNL_MSG_BATCH_END));
        // table + 2 sets + 2 chains + 5 + 5 rules, each acknowledged
        assert_eq!(m.acked().len(), 1 + 2 + 2 + 5 + 5);
        let e = encode_allow(
            &mut sock,
            &["203.0.113.7".parse().unwrap()],
            Duration::from_secs(60),
        );
        assert_eq!(e.acked().len(), 3, "add, delete, add again");
    }
}
