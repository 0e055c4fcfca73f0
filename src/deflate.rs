//! permessage-deflate (RFC 7692): the negotiation's parameters, deflating what we send, and inflating messages under a
//! hard limit, for both halves.
//!
//! A message whose first frame has RSV1 set is compressed: its payload (all fragments, added
//! up) plus the four bytes `00 00 ff ff` is one raw DEFLATE stream segment. The decompressor
//! keeps its window between messages unless the peer said it would not
//! (`*_no_context_takeover`). Whatever the compressed size, output past the message limit is a
//! 1009 close, never an allocation: a compression bomb costs at most the limit.
//!
//! Sending: a [`Deflater`] compresses each message on its own (the compressor is reset before
//! every message, so nothing refers back to an earlier one), which every receiver can inflate
//! whether or not it keeps its window, and which lets the hub compress a broadcast once for all
//! its recipients. Messages under [`COMPRESS_MIN`] bytes, and messages that would not get
//! smaller, are sent as they are (RFC 7692 lets a sender choose per message). A peer that limits
//! our window to 8 bits gets nothing compressed (zlib's smallest window is 9 bits).

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use parking_lot::Mutex;

/// Messages shorter than this are sent uncompressed: they would shrink by a few bytes at best,
/// for a microsecond of CPU.
pub(crate) const COMPRESS_MIN: usize = 256;

/// Compresses outgoing messages, each on its own, at zlib's fastest level (on a realistic JSON
/// feed most of the saving for a fraction of the CPU of the default level).
pub(crate) struct Deflater {
    z: Compress,
    out: Vec<u8>,
}

impl std::fmt::Debug for Deflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deflater").finish_non_exhaustive()
    }
}

impl Deflater {
    /// A deflater whose window fits `max_window_bits` (what the peer allows us; `None`: 15), or
    /// `None` when zlib cannot keep to it (8 bits).
    pub(crate) fn new(max_window_bits: Option<u8>) -> Option<Deflater> {
        let bits = max_window_bits.unwrap_or(15);
        (9..=15).contains(&bits).then(|| Deflater {
            z: Compress::new_with_window_bits(Compression::fast(), false, bits),
            out: Vec::new(),
        })
    }

    /// The compressed payload of one message (the `00 00 ff ff` tail stripped), or `None` when
    /// the message is shorter than [`COMPRESS_MIN`] or would not get smaller.
    pub(crate) fn deflate(&mut self, payload: &[u8]) -> Option<&[u8]> {
        if payload.len() < COMPRESS_MIN {
            return None;
        }
        self.z.reset();
        self.out.clear();
        // Room for the message and the flush marker: output that does not fit is output that
        // would not be smaller.
        self.out.reserve(payload.len() + 64);
        let before = self.z.total_in();
        self.z
            .compress_vec(payload, &mut self.out, FlushCompress::Sync)
            .ok()?;
        let whole = self.z.total_in() - before == payload.len() as u64;
        if !whole || self.out.len() == self.out.capacity() || !self.out.ends_with(&TAIL) {
            return None;
        }
        let len = self.out.len() - TAIL.len();
        if self.out.capacity() > (1 << 20) && len < (1 << 16) {
            self.out.shrink_to(1 << 16);
        }
        (len < payload.len()).then(|| &self.out[..len])
    }
}

/// Deflaters shared by the hub's threads: a zlib state takes a few hundred KiB, too much for one
/// per connection thread of a hub holding 10,000.
static SHARED: Mutex<Vec<Deflater>> = Mutex::new(Vec::new());

/// Most deflaters kept in [`SHARED`] (more may exist while more threads compress at once).
const SHARED_KEEP: usize = 4;

/// Compresses one message with a shared 15-bit deflater (see [`Deflater::deflate`]).
pub(crate) fn deflate_shared(payload: &[u8]) -> Option<Vec<u8>> {
    if payload.len() < COMPRESS_MIN {
        return None;
    }
    let mut d = SHARED.lock().pop().or_else(|| Deflater::new(None))?;
    let out = d.deflate(payload).map(<[u8]>::to_vec);
    let mut shared = SHARED.lock();
    if shared.len() < SHARED_KEEP {
        shared.push(d);
    }
    out
}

/// The negotiated parameters, as the two sides agreed on them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeflateParams {
    /// The server starts every message with an empty window.
    pub server_no_context_takeover: bool,
    /// The client starts every message with an empty window.
    pub client_no_context_takeover: bool,
    /// The server's LZ77 window, in bits (8–15; `None`: 15).
    pub server_max_window_bits: Option<u8>,
    /// The client's LZ77 window, in bits (8–15; `None`: 15).
    pub client_max_window_bits: Option<u8>,
}

impl DeflateParams {
    /// The `Sec-WebSocket-Extensions` value that offers these parameters (a client's offer:
    /// `client_max_window_bits` without a value says we accept any).
    pub(crate) fn offer(&self) -> String {
        let mut s = String::from("permessage-deflate");
        if self.server_no_context_takeover {
            s.push_str("; server_no_context_takeover");
        }
        if self.client_no_context_takeover {
            s.push_str("; client_no_context_takeover");
        }
        if let Some(bits) = self.server_max_window_bits {
            s.push_str(&format!("; server_max_window_bits={bits}"));
        }
        match self.client_max_window_bits {
            Some(bits) => s.push_str(&format!("; client_max_window_bits={bits}")),
            None => s.push_str("; client_max_window_bits"),
        }
        s
    }

    /// Parses a server's answer (one `permessage-deflate` element); `Err` names what is wrong.
    /// `offered` is what we asked for: the server may not ask more of us than we allowed.
    pub(crate) fn accept(answer: &str, offered: &DeflateParams) -> Result<DeflateParams, String> {
        let mut parts = answer.split(';').map(str::trim);
        if parts.next() != Some("permessage-deflate") {
            return Err(format!("unexpected extension {answer:?}"));
        }
        let mut p = DeflateParams::default();
        let mut seen = Vec::new();
        for param in parts.filter(|p| !p.is_empty()) {
            let (name, value) = match param.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
                None => (param, None),
            };
            if seen.contains(&name) {
                return Err(format!("parameter {name} twice"));
            }
            seen.push(name);
            let bits = |v: Option<&str>| -> Result<u8, String> {
                v.and_then(|v| v.parse::<u8>().ok())
                    .filter(|b| (8..=15).contains(b))
                    .ok_or_else(|| format!("{name} needs a value from 8 to 15"))
            };
            match name {
                "server_no_context_takeover" if value.is_none() => {
                    p.server_no_context_takeover = true
                }
                "client_no_context_takeover" if value.is_none() => {
                    p.client_no_context_takeover = true
                }
                "server_max_window_bits" => p.server_max_window_bits = Some(bits(value)?),
                "client_max_window_bits" => {
                    p.client_max_window_bits = Some(bits(value)?);
                }
                other => return Err(format!("unknown or malformed parameter {other:?}")),
            }
        }
        // A server may decline `server_no_context_takeover`: then it takes its context over,
        // which the inflater follows (it resets only when told).
        if let (Some(asked), Some(got)) = (offered.server_max_window_bits, p.server_max_window_bits)
            && got > asked
        {
            return Err(format!(
                "server_max_window_bits {got} above the {asked} offered"
            ));
        }
        if let (Some(allowed), Some(got)) =
            (offered.client_max_window_bits, p.client_max_window_bits)
            && got > allowed
        {
            return Err(format!(
                "client_max_window_bits {got} above the {allowed} offered"
            ));
        }
        Ok(p)
    }
}

/// The server's side: the first acceptable `permessage-deflate` offer of a client's
/// `Sec-WebSocket-Extensions` header, and the answer to send. The server compresses each message
/// on its own (or not at all below a 15-bit window), so it can grant every parameter as asked: it echoes
/// `server_no_context_takeover`, `client_no_context_takeover` and `server_max_window_bits`, and
/// leaves the client's window at what the client chose. Offers it cannot parse are declined.
pub(crate) fn answer(header: &str) -> Option<(DeflateParams, String)> {
    for offer in header.split(',') {
        let mut parts = offer.split(';').map(str::trim);
        if parts.next() != Some("permessage-deflate") {
            continue;
        }
        let mut p = DeflateParams::default();
        let mut ok = true;
        let mut seen = Vec::new();
        for param in parts.filter(|x| !x.is_empty()) {
            let (name, value) = match param.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
                None => (param, None),
            };
            if seen.contains(&name) {
                ok = false;
            }
            seen.push(name);
            let bits = value
                .and_then(|v| v.parse::<u8>().ok())
                .filter(|b| (8..=15).contains(b));
            match (name, value) {
                ("server_no_context_takeover", None) => p.server_no_context_takeover = true,
                ("client_no_context_takeover", None) => p.client_no_context_takeover = true,
                ("server_max_window_bits", Some(_)) if bits.is_some() => {
                    p.server_max_window_bits = bits;
                }
                ("client_max_window_bits", None) => {}
                ("client_max_window_bits", Some(_)) if bits.is_some() => {
                    p.client_max_window_bits = bits;
                }
                _ => ok = false,
            }
        }
        if !ok {
            continue;
        }
        let mut reply = String::from("permessage-deflate");
        if p.server_no_context_takeover {
            reply.push_str("; server_no_context_takeover");
        }
        if p.client_no_context_takeover {
            reply.push_str("; client_no_context_takeover");
        }
        if let Some(b) = p.server_max_window_bits {
            reply.push_str(&format!("; server_max_window_bits={b}"));
        }
        if let Some(b) = p.client_max_window_bits {
            reply.push_str(&format!("; client_max_window_bits={b}"));
        }
        return Some((p, reply));
    }
    None
}

/// Inflates the peer's compressed messages.
pub(crate) struct Inflater {
    z: Decompress,
    /// Reset before every message (the peer does not take its context over).
    reset_each: bool,
    out: Vec<u8>,
}

/// The tail RFC 7692 §7.2.2 strips from every compressed message.
const TAIL: [u8; 4] = [0, 0, 0xff, 0xff];

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflater")
            .field("reset_each", &self.reset_each)
            .finish()
    }
}

impl Inflater {
    /// `peer_no_context_takeover`: the peer compresses every message on its own.
    pub(crate) fn new(peer_no_context_takeover: bool) -> Self {
        Inflater {
            z: Decompress::new(false),
            reset_each: peer_no_context_takeover,
            out: Vec::new(),
        }
    }

    /// Inflates one message; `Err(true)` when it exceeds `limit` bytes, `Err(false)` when it
    /// is not valid DEFLATE.
    pub(crate) fn inflate(&mut self, compressed: &[u8], limit: usize) -> Result<&[u8], bool> {
        if self.reset_each {
            self.z.reset(false);
        }
        self.out.clear();
        for input in [compressed, &TAIL[..]] {
            let mut input = input;
            loop {
                if self.out.len() == self.out.capacity() {
                    if self.out.len() > limit {
                        return Err(true);
                    }
                    // Grow with what arrives, at most to one byte past the limit.
                    let more = self.out.capacity().clamp(4096, 1 << 20);
                    self.out
                        .reserve(more.min(limit + 1 - self.out.len().min(limit)).max(1));
                }
                let before_in = self.z.total_in();
                let before_out = self.z.total_out();
                let status = self
                    .z
                    .decompress_vec(input, &mut self.out, FlushDecompress::Sync)
                    .map_err(|_| false)?;
                let used = (self.z.total_in() - before_in) as usize;
                let made = (self.z.total_out() - before_out) as usize;
                input = &input[used..];
                if self.out.len() > limit {
                    return Err(true);
                }
                if status == Status::StreamEnd
                    || (input.is_empty() && self.out.len() < self.out.capacity())
                {
                    break;
                }
                if used == 0 && made == 0 && self.out.len() < self.out.capacity() {
                    break; // needs more input than there is
                }
            }
        }
        // A shrink when a large message left a large buffer behind.
        if self.out.capacity() > (1 << 20) && self.out.len() < (1 << 16) {
            let keep = self.out.len();
            self.out.shrink_to(keep.max(4096));
        }
        Ok(&self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Compresses like a peer: raw deflate, sync flush, the tail stripped.
    fn compress(z: &mut Compress, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len() + 64);
        z.compress_vec(data, &mut out, FlushCompress::Sync).unwrap();
        while out.len() == out.capacity() {
            out.reserve(1024);
            z.compress_vec(&[], &mut out, FlushCompress::Sync).unwrap();
        }
        assert!(out.ends_with(&TAIL));
        out.truncate(out.len() - 4);
        out
    }

    #[test]
    fn messages_inflate_with_and_without_context_takeover() {
        for no_takeover in [false, true] {
            let mut peer = Compress::new(Compression::default(), false);
            let mut inflater = Inflater::new(no_takeover);
            for i in 0..5 {
                if no_takeover {
                    peer.reset();
                }
                let msg = format!("{{\"price\":{i},\"qty\":100,\"side\":\"buy\"}}").repeat(50);
                let wire = compress(&mut peer, msg.as_bytes());
                assert!(wire.len() < msg.len() / 5);
                assert_eq!(inflater.inflate(&wire, 1 << 20).unwrap(), msg.as_bytes());
            }
        }
    }

    #[test]
    fn each_message_is_compressed_on_its_own_and_inflates_with_or_without_takeover() {
        let mut ours = Deflater::new(Some(10)).unwrap();
        assert!(
            Deflater::new(Some(8)).is_none(),
            "zlib cannot keep to 8 bits"
        );
        for keep_window in [true, false] {
            let mut peer = Inflater::new(!keep_window);
            for i in 0..5 {
                let msg = format!("{{\"price\":{i},\"qty\":100,\"side\":\"buy\"}}").repeat(20);
                let wire = ours.deflate(msg.as_bytes()).expect("compressible").to_vec();
                assert!(
                    wire.len() < msg.len() / 4,
                    "{} of {}",
                    wire.len(),
                    msg.len()
                );
                assert_eq!(peer.inflate(&wire, 1 << 20).unwrap(), msg.as_bytes());
                let shared = deflate_shared(msg.as_bytes()).expect("compressible");
                let mut fresh = Inflater::new(true);
                assert_eq!(fresh.inflate(&shared, 1 << 20).unwrap(), msg.as_bytes());
            }
        }
        assert!(ours.deflate(&[7u8; COMPRESS_MIN - 1]).is_none(), "short");
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert!(ours.deflate(&noise).is_none(), "not smaller");
    }

    #[test]
    fn a_bomb_stops_at_the_limit() {
        let mut peer = Compress::new(Compression::best(), false);
        let zeros = vec![0u8; 10 << 20];
        let wire = compress(&mut peer, &zeros);
        assert!(wire.len() < 20_000, "{}", wire.len());
        let mut inflater = Inflater::new(false);
        assert_eq!(inflater.inflate(&wire, 1 << 20), Err(true));
        assert!(inflater.out.capacity() <= (1 << 20) + (1 << 20) + 1);
        assert_eq!(
            Inflater::new(false).inflate(b"\xff\xff\xff garbage", 1 << 20),
            Err(false)
        );
    }

    #[test]
    fn a_server_answers_the_first_offer_it_understands() {
        let (p, reply) = answer(
            "x-unknown, permessage-deflate; mystery, permessage-deflate; client_no_context_takeover; client_max_window_bits; server_max_window_bits=11",
        )
        .unwrap();
        assert!(p.client_no_context_takeover && !p.server_no_context_takeover);
        assert_eq!(
            reply,
            "permessage-deflate; client_no_context_takeover; server_max_window_bits=11"
        );
        assert!(answer("permessage-deflate; server_max_window_bits=99").is_none());
        assert!(answer("x-webkit-deflate-frame").is_none());
        // Our own client's offer is answered.
        assert!(answer(&DeflateParams::default().offer()).is_some());
    }

    #[test]
    fn answers_are_checked_against_the_offer() {
        let offer = DeflateParams {
            server_no_context_takeover: true,
            server_max_window_bits: Some(12),
            ..DeflateParams::default()
        };
        assert_eq!(
            offer.offer(),
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=12; client_max_window_bits"
        );
        let p = DeflateParams::accept(
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=10; client_max_window_bits=9",
            &offer,
        )
        .unwrap();
        assert_eq!(p.server_max_window_bits, Some(10));
        assert_eq!(p.client_max_window_bits, Some(9));
        assert!(
            DeflateParams::accept("permessage-deflate; server_max_window_bits=14", &offer).is_err()
        );
        assert!(
            DeflateParams::accept("permessage-deflate; server_max_window_bits=7", &offer).is_err()
        );
        assert!(DeflateParams::accept("permessage-deflate; mystery", &offer).is_err());
        assert!(DeflateParams::accept("x-webkit-deflate-frame", &offer).is_err());
    }
}
