//! Running user callbacks so that a panic in one cannot leave a zombie connection.
//!
//! Every callback the library calls — [`Endpoint`](crate::Endpoint) methods, the
//! [`Ingress`](crate::Ingress), the endpoint's precheck, the [`Reconnect`](crate::Reconnect)
//! strategy — runs inside [`catch`]. A panic becomes a typed
//! [`Cause::CallbackPanicked`](crate::Cause::CallbackPanicked): the connection is torn down as
//! for any other failure (pending requests resolve truthfully, the `Closed` event names the
//! callback), and reconnecting follows the policy. The thread that ran the callback lives on.

use std::panic::{AssertUnwindSafe, catch_unwind};

/// A callback that panicked: which one, and its panic message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Panicked {
    pub callback: &'static str,
    pub message: String,
}

/// Runs `f`, turning a panic into [`Panicked`] naming `callback`.
///
/// The state `f` touches may be left half-updated by the panic; callers treat the panic as the
/// end of the connection. The session is restarted on the next connection; the endpoint and
/// the ingress themselves are kept as the panic left them (they are the application's
/// objects: a callback that panics on every session restore makes every connection end the same
/// way, each after the reconnect backoff).
pub(crate) fn catch<R>(callback: &'static str, f: impl FnOnce() -> R) -> Result<R, Panicked> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        let message = if let Some(s) = payload.downcast_ref::<&str>() {
            (*s).to_string()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "(no message)".to_string()
        };
        log::error!("{callback} panicked: {message}");
        Panicked { callback, message }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_is_caught_with_its_message() {
        assert_eq!(catch("fine", || 7), Ok(7));
        let err = catch("endpoint", || -> u8 { panic!("boom {}", 1) }).unwrap_err();
        assert_eq!(err.callback, "endpoint");
        assert_eq!(err.message, "boom 1");
    }
}
