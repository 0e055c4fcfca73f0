//! permessage-deflate on a realistic JSON feed: inbound messages per second and CPU per message,
//! with and without compression, syncws client on loopback, in one process.
//!
//! The feed: 20,000 ticker messages of about 350 bytes (a channel, a symbol, arrays of
//! prices and sizes, timestamps). The server writes a pre-encoded copy of the whole feed as fast
//! as the socket takes it: plain frames, or frames compressed as a server with context takeover
//! compresses them (raw DEFLATE, sync flush, the tail stripped, RSV1). The client counts messages
//! on its reader thread (an ingress), so the figure is the reader's: read, inflate, validate
//! UTF-8. CPU is the process's user + system time (the server's share is one big write).
//! Rounds alternate the two variants; figures are medians.
//!
//! ```text
//! cargo bench -p syncws-compare --bench deflate -- [--quick]
//! ```

#[path = "stats.rs"]
mod stats;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::thread;
use std::time::{Duration, Instant};

use flate2::{Compress, Compression, FlushCompress};
use syncws::{Client, Data, DeflateParams, Verdict};

const MESSAGES: usize = 20_000;

/// A JSON ticker message, varied by `i`.
fn message(i: usize) -> String {
    let n = 3 + i % 20;
    let prices: Vec<String> = (0..n)
        .map(|k| format!("{:.2}", 27_000.0 + ((i * 7 + k * 13) % 1000) as f64 / 4.0))
        .collect();
    let sizes: Vec<String> = (0..n)
        .map(|k| format!("{:.4}", ((i + k) % 97) as f64 / 8.0))
        .collect();
    format!(
        r#"{{"channel":"ticker","symbol":"BTC-USD","seq":{i},"ts":"2026-12-02T05:{:02}:{:02}.{:06}Z","bids":[{}],"sizes":[{}],"side":"{}","venue":"exchange-sim"}}"#,
        (i / 60) % 60,
        i % 60,
        (i * 7919) % 1_000_000,
        prices.join(","),
        sizes.join(","),
        if i.is_multiple_of(2) { "buy" } else { "sell" }
    )
}

fn header(out: &mut Vec<u8>, b0: u8, len: usize) {
    out.push(b0);
    if len < 126 {
        out.push(len as u8);
    } else if len <= 0xFFFF {
        out.push(126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// The whole feed on the wire: plain, or compressed with context takeover.
fn wire(compressed: bool) -> (Vec<u8>, usize) {
    let mut out = Vec::new();
    let mut raw = 0;
    let mut z = Compress::new(Compression::default(), false);
    let mut buf = Vec::new();
    for i in 0..MESSAGES {
        let m = message(i);
        raw += m.len();
        if compressed {
            buf.clear();
            buf.reserve(m.len() + 64);
            z.compress_vec(m.as_bytes(), &mut buf, FlushCompress::Sync)
                .unwrap();
            while buf.len() == buf.capacity() {
                buf.reserve(1024);
                z.compress_vec(&[], &mut buf, FlushCompress::Sync).unwrap();
            }
            buf.truncate(buf.len() - 4);
            header(&mut out, 0xC1, buf.len());
            out.extend_from_slice(&buf);
        } else {
            header(&mut out, 0x81, m.len());
            out.extend_from_slice(m.as_bytes());
        }
    }
    (out, raw)
}

/// Serves one connection: the upgrade (accepting permessage-deflate when asked), then the feed.
fn serve(listener: &TcpListener, feed: Arc<Vec<u8>>, deflate: bool) -> thread::JoinHandle<()> {
    let listener = listener.try_clone().unwrap();
    thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut b).unwrap();
            head.push(b[0]);
        }
        let head = String::from_utf8_lossy(&head);
        let key = head
            .lines()
            .find_map(|l| {
                l.split_once(':')
                    .filter(|(n, _)| n.eq_ignore_ascii_case("sec-websocket-key"))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap();
        let ext = if deflate {
            "Sec-WebSocket-Extensions: permessage-deflate\r\n"
        } else {
            ""
        };
        write!(
            s,
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n{ext}\r\n",
            tungstenite::handshake::derive_accept_key(key.as_bytes())
        )
        .unwrap();
        let _ = s.write_all(&feed);
        let mut sink = [0u8; 1024];
        while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
    })
}

fn cpu_time() -> Duration {
    // SAFETY: getrusage fills the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |tv: libc::timeval| Duration::new(tv.tv_sec as u64, tv.tv_usec as u32 * 1000);
    t(u.ru_utime) + t(u.ru_stime)
}

/// One run: (messages per second, CPU microseconds per message).
fn run(listener: &TcpListener, feed: &Arc<Vec<u8>>, deflate: bool) -> (f64, f64) {
    let server = serve(listener, feed.clone(), deflate);
    let count = Arc::new(AtomicU64::new(0));
    let seen = count.clone();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    let mut builder = Client::builder(&url).max_message_size(1 << 20);
    if deflate {
        builder = builder.deflate(DeflateParams::default());
    }
    let cpu0 = cpu_time();
    let t0 = Instant::now();
    let client = builder
        .connect_with(move |_m: Data<'_>| -> Verdict<()> {
            seen.fetch_add(1, Relaxed);
            Verdict::Ignore
        })
        .unwrap();
    assert_eq!(client.deflate().is_some(), deflate);
    while count.load(Relaxed) < MESSAGES as u64 {
        assert!(t0.elapsed() < Duration::from_secs(60), "feed not received");
        thread::sleep(Duration::from_micros(200)); // polling a counter
    }
    let took = t0.elapsed();
    let cpu = cpu_time() - cpu0;
    client.shutdown(Duration::from_secs(1));
    let _ = server.join();
    (
        MESSAGES as f64 / took.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / MESSAGES as f64,
    )
}

fn main() {
    stats::self_check();
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds = if quick { 3 } else { 7 };
    let (plain, raw) = wire(false);
    let (compressed, _) = wire(true);
    let (plain, compressed) = (Arc::new(plain), Arc::new(compressed));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut figures = [Vec::new(), Vec::new()];
    for round in 0..rounds {
        for deflate in if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        } {
            let feed = if deflate { &compressed } else { &plain };
            figures[usize::from(deflate)].push(run(&listener, feed, deflate));
        }
    }
    println!(
        "# JSON feed: {MESSAGES} messages, {:.0} B average; on the wire {:.1} MB plain, {:.1} MB compressed ({:.1}%)",
        raw as f64 / MESSAGES as f64,
        plain.len() as f64 / 1e6,
        compressed.len() as f64 / 1e6,
        100.0 * compressed.len() as f64 / plain.len() as f64
    );
    println!("# variant      msgs/s (median)   CPU us/msg (median)");
    for (name, f) in [("plain", &figures[0]), ("deflate", &figures[1])] {
        let rate: Vec<f64> = f.iter().map(|x| x.0).collect();
        let cpu: Vec<f64> = f.iter().map(|x| x.1).collect();
        println!(
            "  {name:<10} {:>14.0} {:>18.2}",
            stats::median(&rate),
            stats::median(&cpu)
        );
    }
}
