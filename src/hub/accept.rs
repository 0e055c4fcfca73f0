//! The acceptor: one thread that accepts connections, reserves their slot, and starts each
//! connection's thread; or refuses them with `503` and `Retry-After` before any upgrade.
//!
//! A refused connection is answered without a thread of its own: the acceptor writes the
//! `503`, half-closes, and keeps the socket in a small bounded set, reading and discarding what
//! the client sent until it closes (or a second passes). Closing at once with the client's
//! request unread would make the kernel send a reset, which can destroy the `503` before the
//! client reads it.

use std::io::{ErrorKind, Read};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::Ordering::{Acquire, Relaxed};
use std::time::{Duration, Instant};

use crate::hub::HubShared;
use crate::hub::handler::Response;
use crate::hub::limits::Full;
use crate::hub::serve;
use crate::hub::upgrade::response_bytes;
use crate::sys::{self, POLLIN};
use crate::transport::SocketHandle;

/// Refused sockets waiting for their client to close, at most.
const MAX_REFUSING: usize = 256;
/// How long a refused socket is kept for its client to read the answer.
const REFUSING_FOR: Duration = Duration::from_secs(1);

/// The acceptor's loop; returns when the hub stops (a byte on `woken`).
pub(crate) fn run(hub: Arc<HubShared>, listener: TcpListener, mut woken: UnixStream) {
    let mut refusing: Vec<(TcpStream, Instant)> = Vec::new();
    let mut fds = Vec::new();
    loop {
        fds.clear();
        fds.push(sys::interest(woken.as_raw_fd(), POLLIN));
        fds.push(sys::interest(listener.as_raw_fd(), POLLIN));
        fds.extend(
            refusing
                .iter()
                .map(|(s, _)| sys::interest(s.as_raw_fd(), POLLIN)),
        );
        let timeout = (!refusing.is_empty()).then_some(Duration::from_millis(100));
        if let Err(e) = sys::poll(&mut fds, timeout) {
            log::error!("acceptor poll failed: {e}");
        }
        if hub.is_stopping() || hub.stopped.load(Acquire) {
            return;
        }
        let mut drain = [0u8; 64];
        while matches!(woken.read(&mut drain), Ok(n) if n > 0) {}
        // Refused sockets: discard what arrives; let go on EOF, error or time.
        let now = Instant::now();
        let mut i = 1;
        refusing.retain_mut(|(sock, until)| {
            i += 1;
            if fds[i].revents != 0 {
                let mut sink = [0u8; 1024];
                loop {
                    match sock.read(&mut sink) {
                        Ok(0) => return false,
                        Ok(_) => {}
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(_) => return false,
                    }
                }
            }
            *until > now
        });
        loop {
            match listener.accept() {
                Ok((sock, peer)) => {
                    let accepted_at = Instant::now();
                    match hub.limits.reserve(peer.ip()) {
                        Ok(slot) => {
                            if let Err(sock) = start(&hub, sock, peer, slot, accepted_at) {
                                refuse(&hub, sock, &mut refusing, "no thread for the connection");
                            }
                        }
                        Err(full) => {
                            let why = match full {
                                Full::Connections => "connection limit reached",
                                Full::PerIp => "too many connections from this address",
                                Full::Handshakes => "too many handshakes in progress",
                            };
                            refuse(&hub, sock, &mut refusing, why);
                        }
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    log::warn!("accept failed: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                    break;
                }
            }
        }
    }
}

/// Starts the connection's thread; gives the socket back if the thread could not start.
fn start(
    hub: &Arc<HubShared>,
    sock: TcpStream,
    peer: std::net::SocketAddr,
    slot: crate::hub::limits::Slot,
    accepted_at: Instant,
) -> Result<(), TcpStream> {
    if let Err(e) = sock.set_nonblocking(false) {
        log::debug!("{peer}: {e}");
    }
    let id = hub.next_id.fetch_add(1, Relaxed);
    let sock = Arc::new(sock);
    let handle = SocketHandle::new(sock.clone());
    let thread_hub = hub.clone();
    let thread_sock = sock.clone();
    // The registry entry is written before the thread can finish, under the registry's lock.
    hub.thread_started();
    let mut threads = hub.threads.lock();
    let spawned = std::thread::Builder::new()
        .name(format!("syncws-hub-conn-{id}"))
        .stack_size(hub.config.stack_size)
        .spawn(move || serve::run(thread_hub, thread_sock, peer, id, slot, accepted_at));
    match spawned {
        Ok(join) => {
            threads.insert(id, (join, handle));
            Ok(())
        }
        Err(e) => {
            drop(threads);
            hub.thread_ended();
            log::warn!("{peer}: connection thread not started: {e}");
            drop(handle);
            // The closure (and its references to the socket) went with the failed spawn.
            match Arc::try_unwrap(sock) {
                Ok(sock) => Err(sock),
                Err(_) => Ok(()),
            }
        }
    }
}

/// Answers `503` with `Retry-After` and keeps the socket until its client has read it.
fn refuse(hub: &HubShared, sock: TcpStream, refusing: &mut Vec<(TcpStream, Instant)>, why: &str) {
    hub.counters.refused_limit.fetch_add(1, Relaxed);
    log::debug!("refused a connection: {why}");
    let response = Response::new(503, why).header(
        "Retry-After",
        hub.config.retry_after.as_secs().max(1).to_string(),
    );
    // A few hundred bytes into an empty socket buffer: taken whole.
    let _ = sys::send_nonblocking(&sock, &response_bytes(&response));
    let _ = sock.shutdown(Shutdown::Write);
    if refusing.len() < MAX_REFUSING && sock.set_nonblocking(true).is_ok() {
        refusing.push((sock, Instant::now() + REFUSING_FOR));
    }
}
