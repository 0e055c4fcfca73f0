//! The `autobahn_client` example against a fake fuzzing server: a tungstenite server on loopback
//! that speaks the Autobahn|Testsuite agent protocol (`/getCaseCount`, `/runCase`,
//! `/updateReports`) with two tiny cases, each sending a text and a binary message and checking
//! that both come back with the same opcode and payload. Every wait is bounded.

mod support;

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use tungstenite::handshake::server::{Request, Response};
use tungstenite::{Message, WebSocket};

const WAIT: Duration = Duration::from_secs(20);

fn agent_bin() -> PathBuf {
    support::example_bin("autobahn_client")
}

/// Runs the agent with `args` to completion (killed after `WAIT`).
fn run_agent(args: &[&str]) -> Output {
    let mut child = Command::new(agent_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn autobahn_client");
    let deadline = Instant::now() + WAIT;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "autobahn_client did not exit within {WAIT:?}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("agent output")
}

/// The two messages case `n` sends; the agent must echo each with its opcode.
fn case_messages(n: u32) -> [Message; 2] {
    [
        Message::text(format!("case {n}: wörld ✓")),
        Message::binary(vec![n as u8, 0, 0xff, 0x80, 0x7f]),
    ]
}

/// A fake fuzzing server: serves connections one at a time until `/updateReports` arrives or
/// the deadline passes, and returns its log (one line per connection, saying what happened).
struct FakeFuzzer {
    url: String,
    thread: JoinHandle<Vec<String>>,
}

impl FakeFuzzer {
    fn start(case_count: u32) -> FakeFuzzer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("ws://{}", listener.local_addr().unwrap());
        listener.set_nonblocking(true).unwrap();
        let thread = thread::Builder::new()
            .name("fake-fuzzer".into())
            .spawn(move || {
                let deadline = Instant::now() + WAIT;
                let mut log = Vec::new();
                while Instant::now() < deadline {
                    let stream = match listener.accept() {
                        Ok((stream, _)) => stream,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            thread::sleep(Duration::from_millis(5));
                            continue;
                        }
                        Err(e) => panic!("accept: {e}"),
                    };
                    let line = serve(stream, case_count);
                    let done = line.starts_with("updateReports");
                    log.push(line);
                    if done {
                        break;
                    }
                }
                log
            })
            .unwrap();
        FakeFuzzer { url, thread }
    }

    fn log(self) -> Vec<String> {
        self.thread.join().expect("fake fuzzer panicked")
    }
}

/// Handles one connection; returns its log line.
fn serve(stream: TcpStream, case_count: u32) -> String {
    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.set_write_timeout(Some(WAIT)).unwrap();
    let mut target = String::new();
    #[allow(clippy::result_large_err)] // the callback's signature is tungstenite's
    let callback = |req: &Request, resp: Response| {
        target = req.uri().to_string();
        Ok(resp)
    };
    let mut ws = match tungstenite::accept_hdr(stream, callback) {
        Ok(ws) => ws,
        Err(e) => return format!("handshake failed: {e}"),
    };
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .unwrap_or("")
            .to_string()
    };
    let line = match path {
        "/getCaseCount" => {
            ws.send(Message::text(case_count.to_string())).unwrap();
            "getCaseCount".to_string()
        }
        "/runCase" => {
            let case = param("case");
            let verdict = match case.parse() {
                Ok(n) => run_case(&mut ws, n),
                Err(_) => format!("bad case number {case:?}"),
            };
            format!("runCase {case} agent={}: {verdict}", param("agent"))
        }
        "/updateReports" => format!("updateReports agent={}", param("agent")),
        other => format!("unexpected path {other:?}"),
    };
    close(&mut ws);
    line
}

/// Sends case `n`'s messages and checks their echoes: `ok`, or what went wrong.
fn run_case(ws: &mut WebSocket<TcpStream>, n: u32) -> String {
    let sent = case_messages(n);
    for m in &sent {
        ws.send(m.clone()).unwrap();
    }
    let mut echoed = Vec::new();
    while echoed.len() < sent.len() {
        match ws.read() {
            Ok(m @ (Message::Text(_) | Message::Binary(_))) => echoed.push(m),
            Ok(Message::Close(c)) => return format!("closed early by the agent: {c:?}"),
            Ok(_) => {}
            Err(e) => return format!("read failed: {e}"),
        }
    }
    if echoed == sent {
        "ok".into()
    } else {
        format!("echoes {echoed:?}, sent {sent:?}")
    }
}

/// Starts the close handshake (unless the agent did) and waits for its end.
fn close(ws: &mut WebSocket<TcpStream>) {
    let _ = ws.close(None);
    loop {
        match ws.read() {
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

#[test]
fn runs_every_case_echoing_with_opcodes_then_updates_reports() {
    let fuzzer = FakeFuzzer::start(2);
    let out = run_agent(&["--url", &format!("{}/", fuzzer.url), "--agent", "sync ws"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let log = fuzzer.log();
    assert_eq!(
        log,
        [
            "getCaseCount",
            "runCase 1 agent=sync%20ws: ok",
            "runCase 2 agent=sync%20ws: ok",
            "updateReports agent=sync%20ws",
        ],
        "stderr: {stderr}"
    );
    assert!(out.status.success(), "{:?}; stderr: {stderr}", out.status);
    assert!(stderr.contains("case 2/2"), "stderr: {stderr}");
}

#[test]
fn cases_option_runs_a_subset_and_usage_errors_exit_2() {
    let fuzzer = FakeFuzzer::start(3);
    let out = run_agent(&["--url", &fuzzer.url, "--cases", "2-2"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        fuzzer.log(),
        [
            "getCaseCount",
            "runCase 2 agent=syncws: ok",
            "updateReports agent=syncws",
        ],
        "stderr: {stderr}"
    );
    assert!(out.status.success(), "{:?}; stderr: {stderr}", out.status);

    for args in [
        &["--cases", "3-1"][..],
        &["--cases", "0"],
        &["--bogus"],
        &["--url"],
    ] {
        let out = run_agent(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
    let help = run_agent(&["--help"]);
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).starts_with("usage: autobahn_client"));
}
