//! [`Proxy`]: reaching the server through an HTTP `CONNECT` or a SOCKS5 proxy.
//!
//! The proxy leg runs inside the connection's handshake deadline (every read and write of it is
//! armed with what is left); what comes out is a TCP stream to the server, over which TLS and the
//! upgrade run as usual, and every reconnect goes through the proxy again. A proxy that refuses
//! is [`Error::ProxyRefused`] with its status (HTTP) or reply code (SOCKS5).
//!
//! With SOCKS5 the server's name is resolved by the proxy (remote DNS), as `socks5h` does in
//! curl; HTTP `CONNECT` always sends the name.
//!
//! An `https://` proxy is reached over TLS (verified like the server, with the same roots, by
//! the proxy's own name): the `CONNECT` goes through that session, and so does the whole
//! connection afterwards. A `wss://` server's TLS then runs inside it (TLS in TLS); a `ws://`
//! server's bytes are the proxy session's plaintext.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, Connection};

use crate::error::{Error, Result};
use crate::opening::{Deadlined, ReadWrite};

/// The largest proxy response head read.
const MAX_HEAD: usize = 8 * 1024;

/// Which protocol the proxy speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyKind {
    /// HTTP `CONNECT` (RFC 9110 §9.3.6).
    Http,
    /// SOCKS5 (RFC 1928), names resolved by the proxy.
    Socks5,
}

/// A proxy between the client and the server.
///
/// ```
/// use syncws::{Proxy, ProxyKind};
///
/// let p = Proxy::parse("socks5://trader:s3cret@10.0.0.1:1080")?;
/// assert_eq!(p.kind(), ProxyKind::Socks5);
/// let q = Proxy::parse("http://proxy.corp:3128")?;
/// assert_eq!(q.kind(), ProxyKind::Http);
/// let t = Proxy::parse("https://proxy.corp:3129")?; // TLS to the proxy itself
/// assert!(t.is_tls() && t.kind() == ProxyKind::Http);
/// # Ok::<(), syncws::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Proxy {
    kind: ProxyKind,
    host: String,
    port: u16,
    auth: Option<(String, String)>,
    /// Reached over TLS (`https://`).
    tls: bool,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.debug_struct("Proxy")
            .field("kind", &self.kind)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("user", &self.auth.as_ref().map(|(u, _)| u))
            .finish()
    }
}

impl Proxy {
    /// Parses `http://[user:pass@]host:port`, `https://[user:pass@]host:port` (HTTP
    /// `CONNECT` over TLS to the proxy) or `socks5://[user:pass@]host:port` (also
    /// `socks5h://`). The port defaults to 80 (http), 443 (https) or 1080 (socks5).
    pub fn parse(url: &str) -> Result<Proxy> {
        let bad = |why: &str| Error::Url(format!("proxy URL {}: {why}", redact(url)));
        let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("no scheme"))?;
        let (kind, default_port, tls) = match scheme.to_ascii_lowercase().as_str() {
            "http" => (ProxyKind::Http, 80, false),
            "https" => (ProxyKind::Http, 443, true),
            "socks5" | "socks5h" => (ProxyKind::Socks5, 1080, false),
            other => return Err(bad(&format!("unsupported scheme {other:?}"))),
        };
        let rest = rest.trim_end_matches('/');
        let (auth, hostport) = match rest.rsplit_once('@') {
            Some((userinfo, hostport)) => {
                let (user, pass) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                (Some((decode(user), decode(pass))), hostport)
            }
            None => (None, rest),
        };
        let (host, port) =
            split_host_port(hostport, default_port).ok_or_else(|| bad("bad host:port"))?;
        if host.is_empty() {
            return Err(bad("no host"));
        }
        Ok(Proxy {
            kind,
            host,
            port,
            auth,
            tls,
        })
    }

    /// An HTTP `CONNECT` proxy reached over TLS (`https://`).
    pub fn https(host: impl Into<String>, port: u16) -> Proxy {
        Proxy {
            tls: true,
            ..Proxy::http(host, port)
        }
    }

    /// True for a proxy reached over TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// An HTTP `CONNECT` proxy.
    pub fn http(host: impl Into<String>, port: u16) -> Proxy {
        Proxy {
            kind: ProxyKind::Http,
            host: host.into(),
            port,
            auth: None,
            tls: false,
        }
    }

    /// A SOCKS5 proxy.
    pub fn socks5(host: impl Into<String>, port: u16) -> Proxy {
        Proxy {
            kind: ProxyKind::Socks5,
            host: host.into(),
            port,
            auth: None,
            tls: false,
        }
    }

    /// Credentials: HTTP basic authentication, or SOCKS5 username/password.
    pub fn auth(mut self, user: impl Into<String>, password: impl Into<String>) -> Proxy {
        self.auth = Some((user.into(), password.into()));
        self
    }

    /// The protocol.
    pub fn kind(&self) -> ProxyKind {
        self.kind
    }

    /// `host:port` of the proxy.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// The proxy the usual environment variables give for `host`: `HTTPS_PROXY` (for TLS) or
    /// `HTTP_PROXY`, else `ALL_PROXY` (each also lowercase), unless `NO_PROXY` names the host
    /// (a comma-separated list of names, domain suffixes such as `.corp` or `corp`, or `*`).
    pub fn from_env(tls: bool, host: &str) -> Result<Option<Proxy>> {
        let var = |name: &str| {
            std::env::var(name)
                .or_else(|_| std::env::var(name.to_lowercase()))
                .ok()
                .filter(|v| !v.trim().is_empty())
        };
        if let Some(no) = var("NO_PROXY")
            && excluded(&no, host)
        {
            return Ok(None);
        }
        let url = if tls {
            var("HTTPS_PROXY")
        } else {
            var("HTTP_PROXY")
        }
        .or_else(|| var("ALL_PROXY"));
        url.map(|u| Proxy::parse(u.trim())).transpose()
    }

    /// Opens a tunnel to `host:port` through the proxy, within `deadline` (each address of the
    /// proxy gets at most `connect_timeout` of it). For an `https://` proxy, `tls` is the
    /// configuration to reach it with, and the TLS session with it comes back: the tunnel runs
    /// inside it. `on_tcp` sees the socket to the proxy as soon as it is connected.
    pub(crate) fn tunnel(
        &self,
        host: &str,
        port: u16,
        deadline: Instant,
        connect_timeout: Duration,
        tls: Option<&Arc<ClientConfig>>,
        on_tcp: &mut dyn FnMut(&TcpStream),
    ) -> Result<(TcpStream, Option<Connection>)> {
        let sock = self.connect(deadline, connect_timeout)?;
        on_tcp(&sock);
        let mut io = Deadlined {
            sock: &sock,
            deadline,
        };
        let session = match (self.tls, tls) {
            (false, _) => None,
            (true, None) => {
                return Err(Error::Config(
                    "an https:// proxy needs a TLS configuration".into(),
                ));
            }
            (true, Some(config)) => {
                let name = ServerName::try_from(self.host.clone()).map_err(|e| {
                    Error::TlsConfig(format!("invalid proxy name {:?}: {e}", self.host))
                })?;
                let mut conn = ClientConnection::new(config.clone(), name)?;
                while conn.is_handshaking() {
                    conn.complete_io(&mut io)
                        .map_err(crate::handshake::io_error)?;
                }
                Some(conn)
            }
        };
        match (self.kind, session) {
            (ProxyKind::Http, Some(mut conn)) => {
                self.http_connect(&mut rustls::Stream::new(&mut conn, &mut io), host, port)?;
                log::debug!(
                    "tunnel to {host}:{port} open through {} (TLS)",
                    self.address()
                );
                return Ok((sock, Some(Connection::Client(conn))));
            }
            (ProxyKind::Http, None) => self.http_connect(&mut io, host, port)?,
            (ProxyKind::Socks5, _) => self.socks5_connect(&mut io, host, port)?,
        }
        log::debug!("tunnel to {host}:{port} open through {}", self.address());
        Ok((sock, None))
    }

    fn connect(&self, deadline: Instant, connect_timeout: Duration) -> Result<TcpStream> {
        let addrs: Vec<SocketAddr> = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|source| Error::Resolve {
                host: self.host.clone(),
                source,
            })?
            .collect();
        let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address resolved");
        for addr in addrs {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Timeout("connect"));
            }
            match TcpStream::connect_timeout(&addr, left.min(connect_timeout)) {
                Ok(s) => return Ok(s),
                Err(e) => last = e,
            }
        }
        Err(Error::Connect {
            target: format!("proxy {}", self.address()),
            source: last,
        })
    }

    fn refused(&self, code: u16, reason: impl Into<String>) -> Error {
        Error::ProxyRefused {
            proxy: self.address(),
            kind: self.kind,
            code,
            reason: reason.into(),
        }
    }

    fn http_connect(&self, io: &mut dyn ReadWrite, host: &str, port: u16) -> Result<()> {
        let authority = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let mut req = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
        if let Some((user, pass)) = &self.auth {
            let token = data_encoding::BASE64.encode(format!("{user}:{pass}").as_bytes());
            req.push_str(&format!("Proxy-Authorization: Basic {token}\r\n"));
        }
        req.push_str("\r\n");
        io.write_all(req.as_bytes()).map_err(io_error)?;
        // Read the response head byte by byte: nothing of the tunnel may be consumed.
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if head.len() >= MAX_HEAD {
                return Err(self.refused(0, "response head too large"));
            }
            match io.read(&mut b).map_err(io_error)? {
                0 => return Err(self.refused(0, "the proxy closed the connection")),
                _ => head.push(b[0]),
            }
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&head) {
            Ok(httparse::Status::Complete(_)) => {}
            _ => return Err(self.refused(0, "malformed response")),
        }
        let code = resp.code.unwrap_or(0);
        if (200..300).contains(&code) {
            return Ok(());
        }
        Err(self.refused(code, resp.reason.unwrap_or("").to_string()))
    }

    fn socks5_connect(&self, io: &mut Deadlined<'_>, host: &str, port: u16) -> Result<()> {
        let greeting: &[u8] = if self.auth.is_some() {
            &[5, 2, 0, 2]
        } else {
            &[5, 1, 0]
        };
        io.write_all(greeting).map_err(io_error)?;
        let mut choice = [0u8; 2];
        io.read_exact(&mut choice).map_err(io_error)?;
        if choice[0] != 5 {
            return Err(self.refused(0, "not a SOCKS5 proxy"));
        }
        match (choice[1], &self.auth) {
            (0, _) => {}
            (2, Some((user, pass))) => {
                let (u, p) = (user.as_bytes(), pass.as_bytes());
                if u.len() > 255 || p.len() > 255 {
                    return Err(Error::Config(
                        "SOCKS5 user and password are at most 255 bytes".into(),
                    ));
                }
                let mut msg = vec![1, u.len() as u8];
                msg.extend_from_slice(u);
                msg.push(p.len() as u8);
                msg.extend_from_slice(p);
                io.write_all(&msg).map_err(io_error)?;
                let mut status = [0u8; 2];
                io.read_exact(&mut status).map_err(io_error)?;
                if status[1] != 0 {
                    return Err(self.refused(0x100 | u16::from(status[1]), "authentication failed"));
                }
            }
            (0xFF, _) => return Err(self.refused(0xFF, "no acceptable authentication method")),
            (m, _) => return Err(self.refused(u16::from(m), "unexpected authentication method")),
        }
        let mut req = vec![5, 1, 0];
        match host.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => {
                req.push(1);
                req.extend_from_slice(&ip.octets());
            }
            Ok(IpAddr::V6(ip)) => {
                req.push(4);
                req.extend_from_slice(&ip.octets());
            }
            Err(_) => {
                let name = host.as_bytes();
                if name.len() > 255 {
                    return Err(Error::Url("host name too long for SOCKS5".into()));
                }
                req.push(3);
                req.push(name.len() as u8);
                req.extend_from_slice(name);
            }
        }
        req.extend_from_slice(&port.to_be_bytes());
        io.write_all(&req).map_err(io_error)?;
        let mut reply = [0u8; 4];
        io.read_exact(&mut reply).map_err(io_error)?;
        if reply[1] != 0 {
            return Err(self.refused(u16::from(reply[1]), socks_reason(reply[1])));
        }
        // The bound address: skipped.
        let skip = match reply[3] {
            1 => 4,
            4 => 16,
            3 => {
                let mut len = [0u8; 1];
                io.read_exact(&mut len).map_err(io_error)?;
                usize::from(len[0])
            }
            _ => return Err(self.refused(0, "malformed reply")),
        };
        let mut rest = vec![0u8; skip + 2];
        io.read_exact(&mut rest).map_err(io_error)?;
        Ok(())
    }
}

fn socks_reason(code: u8) -> &'static str {
    match code {
        1 => "general failure",
        2 => "connection not allowed by ruleset",
        3 => "network unreachable",
        4 => "host unreachable",
        5 => "connection refused",
        6 => "TTL expired",
        7 => "command not supported",
        8 => "address type not supported",
        _ => "unknown reply",
    }
}

fn io_error(e: std::io::Error) -> Error {
    if matches!(
        e.kind(),
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
    ) {
        Error::Timeout("proxy")
    } else {
        Error::Io(e)
    }
}

/// `host:port`, `[v6]:port` or `host` (default port).
fn split_host_port(s: &str, default_port: u16) -> Option<(String, u16)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default_port,
            None => return None,
        };
        return Some((host.to_string(), port));
    }
    match s.rsplit_once(':') {
        Some((host, port)) => Some((host.to_string(), port.parse().ok()?)),
        None => Some((s.to_string(), default_port)),
    }
}

/// Percent-decoding of the URL's user and password.
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (
                b.get(i + 1).and_then(|c| (*c as char).to_digit(16)),
                b.get(i + 2).and_then(|c| (*c as char).to_digit(16)),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.split_once("://"), url.rsplit_once('@')) {
        (Some((scheme, _)), Some((_, hostport))) => format!("{scheme}://***@{hostport}"),
        _ => url.to_string(),
    }
}

/// Whether `NO_PROXY` names `host`.
fn excluded(no_proxy: &str, host: &str) -> bool {
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    no_proxy
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .any(|entry| {
            if entry == "*" {
                return true;
            }
            let entry = entry.to_ascii_lowercase();
            let name = split_host_port(&entry, 0).map_or(entry.clone(), |(h, _)| h);
            let name = name.trim_start_matches("*.").trim_start_matches('.');
            host == name || host.ends_with(&format!(".{name}"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_credentials_defaults_and_v6() {
        let p = Proxy::parse("socks5://u%40x:p%3Aw@127.0.0.1:9050").unwrap();
        assert_eq!(p.kind, ProxyKind::Socks5);
        assert_eq!(p.auth, Some(("u@x".into(), "p:w".into())));
        assert_eq!((p.host.as_str(), p.port), ("127.0.0.1", 9050));
        let h = Proxy::parse("http://proxy.corp").unwrap();
        assert_eq!((h.kind, h.port, h.auth), (ProxyKind::Http, 80, None));
        let v6 = Proxy::parse("http://[::1]:3128/").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 3128));
        assert!(Proxy::parse("ftp://x:1").is_err());
        let s = Proxy::parse("https://proxy.corp").unwrap();
        assert_eq!((s.kind, s.port, s.tls), (ProxyKind::Http, 443, true));
        assert!(!h.tls && Proxy::https("p", 1).is_tls());
        assert!(Proxy::parse("x:1").is_err());
        let err = Proxy::parse("http://u:secret@host:notaport")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("secret"), "{err}");
        assert!(!format!("{:?}", Proxy::parse("http://u:secret@h:1").unwrap()).contains("secret"));
    }

    #[test]
    fn no_proxy_matches_names_suffixes_and_star() {
        assert!(excluded("localhost, .corp", "api.corp"));
        assert!(excluded("corp", "api.corp"));
        assert!(excluded("corp", "corp"));
        assert!(!excluded("corp", "notcorp"));
        assert!(excluded("*", "anything"));
        assert!(excluded("venue.example:443", "venue.example"));
        assert!(!excluded("", "venue.example"));
    }
}
