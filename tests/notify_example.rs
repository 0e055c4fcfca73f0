//! `examples/notify_server` as a user runs it (a child process), driven by Rust clients: the
//! pinned-down parts of its contract that need no outside peer, and `examples/notify_client`
//! recovering across a dropped connection with no gap.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{connect_from, example_bin, lines_on_channel, proxy::Proxy, wait_until};

const WAIT: Duration = Duration::from_secs(10);

struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(args: &[&str]) -> Server {
        let (child, port) = support::start_example_server("notify_server", args);
        Server { child, port }
    }

    fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }

    fn signal(&self, sig: i32) {
        // SAFETY: a signal to our own, not yet reaped, child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client(url: &str, token: &str) -> tungstenite::WebSocket<TcpStream> {
    let addr = url.trim_start_matches("ws://").trim_end_matches("/ws");
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    tungstenite::client(format!("{url}?token={token}"), sock)
        .unwrap()
        .0
}

fn text(ws: &mut tungstenite::WebSocket<TcpStream>) -> String {
    match ws.read().unwrap() {
        tungstenite::Message::Text(t) => t.to_string(),
        other => panic!("unexpected {other:?}"),
    }
}

fn close_code(ws: &mut tungstenite::WebSocket<TcpStream>) -> u16 {
    loop {
        match ws.read() {
            Ok(tungstenite::Message::Close(Some(f))) => return f.code.into(),
            Ok(_) => {}
            Err(e) => panic!("no close frame: {e}"),
        }
    }
}

fn http_status(port: u16, request: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    let _ = s.read_to_string(&mut response);
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, response)
}

const UPGRADE: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";

#[test]
fn the_page_needs_no_token_and_the_socket_needs_one() {
    let server = Server::start(&[]);
    let (status, page) = http_status(server.port, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 200);
    assert!(page.contains("Content-Type: text/html"), "{page}");
    assert!(page.contains("new WebSocket("));
    let request = |extra: &str| format!("GET /ws{extra} HTTP/1.1\r\nHost: x\r\n{UPGRADE}");
    assert_eq!(http_status(server.port, &(request("") + "\r\n")).0, 401);
    assert_eq!(
        http_status(server.port, &(request("?token=wrong") + "\r\n")).0,
        401
    );
    assert_eq!(
        http_status(
            server.port,
            &(request("") + "Authorization: Bearer nope\r\n\r\n")
        )
        .0,
        401
    );
    // Accepted both ways (the response head is read; the socket then closes with the test).
    for (extra, header) in [("?token=s1", ""), ("", "Authorization: Bearer s2\r\n")] {
        let mut s = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        write!(s, "{}{header}\r\n", request(extra)).unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).unwrap();
        assert_eq!(&head, b"HTTP/1.1 101");
    }
    // Custom tokens replace the defaults.
    let custom = Server::start(&["--tokens", "carol:c3"]);
    let mut ws = client(&custom.url(), "c3");
    ws.send(tungstenite::Message::text(
        r#"{"op":"publish","channel":"x","data":1}"#,
    ))
    .unwrap();
    ws.send(tungstenite::Message::text(r#"{"op":"nope"}"#))
        .unwrap();
    assert!(text(&mut ws).contains(r#""op":"error""#));
    assert_eq!(
        http_status(custom.port, &(request("?token=s1") + "\r\n")).0,
        401
    );
}

#[test]
fn sigterm_closes_every_client_with_1001_and_exits_within_5_s() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let mut server = Server::start(&[]);
        let mut clients: Vec<_> = (0..5).map(|_| client(&server.url(), "s1")).collect();
        for c in &mut clients {
            c.send(tungstenite::Message::text(
                r#"{"op":"subscribe","channel":"a"}"#,
            ))
            .unwrap();
            assert!(text(c).contains(r#""op":"subscribed""#));
        }
        let started = Instant::now();
        server.signal(sig);
        for c in &mut clients {
            assert_eq!(close_code(c), 1001);
        }
        let status = wait_until("the server to exit", Duration::from_secs(5), || {
            server.child.try_wait().unwrap()
        });
        assert!(status.success(), "{status}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}

#[test]
fn ten_thousand_back_to_back_publishes_trip_the_rate_limit() {
    let server = Server::start(&[]);
    let mut ws = client(&server.url(), "s1");
    let publish = r#"{"op":"publish","channel":"flood","data":"x"}"#;
    for _ in 0..10_000 {
        if ws.send(tungstenite::Message::text(publish)).is_err() {
            break; // closed under us: the limit tripped
        }
    }
    assert_eq!(close_code(&mut ws), 1008);
}

#[test]
fn a_steady_100_publishes_per_second_of_2_kb_for_10_s_is_not_limited() {
    let server = Server::start(&[]);
    let mut subscriber = client(&server.url(), "s2");
    subscriber
        .send(tungstenite::Message::text(
            r#"{"op":"subscribe","channel":"steady"}"#,
        ))
        .unwrap();
    assert!(text(&mut subscriber).contains(r#""op":"subscribed""#));
    let reader = std::thread::spawn(move || {
        let mut last = 0;
        for _ in 0..1000 {
            let m = text(&mut subscriber);
            let offset: u64 = m
                .split(r#""offset":"#)
                .nth(1)
                .and_then(|r| r.split(',').next())
                .and_then(|o| o.parse().ok())
                .unwrap();
            assert_eq!(offset, last + 1);
            last = offset;
        }
        last
    });
    let mut publisher = client(&server.url(), "s1");
    let body = "b".repeat(2000);
    let started = Instant::now();
    for i in 0..1000u32 {
        // 100 per second: each publish at its slot (pacing the load is the point of this test).
        let slot = started + Duration::from_millis(u64::from(i) * 10);
        if let Some(wait) = slot.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        publisher
            .send(tungstenite::Message::text(format!(
                r#"{{"op":"publish","channel":"steady","data":"{body}"}}"#
            )))
            .unwrap();
    }
    assert_eq!(reader.join().unwrap(), 1000);
    // Still open and usable.
    publisher
        .send(tungstenite::Message::text(r#"{"op":"nope"}"#))
        .unwrap();
    assert!(text(&mut publisher).contains(r#""op":"error""#));
}

#[test]
fn the_per_ip_limit_answers_503_and_another_address_gets_in() {
    let server = Server::start(&["--max-per-ip", "1", "--max-connections", "3"]);
    let _first = client(&server.url(), "s1");
    let (status, response) = http_status(
        server.port,
        &format!("GET /ws?token=s1 HTTP/1.1\r\nHost: x\r\n{UPGRADE}\r\n"),
    );
    assert_eq!(status, 503, "{response}");
    assert!(response.contains("Retry-After: "), "{response}");
    let sock = connect_from("127.0.0.2", ([127, 0, 0, 1], server.port).into());
    let (_ws, response) = tungstenite::client(format!("{}?token=s1", server.url()), sock).unwrap();
    assert_eq!(response.status(), 101);
}

/// The two halves against each other: `notify_client` (the syncws client with an endpoint for
/// this protocol) loses its connection twice mid-stream and still sees every publication once,
/// in order, recovered by `(epoch, offset)`.
#[test]
fn notify_client_recovers_across_dropped_connections_with_no_gap() {
    let server = Server::start(&[]);
    let proxy = Proxy::start(([127, 0, 0, 1], server.port).into());
    let mut child = Command::new(example_bin("notify_client"))
        .args(["--url", &format!("ws://{}/ws", proxy.addr())])
        .args(["--token", "s1", "--channel", "feed", "--count", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = lines_on_channel("notify-client-out", child.stdout.take().unwrap());
    let mut seen = Vec::new();
    let mut next_line = |what: &str| {
        let line = lines
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("no line while waiting for {what}; so far {seen:?}"));
        seen.push(line.clone());
        line
    };
    while !next_line("subscribed").starts_with("subscribed channel=feed") {}
    let mut publisher = client(&server.url(), "s2");
    let mut offsets = Vec::new();
    for n in 1..=60 {
        publisher
            .send(tungstenite::Message::text(format!(
                r#"{{"op":"publish","channel":"feed","data":{n}}}"#
            )))
            .unwrap();
        if n == 20 || n == 40 {
            proxy.kill(); // the client's connection drops; it reconnects through the proxy
        }
        if n % 10 == 0 {
            // Let the client catch up between bursts (it reads its own lines).
            while offsets.len() < n - 5 && offsets.len() < 55 {
                take_offset(&next_line("messages"), &mut offsets);
            }
        }
    }
    while offsets.len() < 60 {
        take_offset(&next_line("the rest of the messages"), &mut offsets);
    }
    assert_eq!(offsets, (1..=60).collect::<Vec<_>>());
    let status = wait_until("notify_client to exit", WAIT, || child.try_wait().unwrap());
    assert!(status.success());
    let recovered = seen
        .iter()
        .filter(|l| l.starts_with("subscribed channel=feed") && l.ends_with("recovered=true"))
        .count();
    assert!(recovered >= 1, "no recovered re-subscription: {seen:?}");
    assert!(proxy.accepted() >= 2, "the connection was never dropped");
}

/// Checks one line of `notify_client` (never a gap or lost history) and keeps a message's
/// offset.
fn take_offset(line: &str, offsets: &mut Vec<usize>) {
    assert!(
        !line.starts_with("gap") && !line.starts_with("history-lost"),
        "{line}"
    );
    if let Some(rest) = line.strip_prefix("message channel=feed ") {
        let offset = rest
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("offset="))
            .and_then(|o| o.parse().ok())
            .unwrap_or_else(|| panic!("no offset in {line:?}"));
        offsets.push(offset);
    }
}
