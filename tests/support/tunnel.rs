//! Proxies of the tests' own, on loopback: an HTTP `CONNECT` proxy (plain or over TLS) and a
//! SOCKS5 proxy, each
//! with or without credentials, and modes that refuse or stall. Each records the target every
//! tunnel asked for (as the client sent it: a name stays a name, proving remote DNS) and pumps
//! bytes both ways on two named threads per tunnel.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;

use rustls::{ServerConfig, ServerConnection, StreamOwned};

/// How a test proxy behaves.
#[derive(Clone, Debug)]
pub enum Mode {
    /// Opens tunnels (checking credentials when set).
    Open(Option<(String, String)>),
    /// Refuses every tunnel: an HTTP status, or a SOCKS5 reply code.
    Refuse(u16),
    /// Accepts the TCP connection and never answers.
    Stall,
}

/// A running test proxy.
pub struct TestProxy {
    pub addr: SocketAddr,
    targets: Arc<Mutex<Vec<String>>>,
}

impl TestProxy {
    /// An HTTP `CONNECT` proxy.
    pub fn http(mode: Mode) -> TestProxy {
        Self::start(mode, http_session)
    }

    /// A SOCKS5 proxy.
    pub fn socks5(mode: Mode) -> TestProxy {
        Self::start(mode, socks5_session)
    }

    /// An HTTP `CONNECT` proxy reached over TLS with `config` (an `https://` proxy).
    pub fn https(mode: Mode, config: Arc<ServerConfig>) -> TestProxy {
        Self::start_with(mode, move |sock, mode, seen| {
            https_session(sock, mode, seen, config.clone())
        })
    }

    /// The targets of the tunnels asked for so far (`host:port` as the client sent them).
    pub fn targets(&self) -> Vec<String> {
        self.targets.lock().unwrap().clone()
    }

    fn start(mode: Mode, session: fn(TcpStream, &Mode, &Mutex<Vec<String>>)) -> TestProxy {
        Self::start_with(mode, session)
    }

    fn start_with(
        mode: Mode,
        session: impl Fn(TcpStream, &Mode, &Mutex<Vec<String>>) + Clone + Send + 'static,
    ) -> TestProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let targets = Arc::new(Mutex::new(Vec::new()));
        let seen = targets.clone();
        thread::Builder::new()
            .name("test-proxy".into())
            .spawn(move || {
                for sock in listener.incoming() {
                    let Ok(sock) = sock else { return };
                    let (mode, seen, session) = (mode.clone(), seen.clone(), session.clone());
                    thread::Builder::new()
                        .name("test-proxy-conn".into())
                        .spawn(move || session(sock, &mode, &seen))
                        .unwrap();
                }
            })
            .unwrap();
        TestProxy { addr, targets }
    }
}

/// Copies both ways until either side ends.
fn pump(client: TcpStream, upstream: TcpStream) {
    let (mut c2, mut u2) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
    let up = thread::Builder::new()
        .name("test-proxy-up".into())
        .spawn(move || {
            let _ = std::io::copy(&mut c2, &mut u2);
            let _ = u2.shutdown(Shutdown::Write);
        })
        .unwrap();
    let (mut u, mut c) = (upstream, client);
    let _ = std::io::copy(&mut u, &mut c);
    let _ = c.shutdown(Shutdown::Write);
    let _ = up.join();
}

fn http_session(mut sock: TcpStream, mode: &Mode, seen: &Mutex<Vec<String>>) {
    if matches!(mode, Mode::Stall) {
        let mut sink = [0u8; 1024];
        while matches!(sock.read(&mut sink), Ok(n) if n > 0) {}
        return;
    }
    if let Some(upstream) = connect_request(&mut sock, mode, seen) {
        pump(sock, upstream);
    }
}

/// An HTTP `CONNECT` proxy over TLS: the handshake, the request and the tunnel all inside one
/// TLS session with the client.
fn https_session(
    sock: TcpStream,
    mode: &Mode,
    seen: &Mutex<Vec<String>>,
    config: Arc<ServerConfig>,
) {
    let mut tls = StreamOwned::new(ServerConnection::new(config).unwrap(), sock);
    if matches!(mode, Mode::Stall) {
        let mut sink = [0u8; 1024];
        while matches!(tls.read(&mut sink), Ok(n) if n > 0) {}
        return;
    }
    if let Some(upstream) = connect_request(&mut tls, mode, seen) {
        pump_tls(tls, upstream);
    }
}

/// Reads a `CONNECT` request and answers it; returns the connection to the target when the
/// tunnel is open.
fn connect_request(
    sock: &mut (impl Read + Write),
    mode: &Mode,
    seen: &Mutex<Vec<String>>,
) -> Option<TcpStream> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if sock.read(&mut b).unwrap_or(0) == 0 {
            return None;
        }
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let target = head
        .strip_prefix("CONNECT ")
        .and_then(|r| r.split(' ').next())
        .unwrap_or("")
        .to_string();
    seen.lock().unwrap().push(target.clone());
    match mode {
        Mode::Refuse(status) => {
            let _ = write!(
                sock,
                "HTTP/1.1 {status} Refused\r\nContent-Length: 0\r\n\r\n"
            );
            let _ = sock.flush();
            None
        }
        Mode::Open(auth) => {
            if let Some((user, pass)) = auth {
                let token = data_encoding::BASE64.encode(format!("{user}:{pass}").as_bytes());
                let wanted = format!("Proxy-Authorization: Basic {token}\r\n");
                if !head.contains(&wanted) {
                    let _ = write!(
                        sock,
                        "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\nContent-Length: 0\r\n\r\n"
                    );
                    let _ = sock.flush();
                    return None;
                }
            }
            let Ok(upstream) = TcpStream::connect(resolve(&target)) else {
                let _ = write!(
                    sock,
                    "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n"
                );
                let _ = sock.flush();
                return None;
            };
            let _ = write!(sock, "HTTP/1.1 200 Connection established\r\n\r\n");
            let _ = sock.flush();
            Some(upstream)
        }
        Mode::Stall => None,
    }
}

/// Copies both ways between a TLS session and a plain socket on this one thread (a TLS session
/// cannot be shared by two threads), taking turns with short read timeouts, until either ends.
fn pump_tls(mut tls: StreamOwned<ServerConnection, TcpStream>, mut upstream: TcpStream) {
    let turn = Some(std::time::Duration::from_millis(1));
    tls.sock.set_read_timeout(turn).unwrap();
    upstream.set_read_timeout(turn).unwrap();
    let idle = |e: &std::io::Error| {
        matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )
    };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tls.read(&mut buf) {
            Ok(0) => break,
            Ok(n) if upstream.write_all(&buf[..n]).is_err() => break,
            Ok(_) => {}
            Err(e) if idle(&e) => {}
            Err(_) => break,
        }
        match upstream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) if tls.write_all(&buf[..n]).and_then(|_| tls.flush()).is_err() => break,
            Ok(_) => {}
            Err(e) if idle(&e) => {}
            Err(_) => break,
        }
    }
    let _ = upstream.shutdown(Shutdown::Both);
    let _ = tls.sock.shutdown(Shutdown::Both);
}

fn socks5_session(mut sock: TcpStream, mode: &Mode, seen: &Mutex<Vec<String>>) {
    if matches!(mode, Mode::Stall) {
        let mut sink = [0u8; 1024];
        while matches!(sock.read(&mut sink), Ok(n) if n > 0) {}
        return;
    }
    let mut hdr = [0u8; 2];
    if sock.read_exact(&mut hdr).is_err() || hdr[0] != 5 {
        return;
    }
    let mut methods = vec![0u8; usize::from(hdr[1])];
    if sock.read_exact(&mut methods).is_err() {
        return;
    }
    let auth = match mode {
        Mode::Open(auth) => auth.clone(),
        _ => None,
    };
    let method = if auth.is_some() { 2 } else { 0 };
    if !methods.contains(&method) {
        let _ = sock.write_all(&[5, 0xFF]);
        return;
    }
    let _ = sock.write_all(&[5, method]);
    if let Some((user, pass)) = auth {
        let mut v = [0u8; 2];
        if sock.read_exact(&mut v).is_err() {
            return;
        }
        let mut u = vec![0u8; usize::from(v[1])];
        let _ = sock.read_exact(&mut u);
        let mut plen = [0u8; 1];
        let _ = sock.read_exact(&mut plen);
        let mut p = vec![0u8; usize::from(plen[0])];
        let _ = sock.read_exact(&mut p);
        let ok = u == user.as_bytes() && p == pass.as_bytes();
        let _ = sock.write_all(&[1, if ok { 0 } else { 1 }]);
        if !ok {
            return;
        }
    }
    let mut req = [0u8; 4];
    if sock.read_exact(&mut req).is_err() {
        return;
    }
    let host = match req[3] {
        1 => {
            let mut a = [0u8; 4];
            let _ = sock.read_exact(&mut a);
            std::net::Ipv4Addr::from(a).to_string()
        }
        3 => {
            let mut len = [0u8; 1];
            let _ = sock.read_exact(&mut len);
            let mut name = vec![0u8; usize::from(len[0])];
            let _ = sock.read_exact(&mut name);
            String::from_utf8_lossy(&name).to_string()
        }
        _ => return,
    };
    let mut port = [0u8; 2];
    let _ = sock.read_exact(&mut port);
    let target = format!("{host}:{}", u16::from_be_bytes(port));
    seen.lock().unwrap().push(target.clone());
    let reply = |sock: &mut TcpStream, code: u8| {
        let _ = sock.write_all(&[5, code, 0, 1, 0, 0, 0, 0, 0, 0]);
    };
    if let Mode::Refuse(code) = mode {
        reply(&mut sock, *code as u8);
        return;
    }
    let Ok(upstream) = TcpStream::connect(resolve(&target)) else {
        reply(&mut sock, 5);
        return;
    };
    reply(&mut sock, 0);
    pump(sock, upstream);
}

/// `host:port` to an address (names resolved here: the proxy does the DNS).
fn resolve(target: &str) -> SocketAddr {
    use std::net::ToSocketAddrs;
    target
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.find(SocketAddr::is_ipv4))
        .unwrap_or_else(|| "127.0.0.1:1".parse().unwrap())
}
