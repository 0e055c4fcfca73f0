//! Delegated requests end to end: every [`Outcome`] produced for real, over loopback sockets,
//! against the simulated Deribit-style venue the examples run (`examples/common/venue.rs`), with
//! the examples' JSON-RPC endpoint (`examples/common/jsonrpc.rs`). Plus a stress test: 8 threads
//! of random deadlines against a venue that confirms, rejects, delays and drops at random.
//!
//! Determinism: outcomes that depend on timing are forced by the venue's knobs, not by sleeps —
//! answers *held* until the test releases them (joins, mismatches, a full table), a venue that
//! *stalls* after an order so the writer blocks on a frame larger than the kernel's buffers (the
//! frames behind it are certainly never written), scripted drops before or after an answer.
//! Where a test checks that something was *not* sent, it first sends a "fence" order and waits
//! for its answer: the venue reads a connection in order, so anything sent before the fence has
//! been logged by then.

#[path = "../examples/common/jsonrpc.rs"]
mod jsonrpc;
mod support;
#[path = "../examples/common/venue.rs"]
mod venue;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use jsonrpc::{JsonRpc, Notification, Notifications, outcome_name, request_text, sample_order};
use serde_json::json;
use support::{next_event, wait_until};
use syncws::{
    Affinity, Backoff, Client, ClientBuilder, ConfirmMode, DEADLINE_GRACE, Data, Dispatch,
    Endpoint, Event, Frame, Outcome, Precheck, Reconnect, Reply, Request, Response, Undelivered,
    Unknown, WaitStrategy,
};
use venue::{Answer, DropWhen, Flaky, Knobs, Venue};

const WAIT: Duration = Duration::from_secs(10);
const TICKER: &str = "ticker.BTC-PERPETUAL.100ms";

type Trader = Client<Notification>;

/// Reconnects after a fixed delay (long enough that a test runs between connections).
struct After(Duration);

impl Reconnect for After {
    fn next_delay(&mut self, _failures: u32) -> Option<Duration> {
        Some(self.0)
    }
}

fn builder(venue: &Venue) -> ClientBuilder {
    Client::builder(&venue.url())
        .dispatch(support::dispatch_under_test())
        .endpoint(JsonRpc::private("tester", "secret"))
        .subscribe(TICKER)
}

/// Connects and waits until the session is ready (authenticated, subscribed).
fn ready(builder: ClientBuilder) -> Trader {
    let client = builder.connect_with(Notifications).expect("connect");
    wait_ready(&client);
    client
}

fn wait_ready(client: &Trader) {
    next_event(client, WAIT, |e| {
        matches!(e, Event::SessionReady { .. }).then_some(())
    });
}

fn order(id: u64) -> Request {
    sample_order(id).request(id)
}

fn confirmed(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Confirmed { .. })
}

/// Orders an id the test has not used and waits for the confirmation: everything the client
/// sent before it has reached the venue's log.
fn fence(client: &Trader, id: u64) {
    let outcome = client.send_and_confirm(order(id).timeout(WAIT));
    assert!(confirmed(&outcome), "fence order {id}: {outcome:?}");
}

fn ids(received: &[venue::Received]) -> Vec<u64> {
    received.iter().filter_map(|r| r.id).collect()
}

#[test]
fn order_confirmed_on_an_auth_gated_session() {
    let venue = Venue::start(Knobs::default()).unwrap();
    let client = ready(builder(&venue));
    let outcome = client.send_and_confirm(order(1));
    assert_eq!(
        outcome,
        Outcome::Confirmed {
            retry_after: None,
            hint: Some("order_id=SIM-1".into())
        }
    );
    let methods: Vec<String> = venue.received().into_iter().map(|r| r.method).collect();
    assert_eq!(methods, ["public/auth", "public/subscribe", "private/buy"]);
    let tick = next_event(&client, WAIT, |e| match e {
        Event::Data { value, .. } => Some(value),
        _ => None,
    });
    assert_eq!(tick.channel, TICKER);
    client.shutdown(Duration::from_secs(1));
}

/// One caller, one order at a time, on an idle connection: the submit is registered and queued
/// on the caller's thread and the response resolved on the reader's, without waking the
/// coordinator thread (`Stats::inline_steps` / `queued_steps` count which path each input took).
#[test]
fn sequential_round_trips_take_the_fast_path() {
    const ORDERS: u64 = 200;
    let venue = Venue::start(Knobs::default()).unwrap();
    let client = ready(builder(&venue).dispatch(Dispatch::Inline));
    let before = client.stats();
    for id in 1..=ORDERS {
        let outcome = client.send_and_confirm(order(id));
        assert!(confirmed(&outcome), "order {id}: {outcome:?}");
    }
    let after = client.stats();
    let inline = after.inline_steps - before.inline_steps;
    let queued = after.queued_steps - before.queued_steps;
    let direct = after.direct_writes - before.direct_writes;
    eprintln!(
        "{ORDERS} round trips: {inline} inputs inline, {queued} via the coordinator thread, \
         {direct} requests written directly"
    );
    // Two inputs per round trip. The first submit arms the earliest deadline and nudges the
    // coordinator thread; until it has looked, inputs take the queue (as they do whenever the
    // coordinator thread is busy), so a loaded machine may push a few through it. Half is a
    // floor that only a broken fast path misses: without it every input is queued.
    assert!(inline >= ORDERS, "{inline} of {} inputs inline", 2 * ORDERS);
    assert!(inline + queued >= 2 * ORDERS, "every input is counted once");
    // The venue's ticker notifications are inbound only: the lanes are empty between orders.
    assert!(
        direct >= ORDERS / 2,
        "{direct} of {ORDERS} written directly"
    );
    client.shutdown(Duration::from_secs(1));
}

/// Actor dispatch, the default: every input goes through the coordinator thread (nothing is
/// stepped on the caller's or the reader's thread), and the coordinator writes each request it
/// registers itself, without waking the writer thread, when nothing is queued ahead of it. Over
/// TLS too: the echo server decodes and answers every frame written that way.
#[test]
fn actor_dispatch_writes_requests_from_the_coordinator_thread() {
    let pki = support::Pki::new("actor path CA");
    for tls in [false, true] {
        let stats = echo_round_trips(&pki, tls, Dispatch::Actor);
        assert_eq!(stats.inline_steps, 0, "tls {tls}: nothing stepped inline");
        // Nothing else is sent, so a request is written directly unless the writer was busy.
        assert!(
            stats.direct_writes >= ECHO_ORDERS / 2,
            "tls {tls}: {} of {ECHO_ORDERS} requests written by the coordinator",
            stats.direct_writes
        );
    }
}

/// Round trips in [`echo_round_trips`].
const ECHO_ORDERS: u64 = 200;

/// Runs [`ECHO_ORDERS`] confirmed round trips one after another against an echo server (over
/// TLS if `tls`) and returns the client's statistics.
fn echo_round_trips(pki: &support::Pki, tls: bool, dispatch: Dispatch) -> syncws::Stats {
    let server = support::echo_server(tls.then(|| pki.server_config(&["localhost"])));
    let client = Client::builder(&server.url("/"))
        .dispatch(dispatch)
        .add_root_certificate(pki.ca_der())
        .endpoint(EchoIds)
        .connect()
        .unwrap();
    for id in 1..=ECHO_ORDERS {
        let request = Request::new(id, id, Frame::text(format!("id {id}")));
        let outcome = client.send_and_confirm(request);
        assert!(confirmed(&outcome), "tls {tls}, request {id}: {outcome:?}");
    }
    let stats = client.stats();
    client.shutdown(Duration::from_secs(1));
    server.join();
    stats
}

/// Texts that carry a request id: an echo server's answer to a request is its response.
struct EchoIds;

impl Endpoint for EchoIds {
    fn subscribe(&mut self, topic: &str) -> Option<Frame> {
        Some(Frame::text(topic))
    }
    fn precheck(&self) -> Option<Precheck> {
        Some(Arc::new(|_| true))
    }
    fn parse_reply(&mut self, msg: Data<'_>) -> Option<Reply> {
        let Data::Text(text) = msg else { return None };
        let response = Response::Ok {
            retry_after: None,
            hint: None,
        };
        Some(Reply::Response {
            id: text.strip_prefix("id ")?.parse().ok()?,
            response,
        })
    }
}

/// The fast path over TLS: requests written directly by the caller are encrypted whole (the
/// echo server, a tungstenite peer, decodes each one and answers it) and the answers are matched
/// on the reader thread, without the coordinator thread.
#[test]
fn round_trips_over_tls_take_the_fast_path() {
    let pki = support::Pki::new("fast path CA");
    let stats = echo_round_trips(&pki, true, Dispatch::Inline);
    assert_eq!(
        stats.messages_in, ECHO_ORDERS,
        "one echo per request, each decoded"
    );
    assert!(
        stats.inline_steps >= ECHO_ORDERS,
        "{} of {} inputs inline",
        stats.inline_steps,
        2 * ECHO_ORDERS
    );
    // Nothing else is sent, so a request is written directly unless the coordinator was busy.
    assert!(
        stats.direct_writes >= ECHO_ORDERS / 2,
        "{} of {ECHO_ORDERS} requests written directly",
        stats.direct_writes
    );
}

/// The endpoint is auth-gated: the subscription goes out only once the (delayed) answer to
/// `public/auth` came, and orders only once the subscription is acknowledged.
#[test]
fn subscriptions_wait_for_the_auth_answer() {
    let auth_delay = Duration::from_millis(300);
    let venue = Venue::start(Knobs {
        auth_delay,
        ..Knobs::default()
    })
    .unwrap();
    let client = builder(&venue).connect_with(Notifications).unwrap();
    let early = client.send_and_confirm(order(1));
    assert_eq!(
        early,
        Outcome::NotDelivered(Undelivered::NotConnected),
        "no orders before the session is ready"
    );
    wait_ready(&client);
    assert!(confirmed(&client.send_and_confirm(order(2))));
    let got = venue.received();
    let methods: Vec<&str> = got.iter().map(|r| r.method.as_str()).collect();
    assert_eq!(methods, ["public/auth", "public/subscribe", "private/sell"]);
    assert_eq!(got[2].id, Some(2));
    let gap = got[1].at.duration_since(got[0].at);
    assert!(
        gap >= auth_delay,
        "subscribed {gap:?} after auth, before its answer"
    );
    client.shutdown(Duration::from_secs(1));
}

#[test]
fn not_delivered_while_disconnected() {
    let venue = Venue::start(Knobs::default()).unwrap();
    let client = ready(builder(&venue).reconnect(After(Duration::from_secs(60))));
    venue.drop_connections();
    next_event(&client, WAIT, |e| {
        matches!(
            e,
            Event::Closed {
                reconnect: Some(_),
                ..
            }
        )
        .then_some(())
    });
    let t0 = Instant::now();
    let outcome = client.send_and_confirm(order(1));
    assert_eq!(outcome, Outcome::NotDelivered(Undelivered::NotConnected));
    assert!(
        t0.elapsed() < Duration::from_millis(100),
        "answered at once"
    );
    assert_eq!(venue.order_count(), 0);
    client.shutdown(Duration::from_secs(1));
}

/// Kernel socket buffer maxima (receive, send) for TCP, from `/proc` (Linux defaults otherwise).
fn tcp_buffer_max() -> (usize, usize) {
    let third = |path: &str, default: usize| {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.split_whitespace().nth(2).and_then(|v| v.parse().ok()))
            .unwrap_or(default)
    };
    (
        third("/proc/sys/net/ipv4/tcp_rmem", 6 << 20),
        third("/proc/sys/net/ipv4/tcp_wmem", 4 << 20),
    )
}

/// The venue stops reading after order 1. A request larger than every kernel buffer between
/// client and venue can then never be written completely, so the writer blocks on it: requests
/// queued behind it are certainly not on the wire. One of them reaches its deadline
/// (`NotDelivered(Deadline)`); the venue then drops the connection: the blocked one may have been
/// partly written (`Unconfirmed`), the other one was not (`NotDelivered(Disconnected)`).
#[test]
fn not_delivered_when_the_lane_is_backed_up() {
    let venue = Venue::start(Knobs {
        stall_after_order: Some(1),
        ..Knobs::default()
    })
    .unwrap();
    let client = ready(builder(&venue));
    assert!(confirmed(&client.send_and_confirm(order(1))));

    let blocked = client.submit(unwritable_request(2, WAIT * 2));
    let t_short = Instant::now();
    let short = client.submit(order(3).timeout(Duration::from_millis(300)));
    let queued = client.submit(order(4).timeout(WAIT * 2));

    assert_eq!(
        short.wait(),
        Outcome::NotDelivered(Undelivered::Deadline),
        "queued behind a write that cannot finish"
    );
    let waited = t_short.elapsed();
    assert!(
        waited >= Duration::from_millis(300)
            && waited < Duration::from_millis(300) + DEADLINE_GRACE,
        "resolved at its deadline, took {waited:?}"
    );

    let t_drop = Instant::now();
    venue.drop_connections();
    assert_eq!(
        queued.wait(),
        Outcome::NotDelivered(Undelivered::Disconnected)
    );
    // Usually the writer is blocked mid-write: unknown. On a loaded machine it may still be
    // masking the 64 MiB frame when the drop comes; then no byte reached the socket and "not
    // delivered" is the true answer (the venue log below confirms it never arrived).
    let big = blocked.wait();
    assert!(
        matches!(
            big,
            Outcome::Unconfirmed(Unknown::Disconnected)
                | Outcome::NotDelivered(Undelivered::Disconnected)
        ),
        "{big:?}"
    );
    assert!(
        t_drop.elapsed() < Duration::from_secs(1),
        "resolved on the drop, not at the deadline: {:?}",
        t_drop.elapsed()
    );
    assert_eq!(ids(&venue.orders()), [1], "only order 1 was ever read");
    client.shutdown(Duration::from_secs(1));
}

/// A request whose text is bigger than every kernel buffer between client and venue: once the
/// venue stops reading, the writer blocks on it for as long as the venue does.
fn unwritable_request(id: u64, timeout: Duration) -> Request {
    let (rmem, wmem) = tcp_buffer_max();
    let big = (2 * (rmem + wmem)).max(64 << 20);
    let params = json!({
        "instrument_name": "BTC-PERPETUAL",
        "amount": 10,
        "label": "x".repeat(big),
    });
    let text = request_text(id, "private/buy", &params);
    Request::new(id, id, Frame::text(text)).timeout(timeout)
}

/// Request frames ride the data lane, and frames whose deadline passed stay in it until the
/// writer skips them. With the writer blocked, four expired requests fill the lane
/// (`data_queue(4)`); the next request has room in the table but not in the lane: it is
/// certainly never written and resolves `NotDelivered(QueueFull)` at once — even though a later
/// request is taken and written once the venue reads again.
#[test]
fn a_request_that_never_fit_in_the_lane_is_not_delivered() {
    let venue = Venue::start(Knobs {
        stall_after_order: Some(1),
        ..Knobs::default()
    })
    .unwrap();
    let client = ready(builder(&venue).max_pending(2).data_queue(4));
    assert!(confirmed(&client.send_and_confirm(order(1))));
    let blocked = client.submit(unwritable_request(2, WAIT * 3));
    for id in 3..=6 {
        assert_eq!(
            client.send_and_confirm(order(id).timeout(Duration::from_millis(200))),
            Outcome::NotDelivered(Undelivered::Deadline),
            "order {id} expires in the lane"
        );
    }
    // Room in the table (1 of 2), none in the lane (4 expired frames of 4).
    let t0 = Instant::now();
    let never_queued = client.send_and_confirm(order(7).timeout(Duration::from_secs(5)));
    assert_eq!(never_queued, Outcome::NotDelivered(Undelivered::QueueFull));
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "answered at once, not at the deadline"
    );
    venue.resume();
    let big = blocked.wait();
    assert!(
        confirmed(&big),
        "the big order is read and answered: {big:?}"
    );
    fence(&client, 8);
    assert_eq!(
        ids(&venue.orders()),
        [1, 2, 8],
        "order 7 never reached the venue"
    );
    client.shutdown(Duration::from_secs(1));
}

/// `Undelivered::NotConnected` is documented as "No session was ready (between connections, or
/// closed)"; `ShutDown` as "The client is shutting down".
#[test]
fn closed_client_without_reconnect_is_not_connected() {
    let venue = Venue::start(Knobs::default()).unwrap();
    let client = ready(builder(&venue));
    venue.drop_connections();
    next_event(&client, WAIT, |e| {
        matches!(
            e,
            Event::Closed {
                reconnect: None,
                ..
            }
        )
        .then_some(())
    });
    assert_eq!(
        client.send_and_confirm(order(1)),
        Outcome::NotDelivered(Undelivered::NotConnected)
    );
    client.shutdown(Duration::from_secs(1));
}

#[test]
fn unconfirmed_at_once_when_the_venue_drops_after_the_write() {
    let venue = Venue::start(Knobs {
        drop_at_order: Some((1, DropWhen::BeforeAnswer)),
        ..Knobs::default()
    })
    .unwrap();
    let client = ready(builder(&venue));
    let t0 = Instant::now();
    let outcome = client.send_and_confirm(order(1).timeout(Duration::from_secs(5)));
    let resolved = Instant::now();
    assert_eq!(outcome, Outcome::Unconfirmed(Unknown::Disconnected));
    let dropped = *venue.drops().last().expect("the venue dropped");
    let after_drop = resolved.saturating_duration_since(dropped);
    println!(
        "outcome {:?} after the submit, {after_drop:?} after the drop",
        t0.elapsed()
    );
    assert!(after_drop < Duration::from_secs(1), "{after_drop:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "well before the 5 s deadline"
    );
    let orders = venue.orders();
    assert_eq!(ids(&orders), [1]);
    assert_eq!(orders[0].answer, Answer::Dropped);
    client.shutdown(Duration::from_secs(1));
}

/// Finding 10: when a connection drops, its requests settle before its `Closed` event is
/// published. Here the application does not read its events and the channel is full (ticker
/// notifications, dropped past the first): the `Closed` event must wait for room, the caller
/// must not.
#[test]
fn requests_settle_before_closed_is_published() {
    let venue = Venue::start(Knobs {
        drop_at_order: Some((1, DropWhen::BeforeAnswer)),
        ..Knobs::default()
    })
    .unwrap();
    let client = ready(
        builder(&venue)
            .event_queue(1)
            .overflow(syncws::Overflow::DropNewest),
    );
    support::wait_until("a full event channel", WAIT, || {
        client.events().is_full().then_some(())
    });
    let t0 = Instant::now();
    let outcome = client.send_and_confirm(order(1).timeout(Duration::from_secs(5)));
    assert_eq!(outcome, Outcome::Unconfirmed(Unknown::Disconnected));
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "answered at the drop, not at the deadline: {:?}",
        t0.elapsed()
    );
    assert!(client.events().is_full(), "the Closed event still waits");
    next_event(&client, WAIT, |e| {
        matches!(e, Event::Closed { .. }).then_some(())
    });
    client.shutdown(Duration::from_secs(1));
}

#[test]
fn answered_then_dropped_is_confirmed() {
    let venue = Venue::start(Knobs {
        drop_at_order: Some((1, DropWhen::AfterAnswer)),
        ..Knobs::default()
    })
    .unwrap();
    let client = ready(builder(&venue));
    assert!(confirmed(&client.send_and_confirm(order(1))));
    next_event(&client, WAIT, |e| {
        matches!(e, Event::Closed { .. }).then_some(())
    });
    client.shutdown(Duration::from_secs(1));
}

#[test]
fn endpoint_rejected_with_retry_after() {
    let venue = Venue::start(Knobs {
        reject_every: Some(2),
        retry_after: Duration::from_millis(750),
        ..Knobs::default()
    })
    .unwrap();
    let client = ready(builder(&venue));
    assert!(confirmed(&client.send_and_confirm(order(1))));
    assert_eq!(
        client.send_and_confirm(order(2)),
        Outcome::EndpointRejected {
            message: "too_many_requests (10028)".into(),
            retry_after: Some(Duration::from_millis(750)),
        }
    );
    client.shutdown(Duration::from_secs(1));
}

#[test]
fn deadline_passes_then_the_late_answer_is_an_orphan() {
    let venue = Venue::start(Knobs {
        delay: Duration::from_millis(400),
        ..Knobs::default()
    })
    .unwrap();
    let client = ready(builder(&venue));
    let t0 = Instant::now();
    let outcome = client.send_and_confirm(order(1).timeout(Duration::from_millis(100)));
    let took = t0.elapsed();
    assert_eq!(outcome, Outcome::Unconfirmed(Unknown::Deadline));
    assert!(
        took >= Duration::from_millis(100) && took < Duration::from_millis(100) + DEADLINE_GRACE,
        "{took:?}"
    );
    let (id, response) = next_event(&client, WAIT, |e| match e {
        Event::Orphan { id, response, .. } => Some((id, *response)),
        _ => None,
    });
    assert_eq!(id, 1);
    assert_eq!(
        response,
        Response::Ok {
            retry_after: None,
            hint: Some("order_id=SIM-1".into())
        }
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(400),
        "came with the delay"
    );
    client.shutdown(Duration::from_secs(1));
}

/// Two threads submit the same id and fingerprint at once while the venue holds its answers:
/// one frame on the wire, one answer, the same outcome for both.
#[test]
fn duplicate_submits_join_one_frame() {
    let venue = Venue::start(Knobs {
        hold: true,
        ..Knobs::default()
    })
    .unwrap();
    let client = ready(builder(&venue));
    let start = Barrier::new(2);
    let (submitted_tx, submitted_rx) = mpsc::channel();
    let outcomes = thread::scope(|s| {
        let callers: Vec<_> = (0..2)
            .map(|_| {
                let (client, start, submitted) = (&client, &start, submitted_tx.clone());
                s.spawn(move || {
                    start.wait();
                    let ticket = client.submit(order(7));
                    submitted.send(()).unwrap();
                    ticket.wait()
                })
            })
            .collect();
        for _ in 0..2 {
            submitted_rx.recv_timeout(WAIT).unwrap();
        }
        // Both submits are in the coordinator's queue before any answer can be: release.
        wait_until("the order at the venue", WAIT, || {
            (venue.order_count() == 1).then_some(())
        });
        venue.release();
        callers
            .into_iter()
            .map(|c| c.join().unwrap())
            .collect::<Vec<_>>()
    });
    assert!(confirmed(&outcomes[0]), "{outcomes:?}");
    assert_eq!(outcomes[0], outcomes[1]);
    venue.set_knobs(|k| k.hold = false);
    fence(&client, 8);
    assert_eq!(ids(&venue.orders()), [7, 8], "exactly one frame for id 7");
    client.shutdown(Duration::from_secs(1));
}

#[test]
fn same_id_with_another_payload_is_a_mismatch() {
    let venue = Venue::start(Knobs {
        hold: true,
        ..Knobs::default()
    })
    .unwrap();
    let client = ready(builder(&venue));
    let first = client.submit(order(7));
    let other = sample_order(8).request(7); // same id, another order
    let t0 = Instant::now();
    assert_eq!(client.send_and_confirm(other), Outcome::PayloadMismatch);
    assert!(t0.elapsed() < Duration::from_secs(1), "refused at once");
    wait_until("the order at the venue", WAIT, || {
        (venue.order_count() == 1).then_some(())
    });
    venue.release();
    assert!(confirmed(&first.wait()));
    venue.set_knobs(|k| k.hold = false);
    fence(&client, 9);
    let orders = venue.orders();
    assert_eq!(ids(&orders), [7, 9]);
    let (_, params) = sample_order(7).method_params();
    assert_eq!(
        orders[0].params, params,
        "the first payload, not the second"
    );
    client.shutdown(Duration::from_secs(1));
}

#[test]
fn full_table_is_too_many_pending() {
    let venue = Venue::start(Knobs {
        hold: true,
        ..Knobs::default()
    })
    .unwrap();
    let client = ready(builder(&venue).max_pending(2));
    let a = client.submit(order(1));
    let b = client.submit(order(2));
    let t0 = Instant::now();
    assert_eq!(client.send_and_confirm(order(3)), Outcome::TooManyPending);
    assert!(t0.elapsed() < Duration::from_secs(1), "refused at once");
    wait_until("both orders at the venue", WAIT, || {
        (venue.order_count() == 2).then_some(())
    });
    venue.release();
    assert!(confirmed(&a.wait()));
    assert!(confirmed(&b.wait()));
    venue.set_knobs(|k| k.hold = false);
    fence(&client, 4); // the table has room again
    assert_eq!(ids(&venue.orders()), [1, 2, 4], "order 3 was never sent");
    client.shutdown(Duration::from_secs(1));
}

/// Mode `Sent`: done once written. The venue's answer still comes, after the request was
/// resolved, so it is reported as an orphan.
#[test]
fn sent_mode_resolves_once_written() {
    let venue = Venue::start(Knobs::default()).unwrap();
    let client = ready(builder(&venue));
    let outcome = client.send_and_confirm(order(1).mode(ConfirmMode::Sent));
    assert_eq!(outcome, Outcome::Sent);
    let id = next_event(&client, WAIT, |e| match e {
        Event::Orphan { id, .. } => Some(id),
        _ => None,
    });
    assert_eq!(id, 1);
    assert_eq!(ids(&venue.orders()), [1]);
    client.shutdown(Duration::from_secs(1));
}

/// SplitMix64 for the callers' random deadlines.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

struct Call {
    id: u64,
    timeout: Duration,
    elapsed: Duration,
    outcome: Outcome,
}

/// 8 threads × 5,000 orders, deadlines uniform in 20–500 ms, against a venue that rejects 5%,
/// delays 1% (up to 600 ms), and drops the connection before or after answering 0.1% each;
/// the client reconnects with backoff. Checks:
///
/// - every call returned one outcome by its deadline + `DEADLINE_GRACE` (worst lateness printed);
/// - every order the venue received maps to one call (known id, never twice);
/// - `Confirmed` / `EndpointRejected` only for orders the venue received and answered so;
///   `NotDelivered` only for orders it never received; orphans only for `Unconfirmed` calls;
/// - afterwards the pending table is empty: `max_pending` orders held at once all confirm.
#[test]
fn stress_every_call_gets_one_true_outcome() {
    const THREADS: u64 = 8;
    const PER_THREAD: u64 = 5_000;
    const MAX_PENDING: usize = 64;
    let started = Instant::now();
    let venue = Venue::start(Knobs {
        flaky: Some(Flaky {
            seed: 7,
            reject: 0.05,
            delay: 0.01,
            max_delay: Duration::from_millis(600),
            drop_before: 0.001,
            drop_after: 0.001,
        }),
        ..Knobs::default()
    })
    .unwrap();
    let client = ready(
        builder(&venue)
            .name("stress")
            .max_pending(MAX_PENDING)
            .reconnect(Backoff::new(Duration::from_millis(2), Duration::from_millis(50)).seed(3)),
    );

    // Drain events on their own thread: ticks, lifecycle, orphans.
    let orphans = Arc::new(Mutex::new(Vec::new()));
    let done = Arc::new(AtomicBool::new(false));
    let drain = {
        let events = client.events().clone();
        let (orphans, done) = (orphans.clone(), done.clone());
        thread::spawn(move || {
            let mut closes = 0u64;
            while !done.load(Ordering::SeqCst) {
                match events.recv_timeout(Duration::from_millis(50)) {
                    Ok(Event::Orphan { id, .. }) => orphans.lock().unwrap().push(id),
                    Ok(Event::Closed { .. }) => closes += 1,
                    _ => {}
                }
            }
            closes
        })
    };

    let calls: Vec<Call> = thread::scope(|s| {
        let callers: Vec<_> = (0..THREADS)
            .map(|t| {
                let client = &client;
                s.spawn(move || {
                    let mut rng = Rng(1000 + t);
                    let mut calls = Vec::with_capacity(PER_THREAD as usize);
                    for i in 0..PER_THREAD {
                        let id = (t + 1) * 1_000_000 + i;
                        let timeout = Duration::from_millis(20 + rng.next() % 481);
                        let t0 = Instant::now();
                        let outcome = client.send_and_confirm(order(id).timeout(timeout));
                        let elapsed = t0.elapsed();
                        let reconnecting =
                            outcome == Outcome::NotDelivered(Undelivered::NotConnected);
                        calls.push(Call {
                            id,
                            timeout,
                            elapsed,
                            outcome,
                        });
                        if reconnecting {
                            let until = Instant::now() + WAIT;
                            while !client.is_ready() {
                                assert!(Instant::now() < until, "no reconnect within {WAIT:?}");
                                thread::sleep(Duration::from_millis(1));
                            }
                        }
                    }
                    calls
                })
            })
            .collect();
        callers
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect()
    });
    let storm = started.elapsed();

    // Every call: one outcome, by its deadline plus the grace.
    assert_eq!(calls.len() as u64, THREADS * PER_THREAD);
    let worst = calls
        .iter()
        .map(|c| c.elapsed.saturating_sub(c.timeout))
        .max()
        .unwrap();
    let late: Vec<&Call> = calls
        .iter()
        .filter(|c| c.elapsed > c.timeout + DEADLINE_GRACE)
        .collect();
    let mut counts: HashMap<String, u64> = HashMap::new();
    for c in &calls {
        let key = match &c.outcome {
            Outcome::NotDelivered(why) => format!("NotDelivered({why:?})"),
            Outcome::Unconfirmed(why) => format!("Unconfirmed({why:?})"),
            other => outcome_name(other).to_string(),
        };
        *counts.entry(key).or_default() += 1;
    }
    let mut counts: Vec<_> = counts.into_iter().collect();
    counts.sort();
    println!(
        "stress: {} calls in {storm:?}; worst lateness past the deadline {worst:?} \
         (tolerance {DEADLINE_GRACE:?}); outcomes {counts:?}",
        calls.len()
    );
    assert!(
        late.is_empty(),
        "{} calls answered later than deadline + {DEADLINE_GRACE:?}, e.g. id {} after {:?} \
         (timeout {:?})",
        late.len(),
        late[0].id,
        late[0].elapsed,
        late[0].timeout
    );

    // Every frame the venue received maps to one call.
    let by_id: HashMap<u64, &Call> = calls.iter().map(|c| (c.id, c)).collect();
    let received = venue.orders();
    let mut seen: HashMap<u64, &venue::Received> = HashMap::new();
    for r in &received {
        let id = r.id.expect("orders carry an id");
        assert!(by_id.contains_key(&id), "the venue got id {id} nobody sent");
        assert!(seen.insert(id, r).is_none(), "id {id} received twice");
        assert_ne!(
            r.answer,
            Answer::Unauthorized,
            "order {id} sent before authentication"
        );
    }
    // Each outcome is true to what the venue saw.
    for c in &calls {
        let got = seen.get(&c.id).map(|r| &r.answer);
        match &c.outcome {
            Outcome::Confirmed { .. } => assert_eq!(
                got,
                Some(&Answer::Accepted),
                "order {} confirmed but the venue {got:?}",
                c.id
            ),
            Outcome::EndpointRejected { retry_after, .. } => {
                assert_eq!(got, Some(&Answer::RateLimited), "order {}", c.id);
                assert_eq!(*retry_after, Some(Duration::from_millis(500)));
            }
            Outcome::NotDelivered(_) => assert_eq!(
                got, None,
                "order {} not delivered but the venue received it",
                c.id
            ),
            Outcome::Unconfirmed(_) => {}
            other => panic!("order {}: unexpected {other:?}", c.id),
        }
    }

    // The pending table is empty: with the faults off and answers held, `MAX_PENDING` orders
    // fit at once, and all confirm when released.
    venue.set_knobs(|k| {
        k.flaky = None;
        k.hold = true;
    });
    wait_until("ready after the storm", WAIT, || {
        client.is_ready().then_some(())
    });
    let before = venue.order_count();
    let tickets: Vec<_> = (0..MAX_PENDING as u64)
        .map(|j| client.submit(order(9_000_000 + j).timeout(WAIT)))
        .collect();
    wait_until("the final orders at the venue", WAIT, || {
        (venue.order_count() == before + MAX_PENDING as u64).then_some(())
    });
    venue.release();
    for t in tickets {
        let id = t.id();
        let outcome = t.wait();
        assert!(confirmed(&outcome), "final order {id}: {outcome:?}");
    }

    // Late answers only ever belong to calls whose outcome was unknown.
    done.store(true, Ordering::SeqCst);
    let closes = drain.join().unwrap();
    let orphans = orphans.lock().unwrap().clone();
    for id in &orphans {
        let c = by_id.get(id).expect("orphan for an id nobody sent");
        assert!(
            matches!(c.outcome, Outcome::Unconfirmed(_)),
            "orphan for order {id} whose outcome was {:?}",
            c.outcome
        );
    }
    println!(
        "stress: venue received {} orders over {} connections ({closes} closes seen); \
         {} orphans; total {:?}",
        seen.len(),
        venue.connections(),
        orphans.len(),
        started.elapsed()
    );
    client.shutdown(Duration::from_secs(1));
}

/// The trader example binary (`target/<profile>/examples/trader`), built if needed.
fn trader_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binary lives in <target>/<profile>/deps");
    let bin = profile_dir
        .join("examples")
        .join(format!("trader{}", std::env::consts::EXE_SUFFIX));
    if !bin.is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let ok = Command::new(cargo)
            .args(["build", "--example", "trader"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "could not build the trader example");
    }
    bin
}

/// `trader` against its in-process simulated venue: one `order <id> <outcome>` line per order,
/// exit 0.
#[test]
fn trader_example_prints_one_line_per_order() {
    let out = Command::new(trader_bin())
        .args(["--orders", "8", "--deadline-ms", "2000"])
        .output()
        .expect("run trader");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 8, "{stdout}");
    for (i, line) in lines.iter().enumerate() {
        let expected = if (i + 1) % 4 == 0 {
            "EndpointRejected"
        } else {
            "Confirmed"
        };
        assert_eq!(*line, format!("order {} {expected}", i + 1));
    }
}

/// Per-role pinning and the busy-poll wait strategies: every thread runs on the core it was
/// given, and requests still get their true outcome with each strategy.
#[test]
fn pinned_threads_and_spinning_waits_keep_outcomes_true() {
    let venue = Venue::start(Knobs::default()).unwrap();
    let strategies = [
        WaitStrategy::Spin,
        WaitStrategy::SpinThenBlock {
            budget: Duration::from_micros(50),
        },
        WaitStrategy::Block,
    ];
    for (i, wait) in strategies.into_iter().enumerate() {
        let affinity = Affinity {
            reader: Some(0),
            writer: Some(0),
            coordinator: Some(0),
        };
        let name = format!("pin{i}");
        let client = ready(
            builder(&venue)
                .name(name.clone())
                .affinity(affinity)
                .wait_strategy(wait),
        );
        for role in ["reader", "writer", "coord"] {
            let thread = format!("{name}-{role}");
            let allowed = support::thread_names_with_status()
                .into_iter()
                .find(|(n, _)| *n == thread)
                .map(|(_, status)| status)
                .unwrap_or_else(|| panic!("no thread {thread}"));
            let cpus = allowed
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .unwrap();
            assert_eq!(cpus.trim(), "0", "{thread} pinned to core 0");
        }
        for id in 1..=20 {
            let id = 1000 * (i as u64 + 1) + id;
            assert!(confirmed(&client.send_and_confirm(order(id))), "{wait:?}");
        }
        client.shutdown(Duration::from_secs(1));
    }
}
