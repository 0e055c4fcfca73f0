//! Make-before-break rotation: how the ingress moves from the connection being replaced to its
//! replacement with no message lost and none delivered out of order.
//!
//! The [`Ingress`] keeps state from message to message, so only one reader may run it. While a
//! replacement restores its session next to the current connection, its reader runs the
//! endpoint's precheck (the session's acknowledgements reach the coordinator as usual) but *holds*
//! every data message here, in arrival order, up to a bound. At the switch, once the old
//! connection's reader has been joined and has handed the ingress back, the coordinator thread
//! [releases](Handover::release) it: the held messages go through the ingress and to the
//! application, and the ingress is left here for the replacement's reader, which takes it with
//! its next message (or hands it back when it ends). Both steps run under one lock, so a message
//! the reader reads during the release waits for the held ones.
//!
//! ```text
//!   replacement's reader ──hold(frame)──▶ [held frames] ──release(ingress)──▶ events
//!                         ◀──ingress────── (left for the reader's next message)
//! ```

use std::collections::VecDeque;

use parking_lot::Mutex;

use crate::client::event::Event;
use crate::client::ingress::{Ingress, Verdict};
use crate::frame::Frame;
use crate::guard::{self, Panicked};

/// The held messages of a replacement connection and, after the switch, the ingress.
pub(crate) struct Handover<I> {
    state: Mutex<State<I>>,
    /// At most this many messages are held; one more fails the rotation.
    capacity: usize,
}

struct State<I> {
    held: VecDeque<Frame>,
    ingress: Option<I>,
}

/// What became of a message the reader offered.
pub(crate) enum Offer<I> {
    /// Held until the switch.
    Kept,
    /// Not held: the hold is full (the rotation fails; the message is dropped with the
    /// connection, which never carried the application's data).
    Full,
    /// Not held: the switch has happened. The reader runs the ingress on the message itself,
    /// and on every message after it.
    Ingress(I, Frame),
}

impl<I> Handover<I> {
    /// Holds at most `capacity` messages (at least one).
    pub(crate) fn new(capacity: usize) -> Self {
        Handover {
            state: Mutex::new(State {
                held: VecDeque::new(),
                ingress: None,
            }),
            capacity: capacity.max(1),
        }
    }

    /// Reader: holds `frame`, or gives it back with the ingress once released.
    pub(crate) fn hold(&self, frame: Frame) -> Offer<I> {
        let mut state = self.state.lock();
        if let Some(ingress) = state.ingress.take() {
            return Offer::Ingress(ingress, frame);
        }
        if state.held.len() >= self.capacity {
            return Offer::Full;
        }
        state.held.push_back(frame);
        Offer::Kept
    }

    /// Coordinator thread, at the switch: passes every held message, in order, to `each` with
    /// the ingress, then leaves the ingress for the reader. `each` returns false to stop (a
    /// callback panicked, or the client is being torn down): the rest is dropped and the
    /// ingress comes back instead (the reader goes on holding until its connection ends, so
    /// nothing after the gap reaches the application).
    pub(crate) fn release(
        &self,
        mut ingress: I,
        mut each: impl FnMut(&mut I, Frame) -> bool,
    ) -> Option<I> {
        let mut state = self.state.lock();
        while let Some(frame) = state.held.pop_front() {
            if !each(&mut ingress, frame) {
                state.held.clear();
                return Some(ingress);
            }
        }
        state.ingress = Some(ingress);
        None
    }

    /// Reader, as it ends: the ingress, if it was released and never taken.
    pub(crate) fn take_ingress(&self) -> Option<I> {
        self.state.lock().ingress.take()
    }

    /// Messages held now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.state.lock().held.len()
    }
}

/// Runs the ingress on a held message (by whichever thread holds the ingress then): the event
/// it makes for connection `epoch` (`None`: ignored), or its panic.
pub(crate) fn decide<I: Ingress>(
    ingress: &mut I,
    epoch: u64,
    frame: Frame,
) -> Result<Option<Event<I::Output>>, Panicked> {
    let Some(data) = frame.as_data() else {
        return Ok(None); // Not reached: only data messages are held.
    };
    Ok(
        match guard::catch("Ingress::on_message", || ingress.on_message(data))? {
            Verdict::Ignore => None,
            Verdict::Emit(value) => Some(Event::Data { epoch, value }),
            Verdict::Forward => Some(Event::Frame { epoch, frame }),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_messages_go_first_then_the_reader_gets_the_ingress() {
        let h: Handover<Vec<String>> = Handover::new(2);
        assert!(matches!(h.hold(Frame::text("a")), Offer::Kept));
        assert!(matches!(h.hold(Frame::text("b")), Offer::Kept));
        assert!(matches!(h.hold(Frame::text("c")), Offer::Full));
        assert_eq!(h.len(), 2);
        let back = h.release(Vec::new(), |seen, f| {
            seen.push(String::from_utf8_lossy(f.payload().unwrap_or_default()).into_owned());
            true
        });
        assert!(back.is_none(), "left for the reader");
        let Offer::Ingress(seen, frame) = h.hold(Frame::text("d")) else {
            panic!("the released ingress goes to the reader");
        };
        assert_eq!(seen, ["a", "b"]);
        assert_eq!(frame.payload(), Some(&b"d"[..]));
        assert!(h.take_ingress().is_none(), "taken once");
    }

    #[test]
    fn a_stopped_release_drops_the_rest_and_gives_the_ingress_back() {
        let h: Handover<u32> = Handover::new(8);
        for m in ["a", "b", "c"] {
            assert!(matches!(h.hold(Frame::text(m)), Offer::Kept));
        }
        let back = h.release(0, |n, _| {
            *n += 1;
            *n < 2
        });
        assert_eq!((h.len(), back), (0, Some(2)));
        assert!(h.take_ingress().is_none(), "not left for the reader");
        assert!(
            matches!(h.hold(Frame::text("d")), Offer::Kept),
            "it goes on holding"
        );
    }
}
