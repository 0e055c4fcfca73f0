//! A link: the I/O side of one connection — its socket, reader thread and writer thread — and
//! the factory that dials and starts one.
//!
//! Each connection gets fresh control and session lanes (so nothing queued for one connection
//! can leak onto the next) and shares the client's user data lane. The reader takes the client's
//! ingress for the life of the link and hands it back when it ends, so ingress state survives
//! reconnects.

use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, bounded};
use parking_lot::Mutex;

use crate::client::affinity::{Affinity, WaitStrategy, pin_current_thread};
use crate::client::claim::{Claim, Take};
use crate::client::config::Overflow;
use crate::client::connect::Dialer;
use crate::client::coordinator::Control;
use crate::client::doorbell::{Doorbell, Lane};
use crate::client::endpoint::Precheck;
use crate::client::events::EventSender;
use crate::client::handover::Handover;
use crate::client::ingress::Ingress;
use crate::client::lane::Outbound;
use crate::client::outbox::Outbox;
use crate::client::reader::{CONTROL_HEADROOM, EVENT_BATCH, Outlets, Reader};
use crate::client::requests::WaiterId;
use crate::client::sink::Sink;
use crate::client::stats::Counters;
use crate::client::stepper::Inbox;
use crate::client::writer::Writer;
use crate::codec::{Decoder, Limits};
use crate::deflate::DeflateParams;
use crate::error::{Error, Result};
use crate::frame::Frame;
use crate::read_buffer::ReadBuffer;
use crate::transport::{Direct, SocketHandle, Stream};

/// The I/O side of one open connection.
pub(crate) struct Link<I> {
    pub epoch: u64,
    /// Its lanes and write side, as the coordinator's core sees them.
    lanes: Lanes,
    socket: SocketHandle,
    /// Dropped to let the reader start reading (after the coordinator has announced the
    /// connection, so its `Connected` event precedes its data).
    go: Option<Sender<()>>,
    /// Dropped to release the reader and writer from any blocking channel operation.
    release: Option<Sender<()>>,
    reader: Option<JoinHandle<Option<I>>>,
    writer: Option<JoinHandle<()>>,
    /// A replacement's hold, until the switch releases the ingress into it.
    pub handover: Option<Arc<Handover<I>>>,
}

/// What a new link's reader starts with: the client's ingress, or (a replacement opened by a
/// make-before-break rotation) a hold where its messages wait for the ingress.
pub(crate) enum Feed<I> {
    Ingress(I),
    Hold(Arc<Handover<I>>),
}

impl<I> Link<I> {
    /// The senders of its lanes, for the coordinator's core.
    pub(crate) fn lanes(&self) -> Lanes {
        self.lanes.clone()
    }

    /// Lets the reader start reading. Idempotent.
    pub(crate) fn go(&mut self) {
        self.go.take();
    }

    /// Shuts the socket down (unblocking `read` and `write`), releases both threads and joins
    /// them. Returns the ingress the reader handed back (`None` if the ingress panicked).
    pub(crate) fn disconnect(&mut self) -> Option<I> {
        self.socket.shutdown();
        self.release.take();
        if let Some(writer) = self.writer.take() {
            writer.thread().unpark(); // It may be parked waiting for work.
            if writer.join().is_err() {
                log::error!("writer thread panicked");
            }
        }
        let ingress = self.reader.take().and_then(|r| r.join().ok().flatten());
        if ingress.is_none() && self.handover.is_none() {
            log::error!("reader thread panicked (in the ingress?); the client cannot reconnect");
        }
        ingress
    }
}

/// The senders of the current link's lanes, and what the direct path needs.
#[derive(Clone)]
pub(crate) struct Lanes {
    pub epoch: u64,
    pub control: Lane<Control>,
    pub session: Lane<Frame>,
    /// The user data lane's receiving end (the direct path takes its request off it).
    pub data: Receiver<Outbound>,
    /// The socket's write side, for direct writes.
    pub sink: Arc<Mutex<Sink>>,
    /// Tells the writer the sink has work for it (a spill, a held frame).
    pub kick: Arc<AtomicBool>,
    /// Wakes the writer.
    pub bell: Arc<Doorbell>,
    /// Frames encoded by their senders: queued ahead of a request on the lane.
    pub outbox: Arc<Outbox>,
}

impl Lanes {
    /// Wakes the writer for work left in the sink.
    fn kick(&self) {
        self.kick.store(true, Ordering::SeqCst);
        self.bell.ring();
    }

    /// The direct path: right after the coordinator accepted the request submitted by `origin`
    /// (with `claim`), writes its frame on the thread that stepped it (the coordinator thread,
    /// or under inline dispatch the submitting one) if it is the
    /// only frame queued and the writer thread is not writing (see [`crate::client::sink`]; called under
    /// the coordinator's lock). Returns what became of the frame; when it is left for the writer
    /// thread, the caller wakes it.
    pub(crate) fn write_direct(
        &self,
        origin: WaiterId,
        claim: &Claim,
        counters: &Counters,
    ) -> Directly {
        if !(self.control.is_empty() && self.session.is_empty()) {
            return Directly::Left;
        }
        let Some(mut sink) = self.sink.try_lock() else {
            return Directly::Left;
        };
        // The writer takes frames off the lane only under the sink's lock, which this thread
        // holds. A frame still accepted and untaken, with nothing held, is still on the lane;
        // as the only frame queued, it is the one at its head.
        // Frames in the outbox were encoded before the request was queued: they go first.
        if !sink.accepts_direct()
            || !claim.is_waiting_to_be_taken()
            || self.data.len() != 1
            || self.outbox.has_bytes()
        {
            return Directly::Left;
        }
        let taken = self.data.try_recv();
        if taken.is_ok() {
            self.bell.room.freed(); // A sender may be waiting for this slot.
        }
        let request = match taken {
            Ok(Outbound::Request(r)) if r.origin == origin => r,
            Ok(other) => {
                // Not reached (see above); the frame goes to the writer thread, first in line.
                log::error!("direct write found another frame at the head of the data lane");
                sink.held = Some(other);
                drop(sink);
                self.kick();
                return Directly::Handled;
            }
            Err(_) => return Directly::Left,
        };
        match request.take(Instant::now()) {
            Take::Write => {}
            // Past its deadline: withdrawn, never written.
            Take::Skip => return Directly::Handled,
            // Not reached: the claim was just accepted. The writer thread waits for it.
            Take::Wait => {
                sink.held = Some(Outbound::Request(request));
                drop(sink);
                self.kick();
                return Directly::Handled;
            }
        }
        let report = request.report_written.then_some(origin);
        match sink.write_direct(&request.frame, report, counters) {
            Direct::Done => Directly::Written(report),
            Direct::Spilled => {
                drop(sink);
                // The writer thread writes the rest (and reports it) before anything else.
                self.kick();
                Directly::Handled
            }
            Direct::Declined => {
                // Not a byte went out (too large to write without blocking, or the socket
                // buffer is full): the writer thread writes it, first in line.
                request.claim.release();
                sink.held = Some(Outbound::Request(request));
                drop(sink);
                self.kick();
                Directly::Handled
            }
        }
    }
}

/// What [`Lanes::write_direct`] did with a request frame.
pub(crate) enum Directly {
    /// Written whole; `Some(origin)`: its write must be reported (mode `Sent`).
    Written(Option<WaiterId>),
    /// Not written, but the writer thread has been told what to do with it (or it was dropped
    /// past its deadline).
    Handled,
    /// Left on the data lane: the writer thread must be woken to take it.
    Left,
}

/// What opening a link gives: the link and the negotiated subprotocol, or the error and (when
/// it was not lost to a failed thread spawn) the ingress back.
pub(crate) type Opened<I> = std::result::Result<(Link<I>, Agreed), (Error, Option<I>)>;

/// What the server agreed to at the upgrade.
#[derive(Debug, Clone, Default)]
pub(crate) struct Agreed {
    /// The subprotocol it selected.
    pub protocol: Option<String>,
    /// permessage-deflate, when offered and accepted.
    pub deflate: Option<DeflateParams>,
}

/// Where a dial in progress publishes its socket, so it can be aborted from another thread.
pub(crate) type AbortSlot = Arc<Mutex<Option<TcpStream>>>;

/// Everything needed to open links for one client.
pub(crate) struct LinkFactory<T> {
    pub name: String,
    pub dialer: Dialer,
    pub limits: Limits,
    pub read_buffer: usize,
    pub overflow: Overflow,
    pub control_queue: usize,
    pub session_queue: usize,
    pub precheck: Option<Precheck>,
    pub affinity: Affinity,
    pub wait: WaitStrategy,
    pub events: EventSender<T>,
    pub inputs: Inbox,
    pub data: Receiver<Outbound>,
    /// Wakes the writer of the current link.
    pub doorbell: Arc<Doorbell>,
    /// Data frames encoded by their senders, shared by every link's writer in turn.
    pub outbox: Arc<Outbox>,
    pub counters: Arc<Counters>,
    /// Most messages a rotation's replacement holds before the switch.
    pub rotation_hold: usize,
}

impl<T: Send + 'static> LinkFactory<T> {
    /// Dials and starts the link's threads. On failure the ingress comes back with the error
    /// (unless a thread could not be spawned after it was handed over).
    pub(crate) fn open<I: Ingress<Output = T>>(
        &self,
        epoch: u64,
        extra_headers: &[(String, String)],
        feed: Feed<I>,
        abort: &AbortSlot,
    ) -> Opened<I> {
        let mut publish = |sock: &TcpStream| *abort.lock() = sock.try_clone().ok();
        let dialed = self.dialer.dial(extra_headers, &mut publish);
        abort.lock().take();
        let (stream, upgraded) = match dialed {
            Ok(ok) => ok,
            Err(e) => {
                let ingress = match feed {
                    Feed::Ingress(ingress) => Some(ingress),
                    Feed::Hold(_) => None,
                };
                return Err((e, ingress));
            }
        };
        if let Some(p) = &upgraded.deflate {
            log::debug!("permessage-deflate negotiated: {p:?}");
        }
        let link = self
            .start(epoch, stream, upgraded.leftover, upgraded.deflate, feed)
            .map_err(|e| (e, None))?;
        let agreed = Agreed {
            protocol: upgraded.protocol,
            deflate: upgraded.deflate,
        };
        Ok((link, agreed))
    }

    /// Starts the reader and writer of an upgraded stream.
    fn start<I: Ingress<Output = T>>(
        &self,
        epoch: u64,
        stream: Stream,
        leftover: Vec<u8>,
        deflate: Option<DeflateParams>,
        feed: Feed<I>,
    ) -> Result<Link<I>> {
        let (ingress, handover) = match feed {
            Feed::Ingress(ingress) => (Some(ingress), None),
            Feed::Hold(handover) => (None, Some(handover)),
        };
        let mut decoder = Decoder::new(self.limits);
        if let Some(p) = deflate {
            decoder.enable_deflate(p.server_no_context_takeover);
        }
        let (read_half, write_half, socket) = stream.split().map_err(Error::Io)?;
        let control_capacity = self.control_queue.max(2 * CONTROL_HEADROOM);
        let (control_tx, control_rx) = bounded(control_capacity);
        let (session_tx, session_rx) = bounded(self.session_queue.max(1));
        let kick = Arc::new(AtomicBool::new(false));
        let sink = Arc::new(Mutex::new(Sink::new(write_half, deflate)));
        // Signal channels are only ever dropped, never sent on. Capacity 1, not 0: a zero-capacity
        // channel allocates each time `select!` waits on it.
        let (release_tx, release_rx) = bounded::<()>(1);
        let (go_tx, go_rx) = bounded::<()>(1);
        let reader = Reader {
            half: read_half,
            decoder,
            buf: ReadBuffer::new(self.read_buffer, &leftover),
            go: go_rx,
            out: Outlets {
                ingress,
                handover: handover.clone(),
                epoch,
                overflow: self.overflow,
                precheck: self.precheck.clone(),
                events: self.events.clone(),
                coord: self.inputs.clone(),
                control: Lane::new(control_tx.clone(), self.doorbell.clone()),
                control_capacity,
                stop: release_rx.clone(),
                counters: self.counters.clone(),
                tally: self.counters.tally(),
                pending: Vec::with_capacity(EVENT_BATCH),
            },
        };
        let writer = Writer {
            sink: sink.clone(),
            data_open: false,
            kick: kick.clone(),
            waiting: None,
            epoch,
            control: control_rx,
            session: session_rx,
            data: self.data.clone(),
            stop: release_rx,
            wait: self.wait,
            doorbell: self.doorbell.clone(),
            seat: None,
            owns_outbox: false,
            outbox: self.outbox.clone(),
            coord: self.inputs.clone(),
            counters: self.counters.clone(),
        };
        let mut link = Link {
            epoch,
            lanes: Lanes {
                epoch,
                control: Lane::new(control_tx, self.doorbell.clone()),
                session: Lane::new(session_tx, self.doorbell.clone()),
                data: self.data.clone(),
                sink,
                kick,
                bell: self.doorbell.clone(),
                outbox: self.outbox.clone(),
            },
            socket,
            go: Some(go_tx),
            release: Some(release_tx),
            reader: None,
            writer: None,
            handover,
        };
        let name = &self.name;
        let (reader_core, writer_core) = (self.affinity.reader, self.affinity.writer);
        let writer_main = move || {
            pin_current_thread(writer_core, "writer");
            writer.run()
        };
        match spawn(format!("{name}-writer"), writer_main) {
            Ok(handle) => link.writer = Some(handle),
            Err(e) => {
                link.socket.shutdown();
                return Err(e);
            }
        }
        let reader_main = move || {
            pin_current_thread(reader_core, "reader");
            reader.run()
        };
        match spawn(format!("{name}-reader"), reader_main) {
            Ok(handle) => link.reader = Some(handle),
            Err(e) => {
                link.disconnect();
                return Err(e);
            }
        }
        Ok(link)
    }
}

/// Spawns a named thread.
pub(crate) fn spawn<R: Send + 'static>(
    name: String,
    f: impl FnOnce() -> R + Send + 'static,
) -> Result<JoinHandle<R>> {
    std::thread::Builder::new()
        .name(name)
        .spawn(f)
        .map_err(Error::Io)
}
