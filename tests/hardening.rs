//! Regression tests for hardening findings, end to end over loopback sockets.
//!
//! Each test is named after its finding.

mod support;

use std::io::Write;
use std::sync::mpsc;
use std::time::Duration;

use support::{TestServer, next_event, raw_accept, read_client_frame};
use syncws::{Cause, Client, CloseCode, Error, Event};

const WAIT: Duration = Duration::from_secs(10);

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
