//! The end of a TLS connection: after an orderly WebSocket close the client ends its side of the
//! TLS stream with a `close_notify` alert, so the server can tell a finished stream from a cut
//! one. A rustls server reading past the close handshake gets `Ok(0)` after a `close_notify`
//! and an `UnexpectedEof` error when the client only drops the TCP connection.

mod support;

use std::io::{self, Read, Write};
use std::sync::mpsc;
use std::time::Duration;

use support::{Conn, Pki, TestServer, frame, next_event, raw_accept, read_client_frame};
use syncws::{Client, CloseCode, Event, Initiator};

const WAIT: Duration = Duration::from_secs(10);

/// Who starts the close handshake.
#[derive(Clone, Copy, Debug)]
enum Closer {
    /// `Client::close`.
    ClientClose,
    /// `Client::shutdown`.
    ClientShutdown,
    /// The server sends the first close frame; the client echoes it.
    Server,
}

/// How the client's side of the TLS stream ended, as the server read it.
#[derive(Debug, PartialEq, Eq)]
enum StreamEnd {
    /// `Ok(0)`: a `close_notify` arrived.
    CloseNotify,
    /// A read error (`UnexpectedEof` when the TCP connection ended without `close_notify`).
    Error(io::ErrorKind),
}

/// Reads until the client's side of the stream ends; plaintext after the close frame would be
/// a protocol error, so it fails the test.
fn read_to_end(conn: &mut Conn) -> StreamEnd {
    let mut buf = [0u8; 1024];
    match conn.read(&mut buf) {
        Ok(0) => StreamEnd::CloseNotify,
        Ok(n) => panic!("{n} bytes after the client's close frame"),
        Err(e) => StreamEnd::Error(e.kind()),
    }
}

/// Ends the server's side of the TLS stream too, then drops the connection.
fn close_server_side(conn: Conn) {
    if let Conn::Tls(mut tls) = conn {
        tls.conn.send_close_notify();
        let _ = tls.flush();
    }
}

/// A TLS server that runs one close handshake (started by `closer`) and reports how the
/// client's side of the stream ended after it.
fn orderly_close(closer: Closer) -> StreamEnd {
    let pki = Pki::new("tls close CA");
    let (end_tx, end_rx) = mpsc::channel();
    let server = TestServer::start(
        Some(pki.server_config(&["localhost"])),
        1,
        move |_, mut conn| {
            raw_accept(&mut conn, &[]);
            let mut close_payload = 1000u16.to_be_bytes().to_vec();
            if let Closer::Server = closer {
                close_payload.extend_from_slice(b"bye");
                conn.write_all(&frame(0x88, &close_payload)).unwrap();
                conn.flush().unwrap();
            }
            // The client's close frame: its first frame here (the echo, or the client's close).
            let (b0, payload) = read_client_frame(&mut conn).expect("client close frame");
            assert_eq!(b0, 0x88, "{closer:?}: expected the client's close frame");
            assert_eq!(
                &payload[..2],
                &1000u16.to_be_bytes(),
                "{closer:?}: close code"
            );
            if !matches!(closer, Closer::Server) {
                conn.write_all(&frame(0x88, &payload[..2])).unwrap();
                conn.flush().unwrap();
            }
            end_tx.send(read_to_end(&mut conn)).unwrap();
            close_server_side(conn);
        },
    );
    let client = Client::builder(&server.url("/"))
        .add_root_certificate(pki.ca_der())
        .connect()
        .unwrap();
    match closer {
        Closer::ClientClose => {
            client.close(CloseCode::NORMAL, "done").unwrap();
            let info = next_event(&client, WAIT, |e| match e {
                Event::Closed { info, .. } => Some(*info),
                _ => None,
            });
            assert!(info.clean, "{info:?}");
            assert_eq!(info.initiator, Initiator::Local);
            client.shutdown(WAIT);
        }
        Closer::ClientShutdown => client.shutdown(WAIT),
        Closer::Server => {
            let info = next_event(&client, WAIT, |e| match e {
                Event::Closed { info, .. } => Some(*info),
                _ => None,
            });
            assert!(info.clean, "{info:?}");
            assert_eq!(info.initiator, Initiator::Remote);
            client.shutdown(WAIT);
        }
    }
    let end = end_rx
        .recv_timeout(WAIT)
        .expect("server saw the stream end");
    server.join();
    end
}

#[test]
fn tls_close_notify_is_sent_on_orderly_close() {
    assert_eq!(orderly_close(Closer::ClientClose), StreamEnd::CloseNotify);
}

#[test]
fn tls_close_notify_is_sent_on_orderly_close_by_shutdown() {
    assert_eq!(
        orderly_close(Closer::ClientShutdown),
        StreamEnd::CloseNotify
    );
}

#[test]
fn tls_close_notify_is_sent_after_echoing_a_server_close() {
    assert_eq!(orderly_close(Closer::Server), StreamEnd::CloseNotify);
}
