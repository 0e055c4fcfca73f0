//! A `redis-server` of a test's own: a free port, a temporary directory, killed (and the
//! directory removed) when dropped; restartable on the same port, with or without persistence,
//! and pausable with SIGSTOP.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use syncws::Data;
use syncws::hub::{Conn, Handler, Message, Position, Publication};

use super::wait_until;

const WAIT: Duration = Duration::from_secs(20);

pub fn binary() -> PathBuf {
    std::env::var_os("SYNCWS_REDIS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("redis-server"))
}

pub fn redis_status() -> Result<(), String> {
    match Command::new(binary()).arg("--version").output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!("redis-server --version exited with {}", out.status)),
        Err(e) => Err(format!("no redis-server ({e}); set SYNCWS_REDIS_SERVER")),
    }
}

/// A `redis-server` of the test's own.
pub struct Redis {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    persistent: bool,
}

impl Redis {
    pub fn start(persistent: bool) -> Redis {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("syncws-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut r = Redis {
            child: None,
            port,
            dir,
            persistent,
        };
        r.restart();
        r
    }

    pub fn restart(&mut self) {
        let aof = if self.persistent { "yes" } else { "no" };
        let child = Command::new(binary())
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--save", "", "--appendonly", aof, "--appendfsync", "always"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let port = self.port;
        wait_until("redis-server to answer PING", WAIT, || {
            let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
            s.write_all(b"PING\r\n").ok()?;
            let mut b = [0u8; 7];
            s.read_exact(&mut b).ok()?;
            (&b == b"+PONG\r\n").then_some(())
        });
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: a signal to our own, not yet reaped, child.
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    pub fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A hub handler for the Redis tests: `join:R` joins R, `since:R:EPOCH:OFFSET` joins it from a
/// position (answered `joined R EPOCH OFFSET RECOVERED`, or `error ...`), `leave:R` leaves it
/// (answered `left R true|false`); publications arrive as `R EPOCH OFFSET DATA`, resets as
/// `reset R EPOCH OFFSET`.
pub struct RoomApp;

impl Handler for RoomApp {
    fn on_message(&self, conn: &Conn, message: Data<'_>) {
        let Data::Text(text) = message else { return };
        if let Some(room) = text.strip_prefix("leave:") {
            let left = conn.hub().leave(conn, room);
            let _ = conn.send(&Message::text(format!("left {room} {left}")));
            return;
        }
        let (room, since) = if let Some(room) = text.strip_prefix("join:") {
            (room, None)
        } else if let Some(rest) = text.strip_prefix("since:") {
            let mut p = rest.split(':');
            let room = p.next().unwrap();
            let epoch = p.next().unwrap();
            let offset = p.next().unwrap().parse().unwrap();
            (
                room,
                Some(Position {
                    epoch: epoch.into(),
                    offset,
                }),
            )
        } else {
            return;
        };
        let r = conn.hub().join(conn, room, since.as_ref(), |j| {
            Some(Message::text(format!(
                "joined {room} {} {} {}",
                j.position.epoch, j.position.offset, j.recovered
            )))
        });
        if let Err(e) = r {
            let _ = conn.send(&Message::text(format!("error {e}")));
        }
    }

    fn encode(&self, p: &Publication) -> Message {
        Message::text(format!(
            "{} {} {} {}",
            p.room,
            p.position.epoch,
            p.position.offset,
            String::from_utf8_lossy(&p.data)
        ))
    }

    fn on_reset(&self, room: &str, position: &Position) -> Option<Message> {
        Some(Message::text(format!(
            "reset {room} {} {}",
            position.epoch, position.offset
        )))
    }
}
