//! The egress policy of a `--net filtered` sandbox, as data: allow and deny rules (host names,
//! `*.suffix` wildcards, IP addresses and CIDR ranges, each with an optional port, `re:`
//! regular expressions over whole names, and a `tcp:` prefix that lets raw TCP through to a
//! name) and the upstream resolvers. Every decision the resolver and the proxy make is a call here, so the
//! whole policy is unit-tested without a network.
//!
//! Semantics, in one place:
//! - a **deny** rule wins over every allow rule;
//! - a name resolves when an allow rule matches it and no port-less deny rule does;
//! - an answer address in a blocked range (see [`super::ranges`]) or one of the host's own
//!   addresses is refused unless an allow rule names an IP range containing it;
//! - a TCP connection is allowed when an allow rule's range (and port) contains its
//!   destination, or when the destination came from a DNS answer for an allowed name whose
//!   rule allows the port. A connection allowed by name must then, on every port, open with a
//!   TLS ClientHello whose SNI or an HTTP/1 request whose Host is an allowed name for that port
//!   (an address a CDN shares between sites opens only the allowed site); anything else (raw
//!   TCP) goes through only when the name's rule says `tcp:` (`tcp:db.example.com:5432`).
//!   Address and range rules name the destination itself, so they carry raw TCP as written.
//!
//! This module parses and decides; it performs no I/O.

use std::net::{IpAddr, SocketAddr};

use super::ranges::{self, Cidr};

/// The prefix of an allow rule that lets raw TCP through to a name (`tcp:db.example.com:5432`).
pub const RAW_TCP_PREFIX: &str = "tcp:";

/// The port DNS upstreams use when none is given.
pub const DNS_PORT: u16 = 53;

/// A rule or upstream that cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("{flag} '{text}': {reason} — hint: use a host name (api.github.com), a wildcard (*.pypi.org), an address or CIDR range (203.0.113.7, 2001:db8::/64), each with an optional :PORT ([2001:db8::1]:443 for IPv6), or re:REGEX; tcp:PATTERN also lets raw TCP through to a name")]
    Pattern {
        flag: &'static str,
        text: String,
        reason: String,
    },
    #[error("{name}='{text}' is not a number of connections — hint: give 1 to 65536 (default {DEFAULT_MAX_CONNECTIONS})")]
    Limit { name: &'static str, text: String },
    #[error("{flag} '{text}': {reason} — hint: give an IP address with an optional port (192.0.2.53, 192.0.2.53:5353, [2001:db8::53]:53)")]
    Upstream {
        flag: &'static str,
        text: String,
        reason: String,
    },
}

/// What a rule matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `*`: every name (the blocked ranges still apply).
    AnyName,
    /// One host name, lowercase, without a trailing dot.
    Name(String),
    /// `*.example.com`: every name strictly below `example.com` (not `example.com` itself).
    Subdomains(String),
    /// `re:REGEX`: names the regular expression matches as a whole, ignoring case.
    Regex(NameRegex),
    /// An address or range.
    Net(Cidr),
}

/// A compiled `re:` pattern (equal when the source is).
#[derive(Debug, Clone)]
pub struct NameRegex {
    pub source: String,
    regex: regex_lite::Regex,
}

impl PartialEq for NameRegex {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for NameRegex {}

/// One allow or deny rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// As the user wrote it, for messages and events.
    pub text: String,
    pub target: Target,
    /// `None`: every port.
    pub port: Option<u16>,
    /// Raw TCP (neither TLS nor HTTP) may go through: `tcp:` rules and every address or range
    /// rule. A name rule without `tcp:` carries only TLS and HTTP, checked by name.
    pub raw_tcp: bool,
}

impl Rule {
    /// Parses one pattern (`flag` names its origin in errors).
    pub fn parse(flag: &'static str, text: &str) -> Result<Rule, PolicyError> {
        let err = |reason: &str| PolicyError::Pattern {
            flag,
            text: text.to_string(),
            reason: reason.to_string(),
        };
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(err("the pattern is empty"));
        }
        if let Some(rest) = trimmed.strip_prefix(RAW_TCP_PREFIX) {
            if flag == "--deny" {
                return Err(err(
                    "'tcp:' belongs to --allow (a deny rule refuses every protocol already)",
                ));
            }
            if rest.starts_with(RAW_TCP_PREFIX) || rest.trim().is_empty() {
                return Err(err("after 'tcp:' comes one pattern"));
            }
            let mut rule = Rule::parse(flag, rest)?;
            rule.text = trimmed.to_string();
            rule.raw_tcp = true;
            return Ok(rule);
        }
        if let Some(source) = trimmed.strip_prefix("re:") {
            // Anchored: a pattern never matches a longer name it merely occurs in
            // ("api\.example\.com" does not match "api.example.com.evil.example").
            let regex = regex_lite::Regex::new(&format!("(?i)^(?:{source})$"))
                .map_err(|e| err(&format!("not a regular expression: {e}")))?;
            return Ok(Rule {
                text: trimmed.to_string(),
                target: Target::Regex(NameRegex {
                    source: source.to_string(),
                    regex,
                }),
                port: None,
                raw_tcp: false,
            });
        }
        let (host, port) = split_port(trimmed).map_err(|r| err(&r))?;
        let target = if host == "*" {
            Target::AnyName
        } else if let Some(suffix) = host.strip_prefix("*.") {
            let name = normalize_name(suffix).ok_or_else(|| {
                err("after '*.' comes a host name (letters, digits, '-', '_', dots)")
            })?;
            Target::Subdomains(name)
        } else if let Some(cidr) = parse_cidr(host).map_err(|r| err(&r))? {
            Target::Net(cidr)
        } else if host.contains('*') {
            return Err(err(
                "a wildcard may only be a whole first label ('*.example.com') or '*' alone",
            ));
        } else {
            Target::Name(normalize_name(host).ok_or_else(|| {
                err("not a host name (letters, digits, '-', '_', dots; at most 253 characters)")
            })?)
        };
        Ok(Rule {
            text: trimmed.to_string(),
            raw_tcp: matches!(target, Target::Net(_)),
            target,
            port,
        })
    }

    /// True when this rule's name pattern matches `name` (already normalized).
    pub fn matches_name(&self, name: &str) -> bool {
        match &self.target {
            Target::AnyName => true,
            Target::Name(n) => n == name,
            Target::Subdomains(suffix) => name
                .strip_suffix(suffix.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
            Target::Regex(r) => r.regex.is_match(name),
            Target::Net(_) => false,
        }
    }

    /// True when this rule's range contains `ip` (ignoring the port).
    pub fn contains_addr(&self, ip: IpAddr) -> bool {
        matches!(&self.target, Target::Net(c) if c.contains(ip))
    }

    fn allows_port(&self, port: u16) -> bool {
        self.port.is_none_or(|p| p == port)
    }
}

/// Splits "HOST[:PORT]", "[V6]:PORT" and bare IPv6 ("2001:db8::/64").
fn split_port(text: &str) -> Result<(&str, Option<u16>), String> {
    let parse_port = |p: &str| -> Result<u16, String> {
        match p.parse::<u16>() {
            Ok(0) | Err(_) => Err(format!("'{p}' is not a port (1-65535)")),
            Ok(n) => Ok(n),
        }
    };
    if let Some(rest) = text.strip_prefix('[') {
        let (inside, after) = rest
            .split_once(']')
            .ok_or("a '[' without its ']' (write [2001:db8::1]:443)")?;
        return match after {
            "" => Ok((inside, None)),
            _ => match after.strip_prefix(':') {
                Some(p) => Ok((inside, Some(parse_port(p)?))),
                None => Err(format!("unexpected '{after}' after ']'")),
            },
        };
    }
    match text.matches(':').count() {
        0 => Ok((text, None)),
        1 => {
            let (host, port) = text.split_once(':').unwrap_or((text, ""));
            Ok((host, Some(parse_port(port)?)))
        }
        // Several colons: an IPv6 address or range, which takes a port only in brackets.
        _ => Ok((text, None)),
    }
}

/// Parses an address or CIDR range; `Ok(None)` when `text` is not an IP at all (a name).
fn parse_cidr(text: &str) -> Result<Option<Cidr>, String> {
    let (addr, prefix) = match text.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (text, None),
    };
    let Ok(ip) = addr.parse::<IpAddr>() else {
        if prefix.is_some() || addr.contains(':') {
            return Err(format!("'{addr}' is not an IP address"));
        }
        // Digits and dots only ("300.1.2.3", "10.1") look like an address, not a name.
        if !addr.is_empty() && addr.chars().all(|c| c.is_ascii_digit() || c == '.') {
            return Err(format!("'{addr}' is not an IPv4 address"));
        }
        return Ok(None);
    };
    // An IPv4-mapped IPv6 address means the IPv4 address.
    let ip = ip.to_canonical();
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => max,
        Some(p) => match p.parse::<u8>() {
            Ok(n) if n <= max => n,
            _ => return Err(format!("'/{p}' is not a prefix length (0-{max})")),
        },
    };
    let cidr = Cidr::new(ip, prefix);
    let network = cidr.network();
    if network != ip {
        return Err(format!(
            "{ip}/{prefix} has host bits set (did you mean {network}/{prefix}?)"
        ));
    }
    Ok(Some(cidr))
}

/// Lowercases a DNS name and checks it: labels of letters, digits, '-' and '_', 1-63
/// characters each, 253 in all; one trailing dot is dropped. `None` if it is not such a name.
pub fn normalize_name(name: &str) -> Option<String> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > 253 {
        return None;
    }
    let ok = name.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    ok.then(|| name.to_ascii_lowercase())
}

/// How the policy sees a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameVerdict<'a> {
    Allowed(&'a Rule),
    Denied(&'a Rule),
    NotListed,
}

/// How the policy sees an address in a DNS answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerVerdict<'a> {
    Ok,
    Denied(&'a Rule),
    /// In a blocked range (described) and not explicitly allowed.
    Blocked(&'static str),
}

/// How the policy sees a new TCP connection before any byte of it is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionVerdict<'a> {
    /// An allow rule's range covers the destination: nothing else to check.
    AllowedByRange(&'a Rule),
    /// The destination came from these allowed names (rule per name); unless a rule allows
    /// raw TCP, the SNI or Host must be checked next.
    AllowedByName(Vec<(String, &'a Rule)>),
    Refused(String),
}

/// The egress policy of one sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressPolicy {
    pub allow: Vec<Rule>,
    pub deny: Vec<Rule>,
    /// Upstream resolvers; empty means the host's /etc/resolv.conf.
    pub dns_upstream: Vec<SocketAddr>,
    /// Connections the egress proxy carries for the sandbox at once.
    pub max_connections: usize,
    /// Secretless credentials and the sandbox's CA (`--credential`), if any.
    pub credentials: Option<std::sync::Arc<super::credential::Credentials>>,
}

impl Default for EgressPolicy {
    fn default() -> EgressPolicy {
        EgressPolicy {
            allow: Vec::new(),
            deny: Vec::new(),
            dns_upstream: Vec::new(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            credentials: None,
        }
    }
}

/// Connections the egress proxy carries for one sandbox at once, unless
/// [`MAX_CONNECTIONS_ENV`] says otherwise.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
/// The environment variable that sets [`EgressPolicy::max_connections`] (1-65536).
pub const MAX_CONNECTIONS_ENV: &str = "NSBOX_EGRESS_MAX_CONNECTIONS";

/// Parses a connection cap (1-65536).
pub fn parse_max_connections(text: &str) -> Result<usize, PolicyError> {
    match text.trim().parse::<usize>() {
        Ok(n @ 1..=65536) => Ok(n),
        _ => Err(PolicyError::Limit {
            name: MAX_CONNECTIONS_ENV,
            text: text.to_string(),
        }),
    }
}

/// Why a connection to a name and port is refused ([`EgressPolicy::check_name_port`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NamePortRefusal<'p> {
    #[error("{name} is denied by '{}'", rule.text)]
    Denied { name: String, rule: &'p Rule },
    #[error("port {port} is not allowed for {name}")]
    PortNotAllowed { name: String, port: u16 },
    #[error("{name} is not on the allowlist")]
    NotListed { name: String },
}

impl EgressPolicy {
    /// Parses allow/deny patterns and upstream addresses (flag names only label errors).
    pub fn parse(
        allow: &[String],
        deny: &[String],
        dns_upstream: &[String],
    ) -> Result<EgressPolicy, PolicyError> {
        let allow: Vec<Rule> = allow
            .iter()
            .map(|t| Rule::parse("--allow", t))
            .collect::<Result<_, _>>()?;
        // A range inside loopback would name the sandbox's own addresses, never the host's.
        let inside_loopback =
            |c: &Cidr| c.addr.is_loopback() && c.prefix >= if c.addr.is_ipv4() { 8 } else { 128 };
        if let Some(rule) = allow
            .iter()
            .find(|r| matches!(&r.target, Target::Net(c) if inside_loopback(c)))
        {
            return Err(PolicyError::Pattern {
                flag: "--allow",
                text: rule.text.clone(),
                reason: "loopback is the sandbox's own (it never leaves the sandbox); a service \
                         of the host is reached through one of the host's other addresses"
                    .into(),
            });
        }
        // The one setting read from the environment (an operator's knob, like NSBOX_RUN_DIR).
        let max_connections = match std::env::var(MAX_CONNECTIONS_ENV) {
            Ok(text) => parse_max_connections(&text)?,
            Err(_) => DEFAULT_MAX_CONNECTIONS,
        };
        Ok(EgressPolicy {
            max_connections,
            credentials: None,
            allow,
            deny: deny
                .iter()
                .map(|t| Rule::parse("--deny", t))
                .collect::<Result<_, _>>()?,
            dns_upstream: dns_upstream
                .iter()
                .map(|t| parse_upstream("--dns-upstream", t))
                .collect::<Result<_, _>>()?,
        })
    }

    /// May `name` (normalized) be resolved?
    pub fn check_name(&self, name: &str) -> NameVerdict<'_> {
        if let Some(rule) = self
            .deny
            .iter()
            .find(|r| r.port.is_none() && r.matches_name(name))
        {
            return NameVerdict::Denied(rule);
        }
        match self.allow.iter().find(|r| r.matches_name(name)) {
            Some(rule) => NameVerdict::Allowed(rule),
            None => NameVerdict::NotListed,
        }
    }

    /// The allow rule for connecting to `name` on `port`, or why not.
    pub fn check_name_port(&self, name: &str, port: u16) -> Result<&Rule, NamePortRefusal<'_>> {
        if let Some(rule) = self
            .deny
            .iter()
            .find(|r| r.allows_port(port) && r.matches_name(name))
        {
            return Err(NamePortRefusal::Denied {
                name: name.to_string(),
                rule,
            });
        }
        let mut listed = false;
        for rule in self.allow.iter().filter(|r| r.matches_name(name)) {
            if rule.allows_port(port) {
                return Ok(rule);
            }
            listed = true;
        }
        Err(if listed {
            NamePortRefusal::PortNotAllowed {
                name: name.to_string(),
                port,
            }
        } else {
            NamePortRefusal::NotListed {
                name: name.to_string(),
            }
        })
    }

    /// May `ip` appear in a DNS answer? `host_addrs` are the host's own addresses.
    pub fn check_answer(&self, ip: IpAddr, host_addrs: &[IpAddr]) -> AnswerVerdict<'_> {
        if let Some(rule) = self
            .deny
            .iter()
            .find(|r| r.port.is_none() && r.contains_addr(ip))
        {
            return AnswerVerdict::Denied(rule);
        }
        if self.allow.iter().any(|r| r.contains_addr(ip)) {
            return AnswerVerdict::Ok;
        }
        if let Some(range) = ranges::blocked_range(ip) {
            return AnswerVerdict::Blocked(range);
        }
        if host_addrs.contains(&ip) {
            return AnswerVerdict::Blocked("an address of the host nsbox runs on");
        }
        AnswerVerdict::Ok
    }

    /// Decides on a connection to `dst`, given the names (normalized) that DNS answers for this
    /// sandbox resolved to `dst`'s address and are still valid.
    pub fn check_connection<'a>(
        &'a self,
        dst: SocketAddr,
        names: &[String],
        host_addrs: &[IpAddr],
    ) -> ConnectionVerdict<'a> {
        let (ip, port) = (dst.ip().to_canonical(), dst.port());
        if let Some(rule) = self
            .deny
            .iter()
            .find(|r| r.allows_port(port) && r.contains_addr(ip))
        {
            return ConnectionVerdict::Refused(format!("denied by '{}'", rule.text));
        }
        if let Some(rule) = self
            .allow
            .iter()
            .find(|r| r.allows_port(port) && r.contains_addr(ip))
        {
            return ConnectionVerdict::AllowedByRange(rule);
        }
        if let Some(range) = ranges::blocked_range(ip) {
            return ConnectionVerdict::Refused(format!("{ip} is in a blocked range ({range})"));
        }
        if host_addrs.contains(&ip) {
            return ConnectionVerdict::Refused(format!("{ip} is an address of the host"));
        }
        if names.is_empty() {
            return ConnectionVerdict::Refused(format!(
                "no allowed name of this sandbox resolved to {ip}"
            ));
        }
        let mut reasons = Vec::new();
        let mut allowed = Vec::new();
        for name in names {
            match self.check_name_port(name, port) {
                Ok(rule) => {
                    // A rule that lets raw TCP through speaks for the name, if there is one.
                    let raw = self
                        .allow
                        .iter()
                        .find(|r| r.raw_tcp && r.allows_port(port) && r.matches_name(name));
                    allowed.push((name.clone(), raw.unwrap_or(rule)));
                }
                Err(reason) => reasons.push(reason.to_string()),
            }
        }
        if allowed.is_empty() {
            ConnectionVerdict::Refused(reasons.join("; "))
        } else {
            ConnectionVerdict::AllowedByName(allowed)
        }
    }

    /// Ranges the kernel rules let through to the proxy regardless of DNS: (range, port), minus
    /// nothing (deny ranges are returned by [`Self::denied_ranges`] and go first).
    pub fn allowed_ranges(&self) -> Vec<(Cidr, Option<u16>)> {
        Self::ranges(&self.allow)
    }

    /// Ranges the kernel rules never redirect (deny wins).
    pub fn denied_ranges(&self) -> Vec<(Cidr, Option<u16>)> {
        Self::ranges(&self.deny)
    }

    fn ranges(rules: &[Rule]) -> Vec<(Cidr, Option<u16>)> {
        rules
            .iter()
            .filter_map(|r| match r.target {
                Target::Net(c) => Some((c, r.port)),
                _ => None,
            })
            .collect()
    }
}

/// Parses `ADDR`, `ADDR:PORT` or `[V6]:PORT` (port 53 by default).
pub fn parse_upstream(flag: &'static str, text: &str) -> Result<SocketAddr, PolicyError> {
    let err = |reason: String| PolicyError::Upstream {
        flag,
        text: text.to_string(),
        reason,
    };
    let text = text.trim();
    if let Ok(sa) = text.parse::<SocketAddr>() {
        if sa.port() == 0 {
            return Err(err("port 0".into()));
        }
        return Ok(sa);
    }
    text.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, DNS_PORT))
        .map_err(|_| err("not an IP address (host names are not resolved here)".into()))
}

/// The nameservers of a resolv.conf text (at most three, as the C library uses; IPv6
/// link-local addresses with a zone are skipped).
pub fn resolv_conf_nameservers(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next())?
        })
        .filter_map(|addr| addr.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, DNS_PORT))
        .take(3)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(text: &str) -> Rule {
        Rule::parse("--allow", text).unwrap()
    }

    fn policy(allow: &[&str], deny: &[&str]) -> EgressPolicy {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        EgressPolicy::parse(&s(allow), &s(deny), &[]).unwrap()
    }

    #[test]
    fn patterns_parse() {
        assert_eq!(
            rule("API.GitHub.com.").target,
            Target::Name("api.github.com".into())
        );
        assert_eq!(rule("api.github.com:443").port, Some(443));
        assert_eq!(
            rule("*.pypi.org").target,
            Target::Subdomains("pypi.org".into())
        );
        assert_eq!(rule("*").target, Target::AnyName);
        let r = rule("203.0.113.7:5432");
        assert_eq!(
            r.target,
            Target::Net(Cidr::host("203.0.113.7".parse().unwrap()))
        );
        assert_eq!(r.port, Some(5432));
        let r = rule("2001:db8::/64");
        assert_eq!(
            r.target,
            Target::Net(Cidr::new("2001:db8::".parse().unwrap(), 64))
        );
        assert_eq!(r.port, None);
        let r = rule("[2001:db8::1]:443");
        assert_eq!(r.port, Some(443));
        assert!(matches!(r.target, Target::Net(c) if c.is_host()));
        let r = rule("[2001:db8::/48]:22");
        assert_eq!(r.port, Some(22));
        // IPv4-mapped means the IPv4 address.
        assert_eq!(
            rule("::ffff:203.0.113.9").target,
            Target::Net(Cidr::host("203.0.113.9".parse().unwrap()))
        );
    }

    #[test]
    fn raw_tcp_is_allowed_only_where_a_rule_says_so() {
        let r = rule("tcp:DB.example.com:5432");
        assert_eq!(r.target, Target::Name("db.example.com".into()));
        assert_eq!(r.port, Some(5432));
        assert!(r.raw_tcp);
        assert_eq!(r.text, "tcp:DB.example.com:5432");
        assert!(!rule("db.example.com:5432").raw_tcp);
        assert!(!rule("*.example.com").raw_tcp);
        assert!(rule("tcp:*.example.com").raw_tcp);
        assert!(rule(r"tcp:re:db[0-9]\.example\.com").raw_tcp);
        // An address or range names the destination itself: raw TCP as written.
        assert!(rule("203.0.113.7:5432").raw_tcp);
        assert!(rule("tcp:203.0.113.0/24").raw_tcp);
        for (flag, text, why) in [
            ("--allow", "tcp:", "one pattern"),
            ("--allow", "tcp:tcp:a.example", "one pattern"),
            ("--deny", "tcp:a.example", "belongs to --allow"),
        ] {
            let e = Rule::parse(flag, text).unwrap_err().to_string();
            assert!(e.contains(why), "{text}: {e}");
        }
        let p = policy(&["db.example.com", "tcp:db.example.com:5432"], &[]);
        let names = ["db.example.com".to_string()];
        let at = |port: u16| SocketAddr::from(([198, 51, 100, 7], port));
        assert!(matches!(
            p.check_connection(at(5432), &names, &[]),
            ConnectionVerdict::AllowedByName(v) if v[0].1.raw_tcp
        ));
        assert!(matches!(
            p.check_connection(at(443), &names, &[]),
            ConnectionVerdict::AllowedByName(v) if !v[0].1.raw_tcp
        ));
        let p = policy(&["web.example.com", "tcp:db.example.com:5432"], &[]);
        let names = ["web.example.com".to_string(), "db.example.com".to_string()];
        let sa: SocketAddr = "198.51.100.7:5432".parse().unwrap();
        let ConnectionVerdict::AllowedByName(allowed) = p.check_connection(sa, &names, &[]) else {
            panic!()
        };
        assert_eq!(allowed.len(), 2);
        assert!(allowed
            .iter()
            .any(|(n, r)| n == "db.example.com" && r.raw_tcp));
    }

    #[test]
    fn bad_patterns_say_why() {
        for (text, why) in [
            ("", "empty"),
            ("exa mple.com", "not a host name"),
            ("api.*.com", "wildcard"),
            ("*example.com", "wildcard"),
            ("example.com:0", "not a port"),
            ("example.com:99999", "not a port"),
            ("203.0.113.7/24", "did you mean 203.0.113.0/24"),
            ("203.0.113.0/33", "prefix length"),
            ("300.1.2.3", "not an IPv4 address"),
            ("[2001:db8::1", "without its ']'"),
            ("2001:db8::zz", "not an IP address"),
        ] {
            let e = Rule::parse("--allow", text).unwrap_err().to_string();
            assert!(e.contains(why), "{text}: {e}");
            assert!(e.contains("--allow"), "{e}");
        }
    }

    #[test]
    fn loopback_cannot_be_allowed() {
        for text in ["127.0.0.1:11434", "127.0.0.0/8", "::1", "[::1]:80"] {
            let e = EgressPolicy::parse(&[text.to_string()], &[], &[]).unwrap_err();
            assert!(e.to_string().contains("loopback"), "{text}: {e}");
        }
        // A wider range that contains loopback is fine (loopback stays local anyway).
        assert!(EgressPolicy::parse(&["0.0.0.0/0".into()], &[], &[]).is_ok());
    }

    #[test]
    fn regular_expressions_match_whole_names() {
        let r = rule(r"re:api[0-9]+\.example\.com");
        assert!(r.matches_name("api1.example.com"));
        assert!(r.matches_name("api42.example.com"));
        assert!(!r.matches_name("api.example.com"));
        assert!(!r.matches_name("api1.example.com.evil.example"));
        assert!(!r.matches_name("xapi1.example.com"));
        assert!(rule("re:[a-z]+\\.github\\.io").matches_name("octocat.github.io"));
        let e = Rule::parse("--allow", "re:(unclosed")
            .unwrap_err()
            .to_string();
        assert!(e.contains("regular expression"), "{e}");
        let p = policy(&[r"re:.*\.example\.com"], &[r"re:secret.*"]);
        assert!(matches!(
            p.check_name("a.example.com"),
            NameVerdict::Allowed(_)
        ));
        assert!(matches!(
            p.check_name("secret.example.com"),
            NameVerdict::Denied(_)
        ));
    }

    #[test]
    fn wildcards_match_subdomains_only() {
        let r = rule("*.pypi.org");
        assert!(r.matches_name("files.pypi.org"));
        assert!(r.matches_name("a.b.pypi.org"));
        assert!(!r.matches_name("pypi.org"));
        assert!(!r.matches_name("evilpypi.org"));
        assert!(!r.matches_name("pypi.org.evil.example"));
        assert!(rule("*").matches_name("anything.example"));
    }

    #[test]
    fn deny_wins_over_allow() {
        let p = policy(&["*.example.com"], &["secret.example.com"]);
        assert!(matches!(
            p.check_name("api.example.com"),
            NameVerdict::Allowed(_)
        ));
        assert!(matches!(
            p.check_name("secret.example.com"),
            NameVerdict::Denied(_)
        ));
        assert_eq!(p.check_name("example.org"), NameVerdict::NotListed);
        // A deny rule with a port leaves the name resolvable but the port closed.
        let p = policy(&["git.example.com"], &["git.example.com:22"]);
        assert!(matches!(
            p.check_name("git.example.com"),
            NameVerdict::Allowed(_)
        ));
        assert!(p.check_name_port("git.example.com", 443).is_ok());
        assert!(matches!(
            p.check_name_port("git.example.com", 22),
            Err(NamePortRefusal::Denied { .. })
        ));
        assert!(p
            .check_name_port("git.example.com", 22)
            .unwrap_err()
            .to_string()
            .contains("denied"));
    }

    #[test]
    fn name_ports_are_enforced() {
        let p = policy(&["db.example.com:5432"], &[]);
        assert!(p.check_name_port("db.example.com", 5432).is_ok());
        assert_eq!(
            p.check_name_port("db.example.com", 22)
                .unwrap_err()
                .to_string(),
            "port 22 is not allowed for db.example.com"
        );
        assert_eq!(
            p.check_name_port("other.example.com", 5432)
                .unwrap_err()
                .to_string(),
            "other.example.com is not on the allowlist"
        );
    }

    #[test]
    fn blocked_answers_need_an_explicit_range() {
        let p = policy(&["*.example.com"], &[]);
        fn check<'a>(p: &'a EgressPolicy, a: &str) -> AnswerVerdict<'a> {
            p.check_answer(a.parse().unwrap(), &["198.51.100.2".parse().unwrap()])
        }
        assert_eq!(check(&p, "203.0.113.7"), AnswerVerdict::Ok);
        for a in [
            "10.0.0.1",
            "127.0.0.1",
            "169.254.169.254",
            "::ffff:127.0.0.1",
            "fd00::1",
        ] {
            assert!(matches!(check(&p, a), AnswerVerdict::Blocked(_)), "{a}");
        }
        assert!(
            matches!(check(&p, "198.51.100.2"), AnswerVerdict::Blocked(w) if w.contains("host"))
        );
        let p = policy(&["*.example.com", "10.0.0.0/8"], &["203.0.113.0/24"]);
        assert_eq!(check(&p, "10.1.2.3"), AnswerVerdict::Ok);
        assert!(matches!(check(&p, "203.0.113.7"), AnswerVerdict::Denied(_)));
    }

    #[test]
    fn connections_follow_names_ranges_and_ports() {
        let p = policy(
            &[
                "web.example.com",
                "db.example.com:5432",
                "203.0.113.0/28:8080",
            ],
            &["203.0.113.9"],
        );
        let sa = |s: &str| s.parse::<SocketAddr>().unwrap();
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(matches!(
            p.check_connection(sa("203.0.113.5:8080"), &[], &[]),
            ConnectionVerdict::AllowedByRange(_)
        ));
        assert!(matches!(
            p.check_connection(sa("203.0.113.5:8081"), &[], &[]),
            ConnectionVerdict::Refused(r) if r.contains("no allowed name")
        ));
        assert!(matches!(
            p.check_connection(sa("203.0.113.9:8080"), &[], &[]),
            ConnectionVerdict::Refused(r) if r.contains("denied")
        ));
        assert!(matches!(
            p.check_connection(sa("198.51.100.7:443"), &names(&["web.example.com"]), &[]),
            ConnectionVerdict::AllowedByName(v) if v[0].0 == "web.example.com"
        ));
        assert!(matches!(
            p.check_connection(sa("198.51.100.8:22"), &names(&["db.example.com"]), &[]),
            ConnectionVerdict::Refused(r) if r.contains("port 22")
        ));
        assert!(matches!(
            p.check_connection(sa("10.0.0.1:443"), &names(&["web.example.com"]), &[]),
            ConnectionVerdict::Refused(r) if r.contains("blocked range")
        ));
    }

    #[test]
    fn the_connection_cap_is_a_positive_number() {
        assert_eq!(EgressPolicy::default().max_connections, 256);
        assert_eq!(parse_max_connections("40").unwrap(), 40);
        for bad in ["0", "-1", "many", "", "65537"] {
            let e = parse_max_connections(bad).unwrap_err().to_string();
            assert!(e.contains(MAX_CONNECTIONS_ENV), "{e}");
        }
    }

    #[test]
    fn upstreams_and_resolv_conf() {
        assert_eq!(
            parse_upstream("--dns-upstream", "192.0.2.53").unwrap(),
            sa("192.0.2.53:53")
        );
        assert_eq!(
            parse_upstream("--dns-upstream", "192.0.2.53:5353").unwrap(),
            sa("192.0.2.53:5353")
        );
        assert_eq!(
            parse_upstream("--dns-upstream", "[2001:db8::53]:53").unwrap(),
            sa("[2001:db8::53]:53")
        );
        assert_eq!(
            parse_upstream("--dns-upstream", "2001:db8::53").unwrap(),
            sa("[2001:db8::53]:53")
        );
        assert!(parse_upstream("--dns-upstream", "dns.example").is_err());
        let text = "# comment\nsearch example\nnameserver 192.0.2.1\nnameserver fe80::1%eth0\nnameserver 2001:db8::1\noptions edns0\nnameserver 192.0.2.2\nnameserver 192.0.2.3\n";
        assert_eq!(
            resolv_conf_nameservers(text),
            vec![
                sa("192.0.2.1:53"),
                sa("[2001:db8::1]:53"),
                sa("192.0.2.2:53")
            ]
        );
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }
}
