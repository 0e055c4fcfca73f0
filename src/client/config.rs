//! [`Config`] (every knob with its default) and [`ClientBuilder`].

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use rustls::pki_types::CertificateDer;

use crate::backoff::Reconnect;
use crate::client::Client;
use crate::client::affinity::{Affinity, WaitStrategy};
use crate::client::connect::Dialer;
use crate::client::endpoint::{Endpoint, NoSession};
use crate::client::health::LatencyPolicy;
use crate::client::ingress::{ForwardAll, Ingress};
use crate::client::liveness::Keepalive;
use crate::client::proxy::Proxy;
use crate::client::stepper::Dispatch;
use crate::client::target::Target;
use crate::deflate::DeflateParams;
use crate::error::{Error, Result};
use crate::tls::TlsOptions;

/// What the reader does when the application's event channel is full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Overflow {
    /// Wait for room (the default). The reader stops reading, so TCP pushes back on the server;
    /// nothing is lost. Counted in [`Stats::events_blocked`](crate::Stats::events_blocked).
    /// Once room is made, a reader that finds the channel still more than half full yields its
    /// core once, so an application thread sharing that core catches up in one stretch instead
    /// of being interrupted at every batch it takes.
    #[default]
    Block,
    /// Drop the new events that do not fit and keep reading. Counted in
    /// [`Stats::events_dropped`](crate::Stats::events_dropped). Lifecycle events are never dropped.
    DropNewest,
}

/// Connection settings. Every field has a safe default ([`Config::default`]).
///
/// Every duration may be anything up to [`Duration::MAX`]: deadlines saturate (a timeout too
/// large for the clock means "never" in practice) instead of overflowing.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Config {
    /// Prefix of the thread names (`NAME-reader`, `NAME-writer`, `NAME-coord`). Default `"syncws"`.
    pub name: String,
    /// Time allowed for the TCP connect to each resolved address (and never more than what is
    /// left of `handshake_timeout`). Default 5 s.
    pub connect_timeout: Duration,
    /// Time allowed for the whole opening: TCP, TLS and HTTP upgrade. Default 10 s. It is one
    /// absolute deadline: every read and write of the opening is bounded by what is left of it,
    /// so a server that trickles its handshake byte by byte cannot stretch it. Exceeding it is
    /// [`Error::Timeout`]`("handshake")` (or `("connect")` while still dialling).
    pub handshake_timeout: Duration,
    /// Time allowed for the close handshake before the socket is dropped. Default 2 s.
    pub close_timeout: Duration,
    /// Largest accepted inbound frame payload. Default 16 MiB; bigger frames close with 1009.
    pub max_frame_size: usize,
    /// Largest accepted inbound message after reassembly. Default 64 MiB; closes with 1009.
    pub max_message_size: usize,
    /// Read buffer size. Default 64 KiB; a frame that does not fit gets a buffer of its own
    /// size. Frames handed to the application are views of these buffers; the reader keeps up
    /// to 64 buffers it moved on from, at most 64 times this size in all (4 MiB by default), and
    /// reuses one once the application has dropped every view of it.
    pub read_buffer_size: usize,
    /// Capacity, in frames, of the outbound data lane, shared by `send`s and the frames of
    /// [`Client::send_and_confirm`] (which keep their caller's order among its sends). Default
    /// 1024. When full, [`Client::send`] waits, [`Client::try_send`] returns
    /// [`Error::QueueFull`] and a request is answered
    /// [`Undelivered::QueueFull`](crate::Undelivered::QueueFull) at once.
    pub data_queue: usize,
    /// Capacity of the outbound control lane (pings, pongs, close). Default 64. Pongs are dropped
    /// (and counted) rather than fill its last slots.
    pub control_queue: usize,
    /// Capacity of the application's event channel, in events (not counting those of the
    /// batch the application is working through; see [`Events`](crate::Events)). Default 4096.
    pub event_queue: usize,
    /// What the reader does when the event channel is full. Default [`Overflow::Block`].
    pub overflow: Overflow,
    /// Set `TCP_NODELAY`. Default true (latency over packet count).
    pub nodelay: bool,
    /// How liveness is checked. Default [`Keepalive::Ping`] every 15 s, answered within 10 s.
    pub keepalive: Keepalive,
    /// Disconnect when no data message arrives for this long (pongs do not count; messages the
    /// ingress ignores do). Default `None` (off).
    pub stale_after: Option<Duration>,
    /// How long authentication and each subscription may stay unacknowledged (when the endpoint
    /// recognises acknowledgements) before the connection is dropped and restored. Default 10 s.
    pub ack_timeout: Duration,
    /// A connection up this long resets the reconnect backoff. Default 30 s.
    pub stable_after: Duration,
    /// Most topics in the desired subscription set; more are rejected with
    /// [`Event::SubscriptionRejected`](crate::Event::SubscriptionRejected). Default 1024.
    pub max_subscriptions: usize,
    /// Keep user frames sent while disconnected (in the data lane, bounded by `data_queue`) and
    /// send them once the session is ready again. Default false: [`Client::send`] returns
    /// [`Error::NotConnected`] between connections, and frames still queued when a connection
    /// is lost are discarded (counted), so nothing is sent on a later connection on its own.
    pub buffer_while_disconnected: bool,
    /// Disconnect (and reconnect) after sustained slow round trips. Default `None`.
    pub latency_policy: Option<LatencyPolicy>,
    /// Most requests in flight at once ([`Client::send_and_confirm`], [`Client::submit`]);
    /// more get [`Outcome::TooManyPending`](crate::Outcome::TooManyPending). Default 1024.
    pub max_pending: usize,
    /// Cores for the reader, writer and coordinator threads. Default: none (the OS decides).
    pub affinity: Affinity,
    /// How the writer, the coordinator and callers waiting for an outcome wait for work.
    /// Default [`WaitStrategy::Block`].
    pub wait: WaitStrategy,
    /// Which threads step the connection's state machine. Default [`Dispatch::Actor`]: the
    /// coordinator thread alone; [`Dispatch::Inline`] is the opt-in fast path for processes
    /// that share cores.
    pub dispatch: Dispatch,
    /// Make-before-break rotation: once a connection has been up this long, open a
    /// replacement, restore the session on it and switch, with no gap (see
    /// [`ClientBuilder::rotate_after`]). Default `None` (only [`Client::rotate`] rotates).
    pub rotate_after: Option<Duration>,
    /// Most messages a replacement holds between its opening and the switch (they are
    /// delivered right after [`Event::Rotated`](crate::Event::Rotated)); one more fails the
    /// rotation, which leaves the current connection in place and is counted in
    /// [`Stats::rotation_hold_full`](crate::Stats::rotation_hold_full). Default 65,536.
    pub rotation_hold: usize,
    /// How long both connections deliver once a rotation's replacement is ready, before the
    /// current one is closed: time for what it still has in flight (published before the
    /// replacement subscribed but not yet written to it) to arrive. Only a connection lagging
    /// the replacement by more than this could leave a gap. Default 100 ms.
    pub rotation_overlap: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            name: "syncws".into(),
            connect_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(2),
            max_frame_size: 16 << 20,
            max_message_size: 64 << 20,
            read_buffer_size: 64 << 10,
            data_queue: 1024,
            control_queue: 64,
            event_queue: 4096,
            overflow: Overflow::Block,
            nodelay: true,
            keepalive: Keepalive::default(),
            stale_after: None,
            ack_timeout: Duration::from_secs(10),
            stable_after: Duration::from_secs(30),
            max_subscriptions: 1024,
            buffer_while_disconnected: false,
            latency_policy: None,
            max_pending: 1024,
            affinity: Affinity::default(),
            wait: WaitStrategy::Block,
            dispatch: Dispatch::Actor,
            rotate_after: None,
            rotation_hold: 65_536,
            rotation_overlap: Duration::from_millis(100),
        }
    }
}

/// Builds and opens a [`Client`]; created by [`Client::builder`]. Every setting not made here
/// keeps the default documented on [`Config`].
///
/// ```no_run
/// use std::time::Duration;
/// use syncws::Client;
///
/// let client = Client::builder("wss://stream.example.com/ws")
///     .name("md-feed")
///     .header("Authorization", "Bearer secret")
///     .subprotocol("v2.json")
///     .handshake_timeout(Duration::from_secs(5))
///     .data_queue(256)
///     .connect()?;
/// # Ok::<(), syncws::Error>(())
/// ```
#[must_use = "a builder does nothing until connect() is called"]
pub struct ClientBuilder {
    url: String,
    config: Config,
    headers: Vec<(String, String)>,
    subprotocols: Vec<String>,
    tls: TlsOptions,
    endpoint: Box<dyn Endpoint>,
    reconnect: Option<Box<dyn Reconnect>>,
    topics: Vec<String>,
    proxy: ProxySetting,
    deflate: Option<DeflateParams>,
    /// The first invalid setting, reported by `connect`.
    invalid: Option<Error>,
}

/// Where the proxy comes from.
#[derive(Clone, Debug, Default)]
enum ProxySetting {
    #[default]
    None,
    Fixed(Proxy),
    FromEnv,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("url", &self.url)
            .field("config", &self.config)
            .field("reconnect", &self.reconnect.is_some())
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    pub(crate) fn new(url: &str) -> Self {
        ClientBuilder {
            url: url.to_string(),
            config: Config::default(),
            headers: Vec::new(),
            subprotocols: Vec::new(),
            tls: TlsOptions::default(),
            endpoint: Box::new(NoSession),
            reconnect: None,
            topics: Vec::new(),
            proxy: ProxySetting::None,
            deflate: None,
            invalid: None,
        }
    }

    /// The venue dialect used to restore the session on every connection (authentication,
    /// subscriptions, acknowledgements, disconnect policy). Default [`NoSession`].
    pub fn endpoint(mut self, endpoint: impl Endpoint) -> Self {
        self.endpoint = Box::new(endpoint);
        self
    }

    /// Reconnects after a lost connection on this schedule (for example
    /// [`Backoff`](crate::Backoff)).
    /// Default: no reconnect; the client stays closed after its connection ends.
    pub fn reconnect(mut self, strategy: impl Reconnect) -> Self {
        self.reconnect = Some(Box::new(strategy));
        self
    }

    /// Subscribes to `topic` from the first connection on (see [`Client::subscribe`]).
    pub fn subscribe(mut self, topic: impl Into<String>) -> Self {
        self.topics.push(topic.into());
        self
    }

    /// See [`Config::keepalive`].
    pub fn keepalive(mut self, keepalive: Keepalive) -> Self {
        self.config.keepalive = keepalive;
        self
    }

    /// See [`Config::stale_after`].
    pub fn stale_after(mut self, window: Duration) -> Self {
        self.config.stale_after = Some(window);
        self
    }

    /// See [`Config::ack_timeout`].
    pub fn ack_timeout(mut self, timeout: Duration) -> Self {
        self.config.ack_timeout = timeout;
        self
    }

    /// See [`Config::buffer_while_disconnected`].
    pub fn buffer_while_disconnected(mut self, buffer: bool) -> Self {
        self.config.buffer_while_disconnected = buffer;
        self
    }

    /// See [`Config::affinity`].
    pub fn affinity(mut self, affinity: Affinity) -> Self {
        self.config.affinity = affinity;
        self
    }

    /// See [`Config::wait`].
    pub fn wait_strategy(mut self, wait: WaitStrategy) -> Self {
        self.config.wait = wait;
        self
    }

    /// See [`Config::dispatch`].
    pub fn dispatch(mut self, dispatch: Dispatch) -> Self {
        self.config.dispatch = dispatch;
        self
    }

    /// See [`Config::max_pending`].
    pub fn max_pending(mut self, requests: usize) -> Self {
        self.config.max_pending = requests;
        self
    }

    /// See [`Config::latency_policy`].
    pub fn latency_policy(mut self, policy: LatencyPolicy) -> Self {
        self.config.latency_policy = Some(policy);
        self
    }

    /// Replaces each connection once it has been up for `lifetime`, make-before-break: venues
    /// that cut connections at a fixed age (24 h is common) never see one reach it.
    ///
    /// A rotation opens a second connection and restores the session on it (the endpoint's
    /// opening frames, authentication, every desired subscription, acknowledged) while the
    /// current one keeps delivering. Once the replacement is ready, the current connection
    /// stops taking user frames and closes with 1000; what you send meanwhile waits on the
    /// data lane and goes out on the replacement. What the application sees:
    ///
    /// - data from the current connection (its epoch) until its close is over, then
    ///   [`Event::Rotated`](crate::Event::Rotated) `{ from, to }`, then data from the
    ///   replacement (epoch `to`), starting with every message it received since it opened
    ///   (held until the switch). The two streams overlap: a message published during the
    ///   switch may arrive on both, never on neither. De-duplicate by the feed's own sequence
    ///   numbers (or ids), dropping anything at or below the last one seen from `from`.
    /// - Requests written on the old connection and unanswered when it closed are
    ///   [`Outcome::Unconfirmed`](crate::Outcome::Unconfirmed); requests still queued go out on
    ///   the replacement.
    /// - A replacement that fails (dial, authentication, acknowledgements, the
    ///   [`rotation_hold`](Config::rotation_hold) bound, or not ready within connect +
    ///   handshake + ack timeouts) is dropped and reported as
    ///   [`Event::RotationFailed`](crate::Event::RotationFailed); the current connection stays,
    ///   and another rotation is tried after the reconnect strategy's delay.
    /// - If the current connection ends (the venue cuts it) once the replacement is ready, the
    ///   replacement takes over at once (`Rotated`, no `Closed`); if it ends earlier, the
    ///   replacement is dropped and the client reconnects as for any lost connection.
    /// - The endpoint's [`headers`](crate::Endpoint::headers) and
    ///   [`on_open`](crate::Endpoint::on_open) run for the replacement too; a subscription its
    ///   venue refuses is reported with the replacement's epoch when it happens, before the
    ///   switch. A zero `lifetime` is refused by `connect`.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use syncws::Client;
    ///
    /// let client = Client::builder("wss://venue.example/ws")
    ///     .rotate_after(Duration::from_secs(23 * 3600))
    ///     .connect()?;
    /// # Ok::<(), syncws::Error>(())
    /// ```
    pub fn rotate_after(mut self, lifetime: Duration) -> Self {
        self.config.rotate_after = Some(lifetime);
        self
    }

    /// Replaces all settings at once.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Names the connection's threads (`NAME-reader`, `NAME-writer`, `NAME-coord`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self
    }

    /// Adds a header to the upgrade request (authentication tokens, API keys, `Origin`).
    /// Names must be HTTP tokens; values may hold visible ASCII, spaces, tabs and non-ASCII
    /// text, but no CR, LF, NUL or other control character. `connect` reports the first
    /// violation as [`Error::InvalidHeader`] without opening a connection.
    ///
    /// ```
    /// use syncws::{Client, Error};
    ///
    /// let result = Client::builder("ws://127.0.0.1:9/").header("X-Id", "1\r\nX-Evil: 1").connect();
    /// assert!(matches!(result, Err(Error::InvalidHeader { .. })));
    /// ```
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        let (name, value) = (name.into(), value.into());
        if let Err(e) = crate::handshake::check_header(&name, &value) {
            self.invalid.get_or_insert(e);
        }
        self.headers.push((name, value));
        self
    }

    /// Offers a subprotocol (`Sec-WebSocket-Protocol`). Call once per protocol, in preference
    /// order; [`Client::protocol`] tells which one the server chose. A protocol must be an
    /// HTTP token; `connect` reports one that is not as [`Error::InvalidHeader`].
    pub fn subprotocol(mut self, protocol: impl Into<String>) -> Self {
        let protocol = protocol.into();
        if let Err(e) = crate::handshake::check_subprotocol(&protocol) {
            self.invalid.get_or_insert(e);
        }
        self.subprotocols.push(protocol);
        self
    }

    /// See [`Config::connect_timeout`].
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// See [`Config::handshake_timeout`].
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.config.handshake_timeout = timeout;
        self
    }

    /// See [`Config::close_timeout`].
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.config.close_timeout = timeout;
        self
    }

    /// See [`Config::max_frame_size`].
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.config.max_frame_size = bytes;
        self
    }

    /// See [`Config::max_message_size`].
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.config.max_message_size = bytes;
        self
    }

    /// See [`Config::data_queue`].
    pub fn data_queue(mut self, frames: usize) -> Self {
        self.config.data_queue = frames;
        self
    }

    /// See [`Config::event_queue`].
    pub fn event_queue(mut self, events: usize) -> Self {
        self.config.event_queue = events;
        self
    }

    /// See [`Config::overflow`].
    pub fn overflow(mut self, policy: Overflow) -> Self {
        self.config.overflow = policy;
        self
    }

    /// Trusts an extra root certificate (DER), in addition to the webpki roots. Use
    /// [`certificates_from_pem`](crate::certificates_from_pem) to read PEM files.
    pub fn add_root_certificate(mut self, der: impl Into<CertificateDer<'static>>) -> Self {
        self.tls.extra_roots.push(der.into());
        self
    }

    /// Connects through `proxy` (HTTP `CONNECT`, plain or over TLS to the proxy, or SOCKS5),
    /// on every attempt. The proxy leg is part of the handshake deadline.
    pub fn proxy(mut self, proxy: Proxy) -> Self {
        self.proxy = ProxySetting::Fixed(proxy);
        self
    }

    /// Offers permessage-deflate (RFC 7692) with these parameters (`DeflateParams::default()`
    /// offers plain permessage-deflate). Off unless called. A server that accepts sends
    /// compressed messages, which are inflated on the reader thread under the message size
    /// limit (a message inflating past it closes with 1009). Data messages of at least 256
    /// bytes are sent compressed when that makes them smaller (each on its own, by the writer
    /// thread, at zlib's fastest level); shorter ones, and all of them when the server limits
    /// our window to 8 bits, go as they are. The negotiated parameters are logged at debug
    /// level.
    pub fn deflate(mut self, params: DeflateParams) -> Self {
        self.deflate = Some(params);
        self
    }

    /// Takes the proxy from the environment at `connect`: `HTTPS_PROXY` (for `wss://`) or
    /// `HTTP_PROXY` (for `ws://`), else `ALL_PROXY`, unless `NO_PROXY` names the host (see
    /// [`Proxy::from_env`]). Off unless called.
    pub fn proxy_from_env(mut self) -> Self {
        self.proxy = ProxySetting::FromEnv;
        self
    }

    /// Uses this rustls configuration as is (client certificates, custom verifiers, pinned
    /// roots). Extra root certificates and the verification opt-out are then ignored.
    pub fn tls_config(mut self, config: Arc<ClientConfig>) -> Self {
        self.tls.config = Some(config);
        self
    }

    /// Sends this name in SNI and checks the certificate against it instead of the URL's host
    /// (for connecting to an IP address or through a tunnel).
    pub fn tls_server_name(mut self, name: impl Into<String>) -> Self {
        self.tls.server_name = Some(name.into());
        self
    }

    /// **Disables TLS certificate verification.** Anyone on the path can then read and change
    /// the traffic. For tests against self-signed servers only; never in production.
    pub fn dangerous_disable_certificate_verification(mut self) -> Self {
        self.tls.insecure = true;
        self
    }

    /// Connects with the default ingress, which forwards every message as
    /// [`Event::Frame`](crate::Event::Frame).
    pub fn connect(self) -> Result<Client<Infallible>> {
        self.connect_with(ForwardAll)
    }

    /// Connects, running `ingress` on the reader thread for every inbound message.
    ///
    /// Blocks until the first connection is open or has failed: at most `handshake_timeout`
    /// after DNS resolution. A failed first attempt is returned as the error (no background
    /// retries); once connected, the [`reconnect`](Self::reconnect) strategy keeps it alive.
    pub fn connect_with<I: Ingress>(self, ingress: I) -> Result<Client<I::Output>> {
        if let Some(error) = self.invalid {
            return Err(error);
        }
        if let Keepalive::Ping { interval, timeout }
        | Keepalive::App {
            interval, timeout, ..
        } = self.config.keepalive
            && (interval.is_zero() || timeout.is_zero())
        {
            let msg = "keepalive interval and timeout must be above zero (use ServerDriven)";
            return Err(Error::Config(msg.into()));
        }
        if self.config.rotate_after.is_some_and(|d| d.is_zero()) {
            let msg = "rotate_after must be above zero (a zero lifetime would rotate without end)";
            return Err(Error::Config(msg.into()));
        }
        let target = Target::parse(&self.url)?;
        let tls_config = if target.tls {
            Some(self.tls.client_config()?)
        } else {
            None
        };
        let proxy = match self.proxy {
            ProxySetting::None => None,
            ProxySetting::Fixed(p) => Some(p),
            ProxySetting::FromEnv => Proxy::from_env(target.tls, &target.host)?,
        };
        // An https:// proxy is verified like the server (same roots), by its own name.
        let proxy_tls = match &proxy {
            Some(p) if p.is_tls() => Some(self.tls.client_config()?),
            _ => None,
        };
        let dialer = Dialer {
            deflate: self.deflate,
            proxy,
            proxy_tls,
            target,
            tls_config,
            tls: self.tls,
            connect_timeout: self.config.connect_timeout,
            handshake_timeout: self.config.handshake_timeout,
            nodelay: self.config.nodelay,
            headers: self.headers,
            subprotocols: self.subprotocols,
        };
        let topics = self.topics;
        Client::start(
            dialer,
            self.config,
            self.endpoint,
            self.reconnect,
            topics,
            ingress,
        )
    }
}
