//! Who steps the coordinator: its lock, its inbox, and the two dispatch modes.
//!
//! The sans-IO [`Coordinator`] lives behind one mutex together with what carrying out its cheap
//! outputs needs: the current link's lanes and the answer slots of callers waiting for an
//! outcome. Whoever holds the lock steps it.
//!
//! **Actor dispatch (the default).** Only the coordinator thread takes the lock: every input
//! reaches it through the inbox channel and every endpoint callback but the reader's `precheck`
//! runs on it. User threads never touch the socket: the writer thread writes everything but a
//! request the coordinator thread writes itself, right after registering it, when it is the
//! only frame queued and the writer is idle (the non-blocking direct write of
//! [`crate::client::sink`]). A `send_and_confirm` round trip crosses three thread hand-offs:
//! caller → coordinator, reader → coordinator → caller.
//!
//! **Inline dispatch (opt-in, [`Dispatch::Inline`]).** Three inputs sit on the round trip's
//! path — the caller's `Submit`, the reader's `Reply`, the writer's `Written` — and the thread
//! they come from steps them *inline* when it can, instead of waking the coordinator thread; a
//! caller whose request is the only frame queued writes it itself with a non-blocking `send`
//! (see [`crate::client::sink`]). A round trip then crosses one hand-off (reader → caller).
//! The price: endpoint callbacks (`parse_reply`, `app_ping`, ...) may run on a caller's, the
//! reader's or the writer's thread, under the lock; a caller may write the socket.
//!
//! What keeps inline steps as safe as a single owner thread:
//!
//! - **One total order.** Every input is handled under the lock. Every input sent on the inbox
//!   channel is counted from the moment it is sent until the coordinator thread has handled it,
//!   and an inline step is taken only when that count is zero (checked before taking the lock,
//!   and again under it): an input can never overtake one sent before it (a response is never
//!   handled before the registration it answers).
//! - **Never blocking under the lock.** Inline steps take the lock only if it comes free within
//!   [`LOCK_WAIT`], and carry out only outputs that cannot block: frames to a link's lanes
//!   (`try_send`) and outcomes to waiters. The rest — events, which may wait for room, dials,
//!   disconnects, which join threads — is *deferred* in order, with everything after it, and the
//!   coordinator thread is nudged to carry it out. The coordinator thread carries such outputs
//!   out with the lock *released* (marked busy, so that no inline step runs meanwhile).
//! - **Outcomes are delivered after the lock is released**: a woken caller that preempts the
//!   stepping thread does not then block on the lock it still holds.
//! - **Deadlines are not missed.** An inline step can arm a deadline earlier than the one the
//!   coordinator thread sleeps until; it then nudges the thread, which recomputes its wait.
//!
//! A thread that cannot step inline (lock busy, inputs queued, deferred work) sends its input on
//! the inbox channel, exactly the actor path: the fast path changes which thread runs a step,
//! not the order of steps nor their outputs.

use crate::sync::{AtomicUsize, Ordering};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, SendTimeoutError, Sender, TrySendError, select};
use parking_lot::{Mutex, MutexGuard};

use crate::client::coordinator::{Coordinator, Input, LinkEvent, Output, State};
use crate::client::doorbell::Doorbell;
use crate::client::link::{Directly, Lanes};
use crate::client::requests::{Outcome, WaiterId};
use crate::client::stats::Counters;
use crate::client::ticket::Answer;

/// Which threads step a connection's state machine ([`Config::dispatch`](crate::Config::dispatch)).
///
/// ```no_run
/// use syncws::{Client, Dispatch};
///
/// // A process whose threads share cores: fewer thread hand-offs per round trip.
/// let client = Client::builder("wss://venue.example/ws")
///     .dispatch(Dispatch::Inline)
///     .connect()?;
/// # Ok::<(), syncws::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Dispatch {
    /// Every input is handled on the coordinator thread, which owns all state; every
    /// [`Endpoint`](crate::Endpoint) callback but `precheck` runs there; user threads never
    /// touch the socket (the writer thread writes, and the coordinator thread writes a request
    /// it has just registered when nothing is queued ahead of it, without blocking). A
    /// `send_and_confirm` round trip crosses three thread hand-offs. The default.
    #[default]
    Actor,
    /// The fast path: a request, its response and its write report are handled on the thread
    /// they come from when nothing is queued ahead of them, and a caller whose request is the
    /// only frame queued writes it itself with a non-blocking `send` (Linux). One hand-off per
    /// round trip instead of three; the order of inputs and the outcomes are the same. Trade-offs:
    /// endpoint callbacks (`parse_reply`, `app_ping`, ...) may run on a caller's, the reader's
    /// or the writer's thread, under the state lock (they must be quick), and a caller may write
    /// the socket. For processes whose threads share cores, where each hand-off costs a context
    /// switch.
    Inline,
}

/// How long an inline step waits for the lock before sending its input on the channel instead.
/// Inline holders keep it for a few microseconds; the coordinator thread may keep it longer
/// (while it joins a link's threads, or waits for room in the event channel).
pub(crate) const LOCK_WAIT: Duration = Duration::from_micros(50);

/// Work an inline step left for the coordinator thread, in the order it must be done.
pub(crate) enum Deferred {
    Output(Output),
    Input(Input),
}

/// What carrying out one output came to.
pub(crate) enum Carried {
    Done,
    /// An input the output gives rise to, handled after the step's other outputs.
    Followup(Input),
    /// Only the coordinator thread can carry this out.
    Heavy(Output),
}

/// The coordinator and what its cheap outputs need. Lives behind [`Shared::core`].
pub(crate) struct Core {
    pub coordinator: Coordinator,
    /// The current link's lanes; `None` between links.
    pub lanes: Option<Lanes>,
    /// A rotation's replacement's lanes, until the switch.
    pub replacement: Option<Lanes>,
    /// Callers waiting for a request outcome.
    waiters: HashMap<WaiterId, Answer>,
    /// Outcomes to deliver once the lock is released (a woken caller would otherwise preempt
    /// the thread holding it, then block on it).
    answers: Vec<(Answer, Outcome)>,
    counters: Arc<Counters>,
    /// Work for the coordinator thread, in order: what inline steps left, and the rest of the
    /// step it is carrying out.
    pub deferred: VecDeque<Deferred>,
    /// The coordinator thread has released the lock in the middle of a step (to carry out an
    /// output that may block): no inline step may run until it is done.
    pub busy: bool,
    /// When the coordinator thread wakes by itself next (`None`: only for an input).
    pub wakes_at: Option<Instant>,
    /// Reused buffers of inline steps.
    out: Vec<Output>,
    followups: VecDeque<Input>,
}

impl Core {
    pub(crate) fn new(coordinator: Coordinator, counters: Arc<Counters>) -> Self {
        Core {
            coordinator,
            lanes: None,
            replacement: None,
            waiters: HashMap::new(),
            answers: Vec::new(),
            counters,
            deferred: VecDeque::new(),
            busy: false,
            wakes_at: None,
            out: Vec::new(),
            followups: VecDeque::new(),
        }
    }

    /// Feeds one input to the coordinator, with the readings every step starts with; its
    /// outputs are appended to `out`.
    pub(crate) fn feed(&mut self, mut input: Input, out: &mut Vec<Output>) {
        if let Input::Submit { waiter, reply, .. } = &mut input
            && let Some(tx) = reply.take()
        {
            self.waiters.insert(*waiter, tx);
        }
        let now = Instant::now();
        if let Some(at) = self.counters.last_data() {
            self.coordinator.data_seen(at);
        }
        self.coordinator.handle(now, input, out);
        // `Ready` is published by `Output::Ready`, after stale frames have left the lane.
        let state = self.coordinator.state();
        if state != State::Ready {
            self.counters.set_state(state);
        }
        self.counters.publish(self.coordinator.health_mut());
    }

    /// Carries out `output` if that cannot block.
    pub(crate) fn carry(&mut self, output: Output) -> Carried {
        match output {
            Output::Send(control) => self.to_lanes(|l| l.control.try_send(control).map_err(drop)),
            Output::SendSession(frame) => {
                self.to_lanes(|l| l.session.try_send(frame).map_err(drop))
            }
            Output::SendReplacement(frame) => {
                if let Some(lanes) = &self.replacement
                    && lanes.session.try_send(frame).is_err()
                {
                    log::warn!(
                        "session lane of replacement {} full; frame dropped",
                        lanes.epoch
                    );
                }
            }
            Output::Withdrawn => {
                if let Some(lanes) = &self.lanes {
                    lanes.bell.ring();
                }
            }
            Output::Accepted(origin, claim) => {
                let Some(lanes) = &self.lanes else {
                    return Carried::Done;
                };
                let directly = lanes.write_direct(origin, &claim, &self.counters);
                match directly {
                    Directly::Written(Some(origin)) => {
                        let event = LinkEvent::Written(origin);
                        let epoch = lanes.epoch;
                        return Carried::Followup(Input::Link { epoch, event });
                    }
                    Directly::Written(None) | Directly::Handled => {}
                    // The writer may be waiting at this frame.
                    Directly::Left => lanes.bell.ring(),
                }
            }
            Output::Resolve(waiter, outcome) => {
                if let Some(answer) = self.waiters.remove(&waiter) {
                    self.answers.push((answer, outcome));
                }
            }
            heavy => return Carried::Heavy(heavy),
        }
        Carried::Done
    }

    fn to_lanes(&self, send: impl FnOnce(&Lanes) -> Result<(), ()>) {
        if let Some(lanes) = &self.lanes
            && send(lanes).is_err()
        {
            log::warn!(
                "lane of connection {} full or closed; frame dropped",
                lanes.epoch
            );
        }
    }

    /// Answers every caller still waiting (the coordinator has stopped).
    pub(crate) fn answer_all(&mut self, outcome: Outcome) {
        for (_, answer) in self.waiters.drain() {
            self.answers.push((answer, outcome.clone()));
        }
    }

    /// The outcomes decided so far, to deliver with [`deliver`] after releasing the lock.
    pub(crate) fn take_answers(&mut self) -> Vec<(Answer, Outcome)> {
        std::mem::take(&mut self.answers)
    }
}

/// Delivers outcomes taken with [`Core::take_answers`]. A caller that gave up reads nothing.
pub(crate) fn deliver(answers: Vec<(Answer, Outcome)>) {
    for (answer, outcome) in answers {
        answer.send(outcome);
    }
}

/// The count of inputs sent on the inbox channel and not yet handled: what keeps an inline step
/// from overtaking a queued input. A sender counts an input *before* sending it; the
/// coordinator thread uncounts it *under the lock*, once handled; an inline step runs only if
/// the count is zero, read under the lock (and before taking it, to spare a useless lock). So if
/// an input was sent before an inline step began, the step sees it counted and queues instead.
/// Model-checked with loom (`loom_models` below).
#[derive(Debug, Default)]
pub(crate) struct Queued(AtomicUsize);

impl Queued {
    /// An input is about to be sent on the channel.
    pub(crate) fn sent(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }

    /// An input counted by [`Queued::sent`] was not sent after all, or has been handled.
    pub(crate) fn done(&self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }

    /// No input is waiting on the channel or being handled from it.
    pub(crate) fn is_idle(&self) -> bool {
        self.0.load(Ordering::SeqCst) == 0
    }
}

/// The coordinator's lock and the count of inputs sent on the inbox channel and not yet handled.
pub(crate) struct Shared {
    pub core: Mutex<Core>,
    queued: Queued,
}

impl Shared {
    pub(crate) fn new(core: Core) -> Arc<Self> {
        Arc::new(Shared {
            core: Mutex::new(core),
            queued: Queued::default(),
        })
    }

    /// The coordinator thread has handled an input it received from the channel. Called with
    /// the lock held.
    pub(crate) fn handled(&self, core: &MutexGuard<'_, Core>) {
        self.queued.done();
        Counters::bump(&core.counters.queued_steps, 1);
    }
}

/// A handle for sending inputs to the coordinator: on the channel, or inline.
#[derive(Clone)]
pub(crate) struct Inbox {
    tx: Sender<Input>,
    shared: Arc<Shared>,
    /// Inline dispatch ([`Dispatch::Inline`]).
    inline: bool,
    /// Wakes the coordinator thread, which parks on it when the inbox is empty.
    pub bell: Arc<Doorbell>,
}

impl Inbox {
    pub(crate) fn new(tx: Sender<Input>, shared: Arc<Shared>, inline: bool) -> Self {
        let bell = Arc::new(Doorbell::default());
        Inbox {
            tx,
            shared,
            inline,
            bell,
        }
    }

    /// Sends on the channel, waiting for room.
    pub(crate) fn send(&self, input: Input) -> Result<(), Input> {
        self.count(|tx| tx.send(input).map_err(|e| e.into_inner()))
    }

    /// Sends on the channel, waiting for room until `deadline`.
    pub(crate) fn send_deadline(&self, input: Input, deadline: Instant) -> bool {
        self.count(|tx| {
            tx.send_deadline(input, deadline).map_err(|e| match e {
                SendTimeoutError::Timeout(i) | SendTimeoutError::Disconnected(i) => i,
            })
        })
        .is_ok()
    }

    /// Sends on the channel if there is room.
    pub(crate) fn try_send(&self, input: Input) -> bool {
        self.count(|tx| tx.try_send(input).map_err(|e| e.into_inner()))
            .is_ok()
    }

    /// Sends on the channel from a link's reader or writer, giving up if the link is released
    /// first (the coordinator thread may be busy joining that very thread).
    pub(crate) fn report(&self, input: Input, release: &Receiver<()>) {
        let _ = self.count(|tx| match tx.try_send(input) {
            Ok(()) => Ok(()),
            Err(TrySendError::Disconnected(input)) => Err(input),
            Err(TrySendError::Full(input)) => select! {
                send(tx, input) -> r => r.map_err(|e| e.into_inner()),
                recv(release) -> _ => Err(Input::Tick),
            },
        });
    }

    /// Steps `input` inline if it can; otherwise sends it on the channel, waiting for room
    /// until `deadline`. False if it was neither stepped nor sent.
    pub(crate) fn step_or_send_deadline(&self, input: Input, deadline: Instant) -> bool {
        match self.step_inline(input) {
            Ok(()) => true,
            Err(input) => self.send_deadline(input, deadline),
        }
    }

    /// Steps `input` inline if it can; otherwise reports it like [`Inbox::report`].
    pub(crate) fn step_or_report(&self, input: Input, release: &Receiver<()>) {
        if let Err(input) = self.step_inline(input) {
            self.report(input, release);
        }
    }

    /// Counts an input as queued while `send` puts it on the channel (uncounted if it fails),
    /// and wakes the coordinator thread.
    fn count(&self, send: impl FnOnce(&Sender<Input>) -> Result<(), Input>) -> Result<(), Input> {
        self.shared.queued.sent();
        let sent = send(&self.tx);
        match sent {
            Ok(()) => self.bell.ring(),
            Err(_) => self.shared.queued.done(),
        }
        sent
    }

    /// Handles `input` on this thread, or gives it back if dispatch is not inline or if that
    /// could reorder inputs or block.
    fn step_inline(&self, input: Input) -> Result<(), Input> {
        // Checked before the lock too: an input queued ahead means the lock is no use.
        if !self.inline || !self.shared.queued.is_idle() {
            return Err(input);
        }
        let Some(mut core) = self.shared.core.try_lock_for(LOCK_WAIT) else {
            return Err(input);
        };
        if !self.shared.queued.is_idle() || core.busy || !core.deferred.is_empty() {
            return Err(input);
        }
        Counters::bump(&core.counters.inline_steps, 1);
        let mut out = std::mem::take(&mut core.out);
        let mut followups = std::mem::take(&mut core.followups);
        followups.push_back(input);
        while let Some(input) = followups.pop_front() {
            if !core.deferred.is_empty() {
                core.deferred.push_back(Deferred::Input(input));
                continue;
            }
            core.feed(input, &mut out);
            for output in out.drain(..) {
                if !core.deferred.is_empty() {
                    core.deferred.push_back(Deferred::Output(output));
                    continue;
                }
                match core.carry(output) {
                    Carried::Done => {}
                    Carried::Followup(input) => followups.push_back(input),
                    Carried::Heavy(output) => core.deferred.push_back(Deferred::Output(output)),
                }
            }
        }
        core.out = out;
        core.followups = followups;
        let earlier = match (core.coordinator.next_deadline(), core.wakes_at) {
            (Some(next), Some(wake)) => next < wake,
            (Some(_), None) => true,
            (None, _) => false,
        };
        let nudge = earlier || !core.deferred.is_empty();
        if nudge {
            // The coordinator thread will sleep until the new deadline, not the old one.
            core.wakes_at = core.coordinator.next_deadline();
        }
        let answers = core.take_answers();
        drop(core);
        // The nudge before the answers: a woken caller may take this core for a while.
        if nudge && !self.try_send(Input::Tick) {
            // The channel is full: the coordinator thread is busy with it and will look again.
            log::trace!("coordinator nudge dropped: inbox full");
        }
        deliver(answers);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::affinity::WaitStrategy;
    use crate::client::claim::{Claim, RequestFrame};
    use crate::client::coordinator::{Control, Settings};
    use crate::client::doorbell::Doorbell;
    use crate::client::doorbell::Lane;
    use crate::client::lane::Outbound;
    use crate::client::requests::{ConfirmMode, Request, Response, Submission};
    use crate::client::sink::Sink;
    use crate::client::ticket::Ticket;
    use crate::frame::Frame;
    use crate::transport::Direct;
    use crate::{Data, Endpoint, Keepalive, Reply};
    use std::sync::atomic::AtomicBool;

    /// Responses are texts `resp ID`.
    struct Venue;

    impl Endpoint for Venue {
        fn subscribe(&mut self, topic: &str) -> Option<Frame> {
            Some(Frame::text(topic))
        }
        fn parse_reply(&mut self, msg: Data<'_>) -> Option<Reply> {
            let Data::Text(t) = msg else { return None };
            let id = t.strip_prefix("resp ")?.parse().ok()?;
            let response = Response::Ok {
                retry_after: None,
                hint: None,
            };
            Some(Reply::Response { id, response })
        }
    }

    struct Rig {
        inbox: Inbox,
        shared: Arc<Shared>,
        /// The coordinator thread's end of the inbox channel.
        inputs: crossbeam_channel::Receiver<Input>,
        /// The writer's ends of the lanes.
        data: crossbeam_channel::Receiver<Outbound>,
        data_tx: crossbeam_channel::Sender<Outbound>,
        session: crossbeam_channel::Receiver<Frame>,
        control: crossbeam_channel::Receiver<Control>,
        kick: Arc<AtomicBool>,
        /// The server's end of the connection.
        peer: std::net::TcpStream,
        next_waiter: u64,
    }

    /// A core with connection 1 open and its session ready, as the coordinator thread would
    /// leave it (its own outputs dropped).
    fn rig(dispatch: Dispatch) -> Rig {
        let settings = Settings {
            close_timeout: Duration::from_secs(1),
            stable_after: Duration::from_secs(30),
            keepalive: Keepalive::ServerDriven,
            stale_after: None,
            ack_timeout: Duration::from_secs(5),
            max_topics: 8,
            latency: None,
            max_pending: 4096,
            rotate_after: None,
            rotation_timeout: Duration::from_secs(20),
            rotation_overlap: Duration::ZERO,
        };
        let inline = dispatch == Dispatch::Inline;
        let coordinator = Coordinator::new(settings, Box::new(Venue), None, Instant::now());
        let counters = Arc::new(Counters::new());
        let shared = Shared::new(Core::new(coordinator, counters));
        let (tx, inputs) = crossbeam_channel::bounded(16);
        let bell = Arc::new(Doorbell::default());
        let (control_tx, control) = crossbeam_channel::bounded(8);
        let (session_tx, session) = crossbeam_channel::bounded(8);
        let (data_tx, data) = crossbeam_channel::bounded(64);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let sock = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (peer, _) = listener.accept().unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let stream = crate::transport::Stream {
            under: None,
            sock: std::sync::Arc::new(sock),
            tls: None,
        };
        let (_read, write, _socket) = stream.split().unwrap();
        let mut sink = Sink::new(write, None);
        sink.st.data_open = true; // As the writer does on `OpenData`.
        let kick = Arc::new(AtomicBool::new(false));
        {
            let mut core = shared.core.lock();
            core.lanes = Some(Lanes {
                epoch: 1,
                control: Lane::new(control_tx, bell.clone()),
                session: Lane::new(session_tx, bell.clone()),
                data: data.clone(),
                sink: Arc::new(Mutex::new(sink)),
                kick: kick.clone(),
                bell,
                outbox: Default::default(),
            });
            let mut out = Vec::new();
            core.feed(Input::Connected { epoch: 1 }, &mut out);
            assert!(out.iter().any(|o| matches!(o, Output::Ready)), "{out:?}");
            core.counters.set_ready_epoch(1);
        }
        Rig {
            inbox: Inbox::new(tx, shared.clone(), inline),
            shared,
            inputs,
            data,
            data_tx,
            session,
            control,
            kick,
            peer,
            next_waiter: 1,
        }
    }

    impl Rig {
        fn submit(&mut self, id: u64) -> Ticket {
            self.submit_request(Request::new(id, id, Frame::text(format!("order {id}"))))
        }

        /// What `Client::submit` does: the frame onto the data lane, then the registration.
        fn submit_request(&mut self, request: Request) -> Ticket {
            let id = request.id;
            let deadline = Instant::now() + request.timeout;
            let (ticket, answer) = Ticket::new(id, deadline, WaitStrategy::Block);
            let waiter = WaiterId(self.next_waiter);
            self.next_waiter += 1;
            let claim = Arc::new(Claim::default());
            let frame = RequestFrame {
                origin: waiter,
                frame: request.frame,
                deadline,
                report_written: request.mode == ConfirmMode::Sent,
                claim: claim.clone(),
            };
            self.data_tx
                .send(Outbound::Request(Box::new(frame)))
                .unwrap();
            let sub = Submission {
                id,
                fingerprint: request.fingerprint,
                mode: request.mode,
                deadline,
                epoch: 1,
                claim,
            };
            let input = Input::Submit {
                waiter,
                sub,
                reply: Some(answer),
            };
            assert!(self.inbox.step_or_send_deadline(input, deadline));
            ticket
        }

        /// The next frame the server received, unmasked.
        fn on_wire(&mut self) -> String {
            read_frame(&mut self.peer)
        }

        /// True if the server has received nothing more.
        fn wire_is_quiet(&self) -> bool {
            self.peer.set_nonblocking(true).unwrap();
            let quiet = matches!(self.peer.peek(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
            self.peer.set_nonblocking(false).unwrap();
            quiet
        }

        fn lanes<R>(&self, f: impl FnOnce(&Lanes) -> R) -> R {
            f(self.shared.core.lock().lanes.as_ref().unwrap())
        }

        fn respond(&self, id: u64) {
            let event = LinkEvent::Reply(Frame::text(format!("resp {id}")));
            let (_keep, release) = crossbeam_channel::bounded::<()>(1);
            self.inbox
                .step_or_report(Input::Link { epoch: 1, event }, &release);
        }

        /// The request frame queued next on the data lane (for the writer thread).
        fn queued_request(&self) -> WaiterId {
            match self.data.try_recv() {
                Ok(Outbound::Request(r)) => r.origin,
                other => panic!("expected a request frame, got {other:?}"),
            }
        }

        /// Does what the coordinator thread does with everything in the inbox (outputs other
        /// than outcomes are dropped).
        fn drain_inbox(&self) {
            while let Ok(input) = self.inputs.try_recv() {
                let mut core = self.shared.core.lock();
                core.deferred.push_back(Deferred::Input(input));
                while let Some(item) = core.deferred.pop_front() {
                    let Deferred::Input(input) = item else {
                        continue;
                    };
                    let mut out = Vec::new();
                    core.feed(input, &mut out);
                    for o in out {
                        if let Carried::Followup(input) = core.carry(o) {
                            core.deferred.push_back(Deferred::Input(input));
                        }
                    }
                }
                self.shared.handled(&core);
                core.wakes_at = core.coordinator.next_deadline();
                let answers = core.take_answers();
                drop(core);
                deliver(answers);
            }
        }

        /// Handles the nudge an earlier deadline sent, as the coordinator thread would.
        fn drain_inbox_after_nudge(&self) {
            self.drain_inbox();
            assert!(self.inputs.is_empty());
        }
    }

    fn confirmed(ticket: &mut Ticket) -> bool {
        matches!(ticket.try_outcome(), Some(Outcome::Confirmed { .. }))
    }

    #[test]
    fn submit_and_response_are_handled_on_the_calling_threads() {
        let mut rig = rig(Dispatch::Inline);
        let mut ticket = rig.submit(7);
        assert_eq!(rig.on_wire(), "order 7", "written by the caller");
        assert!(rig.data.is_empty());
        // The first deadline is earlier than the coordinator thread's wake-up (none): nudged.
        assert_eq!(rig.inputs.len(), 1);
        rig.drain_inbox_after_nudge();
        assert_eq!(ticket.try_outcome(), None);
        rig.respond(7);
        assert!(confirmed(&mut ticket), "resolved by the reader's step");
        assert!(
            rig.inputs.is_empty(),
            "the coordinator thread was not needed"
        );
        let core = rig.shared.core.lock();
        assert_eq!(core.counters.inline_steps.load(Ordering::Relaxed), 2);
        assert_eq!(
            core.counters.queued_steps.load(Ordering::Relaxed),
            1,
            "the nudge"
        );
    }

    /// The default: every input goes to the coordinator thread; the caller writes nothing, the
    /// coordinator thread writes the request it registered.
    #[test]
    fn actor_dispatch_steps_nothing_inline_and_only_the_coordinator_writes_directly() {
        let mut rig = rig(Dispatch::Actor);
        let mut ticket = rig.submit(7);
        assert_eq!(rig.inputs.len(), 1, "the registration went to the inbox");
        assert!(rig.wire_is_quiet(), "the caller wrote nothing");
        assert_eq!(rig.data.len(), 1, "the frame waits on the lane");
        rig.drain_inbox();
        assert!(
            rig.data.is_empty(),
            "the coordinator took the frame off the lane"
        );
        assert!(!rig.wire_is_quiet(), "and wrote it");
        rig.respond(7);
        assert_eq!(rig.inputs.len(), 1, "the response went to the inbox");
        assert_eq!(ticket.try_outcome(), None);
        rig.drain_inbox();
        assert!(confirmed(&mut ticket));
        let core = rig.shared.core.lock();
        assert_eq!(core.counters.inline_steps.load(Ordering::Relaxed), 0);
        assert_eq!(core.counters.direct_writes.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn an_input_never_overtakes_one_queued_before_it() {
        let mut rig = rig(Dispatch::Inline);
        // Something is waiting in the inbox: the submit must queue behind it.
        rig.inbox.send(Input::Tick).unwrap();
        let mut first = rig.submit(1);
        assert!(rig.wire_is_quiet(), "not handled ahead of the queued input");
        assert_eq!(rig.inputs.len(), 2);
        rig.drain_inbox();
        assert_eq!(rig.on_wire(), "order 1", "then handled, in order");
        // Now the inbox is empty and the coordinator free: inline again.
        rig.respond(1);
        assert!(confirmed(&mut first));
        assert!(rig.inputs.is_empty());
    }

    #[test]
    fn work_only_the_coordinator_thread_may_do_is_deferred_with_what_follows() {
        let mut rig = rig(Dispatch::Inline);
        let _ = rig.submit(1);
        rig.drain_inbox_after_nudge();
        // A response to no pending request is an orphan event: deferred, and a nudge sent.
        rig.respond(99);
        assert!(matches!(rig.inputs.try_recv(), Ok(Input::Tick)));
        // Say the nudge is gone (as when the inbox was full): the deferred work alone must hold
        // inline steps back until the coordinator thread has carried it out.
        rig.shared.handled(&rig.shared.core.lock());
        rig.respond(1);
        assert_eq!(rig.inputs.len(), 1, "the response took the queue");
        let mut core = rig.shared.core.lock();
        assert!(matches!(
            core.deferred.pop_front(),
            Some(Deferred::Output(Output::Notify(_)))
        ));
        assert!(core.deferred.is_empty());
        // While the coordinator thread carries out such work without the lock, nothing is
        // stepped inline either.
        core.busy = true;
        drop(core);
        rig.drain_inbox();
        rig.respond(2);
        assert_eq!(rig.inputs.len(), 1, "queued while the core is busy");
    }

    /// Finding 6: a request is never written ahead of a frame queued before it — user data
    /// (on the same lane, behind which it waits), session or control frames.
    #[test]
    fn requests_never_overtake_earlier_sends() {
        let mut rig = rig(Dispatch::Inline);
        let _ = rig.submit(1);
        assert_eq!(rig.on_wire(), "order 1");
        rig.drain_inbox_after_nudge();
        // A user frame sent earlier still waits: the request queues behind it on the same lane.
        rig.data_tx
            .send(Outbound::Owned(Frame::text("cancel 1")))
            .unwrap();
        let _ = rig.submit(2);
        assert!(rig.wire_is_quiet());
        assert!(matches!(rig.data.try_recv(), Ok(Outbound::Owned(_))));
        assert_eq!(
            rig.queued_request(),
            WaiterId(2),
            "behind it, in call order"
        );
        // A session frame waits in its lane: the request must not overtake it on the wire.
        rig.lanes(|l| l.session.try_send(Frame::text("sub")).unwrap());
        let _ = rig.submit(3);
        assert_eq!(rig.queued_request(), WaiterId(3), "queued behind it");
        rig.session.try_recv().unwrap();
        // So must a control frame (a pong the reader queued, a close).
        rig.lanes(|l| l.control.try_send(Control::Pong(vec![])).unwrap());
        let _ = rig.submit(4);
        assert_eq!(rig.queued_request(), WaiterId(4));
        rig.control.try_recv().unwrap();
        let _ = rig.submit(5);
        assert_eq!(
            rig.on_wire(),
            "order 5",
            "direct again once the lanes are empty"
        );
    }

    #[test]
    fn a_request_is_queued_while_the_writer_thread_writes() {
        let mut rig = rig(Dispatch::Inline);
        let _ = rig.submit(1);
        assert_eq!(rig.on_wire(), "order 1");
        rig.drain_inbox_after_nudge();
        let sink = rig.lanes(|l| l.sink.clone());
        let writing = sink.lock(); // As the writer thread holds it for a batch.
        let _ = rig.submit(2);
        drop(writing);
        assert_eq!(rig.queued_request(), WaiterId(2));
        // After a failed write the stream may be cut mid-frame: never again directly.
        sink.lock().failed = true;
        let _ = rig.submit(3);
        assert_eq!(rig.queued_request(), WaiterId(3));
    }

    /// The server stops reading; requests of 15 KiB are written directly until the kernel takes
    /// only part of one. The rest is kept as spill and the writer thread is told (finding 10:
    /// through the sink's kick flag, which its wait checks, not a control frame that may not
    /// fit); the next request is queued; once the spill is written (as the writer thread would,
    /// first), the server has every frame whole and in order.
    #[test]
    fn a_partial_direct_write_leaves_the_rest_to_the_writer_thread() {
        let mut rig = rig(Dispatch::Inline);
        let sink = rig.lanes(|l| l.sink.clone());
        let padding = "x".repeat(15 * 1024);
        let big = |id: u64| Request::new(id, id, Frame::text(format!("order {id} {padding}")));
        let mut id = 0;
        while sink.lock().spill.is_empty() {
            id += 1;
            assert!(id < 4000, "the kernel never refused part of a frame");
            assert!(!rig.kick.load(Ordering::SeqCst));
            let _ = rig.submit_request(big(id));
            rig.drain_inbox(); // The first submit's nudge.
            assert!(rig.data.is_empty(), "request {id} was written directly");
        }
        let spilled = id;
        assert!(rig.kick.load(Ordering::SeqCst), "writer told");
        assert!(rig.control.is_empty(), "no control frame needed for that");
        let _ = rig.submit_request(big(spilled + 1));
        assert_eq!(
            rig.queued_request(),
            WaiterId(spilled + 1),
            "queued behind the spill"
        );
        // The writer thread's part: the spill first.
        let rest = std::mem::take(&mut sink.lock().spill);
        let writer = std::thread::spawn(move || sink.lock().half.write_raw_all(&rest));
        for expected in 1..=spilled {
            let text = read_frame(&mut rig.peer);
            assert!(
                text.starts_with(&format!("order {expected} ")) && text.len() > 15 * 1024,
                "frame {expected} arrived whole"
            );
        }
        writer.join().unwrap().unwrap();
        assert!(rig.wire_is_quiet());
    }

    /// The socket's send buffer is full: the kernel takes not a byte of a direct write. The
    /// request is not dropped: it goes to the writer thread, first in line, still untaken
    /// (regression: it used to be withdrawn and answered `NotDelivered` only at its deadline).
    #[test]
    fn a_direct_write_the_kernel_refuses_goes_to_the_writer_thread() {
        let mut rig = rig(Dispatch::Inline);
        let _ = rig.submit(1);
        assert_eq!(rig.on_wire(), "order 1");
        rig.drain_inbox_after_nudge();
        // Fill the send buffer (the server does not read), then drop what did not fit.
        let sink = rig.lanes(|l| l.sink.clone());
        {
            let mut sink = sink.lock();
            let junk = vec![0u8; 64 * 1024];
            let mut full = false;
            for _ in 0..4096 {
                let mut rest = Vec::new();
                if sink.half.write_direct(&junk, &mut rest) == Direct::Declined {
                    full = true;
                    break;
                }
            }
            assert!(full, "the send buffer never filled");
        }
        let mut ticket = rig.submit(2);
        assert!(rig.kick.load(Ordering::SeqCst), "the writer thread is told");
        let held = sink.lock().held.take();
        let Some(Outbound::Request(request)) = held else {
            panic!("the request was not handed to the writer thread: {held:?}");
        };
        assert_eq!(request.origin, WaiterId(2));
        assert_eq!(
            request.take(Instant::now()),
            crate::client::claim::Take::Write,
            "still the writer's to write"
        );
        assert_eq!(ticket.try_outcome(), None, "not answered NotDelivered");
    }

    #[test]
    fn a_request_past_its_deadline_is_not_written_and_not_taken() {
        let mut rig = rig(Dispatch::Inline);
        let _ = rig.submit(1);
        assert_eq!(rig.on_wire(), "order 1");
        rig.drain_inbox_after_nudge();
        let request = Request::new(2, 2, Frame::text("order 2")).timeout(Duration::ZERO);
        let mut ticket = rig.submit_request(request);
        rig.drain_inbox();
        assert_eq!(
            ticket.try_outcome(),
            Some(Outcome::NotDelivered(
                crate::client::requests::Undelivered::Deadline
            ))
        );
        assert!(rig.wire_is_quiet());
    }

    /// Reads one masked text frame of any length from `peer`; returns its text.
    fn read_frame(peer: &mut std::net::TcpStream) -> String {
        use std::io::Read;
        let mut head = [0u8; 2];
        peer.read_exact(&mut head).unwrap();
        let len = match head[1] & 0x7f {
            126 => {
                let mut ext = [0u8; 2];
                peer.read_exact(&mut ext).unwrap();
                usize::from(u16::from_be_bytes(ext))
            }
            127 => panic!("unexpected 64-bit length"),
            n => usize::from(n),
        };
        let mut mask = [0u8; 4];
        peer.read_exact(&mut mask).unwrap();
        let mut payload = vec![0u8; len];
        peer.read_exact(&mut payload).unwrap();
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
        String::from_utf8(payload).unwrap()
    }
}

#[cfg(all(loom, test))]
mod loom_models {
    use super::Queued;
    use crate::sync::model;
    use crate::sync::{Mutex, thread};
    use loom::sync::Arc;
    use loom::sync::mpsc::{Receiver, Sender, channel};

    /// Sent (uncounted) by a thread that has finished, so the coordinator knows when to stop.
    const END: u32 = 0;

    /// The real count and the coordinator's lock guarding the log of handled inputs; the inbox
    /// is loom's channel, standing in for crossbeam's (whose own ordering is not in question).
    #[derive(Default)]
    struct Stepper {
        queued: Queued,
        core: Mutex<Vec<u32>>,
    }

    impl Stepper {
        /// `Inbox::count` around a send.
        fn send(&self, inbox: &Sender<u32>, input: u32) {
            self.queued.sent();
            inbox.send(input).unwrap();
        }

        /// `Inbox::step_inline`'s checks: the count before the lock and again under it.
        fn step_inline(&self, input: u32) -> bool {
            if !self.queued.is_idle() {
                return false;
            }
            let mut core = self.core.lock();
            if !self.queued.is_idle() {
                return false;
            }
            core.push(input);
            true
        }

        /// Steps `input` inline, or sends it when that could reorder inputs.
        fn step_or_send(&self, inbox: &Sender<u32>, input: u32) {
            if !self.step_inline(input) {
                self.send(inbox, input);
            }
        }

        /// The coordinator thread: handles what the inbox brings, uncounting each input under
        /// the lock (`Shared::handled`), until `threads` have sent `END`.
        fn coordinator(&self, inbox: Receiver<u32>, threads: usize) {
            let mut ended = 0;
            while ended < threads {
                match inbox.recv().unwrap() {
                    END => ended += 1,
                    input => {
                        let mut core = self.core.lock();
                        core.push(input);
                        self.queued.done();
                    }
                }
            }
        }
    }

    /// A caller sends its registration (1) on the inbox; its frame goes out and the response
    /// comes back, so the response (2) is stepped inline — or sent — only after that send
    /// returned (the same thread stands for both, which is the causal order). The coordinator
    /// thread handles the inbox meanwhile, possibly still holding the registration uncounted
    /// when the response tries the lock. In every interleaving the response is handled after
    /// the registration: an inline step never overtakes an input sent before it began.
    #[test]
    fn loom_inline_step_never_overtakes_a_queued_input() {
        model(|| {
            let s = Arc::new(Stepper::default());
            let (tx, rx) = channel();
            let peer = {
                let s = s.clone();
                thread::spawn(move || {
                    s.send(&tx, 1);
                    s.step_or_send(&tx, 2);
                    tx.send(END).unwrap();
                })
            };
            s.coordinator(rx, 1);
            peer.join().unwrap();
            assert_eq!(*s.core.lock(), [1, 2]);
            assert!(s.queued.is_idle());
        });
    }

    /// Two threads with no order between them each step an input inline or send it, while a
    /// third input waits in the inbox. Every input is handled exactly once, the queued one
    /// before any inline step that began after it was sent, and the count returns to zero.
    #[test]
    fn loom_every_input_is_handled_once() {
        model(|| {
            let s = Arc::new(Stepper::default());
            let (tx, rx) = channel();
            s.send(&tx, 3);
            let threads: Vec<_> = [1, 2]
                .into_iter()
                .map(|input| {
                    let (s, tx) = (s.clone(), tx.clone());
                    thread::spawn(move || {
                        s.step_or_send(&tx, input);
                        tx.send(END).unwrap();
                    })
                })
                .collect();
            s.coordinator(rx, 2);
            for t in threads {
                t.join().unwrap();
            }
            let handled = s.core.lock().clone();
            assert_eq!(
                handled.first(),
                Some(&3),
                "the queued input first: {handled:?}"
            );
            let mut sorted = handled.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, [1, 2, 3]);
            assert!(s.queued.is_idle());
        });
    }
}
