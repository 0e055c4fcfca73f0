//! [`Ticket`]: a request in flight, returned by [`Client::submit`](crate::Client::submit).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::affinity::WaitStrategy;
use crate::requests::{Outcome, Unknown};
use crate::sync::{AtomicBool, Condvar, Mutex, Ordering, now, spin_wait};

/// How long past its deadline a ticket waits for the coordinator before answering by itself.
/// The coordinator acts at the deadline; this only guards against a coordinator that is stuck
/// (for example waiting for room in a full event channel the application stopped reading).
pub const DEADLINE_GRACE: Duration = Duration::from_millis(250);

/// Where one outcome is handed over. A condition variable, not a channel: a channel's blocking
/// receive yields the CPU a few times before it parks, which on a busy core hands it to every
/// other runnable thread first; a waiting caller here parks at once.
#[derive(Debug, Default)]
struct Slot {
    outcome: Mutex<Option<Outcome>>,
    /// Set once `outcome` is filled: lets a spinning caller poll without the lock.
    filled: AtomicBool,
    ready: Condvar,
}

/// The sending side of a ticket: delivers its one outcome. Dropped without delivering (the
/// coordinator is gone), it answers `Unconfirmed(Disconnected)`.
#[derive(Debug)]
pub(crate) struct Answer(Option<Arc<Slot>>);

impl Answer {
    /// Delivers the outcome and wakes the waiting caller, if any.
    pub(crate) fn send(mut self, outcome: Outcome) {
        if let Some(slot) = self.0.take() {
            fill(&slot, outcome);
        }
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        if let Some(slot) = self.0.take() {
            fill(&slot, Outcome::Unconfirmed(Unknown::Disconnected));
        }
    }
}

fn fill(slot: &Slot, outcome: Outcome) {
    let mut guard = slot.outcome.lock();
    *guard = Some(outcome);
    slot.filled.store(true, Ordering::Release);
    slot.ready.notify_one();
}

/// A request in flight. Exactly one [`Outcome`] arrives, at the latest at the request's deadline
/// (plus [`DEADLINE_GRACE`] in the worst case).
///
/// `Ticket` is `Send`: submit on one thread, wait on another.
#[derive(Debug)]
pub struct Ticket {
    id: u64,
    slot: Arc<Slot>,
    deadline: Instant,
    outcome: Option<Outcome>,
    wait: WaitStrategy,
}

impl Ticket {
    /// A ticket and the answer that resolves it.
    pub(crate) fn new(id: u64, deadline: Instant, wait: WaitStrategy) -> (Self, Answer) {
        let slot = Arc::new(Slot::default());
        let answer = Answer(Some(slot.clone()));
        let ticket = Ticket {
            id,
            slot,
            deadline,
            outcome: None,
            wait,
        };
        (ticket, answer)
    }

    /// A ticket that is already answered.
    pub(crate) fn resolved(id: u64, outcome: Outcome) -> Self {
        Ticket {
            id,
            slot: Arc::default(),
            deadline: now(),
            outcome: Some(outcome),
            wait: WaitStrategy::Block,
        }
    }

    /// The request id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Blocks until the outcome is known (busy-polling first if the client's
    /// [`WaitStrategy`] says so).
    pub fn wait(mut self) -> Outcome {
        let until = self.deadline + DEADLINE_GRACE;
        if self.outcome.is_none() {
            // Busy-poll first if the strategy says so; the wait below then returns at once.
            let slot = &self.slot;
            let _ = self.wait.spin(|| {
                let ready = slot.filled.load(Ordering::Acquire) || now() >= until;
                if !ready {
                    spin_wait();
                }
                ready.then_some(())
            });
        }
        self.wait_until(until);
        self.outcome
            .take()
            .unwrap_or(Outcome::Unconfirmed(Unknown::Deadline))
    }

    /// Waits at most `timeout`; `None` if the outcome is not known yet (the ticket stays valid).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<Outcome> {
        let until = (now() + timeout).min(self.deadline + DEADLINE_GRACE);
        self.wait_until(until);
        self.outcome.clone()
    }

    /// The outcome if it is known now, without waiting.
    pub fn try_outcome(&mut self) -> Option<Outcome> {
        self.wait_until(now());
        self.outcome.clone()
    }

    /// Waits for the outcome until `until`; past the deadline and its grace, nobody answered in
    /// time and the bytes may have gone out: `Unconfirmed(Deadline)`.
    fn wait_until(&mut self, until: Instant) {
        if self.outcome.is_some() {
            return;
        }
        let mut guard = self.slot.outcome.lock();
        while guard.is_none() && now() < until {
            if self.slot.ready.wait_until(&mut guard, until).timed_out() {
                break;
            }
        }
        self.outcome = guard.take();
        drop(guard);
        if self.outcome.is_none() && now() >= self.deadline + DEADLINE_GRACE {
            self.outcome = Some(Outcome::Unconfirmed(Unknown::Deadline));
        }
    }
}
