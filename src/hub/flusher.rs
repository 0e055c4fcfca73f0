//! The flusher: one thread that writes what connections could not take at once, and ends
//! close handshakes that run out of time.
//!
//! Publishers write without blocking; a connection whose socket was full is handed here (once:
//! [`Outbound::needs_flusher`](super::outbound::Outbound::needs_flusher)). The flusher polls
//! exactly those sockets for room to write, writes as they drain and lets each go once its queue
//! is empty. A connection that never drains is not the flusher's problem: its queue is bounded,
//! and the slow-client policy closes it. Because every write is non-blocking, one stuck client
//! cannot hold up the others.
//!
//! Once a second it also does the hub's housekeeping: expiring history and joining the threads
//! of connections that ended.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::Ordering::Acquire;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, unbounded};

use crate::hub::conn::ConnShared;
use crate::hub::{DeferredList, HubShared};
use crate::sys::{self, POLLIN, POLLOUT};

/// How often the housekeeping runs.
const HOUSEKEEPING: Duration = Duration::from_secs(1);

/// What the flusher is asked to do.
pub(crate) enum Job {
    /// Write these connections' queues as their sockets drain (one job for all the members a
    /// publication left something queued for: one hand-over and one wake-up per publication).
    Flush(Vec<Arc<ConnShared>>),
    /// Write these deferred members at this time, unless the read batch that deferred them
    /// ended first (and took the list).
    FlushBy(Instant, DeferredList),
    /// Shut this connection's socket at this time unless its thread ended (a close handshake's
    /// deadline).
    CloseBy(Instant, Arc<ConnShared>),
}

/// The hub's side of the flusher: a channel and a wake-up. A connection is in at most one
/// `Flush` job at a time (see `needs_flusher`) and one `CloseBy` per close, so what the channel
/// holds is bounded by the number of connections.
pub(crate) struct FlusherHandle {
    tx: Sender<Job>,
    wake: UnixStream,
}

impl FlusherHandle {
    /// The handle and the flusher's ends.
    pub(crate) fn new() -> io::Result<(FlusherHandle, Receiver<Job>, UnixStream)> {
        let (wake, woken) = UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        woken.set_nonblocking(true)?;
        let (tx, rx) = unbounded();
        Ok((FlusherHandle { tx, wake }, rx, woken))
    }

    pub(crate) fn send(&self, job: Job) {
        if self.tx.send(job).is_ok() {
            self.wake();
        }
    }

    /// Wakes the flusher (a full wake-up socket already means it will wake).
    pub(crate) fn wake(&self) {
        let _ = (&self.wake).write(&[1]);
    }
}

/// The flusher thread's loop; returns when the hub stops.
pub(crate) fn run(hub: Arc<HubShared>, jobs: Receiver<Job>, mut woken: UnixStream) {
    let mut flushing: Vec<Arc<ConnShared>> = Vec::new();
    let mut closing: Vec<(Instant, Arc<ConnShared>)> = Vec::new();
    let mut overdue: Vec<(Instant, DeferredList)> = Vec::new();
    let mut fds = Vec::new();
    let mut next_housekeeping = Instant::now() + HOUSEKEEPING;
    loop {
        for job in jobs.try_iter() {
            match job {
                // Written at once where the socket has room; polled for the rest.
                Job::Flush(conns) => flushing.extend(
                    conns
                        .into_iter()
                        .filter(|conn| conn.outbound.flush_for_flusher()),
                ),
                Job::CloseBy(at, conn) => closing.push((at, conn)),
                Job::FlushBy(at, list) => overdue.push((at, list)),
            }
        }
        if hub.stopped.load(Acquire) {
            return;
        }
        let now = Instant::now();
        let next = closing
            .iter()
            .map(|(at, _)| *at)
            .chain(overdue.iter().map(|(at, _)| *at))
            .min()
            .unwrap_or(next_housekeeping)
            .min(next_housekeeping);
        fds.clear();
        fds.push(sys::interest(woken.as_raw_fd(), POLLIN));
        fds.extend(
            flushing
                .iter()
                .map(|c| sys::interest(c.outbound.fd(), POLLOUT)),
        );
        if let Err(e) = sys::poll(&mut fds, Some(next.saturating_duration_since(now))) {
            log::error!("flusher poll failed: {e}");
        }
        let mut drain = [0u8; 64];
        while matches!(woken.read(&mut drain), Ok(n) if n > 0) {}
        // Ready sockets (writable, or in error: the write then fails and drops the queue).
        let mut i = 0;
        flushing.retain(|conn| {
            i += 1;
            fds[i].revents == 0 || conn.outbound.flush_for_flusher()
        });
        let now = Instant::now();
        overdue.retain_mut(|(at, list)| {
            let mut pending = list.lock();
            if pending.members.is_none() {
                return false; // the batch ended and wrote them
            }
            if pending.due > now {
                *at = pending.due; // callbacks are still making progress
                return true;
            }
            let members = pending.members.take().unwrap_or_default();
            drop(pending);
            for conn in members {
                if conn.outbound.needs_flusher() && conn.outbound.flush_for_flusher() {
                    flushing.push(conn);
                }
            }
            false
        });
        closing.retain(|(at, conn)| {
            if *at > now {
                return true;
            }
            if !conn.gone.load(Acquire) {
                log::debug!("connection {}: close handshake timed out", conn.id);
                conn.socket.shutdown();
            }
            false
        });
        if now >= next_housekeeping {
            next_housekeeping = now + HOUSEKEEPING;
            hub.broker.sweep();
            hub.reap_threads();
        }
    }
}
