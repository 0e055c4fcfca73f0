//! The [`Ingress`] trait: user code run on the reader thread for every inbound message.

use crate::frame::Data;

/// What to do with one inbound message.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict<T> {
    /// Drop the message. It still counts as received data.
    Ignore,
    /// Deliver this value as [`Event::Data`](crate::Event::Data).
    Emit(T),
    /// Deliver the message as [`Event::Frame`](crate::Event::Frame) (one copy).
    Forward,
}

/// Ingress: the user code that runs on the reader thread for every inbound message.
///
/// The reader thread decodes each complete text or binary message and calls
/// [`Ingress::on_message`] with a [`Data`] that borrows the payload from the read buffer. The
/// ingress decides, without any copy or thread hop having happened yet:
///
/// - [`Verdict::Ignore`]: drop it (heartbeats, messages this process does not care about);
/// - [`Verdict::Emit`]: deliver a value decoded from it (a parsed quote, an order update);
/// - [`Verdict::Forward`]: deliver the message itself as an owned [`Frame`](crate::Frame).
///
/// Emitted values go straight to the application's event channel; they never pass through the
/// coordinator. The ingress object is owned by the reader side for the whole life of the client,
/// so it can keep state (sequence numbers, books) from message to message.
///
/// ```
/// use syncws::{Data, Ingress, Verdict};
///
/// /// Emits the length of every binary message and forwards text.
/// struct Sizes;
///
/// impl Ingress for Sizes {
///     type Output = usize;
///     fn on_message(&mut self, msg: Data<'_>) -> Verdict<usize> {
///         match msg {
///             Data::Binary(b) => Verdict::Emit(b.len()),
///             Data::Text(_) => Verdict::Forward,
///         }
///     }
/// }
///
/// assert!(matches!(Sizes.on_message(Data::Binary(&[1, 2, 3])), Verdict::Emit(3)));
/// ```
pub trait Ingress: Send + 'static {
    /// The type of values this ingress emits.
    type Output: Send + 'static;

    /// Called once per complete inbound text or binary message, in arrival order.
    ///
    /// Keep it short: the reader reads nothing else while this runs.
    fn on_message(&mut self, msg: Data<'_>) -> Verdict<Self::Output>;
}

/// The default ingress: forwards every message as an owned [`Frame`](crate::Frame).
#[derive(Clone, Copy, Debug, Default)]
pub struct ForwardAll;

impl Ingress for ForwardAll {
    type Output = std::convert::Infallible;

    fn on_message(&mut self, _msg: Data<'_>) -> Verdict<Self::Output> {
        Verdict::Forward
    }
}

impl<T, F> Ingress for F
where
    F: FnMut(Data<'_>) -> Verdict<T> + Send + 'static,
    T: Send + 'static,
{
    type Output = T;

    fn on_message(&mut self, msg: Data<'_>) -> Verdict<T> {
        self(msg)
    }
}
