//! COMPARISON ONLY — not part of the crate. The crate's `Queue` as it was at commit 219b89b
//! (`git show 219b89b:src/queue.rs`): an `async_lock::Semaphore` whose permits count the
//! items, over a `std::sync::Mutex<VecDeque<T>>` held for a few instructions and never across
//! an `.await`. The private `Meter` of `src/stats.rs` is inlined, with only what the queue
//! writes; the readers (`stats`, `len`, `pop_many`, `take_all`) are left out, as the benchmark
//! does not call them. Everything the measured paths do is kept: the lock-free "full" check for
//! `DropNewest` counted on the closed+shed word, the eviction that leaves the semaphore alone,
//! the counters written with a plain load and store on their own cache line, the clock read
//! after the lock is released, the room wake-up skipped when no producer waits, and
//! `chain_wake`.
//!
//! The design's items semaphore was replaced by waiter lists kept under the buffer lock
//! because the semaphore's `notify` is not additional: a woken popper that had not yet run
//! swallowed later wake-ups, so two pushes in a row could leave a second waiting popper asleep
//! (loom found it), which needed `chain_wake` to pass a wake-up on; and `add_permits` notified
//! on every push, whether or not a popper waited. It is kept here to measure the replacement
//! against; its rows are labelled "Queue (semaphore copy)".
//!
//! # Invariants (those of `src/queue.rs` at 219b89b)
//!
//! 1. Until the queue closes, `available permits <= len <= capacity`; a permit is added only
//!    after its item is in the buffer.
//! 2. An item leaves the buffer only through a popper that holds a permit, or through eviction
//!    (which puts the incoming item in its place, so the permit count is untouched).
//! 3. The closed flag only goes from unset to set, and close adds a flood of permits after it,
//!    so every popper gets past the semaphore and finds an item or a final empty buffer.
//! 4. `state` holds the closed flag (its top bit) and the shed count: a lock-free shed counts
//!    itself with a compare-exchange that fails once the flag is set.
//! 5. A producer waiting for room counts itself in `waiting_producers` under the buffer lock;
//!    a pop that sees zero there skips the room wake-up.
//! 6. A popper that was woken, got its item, and sees permits left and a popper still waiting,
//!    passes one wake-up on (`chain_wake`): the semaphore's `notify(1)` may have found the first
//!    popper already notified and done nothing more.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use async_lock::{Semaphore, SemaphoreGuard};
use backpressure_pipeline::{Policy, PushOutcome};
use event_listener::{Event, IntoNotification};

/// Permits added on close: enough to let every popper through (invariant 3).
const CLOSE_FLOOD: usize = usize::MAX >> 1;
/// The closed flag in `state` (invariant 4).
const CLOSED: u64 = 1 << 63;

/// A counter written only under the buffer lock: a plain load and store (Relaxed; the lock
/// orders the writes).
fn bump(counter: &AtomicU64, n: u64) {
    counter.store(counter.load(Ordering::Relaxed) + n, Ordering::Relaxed);
}

/// Push outcomes, written only under the buffer lock, on a cache line of their own.
#[derive(Default)]
#[repr(align(128))]
struct Counts {
    accepted: AtomicU64,
    evicted: AtomicU64,
    popped: AtomicU64,
}

/// A value on a cache line of its own (128 bytes covers adjacent-line prefetching).
#[repr(align(128))]
struct CacheLine<T>(T);

/// A full spell's edge, found under the lock and timed after it (as `src/stats.rs`).
enum Edge {
    None,
    Full,
    Room,
}

/// Peak length and time spent full, as the crate's `Meter` at 219b89b (writers only).
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

    /// Under the buffer lock, after adding items: `len` is the new length.
    fn after_push(&self, len: usize, capacity: usize) -> Edge {
        // Relaxed: written only under the lock, which orders the writes.
        if len > self.peak.load(Ordering::Relaxed) {
            self.peak.store(len, Ordering::Relaxed);
        }
        if len == capacity {
            Edge::Full
        } else {
            Edge::None
        }
    }

    /// Under the buffer lock, before removing items: `len` is the length before.
    fn before_pop(&self, len: usize, capacity: usize) -> Edge {
        if len == capacity {
            Edge::Room
        } else {
            Edge::None
        }
    }

    /// After the lock is released: times an edge found under it.
    fn record(&self, edge: Edge) {
        // Relaxed: statistics; the sums are exact once every edge is recorded.
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

/// The crate's queue at 219b89b: an items semaphore over a std mutex (comparison only).
pub struct SemaphoreQueue<T> {
    /// Permits == items available to poppers (invariant 1); flooded on close (invariant 3).
    items: Semaphore,
    buf: Mutex<VecDeque<T>>,
    /// Wakes producers waiting for room under `Policy::Block`.
    room: Event,
    /// Producers waiting for room (invariant 5).
    waiting_producers: AtomicUsize,
    /// Poppers waiting for an item (invariant 6).
    waiting_poppers: AtomicUsize,
    /// The closed flag and the shed count (invariant 4).
    state: CacheLine<AtomicU64>,
    /// A copy of the buffer's length, written under the lock, for lock-free reads.
    len: AtomicUsize,
    capacity: usize,
    policy: Policy,
    counts: Counts,
    meter: Meter,
}

impl<T> SemaphoreQueue<T> {
    pub fn new(capacity: usize, policy: Policy) -> Self {
        SemaphoreQueue {
            items: Semaphore::new(0),
            buf: Mutex::new(VecDeque::new()),
            room: Event::new(),
            waiting_producers: AtomicUsize::new(0),
            waiting_poppers: AtomicUsize::new(0),
            state: CacheLine(AtomicU64::new(0)),
            len: AtomicUsize::new(0),
            capacity,
            policy,
            counts: Counts::default(),
            meter: Meter::new(),
        }
    }

    fn is_closed(&self) -> bool {
        // Acquire: pairs with the Release in `close`.
        self.state.0.load(Ordering::Acquire) & CLOSED != 0
    }

    pub async fn push(&self, item: T) -> PushOutcome<T> {
        if self.policy != Policy::Block {
            return self.try_push(item);
        }
        loop {
            let (listener, waiting) = {
                let buf = self.lock();
                if self.is_closed() || buf.len() < self.capacity {
                    return self.push_locked(buf, item);
                }
                // Listen and stand in line before releasing the lock (invariant 5).
                (self.room.listen(), Waiting::new(&self.waiting_producers))
            };
            listener.await;
            drop(waiting);
        }
    }

    pub fn try_push(&self, item: T) -> PushOutcome<T> {
        match self.shed_if_full(item) {
            Ok(item) => self.push_locked(self.lock(), item),
            Err(outcome) => outcome,
        }
    }

    /// Sheds `item` without the lock if the policy is `DropNewest` and the queue is full.
    fn shed_if_full(&self, item: T) -> Result<T, PushOutcome<T>> {
        if self.policy != Policy::DropNewest || self.items.available_permits() < self.capacity {
            return Ok(item);
        }
        // Full by invariant 1, unless the permits are close's flood (invariant 3). Count
        // the shed only while the flag is unset (invariant 4). Terminates: each retry means
        // another shed was counted or the queue closed, and close ends the loop.
        let mut state = self.state.0.load(Ordering::Acquire);
        loop {
            if state & CLOSED != 0 {
                return Err(PushOutcome::Closed(item));
            }
            // AcqRel on success: ordered with close's `fetch_or`; Acquire on failure to
            // re-read the flag.
            match self.state.0.compare_exchange_weak(
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
            self.enqueue(buf, item);
            return PushOutcome::Accepted;
        }
        match self.policy {
            Policy::DropNewest => {
                // Relaxed: the lock orders it; the flag cannot overflow into it.
                self.state.0.fetch_add(1, Ordering::Relaxed);
                drop(buf);
                PushOutcome::Shed(item)
            }
            Policy::DropOldest => {
                // One out, one in: the permit count is untouched (invariant 2).
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

    /// Adds `item` to a buffer with room, then makes it available to poppers (invariant 1).
    fn enqueue(&self, mut buf: MutexGuard<'_, VecDeque<T>>, item: T) {
        buf.push_back(item);
        // Relaxed: a statistic; the lock orders the buffer itself.
        self.len.store(buf.len(), Ordering::Relaxed);
        let edge = self.meter.after_push(buf.len(), self.capacity);
        bump(&self.counts.accepted, 1);
        drop(buf);
        // A wake-up on every push, whether or not a popper waits.
        self.items.add_permits(1);
        self.meter.record(edge);
    }

    pub async fn pop(&self) -> Option<T> {
        // A fresh `acquire()` per pop keeps the semaphore's wake-ups chaining.
        let (permit, woken) = self.reserve().await;
        let mut buf = self.lock();
        let edge = self.meter.before_pop(buf.len(), self.capacity);
        let item = buf.pop_front();
        // Relaxed: a statistic; the lock orders the buffer itself.
        self.len.store(buf.len(), Ordering::Relaxed);
        if item.is_some() {
            bump(&self.counts.popped, 1);
        }
        let producers_wait = self.producers_wait();
        drop(buf);
        self.meter.record(edge);
        match item {
            Some(item) => {
                // The permit stood for this item (invariant 1): consume it.
                permit.forget();
                if woken {
                    self.chain_wake();
                }
                if producers_wait {
                    self.room.notify(1.additional());
                }
                Some(item)
            }
            // Only a flood permit finds the buffer empty, and by invariant 3 that is
            // final; dropping the permit hands it on to the next waiting popper.
            None => None,
        }
    }

    /// Closes the queue; returns `true` if this call closed it.
    pub fn close(&self) -> bool {
        // AcqRel: publishes the close to pushers (invariant 3); the previous value tells
        // which caller closed it.
        if self.state.0.fetch_or(CLOSED, Ordering::AcqRel) & CLOSED != 0 {
            return false;
        }
        self.items.add_permits(CLOSE_FLOOD);
        self.room.notify(usize::MAX);
        true
    }

    /// Waits for a permit, counted as a waiting popper meanwhile (invariant 6); returns
    /// whether it waited.
    async fn reserve(&self) -> (SemaphoreGuard<'_>, bool) {
        if let Some(permit) = self.items.try_acquire() {
            return (permit, false);
        }
        let _waiting = Waiting::new(&self.waiting_poppers);
        (self.items.acquire().await, true)
    }

    /// Passes a wake-up on to the next waiting popper if items are left (invariant 6):
    /// releasing a permit notifies one waiter unless one is already notified.
    fn chain_wake(&self) {
        // Relaxed: a hint; a popper that starts waiting later checks the permits itself.
        if self.waiting_poppers.load(Ordering::Relaxed) > 0 && self.items.available_permits() > 0 {
            drop(self.items.try_acquire());
        }
    }

    /// Whether a producer may be waiting for room; read under the buffer lock (invariant 5).
    fn producers_wait(&self) -> bool {
        // Relaxed: written under this lock when a producer starts waiting.
        self.policy == Policy::Block && self.waiting_producers.load(Ordering::Relaxed) > 0
    }

    /// Takes the buffer lock; a poisoned buffer is still a valid `VecDeque`.
    fn lock(&self) -> MutexGuard<'_, VecDeque<T>> {
        self.buf.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A waiter counted in `waiting_producers` or `waiting_poppers` until this drops.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicUsize) -> Waiting<'a> {
        // Relaxed: taken under the buffer lock, where pops read it.
        count.fetch_add(1, Ordering::Relaxed);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        // Relaxed: a pop that misses this decrement only wakes one too many.
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
