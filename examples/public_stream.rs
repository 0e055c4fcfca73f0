//! A public market-data stream in the style of venues whose server pings and expects a pong
//! with the same payload (Binance, Deribit's public feed with heartbeats...): the client never
//! pings ([`Keepalive::ServerDriven`]); syncws answers every server ping from its reader thread
//! through the writer's control lane, ahead of any queued data.
//!
//! In process, the simulated venue (`examples/common/venue.rs`) pings every 200 ms with a fresh
//! payload, checks each pong's payload, and streams ticks on `ticker.BTC-PERPETUAL.100ms` every
//! 50 ms. The ticks are decoded on the reader thread (the `Notifications` ingress) and printed;
//! so are the venue's pong checks. Exits 0 when at least 3 pings were answered with their own
//! payload and the client sent no ping of its own.
//!
//! ```text
//! cargo run --example public_stream
//! ```

#[path = "common/jsonrpc.rs"]
mod jsonrpc;
#[path = "common/venue.rs"]
mod venue;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use jsonrpc::{JsonRpc, Notifications};
use syncws::{Client, Event, Keepalive};

const TICKS: usize = 8;
const PONGS: usize = 3;

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("public_stream: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<bool, Box<dyn std::error::Error>> {
    let venue = venue::Venue::start(venue::Knobs {
        tick_every: Duration::from_millis(50),
        ping_every: Some(Duration::from_millis(200)),
        ..venue::Knobs::default()
    })?;
    println!("venue: {} (pings every 200 ms)", venue.url());

    let client = Client::builder(&venue.url())
        .name("public")
        .endpoint(JsonRpc::public())
        .keepalive(Keepalive::ServerDriven)
        .subscribe("ticker.BTC-PERPETUAL.100ms")
        .connect_with(Notifications)?;

    let deadline = Instant::now() + Duration::from_secs(10);
    let mut ticks = 0;
    let mut shown_checks = 0;
    while ticks < TICKS || shown_checks < PONGS {
        let Ok(event) = client.events().recv_deadline(deadline) else {
            eprintln!("public_stream: timed out ({ticks} ticks, {shown_checks} pong checks)");
            return Ok(false);
        };
        match event {
            Event::SessionReady { epoch } => println!("session: ready on connection {epoch}"),
            Event::Data { value, .. } => {
                ticks += 1;
                if ticks <= TICKS {
                    let price = |k: &str| value.data.get(k).and_then(|v| v.as_f64());
                    println!(
                        "tick {ticks}: {} bid {} ask {}",
                        value.channel,
                        price("best_bid_price").unwrap_or_default(),
                        price("best_ask_price").unwrap_or_default()
                    );
                }
            }
            Event::Closed { info, .. } => {
                eprintln!("public_stream: connection closed: {}", info.cause);
                return Ok(false);
            }
            _ => {}
        }
        let checks = venue.pong_checks();
        for check in checks.iter().skip(shown_checks) {
            println!(
                "pong check: ping {:?} answered with {:?} in {:?}: {}",
                String::from_utf8_lossy(&check.ping),
                String::from_utf8_lossy(&check.pong),
                check.rtt,
                if check.matched() {
                    "same payload"
                } else {
                    "MISMATCH"
                }
            );
        }
        shown_checks = checks.len();
    }

    let checks = venue.pong_checks();
    let all_matched = checks.iter().all(|c| c.matched());
    let client_pings = venue.client_pings();
    let stats = client.stats();
    println!(
        "pings from the venue answered: {} (all with their payload: {all_matched}); \
         pings sent by the client: {client_pings}",
        stats.pings_in
    );
    client.shutdown(Duration::from_secs(1));
    venue.stop();
    Ok(all_matched && client_pings == 0 && checks.len() >= PONGS)
}
