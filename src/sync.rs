//! Atomics and locks: std's (a spin lock of our own for the queue's buffer lock), or loom's when the
//! crate is model checked (`--cfg loom`, see `loom/` in the repository), so that loom
//! explores every interleaving of our own atomics and locks too, not only those inside
//! `event-listener`. Under loom the buffer lock is loom's `Mutex`: the spin lock's own
//! back-off is not model checked (its tests are below).

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize};
#[cfg(loom)]
pub(crate) use loom::sync::{Arc, Mutex, MutexGuard};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize};
#[cfg(not(loom))]
pub(crate) use std::sync::{Arc, Mutex, MutexGuard};

pub(crate) use std::sync::atomic::Ordering;

/// The queue's buffer lock (a spin lock, below), or loom's `Mutex` when model checked.
#[cfg(not(loom))]
pub(crate) use spin_lock::{BufferGuard, BufferLock};

/// The queue's buffer lock: a spin lock that backs off to the scheduler.
///
/// Taken with one compare-exchange and released with a plain store (spin's `SpinMutex`), where
/// a parking lock (std's, parking_lot's) pays a second atomic read-modify-write to release, to
/// learn whether a parked thread must be woken. The queue holds it never across an `.await` or
/// user code, and on the plain paths for a few instructions, so a waiter most often finds it
/// free after a short spin. (A time-based queue's snapshot and its expiry at the exit walk the
/// items' stamps under it, and `pop_many` moves up to its limit: longer, and rarer.)
/// Measured side by side with parking_lot's `Mutex` (BENCHMARKS.md, "The buffer lock: a spin
/// lock"): faster in S1, S2, S4 and S6 on both runtimes, most on tokio.
///
/// When the lock stays taken (its holder was preempted), a waiter stops spinning: it yields
/// its thread to the scheduler (16 times; 22 on one core), and after that sleeps, from 1 µs
/// doubling to about 1 ms, so a
/// holder preempted by its own waiter (one core, or a waiter of higher real-time priority)
/// still gets to run. On one core it does not spin at all. Not fair: a thread that releases the
/// lock and takes it again at once may take it before a waiter (see `Queue::try_push`).
#[cfg(not(loom))]
mod spin_lock {
    use std::marker::PhantomData;
    use std::ops::{Deref, DerefMut};
    use std::sync::OnceLock;
    use std::time::Duration;

    use spin::mutex::{SpinMutex, SpinMutexGuard};

    /// The held lock. Neither `Send` nor `Sync`, as std's and parking_lot's guards are not:
    /// a future that held it across an `.await` could not be spawned (on a spin lock, that
    /// would leave its waiters spinning for as long as the future waits).
    pub(crate) struct BufferGuard<'a, T> {
        guard: SpinMutexGuard<'a, T>,
        _not_send: PhantomData<*const ()>,
    }

    impl<T> Deref for BufferGuard<'_, T> {
        type Target = T;

        #[inline]
        fn deref(&self) -> &T {
            &self.guard
        }
    }

    impl<T> DerefMut for BufferGuard<'_, T> {
        #[inline]
        fn deref_mut(&mut self) -> &mut T {
            &mut self.guard
        }
    }

    impl<'a, T> BufferGuard<'a, T> {
        #[inline]
        fn new(guard: SpinMutexGuard<'a, T>) -> Self {
            BufferGuard {
                guard,
                _not_send: PhantomData,
            }
        }
    }

    /// Spin rounds (1, 2, 4, ... 32 spin-loop hints) before the first yield.
    const SPIN_ROUNDS: u32 = 6;
    /// Rounds, spinning and yielding, before the first sleep.
    const SLEEP_AFTER: u32 = SPIN_ROUNDS + 16;
    /// The longest sleep: 2^10 µs, about 1 ms.
    const MAX_SLEEP_SHIFT: u32 = 10;

    #[derive(Debug)]
    pub(crate) struct BufferLock<T>(SpinMutex<T>);

    impl<T> BufferLock<T> {
        pub(crate) fn new(value: T) -> BufferLock<T> {
            BufferLock(SpinMutex::new(value))
        }

        #[inline]
        pub(crate) fn lock(&self) -> BufferGuard<'_, T> {
            match self.0.try_lock() {
                Some(guard) => BufferGuard::new(guard),
                None => self.lock_contended(),
            }
        }

        /// Waits for the lock: spins, then yields, then sleeps (see the module).
        #[cold]
        fn lock_contended(&self) -> BufferGuard<'_, T> {
            let spin = multi_core();
            let mut round: u32 = 0;
            // Ends when the holder releases the lock: it holds it for a few instructions.
            loop {
                // Read before trying: a failed compare-exchange takes the line from the holder.
                if !self.0.is_locked() {
                    if let Some(guard) = self.0.try_lock() {
                        return BufferGuard::new(guard);
                    }
                }
                if spin && round < SPIN_ROUNDS {
                    for _ in 0..(1u32 << round) {
                        std::hint::spin_loop();
                    }
                } else if round < SLEEP_AFTER {
                    std::thread::yield_now();
                } else {
                    let shift = (round - SLEEP_AFTER).min(MAX_SLEEP_SHIFT);
                    std::thread::sleep(Duration::from_micros(1 << shift));
                }
                round = round.saturating_add(1);
            }
        }

        pub(crate) fn get_mut(&mut self) -> &mut T {
            self.0.get_mut()
        }
    }

    /// Whether this process may run on more than one core (spinning can pay only then).
    fn multi_core() -> bool {
        static MULTI: OnceLock<bool> = OnceLock::new();
        *MULTI.get_or_init(|| std::thread::available_parallelism().map_or(true, |n| n.get() > 1))
    }

    #[cfg(test)]
    mod tests {
        use std::sync::Arc;
        use std::thread;

        use super::BufferLock;

        #[test]
        fn the_guard_is_neither_send_nor_sync() {
            // Compiles only if the type is not `Send` (resp. `Sync`): with it, both impls
            // apply and the `_` is ambiguous.
            trait AmbiguousIfSend<A> {
                fn check() {}
            }
            impl<T: ?Sized> AmbiguousIfSend<()> for T {}
            impl<T: ?Sized + Send> AmbiguousIfSend<u8> for T {}
            trait AmbiguousIfSync<A> {
                fn check() {}
            }
            impl<T: ?Sized> AmbiguousIfSync<()> for T {}
            impl<T: ?Sized + Sync> AmbiguousIfSync<u8> for T {}
            <super::BufferGuard<'static, u64> as AmbiguousIfSend<_>>::check();
            <super::BufferGuard<'static, u64> as AmbiguousIfSync<_>>::check();
        }

        #[test]
        fn contended_increments_are_exact() {
            const THREADS: usize = 4;
            const EACH: usize = 50_000;
            let lock = Arc::new(BufferLock::new(0usize));
            let threads: Vec<_> = (0..THREADS)
                .map(|_| {
                    let lock = Arc::clone(&lock);
                    thread::spawn(move || {
                        for _ in 0..EACH {
                            *lock.lock() += 1;
                        }
                    })
                })
                .collect();
            for thread in threads {
                thread.join().expect("an incrementing thread");
            }
            assert_eq!(*lock.lock(), THREADS * EACH);
        }

        #[test]
        fn a_waiter_outlasts_a_long_hold() {
            // The waiter likely runs out of spins and yields, and may sleep; it gets the lock
            // once it is released, and only then.
            let lock = Arc::new(BufferLock::new(Vec::new()));
            let guard = lock.lock();
            let waiter = thread::spawn({
                let lock = Arc::clone(&lock);
                move || lock.lock().push(2)
            });
            // Held for a while (the outcome does not depend on how long: the waiter can only
            // take the lock once it is released), so the waiter likely reaches its sleeps.
            for _ in 0..1_000 {
                thread::yield_now();
            }
            let mut guard = guard;
            guard.push(1);
            drop(guard);
            waiter.join().expect("the waiting thread");
            assert_eq!(*lock.lock(), [1, 2]);
        }
    }
}

#[cfg(loom)]
pub(crate) use loom_lock::{BufferGuard, BufferLock};

#[cfg(loom)]
mod loom_lock {
    use std::sync::PoisonError;

    pub(crate) type BufferGuard<'a, T> = loom::sync::MutexGuard<'a, T>;

    /// loom's `Mutex` with the spin lock's signatures.
    #[derive(Debug)]
    pub(crate) struct BufferLock<T>(loom::sync::Mutex<T>);

    impl<T> BufferLock<T> {
        pub(crate) fn new(value: T) -> BufferLock<T> {
            BufferLock(loom::sync::Mutex::new(value))
        }

        pub(crate) fn lock(&self) -> BufferGuard<'_, T> {
            self.0.lock().unwrap_or_else(PoisonError::into_inner)
        }

        pub(crate) fn get_mut(&mut self) -> &mut T {
            self.0.get_mut().unwrap_or_else(PoisonError::into_inner)
        }
    }
}
