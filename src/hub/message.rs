//! [`Message`]: a server frame encoded once, shared by every recipient.
//!
//! Frames from a server are not masked, so the bytes on the wire are the same for every
//! connection. A [`Message`] holds those bytes behind a reference count: publishing one to a room
//! of 1,000 members queues 1,000 references to one buffer, never 1,000 copies.

use bytes::Bytes;

use crate::codec::{self, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT};
use crate::frame::CloseCode;

/// A complete WebSocket frame from the hub, ready for any number of connections.
///
/// ```
/// use syncws::hub::Message;
///
/// let m = Message::text(r#"{"op":"hello"}"#);
/// assert_eq!(m.wire_len(), 2 + 14); // a 2-byte header and the payload
/// let copy = m.clone(); // a reference, not a copy of the bytes
/// assert_eq!(copy.wire_len(), m.wire_len());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    wire: Bytes,
}

impl Message {
    /// A text message.
    pub fn text(text: impl AsRef<str>) -> Message {
        Self::encode(OP_TEXT, text.as_ref().as_bytes())
    }

    /// A binary message.
    pub fn binary(payload: impl AsRef<[u8]>) -> Message {
        Self::encode(OP_BINARY, payload.as_ref())
    }

    /// The frame's size on the wire (header and payload): what it counts against a
    /// connection's queue.
    pub fn wire_len(&self) -> usize {
        self.wire.len()
    }

    fn encode(opcode: u8, payload: &[u8]) -> Message {
        let mut out = Vec::new();
        codec::encode_unmasked(opcode, payload, &mut out);
        Message { wire: out.into() }
    }

    pub(crate) fn ping(payload: &[u8]) -> Message {
        Self::encode(OP_PING, payload)
    }

    pub(crate) fn pong(payload: &[u8]) -> Message {
        Self::encode(OP_PONG, payload)
    }

    /// A close frame; `NO_STATUS` (1005, never sent) makes an empty one.
    pub(crate) fn close(code: CloseCode, reason: &str) -> Message {
        let close = (code != CloseCode::NO_STATUS).then_some((code, reason));
        let (payload, len) = codec::close_payload(close);
        Self::encode(OP_CLOSE, &payload[..len])
    }

    pub(crate) fn wire(&self) -> &Bytes {
        &self.wire
    }
}
