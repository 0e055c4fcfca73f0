//! The socket's write side: what the writer thread writes with, and the direct path.
//!
//! A [`Sink`] holds the write half of the socket and the framing state (masks, the batch buffer,
//! the close handshake). It sits behind a mutex shared by the writer thread, which holds it for
//! each batch — from taking the first frame off a lane until the batch is written — and by the
//! coordinator's [stepper](crate::client::stepper), which may write a request frame *directly*
//! right after registering it — on the coordinator thread (actor dispatch) or on the thread that
//! submitted it (inline dispatch) — without waking the writer, when the writer is not writing
//! and nothing is queued ahead of the request. That saves the round trip's hand-off to the
//! writer.
//!
//! The direct write never blocks: it uses a non-blocking `send(2)`; what the kernel does not
//! take is kept as *spill* and the writer thread is woken to write it, before anything else.
//! Order on the wire is the order frames were taken, because both paths take and write under
//! the same lock.

use std::sync::Arc;
use std::time::Instant;

use crate::client::claim::Claim;
use crate::client::coordinator::Control;
use crate::client::lane::Outbound;
use crate::client::masks::Masks;
use crate::client::requests::WaiterId;
use crate::client::stats::Counters;
use crate::codec::{self, OP_PING, OP_PONG};
use crate::deflate::{DeflateParams, Deflater};
use crate::error::Error;
use crate::frame::{CloseCode, Frame};
use crate::transport::{Direct, WriteHalf};

/// Largest request payload written directly; larger ones go through the writer thread (a large
/// frame would mostly end up as spill anyway).
pub(crate) const DIRECT_MAX: usize = 16 * 1024;

/// The socket's write side and its framing state.
pub(crate) struct Sink {
    pub half: WriteHalf,
    pub st: State,
    /// Wire bytes a direct write could not finish: written first by the writer thread.
    pub spill: Vec<u8>,
    /// The request in the spill whose write must be reported (mode `Sent`).
    pub spill_report: Option<WaiterId>,
    /// A request frame taken off the data lane before the coordinator registered it: written
    /// (with everything behind it) once registered.
    pub held: Option<Outbound>,
    /// A write failed: the stream may be cut mid-frame, nothing more may be written directly.
    pub failed: bool,
}

impl Sink {
    /// `deflate`: what the server agreed to, if permessage-deflate was negotiated.
    pub(crate) fn new(half: WriteHalf, deflate: Option<DeflateParams>) -> Self {
        Sink {
            half,
            st: State {
                masks: Masks::new(),
                batch: Vec::new(),
                pending_close: None,
                close_sent: false,
                close_notify_due: false,
                data_open: false,
                deflater: deflate.and_then(|p| Deflater::new(p.client_max_window_bits)),
            },
            spill: Vec::new(),
            spill_report: None,
            held: None,
            failed: false,
        }
    }

    /// The claim and deadline of the held request frame, if any.
    pub(crate) fn held_request(&self) -> Option<(Arc<Claim>, Instant)> {
        match &self.held {
            Some(Outbound::Request(r)) => Some((r.claim.clone(), r.deadline)),
            _ => None,
        }
    }

    /// True if a frame may be written directly now: the session ready, nothing held or
    /// spilled, no close under way, no failed write (and a platform with a non-blocking `send`:
    /// Linux).
    pub(crate) fn accepts_direct(&self) -> bool {
        cfg!(target_os = "linux")
            && self.st.data_open
            && self.held.is_none()
            && self.spill.is_empty()
            && self.st.pending_close.is_none()
            && !self.st.close_sent
            && !self.failed
    }

    /// Writes `frame` on the calling thread without blocking ([`Direct::Declined`]: nothing was
    /// done, queue it instead). `report` is the request's submit if its write must be
    /// reported; for a spilled frame the writer thread reports it.
    pub(crate) fn write_direct(
        &mut self,
        frame: &Frame,
        report: Option<WaiterId>,
        counters: &Counters,
    ) -> Direct {
        let Some((text, payload)) = frame.data_payload() else {
            return Direct::Declined;
        };
        if payload.len() > DIRECT_MAX {
            return Direct::Declined;
        }
        let Ok(mask) = self.st.masks.next() else {
            return Direct::Declined; // The writer thread meets the error and reports it.
        };
        self.st.batch.clear();
        self.st.put_data(text, payload, mask);
        let done = self.half.write_direct(&self.st.batch, &mut self.spill);
        self.st.batch.clear();
        if done == Direct::Done {
            counters.sent(Instant::now()); // A spill is stamped when the writer finishes it.
        }
        if done != Direct::Declined {
            Counters::bump(&counters.direct_writes, 1);
            Counters::bump(&counters.messages_out, 1);
            Counters::bump(&counters.bytes_out, payload.len() as u64);
        }
        if done == Direct::Spilled {
            self.spill_report = report;
        }
        done
    }
}

/// A close frame waiting for the data queued before it.
pub(crate) struct PendingClose {
    frame: Option<(CloseCode, String)>,
    /// Data frames still to write before the close: those queued when the close arrived.
    pub data_before: usize,
}

/// The framing state of a connection's outbound stream.
pub(crate) struct State {
    pub masks: Masks,
    pub batch: Vec<u8>,
    pub pending_close: Option<PendingClose>,
    pub close_sent: bool,
    /// The batch carries our close frame: [`write_batch`](Self::write_batch) ends the TLS
    /// stream after it.
    close_notify_due: bool,
    /// The session is ready: user data may be written.
    pub data_open: bool,
    /// Compresses data frames (permessage-deflate negotiated, and a window zlib can keep to).
    pub deflater: Option<Deflater>,
}

impl State {
    /// Encodes a control frame. A close is not encoded yet: it waits for the `queued` data frames
    /// that were accepted before it, so `send` then `close` never loses the sent frames.
    pub(crate) fn encode_control(
        &mut self,
        c: Control,
        queued: usize,
        flush_tls: &mut bool,
    ) -> Result<(), Error> {
        if self.close_sent {
            return Ok(());
        }
        match c {
            Control::Ping(p) => {
                let mask = self.masks.next()?;
                codec::encode(OP_PING, truncated(&p), mask, &mut self.batch);
            }
            Control::Pong(p) => {
                let mask = self.masks.next()?;
                codec::encode(OP_PONG, truncated(&p), mask, &mut self.batch);
            }
            Control::Close(frame) => {
                if self.pending_close.is_none() {
                    self.pending_close = Some(PendingClose {
                        frame,
                        data_before: queued,
                    });
                }
            }
            Control::FlushTls => *flush_tls = true,
            Control::OpenData => self.data_open = true,
            Control::Retire => {
                // Make-before-break: take no more user data (what is still queued goes out on
                // the replacement, which opens the lane once this writer is joined) and close
                // with 1000 at once, after the frames already taken.
                self.data_open = false;
                if self.pending_close.is_none() {
                    self.pending_close = Some(PendingClose {
                        frame: Some((CloseCode::NORMAL, "rotated".to_string())),
                        data_before: 0,
                    });
                }
            }
        }
        Ok(())
    }

    /// Encodes the pending close once nothing queued before it remains.
    pub(crate) fn encode_close_if_due(&mut self) -> Result<(), Error> {
        if self
            .pending_close
            .as_ref()
            .is_some_and(|p| p.data_before == 0)
            && let Some(p) = self.pending_close.take()
        {
            let mask = self.masks.next()?;
            let close = p
                .frame
                .as_ref()
                .map(|(code, reason)| (*code, reason.as_str()));
            codec::encode_close(close, mask, &mut self.batch);
            self.close_sent = true;
            self.close_notify_due = true;
        }
        Ok(())
    }

    /// Writes the batch to the socket. The batch that carries our close frame (ours or the
    /// echo of the server's) is followed by a TLS `close_notify`, in the same write: the
    /// orderly end of our side of the stream, sent once since the close frame is encoded once.
    /// A connection dropped without writing a close frame (an abort, a failed write) sends no
    /// `close_notify`, and the peer sees a truncated stream.
    pub(crate) fn write_batch(&mut self, half: &mut WriteHalf) -> std::io::Result<()> {
        if std::mem::take(&mut self.close_notify_due) {
            half.write_all_then_close_notify(&self.batch)
        } else {
            half.write_all(&self.batch)
        }
    }

    /// Encodes a data frame into the batch; returns its payload length, or `None` if discarded
    /// because the close frame has already been sent.
    pub(crate) fn encode_data(
        &mut self,
        frame: &Outbound,
        counters: &Counters,
    ) -> Result<Option<usize>, Error> {
        if self.close_sent {
            Counters::bump(&counters.discarded_after_close, 1);
            return Ok(None);
        }
        // Only data frames are ever queued on these lanes.
        let Some((text, payload)) = frame.data() else {
            return Ok(None);
        };
        let mask = self.masks.next()?;
        self.put_data(text, payload, mask);
        if let Some(p) = &mut self.pending_close {
            p.data_before = p.data_before.saturating_sub(1);
        }
        Ok(Some(payload.len()))
    }
}

impl State {
    /// Appends a data frame to the batch: compressed when permessage-deflate was negotiated and
    /// it pays (see [`Deflater::deflate`]), as it is otherwise.
    pub(crate) fn put_data(&mut self, text: bool, payload: &[u8], mask: [u8; 4]) {
        let opcode = if text {
            codec::OP_TEXT
        } else {
            codec::OP_BINARY
        };
        match self.deflater.as_mut().and_then(|d| d.deflate(payload)) {
            Some(compressed) => {
                codec::encode(opcode | codec::RSV1, compressed, mask, &mut self.batch)
            }
            None => codec::encode(opcode, payload, mask, &mut self.batch),
        }
    }
}

fn truncated(payload: &[u8]) -> &[u8] {
    &payload[..payload.len().min(codec::MAX_CONTROL_PAYLOAD)]
}
