//! The command side of the Redis broker: one connection shared under a lock, opened lazily and
//! reopened after a failure, every call bounded by timeouts. A call that fails is a
//! [`BrokerError`] for the caller (nothing is buffered while Redis is unreachable).
//!
//! Keys, for room `R` under prefix `P` (the braces keep both keys of a room in one Redis Cluster
//! slot): `P{R}:meta` (hash: `epoch`, `top`), `P{R}:stream` (stream whose entry IDs are
//! `0-OFFSET`, one field `d` with the data), and the channel `P{R}` (PUB/SUB, messages
//! `EPOCH:OFFSET:DATA`).

use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use redis::{Client, Connection, Script, Value};

use crate::hub::broker::{BrokerError, Position};

/// Publishes atomically: the room's epoch (created if missing), the next offset, the entry in
/// the capped stream (and its time to live), then the PUBLISH. Returns `{epoch, offset}`.
const PUBLISH: &str = r"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[3]
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'top', 0)
  redis.call('DEL', KEYS[2])
end
local offset = redis.call('HINCRBY', KEYS[1], 'top', 1)
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[4], '0-' .. offset, 'd', ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('PUBLISH', ARGV[1], epoch .. ':' .. offset .. ':' .. ARGV[2])
return {epoch, offset}
";

/// Gives a room a new epoch if its stream went back (Redis restarted from an older snapshot):
/// `top` is below what this node already delivered. Returns the (possibly new) `{epoch, top}`.
const REWOUND: &str = r"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local top = tonumber(redis.call('HGET', KEYS[1], 'top') or '0')
if (not epoch) or (epoch == ARGV[1] and top < tonumber(ARGV[2])) then
  epoch = ARGV[3]
  redis.call('HSET', KEYS[1], 'epoch', epoch)
  if top < tonumber(ARGV[2]) then
    redis.call('HSET', KEYS[1], 'top', 0)
    redis.call('DEL', KEYS[2])
    top = 0
  end
end
return {epoch, top}
";

/// The keys and channel of a room.
pub(crate) struct Keys {
    pub meta: String,
    pub stream: String,
    pub channel: String,
}

pub(crate) fn keys(prefix: &str, room: &str) -> Keys {
    Keys {
        meta: format!("{prefix}{{{room}}}:meta"),
        stream: format!("{prefix}{{{room}}}:stream"),
        channel: format!("{prefix}{{{room}}}"),
    }
}

/// The room a channel belongs to.
pub(crate) fn room_of<'a>(prefix: &str, channel: &'a str) -> Option<&'a str> {
    channel
        .strip_prefix(prefix)?
        .strip_prefix('{')?
        .strip_suffix('}')
}

/// A stored publication read back: offset and data.
pub(crate) type Entry = (u64, Bytes);

/// The shared command connection.
pub(crate) struct Commands {
    client: Client,
    timeout: Duration,
    conn: Mutex<Option<Connection>>,
    publish: Script,
    rewound: Script,
}

/// Not reached: nothing was sent.
fn unavailable(what: &str, e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(format!("redis {what}: {e}"))
}

/// A call that failed after it was sent: an I/O failure (a timeout, a dropped connection)
/// leaves the outcome unknown; an error reply from Redis means it did not act.
fn failed(what: &str, e: &redis::RedisError) -> BrokerError {
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() {
        BrokerError::Unknown(format!("redis {what}: {e}"))
    } else {
        BrokerError::Unavailable(format!("redis {what}: {e}"))
    }
}

impl Commands {
    pub(crate) fn new(client: Client, timeout: Duration) -> Self {
        Commands {
            client,
            timeout,
            conn: Mutex::new(None),
            publish: Script::new(PUBLISH),
            rewound: Script::new(REWOUND),
        }
    }

    /// Runs `f` on the connection, opening it first if needed; a failure drops the connection
    /// so the next call opens a fresh one. A read (`f` has no effect that a retry could
    /// repeat) is tried once more on a fresh connection when the kept one turns out to be
    /// stale (Redis restarted since it was opened).
    fn with<T>(
        &self,
        what: &str,
        f: impl Fn(&mut Connection) -> redis::RedisResult<T>,
    ) -> Result<T, BrokerError> {
        self.attempt(what, &f)
    }

    fn read<T>(
        &self,
        what: &str,
        f: impl Fn(&mut Connection) -> redis::RedisResult<T>,
    ) -> Result<T, BrokerError> {
        self.attempt(what, &f).or_else(|_| self.attempt(what, &f))
    }

    fn attempt<T>(
        &self,
        what: &str,
        f: &dyn Fn(&mut Connection) -> redis::RedisResult<T>,
    ) -> Result<T, BrokerError> {
        let mut slot = self.conn.lock();
        if slot.is_none() {
            let c = self
                .client
                .get_connection_with_timeout(self.timeout)
                .map_err(|e| unavailable("connect", e))?;
            c.set_read_timeout(Some(self.timeout))
                .and_then(|()| c.set_write_timeout(Some(self.timeout)))
                .map_err(|e| unavailable("connect", e))?;
            *slot = Some(c);
        }
        let Some(conn) = slot.as_mut() else {
            return Err(unavailable(what, "no connection"));
        };
        match f(conn) {
            Ok(v) => Ok(v),
            Err(e) => {
                *slot = None;
                Err(failed(what, &e))
            }
        }
    }

    /// The publish script; returns the publication's position.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn publish(
        &self,
        keys: &Keys,
        data: &[u8],
        new_epoch: &str,
        max_len: usize,
        stream_ttl: Duration,
        meta_ttl: Duration,
    ) -> Result<Position, BrokerError> {
        let (epoch, offset): (String, u64) = self.with("publish", |c| {
            self.publish
                .key(&keys.meta)
                .key(&keys.stream)
                .arg(&keys.channel)
                .arg(data)
                .arg(new_epoch)
                .arg(max_len.max(1))
                .arg(stream_ttl.as_millis().max(1) as u64)
                .arg(meta_ttl.as_millis().max(1) as u64)
                .invoke(c)
        })?;
        Ok(Position {
            epoch: epoch.into(),
            offset,
        })
    }

    /// The room's epoch and newest offset (`None` for a room never published to), after
    /// replacing the epoch if the stream went back below `delivered` in `known` epoch.
    pub(crate) fn head(
        &self,
        keys: &Keys,
        known: Option<&str>,
        delivered: u64,
        new_epoch: &str,
    ) -> Result<Position, BrokerError> {
        let (epoch, top): (String, u64) = self.read("head", |c| {
            self.rewound
                .key(&keys.meta)
                .key(&keys.stream)
                .arg(known.unwrap_or(""))
                .arg(delivered)
                .arg(new_epoch)
                .invoke(c)
        })?;
        Ok(Position {
            epoch: epoch.into(),
            offset: top,
        })
    }

    /// Publishes a probe to a node's own probe channel.
    pub(crate) fn probe(&self, channel: &str) -> Result<(), BrokerError> {
        self.with("probe", |c| {
            redis::cmd("PUBLISH").arg(channel).arg("p").query::<i64>(c)
        })
        .map(drop)
    }

    /// The stored publications with offsets in `from..=to`, oldest first, and whether they
    /// are all there (false when the stream was trimmed or expired past `from`).
    pub(crate) fn range(
        &self,
        keys: &Keys,
        from: u64,
        to: u64,
    ) -> Result<(bool, Vec<Entry>), BrokerError> {
        if from > to {
            return Ok((true, Vec::new()));
        }
        let reply: Value = self.read("range", |c| {
            redis::cmd("XRANGE")
                .arg(&keys.stream)
                .arg(format!("0-{from}"))
                .arg(format!("0-{to}"))
                .query(c)
        })?;
        let mut entries = Vec::new();
        if let Value::Array(items) = reply {
            entries.extend(items.into_iter().filter_map(parse_entry));
        }
        let covered = entries.len() as u64 == to - from + 1
            && entries.first().is_some_and(|(o, _)| *o == from);
        Ok((covered, entries))
    }
}

/// One XRANGE entry: `[id "0-OFFSET", [field, value, ...]]` with the field `d`.
fn parse_entry(item: Value) -> Option<Entry> {
    let Value::Array(mut parts) = item else {
        return None;
    };
    let Value::Array(fields) = parts.pop()? else {
        return None;
    };
    let Value::BulkString(id) = parts.pop()? else {
        return None;
    };
    let offset = std::str::from_utf8(&id)
        .ok()?
        .strip_prefix("0-")?
        .parse()
        .ok()?;
    let mut it = fields.into_iter();
    while let (Some(Value::BulkString(k)), Some(Value::BulkString(v))) = (it.next(), it.next()) {
        if k == b"d" {
            return Some((offset, Bytes::from(v)));
        }
    }
    None
}
