//! The coordinator thread: a thin driver around the sans-IO [`Coordinator`].
//!
//! It waits for the next input or the coordinator's next deadline, feeds it, and carries out the
//! outputs: control frames go to the writer's control lane, notices to the application's event
//! channel, a disconnect shuts the socket down and joins the reader and writer threads.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError, select};

use crate::coordinator::{Control, Coordinator, Input, Notice, Output};
use crate::event::Event;
use crate::stats::Counters;
use crate::transport::SocketHandle;

/// The I/O side of one open connection: its socket and its two threads.
pub(crate) struct Link<I> {
    pub socket: SocketHandle,
    /// Dropped to release the reader and writer from any blocking channel operation.
    pub release: Option<Sender<()>>,
    pub reader: Option<JoinHandle<I>>,
    pub writer: Option<JoinHandle<()>>,
}

impl<I> Link<I> {
    /// Shuts the socket down (unblocking `read` and `write`), releases both threads and joins
    /// them. Returns the ingress the reader handed back, if it did not panic.
    pub(crate) fn disconnect(&mut self) -> Option<I> {
        self.socket.shutdown();
        self.release.take();
        if let Some(writer) = self.writer.take() {
            if writer.join().is_err() {
                log::error!("writer thread panicked");
            }
        }
        self.reader.take().and_then(|r| r.join().ok())
    }
}

pub(crate) struct Driver<I, T> {
    pub coordinator: Coordinator,
    pub inputs: Receiver<Input>,
    pub control: Sender<Control>,
    pub events: Sender<Event<T>>,
    /// Disconnected when the client gives up on a graceful shutdown: stop waiting on the app.
    pub abort: Receiver<()>,
    pub link: Link<I>,
    pub epoch: u64,
    pub counters: Arc<Counters>,
}

impl<I, T> Driver<I, T> {
    pub(crate) fn run(mut self) {
        let mut out = Vec::new();
        loop {
            let input = match self.coordinator.next_deadline() {
                Some(deadline) => match self.inputs.recv_deadline(deadline) {
                    Ok(input) => input,
                    Err(RecvTimeoutError::Timeout) => Input::Tick,
                    Err(RecvTimeoutError::Disconnected) => Input::Shutdown { deadline },
                },
                None => match self.inputs.recv() {
                    Ok(input) => input,
                    // Every handle is gone: stop now.
                    Err(_) => Input::Shutdown {
                        deadline: Instant::now(),
                    },
                },
            };
            self.coordinator.handle(Instant::now(), input, &mut out);
            self.counters.set_state(self.coordinator.state());
            for output in out.drain(..) {
                match output {
                    Output::Send(control) => self.send_control(control),
                    Output::Notify(notice) => self.notify(notice),
                    Output::Disconnect => {
                        self.link.disconnect();
                    }
                    Output::Stop => {
                        self.link.disconnect();
                        return;
                    }
                }
            }
        }
    }

    fn send_control(&self, control: Control) {
        match self.control.try_send(control) {
            Ok(()) => {}
            Err(TrySendError::Full(c)) => log::warn!("control lane full; dropped {c:?}"),
            Err(TrySendError::Disconnected(_)) => {} // The writer already reported why it ended.
        }
    }

    fn notify(&self, notice: Notice) {
        let epoch = self.epoch;
        let event = match notice {
            Notice::Pong(payload) => Event::Pong { epoch, payload },
            Notice::Closed(info) => Event::Closed { epoch, info },
        };
        // Lifecycle events are never dropped: wait for room unless the client aborts.
        if let Err(TrySendError::Full(event)) = self.events.try_send(event) {
            select! {
                send(self.events, event) -> _ => {}
                recv(self.abort) -> _ => {}
            }
        }
    }
}

/// Sends `input` to the coordinator from the reader or writer, giving up if the link is released
/// first (the coordinator may be busy joining that very thread).
pub(crate) fn report(coord: &Sender<Input>, release: &Receiver<()>, input: Input) {
    select! {
        send(coord, input) -> _ => {}
        recv(release) -> _ => {}
    }
}
