//! A local venue speaking a Deribit-style JSON-RPC 2.0 dialect, for trying clients against:
//! `public/auth`, `public/subscribe` (ticker channels, pushed every 100 ms), `private/buy` and
//! `private/sell` (confirmed by id; some refused with `too_many_requests` and
//! `error.data.retry_after_ms`). The dialect and every knob are documented in
//! `examples/common/venue.rs`, which `tests/requests.rs` drives too.
//!
//! ```text
//! cargo run --example exchange_sim                          # free port, printed on stdout
//! cargo run --example exchange_sim -- --port 8765 --flaky   # drops connections, delays answers
//! cargo run --example trader -- --url ws://127.0.0.1:8765/ws/api/v2
//! ```
//!
//! Options: `--port P` (default 0: a free port), `--reject-every K` (default 5; 0 for none),
//! `--retry-after-ms MS` (default 500), `--delay-ms D` (delay every answer), `--flaky`
//! (seeded random drops before/after answering, delays up to 1.5 s, extra rejections),
//! `--seed S` (for `--flaky`, default 1), `--ping-ms MS` (ping clients and check their pongs),
//! `--for-secs N` (exit after N seconds; default: run until killed).
//!
//! The first line on stdout is `listening on ws://127.0.0.1:PORT/ws/api/v2`; every request
//! received is then printed as `recv conn=C id=N method=M answer=A`.

#[path = "common/venue.rs"]
mod venue;

use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use venue::{Flaky, Knobs, Venue};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("exchange_sim: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut port = 0u16;
    let mut flaky = false;
    let mut seed = 1u64;
    let mut for_secs = None;
    let mut knobs = Knobs {
        reject_every: Some(5),
        ..Knobs::default()
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || -> Result<u64, String> {
            let v = it.next().ok_or(format!("{arg} needs a value"))?;
            v.parse().map_err(|_| format!("{arg}: not a number: {v:?}"))
        };
        match arg.as_str() {
            "--port" => port = u16::try_from(value()?)?,
            "--reject-every" => knobs.reject_every = Some(value()?).filter(|k| *k > 0),
            "--retry-after-ms" => knobs.retry_after = Duration::from_millis(value()?),
            "--delay-ms" => knobs.delay = Duration::from_millis(value()?),
            "--seed" => seed = value()?,
            "--ping-ms" => knobs.ping_every = Some(Duration::from_millis(value()?.max(1))),
            "--for-secs" => for_secs = Some(Duration::from_secs(value()?)),
            "--flaky" => flaky = true,
            "-h" | "--help" => {
                println!(
                    "usage: exchange_sim [--port P] [--reject-every K] [--retry-after-ms MS] \
                     [--delay-ms D] [--flaky] [--seed S] [--ping-ms MS] [--for-secs N]"
                );
                return Ok(());
            }
            other => return Err(format!("unknown argument {other:?} (try --help)").into()),
        }
    }
    if flaky {
        knobs.flaky = Some(Flaky::demo(seed));
    }
    let venue = Venue::bind(&format!("127.0.0.1:{port}"), knobs)?;
    println!("listening on {}", venue.url());
    if flaky {
        println!("flaky mode: seed {seed}; drops connections and delays answers");
    }

    let started = Instant::now();
    let mut shown = 0;
    loop {
        for r in venue.received_from(shown) {
            shown += 1;
            let id = r.id.map_or("null".to_string(), |id| id.to_string());
            let mut line = format!(
                "recv conn={} id={id} method={} answer={:?}",
                r.conn, r.method, r.answer
            );
            if r.delay > Duration::ZERO {
                line += &format!(" delay={:?}", r.delay);
            }
            if let Some(when) = r.drop {
                line += &format!(" drop={when:?}");
            }
            println!("{line}");
        }
        if for_secs.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    let checks = venue.pong_checks();
    if !checks.is_empty() {
        let matched = checks.iter().filter(|c| c.matched()).count();
        println!("pongs: {matched} of {} matched their ping", checks.len());
    }
    venue.stop();
    Ok(())
}
