//! A fault-injecting TCP proxy on loopback, put between a client and a server to break the
//! connection in the ways real networks do.
//!
//! Every accepted client connection gets its own upstream connection and two named pump threads
//! (`proxy-up-N` client→server, `proxy-down-N` server→client) that copy bytes. The controls act
//! on every connection open at the time of the call; connections accepted later start in normal
//! forwarding mode:
//!
//! - [`Proxy::kill`]: shut both sockets of every connection down (the client reads EOF).
//! - [`Proxy::go_silent`]: stop forwarding in both directions but keep the sockets open (a
//!   half-open link: no FIN, no data). Bytes read after the call are held, not dropped.
//! - [`Proxy::stall_mid_frame`]: forward only the first bytes of the next server→client chunk,
//!   then hold that direction (the client is left with a partial frame or TLS record).
//! - [`Proxy::resume`]: forward again (held bytes are delivered, in order).
//! - [`Proxy::refuse`]: while true the proxy is *not listening*, so connects fail with
//!   `ECONNREFUSED`; `refuse(false)` listens again on the same port.
//! - [`Proxy::drop_new`]: while true, new connections are accepted and closed at once, before
//!   any byte is exchanged.
//!
//! Nothing here sleeps to synchronise: pumps wait on a condition variable, controls that change
//! the listener wait for the acceptor to confirm. Dropping the proxy shuts every socket down
//! (which unblocks every pump) and joins every thread it started.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How many bytes of the next server→client chunk [`Proxy::stall_mid_frame`] lets through.
pub const STALL_AFTER: usize = 3;

/// A direction of a proxied connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    /// Client to server.
    Up = 0,
    /// Server to client.
    Down = 1,
}

/// What a pump does with the bytes it reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Forward,
    /// Keep the bytes read and wait (sockets stay open).
    Hold,
    /// Forward this many bytes of the next chunk, then hold.
    StallAfter(usize),
}

struct Pipe {
    client: TcpStream,
    upstream: TcpStream,
    modes: [Mode; 2],
    killed: bool,
}

struct State {
    shutdown: bool,
    refusing: bool,
    dropping: bool,
    listening: bool,
    /// Local address of the connection `refuse(true)` makes to wake the acceptor.
    wake_from: Option<SocketAddr>,
    accepted: usize,
    pipes: Vec<Pipe>,
    pumps: Vec<JoinHandle<()>>,
    /// When a stall took effect, and how many bytes of the chunk went through.
    stalled: Option<(Instant, usize)>,
}

struct Shared {
    addr: SocketAddr,
    upstream: SocketAddr,
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.changed.wait(guard).unwrap_or_else(|e| e.into_inner())
    }
}

/// The proxy. See the module docs.
pub struct Proxy {
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Listens on `127.0.0.1:0` and forwards every connection to `upstream`.
    pub fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy bind");
        let shared = Arc::new(Shared {
            addr: listener.local_addr().unwrap(),
            upstream,
            state: Mutex::new(State {
                shutdown: false,
                refusing: false,
                dropping: false,
                listening: true,
                wake_from: None,
                accepted: 0,
                pipes: Vec::new(),
                pumps: Vec::new(),
                stalled: None,
            }),
            changed: Condvar::new(),
        });
        let s = shared.clone();
        let acceptor = thread::Builder::new()
            .name("proxy-accept".into())
            .spawn(move || accept_loop(&s, listener))
            .unwrap();
        Proxy {
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// `ws://127.0.0.1:PORT/`, or `wss://localhost:PORT/` so a certificate for `localhost`
    /// matches.
    pub fn url(&self, tls: bool) -> String {
        if tls {
            format!("wss://localhost:{}/", self.shared.addr.port())
        } else {
            format!("ws://{}/", self.shared.addr)
        }
    }

    /// Client connections accepted and forwarded so far (not counting refused or dropped ones).
    pub fn accepted(&self) -> usize {
        self.shared.lock().accepted
    }

    /// Closes both sides of every current connection: the client and the server read EOF.
    pub fn kill(&self) {
        let mut st = self.shared.lock();
        for pipe in &mut st.pipes {
            pipe.killed = true;
            let _ = pipe.client.shutdown(Shutdown::Both);
            let _ = pipe.upstream.shutdown(Shutdown::Both);
        }
        self.shared.changed.notify_all();
    }

    /// Stops forwarding in both directions on every current connection, keeping the sockets
    /// open: neither side sees data or a FIN any more.
    pub fn go_silent(&self) {
        let mut st = self.shared.lock();
        for pipe in &mut st.pipes {
            pipe.modes = [Mode::Hold, Mode::Hold];
        }
        self.shared.changed.notify_all();
    }

    /// On every current connection, forwards only the first [`STALL_AFTER`] bytes of the next
    /// server→client chunk (fewer if the chunk is that short: at least one byte is held), then
    /// holds that direction with the socket open. Client→server keeps flowing.
    pub fn stall_mid_frame(&self) {
        let mut st = self.shared.lock();
        st.stalled = None;
        for pipe in &mut st.pipes {
            pipe.modes[Dir::Down as usize] = Mode::StallAfter(STALL_AFTER);
        }
        self.shared.changed.notify_all();
    }

    /// When the last stall took effect (the partial chunk was written) and how many bytes went
    /// through; `None` until it has.
    pub fn stalled(&self) -> Option<(Instant, usize)> {
        self.shared.lock().stalled
    }

    /// Forwards normally again on every current connection (held bytes go out first).
    pub fn resume(&self) {
        let mut st = self.shared.lock();
        for pipe in &mut st.pipes {
            if !pipe.killed {
                pipe.modes = [Mode::Forward, Mode::Forward];
            }
        }
        self.shared.changed.notify_all();
    }

    /// `true`: stop listening (connects are refused with `ECONNREFUSED`); returns once the
    /// listener is closed. `false`: listen again on the same port; returns once listening.
    /// Current connections are not affected.
    pub fn refuse(&self, refuse: bool) {
        let shared = &self.shared;
        let mut st = shared.lock();
        if st.refusing == refuse {
            return;
        }
        st.refusing = refuse;
        if refuse {
            // Wake the acceptor (blocked in accept) with a connection it will recognise.
            let wake = TcpStream::connect(shared.addr).expect("wake the proxy acceptor");
            st.wake_from = Some(wake.local_addr().unwrap());
            while st.listening && !st.shutdown {
                st = shared.wait(st);
            }
        } else {
            shared.changed.notify_all();
            while !st.listening && !st.shutdown {
                st = shared.wait(st);
            }
        }
    }

    /// While `true`, new connections are accepted and closed at once: the proxy sends FIN before
    /// any byte and discards what the client sends, so the client reads a clean EOF.
    pub fn drop_new(&self, drop_them: bool) {
        self.shared.lock().dropping = drop_them;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let pumps = {
            let mut st = self.shared.lock();
            st.shutdown = true;
            if st.listening {
                // Unblock accept(); the acceptor sees `shutdown` and exits.
                let _ = TcpStream::connect(self.shared.addr);
            }
            for pipe in &mut st.pipes {
                let _ = pipe.client.shutdown(Shutdown::Both);
                let _ = pipe.upstream.shutdown(Shutdown::Both);
            }
            self.shared.changed.notify_all();
            std::mem::take(&mut st.pumps)
        };
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        // The acceptor may have registered pumps after the take above: collect those too.
        let late = std::mem::take(&mut self.shared.lock().pumps);
        for pump in pumps.into_iter().chain(late) {
            let _ = pump.join();
        }
    }
}

fn accept_loop(shared: &Arc<Shared>, listener: TcpListener) {
    let mut listener = Some(listener);
    loop {
        let Some(l) = &listener else {
            // Refusing: wait until told to listen again.
            let mut st = shared.lock();
            while st.refusing && !st.shutdown {
                st = shared.wait(st);
            }
            if st.shutdown {
                return;
            }
            drop(st);
            let relisten = rebind(shared.addr);
            let mut st = shared.lock();
            st.listening = true;
            shared.changed.notify_all();
            if st.shutdown {
                return;
            }
            listener = Some(relisten);
            continue;
        };
        let accepted = l.accept();
        let mut st = shared.lock();
        if st.shutdown {
            return;
        }
        let Ok((client, peer)) = accepted else {
            continue;
        };
        if st.wake_from == Some(peer) {
            st.wake_from = None;
            listener = None; // Closing the listener: connects are refused from now on.
            st.listening = false;
            shared.changed.notify_all();
            continue;
        }
        if st.dropping {
            drop(st);
            hang_up(client);
            continue;
        }
        drop(st);
        let Ok(upstream) = TcpStream::connect(shared.upstream) else {
            continue; // Dropping `client` closes it.
        };
        let _ = client.set_nodelay(true);
        let _ = upstream.set_nodelay(true);
        let mut st = shared.lock();
        if st.shutdown {
            return;
        }
        let id = st.pipes.len();
        let (Ok(c2), Ok(u2)) = (client.try_clone(), upstream.try_clone()) else {
            continue;
        };
        st.pipes.push(Pipe {
            client: c2,
            upstream: u2,
            modes: [Mode::Forward, Mode::Forward],
            killed: false,
        });
        st.accepted += 1;
        let (Ok(c3), Ok(u3)) = (client.try_clone(), upstream.try_clone()) else {
            continue;
        };
        for (dir, src, dst) in [(Dir::Up, client, u3), (Dir::Down, upstream, c3)] {
            let s = shared.clone();
            let name = match dir {
                Dir::Up => format!("proxy-up-{id}"),
                Dir::Down => format!("proxy-down-{id}"),
            };
            let pump = thread::Builder::new()
                .name(name)
                .spawn(move || pump(&s, id, dir, src, dst))
                .unwrap();
            st.pumps.push(pump);
        }
    }
}

/// Sends FIN at once, then reads and discards what the client sends until it closes (bounded),
/// so the client sees a clean end of stream rather than a reset for unread data.
fn hang_up(mut client: TcpStream) {
    let _ = client.shutdown(Shutdown::Write);
    let _ = client.set_read_timeout(Some(Duration::from_secs(2)));
    let mut sink = [0u8; 4096];
    while matches!(client.read(&mut sink), Ok(n) if n > 0) {}
}

/// Listens on `addr` again. The port was ours a moment ago; if another socket grabbed it in
/// between, keep trying for a while (polling with a deadline) before giving up.
fn rebind(addr: SocketAddr) -> TcpListener {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match TcpListener::bind(addr) {
            Ok(l) => return l,
            Err(e) => {
                assert!(Instant::now() < deadline, "proxy cannot listen again: {e}");
                thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// What the pump may do with its current chunk.
enum Step {
    /// Write this many bytes of it.
    Write(usize),
    /// The connection is gone: stop without touching the other side.
    Stop,
}

/// Waits until the direction may forward, and says how much of a `len`-byte chunk to write.
fn next_step(shared: &Shared, id: usize, dir: Dir, len: usize) -> Step {
    let mut st = shared.lock();
    loop {
        if st.shutdown || st.pipes[id].killed {
            return Step::Stop;
        }
        match st.pipes[id].modes[dir as usize] {
            Mode::Forward => return Step::Write(len),
            Mode::Hold => st = shared.wait(st),
            Mode::StallAfter(n) => {
                // At least one byte stays behind, so the client is left mid-chunk.
                let n = n.min(len.saturating_sub(1));
                st.pipes[id].modes[dir as usize] = Mode::Hold;
                st.stalled = Some((Instant::now(), n));
                return Step::Write(n);
            }
        }
    }
}

fn pump(shared: &Shared, id: usize, dir: Dir, mut src: TcpStream, mut dst: TcpStream) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut chunk = &buf[..n];
        while !chunk.is_empty() {
            match next_step(shared, id, dir, chunk.len()) {
                Step::Stop => return,
                Step::Write(k) => {
                    if dst.write_all(&chunk[..k]).is_err() {
                        // The other side is gone: end the connection like a real proxy.
                        let _ = src.shutdown(Shutdown::Both);
                        return;
                    }
                    chunk = &chunk[k..];
                }
            }
        }
    }
    // The source ended. Pass the FIN on, unless this direction is frozen (a silent link
    // carries nothing, not even the end).
    let st = shared.lock();
    let frozen = st.pipes[id].modes[dir as usize] != Mode::Forward;
    if !frozen && !st.shutdown && !st.pipes[id].killed {
        let _ = dst.shutdown(Shutdown::Write);
    }
}
