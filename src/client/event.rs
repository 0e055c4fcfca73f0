//! What the application receives from a client.
//!
//! Events arrive on one bounded channel ([`Client::events`](crate::Client::events), an
//! [`Events`](crate::Events)). Decoded values ([`Event::Data`]) and forwarded frames
//! ([`Event::Frame`]) are sent by the reader thread directly, those of one read together as a
//! batch; lifecycle events by the coordinator. Every event about a connection carries its
//! `epoch` (1 for the first connection, +1 per reconnect), so a consumer can discard state from
//! before a gap.

use std::time::Duration;

use crate::client::endpoint::Cause;
use crate::client::requests::Response;
use crate::frame::{CloseCode, Frame, Initiator};

/// One thing that happened on a client.
///
/// A connection's events come in this order: [`Connected`](Event::Connected), then data,
/// [`SessionReady`](Event::SessionReady) once authentication and subscriptions are restored,
/// and finally [`Closed`](Event::Closed), which says whether and when a reconnect follows.
/// Between connections: [`Connecting`](Event::Connecting) and, for each failed attempt,
/// [`ConnectFailed`](Event::ConnectFailed).
#[derive(Debug)]
#[non_exhaustive]
pub enum Event<T> {
    /// A value the [`Ingress`](crate::Ingress) emitted for an inbound message.
    Data {
        /// The connection epoch the message arrived on.
        epoch: u64,
        /// The decoded value.
        value: T,
    },
    /// An inbound message the ingress forwarded as is. Its payload is a view of the reader's
    /// buffer (no copy; a message reassembled from fragments is copied once), which you may
    /// keep: the reader moves on to another buffer while any view of the old one is held, and
    /// reuses the old one once you have dropped every view of it (see
    /// [`Config::read_buffer_size`](crate::Config::read_buffer_size)). Keeping a small part of
    /// a message for long keeps its whole buffer: copy it out instead.
    Frame {
        /// The connection epoch the message arrived on.
        epoch: u64,
        /// The message.
        frame: Frame,
    },
    /// A pong arrived that answers the application's own [`Client::ping`](crate::Client::ping)
    /// (keepalive pongs are consumed by syncws).
    Pong {
        /// The connection epoch.
        epoch: u64,
        /// The pong's payload.
        payload: Vec<u8>,
    },
    /// A reconnect attempt is starting (the first connection is made by `connect` itself).
    Connecting {
        /// Attempt number: the failed attempts and lost connections since the backoff was last
        /// reset (by a connection that stayed up for `stable_after`), plus one.
        attempt: u32,
    },
    /// A connection is open: the upgrade succeeded.
    Connected {
        /// The new connection's epoch.
        epoch: u64,
        /// True for every connection after the first.
        is_reconnect: bool,
    },
    /// The session is restored on this connection: the endpoint's opening frames were sent,
    /// authentication confirmed (if gated), and every subscription replayed and acknowledged.
    /// User data flows from here on.
    SessionReady {
        /// The connection epoch.
        epoch: u64,
    },
    /// The venue refused a subscription (or the desired set was full). It was removed from the
    /// desired set and will not be retried.
    SubscriptionRejected {
        /// The connection epoch.
        epoch: u64,
        /// The topic.
        topic: String,
        /// Why.
        reason: String,
    },
    /// A connection ended. This is the last event of its epoch.
    Closed {
        /// The connection epoch that ended.
        epoch: u64,
        /// How and why it ended (boxed: rare events stay out of the way of the data events'
        /// size, which is what every slot of the event channel costs).
        info: Box<CloseInfo>,
        /// When the next attempt starts; `None` if the client will not reconnect.
        reconnect: Option<Duration>,
    },
    /// A response to a request arrived after the request was resolved (its deadline passed,
    /// its connection was lost, or it was sent in [`ConfirmMode::Sent`](crate::ConfirmMode::Sent)),
    /// or matched no request at all. Never dropped silently: reconcile with it.
    Orphan {
        /// The connection epoch it arrived on.
        epoch: u64,
        /// The request id it answers.
        id: u64,
        /// What the endpoint said.
        response: Box<Response>,
    },
    /// A make-before-break rotation switched connections: the last event of epoch `from` and
    /// the first of epoch `to`, whose session is ready. Data from `to` follows, starting with
    /// what it received before the switch; it may repeat the last messages of `from`
    /// (de-duplicate by the feed's sequence numbers), and misses none. No `Closed` is
    /// reported for `from`. See [`ClientBuilder::rotate_after`](crate::ClientBuilder::rotate_after).
    Rotated {
        /// The connection that was replaced (closed with 1000).
        from: u64,
        /// The connection that replaced it.
        to: u64,
    },
    /// A rotation's replacement failed before the switch and was dropped; the current
    /// connection is still in place and its events go on.
    RotationFailed {
        /// The replacement's epoch (never used for another connection).
        epoch: u64,
        /// What went wrong.
        cause: Box<Cause>,
        /// When the next rotation is tried (with
        /// [`rotate_after`](crate::ClientBuilder::rotate_after)); `None` otherwise.
        retry: Option<Duration>,
    },
    /// A reconnect attempt failed.
    ConnectFailed {
        /// The attempt number.
        attempt: u32,
        /// What went wrong ([`Cause::ConnectFailed`] with the error).
        cause: Box<Cause>,
        /// When the next attempt starts; `None` if the client gives up.
        reconnect: Option<Duration>,
    },
}

/// How a connection ended.
#[derive(Debug)]
pub struct CloseInfo {
    /// Who started the close.
    pub initiator: Initiator,
    /// The close code: the one the initiator sent; [`CloseCode::NO_STATUS`] for a close frame
    /// without a code; [`CloseCode::ABNORMAL`] when no close frame was exchanged (including
    /// connections syncws dropped because they went silent).
    pub code: CloseCode,
    /// The close reason sent by the initiator (for an abort, a description of the cause).
    pub reason: String,
    /// True when both close frames were exchanged.
    pub clean: bool,
    /// The code in the peer's close frame, if one arrived: for a local close, the server's
    /// reply (which may differ from ours); for a remote close, the same as `code`.
    pub peer_code: Option<CloseCode>,
    /// Why the connection ended, as the reconnect policy saw it.
    pub cause: Cause,
}
