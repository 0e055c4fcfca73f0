//! Interoperability with an independent implementation: Python `websockets` (>= 17) as the
//! server, started per test as a subprocess running `tests/python/ws_server.py`.
//!
//! Covered, over plain TCP and TLS: echo of text and binary from empty to 1 MiB, server-side
//! fragmentation (with a ping between fragments), server pings answered with the same payload,
//! client pings, close codes and reasons in both directions, empty close frames, messages sent
//! just before a close, connections dropped without a close frame, closing while the server
//! streams, invalid UTF-8 and over-limit messages, refused upgrades, request headers / path /
//! subprotocol as the server sees them, no compression, and certificate failures (wrong host,
//! unknown CA). The server reports what it observed on its stdout (`CLOSED <code> <reason>`,
//! `PONG <result>`), which the tests read back.
//!
//! The tests need `python3` with `websockets >= 17`. Without it they are skipped, unless
//! `SYNCWS_REQUIRE_PEERS=1` (CI), where they fail. `SYNCWS_PYTHON` names another interpreter.

mod support;

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use support::{Pki, next_event};
use syncws::{Cause, Client, ClientBuilder, CloseCode, CloseInfo, Error, Event, Frame, Initiator};

/// Bound on every single wait in these tests.
const WAIT: Duration = Duration::from_secs(5);
/// Bound on the Python server starting up (interpreter start and `import websockets`).
const STARTUP: Duration = Duration::from_secs(15);
/// What `shutdown` is given at the end of each test.
const SHUTDOWN: Duration = Duration::from_secs(2);

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/ws_server.py");

/// Must match `REJECT_BODY` in ws_server.py.
const REJECT_BODY: &str = "syncws interop: upgrade refused";

// ---------------------------------------------------------------------------------------------
// The Python peer
// ---------------------------------------------------------------------------------------------

fn python() -> String {
    std::env::var("SYNCWS_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

/// Checks once per process that the interpreter has `websockets >= 17`.
fn websockets_status() -> &'static Result<(), String> {
    static STATUS: OnceLock<Result<(), String>> = OnceLock::new();
    STATUS.get_or_init(|| {
        let python = python();
        let check = "import websockets, sys; \
                     sys.exit(0 if int(websockets.__version__.split('.')[0]) >= 17 else 1)";
        match Command::new(&python)
            .args(["-c", check])
            .stdin(Stdio::null())
            .output()
        {
            Ok(out) if out.status.success() => Ok(()),
            Ok(out) => {
                let stderr = String::from_utf8_lossy(&out.stderr);
                let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
                Err(format!(
                    "`{python} -c <version check>` exited with {}: {}",
                    out.status,
                    last.unwrap_or("websockets too old").trim()
                ))
            }
            Err(e) => Err(format!("cannot run `{python}`: {e}")),
        }
    })
}

/// True when the tests can run; otherwise skips (or fails under `SYNCWS_REQUIRE_PEERS=1`).
fn python_ready() -> bool {
    match websockets_status() {
        Ok(()) => true,
        Err(why) => {
            support::skip_or_fail(&format!("python websockets >= 17 not installed: {why}"));
            false
        }
    }
}

/// A directory under the system temp dir, unique to this test, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!(
            "syncws-interop-{tag}-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Certificate and key PEM files for the Python server.
struct TlsFiles {
    dir: TempDir,
}

impl TlsFiles {
    /// A leaf certificate for `names` issued by `pki`.
    fn new(pki: &Pki, names: &[&str]) -> TlsFiles {
        let leaf = pki.server_cert(names);
        let dir = TempDir::new("tls");
        std::fs::write(dir.0.join("cert.pem"), leaf.cert_pem).unwrap();
        std::fs::write(dir.0.join("key.pem"), leaf.key_pem).unwrap();
        TlsFiles { dir }
    }

    fn args(&self) -> [PathBuf; 2] {
        [self.dir.0.join("cert.pem"), self.dir.0.join("key.pem")]
    }
}

/// A running `ws_server.py`. Dropping it closes its stdin (it exits on EOF), then kills and
/// reaps it if it has not exited within a moment.
struct PyServer {
    child: Child,
    stdin: Option<ChildStdin>,
    /// Lines the server printed on stdout after `PORT`.
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
    stderr_thread: Option<JoinHandle<()>>,
    port: u16,
    tls: bool,
    _files: Option<TlsFiles>,
}

impl PyServer {
    fn start(mode: &[&str]) -> PyServer {
        PyServer::spawn(mode, None)
    }

    fn start_tls(mode: &[&str], files: TlsFiles) -> PyServer {
        PyServer::spawn(mode, Some(files))
    }

    fn spawn(mode: &[&str], files: Option<TlsFiles>) -> PyServer {
        let mut cmd = Command::new(python());
        cmd.arg(SCRIPT).arg("--mode").args(mode);
        if let Some(files) = &files {
            cmd.arg("--tls").args(files.args());
        }
        cmd.env("PYTHONUNBUFFERED", "1")
            .env("PYTHONIOENCODING", "utf-8")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {SCRIPT}: {e}"));
        let stdin = child.stdin.take();

        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = crossbeam_channel::unbounded();
        thread::Builder::new()
            .name("py-stdout".into())
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { return };
                    if tx.send(line).is_err() {
                        return;
                    }
                }
            })
            .unwrap();

        let mut stderr_pipe = child.stderr.take().unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let stderr_thread = thread::Builder::new()
            .name("py-stderr".into())
            .spawn(move || {
                let mut chunk = [0u8; 4096];
                while let Ok(n @ 1..) = stderr_pipe.read(&mut chunk) {
                    sink.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&chunk[..n]));
                }
            })
            .unwrap();

        let mut server = PyServer {
            child,
            stdin,
            lines,
            stderr,
            stderr_thread: Some(stderr_thread),
            port: 0,
            tls: files.is_some(),
            _files: files,
        };
        let first = server.next_line(STARTUP, "the PORT line");
        server.port = first
            .strip_prefix("PORT ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("first line of ws_server.py is not `PORT <n>`: {first:?}"));
        server
    }

    /// The next stdout line, within `within`.
    fn next_line(&self, within: Duration, what: &str) -> String {
        match self.lines.recv_timeout(within) {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => {
                panic!("ws_server.py printed no {what} within {within:?}")
            }
            // Its stderr (a traceback, say) is printed when the guard drops.
            Err(RecvTimeoutError::Disconnected) => {
                panic!("ws_server.py exited before printing {what}")
            }
        }
    }

    /// The next stdout line that starts with `prefix` (others are skipped), without the prefix.
    fn expect_line(&self, prefix: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.next_line(left, &format!("line starting with {prefix:?}"));
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest.to_string();
            }
        }
    }

    fn url(&self, path: &str) -> String {
        if self.tls {
            format!("wss://localhost:{}{path}", self.port)
        } else {
            format!("ws://127.0.0.1:{}{path}", self.port)
        }
    }
}

impl Drop for PyServer {
    fn drop(&mut self) {
        // EOF on stdin asks the server to exit; kill it if it is slow about it.
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(2);
        let exited = loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break true,
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
                _ => break false,
            }
        };
        if !exited {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        if let Some(t) = self.stderr_thread.take() {
            let _ = t.join();
        }
        if thread::panicking() {
            eprintln!(
                "--- ws_server.py (port {}) stderr ---\n{}",
                self.port,
                self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A plain or TLS variant of a test: which server to start and how to build the client.
#[derive(Clone, Copy, Debug)]
enum Transport {
    Plain,
    Tls,
}

/// Starts the server in `mode` over `transport`; returns it with a client builder that trusts
/// it (and the CA, kept alive in the returned value).
fn setup(transport: Transport, mode: &[&str], path: &str) -> (PyServer, ClientBuilder) {
    match transport {
        Transport::Plain => {
            let server = PyServer::start(mode);
            let builder = Client::builder(&server.url(path)).name("py-plain");
            (server, builder)
        }
        Transport::Tls => {
            let pki = Pki::new("syncws interop CA");
            let server = PyServer::start_tls(mode, TlsFiles::new(&pki, &["localhost"]));
            let builder = Client::builder(&server.url(path))
                .name("py-tls")
                .add_root_certificate(pki.ca_der());
            (server, builder)
        }
    }
}

fn next_frame<T: std::fmt::Debug>(client: &Client<T>) -> Frame {
    next_event(client, WAIT, |e| match e {
        Event::Frame { frame, .. } => Some(frame),
        Event::Closed { info, .. } => panic!("closed while waiting for a frame: {info:?}"),
        _ => None,
    })
}

fn next_closed<T: std::fmt::Debug>(client: &Client<T>) -> CloseInfo {
    next_event(client, WAIT, |e| match e {
        Event::Closed { info, .. } => Some(info),
        _ => None,
    })
}

fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Text of `len` bytes with multi-byte characters where they fit.
fn text_of(len: usize, seed: u8) -> String {
    let mut s = String::with_capacity(len);
    let mut i = 0usize;
    while s.len() < len {
        if len - s.len() >= 3 && i % 7 == 3 {
            s.push('✓');
        } else {
            s.push(char::from(b'a' + (i as u8).wrapping_add(seed) % 26));
        }
        i += 1;
    }
    assert_eq!(s.len(), len);
    s
}

const SIZES: [usize; 7] = [0, 1, 125, 126, 65_535, 65_536, 1 << 20];

// ---------------------------------------------------------------------------------------------
// Echo
// ---------------------------------------------------------------------------------------------

fn echo_all_sizes(transport: Transport) {
    if !python_ready() {
        return;
    }
    let (_server, builder) = setup(transport, &["echo"], "/");
    let client = builder.connect().unwrap();
    for (i, len) in SIZES.into_iter().enumerate() {
        let bin = payload(len, i as u8);
        let text = text_of(len, i as u8);
        client.send(Frame::Binary(bin.clone())).unwrap();
        client.send(Frame::Text(text.clone())).unwrap();
        assert_eq!(
            next_frame(&client),
            Frame::Binary(bin),
            "binary echo of {len} bytes ({transport:?})"
        );
        assert_eq!(
            next_frame(&client),
            Frame::Text(text),
            "text echo of {len} bytes ({transport:?})"
        );
    }

    // A burst of small messages, written back to back, comes back complete and in order.
    const BURST: usize = 2000;
    for i in 0..BURST {
        client.send(Frame::text(format!("burst {i}"))).unwrap();
    }
    for i in 0..BURST {
        assert_eq!(next_frame(&client), Frame::text(format!("burst {i}")));
    }

    let stats = client.stats();
    assert!(client.is_open(), "still open after the echoes: {stats:?}");
    client.shutdown(SHUTDOWN);
}

#[test]
fn echo_text_and_binary_plain() {
    echo_all_sizes(Transport::Plain);
}

#[test]
fn echo_text_and_binary_tls() {
    echo_all_sizes(Transport::Tls);
}

// ---------------------------------------------------------------------------------------------
// Fragmentation
// ---------------------------------------------------------------------------------------------

fn fragments_reassemble(transport: Transport) {
    if !python_ready() {
        return;
    }
    let (_server, builder) = setup(transport, &["fragments"], "/");
    let client = builder.connect().unwrap();
    // Must match TEXT_FRAGMENTS / BINARY_FRAGMENTS in ws_server.py.
    assert_eq!(next_frame(&client), Frame::text("fragmented ✓"));
    let mut expected: Vec<u8> = (0..=255u8).cycle().take(1024).collect();
    expected.extend(std::iter::repeat_n(7u8, 70_000));
    expected.extend_from_slice(b"end");
    assert_eq!(next_frame(&client), Frame::Binary(expected));
    // The connection is still usable afterwards.
    client.send(Frame::text("after fragments")).unwrap();
    assert_eq!(next_frame(&client), Frame::text("after fragments"));
    client.shutdown(SHUTDOWN);
}

#[test]
fn server_fragmented_messages_reassemble_plain() {
    fragments_reassemble(Transport::Plain);
}

#[test]
fn server_fragmented_messages_reassemble_tls() {
    fragments_reassemble(Transport::Tls);
}

// ---------------------------------------------------------------------------------------------
// Pings
// ---------------------------------------------------------------------------------------------

fn server_ping_answered(transport: Transport) {
    if !python_ready() {
        return;
    }
    let (server, builder) = setup(transport, &["ping"], "/");
    let client = builder.connect().unwrap();
    // Must match PING_PAYLOADS in ws_server.py. websockets resolves a ping's waiter only for a
    // pong carrying exactly that ping's payload, so `pong-ok` proves the payload came back.
    for expected in ["syncws-ping-1".to_string(), String::new(), "P".repeat(125)] {
        let report = format!("pong-ok:{expected}");
        assert_eq!(next_frame(&client), Frame::Text(report.clone()));
        assert_eq!(server.expect_line("PONG "), report);
    }
    client.send(Frame::text("still open")).unwrap();
    assert_eq!(next_frame(&client), Frame::text("still open"));
    client.shutdown(SHUTDOWN);
}

#[test]
fn server_ping_answered_with_same_payload_plain() {
    server_ping_answered(Transport::Plain);
}

#[test]
fn server_ping_answered_with_same_payload_tls() {
    server_ping_answered(Transport::Tls);
}

fn client_ping_answered(transport: Transport) {
    if !python_ready() {
        return;
    }
    let (_server, builder) = setup(transport, &["echo"], "/");
    let client = builder.connect().unwrap();
    for p in [b"client-ping".to_vec(), Vec::new(), vec![0xA5; 125]] {
        client.ping(p.clone()).unwrap();
        let got = next_event(&client, WAIT, |e| match e {
            Event::Pong { payload, .. } => Some(payload),
            Event::Closed { info, .. } => panic!("closed while waiting for a pong: {info:?}"),
            _ => None,
        });
        assert_eq!(got, p);
    }
    client.shutdown(SHUTDOWN);
}

#[test]
fn client_ping_answered_by_server_plain() {
    client_ping_answered(Transport::Plain);
}

#[test]
fn client_ping_answered_by_server_tls() {
    client_ping_answered(Transport::Tls);
}

// ---------------------------------------------------------------------------------------------
// Close codes
// ---------------------------------------------------------------------------------------------

const CLOSE_CODES: [u16; 5] = [1000, 1001, 1008, 4000, 4321];

fn server_close_codes(transport: Transport) {
    if !python_ready() {
        return;
    }
    for code in CLOSE_CODES {
        let reason = format!("server says bye {code} ✓");
        let (server, builder) = setup(transport, &["close", &code.to_string(), &reason], "/");
        let client = builder.connect().unwrap();
        let info = next_closed(&client);
        assert_eq!(
            (info.initiator, info.code, info.reason.as_str(), info.clean),
            (Initiator::Remote, CloseCode(code), reason.as_str(), true),
            "server close with {code} ({transport:?}): {info:?}"
        );
        assert!(
            matches!(info.cause, Cause::ServerClosed(c) if c == CloseCode(code)),
            "{info:?}"
        );
        assert!(!client.is_open());
        assert!(matches!(
            client.send(Frame::text("too late")),
            Err(Error::Closed { .. })
        ));
        // The client echoed the code (RFC 6455 §5.5.1); syncws sends no reason with the echo.
        assert_eq!(server.expect_line("CLOSED "), format!("{code} "));
        client.shutdown(SHUTDOWN);
    }
}

#[test]
fn server_close_codes_reach_client_plain() {
    server_close_codes(Transport::Plain);
}

#[test]
fn server_close_codes_reach_client_tls() {
    server_close_codes(Transport::Tls);
}

fn client_close_codes(transport: Transport) {
    if !python_ready() {
        return;
    }
    for code in CLOSE_CODES {
        let reason = format!("client says bye {code} ✓");
        let (server, builder) = setup(transport, &["expect-close"], "/");
        let client = builder.connect().unwrap();
        // One round trip first, so the close is not racing the server's handler start.
        client.send(Frame::text("hello")).unwrap();
        assert_eq!(next_frame(&client), Frame::text("hello"));
        client.close(CloseCode(code), &reason).unwrap();
        let info = next_closed(&client);
        assert_eq!(
            (info.initiator, info.code, info.reason.as_str(), info.clean),
            (Initiator::Local, CloseCode(code), reason.as_str(), true),
            "client close with {code} ({transport:?}): {info:?}"
        );
        assert!(matches!(info.cause, Cause::Requested), "{info:?}");
        assert_eq!(server.expect_line("CLOSED "), format!("{code} {reason}"));
        client.shutdown(SHUTDOWN);
    }
}

#[test]
fn client_close_codes_reach_server_plain() {
    client_close_codes(Transport::Plain);
}

#[test]
fn client_close_codes_reach_server_tls() {
    client_close_codes(Transport::Tls);
}

/// `shutdown` on an open connection performs a clean close with 1000.
#[test]
fn shutdown_closes_with_normal_code() {
    if !python_ready() {
        return;
    }
    let (server, builder) = setup(Transport::Plain, &["expect-close"], "/");
    let client = builder.connect().unwrap();
    client.send(Frame::text("hello")).unwrap();
    assert_eq!(next_frame(&client), Frame::text("hello"));
    let started = Instant::now();
    client.shutdown(SHUTDOWN);
    assert!(
        started.elapsed() < SHUTDOWN + Duration::from_millis(500),
        "shutdown took {:?}",
        started.elapsed()
    );
    assert_eq!(server.expect_line("CLOSED "), "1000 ");
}

/// A close frame without a status code is reported as 1005 and answered with an empty close.
#[test]
fn server_close_without_status_code() {
    if !python_ready() {
        return;
    }
    for transport in [Transport::Plain, Transport::Tls] {
        let (server, builder) = setup(transport, &["close", "none"], "/");
        let client = builder.connect().unwrap();
        let info = next_closed(&client);
        assert_eq!(
            (info.initiator, info.code, info.reason.as_str(), info.clean),
            (Initiator::Remote, CloseCode::NO_STATUS, "", true),
            "{transport:?}: {info:?}"
        );
        // An empty close is answered with an empty close (websockets reads it as 1005).
        assert_eq!(server.expect_line("CLOSED "), "1005 ");
        client.shutdown(SHUTDOWN);
    }
}

/// Everything the server sent before its close frame reaches the application, in order, and
/// before the `Closed` event.
#[test]
fn messages_before_server_close_are_delivered() {
    if !python_ready() {
        return;
    }
    for transport in [Transport::Plain, Transport::Tls] {
        let (server, builder) = setup(transport, &["send-then-close", "500", "4001", "done"], "/");
        let client = builder.connect().unwrap();
        for i in 0..500 {
            assert_eq!(next_frame(&client), Frame::text(format!("msg {i}")));
        }
        let info = next_event(&client, WAIT, |e| match e {
            Event::Closed { info, .. } => Some(info),
            other => panic!("expected Closed after the last message, got {other:?}"),
        });
        assert_eq!(
            (info.initiator, info.code, info.reason.as_str(), info.clean),
            (Initiator::Remote, CloseCode(4001), "done", true),
            "{transport:?}"
        );
        assert_eq!(server.expect_line("CLOSED "), "4001 ");
        client.shutdown(SHUTDOWN);
    }
}

/// The server drops the TCP connection without a close frame: the client reports a transport
/// close with 1006, not clean, with an error.
#[test]
fn server_drops_connection_without_close_frame() {
    if !python_ready() {
        return;
    }
    for transport in [Transport::Plain, Transport::Tls] {
        let (server, builder) = setup(transport, &["abort"], "/");
        let client = builder.connect().unwrap();
        client.send(Frame::text("last words")).unwrap();
        assert_eq!(next_frame(&client), Frame::text("last words"));
        client.send(Frame::text("drop me now")).unwrap();
        let info = next_closed(&client);
        assert_eq!(
            (info.initiator, info.code, info.clean),
            (Initiator::Transport, CloseCode::ABNORMAL, false),
            "{transport:?}: {info:?}"
        );
        assert!(
            matches!(info.cause, Cause::Transport(_)),
            "{transport:?}: {info:?}"
        );
        assert!(!client.is_open());
        assert_eq!(server.expect_line("CLOSED "), "1006 ");
        client.shutdown(SHUTDOWN);
    }
}

/// The client closes while the server is sending as fast as it can: the client keeps reading
/// until the server's close frame, and the handshake completes cleanly.
#[test]
fn client_close_while_server_streams() {
    if !python_ready() {
        return;
    }
    for transport in [Transport::Plain, Transport::Tls] {
        let (server, builder) = setup(transport, &["stream"], "/");
        let client = builder.connect().unwrap();
        for i in 0..200 {
            match next_frame(&client) {
                Frame::Text(t) => assert!(t.starts_with(&format!("tick {i} ")), "{t:.20}"),
                other => panic!("unexpected {other:?}"),
            }
        }
        client.close(CloseCode(4002), "enough").unwrap();
        let info = next_closed(&client);
        assert_eq!(
            (info.initiator, info.code, info.reason.as_str(), info.clean),
            (Initiator::Local, CloseCode(4002), "enough", true),
            "{transport:?}: {info:?}"
        );
        assert!(matches!(info.cause, Cause::Requested), "{info:?}");
        assert_eq!(server.expect_line("CLOSED "), "4002 enough");
        client.shutdown(SHUTDOWN);
    }
}

/// Invalid UTF-8 in a text message makes the client close with 1007 and report
/// `Error::Protocol`.
#[test]
fn invalid_utf8_from_server_closes_with_1007() {
    if !python_ready() {
        return;
    }
    for transport in [Transport::Plain, Transport::Tls] {
        let (server, builder) = setup(transport, &["bad-utf8"], "/");
        let client = builder.connect().unwrap();
        let info = next_event(&client, WAIT, |e| match e {
            Event::Closed { info, .. } => Some(info),
            Event::Frame { frame, .. } => panic!("invalid text delivered: {frame:?}"),
            _ => None,
        });
        assert_eq!(
            (info.initiator, info.code),
            (Initiator::Local, CloseCode::INVALID_PAYLOAD),
            "{transport:?}: {info:?}"
        );
        assert!(
            matches!(
                info.cause,
                Cause::Protocol(Error::Protocol {
                    code: CloseCode::INVALID_PAYLOAD,
                    ..
                })
            ),
            "{transport:?}: {info:?}"
        );
        let line = server.expect_line("CLOSED ");
        assert!(line.starts_with("1007 "), "server saw {line:?}");
        client.shutdown(SHUTDOWN);
    }
}

/// A message over the server's limit: the server closes with 1009 and the client reports it.
#[test]
fn message_over_server_limit_closed_with_1009() {
    if !python_ready() {
        return;
    }
    for transport in [Transport::Plain, Transport::Tls] {
        let (_server, builder) = setup(transport, &["max-size", "1000"], "/");
        let client = builder.connect().unwrap();
        client.send(Frame::Binary(vec![1; 1000])).unwrap();
        assert_eq!(next_frame(&client), Frame::Binary(vec![1; 1000]));
        client.send(Frame::Binary(vec![2; 1001])).unwrap();
        let info = next_closed(&client);
        assert_eq!(
            (info.initiator, info.code),
            (Initiator::Remote, CloseCode::TOO_BIG),
            "{transport:?}: {info:?}"
        );
        assert!(info.reason.contains("1000"), "{info:?}");
        client.shutdown(SHUTDOWN);
    }
}

/// A ping between the fragments of a message is answered at once and does not disturb the
/// reassembly.
#[test]
fn ping_between_fragments_answered() {
    if !python_ready() {
        return;
    }
    for transport in [Transport::Plain, Transport::Tls] {
        let (server, builder) = setup(transport, &["ping-mid-fragment"], "/");
        let client = builder.connect().unwrap();
        // The server waits for the pong before sending the last fragment.
        assert_eq!(server.expect_line("PONG "), "pong-ok:mid-fragment");
        assert_eq!(next_frame(&client), Frame::text("before ping, after ping"));
        assert_eq!(next_frame(&client), Frame::text("pong-ok:mid-fragment"));
        client.shutdown(SHUTDOWN);
    }
}

/// Over-long close reasons are cut on a character boundary to fit 123 bytes; over-long ping
/// payloads to 125 bytes. The peer accepts both.
#[test]
fn long_close_reason_and_ping_payload_are_truncated() {
    if !python_ready() {
        return;
    }
    let (server, builder) = setup(Transport::Plain, &["expect-close"], "/");
    let client = builder.connect().unwrap();
    let long_ping: Vec<u8> = (0..200u8).collect();
    client.ping(long_ping.clone()).unwrap();
    let pong = next_event(&client, WAIT, |e| match e {
        Event::Pong { payload, .. } => Some(payload),
        _ => None,
    });
    assert_eq!(pong, long_ping[..125]);
    // 1 + 3 * 60 bytes; 123 bytes would split the 41st check mark.
    let reason = format!("a{}", "✓".repeat(60));
    client.close(CloseCode(4003), &reason).unwrap();
    let info = next_closed(&client);
    assert_eq!(
        (info.initiator, info.code, info.clean),
        (Initiator::Local, CloseCode(4003), true),
        "{info:?}"
    );
    let expected = format!("a{}", "✓".repeat(40));
    assert_eq!(server.expect_line("CLOSED "), format!("4003 {expected}"));
    client.shutdown(SHUTDOWN);
}

/// Codes that must never appear on the wire (RFC 6455 §7.4.1-2: 0-999, 1004-1006, 1015,
/// 1016-2999): a peer treats them as a protocol error. `Client::close` must not put them on the
/// wire (it may refuse the call, or send a valid code such as 1000 instead).
#[test]
fn close_with_reserved_code_does_not_send_it() {
    if !python_ready() {
        return;
    }
    for code in [0u16, 999, 1005, 1006, 1015, 2000] {
        let (server, builder) = setup(Transport::Plain, &["expect-close"], "/");
        let client = builder.connect().unwrap();
        client.send(Frame::text("hello")).unwrap();
        assert_eq!(next_frame(&client), Frame::text("hello"));
        match client.close(CloseCode(code), "reserved") {
            Err(_) => {
                // Refused: the connection must still be open and closable normally.
                assert!(
                    client.is_open(),
                    "close({code}) refused but connection not open"
                );
                client.close(CloseCode::NORMAL, "").unwrap();
                assert_eq!(
                    server.expect_line("CLOSED "),
                    "1000 ",
                    "after close({code})"
                );
            }
            Ok(()) => {
                let info = next_closed(&client);
                // websockets reports 1006 when it failed the connection over an invalid code.
                let line = server.expect_line("CLOSED ");
                let sent: u16 = line.split(' ').next().unwrap().parse().unwrap();
                assert!(
                    CloseCode(sent).is_sendable(),
                    "close({code}) put an invalid code on the wire: server saw {line:?}, \
                     client reported {info:?}"
                );
            }
        }
        client.shutdown(SHUTDOWN);
    }
}

/// permessage-deflate is not supported: a server with compression enabled (the websockets
/// default) negotiates none when the client offers none, and a server accepting an extension
/// the user forced into the request is refused.
#[test]
fn compression_is_never_negotiated() {
    if !python_ready() {
        return;
    }
    let (_server, builder) = setup(Transport::Plain, &["echo-deflate"], "/");
    let client = builder.connect().unwrap();
    let text = "compressible ".repeat(1000);
    client.send(Frame::text(text.clone())).unwrap();
    assert_eq!(next_frame(&client), Frame::Text(text));
    client.shutdown(SHUTDOWN);

    let (_server, builder) = setup(Transport::Plain, &["echo-deflate"], "/");
    match builder
        .header("Sec-WebSocket-Extensions", "permessage-deflate")
        .connect()
    {
        Err(Error::InvalidHandshake(msg)) => assert!(msg.contains("extension"), "{msg}"),
        Err(e) => panic!("expected InvalidHandshake, got {e:?}"),
        Ok(client) => {
            client.shutdown(SHUTDOWN);
            panic!("accepted a server that enabled permessage-deflate");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Upgrade request and refusal
// ---------------------------------------------------------------------------------------------

fn rejected(transport: Transport, status: u16) {
    if !python_ready() {
        return;
    }
    let (_server, builder) = setup(transport, &["reject", &status.to_string()], "/");
    match builder.connect() {
        Err(Error::HandshakeRejected {
            status: got,
            headers,
            body,
            retry_after,
        }) => {
            assert_eq!(got, status, "headers: {headers}");
            assert!(
                body.contains(REJECT_BODY),
                "body excerpt {body:?} lacks {REJECT_BODY:?}"
            );
            let transient = Error::HandshakeRejected {
                status: got,
                headers,
                body,
                retry_after,
            }
            .is_transient();
            assert_eq!(transient, status == 503);
        }
        Err(e) => panic!("expected HandshakeRejected({status}), got {e:?}"),
        Ok(client) => {
            client.shutdown(SHUTDOWN);
            panic!("upgrade refused with {status} but connect succeeded");
        }
    }
}

#[test]
fn handshake_rejected_401_plain() {
    rejected(Transport::Plain, 401);
}

#[test]
fn handshake_rejected_503_plain() {
    rejected(Transport::Plain, 503);
}

#[test]
fn handshake_rejected_401_tls() {
    rejected(Transport::Tls, 401);
}

#[test]
fn handshake_rejected_503_tls() {
    rejected(Transport::Tls, 503);
}

fn request_seen_by_server(transport: Transport) {
    if !python_ready() {
        return;
    }
    let path = "/feed/v1?symbols=BTC-USD,ETH-USD&depth=10";
    let (_server, builder) = setup(transport, &["subprotocol", "md.v2"], path);
    let client = builder
        .header("Authorization", "Bearer t0ken")
        .header("X-Syncws-Test", "value with spaces")
        .subprotocol("md.v1")
        .subprotocol("md.v2")
        .connect()
        .unwrap();
    assert_eq!(client.protocol(), Some("md.v2"));
    assert_eq!(next_frame(&client), Frame::text(format!("path:{path}")));
    assert_eq!(
        next_frame(&client),
        Frame::text("header:authorization:Bearer t0ken")
    );
    assert_eq!(
        next_frame(&client),
        Frame::text("header:x-syncws-test:value with spaces")
    );
    assert_eq!(next_frame(&client), Frame::text("subprotocol:md.v2"));
    client.shutdown(SHUTDOWN);
}

#[test]
fn request_path_headers_and_subprotocol_plain() {
    request_seen_by_server(Transport::Plain);
}

#[test]
fn request_path_headers_and_subprotocol_tls() {
    request_seen_by_server(Transport::Tls);
}

/// The server selects no subprotocol when none of the offered ones is known.
#[test]
fn no_common_subprotocol() {
    if !python_ready() {
        return;
    }
    let (_server, builder) = setup(Transport::Plain, &["request"], "/");
    let client = builder.subprotocol("unknown.v9").connect();
    // websockets answers without Sec-WebSocket-Protocol; that is a valid handshake.
    let client = client.unwrap();
    assert_eq!(client.protocol(), None);
    assert_eq!(next_frame(&client), Frame::text("path:/"));
    assert_eq!(next_frame(&client), Frame::text("subprotocol:"));
    client.shutdown(SHUTDOWN);
}

// ---------------------------------------------------------------------------------------------
// TLS failures
// ---------------------------------------------------------------------------------------------

#[test]
fn tls_certificate_for_wrong_host_is_refused() {
    if !python_ready() {
        return;
    }
    let pki = Pki::new("syncws interop CA");
    let server = PyServer::start_tls(&["echo"], TlsFiles::new(&pki, &["example.test"]));
    let result = Client::builder(&server.url("/"))
        .add_root_certificate(pki.ca_der())
        .connect();
    match result {
        Err(Error::Tls(rustls::Error::InvalidCertificate(e))) => {
            let text = format!("{e:?}");
            assert!(text.contains("NotValidForName"), "{text}");
        }
        Err(e) => panic!("expected a certificate name error, got {e:?}"),
        Ok(client) => {
            client.shutdown(SHUTDOWN);
            panic!("connected although the certificate is for example.test");
        }
    }
    // The same server is fine when the name checked is the certificate's.
    let client = Client::builder(&server.url("/"))
        .add_root_certificate(pki.ca_der())
        .tls_server_name("example.test")
        .connect()
        .unwrap();
    client.send(Frame::text("right name")).unwrap();
    assert_eq!(next_frame(&client), Frame::text("right name"));
    client.shutdown(SHUTDOWN);
}

#[test]
fn tls_certificate_from_unknown_ca_is_refused() {
    if !python_ready() {
        return;
    }
    let pki = Pki::new("syncws interop CA");
    let other = Pki::new("some other CA");
    let server = PyServer::start_tls(&["echo"], TlsFiles::new(&pki, &["localhost"]));
    let result = Client::builder(&server.url("/"))
        .add_root_certificate(other.ca_der())
        .connect();
    match result {
        Err(Error::Tls(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer,
        ))) => {}
        Err(e) => panic!("expected Tls(InvalidCertificate(UnknownIssuer)), got {e:?}"),
        Ok(client) => {
            client.shutdown(SHUTDOWN);
            panic!("connected although the server's CA is not trusted");
        }
    }
    // Nothing is trusted by default either (the webpki roots do not include this CA).
    match Client::builder(&server.url("/")).connect() {
        Err(Error::Tls(_)) => {}
        Err(e) => panic!("expected a TLS error, got {e:?}"),
        Ok(client) => {
            client.shutdown(SHUTDOWN);
            panic!("connected to a self-made CA's server without trusting it");
        }
    }
    // The server itself is healthy: trusting its CA works.
    let client = Client::builder(&server.url("/"))
        .add_root_certificate(pki.ca_der())
        .connect()
        .unwrap();
    client.send(Frame::text("trusted now")).unwrap();
    assert_eq!(next_frame(&client), Frame::text("trusted now"));
    client.shutdown(SHUTDOWN);
}
