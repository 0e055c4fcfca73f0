//! A connection's way out: a bounded queue in front of non-blocking writes.
//!
//! Every write to a hub connection is non-blocking, from whichever thread makes it (a publisher,
//! the connection's own thread answering a ping, the flusher). What the kernel does not take at
//! once waits here, and goes out in this order:
//!
//! 1. `spill`: bytes already committed to the wire (the rest of a frame the kernel took part of,
//!    or TLS records already encrypted), always first;
//! 2. the pending pong, then the pending ping: control frames never wait behind queued data. At
//!    most one of each is pending (a newer pong replaces an unsent one, as RFC 6455 §5.5.3
//!    allows), so a client that pings and never reads cannot grow the queue;
//! 3. `data`: whole frames, shared [`Message`] buffers, bounded in count and bytes;
//! 4. our close frame, once `data` is empty: nothing follows it (RFC 6455 §5.5.1). A close for a
//!    slow client drops the queued data first, so the close is next.
//!
//! A connection with anything waiting is handed to the [flusher](super::flusher), which writes
//! as the socket drains. The lock here is the connection's own and is never held across a
//! blocking call, except by [`Outbound::drain`], which the connection's own thread runs once,
//! when the connection ends.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::frame::CloseCode;
use crate::hub::message::Message;
use crate::hub::metrics::Counters;
use crate::sys::{self, POLLOUT};
use crate::transport::{Direct, WriteHalf};

/// The most queued data copied into one write when a backlog drains (plain TCP).
const GATHER: usize = 64 * 1024;

/// What happened to a frame handed to [`Outbound::push`] or [`Outbound::send`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Push {
    /// Written to the socket whole.
    Written,
    /// Queued (or partly written): the flusher must be told if it does not know already.
    Queued,
    /// The queue is full (in bytes or in messages) and the socket takes nothing more now: the
    /// slow-client policy decides.
    Full,
    /// The connection is closing or gone: nothing more is sent.
    Closed,
}

/// The bounds of a connection's data queue.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    pub max_bytes: usize,
    pub max_messages: usize,
}

struct State {
    write: WriteHalf,
    spill: Vec<u8>,
    pong: Option<Bytes>,
    ping: Option<Bytes>,
    data: VecDeque<Bytes>,
    /// Bytes in `data`.
    data_bytes: usize,
    /// Our close frame, waiting for `data` to empty.
    close_frame: Option<Bytes>,
    /// The close we sent or queued: after it, no data frame is accepted.
    close: Option<(CloseCode, String)>,
    /// A write failed, or the connection ended: nothing more can go out.
    broken: bool,
    /// The flusher holds this connection in its set.
    in_flusher: bool,
    /// What this connection last added to the hub's queued-bytes gauge.
    reported: usize,
}

impl State {
    fn queued_bytes(&self) -> usize {
        self.data_bytes
            + self.spill.len()
            + self.pong.as_ref().map_or(0, Bytes::len)
            + self.ping.as_ref().map_or(0, Bytes::len)
            + self.close_frame.as_ref().map_or(0, Bytes::len)
    }

    fn pending(&self) -> bool {
        !self.broken && self.queued_bytes() > 0
    }

    fn idle(&self) -> bool {
        self.queued_bytes() == 0
    }
}

/// A connection's queue and writing half.
pub(crate) struct Outbound {
    state: Mutex<State>,
    fd: RawFd,
    bounds: Bounds,
    counters: Arc<Counters>,
    /// The client accepts compressed messages (permessage-deflate): data messages go in their
    /// compressed form when they have one.
    compress: bool,
}

impl Outbound {
    pub(crate) fn new(
        write: WriteHalf,
        bounds: Bounds,
        counters: Arc<Counters>,
        compress: bool,
    ) -> Self {
        Outbound {
            compress,
            fd: write.socket().as_raw_fd(),
            state: Mutex::new(State {
                write,
                spill: Vec::new(),
                pong: None,
                ping: None,
                data: VecDeque::new(),
                data_bytes: 0,
                close_frame: None,
                close: None,
                broken: false,
                in_flusher: false,
                reported: 0,
            }),
            bounds,
            counters,
        }
    }

    /// The socket's descriptor, for polling.
    pub(crate) fn fd(&self) -> RawFd {
        self.fd
    }

    /// Queues a data frame without writing (a broadcast queues under the room's order, then
    /// writes once the room is released). A full queue first tries to write what waits, so a
    /// reader that keeps up is never called slow.
    pub(crate) fn push(&self, message: &Message) -> Push {
        let wire = message.wire_for(self.compress);
        let mut s = self.state.lock();
        let mut push = self.push_locked(&mut s, wire, true);
        if push == Push::Full {
            self.flush_locked(&mut s);
            push = self.push_locked(&mut s, wire, true);
        }
        self.report(&mut s);
        push
    }

    /// Queues a data frame whatever the bounds (a recovery's replay, which the history already
    /// bounds: cutting it would break the promise of no gap).
    pub(crate) fn push_unbounded(&self, message: &Message) -> Push {
        let wire = message.wire_for(self.compress);
        let mut s = self.state.lock();
        let push = self.push_locked(&mut s, wire, false);
        self.report(&mut s);
        push
    }

    /// Sends a data frame: written at once when nothing waits ahead of it, else queued behind
    /// what waits, then as much as the socket takes is written.
    pub(crate) fn send(&self, message: &Message) -> Push {
        let wire = message.wire_for(self.compress);
        let mut s = self.state.lock();
        let mut push = self.push_locked(&mut s, wire, true);
        if push == Push::Full {
            self.flush_locked(&mut s);
            push = self.push_locked(&mut s, wire, true);
        }
        let push = match push {
            Push::Queued if self.flush_locked(&mut s) => Push::Queued,
            Push::Queued => Push::Written,
            other => other,
        };
        self.report(&mut s);
        push
    }

    /// Queues `wire` (a message's frame in the form this connection takes, chosen before the
    /// lock: making the compressed form must not hold it).
    fn push_locked(&self, s: &mut State, wire: &Bytes, bounded: bool) -> Push {
        if s.broken || s.close.is_some() {
            return Push::Closed;
        }
        let len = wire.len();
        // An empty queue takes any one message: a message larger than the byte bound is not a
        // sign of a slow reader.
        let over = !s.data.is_empty()
            && (s.data.len() >= self.bounds.max_messages
                || (s.data_bytes + s.spill.len()).saturating_add(len) > self.bounds.max_bytes);
        if bounded && over {
            return Push::Full;
        }
        s.data.push_back(wire.clone());
        s.data_bytes += len;
        Push::Queued
    }

    /// Queues a pong (replacing an unsent one) ahead of queued data and writes what the socket
    /// takes. Ignored once a close is queued. Returns true if something is left for the flusher.
    pub(crate) fn pong(&self, message: &Message) -> bool {
        self.control(message, |s| &mut s.pong)
    }

    /// Queues a ping (replacing an unsent one), like [`pong`](Self::pong).
    pub(crate) fn ping(&self, message: &Message) -> bool {
        self.control(message, |s| &mut s.ping)
    }

    fn control(&self, message: &Message, slot: impl Fn(&mut State) -> &mut Option<Bytes>) -> bool {
        let mut s = self.state.lock();
        if s.broken || s.close.is_some() {
            return false;
        }
        *slot(&mut s) = Some(message.wire().clone());
        let pending = self.flush_locked(&mut s);
        self.report(&mut s);
        pending
    }

    /// Queues our close frame behind the queued data (or instead of it, when `drop_data`, as for
    /// a slow client) and writes what the socket takes. Returns false if a close was already
    /// queued (the first close wins) or the connection is gone.
    pub(crate) fn close(&self, code: CloseCode, reason: &str, drop_data: bool) -> bool {
        let mut s = self.state.lock();
        if s.close.is_some() || s.broken {
            return false;
        }
        s.close = Some((code, reason.to_string()));
        if drop_data && !s.data.is_empty() {
            self.counters.dropped_add(s.data.len() as u64);
            s.data_bytes = 0;
            s.data.clear();
        }
        s.close_frame = Some(Message::close(code, reason).wire().clone());
        self.flush_locked(&mut s);
        self.report(&mut s);
        true
    }

    /// The close we sent or queued, if any.
    pub(crate) fn our_close(&self) -> Option<(CloseCode, String)> {
        self.state.lock().close.clone()
    }

    /// Writes what the socket takes; returns true if something is still waiting.
    pub(crate) fn flush(&self) -> bool {
        let mut s = self.state.lock();
        let pending = self.flush_locked(&mut s);
        self.report(&mut s);
        pending
    }

    /// Marks the connection as held by the flusher if something waits and it is not held
    /// already; true if the caller must hand it over.
    pub(crate) fn needs_flusher(&self) -> bool {
        let mut s = self.state.lock();
        if s.pending() && !s.in_flusher {
            s.in_flusher = true;
            return true;
        }
        false
    }

    /// For the flusher: writes what the socket takes; when nothing is left, the flusher lets the
    /// connection go (returns false) and a later push hands it over again.
    pub(crate) fn flush_for_flusher(&self) -> bool {
        let mut s = self.state.lock();
        let pending = self.flush_locked(&mut s);
        if !pending {
            s.in_flusher = false;
        }
        self.report(&mut s);
        pending
    }

    /// The connection is ending: writes what waits (our close frame included; under TLS then
    /// `close_notify`), waiting for the socket until `deadline`, on the calling thread. Returns
    /// true if everything went out. Only the connection's own thread calls this, once.
    pub(crate) fn drain(&self, deadline: Instant) -> bool {
        let mut notified = false;
        loop {
            let mut s = self.state.lock();
            let pending = self.flush_locked(&mut s);
            self.report(&mut s);
            if s.broken {
                return false;
            }
            if !pending {
                if notified || !s.write.is_tls() || s.close_frame.is_some() {
                    return true;
                }
                // Our close frame is out: end the TLS stream too.
                let st = &mut *s;
                st.write.queue_close_notify(&mut st.spill);
                notified = true;
                continue;
            }
            drop(s);
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let mut fds = [sys::interest(self.fd, POLLOUT)];
            if sys::poll(&mut fds, Some(left)).is_err() {
                return false;
            }
        }
    }

    /// The connection is gone: drops everything queued; closes are refused from now on.
    pub(crate) fn discard(&self) {
        let mut s = self.state.lock();
        s.broken = true;
        Self::clear(&mut s);
        self.report(&mut s);
    }

    fn clear(s: &mut State) {
        s.data_bytes = 0;
        s.spill.clear();
        s.pong = None;
        s.ping = None;
        s.close_frame = None;
        s.data.clear();
    }

    /// Brings the hub's queued-bytes gauge up to date with this connection's queue.
    fn report(&self, s: &mut State) {
        let now = s.queued_bytes();
        if now > s.reported {
            self.counters.queued_bytes_add(now - s.reported);
        } else {
            self.counters.queued_bytes_sub(s.reported - now);
        }
        s.reported = now;
    }

    /// Writes in order (spill, pong, ping, data, close) until the socket is full or nothing is
    /// left. Returns true if something is still waiting. A write error breaks the connection:
    /// what waits is dropped, and the connection's thread notices the dead socket on its next
    /// read.
    fn flush_locked(&self, s: &mut State) -> bool {
        loop {
            if s.broken {
                return false;
            }
            if !s.spill.is_empty() {
                match s.write.send_raw_nonblocking(&s.spill) {
                    Ok(n) => {
                        s.spill.drain(..n);
                        if !s.spill.is_empty() {
                            return true;
                        }
                    }
                    Err(e) if would_block(&e) => return true,
                    Err(e) => return self.broken(s, &e),
                }
            }
            for slot in [0, 1] {
                let frame = if slot == 0 {
                    s.pong.take()
                } else {
                    s.ping.take()
                };
                if let Some(frame) = frame
                    && !self.write_frame(s, &frame)
                {
                    if slot == 0 {
                        s.pong = Some(frame);
                    } else {
                        s.ping = Some(frame);
                    }
                    return !s.broken;
                }
            }
            if !s.spill.is_empty() {
                continue;
            }
            // Several queued frames on plain TCP: one write for the lot.
            if s.data.len() > 1 && !s.write.is_tls() {
                while let Some(frame) = s.data.front() {
                    if !s.spill.is_empty() && s.spill.len() + frame.len() > GATHER {
                        break;
                    }
                    s.spill.extend_from_slice(frame);
                    s.data_bytes -= frame.len();
                    s.data.pop_front();
                }
                continue;
            }
            if let Some(frame) = s.data.pop_front() {
                if !self.write_frame(s, &frame) {
                    s.data.push_front(frame);
                    return !s.broken;
                }
                s.data_bytes -= frame.len();
                continue;
            }
            // Data is empty: our close frame, last.
            if let Some(frame) = s.close_frame.take() {
                if !self.write_frame(s, &frame) {
                    s.close_frame = Some(frame);
                    return !s.broken;
                }
                continue;
            }
            return !s.idle();
        }
    }

    /// Writes one frame without blocking. True if it is gone (whole, or its rest in `spill`);
    /// false if nothing was taken (the caller puts it back) or the connection broke.
    fn write_frame(&self, s: &mut State, frame: &Bytes) -> bool {
        if s.write.is_tls() {
            return match s.write.write_direct(frame, &mut s.spill) {
                Direct::Declined => false,
                Direct::Done | Direct::Spilled => true,
            };
        }
        match s.write.send_raw_nonblocking(frame) {
            Ok(n) => {
                s.spill.extend_from_slice(&frame[n..]);
                true
            }
            Err(e) if would_block(&e) => false,
            Err(e) => {
                self.broken(s, &e);
                false
            }
        }
    }

    fn broken(&self, s: &mut State, e: &io::Error) -> bool {
        log::debug!("hub write failed ({e}); the connection is dropped");
        s.broken = true;
        Self::clear(s);
        false
    }
}

fn would_block(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}
