//! Self-healing connections (issue 3), end to end: a client talks to a small venue server through
//! the fault-injecting proxy of `support::proxy`, plain and TLS, and each test breaks the link in
//! one way:
//!
//! | fault                                  | detected as                    | window from fault |
//! |----------------------------------------|--------------------------------|-------------------|
//! | server closes with 1001                | `ServerClosed(CloseCode(1001))`| at once           |
//! | proxy kills the connection             | `Transport(_)`                 | at once           |
//! | proxy goes silent (half-open)          | `PongTimeout`                  | to ..= int + to   |
//! | stall in the middle of a frame         | `PongTimeout`                  | to ..= int + to   |
//! | server acks, then sends nothing        | `Stale`                        | `stale_after`     |
//! | server answers pings but sends no data | `Stale`                        | `stale_after`     |
//! | connection refused for a while         | `ConnectFailed(Connect{..})`   | retried (backoff) |
//! | server never acks one subscription     | `AckTimeout(Some(topic))`      | `ack_timeout`     |
//!
//! (`int`/`to`: ping interval and pong timeout.)
//!
//! Each asserts the cause, that detection came inside its window (plus [`TOLERANCE`], generous
//! for a noisy 2-vCPU machine; the measured times are printed), that the client reconnected on
//! its own (`Connected { epoch: 2, is_reconnect: true }`, then `SessionReady { epoch: 2 }`), that
//! the server saw exactly `auth secret`, `sub book`, `sub trades` on the new connection (the
//! desired set replays sorted; when the endpoint is auth-gated nothing goes out before `authok`),
//! that data events carry the epoch of their connection, that `stats().reconnects` counts the
//! reconnect, and that every thread the test started (client `rc-*`, proxy `proxy-*`, server
//! `venue-*`) is gone after shutdown.
//!
//! Also: three losses in a row (every connection restored, backoff growing), a short stall that
//! must not count as a loss, the first `SessionReady` waiting for the builder's subscriptions to
//! be acknowledged, and a connection dropped before the `101` being retried like any other
//! transport failure (a regression test: it used to stop plain clients for good).
//!
//! All tests of this file run one at a time (a process-wide mutex): timings are measured on an
//! otherwise idle process, and the thread checks see only the threads of the running test. The
//! checks count threads by name rather than comparing the process's thread count with a
//! baseline, because the test harness itself starts and ends threads while other tests of the
//! file wait for the mutex.

mod support;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rustls::{ServerConfig, ServerConnection, StreamOwned};
use support::proxy::{Proxy, STALL_AFTER};
use support::{Conn, Pki, wait_until};
use syncws::{
    Backoff, Cause, Client, CloseCode, Data, Endpoint, Error, Event, Frame, Initiator, Keepalive,
    Precheck, Reply, Verdict,
};
use tungstenite::Message;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;

const WAIT: Duration = Duration::from_secs(10);
/// Slack allowed on top of every detection window.
const TOLERANCE: Duration = Duration::from_millis(300);
/// Time allowed from "the server is reachable again" to the restored connection, on top of the
/// largest backoff delay.
const RECONNECT_TOLERANCE: Duration = Duration::from_millis(700);
/// The server's data period.
const TICK: Duration = Duration::from_millis(20);
/// How often the server's connection loop wakes up when nothing arrives.
const SERVER_POLL: Duration = Duration::from_millis(5);
const PING_INTERVAL: Duration = Duration::from_millis(150);
const PING_TIMEOUT: Duration = Duration::from_millis(300);
const PING: Keepalive = Keepalive::Ping {
    interval: PING_INTERVAL,
    timeout: PING_TIMEOUT,
};
const STALE: Duration = Duration::from_millis(400);
/// Acknowledgement timeout: long enough never to fire unless a test wants it to.
const ACK_TIMEOUT: Duration = Duration::from_secs(3);
const BACKOFF_INITIAL: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_millis(200);
/// How long the server sits on an `auth` before answering `authok`: long enough for a client
/// that does not wait for it to show its subscriptions first.
const AUTH_DELAY: Duration = Duration::from_millis(30);
/// What every new connection must carry, in this order.
const RESTORED: [&str; 3] = ["auth secret", "sub book", "sub trades"];

// ---------------------------------------------------------------------------------------------
// Serial execution and thread checks
// ---------------------------------------------------------------------------------------------

static SERIAL: Mutex<()> = Mutex::new(());

/// Runs tests one at a time; waits for any thread a failed earlier test left behind.
fn serial() -> MutexGuard<'static, ()> {
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    wait_until("threads of an earlier test to end", WAIT, || {
        our_threads().is_empty().then_some(())
    });
    guard
}

/// Names of the threads this file's scenarios start: client (`rc-*`), proxy (`proxy-*`), server
/// (`venue-*`). The harness names its threads after the tests (`proxy_kills_...`), which none of
/// these prefixes match.
fn our_threads() -> Vec<String> {
    let mut names: Vec<String> = support::thread_names()
        .into_iter()
        .filter(|name| {
            ["rc-", "proxy-", "venue-"]
                .iter()
                .any(|p| name.starts_with(p))
        })
        .collect();
    names.sort();
    names
}

fn client_threads() -> Vec<String> {
    our_threads()
        .into_iter()
        .filter(|n| n.starts_with("rc-"))
        .collect()
}

/// Shuts everything down and checks that every thread it started has ended.
fn teardown(client: Client<String>, proxy: Proxy, server: VenueServer) {
    let started = Instant::now();
    client.shutdown(Duration::from_secs(2));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "shutdown took {:?}",
        started.elapsed()
    );
    drop(proxy);
    server.stop();
    wait_until("no thread left after shutdown", WAIT, || {
        our_threads().is_empty().then_some(())
    });
}

// ---------------------------------------------------------------------------------------------
// The venue: endpoint (client side) and server
// ---------------------------------------------------------------------------------------------

/// `auth secret` on open, `sub <topic>` per topic; the server answers `authok` and `ack:<topic>`.
struct Venue {
    gated: bool,
}

impl Endpoint for Venue {
    fn on_open(&mut self, _epoch: u64) -> Vec<Frame> {
        vec![Frame::text("auth secret")]
    }

    fn auth_gated(&self) -> bool {
        self.gated
    }

    fn subscribe(&mut self, topic: &str) -> Option<Frame> {
        Some(Frame::text(format!("sub {topic}")))
    }

    fn precheck(&self) -> Option<Precheck> {
        Some(Arc::new(|d: Data<'_>| {
            d.as_bytes().starts_with(b"authok") || d.as_bytes().starts_with(b"ack:")
        }))
    }

    fn parse_reply(&mut self, msg: Data<'_>) -> Option<Reply> {
        let Data::Text(text) = msg else { return None };
        if text == "authok" {
            return Some(Reply::AuthOk);
        }
        text.strip_prefix("ack:")
            .map(|topic| Reply::Subscribed(topic.to_string()))
    }
}

/// What a server connection does once both subscriptions are acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Then {
    /// Sends `tick N` every [`TICK`].
    Ticks,
    /// Sends nothing more (pings are still answered).
    Silent,
    /// Sends this many ticks, then closes with 1001.
    GoAwayAfter(u32),
}

#[derive(Clone, Copy, Debug)]
struct Plan {
    /// Behaviour of the first connection.
    first: Then,
    /// Behaviour of every later connection.
    later: Then,
    /// Delay before `authok`.
    auth_delay: Duration,
    /// Delay before each `ack:` on the first connection.
    first_ack_delay: Duration,
    /// A topic the first connection never acknowledges.
    first_unacked: Option<&'static str>,
}

impl Plan {
    fn new(first: Then) -> Plan {
        Plan {
            first,
            later: Then::Ticks,
            auth_delay: AUTH_DELAY,
            first_ack_delay: Duration::ZERO,
            first_unacked: None,
        }
    }
}

/// What one server connection saw and did.
#[derive(Default, Debug)]
struct ConnLog {
    /// `< text` for a received text frame, `> text` for a sent one, in order.
    transcript: Vec<String>,
    /// Received text frames, with the time each was read.
    received: Vec<String>,
    received_at: Vec<Instant>,
    /// Sent text frames, with the time just before each was written.
    sent: Vec<(Instant, String)>,
    /// When the 1001 close went out.
    close_sent: Option<Instant>,
    pings: usize,
}

struct ServerShared {
    stop: AtomicBool,
    tls: Option<Arc<ServerConfig>>,
    plan: Plan,
    logs: Mutex<Vec<ConnLog>>,
    /// Clones of every accepted socket, to unblock the handlers on stop.
    socks: Mutex<Vec<TcpStream>>,
    handlers: Mutex<Vec<JoinHandle<()>>>,
}

impl ServerShared {
    fn log<R>(&self, idx: usize, f: impl FnOnce(&mut ConnLog) -> R) -> R {
        f(&mut self.logs.lock().unwrap_or_else(|e| e.into_inner())[idx])
    }
}

/// A venue speaking WebSocket through tungstenite, serving any number of connections at once
/// (one `venue-N` thread each) and recording everything per connection (index = accept order).
struct VenueServer {
    addr: SocketAddr,
    shared: Arc<ServerShared>,
    acceptor: Option<JoinHandle<()>>,
}

impl VenueServer {
    fn start(tls: Option<Arc<ServerConfig>>, plan: Plan) -> VenueServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(ServerShared {
            stop: AtomicBool::new(false),
            tls,
            plan,
            logs: Mutex::new(Vec::new()),
            socks: Mutex::new(Vec::new()),
            handlers: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        let acceptor = thread::Builder::new()
            .name("venue-accept".into())
            .spawn(move || {
                loop {
                    let accepted = listener.accept();
                    if s.stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok((sock, _)) = accepted else { continue };
                    let idx = {
                        let mut logs = s.logs.lock().unwrap();
                        logs.push(ConnLog::default());
                        logs.len() - 1
                    };
                    s.socks.lock().unwrap().push(sock.try_clone().unwrap());
                    let s2 = s.clone();
                    let handler = thread::Builder::new()
                        .name(format!("venue-{idx}"))
                        .spawn(move || serve(&s2, idx, sock))
                        .unwrap();
                    s.handlers.lock().unwrap().push(handler);
                }
            })
            .unwrap();
        VenueServer {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    fn connections(&self) -> usize {
        self.shared.logs.lock().unwrap().len()
    }

    fn with_log<R>(&self, idx: usize, f: impl FnOnce(&ConnLog) -> R) -> R {
        f(&self.shared.logs.lock().unwrap()[idx])
    }

    fn received(&self, idx: usize) -> Vec<String> {
        self.with_log(idx, |l| l.received.clone())
    }

    fn transcript(&self, idx: usize) -> Vec<String> {
        self.with_log(idx, |l| l.transcript.clone())
    }

    /// When the server sent the last of `count` text frames on connection `idx` (waits for it).
    fn sent_last_of(&self, idx: usize, count: usize) -> Instant {
        wait_until("server replies", WAIT, || {
            (self.connections() > idx)
                .then(|| {
                    self.with_log(idx, |l| {
                        (l.sent.len() >= count).then(|| l.sent[count - 1].0)
                    })
                })
                .flatten()
        })
    }

    fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        let Some(acceptor) = self.acceptor.take() else {
            return;
        };
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // Unblocks accept().
        let _ = acceptor.join();
        for sock in self.shared.socks.lock().unwrap().iter() {
            let _ = sock.shutdown(std::net::Shutdown::Both);
        }
        let handlers = std::mem::take(&mut *self.shared.handlers.lock().unwrap());
        for h in handlers {
            let _ = h.join();
        }
    }
}

impl Drop for VenueServer {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

/// One server connection; closes the TCP connection when done (the clone kept for `stop` would
/// otherwise keep it open).
fn serve(shared: &ServerShared, idx: usize, sock: TcpStream) {
    let closer = sock.try_clone();
    serve_ws(shared, idx, sock);
    if let Ok(closer) = closer {
        let _ = closer.shutdown(std::net::Shutdown::Both);
    }
}

/// Handshake, then answer `auth` and `sub`, then stream per the plan.
fn serve_ws(shared: &ServerShared, idx: usize, sock: TcpStream) {
    let _ = sock.set_nodelay(true);
    let _ = sock.set_read_timeout(Some(Duration::from_secs(5)));
    if shared.stop.load(Ordering::SeqCst) {
        return;
    }
    let conn = match &shared.tls {
        None => Conn::Plain(sock),
        Some(config) => {
            let server = ServerConnection::new(config.clone()).unwrap();
            Conn::Tls(Box::new(StreamOwned::new(server, sock)))
        }
    };
    let Ok(mut ws) = tungstenite::accept(conn) else {
        return;
    };
    // Short reads so the loop can send on its own schedule; tungstenite keeps partial frames
    // and queues the pongs it owes across `WouldBlock`.
    let _ = ws.get_ref().tcp().set_read_timeout(Some(SERVER_POLL));
    let plan = shared.plan;
    let (after, ack_delay) = if idx == 0 {
        (plan.first, plan.first_ack_delay)
    } else {
        (plan.later, Duration::ZERO)
    };
    let mut replies: Vec<(Instant, String)> = Vec::new();
    let mut acks = 0;
    let mut next_tick: Option<Instant> = None;
    let mut ticks = 0u32;
    let send = |ws: &mut tungstenite::WebSocket<Conn>, text: String| {
        shared.log(idx, |l| {
            l.sent.push((Instant::now(), text.clone()));
            l.transcript.push(format!("> {text}"));
        });
        ws.send(Message::text(text))
    };
    while !shared.stop.load(Ordering::SeqCst) {
        match ws.read() {
            Ok(Message::Text(text)) => {
                let text = text.as_str().to_string();
                shared.log(idx, |l| {
                    l.transcript.push(format!("< {text}"));
                    l.received.push(text.clone());
                    l.received_at.push(Instant::now());
                });
                if text == "auth secret" {
                    replies.push((Instant::now() + plan.auth_delay, "authok".into()));
                } else if let Some(topic) = text.strip_prefix("sub ") {
                    if idx == 0 && plan.first_unacked == Some(topic) {
                        continue;
                    }
                    replies.push((Instant::now() + ack_delay, format!("ack:{topic}")));
                }
            }
            Ok(Message::Ping(_)) => shared.log(idx, |l| l.pings += 1),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
        let now = Instant::now();
        let mut due = Vec::new();
        replies.retain(|(at, text)| {
            let ready = *at <= now;
            if ready {
                due.push(text.clone());
            }
            !ready
        });
        for text in due {
            if text.starts_with("ack:") {
                acks += 1;
                if acks == 2 {
                    next_tick = Some(Instant::now() + TICK);
                }
            }
            if send(&mut ws, text).is_err() {
                return;
            }
        }
        if let Some(at) = next_tick.filter(|at| *at <= now) {
            next_tick = Some(at + TICK);
            match after {
                Then::Silent => next_tick = None,
                Then::GoAwayAfter(n) if ticks >= n => {
                    next_tick = None;
                    shared.log(idx, |l| l.close_sent = Some(Instant::now()));
                    let frame = CloseFrame {
                        code: WsCloseCode::Away,
                        reason: "going away".into(),
                    };
                    if ws.close(Some(frame)).is_err() {
                        return;
                    }
                }
                Then::Ticks | Then::GoAwayAfter(_) => {
                    ticks += 1;
                    if send(&mut ws, format!("tick {ticks}")).is_err() {
                        return;
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Client and event helpers
// ---------------------------------------------------------------------------------------------

fn connect(url: &str, pki: Option<&Pki>, gated: bool, tune: Tune) -> Client<String> {
    let mut builder = Client::builder(url)
        .dispatch(support::dispatch_under_test())
        .name("rc")
        .endpoint(Venue { gated })
        .reconnect(Backoff::new(BACKOFF_INITIAL, BACKOFF_MAX).seed(1))
        .subscribe("trades")
        .subscribe("book")
        .keepalive(tune.keepalive)
        .ack_timeout(tune.ack_timeout)
        .handshake_timeout(Duration::from_secs(5));
    if let Some(window) = tune.stale {
        builder = builder.stale_after(window);
    }
    if let Some(pki) = pki {
        builder = builder.add_root_certificate(pki.ca_der());
    }
    builder
        .connect_with(|d: Data<'_>| match d {
            Data::Text(t) if t.starts_with("tick ") => Verdict::Emit(t.to_string()),
            _ => Verdict::Ignore,
        })
        .expect("first connection")
}

#[derive(Clone, Copy, Debug)]
struct Tune {
    keepalive: Keepalive,
    stale: Option<Duration>,
    ack_timeout: Duration,
}

impl Tune {
    /// Protocol pings ([`PING`]), no staleness check.
    const PINGS: Tune = Tune {
        keepalive: PING,
        stale: None,
        ack_timeout: ACK_TIMEOUT,
    };
}

/// Every event the client delivered, with the time the test received it.
#[derive(Default)]
struct Recorder {
    events: Vec<(Instant, Event<String>)>,
}

impl Recorder {
    /// Receives until `stop` matches; returns the index of the matching event.
    fn until(&mut self, client: &Client<String>, stop: impl Fn(&Event<String>) -> bool) -> usize {
        let deadline = Instant::now() + WAIT;
        loop {
            match client.events().recv_deadline(deadline) {
                Ok(event) => {
                    let hit = stop(&event);
                    self.events.push((Instant::now(), event));
                    if hit {
                        return self.events.len() - 1;
                    }
                }
                Err(e) => panic!(
                    "no matching event within {WAIT:?} ({e}); got {:#?}",
                    self.events.iter().map(|(_, e)| e).collect::<Vec<_>>()
                ),
            }
        }
    }

    fn ticks(&self, epoch: u64) -> usize {
        self.events
            .iter()
            .filter(|(_, e)| matches!(e, Event::Data { epoch: n, .. } if *n == epoch))
            .count()
    }
}

fn is_ready(epoch: u64) -> impl Fn(&Event<String>) -> bool {
    move |e| matches!(e, Event::SessionReady { epoch: n } if *n == epoch)
}

/// Brings up server, proxy and client and waits for the first session.
fn rig(
    tls: bool,
    gated: bool,
    plan: Plan,
    tune: Tune,
) -> (VenueServer, Proxy, Client<String>, Recorder) {
    let pki = Pki::new("reconnect CA");
    let server = VenueServer::start(tls.then(|| pki.server_config(&["localhost"])), plan);
    let proxy = Proxy::start(server.addr);
    let client = connect(&proxy.url(tls), tls.then_some(&pki), gated, tune);
    let mut rec = Recorder::default();
    let ready = rec.until(&client, is_ready(1));
    assert!(
        matches!(
            rec.events[0].1,
            Event::Connected {
                epoch: 1,
                is_reconnect: false
            }
        ),
        "{:?}",
        rec.events[0].1
    );
    assert_eq!(
        ready,
        rec.ticks(1) + 1,
        "only data between Connected and SessionReady"
    );
    (server, proxy, client, rec)
}

/// Checks the session on connection `idx` (the first one included: the builder's topics join
/// the desired set before it opens): exactly [`RESTORED`], and when gated the subscriptions
/// only after `authok`.
fn check_restored(server: &VenueServer, idx: usize, gated: bool) {
    assert_eq!(server.received(idx), RESTORED, "connection {}", idx + 1);
    if gated {
        assert_eq!(
            server.transcript(idx)[..6],
            [
                "< auth secret",
                "> authok",
                "< sub book",
                "> ack:book",
                "< sub trades",
                "> ack:trades"
            ],
            "connection {}: nothing before authok",
            idx + 1
        );
    }
}

/// The lifecycle events (not data) from `from` on, in order, as short strings.
fn lifecycle(rec: &Recorder, from: usize) -> Vec<String> {
    rec.events[from..]
        .iter()
        .filter_map(|(_, e)| match e {
            Event::Data { .. } => None,
            Event::Connecting { attempt } => Some(format!("Connecting {attempt}")),
            Event::Connected {
                epoch,
                is_reconnect,
            } => Some(format!("Connected {epoch} {is_reconnect}")),
            Event::SessionReady { epoch } => Some(format!("SessionReady {epoch}")),
            Event::Closed { epoch, .. } => Some(format!("Closed {epoch}")),
            Event::ConnectFailed { attempt, .. } => Some(format!("ConnectFailed {attempt}")),
            other => Some(format!("{other:?}")),
        })
        .collect()
}

/// Data events carry the epoch of the connection they arrived on: before the loss epoch 1,
/// after `Connected { epoch: 2 }` epoch 2, none in between.
fn check_data_epochs(rec: &Recorder) {
    let mut current = Some(1);
    for (_, e) in &rec.events {
        match e {
            Event::Connected { epoch, .. } => current = Some(*epoch),
            Event::Closed { .. } => current = None,
            Event::Data { epoch, value } => {
                assert_eq!(Some(*epoch), current, "{value} arrived with epoch {epoch}");
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Fault scenarios
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    ServerGoingAway,
    Kill,
    HalfOpen,
    StallMidFrame,
    AckedThenSilent,
    PingsButNoData,
}

impl Fault {
    fn setup(self) -> (Plan, Tune) {
        let ping = Tune::PINGS;
        match self {
            Fault::ServerGoingAway => (Plan::new(Then::GoAwayAfter(5)), ping),
            Fault::Kill | Fault::HalfOpen | Fault::StallMidFrame => (Plan::new(Then::Ticks), ping),
            Fault::AckedThenSilent => (
                Plan::new(Then::Silent),
                Tune {
                    keepalive: Keepalive::ServerDriven,
                    stale: Some(STALE),
                    ack_timeout: ACK_TIMEOUT,
                },
            ),
            Fault::PingsButNoData => (
                Plan::new(Then::Silent),
                Tune {
                    keepalive: Keepalive::Ping {
                        interval: Duration::from_millis(100),
                        timeout: PING_TIMEOUT,
                    },
                    stale: Some(STALE),
                    ack_timeout: ACK_TIMEOUT,
                },
            ),
        }
    }

    /// Detection window, measured from the fault to the `Closed` event (before [`TOLERANCE`]).
    fn window(self) -> (Duration, Duration) {
        match self {
            Fault::ServerGoingAway | Fault::Kill => (Duration::ZERO, Duration::ZERO),
            // The first ping the silence swallows goes out within an interval and fails a
            // timeout later; a ping already in flight when the link froze fails a little
            // earlier than a full timeout after the fault.
            Fault::HalfOpen | Fault::StallMidFrame => (
                PING_TIMEOUT - Duration::from_millis(100),
                PING_INTERVAL + PING_TIMEOUT,
            ),
            Fault::AckedThenSilent | Fault::PingsButNoData => (STALE, STALE),
        }
    }

    fn check_cause(self, info: &syncws::CloseInfo) {
        match self {
            Fault::ServerGoingAway => {
                assert!(
                    matches!(info.cause, Cause::ServerClosed(CloseCode(1001))),
                    "{info:?}"
                );
                assert_eq!(info.initiator, Initiator::Remote);
                assert_eq!(info.code, CloseCode::GOING_AWAY);
                assert_eq!(info.reason, "going away");
                assert!(info.clean, "{info:?}");
            }
            Fault::Kill => {
                assert!(matches!(info.cause, Cause::Transport(_)), "{info:?}");
                assert_eq!(info.initiator, Initiator::Transport);
                assert_eq!(info.code, CloseCode::ABNORMAL);
                assert!(!info.clean);
            }
            Fault::HalfOpen | Fault::StallMidFrame => {
                assert!(matches!(info.cause, Cause::PongTimeout), "{info:?}");
                assert_eq!(info.initiator, Initiator::Local);
                assert_eq!(info.code, CloseCode::ABNORMAL);
            }
            Fault::AckedThenSilent | Fault::PingsButNoData => {
                assert!(matches!(info.cause, Cause::Stale), "{info:?}");
                assert_eq!(info.initiator, Initiator::Local);
                assert_eq!(info.code, CloseCode::ABNORMAL);
            }
        }
    }
}

fn wait_ticks(client: &Client<String>, rec: &mut Recorder, n: usize) {
    while rec.ticks(1) < n {
        rec.until(client, |e| matches!(e, Event::Data { .. }));
    }
}

fn scenario(fault: Fault, tls: bool, gated: bool) {
    let _serial = serial();
    let (plan, tune) = fault.setup();
    let (server, proxy, client, mut rec) = rig(tls, gated, plan, tune);
    let start = rec.events.len();

    // Arm and inject the fault. Test-driven faults are timed here; the others below, from the
    // server's or the proxy's record of when they happened.
    let injected = match fault {
        Fault::Kill => {
            wait_ticks(&client, &mut rec, 3);
            let at = Instant::now();
            proxy.kill();
            Some(at)
        }
        Fault::HalfOpen => {
            wait_ticks(&client, &mut rec, 3);
            wait_until("a keepalive round trip", WAIT, || {
                (client.stats().rtt_samples > 0).then_some(())
            });
            let at = Instant::now();
            proxy.go_silent();
            Some(at)
        }
        Fault::StallMidFrame => {
            wait_ticks(&client, &mut rec, 3);
            proxy.stall_mid_frame();
            None
        }
        Fault::ServerGoingAway | Fault::AckedThenSilent | Fault::PingsButNoData => None,
    };
    let ready2 = rec.until(&client, is_ready(2));
    let fault_at = injected.unwrap_or_else(|| match fault {
        Fault::ServerGoingAway => server.with_log(0, |l| l.close_sent).expect("1001 sent"),
        Fault::StallMidFrame => {
            let (at, bytes) = proxy.stalled().expect("stall took effect");
            assert_eq!(bytes, STALL_AFTER, "partial chunk forwarded");
            at
        }
        // The last frame the server sent: authok and both acks.
        _ => server.sent_last_of(0, 3),
    });

    // The loss: detected as expected, inside its window.
    let (closed_at, info, reconnect) = rec.events[start..]
        .iter()
        .find_map(|(at, e)| match e {
            Event::Closed {
                epoch: 1,
                info,
                reconnect,
            } => Some((*at, info, *reconnect)),
            _ => None,
        })
        .expect("Closed { epoch: 1 }");
    fault.check_cause(info);
    let detected = closed_at.saturating_duration_since(fault_at);
    let (lo, hi) = fault.window();
    eprintln!(
        "{fault:?} (tls: {tls}, gated: {gated}): detected after {} ms, window {}..={} ms + {} ms",
        detected.as_millis(),
        lo.as_millis(),
        hi.as_millis(),
        TOLERANCE.as_millis()
    );
    assert!(
        detected >= lo && detected <= hi + TOLERANCE,
        "{fault:?} detected after {detected:?}, expected {lo:?}..={:?}",
        hi + TOLERANCE
    );
    let delay = reconnect.expect("a reconnect is planned");
    assert!(delay <= BACKOFF_INITIAL, "first retry after {delay:?}");

    // The reconnect, by itself, with the session restored.
    assert_eq!(
        lifecycle(&rec, start),
        [
            "Closed 1",
            "Connecting 2",
            "Connected 2 true",
            "SessionReady 2"
        ]
    );
    if fault == Fault::ServerGoingAway {
        assert_eq!(
            rec.ticks(1),
            5,
            "every tick before the 1001 arrived, on epoch 1"
        );
    }
    rec.until(&client, |e| matches!(e, Event::Data { epoch: 2, .. }));
    check_data_epochs(&rec);
    assert!(ready2 > start);
    check_restored(&server, 0, gated);
    check_restored(&server, 1, gated);
    if fault == Fault::PingsButNoData {
        let pings = server.with_log(0, |l| l.pings);
        assert!(pings >= 2, "pings answered while stale: {pings}");
    }
    let stats = client.stats();
    assert_eq!(stats.reconnects, 1, "{stats:?}");
    assert_eq!(stats.connect_attempts, 2, "{stats:?}");
    assert_eq!(server.connections(), 2);
    assert_eq!(proxy.accepted(), 2);
    // The lost connection's reader and writer are gone; no dial thread lingers.
    wait_until("client threads of connection 2 only", WAIT, || {
        (client_threads() == ["rc-coord", "rc-reader", "rc-writer"]).then_some(())
    });

    teardown(client, proxy, server);
}

#[test]
fn server_going_away_plain() {
    scenario(Fault::ServerGoingAway, false, false);
}

#[test]
fn server_going_away_tls_gated() {
    scenario(Fault::ServerGoingAway, true, true);
}

#[test]
fn proxy_kills_connection_plain_gated() {
    scenario(Fault::Kill, false, true);
}

#[test]
fn proxy_kills_connection_tls() {
    scenario(Fault::Kill, true, false);
}

#[test]
fn half_open_link_plain_gated() {
    scenario(Fault::HalfOpen, false, true);
}

#[test]
fn half_open_link_tls() {
    scenario(Fault::HalfOpen, true, false);
}

#[test]
fn stall_mid_frame_plain() {
    scenario(Fault::StallMidFrame, false, false);
}

#[test]
fn stall_mid_frame_tls_gated() {
    scenario(Fault::StallMidFrame, true, true);
}

#[test]
fn acked_then_silent_plain_gated() {
    scenario(Fault::AckedThenSilent, false, true);
}

#[test]
fn acked_then_silent_tls() {
    scenario(Fault::AckedThenSilent, true, false);
}

#[test]
fn pings_answered_but_no_data_plain() {
    scenario(Fault::PingsButNoData, false, false);
}

#[test]
fn pings_answered_but_no_data_tls_gated() {
    scenario(Fault::PingsButNoData, true, true);
}

// ---------------------------------------------------------------------------------------------
// Connection refused for a while
// ---------------------------------------------------------------------------------------------

/// The proxy stops listening and kills the connection: the client reports `ConnectFailed` with
/// attempt numbers 2, 3, 4, ... on its backoff schedule; once the proxy listens again it
/// connects within the largest backoff delay and restores the session.
fn refused_for_a_while(tls: bool, gated: bool) {
    let _serial = serial();
    let (server, proxy, client, mut rec) = rig(tls, gated, Plan::new(Then::Ticks), Tune::PINGS);
    let start = rec.events.len();
    wait_ticks(&client, &mut rec, 2);
    proxy.refuse(true);
    proxy.kill();
    rec.until(&client, |e| {
        if let Event::ConnectFailed { reconnect, .. } = e {
            assert!(reconnect.is_some(), "gave up: {e:?}");
        }
        matches!(e, Event::ConnectFailed { attempt: 5, .. })
    });
    let listening = Instant::now();
    proxy.refuse(false);
    let ready = rec.until(&client, is_ready(2));

    let closed = rec.events[start..]
        .iter()
        .find_map(|(_, e)| match e {
            Event::Closed { epoch: 1, info, .. } => Some(info),
            _ => None,
        })
        .expect("Closed { epoch: 1 }");
    assert!(matches!(closed.cause, Cause::Transport(_)), "{closed:?}");

    // Closed, then (Connecting n, ConnectFailed n) for n = 2, 3, ..., then Connecting n,
    // Connected 2, SessionReady 2.
    let life = lifecycle(&rec, start);
    assert_eq!(life[0], "Closed 1");
    let mut n = 2;
    let mut i = 1;
    while life[i + 1].starts_with("ConnectFailed") {
        assert_eq!(life[i], format!("Connecting {n}"), "{life:?}");
        assert_eq!(life[i + 1], format!("ConnectFailed {n}"), "{life:?}");
        n += 1;
        i += 2;
    }
    assert!(n > 5, "at least attempts 2..=5 failed: {life:?}");
    assert_eq!(
        life[i..],
        [
            format!("Connecting {n}"),
            "Connected 2 true".into(),
            "SessionReady 2".into()
        ],
        "{life:?}"
    );
    for (_, e) in &rec.events[start..] {
        if let Event::ConnectFailed {
            attempt,
            cause,
            reconnect,
        } = e
        {
            match &**cause {
                Cause::ConnectFailed(Error::Connect { source, .. }) => assert_eq!(
                    source.kind(),
                    std::io::ErrorKind::ConnectionRefused,
                    "attempt {attempt}"
                ),
                other => panic!("attempt {attempt}: {other:?}"),
            }
            let delay = reconnect.expect("retried");
            assert!(delay <= BACKOFF_MAX, "attempt {attempt}: {delay:?}");
        }
    }
    let back = rec.events[ready].0.saturating_duration_since(listening);
    eprintln!(
        "refused (tls: {tls}, gated: {gated}): {} failed attempts; session back {} ms after the \
         proxy listened again (max backoff {} ms + {} ms)",
        n - 2,
        back.as_millis(),
        BACKOFF_MAX.as_millis(),
        RECONNECT_TOLERANCE.as_millis()
    );
    assert!(back <= BACKOFF_MAX + RECONNECT_TOLERANCE, "{back:?}");

    rec.until(&client, |e| matches!(e, Event::Data { epoch: 2, .. }));
    check_data_epochs(&rec);
    check_restored(&server, 0, gated);
    check_restored(&server, 1, gated);
    let stats = client.stats();
    assert_eq!(stats.reconnects, 1, "{stats:?}");
    assert_eq!(
        stats.connect_attempts, n as u64,
        "1 + every reconnect attempt: {stats:?}"
    );
    assert_eq!(server.connections(), 2);
    assert_eq!(proxy.accepted(), 2);
    teardown(client, proxy, server);
}

#[test]
fn connection_refused_for_a_while_plain_gated() {
    refused_for_a_while(false, true);
}

#[test]
fn connection_refused_for_a_while_tls() {
    refused_for_a_while(true, false);
}

// ---------------------------------------------------------------------------------------------
// Repeated losses and a missing acknowledgement
// ---------------------------------------------------------------------------------------------

/// Three losses in a row: every new connection (epochs 2, 3, 4) carries exactly the restored
/// session, the backoff grows (no connection lived `stable_after`), and the client never holds
/// more than one connection's threads.
fn repeated_kills(tls: bool, gated: bool) {
    let _serial = serial();
    let (server, proxy, client, mut rec) = rig(tls, gated, Plan::new(Then::Ticks), Tune::PINGS);
    let start = rec.events.len();
    for epoch in 2..=4u64 {
        let previous = epoch - 1;
        rec.until(
            &client,
            |e| matches!(e, Event::Data { epoch: n, .. } if *n == previous),
        );
        proxy.kill();
        rec.until(&client, is_ready(epoch));
        wait_until("one connection's client threads", WAIT, || {
            (client_threads() == ["rc-coord", "rc-reader", "rc-writer"]).then_some(())
        });
    }
    let mut ceiling = BACKOFF_INITIAL;
    for (_, e) in &rec.events[start..] {
        if let Event::Closed {
            epoch,
            info,
            reconnect,
        } = e
        {
            assert!(matches!(info.cause, Cause::Transport(_)), "{info:?}");
            let delay = reconnect.expect("reconnect planned");
            assert!(
                delay <= ceiling,
                "after loss of {epoch}: {delay:?} > {ceiling:?}"
            );
            ceiling = (ceiling * 2).min(BACKOFF_MAX);
        }
    }
    // Attempt numbers count the losses since the backoff was last reset (no connection here
    // stayed up for `stable_after`), plus one.
    assert_eq!(
        lifecycle(&rec, start),
        [
            "Closed 1",
            "Connecting 2",
            "Connected 2 true",
            "SessionReady 2",
            "Closed 2",
            "Connecting 3",
            "Connected 3 true",
            "SessionReady 3",
            "Closed 3",
            "Connecting 4",
            "Connected 4 true",
            "SessionReady 4"
        ]
    );
    check_data_epochs(&rec);
    check_restored(&server, 0, gated);
    for idx in 1..=3 {
        check_restored(&server, idx, gated);
    }
    assert_eq!(client.stats().reconnects, 3);
    assert_eq!(server.connections(), 4);
    assert_eq!(proxy.accepted(), 4);
    teardown(client, proxy, server);
}

#[test]
fn repeated_kills_restore_every_connection_plain_gated() {
    repeated_kills(false, true);
}

#[test]
fn repeated_kills_restore_every_connection_tls() {
    repeated_kills(true, false);
}

/// The venue never acknowledges `sub trades` on the first connection: the connection is dropped
/// `ack_timeout` after the subscription went out, as `AckTimeout(Some("trades"))`, and the next
/// connection restores the whole session.
fn missing_ack(tls: bool, gated: bool) {
    let _serial = serial();
    const ACK_WINDOW: Duration = Duration::from_millis(400);
    let mut plan = Plan::new(Then::Ticks);
    plan.first_unacked = Some("trades");
    let tune = Tune {
        ack_timeout: ACK_WINDOW,
        ..Tune::PINGS
    };
    let pki = Pki::new("reconnect CA");
    let server = VenueServer::start(tls.then(|| pki.server_config(&["localhost"])), plan);
    let proxy = Proxy::start(server.addr);
    let client = connect(&proxy.url(tls), tls.then_some(&pki), gated, tune);
    let mut rec = Recorder::default();
    let ready = rec.until(&client, is_ready(2));
    let (closed_at, info) = rec.events[..ready]
        .iter()
        .find_map(|(at, e)| match e {
            Event::Closed { epoch: 1, info, .. } => Some((*at, info)),
            _ => None,
        })
        .expect("Closed { epoch: 1 }");
    assert!(
        matches!(&info.cause, Cause::AckTimeout(Some(t)) if t == "trades"),
        "{info:?}"
    );
    assert_eq!(info.initiator, Initiator::Local);
    // The client sent `sub trades` just before the server read it.
    let sub_read = server.with_log(0, |l| {
        let i = l.received.iter().position(|t| t == "sub trades").unwrap();
        l.received_at[i]
    });
    let detected = closed_at.saturating_duration_since(sub_read);
    eprintln!(
        "missing ack (tls: {tls}, gated: {gated}): detected {} ms after the subscription, \
         ack_timeout {} ms + {} ms",
        detected.as_millis(),
        ACK_WINDOW.as_millis(),
        TOLERANCE.as_millis()
    );
    assert!(
        detected + Duration::from_millis(50) >= ACK_WINDOW && detected <= ACK_WINDOW + TOLERANCE,
        "{detected:?}"
    );
    // No SessionReady on a connection whose subscriptions were not all acknowledged (when the
    // endpoint is gated; see `first_session_ready_waits_for_builder_subscriptions` otherwise).
    if gated {
        assert!(
            !lifecycle(&rec, 0).contains(&"SessionReady 1".to_string()),
            "{:?}",
            lifecycle(&rec, 0)
        );
    }
    check_restored(&server, 1, gated);
    assert_eq!(client.stats().reconnects, 1);
    teardown(client, proxy, server);
}

#[test]
fn missing_ack_drops_and_restores_plain_gated() {
    missing_ack(false, true);
}

#[test]
fn missing_ack_drops_and_restores_tls() {
    missing_ack(true, false);
}

// ---------------------------------------------------------------------------------------------
// No false alarm
// ---------------------------------------------------------------------------------------------

/// A link that freezes for less than the pong timeout and then delivers everything it held is
/// slow, not dead: no reconnect, and the data keeps its order and epoch.
fn short_stall_is_not_a_disconnect(tls: bool) {
    let _serial = serial();
    let (server, proxy, client, mut rec) = rig(tls, false, Plan::new(Then::Ticks), Tune::PINGS);
    wait_ticks(&client, &mut rec, 3);
    proxy.go_silent();
    // The fault lasts 100 ms: this sleep is the length of the fault, not a synchronisation.
    thread::sleep(Duration::from_millis(100));
    proxy.resume();
    // Watch for two full ping periods (plus the timeout) after the resume.
    let watch_until = Instant::now() + PING_INTERVAL * 2 + PING_TIMEOUT;
    while let Some(left) = watch_until.checked_duration_since(Instant::now()) {
        if let Ok(e) = client.events().recv_timeout(left) {
            assert!(matches!(e, Event::Data { epoch: 1, .. }), "{e:?}");
            rec.events.push((Instant::now(), e));
        }
    }
    let ticks: Vec<u32> = rec
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::Data { value, .. } => value.strip_prefix("tick ").map(|n| n.parse().unwrap()),
            _ => None,
        })
        .collect();
    assert!(
        ticks.windows(2).all(|w| w[1] == w[0] + 1),
        "ticks in order, none lost: {ticks:?}"
    );
    let stats = client.stats();
    assert_eq!(stats.reconnects, 0);
    assert!(stats.rtt_samples > 0);
    assert_eq!(server.connections(), 1);
    teardown(client, proxy, server);
}

#[test]
fn short_stall_is_not_a_disconnect_plain() {
    short_stall_is_not_a_disconnect(false);
}

#[test]
fn short_stall_is_not_a_disconnect_tls() {
    short_stall_is_not_a_disconnect(true);
}

// ---------------------------------------------------------------------------------------------
// The first session
// ---------------------------------------------------------------------------------------------

/// `SessionReady` promises every subscription replayed and acknowledged. On the first
/// connection of a non-gated endpoint the builder's subscriptions must be acknowledged before
/// it is reported (the server here holds its acks for 300 ms).
#[test]
fn first_session_ready_waits_for_builder_subscriptions() {
    let _serial = serial();
    let mut plan = Plan::new(Then::Ticks);
    plan.first_ack_delay = Duration::from_millis(300);
    let (server, proxy, client, _rec) = rig(false, false, plan, Tune::PINGS);
    // `rig` returned at SessionReady { epoch: 1 }: both acks must have been sent by then.
    let acks = server.with_log(0, |l| {
        l.sent.iter().filter(|(_, t)| t.starts_with("ack:")).count()
    });
    assert_eq!(
        acks, 2,
        "SessionReady before the subscriptions were acknowledged"
    );
    check_restored(&server, 0, false);
    teardown(client, proxy, server);
}

// ---------------------------------------------------------------------------------------------
// Regression: a connection dropped before the upgrade response is retried
// ---------------------------------------------------------------------------------------------

/// A connection dropped by the far side before any upgrade response is a transport failure
/// like any other and must be retried. The proxy accepts, sends FIN at once, and drains what
/// the client sends, so the client reads a clean EOF where the `101` should be.
fn dropped_before_upgrade_is_retried(tls: bool) {
    let _serial = serial();
    let (server, proxy, client, mut rec) = rig(tls, false, Plan::new(Then::Ticks), Tune::PINGS);
    let start = rec.events.len();
    proxy.drop_new(true);
    proxy.kill();
    rec.until(&client, |e| {
        if let Event::ConnectFailed { reconnect, .. } = e {
            assert!(reconnect.is_some(), "the client gave up for good: {e:?}");
        }
        matches!(e, Event::ConnectFailed { attempt: 3, .. })
    });
    proxy.drop_new(false);
    rec.until(&client, is_ready(2));
    assert_eq!(lifecycle(&rec, start)[0], "Closed 1");
    check_restored(&server, 1, false);
    assert_eq!(client.stats().reconnects, 1);
    teardown(client, proxy, server);
}

#[test]
fn dropped_before_upgrade_is_retried_plain() {
    dropped_before_upgrade_is_retried(false);
}

#[test]
fn dropped_before_upgrade_is_retried_tls() {
    dropped_before_upgrade_is_retried(true);
}
