//! The load: raw WebSocket clients on plain sockets (no library in the measured path).
//!
//! Subscribers are read by one thread with `epoll`, so 1,000 of them cost one thread; each
//! publication carries its send time (nanoseconds since the bench's epoch) in its first eight
//! bytes, so every delivery yields a publish→receive latency. The publisher writes masked frames
//! straight to its socket.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The bench's time origin.
pub fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// A masked client frame.
pub fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let key = [0x5a, 0x17, 0xc3, 0x09];
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
}

/// An upgraded raw connection; with `role`, also sends it and waits for the `ok`.
pub fn open(addr: SocketAddr, role: Option<&str>) -> io::Result<TcpStream> {
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )?;
    let mut head = Vec::new();
    let mut chunk = [0u8; 512];
    while !head.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&chunk[..n]);
    }
    if !head.starts_with(b"HTTP/1.1 101") {
        return Err(io::Error::other(String::from_utf8_lossy(&head).to_string()));
    }
    if let Some(role) = role {
        s.write_all(&masked(0x1, role.as_bytes()))?;
        let mut ok = [0u8; 4];
        s.read_exact(&mut ok)?;
        if ok != [0x81, 2, b'o', b'k'] {
            return Err(io::Error::other(format!("expected ok, got {ok:?}")));
        }
    }
    Ok(s)
}

/// Subscribers read by one epoll thread.
pub struct Subscribers {
    pub delivered: Arc<AtomicU64>,
    recording: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<u64>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub count: usize,
}

impl Subscribers {
    pub fn connect(addr: SocketAddr, n: usize) -> io::Result<Subscribers> {
        let socks = (0..n)
            .map(|_| open(addr, Some("sub")))
            .collect::<io::Result<Vec<_>>>()?;
        let delivered = Arc::new(AtomicU64::new(0));
        let recording = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (delivered, recording, samples, stop) = (
                delivered.clone(),
                recording.clone(),
                samples.clone(),
                stop.clone(),
            );
            thread::Builder::new()
                .name("subscribers".into())
                .spawn(move || read_all(socks, &delivered, &recording, &samples, &stop))?
        };
        Ok(Subscribers {
            delivered,
            recording,
            samples,
            stop,
            thread: Some(thread),
            count: n,
        })
    }

    /// Starts keeping latency samples (cleared).
    pub fn record(&self, on: bool) {
        if on {
            self.samples.lock().unwrap().clear();
        }
        self.recording.store(on, Relaxed);
    }

    pub fn take_samples(&self) -> Vec<u64> {
        std::mem::take(&mut *self.samples.lock().unwrap())
    }

    /// Waits until `target` deliveries were counted or `timeout` passes; true if reached.
    pub fn wait_for(&self, target: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.delivered.load(Relaxed) < target {
            if Instant::now() > deadline {
                return false;
            }
            thread::yield_now();
        }
        true
    }
}

impl Drop for Subscribers {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Reading {
    sock: TcpStream,
    buf: Vec<u8>,
    len: usize,
}

fn read_all(
    socks: Vec<TcpStream>,
    delivered: &AtomicU64,
    recording: &AtomicBool,
    samples: &Mutex<Vec<u64>>,
    stop: &AtomicBool,
) {
    // SAFETY: epoll calls on descriptors owned by `conns` for the whole loop.
    let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(epfd >= 0, "epoll_create1");
    let mut conns: Vec<Reading> = socks
        .into_iter()
        .map(|sock| {
            sock.set_nonblocking(true).unwrap();
            Reading {
                sock,
                buf: vec![0; 64 * 1024],
                len: 0,
            }
        })
        .collect();
    for (i, c) in conns.iter().enumerate() {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: i as u64,
        };
        // SAFETY: as above.
        let rc = unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, c.sock.as_raw_fd(), &mut ev) };
        assert_eq!(rc, 0, "epoll_ctl");
    }
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut local = Vec::new();
    while !stop.load(Relaxed) {
        // SAFETY: `events` has room for its length.
        let n = unsafe { libc::epoll_wait(epfd, events.as_mut_ptr(), events.len() as i32, 50) };
        let rec = recording.load(Relaxed);
        for ev in events.iter().take(n.max(0) as usize) {
            let c = &mut conns[ev.u64 as usize];
            loop {
                match c.sock.read(&mut c.buf[c.len..]) {
                    Ok(0) => break,
                    Ok(k) => c.len += k,
                    Err(_) => break,
                }
                let now = now_ns();
                let mut at = 0;
                let mut frames = 0;
                while let Some((hdr, payload_len)) = header(&c.buf[at..c.len]) {
                    if c.len - at < hdr + payload_len {
                        break;
                    }
                    if rec && payload_len >= 8 {
                        let mut ts = [0u8; 8];
                        ts.copy_from_slice(&c.buf[at + hdr..at + hdr + 8]);
                        local.push(now.saturating_sub(u64::from_le_bytes(ts)));
                    }
                    frames += 1;
                    at += hdr + payload_len;
                }
                c.buf.copy_within(at..c.len, 0);
                c.len -= at;
                delivered.fetch_add(frames, Relaxed);
                if c.len == c.buf.len() {
                    let bigger = c.buf.len() * 2;
                    c.buf.resize(bigger, 0);
                }
            }
        }
        if !local.is_empty() {
            samples.lock().unwrap().append(&mut local);
        }
    }
    // SAFETY: closing our own epoll descriptor.
    unsafe { libc::close(epfd) };
}

/// A server frame's header length and payload length, once the header is complete.
fn header(b: &[u8]) -> Option<(usize, usize)> {
    let len = *b.get(1)? & 0x7F;
    match len {
        126 => Some((4, u16::from_be_bytes([*b.get(2)?, *b.get(3)?]) as usize)),
        127 => {
            let mut be = [0u8; 8];
            be.copy_from_slice(b.get(2..10)?);
            Some((10, u64::from_be_bytes(be) as usize))
        }
        n => Some((2, n as usize)),
    }
}

/// The publisher: frames carrying their send time.
pub struct Publisher {
    sock: TcpStream,
    size: usize,
    out: Vec<u8>,
}

impl Publisher {
    pub fn connect(addr: SocketAddr, size: usize) -> io::Result<Publisher> {
        Ok(Publisher {
            sock: open(addr, Some("pub"))?,
            size: size.max(8),
            out: Vec::new(),
        })
    }

    /// Publishes `n` messages in one write.
    pub fn burst(&mut self, n: usize) -> io::Result<()> {
        self.out.clear();
        let mut payload = vec![0u8; self.size];
        for _ in 0..n {
            payload[..8].copy_from_slice(&now_ns().to_le_bytes());
            self.out.extend_from_slice(&masked(0x2, &payload));
        }
        self.sock.write_all(&self.out)
    }
}
