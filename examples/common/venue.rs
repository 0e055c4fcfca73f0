//! A simulated venue speaking a Deribit-style JSON-RPC 2.0 dialect over WebSocket: the server
//! half of the `trader`, `public_stream` and `exchange_sim` examples and of `tests/requests.rs`
//! (the tests include this very file, so they drive the same simulator the examples run).
//!
//! Blocking tungstenite, one thread per connection, on a loopback port (`127.0.0.1:0` picks a
//! free one). Each connection thread reads with a short timeout so that it can also write the
//! answers it delays, stream ticks and send pings between reads.
//!
//! # The dialect
//!
//! Requests: `{"jsonrpc":"2.0","id":N,"method":M,"params":{...}}`. Answers:
//! `{"jsonrpc":"2.0","id":N,"result":...}` or
//! `{"jsonrpc":"2.0","id":N,"error":{"code":C,"message":"...","data":{...}}}`.
//!
//! | method                | params                                  | result                 |
//! |-----------------------|-----------------------------------------|------------------------|
//! | `public/auth`         | `grant_type`, `client_id`, `client_secret` | `{"access_token":..}` |
//! | `public/subscribe`    | `channels: [..]`                        | channels subscribed    |
//! | `public/unsubscribe`  | `channels: [..]`                        | channels removed       |
//! | `private/buy`, `sell` | `instrument_name`, `amount` (> 0), ...  | `{"order":{..},..}`    |
//!
//! - Authentication accepts any non-empty `client_id` with any `client_secret` except `"bad"`
//!   (refused with code 13004 `invalid_credentials`).
//! - Only `ticker.*` channels exist; the venue then pushes
//!   `{"jsonrpc":"2.0","method":"subscription","params":{"channel":C,"data":{...}}}` every
//!   [`Knobs::tick_every`].
//! - An order before authentication on that connection is refused with 13009 `unauthorized`;
//!   one without `instrument_name` or with `amount <= 0` with -32602 `Invalid params`.
//! - **Retry-after**: a rate-limited order is refused with code 10028 `too_many_requests` and
//!   `error.data.retry_after_ms` (integer milliseconds) saying when to try again. That field
//!   is this simulator's convention, not something to expect from a real venue.
//!
//! # Knobs and the log
//!
//! [`Knobs`] script the venue's behaviour (rejections, delays, holds, drops, stalls, a seeded
//! [`Flaky`] mode, server pings); [`Venue::set_knobs`] changes them while it runs. Every
//! JSON-RPC request received is logged as a [`Received`] (connection, id, method, params and what
//! the venue decided), so a test can check that every frame the venue saw maps to one call.
#![allow(dead_code)]

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};
use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Bytes, Message, WebSocket};

/// The URL path the venue is reached at (any path is accepted).
pub const PATH: &str = "/ws/api/v2";

/// Largest message the venue reads.
pub const MAX_MESSAGE: usize = 512 << 20;

/// Error code for a rate-limited order (carries `error.data.retry_after_ms`).
pub const TOO_MANY_REQUESTS: i64 = 10028;
/// Error code for an order sent before authentication.
pub const UNAUTHORIZED: i64 = 13009;
/// Error code for refused credentials.
pub const INVALID_CREDENTIALS: i64 = 13004;

/// When a scripted drop happens relative to the answer of the order that triggers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropWhen {
    /// The order is logged, then the connection is closed without an answer.
    BeforeAnswer,
    /// The answer is written (ignoring any delay or hold), then the connection is closed.
    AfterAnswer,
}

/// Random faults, drawn per order from a generator seeded by `seed`. Probabilities in `[0, 1]`.
#[derive(Clone, Debug)]
pub struct Flaky {
    /// Seed of the venue's generator (same seed and same arrival order, same decisions).
    pub seed: u64,
    /// Chance an order is refused with `too_many_requests` and a retry-after.
    pub reject: f64,
    /// Chance an answer is delayed, by a uniform time in `[0, max_delay]`.
    pub delay: f64,
    /// The longest delay.
    pub max_delay: Duration,
    /// Chance the connection is dropped after logging an order, before answering it.
    pub drop_before: f64,
    /// Chance the connection is dropped right after answering an order.
    pub drop_after: f64,
}

impl Flaky {
    /// The `exchange_sim --flaky` profile: 10% rejected, 20% delayed up to 1.5 s, 2% dropped
    /// before and 2% after answering.
    pub fn demo(seed: u64) -> Flaky {
        Flaky {
            seed,
            reject: 0.10,
            delay: 0.20,
            max_delay: Duration::from_millis(1500),
            drop_before: 0.02,
            drop_after: 0.02,
        }
    }
}

/// How the venue behaves. [`Knobs::default`] answers everything at once and rejects nothing.
#[derive(Clone, Debug)]
pub struct Knobs {
    /// Reject every k-th order (counted across all connections, from 1) with
    /// `too_many_requests`. Default none.
    pub reject_every: Option<u64>,
    /// The retry-after put in rejections (`error.data.retry_after_ms`). Default 500 ms.
    pub retry_after: Duration,
    /// Delay every order's answer by this much. Default zero.
    pub delay: Duration,
    /// Hold every order's answer until [`Venue::release`]. Default false.
    pub hold: bool,
    /// Drop the connection when order number n (across all connections, from 1) arrives.
    pub drop_at_order: Option<(u64, DropWhen)>,
    /// After answering order number n, stop reading that connection (and write nothing more)
    /// until [`Venue::resume`], until it is dropped ([`Venue::drop_connections`]) or until the
    /// venue stops.
    pub stall_after_order: Option<u64>,
    /// Random faults; applied on top of the settings above.
    pub flaky: Option<Flaky>,
    /// Delay the answer to `public/auth` by this much. Default zero.
    pub auth_delay: Duration,
    /// Period of the ticker messages on subscribed channels. Default 100 ms.
    pub tick_every: Duration,
    /// Ping every connection this often with a fresh payload and check that the pong echoes it
    /// ([`Venue::pong_checks`]). Default none.
    pub ping_every: Option<Duration>,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            reject_every: None,
            retry_after: Duration::from_millis(500),
            delay: Duration::ZERO,
            hold: false,
            drop_at_order: None,
            stall_after_order: None,
            flaky: None,
            auth_delay: Duration::ZERO,
            tick_every: Duration::from_millis(100),
            ping_every: None,
        }
    }
}

/// What the venue did with a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Accepted (orders: confirmed).
    Accepted,
    /// Refused with `too_many_requests` and a retry-after.
    RateLimited,
    /// Refused: not authenticated on this connection.
    Unauthorized,
    /// Refused: bad parameters, bad credentials or unknown method.
    Refused,
    /// None: the connection was dropped before answering.
    Dropped,
}

/// One JSON-RPC request the venue received.
#[derive(Clone, Debug)]
pub struct Received {
    /// Connection number (1 for the first accepted connection).
    pub conn: u64,
    /// The request id (`None` if missing or not an unsigned integer).
    pub id: Option<u64>,
    /// The method.
    pub method: String,
    /// The params, as received.
    pub params: Value,
    /// For orders: the order's number across all connections (from 1); 0 otherwise.
    pub order_seq: u64,
    /// What the venue decided.
    pub answer: Answer,
    /// How long the answer was delayed (zero: at once).
    pub delay: Duration,
    /// Whether the answer was held for [`Venue::release`].
    pub held: bool,
    /// Whether (and when) the connection was dropped because of this request.
    pub drop: Option<DropWhen>,
    /// When it was read.
    pub at: Instant,
}

impl Received {
    /// True for `private/buy` and `private/sell`.
    pub fn is_order(&self) -> bool {
        is_order_method(&self.method)
    }
}

/// A server ping and the pong that answered it.
#[derive(Clone, Debug)]
pub struct PongCheck {
    /// Connection number.
    pub conn: u64,
    /// The ping's payload.
    pub ping: Vec<u8>,
    /// The pong's payload.
    pub pong: Vec<u8>,
    /// Round trip.
    pub rtt: Duration,
}

impl PongCheck {
    /// The pong echoed the ping's payload.
    pub fn matched(&self) -> bool {
        self.ping == self.pong
    }
}

/// A running simulated venue. Stops (and joins every thread) on [`Venue::stop`] or drop.
pub struct Venue {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes stalled connections (a drop or the venue stopping).
    wake: Condvar,
    stopped: AtomicBool,
    /// Bumped by [`Venue::release`].
    release_gen: AtomicU64,
    /// Bumped by [`Venue::resume`].
    resume_gen: AtomicU64,
}

struct State {
    knobs: Knobs,
    rng: SplitMix64,
    log: Vec<Received>,
    orders: u64,
    next_conn: u64,
    conns: Vec<ConnHandle>,
    pongs: Vec<PongCheck>,
    client_pings: u64,
    drops: Vec<Instant>,
}

struct ConnHandle {
    id: u64,
    sock: TcpStream,
    killed: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Venue {
    /// Starts on a free loopback port.
    pub fn start(knobs: Knobs) -> io::Result<Venue> {
        Venue::bind("127.0.0.1:0", knobs)
    }

    /// Starts on `addr` (for example `127.0.0.1:8765`).
    pub fn bind(addr: &str, knobs: Knobs) -> io::Result<Venue> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let seed = knobs.flaky.as_ref().map_or(0, |f| f.seed);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                knobs,
                rng: SplitMix64(seed),
                log: Vec::new(),
                orders: 0,
                next_conn: 1,
                conns: Vec::new(),
                pongs: Vec::new(),
                client_pings: 0,
                drops: Vec::new(),
            }),
            wake: Condvar::new(),
            stopped: AtomicBool::new(false),
            release_gen: AtomicU64::new(0),
            resume_gen: AtomicU64::new(0),
        });
        let accept_shared = shared.clone();
        let accept = thread::Builder::new()
            .name("venue-accept".into())
            .spawn(move || accept_loop(listener, accept_shared))?;
        Ok(Venue {
            addr,
            shared,
            accept: Some(accept),
        })
    }

    /// The socket address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL to connect to: `ws://127.0.0.1:PORT/ws/api/v2`.
    pub fn url(&self) -> String {
        format!("ws://{}{PATH}", self.addr)
    }

    /// Changes the knobs; takes effect from the next request (and the next tick or ping).
    pub fn set_knobs(&self, change: impl FnOnce(&mut Knobs)) {
        let mut st = self.shared.lock();
        change(&mut st.knobs);
        if let Some(f) = &st.knobs.flaky {
            st.rng = SplitMix64(f.seed);
        }
    }

    /// Every JSON-RPC request received so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.shared.lock().log.clone()
    }

    /// The requests received from the `start`-th on (0-based), in arrival order.
    pub fn received_from(&self, start: usize) -> Vec<Received> {
        let st = self.shared.lock();
        st.log
            .get(start..)
            .map_or_else(Vec::new, <[Received]>::to_vec)
    }

    /// The orders (`private/buy`, `private/sell`) received so far, in arrival order.
    pub fn orders(&self) -> Vec<Received> {
        self.shared
            .lock()
            .log
            .iter()
            .filter(|r| r.is_order())
            .cloned()
            .collect()
    }

    /// How many orders have arrived.
    pub fn order_count(&self) -> u64 {
        self.shared.lock().orders
    }

    /// Writes every held answer now (see [`Knobs::hold`]); new answers are held as long as the
    /// knob stays on.
    pub fn release(&self) {
        self.shared.release_gen.fetch_add(1, Ordering::SeqCst);
    }

    /// Makes stalled connections read again (see [`Knobs::stall_after_order`]).
    pub fn resume(&self) {
        let _guard = self.shared.lock();
        self.shared.resume_gen.fetch_add(1, Ordering::SeqCst);
        self.shared.wake.notify_all();
    }

    /// Closes every open connection at once (FIN; the client sees the stream end).
    pub fn drop_connections(&self) {
        let mut st = self.shared.lock();
        let now = Instant::now();
        for c in st.conns.iter().filter(|c| !c.killed.load(Ordering::SeqCst)) {
            c.killed.store(true, Ordering::SeqCst);
            let _ = c.sock.shutdown(Shutdown::Both);
        }
        st.drops.push(now);
        drop(st);
        self.shared.wake.notify_all();
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.lock().next_conn - 1
    }

    /// When the venue dropped connections (scripted, random or [`Venue::drop_connections`]).
    pub fn drops(&self) -> Vec<Instant> {
        self.shared.lock().drops.clone()
    }

    /// Every server ping answered so far.
    pub fn pong_checks(&self) -> Vec<PongCheck> {
        self.shared.lock().pongs.clone()
    }

    /// Pings the clients sent to the venue.
    pub fn client_pings(&self) -> u64 {
        self.shared.lock().client_pings
    }

    /// Stops accepting, closes every connection and joins every thread.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        let Some(accept) = self.accept.take() else {
            return;
        };
        self.shared.stopped.store(true, Ordering::SeqCst);
        // Wake the accept loop with a connection of our own.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        let _ = accept.join();
        let conns = std::mem::take(&mut self.shared.lock().conns);
        for c in &conns {
            c.killed.store(true, Ordering::SeqCst);
            let _ = c.sock.shutdown(Shutdown::Both);
        }
        self.shared.wake.notify_all();
        for mut c in conns {
            if let Some(t) = c.thread.take() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Venue {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking connection thread must not take the whole venue down.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stopped.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let Ok(sock) = stream.try_clone() else {
            continue;
        };
        let killed = Arc::new(AtomicBool::new(false));
        let mut st = shared.lock();
        // Forget connections whose thread has ended.
        st.conns.retain_mut(|c| {
            let done = c.thread.as_ref().is_none_or(|t| t.is_finished());
            if done && let Some(t) = c.thread.take() {
                let _ = t.join();
            }
            !done
        });
        let id = st.next_conn;
        st.next_conn += 1;
        let conn_shared = shared.clone();
        let conn_killed = killed.clone();
        let thread = thread::Builder::new()
            .name(format!("venue-conn-{id}"))
            .spawn(move || serve(conn_shared, id, stream, conn_killed))
            .ok();
        st.conns.push(ConnHandle {
            id,
            sock,
            killed,
            thread,
        });
    }
}

/// What a request asks the connection loop to do next.
enum Flow {
    Continue,
    /// Close the connection now.
    Drop,
    /// Stop reading until killed.
    Stall,
}

/// One connection's state, owned by its thread.
struct Conn {
    id: u64,
    shared: Arc<Shared>,
    killed: Arc<AtomicBool>,
    authed: bool,
    channels: BTreeSet<String>,
    /// Delayed answers: (due, sequence, text).
    pending: BinaryHeap<Reverse<(Instant, u64, String)>>,
    pending_seq: u64,
    held: Vec<String>,
    release_gen: u64,
    next_tick: Option<Instant>,
    ticks: u64,
    next_ping: Option<Instant>,
    ping_out: Option<(Vec<u8>, Instant)>,
    pings: u64,
    /// `resume_gen` when the current stall was decided.
    stall_gen: u64,
}

fn serve(shared: Arc<Shared>, id: u64, stream: TcpStream, killed: Arc<AtomicBool>) {
    let _ = stream.set_nodelay(true);
    // Large limits: a test may send a request bigger than every kernel buffer on the way.
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    let Ok(mut ws) = tungstenite::accept_with_config(stream, Some(config)) else {
        return;
    };
    let mut c = Conn {
        id,
        release_gen: shared.release_gen.load(Ordering::SeqCst),
        shared,
        killed,
        authed: false,
        channels: BTreeSet::new(),
        pending: BinaryHeap::new(),
        pending_seq: 0,
        held: Vec::new(),
        next_tick: None,
        ticks: 0,
        next_ping: None,
        ping_out: None,
        pings: 0,
        stall_gen: 0,
    };
    while let Flow::Stall = c.run(&mut ws) {
        if !c.stall() {
            break;
        }
    }
    let _ = ws.get_ref().shutdown(Shutdown::Both);
}

impl Conn {
    fn alive(&self) -> bool {
        !self.killed.load(Ordering::SeqCst) && !self.shared.stopped.load(Ordering::SeqCst)
    }

    fn run(&mut self, ws: &mut WebSocket<TcpStream>) -> Flow {
        while self.alive() {
            let now = Instant::now();
            match self.write_due(ws, now) {
                Ok(()) => {}
                Err(_) => return Flow::Drop,
            }
            let timeout = self.read_timeout(now);
            if ws.get_ref().set_read_timeout(Some(timeout)).is_err() {
                return Flow::Drop;
            }
            let flow = match ws.read() {
                Ok(Message::Text(text)) => self.on_request(ws, text.as_str()),
                Ok(Message::Pong(payload)) => {
                    self.on_pong(&payload);
                    Flow::Continue
                }
                Ok(Message::Ping(_)) => {
                    self.shared.lock().client_pings += 1;
                    Flow::Continue
                }
                // tungstenite answers a close itself; the next read reports the end.
                Ok(_) => Flow::Continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    Flow::Continue
                }
                Err(_) => Flow::Drop,
            };
            match flow {
                Flow::Continue => {}
                other => return other,
            }
        }
        Flow::Drop
    }

    /// Writes due answers, ticks and pings; flushes once.
    fn write_due(
        &mut self,
        ws: &mut WebSocket<TcpStream>,
        now: Instant,
    ) -> tungstenite::Result<()> {
        let mut wrote = false;
        let gen_now = self.shared.release_gen.load(Ordering::SeqCst);
        if gen_now != self.release_gen {
            self.release_gen = gen_now;
            for text in std::mem::take(&mut self.held) {
                ws.write(Message::text(text))?;
                wrote = true;
            }
        }
        while let Some(Reverse((due, _, _))) = self.pending.peek() {
            if *due > now {
                break;
            }
            let Some(Reverse((_, _, text))) = self.pending.pop() else {
                break;
            };
            ws.write(Message::text(text))?;
            wrote = true;
        }
        let (tick_every, ping_every) = {
            let st = self.shared.lock();
            (st.knobs.tick_every, st.knobs.ping_every)
        };
        if let Some(due) = self.next_tick
            && now >= due
        {
            self.ticks += 1;
            for channel in &self.channels {
                ws.write(Message::text(tick(channel, self.ticks)))?;
            }
            wrote = true;
            self.next_tick = Some(now + tick_every);
        }
        match (ping_every, self.next_ping) {
            (None, _) => self.next_ping = None,
            (Some(every), None) => self.next_ping = Some(now + every),
            (Some(every), Some(due)) if now >= due => {
                self.pings += 1;
                let payload = format!("venue-ping-{}-{}", self.id, self.pings).into_bytes();
                ws.write(Message::Ping(Bytes::from(payload.clone())))?;
                self.ping_out = Some((payload, now));
                wrote = true;
                self.next_ping = Some(now + every);
            }
            _ => {}
        }
        if wrote {
            ws.flush()?;
        }
        Ok(())
    }

    /// How long the next read may block: until the next thing to write, at most 20 ms (so knob
    /// changes, releases and drops are noticed), at least 1 ms.
    fn read_timeout(&self, now: Instant) -> Duration {
        let mut until = now + Duration::from_millis(20);
        if let Some(Reverse((due, _, _))) = self.pending.peek() {
            until = until.min(*due);
        }
        if !self.held.is_empty() {
            until = until.min(now + Duration::from_millis(2));
        }
        for due in [self.next_tick, self.next_ping].into_iter().flatten() {
            until = until.min(due);
        }
        until
            .saturating_duration_since(now)
            .max(Duration::from_millis(1))
    }

    fn on_pong(&mut self, payload: &[u8]) {
        if let Some((ping, sent)) = self.ping_out.take() {
            self.shared.lock().pongs.push(PongCheck {
                conn: self.id,
                ping,
                pong: payload.to_vec(),
                rtt: sent.elapsed(),
            });
        }
    }

    fn on_request(&mut self, ws: &mut WebSocket<TcpStream>, text: &str) -> Flow {
        let Ok(req) = serde_json::from_str::<Value>(text) else {
            let answer = error(&Value::Null, -32700, "Parse error", None);
            return self.answer_now(ws, answer);
        };
        let id_value = req.get("id").cloned().unwrap_or(Value::Null);
        let id = id_value.as_u64();
        let method = req
            .get("method")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let params = req.get("params").cloned().unwrap_or(Value::Null);
        let at = Instant::now();
        let mut record = Received {
            conn: self.id,
            id,
            method: method.clone(),
            params: params.clone(),
            order_seq: 0,
            answer: Answer::Accepted,
            delay: Duration::ZERO,
            held: false,
            drop: None,
            at,
        };
        match method.as_str() {
            "public/auth" => {
                let client_id = params.get("client_id").and_then(Value::as_str);
                let secret = params.get("client_secret").and_then(Value::as_str);
                let answer = match (client_id, secret) {
                    (Some(c), Some(s)) if !c.is_empty() && s != "bad" => {
                        self.authed = true;
                        success(
                            &id_value,
                            json!({
                                "access_token": format!("sim-token-{}-{c}", self.id),
                                "expires_in": 900,
                                "refresh_token": format!("sim-refresh-{}", self.id),
                                "scope": "session:sim trade:read_write",
                                "token_type": "bearer"
                            }),
                        )
                    }
                    _ => {
                        record.answer = Answer::Refused;
                        error(&id_value, INVALID_CREDENTIALS, "invalid_credentials", None)
                    }
                };
                let delay = {
                    let mut st = self.shared.lock();
                    record.delay = st.knobs.auth_delay;
                    st.log.push(record);
                    st.knobs.auth_delay
                };
                self.answer_after(ws, answer, delay)
            }
            "public/subscribe" | "public/unsubscribe" => {
                let channels: Vec<String> = params
                    .get("channels")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .filter(|c| c.starts_with("ticker."))
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default();
                if method == "public/subscribe" {
                    self.channels.extend(channels.iter().cloned());
                    if self.next_tick.is_none() && !self.channels.is_empty() {
                        self.next_tick = Some(at);
                    }
                } else {
                    for c in &channels {
                        self.channels.remove(c);
                    }
                }
                self.shared.lock().log.push(record);
                self.answer_now(ws, success(&id_value, json!(channels)))
            }
            m if is_order_method(m) => self.on_order(ws, record, &id_value),
            _ => {
                record.answer = Answer::Refused;
                self.shared.lock().log.push(record);
                let answer = error(&id_value, -32601, "Method not found", None);
                self.answer_now(ws, answer)
            }
        }
    }

    fn on_order(
        &mut self,
        ws: &mut WebSocket<TcpStream>,
        mut record: Received,
        id_value: &Value,
    ) -> Flow {
        let params = &record.params;
        let instrument = params.get("instrument_name").and_then(Value::as_str);
        let amount = params.get("amount").and_then(Value::as_f64);
        let valid = instrument.is_some() && amount.is_some_and(|a| a > 0.0);
        let mut st = self.shared.lock();
        st.orders += 1;
        let n = st.orders;
        record.order_seq = n;
        let knobs = st.knobs.clone();
        record.delay = knobs.delay;
        record.held = knobs.hold;
        record.answer = if !self.authed {
            Answer::Unauthorized
        } else if !valid {
            Answer::Refused
        } else if knobs
            .reject_every
            .is_some_and(|k| k > 0 && n.is_multiple_of(k))
        {
            Answer::RateLimited
        } else {
            Answer::Accepted
        };
        if let Some(f) = &knobs.flaky {
            let r = st.rng.unit();
            if r < f.drop_before {
                record.drop = Some(DropWhen::BeforeAnswer);
            } else if r < f.drop_before + f.drop_after {
                record.drop = Some(DropWhen::AfterAnswer);
            }
            if record.answer == Answer::Accepted && st.rng.unit() < f.reject {
                record.answer = Answer::RateLimited;
            }
            if st.rng.unit() < f.delay {
                let ms = (st.rng.unit() * f.max_delay.as_millis() as f64) as u64;
                record.delay = record.delay.max(Duration::from_millis(ms));
            }
        }
        if let Some((at, when)) = knobs.drop_at_order
            && at == n
        {
            record.drop = Some(when);
        }
        let stall = knobs.stall_after_order == Some(n);
        if stall {
            // A resume from now on ends the stall.
            self.stall_gen = self.shared.resume_gen.load(Ordering::SeqCst);
        }
        if record.drop == Some(DropWhen::BeforeAnswer) {
            record.answer = Answer::Dropped;
            record.delay = Duration::ZERO;
            record.held = false;
            st.log.push(record);
            st.drops.push(Instant::now());
            return Flow::Drop;
        }
        let answer = match record.answer {
            Answer::Accepted => {
                let direction = if record.method == "private/buy" {
                    "buy"
                } else {
                    "sell"
                };
                let order = json!({
                    "order_id": format!("SIM-{n}"),
                    "order_state": "open",
                    "instrument_name": instrument,
                    "direction": direction,
                    "amount": amount,
                    "price": params.get("price"),
                    // Labels are echoed up to 64 characters (Deribit's limit).
                    "label": params
                        .get("label")
                        .and_then(Value::as_str)
                        .map(|l| l.chars().take(64).collect::<String>()),
                });
                success(id_value, json!({"order": order, "trades": []}))
            }
            Answer::RateLimited => error(
                id_value,
                TOO_MANY_REQUESTS,
                "too_many_requests",
                Some(json!({
                    "retry_after_ms": knobs.retry_after.as_millis() as u64,
                    "reason": "simulated rate limit"
                })),
            ),
            Answer::Unauthorized => error(id_value, UNAUTHORIZED, "unauthorized", None),
            Answer::Refused | Answer::Dropped => error(id_value, -32602, "Invalid params", None),
        };
        let drop_after = record.drop == Some(DropWhen::AfterAnswer);
        let (delay, held) = (record.delay, record.held);
        if drop_after {
            record.delay = Duration::ZERO;
            record.held = false;
        }
        st.log.push(record);
        drop(st);
        if drop_after {
            let _ = ws.send(Message::text(answer));
            let _ = ws.get_ref().shutdown(Shutdown::Write);
            self.shared.lock().drops.push(Instant::now());
            return Flow::Drop;
        }
        let flow = if held {
            self.held.push(answer);
            Flow::Continue
        } else {
            self.answer_after(ws, answer, delay)
        };
        if stall { Flow::Stall } else { flow }
    }

    /// Answers now, or queues the answer for `delay` from now.
    fn answer_after(
        &mut self,
        ws: &mut WebSocket<TcpStream>,
        answer: String,
        delay: Duration,
    ) -> Flow {
        if delay.is_zero() {
            return self.answer_now(ws, answer);
        }
        self.pending_seq += 1;
        self.pending
            .push(Reverse((Instant::now() + delay, self.pending_seq, answer)));
        Flow::Continue
    }

    fn answer_now(&mut self, ws: &mut WebSocket<TcpStream>, answer: String) -> Flow {
        match ws.send(Message::text(answer)) {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Drop,
        }
    }

    /// Reads nothing and writes nothing until resumed (true), or until the connection is
    /// dropped or the venue stops (false).
    fn stall(&self) -> bool {
        let mut st = self.shared.lock();
        while self.alive() {
            if self.shared.resume_gen.load(Ordering::SeqCst) != self.stall_gen {
                return true;
            }
            st = match self.shared.wake.wait_timeout(st, Duration::from_millis(50)) {
                Ok((guard, _)) => guard,
                Err(e) => e.into_inner().0,
            };
        }
        false
    }
}

fn is_order_method(method: &str) -> bool {
    method == "private/buy" || method == "private/sell"
}

fn success(id: &Value, result: Value) -> String {
    json!({"jsonrpc": "2.0", "id": id, "result": result, "testnet": true}).to_string()
}

fn error(id: &Value, code: i64, message: &str, data: Option<Value>) -> String {
    let mut error = json!({"code": code, "message": message});
    if let Some(data) = data {
        error["data"] = data;
    }
    json!({"jsonrpc": "2.0", "id": id, "error": error, "testnet": true}).to_string()
}

/// A ticker notification with prices that move a little with `n`.
fn tick(channel: &str, n: u64) -> String {
    let instrument = channel.split('.').nth(1).unwrap_or("BTC-PERPETUAL");
    let mid = 60_000.0 + ((n % 40) as f64 - 20.0) * 2.5;
    json!({
        "jsonrpc": "2.0",
        "method": "subscription",
        "params": {
            "channel": channel,
            "data": {
                "instrument_name": instrument,
                "timestamp": std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
                "best_bid_price": mid - 0.5,
                "best_ask_price": mid + 0.5,
                "last_price": mid,
                "mark_price": mid,
            }
        }
    })
    .to_string()
}

/// SplitMix64: a tiny seeded generator (the venue needs no `rand`).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}
