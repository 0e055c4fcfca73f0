//! [`Handler`]: what the application tells the hub, and what the hub asks it.
//!
//! Every method has a default, so a handler implements only what it needs. Callbacks run on the
//! connection's own thread (admission and messages included), inside `catch_unwind`: a panic
//! closes that connection with 1011 and is counted; the hub and the other connections go on. A
//! callback that blocks holds up its own connection only.

use std::any::Any;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::frame::Initiator;
use crate::frame::{CloseCode, Data};
use crate::hub::conn::{Conn, Identity};
use crate::hub::message::Message;
use crate::hub::stream::{Position, Publication};

/// The application's side of the hub.
///
/// ```
/// use syncws::Data;
/// use syncws::hub::{Admission, Conn, Handler, Request};
///
/// struct Echo;
///
/// impl Handler for Echo {
///     fn admit(&self, request: &Request<'_>) -> Admission {
///         match request.query_param("token") {
///             Some("s3cret") => Admission::accept().user("alice"),
///             _ => Admission::reject(401, "unknown token"),
///         }
///     }
///
///     fn on_message(&self, conn: &Conn, message: Data<'_>) {
///         if let Data::Text(text) = message {
///             let _ = conn.send(&syncws::hub::Message::text(text));
///         }
///     }
/// }
/// ```
pub trait Handler: Send + Sync + 'static {
    /// Decides on a request before any upgrade: every request, WebSocket upgrades and plain
    /// HTTP requests alike (`request.is_upgrade()` tells them apart). The default accepts every
    /// upgrade anonymously and answers anything else `404`.
    fn admit(&self, request: &Request<'_>) -> Admission {
        if request.is_upgrade() {
            Admission::accept()
        } else {
            Admission::reject(404, "not found")
        }
    }

    /// A connection is open (after the `101`). Runs before any of its messages.
    fn on_open(&self, conn: &Conn) {
        let _ = conn;
    }

    /// A whole message arrived, borrowed from the connection's read buffer.
    fn on_message(&self, conn: &Conn, message: Data<'_>) {
        let _ = (conn, message);
    }

    /// A message over the rate limit was dropped (only with
    /// [`RatePolicy::Drop`](super::RatePolicy::Drop)).
    fn on_rate_limited(&self, conn: &Conn) {
        let _ = conn;
    }

    /// The connection ended: called exactly once per opened connection, after it left every
    /// room and can no longer be sent to.
    fn on_close(&self, conn: &Conn, close: &Disconnect) {
        let _ = (conn, close);
    }

    /// May this connection join this room? The default says yes.
    fn authorize_join(&self, conn: &Conn, room: &str) -> bool {
        let _ = (conn, room);
        true
    }

    /// The room's stream was reset (its history lost: a new epoch, or a gap the broker could
    /// not recover): the message every local member gets, such as an unprompted "subscribed"
    /// with `recovered: false` and the new position. `None` (the default) closes them with 1011.
    fn on_reset(&self, room: &str, position: &Position) -> Option<Message> {
        let _ = (room, position);
        None
    }

    /// The frame every member of the room receives for a publication: encoded once per
    /// publication (and again for each recovery that replays it). The default sends the
    /// payload as a binary message.
    fn encode(&self, publication: &Publication) -> Message {
        Message::binary(&publication.data)
    }
}

/// A request as admission sees it.
#[derive(Debug)]
pub struct Request<'a> {
    pub(crate) peer: SocketAddr,
    pub(crate) method: &'a str,
    pub(crate) target: &'a str,
    pub(crate) headers: &'a [httparse::Header<'a>],
    pub(crate) upgrade: bool,
}

impl<'a> Request<'a> {
    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The HTTP method.
    pub fn method(&self) -> &'a str {
        self.method
    }

    /// The path, without the query.
    pub fn path(&self) -> &'a str {
        self.target.split('?').next().unwrap_or("")
    }

    /// The query (after `?`), if any, undecoded.
    pub fn query(&self) -> Option<&'a str> {
        self.target.split_once('?').map(|(_, q)| q)
    }

    /// The first value of a query parameter, undecoded (`?token=abc` → `query_param("token")`
    /// is `Some("abc")`).
    pub fn query_param(&self, name: &str) -> Option<&'a str> {
        self.query()?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then_some(v)
        })
    }

    /// The first value of a header (case-insensitive name), if it is text.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::trim)
    }

    /// Every header, as sent.
    pub fn headers(&self) -> impl Iterator<Item = (&'a str, &'a [u8])> {
        self.headers.iter().map(|h| (h.name, h.value))
    }

    /// The bearer token of an `Authorization: Bearer …` header, if any.
    pub fn bearer_token(&self) -> Option<&'a str> {
        let value = self.header("Authorization")?;
        let (scheme, token) = value.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    }

    /// True for a WebSocket upgrade request; false for a plain HTTP request.
    pub fn is_upgrade(&self) -> bool {
        self.upgrade
    }
}

/// Admission's answer.
#[derive(Debug)]
pub enum Admission {
    /// Upgrade (only meaningful for an upgrade request), with the identity and data the
    /// connection keeps for its whole life.
    Accept(Identity),
    /// Answer with this HTTP response and close: a refusal (401, 403, 429…) or, for a plain
    /// request, the page asked for.
    Respond(Response),
}

impl Admission {
    /// Accept, anonymously and without data; add them with [`user`](Self::user) and
    /// [`data`](Self::data).
    pub fn accept() -> Admission {
        Admission::Accept(Identity::default())
    }

    /// Refuse with `status` and a short text body.
    pub fn reject(status: u16, body: impl Into<String>) -> Admission {
        Admission::Respond(Response::new(status, body.into().into_bytes()))
    }

    /// Sets the user of an accepted connection (for [`send_to_user`](super::HubHandle::send_to_user)).
    pub fn user(self, user: impl Into<String>) -> Admission {
        match self {
            Admission::Accept(mut id) => {
                id.user = Some(Arc::from(user.into()));
                Admission::Accept(id)
            }
            other => other,
        }
    }

    /// Attaches the application's data to an accepted connection ([`Conn::data`]).
    pub fn data(self, data: impl Any + Send + Sync) -> Admission {
        match self {
            Admission::Accept(mut id) => {
                id.data = Some(Arc::new(data));
                Admission::Accept(id)
            }
            other => other,
        }
    }
}

/// An HTTP response sent instead of an upgrade.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Extra headers (`Content-Length` and `Connection: close` are added).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// A response with a `text/plain` body.
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            headers: vec![("Content-Type".into(), "text/plain; charset=utf-8".into())],
            body: body.into(),
        }
    }

    /// A `200` with an HTML body.
    pub fn html(body: impl Into<Vec<u8>>) -> Response {
        Response {
            status: 200,
            headers: vec![("Content-Type".into(), "text/html; charset=utf-8".into())],
            body: body.into(),
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Response {
        self.headers.push((name.into(), value.into()));
        self
    }
}

impl From<Response> for Admission {
    fn from(r: Response) -> Admission {
        Admission::Respond(r)
    }
}

/// How a connection ended, as [`Handler::on_close`] hears it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    /// Who started the close: [`Initiator::Local`] is the hub (a close, a violation, a slow or
    /// rate-limited client, keepalive, shutdown), [`Initiator::Remote`] the client,
    /// [`Initiator::Transport`] nobody (the connection broke).
    pub initiator: Initiator,
    /// The initiator's close code ([`CloseCode::ABNORMAL`] when no close frame was exchanged).
    pub code: CloseCode,
    /// The initiator's close reason.
    pub reason: String,
    /// True when both close frames were exchanged.
    pub clean: bool,
}
