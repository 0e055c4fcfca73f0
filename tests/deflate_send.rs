//! permessage-deflate on the sending side (issue 14), seen on the wire by raw peers: the client
//! compresses long messages (RSV1, masked, inflating to the message) and sends short ones as they
//! are; the hub sends a message compressed to a client that accepted the extension and plain to
//! one that did not. Each compressed message stands alone, so a fresh inflater decodes it.
//! (The Python interop suite checks the same messages against an independent implementation.)

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::Duration;

use flate2::{Decompress, FlushDecompress};
use support::{Conn, TestServer, client_frame, read_client_frame, read_head, read_request};
use syncws::hub::{Conn as HubConn, Handler, Hub, HubConfig, Message};
use syncws::{Client, Data, DeflateParams, Frame};

const WAIT: Duration = Duration::from_secs(10);

fn json() -> String {
    r#"{"channel":"trades","price":101.25,"qty":3,"side":"buy"}"#.repeat(60)
}

/// Inflates one message compressed on its own (raw DEFLATE, the `00 00 ff ff` tail restored).
fn inflate(compressed: &[u8]) -> Vec<u8> {
    let mut z = Decompress::new(false);
    let mut input = compressed.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(1 << 20);
    z.decompress_vec(&input, &mut out, FlushDecompress::Sync)
        .expect("valid DEFLATE");
    assert_eq!(z.total_in() as usize, input.len(), "all input used");
    out
}

/// Answers the upgrade with permessage-deflate (and `params`), then reports `frames` client
/// frames as (first byte, unmasked payload).
fn deflate_server(
    params: &'static str,
    frames: usize,
) -> (TestServer, mpsc::Receiver<(u8, Vec<u8>)>) {
    let (tx, rx) = mpsc::channel();
    let server = TestServer::start(None, 1, move |_, mut conn: Conn| {
        let request = read_request(&mut conn);
        assert!(request.contains("permessage-deflate"), "{request}");
        let mut response = String::from_utf8(support::response_101(&request)).unwrap();
        response.truncate(response.len() - 2);
        response.push_str(&format!(
            "Sec-WebSocket-Extensions: permessage-deflate{params}\r\n\r\n"
        ));
        conn.write_all(response.as_bytes()).unwrap();
        for _ in 0..frames {
            let Ok(frame) = read_client_frame(&mut conn) else {
                return;
            };
            tx.send(frame).unwrap();
        }
    });
    (server, rx)
}

#[test]
fn the_client_compresses_long_messages_and_sends_short_ones_as_they_are() {
    let (server, frames) = deflate_server("", 3);
    let client = Client::builder(&server.url("/"))
        .deflate(DeflateParams::default())
        .connect()
        .unwrap();
    let json = json();
    client.send(Frame::text(json.clone())).unwrap();
    client.send(Frame::text("short")).unwrap();
    client
        .send(Frame::binary(json.as_bytes().repeat(2)))
        .unwrap();
    let (b0, payload) = frames.recv_timeout(WAIT).unwrap();
    assert_eq!(b0, 0x80 | 0x40 | 0x1, "FIN, RSV1, text");
    assert!(
        payload.len() < json.len() / 5,
        "{} of {}",
        payload.len(),
        json.len()
    );
    assert_eq!(inflate(&payload), json.as_bytes());
    assert_eq!(
        frames.recv_timeout(WAIT).unwrap(),
        (0x81, b"short".to_vec())
    );
    let (b0, payload) = frames.recv_timeout(WAIT).unwrap();
    assert_eq!(b0, 0x80 | 0x40 | 0x2, "FIN, RSV1, binary");
    assert_eq!(inflate(&payload), json.as_bytes().repeat(2));
    client.shutdown(Duration::from_secs(1));
    server.join();
}

#[test]
fn a_window_zlib_cannot_keep_to_means_no_compression() {
    let (server, frames) = deflate_server("; client_max_window_bits=8", 1);
    let client = Client::builder(&server.url("/"))
        .deflate(DeflateParams::default())
        .connect()
        .unwrap();
    assert_eq!(client.deflate().unwrap().client_max_window_bits, Some(8));
    let json = json();
    client.send(Frame::text(json.clone())).unwrap();
    assert_eq!(
        frames.recv_timeout(WAIT).unwrap(),
        (0x81, json.into_bytes())
    );
    client.shutdown(Duration::from_secs(1));
    server.join();
}

/// Sends one shared message to every connection that says `go`.
struct Broadcast(Message);

impl Handler for Broadcast {
    fn on_message(&self, conn: &HubConn, message: Data<'_>) {
        if message.as_bytes() == b"go" {
            let _ = conn.send(&self.0);
        }
    }
}

/// A raw client: upgrades (offering `extensions`, if any), says `go`, returns the first frame
/// the hub sends (first byte, payload) and the extension the hub agreed to.
fn raw_client(addr: std::net::SocketAddr, extensions: Option<&str>) -> ((u8, Vec<u8>), String) {
    let mut sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    let offer = extensions.map_or(String::new(), |e| {
        format!("Sec-WebSocket-Extensions: {e}\r\n")
    });
    write!(
        sock,
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{offer}\r\n"
    )
    .unwrap();
    let head = read_head(&mut sock);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let agreed = head
        .lines()
        .find_map(|l| l.strip_prefix("Sec-WebSocket-Extensions: "))
        .unwrap_or("")
        .to_string();
    sock.write_all(&client_frame(0x81, b"go", true)).unwrap();
    (support::read_server_frame(&mut sock), agreed)
}

#[test]
fn the_hub_sends_one_message_compressed_or_plain_by_what_each_client_accepted() {
    let json = json();
    let config = HubConfig {
        deflate: true,
        ping_interval: None,
        ..HubConfig::default()
    };
    let hub = Hub::bind("127.0.0.1:0", config, Broadcast(Message::text(&json))).unwrap();
    let addr = hub.local_addr();
    let ((b0, payload), agreed) = raw_client(addr, Some("permessage-deflate"));
    assert!(agreed.starts_with("permessage-deflate"), "{agreed}");
    assert_eq!(b0, 0x80 | 0x40 | 0x1, "FIN, RSV1, text");
    assert!(payload.len() < json.len() / 5);
    assert_eq!(inflate(&payload), json.as_bytes());
    // The same message again (its compressed form already made): the same bytes.
    let ((b0_again, again), _) = raw_client(addr, Some("permessage-deflate"));
    assert_eq!((b0_again, &again), (b0, &payload));
    // A client without the extension, and one that limits the hub's window: plain.
    for offer in [None, Some("permessage-deflate; server_max_window_bits=10")] {
        let ((b0, payload), _) = raw_client(addr, offer);
        assert_eq!(b0, 0x81, "{offer:?}");
        assert_eq!(payload, json.as_bytes(), "{offer:?}");
    }
    hub.shutdown(Duration::from_secs(2));
}
