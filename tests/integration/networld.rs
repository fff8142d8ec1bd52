//! A small fake internet for the filtered-network tests and benchmarks (DESIGN.md, "Networks in
//! tests"). Two network namespaces, both named with an `nsb` prefix and removed on drop:
//!
//! ```text
//!   <name>h  "the host": nsbox runs here              <name>i  "the internet"
//!   198.51.100.2/24, 2001:db8:1::2/64  ── veth ──  198.51.100.1/24, 2001:db8:1::1/64
//!   (a TCP service on :8080 stands for                 on lo: 192.0.2.53 (dnsmasq), 203.0.113.10/.20/
//!    the host's own services)                          .30/.40, 2001:db8:2::10 (HTTP on 80 and
//!                                                      8080, HTTPS with a test CA on 443 and 8443,
//!                                                      TCP echo, a TCP sink, UDP sink)
//! ```
//!
//! Only documentation addresses are used and no route leads anywhere else, so no packet leaves
//! the machine. Servers are real programs (dnsmasq, Python's http.server and sockets) whose pids
//! the world keeps and ends on drop.
#![allow(dead_code)]

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const DNS: &str = "192.0.2.53";
/// web.allowed.example (also AAAA WEB6): HTTP on 80, HTTPS on 443, UDP sink on 9999 and 443.
pub const WEB4: &str = "203.0.113.10";
pub const WEB6: &str = "2001:db8:2::10";
/// other.example: a server no test allows.
pub const OTHER4: &str = "203.0.113.20";
/// cdn.allowed.example and evil.example share this address (a CDN).
pub const CDN4: &str = "203.0.113.30";
/// tcp.allowed.example: TCP echo on 5432 and 5433, a sink that never reads on [`SINK_PORT`].
pub const TCP4: &str = "203.0.113.40";
pub const TCP6: &str = "2001:db8:2::40";
/// The port of the server on TCP4 that accepts and never reads.
pub const SINK_PORT: u16 = 5434;
/// Every name below many.allowed.example resolves to this address (nothing serves it).
pub const MANY4: &str = "203.0.113.50";
/// The host's own addresses (where nsbox runs).
pub const HOST4: &str = "198.51.100.2";
pub const HOST6: &str = "2001:db8:1::2";
/// The port of the TCP service in the host's namespace.
pub const HOST_SERVICE_PORT: u16 = 8080;

const PYTHON: &str = "/usr/bin/python3";

/// The servers' program (one script, several roles).
const SERVERS_PY: &str = r#"
import http.server, os, socket, ssl, sys, threading, zipfile, io, hashlib, json

def ready():
    print("ready", flush=True)

def prepare(root):
    # A wheel and a PEP 503 index for `pip download`, an npm registry document.
    os.makedirs(os.path.join(root, "files"), exist_ok=True)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("nsbox_probe_pkg/__init__.py", "VALUE = 42\n")
        di = "nsbox_probe_pkg-1.0.dist-info/"
        z.writestr(di + "METADATA", "Metadata-Version: 2.1\nName: nsbox-probe-pkg\nVersion: 1.0\n")
        z.writestr(di + "WHEEL", "Wheel-Version: 1.0\nGenerator: nsbox-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(di + "RECORD", "")
    wheel = buf.getvalue()
    name = "nsbox_probe_pkg-1.0-py3-none-any.whl"
    open(os.path.join(root, "files", name), "wb").write(wheel)
    digest = hashlib.sha256(wheel).hexdigest()
    os.makedirs(os.path.join(root, "simple", "nsbox-probe-pkg"), exist_ok=True)
    open(os.path.join(root, "simple", "nsbox-probe-pkg", "index.html"), "w").write(
        '<html><body><a href="../../files/%s#sha256=%s">%s</a></body></html>\n' % (name, digest, name))
    os.makedirs(os.path.join(root, "npm"), exist_ok=True)
    doc = {"name": "nsbox-probe-pkg", "dist-tags": {"latest": "1.0.0"},
           "versions": {"1.0.0": {"name": "nsbox-probe-pkg", "version": "1.0.0",
                                   "dist": {"tarball": "https://web.allowed.example/npm/nsbox-probe-pkg-1.0.0.tgz"}}}}
    open(os.path.join(root, "npm", "nsbox-probe-pkg"), "w").write(json.dumps(doc))
    open(os.path.join(root, "index.html"), "w").write("hello from the fake internet\n")

def web(root, cert, key):
    class Handler(http.server.SimpleHTTPRequestHandler):
        # Keep-alive, as real servers: several requests may share a connection.
        protocol_version = "HTTP/1.1"
        def __init__(self, *a, **k):
            super().__init__(*a, directory=root, **k)
        def do_GET(self):
            if self.path == "/whoami":
                body = ("host=%s\n" % self.headers.get("Host", "")).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            return super().do_GET()
        def log_message(self, *a):
            pass
    class Server(http.server.ThreadingHTTPServer):
        address_family = socket.AF_INET6
        daemon_threads = True
        def server_bind(self):
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            super().server_bind()
    plain = Server(("::", 80), Handler)
    tls = Server(("::", 443), Handler)
    # The same on ports CDNs also serve, to show the checks do not depend on the port.
    plain_alt = Server(("::", 8080), Handler)
    tls_alt = Server(("::", 8443), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    tls.socket = ctx.wrap_socket(tls.socket, server_side=True)
    tls_alt.socket = ctx.wrap_socket(tls_alt.socket, server_side=True)
    for s in (plain, tls, plain_alt, tls_alt):
        threading.Thread(target=s.serve_forever, daemon=True).start()
    ready()
    threading.Event().wait()

def parse(addr):
    host, port = addr.rsplit(":", 1)
    host = host.strip("[]")
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    return fam, (host, int(port))

def tcp(addrs):
    # Echo: everything read is written back; at end of input the write side is shut down.
    def client(c):
        with c:
            while True:
                data = c.recv(262144)
                if not data:
                    break
                c.sendall(data)
            try:
                c.shutdown(socket.SHUT_WR)
            except OSError:
                pass
    def serve(l):
        while True:
            c, _ = l.accept()
            threading.Thread(target=client, args=(c,), daemon=True).start()
    for a in addrs:
        fam, sa = parse(a)
        l = socket.socket(fam, socket.SOCK_STREAM)
        l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if fam == socket.AF_INET6:
            l.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        l.bind(sa)
        l.listen(128)
        threading.Thread(target=serve, args=(l,), daemon=True).start()
    ready()
    threading.Event().wait()

def sink(log, addrs):
    # Accepts and never reads: what a client sends piles up in buffers on the way. Each
    # accepted connection is a line in the log.
    held = []
    lock = threading.Lock()
    def serve(l):
        while True:
            c, _ = l.accept()
            with lock:
                held.append(c)
                with open(log, "a") as f:
                    f.write("accepted\n")
    for a in addrs:
        fam, sa = parse(a)
        l = socket.socket(fam, socket.SOCK_STREAM)
        l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        l.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        l.bind(sa)
        l.listen(1024)
        threading.Thread(target=serve, args=(l,), daemon=True).start()
    ready()
    threading.Event().wait()

def udp(log, addrs):
    lock = threading.Lock()
    def serve(s, a):
        while True:
            data, peer = s.recvfrom(65536)
            with lock, open(log, "a") as f:
                f.write("%s %s %d\n" % (a, peer[0], len(data)))
            s.sendto(data, peer)
    for a in addrs:
        fam, sa = parse(a)
        s = socket.socket(fam, socket.SOCK_DGRAM)
        if fam == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind(sa)
        threading.Thread(target=serve, args=(s, a), daemon=True).start()
    ready()
    threading.Event().wait()

role = sys.argv[1]
if role == "prepare":
    prepare(sys.argv[2])
elif role == "web":
    web(*sys.argv[2:5])
elif role == "tcp":
    tcp(sys.argv[2:])
elif role == "sink":
    sink(sys.argv[2], sys.argv[3:])
elif role == "udp":
    udp(sys.argv[2], sys.argv[3:])
"#;

/// A running fake internet. Dropping it ends its servers and removes its namespaces.
pub struct World {
    /// Prefix of every object: `nsb<pid><n>`.
    pub name: String,
    /// The namespace nsbox runs in.
    pub host_ns: String,
    /// The "internet" namespace.
    pub inet_ns: String,
    pub dir: tempfile::TempDir,
    children: Vec<Child>,
}

static WORLDS: AtomicU32 = AtomicU32::new(0);

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn ip(args: &[&str]) {
    run(Command::new("ip").args(args));
}

impl World {
    /// Builds the namespaces and starts the servers; the directory `self.dir` holds the web
    /// root (`www/`), the test CA (`ca.pem`) and the servers' logs.
    pub fn start() -> World {
        let n = WORLDS.fetch_add(1, Ordering::Relaxed);
        let name = format!("nsb{}x{n}", std::process::id() % 100_000);
        let dir = tempfile::Builder::new()
            .prefix("nsb-world-")
            .tempdir()
            .expect("temp dir");
        // The sandbox user reads the CA and the web root through a read-only mount.
        set_mode(dir.path(), 0o755);
        let mut world = World {
            host_ns: format!("{name}h"),
            inet_ns: format!("{name}i"),
            name,
            dir,
            children: Vec::new(),
        };
        world.build_network();
        world.make_certificates();
        world.make_content();
        world.start_servers();
        world
    }

    fn build_network(&self) {
        let (h, i) = (&self.host_ns, &self.inet_ns);
        ip(&["netns", "add", h]);
        ip(&["netns", "add", i]);
        let (vh, vi) = (format!("{}v", h), format!("{}v", i));
        ip(&["link", "add", &vh, "type", "veth", "peer", "name", &vi]);
        ip(&["link", "set", &vh, "netns", h]);
        ip(&["link", "set", &vi, "netns", i]);
        for ns in [h, i] {
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        ip(&["-n", h, "addr", "add", &format!("{HOST4}/24"), "dev", &vh]);
        ip(&[
            "-n",
            h,
            "addr",
            "add",
            &format!("{HOST6}/64"),
            "dev",
            &vh,
            "nodad",
        ]);
        ip(&["-n", i, "addr", "add", "198.51.100.1/24", "dev", &vi]);
        ip(&[
            "-n",
            i,
            "addr",
            "add",
            "2001:db8:1::1/64",
            "dev",
            &vi,
            "nodad",
        ]);
        ip(&["-n", h, "link", "set", &vh, "up"]);
        ip(&["-n", i, "link", "set", &vi, "up"]);
        ip(&["-n", h, "route", "add", "default", "via", "198.51.100.1"]);
        ip(&[
            "-n",
            h,
            "-6",
            "route",
            "add",
            "default",
            "via",
            "2001:db8:1::1",
        ]);
        for addr in [DNS, WEB4, OTHER4, CDN4, TCP4] {
            ip(&["-n", i, "addr", "add", &format!("{addr}/32"), "dev", "lo"]);
        }
        for addr in [WEB6, TCP6] {
            ip(&["-n", i, "addr", "add", &format!("{addr}/128"), "dev", "lo"]);
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn make_certificates(&self) {
        let d = self.dir.path().display().to_string();
        let script = format!(
            r#"set -e; cd '{d}'
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.pem -days 2 -subj '/CN=nsbox test CA' -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout server.key -out server.csr -subj '/CN=web.allowed.example' 2>/dev/null
printf 'subjectAltName=DNS:web.allowed.example,DNS:cdn.allowed.example,DNS:evil.example,DNS:other.example,DNS:tcp.allowed.example\nextendedKeyUsage=serverAuth\n' > ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile ext 2>/dev/null
chmod 644 ca.pem"#
        );
        run(Command::new("sh").arg("-c").arg(script));
    }

    fn make_content(&self) {
        let www = self.path("www");
        std::fs::create_dir_all(&www).expect("www");
        run(Command::new(PYTHON)
            .args(["-c", SERVERS_PY, "prepare"])
            .arg(&www));
        // A git repository served over "dumb" HTTP(S).
        let d = self.dir.path().display().to_string();
        let script = format!(
            r#"set -e; cd '{d}'
git init -q -b main src
echo 'cloned through nsbox' > src/README
git -C src add README
git -C src -c user.name=t -c user.email=t@example.com commit -qm init
git clone -q --bare src www/repo.git
git -C www/repo.git update-server-info
chmod -R a+rX www"#
        );
        run(Command::new("sh").arg("-c").arg(script));
    }

    fn start_servers(&mut self) {
        let log = self.path("dnsmasq.log");
        let mut dnsmasq = vec![
            "netns".to_string(),
            "exec".into(),
            self.inet_ns.clone(),
            "dnsmasq".into(),
            "--keep-in-foreground".into(),
            "--no-resolv".into(),
            "--no-hosts".into(),
            "--user=root".into(),
            "--bind-interfaces".into(),
            format!("--listen-address={DNS}"),
            "--local-ttl=60".into(),
            "--log-queries".into(),
            format!("--log-facility={}", log.display()),
            format!("--pid-file={}", self.path("dnsmasq.pid").display()),
        ];
        for (name, addrs) in [
            ("web.allowed.example", format!("{WEB4},{WEB6}")),
            ("cdn.allowed.example", CDN4.to_string()),
            ("evil.example", CDN4.to_string()),
            ("other.example", OTHER4.to_string()),
            ("tcp.allowed.example", format!("{TCP4},{TCP6}")),
            ("rebind10.allowed.example", "10.0.0.1".into()),
            ("rebind127.allowed.example", "127.0.0.1".into()),
            ("metadata.allowed.example", "169.254.169.254".into()),
            ("mapped.allowed.example", "::ffff:127.0.0.1".into()),
            ("ula.allowed.example", "fd00::1".into()),
            ("self.allowed.example", HOST4.into()),
        ] {
            dnsmasq.push(format!("--host-record={name},{addrs}"));
        }
        dnsmasq.push(format!("--address=/many.allowed.example/{MANY4}"));
        dnsmasq.push("--cname=alias.allowed.example,other.example".into());
        dnsmasq.push("--cname=goodalias.allowed.example,web.allowed.example".into());
        dnsmasq.push("--txt-record=txt.allowed.example,exfiltrate-me".into());
        let child = Command::new("ip")
            .args(&dnsmasq)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dnsmasq");
        self.children.push(child);

        let www = self.path("www").display().to_string();
        let cert = self.path("server.pem").display().to_string();
        let key = self.path("server.key").display().to_string();
        self.spawn_ready(&self.inet_ns.clone(), &["web", &www, &cert, &key]);
        let tcp: Vec<String> = [TCP4, &format!("[{TCP6}]")]
            .iter()
            .flat_map(|a| [format!("{a}:5432"), format!("{a}:5433")])
            .collect();
        let mut args = vec!["tcp"];
        args.extend(tcp.iter().map(String::as_str));
        self.spawn_ready(&self.inet_ns.clone(), &args);
        let sink_log = self.path("sink.log").display().to_string();
        let sink = format!("{TCP4}:{SINK_PORT}");
        self.spawn_ready(&self.inet_ns.clone(), &["sink", &sink_log, &sink]);
        let udp_log = self.path("udp.log").display().to_string();
        let web6 = format!("[{WEB6}]:9999");
        self.spawn_ready(
            &self.inet_ns.clone(),
            &[
                "udp",
                &udp_log,
                &format!("{WEB4}:9999"),
                &format!("{WEB4}:443"),
                &web6,
            ],
        );
        // The host's own service, on every address of the host's namespace.
        let service4 = format!("0.0.0.0:{HOST_SERVICE_PORT}");
        let service6 = format!("[::]:{HOST_SERVICE_PORT}");
        self.spawn_ready(&self.host_ns.clone(), &["tcp", &service4, &service6]);
        // dnsmasq answers once it has bound its socket.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = self.in_host(&[
                "dig",
                "+short",
                "+tries=1",
                "+timeout=1",
                &format!("@{DNS}"),
                "web.allowed.example",
            ]);
            if String::from_utf8_lossy(&out.stdout).contains(WEB4) {
                break;
            }
            assert!(Instant::now() < deadline, "dnsmasq did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts a server role in `ns` and waits for its "ready" line.
    fn spawn_ready(&mut self, ns: &str, args: &[&str]) {
        let mut full = vec![PYTHON, "-c", SERVERS_PY];
        full.extend_from_slice(args);
        self.spawn_server(ns, &full);
    }

    /// Starts `argv` in namespace `ns` (kept until the world is dropped) and waits for the
    /// "ready" line it prints.
    pub fn spawn_server(&mut self, ns: &str, argv: &[&str]) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(argv)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start a server");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("server ready line");
        assert_eq!(line.trim(), "ready", "server {argv:?} did not start");
        self.children.push(child);
    }

    /// Runs a program in the host's namespace (not sandboxed).
    pub fn in_host(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.host_ns))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("nsenter")
    }

    /// `nsbox ARGS...` in the host's namespace, as a command to adjust.
    pub fn nsbox_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.host_ns))
            .arg(super::support::nsbox_bin())
            .args(args)
            .env_remove("NSBOX_LOG");
        cmd
    }

    /// Flags every filtered test uses: the world's resolver, the world's files at /world and
    /// the probe at /opt/nsbox-probe.
    pub fn filtered_flags(&self) -> Vec<String> {
        let mut flags = vec![
            "--net".to_string(),
            "filtered".into(),
            "--dns-upstream".into(),
            DNS.into(),
            "--mount".into(),
            format!("{}:/world", self.dir.path().display()),
        ];
        flags.extend(super::support::probe_mount());
        flags
    }

    /// `nsbox exec <filtered flags> EXTRA... -- sh -c SCRIPT` in the host's namespace.
    pub fn sh(&self, extra: &[&str], script: &str) -> super::support::Run {
        let flags = self.filtered_flags();
        let mut args: Vec<&str> = vec!["exec"];
        args.extend(flags.iter().map(String::as_str));
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--", "sh", "-c", script]);
        self.nsbox_cmd(&args)
            .stdin(Stdio::null())
            .output()
            .expect("run nsbox")
            .into()
    }

    /// Queries that reached the world's DNS server.
    pub fn dns_log(&self) -> String {
        std::fs::read_to_string(self.path("dnsmasq.log")).unwrap_or_default()
    }

    /// Connections the server that never reads accepted.
    pub fn sink_accepted(&self) -> usize {
        std::fs::read_to_string(self.path("sink.log"))
            .unwrap_or_default()
            .lines()
            .count()
    }

    /// Datagrams the UDP sink received ("addr peer length" lines).
    pub fn udp_log(&self) -> String {
        std::fs::read_to_string(self.path("udp.log")).unwrap_or_default()
    }

    pub fn ca(&self) -> &'static str {
        "/world/ca.pem"
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

impl Drop for World {
    fn drop(&mut self) {
        for child in &mut self.children {
            // `ip netns exec` execs the server, so the child's pid is the server's.
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(child.id() as i32).expect("pid"),
                rustix::process::Signal::TERM,
            );
            let _ = child.wait();
        }
        for ns in [&self.host_ns, &self.inet_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}
