//! Commands on a terminal (`process.Process/Start` with `pty`, the SDKs' `pty.create`): the
//! session's supervisor opens a pty in the sandbox and hands its master back with
//! `ExecStarted` (as for `nsbox exec --session -t`); the server reads the master for output,
//! writes input to it and sets its size. Nothing runs in the sandbox for it.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
use tokio::io::unix::AsyncFd;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::sync::mpsc;

use super::super::exec::PreparedCommand;
use crate::relay::Masker;
use crate::sandbox::control;
use crate::sandbox::setup::ExecFailure;
use crate::session::protocol::{Reply, Request};
use crate::session::state::{SessionRecord, SessionStore};

/// What a terminal command reports: output (masked), then its end.
pub enum PtyEvent {
    Data(Vec<u8>),
    Ended { code: i32, signal: Option<i32> },
    Failed(String),
}

/// What can be sent to a terminal command.
pub enum PtyControl {
    Input(Vec<u8>),
    Resize { rows: u16, cols: u16 },
    Signal(i32),
}

/// A started terminal command; dropping `events` (the client went away) kills it.
pub struct PtyCommand {
    pub events: mpsc::Receiver<PtyEvent>,
    pub control: mpsc::Sender<PtyControl>,
}

fn io_err(what: &str) -> impl FnOnce(rustix::io::Errno) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// Starts `cmd` on a new terminal of `rows`×`cols` in the session. Err: why it did not start.
pub async fn start(
    store: &SessionStore,
    record: &SessionRecord,
    cmd: PreparedCommand,
    rows: u16,
    cols: u16,
) -> Result<PtyCommand, String> {
    let socket = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(io_err("create a socket"))?;
    let addr = SocketAddrUnix::new(store.socket(&record.id)).map_err(io_err("session socket"))?;
    rustix::net::connect(&socket, &addr)
        .map_err(|e| format!("the sandbox does not answer ({e})"))?;
    crate::relay::stream::set_nonblocking(socket.as_fd()).map_err(|e| e.to_string())?;
    let socket = AsyncFd::new(socket).map_err(|e| e.to_string())?;
    let (status_r, status_w) =
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(io_err("a pipe"))?;
    control::send(
        socket.get_ref().as_fd(),
        &Request::Exec {
            argv: cmd.argv.iter().map(|a| a.as_bytes().to_vec()).collect(),
            env: cmd.env.clone(),
            replace_env: false,
            workdir: cmd.cwd.clone(),
            tty: true,
            winsize: Some((rows, cols)),
            gated: false,
            failure_on_terminal: false,
            user: cmd.user,
        },
        &[status_w.as_fd()],
    )
    .map_err(|e| format!("talk to the session: {e}"))?;
    drop(status_w);
    // ExecStarted carries the pty master; the status pipe then ends once the program runs,
    // or carries why it could not.
    let (secrets, master) = loop {
        match recv(&socket).await.map_err(|e| e.to_string())? {
            Some((Reply::ExecStarted { secrets, .. }, fds)) => {
                let master = fds
                    .into_iter()
                    .next()
                    .ok_or("the session sent no terminal")?;
                break (secrets, master);
            }
            Some((Reply::Refused { message }, _)) => return Err(message),
            Some(_) => continue,
            None => return Err("the session ended".into()),
        }
    };
    let mut status = Vec::new();
    let mut status_pipe = pipe::Receiver::from_owned_fd(status_r).map_err(|e| e.to_string())?;
    status_pipe
        .read_to_end(&mut status)
        .await
        .map_err(|e| format!("read the exec status: {e}"))?;
    if let Ok(failure) = serde_json::from_slice::<ExecFailure>(&status) {
        return Err(failure.message);
    }
    crate::relay::stream::set_nonblocking(master.as_fd()).map_err(|e| e.to_string())?;
    let master = AsyncFd::new(master).map_err(|e| e.to_string())?;
    let mut secrets = secrets;
    secrets.extend(cmd.secrets.iter().cloned());
    let (tx, events) = mpsc::channel(64);
    let (control_tx, control_rx) = mpsc::channel(16);
    tokio::spawn(drive(socket, master, Masker::new(&secrets), tx, control_rx));
    Ok(PtyCommand {
        events,
        control: control_tx,
    })
}

async fn recv(socket: &AsyncFd<OwnedFd>) -> io::Result<Option<(Reply, Vec<OwnedFd>)>> {
    loop {
        let mut guard = socket.readable().await?;
        match control::recv::<Reply>(socket.get_ref().as_fd()) {
            Ok(r) => return Ok(r),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => guard.clear_ready(),
            Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
}

/// Copies the terminal's output to `tx` until the command ended and its output is read;
/// applies input, sizes and signals; kills the command when nobody listens any more.
async fn drive(
    socket: AsyncFd<OwnedFd>,
    master: AsyncFd<OwnedFd>,
    mut masker: Masker,
    tx: mpsc::Sender<PtyEvent>,
    mut control_rx: mpsc::Receiver<PtyControl>,
) {
    let signal = |s: i32| {
        let _ = control::send(
            socket.get_ref().as_fd(),
            &Request::Signal { signal: s },
            &[],
        );
    };
    let mut open = true;
    let mut controls = true;
    let mut ended: Option<(i32, Option<i32>)> = None;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if !open {
            if let Some((code, sig)) = ended {
                let mut tail = Vec::new();
                masker.finish(&mut tail);
                if !tail.is_empty() {
                    let _ = tx.send(PtyEvent::Data(tail)).await;
                }
                let _ = tx.send(PtyEvent::Ended { code, signal: sig }).await;
                return;
            }
        }
        tokio::select! {
            r = master.readable(), if open => {
                let Ok(mut guard) = r else { open = false; continue };
                match rustix::io::read(master.get_ref(), &mut buf) {
                    // EIO: every process holding the terminal is gone.
                    Ok(0) | Err(rustix::io::Errno::IO) => open = false,
                    Ok(n) => {
                        let mut out = Vec::with_capacity(n);
                        masker.push(&buf[..n], &mut out);
                        if !out.is_empty() && tx.send(PtyEvent::Data(out)).await.is_err() {
                            signal(libc::SIGKILL);
                            return;
                        }
                    }
                    Err(rustix::io::Errno::AGAIN) => guard.clear_ready(),
                    Err(_) => open = false,
                }
            }
            reply = recv(&socket), if ended.is_none() => {
                match reply {
                    Ok(Some((Reply::ExecEnded { code, signal: sig, .. }, _))) => {
                        ended = Some((code.unwrap_or(128 + sig.unwrap_or(0)), sig));
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => {
                        let _ = tx.send(PtyEvent::Failed("the sandbox ended".into())).await;
                        return;
                    }
                }
            }
            c = control_rx.recv(), if controls => match c {
                Some(PtyControl::Input(data)) => write_all(&master, &data).await,
                Some(PtyControl::Resize { rows, cols }) => {
                    let size = rustix::termios::Winsize {
                        ws_row: rows,
                        ws_col: cols,
                        ws_xpixel: 0,
                        ws_ypixel: 0,
                    };
                    let _ = rustix::termios::tcsetwinsize(master.get_ref(), size);
                }
                Some(PtyControl::Signal(s)) => signal(s),
                // The process table forgot it: the stream still runs to its end.
                None => controls = false,
            },
        }
    }
}

async fn write_all(master: &AsyncFd<OwnedFd>, mut data: &[u8]) {
    while !data.is_empty() {
        let Ok(mut guard) = master.writable().await else {
            return;
        };
        match rustix::io::write(master.get_ref(), data) {
            Ok(n) => data = &data[n..],
            Err(rustix::io::Errno::AGAIN) => guard.clear_ready(),
            Err(_) => return,
        }
    }
}
