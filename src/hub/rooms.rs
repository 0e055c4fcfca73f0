//! Room membership: who receives a room's publications on this hub.
//!
//! One map from room name to its members, behind one lock that is held only to look up or
//! change membership, never while writing to a socket. A connection also records its own rooms
//! (`rooms` in [`ConnShared`]); the two are changed together, under the connection's `joining`
//! lock, so that a join racing the connection's end cannot leave a dead member: once the
//! connection is marked gone, joins fail, and its departure removes it from every room it
//! recorded.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use parking_lot::Mutex;

use crate::hub::conn::ConnShared;
use crate::hub::metrics::Counters;

/// Every room with at least one member on this hub.
pub(crate) struct Rooms {
    map: Mutex<HashMap<Arc<str>, Vec<Arc<ConnShared>>>>,
    counters: Arc<Counters>,
}

impl Rooms {
    pub(crate) fn new(counters: Arc<Counters>) -> Self {
        Rooms {
            map: Mutex::new(HashMap::new()),
            counters,
        }
    }

    /// Adds a member (the caller holds the connection's membership lock and checked `gone`).
    pub(crate) fn add(&self, room: &Arc<str>, conn: &Arc<ConnShared>) {
        let mut map = self.map.lock();
        let members = map.entry(room.clone()).or_insert_with(|| {
            self.counters.rooms.fetch_add(1, Relaxed);
            Vec::new()
        });
        members.push(conn.clone());
        self.counters.memberships.fetch_add(1, Relaxed);
    }

    /// Removes a member; forgets the room when it is empty.
    pub(crate) fn remove(&self, room: &str, conn_id: u64) {
        let mut map = self.map.lock();
        let Some(members) = map.get_mut(room) else {
            return;
        };
        if let Some(i) = members.iter().position(|c| c.id == conn_id) {
            members.swap_remove(i);
            self.counters.memberships.fetch_sub(1, Relaxed);
        }
        if members.is_empty() {
            map.remove(room);
            self.counters.rooms.fetch_sub(1, Relaxed);
        }
    }

    /// Runs `f` on each member of `room` (under the map lock: `f` must only queue, not write).
    pub(crate) fn for_each(&self, room: &str, mut f: impl FnMut(&Arc<ConnShared>)) {
        let map = self.map.lock();
        if let Some(members) = map.get(room) {
            members.iter().for_each(&mut f);
        }
    }

    /// The ids of a room's members.
    pub(crate) fn members(&self, room: &str) -> Vec<u64> {
        let map = self.map.lock();
        map.get(room)
            .map(|m| m.iter().map(|c| c.id).collect())
            .unwrap_or_default()
    }
}
