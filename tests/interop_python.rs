//! Interoperability with an independent implementation: Python `websockets` (>= 17) as the
//! server, started per test as a subprocess running `tests/python/ws_server.py` (the guard and
//! the skip/require logic are in `tests/python_peer`, shared with `tests/interop_reconnect.rs`).
//!
//! Covered, over plain TCP and TLS: echo of text and binary from empty to 1 MiB, server-side
//! fragmentation (with a ping between fragments), server pings answered with the same payload,
//! client pings, close codes and reasons in both directions, empty close frames, messages sent
//! just before a close, connections dropped without a close frame, closing while the server
//! streams, invalid UTF-8 and over-limit messages, refused upgrades, request headers / path /
//! subprotocol as the server sees them, no compression, and certificate failures (wrong host,
//! unknown CA). The server reports what it observed on its stdout (`CLOSED <code> <reason>`,
//! `PONG <result>`), which the tests read back.
//!
//! The tests need `python3` with `websockets >= 17`. Without it they are reported as ignored
//! (this file has its own harness: `python_peer::run`), unless `SYNCWS_REQUIRE_PEERS=1` (CI),
//! where they fail. `SYNCWS_PYTHON` names another interpreter.

mod python_peer;
mod support;

use std::time::{Duration, Instant};

use python_peer::{PyServer, TlsFiles, Transport, python_ready, setup};
use support::{Pki, next_event, payload};
use syncws::{Cause, Client, CloseCode, CloseInfo, DeflateParams, Error, Event, Frame, Initiator};

/// Bound on every single wait in these tests.
const WAIT: Duration = Duration::from_secs(5);
/// What `shutdown` is given at the end of each test.
const SHUTDOWN: Duration = Duration::from_secs(2);

/// Must match `REJECT_BODY` in ws_server.py.
const REJECT_BODY: &str = "syncws interop: upgrade refused";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn next_frame<T: std::fmt::Debug>(client: &Client<T>) -> Frame {
    next_event(client, WAIT, |e| match e {
        Event::Frame { frame, .. } => Some(frame),
        Event::Closed { info, .. } => panic!("closed while waiting for a frame: {info:?}"),
        _ => None,
    })
}

fn next_closed<T: std::fmt::Debug>(client: &Client<T>) -> CloseInfo {
    next_event(client, WAIT, |e| match e {
        Event::Closed { info, .. } => Some(*info),
        _ => None,
    })
}

/// Text of `len` bytes with multi-byte characters where they fit.
fn text_of(len: usize, seed: u8) -> String {
    let mut s = String::with_capacity(len);
    let mut i = 0usize;
    while s.len() < len {
        if len - s.len() >= 3 && i % 7 == 3 {
            s.push('✓');
        } else {
            s.push(char::from(b'a' + (i as u8).wrapping_add(seed) % 26));
        }
        i += 1;
    }
    assert_eq!(s.len(), len);
    s
}

const SIZES: [usize; 7] = [0, 1, 125, 126, 65_535, 65_536, 1 << 20];

// ---------------------------------------------------------------------------------------------
// Echo
// ---------------------------------------------------------------------------------------------

fn echo_all_sizes(transport: Transport) {
    if !python_ready() {
        return;
    }
    let (_server, builder) = setup(transport, &["echo"], "/");
    let client = builder.connect().unwrap();
    for (i, len) in SIZES.into_iter().enumerate() {
        let bin = payload(len, i as u8);
        let text = text_of(len, i as u8);
        client.send(Frame::binary(bin.clone())).unwrap();
        client.send(Frame::text(text.clone())).unwrap();
        assert_eq!(
            next_frame(&client),
            Frame::binary(bin),
            "binary echo of {len} bytes ({transport:?})"
        );
        assert_eq!(
            next_frame(&client),
            Frame::text(text),
            "text echo of {len} bytes ({transport:?})"
        );
    }

    // A burst of small messages, written back to back, comes back complete and in order.
    const BURST: usize = 2000;
    for i in 0..BURST {
        client.send(Frame::text(format!("burst {i}"))).unwrap();
    }
    for i in 0..BURST {
        assert_eq!(next_frame(&client), Frame::text(format!("burst {i}")));
    }

    let stats = client.stats();
    assert!(client.is_open(), "still open after the echoes: {stats:?}");
    client.shutdown(SHUTDOWN);
}

fn echo_text_and_binary_plain() {
    echo_all_sizes(Transport::Plain);
}

fn echo_text_and_binary_tls() {
    echo_all_sizes(Transport::Tls);
}

// ---------------------------------------------------------------------------------------------
// Fragmentation
// ---------------------------------------------------------------------------------------------

fn fragments_reassemble(transport: Transport) {
    if !python_ready() {
        return;
    }
    let (_server, builder) = setup(transport, &["fragments"], "/");
    let client = builder.connect().unwrap();
    // Must match TEXT_FRAGMENTS / BINARY_FRAGMENTS in ws_server.py.
    assert_eq!(next_frame(&client), Frame::text("fragmented ✓"));
    let mut expected: Vec<u8> = (0..=255u8).cycle().take(1024).collect();
    expected.extend(std::iter::repeat_n(7u8, 70_000));
    expected.extend_from_slice(b"end");
    assert_eq!(next_frame(&client), Frame::binary(expected));
    // The connection is still usable afterwards.
    client.send(Frame::text("after fragments")).unwrap();
    assert_eq!(next_frame(&client), Frame::text("after fragments"));
    client.shutdown(SHUTDOWN);
}

fn server_fragmented_messages_reassemble_plain() {
    fragments_reassemble(Transport::Plain);
}

fn server_fragmented_messages_reassemble_tls() {
    fragments_reassemble(Transport::Tls);
}

// ---------------------------------------------------------------------------------------------
// Pings
// ---------------------------------------------------------------------------------------------

fn server_ping_answered(transport: Transport) {
    if !python_ready() {
        return;
    }
    let (server, builder) = setup(transport, &["ping"], "/");
    let client = builder.connect().unwrap();
    // Must match PING_PAYLOADS in ws_server.py. websockets resolves a ping's waiter only for a
    // pong carrying exactly that ping's payload, so `pong-ok` proves the payload came back.
    for expected in ["syncws-ping-1".to_string(), String::new(), "P".repeat(125)] {
        let report = format!("pong-ok:{expected}");
        assert_eq!(next_frame(&client), Frame::text(report.clone()));
        assert_eq!(server.expect_line("PONG "), report);
    }
    client.send(Frame::text("still open")).unwrap();
    assert_eq!(next_frame(&client), Frame::text("still open"));
    client.shutdown(SHUTDOWN);
}

fn server_ping_answered_with_same_payload_plain() {
    server_ping_answered(Transport::Plain);
}

fn server_ping_answered_with_same_payload_tls() {
    server_ping_answered(Transport::Tls);
}

fn client_ping_answered(transport: Transport) {
    if !python_ready() {
        return;
    }
    let (_server, builder) = setup(transport, &["echo"], "/");
    let client = builder.connect().unwrap();
    for p in [b"client-ping".to_vec(), Vec::new(), vec![0xA5; 125]] {
        client.ping(p.clone()).unwrap();
        let got = next_event(&client, WAIT, |e| match e {
            Event::Pong { payload, .. } => Some(payload),
            Event::Closed { info, .. } => panic!("closed while waiting for a pong: {info:?}"),
            _ => None,
        });
        assert_eq!(got, p);
    }
    client.shutdown(SHUTDOWN);
}

fn client_ping_answered_by_server_plain() {
    client_ping_answered(Transport::Plain);
}

fn client_ping_answered_by_server_tls() {
    client_ping_answered(Transport::Tls);
}

// ---------------------------------------------------------------------------------------------
// Close codes
// ---------------------------------------------------------------------------------------------

const CLOSE_CODES: [u16; 5] = [1000, 1001, 1008, 4000, 4321];

fn server_close_codes(transport: Transport) {
    if !python_ready() {
        return;
    }
    for code in CLOSE_CODES {
        let reason = format!("server says bye {code} ✓");
        let (server, builder) = setup(transport, &["close", &code.to_string(), &reason], "/");
        let client = builder.connect().unwrap();
        let info = next_closed(&client);
        assert_eq!(
            (info.initiator, info.code, info.reason.as_str(), info.clean),
            (Initiator::Remote, CloseCode(code), reason.as_str(), true),
            "server close with {code} ({transport:?}): {info:?}"
        );
        assert!(
            matches!(info.cause, Cause::ServerClosed(c) if c == CloseCode(code)),
            "{info:?}"
        );
        assert!(!client.is_open());
        assert!(matches!(
            client.send(Frame::text("too late")),
            Err(Error::Closed { .. })
        ));
        // The client echoed the code (RFC 6455 §5.5.1); syncws sends no reason with the echo.
        assert_eq!(server.expect_line("CLOSED "), format!("{code} "));
        client.shutdown(SHUTDOWN);
    }
}

fn server_close_codes_reach_client_plain() {
    server_close_codes(Transport::Plain);
}

fn server_close_codes_reach_client_tls() {
    server_close_codes(Transport::Tls);
}

fn client_close_codes(transport: Transport) {
    if !python_ready() {
        return;
    }
    for code in CLOSE_CODES {
        let reason = format!("client says bye {code} ✓");
        let (server, builder) = setup(transport, &["expect-close"], "/");
        let client = builder.connect().unwrap();
        // One round trip first, so the close is not racing the server's handler start.
        client.send(Frame::text("hello")).unwrap();
        assert_eq!(next_frame(&client), Frame::text("hello"));
        client.close(CloseCode(code), &reason).unwrap();
        let info = next_closed(&client);
        assert_eq!(
            (info.initiator, info.code, info.reason.as_str(), info.clean),
            (Initiator::Local, CloseCode(code), reason.as_str(), true),
            "client close with {code} ({transport:?}): {info:?}"
        );
        assert!(matches!(info.cause, Cause::Requested), "{info:?}");
        assert_eq!(server.expect_line("CLOSED "), format!("{code} {reason}"));
        client.shutdown(SHUTDOWN);
    }
}

fn client_close_codes_reach_server_plain() {
    client_close_codes(Transport::Plain);
}

fn client_close_codes_reach_server_tls() {
    client_close_codes(Transport::Tls);
}

/// `shutdown` on an open connection performs a clean close with 1000.
fn shutdown_closes_with_normal_code() {
    if !python_ready() {
        return;
    }
    let (server, builder) = setup(Transport::Plain, &["expect-close"], "/");
    let client = builder.connect().unwrap();
    client.send(Frame::text("hello")).unwrap();
    assert_eq!(next_frame(&client), Frame::text("hello"));
    let started = Instant::now();
    client.shutdown(SHUTDOWN);
    assert!(
        started.elapsed() < SHUTDOWN + Duration::from_millis(500),
        "shutdown took {:?}",
        started.elapsed()
    );
    assert_eq!(server.expect_line("CLOSED "), "1000 ");
}

/// A close frame without a status code is reported as 1005 and answered with an empty close.
fn server_close_without_status_code() {
    if !python_ready() {
        return;
    }
    for transport in [Transport::Plain, Transport::Tls] {
        let (server, builder) = setup(transport, &["close", "none"], "/");
        let client = builder.connect().unwrap();
        let info = next_closed(&client);
        assert_eq!(
            (info.initiator, info.code, info.reason.as_str(), info.clean),
            (Initiator::Remote, CloseCode::NO_STATUS, "", true),
            "{transport:?}: {info:?}"
        );
        // An empty close is answered with an empty close (websockets reads it as 1005).
        assert_eq!(server.expect_line("CLOSED "), "1005 ");
        client.shutdown(SHUTDOWN);
    }
}

/// Everything the server sent before its close frame reaches the application, in order, and
/// before the `Closed` event.
fn messages_before_server_close_are_delivered() {
    if !python_ready() {
        return;
    }
    for transport in [Transport::Plain, Transport::Tls] {
        let (server, builder) = setup(transport, &["send-then-close", "500", "4001", "done"], "/");
        let client = builder.connect().unwrap();
        for i in 0..500 {
            assert_eq!(next_frame(&client), Frame::text(format!("msg {i}")));
        }
        let info = next_event(&client, WAIT, |e| match e {
            Event::Closed { info, .. } => Some(info),
            other => panic!("expected Closed after the last message, got {other:?}"),
        });
        assert_eq!(
            (info.initiator, info.code, info.reason.as_str(), info.clean),
            (Initiator::Remote, CloseCode(4001), "done", true),
            "{transport:?}"
        );
        assert_eq!(server.expect_line("CLOSED "), "4001 ");
        client.shutdown(SHUTDOWN);
    }
}

/// The server drops the TCP connection without a close frame: the client reports a transport
/// close with 1006, not clean, with an error.
fn server_drops_connection_without_close_frame() {
    if !python_ready() {
        return;
    }
    for transport in [Transport::Plain, Transport::Tls] {
        let (server, builder) = setup(transport, &["abort"], "/");
        let client = builder.connect().unwrap();
        client.send(Frame::text("last words")).unwrap();
        assert_eq!(next_frame(&client), Frame::text("last words"));
        client.send(Frame::text("drop me now")).unwrap();
        let info = next_closed(&client);
        assert_eq!(
            (info.initiator, info.code, info.clean),
            (Initiator::Transport, CloseCode::ABNORMAL, false),
            "{transport:?}: {info:?}"
        );
        assert!(
            matches!(info.cause, Cause::Transport(_)),
            "{transport:?}: {info:?}"
        );
        assert!(!client.is_open());
        assert_eq!(server.expect_line("CLOSED "), "1006 ");
        client.shutdown(SHUTDOWN);
    }
}

/// The client closes while the server is sending as fast as it can: the client keeps reading
/// until the server's close frame, and the handshake completes cleanly.
fn client_close_while_server_streams() {
    if !python_ready() {
        return;
    }
    for transport in [Transport::Plain, Transport::Tls] {
        let (server, builder) = setup(transport, &["stream"], "/");
        let client = builder.connect().unwrap();
        for i in 0..200 {
            match next_frame(&client) {
                Frame::Text(t) => assert!(t.starts_with(&format!("tick {i} ")), "{t:.20}"),
                other => panic!("unexpected {other:?}"),
            }
        }
        client.close(CloseCode(4002), "enough").unwrap();
        let info = next_closed(&client);
        assert_eq!(
            (info.initiator, info.code, info.reason.as_str(), info.clean),
            (Initiator::Local, CloseCode(4002), "enough", true),
            "{transport:?}: {info:?}"
        );
        assert!(matches!(info.cause, Cause::Requested), "{info:?}");
        assert_eq!(server.expect_line("CLOSED "), "4002 enough");
        client.shutdown(SHUTDOWN);
    }
}

/// Invalid UTF-8 in a text message makes the client close with 1007 and report
/// `Error::Protocol`.
fn invalid_utf8_from_server_closes_with_1007() {
    if !python_ready() {
        return;
    }
    for transport in [Transport::Plain, Transport::Tls] {
        let (server, builder) = setup(transport, &["bad-utf8"], "/");
        let client = builder.connect().unwrap();
        let info = next_event(&client, WAIT, |e| match e {
            Event::Closed { info, .. } => Some(info),
            Event::Frame { frame, .. } => panic!("invalid text delivered: {frame:?}"),
            _ => None,
        });
        assert_eq!(
            (info.initiator, info.code),
            (Initiator::Local, CloseCode::INVALID_PAYLOAD),
            "{transport:?}: {info:?}"
        );
        assert!(
            matches!(
                info.cause,
                Cause::Protocol(Error::Protocol {
                    code: CloseCode::INVALID_PAYLOAD,
                    ..
                })
            ),
            "{transport:?}: {info:?}"
        );
        let line = server.expect_line("CLOSED ");
        assert!(line.starts_with("1007 "), "server saw {line:?}");
        client.shutdown(SHUTDOWN);
    }
}

/// A message over the server's limit: the server closes with 1009 and the client reports it.
fn message_over_server_limit_closed_with_1009() {
    if !python_ready() {
        return;
    }
    for transport in [Transport::Plain, Transport::Tls] {
        let (_server, builder) = setup(transport, &["max-size", "1000"], "/");
        let client = builder.connect().unwrap();
        client.send(Frame::binary(vec![1; 1000])).unwrap();
        assert_eq!(next_frame(&client), Frame::binary(vec![1; 1000]));
        client.send(Frame::binary(vec![2; 1001])).unwrap();
        let info = next_closed(&client);
        assert_eq!(
            (info.initiator, info.code),
            (Initiator::Remote, CloseCode::TOO_BIG),
            "{transport:?}: {info:?}"
        );
        assert!(info.reason.contains("1000"), "{info:?}");
        client.shutdown(SHUTDOWN);
    }
}

/// A ping between the fragments of a message is answered at once and does not disturb the
/// reassembly.
fn ping_between_fragments_answered() {
    if !python_ready() {
        return;
    }
    for transport in [Transport::Plain, Transport::Tls] {
        let (server, builder) = setup(transport, &["ping-mid-fragment"], "/");
        let client = builder.connect().unwrap();
        // The server waits for the pong before sending the last fragment.
        assert_eq!(server.expect_line("PONG "), "pong-ok:mid-fragment");
        assert_eq!(next_frame(&client), Frame::text("before ping, after ping"));
        assert_eq!(next_frame(&client), Frame::text("pong-ok:mid-fragment"));
        client.shutdown(SHUTDOWN);
    }
}

/// Over-long close reasons are cut on a character boundary to fit 123 bytes; over-long ping
/// payloads to 125 bytes. The peer accepts both.
fn long_close_reason_and_ping_payload_are_truncated() {
    if !python_ready() {
        return;
    }
    let (server, builder) = setup(Transport::Plain, &["expect-close"], "/");
    let client = builder.connect().unwrap();
    let long_ping: Vec<u8> = (0..200u8).collect();
    client.ping(long_ping.clone()).unwrap();
    let pong = next_event(&client, WAIT, |e| match e {
        Event::Pong { payload, .. } => Some(payload),
        _ => None,
    });
    assert_eq!(pong, long_ping[..125]);
    // 1 + 3 * 60 bytes; 123 bytes would split the 41st check mark.
    let reason = format!("a{}", "✓".repeat(60));
    client.close(CloseCode(4003), &reason).unwrap();
    let info = next_closed(&client);
    assert_eq!(
        (info.initiator, info.code, info.clean),
        (Initiator::Local, CloseCode(4003), true),
        "{info:?}"
    );
    let expected = format!("a{}", "✓".repeat(40));
    assert_eq!(server.expect_line("CLOSED "), format!("4003 {expected}"));
    client.shutdown(SHUTDOWN);
}

/// Codes that must never appear on the wire (RFC 6455 §7.4.1-2: 0-999, 1004-1006, 1015,
/// 1016-2999): a peer treats them as a protocol error. `Client::close` must not put them on the
/// wire (it may refuse the call, or send a valid code such as 1000 instead).
fn close_with_reserved_code_does_not_send_it() {
    if !python_ready() {
        return;
    }
    for code in [0u16, 999, 1005, 1006, 1015, 2000] {
        let (server, builder) = setup(Transport::Plain, &["expect-close"], "/");
        let client = builder.connect().unwrap();
        client.send(Frame::text("hello")).unwrap();
        assert_eq!(next_frame(&client), Frame::text("hello"));
        match client.close(CloseCode(code), "reserved") {
            Err(_) => {
                // Refused: the connection must still be open and closable normally.
                assert!(
                    client.is_open(),
                    "close({code}) refused but connection not open"
                );
                client.close(CloseCode::NORMAL, "").unwrap();
                assert_eq!(
                    server.expect_line("CLOSED "),
                    "1000 ",
                    "after close({code})"
                );
            }
            Ok(()) => {
                let info = next_closed(&client);
                // websockets reports 1006 when it failed the connection over an invalid code.
                let line = server.expect_line("CLOSED ");
                let sent: u16 = line.split(' ').next().unwrap().parse().unwrap();
                assert!(
                    CloseCode(sent).is_sendable(),
                    "close({code}) put an invalid code on the wire: server saw {line:?}, \
                     client reported {info:?}"
                );
            }
        }
        client.shutdown(SHUTDOWN);
    }
}

/// permessage-deflate stays off unless asked for: a server with compression enabled (the
/// websockets default) negotiates none when the client offers none, and a server accepting an
/// extension the user forced into the request (without `.deflate`) is refused.
fn compression_is_never_negotiated() {
    if !python_ready() {
        return;
    }
    let (server, builder) = setup(Transport::Plain, &["echo-deflate"], "/");
    let client = builder.connect().unwrap();
    assert_eq!(server.expect_line("EXT "), "none");
    let text = "compressible ".repeat(1000);
    client.send(Frame::text(text.clone())).unwrap();
    assert_eq!(next_frame(&client), Frame::text(text));
    client.shutdown(SHUTDOWN);

    let (_server, builder) = setup(Transport::Plain, &["echo-deflate"], "/");
    match builder
        .header("Sec-WebSocket-Extensions", "permessage-deflate")
        .connect()
    {
        Err(Error::InvalidHandshake(msg)) => assert!(msg.contains("extension"), "{msg}"),
        Err(e) => panic!("expected InvalidHandshake, got {e:?}"),
        Ok(client) => {
            client.shutdown(SHUTDOWN);
            panic!("accepted a server that enabled permessage-deflate");
        }
    }
}

/// permessage-deflate asked for, with every combination of its parameters, plain and TLS:
/// negotiated as offered (the server's answer printed), and large repetitive messages that the
/// server sends compressed arrive intact, text and binary, many in a row (context takeover).
fn deflate_with_each_parameter_combination() {
    if !python_ready() {
        return;
    }
    let json = r#"{"channel":"trades","price":101.25,"qty":3,"side":"buy"}"#.repeat(200);
    for transport in [Transport::Plain, Transport::Tls] {
        for bits in 0..16u8 {
            let params = DeflateParams {
                server_no_context_takeover: bits & 1 != 0,
                client_no_context_takeover: bits & 2 != 0,
                server_max_window_bits: (bits & 4 != 0).then_some(10),
                client_max_window_bits: (bits & 8 != 0).then_some(12),
            };
            let (server, builder) = setup(transport, &["echo-deflate"], "/");
            let client = builder.deflate(params).connect().unwrap();
            let ext = server.expect_line("EXT ");
            assert!(ext.starts_with("permessage-deflate"), "{params:?}: {ext}");
            assert_eq!(
                ext.contains("server_no_context_takeover"),
                params.server_no_context_takeover,
                "{ext}"
            );
            if params.server_max_window_bits.is_some() {
                assert!(ext.contains("server_max_window_bits=10"), "{ext}");
            }
            for i in 0..5 {
                let text = format!("{i}{json}");
                client.send(Frame::text(text.clone())).unwrap();
                assert_eq!(next_frame(&client), Frame::text(text), "{params:?}");
            }
            let binary = json.as_bytes().repeat(3);
            client.send(Frame::binary(binary.clone())).unwrap();
            assert_eq!(next_frame(&client), Frame::binary(binary), "{params:?}");
            client.shutdown(SHUTDOWN);
        }
    }
}

/// A compression bomb: the server sends a message that inflates past the client's limit; the
/// client closes with 1009 instead of allocating it.
fn deflate_bomb_is_a_1009_close() {
    if !python_ready() {
        return;
    }
    let (server, builder) = setup(Transport::Plain, &["echo-deflate"], "/");
    let client = builder
        .deflate(DeflateParams::default())
        .max_message_size(64 * 1024)
        .connect()
        .unwrap();
    assert!(server.expect_line("EXT ").starts_with("permessage-deflate"));
    // The client sends 1 MiB (its limit is on what it receives); the server echoes it
    // compressed to about a kilobyte, which inflates past the client's 64 KiB.
    let big = vec![b'a'; 1 << 20];
    client.send(Frame::binary(big)).unwrap();
    let info = next_closed(&client);
    assert_eq!(info.code, CloseCode::TOO_BIG, "{info:?}");
    assert_eq!(
        server.expect_line("CLOSED "),
        "1009 compressed message inflates past the size limit"
    );
    client.shutdown(SHUTDOWN);
}

// ---------------------------------------------------------------------------------------------
// Upgrade request and refusal
// ---------------------------------------------------------------------------------------------

fn rejected(transport: Transport, status: u16) {
    if !python_ready() {
        return;
    }
    let (_server, builder) = setup(transport, &["reject", &status.to_string()], "/");
    match builder.connect() {
        Err(e @ Error::HandshakeRejected { .. }) => {
            let Error::HandshakeRejected {
                status: got,
                headers,
                body,
                ..
            } = &e
            else {
                unreachable!()
            };
            assert_eq!(*got, status, "headers: {headers}");
            assert!(
                body.contains(REJECT_BODY),
                "body excerpt {body:?} lacks {REJECT_BODY:?}"
            );
            assert_eq!(e.is_transient(), status == 503);
        }
        Err(e) => panic!("expected HandshakeRejected({status}), got {e:?}"),
        Ok(client) => {
            client.shutdown(SHUTDOWN);
            panic!("upgrade refused with {status} but connect succeeded");
        }
    }
}

fn handshake_rejected_401_plain() {
    rejected(Transport::Plain, 401);
}

fn handshake_rejected_503_plain() {
    rejected(Transport::Plain, 503);
}

fn handshake_rejected_401_tls() {
    rejected(Transport::Tls, 401);
}

fn handshake_rejected_503_tls() {
    rejected(Transport::Tls, 503);
}

fn request_seen_by_server(transport: Transport) {
    if !python_ready() {
        return;
    }
    let path = "/feed/v1?symbols=BTC-USD,ETH-USD&depth=10";
    let (_server, builder) = setup(transport, &["subprotocol", "md.v2"], path);
    let client = builder
        .header("Authorization", "Bearer t0ken")
        .header("X-Syncws-Test", "value with spaces")
        .subprotocol("md.v1")
        .subprotocol("md.v2")
        .connect()
        .unwrap();
    assert_eq!(client.protocol(), Some("md.v2"));
    assert_eq!(next_frame(&client), Frame::text(format!("path:{path}")));
    assert_eq!(
        next_frame(&client),
        Frame::text("header:authorization:Bearer t0ken")
    );
    assert_eq!(
        next_frame(&client),
        Frame::text("header:x-syncws-test:value with spaces")
    );
    assert_eq!(next_frame(&client), Frame::text("subprotocol:md.v2"));
    client.shutdown(SHUTDOWN);
}

fn request_path_headers_and_subprotocol_plain() {
    request_seen_by_server(Transport::Plain);
}

fn request_path_headers_and_subprotocol_tls() {
    request_seen_by_server(Transport::Tls);
}

/// The server selects no subprotocol when none of the offered ones is known.
fn no_common_subprotocol() {
    if !python_ready() {
        return;
    }
    let (_server, builder) = setup(Transport::Plain, &["request"], "/");
    let client = builder.subprotocol("unknown.v9").connect();
    // websockets answers without Sec-WebSocket-Protocol; that is a valid handshake.
    let client = client.unwrap();
    assert_eq!(client.protocol(), None);
    assert_eq!(next_frame(&client), Frame::text("path:/"));
    assert_eq!(next_frame(&client), Frame::text("subprotocol:"));
    client.shutdown(SHUTDOWN);
}

// ---------------------------------------------------------------------------------------------
// TLS failures
// ---------------------------------------------------------------------------------------------

fn tls_certificate_for_wrong_host_is_refused() {
    if !python_ready() {
        return;
    }
    let pki = Pki::new("syncws interop CA");
    let server = PyServer::start_tls(&["echo"], TlsFiles::new(&pki, &["example.test"]));
    let result = Client::builder(&server.url("/"))
        .add_root_certificate(pki.ca_der())
        .connect();
    match result {
        Err(Error::Tls(rustls::Error::InvalidCertificate(e))) => {
            let text = format!("{e:?}");
            assert!(text.contains("NotValidForName"), "{text}");
        }
        Err(e) => panic!("expected a certificate name error, got {e:?}"),
        Ok(client) => {
            client.shutdown(SHUTDOWN);
            panic!("connected although the certificate is for example.test");
        }
    }
    // The same server is fine when the name checked is the certificate's.
    let client = Client::builder(&server.url("/"))
        .add_root_certificate(pki.ca_der())
        .tls_server_name("example.test")
        .connect()
        .unwrap();
    client.send(Frame::text("right name")).unwrap();
    assert_eq!(next_frame(&client), Frame::text("right name"));
    client.shutdown(SHUTDOWN);
}

fn tls_certificate_from_unknown_ca_is_refused() {
    if !python_ready() {
        return;
    }
    let pki = Pki::new("syncws interop CA");
    let other = Pki::new("some other CA");
    let server = PyServer::start_tls(&["echo"], TlsFiles::new(&pki, &["localhost"]));
    let result = Client::builder(&server.url("/"))
        .add_root_certificate(other.ca_der())
        .connect();
    match result {
        Err(Error::Tls(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer,
        ))) => {}
        Err(e) => panic!("expected Tls(InvalidCertificate(UnknownIssuer)), got {e:?}"),
        Ok(client) => {
            client.shutdown(SHUTDOWN);
            panic!("connected although the server's CA is not trusted");
        }
    }
    // Nothing is trusted by default either (the webpki roots do not include this CA).
    match Client::builder(&server.url("/")).connect() {
        Err(Error::Tls(_)) => {}
        Err(e) => panic!("expected a TLS error, got {e:?}"),
        Ok(client) => {
            client.shutdown(SHUTDOWN);
            panic!("connected to a self-made CA's server without trusting it");
        }
    }
    // The server itself is healthy: trusting its CA works.
    let client = Client::builder(&server.url("/"))
        .add_root_certificate(pki.ca_der())
        .connect()
        .unwrap();
    client.send(Frame::text("trusted now")).unwrap();
    assert_eq!(next_frame(&client), Frame::text("trusted now"));
    client.shutdown(SHUTDOWN);
}

fn main() {
    python_peer::run(&[
        ("echo_text_and_binary_plain", echo_text_and_binary_plain),
        ("echo_text_and_binary_tls", echo_text_and_binary_tls),
        (
            "server_fragmented_messages_reassemble_plain",
            server_fragmented_messages_reassemble_plain,
        ),
        (
            "server_fragmented_messages_reassemble_tls",
            server_fragmented_messages_reassemble_tls,
        ),
        (
            "server_ping_answered_with_same_payload_plain",
            server_ping_answered_with_same_payload_plain,
        ),
        (
            "server_ping_answered_with_same_payload_tls",
            server_ping_answered_with_same_payload_tls,
        ),
        (
            "client_ping_answered_by_server_plain",
            client_ping_answered_by_server_plain,
        ),
        (
            "client_ping_answered_by_server_tls",
            client_ping_answered_by_server_tls,
        ),
        (
            "server_close_codes_reach_client_plain",
            server_close_codes_reach_client_plain,
        ),
        (
            "server_close_codes_reach_client_tls",
            server_close_codes_reach_client_tls,
        ),
        (
            "client_close_codes_reach_server_plain",
            client_close_codes_reach_server_plain,
        ),
        (
            "client_close_codes_reach_server_tls",
            client_close_codes_reach_server_tls,
        ),
        (
            "shutdown_closes_with_normal_code",
            shutdown_closes_with_normal_code,
        ),
        (
            "server_close_without_status_code",
            server_close_without_status_code,
        ),
        (
            "messages_before_server_close_are_delivered",
            messages_before_server_close_are_delivered,
        ),
        (
            "server_drops_connection_without_close_frame",
            server_drops_connection_without_close_frame,
        ),
        (
            "client_close_while_server_streams",
            client_close_while_server_streams,
        ),
        (
            "invalid_utf8_from_server_closes_with_1007",
            invalid_utf8_from_server_closes_with_1007,
        ),
        (
            "message_over_server_limit_closed_with_1009",
            message_over_server_limit_closed_with_1009,
        ),
        (
            "ping_between_fragments_answered",
            ping_between_fragments_answered,
        ),
        (
            "long_close_reason_and_ping_payload_are_truncated",
            long_close_reason_and_ping_payload_are_truncated,
        ),
        (
            "close_with_reserved_code_does_not_send_it",
            close_with_reserved_code_does_not_send_it,
        ),
        (
            "compression_is_never_negotiated",
            compression_is_never_negotiated,
        ),
        (
            "deflate_with_each_parameter_combination",
            deflate_with_each_parameter_combination,
        ),
        ("deflate_bomb_is_a_1009_close", deflate_bomb_is_a_1009_close),
        ("handshake_rejected_401_plain", handshake_rejected_401_plain),
        ("handshake_rejected_503_plain", handshake_rejected_503_plain),
        ("handshake_rejected_401_tls", handshake_rejected_401_tls),
        ("handshake_rejected_503_tls", handshake_rejected_503_tls),
        (
            "request_path_headers_and_subprotocol_plain",
            request_path_headers_and_subprotocol_plain,
        ),
        (
            "request_path_headers_and_subprotocol_tls",
            request_path_headers_and_subprotocol_tls,
        ),
        ("no_common_subprotocol", no_common_subprotocol),
        (
            "tls_certificate_for_wrong_host_is_refused",
            tls_certificate_for_wrong_host_is_refused,
        ),
        (
            "tls_certificate_from_unknown_ca_is_refused",
            tls_certificate_from_unknown_ca_is_refused,
        ),
    ]);
}
