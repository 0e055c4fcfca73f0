//! Behaviour under hostile or broken servers, against scripted loopback servers (plain and TLS):
//! early frames, pings under a full data lane, close codes, refused handshakes, bad certificates,
//! closed ports, servers that stop reading or never write, and protocol violations.

mod support;

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::{
    Conn, Pki, TestServer, frame, next_event, raw_accept, read_client_frame, read_request,
};
use syncws::{Backoff, Cause, Client, CloseCode, Error, Event, Frame, Initiator, Keepalive};

const WAIT: Duration = Duration::from_secs(10);

fn next_frame<T: std::fmt::Debug>(client: &Client<T>) -> Frame {
    next_event(client, WAIT, |e| match e {
        Event::Frame { frame, .. } => Some(frame),
        _ => None,
    })
}

fn closed_info<T: std::fmt::Debug>(client: &Client<T>) -> syncws::CloseInfo {
    next_event(client, WAIT, |e| match e {
        Event::Closed { info, .. } => Some(*info),
        _ => None,
    })
}

fn tls_pair() -> (Pki, Arc<rustls::ServerConfig>) {
    let pki = Pki::new("faults CA");
    let config = pki.server_config(&["localhost"]);
    (pki, config)
}

fn connect(server: &TestServer, pki: Option<&Pki>) -> syncws::ClientBuilder {
    let b = Client::builder(&server.url("/"));
    match pki {
        Some(p) => b.add_root_certificate(p.ca_der()),
        None => b,
    }
}

fn early_frame(tls: bool) {
    let (pki, config) = tls_pair();
    let server = TestServer::start(tls.then_some(config), 1, |_, mut conn| {
        // The 101 and the first frame leave in one write, so they share a segment / record.
        raw_accept(&mut conn, &frame(0x81, b"welcome"));
        let _ = read_client_frame(&mut conn);
    });
    let client = connect(&server, tls.then_some(&pki)).connect().unwrap();
    assert_eq!(next_frame(&client), Frame::text("welcome"));
    client.shutdown(Duration::from_secs(2));
    server.join();
}

#[test]
fn frame_in_same_segment_as_101_arrives_plain() {
    early_frame(false);
}

#[test]
fn frame_in_same_segment_as_101_arrives_tls() {
    early_frame(true);
}

/// The server stops reading until the client's data lane is full, then pings. Once the client
/// has read the ping (its `pings_in` counter says so; the pong is queued right after) the server
/// resumes reading: the pong must come before the data still waiting in the lane (the control
/// lane jumps the queue), with the ping's payload.
#[test]
fn ping_answered_with_same_payload_while_data_lane_is_full() {
    const LANE: usize = 64;
    let (lane_full_tx, lane_full_rx) = mpsc::channel::<()>();
    let (resume_tx, resume_rx) = mpsc::channel::<()>();
    let (result_tx, result_rx) = mpsc::channel::<(usize, Vec<u8>)>();
    let server = TestServer::start(None, 1, move |_, mut conn| {
        raw_accept(&mut conn, &[]);
        lane_full_rx.recv().unwrap();
        conn.write_all(&frame(0x89, b"are-you-alive")).unwrap();
        conn.flush().unwrap();
        resume_rx.recv().unwrap();
        // Count data frames until the pong shows up.
        let mut data_before_pong = 0;
        loop {
            let (b0, payload) = read_client_frame(&mut conn).unwrap();
            match b0 & 0x0F {
                0xA => {
                    result_tx.send((data_before_pong, payload)).unwrap();
                    return;
                }
                _ => data_before_pong += 1,
            }
        }
    });
    let client = Client::builder(&server.url("/"))
        .data_queue(LANE)
        .connect()
        .unwrap();
    // 64 KiB frames: the socket buffers fill quickly, then the lane.
    let big = vec![7u8; 64 * 1024];
    let mut queued = 0usize;
    support::wait_until("data lane full", WAIT, || {
        match client.try_send(Frame::binary(big.clone())) {
            Ok(()) => {
                queued += 1;
                None
            }
            Err(Error::QueueFull) => Some(()),
            Err(e) => panic!("unexpected {e}"),
        }
    });
    lane_full_tx.send(()).unwrap();
    support::wait_until("ping received", WAIT, || {
        (client.stats().pings_in == 1).then_some(())
    });
    assert_eq!(client.stats().pongs_dropped, 0);
    resume_tx.send(()).unwrap();
    let (data_before_pong, payload) = result_rx.recv_timeout(WAIT).expect("pong");
    assert_eq!(payload, b"are-you-alive");
    // Ahead of the pong: what the kernel buffers held and the batch being written (the kernel
    // may take a few more frames as its buffers grow), not the bulk of the lane. Without the
    // control lane's priority the pong would come after all `queued` frames.
    assert!(
        data_before_pong < queued - LANE / 2,
        "pong waited behind {data_before_pong} of {queued} queued frames (lane {LANE})"
    );
    drop(client);
    server.join();
}

/// Frames queued for a connection that is lost are not sent on the next one (without
/// `buffer_while_disconnected`), wherever they waited: on the data lane or already encoded in
/// the outbox. The server stops reading until the client's lane and outbox are full, then drops
/// the connection; the next connection must see only what was sent after the reconnect.
#[test]
fn frames_queued_for_a_lost_connection_are_discarded_not_sent_on_the_next() {
    const LANE: usize = 4;
    let (full_tx, full_rx) = mpsc::channel::<()>();
    let (first_tx, first_rx) = mpsc::channel::<String>();
    let server = TestServer::start(None, 2, move |i, mut conn| {
        raw_accept(&mut conn, &[]);
        if i == 0 {
            // Read nothing until the client is full, then drop the connection. A small receive
            // buffer keeps the kernel from taking megabytes first (loopback buffers grow).
            if let Conn::Plain(sock) = &conn {
                shrink_receive_buffer(sock);
            }
            full_rx.recv().unwrap();
            if let Conn::Plain(sock) = &conn {
                let _ = sock.shutdown(std::net::Shutdown::Both);
            }
            return;
        }
        // The next connection: report the first data frame.
        loop {
            let (b0, payload) = read_client_frame(&mut conn).unwrap();
            if b0 & 0x0F == 0x1 {
                first_tx.send(String::from_utf8(payload).unwrap()).unwrap();
                return;
            }
        }
    });
    let client = Client::builder(&server.url("/"))
        .data_queue(LANE)
        .keepalive(Keepalive::ServerDriven)
        .reconnect(Backoff::new(Duration::from_millis(10), Duration::from_millis(50)).seed(1))
        .connect()
        .unwrap();
    let old = format!("old {}", "x".repeat(16 * 1024));
    // Full, and staying full: the writer is stuck in a write the kernel no longer takes (on
    // loopback the kernel's buffers may grow for a while; a writer still writing would take
    // the queued frames into a batch that the loss then cuts, and nothing would be left to
    // discard). Full for 25 looks in a row with no frame written in between.
    let mut steady = 0;
    let mut written = client.stats().messages_out;
    support::wait_until("lane and outbox full, the writer stuck", WAIT, || {
        match client.try_send(Frame::text(old.clone())) {
            Ok(()) => steady = 0,
            Err(Error::QueueFull) => {
                let now = client.stats().messages_out;
                steady = if now == written { steady + 1 } else { 0 };
                written = now;
            }
            Err(e) => panic!("unexpected {e}"),
        }
        (steady >= 25).then_some(())
    });
    full_tx.send(()).unwrap();
    next_event(&client, WAIT, |e| match e {
        Event::SessionReady { epoch: 2 } => Some(()),
        _ => None,
    });
    // The lane held LANE frames; the outbox (256 KiB) held more of these 16 KiB frames.
    let discarded = client.stats().discarded_on_disconnect;
    assert!(
        discarded > LANE as u64,
        "only {discarded} frames discarded: the outbox's were not"
    );
    client.send(Frame::text("new")).unwrap();
    assert_eq!(first_rx.recv_timeout(WAIT).unwrap(), "new");
    drop(client);
    server.join();
}

/// Sets a 4 KiB receive buffer on `sock` (which also stops the kernel from growing it).
fn shrink_receive_buffer(sock: &std::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let size: libc::c_int = 4096;
    // SAFETY: a valid socket descriptor, and a pointer to an int of the size given.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "setsockopt(SO_RCVBUF)");
}

fn server_closes_with(code: u16, reason: &'static str) {
    let (echo_tx, echo_rx) = mpsc::channel();
    let server = TestServer::start(None, 1, move |_, mut conn| {
        raw_accept(&mut conn, &[]);
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(reason.as_bytes());
        conn.write_all(&frame(0x88, &payload)).unwrap();
        let (b0, echo) = read_client_frame(&mut conn).unwrap();
        echo_tx.send((b0, echo)).unwrap();
        // Server closes TCP after the exchange, as RFC 6455 asks.
    });
    let client = Client::builder(&server.url("/")).connect().unwrap();
    let info = closed_info(&client);
    assert_eq!(info.initiator, Initiator::Remote);
    assert_eq!(info.code, CloseCode(code));
    assert_eq!(info.reason, reason);
    assert!(info.clean, "{info:?}");
    let (b0, echo) = echo_rx.recv_timeout(WAIT).unwrap();
    assert_eq!(b0, 0x88);
    assert_eq!(&echo[..2], &code.to_be_bytes(), "client echoes the code");
    assert!(!client.is_open());
    assert!(matches!(
        client.send(Frame::text("late")),
        Err(Error::Closed { .. })
    ));
    client.shutdown(Duration::from_secs(2));
    server.join();
}

fn client_closes_with(code: u16, reason: &'static str) {
    let (got_tx, got_rx) = mpsc::channel();
    let server = TestServer::start(None, 1, move |_, mut conn| {
        raw_accept(&mut conn, &[]);
        let (b0, payload) = read_client_frame(&mut conn).unwrap();
        got_tx.send((b0, payload.clone())).unwrap();
        conn.write_all(&frame(0x88, &payload[..2])).unwrap();
    });
    let client = Client::builder(&server.url("/")).connect().unwrap();
    client.close(CloseCode(code), reason).unwrap();
    let (b0, payload) = got_rx.recv_timeout(WAIT).unwrap();
    assert_eq!(b0, 0x88);
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), code);
    assert_eq!(&payload[2..], reason.as_bytes());
    let info = closed_info(&client);
    assert_eq!(
        (info.initiator, info.code, info.reason.as_str()),
        (Initiator::Local, CloseCode(code), reason)
    );
    assert!(info.clean, "{info:?}");
    assert_eq!(
        info.peer_code,
        Some(CloseCode(code)),
        "the server's reply code"
    );
    client.shutdown(Duration::from_secs(2));
    server.join();
}

#[test]
fn close_codes_round_trip_server_initiated() {
    for (code, reason) in [
        (1000, "bye"),
        (1001, "deploy"),
        (1008, "policy"),
        (4000, "app"),
        (4999, ""),
    ] {
        server_closes_with(code, reason);
    }
}

#[test]
fn close_codes_round_trip_client_initiated() {
    for (code, reason) in [
        (1000, "bye"),
        (1001, "going"),
        (1008, "policy"),
        (4000, "app"),
        (4321, "x"),
    ] {
        client_closes_with(code, reason);
    }
}

fn refuse(status: u16) {
    let server = TestServer::start(None, 1, move |_, mut conn| {
        read_request(&mut conn);
        let body = "no entry\n";
        let resp = format!(
            "HTTP/1.1 {status} Nope\r\nContent-Length: {}\r\nRetry-After: 3\r\n\r\n{body}",
            body.len()
        );
        conn.write_all(resp.as_bytes()).unwrap();
    });
    match Client::builder(&server.url("/")).connect() {
        Err(Error::HandshakeRejected {
            status: s,
            headers,
            body,
            retry_after,
            retry_after_clamped_from,
        }) => {
            assert_eq!(s, status);
            assert_eq!(retry_after, Some(Duration::from_secs(3)));
            assert_eq!(retry_after_clamped_from, None);
            assert!(headers.contains("Retry-After: 3"), "{headers}");
            assert_eq!(body, "no entry\n");
        }
        other => panic!("expected HandshakeRejected({status}), got {other:?}"),
    }
    server.join();
}

#[test]
fn refused_handshake_is_typed_with_status() {
    refuse(401);
    refuse(503);
}

fn tls_failure(server_config: Arc<rustls::ServerConfig>, trusted: &Pki) {
    let server = TestServer::start(Some(server_config), 1, |_, mut conn| {
        // The handshake fails on the client side; reading surfaces the client's alert.
        let mut buf = [0u8; 64];
        let _ = conn.read(&mut buf);
    });
    let result = Client::builder(&server.url("/"))
        .add_root_certificate(trusted.ca_der())
        .connect();
    match result {
        Err(Error::Tls(rustls::Error::InvalidCertificate(_))) => {}
        other => panic!("expected a TLS certificate error, got {other:?}"),
    }
    server.join();
}

#[test]
fn tls_certificate_for_wrong_host_is_a_tls_error() {
    let pki = Pki::new("trusted CA");
    tls_failure(pki.server_config(&["example.test"]), &pki);
}

#[test]
fn tls_certificate_from_unknown_ca_is_a_tls_error() {
    let trusted = Pki::new("trusted CA");
    let unknown = Pki::new("unknown CA");
    tls_failure(unknown.server_config(&["localhost"]), &trusted);
}

#[test]
fn connect_to_closed_port_fails_fast_with_a_typed_error() {
    // Bind then drop to find a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = Instant::now();
    let result = Client::builder(&format!("ws://127.0.0.1:{port}/"))
        .connect_timeout(Duration::from_secs(30))
        .connect();
    match result {
        Err(Error::Connect { source, .. }) => {
            assert_eq!(source.kind(), std::io::ErrorKind::ConnectionRefused)
        }
        other => panic!("expected Connect error, got {other:?}"),
    }
    // Refusal is immediate; it must not wait for the 30 s connect timeout.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

fn resident_kib() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn server_that_stops_reading_gives_queue_full_and_bounded_memory() {
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let server = TestServer::start(None, 1, move |_, mut conn| {
        raw_accept(&mut conn, &[]);
        // Never read; hold the connection until the test is done.
        let _ = done_rx.recv_timeout(WAIT * 3);
    });
    let client = Client::builder(&server.url("/"))
        .data_queue(128)
        .connect()
        .unwrap();
    let frame_bytes = vec![1u8; 16 * 1024];
    let mut accepted = 0usize;
    support::wait_until("QueueFull", WAIT, || {
        match client.try_send(Frame::binary(frame_bytes.clone())) {
            Ok(()) => {
                accepted += 1;
                None
            }
            Err(Error::QueueFull) => Some(()),
            Err(e) => panic!("unexpected {e}"),
        }
    });
    // What was accepted is the lane plus what the socket buffers took: bounded.
    assert!(accepted >= 128, "lane capacity is 128, accepted {accepted}");
    let before = resident_kib();
    for _ in 0..50_000 {
        assert!(matches!(
            client.try_send(Frame::binary(frame_bytes.clone())),
            Err(Error::QueueFull)
        ));
    }
    let growth = resident_kib().saturating_sub(before);
    assert!(
        growth < 8 * 1024,
        "memory grew by {growth} KiB while the queue was full"
    );
    assert!(client.stats().messages_out as usize <= accepted);
    done_tx.send(()).unwrap();
    drop(client);
    server.join();
}

fn many_frames_while_server_is_silent(tls: bool) {
    const N: usize = 10_000;
    let (pki, config) = tls_pair();
    let (count_tx, count_rx) = mpsc::channel();
    let server = TestServer::start(tls.then_some(config), 1, move |_, mut conn| {
        raw_accept(&mut conn, &[]);
        // Read N frames and send nothing at all meanwhile.
        let mut n = 0;
        while n < N {
            let (b0, payload) = read_client_frame(&mut conn).unwrap();
            assert_eq!(b0, 0x82);
            assert_eq!(payload, (n as u32).to_be_bytes());
            n += 1;
        }
        count_tx.send(n).unwrap();
        let _ = read_client_frame(&mut conn); // close at shutdown
    });
    let client = connect(&server, tls.then_some(&pki)).connect().unwrap();
    for i in 0..N {
        client
            .send(Frame::binary((i as u32).to_be_bytes().to_vec()))
            .unwrap();
    }
    assert_eq!(count_rx.recv_timeout(WAIT).expect("all frames written"), N);
    client.shutdown(Duration::from_secs(2));
    server.join();
}

#[test]
fn reads_never_block_writes_plain() {
    many_frames_while_server_is_silent(false);
}

#[test]
fn reads_never_block_writes_tls() {
    many_frames_while_server_is_silent(true);
}

/// The server sends `bytes` after the handshake; the client must answer with a close frame
/// carrying `code`, and report `Error::Protocol` with that code.
fn violation(bytes: Vec<u8>, code: u16, max_frame: Option<usize>) {
    let (code_tx, code_rx) = mpsc::channel();
    let server = TestServer::start(None, 1, move |_, mut conn: Conn| {
        raw_accept(&mut conn, &bytes);
        let got =
            read_client_frame(&mut conn).map(|(b0, p)| (b0, u16::from_be_bytes([p[0], p[1]])));
        code_tx.send(got.ok()).unwrap();
    });
    let mut builder = Client::builder(&server.url("/"));
    if let Some(max) = max_frame {
        builder = builder.max_frame_size(max);
    }
    let client = builder.connect().unwrap();
    let info = closed_info(&client);
    assert_eq!(info.initiator, Initiator::Local);
    assert_eq!(info.code, CloseCode(code));
    match &info.cause {
        Cause::Protocol(Error::Protocol { code: c, .. }) => assert_eq!(*c, CloseCode(code)),
        other => panic!("expected protocol error, got {other:?}"),
    }
    assert_eq!(
        code_rx.recv_timeout(WAIT).unwrap(),
        Some((0x88, code)),
        "close frame on the wire"
    );
    client.shutdown(Duration::from_secs(2));
    server.join();
}

#[test]
fn bad_utf8_closes_with_1007() {
    violation(frame(0x81, &[b'o', b'k', 0xC3, 0x28]), 1007, None);
}

#[test]
fn reserved_opcode_closes_with_1002() {
    violation(frame(0x83, b"?"), 1002, None);
}

#[test]
fn oversized_frame_closes_with_1009() {
    violation(frame(0x82, &vec![0u8; 5000]), 1009, Some(4096));
}

#[test]
fn garbage_after_handshake_closes_with_1002() {
    violation(b"HTTP/1.1 200 OK\r\n\r\nhello".to_vec(), 1002, None);
}

/// Frames accepted by `send` before `close` are written before the close frame, every time.
#[test]
fn close_never_overtakes_frames_sent_before_it() {
    const ROUNDS: usize = 30;
    const FRAMES: u32 = 50;
    let server = TestServer::start(None, ROUNDS, |_, mut conn| {
        raw_accept(&mut conn, &[]);
        for i in 0..FRAMES {
            let (b0, payload) = read_client_frame(&mut conn).unwrap();
            assert_eq!(
                (b0, payload),
                (0x81, i.to_string().into_bytes()),
                "frame {i}"
            );
        }
        let (b0, payload) = read_client_frame(&mut conn).unwrap();
        assert_eq!(b0, 0x88, "close comes last");
        conn.write_all(&frame(0x88, &payload[..2])).unwrap();
    });
    for _ in 0..ROUNDS {
        let client = Client::builder(&server.url("/")).connect().unwrap();
        for i in 0..FRAMES {
            client.send(Frame::text(i.to_string())).unwrap();
        }
        client.close(CloseCode::NORMAL, "done").unwrap();
        let info = closed_info(&client);
        assert!(info.clean, "{info:?}");
        assert_eq!(client.stats().messages_out, u64::from(FRAMES));
        assert_eq!(client.stats().discarded_after_close, 0);
        client.shutdown(Duration::from_secs(2));
    }
    server.join();
}

/// Issue 11: errors that say what happened. `wss://` to a plain server is a TLS error that
/// suggests `ws://`; an unresolvable name has its own variant with the host; a refused
/// upgrade's HTML page stays in `body` while the message shows a short excerpt.
#[test]
fn wss_to_a_plain_server_says_tls() {
    let server = TestServer::start(None, 1, |_, mut conn| {
        let mut buf = [0u8; 512];
        let _ = conn.read(&mut buf); // The ClientHello, then the connection is dropped.
    });
    let url = server.url("/").replacen("ws://", "wss://", 1);
    match Client::builder(&url).connect() {
        Err(e @ Error::NotTls(_)) => assert!(e.to_string().contains("ws://"), "{e}"),
        other => panic!("expected NotTls, got {other:?}"),
    }
    server.join();
}

#[test]
fn an_unresolvable_host_is_a_resolve_error_naming_it() {
    match Client::builder("ws://no-such-host.invalid/").connect() {
        Err(Error::Resolve { host, .. }) => assert_eq!(host, "no-such-host.invalid"),
        other => panic!("expected Resolve, got {other:?}"),
    }
}

#[test]
fn a_refused_upgrade_shows_a_short_excerpt_of_its_body() {
    let page = format!("<html>\n<body>{}</body></html>\n", "not found ".repeat(60));
    let body = page.clone();
    let server = TestServer::start(None, 1, move |_, mut conn| {
        let _ = support::read_request(&mut conn);
        let response = format!(
            "HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let _ = conn.write_all(response.as_bytes());
    });
    match Client::builder(&server.url("/")).connect() {
        Err(e @ Error::HandshakeRejected { .. }) => {
            let message = e.to_string();
            assert!(message.len() < 200, "short: {message}");
            let Error::HandshakeRejected { body, status, .. } = e else {
                unreachable!()
            };
            assert_eq!(status, 404);
            assert!(body.len() > 300, "the body is kept: {} bytes", body.len());
        }
        other => panic!("expected HandshakeRejected, got {other:?}"),
    }
    server.join();
}
