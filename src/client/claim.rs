//! [`Claim`]: who decides whether a request frame may reach the socket.
//!
//! A request's frame travels on the user data lane, in the caller's order among its other
//! frames, while its registration travels to the coordinator. The two meet in a claim shared by
//! the request table and the frame:
//!
//! ```text
//!  Submitted ──coordinator accepts──▶ Accepted ──writer takes──▶ Taken
//!      │                                  │                         │ (write reached nothing)
//!      └──coordinator rejects / caller────┴──deadline, disconnect──▶ Withdrawn ◀──┘
//!         gives up
//! ```
//!
//! The writer writes a frame only after moving its claim from `Accepted` to `Taken`; it waits
//! at a frame whose claim is still `Submitted` (so a frame never goes out before its request is
//! registered, and a response can never arrive before that) and skips a `Withdrawn` one. The
//! table answers `NotDelivered` only after moving the claim to `Withdrawn` itself: one atomic
//! step decides, so a frame the table reported as never delivered can no longer be written.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Instant;

use crate::client::requests::WaiterId;
use crate::frame::Frame;

const SUBMITTED: u8 = 0;
const ACCEPTED: u8 = 1;
const TAKEN: u8 = 2;
const WITHDRAWN: u8 = 3;

/// The shared state of one request frame. See the module docs. Two claims are equal only if
/// they are the same claim.
#[derive(Debug, Default)]
pub(crate) struct Claim(AtomicU8);

impl PartialEq for Claim {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Eq for Claim {}

/// What the writer may do with a request frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Take {
    /// Write it: it is now taken.
    Write,
    /// Drop it: it will never be written.
    Skip,
    /// Not registered yet: wait (frames behind it wait too).
    Wait,
}

impl Claim {
    /// The coordinator registered the request: the writer may take it. False if it had already
    /// been withdrawn (the caller gave up first).
    pub(crate) fn accept(&self) -> bool {
        self.0
            .compare_exchange(SUBMITTED, ACCEPTED, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    /// Makes sure the frame is never written. True if it had not been taken (its bytes never
    /// reached the socket); false if the writer took it first.
    pub(crate) fn withdraw(&self) -> bool {
        let mut current = self.0.load(Ordering::SeqCst);
        loop {
            match current {
                TAKEN => return false,
                WITHDRAWN => return true,
                _ => {}
            }
            match self
                .0
                .compare_exchange(current, WITHDRAWN, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return true,
                Err(now) => current = now,
            }
        }
    }

    /// The writer's step: take an accepted frame.
    pub(crate) fn take(&self) -> Take {
        match self
            .0
            .compare_exchange(ACCEPTED, TAKEN, Ordering::SeqCst, Ordering::SeqCst)
        {
            Ok(_) => Take::Write,
            Err(SUBMITTED) => Take::Wait,
            Err(_) => Take::Skip,
        }
    }

    /// The direct path took the frame but the kernel took none of it: the writer thread takes it
    /// again.
    pub(crate) fn release(&self) {
        let _ = self
            .0
            .compare_exchange(TAKEN, ACCEPTED, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// True while the coordinator has accepted the frame and nobody has taken it: it is still
    /// on the data lane (or held).
    pub(crate) fn is_waiting_to_be_taken(&self) -> bool {
        self.0.load(Ordering::SeqCst) == ACCEPTED
    }

    /// The writer's write failed before any byte reached the socket: the frame was not
    /// delivered after all.
    pub(crate) fn untake(&self) {
        let _ = self
            .0
            .compare_exchange(TAKEN, WITHDRAWN, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// True once a writer has taken the frame: its bytes may have reached the socket.
    pub(crate) fn is_taken(&self) -> bool {
        self.0.load(Ordering::SeqCst) == TAKEN
    }

    /// True once the frame can never be written.
    pub(crate) fn is_withdrawn(&self) -> bool {
        self.0.load(Ordering::SeqCst) == WITHDRAWN
    }

    /// True once the coordinator (or the caller) has decided: the writer need not wait.
    pub(crate) fn is_decided(&self) -> bool {
        self.0.load(Ordering::SeqCst) != SUBMITTED
    }
}

/// A request frame on the data lane, with its claim.
#[derive(Debug)]
pub(crate) struct RequestFrame {
    /// The submit it belongs to.
    pub origin: WaiterId,
    pub frame: Frame,
    /// The caller's deadline: never written after it.
    pub deadline: Instant,
    /// Report it written (`LinkEvent::Written`): only mode `Sent` needs that.
    pub report_written: bool,
    pub claim: Arc<Claim>,
}

impl RequestFrame {
    /// The writer's decision for this frame at `now` (a frame past its deadline is withdrawn).
    pub(crate) fn take(&self, now: Instant) -> Take {
        if now >= self.deadline && self.claim.withdraw() {
            return Take::Skip;
        }
        self.claim.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_step_decides_between_table_and_writer() {
        let c = Claim::default();
        assert_eq!(c.take(), Take::Wait, "not registered yet");
        assert!(c.accept());
        assert_eq!(c.take(), Take::Write);
        assert!(!c.withdraw(), "taken first: may have been written");
        c.untake();
        assert!(c.withdraw(), "the write reached nothing");

        let c = Claim::default();
        assert!(c.accept());
        assert!(c.withdraw());
        assert_eq!(c.take(), Take::Skip, "withdrawn first: never written");

        let c = Claim::default();
        assert!(c.withdraw(), "the caller gave up before registration");
        assert!(!c.accept());
        assert_eq!(c.take(), Take::Skip);
    }
}
