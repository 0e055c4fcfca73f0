//! [`HubConfig`]: every knob of the hub, with its default written beside it.

use std::sync::Arc;
use std::time::Duration;

use crate::frame::CloseCode;

/// What happens when a connection's outbound queue is full (it reads slower than it is sent
/// to). Either way, publishers and the other connections are not slowed down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlowPolicy {
    /// Close the connection with this code (its queued data is dropped so the close frame goes
    /// out next). Counted in [`Metrics::slow_closes`](super::Metrics::slow_closes).
    Close(CloseCode),
    /// Drop the message for this connection only and keep it open. Counted in
    /// [`Metrics::dropped`](super::Metrics::dropped).
    Drop,
}

/// The close code for a slow client: 4008 ("slow").
pub const SLOW_CLOSE: CloseCode = CloseCode(4008);

/// A per-connection token bucket on inbound messages.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Messages per second, sustained.
    pub per_second: f64,
    /// Messages allowed back to back before the rate applies.
    pub burst: u32,
    /// What a message over the limit gets.
    pub policy: RatePolicy,
}

/// What a message over the rate limit gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RatePolicy {
    /// Close the connection with 1008 (policy violation).
    Close,
    /// Drop the message (counted) and tell the handler through
    /// [`Handler::on_rate_limited`](super::Handler::on_rate_limited).
    Drop,
}

impl Default for RateLimit {
    /// 200 messages/s with bursts of 500, closing with 1008: a client publishing 100 messages/s
    /// is never limited; 10,000 back to back are.
    fn default() -> Self {
        RateLimit {
            per_second: 200.0,
            burst: 500,
            policy: RatePolicy::Close,
        }
    }
}

/// How much history each room keeps for recovery. Past any bound, the oldest publications go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    /// Publications kept per room (default 1,000).
    pub max_publications: usize,
    /// Payload bytes kept per room (default 16 MiB).
    pub max_bytes: usize,
    /// How long a publication stays recoverable (default 5 minutes).
    pub max_age: Duration,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        HistoryLimits {
            max_publications: 1_000,
            max_bytes: 16 << 20,
            max_age: Duration::from_secs(300),
        }
    }
}

/// The hub's settings. Build one with `HubConfig::default()` and change what you need.
///
/// ```
/// use std::time::Duration;
/// use syncws::hub::HubConfig;
///
/// let config = HubConfig {
///     max_connections: 50_000,
///     max_per_ip: 100,
///     ping_interval: Some(Duration::from_secs(15)),
///     ..HubConfig::default()
/// };
/// # let _ = config;
/// ```
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Connections at once, open or in their handshake (default 10,000). Past it, new
    /// connections get `503` with `Retry-After` before any upgrade.
    pub max_connections: usize,
    /// Connections at once from one IP address (default 1,000), likewise answered `503`.
    pub max_per_ip: usize,
    /// Handshakes in progress at once (default 1,024), likewise answered `503`.
    pub max_handshakes: usize,
    /// The whole opening handshake (TLS, request, admission, response) must end within this,
    /// from the moment the connection is accepted (default 5 s): a client that trickles its
    /// request is cut off.
    pub handshake_timeout: Duration,
    /// The `Retry-After` sent with a `503` (default 5 s).
    pub retry_after: Duration,
    /// The largest request head (request line and headers) accepted (default 8 KiB); larger
    /// gets `431`.
    pub max_request_head: usize,
    /// `Origin` values allowed to connect (`None`, the default: any, and requests without an
    /// `Origin`). A request whose `Origin` is not in the list gets `403`.
    pub allowed_origins: Option<Vec<String>>,
    /// Subprotocols the hub speaks, in order of preference (default none): the first one the
    /// client also offers is chosen.
    pub subprotocols: Vec<String>,
    /// The largest inbound message, fragments added up (default 1 MiB); larger closes with 1009.
    pub max_message: usize,
    /// The hub pings a connection silent for this long (default 20 s; `None`: never).
    pub ping_interval: Option<Duration>,
    /// A ping unanswered for this long closes the connection with 1011 (default 20 s).
    pub pong_timeout: Duration,
    /// A connection that sends no data message for this long is closed with 1001 (default
    /// `None`: never). Pongs do not count as data.
    pub idle_timeout: Option<Duration>,
    /// How long a close handshake may take before the socket is shut (default 2 s).
    pub close_timeout: Duration,
    /// Bytes a connection's outbound queue holds (default 4 MiB).
    pub queue_max_bytes: usize,
    /// Messages a connection's outbound queue holds (default 2,048).
    pub queue_max_messages: usize,
    /// What a full queue does (default: close with [`SLOW_CLOSE`], 4008).
    pub slow: SlowPolicy,
    /// The inbound rate limit (default [`RateLimit::default`]; `None`: unlimited).
    pub rate_limit: Option<RateLimit>,
    /// Each room's history (default [`HistoryLimits::default`]).
    pub history: HistoryLimits,
    /// Stack size of each connection's thread (default 256 KiB): small, so 10,000 connections
    /// fit; raise it if your callbacks recurse deeply.
    pub stack_size: usize,
    /// `TCP_NODELAY` on accepted sockets (default true).
    pub nodelay: bool,
    /// Serve TLS with this rustls configuration (default `None`: plain TCP).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Accept permessage-deflate when a client offers it (default false): the client's
    /// compressed messages are inflated under `max_message` (a bomb is a 1009 close), and data
    /// messages of at least 256 bytes are sent to it compressed when that makes them smaller,
    /// each on its own, so a broadcast is still compressed once for every such recipient (a
    /// client that limits the hub's window below 15 bits gets them uncompressed).
    pub deflate: bool,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            max_connections: 10_000,
            max_per_ip: 1_000,
            max_handshakes: 1_024,
            handshake_timeout: Duration::from_secs(5),
            retry_after: Duration::from_secs(5),
            max_request_head: 8 * 1024,
            allowed_origins: None,
            subprotocols: Vec::new(),
            max_message: 1 << 20,
            ping_interval: Some(Duration::from_secs(20)),
            pong_timeout: Duration::from_secs(20),
            idle_timeout: None,
            close_timeout: Duration::from_secs(2),
            queue_max_bytes: 4 << 20,
            queue_max_messages: 2_048,
            slow: SlowPolicy::Close(SLOW_CLOSE),
            rate_limit: Some(RateLimit::default()),
            history: HistoryLimits::default(),
            stack_size: 256 * 1024,
            nodelay: true,
            tls: None,
            deflate: false,
        }
    }
}
