//! Echo of text and binary messages, empty to 1 MiB, over plain TCP and TLS, against a
//! tungstenite server; fragmented messages from the server reassemble correctly.

mod support;

use std::io::Write;
use std::time::Duration;

use support::{Pki, TestServer, echo_server, frame, next_event, payload, raw_accept};
use syncws::{Client, Event, Frame};

const WAIT: Duration = Duration::from_secs(10);

fn sizes() -> Vec<usize> {
    vec![0, 1, 125, 126, 127, 65_535, 65_536, 100_000, 1 << 20]
}

fn echo_all_sizes(server: TestServer, builder: syncws::ClientBuilder) {
    let client = builder.connect().unwrap();
    for (i, len) in sizes().into_iter().enumerate() {
        let bin = payload(len, i as u8);
        let text: String = bin.iter().map(|b| char::from(b'a' + b % 26)).collect();
        client.send(Frame::binary(bin.clone())).unwrap();
        client.send(Frame::text(text.clone())).unwrap();
        let got = next_event(&client, WAIT, |e| match e {
            Event::Frame { frame, .. } => Some(frame),
            _ => None,
        });
        assert_eq!(got, Frame::binary(bin), "binary echo of {len} bytes");
        let got = next_event(&client, WAIT, |e| match e {
            Event::Frame { frame, .. } => Some(frame),
            _ => None,
        });
        assert_eq!(got, Frame::text(text), "text echo of {len} bytes");
    }
    client.shutdown(WAIT);
    server.join();
}

#[test]
fn echo_text_and_binary_plain() {
    let server = echo_server(None);
    let builder = Client::builder(&server.url("/")).name("echo-plain");
    echo_all_sizes(server, builder);
}

#[test]
fn echo_text_and_binary_tls() {
    let pki = Pki::new("echo CA");
    let server = echo_server(Some(pki.server_config(&["localhost"])));
    let builder = Client::builder(&server.url("/")).add_root_certificate(pki.ca_der());
    echo_all_sizes(server, builder);
}

#[test]
fn fragmented_messages_reassemble() {
    let big: Vec<u8> = payload(300_000, 7);
    let expected_big = big.clone();
    let server = TestServer::start(None, 1, move |_, mut conn| {
        raw_accept(&mut conn, &[]);
        let mut wire = Vec::new();
        // Text in three fragments with a ping between them.
        wire.extend(frame(0x01, "frag".as_bytes()));
        wire.extend(frame(0x89, b"mid"));
        wire.extend(frame(0x00, "ment".as_bytes()));
        wire.extend(frame(0x80, "ed ✓".as_bytes()));
        // Binary in uneven fragments.
        let (a, rest) = big.split_at(1000);
        let (b, c) = rest.split_at(200_000);
        wire.extend(frame(0x02, a));
        wire.extend(frame(0x00, b));
        wire.extend(frame(0x80, c));
        // Written in small pieces to exercise partial reads.
        for chunk in wire.chunks(777) {
            conn.write_all(chunk).unwrap();
        }
        conn.flush().unwrap();
        let _ = support::read_client_frame(&mut conn); // the pong
        let _ = support::read_client_frame(&mut conn); // the close at shutdown
    });
    let client = Client::builder(&server.url("/")).connect().unwrap();
    let first = next_event(&client, WAIT, |e| match e {
        Event::Frame { frame, .. } => Some(frame),
        _ => None,
    });
    assert_eq!(first, Frame::text("fragmented ✓"));
    let second = next_event(&client, WAIT, |e| match e {
        Event::Frame { frame, .. } => Some(frame),
        _ => None,
    });
    assert_eq!(second, Frame::binary(expected_big));
    client.shutdown(Duration::from_secs(2));
    server.join();
}

/// Issue 11: the default client (no endpoint) has no way to match a response, so a `Confirmed`
/// request is refused at once with a typed reason instead of timing out silently; a `Sent`
/// request needs no matching and goes out.
#[test]
fn a_client_that_cannot_match_responses_refuses_confirmed_requests_at_once() {
    use syncws::{ConfirmMode, Outcome, Request, Undelivered};
    let server = echo_server(None);
    let client = Client::builder(&server.url("/")).connect().unwrap();
    let started = std::time::Instant::now();
    let outcome = client.send_and_confirm(Request::new(1, 1, Frame::text("order")));
    assert_eq!(outcome, Outcome::NotDelivered(Undelivered::CannotConfirm));
    assert!(started.elapsed() < Duration::from_secs(1), "at once");
    let sent = Request::new(2, 2, Frame::text("order 2")).mode(ConfirmMode::Sent);
    assert_eq!(client.send_and_confirm(sent), Outcome::Sent);
    let echoed = next_event(&client, WAIT, |e| match e {
        Event::Frame { frame, .. } => Some(frame),
        _ => None,
    });
    assert_eq!(
        echoed,
        Frame::text("order 2"),
        "only the Sent request went out"
    );
    client.shutdown(Duration::from_secs(1));
    server.join();
}
