//! `autobahn_client`: the echo agent for the Autobahn|Testsuite fuzzing server, built on syncws'
//! public client API.
//!
//! The fuzzing server plays the server side of every conformance case; this agent is the client
//! under test. It asks for the number of cases (`/getCaseCount`, answered with one text
//! message), then runs each case N on its own connection (`/runCase?case=N&agent=AGENT`),
//! echoing every text message as text and every binary message as binary until the connection
//! ends, and finally asks the server to write its reports (`/updateReports?agent=AGENT`).
//! Pings are answered and close handshakes completed by syncws itself; what the server checks is
//! how the client reacted, which includes failing the connection with the right close code.
//!
//! The client is configured for conformance rather than production: frames and messages up to
//! 64 MiB (the suite sends messages of up to 16 MiB), no keepalive pings of its own (they would
//! be unexpected traffic in a case), and no reconnect.
//!
//! Running it against the official fuzzing server, from a scratch directory holding
//! `fuzzingserver.json`:
//!
//! ```text
//! {
//!   "url": "ws://127.0.0.1:9001",
//!   "outdir": "./reports/clients",
//!   "cases": ["*"],
//!   "exclude-cases": ["12.*", "13.*"],
//!   "exclude-agent-cases": {}
//! }
//! ```
//!
//! (12.* and 13.* are the permessage-deflate cases; syncws offers no compression, so they would
//! only be reported as unimplemented.) Start the server, either with the Python suite
//! (`pip install autobahntestsuite`, a Python 2 package) or with its container image:
//!
//! ```text
//! wstest -m fuzzingserver -s fuzzingserver.json
//! docker run -it --rm -v "$PWD:/config" -v "$PWD/reports:/reports" -p 9001:9001 \
//!     crossbario/autobahn-testsuite wstest -m fuzzingserver -s /config/fuzzingserver.json
//! ```
//!
//! (with the image, set `"outdir": "/reports/clients"`), then run the agent:
//!
//! ```text
//! cargo run --release --example autobahn_client -- --url ws://127.0.0.1:9001 --agent syncws
//! cargo run --release --example autobahn_client -- --cases 1-16   # only cases 1 to 16
//! ```
//!
//! The results are in `reports/clients/index.html`. Progress (`case N/COUNT`) and per-case
//! problems go to stderr. Exit status: 0 once the reports were requested, 1 when the server
//! could not be reached or gave no case count, 2 for a usage error.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use crossbeam_channel::RecvTimeoutError;
use syncws::{Client, ClientBuilder, Event, Frame, Keepalive};

const USAGE: &str = "\
usage: autobahn_client [options]

Runs every case of an Autobahn|Testsuite fuzzing server, echoing each message back.

options:
      --url URL      the fuzzing server (default ws://127.0.0.1:9001)
      --agent NAME   the agent name in the reports (default syncws)
      --cases A-B    run only cases A to B (numbers from 1; `N` alone runs one case)
  -h, --help         print this help and exit";

/// Largest accepted frame and message: above the suite's largest message (16 MiB).
const MAX_SIZE: usize = 64 << 20;

/// A case whose connection shows no event for this long is abandoned (the fuzzing server ends
/// every case by itself well within it).
const CASE_IDLE: Duration = Duration::from_secs(60);

/// Time allowed for the short connections (`getCaseCount`, `updateReports`) to finish.
const SHORT_WAIT: Duration = Duration::from_secs(10);

struct Options {
    url: String,
    agent: String,
    cases: Option<(u32, u32)>,
}

/// Parses the arguments; `Ok(None)` means `--help`.
fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Options>, String> {
    let mut o = Options {
        url: "ws://127.0.0.1:9001".into(),
        agent: "syncws".into(),
        cases: None,
    };
    while let Some(arg) = args.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match name.as_str() {
            "-h" | "--help" => return Ok(None),
            "--url" => o.url = value()?,
            "--agent" => o.agent = value()?,
            "--cases" => o.cases = Some(case_range(&value()?)?),
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    o.url = o.url.trim_end_matches('/').to_string();
    if o.agent.is_empty() {
        return Err("--agent must not be empty".into());
    }
    Ok(Some(o))
}

/// `A-B` (inclusive) or `N`, numbered from 1.
fn case_range(v: &str) -> Result<(u32, u32), String> {
    let bad = || format!("bad --cases {v:?} (expected A-B or N, from 1)");
    let (a, b) = v.split_once('-').unwrap_or((v, v));
    let a: u32 = a.trim().parse().map_err(|_| bad())?;
    let b: u32 = b.trim().parse().map_err(|_| bad())?;
    if a == 0 || b < a {
        return Err(bad());
    }
    Ok((a, b))
}

/// `s` percent-encoded for a query string (unreserved characters kept).
fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A client builder set up for conformance testing.
fn conformance(url: &str) -> ClientBuilder {
    Client::builder(url)
        .name("autobahn")
        .max_frame_size(MAX_SIZE)
        .max_message_size(MAX_SIZE)
        // The server's pings are answered; the client sends none of its own.
        .keepalive(Keepalive::ServerDriven)
    // No `.reconnect(..)`: the default is to stay closed once the connection ends.
}

fn main() -> ExitCode {
    let opts = match parse_args(std::env::args().skip(1)) {
        Ok(Some(opts)) => opts,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("autobahn_client: {e} (try --help)");
            return ExitCode::from(2);
        }
    };
    let count = match case_count(&opts.url) {
        Ok(count) => count,
        Err(e) => {
            eprintln!("autobahn_client: cannot get the case count: {e}");
            return ExitCode::from(1);
        }
    };
    let (first, last) = opts.cases.unwrap_or((1, count));
    let agent = query_escape(&opts.agent);
    for case in first..=last.min(count) {
        eprintln!("case {case}/{count}");
        let url = format!("{}/runCase?case={case}&agent={agent}", opts.url);
        if let Err(e) = run_case(&url) {
            eprintln!("autobahn_client: case {case}: {e}");
        }
    }
    let url = format!("{}/updateReports?agent={agent}", opts.url);
    match update_reports(&url) {
        Ok(()) => {
            eprintln!("reports updated for agent {}", opts.agent);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("autobahn_client: cannot update the reports: {e}");
            ExitCode::from(1)
        }
    }
}

/// Reads the number of cases: the first text message on `/getCaseCount`.
fn case_count(base: &str) -> Result<u32, String> {
    let client = conformance(&format!("{base}/getCaseCount"))
        .connect()
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + SHORT_WAIT;
    let count = loop {
        match client.events().recv_deadline(deadline) {
            Ok(Event::Frame {
                frame: Frame::Text(text),
                ..
            }) => {
                break text
                    .trim()
                    .parse::<u32>()
                    .map_err(|_| format!("not a case count: {text:?}"));
            }
            Ok(Event::Closed { info, .. }) => {
                break Err(format!("closed before the count: {}", info.code));
            }
            Ok(_) => {}
            Err(_) => break Err(format!("no case count within {SHORT_WAIT:?}")),
        }
    };
    // The server closes after the count; shutdown completes (or bounds) that handshake.
    client.shutdown(Duration::from_secs(2));
    count
}

/// Echoes every message of one case until its connection ends.
fn run_case(url: &str) -> Result<(), String> {
    let client = conformance(url).connect().map_err(|e| e.to_string())?;
    let outcome = loop {
        match client.events().recv_timeout(CASE_IDLE) {
            Ok(Event::Frame {
                frame: frame @ (Frame::Text(_) | Frame::Binary(_)),
                ..
            }) => {
                // Text stays text and binary stays binary: the frame goes back as it came. A
                // send refused because the connection is already closing is no error here: the
                // case goes on until `Closed`.
                let _ = client.send(frame);
            }
            Ok(Event::Closed { .. }) => break Ok(()),
            Ok(_) => {}
            Err(RecvTimeoutError::Timeout) => {
                break Err(format!("no event for {CASE_IDLE:?}; abandoned"));
            }
            Err(RecvTimeoutError::Disconnected) => break Ok(()),
        }
    };
    client.shutdown(Duration::from_secs(2));
    outcome
}

/// Asks the server to write its reports, then closes.
fn update_reports(url: &str) -> Result<(), String> {
    let client = conformance(url).connect().map_err(|e| e.to_string())?;
    // The request is the connection itself; a normal close (1000) ends it.
    client.shutdown(SHORT_WAIT);
    Ok(())
}
