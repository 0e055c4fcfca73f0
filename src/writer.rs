//! The writer thread: the only thread that writes to the socket.
//!
//! It parks on the [`Doorbell`](crate::doorbell::Doorbell) until a lane has something, then
//! builds one batch:
//! every queued control frame first (pongs, pings, close), then data frames until the batch
//! reaches [`BATCH_BYTES`] or the data lane is empty, checking the control lane again before each
//! data frame. The batch is written with one `write_all` (one TLS encryption pass, one syscall
//! for small frames). So a pong never waits behind more than one batch of data, and many small
//! frames cost one syscall.
//!
//! A close frame waits for the data frames that were queued before it arrived (so `send` then
//! `close` loses nothing); after it is written nothing else is: later frames are discarded and
//! counted.
//! The thread ends when its link is released or a write fails (reported to the coordinator).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crossbeam_channel::Receiver;

use crate::affinity::WaitStrategy;

use crate::codec::{self, OP_BINARY, OP_PING, OP_PONG, OP_TEXT};
use crate::coordinator::{Control, Input, LinkEvent};
use crate::doorbell::Doorbell;
use crate::error::Error;
use crate::frame::{CloseCode, Frame, Outbound};
use crate::stats::Counters;
use crate::stepper::Inbox;
use crate::transport::WriteHalf;

/// Target size of one write batch.
pub(crate) const BATCH_BYTES: usize = 64 * 1024;

/// Masks for client frames, drawn from the crypto provider's secure RNG in blocks.
struct Masks {
    pool: [u8; 1024],
    pos: usize,
    /// Looked up once: building a provider allocates, drawing from its RNG does not.
    rng: &'static dyn rustls::crypto::SecureRandom,
}

impl Masks {
    fn new() -> Self {
        let rng = rustls::crypto::ring::default_provider().secure_random;
        Masks {
            pool: [0; 1024],
            pos: 1024,
            rng,
        }
    }

    fn next(&mut self) -> Result<[u8; 4], Error> {
        if self.pos + 4 > self.pool.len() {
            self.rng
                .fill(&mut self.pool)
                .map_err(|_| Error::Io(std::io::Error::other("secure random source failed")))?;
            self.pos = 0;
        }
        let mut mask = [0u8; 4];
        mask.copy_from_slice(&self.pool[self.pos..self.pos + 4]);
        self.pos += 4;
        Ok(mask)
    }
}

pub(crate) struct Writer {
    pub half: WriteHalf,
    pub epoch: u64,
    pub control: Receiver<Control>,
    /// Session frames (auth, subscriptions, application pings): ahead of user data.
    pub session: Receiver<Frame>,
    /// The user data lane, shared by every connection of the client; read only once the
    /// session is ready ([`Control::OpenData`]).
    pub data: Receiver<Outbound>,
    /// Request frames for `send_and_confirm`: after session frames, before user data.
    pub requests: Receiver<RequestFrame>,
    /// The highest request sequence number taken from `requests` (stored before the frame's
    /// deadline is checked and before it is written; read by the coordinator).
    pub last_taken: Arc<AtomicU64>,
    /// Disconnected when the link is released.
    pub stop: Receiver<()>,
    /// How to wait for frames.
    pub wait: WaitStrategy,
    /// Rung by every lane's sender; the writer parks on it when all lanes are empty.
    pub doorbell: Arc<Doorbell>,
    pub coord: Inbox,
    pub counters: Arc<Counters>,
}

/// A request frame on its way to the socket.
#[derive(Debug)]
pub(crate) struct RequestFrame {
    pub seq: u64,
    pub frame: Frame,
    pub deadline: Instant,
    /// Report it written (`LinkEvent::Written`): only mode `Sent` needs that.
    pub report_written: bool,
}

enum Item {
    Control(Control),
    Data(Outgoing),
}

/// A data frame: a session frame, a user frame, or a tracked request.
enum Outgoing {
    Plain(Frame),
    User(Outbound),
    Request(RequestFrame),
}

/// A close frame waiting for the data queued before it.
struct PendingClose {
    frame: Option<(CloseCode, String)>,
    /// Data frames still to write before the close: those queued when the close arrived.
    data_before: usize,
}

impl Writer {
    pub(crate) fn run(mut self) {
        let mut st = State {
            masks: Masks::new(),
            batch: Vec::new(),
            pending_close: None,
            close_sent: false,
            data_open: false,
        };
        self.doorbell.register();
        // `None`: the link is released.
        while let Some(first) = self.next_item(&st) {
            if let Err(e) = self.write_batch(&mut st, first) {
                log::debug!("writer stopping: {e}");
                self.report(LinkEvent::WriteFailed(e));
                break;
            }
        }
        self.doorbell.unregister();
    }

    /// Waits for the next frame (busy-polling first if the wait strategy says so, then parked
    /// on the doorbell); `None` once the link is released.
    fn next_item(&self, st: &State) -> Option<Item> {
        let poll = || {
            if let Ok(c) = self.control.try_recv() {
                return Some(Some(Item::Control(c)));
            }
            if let Some(d) = self.next_data(st) {
                return Some(Some(Item::Data(d)));
            }
            crate::driver::released(&self.stop).then_some(None)
        };
        if let Some(polled) = self.wait.spin(poll) {
            return polled;
        }
        loop {
            if let Some(polled) = poll() {
                return polled;
            }
            self.doorbell.wait(|| {
                !self.control.is_empty()
                    || !self.session.is_empty()
                    || !self.requests.is_empty()
                    || (st.data_open && !self.data.is_empty())
                    || crate::driver::released(&self.stop)
            });
        }
    }

    fn report(&self, event: LinkEvent) {
        let input = Input::Link {
            epoch: self.epoch,
            event,
        };
        self.coord.report(input, &self.stop);
    }

    /// Frames queued now that a close must wait for.
    fn queued(&self, st: &State) -> usize {
        self.session.len() + self.requests.len() + if st.data_open { self.data.len() } else { 0 }
    }

    /// The next data frame: session frames first, then requests, then user data once the
    /// session is ready.
    fn next_data(&self, st: &State) -> Option<Outgoing> {
        if let Ok(f) = self.session.try_recv() {
            return Some(Outgoing::Plain(f));
        }
        if let Ok(r) = self.requests.try_recv() {
            return Some(Outgoing::Request(r));
        }
        st.data_open
            .then(|| self.data.try_recv().ok().map(Outgoing::User))
            .flatten()
    }

    /// Encodes one batch (control first, then data up to [`BATCH_BYTES`]) and writes it.
    fn write_batch(&mut self, st: &mut State, first: Item) -> Result<(), Error> {
        st.batch.clear();
        let mut flush_tls = false;
        let (mut messages, mut bytes) = (0u64, 0u64);
        let mut written_request = 0u64;
        let taken_before = self.last_taken.load(Ordering::SeqCst);
        let mut held = None;
        match first {
            Item::Control(c) => {
                let queued = self.queued(st);
                st.encode_control(c, queued, &mut flush_tls)?;
            }
            Item::Data(d) => held = Some(d),
        }
        let close_was_sent = st.close_sent;
        loop {
            while let Ok(c) = self.control.try_recv() {
                let queued = self.queued(st) + usize::from(held.is_some());
                st.encode_control(c, queued, &mut flush_tls)?;
            }
            st.encode_close_if_due()?;
            let next = match held.take() {
                Some(d) => d,
                None if st.batch.len() >= BATCH_BYTES => break,
                None => match self.next_data(st) {
                    Some(d) => d,
                    None => break,
                },
            };
            let frame = match next {
                Outgoing::Plain(f) => Outbound::Owned(f),
                Outgoing::User(u) => u,
                Outgoing::Request(r) => {
                    // Taken first, deadline second: once the coordinator has seen a request as
                    // not taken after its deadline, this check is sure to skip it.
                    self.last_taken.store(r.seq, Ordering::SeqCst);
                    if Instant::now() >= r.deadline {
                        continue;
                    }
                    if r.report_written {
                        written_request = r.seq;
                    }
                    Outbound::Owned(r.frame)
                }
            };
            if let Some(len) = st.encode_data(&frame, &self.counters)? {
                messages += 1;
                bytes += len as u64;
            }
        }
        // The lane ran dry: whatever the close was waiting for has been written.
        if self.queued(st) == 0 {
            if let Some(p) = &mut st.pending_close {
                p.data_before = 0;
            }
        }
        st.encode_close_if_due()?;
        if !st.batch.is_empty() {
            if let Err(e) = self.half.write_all(&st.batch) {
                if !self.half.bytes_reached_socket() {
                    // Not one byte of this batch reached the socket: its requests were never
                    // delivered, so they may be reported as such.
                    self.last_taken.store(taken_before, Ordering::SeqCst);
                }
                return Err(crate::error::from_io(e));
            }
            self.counters.sent(Instant::now());
        } else if flush_tls {
            self.half.flush_tls().map_err(crate::error::from_io)?;
        }
        Counters::bump(&self.counters.messages_out, messages);
        Counters::bump(&self.counters.bytes_out, bytes);
        if written_request > 0 {
            let input = Input::Link {
                epoch: self.epoch,
                event: LinkEvent::Written(written_request),
            };
            // Resolves `Sent` requests: handled here if the coordinator is free.
            self.coord.step_or_report(input, &self.stop);
        }
        if st.close_sent && !close_was_sent {
            self.report(LinkEvent::CloseWritten);
        }
        Ok(())
    }
}

struct State {
    masks: Masks,
    batch: Vec<u8>,
    pending_close: Option<PendingClose>,
    close_sent: bool,
    /// The session is ready: user data may be written.
    data_open: bool,
}

impl State {
    /// Encodes a control frame. A close is not encoded yet: it waits for the `queued` data frames
    /// that were accepted before it, so `send` then `close` never loses the sent frames.
    fn encode_control(
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
        }
        Ok(())
    }

    /// Encodes the pending close once nothing queued before it remains.
    fn encode_close_if_due(&mut self) -> Result<(), Error> {
        if self
            .pending_close
            .as_ref()
            .is_some_and(|p| p.data_before == 0)
        {
            if let Some(p) = self.pending_close.take() {
                let mask = self.masks.next()?;
                let close = p
                    .frame
                    .as_ref()
                    .map(|(code, reason)| (*code, reason.as_str()));
                codec::encode_close(close, mask, &mut self.batch);
                self.close_sent = true;
            }
        }
        Ok(())
    }

    /// Encodes a data frame into the batch; returns its payload length, or `None` if discarded
    /// because the close frame has already been sent.
    fn encode_data(
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
        let opcode = if text { OP_TEXT } else { OP_BINARY };
        let mask = self.masks.next()?;
        codec::encode(opcode, payload, mask, &mut self.batch);
        if let Some(p) = &mut self.pending_close {
            p.data_before = p.data_before.saturating_sub(1);
        }
        Ok(Some(payload.len()))
    }
}

fn truncated(payload: &[u8]) -> &[u8] {
    &payload[..payload.len().min(codec::MAX_CONTROL_PAYLOAD)]
}
