//! The Python `websockets` (>= 17) peer shared by the interop tests (`tests/interop_python.rs`,
//! `tests/interop_reconnect.rs`): `tests/python/ws_server.py` started as a guarded subprocess,
//! and the skip/require logic (skipped without `python3` + `websockets >= 17`, unless
//! `SYNCWS_REQUIRE_PEERS=1`, where that fails; `SYNCWS_PYTHON` names another interpreter).
//!
//! Use it from a test crate that also declares `mod support;` (it relies on
//! `crate::support` for the certificate authority, `skip_or_fail` and `lines_on_channel`).
#![allow(dead_code)]

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use syncws::{Client, ClientBuilder};

use crate::support::{self, Pki};

/// Default bound on waiting for one stdout line of the server.
pub const WAIT: Duration = Duration::from_secs(5);
/// Bound on the Python server starting up (interpreter start and `import websockets`).
pub const STARTUP: Duration = Duration::from_secs(15);

pub const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/ws_server.py");

pub fn python() -> String {
    std::env::var("SYNCWS_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

/// Checks once per process that the interpreter has `websockets >= 17`.
pub fn websockets_status() -> &'static Result<(), String> {
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

/// Runs `tests` (name, function) as this test binary's harness (`harness = false`), with the
/// usual `cargo test` arguments (filters, `--ignored`, `--include-ignored`, `--list`). Without
/// Python `websockets` every test is reported as *ignored*, with the reason printed once,
/// unless `SYNCWS_REQUIRE_PEERS=1` (CI): then they run and fail on the missing peer.
pub fn run(tests: &[(&'static str, fn())]) -> ! {
    let args = libtest_mimic::Arguments::from_args();
    let missing = websockets_status().as_ref().err();
    let ignore = missing.is_some() && !support::peers_required();
    if let (true, Some(why)) = (ignore, missing) {
        eprintln!("ignored: python websockets >= 17 not installed ({why}); see .ci/run");
    }
    let trials = tests
        .iter()
        .map(|&(name, test)| {
            libtest_mimic::Trial::test(name, move || {
                test();
                Ok(())
            })
            .with_ignored_flag(ignore)
        })
        .collect();
    libtest_mimic::run(&args, trials).exit()
}

/// True when the tests can run; otherwise skips (or fails under `SYNCWS_REQUIRE_PEERS=1`).
pub fn python_ready() -> bool {
    match websockets_status() {
        Ok(()) => true,
        Err(why) => {
            support::skip_or_fail(&format!("python websockets >= 17 not installed: {why}"));
            false
        }
    }
}

/// A directory under the system temp dir, unique to this test, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
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

    /// The directory.
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Certificate and key PEM files for the Python server.
pub struct TlsFiles {
    dir: TempDir,
}

impl TlsFiles {
    /// A leaf certificate for `names` issued by `pki`.
    pub fn new(pki: &Pki, names: &[&str]) -> TlsFiles {
        let leaf = pki.server_cert(names);
        let dir = TempDir::new("tls");
        std::fs::write(dir.0.join("cert.pem"), leaf.cert_pem).unwrap();
        std::fs::write(dir.0.join("key.pem"), leaf.key_pem).unwrap();
        TlsFiles { dir }
    }

    pub fn args(&self) -> [PathBuf; 2] {
        [self.dir.0.join("cert.pem"), self.dir.0.join("key.pem")]
    }
}

/// A running `ws_server.py`. Dropping it closes its stdin (it exits on EOF), then kills and
/// reaps it if it has not exited within a moment.
pub struct PyServer {
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
    pub fn start(mode: &[&str]) -> PyServer {
        PyServer::spawn(mode, None)
    }

    pub fn start_tls(mode: &[&str], files: TlsFiles) -> PyServer {
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

        let lines = support::lines_on_channel("py-stdout", child.stdout.take().unwrap());

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
    pub fn next_line(&self, within: Duration, what: &str) -> String {
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
    pub fn expect_line(&self, prefix: &str) -> String {
        self.expect_line_within(prefix, WAIT)
    }

    /// Like [`expect_line`](Self::expect_line), waiting at most `within`.
    pub fn expect_line_within(&self, prefix: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.next_line(left, &format!("line starting with {prefix:?}"));
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest.to_string();
            }
        }
    }

    /// Every line printed so far and not yet read, without waiting.
    pub fn lines_so_far(&self) -> Vec<String> {
        self.lines.try_iter().collect()
    }

    /// The URL of the server (`wss://localhost:PORT` over TLS so the certificate name matches).
    pub fn url(&self, path: &str) -> String {
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

/// A plain or TLS variant of a test: which server to start and how to build the client.
#[derive(Clone, Copy, Debug)]
pub enum Transport {
    /// `ws://`
    Plain,
    /// `wss://` with a certificate from a test CA the client trusts.
    Tls,
}

/// Starts the server in `mode` over `transport`; returns it with a client builder that trusts
/// it (and the CA, kept alive in the returned value).
pub fn setup(transport: Transport, mode: &[&str], path: &str) -> (PyServer, ClientBuilder) {
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
