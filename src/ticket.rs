//! [`Ticket`]: a request in flight, returned by [`Client::submit`](crate::Client::submit).

use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};

use crate::affinity::WaitStrategy;
use crate::requests::{Outcome, Unknown};

/// How long past its deadline a ticket waits for the coordinator before answering by itself.
/// The coordinator acts at the deadline; this only guards against a coordinator that is stuck
/// (for example waiting for room in a full event channel the application stopped reading).
pub const DEADLINE_GRACE: Duration = Duration::from_millis(250);

/// A request in flight. Exactly one [`Outcome`] arrives, at the latest at the request's deadline
/// (plus [`DEADLINE_GRACE`] in the worst case).
///
/// `Ticket` is `Send`: submit on one thread, wait on another.
#[derive(Debug)]
pub struct Ticket {
    id: u64,
    rx: Receiver<Outcome>,
    deadline: Instant,
    outcome: Option<Outcome>,
    wait: WaitStrategy,
}

impl Ticket {
    pub(crate) fn new(
        id: u64,
        rx: Receiver<Outcome>,
        deadline: Instant,
        wait: WaitStrategy,
    ) -> Self {
        Ticket {
            id,
            rx,
            deadline,
            outcome: None,
            wait,
        }
    }

    /// A ticket that is already answered.
    pub(crate) fn resolved(id: u64, outcome: Outcome) -> Self {
        let (_, rx) = crossbeam_channel::bounded(0);
        Ticket {
            id,
            rx,
            deadline: Instant::now(),
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
        if let Some(outcome) = self.outcome.take() {
            return outcome;
        }
        let deadline = self.deadline + DEADLINE_GRACE;
        if let Some(outcome) = self.wait.spin(|| match self.rx.try_recv() {
            Err(TryRecvError::Empty) if Instant::now() < deadline => None,
            Err(TryRecvError::Empty) => Some(Outcome::Unconfirmed(Unknown::Deadline)),
            Ok(outcome) => Some(outcome),
            Err(TryRecvError::Disconnected) => Some(Outcome::Unconfirmed(Unknown::Disconnected)),
        }) {
            return outcome;
        }
        match self.rx.recv_deadline(self.deadline + DEADLINE_GRACE) {
            Ok(outcome) => outcome,
            // Nobody answered in time (or at all): the bytes may have gone out.
            Err(RecvTimeoutError::Timeout) => Outcome::Unconfirmed(Unknown::Deadline),
            Err(RecvTimeoutError::Disconnected) => Outcome::Unconfirmed(Unknown::Disconnected),
        }
    }

    /// Waits at most `timeout`; `None` if the outcome is not known yet (the ticket stays valid).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<Outcome> {
        if self.outcome.is_none() {
            let until = (Instant::now() + timeout).min(self.deadline + DEADLINE_GRACE);
            self.outcome = match self.rx.recv_deadline(until) {
                Ok(outcome) => Some(outcome),
                Err(RecvTimeoutError::Timeout)
                    if Instant::now() >= self.deadline + DEADLINE_GRACE =>
                {
                    Some(Outcome::Unconfirmed(Unknown::Deadline))
                }
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    Some(Outcome::Unconfirmed(Unknown::Disconnected))
                }
            };
        }
        self.outcome.clone()
    }

    /// The outcome if it is known now, without waiting.
    pub fn try_outcome(&mut self) -> Option<Outcome> {
        if self.outcome.is_none() {
            self.outcome = match self.rx.try_recv() {
                Ok(outcome) => Some(outcome),
                Err(TryRecvError::Empty) if Instant::now() >= self.deadline + DEADLINE_GRACE => {
                    Some(Outcome::Unconfirmed(Unknown::Deadline))
                }
                Err(TryRecvError::Empty) => None,
                Err(TryRecvError::Disconnected) => {
                    Some(Outcome::Unconfirmed(Unknown::Disconnected))
                }
            };
        }
        self.outcome.clone()
    }
}
