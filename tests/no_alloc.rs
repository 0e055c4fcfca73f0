//! Steady state allocates nothing per frame (plain TCP; rustls allocates per TLS record
//! internally):
//!
//! - inbound, up to the ingress: nothing at all;
//! - inbound, the default `Event::Frame` path: nothing either. Each frame is a view of the read
//!   buffer; when the reader has used up a buffer while the application still holds a view of
//!   it, it switches to one of the buffers it used before whose views are all gone (its pool of
//!   spares), which this test's consumer, dropping each frame as it comes, always leaves. A
//!   consumer lagging by more than the pool (4 MiB by default) would cost a fresh buffer (and
//!   the shared header `bytes` makes for it) per buffer's worth of input, never per frame;
//! - outbound, a prepared frame or a shared `Bytes` payload: nothing; an owned `Vec` payload:
//!   exactly the caller's own allocation of the `Vec`, nothing more.
//!
//! A counting global allocator counts every allocation in the process (all threads) while
//! 50,000 frames flow after a warm-up; the servers here read and write from fixed buffers so
//! that any count comes from syncws (or the test's own `vec!`).
//!
//! Inbound, the consumer here polls every 2 ms, so the event channel fills and empties over and
//! over. The reader's pools (read buffers and event batches) grow to the most this lag has
//! needed so far, and a window in which the lag reaches a new high allocates once per new
//! buffer (64 KiB) or batch (32 events): after a warm-up that is at most a few dozen, and less
//! in each window. So the inbound checks measure up to [`WINDOWS`] windows of 50,000 frames in a
//! row and require one of them to stay within [`NOISE`]; an allocation per frame, per read or
//! per batch would show in every window.
//!
//! One test function runs every check in sequence (a separate process from other tests).

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use support::{read_request, response_101, wait_until};
use syncws::{Bytes, Client, Data, Endpoint, Event, Frame, Keepalive, PreparedFrame, Verdict};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const WARMUP: u64 = 20_000;
const MEASURED: u64 = 50_000;
const WAIT: Duration = Duration::from_secs(30);
/// Most inbound windows measured before one must be free of allocations.
const WINDOWS: u64 = 5;

fn allocations() -> u64 {
    ALLOCATIONS.load(Ordering::SeqCst)
}

/// A thread allocates while it starts (its name, its signal stack), and a started thread can
/// still be waiting to run its start routine. So before measuring, make every client thread do
/// observable work: a subscription goes user → coordinator → writer → socket (the endpoint
/// sends the topic as a 1-byte text frame), and the reader has already delivered the warm-up
/// frames.
fn exercise_every_thread<T>(client: &Client<T>) {
    let before = client.stats().messages_out;
    client.subscribe("w").unwrap();
    wait_until("the subscription written", WAIT, || {
        (client.stats().messages_out > before).then_some(())
    });
}

/// Subscribes by sending the topic as a text frame.
struct TopicAsText;

impl Endpoint for TopicAsText {
    fn subscribe(&mut self, topic: &str) -> Option<Frame> {
        Some(Frame::text(topic))
    }
}

/// Wire size of the warm-up subscription frame: 2 header bytes, 4 mask bytes, 1 payload byte.
const SUBSCRIPTION_WIRE: u64 = 7;

/// How the inbound test's client consumes messages.
#[derive(Clone, Copy, Debug)]
enum Consume {
    /// An ingress counts them on the reader thread.
    Ingress,
    /// The default `connect()`: `Event::Frame`s received on this thread.
    Frames,
}

/// The server streams 64-byte binary frames from one prebuilt buffer: the warm-up, then one
/// window of `MEASURED` frames each time the test asks. Returns the allocations of each
/// window measured, up to the first that is within [`NOISE`].
fn inbound(consume: Consume) -> Vec<u64> {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    // Windows asked for by the test (an atomic, so that asking allocates nothing).
    let asked = Arc::new(AtomicU64::new(0));
    let server_asked = asked.clone();
    let server = std::thread::spawn(move || {
        let (mut sock, _) = listener.accept().unwrap();
        let req = read_request_plain(&mut sock);
        sock.write_all(&response_101(&req)).unwrap();
        let mut batch = Vec::new();
        for _ in 0..1000 {
            batch.extend(support::frame(0x82, &[7u8; 64]));
        }
        for _ in 0..WARMUP / 1000 {
            sock.write_all(&batch).unwrap();
        }
        for window in 1..=WINDOWS {
            // Until the test asks for this window, or says it needs no more.
            let go = loop {
                match server_asked.load(Ordering::SeqCst) {
                    u64::MAX => break false,
                    n if n >= window => break true,
                    _ => std::thread::sleep(Duration::from_millis(1)),
                }
            };
            if !go {
                break;
            }
            for _ in 0..MEASURED / 1000 {
                sock.write_all(&batch).unwrap();
            }
        }
        // Hold the connection until the client closes it.
        let mut sink = [0u8; 1024];
        while matches!(sock.read(&mut sink), Ok(n) if n > 0) {}
    });
    let seen = Arc::new(AtomicU64::new(0));
    let counter = seen.clone();
    let builder = Client::builder(&url)
        .name("na-in")
        .endpoint(TopicAsText)
        .keepalive(Keepalive::ServerDriven);
    let client = match consume {
        Consume::Ingress => builder.connect_with(move |msg: Data<'_>| {
            counter.fetch_add(msg.as_bytes().len() as u64 / 64, Ordering::Relaxed);
            Verdict::<Infallible>::Ignore
        }),
        Consume::Frames => builder.connect(),
    }
    .unwrap();
    // Frames are received (and dropped at once) on this thread.
    let receive_until = |what: &str, total: u64| {
        wait_until(what, WAIT, || {
            while let Ok(event) = client.events().try_recv() {
                if let Event::Frame {
                    frame: Frame::Binary(b),
                    ..
                } = event
                {
                    seen.fetch_add(b.len() as u64 / 64, Ordering::Relaxed);
                }
            }
            (seen.load(Ordering::SeqCst) == total).then_some(())
        })
    };
    receive_until("warm-up frames", WARMUP);
    let mut windows = Vec::with_capacity(WINDOWS as usize);
    for window in 1..=WINDOWS {
        let before = allocations();
        asked.store(window, Ordering::SeqCst);
        receive_until("measured frames", WARMUP + window * MEASURED);
        let during = allocations() - before;
        windows.push(during);
        if during <= NOISE {
            break;
        }
    }
    // The server stops asking for more (it may be waiting for the next window).
    asked.store(u64::MAX, Ordering::SeqCst);
    client.shutdown(Duration::from_secs(1));
    server.join().unwrap();
    windows
}

/// The client sends 64-byte frames with `send_one`; the server counts bytes into a fixed buffer.
fn outbound(send_one: impl Fn(&Client<Infallible>)) -> u64 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    let received = Arc::new(AtomicU64::new(0));
    let server_received = received.clone();
    let server = std::thread::spawn(move || {
        let (mut sock, _) = listener.accept().unwrap();
        let req = read_request_plain(&mut sock);
        sock.write_all(&response_101(&req)).unwrap();
        let mut buf = [0u8; 64 * 1024];
        loop {
            match sock.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    server_received.fetch_add(n as u64, Ordering::SeqCst);
                }
            }
        }
    });
    let client = Client::builder(&url)
        .name("na-out")
        .endpoint(TopicAsText)
        .keepalive(Keepalive::ServerDriven)
        .connect()
        .unwrap();
    exercise_every_thread(&client);
    // Each 64-byte client frame is 2 header bytes + 4 mask bytes + 64 payload bytes.
    let wire = |n: u64| n * 70 + SUBSCRIPTION_WIRE;
    for _ in 0..WARMUP {
        send_one(&client);
    }
    wait_until("warm-up bytes", WAIT, || {
        (received.load(Ordering::SeqCst) == wire(WARMUP)).then_some(())
    });
    let before = allocations();
    for _ in 0..MEASURED {
        send_one(&client);
    }
    wait_until("measured bytes", WAIT, || {
        (received.load(Ordering::SeqCst) == wire(WARMUP + MEASURED)).then_some(())
    });
    let during = allocations() - before;
    client.shutdown(Duration::from_secs(1));
    server.join().unwrap();
    during
}

fn read_request_plain(sock: &mut std::net::TcpStream) -> String {
    let mut conn = support::Conn::Plain(sock.try_clone().unwrap());
    read_request(&mut conn)
}

/// Allocations tolerated in a window: none come from the frame paths, but on a loaded machine a
/// client thread can still be running std's thread start-up (≤ 12 allocations seen) when the
/// window opens. One allocation per frame would be 50,000; one per read or write batch, 50+.
const NOISE: u64 = 16;

#[test]
fn steady_state_allocates_nothing_per_frame() {
    let ingress = inbound(Consume::Ingress);
    let frames = inbound(Consume::Frames);
    let prepared = PreparedFrame::binary(vec![9u8; 64]);
    let prepared = outbound(|c| c.send_prepared(&prepared).unwrap());
    let shared = Bytes::from(vec![9u8; 64]);
    let shared = outbound(|c| c.send(Frame::Binary(shared.clone())).unwrap());
    // `vec!` makes an exact-capacity vector: one allocation, moved into the frame as is.
    let owned = outbound(|c| c.send(Frame::binary(vec![9u8; 64])).unwrap());
    println!(
        "allocations while {MEASURED} frames flowed (inbound: each window measured): inbound to \
         the ingress {ingress:?}, inbound Event::Frame {frames:?}, outbound prepared {prepared}, \
         shared Bytes {shared}, owned Vec {owned} ({MEASURED} of them the test's own vec!)"
    );
    assert!(
        ingress.last().is_some_and(|&n| n <= NOISE),
        "inbound path to the ingress allocated in every window: {ingress:?}"
    );
    assert!(
        frames.last().is_some_and(|&n| n <= NOISE),
        "inbound Event::Frame path allocated in every window: {frames:?}"
    );
    assert!(
        prepared <= NOISE,
        "outbound path of a prepared frame allocated {prepared} times"
    );
    assert!(
        shared <= NOISE,
        "outbound path of a shared Bytes payload allocated {shared} times"
    );
    assert!(
        (MEASURED..=MEASURED + NOISE).contains(&owned),
        "outbound path of an owned Vec payload allocated {owned} times, {MEASURED} of them the \
         test's own"
    );
}
