//! The filtered network of one sandbox, from creation to teardown.
//!
//! [`prepare_filtered_namespace`] runs on the supervisor's only thread while the setup child
//! builds its filesystem, on a network namespace just created and handed to the child: it
//! learns the host's addresses and upstream resolvers (in the host's namespace) and — inside
//! the sandbox's namespace — adds the default routes through loopback, binds the resolver's
//! and the proxy's sockets and loads the nftables ruleset. Every descriptor stays with the supervisor; the workload, which has no
//! capabilities and whose user namespace owns nothing, can neither see nor change them.
//!
//! [`Prepared::start`] runs once the supervisor no longer needs to be single-threaded (after
//! the user namespace helper): one thread with a tokio runtime serves the resolver and the
//! proxy. Their outbound sockets are created on that thread, in the host's namespace. Their
//! decisions reach the supervisor's poll loop as [`NetEvent`]s through a bounded channel and an
//! eventfd, so they are written in order with the sandbox's output.
//!
//! Nothing is created in the host's namespace: when the sandbox and the supervisor's
//! descriptors are gone, the namespace and everything in it go too.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustix::fs::{Mode, OFlags};
use rustix::net::{AddressFamily, SocketFlags, SocketType};
use tokio::sync::Semaphore;

use super::addresses::{PROXY_PORT, RESOLVER_ADDR};
use super::events::NetEvent;
use super::netlink::NetlinkSocket;
use super::nft::{self, Ruleset};
use super::policy::{self, EgressPolicy};
use super::{rtnl, NetError};

/// How long an accept or receive loop pauses after an error (say, out of descriptors).
pub(crate) const RETRY_PAUSE: Duration = Duration::from_millis(10);
/// Events waiting for the supervisor at most; beyond, they are counted and dropped.
const EVENT_QUEUE: usize = 4096;
/// Where the host's resolvers are listed.
const HOST_RESOLV_CONF: &str = "/etc/resolv.conf";

/// Everything made for a filtered sandbox, ready to be served.
#[derive(Debug)]
pub struct Prepared {
    policy: EgressPolicy,
    upstreams: Vec<SocketAddr>,
    host_addrs: Vec<IpAddr>,
    nft: NetlinkSocket,
    dns_udp: OwnedFd,
    dns_tcp: OwnedFd,
    proxy: Vec<OwnedFd>,
    /// Reports of what the rules reject ([`super::nflog`]); `None` where the kernel cannot.
    nflog: Option<OwnedFd>,
    /// A pod's namespace (see [`Ruleset::for_pod`]): the table is removed when serving stops.
    pod: bool,
}

/// Makes the network namespace `ns` (new, loopback up, already handed to the child) a
/// filtered one: routes, addresses, sockets and rules inside it. The child may join `ns`
/// before this is done: the workload starts only once the supervisor has sent the identity,
/// after this.
///
/// `pod`: the namespace is an OCI pod's (the runtime's `io.nsbox.net.*` annotations), which
/// may be one made elsewhere with interfaces and routes of its own: its existing routes and
/// addresses are kept, the resolver listens on 127.0.0.1:53 and gets every DNS query, replies
/// to connections that came in go out, and the table is removed when serving stops (the
/// namespace may outlive the container).
pub fn prepare_filtered_namespace(
    ns: BorrowedFd<'_>,
    policy: &EgressPolicy,
    pod: bool,
) -> Result<Prepared, NetError> {
    let step = |step: &'static str| move |source: io::Error| NetError::Filtered { step, source };
    let upstreams = if policy.dns_upstream.is_empty() {
        let text = std::fs::read_to_string(HOST_RESOLV_CONF).unwrap_or_default();
        let found = policy::resolv_conf_nameservers(&text);
        if found.is_empty() {
            return Err(NetError::NoUpstream);
        }
        found
    } else {
        policy.dns_upstream.clone()
    };
    let mut route = NetlinkSocket::open(super::netlink::ROUTE).map_err(step("netlink"))?;
    let host_addrs = rtnl::host_addresses(&mut route).map_err(step("list the host's addresses"))?;
    drop(route);
    let (nft, dns_udp, dns_tcp, proxy, nflog) = in_namespace(ns, || {
        let mut route = NetlinkSocket::open(super::netlink::ROUTE).map_err(step("netlink"))?;
        let exists = |e: &io::Error| e.raw_os_error() == Some(libc::EEXIST);
        let ipv6 = match rtnl::add_loopback_default_routes(&mut route) {
            // A pod's namespace with a default route of its own (its CNI's): kept, since the
            // rules redirect or refuse every outgoing packet whatever the route. IPv6 is then
            // not served (its packets are refused).
            Err(e) if pod && exists(&e) => false,
            other => other.map_err(step("add routes through loopback"))?,
        };
        match rtnl::add_loopback_addresses(&mut route, ipv6) {
            Err(e) if pod && exists(&e) => {}
            other => other.map_err(step("add the sandbox's loopback addresses"))?,
        }
        let mut proxy = vec![listen_tcp(SocketAddr::from(([127, 0, 0, 1], PROXY_PORT)))
            .map_err(step("proxy socket"))?];
        if ipv6 {
            proxy.push(
                listen_tcp(SocketAddr::from((Ipv6Addr::LOCALHOST, PROXY_PORT)))
                    .map_err(step("proxy socket"))?,
            );
        }
        // In a pod, queries to any address are redirected to the resolver (the containers'
        // resolv.conf is the engine's), and a redirect goes to 127.0.0.1.
        let resolver = if pod {
            SocketAddr::from(([127, 0, 0, 1], nft::DNS_PORT))
        } else {
            SocketAddr::from((RESOLVER_ADDR, 53))
        };
        let dns_udp = bind_udp(resolver).map_err(step("resolver socket"))?;
        let dns_tcp = listen_tcp(resolver).map_err(step("resolver socket"))?;
        let mut nft = NetlinkSocket::open(super::netlink::NETFILTER)
            .map_err(step("open nf_tables netlink"))?;
        let mut ruleset = Ruleset::plan(
            PROXY_PORT,
            &policy.allowed_ranges(),
            &policy.denied_ranges(),
        );
        if pod {
            ruleset = ruleset.for_pod();
            // A table left in the pod's namespace by a killed supervisor (which leaves the pod
            // closed, not open). No live supervisor serves this namespace: its proxy and
            // resolver would hold the ports just bound above. So the table is stale, and
            // replaced.
            let msgs = nft::encode_delete_table(&mut nft);
            match nft.transact(&msgs) {
                Ok(()) => tracing::info!("replaced a stale nsbox table in the pod's namespace"),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(step("remove a stale nftables table")(e)),
            }
        }
        let msgs = ruleset.encode(&mut nft);
        nft.transact(&msgs)
            .map_err(step("load the nftables ruleset"))?;
        // Reports of rejected packets are a convenience: without nfnetlink_log the sandbox
        // is as safe, only quieter.
        let nflog = super::nflog::open().and_then(|fd| {
            let report = if pod {
                Ruleset::report_for_pod(super::nflog::GROUP)
            } else {
                Ruleset::report(super::nflog::GROUP)
            };
            let msgs = report.encode_more(&mut nft);
            nft.transact(&msgs).map(|()| fd)
        });
        let nflog = match nflog {
            Ok(fd) => Some(fd),
            Err(e) => {
                tracing::debug!("filtered network: rejected packets go unreported: {e}");
                None
            }
        };
        Ok::<_, NetError>((nft, dns_udp, dns_tcp, proxy, nflog))
    })??;
    Ok(Prepared {
        policy: policy.clone(),
        upstreams,
        host_addrs,
        nft,
        dns_udp,
        dns_tcp,
        proxy,
        nflog,
        pod,
    })
}

/// Runs `f` with the calling thread in the network namespace `ns`, then returns to its own.
fn in_namespace<T>(ns: BorrowedFd<'_>, f: impl FnOnce() -> T) -> Result<T, NetError> {
    let home = rustix::fs::open(
        "/proc/thread-self/ns/net",
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| NetError::Open(io::Error::from_raw_os_error(e.raw_os_error())))?;
    crate::sys::process::setns(ns, crate::sys::process::flags::NEWNET).map_err(|source| {
        NetError::Filtered {
            step: "enter the sandbox's network namespace",
            source,
        }
    })?;
    let result = f();
    // Back home whatever happened: sockets made later must be the host's.
    crate::sys::process::setns(home.as_fd(), crate::sys::process::flags::NEWNET)
        .map_err(NetError::Return)?;
    Ok(result)
}

fn errno(e: rustix::io::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

fn socket_for(addr: &SocketAddr, kind: SocketType) -> io::Result<OwnedFd> {
    let family = if addr.is_ipv4() {
        AddressFamily::INET
    } else {
        AddressFamily::INET6
    };
    let fd = rustix::net::socket_with(
        family,
        kind,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )
    .map_err(errno)?;
    if addr.is_ipv6() {
        rustix::net::sockopt::set_ipv6_v6only(&fd, true).map_err(errno)?;
    }
    Ok(fd)
}

fn listen_tcp(addr: SocketAddr) -> io::Result<OwnedFd> {
    let fd = socket_for(&addr, SocketType::STREAM)?;
    rustix::net::sockopt::set_socket_reuseaddr(&fd, true).map_err(errno)?;
    rustix::net::bind(&fd, &addr).map_err(errno)?;
    rustix::net::listen(&fd, 1024).map_err(errno)?;
    Ok(fd)
}

fn bind_udp(addr: SocketAddr) -> io::Result<OwnedFd> {
    let fd = socket_for(&addr, SocketType::DGRAM)?;
    rustix::net::bind(&fd, &addr).map_err(errno)?;
    Ok(fd)
}

/// Names that resolved to an address, and how long the address stays in the kernel's sets.
///
/// Every answer costs a bounded amount of work, whatever the sandbox asked before: a hash
/// lookup per (address, name) of the answer, and the expiry of what is due, from a heap ordered
/// by deadline (each pair is in it once; an extended pair is put back when its old deadline
/// comes up). So O(log n) per pair with n at most [`MAX_PAIRS`]: a workload that asks for a
/// hundred thousand names under an allowed wildcard meets the bounds, not a growing scan.
#[derive(Debug, Default)]
struct Reachable {
    by_addr: HashMap<IpAddr, Entry>,
    /// (deadline, address, name) of every pair, soonest first.
    expiry: BinaryHeap<Reverse<(Instant, IpAddr, Arc<str>)>>,
    /// Pairs recorded.
    pairs: usize,
}

#[derive(Debug)]
struct Entry {
    /// Each name and the deadline it counts until.
    names: HashMap<Arc<str>, Instant>,
    kernel_until: Instant,
}

/// (address, name) pairs one sandbox keeps at once: beyond, answers with new pairs are refused
/// until some expire.
pub(crate) const MAX_PAIRS: usize = 4096;
/// Names one address keeps at once (they are checked on every connection to it).
pub(crate) const MAX_NAMES_PER_ADDR: usize = 256;

/// How long after its recorded deadline a name still counts for a connection the kernel let
/// through.
const EXPIRY_GRACE: Duration = Duration::from_secs(5);
/// A set entry is rewritten only when an answer extends its life by more than this.
const REWRITE_SLACK: Duration = Duration::from_secs(30);

/// State the resolver and the proxy share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub policy: EgressPolicy,
    pub host_addrs: Vec<IpAddr>,
    pub upstreams: Vec<SocketAddr>,
    pub events: EventSender,
    pub dns_in_flight: Semaphore,
    /// The proxy's connections at once, and its memory budget (in units of 1 KiB).
    pub connections: Arc<Semaphore>,
    pub budget: Arc<Semaphore>,
    reachable: Mutex<Reachable>,
    nft: Mutex<NetlinkSocket>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Reachable {
    /// Forgets the pairs whose deadline (and grace) passed by `now`.
    fn expire(&mut self, now: Instant) {
        while let Some(Reverse((deadline, _, _))) = self.expiry.peek() {
            if *deadline + EXPIRY_GRACE > now {
                break;
            }
            let Some(Reverse((deadline, addr, name))) = self.expiry.pop() else {
                break;
            };
            let Some(entry) = self.by_addr.get_mut(&addr) else {
                continue;
            };
            match entry.names.get(&name) {
                // Extended since: due later.
                Some(until) if *until > deadline => {
                    let until = *until;
                    self.expiry.push(Reverse((until, addr, name)));
                }
                Some(_) => {
                    entry.names.remove(&name);
                    self.pairs -= 1;
                    if entry.names.is_empty() {
                        self.by_addr.remove(&addr);
                    }
                }
                None => {}
            }
        }
    }

    /// Forgets what expired, then checks that recording `names` for `addrs` stays within the
    /// bounds and returns which of `addrs` need their kernel set entry (re)written to last
    /// until `until`.
    fn admit(
        &mut self,
        addrs: &[IpAddr],
        names: &[String],
        now: Instant,
        until: Instant,
    ) -> Result<Vec<IpAddr>, String> {
        self.expire(now);
        let mut new_pairs = 0;
        for addr in addrs {
            let known = self.by_addr.get(addr);
            let new_here = names
                .iter()
                .filter(|n| known.is_none_or(|e| !e.names.contains_key(n.as_str())))
                .count();
            if known.map_or(0, |e| e.names.len()) + new_here > MAX_NAMES_PER_ADDR {
                return Err(format!(
                    "{addr} is the address of {MAX_NAMES_PER_ADDR} names already (the most nsbox keeps for one address; they expire with their TTL)"
                ));
            }
            new_pairs += new_here;
        }
        if self.pairs + new_pairs > MAX_PAIRS {
            return Err(format!(
                "this sandbox has {MAX_PAIRS} names reachable already (the most nsbox keeps; they expire with their TTL)"
            ));
        }
        Ok(addrs
            .iter()
            .copied()
            .filter(|a| {
                self.by_addr
                    .get(a)
                    .is_none_or(|e| e.kernel_until + REWRITE_SLACK < until)
            })
            .collect())
    }

    /// Records that `names` resolved to `addrs` until `until` (after [`Self::admit`]);
    /// `rewritten` got new kernel entries.
    fn record(&mut self, addrs: &[IpAddr], names: &[String], until: Instant, rewritten: &[IpAddr]) {
        for addr in addrs {
            let entry = self.by_addr.entry(*addr).or_insert(Entry {
                names: HashMap::new(),
                kernel_until: until,
            });
            if rewritten.contains(addr) {
                entry.kernel_until = until;
            }
            for name in names {
                match entry.names.get_mut(name.as_str()) {
                    Some(deadline) => *deadline = (*deadline).max(until),
                    None => {
                        let name: Arc<str> = Arc::from(name.as_str());
                        entry.names.insert(name.clone(), until);
                        self.expiry.push(Reverse((until, *addr, name)));
                        self.pairs += 1;
                    }
                }
            }
        }
    }

    /// The names that resolved to `ip` and are valid at `now` (with [`EXPIRY_GRACE`]: the
    /// kernel's set entry, which let a connection through, expires a little after the
    /// deadline recorded here).
    fn names_for(&self, ip: IpAddr, now: Instant) -> Vec<String> {
        let now = now.checked_sub(EXPIRY_GRACE).unwrap_or(now);
        self.by_addr
            .get(&ip)
            .map(|e| {
                e.names
                    .iter()
                    .filter(|(_, until)| **until > now)
                    .map(|(n, _)| n.to_string())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Why an answer's addresses could not be made reachable.
#[derive(Debug)]
pub(crate) enum AllowError {
    /// The bounds of [`Reachable`] (the answer is refused).
    Full(String),
    /// The kernel refused the set elements.
    Kernel(io::Error),
}

impl Shared {
    /// Makes `addrs` reachable for `lifetime` on behalf of `names` (the chain of an answer):
    /// the kernel's sets first, then the proxy's record.
    pub fn allow(
        &self,
        addrs: &[IpAddr],
        names: &[String],
        lifetime: Duration,
    ) -> Result<(), AllowError> {
        let now = Instant::now();
        let until = now + lifetime;
        let mut reachable = lock(&self.reachable);
        let stale = reachable
            .admit(addrs, names, now, until)
            .map_err(AllowError::Full)?;
        if !stale.is_empty() {
            let mut nft = lock(&self.nft);
            let msgs = nft::encode_allow(&mut nft, &stale, lifetime);
            nft.transact(&msgs).map_err(AllowError::Kernel)?;
        }
        reachable.record(addrs, names, until, &stale);
        Ok(())
    }

    /// The allowed names that resolved to `ip` and are still valid.
    pub fn names_for(&self, ip: IpAddr) -> Vec<String> {
        lock(&self.reachable).names_for(ip, Instant::now())
    }
}

/// The sending side of the event channel.
#[derive(Debug)]
pub(crate) struct EventSender {
    /// False when nobody reads them (no `--json`, no `--log-network`): nothing is sent and
    /// the supervisor is not woken.
    wanted: bool,
    tx: SyncSender<NetEvent>,
    wake: Arc<OwnedFd>,
    dropped: AtomicU64,
}

impl EventSender {
    pub fn send(&self, event: NetEvent) {
        if !self.wanted {
            return;
        }
        match self.tx.try_send(event) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => return,
        }
        let _ = rustix::io::write(self.wake.as_fd(), &1u64.to_ne_bytes());
    }
}

/// The running resolver and proxy of one sandbox, seen from the supervisor.
#[derive(Debug)]
pub struct Egress {
    events: Receiver<NetEvent>,
    wake: Arc<OwnedFd>,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The reports socket, read once more when serving stops.
    nflog: Option<OwnedFd>,
    /// Remove the table when serving stops ([`Prepared::pod`]).
    pod: bool,
}

impl Prepared {
    /// Starts serving on a thread of its own (call only once the supervisor may have threads).
    /// `events`: whether the decisions are wanted (see [`Egress::take_events`]).
    pub fn start(self, events: bool) -> Result<Egress, NetError> {
        let pod = self.pod;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(NetError::Runtime)?;
        let wake = Arc::new(
            rustix::event::eventfd(
                0,
                rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
            )
            .map_err(|e| NetError::Runtime(errno(e)))?,
        );
        let (tx, rx) = sync_channel(EVENT_QUEUE);
        let cap = self.policy.max_connections;
        let shared = Arc::new(Shared {
            policy: self.policy,
            host_addrs: self.host_addrs,
            upstreams: self.upstreams,
            events: EventSender {
                wanted: events,
                tx,
                wake: wake.clone(),
                dropped: AtomicU64::new(0),
            },
            dns_in_flight: Semaphore::new(super::resolver::MAX_IN_FLIGHT),
            connections: Arc::new(Semaphore::new(cap)),
            budget: Arc::new(Semaphore::new(
                super::proxy::budget(cap) / super::proxy::UNIT,
            )),
            reachable: Mutex::new(Reachable::default()),
            nft: Mutex::new(self.nft),
        });
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let served = shared.clone();
        let (dns_udp, dns_tcp, proxy) = (self.dns_udp, self.dns_tcp, self.proxy);
        let nflog = self.nflog;
        let nflog_served = nflog.as_ref().and_then(|fd| fd.try_clone().ok());
        let thread = std::thread::Builder::new()
            .name("nsbox-egress".into())
            .spawn(move || {
                runtime.block_on(async move {
                    if let Err(e) = spawn_servers(&served, dns_udp, dns_tcp, proxy, nflog_served) {
                        tracing::warn!("filtered network: cannot serve: {e}");
                    }
                    let _ = stop_rx.await;
                });
                // Dropping the runtime cancels every task and closes every socket.
                drop(runtime);
            })
            .map_err(NetError::Runtime)?;
        Ok(Egress {
            events: rx,
            wake,
            shared,
            stop: Some(stop_tx),
            thread: Some(thread),
            nflog,
            pod,
        })
    }
}

fn spawn_servers(
    shared: &Arc<Shared>,
    dns_udp: OwnedFd,
    dns_tcp: OwnedFd,
    proxy: Vec<OwnedFd>,
    nflog: Option<OwnedFd>,
) -> io::Result<()> {
    let udp = tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(dns_udp))?;
    tokio::spawn(super::resolver::serve_udp(udp, shared.clone()));
    let tcp = tokio::net::TcpListener::from_std(std::net::TcpListener::from(dns_tcp))?;
    tokio::spawn(super::resolver::serve_tcp(tcp, shared.clone()));
    for fd in proxy {
        let listener = tokio::net::TcpListener::from_std(std::net::TcpListener::from(fd))?;
        tokio::spawn(super::proxy::serve(listener, shared.clone()));
    }
    if let Some(fd) = nflog {
        let fd = tokio::io::unix::AsyncFd::with_interest(fd, tokio::io::Interest::READABLE)?;
        tokio::spawn(serve_reports(fd, shared.clone()));
    }
    Ok(())
}

/// Turns reports of rejected packets into events until the task is dropped.
async fn serve_reports(fd: tokio::io::unix::AsyncFd<OwnedFd>, shared: Arc<Shared>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let Ok(mut ready) = fd.readable().await else {
            return;
        };
        // Readiness is cleared only when a read would block, so no report is left behind.
        let read = ready.try_io(|inner| {
            rustix::net::recv(inner.get_ref(), &mut buf, rustix::net::RecvFlags::DONTWAIT)
                .map(|(n, _)| n)
                .map_err(errno)
        });
        match read {
            Ok(Ok(n)) => {
                for event in super::nflog::events(&buf[..n.min(buf.len())]) {
                    shared.events.send(event);
                }
            }
            // Reports lost to a full buffer: go on with what follows.
            Ok(Err(e)) if e.raw_os_error() == Some(libc::ENOBUFS) => {}
            Ok(Err(e)) => {
                tracing::debug!("filtered network: reports of rejected packets: {e}");
                return;
            }
            Err(_would_block) => {}
        }
    }
}

impl Egress {
    /// Readable when events are waiting.
    pub fn wake_fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    /// Takes the events waiting, oldest first.
    pub fn take_events(&mut self) -> Vec<NetEvent> {
        let mut counter = [0u8; 8];
        let _ = rustix::io::read(self.wake.as_fd(), &mut counter);
        let mut out: Vec<NetEvent> = self.events.try_iter().collect();
        let dropped = self.shared.events.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            out.push(NetEvent::NetworkEventsDropped { count: dropped });
        }
        out
    }

    /// Stops serving (closing every socket and connection) and returns the last events.
    pub fn stop(&mut self) -> Vec<NetEvent> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        // Reports the serving thread had no turn to read (the workload may end right after
        // its packet was rejected).
        if let Some(fd) = self.nflog.take() {
            for event in super::nflog::drain(fd.as_fd()) {
                self.shared.events.send(event);
            }
        }
        if std::mem::take(&mut self.pod) {
            // The pod's namespace may outlive this container; its rules must not (a killed
            // supervisor leaves them, which keeps the pod filtered: closed, not open).
            let mut nft = lock(&self.shared.nft);
            let msgs = nft::encode_delete_table(&mut nft);
            if let Err(e) = nft.transact(&msgs) {
                tracing::warn!("the pod's nftables table was not removed: {e}");
            }
        }
        self.take_events()
    }
}

impl Drop for Egress {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Nanoseconds of the wall clock, for seeds where the random pool is unavailable.
pub(crate) fn coarse_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn kernel_entries_are_written_when_new_or_extended_and_names_expire() {
        let mut r = Reachable::default();
        let t0 = Instant::now();
        let min = Duration::from_secs(60);
        let (a, b) = (ip("203.0.113.7"), ip("2001:db8::7"));
        let names = vec!["api.example.com".to_string()];
        // A new answer: both addresses need kernel entries.
        let stale = r.admit(&[a, b], &names, t0, t0 + 6 * min).unwrap();
        assert_eq!(stale, vec![a, b]);
        r.record(&[a, b], &names, t0 + 6 * min, &stale);
        // The same answer a little later extends by less than the slack: nothing to write.
        let t1 = t0 + Duration::from_secs(10);
        assert!(r.admit(&[a], &names, t1, t1 + 6 * min).unwrap().is_empty());
        // Much later it does.
        let t2 = t0 + 2 * min;
        assert_eq!(r.admit(&[a], &names, t2, t2 + 6 * min).unwrap(), vec![a]);
        // Names count until their deadline (and a few seconds of grace), not after.
        assert_eq!(r.names_for(a, t0 + 5 * min), names);
        assert_eq!(r.names_for(a, t0 + 6 * min + Duration::from_secs(2)), names);
        assert!(r.names_for(a, t0 + 7 * min).is_empty());
        assert!(r.names_for(ip("203.0.113.8"), t0).is_empty());
        // Expired entries are forgotten.
        r.expire(t0 + 10 * min);
        assert!(r.by_addr.is_empty());
        assert!(r.expiry.is_empty());
        assert_eq!(r.pairs, 0);
    }

    #[test]
    fn an_extended_name_outlives_its_first_deadline() {
        let mut r = Reachable::default();
        let t0 = Instant::now();
        let a = ip("203.0.113.7");
        let names = vec!["api.example.com".to_string()];
        let min = Duration::from_secs(60);
        r.record(&[a], &names, t0 + 6 * min, &[a]);
        r.record(&[a], &names, t0 + 12 * min, &[a]);
        assert_eq!(r.expiry.len(), 1, "one heap entry per pair");
        r.expire(t0 + 8 * min);
        assert_eq!(r.names_for(a, t0 + 8 * min), names);
        assert_eq!(r.expiry.len(), 1, "put back for its new deadline");
        r.expire(t0 + 13 * min);
        assert!(r.by_addr.is_empty());
    }

    #[test]
    fn a_second_name_for_an_address_keeps_the_first() {
        let mut r = Reachable::default();
        let t0 = Instant::now();
        let a = ip("203.0.113.30");
        let until = t0 + Duration::from_secs(360);
        r.record(&[a], &["cdn.allowed.example".into()], until, &[a]);
        r.record(&[a], &["www.allowed.example".into()], until, &[]);
        let mut names = r.names_for(a, t0);
        names.sort();
        assert_eq!(names, ["cdn.allowed.example", "www.allowed.example"]);
    }

    /// Distinct names without end (a wildcard) meet the bounds: memory stays capped, the
    /// refusal says why, and names already known are still refreshed.
    #[test]
    fn the_bookkeeping_is_bounded_per_address_and_per_sandbox() {
        let mut r = Reachable::default();
        let t0 = Instant::now();
        let until = t0 + Duration::from_secs(360);
        let one = ip("203.0.113.50");
        let name = |i: usize| vec![format!("n{i}.many.example")];
        for i in 0..MAX_NAMES_PER_ADDR {
            let stale = r.admit(&[one], &name(i), t0, until).unwrap();
            r.record(&[one], &name(i), until, &stale);
        }
        let err = r.admit(&[one], &name(100_000), t0, until).unwrap_err();
        assert!(err.contains("256 names"), "{err}");
        assert!(r.admit(&[one], &name(7), t0, until).is_ok(), "a known pair");
        assert_eq!(r.pairs, MAX_NAMES_PER_ADDR);
        // Across addresses, the sandbox-wide cap.
        let mut i = 0;
        while r.pairs < MAX_PAIRS {
            let addr = IpAddr::V4(std::net::Ipv4Addr::from(
                0xc000_0200u32 + 1 + (i as u32 % 200),
            ));
            let stale = r.admit(&[addr], &name(1_000_000 + i), t0, until).unwrap();
            r.record(&[addr], &name(1_000_000 + i), until, &stale);
            i += 1;
        }
        let err = r
            .admit(&[ip("198.51.100.9")], &name(5), t0, until)
            .unwrap_err();
        assert!(err.contains("4096 names"), "{err}");
        assert_eq!(r.expiry.len(), MAX_PAIRS);
        // They all expire, and room comes back.
        r.expire(until + EXPIRY_GRACE);
        assert_eq!((r.pairs, r.by_addr.len(), r.expiry.len()), (0, 0, 0));
        assert!(r
            .admit(
                &[one],
                &name(100_000),
                until,
                until + until.duration_since(t0)
            )
            .is_ok());
    }
}
