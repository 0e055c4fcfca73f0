//! The request table behind `send_and_confirm`: sans-IO, owned by the coordinator.
//!
//! Every submitted [`Request`] gets exactly one [`Outcome`] per waiter. The table's job is to
//! make that outcome true:
//!
//! - **NotDelivered** only when the frame's bytes certainly never reached the socket. The frame
//!   rides the user data lane (so it leaves in the caller's order among its `send`s) and shares
//!   a [`Claim`] with the table: the writer takes it before writing, the table withdraws it
//!   before answering `NotDelivered`, and whichever comes first decides. A write that failed
//!   before the kernel accepted any byte of its batch gives the claim back. A frame that cannot
//!   be queued (data lane full) is `NotDelivered(QueueFull)` at once.
//! - **Unconfirmed** when the bytes may have been written and no answer came: on a disconnect at
//!   once, otherwise at the waiter's deadline.
//! - **Sent** (mode `Sent`) once the writer reports the batch holding the frame written.
//! - **Confirmed** / **EndpointRejected** when the endpoint's matching response arrives.
//! - A second submit with an id in flight joins it (same fingerprint) or gets **PayloadMismatch**;
//!   a full table gives **TooManyPending**. Completed ids can be reused.
//!
//! Deadlines are absolute, taken when the caller submitted: a registration that reaches the
//! coordinator after its deadline is refused (`NotDelivered(Deadline)`), and the writer skips a
//! frame whose deadline has passed. Nothing in the table is ever resent after a reconnect.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::client::claim::Claim;
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
    /// The data lane was full (the writer is blocked behind a slow peer, or behind frames sent
    /// earlier): the request was refused at once.
    QueueFull,
    /// A [`ConfirmMode::Confirmed`] request on a client whose endpoint cannot recognise
    /// responses (no [`Endpoint::precheck`](crate::Endpoint::precheck)): it could only time out,
    /// so it was refused at once. Implement `precheck` and
    /// [`parse_reply`](crate::Endpoint::parse_reply) returning
    /// [`Reply::Response`](crate::Reply::Response), or send with [`ConfirmMode::Sent`].
    CannotConfirm,
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

/// Identifies one caller waiting for an outcome (unique per submit, for the client's life).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct WaiterId(pub u64);

/// A request as the table sees it: the frame itself travels on the data lane.
#[derive(Debug)]
pub(crate) struct Submission {
    pub id: u64,
    pub fingerprint: u64,
    pub mode: ConfirmMode,
    /// Absolute: taken when the caller submitted, never re-anchored.
    pub deadline: Instant,
    /// The connection whose session the caller saw ready.
    pub epoch: u64,
    /// Shared with the frame on the data lane.
    pub claim: Arc<Claim>,
}

/// What the table asks the coordinator to do.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RequestOut {
    /// The request submitted by this waiter is registered: its frame, already on the data
    /// lane, may be written (wake the writer, which may be waiting at it).
    Accepted(WaiterId, Arc<Claim>),
    /// A submitted frame was withdrawn before it was registered (refused, or joined to a
    /// request in flight): wake the writer, which may be waiting at it.
    Withdrawn,
    /// Deliver an outcome to a waiter.
    Resolve(WaiterId, Outcome),
    /// A response matched no pending request (it came after its request was resolved).
    Orphan { id: u64, response: Response },
}

#[derive(Debug)]
struct Entry {
    fingerprint: u64,
    mode: ConfirmMode,
    /// The submit whose frame is on its way (joiners send none).
    origin: WaiterId,
    claim: Arc<Claim>,
    /// The writer reported the frame written.
    written: bool,
    waiters: Vec<(WaiterId, Instant)>,
}

#[derive(Debug)]
pub(crate) struct Requests {
    capacity: usize,
    table: HashMap<u64, Entry>,
    /// Every waiter's deadline, for `next_deadline` and expiry: (deadline, waiter, request id).
    deadlines: BTreeSet<(Instant, WaiterId, u64)>,
}

impl Requests {
    pub(crate) fn new(capacity: usize) -> Self {
        Requests {
            capacity,
            table: HashMap::new(),
            deadlines: BTreeSet::new(),
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|(d, _, _)| *d)
    }

    /// Registers a request for `waiter`. `ready`: the epoch of the connection whose session is
    /// ready to send it, if any.
    pub(crate) fn submit(
        &mut self,
        now: Instant,
        waiter: WaiterId,
        sub: Submission,
        ready: Option<u64>,
        out: &mut Vec<RequestOut>,
    ) {
        let refuse = |out: &mut Vec<RequestOut>, outcome| {
            sub.claim.withdraw();
            out.push(RequestOut::Withdrawn);
            out.push(RequestOut::Resolve(waiter, outcome));
        };
        if now >= sub.deadline {
            // It waited for the coordinator past its deadline: it must not go out now.
            return refuse(out, Outcome::NotDelivered(Undelivered::Deadline));
        }
        if let Some(entry) = self.table.get_mut(&sub.id) {
            if entry.fingerprint != sub.fingerprint {
                return refuse(out, Outcome::PayloadMismatch);
            }
            // Join: same outcome, sending nothing, but never later than the joiner's own
            // deadline, and never later than the original's (the writer drops the frame then).
            sub.claim.withdraw();
            out.push(RequestOut::Withdrawn);
            let first_deadline = entry.waiters.first().map_or(sub.deadline, |(_, d)| *d);
            let deadline = sub.deadline.min(first_deadline);
            entry.waiters.push((waiter, deadline));
            self.deadlines.insert((deadline, waiter, sub.id));
            return;
        }
        match ready {
            None => return refuse(out, Outcome::NotDelivered(Undelivered::NotConnected)),
            // Submitted for a session that has since been lost: its frame was discarded.
            Some(epoch) if epoch != sub.epoch => {
                return refuse(out, Outcome::NotDelivered(Undelivered::Disconnected));
            }
            Some(_) => {}
        }
        if self.table.len() >= self.capacity {
            return refuse(out, Outcome::TooManyPending);
        }
        if !sub.claim.accept() {
            // The caller gave up before the registration arrived.
            out.push(RequestOut::Resolve(
                waiter,
                Outcome::NotDelivered(Undelivered::Deadline),
            ));
            return;
        }
        self.deadlines.insert((sub.deadline, waiter, sub.id));
        out.push(RequestOut::Accepted(waiter, sub.claim.clone()));
        self.table.insert(
            sub.id,
            Entry {
                fingerprint: sub.fingerprint,
                mode: sub.mode,
                origin: waiter,
                claim: sub.claim,
                written: false,
                waiters: vec![(waiter, sub.deadline)],
            },
        );
    }

    /// The writer wrote the frame submitted by `origin` (reported for mode `Sent` only).
    pub(crate) fn on_written(&mut self, origin: WaiterId, out: &mut Vec<RequestOut>) {
        let Some((&id, entry)) = self.table.iter_mut().find(|(_, e)| e.origin == origin) else {
            return;
        };
        entry.written = true;
        if entry.mode == ConfirmMode::Sent {
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

    /// The link went down (its writer is joined). Everything resolves now: nothing is ever
    /// resent on a later connection.
    pub(crate) fn on_link_down(&mut self, out: &mut Vec<RequestOut>) {
        let ids: Vec<u64> = self.table.keys().copied().collect();
        for id in ids {
            let outcome = self
                .table
                .get(&id)
                .map(|e| settle(e, Unknown::Disconnected, Undelivered::Disconnected));
            if let Some(outcome) = outcome {
                self.resolve_all(id, outcome, out);
            }
        }
    }

    /// The connection a rotation replaced went down (its writer is joined): the requests it
    /// wrote, or may have, and that got no answer are unconfirmed; the others are still on the
    /// user data lane and go out on the replacement.
    pub(crate) fn on_retired(&mut self, out: &mut Vec<RequestOut>) {
        let settled: Vec<(u64, Outcome)> = self
            .table
            .iter()
            .filter_map(|(id, e)| {
                if e.written || e.claim.is_taken() {
                    Some((*id, Outcome::Unconfirmed(Unknown::Disconnected)))
                } else if e.claim.is_withdrawn() {
                    // Its write reached nothing: it will never go out.
                    Some((*id, Outcome::NotDelivered(Undelivered::Disconnected)))
                } else {
                    None
                }
            })
            .collect();
        for (id, outcome) in settled {
            self.resolve_all(id, outcome, out);
        }
    }

    /// Resolves the waiters whose deadline has come.
    pub(crate) fn poll(&mut self, now: Instant, out: &mut Vec<RequestOut>) {
        while let Some(&(deadline, waiter, id)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_first();
            let Some(entry) = self.table.get_mut(&id) else {
                continue;
            };
            entry.waiters.retain(|(w, _)| *w != waiter);
            let outcome = if entry.waiters.is_empty() {
                // The last one waiting: withdraw the frame if the writer has not taken it.
                let outcome = settle(entry, Unknown::Deadline, Undelivered::Deadline);
                self.table.remove(&id);
                outcome
            } else {
                // Others still wait for this frame, which may yet be written.
                Outcome::Unconfirmed(Unknown::Deadline)
            };
            out.push(RequestOut::Resolve(waiter, outcome));
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

/// The outcome of a request that got no answer: unknown if its bytes may have gone out,
/// otherwise not delivered (and then withdrawn, so it never will be).
fn settle(entry: &Entry, unknown: Unknown, undelivered: Undelivered) -> Outcome {
    if entry.written || !entry.claim.withdraw() {
        Outcome::Unconfirmed(unknown)
    } else {
        Outcome::NotDelivered(undelivered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::claim::Take;

    const S: Duration = Duration::from_secs(1);

    /// A submission of request `id` with a 1 s deadline from `t0`, for epoch 1.
    fn sub(t0: Instant, id: u64, fp: u64) -> (Submission, Arc<Claim>) {
        let claim = Arc::new(Claim::default());
        let sub = Submission {
            id,
            fingerprint: fp,
            mode: ConfirmMode::Confirmed,
            deadline: t0 + S,
            epoch: 1,
            claim: claim.clone(),
        };
        (sub, claim)
    }

    fn resolved(out: &[RequestOut]) -> Vec<(u64, Outcome)> {
        out.iter()
            .filter_map(|o| match o {
                RequestOut::Resolve(w, outcome) => Some((w.0, outcome.clone())),
                _ => None,
            })
            .collect()
    }

    fn ok() -> Response {
        Response::Ok {
            retry_after: None,
            hint: None,
        }
    }

    #[test]
    fn confirmed_by_response() {
        let t0 = Instant::now();
        let mut r = Requests::new(10);
        let mut out = Vec::new();
        let (s, claim) = sub(t0, 7, 1);
        r.submit(t0, WaiterId(1), s, Some(1), &mut out);
        assert!(matches!(&out[..], [RequestOut::Accepted(WaiterId(1), c)] if **c == *claim));
        assert_eq!(
            claim.take(),
            Take::Write,
            "accepted: the writer may take it"
        );
        out.clear();
        r.on_response(7, ok(), &mut out);
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
        let (mut s, _claim) = sub(t0, 7, 1);
        s.mode = ConfirmMode::Sent;
        r.submit(t0, WaiterId(1), s, Some(1), &mut out);
        out.clear();
        r.on_written(WaiterId(2), &mut out);
        assert!(out.is_empty(), "another submit's frame");
        r.on_written(WaiterId(1), &mut out);
        assert_eq!(resolved(&out), [(1, Outcome::Sent)]);
    }

    #[test]
    fn disconnect_splits_taken_from_untaken() {
        let t0 = Instant::now();
        let mut r = Requests::new(10);
        let mut out = Vec::new();
        let mut claims = Vec::new();
        for id in 1..=3 {
            let (s, claim) = sub(t0, id, id);
            r.submit(t0, WaiterId(id), s, Some(1), &mut out);
            claims.push(claim);
        }
        assert_eq!(claims[0].take(), Take::Write);
        assert_eq!(claims[1].take(), Take::Write);
        out.clear();
        r.on_link_down(&mut out);
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
        assert_eq!(claims[2].take(), Take::Skip, "withdrawn: never written");
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn dedup_joins_and_mismatch_refuses() {
        let t0 = Instant::now();
        let mut r = Requests::new(10);
        let mut out = Vec::new();
        let (a, _) = sub(t0, 7, 1);
        let (b, joiner) = sub(t0, 7, 1);
        let (c, mismatch) = sub(t0, 7, 2);
        r.submit(t0, WaiterId(1), a, Some(1), &mut out);
        r.submit(t0, WaiterId(2), b, Some(1), &mut out);
        r.submit(t0, WaiterId(3), c, Some(1), &mut out);
        assert_eq!(joiner.take(), Take::Skip, "a joiner sends nothing");
        assert_eq!(mismatch.take(), Take::Skip);
        let woken = out
            .iter()
            .filter(|o| matches!(o, RequestOut::Withdrawn))
            .count();
        assert_eq!(woken, 2, "the writer may be waiting at either frame: woken");
        assert_eq!(resolved(&out), [(3, Outcome::PayloadMismatch)]);
        out.clear();
        let response = Response::Err {
            message: "no funds".into(),
            retry_after: Some(S),
        };
        r.on_response(7, response, &mut out);
        let rejected = Outcome::EndpointRejected {
            message: "no funds".into(),
            retry_after: Some(S),
        };
        assert_eq!(resolved(&out), [(1, rejected.clone()), (2, rejected)]);
        out.clear();
        let (d, _) = sub(t0, 7, 9);
        r.submit(t0, WaiterId(4), d, Some(1), &mut out);
        assert!(
            matches!(&out[..], [RequestOut::Accepted(WaiterId(4), _)]),
            "completed ids can be reused"
        );
    }

    #[test]
    fn joiner_with_earlier_deadline_times_out_alone() {
        let t0 = Instant::now();
        let mut r = Requests::new(10);
        let mut out = Vec::new();
        let (mut a, first) = sub(t0, 7, 1);
        a.deadline = t0 + 10 * S;
        let (b, _) = sub(t0, 7, 1);
        r.submit(t0, WaiterId(1), a, Some(1), &mut out);
        r.submit(t0, WaiterId(2), b, Some(1), &mut out);
        out.clear();
        r.poll(t0 + S, &mut out);
        assert_eq!(
            resolved(&out),
            [(2, Outcome::Unconfirmed(Unknown::Deadline))],
            "the frame may still go out for the first caller"
        );
        assert_eq!(first.take(), Take::Write, "not withdrawn");
        out.clear();
        r.on_response(7, ok(), &mut out);
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
        let (s, claim) = sub(t0, 7, 1);
        r.submit(t0, WaiterId(1), s, Some(1), &mut out);
        out.clear();
        r.poll(t0 + S, &mut out);
        assert_eq!(
            resolved(&out),
            [(1, Outcome::NotDelivered(Undelivered::Deadline))]
        );
        assert_eq!(claim.take(), Take::Skip, "and it never will be");
        out.clear();
        r.on_response(7, ok(), &mut out);
        assert!(
            matches!(&out[..], [RequestOut::Orphan { id: 7, .. }]),
            "late answers are orphans"
        );
    }

    /// Finding 5: the deadline is the caller's, not re-anchored when the coordinator handles
    /// the registration.
    #[test]
    fn request_deadline_is_not_reanchored() {
        let t0 = Instant::now();
        let mut r = Requests::new(10);
        let mut out = Vec::new();
        let (s, claim) = sub(t0, 7, 1);
        // The registration waited in the inbox until its deadline.
        r.submit(t0 + S, WaiterId(1), s, Some(1), &mut out);
        assert_eq!(
            resolved(&out),
            [(1, Outcome::NotDelivered(Undelivered::Deadline))]
        );
        assert_eq!(claim.take(), Take::Skip, "its frame is never written");
        out.clear();
        let (s, _) = sub(t0, 8, 1);
        r.submit(t0 + S / 2, WaiterId(2), s, Some(1), &mut out);
        assert_eq!(r.next_deadline(), Some(t0 + S), "the caller's deadline");
    }

    #[test]
    fn full_table_not_ready_and_lost_session_refuse() {
        let t0 = Instant::now();
        let mut r = Requests::new(1);
        let mut out = Vec::new();
        let (a, _) = sub(t0, 1, 1);
        let (b, full) = sub(t0, 2, 2);
        let (c, _) = sub(t0, 3, 3);
        let (d, _) = sub(t0, 4, 4);
        r.submit(t0, WaiterId(1), a, Some(1), &mut out);
        r.submit(t0, WaiterId(2), b, Some(1), &mut out);
        r.submit(t0, WaiterId(3), c, None, &mut out);
        r.submit(t0, WaiterId(4), d, Some(2), &mut out);
        assert_eq!(
            resolved(&out),
            [
                (2, Outcome::TooManyPending),
                (3, Outcome::NotDelivered(Undelivered::NotConnected)),
                (4, Outcome::NotDelivered(Undelivered::Disconnected)),
            ]
        );
        assert_eq!(full.take(), Take::Skip);
    }
}
