//! The WebSocket wire format (RFC 6455 §5), for both halves: the client encodes masked frames and
//! decodes unmasked ones; the hub encodes unmasked frames and decodes masked ones.
//!
//! The decoder works on a byte slice owned by the reader thread and hands out messages that borrow
//! from it, so a complete unfragmented message reaches the ingress without a copy. Fragmented
//! messages are reassembled in one buffer that is reused for the life of the connection. Every rule
//! the client must enforce on server frames is checked here, and a violation is reported with the
//! close code the connection must be failed with; nothing in here can panic on input.

use crate::deflate::Inflater;
use crate::frame::{CloseCode, Data};

const OP_CONTINUATION: u8 = 0x0;
pub(crate) const OP_TEXT: u8 = 0x1;
pub(crate) const OP_BINARY: u8 = 0x2;
pub(crate) const OP_CLOSE: u8 = 0x8;
pub(crate) const OP_PING: u8 = 0x9;
pub(crate) const OP_PONG: u8 = 0xA;

/// The RSV1 bit of a frame's first byte, or-ed into an opcode: a compressed message
/// (permessage-deflate).
pub(crate) const RSV1: u8 = 0x40;

/// The longest payload a control frame may carry.
pub(crate) const MAX_CONTROL_PAYLOAD: usize = 125;

/// Appends a masked text (`text`) or binary data frame to `out`.
pub(crate) fn encode_data(text: bool, payload: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    encode(if text { OP_TEXT } else { OP_BINARY }, payload, mask, out);
}

/// Appends one complete, final, masked client frame to `out` (`opcode` may carry [`RSV1`]).
pub(crate) fn encode(opcode: u8, payload: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    out.reserve(14 + payload.len());
    put_header(opcode, payload.len(), 0x80, out);
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], mask);
}

/// Appends one complete, final, unmasked server frame to `out`: the same bytes for every
/// recipient, which is what lets the hub encode a broadcast once.
pub(crate) fn encode_unmasked(opcode: u8, payload: &[u8], out: &mut Vec<u8>) {
    out.reserve(10 + payload.len());
    put_header(opcode, payload.len(), 0, out);
    out.extend_from_slice(payload);
}

/// The first bytes of a final frame: opcode, the mask bit (`0x80` or 0) and the length.
fn put_header(opcode: u8, len: usize, mask_bit: u8, out: &mut Vec<u8>) {
    out.push(0x80 | opcode);
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// The payload of a close frame: the code and the reason cut to fit (a whole character at a
/// time), or nothing for `None`. Returns the buffer and the length used.
pub(crate) fn close_payload(
    close: Option<(CloseCode, &str)>,
) -> ([u8; MAX_CONTROL_PAYLOAD], usize) {
    let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
    let len = match close {
        None => 0,
        Some((code, reason)) => {
            payload[..2].copy_from_slice(&code.0.to_be_bytes());
            let reason = truncate_utf8(reason, MAX_CONTROL_PAYLOAD - 2);
            payload[2..2 + reason.len()].copy_from_slice(reason.as_bytes());
            2 + reason.len()
        }
    };
    (payload, len)
}

/// Appends a close frame (code and reason, or an empty payload for `None`).
pub(crate) fn encode_close(close: Option<(CloseCode, &str)>, mask: [u8; 4], out: &mut Vec<u8>) {
    let (payload, len) = close_payload(close);
    encode(OP_CLOSE, &payload[..len], mask, out);
}

pub(crate) fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// XORs `buf` with the 4-byte `mask`, starting at mask offset 0.
pub(crate) fn apply_mask(buf: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// Why the peer's bytes were rejected, with the close code to fail the connection with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Violation {
    pub code: CloseCode,
    pub reason: String,
}

fn violation(code: CloseCode, reason: impl Into<String>) -> Violation {
    Violation {
        code,
        reason: reason.into(),
    }
}

/// One decoded unit handed to the reader.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decoded<'a> {
    /// A complete data message.
    Data(Data<'a>),
    /// A ping and its payload.
    Ping(&'a [u8]),
    /// A pong and its payload.
    Pong(&'a [u8]),
    /// A close frame: `None` when it had no payload.
    Close(Option<(CloseCode, &'a str)>),
    /// A non-final fragment was buffered; nothing to deliver yet.
    Fragment,
}

/// The result of one [`Decoder::decode`] call.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step<'a> {
    /// Not enough bytes yet. The value is the total size of the frame once its header is
    /// known (so the caller can make room), or 0 while even the header is incomplete.
    Need(usize),
    /// A frame occupying the given number of bytes was decoded.
    Frame(usize, Decoded<'a>),
}

/// Limits applied while decoding.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub max_frame: usize,
    pub max_message: usize,
}

/// Stateful decoder for server-to-client frames.
#[derive(Debug)]
pub(crate) struct Decoder {
    limits: Limits,
    /// Reassembly buffer for fragmented messages, reused across messages.
    partial: Vec<u8>,
    /// Opcode of the message being reassembled, if any.
    partial_opcode: Option<u8>,
    /// Set when `partial` holds a delivered message that must be cleared on the next call.
    partial_delivered: bool,
    /// The message being reassembled is compressed.
    partial_compressed: bool,
    /// permessage-deflate, when negotiated.
    inflater: Option<Inflater>,
}

impl Decoder {
    pub(crate) fn new(limits: Limits) -> Self {
        Decoder {
            limits,
            partial: Vec::new(),
            partial_opcode: None,
            partial_delivered: false,
            partial_compressed: false,
            inflater: None,
        }
    }

    /// Accepts compressed messages (RSV1) from now on: permessage-deflate was negotiated.
    /// `peer_no_context_takeover`: the peer compresses each message on its own.
    pub(crate) fn enable_deflate(&mut self, peer_no_context_takeover: bool) {
        self.inflater = Some(Inflater::new(peer_no_context_takeover));
    }

    /// Gives back the reassembly buffer when it grew past `keep` bytes and no fragmented
    /// message is in progress (a connection that once got a large fragmented message does not
    /// keep its size for life).
    pub(crate) fn release_memory(&mut self, keep: usize) {
        if self.partial_opcode.is_none() && self.partial.capacity() > keep {
            self.partial = Vec::new();
            self.partial_delivered = false;
        }
    }

    /// Decodes the next frame at the start of `buf` (the client's side: frames from a server,
    /// which must not be masked).
    ///
    /// Returns [`Step::Need`] when `buf` does not hold a whole frame yet, or [`Step::Frame`] with
    /// the number of bytes the frame occupied.
    #[inline]
    pub(crate) fn decode<'a>(&'a mut self, buf: &'a [u8]) -> Result<Step<'a>, Violation> {
        match self.extent(buf, false)? {
            Extent::Need(n) => Ok(Step::Need(n)),
            Extent::Whole(header, header_len, total) => self.finish(header, header_len, total, buf),
        }
    }

    /// Decodes the next frame at the start of `buf` (the server's side: frames from a client,
    /// which must be masked). A whole frame's payload is unmasked in place, once: the caller
    /// consumes the frame before decoding again.
    pub(crate) fn decode_masked<'a>(
        &'a mut self,
        buf: &'a mut [u8],
    ) -> Result<Step<'a>, Violation> {
        match self.extent(buf, true)? {
            Extent::Need(n) => Ok(Step::Need(n)),
            Extent::Whole(header, header_len, total) => {
                apply_mask(&mut buf[header_len..total], header.mask);
                self.finish(header, header_len, total, buf)
            }
        }
    }

    /// Checks the header at the start of `buf` against the limits and says how long the frame
    /// is, or how many bytes are still needed.
    #[inline(always)]
    fn extent(&mut self, buf: &[u8], masked: bool) -> Result<Extent, Violation> {
        if self.partial_delivered {
            self.partial.clear();
            self.partial_delivered = false;
        }
        let Some((header, header_len)) = parse_header(buf, masked)? else {
            return Ok(Extent::Need(0));
        };
        if header.rsv1 && (self.inflater.is_none() || !matches!(header.opcode, OP_TEXT | OP_BINARY))
        {
            return Err(violation(
                CloseCode::PROTOCOL_ERROR,
                if self.inflater.is_none() {
                    "reserved bits set without an extension"
                } else {
                    "RSV1 on a control or continuation frame"
                },
            ));
        }
        if header.len > self.limits.max_frame as u64 {
            return Err(violation(
                CloseCode::TOO_BIG,
                format!(
                    "frame of {} bytes exceeds the limit of {}",
                    header.len, self.limits.max_frame
                ),
            ));
        }
        // A data frame is (part of) a message: refuse it as soon as its header says the message
        // would exceed the limit, before its payload is waited for or buffered.
        if header.opcode < OP_CLOSE {
            let before = match header.opcode {
                OP_CONTINUATION => self.partial.len() as u64,
                _ => 0,
            };
            let message = before.saturating_add(header.len);
            if message > self.limits.max_message as u64 {
                return Err(violation(
                    CloseCode::TOO_BIG,
                    format!(
                        "message of at least {message} bytes exceeds the limit of {} bytes",
                        self.limits.max_message
                    ),
                ));
            }
        }
        // Fits: `header.len <= max_frame`, a `usize`; only the header's few bytes can overflow.
        let Some(total) = usize::try_from(header.len)
            .ok()
            .and_then(|len| len.checked_add(header_len))
        else {
            return Err(violation(
                CloseCode::TOO_BIG,
                format!("frame of {} bytes is too large to buffer", header.len),
            ));
        };
        if buf.len() < total {
            return Ok(Extent::Need(total));
        }
        Ok(Extent::Whole(header, header_len, total))
    }

    /// Interprets a whole frame (already unmasked) occupying `buf[..total]`.
    #[inline(always)]
    fn finish<'a>(
        &'a mut self,
        header: Header,
        header_len: usize,
        total: usize,
        buf: &'a [u8],
    ) -> Result<Step<'a>, Violation> {
        let payload = &buf[header_len..total];
        let decoded = match header.opcode {
            OP_PING => Decoded::Ping(payload),
            OP_PONG => Decoded::Pong(payload),
            OP_CLOSE => Decoded::Close(parse_close(payload)?),
            OP_TEXT | OP_BINARY if header.fin => {
                if self.partial_opcode.is_some() {
                    return Err(violation(
                        CloseCode::PROTOCOL_ERROR,
                        "new data frame while a fragmented message was in progress",
                    ));
                }
                if header.rsv1 {
                    let limit = self.limits.max_message;
                    let inflated = self.inflate(payload, limit)?;
                    Decoded::Data(to_data(header.opcode, inflated)?)
                } else {
                    Decoded::Data(to_data(header.opcode, payload)?)
                }
            }
            OP_TEXT | OP_BINARY => {
                if self.partial_opcode.is_some() {
                    return Err(violation(
                        CloseCode::PROTOCOL_ERROR,
                        "new data frame while a fragmented message was in progress",
                    ));
                }
                self.partial_opcode = Some(header.opcode);
                self.partial_compressed = header.rsv1;
                self.append_fragment(payload)?;
                Decoded::Fragment
            }
            _ => {
                // OP_CONTINUATION (parse_header rejected every other opcode).
                let Some(opcode) = self.partial_opcode else {
                    return Err(violation(
                        CloseCode::PROTOCOL_ERROR,
                        "continuation frame without a message to continue",
                    ));
                };
                self.append_fragment(payload)?;
                if header.fin {
                    self.partial_opcode = None;
                    self.partial_delivered = true;
                    if std::mem::take(&mut self.partial_compressed) {
                        let limit = self.limits.max_message;
                        let Some(inflater) = self.inflater.as_mut() else {
                            return Err(violation(
                                CloseCode::PROTOCOL_ERROR,
                                "compressed message without deflate",
                            ));
                        };
                        let inflated = inflater
                            .inflate(&self.partial, limit)
                            .map_err(inflate_error)?;
                        Decoded::Data(to_data(opcode, inflated)?)
                    } else {
                        Decoded::Data(to_data(opcode, &self.partial)?)
                    }
                } else {
                    Decoded::Fragment
                }
            }
        };
        Ok(Step::Frame(total, decoded))
    }

    fn inflate<'a>(&'a mut self, payload: &[u8], limit: usize) -> Result<&'a [u8], Violation> {
        match self.inflater.as_mut() {
            Some(inflater) => inflater.inflate(payload, limit).map_err(inflate_error),
            None => Err(violation(
                CloseCode::PROTOCOL_ERROR,
                "compressed message without deflate",
            )),
        }
    }

    fn append_fragment(&mut self, payload: &[u8]) -> Result<(), Violation> {
        if self.partial.len().saturating_add(payload.len()) > self.limits.max_message {
            return Err(violation(
                CloseCode::TOO_BIG,
                format!(
                    "message exceeds the limit of {} bytes",
                    self.limits.max_message
                ),
            ));
        }
        self.partial.extend_from_slice(payload);
        Ok(())
    }
}

/// A message that would inflate past the limit is 1009; one that is not DEFLATE is 1007.
fn inflate_error(too_big: bool) -> Violation {
    if too_big {
        violation(
            CloseCode::TOO_BIG,
            "compressed message inflates past the size limit",
        )
    } else {
        violation(
            CloseCode::INVALID_PAYLOAD,
            "compressed message is not valid DEFLATE",
        )
    }
}

fn to_data(opcode: u8, payload: &[u8]) -> Result<Data<'_>, Violation> {
    if opcode == OP_TEXT {
        std::str::from_utf8(payload).map(Data::Text).map_err(|e| {
            violation(
                CloseCode::INVALID_PAYLOAD,
                format!("text message is not UTF-8: {e}"),
            )
        })
    } else {
        Ok(Data::Binary(payload))
    }
}

fn parse_close(payload: &[u8]) -> Result<Option<(CloseCode, &str)>, Violation> {
    match payload {
        [] => Ok(None),
        [_] => Err(violation(
            CloseCode::PROTOCOL_ERROR,
            "close frame with a 1-byte payload",
        )),
        [hi, lo, reason @ ..] => {
            let code = CloseCode(u16::from_be_bytes([*hi, *lo]));
            if !code.is_sendable() {
                return Err(violation(
                    CloseCode::PROTOCOL_ERROR,
                    format!("close frame with invalid code {}", code.0),
                ));
            }
            let reason = std::str::from_utf8(reason)
                .map_err(|_| violation(CloseCode::INVALID_PAYLOAD, "close reason is not UTF-8"))?;
            Ok(Some((code, reason)))
        }
    }
}

struct Header {
    fin: bool,
    /// RSV1: a compressed message (permessage-deflate), on its first frame only.
    rsv1: bool,
    opcode: u8,
    len: u64,
    /// The masking key (all zeros for an unmasked frame, which leaves the payload as it is).
    mask: [u8; 4],
}

/// What [`Decoder::extent`] found at the start of the buffer.
enum Extent {
    /// Not enough bytes yet: the frame's total size once its header is known, else 0.
    Need(usize),
    /// A whole frame: its header, the header's length and the frame's total length.
    Whole(Header, usize, usize),
}

/// Parses and validates a frame header; `Ok(None)` if `buf` is too short to hold it. `masked`:
/// the frame comes from a client and must carry a masking key (RFC 6455 §5.1); else from a server
/// and must not.
#[inline(always)]
fn parse_header(buf: &[u8], masked: bool) -> Result<Option<(Header, usize)>, Violation> {
    let [b0, b1, rest @ ..] = buf else {
        return Ok(None);
    };
    let (fin, rsv, opcode) = (b0 & 0x80 != 0, b0 & 0x70, b0 & 0x0F);
    // RSV1 may mean "compressed" (checked by the decoder, which knows whether
    // permessage-deflate was negotiated); RSV2 and RSV3 never mean anything here.
    if rsv & 0x30 != 0 {
        return Err(violation(
            CloseCode::PROTOCOL_ERROR,
            "reserved bits set without an extension",
        ));
    }
    let rsv1 = rsv & 0x40 != 0;
    if !matches!(
        opcode,
        OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG
    ) {
        return Err(violation(
            CloseCode::PROTOCOL_ERROR,
            format!("reserved opcode {opcode:#x}"),
        ));
    }
    if (b1 & 0x80 != 0) != masked {
        return Err(violation(
            CloseCode::PROTOCOL_ERROR,
            if masked {
                "client sent an unmasked frame"
            } else {
                "server sent a masked frame"
            },
        ));
    }
    let (len, header_len) = match b1 & 0x7F {
        126 => match rest {
            [a, b, ..] => (u64::from(u16::from_be_bytes([*a, *b])), 4),
            _ => return Ok(None),
        },
        127 => match rest.get(..8) {
            Some(bytes) => {
                let mut be = [0u8; 8];
                be.copy_from_slice(bytes);
                let len = u64::from_be_bytes(be);
                if len >> 63 != 0 {
                    return Err(violation(
                        CloseCode::PROTOCOL_ERROR,
                        "64-bit length with MSB set",
                    ));
                }
                (len, 10)
            }
            None => return Ok(None),
        },
        short => (u64::from(short), 2),
    };
    let mut mask = [0u8; 4];
    let header_len = if masked {
        let Some(key) = buf.get(header_len..header_len + 4) else {
            return Ok(None);
        };
        mask.copy_from_slice(key);
        header_len + 4
    } else {
        header_len
    };
    if opcode >= OP_CLOSE && (!fin || len > MAX_CONTROL_PAYLOAD as u64) {
        return Err(violation(
            CloseCode::PROTOCOL_ERROR,
            "control frame fragmented or longer than 125 bytes",
        ));
    }
    Ok(Some((
        Header {
            fin,
            rsv1,
            opcode,
            len,
            mask,
        },
        header_len,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_frame: 1 << 20,
            max_message: 1 << 21,
        }
    }

    /// An unmasked server frame.
    fn server_frame(b0: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![b0];
        match payload.len() {
            n if n < 126 => out.push(n as u8),
            n if n <= 0xFFFF => {
                out.push(126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(payload);
        out
    }

    /// The server's side: a client's masked frame is unmasked in place; an unmasked one is a
    /// protocol error (1002); and a server frame round-trips through the client's decoder.
    #[test]
    fn masked_frames_decode_on_the_server_side_and_unmasked_ones_fail() {
        for len in [0usize, 5, 125, 126, 65535, 65536] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let mut wire = Vec::new();
            encode(OP_BINARY, &payload, [9, 8, 7, 6], &mut wire);
            let total = wire.len();
            let mut d = Decoder::new(limits());
            // One byte short: nothing is unmasked yet.
            let mut short = wire[..total - 1].to_vec();
            assert!(matches!(
                d.decode_masked(&mut short).unwrap(),
                Step::Need(_)
            ));
            match d.decode_masked(&mut wire).unwrap() {
                Step::Frame(n, Decoded::Data(Data::Binary(p))) => {
                    assert_eq!(n, total);
                    assert_eq!(p, &payload[..]);
                }
                other => panic!("unexpected {other:?}"),
            }
            let mut server = Vec::new();
            encode_unmasked(OP_BINARY, &payload, &mut server);
            let err = Decoder::new(limits())
                .decode_masked(&mut server)
                .unwrap_err();
            assert_eq!(err.code, CloseCode::PROTOCOL_ERROR);
            match Decoder::new(limits()).decode(&server).unwrap() {
                Step::Frame(n, Decoded::Data(Data::Binary(p))) => {
                    assert_eq!(n, server.len());
                    assert_eq!(p, &payload[..]);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn encode_masks_and_sizes_every_length_class() {
        for len in [0usize, 1, 125, 126, 65535, 65536, 70000] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mask = [1, 2, 3, 4];
            let mut out = Vec::new();
            encode(OP_BINARY, &payload, mask, &mut out);
            let header_len = match len {
                n if n < 126 => 6,
                n if n <= 65535 => 8,
                _ => 14,
            };
            assert_eq!(out.len(), header_len + len);
            assert_eq!(out[0], 0x82);
            assert_eq!(out[1] & 0x80, 0x80, "client frames are masked");
            let mut body = out[header_len..].to_vec();
            apply_mask(&mut body, mask);
            assert_eq!(body, payload);
        }
    }

    #[test]
    fn mask_matches_bytewise_definition_at_every_length() {
        let mask = [0x6d, 0xb6, 0xb2, 0x80];
        for len in 0..40 {
            let data: Vec<u8> = (0..len as u8).collect();
            let mut fast = data.clone();
            apply_mask(&mut fast, mask);
            let slow: Vec<u8> = data
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i % 4])
                .collect();
            assert_eq!(fast, slow);
        }
    }

    #[test]
    fn decodes_in_place_and_reports_need() {
        let frame = server_frame(0x81, b"hello");
        let mut d = Decoder::new(limits());
        assert_eq!(d.decode(&frame[..1]).unwrap(), Step::Need(0));
        assert_eq!(d.decode(&frame[..3]).unwrap(), Step::Need(frame.len()));
        assert_eq!(
            d.decode(&frame).unwrap(),
            Step::Frame(7, Decoded::Data(Data::Text("hello")))
        );
    }

    #[test]
    fn reassembles_fragments_with_interleaved_control() {
        let mut wire = server_frame(0x01, b"hel");
        wire.extend(server_frame(0x89, b"p"));
        wire.extend(server_frame(0x00, b"lo "));
        wire.extend(server_frame(0x80, "wörld".as_bytes()));
        let mut d = Decoder::new(limits());
        let mut pos = 0;
        let mut seen = Vec::new();
        while pos < wire.len() {
            let Step::Frame(used, dec) = d.decode(&wire[pos..]).unwrap() else {
                panic!("short")
            };
            seen.push(format!("{dec:?}"));
            pos += used;
        }
        assert_eq!(
            seen,
            [
                "Fragment",
                "Ping([112])",
                "Fragment",
                "Data(Text(\"hello wörld\"))"
            ]
        );
    }

    #[test]
    fn rejects_violations_with_the_right_code() {
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (server_frame(0x83, b""), 1002),              // reserved data opcode
            (server_frame(0x8B, b""), 1002),              // reserved control opcode
            (server_frame(0xC1, b"x"), 1002),             // RSV1 without extension
            (vec![0x81, 0x81, 0, 0, 0, 0, b'x'], 1002),   // masked server frame
            (server_frame(0x09, b""), 1002),              // fragmented ping
            (server_frame(0x89, &[0; 126]), 1002),        // oversized ping
            (server_frame(0x80, b"x"), 1002),             // continuation with nothing open
            (server_frame(0x81, &[0xff, 0xfe]), 1007),    // bad UTF-8
            (server_frame(0x88, &[3]), 1002),             // 1-byte close
            (server_frame(0x88, &[3, 0xed]), 1002),       // code 1005 on the wire
            (server_frame(0x88, &[3, 0xe8, 0xff]), 1007), // bad UTF-8 reason
            (server_frame(0x82, &vec![0; (1 << 20) + 1]), 1009),
        ];
        for (wire, code) in cases {
            let err = Decoder::new(limits()).decode(&wire).unwrap_err();
            assert_eq!(err.code.0, code, "{err:?}");
        }
    }

    #[test]
    fn fragmented_message_over_limit_is_too_big() {
        let mut d = Decoder::new(Limits {
            max_frame: 100,
            max_message: 150,
        });
        let a = server_frame(0x02, &[0; 100]);
        assert!(matches!(
            d.decode(&a).unwrap(),
            Step::Frame(_, Decoded::Fragment)
        ));
        let b = server_frame(0x80, &[0; 100]);
        assert_eq!(d.decode(&b).unwrap_err().code, CloseCode::TOO_BIG);
    }

    #[test]
    fn max_message_size_applies_to_a_single_frame() {
        // Finding 3: one 5,000-byte text frame with a 1,000-byte message limit was delivered.
        let mut d = Decoder::new(Limits {
            max_frame: 1 << 20,
            max_message: 1000,
        });
        let wire = server_frame(0x81, &[b'a'; 5000]);
        // Only the 4-byte header is there: refused before the payload is waited for.
        let err = d.decode(&wire[..4]).unwrap_err();
        assert_eq!(err.code, CloseCode::TOO_BIG, "{err:?}");
        let err = Decoder::new(Limits {
            max_frame: 1 << 20,
            max_message: 1000,
        })
        .decode(&wire)
        .unwrap_err();
        assert_eq!(err.code, CloseCode::TOO_BIG);
        // A frame exactly at the limit is fine; so is a control frame under a tiny limit.
        let mut d = Decoder::new(Limits {
            max_frame: 1 << 20,
            max_message: 1000,
        });
        let ok = server_frame(0x82, &[0; 1000]);
        assert!(matches!(d.decode(&ok), Ok(Step::Frame(1004, _))));
        let mut d = Decoder::new(Limits {
            max_frame: 1 << 20,
            max_message: 0,
        });
        assert!(matches!(
            d.decode(&server_frame(0x89, b"ping")),
            Ok(Step::Frame(_, Decoded::Ping(b"ping")))
        ));
    }

    #[test]
    fn max_message_size_applies_to_a_continuation_at_its_header() {
        let mut d = Decoder::new(Limits {
            max_frame: 1 << 20,
            max_message: 150,
        });
        let a = server_frame(0x02, &[0; 100]);
        assert!(matches!(
            d.decode(&a).unwrap(),
            Step::Frame(_, Decoded::Fragment)
        ));
        let b = server_frame(0x80, &[0; 100]);
        assert_eq!(d.decode(&b[..4]).unwrap_err().code, CloseCode::TOO_BIG);
    }

    #[test]
    fn largest_lengths_never_overflow() {
        // A 2^63-1 byte frame under limits that allow everything.
        let mut wire = vec![0x82, 127];
        wire.extend_from_slice(&(u64::MAX >> 1).to_be_bytes());
        let mut d = Decoder::new(Limits {
            max_frame: usize::MAX,
            max_message: usize::MAX,
        });
        match d.decode(&wire) {
            Ok(Step::Need(n)) => assert!(n > wire.len()),
            Err(v) => assert_eq!(v.code, CloseCode::TOO_BIG),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn garbage_never_panics() {
        // A cheap deterministic fuzz: random byte strings either decode, ask for more, or fail.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..20_000 {
            let len = (x % 40) as usize;
            let mut buf = Vec::with_capacity(len);
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                buf.push(x as u8);
            }
            let mut d = Decoder::new(Limits {
                max_frame: 64,
                max_message: 128,
            });
            let mut pos = 0;
            while pos < buf.len() {
                match d.decode(&buf[pos..]) {
                    Ok(Step::Frame(used, _)) => pos += used,
                    _ => break,
                }
            }
        }
    }
}

// Not under loom: proptest is not a dependency of the loom build (see Cargo.toml).
#[cfg(all(test, not(loom)))]
#[path = "codec_props.rs"]
mod props;
