//! The hub against real sockets: the syncws client, tungstenite and raw sockets for hostile
//! clients. Every wait is on a condition with a deadline.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, unbounded};
use support::{Pki, client_frame, read_head, wait_until};
use syncws::hub::{
    Admission, Conn, Disconnect, Handler, Hub, HubConfig, Message, Position, Publication,
    RateLimit, RatePolicy, Request, SlowPolicy,
};
use syncws::{CloseCode, Data, Initiator};

const WAIT: Duration = Duration::from_secs(10);

/// What a test handler saw.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Open(u64),
    Message(u64, String),
    Close(u64, Disconnect),
}

/// Echoes text, joins rooms on `join:ROOM`, publishes on `pub:ROOM:TEXT`; reports everything.
struct TestHandler {
    seen: Sender<Seen>,
    token: Option<&'static str>,
}

impl Handler for TestHandler {
    fn admit(&self, request: &Request<'_>) -> Admission {
        if !request.is_upgrade() {
            return syncws::hub::Response::html("<p>hello</p>").into();
        }
        match self.token {
            Some(t)
                if request.query_param("token") != Some(t) && request.bearer_token() != Some(t) =>
            {
                Admission::reject(401, "bad token")
            }
            _ => Admission::accept().user(request.query_param("user").unwrap_or("anon")),
        }
    }

    fn on_open(&self, conn: &Conn) {
        let _ = self.seen.send(Seen::Open(conn.id()));
    }

    fn on_message(&self, conn: &Conn, message: Data<'_>) {
        let Data::Text(text) = message else {
            let _ = conn.send(&Message::binary(message.as_bytes()));
            return;
        };
        let _ = self.seen.send(Seen::Message(conn.id(), text.to_string()));
        if let Some(room) = text.strip_prefix("join:") {
            let _ = conn.hub().join(conn, room, None, |j| {
                Some(Message::text(format!(
                    "joined {} at {}",
                    room, j.position.offset
                )))
            });
        } else if let Some(rest) = text.strip_prefix("pub:") {
            let (room, body) = rest.split_once(':').unwrap();
            conn.hub().publish(room, body.to_string()).unwrap();
        } else if text == "panic" {
            panic!("the handler panics on purpose");
        } else {
            let _ = conn.send(&Message::text(text));
        }
    }

    fn on_close(&self, conn: &Conn, close: &Disconnect) {
        let _ = self.seen.send(Seen::Close(conn.id(), close.clone()));
    }

    fn encode(&self, p: &Publication) -> Message {
        assert!(&p.data[..] != b"boom", "the encoder panics on purpose");
        Message::text(format!(
            "{}#{}:{}",
            p.room,
            p.position.offset,
            String::from_utf8_lossy(&p.data)
        ))
    }
}

fn start(config: HubConfig) -> (Hub, Receiver<Seen>) {
    let (seen, rx) = unbounded();
    let hub = Hub::bind("127.0.0.1:0", config, TestHandler { seen, token: None }).unwrap();
    (hub, rx)
}

fn quiet() -> HubConfig {
    HubConfig {
        ping_interval: None,
        ..HubConfig::default()
    }
}

/// A tungstenite client.
fn ws(addr: SocketAddr, path: &str) -> tungstenite::WebSocket<TcpStream> {
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    let (ws, _) = tungstenite::client(format!("ws://{addr}{path}"), sock).unwrap();
    ws
}

fn read_text(ws: &mut tungstenite::WebSocket<TcpStream>) -> String {
    loop {
        match ws.read().unwrap() {
            tungstenite::Message::Text(t) => return t.to_string(),
            tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Reads until the server's close frame; returns its code and reason.
fn read_close(ws: &mut tungstenite::WebSocket<TcpStream>) -> (u16, String) {
    loop {
        match ws.read() {
            Ok(tungstenite::Message::Close(Some(f))) => {
                return (f.code.into(), f.reason.to_string());
            }
            Ok(tungstenite::Message::Close(None)) => return (1005, String::new()),
            Ok(_) => {}
            Err(e) => panic!("no close frame: {e}"),
        }
    }
}

fn next_seen(rx: &Receiver<Seen>, mut pick: impl FnMut(&Seen) -> bool) -> Seen {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = rx.recv_deadline(deadline).expect("handler event");
        if pick(&s) {
            return s;
        }
    }
}

/// A raw upgrade: the request (with `extra` headers) and the response head.
fn raw_upgrade(addr: SocketAddr, extra: &str) -> (TcpStream, String) {
    let mut sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        sock,
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
    .unwrap();
    let head = read_head(&mut sock);
    (sock, head)
}

/// Reads one server frame: (first byte, payload).
fn server_frame(sock: &mut TcpStream) -> (u8, Vec<u8>) {
    support::read_server_frame(sock)
}

/// Reads frames until a close; returns its code.
fn raw_close_code(sock: &mut TcpStream) -> u16 {
    loop {
        let (b0, payload) = server_frame(sock);
        if b0 == 0x88 {
            return u16::from_be_bytes([payload[0], payload[1]]);
        }
    }
}

#[test]
fn echo_and_lifecycle_callbacks_run_once_each() {
    let (hub, seen) = start(quiet());
    let mut client = ws(hub.local_addr(), "/ws?user=alice");
    client.send(tungstenite::Message::text("hello")).unwrap();
    assert_eq!(read_text(&mut client), "hello");
    let Seen::Open(id) = next_seen(&seen, |s| matches!(s, Seen::Open(_))) else {
        unreachable!()
    };
    assert_eq!(hub.conn(id).unwrap().user(), Some("alice"));
    client
        .close(Some(tungstenite::protocol::CloseFrame {
            code: 4000.into(),
            reason: "bye".into(),
        }))
        .unwrap();
    // The hub answers the close with the same code.
    let (code, _) = read_close(&mut client);
    assert_eq!(code, 4000);
    let close = next_seen(&seen, |s| matches!(s, Seen::Close(..)));
    assert_eq!(
        close,
        Seen::Close(
            id,
            Disconnect {
                initiator: Initiator::Remote,
                code: CloseCode(4000),
                reason: "bye".into(),
                clean: true,
            }
        )
    );
    wait_until("the connection to be gone", WAIT, || {
        (hub.metrics().open == 0 && hub.conn(id).is_none()).then_some(())
    });
    let m = hub.metrics();
    assert_eq!((m.closing, m.closed, m.accepted), (0, 1, 1), "{m:?}");
    let report = hub.shutdown(WAIT);
    assert_eq!(report.stuck, 0);
    // No second on_close.
    assert!(seen.try_iter().all(|s| !matches!(s, Seen::Close(..))));
}

#[test]
fn a_publication_reaches_every_member_once_in_order() {
    let (hub, _seen) = start(quiet());
    let mut members: Vec<_> = (0..20).map(|_| ws(hub.local_addr(), "/ws")).collect();
    for m in &mut members {
        m.send(tungstenite::Message::text("join:news")).unwrap();
        assert_eq!(read_text(m), "joined news at 0");
    }
    assert_eq!(hub.members("news").len(), 20);
    for i in 1..=50 {
        hub.publish("news", format!("n{i}")).unwrap();
    }
    for m in &mut members {
        for i in 1..=50 {
            assert_eq!(read_text(m), format!("news#{i}:n{i}"));
        }
    }
    let metrics = hub.metrics();
    assert_eq!(metrics.publications, 50);
    assert_eq!((metrics.rooms, metrics.memberships), (1, 20));
}

#[test]
fn a_reconnecting_subscriber_recovers_exactly_what_it_missed() {
    let (hub, seen) = start(quiet());
    // The first session: joins, sees 1..=3, leaves.
    let mut first = ws(hub.local_addr(), "/ws");
    first.send(tungstenite::Message::text("join:r")).unwrap();
    assert_eq!(read_text(&mut first), "joined r at 0");
    let mut last = None;
    for i in 1..=3 {
        last = Some(hub.publish("r", format!("m{i}")).unwrap());
        assert_eq!(read_text(&mut first), format!("r#{i}:m{i}"));
    }
    drop(first);
    next_seen(&seen, |s| matches!(s, Seen::Close(..)));
    for i in 4..=6 {
        hub.publish("r", format!("m{i}")).unwrap();
    }
    // The second session joins from offset 3 through the API.
    let mut second = ws(hub.local_addr(), "/ws");
    second.send(tungstenite::Message::text("x")).unwrap();
    assert_eq!(read_text(&mut second), "x");
    let id = hub.members("nothing").len(); // no members: a sanity check of the query
    assert_eq!(id, 0);
    let conn = wait_until("the second connection", WAIT, || {
        let Seen::Message(id, _) = seen.recv_timeout(WAIT).ok()? else {
            return None;
        };
        hub.conn(id)
    });
    let since: Position = last.unwrap();
    let joined = hub
        .join(&conn, "r", Some(&since), |j| {
            Some(Message::text(format!(
                "recovered={} top={}",
                j.recovered, j.position.offset
            )))
        })
        .unwrap();
    assert!(joined.recovered);
    assert_eq!(joined.replayed, 3);
    hub.publish("r", "m7").unwrap();
    assert_eq!(read_text(&mut second), "recovered=true top=6");
    for i in 4..=7 {
        assert_eq!(read_text(&mut second), format!("r#{i}:m{i}"));
    }
    // A position from another epoch recovers nothing.
    let foreign = Position {
        epoch: Arc::from("other"),
        offset: 1,
    };
    let mut third = ws(hub.local_addr(), "/ws");
    third.send(tungstenite::Message::text("y")).unwrap();
    assert_eq!(read_text(&mut third), "y");
    let conn3 = wait_until("the third connection", WAIT, || {
        let Seen::Message(id, t) = seen.recv_timeout(WAIT).ok()? else {
            return None;
        };
        (t == "y").then(|| hub.conn(id)).flatten()
    });
    let j = hub.join(&conn3, "r", Some(&foreign), |_| None).unwrap();
    assert!(!j.recovered);
    assert_eq!((j.replayed, j.position.offset), (0, 7));
}

#[test]
fn admission_refuses_before_the_upgrade_and_serves_plain_pages() {
    let (seen, _rx) = unbounded();
    let hub = Hub::bind(
        "127.0.0.1:0",
        quiet(),
        TestHandler {
            seen,
            token: Some("s1"),
        },
    )
    .unwrap();
    let (_sock, head) = raw_upgrade(hub.local_addr(), "");
    assert!(head.starts_with("HTTP/1.1 401 "), "{head}");
    let (_sock, head) = raw_upgrade(hub.local_addr(), "Authorization: Bearer s1\r\n");
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert!(head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    let mut page = TcpStream::connect(hub.local_addr()).unwrap();
    page.set_read_timeout(Some(WAIT)).unwrap();
    page.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    page.read_to_string(&mut body).unwrap();
    assert!(body.starts_with("HTTP/1.1 200 OK\r\n"), "{body}");
    assert!(body.ends_with("<p>hello</p>"));
    assert_eq!(hub.metrics().refused_admission, 1);
}

#[test]
fn limits_answer_503_with_retry_after_and_free_their_slot() {
    let (hub, seen) = start(HubConfig {
        max_connections: 2,
        ..quiet()
    });
    let a = ws(hub.local_addr(), "/ws");
    let _b = ws(hub.local_addr(), "/ws");
    let (_sock, head) = raw_upgrade(hub.local_addr(), "");
    assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
    assert!(head.contains("Retry-After: 5\r\n"), "{head}");
    drop(a);
    next_seen(&seen, |s| matches!(s, Seen::Close(..)));
    wait_until("a free slot", WAIT, || {
        let (_s, head) = raw_upgrade(hub.local_addr(), "");
        head.starts_with("HTTP/1.1 101 ").then_some(())
    });
    assert!(hub.metrics().refused_limit >= 1);
}

#[test]
fn the_per_ip_limit_counts_each_address() {
    let (hub, _seen) = start(HubConfig {
        max_per_ip: 1,
        ..quiet()
    });
    let _a = ws(hub.local_addr(), "/ws");
    let (_s, head) = raw_upgrade(hub.local_addr(), "");
    assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
    // From 127.0.0.2: its own count.
    let sock = support::connect_from("127.0.0.2", hub.local_addr());
    let (_ws, response) =
        tungstenite::client(format!("ws://{}/ws", hub.local_addr()), sock).unwrap();
    assert_eq!(response.status(), 101);
}

#[test]
fn a_trickling_handshake_is_cut_off_while_others_get_in() {
    let (hub, _seen) = start(HubConfig {
        handshake_timeout: Duration::from_millis(500),
        ..quiet()
    });
    let mut slow = TcpStream::connect(hub.local_addr()).unwrap();
    slow.set_read_timeout(Some(WAIT)).unwrap();
    let started = Instant::now();
    let request = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n";
    // One byte at a time, well within any per-read timeout, until the hub hangs up.
    let mut cut_off = false;
    for b in request.iter().cycle().take(400) {
        if slow.write_all(&[*b]).is_err() {
            cut_off = true;
            break;
        }
        // Meanwhile a normal client gets in.
        if started.elapsed() < Duration::from_millis(100) {
            let mut other = ws(hub.local_addr(), "/ws");
            other.send(tungstenite::Message::text("hi")).unwrap();
            assert_eq!(read_text(&mut other), "hi");
        }
        std::thread::sleep(Duration::from_millis(20)); // the trickle itself
        let mut probe = [0u8; 1];
        slow.set_nonblocking(true).unwrap();
        let r = slow.read(&mut probe);
        slow.set_nonblocking(false).unwrap();
        if matches!(r, Ok(0)) || matches!(&r, Err(e) if e.kind() != std::io::ErrorKind::WouldBlock)
        {
            cut_off = true;
            break;
        }
    }
    assert!(cut_off, "the trickling client was never cut off");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(hub.metrics().handshake_failures, 1);
}

#[test]
fn violations_are_answered_with_close_frames() {
    let (hub, _seen) = start(HubConfig {
        max_message: 1024,
        ..quiet()
    });
    let cases: [(&str, Vec<u8>, u16); 4] = [
        ("unmasked", client_frame(0x81, b"hi", false), 1002),
        ("oversized", client_frame(0x82, &[0u8; 2000], true), 1009),
        ("bad utf-8", client_frame(0x81, &[0xff, 0xfe], true), 1007),
        ("reserved opcode", client_frame(0x83, b"", true), 1002),
    ];
    for (what, bytes, code) in cases {
        let (mut sock, head) = raw_upgrade(hub.local_addr(), "");
        assert!(head.starts_with("HTTP/1.1 101"));
        sock.write_all(&bytes).unwrap();
        assert_eq!(raw_close_code(&mut sock), code, "{what}");
    }
    // Fragments add up against the message limit.
    let (mut sock, _) = raw_upgrade(hub.local_addr(), "");
    sock.write_all(&client_frame(0x02, &[1u8; 600], true))
        .unwrap();
    sock.write_all(&client_frame(0x80, &[1u8; 600], true))
        .unwrap();
    assert_eq!(raw_close_code(&mut sock), 1009);
    wait_until("the protocol errors to be counted", WAIT, || {
        (hub.metrics().protocol_errors == 5).then_some(())
    });
}

#[test]
fn a_flood_past_the_rate_limit_is_closed_with_1008() {
    let (hub, _seen) = start(HubConfig {
        rate_limit: Some(RateLimit {
            per_second: 10.0,
            burst: 20,
            policy: RatePolicy::Close,
        }),
        ..quiet()
    });
    let (mut sock, _) = raw_upgrade(hub.local_addr(), "");
    let mut flood = Vec::new();
    for _ in 0..1000 {
        flood.extend_from_slice(&client_frame(0x82, b"x", true));
    }
    sock.write_all(&flood).unwrap();
    // Twenty echoes, then the close.
    let mut echoes = 0;
    loop {
        let (b0, payload) = server_frame(&mut sock);
        if b0 == 0x88 {
            assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1008);
            break;
        }
        echoes += 1;
    }
    assert_eq!(echoes, 20);
    assert!(hub.metrics().rate_limited >= 1);
}

#[test]
fn a_client_that_never_reads_is_closed_as_slow_and_others_are_unaffected() {
    let (hub, _seen) = start(HubConfig {
        queue_max_bytes: 256 * 1024,
        ..quiet()
    });
    let (mut stuck, _) = raw_upgrade(hub.local_addr(), "");
    stuck
        .write_all(&client_frame(0x81, b"join:feed", true))
        .unwrap();
    let mut healthy = ws(hub.local_addr(), "/ws");
    healthy
        .send(tungstenite::Message::text("join:feed"))
        .unwrap();
    assert_eq!(read_text(&mut healthy), "joined feed at 0");
    wait_until("both members", WAIT, || {
        (hub.members("feed").len() == 2).then_some(())
    });
    let body = "x".repeat(1000);
    let mut published = 0;
    let started = Instant::now();
    // Publish until the stuck client is closed as slow; the healthy one reads everything.
    while hub.metrics().slow_closes == 0 {
        hub.publish("feed", body.clone()).unwrap();
        published += 1;
        let text = read_text(&mut healthy);
        assert_eq!(text, format!("feed#{published}:{body}"));
        assert!(started.elapsed() < WAIT, "never closed as slow");
    }
    // The publisher never blocked: every call returned at once, and the stuck client's
    // socket and queue hold at most a few megabytes.
    assert!(published < 20_000, "{published}");
    // The stuck client, once it reads (within the close timeout), finds the close frame 4008
    // after the data that was already on its way; the data still queued was dropped.
    stuck.set_read_timeout(Some(WAIT)).unwrap();
    assert_eq!(raw_close_code(&mut stuck), 4008);
    // It leaves the room when its close ends.
    drop(stuck);
    wait_until("the slow member to leave", WAIT, || {
        (hub.members("feed").len() == 1).then_some(())
    });
    let m = hub.metrics();
    assert_eq!(m.slow_closes, 1);
}

#[test]
fn the_drop_policy_drops_for_the_slow_client_only() {
    let (hub, _seen) = start(HubConfig {
        queue_max_messages: 4,
        slow: SlowPolicy::Drop,
        ..quiet()
    });
    let (mut stuck, _) = raw_upgrade(hub.local_addr(), "");
    stuck
        .write_all(&client_frame(0x81, b"join:feed", true))
        .unwrap();
    wait_until("the member", WAIT, || {
        (hub.members("feed").len() == 1).then_some(())
    });
    let big = "y".repeat(64 * 1024);
    for _ in 0..200 {
        hub.publish("feed", big.clone()).unwrap();
    }
    assert!(hub.metrics().dropped > 0);
    assert_eq!(hub.members("feed").len(), 1, "still a member");
}

#[test]
fn a_panicking_handler_closes_its_connection_with_1011_only() {
    let (hub, seen) = start(quiet());
    let mut bad = ws(hub.local_addr(), "/ws");
    let mut good = ws(hub.local_addr(), "/ws");
    bad.send(tungstenite::Message::text("panic")).unwrap();
    assert_eq!(read_close(&mut bad).0, 1011);
    good.send(tungstenite::Message::text("still here")).unwrap();
    assert_eq!(read_text(&mut good), "still here");
    let Seen::Close(_, d) = next_seen(&seen, |s| matches!(s, Seen::Close(..))) else {
        unreachable!()
    };
    assert_eq!((d.initiator, d.code), (Initiator::Local, CloseCode(1011)));
    assert_eq!(hub.metrics().callback_panics, 1);
}

#[test]
fn keepalive_pings_and_closes_a_client_that_never_answers() {
    let (hub, seen) = start(HubConfig {
        ping_interval: Some(Duration::from_millis(100)),
        pong_timeout: Duration::from_millis(200),
        ..HubConfig::default()
    });
    let (mut mute, _) = raw_upgrade(hub.local_addr(), "");
    // A ping arrives; not answering it gets a 1011 close.
    let (b0, _) = server_frame(&mut mute);
    assert_eq!(b0, 0x89, "a ping");
    assert_eq!(raw_close_code(&mut mute), 1011);
    let Seen::Close(_, d) = next_seen(&seen, |s| matches!(s, Seen::Close(..))) else {
        unreachable!()
    };
    assert_eq!(d.reason, "keepalive ping timeout");
    // tungstenite answers pings: it stays connected across several intervals.
    let mut alive = ws(hub.local_addr(), "/ws");
    let until = Instant::now() + Duration::from_millis(800);
    alive
        .get_mut()
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    while Instant::now() < until {
        match alive.read() {
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("dropped: {e}"),
        }
    }
    alive.send(tungstenite::Message::text("ok")).unwrap();
    alive.get_mut().set_read_timeout(Some(WAIT)).unwrap();
    assert_eq!(read_text(&mut alive), "ok");
}

#[test]
fn shutdown_closes_everyone_with_1001_and_joins_every_thread() {
    let (hub, seen) = start(quiet());
    let mut clients: Vec<_> = (0..10).map(|_| ws(hub.local_addr(), "/ws")).collect();
    for c in &mut clients {
        c.send(tungstenite::Message::text("hi")).unwrap();
        assert_eq!(read_text(c), "hi");
    }
    // Clients answer the close on their own threads.
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut c| std::thread::spawn(move || read_close(&mut c).0))
        .collect();
    let report = hub.shutdown(WAIT);
    for r in readers {
        assert_eq!(r.join().unwrap(), 1001);
    }
    assert_eq!((report.ended, report.forced, report.stuck), (10, 0, 0));
    let closes = seen
        .try_iter()
        .filter(|s| matches!(s, Seen::Close(_, d) if d.code == CloseCode::GOING_AWAY))
        .count();
    assert_eq!(closes, 10);
}

#[test]
fn shutdown_forces_clients_that_never_answer_the_close() {
    let (hub, _seen) = start(HubConfig {
        close_timeout: Duration::from_millis(200),
        ..quiet()
    });
    let _silent: Vec<_> = (0..3)
        .map(|_| raw_upgrade(hub.local_addr(), "").0)
        .collect();
    wait_until("three open", WAIT, || {
        (hub.metrics().open == 3).then_some(())
    });
    let started = Instant::now();
    let report = hub.shutdown(Duration::from_millis(300));
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(report.stuck, 0);
    assert_eq!(report.ended + report.forced, 3);
}

#[test]
fn the_syncws_client_talks_to_the_hub_over_tls() {
    let pki = Pki::new("hub-test");
    let (seen, _rx) = unbounded();
    let hub = Hub::bind(
        "127.0.0.1:0",
        HubConfig {
            tls: Some(pki.server_config(&["localhost"])),
            ..quiet()
        },
        TestHandler { seen, token: None },
    )
    .unwrap();
    let client =
        syncws::Client::builder(&format!("wss://localhost:{}/ws", hub.local_addr().port()))
            .add_root_certificate(pki.ca_der())
            .connect()
            .unwrap();
    client.send(syncws::Frame::text("over tls")).unwrap();
    let got = support::next_event(&client, WAIT, |e| match e {
        syncws::Event::Frame { frame, .. } => Some(frame),
        _ => None,
    });
    assert_eq!(got, syncws::Frame::text("over tls"));
    client.shutdown(WAIT);
}

#[test]
fn origin_allow_list_head_limit_and_subprotocol_choice() {
    let (hub, _seen) = start(HubConfig {
        allowed_origins: Some(vec!["https://app.example".into()]),
        subprotocols: vec!["v2.feed".into(), "v1.feed".into()],
        max_request_head: 1024,
        ..quiet()
    });
    let (_s, head) = raw_upgrade(hub.local_addr(), "Origin: https://evil.example\r\n");
    assert!(head.starts_with("HTTP/1.1 403 "), "{head}");
    let (_s, head) = raw_upgrade(hub.local_addr(), "");
    assert!(head.starts_with("HTTP/1.1 403 "), "no Origin: {head}");
    let (_s, head) = raw_upgrade(
        hub.local_addr(),
        "Origin: https://app.example\r\nSec-WebSocket-Protocol: v1.feed, v2.feed\r\n",
    );
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert!(
        head.contains("Sec-WebSocket-Protocol: v2.feed\r\n"),
        "{head}"
    );
    let big = format!(
        "Origin: https://app.example\r\nX-Pad: {}\r\n",
        "p".repeat(2000)
    );
    let (_s, head) = raw_upgrade(hub.local_addr(), &big);
    assert!(head.starts_with("HTTP/1.1 431 "), "{head}");
    let (_s, head) = raw_upgrade(
        hub.local_addr(),
        "Origin: https://app.example\r\nSec-WebSocket-Version: 8\r\n",
    );
    // Two version headers: the first (13) is what counts; a lone wrong version gets 426.
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    let mut sock = TcpStream::connect(hub.local_addr()).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    sock.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nOrigin: https://app.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n").unwrap();
    let head = read_head(&mut sock);
    assert!(head.starts_with("HTTP/1.1 426 "), "{head}");
    assert!(head.contains("Sec-WebSocket-Version: 13\r\n"), "{head}");
}

#[test]
fn an_idle_connection_is_closed_and_pongs_do_not_count_as_data() {
    let (hub, seen) = start(HubConfig {
        idle_timeout: Some(Duration::from_millis(300)),
        ..quiet()
    });
    let (mut sock, _) = raw_upgrade(hub.local_addr(), "");
    let started = Instant::now();
    // Unsolicited pongs keep the socket busy but are not data.
    while started.elapsed() < Duration::from_millis(150) {
        sock.write_all(&client_frame(0x8A, b"", true)).unwrap();
        std::thread::sleep(Duration::from_millis(20)); // the client's own pacing
    }
    assert_eq!(raw_close_code(&mut sock), 1001);
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(290), "{took:?}");
    let Seen::Close(_, d) = next_seen(&seen, |s| matches!(s, Seen::Close(..))) else {
        unreachable!()
    };
    assert_eq!(
        (d.initiator, d.reason.as_str()),
        (Initiator::Local, "idle timeout")
    );
}

#[test]
fn send_to_user_reaches_each_of_its_connections() {
    let (hub, seen) = start(quiet());
    let mut a1 = ws(hub.local_addr(), "/ws?user=ann");
    let mut a2 = ws(hub.local_addr(), "/ws?user=ann");
    let mut b = ws(hub.local_addr(), "/ws?user=ben");
    for c in [&mut a1, &mut a2, &mut b] {
        c.send(tungstenite::Message::text("hi")).unwrap();
        assert_eq!(read_text(c), "hi");
    }
    let _ = seen;
    assert_eq!(hub.user_conns("ann").len(), 2);
    assert_eq!(hub.send_to_user("ann", &Message::text("for ann")), 2);
    assert_eq!(read_text(&mut a1), "for ann");
    assert_eq!(read_text(&mut a2), "for ann");
    b.send(tungstenite::Message::text("still me")).unwrap();
    assert_eq!(read_text(&mut b), "still me", "ben got nothing else");
    drop(a1);
    wait_until("ann to have one connection", WAIT, || {
        (hub.user_conns("ann").len() == 1).then_some(())
    });
    assert_eq!(hub.send_to_user("nobody", &Message::text("x")), 0);
}

#[test]
fn a_connection_of_another_hub_cannot_join() {
    let (a, _seen_a) = start(quiet());
    let (b, seen_b) = start(quiet());
    let mut client = ws(b.local_addr(), "/ws");
    client.send(tungstenite::Message::text("x")).unwrap();
    assert_eq!(read_text(&mut client), "x");
    let Seen::Open(id) = next_seen(&seen_b, |s| matches!(s, Seen::Open(_))) else {
        unreachable!()
    };
    let conn = b.conn(id).unwrap();
    assert_eq!(
        a.join(&conn, "r", None, |_| None),
        Err(syncws::hub::JoinError::OtherHub)
    );
    assert!(a.members("r").is_empty());
    assert!(!a.leave(&conn, "r"));
}

/// A publication the handler cannot encode is never skipped silently: live members are told of
/// a reset (the default closes them with 1011), and a recovery that would need it says
/// `recovered = false` in its preamble.
#[test]
fn a_publication_that_cannot_be_encoded_is_never_a_silent_gap() {
    let (hub, seen) = start(quiet());
    let mut live = ws(hub.local_addr(), "/ws");
    live.send(tungstenite::Message::text("join:r")).unwrap();
    assert_eq!(read_text(&mut live), "joined r at 0");
    let p1 = hub.publish("r", "m1").unwrap();
    assert_eq!(read_text(&mut live), "r#1:m1");
    hub.publish("r", "boom").unwrap();
    assert_eq!(read_close(&mut live), (1011, "stream reset".to_string()));
    let m = hub.metrics();
    assert_eq!((m.resets, m.callback_panics), (1, 1));
    // A subscriber recovering from before it: told it was not recovered, nothing replayed.
    let mut late = ws(hub.local_addr(), "/ws");
    late.send(tungstenite::Message::text("x")).unwrap();
    assert_eq!(read_text(&mut late), "x");
    let conn = wait_until("the late connection", WAIT, || {
        let Seen::Message(id, t) = seen.recv_timeout(WAIT).ok()? else {
            return None;
        };
        (t == "x").then(|| hub.conn(id)).flatten()
    });
    let since = Position { offset: 0, ..p1 };
    let j = hub
        .join(&conn, "r", Some(&since), |j| {
            Some(Message::text(format!("recovered={}", j.recovered)))
        })
        .unwrap();
    assert!(!j.recovered);
    assert_eq!(j.replayed, 0);
    assert_eq!(read_text(&mut late), "recovered=false");
}
