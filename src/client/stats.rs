//! Counters shared by a client's threads, and the snapshot users read.
//!
//! Every counter is a relaxed atomic bumped by the one thread that owns the event it counts, so
//! counting costs an uncontended atomic add. The inbound message and byte counts, bumped once
//! per message, cost less still: each reader thread keeps its own [`Tally`], which only it
//! writes (a load and a store, no locked instruction), folded into the client's totals when the
//! reader ends; a snapshot adds the live tallies to those totals. Figures the coordinator owns
//! (RTT percentiles, recent errors, reconnects) are copied into a small mutex-protected view
//! when they change. [`Client::stats`](crate::Client::stats) copies everything.

use std::cell::Cell;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{
    AtomicU8, AtomicU64,
    Ordering::{Relaxed, SeqCst},
};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::client::coordinator::{Health, State};

/// A point-in-time copy of a client's counters and health.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Complete inbound messages (text and binary) decoded, on all connections.
    pub messages_in: u64,
    /// Payload bytes of those messages.
    pub bytes_in: u64,
    /// Outbound data frames written to the socket (user and session frames).
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
    /// Queued user frames discarded when a connection was lost (without
    /// [`buffer_while_disconnected`](crate::ClientBuilder::buffer_while_disconnected) nothing
    /// queued for one connection is sent on the next).
    pub discarded_on_disconnect: u64,
    /// Coordinator inputs handled on the thread they came from: the fast path of
    /// `send_and_confirm` (a caller's submit, the reader's response, the writer's report).
    pub inline_steps: u64,
    /// Coordinator inputs handed to the coordinator thread instead: commands, lifecycle
    /// reports, and fast-path inputs that found the coordinator busy.
    pub queued_steps: u64,
    /// Request frames written right after their registration, without waking the writer thread
    /// (it was idle and nothing was queued ahead): by the coordinator thread under actor
    /// dispatch, by the submitting thread under inline dispatch. Included in `messages_out`.
    pub direct_writes: u64,
    /// Successful reconnects (connections after the first, rotations not included).
    pub reconnects: u64,
    /// Make-before-break rotations completed (see
    /// [`ClientBuilder::rotate_after`](crate::ClientBuilder::rotate_after)).
    pub rotations: u64,
    /// Rotations that failed, leaving the current connection in place.
    pub rotation_failures: u64,
    /// Rotations failed because the replacement received more messages before the switch than
    /// [`Config::rotation_hold`](crate::Config::rotation_hold) allows (included in
    /// `rotation_failures`).
    pub rotation_hold_full: u64,
    /// Connection attempts, including the first.
    pub connect_attempts: u64,
    /// Time since the last inbound data message, if any arrived.
    pub since_last_receive: Option<Duration>,
    /// Time since the last write to the socket, if any.
    pub since_last_send: Option<Duration>,
    /// Number of round-trip samples (keepalive pings answered).
    pub rtt_samples: u64,
    /// Median round trip, to about 20% resolution.
    pub rtt_p50: Option<Duration>,
    /// 99th percentile round trip, to about 20% resolution.
    pub rtt_p99: Option<Duration>,
    /// The most recent errors and disconnect causes, oldest first (at most 16).
    pub recent_errors: Vec<String>,
}

/// The coordinator-owned part of [`Stats`].
#[derive(Debug, Default)]
struct HealthView {
    reconnects: u64,
    rotations: u64,
    rotation_failures: u64,
    connect_attempts: u64,
    rtt_samples: u64,
    rtt_p50: Option<Duration>,
    rtt_p99: Option<Duration>,
    recent_errors: Vec<String>,
}

#[derive(Debug)]
pub(crate) struct Counters {
    base: Instant,
    pub state: AtomicU8,
    /// Of readers that have ended (see `tallies`).
    messages_in: AtomicU64,
    bytes_in: AtomicU64,
    pub messages_out: AtomicU64,
    pub bytes_out: AtomicU64,
    pub pings_in: AtomicU64,
    pub pongs_dropped: AtomicU64,
    pub events_dropped: AtomicU64,
    pub events_blocked: AtomicU64,
    pub discarded_after_close: AtomicU64,
    pub discarded_on_disconnect: AtomicU64,
    pub inline_steps: AtomicU64,
    pub queued_steps: AtomicU64,
    pub direct_writes: AtomicU64,
    pub rotation_hold_full: AtomicU64,
    /// The connection whose session was last ready (requests submitted now are meant for it).
    ready_epoch: AtomicU64,
    /// Nanoseconds after `base` of the last data message (0: none yet).
    last_data_ns: AtomicU64,
    /// Nanoseconds after `base` of the last socket write (0: none yet).
    last_send_ns: AtomicU64,
    health: Mutex<HealthView>,
    /// The live readers' tallies (see [`Tally`]); `messages_in` and `bytes_in` hold those of
    /// readers that have ended. Folding and summing happen under this lock, so a snapshot
    /// counts every message exactly once.
    tallies: Mutex<Vec<Arc<Tally>>>,
}

/// One reader thread's inbound counts. Only that thread adds to them, so an add is a plain load
/// and store (an atomic read-modify-write per message cost the 64 B frame path about a tenth of
/// its throughput); other threads only read them. Registered with [`Counters::tally`]; the
/// [`TallyHandle`] folds them into the client's totals when the reader drops it. Aligned to
/// its own cache lines, so the reader's stores never contend with data other threads use.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Tally {
    messages: AtomicU64,
    bytes: AtomicU64,
}

/// A reader's hold on its [`Tally`]: the only way to add to it. Not `Sync`, so the one thread
/// that holds it is the only one that can add.
#[derive(Debug)]
pub(crate) struct TallyHandle {
    tally: Arc<Tally>,
    counters: Arc<Counters>,
    _one_writer: PhantomData<Cell<()>>,
}

impl TallyHandle {
    /// Counts one inbound message of `bytes` payload bytes.
    #[inline(always)]
    pub(crate) fn message(&self, bytes: usize) {
        // The one writer: no other thread can add between the load and the store.
        let t = &self.tally;
        t.messages
            .store(t.messages.load(Relaxed).wrapping_add(1), Relaxed);
        t.bytes
            .store(t.bytes.load(Relaxed).wrapping_add(bytes as u64), Relaxed);
    }
}

impl Drop for TallyHandle {
    fn drop(&mut self) {
        let mut live = self.counters.tallies.lock();
        live.retain(|t| !Arc::ptr_eq(t, &self.tally));
        Counters::bump(
            &self.counters.messages_in,
            self.tally.messages.load(Relaxed),
        );
        Counters::bump(&self.counters.bytes_in, self.tally.bytes.load(Relaxed));
    }
}

impl Counters {
    pub(crate) fn new() -> Self {
        Counters {
            base: Instant::now(),
            state: AtomicU8::new(State::Connecting as u8),
            messages_in: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            messages_out: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            pings_in: AtomicU64::new(0),
            pongs_dropped: AtomicU64::new(0),
            events_dropped: AtomicU64::new(0),
            events_blocked: AtomicU64::new(0),
            discarded_after_close: AtomicU64::new(0),
            discarded_on_disconnect: AtomicU64::new(0),
            inline_steps: AtomicU64::new(0),
            queued_steps: AtomicU64::new(0),
            direct_writes: AtomicU64::new(0),
            rotation_hold_full: AtomicU64::new(0),
            ready_epoch: AtomicU64::new(0),
            last_data_ns: AtomicU64::new(0),
            last_send_ns: AtomicU64::new(0),
            health: Mutex::new(HealthView::default()),
            tallies: Mutex::new(Vec::new()),
        }
    }

    /// A new reader's tally of inbound messages, counted in snapshots until it is dropped and
    /// in the totals after.
    pub(crate) fn tally(self: &Arc<Self>) -> TallyHandle {
        let tally = Arc::new(Tally::default());
        self.tallies.lock().push(tally.clone());
        TallyHandle {
            tally,
            counters: self.clone(),
            _one_writer: PhantomData,
        }
    }

    /// Inbound messages and payload bytes so far: the ended readers' totals plus the live
    /// readers' tallies.
    fn inbound(&self) -> (u64, u64) {
        let live = self.tallies.lock();
        live.iter().fold(
            (self.messages_in.load(Relaxed), self.bytes_in.load(Relaxed)),
            |(m, b), t| {
                (
                    m.wrapping_add(t.messages.load(Relaxed)),
                    b.wrapping_add(t.bytes.load(Relaxed)),
                )
            },
        )
    }

    pub(crate) fn bump(counter: &AtomicU64, by: u64) {
        counter.fetch_add(by, Relaxed);
    }

    pub(crate) fn set_state(&self, state: State) {
        self.state.store(state as u8, SeqCst);
    }

    pub(crate) fn state(&self) -> State {
        State::from_u8(self.state.load(SeqCst))
    }

    /// Published before the state turns `Ready`.
    pub(crate) fn set_ready_epoch(&self, epoch: u64) {
        self.ready_epoch.store(epoch, SeqCst);
    }

    pub(crate) fn ready_epoch(&self) -> u64 {
        self.ready_epoch.load(SeqCst)
    }

    fn stamp(&self, slot: &AtomicU64, at: Instant) {
        let ns = at.saturating_duration_since(self.base).as_nanos().max(1);
        slot.store(u64::try_from(ns).unwrap_or(u64::MAX), Relaxed);
    }

    fn read_stamp(&self, slot: &AtomicU64) -> Option<Instant> {
        match slot.load(Relaxed) {
            0 => None,
            ns => Some(crate::deadline::after(self.base, Duration::from_nanos(ns))),
        }
    }

    /// The reader saw a data message now.
    pub(crate) fn data_seen(&self, at: Instant) {
        self.stamp(&self.last_data_ns, at);
    }

    /// The writer wrote to the socket now.
    pub(crate) fn sent(&self, at: Instant) {
        self.stamp(&self.last_send_ns, at);
    }

    pub(crate) fn last_data(&self) -> Option<Instant> {
        self.read_stamp(&self.last_data_ns)
    }

    /// Copies the coordinator's health figures if they changed.
    pub(crate) fn publish(&self, health: &mut Health) {
        if !health.dirty {
            return;
        }
        health.dirty = false;
        let mut view = self.health.lock();
        view.reconnects = health.reconnects;
        view.rotations = health.rotations;
        view.rotation_failures = health.rotation_failures;
        view.connect_attempts = health.connect_attempts;
        view.rtt_samples = health.rtt.count();
        view.rtt_p50 = health.rtt.quantile(0.5);
        view.rtt_p99 = health.rtt.quantile(0.99);
        view.recent_errors = health.errors.to_vec();
    }

    pub(crate) fn snapshot(&self) -> Stats {
        let now = Instant::now();
        let (messages_in, bytes_in) = self.inbound();
        let view = self.health.lock();
        Stats {
            messages_in,
            bytes_in,
            messages_out: self.messages_out.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            pings_in: self.pings_in.load(Relaxed),
            pongs_dropped: self.pongs_dropped.load(Relaxed),
            events_dropped: self.events_dropped.load(Relaxed),
            events_blocked: self.events_blocked.load(Relaxed),
            discarded_after_close: self.discarded_after_close.load(Relaxed),
            discarded_on_disconnect: self.discarded_on_disconnect.load(Relaxed),
            inline_steps: self.inline_steps.load(Relaxed),
            queued_steps: self.queued_steps.load(Relaxed),
            direct_writes: self.direct_writes.load(Relaxed),
            reconnects: view.reconnects,
            rotations: view.rotations,
            rotation_failures: view.rotation_failures,
            rotation_hold_full: self.rotation_hold_full.load(Relaxed),
            connect_attempts: view.connect_attempts,
            since_last_receive: self.last_data().map(|t| now.saturating_duration_since(t)),
            since_last_send: self
                .read_stamp(&self.last_send_ns)
                .map(|t| now.saturating_duration_since(t)),
            rtt_samples: view.rtt_samples,
            rtt_p50: view.rtt_p50,
            rtt_p99: view.rtt_p99,
            recent_errors: view.recent_errors.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inbound(c: &Counters) -> (u64, u64) {
        let s = c.snapshot();
        (s.messages_in, s.bytes_in)
    }

    #[test]
    fn live_and_ended_tallies_are_each_counted_once() {
        let counters = Arc::new(Counters::new());
        let first = counters.tally();
        let second = counters.tally();
        first.message(10);
        first.message(5);
        second.message(100);
        assert_eq!(inbound(&counters), (3, 115), "live tallies are summed");
        drop(first);
        assert_eq!(
            inbound(&counters),
            (3, 115),
            "an ended tally is folded, not lost"
        );
        second.message(1);
        drop(second);
        assert_eq!(inbound(&counters), (4, 116));
        assert!(
            counters.tallies.lock().is_empty(),
            "ended tallies are unregistered"
        );
        let third = counters.tally();
        third.message(0);
        assert_eq!(
            inbound(&counters),
            (5, 116),
            "new readers add to the totals"
        );
    }

    #[test]
    fn a_tally_written_on_another_thread_is_seen_once_it_has_ended() {
        let counters = Arc::new(Counters::new());
        let tally = counters.tally();
        std::thread::spawn(move || {
            for _ in 0..1_000 {
                tally.message(64);
            }
        })
        .join()
        .unwrap();
        assert_eq!(inbound(&counters), (1_000, 64_000));
    }
}
