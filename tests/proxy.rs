//! Connecting through proxies of the tests' own (`tests/support/tunnel.rs`): HTTP `CONNECT`
//! (plain, and over TLS to the proxy) and SOCKS5, with and without credentials, plain and TLS
//! to the server; proxies that refuse and that stall; reconnects through the proxy again.

mod support;

use std::time::{Duration, Instant};

use support::tunnel::{Mode, TestProxy};
use support::{Pki, echo_server, next_event};
use syncws::{Backoff, Client, Error, Event, Frame, Proxy, ProxyKind};

const WAIT: Duration = Duration::from_secs(10);

fn echo_once(client: &Client<std::convert::Infallible>) {
    client.send(Frame::text("through the proxy")).unwrap();
    let got = next_event(client, WAIT, |e| match e {
        Event::Frame { frame, .. } => Some(frame),
        _ => None,
    });
    assert_eq!(got, Frame::text("through the proxy"));
}

fn proxy_of(kind: ProxyKind, p: &TestProxy) -> Proxy {
    match kind {
        ProxyKind::Http => Proxy::http("127.0.0.1", p.addr.port()),
        ProxyKind::Socks5 => Proxy::socks5("127.0.0.1", p.addr.port()),
    }
}

/// The proxies of the main test: HTTP `CONNECT`, SOCKS5, and HTTP `CONNECT` over TLS to the
/// proxy (`https://`, by its certificate's name).
#[derive(Clone, Copy, Debug)]
enum Flavour {
    Http,
    Socks5,
    Https,
}

impl Flavour {
    fn start(self, mode: Mode, pki: &Pki) -> TestProxy {
        match self {
            Flavour::Http => TestProxy::http(mode),
            Flavour::Socks5 => TestProxy::socks5(mode),
            Flavour::Https => TestProxy::https(mode, pki.server_config(&["localhost"])),
        }
    }

    fn proxy(self, p: &TestProxy) -> Proxy {
        match self {
            Flavour::Http => proxy_of(ProxyKind::Http, p),
            Flavour::Socks5 => proxy_of(ProxyKind::Socks5, p),
            Flavour::Https => {
                let url = format!("https://localhost:{}", p.addr.port());
                let proxy = Proxy::parse(&url).unwrap();
                assert!(proxy.is_tls());
                proxy
            }
        }
    }
}

fn start(kind: ProxyKind, mode: Mode) -> TestProxy {
    match kind {
        ProxyKind::Http => TestProxy::http(mode),
        ProxyKind::Socks5 => TestProxy::socks5(mode),
    }
}

/// Each proxy kind, without and with credentials, to a plain and a TLS server. Through an
/// `https://` proxy, TLS to the proxy itself (verified with the test CA, by the proxy's own
/// name) carries a plain server (its bytes are the proxy session's plaintext) or a TLS server
/// (TLS inside TLS). A 200 KB message each way too: many records inside the tunnel's.
#[test]
fn tunnels_carry_plain_and_tls_with_and_without_credentials() {
    let pki = Pki::new("proxy CA");
    for kind in [Flavour::Http, Flavour::Socks5, Flavour::Https] {
        for auth in [None, Some(("trader", "s3cret:pw"))] {
            for tls in [false, true] {
                let server = echo_server(tls.then(|| pki.server_config(&["localhost"])));
                let creds = auth.map(|(u, p)| (u.to_string(), p.to_string()));
                let proxy = kind.start(Mode::Open(creds), &pki);
                let mut p = kind.proxy(&proxy);
                if let Some((u, pw)) = auth {
                    p = p.auth(u, pw);
                }
                let client = Client::builder(&server.url("/"))
                    .add_root_certificate(pki.ca_der())
                    .proxy(p)
                    .connect()
                    .unwrap_or_else(|e| panic!("{kind:?} auth={} tls={tls}: {e}", auth.is_some()));
                echo_once(&client);
                let big = "x".repeat(200_000);
                client.send(Frame::text(big.clone())).unwrap();
                let got = next_event(&client, WAIT, |e| match e {
                    Event::Frame { frame, .. } => Some(frame),
                    _ => None,
                });
                assert_eq!(got, Frame::text(big), "{kind:?} tls={tls}");
                client.shutdown(WAIT);
                server.join();
                // The name went to the proxy as a name: the proxy resolved it.
                let want = if tls {
                    format!("localhost:{}", server_port(&proxy))
                } else {
                    format!("127.0.0.1:{}", server_port(&proxy))
                };
                assert_eq!(proxy.targets(), vec![want], "{kind:?} tls={tls}");
            }
        }
    }
}

fn server_port(proxy: &TestProxy) -> u16 {
    let t = proxy.targets();
    t[0].rsplit(':').next().unwrap().parse().unwrap()
}

#[test]
fn wrong_credentials_are_a_typed_refusal() {
    let server = echo_server(None);
    for kind in [ProxyKind::Http, ProxyKind::Socks5] {
        let proxy = start(kind, Mode::Open(Some(("u".into(), "right".into()))));
        let err = Client::builder(&server.url("/"))
            .proxy(proxy_of(kind, &proxy).auth("u", "wrong"))
            .connect()
            .unwrap_err();
        match (&kind, &err) {
            (ProxyKind::Http, Error::ProxyRefused { code: 407, .. }) => {}
            (ProxyKind::Socks5, Error::ProxyRefused { code: 0x101, .. }) => {}
            _ => panic!("{kind:?}: {err:?}"),
        }
        assert!(!err.is_transient(), "credentials will not fix themselves");
        // No credentials at all for a proxy that wants them.
        let err = Client::builder(&server.url("/"))
            .proxy(proxy_of(kind, &proxy))
            .connect()
            .unwrap_err();
        assert!(
            matches!(err, Error::ProxyRefused { .. }),
            "{kind:?}: {err:?}"
        );
    }
}

#[test]
fn refusing_proxies_say_why() {
    let server = echo_server(None);
    let http = TestProxy::http(Mode::Refuse(403));
    let err = Client::builder(&server.url("/"))
        .proxy(proxy_of(ProxyKind::Http, &http))
        .connect()
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::ProxyRefused {
                code: 403,
                kind: ProxyKind::Http,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!err.is_transient());
    let gateway = TestProxy::http(Mode::Refuse(502));
    let err = Client::builder(&server.url("/"))
        .proxy(proxy_of(ProxyKind::Http, &gateway))
        .connect()
        .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    let socks = TestProxy::socks5(Mode::Refuse(5));
    let err = Client::builder(&server.url("/"))
        .proxy(proxy_of(ProxyKind::Socks5, &socks))
        .connect()
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::ProxyRefused {
                code: 5,
                kind: ProxyKind::Socks5,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_transient());
    assert!(err.to_string().contains("connection refused"), "{err}");
}

#[test]
fn a_stalling_proxy_is_cut_off_by_the_handshake_deadline() {
    let pki = Pki::new("proxy CA");
    // A listener that accepts and never answers: an https:// proxy stalling its TLS handshake.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_tls = Proxy::https("localhost", silent.local_addr().unwrap().port());
    let stalls = [Flavour::Http, Flavour::Socks5, Flavour::Https].map(|kind| {
        let stall = kind.start(Mode::Stall, &pki);
        (format!("{kind:?}"), kind.proxy(&stall), Some(stall))
    });
    let tls_handshake = ("https, TLS handshake".to_string(), silent_tls, None);
    for (what, proxy, _running) in stalls.into_iter().chain([tls_handshake]) {
        let started = Instant::now();
        let err = Client::builder("ws://127.0.0.1:9/")
            .handshake_timeout(Duration::from_millis(400))
            .add_root_certificate(pki.ca_der())
            .proxy(proxy)
            .connect()
            .unwrap_err();
        let took = started.elapsed();
        assert!(matches!(err, Error::Timeout(_)), "{what}: {err:?}");
        assert!(
            took >= Duration::from_millis(350) && took < Duration::from_secs(3),
            "{what}: {took:?}"
        );
    }
}

/// A server that drops the first connection: the client reconnects through the proxy again.
#[test]
fn reconnects_go_through_the_proxy_again() {
    let server = support::TestServer::start(None, 2, |i, conn| {
        let mut ws = support::accept_ws(conn);
        if i == 0 {
            drop(ws); // gone without a close frame
            return;
        }
        loop {
            match ws.read() {
                Ok(m @ tungstenite::Message::Text(_)) => ws.send(m).unwrap(),
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    let proxy = TestProxy::socks5(Mode::Open(None));
    let client = Client::builder(&server.url("/"))
        .proxy(proxy_of(ProxyKind::Socks5, &proxy))
        .reconnect(Backoff::new(Duration::from_millis(10), Duration::from_millis(50)).seed(1))
        .connect()
        .unwrap();
    // Ready to send once the session is restored (`Connected` comes just before).
    next_event(&client, WAIT, |e| match e {
        Event::SessionReady { epoch: 2 } => Some(()),
        _ => None,
    });
    echo_once(&client);
    assert_eq!(proxy.targets().len(), 2, "{:?}", proxy.targets());
    client.shutdown(WAIT);
}

/// An `https://` proxy's certificate is checked like a server's, and a refusal inside its TLS
/// session is still a typed refusal with its status.
#[test]
fn https_proxies_are_verified_and_their_refusals_typed() {
    let pki = Pki::new("proxy CA");
    // The proxy's certificate is checked: an untrusted one fails like a server's would.
    let other = Pki::new("someone else's CA");
    let proxy = TestProxy::https(Mode::Open(None), other.server_config(&["localhost"]));
    let server = echo_server(None);
    let err = Client::builder(&server.url("/"))
        .add_root_certificate(pki.ca_der())
        .proxy(Proxy::https("localhost", proxy.addr.port()))
        .connect()
        .unwrap_err();
    assert!(matches!(err, Error::Tls(_)), "{err:?}");
    assert!(
        proxy.targets().is_empty(),
        "no CONNECT before the proxy is verified"
    );
    // A refusal inside the TLS session is still a typed refusal with its status.
    let refusing = TestProxy::https(Mode::Refuse(403), pki.server_config(&["localhost"]));
    let err = Client::builder(&server.url("/"))
        .add_root_certificate(pki.ca_der())
        .proxy(Proxy::https("localhost", refusing.addr.port()))
        .connect()
        .unwrap_err();
    assert!(
        matches!(err, Error::ProxyRefused { code: 403, .. }),
        "{err:?}"
    );
}
