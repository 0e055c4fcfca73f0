//! The application's event channel: events travel in batches, one channel slot per batch.
//!
//! The reader thread hands over the events it decoded from one `read(2)` (up to
//! [`EVENT_BATCH`](crate::client::reader::EVENT_BATCH)) as one [`Batch`]: one slot claimed on
//! the underlying crossbeam channel and one wake-up per batch instead of per event, and the
//! consumer takes events out of the batch it holds without touching the channel. On one core
//! shared by the reader and the application, the per-event slot claims on both sides were a
//! quarter of the 64 B frame path (BENCHMARKS.md, change 15).
//!
//! The bound is in events, as configured ([`Config::event_queue`](crate::Config::event_queue)):
//! a count of the events sitting in the channel (not those of the batch the consumer is
//! working through) decides whether there is room. A sender that finds too little room sends
//! what fits and then follows the [`Overflow`](crate::Overflow) policy for the rest: it waits
//! until the consumer takes a batch (each take wakes the waiting senders), or drops and counts.
//!
//! Batches are recycled: the consumer hands each emptied batch's allocation back to the
//! senders, so the steady state allocates nothing.

use std::cell::UnsafeCell;
use std::sync::Arc;
use std::sync::atomic::{
    AtomicBool, AtomicUsize,
    Ordering::{Acquire, Relaxed, Release, SeqCst},
};
use std::time::{Duration, Instant};

use crossbeam_channel::{
    Receiver, RecvError, RecvTimeoutError, Sender, TryRecvError, TrySendError, bounded, select,
};

use crate::client::event::Event;

/// What both ends share: the bound and the way back for empty batches and wake-ups.
struct Shared<T> {
    capacity: usize,
    /// Events in batches that are in the channel (or received through [`Events::batches`] and
    /// not yet iterated).
    queued: AtomicUsize,
    /// Senders waiting for room.
    waiting: AtomicUsize,
    /// Set when the application's end ([`Events`] and its clones) is dropped: senders then
    /// drop what they send and never wait.
    gone: AtomicBool,
    /// A token per wake-up of a waiting sender (a spare token only costs a look).
    room_tx: Sender<()>,
    room_rx: Receiver<()>,
    /// Emptied batches' allocations, back to the senders.
    empties_tx: Sender<Vec<Event<T>>>,
    empties_rx: Receiver<Vec<Event<T>>>,
    /// The capacity a recycled allocation must have (smaller ones are dropped).
    batch: usize,
}

impl<T> Shared<T> {
    /// `n` events left the channel: wake the senders waiting for room.
    fn taken(&self, n: usize) {
        self.queued.fetch_sub(n, SeqCst);
        self.wake();
    }

    /// Wakes the senders waiting for room (each looks again).
    fn wake(&self) {
        for _ in 0..self.waiting.load(SeqCst) {
            if self.room_tx.try_send(()).is_err() {
                break;
            }
        }
    }

    fn recycle(&self, mut v: Vec<Event<T>>) {
        v.clear();
        if v.capacity() >= self.batch {
            let _ = self.empties_tx.try_send(v);
        }
    }
}

/// Makes an event channel holding at most `capacity` events, whose senders batch up to
/// `batch` events.
pub(crate) fn channel<T>(capacity: usize, batch: usize) -> (EventSender<T>, Events<T>) {
    let capacity = capacity.max(1);
    let (tx, rx) = bounded(capacity);
    let (room_tx, room_rx) = bounded(8);
    // Enough spare allocations for a channel full of full batches, and a few more.
    let (empties_tx, empties_rx) = bounded(capacity.div_ceil(batch.max(1)) + 4);
    let shared = Arc::new(Shared {
        capacity,
        queued: AtomicUsize::new(0),
        waiting: AtomicUsize::new(0),
        gone: AtomicBool::new(false),
        room_tx,
        room_rx,
        empties_tx,
        empties_rx,
        batch,
    });
    let sender = EventSender {
        tx,
        shared: shared.clone(),
    };
    let events = Events {
        inner: Arc::new(Consumer {
            rx,
            shared,
            taking: AtomicBool::new(false),
            local: UnsafeCell::new(Vec::new()),
        }),
    };
    (sender, events)
}

/// The sending end, held by readers and the coordinator.
pub(crate) struct EventSender<T> {
    tx: Sender<Batch<T>>,
    shared: Arc<Shared<T>>,
}

impl<T> Clone for EventSender<T> {
    fn clone(&self) -> Self {
        EventSender {
            tx: self.tx.clone(),
            shared: self.shared.clone(),
        }
    }
}

/// What [`EventSender::try_send`] could not send.
pub(crate) enum Unsent<T> {
    /// Everything went (or the application is gone, and nothing needs to).
    Nothing,
    /// The channel was full: these events, in order, are still to send.
    Full(Vec<Event<T>>),
}

impl<T> EventSender<T> {
    /// An empty batch to fill, recycled when one is available.
    pub(crate) fn empty_batch(&self) -> Vec<Event<T>> {
        self.shared
            .empties_rx
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(self.shared.batch))
    }

    /// A batch of one event (lifecycle events, and a replacement connection's held ones).
    pub(crate) fn batch_of(&self, event: Event<T>) -> Vec<Event<T>> {
        let mut batch = self.empty_batch();
        batch.push(event);
        batch
    }

    /// Gives back a batch that was not sent (its allocation is reused).
    pub(crate) fn recycle(&self, batch: Vec<Event<T>>) {
        self.shared.recycle(batch);
    }

    /// True when the channel is more than half full.
    pub(crate) fn over_half(&self) -> bool {
        self.shared.queued.load(SeqCst) > self.shared.capacity / 2
    }

    /// Sends as many of `events` as there is room for, in order, without waiting.
    pub(crate) fn try_send(&self, mut events: Vec<Event<T>>) -> Unsent<T> {
        let n = events.len();
        if n == 0 || self.shared.gone.load(SeqCst) {
            self.shared.recycle(events);
            return Unsent::Nothing;
        }
        // Claim room first, so concurrent senders never overfill the channel together.
        let mut queued = self.shared.queued.load(SeqCst);
        let fits = loop {
            let room = self.shared.capacity.saturating_sub(queued);
            let fits = room.min(n);
            if fits == 0 {
                return Unsent::Full(events);
            }
            match self
                .shared
                .queued
                .compare_exchange_weak(queued, queued + fits, SeqCst, SeqCst)
            {
                Ok(_) => break fits,
                Err(now) => queued = now,
            }
        };
        // What fits goes in a recycled batch and the rest stays in `events`, whose allocation
        // is a full batch's: splitting the rest off instead would allocate a short vector (too
        // small to recycle) each time the channel fills up.
        let (events, rest) = if fits < n {
            let mut head = self.empty_batch();
            head.extend(events.drain(..fits));
            (head, Some(events))
        } else {
            (events, None)
        };
        let batch = Batch {
            events,
            shared: self.shared.clone(),
            counted: true,
        };
        match self.tx.try_send(batch) {
            Ok(()) => match rest {
                Some(rest) => Unsent::Full(rest),
                None => Unsent::Nothing,
            },
            // Nobody will take anything any more.
            Err(TrySendError::Disconnected(b)) => {
                b.uncount();
                Unsent::Nothing
            }
            // Not reached: each batch holds at least one counted event, so there are never
            // more batches than the room claimed allows. Handled as full all the same.
            Err(TrySendError::Full(b)) => {
                let mut events = b.uncount();
                events.extend(rest.into_iter().flatten());
                Unsent::Full(events)
            }
        }
    }

    /// Waits until the consumer takes a batch (or is gone); false when `stop` disconnects
    /// first.
    pub(crate) fn wait_for_room(&self, stop: &Receiver<()>) -> bool {
        let shared = &self.shared;
        shared.waiting.fetch_add(1, SeqCst);
        // After announcing the wait: a take (or the consumer's end) from now on sends a token.
        let released = if shared.queued.load(SeqCst) < shared.capacity || shared.gone.load(SeqCst) {
            true
        } else {
            select! {
                recv(shared.room_rx) -> _ => true,
                recv(stop) -> _ => false,
            }
        };
        shared.waiting.fetch_sub(1, SeqCst);
        released
    }
}

/// The events one sender handed over together, in order. Received whole through
/// [`Events::batches`] (for `select!`); iterating it yields its events.
pub struct Batch<T> {
    events: Vec<Event<T>>,
    shared: Arc<Shared<T>>,
    /// Still counted in the channel's bound.
    counted: bool,
}

impl<T> Batch<T> {
    /// Leaves the channel's count.
    fn uncount(mut self) -> Vec<Event<T>> {
        if std::mem::replace(&mut self.counted, false) {
            self.shared.taken(self.events.len());
        }
        std::mem::take(&mut self.events)
    }

    /// How many events the batch holds.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// True when the batch holds no event (never the case for a received batch).
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

impl<T> Drop for Batch<T> {
    fn drop(&mut self) {
        if self.counted {
            self.shared.taken(self.events.len());
        }
        self.shared.recycle(std::mem::take(&mut self.events));
    }
}

impl<T> std::fmt::Debug for Batch<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("len", &self.events.len())
            .finish_non_exhaustive()
    }
}

impl<T> IntoIterator for Batch<T> {
    type Item = Event<T>;
    type IntoIter = BatchIter<T>;

    fn into_iter(self) -> BatchIter<T> {
        let shared = self.shared.clone();
        let mut events = self.uncount();
        events.reverse(); // Taken from the end.
        BatchIter { events, shared }
    }
}

/// The events of a [`Batch`], in order. Hands the batch's allocation back when dropped.
pub struct BatchIter<T> {
    /// Reversed: the next event is the last.
    events: Vec<Event<T>>,
    shared: Arc<Shared<T>>,
}

impl<T> Iterator for BatchIter<T> {
    type Item = Event<T>;

    #[inline]
    fn next(&mut self) -> Option<Event<T>> {
        self.events.pop()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.events.len(), Some(self.events.len()))
    }
}

impl<T> std::fmt::Debug for BatchIter<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchIter")
            .field("left", &self.events.len())
            .finish_non_exhaustive()
    }
}

impl<T> Drop for BatchIter<T> {
    fn drop(&mut self) {
        self.shared.recycle(std::mem::take(&mut self.events));
    }
}

/// The receiving end of a client's events ([`Client::events`](crate::Client::events)).
///
/// Its methods are those of a channel receiver (`recv`, `try_recv`, `recv_timeout`, `iter`, …)
/// and return crossbeam's error types. Events travel in batches (those decoded from one read,
/// handed over together); `recv` returns them one at a time, from the batch this receiver
/// holds, and takes the next batch from the channel when it is used up. Clones share the
/// channel and the batch in hand, so several threads may consume, though one is the intended
/// use.
///
/// To wait on events together with other channels in crossbeam's `select!`, select on
/// [`batches`](Events::batches) and iterate each [`Batch`]. Use one way or the other on a
/// client: events `recv` has taken into its batch in hand are only returned by `recv` and
/// its siblings.
///
/// ```no_run
/// use std::time::Duration;
/// use crossbeam_channel::{select, tick};
/// use syncws::{Client, Event};
///
/// let client = Client::builder("ws://127.0.0.1:9001/feed").connect()?;
/// // One event at a time.
/// if let Ok(Event::Frame { frame, .. }) = client.events().recv_timeout(Duration::from_secs(1)) {
///     println!("first: {frame:?}");
/// }
/// // Together with other channels: whole batches.
/// let ticks = tick(Duration::from_secs(1));
/// loop {
///     select! {
///         recv(client.events().batches()) -> batch => {
///             let Ok(batch) = batch else { break }; // The client has shut down.
///             for event in batch {
///                 println!("{event:?}");
///             }
///         }
///         recv(ticks) -> _ => println!("{:?}", client.stats()),
///     }
/// }
/// # Ok::<(), syncws::Error>(())
/// ```
pub struct Events<T> {
    inner: Arc<Consumer<T>>,
}

struct Consumer<T> {
    rx: Receiver<Batch<T>>,
    shared: Arc<Shared<T>>,
    /// Held while `local` is touched (never across a wait, never around user code).
    taking: AtomicBool,
    /// The batch in hand, reversed: the next event is the last.
    local: UnsafeCell<Vec<Event<T>>>,
}

// SAFETY: `local` is only touched by the thread that holds `taking` (see `Consumer::with`),
// so sharing a `Consumer` shares no unsynchronised access; the events it holds are sent to
// whichever thread takes them, hence `T: Send`.
unsafe impl<T: Send> Sync for Consumer<T> {}

impl<T> Consumer<T> {
    /// Runs `f` on the batch in hand, with the `taking` flag held.
    #[inline]
    fn with<R>(&self, f: impl FnOnce(&mut Vec<Event<T>>) -> R) -> R {
        let mut spins = 0u32;
        while self
            .taking
            .compare_exchange_weak(false, true, Acquire, Relaxed)
            .is_err()
        {
            // Another clone is taking an event: a few instructions, unless it was preempted.
            spins += 1;
            if spins < 64 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        // SAFETY: the flag is held, so no other thread is in here (see the `Sync` impl);
        // `f` is this module's code, which neither panics nor waits.
        let r = f(unsafe { &mut *self.local.get() });
        self.taking.store(false, Release);
        r
    }

    #[inline]
    fn pop(&self) -> Option<Event<T>> {
        self.with(|local| local.pop())
    }

    /// Makes `batch` the batch in hand (behind any events still in hand) and returns its
    /// first event.
    fn install(&self, batch: Batch<T>) -> Option<Event<T>> {
        let mut events = batch.uncount();
        events.reverse();
        let spent = self.with(|local| {
            if local.is_empty() {
                std::mem::swap(local, &mut events);
                Some(events) // The spent allocation.
            } else {
                // Another clone installed a batch meanwhile: these come after its events.
                events.append(local);
                std::mem::swap(local, &mut events);
                None
            }
        });
        if let Some(v) = spent {
            self.shared.recycle(v);
        }
        self.pop()
    }
}

impl<T> Drop for Consumer<T> {
    fn drop(&mut self) {
        // The last handle on the application's end: nobody will take anything any more.
        self.shared.gone.store(true, SeqCst);
        self.shared.wake();
    }
}

impl<T> Clone for Events<T> {
    fn clone(&self) -> Self {
        Events {
            inner: self.inner.clone(),
        }
    }
}

impl<T> std::fmt::Debug for Events<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("queued", &self.inner.shared.queued.load(SeqCst))
            .field("capacity", &self.inner.shared.capacity)
            .finish_non_exhaustive()
    }
}

impl<T> Events<T> {
    /// A receiver of nothing, whose channel is already gone.
    pub(crate) fn closed() -> Self {
        channel(1, 1).1
    }

    /// Waits for the next event. Fails only once every sender is gone (the client has shut
    /// down) and nothing is left.
    pub fn recv(&self) -> Result<Event<T>, RecvError> {
        self.next_or(Receiver::recv)
    }

    /// The next event if one is waiting.
    pub fn try_recv(&self) -> Result<Event<T>, TryRecvError> {
        self.next_or(Receiver::try_recv)
    }

    /// Waits at most `timeout` for the next event.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Event<T>, RecvTimeoutError> {
        self.recv_deadline(crate::deadline::after(Instant::now(), timeout))
    }

    /// Waits until `deadline` at most for the next event.
    pub fn recv_deadline(&self, deadline: Instant) -> Result<Event<T>, RecvTimeoutError> {
        self.next_or(|rx| rx.recv_deadline(deadline))
    }

    /// The next event from the batch in hand, or else from the next batch `take` gets from
    /// the channel.
    fn next_or<E>(
        &self,
        take: impl Fn(&Receiver<Batch<T>>) -> Result<Batch<T>, E>,
    ) -> Result<Event<T>, E> {
        loop {
            if let Some(event) = self.inner.pop() {
                return Ok(event);
            }
            if let Some(event) = self.inner.install(take(&self.inner.rx)?) {
                return Ok(event);
            }
        }
    }

    /// A blocking iterator over the events; it ends once the client has shut down.
    pub fn iter(&self) -> impl Iterator<Item = Event<T>> + '_ {
        std::iter::from_fn(move || self.recv().ok())
    }

    /// An iterator over the events waiting now.
    pub fn try_iter(&self) -> impl Iterator<Item = Event<T>> + '_ {
        std::iter::from_fn(move || self.try_recv().ok())
    }

    /// The channel of whole batches, for crossbeam's `select!` (see the type's docs).
    pub fn batches(&self) -> &Receiver<Batch<T>> {
        &self.inner.rx
    }

    /// Events waiting: those in the channel and those left in the batch in hand.
    pub fn len(&self) -> usize {
        let in_hand = self.inner.with(|local| local.len());
        self.inner.shared.queued.load(SeqCst) + in_hand
    }

    /// True when no event is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True when the channel holds as many events as it may (the batch in hand aside): a
    /// reader then waits or drops, by the [`Overflow`](crate::Overflow) policy.
    pub fn is_full(&self) -> bool {
        self.inner.shared.queued.load(SeqCst) >= self.inner.shared.capacity
    }

    /// How many events the channel may hold ([`Config::event_queue`](crate::Config::event_queue)).
    pub fn capacity(&self) -> usize {
        self.inner.shared.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(n: u64) -> Event<u64> {
        Event::Data { epoch: 1, value: n }
    }

    fn values(events: impl Iterator<Item = Event<u64>>) -> Vec<u64> {
        events
            .map(|e| match e {
                Event::Data { value, .. } => value,
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    #[test]
    fn batches_arrive_in_order_one_event_at_a_time() {
        let (tx, rx) = channel(100, 4);
        for chunk in [vec![1, 2, 3], vec![4], vec![5, 6]] {
            let mut b = tx.empty_batch();
            b.extend(chunk.into_iter().map(ev));
            assert!(matches!(tx.try_send(b), Unsent::Nothing));
        }
        assert_eq!(rx.len(), 6);
        assert_eq!(values(rx.try_iter()), [1, 2, 3, 4, 5, 6]);
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    }

    #[test]
    fn the_bound_is_in_events_and_what_does_not_fit_comes_back_in_order() {
        let (tx, rx) = channel(3, 4);
        let mut b = tx.empty_batch();
        b.extend((1..=5).map(ev));
        let Unsent::Full(rest) = tx.try_send(b) else {
            panic!("two events should not fit");
        };
        assert_eq!(values(rest.into_iter()), [4, 5]);
        assert!(rx.is_full());
        assert!(matches!(tx.try_send(vec![ev(9)]), Unsent::Full(_)));
        assert_eq!(values(rx.try_iter()), [1, 2, 3]);
        assert!(!rx.is_full());
    }

    #[test]
    fn a_waiting_sender_is_released_by_a_take_or_by_stop() {
        let (tx, rx) = channel(1, 4);
        assert!(matches!(tx.try_send(vec![ev(1)]), Unsent::Nothing));
        let (stop_tx, stop_rx) = bounded::<()>(1);
        std::thread::scope(|s| {
            let waiter = s.spawn(|| tx.wait_for_room(&stop_rx));
            // The take releases the waiter, whenever it started waiting.
            assert_eq!(values(std::iter::once(rx.recv().unwrap())), [1]);
            assert!(waiter.join().unwrap(), "released by the take");
        });
        assert!(matches!(tx.try_send(vec![ev(2)]), Unsent::Nothing));
        drop(stop_tx);
        assert!(!tx.wait_for_room(&stop_rx), "released by stop while full");
    }

    #[test]
    fn batches_received_whole_are_counted_until_iterated() {
        let (tx, rx) = channel(10, 4);
        assert!(matches!(tx.try_send(vec![ev(1), ev(2)]), Unsent::Nothing));
        let batch = rx.batches().try_recv().unwrap();
        assert_eq!(batch.len(), 2);
        assert_eq!(rx.len(), 2, "not iterated yet");
        assert_eq!(values(batch.into_iter()), [1, 2]);
        assert_eq!(rx.len(), 0);
    }

    #[test]
    fn emptied_batches_come_back_to_the_senders() {
        let (tx, rx) = channel(100, 4);
        let mut b = tx.empty_batch();
        b.extend((1..=4).map(ev));
        let ptr = b.as_ptr();
        assert!(matches!(tx.try_send(b), Unsent::Nothing));
        assert_eq!(values(rx.try_iter().take(4)), [1, 2, 3, 4]);
        // The next batch taken displaces the spent one, whose allocation goes back.
        let mut b = tx.empty_batch();
        b.push(ev(5));
        assert!(matches!(tx.try_send(b), Unsent::Nothing));
        assert_eq!(values(rx.try_iter()), [5]);
        let spares: Vec<_> = (0..3).map(|_| tx.empty_batch()).collect();
        assert!(
            spares.iter().any(|v| v.as_ptr() == ptr),
            "the first batch's allocation is reused"
        );
    }

    /// Three senders push numbered events in batches of 1 to 5 through a channel of 3; the
    /// consumer sees every event once, each sender's in order, and nobody waits forever.
    #[test]
    fn concurrent_senders_through_a_tiny_channel_lose_and_reorder_nothing() {
        const PER_SENDER: u64 = 3_000;
        let (tx, rx) = channel(3, 4);
        let (_stop_tx, stop_rx) = bounded::<()>(1);
        std::thread::scope(|s| {
            for sender in 0..3u64 {
                let (tx, stop_rx) = (tx.clone(), stop_rx.clone());
                s.spawn(move || {
                    let mut next = 0;
                    while next < PER_SENDER {
                        let size = (next % 5 + 1).min(PER_SENDER - next);
                        let mut batch = tx.empty_batch();
                        batch.extend((next..next + size).map(|i| ev(sender * PER_SENDER + i)));
                        next += size;
                        while let Unsent::Full(rest) = tx.try_send(batch) {
                            assert!(tx.wait_for_room(&stop_rx));
                            batch = rest;
                        }
                    }
                });
            }
            let mut seen = [0u64; 3];
            for _ in 0..3 * PER_SENDER {
                let event = rx
                    .recv_timeout(Duration::from_secs(20))
                    .expect("a sender is stuck");
                let Event::Data { value, .. } = event else {
                    panic!("unexpected event")
                };
                let (sender, i) = ((value / PER_SENDER) as usize, value % PER_SENDER);
                assert_eq!(i, seen[sender], "sender {sender} out of order");
                seen[sender] += 1;
                assert!(rx.inner.shared.queued.load(SeqCst) <= 3, "over the bound");
            }
            assert_eq!(seen, [PER_SENDER; 3]);
        });
    }

    #[test]
    fn a_gone_consumer_takes_everything_and_releases_waiters() {
        let (tx, rx) = channel(1, 4);
        assert!(matches!(tx.try_send(vec![ev(1)]), Unsent::Nothing));
        assert!(matches!(tx.try_send(vec![ev(2)]), Unsent::Full(_)));
        let (_stop_tx, stop_rx) = bounded::<()>(1);
        std::thread::scope(|s| {
            let waiter = s.spawn(|| tx.wait_for_room(&stop_rx));
            drop(rx);
            assert!(waiter.join().unwrap(), "released when the consumer goes");
        });
        assert!(matches!(tx.try_send(vec![ev(3)]), Unsent::Nothing));
        assert!(
            tx.wait_for_room(&stop_rx),
            "never waits for a gone consumer"
        );
    }
}
