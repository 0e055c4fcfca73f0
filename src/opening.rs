//! The socket during an opening handshake (TLS, then the HTTP upgrade), bound by an absolute
//! deadline, for both halves: the client dialling and the hub accepting.
//!
//! Every socket read and write is armed with what is left of the deadline ([`Deadlined`]), so a
//! peer that trickles its bytes one at a time runs out of time like a silent one. (Re-arming a
//! whole timeout per read would let each byte buy another full timeout.)

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use rustls::Connection;

use crate::transport::Stream;

/// The socket during the opening: every read and write first sets the socket's timeout to what
/// is left of `deadline`, and fails with `TimedOut` once nothing is left.
pub(crate) struct Deadlined<'a> {
    pub(crate) sock: &'a TcpStream,
    pub(crate) deadline: Instant,
}

impl Deadlined<'_> {
    fn left(&self) -> io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "opening handshake deadline passed",
            ));
        }
        Ok(left)
    }
}

impl Read for Deadlined<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.sock.set_read_timeout(Some(self.left()?))?;
        let mut sock = self.sock;
        sock.read(buf)
    }
}

impl Write for Deadlined<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.sock.set_write_timeout(Some(self.left()?))?;
        let mut sock = self.sock;
        sock.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(()) // A TCP socket has no user-space buffer.
    }
}

/// The stream an opening runs over: TLS (if any) on top of the deadline-bound socket. The
/// [`Stream`] itself is only borrowed, to be split for reading and writing afterwards (which
/// clears the socket timeouts).
pub(crate) struct OpeningIo<'a> {
    sock: Deadlined<'a>,
    tls: Option<&'a mut Connection>,
    /// The proxy's TLS session that `tls` runs inside, if any.
    under: Option<&'a mut Connection>,
}

impl<'a> OpeningIo<'a> {
    /// Borrows `stream` for an opening that must end by `deadline`.
    pub(crate) fn new(stream: &'a mut Stream, deadline: Instant) -> Self {
        OpeningIo {
            sock: Deadlined {
                sock: &stream.sock,
                deadline,
            },
            tls: stream.tls.as_mut(),
            under: stream.under.as_mut(),
        }
    }

    /// Runs the TLS handshake to its end (nothing to do on plain TCP).
    pub(crate) fn complete_tls_handshake(&mut self) -> io::Result<()> {
        if let Some(conn) = &mut self.tls {
            while conn.is_handshaking() {
                below(&mut self.under, &mut self.sock, |mut io| {
                    conn.complete_io(&mut io)
                })?;
            }
        }
        Ok(())
    }
}

/// Runs `f` on what carries the connection's TLS records: the socket, or the proxy's TLS
/// session over it.
fn below<R>(
    under: &mut Option<&mut Connection>,
    sock: &mut Deadlined<'_>,
    f: impl FnOnce(&mut dyn ReadWrite) -> R,
) -> R {
    match under {
        None => f(sock),
        Some(under) => tls_stream(under, sock, f),
    }
}

/// Runs `f` on a rustls stream over `sock`, whichever side `conn` is.
fn tls_stream<R>(
    conn: &mut Connection,
    sock: &mut dyn ReadWrite,
    f: impl FnOnce(&mut dyn ReadWrite) -> R,
) -> R {
    match conn {
        Connection::Client(c) => f(&mut rustls::Stream::new(c, &mut &mut *sock)),
        Connection::Server(c) => f(&mut rustls::Stream::new(c, &mut &mut *sock)),
    }
}

/// `Read + Write` as one trait object.
pub(crate) trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

impl Read for OpeningIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.tls {
            None => self.sock.read(buf),
            Some(conn) => below(&mut self.under, &mut self.sock, |io| {
                tls_stream(conn, io, |s| s.read(buf))
            }),
        }
    }
}

impl Write for OpeningIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.tls {
            None => self.sock.write(buf),
            Some(conn) => below(&mut self.under, &mut self.sock, |io| {
                tls_stream(conn, io, |s| s.write(buf))
            }),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.tls {
            None => self.sock.flush(),
            Some(conn) => below(&mut self.under, &mut self.sock, |io| {
                tls_stream(conn, io, |s| s.flush())
            }),
        }
    }
}
