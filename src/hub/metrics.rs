//! The hub's figures: counters bumped where things happen, read at any time without a lock.
//!
//! [`Hub::metrics`](super::HubHandle::metrics) copies every counter into a [`Metrics`] value;
//! gauges (connections, queued bytes) go up and down, totals only up. The broadcast fan-out
//! latency (the time a [`publish`](super::HubHandle::publish) takes to hand a publication to
//! every local member's socket or queue) is kept in power-of-two buckets of microseconds.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use crate::hub::stream::BrokerStatus;

/// Number of power-of-two latency buckets: up to 2^39 µs, far beyond any real fan-out.
const BUCKETS: usize = 40;

/// The live counters, shared by every part of the hub.
#[derive(Default)]
pub(crate) struct Counters {
    pub handshaking: AtomicUsize,
    pub open: AtomicUsize,
    pub closing: AtomicUsize,
    pub accepted: AtomicU64,
    pub refused_limit: AtomicU64,
    pub refused_admission: AtomicU64,
    pub handshake_failures: AtomicU64,
    pub closed: AtomicU64,
    pub slow_closes: AtomicU64,
    pub dropped: AtomicU64,
    pub rate_limited: AtomicU64,
    pub protocol_errors: AtomicU64,
    pub callback_panics: AtomicU64,
    pub publications: AtomicU64,
    pub resets: AtomicU64,
    pub rooms: AtomicUsize,
    pub memberships: AtomicUsize,
    queued_bytes: AtomicUsize,
    fanout_us: Buckets,
}

/// The fan-out latency histogram.
struct Buckets([AtomicU64; BUCKETS]);

impl Default for Buckets {
    fn default() -> Self {
        Buckets(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl Counters {
    pub(crate) fn queued_bytes_add(&self, n: usize) {
        self.queued_bytes.fetch_add(n, Relaxed);
    }

    pub(crate) fn queued_bytes_sub(&self, n: usize) {
        self.queued_bytes.fetch_sub(n, Relaxed);
    }

    pub(crate) fn resets_add(&self) {
        self.resets.fetch_add(1, Relaxed);
    }

    pub(crate) fn dropped_add(&self, n: u64) {
        self.dropped.fetch_add(n, Relaxed);
    }

    pub(crate) fn record_fanout(&self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
        let bucket = (63 - us.leading_zeros() as usize).min(BUCKETS - 1);
        self.fanout_us.0[bucket].fetch_add(1, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Metrics {
        let buckets: Vec<u64> = self.fanout_us.0.iter().map(|b| b.load(Relaxed)).collect();
        Metrics {
            handshaking: self.handshaking.load(Relaxed),
            open: self.open.load(Relaxed),
            closing: self.closing.load(Relaxed),
            accepted: self.accepted.load(Relaxed),
            refused_limit: self.refused_limit.load(Relaxed),
            refused_admission: self.refused_admission.load(Relaxed),
            handshake_failures: self.handshake_failures.load(Relaxed),
            closed: self.closed.load(Relaxed),
            slow_closes: self.slow_closes.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            rate_limited: self.rate_limited.load(Relaxed),
            protocol_errors: self.protocol_errors.load(Relaxed),
            callback_panics: self.callback_panics.load(Relaxed),
            publications: self.publications.load(Relaxed),
            resets: self.resets.load(Relaxed),
            rooms: self.rooms.load(Relaxed),
            memberships: self.memberships.load(Relaxed),
            queued_bytes: self.queued_bytes.load(Relaxed),
            fanout_p50: percentile(&buckets, 0.50),
            fanout_p99: percentile(&buckets, 0.99),
            broker: None,
        }
    }
}

/// The upper bound of the bucket holding quantile `q` (zero with no sample).
fn percentile(buckets: &[u64], q: f64) -> Duration {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return Duration::ZERO;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, n) in buckets.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return Duration::from_micros(1u64 << (i + 1).min(63));
        }
    }
    Duration::MAX
}

/// A copy of the hub's counters at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Metrics {
    /// Connections in their opening handshake (admission included).
    pub handshaking: usize,
    /// Open connections.
    pub open: usize,
    /// Open connections whose close has begun.
    pub closing: usize,
    /// Connections upgraded, in total.
    pub accepted: u64,
    /// Connections refused by a limit (`503` before the upgrade).
    pub refused_limit: u64,
    /// Requests the admission callback or the upgrade checks refused.
    pub refused_admission: u64,
    /// Handshakes that failed (deadline, malformed request, TLS).
    pub handshake_failures: u64,
    /// Connections ended, in total.
    pub closed: u64,
    /// Connections closed for being slow (their queue overflowed).
    pub slow_closes: u64,
    /// Messages dropped: overflow under the drop policy, or queued data dropped by a slow close.
    pub dropped: u64,
    /// Inbound messages over the rate limit.
    pub rate_limited: u64,
    /// Connections failed for a protocol violation (1002, 1007, 1009).
    pub protocol_errors: u64,
    /// User callbacks that panicked.
    pub callback_panics: u64,
    /// Publications fanned out.
    pub publications: u64,
    /// Room streams reset under their members (history lost, or a gap not recovered).
    pub resets: u64,
    /// Rooms with at least one member.
    pub rooms: usize,
    /// Room memberships (one connection in two rooms counts twice).
    pub memberships: usize,
    /// Bytes waiting in connections' queues.
    pub queued_bytes: usize,
    /// Median fan-out time of a publication (bucket upper bound, a power of two in µs).
    pub fanout_p50: Duration,
    /// 99th percentile fan-out time (bucket upper bound).
    pub fanout_p99: Duration,
    /// A shared broker's connection state and counters (`None` with the memory broker).
    pub broker: Option<BrokerStatus>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fanout_percentiles_come_from_the_buckets() {
        let c = Counters::default();
        assert_eq!(c.snapshot().fanout_p99, Duration::ZERO);
        for _ in 0..99 {
            c.record_fanout(Duration::from_micros(3)); // bucket [2, 4)
        }
        c.record_fanout(Duration::from_millis(5)); // bucket [4096, 8192)
        let m = c.snapshot();
        assert_eq!(m.fanout_p50, Duration::from_micros(4));
        assert_eq!(m.fanout_p99, Duration::from_micros(4));
        c.record_fanout(Duration::from_millis(5));
        assert_eq!(c.snapshot().fanout_p99, Duration::from_micros(8192));
    }
}
