//! A trading client on a Deribit-style JSON-RPC 2.0 venue: authenticates (`public/auth`; the
//! session is auth-gated, so subscriptions wait for the answer), subscribes to a ticker, and
//! places orders with `send_and_confirm` from a thread of its own, printing one line per order:
//!
//! ```text
//! order <request id> <outcome>
//! ```
//!
//! where the request id is the JSON-RPC id and the outcome one of `Confirmed`, `Sent`,
//! `NotDelivered`, `Unconfirmed`, `EndpointRejected`, `PayloadMismatch`, `TooManyPending`.
//! Everything else (session, ticks, orphans, the venue's summary) goes to stderr.
//!
//! ```text
//! cargo run --example trader                       # against the simulated venue, in process
//! cargo run --example trader -- --flaky --orders 50
//! cargo run --example exchange_sim -- --port 8765  # in another terminal, then:
//! cargo run --example trader -- --url ws://127.0.0.1:8765/ws/api/v2
//! ```
//!
//! Options: `--url URL` (any venue speaking the dialect; default: start the simulator
//! in process, which rejects every 4th order with a retry-after), `--orders N` (default 10),
//! `--deadline-ms D` (each order's deadline, default 2000), `--pin CORE` (pin the order thread to
//! a CPU core; Linux only), `--flaky` (in-process simulator drops and delays),
//! `--client-id ID` / `--client-secret S` (default `trader` / `secret`), `--instrument NAME`
//! (default `BTC-PERPETUAL`).
//!
//! Against a real venue these are real, post-only limit orders far below the market.

#[path = "common/jsonrpc.rs"]
mod jsonrpc;
#[path = "common/venue.rs"]
mod venue;

use std::process::ExitCode;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use jsonrpc::{JsonRpc, Notifications, Order, Side, outcome_name};
use syncws::{Backoff, Client, Event, Outcome, Response};

struct Args {
    url: Option<String>,
    orders: u64,
    deadline: Duration,
    pin: Option<usize>,
    flaky: bool,
    client_id: String,
    client_secret: String,
    instrument: String,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        url: None,
        orders: 10,
        deadline: Duration::from_millis(2000),
        pin: None,
        flaky: false,
        client_id: "trader".into(),
        client_secret: "secret".into(),
        instrument: "BTC-PERPETUAL".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--url" => args.url = Some(value("--url")?),
            "--orders" => args.orders = number(&value("--orders")?)?,
            "--deadline-ms" => {
                args.deadline = Duration::from_millis(number(&value("--deadline-ms")?)?)
            }
            "--pin" => args.pin = Some(number(&value("--pin")?)? as usize),
            "--flaky" => args.flaky = true,
            "--client-id" => args.client_id = value("--client-id")?,
            "--client-secret" => args.client_secret = value("--client-secret")?,
            "--instrument" => args.instrument = value("--instrument")?,
            "-h" | "--help" => {
                return Err("usage: trader [--url URL] [--orders N] [--deadline-ms D] \
                            [--pin CORE] [--flaky] [--client-id ID] [--client-secret S] \
                            [--instrument NAME]"
                    .into());
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    Ok(args)
}

fn number(s: &str) -> Result<u64, String> {
    s.parse().map_err(|_| format!("not a number: {s:?}"))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trader: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    // No URL: the simulated venue, in this process.
    let sim = match &args.url {
        Some(_) => None,
        None => {
            let knobs = venue::Knobs {
                reject_every: Some(4),
                retry_after: Duration::from_millis(250),
                flaky: args.flaky.then(|| venue::Flaky::demo(1)),
                ..venue::Knobs::default()
            };
            let sim = venue::Venue::start(knobs)?;
            eprintln!("venue: simulated, listening on {}", sim.url());
            Some(sim)
        }
    };
    let url = args
        .url
        .clone()
        .or_else(|| sim.as_ref().map(venue::Venue::url))
        .expect("a URL or the simulator");
    let channel = format!("ticker.{}.100ms", args.instrument);

    let client = Client::builder(&url)
        .name("trader")
        .endpoint(JsonRpc::private(&args.client_id, &args.client_secret))
        .subscribe(channel.as_str())
        .reconnect(Backoff::new(
            Duration::from_millis(50),
            Duration::from_secs(2),
        ))
        .connect_with(Notifications)?;
    eprintln!("session: connected to {url}");

    // Events on their own thread: session progress, a few ticks, late answers.
    let (ready_tx, ready_rx) = mpsc::channel();
    let events = client.events().clone();
    let printer = thread::Builder::new()
        .name("trader-events".into())
        .spawn(move || {
            let mut ticks = 0;
            for event in events.iter() {
                match event {
                    Event::SessionReady { epoch } => {
                        eprintln!(
                            "session: ready on connection {epoch} (authenticated, subscribed)"
                        );
                        let _ = ready_tx.send(());
                    }
                    Event::Data { value, .. } if ticks < 3 => {
                        ticks += 1;
                        let price = |k: &str| value.data.get(k).and_then(|v| v.as_f64());
                        eprintln!(
                            "tick: {} bid {:?} ask {:?}",
                            value.channel,
                            price("best_bid_price").unwrap_or_default(),
                            price("best_ask_price").unwrap_or_default()
                        );
                    }
                    Event::Data { .. } => {}
                    Event::Orphan { id, response, .. } => {
                        let what = match *response {
                            Response::Ok { hint, .. } => format!("accepted {hint:?}"),
                            Response::Err { message, .. } => format!("refused: {message}"),
                        };
                        eprintln!("late answer for order {id} (reconcile): {what}");
                    }
                    Event::Closed {
                        epoch,
                        info,
                        reconnect,
                    } => {
                        eprintln!(
                            "session: connection {epoch} closed ({}); reconnect in {reconnect:?}",
                            info.cause
                        );
                    }
                    Event::SubscriptionRejected { topic, reason, .. } => {
                        eprintln!("session: subscription {topic} refused: {reason}");
                    }
                    _ => {}
                }
            }
        })?;

    if ready_rx.recv_timeout(Duration::from_secs(10)).is_err() {
        return Err("the session did not become ready within 10 s".into());
    }

    let orders = thread::scope(|s| -> Result<u64, String> {
        let client = &client;
        let args = &args;
        let orders = thread::Builder::new()
            .name("trader-orders".into())
            .spawn_scoped(s, move || place_orders(client, args))
            .map_err(|e| format!("cannot start the order thread: {e}"))?;
        orders
            .join()
            .map_err(|_| "the order thread panicked".to_string())
    })?;

    client.shutdown(Duration::from_secs(1));
    let _ = printer.join();
    if let Some(sim) = sim {
        eprintln!(
            "venue: received {} orders over {} connection(s); placed {orders}",
            sim.order_count(),
            sim.connections()
        );
        sim.stop();
    }
    Ok(())
}

/// Places the orders one after the other; returns how many.
fn place_orders<T>(client: &Client<T>, args: &Args) -> u64 {
    if let Some(core) = args.pin {
        match pin_current_thread(core) {
            Ok(()) => eprintln!("orders: thread pinned to core {core}"),
            Err(e) => eprintln!("orders: not pinned to core {core}: {e}"),
        }
    }
    for id in 1..=args.orders {
        let order = Order {
            side: if id % 2 == 1 { Side::Buy } else { Side::Sell },
            instrument: args.instrument.clone(),
            amount: 10.0,
            price: 1_000.0 + id as f64,
            label: format!("syncws-trader-{id}"),
        };
        let outcome = client.send_and_confirm(order.request(id).timeout(args.deadline));
        println!("order {id} {}", outcome_name(&outcome));
        match &outcome {
            Outcome::EndpointRejected {
                message,
                retry_after,
            } => {
                eprintln!("order {id}: {message}; retry after {retry_after:?}");
                if let Some(wait) = retry_after {
                    thread::sleep(*wait); // The venue asked us to slow down.
                }
            }
            Outcome::NotDelivered(why) => {
                eprintln!("order {id}: not delivered ({why:?}); safe to retry");
                wait_ready(client, args.deadline);
            }
            Outcome::Unconfirmed(why) => {
                eprintln!("order {id}: outcome unknown ({why:?}); reconcile before retrying");
                wait_ready(client, args.deadline);
            }
            _ => {}
        }
    }
    args.orders
}

/// Waits (bounded) for the session to be ready again after a drop.
fn wait_ready<T>(client: &Client<T>, within: Duration) {
    let until = Instant::now() + within;
    while !client.is_ready() && Instant::now() < until {
        thread::sleep(Duration::from_millis(5));
    }
}

/// Pins the calling thread to `core` with `sched_setaffinity(2)` (Linux; no extra crate: the
/// C library is linked by std already).
#[cfg(target_os = "linux")]
fn pin_current_thread(core: usize) -> Result<(), String> {
    // cpu_set_t as glibc and musl define it: 1024 bits.
    const WORDS: usize = 1024 / 64;
    unsafe extern "C" {
        fn sched_setaffinity(pid: i32, cpusetsize: usize, mask: *const u64) -> i32;
    }
    if core >= WORDS * 64 {
        return Err(format!("core {core} is out of range"));
    }
    let mut set = [0u64; WORDS];
    set[core / 64] |= 1 << (core % 64);
    // SAFETY: `set` is a valid, initialised cpu_set_t-sized buffer that outlives the call;
    // pid 0 means the calling thread.
    let rc = unsafe { sched_setaffinity(0, std::mem::size_of_val(&set), set.as_ptr()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().to_string())
    }
}

#[cfg(not(target_os = "linux"))]
fn pin_current_thread(_core: usize) -> Result<(), String> {
    Err("pinning is only implemented on Linux in this example".into())
}
