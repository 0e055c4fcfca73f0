//! `wscat`: a small command-line WebSocket client built on syncws.
//!
//! Each stdin line (without its line ending) is sent as a text frame. Each incoming frame is
//! printed on its own stdout line: text as is, binary as lowercase hex, pongs as `pong PAYLOAD`,
//! and the end of the connection as `close CODE REASON`. At end of input (Ctrl+D) it keeps
//! printing what arrives for `--wait` seconds (1 by default, so piped input gets its answers),
//! then closes with 1000 and waits, bounded, for the close handshake. So stdout holds only frames and that final
//! close line; everything else goes to stderr: errors as `wscat: ...`, and the connection's
//! lifecycle as `# ...` lines:
//!
//! ```text
//! # connected (epoch 1)
//! # session ready (epoch 1)
//! # closed epoch 1: server closed with close code 1001; reconnecting in 63 ms
//! # connecting (attempt 2)
//! # connect failed (attempt 2): could not connect to 127.0.0.1:9001: Connection refused ...; retrying in 148 ms
//! ```
//!
//! With `--reconnect` a lost connection is not the end: wscat reconnects on syncws' default
//! backoff (100 ms doubling to 30 s, full jitter seeded with the process id, forever) and goes
//! on; stdin lines typed while it is disconnected are not sent (`# not sent: ...`). The first
//! connection must still succeed (a failed first attempt exits 1), and end of input still
//! closes and exits 0, connected or not. `--ping-interval` and `--stale-after` set how a dead
//! link is detected: a protocol ping every SECS seconds that must be answered within SECS
//! seconds (`0`: never ping, only answer the server's pings), and a connection dropped when no
//! message arrives for SECS seconds.
//!
//! ```text
//! cargo run --example wscat -- wss://echo.example.com/
//! echo '{"op":"subscribe"}' | cargo run --example wscat -- -H "Authorization: Bearer t0k" wss://host/ws
//! cargo run --example wscat -- --ca-file my-ca.pem --subprotocol v2.json wss://internal:8443/feed
//! cargo run --example wscat -- --ping hello ws://127.0.0.1:9001/ < /dev/null
//! cargo run --example wscat -- --reconnect --ping-interval 5 --stale-after 30 wss://host/feed
//! ```
//!
//! Exit status: 0 after a clean close (whoever started it) or at end of input while
//! disconnected; 1 when the connection fails or ends without a close handshake and no reconnect
//! follows (with `--reconnect`: when the first connection fails, or a reconnect is refused for
//! good, such as HTTP 401); 2 for a usage error (bad option, URL or CA file).

use std::io::{self, BufRead, Write};
use std::process::ExitCode;
use std::thread;
use std::time::Duration;

use crossbeam_channel::{Receiver, after, bounded, never, select};
use syncws::{Backoff, Cause, Client, CloseCode, Event, Frame, Keepalive};

const USAGE: &str = "\
usage: wscat [options] URL

Sends each stdin line as a text frame; prints each incoming frame on a stdout line
(text as is, binary as hex), then `close CODE REASON`. EOF on stdin closes with 1000
after --wait seconds.
Errors and lifecycle events (`# connected (epoch N)`, ...) go to stderr.

options:
  -H, --header 'Name: value'  add a header to the upgrade request (repeatable)
      --ca-file PATH          trust the PEM certificates in PATH (in addition to webpki roots)
      --insecure              DO NOT verify the server certificate (testing only)
      --deflate               offer permessage-deflate; the negotiated parameters go to stderr
      --proxy URL             connect through a proxy: http://[user:pass@]host:port (CONNECT),
                              https://... (CONNECT over TLS to the proxy; --ca-file applies)
                              or socks5://[user:pass@]host:port (names resolved by the proxy)
      --subprotocol P         offer subprotocol P (repeatable, in preference order)
      --max-frame BYTES       largest accepted inbound frame
      --max-message BYTES     largest accepted inbound message
      --connect-timeout SECS  time allowed to open the connection (TCP, TLS and upgrade)
      --ping TEXT             send a ping after connecting (the answer prints as `pong TEXT`)
      --reconnect             reconnect after a lost connection (exponential backoff with
                              jitter, forever) instead of exiting; EOF still closes and exits
      --ping-interval SECS    ping every SECS seconds; no pong within SECS seconds drops the
                              connection (0: never ping, only answer the server; default 15)
      --stale-after SECS      drop the connection when no message arrives for SECS seconds
      --rotate-after SECS     replace the connection every SECS seconds, make-before-break:
                              a second connection is opened and its session restored before
                              the first closes with 1000 (`# rotated (epoch A -> B)`);
                              frames around a switch may print twice, never go missing
  -w, --wait SECS             at end of input, keep printing what arrives for SECS seconds
                              before closing (default 1; 0 closes at once), so that piped
                              input gets its answers
  -h, --help                  print this help and exit";

/// How long `--wait` keeps reading after end of input by default.
const DEFAULT_WAIT: Duration = Duration::from_secs(1);

/// How long to wait for `Closed` beyond the library's own close timeout (2 s by default).
const CLOSE_GRACE: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Options {
    url: String,
    headers: Vec<(String, String)>,
    ca_file: Option<String>,
    insecure: bool,
    proxy: Option<String>,
    deflate: bool,
    subprotocols: Vec<String>,
    max_frame: Option<usize>,
    max_message: Option<usize>,
    connect_timeout: Option<Duration>,
    ping: Option<String>,
    reconnect: bool,
    keepalive: Option<Keepalive>,
    stale_after: Option<Duration>,
    rotate_after: Option<Duration>,
    /// How long to keep reading after end of input before closing.
    wait: Duration,
}

/// Parses the arguments; `Ok(None)` means `--help`.
fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Options>, String> {
    let mut o = Options {
        wait: DEFAULT_WAIT,
        ..Options::default()
    };
    let mut url = None;
    while let Some(arg) = args.next() {
        // `--name=value` is accepted as well as `--name value`.
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
            "-H" | "--header" => {
                let v = value()?;
                let (n, val) = v
                    .split_once(':')
                    .ok_or_else(|| format!("header {v:?} is not 'Name: value'"))?;
                o.headers
                    .push((n.trim().to_string(), val.trim().to_string()));
            }
            "--ca-file" => o.ca_file = Some(value()?),
            "--insecure" => o.insecure = true,
            "--proxy" => o.proxy = Some(value()?),
            "--deflate" => o.deflate = true,
            "--subprotocol" => o.subprotocols.push(value()?),
            "--max-frame" => o.max_frame = Some(number(&name, &value()?)?),
            "--max-message" => o.max_message = Some(number(&name, &value()?)?),
            "--connect-timeout" => o.connect_timeout = Some(seconds(&name, &value()?)?),
            "--ping" => o.ping = Some(value()?),
            "--reconnect" => o.reconnect = true,
            "--ping-interval" => {
                let every = seconds(&name, &value()?)?;
                o.keepalive = Some(if every.is_zero() {
                    Keepalive::ServerDriven
                } else {
                    Keepalive::Ping {
                        interval: every,
                        timeout: every,
                    }
                });
            }
            "-w" | "--wait" => {
                let v = value()?;
                o.wait = seconds(&name, &v)?;
            }
            "--stale-after" => {
                let v = value()?;
                let window = seconds(&name, &v)?;
                if window.is_zero() {
                    return Err(format!("bad {name} {v:?} (must be more than 0)"));
                }
                o.stale_after = Some(window);
            }
            "--rotate-after" => {
                let v = value()?;
                let lifetime = seconds(&name, &v)?;
                if lifetime.is_zero() {
                    return Err(format!("bad {name} {v:?} (must be more than 0)"));
                }
                o.rotate_after = Some(lifetime);
            }
            s if s.starts_with('-') && s.len() > 1 => return Err(format!("unknown option {s}")),
            _ if url.is_some() => return Err(format!("unexpected argument {arg:?}")),
            _ => url = Some(arg),
        }
    }
    o.url = url.ok_or("missing URL")?;
    Ok(Some(o))
}

fn number(name: &str, v: &str) -> Result<usize, String> {
    v.parse().map_err(|_| format!("bad {name} {v:?}"))
}

/// A non-negative, finite number of seconds (`1`, `0.25`).
fn seconds(name: &str, v: &str) -> Result<Duration, String> {
    let secs = v.parse::<f64>().ok();
    secs.and_then(|s| Duration::try_from_secs_f64(s).ok())
        .ok_or_else(|| format!("bad {name} {v:?} (seconds expected)"))
}

/// Prints `wscat: MESSAGE` on one stderr line (line breaks folded) and returns `code`.
fn fail(code: u8, msg: impl std::fmt::Display) -> ExitCode {
    let msg = msg.to_string();
    eprintln!(
        "wscat: {}",
        msg.split_whitespace().collect::<Vec<_>>().join(" ")
    );
    ExitCode::from(code)
}

fn main() -> ExitCode {
    let opts = match parse_args(std::env::args().skip(1)) {
        Ok(Some(opts)) => opts,
        Ok(None) => {
            let _ = writeln!(io::stdout(), "{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => return fail(2, format!("{e} (try --help)")),
    };
    let mut builder = Client::builder(&opts.url).name("wscat");
    for (name, value) in &opts.headers {
        builder = builder.header(name, value);
    }
    for p in &opts.subprotocols {
        builder = builder.subprotocol(p);
    }
    if let Some(path) = &opts.ca_file {
        let certs = std::fs::read(path)
            .map_err(|e| format!("cannot read {path}: {e}"))
            .and_then(|pem| {
                syncws::certificates_from_pem(&pem).map_err(|e| format!("{path}: {e}"))
            });
        match certs {
            Ok(certs) => {
                builder = certs
                    .into_iter()
                    .fold(builder, |b, c| b.add_root_certificate(c))
            }
            Err(e) => return fail(2, e),
        }
    }
    if opts.deflate {
        builder = builder.deflate(syncws::DeflateParams::default());
    }
    if let Some(url) = &opts.proxy {
        match syncws::Proxy::parse(url) {
            Ok(p) => builder = builder.proxy(p),
            Err(e) => return fail(2, format!("--proxy: {e}")),
        }
    }
    if opts.insecure {
        eprintln!("wscat: WARNING: TLS certificate verification is disabled (--insecure)");
        builder = builder.dangerous_disable_certificate_verification();
    }
    if let Some(n) = opts.max_frame {
        builder = builder.max_frame_size(n);
    }
    if let Some(n) = opts.max_message {
        builder = builder.max_message_size(n);
    }
    if let Some(t) = opts.connect_timeout {
        builder = builder.connect_timeout(t).handshake_timeout(t);
    }
    if let Some(keepalive) = opts.keepalive {
        builder = builder.keepalive(keepalive);
    }
    if let Some(lifetime) = opts.rotate_after {
        builder = builder.rotate_after(lifetime);
    }
    if let Some(window) = opts.stale_after {
        builder = builder.stale_after(window);
    }
    if opts.reconnect {
        // Seeded per process, so many wscats dropped at once do not retry in lockstep.
        builder = builder.reconnect(Backoff::default().seed(u64::from(std::process::id())));
    }
    let client = match builder.connect() {
        Ok(client) => client,
        Err(e @ (syncws::Error::Url(_) | syncws::Error::Config(_))) => return fail(2, e),
        Err(e) => return fail(1, e),
    };
    if let Some(p) = client.protocol() {
        eprintln!("wscat: subprotocol {p}");
    }
    if opts.deflate {
        match client.deflate() {
            Some(p) => eprintln!(
                "wscat: permessage-deflate server_no_context_takeover={} client_no_context_takeover={} server_max_window_bits={} client_max_window_bits={}",
                p.server_no_context_takeover,
                p.client_no_context_takeover,
                p.server_max_window_bits.unwrap_or(15),
                p.client_max_window_bits.unwrap_or(15)
            ),
            None => eprintln!("wscat: permessage-deflate not accepted by the server"),
        }
    }
    if let Some(text) = &opts.ping
        && let Err(e) = client.ping(text.as_bytes())
    {
        return fail(1, format!("ping: {e}"));
    }
    let lines = match spawn_stdin_reader() {
        Ok(lines) => lines,
        Err(e) => return fail(1, format!("cannot start the stdin thread: {e}")),
    };
    let code = run(&client, lines, opts.wait);
    client.shutdown(Duration::from_secs(1));
    code
}

/// A named thread reading stdin lines; the channel disconnects at EOF (or on a read error).
fn spawn_stdin_reader() -> io::Result<Receiver<String>> {
    let (tx, rx) = bounded(64);
    thread::Builder::new()
        .name("wscat-stdin".into())
        .spawn(move || {
            let mut stdin = io::stdin().lock();
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match stdin.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if tx.send(String::from_utf8_lossy(line).into_owned()).is_err() {
                    return;
                }
            }
        })?;
    Ok(rx)
}

/// A lifecycle line on stderr (`# ...`).
fn status(msg: impl std::fmt::Display) {
    eprintln!("# {msg}");
}

/// ` reconnecting in X ms` / ` retrying in X ms`, or nothing when no attempt follows.
fn next_attempt(verb: &str, delay: Option<Duration>) -> String {
    delay.map_or_else(String::new, |d| format!("; {verb} in {} ms", d.as_millis()))
}

/// Pumps stdin lines to the server and events to stdout until the connection ends for good
/// (without `--reconnect`: the first time it ends).
fn run(
    client: &Client<std::convert::Infallible>,
    lines: Receiver<String>,
    wait: Duration,
) -> ExitCode {
    let mut stdout = io::stdout().lock();
    let mut lines = Some(lines);
    let (no_input, mut give_up, mut close_at) = (never(), never(), never());
    // True while a connection's `Closed` event is still to come (`connect` opened the first).
    let mut open = true;
    loop {
        let input = lines.as_ref().unwrap_or(&no_input);
        let line = select! {
            recv(input) -> line => line,
            recv(client.events().batches()) -> batch => {
                // Events come in batches (those decoded from one read): `continue` below
                // moves on to the batch's next event.
                let Ok(batch) = batch else {
                    return fail(1, "connection ended without a Closed event");
                };
                for event in batch {
                    let text = match event {
                        Event::Frame { frame: Frame::Text(t), .. } => t.to_string(),
                        Event::Frame { frame: Frame::Binary(b), .. } => {
                            b.iter().map(|x| format!("{x:02x}")).collect()
                        }
                        Event::Pong { payload, .. } => {
                            format!("pong {}", String::from_utf8_lossy(&payload))
                        }
                        Event::Connecting { attempt } => {
                            status(format_args!("connecting (attempt {attempt})"));
                            continue;
                        }
                        Event::Connected { epoch, .. } => {
                            open = true;
                            status(format_args!("connected (epoch {epoch})"));
                            continue;
                        }
                        Event::SessionReady { epoch } => {
                            status(format_args!("session ready (epoch {epoch})"));
                            continue;
                        }
                        Event::Rotated { from, to } => {
                            status(format_args!("rotated (epoch {from} -> {to})"));
                            continue;
                        }
                        Event::RotationFailed { epoch, cause, retry } => {
                            let retry = next_attempt("retrying", retry);
                            status(format_args!("rotation failed (epoch {epoch}): {cause}{retry}"));
                            continue;
                        }
                        Event::ConnectFailed { attempt, cause, reconnect } => {
                            let cause = match *cause {
                                Cause::ConnectFailed(e) => e.to_string(),
                                other => other.to_string(),
                            };
                            let retry = next_attempt("retrying", reconnect);
                            status(format_args!("connect failed (attempt {attempt}): {cause}{retry}"));
                            if reconnect.is_none() {
                                return fail(1, format!("giving up after attempt {attempt}: {cause}"));
                            }
                            continue;
                        }
                        Event::Closed { epoch, info, reconnect } => {
                            open = false;
                            // After end of input nothing more is wanted, whatever the policy says.
                            let reconnect = reconnect.filter(|_| lines.is_some());
                            let again = next_attempt("reconnecting", reconnect);
                            status(format_args!("closed epoch {epoch}: {}{again}", info.cause));
                            if reconnect.is_some() {
                                continue;
                            }
                            let line = match info.reason.as_str() {
                                "" => format!("close {}", info.code.0),
                                reason => format!("close {} {reason}", info.code.0),
                            };
                            let _ = writeln!(stdout, "{line}").and_then(|_| stdout.flush());
                            return match info.clean {
                                true => ExitCode::SUCCESS,
                                false => fail(1, format!("connection failed: {}", info.cause)),
                            };
                        }
                        _ => continue,
                    };
                    if let Err(e) = writeln!(stdout, "{text}").and_then(|_| stdout.flush()) {
                        return fail(1, format!("stdout: {e}"));
                    }
                }
                continue;
            },
            recv(close_at) -> _ => {
                // The --wait after end of input is over: close normally and wait (bounded) for
                // the handshake to finish.
                close_at = never();
                let _ = client.close(CloseCode::NORMAL, "");
                give_up = after(CLOSE_GRACE);
                continue;
            },
            recv(give_up) -> _ => return fail(1, "timed out waiting for the close handshake"),
        };
        match line {
            Ok(line) => {
                // Between connections (`--reconnect`) the line is lost: say so. Once the
                // connection is closing, sends fail too; the Closed event reports the outcome.
                if let Err(e @ syncws::Error::NotConnected) = client.send(Frame::text(line)) {
                    status(format_args!("not sent: {e}"));
                }
            }
            Err(_) => {
                lines = None;
                if !open {
                    // Between connections: nothing to close. Shutdown (in main) stops the
                    // reconnecting, and closes a connection that opened meanwhile.
                    status("end of input while disconnected; not reconnecting");
                    return ExitCode::SUCCESS;
                }
                // EOF on stdin: answers to the last lines may still be on their way; close
                // once --wait has passed.
                close_at = after(wait);
            }
        }
    }
}
