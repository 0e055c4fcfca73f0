//! The `wscat` example as a user runs it: a child process fed on stdin, read on stdout/stderr,
//! against loopback servers (tungstenite echo, scripted raw frames, a refused upgrade, TLS with a
//! private CA, a server checking request headers). Every wait is bounded; a hung child is killed.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, unbounded};
use support::{
    Pki, TestServer, accept_ws, echo_server, frame, raw_accept, read_client_frame, read_request,
};
use tungstenite::Message;

const WAIT: Duration = Duration::from_secs(15);

fn wscat_bin() -> PathBuf {
    support::example_bin("wscat")
}

/// A running wscat child with its stdout split into lines on a channel, and its stderr both
/// collected whole and split into lines on a channel (for the `# ...` lifecycle lines).
struct Wscat {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Receiver<String>,
    stderr_lines: Receiver<String>,
    stderr: Option<JoinHandle<String>>,
}

impl Wscat {
    fn spawn(args: &[&str]) -> Wscat {
        let mut child = Command::new(wscat_bin())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn wscat");
        let rx = support::lines_on_channel("wscat-stdout", child.stdout.take().unwrap());
        let stderr = child.stderr.take().unwrap();
        let (tx, stderr_lines) = unbounded();
        let stderr = thread::Builder::new()
            .name("wscat-stderr".into())
            .spawn(move || {
                let mut all = String::new();
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    all.push_str(&line);
                    all.push('\n');
                    let _ = tx.send(line);
                }
                all
            })
            .unwrap();
        Wscat {
            stdin: child.stdin.take(),
            child,
            stdout: rx,
            stderr_lines,
            stderr: Some(stderr),
        }
    }

    /// Waits (bounded) for a stderr line equal to `wanted` or starting with it; returns it.
    fn wait_stderr(&mut self, wanted: &str) -> String {
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        loop {
            match self.stderr_lines.recv_deadline(deadline) {
                Ok(line) if line.starts_with(wanted) => return line,
                Ok(line) => seen.push(line),
                Err(e) => {
                    let (status, lines, _) = self.kill();
                    panic!(
                        "no stderr line {wanted:?} from wscat within {WAIT:?} ({e}); \
                         stderr so far: {seen:?}; {status:?}; stdout: {lines:?}"
                    )
                }
            }
        }
    }

    fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        writeln!(stdin, "{line}").expect("write to wscat stdin");
        stdin.flush().unwrap();
    }

    /// Closes wscat's stdin (EOF: it starts the close handshake).
    fn close_stdin(&mut self) {
        self.stdin.take();
    }

    /// The next stdout line, failing the test after `WAIT`.
    fn next_line(&mut self) -> String {
        match self.stdout.recv_timeout(WAIT) {
            Ok(line) => line,
            Err(e) => {
                let (status, _, stderr) = self.kill();
                panic!(
                    "no stdout line from wscat within {WAIT:?} ({e}); {status:?}; stderr: {stderr}"
                )
            }
        }
    }

    /// Waits (bounded) for exit; returns the status, the stdout lines not yet read and stderr.
    fn finish(mut self) -> (ExitStatus, Vec<String>, String) {
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() >= deadline {
                let (status, lines, stderr) = self.kill();
                panic!(
                    "wscat did not exit within {WAIT:?} (killed: {status:?}); \
                     stdout: {lines:?}; stderr: {stderr}"
                );
            }
            thread::sleep(Duration::from_millis(5));
        };
        self.stdin.take();
        let (lines, stderr) = self.drain();
        (status, lines, stderr)
    }

    fn kill(&mut self) -> (Option<ExitStatus>, Vec<String>, String) {
        let _ = self.child.kill();
        let status = self.child.wait().ok();
        self.stdin.take();
        let (lines, stderr) = self.drain();
        (status, lines, stderr)
    }

    /// After exit: the remaining stdout lines (until EOF) and all of stderr.
    fn drain(&mut self) -> (Vec<String>, String) {
        let mut lines = Vec::new();
        loop {
            match self.stdout.recv_timeout(WAIT) {
                Ok(line) => lines.push(line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => panic!("wscat stdout not closed after exit"),
            }
        }
        let stderr = self
            .stderr
            .take()
            .map(|h| h.join().unwrap())
            .unwrap_or_default();
        (lines, stderr)
    }
}

/// A PEM file in the temp dir, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(tag: &str, contents: &str) -> TempFile {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let path =
            std::env::temp_dir().join(format!("wscat-{tag}-{}-{nanos}.pem", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn echoes_stdin_lines_and_closes_cleanly_at_eof() {
    let server = echo_server(None);
    let mut wscat = Wscat::spawn(&[&server.url("/echo")]);
    wscat.send_line("hello");
    wscat.send_line("wörld ✓");
    assert_eq!(wscat.next_line(), "hello");
    assert_eq!(wscat.next_line(), "wörld ✓");
    wscat.close_stdin();
    let (status, lines, stderr) = wscat.finish();
    assert_eq!(lines, ["close 1000"], "stderr: {stderr}");
    assert!(status.success(), "{status:?}; stderr: {stderr}");
    server.join();
}

#[test]
fn binary_frame_as_hex_then_server_close() {
    let server = TestServer::start(None, 1, |_, mut conn| {
        let mut close = 4001u16.to_be_bytes().to_vec();
        close.extend_from_slice(b"bye");
        let mut wire = frame(0x82, &[0xde, 0xad]);
        wire.extend(frame(0x88, &close));
        raw_accept(&mut conn, &wire);
        // The client echoes the close code; then the server ends the stream.
        let (b0, payload) = read_client_frame(&mut conn).expect("client close");
        assert_eq!(b0, 0x88, "expected the client's close frame");
        assert_eq!(&payload[..2], &4001u16.to_be_bytes());
    });
    // Stdin stays open: the server, not EOF, ends this connection.
    let wscat = Wscat::spawn(&[&server.url("/")]);
    let (status, lines, stderr) = wscat.finish();
    assert_eq!(lines, ["dead", "close 4001 bye"], "stderr: {stderr}");
    assert!(status.success(), "{status:?}; stderr: {stderr}");
    server.join();
}

#[test]
fn refused_upgrade_fails_with_status_on_stderr() {
    let server = TestServer::start(None, 1, |_, mut conn| {
        read_request(&mut conn);
        conn.write_all(
            b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        conn.flush().unwrap();
    });
    let wscat = Wscat::spawn(&[&server.url("/")]);
    let (status, lines, stderr) = wscat.finish();
    assert_eq!(status.code(), Some(1), "stderr: {stderr}");
    assert!(lines.is_empty(), "stdout: {lines:?}");
    assert!(
        stderr.starts_with("wscat: ") && stderr.contains("401"),
        "stderr: {stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "one-line message: {stderr}");
    server.join();
}

#[test]
fn tls_with_ca_file_echoes_and_answers_ping() {
    let pki = Pki::new("wscat CA");
    let ca = TempFile::new("ca", &pki.ca_pem());
    let server = echo_server(Some(pki.server_config(&["localhost"])));
    let url = server.url("/");
    let mut wscat = Wscat::spawn(&["--ca-file", ca.0.to_str().unwrap(), "--ping", "hi", &url]);
    wscat.send_line("over tls");
    let mut seen = Vec::new();
    while !seen.iter().any(|l| l == "over tls") {
        seen.push(wscat.next_line());
    }
    wscat.close_stdin();
    let (status, lines, stderr) = wscat.finish();
    seen.extend(lines);
    assert!(seen.iter().any(|l| l == "pong hi"), "stdout: {seen:?}");
    assert_eq!(seen.last().map(String::as_str), Some("close 1000"));
    assert!(status.success(), "{status:?}; stderr: {stderr}");
    server.join();
}

#[test]
fn tls_without_ca_file_fails_verification() {
    let pki = Pki::new("untrusted CA");
    let server = TestServer::start(Some(pki.server_config(&["localhost"])), 1, |_, conn| {
        let _ = tungstenite::accept(conn); // fails: the client rejects the certificate
    });
    let wscat = Wscat::spawn(&[&server.url("/")]);
    let (status, lines, stderr) = wscat.finish();
    assert_eq!(status.code(), Some(1), "stderr: {stderr}");
    assert!(lines.is_empty(), "stdout: {lines:?}");
    assert!(stderr.contains("certificate"), "stderr: {stderr}");
    server.join();
}

#[test]
fn custom_header_and_subprotocol_reach_server() {
    let server = TestServer::start(None, 1, |_, mut conn| {
        let req = read_request(&mut conn);
        let has = |h: &str| req.lines().any(|l| l.eq_ignore_ascii_case(h));
        let verdict = if has("X-Token: abc") && has("Sec-WebSocket-Protocol: chat") {
            "headers ok"
        } else {
            "headers missing"
        };
        let mut out = support::response_101(&req);
        out.extend(frame(0x81, verdict.as_bytes()));
        conn.write_all(&out).unwrap();
        conn.flush().unwrap();
        // Answer the client's close (sent at stdin EOF) and end the stream.
        let (b0, payload) = read_client_frame(&mut conn).expect("client close");
        assert_eq!(b0, 0x88);
        conn.write_all(&frame(0x88, &payload)).unwrap();
        conn.flush().unwrap();
    });
    let url = server.url("/");
    let mut wscat = Wscat::spawn(&["-H", "X-Token: abc", "--subprotocol", "chat", &url]);
    assert_eq!(wscat.next_line(), "headers ok");
    wscat.close_stdin();
    let (status, lines, stderr) = wscat.finish();
    assert_eq!(lines, ["close 1000"], "stderr: {stderr}");
    assert!(status.success(), "{status:?}; stderr: {stderr}");
    server.join();
}

#[test]
fn oversized_frame_fails_with_1009() {
    let server = TestServer::start(None, 1, |_, mut conn| {
        raw_accept(&mut conn, &frame(0x82, &[7; 100]));
        let (b0, payload) = read_client_frame(&mut conn).expect("client close");
        assert_eq!((b0, &payload[..2]), (0x88, &1009u16.to_be_bytes()[..]));
    });
    let wscat = Wscat::spawn(&["--max-frame", "10", &server.url("/")]);
    let (status, lines, stderr) = wscat.finish();
    assert_eq!(status.code(), Some(1), "stderr: {stderr}");
    assert_eq!(lines.len(), 1, "stdout: {lines:?}");
    assert!(lines[0].starts_with("close 1009"), "stdout: {lines:?}");
    // Lifecycle lines (`# ...`) come first; the error is the last line.
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("wscat: ") && last.contains("1009"),
        "stderr: {stderr}"
    );
    server.join();
}

#[test]
fn help_and_usage_errors() {
    let (status, lines, _) = Wscat::spawn(&["--help"]).finish();
    assert!(status.success());
    assert!(lines[0].starts_with("usage: wscat"), "{lines:?}");
    for option in ["--reconnect", "--ping-interval SECS", "--stale-after SECS"] {
        assert!(
            lines.iter().any(|l| l.trim_start().starts_with(option)),
            "--help lacks {option}: {lines:?}"
        );
    }
    for args in [
        &[][..],
        &["--bogus", "ws://x/"],
        &["--max-frame", "lots", "ws://x/"],
        &["--ping-interval", "-1", "ws://x/"],
        &["--ping-interval", "soon", "ws://x/"],
        &["--ping-interval", "inf", "ws://x/"],
        &["--ping-interval=", "ws://x/"],
        &["--stale-after", "0", "ws://x/"],
        &["--stale-after", "NaN", "ws://x/"],
        &["--stale-after", "ws://x/"], // the URL taken as the value, then no URL
        &["ws://x/", "--ping-interval"],
    ] {
        let (status, lines, stderr) = Wscat::spawn(args).finish();
        assert_eq!(status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            lines.is_empty() && stderr.starts_with("wscat: "),
            "{args:?}: {stderr}"
        );
    }
}

/// `printf 'one\ntwo\n' | wscat URL`: the close at EOF follows the sends at once, and the
/// sent lines still go out before it (regression: the close used to overtake queued data).
#[test]
fn piped_lines_then_eof() {
    let server = echo_server(None);
    let mut wscat = Wscat::spawn(&[&server.url("/echo")]);
    wscat.send_line("one");
    wscat.send_line("two");
    wscat.close_stdin();
    let (status, lines, stderr) = wscat.finish();
    assert_eq!(lines, ["one", "two", "close 1000"], "stderr: {stderr}");
    assert!(status.success(), "{status:?}; stderr: {stderr}");
    server.join();
}

/// The server's close frame: `code` and `reason`.
fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason.as_bytes());
    payload
}

/// Accepts, closes with 1001 at once, and checks the client echoes the code.
fn going_away(conn: &mut support::Conn) {
    raw_accept(conn, &frame(0x88, &close_payload(1001, "restart")));
    let (b0, payload) = read_client_frame(conn).expect("client close");
    assert_eq!((b0, &payload[..2]), (0x88, &1001u16.to_be_bytes()[..]));
}

/// `--reconnect`: the first connection is closed with 1001 (a server restart); wscat reconnects
/// instead of exiting, says so on stderr only, and a line typed after the reconnect is echoed
/// on the new connection.
#[test]
fn reconnect_after_going_away_then_echo() {
    let server = TestServer::start(None, 2, |i, mut conn| match i {
        0 => going_away(&mut conn),
        _ => {
            let mut ws = accept_ws(conn);
            loop {
                match ws.read() {
                    Ok(m @ Message::Text(_)) => ws.send(m).unwrap(),
                    Ok(Message::Close(_)) | Err(_) => {
                        let _ = ws.flush();
                        return;
                    }
                    Ok(_) => {}
                }
            }
        }
    });
    let mut wscat = Wscat::spawn(&["--reconnect", &server.url("/")]);
    let closed = wscat.wait_stderr("# closed epoch 1: ");
    assert!(
        closed.contains("1001") && closed.contains("; reconnecting in "),
        "{closed}"
    );
    wscat.wait_stderr("# connecting (attempt 2)");
    wscat.wait_stderr("# connected (epoch 2)");
    wscat.wait_stderr("# session ready (epoch 2)");
    wscat.send_line("after the restart");
    assert_eq!(wscat.next_line(), "after the restart");
    wscat.close_stdin();
    let (status, lines, stderr) = wscat.finish();
    // Only the final close reaches stdout; the 1001 was reported on stderr.
    assert_eq!(lines, ["close 1000"], "stderr: {stderr}");
    assert!(status.success(), "{status:?}; stderr: {stderr}");
    assert!(
        stderr.lines().all(|l| l.starts_with("# ")),
        "only lifecycle lines on stderr: {stderr}"
    );
    server.join();
}

/// Without `--reconnect` the same 1001 is the end: printed on stdout, exit 0 (a clean close).
#[test]
fn without_reconnect_going_away_ends_the_session() {
    let server = TestServer::start(None, 1, |_, mut conn| going_away(&mut conn));
    let wscat = Wscat::spawn(&[&server.url("/")]);
    let (status, lines, stderr) = wscat.finish();
    assert_eq!(lines, ["close 1001 restart"], "stderr: {stderr}");
    assert!(status.success(), "{status:?}; stderr: {stderr}");
    assert!(
        stderr.contains("# closed epoch 1: ") && !stderr.contains("reconnecting"),
        "stderr: {stderr}"
    );
    server.join();
}

/// `--reconnect` when the server is gone for good: failed attempts are reported on stderr and
/// retried; end of input while disconnected still ends wscat with 0, and lines typed meanwhile
/// are reported as not sent.
#[test]
fn reconnect_reports_failed_attempts_and_eof_while_disconnected_exits_0() {
    // One connection only: afterwards the listener is closed and connecting is refused.
    let server = TestServer::start(None, 1, |_, mut conn| going_away(&mut conn));
    let mut wscat = Wscat::spawn(&["--reconnect", &server.url("/")]);
    let failed = wscat.wait_stderr("# connect failed (attempt 2): ");
    assert!(failed.contains("; retrying in "), "{failed}");
    wscat.send_line("into the void");
    wscat.wait_stderr("# not sent: ");
    wscat.close_stdin();
    let (status, lines, stderr) = wscat.finish();
    assert!(lines.is_empty(), "stdout: {lines:?}; stderr: {stderr}");
    assert!(status.success(), "{status:?}; stderr: {stderr}");
    server.join();
}

/// `--ping-interval SECS` sends keepalive pings on that interval (answered pongs are consumed,
/// not printed).
#[test]
fn ping_interval_sends_keepalive_pings() {
    let server = TestServer::start(None, 1, |_, mut conn| {
        raw_accept(&mut conn, &[]);
        conn.tcp()
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        for _ in 0..2 {
            let (b0, payload) = read_client_frame(&mut conn).expect("a keepalive ping");
            assert_eq!(b0, 0x89, "expected a ping, got {b0:#x} {payload:?}");
            conn.write_all(&frame(0x8A, &payload)).unwrap();
        }
        conn.write_all(&frame(0x88, &close_payload(1000, "pinged")))
            .unwrap();
        let (b0, _) = read_client_frame(&mut conn).expect("client close");
        assert_eq!(b0, 0x88);
    });
    let wscat = Wscat::spawn(&["--ping-interval", "0.05", &server.url("/")]);
    let (status, lines, stderr) = wscat.finish();
    assert_eq!(lines, ["close 1000 pinged"], "stderr: {stderr}");
    assert!(status.success(), "{status:?}; stderr: {stderr}");
    server.join();
}

/// `--ping-interval 0`: never ping (the server's pings are still answered).
#[test]
fn ping_interval_zero_only_answers_the_server() {
    let server = TestServer::start(None, 1, |_, mut conn| {
        raw_accept(&mut conn, &frame(0x89, b"srv"));
        conn.tcp()
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let (b0, payload) = read_client_frame(&mut conn).expect("the pong");
        assert_eq!((b0, &payload[..]), (0x8A, &b"srv"[..]));
        // Silence from the client for a while (a 0.05 s interval would have pinged by then).
        conn.tcp()
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let err = read_client_frame(&mut conn).expect_err("no frame from the client");
        assert!(
            matches!(
                err.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "{err}"
        );
        conn.write_all(&frame(0x88, &close_payload(1000, "quiet")))
            .unwrap();
        conn.tcp()
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let (b0, _) = read_client_frame(&mut conn).expect("client close");
        assert_eq!(b0, 0x88);
    });
    let wscat = Wscat::spawn(&["--ping-interval", "0", &server.url("/")]);
    let (status, lines, stderr) = wscat.finish();
    assert_eq!(lines, ["close 1000 quiet"], "stderr: {stderr}");
    assert!(status.success(), "{status:?}; stderr: {stderr}");
    server.join();
}

/// `--stale-after SECS`: a connection that stays silent that long is dropped (no close
/// handshake: the link is presumed dead), reported as `close 1006` and exit 1.
#[test]
fn stale_after_drops_a_silent_connection() {
    let server = TestServer::start(None, 1, |_, mut conn| {
        raw_accept(&mut conn, &[]);
        conn.tcp()
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        // Nothing is sent; the client gives up and shuts the socket down.
        let end = read_client_frame(&mut conn);
        assert!(
            end.is_err(),
            "expected the client to drop the connection: {end:?}"
        );
    });
    let started = Instant::now();
    let wscat = Wscat::spawn(&["--stale-after", "0.3", &server.url("/")]);
    let (status, lines, stderr) = wscat.finish();
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "dropped too early"
    );
    assert_eq!(status.code(), Some(1), "stderr: {stderr}");
    assert_eq!(lines.len(), 1, "stdout: {lines:?}");
    assert!(lines[0].starts_with("close 1006"), "stdout: {lines:?}");
    assert!(stderr.contains("staleness"), "stderr: {stderr}");
    server.join();
}

/// A server like Python `websockets`: a close that arrives before it has answered is answered
/// at once and the pending answers are dropped. It answers the two lines 300 ms after reading
/// them, unless a close came first.
fn slow_echo_that_drops_answers_at_close() -> TestServer {
    TestServer::start(None, 1, |_, conn| {
        let mut ws = support::accept_ws(conn);
        let mut got = Vec::new();
        while got.len() < 2 {
            match ws.read() {
                Ok(tungstenite::Message::Text(t)) => got.push(t),
                Ok(_) => {}
                Err(_) => return,
            }
        }
        ws.get_ref()
            .tcp()
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        match ws.read() {
            // A close before the answers: answered, nothing else.
            Ok(tungstenite::Message::Close(_)) => {
                let _ = ws.flush();
                return;
            }
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::TimedOut => {}
            other => panic!("unexpected {other:?}"),
        }
        ws.get_ref().tcp().set_read_timeout(None).unwrap();
        for t in got {
            ws.send(tungstenite::Message::Text(t)).unwrap();
        }
        while ws.read().is_ok() {}
    })
}

/// Issue 11: `printf 'a\nb\n' | wscat URL` against a server that answers after a moment: the
/// end of input waits `--wait` (1 s by default) before closing, so the answers are printed.
#[test]
fn end_of_input_waits_for_answers_before_closing() {
    let server = slow_echo_that_drops_answers_at_close();
    let mut wscat = Wscat::spawn(&[&server.url("/")]);
    wscat.send_line("a");
    wscat.send_line("b");
    wscat.close_stdin();
    let (status, lines, stderr) = wscat.finish();
    assert_eq!(lines, ["a", "b", "close 1000"], "stderr: {stderr}");
    assert!(status.success(), "{status:?}; stderr: {stderr}");
    server.join();
}

/// `--wait 0` closes at end of input at once (the answers of a slow server are lost).
#[test]
fn wait_zero_closes_at_end_of_input_at_once() {
    let server = slow_echo_that_drops_answers_at_close();
    let mut wscat = Wscat::spawn(&["--wait", "0", &server.url("/")]);
    wscat.send_line("a");
    wscat.send_line("b");
    wscat.close_stdin();
    let (status, lines, stderr) = wscat.finish();
    assert_eq!(lines, ["close 1000"], "stderr: {stderr}");
    assert!(status.success(), "{status:?}; stderr: {stderr}");
    server.join();
}

#[test]
fn proxy_option_tunnels_through_socks5_and_http() {
    use support::tunnel::{Mode, TestProxy};
    for (proxy, scheme) in [
        (
            TestProxy::socks5(Mode::Open(Some(("u".into(), "p".into())))),
            "socks5",
        ),
        (TestProxy::http(Mode::Open(None)), "http"),
    ] {
        let server = echo_server(None);
        let url = match scheme {
            "socks5" => format!("socks5://u:p@{}", proxy.addr),
            _ => format!("http://{}", proxy.addr),
        };
        let mut wscat = Wscat::spawn(&["--proxy", &url, &server.url("/echo")]);
        wscat.send_line("via proxy");
        assert_eq!(wscat.next_line(), "via proxy");
        wscat.close_stdin();
        let (status, _, stderr) = wscat.finish();
        assert!(status.success(), "{status:?}; stderr: {stderr}");
        assert_eq!(proxy.targets().len(), 1, "{scheme}");
        server.join();
    }
}

/// `--deflate` against a hub that accepts permessage-deflate: the negotiated parameters are
/// printed on stderr, and messages flow.
#[test]
fn deflate_option_prints_the_negotiated_parameters() {
    struct Echo;
    impl syncws::hub::Handler for Echo {
        fn on_message(&self, conn: &syncws::hub::Conn, message: syncws::Data<'_>) {
            let _ = conn.send(&syncws::hub::Message::binary(message.as_bytes()));
        }
    }
    let hub = syncws::hub::Hub::bind(
        "127.0.0.1:0",
        syncws::hub::HubConfig {
            deflate: true,
            ping_interval: None,
            ..syncws::hub::HubConfig::default()
        },
        Echo,
    )
    .unwrap();
    let url = format!("ws://{}/", hub.local_addr());
    let mut wscat = Wscat::spawn(&["--deflate", &url]);
    wscat.send_line("squeeze");
    let echoed = wscat.next_line();
    assert!(
        echoed.contains("squeeze") || echoed.contains("73717565657a65"),
        "{echoed}"
    );
    wscat.close_stdin();
    let (status, _, stderr) = wscat.finish();
    assert!(status.success(), "{status:?}; stderr: {stderr}");
    assert!(
        stderr.contains("wscat: permessage-deflate server_no_context_takeover=false client_no_context_takeover=false server_max_window_bits=15 client_max_window_bits=15"),
        "{stderr}"
    );
}

/// `--rotate-after` against a hub echo server: the connection is replaced make-before-break
/// (`# rotated (epoch 1 -> 2)`, then `2 -> 3`), with no `closed` line, and lines sent after a
/// switch are echoed by the new connection; end of input still closes cleanly.
#[test]
fn rotate_after_replaces_the_connection_without_closing() {
    struct Echo;
    impl syncws::hub::Handler for Echo {
        fn on_message(&self, conn: &syncws::hub::Conn, message: syncws::Data<'_>) {
            let _ = conn.send(&syncws::hub::Message::text(String::from_utf8_lossy(
                message.as_bytes(),
            )));
        }
    }
    let config = syncws::hub::HubConfig {
        ping_interval: None,
        ..syncws::hub::HubConfig::default()
    };
    let hub = syncws::hub::Hub::bind("127.0.0.1:0", config, Echo).unwrap();
    let url = format!("ws://{}/", hub.local_addr());
    let mut wscat = Wscat::spawn(&["--rotate-after", "0.3", &url]);
    wscat.wait_stderr("# rotated (epoch 1 -> 2)");
    wscat.send_line("after one");
    assert_eq!(wscat.next_line(), "after one");
    wscat.wait_stderr("# rotated (epoch 2 -> 3)");
    wscat.send_line("after two");
    assert_eq!(wscat.next_line(), "after two");
    wscat.close_stdin();
    let (status, lines, stderr) = wscat.finish();
    assert!(status.success(), "{status:?}; stderr: {stderr}");
    assert_eq!(
        lines.last().map(String::as_str),
        Some("close 1000"),
        "{lines:?}"
    );
    assert_eq!(
        stderr.matches("# closed").count(),
        1,
        "only the close at end of input, no connection lost: {stderr}"
    );
}
