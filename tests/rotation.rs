//! Make-before-break rotation (issue 14), end to end.
//!
//! A sequenced feed server of its own (each connection: `auth secret` → `authok`, `sub feed` →
//! `ack:feed` and then every sequence number published from then on, `order N` → `ok N`),
//! which closes every connection with 1001 at a fixed lifetime, behind the fault-injecting
//! proxy of `support::proxy`. The client rotates well before that lifetime, so no connection
//! ever reaches it; meanwhile the proxy makes some replacements fail (accepted and dropped,
//! then refused), which must leave the current connection in place.
//!
//! Asserted across 20 rotations: no gap in the sequence (duplicates are allowed during the
//! overlap, and counted), data events carry the epoch of the connection in use and none of a
//! replaced connection follows its `Rotated`, no connection is lost (`Closed` never comes),
//! every failed replacement is reported and the client goes on, requests sent all along are
//! answered truthfully (confirmed ones reached the server, not-delivered ones never did), and
//! every thread is joined at the end.

mod support;

use std::collections::HashSet;
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use support::proxy::Proxy;
use support::{dispatch_under_test, thread_names};
use syncws::{
    Backoff, Client, Data, Endpoint, Event, Frame, Outcome, Precheck, Reply, Request, Response,
};
use tungstenite::Message;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;

/// Every connection is closed by the server (1001) at this age.
const LIFETIME: Duration = Duration::from_secs(3);
/// The client replaces its connection at this age, well before.
const ROTATE_AFTER: Duration = Duration::from_millis(250);
const ROTATIONS: usize = 20;

/// The feed server: one thread publishing sequence numbers, one per connection.
struct FeedServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// Request ids the server received, on any connection.
    orders: Arc<Mutex<HashSet<u64>>>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
    acceptor: Option<JoinHandle<()>>,
    publisher: Option<JoinHandle<()>>,
}

impl FeedServer {
    fn start() -> FeedServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let seq = Arc::new(AtomicU64::new(0));
        let orders = Arc::new(Mutex::new(HashSet::new()));
        let threads = Arc::new(Mutex::new(Vec::new()));
        let publisher = {
            let (stop, seq) = (stop.clone(), seq.clone());
            thread::Builder::new()
                .name("feed-pub".into())
                .spawn(move || {
                    // A steady feed: one number every 200 µs.
                    while !stop.load(Ordering::SeqCst) {
                        seq.fetch_add(1, Ordering::SeqCst);
                        thread::sleep(Duration::from_micros(200));
                    }
                })
                .unwrap()
        };
        let acceptor = {
            let (stop, orders, threads) = (stop.clone(), orders.clone(), threads.clone());
            thread::Builder::new()
                .name("feed-accept".into())
                .spawn(move || {
                    for (n, sock) in listener.incoming().enumerate() {
                        if stop.load(Ordering::SeqCst) {
                            return;
                        }
                        let Ok(sock) = sock else { continue };
                        let (stop, seq, orders) = (stop.clone(), seq.clone(), orders.clone());
                        let conn = thread::Builder::new()
                            .name(format!("feed-conn-{n}"))
                            .spawn(move || serve(sock, &stop, &seq, &orders))
                            .unwrap();
                        threads.lock().unwrap().push(conn);
                    }
                })
                .unwrap()
        };
        FeedServer {
            addr,
            stop,
            orders,
            threads,
            acceptor: Some(acceptor),
            publisher: Some(publisher),
        }
    }

    /// Stops everything and joins every thread; returns the request ids the server received.
    fn finish(mut self) -> HashSet<u64> {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // Wakes the acceptor.
        self.acceptor.take().unwrap().join().unwrap();
        self.publisher.take().unwrap().join().unwrap();
        for t in self.threads.lock().unwrap().drain(..) {
            t.join().unwrap();
        }
        std::mem::take(&mut *self.orders.lock().unwrap())
    }
}

/// One connection: handshake, then reads (with a short timeout) and writes every published
/// number since the subscription, until the peer closes, the lifetime ends or the server stops.
fn serve(sock: TcpStream, stop: &AtomicBool, seq: &AtomicU64, orders: &Mutex<HashSet<u64>>) {
    let born = Instant::now();
    sock.set_nodelay(true).unwrap();
    let Ok(mut ws) = tungstenite::accept(sock) else {
        return; // The proxy dropped it, or the test ended.
    };
    ws.get_ref()
        .set_read_timeout(Some(Duration::from_millis(1)))
        .unwrap();
    let mut authed = false;
    let mut sent: Option<u64> = None;
    let mut closing = false;
    loop {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        match ws.read() {
            Ok(Message::Text(t)) => {
                let t = t.as_str();
                if t == "auth secret" {
                    authed = true;
                    ws.send(Message::text("authok")).unwrap_or(());
                } else if t == "sub feed" && authed {
                    let now = seq.load(Ordering::SeqCst);
                    sent = Some(now);
                    ws.send(Message::text("ack:feed")).unwrap_or(());
                } else if let Some(id) = t.strip_prefix("order ") {
                    let id: u64 = id.parse().unwrap();
                    orders.lock().unwrap().insert(id);
                    ws.send(Message::text(format!("ok {id}"))).unwrap_or(());
                }
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return, // Closed (the close reply is sent by tungstenite), or broken.
        }
        if closing {
            continue;
        }
        if born.elapsed() >= LIFETIME {
            closing = true;
            let frame = CloseFrame {
                code: WsCloseCode::Away,
                reason: "lifetime".into(),
            };
            let _ = ws.close(Some(frame));
            continue;
        }
        if let Some(from) = &mut sent {
            let now = seq.load(Ordering::SeqCst);
            while *from < now {
                *from += 1;
                if ws.write(Message::text(format!("seq {from}"))).is_err() {
                    return;
                }
            }
        }
        if ws.flush().is_err() {
            return;
        }
    }
}

/// The feed's protocol, as an endpoint: authentication-gated, acknowledged subscriptions,
/// `order N` requests answered by `ok N`.
struct Feed;

impl Endpoint for Feed {
    fn on_open(&mut self, _epoch: u64) -> Vec<Frame> {
        vec![Frame::text("auth secret")]
    }
    fn auth_gated(&self) -> bool {
        true
    }
    fn subscribe(&mut self, topic: &str) -> Option<Frame> {
        Some(Frame::text(format!("sub {topic}")))
    }
    fn precheck(&self) -> Option<Precheck> {
        Some(Arc::new(|d: Data<'_>| {
            let b = d.as_bytes();
            b.starts_with(b"authok") || b.starts_with(b"ack:") || b.starts_with(b"ok ")
        }))
    }
    fn parse_reply(&mut self, msg: Data<'_>) -> Option<Reply> {
        let Data::Text(t) = msg else { return None };
        if t == "authok" {
            return Some(Reply::AuthOk);
        }
        if let Some(topic) = t.strip_prefix("ack:") {
            return Some(Reply::Subscribed(topic.to_string()));
        }
        let id = t.strip_prefix("ok ")?.parse().ok()?;
        let response = Response::Ok {
            retry_after: None,
            hint: None,
        };
        Some(Reply::Response { id, response })
    }
}

#[test]
fn twenty_rotations_without_a_gap_through_faults() {
    let server = FeedServer::start();
    let proxy = Proxy::start(server.addr);
    let client = Arc::new(
        Client::builder(&proxy.url(false))
            .name("rot")
            .dispatch(dispatch_under_test())
            .endpoint(Feed)
            .subscribe("feed")
            .reconnect(Backoff::new(
                Duration::from_millis(50),
                Duration::from_millis(200),
            ))
            .rotate_after(ROTATE_AFTER)
            .connect()
            .expect("connect"),
    );

    // Requests all along, from their own thread.
    let stop = Arc::new(AtomicBool::new(false));
    let requester = {
        let (client, stop) = (client.clone(), stop.clone());
        thread::Builder::new()
            .name("rot-test-orders".into())
            .spawn(move || {
                let mut outcomes = Vec::new();
                let mut id = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    id += 1;
                    let request = Request::new(id, id, Frame::text(format!("order {id}")))
                        .timeout(Duration::from_secs(2));
                    outcomes.push((id, client.send_and_confirm(request)));
                }
                outcomes
            })
            .unwrap()
    };

    let mut epoch = 1;
    let mut last: Option<u64> = None;
    let (mut duplicates, mut received) = (0u64, 0u64);
    let (mut rotations, mut failures) = (0usize, 0usize);
    let mut fault = 0;
    let deadline = Instant::now() + Duration::from_secs(90);
    while rotations < ROTATIONS {
        let event = client
            .events()
            .recv_deadline(deadline)
            .unwrap_or_else(|e| panic!("after {rotations} rotations: no event: {e}"));
        match event {
            Event::Frame {
                epoch: e,
                frame: Frame::Text(t),
            } => {
                let Some(n) = t.strip_prefix("seq ") else {
                    continue; // Acknowledgements and answers also reach the application.
                };
                assert_eq!(e, epoch, "data of connection {e} while {epoch} is in use");
                let n: u64 = n.parse().unwrap();
                received += 1;
                match last {
                    Some(l) if n <= l => duplicates += 1,
                    Some(l) => {
                        assert_eq!(n, l + 1, "gap after {l} (rotation {rotations}, epoch {e})")
                    }
                    None => {}
                }
                last = Some(last.map_or(n, |l| l.max(n)));
            }
            Event::Rotated { from, to } => {
                assert_eq!(from, epoch, "the connection in use is the one replaced");
                assert!(to > from);
                epoch = to;
                rotations += 1;
                // Faults on the replacements of two rotations: the proxy first accepts and
                // drops new connections, then refuses them.
                if rotations == 5 && fault == 0 {
                    fault = 1;
                    proxy.drop_new(true);
                } else if rotations == 12 && fault == 2 {
                    fault = 3;
                    proxy.refuse(true);
                }
            }
            Event::RotationFailed { epoch: e, .. } => {
                assert!(e > epoch, "a failed replacement has its own epoch");
                failures += 1;
                match fault {
                    1 => {
                        fault = 2;
                        proxy.drop_new(false);
                    }
                    3 => {
                        fault = 4;
                        proxy.refuse(false);
                    }
                    _ => {}
                }
            }
            Event::Closed { epoch, info, .. } => {
                panic!("connection {epoch} was lost ({info:?}): a rotation should have replaced it")
            }
            _ => {}
        }
    }
    stop.store(true, Ordering::SeqCst);
    let outcomes = requester.join().unwrap();
    let stats = client.stats();
    Arc::into_inner(client)
        .expect("the requester is joined")
        .shutdown(Duration::from_secs(5));
    drop(proxy);
    let orders = server.finish();

    eprintln!(
        "{rotations} rotations, {failures} failed replacements, {received} feed messages \
         ({duplicates} duplicates during overlaps), {} requests",
        outcomes.len()
    );
    assert!(failures >= 2, "both faults made a replacement fail");
    assert_eq!(fault, 4, "both faults were seen and lifted");
    assert!(stats.rotations >= ROTATIONS as u64, "{stats:?}");
    assert!(stats.rotation_failures >= 2, "{stats:?}");
    assert_eq!(stats.reconnects, 0, "no connection was lost: {stats:?}");
    assert!(received > 1000, "the feed kept flowing: {received}");
    let mut confirmed = 0;
    for (id, outcome) in &outcomes {
        match outcome {
            Outcome::Confirmed { .. } => {
                confirmed += 1;
                assert!(
                    orders.contains(id),
                    "request {id} confirmed but never received"
                );
            }
            Outcome::NotDelivered(why) => {
                assert!(
                    !orders.contains(id),
                    "request {id} not delivered ({why:?}) but received"
                )
            }
            Outcome::Unconfirmed(_) => {}
            other => panic!("request {id}: {other:?}"),
        }
    }
    assert!(confirmed > 0, "requests went through");
    // Every thread is joined; a joined thread's task may stay listed in /proc for a moment.
    let left = || -> Vec<String> {
        thread_names()
            .into_iter()
            .filter(|n| n.starts_with("rot-") || n.starts_with("feed-") || n.starts_with("proxy-"))
            .collect()
    };
    support::wait_until("every thread gone", Duration::from_secs(2), || {
        left().is_empty().then_some(())
    });
}
