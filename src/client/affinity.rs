//! Pinning threads to CPU cores, and how latency-critical threads wait for work.
//!
//! [`Affinity`] names a core for each of a connection's roles; syncws applies it with
//! `sched_setaffinity` when each thread starts (Linux). Elsewhere it is a no-op with a warning.
//!
//! [`WaitStrategy`] decides how the writer, the coordinator and a caller waiting in
//! [`Ticket::wait`](crate::Ticket::wait) wait: parked (the default, no CPU burned), busy-polling
//! (lowest hand-off latency, one core at 100% per waiting thread), or busy-polling for a bounded
//! budget before parking. The reader is not affected: it waits in `read(2)`.

use std::time::{Duration, Instant};

/// Which CPU core each of a connection's threads runs on. `None` leaves a thread to the OS
/// scheduler. Applied when a thread starts (also on every reconnect).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Affinity {
    /// Core for the reader thread.
    pub reader: Option<usize>,
    /// Core for the writer thread.
    pub writer: Option<usize>,
    /// Core for the coordinator thread.
    pub coordinator: Option<usize>,
}

/// How latency-critical threads wait for their next piece of work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WaitStrategy {
    /// Park until work arrives: no CPU used while idle; each wake-up costs the OS's thread
    /// wake-up latency (typically a few to tens of microseconds). The default.
    #[default]
    Block,
    /// Busy-poll and never park: the lowest hand-off latency, at the price of one core at 100%
    /// for every waiting thread (writer, coordinator, callers in `wait`). Use only with cores
    /// reserved for it ([`Affinity`]).
    Spin,
    /// Busy-poll for at most `budget` after the last piece of work, then park. A budget of
    /// 20–100 µs covers the gaps inside a request/response exchange without burning a core
    /// while the connection is idle.
    SpinThenBlock {
        /// How long to poll before parking.
        budget: Duration,
    },
}

impl WaitStrategy {
    /// Polls `poll` according to the strategy; `None` means "stop polling and block now".
    pub(crate) fn spin<T>(self, mut poll: impl FnMut() -> Option<T>) -> Option<T> {
        let until = match self {
            WaitStrategy::Block => return None,
            WaitStrategy::Spin => None,
            WaitStrategy::SpinThenBlock { budget } => {
                Some(crate::deadline::after(Instant::now(), budget))
            }
        };
        loop {
            if let Some(v) = poll() {
                return Some(v);
            }
            if until.is_some_and(|u| Instant::now() >= u) {
                return None;
            }
            std::hint::spin_loop();
        }
    }
}

/// Pins the calling thread to `core`, logging (not failing) when that is not possible.
pub(crate) fn pin_current_thread(core: Option<usize>, role: &str) {
    let Some(core) = core else { return };
    match sys::pin(core) {
        Ok(()) => log::debug!("{role} thread pinned to core {core}"),
        Err(e) => log::warn!("could not pin the {role} thread to core {core}: {e}"),
    }
}

#[cfg(target_os = "linux")]
mod sys {
    use std::io;

    /// Room for 1024 CPUs, the size glibc's `cpu_set_t` uses.
    const WORDS: usize = 16;

    unsafe extern "C" {
        fn sched_setaffinity(pid: i32, cpusetsize: usize, mask: *const u64) -> i32;
    }

    pub(super) fn pin(core: usize) -> io::Result<()> {
        if core >= WORDS * 64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "core number too large",
            ));
        }
        let mut mask = [0u64; WORDS];
        mask[core / 64] |= 1 << (core % 64);
        // SAFETY: pid 0 is the calling thread; the mask is a valid, initialised buffer of the
        // size passed, which the kernel only reads.
        let rc = unsafe { sched_setaffinity(0, std::mem::size_of_val(&mask), mask.as_ptr()) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod sys {
    pub(super) fn pin(_core: usize) -> std::io::Result<()> {
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "thread pinning needs Linux",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_max_spin_budget_does_not_panic() {
        // Finding 1 (same class): `Instant::now() + budget` overflowed for a huge budget.
        let budget = Duration::MAX;
        assert_eq!(
            WaitStrategy::SpinThenBlock { budget }.spin(|| Some(7)),
            Some(7)
        );
    }

    #[test]
    fn block_never_polls_and_spin_then_block_gives_up() {
        let mut polls = 0;
        assert_eq!(
            WaitStrategy::Block.spin(|| -> Option<()> {
                polls += 1;
                None
            }),
            None
        );
        assert_eq!(polls, 0);
        let budget = Duration::from_millis(2);
        let started = Instant::now();
        assert_eq!(
            WaitStrategy::SpinThenBlock { budget }.spin(|| None::<()>),
            None
        );
        assert!(started.elapsed() >= budget);
        let mut n = 0;
        assert_eq!(
            WaitStrategy::Spin.spin(|| {
                n += 1;
                (n == 1000).then_some(n)
            }),
            Some(1000)
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn pinning_restricts_the_thread_to_its_core() {
        std::thread::spawn(|| {
            sys::pin(0).unwrap();
            let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
            let allowed = status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .unwrap();
            assert_eq!(allowed.trim(), "0");
        })
        .join()
        .unwrap();
    }
}
