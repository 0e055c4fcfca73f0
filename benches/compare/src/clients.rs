//! The clients under test, one function per (client, workload):
//!
//! - **syncws**, as an application uses it;
//! - **raw**: a hand-written blocking tungstenite client on one thread (the baseline), over a
//!   `TcpStream` or a rustls `StreamOwned`;
//! - **tokio**: tokio-tungstenite on a current-thread runtime (the async peer).
//!
//! Throughput clients run on their own thread until `stop` is set (or the server goes away) and
//! bump a shared counter once per message delivered to application code; the bench samples the
//! counter. Round-trip clients run on the calling thread and return one sample per round trip.

use std::hint::black_box;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::ServerName;
use rustls::{ClientConnection, StreamOwned};
use syncws::{
    Client, ClientBuilder, Data, Dispatch, Endpoint, Event, Frame, Ingress, Keepalive, Outcome,
    Precheck, Reply, Request, Response, Verdict, WaitStrategy,
};
use tungstenite::Message;

use crate::servers::Pki;

/// How long any single wait may take before the bench gives up with a panic.
const WAIT: Duration = Duration::from_secs(10);

/// Which client, and for syncws inbound, how the application receives messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Who {
    /// syncws; inbound: an [`Ingress`] that counts on the reader thread and emits nothing.
    Syncws,
    /// syncws inbound: the ingress decodes each message into a small value and emits it; the
    /// application thread receives it from `Client::events` (what a real consumer sees).
    SyncwsChannel,
    /// syncws inbound with the default `connect()` (`ForwardAll`): every message is copied out
    /// of the read buffer and delivered as `Event::Frame` on `Client::events`.
    SyncwsFrame,
    /// syncws round trip with [`Dispatch::Inline`] (the opt-in fast path); `Syncws` is the
    /// default actor dispatch.
    SyncwsInline,
    Raw,
    /// raw outbound with tungstenite's `write` (no flush per message): frames collect in
    /// tungstenite's write buffer and go out when it is full, which is how a blocking client
    /// batches by hand. Reported as its own metric (`outbound_batched_...`).
    RawBatched,
    Tokio,
}

impl Who {
    pub fn name(self) -> &'static str {
        match self {
            Who::Syncws => "syncws",
            Who::SyncwsChannel => "syncws_channel",
            Who::SyncwsFrame => "syncws_frame",
            Who::SyncwsInline => "syncws_inline",
            Who::Raw => "raw",
            Who::RawBatched => "raw_batched",
            Who::Tokio => "tokio",
        }
    }
}

/// Where to connect: the server's URL, and the certificates when it is TLS.
#[derive(Clone)]
pub struct Target {
    pub url: String,
    pub pki: Option<Arc<Pki>>,
}

// ---------------------------------------------------------------------------------------------
// syncws

fn syncws_builder(t: &Target) -> ClientBuilder {
    // No keepalive pings (none of the other clients sends any) and a short close handshake,
    // since the blaster never answers one. Every other setting is syncws's default.
    let mut b = Client::builder(&t.url)
        .name("bench")
        .keepalive(Keepalive::ServerDriven)
        .close_timeout(Duration::from_millis(200))
        .wait_strategy(wait_strategy());
    if let Some(pki) = &t.pki {
        b = b.add_root_certificate(pki.ca.clone());
    }
    b
}

/// `SYNCWS_BENCH_WAIT`: `block` (default), `spin`, or `spin:MICROS` (spin-then-block with that
/// budget), to compare syncws's wait strategies with the same command.
fn wait_strategy() -> WaitStrategy {
    match std::env::var("SYNCWS_BENCH_WAIT").as_deref() {
        Ok("spin") => WaitStrategy::Spin,
        Ok(v) => match v.strip_prefix("spin:").and_then(|us| us.parse().ok()) {
            Some(us) => WaitStrategy::SpinThenBlock {
                budget: Duration::from_micros(us),
            },
            None => WaitStrategy::Block,
        },
        Err(_) => WaitStrategy::Block,
    }
}

/// Counts each message on the reader thread; emits nothing.
struct Count(Arc<AtomicU64>);

impl Ingress for Count {
    type Output = ();
    fn on_message(&mut self, msg: Data<'_>) -> Verdict<()> {
        black_box(msg.as_bytes());
        self.0.fetch_add(1, Relaxed);
        Verdict::Ignore
    }
}

/// A value decoded on the reader thread: the stand-in for a parsed quote. (The application
/// only hands it to `black_box`, which the dead-code lint does not count as a read.)
#[derive(Debug)]
#[allow(dead_code)]
pub struct Decoded {
    pub len: usize,
    pub head: u64,
}

/// Decodes each message into a [`Decoded`] and emits it.
struct Decode;

impl Ingress for Decode {
    type Output = Decoded;
    fn on_message(&mut self, msg: Data<'_>) -> Verdict<Decoded> {
        let b = msg.as_bytes();
        let mut head = [0u8; 8];
        let n = b.len().min(8);
        head[..n].copy_from_slice(&b[..n]);
        Verdict::Emit(Decoded {
            len: b.len(),
            head: u64::from_le_bytes(head),
        })
    }
}

/// Receives events, counting the data ones, until the connection ends (the blaster closes it
/// once told to stop) or `stop` is seen after a data event. A plain blocking `recv`, as an
/// application's consumer loop has: no clock read per event.
fn drain_events<T: std::fmt::Debug>(client: &Client<T>, count: &AtomicU64, stop: &AtomicBool) {
    loop {
        match client.events().recv() {
            Ok(ev @ (Event::Data { .. } | Event::Frame { .. })) => {
                black_box(ev);
                count.fetch_add(1, Relaxed);
                if stop.load(Relaxed) {
                    return;
                }
            }
            Ok(Event::Closed { .. }) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

fn syncws_inbound(who: Who, t: &Target, count: &Arc<AtomicU64>, stop: &AtomicBool) {
    let done = Duration::from_millis(500);
    match who {
        Who::Syncws => {
            let client = syncws_builder(t)
                .connect_with(Count(count.clone()))
                .expect("syncws connect");
            // Only lifecycle events come here; wait for the end.
            drain_events(&client, &AtomicU64::new(0), stop);
            client.shutdown(done);
        }
        Who::SyncwsChannel => {
            let client = syncws_builder(t)
                .connect_with(Decode)
                .expect("syncws connect");
            drain_events(&client, count, stop);
            client.shutdown(done);
        }
        Who::SyncwsFrame => {
            let client = syncws_builder(t).connect().expect("syncws connect");
            drain_events(&client, count, stop);
            client.shutdown(done);
        }
        _ => unreachable!(),
    }
}

fn syncws_outbound(t: &Target, size: usize, stop: &AtomicBool) {
    let client = syncws_builder(t).connect().expect("syncws connect");
    let payload = crate::servers::payload(size);
    while !stop.load(Relaxed) {
        // A fresh buffer per message, as an application that serialises each one has.
        if client.send(Frame::binary(payload.to_vec())).is_err() {
            break;
        }
    }
    client.shutdown(Duration::from_secs(1));
}

/// The echo server's dialect: a response is the request itself, whose first 8 bytes are its id
/// (little-endian). Every message is a response, so the precheck passes everything.
struct Echo;

impl Endpoint for Echo {
    fn subscribe(&mut self, topic: &str) -> Option<Frame> {
        Some(Frame::text(topic))
    }

    fn precheck(&self) -> Option<Precheck> {
        Some(Arc::new(|_| true))
    }

    fn parse_reply(&mut self, msg: Data<'_>) -> Option<Reply> {
        let id = u64::from_le_bytes(msg.as_bytes().get(..8)?.try_into().ok()?);
        Some(Reply::Response {
            id,
            response: Response::Ok {
                retry_after: None,
                hint: None,
            },
        })
    }
}

/// One request/response round trip through syncws: `send_and_confirm`, matched by id in the
/// coordinator.
fn syncws_round_trip(client: &Client<()>, id: u64, request: &[u8]) {
    let request = Request::new(id, id, Frame::binary(request.to_vec())).timeout(WAIT);
    let outcome = client.send_and_confirm(request);
    assert!(
        matches!(outcome, Outcome::Confirmed { .. }),
        "syncws round trip {id}: {outcome:?}"
    );
}

fn syncws_rtt(t: &Target, plan: &RttPlan, dispatch: Dispatch) -> Vec<u64> {
    // The responses are consumed by the coordinator; the ingress drops the copies.
    let client = syncws_builder(t)
        .dispatch(dispatch)
        .endpoint(Echo)
        .connect_with(|_: Data<'_>| Verdict::<()>::Ignore)
        .expect("syncws connect");
    let samples = plan.run(|id, req| syncws_round_trip(&client, id, req));
    client.shutdown(Duration::from_secs(1));
    samples
}

// ---------------------------------------------------------------------------------------------
// raw: blocking tungstenite on one thread

/// The raw client's stream: plain TCP or rustls over TCP.
enum RawStream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Read for RawStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            RawStream::Plain(s) => s.read(buf),
            RawStream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for RawStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            RawStream::Plain(s) => s.write(buf),
            RawStream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            RawStream::Plain(s) => s.flush(),
            RawStream::Tls(s) => s.flush(),
        }
    }
}

type RawWs = tungstenite::WebSocket<RawStream>;

fn raw_connect(t: &Target) -> RawWs {
    let addr = t
        .url
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .expect("host:port in URL");
    let sock = TcpStream::connect(addr).expect("raw connect");
    sock.set_nodelay(true).unwrap();
    let stream = match &t.pki {
        None => RawStream::Plain(sock),
        Some(pki) => {
            let name = ServerName::try_from("127.0.0.1").unwrap();
            let conn = ClientConnection::new(pki.client.clone(), name).unwrap();
            RawStream::Tls(Box::new(StreamOwned::new(conn, sock)))
        }
    };
    let (ws, _) = tungstenite::client(t.url.as_str(), stream).expect("raw handshake");
    ws
}

fn raw_inbound(t: &Target, count: &AtomicU64, stop: &AtomicBool) {
    let mut ws = raw_connect(t);
    while !stop.load(Relaxed) {
        match ws.read() {
            Ok(msg @ (Message::Binary(_) | Message::Text(_))) => {
                black_box(msg);
                count.fetch_add(1, Relaxed);
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
}

fn raw_outbound(t: &Target, size: usize, batched: bool, stop: &AtomicBool) {
    let mut ws = raw_connect(t);
    let payload = crate::servers::payload(size);
    while !stop.load(Relaxed) {
        let msg = Message::binary(payload.to_vec());
        // `send` = write + flush: each message is on the wire when it returns. `write` only
        // queues it; tungstenite writes its buffer out once it exceeds `write_buffer_size`.
        let sent = if batched { ws.write(msg) } else { ws.send(msg) };
        if sent.is_err() {
            break;
        }
    }
    let _ = ws.flush();
}

fn raw_rtt(t: &Target, plan: &RttPlan) -> Vec<u64> {
    let mut ws = raw_connect(t);
    plan.run(|_, req| {
        ws.send(Message::binary(req.to_vec())).expect("raw send");
        loop {
            match ws.read().expect("raw read") {
                Message::Binary(b) => {
                    debug_assert_eq!(b.len(), req.len());
                    return;
                }
                _ => continue,
            }
        }
    })
}

// ---------------------------------------------------------------------------------------------
// tokio-tungstenite on a current-thread runtime

type TokioWs =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn tokio_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("tokio runtime")
}

async fn tokio_connect(t: &Target) -> TokioWs {
    let connector = match &t.pki {
        None => tokio_tungstenite::Connector::Plain,
        Some(pki) => tokio_tungstenite::Connector::Rustls(pki.client.clone()),
    };
    let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(
        t.url.as_str(),
        None,
        true,
        Some(connector),
    )
    .await
    .expect("tokio connect");
    ws
}

fn tokio_inbound(t: &Target, count: &AtomicU64, stop: &AtomicBool) {
    tokio_runtime().block_on(async {
        let mut ws = tokio_connect(t).await;
        while !stop.load(Relaxed) {
            match ws.next().await {
                Some(Ok(msg @ (Message::Binary(_) | Message::Text(_)))) => {
                    black_box(msg);
                    count.fetch_add(1, Relaxed);
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            }
        }
    });
}

fn tokio_outbound(t: &Target, size: usize, stop: &AtomicBool) {
    tokio_runtime().block_on(async {
        let mut ws = tokio_connect(t).await;
        let payload = crate::servers::payload(size);
        while !stop.load(Relaxed) {
            // `SinkExt::send` = feed + flush, like the raw client's `send`.
            if ws.send(Message::binary(payload.to_vec())).await.is_err() {
                break;
            }
        }
    });
}

fn tokio_rtt(t: &Target, plan: &RttPlan) -> Vec<u64> {
    tokio_runtime().block_on(async {
        let mut ws = tokio_connect(t).await;
        let mut samples = Vec::with_capacity(plan.samples);
        for i in 0..plan.warmup + plan.samples {
            let req = plan.request(i as u64);
            let t0 = Instant::now();
            ws.send(Message::binary(req.clone()))
                .await
                .expect("tokio send");
            loop {
                match ws.next().await {
                    Some(Ok(Message::Binary(b))) => {
                        debug_assert_eq!(b.len(), req.len());
                        break;
                    }
                    Some(Ok(_)) => continue,
                    other => panic!("no tokio response: {other:?}"),
                }
            }
            if i >= plan.warmup {
                samples.push(t0.elapsed().as_nanos() as u64);
            }
        }
        samples
    })
}

// ---------------------------------------------------------------------------------------------
// Entry points used by the bench driver

/// Starts an inbound client on its own thread: it bumps `count` once per message delivered to
/// application code, until `stop` or the end of the connection.
pub fn spawn_inbound(
    who: Who,
    t: Target,
    count: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    thread::Builder::new()
        .name(format!("in-{}", who.name()))
        .spawn(move || match who {
            Who::Syncws | Who::SyncwsChannel | Who::SyncwsFrame => {
                syncws_inbound(who, &t, &count, &stop)
            }
            Who::Raw => raw_inbound(&t, &count, &stop),
            Who::Tokio => tokio_inbound(&t, &count, &stop),
            Who::RawBatched => unreachable!("outbound only"),
            Who::SyncwsInline => unreachable!("round trip only"),
        })
        .unwrap()
}

/// Starts an outbound client on its own thread, sending `size`-byte binary messages as fast as
/// it can until `stop`.
pub fn spawn_outbound(who: Who, t: Target, size: usize, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    thread::Builder::new()
        .name(format!("out-{}", who.name()))
        .spawn(move || match who {
            Who::Syncws => syncws_outbound(&t, size, &stop),
            Who::Raw => raw_outbound(&t, size, false, &stop),
            Who::RawBatched => raw_outbound(&t, size, true, &stop),
            Who::Tokio => tokio_outbound(&t, size, &stop),
            _ => unreachable!(),
        })
        .unwrap()
}

/// A round-trip run: `warmup` unmeasured round trips, then `samples` measured ones, each with a
/// `size`-byte request that starts with its sequence number.
pub struct RttPlan {
    pub warmup: usize,
    pub samples: usize,
    pub size: usize,
}

impl RttPlan {
    fn request(&self, id: u64) -> Vec<u8> {
        let mut req = crate::servers::payload(self.size.max(8));
        req[..8].copy_from_slice(&id.to_le_bytes());
        req
    }

    /// Runs `round_trip(id, request)` for every request; returns the measured durations (ns).
    fn run(&self, mut round_trip: impl FnMut(u64, &[u8])) -> Vec<u64> {
        let mut samples = Vec::with_capacity(self.samples);
        let mut req = self.request(0);
        for i in 0..(self.warmup + self.samples) as u64 {
            req[..8].copy_from_slice(&i.to_le_bytes());
            let t0 = Instant::now();
            round_trip(i, &req);
            if i as usize >= self.warmup {
                samples.push(t0.elapsed().as_nanos() as u64);
            }
        }
        samples
    }
}

/// Runs a round-trip client on the calling thread.
pub fn rtt(who: Who, t: &Target, plan: &RttPlan) -> Vec<u64> {
    match who {
        Who::Syncws => syncws_rtt(t, plan, Dispatch::Actor),
        Who::SyncwsInline => syncws_rtt(t, plan, Dispatch::Inline),
        Who::Raw => raw_rtt(t, plan),
        Who::Tokio => tokio_rtt(t, plan),
        _ => unreachable!(),
    }
}
