//! Transport-neutral WebSocket frames and close codes.
//!
//! [`Frame`] is the owned form used for sending and for frames forwarded to the application. Its
//! data payloads are reference-counted ([`Bytes`], [`Utf8Bytes`]): an inbound frame is a view of
//! the reader's buffer, not a copy, and a frame can be kept or cloned for the price of a
//! reference count. [`Data`] is the borrowed form an [`Ingress`](crate::Ingress) sees on the reader thread: it
//! points into the read buffer, so inspecting it costs no copy.
//!
//! ```
//! use syncws::{CloseCode, Frame};
//!
//! let hello = Frame::text("hello");
//! assert!(hello.is_data());
//! let bye = Frame::close(CloseCode::NORMAL, "done");
//! assert!(!bye.is_data());
//! ```

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

use crate::utf8_bytes::Utf8Bytes;

/// A WebSocket close status code (RFC 6455 §7.4).
///
/// Any `u16` can be carried; the associated constants name the common ones. Codes `4000..=4999`
/// are free for applications.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// 1000: the purpose of the connection is fulfilled.
    pub const NORMAL: CloseCode = CloseCode(1000);
    /// 1001: the endpoint is going away (server deploy, client shutting down).
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    /// 1002: the peer broke the protocol.
    pub const PROTOCOL_ERROR: CloseCode = CloseCode(1002);
    /// 1003: a data type the endpoint cannot accept.
    pub const UNSUPPORTED: CloseCode = CloseCode(1003);
    /// 1005: reported (never sent) when a close frame carried no status code.
    pub const NO_STATUS: CloseCode = CloseCode(1005);
    /// 1006: reported (never sent) when the connection ended without a close frame.
    pub const ABNORMAL: CloseCode = CloseCode(1006);
    /// 1007: a text message was not valid UTF-8.
    pub const INVALID_PAYLOAD: CloseCode = CloseCode(1007);
    /// 1008: a policy was violated (often used for authentication failures).
    pub const POLICY: CloseCode = CloseCode(1008);
    /// 1009: a message was too big to process.
    pub const TOO_BIG: CloseCode = CloseCode(1009);
    /// 1011: the server hit an unexpected condition.
    pub const INTERNAL_ERROR: CloseCode = CloseCode(1011);

    /// True for codes that may appear in a close frame on the wire (RFC 6455 §7.4.1-2):
    /// 1000-1003, 1007-1014 and 3000-4999.
    pub fn is_sendable(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "close code {}", self.0)
    }
}

impl From<u16> for CloseCode {
    fn from(code: u16) -> Self {
        CloseCode(code)
    }
}

/// The code and reason of a close frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseFrame {
    /// The status code.
    pub code: CloseCode,
    /// A short human-readable reason (at most 123 bytes on the wire).
    pub reason: String,
}

/// An owned WebSocket frame (a complete message for text and binary).
///
/// Text and binary payloads are shared buffers: an inbound one is a view of the read buffer
/// (see [`Event::Frame`](crate::Event::Frame)); an outbound one is moved in from a `String` or
/// `Vec<u8>` (no copy), or shared from a [`Bytes`] you keep.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// A UTF-8 text message.
    Text(Utf8Bytes),
    /// A binary message.
    Binary(Bytes),
    /// A ping with its payload (at most 125 bytes).
    Ping(Vec<u8>),
    /// A pong with its payload (at most 125 bytes).
    Pong(Vec<u8>),
    /// A close frame; `None` when it carried no status code.
    Close(Option<CloseFrame>),
}

impl Frame {
    /// A text frame: from a `String` (moved, not copied), a `&str` (copied) or a
    /// [`Utf8Bytes`] (shared).
    pub fn text(s: impl Into<Utf8Bytes>) -> Frame {
        Frame::Text(s.into())
    }

    /// A binary frame: from a `Vec<u8>` or `Box<[u8]>` (moved, not copied), a `&'static [u8]`,
    /// or a [`Bytes`] (shared). A borrowed slice is copied with [`Bytes::copy_from_slice`].
    ///
    /// A `Vec` whose capacity exceeds its length costs one small allocation (the shared header
    /// of [`Bytes`]); an exact-capacity one (`vec![..]`, `to_vec()`) costs none.
    pub fn binary(b: impl Into<Bytes>) -> Frame {
        Frame::Binary(b.into())
    }

    /// The payload of a text or binary frame; `None` for control frames.
    pub fn payload(&self) -> Option<&[u8]> {
        self.data_payload().map(|(_, payload)| payload)
    }

    /// A close frame with a code and reason.
    pub fn close(code: CloseCode, reason: impl Into<String>) -> Frame {
        Frame::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        }))
    }

    /// True for text and binary frames (the ones that travel on the data lane).
    pub fn is_data(&self) -> bool {
        matches!(self, Frame::Text(_) | Frame::Binary(_))
    }

    /// `(is_text, payload)` for a data frame; `None` for anything else.
    pub(crate) fn data_payload(&self) -> Option<(bool, &[u8])> {
        match self {
            Frame::Text(s) => Some((true, s.as_bytes())),
            Frame::Binary(b) => Some((false, b)),
            _ => None,
        }
    }

    /// A text or binary frame as the borrowed message an [`Ingress`](crate::Ingress) sees;
    /// `None` for control frames.
    pub(crate) fn as_data(&self) -> Option<Data<'_>> {
        match self {
            Frame::Text(s) => Some(Data::Text(s)),
            Frame::Binary(b) => Some(Data::Binary(b)),
            _ => None,
        }
    }

    /// The payload length in bytes, as it would appear on the wire.
    pub fn payload_len(&self) -> usize {
        match self {
            Frame::Text(s) => s.len(),
            Frame::Binary(b) => b.len(),
            Frame::Ping(b) | Frame::Pong(b) => b.len(),
            Frame::Close(None) => 0,
            Frame::Close(Some(c)) => 2 + c.reason.len(),
        }
    }
}

impl From<Data<'_>> for Frame {
    /// Copies the payload out of the borrowed message.
    fn from(data: Data<'_>) -> Frame {
        match data {
            Data::Text(s) => Frame::Text(Utf8Bytes::from(s)),
            Data::Binary(b) => Frame::Binary(Bytes::copy_from_slice(b)),
        }
    }
}

/// A data frame prepared once and sent any number of times without allocating.
///
/// The payload is shared (`Arc`); [`Client::send_prepared`](crate::Client::send_prepared)
/// queues a reference to it, and the writer masks it straight into its reused write buffer, so a
/// steady stream of prepared frames allocates nothing per frame.
///
/// ```
/// use syncws::PreparedFrame;
///
/// let heartbeat = PreparedFrame::text(r#"{"op":"ping"}"#);
/// let again = heartbeat.clone(); // a reference count, not a copy
/// assert_eq!(again.payload(), br#"{"op":"ping"}"#);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreparedFrame {
    text: bool,
    payload: Arc<[u8]>,
}

impl PreparedFrame {
    /// A text frame.
    pub fn text(text: impl Into<Arc<str>>) -> Self {
        let text: Arc<str> = text.into();
        PreparedFrame {
            text: true,
            payload: text.into(),
        }
    }

    /// A binary frame.
    pub fn binary(payload: impl Into<Arc<[u8]>>) -> Self {
        PreparedFrame {
            text: false,
            payload: payload.into(),
        }
    }

    /// True for a text frame.
    pub fn is_text(&self) -> bool {
        self.text
    }

    /// The payload bytes.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }
}

/// A complete inbound data message, borrowed from the reader's buffer.
///
/// Text has already been validated as UTF-8, so the `&str` is free to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Data<'a> {
    /// A text message.
    Text(&'a str),
    /// A binary message.
    Binary(&'a [u8]),
}

impl<'a> Data<'a> {
    /// The raw payload bytes, whatever the kind.
    pub fn as_bytes(&self) -> &'a [u8] {
        match *self {
            Data::Text(s) => s.as_bytes(),
            Data::Binary(b) => b,
        }
    }
}

/// Who started the end of a connection (the same for both halves: "local" is this side, the
/// client or the hub).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Initiator {
    /// This side: for the client, [`Client::close`](crate::Client::close), shutdown, a protocol
    /// violation by the peer, or a liveness, acknowledgement or latency failure detected here;
    /// for the hub, a close, a violation, a slow or rate-limited client, keepalive or shutdown.
    Local,
    /// The peer sent the first close frame.
    Remote,
    /// Nobody: the TCP connection failed or ended without a close handshake.
    Transport,
}
