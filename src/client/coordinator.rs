//! The coordinator: the sans-IO state machine that owns a client's connection state.
//!
//! It has no threads, sockets or clocks. Its driver (the coordinator thread, see `driver.rs`)
//! feeds it every input in one total order with the current time and carries out the outputs:
//!
//! ```text
//!   user commands ──┐
//!   dial results ───┤
//!   reader events ──┼─▶ handle(now, input) ──▶ outputs: frames for the writer, dial, disconnect,
//!   writer results ─┤                                   lifecycle notices, ready, stop
//!   timer expiry ───┘   next_deadline() ──▶ when the driver must call handle(now, Tick)
//! ```
//!
//! Because nothing inside depends on real time or scheduling, the same inputs and clock always
//! give the same outputs (reconnect jitter comes from the strategy's generator, which a test
//! seeds with `Backoff::seed`), and the tests below
//! drive it with a manual clock and thousands of generated fault schedules.
//!
//! ## Lifecycle
//!
//! ```text
//!  Connecting ──Connected──▶ Open ──(close handshake)──▶ Closing ──finish──▶ Waiting ──▶ Connecting
//!      │                      │ (liveness / ack failure: abort)   ▲            │
//!      └──ConnectFailed───────┴──────────────────────────────────-┴───────────▶ Stopped
//! ```
//!
//! A connection ends with exactly one `Disconnect` and one `Closed` notice; the next dial is only
//! issued after that (never two live connections). Inputs from a previous connection's reader or
//! writer carry its epoch and are ignored.
//!
//! The close handshake (RFC 6455 §7): a local close sends our frame and waits for the reply and
//! the end of the stream; a remote close is echoed and waits for the stream to end; a protocol
//! violation sends its close code and drops the connection once written; all bounded by
//! `close_timeout`. Liveness and acknowledgement failures abort at once: a silent link would
//! only time the handshake out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::client::ticket::Answer;

use crate::backoff::Reconnect;
use crate::client::claim::Claim;
use crate::client::endpoint::{Action, Cause, Endpoint, Reply};
use crate::client::event::CloseInfo;
use crate::client::health::{ErrorRing, LatencyPolicy, LatencyWatch, RttHistogram};
use crate::client::liveness::{Due, Keepalive, Liveness};
use crate::client::requests::{Outcome, RequestOut, Requests, Response, Submission, WaiterId};
use crate::client::session::{Session, SessionOut};
use crate::codec::Violation;
use crate::deadline;
use crate::error::Error;
use crate::frame::Initiator;
use crate::frame::{CloseCode, Frame};
use crate::guard::{self, Panicked};

/// How many recent errors are kept for [`Stats`](crate::Stats).
const ERROR_HISTORY: usize = 16;

/// The coordinator's settings (from [`Config`](crate::Config)).
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub close_timeout: Duration,
    pub stable_after: Duration,
    pub keepalive: Keepalive,
    pub stale_after: Option<Duration>,
    pub ack_timeout: Duration,
    pub max_topics: usize,
    pub latency: Option<LatencyPolicy>,
    pub max_pending: usize,
    /// Make-before-break: replace each connection once it has been up this long.
    pub rotate_after: Option<Duration>,
    /// A replacement must be dialled and its session restored within this time.
    pub rotation_timeout: Duration,
    /// How long both connections deliver once the replacement is ready.
    pub rotation_overlap: Duration,
}

/// Everything the coordinator reacts to.
#[derive(Debug)]
pub(crate) enum Input {
    /// User: start the close handshake (no reconnect follows by default).
    Close { code: CloseCode, reason: String },
    /// User: send a ping or an unsolicited pong.
    Send(Control),
    /// User: close (if open) and stop, all by `deadline`.
    Shutdown { deadline: Instant },
    /// User: add a topic to the desired subscriptions.
    Subscribe(String),
    /// User: remove a topic from the desired subscriptions.
    Unsubscribe(String),
    /// User: replace the connection now, make-before-break.
    Rotate,
    /// User: register a request for `waiter` (its frame is already on the data lane). The
    /// driver takes `reply` out (and keeps it) before the coordinator sees the input.
    Submit {
        waiter: WaiterId,
        sub: Submission,
        reply: Option<Answer>,
    },
    /// Driver: the link of `epoch` is down and its writer joined: no request can be taken now.
    LinkDown { epoch: u64 },
    /// Driver: the dial for `epoch` succeeded; its reader and writer run.
    Connected { epoch: u64 },
    /// Driver: the dial for `epoch` failed.
    ConnectFailed { epoch: u64, error: Error },
    /// Reader or writer of connection `epoch`.
    Link { epoch: u64, event: LinkEvent },
    /// Time passed (the driver's wait for input hit `next_deadline`).
    Tick,
}

/// What a connection's reader and writer report.
#[derive(Debug)]
pub(crate) enum LinkEvent {
    /// Reader: the peer sent a close frame.
    PeerClose(Option<(CloseCode, String)>),
    /// Reader: a pong arrived.
    Pong(Vec<u8>),
    /// Reader: a message the endpoint's precheck flagged.
    Reply(Frame),
    /// Reader: the peer broke the protocol; the reader has stopped.
    Violation(Violation),
    /// Reader: the stream ended (`None`) or failed; the reader has stopped.
    ReaderEnded(Option<Error>),
    /// Writer: our close frame has been written to the socket.
    CloseWritten,
    /// Writer: the request frame submitted by this waiter has been written (mode `Sent`).
    Written(WaiterId),
    /// Writer: a write failed; the writer has stopped.
    WriteFailed(Error),
    /// Reader: the ingress or the precheck panicked; the reader has stopped.
    CallbackPanicked(Panicked),
    /// Reader of a replacement: more messages arrived before the switch than it may hold; the
    /// reader has stopped.
    HoldFull,
}

/// A frame for the writer's control lane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Control {
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<(CloseCode, String)>),
    /// Send TLS records rustls has queued (no WebSocket frame).
    FlushTls,
    /// The session is ready: start taking frames from the user data lane.
    OpenData,
    /// A replacement is ready (make-before-break rotation): stop taking user data and close
    /// with 1000 now.
    Retire,
}

/// Lifecycle news for the application.
#[derive(Debug)]
pub(crate) enum Notice {
    Connecting {
        attempt: u32,
    },
    Connected {
        epoch: u64,
    },
    SessionReady {
        epoch: u64,
    },
    Pong {
        epoch: u64,
        payload: Vec<u8>,
    },
    SubscriptionRejected {
        epoch: u64,
        topic: String,
        reason: String,
    },
    Closed {
        epoch: u64,
        info: CloseInfo,
        reconnect: Option<Duration>,
    },
    ConnectFailed {
        attempt: u32,
        cause: Cause,
        reconnect: Option<Duration>,
    },
    Orphan {
        epoch: u64,
        id: u64,
        response: Response,
    },
    Rotated {
        from: u64,
        to: u64,
    },
    RotationFailed {
        epoch: u64,
        cause: Cause,
        retry: Option<Duration>,
    },
}

/// What the driver must do.
#[derive(Debug)]
pub(crate) enum Output {
    /// Queue a control frame on the current connection's control lane.
    Send(Control),
    /// Queue a session frame (auth, subscribe) ahead of user data.
    SendSession(Frame),
    /// The request submitted by this waiter is registered: its frame on the data lane may be
    /// written (wake the writer; inline dispatch may write it directly).
    Accepted(WaiterId, Arc<Claim>),
    /// A submitted frame was withdrawn unregistered: wake the writer, which may wait at it.
    Withdrawn,
    /// Deliver a request outcome to a waiter.
    Resolve(WaiterId, Outcome),
    /// The session is ready: open the user data lane.
    Ready,
    /// Deliver a lifecycle event.
    Notify(Notice),
    /// Open connection `epoch` (attempt `attempt`) with these extra headers.
    Dial {
        epoch: u64,
        attempt: u32,
        headers: Vec<(String, String)>,
    },
    /// Shut the current connection's socket down and release its threads.
    Disconnect,
    /// Open a replacement connection `epoch` (make-before-break), holding its messages.
    DialReplacement {
        epoch: u64,
        headers: Vec<(String, String)>,
    },
    /// Queue a session frame on the replacement's session lane.
    SendReplacement(Frame),
    /// Drop the replacement (or stop its dial): the rotation failed or was abandoned.
    DropReplacement,
    /// The current connection has closed for a rotation: release its threads, keeping the
    /// user data queued for the replacement (its requests are settled by a `LinkDown`).
    Retired,
    /// The replacement `epoch` becomes the current connection: its lanes, the user data lane.
    Promote { epoch: u64 },
    /// Hand the ingress to the promoted connection: its held messages first.
    Release { epoch: u64 },
    /// Nothing more will happen: the driver may exit.
    Stop,
}

/// The client's phase as seen by user threads (mirrored into an atomic).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum State {
    Connecting = 0,
    Open = 1,
    Ready = 2,
    Closing = 3,
    Waiting = 4,
    Stopped = 5,
}

impl State {
    /// Inverse of `state as u8` (for the atomic mirror).
    pub(crate) fn from_u8(v: u8) -> State {
        match v {
            0 => State::Connecting,
            1 => State::Open,
            2 => State::Ready,
            3 => State::Closing,
            4 => State::Waiting,
            _ => State::Stopped,
        }
    }
}

#[derive(Debug)]
enum Phase {
    Connecting { attempt: u32 },
    Open { since: Instant, ready: bool },
    Closing(Closing),
    Waiting { until: Instant, attempt: u32 },
    Stopped,
}

#[derive(Debug)]
struct Closing {
    initiator: Initiator,
    code: CloseCode,
    reason: String,
    /// The peer's close frame has been received.
    peer_closed: bool,
    /// The code in the peer's close frame (NO_STATUS for an empty one).
    peer_code: Option<CloseCode>,
    /// The reader has stopped: no more input will come from the socket.
    reader_done: bool,
    /// Why, when it is not what initiator and code already say.
    cause: Option<Cause>,
    deadline: Instant,
    /// When the connection opened (for the backoff reset).
    since: Instant,
    /// Closed for a rotation whose replacement is ready: the switch follows.
    retiring: bool,
}

/// A make-before-break rotation in progress: the replacement connection and its session.
#[derive(Debug)]
struct Rotation {
    epoch: u64,
    /// It must be ready by then (dialled and its session restored).
    deadline: Instant,
    stage: Stage,
}

#[derive(Debug)]
enum Stage {
    /// The dial is under way.
    Dialing,
    /// Open (since `opened`); its session is being restored.
    Restoring { session: Session, opened: Instant },
    /// Its session is ready. The current connection goes on delivering until `until` (the
    /// overlap), so that what it still has in flight arrives; then it closes for the switch
    /// (`Closing::retiring`).
    Ready {
        session: Session,
        opened: Instant,
        until: Instant,
    },
}

/// Health figures the coordinator owns, copied out for `stats()` when `dirty`.
#[derive(Debug)]
pub(crate) struct Health {
    pub rtt: RttHistogram,
    pub errors: ErrorRing,
    pub reconnects: u64,
    pub connect_attempts: u64,
    pub rotations: u64,
    pub rotation_failures: u64,
    pub dirty: bool,
}

/// The state machine. See the module docs.
pub(crate) struct Coordinator {
    settings: Settings,
    endpoint: Box<dyn Endpoint>,
    reconnect: Option<Box<dyn Reconnect>>,
    phase: Phase,
    /// Epoch of the current (or last) connection.
    epoch: u64,
    /// The epoch of the dial in flight (a failed dial's epoch is used again by the next one).
    dialed: u64,
    /// The highest epoch a rotation's replacement has used: never used again, even if the
    /// replacement failed (the application was told about it).
    burnt: u64,
    /// A make-before-break rotation in progress.
    rotation: Option<Rotation>,
    /// When the next rotation starts (`rotate_after` past the current connection's opening, or
    /// a retry after a failed one).
    rotate_at: Option<Instant>,
    /// Failed rotations in a row (for the retry delay).
    rotation_failures: u32,
    /// The connection the last rotation replaced: requests submitted for it are still taken
    /// (their frames wait on the user data lane, which the replacement now writes).
    rotated_from: Option<u64>,
    /// Failed attempts and lost connections since the last backoff reset.
    failures: u32,
    session: Session,
    liveness: Liveness,
    latency: Option<LatencyWatch>,
    requests: Requests,
    health: Health,
    stop_requested: Option<Instant>,
    stopped: bool,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("phase", &self.phase)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

impl Coordinator {
    /// A coordinator whose first dial (epoch 1, attempt 1) is already under way.
    pub(crate) fn new(
        settings: Settings,
        endpoint: Box<dyn Endpoint>,
        reconnect: Option<Box<dyn Reconnect>>,
        now: Instant,
    ) -> Self {
        let acks = endpoint.precheck().is_some();
        Coordinator {
            session: Session::new(settings.ack_timeout, settings.max_topics, acks),
            liveness: Liveness::new(settings.keepalive, settings.stale_after, now),
            latency: settings.latency.map(LatencyWatch::new),
            requests: Requests::new(settings.max_pending),
            settings,
            endpoint,
            reconnect,
            phase: Phase::Connecting { attempt: 1 },
            epoch: 0,
            dialed: 1,
            burnt: 0,
            rotation: None,
            rotate_at: None,
            rotation_failures: 0,
            rotated_from: None,
            failures: 0,
            health: Health {
                rtt: RttHistogram::new(),
                errors: ErrorRing::new(ERROR_HISTORY),
                reconnects: 0,
                connect_attempts: 1,
                rotations: 0,
                rotation_failures: 0,
                dirty: true,
            },
            stop_requested: None,
            stopped: false,
        }
    }

    /// Headers for the first dial (attempt 1), which the client makes itself.
    pub(crate) fn first_dial_headers(&mut self) -> Result<Vec<(String, String)>, Panicked> {
        let endpoint = &mut self.endpoint;
        guard::catch("Endpoint::headers", || endpoint.headers(1))
    }

    /// The phase as seen by user threads.
    pub(crate) fn state(&self) -> State {
        match &self.phase {
            Phase::Connecting { .. } => State::Connecting,
            Phase::Open { ready: false, .. } => State::Open,
            Phase::Open { ready: true, .. } => State::Ready,
            // A connection closing for a rotation: users go on queueing for its replacement.
            Phase::Closing(c) if c.retiring => State::Ready,
            Phase::Closing(_) => State::Closing,
            Phase::Waiting { .. } => State::Waiting,
            Phase::Stopped => State::Stopped,
        }
    }

    /// The health figures; the driver clears `dirty` after copying them.
    pub(crate) fn health_mut(&mut self) -> &mut Health {
        &mut self.health
    }

    /// The topics the session will replay on the next connection.
    #[cfg(test)]
    pub(crate) fn desired(&self) -> impl Iterator<Item = &String> {
        self.session.desired()
    }

    /// When the driver must call `handle(now, Input::Tick)` at the latest.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        if self.stopped {
            return None;
        }
        match &self.phase {
            Phase::Closing(c) => Some(
                self.requests
                    .next_deadline()
                    .map_or(c.deadline, |d| d.min(c.deadline)),
            ),
            Phase::Waiting { until, .. } => Some(*until),
            Phase::Open { .. } => [
                self.liveness.next_deadline(),
                self.session.next_deadline(),
                self.requests.next_deadline(),
                self.rotation_deadline(),
            ]
            .into_iter()
            .flatten()
            .min(),
            Phase::Connecting { .. } | Phase::Stopped => None,
        }
    }

    /// Number of requests in flight.
    #[cfg(test)]
    pub(crate) fn pending_requests(&self) -> usize {
        self.requests.len()
    }

    /// The reader saw a data message at `at` (for staleness). Cheap; the driver calls it with
    /// the reader's latest timestamp before every `handle`.
    pub(crate) fn data_seen(&mut self, at: Instant) {
        self.liveness.data_seen(at);
    }

    /// Feeds one input; outputs are appended to `out` in the order they must be carried out.
    ///
    /// The endpoint's callbacks run inside: if one panics, the step ends there and the current
    /// connection is torn down with [`Cause::CallbackPanicked`] (see [`crate::guard`]).
    pub(crate) fn handle(&mut self, now: Instant, input: Input, out: &mut Vec<Output>) {
        let stepped = guard::catch("Endpoint callback", || self.step(now, input, out));
        if let Err(panicked) = stepped {
            self.on_panic(now, panicked, out);
        }
    }

    /// A callback panicked in the middle of a step: end the current connection (or attempt),
    /// as for any other failure.
    fn on_panic(&mut self, now: Instant, panicked: Panicked, out: &mut Vec<Output>) {
        let cause = Cause::CallbackPanicked {
            callback: panicked.callback,
            message: panicked.message,
        };
        match &mut self.phase {
            Phase::Open { since, .. } => {
                let since = *since;
                self.abort(now, since, Initiator::Local, cause, out);
            }
            Phase::Closing(c) => {
                c.cause = Some(cause);
                self.finish(now, out);
            }
            Phase::Connecting { attempt } => {
                // Only `headers` runs while connecting: the dial was never issued.
                let attempt = *attempt;
                let error = Error::Io(std::io::Error::other(cause.to_string()));
                self.on_connect_failed(now, attempt, error, out);
            }
            Phase::Waiting { .. } | Phase::Stopped => {}
        }
    }

    fn step(&mut self, now: Instant, input: Input, out: &mut Vec<Output>) {
        if let Input::LinkDown { epoch } = input {
            // Also after a stop: every request must be answered.
            let mut r = Vec::new();
            if epoch == self.epoch {
                self.requests.on_link_down(&mut r);
            } else if Some(epoch) == self.rotated_from {
                // Replaced by a rotation: only the requests it wrote are settled; the rest are
                // still on the user data lane, for the replacement.
                self.requests.on_retired(&mut r);
            }
            self.apply_requests(r, out);
            return;
        }
        if let Input::Submit { waiter, sub, .. } = input {
            let ready = match &self.phase {
                Phase::Open { ready, .. } => *ready,
                Phase::Closing(c) => c.retiring,
                _ => false,
            } && !self.stopped;
            let mut r = Vec::new();
            // A request submitted for the connection a rotation just replaced is written by
            // the replacement: its frame is still on the user data lane.
            let epoch = ready.then_some(if Some(sub.epoch) == self.rotated_from {
                sub.epoch
            } else {
                self.epoch
            });
            self.requests.submit(now, waiter, sub, epoch, &mut r);
            self.apply_requests(r, out);
            return;
        }
        if self.stopped {
            if let Input::Connected { .. } = input {
                out.push(Output::Disconnect); // A dial that finished after the stop.
            }
            return;
        }
        match input {
            Input::Close { code, reason } => {
                // A close during a rotation drops the replacement; a connection already
                // closing for the switch then ends as requested (no reconnect).
                self.abandon_rotation(out);
                if matches!(self.phase, Phase::Open { .. }) {
                    self.start_local_close(now, code, reason, Some(Cause::Requested), out);
                } else if matches!(self.phase, Phase::Waiting { .. } | Phase::Connecting { .. }) {
                    // Closing between connections: stay closed (a dial still in flight is
                    // disconnected when it completes).
                    self.phase = Phase::Stopped;
                }
            }
            Input::Send(control) => {
                if matches!(self.phase, Phase::Open { .. }) {
                    out.push(Output::Send(control));
                }
            }
            Input::Shutdown { deadline } => self.on_shutdown(now, deadline, out),
            Input::Subscribe(topic) => {
                let mut s = Vec::new();
                if let Some(replacement) = Self::replacement_session(&mut self.rotation) {
                    let endpoint = self.endpoint.as_mut();
                    replacement.subscribe(now, topic.clone(), endpoint, &mut s);
                    self.apply_replacement_session(now, s, out);
                    s = Vec::new();
                }
                self.session
                    .subscribe(now, topic, self.endpoint.as_mut(), &mut s);
                self.apply_session(now, s, out);
            }
            Input::Unsubscribe(topic) => {
                let mut s = Vec::new();
                if let Some(replacement) = Self::replacement_session(&mut self.rotation) {
                    replacement.unsubscribe(&topic, self.endpoint.as_mut(), &mut s);
                    self.apply_replacement_session(now, s, out);
                    s = Vec::new();
                }
                self.session
                    .unsubscribe(&topic, self.endpoint.as_mut(), &mut s);
                self.apply_session(now, s, out);
            }
            Input::Rotate => {
                if matches!(self.phase, Phase::Open { ready: true, .. }) && self.rotation.is_none()
                {
                    self.start_rotation(now, out);
                }
            }
            Input::Connected { epoch } if self.replacing(epoch) => {
                self.on_replacement_open(now, epoch, out)
            }
            Input::Connected { epoch } => self.on_connected(now, epoch, out),
            Input::ConnectFailed { epoch, error } if self.replacing(epoch) => {
                self.rotation_failed(now, Cause::ConnectFailed(error), out);
            }
            Input::ConnectFailed { epoch, error } => {
                if epoch == self.dialed
                    && let Phase::Connecting { attempt } = self.phase
                {
                    self.on_connect_failed(now, attempt, error, out);
                }
            }
            Input::Link { epoch, event } => {
                if epoch == self.epoch {
                    self.on_link(now, event, out);
                } else if self.replacing(epoch) {
                    self.on_replacement_link(now, event, out);
                }
            }
            Input::Submit { .. } | Input::LinkDown { .. } => {}
            Input::Tick => {}
        }
        // Act on every deadline that has been reached; acting can arm a deadline that is due at
        // once (a zero backoff), hence the bounded loop.
        for _ in 0..8 {
            if self.stopped || self.next_deadline().is_none_or(|d| d > now) {
                break;
            }
            self.poll_timers(now, out);
        }
    }

    fn on_shutdown(&mut self, now: Instant, deadline: Instant, out: &mut Vec<Output>) {
        self.stop_requested = Some(deadline);
        self.abandon_rotation(out);
        match &mut self.phase {
            Phase::Open { .. } => {
                self.start_local_close(
                    now,
                    CloseCode::NORMAL,
                    String::new(),
                    Some(Cause::Requested),
                    out,
                );
                if let Phase::Closing(c) = &mut self.phase {
                    c.deadline = c.deadline.min(deadline);
                }
            }
            Phase::Closing(c) => c.deadline = c.deadline.min(deadline),
            Phase::Connecting { .. } | Phase::Waiting { .. } | Phase::Stopped => {
                self.phase = Phase::Stopped;
                self.stop(out);
            }
        }
    }

    fn on_connected(&mut self, now: Instant, epoch: u64, out: &mut Vec<Output>) {
        if epoch != self.dialed || !matches!(self.phase, Phase::Connecting { .. }) {
            out.push(Output::Disconnect);
            return;
        }
        self.epoch = epoch;
        self.rotated_from = None;
        self.rotate_at = self.settings.rotate_after.map(|d| deadline::after(now, d));
        if epoch > 1 {
            self.health.reconnects += 1;
            self.health.dirty = true;
        }
        self.phase = Phase::Open {
            since: now,
            ready: false,
        };
        out.push(Output::Notify(Notice::Connected { epoch }));
        self.liveness.on_open(now);
        if let Some(l) = &mut self.latency {
            l.reset();
        }
        let mut s = Vec::new();
        self.session
            .on_open(now, epoch, self.endpoint.as_mut(), &mut s);
        self.apply_session(now, s, out);
    }

    fn on_connect_failed(
        &mut self,
        now: Instant,
        attempt: u32,
        error: Error,
        out: &mut Vec<Output>,
    ) {
        let cause = Cause::ConnectFailed(error);
        self.note_error(&cause);
        let reconnect = self.plan_next(now, &cause, None);
        out.push(Output::Notify(Notice::ConnectFailed {
            attempt,
            cause,
            reconnect,
        }));
        self.after_plan(out);
    }

    fn on_link(&mut self, now: Instant, event: LinkEvent, out: &mut Vec<Output>) {
        match event {
            LinkEvent::PeerClose(frame) => self.on_peer_close(now, frame, out),
            LinkEvent::Pong(payload) => match self.liveness.on_pong(now, &payload) {
                Some(rtt) => self.record_rtt(now, rtt, out),
                None => {
                    let epoch = self.epoch;
                    out.push(Output::Notify(Notice::Pong { epoch, payload }));
                }
            },
            LinkEvent::Reply(frame) => self.on_reply(now, frame, out),
            LinkEvent::Violation(v) => {
                let error = Error::Protocol {
                    code: v.code,
                    reason: v.reason.clone(),
                };
                match &mut self.phase {
                    Phase::Open { .. } => {
                        self.start_local_close(
                            now,
                            v.code,
                            v.reason,
                            Some(Cause::Protocol(error)),
                            out,
                        );
                        if let Phase::Closing(c) = &mut self.phase {
                            c.reader_done = true;
                        }
                    }
                    Phase::Closing(c) => {
                        c.cause.get_or_insert(Cause::Protocol(error));
                        self.finish(now, out);
                    }
                    _ => {}
                }
            }
            LinkEvent::ReaderEnded(error) => match &mut self.phase {
                Phase::Open { since, .. } => {
                    let since = *since;
                    let error = error
                        .unwrap_or_else(|| Error::Io(std::io::ErrorKind::UnexpectedEof.into()));
                    self.abort(
                        now,
                        since,
                        Initiator::Transport,
                        Cause::Transport(error),
                        out,
                    );
                }
                Phase::Closing(c) => {
                    if let (Some(e), false, None) = (error, c.peer_closed, &c.cause) {
                        c.cause = Some(Cause::Transport(e));
                    }
                    self.finish(now, out);
                }
                _ => {}
            },
            LinkEvent::Written(origin) => {
                let mut r = Vec::new();
                self.requests.on_written(origin, &mut r);
                self.apply_requests(r, out);
            }
            LinkEvent::CloseWritten => {
                // A close after a violation is done once written: the reader is gone, so no
                // reply can be read anyway.
                if let Phase::Closing(c) = &self.phase
                    && c.reader_done
                {
                    self.finish(now, out);
                }
            }
            LinkEvent::CallbackPanicked(panicked) => self.on_panic(now, panicked, out),
            LinkEvent::HoldFull => {} // Only a replacement holds messages.
            LinkEvent::WriteFailed(e) => match &mut self.phase {
                Phase::Open { since, .. } => {
                    let since = *since;
                    self.abort(now, since, Initiator::Transport, Cause::Transport(e), out);
                }
                Phase::Closing(c) => {
                    if !c.peer_closed && c.cause.is_none() {
                        c.cause = Some(Cause::Transport(e));
                    }
                    self.finish(now, out);
                }
                _ => {}
            },
        }
    }

    fn on_reply(&mut self, now: Instant, frame: Frame, out: &mut Vec<Output>) {
        let Some(data) = frame.as_data() else { return };
        match self.endpoint.parse_reply(data) {
            Some(Reply::AppPong(seq)) => {
                if let Some(rtt) = self.liveness.on_app_pong(now, seq) {
                    self.record_rtt(now, rtt, out);
                }
            }
            Some(Reply::Response { id, response }) => {
                let mut r = Vec::new();
                self.requests.on_response(id, response, &mut r);
                self.apply_requests(r, out);
            }
            Some(reply) => {
                let mut s = Vec::new();
                self.session
                    .on_reply(now, reply, self.endpoint.as_mut(), &mut s);
                self.apply_session(now, s, out);
            }
            None => {}
        }
    }

    fn record_rtt(&mut self, now: Instant, rtt: Duration, out: &mut Vec<Output>) {
        self.health.rtt.record(rtt);
        self.health.dirty = true;
        let breached = self.latency.as_mut().is_some_and(|l| l.record(rtt));
        if breached && let Phase::Open { since, .. } = self.phase {
            self.abort(now, since, Initiator::Local, Cause::LatencyPolicy, out);
        }
    }

    /// Carries out what the session asked for.
    fn apply_session(&mut self, now: Instant, outs: Vec<SessionOut>, out: &mut Vec<Output>) {
        for o in outs {
            match o {
                SessionOut::Send(frame) => {
                    if matches!(self.phase, Phase::Open { .. }) {
                        out.push(Output::SendSession(frame));
                    }
                }
                SessionOut::Ready => {
                    if let Phase::Open { ready, .. } = &mut self.phase {
                        *ready = true;
                        out.push(Output::Ready);
                        out.push(Output::Notify(Notice::SessionReady { epoch: self.epoch }));
                    }
                }
                SessionOut::Rejected { topic, reason } => {
                    let epoch = self.epoch;
                    out.push(Output::Notify(Notice::SubscriptionRejected {
                        epoch,
                        topic,
                        reason,
                    }));
                }
                SessionOut::Fail(cause) => {
                    if let Phase::Open { since, .. } = self.phase {
                        match cause {
                            Cause::AuthFailed(_) => {
                                let reason = "authentication refused".to_string();
                                self.start_local_close(
                                    now,
                                    CloseCode::POLICY,
                                    reason,
                                    Some(cause),
                                    out,
                                );
                            }
                            other => self.abort(now, since, Initiator::Local, other, out),
                        }
                    }
                }
            }
        }
    }

    /// Carries out what the request table asked for.
    fn apply_requests(&mut self, outs: Vec<RequestOut>, out: &mut Vec<Output>) {
        for o in outs {
            out.push(match o {
                RequestOut::Accepted(origin, claim) => Output::Accepted(origin, claim),
                RequestOut::Withdrawn => Output::Withdrawn,
                RequestOut::Resolve(waiter, outcome) => Output::Resolve(waiter, outcome),
                RequestOut::Orphan { id, response } => Output::Notify(Notice::Orphan {
                    epoch: self.epoch,
                    id,
                    response,
                }),
            });
        }
    }

    fn poll_timers(&mut self, now: Instant, out: &mut Vec<Output>) {
        match &mut self.phase {
            Phase::Closing(c) => {
                if now >= c.deadline {
                    self.finish(now, out);
                } else {
                    let mut r = Vec::new();
                    self.requests.poll(now, &mut r);
                    self.apply_requests(r, out);
                }
            }
            Phase::Waiting { until, attempt } => {
                if now >= *until {
                    let attempt = *attempt;
                    self.dial(attempt, out);
                }
            }
            Phase::Open { since, .. } => {
                let since = *since;
                // Bounded: each ping pushes the next one an interval further.
                while let Some(due) = self.liveness.poll(now) {
                    match due {
                        Due::Ping(payload) => out.push(Output::Send(Control::Ping(payload))),
                        Due::AppPing(seq) => {
                            if let Some(frame) = self.endpoint.app_ping(seq) {
                                out.push(Output::SendSession(frame));
                            }
                        }
                        Due::Fail(failure) => {
                            self.abort(now, since, Initiator::Local, failure.cause(), out);
                            return;
                        }
                    }
                }
                let mut s = Vec::new();
                self.session.poll(now, &mut s);
                self.apply_session(now, s, out);
                let mut r = Vec::new();
                self.requests.poll(now, &mut r);
                self.apply_requests(r, out);
                self.poll_rotation(now, out);
            }
            Phase::Connecting { .. } | Phase::Stopped => {}
        }
    }

    fn dial(&mut self, attempt: u32, out: &mut Vec<Output>) {
        self.phase = Phase::Connecting { attempt };
        self.health.connect_attempts += 1;
        self.health.dirty = true;
        out.push(Output::Notify(Notice::Connecting { attempt }));
        let headers = self.endpoint.headers(attempt);
        self.dialed = self.epoch.max(self.burnt) + 1;
        out.push(Output::Dial {
            epoch: self.dialed,
            attempt,
            headers,
        });
    }

    fn start_local_close(
        &mut self,
        now: Instant,
        code: CloseCode,
        reason: String,
        cause: Option<Cause>,
        out: &mut Vec<Output>,
    ) {
        let Phase::Open { since, .. } = self.phase else {
            return;
        };
        out.push(Output::Send(Control::Close(Some((code, reason.clone())))));
        let mut deadline = deadline::after(now, self.settings.close_timeout);
        if let Some(stop) = self.stop_requested {
            deadline = deadline.min(stop);
        }
        self.phase = Phase::Closing(Closing {
            initiator: Initiator::Local,
            code,
            reason,
            peer_closed: false,
            peer_code: None,
            reader_done: false,
            cause,
            deadline,
            since,
            retiring: false,
        });
    }

    fn on_peer_close(
        &mut self,
        now: Instant,
        frame: Option<(CloseCode, String)>,
        out: &mut Vec<Output>,
    ) {
        match &mut self.phase {
            Phase::Open { since, .. } => {
                let since = *since;
                // Echo the code (RFC 6455 §5.5.1); an empty close is answered with an empty one.
                let echo = frame.as_ref().map(|(code, _)| (*code, String::new()));
                out.push(Output::Send(Control::Close(echo)));
                let (code, reason) = frame.unwrap_or((CloseCode::NO_STATUS, String::new()));
                let mut deadline = deadline::after(now, self.settings.close_timeout);
                if let Some(stop) = self.stop_requested {
                    deadline = deadline.min(stop);
                }
                self.phase = Phase::Closing(Closing {
                    initiator: Initiator::Remote,
                    code,
                    reason,
                    peer_closed: true,
                    peer_code: Some(code),
                    reader_done: false,
                    cause: None,
                    deadline,
                    since,
                    retiring: false,
                });
            }
            Phase::Closing(c) => {
                c.peer_closed = true;
                c.peer_code = Some(frame.map_or(CloseCode::NO_STATUS, |(code, _)| code));
            }
            _ => {}
        }
    }

    /// Drops an open connection at once, without a close handshake.
    fn abort(
        &mut self,
        now: Instant,
        since: Instant,
        initiator: Initiator,
        cause: Cause,
        out: &mut Vec<Output>,
    ) {
        self.phase = Phase::Closing(Closing {
            initiator,
            code: CloseCode::ABNORMAL,
            reason: cause.to_string(),
            peer_closed: false,
            peer_code: None,
            reader_done: true,
            cause: Some(cause),
            deadline: now,
            since,
            retiring: false,
        });
        self.finish(now, out);
    }

    /// Ends the connection: disconnect, report how it closed and what comes next.
    fn finish(&mut self, now: Instant, out: &mut Vec<Output>) {
        let Phase::Closing(c) = std::mem::replace(&mut self.phase, Phase::Stopped) else {
            return;
        };
        // Its close for the switch is over, or it ended some other way (the venue cut it)
        // while the replacement was ready: the replacement takes over.
        let ready = matches!(
            self.rotation.as_ref().map(|r| &r.stage),
            Some(Stage::Ready { .. })
        );
        if ready && let Some(r) = self.rotation.take() {
            if let Stage::Ready {
                session, opened, ..
            } = r.stage
            {
                self.switch(now, r.epoch, session, opened, out);
            }
            return;
        }
        // The connection ended before its replacement was ready: the replacement goes too, and
        // the reconnect policy decides, as for any lost connection.
        self.abandon_rotation(out);
        self.rotated_from = None;
        out.push(Output::Disconnect);
        self.session.on_close();
        let clean = c.peer_closed && c.initiator != Initiator::Transport;
        let cause = match c.cause {
            Some(cause) => cause,
            None if c.initiator == Initiator::Remote => Cause::ServerClosed(c.code),
            None => Cause::Requested,
        };
        self.note_error(&cause);
        let reconnect = self.plan_next(now, &cause, Some(c.since));
        let info = CloseInfo {
            initiator: c.initiator,
            code: c.code,
            reason: c.reason,
            clean,
            peer_code: c.peer_code,
            cause,
        };
        out.push(Output::Notify(Notice::Closed {
            epoch: self.epoch,
            info,
            reconnect,
        }));
        self.after_plan(out);
    }

    /// Decides whether and when to reconnect; sets the phase to `Waiting` or `Stopped`.
    fn plan_next(
        &mut self,
        now: Instant,
        cause: &Cause,
        since: Option<Instant>,
    ) -> Option<Duration> {
        self.phase = Phase::Stopped;
        if self.stop_requested.is_some() {
            return None;
        }
        let reconnect = self.reconnect.as_mut()?;
        let endpoint = &mut self.endpoint;
        let action = guard::catch("Endpoint::on_disconnect", || endpoint.on_disconnect(cause))
            .unwrap_or_else(|_| cause.default_action());
        if since.is_some_and(|s| now >= deadline::after(s, self.settings.stable_after)) {
            let _ = guard::catch("Reconnect::reset", || reconnect.reset());
            self.failures = 0;
        }
        let floor = match action {
            Action::Stop => return None,
            Action::Reconnect => Duration::ZERO,
            Action::ReconnectAfter(d) => d,
        };
        self.failures = self.failures.saturating_add(1);
        let failures = self.failures;
        // A panicking strategy stops reconnecting (the panic is logged).
        let delay = guard::catch("Reconnect::next_delay", || reconnect.next_delay(failures))
            .ok()??
            .max(floor);
        self.phase = Phase::Waiting {
            until: deadline::after(now, delay),
            attempt: self.failures.saturating_add(1),
        };
        Some(delay)
    }

    fn after_plan(&mut self, out: &mut Vec<Output>) {
        if self.stop_requested.is_some() {
            self.stop(out);
        }
    }

    fn note_error(&mut self, cause: &Cause) {
        if !matches!(
            cause,
            Cause::Requested | Cause::ServerClosed(CloseCode::NORMAL)
        ) {
            self.health.errors.push(cause.to_string());
            self.health.dirty = true;
        }
    }

    // ---- Make-before-break rotation -------------------------------------------------------

    /// True if `epoch` is the replacement of a rotation in progress.
    fn replacing(&self, epoch: u64) -> bool {
        self.rotation.as_ref().is_some_and(|r| r.epoch == epoch)
    }

    /// The replacement's session, once it is open.
    fn replacement_session(rotation: &mut Option<Rotation>) -> Option<&mut Session> {
        match &mut rotation.as_mut()?.stage {
            Stage::Restoring { session, .. } | Stage::Ready { session, .. } => Some(session),
            Stage::Dialing => None,
        }
    }

    /// When the rotation needs the clock next: its deadline and its session's acknowledgement
    /// deadlines, or when the next one starts. Only while the current session is ready.
    fn rotation_deadline(&self) -> Option<Instant> {
        if !matches!(self.phase, Phase::Open { ready: true, .. }) {
            return None;
        }
        let Some(r) = &self.rotation else {
            return self.rotate_at;
        };
        match &r.stage {
            Stage::Dialing => Some(r.deadline),
            Stage::Restoring { session, .. } => Some(
                session
                    .next_deadline()
                    .map_or(r.deadline, |d| d.min(r.deadline)),
            ),
            Stage::Ready { until, .. } => Some(*until),
        }
    }

    /// Starts a rotation: dial the replacement, which holds what it receives until the switch.
    fn start_rotation(&mut self, now: Instant, out: &mut Vec<Output>) {
        let epoch = self.epoch.max(self.burnt) + 1;
        self.burnt = epoch;
        self.rotate_at = None;
        self.rotation = Some(Rotation {
            epoch,
            deadline: deadline::after(now, self.settings.rotation_timeout),
            stage: Stage::Dialing,
        });
        log::debug!("rotation: replacing connection {} with {epoch}", self.epoch);
        let headers = self.endpoint.headers(1);
        out.push(Output::DialReplacement { epoch, headers });
    }

    /// The replacement is open: restore the session on it (the endpoint's opening frames,
    /// authentication, every desired subscription), as on any new connection.
    fn on_replacement_open(&mut self, now: Instant, epoch: u64, out: &mut Vec<Output>) {
        let mut session = self.session.replacement();
        let mut s = Vec::new();
        session.on_open(now, epoch, self.endpoint.as_mut(), &mut s);
        if let Some(r) = &mut self.rotation {
            r.stage = Stage::Restoring {
                session,
                opened: now,
            };
        }
        self.apply_replacement_session(now, s, out);
    }

    fn on_replacement_link(&mut self, now: Instant, event: LinkEvent, out: &mut Vec<Output>) {
        let failed = |e: Option<Error>| {
            Cause::Transport(
                e.unwrap_or_else(|| Error::Io(std::io::ErrorKind::UnexpectedEof.into())),
            )
        };
        let cause = match event {
            LinkEvent::Pong(_) | LinkEvent::CloseWritten => return,
            LinkEvent::Written(origin) => {
                let mut r = Vec::new();
                self.requests.on_written(origin, &mut r);
                self.apply_requests(r, out);
                return;
            }
            LinkEvent::Reply(frame) => return self.on_replacement_reply(now, frame, out),
            LinkEvent::PeerClose(frame) => {
                Cause::ServerClosed(frame.map_or(CloseCode::NO_STATUS, |(code, _)| code))
            }
            LinkEvent::Violation(v) => Cause::Protocol(Error::Protocol {
                code: v.code,
                reason: v.reason,
            }),
            LinkEvent::ReaderEnded(e) => failed(e),
            LinkEvent::WriteFailed(e) => failed(Some(e)),
            LinkEvent::CallbackPanicked(p) => Cause::CallbackPanicked {
                callback: p.callback,
                message: p.message,
            },
            LinkEvent::HoldFull => failed(Some(Error::Io(std::io::Error::other(
                "the replacement received more messages before the switch than \
                 Config::rotation_hold allows",
            )))),
        };
        self.rotation_failed(now, cause, out);
    }

    fn on_replacement_reply(&mut self, now: Instant, frame: Frame, out: &mut Vec<Output>) {
        let Some(data) = frame.as_data() else { return };
        match self.endpoint.parse_reply(data) {
            Some(Reply::Response { id, response }) => {
                let mut r = Vec::new();
                self.requests.on_response(id, response, &mut r);
                self.apply_requests(r, out);
            }
            Some(Reply::AppPong(_)) | None => {}
            Some(reply) => {
                let mut s = Vec::new();
                if let Some(session) = Self::replacement_session(&mut self.rotation) {
                    session.on_reply(now, reply, self.endpoint.as_mut(), &mut s);
                }
                self.apply_replacement_session(now, s, out);
            }
        }
    }

    /// Carries out what the replacement's session asked for.
    fn apply_replacement_session(
        &mut self,
        now: Instant,
        outs: Vec<SessionOut>,
        out: &mut Vec<Output>,
    ) {
        for o in outs {
            let Some(r) = &self.rotation else { return };
            match o {
                SessionOut::Send(frame) => out.push(Output::SendReplacement(frame)),
                SessionOut::Ready => self.on_replacement_ready(now, out),
                SessionOut::Rejected { topic, reason } => {
                    out.push(Output::Notify(Notice::SubscriptionRejected {
                        epoch: r.epoch,
                        topic,
                        reason,
                    }));
                }
                SessionOut::Fail(cause) => {
                    self.rotation_failed(now, cause, out);
                    return;
                }
            }
        }
    }

    fn poll_rotation(&mut self, now: Instant, out: &mut Vec<Output>) {
        let Some(r) = &mut self.rotation else {
            let ready = matches!(self.phase, Phase::Open { ready: true, .. });
            if ready && self.rotate_at.is_some_and(|at| now >= at) {
                self.start_rotation(now, out);
            }
            return;
        };
        match r.stage {
            Stage::Ready { until, .. } if now >= until => return self.begin_switch(now, out),
            Stage::Ready { .. } => return,
            Stage::Dialing | Stage::Restoring { .. } => {}
        }
        if now >= r.deadline {
            let cause = Cause::ConnectFailed(Error::Timeout("rotation"));
            return self.rotation_failed(now, cause, out);
        }
        let mut s = Vec::new();
        if let Some(session) = Self::replacement_session(&mut self.rotation) {
            session.poll(now, &mut s);
        }
        self.apply_replacement_session(now, s, out);
    }

    /// The replacement's session is ready: both connections deliver for the overlap, then the
    /// switch begins.
    fn on_replacement_ready(&mut self, now: Instant, out: &mut Vec<Output>) {
        let Some(r) = &mut self.rotation else { return };
        let stage = std::mem::replace(&mut r.stage, Stage::Dialing);
        let Stage::Restoring { session, opened } = stage else {
            r.stage = stage;
            return;
        };
        let until = deadline::after(now, self.settings.rotation_overlap);
        r.stage = Stage::Ready {
            session,
            opened,
            until,
        };
        if now >= until {
            self.begin_switch(now, out);
        }
    }

    /// The overlap is over: the current connection stops taking user data and closes with
    /// 1000; the switch happens when that close is over ([`Self::switch`]).
    fn begin_switch(&mut self, now: Instant, out: &mut Vec<Output>) {
        let ready = matches!(
            self.rotation.as_ref().map(|r| &r.stage),
            Some(Stage::Ready { .. })
        );
        let Phase::Open { since, .. } = self.phase else {
            return; // Not reached: the overlap is only polled while the connection is open.
        };
        if !ready {
            return;
        }
        out.push(Output::Send(Control::Retire));
        let mut deadline = deadline::after(now, self.settings.close_timeout);
        if let Some(stop) = self.stop_requested {
            deadline = deadline.min(stop);
        }
        self.phase = Phase::Closing(Closing {
            initiator: Initiator::Local,
            code: CloseCode::NORMAL,
            reason: "rotated".to_string(),
            peer_closed: false,
            peer_code: None,
            reader_done: false,
            cause: Some(Cause::Requested),
            deadline,
            since,
            retiring: true,
        });
    }

    /// The replaced connection is closed: the replacement becomes the current connection.
    fn switch(
        &mut self,
        now: Instant,
        epoch: u64,
        session: Session,
        opened: Instant,
        out: &mut Vec<Output>,
    ) {
        out.push(Output::Retired);
        let from = std::mem::replace(&mut self.epoch, epoch);
        self.rotated_from = Some(from);
        self.session = session;
        self.phase = Phase::Open {
            since: opened,
            ready: true,
        };
        self.liveness.on_open(now);
        if let Some(l) = &mut self.latency {
            l.reset();
        }
        self.rotation_failures = 0;
        self.health.rotations += 1;
        self.health.dirty = true;
        self.rotate_at = self
            .settings
            .rotate_after
            .map(|d| deadline::after(opened, d));
        log::debug!("rotation: connection {epoch} replaced {from}");
        out.push(Output::Notify(Notice::Rotated { from, to: epoch }));
        out.push(Output::Promote { epoch });
        out.push(Output::Release { epoch });
    }

    /// The replacement failed: drop it and report; the current connection stays. With
    /// `rotate_after`, another rotation is tried after a backoff.
    fn rotation_failed(&mut self, now: Instant, cause: Cause, out: &mut Vec<Output>) {
        let Some(r) = self.rotation.take() else {
            return;
        };
        out.push(Output::DropReplacement);
        self.rotation_failures = self.rotation_failures.saturating_add(1);
        self.health.rotation_failures += 1;
        self.health.errors.push(format!("rotation failed: {cause}"));
        self.health.dirty = true;
        if let Phase::Closing(c) = &mut self.phase
            && c.retiring
        {
            // Not reached in practice (a replacement is only failed before the switch begins,
            // or by its transport during the close): the current connection is already
            // closing, so it ends as a lost connection and the reconnect policy decides.
            c.retiring = false;
            c.cause = Some(Cause::Transport(Error::Io(std::io::Error::other(format!(
                "rotation failed after the switch began: {cause}"
            )))));
        }
        let retry = self.settings.rotate_after.map(|_| self.rotation_retry());
        self.rotate_at = retry.map(|d| deadline::after(now, d));
        log::warn!("rotation to connection {} failed: {cause}", r.epoch);
        out.push(Output::Notify(Notice::RotationFailed {
            epoch: r.epoch,
            cause,
            retry,
        }));
    }

    /// The delay before retrying a failed rotation: the reconnect strategy's, or 1 s doubling
    /// to 30 s without one.
    fn rotation_retry(&mut self) -> Duration {
        let failures = self.rotation_failures;
        if let Some(reconnect) = self.reconnect.as_mut()
            && let Ok(Some(delay)) =
                guard::catch("Reconnect::next_delay", || reconnect.next_delay(failures))
        {
            return delay;
        }
        Duration::from_secs(1 << failures.clamp(1, 6).saturating_sub(1))
            .min(Duration::from_secs(30))
    }

    /// Drops a rotation in progress (the current connection is closing or lost, or the client
    /// shuts down). A connection closing for the switch then just closes.
    fn abandon_rotation(&mut self, out: &mut Vec<Output>) {
        if let Some(r) = self.rotation.take() {
            log::debug!("rotation to connection {} abandoned", r.epoch);
            out.push(Output::DropReplacement);
        }
        if let Phase::Closing(c) = &mut self.phase {
            c.retiring = false;
        }
    }

    fn stop(&mut self, out: &mut Vec<Output>) {
        self.phase = Phase::Stopped;
        out.push(Output::Stop);
        self.stopped = true;
    }
}

#[cfg(test)]
#[path = "coordinator_tests.rs"]
mod tests;
