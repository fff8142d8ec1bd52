//! The probe: run inside a sandbox by the integration tests, it reports as JSON what the
//! sandbox looks like from inside (`probe status`) and what happens when it attacks the walls
//! (`probe attacks`). Each attack records "ok" when the call succeeded, or the errno name.
//! Network probes (`probe tcp|udp|icmp|dns|download ...`) print one line: `ok ...` or
//! `error ENAME`. Assertions live in the tests; the probe only observes.
#![allow(unsafe_code)]
#![allow(clippy::undocumented_unsafe_blocks, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::ffi::CString;

fn errno_name(e: i32) -> String {
    let name = match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EBADF => "EBADF",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EINVAL => "EINVAL",
        libc::ENOTTY => "ENOTTY",
        libc::EROFS => "EROFS",
        libc::ENOSYS => "ENOSYS",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::EPROTONOSUPPORT => "EPROTONOSUPPORT",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ENXIO => "ENXIO",
        libc::ENODEV => "ENODEV",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ECONNRESET => "ECONNRESET",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::EPIPE => "EPIPE",
        other => return format!("errno{other}"),
    };
    name.to_string()
}

fn json_escape(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn print_map(map: &BTreeMap<String, String>) {
    let body: Vec<String> = map
        .iter()
        .map(|(k, v)| format!("{}:{}", json_escape(k), json_escape(v)))
        .collect();
    println!("{{{}}}", body.join(","));
}

fn status() {
    let mut m = BTreeMap::new();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    for line in status.lines() {
        if let Some((k, v)) = line.split_once(':') {
            if k.starts_with("Cap")
                || k == "NoNewPrivs"
                || k == "Seccomp"
                || k == "Uid"
                || k == "Gid"
                || k == "Groups"
            {
                m.insert(k.to_string(), v.trim().to_string());
            }
        }
    }
    m.insert("pid".into(), std::process::id().to_string());
    m.insert("ppid".into(), unsafe { libc::getppid() }.to_string());
    m.insert("sid".into(), unsafe { libc::getsid(0) }.to_string());
    m.insert(
        "hostname".into(),
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap_or_default()
            .trim()
            .to_string(),
    );
    m.insert(
        "cwd".into(),
        std::env::current_dir()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
    );
    // Descriptors open in this process, except the one used to list them.
    let mut fds: Vec<String> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        let entries: Vec<_> = dir.flatten().collect();
        for e in entries {
            let n = e.file_name().to_string_lossy().into_owned();
            if let Ok(target) = std::fs::read_link(e.path()) {
                fds.push(format!("{n}={}", target.display()));
            }
        }
    }
    m.insert("fds".into(), fds.join(" "));
    let pids: Vec<String> = std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
                .map(|p| p.to_string())
                .collect()
        })
        .unwrap_or_default();
    m.insert("visible_pids".into(), pids.join(" "));
    m.insert(
        "pid1_cmdline".into(),
        std::fs::read("/proc/1/cmdline")
            .map(|b| {
                String::from_utf8_lossy(&b)
                    .replace('\0', " ")
                    .trim()
                    .to_string()
            })
            .unwrap_or_else(|e| format!("error: {e}")),
    );
    m.insert(
        "mountinfo_lines".into(),
        std::fs::read_to_string("/proc/self/mountinfo")
            .map(|s| s.lines().count().to_string())
            .unwrap_or_default(),
    );
    for (key, val) in std::env::vars() {
        m.insert(format!("env.{key}"), val);
    }
    print_map(&m);
}

/// A raw syscall result as -errno (or the non-negative return value).
fn ret(r: libc::c_long) -> i64 {
    if r < 0 {
        -(std::io::Error::last_os_error().raw_os_error().unwrap_or(1) as i64)
    } else {
        r
    }
}

fn attacks() {
    let mut m: BTreeMap<String, String> = BTreeMap::new();
    // Each attack runs in its own child, so one that succeeds (say, a new user namespace)
    // cannot change what the next one sees.
    let mut attack = |name: &str, f: &dyn Fn() -> i64| {
        m.insert(name.to_string(), in_child(f));
    };
    let c = |s: &str| CString::new(s).unwrap();
    attack("mount", &|| unsafe {
        ret(libc::mount(
            c("tmpfs").as_ptr(),
            c("/tmp").as_ptr(),
            c("tmpfs").as_ptr(),
            0,
            std::ptr::null(),
        ) as _)
    });
    attack("umount", &|| unsafe {
        ret(libc::umount2(c("/proc").as_ptr(), libc::MNT_DETACH) as _)
    });
    attack("unshare_user", &|| unsafe {
        ret(libc::unshare(libc::CLONE_NEWUSER) as _)
    });
    attack("unshare_mount", &|| unsafe {
        ret(libc::unshare(libc::CLONE_NEWNS) as _)
    });
    attack("unshare_net", &|| unsafe {
        ret(libc::unshare(libc::CLONE_NEWNET) as _)
    });
    attack("setns", &|| unsafe {
        let fd = libc::open(c("/proc/self/ns/mnt").as_ptr(), libc::O_RDONLY);
        if fd < 0 {
            return ret(-1);
        }
        ret(libc::setns(fd, 0) as _)
    });
    attack("clone_newuser", &|| unsafe {
        let r = libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_NEWUSER | libc::SIGCHLD) as libc::c_ulong,
            0,
            0,
            0,
            0,
        );
        if r == 0 {
            libc::_exit(0);
        }
        ret(r)
    });
    attack("clone_thread", &|| unsafe {
        // fork-like clone without namespace flags must keep working.
        let r = libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_ulong, 0, 0, 0, 0);
        if r == 0 {
            libc::_exit(0);
        }
        ret(r)
    });
    attack("clone3", &|| unsafe {
        ret(libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0))
    });
    attack("ptrace_attach_init", &|| unsafe {
        ret(libc::ptrace(libc::PTRACE_ATTACH, 1, 0, 0))
    });
    attack("bpf", &|| unsafe {
        ret(libc::syscall(libc::SYS_bpf, 0, std::ptr::null::<u8>(), 0))
    });
    attack("perf_event_open", &|| unsafe {
        ret(libc::syscall(
            libc::SYS_perf_event_open,
            std::ptr::null::<u8>(),
            0,
            -1,
            -1,
            0,
        ))
    });
    attack("keyctl", &|| unsafe {
        ret(libc::syscall(libc::SYS_keyctl, 0, 0, 0, 0, 0))
    });
    attack("add_key", &|| unsafe {
        ret(libc::syscall(
            libc::SYS_add_key,
            c("user").as_ptr(),
            c("nsbox").as_ptr(),
            std::ptr::null::<u8>(),
            0,
            -2,
        ))
    });
    attack("userfaultfd", &|| unsafe {
        ret(libc::syscall(libc::SYS_userfaultfd, 0))
    });
    attack("io_uring_setup", &|| unsafe {
        let mut params = [0u8; 120];
        ret(libc::syscall(
            libc::SYS_io_uring_setup,
            1,
            params.as_mut_ptr(),
        ))
    });
    attack("kexec_load", &|| unsafe {
        ret(libc::syscall(libc::SYS_kexec_load, 0, 0, 0, 0))
    });
    attack("init_module", &|| unsafe {
        ret(libc::syscall(
            libc::SYS_init_module,
            std::ptr::null::<u8>(),
            0,
            std::ptr::null::<u8>(),
        ))
    });
    attack("open_by_handle_at", &|| unsafe {
        ret(libc::syscall(
            libc::SYS_open_by_handle_at,
            libc::AT_FDCWD,
            std::ptr::null::<u8>(),
            0,
        ))
    });
    attack("process_vm_readv", &|| unsafe {
        ret(libc::syscall(
            libc::SYS_process_vm_readv,
            1,
            std::ptr::null::<u8>(),
            0,
            std::ptr::null::<u8>(),
            0,
            0,
        ))
    });
    attack("chroot", &|| unsafe {
        ret(libc::chroot(c("/").as_ptr()) as _)
    });
    attack("pivot_root", &|| unsafe {
        ret(libc::syscall(
            libc::SYS_pivot_root,
            c("/").as_ptr(),
            c("/").as_ptr(),
        ))
    });
    for (name, family, kind, proto) in [
        ("socket_alg", libc::AF_ALG, libc::SOCK_SEQPACKET, 0),
        ("socket_vsock", libc::AF_VSOCK, libc::SOCK_STREAM, 0),
        ("socket_packet", libc::AF_PACKET, libc::SOCK_RAW, 0),
        (
            "socket_netlink_netfilter",
            libc::AF_NETLINK,
            libc::SOCK_RAW,
            libc::NETLINK_NETFILTER,
        ),
        (
            "socket_netlink_route",
            libc::AF_NETLINK,
            libc::SOCK_RAW,
            libc::NETLINK_ROUTE,
        ),
        ("socket_inet", libc::AF_INET, libc::SOCK_STREAM, 0),
        ("socket_inet6", libc::AF_INET6, libc::SOCK_DGRAM, 0),
        ("socket_unix", libc::AF_UNIX, libc::SOCK_STREAM, 0),
    ] {
        attack(name, &|| unsafe {
            ret(libc::socket(family, kind, proto) as _)
        });
    }
    attack("tiocsti", &|| unsafe {
        let ch: u8 = b'x';
        ret(libc::ioctl(0, libc::TIOCSTI, &ch) as _)
    });
    attack("tiocsti_high_bits", &|| unsafe {
        let ch: u8 = b'x';
        ret(libc::syscall(
            libc::SYS_ioctl,
            0,
            // TIOCSTI is a c_ulong on glibc and a c_int on musl; the number fits both.
            0xffff_ffff_0000_0000u64 | libc::TIOCSTI as u64,
            &ch,
        ))
    });
    attack("tioclinux", &|| unsafe {
        let sub: u8 = 2;
        ret(libc::ioctl(0, libc::TIOCLINUX, &sub) as _)
    });
    attack("setuid_0", &|| unsafe { ret(libc::setuid(0) as _) });
    attack("sethostname", &|| unsafe {
        ret(libc::sethostname(b"evil".as_ptr() as *const _, 4) as _)
    });
    attack("mknod", &|| unsafe {
        ret(libc::mknod(
            c("/sandbox/probe-dev").as_ptr(),
            libc::S_IFCHR | 0o666,
            libc::makedev(1, 3),
        ) as _)
    });
    attack("chown_to_root", &|| unsafe {
        let path = c("/sandbox/probe-chown");
        let fd = libc::open(path.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o600);
        if fd < 0 {
            return ret(-1);
        }
        ret(libc::fchown(fd, 0, 0) as _)
    });
    // Signals to the sandbox's init are ignored; it must survive.
    unsafe { libc::kill(1, libc::SIGKILL) };
    m.insert(
        "init_alive_after_kill".into(),
        (unsafe { libc::kill(1, 0) } == 0).to_string(),
    );
    for (name, path) in [
        ("write_proc_sysrq", "/proc/sysrq-trigger"),
        ("write_proc_sys", "/proc/sys/kernel/hostname"),
        ("write_cgroup", "/sys/fs/cgroup/cgroup.procs"),
        ("write_cgroup_release_agent", "/sys/fs/cgroup/release_agent"),
        ("write_root", "/probe-was-here"),
        ("write_etc", "/etc/probe-was-here"),
        ("write_usr", "/usr/probe-was-here"),
        ("write_dev", "/dev/probe-was-here"),
        ("write_proc1_exe", "/proc/1/exe"),
        ("write_sandbox", "/sandbox/probe-was-here"),
        ("write_tmp", "/tmp/probe-was-here"),
    ] {
        let create = !(path.starts_with("/proc/") || path.starts_with("/sys/"));
        let r = std::fs::OpenOptions::new()
            .write(true)
            .create(create)
            .truncate(false)
            .open(path);
        m.insert(
            name.into(),
            match r {
                Ok(_) => "ok".into(),
                Err(e) => errno_name(e.raw_os_error().unwrap_or(0)),
            },
        );
    }
    for (name, path) in [
        ("read_proc_kcore", "/proc/kcore"),
        ("read_proc1_environ", "/proc/1/environ"),
        ("list_proc1_root", "/proc/1/root/"),
    ] {
        let r = if name.starts_with("list") {
            std::fs::read_dir(path).map(|_| ())
        } else {
            std::fs::read(path).map(|_| ())
        };
        m.insert(
            name.into(),
            match r {
                Ok(()) => "ok".into(),
                Err(e) => errno_name(e.raw_os_error().unwrap_or(0)),
            },
        );
    }
    // A 32-bit syscall (int 0x80) from a 64-bit process is the socketcall bypass: the process
    // must die, not run it. x32 numbers (bit 30) must not reach the kernel's syscall table.
    #[cfg(target_arch = "x86_64")]
    {
        m.insert(
            "int80_getpid".into(),
            in_child(&|| unsafe {
                let r: i64;
                std::arch::asm!("int 0x80", inlateout("rax") 20i64 => r, options(nostack));
                r
            }),
        );
        m.insert(
            "x32_getpid".into(),
            in_child(&|| unsafe { ret(libc::syscall(0x4000_0000 | libc::SYS_getpid)) }),
        );
    }
    print_map(&m);
}

/// Runs `f` in a child; reports "ok"/errno from its return value, or "killed:SIG" if it died.
fn in_child(f: &dyn Fn() -> i64) -> String {
    unsafe {
        let pid = libc::fork();
        if pid == 0 {
            let r = f();
            let code = if r < 0 { (-r).min(250) as i32 } else { 0 };
            libc::_exit(code);
        }
        let mut status = 0;
        libc::waitpid(pid, &mut status, 0);
        if libc::WIFSIGNALED(status) {
            format!("killed:{}", libc::WTERMSIG(status))
        } else if libc::WEXITSTATUS(status) == 0 {
            "ok".into()
        } else {
            errno_name(libc::WEXITSTATUS(status))
        }
    }
}

fn io_name(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => errno_name(code),
        None => format!("{:?}", e.kind()),
    }
}

fn report(result: std::io::Result<String>) {
    match result {
        Ok(detail) => println!("ok {detail}"),
        Err(e) => println!("error {}", io_name(&e)),
    }
}

const NET_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// `probe tcp ADDR:PORT [MESSAGE]`: connect, send MESSAGE (default "ping"), close the write
/// side, print what comes back until the peer closes.
fn tcp(addr: &str, message: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let sa: std::net::SocketAddr = addr.parse().map_err(std::io::Error::other)?;
    let mut s = std::net::TcpStream::connect_timeout(&sa, NET_TIMEOUT)?;
    s.set_read_timeout(Some(NET_TIMEOUT))?;
    s.write_all(message.as_bytes())?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    Ok(reply)
}

/// `probe udp ADDR:PORT`: send a datagram, wait for one back.
fn udp(addr: &str) -> std::io::Result<String> {
    let sa: std::net::SocketAddr = addr.parse().map_err(std::io::Error::other)?;
    let local = if sa.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    let s = std::net::UdpSocket::bind(local)?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(1)))?;
    s.connect(sa)?;
    s.send(b"probe datagram")?;
    let mut buf = [0u8; 512];
    let n = s.recv(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// `probe icmp ADDR`: an ICMP echo request through an unprivileged ICMP socket.
fn icmp(addr: &str) -> std::io::Result<String> {
    let ip: std::net::Ipv4Addr = addr.parse().map_err(std::io::Error::other)?;
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_ICMP);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let tv = libc::timeval {
            tv_sec: 1,
            tv_usec: 0,
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as u32,
        );
        let mut dst: libc::sockaddr_in = std::mem::zeroed();
        dst.sin_family = libc::AF_INET as u16;
        dst.sin_addr.s_addr = u32::from_ne_bytes(ip.octets());
        let echo: [u8; 8] = [8, 0, 0, 0, 0, 1, 0, 1];
        let r = libc::sendto(
            fd,
            echo.as_ptr() as *const libc::c_void,
            echo.len(),
            0,
            &dst as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        );
        if r < 0 {
            let e = std::io::Error::last_os_error();
            libc::close(fd);
            return Err(e);
        }
        let mut buf = [0u8; 64];
        let n = libc::recv(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0);
        let e = std::io::Error::last_os_error();
        libc::close(fd);
        if n < 0 {
            return Err(e);
        }
        Ok(format!("reply type {}", buf[0]))
    }
}

/// `probe dns SERVER NAME TYPE`: one raw UDP query (TYPE a number); prints the response code
/// and the number of answers.
fn dns(server: &str, name: &str, qtype: u16) -> std::io::Result<String> {
    let mut q = vec![0x4e, 0x53, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(2)))?;
    q[0] = (std::process::id() & 0xff) as u8;
    s.connect((server, 53))?;
    s.send(&q)?;
    let mut buf = [0u8; 4096];
    let n = s.recv(&mut buf)?;
    if n < 12 {
        return Err(std::io::Error::other("short answer"));
    }
    let rcode = buf[3] & 0xf;
    let answers = u16::from_be_bytes([buf[6], buf[7]]);
    Ok(format!("rcode {rcode} answers {answers}"))
}

/// `probe download ADDR:PORT BYTES`: sends BYTES of zeros to an echo server while reading them
/// back, and prints the bytes read and the MB/s.
fn download(addr: &str, bytes: u64) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let sa: std::net::SocketAddr = addr.parse().map_err(std::io::Error::other)?;
    let s = std::net::TcpStream::connect_timeout(&sa, NET_TIMEOUT)?;
    let mut w = s.try_clone()?;
    let t0 = std::time::Instant::now();
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        let chunk = vec![0u8; 256 * 1024];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            w.write_all(&chunk[..n])?;
            left -= n as u64;
        }
        w.shutdown(std::net::Shutdown::Write)
    });
    let mut r = s;
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0u64;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    writer
        .join()
        .map_err(|_| std::io::Error::other("writer panicked"))??;
    let secs = t0.elapsed().as_secs_f64();
    Ok(format!("{got} {:.1}", got as f64 / secs / 1e6))
}

/// `probe serve-bulk ADDR:PORT`: a server for the benchmarks. Each connection sends a byte
/// count and a newline; the server writes that many bytes and closes.
fn serve_bulk(addr: &str) {
    use std::io::{BufRead, Write};
    let listener = std::net::TcpListener::bind(addr).unwrap();
    println!("ready");
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        std::thread::spawn(move || {
            let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                return;
            }
            let mut left: u64 = line.trim().parse().unwrap_or(0);
            let chunk = vec![0u8; 256 * 1024];
            let mut w = conn;
            while left > 0 {
                let n = left.min(chunk.len() as u64) as usize;
                if w.write_all(&chunk[..n]).is_err() {
                    return;
                }
                left -= n as u64;
            }
        });
    }
}

/// `probe fetch ADDR:PORT BYTES`: asks a bulk server for BYTES; prints bytes and MB/s.
fn fetch(addr: &str, bytes: u64) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let sa: std::net::SocketAddr = addr.parse().map_err(std::io::Error::other)?;
    let t0 = std::time::Instant::now();
    let mut s = std::net::TcpStream::connect_timeout(&sa, NET_TIMEOUT)?;
    s.write_all(format!("{bytes}\n").as_bytes())?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0u64;
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    let secs = t0.elapsed().as_secs_f64();
    Ok(format!("{got} {:.1}", got as f64 / secs / 1e6))
}

/// `probe connloop ADDR:PORT SECONDS`: opens, uses (one byte each way) and closes connections
/// to a bulk server for SECONDS; prints the connections per second.
fn connloop(addr: &str, seconds: f64) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let sa: std::net::SocketAddr = addr.parse().map_err(std::io::Error::other)?;
    let t0 = std::time::Instant::now();
    let mut count = 0u64;
    let mut byte = [0u8; 1];
    while t0.elapsed().as_secs_f64() < seconds {
        let mut s = std::net::TcpStream::connect_timeout(&sa, NET_TIMEOUT)?;
        s.write_all(b"1\n")?;
        s.read_exact(&mut byte)?;
        count += 1;
    }
    Ok(format!("{:.0}", count as f64 / t0.elapsed().as_secs_f64()))
}

/// `probe dnsbench SERVER NAME COUNT`: COUNT sequential A queries; prints the median and the
/// 90th percentile round trip in microseconds.
fn dnsbench(server: &str, name: &str, count: usize) -> std::io::Result<String> {
    let mut times = Vec::with_capacity(count);
    for _ in 0..count {
        let t0 = std::time::Instant::now();
        let r = dns(server, name, 1)?;
        if !r.starts_with("rcode 0") {
            return Err(std::io::Error::other(r));
        }
        times.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    Ok(format!(
        "{:.0} {:.0}",
        times[times.len() / 2],
        times[times.len() * 9 / 10]
    ))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or_default();
    match arg(1) {
        "status" => status(),
        "attacks" => attacks(),
        "tcp" => report(tcp(arg(2), if args.len() > 3 { arg(3) } else { "ping" })),
        "udp" => report(udp(arg(2))),
        "icmp" => report(icmp(arg(2))),
        "dns" => report(dns(arg(2), arg(3), arg(4).parse().unwrap_or(1))),
        "download" => report(download(arg(2), arg(3).parse().unwrap_or(1 << 20))),
        "serve-bulk" => serve_bulk(arg(2)),
        "fetch" => report(fetch(arg(2), arg(3).parse().unwrap_or(1 << 20))),
        "connloop" => report(connloop(arg(2), arg(3).parse().unwrap_or(2.0))),
        "dnsbench" => report(dnsbench(arg(2), arg(3), arg(4).parse().unwrap_or(200))),
        _ => {
            eprintln!("usage: probe status|attacks|tcp|udp|icmp|dns|download|serve-bulk|fetch|connloop|dnsbench ...");
            std::process::exit(2);
        }
    }
}
