//! [`RedisBroker`]: hubs on several nodes sharing rooms, history and recovery through one Redis
//! (cargo feature `redis`).
//!
//! - **Publish** is one server-side script: the room's epoch (created if missing), the next
//!   offset, the entry appended to a capped stream (length and time to live from
//!   [`HistoryLimits`]), then a PUBLISH carrying epoch, offset and payload. While Redis is
//!   unreachable, [`publish`](crate::hub::HubHandle::publish) returns a [`BrokerError`] at once
//!   (bounded by the command timeout); nothing is buffered.
//! - **Live delivery** uses PUB/SUB: each node subscribes, on its own connection, to the rooms
//!   its local members need (one subscription per room, counted; dropped with the last local
//!   member) and fans out locally, encoded once, through the hub's [`Fanout`].
//! - **Gaps are never silent**: a node keeps, per room, the epoch and the last offset it
//!   delivered. A jump in offsets is filled from the stream before the message is delivered; a
//!   new epoch, or a gap the stream no longer covers, is a reset that the hub announces to the
//!   room's members ([`Handler::on_reset`](crate::hub::Handler::on_reset)). A rebuilt
//!   subscription recovers every room the same way. A client recovering by `(epoch, offset)`
//!   reads the stream, so it may reconnect to any node.
//! - **Failures**: the subscription connection reconnects with [`Backoff`]; a link that goes
//!   quiet is probed (the node publishes to its own probe channel and must hear it back) and
//!   rebuilt when the probe is not heard within [`RedisConfig::probe_timeout`]: a PUB/SUB link
//!   that silently stops delivering (a proxy, a paused server) is caught.
//!   [`RedisBroker::status`] (and the hub's metrics) has the broker's state and counters.
//!
//! ## Scaling past one Redis
//!
//! Every key and the channel of a room share a hash tag (`prefix{room}`), so a Redis Cluster
//! keeps a room in one slot: the publish script stays atomic. What the code would need: the
//! `cluster` feature of the `redis` crate for commands, and sharded PUB/SUB (`SSUBSCRIBE` /
//! `SPUBLISH`, Redis 7) on a connection per shard owning the room's slot, so that publications
//! do not fan out to every shard; the subscription thread here would become one per shard, each
//! with its own probe. Without a cluster, rooms can be spread over several independent Redis
//! instances by a hash of the room name (each room still lives in exactly one instance). Where
//! it stops: a single room's publications go through one shard (one primary's CPU), and
//! failover to a replica can lose the last acknowledged writes (Redis replication is
//! asynchronous): the offset then goes back, which this broker detects and announces as a
//! reset.

mod commands;
mod subscription;

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::{Sender, bounded, unbounded};
use parking_lot::Mutex;

use crate::backoff::Backoff;
use crate::hub::broker::Broker;
use crate::hub::config::HistoryLimits;
use crate::hub::fanout::Fanout;
use crate::hub::stream::{BrokerError, BrokerStatus, Position, Publication, Recovery, new_epoch};
use commands::{Commands, keys};
use subscription::Control;

/// How the broker reaches and uses Redis.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://host:port[/db]` (default `redis://127.0.0.1:6379`).
    pub url: String,
    /// Prefix of every key and channel (default `syncws:`).
    pub prefix: String,
    /// History per room: the stream's length cap and time to live (default
    /// [`HistoryLimits::default`]; `max_bytes` is not enforced by Redis).
    pub history: HistoryLimits,
    /// How long a room's epoch and last offset live without a publication (default 7 days).
    pub epoch_ttl: Duration,
    /// Connect, read and write timeout of every Redis call (default 2 s).
    pub timeout: Duration,
    /// A subscription quiet for this long is probed (default 1 s).
    pub probe_interval: Duration,
    /// A subscription that hears nothing, probe included, for this long is rebuilt (default
    /// 5 s).
    pub probe_timeout: Duration,
    /// Delays between attempts to rebuild the subscription (default 100 ms doubling to 5 s).
    pub reconnect: Backoff,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379".into(),
            prefix: "syncws:".into(),
            history: HistoryLimits::default(),
            epoch_ttl: Duration::from_secs(7 * 24 * 3600),
            timeout: Duration::from_secs(2),
            probe_interval: Duration::from_secs(1),
            probe_timeout: Duration::from_secs(5),
            reconnect: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
        }
    }
}

/// What a node knows of one room it subscribes to.
#[derive(Default)]
pub(crate) struct RoomState {
    /// Local members that joined through this broker and have not left.
    refs: usize,
    subscribed: bool,
    /// The epoch and last offset delivered to local members.
    epoch: Option<Arc<str>>,
    last: u64,
    /// A digest of the last delivered publication's data (0: unknown), to prove after a
    /// rebuild that the stream still holds the same publication at `last`.
    digest: u64,
}

/// A digest of a publication's data (SipHash with fixed keys: the same in every run).
pub(crate) fn digest(data: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut h = std::hash::DefaultHasher::new();
    h.write(data);
    h.finish().max(1)
}

pub(crate) struct Shared {
    config: RedisConfig,
    commands: Commands,
    client: redis::Client,
    fanout: OnceLock<Fanout>,
    rooms: Mutex<HashMap<String, Arc<Mutex<RoomState>>>>,
    control: Sender<Control>,
    connected: AtomicBool,
    reconnects: AtomicU64,
    probe_failures: AtomicU64,
    gaps_recovered: AtomicU64,
    gaps_unrecovered: AtomicU64,
    stop: AtomicBool,
    /// This node's probe channel.
    probe: String,
    random: RandomState,
}

/// A [`Broker`] on Redis, for hubs on several nodes. Create it, then pass it to
/// [`Hub::bind_with_broker`](crate::hub::Hub::bind_with_broker).
///
/// ```no_run
/// use std::sync::Arc;
/// use syncws::hub::{Handler, Hub, HubConfig};
/// use syncws::hub::redis::{RedisBroker, RedisConfig};
///
/// struct App;
/// impl Handler for App {}
///
/// let broker = RedisBroker::new(RedisConfig {
///     url: "redis://10.0.0.5:6379".into(),
///     ..RedisConfig::default()
/// })?;
/// let hub = Hub::bind_with_broker("0.0.0.0:9001", HubConfig::default(), App, Arc::new(broker))?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct RedisBroker {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    pending: Mutex<Option<crossbeam_channel::Receiver<Control>>>,
}

impl RedisBroker {
    /// A broker for Redis at `config.url`. Nothing is connected yet (the subscription starts
    /// with the hub; commands connect on first use), so a Redis that is down now is not an
    /// error here.
    pub fn new(config: RedisConfig) -> Result<Self, BrokerError> {
        let client = redis::Client::open(config.url.as_str())
            .map_err(|e| BrokerError::Unavailable(e.to_string()))?;
        let (control, receiver) = unbounded();
        let random = RandomState::new();
        let probe = format!(
            "{}probe:{:016x}",
            config.prefix,
            random.build_hasher().finish()
        );
        Ok(RedisBroker {
            shared: Arc::new(Shared {
                commands: Commands::new(
                    client.clone(),
                    config.timeout,
                    config.history.max_age,
                    config.epoch_ttl.max(config.history.max_age),
                ),
                client,
                config,
                fanout: OnceLock::new(),
                rooms: Mutex::new(HashMap::new()),
                control,
                connected: AtomicBool::new(false),
                reconnects: AtomicU64::new(0),
                probe_failures: AtomicU64::new(0),
                gaps_recovered: AtomicU64::new(0),
                gaps_unrecovered: AtomicU64::new(0),
                stop: AtomicBool::new(false),
                probe,
                random,
            }),
            thread: Mutex::new(None),
            pending: Mutex::new(Some(receiver)),
        })
    }

    /// The broker's state and counters (also in the hub's [`Metrics`](crate::hub::Metrics)).
    pub fn status(&self) -> BrokerStatus {
        let s = &self.shared;
        BrokerStatus {
            connected: s.connected.load(Relaxed),
            reconnects: s.reconnects.load(Relaxed),
            probe_failures: s.probe_failures.load(Relaxed),
            gaps_recovered: s.gaps_recovered.load(Relaxed),
            gaps_unrecovered: s.gaps_unrecovered.load(Relaxed),
        }
    }
}

impl Drop for RedisBroker {
    fn drop(&mut self) {
        self.stop();
    }
}

impl RedisBroker {
    /// Asks the subscription thread to subscribe to `room` and waits for Redis to confirm.
    fn confirm_subscription(&self, room: &str) -> Result<(), BrokerError> {
        let s = &self.shared;
        let (ack, acked) = bounded(1);
        s.control
            .send(Control::Subscribe(room.to_string(), ack))
            .map_err(|_| BrokerError::Unavailable("redis subscription thread is gone".into()))?;
        acked
            .recv_timeout((s.config.timeout * 3).max(Duration::from_secs(5)))
            .map_err(|_| {
                BrokerError::Unavailable("redis subscription not confirmed in time".into())
            })?
    }

    fn stop(&self) {
        self.shared.stop.store(true, Relaxed);
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

impl Shared {
    /// A fresh epoch.
    fn new_epoch(&self) -> String {
        new_epoch(&self.random)
    }

    fn room(&self, room: &str) -> Arc<Mutex<RoomState>> {
        self.rooms
            .lock()
            .entry(room.to_string())
            .or_default()
            .clone()
    }

    fn publication(&self, room: &str, epoch: &Arc<str>, offset: u64, data: Bytes) -> Publication {
        Publication {
            room: Arc::from(room),
            position: Position {
                epoch: epoch.clone(),
                offset,
            },
            data,
        }
    }
}

impl RedisBroker {
    /// The part of a join that runs under the room's state lock (see `subscribe`).
    fn join_locked(
        &self,
        room: &str,
        state: &Arc<Mutex<RoomState>>,
        since: Option<&Position>,
        join: &mut dyn FnMut(&Recovery),
    ) -> Result<(), BrokerError> {
        let s = &self.shared;
        let mut st = state.lock();
        let k = keys(&s.config.prefix, room);
        let head = s
            .commands
            .head(&k, st.epoch.as_deref(), st.last, &s.new_epoch(), false)?;
        match &st.epoch {
            None => {
                st.epoch = Some(head.epoch.clone());
                st.last = head.offset;
                st.digest = 0;
            }
            Some(e) if **e != *head.epoch => {
                // The stream was reset and this node has not heard of it yet.
                st.epoch = Some(head.epoch.clone());
                st.last = head.offset;
                st.digest = 0;
                s.gaps_unrecovered.fetch_add(1, Relaxed);
                if let Some(f) = s.fanout.get() {
                    f.reset(room, &head);
                }
            }
            Some(_) => {}
        }
        let epoch = st.epoch.clone().unwrap_or_else(|| head.epoch.clone());
        let position = Position {
            epoch: epoch.clone(),
            offset: st.last,
        };
        let (recovered, missed) = match since {
            Some(p) if *p.epoch == *epoch && p.offset <= st.last => {
                let (covered, entries) = s.commands.range(&k, p.offset + 1, st.last)?;
                if covered {
                    let missed = entries
                        .into_iter()
                        .map(|(o, d)| s.publication(room, &epoch, o, d))
                        .collect();
                    (true, missed)
                } else {
                    (false, Vec::new())
                }
            }
            _ => (false, Vec::new()),
        };
        join(&Recovery {
            position,
            recovered,
            missed,
        });
        Ok(())
    }
}

impl Broker for RedisBroker {
    fn attach(&self, fanout: Fanout) {
        let _ = self.shared.fanout.set(fanout);
        let Some(receiver) = self.pending.lock().take() else {
            return;
        };
        let shared = self.shared.clone();
        match std::thread::Builder::new()
            .name("syncws-hub-redis".into())
            .spawn(move || subscription::run(&shared, &receiver))
        {
            Ok(t) => *self.thread.lock() = Some(t),
            Err(e) => log::error!("redis subscription thread not started: {e}"),
        }
    }

    fn publish(&self, room: &str, data: Bytes) -> Result<Position, BrokerError> {
        let s = &self.shared;
        let h = &s.config.history;
        s.commands.publish(
            &keys(&s.config.prefix, room),
            &data,
            &s.new_epoch(),
            h.max_publications,
            h.max_age,
            s.config.epoch_ttl.max(h.max_age),
        )
    }

    fn subscribe(
        &self,
        room: &str,
        since: Option<&Position>,
        join: &mut dyn FnMut(&Recovery),
    ) -> Result<(), BrokerError> {
        let s = &self.shared;
        let state = s.room(room);
        // Counted (and marked subscribed) first, so that a last member leaving meanwhile does
        // not unsubscribe the room, and a rebuild meanwhile subscribes it on the new link too.
        let needs_subscription = {
            let mut st = state.lock();
            st.refs += 1;
            let needs = !st.subscribed;
            if needs {
                st.subscribed = true;
                st.epoch = None;
            }
            needs
        };
        if needs_subscription {
            // Without the room's lock: the subscription thread may need it meanwhile.
            if let Err(e) = self.confirm_subscription(room) {
                self.unsubscribe(room);
                return Err(e);
            }
        }
        let joined = self.join_locked(room, &state, since, join);
        if joined.is_err() {
            // Nothing was joined: the member is not counted, and the room's subscription goes
            // when no member is left.
            self.unsubscribe(room);
        }
        joined
    }

    fn shutdown(&self) {
        self.stop();
    }

    fn status(&self) -> Option<BrokerStatus> {
        Some(RedisBroker::status(self))
    }

    fn unsubscribe(&self, room: &str) {
        let s = &self.shared;
        let state = s.room(room);
        let mut st = state.lock();
        st.refs = st.refs.saturating_sub(1);
        if st.refs == 0 && st.subscribed {
            st.subscribed = false;
            st.epoch = None;
            st.last = 0;
            let _ = s.control.send(Control::Unsubscribe(room.to_string()));
        }
    }
}
