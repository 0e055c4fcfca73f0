//! The broker seam: where publications get their position and where history lives.
//!
//! A [`Broker`] numbers each room's publications (an epoch and an offset that goes up by one per
//! publication), keeps a bounded history, and orders two things per room: the fan-out of each
//! publication, and a subscriber's join with what it missed. The hub keeps membership and does
//! the writing; the broker decides what a subscriber gets so that nothing is missed or repeated.
//!
//! [`MemoryBroker`] (the default) keeps everything in this process and delivers on the
//! publisher's thread. A broker shared by several hub processes (Redis) implements the same
//! trait and delivers from its subscription.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::hub::config::HistoryLimits;
use crate::hub::fanout::Fanout;
use crate::hub::stream::{BrokerError, BrokerStatus, Position, Publication, Recovery, new_epoch};

/// Numbering, history and per-room order of publications.
///
/// A broker gives each publication its position, keeps the bounded history, and hands every
/// publication of a room that has local members to the hub's [`Fanout`], in offset order. A
/// `subscribe` on a room must run its `join` between two deliveries of that room, never during
/// one: a publication is then either in the joiner's `missed` or delivered after the join (and
/// so to the new member), never both, never neither. `join` must not call the broker.
pub trait Broker: Send + Sync + 'static {
    /// Called once, when the hub starts: where publications are delivered.
    fn attach(&self, fanout: Fanout);

    /// Gives `data` the room's next position and stores it; it reaches every node's local
    /// members through their [`Fanout`].
    fn publish(&self, room: &str, data: Bytes) -> Result<Position, BrokerError>;

    /// Works out what a subscriber that has everything up to `since` lacks, and calls `join`
    /// with it, ordered with the room's deliveries. One call per local member joining.
    fn subscribe(
        &self,
        room: &str,
        since: Option<&Position>,
        join: &mut dyn FnMut(&Recovery),
    ) -> Result<(), BrokerError>;

    /// A local member left `room` (one call per member that joined).
    fn unsubscribe(&self, room: &str) {
        let _ = room;
    }

    /// Called about once a second: drop expired history, check connections.
    fn sweep(&self) {}

    /// The hub is shutting down: stop and join the broker's threads, if any.
    fn shutdown(&self) {}

    /// The broker's connection state and counters, for [`Metrics`](super::Metrics) (`None`
    /// for a broker without a connection, such as the memory broker).
    fn status(&self) -> Option<BrokerStatus> {
        None
    }
}

/// The default broker: history in this process's memory, bounded by [`HistoryLimits`].
///
/// Each room gets a random epoch the first time it is used; it stays for the life of the
/// process (a room's epoch and last offset take a few dozen bytes once its history expired).
pub struct MemoryBroker {
    limits: HistoryLimits,
    fanout: OnceLock<Fanout>,
    rooms: Mutex<HashMap<Arc<str>, Arc<Mutex<Log>>>>,
    random: RandomState,
}

struct Entry {
    offset: u64,
    at: Instant,
    data: Bytes,
}

struct Log {
    room: Arc<str>,
    epoch: Arc<str>,
    top: u64,
    entries: VecDeque<Entry>,
    bytes: usize,
}

impl MemoryBroker {
    /// A broker keeping each room's history within `limits`.
    pub fn new(limits: HistoryLimits) -> Self {
        MemoryBroker {
            limits,
            fanout: OnceLock::new(),
            rooms: Mutex::new(HashMap::new()),
            random: RandomState::new(),
        }
    }

    fn log(&self, room: &str) -> Arc<Mutex<Log>> {
        let mut rooms = self.rooms.lock();
        if let Some(log) = rooms.get(room) {
            return log.clone();
        }
        let name: Arc<str> = Arc::from(room);
        let log = Arc::new(Mutex::new(Log {
            room: name.clone(),
            epoch: Arc::from(new_epoch(&self.random)),
            top: 0,
            entries: VecDeque::new(),
            bytes: 0,
        }));
        rooms.insert(name, log.clone());
        log
    }

    /// A fresh epoch: 12 random base-36 characters (unguessable across restarts).
    fn trim(&self, log: &mut Log, now: Instant) {
        while let Some(first) = log.entries.front() {
            let old = now.saturating_duration_since(first.at) > self.limits.max_age;
            if log.entries.len() > self.limits.max_publications
                || log.bytes > self.limits.max_bytes
                || old
            {
                log.bytes -= first.data.len();
                log.entries.pop_front();
            } else {
                break;
            }
        }
    }
}

impl Default for MemoryBroker {
    fn default() -> Self {
        MemoryBroker::new(HistoryLimits::default())
    }
}

impl Log {
    fn position(&self, offset: u64) -> Position {
        Position {
            epoch: self.epoch.clone(),
            offset,
        }
    }

    fn publication(&self, e: &Entry) -> Publication {
        Publication {
            room: self.room.clone(),
            position: self.position(e.offset),
            data: e.data.clone(),
        }
    }
}

impl Broker for MemoryBroker {
    fn attach(&self, fanout: Fanout) {
        let _ = self.fanout.set(fanout);
    }

    fn publish(&self, room: &str, data: Bytes) -> Result<Position, BrokerError> {
        let log = self.log(room);
        let mut log = log.lock();
        log.top += 1;
        let offset = log.top;
        let now = Instant::now();
        log.bytes += data.len();
        log.entries.push_back(Entry {
            offset,
            at: now,
            data: data.clone(),
        });
        self.trim(&mut log, now);
        let publication = Publication {
            room: log.room.clone(),
            position: log.position(offset),
            data,
        };
        // Queued for the members under the room's order; written once the order is released.
        let delivered = self.fanout.get().map(|f| f.deliver(&publication));
        drop(log);
        drop(delivered);
        Ok(publication.position)
    }

    fn subscribe(
        &self,
        room: &str,
        since: Option<&Position>,
        join: &mut dyn FnMut(&Recovery),
    ) -> Result<(), BrokerError> {
        let log = self.log(room);
        let mut log = log.lock();
        self.trim(&mut log, Instant::now());
        let position = log.position(log.top);
        let (recovered, missed) = match since {
            Some(s) if *s.epoch == *log.epoch && s.offset <= log.top => {
                // Covered when the history holds every offset after `s.offset`.
                let first_kept = log.entries.front().map_or(log.top + 1, |e| e.offset);
                if s.offset + 1 >= first_kept {
                    let missed = log
                        .entries
                        .iter()
                        .filter(|e| e.offset > s.offset)
                        .map(|e| log.publication(e))
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

    fn sweep(&self) {
        let logs: Vec<_> = self.rooms.lock().values().cloned().collect();
        let now = Instant::now();
        for log in logs {
            self.trim(&mut log.lock(), now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn recover(b: &MemoryBroker, room: &str, since: Option<&Position>) -> Recovery {
        let mut got = None;
        b.subscribe(room, since, &mut |r| got = Some(r.clone()))
            .unwrap();
        got.unwrap()
    }

    fn publish(b: &MemoryBroker, room: &str, data: &'static str) -> Position {
        b.publish(room, Bytes::from_static(data.as_bytes()))
            .unwrap()
    }

    #[test]
    fn offsets_start_at_one_and_recovery_returns_exactly_the_missed() {
        let b = MemoryBroker::default();
        let start = recover(&b, "r", None);
        assert_eq!(start.position.offset, 0);
        assert!(!start.recovered);
        let p1 = publish(&b, "r", "a");
        assert_eq!((p1.offset, &p1.epoch), (1, &start.position.epoch));
        publish(&b, "r", "b");
        publish(&b, "r", "c");
        let r = recover(&b, "r", Some(&p1));
        assert!(r.recovered);
        assert_eq!(r.position.offset, 3);
        let offsets: Vec<u64> = r.missed.iter().map(|p| p.position.offset).collect();
        assert_eq!(offsets, [2, 3]);
        assert_eq!(&r.missed[0].data[..], b"b");
        // Up to date: recovered, nothing missed.
        let r = recover(&b, "r", Some(&r.position));
        assert!(r.recovered && r.missed.is_empty());
    }

    #[test]
    fn an_unknown_epoch_or_a_gap_beyond_history_is_not_recovered() {
        let b = MemoryBroker::new(HistoryLimits {
            max_publications: 2,
            ..HistoryLimits::default()
        });
        let p1 = publish(&b, "r", "a");
        for _ in 0..3 {
            publish(&b, "r", "x");
        }
        // Offsets 3 and 4 are kept; a subscriber at 1 lacks 2.
        let r = recover(&b, "r", Some(&p1));
        assert!(!r.recovered && r.missed.is_empty());
        assert_eq!(r.position.offset, 4);
        let at2 = Position {
            offset: 2,
            ..p1.clone()
        };
        assert_eq!(recover(&b, "r", Some(&at2)).missed.len(), 2);
        let foreign = Position {
            epoch: Arc::from("nope"),
            offset: 1,
        };
        assert!(!recover(&b, "r", Some(&foreign)).recovered);
        // A position from the future is not trusted.
        let future = Position {
            offset: 99,
            ..p1.clone()
        };
        assert!(!recover(&b, "r", Some(&future)).recovered);
        // Other rooms have their own epochs.
        assert_ne!(publish(&b, "other", "z").epoch, p1.epoch);
    }

    #[test]
    fn history_expires_by_age() {
        let b = MemoryBroker::new(HistoryLimits {
            max_age: Duration::ZERO,
            ..HistoryLimits::default()
        });
        let p1 = publish(&b, "r", "a");
        publish(&b, "r", "b");
        std::thread::sleep(Duration::from_millis(2)); // the age bound itself is what is tested
        b.sweep();
        assert!(!recover(&b, "r", Some(&p1)).recovered);
    }
}
