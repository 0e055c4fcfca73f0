//! Opening a connection: resolve, TCP connect with a per-address timeout, TLS, HTTP upgrade.
//!
//! The whole sequence runs under one handshake deadline; each address gets at most
//! `connect_timeout` of it. Addresses are tried in resolver order and the last failure is reported.
//!
//! The deadline is absolute: every socket read and write of the TLS handshake and the HTTP
//! upgrade is armed with what is left of it ([`Deadlined`](crate::opening::Deadlined)), so a server that trickles its answer
//! one byte at a time runs out of time like a silent one. (Re-arming a whole timeout per read
//! would let each byte buy another full timeout.)

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::{ClientConfig, ClientConnection, Connection};

use crate::client::proxy::Proxy;
use crate::client::target::Target;
use crate::deadline;
use crate::deflate::DeflateParams;
use crate::error::{Error, Result};
use crate::handshake::{self, Upgraded};
use crate::opening::OpeningIo;
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
    /// Through which proxy, if any (resolved once, at `connect`).
    pub proxy: Option<Proxy>,
    /// How to reach an `https://` proxy.
    pub proxy_tls: Option<Arc<ClientConfig>>,
    /// permessage-deflate to offer, if any.
    pub deflate: Option<DeflateParams>,
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
        // Refused before any connection is made: nothing of a bad header reaches the wire.
        handshake::check_request(&self.headers, &self.subprotocols)?;
        handshake::check_request(extra_headers, &[])?;
        let deadline = deadline::after(Instant::now(), self.handshake_timeout);
        let (sock, proxy_session) = self.tcp_connect(deadline, on_tcp)?;
        sock.set_nodelay(self.nodelay).map_err(Error::Io)?;
        let tls = match &self.tls_config {
            Some(config) => {
                let name = self.tls.server_name(&self.target.host)?;
                Some(Connection::Client(ClientConnection::new(
                    config.clone(),
                    name,
                )?))
            }
            None => None,
        };
        // Through an https:// proxy, a wss:// server's TLS runs inside the proxy's session; a
        // ws:// server's bytes are that session's plaintext.
        let (tls, under) = match (tls, proxy_session) {
            (Some(tls), under) => (Some(tls), under),
            (None, proxy) => (proxy, None),
        };
        let mut stream = Stream {
            sock: Arc::new(sock),
            tls,
            under,
        };
        let mut io = OpeningIo::new(&mut stream, deadline);
        io.complete_tls_handshake().map_err(tls_handshake_error)?;
        let headers: Vec<(String, String)> =
            self.headers.iter().chain(extra_headers).cloned().collect();
        let upgraded = handshake::upgrade(
            &mut io,
            &self.target,
            &headers,
            &self.subprotocols,
            self.deflate.as_ref(),
        )?;
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

    /// The TCP connection to the server, or through the proxy (with the proxy's TLS session
    /// for an `https://` proxy). `on_tcp` sees the socket as soon as it is connected.
    fn tcp_connect(
        &self,
        deadline: Instant,
        on_tcp: &mut dyn FnMut(&TcpStream),
    ) -> Result<(TcpStream, Option<Connection>)> {
        if let Some(proxy) = &self.proxy {
            return proxy.tunnel(
                &self.target.host,
                self.target.port,
                deadline,
                self.connect_timeout,
                self.proxy_tls.as_ref(),
                on_tcp,
            );
        }
        let target = format!("{}:{}", self.target.host, self.target.port);
        let addrs: Vec<SocketAddr> = (self.target.host.as_str(), self.target.port)
            .to_socket_addrs()
            .map_err(|source| Error::Resolve {
                host: self.target.host.clone(),
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
                Ok(sock) => {
                    on_tcp(&sock);
                    return Ok((sock, None));
                }
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

/// An error of the TLS handshake, said as one: a peer that closes or answers with something
/// other than TLS is most likely a plain server.
fn tls_handshake_error(e: std::io::Error) -> Error {
    match handshake::io_error(e) {
        Error::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            Error::NotTls("the server closed the connection".into())
        }
        Error::Io(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
            Error::NotTls("the server reset the connection".into())
        }
        Error::Tls(rustls::Error::InvalidMessage(m)) => {
            Error::NotTls(format!("the server's answer is not TLS ({m:?})"))
        }
        other => other,
    }
}
