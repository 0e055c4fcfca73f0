//! [`Message`]: a server frame encoded once, shared by every recipient.
//!
//! Frames from a server are not masked, so the bytes on the wire are the same for every
//! connection. A [`Message`] holds those bytes behind a reference count: publishing one to a room
//! of 1,000 members queues 1,000 references to one buffer, never 1,000 copies.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use crate::codec::{self, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, RSV1};
use crate::deflate::{COMPRESS_MIN, deflate_shared};
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
///
/// For clients that negotiated permessage-deflate, a data message of at least 256 bytes also has
/// a compressed form, made once, by the first such recipient, and shared by all of them like the
/// plain one (each message is compressed on its own, so every recipient can inflate it).
#[derive(Clone, Debug)]
pub struct Message {
    wire: Bytes,
    /// The compressed form of a data message long enough to be worth it (`None` inside: it
    /// would not get smaller); shared by every clone.
    deflated: Option<Arc<OnceLock<Option<Bytes>>>>,
}

impl PartialEq for Message {
    fn eq(&self, other: &Self) -> bool {
        self.wire == other.wire
    }
}

impl Eq for Message {}

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
        let data = matches!(opcode, OP_TEXT | OP_BINARY);
        let deflated = (data && payload.len() >= COMPRESS_MIN).then(Default::default);
        Message {
            wire: out.into(),
            deflated,
        }
    }

    /// The frame for one recipient: the compressed form if it takes compressed frames and the
    /// message has one (made here on first use), the plain one otherwise.
    pub(crate) fn wire_for(&self, compress: bool) -> &Bytes {
        let Some(deflated) = self.deflated.as_ref().filter(|_| compress) else {
            return &self.wire;
        };
        let compressed = deflated.get_or_init(|| {
            let opcode = self.wire[0] & 0x0f;
            let payload = &self.wire[payload_start(&self.wire)..];
            let compressed = deflate_shared(payload)?;
            let mut out = Vec::new();
            codec::encode_unmasked(opcode | RSV1, &compressed, &mut out);
            Some(out.into())
        });
        compressed.as_ref().unwrap_or(&self.wire)
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

/// Where the payload of an unmasked frame encoded by [`codec::encode_unmasked`] starts.
fn payload_start(wire: &[u8]) -> usize {
    match wire.get(1).map(|b| b & 0x7f) {
        Some(126) => 4,
        Some(127) => 10,
        _ => 2,
    }
}
