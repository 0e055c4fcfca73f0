//! Connection limits as reservations: a slot is taken when a connection is accepted, before its
//! handshake, and given back when the connection is gone (the [`Slot`] is dropped). Checking
//! and taking happen under one lock, so racing connections cannot overshoot a limit.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;

/// Which limit refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Full {
    Connections,
    PerIp,
    Handshakes,
}

struct Counts {
    total: usize,
    handshakes: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// The hub's connection counts against its limits.
pub(crate) struct Limits {
    max_total: usize,
    max_per_ip: usize,
    max_handshakes: usize,
    counts: Mutex<Counts>,
}

impl Limits {
    pub(crate) fn new(max_total: usize, max_per_ip: usize, max_handshakes: usize) -> Arc<Self> {
        Arc::new(Limits {
            max_total,
            max_per_ip,
            max_handshakes,
            counts: Mutex::new(Counts {
                total: 0,
                handshakes: 0,
                per_ip: HashMap::new(),
            }),
        })
    }

    /// Takes a connection slot (which also counts as a handshake until
    /// [`Slot::handshake_done`]), or says which limit is reached.
    pub(crate) fn reserve(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Full> {
        let mut c = self.counts.lock();
        if c.total >= self.max_total {
            return Err(Full::Connections);
        }
        if c.handshakes >= self.max_handshakes {
            return Err(Full::Handshakes);
        }
        let from_ip = c.per_ip.get(&ip).copied().unwrap_or(0);
        if from_ip >= self.max_per_ip {
            return Err(Full::PerIp);
        }
        c.total += 1;
        c.handshakes += 1;
        c.per_ip.insert(ip, from_ip + 1);
        Ok(Slot {
            limits: self.clone(),
            ip,
            handshaking: true,
        })
    }
}

/// One reserved connection; dropping it gives the slot back.
pub(crate) struct Slot {
    limits: Arc<Limits>,
    ip: IpAddr,
    handshaking: bool,
}

impl Slot {
    /// The handshake is over (upgraded or not): the handshake slot is given back, the
    /// connection slot kept.
    pub(crate) fn handshake_done(&mut self) {
        if std::mem::take(&mut self.handshaking) {
            self.limits.counts.lock().handshakes -= 1;
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.limits.counts.lock();
        c.total -= 1;
        if self.handshaking {
            c.handshakes -= 1;
        }
        if let Some(n) = c.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.per_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_reservations_given_back_on_drop() {
        let limits = Limits::new(3, 2, 2);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let mut s1 = limits.reserve(a).unwrap();
        let s2 = limits.reserve(a).unwrap();
        assert_eq!(limits.reserve(b).err(), Some(Full::Handshakes));
        s1.handshake_done();
        assert_eq!(limits.reserve(a).err(), Some(Full::PerIp));
        let s3 = limits.reserve(b).unwrap();
        assert_eq!(limits.reserve(b).err(), Some(Full::Connections));
        drop(s2);
        drop(s3);
        let _s4 = limits.reserve(a).unwrap();
        let _s5 = limits.reserve(b).unwrap();
        assert_eq!(limits.counts.lock().per_ip.len(), 2);
        drop(s1);
        assert_eq!(limits.counts.lock().total, 2);
    }

    /// Threads racing for the last slots never overshoot.
    #[test]
    fn racing_reservations_never_overshoot() {
        let limits = Limits::new(50, 1000, 1000);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let taken: Vec<Vec<Slot>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| (0..20).filter_map(|_| limits.reserve(ip).ok()).collect()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(taken.iter().map(Vec::len).sum::<usize>(), 50);
    }
}
