//! [`Client`]: the handle user threads hold.
//!
//! All methods are blocking or non-blocking calls on bounded channels; there is no runtime. The
//! handle is `Send + Sync`, so one client can be shared (by reference or in an `Arc`) by several
//! threads that send, while one thread consumes [`Client::events`].

pub(crate) mod affinity;
pub(crate) mod claim;
pub(crate) mod config;
pub(crate) mod connect;
pub(crate) mod coordinator;
pub(crate) mod doorbell;
pub(crate) mod driver;
pub(crate) mod endpoint;
pub(crate) mod event;
pub(crate) mod events;
pub(crate) mod handover;
pub(crate) mod health;
pub(crate) mod ingress;
pub(crate) mod lane;
pub(crate) mod link;
pub(crate) mod liveness;
pub(crate) mod masks;
pub(crate) mod outbox;
pub(crate) mod proxy;
pub(crate) mod reader;
pub(crate) mod requests;
pub(crate) mod session;
pub(crate) mod sink;
pub(crate) mod stats;
pub(crate) mod stepper;
pub(crate) mod target;
pub(crate) mod ticket;
pub(crate) mod writer;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError, bounded};

use crate::backoff::Reconnect;
use crate::client::affinity::{WaitStrategy, pin_current_thread};
use crate::client::claim::{Claim, RequestFrame};
use crate::client::config::{ClientBuilder, Config};
use crate::client::connect::Dialer;
use crate::client::coordinator::{Control, Coordinator, Input, Settings, State};
use crate::client::doorbell::{Doorbell, Lane};
use crate::client::driver::Driver;
use crate::client::endpoint::Endpoint;
use crate::client::events::Events;
use crate::client::ingress::Ingress;
use crate::client::lane::Outbound;
use crate::client::link::{AbortSlot, Feed, LinkFactory, spawn};
use crate::client::outbox::{Encoded, Outbox};
use crate::client::reader::EVENT_BATCH;
use crate::client::requests::{ConfirmMode, Outcome, Request, Submission, Undelivered, WaiterId};
use crate::client::stats::{Counters, Stats};
use crate::client::stepper::{Core, Dispatch, Inbox, Shared};
use crate::client::ticket::Ticket;
use crate::codec::Limits;
use crate::deadline;
use crate::deflate::DeflateParams;
use crate::error::{Error, Result};
use crate::frame::{CloseCode, Frame, PreparedFrame};

/// Capacity of the coordinator's input channel (user commands and reader/writer reports).
const INPUT_QUEUE: usize = 1024;

/// A self-healing WebSocket client: one connection at a time, each served by a reader and a
/// writer thread, all driven by one coordinator thread.
///
/// ```no_run
/// use std::time::Duration;
/// use syncws::{Client, CloseCode, Event, Frame};
///
/// let client = Client::builder("ws://127.0.0.1:9001/").connect()?;
/// client.send(Frame::text("hello"))?;
/// if let Ok(Event::Frame { frame, .. }) = client.events().recv_timeout(Duration::from_secs(1)) {
///     println!("got {frame:?}");
/// }
/// client.close(CloseCode::NORMAL, "done")?;
/// client.shutdown(Duration::from_secs(1));
/// # Ok::<(), syncws::Error>(())
/// ```
///
/// Dropping the client has the effect of [`shutdown`](Client::shutdown) with the configured
/// `close_timeout`.
pub struct Client<T> {
    inputs: Inbox,
    data: Lane<Outbound>,
    /// The data lane's sender without the doorbell: a request frame does not wake the writer,
    /// which could not write it before the coordinator has registered it (and rings then).
    requests: Sender<Outbound>,
    /// Wakes the writer (which may be waiting at a request frame its caller gave up on).
    doorbell: Arc<Doorbell>,
    /// Data frames encoded on the sending thread (see [`crate::client::outbox`]).
    outbox: Arc<Outbox>,
    events: Events<T>,
    counters: Arc<Counters>,
    buffer_while_disconnected: bool,
    /// Dropped to make the coordinator stop waiting on a full event channel.
    abort: Option<Sender<()>>,
    /// Disconnects when the coordinator thread exits.
    done: Receiver<()>,
    coordinator: Option<JoinHandle<()>>,
    close_timeout: Duration,
    protocol: Option<String>,
    deflate: Option<DeflateParams>,
    next_waiter: AtomicU64,
    /// The endpoint can recognise responses (it has a precheck).
    can_confirm: bool,
    wait: WaitStrategy,
}

impl Client<std::convert::Infallible> {
    /// Starts building a client for `url` (`ws://` or `wss://`).
    pub fn builder(url: &str) -> ClientBuilder {
        ClientBuilder::new(url)
    }
}

/// How to wait for room in the data lane.
enum Wait {
    Block,
    Until(Duration),
    Never,
}

impl<T: Send + 'static> Client<T> {
    /// Dials the first connection on the calling thread, then starts the coordinator thread.
    /// Used by [`ClientBuilder::connect_with`].
    pub(crate) fn start<I>(
        dialer: Dialer,
        config: Config,
        endpoint: Box<dyn Endpoint>,
        reconnect: Option<Box<dyn Reconnect>>,
        topics: Vec<String>,
        ingress: I,
    ) -> Result<Client<T>>
    where
        I: Ingress<Output = T>,
    {
        let (input_tx, input_rx) = bounded(INPUT_QUEUE);
        let (data_tx, data_rx) = bounded(config.data_queue.max(1));
        let doorbell = Arc::new(Doorbell::default());
        let outbox = Arc::new(Outbox::default());
        let (event_tx, event_rx) = events::channel(config.event_queue.max(1), EVENT_BATCH);
        let (abort_tx, abort_rx) = bounded::<()>(1);
        let (done_tx, done_rx) = bounded::<()>(1);
        let counters = Arc::new(Counters::new());
        let settings = Settings {
            close_timeout: config.close_timeout,
            stable_after: config.stable_after,
            keepalive: config.keepalive,
            stale_after: config.stale_after,
            ack_timeout: config.ack_timeout,
            max_topics: config.max_subscriptions,
            latency: config.latency_policy,
            max_pending: config.max_pending.max(1),
            rotate_after: config.rotate_after,
            rotation_timeout: config
                .connect_timeout
                .saturating_add(config.handshake_timeout)
                .saturating_add(config.ack_timeout),
            rotation_overlap: config.rotation_overlap,
        };
        let precheck = endpoint.precheck();
        let can_confirm = precheck.is_some();
        let mut coordinator = Coordinator::new(settings, endpoint, reconnect, Instant::now());
        let headers = coordinator
            .first_dial_headers()
            .map_err(|p| Error::Config(format!("{} panicked: {}", p.callback, p.message)))?;
        let inline = config.dispatch == Dispatch::Inline;
        let shared = Shared::new(Core::new(coordinator, counters.clone()));
        let inbox = Inbox::new(input_tx, shared.clone(), inline);
        let factory = Arc::new(LinkFactory {
            name: config.name.clone(),
            dialer,
            limits: Limits {
                max_frame: config.max_frame_size,
                max_message: config.max_message_size,
            },
            read_buffer: config.read_buffer_size,
            overflow: config.overflow,
            control_queue: config.control_queue,
            session_queue: config.max_subscriptions + 64,
            precheck,
            affinity: config.affinity,
            wait: config.wait,
            events: event_tx,
            inputs: inbox.clone(),
            data: data_rx,
            doorbell: doorbell.clone(),
            outbox: outbox.clone(),
            counters: counters.clone(),
            rotation_hold: config.rotation_hold,
        });
        let (link, agreed) = factory
            .open(1, &headers, Feed::Ingress(ingress), &AbortSlot::default())
            .map_err(|(e, _)| e)?;
        let mut driver = Driver::new(
            shared,
            input_rx,
            factory,
            abort_rx,
            link,
            counters.clone(),
            config.buffer_while_disconnected,
        );
        // The first steps run here, so the client is ready (or knows it is not) on return. The
        // builder's topics join the desired set first, so the first session replays them too.
        for topic in topics {
            driver.step(Input::Subscribe(topic));
        }
        driver.step(Input::Connected { epoch: 1 });
        driver.starting = false;
        let coordinator_core = config.affinity.coordinator;
        let coordinator = spawn(format!("{}-coord", config.name), move || {
            let _done = done_tx;
            pin_current_thread(coordinator_core, "coordinator");
            driver.run();
        })?;
        Ok(Client {
            inputs: inbox,
            requests: data_tx.clone(),
            data: Lane::new(data_tx, doorbell.clone()),
            doorbell,
            outbox,
            events: event_rx,
            counters,
            buffer_while_disconnected: config.buffer_while_disconnected,
            abort: Some(abort_tx),
            done: done_rx,
            coordinator: Some(coordinator),
            close_timeout: config.close_timeout,
            protocol: agreed.protocol,
            deflate: agreed.deflate,
            next_waiter: AtomicU64::new(1),
            can_confirm,
            wait: config.wait,
        })
    }
}

impl<T> Client<T> {
    /// Queues a frame, waiting while the data lane is full.
    ///
    /// Text and binary frames are written once the session is ready, in the order they were
    /// sent: while nothing is queued, masked and encoded on the calling thread into the
    /// writer's next batch (the outbox, at most 256 KiB), otherwise on the bounded data lane;
    /// a full outbox or lane waits for the writer's next batch. Pings and pongs go on the
    /// control lane; a close frame starts the close handshake (like [`close`](Client::close)).
    ///
    /// Errors: [`Error::NotConnected`] while the client is between connections or its session
    /// is not ready yet (unless
    /// [`buffer_while_disconnected`](crate::ClientBuilder::buffer_while_disconnected));
    /// [`Error::Closed`] once it is closing or stopped for good.
    pub fn send(&self, frame: Frame) -> Result<()> {
        self.enqueue(frame, Wait::Block)
    }

    /// Like [`send`](Client::send), waiting at most `timeout` for room in the data lane;
    /// [`Error::Timeout`]`("send")` if none came (the frame is dropped).
    pub fn send_timeout(&self, frame: Frame, timeout: Duration) -> Result<()> {
        self.enqueue(frame, Wait::Until(timeout))
    }

    /// Like [`send`](Client::send) but never waits: [`Error::QueueFull`] if the data lane is
    /// full (the frame is dropped, memory does not grow).
    pub fn try_send(&self, frame: Frame) -> Result<()> {
        self.enqueue(frame, Wait::Never)
    }

    /// Queues a [`PreparedFrame`] (a reference to its shared payload: no allocation), waiting
    /// while the data lane is full. Errors as for [`send`](Client::send).
    pub fn send_prepared(&self, frame: &PreparedFrame) -> Result<()> {
        self.enqueue_data(Outbound::Prepared(frame.clone()), Wait::Block)
    }

    /// Like [`send_prepared`](Client::send_prepared) but never waits: [`Error::QueueFull`] if
    /// the data lane is full.
    pub fn try_send_prepared(&self, frame: &PreparedFrame) -> Result<()> {
        self.enqueue_data(Outbound::Prepared(frame.clone()), Wait::Never)
    }

    fn enqueue(&self, frame: Frame, wait: Wait) -> Result<()> {
        match route(frame)? {
            Ok(data) => self.enqueue_data(Outbound::Owned(data), wait),
            Err(command) => {
                self.check_connected()?;
                self.command(command)
            }
        }
    }

    fn enqueue_data(&self, data: Outbound, wait: Wait) -> Result<()> {
        match self.counters.state() {
            State::Ready => {}
            State::Closing | State::Stopped => return Err(Error::Closed { code: None }),
            _ if self.buffer_while_disconnected => {}
            _ => return Err(Error::NotConnected),
        }
        let deadline = match wait {
            Wait::Until(timeout) => Some(crate::deadline::after(Instant::now(), timeout)),
            _ => None,
        };
        let closed = Error::Closed { code: None };
        let mut data = data;
        loop {
            // With nothing queued on the lane, encode the frame here, straight into the outbox;
            // else queue it on the lane. When either is full, wait for the writer's next batch
            // and try both again, the outbox first: a sender that queued on the lane while the
            // outbox was full or closed goes back to the outbox once the lane is empty.
            // `outbox_full` says which one to wait for.
            let outbox_full;
            (data, outbox_full) = match self.outbox.try_encode(data, || self.data.is_empty()) {
                Encoded::Done => {
                    self.doorbell.ring();
                    return Ok(());
                }
                Encoded::Appended => return Ok(()),
                Encoded::Full(back) if !matches!(wait, Wait::Never) => (back, true),
                Encoded::Full(back) | Encoded::Refused(back) => match self.data.try_send(back) {
                    Ok(()) => return Ok(()),
                    Err(TrySendError::Disconnected(_)) => return Err(closed),
                    Err(TrySendError::Full(back)) => (back, false),
                },
            };
            match wait {
                Wait::Never => return Err(Error::QueueFull),
                _ if deadline.is_some_and(|d| Instant::now() >= d) => {
                    return Err(Error::Timeout("send"));
                }
                _ => {}
            }
            let has_room = || {
                if outbox_full {
                    !self.outbox.has_bytes()
                } else {
                    !self.data.is_full()
                }
            };
            self.doorbell.room.wait(has_room, deadline);
        }
    }

    /// Replaces the connection now, make-before-break: a second connection is opened, the
    /// session restored on it, and the switch made once it is ready, as
    /// [`ClientBuilder::rotate_after`] describes. Returns at once; the result arrives as
    /// [`Event::Rotated`](crate::Event::Rotated) or
    /// [`Event::RotationFailed`](crate::Event::RotationFailed). Ignored while a rotation is
    /// already under way.
    ///
    /// Returns [`Error::NotConnected`] unless the session is ready.
    pub fn rotate(&self) -> Result<()> {
        if self.counters.state() != State::Ready {
            return Err(Error::NotConnected);
        }
        self.command(Input::Rotate)
    }

    /// Sends a ping (payload truncated to 125 bytes). The answer arrives as
    /// [`Event::Pong`](crate::Event::Pong).
    pub fn ping(&self, payload: impl Into<Vec<u8>>) -> Result<()> {
        self.check_connected()?;
        self.command(Input::Send(Control::Ping(payload.into())))
    }

    /// Starts the close handshake with `code` and `reason` (truncated to 123 bytes). Returns at
    /// once; [`Event::Closed`](crate::Event::Closed) reports the end. No reconnect follows a
    /// close the application asked for. Called between connections (while waiting to
    /// reconnect), it cancels the reconnect: no further event follows, since the last
    /// connection's `Closed` was already delivered.
    ///
    /// Returns [`Error::Config`] for a code that may not appear on the wire (RFC 6455 §7.4:
    /// only 1000-1003, 1007-1014 and 3000-4999 may be sent); the connection stays open.
    pub fn close(&self, code: CloseCode, reason: &str) -> Result<()> {
        check_close_code(code)?;
        if self.counters.state() == State::Stopped {
            return Err(Error::Closed { code: None });
        }
        self.command(Input::Close {
            code,
            reason: reason.to_string(),
        })
    }

    /// Adds `topic` to the desired subscriptions. If the session is up it is subscribed now;
    /// otherwise it is subscribed when the next connection's session is restored. Every
    /// connection replays the whole desired set exactly once (after authentication when the
    /// endpoint is auth-gated). Refusals arrive as
    /// [`Event::SubscriptionRejected`](crate::Event::SubscriptionRejected).
    pub fn subscribe(&self, topic: impl Into<String>) -> Result<()> {
        self.command(Input::Subscribe(topic.into()))
    }

    /// Removes `topic` from the desired subscriptions (and unsubscribes now if connected and
    /// the endpoint has an unsubscribe frame).
    pub fn unsubscribe(&self, topic: impl Into<String>) -> Result<()> {
        self.command(Input::Unsubscribe(topic.into()))
    }

    /// Sends `request` and blocks until its one [`Outcome`] is known: at the latest at its
    /// deadline (`request.timeout` from now).
    ///
    /// The outcome tells the truth about the order: [`Outcome::NotDelivered`] only if its bytes
    /// certainly never reached the socket (safe to retry); [`Outcome::Unconfirmed`] if they may
    /// have and no answer came (reconcile before retrying) — on a disconnect at once, not at the
    /// deadline. A request is never resent on its own after a reconnect. A second call with an
    /// id in flight joins it (same fingerprint) or gets [`Outcome::PayloadMismatch`].
    ///
    /// Responses are recognised by the endpoint's
    /// [`precheck`](crate::Endpoint::precheck) and [`parse_reply`](crate::Endpoint::parse_reply)
    /// returning [`Reply::Response`](crate::Reply::Response). A client whose endpoint has no
    /// precheck cannot recognise any: a [`ConfirmMode::Confirmed`] request is then refused at
    /// once with [`Undelivered::CannotConfirm`] (nothing is sent).
    ///
    /// The frame keeps its place among this thread's other frames (`send`, `send_prepared`):
    /// it leaves after the ones sent before it and before the ones sent after it. Frames sent
    /// after a request wait, at most until its deadline, for the coordinator to register it.
    pub fn send_and_confirm(&self, request: Request) -> Outcome {
        self.submit(request).wait()
    }

    /// Sends `request` without waiting; the [`Ticket`] gives the outcome later. Usable from any
    /// number of threads at once.
    pub fn submit(&self, request: Request) -> Ticket {
        let id = request.id;
        let resolved = |outcome| Ticket::resolved(id, Outcome::NotDelivered(outcome));
        // Absolute from here on: the coordinator and the writer never re-anchor it.
        let deadline = deadline::after(Instant::now(), request.timeout);
        if self.counters.state() != State::Ready {
            // Between connections or closed for good; a client that is shutting down cannot be
            // called any more (`shutdown` takes it by value).
            return resolved(Undelivered::NotConnected);
        }
        if request.mode == ConfirmMode::Confirmed && !self.can_confirm {
            log::warn!(
                "request {id} refused: the endpoint has no precheck, so no response can be \
                 matched (implement Endpoint::precheck and parse_reply, or use ConfirmMode::Sent)"
            );
            return resolved(Undelivered::CannotConfirm);
        }
        let epoch = self.counters.ready_epoch();
        let waiter = WaiterId(self.next_waiter.fetch_add(1, Ordering::Relaxed));
        let claim = Arc::new(Claim::default());
        // The frame joins the data lane now, in this caller's order among its other frames;
        // the writer holds it until the coordinator has registered the request.
        let frame = RequestFrame {
            origin: waiter,
            frame: request.frame,
            deadline,
            report_written: request.mode == ConfirmMode::Sent,
            claim: claim.clone(),
        };
        // A full lane answers at once: the writer is stuck behind a slow peer.
        match self.requests.try_send(Outbound::Request(Box::new(frame))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return resolved(Undelivered::QueueFull),
            Err(TrySendError::Disconnected(_)) => return resolved(Undelivered::ShutDown),
        }
        let (ticket, answer) = Ticket::new(id, deadline, self.wait);
        let ticket = ticket.with_claim(claim.clone());
        let sub = Submission {
            id,
            fingerprint: request.fingerprint,
            mode: request.mode,
            deadline,
            epoch,
            claim: claim.clone(),
        };
        let input = Input::Submit {
            waiter,
            sub,
            reply: Some(answer),
        };
        // Registered on this thread when dispatch is inline and the coordinator is free.
        if !self.inputs.step_or_send_deadline(input, deadline) {
            // Never registered: the frame must never go out.
            claim.withdraw();
            self.doorbell.ring();
            let why = if Instant::now() >= deadline {
                Undelivered::Deadline
            } else {
                Undelivered::ShutDown
            };
            return resolved(why);
        }
        ticket
    }

    /// The channel of everything that happens on the client. Consume it from one thread;
    /// while it is full the reader waits (or drops, per [`Overflow`](crate::Overflow)).
    /// Events travel in batches (those decoded from one read); [`Events::recv`] and its
    /// siblings return them one at a time, and [`Events::batches`] is what to put in
    /// crossbeam's `select!`.
    pub fn events(&self) -> &Events<T> {
        &self.events
    }

    /// A snapshot of the client's counters and health.
    pub fn stats(&self) -> Stats {
        self.counters.snapshot()
    }

    /// True while a connection is open (its session may still be restoring).
    pub fn is_open(&self) -> bool {
        matches!(self.counters.state(), State::Open | State::Ready)
    }

    /// True while a connection is open and its session restored: data frames go out.
    pub fn is_ready(&self) -> bool {
        self.counters.state() == State::Ready
    }

    /// The permessage-deflate parameters the server accepted on the first connection, if
    /// [`ClientBuilder::deflate`](crate::ClientBuilder::deflate) offered it and the server
    /// agreed.
    pub fn deflate(&self) -> Option<DeflateParams> {
        self.deflate
    }

    /// The subprotocol the server selected on the first connection, if any.
    pub fn protocol(&self) -> Option<&str> {
        self.protocol.as_deref()
    }

    /// Closes gracefully (code 1000 if a connection is open) and joins every thread, within
    /// `timeout`.
    ///
    /// The close handshake gets at most `timeout`; then the socket is shut down, which unblocks
    /// the reader and writer, and every thread is joined. A dial in progress is aborted (a TCP
    /// connect already under way may take up to `connect_timeout` to give up). It never hangs
    /// otherwise: even when the application stopped consuming events, the wait is bounded by
    /// `timeout` plus a few milliseconds of thread exit.
    pub fn shutdown(mut self, timeout: Duration) {
        self.shutdown_inner(timeout);
    }

    fn shutdown_inner(&mut self, timeout: Duration) {
        let Some(coordinator) = self.coordinator.take() else {
            return;
        };
        // Drop our end of the event channel: a reader or coordinator waiting for room in it is
        // released at once (unless the application holds a clone of the receiver).
        self.events = Events::closed();
        let deadline = deadline::after(Instant::now(), timeout);
        let sent = self
            .inputs
            .send_deadline(Input::Shutdown { deadline }, deadline);
        let finished = sent
            && matches!(
                self.done.recv_deadline(deadline),
                Err(RecvTimeoutError::Disconnected)
            );
        if !finished {
            // The coordinator is stuck delivering to a full event channel: release it and make
            // it stop now.
            self.abort.take();
            let _ = self.inputs.send(Input::Shutdown {
                deadline: Instant::now(),
            });
        }
        if coordinator.join().is_err() {
            log::error!("coordinator thread panicked");
        }
    }

    /// Pings need a connection: `NotConnected` between connections, `Closed` once stopped.
    fn check_connected(&self) -> Result<()> {
        match self.counters.state() {
            State::Open | State::Ready => Ok(()),
            State::Closing | State::Stopped => Err(Error::Closed { code: None }),
            State::Connecting | State::Waiting => Err(Error::NotConnected),
        }
    }

    fn command(&self, input: Input) -> Result<()> {
        self.inputs
            .send(input)
            .map_err(|_| Error::Closed { code: None })
    }
}

/// Data frames travel on the data lane (`Ok(Ok)`); everything else is a coordinator command
/// (`Ok(Err)`); a close with a code that may not be sent is refused.
fn route(frame: Frame) -> Result<std::result::Result<Frame, Input>> {
    Ok(match frame {
        data @ (Frame::Text(_) | Frame::Binary(_)) => Ok(data),
        Frame::Ping(p) => Err(Input::Send(Control::Ping(p))),
        Frame::Pong(p) => Err(Input::Send(Control::Pong(p))),
        Frame::Close(c) => {
            let (code, reason) =
                c.map_or((CloseCode::NORMAL, String::new()), |c| (c.code, c.reason));
            check_close_code(code)?;
            Err(Input::Close { code, reason })
        }
    })
}

fn check_close_code(code: CloseCode) -> Result<()> {
    if code.is_sendable() {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "close code {} may not be sent (RFC 6455 §7.4)",
            code.0
        )))
    }
}

impl<T> Drop for Client<T> {
    fn drop(&mut self) {
        self.shutdown_inner(self.close_timeout);
    }
}

impl<T> std::fmt::Debug for Client<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("open", &self.is_open())
            .field("ready", &self.is_ready())
            .field("protocol", &self.protocol)
            .finish_non_exhaustive()
    }
}
