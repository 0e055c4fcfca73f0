//! Finding 6: frames submitted by one thread leave in call order across `send`, `send_prepared`
//! and `send_and_confirm`; only control frames may go first. The peer records the order by
//! echoing every message back: the client's events show the order the server read them in.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use support::{TestServer, accept_ws};
use syncws::{
    Client, Data, Dispatch, Endpoint, Event, Frame, Outcome, Precheck, PreparedFrame, Reply,
    Request, Response, Undelivered,
};
use tungstenite::Message;

const THREADS: u64 = 3;
const ROUNDS: u64 = 300;

/// Orders are texts `order T I`; their echo is the response (id `T * 1_000_000 + I`).
struct Echoes;

impl Endpoint for Echoes {
    fn subscribe(&mut self, topic: &str) -> Option<Frame> {
        Some(Frame::text(topic))
    }
    fn precheck(&self) -> Option<Precheck> {
        Some(Arc::new(|d: Data<'_>| d.as_bytes().starts_with(b"order ")))
    }
    fn parse_reply(&mut self, msg: Data<'_>) -> Option<Reply> {
        let Data::Text(t) = msg else { return None };
        let mut parts = t.strip_prefix("order ")?.split(' ');
        let thread: u64 = parts.next()?.parse().ok()?;
        let round: u64 = parts.next()?.parse().ok()?;
        let response = Response::Ok {
            retry_after: None,
            hint: None,
        };
        Some(Reply::Response {
            id: thread * 1_000_000 + round,
            response,
        })
    }
}

fn echo_server() -> TestServer {
    TestServer::start(None, 1, |_, conn| {
        let mut ws = accept_ws(conn);
        while let Ok(m) = ws.read() {
            if let Message::Text(_) | Message::Binary(_) = m
                && ws.send(m).is_err()
            {
                return;
            }
        }
    })
}

#[test]
fn requests_never_overtake_earlier_sends_under_load() {
    for dispatch in [Dispatch::Actor, Dispatch::Inline] {
        let server = echo_server();
        let client = Arc::new(
            Client::builder(&server.url("/"))
                .dispatch(dispatch)
                .endpoint(Echoes)
                .connect()
                .unwrap(),
        );
        // Each thread: cancel, order (confirmed), a prepared "after" frame, round after round.
        let senders: Vec<_> = (0..THREADS)
            .map(|t| {
                let client = client.clone();
                thread::spawn(move || {
                    for i in 0..ROUNDS {
                        client.send(Frame::text(format!("cancel {t} {i}"))).unwrap();
                        // The flood may fill the data lane: a request then comes back
                        // `NotDelivered(QueueFull)` at once (its bytes never left), and the
                        // caller retries it, as the API documents. The order stays the same.
                        let outcome = loop {
                            let order = Request::new(
                                t * 1_000_000 + i,
                                i,
                                Frame::text(format!("order {t} {i}")),
                            )
                            .timeout(Duration::from_secs(20));
                            match client.send_and_confirm(order) {
                                // A retry pause (the writer drains the lane meanwhile), not
                                // a stand-in for synchronisation: the loop's exit is the
                                // outcome itself.
                                Outcome::NotDelivered(Undelivered::QueueFull) => {
                                    thread::sleep(Duration::from_millis(1));
                                }
                                outcome => break outcome,
                            }
                        };
                        assert!(
                            matches!(outcome, Outcome::Confirmed { .. }),
                            "{dispatch:?} order {t} {i}: {outcome:?}"
                        );
                        let after = PreparedFrame::text(format!("after {t} {i}"));
                        client.send_prepared(&after).unwrap();
                    }
                })
            })
            .collect();
        // Load: a thread that floods plain frames meanwhile, large enough (2 KiB) to fill the
        // outbox, so that its frames go by the outbox and by the data lane in turn.
        let flood = {
            let client = client.clone();
            thread::spawn(move || {
                let padding = "x".repeat(2048);
                for i in 0..ROUNDS * 10 {
                    client
                        .send(Frame::text(format!("noise {i} {padding}")))
                        .unwrap();
                }
            })
        };
        let mut next_noise = 0;
        // Read the echoes: per thread, the sequence must be cancel, order, after, round by round.
        let mut next: HashMap<u64, (u64, &str)> =
            (0..THREADS).map(|t| (t, (0, "cancel"))).collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut done = 0;
        while done < THREADS {
            let event = client
                .events()
                .recv_deadline(deadline)
                .expect("every echo arrives");
            let Event::Frame {
                frame: Frame::Text(text),
                ..
            } = event
            else {
                continue;
            };
            let mut parts = text.split(' ');
            let kind = parts.next().unwrap();
            if kind == "noise" {
                let i: u64 = parts.next().unwrap().parse().unwrap();
                assert_eq!(
                    i, next_noise,
                    "{dispatch:?}: flood frames left out of order"
                );
                next_noise += 1;
                continue;
            }
            let t: u64 = parts.next().unwrap().parse().unwrap();
            let i: u64 = parts.next().unwrap().parse().unwrap();
            let expected = next[&t];
            assert_eq!(
                (i, kind),
                expected,
                "{dispatch:?}: thread {t}'s frames left out of call order"
            );
            let following = match kind {
                "cancel" => (i, "order"),
                "order" => (i, "after"),
                _ => (i + 1, "cancel"),
            };
            if following.0 == ROUNDS {
                done += 1;
            }
            next.insert(t, following);
        }
        for s in senders {
            s.join().unwrap();
        }
        flood.join().unwrap();
        match Arc::try_unwrap(client) {
            Ok(client) => client.shutdown(Duration::from_secs(2)),
            Err(_) => panic!("client still shared"),
        }
        server.join();
    }
}

/// A request frame holds the frames sent after it until the coordinator has registered it, but
/// never past its deadline: here the coordinator thread is stuck delivering an event (the
/// application reads none and the channel is full), so the request is never registered. At its
/// deadline the writer drops it and sends what follows; the caller is answered
/// `NotDelivered(Deadline)`, which is true: not a byte of it left.
#[test]
fn a_stuck_coordinator_holds_later_sends_only_until_the_request_deadline() {
    let (seen_tx, seen) = crossbeam_channel::unbounded::<String>();
    let server = TestServer::start(None, 1, move |_, conn| {
        let mut ws = accept_ws(conn);
        // An answer nobody waits for: the coordinator must deliver it as an orphan event and
        // blocks on the full channel.
        ws.send(Message::text("tick")).unwrap();
        ws.send(Message::text("order 9 9")).unwrap();
        while let Ok(m) = ws.read() {
            if let Message::Text(t) = m {
                let _ = seen_tx.send(t.to_string());
            }
        }
    });
    let client = Client::builder(&server.url("/"))
        .dispatch(support::dispatch_under_test())
        .endpoint(Echoes)
        .event_queue(1)
        .overflow(syncws::Overflow::DropNewest)
        .connect()
        .unwrap();
    // Nobody reads the events: the channel holds the first one, the rest wait or are dropped.
    support::wait_until("the orphan answer", Duration::from_secs(10), || {
        (client.stats().messages_in >= 2).then_some(())
    });
    let t0 = Instant::now();
    let ticket = client.submit(
        Request::new(1_000_001, 1, Frame::text("order 1 1")).timeout(Duration::from_millis(300)),
    );
    client.send(Frame::text("after")).unwrap();
    let first = seen
        .recv_timeout(Duration::from_secs(10))
        .expect("the frame sent after the request arrives");
    assert_eq!(first, "after", "the unregistered request never went out");
    assert!(
        t0.elapsed() >= Duration::from_millis(300),
        "held until the request's deadline: {:?}",
        t0.elapsed()
    );
    assert_eq!(
        ticket.wait(),
        Outcome::NotDelivered(syncws::Undelivered::Deadline)
    );
    drop(client);
    server.join();
}
