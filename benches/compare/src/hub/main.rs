//! The hub side by side with a tokio-tungstenite broadcast server, in one process, on loopback:
//!
//! 1. **fan-out throughput**: one publisher, 1,000 subscribers, 64-byte binary messages in
//!    bursts of 50; deliveries per second (each message counts once per subscriber that got it);
//! 2. **fan-out latency**: the same, one message every 10 ms; publish→receive p50 / p99 over
//!    every delivery (the send time travels in the payload);
//! 3. **slow clients**: one more round of 1. and 2. with 10 extra subscribers that never read;
//!    the healthy subscribers' figures beside each server's clean median;
//! 4. **cross-node**: publish on node A, the 1,000 subscribers on node B, both hubs on one
//!    `redis-server` the bench starts (skipped without one), beside the single-node median;
//! 5. **idle memory** (syncws only): `N` idle upgraded connections from a child process; the
//!    hub process's RSS and the kernel's thread stacks and slab grow by how much per connection.
//!
//! Rounds alternate the order of the two servers; a ratio is the median of per-round ratios.
//!
//! ```text
//! cargo bench -p syncws-compare --bench hub -- [--quick] [--mode M] [--idle N]
//! ```
//!
//! Output ends with the lines `benches/run.sh` collects:
//! `RATIO hub_fanout_msgs_per_s_1000 <mode> <syncws/tokio>`,
//! `RATIO hub_fanout_p99_us_1000 <mode> <syncws/tokio>` and
//! `HUB_IDLE_KIB_PER_CONN <connections> <KiB>`.

#[path = "../stats.rs"]
mod stats;

mod load;
mod servers;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use load::{Publisher, Subscribers};

const SUBSCRIBERS: usize = 1000;
const SIZE: usize = 64;
const BURST: usize = 50;
/// Subscribers that never read, in the slow-client round.
const STUCK: usize = 10;

struct Plan {
    rounds: usize,
    window: Duration,
    paced: usize,
    idle: usize,
}

#[derive(Default, Clone)]
struct Figures {
    rate: f64,
    p50_us: f64,
    p99_us: f64,
}

/// One round against one server: throughput window, then the paced latency phase.
fn measure(subs: &Subscribers, publisher: &mut Publisher, plan: &Plan) -> Figures {
    let n = subs.count as u64;
    // Throughput: bursts, each waited for in full before the next.
    let start_count = subs.delivered.load(Relaxed);
    let started = Instant::now();
    let mut expected = start_count;
    while started.elapsed() < plan.window {
        publisher.burst(BURST).expect("publish");
        expected += n * BURST as u64;
        if !subs.wait_for(expected, Duration::from_secs(10)) {
            eprintln!("  (a burst was not fully delivered within 10 s)");
            expected = subs.delivered.load(Relaxed);
        }
    }
    let rate =
        (subs.delivered.load(Relaxed) - start_count) as f64 / started.elapsed().as_secs_f64();
    // Latency: one message every 10 ms.
    subs.record(true);
    let base = subs.delivered.load(Relaxed);
    let t0 = Instant::now();
    for i in 0..plan.paced {
        let slot = t0 + Duration::from_millis(10 * i as u64);
        if let Some(wait) = slot.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait); // pacing the offered load
        }
        publisher.burst(1).expect("publish");
    }
    subs.wait_for(base + n * plan.paced as u64, Duration::from_secs(10));
    subs.record(false);
    let mut samples = subs.take_samples();
    samples.sort_unstable();
    let us = |p| stats::percentile(&samples, p) as f64 / 1000.0;
    Figures {
        rate,
        p50_us: us(50.0),
        p99_us: us(99.0),
    }
}

/// Publish on node A, 1,000 subscribers on node B, both on one `redis-server` started here:
/// the same measure as the single-node one, printed beside its median.
fn cross_node(plan: &Plan, single: &[Figures], mode: &str) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let mut redis = match Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            println!("# cross-node via Redis: skipped (no redis-server: {e})");
            return;
        }
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20)); // polling a starting server
    }
    let url = format!("redis://127.0.0.1:{port}");
    let a = servers::start_redis_node(&url);
    let b = servers::start_redis_node(&url);
    let subs = Subscribers::connect(b.local_addr(), SUBSCRIBERS).expect("subscribers");
    let mut publisher = Publisher::connect(a.local_addr(), SIZE).expect("publisher");
    let rounds: Vec<Figures> = (0..plan.rounds.min(3))
        .map(|_| measure(&subs, &mut publisher, plan))
        .collect();
    let med = |f: &dyn Fn(&Figures) -> f64, v: &[Figures]| {
        stats::median(&v.iter().map(f).collect::<Vec<_>>())
    };
    println!(
        "# cross-node via Redis: publish on node A, {SUBSCRIBERS} subscribers on node B ({mode})"
    );
    println!("# setup      deliveries/s   p50 us   p99 us");
    for (name, v) in [("one node", single), ("two nodes", &rounds[..])] {
        println!(
            "  {name:<10} {:>12.0} {:>8.0} {:>8.0}",
            med(&|f| f.rate, v),
            med(&|f| f.p50_us, v),
            med(&|f| f.p99_us, v)
        );
    }
    drop(subs);
    drop(publisher);
    a.shutdown(Duration::from_secs(5));
    b.shutdown(Duration::from_secs(5));
    let _ = redis.kill();
    let _ = redis.wait();
}

fn idle_memory(n: usize) -> f64 {
    let hub = servers::start_syncws();
    let rss0 = status_kib("VmRSS:");
    let (stack0, slab0) = (meminfo_kib("KernelStack:"), meminfo_kib("Slab:"));
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args([
            "--idle-clients",
            &n.to_string(),
            "--addr",
            &hub.local_addr().to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("idle clients");
    let deadline = Instant::now() + Duration::from_secs(120);
    while hub.metrics().open < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} connected",
            hub.metrics().open
        );
        std::thread::sleep(Duration::from_millis(20)); // polling a gauge
    }
    let rss = status_kib("VmRSS:") - rss0;
    let stack = meminfo_kib("KernelStack:") - stack0;
    let slab = meminfo_kib("Slab:") - slab0;
    // Both ends' sockets are in the slab figure: half is the hub's.
    let per = (rss + stack + slab / 2.0) / n as f64;
    println!(
        "idle connections: {n}; per connection: RSS {:.1} KiB, kernel stacks {:.1} KiB, slab (half of both ends) {:.1} KiB; total {per:.1} KiB",
        rss / n as f64,
        stack / n as f64,
        slab / 2.0 / n as f64
    );
    drop(child.stdin.take());
    let _ = child.wait();
    hub.shutdown(Duration::from_secs(10));
    per
}

fn status_kib(key: &str) -> f64 {
    field_kib(&std::fs::read_to_string("/proc/self/status").unwrap(), key)
}

fn meminfo_kib(key: &str) -> f64 {
    field_kib(&std::fs::read_to_string("/proc/meminfo").unwrap(), key)
}

fn field_kib(text: &str, key: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0)
}

/// The child of `idle_memory`: opens `n` connections, then holds them until stdin closes.
fn idle_clients(n: usize, addr: SocketAddr) {
    let conns: Vec<_> = (0..n)
        .map(|_| load::open(addr, None).expect("idle connection"))
        .collect();
    let mut sink = String::new();
    let _ = std::io::stdin().read_line(&mut sink);
    drop(conns);
}

fn main() {
    stats::self_check();
    let mut args = std::env::args().skip(1);
    let mut quick = false;
    let mut mode = "unpinned".to_string();
    let mut idle = None;
    let mut idle_child = None;
    let mut addr = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--mode" => mode = args.next().expect("--mode M"),
            "--idle" => idle = args.next().and_then(|v| v.parse().ok()),
            "--idle-clients" => idle_child = args.next().and_then(|v| v.parse().ok()),
            "--addr" => addr = args.next().and_then(|v| v.parse().ok()),
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    if let (Some(n), Some(addr)) = (idle_child, addr) {
        idle_clients(n, addr);
        return;
    }
    let plan = if quick {
        Plan {
            rounds: 3,
            window: Duration::from_secs(1),
            paced: 100,
            idle: idle.unwrap_or(1_000),
        }
    } else {
        Plan {
            rounds: 5,
            window: Duration::from_secs(3),
            paced: 300,
            idle: idle.unwrap_or(10_000),
        }
    };
    // First, while the process is small: what an idle connection costs.
    let per_conn = idle_memory(plan.idle);
    let hub = servers::start_syncws();
    let tokio = servers::start_tokio();
    let targets: [(&str, SocketAddr); 2] = [("syncws", hub.local_addr()), ("tokio", tokio.addr)];
    let mut loads: Vec<(Subscribers, Publisher)> = targets
        .iter()
        .map(|(_, addr)| {
            (
                Subscribers::connect(*addr, SUBSCRIBERS).expect("subscribers"),
                Publisher::connect(*addr, SIZE).expect("publisher"),
            )
        })
        .collect();
    let mut figures: Vec<Vec<Figures>> = vec![Vec::new(), Vec::new()];
    for round in 0..plan.rounds {
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let (subs, publisher) = &mut loads[i];
            figures[i].push(measure(subs, publisher, &plan));
        }
    }
    println!("# hub fan-out: 1 publisher, {SUBSCRIBERS} subscribers, {SIZE} B ({mode})");
    println!("# client   deliveries/s (median, low-high)   p50 us   p99 us");
    for (i, (name, _)) in targets.iter().enumerate() {
        let rates: Vec<f64> = figures[i].iter().map(|f| f.rate).collect();
        let p50: Vec<f64> = figures[i].iter().map(|f| f.p50_us).collect();
        let p99: Vec<f64> = figures[i].iter().map(|f| f.p99_us).collect();
        let lo = rates.iter().copied().fold(f64::MAX, f64::min);
        let hi = rates.iter().copied().fold(0.0, f64::max);
        println!(
            "  {name:<8} {:>12.0} ({lo:.0}-{hi:.0})   {:>8.0} {:>8.0}",
            stats::median(&rates),
            stats::median(&p50),
            stats::median(&p99)
        );
    }
    let ratio = |f: &dyn Fn(&Figures) -> f64| {
        let per_round: Vec<f64> = figures[0]
            .iter()
            .zip(&figures[1])
            .map(|(s, t)| f(s) / f(t).max(1e-9))
            .collect();
        stats::median(&per_round)
    };
    let rate_ratio = ratio(&|f| f.rate);
    let p99_ratio = ratio(&|f| f.p99_us);
    // Slow clients must not slow the others: the same measure with 10 more subscribers that
    // never read (their queues fill; syncws closes them with 4008, tokio's broadcast makes
    // them lag).
    println!("# with {STUCK} more subscribers that never read (one round)");
    for (i, (name, addr)) in targets.iter().enumerate() {
        let stuck: Vec<_> = (0..STUCK)
            .map(|_| load::open(*addr, Some("sub")).expect("stuck subscriber"))
            .collect();
        let (subs, publisher) = &mut loads[i];
        let f = measure(subs, publisher, &plan);
        let clean = stats::median(&figures[i].iter().map(|f| f.rate).collect::<Vec<_>>());
        println!(
            "  {name:<8} {:>12.0} deliveries/s ({:.2} of its clean median)   p50 {:.0} us   p99 {:.0} us",
            f.rate,
            f.rate / clean,
            f.p50_us,
            f.p99_us
        );
        drop(stuck);
    }
    drop(loads);
    hub.shutdown(Duration::from_secs(5));
    cross_node(&plan, &figures[0], &mode);
    println!("RATIO hub_fanout_msgs_per_s_1000 {mode} {rate_ratio:.2}");
    println!("RATIO hub_fanout_p99_us_1000 {mode} {p99_ratio:.2}");
    println!("HUB_IDLE_KIB_PER_CONN {} {per_conn:.1}", plan.idle);
}
