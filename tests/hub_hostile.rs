//! The hub against hostile clients and racing threads: raw sockets that speak just enough
//! WebSocket to misbehave, joins racing disconnects, concurrent publishers and recoveries.
//! Every wait is on a condition with a deadline. The second half are regression tests of the
//! bugs an independent review found (each failed before its fix).

mod support;

use support::read_head;

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, unbounded};
use support::wait_until;
use syncws::hub::{
    Admission, Conn, Disconnect, Handler, Hub, HubConfig, JoinError, Message, Position,
    Publication, Request, SlowPolicy,
};
use syncws::{CloseCode, Data, Initiator};

const WAIT: Duration = Duration::from_secs(10);

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// Records what the hub tells it. Text starting with `echo:` is sent back whole;
/// `pub:ROOM:BODY` publishes BODY to ROOM; `pub-wait:ROOM:BODY` publishes, then waits (at most
/// `WAIT`) for the test to open the gate before the callback returns.
struct Recorder {
    opened: Sender<Conn>,
    closed: Sender<(u64, Disconnect)>,
    messages: Sender<(u64, Vec<u8>)>,
    gate: Receiver<()>,
}

impl Handler for Recorder {
    fn admit(&self, request: &Request<'_>) -> Admission {
        if !request.is_upgrade() {
            return Admission::reject(404, "not found");
        }
        match request.query_param("user") {
            Some(user) => Admission::accept().user(user),
            None => Admission::accept(),
        }
    }

    fn on_open(&self, conn: &Conn) {
        let _ = self.opened.send(conn.clone());
    }

    fn on_message(&self, conn: &Conn, message: Data<'_>) {
        if let Data::Text(text) = &message {
            if text.starts_with("echo:") {
                let _ = conn.send(&Message::text(text));
            }
            let publish = |rest: &str| {
                let (room, body) = rest.split_once(':').unwrap();
                conn.hub().publish(room, body.to_string()).unwrap();
            };
            if let Some(rest) = text.strip_prefix("pub:") {
                publish(rest);
            } else if let Some(rest) = text.strip_prefix("pub-wait:") {
                publish(rest);
                let _ = self.gate.recv_timeout(WAIT);
            }
        }
        let _ = self.messages.send((conn.id(), message.as_bytes().to_vec()));
    }

    fn on_close(&self, conn: &Conn, close: &Disconnect) {
        let _ = self.closed.send((conn.id(), close.clone()));
    }

    fn encode(&self, p: &Publication) -> Message {
        Message::text(format!(
            "{}#{}:{}",
            p.room,
            p.position.offset,
            String::from_utf8_lossy(&p.data)
        ))
    }
}

struct Env {
    hub: Hub,
    opened: Receiver<Conn>,
    closed: Receiver<(u64, Disconnect)>,
    messages: Receiver<(u64, Vec<u8>)>,
    gate: Sender<()>,
}

impl Env {
    fn addr(&self) -> SocketAddr {
        self.hub.local_addr()
    }

    fn next_open(&self) -> Conn {
        self.opened.recv_timeout(WAIT).expect("on_open")
    }

    fn next_close(&self) -> (u64, Disconnect) {
        self.closed.recv_timeout(WAIT).expect("on_close")
    }

    fn next_message(&self) -> (u64, Vec<u8>) {
        self.messages.recv_timeout(WAIT).expect("on_message")
    }
}

fn start(config: HubConfig) -> Env {
    let (opened, opened_rx) = unbounded();
    let (closed, closed_rx) = unbounded();
    let (messages, messages_rx) = unbounded();
    let (gate, gate_rx) = unbounded();
    let hub = Hub::bind(
        "127.0.0.1:0",
        config,
        Recorder {
            opened,
            closed,
            messages,
            gate: gate_rx,
        },
    )
    .unwrap();
    Env {
        hub,
        opened: opened_rx,
        closed: closed_rx,
        messages: messages_rx,
        gate,
    }
}

/// No keepalive, no rate limit: nothing happens that the test did not ask for.
fn quiet() -> HubConfig {
    HubConfig {
        ping_interval: None,
        rate_limit: None,
        ..HubConfig::default()
    }
}

fn request(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// A raw client: the upgrade request and `extra` bytes in one write, then the `101`.
fn upgrade_on(mut sock: TcpStream, path: &str, extra: &[u8]) -> TcpStream {
    sock.set_read_timeout(Some(WAIT)).unwrap();
    let mut out = request(path).into_bytes();
    out.extend_from_slice(extra);
    sock.write_all(&out).unwrap();
    let head = read_head(&mut sock);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    sock
}

fn upgrade(addr: SocketAddr, extra: &[u8]) -> TcpStream {
    upgrade_on(TcpStream::connect(addr).unwrap(), "/ws", extra)
}

/// A masked client frame with first byte `b0`.
fn frame(b0: u8, payload: &[u8]) -> Vec<u8> {
    support::client_frame(b0, payload, true)
}

fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason.as_bytes());
    frame(0x88, &payload)
}

/// Reads one server frame: (first byte, payload).
fn read_frame(sock: &mut impl Read) -> io::Result<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    sock.read_exact(&mut h)?;
    assert_eq!(h[1] & 0x80, 0, "server frames are not masked");
    let len = match h[1] & 0x7F {
        126 => {
            let mut b = [0u8; 2];
            sock.read_exact(&mut b)?;
            u16::from_be_bytes(b) as usize
        }
        127 => {
            let mut b = [0u8; 8];
            sock.read_exact(&mut b)?;
            usize::try_from(u64::from_be_bytes(b)).unwrap()
        }
        n => n as usize,
    };
    let mut payload = vec![0u8; len];
    sock.read_exact(&mut payload)?;
    Ok((h[0], payload))
}

/// Reads frames until the first close frame; returns its code.
fn read_close_code(sock: &mut TcpStream) -> u16 {
    loop {
        let (b0, payload) = read_frame(sock).expect("a close frame");
        if b0 == 0x88 {
            return u16::from_be_bytes([payload[0], payload[1]]);
        }
    }
}

/// Reads frames until the stream ends (cleanly or not): every whole frame read.
fn read_all_frames(sock: &mut TcpStream) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    while let Ok(f) = read_frame(sock) {
        frames.push(f);
    }
    frames
}

/// True once the peer closed the connection (EOF or reset), within `WAIT`.
fn reads_eof(sock: &mut TcpStream) -> bool {
    let mut b = [0u8; 4096];
    loop {
        match sock.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8(b.to_vec()).unwrap()
}

/// Publishes 1 KB messages to `room` until the hub holds at least `bytes` queued.
fn publish_until_queued(hub: &Hub, room: &str, bytes: usize) -> u64 {
    let body = "q".repeat(1000);
    let mut n = 0;
    while hub.metrics().queued_bytes < bytes {
        hub.publish(room, body.clone()).unwrap();
        n += 1;
        assert!(n < 100_000, "never queued {bytes} bytes");
    }
    n
}

// ---------------------------------------------------------------------------------------------
// Hostile frames.

#[test]
fn fragments_interleaved_with_pings_are_reassembled_and_pongs_go_first() {
    let env = start(quiet());
    let mut sock = upgrade(env.addr(), b"");
    let conn = env.next_open();
    // "é" split across two fragments: only the whole message must be UTF-8.
    let e = "é".as_bytes();
    let mut wire = Vec::new();
    wire.extend(frame(0x01, b"echo:h"));
    wire.extend(frame(0x89, b"p1"));
    wire.extend(frame(0x00, &[b'i', e[0]]));
    wire.extend(frame(0x8A, b"unsolicited pong"));
    wire.extend(frame(0x89, b"p2"));
    wire.extend(frame(0x80, &[e[1], b'!']));
    // A binary message in three fragments with a ping in the middle.
    wire.extend(frame(0x02, &[1, 2]));
    wire.extend(frame(0x00, &[3]));
    wire.extend(frame(0x89, b""));
    wire.extend(frame(0x80, &[4, 5]));
    sock.write_all(&wire).unwrap();
    assert_eq!(read_frame(&mut sock).unwrap(), (0x8A, b"p1".to_vec()));
    assert_eq!(read_frame(&mut sock).unwrap(), (0x8A, b"p2".to_vec()));
    assert_eq!(
        read_frame(&mut sock).unwrap(),
        (0x81, "echo:hié!".as_bytes().to_vec())
    );
    assert_eq!(read_frame(&mut sock).unwrap(), (0x8A, Vec::new()));
    assert_eq!(
        env.next_message(),
        (conn.id(), "echo:hié!".as_bytes().to_vec())
    );
    assert_eq!(env.next_message(), (conn.id(), vec![1, 2, 3, 4, 5]));
    assert_eq!(env.hub.metrics().protocol_errors, 0);
}

#[test]
fn bad_close_frames_and_fragment_misuse_are_failed_with_the_right_code() {
    let env = start(quiet());
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("1-byte close payload", frame(0x88, &[0x03]), 1002),
        ("close code 999", close_frame(999, ""), 1002),
        ("close code 1005", close_frame(1005, ""), 1002),
        ("close code 1006", close_frame(1006, ""), 1002),
        ("close code 1015", close_frame(1015, ""), 1002),
        ("close code 5000", close_frame(5000, ""), 1002),
        (
            "close reason not UTF-8",
            frame(0x88, &[0x03, 0xE8, 0xff]),
            1007,
        ),
        ("close over 125 bytes", frame(0x88, &[0x03; 126]), 1002),
        ("fragmented ping", frame(0x09, b"x"), 1002),
        ("continuation first", frame(0x80, b"x"), 1002),
        (
            "new message inside a fragmented one",
            [frame(0x01, b"a"), frame(0x81, b"b")].concat(),
            1002,
        ),
        ("rsv bit", frame(0xC1, b"x"), 1002),
    ];
    for (what, bytes, code) in cases {
        let mut sock = upgrade(env.addr(), b"");
        let conn = env.next_open();
        sock.write_all(&bytes).unwrap();
        assert_eq!(read_close_code(&mut sock), code, "{what}");
        drop(sock);
        let (id, d) = env.next_close();
        assert_eq!(id, conn.id(), "{what}");
        assert_eq!((d.initiator, d.code.0), (Initiator::Local, code), "{what}");
    }
    // A close with a valid code and reason is answered with the same code.
    let mut sock = upgrade(env.addr(), b"");
    env.next_open();
    sock.write_all(&close_frame(4321, "bye")).unwrap();
    assert_eq!(read_close_code(&mut sock), 4321);
    let (_, d) = env.next_close();
    assert_eq!(
        (d.initiator, d.code.0, d.clean),
        (Initiator::Remote, 4321, true)
    );
    assert_eq!(d.reason, "bye");
}

#[test]
fn a_header_declaring_an_absurd_length_is_refused_before_any_payload() {
    let env = start(HubConfig {
        max_message: 64 * 1024,
        ..quiet()
    });
    let header = |len: u64| {
        let mut h = vec![0x82, 0x80 | 127];
        h.extend_from_slice(&len.to_be_bytes());
        h.extend_from_slice(&[1, 2, 3, 4]);
        h
    };
    for (len, code) in [
        ((1u64 << 63) - 1, 1009),
        (1u64 << 63, 1002),
        (u64::MAX, 1002),
        (64 * 1024 + 1, 1009),
    ] {
        let mut sock = upgrade(env.addr(), b"");
        env.next_open();
        sock.write_all(&header(len)).unwrap();
        assert_eq!(read_close_code(&mut sock), code, "length {len}");
        drop(sock);
        env.next_close();
    }
    // Fragments whose declared lengths add up past the limit: refused at the header.
    let mut sock = upgrade(env.addr(), b"");
    env.next_open();
    sock.write_all(&frame(0x02, &[0u8; 60 * 1024])).unwrap();
    let mut h = vec![0x80, 0x80 | 126];
    h.extend_from_slice(&(8 * 1024u16).to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 0]);
    sock.write_all(&h).unwrap();
    assert_eq!(read_close_code(&mut sock), 1009);
}

#[test]
fn many_tiny_frames_in_one_write_all_arrive_in_order() {
    let env = start(quiet());
    let mut sock = upgrade(env.addr(), b"");
    let conn = env.next_open();
    const N: usize = 20_000;
    let mut wire = Vec::new();
    for i in 0..N {
        wire.extend(frame(0x81, i.to_string().as_bytes()));
    }
    wire.extend(frame(0x81, b"echo:end"));
    sock.write_all(&wire).unwrap();
    for i in 0..N {
        assert_eq!(env.next_message(), (conn.id(), i.to_string().into_bytes()));
    }
    assert_eq!(read_frame(&mut sock).unwrap(), (0x81, b"echo:end".to_vec()));
}

#[test]
fn frames_of_every_size_across_buffer_boundaries_arrive_intact() {
    let env = start(HubConfig {
        max_message: 1 << 20,
        ..quiet()
    });
    let mut sock = upgrade(env.addr(), b"");
    let conn = env.next_open();
    // Sizes straddling the 4 KiB idle buffer and the 64 KiB kept buffer, a large frame followed
    // at once by tiny ones (the buffer grows, then shrinks), in uneven writes.
    let mut sizes: Vec<usize> = vec![0, 1, 125, 126, 127, 4090, 4096, 4097, 9000];
    sizes.extend([700_000, 1, 2, 3, 65_535, 65_536, 70_000, 5, 300_000, 4095]);
    sizes.extend((0..50).map(|i| (i * 977) % 5000));
    let messages: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| support::payload(n, i as u8))
        .collect();
    let mut wire = Vec::new();
    for m in &messages {
        wire.extend(frame(0x82, m));
    }
    let writer = {
        let mut sock = sock.try_clone().unwrap();
        thread::spawn(move || {
            let chunks = [1usize, 7, 4095, 4097, 13, 65_536, 3];
            let mut at = 0;
            for c in chunks.iter().cycle() {
                if at == wire.len() {
                    break;
                }
                let end = (at + c).min(wire.len());
                sock.write_all(&wire[at..end]).unwrap();
                at = end;
            }
        })
    };
    for (i, m) in messages.iter().enumerate() {
        let (id, got) = env.next_message();
        assert_eq!(id, conn.id());
        assert!(got == *m, "message {i} ({} bytes) differs", m.len());
    }
    writer.join().unwrap();
    sock.write_all(&frame(0x81, b"echo:still fine")).unwrap();
    assert_eq!(
        read_frame(&mut sock).unwrap(),
        (0x81, b"echo:still fine".to_vec())
    );
    assert_eq!(env.hub.metrics().protocol_errors, 0);
}

#[test]
fn a_byte_at_a_time_client_is_decoded_correctly() {
    let env = start(quiet());
    let mut sock = upgrade(env.addr(), b"");
    sock.set_nodelay(true).unwrap();
    env.next_open();
    let mut wire = frame(0x81, b"echo:slow");
    wire.extend(frame(0x82, &support::payload(300, 9)));
    for b in &wire {
        sock.write_all(&[*b]).unwrap();
    }
    assert_eq!(
        read_frame(&mut sock).unwrap(),
        (0x81, b"echo:slow".to_vec())
    );
    env.next_message();
    assert_eq!(env.next_message().1, support::payload(300, 9));
}

// ---------------------------------------------------------------------------------------------
// The opening handshake.

#[test]
fn the_upgrade_request_and_first_frames_in_one_segment_are_all_handled() {
    let env = start(quiet());
    let mut extra = frame(0x81, b"echo:first");
    extra.extend(frame(0x89, b"ping"));
    let mut sock = upgrade(env.addr(), &extra);
    assert_eq!(
        read_frame(&mut sock).unwrap(),
        (0x81, b"echo:first".to_vec())
    );
    assert_eq!(read_frame(&mut sock).unwrap(), (0x8A, b"ping".to_vec()));
    // The request, a message and a close, then a half-close, all in one write.
    let mut extra = frame(0x81, b"echo:last words");
    extra.extend(close_frame(1000, "done"));
    let raw = TcpStream::connect(env.addr()).unwrap();
    let mut out = request("/ws").into_bytes();
    out.extend_from_slice(&extra);
    (&raw).write_all(&out).unwrap();
    raw.shutdown(Shutdown::Write).unwrap();
    let mut sock = raw;
    sock.set_read_timeout(Some(WAIT)).unwrap();
    assert!(read_head(&mut sock).starts_with("HTTP/1.1 101 "));
    assert_eq!(
        read_frame(&mut sock).unwrap(),
        (0x81, b"echo:last words".to_vec())
    );
    assert_eq!(read_close_code(&mut sock), 1000);
    assert!(reads_eof(&mut sock));
    env.next_open();
    env.next_open();
    let (_, d) = env.next_close();
    assert_eq!(
        (d.initiator, d.code.0, d.clean),
        (Initiator::Remote, 1000, true)
    );
}

#[test]
fn a_request_head_over_the_limit_gets_431_and_frees_its_slot() {
    let env = start(HubConfig {
        max_request_head: 1024,
        max_connections: 1,
        ..quiet()
    });
    let mut sock = TcpStream::connect(env.addr()).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    let big = format!(
        "GET /ws HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n",
        "p".repeat(4096)
    );
    sock.write_all(big.as_bytes()).unwrap();
    let head = read_head(&mut sock);
    assert!(head.starts_with("HTTP/1.1 431 "), "{head}");
    // A head that is only partial when it crosses the limit: 431 as well, not a hang.
    let sock2 = wait_until("the slot to be free", WAIT, || {
        let mut s = TcpStream::connect(env.addr()).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.write_all(format!("GET /ws HTTP/1.1\r\nX-Pad: {}", "p".repeat(2000)).as_bytes())
            .unwrap();
        let head = read_head(&mut s);
        (!head.starts_with("HTTP/1.1 503 ")).then_some((s, head))
    });
    assert!(sock2.1.starts_with("HTTP/1.1 431 "), "{}", sock2.1);
    let _ = sock2.0.shutdown(Shutdown::Both);
    // The slot comes back: a normal client gets in.
    wait_until("a normal upgrade", WAIT, || {
        let mut s = TcpStream::connect(env.addr()).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.write_all(request("/ws").as_bytes()).unwrap();
        read_head(&mut s).starts_with("HTTP/1.1 101 ").then_some(())
    });
    wait_until("no handshake in progress", WAIT, || {
        (env.hub.metrics().handshaking == 0).then_some(())
    });
}

#[test]
fn a_client_that_half_closes_after_the_upgrade_ends_once() {
    let env = start(quiet());
    let mut sock = upgrade(env.addr(), b"");
    let conn = env.next_open();
    env.hub.join(&conn, "r", None, |_| None).unwrap();
    sock.shutdown(Shutdown::Write).unwrap();
    let (id, d) = env.next_close();
    assert_eq!(id, conn.id());
    assert_eq!(
        (d.initiator, d.code, d.clean),
        (Initiator::Transport, CloseCode::ABNORMAL, false)
    );
    assert!(reads_eof(&mut sock));
    assert!(env.hub.members("r").is_empty());
    assert_eq!(
        env.hub.join(&conn, "r", None, |_| None),
        Err(JoinError::Closed)
    );
    assert_eq!(
        conn.send(&Message::text("late")),
        Err(syncws::hub::SendError::Closed)
    );
    let m = env.hub.metrics();
    assert_eq!((m.open, m.memberships, m.rooms), (0, 0, 0));
    drop(env.hub);
    assert!(env.closed.try_recv().is_err(), "on_close ran twice");
}

// ---------------------------------------------------------------------------------------------
// Rooms, races and ordering.

#[test]
fn joins_racing_disconnects_leave_no_dead_member() {
    let env = start(quiet());
    const N: usize = 40;
    let mut socks = Vec::new();
    let mut conns = Vec::new();
    for _ in 0..N {
        socks.push(upgrade(env.addr(), b""));
        conns.push(env.next_open());
    }
    let hub = env.hub.handle();
    let stop = Arc::new(AtomicBool::new(false));
    let joiners: Vec<_> = (0..4)
        .map(|t| {
            let hub = hub.clone();
            let conns = conns.clone();
            let stop = stop.clone();
            thread::spawn(move || {
                let rooms = ["a", "b", "c"];
                let mut i = t;
                while !stop.load(Ordering::Relaxed) {
                    let conn = &conns[i % conns.len()];
                    let room = rooms[i % rooms.len()];
                    match hub.join(conn, room, None, |_| Some(Message::text("hi"))) {
                        Ok(_) | Err(JoinError::AlreadyMember) | Err(JoinError::Closed) => {}
                        Err(e) => panic!("{e}"),
                    }
                    if i % 3 == 0 {
                        hub.leave(conn, room);
                    }
                    i += 1;
                }
            })
        })
        .collect();
    // Drop the clients while the joins go on: some reset, some close cleanly.
    for (i, sock) in socks.into_iter().enumerate() {
        match i % 3 {
            0 => drop(sock),
            1 => sock.shutdown(Shutdown::Both).unwrap(),
            _ => (&sock).write_all(&close_frame(1000, "")).unwrap(),
        }
    }
    let mut closed = HashSet::new();
    while closed.len() < N {
        let (id, _) = env.next_close();
        assert!(closed.insert(id), "on_close twice for {id}");
    }
    stop.store(true, Ordering::Relaxed);
    for j in joiners {
        j.join().unwrap();
    }
    for room in ["a", "b", "c"] {
        assert!(
            env.hub.members(room).is_empty(),
            "dead members in {room}: {:?}",
            env.hub.members(room)
        );
    }
    for conn in &conns {
        assert!(conn.rooms().is_empty());
    }
    let m = env.hub.metrics();
    assert_eq!((m.open, m.memberships, m.rooms), (0, 0, 0));
}

/// What a subscriber read: the preamble (if it expected one), then each publication's offset
/// and payload.
type Received = (Option<String>, Vec<(u64, String)>);

/// A tungstenite subscriber that reads a preamble (with `preamble`), then `count` publications
/// on its own thread.
fn subscriber(addr: SocketAddr, count: usize, preamble: bool) -> thread::JoinHandle<Received> {
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    let (mut ws, _) = tungstenite::client(format!("ws://{addr}/ws"), sock).unwrap();
    thread::spawn(move || {
        let mut read_text = || loop {
            match ws.read().unwrap() {
                tungstenite::Message::Text(t) => return t.to_string(),
                tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        };
        let preamble = preamble.then(&mut read_text);
        let mut got = Vec::with_capacity(count);
        while got.len() < count {
            let t = read_text();
            let (head, body) = t.split_once(':').unwrap();
            let offset = head.split_once('#').unwrap().1.parse().unwrap();
            got.push((offset, body.to_string()));
        }
        (preamble, got)
    })
}

#[test]
fn concurrent_publishers_give_every_subscriber_offsets_one_by_one() {
    let env = start(quiet());
    const SUBS: usize = 6;
    const PUBLISHERS: usize = 4;
    const EACH: usize = 300;
    let total = PUBLISHERS * EACH;
    let readers: Vec<_> = (0..SUBS)
        .map(|_| subscriber(env.addr(), total, false))
        .collect();
    for _ in 0..SUBS {
        let conn = env.next_open();
        env.hub.join(&conn, "r", None, |_| None).unwrap();
    }
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let hub = env.hub.handle();
            thread::spawn(move || {
                for i in 0..EACH {
                    hub.publish("r", format!("{p}/{i}")).unwrap();
                }
            })
        })
        .collect();
    for p in publishers {
        p.join().unwrap();
    }
    for r in readers {
        let (_, got) = r.join().unwrap();
        for (i, (offset, _)) in got.iter().enumerate() {
            assert_eq!(*offset, i as u64 + 1, "offsets must go up by one");
        }
        // Each publisher's own publications keep its order.
        let mut next = [0usize; PUBLISHERS];
        for (_, body) in &got {
            let (p, i) = body.split_once('/').unwrap();
            let (p, i): (usize, usize) = (p.parse().unwrap(), i.parse().unwrap());
            assert_eq!(i, next[p]);
            next[p] += 1;
        }
    }
    assert_eq!(env.hub.metrics().publications, total as u64);
}

#[test]
fn recoveries_racing_publications_are_exactly_once() {
    // History holds everything: whether a join is recovered does not depend on timing.
    let env = start(HubConfig {
        history: syncws::hub::HistoryLimits {
            max_publications: 100_000,
            ..Default::default()
        },
        ..quiet()
    });
    const TOTAL: u64 = 1500;
    // Every publication's body is its offset (a subscriber that starts from 0 checks the first).
    let first = env.hub.publish("r", "1".to_string()).unwrap();
    assert_eq!(first.offset, 1);
    let epoch = first.epoch.clone();
    let top = Arc::new(AtomicU64::new(1));
    let publisher = {
        let hub = env.hub.handle();
        let top = top.clone();
        thread::spawn(move || {
            for i in 2..=TOTAL {
                let p = hub.publish("r", i.to_string()).unwrap();
                top.store(p.offset, Ordering::Release);
            }
        })
    };
    let mut readers = Vec::new();
    for k in 0..8u64 {
        // Each subscriber has everything up to a recent offset (within the history).
        let since = top.load(Ordering::Acquire).saturating_sub(k * 3);
        let remaining = (TOTAL - since) as usize;
        let reader = subscriber(env.addr(), remaining, true);
        let conn = env.next_open();
        let pos = Position {
            epoch: epoch.clone(),
            offset: since,
        };
        let joined = env
            .hub
            .join(&conn, "r", Some(&pos), |j| {
                Some(Message::text(format!("joined {}", j.position.offset)))
            })
            .unwrap();
        assert!(joined.recovered, "since {since}");
        readers.push((since, reader));
    }
    publisher.join().unwrap();
    for (since, r) in readers {
        let (preamble, got) = r.join().unwrap();
        // The preamble comes first and names where live publications start.
        let top: u64 = preamble.unwrap()["joined ".len()..].parse().unwrap();
        assert!(top >= since);
        for (i, (offset, body)) in got.iter().enumerate() {
            assert_eq!(*offset, since + 1 + i as u64, "since {since}");
            assert_eq!(body, &offset.to_string());
        }
    }
}

#[test]
fn leave_then_join_again_recovers_what_was_missed_meanwhile() {
    let env = start(quiet());
    let mut sock = upgrade(env.addr(), b"");
    let conn = env.next_open();
    env.hub.join(&conn, "r", None, |_| None).unwrap();
    assert_eq!(
        env.hub.join(&conn, "r", None, |_| None),
        Err(JoinError::AlreadyMember)
    );
    let p1 = env.hub.publish("r", "one").unwrap();
    assert_eq!(read_frame(&mut sock).unwrap().1, b"r#1:one");
    assert!(env.hub.leave(&conn, "r"));
    assert!(!env.hub.leave(&conn, "r"));
    assert!(env.hub.members("r").is_empty());
    assert_eq!(env.hub.metrics().rooms, 0);
    env.hub.publish("r", "two").unwrap();
    let j = env
        .hub
        .join(&conn, "r", Some(&p1), |j| {
            Some(Message::text(format!("again {}", j.position.offset)))
        })
        .unwrap();
    assert!(j.recovered);
    assert_eq!(j.replayed, 1);
    env.hub.publish("r", "three").unwrap();
    assert_eq!(read_frame(&mut sock).unwrap().1, b"again 2");
    assert_eq!(read_frame(&mut sock).unwrap().1, b"r#2:two");
    assert_eq!(read_frame(&mut sock).unwrap().1, b"r#3:three");
    assert_eq!(conn.rooms(), vec!["r".to_string()]);
    assert_eq!(env.hub.members("r"), vec![conn.id()]);
}

#[test]
fn send_to_user_reaches_every_connection_of_that_user_only() {
    let env = start(quiet());
    let mut alice: Vec<TcpStream> = (0..3)
        .map(|_| {
            upgrade_on(
                TcpStream::connect(env.addr()).unwrap(),
                "/ws?user=alice",
                b"",
            )
        })
        .collect();
    let mut bob = upgrade_on(TcpStream::connect(env.addr()).unwrap(), "/ws?user=bob", b"");
    for _ in 0..4 {
        env.next_open();
    }
    assert_eq!(env.hub.user_conns("alice").len(), 3);
    assert_eq!(
        env.hub.send_to_user("alice", &Message::text("for alice")),
        3
    );
    for s in &mut alice {
        assert_eq!(read_frame(s).unwrap(), (0x81, b"for alice".to_vec()));
    }
    assert_eq!(env.hub.send_to_user("bob", &Message::text("for bob")), 1);
    assert_eq!(read_frame(&mut bob).unwrap(), (0x81, b"for bob".to_vec()));
    assert_eq!(env.hub.send_to_user("carol", &Message::text("x")), 0);
    // One of alice's connections goes: the others still get her messages.
    drop(alice.pop());
    env.next_close();
    assert_eq!(env.hub.user_conns("alice").len(), 2);
    assert_eq!(env.hub.send_to_user("alice", &Message::text("again")), 2);
    for s in &mut alice {
        assert_eq!(read_frame(s).unwrap(), (0x81, b"again".to_vec()));
    }
    drop(alice);
    env.next_close();
    env.next_close();
    assert!(env.hub.user_conns("alice").is_empty());
    assert_eq!(env.hub.send_to_user("alice", &Message::text("gone")), 0);
}

#[test]
fn shutdown_racing_client_closes_runs_on_close_once_each() {
    let env = start(HubConfig {
        close_timeout: Duration::from_millis(500),
        ..quiet()
    });
    const N: usize = 20;
    let socks: Vec<_> = (0..N).map(|_| upgrade(env.addr(), b"")).collect();
    for _ in 0..N {
        env.next_open();
    }
    let closers: Vec<_> = socks
        .into_iter()
        .enumerate()
        .map(|(i, mut s)| {
            thread::spawn(move || {
                if i % 2 == 0 {
                    let _ = s.write_all(&close_frame(1000, "me first"));
                }
                // Answer whatever close arrives, then wait for the end.
                if let Ok(code) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    read_close_code(&mut s)
                })) {
                    let _ = s.write_all(&close_frame(code, ""));
                }
                reads_eof(&mut s)
            })
        })
        .collect();
    let report = env.hub.shutdown(WAIT);
    for c in closers {
        assert!(c.join().unwrap());
    }
    assert_eq!(report.stuck, 0);
    let ids: Vec<u64> = env.closed.try_iter().map(|(id, _)| id).collect();
    assert_eq!(ids.len(), N, "{ids:?}");
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), N);
}

/// Regression: `serve.rs` used to answer a client's close with `Outbound::close` directly (not
/// `begin_close`), so `closing` was never incremented, yet `unregister` decremented it (fixed in
/// 52b91d3 while this review ran).
#[test]
fn a_client_initiated_close_leaves_the_closing_gauge_at_zero() {
    let env = start(quiet());
    let mut sock = upgrade(env.addr(), b"");
    env.next_open();
    sock.write_all(&close_frame(1000, "")).unwrap();
    assert_eq!(read_close_code(&mut sock), 1000);
    env.next_close();
    let m = env.hub.metrics();
    assert_eq!((m.open, m.closing), (0, 0), "{m:?}");
}

// ---------------------------------------------------------------------------------------------
// Regressions: each test below failed before the fix of the bug it names.

/// `Conn::close` on a connection that already ended still "starts" a close: `closing` goes up
/// and nothing ever brings it down.
#[test]
fn closing_a_conn_that_already_ended_leaves_the_gauges_alone() {
    let env = start(quiet());
    let sock = upgrade(env.addr(), b"");
    let conn = env.next_open();
    drop(sock);
    env.next_close();
    conn.close(CloseCode::NORMAL, "too late");
    let m = env.hub.metrics();
    assert_eq!((m.open, m.closing), (0, 0), "{m:?}");
}

/// `Outbound::close(.., drop_data = false)` puts the close frame in `control`, which is written
/// before `data`: whatever was queued goes out *after* the close frame (RFC 6455 §5.5.1: no
/// data frame may follow a close). Applies to `Conn::close`, keepalive, idle and shutdown.
#[test]
fn no_data_frame_follows_the_close_frame() {
    let env = start(HubConfig {
        close_timeout: Duration::from_secs(3),
        ..quiet()
    });
    let mut sock = upgrade(env.addr(), b"");
    let conn = env.next_open();
    env.hub.join(&conn, "r", None, |_| None).unwrap();
    // The client does not read: the socket fills, then the hub's queue.
    publish_until_queued(&env.hub, "r", 512 * 1024);
    conn.close(CloseCode::NORMAL, "bye");
    let frames = read_all_frames(&mut sock);
    let close_at = frames
        .iter()
        .position(|(b0, _)| *b0 == 0x88)
        .expect("a close frame");
    let after: Vec<u8> = frames[close_at + 1..].iter().map(|(b0, _)| *b0).collect();
    assert!(
        after.is_empty(),
        "{} frames after the close frame (first bytes {:?}…)",
        after.len(),
        &after[..after.len().min(4)]
    );
}

/// A client's close is answered by queuing our close frame behind what is queued, and the
/// connection's thread returns at once: `discard()` drops the answer and the socket is shut.
/// The client never gets its close answered (the frame it was reading is cut short), yet
/// `on_close` reports `clean: true`. One frame larger than anything the kernel can hold on the
/// way (tcp_wmem's maximum and our receive buffer) makes the queue certain to be non-empty.
#[test]
fn a_clients_close_is_answered_even_with_data_queued() {
    let wmem_max: usize = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|s| s.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or(4 << 20);
    let big = 2 * wmem_max + (8 << 20);
    let env = start(HubConfig {
        queue_max_bytes: 2 * big,
        ..quiet()
    });
    let mut sock = small_receive_buffer(env.addr(), 64 * 1024);
    sock = upgrade_on(sock, "/ws", b"");
    let conn = env.next_open();
    conn.send(&Message::binary(vec![7u8; big])).unwrap();
    assert!(
        env.hub.metrics().queued_bytes > 0,
        "the frame went out whole"
    );
    sock.write_all(&close_frame(1000, "bye")).unwrap();
    // Read everything the hub sends until it ends the connection.
    let frames = read_all_frames(&mut sock);
    let (_, d) = env.next_close();
    assert_eq!((d.initiator, d.clean), (Initiator::Remote, true));
    let kinds: Vec<u8> = frames.iter().map(|(b0, _)| *b0).collect();
    assert_eq!(
        kinds,
        [0x82, 0x88],
        "the queued frame then the answer to our close"
    );
}

/// `join` queues the preamble and every missed publication with `push` (no write) while it
/// holds the room's order, and only flushes afterwards: a replay longer than
/// `queue_max_messages` (or `queue_max_bytes`) hits the slow policy before a single byte is
/// written, whoever the client is. With the defaults (history 1,000 publications / 16 MiB,
/// queue 2,048 messages / 4 MiB) a subscriber that missed more than 4 MiB is closed as slow.
#[test]
fn a_long_recovery_does_not_close_a_fast_client_as_slow() {
    let env = start(HubConfig {
        queue_max_messages: 8,
        ..quiet()
    });
    let first = env.hub.publish("r", "1").unwrap();
    for i in 2..=20 {
        env.hub.publish("r", i.to_string()).unwrap();
    }
    let reader = subscriber(env.addr(), 20, false);
    let conn = env.next_open();
    let since = Position {
        epoch: first.epoch.clone(),
        offset: 0,
    };
    let joined = env.hub.join(&conn, "r", Some(&since), |_| None).unwrap();
    assert!(joined.recovered);
    assert_eq!(joined.replayed, 20);
    let got = reader.join();
    assert!(
        got.is_ok(),
        "the subscriber was cut off; slow closes: {}",
        env.hub.metrics().slow_closes
    );
    let offsets: Vec<u64> = got.unwrap().1.iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, (1..=20).collect::<Vec<_>>());
}

/// With `SlowPolicy::Drop`, the same replay is silently cut, yet `join` says `recovered: true`
/// and `replayed: 20`: a gap the subscriber cannot know about.
#[test]
fn a_recovery_that_is_cut_is_not_reported_as_recovered() {
    let env = start(HubConfig {
        queue_max_messages: 8,
        slow: SlowPolicy::Drop,
        ..quiet()
    });
    let first = env.hub.publish("r", "1").unwrap();
    for i in 2..=20 {
        env.hub.publish("r", i.to_string()).unwrap();
    }
    let mut sock = upgrade(env.addr(), b"");
    let conn = env.next_open();
    let since = Position {
        epoch: first.epoch.clone(),
        offset: 0,
    };
    let joined = env.hub.join(&conn, "r", Some(&since), |_| None).unwrap();
    env.hub.publish("r", "21").unwrap();
    let mut offsets = Vec::new();
    for _ in 0..joined.replayed + 1 {
        let (_, p) = read_frame(&mut sock).unwrap();
        let t = text(&p);
        offsets.push(t[2..].split_once(':').unwrap().0.parse::<u64>().unwrap());
        if offsets.last() == Some(&21) {
            break;
        }
    }
    assert!(
        !joined.recovered || offsets == (1..=21).collect::<Vec<_>>(),
        "join said recovered with {} replayed; the client got offsets {offsets:?}",
        joined.replayed
    );
}

/// `push_locked` refuses a frame larger than `queue_max_bytes` even into an empty queue on an
/// idle socket, so one large publication closes every member as "slow", fast readers included.
#[test]
fn one_large_message_does_not_close_a_fast_reader_as_slow() {
    let env = start(HubConfig {
        queue_max_bytes: 64 * 1024,
        ..quiet()
    });
    let reader = subscriber(env.addr(), 1, false);
    let conn = env.next_open();
    env.hub.join(&conn, "r", None, |_| None).unwrap();
    env.hub.publish("r", "z".repeat(100 * 1024)).unwrap();
    let got = reader.join();
    assert_eq!(env.hub.metrics().slow_closes, 0);
    assert_eq!(got.unwrap().1[0].1.len(), 100 * 1024);
}

/// `Outbound::control` queues a pong for every ping without any bound (and `queued_bytes` does
/// not count the control queue): a client that sends pings and never reads makes the hub hold
/// as much as it sends, past `queue_max_bytes`, and the slow policy never applies.
#[test]
fn pongs_to_a_client_that_never_reads_are_bounded() {
    const QUEUE: usize = 64 * 1024;
    let env = start(HubConfig {
        queue_max_bytes: QUEUE,
        ..quiet()
    });
    let sock = small_receive_buffer(env.addr(), 16 * 1024);
    let mut sock = upgrade_on(sock, "/ws", b"");
    env.next_open();
    // What the kernel can hold on the way (the hub's send buffer, at most tcp_wmem's maximum,
    // and ours), plus the queue: anything the client receives beyond that was held by the hub.
    let wmem_max: usize = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|s| s.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or(4 << 20);
    let allowed = QUEUE + 2 * wmem_max + (1 << 20);
    let pings = 2 * allowed / 127 + 1;
    let writer = {
        let mut sock = sock.try_clone().unwrap();
        thread::spawn(move || {
            let ping = frame(0x89, &[b'p'; 125]);
            let mut batch = Vec::with_capacity(ping.len() * 1000);
            let mut sent = 0;
            while sent < pings {
                batch.clear();
                for _ in 0..1000.min(pings - sent) {
                    batch.extend_from_slice(&ping);
                }
                if sock.write_all(&batch).is_err() {
                    return;
                }
                sent += 1000;
            }
            let _ = sock.write_all(&frame(0x81, b"echo:done"));
        })
    };
    // The hub has read every ping once it sees the message after them; only then do we read.
    let started = Instant::now();
    loop {
        match env.messages.recv_timeout(Duration::from_millis(100)) {
            Ok((_, m)) if m == b"echo:done" => break,
            Ok(_) => {}
            Err(_) if env.closed.try_recv().is_ok() => break, // closed as slow: bounded
            Err(_) => assert!(started.elapsed() < 6 * WAIT, "the pings never got through"),
        }
    }
    writer.join().unwrap();
    let mut pong_bytes = 0usize;
    while let Ok((b0, p)) = read_frame(&mut sock) {
        match b0 {
            0x8A => pong_bytes += p.len() + 2,
            0x81 | 0x88 => break,
            other => panic!("unexpected frame {other:#x}"),
        }
    }
    assert!(
        pong_bytes <= allowed,
        "the hub held {pong_bytes} bytes of pongs for a client that did not read \
         (queue_max_bytes {QUEUE}, kernel allowance {})",
        allowed - QUEUE
    );
}

/// A TCP connection whose receive buffer is set small before connecting.
fn small_receive_buffer(addr: SocketAddr, bytes: i32) -> TcpStream {
    use std::os::fd::FromRawFd;
    let SocketAddr::V4(to) = addr else {
        panic!("IPv4 only")
    };
    // SAFETY: plain socket calls on a descriptor this function owns until it is wrapped.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        let size = bytes;
        assert_eq!(
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&raw const size).cast(),
                std::mem::size_of::<i32>() as libc::socklen_t,
            ),
            0
        );
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_port = to.port().to_be();
        sa.sin_addr.s_addr = u32::from(*to.ip()).to_be();
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        assert_eq!(libc::connect(fd, (&raw const sa).cast(), len), 0, "connect");
        TcpStream::from_raw_fd(fd)
    }
}

/// After a protocol violation the hub sends its close and then discards everything the client
/// sends, its close reply included, until `close_timeout` shuts the socket: the TCP connection
/// is neither closed right after the close frame (RFC 6455 §7.1.7, "Fail the WebSocket
/// Connection") nor when the client's reply ends the handshake. Each violating client keeps its
/// slot and thread for `close_timeout` (2 s by default).
#[test]
fn after_a_violation_the_connection_ends_promptly() {
    let env = start(HubConfig {
        close_timeout: Duration::from_secs(30),
        ..quiet()
    });
    let mut sock = upgrade(env.addr(), b"");
    env.next_open();
    sock.write_all(&frame(0x83, b"")).unwrap(); // a reserved opcode
    assert_eq!(read_close_code(&mut sock), 1002);
    sock.write_all(&close_frame(1002, "")).unwrap();
    assert!(
        reads_eof(&mut sock),
        "the hub kept the connection open after the close handshake"
    );
    let (_, d) = env.next_close();
    assert_eq!((d.initiator, d.code.0), (Initiator::Local, 1002));
}

/// `join` runs the preamble while it holds the connection's membership lock (and the room's
/// broker lock): a preamble that asks the connection for its rooms deadlocks, and with it the
/// connection's end, the flusher (which locks the membership at a close deadline) and shutdown.
#[test]
fn a_join_preamble_may_look_at_the_connection() {
    let env = start(quiet());
    let _sock = upgrade(env.addr(), b"");
    let conn = env.next_open();
    let (done, finished) = unbounded();
    {
        let hub = env.hub.handle();
        let conn = conn.clone();
        thread::spawn(move || {
            let r = hub.join(&conn, "r", None, |_| {
                Some(Message::text(format!("rooms: {:?}", conn.rooms())))
            });
            let _ = done.send(r.is_ok());
        });
    }
    if finished.recv_timeout(WAIT).is_err() {
        // Dropping the hub would hang on the deadlocked locks.
        std::mem::forget(env);
        panic!("join with a preamble calling conn.rooms() never returned");
    }
}

/// A raw TLS client of the hub: the upgrade, then the stream.
fn tls_upgrade(
    addr: SocketAddr,
    pki: &support::Pki,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_der()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    tls.write_all(request("/ws").as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tls.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101 "));
    tls
}

/// After the close handshake the hub shuts the TCP connection without ending its side of the
/// TLS stream: no `close_notify`, so a TLS client cannot tell the end from a truncation (the
/// crate's own client sends one after its close frame, see tests/tls_close.rs).
#[test]
fn over_tls_the_hub_ends_its_stream_with_close_notify() {
    let pki = support::Pki::new("hub-hostile");
    let env = start(HubConfig {
        tls: Some(pki.server_config(&["localhost"])),
        ..quiet()
    });
    // The client closes first.
    let mut tls = tls_upgrade(env.addr(), &pki);
    env.next_open();
    tls.write_all(&close_frame(1000, "")).unwrap();
    let (b0, _) = read_frame(&mut tls).unwrap();
    assert_eq!(b0, 0x88);
    let mut rest = Vec::new();
    let end = tls.read_to_end(&mut rest);
    assert!(rest.is_empty());
    env.next_close();
    assert!(
        end.is_ok(),
        "the stream after the close frame ended with {end:?}, not close_notify"
    );
}

/// A request answered without an upgrade (a refusal, a page, a `431`) is not shut: its socket
/// stays open in the hub's thread registry until the flusher's once-a-second housekeeping reaps
/// the thread, so a client reading to the end waits up to a second, and a flood of refused
/// requests holds a descriptor each meanwhile. Five requests in a row all waiting under 200 ms
/// by chance would take the housekeeping tick landing right after each of them.
#[test]
fn a_refused_request_is_ended_at_once() {
    let env = start(quiet());
    for _ in 0..5 {
        let mut sock = TcpStream::connect(env.addr()).unwrap();
        sock.set_read_timeout(Some(WAIT)).unwrap();
        sock.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let head = read_head(&mut sock);
        assert!(head.starts_with("HTTP/1.1 404 "), "{head}");
        let started = Instant::now();
        assert!(reads_eof(&mut sock));
        let took = started.elapsed();
        assert!(
            took < Duration::from_millis(200),
            "the end of the response took {took:?}"
        );
    }
}

/// Write batching (`Batch` in hub/mod.rs): what a callback on a connection's thread publishes
/// is queued for every member and only written when the callback returns and the read batch
/// ends. A callback that publishes and then blocks (on a database, a lock, a reply) holds the
/// publication back from every member meanwhile, though `Handler` promises that "a callback
/// that blocks holds up its own connection only".
#[test]
fn a_callback_that_blocks_after_publishing_does_not_hold_the_publication_back() {
    let env = start(quiet());
    let mut member = upgrade(env.addr(), b"");
    let conn = env.next_open();
    env.hub.join(&conn, "r", None, |_| None).unwrap();
    let mut publisher = upgrade(env.addr(), b"");
    env.next_open();
    publisher
        .write_all(&frame(0x81, b"pub-wait:r:hello"))
        .unwrap();
    member
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let got = read_frame(&mut member);
    env.gate.send(()).unwrap(); // let the callback return either way
    let got = got.map_err(|e| e.kind());
    assert_eq!(
        got,
        Ok((0x81, b"r#1:hello".to_vec())),
        "the member did not get the publication while the publisher's callback ran"
    );
}

/// Write batching again: during one read batch every publication is only queued (`push`), so a
/// burst of publications from one client's read counts in full against every member's queue
/// bound before anything is written. A member that reads as fast as it can is closed as slow
/// because someone else sent a burst. (With the defaults: 500 publications of 8 KiB in one
/// read exceed the 4 MiB bound; here the bound is 64 messages.)
#[test]
fn a_burst_published_from_one_read_does_not_close_fast_members() {
    const N: usize = 1000;
    let env = start(HubConfig {
        queue_max_messages: 64,
        ..quiet()
    });
    let reader = subscriber(env.addr(), N, false);
    let conn = env.next_open();
    env.hub.join(&conn, "r", None, |_| None).unwrap();
    let mut publisher = upgrade(env.addr(), b"");
    env.next_open();
    let mut burst = Vec::new();
    for i in 0..N {
        burst.extend(frame(0x81, format!("pub:r:{i}").as_bytes()));
    }
    publisher.write_all(&burst).unwrap();
    let got = reader.join();
    assert_eq!(
        env.hub.metrics().slow_closes,
        0,
        "a fast member was closed as slow"
    );
    let offsets: Vec<u64> = got.unwrap().1.iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, (1..=N as u64).collect::<Vec<_>>());
}

/// The same burst published from an application thread (no batch): every publication is
/// written at once, and the fast member keeps up.
#[test]
fn a_burst_published_from_an_application_thread_keeps_fast_members() {
    const N: usize = 1000;
    let env = start(HubConfig {
        queue_max_messages: 64,
        ..quiet()
    });
    let reader = subscriber(env.addr(), N, false);
    let conn = env.next_open();
    env.hub.join(&conn, "r", None, |_| None).unwrap();
    for i in 0..N {
        env.hub.publish("r", i.to_string()).unwrap();
    }
    let offsets: Vec<u64> = reader.join().unwrap().1.iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, (1..=N as u64).collect::<Vec<_>>());
    assert_eq!(env.hub.metrics().slow_closes, 0);
}
