//! The reader thread: blocks in `read`, decodes frames, runs the ingress, routes the rest.
//!
//! Per complete message it calls the user's [`Ingress`] with the payload borrowed from its read
//! buffer and sends whatever the ingress emits straight to the application's event channel: the
//! events decoded from one `read(2)` are handed over together as one batch, up to
//! [`EVENT_BATCH`] at a time (see [`crate::client::events`]): one channel slot and at most one
//! wake-up per batch rather than per message (a batch is always handed over before anything is
//! reported to the coordinator). Only what the coordinator needs goes to it: pongs, the peer's
//! close frame, protocol violations and the end of the stream. Pings are answered here, by putting a pong with the same payload on the
//! writer's control lane, so the answer never waits for the coordinator or for queued data.
//!
//! Read buffer ([`ReadBuffer`]): the configured size, or one frame that does not fit (bounded by
//! the frame size limit). A forwarded message ([`Verdict::Forward`]) is a view of it, not a copy;
//! a message reassembled from fragments is the one that is copied.

use std::sync::Arc;

use crossbeam_channel::{Receiver, select};

use crate::client::config::Overflow;
use crate::client::coordinator::{Control, Input, LinkEvent};
use crate::client::doorbell::Lane;
use crate::client::endpoint::Precheck;
use crate::client::event::Event;
use crate::client::events::{EventSender, Unsent};
use crate::client::handover::{Handover, Offer, decide};
use crate::client::ingress::{Ingress, Verdict};
use crate::client::stats::{Counters, TallyHandle};
use crate::client::stepper::Inbox;
use crate::codec::{Decoded, Decoder, Step};
use crate::frame::{Data, Frame};
use crate::guard;
use crate::read_buffer::ReadBuffer;
use crate::transport::ReadHalf;
use crate::utf8_bytes::Utf8Bytes;

/// Pongs are only queued while the control lane has at least this much room left, so a ping
/// flood can never crowd out the coordinator's close frame.
pub(crate) const CONTROL_HEADROOM: usize = 8;

pub(crate) struct Reader<I: Ingress> {
    pub half: ReadHalf,
    pub decoder: Decoder,
    pub buf: ReadBuffer,
    /// Disconnected when the reader may start (the coordinator has announced the connection).
    pub go: Receiver<()>,
    /// Where decoded messages go (apart from the buffer, so a decoded message may borrow it).
    pub out: Outlets<I>,
}

/// Everything the reader hands decoded messages and link events to.
pub(crate) struct Outlets<I: Ingress> {
    /// `None` on a replacement connection until the switch (see [`Handover`]).
    pub ingress: Option<I>,
    /// A replacement's hold: where its data messages wait for the ingress.
    pub handover: Option<Arc<Handover<I>>>,
    pub epoch: u64,
    pub overflow: Overflow,
    /// The endpoint's filter for messages the coordinator must see (acknowledgements).
    pub precheck: Option<Precheck>,
    pub events: EventSender<I::Output>,
    pub coord: Inbox,
    pub control: Lane<Control>,
    pub control_capacity: usize,
    /// Disconnected when the link is released.
    pub stop: Receiver<()>,
    pub counters: Arc<Counters>,
    /// This reader's inbound message and byte counts.
    pub tally: TallyHandle,
    /// Events decoded from the bytes of one `read(2)`, handed to the application as one batch
    /// (at most [`EVENT_BATCH`]): one channel slot and wake-up per batch, not per message.
    /// Always empty before anything is reported to the coordinator, so lifecycle events keep
    /// their place after the data.
    pub pending: Vec<Event<I::Output>>,
}

/// Most events the reader holds back before handing them over (the first of them waits at most
/// for the decoding of the others: about a microsecond at 64 B).
pub(crate) const EVENT_BATCH: usize = 32;

impl<I: Ingress> Reader<I> {
    /// Runs until the stream ends, the peer breaks the protocol or the link is released;
    /// returns the ingress so its state can outlive the connection (`None` for a replacement
    /// that never received it).
    pub(crate) fn run(mut self) -> Option<I> {
        select! {
            recv(self.go) -> _ => {}
            recv(self.out.stop) -> _ => {}
        }
        let released = crate::client::driver::released(&self.out.stop);
        if !released {
            self.read_loop();
        }
        let handover = self.out.handover.as_ref();
        self.out
            .ingress
            .or_else(|| handover.and_then(|h| h.take_ingress()))
    }

    /// Returns once the end has been reported to the coordinator (or nobody is left to tell).
    fn read_loop(&mut self) {
        let mut peer_closed = false;
        loop {
            let mut saw_data = false;
            // Decode every complete frame in the buffer; `need` is the size of the next frame
            // once its header is known (0 while it is not), which the buffer must then hold.
            let need = loop {
                let step = match self.decoder.decode(self.buf.unread()) {
                    Ok(step) => step,
                    Err(v) => {
                        log::debug!("peer violated the protocol: {}", v.reason);
                        self.out.report(LinkEvent::Violation(v));
                        return;
                    }
                };
                let (used, decoded) = match step {
                    Step::Frame(used, decoded) => (used, decoded),
                    Step::Need(total) => break total,
                };
                if peer_closed {
                    self.buf.consume(used);
                    continue; // Nothing after the peer's close frame means anything.
                }
                // What to forward once the decoded frame's borrow of the buffer has ended.
                let mut forward = None;
                match decoded {
                    Decoded::Fragment => {}
                    Decoded::Data(data) => {
                        saw_data = true;
                        match self.out.on_data(data, &self.buf) {
                            Some(Handled::Forward(f)) => forward = Some(f),
                            Some(Handled::Done) => {}
                            None => return,
                        }
                    }
                    Decoded::Ping(payload) => {
                        // Counted before the pong is queued: once the peer has the pong, the
                        // ping is counted (the writer may send it before this thread goes on).
                        Counters::bump(&self.out.counters.pings_in, 1);
                        if self.out.control.len() + CONTROL_HEADROOM < self.out.control_capacity {
                            let _ = self.out.control.try_send(Control::Pong(payload.to_vec()));
                        } else {
                            Counters::bump(&self.out.counters.pongs_dropped, 1);
                        }
                    }
                    Decoded::Pong(payload) => {
                        self.out.report(LinkEvent::Pong(payload.to_vec()));
                    }
                    Decoded::Close(close) => {
                        peer_closed = true;
                        let close = close.map(|(code, reason)| (code, reason.to_string()));
                        self.out.report(LinkEvent::PeerClose(close));
                    }
                }
                let frame = match forward {
                    None => {
                        self.buf.consume(used);
                        continue;
                    }
                    Some(Forward::Copied(frame)) => {
                        self.buf.consume(used);
                        frame
                    }
                    Some(Forward::View { text, range }) => {
                        let view = self.buf.take(used, range);
                        if text {
                            Frame::Text(Utf8Bytes::from_validated(view))
                        } else {
                            Frame::Binary(view)
                        }
                    }
                };
                let delivered = if self.out.ingress.is_none() {
                    // A replacement before the switch: held for the ingress.
                    self.out.hold(frame)
                } else {
                    let event = Event::Frame {
                        epoch: self.out.epoch,
                        frame,
                    };
                    self.out.queue(event)
                };
                if !delivered {
                    return;
                }
            };
            // The bytes of this read are decoded: their events go to the application now.
            if !self.out.flush() {
                return;
            }
            if saw_data && self.out.ingress.is_some() {
                // One clock read per read(2), not per message. (A replacement's data does not
                // keep the current connection fresh.)
                self.out.counters.data_seen(std::time::Instant::now());
            }
            if self.half.take_tls_output_pending() {
                let _ = self.out.control.try_send(Control::FlushTls);
            }
            // Room for the next frame (`need` is bounded by the decoder's frame limit, checked
            // before `Need` is returned), then read more.
            match self.half.read(self.buf.free(need)) {
                Ok(0) => {
                    self.out.report(LinkEvent::ReaderEnded(None));
                    return;
                }
                Ok(n) => self.buf.filled(n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let released = crate::client::driver::released(&self.out.stop);
                    if !released {
                        log::debug!("read failed: {e}");
                    }
                    self.out
                        .report(LinkEvent::ReaderEnded(Some(crate::error::from_io(e))));
                    return;
                }
            }
        }
    }
}

/// What became of a data message.
enum Handled {
    /// Nothing more to do here (ignored, or emitted as a value).
    Done,
    /// Forward it as a frame.
    Forward(Forward),
}

/// A message to forward as a frame.
enum Forward {
    /// A view of the read buffer: `range` of the frame's bytes.
    View {
        text: bool,
        range: std::ops::Range<usize>,
    },
    /// Reassembled from fragments: already copied.
    Copied(Frame),
}

impl<I: Ingress> Outlets<I> {
    /// Counts a message, lets the precheck and the ingress see it and delivers what it emits.
    /// `None` when the reader must stop (a callback panicked, or the link was released).
    #[inline(always)]
    fn on_data(&mut self, data: Data<'_>, buf: &ReadBuffer) -> Option<Handled> {
        // Counted first: once a response has resolved a request, it is counted.
        self.tally.message(data.as_bytes().len());
        let flagged = match &self.precheck {
            Some(p) => guard::catch("Endpoint::precheck", || p(data)),
            None => Ok(false),
        };
        let verdict = flagged.and_then(|flagged| {
            if flagged {
                let input = Input::Link {
                    epoch: self.epoch,
                    event: LinkEvent::Reply(Frame::from(data)),
                };
                // After the events decoded before it (what the coordinator makes of it, such
                // as `SessionReady`, comes after them). On the round trip's path: handled here
                // if the coordinator is free (inline dispatch).
                self.flush();
                self.coord.step_or_report(input, &self.stop);
            }
            let Some(ingress) = &mut self.ingress else {
                // A replacement before the switch: the message is held as a frame.
                return Ok(Verdict::Forward);
            };
            guard::catch("Ingress::on_message", || ingress.on_message(data))
        });
        let verdict = match verdict {
            Ok(verdict) => verdict,
            Err(panicked) => {
                // The connection ends; the ingress goes back to the client.
                self.report(LinkEvent::CallbackPanicked(panicked));
                return None;
            }
        };
        match verdict {
            Verdict::Ignore => Some(Handled::Done),
            Verdict::Emit(value) => {
                let event = Event::Data {
                    epoch: self.epoch,
                    value,
                };
                self.queue(event).then_some(Handled::Done)
            }
            Verdict::Forward => {
                let text = matches!(data, Data::Text(_));
                Some(Handled::Forward(match buf.range_of(data.as_bytes()) {
                    Some(range) => Forward::View { text, range },
                    None => Forward::Copied(Frame::from(data)),
                }))
            }
        }
    }

    /// A replacement's reader before the switch: holds `frame` for the ingress, or, once the
    /// ingress has been released to this reader, runs it on the frame. False when the reader
    /// must stop (the hold is full, a callback panicked, or the link was released).
    #[cold]
    fn hold(&mut self, frame: Frame) -> bool {
        let Some(handover) = &self.handover else {
            return true; // Not reached: only a replacement runs without the ingress.
        };
        let (mut ingress, frame) = match handover.hold(frame) {
            Offer::Kept => return true,
            Offer::Full => {
                Counters::bump(&self.counters.rotation_hold_full, 1);
                self.report(LinkEvent::HoldFull);
                return false;
            }
            Offer::Ingress(ingress, frame) => (ingress, frame),
        };
        let decided = decide(&mut ingress, self.epoch, frame);
        self.ingress = Some(ingress);
        match decided {
            Ok(None) => true,
            Ok(Some(event)) => self.queue(event),
            Err(panicked) => {
                self.report(LinkEvent::CallbackPanicked(panicked));
                false
            }
        }
    }

    /// Adds an event to the batch for the application, handing the batch over when full.
    /// False when the link was released while waiting for room.
    #[inline(always)]
    fn queue(&mut self, event: Event<I::Output>) -> bool {
        self.pending.push(event);
        self.pending.len() < EVENT_BATCH || self.flush()
    }

    /// Hands the batched events to the application, in order, and starts a new batch in a
    /// recycled allocation. False when the link was released while waiting for room (the rest
    /// is dropped with it).
    #[inline(always)]
    fn flush(&mut self) -> bool {
        if self.pending.is_empty() {
            return true;
        }
        let batch = std::mem::replace(&mut self.pending, self.events.empty_batch());
        deliver(
            &self.events,
            batch,
            self.overflow,
            &self.stop,
            &self.counters,
        )
    }

    /// Tells the coordinator something (after the events decoded before it), unless the link
    /// is released first.
    pub(crate) fn report(&mut self, event: LinkEvent) {
        self.flush();
        let input = Input::Link {
            epoch: self.epoch,
            event,
        };
        self.coord.report(input, &self.stop);
    }
}

/// Hands a batch of events to the application according to the overflow policy: what fits
/// goes at once; for the rest, [`Overflow::Block`] waits for room (and, after a wait, yields
/// the core once if the channel is still more than half full), [`Overflow::DropNewest`] drops
/// and counts. Returns false when the link was released while waiting.
#[inline]
pub(crate) fn deliver<T>(
    events: &EventSender<T>,
    batch: Vec<Event<T>>,
    overflow: Overflow,
    stop: &Receiver<()>,
    counters: &Counters,
) -> bool {
    let mut batch = batch;
    loop {
        let rest = match events.try_send(batch) {
            Unsent::Nothing => return true,
            Unsent::Full(rest) => rest,
        };
        match overflow {
            Overflow::DropNewest => {
                Counters::bump(&counters.events_dropped, rest.len() as u64);
                events.recycle(rest);
                return true;
            }
            Overflow::Block => {
                Counters::bump(&counters.events_blocked, 1);
                if !events.wait_for_room(stop) {
                    return false;
                }
                // Woken by the application taking a batch. If the channel is still more than
                // half full, let an application thread that shares this core drain more of it
                // before this thread fills it again: otherwise the two alternate every batch,
                // each turn a wake-up and two context switches (on one core this cost the
                // frame path a quarter of its throughput). Where the application runs on
                // another core, nothing else wants this one and the yield returns at once.
                if events.over_half() {
                    std::thread::yield_now();
                }
                batch = rest;
            }
        }
    }
}
