//! syncws side by side with a raw blocking tungstenite client (the baseline) and
//! tokio-tungstenite on a current-thread runtime (the async peer), on loopback, plain and TLS,
//! in one process:
//!
//! 1. inbound throughput: a server blasts 64 B, 1 KiB and 64 KiB binary frames; messages per
//!    second delivered to application code. syncws is measured three ways: `ingress` (an
//!    `Ingress` counting on the reader thread, emitting nothing), `channel` (the ingress decodes
//!    a small value and emits it; the application thread receives it from `Client::events`) and
//!    `frame` (the default `connect()`: each message copied into an `Event::Frame`);
//! 2. outbound throughput: the client sends the same sizes as fast as it can; messages per
//!    second the server's sink has read. The raw baseline sends with tungstenite's `send`
//!    (write + flush per message, like tokio's `SinkExt::send`); `outbound_batched_*` compares
//!    the same syncws figure with a raw client that only `write`s (tungstenite flushes its
//!    buffer when full), the fastest a blocking client can go by hand;
//! 3. round trip of a 128 B request: p50 / p99 / p99.9 in microseconds.
//!
//! Throughput runs in rounds: each round measures every client once (fresh connection, warm-up,
//! then one timed window), in alternating order (forward, then backward), so slow drift of this
//! machine hits all clients alike. A client's figure is the median over the rounds; a ratio is
//! the median of the per-round ratios (each pairs two clients measured seconds apart), printed
//! with its spread (lowest and highest per-round ratio). Round trips run in rounds the same way;
//! a client's percentile is the median of its per-round percentiles.
//!
//! ```text
//! benches/run.sh [--quick]                          # pinned and unpinned, combined table
//! cargo bench -p syncws-compare --bench compare -- [--quick] [--mode M] [--only SUBSTRING] [--clients A,B]
//! bench --combine FILE...                           # merge RESULT lines into one table
//! ```

mod clients;
mod report;
mod servers;
mod stats;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::thread;
use std::time::{Duration, Instant};

use clients::{RttPlan, Target, Who};
use report::Record;
use servers::{Kind, Pki, Server, Shared};

const SIZES: [usize; 3] = [64, 1024, 64 * 1024];
const RTT_REQUEST: usize = 128;

struct Plan {
    rounds: usize,
    warmup: Duration,
    window: Duration,
    rtt_rounds: usize,
    rtt_warmup: usize,
    rtt_samples: usize,
}

impl Plan {
    fn quick() -> Plan {
        Plan {
            rounds: 9,
            warmup: Duration::from_millis(60),
            window: Duration::from_millis(160),
            rtt_rounds: 8,
            rtt_warmup: 500,
            rtt_samples: 8_000,
        }
    }

    fn full() -> Plan {
        Plan {
            rounds: 7,
            warmup: Duration::from_millis(200),
            window: Duration::from_millis(600),
            rtt_rounds: 7,
            rtt_warmup: 1_000,
            rtt_samples: 5_000,
        }
    }
}

fn size_label(size: usize) -> String {
    match size {
        s if s >= 1024 && s % 1024 == 0 => format!("{}KiB", s / 1024),
        s => format!("{s}B"),
    }
}

struct Bench {
    plan: Plan,
    mode: String,
    only: Option<String>,
    /// Comma-separated client names to run (`--clients`); all when `None`.
    clients: Option<String>,
    pki: Arc<Pki>,
    records: Vec<Record>,
}

impl Bench {
    fn wanted(&self, what: &str) -> bool {
        self.only.as_ref().is_none_or(|o| what.contains(o.as_str()))
    }

    /// Records one figure with the per-round values it was made from.
    fn record(&mut self, metric: &str, client: &str, value: f64, rounds: &[f64]) {
        let r = Record {
            mode: self.mode.clone(),
            metric: metric.to_string(),
            client: client.to_string(),
            value,
            rounds: rounds.to_vec(),
        };
        println!("{}", r.line());
        self.records.push(r);
    }

    fn server(&self, kind: Kind, tls: bool, shared: Arc<Shared>) -> (Server, Target) {
        let server = Server::start(kind, tls.then(|| self.pki.server.clone()), shared);
        let target = Target {
            url: server.url(),
            pki: tls.then(|| self.pki.clone()),
        };
        (server, target)
    }

    /// Samples `count` over one warm-up and one timed window; returns messages per second.
    fn window(&self, count: &AtomicU64, what: &str) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(10);
        while count.load(Relaxed) == 0 {
            assert!(Instant::now() < deadline, "{what}: no message in 10 s");
            thread::sleep(Duration::from_millis(1));
        }
        thread::sleep(self.plan.warmup);
        let (c0, t0) = (count.load(Relaxed), Instant::now());
        thread::sleep(self.plan.window);
        let (c1, t1) = (count.load(Relaxed), Instant::now());
        (c1 - c0) as f64 / (t1 - t0).as_secs_f64()
    }

    fn inbound_once(&self, who: Who, tls: bool, size: usize) -> f64 {
        let shared = Arc::new(Shared::default());
        let (server, target) = self.server(Kind::Blaster { size }, tls, shared.clone());
        let count = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let client = clients::spawn_inbound(who, target, count.clone(), stop.clone());
        let rate = self.window(&count, who.name());
        stop.store(true, Relaxed);
        shared.stop.store(true, Relaxed);
        client.join().expect("inbound client panicked");
        server.join();
        rate
    }

    fn outbound_once(&self, who: Who, tls: bool, size: usize) -> f64 {
        let shared = Arc::new(Shared::default());
        let (server, target) = self.server(Kind::Sink, tls, shared.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let client = clients::spawn_outbound(who, target, size, stop.clone());
        let rate = self.window(&shared.received, who.name());
        stop.store(true, Relaxed);
        client.join().expect("outbound client panicked");
        server.join();
        rate
    }

    /// The clients of `all` selected with `--clients` (all by default).
    fn selected(&self, all: &[Who]) -> Vec<Who> {
        all.iter()
            .copied()
            .filter(|w| {
                self.clients
                    .as_ref()
                    .is_none_or(|c| c.split(',').any(|name| name == w.name()))
            })
            .collect()
    }

    /// Runs every selected client once per round, forward in even rounds and backward in odd
    /// ones (no client always runs first or last); returns each one's rate per round.
    fn rounds(&self, all: &[Who], mut once: impl FnMut(Who) -> f64) -> HashMap<Who, Vec<f64>> {
        let who = self.selected(all);
        let mut rates: HashMap<Who, Vec<f64>> = HashMap::new();
        for round in 0..self.plan.rounds {
            let order: Vec<Who> = if round % 2 == 0 {
                who.clone()
            } else {
                who.iter().rev().copied().collect()
            };
            for w in order {
                rates.entry(w).or_default().push(once(w));
            }
        }
        rates
    }

    /// Records `metric` for each of (column, client) whose rates were measured: the median
    /// rate, with the per-round rates for paired ratios.
    fn record_rates(
        &mut self,
        metric: &str,
        rates: &HashMap<Who, Vec<f64>>,
        columns: &[(&str, Who)],
    ) {
        for (column, who) in columns {
            if let Some(rounds) = rates.get(who) {
                self.record(metric, column, stats::median(rounds), rounds);
            }
        }
    }

    fn inbound(&mut self, tls: bool) {
        let transport = if tls { "tls" } else { "plain" };
        let all = [
            Who::Syncws,
            Who::SyncwsChannel,
            Who::SyncwsFrame,
            Who::Raw,
            Who::Tokio,
        ];
        for size in SIZES {
            let label = size_label(size);
            if !self.wanted(&format!("inbound_{label}_{transport}")) {
                continue;
            }
            let started = Instant::now();
            let rates = self.rounds(&all, |w| self.inbound_once(w, tls, size));
            for (variant, syncws) in [
                ("ingress", Who::Syncws),
                ("channel", Who::SyncwsChannel),
                ("frame", Who::SyncwsFrame),
            ] {
                let metric = format!("inbound_{variant}_msgs_per_s_{label}_{transport}");
                let columns = [("syncws", syncws), ("raw", Who::Raw), ("tokio", Who::Tokio)];
                self.record_rates(&metric, &rates, &columns);
            }
            eprintln!("# inbound {label} {transport}: {:.1?}", started.elapsed());
        }
    }

    fn outbound(&mut self, tls: bool) {
        let transport = if tls { "tls" } else { "plain" };
        let all = [Who::Syncws, Who::Raw, Who::Tokio, Who::RawBatched];
        for size in SIZES {
            let label = size_label(size);
            if !self.wanted(&format!("outbound_{label}_{transport}")) {
                continue;
            }
            let started = Instant::now();
            let rates = self.rounds(&all, |w| self.outbound_once(w, tls, size));
            let metric = format!("outbound_msgs_per_s_{label}_{transport}");
            let columns = [
                ("syncws", Who::Syncws),
                ("raw", Who::Raw),
                ("tokio", Who::Tokio),
            ];
            self.record_rates(&metric, &rates, &columns);
            // The same syncws figure against a raw client that batches its writes by hand.
            let metric = format!("outbound_batched_msgs_per_s_{label}_{transport}");
            let columns = [("syncws", Who::Syncws), ("raw", Who::RawBatched)];
            self.record_rates(&metric, &rates, &columns);
            eprintln!("# outbound {label} {transport}: {:.1?}", started.elapsed());
        }
    }

    fn rtt(&mut self, tls: bool) {
        let transport = if tls { "tls" } else { "plain" };
        if !self.wanted(&format!("rtt_{transport}")) {
            return;
        }
        let started = Instant::now();
        let who = self.selected(&[Who::Syncws, Who::SyncwsInline, Who::Raw, Who::Tokio]);
        let plan = RttPlan {
            warmup: self.plan.rtt_warmup,
            samples: self.plan.rtt_samples,
            size: RTT_REQUEST,
        };
        // Per client, per round: that round's samples, sorted (for per-round percentiles).
        let mut per_round = vec![Vec::new(); who.len()];
        for round in 0..self.plan.rtt_rounds {
            let mut order: Vec<usize> = (0..who.len()).collect();
            if round % 2 == 1 {
                order.reverse();
            }
            for i in order {
                let (server, target) = self.server(Kind::Echo, tls, Arc::new(Shared::default()));
                let mut round_samples = clients::rtt(who[i], &target, &plan);
                round_samples.sort_unstable();
                per_round[i].push(round_samples);
                server.join();
            }
        }
        // A client's percentile is the median of its per-round percentiles: steadier from run
        // to run than the percentile of the pooled samples (two pairs of quick runs, recomputed
        // from their per-round values: 2 and 0 of 48 round-trip ratios moved by more than 10%,
        // against 4 and 7 pooled), and its rounds pair with the other clients' for the spread.
        // One metric per dispatch mode, each with the same raw and tokio figures beside it:
        // `rtt_p50_us_plain_actor` (the default) and `rtt_p50_us_plain_inline`.
        for (w, rounds) in who.iter().zip(&per_round) {
            for (name, p) in [("p50", 50.0), ("p99", 99.0), ("p999", 99.9)] {
                let per_round_us: Vec<f64> = rounds
                    .iter()
                    .map(|r| stats::percentile(r, p) as f64 / 1000.0)
                    .collect();
                let us = stats::median(&per_round_us);
                for dispatch in ["actor", "inline"] {
                    let client = match (w, dispatch) {
                        (Who::Syncws, "actor") | (Who::SyncwsInline, "inline") => "syncws",
                        (Who::Syncws | Who::SyncwsInline, _) => continue,
                        _ => w.name(),
                    };
                    let metric = format!("rtt_{name}_us_{transport}_{dispatch}");
                    self.record(&metric, client, us, &per_round_us);
                }
            }
        }
        eprintln!(
            "# rtt {transport}: {} round trips per client in {:.1?}",
            per_round
                .first()
                .map_or(0, |r| r.iter().map(Vec::len).sum::<usize>()),
            started.elapsed()
        );
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn cpus_allowed() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn main() {
    stats::self_check();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "--combine") {
        let mut records = Vec::new();
        for file in &args[i + 1..] {
            let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{file}: {e}"));
            records.extend(text.lines().filter_map(Record::parse));
        }
        print!("{}", report::render(&records));
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let mode = value("--mode").unwrap_or_else(|| "unpinned".into());
    let only = value("--only");
    let mut bench = Bench {
        plan: if quick { Plan::quick() } else { Plan::full() },
        mode,
        only,
        clients: value("--clients"),
        pki: Arc::new(Pki::new()),
        records: Vec::new(),
    };
    let p = &bench.plan;
    eprintln!(
        "# syncws bench: mode {} ({} run), CPUs allowed {}, {} CPUs, {}",
        bench.mode,
        if quick { "quick" } else { "full" },
        cpus_allowed(),
        thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model()
    );
    eprintln!(
        "# throughput: {} rounds x ({:?} warm-up + {:?} window) per client; round trips: {} rounds x ({} warm-up + {} measured) per client",
        p.rounds, p.warmup, p.window, p.rtt_rounds, p.rtt_warmup, p.rtt_samples
    );
    let started = Instant::now();
    for tls in [false, true] {
        bench.inbound(tls);
    }
    for tls in [false, true] {
        bench.outbound(tls);
    }
    for tls in [false, true] {
        bench.rtt(tls);
    }
    eprintln!("# measured in {:.1?}\n", started.elapsed());
    print!("{}", report::render(&bench.records));
}
