//! nsbox's egress proxy for a filtered sandbox: a TCP listener on the sandbox's loopback
//! (127.0.0.1 and ::1) that the nftables rules redirect allowed connections to, served from
//! the supervisor.
//!
//! For each connection: recover the original destination (conntrack, `SO_ORIGINAL_DST`), check
//! it against the policy — an allowed range, or an address an allowed name of this sandbox
//! resolved to. A connection allowed by a name must then open, on whatever port, with a TLS
//! ClientHello whose SNI or an HTTP/1 request whose Host is an allowed name for the port (an
//! address a CDN shares between an allowed and another site does not open the other site); a
//! connection that opens with neither, or sends nothing for [`SNIFF_TIMEOUT`], goes through
//! only when the name's rule says `tcp:`. Then connect from the host's namespace and relay both
//! ways, passing half-closes on. A refused connection is reset at once and reported.
//!
//! A TLS connection whose SNI is a host bound to a credential (`--credential`) is not relayed
//! but served by [`super::credential::intercept`]: TLS ends here, the real value goes into the
//! request's headers, and a new verified TLS connection goes upstream.
//!
//! Plain HTTP carries one request per connection: the checked request goes out with
//! `Connection: close` (so the server serves no other), and when its body length is known the
//! proxy relays exactly that body; a client that sends more (a second request) is reset.
//!
//! What the proxy holds for a sandbox is bounded: at most the policy's `max_connections` at
//! once, and every connection's socket buffers and pipes come out of a per-sandbox budget
//! ([`budget`]; a connection gets up to [`SHARE_MAX`], at least [`SHARE_MIN`]); beyond either,
//! a connection is refused and reported.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::egress::Shared;
use super::events::{Decision, NetEvent};
use super::policy::ConnectionVerdict;
use super::sniff::{self, Body, Opening, MAX_SNIFF};

/// Time a client has to send its ClientHello or request head.
pub const SNIFF_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Bytes of socket buffers and pipes beyond [`SHARE_MIN`] per connection the cap allows: room
/// for the first connections to be fast.
pub const SPARE: usize = 32 << 20;
/// The most one connection reserves from the budget: room for the pipes and socket buffers
/// that keep a fast download fast.
pub const SHARE_MAX: usize = 8 << 20;
/// The least one connection reserves (every connection the cap allows can have it).
pub const SHARE_MIN: usize = 128 << 10;
/// The budget is counted in units of this many bytes (a semaphore's permits).
pub(crate) const UNIT: usize = 1024;

/// The memory budget of a sandbox whose proxy carries `max_connections` at once: [`SHARE_MIN`]
/// for each, and [`SPARE`] (64 MiB at the default cap of 256).
pub fn budget(max_connections: usize) -> usize {
    max_connections * SHARE_MIN + SPARE
}
/// Why a connection allowed by name that is neither TLS nor HTTP is refused.
const RAW_HINT: &str = "raw TCP to an address reached by name needs a tcp: rule";

/// What one connection holds of its sandbox's limits.
struct Reservation {
    _connection: OwnedSemaphorePermit,
    _memory: OwnedSemaphorePermit,
    /// Bytes reserved: the connection's socket buffers and pipes fit in them.
    share: usize,
}

impl Reservation {
    /// Takes a connection slot and a share of the memory budget, or says why not. The share
    /// is a quarter of what is free beyond [`SHARE_MIN`] for every other connection the cap
    /// still allows (so the cap, not the budget, is what a crowd of connections meets), within
    /// [`SHARE_MIN`]..=[`SHARE_MAX`]: the first connections get room to be fast, later ones
    /// less.
    fn take(
        connections: &Arc<Semaphore>,
        budget: &Arc<Semaphore>,
        cap: usize,
    ) -> Result<Reservation, String> {
        let connection = connections
            .clone()
            .try_acquire_owned()
            .map_err(|_| format!("too many connections at once (at most {cap} per sandbox)"))?;
        let others = connections.available_permits() * (SHARE_MIN / UNIT);
        let spare = budget.available_permits().saturating_sub(others);
        let units = (spare / 4).clamp(SHARE_MIN / UNIT, SHARE_MAX / UNIT);
        let memory = budget
            .clone()
            .try_acquire_many_owned(units as u32)
            .map_err(|_| {
                format!(
                    "the proxy's memory budget for this sandbox ({} MiB) is in use",
                    self::budget(cap) >> 20
                )
            })?;
        Ok(Reservation {
            _connection: connection,
            _memory: memory,
            share: units * UNIT,
        })
    }

    /// SO_RCVBUF/SO_SNDBUF for each of the two sockets: the kernel doubles the value (for
    /// its overhead), so four buffers take at most half of the share...
    fn socket_buffer(&self) -> usize {
        self.share / 16
    }

    /// ...and each of the two pipes at most an eighth (a power of two, as the kernel sizes
    /// pipes).
    fn pipe(&self) -> usize {
        let most = (self.share / 8).max(4096);
        1 << (usize::BITS - 1 - most.leading_zeros())
    }
}

/// Accepts redirected connections until the task is dropped.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            // Out of descriptors or memory: let the rest run, then try again.
            tokio::time::sleep(super::egress::RETRY_PAUSE).await;
            continue;
        };
        let reservation = Reservation::take(
            &shared.connections,
            &shared.budget,
            shared.policy.max_connections,
        );
        let shared = shared.clone();
        tokio::spawn(async move {
            match reservation {
                Ok(reservation) => handle(client, &shared, reservation).await,
                Err(reason) => {
                    if let Ok(dst) = original_destination(&client) {
                        shared.events.send(connection_event(
                            Decision::Refused,
                            dst,
                            None,
                            None,
                            reason,
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

/// Sets a socket's receive and send buffers to `bytes` (forced past the sysctl maximum
/// when the supervisor may, so a large share is not cut to the default cap). Fixing them also
/// turns off the kernel's autotuning, which would grow them past the share.
fn size_buffers(fd: impl AsFd, bytes: usize) {
    use rustix::net::sockopt as so;
    let fd = fd.as_fd();
    if so::set_socket_recv_buffer_size_force(fd, bytes).is_err() {
        let _ = so::set_socket_recv_buffer_size(fd, bytes);
    }
    if so::set_socket_send_buffer_size_force(fd, bytes).is_err() {
        let _ = so::set_socket_send_buffer_size(fd, bytes);
    }
}

async fn handle(mut client: TcpStream, shared: &Shared, reservation: Reservation) {
    size_buffers(&client, reservation.socket_buffer());
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
    let (name, rule, head, limit) = match verdict {
        ConnectionVerdict::Refused(reason) => return refuse(&client, None, reason),
        ConnectionVerdict::AllowedByRange(rule) => (None, rule.text.clone(), Vec::new(), None),
        ConnectionVerdict::AllowedByName(allowed) => {
            if let Some((name, rule)) = allowed.iter().find(|(_, r)| r.raw_tcp) {
                // The rule lets raw TCP through: nothing to read first.
                (Some(name.clone()), rule.text.clone(), Vec::new(), None)
            } else {
                let mut head = Vec::with_capacity(2048);
                let (what, asked, http) = match read_opening(&mut client, &mut head).await {
                    Opening::Tls(name) => ("TLS SNI", name, None),
                    Opening::Http(request) => ("HTTP Host", request.name.clone(), Some(request)),
                    Opening::Refused(why) => return refuse(&client, None, why),
                    Opening::Neither(why) => {
                        return refuse(&client, None, format!("{why} ({RAW_HINT})"))
                    }
                    Opening::NeedMore => {
                        return refuse(
                            &client,
                            None,
                            format!(
                                "no TLS ClientHello or HTTP request in {}s ({RAW_HINT})",
                                SNIFF_TIMEOUT.as_secs()
                            ),
                        )
                    }
                };
                let Some(name) = asked else {
                    return refuse(
                        &client,
                        None,
                        format!("no {what} name (required for an address reached by name)"),
                    );
                };
                let rule = match shared.policy.check_name_port(&name, dst.port()) {
                    Ok(rule) => rule.text.clone(),
                    Err(reason) => return refuse(&client, Some(name), format!("{what}: {reason}")),
                };
                let credentials = shared.policy.credentials.as_deref();
                match http {
                    None => {
                        if let Some(creds) = credentials.filter(|c| c.binds(&name)) {
                            return super::credential::intercept(
                                client, head, dst, name, rule, shared, creds,
                            )
                            .await;
                        }
                        (Some(name), rule, head, None)
                    }
                    Some(request) => {
                        // Plain HTTP is never rewritten: a placeholder in it is reported.
                        for e in credentials
                            .map(|c| super::credential::report_stray(c, &head, &name, "plain http"))
                            .unwrap_or_default()
                        {
                            shared.events.send(e);
                        }
                        // Bytes of the body (or beyond) already read with the head.
                        let extra = (head.len() - request.head_len) as u64;
                        let limit = match request.body {
                            Body::Length(n) if extra > n => {
                                return refuse(
                                    &client,
                                    Some(name),
                                    "more than one HTTP request on a connection (the proxy carries one per connection)".into(),
                                )
                            }
                            Body::Length(n) => Some(n - extra),
                            Body::Chunked => None,
                        };
                        let head = sniff::one_request_only(&head, &request);
                        (Some(name), rule, head, limit)
                    }
                }
            }
        }
    };
    relay(client, head, limit, dst, name, rule, shared, &reservation).await
}

fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback() || ip.is_unspecified()
}

/// Reads until the opening is recognised (or refused, or the size or time limit is reached).
async fn read_opening(client: &mut TcpStream, head: &mut Vec<u8>) -> Opening {
    let deadline = tokio::time::Instant::now() + SNIFF_TIMEOUT;
    let mut buf = vec![0u8; 4096];
    loop {
        let n = match tokio::time::timeout_at(deadline, client.read(&mut buf)).await {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Opening::Refused(format!("reading the request: {e}")),
            Err(_) => return Opening::NeedMore,
        };
        if n == 0 {
            return Opening::Neither("the client closed before sending a request".into());
        }
        head.extend_from_slice(&buf[..n]);
        match sniff::opening(head) {
            Opening::NeedMore if head.len() < MAX_SNIFF => continue,
            Opening::NeedMore => return Opening::Refused("the request head is too large".into()),
            decided => return decided,
        }
    }
}

/// The client sent more than the one request a connection carries.
#[derive(Debug)]
struct SecondRequest;

impl std::fmt::Display for SecondRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a second request on the connection")
    }
}

impl std::error::Error for SecondRequest {}

/// Connects to `dst` from the host's namespace, sends `head` (bytes already read from the
/// client) and relays both ways until both sides are done; from the client, at most `limit`
/// more bytes (the rest of a plain HTTP request's body).
#[allow(clippy::too_many_arguments)]
async fn relay(
    client: TcpStream,
    head: Vec<u8>,
    limit: Option<u64>,
    dst: SocketAddr,
    name: Option<String>,
    rule: String,
    shared: &Shared,
    reservation: &Reservation,
) {
    let event = |decision, reason: String| {
        connection_event(decision, dst, name.clone(), Some(rule.clone()), reason)
    };
    let connect = async {
        let socket = if dst.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        // Before connecting: the window scale is agreed on in the handshake.
        size_buffers(&socket, reservation.socket_buffer());
        socket.connect(dst).await
    };
    let mut upstream = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
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
    let pipe = reservation.pipe();
    let both = tokio::try_join!(
        splice_one_way(&client, &upstream, pipe, limit),
        splice_one_way(&upstream, &client, pipe, None)
    );
    if let Err(e) = both {
        if e.get_ref().is_some_and(|inner| inner.is::<SecondRequest>()) {
            shared.events.send(event(
                Decision::Refused,
                "more than one HTTP request on a connection (the proxy carries one per connection)"
                    .into(),
            ));
        }
        // Pass a reset on as a reset.
        reset(&client);
        reset(&upstream);
    }
}

/// Moves bytes from `src` to `dst` until `src` ends, then shuts down `dst`'s sending side
/// (a half-close travels on; the other direction goes on). splice(2) through a pipe of
/// `pipe_size` bytes moves the data inside the kernel: no copy through the supervisor's
/// memory. With a `limit`, `src` may send that many bytes and then only end: more is a
/// [`SecondRequest`] error (checked once, when the limit is reached: no per-byte work).
async fn splice_one_way(
    src: &TcpStream,
    dst: &TcpStream,
    pipe_size: usize,
    limit: Option<u64>,
) -> io::Result<u64> {
    use rustix::pipe::{pipe_with, splice, PipeFlags, SpliceFlags};
    use tokio::io::Interest;
    let errno = |e: rustix::io::Errno| io::Error::from_raw_os_error(e.raw_os_error());
    let (pipe_out, pipe_in) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK).map_err(errno)?;
    let capacity = rustix::pipe::fcntl_setpipe_size(&pipe_in, pipe_size).unwrap_or(65536);
    let flags = SpliceFlags::NONBLOCK | SpliceFlags::MOVE;
    let mut total = 0u64;
    let mut left_to_send = limit;
    loop {
        if left_to_send == Some(0) {
            // The request is complete: from here on the client may only close.
            let mut byte = [0u8; 1];
            let n = loop {
                src.readable().await?;
                match src.try_io(Interest::READABLE, || {
                    rustix::net::recv(src, &mut byte, rustix::net::RecvFlags::PEEK)
                        .map(|(n, _)| n)
                        .map_err(errno)
                }) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
            };
            if n > 0 {
                return Err(io::Error::other(SecondRequest));
            }
            let _ = rustix::net::shutdown(dst, rustix::net::Shutdown::Write);
            return Ok(total);
        }
        let want = left_to_send.map_or(capacity, |left| {
            capacity.min(usize::try_from(left).unwrap_or(usize::MAX))
        });
        let filled = loop {
            src.readable().await?;
            match src.try_io(Interest::READABLE, || {
                splice(src, None, &pipe_in, None, want, flags).map_err(errno)
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
        if let Some(left) = left_to_send.as_mut() {
            *left -= filled as u64;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_connection_the_cap_allows_fits_in_the_budget() {
        for cap in [1, 40, 256, 1000] {
            fits(cap);
        }
    }

    fn fits(cap: usize) {
        let connections = Arc::new(Semaphore::new(cap));
        let budget = Arc::new(Semaphore::new(self::budget(cap) / UNIT));
        let mut held = Vec::new();
        for _ in 0..cap {
            held.push(Reservation::take(&connections, &budget, cap).unwrap());
        }
        assert!(Reservation::take(&connections, &budget, cap)
            .err()
            .unwrap()
            .contains(&format!("at most {cap} per sandbox")));
        let total: usize = held.iter().map(|r| r.share).sum();
        assert!(total <= self::budget(cap), "{total}");
        assert_eq!(held[0].share, SHARE_MAX);
        assert!(held.iter().all(|r| r.share >= SHARE_MIN));
        // What a connection sets up fits in its share (the kernel doubles socket buffers).
        for r in &held {
            assert!(
                4 * 2 * r.socket_buffer() + 2 * r.pipe() <= r.share,
                "{}",
                r.share
            );
            assert!(r.pipe().is_power_of_two());
        }
        // Closed connections give their share back.
        held.clear();
        assert_eq!(budget.available_permits(), self::budget(cap) / UNIT);
        assert_eq!(
            Reservation::take(&connections, &budget, cap).unwrap().share,
            SHARE_MAX
        );
    }
}
