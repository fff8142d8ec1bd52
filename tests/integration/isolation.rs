//! What a workload sees from inside, and that every wall holds when it attacks (SECURITY.md:
//! process and privileges, seccomp, filesystems). Assertions are on the probe's report.

use crate::require_root;
use crate::support::*;

fn field<'a>(v: &'a serde_json::Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("probe report lacks {key}: {v}"))
}

#[test]
fn identity_is_the_unprivileged_sandbox_user() {
    require_root!();
    let (run, st) = probe("status", &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        field(&st, "Uid").split_whitespace().all(|u| u == "100"),
        "{st}"
    );
    assert!(
        field(&st, "Gid").split_whitespace().all(|g| g == "101"),
        "{st}"
    );
    assert_eq!(field(&st, "Groups"), "101");
}

#[test]
fn privileges_are_all_gone() {
    require_root!();
    let (_, st) = probe("status", &[]);
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(field(&st, cap), "0000000000000000", "{cap}");
    }
    assert_eq!(field(&st, "NoNewPrivs"), "1");
    assert_eq!(field(&st, "Seccomp"), "2", "seccomp filter mode");
}

#[test]
fn another_uid_never_gets_capabilities() {
    require_root!();
    for user in ["0", "1000:1000"] {
        let (_, st) = probe("status", &["--user", user]);
        let uid = user.split(':').next().unwrap();
        assert!(
            field(&st, "Uid").split_whitespace().all(|u| u == uid),
            "{st}"
        );
        for cap in ["CapPrm", "CapEff", "CapBnd"] {
            assert_eq!(field(&st, cap), "0000000000000000", "{user}: {cap}");
        }
    }
}

#[test]
fn pid_one_is_nsbox_init_and_host_processes_are_invisible() {
    require_root!();
    let (_, st) = probe("status", &[]);
    assert_eq!(field(&st, "pid1_cmdline"), "nsbox-init");
    assert_ne!(field(&st, "pid"), "1");
    let pids: Vec<u32> = field(&st, "visible_pids")
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert!(pids.contains(&1));
    assert!(
        pids.len() <= 4,
        "only the sandbox's own processes: {pids:?}"
    );
    // The supervisor's arguments (possibly secrets) never show in the sandbox.
    let (run, st) = probe("status", &["--secret", "TOKEN=do-not-leak-me"]);
    assert_eq!(field(&st, "pid1_cmdline"), "nsbox-init");
    assert!(!run.stdout.contains("do-not-leak-me"));
    assert_eq!(
        field(&st, "env.TOKEN"),
        "***",
        "the secret reaches the workload, masked on the way out"
    );
}

#[test]
fn new_session_and_no_leaked_descriptors() {
    require_root!();
    let (_, st) = probe("status", &[]);
    assert_eq!(
        field(&st, "sid"),
        field(&st, "pid"),
        "the workload leads its own session"
    );
    let fds: Vec<&str> = field(&st, "fds").split_whitespace().collect();
    let numbers: Vec<u32> = fds
        .iter()
        .map(|f| f.split('=').next().unwrap().parse().unwrap())
        .collect();
    // 0-2, plus the one the probe opened to list /proc/self/fd.
    assert!(
        numbers.iter().filter(|&&n| n > 2).count() <= 1,
        "leaked descriptors: {fds:?}"
    );
}

#[test]
fn hostname_is_the_sandbox_id_or_chosen() {
    require_root!();
    let mount = probe_mount();
    let mut args: Vec<&str> = vec!["--json"];
    args.extend(mount.iter().map(String::as_str));
    args.extend(["--", PROBE, "status"]);
    let run = exec(&args);
    let evs = events(&run.stdout);
    let id = sandbox_id(&evs);
    let out: String = evs
        .iter()
        .filter(|e| e["type"] == "stdout")
        .map(|e| e["data"].as_str().unwrap().to_string())
        .collect();
    let st: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(field(&st, "hostname"), id);
    let (_, st) = probe("status", &["--hostname", "devbox-7"]);
    assert_eq!(field(&st, "hostname"), "devbox-7");
}

#[test]
fn clean_minimal_environment() {
    require_root!();
    std::env::set_var("NSBOX_TEST_HOST_ONLY", "1");
    let (_, st) = probe("status", &["-e", "EXTRA=yes"]);
    let env: Vec<&str> = st
        .as_object()
        .unwrap()
        .keys()
        .filter_map(|k| k.strip_prefix("env."))
        .collect();
    assert_eq!(env, ["EXTRA", "HOME", "LANG", "PATH"], "{st}");
    assert_eq!(field(&st, "env.HOME"), "/sandbox");
    assert_eq!(field(&st, "cwd"), "/sandbox");
}

#[test]
fn attacks_from_inside_are_denied() {
    require_root!();
    let (run, a) = probe("attacks", &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let denied = |name: &str, allowed: &[&str]| {
        let got = field(&a, name);
        assert!(
            allowed.contains(&got),
            "{name}: got {got}, expected one of {allowed:?}"
        );
    };
    // Namespaces and mounts.
    for name in [
        "mount",
        "umount",
        "unshare_user",
        "unshare_mount",
        "unshare_net",
        "setns",
        "clone_newuser",
        "chroot",
        "pivot_root",
    ] {
        denied(name, &["EPERM"]);
    }
    denied("clone3", &["ENOSYS"]);
    // Kernel attack surface.
    for name in [
        "bpf",
        "perf_event_open",
        "keyctl",
        "add_key",
        "userfaultfd",
        "io_uring_setup",
        "kexec_load",
        "init_module",
        "open_by_handle_at",
        "process_vm_readv",
        "ptrace_attach_init",
    ] {
        denied(name, &["EPERM"]);
    }
    // Socket families.
    for name in [
        "socket_alg",
        "socket_vsock",
        "socket_packet",
        "socket_netlink_netfilter",
    ] {
        denied(name, &["EPERM", "EAFNOSUPPORT"]);
    }
    for name in [
        "socket_inet",
        "socket_inet6",
        "socket_unix",
        "socket_netlink_route",
    ] {
        denied(name, &["ok"]);
    }
    // Terminal injection, also with garbage in the high bits of the command.
    for name in ["tiocsti", "tiocsti_high_bits", "tioclinux"] {
        denied(name, &["EPERM"]);
    }
    // Identity and devices.
    for name in ["setuid_0", "sethostname", "mknod", "chown_to_root"] {
        denied(name, &["EPERM"]);
    }
    denied("clone_thread", &["ok"]);
    assert_eq!(field(&a, "init_alive_after_kill"), "true");
    // Non-native syscalls: the 32-bit entry kills the process, x32 never runs.
    if cfg!(target_arch = "x86_64") {
        assert!(
            field(&a, "int80_getpid").starts_with("killed:"),
            "int 0x80: {}",
            field(&a, "int80_getpid")
        );
        assert_ne!(field(&a, "x32_getpid"), "ok");
    }
}

#[test]
fn filesystem_walls_hold() {
    require_root!();
    let (_, a) = probe("attacks", &[]);
    let is = |name: &str, allowed: &[&str]| {
        let got = field(&a, name);
        assert!(
            allowed.contains(&got),
            "{name}: got {got}, expected one of {allowed:?}"
        );
    };
    for name in ["write_root", "write_etc", "write_usr", "write_dev"] {
        is(name, &["EROFS"]);
    }
    is("write_sandbox", &["ok"]);
    is("write_tmp", &["ok"]);
    is("write_proc_sys", &["EROFS", "EACCES"]);
    is("write_proc_sysrq", &["EROFS", "EACCES", "ENOENT"]);
    is("write_cgroup", &["EROFS", "EACCES", "ENOENT"]);
    is("write_cgroup_release_agent", &["EROFS", "EACCES", "ENOENT"]);
    // The init (and through it the nsbox binary) cannot be reached: CVE-2019-5736 class.
    is("write_proc1_exe", &["EACCES", "EPERM"]);
    is("read_proc1_environ", &["EACCES", "EPERM"]);
    is("list_proc1_root", &["EACCES", "EPERM"]);
    is("read_proc_kcore", &["EACCES", "ENOENT", "EPERM"]);
}

#[test]
fn host_user_data_is_hidden() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("visible-marker");
    std::fs::write(&marker, "x").unwrap();
    let run = exec(&[
        "--",
        "/bin/sh",
        "-c",
        "ls -A /home /root /run /tmp /var/tmp | tr '\\n' ' '; echo; ls -A / | tr '\\n' ' '; echo; grep -c . /etc/passwd",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(
        lines[0]
            .split_whitespace()
            .filter(|w| !w.ends_with(':'))
            .count(),
        0,
        "hidden dirs are empty: {}",
        lines[0]
    );
    let top: Vec<&str> = lines[1].split_whitespace().collect();
    assert!(
        top.contains(&"usr") && top.contains(&"sandbox") && top.contains(&"proc"),
        "{top:?}"
    );
    // Whatever else the host keeps at its top level (here: the test's own directories) is gone.
    let host_top = dir
        .path()
        .components()
        .nth(1)
        .unwrap()
        .as_os_str()
        .to_string_lossy()
        .into_owned();
    if !["tmp", "home", "root", "run", "var"].contains(&host_top.as_str()) {
        assert!(
            !top.contains(&host_top.as_str()),
            "{host_top} should be hidden: {top:?}"
        );
    }
    assert_eq!(
        lines[2], "3",
        "only root, sandbox and nobody in /etc/passwd"
    );
}

#[test]
fn no_network_but_loopback() {
    require_root!();
    let run = exec(&[
        "--",
        "/bin/sh",
        "-c",
        "cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '; cat /proc/net/route | wc -l",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines[..lines.len() - 1], ["lo"], "only loopback: {lines:?}");
    assert_eq!(lines.last(), Some(&"1"), "no routes (header only)");
    let run = exec(&["--", "/bin/sh", "-c", "echo x > /dev/tcp/127.0.0.1/1 2>/dev/null; python3 -c 'import socket; s=socket.socket(); s.settimeout(2); s.connect((\"192.0.2.1\", 80))'"]);
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("unreachable"), "{}", run.stderr);
}

#[test]
fn host_network_is_opt_in() {
    require_root!();
    // A service on the host's loopback: only a sandbox with --net host reaches it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    listener.set_nonblocking(true).unwrap();
    let server = std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut served = 0;
        while std::time::Instant::now() < deadline {
            match listener.accept() {
                Ok((mut conn, _)) => {
                    conn.set_nonblocking(false).unwrap();
                    let mut request = String::new();
                    let _ = std::io::Read::read_to_string(&mut conn, &mut request);
                    let _ = std::io::Write::write_all(&mut conn, b"host-loopback");
                    served += 1;
                    if request == "last" {
                        break;
                    }
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        }
        served
    });
    let script = format!(
        "{PROBE} tcp {addr}; cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '; \
         echo ---; cat /etc/resolv.conf"
    );
    let mount = probe_mount();
    let run_with = |net: &[&str]| {
        let mut args: Vec<&str> = vec!["exec"];
        args.extend(mount.iter().map(String::as_str));
        args.extend_from_slice(net);
        args.extend(["--", "/bin/sh", "-c", &script]);
        nsbox(&args)
    };

    let isolated = run_with(&[]);
    assert_eq!(isolated.code, 0, "{isolated:?}");
    let mut lines = isolated.stdout.lines();
    assert!(
        lines.next().unwrap().starts_with("error"),
        "the host's loopback is out of reach by default: {isolated:?}"
    );
    assert_eq!(lines.next(), Some("lo"), "{isolated:?}");
    assert_eq!(lines.next(), Some("---"), "only a loopback: {isolated:?}");

    let host = run_with(&["--net", "host"]);
    assert_eq!(host.code, 0, "{host:?}");
    let (network, resolv) = host.stdout.split_once("---\n").unwrap();
    assert_eq!(
        network.lines().next(),
        Some("ok host-loopback"),
        "--net host reaches the host's loopback: {host:?}"
    );
    assert!(
        network.lines().skip(1).any(|i| i != "lo"),
        "and sees the host's interfaces: {host:?}"
    );
    assert_eq!(
        resolv,
        std::fs::read_to_string("/etc/resolv.conf").unwrap(),
        "and the host's resolver configuration"
    );
    // End the server (the isolated run never reached it).
    if let Ok(mut last) = std::net::TcpStream::connect(&addr) {
        let _ = std::io::Write::write_all(&mut last, b"last");
        let _ = last.shutdown(std::net::Shutdown::Write);
    }
    assert_eq!(
        server.join().unwrap(),
        2,
        "one sandbox connection, then ours"
    );
}
