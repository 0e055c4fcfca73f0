//! Session restore: authentication, then the desired subscriptions, replayed exactly once on
//! every connection. Sans-IO; owned by the coordinator.
//!
//! The desired set is the truth: `subscribe`/`unsubscribe` change it whether connected or not,
//! and each new connection replays the whole set once — after [`Reply::AuthOk`] when the
//! endpoint is auth-gated, at once otherwise. Acknowledgements (when the endpoint can recognise
//! them) have a deadline; a missing one fails the connection, a rejection removes the topic from
//! the desired set and is reported, never retried on its own.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::client::endpoint::{Cause, Endpoint, Reply};
use crate::deadline;
use crate::frame::Frame;

/// What the session asks the coordinator to do.
#[derive(Debug)]
pub(crate) enum SessionOut {
    /// Send this frame ahead of user data.
    Send(Frame),
    /// Authentication done and every subscription acknowledged: the session is ready.
    Ready,
    /// The venue refused this subscription (or the desired set is full).
    Rejected { topic: String, reason: String },
    /// The session cannot go on: close the connection for this cause.
    Fail(Cause),
}

#[derive(Debug)]
enum Auth {
    Waiting(Instant),
    Done,
}

/// Per-connection progress.
#[derive(Debug)]
struct Conn {
    auth: Auth,
    /// Subscriptions sent on this connection and not yet acknowledged, with their deadline.
    pending: BTreeMap<String, Instant>,
    ready: bool,
    /// Topics sent on this connection (each exactly once).
    sent: BTreeSet<String>,
}

#[derive(Debug)]
pub(crate) struct Session {
    desired: BTreeSet<String>,
    max_topics: usize,
    ack_timeout: Duration,
    /// Whether acknowledgements can be recognised at all (the endpoint has a precheck).
    acks: bool,
    conn: Option<Conn>,
}

impl Session {
    pub(crate) fn new(ack_timeout: Duration, max_topics: usize, acks: bool) -> Self {
        Session {
            desired: BTreeSet::new(),
            max_topics,
            ack_timeout,
            acks,
            conn: None,
        }
    }

    /// A session for a replacement connection (make-before-break): the same desired set, no
    /// connection yet. Changes to the set are applied to both until the switch.
    pub(crate) fn replacement(&self) -> Session {
        Session {
            desired: self.desired.clone(),
            max_topics: self.max_topics,
            ack_timeout: self.ack_timeout,
            acks: self.acks,
            conn: None,
        }
    }

    /// A connection opened: send the endpoint's opening frames, then replay unless gated.
    pub(crate) fn on_open<E: Endpoint + ?Sized>(
        &mut self,
        now: Instant,
        epoch: u64,
        endpoint: &mut E,
        out: &mut Vec<SessionOut>,
    ) {
        for frame in endpoint.on_open(epoch) {
            out.push(SessionOut::Send(frame));
        }
        let gated = endpoint.auth_gated() && self.acks;
        let auth = if gated {
            Auth::Waiting(deadline::after(now, self.ack_timeout))
        } else {
            Auth::Done
        };
        self.conn = Some(Conn {
            auth,
            pending: BTreeMap::new(),
            ready: false,
            sent: BTreeSet::new(),
        });
        if !gated {
            self.replay(now, endpoint, out);
        }
    }

    /// The connection ended.
    pub(crate) fn on_close(&mut self) {
        self.conn = None;
    }

    fn replay<E: Endpoint + ?Sized>(
        &mut self,
        now: Instant,
        endpoint: &mut E,
        out: &mut Vec<SessionOut>,
    ) {
        let topics: Vec<String> = self.desired.iter().cloned().collect();
        for topic in topics {
            self.send_subscribe(now, topic, endpoint, out);
        }
        self.check_ready(out);
    }

    fn send_subscribe<E: Endpoint + ?Sized>(
        &mut self,
        now: Instant,
        topic: String,
        endpoint: &mut E,
        out: &mut Vec<SessionOut>,
    ) {
        let Some(conn) = &mut self.conn else { return };
        if conn.sent.contains(&topic) {
            return;
        }
        let Some(frame) = endpoint.subscribe(&topic) else {
            // An endpoint that does not subscribe: nothing to send, now or on any connection.
            self.desired.remove(&topic);
            let reason = "the endpoint does not subscribe (Endpoint::subscribe)".to_string();
            out.push(SessionOut::Rejected { topic, reason });
            return;
        };
        out.push(SessionOut::Send(frame));
        if self.acks {
            conn.pending
                .insert(topic.clone(), deadline::after(now, self.ack_timeout));
        }
        conn.sent.insert(topic);
    }

    fn check_ready(&mut self, out: &mut Vec<SessionOut>) {
        if let Some(conn) = &mut self.conn
            && !conn.ready
            && matches!(conn.auth, Auth::Done)
            && conn.pending.is_empty()
        {
            conn.ready = true;
            out.push(SessionOut::Ready);
        }
    }

    fn auth_done(&self) -> bool {
        self.conn
            .as_ref()
            .is_some_and(|c| matches!(c.auth, Auth::Done))
    }

    /// Adds `topic` to the desired set; subscribes now if the session is past authentication.
    pub(crate) fn subscribe<E: Endpoint + ?Sized>(
        &mut self,
        now: Instant,
        topic: String,
        endpoint: &mut E,
        out: &mut Vec<SessionOut>,
    ) {
        if self.desired.contains(&topic) {
            return;
        }
        if self.desired.len() >= self.max_topics {
            let reason = format!("subscription limit of {} reached", self.max_topics);
            out.push(SessionOut::Rejected { topic, reason });
            return;
        }
        self.desired.insert(topic.clone());
        if self.auth_done() {
            self.send_subscribe(now, topic, endpoint, out);
        }
    }

    /// Removes `topic` from the desired set; unsubscribes now if it was sent on this connection.
    pub(crate) fn unsubscribe<E: Endpoint + ?Sized>(
        &mut self,
        topic: &str,
        endpoint: &mut E,
        out: &mut Vec<SessionOut>,
    ) {
        if !self.desired.remove(topic) {
            return;
        }
        if let Some(conn) = &mut self.conn {
            conn.pending.remove(topic);
            if conn.sent.remove(topic)
                && let Some(frame) = endpoint.unsubscribe(topic)
            {
                out.push(SessionOut::Send(frame));
            }
        }
        self.check_ready(out);
    }

    /// A reply recognised by the endpoint.
    pub(crate) fn on_reply<E: Endpoint + ?Sized>(
        &mut self,
        now: Instant,
        reply: Reply,
        endpoint: &mut E,
        out: &mut Vec<SessionOut>,
    ) {
        let Some(conn) = &mut self.conn else { return };
        match reply {
            Reply::AuthOk => {
                if matches!(conn.auth, Auth::Waiting(_)) {
                    conn.auth = Auth::Done;
                    self.replay(now, endpoint, out);
                }
            }
            Reply::AuthFailed(msg) => out.push(SessionOut::Fail(Cause::AuthFailed(msg))),
            Reply::Subscribed(topic) => {
                conn.pending.remove(&topic);
                self.check_ready(out);
            }
            Reply::SubscribeRejected { topic, reason } => {
                conn.pending.remove(&topic);
                conn.sent.remove(&topic);
                if self.desired.remove(&topic) {
                    out.push(SessionOut::Rejected { topic, reason });
                }
                self.check_ready(out);
            }
            Reply::AppPong(_) | Reply::Response { .. } => {}
        }
    }

    /// When `poll` must run next: the earliest acknowledgement deadline.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let conn = self.conn.as_ref()?;
        let auth = match conn.auth {
            Auth::Waiting(d) => Some(d),
            Auth::Done => None,
        };
        auth.into_iter().chain(conn.pending.values().copied()).min()
    }

    /// Fails the session if an acknowledgement is overdue.
    pub(crate) fn poll(&mut self, now: Instant, out: &mut Vec<SessionOut>) {
        let Some(conn) = &self.conn else { return };
        if let Auth::Waiting(deadline) = conn.auth
            && now >= deadline
        {
            out.push(SessionOut::Fail(Cause::AckTimeout(None)));
            return;
        }
        if let Some((topic, _)) = conn.pending.iter().find(|(_, d)| now >= **d) {
            out.push(SessionOut::Fail(Cause::AckTimeout(Some(topic.clone()))));
        }
    }

    /// The desired subscriptions, in replay order.
    #[cfg(test)]
    pub(crate) fn desired(&self) -> impl Iterator<Item = &String> {
        self.desired.iter()
    }

    /// Number of acknowledgements awaited on this connection.
    #[cfg(test)]
    pub(crate) fn pending(&self) -> usize {
        self.conn.as_ref().map_or(0, |c| c.pending.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Data;

    struct Gated;
    impl Endpoint for Gated {
        fn on_open(&mut self, epoch: u64) -> Vec<Frame> {
            vec![Frame::text(format!("auth {epoch}"))]
        }
        fn auth_gated(&self) -> bool {
            true
        }
        fn subscribe(&mut self, topic: &str) -> Option<Frame> {
            Some(Frame::text(format!("sub {topic}")))
        }
        fn unsubscribe(&mut self, topic: &str) -> Option<Frame> {
            Some(Frame::text(format!("unsub {topic}")))
        }
        fn parse_reply(&mut self, _: Data<'_>) -> Option<Reply> {
            None
        }
    }

    /// Subscribes with `sub <topic>`; no authentication.
    struct Open;
    impl Endpoint for Open {
        fn subscribe(&mut self, topic: &str) -> Option<Frame> {
            Some(Frame::text(format!("sub {topic}")))
        }
    }

    fn sent(out: &[SessionOut]) -> Vec<String> {
        out.iter()
            .filter_map(|o| match o {
                SessionOut::Send(Frame::Text(t)) => Some(t.to_string()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn gated_session_replays_after_auth_exactly_once() {
        let t0 = Instant::now();
        let mut s = Session::new(Duration::from_secs(5), 10, true);
        let mut e = Gated;
        let mut out = Vec::new();
        s.subscribe(t0, "b".into(), &mut e, &mut out);
        s.subscribe(t0, "a".into(), &mut e, &mut out);
        assert!(out.is_empty(), "disconnected: desired set only");
        s.on_open(t0, 1, &mut e, &mut out);
        assert_eq!(sent(&out), ["auth 1"], "nothing before auth");
        out.clear();
        s.on_reply(t0, Reply::AuthOk, &mut e, &mut out);
        assert_eq!(sent(&out), ["sub a", "sub b"]);
        out.clear();
        s.on_reply(t0, Reply::AuthOk, &mut e, &mut out);
        s.subscribe(t0, "a".into(), &mut e, &mut out);
        assert!(out.is_empty(), "no second replay");
        s.on_reply(t0, Reply::Subscribed("a".into()), &mut e, &mut out);
        assert!(out.is_empty());
        s.on_reply(t0, Reply::Subscribed("b".into()), &mut e, &mut out);
        assert!(matches!(out[..], [SessionOut::Ready]));
    }

    #[test]
    fn rejection_is_reported_and_dropped_from_the_desired_set() {
        let t0 = Instant::now();
        let mut s = Session::new(Duration::from_secs(5), 10, true);
        let mut e = Open;
        let mut out = Vec::new();
        s.on_open(t0, 1, &mut e, &mut out);
        s.subscribe(t0, "x".into(), &mut e, &mut out);
        out.clear();
        let reply = Reply::SubscribeRejected {
            topic: "x".into(),
            reason: "no such".into(),
        };
        s.on_reply(t0, reply, &mut e, &mut out);
        // Ready was already reported at open (nothing to wait for then); only the refusal now.
        assert!(matches!(&out[..], [SessionOut::Rejected { topic, .. }] if topic == "x"));
        assert_eq!(s.desired().count(), 0);
        s.on_close();
        s.on_open(t0, 2, &mut e, &mut out);
        assert!(sent(&out).is_empty(), "rejected topics are not retried");
    }

    /// Issue 11: an endpoint that does not subscribe (the default) rejects a topic at once;
    /// nothing is sent, now or on a later connection.
    #[test]
    fn a_topic_for_an_endpoint_that_does_not_subscribe_is_rejected_unsent() {
        let t0 = Instant::now();
        let mut s = Session::new(Duration::from_secs(5), 10, true);
        let mut e = crate::client::endpoint::NoSession;
        let mut out = Vec::new();
        s.on_open(t0, 1, &mut e, &mut out);
        out.clear();
        s.subscribe(t0, "x".into(), &mut e, &mut out);
        assert!(matches!(&out[..], [SessionOut::Rejected { topic, .. }] if topic == "x"));
        assert_eq!(s.desired().count(), 0);
        s.on_close();
        out.clear();
        s.on_open(t0, 2, &mut e, &mut out);
        assert!(sent(&out).is_empty());
    }

    #[test]
    fn missing_ack_fails_at_the_deadline() {
        let t0 = Instant::now();
        let mut s = Session::new(Duration::from_secs(5), 10, true);
        let mut e = Open;
        let mut out = Vec::new();
        s.subscribe(t0, "x".into(), &mut e, &mut out);
        s.on_open(t0, 1, &mut e, &mut out);
        assert_eq!(s.next_deadline(), Some(t0 + Duration::from_secs(5)));
        out.clear();
        s.poll(t0 + Duration::from_secs(5), &mut out);
        assert!(matches!(&out[..], [SessionOut::Fail(Cause::AckTimeout(Some(t)))] if t == "x"));
    }

    #[test]
    fn the_desired_set_is_bounded() {
        let t0 = Instant::now();
        let mut s = Session::new(Duration::from_secs(5), 2, false);
        let mut e = crate::client::endpoint::NoSession;
        let mut out = Vec::new();
        for t in ["a", "b", "c"] {
            s.subscribe(t0, t.into(), &mut e, &mut out);
        }
        assert!(matches!(&out[..], [SessionOut::Rejected { topic, .. }] if topic == "c"));
    }
}
