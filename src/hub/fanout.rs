//! [`Fanout`]: how a broker hands publications to this hub's local members.
//!
//! [`Fanout::deliver`] encodes a publication once ([`Handler::encode`](super::Handler::encode))
//! and queues the same buffer for every local member of its room; the writes happen when the
//! returned [`Delivered`] is dropped, so a broker drops it after releasing its room's order and
//! no lock is held while writing. On a hub connection's thread (a publish from a callback), the
//! writes wait for the end of its read batch (see `Batch`); elsewhere they are made at once.

use std::sync::{Arc, Weak};

use crate::frame::CloseCode;
use crate::guard;
use crate::hub::conn::ConnShared;
use crate::hub::stream::{Position, Publication};
use crate::hub::{Batch, HubShared};

/// The hub's delivery handle, given to its broker by [`Broker::attach`](super::Broker::attach).
#[derive(Clone)]
pub struct Fanout {
    pub(crate) hub: Weak<HubShared>,
}

/// Publications queued for local members, written when this is dropped.
#[must_use = "the queued publication is written when this is dropped"]
pub struct Delivered {
    hub: Option<Arc<HubShared>>,
    touched: Vec<Arc<ConnShared>>,
}

impl Fanout {
    /// Queues `publication` for every local member of its room (encoded once); the writes
    /// happen when the result is dropped. Call in offset order per room.
    pub fn deliver(&self, publication: &Publication) -> Delivered {
        let Some(hub) = self.hub.upgrade() else {
            return Delivered {
                hub: None,
                touched: Vec::new(),
            };
        };
        let mut touched = Vec::new();
        match hub.encode(publication) {
            Some(message) => hub.rooms.for_each(&publication.room, |member| {
                if hub.push_or_slow(member, &message) {
                    touched.push(member.clone());
                }
            }),
            // The members cannot be given this publication: a gap, announced, never silent.
            None => self.reset(&publication.room, &publication.position),
        }
        Delivered {
            hub: Some(hub),
            touched,
        }
    }

    /// Starts a write batch on this thread (for a broker's delivery thread): what is delivered
    /// until it is dropped is written then, one write per member (or by the flusher if the
    /// batch sees no progress for a couple of milliseconds).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn batch(&self) -> Option<Batch> {
        self.hub.upgrade().map(Batch::begin)
    }

    /// The room's stream was reset: its history is gone (a new epoch) or a gap could not be
    /// recovered. Every local member gets [`Handler::on_reset`](super::Handler::on_reset)'s
    /// message (for example an unprompted "subscribed" with `recovered: false`), or is closed
    /// with 1011 when it has none: a stream never changes silently.
    pub fn reset(&self, room: &str, position: &Position) {
        let Some(hub) = self.hub.upgrade() else {
            return;
        };
        hub.counters.resets_add();
        let notice = guard::catch("on_reset", || hub.handler.on_reset(room, position))
            .ok()
            .flatten();
        let mut members = Vec::new();
        hub.rooms.for_each(room, |m| members.push(m.clone()));
        for member in members {
            match &notice {
                Some(m) => {
                    member.outbound.push_unbounded(m);
                    hub.flush(&member);
                }
                None => {
                    hub.begin_close(&member, CloseCode::INTERNAL_ERROR, "stream reset", false);
                }
            }
        }
    }
}

impl Drop for Delivered {
    fn drop(&mut self) {
        let Some(hub) = self.hub.take() else {
            return;
        };
        let touched = std::mem::take(&mut self.touched);
        if let Some(rest) = hub.defer(touched) {
            for member in &rest {
                hub.flush(member);
            }
        }
    }
}
