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

use crate::hub::stream::{BrokerError, Position};

/// Publishes atomically: the room's epoch (created if missing, with an empty stream), the next
/// offset, the entry in the capped stream (with Redis's clock, for the age limit), then the
/// PUBLISH. The stream is written before `top` moves, so a failing XADD changes nothing.
/// Returns `{epoch, offset}`.
const PUBLISH: &str = r"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[3]
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'top', 0)
  redis.call('DEL', KEYS[2])
end
local offset = tonumber(redis.call('HGET', KEYS[1], 'top') or '0') + 1
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[4], '0-' .. offset, 'd', ARGV[2], 't', ms)
redis.call('HSET', KEYS[1], 'top', offset)
redis.call('PEXPIRE', KEYS[2], ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('PUBLISH', ARGV[1], epoch .. ':' .. offset .. ':' .. ARGV[2])
return {epoch, offset}
";

/// A room's head for a node that knows epoch `ARGV[1]` up to offset `ARGV[2]`: creates the
/// epoch if missing (with an empty stream and the epoch's time to live), and gives the room a
/// new epoch when its stream went back below what the node delivered, or when `ARGV[5]` is
/// `1` (the node proved the stream was rewritten). Returns `{epoch, top}`.
const HEAD: &str = r"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local top = tonumber(redis.call('HGET', KEYS[1], 'top') or '0')
local known = (epoch ~= false) and (epoch == ARGV[1])
if (not epoch) or (known and (top < tonumber(ARGV[2]) or ARGV[5] == '1')) then
  epoch = ARGV[3]
  top = 0
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'top', 0)
  redis.call('DEL', KEYS[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
return {epoch, top}
";

/// Stored entries `0-FROM..0-TO` and Redis's clock in milliseconds.
const RANGE: &str = r"
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return {ms, redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[2])}
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
    head: Script,
    range: Script,
    /// History older than this is not served.
    max_age: Duration,
    epoch_ttl: Duration,
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
    pub(crate) fn new(
        client: Client,
        timeout: Duration,
        max_age: Duration,
        epoch_ttl: Duration,
    ) -> Self {
        Commands {
            client,
            timeout,
            conn: Mutex::new(None),
            publish: Script::new(PUBLISH),
            head: Script::new(HEAD),
            range: Script::new(RANGE),
            max_age,
            epoch_ttl,
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

    /// The room's epoch and newest offset, after creating the epoch if missing, or replacing
    /// it when the stream went back below `delivered` in the `known` epoch or `rewritten` says
    /// the node proved it was rewritten.
    pub(crate) fn head(
        &self,
        keys: &Keys,
        known: Option<&str>,
        delivered: u64,
        new_epoch: &str,
        rewritten: bool,
    ) -> Result<Position, BrokerError> {
        let (epoch, top): (String, u64) = self.read("head", |c| {
            self.head
                .key(&keys.meta)
                .key(&keys.stream)
                .arg(known.unwrap_or(""))
                .arg(delivered)
                .arg(new_epoch)
                .arg(self.epoch_ttl.as_millis().max(1) as u64)
                .arg(if rewritten { "1" } else { "0" })
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
    /// are all there (false when the stream was trimmed or expired past `from`, or when one of
    /// them is older than the history's age limit).
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
            self.range
                .key(&keys.stream)
                .arg(format!("0-{from}"))
                .arg(format!("0-{to}"))
                .invoke(c)
        })?;
        let Value::Array(mut parts) = reply else {
            return Ok((false, Vec::new()));
        };
        let items = match parts.pop() {
            Some(Value::Array(items)) => items,
            _ => Vec::new(),
        };
        let now = match parts.pop() {
            Some(Value::Int(ms)) => ms,
            _ => 0,
        };
        let oldest =
            now.saturating_sub(i64::try_from(self.max_age.as_millis()).unwrap_or(i64::MAX));
        let mut entries = Vec::new();
        let mut too_old = false;
        for item in items {
            if let Some((offset, data, at)) = parse_entry(item) {
                too_old |= at < oldest;
                entries.push((offset, data));
            }
        }
        let covered = !too_old
            && entries.len() as u64 == to - from + 1
            && entries.first().is_some_and(|(o, _)| *o == from);
        Ok((covered, entries))
    }
}

/// One XRANGE entry: `[id "0-OFFSET", [field, value, ...]]` with the fields `d` (data) and
/// `t` (Redis's clock in milliseconds when it was stored).
fn parse_entry(item: Value) -> Option<(u64, Bytes, i64)> {
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
    let (mut data, mut at) = (None, 0);
    let mut it = fields.into_iter();
    while let (Some(Value::BulkString(k)), Some(Value::BulkString(v))) = (it.next(), it.next()) {
        match k.as_slice() {
            b"d" => data = Some(Bytes::from(v)),
            b"t" => {
                at = std::str::from_utf8(&v)
                    .ok()
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(0)
            }
            _ => {}
        }
    }
    Some((offset, data?, at))
}
