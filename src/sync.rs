//! Atomics and locks: std's, or loom's when the crate is model checked (`--cfg loom`, see
//! `loom/` in the repository), so that loom explores every interleaving of our own atomics
//! too, not only those inside `async-lock` and `event-listener`.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize};
#[cfg(loom)]
pub(crate) use loom::sync::{Arc, Mutex, MutexGuard};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize};
#[cfg(not(loom))]
pub(crate) use std::sync::{Arc, Mutex, MutexGuard};

pub(crate) use std::sync::atomic::Ordering;
