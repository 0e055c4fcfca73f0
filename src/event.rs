//! What the application receives from a connection.
//!
//! Events arrive on one bounded channel ([`Client::events`](crate::Client::events)). Decoded
//! values ([`Event::Data`]) and forwarded frames ([`Event::Frame`]) are sent by the reader thread
//! directly; lifecycle events by the coordinator. Every event carries the connection `epoch`
//! (1 for the first connection), so a consumer can discard state from before a gap.

use crate::error::Error;
use crate::frame::{CloseCode, Frame};

/// One thing that happened on a connection.
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
    /// An inbound message the ingress forwarded as is (copied out of the read buffer).
    Frame {
        /// The connection epoch the message arrived on.
        epoch: u64,
        /// The message.
        frame: Frame,
    },
    /// A pong arrived (answering [`Client::ping`](crate::Client::ping), or unsolicited).
    Pong {
        /// The connection epoch.
        epoch: u64,
        /// The pong's payload.
        payload: Vec<u8>,
    },
    /// The connection ended. This is the last event of an epoch.
    Closed {
        /// The connection epoch that ended.
        epoch: u64,
        /// How and why it ended.
        info: CloseInfo,
    },
}

/// Who started the end of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Initiator {
    /// This client: [`Client::close`](crate::Client::close), shutdown, or a protocol violation
    /// by the peer that syncws answered by closing.
    Local,
    /// The server sent the first close frame.
    Remote,
    /// Nobody: the TCP connection failed or ended without a close handshake.
    Transport,
}

/// How a connection ended.
#[derive(Debug)]
pub struct CloseInfo {
    /// Who started the close.
    pub initiator: Initiator,
    /// The close code: the one the initiator sent; [`CloseCode::NO_STATUS`] for a close frame
    /// without a code; [`CloseCode::ABNORMAL`] when no close frame was exchanged.
    pub code: CloseCode,
    /// The close reason sent by the initiator (empty if none).
    pub reason: String,
    /// True when both close frames were exchanged.
    pub clean: bool,
    /// The code in the peer's close frame, if one arrived: for a local close, the server's
    /// reply (which may differ from ours); for a remote close, the same as `code`.
    pub peer_code: Option<CloseCode>,
    /// What went wrong, for closes that were not requested by either side.
    pub error: Option<Error>,
}
