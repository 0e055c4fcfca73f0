//! The writer thread: it writes everything to the socket but the requests written directly by
//! the thread that registered them (see [`sink`](crate::client::sink)); both write under the
//! sink's lock, one at a time.
//!
//! It parks on the [`Doorbell`] until a lane or the [outbox](crate::client::outbox) has
//! something, then builds one batch: the frames senders encoded into the outbox, every queued
//! control frame (pongs, pings, close), then data frames off the lanes until the batch reaches
//! [`BATCH_BYTES`] (more for a backlog of small frames, see `LANE_DRAIN_BYTES`) or the lanes are
//! empty, checking the control lane again before each data frame. The batch is written with one
//! `write_all` (one syscall for small frames; under TLS, encrypted and written in passes of up
//! to 64 KiB). So a pong never waits behind more than one batch of data, and many small
//! frames cost one syscall.
//!
//! A close frame waits for the data frames that were queued before it arrived (so `send` then
//! `close` loses nothing); after it is written nothing else is: later frames are discarded and
//! counted.
//! The thread ends when its link is released or a write fails (reported to the coordinator).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crossbeam_channel::Receiver;
use parking_lot::Mutex;

use crate::client::affinity::WaitStrategy;

use crate::client::claim::{Claim, Take};
use crate::client::coordinator::{Control, Input, LinkEvent};
use crate::client::doorbell::{Doorbell, SeatId};
use crate::client::lane::Outbound;
use crate::client::outbox::{Outbox, Taking};
use crate::client::requests::WaiterId;
use crate::client::sink::Sink;
use crate::client::stats::Counters;
use crate::client::stepper::Inbox;
use crate::error::Error;
use crate::frame::Frame;

/// Target size of one write batch: what the writer takes off the lanes for one write (the
/// outbox's bytes, at most [`OUTBOX_BYTES`](crate::client::outbox::OUTBOX_BYTES), come on top).
pub(crate) const BATCH_BYTES: usize = 64 * 1024;

/// How much of the data lane one batch may take when the lane holds more than
/// [`BATCH_BYTES`]: enough to empty a full lane of small frames (1,024 frames of up to 250 B),
/// so that senders go back to encoding into the outbox instead of queueing behind the lane
/// batch after batch.
const LANE_DRAIN_BYTES: usize = 4 * BATCH_BYTES;

pub(crate) struct Writer {
    /// The socket's write side, shared with the direct path.
    pub sink: Arc<Mutex<Sink>>,
    /// A copy of the sink's `data_open`, for deciding whether there is work without its lock.
    pub data_open: bool,
    /// Set (and the doorbell rung) by a direct write that left work in the sink: a spill, or a
    /// frame it took off the data lane but could not write.
    pub kick: Arc<AtomicBool>,
    /// The claim and deadline of the request frame the writer is waiting at (registration not
    /// seen yet): it waits until the claim is decided or the deadline passes, whichever first.
    pub waiting: Option<(Arc<Claim>, Instant)>,
    pub epoch: u64,
    pub control: Receiver<Control>,
    /// Session frames (auth, subscriptions, application pings): ahead of user data.
    pub session: Receiver<Frame>,
    /// The user data lane, shared by every connection of the client: `send`s and request frames
    /// in their callers' order. Read only once the session is ready ([`Control::OpenData`]).
    pub data: Receiver<Outbound>,
    /// Disconnected when the link is released.
    pub stop: Receiver<()>,
    /// How to wait for frames.
    pub wait: WaitStrategy,
    /// Rung by every lane's sender; the writer parks on it when all lanes are empty.
    pub doorbell: Arc<Doorbell>,
    /// The writer's seat at the doorbell (taken when the thread starts).
    pub seat: Option<SeatId>,
    /// This writer has opened the user data lane (its session was ready): from then on it
    /// opens and closes the outbox. A replacement waiting for the switch leaves the outbox to
    /// the writer of the current connection.
    pub owns_outbox: bool,
    /// Data frames encoded by their senders (see [`crate::client::outbox`]): first in each batch.
    pub outbox: Arc<Outbox>,
    pub coord: Inbox,
    pub counters: Arc<Counters>,
}

enum Item {
    Control(Control),
    Data(Outgoing),
}

/// A data frame: a session frame or a user frame (a request's claim already taken).
enum Outgoing {
    Plain(Frame),
    User(Outbound),
}

impl Writer {
    pub(crate) fn run(mut self) {
        self.seat = Some(self.doorbell.register());
        let sink = self.sink.clone();
        let outbox = self.outbox.clone();
        let mut done = Done::default();
        while self.wait_for_work() {
            // Frames are taken and written under the sink's lock: a direct write can never
            // slip in between.
            let mut sink = sink.lock();
            // Held until the batch is built: no sender encodes into the outbox between this
            // thread's taking a frame off the data lane and encoding it.
            let outbox = outbox.lock();
            self.kick.store(false, Ordering::SeqCst);
            let first = match self.control.try_recv() {
                Ok(c) => Some(Item::Control(c)),
                Err(_) => self.next_data(&mut sink, &mut done).map(Item::Data),
            };
            // A batch with nothing new still runs for a spill, for frames in the outbox, and for
            // a close waiting on frames that were then skipped (withdrawn or expired): it may be
            // due now.
            let due = first.is_some()
                || !sink.spill.is_empty()
                || sink.st.pending_close.is_some()
                || (sink.st.data_open && self.outbox.has_bytes());
            let written = if due {
                self.write_batch(&mut sink, outbox, first, &mut done)
            } else {
                drop(outbox);
                Ok(())
            };
            self.data_open = sink.st.data_open;
            self.waiting = sink.held_request();
            if written.is_err() {
                sink.failed = true; // No direct write may follow a broken stream.
            }
            drop(sink);
            // And once more after the write: senders that found the outbox or the lane full
            // while it was written go on now, instead of at the next batch.
            self.doorbell.room.freed();
            // Reported without the sink's lock, so a caller woken by a report can write its
            // next request directly.
            for origin in done.written.drain(..) {
                let input = Input::Link {
                    epoch: self.epoch,
                    event: LinkEvent::Written(origin),
                };
                // Resolves `Sent` requests: handled here if the coordinator is free.
                self.coord.step_or_report(input, &self.stop);
            }
            if std::mem::take(&mut done.close) {
                self.report(LinkEvent::CloseWritten);
            }
            if let Err(e) = written {
                log::debug!("writer stopping: {e}");
                self.report(LinkEvent::WriteFailed(e));
                break;
            }
        }
        if let Some(seat) = self.seat {
            self.doorbell.unregister(seat);
        }
        self.doorbell.room.freed();
        // Senders queue on the lane until the next connection's writer opens the outbox again.
        if self.owns_outbox {
            self.outbox.lock().set_open(false, false);
        }
    }

    /// Waits until a lane has something (busy-polling first if the wait strategy says so, then
    /// parked on the doorbell); false once the link is released.
    fn wait_for_work(&self) -> bool {
        let has_work = || {
            let data = match &self.waiting {
                Some((claim, deadline)) => claim.is_decided() || Instant::now() >= *deadline,
                None => !self.data.is_empty(),
            };
            !self.control.is_empty()
                || !self.session.is_empty()
                || (self.data_open && (data || self.outbox.has_bytes()))
                || self.kick.load(Ordering::SeqCst)
                || crate::client::driver::released(&self.stop)
        };
        if self.wait.spin(|| has_work().then_some(())).is_none() {
            // Held at a request the coordinator has not registered: not past its deadline,
            // when the frame is dropped (the coordinator may be stuck delivering an event).
            let until = self.waiting.as_ref().map(|(_, deadline)| *deadline);
            let Some(seat) = self.seat else { return true };
            while !has_work() {
                self.doorbell.wait_until(seat, has_work, until);
            }
        }
        !crate::client::driver::released(&self.stop)
    }

    fn report(&self, event: LinkEvent) {
        let input = Input::Link {
            epoch: self.epoch,
            event,
        };
        self.coord.report(input, &self.stop);
    }

    /// Frames queued now that a close must wait for.
    fn queued(&self, sink: &Sink) -> usize {
        let data = if sink.st.data_open {
            self.data.len() + usize::from(sink.held.is_some())
        } else {
            0
        };
        self.session.len() + data
    }

    /// The next data frame: session frames first, then, once the session is ready, user data
    /// and request frames in the order they were queued. A request frame whose registration
    /// the coordinator has not handled yet is held (with everything behind it) until it has.
    fn next_data(&self, sink: &mut Sink, done: &mut Done) -> Option<Outgoing> {
        if let Ok(f) = self.session.try_recv() {
            return Some(Outgoing::Plain(f));
        }
        if !sink.st.data_open {
            return None;
        }
        loop {
            let item = match sink.held.take() {
                Some(item) => item,
                None => self.data.try_recv().ok()?,
            };
            let Outbound::Request(request) = &item else {
                return Some(Outgoing::User(item));
            };
            match request.take(Instant::now()) {
                Take::Write => {
                    done.taken.push(request.claim.clone());
                    if request.report_written {
                        done.pending.push(request.origin);
                    }
                    return Some(Outgoing::User(item));
                }
                Take::Skip => continue,
                Take::Wait => {
                    sink.held = Some(item);
                    return None;
                }
            }
        }
    }

    /// Writes the rest of a direct write (it goes before anything else).
    fn write_spill(&self, sink: &mut Sink, done: &mut Done) -> Result<(), Error> {
        if sink.spill.is_empty() {
            return Ok(());
        }
        sink.half
            .write_raw_all(&sink.spill)
            .map_err(crate::error::from_io)?;
        sink.spill.clear();
        self.counters.sent(Instant::now());
        done.written.extend(sink.spill_report.take());
        Ok(())
    }

    /// Encodes one batch (control first, then data up to [`BATCH_BYTES`]) and writes it; `done`
    /// says what to report (also when it fails part way). If no byte of the batch reached the
    /// socket, its request frames were not delivered: their claims are given back.
    fn write_batch(
        &mut self,
        sink: &mut Sink,
        outbox: Taking<'_>,
        first: Option<Item>,
        done: &mut Done,
    ) -> Result<(), Error> {
        let result = self.build_and_write(sink, outbox, first, done);
        if let Err((_, reached)) = &result {
            if !reached {
                for claim in &done.taken {
                    claim.untake();
                }
            }
            done.pending.clear();
        }
        done.taken.clear();
        result.map_err(|(e, _)| e)
    }

    /// [`Writer::write_batch`]'s work; an error says whether any byte of the batch may have
    /// reached the socket.
    fn build_and_write(
        &mut self,
        sink: &mut Sink,
        mut outbox: Taking<'_>,
        first: Option<Item>,
        done: &mut Done,
    ) -> Result<(), (Error, bool)> {
        let unsent = |e| (e, false);
        self.write_spill(sink, done).map_err(unsent)?;
        sink.st.batch.clear();
        let mut flush_tls = false;
        // Frames in the outbox were encoded while the data lane was empty: before anything on
        // it. They wait for the session, like the lane's frames.
        let (mut messages, mut bytes) = if sink.st.data_open && !sink.st.close_sent {
            outbox.take_into(&mut sink.st.batch)
        } else {
            (0, 0)
        };
        let from_outbox = sink.st.batch.len();
        let mut held = None;
        match first {
            Some(Item::Control(c)) => {
                let queued = self.queued(sink);
                sink.st
                    .encode_control(c, queued, &mut flush_tls)
                    .map_err(unsent)?;
            }
            Some(Item::Data(d)) => held = Some(d),
            None => {}
        }
        let close_was_sent = sink.st.close_sent;
        loop {
            while let Ok(c) = self.control.try_recv() {
                let queued = self.queued(sink) + usize::from(held.is_some());
                sink.st
                    .encode_control(c, queued, &mut flush_tls)
                    .map_err(unsent)?;
            }
            sink.st.encode_close_if_due().map_err(unsent)?;
            let next = match held.take() {
                Some(d) => d,
                None if sink.st.batch.len() - from_outbox >= LANE_DRAIN_BYTES => break,
                None => match self.next_data(sink, done) {
                    Some(d) => d,
                    None => break,
                },
            };
            let frame = match next {
                Outgoing::Plain(f) => Outbound::Owned(f),
                Outgoing::User(u) => u,
            };
            if let Some(len) = sink
                .st
                .encode_data(&frame, &self.counters)
                .map_err(unsent)?
            {
                messages += 1;
                bytes += len as u64;
            }
        }
        // The lane ran dry: whatever the close was waiting for has been written.
        if self.queued(sink) == 0
            && let Some(p) = &mut sink.st.pending_close
        {
            p.data_before = 0;
        }
        sink.st.encode_close_if_due().map_err(unsent)?;
        // Senders may encode into the outbox while this batch is written, unless a frame they
        // must follow is held or the stream is closing.
        let open = sink.st.data_open
            && sink.held.is_none()
            && sink.st.pending_close.is_none()
            && !sink.st.close_sent
            && !sink.failed;
        self.owns_outbox |= sink.st.data_open;
        if self.owns_outbox {
            outbox.set_open(open, sink.st.deflater.is_some());
        }
        drop(outbox);
        // Senders waiting for room (a full outbox or lane) refill them while this batch is
        // written: one wake-up per batch.
        self.doorbell.room.freed();
        let Sink { half, st, .. } = sink;
        if !st.batch.is_empty() {
            if let Err(e) = st.write_batch(half) {
                let reached = half.bytes_reached_socket();
                return Err((crate::error::from_io(e), reached));
            }
            self.counters.sent(Instant::now());
        } else if flush_tls {
            half.flush_tls()
                .map_err(|e| (crate::error::from_io(e), true))?;
        }
        done.written.append(&mut done.pending);
        Counters::bump(&self.counters.messages_out, messages);
        Counters::bump(&self.counters.bytes_out, bytes);
        done.close = st.close_sent && !close_was_sent;
        Ok(())
    }
}

/// What a batch wrote that the coordinator must hear about (buffers reused across batches).
#[derive(Default)]
struct Done {
    /// Claims of the request frames in the batch being built (given back if it reaches nothing).
    taken: Vec<Arc<Claim>>,
    /// `Sent`-mode requests in the batch being built.
    pending: Vec<WaiterId>,
    /// `Sent`-mode requests written: to report.
    written: Vec<WaiterId>,
    /// The close frame went out with this batch.
    close: bool,
}
