//! Finding 9: a panicking user callback never leaves a zombie connection. The panic is caught,
//! the connection is torn down with `Cause::CallbackPanicked`, and the client reconnects per
//! its policy; every thread the client started is still joined at shutdown.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::{TestServer, accept_ws, dispatch_under_test, next_event};
use syncws::{
    Backoff, Cause, Client, Data, Dispatch, Endpoint, Event, Frame, Ingress, Keepalive, Precheck,
    Reply, Verdict,
};
use tungstenite::Message;

const WAIT: Duration = Duration::from_secs(10);

/// An echo server for `connections` connections in a row.
fn echo(connections: usize) -> TestServer {
    TestServer::start(None, connections, |_, conn| {
        let mut ws = accept_ws(conn);
        while let Ok(m) = ws.read() {
            if let Message::Text(_) | Message::Binary(_) = m {
                if ws.send(m).is_err() {
                    return;
                }
            }
        }
    })
}

/// Its `parse_reply` panics on the text "boom"; nothing else is a reply.
struct Fragile;

impl Endpoint for Fragile {
    fn subscribe(&mut self, topic: &str) -> Frame {
        Frame::text(topic)
    }
    fn precheck(&self) -> Option<Precheck> {
        Some(Arc::new(|d: Data<'_>| d.as_bytes() == b"boom"))
    }
    fn parse_reply(&mut self, msg: Data<'_>) -> Option<Reply> {
        if msg.as_bytes() == b"boom" {
            panic!("parse_reply cannot handle boom");
        }
        None
    }
}

/// Forwards every message but panics on "bang".
struct FragileIngress;

impl Ingress for FragileIngress {
    type Output = String;
    fn on_message(&mut self, msg: Data<'_>) -> Verdict<String> {
        if msg.as_bytes() == b"bang" {
            panic!("ingress cannot handle bang");
        }
        Verdict::Emit(String::from_utf8_lossy(msg.as_bytes()).into_owned())
    }
}

fn closed_by_panic<T: std::fmt::Debug>(client: &Client<T>) -> (&'static str, String) {
    let (epoch, info, reconnect) = next_event(client, WAIT, |e| match e {
        Event::Closed {
            epoch,
            info,
            reconnect,
        } => Some((epoch, info, reconnect)),
        _ => None,
    });
    assert_eq!(epoch, 1);
    assert!(reconnect.is_some(), "the policy reconnects");
    match info.cause {
        Cause::CallbackPanicked { callback, message } => (callback, message),
        other => panic!("closed by {other:?}, not by the panic"),
    }
}

fn reconnected_and_working<T: std::fmt::Debug>(client: &Client<T>) {
    next_event(client, WAIT, |e| {
        matches!(e, Event::Connected { epoch: 2, .. }).then_some(())
    });
    next_event(client, WAIT, |e| {
        matches!(e, Event::SessionReady { epoch: 2 }).then_some(())
    });
    client.send(Frame::text("after")).unwrap();
}

#[test]
fn a_panicking_endpoint_callback_closes_with_a_typed_cause_and_reconnects() {
    for dispatch in [Dispatch::Actor, Dispatch::Inline] {
        let server = echo(2);
        let client = Client::builder(&server.url("/"))
            .dispatch(dispatch)
            .endpoint(Fragile)
            .keepalive(Keepalive::ServerDriven) // Nothing of ours would notice a silent hang.
            .reconnect(Backoff::new(Duration::from_millis(10), Duration::from_millis(50)).seed(1))
            .connect()
            .unwrap();
        client.send(Frame::text("boom")).unwrap();
        let (callback, message) = closed_by_panic(&client);
        assert!(callback.starts_with("Endpoint"), "{callback}");
        assert_eq!(message, "parse_reply cannot handle boom");
        reconnected_and_working(&client);
        next_event(&client, WAIT, |e| {
            matches!(e, Event::Frame { epoch: 2, frame } if frame == Frame::text("after"))
                .then_some(())
        });
        client.shutdown(Duration::from_secs(2));
        server.join();
    }
}

#[test]
fn a_panicking_ingress_closes_with_a_typed_cause_and_reconnects() {
    let server = echo(2);
    let client = Client::builder(&server.url("/"))
        .dispatch(dispatch_under_test())
        .keepalive(Keepalive::ServerDriven)
        .reconnect(Backoff::new(Duration::from_millis(10), Duration::from_millis(50)).seed(1))
        .connect_with(FragileIngress)
        .unwrap();
    client.send(Frame::text("bang")).unwrap();
    let (callback, message) = closed_by_panic(&client);
    assert_eq!(callback, "Ingress::on_message");
    assert_eq!(message, "ingress cannot handle bang");
    reconnected_and_working(&client);
    next_event(&client, WAIT, |e| {
        matches!(e, Event::Data { epoch: 2, value } if value == "after").then_some(())
    });
    client.shutdown(Duration::from_secs(2));
    server.join();
}
