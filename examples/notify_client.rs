//! A client of `notify_server` built on the syncws client: it subscribes, and on every
//! reconnect re-subscribes from the last position it has, so the hub replays exactly what it
//! missed (the two halves of syncws tested against each other).
//!
//! ```text
//! cargo run --example notify_server -- --port 9001 &
//! cargo run --example notify_client -- --url ws://127.0.0.1:9001/ws --token s1 --channel news
//! cargo run --example notify_client -- --url ws://127.0.0.1:9001/ws --token s2 \
//!     --channel news --publish 10 --every-ms 100
//! ```
//!
//! Options: `--url URL` (default `ws://127.0.0.1:9001/ws`), `--token T` (default `s1`, sent as
//! `Authorization: Bearer T`), `--channel C` (repeatable; default `news`), `--publish N`
//! (publish `N` messages `{"n":1}`, `{"n":2}`… to the first channel once subscribed),
//! `--every-ms MS` (between publications, default 0), `--count K` (exit after `K` messages;
//! default: run until killed).
//!
//! Output, one line each: `connected epoch=K`, `subscribed channel=C epoch=E offset=N
//! recovered=B`, `message channel=C epoch=E offset=N from=U data=D`, and `gap channel=C
//! after=N got=M` or `history-lost channel=C` when a reconnect could not recover. Messages at or
//! below the last offset seen (a replay overlapping what was already received) are skipped.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::{Value, json};
use syncws::{Backoff, Client, Data, Endpoint, Event, Frame, Precheck, Reply};

/// Per channel: the epoch and the last offset the application has processed.
type Positions = Arc<Mutex<HashMap<String, (String, u64)>>>;

/// The notify protocol as a syncws endpoint: subscriptions carry `since`, acknowledged by
/// `subscribed`.
struct Notify {
    positions: Positions,
}

impl Endpoint for Notify {
    fn subscribe(&mut self, topic: &str) -> Option<Frame> {
        let mut request = json!({"op": "subscribe", "channel": topic});
        if let Some((epoch, offset)) = self.positions.lock().get(topic) {
            request["since"] = json!({"epoch": epoch, "offset": offset});
        }
        Some(Frame::text(request.to_string()))
    }

    fn precheck(&self) -> Option<Precheck> {
        Some(Arc::new(|d: Data<'_>| {
            const SUBSCRIBED: &[u8] = br#""op":"subscribed""#;
            d.as_bytes()
                .windows(SUBSCRIBED.len())
                .any(|w| w == SUBSCRIBED)
        }))
    }

    fn parse_reply(&mut self, message: Data<'_>) -> Option<Reply> {
        let v: Value = serde_json::from_slice(message.as_bytes()).ok()?;
        if v["op"] != "subscribed" {
            return None;
        }
        Some(Reply::Subscribed(v["channel"].as_str()?.to_string()))
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("notify_client: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut url = "ws://127.0.0.1:9001/ws".to_string();
    let mut token = "s1".to_string();
    let mut channels = Vec::new();
    let mut publish = 0u64;
    let mut every = Duration::ZERO;
    let mut count = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--url" => url = value()?,
            "--token" => token = value()?,
            "--channel" => channels.push(value()?),
            "--publish" => publish = value()?.parse()?,
            "--every-ms" => every = Duration::from_millis(value()?.parse()?),
            "--count" => count = Some(value()?.parse::<u64>()?),
            other => return Err(format!("unknown option {other}").into()),
        }
    }
    if channels.is_empty() {
        channels.push("news".into());
    }
    let positions: Positions = Arc::default();
    let mut builder = Client::builder(&url)
        .header("Authorization", format!("Bearer {token}"))
        .endpoint(Notify {
            positions: positions.clone(),
        })
        .reconnect(Backoff::new(Duration::from_millis(50), Duration::from_secs(2)).seed(7));
    for c in &channels {
        builder = builder.subscribe(c.clone());
    }
    let client = builder.connect()?;
    let mut received = 0u64;
    let mut published = 0u64;
    let mut next_publish = std::time::Instant::now();
    loop {
        let wait = if published < publish {
            next_publish.saturating_duration_since(std::time::Instant::now())
        } else {
            Duration::from_secs(3600)
        };
        match client.events().recv_timeout(wait) {
            Ok(Event::Connected { epoch, .. }) => println!("connected epoch={epoch}"),
            Ok(Event::Frame { frame, .. }) => {
                let payload = frame.payload().unwrap_or_default();
                let Ok(v) = serde_json::from_slice::<Value>(payload) else {
                    continue;
                };
                let channel = v["channel"].as_str().unwrap_or("").to_string();
                let epoch = v["epoch"].as_str().unwrap_or("").to_string();
                let offset = v["offset"].as_u64().unwrap_or(0);
                match v["op"].as_str() {
                    Some("subscribed") => {
                        let recovered = v["recovered"].as_bool().unwrap_or(false);
                        let mut p = positions.lock();
                        if p.contains_key(&channel) && !recovered {
                            println!("history-lost channel={channel}");
                        }
                        // Keep our own position when the replay continues from it.
                        if !recovered || !p.contains_key(&channel) {
                            p.insert(channel.clone(), (epoch.clone(), offset));
                        }
                        println!(
                            "subscribed channel={channel} epoch={epoch} offset={offset} recovered={recovered}"
                        );
                    }
                    Some("message") => {
                        let mut p = positions.lock();
                        if let Some((e, last)) = p.get(&channel) {
                            if *e == epoch && offset <= *last {
                                continue; // already processed
                            }
                            if *e == epoch && offset != last + 1 {
                                println!("gap channel={channel} after={last} got={offset}");
                            }
                        }
                        p.insert(channel.clone(), (epoch.clone(), offset));
                        drop(p);
                        println!(
                            "message channel={channel} epoch={epoch} offset={offset} from={} data={}",
                            v["from"].as_str().unwrap_or(""),
                            v["data"]
                        );
                        received += 1;
                        if count.is_some_and(|c| received >= c) {
                            client.shutdown(Duration::from_secs(1));
                            return Ok(());
                        }
                    }
                    _ => println!("{}", String::from_utf8_lossy(payload)),
                }
            }
            Ok(Event::Closed { info, .. }) => {
                println!("closed code={} by={:?}", info.code.0, info.initiator)
            }
            Ok(_) => {}
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            Err(e) => return Err(e.into()),
        }
        if published < publish && std::time::Instant::now() >= next_publish && client.is_ready() {
            published += 1;
            let m = json!({"op": "publish", "channel": channels[0], "data": {"n": published}});
            client.send(Frame::text(m.to_string()))?;
            next_publish = std::time::Instant::now() + every;
        }
    }
}
