//! How the writer and coordinator threads wait for work: a doorbell, not a channel's `select!`.
//!
//! The writer takes frames from three lanes (control, session, user data); the coordinator
//! thread takes inputs from its inbox. Waiting on them with `select!` would cost the round trip dearly on a busy core: a blocking crossbeam
//! operation yields the CPU several times before it parks, and each yield hands the core to
//! whichever thread is runnable (the peer, the reader) and back. The writer instead polls its
//! lanes and, when they are all empty, parks its thread; every [`Lane`] send rings the
//! [`Doorbell`], which unparks the writer only if it is (about to be) parked.
//!
//! No wake-up is lost: the writer announces it is going to sleep, then looks at its lanes once
//! more; a producer sends, then looks whether the writer sleeps. With a sequentially consistent
//! fence on both sides, at least one of them sees the other's write (Dekker's pattern).

use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TrySendError};

use crate::sync::{
    AtomicBool, AtomicUsize, Condvar, Mutex, Ordering, Thread, fence, now, park_until, thread,
};

/// Longest a sender waits for room without looking again: a backstop for a lane whose
/// consumer went away without a last [`Room::freed`] (between connections, at shutdown), where
/// the next look finds the lane disconnected.
const ROOM_BACKSTOP: Duration = Duration::from_millis(50);

/// Wakes the threads registered with it: the writer of the current connection, and during a
/// make-before-break rotation the writer of its replacement too (a second bell wakes the
/// coordinator thread). Each registered thread has its own seat, with its own "sleeping" flag,
/// so two writers waiting at once cannot hide each other's sleep.
#[derive(Debug, Default)]
pub(crate) struct Doorbell {
    seats: [Seat; SEATS],
    /// Where senders wait while a lane or the outbox is full.
    pub(crate) room: Room,
}

/// How many threads may be registered at once: a connection's writer and its replacement's.
const SEATS: usize = 2;

/// One registered thread.
#[derive(Debug, Default)]
struct Seat {
    /// The thread; `None` while the seat is free.
    thread: Mutex<Option<Thread>>,
    /// True while that thread is parked or about to park.
    sleeping: AtomicBool,
}

/// Which seat of a [`Doorbell`] a thread holds (from [`Doorbell::register`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SeatId(usize);

/// Where senders wait for room in a full lane or outbox.
///
/// The writer wakes them once per batch it has taken, not once per frame (which is what a
/// channel's blocking send does): on a core shared by the sender and the writer, a wake-up per
/// frame taken hands the core back and forth once per frame, while a wake-up per batch lets the
/// sender refill the lane in one go.
#[derive(Debug, Default)]
pub(crate) struct Room {
    lock: Mutex<()>,
    freed: Condvar,
    /// Senders waiting (or about to wait) for room.
    waiting: AtomicUsize,
}

impl Room {
    /// Wakes every waiting sender. The writer calls it around each batch and when it stops; a
    /// direct write, when it takes a lane slot.
    pub(crate) fn freed(&self) {
        fence(Ordering::SeqCst);
        if self.waiting.load(Ordering::Relaxed) > 0 {
            let _guard = self.lock.lock();
            self.freed.notify_all();
        }
    }

    /// Waits until `has_room` says so, [`freed`](Self::freed) is called, or `deadline` passes
    /// (the caller tries again, and looks at the deadline itself).
    pub(crate) fn wait(&self, has_room: impl Fn() -> bool, deadline: Option<Instant>) {
        let mut guard = self.lock.lock();
        self.waiting.fetch_add(1, Ordering::Relaxed);
        // Announce the wait, then look (Dekker's pattern with `freed`): either the writer
        // sees a waiter, or this look sees the room it made.
        fence(Ordering::SeqCst);
        if !has_room() {
            let backstop = crate::deadline::after(now(), ROOM_BACKSTOP);
            let until = deadline.map_or(backstop, |d| d.min(backstop));
            let _ = self.freed.wait_until(&mut guard, until);
        }
        self.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Doorbell {
    /// Wakes every registered thread that sleeps. Call after putting work where it looks.
    pub(crate) fn ring(&self) {
        fence(Ordering::SeqCst);
        for seat in &self.seats {
            if seat.sleeping.load(Ordering::Relaxed)
                && let Some(thread) = &*seat.thread.lock()
            {
                thread.unpark();
            }
        }
    }

    /// The calling thread is now a thread to wake; it waits with the seat returned. With every
    /// seat taken (not reached: at most two writers overlap), the first seat is taken over.
    pub(crate) fn register(&self) -> SeatId {
        let me = thread::current();
        for (i, seat) in self.seats.iter().enumerate() {
            let mut slot = seat.thread.lock();
            if slot.as_ref().is_none_or(|t| t.id() == me.id()) {
                *slot = Some(me);
                return SeatId(i);
            }
        }
        log::error!("doorbell: every seat is taken; taking over the first");
        *self.seats[0].thread.lock() = Some(me);
        SeatId(0)
    }

    /// The calling thread gives its seat up (if it still holds it).
    pub(crate) fn unregister(&self, seat: SeatId) {
        let mut slot = self.seats[seat.0].thread.lock();
        if slot.as_ref().map(Thread::id) == Some(thread::current().id()) {
            *slot = None;
        }
    }

    /// Parks the calling thread (registered at `seat`) unless `has_work` says there is work.
    /// It may return without work (a stale wake-up): the caller polls again.
    #[cfg(test)]
    pub(crate) fn wait(&self, seat: SeatId, has_work: impl Fn() -> bool) {
        self.wait_until(seat, has_work, None);
    }

    /// Parks the calling thread (registered at `seat`) unless `has_work` says there is work,
    /// until it is rung or `deadline` passes (a spurious or late return is fine: the caller
    /// looks again).
    pub(crate) fn wait_until(
        &self,
        seat: SeatId,
        has_work: impl Fn() -> bool,
        deadline: Option<Instant>,
    ) {
        let sleeping = &self.seats[seat.0].sleeping;
        sleeping.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if !has_work() {
            match deadline {
                Some(d) => park_until(d),
                None => thread::park(),
            }
        }
        sleeping.store(false, Ordering::Relaxed);
    }
}

/// The sending side of one of the writer's lanes: a bounded channel that rings the doorbell.
#[derive(Debug)]
pub(crate) struct Lane<T> {
    tx: Sender<T>,
    bell: std::sync::Arc<Doorbell>,
}

impl<T> Clone for Lane<T> {
    fn clone(&self) -> Self {
        Lane {
            tx: self.tx.clone(),
            bell: self.bell.clone(),
        }
    }
}

impl<T> Lane<T> {
    pub(crate) fn new(tx: Sender<T>, bell: std::sync::Arc<Doorbell>) -> Self {
        Lane { tx, bell }
    }

    /// Sends if there is room.
    pub(crate) fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        self.tx.try_send(item)?;
        self.bell.ring();
        Ok(())
    }

    /// Frames queued and not yet taken.
    pub(crate) fn len(&self) -> usize {
        self.tx.len()
    }

    /// True if nothing is queued.
    pub(crate) fn is_empty(&self) -> bool {
        self.tx.is_empty()
    }

    /// True if the lane has no room.
    pub(crate) fn is_full(&self) -> bool {
        self.tx.is_full()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    /// A parked consumer and a producer hand items back and forth, each waiting for the other,
    /// so every item needs a wake-up: a lost one would stall the exchange (caught by the
    /// deadline, not by a hang).
    #[test]
    fn no_wake_up_is_lost() {
        const ITEMS: u64 = 20_000;
        let bell = Arc::new(Doorbell::default());
        let (tx, rx) = crossbeam_channel::bounded::<u64>(1);
        let (ack_tx, ack_rx) = crossbeam_channel::bounded::<u64>(1);
        let lane = Lane::new(tx, bell.clone());
        let (registered_tx, registered) = crossbeam_channel::bounded(1);
        let consumer = thread::Builder::new()
            .name("doorbell-consumer".into())
            .spawn(move || {
                let seat = bell.register();
                registered_tx.send(()).unwrap();
                let mut next = 0;
                while next < ITEMS {
                    match rx.try_recv() {
                        Ok(item) => {
                            assert_eq!(item, next);
                            next += 1;
                            ack_tx.send(item).unwrap();
                        }
                        Err(_) => bell.wait(seat, || !rx.is_empty()),
                    }
                }
                bell.unregister(seat);
            })
            .unwrap();
        registered.recv().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        for item in 0..ITEMS {
            lane.try_send(item).unwrap();
            let timeout = deadline.saturating_duration_since(Instant::now());
            assert_eq!(
                ack_rx.recv_timeout(timeout),
                Ok(item),
                "wake-up {item} lost"
            );
        }
        consumer.join().unwrap();
    }

    /// A sender waiting for room goes on once the consumer has taken a batch and said so; a
    /// timed wait ends at its deadline.
    #[test]
    fn room_is_announced_per_batch_and_waits_end_at_their_deadline() {
        let bell = Arc::new(Doorbell::default());
        let (tx, rx) = crossbeam_channel::bounded::<u64>(2);
        let lane = Lane::new(tx, bell.clone());
        lane.try_send(0).unwrap();
        lane.try_send(1).unwrap();
        let started = Instant::now();
        let deadline = started + Duration::from_millis(20);
        while Instant::now() < deadline {
            bell.room.wait(|| !lane.is_full(), Some(deadline));
        }
        assert!(lane.is_full(), "nothing was taken");
        let sender = {
            let (lane, bell) = (lane.clone(), bell.clone());
            thread::Builder::new()
                .name("room-sender".into())
                .spawn(move || {
                    while lane.is_full() {
                        bell.room.wait(|| !lane.is_full(), None);
                    }
                    lane.try_send(2).is_ok()
                })
                .unwrap()
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while bell.room.waiting.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
            std::thread::yield_now();
        }
        // The batch: both items taken, then the waiting sender told.
        assert_eq!((rx.try_recv(), rx.try_recv()), (Ok(0), Ok(1)));
        bell.room.freed();
        assert!(sender.join().unwrap());
        assert_eq!(rx.recv_timeout(Duration::from_secs(30)), Ok(2));
    }
}

/// Loom models of the doorbell (`RUSTFLAGS="--cfg loom" cargo test --lib loom`): every
/// interleaving of the real `ring`, `wait`, `register` and `unregister`, with loom's atomics,
/// fences, mutex and park/unpark, up to the preemption bound. A lost wake-up leaves the writer
/// parked for ever while every producer has finished: loom reports that as a deadlock.
#[cfg(all(loom, test))]
mod loom_models {
    use super::*;
    use crate::sync::model;
    use crate::sync::thread;
    use loom::sync::Arc;
    use loom::sync::atomic::AtomicUsize;

    /// The writer's loop, as `Writer::wait_for_work` runs it: registers, takes what the lane
    /// holds, waits on the doorbell when it is empty, until it has taken `items`. The lane is
    /// a counter of items sent, read with `Relaxed` loads: the doorbell's fences alone must
    /// make a send visible to the writer's last look before it parks.
    fn writer(bell: &Doorbell, sent: &AtomicUsize, items: usize) {
        let seat = bell.register();
        let mut taken = 0;
        while taken < items {
            let available = sent.load(Ordering::Relaxed);
            if available > taken {
                taken = available;
            } else {
                bell.wait(seat, || sent.load(Ordering::Relaxed) > taken);
            }
        }
        bell.unregister(seat);
    }

    /// One producer sends two items, ringing after each, while the writer registers, polls and
    /// parks. Explores the producer's "send, fence, look at `sleeping`" against the writer's
    /// "announce sleep, fence, look at the lane, park", both ways round and twice over (so a
    /// ring that finds the writer awake, one that finds it about to park, one that unparks it,
    /// one that leaves a stale unpark token behind, and one that runs before the writer has
    /// registered or after it has unregistered). Asserts that the writer takes both items and
    /// ends: a lost wake-up is a deadlock.
    #[test]
    fn loom_doorbell_ring_after_send_is_never_lost() {
        model(|| {
            let bell = Arc::new(Doorbell::default());
            let sent = Arc::new(AtomicUsize::new(0));
            let producer = {
                let (bell, sent) = (bell.clone(), sent.clone());
                thread::spawn(move || {
                    for item in 1..=2 {
                        sent.store(item, Ordering::Relaxed);
                        bell.ring();
                    }
                })
            };
            writer(&bell, &sent, 2);
            producer.join().unwrap();
        });
    }

    /// Two writers wait at once, each for its own lane (a connection's writer and its
    /// replacement's during a rotation, each on its own seat), while one producer sends to
    /// each in turn and rings. Explores a ring that finds one writer asleep and the other
    /// awake, both asleep, and the seats taken in either order. Asserts that both writers take
    /// their item and end: a wake-up lost to the other seat is a deadlock.
    #[test]
    fn loom_doorbell_two_writers_each_get_their_wake_up() {
        model(|| {
            let bell = Arc::new(Doorbell::default());
            let (a, b) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
            let other = {
                let (bell, b) = (bell.clone(), b.clone());
                thread::spawn(move || writer(&bell, &b, 1))
            };
            let producer = {
                let (bell, a, b) = (bell.clone(), a.clone(), b.clone());
                thread::spawn(move || {
                    a.store(1, Ordering::Relaxed);
                    bell.ring();
                    b.store(1, Ordering::Relaxed);
                    bell.ring();
                })
            };
            writer(&bell, &a, 1);
            producer.join().unwrap();
            other.join().unwrap();
        });
    }

    /// Two producers send one item each and ring, concurrently, while the writer waits for
    /// both (three threads). Explores rings racing each other and the writer's park: one
    /// producer's unpark consumed by a wait that finds only the other's item, both unparks
    /// landing before one park, a ring running between the writer's wake-up and its clearing of
    /// `sleeping`. Asserts that the writer takes both items and ends.
    #[test]
    fn loom_doorbell_concurrent_rings_wake_the_writer() {
        model(|| {
            let bell = Arc::new(Doorbell::default());
            let sent = Arc::new(AtomicUsize::new(0));
            let producers: Vec<_> = (0..2)
                .map(|_| {
                    let (bell, sent) = (bell.clone(), sent.clone());
                    thread::spawn(move || {
                        sent.fetch_add(1, Ordering::Relaxed);
                        bell.ring();
                    })
                })
                .collect();
            writer(&bell, &sent, 2);
            for p in producers {
                p.join().unwrap();
            }
        });
    }
}
