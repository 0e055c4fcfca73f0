//! The writer thread: it writes everything to the socket but the requests written directly by
//! their caller (see [`sink`](crate::sink)); both write under the sink's lock, one at a time.
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
use parking_lot::Mutex;

use crate::affinity::WaitStrategy;

use crate::coordinator::{Control, Input, LinkEvent};
use crate::doorbell::Doorbell;
use crate::error::Error;
use crate::frame::{Frame, Outbound};
use crate::sink::{Sink, State};
use crate::stats::Counters;
use crate::stepper::Inbox;

/// Target size of one write batch.
pub(crate) const BATCH_BYTES: usize = 64 * 1024;

pub(crate) struct Writer {
    /// The socket's write side, shared with the direct path.
    pub sink: Arc<Mutex<Sink>>,
    /// A copy of the sink's `data_open`, for deciding whether there is work without its lock.
    pub data_open: bool,
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

impl Writer {
    pub(crate) fn run(mut self) {
        self.doorbell.register();
        let sink = self.sink.clone();
        while self.wait_for_work() {
            // Frames are taken and written under the sink's lock: a direct write can never
            // slip in between.
            let mut sink = sink.lock();
            let first = match self.control.try_recv() {
                Ok(c) => Item::Control(c),
                Err(_) => match self.next_data(&sink.st) {
                    Some(d) => Item::Data(d),
                    None => continue,
                },
            };
            let mut done = Done::default();
            let written = self.write_batch(&mut sink, first, &mut done);
            self.data_open = sink.st.data_open;
            if written.is_err() {
                sink.failed = true; // No direct write may follow a broken stream.
            }
            drop(sink);
            // Reported without the sink's lock, so a caller woken by a report can write its
            // next request directly.
            if done.request > 0 {
                let input = Input::Link {
                    epoch: self.epoch,
                    event: LinkEvent::Written(done.request),
                };
                // Resolves `Sent` requests: handled here if the coordinator is free.
                self.coord.step_or_report(input, &self.stop);
            }
            if done.close {
                self.report(LinkEvent::CloseWritten);
            }
            if let Err(e) = written {
                log::debug!("writer stopping: {e}");
                self.report(LinkEvent::WriteFailed(e));
                break;
            }
        }
        self.doorbell.unregister();
    }

    /// Waits until a lane has something (busy-polling first if the wait strategy says so, then
    /// parked on the doorbell); false once the link is released.
    fn wait_for_work(&self) -> bool {
        let has_work = || {
            !self.control.is_empty()
                || !self.session.is_empty()
                || !self.requests.is_empty()
                || (self.data_open && !self.data.is_empty())
                || crate::driver::released(&self.stop)
        };
        if self.wait.spin(|| has_work().then_some(())).is_none() {
            while !has_work() {
                self.doorbell.wait(has_work);
            }
        }
        !crate::driver::released(&self.stop)
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

    /// Encodes one batch (control first, then data up to [`BATCH_BYTES`]) and writes it; `done`
    /// says what to report (also when it fails part way).
    fn write_batch(&mut self, sink: &mut Sink, first: Item, done: &mut Done) -> Result<(), Error> {
        if !sink.spill.is_empty() {
            // The rest of a direct write goes first.
            sink.half
                .write_raw_all(&sink.spill)
                .map_err(crate::error::from_io)?;
            sink.spill.clear();
            self.counters.sent(Instant::now());
            done.request = sink.spill_report.take().unwrap_or(0);
        }
        let Sink { half, st, .. } = sink;
        st.batch.clear();
        let mut written_request = 0u64;
        let mut flush_tls = false;
        let (mut messages, mut bytes) = (0u64, 0u64);
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
            if let Err(e) = st.write_batch(half) {
                if !half.bytes_reached_socket() {
                    // Not one byte of this batch reached the socket: its requests were never
                    // delivered, so they may be reported as such.
                    self.last_taken.store(taken_before, Ordering::SeqCst);
                }
                return Err(crate::error::from_io(e));
            }
            self.counters.sent(Instant::now());
        } else if flush_tls {
            half.flush_tls().map_err(crate::error::from_io)?;
        }
        Counters::bump(&self.counters.messages_out, messages);
        Counters::bump(&self.counters.bytes_out, bytes);
        done.request = done.request.max(written_request);
        done.close = st.close_sent && !close_was_sent;
        Ok(())
    }
}

/// What a batch wrote that the coordinator must hear about.
#[derive(Default)]
struct Done {
    /// The highest `Sent`-mode request written (0: none).
    request: u64,
    /// The close frame went out with this batch.
    close: bool,
}
