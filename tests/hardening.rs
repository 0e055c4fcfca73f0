//! Regression tests for hardening findings, end to end over loopback sockets.
//!
//! Each test is named after its finding.

mod support;

use std::io::Write;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::{TestServer, next_event, raw_accept, read_client_frame, read_request};
use syncws::{
    Backoff, Cause, Client, CloseCode, Config, Error, Event, Frame, Keepalive, LatencyPolicy,
    MAX_RETRY_AFTER,
};

const WAIT: Duration = Duration::from_secs(10);

fn thread_alive(name: &str) -> bool {
    support::thread_names().iter().any(|n| n == name)
}

// -- Finding 1: a server header panics the coordinator ------------------------------------------

#[test]
fn retry_after_overflow_does_not_panic_the_coordinator() {
    let raw = u64::MAX.to_string();
    let header = raw.clone();
    let server = TestServer::start(None, 2, move |i, mut conn| {
        if i == 0 {
            raw_accept(&mut conn, &[]); // ...and drop the connection at once.
            return;
        }
        read_request(&mut conn);
        let resp = format!(
            "HTTP/1.1 503 Service Unavailable\r\nRetry-After: {header}\r\nContent-Length: 0\r\n\r\n"
        );
        conn.write_all(resp.as_bytes()).unwrap();
    });
    let client = Client::builder(&server.url("/"))
        .name("hard-ra")
        .reconnect(Backoff::new(
            Duration::from_millis(1),
            Duration::from_millis(5),
        ))
        .connect()
        .unwrap();
    let (cause, reconnect) = next_event(&client, WAIT, |e| match e {
        Event::ConnectFailed {
            attempt: 2,
            cause,
            reconnect,
        } => Some((cause, reconnect)),
        _ => None,
    });
    match *cause {
        Cause::ConnectFailed(Error::HandshakeRejected {
            status: 503,
            retry_after,
            ref retry_after_clamped_from,
            ..
        }) => {
            assert_eq!(retry_after, Some(MAX_RETRY_AFTER));
            assert_eq!(retry_after_clamped_from.as_deref(), Some(raw.as_str()));
        }
        ref other => panic!("unexpected cause {other:?}"),
    }
    // The clamped value is a floor on the backoff: the next attempt is an hour away.
    assert_eq!(reconnect, Some(MAX_RETRY_AFTER));
    // The coordinator lives on and still answers.
    assert!(
        thread_alive("hard-ra-coord"),
        "{:?}",
        support::thread_names()
    );
    let stats = client.stats();
    assert_eq!(stats.connect_attempts, 2);
    assert!(
        stats.recent_errors.iter().any(|e| e.contains("503")),
        "{stats:?}"
    );
    assert!(!client.is_open());
    let started = Instant::now();
    client.shutdown(Duration::from_secs(2));
    assert!(started.elapsed() < Duration::from_secs(2));
    support::wait_until("the coordinator to exit", WAIT, || {
        (!thread_alive("hard-ra-coord")).then_some(())
    });
    server.join();
}

#[test]
fn duration_max_timeouts_connect_and_shut_down_without_panic() {
    let server = TestServer::start(None, 1, |_, conn| {
        let mut ws = support::accept_ws(conn);
        let msg = ws.read().unwrap();
        ws.send(msg).unwrap();
        ws.close(Some(tungstenite::protocol::CloseFrame {
            code: tungstenite::protocol::frame::coding::CloseCode::Away,
            reason: "".into(),
        }))
        .unwrap();
        while ws.read().is_ok() {}
    });
    let max = Duration::MAX;
    let mut config = Config::default();
    config.name = "hard-max".into();
    config.connect_timeout = max;
    config.handshake_timeout = max;
    config.close_timeout = max;
    config.keepalive = Keepalive::Ping {
        interval: max,
        timeout: max,
    };
    config.stale_after = Some(max);
    config.ack_timeout = max;
    config.stable_after = max;
    config.latency_policy = Some(LatencyPolicy {
        percentile: 0.99,
        threshold: max,
        window: 8,
        consecutive: u32::MAX,
    });
    let client = Client::builder(&server.url("/"))
        .config(config)
        .reconnect(Backoff::new(max, max))
        .connect()
        .unwrap();
    client.send(Frame::text("hello")).unwrap();
    let echoed = next_event(&client, WAIT, |e| match e {
        Event::Frame { frame, .. } => Some(frame),
        _ => None,
    });
    assert_eq!(echoed, Frame::text("hello"));
    // The server goes away; the next attempt is (practically) never.
    let (code, reconnect) = next_event(&client, WAIT, |e| match e {
        Event::Closed {
            info, reconnect, ..
        } => Some((info.code, reconnect)),
        _ => None,
    });
    assert_eq!(code, CloseCode::GOING_AWAY);
    assert!(reconnect.is_some());
    assert!(thread_alive("hard-max-coord"));
    let _ = client.stats();
    let started = Instant::now();
    client.shutdown(Duration::from_secs(2));
    assert!(started.elapsed() < Duration::from_secs(2));
    server.join();
}

// -- Finding 3: max_message_size is not applied to a single frame --------------------------------

#[test]
fn max_message_size_applies_to_a_single_frame() {
    let (tx, close_frame) = mpsc::channel();
    let server = TestServer::start(None, 1, move |_, mut conn| {
        raw_accept(&mut conn, &[]);
        // Only the header of a 5,000-byte text frame: the client must refuse it from that.
        let header = &support::frame(0x81, &[b'a'; 5000])[..4];
        conn.write_all(header).unwrap();
        conn.flush().unwrap();
        conn.tcp().set_read_timeout(Some(WAIT)).unwrap();
        tx.send(read_client_frame(&mut conn).map_err(|e| e.kind()))
            .unwrap();
        // The rest of the payload, which must not be delivered.
        let _ = conn.write_all(&[b'a'; 5000]);
    });
    let client = Client::builder(&server.url("/"))
        .max_message_size(1000)
        .connect()
        .unwrap();
    let (b0, payload) = close_frame.recv_timeout(WAIT).unwrap().unwrap();
    assert_eq!(b0, 0x88, "a close frame");
    assert_eq!(&payload[..2], &1009u16.to_be_bytes(), "close code 1009");
    let mut frames = 0;
    let info = next_event(&client, WAIT, |e| match e {
        Event::Frame { .. } => {
            frames += 1;
            None
        }
        Event::Closed { info, .. } => Some(info),
        _ => None,
    });
    assert_eq!(frames, 0, "no part of the oversized message is delivered");
    assert_eq!(info.code, CloseCode::TOO_BIG);
    assert!(
        matches!(
            info.cause,
            Cause::Protocol(Error::Protocol {
                code: CloseCode::TOO_BIG,
                ..
            })
        ),
        "{:?}",
        info.cause
    );
    client.shutdown(Duration::from_secs(2));
    server.join();
}
