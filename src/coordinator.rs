//! The coordinator: the sans-IO state machine that owns a connection's lifecycle.
//!
//! It has no threads, sockets or clocks. Its driver (the coordinator thread, see `driver.rs`)
//! feeds it every input in one total order with the current time and carries out the outputs:
//!
//! ```text
//!   user commands ─┐
//!   reader events ─┼─▶ handle(now, input) ──▶ outputs: control frames for the writer,
//!   writer results ┤                                   lifecycle notices, disconnect, stop
//!   timer expiry ──┘   next_deadline() ──▶ when the driver must call handle(now, Tick)
//! ```
//!
//! Because nothing inside depends on real time or scheduling, the same inputs and clock always
//! give the same outputs, and the unit tests below drive it with a manual clock.
//!
//! The close handshake it implements (RFC 6455 §7):
//!
//! - **Local close** (user `close`, shutdown): send our close frame, then wait for the peer's
//!   close frame and the end of the stream, bounded by `close_timeout`.
//! - **Remote close**: echo the peer's code, then wait for the server to end the stream, bounded
//!   by `close_timeout`.
//! - **Protocol violation** by the peer: the reader has stopped; send a close frame with the
//!   violation's code and drop the connection as soon as it is written (or at the deadline).
//! - **Transport failure** (EOF or error without a close handshake): done at once, code 1006.
//!
//! In every case the connection ends with exactly one [`Output::Disconnect`] followed by exactly
//! one [`Notice::Closed`].

use std::time::{Duration, Instant};

use crate::codec::Violation;
use crate::error::Error;
use crate::event::{CloseInfo, Initiator};
use crate::frame::CloseCode;

/// Everything the coordinator reacts to.
#[derive(Debug)]
pub(crate) enum Input {
    /// User: start the close handshake.
    Close { code: CloseCode, reason: String },
    /// User: send a ping or an unsolicited pong.
    Send(Control),
    /// User: close (if open) and stop, all by `deadline`.
    Shutdown { deadline: Instant },
    /// Reader: the peer sent a close frame.
    PeerClose(Option<(CloseCode, String)>),
    /// Reader: a pong arrived.
    Pong(Vec<u8>),
    /// Reader: the peer broke the protocol; the reader has stopped.
    Violation(Violation),
    /// Reader: the stream ended (`None`) or failed; the reader has stopped.
    ReaderEnded(Option<Error>),
    /// Writer: our close frame has been written to the socket.
    CloseWritten,
    /// Writer: a write failed; the writer has stopped.
    WriteFailed(Error),
    /// Time passed (the driver's wait for input hit `next_deadline`).
    Tick,
}

/// A control frame for the writer's control lane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Control {
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<(CloseCode, String)>),
    /// Send TLS records rustls has queued (no WebSocket frame).
    FlushTls,
}

/// Lifecycle news for the application.
#[derive(Debug)]
pub(crate) enum Notice {
    Pong(Vec<u8>),
    Closed(CloseInfo),
}

/// What the driver must do.
#[derive(Debug)]
pub(crate) enum Output {
    /// Queue a control frame on the writer's control lane.
    Send(Control),
    /// Deliver a lifecycle event.
    Notify(Notice),
    /// Shut the socket down and release the reader and writer threads.
    Disconnect,
    /// Nothing more will happen: the driver may exit.
    Stop,
}

/// The connection's lifecycle phase.
#[derive(Debug)]
enum Phase {
    Open,
    Closing(Closing),
    Closed,
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
    error: Option<Error>,
    deadline: Instant,
}

/// The public phase, mirrored into an atomic for cheap checks on user threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum State {
    Open = 0,
    Closing = 1,
    Closed = 2,
}

/// The state machine. See the [module docs](self).
#[derive(Debug)]
pub(crate) struct Coordinator {
    phase: Phase,
    close_timeout: Duration,
    stop_requested: Option<Instant>,
    stopped: bool,
}

impl Coordinator {
    /// A coordinator for a connection that has just opened.
    pub(crate) fn new(close_timeout: Duration) -> Self {
        Coordinator {
            phase: Phase::Open,
            close_timeout,
            stop_requested: None,
            stopped: false,
        }
    }

    /// The phase as seen by user threads.
    pub(crate) fn state(&self) -> State {
        match self.phase {
            Phase::Open => State::Open,
            Phase::Closing(_) => State::Closing,
            Phase::Closed => State::Closed,
        }
    }

    /// When the driver must call `handle(now, Input::Tick)` at the latest.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Closing(c) => Some(c.deadline),
            Phase::Open | Phase::Closed => None,
        }
    }

    /// Feeds one input; outputs are appended to `out` in the order they must be carried out.
    pub(crate) fn handle(&mut self, now: Instant, input: Input, out: &mut Vec<Output>) {
        if self.stopped {
            return;
        }
        match input {
            Input::Close { code, reason } => {
                if matches!(self.phase, Phase::Open) {
                    self.start_local_close(now, code, reason, None, out);
                }
            }
            Input::Send(control) => {
                if matches!(self.phase, Phase::Open) {
                    out.push(Output::Send(control));
                }
            }
            Input::Shutdown { deadline } => {
                self.stop_requested = Some(deadline);
                if matches!(self.phase, Phase::Open) {
                    self.start_local_close(now, CloseCode::NORMAL, String::new(), None, out);
                }
                match &mut self.phase {
                    Phase::Closing(c) => c.deadline = c.deadline.min(deadline),
                    Phase::Closed => self.stop(out),
                    Phase::Open => {}
                }
            }
            Input::PeerClose(frame) => self.on_peer_close(now, frame, out),
            Input::Pong(payload) => out.push(Output::Notify(Notice::Pong(payload))),
            Input::Violation(v) => match &mut self.phase {
                Phase::Open => {
                    let error = Error::Protocol {
                        code: v.code,
                        reason: v.reason.clone(),
                    };
                    self.start_local_close(now, v.code, v.reason, Some(error), out);
                    if let Phase::Closing(c) = &mut self.phase {
                        c.reader_done = true;
                    }
                }
                Phase::Closing(c) => {
                    c.error.get_or_insert(Error::Protocol {
                        code: v.code,
                        reason: v.reason,
                    });
                    self.finish(out);
                }
                Phase::Closed => {}
            },
            Input::ReaderEnded(error) => match &mut self.phase {
                Phase::Open => {
                    let error = error
                        .unwrap_or_else(|| Error::Io(std::io::ErrorKind::UnexpectedEof.into()));
                    self.phase = Phase::Closing(Closing {
                        initiator: Initiator::Transport,
                        code: CloseCode::ABNORMAL,
                        reason: String::new(),
                        peer_closed: false,
                        peer_code: None,
                        reader_done: true,
                        error: Some(error),
                        deadline: now,
                    });
                    self.finish(out);
                }
                Phase::Closing(c) => {
                    if let (Some(e), false) = (error, c.peer_closed) {
                        c.error.get_or_insert(e);
                    }
                    self.finish(out);
                }
                Phase::Closed => {}
            },
            Input::CloseWritten => {
                // A close after a violation is done once written: the reader is gone, so no
                // reply can be read anyway.
                if let Phase::Closing(c) = &self.phase {
                    if c.reader_done {
                        self.finish(out);
                    }
                }
            }
            Input::WriteFailed(e) => match &mut self.phase {
                Phase::Open => {
                    self.phase = Phase::Closing(Closing {
                        initiator: Initiator::Transport,
                        code: CloseCode::ABNORMAL,
                        reason: String::new(),
                        peer_closed: false,
                        peer_code: None,
                        reader_done: false,
                        error: Some(e),
                        deadline: now,
                    });
                    self.finish(out);
                }
                Phase::Closing(c) => {
                    if !c.peer_closed {
                        c.error.get_or_insert(e);
                    }
                    self.finish(out);
                }
                Phase::Closed => {}
            },
            Input::Tick => {}
        }
        self.check_deadlines(now, out);
    }

    fn start_local_close(
        &mut self,
        now: Instant,
        code: CloseCode,
        reason: String,
        error: Option<Error>,
        out: &mut Vec<Output>,
    ) {
        out.push(Output::Send(Control::Close(Some((code, reason.clone())))));
        self.phase = Phase::Closing(Closing {
            initiator: Initiator::Local,
            code,
            reason,
            peer_closed: false,
            peer_code: None,
            reader_done: false,
            error,
            deadline: now + self.close_timeout,
        });
    }

    fn on_peer_close(
        &mut self,
        now: Instant,
        frame: Option<(CloseCode, String)>,
        out: &mut Vec<Output>,
    ) {
        match &mut self.phase {
            Phase::Open => {
                // Echo the code (RFC 6455 §5.5.1); an empty close is answered with an empty one.
                let echo = frame.as_ref().map(|(code, _)| (*code, String::new()));
                out.push(Output::Send(Control::Close(echo)));
                let (code, reason) = frame.unwrap_or((CloseCode::NO_STATUS, String::new()));
                let mut deadline = now + self.close_timeout;
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
                    error: None,
                    deadline,
                });
            }
            Phase::Closing(c) => {
                c.peer_closed = true;
                c.peer_code = Some(frame.map_or(CloseCode::NO_STATUS, |(code, _)| code));
            }
            Phase::Closed => {}
        }
    }

    fn check_deadlines(&mut self, now: Instant, out: &mut Vec<Output>) {
        if let Phase::Closing(c) = &mut self.phase {
            if now >= c.deadline {
                if !c.peer_closed && c.error.is_none() {
                    c.error = Some(Error::Timeout("close"));
                }
                self.finish(out);
            }
        }
    }

    /// Ends the connection: disconnect, then report how it closed.
    fn finish(&mut self, out: &mut Vec<Output>) {
        let Phase::Closing(c) = std::mem::replace(&mut self.phase, Phase::Closed) else {
            return;
        };
        out.push(Output::Disconnect);
        let clean = c.peer_closed && c.initiator != Initiator::Transport;
        out.push(Output::Notify(Notice::Closed(CloseInfo {
            initiator: c.initiator,
            code: c.code,
            reason: c.reason,
            clean,
            peer_code: c.peer_code,
            error: c.error,
        })));
        if self.stop_requested.is_some() {
            self.stop(out);
        }
    }

    fn stop(&mut self, out: &mut Vec<Output>) {
        out.push(Output::Stop);
        self.stopped = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

    struct Harness {
        coord: Coordinator,
        now: Instant,
        out: Vec<Output>,
    }

    impl Harness {
        fn new() -> Self {
            Harness {
                coord: Coordinator::new(CLOSE_TIMEOUT),
                now: Instant::now(),
                out: Vec::new(),
            }
        }

        fn feed(&mut self, input: Input) -> Vec<Output> {
            self.coord.handle(self.now, input, &mut self.out);
            std::mem::take(&mut self.out)
        }

        fn advance(&mut self, d: Duration) -> Vec<Output> {
            self.now += d;
            self.feed(Input::Tick)
        }
    }

    fn closed(outputs: &[Output]) -> Option<&CloseInfo> {
        outputs.iter().find_map(|o| match o {
            Output::Notify(Notice::Closed(info)) => Some(info),
            _ => None,
        })
    }

    fn count(outputs: &[Output], f: impl Fn(&Output) -> bool) -> usize {
        outputs.iter().filter(|o| f(o)).count()
    }

    #[test]
    fn local_close_waits_for_reply_and_eof() {
        let mut h = Harness::new();
        let out = h.feed(Input::Close {
            code: CloseCode(4000),
            reason: "bye".into(),
        });
        assert!(
            matches!(&out[..], [Output::Send(Control::Close(Some((CloseCode(4000), r))))] if r == "bye")
        );
        assert_eq!(h.coord.state(), State::Closing);
        assert!(
            h.feed(Input::PeerClose(Some((CloseCode(4000), String::new()))))
                .is_empty()
        );
        let out = h.feed(Input::ReaderEnded(None));
        assert!(matches!(out[0], Output::Disconnect));
        let info = closed(&out).unwrap();
        assert_eq!(
            (info.initiator, info.code, info.clean),
            (Initiator::Local, CloseCode(4000), true)
        );
        assert!(info.error.is_none());
    }

    #[test]
    fn remote_close_is_echoed_with_its_code() {
        let mut h = Harness::new();
        let out = h.feed(Input::PeerClose(Some((
            CloseCode::GOING_AWAY,
            "deploy".into(),
        ))));
        assert!(matches!(
            &out[..],
            [Output::Send(Control::Close(Some((
                CloseCode::GOING_AWAY,
                _
            ))))]
        ));
        let out = h.feed(Input::ReaderEnded(None));
        let info = closed(&out).unwrap();
        assert_eq!(
            (info.initiator, info.code, info.reason.as_str()),
            (Initiator::Remote, CloseCode::GOING_AWAY, "deploy")
        );
        assert!(info.clean);
    }

    #[test]
    fn empty_remote_close_reports_no_status() {
        let mut h = Harness::new();
        let out = h.feed(Input::PeerClose(None));
        assert!(matches!(&out[..], [Output::Send(Control::Close(None))]));
        let info = closed(&h.feed(Input::ReaderEnded(None))).map(|i| i.code);
        assert_eq!(info, Some(CloseCode::NO_STATUS));
    }

    #[test]
    fn close_without_reply_times_out_exactly_at_the_deadline() {
        let mut h = Harness::new();
        h.feed(Input::Close {
            code: CloseCode::NORMAL,
            reason: String::new(),
        });
        assert_eq!(h.coord.next_deadline(), Some(h.now + CLOSE_TIMEOUT));
        assert!(
            h.advance(CLOSE_TIMEOUT - Duration::from_millis(1))
                .is_empty()
        );
        let out = h.advance(Duration::from_millis(1));
        let info = closed(&out).unwrap();
        assert!(!info.clean);
        assert!(matches!(info.error, Some(Error::Timeout("close"))));
        assert_eq!(h.coord.next_deadline(), None);
    }

    #[test]
    fn violation_closes_with_its_code_and_drops_once_written() {
        let mut h = Harness::new();
        let v = Violation {
            code: CloseCode::INVALID_PAYLOAD,
            reason: "bad utf-8".into(),
        };
        let out = h.feed(Input::Violation(v));
        assert!(matches!(
            &out[..],
            [Output::Send(Control::Close(Some((
                CloseCode::INVALID_PAYLOAD,
                _
            ))))]
        ));
        let out = h.feed(Input::CloseWritten);
        let info = closed(&out).unwrap();
        assert_eq!(
            (info.initiator, info.code),
            (Initiator::Local, CloseCode::INVALID_PAYLOAD)
        );
        assert!(matches!(
            info.error,
            Some(Error::Protocol {
                code: CloseCode::INVALID_PAYLOAD,
                ..
            })
        ));
    }

    #[test]
    fn eof_without_close_is_abnormal() {
        let mut h = Harness::new();
        let out = h.feed(Input::ReaderEnded(None));
        let info = closed(&out).unwrap();
        assert_eq!(
            (info.initiator, info.code, info.clean),
            (Initiator::Transport, CloseCode::ABNORMAL, false)
        );
    }

    #[test]
    fn shutdown_bounds_the_close_by_its_deadline_and_stops() {
        let mut h = Harness::new();
        let deadline = h.now + Duration::from_millis(100);
        let out = h.feed(Input::Shutdown { deadline });
        assert!(matches!(
            &out[..],
            [Output::Send(Control::Close(Some((CloseCode::NORMAL, _))))]
        ));
        assert_eq!(h.coord.next_deadline(), Some(deadline));
        let out = h.advance(Duration::from_millis(100));
        assert!(matches!(
            out[..],
            [Output::Disconnect, Output::Notify(_), Output::Stop]
        ));
        assert!(
            h.feed(Input::ReaderEnded(None)).is_empty(),
            "nothing after stop"
        );
    }

    #[test]
    fn shutdown_after_close_stops_at_once() {
        let mut h = Harness::new();
        h.feed(Input::ReaderEnded(None));
        let out = h.feed(Input::Shutdown { deadline: h.now });
        assert!(matches!(out[..], [Output::Stop]));
    }

    /// Generated schedules of every input in random order: exactly one Disconnect and one Closed
    /// per connection, never a frame after Closed, Stop only after a Shutdown, deadlines honoured.
    #[test]
    fn generated_schedules_hold_the_invariants() {
        let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..5_000 {
            let mut h = Harness::new();
            let mut all = Vec::new();
            let mut shutdown_at = None;
            for _ in 0..(next() % 12) {
                let input = match next() % 9 {
                    0 => Input::Close {
                        code: CloseCode(4000 + (next() % 10) as u16),
                        reason: "x".into(),
                    },
                    1 => Input::Send(Control::Ping(vec![1])),
                    2 => {
                        let d = h.now + Duration::from_millis(next() % 3000);
                        shutdown_at.get_or_insert(d);
                        Input::Shutdown { deadline: d }
                    }
                    3 => Input::PeerClose(Some((CloseCode::GOING_AWAY, String::new()))),
                    4 => Input::Pong(vec![2]),
                    5 => Input::Violation(Violation {
                        code: CloseCode::PROTOCOL_ERROR,
                        reason: "v".into(),
                    }),
                    6 => Input::ReaderEnded(None),
                    7 => Input::CloseWritten,
                    _ => Input::WriteFailed(Error::Io(std::io::ErrorKind::BrokenPipe.into())),
                };
                let before = h.coord.next_deadline();
                let step = Duration::from_millis(next() % 1500);
                let out = h.advance(step);
                if let Some(d) = before {
                    if h.now >= d {
                        assert_eq!(h.coord.next_deadline(), None, "deadline {d:?} not acted on");
                    }
                }
                all.extend(out);
                all.extend(h.feed(input));
            }
            all.extend(h.advance(Duration::from_secs(10)));
            let disconnects = count(&all, |o| matches!(o, Output::Disconnect));
            let closes = count(&all, |o| matches!(o, Output::Notify(Notice::Closed(_))));
            assert!(disconnects <= 1 && disconnects == closes);
            if let Some(p) = all
                .iter()
                .position(|o| matches!(o, Output::Notify(Notice::Closed(_))))
            {
                assert!(
                    !all[p..].iter().any(|o| matches!(o, Output::Send(_))),
                    "frame after close"
                );
            }
            let stops = count(&all, |o| matches!(o, Output::Stop));
            assert_eq!(stops, usize::from(shutdown_at.is_some()));
            if shutdown_at.is_some() {
                assert_eq!(closes, 1, "shutdown always ends the connection");
            }
            let close_frames = count(&all, |o| matches!(o, Output::Send(Control::Close(_))));
            assert!(close_frames <= 1, "at most one close frame is sent");
        }
    }
}
