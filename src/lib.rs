//! # syncws
//!
//! A synchronous, thread-per-connection, runtime-free WebSocket library for processes that do not
//! run an async runtime or that pin their threads to cores: trading engines, market-data
//! handlers, control planes. Two halves share one codec, handshake, TLS and transport:
//! the [`Client`] (below) and the [`hub`], a server for the processes that publish.
//!
//! ```no_run
//! use std::time::Duration;
//! use syncws::{Client, CloseCode, Event, Frame};
//!
//! let client = Client::builder("wss://stream.example.com/ws")
//!     .header("Authorization", "Bearer token")
//!     .connect()?;
//! client.send(Frame::text(r#"{"op":"subscribe","channel":"trades"}"#))?;
//! for event in client.events().iter() {
//!     match event {
//!         Event::Frame { frame, .. } => println!("{frame:?}"),
//!         Event::Closed { info, .. } => {
//!             println!("closed by {:?} with {}", info.initiator, info.code);
//!             break;
//!         }
//!         _ => {}
//!     }
//! }
//! client.shutdown(Duration::from_secs(1));
//! # Ok::<(), syncws::Error>(())
//! ```
//!
//! ## The client's shape
//!
//! Each connection runs three named OS threads joined by bounded crossbeam channels:
//!
//! - the **reader** blocks in `read`, decodes frames and runs your [`Ingress`] on each message
//!   with the payload borrowed from its buffer; decoded values go straight to
//!   [`Client::events`], the events of one read handed over as one batch ([`Events`]). It
//!   answers pings itself through the writer's control lane.
//! - the **writer** drains its small control lane (pong, ping, close) before its bounded data
//!   lane and writes each batch at once.
//! - the **coordinator** owns the connection's state: a sans-IO state machine fed with user
//!   commands and reader/writer reports in one total order, driving reconnects, liveness, the
//!   close handshake and request deadlines.
//!
//! **Actor dispatch is the default** ([`Dispatch::Actor`]): only the coordinator thread steps the
//! state and every [`Endpoint`] callback but the reader's `precheck` runs there; user threads
//! never touch the socket. [`Client::send_and_confirm`] puts the request's frame on the data
//! lane in the caller's order among its `send`s; once the coordinator has registered the
//! request, it writes the frame itself if it is the only one queued and the writer is idle (a
//! non-blocking `send`), else the writer takes it.
//!
//! **Inline dispatch is the opt-in fast path** ([`Dispatch::Inline`]) for processes whose threads
//! share cores: a round trip's inputs are stepped on the thread they come from when nothing is
//! queued ahead of them, and a caller whose request is the only frame queued writes it itself
//! (non-blocking). One thread hand-off per round trip instead of three; the price is that endpoint
//! callbacks may run on any of the client's or the caller's threads, and a caller may write the
//! socket.
//!
//! Over TLS the reader and writer each own a duplicate of the socket; the rustls state is locked
//! only around in-memory encryption and decryption, so a blocked read never delays a write.
//!
//! ## Self-healing
//!
//! With an [`Endpoint`] (the venue's dialect: authentication, subscriptions, acknowledgements)
//! and a [`Reconnect`] strategy such as [`Backoff`], the coordinator notices a dead link within
//! a bounded time ([`Keepalive`] pings, data staleness, acknowledgement timeouts, a
//! [`LatencyPolicy`]), reconnects on a jittered backoff schedule (reproducible with a fixed
//! [`Backoff::seed`]), and restores the session: authentication first, then every desired
//! subscription exactly once. [`Event`]s report each step with the connection epoch; [`Stats`]
//! has the health figures.
//!
//! Connections a venue cuts at a fixed age can be replaced before it does, make-before-break
//! ([`ClientBuilder::rotate_after`], [`Client::rotate`]): the session is restored on a second
//! connection while the first keeps delivering, and [`Event::Rotated`] marks the switch; the
//! streams overlap, never leave a gap.
//!
//! ## Guarantees
//!
//! - Every queue is bounded; overflow behaviour is documented on each knob of [`Config`] and
//!   counted in [`Stats`].
//! - Nothing from the network panics the library; violations close the connection with the
//!   matching close code and are reported as [`Error::Protocol`].
//! - A panicking user callback (endpoint, ingress, reconnect strategy) is caught: the connection
//!   closes with [`Cause::CallbackPanicked`] and reconnecting follows the policy.
//! - Close codes are preserved in both directions; [`CloseInfo`] says who initiated.
//! - [`Client::shutdown`] (and `Drop`) bounds the close handshake and joins every thread.

#![warn(missing_docs)]

mod backoff;
mod client;
mod codec;
mod deadline;
mod deflate;
mod error;
mod frame;
mod guard;
mod handshake;
pub mod hub;
mod opening;
mod read_buffer;
mod sync;
mod sys;
mod tls;
mod transport;
mod utf8_bytes;

pub use backoff::{Backoff, Reconnect};
pub use client::Client;
pub use client::affinity::{Affinity, WaitStrategy};
pub use client::config::{ClientBuilder, Config, Overflow};
pub use client::endpoint::{Action, Cause, Endpoint, NoSession, Precheck, Reply};
pub use client::event::{CloseInfo, Event};
pub use client::events::{Batch, BatchIter, Events};
pub use client::health::LatencyPolicy;
pub use client::ingress::{ForwardAll, Ingress, Verdict};
pub use client::liveness::Keepalive;
pub use client::proxy::{Proxy, ProxyKind};
pub use client::requests::{ConfirmMode, Outcome, Request, Response, Undelivered, Unknown};
pub use client::stats::Stats;
pub use client::stepper::Dispatch;
pub use client::ticket::{DEADLINE_GRACE, Ticket};
pub use deflate::DeflateParams;
pub use error::{Error, MAX_RETRY_AFTER, Result};
pub use frame::{CloseCode, CloseFrame, Data, Frame, Initiator, PreparedFrame};
pub use tls::certificates_from_pem;
pub use utf8_bytes::Utf8Bytes;

/// Reference-counted bytes ([`Frame::Binary`]'s payload), re-exported from the `bytes` crate.
pub use bytes::Bytes;

/// Re-exported so callers can build a [`ClientBuilder::tls_config`] with the same rustls version.
pub use rustls;

/// The README's examples, compiled as doctests so they cannot rot.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
