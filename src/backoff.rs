//! Reconnect scheduling: the [`Reconnect`] strategy trait and its default, exponential backoff
//! with full jitter drawn from a seeded generator (same seed, same delays). Unless a seed is
//! given, each [`Backoff`] seeds itself from the operating system's secure random source, so a
//! fleet of clients restarted together does not reconnect in lock-step.
//!
//! The coordinator asks the strategy for a delay after each failed attempt or lost connection,
//! and resets it once a connection has stayed up for `stable_after`. A server's `Retry-After`
//! (HTTP 429/503) is a floor on the delay, never shortened by jitter.

use std::time::Duration;

/// Decides how long to wait before the next connection attempt.
pub trait Reconnect: Send + 'static {
    /// The delay before attempt number `failures + 1`, where `failures` counts the failed
    /// attempts and lost connections since the last reset (at least 1). `None` stops
    /// reconnecting for good.
    fn next_delay(&mut self, failures: u32) -> Option<Duration>;

    /// Called when a connection has been stable for long enough that the failure count restarts.
    fn reset(&mut self) {}
}

/// Exponential backoff with full jitter: the delay before retry `n` is uniform in
/// `[0, min(max, initial * 2^(n-1))]`, drawn from a SplitMix64 generator.
///
/// The generator is seeded from the operating system's secure random source by default, so
/// clients that lose their server at the same moment spread their reconnects out instead of
/// arriving together. [`seed`](Self::seed) makes the schedule reproducible (tests, replays).
///
/// ```
/// use std::time::Duration;
/// use syncws::{Backoff, Reconnect};
///
/// let mut a = Backoff::new(Duration::from_millis(100), Duration::from_secs(10)).seed(7);
/// let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(10)).seed(7);
/// for n in 1..=10 {
///     let d = a.next_delay(n).unwrap();
///     assert_eq!(Some(d), b.next_delay(n));          // deterministic per seed
///     assert!(d <= Duration::from_secs(10));          // capped
/// }
/// ```
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    max_attempts: Option<u32>,
    rng: SplitMix64,
}

impl Backoff {
    /// Backoff starting at `initial`, doubling per failure, capped at `max`, retrying forever,
    /// with jitter seeded from the operating system (a different schedule for every instance).
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            max_attempts: None,
            rng: SplitMix64(os_seed()),
        }
    }

    /// Seeds the jitter generator: the same seed gives the same schedule of delays. Without
    /// it, the seed comes from the operating system.
    pub fn seed(mut self, seed: u64) -> Self {
        self.rng = SplitMix64(seed);
        self
    }

    /// Gives up after `attempts` consecutive failures.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts);
        self
    }

    /// The cap for retry `failures` before jitter.
    fn ceiling(&self, failures: u32) -> Duration {
        let shift = failures.saturating_sub(1).min(31);
        self.initial.saturating_mul(1 << shift).min(self.max)
    }
}

impl Default for Backoff {
    /// 100 ms doubling to 30 s, forever, seeded from the operating system.
    fn default() -> Self {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(30))
    }
}

impl Reconnect for Backoff {
    fn next_delay(&mut self, failures: u32) -> Option<Duration> {
        if self.max_attempts.is_some_and(|max| failures > max) {
            return None;
        }
        // Saturates at ~584 years; `max` may be anything up to `Duration::MAX`.
        let ceiling = u64::try_from(self.ceiling(failures).as_nanos()).unwrap_or(u64::MAX);
        let jittered = match ceiling.checked_add(1) {
            Some(range) => self.rng.next() % range,
            None => self.rng.next(),
        };
        Some(Duration::from_nanos(jittered))
    }
}

/// A seed from the operating system's secure random source (through the rustls crypto
/// provider the crate already uses for masking keys). Should that source fail, std's per-process
/// random hash keys and the clock still give each client a different seed.
fn os_seed() -> u64 {
    let mut bytes = [0u8; 8];
    let rng = rustls::crypto::ring::default_provider().secure_random;
    if rng.fill(&mut bytes).is_ok() {
        return u64::from_ne_bytes(bytes);
    }
    log::warn!("secure random source failed; seeding reconnect jitter from the hash keys");
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(t.as_nanos());
    }
    h.write_u32(std::process::id());
    h.finish()
}

/// SplitMix64: tiny, fast, and good enough for jitter; fully determined by its seed.
#[derive(Clone, Debug)]
pub(crate) struct SplitMix64(pub u64);

impl SplitMix64 {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_schedule_and_different_seed_differs() {
        let schedule = |seed| {
            let mut b = Backoff::default().seed(seed);
            (1..=20)
                .map(|n| b.next_delay(n).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(schedule(42), schedule(42));
        assert_ne!(schedule(42), schedule(43));
    }

    #[test]
    fn delays_stay_under_the_exponential_ceiling() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5)).seed(1);
        for n in 1..=40 {
            let d = b.next_delay(n).unwrap();
            let ceiling =
                Duration::from_millis(100 * (1u64 << (n - 1).min(20))).min(Duration::from_secs(5));
            assert!(d <= ceiling, "retry {n}: {d:?} > {ceiling:?}");
        }
    }

    #[test]
    fn jitter_spreads_over_the_whole_range() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(1)).seed(9);
        let samples: Vec<_> = (0..1000)
            .map(|_| b.next_delay(1).unwrap().as_millis())
            .collect();
        assert!(samples.iter().any(|&ms| ms < 100));
        assert!(samples.iter().any(|&ms| ms > 900));
    }

    fn delays(mut b: Backoff) -> Vec<Duration> {
        (1..=20).map(|n| b.next_delay(n).unwrap()).collect()
    }

    #[test]
    fn default_jitter_is_not_identical_across_a_fleet() {
        // Finding 8: every default Backoff used seed 0, so a fleet restarted together
        // reconnected in lock-step.
        assert_ne!(delays(Backoff::default()), delays(Backoff::default()));
        let (initial, max) = (Duration::from_millis(100), Duration::from_secs(10));
        assert_ne!(
            delays(Backoff::new(initial, max)),
            delays(Backoff::new(initial, max))
        );
        assert_eq!(
            delays(Backoff::default().seed(7)),
            delays(Backoff::default().seed(7))
        );
    }

    #[test]
    fn huge_bounds_do_not_overflow_the_jitter() {
        let mut b = Backoff::new(Duration::MAX, Duration::MAX).seed(1);
        for n in [1, 2, 31, 32, u32::MAX] {
            assert!(b.next_delay(n).is_some());
        }
    }

    #[test]
    fn max_attempts_stops() {
        let mut b = Backoff::default().max_attempts(3);
        assert!(b.next_delay(3).is_some());
        assert!(b.next_delay(4).is_none());
    }
}
