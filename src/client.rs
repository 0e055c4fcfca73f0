//! [`Client`]: the handle user threads hold.
//!
//! All methods are blocking or non-blocking calls on bounded channels; there is no runtime. The
//! handle is `Send + Sync`, so one client can be shared (by reference or in an `Arc`) by several
//! threads that send, while one thread consumes [`Client::events`].

use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError, bounded};

use crate::codec::{Decoder, Limits};
use crate::config::{ClientBuilder, Config};
use crate::connect::Dialer;
use crate::coordinator::{Control, Coordinator, Input};
use crate::driver::{Driver, Link};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::frame::{CloseCode, Frame};
use crate::ingress::Ingress;
use crate::reader::{CONTROL_HEADROOM, Reader};
use crate::stats::{Counters, Stats};
use crate::writer::Writer;

/// Capacity of the coordinator's input channel (user commands and reader/writer reports).
const INPUT_QUEUE: usize = 1024;

/// A WebSocket client connection with its reader, writer and coordinator threads.
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
    inputs: Sender<Input>,
    data: Sender<Frame>,
    events: Receiver<Event<T>>,
    counters: Arc<Counters>,
    /// Dropped to make the coordinator stop waiting on a full event channel.
    abort: Option<Sender<()>>,
    /// Disconnects when the coordinator thread exits.
    done: Receiver<()>,
    coordinator: Option<JoinHandle<()>>,
    close_timeout: Duration,
    protocol: Option<String>,
}

impl Client<std::convert::Infallible> {
    /// Starts building a client for `url` (`ws://` or `wss://`).
    pub fn builder(url: &str) -> ClientBuilder {
        ClientBuilder::new(url)
    }
}

impl<T: Send + 'static> Client<T> {
    /// Dials, then starts the three threads. Used by [`ClientBuilder::connect_with`].
    pub(crate) fn start<I>(dialer: Dialer, config: Config, ingress: I) -> Result<Client<T>>
    where
        I: Ingress<Output = T>,
    {
        let (stream, upgraded) = dialer.dial()?;
        let (read_half, write_half, socket) = stream.split().map_err(Error::Io)?;

        let control_capacity = config.control_queue.max(2 * CONTROL_HEADROOM);
        let (input_tx, input_rx) = bounded(INPUT_QUEUE);
        let (control_tx, control_rx) = bounded(control_capacity);
        let (data_tx, data_rx) = bounded(config.data_queue.max(1));
        let (event_tx, event_rx) = bounded(config.event_queue.max(1));
        let (release_tx, release_rx) = bounded::<()>(0);
        let (abort_tx, abort_rx) = bounded::<()>(0);
        let (done_tx, done_rx) = bounded::<()>(0);
        let counters = Arc::new(Counters::default());
        let epoch = 1;

        let mut buf = upgraded.leftover;
        let end = buf.len();
        buf.resize(end.max(config.read_buffer_size.max(1024)), 0);
        let reader = Reader {
            half: read_half,
            ingress,
            decoder: Decoder::new(Limits {
                max_frame: config.max_frame_size,
                max_message: config.max_message_size,
            }),
            buf,
            start: 0,
            end,
            epoch,
            overflow: config.overflow,
            events: event_tx.clone(),
            coord: input_tx.clone(),
            control: control_tx.clone(),
            control_capacity,
            stop: release_rx.clone(),
            counters: counters.clone(),
        };
        let writer = Writer {
            half: write_half,
            control: control_rx,
            data: data_rx,
            stop: release_rx,
            coord: input_tx.clone(),
            counters: counters.clone(),
        };
        let name = &config.name;
        let mut link = Link {
            socket,
            release: Some(release_tx),
            reader: None,
            writer: None,
        };
        link.writer = Some(
            spawn(format!("{name}-writer"), move || writer.run()).inspect_err(|_| {
                link.socket.shutdown();
            })?,
        );
        link.reader = match spawn(format!("{name}-reader"), move || reader.run()) {
            Ok(handle) => Some(handle),
            Err(e) => {
                link.disconnect();
                return Err(e);
            }
        };
        let driver = Driver {
            coordinator: Coordinator::new(config.close_timeout),
            inputs: input_rx,
            control: control_tx,
            events: event_tx,
            abort: abort_rx,
            link,
            epoch,
            counters: counters.clone(),
        };
        let coordinator = spawn(format!("{name}-coord"), move || {
            let _done = done_tx;
            driver.run();
        })?;
        Ok(Client {
            inputs: input_tx,
            data: data_tx,
            events: event_rx,
            counters,
            abort: Some(abort_tx),
            done: done_rx,
            coordinator: Some(coordinator),
            close_timeout: config.close_timeout,
            protocol: upgraded.protocol,
        })
    }
}

impl<T> Client<T> {
    /// Queues a frame, waiting while the data lane is full.
    ///
    /// Text and binary frames go on the bounded data lane; pings and pongs on the control lane;
    /// a close frame starts the close handshake (like [`close`](Client::close)). Returns
    /// [`Error::Closed`] once the connection is closing or closed.
    pub fn send(&self, frame: Frame) -> Result<()> {
        self.check_open()?;
        if let Frame::Close(Some(c)) = &frame {
            check_close_code(c.code)?;
        }
        match route(frame) {
            Ok(data) => self
                .data
                .send(data)
                .map_err(|_| Error::Closed { code: None }),
            Err(command) => self.command(command),
        }
    }

    /// Queues a frame, waiting at most `timeout` for room in the data lane;
    /// [`Error::Timeout`]`("send")` if none came (the frame is dropped).
    pub fn send_timeout(&self, frame: Frame, timeout: Duration) -> Result<()> {
        self.check_open()?;
        if let Frame::Close(Some(c)) = &frame {
            check_close_code(c.code)?;
        }
        match route(frame) {
            Ok(data) => self.data.send_timeout(data, timeout).map_err(|e| match e {
                crossbeam_channel::SendTimeoutError::Timeout(_) => Error::Timeout("send"),
                crossbeam_channel::SendTimeoutError::Disconnected(_) => {
                    Error::Closed { code: None }
                }
            }),
            Err(command) => self.command(command),
        }
    }

    /// Queues a frame if there is room now; [`Error::QueueFull`] if the data lane is full (the
    /// frame is dropped, memory does not grow). Never blocks for data frames.
    pub fn try_send(&self, frame: Frame) -> Result<()> {
        self.check_open()?;
        if let Frame::Close(Some(c)) = &frame {
            check_close_code(c.code)?;
        }
        match route(frame) {
            Ok(data) => self.data.try_send(data).map_err(|e| match e {
                TrySendError::Full(_) => Error::QueueFull,
                TrySendError::Disconnected(_) => Error::Closed { code: None },
            }),
            Err(command) => self.command(command),
        }
    }

    /// Sends a ping (payload truncated to 125 bytes). The answer arrives as
    /// [`Event::Pong`](crate::Event::Pong).
    pub fn ping(&self, payload: impl Into<Vec<u8>>) -> Result<()> {
        self.check_open()?;
        self.command(Input::Send(Control::Ping(payload.into())))
    }

    /// Starts the close handshake with `code` and `reason` (truncated to 123 bytes). Returns at
    /// once; [`Event::Closed`](crate::Event::Closed) reports the end.
    ///
    /// Returns [`Error::Config`] for a code that may not appear on the wire (RFC 6455 §7.4:
    /// only 1000-1003, 1007-1014 and 3000-4999 may be sent); the connection stays open.
    pub fn close(&self, code: CloseCode, reason: &str) -> Result<()> {
        self.check_open()?;
        check_close_code(code)?;
        self.command(Input::Close {
            code,
            reason: reason.to_string(),
        })
    }

    /// The channel of everything that happens on the connection. Consume it from one thread;
    /// while it is full the reader waits (or drops, per [`Overflow`](crate::Overflow)).
    pub fn events(&self) -> &Receiver<Event<T>> {
        &self.events
    }

    /// A snapshot of the connection's counters.
    pub fn stats(&self) -> Stats {
        self.counters.snapshot()
    }

    /// True until the close handshake starts or the connection fails.
    pub fn is_open(&self) -> bool {
        self.counters.is_open()
    }

    /// The subprotocol the server selected, if any.
    pub fn protocol(&self) -> Option<&str> {
        self.protocol.as_deref()
    }

    /// Closes gracefully (code 1000 if still open) and joins every thread, within `timeout`.
    ///
    /// The close handshake gets at most `timeout`; then the socket is shut down, which unblocks
    /// the reader and writer, and all three threads are joined. It never hangs: even when the
    /// application stopped consuming events, the wait is bounded by `timeout` plus a few
    /// milliseconds of thread exit.
    pub fn shutdown(mut self, timeout: Duration) {
        self.shutdown_inner(timeout);
    }

    fn shutdown_inner(&mut self, timeout: Duration) {
        let Some(coordinator) = self.coordinator.take() else {
            return;
        };
        // Drop our end of the event channel: a reader or coordinator waiting for room in it is
        // released at once (unless the application holds a clone of the receiver).
        self.events = crossbeam_channel::never();
        let deadline = Instant::now() + timeout;
        let sent = self
            .inputs
            .send_deadline(Input::Shutdown { deadline }, deadline)
            .is_ok();
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

    fn check_open(&self) -> Result<()> {
        if self.counters.is_open() {
            Ok(())
        } else {
            Err(Error::Closed { code: None })
        }
    }

    fn command(&self, input: Input) -> Result<()> {
        self.inputs
            .send(input)
            .map_err(|_| Error::Closed { code: None })
    }
}

/// Data frames travel on the data lane (`Ok`); everything else is a coordinator command (`Err`).
fn route(frame: Frame) -> std::result::Result<Frame, Input> {
    match frame {
        data @ (Frame::Text(_) | Frame::Binary(_)) => Ok(data),
        Frame::Ping(p) => Err(Input::Send(Control::Ping(p))),
        Frame::Pong(p) => Err(Input::Send(Control::Pong(p))),
        Frame::Close(c) => {
            let (code, reason) =
                c.map_or((CloseCode::NORMAL, String::new()), |c| (c.code, c.reason));
            Err(Input::Close { code, reason })
        }
    }
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
            .field("protocol", &self.protocol)
            .finish_non_exhaustive()
    }
}

fn spawn<R: Send + 'static>(
    name: String,
    f: impl FnOnce() -> R + Send + 'static,
) -> Result<JoinHandle<R>> {
    thread::Builder::new()
        .name(name)
        .spawn(f)
        .map_err(Error::Io)
}
