//! The coordinator thread: a thin driver around the sans-IO
//! [`Coordinator`](crate::client::coordinator::Coordinator).
//!
//! It waits for the next input or the coordinator's next deadline, takes the coordinator's lock
//! (see [`stepper`](crate::client::stepper): the latency-critical inputs are usually stepped inline by
//! the thread they come from), carries out what inline steps left for it, feeds the input, and
//! carries out the outputs: frames go to the current link's lanes, outcomes to waiting callers,
//! notices to the application's event channel, a dial starts a short-lived `NAME-dial` thread,
//! a disconnect shuts the link down and joins its threads.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::Receiver;

use crate::client::coordinator::{Control, Input, LinkEvent, Notice, Output, State};
use crate::client::doorbell::{Doorbell, SeatId};
use crate::client::event::Event;
use crate::client::events::Unsent;
use crate::client::handover::{Handover, decide};
use crate::client::ingress::Ingress;
use crate::client::lane::Outbound;
use crate::client::link::{AbortSlot, Feed, Link, LinkFactory, Opened, spawn};
use crate::client::reader;
use crate::client::requests::{Outcome, Unknown};
use crate::client::stats::Counters;
use crate::client::stepper::{Carried, Core, Deferred, Shared, deliver};
use crate::error::Error;
use crate::guard::Panicked;

/// A dial running on its own thread.
struct Dial<I> {
    epoch: u64,
    handle: JoinHandle<Opened<I>>,
    abort: AbortSlot,
    /// Receives (or disconnects) when the dial thread is about to finish.
    done: Receiver<()>,
}

impl<I> Dial<I> {
    /// True once the dial thread is finishing (a join will not wait long).
    fn is_done(dial: &Option<Dial<I>>) -> bool {
        dial.as_ref().is_some_and(|d| !d.done.is_empty())
    }

    /// Stops the dial: its socket is shut down (ending the TLS or HTTP handshake at once; a TCP
    /// connect in progress ends within `connect_timeout`), the thread joined, and a link it
    /// opened anyway dropped (never announced: it carried no request).
    fn abort(self) {
        if let Some(sock) = self.abort.lock().as_ref() {
            let _ = sock.shutdown(std::net::Shutdown::Both);
        }
        if let Ok(Ok((mut link, _))) = self.handle.join() {
            link.disconnect();
        }
    }
}

pub(crate) struct Driver<I: Ingress> {
    /// The coordinator, behind the lock that inline steps share.
    pub shared: Arc<Shared>,
    pub inputs: Receiver<Input>,
    pub factory: Arc<LinkFactory<I::Output>>,
    /// Disconnected when the client gives up on a graceful shutdown: stop waiting on the app.
    pub abort: Receiver<()>,
    pub link: Option<Link<I>>,
    /// The ingress while no link holds it.
    pub ingress: Option<I>,
    pub counters: Arc<Counters>,
    /// Keep queued user data across a reconnect instead of discarding it.
    pub buffer_while_disconnected: bool,
    dial: Option<Dial<I>>,
    /// A rotation's replacement: its dial, then its link until the switch.
    replacement_dial: Option<Dial<I>>,
    replacement: Option<Link<I>>,
    /// A frame the replaced link's writer had taken off the data lane but not written (held
    /// at a request awaiting registration): first for the replacement's writer.
    carried: Option<Outbound>,
    out: Vec<Output>,
    /// True until the driver runs on its own thread: notices must not wait for room then,
    /// because nobody can be consuming events yet.
    pub starting: bool,
}

impl<I: Ingress> Driver<I> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        shared: Arc<Shared>,
        inputs: Receiver<Input>,
        factory: Arc<LinkFactory<I::Output>>,
        abort: Receiver<()>,
        link: Link<I>,
        counters: Arc<Counters>,
        buffer_while_disconnected: bool,
    ) -> Self {
        Driver {
            shared,
            inputs,
            factory,
            abort,
            link: Some(link),
            ingress: None,
            counters,
            buffer_while_disconnected,
            dial: None,
            replacement_dial: None,
            replacement: None,
            carried: None,
            out: Vec::new(),
            starting: true,
        }
    }

    pub(crate) fn run(mut self) {
        let bell = self.factory.inputs.bell.clone();
        let seat = bell.register();
        loop {
            let (input, from_inbox) = self.next_input(seat);
            if !self.step_counted(input, from_inbox) {
                bell.unregister(seat);
                return;
            }
        }
    }

    /// Waits for a command or report, a finished dial, or the coordinator's next deadline.
    /// The flag says whether the input came from the inbox channel.
    ///
    /// It polls the inbox first (busy-polling if the wait strategy says so), then parks on the
    /// inbox's doorbell, which every send rings: unlike a blocking channel receive, parking does
    /// not yield the core to every runnable thread first.
    fn next_input(&mut self, seat: SeatId) -> (Input, bool) {
        let deadline = {
            let mut core = self.shared.core.lock();
            let deadline = core.coordinator.next_deadline();
            core.wakes_at = deadline;
            deadline
        };
        let bell = self.factory.inputs.bell.clone();
        let mut spun = false;
        loop {
            match self.inputs.try_recv() {
                Ok(input) => return (input, true),
                // Every handle is gone: stop now.
                Err(crossbeam_channel::TryRecvError::Disconnected) => {
                    let now = Instant::now();
                    return (Input::Shutdown { deadline: now }, false);
                }
                Err(crossbeam_channel::TryRecvError::Empty) => {}
            }
            if Dial::is_done(&self.dial) {
                return (self.finish_dial().unwrap_or(Input::Tick), false);
            }
            if Dial::is_done(&self.replacement_dial) {
                let input = self.finish_replacement_dial().unwrap_or(Input::Tick);
                return (input, false);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return (Input::Tick, false);
            }
            let has_work = || {
                !self.inputs.is_empty()
                    || Dial::is_done(&self.dial)
                    || Dial::is_done(&self.replacement_dial)
            };
            if !spun {
                spun = true;
                let wait = self.factory.wait;
                if wait.spin(|| has_work().then_some(())).is_some() {
                    continue;
                }
            }
            bell.wait_until(seat, has_work, deadline);
        }
    }

    /// Feeds one input and carries out the outputs; false once the driver must exit.
    pub(crate) fn step(&mut self, input: Input) -> bool {
        self.step_counted(input, false)
    }

    /// [`Driver::step`] for an input that came from the inbox channel (`from_inbox`) or not.
    ///
    /// The step's work queue is the core's `deferred` queue, behind what inline steps left:
    /// an input's outputs go to its front, in order, and the inputs they give rise to to its
    /// back. An output that may block (an event waiting for room, a dial, joining a link's
    /// threads) is carried out with the lock released and the core marked busy.
    fn step_counted(&mut self, input: Input, from_inbox: bool) -> bool {
        let shared = self.shared.clone();
        let mut core = shared.core.lock();
        let mut keep_running = true;
        let mut out = std::mem::take(&mut self.out);
        if let Input::Connected { epoch } = input {
            // The link's lanes become visible to inline steps with the step that announces it.
            let of = |link: &Option<Link<I>>| {
                link.as_ref().filter(|l| l.epoch == epoch).map(Link::lanes)
            };
            match of(&self.replacement) {
                Some(lanes) => core.replacement = Some(lanes),
                None => core.lanes = of(&self.link),
            }
        }
        core.deferred.push_back(Deferred::Input(input));
        while let Some(item) = core.deferred.pop_front() {
            let output = match item {
                Deferred::Input(input) => {
                    core.feed(input, &mut out);
                    for output in out.drain(..).rev() {
                        core.deferred.push_front(Deferred::Output(output));
                    }
                    continue;
                }
                Deferred::Output(output) => output,
            };
            let output = match core.carry(output) {
                Carried::Done => continue,
                Carried::Followup(input) => {
                    core.deferred.push_back(Deferred::Input(input));
                    continue;
                }
                Carried::Heavy(output) => output,
            };
            match output {
                Output::Ready => {
                    self.on_ready(&core);
                    continue;
                }
                Output::Promote { epoch } => {
                    self.promote(&mut core, epoch);
                    continue;
                }
                Output::Disconnect | Output::Retired => core.lanes = None,
                Output::DropReplacement => core.replacement = None,
                Output::Stop => {
                    core.lanes = None;
                    core.replacement = None;
                }
                _ => {}
            }
            core.busy = true;
            let answers = core.take_answers();
            drop(core);
            deliver(answers);
            let settle = self.carry_heavy(output, &mut keep_running);
            core = shared.core.lock();
            core.busy = false;
            if let Some(input) = settle {
                // A link's requests settle before anything else (its `Closed` event may wait
                // for room in the event channel; its callers must not).
                core.deferred.push_front(Deferred::Input(input));
            }
        }
        self.out = out;
        if from_inbox {
            shared.handled(&core);
        }
        // A new connection has been announced (or dropped): its reader may start.
        for link in [&mut self.link, &mut self.replacement]
            .into_iter()
            .flatten()
        {
            link.go();
        }
        if !keep_running {
            // Every caller gets an answer, even if the table missed one (it should not).
            core.answer_all(Outcome::Unconfirmed(Unknown::Disconnected));
        }
        let answers = core.take_answers();
        drop(core);
        deliver(answers);
        keep_running
    }

    /// The session is ready: the user data lane opens.
    fn on_ready(&self, core: &Core) {
        if !self.buffer_while_disconnected {
            // Frames that raced with the loss of the previous connection.
            self.discard_queued();
        }
        if let Some(lanes) = &core.lanes {
            self.counters.set_ready_epoch(lanes.epoch);
            let _ = lanes.control.try_send(Control::OpenData);
        }
        self.counters.set_state(State::Ready);
    }

    /// Carries out an output that may block (called without the lock); returns the input
    /// that settles a released link's requests.
    fn carry_heavy(&mut self, output: Output, keep_running: &mut bool) -> Option<Input> {
        match output {
            Output::Notify(notice) => self.notify(notice),
            Output::Dial {
                epoch,
                attempt,
                headers,
            } => self.start_dial(epoch, attempt, headers),
            Output::Disconnect => return self.disconnect(),
            Output::Stop => {
                self.abort_dial();
                self.drop_replacement();
                *keep_running = false;
                return self.disconnect();
            }
            Output::DialReplacement { epoch, headers } => {
                let hold = Arc::new(Handover::new(self.factory.rotation_hold));
                match self.spawn_dial(epoch, 1, headers, Feed::Hold(hold)) {
                    Ok(dial) => self.replacement_dial = Some(dial),
                    Err(error) => return Some(Input::ConnectFailed { epoch, error }),
                }
            }
            Output::DropReplacement => self.drop_replacement(),
            Output::Retired => return self.retire(),
            Output::Release { epoch } => return self.release(epoch),
            light => debug_assert!(false, "{light:?} is carried out by the core"),
        }
        None
    }

    /// Releases the current link; returns the `LinkDown` input that settles its requests (read
    /// after the writer is joined, so no request can still be taken).
    fn disconnect(&mut self) -> Option<Input> {
        let link = self.link.take();
        let down = link.map(|mut link| {
            if let Some(ingress) = link.disconnect() {
                self.ingress = Some(ingress);
            }
            // Once the writer is joined, no request can still be taken.
            Input::LinkDown { epoch: link.epoch }
        });
        if !self.buffer_while_disconnected {
            self.discard_queued();
        }
        down
    }

    /// Nothing queued for one connection is sent on the next on its own: empty the user lane
    /// and the outbox (its writer is joined: nothing is encoded there any more).
    fn discard_queued(&self) {
        let mut dropped = self.factory.outbox.discard();
        while self.factory.data.try_recv().is_ok() {
            dropped += 1;
        }
        Counters::bump(&self.counters.discarded_on_disconnect, dropped);
    }

    fn start_dial(&mut self, epoch: u64, attempt: u32, headers: Vec<(String, String)>) {
        let Some(ingress) = self.ingress.take() else {
            // The ingress was lost to a panic: no new reader can run.
            let error = Error::Io(std::io::Error::other("ingress panicked; cannot reconnect"));
            let _ = self
                .factory
                .inputs
                .try_send(Input::ConnectFailed { epoch, error });
            return;
        };
        match self.spawn_dial(epoch, attempt, headers, Feed::Ingress(ingress)) {
            Ok(dial) => self.dial = Some(dial),
            Err(error) => {
                // The ingress went down with the closure: report and let the policy decide.
                let _ = self
                    .factory
                    .inputs
                    .try_send(Input::ConnectFailed { epoch, error });
            }
        }
    }

    /// Starts a `NAME-dial` thread that opens connection `epoch`.
    fn spawn_dial(
        &mut self,
        epoch: u64,
        attempt: u32,
        headers: Vec<(String, String)>,
        feed: Feed<I>,
    ) -> Result<Dial<I>, Error> {
        let abort = AbortSlot::default();
        let factory = self.factory.clone();
        let slot = abort.clone();
        let (done_tx, done) = crossbeam_channel::bounded(1);
        let name = format!("{}-dial", self.factory.name);
        log::debug!("dialing connection {epoch} (attempt {attempt})");
        let bell = self.factory.inputs.bell.clone();
        let spawned = spawn(name, move || {
            // Tells the coordinator thread the dial is over, also if it panics (a custom TLS
            // verifier, say): the join then reports it.
            let _over = DialOver(done_tx, bell);
            factory.open(epoch, &headers, feed, &slot)
        });
        spawned.map(|handle| Dial {
            epoch,
            handle,
            abort,
            done,
        })
    }

    /// Collects a finished replacement dial: the link waits for the switch, or the failure is
    /// reported.
    fn finish_replacement_dial(&mut self) -> Option<Input> {
        let (epoch, opened) = join_dial(self.replacement_dial.take()?);
        Some(match opened {
            Ok((link, _agreed)) => {
                self.replacement = Some(link);
                Input::Connected { epoch }
            }
            Err((error, _)) => Input::ConnectFailed { epoch, error },
        })
    }

    /// Stops a replacement's dial or drops its link (joining its threads).
    fn drop_replacement(&mut self) {
        if let Some(dial) = self.replacement_dial.take() {
            dial.abort();
        }
        if let Some(mut link) = self.replacement.take() {
            link.disconnect();
        }
    }

    /// The replaced link has closed: joins its threads (the ingress comes back) and keeps the
    /// user data queued for the replacement; returns the `LinkDown` that settles the requests
    /// it wrote.
    fn retire(&mut self) -> Option<Input> {
        let mut link = self.link.take()?;
        if let Some(ingress) = link.disconnect() {
            self.ingress = Some(ingress);
        }
        // Its writer is joined: a frame it took off the lane and held is the next to write.
        self.carried = link.lanes().sink.lock().held.take();
        Some(Input::LinkDown { epoch: link.epoch })
    }

    /// The replacement becomes the current link: its lanes for inline steps, the frame the
    /// replaced writer held, the user data lane (under the core's lock, like `Ready`).
    fn promote(&mut self, core: &mut Core, epoch: u64) {
        let Some(link) = self.replacement.take_if(|l| l.epoch == epoch) else {
            return;
        };
        let lanes = link.lanes();
        if let Some(frame) = self.carried.take() {
            lanes.sink.lock().held = Some(frame);
        }
        self.counters.set_ready_epoch(epoch);
        let _ = lanes.control.try_send(Control::OpenData);
        self.counters.set_state(State::Ready);
        core.replacement = None;
        core.lanes = Some(lanes);
        self.link = Some(link);
    }

    /// Hands the ingress to the promoted link: the messages it held go through it first, to
    /// the application, in order. Returns the input that ends the link if the ingress panicked
    /// (or was lost to an earlier panic).
    fn release(&mut self, epoch: u64) -> Option<Input> {
        let handover = self
            .link
            .as_ref()
            .filter(|l| l.epoch == epoch)?
            .handover
            .clone()?;
        let lost = |message: &str| {
            let panicked = Panicked {
                callback: "Ingress::on_message",
                message: message.to_string(),
            };
            let event = LinkEvent::CallbackPanicked(panicked);
            Some(Input::Link { epoch, event })
        };
        let Some(ingress) = self.ingress.take() else {
            return lost("the ingress was lost to an earlier panic");
        };
        let (events, counters) = (&self.factory.events, &self.counters);
        let (overflow, abort) = (self.factory.overflow, &self.abort);
        let mut panicked = None;
        let back = handover.release(ingress, |ingress, frame| {
            match decide(ingress, epoch, frame) {
                Ok(None) => true,
                Ok(Some(event)) => {
                    reader::deliver(events, events.batch_of(event), overflow, abort, counters)
                }
                Err(p) => {
                    panicked = Some(p);
                    false
                }
            }
        });
        // Stopped part way: the ingress is the client's again (as after a reader's panic).
        self.ingress = self.ingress.take().or(back);
        let p = panicked?;
        lost(&p.message)
    }

    /// Collects a finished dial: the link becomes current, or the failure is reported.
    fn finish_dial(&mut self) -> Option<Input> {
        let (epoch, opened) = join_dial(self.dial.take()?);
        Some(match opened {
            Ok((link, _agreed)) => {
                self.link = Some(link);
                Input::Connected { epoch }
            }
            Err((error, ingress)) => {
                self.ingress = ingress;
                Input::ConnectFailed { epoch, error }
            }
        })
    }

    /// Stops a dial in progress (see [`Dial::abort`]).
    fn abort_dial(&mut self) {
        if let Some(dial) = self.dial.take() {
            dial.abort();
        }
    }

    fn notify(&self, notice: Notice) {
        let event = match notice {
            Notice::Connecting { attempt } => Event::Connecting { attempt },
            Notice::Connected { epoch } => Event::Connected {
                epoch,
                is_reconnect: epoch > 1,
            },
            Notice::SessionReady { epoch } => Event::SessionReady { epoch },
            Notice::Pong { epoch, payload } => Event::Pong { epoch, payload },
            Notice::SubscriptionRejected {
                epoch,
                topic,
                reason,
            } => Event::SubscriptionRejected {
                epoch,
                topic,
                reason,
            },
            Notice::Closed {
                epoch,
                info,
                reconnect,
            } => Event::Closed {
                epoch,
                info: Box::new(info),
                reconnect,
            },
            Notice::ConnectFailed {
                attempt,
                cause,
                reconnect,
            } => Event::ConnectFailed {
                attempt,
                cause: Box::new(cause),
                reconnect,
            },
            Notice::Orphan {
                epoch,
                id,
                response,
            } => Event::Orphan {
                epoch,
                id,
                response: Box::new(response),
            },
            Notice::Rotated { from, to } => Event::Rotated { from, to },
            Notice::RotationFailed {
                epoch,
                cause,
                retry,
            } => Event::RotationFailed {
                epoch,
                cause: Box::new(cause),
                retry,
            },
        };
        // Lifecycle events are never dropped: wait for room unless the client aborts (or the
        // client is still being built, with an event channel too small for its first events).
        let events = &self.factory.events;
        let mut batch = events.batch_of(event);
        while let Unsent::Full(unsent) = events.try_send(batch) {
            if self.starting {
                events.recycle(unsent);
                log::warn!("event channel full while connecting; a lifecycle event was dropped");
                Counters::bump(&self.counters.events_dropped, 1);
                return;
            }
            if !events.wait_for_room(&self.abort) {
                return;
            }
            batch = unsent;
        }
    }
}

/// Joins a finished dial thread: its epoch and what the dial opened (a panic in it is an error
/// whose ingress is lost).
fn join_dial<I>(dial: Dial<I>) -> (u64, Opened<I>) {
    let opened = dial.handle.join().unwrap_or_else(|_| {
        let error = Error::Io(std::io::Error::other("dial thread panicked"));
        Err((error, None))
    });
    (dial.epoch, opened)
}

/// Signals the end of a dial when dropped: on return and on unwinding alike.
struct DialOver(crossbeam_channel::Sender<()>, Arc<Doorbell>);

impl Drop for DialOver {
    fn drop(&mut self) {
        let _ = self.0.try_send(());
        self.1.ring();
    }
}

/// True once a link's release channel has been dropped (the link is being torn down).
pub(crate) fn released(release: &Receiver<()>) -> bool {
    matches!(
        release.try_recv(),
        Err(crossbeam_channel::TryRecvError::Disconnected)
    )
}
