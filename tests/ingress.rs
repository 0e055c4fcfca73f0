//! Ingress on the reader thread: decode, ignore or forward each message; state kept across
//! messages; values delivered straight to the event channel; overflow policies counted.

mod support;

use std::io::Write;
use std::sync::mpsc;
use std::time::Duration;

use support::{TestServer, frame, next_event, raw_accept, read_client_frame};
use syncws::{Client, Data, Event, Frame, Ingress, Overflow, Verdict};

const WAIT: Duration = Duration::from_secs(10);

/// Parses `px=<int>` quotes into numbers, drops heartbeats, forwards the rest; numbers each
/// emitted value with a running sequence to prove state persists across messages.
struct Quotes {
    seq: u64,
    thread: Option<String>,
}

impl Ingress for Quotes {
    type Output = (u64, i64, String);

    fn on_message(&mut self, msg: Data<'_>) -> Verdict<Self::Output> {
        let thread = self
            .thread
            .get_or_insert_with(|| std::thread::current().name().unwrap_or("?").to_string());
        match msg {
            Data::Text("heartbeat") => Verdict::Ignore,
            Data::Text(t) => match t.strip_prefix("px=").and_then(|v| v.parse().ok()) {
                Some(px) => {
                    self.seq += 1;
                    Verdict::Emit((self.seq, px, thread.clone()))
                }
                None => Verdict::Forward,
            },
            Data::Binary(_) => Verdict::Forward,
        }
    }
}

#[test]
fn ingress_decodes_ignores_and_forwards_on_the_reader_thread() {
    let server = TestServer::start(None, 1, |_, mut conn| {
        let mut wire = Vec::new();
        for m in [
            "px=100",
            "heartbeat",
            "px=-5",
            "hello",
            "heartbeat",
            "px=42",
        ] {
            wire.extend(frame(0x81, m.as_bytes()));
        }
        wire.extend(frame(0x82, &[1, 2]));
        raw_accept(&mut conn, &wire);
        let _ = read_client_frame(&mut conn);
    });
    let client = Client::builder(&server.url("/"))
        .name("ing")
        .connect_with(Quotes {
            seq: 0,
            thread: None,
        })
        .unwrap();
    let mut got = Vec::new();
    while got.len() < 5 {
        got.push(next_event(&client, WAIT, |e| match e {
            Event::Data { value, .. } => Some(format!("{value:?}")),
            Event::Frame { frame, .. } => Some(format!("{frame:?}")),
            _ => None,
        }));
    }
    assert_eq!(
        got,
        [
            "(1, 100, \"ing-reader\")",
            "(2, -5, \"ing-reader\")",
            "Text(\"hello\")",
            "(3, 42, \"ing-reader\")",
            "Binary(b\"\\x01\\x02\")",
        ]
    );
    // Ignored heartbeats are still received data.
    assert_eq!(client.stats().messages_in, 7);
    client.shutdown(Duration::from_secs(2));
    server.join();
}

#[test]
fn closures_are_ingresses() {
    let server = TestServer::start(None, 1, |_, mut conn| {
        raw_accept(&mut conn, &frame(0x82, &[1, 2, 3, 4]));
        let _ = read_client_frame(&mut conn);
    });
    let client = Client::builder(&server.url("/"))
        .connect_with(|msg: Data<'_>| {
            Verdict::Emit(msg.as_bytes().iter().map(|&b| b as u32).sum::<u32>())
        })
        .unwrap();
    let sum = next_event(&client, WAIT, |e| match e {
        Event::Data { value, epoch } => Some((value, epoch)),
        _ => None,
    });
    assert_eq!(sum, (10, 1));
    client.shutdown(Duration::from_secs(2));
    server.join();
}

fn flood(policy: Overflow) -> syncws::Stats {
    let (sent_tx, sent_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let server = TestServer::start(None, 1, move |_, mut conn| {
        raw_accept(&mut conn, &[]);
        go_rx.recv().unwrap();
        let mut wire = Vec::new();
        for i in 0..100u32 {
            wire.extend(frame(0x82, &i.to_be_bytes()));
        }
        conn.write_all(&wire).unwrap();
        conn.flush().unwrap();
        sent_tx.send(()).unwrap();
        let _ = read_client_frame(&mut conn);
    });
    let client = Client::builder(&server.url("/"))
        .event_queue(10)
        .overflow(policy)
        .connect()
        .unwrap();
    // Take the lifecycle events out first so the channel's 10 slots are all for data.
    assert!(matches!(
        client.events().try_recv(),
        Ok(Event::Connected {
            epoch: 1,
            is_reconnect: false
        })
    ));
    assert!(matches!(
        client.events().try_recv(),
        Ok(Event::SessionReady { epoch: 1 })
    ));
    go_tx.send(()).unwrap();
    sent_rx.recv_timeout(WAIT).unwrap();
    // Wait until the reader has processed all 100 messages (or is blocked on a full channel).
    let stats = support::wait_until("reader to settle", WAIT, || {
        let s = client.stats();
        match policy {
            Overflow::DropNewest => (s.messages_in == 100).then_some(s),
            _ => (s.events_blocked >= 1 && client.events().is_full()).then_some(s),
        }
    });
    // Everything queued is in order and intact.
    let mut prev = None;
    while let Ok(Event::Frame {
        frame: Frame::Binary(b),
        ..
    }) = client.events().try_recv()
    {
        let n = u32::from_be_bytes(b[..].try_into().unwrap());
        assert!(prev.is_none_or(|p| n > p));
        prev = Some(n);
        if policy == Overflow::Block && n == 99 {
            break;
        }
    }
    if policy == Overflow::Block {
        // Blocking loses nothing: keep draining and every message arrives.
        let mut last = prev.unwrap();
        while last < 99 {
            last = next_event(&client, WAIT, |e| match e {
                Event::Frame {
                    frame: Frame::Binary(b),
                    ..
                } => Some(u32::from_be_bytes(b[..].try_into().unwrap())),
                _ => None,
            });
        }
    }
    client.shutdown(Duration::from_secs(2));
    server.join();
    stats
}

#[test]
fn drop_newest_counts_what_it_drops() {
    let s = flood(Overflow::DropNewest);
    assert_eq!(
        s.events_dropped, 90,
        "10 fit in the channel, 90 dropped: {s:?}"
    );
}

#[test]
fn block_waits_and_loses_nothing() {
    let s = flood(Overflow::Block);
    assert!(s.events_blocked >= 1);
    assert_eq!(s.events_dropped, 0);
}
