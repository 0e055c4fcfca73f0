//! The subscription thread: one PUB/SUB connection per node, its probe, its rebuilds, and the
//! delivery of every live publication in order, gaps filled from the stream.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};

use crate::backoff::Reconnect;
use crate::hub::fanout::Delivered;
use crate::hub::redis::commands::{keys, room_of};
use crate::hub::redis::{RoomState, Shared, digest};
use crate::hub::stream::{BrokerError, Position};

/// How long one wait for a message lasts before the thread looks at its controls and probe.
const POLL: Duration = Duration::from_millis(50);
/// While a write batch is open: how long to wait for the next message before writing.
const BATCH_WAIT: Duration = Duration::from_micros(200);
/// A write batch ends after this many messages or this long, whatever the traffic: members
/// never wait for a pause in a sustained stream.
const BATCH_MAX: usize = 64;
const BATCH_MAX_AGE: Duration = Duration::from_millis(1);

/// What the hub's threads ask of the subscription thread.
pub(crate) enum Control {
    /// Subscribe to this room's channel; answer once Redis confirmed.
    Subscribe(String, Sender<Result<(), BrokerError>>),
    /// The room has no local member left.
    Unsubscribe(String),
}

/// Why the inner loop gave up the connection.
enum Lost {
    Stop,
    Broken(String),
    Silent,
}

/// The thread's loop: connect, subscribe, deliver; rebuild when the link breaks or goes silent.
pub(crate) fn run(s: &Arc<Shared>, control: &Receiver<Control>) {
    let mut backoff = s.config.reconnect.clone();
    let mut failures = 0u32;
    let mut first = true;
    while !s.stop.load(Relaxed) {
        match connect(s) {
            Ok(mut conn) => {
                s.connected.store(true, Relaxed);
                if !first {
                    s.reconnects.fetch_add(1, Relaxed);
                }
                let up = Instant::now();
                let lost = serve(s, &mut conn, control, !first);
                first = false;
                s.connected.store(false, Relaxed);
                match lost {
                    Lost::Stop => return,
                    Lost::Silent => {
                        s.probe_failures.fetch_add(1, Relaxed);
                        log::warn!("redis subscription went silent; rebuilding it");
                    }
                    Lost::Broken(why) => {
                        log::warn!("redis subscription lost ({why}); rebuilding it")
                    }
                }
                // A link that dies soon after it came up counts as a failed attempt: no spin.
                if up.elapsed() < s.config.probe_timeout {
                    failures += 1;
                    let delay = backoff
                        .next_delay(failures)
                        .unwrap_or(Duration::from_secs(1));
                    pause(s, control, delay, "the last link died young");
                } else {
                    failures = 0;
                }
            }
            Err(e) => {
                failures += 1;
                log::debug!("redis subscription connect failed: {e}");
                // Controls that arrive while Redis is down fail at once.
                refuse_pending(control, &e);
                let delay = backoff
                    .next_delay(failures)
                    .unwrap_or(Duration::from_secs(1));
                pause(s, control, delay, &e);
            }
        }
    }
}

/// Waits `delay` before the next attempt (in short steps, to stop promptly), refusing the
/// subscriptions asked for meanwhile.
fn pause(s: &Shared, control: &Receiver<Control>, delay: Duration, why: &str) {
    let until = Instant::now() + delay;
    while Instant::now() < until && !s.stop.load(Relaxed) {
        std::thread::sleep(POLL.min(until.saturating_duration_since(Instant::now())));
        refuse_pending(control, why);
    }
}

fn refuse_pending(control: &Receiver<Control>, why: &str) {
    for c in control.try_iter() {
        if let Control::Subscribe(_, ack) = c {
            let _ = ack.send(Err(BrokerError::Unavailable(format!(
                "redis unreachable: {why}"
            ))));
        }
    }
}

fn connect(s: &Shared) -> Result<redis::Connection, String> {
    let conn = s
        .client
        .get_connection_with_timeout(s.config.timeout)
        .map_err(|e| e.to_string())?;
    conn.set_write_timeout(Some(s.config.timeout))
        .map_err(|e| e.to_string())?;
    Ok(conn)
}

/// One connection's life: subscribe the probe and every room with local members, recover what
/// a rebuild may have missed, then deliver until the link is lost.
fn serve(
    s: &Arc<Shared>,
    conn: &mut redis::Connection,
    control: &Receiver<Control>,
    rebuilt: bool,
) -> Lost {
    let mut pubsub = conn.as_pubsub();
    let rooms: Vec<String> = s
        .rooms
        .lock()
        .iter()
        .filter(|(_, st)| st.lock().subscribed)
        .map(|(r, _)| r.clone())
        .collect();
    let mut channels = vec![s.probe.clone()];
    channels.extend(rooms.iter().map(|r| keys(&s.config.prefix, r).channel));
    if let Err(e) = pubsub.set_read_timeout(Some(s.config.timeout)) {
        return Lost::Broken(e.to_string());
    }
    // One channel per SUBSCRIBE: each call waits for its own confirmation (several channels
    // in one command would leave confirmations behind for the next command to mistake).
    for channel in &channels {
        if let Err(e) = pubsub.subscribe(channel) {
            return Lost::Broken(e.to_string());
        }
    }
    if rebuilt {
        for room in &rooms {
            // A room that cannot be recovered now does not hold the others back: its next
            // live message finds the gap and fills it (or announces a reset).
            if let Err(e) = recover(s, room) {
                log::warn!("redis: {room} not recovered after a rebuild ({e})");
            }
        }
    }
    if let Err(e) = pubsub.set_read_timeout(Some(POLL)) {
        return Lost::Broken(e.to_string());
    }
    let mut heard = Instant::now();
    let mut probed = Instant::now();
    // Messages that arrive back to back are written as one batch per member; the batch ends
    // (and is written) when no message follows within BATCH_WAIT.
    let mut batch = None;
    let mut batch_started = Instant::now();
    let mut batched = 0usize;
    loop {
        if s.stop.load(Relaxed) {
            return Lost::Stop;
        }
        for c in control.try_iter() {
            let result = match c {
                Control::Subscribe(room, ack) => {
                    let r = pubsub
                        .set_read_timeout(Some(s.config.timeout))
                        .and_then(|()| pubsub.subscribe(keys(&s.config.prefix, &room).channel))
                        .and_then(|()| pubsub.set_read_timeout(Some(POLL)));
                    let failed = r.as_ref().err().map(ToString::to_string);
                    let _ = ack.send(r.map_err(|e| BrokerError::Unavailable(e.to_string())));
                    failed
                }
                // Redis's answer may take up to the command timeout, like a subscribe's.
                Control::Unsubscribe(room) => pubsub
                    .set_read_timeout(Some(s.config.timeout))
                    .and_then(|()| pubsub.unsubscribe(keys(&s.config.prefix, &room).channel))
                    .and_then(|()| {
                        let wait = if batch.is_some() { BATCH_WAIT } else { POLL };
                        pubsub.set_read_timeout(Some(wait))
                    })
                    .err()
                    .map(|e| e.to_string()),
            };
            if let Some(why) = result {
                return Lost::Broken(why);
            }
        }
        match pubsub.get_message() {
            Ok(msg) => {
                heard = Instant::now();
                if batch.is_none() {
                    batch = s.fanout.get().and_then(|f| f.batch());
                    batch_started = Instant::now();
                    batched = 0;
                    if let Err(e) = pubsub.set_read_timeout(Some(BATCH_WAIT)) {
                        return Lost::Broken(e.to_string());
                    }
                }
                batched += 1;
                if let Some(b) = &batch {
                    b.progress();
                }
                let channel = msg.get_channel_name();
                if channel != s.probe
                    && let Some(room) = room_of(&s.config.prefix, channel)
                {
                    let room = room.to_string();
                    live(s, &room, msg.get_payload_bytes());
                }
                if (batched >= BATCH_MAX || batch_started.elapsed() >= BATCH_MAX_AGE)
                    && batch.take().is_some()
                    && let Err(e) = pubsub.set_read_timeout(Some(POLL))
                {
                    return Lost::Broken(e.to_string());
                }
            }
            Err(e) if e.is_timeout() => {
                if batch.take().is_some()
                    && let Err(e) = pubsub.set_read_timeout(Some(POLL))
                {
                    return Lost::Broken(e.to_string());
                }
            }
            Err(e) => return Lost::Broken(e.to_string()),
        }
        // A quiet link is probed through the command connection; one that hears nothing for
        // `probe_timeout` is rebuilt.
        let now = Instant::now();
        if now.duration_since(heard) >= s.config.probe_timeout {
            return Lost::Silent;
        }
        if now.duration_since(heard) >= s.config.probe_interval
            && now.duration_since(probed) >= s.config.probe_interval
        {
            probed = now;
            if let Err(e) = s.commands.probe(&s.probe) {
                log::debug!("redis probe not sent: {e}");
            }
        }
    }
}

/// A live message `EPOCH:OFFSET:DATA` for `room`: delivered in order, a gap filled from the
/// stream first, a new epoch or an unrecoverable gap announced as a reset.
fn live(s: &Shared, room: &str, payload: &[u8]) {
    let Some((epoch, offset, data)) = parse(payload) else {
        log::warn!("redis: malformed message on {room}");
        return;
    };
    let state = s.room(room);
    let mut st = state.lock();
    if !st.subscribed || st.epoch.is_none() {
        return; // not (yet) joined: the join reads the head itself
    }
    let mut written: Vec<Delivered> = Vec::new();
    if st.epoch.as_deref() != Some(epoch) {
        reset(s, room, &mut st, Arc::from(epoch), offset - 1);
    } else if offset <= st.last {
        return; // already delivered (from the stream)
    } else if offset > st.last + 1 {
        fill(s, room, &mut st, offset - 1, &mut written);
    }
    if let (Some(f), Some(e)) = (s.fanout.get(), st.epoch.clone()) {
        written.push(f.deliver(&s.publication(room, &e, offset, Bytes::copy_from_slice(data))));
    }
    st.last = offset;
    st.digest = digest(data);
    drop(st);
    drop(written); // the writes, outside the room's order
}

/// Delivers `last+1..=to` from the stream, or announces a reset when it no longer has them.
fn fill(s: &Shared, room: &str, st: &mut RoomState, to: u64, written: &mut Vec<Delivered>) {
    let Some(epoch) = st.epoch.clone() else {
        return;
    };
    let k = keys(&s.config.prefix, room);
    match s.commands.range(&k, st.last + 1, to) {
        Ok((true, entries)) => {
            s.gaps_recovered.fetch_add(1, Relaxed);
            if let Some((_, d)) = entries.last() {
                st.digest = digest(d);
            }
            if let Some(f) = s.fanout.get() {
                for (o, d) in entries {
                    written.push(f.deliver(&s.publication(room, &epoch, o, d)));
                }
            }
            st.last = to;
        }
        Ok((false, entries)) => {
            // What the stream still holds at the end of the gap is not lost with the rest:
            // the members are told the stream continues just before it, then get it.
            let tail_start = contiguous_tail(&entries, to);
            match tail_start {
                Some(i) => {
                    let first = entries[i].0;
                    reset(s, room, st, epoch.clone(), first - 1);
                    if let Some((_, d)) = entries.last() {
                        st.digest = digest(d);
                    }
                    if let Some(f) = s.fanout.get() {
                        for (o, d) in entries.into_iter().skip(i) {
                            written.push(f.deliver(&s.publication(room, &epoch, o, d)));
                        }
                    }
                    st.last = to;
                }
                None => reset(s, room, st, epoch, to),
            }
        }
        Err(e) => {
            log::warn!("redis: gap in {room} not read ({e}); announced as a reset");
            reset(s, room, st, epoch, to);
        }
    }
}

/// The index where the run of consecutive offsets ending at `to` starts, if `entries` end at
/// `to`.
fn contiguous_tail(entries: &[(u64, Bytes)], to: u64) -> Option<usize> {
    if entries.last().map(|(o, _)| *o) != Some(to) {
        return None;
    }
    let mut i = entries.len() - 1;
    while i > 0 && entries[i - 1].0 + 1 == entries[i].0 {
        i -= 1;
    }
    Some(i)
}

/// The room's members can no longer be given what they lack: they are told the new position.
fn reset(s: &Shared, room: &str, st: &mut RoomState, epoch: Arc<str>, top: u64) {
    s.gaps_unrecovered.fetch_add(1, Relaxed);
    st.epoch = Some(epoch.clone());
    st.last = top;
    st.digest = 0;
    if let Some(f) = s.fanout.get() {
        f.reset(room, &Position { epoch, offset: top });
    }
}

/// After a rebuild: what was published while the link was down, from the stream. A failure
/// gives up the new link (the next rebuild tries again).
fn recover(s: &Shared, room: &str) -> Result<(), BrokerError> {
    let state = s.room(room);
    let mut st = state.lock();
    if !st.subscribed || st.epoch.is_none() {
        return Ok(());
    }
    let k = keys(&s.config.prefix, room);
    let mut head = s
        .commands
        .head(&k, st.epoch.as_deref(), st.last, &s.new_epoch(), false)?;
    // Same epoch, as far: is the publication at `last` still the one delivered? A Redis
    // restored from an older snapshot, then published to again, reuses offsets with other data.
    if st.epoch.as_deref() == Some(&*head.epoch) && st.digest != 0 && head.offset >= st.last {
        let (_, at_last) = s.commands.range(&k, st.last, st.last)?;
        if let Some((_, data)) = at_last.first()
            && digest(data) != st.digest
        {
            head = s
                .commands
                .head(&k, st.epoch.as_deref(), st.last, &s.new_epoch(), true)?;
        }
    }
    let mut written = Vec::new();
    if st.epoch.as_deref() != Some(&*head.epoch) {
        reset(s, room, &mut st, head.epoch.clone(), head.offset);
    } else if head.offset > st.last {
        fill(s, room, &mut st, head.offset, &mut written);
    }
    drop(st);
    drop(written);
    Ok(())
}

fn parse(payload: &[u8]) -> Option<(&str, u64, &[u8])> {
    let colon = payload.iter().position(|&b| b == b':')?;
    let epoch = std::str::from_utf8(&payload[..colon]).ok()?;
    let rest = &payload[colon + 1..];
    let colon = rest.iter().position(|&b| b == b':')?;
    let offset = std::str::from_utf8(&rest[..colon]).ok()?.parse().ok()?;
    (offset > 0).then_some((epoch, offset, &rest[colon + 1..]))
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn the_tail_of_a_partly_kept_gap_is_found() {
        use super::contiguous_tail;
        let e = |o: &[u64]| {
            o.iter()
                .map(|o| (*o, bytes::Bytes::new()))
                .collect::<Vec<_>>()
        };
        assert_eq!(contiguous_tail(&e(&[5, 6, 7]), 7), Some(0));
        assert_eq!(contiguous_tail(&e(&[2, 5, 6, 7]), 7), Some(1));
        assert_eq!(contiguous_tail(&e(&[5, 6]), 7), None);
        assert_eq!(contiguous_tail(&e(&[]), 7), None);
    }

    #[test]
    fn messages_carry_epoch_offset_and_any_bytes() {
        assert_eq!(parse(b"abc:12:x:y"), Some(("abc", 12, &b"x:y"[..])));
        assert_eq!(parse(b"abc:1:"), Some(("abc", 1, &b""[..])));
        assert_eq!(parse(b"abc:0:x"), None);
        assert_eq!(parse(b"abc:x"), None);
        assert_eq!(parse(b"abc"), None);
    }
}
