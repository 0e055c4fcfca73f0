//! The byte stream under a connection, and how it is split for full duplex.
//!
//! Before the split, [`Stream`] is an ordinary blocking stream used for the TLS and HTTP
//! handshakes. [`Stream::split`] then shares the socket between the reader and the writer (one
//! file descriptor, used through `&TcpStream`), and they never wait for each other in a syscall:
//!
//! - plain TCP: each half reads or writes the shared socket directly;
//! - TLS: the rustls connection sits behind a mutex that is held only while bytes are moved in
//!   memory (decrypting what the reader already read, encrypting what the writer will write).
//!   The reader's `read(2)` and the writer's `write(2)` run without the lock, so a reader blocked
//!   on a silent server never delays a write.
//!
//! The reader never writes to the socket: writes happen under the [`Sink`](crate::client::sink::Sink)'s
//! lock, by the writer thread or by a caller's direct write, one at a time and in order. If
//! processing inbound TLS records leaves rustls with something to send (a key update, an alert),
//! the reader reports it and the writer flushes it.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;

use parking_lot::Mutex;
use rustls::Connection;

/// Size of the buffer for ciphertext read from the socket.
const TLS_READ_CHUNK: usize = 16 * 1024 + 256;

/// A connected stream, plain or TLS, used whole during the handshakes.
pub(crate) struct Stream {
    pub(crate) sock: Arc<TcpStream>,
    pub(crate) tls: Option<Connection>,
    /// The TLS session with a proxy that `tls` runs inside (`wss://` through an `https://`
    /// proxy): the tunnel's bytes are its plaintext. `None` otherwise (a `ws://` target through
    /// an `https://` proxy has the proxy's session as `tls`).
    pub(crate) under: Option<Connection>,
}

impl Stream {
    /// Splits into reader and writer halves plus a handle that can shut the socket down from any
    /// thread (which unblocks both halves).
    pub(crate) fn split(self) -> io::Result<(ReadHalf, WriteHalf, SocketHandle)> {
        self.sock.set_read_timeout(None)?;
        self.sock.set_write_timeout(None)?;
        // One descriptor shared by both halves and the handle (`&TcpStream` reads and writes):
        // a connection costs one file descriptor, which matters for a hub of 10,000.
        let sock = self.sock;
        let read_sock = sock.clone();
        let handle = SocketHandle(sock.clone());
        let mut under = self.under;
        let tls = self.tls.map(|mut conn| {
            // Every writer drains the records it produces at once, so rustls never holds more
            // than one batch; without a limit, `write` always takes a whole frame (which the
            // direct path relies on: it must never encrypt half a frame).
            conn.set_buffer_limit(None);
            if let Some(u) = &mut under {
                u.set_buffer_limit(None);
            }
            let under = under.take();
            Arc::new(Mutex::new(Layers { conn, under }))
        });
        let reader = ReadHalf {
            sock: read_sock,
            tls: tls.clone(),
            cipher: vec![0; if tls.is_some() { TLS_READ_CHUNK } else { 0 }].into_boxed_slice(),
            cipher_pos: 0,
            cipher_end: 0,
            tls_output_pending: false,
        };
        let writer = WriteHalf {
            sock,
            tls,
            cipher_out: Vec::new(),
            bytes_reached_socket: false,
        };
        Ok((reader, writer, handle))
    }
}

/// Shuts the shared socket down; safe to call from any thread, any number of times.
#[derive(Debug, Clone)]
pub(crate) struct SocketHandle(Arc<TcpStream>);

impl SocketHandle {
    /// A handle on a socket not split yet (a hub connection in its handshake).
    pub(crate) fn new(sock: Arc<TcpStream>) -> Self {
        SocketHandle(sock)
    }

    /// Ends our sending side (a FIN), keeping the receiving side open.
    pub(crate) fn shutdown_write(&self) {
        let _ = self.0.shutdown(Shutdown::Write);
    }

    pub(crate) fn shutdown(&self) {
        // ENOTCONN after the peer already closed is expected and harmless.
        let _ = self.0.shutdown(Shutdown::Both);
    }
}

/// The TLS of a split stream: the connection's session and, when it runs through a TLS tunnel
/// to a proxy, the proxy's session under it. The methods are rustls's, applied through both
/// layers: socket bytes go into `under` and its plaintext into `conn`; `conn`'s records go into
/// `under` and its records to the socket.
pub(crate) struct Layers {
    conn: Connection,
    under: Option<Connection>,
}

impl Layers {
    fn reader(&mut self) -> rustls::Reader<'_> {
        self.conn.reader()
    }

    fn writer(&mut self) -> rustls::Writer<'_> {
        self.conn.writer()
    }

    /// Takes bytes read from the socket.
    fn read_tls(&mut self, rd: &mut dyn Read) -> io::Result<usize> {
        match &mut self.under {
            None => self.conn.read_tls(rd),
            Some(under) => under.read_tls(rd),
        }
    }

    /// Decrypts what was taken; true when records must be sent in answer (a key update, an
    /// alert).
    fn process_new_packets(&mut self) -> Result<bool, rustls::Error> {
        let Some(under) = &mut self.under else {
            return Ok(self.conn.process_new_packets()?.tls_bytes_to_write() > 0);
        };
        let outer = under.process_new_packets()?;
        Ok(self.shift()? || outer.tls_bytes_to_write() > 0)
    }

    /// Through a TLS tunnel: moves the tunnel's plaintext (the connection's ciphertext) into
    /// the connection's session, as much as it takes (the rest waits in `under`), and decrypts
    /// it. Also before each read of plaintext: the opening may have left records in `under`,
    /// and a read makes room for more. True when records must be sent in answer.
    fn shift(&mut self) -> Result<bool, rustls::Error> {
        let Some(under) = &mut self.under else {
            return Ok(false);
        };
        let mut moved = false;
        loop {
            match self.conn.read_tls(&mut under.reader()) {
                Ok(0) => {
                    // The tunnel ended cleanly: `conn` has seen its end of stream.
                    moved = true;
                    break;
                }
                Ok(_) => moved = true,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    // The tunnel was cut: `conn`'s stream ends there too (a truncation it
                    // reports itself, as over a single layer).
                    let _ = self.conn.read_tls(&mut &[][..]);
                    moved = true;
                    break;
                }
                Err(_) => break, // Nothing more for now (`WouldBlock`), or `conn` is full.
            }
        }
        if !moved {
            return Ok(false);
        }
        Ok(self.conn.process_new_packets()?.tls_bytes_to_write() > 0)
    }

    fn wants_write(&self) -> bool {
        self.conn.wants_write() || self.under.as_ref().is_some_and(|u| u.wants_write())
    }

    /// Moves the records to send into `out` (through the tunnel's session, if any).
    fn write_tls(&mut self, out: &mut Vec<u8>) -> io::Result<usize> {
        let Some(under) = &mut self.under else {
            return self.conn.write_tls(out);
        };
        while self.conn.wants_write() {
            self.conn.write_tls(&mut under.writer())?;
        }
        under.write_tls(out)
    }

    /// Ends the connection's TLS stream, then the tunnel's.
    fn send_close_notify(&mut self) {
        self.conn.send_close_notify();
        if let Some(under) = &mut self.under {
            while self.conn.wants_write() {
                if self.conn.write_tls(&mut under.writer()).is_err() {
                    break;
                }
            }
            under.send_close_notify();
        }
    }
}

/// The reading half: owned by the reader thread.
pub(crate) struct ReadHalf {
    sock: Arc<TcpStream>,
    tls: Option<Arc<Mutex<Layers>>>,
    /// Ciphertext read from the socket and not yet given to rustls.
    cipher: Box<[u8]>,
    cipher_pos: usize,
    cipher_end: usize,
    tls_output_pending: bool,
}

impl ReadHalf {
    /// Reads plaintext; `Ok(0)` is end of stream.
    pub(crate) fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let Some(tls) = &self.tls else {
            return (&*self.sock).read(out);
        };
        loop {
            {
                let mut conn = tls.lock();
                // 1. Plaintext rustls already holds (through a tunnel, after taking what the
                //    tunnel's session holds).
                self.tls_output_pending |= conn.shift().map_err(io::Error::other)?;
                match conn.reader().read(out) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                // 2. Ciphertext we read earlier but rustls had no room for.
                if self.cipher_pos < self.cipher_end {
                    let mut pending = &self.cipher[self.cipher_pos..self.cipher_end];
                    let used = conn.read_tls(&mut pending)?;
                    self.cipher_pos += used;
                    let pending = conn.process_new_packets().map_err(io::Error::other)?;
                    self.tls_output_pending |= pending;
                    continue;
                }
            }
            // 3. More ciphertext from the socket, without holding the lock.
            let n = (&*self.sock).read(&mut self.cipher)?;
            self.cipher_pos = 0;
            self.cipher_end = n;
            if n == 0 {
                let mut conn = tls.lock();
                conn.read_tls(&mut &[][..])?;
                conn.process_new_packets().map_err(io::Error::other)?;
                // rustls now reports either a clean close_notify (Ok(0)) or an unexpected EOF.
                return match conn.reader().read(out) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
                    other => other,
                };
            }
        }
    }

    /// Sets how long one read may wait (`None`: forever); a read that waits longer fails with
    /// `WouldBlock` or `TimedOut` and can be retried.
    pub(crate) fn set_timeout(&self, timeout: Option<std::time::Duration>) -> io::Result<()> {
        self.sock.set_read_timeout(timeout)
    }

    /// True once after rustls produced records that must be sent (key update, alert).
    pub(crate) fn take_tls_output_pending(&mut self) -> bool {
        std::mem::take(&mut self.tls_output_pending)
    }
}

/// The writing half, inside the connection's [`Sink`](crate::client::sink::Sink): one writer at a time.
pub(crate) struct WriteHalf {
    sock: Arc<TcpStream>,
    tls: Option<Arc<Mutex<Layers>>>,
    cipher_out: Vec<u8>,
    bytes_reached_socket: bool,
}

/// What [`WriteHalf::write_direct`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direct {
    /// Everything was written.
    Done,
    /// Part was written, or none but the rest is committed (TLS): the rest is in the spill.
    Spilled,
    /// Nothing was written or committed: queue the frame as usual.
    Declined,
}

/// Most plaintext a TLS write encrypts before it writes the records out. A batch can hold
/// 256 KiB (the outbox's bound); encrypted whole it would pass through three buffers of that
/// size (the batch, rustls's records and `cipher_out`) before the first byte reached the
/// kernel. In passes of this size each pass's records reach the kernel before the next pass is
/// encrypted, and the working set stays in cache (BENCHMARKS.md, change 17).
const TLS_PASS: usize = 64 * 1024;

/// `write_all` that records whether the kernel accepted any byte.
fn write_counted(mut sock: &TcpStream, mut buf: &[u8], wrote: &mut bool) -> io::Result<()> {
    while !buf.is_empty() {
        match sock.write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                *wrote = true;
                buf = &buf[n..];
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl WriteHalf {
    /// Writes all of `plain` to the socket (under TLS, encrypted and written [`TLS_PASS`] bytes
    /// at a time).
    ///
    /// On failure, `bytes_reached_socket` tells whether any byte of this call was accepted by
    /// the kernel: if not, nothing of `plain` can have reached the peer.
    pub(crate) fn write_all(&mut self, plain: &[u8]) -> io::Result<()> {
        self.write_plain(plain, false)
    }

    /// Writes all of `plain` like [`write_all`](Self::write_all), then ends our side of the
    /// TLS stream with a `close_notify` alert, in the same write: for the batch that carries
    /// our WebSocket close frame. Nothing may be written after it. Plain TCP: `write_all`.
    pub(crate) fn write_all_then_close_notify(&mut self, plain: &[u8]) -> io::Result<()> {
        self.write_plain(plain, true)
    }

    fn write_plain(&mut self, plain: &[u8], close_notify: bool) -> io::Result<()> {
        self.bytes_reached_socket = false;
        let Some(tls) = self.tls.clone() else {
            return write_counted(&self.sock, plain, &mut self.bytes_reached_socket);
        };
        let mut rest = plain;
        loop {
            {
                let mut conn = tls.lock();
                if !rest.is_empty() {
                    let n = conn.writer().write(&rest[..rest.len().min(TLS_PASS)])?;
                    rest = &rest[n..];
                }
                if rest.is_empty() && close_notify {
                    // The last pass: the alert follows the last record of `plain`.
                    conn.send_close_notify();
                }
                while conn.wants_write() {
                    conn.write_tls(&mut self.cipher_out)?;
                }
            }
            if !self.cipher_out.is_empty() {
                write_counted(&self.sock, &self.cipher_out, &mut self.bytes_reached_socket)?;
                self.cipher_out.clear();
            }
            if rest.is_empty() {
                return Ok(());
            }
        }
    }

    /// Writes bytes that are already on the wire format (for TLS: ciphertext), blocking.
    pub(crate) fn write_raw_all(&mut self, raw: &[u8]) -> io::Result<()> {
        self.bytes_reached_socket = false;
        write_counted(&self.sock, raw, &mut self.bytes_reached_socket)
    }

    /// Writes `plain` without ever blocking, for a caller that must not wait on the socket.
    /// What the kernel does not take now is appended to `spill` (as wire bytes), to be written
    /// with [`write_raw_all`](Self::write_raw_all) before anything else.
    ///
    /// Plain TCP: if the kernel takes nothing, nothing is done ([`Direct::Declined`]). TLS: once
    /// encrypted, the records belong to the stream, so they are kept in `spill` whatever happens.
    /// A socket error also leaves the bytes in `spill`: the blocking write meets the error again
    /// and reports it.
    pub(crate) fn write_direct(&mut self, plain: &[u8], spill: &mut Vec<u8>) -> Direct {
        debug_assert!(spill.is_empty(), "spilled bytes must go out first");
        let wire: &[u8] = match &self.tls {
            None => plain,
            Some(tls) => {
                let mut conn = tls.lock();
                match conn.writer().write(plain) {
                    Ok(n) if n == plain.len() => {}
                    // Nothing was encrypted: queue the frame instead.
                    Ok(0) | Err(_) => return Direct::Declined,
                    // Part of the frame is in the record stream now (not expected without a
                    // buffer limit): the rest must follow it, whatever that costs.
                    Ok(n) => {
                        if let Err(e) = conn.writer().write_all(&plain[n..]) {
                            log::error!("TLS refused the rest of a frame ({e}); stream broken");
                        }
                    }
                }
                while conn.wants_write() {
                    if conn.write_tls(&mut self.cipher_out).is_err() {
                        break;
                    }
                }
                &self.cipher_out
            }
        };
        let sent = match crate::sys::send_nonblocking(&self.sock, wire) {
            Ok(n) => n,
            Err(e) => {
                if !matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) {
                    log::debug!("direct write failed ({e}); the writer thread takes over");
                }
                0
            }
        };
        let outcome = if sent == wire.len() {
            Direct::Done
        } else if sent == 0 && self.tls.is_none() {
            Direct::Declined
        } else {
            spill.extend_from_slice(&wire[sent..]);
            Direct::Spilled
        };
        self.cipher_out.clear();
        outcome
    }

    /// Sends wire bytes (for TLS: ciphertext) without ever blocking; returns how many the kernel
    /// took (`WouldBlock` when none fit).
    pub(crate) fn send_raw_nonblocking(&mut self, raw: &[u8]) -> io::Result<usize> {
        crate::sys::send_nonblocking(&self.sock, raw)
    }

    /// Ends our side of the TLS stream: appends the `close_notify` alert's record to `spill`
    /// (nothing on plain TCP). Nothing may be written after it.
    pub(crate) fn queue_close_notify(&mut self, spill: &mut Vec<u8>) {
        if let Some(tls) = &self.tls {
            let mut conn = tls.lock();
            conn.send_close_notify();
            while conn.wants_write() {
                if conn.write_tls(spill).is_err() {
                    break;
                }
            }
        }
    }

    /// Whether the stream is TLS (wire bytes differ from the frames' bytes).
    pub(crate) fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The socket, for polling it for room to write.
    pub(crate) fn socket(&self) -> &TcpStream {
        &self.sock
    }

    /// Whether the last `write_all` got any byte into the socket.
    pub(crate) fn bytes_reached_socket(&self) -> bool {
        self.bytes_reached_socket
    }

    /// Sends whatever TLS records rustls has queued (for example after a key update).
    pub(crate) fn flush_tls(&mut self) -> io::Result<()> {
        self.write_all(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A plain connection split as a link splits it, and the server's end.
    fn pair() -> (WriteHalf, SocketHandle, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let sock = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (peer, _) = listener.accept().unwrap();
        let (_read, write, handle) = Stream {
            under: None,
            sock: Arc::new(sock),
            tls: None,
        }
        .split()
        .unwrap();
        (write, handle, peer)
    }

    /// A write that fails before the kernel took any byte says so: the writer thread then
    /// reports its requests never delivered, and the direct path queues the frame instead.
    #[test]
    fn a_write_refused_outright_reached_nothing() {
        let (mut write, handle, _peer) = pair();
        handle.0.shutdown(Shutdown::Write).unwrap();
        assert!(write.write_all(b"frame").is_err());
        assert!(!write.bytes_reached_socket());
        let mut spill = Vec::new();
        if cfg!(target_os = "linux") {
            assert_eq!(write.write_direct(b"frame", &mut spill), Direct::Declined);
            assert!(spill.is_empty(), "nothing committed");
        }
    }

    #[test]
    fn a_direct_write_to_an_idle_socket_goes_out_whole() {
        let (mut write, _handle, mut peer) = pair();
        let mut spill = Vec::new();
        if cfg!(target_os = "linux") {
            assert_eq!(write.write_direct(b"hello", &mut spill), Direct::Done);
            let mut got = [0u8; 5];
            peer.read_exact(&mut got).unwrap();
            assert_eq!(&got, b"hello");
        } else {
            assert_eq!(write.write_direct(b"hello", &mut spill), Direct::Declined);
        }
        assert!(write.write_all(b"after").is_ok());
        assert!(write.bytes_reached_socket());
    }
}
