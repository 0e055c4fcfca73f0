//! A room's stream as both halves of the seam see it: a [`Position`] (epoch and offset), a
//! [`Publication`], what a joiner gets back ([`Recovery`]), and what a broker reports
//! ([`BrokerError`], [`BrokerStatus`]).

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

use bytes::Bytes;

/// Where a publication sits in its room's stream.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Position {
    /// The stream's identity: a new epoch means the history before it is gone.
    pub epoch: Arc<str>,
    /// 1 for the first publication of the epoch, then one more for each; 0 before any.
    pub offset: u64,
}

/// One publication, as stored and fanned out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    /// The room it was published to.
    pub room: Arc<str>,
    /// Its position in the room's stream.
    pub position: Position,
    /// The application's payload.
    pub data: Bytes,
}

/// What a subscriber gets when it joins: the stream's newest position, and what it missed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// The newest publication's position (offset 0 before any): live publications carry the
    /// next offsets.
    pub position: Position,
    /// True when `since` was given and history covered everything after it: `missed` is then
    /// exactly what the subscriber lacks. False when no `since` was given, when the epoch
    /// differs (the subscriber's stream is gone) or when history no longer reaches back far
    /// enough: `missed` is then empty.
    pub recovered: bool,
    /// The publications after `since`, in order.
    pub missed: Vec<Publication>,
}

/// Why a broker could not do what was asked, and whether it may have happened anyway.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BrokerError {
    /// Nothing was done: the broker could not be reached, or refused before acting. Retrying
    /// cannot duplicate anything.
    Unavailable(String),
    /// The request was sent and its answer lost (the connection failed or timed out after
    /// sending): a publication may still be stored and delivered. Retrying may publish it
    /// twice; a subscriber learns the truth from the offsets it receives.
    Unknown(String),
}

impl BrokerError {
    /// The description, whichever the case.
    pub fn message(&self) -> &str {
        match self {
            BrokerError::Unavailable(m) | BrokerError::Unknown(m) => m,
        }
    }
}

impl fmt::Display for BrokerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BrokerError::Unavailable(m) => write!(f, "broker unavailable, nothing done: {m}"),
            BrokerError::Unknown(m) => write!(f, "broker outcome unknown: {m}"),
        }
    }
}

impl std::error::Error for BrokerError {}

/// A shared broker's state and counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BrokerStatus {
    /// The subscription connection is up.
    pub connected: bool,
    /// Times the subscription connection was rebuilt.
    pub reconnects: u64,
    /// Rebuilds caused by a probe that was not heard back (a silent link).
    pub probe_failures: u64,
    /// Gaps filled from the stream (a jump in offsets, or what a rebuild missed).
    pub gaps_recovered: u64,
    /// Gaps the stream no longer covered, and new epochs: announced as resets.
    pub gaps_unrecovered: u64,
}

/// A fresh epoch: 12 base-36 characters from `random` (seeded per process by the standard
/// library) and the clock, so epochs differ across restarts and processes.
pub(crate) fn new_epoch(random: &RandomState) -> String {
    let mut h = random.build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    let mut n = h.finish();
    (0..12)
        .map(|_| {
            let c = char::from_digit((n % 36) as u32, 36).unwrap_or('0');
            n /= 36;
            c
        })
        .collect()
}
