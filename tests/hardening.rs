//! Regression tests for hardening findings, end to end over loopback sockets: a server's header
//! cannot kill the coordinator, the opening timeout is a deadline, the message limit applies to
//! a single frame, and bad request headers are refused before any byte is written.
//!
//! Each test is named after its finding.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use rustls::ServerConnection;
use support::{Conn, Pki, TestServer, next_event, raw_accept, read_client_frame, read_request};
use syncws::{
    Backoff, Cause, Client, CloseCode, Config, ConfirmMode, Endpoint, Error, Event, Frame,
    Keepalive, LatencyPolicy, MAX_RETRY_AFTER, Outcome, Request,
};

const WAIT: Duration = Duration::from_secs(10);
/// The opening timeout of the trickle tests, and how much later than it they may fail.
const OPENING: Duration = Duration::from_secs(1);
const SLACK: Duration = Duration::from_millis(500);
/// How often a trickling server sends its next byte.
const DRIP: Duration = Duration::from_millis(250);

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
    // A request that waits "forever": its deadline saturates instead of panicking.
    let order = Request::new(1, 1, Frame::text("order")).timeout(max);
    let pending = client.submit(order.mode(ConfirmMode::Sent));
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
    let outcome = pending.wait();
    assert!(
        matches!(
            outcome,
            Outcome::Sent | Outcome::Unconfirmed(_) | Outcome::NotDelivered(_)
        ),
        "{outcome:?}"
    );
    let started = Instant::now();
    client.shutdown(max);
    assert!(started.elapsed() < Duration::from_secs(2));
    server.join();
}

// -- Finding 2: the connect timeout is not a deadline -------------------------------------------

/// Sends `bytes` one at a time, `DRIP` apart, until they run out, a write fails or `stop`
/// fires. A bounded number are sent so that, without the fix, the test fails in seconds.
fn trickle(conn: &mut impl Write, bytes: &[u8], stop: &mpsc::Receiver<()>) {
    for b in bytes.iter().take(16) {
        if conn.write_all(&[*b]).and_then(|()| conn.flush()).is_err() {
            return;
        }
        if !matches!(
            stop.recv_timeout(DRIP),
            Err(mpsc::RecvTimeoutError::Timeout)
        ) {
            return;
        }
    }
    let _ = stop.recv_timeout(WAIT); // Hold the connection open, silent.
}

fn assert_opening_times_out(result: Result<Client<std::convert::Infallible>, Error>, t: Instant) {
    let took = t.elapsed();
    assert!(
        matches!(result, Err(Error::Timeout("handshake"))),
        "{:?}",
        result.map(|_| ())
    );
    assert!(took < OPENING + SLACK, "took {took:?}");
}

#[test]
fn connect_timeout_is_a_deadline_against_a_trickled_upgrade_response() {
    let (stop_tx, stop) = mpsc::channel();
    let server = TestServer::start(None, 1, move |_, mut conn| {
        let req = read_request(&mut conn);
        trickle(&mut conn, &support::response_101(&req), &stop);
    });
    let started = Instant::now();
    let result = Client::builder(&server.url("/"))
        .connect_timeout(OPENING)
        .handshake_timeout(OPENING)
        .connect();
    assert_opening_times_out(result, started);
    drop(stop_tx);
    server.join();
}

#[test]
fn connect_timeout_is_a_deadline_against_a_trickled_upgrade_response_over_tls() {
    let pki = Pki::new("trickle CA");
    let (stop_tx, stop) = mpsc::channel();
    let server = TestServer::start(
        Some(pki.server_config(&["localhost"])),
        1,
        move |_, mut conn| {
            let req = read_request(&mut conn); // Completes the TLS handshake at full speed.
            trickle(&mut conn, &support::response_101(&req), &stop);
        },
    );
    let started = Instant::now();
    let result = Client::builder(&server.url("/"))
        .add_root_certificate(pki.ca_der())
        .connect_timeout(OPENING)
        .handshake_timeout(OPENING)
        .connect();
    assert_opening_times_out(result, started);
    drop(stop_tx);
    server.join();
}

#[test]
fn connect_timeout_is_a_deadline_against_a_trickled_tls_handshake() {
    let pki = Pki::new("trickle CA");
    let config = pki.server_config(&["localhost"]);
    let (stop_tx, stop) = mpsc::channel();
    let server = TestServer::start(None, 1, move |_, conn| {
        let Conn::Plain(mut sock) = conn else {
            unreachable!()
        };
        // Read the ClientHello, then trickle the server's whole first flight.
        let mut tls = ServerConnection::new(config.clone()).unwrap();
        while !tls.wants_write() {
            if tls.read_tls(&mut sock).unwrap_or(0) == 0 {
                return;
            }
            tls.process_new_packets().unwrap();
        }
        let mut flight = Vec::new();
        while tls.wants_write() {
            tls.write_tls(&mut flight).unwrap();
        }
        trickle(&mut sock, &flight, &stop);
    });
    let started = Instant::now();
    let result = Client::builder(&server.url("/").replace("ws://127.0.0.1", "wss://localhost"))
        .add_root_certificate(pki.ca_der())
        .connect_timeout(OPENING)
        .handshake_timeout(OPENING)
        .connect();
    assert_opening_times_out(result, started);
    drop(stop_tx);
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

// -- Finding 4: header values are not validated ---------------------------------------------------

/// Every connection made to `listener` so far, with every byte each one sent (the listener is
/// never accepted from otherwise, so a connection attempt would sit in its backlog).
fn recorded(listener: &TcpListener) -> Vec<Vec<u8>> {
    listener.set_nonblocking(true).unwrap();
    let mut conns = Vec::new();
    loop {
        match listener.accept() {
            Ok((mut sock, _)) => {
                sock.set_nonblocking(false).unwrap();
                sock.set_read_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
                let mut bytes = Vec::new();
                let _ = sock.read_to_end(&mut bytes);
                conns.push(bytes);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return conns,
            Err(e) => panic!("accept: {e}"),
        }
    }
}

#[test]
fn header_values_are_validated_in_the_builder() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    let bad: &[(&str, &str)] = &[
        ("X-Token", "t\r\nX-Evil: 1"),
        ("X-Token", "t\nX-Evil: 1"),
        ("X-Token", "t\rX-Evil: 1"),
        ("X-Token", "t\0"),
        ("X-Token", "t\x01"),
        ("X-Token", "t\x7f"),
        ("X-Evil: 1\r\nX-Token", "t"),
        ("X Token", "t"),
        ("", "t"),
    ];
    for (name, value) in bad {
        let result = Client::builder(&url)
            .header("Authorization", "Bearer fine")
            .header(*name, *value)
            .handshake_timeout(Duration::from_secs(1))
            .connect();
        match result {
            Err(Error::InvalidHeader { name: got, reason }) => {
                assert_eq!(got, *name);
                assert!(!reason.is_empty());
            }
            other => panic!("{name:?}: {value:?} gave {:?}", other.map(|_| ())),
        }
    }
    let result = Client::builder(&url)
        .subprotocol("v1\r\nX-Evil: 1")
        .connect();
    assert!(
        matches!(result, Err(Error::InvalidHeader { .. })),
        "{:?}",
        result.map(|_| ())
    );
    assert_eq!(
        recorded(&listener),
        Vec::<Vec<u8>>::new(),
        "nothing reached the server"
    );
}

/// Good headers on the first attempt, a smuggled header on every later one.
struct SmugglingEndpoint;

impl Endpoint for SmugglingEndpoint {
    fn headers(&mut self, attempt: u32) -> Vec<(String, String)> {
        let value = match attempt {
            1 => "t1".to_string(),
            n => format!("t{n}\r\nX-Evil: 1"),
        };
        vec![("X-Token".into(), value)]
    }
    fn subscribe(&mut self, topic: &str) -> Option<Frame> {
        Some(Frame::text(topic))
    }
}

#[test]
fn header_values_are_validated_in_endpoint_headers() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    // The first connection is served (101, then dropped) and recorded; later ones are not
    // accepted here, so `recorded` finds them in the backlog.
    let first = listener.try_clone().unwrap();
    let server = thread::spawn(move || {
        let (sock, _) = first.accept().unwrap();
        let mut conn = Conn::Plain(sock);
        raw_accept(&mut conn, &[])
    });
    let client = Client::builder(&url)
        .endpoint(SmugglingEndpoint)
        .reconnect(Backoff::new(
            Duration::from_millis(1),
            Duration::from_millis(5),
        ))
        .handshake_timeout(Duration::from_secs(1))
        .connect()
        .unwrap();
    let first_request = server.join().unwrap();
    assert!(
        first_request.contains("\r\nX-Token: t1\r\n"),
        "{first_request}"
    );
    let (cause, reconnect) = next_event(&client, WAIT, |e| match e {
        Event::ConnectFailed {
            attempt: 2,
            cause,
            reconnect,
        } => Some((cause, reconnect)),
        _ => None,
    });
    match &*cause {
        Cause::ConnectFailed(Error::InvalidHeader { name, .. }) => assert_eq!(name, "X-Token"),
        other => panic!("unexpected cause {other:?}"),
    }
    assert_eq!(reconnect, None, "a bad header is not retried");
    assert_eq!(
        recorded(&listener),
        Vec::<Vec<u8>>::new(),
        "nothing reached the server"
    );
    client.shutdown(Duration::from_secs(2));
}
