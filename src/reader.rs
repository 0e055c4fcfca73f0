//! The reader thread: blocks in `read`, decodes frames, runs the ingress, routes the rest.
//!
//! Per complete message it calls the user's [`Ingress`] with the payload borrowed from its read
//! buffer and sends whatever the ingress emits straight to the application's event channel. Only
//! what the coordinator needs goes to it: pongs, the peer's close frame, protocol violations and
//! the end of the stream. Pings are answered here, by putting a pong with the same payload on the
//! writer's control lane, so the answer never waits for the coordinator or for queued data.
//!
//! Read buffer: it starts at the configured size and grows only to hold one frame that does not
//! fit (bounded by the frame size limit). Consumed bytes are reclaimed by moving the unread tail
//! (at most one partial frame) to the front before each read.

use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, TrySendError, select};

use crate::codec::{Decoded, Decoder, Step};
use crate::config::Overflow;
use crate::coordinator::{Control, Input, LinkEvent};
use crate::doorbell::Lane;
use crate::endpoint::Precheck;
use crate::event::Event;
use crate::frame::Frame;
use crate::guard;
use crate::ingress::{Ingress, Verdict};
use crate::stats::Counters;
use crate::stepper::Inbox;
use crate::transport::ReadHalf;

/// Pongs are only queued while the control lane has at least this much room left, so a ping
/// flood can never crowd out the coordinator's close frame.
pub(crate) const CONTROL_HEADROOM: usize = 8;

pub(crate) struct Reader<I: Ingress> {
    pub half: ReadHalf,
    pub ingress: I,
    pub decoder: Decoder,
    pub buf: Vec<u8>,
    pub start: usize,
    pub end: usize,
    pub epoch: u64,
    pub overflow: Overflow,
    /// The endpoint's filter for messages the coordinator must see (acknowledgements).
    pub precheck: Option<Precheck>,
    pub events: Sender<Event<I::Output>>,
    pub coord: Inbox,
    pub control: Lane<Control>,
    pub control_capacity: usize,
    /// Disconnected when the link is released.
    pub stop: Receiver<()>,
    /// Disconnected when the reader may start (the coordinator has announced the connection).
    pub go: Receiver<()>,
    pub counters: Arc<Counters>,
}

impl<I: Ingress> Reader<I> {
    /// Runs until the stream ends, the peer breaks the protocol or the link is released;
    /// returns the ingress so its state can outlive the connection.
    pub(crate) fn run(mut self) -> I {
        select! {
            recv(self.go) -> _ => {}
            recv(self.stop) -> _ => {}
        }
        let released = crate::driver::released(&self.stop);
        if !released {
            self.read_loop();
        }
        self.ingress
    }

    /// Returns once the end has been reported to the coordinator (or nobody is left to tell).
    fn read_loop(&mut self) {
        let mut peer_closed = false;
        loop {
            let mut saw_data = false;
            // Decode every complete frame in the buffer; `need` is the size of the next frame
            // once its header is known (0 while it is not), which the buffer must then hold.
            let need = loop {
                let step = match self.decoder.decode(&self.buf[self.start..self.end]) {
                    Ok(step) => step,
                    Err(v) => {
                        log::debug!("peer violated the protocol: {}", v.reason);
                        self.report(LinkEvent::Violation(v));
                        return;
                    }
                };
                let (used, decoded) = match step {
                    Step::Frame(used, decoded) => (used, decoded),
                    Step::Need(total) => break total,
                };
                self.start += used;
                if peer_closed {
                    continue; // Nothing after the peer's close frame means anything.
                }
                match decoded {
                    Decoded::Fragment => {}
                    Decoded::Data(data) => {
                        saw_data = true;
                        // Counted first: once a response has resolved a request, it is counted.
                        Counters::bump(&self.counters.messages_in, 1);
                        Counters::bump(&self.counters.bytes_in, data.as_bytes().len() as u64);
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
                                // On the round trip's path: handled here if the coordinator is
                                // free (inline dispatch).
                                self.coord.step_or_report(input, &self.stop);
                            }
                            let ingress = &mut self.ingress;
                            guard::catch("Ingress::on_message", || ingress.on_message(data))
                        });
                        let verdict = match verdict {
                            Ok(verdict) => verdict,
                            Err(panicked) => {
                                // The connection ends; the ingress goes back to the client.
                                self.report(LinkEvent::CallbackPanicked(panicked));
                                return;
                            }
                        };
                        let event = match verdict {
                            Verdict::Ignore => None,
                            Verdict::Emit(value) => Some(Event::Data {
                                epoch: self.epoch,
                                value,
                            }),
                            Verdict::Forward => Some(Event::Frame {
                                epoch: self.epoch,
                                frame: Frame::from(data),
                            }),
                        };
                        if let Some(event) = event {
                            if !deliver(
                                &self.events,
                                event,
                                self.overflow,
                                &self.stop,
                                &self.counters,
                            ) {
                                return;
                            }
                        }
                    }
                    Decoded::Ping(payload) => {
                        // Counted before the pong is queued: once the peer has the pong, the
                        // ping is counted (the writer may send it before this thread goes on).
                        Counters::bump(&self.counters.pings_in, 1);
                        if self.control.len() + CONTROL_HEADROOM < self.control_capacity {
                            let _ = self.control.try_send(Control::Pong(payload.to_vec()));
                        } else {
                            Counters::bump(&self.counters.pongs_dropped, 1);
                        }
                    }
                    Decoded::Pong(payload) => {
                        let pong = Input::Link {
                            epoch: self.epoch,
                            event: LinkEvent::Pong(payload.to_vec()),
                        };
                        self.coord.report(pong, &self.stop);
                    }
                    Decoded::Close(close) => {
                        peer_closed = true;
                        let close = close.map(|(code, reason)| (code, reason.to_string()));
                        let input = Input::Link {
                            epoch: self.epoch,
                            event: LinkEvent::PeerClose(close),
                        };
                        self.coord.report(input, &self.stop);
                    }
                }
            };
            if saw_data {
                // One clock read per read(2), not per message.
                self.counters.data_seen(std::time::Instant::now());
            }
            if self.half.take_tls_output_pending() {
                let _ = self.control.try_send(Control::FlushTls);
            }
            // Reclaim consumed space (moving at most one partial frame), grow only for a frame
            // larger than the buffer (bounded by the decoder's frame limit, checked before
            // `Need` is returned), then read more.
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if need > self.buf.len() {
                self.buf.resize(need, 0);
            }
            match self.half.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    self.report(LinkEvent::ReaderEnded(None));
                    return;
                }
                Ok(n) => self.end += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let released = crate::driver::released(&self.stop);
                    if !released {
                        log::debug!("read failed: {e}");
                    }
                    self.report(LinkEvent::ReaderEnded(Some(crate::error::from_io(e))));
                    return;
                }
            }
        }
    }
}

impl<I: Ingress> Reader<I> {
    /// Tells the coordinator something, unless the link is released first.
    fn report(&self, event: LinkEvent) {
        let input = Input::Link {
            epoch: self.epoch,
            event,
        };
        self.coord.report(input, &self.stop);
    }
}

/// Hands an event to the application according to the overflow policy. Returns false when the
/// link was released while waiting.
fn deliver<T>(
    events: &Sender<Event<T>>,
    event: Event<T>,
    overflow: Overflow,
    stop: &Receiver<()>,
    counters: &Counters,
) -> bool {
    match events.try_send(event) {
        Ok(()) | Err(TrySendError::Disconnected(_)) => true,
        Err(TrySendError::Full(event)) => match overflow {
            Overflow::DropNewest => {
                Counters::bump(&counters.events_dropped, 1);
                true
            }
            Overflow::Block => {
                Counters::bump(&counters.events_blocked, 1);
                select! {
                    send(events, event) -> _ => true,
                    recv(stop) -> _ => false,
                }
            }
        },
    }
}
