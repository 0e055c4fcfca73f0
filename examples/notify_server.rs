//! A notifications service on the syncws hub: token admission, channels with history and
//! recovery, a page for browsers.
//!
//! ```text
//! cargo run --example notify_server -- --port 9001
//! cargo run --example notify_server -- --port 9001 --max-connections 5000 --max-per-ip 50 \
//!     --tokens alice:s1,bob:s2
//! ```
//!
//! Options: `--port P` (default 9001; 0 for a free port), `--host H` (default 127.0.0.1),
//! `--max-connections N` (default 10,000), `--max-per-ip N` (default 1,000), `--tokens
//! user:token,...` (default `alice:s1,bob:s2`), `--redis redis://HOST:PORT` (share channels,
//! history and recovery with every other node on that Redis; needs `--features redis`),
//! `--deflate` (accept permessage-deflate from clients that offer it). The first line on stdout is
//! `listening on ws://HOST:PORT/ws`. SIGINT or SIGTERM drains: every client gets close 1001,
//! and the process exits within 5 s.
//!
//! Clients connect to `ws://HOST:PORT/ws` with `Authorization: Bearer <token>` or
//! `?token=<token>`; no or a wrong token gets `401`. `GET /` serves a page that logs in,
//! subscribes, publishes and shows live messages, reconnecting and recovering by itself.
//!
//! The wire format (JSON text frames):
//!
//! ```text
//! → {"op":"subscribe","channel":C}            or with "since":{"epoch":E,"offset":N}
//! ← {"op":"subscribed","channel":C,"epoch":E,"offset":N,"recovered":true|false}
//!   then the missed messages, then live ones
//! → {"op":"publish","channel":C,"data":ANY}
//! ← (to every subscriber of C) {"op":"message","channel":C,"epoch":E,"offset":N,"from":USER,"data":ANY}
//! → {"op":"unsubscribe","channel":C}
//! ← {"op":"unsubscribed","channel":C}
//! ← {"op":"error","code":CODE,"message":TEXT}   (the connection stays usable)
//! ```
//!
//! Offsets per channel start at 1 and go up by one per publication; `subscribed.offset` is the
//! newest publication's offset (0 before any); `since.offset` means "I have everything up to and
//! including this offset". `recovered` is true when the missed publications were replayed
//! exactly; false (nothing replayed, live from `subscribed.offset`) when history no longer
//! covers the gap, when the epoch is unknown, or when no `since` was given. Error codes:
//! `bad_json`, `bad_request`, `unknown_op`, `already_subscribed`, `not_subscribed`,
//! `not_authorized`, `unavailable`.
//!
//! Two nodes on one machine sharing one Redis (a client may reconnect to either and recover):
//!
//! ```text
//! redis-server --port 6379 &
//! cargo run --features redis --example notify_server -- --port 9001 --redis redis://127.0.0.1:6379 &
//! cargo run --features redis --example notify_server -- --port 9002 --redis redis://127.0.0.1:6379 &
//! ```
//!
//! If a channel's history is lost (Redis restarted without persistence), its subscribers get an
//! unprompted `{"op":"subscribed",...,"recovered":false}` with the new epoch: an epoch never
//! changes silently.
//!
//! Limits (the hub's defaults): 200 inbound messages/s per connection with bursts of 500 (past
//! it: close 1008), 2,048 queued messages or 4 MiB per connection (past it: close 4008), history
//! of 1,000 publications or 5 minutes per channel, handshakes within 5 s, messages up to 1 MiB.

use std::collections::HashMap;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{Value, json};
use syncws::Data;
use syncws::hub::{
    Admission, Conn, Handler, Hub, HubConfig, JoinError, Message, Position, Publication, Request,
    Response,
};

const PAGE: &str = include_str!("common/notify_page.html");

struct Notify {
    /// token → user
    tokens: HashMap<String, String>,
}

/// A JSON object with its keys in the order given (`"op"` first, for humans and for clients
/// that recognise a reply by its first bytes).
fn object(pairs: &[(&str, Value)]) -> String {
    let fields: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{}:{v}", Value::from(*k)))
        .collect();
    format!("{{{}}}", fields.join(","))
}

fn error(code: &str, message: impl Into<String>) -> Message {
    Message::text(object(&[
        ("op", json!("error")),
        ("code", json!(code)),
        ("message", json!(message.into())),
    ]))
}

impl Handler for Notify {
    fn admit(&self, request: &Request<'_>) -> Admission {
        match (request.is_upgrade(), request.path()) {
            (false, "/") if request.method() == "GET" => Response::html(PAGE).into(),
            (true, "/ws") => {
                let token = request
                    .bearer_token()
                    .or_else(|| request.query_param("token"));
                match token.and_then(|t| self.tokens.get(t)) {
                    Some(user) => Admission::accept().user(user.clone()),
                    None => Admission::reject(401, "missing or unknown token"),
                }
            }
            _ => Admission::reject(404, "not found"),
        }
    }

    fn on_message(&self, conn: &Conn, message: Data<'_>) {
        let Data::Text(text) = message else {
            let _ = conn.send(&error("bad_request", "text JSON frames only"));
            return;
        };
        let request: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                let _ = conn.send(&error("bad_json", e.to_string()));
                return;
            }
        };
        let op = request.get("op").and_then(Value::as_str).unwrap_or("");
        let channel = request
            .get("channel")
            .and_then(Value::as_str)
            .filter(|c| !c.is_empty() && c.len() <= 200);
        let reply = match (op, channel) {
            ("subscribe", Some(channel)) => subscribe(conn, channel, request.get("since")),
            ("publish", Some(channel)) => {
                let data = request.get("data").cloned().unwrap_or(Value::Null);
                let stored = object(&[("from", json!(conn.user().unwrap_or(""))), ("data", data)]);
                match conn.hub().publish(channel, stored) {
                    Ok(_) => None,
                    Err(e) => Some(error("unavailable", e.to_string())),
                }
            }
            ("unsubscribe", Some(channel)) => Some(if conn.hub().leave(conn, channel) {
                Message::text(object(&[
                    ("op", json!("unsubscribed")),
                    ("channel", json!(channel)),
                ]))
            } else {
                error("not_subscribed", format!("not subscribed to {channel}"))
            }),
            ("subscribe" | "publish" | "unsubscribe", None) => Some(error(
                "bad_request",
                "\"channel\" must be a non-empty string",
            )),
            (other, _) => Some(error("unknown_op", format!("unknown op {other:?}"))),
        };
        if let Some(reply) = reply {
            let _ = conn.send(&reply);
        }
    }

    /// A channel's stream was reset: an unprompted `subscribed` with the new position.
    fn on_reset(&self, channel: &str, position: &Position) -> Option<Message> {
        Some(Message::text(object(&[
            ("op", json!("subscribed")),
            ("channel", json!(channel)),
            ("epoch", json!(&*position.epoch)),
            ("offset", json!(position.offset)),
            ("recovered", json!(false)),
        ])))
    }

    /// `{"op":"message",...}` spliced around the stored `{"from":...,"data":...}`: one
    /// allocation per publication, whatever the number of subscribers.
    fn encode(&self, p: &Publication) -> Message {
        let stored = String::from_utf8_lossy(&p.data);
        let head = object(&[
            ("op", json!("message")),
            ("channel", json!(&*p.room)),
            ("epoch", json!(&*p.position.epoch)),
            ("offset", json!(p.position.offset)),
        ]);
        let mut text = String::with_capacity(head.len() + stored.len());
        text.push_str(&head[..head.len() - 1]);
        text.push(',');
        text.push_str(stored.strip_prefix('{').unwrap_or(&stored));
        Message::text(text)
    }
}

/// Joins `channel`, replaying what the client missed since `since`; the `subscribed` reply goes
/// out first, built under the channel's order so nothing slips in between.
fn subscribe(conn: &Conn, channel: &str, since: Option<&Value>) -> Option<Message> {
    let since = match since {
        None | Some(Value::Null) => None,
        Some(s) => {
            let epoch = match s.get("epoch") {
                Some(Value::String(e)) => e.clone(),
                Some(Value::Number(n)) => n.to_string(),
                _ => return Some(error("bad_request", "\"since.epoch\" must be a string")),
            };
            let Some(offset) = s.get("offset").and_then(Value::as_u64) else {
                return Some(error(
                    "bad_request",
                    "\"since.offset\" must be a whole number",
                ));
            };
            Some(Position {
                epoch: epoch.into(),
                offset,
            })
        }
    };
    let joined = conn.hub().join(conn, channel, since.as_ref(), |j| {
        Some(Message::text(object(&[
            ("op", json!("subscribed")),
            ("channel", json!(channel)),
            ("epoch", json!(&*j.position.epoch)),
            ("offset", json!(j.position.offset)),
            ("recovered", json!(j.recovered)),
        ])))
    });
    match joined {
        Ok(_) => None,
        Err(JoinError::AlreadyMember) => Some(error(
            "already_subscribed",
            format!("already subscribed to {channel}"),
        )),
        Err(JoinError::NotAuthorized) => Some(error("not_authorized", "not allowed")),
        Err(JoinError::Closed | JoinError::OtherHub) => None,
        Err(e) => Some(error("unavailable", e.to_string())),
    }
}

#[cfg(feature = "redis")]
fn bind_redis(
    addr: (&str, u16),
    config: HubConfig,
    notify: Notify,
    url: String,
) -> Result<Hub, Box<dyn std::error::Error>> {
    use syncws::hub::redis::{RedisBroker, RedisConfig};
    let broker = RedisBroker::new(RedisConfig {
        url,
        history: config.history,
        ..RedisConfig::default()
    })?;
    Ok(Hub::bind_with_broker(
        addr,
        config,
        notify,
        std::sync::Arc::new(broker),
    )?)
}

#[cfg(not(feature = "redis"))]
fn bind_redis(
    _addr: (&str, u16),
    _config: HubConfig,
    _notify: Notify,
    _url: String,
) -> Result<Hub, Box<dyn std::error::Error>> {
    Err(
        "--redis needs the redis feature: cargo run --features redis --example notify_server"
            .into(),
    )
}

/// Blocks SIGINT and SIGTERM in every thread (call before any thread starts), so that
/// [`wait_for_signal`] receives them.
fn block_signals() -> libc::sigset_t {
    // SAFETY: plain signal-mask calls on a set owned here.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_for_signal(set: &libc::sigset_t) -> i32 {
    let mut sig = 0;
    // SAFETY: `set` is a valid signal set; `sig` is written by the call.
    unsafe { libc::sigwait(set, &mut sig) };
    sig
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("notify_server: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut port = 9001u16;
    let mut host = "127.0.0.1".to_string();
    let mut config = HubConfig::default();
    let mut tokens = "alice:s1,bob:s2".to_string();
    let mut redis_url: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--port" => port = value()?.parse()?,
            "--host" => host = value()?,
            "--max-connections" => config.max_connections = value()?.parse()?,
            "--max-per-ip" => config.max_per_ip = value()?.parse()?,
            "--tokens" => tokens = value()?,
            "--deflate" => config.deflate = true,
            "--redis" => redis_url = Some(value()?),
            other => return Err(format!("unknown option {other}").into()),
        }
    }
    let mut map = HashMap::new();
    for pair in tokens.split(',').filter(|p| !p.is_empty()) {
        let (user, token) = pair
            .split_once(':')
            .ok_or(format!("--tokens: {pair:?} is not user:token"))?;
        map.insert(token.to_string(), user.to_string());
    }
    let signals = block_signals();
    let notify = Notify { tokens: map };
    let hub = match redis_url {
        None => Hub::bind((host.as_str(), port), config, notify)?,
        Some(url) => bind_redis((host.as_str(), port), config, notify, url)?,
    };
    println!("listening on ws://{}/ws", hub.local_addr());
    std::io::stdout().flush()?;
    let sig = wait_for_signal(&signals);
    eprintln!("notify_server: signal {sig}, draining");
    let report = hub.shutdown(Duration::from_secs(4));
    eprintln!("notify_server: drained: {report:?}");
    Ok(())
}
