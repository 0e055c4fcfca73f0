//! Liveness: keepalive pings and data staleness, each with its own clock. Sans-IO like the
//! coordinator that owns it.
//!
//! - [`Keepalive::Ping`]: a protocol ping every `interval`; a pong must answer it within
//!   `timeout`. Each answered ping gives an RTT sample.
//! - [`Keepalive::App`]: the same with a ping frame the [`Endpoint`](crate::Endpoint) builds and
//!   an application pong it recognises; at most `max_outstanding` may be unanswered.
//! - [`Keepalive::ServerDriven`]: never ping; the server pings and syncws answers.
//! - Staleness (`stale_after`): no *data* message within the window means the link is stale.
//!   Pongs do not count as data; messages the ingress ignores do.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::client::endpoint::Cause;
use crate::deadline;

/// How the client keeps checking that the server is alive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keepalive {
    /// Never ping; only answer the server's pings (venues that ping their clients).
    ServerDriven,
    /// Protocol pings every `interval`; each must be answered within `timeout`.
    Ping {
        /// Time between pings.
        interval: Duration,
        /// How long a ping may stay unanswered before the link counts as dead.
        timeout: Duration,
    },
    /// Application pings built by [`Endpoint::app_ping`](crate::Endpoint::app_ping), answered
    /// by [`Reply::AppPong`](crate::Reply::AppPong).
    App {
        /// Time between pings.
        interval: Duration,
        /// How long a ping may stay unanswered.
        timeout: Duration,
        /// How many pings may be unanswered at once before the link counts as dead.
        max_outstanding: u32,
    },
}

impl Default for Keepalive {
    /// Protocol pings every 15 s, answered within 10 s.
    fn default() -> Self {
        Keepalive::Ping {
            interval: Duration::from_secs(15),
            timeout: Duration::from_secs(10),
        }
    }
}

/// Prefix of keepalive ping payloads, so their pongs can be told from the application's own.
pub(crate) const PING_TAG: &[u8; 4] = b"swka";

/// What liveness asks the coordinator to do.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Due {
    /// Send a protocol ping with this payload.
    Ping(Vec<u8>),
    /// Send the endpoint's application ping with this sequence number.
    AppPing(u64),
    /// The link is dead.
    Fail(LivenessFailure),
}

/// Which liveness check failed.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub(crate) enum LivenessFailure {
    PongTimeout,
    AppPongTimeout,
    Stale,
}

impl LivenessFailure {
    pub(crate) fn cause(self) -> Cause {
        match self {
            LivenessFailure::PongTimeout => Cause::PongTimeout,
            LivenessFailure::AppPongTimeout => Cause::AppPongTimeout,
            LivenessFailure::Stale => Cause::Stale,
        }
    }
}

#[derive(Debug)]
pub(crate) struct Liveness {
    keepalive: Keepalive,
    stale_after: Option<Duration>,
    next_ping: Option<Instant>,
    /// Unanswered pings: (sequence, sent at). Bounded by the outstanding limit.
    outstanding: VecDeque<(u64, Instant)>,
    seq: u64,
    last_data: Instant,
}

impl Liveness {
    pub(crate) fn new(keepalive: Keepalive, stale_after: Option<Duration>, now: Instant) -> Self {
        Liveness {
            keepalive,
            stale_after,
            next_ping: None,
            outstanding: VecDeque::new(),
            seq: 0,
            last_data: now,
        }
    }

    /// A connection opened: all clocks start now.
    pub(crate) fn on_open(&mut self, now: Instant) {
        self.outstanding.clear();
        self.last_data = now;
        self.next_ping = match self.keepalive {
            Keepalive::ServerDriven => None,
            Keepalive::Ping { interval, .. } | Keepalive::App { interval, .. } => {
                Some(deadline::after(now, interval))
            }
        };
    }

    /// The reader saw data at `at` (only ever moves forward).
    pub(crate) fn data_seen(&mut self, at: Instant) {
        self.last_data = self.last_data.max(at);
    }

    fn limits(&self) -> Option<(Duration, usize)> {
        match self.keepalive {
            Keepalive::ServerDriven => None,
            Keepalive::Ping { interval, timeout } => {
                // Enough slots for every ping that can be in flight within one timeout.
                let slots = timeout.as_nanos() / interval.as_nanos().max(1) + 1;
                Some((timeout, slots.min(64) as usize))
            }
            Keepalive::App {
                timeout,
                max_outstanding,
                ..
            } => Some((timeout, max_outstanding.clamp(1, 64) as usize)),
        }
    }

    /// When `poll` must be called next.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let pong_deadline = match (self.outstanding.front(), self.limits()) {
            (Some(&(_, sent)), Some((timeout, _))) => Some(deadline::after(sent, timeout)),
            _ => None,
        };
        let stale_deadline = self.stale_after.map(|w| deadline::after(self.last_data, w));
        [self.next_ping, pong_deadline, stale_deadline]
            .into_iter()
            .flatten()
            .min()
    }

    /// Everything due at `now`, failures first.
    pub(crate) fn poll(&mut self, now: Instant) -> Option<Due> {
        if let Some(window) = self.stale_after
            && now >= deadline::after(self.last_data, window)
        {
            return Some(Due::Fail(LivenessFailure::Stale));
        }
        let (timeout, max_outstanding) = self.limits()?;
        let failure = match self.keepalive {
            Keepalive::App { .. } => LivenessFailure::AppPongTimeout,
            _ => LivenessFailure::PongTimeout,
        };
        if let Some(&(_, sent)) = self.outstanding.front()
            && now >= deadline::after(sent, timeout)
        {
            return Some(Due::Fail(failure));
        }
        let next = self.next_ping?;
        if now < next {
            return None;
        }
        if self.outstanding.len() >= max_outstanding {
            return Some(Due::Fail(failure));
        }
        let interval = match self.keepalive {
            Keepalive::Ping { interval, .. } | Keepalive::App { interval, .. } => interval,
            Keepalive::ServerDriven => return None,
        };
        self.next_ping = Some(deadline::after(now, interval));
        self.seq += 1;
        self.outstanding.push_back((self.seq, now));
        Some(match self.keepalive {
            Keepalive::App { .. } => Due::AppPing(self.seq),
            _ => {
                let mut payload = PING_TAG.to_vec();
                payload.extend_from_slice(&self.seq.to_be_bytes());
                Due::Ping(payload)
            }
        })
    }

    /// A protocol pong arrived. Returns the RTT if it answers a keepalive ping (a pong answers
    /// its ping and every earlier one); `None` for anything else (the application's own pings).
    pub(crate) fn on_pong(&mut self, now: Instant, payload: &[u8]) -> Option<Duration> {
        let seq = payload.strip_prefix(PING_TAG.as_slice())?;
        let seq = u64::from_be_bytes(seq.try_into().ok()?);
        self.answer(now, seq)
    }

    /// An application pong for `seq` arrived.
    pub(crate) fn on_app_pong(&mut self, now: Instant, seq: u64) -> Option<Duration> {
        self.answer(now, seq)
    }

    fn answer(&mut self, now: Instant, seq: u64) -> Option<Duration> {
        let mut rtt = None;
        while let Some(&(s, sent)) = self.outstanding.front() {
            if s > seq {
                break;
            }
            self.outstanding.pop_front();
            if s == seq {
                rtt = Some(now.saturating_duration_since(sent));
            }
        }
        rtt
    }

    #[cfg(test)]
    pub(crate) fn outstanding(&self) -> usize {
        self.outstanding.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn pings_on_interval_and_measures_rtt() {
        let t0 = Instant::now();
        let mut l = Liveness::new(
            Keepalive::Ping {
                interval: 10 * S,
                timeout: 5 * S,
            },
            None,
            t0,
        );
        l.on_open(t0);
        assert_eq!(l.next_deadline(), Some(t0 + 10 * S));
        assert_eq!(l.poll(t0 + 9 * S), None);
        let Some(Due::Ping(payload)) = l.poll(t0 + 10 * S) else {
            panic!("ping due")
        };
        assert_eq!(l.next_deadline(), Some(t0 + 15 * S), "pong deadline first");
        assert_eq!(l.on_pong(t0 + 10 * S + S / 4, b"user payload"), None);
        assert_eq!(l.on_pong(t0 + 10 * S + S / 4, &payload), Some(S / 4));
        assert_eq!(l.outstanding(), 0);
        assert_eq!(l.next_deadline(), Some(t0 + 20 * S));
    }

    #[test]
    fn unanswered_ping_fails_at_its_timeout() {
        let t0 = Instant::now();
        let mut l = Liveness::new(
            Keepalive::Ping {
                interval: 10 * S,
                timeout: 5 * S,
            },
            None,
            t0,
        );
        l.on_open(t0);
        assert!(matches!(l.poll(t0 + 10 * S), Some(Due::Ping(_))));
        assert_eq!(l.poll(t0 + 15 * S - Duration::from_nanos(1)), None);
        assert_eq!(
            l.poll(t0 + 15 * S),
            Some(Due::Fail(LivenessFailure::PongTimeout))
        );
    }

    #[test]
    fn pongs_are_not_data_for_staleness() {
        let t0 = Instant::now();
        let mut l = Liveness::new(
            Keepalive::Ping {
                interval: S,
                timeout: 10 * S,
            },
            Some(3 * S),
            t0,
        );
        l.on_open(t0);
        for i in 1..3u32 {
            let Some(Due::Ping(p)) = l.poll(t0 + i * S) else {
                panic!()
            };
            l.on_pong(t0 + i * S, &p);
        }
        assert_eq!(l.poll(t0 + 3 * S), Some(Due::Fail(LivenessFailure::Stale)));
        // Data moves the window.
        let mut l = Liveness::new(Keepalive::ServerDriven, Some(3 * S), t0);
        l.on_open(t0);
        l.data_seen(t0 + 2 * S);
        assert_eq!(l.poll(t0 + 3 * S), None);
        assert_eq!(l.next_deadline(), Some(t0 + 5 * S));
    }

    #[test]
    fn app_pings_are_bounded_by_max_outstanding() {
        let t0 = Instant::now();
        let ka = Keepalive::App {
            interval: S,
            timeout: 100 * S,
            max_outstanding: 2,
        };
        let mut l = Liveness::new(ka, None, t0);
        l.on_open(t0);
        assert_eq!(l.poll(t0 + S), Some(Due::AppPing(1)));
        assert_eq!(l.poll(t0 + 2 * S), Some(Due::AppPing(2)));
        assert_eq!(
            l.poll(t0 + 3 * S),
            Some(Due::Fail(LivenessFailure::AppPongTimeout))
        );
        assert_eq!(l.on_app_pong(t0 + 3 * S, 2), Some(S));
        assert_eq!(l.poll(t0 + 3 * S), Some(Due::AppPing(3)));
    }

    #[test]
    fn server_driven_never_pings() {
        let t0 = Instant::now();
        let mut l = Liveness::new(Keepalive::ServerDriven, None, t0);
        l.on_open(t0);
        assert_eq!(l.next_deadline(), None);
        assert_eq!(l.poll(t0 + 1000 * S), None);
    }
}
