//! The request table behind `send_and_confirm`: sans-IO, owned by the coordinator.
//!
//! Every submitted [`Request`](crate::Request) gets exactly one [`Outcome`] per waiter. The
//! table's job is to make that outcome true:
//!
//! - **NotDelivered** only when the frame's bytes certainly never reached the socket. The writer
//!   publishes, before each write, the highest link sequence number it has taken from its request
//!   lane (`last_taken`); anything at or below it may have been written. If a write fails before
//!   the kernel accepted any byte of its batch, the writer lowers `last_taken` back, so those
//!   requests count as never delivered. A request whose frame could not even be queued (lane
//!   full) is `NotDelivered(QueueFull)` at once.
//! - **Unconfirmed** when the bytes may have been written and no answer came: on a disconnect at
//!   once, otherwise at the waiter's deadline.
//! - **Sent** (mode `Sent`) once the writer reports the batch holding the frame written.
//! - **Confirmed** / **EndpointRejected** when the endpoint's matching response arrives.
//! - A second submit with an id in flight joins it (same fingerprint) or gets **PayloadMismatch**;
//!   a full table gives **TooManyPending**. Completed ids can be reused.
//!
//! The writer never sends a request whose deadline has passed when it takes it from the lane, and
//! it marks the request taken *before* checking: so when the table reads `last_taken` after a
//! deadline and finds the request not taken, the writer will skip it — `NotDelivered` stays true.
//! Nothing in the table is ever resent after a reconnect.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use crate::frame::Frame;

/// When a request counts as done.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConfirmMode {
    /// Done once the writer has written the frame to the socket. The endpoint's answer, if it
    /// sends one, then arrives as [`Event::Orphan`](crate::Event::Orphan).
    Sent,
    /// Done once the endpoint's matching response is seen.
    Confirmed,
}

/// A request for [`Client::send_and_confirm`](crate::Client::send_and_confirm).
#[derive(Clone, Debug)]
pub struct Request {
    /// The id the endpoint's response will carry (for example the JSON-RPC `id`).
    pub id: u64,
    /// A fingerprint of the payload (for example a hash of the order's fields), used to tell a
    /// duplicate submit (same id, same fingerprint: joins) from a conflicting one.
    pub fingerprint: u64,
    /// The frame to send.
    pub frame: Frame,
    /// How long the caller waits at most.
    pub timeout: Duration,
    /// When the request counts as done.
    pub mode: ConfirmMode,
}

impl Request {
    /// A request confirmed by the endpoint's response, with a 5 s timeout.
    pub fn new(id: u64, fingerprint: u64, frame: Frame) -> Self {
        Request {
            id,
            fingerprint,
            frame,
            timeout: Duration::from_secs(5),
            mode: ConfirmMode::Confirmed,
        }
    }

    /// Sets how long the caller waits at most.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets when the request counts as done.
    pub fn mode(mut self, mode: ConfirmMode) -> Self {
        self.mode = mode;
        self
    }
}

/// The one answer a request gets.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The endpoint confirmed the request.
    Confirmed {
        /// The endpoint's rate-limit feedback: wait this long before the next request.
        retry_after: Option<Duration>,
        /// Any other hint the endpoint gave (free text).
        hint: Option<String>,
    },
    /// Mode [`ConfirmMode::Sent`]: the frame was written to the socket.
    Sent,
    /// The bytes certainly never reached the socket. Safe to retry.
    NotDelivered(Undelivered),
    /// The bytes were or may have been written, but no confirmation came. The outcome at the
    /// endpoint is unknown: reconcile (query open orders) before retrying.
    Unconfirmed(Unknown),
    /// The endpoint answered with an error.
    EndpointRejected {
        /// The endpoint's message.
        message: String,
        /// When to try again, if the endpoint said.
        retry_after: Option<Duration>,
    },
    /// The same request id is in flight with a different fingerprint; nothing was sent.
    PayloadMismatch,
    /// The pending table is full; nothing was sent.
    TooManyPending,
}

/// Why a request was not delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Undelivered {
    /// No session was ready (between connections, or closed for good).
    NotConnected,
    /// The connection dropped before the writer took the frame.
    Disconnected,
    /// The deadline passed before the writer took the frame.
    Deadline,
    /// The client is shutting down.
    ShutDown,
    /// The connection's request lane was full (the writer is blocked behind a slow peer).
    QueueFull,
}

/// Why a request's outcome is unknown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unknown {
    /// The connection dropped after the frame may have been written.
    Disconnected,
    /// No response before the deadline.
    Deadline,
}

/// The endpoint's answer to a request, as recognised by
/// [`Endpoint::parse_reply`](crate::Endpoint::parse_reply).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// Accepted.
    Ok {
        /// Rate-limit feedback.
        retry_after: Option<Duration>,
        /// Free-text hint.
        hint: Option<String>,
    },
    /// Refused.
    Err {
        /// The endpoint's message.
        message: String,
        /// When to try again, if the endpoint said.
        retry_after: Option<Duration>,
    },
}

/// Identifies one caller waiting for an outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct WaiterId(pub u64);

/// What the table asks the coordinator to do.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RequestOut {
    /// Put the frame on the current link's request lane with this sequence number.
    Send {
        seq: u64,
        frame: Frame,
        deadline: Instant,
        /// The writer must report the frame written (mode `Sent`); a confirmed request needs no
        /// report, which keeps the writer off the coordinator on the round trip's path.
        report_written: bool,
    },
    /// Deliver an outcome to a waiter.
    Resolve(WaiterId, Outcome),
    /// A response matched no pending request (it came after its request was resolved).
    Orphan { id: u64, response: Response },
}

#[derive(Debug)]
struct Entry {
    fingerprint: u64,
    mode: ConfirmMode,
    /// Sequence number on the link it was handed to.
    seq: u64,
    written: bool,
    waiters: Vec<(WaiterId, Instant)>,
}

#[derive(Debug)]
pub(crate) struct Requests {
    capacity: usize,
    table: HashMap<u64, Entry>,
    /// Every waiter's deadline, for `next_deadline` and expiry: (deadline, waiter, request id).
    deadlines: BTreeSet<(Instant, WaiterId, u64)>,
    /// Sequence numbers handed to the current link (restarts per link).
    next_seq: u64,
}

impl Requests {
    pub(crate) fn new(capacity: usize) -> Self {
        Requests {
            capacity,
            table: HashMap::new(),
            deadlines: BTreeSet::new(),
            next_seq: 0,
        }
    }

    /// A new link: sequence numbers start over (the table is empty after every disconnect).
    pub(crate) fn on_link_up(&mut self) {
        self.next_seq = 0;
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|(d, _, _)| *d)
    }

    /// Registers a request for `waiter`. `ready`: a session is up to send it on.
    pub(crate) fn submit(
        &mut self,
        now: Instant,
        waiter: WaiterId,
        req: Request,
        ready: bool,
        out: &mut Vec<RequestOut>,
    ) {
        let deadline = now + req.timeout;
        if let Some(entry) = self.table.get_mut(&req.id) {
            if entry.fingerprint != req.fingerprint {
                out.push(RequestOut::Resolve(waiter, Outcome::PayloadMismatch));
                return;
            }
            // Join: same outcome, but never later than the joiner's own deadline, and never
            // later than the original's (the writer drops the frame at that deadline).
            let first_deadline = entry.waiters.first().map_or(deadline, |(_, d)| *d);
            let deadline = deadline.min(first_deadline);
            entry.waiters.push((waiter, deadline));
            self.deadlines.insert((deadline, waiter, req.id));
            return;
        }
        if !ready {
            out.push(RequestOut::Resolve(
                waiter,
                Outcome::NotDelivered(Undelivered::NotConnected),
            ));
            return;
        }
        if self.table.len() >= self.capacity {
            out.push(RequestOut::Resolve(waiter, Outcome::TooManyPending));
            return;
        }
        self.next_seq += 1;
        let seq = self.next_seq;
        self.table.insert(
            req.id,
            Entry {
                fingerprint: req.fingerprint,
                mode: req.mode,
                seq,
                written: false,
                waiters: vec![(waiter, deadline)],
            },
        );
        self.deadlines.insert((deadline, waiter, req.id));
        out.push(RequestOut::Send {
            seq,
            frame: req.frame,
            deadline,
            report_written: req.mode == ConfirmMode::Sent,
        });
    }

    /// The writer wrote every request up to `seq` on the current link.
    pub(crate) fn on_written(&mut self, seq: u64, out: &mut Vec<RequestOut>) {
        let done: Vec<u64> = self
            .table
            .iter_mut()
            .filter(|(_, e)| e.seq <= seq && !e.written)
            .filter_map(|(id, e)| {
                e.written = true;
                (e.mode == ConfirmMode::Sent).then_some(*id)
            })
            .collect();
        for id in done {
            self.resolve_all(id, Outcome::Sent, out);
        }
    }

    /// A response for request `id` arrived.
    pub(crate) fn on_response(&mut self, id: u64, response: Response, out: &mut Vec<RequestOut>) {
        if !self
            .table
            .get(&id)
            .is_some_and(|e| e.mode == ConfirmMode::Confirmed)
        {
            out.push(RequestOut::Orphan { id, response });
            return;
        }
        let outcome = match response {
            Response::Ok { retry_after, hint } => Outcome::Confirmed { retry_after, hint },
            Response::Err {
                message,
                retry_after,
            } => Outcome::EndpointRejected {
                message,
                retry_after,
            },
        };
        self.resolve_all(id, outcome, out);
    }

    /// The request with link sequence number `seq` could not be queued: it was never written.
    pub(crate) fn on_dropped(&mut self, seq: u64, out: &mut Vec<RequestOut>) {
        let id = self
            .table
            .iter()
            .find(|(_, e)| e.seq == seq)
            .map(|(id, _)| *id);
        if let Some(id) = id {
            self.resolve_all(id, Outcome::NotDelivered(Undelivered::QueueFull), out);
        }
    }

    /// The link went down; the writer had taken requests up to `last_taken`. Everything
    /// resolves now: nothing is ever resent on a later connection.
    pub(crate) fn on_link_down(&mut self, last_taken: u64, out: &mut Vec<RequestOut>) {
        let ids: Vec<u64> = self.table.keys().copied().collect();
        for id in ids {
            let outcome = self.undecided_outcome(
                id,
                last_taken,
                Unknown::Disconnected,
                Undelivered::Disconnected,
            );
            self.resolve_all(id, outcome, out);
        }
    }

    /// Resolves the waiters whose deadline has come. `last_taken` as in `on_link_down`.
    pub(crate) fn poll(&mut self, now: Instant, last_taken: u64, out: &mut Vec<RequestOut>) {
        while let Some(&(deadline, waiter, id)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_first();
            let outcome =
                self.undecided_outcome(id, last_taken, Unknown::Deadline, Undelivered::Deadline);
            out.push(RequestOut::Resolve(waiter, outcome));
            if let Some(entry) = self.table.get_mut(&id) {
                entry.waiters.retain(|(w, _)| *w != waiter);
                if entry.waiters.is_empty() {
                    self.table.remove(&id);
                }
            }
        }
    }

    /// The outcome of a request that got no answer: unknown if its bytes may have gone out.
    fn undecided_outcome(
        &self,
        id: u64,
        last_taken: u64,
        unknown: Unknown,
        undelivered: Undelivered,
    ) -> Outcome {
        match self.table.get(&id) {
            Some(e) if e.written || e.seq <= last_taken => Outcome::Unconfirmed(unknown),
            _ => Outcome::NotDelivered(undelivered),
        }
    }

    fn resolve_all(&mut self, id: u64, outcome: Outcome, out: &mut Vec<RequestOut>) {
        if let Some(entry) = self.table.remove(&id) {
            for (waiter, deadline) in entry.waiters {
                self.deadlines.remove(&(deadline, waiter, id));
                out.push(RequestOut::Resolve(waiter, outcome.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn req(id: u64, fp: u64) -> Request {
        Request::new(id, fp, Frame::text(format!("order {id}"))).timeout(S)
    }

    fn resolved(out: &[RequestOut]) -> Vec<(u64, Outcome)> {
        out.iter()
            .filter_map(|o| match o {
                RequestOut::Resolve(w, outcome) => Some((w.0, outcome.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn confirmed_by_response() {
        let t0 = Instant::now();
        let mut r = Requests::new(10);
        let mut out = Vec::new();
        r.submit(t0, WaiterId(1), req(7, 1), true, &mut out);
        assert!(matches!(&out[..], [RequestOut::Send { seq: 1, .. }]));
        out.clear();
        r.on_written(1, &mut out);
        assert!(out.is_empty(), "confirmed mode waits for the response");
        r.on_response(
            7,
            Response::Ok {
                retry_after: None,
                hint: None,
            },
            &mut out,
        );
        assert_eq!(
            resolved(&out),
            [(
                1,
                Outcome::Confirmed {
                    retry_after: None,
                    hint: None
                }
            )]
        );
        assert_eq!(r.len(), 0);
        assert_eq!(r.next_deadline(), None);
    }

    #[test]
    fn sent_mode_resolves_on_write() {
        let t0 = Instant::now();
        let mut r = Requests::new(10);
        let mut out = Vec::new();
        r.submit(
            t0,
            WaiterId(1),
            req(7, 1).mode(ConfirmMode::Sent),
            true,
            &mut out,
        );
        out.clear();
        r.on_written(1, &mut out);
        assert_eq!(resolved(&out), [(1, Outcome::Sent)]);
    }

    #[test]
    fn disconnect_splits_taken_from_untaken() {
        let t0 = Instant::now();
        let mut r = Requests::new(10);
        let mut out = Vec::new();
        for id in 1..=3 {
            r.submit(t0, WaiterId(id), req(id, id), true, &mut out);
        }
        out.clear();
        r.on_link_down(2, &mut out);
        let mut got = resolved(&out);
        got.sort_by_key(|(w, _)| *w);
        assert_eq!(
            got,
            [
                (1, Outcome::Unconfirmed(Unknown::Disconnected)),
                (2, Outcome::Unconfirmed(Unknown::Disconnected)),
                (3, Outcome::NotDelivered(Undelivered::Disconnected)),
            ]
        );
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn dedup_joins_and_mismatch_refuses() {
        let t0 = Instant::now();
        let mut r = Requests::new(10);
        let mut out = Vec::new();
        r.submit(t0, WaiterId(1), req(7, 1), true, &mut out);
        r.submit(t0, WaiterId(2), req(7, 1), true, &mut out);
        r.submit(t0, WaiterId(3), req(7, 2), true, &mut out);
        let sends = out
            .iter()
            .filter(|o| matches!(o, RequestOut::Send { .. }))
            .count();
        assert_eq!(sends, 1, "a joiner sends nothing");
        assert_eq!(resolved(&out), [(3, Outcome::PayloadMismatch)]);
        out.clear();
        r.on_response(
            7,
            Response::Err {
                message: "no funds".into(),
                retry_after: Some(S),
            },
            &mut out,
        );
        let rejected = Outcome::EndpointRejected {
            message: "no funds".into(),
            retry_after: Some(S),
        };
        assert_eq!(resolved(&out), [(1, rejected.clone()), (2, rejected)]);
        out.clear();
        r.submit(t0, WaiterId(4), req(7, 9), true, &mut out);
        assert!(
            matches!(&out[..], [RequestOut::Send { .. }]),
            "completed ids can be reused"
        );
    }

    #[test]
    fn joiner_with_earlier_deadline_times_out_alone() {
        let t0 = Instant::now();
        let mut r = Requests::new(10);
        let mut out = Vec::new();
        r.submit(t0, WaiterId(1), req(7, 1).timeout(10 * S), true, &mut out);
        r.submit(t0, WaiterId(2), req(7, 1).timeout(S), true, &mut out);
        out.clear();
        r.poll(t0 + S, 1, &mut out);
        assert_eq!(
            resolved(&out),
            [(2, Outcome::Unconfirmed(Unknown::Deadline))]
        );
        out.clear();
        r.on_response(
            7,
            Response::Ok {
                retry_after: None,
                hint: None,
            },
            &mut out,
        );
        assert_eq!(
            resolved(&out).len(),
            1,
            "the first caller still gets the answer"
        );
    }

    #[test]
    fn deadline_before_the_writer_took_it_is_not_delivered() {
        let t0 = Instant::now();
        let mut r = Requests::new(10);
        let mut out = Vec::new();
        r.submit(t0, WaiterId(1), req(7, 1), true, &mut out);
        out.clear();
        r.poll(t0 + S, 0, &mut out);
        assert_eq!(
            resolved(&out),
            [(1, Outcome::NotDelivered(Undelivered::Deadline))]
        );
        out.clear();
        r.on_response(
            7,
            Response::Ok {
                retry_after: None,
                hint: None,
            },
            &mut out,
        );
        assert!(
            matches!(&out[..], [RequestOut::Orphan { id: 7, .. }]),
            "late answers are orphans"
        );
    }

    #[test]
    fn full_table_and_not_ready_refuse() {
        let t0 = Instant::now();
        let mut r = Requests::new(1);
        let mut out = Vec::new();
        r.submit(t0, WaiterId(1), req(1, 1), true, &mut out);
        r.submit(t0, WaiterId(2), req(2, 2), true, &mut out);
        r.submit(t0, WaiterId(3), req(3, 3), false, &mut out);
        assert_eq!(
            resolved(&out),
            [
                (2, Outcome::TooManyPending),
                (3, Outcome::NotDelivered(Undelivered::NotConnected))
            ]
        );
    }
}
