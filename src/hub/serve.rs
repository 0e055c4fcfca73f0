//! A connection's thread: the opening handshake, then reading until the connection ends.
//!
//! The thread blocks in `read(2)` with a timeout that wakes it for keepalive (a ping after
//! [`ping_interval`](super::HubConfig::ping_interval) of silence, a close when the pong is late)
//! and the idle timeout. It decodes the client's frames in place, answers pings and closes
//! through the connection's [`Outbound`] (control frames jump the data queue), runs
//! [`Handler::on_message`](super::Handler::on_message) on each whole message, and applies the
//! rate limit. Any violation (1002, 1007, 1009) is answered with a close frame.
//!
//! However the connection ends, the end runs once, in this order: the connection leaves every
//! room and the hub's maps, its queue is dropped, its socket shut, and then
//! [`Handler::on_close`](super::Handler::on_close) runs.

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use crate::codec::{Decoded, Decoder, Limits, Step};
use crate::deadline;
use crate::deflate::DeflateParams;
use crate::frame::CloseCode;
use crate::frame::Initiator;
use crate::guard;
use crate::hub::config::RatePolicy;
use crate::hub::conn::{Conn, ConnShared};
use crate::hub::handler::Disconnect;
use crate::hub::limits::Slot;
use crate::hub::message::Message;
use crate::hub::outbound::Outbound;
use crate::hub::rate::Bucket;
use crate::hub::upgrade;
use crate::hub::{Batch, HubShared};
use crate::transport::ReadHalf;

/// The read buffer's size while idle; it grows for a large frame and shrinks back after.
const IDLE_BUFFER: usize = 4 * 1024;
/// How long the end of a connection waits for more input from a client that went quiet.
const LINGER_QUIET: Duration = Duration::from_millis(100);
/// A buffer larger than this is given back once empty.
const KEEP_BUFFER: usize = 64 * 1024;

/// Runs one accepted connection from handshake to end.
pub(crate) fn run(
    hub: Arc<HubShared>,
    sock: Arc<TcpStream>,
    peer: SocketAddr,
    id: u64,
    mut slot: Slot,
    accepted_at: Instant,
) {
    let _running = Running(&hub);
    let deadline = deadline::after(accepted_at, hub.config.handshake_timeout);
    hub.counters.handshaking.fetch_add(1, Relaxed);
    let socket = sock.clone();
    let opened = upgrade::open(&hub, sock, peer, deadline);
    hub.counters.handshaking.fetch_sub(1, Relaxed);
    slot.handshake_done();
    let Some(opened) = opened else {
        // Answered (or failed): the client reads the answer, then the end of the stream.
        let _ = socket.shutdown(std::net::Shutdown::Write);
        return;
    };
    drop(socket);
    let (mut read, write, socket) = match opened.stream.split() {
        Ok(halves) => halves,
        Err(e) => {
            log::debug!("{peer}: socket split failed: {e}");
            return;
        }
    };
    // Compressed frames for a client that accepts them with a full window (the shared
    // compressed form of a broadcast is made with a 15-bit window).
    let compress = opened
        .deflate
        .is_some_and(|p| p.server_max_window_bits.is_none_or(|bits| bits == 15));
    let outbound = Outbound::new(write, hub.queue_bounds(), hub.counters.clone(), compress);
    let conn = Conn {
        shared: Arc::new(ConnShared {
            id,
            peer,
            path: opened.path,
            protocol: opened.protocol,
            identity: opened.identity,
            outbound,
            socket,
            joining: Default::default(),
            rooms: Default::default(),
            gone: Default::default(),
            hub: hub.clone(),
        }),
    };
    hub.register(&conn.shared);
    if guard::catch("on_open", || hub.handler.on_open(&conn)).is_err() {
        hub.counters.callback_panics.fetch_add(1, Relaxed);
        hub.begin_close(
            &conn.shared,
            CloseCode::INTERNAL_ERROR,
            "internal error",
            false,
        );
    }
    if hub.is_stopping() {
        hub.begin_close(
            &conn.shared,
            CloseCode::GOING_AWAY,
            "server shutting down",
            false,
        );
    }
    let mut end = read_until_closed(&hub, &conn, &mut read, opened.leftover, opened.deflate);
    let shared = &conn.shared;
    // Our close frame (if any) goes out before the socket is shut, within the close timeout;
    // then the client gets the time left to close its side.
    if shared.outbound.our_close().is_some() {
        let by = deadline::after(Instant::now(), hub.config.close_timeout);
        let written = shared.outbound.drain(by);
        end.clean &= written;
        if written {
            linger(&mut read, shared, by);
        }
    }
    shared.outbound.discard();
    hub.unregister(shared);
    shared.socket.shutdown();
    if guard::catch("on_close", || hub.handler.on_close(&conn, &end)).is_err() {
        hub.counters.callback_panics.fetch_add(1, Relaxed);
    }
    drop(slot);
}

/// Tells the hub this thread ended, however it ends (a shutdown waits for it).
struct Running<'a>(&'a HubShared);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.thread_ended();
    }
}

/// Keepalive and idle state.
struct Timers {
    ping_interval: Option<Duration>,
    pong_timeout: Duration,
    idle_timeout: Option<Duration>,
    last_inbound: Instant,
    last_data: Instant,
    ping_sent: Option<Instant>,
}

impl Timers {
    /// How long a read may wait before the timers must be looked at.
    fn tick(&self) -> Option<Duration> {
        [
            self.ping_interval,
            Some(self.pong_timeout).filter(|_| self.ping_interval.is_some()),
            self.idle_timeout,
        ]
        .into_iter()
        .flatten()
        .min()
        .map(|d| d.max(Duration::from_millis(10)))
    }
}

/// Reads and handles frames until the connection ends; says how it ended.
fn read_until_closed(
    hub: &Arc<HubShared>,
    conn: &Conn,
    read: &mut ReadHalf,
    leftover: Vec<u8>,
    deflate: Option<DeflateParams>,
) -> Disconnect {
    let config = &hub.config;
    let shared = &conn.shared;
    let now = Instant::now();
    let mut timers = Timers {
        ping_interval: config.ping_interval,
        pong_timeout: config.pong_timeout,
        idle_timeout: config.idle_timeout,
        last_inbound: now,
        last_data: now,
        ping_sent: None,
    };
    if let Err(e) = read.set_timeout(timers.tick()) {
        log::debug!("connection {}: read timeout not set: {e}", shared.id);
    }
    let mut bucket = config.rate_limit.as_ref().map(|r| Bucket::new(r, now));
    let mut decoder = Decoder::new(Limits {
        max_frame: config.max_message,
        max_message: config.max_message,
    });
    if let Some(p) = deflate {
        decoder.enable_deflate(p.client_no_context_takeover);
    }
    let mut buf = leftover;
    let (mut start, mut end) = (0, buf.len());
    buf.resize(buf.len().max(IDLE_BUFFER), 0);
    let mut peer_close: Option<(Initiator, CloseCode, String)> = None;
    loop {
        // Every whole frame in the buffer; what the callbacks publish is written when it ends.
        let batch = Batch::begin(hub.clone());
        loop {
            let step = decoder.decode_masked(&mut buf[start..end]);
            let need = match step {
                Ok(Step::Frame(used, decoded)) => {
                    start += used;
                    let now = Instant::now();
                    timers.last_inbound = now;
                    match decoded {
                        Decoded::Data(data) => {
                            if shared.outbound.our_close().is_some() {
                                continue; // closing: data is no longer delivered
                            }
                            timers.last_data = now;
                            if let Some(b) = &mut bucket
                                && !b.take(now)
                            {
                                hub.counters.rate_limited.fetch_add(1, Relaxed);
                                match config.rate_limit.map(|r| r.policy) {
                                    Some(RatePolicy::Drop) => {
                                        if guard::catch("on_rate_limited", || {
                                            hub.handler.on_rate_limited(conn)
                                        })
                                        .is_err()
                                        {
                                            callback_panicked(hub, shared);
                                        }
                                    }
                                    _ => {
                                        hub.begin_close(
                                            shared,
                                            CloseCode::POLICY,
                                            "rate limit exceeded",
                                            false,
                                        );
                                    }
                                }
                                continue;
                            }
                            batch.progress();
                            if guard::catch("on_message", || hub.handler.on_message(conn, data))
                                .is_err()
                            {
                                callback_panicked(hub, shared);
                            }
                        }
                        Decoded::Ping(payload) => {
                            if shared.outbound.pong(&Message::pong(payload)) {
                                hub.hand_to_flusher(shared);
                            }
                        }
                        Decoded::Pong(_) => timers.ping_sent = None,
                        Decoded::Close(close) => {
                            let (code, reason) = close
                                .map_or((CloseCode::NO_STATUS, String::new()), |(c, r)| {
                                    (c, r.to_string())
                                });
                            // Our close already went out: this is the answer. Else answer it
                            // with the same code, dropping what data is still queued.
                            let initiator = if shared.outbound.our_close().is_some() {
                                Initiator::Local
                            } else {
                                hub.begin_close(shared, code, &reason, true);
                                Initiator::Remote
                            };
                            peer_close = Some((initiator, code, reason));
                        }
                        Decoded::Fragment => {}
                    }
                    if peer_close.is_some() {
                        break;
                    }
                    continue;
                }
                Ok(Step::Need(need)) => need,
                Err(violation) => {
                    log::debug!(
                        "connection {}: {} ({})",
                        shared.id,
                        violation.reason,
                        violation.code.0
                    );
                    hub.counters.protocol_errors.fetch_add(1, Relaxed);
                    // The stream cannot be decoded any further: send the close and end (RFC
                    // 6455 §7.1.7), without waiting for an answer that could not be read.
                    hub.begin_close(shared, violation.code, &violation.reason, false);
                    return ended(shared, "protocol violation");
                }
            };
            // Make room for the rest of the frame: move what is unread to the front, and grow
            // for a frame larger than the buffer (the decoder bounds it by `max_message`).
            if start == end {
                start = 0;
                end = 0;
                if buf.len() > KEEP_BUFFER {
                    buf = vec![0; IDLE_BUFFER];
                }
                decoder.release_memory(KEEP_BUFFER);
            } else if start + need.max(end - start + 1) > buf.len() || end == buf.len() {
                buf.copy_within(start..end, 0);
                end -= start;
                start = 0;
                // Grow at most twofold per read, so memory follows the bytes that arrived, not
                // what a header claims.
                if need > buf.len() {
                    let grown = need.min(buf.len().saturating_mul(2));
                    buf.resize(grown, 0);
                }
            }
            break;
        }
        drop(batch);
        if let Some((initiator, code, reason)) = peer_close {
            return Disconnect {
                initiator,
                clean: true,
                ..our_or(shared, initiator, code, reason)
            };
        }
        match read.read(&mut buf[end..]) {
            Ok(0) => return ended(shared, "the connection closed without a close frame"),
            Ok(n) => end += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return ended(shared, &format!("read failed: {e}")),
        }
        check_timers(hub, shared, &mut timers);
    }
}

/// After our close went out: half-closes, then reads and discards what the client still sends
/// until it closes its side, goes quiet for [`LINGER_QUIET`], or `by`. (Closing a socket with
/// unread input resets the connection, which can destroy the close frame before the client
/// reads it; a client that holds its socket open without sending costs only the quiet period.)
fn linger(read: &mut ReadHalf, shared: &ConnShared, by: Instant) {
    shared.socket.shutdown_write();
    let mut sink = [0u8; 1024];
    loop {
        let left = by
            .saturating_duration_since(Instant::now())
            .min(LINGER_QUIET);
        if left.is_zero() || read.set_timeout(Some(left)).is_err() {
            return;
        }
        match read.read(&mut sink) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Keepalive: a ping after silence, a close when its pong is late; the idle timeout.
fn check_timers(hub: &HubShared, shared: &Arc<ConnShared>, timers: &mut Timers) {
    let now = Instant::now();
    if let Some(sent) = timers.ping_sent {
        if now.saturating_duration_since(sent) >= timers.pong_timeout {
            hub.begin_close(
                shared,
                CloseCode::INTERNAL_ERROR,
                "keepalive ping timeout",
                false,
            );
            timers.ping_sent = None;
        }
    } else if let Some(interval) = timers.ping_interval
        && now.saturating_duration_since(timers.last_inbound) >= interval
    {
        timers.ping_sent = Some(now);
        if shared.outbound.ping(&Message::ping(b"syncws")) {
            hub.hand_to_flusher(shared);
        }
    }
    if let Some(idle) = timers.idle_timeout
        && now.saturating_duration_since(timers.last_data) >= idle
    {
        hub.begin_close(shared, CloseCode::GOING_AWAY, "idle timeout", false);
    }
}

fn callback_panicked(hub: &HubShared, shared: &Arc<ConnShared>) {
    hub.counters.callback_panics.fetch_add(1, Relaxed);
    hub.begin_close(shared, CloseCode::INTERNAL_ERROR, "internal error", false);
}

/// The connection ended without the close handshake completing.
fn ended(shared: &ConnShared, what: &str) -> Disconnect {
    match shared.outbound.our_close() {
        Some((code, reason)) => Disconnect {
            initiator: Initiator::Local,
            code,
            reason,
            clean: false,
        },
        None => Disconnect {
            initiator: Initiator::Transport,
            code: CloseCode::ABNORMAL,
            reason: what.to_string(),
            clean: false,
        },
    }
}

/// The initiator's code and reason: ours when we closed first, else the client's.
fn our_or(
    shared: &ConnShared,
    initiator: Initiator,
    code: CloseCode,
    reason: String,
) -> Disconnect {
    match (initiator, shared.outbound.our_close()) {
        (Initiator::Local, Some((code, reason))) => Disconnect {
            initiator,
            code,
            reason,
            clean: true,
        },
        _ => Disconnect {
            initiator,
            code,
            reason,
            clean: true,
        },
    }
}
