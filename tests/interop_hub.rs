//! The hub's example service (`examples/notify_server`) against independent clients: Python
//! `websockets`, Node `ws`, and a real browser (headless Chromium loading the service's page).
//!
//! Each test needs its peer: `python3` with `websockets >= 17` (`SYNCWS_PYTHON` names another
//! interpreter), `node` with the `ws` package (`SYNCWS_NODE_PATH` is the `node_modules` folder
//! holding it), or Chromium (`SYNCWS_CHROMIUM`, default `/usr/bin/chromium`). Without its peer a
//! test is reported as ignored, with the reason, unless `SYNCWS_REQUIRE_PEERS=1` (CI), where it
//! fails. `.ci/run` installs all three.

mod python_peer;
mod support;

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Bound on a peer's whole run.
const PEER_RUN: Duration = Duration::from_secs(60);

/// `notify_server` on a free port, stopped with SIGTERM when dropped.
struct NotifyServer {
    child: Child,
    port: u16,
}

impl NotifyServer {
    fn start() -> NotifyServer {
        Self::start_with(&[])
    }

    fn start_with(args: &[&str]) -> NotifyServer {
        let (child, port) = support::start_example_server("notify_server", args);
        NotifyServer { child, port }
    }

    fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }
}

impl Drop for NotifyServer {
    fn drop(&mut self) {
        // SAFETY: a signal to our own child, which has not been reaped yet.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// Runs a peer command to its end (bounded); returns its stdout.
fn run_peer(mut command: Command) -> String {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("peer starts");
    let deadline = Instant::now() + PEER_RUN;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout).to_string();
            assert!(
                status.success() && stdout.lines().any(|l| l == "OK"),
                "peer failed ({status}):\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            return stdout;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("peer did not finish within {PEER_RUN:?}");
        }
        std::thread::sleep(Duration::from_millis(20)); // polling a child's exit status
    }
}

fn python_protocol() {
    let server = NotifyServer::start();
    let mut cmd = Command::new(python_peer::python());
    cmd.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/notify_client.py"
    ))
    .args([server.url().as_str(), "protocol"]);
    run_peer(cmd);
}

fn python_deflate() {
    let server = NotifyServer::start_with(&["--deflate"]);
    let mut cmd = Command::new(python_peer::python());
    cmd.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/notify_client.py"
    ))
    .args([server.url().as_str(), "deflate"]);
    run_peer(cmd);
}

fn node_path() -> Option<String> {
    std::env::var("SYNCWS_NODE_PATH").ok()
}

fn node_status() -> Result<(), String> {
    let mut cmd = Command::new("node");
    cmd.args(["-e", "require('ws')"]).stdin(Stdio::null());
    if let Some(p) = node_path() {
        cmd.env("NODE_PATH", p);
    }
    match cmd.output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(_) => Err("node cannot require('ws') (set SYNCWS_NODE_PATH to its node_modules)".into()),
        Err(e) => Err(format!("cannot run node: {e}")),
    }
}

fn node_ordering() {
    let server = NotifyServer::start();
    let mut cmd = Command::new("node");
    cmd.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/node/notify_client.js"
    ))
    .arg(server.url());
    if let Some(p) = node_path() {
        cmd.env("NODE_PATH", p);
    }
    run_peer(cmd);
}

fn chromium() -> PathBuf {
    std::env::var_os("SYNCWS_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

fn chromium_status() -> Result<(), String> {
    let path = chromium();
    if path.is_file() {
        Ok(())
    } else {
        Err(format!(
            "no Chromium at {} (set SYNCWS_CHROMIUM)",
            path.display()
        ))
    }
}

/// A tungstenite client of the service with a bearer token.
fn client(url: &str, token: &str) -> tungstenite::WebSocket<TcpStream> {
    use tungstenite::client::IntoClientRequest;
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Authorization", format!("Bearer {token}").parse().unwrap());
    let addr = url.trim_start_matches("ws://").trim_end_matches("/ws");
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    tungstenite::client(request, sock).unwrap().0
}

/// Headless Chromium loads the page, which subscribes to `news` and reports every message it
/// shows by publishing `seen:<data>` to `acks`; another client publishes to `news`.
fn chromium_page() {
    let server = NotifyServer::start();
    let profile = python_peer::TempDir::new("chromium");
    let page = format!(
        "http://127.0.0.1:{}/?token=s1&channel=news&auto=1&echo=acks",
        server.port
    );
    let mut browser = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(&page)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromium starts");
    let mut acks = client(&server.url(), "s2");
    acks.send(tungstenite::Message::text(
        r#"{"op":"subscribe","channel":"acks"}"#,
    ))
    .unwrap();
    let mut publisher = client(&server.url(), "s2");
    let deadline = Instant::now() + Duration::from_secs(45);
    let mut n = 0;
    let seen = loop {
        assert!(Instant::now() < deadline, "the page never showed a message");
        n += 1;
        publisher
            .send(tungstenite::Message::text(format!(
                r#"{{"op":"publish","channel":"news","data":"hello {n}"}}"#
            )))
            .unwrap();
        // Read acks for a while (the read timeout paces the publications).
        match acks.read() {
            Ok(tungstenite::Message::Text(t)) if t.contains(r#""op":"message""#) => break t,
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("acks connection failed: {e}"),
        }
    };
    let _ = browser.kill();
    let _ = browser.wait();
    assert!(seen.contains(r#""from":"alice""#), "{seen}");
    assert!(seen.contains(r#""data":"seen:\"hello "#), "{seen}");
}

/// A test, and whether its peer is there.
type PeerTest = (&'static str, fn(), Result<(), String>);

fn main() {
    let args = libtest_mimic::Arguments::from_args();
    let python = python_peer::websockets_status().clone();
    let tests: [PeerTest; 4] = [
        (
            "python_websockets_speaks_the_notify_protocol",
            python_protocol,
            python.clone(),
        ),
        (
            "python_websockets_compresses_to_a_deflate_hub",
            python_deflate,
            python,
        ),
        (
            "node_ws_receives_every_publication_in_order",
            node_ordering,
            node_status(),
        ),
        (
            "chromium_shows_a_message_published_by_another_client",
            chromium_page,
            chromium_status(),
        ),
    ];
    let trials = tests
        .into_iter()
        .map(|(name, test, status)| {
            let ignore = status.is_err() && !support::peers_required();
            if let (true, Err(why)) = (ignore, &status) {
                eprintln!("ignored {name}: {why}; see .ci/run");
            }
            libtest_mimic::Trial::test(name, move || {
                if let Err(why) = status {
                    return Err(
                        format!("required peer missing (SYNCWS_REQUIRE_PEERS=1): {why}").into(),
                    );
                }
                test();
                Ok(())
            })
            .with_ignored_flag(ignore)
        })
        .collect();
    libtest_mimic::run(&args, trials).exit();
}
