//! Counters shared by a connection's threads, and the snapshot users read.
//!
//! Every counter is a relaxed atomic bumped by the one thread that owns the event it counts, so
//! counting costs an uncontended atomic add. [`Client::stats`](crate::Client::stats) copies them.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering::Relaxed};

use crate::coordinator::State;

/// A point-in-time copy of a connection's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Complete inbound messages (text and binary) decoded.
    pub messages_in: u64,
    /// Payload bytes of those messages.
    pub bytes_in: u64,
    /// Outbound data frames written to the socket.
    pub messages_out: u64,
    /// Payload bytes of those frames.
    pub bytes_out: u64,
    /// Pings received from the server (each answered with a pong unless counted below).
    pub pings_in: u64,
    /// Pongs not sent because the control lane was full (a peer pinging faster than we can write).
    pub pongs_dropped: u64,
    /// Inbound messages dropped because the event channel was full (only with
    /// [`Overflow::DropNewest`](crate::Overflow::DropNewest)).
    pub events_dropped: u64,
    /// Times the reader found the event channel full and had to wait (with
    /// [`Overflow::Block`](crate::Overflow::Block)).
    pub events_blocked: u64,
    /// Outbound data frames discarded because they were queued after the close was requested
    /// (they raced with `close`, `shutdown` or a close by the server).
    pub discarded_after_close: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub state: AtomicU8,
    pub messages_in: AtomicU64,
    pub bytes_in: AtomicU64,
    pub messages_out: AtomicU64,
    pub bytes_out: AtomicU64,
    pub pings_in: AtomicU64,
    pub pongs_dropped: AtomicU64,
    pub events_dropped: AtomicU64,
    pub events_blocked: AtomicU64,
    pub discarded_after_close: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64, by: u64) {
        counter.fetch_add(by, Relaxed);
    }

    pub(crate) fn set_state(&self, state: State) {
        self.state.store(state as u8, Relaxed);
    }

    pub(crate) fn is_open(&self) -> bool {
        self.state.load(Relaxed) == State::Open as u8
    }

    pub(crate) fn snapshot(&self) -> Stats {
        Stats {
            messages_in: self.messages_in.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            messages_out: self.messages_out.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            pings_in: self.pings_in.load(Relaxed),
            pongs_dropped: self.pongs_dropped.load(Relaxed),
            events_dropped: self.events_dropped.load(Relaxed),
            events_blocked: self.events_blocked.load(Relaxed),
            discarded_after_close: self.discarded_after_close.load(Relaxed),
        }
    }
}
