//! The few system calls the standard library does not offer, through the `libc` crate.
//!
//! - [`send_nonblocking`]: one `send(2)` with `MSG_DONTWAIT`, so a thread that must never wait
//!   (a caller's direct write, a hub publisher) can write to a socket that stays blocking for
//!   the thread that owns it.
//! - [`poll`]: waiting for any of several sockets to become writable (the hub's flusher) or
//!   readable (its acceptor), with a timeout.
//!
//! Elsewhere than Linux, `send_nonblocking` always answers `WouldBlock` (the blocking path
//! writes instead) and `poll` is the portable POSIX call.

use std::io;
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

pub(crate) use libc::{POLLIN, POLLOUT, pollfd};

/// `send(2)` that returns `WouldBlock` instead of waiting and never raises `SIGPIPE`.
#[cfg(target_os = "linux")]
pub(crate) fn send_nonblocking(sock: &TcpStream, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: the descriptor is open for as long as `sock` lives; the buffer is valid for
    // `buf.len()` bytes, which the kernel only reads.
    let n = unsafe {
        libc::send(
            sock.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// No portable per-call non-blocking send: callers fall back to their blocking path.
#[cfg(not(target_os = "linux"))]
pub(crate) fn send_nonblocking(_sock: &TcpStream, _buf: &[u8]) -> io::Result<usize> {
    Err(io::ErrorKind::WouldBlock.into())
}

/// A `pollfd` asking for `events` on `fd`.
pub(crate) fn interest(fd: RawFd, events: i16) -> pollfd {
    pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// Waits until one of `fds` is ready or `timeout` passes (`None`: no timeout); returns how many
/// are ready (0 on timeout). An interrupted wait counts as a timeout: callers loop anyway.
pub(crate) fn poll(fds: &mut [pollfd], timeout: Option<Duration>) -> io::Result<usize> {
    let ms = match timeout {
        None => -1,
        // Round up, so a wait for 0.4 ms is not a busy loop of zero-length waits.
        Some(t) => i32::try_from(t.as_micros().div_ceil(1000)).unwrap_or(i32::MAX),
    };
    // SAFETY: `fds` is a valid, exclusively borrowed array of `fds.len()` pollfd structures.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(e);
    }
    Ok(n as usize)
}
