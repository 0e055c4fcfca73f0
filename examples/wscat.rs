//! `wscat`: a small command-line WebSocket client built on syncws.
//!
//! Each stdin line (without its line ending) is sent as a text frame. Each incoming frame is
//! printed on its own stdout line: text as is, binary as lowercase hex, pongs as `pong PAYLOAD`,
//! and the end of the connection as `close CODE REASON`. At end of input (Ctrl+D) it closes with
//! 1000 and waits, bounded, for the close handshake. Status and errors go to stderr.
//!
//! ```text
//! cargo run --example wscat -- wss://echo.example.com/
//! echo '{"op":"subscribe"}' | cargo run --example wscat -- -H "Authorization: Bearer t0k" wss://host/ws
//! cargo run --example wscat -- --ca-file my-ca.pem --subprotocol v2.json wss://internal:8443/feed
//! cargo run --example wscat -- --ping hello ws://127.0.0.1:9001/ < /dev/null
//! ```
//!
//! Exit status: 0 after a clean close (whoever started it), 1 when the connection fails or ends
//! without a close handshake, 2 for a usage error (bad option, URL or CA file).

use std::io::{self, BufRead, Write};
use std::process::ExitCode;
use std::thread;
use std::time::Duration;

use crossbeam_channel::{Receiver, after, bounded, never, select};
use syncws::{Client, CloseCode, Event, Frame};

const USAGE: &str = "\
usage: wscat [options] URL

Sends each stdin line as a text frame; prints each incoming frame on a stdout line
(text as is, binary as hex), then `close CODE REASON`. EOF on stdin closes with 1000.

options:
  -H, --header 'Name: value'  add a header to the upgrade request (repeatable)
      --ca-file PATH          trust the PEM certificates in PATH (in addition to webpki roots)
      --insecure              DO NOT verify the server certificate (testing only)
      --subprotocol P         offer subprotocol P (repeatable, in preference order)
      --max-frame BYTES       largest accepted inbound frame
      --max-message BYTES     largest accepted inbound message
      --connect-timeout SECS  time allowed to open the connection (TCP, TLS and upgrade)
      --ping TEXT             send a ping after connecting (the answer prints as `pong TEXT`)
  -h, --help                  print this help and exit";

/// How long to wait for `Closed` beyond the library's own close timeout (2 s by default).
const CLOSE_GRACE: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Options {
    url: String,
    headers: Vec<(String, String)>,
    ca_file: Option<String>,
    insecure: bool,
    subprotocols: Vec<String>,
    max_frame: Option<usize>,
    max_message: Option<usize>,
    connect_timeout: Option<Duration>,
    ping: Option<String>,
}

/// Parses the arguments; `Ok(None)` means `--help`.
fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Options>, String> {
    let mut o = Options::default();
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
            "--subprotocol" => o.subprotocols.push(value()?),
            "--max-frame" => o.max_frame = Some(number(&name, &value()?)?),
            "--max-message" => o.max_message = Some(number(&name, &value()?)?),
            "--connect-timeout" => {
                let v = value()?;
                let secs = v.parse::<f64>().ok();
                let d = secs.and_then(|s| Duration::try_from_secs_f64(s).ok());
                o.connect_timeout = Some(d.ok_or_else(|| format!("bad {name} {v:?}"))?);
            }
            "--ping" => o.ping = Some(value()?),
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
    let client = match builder.connect() {
        Ok(client) => client,
        Err(e @ (syncws::Error::Url(_) | syncws::Error::Config(_))) => return fail(2, e),
        Err(e) => return fail(1, e),
    };
    if let Some(p) = client.protocol() {
        eprintln!("wscat: subprotocol {p}");
    }
    if let Some(text) = &opts.ping {
        if let Err(e) = client.ping(text.as_bytes()) {
            return fail(1, format!("ping: {e}"));
        }
    }
    let lines = match spawn_stdin_reader() {
        Ok(lines) => lines,
        Err(e) => return fail(1, format!("cannot start the stdin thread: {e}")),
    };
    let code = run(&client, lines);
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

/// Pumps stdin lines to the server and events to stdout until the connection ends.
fn run(client: &Client<std::convert::Infallible>, lines: Receiver<String>) -> ExitCode {
    let mut stdout = io::stdout().lock();
    let mut lines = Some(lines);
    let (no_input, mut give_up) = (never(), never());
    loop {
        let input = lines.as_ref().unwrap_or(&no_input);
        let line = select! {
            recv(input) -> line => line,
            recv(client.events()) -> event => {
                let text = match event {
                    Ok(Event::Frame { frame: Frame::Text(t), .. }) => t,
                    Ok(Event::Frame { frame: Frame::Binary(b), .. }) => {
                        b.iter().map(|x| format!("{x:02x}")).collect()
                    }
                    Ok(Event::Pong { payload, .. }) => {
                        format!("pong {}", String::from_utf8_lossy(&payload))
                    }
                    Ok(Event::Closed { info, .. }) => {
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
                    Ok(_) => continue,
                    Err(_) => return fail(1, "connection ended without a Closed event"),
                };
                if let Err(e) = writeln!(stdout, "{text}").and_then(|_| stdout.flush()) {
                    return fail(1, format!("stdout: {e}"));
                }
                continue;
            },
            recv(give_up) -> _ => return fail(1, "timed out waiting for the close handshake"),
        };
        match line {
            // Once the connection is closing, sends fail; the Closed event reports the outcome.
            Ok(line) => drop(client.send(Frame::text(line))),
            Err(_) => {
                // EOF on stdin: close normally and wait (bounded) for the handshake to finish.
                lines = None;
                let _ = client.close(CloseCode::NORMAL, "");
                give_up = after(CLOSE_GRACE);
            }
        }
    }
}
