//! Health bookkeeping owned by the coordinator: an RTT histogram, a ring of recent errors, and
//! the latency policy that turns sustained slowness into a reconnect.
//!
//! Everything here is bounded: the histogram has a fixed number of buckets, the error ring and the
//! policy's sample window have fixed capacities.

use std::collections::VecDeque;
use std::time::Duration;

/// Sub-buckets per power of two: about 19% relative error on reported percentiles.
const SUB: u32 = 4;
/// Powers of two covered, in microseconds: up to 2^38 µs (~3 days).
const OCTAVES: u32 = 38;
const BUCKETS: usize = (SUB * OCTAVES) as usize + 1;

/// A log-linear histogram of round-trip times with fixed memory.
#[derive(Clone)]
pub(crate) struct RttHistogram {
    counts: Box<[u64; BUCKETS]>,
    total: u64,
    max: Duration,
}

impl std::fmt::Debug for RttHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RttHistogram")
            .field("total", &self.total)
            .finish_non_exhaustive()
    }
}

impl RttHistogram {
    pub(crate) fn new() -> Self {
        RttHistogram {
            counts: Box::new([0; BUCKETS]),
            total: 0,
            max: Duration::ZERO,
        }
    }

    fn bucket(us: u64) -> usize {
        if us < u64::from(SUB) {
            return us as usize;
        }
        let octave = 63 - us.leading_zeros(); // >= 2
        let sub = ((us >> (octave - 2)) & u64::from(SUB - 1)) as u32;
        ((octave - 1) * SUB + sub).min(BUCKETS as u32 - 1) as usize
    }

    /// The largest value that falls in `bucket`.
    fn upper_bound(bucket: usize) -> u64 {
        let b = bucket as u32;
        if b < SUB {
            return u64::from(b);
        }
        let octave = b / SUB + 1;
        let sub = u64::from(b % SUB);
        ((SUB as u64 + sub + 1) << (octave - 2)) - 1
    }

    pub(crate) fn record(&mut self, rtt: Duration) {
        let us = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX);
        self.counts[Self::bucket(us)] += 1;
        self.total += 1;
        self.max = self.max.max(rtt);
    }

    pub(crate) fn count(&self) -> u64 {
        self.total
    }

    /// The value at quantile `q` (0.0..=1.0), to the histogram's resolution; `None` when empty.
    pub(crate) fn quantile(&self, q: f64) -> Option<Duration> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let us = Self::upper_bound(i);
                return Some(Duration::from_micros(us).min(self.max));
            }
        }
        Some(self.max)
    }
}

/// Disconnect when a percentile of recent RTT samples stays above a threshold.
///
/// After each RTT sample the policy computes the `percentile` of the last `window` samples; a
/// value above `threshold` is a breach. `consecutive` breaches in a row disconnect with
/// [`Cause::LatencyPolicy`](crate::Cause::LatencyPolicy) (and the usual reconnect follows).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LatencyPolicy {
    /// Which percentile to watch, in `0.0..=1.0` (for example `0.99`).
    pub percentile: f64,
    /// The highest acceptable value of that percentile.
    pub threshold: Duration,
    /// How many recent samples the percentile is computed over (at most 1024).
    pub window: usize,
    /// How many breaches in a row trigger a disconnect.
    pub consecutive: u32,
}

/// The running state of a [`LatencyPolicy`].
#[derive(Debug)]
pub(crate) struct LatencyWatch {
    policy: LatencyPolicy,
    samples: VecDeque<Duration>,
    breaches: u32,
}

impl LatencyWatch {
    pub(crate) fn new(policy: LatencyPolicy) -> Self {
        let window = policy.window.clamp(1, 1024);
        LatencyWatch {
            policy: LatencyPolicy { window, ..policy },
            samples: VecDeque::with_capacity(window),
            breaches: 0,
        }
    }

    /// Records a sample; true when the policy says disconnect.
    pub(crate) fn record(&mut self, rtt: Duration) -> bool {
        if self.samples.len() == self.policy.window {
            self.samples.pop_front();
        }
        self.samples.push_back(rtt);
        let mut sorted: Vec<Duration> = self.samples.iter().copied().collect();
        sorted.sort_unstable();
        let idx = ((self.policy.percentile.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize)
            .clamp(1, sorted.len())
            - 1;
        if sorted[idx] > self.policy.threshold {
            self.breaches = self.breaches.saturating_add(1);
        } else {
            self.breaches = 0;
        }
        self.breaches >= self.policy.consecutive.max(1)
    }

    /// Starts over (after a reconnect).
    pub(crate) fn reset(&mut self) {
        self.samples.clear();
        self.breaches = 0;
    }
}

/// A bounded ring of recent error descriptions, newest last.
#[derive(Debug)]
pub(crate) struct ErrorRing {
    entries: VecDeque<String>,
    capacity: usize,
}

impl ErrorRing {
    pub(crate) fn new(capacity: usize) -> Self {
        ErrorRing {
            entries: VecDeque::with_capacity(capacity),
            capacity: capacity.max(1),
        }
    }

    pub(crate) fn push(&mut self, entry: String) {
        if self.entries.len() == self.capacity {
            self.entries.pop_front();
        }
        self.entries.push_back(entry);
    }

    pub(crate) fn to_vec(&self) -> Vec<String> {
        self.entries.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_bounds_contain_values() {
        let mut last = 0;
        for us in 0..200_000u64 {
            let b = RttHistogram::bucket(us);
            assert!(b >= last, "bucket order at {us}");
            assert!(RttHistogram::upper_bound(b) >= us, "bound of {us}");
            if b > 0 {
                assert!(
                    RttHistogram::upper_bound(b - 1) < us,
                    "previous bound below {us}"
                );
            }
            last = b;
        }
    }

    #[test]
    fn quantiles_are_within_resolution() {
        let mut h = RttHistogram::new();
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        let p50 = h.quantile(0.5).unwrap().as_micros() as f64;
        let p99 = h.quantile(0.99).unwrap().as_micros() as f64;
        assert!((500.0..=500.0 * 1.25).contains(&p50), "p50 {p50}");
        assert!((990.0..=1000.0).contains(&p99), "p99 {p99}");
        assert_eq!(RttHistogram::new().quantile(0.5), None);
    }

    #[test]
    fn latency_policy_needs_consecutive_breaches() {
        let policy = LatencyPolicy {
            percentile: 0.5,
            threshold: Duration::from_millis(10),
            window: 3,
            consecutive: 2,
        };
        let mut w = LatencyWatch::new(policy);
        let ms = Duration::from_millis;
        assert!(!w.record(ms(1)));
        assert!(!w.record(ms(50))); // median of [1, 50] = 1 -> no breach
        assert!(!w.record(ms(50))); // median of [1, 50, 50] = 50 -> breach 1
        assert!(w.record(ms(50))); // breach 2 -> disconnect
        w.reset();
        assert!(!w.record(ms(50)));
    }

    #[test]
    fn error_ring_keeps_the_newest() {
        let mut r = ErrorRing::new(2);
        for e in ["a", "b", "c"] {
            r.push(e.into());
        }
        assert_eq!(r.to_vec(), ["b", "c"]);
    }
}
