//! nsbox's egress proxy for a filtered sandbox: a TCP listener on the sandbox's loopback
//! (127.0.0.1 and ::1) that the nftables rules redirect allowed connections to, served from
//! the supervisor.
//!
//! For each connection: recover the original destination (conntrack, `SO_ORIGINAL_DST`), check
//! it against the policy — an allowed range, or an address an allowed name of this sandbox
//! resolved to — and on port 443 read the TLS ClientHello's SNI, on port 80 the HTTP Host, and
//! check that name too (an address a CDN shares between an allowed and another site does not
//! open the other site). Then connect from the host's namespace and relay both ways, passing
//! half-closes on. A refused connection is reset at once and reported.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;

use super::egress::Shared;
use super::events::{Decision, NetEvent};
use super::policy::ConnectionVerdict;
use super::sniff::{self, Sniffed, MAX_SNIFF};

/// Time a client has to send its ClientHello or request head.
const SNIFF_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Bytes in flight per direction (the pipe between the two sockets).
const RELAY_PIPE: usize = 1 << 20;

/// Accepts redirected connections until the task is dropped.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            // Out of descriptors or memory: let the rest run, then try again.
            tokio::time::sleep(super::egress::RETRY_PAUSE).await;
            continue;
        };
        let permit = shared.connections.clone().try_acquire_owned();
        let shared = shared.clone();
        tokio::spawn(async move {
            match permit {
                Ok(permit) => handle(client, &shared, permit).await,
                Err(_) => {
                    if let Ok(dst) = original_destination(&client) {
                        shared.events.send(connection_event(
                            Decision::Refused,
                            dst,
                            None,
                            None,
                            "too many connections at once".into(),
                        ));
                    }
                    reset(&client);
                }
            }
        });
    }
}

fn connection_event(
    decision: Decision,
    dst: SocketAddr,
    name: Option<String>,
    rule: Option<String>,
    reason: String,
) -> NetEvent {
    NetEvent::Connection {
        decision,
        address: dst.ip().to_canonical(),
        port: dst.port(),
        name,
        rule,
        reason,
    }
}

/// The destination the sandbox connected to, before the redirection.
fn original_destination(stream: &TcpStream) -> io::Result<SocketAddr> {
    let errno = |e: rustix::io::Errno| io::Error::from_raw_os_error(e.raw_os_error());
    let fd = stream.as_fd();
    match stream.local_addr()? {
        SocketAddr::V4(_) => rustix::net::sockopt::ip_original_dst(fd)
            .map(SocketAddr::V4)
            .map_err(errno),
        SocketAddr::V6(_) => rustix::net::sockopt::ipv6_original_dst(fd)
            .map(SocketAddr::V6)
            .map_err(errno),
    }
}

/// Closes with a reset, so the client sees "connection reset" at once.
fn reset(stream: &TcpStream) {
    let _ = rustix::net::sockopt::set_socket_linger(stream.as_fd(), Some(Duration::ZERO));
}

async fn handle(mut client: TcpStream, shared: &Shared, _permit: OwnedSemaphorePermit) {
    let dst = match original_destination(&client) {
        Ok(dst) => dst,
        Err(_) => {
            // No NAT record: the sandbox connected to the proxy's own address directly.
            reset(&client);
            return;
        }
    };
    // The event goes out before the reset, so it is reported before the sandbox reacts.
    let refuse = |client: &TcpStream, name: Option<String>, reason: String| {
        shared
            .events
            .send(connection_event(Decision::Refused, dst, name, None, reason));
        reset(client);
    };
    if is_local(dst.ip()) {
        return refuse(&client, None, "a connection to the proxy itself".into());
    }
    let names = shared.names_for(dst.ip().to_canonical());
    let verdict = shared
        .policy
        .check_connection(dst, &names, &shared.host_addrs);
    let (name, rule) = match verdict {
        ConnectionVerdict::Refused(reason) => return refuse(&client, None, reason),
        ConnectionVerdict::AllowedByRange(rule) => (None, rule.text.clone()),
        ConnectionVerdict::AllowedByName(allowed) => {
            let (first_name, first_rule) = allowed
                .first()
                .map(|(n, r)| (n.clone(), r.text.clone()))
                .unwrap_or_default();
            let sniffer: Option<fn(&[u8]) -> Sniffed> = match dst.port() {
                443 => Some(sniff::tls_server_name),
                80 => Some(sniff::http_host),
                _ => None,
            };
            match sniffer {
                None => (Some(first_name), first_rule),
                Some(sniffer) => {
                    let what = if dst.port() == 443 {
                        "TLS SNI"
                    } else {
                        "HTTP Host"
                    };
                    let mut head = Vec::with_capacity(2048);
                    let sniffed = read_head(&mut client, &mut head, sniffer).await;
                    let name = match sniffed {
                        Sniffed::Name(Some(name)) => name,
                        Sniffed::Name(None) => {
                            return refuse(
                                &client,
                                None,
                                format!("no {what} name (required for an address reached by name)"),
                            )
                        }
                        Sniffed::Other(reason) => return refuse(&client, None, reason),
                        Sniffed::NeedMore => {
                            return refuse(&client, None, format!("no complete {what} in time"))
                        }
                    };
                    match shared.policy.check_name_port(&name, dst.port()) {
                        Ok(rule) => {
                            let rule = rule.text.clone();
                            // Plain HTTP: the request checked is the only one the server
                            // serves on this connection (later ones are not parsed).
                            let head = if dst.port() == 80 {
                                sniff::one_request_only(&head)
                            } else {
                                head
                            };
                            return relay(client, head, dst, Some(name), rule, shared).await;
                        }
                        Err(reason) => {
                            return refuse(&client, Some(name), format!("{what}: {reason}"))
                        }
                    }
                }
            }
        }
    };
    relay(client, Vec::new(), dst, name, rule, shared).await
}

fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback() || ip.is_unspecified()
}

/// Reads until `sniffer` decides (or the size or time limit is reached).
async fn read_head(
    client: &mut TcpStream,
    head: &mut Vec<u8>,
    sniffer: fn(&[u8]) -> Sniffed,
) -> Sniffed {
    let deadline = tokio::time::Instant::now() + SNIFF_TIMEOUT;
    let mut buf = vec![0u8; 4096];
    loop {
        let n = match tokio::time::timeout_at(deadline, client.read(&mut buf)).await {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Sniffed::Other(format!("reading the request: {e}")),
            Err(_) => return Sniffed::NeedMore,
        };
        if n == 0 {
            return Sniffed::Other("the client closed before sending a request".into());
        }
        head.extend_from_slice(&buf[..n]);
        match sniffer(head) {
            Sniffed::NeedMore if head.len() < MAX_SNIFF => continue,
            Sniffed::NeedMore => return Sniffed::Other("the request head is too large".into()),
            decided => return decided,
        }
    }
}

/// Connects to `dst` from the host's namespace, sends `head` (bytes already read from the
/// client) and relays both ways until both sides are done.
async fn relay(
    client: TcpStream,
    head: Vec<u8>,
    dst: SocketAddr,
    name: Option<String>,
    rule: String,
    shared: &Shared,
) {
    let event = |decision, reason: String| {
        connection_event(decision, dst, name.clone(), Some(rule.clone()), reason)
    };
    let mut upstream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(dst)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            shared
                .events
                .send(event(Decision::Failed, format!("connecting to {dst}: {e}")));
            reset(&client);
            return;
        }
        Err(_) => {
            shared.events.send(event(
                Decision::Failed,
                format!(
                    "connecting to {dst}: no answer in {}s",
                    CONNECT_TIMEOUT.as_secs()
                ),
            ));
            reset(&client);
            return;
        }
    };
    shared
        .events
        .send(event(Decision::Allowed, format!("allowed by '{rule}'")));
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    if !head.is_empty() {
        if let Err(_e) = tokio::io::AsyncWriteExt::write_all(&mut upstream, &head).await {
            reset(&client);
            return;
        }
    }
    let both = tokio::try_join!(
        splice_one_way(&client, &upstream),
        splice_one_way(&upstream, &client)
    );
    if both.is_err() {
        // Pass a reset on as a reset.
        reset(&client);
        reset(&upstream);
    }
}

/// Moves bytes from `src` to `dst` until `src` ends, then shuts down `dst`'s sending side
/// (a half-close travels on; the other direction goes on). splice(2) through a pipe moves
/// the data inside the kernel: no copy through the supervisor's memory.
async fn splice_one_way(src: &TcpStream, dst: &TcpStream) -> io::Result<u64> {
    use rustix::pipe::{pipe_with, splice, PipeFlags, SpliceFlags};
    use tokio::io::Interest;
    let errno = |e: rustix::io::Errno| io::Error::from_raw_os_error(e.raw_os_error());
    let (pipe_out, pipe_in) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK).map_err(errno)?;
    let capacity = rustix::pipe::fcntl_setpipe_size(&pipe_in, RELAY_PIPE).unwrap_or(65536);
    let flags = SpliceFlags::NONBLOCK | SpliceFlags::MOVE;
    let mut total = 0u64;
    loop {
        let filled = loop {
            src.readable().await?;
            match src.try_io(Interest::READABLE, || {
                splice(src, None, &pipe_in, None, capacity, flags).map_err(errno)
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if filled == 0 {
            // End of input: pass the half-close on. The peer may be gone already.
            let _ = rustix::net::shutdown(dst, rustix::net::Shutdown::Write);
            return Ok(total);
        }
        let mut left = filled;
        while left > 0 {
            dst.writable().await?;
            match dst.try_io(Interest::WRITABLE, || {
                splice(&pipe_out, None, dst, None, left, flags).map_err(errno)
            }) {
                Ok(n) => {
                    left -= n;
                    total += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}
