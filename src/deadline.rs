//! Saturating time arithmetic.
//!
//! Durations reach the crate from settings ([`Config`](crate::Config) timeouts, keepalive
//! intervals, a [`Reconnect`](crate::Reconnect) strategy's delays) and from peers (a server's
//! `Retry-After`). `Instant + Duration` panics when the sum does not fit, so every deadline is
//! computed here instead: a sum that does not fit becomes a point so far in the future that it is
//! never reached (about a century), which is what "wait this long" means in practice.

use std::time::{Duration, Instant};

/// How far ahead "never" is when `now + d` does not fit: about 100 years.
const FAR_FUTURE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `now + d`, saturating at a far-future instant instead of panicking.
pub(crate) fn after(now: Instant, d: Duration) -> Instant {
    if let Some(t) = now.checked_add(d) {
        return t;
    }
    // The platform's clock cannot represent `now + d`: take the farthest of a few steps down
    // that it can (the first fits on every supported platform).
    [FAR_FUTURE, FAR_FUTURE / 100, Duration::from_secs(24 * 3600)]
        .into_iter()
        .find_map(|step| now.checked_add(step.min(d)))
        .unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_normally_and_saturates_on_overflow() {
        let now = Instant::now();
        assert_eq!(
            after(now, Duration::from_secs(5)),
            now + Duration::from_secs(5)
        );
        assert_eq!(after(now, Duration::ZERO), now);
        let far = after(now, Duration::MAX);
        assert!(far >= now + Duration::from_secs(365 * 24 * 3600), "{far:?}");
        // Chaining saturated deadlines never panics either.
        let _ = after(far, Duration::MAX);
    }
}
