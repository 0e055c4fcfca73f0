//! The opening handshake: custom headers and subprotocols, TLS options (extra roots, a complete
//! rustls config, SNI override, the explicit verification opt-out), timeouts and bad responses.

mod support;

use std::io::Write;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use support::{Pki, TestServer, read_client_frame, read_request, response_101};
use syncws::{Client, Error};

const WAIT: Duration = Duration::from_secs(10);

/// A server that records the request head, answers 101 (plus `extra_headers`) and waits for the
/// client's close frame.
fn recording_server(
    tls: Option<Arc<rustls::ServerConfig>>,
    extra_headers: &'static str,
) -> (TestServer, mpsc::Receiver<String>) {
    let (tx, rx) = mpsc::channel();
    let server = TestServer::start(tls, 1, move |_, mut conn| {
        let req = read_request(&mut conn);
        let mut resp = response_101(&req);
        resp.truncate(resp.len() - 2);
        resp.extend_from_slice(extra_headers.as_bytes());
        resp.extend_from_slice(b"\r\n");
        conn.write_all(&resp).unwrap();
        conn.flush().unwrap();
        tx.send(req).unwrap();
        let _ = read_client_frame(&mut conn);
    });
    (server, rx)
}

#[test]
fn custom_headers_and_subprotocol_are_sent_and_negotiated() {
    let (server, requests) = recording_server(None, "Sec-WebSocket-Protocol: v2.json\r\n");
    let client = Client::builder(&server.url("/stream?id=7"))
        .header("Authorization", "Bearer s3cret")
        .header("X-Api-Key", "k-123")
        .subprotocol("v1.json")
        .subprotocol("v2.json")
        .connect()
        .unwrap();
    let req = requests.recv_timeout(WAIT).unwrap();
    assert!(req.starts_with("GET /stream?id=7 HTTP/1.1\r\n"), "{req}");
    assert!(
        req.contains("\r\nAuthorization: Bearer s3cret\r\n"),
        "{req}"
    );
    assert!(req.contains("\r\nX-Api-Key: k-123\r\n"), "{req}");
    assert!(
        req.contains("\r\nSec-WebSocket-Protocol: v1.json, v2.json\r\n"),
        "{req}"
    );
    assert_eq!(client.protocol(), Some("v2.json"));
    client.shutdown(Duration::from_secs(2));
    server.join();
}

#[test]
fn unrequested_subprotocol_is_an_invalid_handshake() {
    let (server, _requests) = recording_server(None, "Sec-WebSocket-Protocol: evil\r\n");
    let result = Client::builder(&server.url("/"))
        .subprotocol("good")
        .connect();
    assert!(
        matches!(result, Err(Error::InvalidHandshake(_))),
        "{result:?}"
    );
    server.join();
}

#[test]
fn header_injection_is_refused_before_connecting() {
    let result = Client::builder("ws://127.0.0.1:1/")
        .header("X-A", "v\r\nX-Evil: 1")
        .connect();
    assert!(
        matches!(result, Err(Error::InvalidHeader { .. })),
        "{result:?}"
    );
}

#[test]
fn server_that_never_answers_times_out_the_handshake() {
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let server = TestServer::start(None, 1, move |_, mut conn| {
        read_request(&mut conn);
        let _ = release_rx.recv_timeout(WAIT);
    });
    let started = Instant::now();
    let result = Client::builder(&server.url("/"))
        .handshake_timeout(Duration::from_millis(300))
        .connect();
    assert!(
        matches!(result, Err(Error::Timeout("handshake"))),
        "{result:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    release_tx.send(()).unwrap();
    server.join();
}

#[test]
fn complete_rustls_config_is_used_as_given() {
    let pki = Pki::new("config CA");
    let (server, _r) = recording_server(Some(pki.server_config(&["localhost"])), "");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_der()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let client = Client::builder(&server.url("/"))
        .tls_config(Arc::new(config))
        .connect()
        .unwrap();
    client.shutdown(Duration::from_secs(2));
    server.join();
}

#[test]
fn sni_override_lets_an_ip_url_match_a_named_certificate() {
    let pki = Pki::new("sni CA");
    let (server, _r) = recording_server(Some(pki.server_config(&["feed.internal"])), "");
    let url = format!("wss://127.0.0.1:{}/", server.addr.port());
    let client = Client::builder(&url)
        .add_root_certificate(pki.ca_der())
        .tls_server_name("feed.internal")
        .connect()
        .unwrap();
    client.shutdown(Duration::from_secs(2));
    server.join();
}

#[test]
fn verification_opt_out_accepts_an_untrusted_certificate() {
    let pki = Pki::new("untrusted CA");
    let (server, _r) = recording_server(Some(pki.server_config(&["localhost"])), "");
    let client = Client::builder(&server.url("/"))
        .dangerous_disable_certificate_verification()
        .connect()
        .unwrap();
    client.shutdown(Duration::from_secs(2));
    server.join();
}

#[test]
fn pem_roots_parse_and_bad_pem_is_a_config_error() {
    let pki = Pki::new("pem CA");
    let certs = syncws::certificates_from_pem(pki.ca_pem().as_bytes()).unwrap();
    assert_eq!(certs, vec![pki.ca_der()]);
    assert!(matches!(
        syncws::certificates_from_pem(b"nothing here"),
        Err(Error::TlsConfig(_))
    ));
}

#[test]
fn early_data_survives_a_slow_drip_of_the_response_head() {
    // The 101 arrives byte by byte with a frame glued to its end.
    let server = TestServer::start(None, 1, |_, mut conn| {
        let req = read_request(&mut conn);
        let mut bytes = response_101(&req);
        bytes.extend(support::frame(0x82, &[9, 8, 7]));
        for b in bytes {
            conn.write_all(&[b]).unwrap();
        }
        let _ = read_client_frame(&mut conn);
    });
    let client = Client::builder(&server.url("/")).connect().unwrap();
    let got = support::next_event(&client, WAIT, |e| match e {
        syncws::Event::Frame { frame, .. } => Some(frame),
        _ => None,
    });
    assert_eq!(got, syncws::Frame::binary(vec![9, 8, 7]));
    client.shutdown(Duration::from_secs(2));
    server.join();
}
