//! Hubs on several nodes sharing one real `redis-server` (started by each test on a free port,
//! in a temporary directory, killed at the end): fan-out across nodes, Redis killed and
//! restarted with and without persistence, a node killed, a stalled PUB/SUB link, a paused
//! Redis. No client silently misses a publication: each gets it once, in order, or is told the
//! stream was reset.
//!
//! Needs the `redis` feature and `redis-server` on the PATH (or `SYNCWS_REDIS_SERVER`). Without
//! the binary the tests are reported as ignored, with the reason, unless
//! `SYNCWS_REQUIRE_PEERS=1` (CI), where they fail. Built without the feature, they are ignored
//! (CI runs `cargo test --features redis --test hub_redis`).

mod support;

fn main() {
    let args = libtest_mimic::Arguments::from_args();
    #[cfg(feature = "redis")]
    let trials = real::trials();
    #[cfg(not(feature = "redis"))]
    let trials = ["redis_tests"]
        .into_iter()
        .map(|name| libtest_mimic::Trial::test(name, || Ok(())).with_ignored_flag(true))
        .collect::<Vec<_>>();
    #[cfg(not(feature = "redis"))]
    eprintln!(
        "ignored: built without the `redis` feature (cargo test --features redis --test hub_redis)"
    );
    libtest_mimic::run(&args, trials).exit();
}

#[cfg(feature = "redis")]
mod real {
    use std::net::TcpStream;
    use std::process::Command;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use syncws::hub::redis::{RedisBroker, RedisConfig};
    use syncws::hub::{Hub, HubConfig};

    use crate::support::proxy::Proxy;
    use crate::support::redis::{Redis, RoomApp, redis_status};
    use crate::support::{self, wait_until};

    const WAIT: Duration = Duration::from_secs(20);

    pub fn trials() -> Vec<libtest_mimic::Trial> {
        let status = redis_status();
        let ignore = status.is_err() && !support::peers_required();
        if let (true, Err(why)) = (ignore, &status) {
            eprintln!("ignored: {why}; see .ci/run");
        }
        let tests: [(&str, fn()); 7] = [
            ("two_notify_server_processes_share_a_channel", two_processes),
            (
                "a_publication_on_either_node_reaches_both_once_in_order",
                two_nodes,
            ),
            (
                "redis_restarted_without_persistence_resets_and_continues",
                restart_volatile,
            ),
            (
                "redis_restarted_with_persistence_continues_with_no_gap",
                restart_persistent,
            ),
            (
                "a_client_of_a_killed_node_recovers_on_the_other",
                node_killed,
            ),
            (
                "a_stalled_pubsub_link_is_rebuilt_and_recovers_within_15_s",
                stalled_link,
            ),
            (
                "a_paused_redis_is_survived_with_no_silent_gap",
                paused_redis,
            ),
        ];
        tests
            .into_iter()
            .map(|(name, test)| {
                let status = status.clone();
                libtest_mimic::Trial::test(name, move || {
                    if let Err(why) = status {
                        return Err(format!(
                            "required peer missing (SYNCWS_REQUIRE_PEERS=1): {why}"
                        )
                        .into());
                    }
                    test();
                    Ok(())
                })
                .with_ignored_flag(ignore)
            })
            .collect()
    }

    fn config(url: String, fast_probe: bool) -> RedisConfig {
        let mut c = RedisConfig {
            url,
            prefix: format!("t{}:", std::process::id()),
            timeout: Duration::from_secs(1),
            ..RedisConfig::default()
        };
        if fast_probe {
            c.probe_interval = Duration::from_millis(200);
            c.probe_timeout = Duration::from_millis(1500);
            c.reconnect =
                syncws::Backoff::new(Duration::from_millis(50), Duration::from_millis(500));
        }
        c
    }

    fn node(url: String, fast_probe: bool) -> (Hub, Arc<RedisBroker>) {
        let broker = Arc::new(RedisBroker::new(config(url, fast_probe)).unwrap());
        let hub = Hub::bind_with_broker(
            "127.0.0.1:0",
            HubConfig {
                ping_interval: None,
                rate_limit: None,
                ..HubConfig::default()
            },
            RoomApp,
            broker.clone(),
        )
        .unwrap();
        (hub, broker)
    }

    fn client(hub: &Hub) -> tungstenite::WebSocket<TcpStream> {
        let addr = hub.local_addr();
        let sock = TcpStream::connect(addr).unwrap();
        sock.set_read_timeout(Some(WAIT)).unwrap();
        tungstenite::client(format!("ws://{addr}/"), sock)
            .unwrap()
            .0
    }

    fn text(ws: &mut tungstenite::WebSocket<TcpStream>) -> String {
        loop {
            match ws.read().expect("a message") {
                tungstenite::Message::Text(t) => return t.to_string(),
                tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// Joins `room` (optionally from a position); returns the `joined` line's fields.
    fn join(ws: &mut tungstenite::WebSocket<TcpStream>, request: &str) -> (String, u64, bool) {
        ws.send(tungstenite::Message::text(request)).unwrap();
        let line = text(ws);
        let f: Vec<&str> = line.split(' ').collect();
        assert_eq!(f[0], "joined", "{line}");
        (f[2].to_string(), f[3].parse().unwrap(), f[4] == "true")
    }

    /// A publication line: (epoch, offset, data).
    fn publication(line: &str) -> (String, u64, String) {
        let f: Vec<&str> = line.splitn(4, ' ').collect();
        assert_ne!(f[0], "reset", "unexpected reset: {line}");
        (f[1].to_string(), f[2].parse().unwrap(), f[3].to_string())
    }

    fn two_nodes() {
        let redis = Redis::start(false);
        let url = format!("redis://{}", redis.addr());
        let (a, _) = node(url.clone(), false);
        let (b, _) = node(url, false);
        let mut on_a = client(&a);
        let mut on_b = client(&b);
        let (epoch, top, _) = join(&mut on_a, "join:r");
        assert_eq!(top, 0);
        assert_eq!(join(&mut on_b, "join:r").0, epoch);
        for i in 1..=100u64 {
            let publisher = if i % 2 == 0 { &a } else { &b };
            let p = publisher.publish("r", format!("m{i}")).unwrap();
            assert_eq!((p.offset, &*p.epoch), (i, epoch.as_str()));
        }
        for ws in [&mut on_a, &mut on_b] {
            for i in 1..=100u64 {
                assert_eq!(publication(&text(ws)), (epoch.clone(), i, format!("m{i}")));
            }
        }
    }

    /// Reads publications until `want` (the data of the last publication that succeeded) has
    /// been seen; checks offsets go up by one within an epoch, resets are announced, and no
    /// successful publication is missing unless a reset came in between.
    fn follow(
        ws: &mut tungstenite::WebSocket<TcpStream>,
        from: (&str, u64),
        published: &[(String, u64)],
        within: Duration,
    ) -> (usize, Vec<(String, u64)>) {
        let deadline = Instant::now() + within;
        ws.get_mut()
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut seen: Vec<(String, u64)> = Vec::new();
        let mut resets = 0;
        // Where the client is: the last publication it has.
        let mut current = (from.0.to_string(), from.1);
        let want = published.last().cloned();
        // A reset to (E, O) tells the client it continues from O: publications of E up to O
        // are not owed to it any more.
        let owed = |w: &(String, u64), seen: &[(String, u64)], current: &(String, u64)| {
            !(seen.contains(w) || (w.0 == current.0 && w.1 <= current.1))
        };
        while want.as_ref().is_some_and(|w| owed(w, &seen, &current)) {
            assert!(
                Instant::now() < deadline,
                "not caught up: seen {seen:?}, want {want:?}"
            );
            let line = match ws.read() {
                Ok(tungstenite::Message::Text(t)) => t.to_string(),
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue;
                }
                Err(e) => panic!("client lost: {e}"),
            };
            let f: Vec<&str> = line.split(' ').collect();
            if f[0] == "reset" {
                resets += 1;
                current = (f[2].to_string(), f[3].parse().unwrap());
                continue;
            }
            let (e, o, _) = publication(&line);
            if e == current.0 {
                assert_eq!(
                    o,
                    current.1 + 1,
                    "a silent gap or a duplicate: {line} after {current:?}"
                );
            } else {
                panic!("epoch changed without a reset: {line} after {current:?}");
            }
            current.1 = o;
            seen.push((e, o));
        }
        // Without a reset, every publication that succeeded was seen.
        if resets == 0 {
            for p in published {
                assert!(
                    seen.contains(p) || p.1 <= seen.first().map_or(0, |s| s.1),
                    "missing {p:?}"
                );
            }
        }
        (resets, seen)
    }

    /// Publishes through `hub` until it succeeds again (Redis back), recording what succeeded.
    fn publish_until_ok(hub: &Hub, data: &str, published: &mut Vec<(String, u64)>) {
        wait_until("a publish to succeed", WAIT, || {
            let p = hub.publish("r", data.to_string()).ok()?;
            published.push((p.epoch.to_string(), p.offset));
            Some(())
        });
    }

    fn restart_volatile() {
        let mut redis = Redis::start(false);
        let url = format!("redis://{}", redis.addr());
        let (a, broker) = node(url.clone(), true);
        let (b, _) = node(url, true);
        let mut ws = client(&a);
        let (epoch, _, _) = join(&mut ws, "join:r");
        let mut published = Vec::new();
        for i in 0..5 {
            let p = b.publish("r", format!("before{i}")).unwrap();
            published.push((p.epoch.to_string(), p.offset));
        }
        follow(&mut ws, (&epoch, 0), &published, WAIT);
        redis.kill();
        assert!(
            b.publish("r", "while down").is_err(),
            "a publish with Redis down must fail"
        );
        redis.restart();
        publish_until_ok(&b, "after", &mut published);
        for i in 0..5 {
            let p = b.publish("r", format!("after{i}")).unwrap();
            published.push((p.epoch.to_string(), p.offset));
        }
        let (resets, _) = follow(&mut ws, (&epoch, 5), &published[5..], WAIT);
        assert!(resets >= 1, "the lost history was not announced");
        assert!(broker.status().reconnects >= 1);
        let m = a.metrics().broker.expect("the hub reports its broker");
        assert!(
            m.connected && m.reconnects >= 1 && m.gaps_unrecovered >= 1,
            "{m:?}"
        );
    }

    fn restart_persistent() {
        let mut redis = Redis::start(true);
        let url = format!("redis://{}", redis.addr());
        let (a, broker) = node(url.clone(), true);
        let (b, _) = node(url, true);
        let mut ws = client(&a);
        let (epoch, _, _) = join(&mut ws, "join:r");
        let mut published = Vec::new();
        for i in 0..5 {
            let p = b.publish("r", format!("before{i}")).unwrap();
            published.push((p.epoch.to_string(), p.offset));
        }
        follow(&mut ws, (&epoch, 0), &published, WAIT);
        redis.kill();
        redis.restart();
        publish_until_ok(&b, "after", &mut published);
        for i in 0..5 {
            let p = b.publish("r", format!("after{i}")).unwrap();
            published.push((p.epoch.to_string(), p.offset));
        }
        assert!(
            published.iter().all(|(e, _)| *e == epoch),
            "persistence kept the epoch"
        );
        let (resets, seen) = follow(&mut ws, (&epoch, 5), &published[5..], WAIT);
        assert_eq!(resets, 0);
        assert_eq!(seen.first().map(|s| s.1), Some(6), "{seen:?}");
        wait_until("the rebuild to be counted", WAIT, || {
            (broker.status().reconnects >= 1).then_some(())
        });
    }

    fn node_killed() {
        let redis = Redis::start(false);
        let url = format!("redis://{}", redis.addr());
        let (a, _) = node(url.clone(), false);
        let (b, _) = node(url, false);
        let mut ws = client(&a);
        let (epoch, _, _) = join(&mut ws, "join:r");
        for i in 1..=10u64 {
            b.publish("r", format!("m{i}")).unwrap();
        }
        let mut last = 0;
        for i in 1..=10u64 {
            let (e, o, d) = publication(&text(&mut ws));
            assert_eq!((e.as_str(), o, d), (epoch.as_str(), i, format!("m{i}")));
            last = o;
        }
        // Node A dies; more is published meanwhile; the client comes back on node B.
        drop(ws);
        a.shutdown(Duration::from_secs(1));
        for i in 11..=20u64 {
            b.publish("r", format!("m{i}")).unwrap();
        }
        let mut ws = client(&b);
        let (e, top, recovered) = join(&mut ws, &format!("since:r:{epoch}:{last}"));
        assert_eq!((e.as_str(), top, recovered), (epoch.as_str(), 20, true));
        b.publish("r", "m21").unwrap();
        for i in 11..=21u64 {
            assert_eq!(
                publication(&text(&mut ws)),
                (epoch.clone(), i, format!("m{i}"))
            );
        }
    }

    fn stalled_link() {
        let redis = Redis::start(false);
        let proxy = Proxy::start(redis.addr());
        // Node A reaches Redis through the proxy, with the default probe (the 15 s promise).
        let broker =
            Arc::new(RedisBroker::new(config(format!("redis://{}", proxy.addr()), false)).unwrap());
        let a = Hub::bind_with_broker(
            "127.0.0.1:0",
            HubConfig {
                ping_interval: None,
                ..HubConfig::default()
            },
            RoomApp,
            broker.clone(),
        )
        .unwrap();
        let (b, _) = node(format!("redis://{}", redis.addr()), false);
        let mut ws = client(&a);
        let (epoch, _, _) = join(&mut ws, "join:r");
        let mut published = Vec::new();
        for i in 0..3 {
            let p = b.publish("r", format!("before{i}")).unwrap();
            published.push((p.epoch.to_string(), p.offset));
        }
        follow(&mut ws, (&epoch, 0), &published, WAIT);
        proxy.go_silent();
        let stalled = Instant::now();
        for i in 0..20 {
            let p = b.publish("r", format!("during{i}")).unwrap();
            published.push((p.epoch.to_string(), p.offset));
            std::thread::sleep(Duration::from_millis(100)); // a steady feed while stalled
        }
        let (resets, seen) = follow(
            &mut ws,
            (&epoch, 3),
            &published[3..],
            Duration::from_secs(15),
        );
        assert_eq!(resets, 0);
        assert_eq!(seen.len(), 20, "{seen:?}");
        assert!(stalled.elapsed() < Duration::from_secs(15) + Duration::from_secs(2));
        assert!(broker.status().probe_failures >= 1, "{:?}", broker.status());
    }

    /// `notify_server --redis` twice: a message published on one node reaches a subscriber on
    /// the other, and a client that moves to the other node recovers by `(epoch, offset)`.
    fn two_processes() {
        let redis = Redis::start(false);
        // The example with the feature (a plain `cargo test` built it without).
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let built = Command::new(cargo)
            .args(["build", "--features", "redis", "--example", "notify_server"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            built,
            "could not build notify_server with the redis feature"
        );
        let url = format!("redis://{}", redis.addr());
        let (mut one, p1) = support::start_example_server("notify_server", &["--redis", &url]);
        let (mut two, p2) = support::start_example_server("notify_server", &["--redis", &url]);
        let ws = |port: u16, token: &str| {
            let sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
            sock.set_read_timeout(Some(WAIT)).unwrap();
            tungstenite::client(format!("ws://127.0.0.1:{port}/ws?token={token}"), sock)
                .unwrap()
                .0
        };
        let mut sub = ws(p1, "s1");
        sub.send(tungstenite::Message::text(
            r#"{"op":"subscribe","channel":"x"}"#,
        ))
        .unwrap();
        let subscribed = text(&mut sub);
        assert!(subscribed.contains(r#""offset":0"#), "{subscribed}");
        let mut publisher = ws(p2, "s2");
        for n in 1..=3 {
            publisher
                .send(tungstenite::Message::text(format!(
                    r#"{{"op":"publish","channel":"x","data":{n}}}"#
                )))
                .unwrap();
        }
        for n in 1..=3 {
            let m = text(&mut sub);
            assert!(
                m.contains(&format!(r#""offset":{n},"from":"bob","data":{n}}}"#)),
                "{m}"
            );
        }
        let epoch = subscribed
            .split(r#""epoch":""#)
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap()
            .to_string();
        // Node one goes away; two more are published; the client resumes on node two.
        drop(sub);
        let _ = one.kill();
        let _ = one.wait();
        for n in 4..=5 {
            publisher
                .send(tungstenite::Message::text(format!(
                    r#"{{"op":"publish","channel":"x","data":{n}}}"#
                )))
                .unwrap();
        }
        // The node handles a connection's messages in order: once it answers an unknown op,
        // both publications are stored.
        publisher
            .send(tungstenite::Message::text(r#"{"op":"sync"}"#))
            .unwrap();
        assert!(text(&mut publisher).contains(r#""op":"error""#));
        let mut moved = ws(p2, "s1");
        moved
            .send(tungstenite::Message::text(format!(
                r#"{{"op":"subscribe","channel":"x","since":{{"epoch":"{epoch}","offset":3}}}}"#
            )))
            .unwrap();
        let again = text(&mut moved);
        assert!(again.contains(r#""recovered":true"#), "{again}");
        for n in 4..=5 {
            let m = text(&mut moved);
            assert!(m.contains(&format!(r#""offset":{n},"#)), "{m}");
        }
        let _ = two.kill();
        let _ = two.wait();
    }

    fn paused_redis() {
        let redis = Redis::start(false);
        let url = format!("redis://{}", redis.addr());
        let (a, broker) = node(url.clone(), true);
        let (b, _) = node(url, true);
        let mut ws = client(&a);
        let (epoch, _, _) = join(&mut ws, "join:r");
        let mut published = Vec::new();
        let p = b.publish("r", "first").unwrap();
        published.push((p.epoch.to_string(), p.offset));
        follow(&mut ws, (&epoch, 0), &published, WAIT);
        redis.signal(libc::SIGSTOP);
        assert!(
            b.publish("r", "paused").is_err(),
            "a publish to a paused Redis must time out"
        );
        wait_until("the paused link to be noticed", WAIT, || {
            (broker.status().probe_failures >= 1 || !broker.status().connected).then_some(())
        });
        redis.signal(libc::SIGCONT);
        publish_until_ok(&b, "resumed", &mut published);
        for i in 0..5 {
            let p = b.publish("r", format!("after{i}")).unwrap();
            published.push((p.epoch.to_string(), p.offset));
        }
        let (resets, _) = follow(&mut ws, (&epoch, 1), &published[1..], WAIT);
        assert_eq!(resets, 0);
    }
}
