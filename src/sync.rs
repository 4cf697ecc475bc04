//! Atomics and locks: std's (parking_lot's for the queue's buffer lock), or loom's when the
//! crate is model checked (`--cfg loom`, see `loom/` in the repository), so that loom
//! explores every interleaving of our own atomics and locks too, not only those inside
//! `event-listener`.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize};
#[cfg(loom)]
pub(crate) use loom::sync::{Arc, Mutex, MutexGuard};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize};
#[cfg(not(loom))]
pub(crate) use std::sync::{Arc, Mutex, MutexGuard};

pub(crate) use std::sync::atomic::Ordering;

/// The queue's buffer lock: parking_lot's `Mutex`, which measured faster than std's under
/// the hand-off shapes' contention (BENCHMARKS.md, "The buffer lock: parking_lot"), or loom's
/// when model checked. Neither is poisoned: nothing panics while it is held but a failed
/// allocation, which aborts.
#[cfg(not(loom))]
pub(crate) use parking_lot::{Mutex as BufferLock, MutexGuard as BufferGuard};

#[cfg(loom)]
pub(crate) use loom_lock::{BufferGuard, BufferLock};

#[cfg(loom)]
mod loom_lock {
    use std::sync::PoisonError;

    pub(crate) type BufferGuard<'a, T> = loom::sync::MutexGuard<'a, T>;

    /// loom's `Mutex` with parking_lot's signatures.
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
