//! COMPARISON ONLY — not part of the crate. The crate's semaphore queue (as it was at commit
//! 219b89b, before the waiter lines; see `semaphore_copy`) with
//! `async_lock::Mutex` in place of `std::sync::Mutex`: the design's first choice for the
//! buffer lock (`lock().await` on the async paths; `try_lock`, then `lock_blocking`, for
//! the synchronous `try_push`). Everything else is the same: the items semaphore, the
//! lock-free "full" check for `DropNewest` counted on the closed+shed word, the eviction that
//! leaves the semaphore alone, the counters written with a plain load and store on their own
//! cache line, the clock read after the lock is released, the room wake-up skipped when no
//! producer waits, and the wake-up passed on to a waiting popper when items are left
//! (invariants 5 and 6 of that `src/queue.rs`). Its rows tell what the std mutex bought.
//!
//! The crate moved off this lock because a synchronous `try_push` blocking on it from a task
//! deadlocked a runtime thread: the notified lock waiter could only run on the blocked thread
//! (see `src/queue.rs` and `tests/faults.rs`). Here the executor has 2 threads, so the other
//! one can run the waiter; the benchmark's `try_push` from a task has not hung, but nothing
//! guarantees it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use async_lock::{Mutex, MutexGuard, Semaphore, SemaphoreGuard};
use backpressure_pipeline::{Policy, PushOutcome};
use event_listener::{Event, IntoNotification};

const CLOSE_FLOOD: usize = usize::MAX >> 1;
const CLOSED: u64 = 1 << 63;

/// A counter written only under the buffer lock: a plain load and store.
fn bump(counter: &AtomicU64, n: u64) {
    counter.store(counter.load(Ordering::Relaxed) + n, Ordering::Relaxed);
}

#[derive(Default)]
#[repr(align(128))]
struct Counts {
    accepted: AtomicU64,
    evicted: AtomicU64,
    popped: AtomicU64,
}

/// A full spell's edge, found under the lock and timed after it (as `src/stats.rs`).
enum Edge {
    None,
    Full,
    Room,
}

/// Peak length and time spent full, as the crate's `Meter`.
struct Meter {
    epoch: Instant,
    peak: AtomicUsize,
    started: AtomicU64,
    ended: AtomicU64,
    start_sum: AtomicU64,
    end_sum: AtomicU64,
}

impl Meter {
    fn new() -> Meter {
        Meter {
            epoch: Instant::now(),
            peak: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            ended: AtomicU64::new(0),
            start_sum: AtomicU64::new(0),
            end_sum: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn after_push(&self, len: usize, capacity: usize) -> Edge {
        if len > self.peak.load(Ordering::Relaxed) {
            self.peak.store(len, Ordering::Relaxed);
        }
        if len == capacity {
            Edge::Full
        } else {
            Edge::None
        }
    }

    fn before_pop(&self, len: usize, capacity: usize) -> Edge {
        if len == capacity && len > 0 {
            Edge::Room
        } else {
            Edge::None
        }
    }

    fn record(&self, edge: Edge) {
        match edge {
            Edge::None => {}
            Edge::Full => {
                self.start_sum.fetch_add(self.now(), Ordering::Relaxed);
                self.started.fetch_add(1, Ordering::Relaxed);
            }
            Edge::Room => {
                self.end_sum.fetch_add(self.now(), Ordering::Relaxed);
                self.ended.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The crate's queue with an `async_lock::Mutex` (comparison only).
pub struct AsyncLockQueue<T> {
    items: Semaphore,
    buf: Mutex<VecDeque<T>>,
    room: Event,
    waiting_producers: AtomicUsize,
    waiting_poppers: AtomicUsize,
    state: AtomicU64,
    len: AtomicUsize,
    capacity: usize,
    policy: Policy,
    counts: Counts,
    meter: Meter,
}

impl<T> AsyncLockQueue<T> {
    pub fn new(capacity: usize, policy: Policy) -> Self {
        AsyncLockQueue {
            items: Semaphore::new(0),
            buf: Mutex::new(VecDeque::new()),
            room: Event::new(),
            waiting_producers: AtomicUsize::new(0),
            waiting_poppers: AtomicUsize::new(0),
            state: AtomicU64::new(0),
            len: AtomicUsize::new(0),
            capacity,
            policy,
            counts: Counts::default(),
            meter: Meter::new(),
        }
    }

    fn is_closed(&self) -> bool {
        self.state.load(Ordering::Acquire) & CLOSED != 0
    }

    pub async fn push(&self, item: T) -> PushOutcome<T> {
        let item = match self.shed_if_full(item) {
            Ok(item) => item,
            Err(outcome) => return outcome,
        };
        loop {
            let buf = self.buf.lock().await;
            if self.policy != Policy::Block || self.is_closed() || buf.len() < self.capacity {
                return self.push_locked(buf, item);
            }
            let listener = self.room.listen();
            let waiting = Waiting::new(&self.waiting_producers);
            drop(buf);
            listener.await;
            drop(waiting);
        }
    }

    /// Takes the lock without yielding: `try_lock`, else block the thread.
    pub fn try_push(&self, item: T) -> PushOutcome<T> {
        match self.shed_if_full(item) {
            Ok(item) => {
                let buf = match self.buf.try_lock() {
                    Some(buf) => buf,
                    None => self.buf.lock_blocking(),
                };
                self.push_locked(buf, item)
            }
            Err(outcome) => outcome,
        }
    }

    fn shed_if_full(&self, item: T) -> Result<T, PushOutcome<T>> {
        if self.policy != Policy::DropNewest || self.items.available_permits() < self.capacity {
            return Ok(item);
        }
        let mut state = self.state.load(Ordering::Acquire);
        loop {
            if state & CLOSED != 0 {
                return Err(PushOutcome::Closed(item));
            }
            match self.state.compare_exchange_weak(
                state,
                state + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Err(PushOutcome::Shed(item)),
                Err(now) => state = now,
            }
        }
    }

    fn push_locked(&self, mut buf: MutexGuard<'_, VecDeque<T>>, item: T) -> PushOutcome<T> {
        if self.is_closed() {
            return PushOutcome::Closed(item);
        }
        if buf.len() < self.capacity {
            buf.push_back(item);
            self.len.store(buf.len(), Ordering::Relaxed);
            let edge = self.meter.after_push(buf.len(), self.capacity);
            bump(&self.counts.accepted, 1);
            drop(buf);
            self.items.add_permits(1);
            self.meter.record(edge);
            return PushOutcome::Accepted;
        }
        match self.policy {
            Policy::DropNewest => {
                self.state.fetch_add(1, Ordering::Relaxed);
                drop(buf);
                PushOutcome::Shed(item)
            }
            Policy::DropOldest => {
                let oldest = buf.pop_front();
                buf.push_back(item);
                bump(&self.counts.accepted, 1);
                bump(&self.counts.evicted, 1);
                drop(buf);
                match oldest {
                    Some(oldest) => PushOutcome::Evicted(oldest),
                    None => PushOutcome::Accepted,
                }
            }
            Policy::Block => PushOutcome::Full(item),
        }
    }

    pub async fn pop(&self) -> Option<T> {
        let (permit, woken) = self.reserve().await;
        let mut buf = self.buf.lock().await;
        let edge = self.meter.before_pop(buf.len(), self.capacity);
        let item = buf.pop_front();
        self.len.store(buf.len(), Ordering::Relaxed);
        if item.is_some() {
            bump(&self.counts.popped, 1);
        }
        let producers_wait =
            self.policy == Policy::Block && self.waiting_producers.load(Ordering::Relaxed) > 0;
        drop(buf);
        self.meter.record(edge);
        match item {
            Some(item) => {
                permit.forget();
                if woken {
                    self.chain_wake();
                }
                if producers_wait {
                    self.room.notify(1.additional());
                }
                Some(item)
            }
            None => None,
        }
    }

    /// Waits for a permit, counted as a waiting popper meanwhile (invariant 6).
    async fn reserve(&self) -> (SemaphoreGuard<'_>, bool) {
        if let Some(permit) = self.items.try_acquire() {
            return (permit, false);
        }
        let _waiting = Waiting::new(&self.waiting_poppers);
        (self.items.acquire().await, true)
    }

    /// Passes a wake-up on to the next waiting popper if items are left (invariant 6).
    fn chain_wake(&self) {
        if self.waiting_poppers.load(Ordering::Relaxed) > 0 && self.items.available_permits() > 0 {
            drop(self.items.try_acquire());
        }
    }

    pub fn close(&self) -> bool {
        if self.state.fetch_or(CLOSED, Ordering::AcqRel) & CLOSED != 0 {
            return false;
        }
        self.items.add_permits(CLOSE_FLOOD);
        self.room.notify(usize::MAX);
        true
    }
}

/// A producer counted as waiting for room until this drops.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicUsize) -> Waiting<'a> {
        count.fetch_add(1, Ordering::Relaxed);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
