//! [`Conn`]: one accepted WebSocket connection, as the application sees it.

use std::any::Any;
use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use parking_lot::Mutex;

use crate::frame::CloseCode;
use crate::hub::message::Message;
use crate::hub::outbound::Outbound;
use crate::hub::{HubHandle, HubShared, SendError};
use crate::transport::SocketHandle;

/// Who a connection is, fixed at admission.
#[derive(Debug, Default, Clone)]
pub struct Identity {
    pub(crate) user: Option<Arc<str>>,
    pub(crate) data: Option<Arc<dyn Any + Send + Sync>>,
}

/// What the hub keeps for each open connection.
pub(crate) struct ConnShared {
    pub id: u64,
    pub peer: SocketAddr,
    pub path: String,
    pub protocol: Option<String>,
    pub identity: Identity,
    pub outbound: Outbound,
    pub socket: SocketHandle,
    /// Held across a whole join, leave or the end's departure from every room: a join racing
    /// the connection's end cannot leave a dead member. Never taken by a read of `rooms`.
    pub joining: Mutex<()>,
    /// The rooms this connection is in (changed under `joining`).
    pub rooms: Mutex<HashSet<Arc<str>>>,
    /// The connection ended: it may join nothing more, and the flusher leaves it alone.
    pub gone: AtomicBool,
    pub hub: Arc<HubShared>,
}

/// A handle to one connection: cheap to clone, usable from any thread, valid after the
/// connection ended (sending then fails with [`SendError::Closed`]).
#[derive(Clone)]
pub struct Conn {
    pub(crate) shared: Arc<ConnShared>,
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn")
            .field("id", &self.shared.id)
            .field("peer", &self.shared.peer)
            .field("user", &self.user())
            .finish()
    }
}

impl Conn {
    /// The connection's id, unique for the life of the hub.
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.shared.peer
    }

    /// The path of the upgrade request (without the query).
    pub fn path(&self) -> &str {
        &self.shared.path
    }

    /// The subprotocol chosen at the upgrade, if any.
    pub fn protocol(&self) -> Option<&str> {
        self.shared.protocol.as_deref()
    }

    /// The user admission gave the connection, if any.
    pub fn user(&self) -> Option<&str> {
        self.shared.identity.user.as_deref()
    }

    /// The data admission attached, if it is a `T`.
    pub fn data<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.shared.identity.data.as_ref()?.downcast_ref()
    }

    /// Sends a message to this connection alone, without blocking: written at once when the
    /// connection's queue is empty, else queued (see [`HubConfig::slow`](super::HubConfig::slow)
    /// for a full queue).
    pub fn send(&self, message: &Message) -> Result<(), SendError> {
        self.shared.hub.send_to(&self.shared, message)
    }

    /// Starts the close handshake with `code` and `reason` (cut to fit a close frame). The
    /// connection ends when the client answers, or after
    /// [`close_timeout`](super::HubConfig::close_timeout).
    pub fn close(&self, code: CloseCode, reason: &str) {
        self.shared
            .hub
            .begin_close(&self.shared, code, reason, false);
    }

    /// The rooms this connection is in.
    pub fn rooms(&self) -> Vec<String> {
        let rooms = self.shared.rooms.lock();
        rooms.iter().map(|r| r.to_string()).collect()
    }

    /// The hub the connection belongs to.
    pub fn hub(&self) -> HubHandle {
        HubHandle {
            shared: self.shared.hub.clone(),
        }
    }
}
