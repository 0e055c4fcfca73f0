//! The hub: a synchronous, thread-per-connection WebSocket server with admission, rooms,
//! encode-once broadcast, slow-client policy, rate limits and recovery.
//!
//! ```no_run
//! use syncws::Data;
//! use syncws::hub::{Admission, Conn, Handler, Hub, HubConfig, Message, Request};
//!
//! struct Chat;
//!
//! impl Handler for Chat {
//!     fn admit(&self, request: &Request<'_>) -> Admission {
//!         match request.bearer_token() {
//!             Some("s1") => Admission::accept().user("alice"),
//!             _ => Admission::reject(401, "who are you?"),
//!         }
//!     }
//!
//!     fn on_open(&self, conn: &Conn) {
//!         // Join with no position to recover from; no preamble frame.
//!         let _ = conn.hub().join(conn, "lobby", None, |_| None);
//!     }
//!
//!     fn on_message(&self, conn: &Conn, message: Data<'_>) {
//!         if let Data::Text(text) = message {
//!             // Encoded once, whatever the number of members.
//!             let _ = conn.hub().publish("lobby", text.to_string());
//!         }
//!     }
//!
//!     fn encode(&self, publication: &syncws::hub::Publication) -> Message {
//!         Message::text(String::from_utf8_lossy(&publication.data))
//!     }
//! }
//!
//! let hub = Hub::bind("127.0.0.1:8080", HubConfig::default(), Chat)?;
//! println!("listening on {}", hub.local_addr());
//! // ... later:
//! let report = hub.shutdown(std::time::Duration::from_secs(5));
//! println!("{report:?}");
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! ## Threads
//!
//! - one **acceptor** takes connections, reserves their slot against the limits (total, per
//!   IP, handshakes in progress) and starts each connection's thread, or answers `503` with
//!   `Retry-After` without a thread;
//! - one thread **per connection** (small stack, [`HubConfig::stack_size`]) runs the handshake
//!   under an absolute deadline, admission ([`Handler::admit`]), then blocks in `read(2)`: an
//!   idle connection costs one parked thread and one file descriptor;
//! - one **flusher** writes what sockets could not take at once and ends late close handshakes.
//!
//! Writes never block the thread that makes them: a [`publish`](HubHandle::publish) or
//! [`Conn::send`] writes with `MSG_DONTWAIT` when the connection's queue is empty and queues
//! the rest, bounded in bytes and messages ([`HubConfig::slow`] says what a full queue does).
//! Control frames (pong, close) go ahead of queued data.
//!
//! ## Rooms, publications and recovery
//!
//! A [`publish`](HubHandle::publish) goes through the [`Broker`] (in memory by default), which
//! gives it the room's next [`Position`] (an epoch and an offset, 1, 2, 3…) and keeps it in a
//! bounded history. The hub encodes it once ([`Handler::encode`]) and queues the same buffer
//! for every member, under the room's order but without holding any lock while writing.
//! [`join`](HubHandle::join) with the position a subscriber has gives it exactly what it missed,
//! then live publications with no gap and no duplicate, or `recovered = false`.
//!
//! ## Ending
//!
//! [`Handler::on_close`] runs exactly once per opened connection, after it left its rooms.
//! [`Hub::shutdown`] stops accepting, closes every connection with 1001, forces what is left at
//! the deadline, joins every thread and returns a [`DrainReport`].

mod accept;
mod broker;
mod config;
mod conn;
mod fanout;
mod flusher;
mod handler;
mod limits;
mod message;
mod metrics;
mod outbound;
mod rate;
#[cfg(feature = "redis")]
pub mod redis;
mod rooms;
mod serve;
mod stream;
mod upgrade;

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Condvar, Mutex};

pub use broker::{Broker, MemoryBroker};
pub use config::{HistoryLimits, HubConfig, RateLimit, RatePolicy, SLOW_CLOSE, SlowPolicy};
pub use conn::{Conn, Identity};
pub use fanout::{Delivered, Fanout};
pub use handler::{Admission, Disconnect, Handler, Request, Response};
pub use message::Message;
pub use metrics::Metrics;
pub use stream::{BrokerError, BrokerStatus, Position, Publication, Recovery};

use crate::deadline;
use crate::frame::CloseCode;
use crate::guard;
use crate::hub::conn::ConnShared;
use crate::hub::flusher::{FlusherHandle, Job};
use crate::hub::limits::Limits;
use crate::hub::metrics::Counters;
use crate::hub::outbound::{Bounds, Push};
use crate::hub::rooms::Rooms;
use crate::transport::SocketHandle;

thread_local! {
    /// The publications' writes waiting for the end of this connection thread's read batch.
    static BATCH: RefCell<Option<Deferred>> = const { RefCell::new(None) };
}

/// How long deferred writes may wait for one callback that does not return before the flusher
/// writes them instead.
const BATCH_GRACE: Duration = Duration::from_millis(2);

/// Members whose writes wait for the end of a read batch, shared with the flusher in case the
/// batch does not end in time: whoever takes `members` writes them.
pub(crate) struct Pending {
    /// When the flusher may take the list: [`BATCH_GRACE`] after the latest callback started.
    pub due: Instant,
    pub members: Option<Vec<Arc<ConnShared>>>,
}

pub(crate) type DeferredList = Arc<Mutex<Pending>>;

fn new_list() -> DeferredList {
    Arc::new(Mutex::new(Pending {
        due: Instant::now(),
        members: Some(Vec::new()),
    }))
}

struct Deferred {
    list: DeferredList,
    armed: bool,
}

/// Write batching on a connection's thread: while it handles the messages one `read` brought,
/// the writes of what its callbacks publish are deferred to the end of the batch, so a burst of
/// 50 publications costs each member one write instead of 50. A callback that blocks cannot hold
/// them back: the first deferral asks the flusher to write them after [`BATCH_GRACE`] if the
/// batch has not ended by then. Elsewhere (an application thread) a publication is written at
/// once.
pub(crate) struct Batch {
    hub: Arc<HubShared>,
}

impl Batch {
    pub(crate) fn begin(hub: Arc<HubShared>) -> Self {
        BATCH.with(|b| {
            *b.borrow_mut() = Some(Deferred {
                list: new_list(),
                armed: false,
            })
        });
        Batch { hub }
    }
}

impl Batch {
    /// A callback is about to run: the deferred writes may wait another [`BATCH_GRACE`].
    pub(crate) fn progress(&self) {
        BATCH.with(|b| {
            if let Some(d) = b.borrow().as_ref().filter(|d| d.armed) {
                d.list.lock().due = deadline::after(Instant::now(), BATCH_GRACE);
            }
        });
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        let deferred = BATCH.with(|b| b.borrow_mut().take());
        let taken = deferred.and_then(|d| d.list.lock().members.take());
        for conn in taken.unwrap_or_default() {
            self.hub.flush(&conn);
        }
    }
}

/// Why a message did not reach a connection's socket or queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// The connection is closing or gone.
    Closed,
    /// The connection's queue is full and the slow policy is [`SlowPolicy::Drop`]: this message
    /// was dropped (and counted); the connection stays open.
    Dropped,
    /// The connection's queue is full and the slow policy closed it.
    SlowClosed,
    /// No open connection has this id.
    NoSuchConnection,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SendError::Closed => "the connection is closing or gone",
            SendError::Dropped => "the connection's queue is full: message dropped",
            SendError::SlowClosed => "the connection's queue is full: connection closed as slow",
            SendError::NoSuchConnection => "no open connection has this id",
        })
    }
}

impl std::error::Error for SendError {}

/// Why a join failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinError {
    /// The connection is closing or gone.
    Closed,
    /// [`Handler::authorize_join`] said no.
    NotAuthorized,
    /// The connection is already a member of the room.
    AlreadyMember,
    /// The connection belongs to another hub.
    OtherHub,
    /// The broker failed.
    Broker(BrokerError),
}

impl fmt::Display for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JoinError::Closed => f.write_str("the connection is closing or gone"),
            JoinError::NotAuthorized => f.write_str("not authorised to join this room"),
            JoinError::AlreadyMember => f.write_str("already a member of this room"),
            JoinError::OtherHub => f.write_str("the connection belongs to another hub"),
            JoinError::Broker(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for JoinError {}

/// What a join found: where the room's stream is, and what was replayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// The newest publication's position (offset 0 before any): the first live publication the
    /// member receives has the next offset.
    pub position: Position,
    /// See [`Recovery::recovered`].
    pub recovered: bool,
    /// Publications replayed to the member (after the preamble, before anything live).
    pub replayed: usize,
}

/// What [`Hub::shutdown`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainReport {
    /// Connection threads that ended before the deadline (close handshake done or client gone).
    pub ended: usize,
    /// Connection threads whose socket was shut at the deadline.
    pub forced: usize,
    /// Connection threads still running after the grace that follows the deadline (blocked in
    /// a callback); they were left running, detached. Zero unless a callback never returns.
    pub stuck: usize,
    /// How long the drain took.
    pub took: Duration,
}

/// A running hub: the owner, which shuts it down (explicitly, or when dropped). Every other
/// operation is on [`HubHandle`], which `Hub` dereferences to.
pub struct Hub {
    handle: HubHandle,
    acceptor: Option<JoinHandle<()>>,
    flusher: Option<JoinHandle<()>>,
    wake_acceptor: UnixStream,
}

/// A cheap, cloneable handle to a running hub, for publishing, joining and sending from any
/// thread (a callback gets one from [`Conn::hub`]).
#[derive(Clone)]
pub struct HubHandle {
    pub(crate) shared: Arc<HubShared>,
}

/// Everything the hub's threads share.
pub(crate) struct HubShared {
    pub config: HubConfig,
    pub handler: Box<dyn Handler>,
    pub broker: Arc<dyn Broker>,
    pub counters: Arc<Counters>,
    pub limits: Arc<Limits>,
    pub rooms: Rooms,
    conns: Mutex<HashMap<u64, Arc<ConnShared>>>,
    users: Mutex<HashMap<Arc<str>, Vec<Arc<ConnShared>>>>,
    /// Every connection thread not joined yet, with its socket (to force it at shutdown).
    pub threads: Mutex<HashMap<u64, (JoinHandle<()>, SocketHandle)>>,
    /// Connection threads running; `exited` is signalled when one ends.
    running: Mutex<usize>,
    exited: Condvar,
    flusher: FlusherHandle,
    pub next_id: AtomicU64,
    stopping: AtomicBool,
    pub stopped: AtomicBool,
    local_addr: SocketAddr,
}

impl Hub {
    /// Listens on `addr` and starts the hub with the in-memory broker.
    pub fn bind(
        addr: impl ToSocketAddrs,
        config: HubConfig,
        handler: impl Handler,
    ) -> io::Result<Hub> {
        let broker = Arc::new(MemoryBroker::new(config.history));
        Self::bind_with_broker(addr, config, handler, broker)
    }

    /// Listens on `addr` and starts the hub with `broker` for publications and history.
    pub fn bind_with_broker(
        addr: impl ToSocketAddrs,
        config: HubConfig,
        handler: impl Handler,
        broker: Arc<dyn Broker>,
    ) -> io::Result<Hub> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let local_addr = listener.local_addr()?;
        let counters = Arc::new(Counters::default());
        let (flusher, jobs, flusher_woken) = FlusherHandle::new()?;
        let (wake_acceptor, acceptor_woken) = UnixStream::pair()?;
        wake_acceptor.set_nonblocking(true)?;
        acceptor_woken.set_nonblocking(true)?;
        let shared = Arc::new(HubShared {
            limits: Limits::new(
                config.max_connections,
                config.max_per_ip,
                config.max_handshakes,
            ),
            rooms: Rooms::new(counters.clone()),
            config,
            handler: Box::new(handler),
            broker,
            counters,
            conns: Mutex::new(HashMap::new()),
            users: Mutex::new(HashMap::new()),
            threads: Mutex::new(HashMap::new()),
            running: Mutex::new(0),
            exited: Condvar::new(),
            flusher,
            next_id: AtomicU64::new(1),
            stopping: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            local_addr,
        });
        shared.broker.attach(Fanout {
            hub: Arc::downgrade(&shared),
        });
        let flusher = {
            let hub = shared.clone();
            std::thread::Builder::new()
                .name("syncws-hub-flusher".into())
                .spawn(move || flusher::run(hub, jobs, flusher_woken))?
        };
        let acceptor = {
            let hub = shared.clone();
            std::thread::Builder::new()
                .name("syncws-hub-acceptor".into())
                .spawn(move || accept::run(hub, listener, acceptor_woken))
        };
        let acceptor = match acceptor {
            Ok(a) => a,
            Err(e) => {
                shared.stopped.store(true, Release);
                shared.flusher.wake();
                let _ = flusher.join();
                return Err(e);
            }
        };
        log::info!("hub listening on {local_addr}");
        Ok(Hub {
            handle: HubHandle { shared },
            acceptor: Some(acceptor),
            flusher: Some(flusher),
            wake_acceptor,
        })
    }

    /// A handle for other threads.
    pub fn handle(&self) -> HubHandle {
        self.handle.clone()
    }

    /// Drains the hub: stops accepting, closes every connection with 1001 ("going away"),
    /// waits for them until `timeout`, shuts the sockets of those left, joins every thread and
    /// says what happened.
    pub fn shutdown(mut self, timeout: Duration) -> DrainReport {
        self.drain(timeout)
    }

    fn drain(&mut self, timeout: Duration) -> DrainReport {
        let started = Instant::now();
        let hub = &self.handle.shared;
        hub.stopping.store(true, Release);
        let _ = (&self.wake_acceptor).write(&[1]);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        let at_start = *hub.running.lock();
        let conns: Vec<_> = hub.conns.lock().values().cloned().collect();
        for conn in &conns {
            hub.begin_close(conn, CloseCode::GOING_AWAY, "server shutting down", false);
        }
        let deadline = deadline::after(started, timeout);
        let left = hub.wait_for_threads(deadline);
        let mut forced = 0;
        if left > 0 {
            for (_, socket) in hub.threads.lock().values() {
                socket.shutdown();
            }
            forced = left;
        }
        let grace = deadline::after(
            Instant::now(),
            hub.config.close_timeout.max(Duration::from_secs(1)),
        );
        let stuck = hub.wait_for_threads(grace);
        let threads: Vec<_> = hub.threads.lock().drain().collect();
        for (_, (join, _)) in threads {
            if join.is_finished() {
                let _ = join.join();
            }
        }
        hub.stopped.store(true, Release);
        hub.flusher.wake();
        if let Some(f) = self.flusher.take() {
            let _ = f.join();
        }
        hub.broker.shutdown();
        let report = DrainReport {
            ended: at_start.saturating_sub(forced),
            forced: forced - stuck.min(forced),
            stuck,
            took: started.elapsed(),
        };
        log::info!("hub drained: {report:?}");
        report
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        if self.acceptor.is_some() {
            let timeout = self.handle.shared.config.close_timeout;
            self.drain(timeout);
        }
    }
}

impl std::ops::Deref for Hub {
    type Target = HubHandle;

    fn deref(&self) -> &HubHandle {
        &self.handle
    }
}

impl HubHandle {
    /// The address the hub listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// The hub's figures, read without stopping anything.
    pub fn metrics(&self) -> Metrics {
        let mut m = self.shared.counters.snapshot();
        m.broker = self.shared.broker.status();
        m
    }

    /// Publishes `data` to `room`: the broker gives it the room's next position and keeps it
    /// in history; every member gets it, encoded once by [`Handler::encode`] on each hub. Never
    /// blocks on a socket. A member whose queue is full gets the slow policy. With the memory
    /// broker the members are written to before this returns; a shared broker delivers from
    /// its subscription.
    pub fn publish(&self, room: &str, data: impl Into<Bytes>) -> Result<Position, BrokerError> {
        let hub = &self.shared;
        let started = Instant::now();
        let position = hub.broker.publish(room, data.into())?;
        hub.counters.publications.fetch_add(1, Relaxed);
        hub.counters.record_fanout(started.elapsed());
        Ok(position)
    }

    /// Makes `conn` a member of `room`. With `since` (the last position the subscriber has),
    /// the publications it missed are replayed; `preamble` builds a frame sent before them
    /// (and before anything live) from what the join found, such as a "subscribed" reply.
    pub fn join(
        &self,
        conn: &Conn,
        room: &str,
        since: Option<&Position>,
        preamble: impl FnOnce(&Joined) -> Option<Message>,
    ) -> Result<Joined, JoinError> {
        let hub = &self.shared;
        let member = &conn.shared;
        if !Arc::ptr_eq(&member.hub, hub) {
            return Err(JoinError::OtherHub);
        }
        match guard::catch("authorize_join", || hub.handler.authorize_join(conn, room)) {
            Ok(true) => {}
            Ok(false) => return Err(JoinError::NotAuthorized),
            Err(_) => {
                hub.counters.callback_panics.fetch_add(1, Relaxed);
                return Err(JoinError::NotAuthorized);
            }
        }
        let _joining = member.joining.lock();
        if member.gone.load(Acquire) {
            return Err(JoinError::Closed);
        }
        if member.rooms.lock().contains(room) {
            return Err(JoinError::AlreadyMember);
        }
        let name: Arc<str> = Arc::from(room);
        let mut preamble = Some(preamble);
        let mut joined = None;
        hub.broker
            .subscribe(room, since, &mut |recovery| {
                // The replay is encoded first, so that the preamble tells the truth: an
                // encoding that panics breaks the promise of no gap, and says so.
                let mut replay = Vec::with_capacity(recovery.missed.len());
                let mut recovered = recovery.recovered;
                for publication in &recovery.missed {
                    match hub.encode(publication) {
                        Some(m) => replay.push(m),
                        None => recovered = false,
                    }
                }
                if !recovered {
                    replay.clear();
                }
                let j = Joined {
                    position: recovery.position.clone(),
                    recovered,
                    replayed: replay.len(),
                };
                let first = preamble
                    .take()
                    .and_then(|p| guard::catch("join preamble", || p(&j)).ok().flatten());
                if let Some(first) = first {
                    member.outbound.push_unbounded(&first);
                }
                // The replay ignores the queue's bounds (history bounds it): cutting it would
                // break the promise of no gap.
                for m in &replay {
                    member.outbound.push_unbounded(m);
                }
                hub.rooms.add(&name, member);
                joined = Some(j);
            })
            .map_err(JoinError::Broker)?;
        member.rooms.lock().insert(name);
        hub.flush(member);
        joined.ok_or_else(|| {
            JoinError::Broker(BrokerError::Unavailable("the broker did not join".into()))
        })
    }

    /// Removes `conn` from `room`; false if it was not a member.
    pub fn leave(&self, conn: &Conn, room: &str) -> bool {
        if !Arc::ptr_eq(&conn.shared.hub, &self.shared) {
            return false;
        }
        let _joining = conn.shared.joining.lock();
        if !conn.shared.rooms.lock().remove(room) {
            return false;
        }
        self.shared.rooms.remove(room, conn.shared.id);
        self.shared.broker.unsubscribe(room);
        true
    }

    /// The ids of `room`'s members on this hub.
    pub fn members(&self, room: &str) -> Vec<u64> {
        self.shared.rooms.members(room)
    }

    /// The open connection with this id.
    pub fn conn(&self, id: u64) -> Option<Conn> {
        let conns = self.shared.conns.lock();
        conns.get(&id).map(|shared| Conn {
            shared: shared.clone(),
        })
    }

    /// Sends to one connection by id (see [`Conn::send`]).
    pub fn send(&self, id: u64, message: &Message) -> Result<(), SendError> {
        let conn = self.conn(id).ok_or(SendError::NoSuchConnection)?;
        self.shared.send_to(&conn.shared, message)
    }

    /// Sends to every open connection of `user`; returns how many took it.
    pub fn send_to_user(&self, user: &str, message: &Message) -> usize {
        let conns: Vec<_> = self
            .shared
            .users
            .lock()
            .get(user)
            .cloned()
            .unwrap_or_default();
        conns
            .iter()
            .filter(|c| self.shared.send_to(c, message).is_ok())
            .count()
    }

    /// The open connections of `user`.
    pub fn user_conns(&self, user: &str) -> Vec<Conn> {
        let users = self.shared.users.lock();
        users
            .get(user)
            .map(|v| {
                v.iter()
                    .map(|shared| Conn {
                        shared: shared.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl HubShared {
    pub(crate) fn queue_bounds(&self) -> Bounds {
        Bounds {
            max_bytes: self.config.queue_max_bytes,
            max_messages: self.config.queue_max_messages,
        }
    }

    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(Acquire)
    }

    /// Encodes a publication with the handler; a panic is counted and the publication skipped.
    pub(crate) fn encode(&self, publication: &Publication) -> Option<Message> {
        match guard::catch("encode", || self.handler.encode(publication)) {
            Ok(m) => Some(m),
            Err(_) => {
                self.counters.callback_panics.fetch_add(1, Relaxed);
                None
            }
        }
    }

    /// Queues `message` for `conn` (no write); applies the slow policy to a full queue. True if
    /// the connection now has something to flush.
    pub(crate) fn push_or_slow(&self, conn: &Arc<ConnShared>, message: &Message) -> bool {
        match conn.outbound.push(message) {
            Push::Queued | Push::Written => true,
            Push::Closed => false,
            Push::Full => {
                self.slow(conn);
                false
            }
        }
    }

    /// The slow policy for a connection whose queue is full.
    fn slow(&self, conn: &Arc<ConnShared>) -> SendError {
        match self.config.slow {
            SlowPolicy::Drop => {
                self.counters.dropped_add(1);
                SendError::Dropped
            }
            SlowPolicy::Close(code) => {
                if self.begin_close(conn, code, "slow", true) {
                    self.counters.slow_closes.fetch_add(1, Relaxed);
                }
                SendError::SlowClosed
            }
        }
    }

    /// Writes what the socket takes and hands the rest to the flusher.
    pub(crate) fn flush(&self, conn: &Arc<ConnShared>) {
        if conn.outbound.flush() {
            self.hand_to_flusher(conn);
        }
    }

    /// Defers the writes of `members` to the end of the current read batch (see [`Batch`]);
    /// gives them back when there is no batch on this thread.
    pub(crate) fn defer(&self, members: Vec<Arc<ConnShared>>) -> Option<Vec<Arc<ConnShared>>> {
        BATCH.with(|b| {
            let mut b = b.borrow_mut();
            let Some(batch) = b.as_mut() else {
                return Some(members);
            };
            let mut list = batch.list.lock();
            if list.members.is_none() {
                // The flusher took the list (a callback ran past the grace): start another.
                drop(list);
                batch.list = new_list();
                batch.armed = false;
                list = batch.list.lock();
            }
            if let Some(l) = list.members.as_mut() {
                l.extend(members);
            }
            list.due = deadline::after(Instant::now(), BATCH_GRACE);
            let due = list.due;
            drop(list);
            if !batch.armed {
                batch.armed = true;
                self.flusher.send(Job::FlushBy(due, batch.list.clone()));
            }
            None
        })
    }

    pub(crate) fn hand_to_flusher(&self, conn: &Arc<ConnShared>) {
        if conn.outbound.needs_flusher() {
            self.flusher.send(Job::Flush(vec![conn.clone()]));
        }
    }

    pub(crate) fn send_to(
        &self,
        conn: &Arc<ConnShared>,
        message: &Message,
    ) -> Result<(), SendError> {
        match conn.outbound.send(message) {
            Push::Written => Ok(()),
            Push::Queued => {
                self.hand_to_flusher(conn);
                Ok(())
            }
            Push::Closed => Err(SendError::Closed),
            Push::Full => Err(self.slow(conn)),
        }
    }

    /// Starts our close (the first close wins); the flusher shuts the socket if the handshake
    /// is not over by `close_timeout`. True if this call started it.
    pub(crate) fn begin_close(
        &self,
        conn: &Arc<ConnShared>,
        code: CloseCode,
        reason: &str,
        drop_data: bool,
    ) -> bool {
        if !conn.outbound.close(code, reason, drop_data) {
            return false;
        }
        self.counters.closing.fetch_add(1, Relaxed);
        self.hand_to_flusher(conn);
        let by = deadline::after(Instant::now(), self.config.close_timeout);
        self.flusher.send(Job::CloseBy(by, conn.clone()));
        true
    }

    /// A connection is open: into the maps.
    pub(crate) fn register(&self, conn: &Arc<ConnShared>) {
        self.conns.lock().insert(conn.id, conn.clone());
        if let Some(user) = &conn.identity.user {
            self.users
                .lock()
                .entry(user.clone())
                .or_default()
                .push(conn.clone());
        }
        self.counters.open.fetch_add(1, Relaxed);
        self.counters.accepted.fetch_add(1, Relaxed);
    }

    /// A connection ended: out of every room and map, once.
    pub(crate) fn unregister(&self, conn: &Arc<ConnShared>) {
        {
            let _joining = conn.joining.lock();
            if conn.gone.swap(true, AcqRel) {
                return;
            }
            let rooms = std::mem::take(&mut *conn.rooms.lock());
            for room in rooms {
                self.rooms.remove(&room, conn.id);
                self.broker.unsubscribe(&room);
            }
        }
        self.conns.lock().remove(&conn.id);
        if let Some(user) = &conn.identity.user {
            let mut users = self.users.lock();
            if let Some(list) = users.get_mut(user) {
                list.retain(|c| c.id != conn.id);
                if list.is_empty() {
                    users.remove(user);
                }
            }
        }
        self.counters.open.fetch_sub(1, Relaxed);
        if conn.outbound.our_close().is_some() {
            self.counters.closing.fetch_sub(1, Relaxed);
        }
        self.counters.closed.fetch_add(1, Relaxed);
    }

    /// A connection thread starts (`+1`) or ends (`-1`).
    pub(crate) fn thread_started(&self) {
        *self.running.lock() += 1;
    }

    pub(crate) fn thread_ended(&self) {
        let mut running = self.running.lock();
        *running -= 1;
        self.exited.notify_all();
    }

    /// Waits until every connection thread ended or `deadline`; returns how many still run.
    fn wait_for_threads(&self, deadline: Instant) -> usize {
        let mut running = self.running.lock();
        while *running > 0 {
            if self.exited.wait_until(&mut running, deadline).timed_out() {
                break;
            }
        }
        *running
    }

    /// Joins the threads of connections that ended.
    pub(crate) fn reap_threads(&self) {
        let finished: Vec<JoinHandle<()>> = {
            let mut threads = self.threads.lock();
            let done: Vec<u64> = threads
                .iter()
                .filter(|(_, (join, _))| join.is_finished())
                .map(|(id, _)| *id)
                .collect();
            done.iter()
                .filter_map(|id| threads.remove(id).map(|(join, _)| join))
                .collect()
        };
        for join in finished {
            let _ = join.join();
        }
    }
}
