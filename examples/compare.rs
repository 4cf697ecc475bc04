//! Side-by-side comparison of the crate's queue and pipeline with async-channel, flume, tokio
//! mpsc and a plain `VecDeque`: throughput, pair cost, peak memory and shutdown time.
//!
//! ```text
//! cargo run --release --example compare                       # one run, < 2 minutes
//! cargo run --release --example compare -- --runs 3 --svg docs/bench.svg
//! cargo run --release --example compare -- --only S1,S4 --reps 7
//! ```
//!
//! Every number is the median of `--reps` repetitions (default 5); the variants of a shape
//! are interleaved within each repetition, so a noisy neighbour hits them alike, and each
//! ratio compares medians taken in the same process run. With `--runs N` the whole suite runs
//! N times and a final table gives the median over the runs of each run's median and ratio.
//!
//! Options: `--runs N`, `--reps N`, `--only S1,S2,S3,S4,S5,S5T,S5B,MEM,SD`, `--svg PATH` (writes the
//! chart from the final table), `--work-iters N` (fixes the ~1 µs busy work instead of
//! calibrating it; for profilers, which slow the calibration down too), `--shape TEXT` and
//! `--variant TEXT` (measure only the shapes / variants whose label contains TEXT, to
//! profile one case: `--only S1 --shape "cap 1024, 1→4" --variant "Queue (std"`).
//!
//! The shapes (executor: one `async_executor::Executor` run on 2 threads):
//! - S1 back-pressure hand-off: `Policy::Block`, `push().await` / `pop().await`, 1 producer →
//!   1, 4, 16 consumer tasks, capacity 16 and 1024, vs a bounded async-channel.
//! - S2 overload, `DropOldest` into capacity 16, 4 consumers at ~1 µs/item: the producer's
//!   push rate, vs async-channel's `force_send`.
//! - S3 the same with `DropNewest`, vs async-channel's `try_send`.
//! - S4 single thread, uncontended: push without waiting + pop polled once with a no-op waker.
//! - S5 the whole `Pipeline` (Block, capacity 1024, 4 workers, ~1 µs/item, N items then
//!   shutdown) vs 4 hand-written tasks reading a bounded async-channel, joined at the end.
//! - S5T the same pipeline with a time-based feature (`measure_queue_delay`, `max_age`,
//!   `codel` with LIFO), set so that nothing is shed: the cost of the clock reads, the stamps
//!   and the delay histogram, vs the pipeline without one.
//! - S5B the same with batch workers (`spawn_batched`, batches of 1, 16 and 64, `max_wait`
//!   1 ms), vs the same hand-written pool; and S5L, an item's latency from its push to the
//!   start of its batch's work (p50, p99) at a steady 100k items/s, which the workers keep
//!   up with: the bound to check is `max_wait` + the batch's service time.
//! - MEM peak RSS (`VmHWM`) of a burst into a pipeline (DropOldest, capacity 1024, slow
//!   workers) vs an unbounded async-channel; each measured in a child process.
//! - SD shutdown: a full backlog of fast work, and workers stuck in `pending()`.
//!
//! "async-lock Mutex copy" rows measure [`async_lock_copy::AsyncLockQueue`], a copy of the
//! semaphore queue with `async_lock::Mutex` in place of its `std::sync::Mutex` (the design's
//! first choice, given up because a synchronous `try_push` blocking on it from a task
//! deadlocked a runtime thread), kept here for comparison only.
//!
//! "semaphore copy" rows measure [`semaphore_copy::SemaphoreQueue`], a copy of the crate's
//! queue as it was at commit 219b89b: an `async_lock::Semaphore` whose permits count the items,
//! over a `std::sync::Mutex<VecDeque<T>>` (the design's second choice, replaced by waiter lists
//! kept under the buffer lock because the semaphore's `notify` is not additional, so an idle
//! woken popper swallowed later wake-ups and needed `chain_wake`, and because it notified on
//! every push), kept here for comparison only.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};
use std::thread;
use std::time::{Duration, Instant};

use async_executor::Executor;
use backpressure_pipeline::{
    Batch, Codel, ExecutorSpawner, Pipeline, PipelineBuilder, Policy, PushOutcome, Queue,
};

// ---------------------------------------------------------------------------------------------
// The async-lock Mutex copy (comparison only)
// ---------------------------------------------------------------------------------------------

/// COMPARISON ONLY — not part of the crate. The crate's semaphore queue (as it was at commit
/// 219b89b, before the waiter lines; see `semaphore_copy`) with
/// `async_lock::Mutex` in place of `std::sync::Mutex`: the design's first choice for the
/// buffer lock (`lock().await` on the async paths; `try_lock`, then `lock_blocking`, for
/// the synchronous `try_push`). Everything else is the same: the items semaphore, the
/// lock-free "full" check for `DropNewest` counted on the closed+shed word, the eviction that
/// leaves the semaphore alone, the counters written with a plain load and store on their own
/// cache line, the clock read after the lock is released, the room wake-up skipped when no
/// producer waits, and the wake-up passed on to a waiting popper when items are left
/// (invariants 5 and 6 of that `src/queue.rs`). Its rows tell what the std mutex bought.
///
/// The crate moved off this lock because a synchronous `try_push` blocking on it from a task
/// deadlocked a runtime thread: the notified lock waiter could only run on the blocked thread
/// (see `src/queue.rs` and `tests/faults.rs`). Here the executor has 2 threads, so the other
/// one can run the waiter; the benchmark's `try_push` from a task has not hung, but nothing
/// guarantees it.
mod async_lock_copy {
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
            if self.waiting_poppers.load(Ordering::Relaxed) > 0
                && self.items.available_permits() > 0
            {
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
}

use async_lock_copy::AsyncLockQueue;

// ---------------------------------------------------------------------------------------------
// The items-semaphore copy (comparison only)
// ---------------------------------------------------------------------------------------------

/// COMPARISON ONLY — not part of the crate. The crate's `Queue` as it was at commit 219b89b
/// (`git show 219b89b:src/queue.rs`): an `async_lock::Semaphore` whose permits count the
/// items, over a `std::sync::Mutex<VecDeque<T>>` held for a few instructions and never across
/// an `.await`. The private `Meter` of `src/stats.rs` is inlined, with only what the queue
/// writes; the readers (`stats`, `len`, `pop_many`, `take_all`) are left out, as the benchmark
/// does not call them. Everything the measured paths do is kept: the lock-free "full" check for
/// `DropNewest` counted on the closed+shed word, the eviction that leaves the semaphore alone,
/// the counters written with a plain load and store on their own cache line, the clock read
/// after the lock is released, the room wake-up skipped when no producer waits, and
/// `chain_wake`.
///
/// The design's items semaphore was replaced by waiter lists kept under the buffer lock
/// because the semaphore's `notify` is not additional: a woken popper that had not yet run
/// swallowed later wake-ups, so two pushes in a row could leave a second waiting popper asleep
/// (loom found it), which needed `chain_wake` to pass a wake-up on; and `add_permits` notified
/// on every push, whether or not a popper waited. It is kept here to measure the replacement
/// against; its rows are labelled "Queue (semaphore copy)".
///
/// # Invariants (those of `src/queue.rs` at 219b89b)
///
/// 1. Until the queue closes, `available permits <= len <= capacity`; a permit is added only
///    after its item is in the buffer.
/// 2. An item leaves the buffer only through a popper that holds a permit, or through eviction
///    (which puts the incoming item in its place, so the permit count is untouched).
/// 3. The closed flag only goes from unset to set, and close adds a flood of permits after it,
///    so every popper gets past the semaphore and finds an item or a final empty buffer.
/// 4. `state` holds the closed flag (its top bit) and the shed count: a lock-free shed counts
///    itself with a compare-exchange that fails once the flag is set.
/// 5. A producer waiting for room counts itself in `waiting_producers` under the buffer lock;
///    a pop that sees zero there skips the room wake-up.
/// 6. A popper that was woken, got its item, and sees permits left and a popper still waiting,
///    passes one wake-up on (`chain_wake`): the semaphore's `notify(1)` may have found the first
///    popper already notified and done nothing more.
mod semaphore_copy {
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
            if self.waiting_poppers.load(Ordering::Relaxed) > 0
                && self.items.available_permits() > 0
            {
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
}

use semaphore_copy::SemaphoreQueue;

// ---------------------------------------------------------------------------------------------
// The queues behind one trait, so every shape runs the same code on each
// ---------------------------------------------------------------------------------------------

trait BenchQueue: Send + Sync + 'static {
    fn make(capacity: usize, policy: Policy) -> Self;
    fn push(&self, item: u64) -> impl Future<Output = PushOutcome<u64>> + Send + '_;
    fn try_push(&self, item: u64) -> PushOutcome<u64>;
    fn pop(&self) -> impl Future<Output = Option<u64>> + Send + '_;
    fn close(&self);
}

impl BenchQueue for Queue<u64> {
    fn make(capacity: usize, policy: Policy) -> Self {
        Queue::new(capacity, policy).expect("valid capacity")
    }
    fn push(&self, item: u64) -> impl Future<Output = PushOutcome<u64>> + Send + '_ {
        Queue::push(self, item)
    }
    fn try_push(&self, item: u64) -> PushOutcome<u64> {
        Queue::try_push(self, item)
    }
    fn pop(&self) -> impl Future<Output = Option<u64>> + Send + '_ {
        Queue::pop(self)
    }
    fn close(&self) {
        Queue::close(self);
    }
}

impl BenchQueue for AsyncLockQueue<u64> {
    fn make(capacity: usize, policy: Policy) -> Self {
        AsyncLockQueue::new(capacity, policy)
    }
    fn push(&self, item: u64) -> impl Future<Output = PushOutcome<u64>> + Send + '_ {
        AsyncLockQueue::push(self, item)
    }
    fn try_push(&self, item: u64) -> PushOutcome<u64> {
        AsyncLockQueue::try_push(self, item)
    }
    fn pop(&self) -> impl Future<Output = Option<u64>> + Send + '_ {
        AsyncLockQueue::pop(self)
    }
    fn close(&self) {
        AsyncLockQueue::close(self);
    }
}

impl BenchQueue for SemaphoreQueue<u64> {
    fn make(capacity: usize, policy: Policy) -> Self {
        SemaphoreQueue::new(capacity, policy)
    }
    fn push(&self, item: u64) -> impl Future<Output = PushOutcome<u64>> + Send + '_ {
        SemaphoreQueue::push(self, item)
    }
    fn try_push(&self, item: u64) -> PushOutcome<u64> {
        SemaphoreQueue::try_push(self, item)
    }
    fn pop(&self) -> impl Future<Output = Option<u64>> + Send + '_ {
        SemaphoreQueue::pop(self)
    }
    fn close(&self) {
        SemaphoreQueue::close(self);
    }
}

// ---------------------------------------------------------------------------------------------
// Executor, busy work, /proc
// ---------------------------------------------------------------------------------------------

const EXECUTOR_THREADS: usize = 2;

/// One multi-threaded executor for the whole process, run on 2 threads.
fn ex() -> &'static Arc<Executor<'static>> {
    static EX: OnceLock<Arc<Executor<'static>>> = OnceLock::new();
    EX.get_or_init(|| {
        let ex = Arc::new(Executor::new());
        for i in 0..EXECUTOR_THREADS {
            let ex = ex.clone();
            thread::Builder::new()
                .name(format!("ex-{i}"))
                .spawn(move || smol::block_on(ex.run(std::future::pending::<()>())))
                .expect("spawn an executor thread");
        }
        ex
    })
}

/// Runs `fut` as a task on the executor and waits for it from this (non-executor) thread.
fn run<T: Send + 'static>(fut: impl Future<Output = T> + Send + 'static) -> T {
    smol::block_on(ex().spawn(fut))
}

static WORK_ITERS: OnceLock<u32> = OnceLock::new();

/// About 1 µs of busy work (calibrated at start, or `--work-iters`).
fn work() {
    spin(*WORK_ITERS.get().expect("calibrated"));
}

fn spin(iters: u32) {
    let mut x = black_box(0x9E37_79B9_7F4A_7C15_u64);
    for _ in 0..black_box(iters) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    black_box(x);
}

/// Iterations of `spin` per µs: the fastest of several timings (noise only slows it down).
fn calibrate() -> u32 {
    const ITERS: u32 = 2_000_000;
    let best = (0..7)
        .map(|_| {
            let start = Instant::now();
            spin(ITERS);
            start.elapsed()
        })
        .min()
        .expect("seven timings");
    ((ITERS as f64 / (best.as_secs_f64() * 1e6)).round() as u32).max(1)
}

/// A `kB` field of /proc/self/status, in KiB.
fn proc_status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|line| line.starts_with(field))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0)
}

fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    info.lines()
        .find(|line| line.starts_with("model name"))
        .and_then(|line| line.split(':').nth(1))
        .map(|model| model.trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

// ---------------------------------------------------------------------------------------------
// S1: back-pressure hand-off
// ---------------------------------------------------------------------------------------------

const S1_ITEMS: u64 = 300_000;

fn s1_queue<Q: BenchQueue>(capacity: usize, consumers: usize) -> f64 {
    let queue = Arc::new(Q::make(capacity, Policy::Block));
    let start = Instant::now();
    let total = run(async move {
        let tasks: Vec<_> = (0..consumers)
            .map(|_| {
                let queue = queue.clone();
                ex().spawn(async move {
                    let mut n = 0u64;
                    while let Some(item) = queue.pop().await {
                        black_box(item);
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        for i in 0..S1_ITEMS {
            assert!(queue.push(i).await.is_accepted());
        }
        queue.close();
        let mut total = 0;
        for task in tasks {
            total += task.await;
        }
        total
    });
    assert_eq!(total, S1_ITEMS);
    S1_ITEMS as f64 / start.elapsed().as_secs_f64()
}

fn s1_channel(capacity: usize, consumers: usize) -> f64 {
    let (tx, rx) = async_channel::bounded::<u64>(capacity);
    let start = Instant::now();
    let total = run(async move {
        let tasks: Vec<_> = (0..consumers)
            .map(|_| {
                let rx = rx.clone();
                ex().spawn(async move {
                    let mut n = 0u64;
                    while let Ok(item) = rx.recv().await {
                        black_box(item);
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        drop(rx);
        for i in 0..S1_ITEMS {
            tx.send(i).await.expect("receivers alive");
        }
        drop(tx);
        let mut total = 0;
        for task in tasks {
            total += task.await;
        }
        total
    });
    assert_eq!(total, S1_ITEMS);
    S1_ITEMS as f64 / start.elapsed().as_secs_f64()
}

// ---------------------------------------------------------------------------------------------
// S2 / S3: overload into capacity 16, 4 consumers at ~1 µs per item
// ---------------------------------------------------------------------------------------------

/// Items pushed per repetition: S3 sheds most of them at a lock-free check, so it needs more.
const S2_ITEMS: u64 = 2_000_000;
const S3_ITEMS: u64 = 10_000_000;
const OVERLOAD_CAPACITY: usize = 16;
const OVERLOAD_CONSUMERS: usize = 4;

/// The producer's push rate, in items/s; `sync_push` uses `try_push` instead of `push().await`.
fn overload_queue<Q: BenchQueue>(policy: Policy, sync_push: bool) -> f64 {
    let items = overload_items(policy == Policy::DropOldest);
    let queue = Arc::new(Q::make(OVERLOAD_CAPACITY, policy));
    let elapsed = run(async move {
        let tasks: Vec<_> = (0..OVERLOAD_CONSUMERS)
            .map(|_| {
                let queue = queue.clone();
                ex().spawn(async move {
                    while let Some(item) = queue.pop().await {
                        work();
                        black_box(item);
                    }
                })
            })
            .collect();
        let start = Instant::now();
        for i in 0..items {
            let outcome = if sync_push {
                queue.try_push(i)
            } else {
                queue.push(i).await
            };
            black_box(outcome.into_inner());
        }
        let elapsed = start.elapsed();
        queue.close();
        for task in tasks {
            task.await;
        }
        elapsed
    });
    items as f64 / elapsed.as_secs_f64()
}

/// S3's peers that shed the incoming item: flume's `try_send` (4 consumers, as the others)
/// and tokio mpsc's `try_send` (one consumer task: tokio's channel has one receiver; it does
/// the four consumers' work in turn, so the channel is full as often as the others).
fn overload_peer(peer: &'static str) -> f64 {
    let items = S3_ITEMS;
    let elapsed = run(async move {
        match peer {
            "flume" => {
                let (tx, rx) = flume::bounded::<u64>(OVERLOAD_CAPACITY);
                let tasks: Vec<_> = (0..OVERLOAD_CONSUMERS)
                    .map(|_| {
                        let rx = rx.clone();
                        ex().spawn(async move {
                            while let Ok(item) = rx.recv_async().await {
                                work();
                                black_box(item);
                            }
                        })
                    })
                    .collect();
                drop(rx);
                let start = Instant::now();
                for i in 0..items {
                    black_box(tx.try_send(i).err());
                }
                let elapsed = start.elapsed();
                drop(tx);
                for task in tasks {
                    task.await;
                }
                elapsed
            }
            _ => {
                let (tx, mut rx) = tokio::sync::mpsc::channel::<u64>(OVERLOAD_CAPACITY);
                let task = ex().spawn(async move {
                    while let Some(item) = rx.recv().await {
                        work();
                        black_box(item);
                    }
                });
                let start = Instant::now();
                for i in 0..items {
                    black_box(tx.try_send(i).err());
                }
                let elapsed = start.elapsed();
                drop(tx);
                task.await;
                elapsed
            }
        }
    });
    items as f64 / elapsed.as_secs_f64()
}

fn overload_items(evicting: bool) -> u64 {
    if evicting {
        S2_ITEMS
    } else {
        S3_ITEMS
    }
}

/// async-channel's push rate: `force_send` (evict the oldest) or `try_send` (shed the new).
fn overload_channel(force: bool) -> f64 {
    let items = overload_items(force);
    let (tx, rx) = async_channel::bounded::<u64>(OVERLOAD_CAPACITY);
    let elapsed = run(async move {
        let tasks: Vec<_> = (0..OVERLOAD_CONSUMERS)
            .map(|_| {
                let rx = rx.clone();
                ex().spawn(async move {
                    while let Ok(item) = rx.recv().await {
                        work();
                        black_box(item);
                    }
                })
            })
            .collect();
        drop(rx);
        let start = Instant::now();
        for i in 0..items {
            if force {
                black_box(tx.force_send(i).expect("receivers alive"));
            } else {
                black_box(tx.try_send(i).err().map(|err| err.into_inner()));
            }
        }
        let elapsed = start.elapsed();
        drop(tx);
        for task in tasks {
            task.await;
        }
        elapsed
    });
    items as f64 / elapsed.as_secs_f64()
}

// ---------------------------------------------------------------------------------------------
// S4: single thread, uncontended push + pop pair, in ns
// ---------------------------------------------------------------------------------------------

const PAIRS: u64 = 2_000_000;

/// Polls `fut` once with a no-op waker; the pop must be ready (an item is there).
fn poll_ready<F: Future>(fut: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(fut).poll(&mut cx) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("an uncontended pop with an item present must be ready"),
    }
}

fn time_pairs(mut pair: impl FnMut(u64)) -> f64 {
    let start = Instant::now();
    for i in 0..PAIRS {
        pair(i);
    }
    start.elapsed().as_nanos() as f64 / PAIRS as f64
}

fn s4_queue<Q: BenchQueue>() -> f64 {
    let queue = Q::make(1024, Policy::Block);
    time_pairs(|i| {
        let _ = black_box(queue.try_push(i));
        black_box(poll_ready(queue.pop()));
    })
}

fn s4_async_channel() -> f64 {
    let (tx, rx) = async_channel::bounded::<u64>(1024);
    time_pairs(|i| {
        let _ = black_box(tx.try_send(i));
        let _ = black_box(poll_ready(rx.recv()));
    })
}

fn s4_flume() -> f64 {
    let (tx, rx) = flume::bounded::<u64>(1024);
    time_pairs(|i| {
        let _ = black_box(tx.try_send(i));
        let _ = black_box(poll_ready(rx.recv_async()));
    })
}

fn s4_tokio() -> f64 {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<u64>(1024);
    time_pairs(|i| {
        let _ = black_box(tx.try_send(i));
        black_box(poll_ready(rx.recv()));
    })
}

fn s4_vecdeque() -> f64 {
    let mut deque = VecDeque::with_capacity(1024);
    time_pairs(|i| {
        deque.push_back(black_box(i));
        black_box(deque.pop_front());
    })
}

// ---------------------------------------------------------------------------------------------
// S5: the whole pipeline vs a hand-written pool
// ---------------------------------------------------------------------------------------------

const S5_ITEMS: u64 = 200_000;
const S5_CAPACITY: usize = 1024;
const S5_WORKERS: usize = 4;

fn s5_pipeline() -> f64 {
    s5_run(|| {
        s5_builder()
            .spawn(ExecutorSpawner::new(ex().clone()), |item: u64| async move {
                work();
                black_box(item);
            })
            .expect("valid pipeline")
    })
}

/// S5T: the pipeline with a time-based feature, whose clock reads and stamps are the cost
/// (nothing is shed: every item is younger than the age and CoDel's target).
fn s5_timed(feature: fn(PipelineBuilder<u64>) -> PipelineBuilder<u64>) -> f64 {
    s5_run(move || {
        feature(s5_builder())
            .spawn(ExecutorSpawner::new(ex().clone()), |item: u64| async move {
                work();
                black_box(item);
            })
            .expect("valid pipeline")
    })
}

/// S5's pipeline settings, shared by its one-item and batched rows.
fn s5_builder<T: Send + 'static>() -> backpressure_pipeline::PipelineBuilder<T> {
    Pipeline::builder(S5_CAPACITY, Policy::Block)
        .workers(S5_WORKERS)
        .deadline(Duration::from_secs(60))
}

/// Pushes S5's items through the pipeline `start` makes (on the executor), shuts it down,
/// and returns the items per second.
fn s5_run(start: impl FnOnce() -> Pipeline<u64> + Send + 'static) -> f64 {
    let begun = Instant::now();
    let report = run(async move {
        let pipeline = start();
        for i in 0..S5_ITEMS {
            assert!(pipeline.push(i).await.is_accepted());
        }
        pipeline.shutdown().await
    });
    let elapsed = begun.elapsed();
    assert!(report.is_conserved() && report.all_joined());
    assert_eq!(report.processed, S5_ITEMS);
    S5_ITEMS as f64 / elapsed.as_secs_f64()
}

fn s5_pool() -> f64 {
    let start = Instant::now();
    let processed = run(async {
        let (tx, rx) = async_channel::bounded::<u64>(S5_CAPACITY);
        let tasks: Vec<_> = (0..S5_WORKERS)
            .map(|_| {
                let rx = rx.clone();
                ex().spawn(async move {
                    let mut n = 0u64;
                    while let Ok(item) = rx.recv().await {
                        work();
                        black_box(item);
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        drop(rx);
        for i in 0..S5_ITEMS {
            tx.send(i).await.expect("workers alive");
        }
        drop(tx);
        let mut n = 0;
        for task in tasks {
            n += task.await;
        }
        n
    });
    let elapsed = start.elapsed();
    assert_eq!(processed, S5_ITEMS);
    S5_ITEMS as f64 / elapsed.as_secs_f64()
}

// ---------------------------------------------------------------------------------------------
// S5B: the pipeline in batches, and an item's latency from push to the start of its work
// ---------------------------------------------------------------------------------------------

/// The batch sizes measured (with their row names), each with `S5B_WAIT` as the longest
/// wait after a first item.
const S5B_SIZES: [(&str, usize); 3] = [
    ("batches of 1", 1),
    ("batches of 16", 16),
    ("batches of 64", 64),
];
const S5B_WAIT: Duration = Duration::from_millis(1);
/// The latency run: items pushed at a steady pace the workers keep up with (the latency of a
/// saturated queue is its queueing delay, which no batch size changes).
const S5L_ITEMS: u64 = 20_000;
const S5L_PACE: Duration = Duration::from_micros(10);

/// S5's run with workers that take batches of up to `max_items` (the same ~1 µs per item).
fn s5_batched(max_items: usize) -> f64 {
    s5_run(move || {
        s5_builder()
            .spawn_batched(
                ExecutorSpawner::new(ex().clone()),
                Batch::new(max_items, S5B_WAIT),
                |batch: Vec<u64>| async move {
                    for item in batch {
                        work();
                        black_box(item);
                    }
                },
            )
            .expect("valid pipeline")
    })
}

/// The `quantile` of the time from an item's push to the start of its batch's work, in µs,
/// with items pushed every `S5L_PACE`.
fn s5_latency(max_items: usize, quantile: f64) -> f64 {
    let latencies = Arc::new(std::sync::Mutex::new(Vec::with_capacity(
        S5L_ITEMS as usize,
    )));
    let report = run({
        let latencies = latencies.clone();
        async move {
            let pipeline = s5_builder()
                .spawn_batched(
                    ExecutorSpawner::new(ex().clone()),
                    Batch::new(max_items, S5B_WAIT),
                    move |batch: Vec<Instant>| {
                        let latencies = latencies.clone();
                        async move {
                            let started = Instant::now();
                            latencies
                                .lock()
                                .expect("not poisoned")
                                .extend(batch.iter().map(|pushed| started - *pushed));
                            for item in batch {
                                work();
                                black_box(item);
                            }
                        }
                    },
                )
                .expect("valid pipeline");
            let begun = Instant::now();
            for i in 0..S5L_ITEMS {
                // A steady pace: wait (spinning, to keep the timer out of it) for this
                // item's slot, yielding so that the workers run.
                let slot = begun + S5L_PACE * i as u32;
                while Instant::now() < slot {
                    smol::future::yield_now().await;
                }
                assert!(pipeline.push(Instant::now()).await.is_accepted());
            }
            pipeline.shutdown().await
        }
    });
    assert!(report.is_conserved() && report.processed == S5L_ITEMS);
    let mut latencies = latencies.lock().expect("not poisoned").clone();
    latencies.sort();
    let at = ((latencies.len() - 1) as f64 * quantile).round() as usize;
    latencies[at].as_secs_f64() * 1e6
}

// ---------------------------------------------------------------------------------------------
// MEM: peak RSS of a burst, each in its own process
// ---------------------------------------------------------------------------------------------

const MEM_BURSTS: [u64; 3] = [1_000_000, 3_000_000, 10_000_000];
const MEM_CAPACITY: usize = 1024;
const SLOW_WORK: Duration = Duration::from_millis(1);

/// In a child process: push a burst of `n` items with slow workers, print peak RSS in KiB.
fn child_mem(kind: &str, n: u64) {
    let before = proc_status_kib("VmRSS:");
    match kind {
        "pipeline" => {
            let report = run(async move {
                let pipeline = Pipeline::builder(MEM_CAPACITY, Policy::DropOldest)
                    .workers(4)
                    .deadline(Duration::ZERO)
                    .grace(Duration::ZERO)
                    .spawn(ExecutorSpawner::new(ex().clone()), |item: u64| async move {
                        async_io::Timer::after(SLOW_WORK).await;
                        black_box(item);
                    })
                    .expect("valid pipeline");
                for i in 0..n {
                    black_box(pipeline.push(i).await.into_inner());
                }
                pipeline.shutdown().await
            });
            assert!(report.is_conserved());
            assert_eq!(report.produced, n);
        }
        "channel" => {
            run(async move {
                let (tx, rx) = async_channel::unbounded::<u64>();
                for _ in 0..4 {
                    let rx = rx.clone();
                    ex().spawn(async move {
                        while let Ok(item) = rx.recv().await {
                            async_io::Timer::after(SLOW_WORK).await;
                            black_box(item);
                        }
                    })
                    .detach();
                }
                for i in 0..n {
                    tx.try_send(i).expect("unbounded and open");
                }
                // The backlog is all there now; the process exits without draining it.
                black_box(tx.len());
            });
        }
        other => panic!("unknown memory child {other:?}"),
    }
    println!("{} {}", proc_status_kib("VmHWM:"), before);
    std::process::exit(0);
}

/// Re-executes this binary as a memory child; returns peak RSS in MiB.
fn mem_in_child(kind: &str, n: u64) -> f64 {
    let exe = std::env::current_exe().expect("own path");
    let mut command = Command::new(exe);
    command.args(["--child-mem", kind, &n.to_string()]);
    if let Some(iters) = WORK_ITERS.get() {
        command.args(["--work-iters", &iters.to_string()]);
    }
    let output = command.output().expect("run the memory child");
    assert!(output.status.success(), "memory child failed: {output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let hwm_kib: f64 = stdout
        .split_whitespace()
        .next()
        .and_then(|kib| kib.parse().ok())
        .expect("the child prints VmHWM");
    hwm_kib / 1024.0
}

// ---------------------------------------------------------------------------------------------
// SD: shutdown
// ---------------------------------------------------------------------------------------------

const SD_CAPACITY: usize = 1024;
const SD_DEADLINE: Duration = Duration::from_millis(50);
const SD_GRACE: Duration = Duration::from_millis(10);

/// Shutdown of a pipeline whose queue is full (1024) of ~1 µs work, 4 workers: ms from
/// `shutdown()` to the report. The workers are held at a gate until shutdown begins.
fn sd_backlog_pipeline() -> f64 {
    let elapsed = run(async {
        let gate = Arc::new(async_lock::OnceCell::<()>::new());
        let worker_gate = gate.clone();
        let pipeline = Pipeline::builder(SD_CAPACITY, Policy::Block)
            .workers(4)
            .deadline(Duration::from_secs(30))
            .spawn(ExecutorSpawner::new(ex().clone()), move |item: u64| {
                let gate = worker_gate.clone();
                async move {
                    gate.wait().await;
                    work();
                    black_box(item);
                }
            })
            .expect("valid pipeline");
        let mut i = 0;
        // Fill until Full: each worker holds one item at the gate, the queue holds 1024.
        while pipeline.try_push(i).is_accepted() {
            i += 1;
        }
        // The clock starts before the gate opens: opening it may deschedule this task
        // while the workers drain, and that time belongs to the measurement.
        let start = Instant::now();
        gate.set(()).await.expect("the gate opens once");
        let report = pipeline.shutdown().await;
        let elapsed = start.elapsed();
        assert_eq!(report.processed, i);
        assert!(!report.deadline_exceeded);
        elapsed
    });
    elapsed.as_secs_f64() * 1e3
}

/// The same backlog in 4 hand-written tasks over a bounded async-channel: close, join.
fn sd_backlog_pool() -> f64 {
    let elapsed = run(async {
        let gate = Arc::new(async_lock::OnceCell::<()>::new());
        let (tx, rx) = async_channel::bounded::<u64>(SD_CAPACITY);
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let (rx, gate) = (rx.clone(), gate.clone());
                ex().spawn(async move {
                    let mut n = 0u64;
                    while let Ok(item) = rx.recv().await {
                        gate.wait().await;
                        work();
                        black_box(item);
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let mut i = 0;
        while tx.try_send(i).is_ok() {
            i += 1;
        }
        // The clock starts before the gate opens: opening it may deschedule this task
        // while the workers drain, and that time belongs to the measurement.
        let start = Instant::now();
        gate.set(()).await.expect("the gate opens once");
        drop(tx);
        let mut n = 0;
        for task in tasks {
            n += task.await;
        }
        let elapsed = start.elapsed();
        assert_eq!(n, i);
        elapsed
    });
    elapsed.as_secs_f64() * 1e3
}

/// Shutdown with 4 workers stuck in `pending()` (deadline 50 ms, grace 10 ms): ms.
fn sd_stuck() -> f64 {
    let elapsed = run(async {
        let pipeline = Pipeline::builder(SD_CAPACITY, Policy::Block)
            .workers(4)
            .deadline(SD_DEADLINE)
            .grace(SD_GRACE)
            .spawn(ExecutorSpawner::new(ex().clone()), |_: u64| {
                std::future::pending::<()>()
            })
            .expect("valid pipeline");
        for i in 0..8 {
            assert!(pipeline.push(i).await.is_accepted());
        }
        // Let the workers take their items and get stuck.
        while pipeline.len() > 4 {
            async_io::Timer::after(Duration::from_millis(1)).await;
        }
        let start = Instant::now();
        let report = pipeline.shutdown().await;
        let elapsed = start.elapsed();
        assert!(report.is_conserved() && report.all_joined());
        assert_eq!(report.workers_aborted, 4);
        elapsed
    });
    elapsed.as_secs_f64() * 1e3
}

// ---------------------------------------------------------------------------------------------
// Rows and tables
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq)]
enum Unit {
    ItemsPerSec,
    NsPerOp,
    MiB,
    Ms,
    Us,
}

impl Unit {
    fn name(self) -> &'static str {
        match self {
            Unit::ItemsPerSec => "items/s ↑",
            Unit::NsPerOp => "ns/pair ↓",
            Unit::MiB => "peak MiB ↓",
            Unit::Ms => "ms ↓",
            Unit::Us => "µs ↓",
        }
    }

    fn fmt(self, v: f64) -> String {
        match self {
            Unit::ItemsPerSec if v >= 1e6 => format!("{:.2}M", v / 1e6),
            Unit::ItemsPerSec => format!("{:.0}k", v / 1e3),
            Unit::NsPerOp => format!("{v:.1}"),
            Unit::MiB => format!("{v:.1}"),
            Unit::Ms => format!("{v:.2}"),
            Unit::Us => format!("{v:.0}"),
        }
    }
}

/// One measured row: a shape, a variant, its samples, and what its ratio is against.
#[derive(Clone)]
struct Row {
    shape: String,
    variant: String,
    unit: Unit,
    samples: Vec<f64>,
    /// The variant of the same shape the ratio is against, or a fixed value with its name.
    base: Base,
}

#[derive(Clone)]
enum Base {
    None,
    Variant(&'static str),
    Fixed(&'static str, f64),
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn min_max(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

/// A row as printed: median, spread, ratio (ours / base, in the row's unit).
#[derive(Clone)]
struct Summary {
    shape: String,
    variant: String,
    unit: Unit,
    median: f64,
    spread: (f64, f64),
    ratio: Option<(f64, String)>,
}

fn summarize(rows: &[Row]) -> Vec<Summary> {
    rows.iter()
        .map(|row| {
            let med = median(&row.samples);
            let ratio = match &row.base {
                Base::None => None,
                Base::Variant(name) => rows
                    .iter()
                    .find(|r| r.shape == row.shape && r.variant == *name)
                    .filter(|r| r.variant != row.variant)
                    .map(|r| (med / median(&r.samples), name.to_string())),
                Base::Fixed(name, value) => Some((med / value, name.to_string())),
            };
            Summary {
                shape: row.shape.clone(),
                variant: row.variant.clone(),
                unit: row.unit,
                median: med,
                spread: min_max(&row.samples),
                ratio,
            }
        })
        .collect()
}

fn print_table(title: &str, summaries: &[Summary], spread_label: &str) {
    println!("\n{title}");
    // As wide as the longest variant label, so the columns stay aligned.
    let vw = summaries
        .iter()
        .map(|s| s.variant.chars().count())
        .max()
        .unwrap_or(0)
        .max(26);
    println!(
        "{:<34} {:<vw$} {:<11} {:>9} {:>19}  ratio (this / base)",
        "shape", "variant", "unit", "median", spread_label
    );
    let mut last_shape = "";
    for s in summaries {
        if s.shape != last_shape && !last_shape.is_empty() {
            println!();
        }
        last_shape = &s.shape;
        let spread = format!("{}–{}", s.unit.fmt(s.spread.0), s.unit.fmt(s.spread.1));
        let ratio = match &s.ratio {
            Some((r, base)) => format!("{r:.2}× {base}"),
            None => String::new(),
        };
        println!(
            "{:<34} {:<vw$} {:<11} {:>9} {:>19}  {}",
            s.shape,
            s.variant,
            s.unit.name(),
            s.unit.fmt(s.median),
            spread,
            ratio
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The suite
// ---------------------------------------------------------------------------------------------

const OURS: &str = "Queue (std Mutex)";
const OURS_SYNC: &str = "Queue try_push (std Mutex)";
const COPY: &str = "async-lock Mutex copy (design's first choice)";
const COPY_SYNC: &str = "async-lock Mutex copy try_push";
const SEM: &str = "Queue (semaphore copy)";
const SEM_SYNC: &str = "Queue try_push (semaphore copy)";
const CHANNEL: &str = "async-channel";

/// A variant of a shape: its name, what its ratio is against, and one measurement.
type Variant<'a> = (&'a str, Base, Box<dyn Fn() -> f64>);

struct Suite {
    reps: usize,
    only: Option<Vec<String>>,
    /// `--shape TEXT` / `--variant TEXT`: measure only the shapes / variants whose label
    /// contains TEXT (for profiling one case; ratios then may be missing).
    shape_filter: Option<String>,
    variant_filter: Option<String>,
    rows: Vec<Row>,
}

impl Suite {
    fn wants(&self, shape: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|o| o.eq_ignore_ascii_case(shape)))
    }

    /// Measures `variants` of one shape, interleaved within each repetition.
    fn measure(&mut self, shape: &str, unit: Unit, mut variants: Vec<Variant<'_>>) {
        if let Some(f) = &self.shape_filter {
            if !shape.contains(f.as_str()) {
                return;
            }
        }
        if let Some(f) = &self.variant_filter {
            variants.retain(|(name, _, _)| name.contains(f.as_str()));
        }
        let mut samples = vec![Vec::with_capacity(self.reps); variants.len()];
        for _ in 0..self.reps {
            for (i, (_, _, f)) in variants.iter().enumerate() {
                samples[i].push(f());
            }
        }
        for ((variant, base, _), samples) in variants.into_iter().zip(samples) {
            self.rows.push(Row {
                shape: shape.to_string(),
                variant: variant.to_string(),
                unit,
                samples,
                base,
            });
        }
    }

    fn run_all(&mut self) {
        let ch = || Base::Variant(CHANNEL);
        if self.wants("S1") {
            for capacity in [16, 1024] {
                for consumers in [1, 4, 16] {
                    self.measure(
                        &format!("S1 Block cap {capacity}, 1→{consumers}"),
                        Unit::ItemsPerSec,
                        vec![
                            (
                                OURS,
                                ch(),
                                Box::new(move || s1_queue::<Queue<u64>>(capacity, consumers)),
                            ),
                            (
                                COPY,
                                ch(),
                                Box::new(move || {
                                    s1_queue::<AsyncLockQueue<u64>>(capacity, consumers)
                                }),
                            ),
                            (
                                SEM,
                                ch(),
                                Box::new(move || {
                                    s1_queue::<SemaphoreQueue<u64>>(capacity, consumers)
                                }),
                            ),
                            (
                                CHANNEL,
                                Base::None,
                                Box::new(move || s1_channel(capacity, consumers)),
                            ),
                        ],
                    );
                }
            }
        }
        for (shape, policy, force) in [
            ("S2", Policy::DropOldest, true),
            ("S3", Policy::DropNewest, false),
        ] {
            if !self.wants(shape) {
                continue;
            }
            let label = format!("{shape} {policy:?} cap 16, 4×1µs");
            let base_name = if force {
                "async-channel force_send"
            } else {
                "async-channel try_send"
            };
            let base = move || Base::Variant(base_name);
            self.measure(
                &label,
                Unit::ItemsPerSec,
                vec![
                    (
                        OURS,
                        base(),
                        Box::new(move || overload_queue::<Queue<u64>>(policy, false)),
                    ),
                    (
                        OURS_SYNC,
                        base(),
                        Box::new(move || overload_queue::<Queue<u64>>(policy, true)),
                    ),
                    (
                        COPY,
                        base(),
                        Box::new(move || overload_queue::<AsyncLockQueue<u64>>(policy, false)),
                    ),
                    (
                        COPY_SYNC,
                        base(),
                        Box::new(move || overload_queue::<AsyncLockQueue<u64>>(policy, true)),
                    ),
                    (
                        SEM,
                        base(),
                        Box::new(move || overload_queue::<SemaphoreQueue<u64>>(policy, false)),
                    ),
                    (
                        SEM_SYNC,
                        base(),
                        Box::new(move || overload_queue::<SemaphoreQueue<u64>>(policy, true)),
                    ),
                    (
                        base_name,
                        Base::None,
                        Box::new(move || overload_channel(force)),
                    ),
                ],
            );
        }
        if self.wants("S3") {
            self.measure(
                "S3 peers: try_send into a full channel",
                Unit::ItemsPerSec,
                vec![
                    (
                        OURS_SYNC,
                        Base::Variant("tokio mpsc try_send (1 consumer)"),
                        Box::new(|| overload_queue::<Queue<u64>>(Policy::DropNewest, true)),
                    ),
                    (
                        OURS,
                        Base::Variant("tokio mpsc try_send (1 consumer)"),
                        Box::new(|| overload_queue::<Queue<u64>>(Policy::DropNewest, false)),
                    ),
                    (
                        "flume try_send",
                        Base::Variant("tokio mpsc try_send (1 consumer)"),
                        Box::new(|| overload_peer("flume")),
                    ),
                    (
                        "tokio mpsc try_send (1 consumer)",
                        Base::None,
                        Box::new(|| overload_peer("tokio")),
                    ),
                ],
            );
        }
        if self.wants("S4") {
            self.measure(
                "S4 1 thread, push+pop pair",
                Unit::NsPerOp,
                vec![
                    (OURS, ch(), Box::new(s4_queue::<Queue<u64>>)),
                    (COPY, ch(), Box::new(s4_queue::<AsyncLockQueue<u64>>)),
                    (SEM, ch(), Box::new(s4_queue::<SemaphoreQueue<u64>>)),
                    (CHANNEL, Base::None, Box::new(s4_async_channel)),
                    ("flume", ch(), Box::new(s4_flume)),
                    ("tokio mpsc", ch(), Box::new(s4_tokio)),
                    ("VecDeque (floor)", ch(), Box::new(s4_vecdeque)),
                ],
            );
        }
        if self.wants("S5") {
            self.measure(
                "S5 Pipeline Block cap 1024, 4×1µs",
                Unit::ItemsPerSec,
                vec![
                    (
                        "Pipeline",
                        Base::Variant("hand-written pool"),
                        Box::new(s5_pipeline),
                    ),
                    ("hand-written pool", Base::None, Box::new(s5_pool)),
                ],
            );
        }
        if self.wants("S5T") {
            self.measure(
                "S5T Pipeline with time features, cap 1024, 4×1µs",
                Unit::ItemsPerSec,
                vec![
                    (
                        "measure_queue_delay",
                        Base::Variant("Pipeline (no time feature)"),
                        Box::new(|| s5_timed(|b| b.measure_queue_delay())),
                    ),
                    (
                        "max_age 1 h",
                        Base::Variant("Pipeline (no time feature)"),
                        Box::new(|| s5_timed(|b| b.max_age(Duration::from_secs(3600)))),
                    ),
                    (
                        "codel 1 s / 10 s, lifo",
                        Base::Variant("Pipeline (no time feature)"),
                        Box::new(|| {
                            s5_timed(|b| {
                                b.codel(
                                    Codel::new(Duration::from_secs(1), Duration::from_secs(10))
                                        .lifo(true),
                                )
                            })
                        }),
                    ),
                    (
                        "Pipeline (no time feature)",
                        Base::None,
                        Box::new(s5_pipeline),
                    ),
                ],
            );
        }
        if self.wants("S5B") {
            let mut variants: Vec<Variant<'_>> = Vec::new();
            for (name, size) in S5B_SIZES {
                variants.push((
                    name,
                    Base::Variant("hand-written pool"),
                    Box::new(move || s5_batched(size)),
                ));
            }
            variants.push(("hand-written pool", Base::None, Box::new(s5_pool)));
            self.measure(
                "S5B Pipeline batched, max_wait 1 ms, cap 1024, 4×1µs/item",
                Unit::ItemsPerSec,
                variants,
            );
            for (_, size) in S5B_SIZES {
                self.measure(
                    &format!("S5L latency push→start, batches of {size}, 1 item/10µs"),
                    Unit::Us,
                    vec![
                        ("p50", Base::None, Box::new(move || s5_latency(size, 0.5))),
                        ("p99", Base::None, Box::new(move || s5_latency(size, 0.99))),
                    ],
                );
            }
        }
        if self.wants("MEM") {
            for n in MEM_BURSTS {
                self.measure(
                    &format!("MEM burst {}M, slow workers", n / 1_000_000),
                    Unit::MiB,
                    vec![
                        (
                            "Pipeline DropOldest 1024",
                            Base::Variant("unbounded async-channel"),
                            Box::new(move || mem_in_child("pipeline", n)),
                        ),
                        (
                            "unbounded async-channel",
                            Base::None,
                            Box::new(move || mem_in_child("channel", n)),
                        ),
                    ],
                );
            }
        }
        if self.wants("SD") {
            self.measure(
                "SD backlog 1024 full, 4×1µs",
                Unit::Ms,
                vec![
                    (
                        "Pipeline shutdown()",
                        Base::Variant("pool close+join"),
                        Box::new(sd_backlog_pipeline),
                    ),
                    ("pool close+join", Base::None, Box::new(sd_backlog_pool)),
                ],
            );
            let budget = (SD_DEADLINE + SD_GRACE).as_secs_f64() * 1e3;
            self.measure(
                "SD 4 stuck, deadline 50 grace 10",
                Unit::Ms,
                vec![
                    (
                        "Pipeline shutdown()",
                        Base::Fixed("deadline", SD_DEADLINE.as_secs_f64() * 1e3),
                        Box::new(sd_stuck),
                    ),
                    ("(deadline + grace)", Base::None, Box::new(move || budget)),
                ],
            );
        }
    }
}

/// The median over runs of each row's median, min–max of the run medians, median of ratios.
fn combine(runs: &[Vec<Summary>]) -> Vec<Summary> {
    runs[0]
        .iter()
        .enumerate()
        .map(|(i, first)| {
            let medians: Vec<f64> = runs.iter().map(|run| run[i].median).collect();
            let ratios: Vec<f64> = runs
                .iter()
                .filter_map(|run| run[i].ratio.as_ref().map(|r| r.0))
                .collect();
            Summary {
                shape: first.shape.clone(),
                variant: first.variant.clone(),
                unit: first.unit,
                median: median(&medians),
                spread: min_max(&medians),
                ratio: first
                    .ratio
                    .as_ref()
                    .map(|(_, base)| (median(&ratios), base.clone())),
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The chart
// ---------------------------------------------------------------------------------------------

/// Two panels drawn by hand: S1 throughput against consumer count, peak RSS against burst.
fn svg(summaries: &[Summary], header: &str) -> String {
    let find = |shape: &str, variant: &str| {
        summaries
            .iter()
            .find(|s| s.shape == shape && s.variant == variant)
            .map(|s| s.median)
    };
    let mut out = String::new();
    let (w, h) = (960.0, 480.0);
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    // The header is "command — machine": one line each.
    for (i, line) in header.split(" — ").enumerate() {
        let _ = writeln!(
            out,
            r##"<text x="10" y="{}" font-size="11" fill="#555">{}</text>"##,
            16 + 14 * i,
            xml(line)
        );
    }
    let colours = ["#d62728", "#ff7f0e", "#1f77b4", "#2ca02c"];

    // Panel 1: S1 throughput against consumers, capacity 1024 (solid) and 16 (dashed).
    let consumers = [1, 4, 16];
    let mut series = Vec::new();
    for (ci, variant) in [OURS, COPY, CHANNEL].iter().enumerate() {
        for (capacity, dash) in [(1024, ""), (16, "5,4")] {
            let points: Vec<Option<f64>> = consumers
                .iter()
                .map(|c| find(&format!("S1 Block cap {capacity}, 1→{c}"), variant).map(|v| v / 1e6))
                .collect();
            series.push((
                format!("{variant}, cap {capacity}"),
                colours[ci],
                dash,
                points,
            ));
        }
    }
    let labels: Vec<String> = consumers.iter().map(|c| c.to_string()).collect();
    panel(
        &mut out,
        60.0,
        66.0,
        "S1 back-pressure hand-off: M items/s vs consumer tasks",
        "consumer tasks (1 producer)",
        &labels,
        &series,
    );

    // Panel 2: peak RSS against burst size.
    let mut series = Vec::new();
    for (ci, variant) in ["Pipeline DropOldest 1024", "unbounded async-channel"]
        .iter()
        .enumerate()
    {
        let points: Vec<Option<f64>> = MEM_BURSTS
            .iter()
            .map(|n| {
                find(
                    &format!("MEM burst {}M, slow workers", n / 1_000_000),
                    variant,
                )
            })
            .collect();
        series.push((variant.to_string(), colours[[0, 2][ci]], "", points));
    }
    let labels: Vec<String> = MEM_BURSTS
        .iter()
        .map(|n| format!("{}M", n / 1_000_000))
        .collect();
    panel(
        &mut out,
        540.0,
        66.0,
        "Peak RSS (MiB) vs burst size, slow workers",
        "items in the burst (u64)",
        &labels,
        &series,
    );
    out.push_str("</svg>\n");
    out
}

type Series<'a> = (String, &'a str, &'a str, Vec<Option<f64>>);

fn panel(
    out: &mut String,
    x0: f64,
    y0: f64,
    title: &str,
    xlabel: &str,
    labels: &[String],
    series: &[Series<'_>],
) {
    let (pw, ph) = (380.0, 250.0);
    let max = series
        .iter()
        .flat_map(|s| s.3.iter().flatten())
        .fold(0.0_f64, |m, &v| m.max(v));
    let top = nice_ceiling(max.max(1e-9));
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" font-weight="bold">{}</text>"#,
        x0,
        y0 - 10.0,
        xml(title)
    );
    let _ = writeln!(
        out,
        r##"<rect x="{x0}" y="{y0}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>"##
    );
    for k in 0..=4 {
        let v = top * k as f64 / 4.0;
        let y = y0 + ph - ph * k as f64 / 4.0;
        let _ = writeln!(
            out,
            r##"<line x1="{x0}" y1="{y}" x2="{}" y2="{y}" stroke="#eee"/><text x="{}" y="{}" text-anchor="end">{}</text>"##,
            x0 + pw,
            x0 - 5.0,
            y + 4.0,
            trim(v)
        );
    }
    let xs: Vec<f64> = (0..labels.len())
        .map(|i| x0 + pw * (i as f64 + 0.5) / labels.len() as f64)
        .collect();
    for (x, label) in xs.iter().zip(labels) {
        let _ = writeln!(
            out,
            r#"<text x="{x}" y="{}" text-anchor="middle">{}</text>"#,
            y0 + ph + 16.0,
            xml(label)
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        x0 + pw / 2.0,
        y0 + ph + 34.0,
        xml(xlabel)
    );
    for (si, (name, colour, dash, points)) in series.iter().enumerate() {
        let coords: Vec<(f64, f64)> = xs
            .iter()
            .zip(points)
            .filter_map(|(&x, p)| p.map(|v| (x, y0 + ph - ph * v / top)))
            .collect();
        let path: Vec<String> = coords
            .iter()
            .map(|(x, y)| format!("{x:.1},{y:.1}"))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2" stroke-dasharray="{dash}"/>"#,
            path.join(" ")
        );
        for ((x, y), v) in coords.iter().zip(points.iter().flatten()) {
            let _ = writeln!(
                out,
                r#"<circle cx="{x:.1}" cy="{y:.1}" r="3" fill="{colour}"/><text x="{:.1}" y="{:.1}" font-size="10" fill="{colour}">{}</text>"#,
                x + 4.0,
                y - 4.0,
                trim(*v)
            );
        }
        let ly = y0 + ph + 52.0 + 14.0 * si as f64;
        let _ = writeln!(
            out,
            r#"<line x1="{x0}" y1="{ly}" x2="{}" y2="{ly}" stroke="{colour}" stroke-width="2" stroke-dasharray="{dash}"/><text x="{}" y="{}">{}</text>"#,
            x0 + 24.0,
            x0 + 30.0,
            ly + 4.0,
            xml(name)
        );
    }
}

fn nice_ceiling(v: f64) -> f64 {
    let magnitude = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|&c| c >= v)
        .unwrap_or(10.0 * magnitude)
}

fn trim(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

// ---------------------------------------------------------------------------------------------
// main
// ---------------------------------------------------------------------------------------------

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    if let Some(iters) = value("--work-iters") {
        WORK_ITERS
            .set(iters.parse().expect("--work-iters N"))
            .expect("set once");
    }
    if let Some(kind) = value("--child-mem") {
        let n = args
            .iter()
            .position(|a| a == "--child-mem")
            .and_then(|i| args.get(i + 2))
            .and_then(|n| n.parse().ok())
            .expect("--child-mem KIND N");
        if WORK_ITERS.get().is_none() {
            let _ = WORK_ITERS.set(1);
        }
        child_mem(&kind, n);
        return;
    }
    let runs: usize = value("--runs").map_or(1, |n| n.parse().expect("--runs N"));
    let reps: usize = value("--reps").map_or(5, |n| n.parse().expect("--reps N"));
    let only = value("--only").map(|s| s.split(',').map(str::to_string).collect());
    let svg_path = value("--svg");
    if WORK_ITERS.get().is_none() {
        let _ = WORK_ITERS.set(calibrate());
    }

    let nproc = thread::available_parallelism().map_or(0, |n| n.get());
    let command = format!(
        "cargo run --release --example compare{}",
        if args.len() > 1 {
            format!(" -- {}", args[1..].join(" "))
        } else {
            String::new()
        }
    );
    let header = format!(
        "machine: nproc {nproc}, {}; executor: async_executor::Executor on {EXECUTOR_THREADS} threads; ~1µs work = {} spin iterations",
        cpu_model(),
        WORK_ITERS.get().expect("set")
    );
    println!("command: {command}");
    println!("{header}");
    println!("{runs} run(s) × {reps} repetitions per row; variants interleaved within each repetition; ratio = this / base, medians of the same run");
    println!("\"async-lock Mutex copy\" = the crate's Queue with async_lock::Mutex in place of its std::sync::Mutex (the design's first choice), in this example only");
    println!("\"semaphore copy\" = the crate's Queue at 219b89b: an async_lock::Semaphore counting the items over a std::sync::Mutex (replaced by waiter lists under the buffer lock), in this example only");

    let started = Instant::now();
    let mut all = Vec::new();
    for r in 0..runs {
        let mut suite = Suite {
            reps,
            only: only.clone(),
            shape_filter: value("--shape"),
            variant_filter: value("--variant"),
            rows: Vec::new(),
        };
        suite.run_all();
        let summaries = summarize(&suite.rows);
        print_table(
            &format!("== run {} of {runs} (median of {reps}) ==", r + 1),
            &summaries,
            "min–max",
        );
        all.push(summaries);
    }
    let final_table = if runs > 1 {
        let combined = combine(&all);
        print_table(
            &format!("== final: median over {runs} runs of each run's median (spread: min–max of the run medians); ratio: median of the runs' ratios =="),
            &combined,
            "run medians",
        );
        combined
    } else {
        all.pop().expect("one run")
    };
    println!("\ntotal time {:.1} s", started.elapsed().as_secs_f64());
    if let Some(path) = svg_path {
        if let Some(dir) = std::path::Path::new(&path).parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        std::fs::write(&path, svg(&final_table, &format!("{command} — {header}")))
            .expect("write the SVG");
        println!("wrote {path}");
    }
}
