//! Shared test support: a certificate authority made in the test, a loopback WebSocket server
//! (plain or TLS) whose behaviour each test scripts (and a ready-made echo server), raw frame
//! helpers, test payloads, a line reader for child processes, thread inspection, and waiting
//! helpers that poll a condition against a deadline (never a bare sleep standing in for
//! synchronisation).
#![allow(dead_code)]

pub mod proxy;
pub mod redis;
pub mod tunnel;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ServerConfig, ServerConnection, StreamOwned};
use syncws::{Client, Dispatch, Event};
use tungstenite::Message;

/// A throwaway certificate authority.
pub struct Pki {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A server certificate and key issued by a [`Pki`].
pub struct ServerCert {
    pub cert_der: CertificateDer<'static>,
    pub cert_pem: String,
    pub key_der: Vec<u8>,
    pub key_pem: String,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Pki { issuer }
    }

    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    pub fn ca_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A leaf certificate for `names` (DNS names or IP literals).
    pub fn server_cert(&self, names: &[&str]) -> ServerCert {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let params = CertificateParams::new(names).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        ServerCert {
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            key_der: key.serialize_der(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A rustls server configuration presenting a certificate for `names`.
    pub fn server_config(&self, names: &[&str]) -> Arc<ServerConfig> {
        let leaf = self.server_cert(names);
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf.key_der));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![leaf.cert_der], key)
            .unwrap();
        Arc::new(config)
    }
}

/// An accepted server-side connection, plain or TLS.
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ServerConnection, TcpStream>>),
}

impl Conn {
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(s) => &s.sock,
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}

/// A one-connection loopback server running `handler` on its own thread.
pub struct TestServer {
    pub addr: SocketAddr,
    tls: bool,
    handle: Option<JoinHandle<()>>,
}

impl TestServer {
    /// Plain (`tls = None`) or TLS server accepting `connections` connections in turn, each
    /// handled by `handler(index, conn)` on the server thread.
    pub fn start<F>(tls: Option<Arc<ServerConfig>>, connections: usize, handler: F) -> TestServer
    where
        F: Fn(usize, Conn) + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let is_tls = tls.is_some();
        let handle = thread::Builder::new()
            .name("test-server".into())
            .spawn(move || {
                for i in 0..connections {
                    let Ok((sock, _)) = listener.accept() else {
                        return;
                    };
                    sock.set_nodelay(true).unwrap();
                    let conn = match &tls {
                        None => Conn::Plain(sock),
                        Some(config) => {
                            let server = ServerConnection::new(config.clone()).unwrap();
                            Conn::Tls(Box::new(StreamOwned::new(server, sock)))
                        }
                    };
                    handler(i, conn);
                }
            })
            .unwrap();
        TestServer {
            addr,
            tls: is_tls,
            handle: Some(handle),
        }
    }

    /// The URL to reach this server (`wss://localhost:PORT` for TLS so the name matches).
    pub fn url(&self, path: &str) -> String {
        if self.tls {
            format!("wss://localhost:{}{path}", self.addr.port())
        } else {
            format!("ws://{}{path}", self.addr)
        }
    }

    /// Waits for the handler to finish; panics from the handler fail the test here.
    pub fn join(mut self) {
        if let Some(h) = self.handle.take()
            && let Err(e) = h.join()
        {
            std::panic::resume_unwind(e);
        }
    }
}

/// Completes a tungstenite server handshake on `conn`.
pub fn accept_ws(conn: Conn) -> tungstenite::WebSocket<Conn> {
    tungstenite::accept(conn).expect("server handshake")
}

/// A one-connection echo server (plain with `tls = None`, or TLS): text and binary messages are
/// sent back as they came; a close frame is answered and ends the connection, as does a read
/// error. A failed echo panics on the server thread (and so fails the test at `join`).
pub fn echo_server(tls: Option<Arc<ServerConfig>>) -> TestServer {
    TestServer::start(tls, 1, |_, conn| {
        let mut ws = accept_ws(conn);
        loop {
            match ws.read() {
                Ok(m @ (Message::Text(_) | Message::Binary(_))) => ws.send(m).unwrap(),
                Ok(Message::Close(_)) => {
                    let _ = ws.flush();
                    return;
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    })
}

/// Reads an HTTP upgrade request head from `conn` without answering it. Returns the head.
pub fn read_request(conn: &mut Conn) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        conn.read_exact(&mut byte).expect("request");
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

/// The `101` response for a request head.
pub fn response_101(request: &str) -> Vec<u8> {
    let key = request
        .lines()
        .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
        .expect("key")
        .trim();
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    )
    .into_bytes()
}

/// Reads the request and answers `101` (plus `extra` bytes in the same write).
pub fn raw_accept(conn: &mut Conn, extra: &[u8]) -> String {
    let req = read_request(conn);
    let mut out = response_101(&req);
    out.extend_from_slice(extra);
    conn.write_all(&out).unwrap();
    conn.flush().unwrap();
    req
}

/// An unmasked server frame with the given first byte (FIN/RSV/opcode).
pub fn frame(b0: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![b0];
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= 0xFFFF => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    out
}

/// Reads one masked client frame: returns (first byte, unmasked payload).
pub fn read_client_frame(conn: &mut impl Read) -> io::Result<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    conn.read_exact(&mut h)?;
    assert_eq!(h[1] & 0x80, 0x80, "client frames must be masked");
    let len = match h[1] & 0x7F {
        126 => {
            let mut b = [0u8; 2];
            conn.read_exact(&mut b)?;
            u16::from_be_bytes(b) as usize
        }
        127 => {
            let mut b = [0u8; 8];
            conn.read_exact(&mut b)?;
            u64::from_be_bytes(b) as usize
        }
        n => n as usize,
    };
    let mut mask = [0u8; 4];
    conn.read_exact(&mut mask)?;
    let mut payload = vec![0u8; len];
    conn.read_exact(&mut payload)?;
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
    Ok((h[0], payload))
}

/// Reads one unmasked server frame: returns (first byte, payload).
pub fn read_server_frame(sock: &mut impl Read) -> (u8, Vec<u8>) {
    let mut h = [0u8; 2];
    sock.read_exact(&mut h).unwrap();
    assert_eq!(h[1] & 0x80, 0, "server frames are not masked");
    let len = match h[1] & 0x7F {
        126 => {
            let mut b = [0u8; 2];
            sock.read_exact(&mut b).unwrap();
            u16::from_be_bytes(b) as usize
        }
        127 => {
            let mut b = [0u8; 8];
            sock.read_exact(&mut b).unwrap();
            u64::from_be_bytes(b) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0u8; len];
    sock.read_exact(&mut payload).unwrap();
    (h[0], payload)
}

/// `len` bytes of test data, varied by `seed`.
pub fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Sends each line `reader` yields (a child's stdout, say) on the returned channel, from a
/// thread named `name`, until the reader ends or fails or the receiver is dropped.
pub fn lines_on_channel(name: &str, reader: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, lines) = crossbeam_channel::unbounded();
    thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            for line in BufReader::new(reader).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        })
        .unwrap();
    lines
}

/// Polls `probe` until it returns `Some` or `within` passes (then panics naming `what`).
pub fn wait_until<T>(what: &str, within: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(2));
    }
}

/// Receives events until `pick` returns `Some`, failing after `within`.
pub fn next_event<T: std::fmt::Debug, R>(
    client: &Client<T>,
    within: Duration,
    mut pick: impl FnMut(Event<T>) -> Option<R>,
) -> R {
    let deadline = Instant::now() + within;
    loop {
        match client.events().recv_deadline(deadline) {
            Ok(ev) => {
                if let Some(r) = pick(ev) {
                    return r;
                }
            }
            Err(e) => panic!("no matching event within {within:?}: {e}"),
        }
    }
}

/// The number of threads in this process (Linux).
pub fn thread_count() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("Threads: line")
}

/// The names of the threads in this process (Linux).
pub fn thread_names() -> Vec<String> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task").unwrap() {
        let comm = entry.unwrap().path().join("comm");
        if let Ok(name) = std::fs::read_to_string(comm) {
            names.push(name.trim().to_string());
        }
    }
    names
}

/// True when tests needing an outside peer must run (CI sets `SYNCWS_REQUIRE_PEERS=1`).
pub fn peers_required() -> bool {
    std::env::var("SYNCWS_REQUIRE_PEERS").is_ok_and(|v| v == "1")
}

/// Reports a missing outside peer: a skip locally, a failure when peers are required.
pub fn skip_or_fail(reason: &str) {
    if peers_required() {
        panic!("required peer missing (SYNCWS_REQUIRE_PEERS=1): {reason}");
    }
    eprintln!("SKIPPED: {reason}");
}

/// Every thread of this process with its `/proc/.../status` text (Linux).
pub fn thread_names_with_status() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = entry.unwrap().path();
        if let (Ok(name), Ok(status)) = (
            std::fs::read_to_string(dir.join("comm")),
            std::fs::read_to_string(dir.join("status")),
        ) {
            out.push((name.trim().to_string(), status));
        }
    }
    out
}

/// The dispatch mode the request and reconnect suites run under: the default (actor) unless
/// `SYNCWS_TEST_DISPATCH=inline`. CI runs those suites once in each mode.
#[allow(dead_code)]
pub fn dispatch_under_test() -> Dispatch {
    match std::env::var("SYNCWS_TEST_DISPATCH").as_deref() {
        Ok("inline") => Dispatch::Inline,
        Ok("actor") | Err(_) => Dispatch::Actor,
        Ok(other) => panic!("SYNCWS_TEST_DISPATCH={other}: expected actor or inline"),
    }
}

/// The binary of example `name`, which `cargo test` builds next to the test binaries
/// (`target/<profile>/examples`); built once here when a single test target is run.
#[allow(dead_code)]
pub fn example_bin(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent() // deps
        .and_then(|deps| deps.parent())
        .expect("test binary lives in <target>/<profile>/deps");
    let bin = profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !bin.is_file() {
        // `cargo test --test X` does not build examples (they share the target directory's
        // `debug` folder with the test profile).
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let ok = std::process::Command::new(cargo)
            .args(["build", "--example", name])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "could not build the {name} example");
    }
    assert!(
        bin.is_file(),
        "example binary not found at {}; run `cargo build --example {name}`",
        bin.display()
    );
    bin
}

/// A TCP connection from a chosen local address (bind before connect).
pub fn connect_from(local: &str, to: SocketAddr) -> TcpStream {
    use std::os::fd::FromRawFd;
    let local: std::net::Ipv4Addr = local.parse().unwrap();
    let SocketAddr::V4(to) = to else {
        panic!("IPv4 only")
    };
    // SAFETY: plain socket calls on a descriptor this function owns until it is wrapped.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_addr.s_addr = u32::from(local).to_be();
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        assert_eq!(
            libc::bind(fd, (&raw const sa).cast(), len),
            0,
            "bind {local}"
        );
        sa.sin_port = to.port().to_be();
        sa.sin_addr.s_addr = u32::from(*to.ip()).to_be();
        assert_eq!(libc::connect(fd, (&raw const sa).cast(), len), 0, "connect");
        TcpStream::from_raw_fd(fd)
    }
}

/// Starts example `name` with `--port 0` and `args`; returns the child and the port from its
/// first line (`listening on ws://127.0.0.1:PORT/...`).
pub fn start_example_server(name: &str, args: &[&str]) -> (std::process::Child, u16) {
    let mut child = std::process::Command::new(example_bin(name))
        .args(["--port", "0"])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{name} does not start: {e}"));
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .strip_prefix("listening on ws://127.0.0.1:")
        .and_then(|rest| rest.split('/').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{name}: unexpected first line {line:?}"));
    (child, port)
}

/// A client frame, masked unless `mask` is false.
pub fn client_frame(b0: u8, payload: &[u8], mask: bool) -> Vec<u8> {
    let mut out = vec![b0];
    let m = if mask { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(m | n as u8),
        n if n <= 0xFFFF => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let key = [0x12, 0x34, 0x56, 0x78];
    if mask {
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// Reads an HTTP response head one byte at a time (nothing after it is consumed).
pub fn read_head(sock: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match sock.read(&mut b) {
            Ok(1) => head.push(b[0]),
            other => panic!(
                "response head cut short ({other:?}): {:?}",
                String::from_utf8_lossy(&head)
            ),
        }
    }
    String::from_utf8(head).unwrap()
}
