//! The outbox: user data frames encoded by the sending thread, ready for the writer to write.
//!
//! A `send` of a data frame (owned or prepared) normally costs a hand-off: the frame goes into
//! the data lane, and the writer thread takes it, masks and encodes it into its batch, and
//! frees its payload. When the data lane is empty, the sender instead masks and encodes the
//! frame itself, straight into this shared buffer, under a lock held for the encoding only;
//! the writer takes the whole buffer at the start of its next batch (a swap, not a copy) and
//! writes it with everything else. The payload is dropped on the thread that made it.
//!
//! Order is kept because the data lane and the outbox are only ever used in one order:
//!
//! - a sender encodes here only while the data lane is empty, under the outbox lock, so every
//!   frame already queued on the lane was queued before;
//! - the writer takes the outbox's bytes first in a batch, then frames off the lane, all under
//!   the same lock, so nothing is encoded here between its taking a frame off the lane and
//!   encoding it.
//!
//! Only the sender that finds the outbox empty rings the writer's doorbell: bytes appended
//! after it are taken with its frame (the writer empties the outbox whole, under the lock), and
//! an outbox the writer has emptied is found empty by the next sender, which rings. That saves
//! the doorbell's fence on most `send`s (model-checked with loom, `loom_models` below).
//!
//! The writer closes the outbox (senders go to the lane) while it holds a request frame whose
//! registration it waits for, while a close is pending or sent, after a failed write and
//! between connections, and opens it at the end of a batch when none of these holds. Bytes left
//! here when a connection ends are treated like the frames left on the data lane: discarded and
//! counted (`Stats::discarded_on_disconnect`), or, with `buffer_while_disconnected`, written on
//! the next connection once its session is ready. The outbox holds at most [`OUTBOX_BYTES`]: a
//! sender that finds it full waits until the writer has taken it
//! ([`Room`](crate::client::doorbell::Room), once per batch), or, in `try_send`, queues on the lane.

use crate::client::lane::Outbound;
use crate::client::masks::Masks;
use crate::codec;
use crate::deflate::COMPRESS_MIN;
use crate::sync::{AtomicBool, Mutex, Ordering};

/// Most bytes the outbox holds: four write batches' worth, so that at least four of the largest
/// common frames (64 KiB) fit before a sender waits for the writer. On a shared core each wait is
/// a hand-off to the writer and back; at two batches' worth one 64 KiB frame filled the outbox,
/// and the sender and writer switched about four times per frame. Eight batches' worth measured
/// slower again: a write that large outgrows the socket's send buffer on loopback and the writer
/// stalls in the kernel (BENCHMARKS.md, change 16). The outbox and the writer's batch buffer
/// each keep up to this much (plus one frame) of capacity for the life of the client.
pub(crate) const OUTBOX_BYTES: usize = 4 * crate::client::writer::BATCH_BYTES;

/// Frames encoded by senders, shared by the client's senders and the current link's writer.
#[derive(Default)]
pub(crate) struct Outbox {
    inner: Mutex<Inner>,
    /// True while bytes wait here (read by the writer without the lock, to decide to wake).
    has_bytes: AtomicBool,
}

#[derive(Default)]
pub(crate) struct Inner {
    /// Encoded frames, in order.
    bytes: Vec<u8>,
    /// Frames and payload bytes in `bytes`.
    frames: u64,
    payload: u64,
    /// Senders may encode here.
    open: bool,
    /// The connection compresses (permessage-deflate): frames it would compress go by the lane,
    /// to be compressed by the writer.
    compress: bool,
    /// Masks for the frames encoded here (their own pool; `None` until first used).
    masks: Option<Masks>,
}

/// What [`Outbox::try_encode`] did with a frame.
pub(crate) enum Encoded {
    /// Encoded into the outbox, which was empty: ring the writer.
    Done,
    /// Encoded after bytes already waiting in the outbox: whoever put the first of them there
    /// has rung the writer, which takes the outbox whole (under the same lock) and so takes
    /// these bytes too, or else an outbox found empty rings it again. No ring needed.
    Appended,
    /// The outbox is closed, the frame too large for it, or the lane not empty: queue the frame
    /// on the lane.
    Refused(Outbound),
    /// The outbox is full: wait until the writer has taken it (or queue on the lane).
    Full(Outbound),
}

impl Outbox {
    /// Encodes `frame` here if the outbox is open, `lane_empty` holds (checked under the lock)
    /// and there is room.
    pub(crate) fn try_encode(&self, frame: Outbound, lane_empty: impl Fn() -> bool) -> Encoded {
        // Request frames wait for their registration: they always go by the lane.
        let payload = match &frame {
            Outbound::Request(_) => None,
            other => other.data(),
        };
        let Some((text, payload)) = payload.filter(|(_, p)| p.len() <= OUTBOX_BYTES) else {
            return Encoded::Refused(frame);
        };
        let mut inner = self.inner.lock();
        if !inner.open || !lane_empty() || (inner.compress && payload.len() >= COMPRESS_MIN) {
            return Encoded::Refused(frame);
        }
        if !inner.bytes.is_empty() && inner.bytes.len() + payload.len() > OUTBOX_BYTES {
            return Encoded::Full(frame);
        }
        let Ok(mask) = inner.masks.get_or_insert_with(Masks::new).next() else {
            // The writer meets the same failure and reports it.
            return Encoded::Refused(frame);
        };
        let first = inner.bytes.is_empty();
        codec::encode_data(text, payload, mask, &mut inner.bytes);
        inner.frames += 1;
        inner.payload += payload.len() as u64;
        self.has_bytes.store(true, Ordering::Release);
        drop(inner);
        drop(frame); // Freed here, on the thread that allocated it.
        if first {
            Encoded::Done
        } else {
            Encoded::Appended
        }
    }

    /// True while encoded frames wait to be written.
    pub(crate) fn has_bytes(&self) -> bool {
        self.has_bytes.load(Ordering::Acquire)
    }

    /// Drops the frames waiting here (the connection they were sent for is gone and nothing
    /// queued for one connection goes out on the next); returns how many.
    pub(crate) fn discard(&self) -> u64 {
        let mut inner = self.inner.lock();
        inner.bytes.clear();
        let frames = std::mem::take(&mut inner.frames);
        inner.payload = 0;
        self.has_bytes.store(false, Ordering::Release);
        frames
    }

    /// Locks the outbox for the writer's batch.
    pub(crate) fn lock(&self) -> Taking<'_> {
        Taking {
            outbox: self,
            inner: self.inner.lock(),
        }
    }
}

/// The writer's hold on the outbox while it builds a batch.
pub(crate) struct Taking<'a> {
    outbox: &'a Outbox,
    inner: crate::sync::MutexGuard<'a, Inner>,
}

impl Taking<'_> {
    /// Moves the waiting frames to the end of `batch` (a swap when `batch` is empty); returns
    /// how many frames and payload bytes they were.
    pub(crate) fn take_into(&mut self, batch: &mut Vec<u8>) -> (u64, u64) {
        if self.inner.bytes.is_empty() {
            return (0, 0);
        }
        if batch.is_empty() {
            std::mem::swap(batch, &mut self.inner.bytes);
        } else {
            batch.extend_from_slice(&self.inner.bytes);
            self.inner.bytes.clear();
        }
        self.outbox.has_bytes.store(false, Ordering::Release);
        let taken = (self.inner.frames, self.inner.payload);
        (self.inner.frames, self.inner.payload) = (0, 0);
        taken
    }

    /// Opens or closes the outbox to senders; `compress`: the connection compresses, so
    /// frames long enough to be compressed are refused (the writer compresses them).
    pub(crate) fn set_open(&mut self, open: bool, compress: bool) {
        self.inner.open = open;
        self.inner.compress = compress;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{Frame, PreparedFrame};

    #[test]
    fn encodes_only_while_open_and_the_lane_is_empty_and_discards_what_waits() {
        let outbox = Outbox::default();
        let frame = || Outbound::Prepared(PreparedFrame::text("hi"));
        assert!(matches!(
            outbox.try_encode(frame(), || true),
            Encoded::Refused(_)
        ));
        outbox.lock().set_open(true, false);
        assert!(matches!(
            outbox.try_encode(frame(), || false),
            Encoded::Refused(_)
        ));
        assert!(matches!(outbox.try_encode(frame(), || true), Encoded::Done));
        let owned = Outbound::Owned(Frame::binary(vec![1u8; 3]));
        assert!(matches!(
            outbox.try_encode(owned, || true),
            Encoded::Appended
        ));
        assert!(outbox.has_bytes());
        // 2 + 4 + 2 bytes, then 2 + 4 + 3.
        let mut batch = Vec::new();
        assert_eq!(outbox.lock().take_into(&mut batch), (2, 5));
        assert_eq!(batch.len(), 17);
        assert!(!outbox.has_bytes());
        assert!(matches!(outbox.try_encode(frame(), || true), Encoded::Done));
        assert_eq!(outbox.discard(), 1);
        assert!(!outbox.has_bytes());
        assert_eq!(outbox.lock().take_into(&mut batch), (0, 0));
    }
}

/// Loom model of the outbox's wake-up rule (`RUSTFLAGS="--cfg loom" cargo test --lib loom`):
/// the real `try_encode`, `take_into` and doorbell.
#[cfg(all(loom, test))]
mod loom_models {
    use super::*;
    use crate::client::doorbell::Doorbell;
    use crate::frame::Frame;
    use crate::sync::{model, thread};
    use loom::sync::Arc;

    /// A sender encodes three frames and rings only when it found the outbox empty
    /// (`Encoded::Done`), as `Client::enqueue` does, while the writer takes the outbox and
    /// parks on the doorbell until it has all three. Explores appends that skip the ring
    /// before and after the writer's take and its last look before parking. A lost wake-up
    /// (the writer parked with frames waiting and nobody left to ring) is a deadlock. (One
    /// sender: loom wrongly lets an unpark wake a thread blocked on a mutex, so a second
    /// sender ringing while the writer waits for the outbox's lock cannot be modelled.)
    #[test]
    fn loom_outbox_an_append_that_skips_the_ring_is_never_lost() {
        const FRAMES: u64 = 3;
        model(|| {
            let bell = Arc::new(Doorbell::default());
            let outbox = Arc::new(Outbox::default());
            outbox.lock().set_open(true, false);
            outbox.inner.lock().masks = Some(Masks::new());
            let sender = {
                let (bell, outbox) = (bell.clone(), outbox.clone());
                thread::spawn(move || {
                    for _ in 0..FRAMES {
                        let frame = Outbound::Owned(Frame::binary(vec![1u8; 3]));
                        match outbox.try_encode(frame, || true) {
                            Encoded::Done => bell.ring(),
                            Encoded::Appended => {}
                            _ => panic!("the open outbox refused a small frame"),
                        }
                    }
                })
            };
            let seat = bell.register();
            let (mut taken, mut batch) = (0, Vec::new());
            while taken < FRAMES {
                taken += outbox.lock().take_into(&mut batch).0;
                if taken < FRAMES {
                    bell.wait(seat, || outbox.has_bytes());
                }
            }
            bell.unregister(seat);
            sender.join().unwrap();
        });
    }
}
