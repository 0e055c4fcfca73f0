//! The synchronisation primitives of the lock-free hand-offs ([doorbell](crate::client::doorbell),
//! [ticket](crate::client::ticket) and the stepper's count of queued inputs), switchable to [loom](https://docs.rs/loom)'s so that their models
//! can be checked.
//!
//! A normal build re-exports `parking_lot`'s mutex and condition variable, `std`'s atomics and
//! threads, and reads the real clock: exactly the types the hand-offs used before, at no cost.
//!
//! A test build with `RUSTFLAGS="--cfg loom"` swaps in loom's versions behind the same API (a
//! `lock` that cannot fail, a condition variable waited on through `&mut` guard) and a model
//! clock, so that the code the models run is the real code. Loom types work only inside
//! `loom::model`: under `--cfg loom` run the models alone (`cargo test --lib loom`).
//!
//! Loom has no time: a timed wait never times out by itself. The model clock stands in for it:
//! [`now`] is a fixed instant plus a model-controlled offset, and a model that lets time pass
//! (`clock::advance`) wakes the timed waiters itself, as the kernel's timer would.

#[cfg(not(all(loom, test)))]
mod imp {
    pub(crate) use parking_lot::{Condvar, Mutex, MutexGuard};
    pub(crate) use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering, fence};
    pub(crate) use std::thread::{self, Thread};

    /// The current time.
    #[inline(always)]
    pub(crate) fn now() -> std::time::Instant {
        std::time::Instant::now()
    }

    /// Called by a busy-polling loop each time its poll finds nothing (the caller's loop does
    /// the CPU's spin hint): nothing to do outside loom.
    #[inline(always)]
    pub(crate) fn spin_wait() {}

    /// Parks the current thread until it is unparked or `deadline` passes (or spuriously).
    pub(crate) fn park_until(deadline: std::time::Instant) {
        thread::park_timeout(deadline.saturating_duration_since(now()));
    }
}

#[cfg(all(loom, test))]
mod imp {
    pub(crate) use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering, fence};
    pub(crate) use loom::thread::{self, Thread};

    use std::ops::{Deref, DerefMut};
    use std::time::Instant;

    /// Loom's mutex with `parking_lot`'s API: `lock` returns the guard (loom never poisons
    /// inside a model that does not panic).
    #[derive(Debug, Default)]
    pub(crate) struct Mutex<T>(loom::sync::Mutex<T>);

    /// A guard of [`Mutex`]; the `Option` lets [`Condvar::wait_until`] take the guard out of a
    /// `&mut` and put it back, as `parking_lot` does.
    pub(crate) struct MutexGuard<'a, T>(Option<loom::sync::MutexGuard<'a, T>>);

    impl<T> Mutex<T> {
        pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
            MutexGuard(Some(self.0.lock().expect("loom mutex poisoned")))
        }
    }

    impl<T> Deref for MutexGuard<'_, T> {
        type Target = T;
        fn deref(&self) -> &T {
            self.0.as_ref().expect("guard present")
        }
    }

    impl<T> DerefMut for MutexGuard<'_, T> {
        fn deref_mut(&mut self) -> &mut T {
            self.0.as_mut().expect("guard present")
        }
    }

    /// Whether a timed wait returned because its deadline passed.
    #[derive(Debug, Clone, Copy)]
    pub(crate) struct WaitTimeoutResult(bool);

    impl WaitTimeoutResult {
        pub(crate) fn timed_out(self) -> bool {
            self.0
        }
    }

    /// Loom's condition variable with `parking_lot`'s API, timed against the model clock.
    #[derive(Debug, Default)]
    pub(crate) struct Condvar(loom::sync::Condvar);

    impl Condvar {
        /// Waits for a notification unless the model clock already reads `until` or later (a
        /// real timed wait whose deadline has passed returns at once). Loom cannot time a wait
        /// out: the model that advances the clock notifies the waiters (under the mutex, so that
        /// the advance cannot fall between this check and the wait).
        pub(crate) fn wait_until<T>(
            &self,
            guard: &mut MutexGuard<'_, T>,
            until: Instant,
        ) -> WaitTimeoutResult {
            if now() >= until {
                return WaitTimeoutResult(true);
            }
            let inner = guard.0.take().expect("guard present");
            guard.0 = Some(self.0.wait(inner).expect("loom mutex poisoned"));
            WaitTimeoutResult(now() >= until)
        }

        pub(crate) fn notify_one(&self) {
            self.0.notify_one();
        }

        pub(crate) fn notify_all(&self) {
            self.0.notify_all();
        }
    }

    /// The model clock: a fixed instant plus an offset that models move forward.
    pub(crate) mod clock {
        use loom::sync::atomic::{AtomicU64, Ordering};
        use std::sync::OnceLock;
        use std::time::{Duration, Instant};

        static BASE: OnceLock<Instant> = OnceLock::new();

        loom::lazy_static! {
            /// Nanoseconds elapsed in this execution of the model.
            static ref ELAPSED: AtomicU64 = AtomicU64::new(0);
        }

        pub(crate) fn now() -> Instant {
            let base = *BASE.get_or_init(Instant::now);
            base + Duration::from_nanos(ELAPSED.load(Ordering::SeqCst))
        }

        /// Moves the model clock forward by `by`.
        pub(crate) fn advance(by: Duration) {
            let nanos = u64::try_from(by.as_nanos()).expect("advance fits in u64 nanoseconds");
            ELAPSED.fetch_add(nanos, Ordering::SeqCst);
        }
    }

    pub(crate) use clock::now;

    /// A busy-polling loop found nothing: let loom run another thread (a spin loop that never
    /// yields would never let the model make progress).
    pub(crate) fn spin_wait() {
        loom::thread::yield_now();
    }

    /// Loom cannot time a park out: a deadline already passed returns at once, any other waits
    /// for an unpark (the model that moves the clock unparks the waiter itself).
    pub(crate) fn park_until(deadline: Instant) {
        if now() < deadline {
            loom::thread::park();
        }
    }
}

pub(crate) use imp::*;

/// Runs a loom model with the search bounded to three preemptions per execution: enough for
/// the races the models look for (a Dekker pair preempted between its store, fence and load; a
/// count read between a send and its handling), and quick. An unbounded search of the doorbell
/// models had not finished in 5 minutes.
#[cfg(all(loom, test))]
pub(crate) fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(f);
}
