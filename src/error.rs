//! The one error type of the crate.
//!
//! Every fallible operation returns [`Error`]. Each variant says what happened and, in its
//! documentation, what a caller should do about it. Nothing that arrives from the network can make
//! syncws panic: malformed input becomes [`Error::Protocol`] (and the connection is closed with the
//! matching close code), a refused upgrade becomes [`Error::HandshakeRejected`], and so on.

use std::fmt;
use std::io;
use std::time::Duration;

use crate::frame::CloseCode;

/// The longest `Retry-After` syncws honours: one hour. A server asking for more (or for a
/// number too large to represent) gets this instead; [`Error::HandshakeRejected`] then reports
/// its raw value in `retry_after_clamped_from`. The ceiling keeps a confused or hostile server
/// from parking a client for years (or overflowing its clock); an
/// [`Endpoint::on_disconnect`](crate::Endpoint::on_disconnect) that wants to wait longer can
/// return its own [`Action::ReconnectAfter`](crate::Action::ReconnectAfter).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Everything that can go wrong in syncws.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The URL could not be used: bad syntax, a scheme other than `ws`/`wss`, no host.
    /// Fix the URL; retrying will not help.
    Url(String),
    /// A setting or argument is unusable: a zero keepalive interval, a close code that may not
    /// be sent. Fix it; retrying will not help.
    Config(String),
    /// A header of the upgrade request is not valid HTTP: a name that is not a token, or a value
    /// with a byte no HTTP field value may hold (CR, LF, NUL or another control character), or a
    /// subprotocol that is not a token. Nothing was sent: the request is refused before any
    /// byte is written. Returned by [`connect`](crate::ClientBuilder::connect) for the builder's
    /// headers, and as the cause of a failed attempt for
    /// [`Endpoint::headers`](crate::Endpoint::headers). Fix the header; retrying will not help.
    /// The value itself is never included (it may be a secret).
    InvalidHeader {
        /// The header name as given (it may itself be the invalid part).
        name: String,
        /// What is wrong, with the offending byte and its offset.
        reason: String,
    },
    /// The host name of the URL could not be resolved to an address (no such name, or no
    /// resolver reachable). Check the host name; retrying helps only when DNS itself was down.
    Resolve {
        /// The host name as given in the URL.
        host: String,
        /// The resolver's error.
        source: io::Error,
    },
    /// The TLS handshake of a `wss://` URL ended before it completed: the server closed the
    /// connection or answered with something that is not TLS. The usual cause is a plain
    /// server on that port: use `ws://` (or the server's TLS port). Counted as transient (a TLS
    /// server that drops a connection mid-handshake looks the same), so reconnecting retries.
    NotTls(String),
    /// No TCP connection could be made to any resolved address of `target`. `source` is the error
    /// of the last address tried (for example `ConnectionRefused` when nothing listens there).
    /// Usually transient: retry later or check the endpoint.
    Connect {
        /// `host:port` that was dialled.
        target: String,
        /// The error of the last address tried.
        source: io::Error,
    },
    /// The proxy refused to open the tunnel: `code` is its HTTP status (407: credentials
    /// wanted or wrong; 403: not allowed; 502/503/504: it could not reach the server), or for
    /// SOCKS5 its reply code (1–8; `0x100 | status` for a failed username/password check,
    /// `0xFF` when it accepts none of our authentication methods); 0 when its answer was not
    /// understood. Transient for 5xx, 408, 429 and SOCKS5 codes 1, 3, 4, 5 and 6.
    ProxyRefused {
        /// `host:port` of the proxy.
        proxy: String,
        /// Which protocol it speaks.
        kind: crate::ProxyKind,
        /// The HTTP status or SOCKS5 reply code.
        code: u16,
        /// The proxy's reason (or what was wrong with its answer).
        reason: String,
    },
    /// A socket read or write failed after the connection was established.
    Io(io::Error),
    /// The TLS layer failed: certificate not valid for the host, unknown issuer, bad record, ...
    /// Certificate errors will not go away by retrying; check the host name and trusted roots.
    Tls(rustls::Error),
    /// The TLS configuration given to the builder is unusable (for example a root certificate
    /// that does not parse). Fix the configuration.
    TlsConfig(String),
    /// The server answered the upgrade request with a status other than `101`.
    /// `401`/`403` mean credentials are wrong; `429`/`503` mean try again later.
    HandshakeRejected {
        /// The HTTP status code the server sent.
        status: u16,
        /// The response headers, truncated to a bounded size.
        headers: String,
        /// The start of the response body (what the server had sent with the headers), truncated.
        body: String,
        /// The `Retry-After` header in seconds, if the server sent one (429, 503), at most
        /// [`MAX_RETRY_AFTER`]. An HTTP-date value is not interpreted (`None`).
        retry_after: Option<Duration>,
        /// `Some(raw)` when the server's `Retry-After` exceeded [`MAX_RETRY_AFTER`] and
        /// `retry_after` was clamped to it: the value as the server sent it (truncated to 64
        /// bytes). `None` when `retry_after` is the server's own value (or absent).
        retry_after_clamped_from: Option<String>,
    },
    /// The server's upgrade response was not a valid WebSocket handshake (bad accept key, missing
    /// `Upgrade` header, malformed HTTP, unrequested subprotocol). The endpoint is not speaking
    /// WebSocket correctly.
    InvalidHandshake(String),
    /// The peer violated the WebSocket protocol (bad UTF-8, reserved opcode, oversized frame, ...).
    /// syncws closed the connection with `code`.
    Protocol {
        /// The close code syncws sent because of the violation.
        code: CloseCode,
        /// What was wrong.
        reason: String,
    },
    /// The connection is closed (or closing) and cannot take the operation.
    /// `code` is the close code when one is known.
    Closed {
        /// The close code of the connection, if the close handshake produced one.
        code: Option<CloseCode>,
    },
    /// The client is between connections (reconnecting) or the session of the current one is
    /// not restored yet; the frame was not queued. Send again after
    /// [`Event::SessionReady`](crate::Event::SessionReady), or opt into
    /// [`buffer_while_disconnected`](crate::ClientBuilder::buffer_while_disconnected).
    NotConnected,
    /// The bounded outbound data lane is full; the frame was not queued. Back off, or use the
    /// blocking [`send`](crate::Client::send). Memory never grows past the configured capacity.
    QueueFull,
    /// An operation did not finish in time; the string names the phase (`"connect"`,
    /// `"handshake"`, `"close"`, ...).
    Timeout(&'static str),
}

impl Error {
    /// True if retrying the same operation later might succeed (network trouble, a full queue,
    /// a server asking to come back later), false for errors that need a change by the caller
    /// (bad URL, bad certificate, bad credentials).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Connect { .. }
            | Error::Resolve { .. }
            | Error::NotTls(_)
            | Error::Io(_)
            | Error::QueueFull
            | Error::NotConnected
            | Error::Timeout(_) => true,
            Error::HandshakeRejected { status, .. } => matches!(status, 408 | 429 | 500..=599),
            Error::ProxyRefused { kind, code, .. } => match kind {
                crate::ProxyKind::Http => matches!(code, 408 | 429 | 500..=599),
                crate::ProxyKind::Socks5 => matches!(code, 1 | 3..=6),
            },
            Error::Closed { .. } | Error::Protocol { .. } => true,
            Error::Url(_)
            | Error::Config(_)
            | Error::InvalidHeader { .. }
            | Error::Tls(_)
            | Error::TlsConfig(_)
            | Error::InvalidHandshake(_) => false,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Url(msg) => write!(f, "invalid URL: {msg}"),
            Error::ProxyRefused {
                proxy,
                kind,
                code,
                reason,
            } => write!(
                f,
                "the {kind:?} proxy {proxy} refused the tunnel ({code}: {reason})"
            ),
            Error::Config(msg) => write!(f, "invalid setting: {msg}"),
            Error::InvalidHeader { name, reason } => {
                write!(f, "invalid upgrade request header {name:?}: {reason}")
            }
            Error::Connect { target, source } => {
                write!(f, "could not connect to {target}: {source}")
            }
            Error::Resolve { host, source } => {
                write!(
                    f,
                    "could not resolve host {host:?}: {source}; check the host name"
                )
            }
            Error::NotTls(what) => write!(
                f,
                "TLS handshake failed: {what}; is the server speaking TLS on this port? \
                 (for a plain server use ws:// instead of wss://)"
            ),
            Error::Io(e) => write!(f, "socket error: {e}"),
            Error::Tls(e) => write!(f, "TLS error: {e}"),
            Error::TlsConfig(msg) => write!(f, "invalid TLS configuration: {msg}"),
            Error::HandshakeRejected {
                status,
                body,
                retry_after_clamped_from,
                ..
            } => {
                write!(f, "server refused the WebSocket upgrade with HTTP {status}")?;
                if !body.is_empty() {
                    // A short excerpt: the body (an HTML page, say) stays in the `body` field.
                    write!(f, ": {}", excerpt(body))?;
                }
                if let Some(raw) = retry_after_clamped_from {
                    let ceiling = MAX_RETRY_AFTER.as_secs();
                    write!(f, " (Retry-After {raw} clamped to {ceiling} s)")?;
                }
                Ok(())
            }
            Error::InvalidHandshake(msg) => write!(f, "invalid WebSocket handshake: {msg}"),
            Error::Protocol { code, reason } => {
                write!(
                    f,
                    "protocol violation by peer (closed with {code}): {reason}"
                )
            }
            Error::Closed { code: Some(code) } => write!(f, "connection closed ({code})"),
            Error::Closed { code: None } => write!(f, "connection closed"),
            Error::QueueFull => write!(f, "outbound queue full; frame not queued"),
            Error::NotConnected => write!(f, "not connected (reconnecting or session not ready)"),
            Error::Timeout(phase) => write!(f, "timed out during {phase}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Connect { source, .. } | Error::Resolve { source, .. } => Some(source),
            Error::Io(e) => Some(e),
            Error::Tls(e) => Some(e),
            _ => None,
        }
    }
}

impl From<rustls::Error> for Error {
    fn from(e: rustls::Error) -> Self {
        Error::Tls(e)
    }
}

/// Converts an I/O error seen on an established connection, unwrapping TLS errors that rustls
/// surfaces through `io::Error` so callers can match on [`Error::Tls`].
pub(crate) fn from_io(e: io::Error) -> Error {
    if e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) {
        let kind = e.kind();
        return match e
            .into_inner()
            .map(|inner| inner.downcast::<rustls::Error>())
        {
            Some(Ok(tls)) => Error::Tls(*tls),
            Some(Err(other)) => Error::Io(io::Error::new(kind, other)),
            None => Error::Io(kind.into()),
        };
    }
    Error::Io(e)
}

/// The first line of `text`, at most 80 characters, marked when cut.
fn excerpt(text: &str) -> String {
    const MAX: usize = 80;
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    let cut: String = line.chars().take(MAX).collect();
    if cut.len() < text.trim().len() {
        format!("{cut}…")
    } else {
        cut
    }
}

/// Shorthand used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
