//! The coordinator thread: a thin driver around the sans-IO [`Coordinator`].
//!
//! It waits for the next input or the coordinator's next deadline, feeds it (with the reader's
//! latest data timestamp), and carries out the outputs: frames go to the current link's lanes,
//! notices to the application's event channel, a dial starts a short-lived `NAME-dial` thread,
//! a disconnect shuts the link down and joins its threads.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, TrySendError, select};

use crate::coordinator::{Control, Coordinator, Input, Notice, Output, State};
use crate::error::Error;
use crate::event::Event;
use crate::ingress::Ingress;
use crate::link::{AbortSlot, Link, LinkFactory, Opened, spawn};
use crate::requests::{Outcome, Unknown, WaiterId};
use crate::stats::Counters;
use crate::writer::RequestFrame;

/// A dial running on its own thread.
struct Dial<I> {
    epoch: u64,
    handle: JoinHandle<Opened<I>>,
    abort: AbortSlot,
    /// Receives (or disconnects) when the dial thread is about to finish.
    done: Receiver<()>,
}

pub(crate) struct Driver<I: Ingress> {
    pub coordinator: Coordinator,
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
    out: Vec<Output>,
    /// Reply channels of callers waiting for a request outcome.
    waiters: HashMap<WaiterId, Sender<Outcome>>,
    /// Inputs that outputs of the current step give rise to (reused buffer).
    followups: VecDeque<Input>,
    /// True until the driver runs on its own thread: notices must not wait for room then,
    /// because nobody can be consuming events yet.
    pub starting: bool,
}

impl<I: Ingress> Driver<I> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        coordinator: Coordinator,
        inputs: Receiver<Input>,
        factory: Arc<LinkFactory<I::Output>>,
        abort: Receiver<()>,
        link: Link<I>,
        counters: Arc<Counters>,
        buffer_while_disconnected: bool,
    ) -> Self {
        Driver {
            coordinator,
            inputs,
            factory,
            abort,
            link: Some(link),
            ingress: None,
            counters,
            buffer_while_disconnected,
            dial: None,
            out: Vec::new(),
            waiters: HashMap::new(),
            followups: VecDeque::new(),
            starting: true,
        }
    }

    pub(crate) fn run(mut self) {
        loop {
            let input = self.next_input();
            if !self.step(input) {
                return;
            }
        }
    }

    /// Waits for a command or report, a finished dial, or the coordinator's next deadline.
    fn next_input(&mut self) -> Input {
        let deadline = self.coordinator.next_deadline();
        let wait = self.factory.wait;
        // `Some(None)`: stop polling, the blocking path below handles it (a finished dial, a
        // closed channel).
        let polled = wait.spin(|| match self.inputs.try_recv() {
            Ok(input) => Some(Some(input)),
            Err(_) if deadline.is_some_and(|d| Instant::now() >= d) => Some(Some(Input::Tick)),
            Err(crossbeam_channel::TryRecvError::Disconnected) => Some(None),
            Err(_) if self.dial.as_ref().is_some_and(|d| !d.done.is_empty()) => Some(None),
            Err(crossbeam_channel::TryRecvError::Empty) => None,
        });
        if let Some(Some(input)) = polled {
            return input;
        }
        let never = crossbeam_channel::never();
        let dial_done = self.dial.as_ref().map_or(&never, |d| &d.done);
        // `None`: the dial finished (the borrow of `self.dial` ends before it is collected).
        let received = match deadline {
            Some(deadline) => {
                let timeout = deadline.saturating_duration_since(Instant::now());
                select! {
                    recv(self.inputs) -> m => Some(m),
                    recv(dial_done) -> _ => None,
                    default(timeout) => return Input::Tick,
                }
            }
            None => select! {
                recv(self.inputs) -> m => Some(m),
                recv(dial_done) -> _ => None,
            },
        };
        match received {
            Some(Ok(input)) => input,
            // Every handle is gone: stop now.
            Some(Err(_)) => Input::Shutdown {
                deadline: Instant::now(),
            },
            None => self.finish_dial().unwrap_or(Input::Tick),
        }
    }

    /// Feeds one input and carries out the outputs; false once the driver must exit.
    pub(crate) fn step(&mut self, input: Input) -> bool {
        let mut keep_running = true;
        let mut followups = std::mem::take(&mut self.followups);
        followups.push_back(input);
        while let Some(mut input) = followups.pop_front() {
            if let Input::Submit { waiter, reply, .. } = &mut input {
                if let Some(tx) = reply.take() {
                    self.waiters.insert(*waiter, tx);
                }
            }
            // `now` first, then `last_taken`: see the `requests` module docs.
            let now = Instant::now();
            let last_taken = self
                .link
                .as_ref()
                .map_or(0, |l| l.last_taken.load(Ordering::SeqCst));
            self.coordinator.set_last_taken(last_taken);
            if let Some(at) = self.counters.last_data() {
                self.coordinator.data_seen(at);
            }
            self.coordinator.handle(now, input, &mut self.out);
            // `Ready` is published by `Output::Ready`, after stale frames have left the lane.
            let state = self.coordinator.state();
            if state != State::Ready {
                self.counters.set_state(state);
            }
            self.counters.publish(self.coordinator.health_mut());
            let mut outputs = std::mem::take(&mut self.out);
            for output in outputs.drain(..) {
                match output {
                    Output::Send(control) => {
                        self.to_link(|l| l.control.try_send(control).map_err(drop))
                    }
                    Output::SendSession(frame) => {
                        self.to_link(|l| l.session.try_send(frame).map_err(drop))
                    }
                    Output::SendRequest {
                        seq,
                        frame,
                        deadline,
                    } => {
                        // A request that cannot be queued is certainly not delivered: say so now
                        // (a later request's sequence number must not make it look taken).
                        let request = RequestFrame {
                            seq,
                            frame,
                            deadline,
                        };
                        let queued = self
                            .link
                            .as_ref()
                            .is_some_and(|l| l.requests.try_send(request).is_ok());
                        if !queued {
                            let epoch = self.link.as_ref().map_or(0, |l| l.epoch);
                            followups.push_back(Input::RequestDropped { epoch, seq });
                        }
                    }
                    Output::Resolve(waiter, outcome) => {
                        if let Some(tx) = self.waiters.remove(&waiter) {
                            let _ = tx.try_send(outcome); // The caller may have given up.
                        }
                    }
                    Output::Ready => {
                        if !self.buffer_while_disconnected {
                            // Frames that raced with the loss of the previous connection.
                            self.discard_queued();
                        }
                        self.counters.set_state(State::Ready);
                        self.to_link(|l| l.control.try_send(Control::OpenData).map_err(drop))
                    }
                    Output::Notify(notice) => self.notify(notice),
                    Output::Dial {
                        epoch,
                        attempt,
                        headers,
                    } => self.start_dial(epoch, attempt, headers),
                    Output::Disconnect => followups.extend(self.disconnect()),
                    Output::Stop => {
                        self.abort_dial();
                        followups.extend(self.disconnect());
                        keep_running = false;
                    }
                }
            }
            self.out = outputs;
        }
        self.followups = followups;
        // A new connection has been announced (or dropped): its reader may start.
        if let Some(link) = &mut self.link {
            link.go();
        }
        if !keep_running {
            // Every caller gets an answer, even if the table missed one (it should not).
            for (_, tx) in self.waiters.drain() {
                let _ = tx.try_send(Outcome::Unconfirmed(Unknown::Disconnected));
            }
        }
        keep_running
    }

    fn to_link(&self, send: impl FnOnce(&Link<I>) -> Result<(), ()>) {
        if let Some(link) = &self.link {
            if send(link).is_err() {
                log::warn!(
                    "lane of connection {} full or closed; frame dropped",
                    link.epoch
                );
            }
        }
    }

    /// Releases the current link; returns the `LinkDown` input that settles its requests (read
    /// after the writer is joined, so no request can still be taken).
    fn disconnect(&mut self) -> Option<Input> {
        let link = self.link.take();
        let down = link.map(|link| {
            let epoch = link.epoch;
            let last_taken = link.last_taken.clone();
            if let Some(ingress) = link.disconnect() {
                self.ingress = Some(ingress);
            }
            Input::LinkDown {
                epoch,
                last_taken: last_taken.load(Ordering::SeqCst),
            }
        });
        if !self.buffer_while_disconnected {
            self.discard_queued();
        }
        down
    }

    /// Nothing queued for one connection is sent on the next on its own: empty the user lane.
    fn discard_queued(&self) {
        let mut dropped = 0;
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
        let abort = AbortSlot::default();
        let factory = self.factory.clone();
        let slot = abort.clone();
        let (done_tx, done) = crossbeam_channel::bounded(1);
        let name = format!("{}-dial", self.factory.name);
        log::debug!("dialing connection {epoch} (attempt {attempt})");
        let spawned = spawn(name, move || {
            let result = factory.open(epoch, &headers, ingress, &slot);
            let _ = done_tx.send(());
            result
        });
        match spawned {
            Ok(handle) => {
                self.dial = Some(Dial {
                    epoch,
                    handle,
                    abort,
                    done,
                })
            }
            Err(error) => {
                // The ingress went down with the closure: report and let the policy decide.
                let _ = self
                    .factory
                    .inputs
                    .try_send(Input::ConnectFailed { epoch, error });
            }
        }
    }

    /// Collects a finished dial: the link becomes current, or the failure is reported.
    fn finish_dial(&mut self) -> Option<Input> {
        let dial = self.dial.take()?;
        let epoch = dial.epoch;
        match dial.handle.join() {
            Ok(Ok((link, _protocol))) => {
                self.link = Some(link);
                Some(Input::Connected { epoch })
            }
            Ok(Err((error, ingress))) => {
                self.ingress = ingress;
                Some(Input::ConnectFailed { epoch, error })
            }
            Err(_) => {
                let error = Error::Io(std::io::Error::other("dial thread panicked"));
                Some(Input::ConnectFailed { epoch, error })
            }
        }
    }

    /// Stops a dial in progress: its socket is shut down (ending the TLS or HTTP handshake at
    /// once; a TCP connect in progress ends within `connect_timeout`) and the thread joined.
    fn abort_dial(&mut self) {
        let Some(dial) = self.dial.take() else { return };
        if let Some(sock) = dial.abort.lock().as_ref() {
            let _ = sock.shutdown(std::net::Shutdown::Both);
        }
        if let Ok(Ok((link, _))) = dial.handle.join() {
            link.disconnect(); // Never announced: it carried no request.
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
        };
        // Lifecycle events are never dropped: wait for room unless the client aborts (or the
        // client is still being built, with an event channel too small for its first events).
        let events = &self.factory.events;
        if let Err(TrySendError::Full(event)) = events.try_send(event) {
            if self.starting {
                drop(event);
                log::warn!("event channel full while connecting; a lifecycle event was dropped");
                Counters::bump(&self.counters.events_dropped, 1);
                return;
            }
            select! {
                send(events, event) -> _ => {}
                recv(self.abort) -> _ => {}
            }
        }
    }
}

/// True once a link's release channel has been dropped (the link is being torn down).
pub(crate) fn released(release: &Receiver<()>) -> bool {
    matches!(
        release.try_recv(),
        Err(crossbeam_channel::TryRecvError::Disconnected)
    )
}

/// Sends `input` to the coordinator from the reader or writer, giving up if the link is released
/// first (the coordinator may be busy joining that very thread).
pub(crate) fn report(coord: &Sender<Input>, release: &Receiver<()>, input: Input) {
    select! {
        send(coord, input) -> _ => {}
        recv(release) -> _ => {}
    }
}
