//! A connection's way out: a bounded queue in front of non-blocking writes.
//!
//! Every write to a hub connection is non-blocking, from whichever thread makes it (a publisher,
//! the connection's own thread answering a ping, the flusher). What the kernel does not take at
//! once waits here, in order:
//!
//! 1. `spill`: bytes already committed to the wire (the rest of a frame the kernel took part of,
//!    or TLS records already encrypted), always first;
//! 2. `control`: pong, ping and close frames, which never wait behind queued data;
//! 3. `data`: whole frames, shared [`Message`] buffers, bounded in count and bytes.
//!
//! A connection with anything waiting is handed to the [flusher](super::flusher), which writes
//! as the socket drains. The lock here is the connection's own and is never held across a
//! blocking call: a publisher that finds a connection's socket full queues and moves on.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::frame::CloseCode;
use crate::hub::message::Message;
use crate::hub::metrics::Counters;
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
    /// The queue is full (in bytes or in messages): the slow-client policy decides.
    Full,
    /// The connection is closing or broken: nothing more is sent.
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
    control: VecDeque<Bytes>,
    data: VecDeque<Bytes>,
    /// Bytes in `data`; with `spill`, what counts against `max_bytes`.
    data_bytes: usize,
    /// What this connection last added to the hub's queued-bytes gauge.
    reported: usize,
    /// The close we sent or queued: after it, no data frame is accepted.
    close: Option<(CloseCode, String)>,
    /// A write failed: nothing more can go out.
    broken: bool,
    /// The flusher holds this connection in its set.
    in_flusher: bool,
}

/// A connection's queue and writing half.
pub(crate) struct Outbound {
    state: Mutex<State>,
    fd: RawFd,
    bounds: Bounds,
    counters: Arc<Counters>,
}

impl Outbound {
    pub(crate) fn new(write: WriteHalf, bounds: Bounds, counters: Arc<Counters>) -> Self {
        Outbound {
            fd: write.socket().as_raw_fd(),
            state: Mutex::new(State {
                write,
                spill: Vec::new(),
                control: VecDeque::new(),
                data: VecDeque::new(),
                data_bytes: 0,
                reported: 0,
                close: None,
                broken: false,
                in_flusher: false,
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
    /// writes with [`flush`](Self::flush) once the room is released).
    pub(crate) fn push(&self, message: &Message) -> Push {
        let mut s = self.state.lock();
        let push = self.push_locked(&mut s, message);
        self.report(&mut s);
        push
    }

    /// Sends a data frame: written at once when nothing waits ahead of it, else queued behind
    /// what waits, then as much as the socket takes is written.
    pub(crate) fn send(&self, message: &Message) -> Push {
        let mut s = self.state.lock();
        let push = match self.push_locked(&mut s, message) {
            Push::Queued if self.flush_locked(&mut s) => Push::Queued,
            Push::Queued => Push::Written,
            other => other,
        };
        self.report(&mut s);
        push
    }

    fn push_locked(&self, s: &mut State, message: &Message) -> Push {
        if s.broken || s.close.is_some() {
            return Push::Closed;
        }
        let len = message.wire_len();
        if s.data.len() >= self.bounds.max_messages
            || (s.data_bytes + s.spill.len()).saturating_add(len) > self.bounds.max_bytes
        {
            return Push::Full;
        }
        s.data.push_back(message.wire().clone());
        s.data_bytes += len;
        Push::Queued
    }

    /// Queues a control frame (pong, ping) ahead of queued data and writes what the socket
    /// takes. Ignored once a close is queued or the connection broke. Returns true if something
    /// is left for the flusher.
    pub(crate) fn control(&self, message: &Message) -> bool {
        let mut s = self.state.lock();
        if s.broken || s.close.is_some() {
            return false;
        }
        s.control.push_back(message.wire().clone());
        let pending = self.flush_locked(&mut s);
        self.report(&mut s);
        pending
    }

    /// Queues our close frame ahead of queued data (dropping the queued data when `drop_data`,
    /// as for a slow client, so the close is next on the wire) and writes what the socket takes.
    /// Returns false if a close was already queued (the first close wins).
    pub(crate) fn close(&self, code: CloseCode, reason: &str, drop_data: bool) -> bool {
        let mut s = self.state.lock();
        if s.close.is_some() {
            return false;
        }
        s.close = Some((code, reason.to_string()));
        if drop_data && !s.data.is_empty() {
            self.counters.dropped_add(s.data.len() as u64);
            s.data_bytes = 0;
            s.data.clear();
        }
        if !s.broken {
            s.control
                .push_back(Message::close(code, reason).wire().clone());
            self.flush_locked(&mut s);
        }
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
        let pending = !s.broken && Self::pending(&s);
        if pending && !s.in_flusher {
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

    /// The connection is gone: drops everything queued.
    pub(crate) fn discard(&self) {
        let mut s = self.state.lock();
        s.broken = true;
        Self::clear(&mut s);
        self.report(&mut s);
    }

    fn clear(s: &mut State) {
        s.data_bytes = 0;
        s.spill.clear();
        s.control.clear();
        s.data.clear();
    }

    /// Brings the hub's queued-bytes gauge up to date with this connection's queue.
    fn report(&self, s: &mut State) {
        let now = s.data_bytes + s.spill.len();
        if now > s.reported {
            self.counters.queued_bytes_add(now - s.reported);
        } else {
            self.counters.queued_bytes_sub(s.reported - now);
        }
        s.reported = now;
    }

    fn pending(s: &State) -> bool {
        !(s.spill.is_empty() && s.control.is_empty() && s.data.is_empty())
    }

    /// Writes in order (spill, control, data) until the socket is full or nothing is left.
    /// Returns true if something is still waiting. A write error breaks the connection: what
    /// waits is dropped, and the connection's thread notices the dead socket on its next read.
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
            if let Some(frame) = s.control.pop_front() {
                if !self.write_frame(s, &frame, false) {
                    s.control.push_front(frame);
                    return !s.broken;
                }
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
            let Some(frame) = s.data.pop_front() else {
                return false;
            };
            if !self.write_frame(s, &frame, true) {
                s.data.push_front(frame);
                return !s.broken;
            }
        }
    }

    /// Writes one frame without blocking. True if it is gone (whole, or its rest in `spill`);
    /// false if nothing was taken (the caller puts it back) or the connection broke.
    fn write_frame(&self, s: &mut State, frame: &Bytes, counted: bool) -> bool {
        if s.write.is_tls() {
            return match s.write.write_direct(frame, &mut s.spill) {
                Direct::Declined => false,
                Direct::Done | Direct::Spilled => {
                    Self::account_sent(s, frame.len(), counted);
                    true
                }
            };
        }
        match s.write.send_raw_nonblocking(frame) {
            Ok(n) => {
                s.spill.extend_from_slice(&frame[n..]);
                Self::account_sent(s, frame.len(), counted);
                true
            }
            Err(e) if would_block(&e) => false,
            Err(e) => {
                self.broken(s, &e);
                false
            }
        }
    }

    /// A frame left the queue (whole, or with its rest in `spill`).
    fn account_sent(s: &mut State, len: usize, counted: bool) {
        if counted {
            s.data_bytes -= len;
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
