//! A token bucket: the per-connection inbound rate limit.

use std::time::Instant;

use crate::hub::config::RateLimit;

/// Tokens refill at `per_second` up to `burst`; each inbound message takes one.
#[derive(Debug)]
pub(crate) struct Bucket {
    per_second: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub(crate) fn new(limit: &RateLimit, now: Instant) -> Self {
        let burst = f64::from(limit.burst.max(1));
        Bucket {
            per_second: limit.per_second.max(0.0),
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes a token if there is one.
    pub(crate) fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::config::RatePolicy;
    use std::time::Duration;

    fn limit(per_second: f64, burst: u32) -> RateLimit {
        RateLimit {
            per_second,
            burst,
            policy: RatePolicy::Close,
        }
    }

    #[test]
    fn a_burst_passes_then_the_rate_applies() {
        let t0 = Instant::now();
        let mut b = Bucket::new(&limit(10.0, 5), t0);
        assert!((0..5).all(|_| b.take(t0)));
        assert!(!b.take(t0));
        // 100 ms at 10/s buys one more.
        assert!(b.take(t0 + Duration::from_millis(100)));
        assert!(!b.take(t0 + Duration::from_millis(100)));
    }

    /// The default lets 100 messages/s through for 10 s and stops 10,000 back to back.
    #[test]
    fn the_default_allows_a_steady_100_per_second_and_stops_a_flood() {
        let t0 = Instant::now();
        let mut steady = Bucket::new(&RateLimit::default(), t0);
        for i in 0..1_000u32 {
            assert!(steady.take(t0 + Duration::from_millis(u64::from(i) * 10)));
        }
        let mut flood = Bucket::new(&RateLimit::default(), t0);
        let passed = (0..10_000).filter(|_| flood.take(t0)).count();
        assert_eq!(passed, 500);
    }
}
