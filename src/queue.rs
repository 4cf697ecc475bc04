//! The bounded hand-off queue.
//!
//! # Invariants
//!
//! 1. Until the queue closes, `available permits <= len <= capacity`, and `len - permits` is
//!    the number of items reserved by poppers that hold a permit but have not yet taken the
//!    buffer lock. A permit is added only after its item is in the buffer.
//! 2. An item leaves the buffer only through a popper that holds a permit, through eviction
//!    (which puts the incoming item in its place, so the permit count is untouched), or
//!    through [`Queue::take_all`] after close.
//! 3. the closed flag only goes from unset to set, and close adds a flood of permits after it,
//!    so every popper, present and future, gets past the semaphore and looks at the buffer
//!    under the lock: it finds an item (and takes it) or finds the buffer empty. Empty is
//!    final: a pusher reads the flag under the lock, so a pusher that read it unset ran its
//!    critical section before the closed-empty popper's (the popper's lock happens after the
//!    flood, which happens after the store; a pusher locking later would read `true`).
//!
//! 4. `state` holds the closed flag (its top bit) and the count of shed items (the rest) in
//!    one word. The lock-free shed of a full queue increments it with a compare-exchange that
//!    fails once the flag is set, so a shed is either counted before close or refused as
//!    `Closed` after it: a report read after close misses none that returned `Shed`.
//!
//! 5. A producer that waits for room counts itself in `waiting_producers` under the buffer
//!    lock, before releasing it, and uncounts itself only after its wait ends (or is
//!    cancelled). A pop that sees the count at zero under the lock skips the wake-up: no
//!    producer can be asleep then, and one that comes later finds the room itself.
//!
//! 6. Two pushes in a row may leave a second waiting popper asleep: the semaphore's
//!    `notify(1)` finds the first popper already notified and does nothing more (loom found
//!    this, `loom/tests/queue.rs`). So a popper that was woken (only such a one can have
//!    absorbed a wake-up meant for another) and got its item, seeing permits left and a
//!    popper still waiting, passes one wake-up on. A popper that found its permit at once
//!    does nothing more.
//!
//! Lock: the buffer lock is held for a few instructions and never across an `.await`, so it
//! is a blocking `std::sync::Mutex` (loom's when model checked), taken the same way by tasks
//! and by synchronous callers. An `async_lock::Mutex` here deadlocked a runtime thread: a
//! synchronous `try_push` blocking on it from a task waited behind a notified lock waiter
//! that only that same thread could run (`tests/faults.rs`,
//! `try_push_from_a_task_beside_a_sync_producer`). The items semaphore stays
//! `async_lock::Semaphore`: waiting for an item is what must not block.

use std::collections::VecDeque;
use std::fmt;

use std::sync::PoisonError;

use async_lock::{Semaphore, SemaphoreGuard};
use event_listener::{Event, IntoNotification};

use crate::policy::{ConfigError, Policy, PushOutcome};
use crate::stats::{Meter, QueueStats};
use crate::sync::{AtomicU64, AtomicUsize, Mutex, MutexGuard, Ordering};

/// Permits added on close: enough to let every popper through, and far from overflow because
/// the capacity is at most [`Queue::MAX_CAPACITY`].
const CLOSE_FLOOD: usize = usize::MAX >> 1;

/// Adds `n` to a counter that is written only under the buffer lock: the lock orders the
/// writes, so a plain load and store does (Relaxed), and lock-free readers see a snapshot.
fn bump(counter: &AtomicU64, n: u64) {
    counter.store(counter.load(Ordering::Relaxed) + n, Ordering::Relaxed);
}

/// The closed flag in `state` (invariant 4).
const CLOSED: u64 = 1 << 63;

/// A bounded MPMC hand-off queue with an explicit policy for when it is full.
///
/// The queue is an [`async_lock::Semaphore`] whose permits count the items available, over a
/// `std::sync::Mutex<VecDeque<T>>` that is never held across an `.await`. Share it with an
/// `Arc`; every method takes `&self`, and `try_push` and `close` work from any thread.
///
/// # Examples
///
/// ```
/// use backpressure_pipeline::{Policy, Queue};
///
/// # smol::block_on(async {
/// let queue = Queue::new(4, Policy::DropNewest)?;
/// for id in 0..8 {
///     let _ = queue.push(id).await; // ids 4..8 are shed and handed back
/// }
/// queue.close();
/// let mut kept = Vec::new();
/// while let Some(id) = queue.pop().await {
///     kept.push(id);
/// }
/// assert_eq!(kept, [0, 1, 2, 3]);
/// # Ok::<(), backpressure_pipeline::ConfigError>(())
/// # }).unwrap();
/// ```
pub struct Queue<T> {
    /// Permits == items available to poppers (invariant 1); flooded on close (invariant 3).
    items: Semaphore,
    buf: Mutex<VecDeque<T>>,
    /// Wakes producers waiting for room under [`Policy::Block`].
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

/// Push outcomes counted by the queue; read by the pipeline's report.
///
/// Written only under the buffer lock, with a plain load and store ([`bump`]): no
/// read-modify-write, and on a cache line of their own, away from the semaphore and the
/// lock that every push and pop touches.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Counts {
    /// Items taken into the buffer (including those that evicted another).
    accepted: AtomicU64,
    /// Buffered items evicted under [`Policy::DropOldest`].
    evicted: AtomicU64,
    /// Items taken out by poppers (not by `take_all`).
    popped: AtomicU64,
}

impl<T> Queue<T> {
    /// The largest capacity [`Queue::new`] accepts.
    pub const MAX_CAPACITY: usize = usize::MAX >> 2;

    /// Creates a queue that holds at most `capacity` items and applies `policy` when full.
    ///
    /// Memory is allocated as items arrive, so a large capacity costs nothing up front.
    ///
    /// # Errors
    ///
    /// [`ConfigError::ZeroCapacity`] if `capacity` is 0, [`ConfigError::CapacityTooLarge`] if
    /// it is above [`Queue::MAX_CAPACITY`].
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{ConfigError, Policy, Queue};
    ///
    /// let queue = Queue::<String>::new(16, Policy::Block)?;
    /// assert_eq!(queue.capacity(), 16);
    /// assert!(Queue::<String>::new(0, Policy::Block).is_err());
    /// # Ok::<(), ConfigError>(())
    /// ```
    pub fn new(capacity: usize, policy: Policy) -> Result<Self, ConfigError> {
        if capacity == 0 {
            return Err(ConfigError::ZeroCapacity);
        }
        if capacity > Self::MAX_CAPACITY {
            return Err(ConfigError::CapacityTooLarge);
        }
        Ok(Queue {
            items: Semaphore::new(0),
            // Nothing up front: the buffer grows as items arrive, to `capacity` at most.
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
        })
    }

    /// Pushes an item, waiting for room only under [`Policy::Block`].
    ///
    /// Under `DropNewest` and `DropOldest` this is [`try_push`](Queue::try_push) and completes
    /// at once. Under `Block` it waits until there is room or the queue closes.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe. The item enters the queue in a single poll, so a push dropped before it
    /// completes never enqueued its item: the item is dropped with the future and nothing in
    /// the queue changes.
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{Policy, PushOutcome, Queue};
    ///
    /// # smol::block_on(async {
    /// let queue = Queue::new(2, Policy::Block)?;
    /// assert_eq!(queue.push("a").await, PushOutcome::Accepted);
    /// queue.close();
    /// assert_eq!(queue.push("b").await, PushOutcome::Closed("b"));
    /// # Ok::<(), backpressure_pipeline::ConfigError>(())
    /// # }).unwrap();
    /// ```
    pub async fn push(&self, item: T) -> PushOutcome<T> {
        if self.policy != Policy::Block {
            return self.try_push(item);
        }
        loop {
            let (listener, waiting) = {
                let buf = self.lock();
                // `push_locked` refuses on close and enqueues when there is room.
                if self.is_closed() || buf.len() < self.capacity {
                    return self.push_locked(buf, item);
                }
                // Listen and stand in line before releasing the lock: a pop that makes room
                // takes the lock after us, sees us waiting (invariant 5) and notifies after
                // that, so its notification cannot be missed.
                (self.room.listen(), Waiting::new(&self.waiting_producers))
            };
            // A notified listener that is dropped passes its notification on, so a cancelled
            // push never swallows the wake-up meant for another producer.
            listener.await;
            drop(waiting);
        }
    }

    /// Pushes an item without waiting.
    ///
    /// When the queue is full, `DropNewest` sheds the incoming item ([`PushOutcome::Shed`]),
    /// `DropOldest` evicts the oldest ([`PushOutcome::Evicted`]) and `Block` reports
    /// [`PushOutcome::Full`]. A closed queue returns [`PushOutcome::Closed`].
    ///
    /// It works from synchronous code (a callback, a sensor thread) and from tasks alike. It
    /// never waits for room; the buffer lock it takes is held by others for a few
    /// instructions at most, never across an `.await`.
    ///
    /// The lock is not fair: a thread calling `try_push` in a tight loop on a full queue can
    /// hold up other producers and the workers' pops for a while (it re-takes the lock before
    /// a woken waiter runs). Such a thread should push in bursts, or yield now and then.
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{Policy, PushOutcome, Queue};
    ///
    /// let queue = Queue::new(1, Policy::Block)?;
    /// assert_eq!(queue.try_push(1), PushOutcome::Accepted);
    /// assert_eq!(queue.try_push(2), PushOutcome::Full(2));
    /// # Ok::<(), backpressure_pipeline::ConfigError>(())
    /// ```
    pub fn try_push(&self, item: T) -> PushOutcome<T> {
        match self.shed_if_full(item) {
            Ok(item) => self.push_locked(self.lock(), item),
            Err(outcome) => outcome,
        }
    }

    /// Sheds `item` without taking the lock if the policy is `DropNewest` and the queue is
    /// full; otherwise hands it back to be pushed under the lock.
    fn shed_if_full(&self, item: T) -> Result<T, PushOutcome<T>> {
        if self.policy != Policy::DropNewest || self.items.available_permits() < self.capacity {
            return Ok(item);
        }
        // By invariant 1 the queue is full at this instant, and no lock is needed to know it;
        // unless the permits are close's flood (invariant 3), which the closed flag tells.
        // Count the shed only while the flag is unset (invariant 4). Terminates: each retry
        // means another shed was counted or the queue closed, and close ends the loop.
        let mut state = self.state.0.load(Ordering::Acquire);
        loop {
            if state & CLOSED != 0 {
                return Err(PushOutcome::Closed(item));
            }
            // AcqRel on success: ordered with close's `fetch_or` in the word's modification
            // order, which is all invariant 4 needs; Acquire on failure to re-read the flag.
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

    /// Applies the policy with the buffer lock held. Under `Block` a full queue gives
    /// [`PushOutcome::Full`]; [`push`](Queue::push) waits instead of calling this.
    fn push_locked(&self, mut buf: MutexGuard<'_, VecDeque<T>>, item: T) -> PushOutcome<T> {
        if self.is_closed() {
            return PushOutcome::Closed(item);
        }
        if buf.len() < self.capacity {
            self.enqueue(buf, item);
            return PushOutcome::Accepted;
        }
        // The counters below change under the lock, so a report that takes the lock after close
        // sees every accepted item counted. Relaxed: the lock orders them.
        match self.policy {
            Policy::DropNewest => {
                // The flag is in the same word, but it cannot overflow into it: 2^63 sheds.
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
                    // The capacity is at least 1, so a full buffer has a front.
                    None => PushOutcome::Accepted,
                }
            }
            Policy::Block => PushOutcome::Full(item),
        }
    }

    /// Adds `item` to a buffer with room, then makes it available to poppers (invariant 1).
    fn enqueue(&self, mut buf: MutexGuard<'_, VecDeque<T>>, item: T) {
        buf.push_back(item);
        // Relaxed: a statistic for `len()`; the lock orders the buffer itself.
        self.len.store(buf.len(), Ordering::Relaxed);
        let edge = self.meter.after_push(buf.len(), self.capacity);
        // Under the lock, so a report that takes the lock after close sees it counted.
        bump(&self.counts.accepted, 1);
        drop(buf);
        self.items.add_permits(1);
        self.meter.record(edge);
    }

    /// Removes the oldest item, waiting until there is one.
    ///
    /// Returns `None` only when the queue is closed and holds no item that is not already
    /// claimed by another popper.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe. The only wait is for the permit that reserves an item; once it is held,
    /// the item is taken in the same poll that returns it. A pop dropped before that leaves
    /// the item in the queue.
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{Policy, Queue};
    ///
    /// # smol::block_on(async {
    /// let queue = Queue::new(2, Policy::DropOldest)?;
    /// let _ = queue.try_push(7);
    /// assert_eq!(queue.pop().await, Some(7));
    /// queue.close();
    /// assert_eq!(queue.pop().await, None);
    /// # Ok::<(), backpressure_pipeline::ConfigError>(())
    /// # }).unwrap();
    /// ```
    pub async fn pop(&self) -> Option<T> {
        // A fresh `acquire()` per pop, dropped as soon as it completes, keeps the semaphore's
        // wake-ups chaining from one popper to the next.
        let (permit, woken) = self.reserve().await;
        let mut buf = self.lock();
        let edge = self.meter.before_pop(buf.len(), self.capacity);
        let item = buf.pop_front();
        // Relaxed: a statistic for `len()`; the lock orders the buffer itself.
        self.len.store(buf.len(), Ordering::Relaxed);
        if item.is_some() {
            // Under the lock, with the removal: a report that takes the lock finds every
            // item either still buffered or counted here.
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
                    // One more slot, one more producer: `additional`, so that slots freed in
                    // a burst wake as many producers, not one. If the notified producer was
                    // cancelled, its listener passes the notification on.
                    self.room.notify(1.additional());
                }
                Some(item)
            }
            // Only a flood permit finds the buffer empty, and by invariant 3 that is final.
            // Dropping the permit hands it on to the next waiting popper.
            None => None,
        }
    }

    /// Removes up to `limit` items at once, oldest first, waiting until there is at least one.
    ///
    /// One wait, one lock and one wake-up for a whole batch: for consumers that amortise
    /// (write a batch to a database, send a batch over the network). Returns an empty `Vec`
    /// only when the queue is closed and empty, or when `limit` is 0.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`pop`](Queue::pop): the batch is taken in the poll that returns it, and
    /// a `pop_many` dropped before that leaves every item in the queue.
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{Policy, Queue};
    ///
    /// # smol::block_on(async {
    /// let queue = Queue::new(8, Policy::Block)?;
    /// for i in 0..5 {
    ///     let _ = queue.push(i).await;
    /// }
    /// assert_eq!(queue.pop_many(3).await, [0, 1, 2]);
    /// assert_eq!(queue.pop_many(10).await, [3, 4]);
    /// queue.close();
    /// assert!(queue.pop_many(10).await.is_empty());
    /// # Ok::<(), backpressure_pipeline::ConfigError>(())
    /// # }).unwrap();
    /// ```
    pub async fn pop_many(&self, limit: usize) -> Vec<T> {
        if limit == 0 {
            return Vec::new();
        }
        let (first, woken) = self.reserve().await;
        let mut buf = self.lock();
        // More permits, taken with the lock held and no `.await` until the items are taken,
        // so a cancelled `pop_many` cannot strand them. By invariant 1 each one stands for an
        // item in the buffer beyond those reserved by other poppers.
        let mut reserved = 1;
        while reserved < limit {
            match self.items.try_acquire() {
                Some(permit) => permit.forget(),
                None => break,
            }
            reserved += 1;
        }
        let edge = self.meter.before_pop(buf.len(), self.capacity);
        // After close the permits may be flood permits (invariant 3), so the buffer may hold
        // fewer.
        let taken = reserved.min(buf.len());
        let batch: Vec<T> = buf.drain(..taken).collect();
        // Relaxed: a statistic for `len()`; the lock orders the buffer itself.
        self.len.store(buf.len(), Ordering::Relaxed);
        // Under the lock, with the removal (as in `pop`).
        bump(&self.counts.popped, batch.len() as u64);
        let producers_wait = self.producers_wait();
        drop(buf);
        self.meter.record(edge);
        if batch.is_empty() {
            // Closed and empty (invariant 3); the permit goes on to the next popper.
            return batch;
        }
        first.forget();
        if woken {
            self.chain_wake();
        }
        if producers_wait {
            self.room.notify(batch.len().additional());
        }
        batch
    }

    /// Closes the queue. Returns `true` if this call closed it.
    ///
    /// Later pushes return [`PushOutcome::Closed`]; items already queued stay poppable; every
    /// waiting popper and producer is woken.
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{Policy, Queue};
    ///
    /// let queue = Queue::<u8>::new(1, Policy::Block)?;
    /// assert!(queue.close());
    /// assert!(!queue.close());
    /// assert!(queue.is_closed());
    /// # Ok::<(), backpressure_pipeline::ConfigError>(())
    /// ```
    pub fn close(&self) -> bool {
        // AcqRel: the Release half publishes the close to pushers, who read it under the
        // buffer lock (invariant 3); the previous value tells which caller closed it, and the
        // shed count it carries is final (invariant 4).
        if self.state.0.fetch_or(CLOSED, Ordering::AcqRel) & CLOSED != 0 {
            return false;
        }
        self.items.add_permits(CLOSE_FLOOD);
        self.room.notify(usize::MAX);
        true
    }

    /// Whether the queue is closed.
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{Policy, Queue};
    ///
    /// let queue = Queue::<u8>::new(1, Policy::Block)?;
    /// assert!(!queue.is_closed());
    /// # Ok::<(), backpressure_pipeline::ConfigError>(())
    /// ```
    pub fn is_closed(&self) -> bool {
        // Acquire: pairs with the Release in `close`.
        self.state.0.load(Ordering::Acquire) & CLOSED != 0
    }

    /// The number of items in the queue at this instant.
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{Policy, Queue};
    ///
    /// let queue = Queue::new(4, Policy::Block)?;
    /// let _ = queue.try_push(1);
    /// assert_eq!(queue.len(), 1);
    /// # Ok::<(), backpressure_pipeline::ConfigError>(())
    /// ```
    pub fn len(&self) -> usize {
        // Relaxed: a snapshot; it is stale as soon as it is read anyway.
        self.len.load(Ordering::Relaxed)
    }

    /// Whether the queue holds no item at this instant.
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{Policy, Queue};
    ///
    /// let queue = Queue::<u8>::new(4, Policy::Block)?;
    /// assert!(queue.is_empty());
    /// # Ok::<(), backpressure_pipeline::ConfigError>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most items the queue holds.
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{Policy, Queue};
    ///
    /// assert_eq!(Queue::<u8>::new(3, Policy::Block)?.capacity(), 3);
    /// # Ok::<(), backpressure_pipeline::ConfigError>(())
    /// ```
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The policy applied when the queue is full.
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{Policy, Queue};
    ///
    /// assert_eq!(Queue::<u8>::new(3, Policy::DropOldest)?.policy(), Policy::DropOldest);
    /// # Ok::<(), backpressure_pipeline::ConfigError>(())
    /// ```
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// A snapshot of the queue's counters: accepted, shed, evicted, length, peak length and
    /// time spent full.
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{Policy, Queue};
    ///
    /// let queue = Queue::new(1, Policy::DropOldest)?;
    /// let _ = queue.try_push(1);
    /// let _ = queue.try_push(2);
    /// let stats = queue.stats();
    /// assert_eq!((stats.accepted, stats.evicted, stats.len), (2, 1, 1));
    /// # Ok::<(), backpressure_pipeline::ConfigError>(())
    /// ```
    pub fn stats(&self) -> QueueStats {
        // Relaxed: a snapshot, each counter on its own. Acquire for the shed count: a report
        // reads it after close, and sees every shed counted before it (invariant 4). The
        // pipeline's report reads the counters through here after `take_all`, whose lock
        // orders the lock-held ones.
        QueueStats {
            accepted: self.counts.accepted.load(Ordering::Relaxed),
            shed: self.state.0.load(Ordering::Acquire) & !CLOSED,
            evicted: self.counts.evicted.load(Ordering::Relaxed),
            popped: self.counts.popped.load(Ordering::Relaxed),
            len: self.len(),
            peak_len: self.meter.peak(),
            time_full: self.meter.time_full(),
        }
    }

    /// Removes every item left in a closed queue (invariant 2).
    pub(crate) fn take_all(&self) -> VecDeque<T> {
        debug_assert!(self.is_closed());
        let mut buf = self.lock();
        let edge = self.meter.before_pop(buf.len(), self.capacity);
        self.len.store(0, Ordering::Relaxed);
        let left = std::mem::take(&mut *buf);
        drop(buf);
        self.meter.record(edge);
        left
    }

    /// Waits for a permit, counting this popper as waiting while it does (invariant 6).
    /// Returns whether it waited: only a popper that was woken can have absorbed a wake-up
    /// meant for another, so only such a popper passes one on.
    async fn reserve(&self) -> (SemaphoreGuard<'_>, bool) {
        if let Some(permit) = self.items.try_acquire() {
            return (permit, false);
        }
        let _waiting = Waiting::new(&self.waiting_poppers);
        (self.items.acquire().await, true)
    }

    /// Passes a wake-up on to the next waiting popper if items are left for it (invariant 6):
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

    /// Takes the buffer lock (see the module's notes on it).
    fn lock(&self) -> MutexGuard<'_, VecDeque<T>> {
        // Nothing panics while the lock is held but a failed allocation, which aborts; if a
        // panic did poison it, the buffer is still a valid `VecDeque`.
        self.buf.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<T> fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("capacity", &self.capacity)
            .field("policy", &self.policy)
            .field("len", &self.len())
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

/// A producer counted as waiting for room until this drops (invariant 5): at the end of its
/// wait, or when the push is cancelled.
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
        // Relaxed: a pop that misses this decrement only wakes one producer too many.
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A value on a cache line of its own (128 bytes covers adjacent-line prefetching), so that
/// the producers hammering it under overload do not also invalidate the lines the poppers use.
#[derive(Debug)]
#[repr(align(128))]
struct CacheLine<T>(T);
