//! Opening a connection: resolve, TCP connect with a per-address timeout, TLS, HTTP upgrade.
//!
//! The whole sequence runs under one handshake deadline; each address gets at most
//! `connect_timeout` of it. Addresses are tried in resolver order and the last failure is reported.

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::{ClientConfig, ClientConnection};

use crate::deadline;
use crate::error::{Error, Result};
use crate::handshake::{self, Upgraded};
use crate::target::Target;
use crate::tls::TlsOptions;
use crate::transport::Stream;

/// Everything needed to dial one connection.
pub(crate) struct Dialer {
    pub target: Target,
    pub tls_config: Option<Arc<ClientConfig>>,
    pub tls: TlsOptions,
    pub connect_timeout: Duration,
    pub handshake_timeout: Duration,
    pub nodelay: bool,
    pub headers: Vec<(String, String)>,
    pub subprotocols: Vec<String>,
}

impl Dialer {
    /// Connects and upgrades. Blocks for at most `handshake_timeout` (plus DNS resolution, which
    /// the OS resolver bounds).
    ///
    /// `extra_headers` are added after the fixed ones (per-attempt headers from the endpoint).
    /// `on_tcp` sees the socket as soon as it is connected, so another thread can shut it down
    /// to abort the rest of the handshake.
    pub(crate) fn dial(
        &self,
        extra_headers: &[(String, String)],
        on_tcp: &mut dyn FnMut(&TcpStream),
    ) -> Result<(Stream, Upgraded)> {
        let deadline = deadline::after(Instant::now(), self.handshake_timeout);
        let sock = self.tcp_connect(deadline)?;
        on_tcp(&sock);
        sock.set_nodelay(self.nodelay).map_err(Error::Io)?;
        let tls = match &self.tls_config {
            Some(config) => {
                let name = self.tls.server_name(&self.target.host)?;
                Some(ClientConnection::new(config.clone(), name)?)
            }
            None => None,
        };
        let mut stream = Stream { sock, tls };
        set_timeouts(&stream.sock, deadline)?;
        if let Some(conn) = &mut stream.tls {
            while conn.is_handshaking() {
                set_timeouts(&stream.sock, deadline)?;
                conn.complete_io(&mut stream.sock)
                    .map_err(handshake::io_error)?;
            }
        }
        set_timeouts(&stream.sock, deadline)?;
        let headers: Vec<(String, String)> =
            self.headers.iter().chain(extra_headers).cloned().collect();
        let upgraded = handshake::upgrade(&mut stream, &self.target, &headers, &self.subprotocols)?;
        log::debug!(
            "connected to {}:{} (tls: {}, protocol: {:?}, {} early bytes)",
            self.target.host,
            self.target.port,
            self.target.tls,
            upgraded.protocol,
            upgraded.leftover.len()
        );
        Ok((stream, upgraded))
    }

    fn tcp_connect(&self, deadline: Instant) -> Result<TcpStream> {
        let target = format!("{}:{}", self.target.host, self.target.port);
        let addrs: Vec<SocketAddr> = (self.target.host.as_str(), self.target.port)
            .to_socket_addrs()
            .map_err(|source| Error::Connect {
                target: target.clone(),
                source,
            })?
            .collect();
        let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address resolved");
        for addr in addrs {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Timeout("connect"));
            }
            match TcpStream::connect_timeout(&addr, left.min(self.connect_timeout)) {
                Ok(sock) => return Ok(sock),
                Err(e) => {
                    log::debug!("connect to {addr} failed: {e}");
                    last = e;
                }
            }
        }
        Err(Error::Connect {
            target,
            source: last,
        })
    }
}

/// Bounds every blocking read and write by what is left of the handshake deadline.
fn set_timeouts(sock: &TcpStream, deadline: Instant) -> Result<()> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(Error::Timeout("handshake"));
    }
    sock.set_read_timeout(Some(left)).map_err(Error::Io)?;
    sock.set_write_timeout(Some(left)).map_err(Error::Io)
}
