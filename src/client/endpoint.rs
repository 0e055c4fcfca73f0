//! The [`Endpoint`] trait: what syncws needs to know about a venue's dialect to restore a session
//! by itself, plus the [`Cause`] of a disconnect and the [`Action`] that follows it.

use std::sync::Arc;
use std::time::Duration;

use crate::client::requests::Response;
use crate::error::Error;
use crate::frame::{CloseCode, Data, Frame};

/// A venue's reply to something the session sent, as recognised by [`Endpoint::parse_reply`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reply {
    /// Authentication accepted: subscriptions may now be replayed (auth-gated sessions).
    AuthOk,
    /// Authentication refused; the connection is closed and not retried by default.
    AuthFailed(String),
    /// The subscription to this topic is active.
    Subscribed(String),
    /// The subscription to this topic was refused. It is dropped from the desired set and
    /// reported, never retried on its own.
    SubscribeRejected {
        /// The topic.
        topic: String,
        /// The venue's reason.
        reason: String,
    },
    /// An application-level pong answering the ping with sequence number `seq`.
    AppPong(u64),
    /// The endpoint's answer to the request with this id (see
    /// [`Client::send_and_confirm`](crate::Client::send_and_confirm)).
    Response {
        /// The request id the answer carries.
        id: u64,
        /// Accepted or refused.
        response: Response,
    },
}

/// A cheap check run on the reader thread on every inbound message: true if the coordinator
/// should see it (acknowledgements, application pongs, request responses). Only messages that
/// pass it cost a copy and a hop to the coordinator; the message still goes to the ingress.
pub type Precheck = Arc<dyn Fn(Data<'_>) -> bool + Send + Sync>;

/// Why a connection ended or could not be made.
#[derive(Debug)]
#[non_exhaustive]
pub enum Cause {
    /// The application asked: [`Client::close`](crate::Client::close) or shutdown.
    Requested,
    /// The server closed with this code.
    ServerClosed(CloseCode),
    /// The peer broke the protocol; syncws closed with the code in the error.
    Protocol(Error),
    /// The TCP connection failed or ended without a close handshake.
    Transport(Error),
    /// A connection attempt failed (refused, TLS, HTTP status...).
    ConnectFailed(Error),
    /// No protocol pong within the pong timeout.
    PongTimeout,
    /// Too many application pings unanswered, or one unanswered past its timeout.
    AppPongTimeout,
    /// No data frame within the staleness window (pongs do not count).
    Stale,
    /// Authentication was refused by the venue.
    AuthFailed(String),
    /// No acknowledgement of authentication or of this subscription within the ack timeout.
    AckTimeout(Option<String>),
    /// The [`LatencyPolicy`](crate::LatencyPolicy) saw too many slow round trips in a row.
    LatencyPolicy,
    /// An application callback panicked (an [`Endpoint`] method, the
    /// [`Ingress`](crate::Ingress), the precheck or the [`Reconnect`](crate::Reconnect)
    /// strategy); the connection was torn down. Fix the callback: syncws reconnects per the
    /// policy, and the same input may make it panic again. The endpoint and the ingress are
    /// kept as the panic left them.
    CallbackPanicked {
        /// Which callback: for example `"Endpoint::parse_reply"` or `"Ingress::on_message"`.
        callback: &'static str,
        /// The panic message.
        message: String,
    },
}

/// What to do after a disconnect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Reconnect on the backoff schedule.
    Reconnect,
    /// Reconnect, but not before this delay (a floor on the backoff, e.g. `Retry-After`).
    ReconnectAfter(Duration),
    /// Do not reconnect; the client stays closed.
    Stop,
}

impl Cause {
    /// The default policy: normal, going-away and server-error closes, transport failures,
    /// liveness failures and transient connect errors reconnect; HTTP 429/503 honour
    /// `Retry-After`; authentication failures (HTTP 401/403, close code 1008, refused auth),
    /// certificate errors, bad URLs and explicit requests stop.
    pub fn default_action(&self) -> Action {
        match self {
            Cause::Requested | Cause::AuthFailed(_) => Action::Stop,
            Cause::ServerClosed(code) => match code.0 {
                1008 | 1003 => Action::Stop,
                _ => Action::Reconnect,
            },
            Cause::ConnectFailed(Error::HandshakeRejected {
                status,
                retry_after,
                ..
            }) => match status {
                401 | 403 | 404 => Action::Stop,
                429 | 503 => retry_after.map_or(Action::Reconnect, Action::ReconnectAfter),
                _ => Action::Reconnect,
            },
            Cause::ConnectFailed(e) if !e.is_transient() => Action::Stop,
            _ => Action::Reconnect,
        }
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cause::Requested => write!(f, "closed by the application"),
            Cause::ServerClosed(code) => write!(f, "server closed with {code}"),
            Cause::Protocol(e) | Cause::Transport(e) => write!(f, "{e}"),
            Cause::ConnectFailed(e) => write!(f, "connect failed: {e}"),
            Cause::PongTimeout => write!(f, "no pong within the pong timeout"),
            Cause::AppPongTimeout => write!(f, "application pings unanswered"),
            Cause::Stale => write!(f, "no data within the staleness window"),
            Cause::AuthFailed(m) => write!(f, "authentication refused: {m}"),
            Cause::AckTimeout(Some(t)) => write!(f, "no acknowledgement for subscription {t}"),
            Cause::AckTimeout(None) => write!(f, "no acknowledgement of authentication"),
            Cause::LatencyPolicy => write!(f, "latency policy breached"),
            Cause::CallbackPanicked { callback, message } => {
                write!(f, "{callback} panicked: {message}")
            }
        }
    }
}

/// How syncws talks to one venue: session restore, acknowledgements, reconnect decisions.
///
/// The endpoint lives in the coordinator for the client's whole life, so it may keep state (a
/// nonce, a request counter). Every method has a default: a request/response endpoint
/// implements [`precheck`](Self::precheck) and [`parse_reply`](Self::parse_reply); a feed adds
/// [`subscribe`](Self::subscribe) (and `precheck`/`parse_reply` to see acknowledgements).
///
/// Its methods run one at a time on the coordinator thread ([`precheck`](Self::precheck)'s
/// filter runs on the reader thread). With [`Dispatch::Inline`](crate::Dispatch::Inline) they
/// may also run on the thread an input comes from (the caller's, the reader's or the writer's),
/// under the coordinator's lock: keep them short. A panic in one is caught: the connection
/// closes with [`Cause::CallbackPanicked`] and reconnecting follows the policy.
///
/// ```
/// use syncws::{Data, Endpoint, Frame, Reply};
///
/// /// `{"op":"subscribe","args":["trades"]}` style venue with acks `{"event":"subscribed","arg":"trades"}`.
/// struct Venue;
///
/// impl Endpoint for Venue {
///     fn subscribe(&mut self, topic: &str) -> Option<Frame> {
///         Some(Frame::text(format!(r#"{{"op":"subscribe","args":["{topic}"]}}"#)))
///     }
///     fn precheck(&self) -> Option<syncws::Precheck> {
///         Some(std::sync::Arc::new(|d: Data<'_>| d.as_bytes().starts_with(br#"{"event""#)))
///     }
///     fn parse_reply(&mut self, msg: Data<'_>) -> Option<Reply> {
///         let text = match msg { Data::Text(t) => t, _ => return None };
///         let topic = text.strip_prefix(r#"{"event":"subscribed","arg":""#)?.strip_suffix(r#""}"#)?;
///         Some(Reply::Subscribed(topic.to_string()))
///     }
/// }
///
/// let mut v = Venue;
/// assert_eq!(v.parse_reply(Data::Text(r#"{"event":"subscribed","arg":"trades"}"#)),
///            Some(Reply::Subscribed("trades".into())));
/// ```
pub trait Endpoint: Send + 'static {
    /// Extra upgrade-request headers for connection attempt `attempt` (1-based), rebuilt on every
    /// attempt so signed tokens can be fresh. Added after the builder's fixed headers.
    fn headers(&mut self, attempt: u32) -> Vec<(String, String)> {
        let _ = attempt;
        Vec::new()
    }

    /// Frames sent first on every new connection (login, authentication), before any
    /// subscription.
    fn on_open(&mut self, epoch: u64) -> Vec<Frame> {
        let _ = epoch;
        Vec::new()
    }

    /// True if subscriptions must wait for [`Reply::AuthOk`] (private, auth-gated sessions).
    fn auth_gated(&self) -> bool {
        false
    }

    /// The frame that subscribes to `topic`. `None` (the default): this endpoint does not
    /// subscribe; a topic asked for ([`Client::subscribe`](crate::Client::subscribe), the
    /// builder's `subscribe`) is then rejected with
    /// [`Event::SubscriptionRejected`](crate::Event::SubscriptionRejected), never sent.
    fn subscribe(&mut self, topic: &str) -> Option<Frame> {
        let _ = topic;
        None
    }

    /// The frame that unsubscribes from `topic`, if the venue has one.
    fn unsubscribe(&mut self, topic: &str) -> Option<Frame> {
        let _ = topic;
        None
    }

    /// The reader-thread filter for messages [`parse_reply`](Self::parse_reply) should see.
    /// `None` (the default) sends none: then no acknowledgement can be recognised, and
    /// subscriptions count as active as soon as they are sent.
    fn precheck(&self) -> Option<Precheck> {
        None
    }

    /// Recognises an acknowledgement or application pong among the messages the precheck let
    /// through. Runs under the coordinator's lock, usually on the reader thread.
    fn parse_reply(&mut self, msg: Data<'_>) -> Option<Reply> {
        let _ = msg;
        None
    }

    /// The application-level ping with sequence number `seq`, for
    /// [`Keepalive::App`](crate::Keepalive::App).
    fn app_ping(&mut self, seq: u64) -> Option<Frame> {
        let _ = seq;
        None
    }

    /// Decides what follows a disconnect. The default is [`Cause::default_action`].
    fn on_disconnect(&mut self, cause: &Cause) -> Action {
        cause.default_action()
    }
}

/// The endpoint used when none is given: no session to restore.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoSession;

impl Endpoint for NoSession {}
