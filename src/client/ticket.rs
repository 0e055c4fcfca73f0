//! [`Ticket`]: a request in flight, returned by [`Client::submit`](crate::Client::submit).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::client::affinity::WaitStrategy;
use crate::client::claim::Claim;
use crate::client::requests::{Outcome, Undelivered, Unknown};
use crate::deadline;
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
    /// The request frame's claim, for a truthful answer if the ticket has to give up alone.
    claim: Option<Arc<Claim>>,
}

impl Ticket {
    /// When the ticket stops waiting for the coordinator and answers by itself.
    fn give_up_at(&self) -> Instant {
        deadline::after(self.deadline, DEADLINE_GRACE)
    }

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
            claim: None,
        };
        (ticket, answer)
    }

    /// Ties the ticket to its request frame's claim.
    pub(crate) fn with_claim(mut self, claim: Arc<Claim>) -> Self {
        self.claim = Some(claim);
        self
    }

    /// A ticket that is already answered.
    pub(crate) fn resolved(id: u64, outcome: Outcome) -> Self {
        Ticket {
            id,
            slot: Arc::default(),
            deadline: now(),
            outcome: Some(outcome),
            claim: None,
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
        let until = self.give_up_at();
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
        let until = deadline::after(now(), timeout).min(self.give_up_at());
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
        if self.outcome.is_none() && now() >= self.give_up_at() {
            // Nobody answered (the coordinator is stuck): the request's claim says whether its
            // bytes may have gone out, and withdrawing it makes sure they never will.
            let never_sent = self.claim.as_ref().is_some_and(|c| c.withdraw());
            self.outcome = Some(if never_sent {
                Outcome::NotDelivered(Undelivered::Deadline)
            } else {
                Outcome::Unconfirmed(Unknown::Deadline)
            });
        }
    }
}

/// Loom models of the outcome hand-over (`RUSTFLAGS="--cfg loom" cargo test --lib loom`):
/// every interleaving of the real `Answer::send` / `Drop` and `Ticket::wait` /
/// `wait_timeout` / `try_outcome`, with loom's mutex, condition variable and atomics, up to the
/// preemption bound. A lost notification leaves the waiter blocked for ever once the other
/// threads have finished: loom reports that as a deadlock.
///
/// Time is the model clock of [`crate::sync`]: it moves only when a model's timer thread
/// advances it, which it does under the slot's mutex and then wakes every waiter (what the
/// kernel does when a timed wait's deadline passes).
#[cfg(all(loom, test))]
mod loom_models {
    use super::*;
    use crate::sync::model;
    use crate::sync::{clock, thread};

    /// The three ways a caller waits: parked at once, polling `filled` without the lock until
    /// the outcome or the deadline, and polling once then parking (`SpinThenBlock` with a zero
    /// budget, which is deterministic: the budget has always run out after the first poll).
    const STRATEGIES: [WaitStrategy; 3] = [
        WaitStrategy::Block,
        WaitStrategy::Spin,
        WaitStrategy::SpinThenBlock {
            budget: Duration::ZERO,
        },
    ];

    /// Lets time pass beyond `by` as a timed wait sees it: moves the clock under the slot's
    /// mutex, then wakes the waiters.
    fn timer(slot: Arc<Slot>, by: Duration) -> loom::thread::JoinHandle<()> {
        thread::spawn(move || {
            let guard = slot.outcome.lock();
            clock::advance(by);
            slot.ready.notify_all();
            drop(guard);
        })
    }

    fn confirmed() -> Outcome {
        Outcome::Confirmed {
            retry_after: None,
            hint: Some("filled".into()),
        }
    }

    /// No lost wake-up. For each wait strategy: a resolver thread sends the outcome while the
    /// caller waits; the deadline is an hour away and the clock never moves, so only the
    /// notification (or, spinning, the `filled` flag) can end the wait. Explores the send
    /// before the caller looks, between its look and its park, and while it is parked (or
    /// polling). Asserts that the caller returns the outcome sent.
    #[test]
    fn loom_ticket_outcome_sent_wakes_the_waiter() {
        for wait in STRATEGIES {
            model(move || {
                let (ticket, answer) = Ticket::new(1, now() + Duration::from_secs(3600), wait);
                let resolver = thread::spawn(move || answer.send(confirmed()));
                assert_eq!(ticket.wait(), confirmed(), "{wait:?}");
                resolver.join().unwrap();
            });
        }
    }

    /// An answer dropped without an outcome (the coordinator is gone) resolves the ticket: the
    /// same race as above with `Drop` delivering. Asserts `Unconfirmed(Disconnected)`.
    #[test]
    fn loom_ticket_dropped_answer_wakes_the_waiter() {
        model(|| {
            let (ticket, answer) =
                Ticket::new(1, now() + Duration::from_secs(3600), WaitStrategy::Block);
            let resolver = thread::spawn(move || drop(answer));
            assert_eq!(ticket.wait(), Outcome::Unconfirmed(Unknown::Disconnected));
            resolver.join().unwrap();
        });
    }

    /// The caller gives up at its deadline while the outcome is being delivered. For each wait
    /// strategy, three threads: the caller in `wait`, a resolver sending the outcome, and a
    /// timer moving the clock past the deadline and its grace. Explores the outcome arriving
    /// before the deadline, after it but before the caller takes the lock, and after the
    /// caller has given up. Asserts that the caller always returns, with exactly one outcome:
    /// the one sent, or `Unconfirmed(Deadline)`, and the latter only once the deadline and its
    /// grace have passed.
    #[test]
    fn loom_ticket_deadline_racing_delivery_gives_one_outcome() {
        for wait in STRATEGIES {
            model(move || {
                let deadline = now() + Duration::from_secs(1);
                let (ticket, answer) = Ticket::new(1, deadline, wait);
                let timer = timer(ticket.slot.clone(), Duration::from_secs(2) + DEADLINE_GRACE);
                let resolver = thread::spawn(move || answer.send(confirmed()));
                match ticket.wait() {
                    Outcome::Unconfirmed(Unknown::Deadline) => {
                        assert!(
                            now() >= deadline + DEADLINE_GRACE,
                            "{wait:?}: early deadline"
                        )
                    }
                    outcome => assert_eq!(outcome, confirmed(), "{wait:?}"),
                }
                resolver.join().unwrap();
                timer.join().unwrap();
            });
        }
    }

    /// A bounded wait (`wait_timeout`) runs out while the outcome is being delivered, before
    /// the request's deadline: the ticket stays valid and the outcome is not lost. Three
    /// threads: the caller waiting a second, a resolver sending, a timer moving the clock two
    /// seconds (the deadline is an hour away). Asserts that the bounded wait returns the
    /// outcome or nothing, and that once the resolver is done `try_outcome` returns the
    /// outcome sent, the same on every later call.
    #[test]
    fn loom_ticket_bounded_wait_giving_up_keeps_the_outcome() {
        model(|| {
            let (mut ticket, answer) =
                Ticket::new(1, now() + Duration::from_secs(3600), WaitStrategy::Block);
            let timer = timer(ticket.slot.clone(), Duration::from_secs(2));
            let resolver = thread::spawn(move || answer.send(confirmed()));
            let first = ticket.wait_timeout(Duration::from_secs(1));
            assert!(first.is_none() || first == Some(confirmed()), "{first:?}");
            resolver.join().unwrap();
            assert_eq!(ticket.try_outcome(), Some(confirmed()));
            assert_eq!(ticket.try_outcome(), Some(confirmed()));
            timer.join().unwrap();
        });
    }

    /// A bounded wait that outlasts the deadline and its grace, racing the delivery: whichever
    /// outcome the ticket settles on first is final. Asserts that the first answer is the one
    /// sent or `Unconfirmed(Deadline)` (never nothing: the deadline has passed), and that
    /// `try_outcome` after the resolver has delivered still returns that same answer (a late
    /// delivery does not replace `Deadline`, nor appear as a second outcome).
    #[test]
    fn loom_ticket_outcome_settles_once_at_the_deadline() {
        model(|| {
            let (mut ticket, answer) =
                Ticket::new(1, now() + Duration::from_secs(1), WaitStrategy::Block);
            let timer = timer(ticket.slot.clone(), Duration::from_secs(2) + DEADLINE_GRACE);
            let resolver = thread::spawn(move || answer.send(confirmed()));
            let first = ticket.wait_timeout(Duration::from_secs(3600));
            assert!(
                first == Some(confirmed())
                    || first == Some(Outcome::Unconfirmed(Unknown::Deadline)),
                "{first:?}"
            );
            resolver.join().unwrap();
            assert_eq!(ticket.try_outcome(), first);
            timer.join().unwrap();
        });
    }
}
