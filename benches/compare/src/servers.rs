//! The loopback servers the clients are measured against, each on its own thread in this
//! process: a blaster (inbound throughput), a sink (outbound throughput) and an echo responder
//! (round trips), plain or over rustls with a certificate made in the process.
//!
//! They are hand-written on purpose: the blaster writes one pre-encoded buffer of frames over and
//! over, the sink parses frame headers and skips payloads without unmasking them, the echo
//! answers each request with one write. So the server side costs as little as it can and is the
//! same for every client: the differences measured are the clients'.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig, ServerConnection, StreamOwned};

/// A server stops on its own if a client leaves it waiting this long (a stuck bench fails
/// instead of hanging).
const IDLE_LIMIT: Duration = Duration::from_secs(20);

/// Certificates made in this process: a CA, and a server certificate for `localhost` and
/// `127.0.0.1` signed by it.
pub struct Pki {
    pub server: Arc<ServerConfig>,
    pub ca: CertificateDer<'static>,
    /// A rustls client configuration trusting only the CA (raw and tokio clients).
    pub client: Arc<ClientConfig>,
}

impl Pki {
    pub fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "syncws bench CA");
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let leaf = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
        let ca = issuer.der().clone();
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone()).unwrap();
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Pki {
            server: Arc::new(server),
            ca,
            client: Arc::new(client),
        }
    }
}

/// What a server does once the upgrade is done.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// Writes binary frames with `size`-byte payloads as fast as it can until told to stop.
    Blaster { size: usize },
    /// Reads and counts the client's data frames (in [`Shared::received`]).
    Sink,
    /// Answers every data frame with the same payload.
    Echo,
}

/// State shared between a server and the bench driving it.
#[derive(Default)]
pub struct Shared {
    /// Set by the bench: the blaster stops writing and closes the connection.
    pub stop: AtomicBool,
    /// Complete data frames the sink has read.
    pub received: AtomicU64,
}

/// An accepted connection, plain or TLS.
enum Conn {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ServerConnection, TcpStream>>),
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

/// A one-connection server on a free loopback port.
pub struct Server {
    pub addr: SocketAddr,
    pub tls: bool,
    handle: JoinHandle<()>,
}

impl Server {
    /// Starts a server of `kind` on its own thread; it serves one connection and exits.
    pub fn start(kind: Kind, tls: Option<Arc<ServerConfig>>, shared: Arc<Shared>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let is_tls = tls.is_some();
        let handle = thread::Builder::new()
            .name("bench-server".into())
            .spawn(move || {
                let (sock, _) = listener.accept().expect("accept");
                sock.set_nodelay(true).unwrap();
                sock.set_read_timeout(Some(IDLE_LIMIT)).unwrap();
                sock.set_write_timeout(Some(IDLE_LIMIT)).unwrap();
                let mut conn = match tls {
                    None => Conn::Plain(sock),
                    Some(config) => Conn::Tls(Box::new(StreamOwned::new(
                        ServerConnection::new(config).unwrap(),
                        sock,
                    ))),
                };
                if accept(&mut conn).is_err() {
                    return;
                }
                // Errors end the connection: they are how a client that went away shows up.
                let _ = match kind {
                    Kind::Blaster { size } => blast(&mut conn, size, &shared),
                    Kind::Sink => sink(&mut conn, &shared),
                    Kind::Echo => echo(&mut conn),
                };
            })
            .unwrap();
        Server {
            addr,
            tls: is_tls,
            handle,
        }
    }

    /// The URL to reach this server.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://{}/bench", self.addr)
    }

    pub fn join(self) {
        let _ = self.handle.join();
    }
}

/// Reads the upgrade request (byte by byte: the client sends nothing after it until it has the
/// answer) and answers `101`.
fn accept(conn: &mut Conn) -> io::Result<()> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        conn.read_exact(&mut byte)?;
        head.push(byte[0]);
        if head.len() > 16 * 1024 {
            return Err(io::Error::other("request head too long"));
        }
    }
    let head = String::from_utf8_lossy(&head);
    let key = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-key")
                .then(|| value.trim())
        })
        .ok_or_else(|| io::Error::other("no Sec-WebSocket-Key"))?;
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    conn.write_all(response.as_bytes())?;
    conn.flush()
}

/// Appends an unmasked (server) frame.
fn encode(opcode: u8, payload: &[u8], out: &mut Vec<u8>) {
    out.push(0x80 | opcode);
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
}

/// The payload the servers send: recognisable bytes, not zeros.
pub fn payload(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i as u8).wrapping_mul(31)).collect()
}

fn blast(conn: &mut Conn, size: usize, shared: &Shared) -> io::Result<()> {
    // Enough frames for about 256 KiB per write, at least one.
    let one = {
        let mut f = Vec::new();
        encode(0x2, &payload(size), &mut f);
        f
    };
    let count = (256 * 1024 / one.len()).max(1);
    let buf = one.repeat(count);
    while !shared.stop.load(Relaxed) {
        conn.write_all(&buf)?;
    }
    conn.flush()
}

/// A frame header parsed from the front of a buffer.
struct Header {
    opcode: u8,
    /// Bytes of header (including the mask key).
    len: usize,
    payload: usize,
    mask: Option<[u8; 4]>,
}

fn parse_header(b: &[u8]) -> Option<Header> {
    if b.len() < 2 {
        return None;
    }
    let masked = b[1] & 0x80 != 0;
    let (payload, mut len) = match b[1] & 0x7F {
        126 => (
            u16::from_be_bytes(b.get(2..4)?.try_into().ok()?) as usize,
            4,
        ),
        127 => (
            u64::from_be_bytes(b.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    let mask = if masked {
        let m: [u8; 4] = b.get(len..len + 4)?.try_into().ok()?;
        len += 4;
        Some(m)
    } else {
        None
    };
    Some(Header {
        opcode: b[0] & 0x0F,
        len,
        payload,
        mask,
    })
}

const OP_CLOSE: u8 = 0x8;

/// Answers a close frame with a close frame (code 1000) and ends the connection.
fn answer_close(conn: &mut Conn) -> io::Result<()> {
    let mut out = Vec::new();
    encode(OP_CLOSE, &1000u16.to_be_bytes(), &mut out);
    conn.write_all(&out)?;
    conn.flush()
}

fn sink(conn: &mut Conn, shared: &Shared) -> io::Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    let (mut start, mut end) = (0, 0);
    // Payload bytes of the current frame still to skip, and whether it is a data frame.
    let mut skip = 0usize;
    let mut in_data = false;
    loop {
        let mut complete = 0u64;
        loop {
            if skip > 0 {
                let n = skip.min(end - start);
                start += n;
                skip -= n;
                if skip > 0 {
                    break;
                }
                complete += u64::from(in_data);
                in_data = false;
            }
            let Some(h) = parse_header(&buf[start..end]) else {
                break;
            };
            start += h.len;
            if h.opcode == OP_CLOSE {
                shared.received.fetch_add(complete, Relaxed);
                return answer_close(conn);
            }
            in_data = matches!(h.opcode, 0x0..=0x2);
            skip = h.payload;
            if skip == 0 {
                complete += u64::from(in_data);
                in_data = false;
            }
        }
        if complete > 0 {
            shared.received.fetch_add(complete, Relaxed);
        }
        buf.copy_within(start..end, 0);
        end -= start;
        start = 0;
        match conn.read(&mut buf[end..])? {
            0 => return Ok(()),
            n => end += n,
        }
    }
}

fn echo(conn: &mut Conn) -> io::Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    let (mut start, mut end) = (0, 0);
    let mut out = Vec::new();
    loop {
        while let Some(h) = parse_header(&buf[start..end]) {
            if end - start < h.len + h.payload {
                if h.len + h.payload > buf.len() {
                    buf.resize(h.len + h.payload, 0);
                }
                break;
            }
            let body = &mut buf[start + h.len..start + h.len + h.payload];
            if let Some(mask) = h.mask {
                for (i, b) in body.iter_mut().enumerate() {
                    *b ^= mask[i & 3];
                }
            }
            start += h.len + h.payload;
            match h.opcode {
                OP_CLOSE => return answer_close(conn),
                0x1 | 0x2 => encode(h.opcode, body, &mut out),
                _ => {}
            }
        }
        if !out.is_empty() {
            conn.write_all(&out)?;
            conn.flush()?;
            out.clear();
        }
        buf.copy_within(start..end, 0);
        end -= start;
        start = 0;
        match conn.read(&mut buf[end..])? {
            0 => return Ok(()),
            n => end += n,
        }
    }
}
