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
            if let Message::Text(_) | Message::Binary(_) = m
                && ws.send(m).is_err()
            {
                return;
            }
        }
    })
}

/// Its `parse_reply` panics on the text "boom"; nothing else is a reply.
struct Fragile;

impl Endpoint for Fragile {
    fn subscribe(&mut self, topic: &str) -> Option<Frame> {
        Some(Frame::text(topic))
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

/// A custom certificate verifier that accepts the first server and panics on the second
/// handshake, as a buggy user callback on the dial thread would.
#[derive(Debug)]
struct PanicsOnSecondDial {
    dials: std::sync::atomic::AtomicUsize,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for PanicsOnSecondDial {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if self.dials.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 1 {
            panic!("verifier cannot handle this certificate");
        }
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A dial thread whose user callback panics (here a custom TLS verifier on a reconnect) is
/// collected: the attempt fails with a typed cause instead of leaving the client connecting
/// for ever, and shutdown still joins every thread.
#[test]
fn a_panicking_dial_is_reported_not_left_connecting() {
    let pki = support::Pki::new("syncws-test-ca");
    let server = TestServer::start(Some(pki.server_config(&["localhost"])), 2, |i, conn| {
        if let Ok(mut ws) = tungstenite::accept(conn)
            && i == 0
        {
            let _ = ws.close(None); // Connection 1 ends: the client reconnects.
            while ws.read().is_ok() {}
        }
    });
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(PanicsOnSecondDial {
        dials: Default::default(),
        provider: provider.clone(),
    });
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    tls.resumption = rustls::client::Resumption::disabled(); // Verify on every dial.
    let client = Client::builder(&server.url("/"))
        .name("dialpanic")
        .dispatch(dispatch_under_test())
        .tls_config(Arc::new(tls))
        .keepalive(Keepalive::ServerDriven)
        .reconnect(Backoff::new(Duration::from_millis(10), Duration::from_millis(50)).seed(1))
        .connect()
        .unwrap();
    let attempt = next_event(&client, WAIT, |e| match e {
        Event::ConnectFailed { attempt, cause, .. } => Some((attempt, cause.to_string())),
        _ => None,
    });
    assert_eq!(attempt.0, 2, "{attempt:?}");
    assert!(attempt.1.contains("panicked"), "{attempt:?}");
    client.shutdown(Duration::from_secs(2));
    // Every thread is joined; a joined thread's task may stay listed in /proc for a moment.
    support::wait_until("every client thread joined", Duration::from_secs(2), || {
        (!support::thread_names()
            .iter()
            .any(|n| n.starts_with("dialpanic")))
        .then_some(())
    });
    server.join();
}
