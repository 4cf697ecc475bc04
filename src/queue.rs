//! The bounded hand-off queue.
//!
//! # Invariants
//!
//! 1. The buffer, the two lines of waiters (poppers, and producers waiting for room), the
//!    reserved slots and the counters live together under one lock, the buffer lock. A task
//!    checks the buffer and the closed flag and, if it must wait, joins its line in one
//!    critical section; whoever changes what it waits for (a push, a pop, close) takes the
//!    same lock and wakes from the line. So check → listen → check again is one step here,
//!    and no wake-up can fall between a check and a listen.
//! 2. Wake-ups are additional (see `waiters.rs`): each item pushed takes one popper out of
//!    line, and each slot freed takes one producer out of line; a task that was woken and is
//!    never polled again holds one wake-up, never more, and never absorbs another's.
//! 3. Under [`Policy::Block`] a slot freed while producers wait is *reserved* for the first of
//!    them (`reserved` counts such slots), and a newcomer sees the queue full while
//!    `len + reserved == capacity`. So waiting producers are served first come, first served,
//!    and none is overtaken. A woken producer that is dropped instead passes its reservation
//!    to the next in line (or frees it). `reserved` is 0 under the shedding policies, and is
//!    not maintained after close, when nothing is accepted.
//! 4. The closed flag only goes from unset to set. `close` sets it under the lock and wakes
//!    both lines; a task reads it under the lock. A task that read it unset joined its line
//!    before close took the lock, and is woken by close; one that comes later reads it set.
//!    After close, items already queued stay poppable, and empty is final.
//! 5. `state` holds the closed flag (its top bit) and the count of shed items (the rest) in
//!    one word. The lock-free shed of a full queue adds one with a single `fetch_add` (no
//!    compare-exchange loop), and the value it returns says whether the flag was already set:
//!    if so, the shed is refused as `Closed`. `close` sets the flag with a `fetch_or`, whose
//!    returned count is every shed made before it, and stores that count (`shed_at_close`)
//!    in the same critical section; snapshots take the lock and read the stored count once
//!    the flag is set, so the refused increments after close never show. A report read after
//!    close misses none that returned `Shed` and counts none that returned `Closed`.
//! 6. `len` is a copy of the buffer's length, stored under the lock after every change, so
//!    that lock-free readers (`len()`, the shed check) see a length the buffer really had.
//! 7. A keyed queue (`keyed.rs`, a pipeline's with `key_by`) serves only items whose key is
//!    free, so a popper may wait while items are queued. Each item that may run wakes one
//!    popper: a push of a free key's item, and each item a release lets run (a worker's
//!    lanes are released in its next take's critical section, which serves one of them
//!    itself). Whatever ends the waits for good wakes every popper: the take that empties a
//!    closed queue, `take_all`, `halt`, and a push that leaves a full queue holding only
//!    busy keys' items (a batch being filled may hold those keys).
//!
//! Lock: the buffer lock is held for a few instructions and never across an `.await` or
//! user code (no item is dropped and no waker is woken under it), so it is a blocking
//! lock, taken the same way by tasks and by synchronous callers: a spin lock that backs off
//! to the scheduler (`crate::sync::BufferLock`; loom's `Mutex` when model checked). It
//! replaced `parking_lot::Mutex`, which had replaced `std::sync::Mutex`, each measured side by
//! side in one session on 2 shared cores (BENCHMARKS.md): std's futex lock spent a fifth of
//! the pipeline's cycles in `lock_contended`; parking_lot's took S1 from 0.5–0.8× flume to
//! 0.8–1.2×, but parked threads in the kernel on tokio 1 → 1; the spin lock, released with a
//! plain store, took that cell from 0.93× to 1.17× flume (capacity 16; 1.02× to 1.46× at
//! 1024) and S2's `try_push` from 3.2× to 4.6× async-channel's `force_send`. An `async_lock::Mutex` here deadlocked a runtime thread: a
//! synchronous `try_push` blocking on it from a task waited behind a notified lock waiter
//! that only that same thread could run (`tests/faults.rs`,
//! `try_push_from_a_task_beside_a_sync_producer`).
//!
//! # Design note: waiter lines, not a semaphore
//!
//! The first design counted items with an `async_lock::Semaphore` (permits == items). Its
//! `notify` is not additional: a popper woken but not polled again (an idle `select!` branch)
//! swallowed the wake-ups of later pushes, and the queue needed a hand-made "chain wake" to
//! limp past it; it also took event-listener's list lock on every push, waiter or not. Lines
//! kept under the buffer lock remove that root: one lock per operation, a wake-up only when a
//! task waits, wake-ups that add up, and FIFO producers. `examples/compare.rs` keeps the
//! semaphore queue as a measured row ("semaphore copy"); in one `--runs 3` session
//! (BENCHMARKS.md) the lines measured S4 53 ns per push+pop pair against the semaphore's 87,
//! S3 0.77× against 0.56× async-channel's `try_send`, S1 0.96–0.98× against 0.85–0.92×
//! async-channel with capacity 1024 and 0.79–1.15× against 0.77–0.80× with capacity 16, and
//! S2 level (2.24× against 2.02× `force_send` through `try_push`).

mod blocking;
mod futures;
mod keyed;
mod timed;
mod waiters;

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

pub(crate) use self::futures::TakeTimed;
pub use self::futures::{Pop, PopMany, Push};
use self::keyed::Keys;
pub(crate) use self::keyed::{KeyHash, KeyHasher};
use self::timed::{Extras, KeyedLine, Marks, Plain, Timed};
pub(crate) use self::timed::{PressureCell, Served, Taken, Timing};
pub(crate) use self::waiters::Ticket;
use self::waiters::{Left, NeedsWaker, WaitList};

use crate::delay::DelayHistogram;
use crate::policy::{ConfigError, Policy, PushOutcome};
use crate::pressure::Pressure;
use crate::spawner::Spawner;
use crate::stats::{Meter, QueueStats};
use crate::sync::{AtomicU64, AtomicUsize, BufferGuard, BufferLock, Ordering};

/// The closed flag in `state` (invariant 5).
const CLOSED: u64 = 1 << 63;

/// A bounded MPMC hand-off queue with an explicit policy for when it is full.
///
/// A `VecDeque` behind a blocking mutex that is never held across an `.await`, with the
/// lines of waiting poppers and producers kept under the same lock. Share it with an `Arc`;
/// every method takes `&self`, and `try_push` and `close` work from any thread.
///
/// Waiting producers (under [`Policy::Block`]) are served in arrival order: a slot freed
/// while producers wait goes to the first of them, never to a newcomer. Poppers are woken
/// one per item pushed.
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
    inner: BufferLock<Inner<T>>,
    /// Copies for lock-free readers, on a line of their own, away from the lock's.
    copies: CacheLine<Copies>,
    /// The closed flag and the shed count (invariant 5).
    state: CacheLine<AtomicU64>,
    capacity: usize,
    policy: Policy,
    /// The clock items are stamped with, only when a time-based feature is configured
    /// (`timed.rs`); `None` reads no clock.
    clock: Option<Arc<dyn Spawner>>,
    /// An item's key, hashed before the lock, when the queue is keyed (`keyed.rs`).
    keyer: Option<Keyer<T>>,
    /// Keyed and coalescing: a push may replace its key's pending item, even when full.
    coalesce: bool,
    /// Keyed: how many batches are being filled ([`Queue::fill`]). While any is, a push of
    /// a busy key wakes every popper: it may be an item of a filling batch's own key.
    fillers: AtomicUsize,
}

/// A keyed batch being filled, counted in [`Queue::fillers`] while it lives.
pub(crate) struct Fill<'a>(&'a AtomicUsize);

impl Drop for Fill<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A keyed take's lanes: those of the worker's previous unit, released first (unless
/// `filling`: a batch being filled keeps its own), then those of the items it takes.
pub(crate) struct Lanes<'a> {
    pub(crate) held: &'a mut Vec<u32>,
    pub(crate) filling: bool,
}

/// An item's key identity: the user's key function and its hash (user code, run before the
/// buffer lock).
pub(crate) type Keyer<T> = Arc<dyn Fn(&T) -> KeyHash + Send + Sync>;

/// Written under the buffer lock, read without it.
#[derive(Debug)]
struct Copies {
    /// The buffer's length (invariant 6).
    len: AtomicUsize,
    /// `popped`, for a producer to see whether the workers make progress.
    pops: AtomicU64,
}

/// Everything under the buffer lock (invariant 1).
struct Inner<T> {
    buf: VecDeque<T>,
    poppers: WaitList,
    producers: WaitList,
    /// Free slots promised to woken producers (invariant 3).
    reserved: usize,
    /// Items taken into the buffer (including those that evicted another).
    accepted: u64,
    /// Buffered items evicted under [`Policy::DropOldest`].
    evicted: u64,
    /// Items taken out by poppers (not by `take_all`).
    popped: u64,
    meter: Meter,
    /// The shed count when the queue closed (invariant 5).
    shed_at_close: Option<u64>,
    /// Set by `halt`: takes end at once, whatever is left (a pipeline past its deadline).
    halted: bool,
    /// Stamps, maximum age, CoDel, delays and the watermarks, when configured
    /// (`timed.rs`): one field, so a queue without them pays one test per change.
    extras: Option<Box<Extras>>,
}

impl<T> Inner<T> {
    /// The oldest item, served, with its stamp (`pop_front`: no `Drain` for one item).
    #[inline]
    fn take_one(&mut self) -> Option<T> {
        debug_assert!(
            self.keys_ref().is_none(),
            "a keyed queue takes through its lanes"
        );
        self.popped += 1;
        if let Some(timed) = self.timed() {
            timed.stamps.pop_front();
        }
        self.buf.pop_front()
    }

    /// The oldest `n` items (1 ≤ n ≤ len), served in order, with their stamps.
    fn take_front(&mut self, n: usize) -> std::collections::vec_deque::Drain<'_, T> {
        self.popped += n as u64;
        if let Some(timed) = self.timed() {
            timed.stamps.drain(..n);
        }
        self.buf.drain(..n)
    }

    /// Up to `limit` items served, and those shed at the exit, at `now` (`timed.rs`).
    fn take_timed<S: Served<T>>(&mut self, limit: usize, now: Instant) -> Taken<T, S> {
        let Inner { buf, extras, .. } = self;
        let timed = extras
            .as_deref_mut()
            .and_then(|extras| extras.timed.as_mut())
            .expect("a timed take from a timed queue");
        let (taken, served) = timed.take(&mut Plain(buf), limit, now);
        self.popped += served;
        taken
    }

    /// Up to `limit` items served through the keyed lanes (their lanes added to `lanes`, to
    /// release when their work is done), and, if timed, those shed at the exit at `now`.
    fn take_keyed<S: Served<T>>(
        &mut self,
        limit: usize,
        now: Option<Instant>,
        lanes: &mut Vec<u32>,
    ) -> Taken<T, S> {
        let Inner { buf, extras, .. } = self;
        let extras = extras
            .as_deref_mut()
            .expect("a keyed take from a keyed queue");
        let keys = extras
            .keys
            .as_mut()
            .expect("a keyed take from a keyed queue");
        let mut line = KeyedLine { buf, keys, lanes };
        let (taken, served) = match (extras.timed.as_mut(), now) {
            (Some(timed), Some(now)) => timed.take(&mut line, limit, now),
            _ => {
                use self::timed::Line;
                let mut taken = Taken::<T, S>::default();
                let mut served = 0;
                // Bounded by the data and the limit.
                while served < limit {
                    let Some(pos) = line.next(false) else { break };
                    taken.served.put(line.remove(pos, true));
                    served += 1;
                }
                (taken, served as u64)
            }
        };
        self.popped += served;
        taken
    }

    /// Whether a popper may take an item now: one is queued (and, when keyed, its key may
    /// run).
    #[inline]
    fn can_take(&self) -> bool {
        match self.keys_ref() {
            None => !self.buf.is_empty(),
            Some(keys) => keys.has_ready(),
        }
    }

    fn keys(&mut self) -> Option<&mut Keys> {
        self.extras.as_deref_mut()?.keys.as_mut()
    }

    fn keys_ref(&self) -> Option<&Keys> {
        self.extras.as_deref()?.keys.as_ref()
    }

    /// The time-based state, if configured.
    fn timed(&mut self) -> Option<&mut Timed> {
        self.extras.as_deref_mut()?.timed.as_mut()
    }

    fn timed_ref(&self) -> Option<&Timed> {
        self.extras.as_deref()?.timed.as_ref()
    }
}

/// A queue's delays at one instant (all empty unless items are stamped).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct QueueDelays {
    pub(crate) oldest_age: Option<Duration>,
    pub(crate) histogram: Option<DelayHistogram>,
    pub(crate) overloaded: bool,
}

/// Wakers gathered under the buffer lock, woken or dropped once it is released: no user
/// code (waking, cloning or dropping a waker is the runtime's code) runs under the lock.
#[must_use = "wake them after releasing the lock"]
#[derive(Default)]
pub(crate) struct WakeAfterUnlock {
    wake: Option<Waker>,
    /// Wakers past the first of each kind, rare: `(waker, whether to wake it)`.
    more: Vec<(Waker, bool)>,
    /// Wakers that left a line unused, or were displaced by a newer one: only dropped (one
    /// at most per critical section but for the rarest paths, so no allocation).
    drop: Option<Waker>,
}

/// How a wait under the lock ended.
enum Step<R> {
    Done(R),
    /// In line.
    Parked,
    /// A clone of the waker is needed: release the lock, clone it, and try again.
    NeedsWaker,
}

impl WakeAfterUnlock {
    fn add(&mut self, waker: Option<Waker>) {
        let Some(waker) = waker else { return };
        match self.wake {
            None => self.wake = Some(waker),
            Some(_) => self.more.push((waker, true)),
        }
    }

    /// Keeps the waker of a ticket that left its line, to drop it after unlocking.
    #[inline]
    fn leave(&mut self, left: Option<Left>) {
        if let Some(Left::Waiting(waker)) = left {
            self.discard(waker);
        }
    }

    /// The outcome of `WaitList::wait`, with the waker it displaced kept to drop.
    fn wait<R>(&mut self, waited: Result<Option<Waker>, NeedsWaker>) -> Step<R> {
        match waited {
            Ok(displaced) => {
                if let Some(waker) = displaced {
                    self.discard(waker);
                }
                Step::Parked
            }
            Err(NeedsWaker) => Step::NeedsWaker,
        }
    }

    fn discard(&mut self, waker: Waker) {
        match self.drop {
            None => self.drop = Some(waker),
            Some(_) => self.more.push((waker, false)),
        }
    }

    #[inline]
    pub(crate) fn wake(self) {
        // The common case: nothing gathered. `more` fills only after the first slot of a
        // kind, so it is empty and owns no allocation: nothing to drop, and no drop glue run
        // for the whole struct (measured: ~40 instructions per push + pop pair).
        if self.wake.is_none() && self.drop.is_none() {
            debug_assert!(self.more.capacity() == 0);
            std::mem::forget(self);
            return;
        }
        self.wake_slow();
    }

    #[inline(never)]
    fn wake_slow(self) {
        if let Some(waker) = self.wake {
            waker.wake();
        }
        for (waker, wake) in self.more {
            if wake {
                waker.wake();
            }
        }
        drop(self.drop);
    }
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
            inner: BufferLock::new(Inner {
                // Nothing up front: the buffer grows as items arrive, to `capacity` at most.
                buf: VecDeque::new(),
                poppers: WaitList::default(),
                producers: WaitList::default(),
                reserved: 0,
                accepted: 0,
                evicted: 0,
                popped: 0,
                meter: Meter::new(),
                shed_at_close: None,
                halted: false,
                extras: None,
            }),
            copies: CacheLine(Copies {
                len: AtomicUsize::new(0),
                pops: AtomicU64::new(0),
            }),
            state: CacheLine(AtomicU64::new(0)),
            capacity,
            policy,
            clock: None,
            keyer: None,
            coalesce: false,
            fillers: AtomicUsize::new(0),
        })
    }

    /// Keys the queue's items (before it is shared): a take serves the oldest item whose
    /// key has fewer than `per_key` items running, and with `coalesce` a push replaces its
    /// key's pending item (`keyed.rs`).
    pub(crate) fn set_keys(&mut self, keyer: Keyer<T>, per_key: usize, coalesce: bool) {
        self.keyer = Some(keyer);
        self.coalesce = coalesce;
        self.lock().extras.get_or_insert_with(Box::default).keys =
            Some(Keys::new(per_key, coalesce));
    }

    pub(crate) fn is_keyed(&self) -> bool {
        self.keyer.is_some()
    }

    /// Counts a keyed batch being filled until the guard drops, so that a push of one of
    /// its keys wakes it (its fill ends rather than wait on its own key's item).
    ///
    /// Relaxed: the count is raised before the filling take's first lock, and a push reads
    /// it under the lock, so a push that the take did not see sees the count.
    pub(crate) fn fill(&self) -> Fill<'_> {
        self.fillers.fetch_add(1, Ordering::Relaxed);
        Fill(&self.fillers)
    }

    /// Ends every take, now and from now on, as if the queue were closed and empty: a
    /// pipeline's workers take no new item once its worker token is cancelled (the
    /// deadline, a panic stop), even one whose key a worker frees after that. Wakes every
    /// waiting popper. What is left stays for `take_all`.
    pub(crate) fn halt(&self) {
        let mut inner = self.lock();
        inner.halted = true;
        let wakers = inner.poppers.notify_all();
        drop(inner);
        for waker in wakers {
            waker.wake();
        }
    }

    /// Releases `lanes` (and empties it); returns how many queued items may run now.
    fn release_locked(&self, inner: &mut Inner<T>, lanes: &mut Vec<u32>) -> usize {
        let Some(keys) = inner.keys() else {
            return 0;
        };
        // Bounded by the lanes given.
        let freed = lanes.drain(..).filter(|&lane| keys.release(lane)).count();
        freed
    }

    /// The item's key, hashed before the lock (user code), if the queue is keyed.
    #[inline]
    pub(crate) fn key_of(&self, item: &T) -> Option<KeyHash> {
        self.keyer.as_ref().map(|keyer| keyer(item))
    }

    /// Releases the lanes of served items whose work is done: their keys may run the next
    /// item, and a popper is woken for each item that may run now.
    pub(crate) fn release(&self, lanes: &mut Vec<u32>) {
        if lanes.is_empty() {
            return;
        }
        let mut after = WakeAfterUnlock::default();
        let mut inner = self.lock();
        let freed = self.release_locked(&mut inner, lanes);
        // Bounded by the items the release let run.
        for _ in 0..freed {
            match inner.poppers.has_waiting() {
                true => after.add(inner.poppers.notify_one()),
                false => break,
            }
        }
        drop(inner);
        after.wake();
    }

    /// Stamps items on `clock` and sheds at the exit as `timing` says (before the queue is
    /// shared).
    pub(crate) fn set_timing(&mut self, clock: Arc<dyn Spawner>, timing: Timing) {
        self.clock = Some(clock);
        self.lock().extras.get_or_insert_with(Box::default).timed = Some(Timed::new(timing));
    }

    /// Watches the queue's length against a `high` and a `low` mark (in items), and returns
    /// a [`Pressure`] handle: the level turns high when the length reaches `high`, and
    /// normal again only when it falls to `low`, so it changes once per real crossing and
    /// never flaps around a mark. Set it before sharing the queue; [`pressure`](Queue::pressure)
    /// gives more handles. Setting new marks ends the old ones: their handles' `changed`
    /// returns `None`, as it does once the queue is closed.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Watermarks`] unless `low < high <= capacity`.
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{Policy, PressureLevel, Queue};
    ///
    /// let mut queue = Queue::new(8, Policy::Block)?;
    /// let pressure = queue.watermarks(6, 2)?;
    /// for i in 0..6 {
    ///     let _ = queue.try_push(i);
    /// }
    /// assert_eq!(pressure.level(), PressureLevel::High);
    /// assert_eq!(pressure.crossings(), 1);
    /// # Ok::<(), backpressure_pipeline::ConfigError>(())
    /// ```
    pub fn watermarks(&mut self, high: usize, low: usize) -> Result<Pressure, ConfigError> {
        if !(low < high && high <= self.capacity) {
            return Err(ConfigError::Watermarks);
        }
        let mut marks = Marks::new(high, low);
        let cell = marks.cell.clone();
        let inner = self.inner.get_mut();
        // The length now counts: a queue already past the high mark starts high.
        let _ = marks.update(inner.buf.len());
        if self.state.0.load(Ordering::Acquire) & CLOSED != 0 {
            // Marks on a closed queue are closed too: their watchers end at once.
            let _ = marks.close();
        }
        let extras = inner.extras.get_or_insert_with(Box::default);
        if let Some(mut old) = extras.marks.replace(marks) {
            old.close().wake();
        }
        Ok(Pressure::new(cell))
    }

    /// Another handle on the queue's pressure level, if
    /// [`watermarks`](Queue::watermarks) are set.
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{Policy, Queue};
    ///
    /// let queue = Queue::<u8>::new(8, Policy::Block)?;
    /// assert!(queue.pressure().is_none());
    /// # Ok::<(), backpressure_pipeline::ConfigError>(())
    /// ```
    pub fn pressure(&self) -> Option<Pressure> {
        let inner = self.lock();
        let marks = inner.extras.as_deref()?.marks.as_ref()?;
        Some(Pressure::new(marks.cell.clone()))
    }

    /// Whether items are stamped.
    pub(crate) fn is_timed(&self) -> bool {
        self.clock.is_some()
    }

    /// The time on the queue's clock, if it has one: read before the lock (the clock is
    /// user code).
    fn stamp(&self) -> Option<Instant> {
        self.clock.as_ref().map(|clock| clock.now())
    }

    /// The counters and, when items are stamped, the queue delays, in one critical section
    /// (the clock read before it): the age of the oldest item, the delays of the items
    /// served, and whether CoDel is dropping.
    pub(crate) fn snapshot(&self) -> (QueueStats, QueueDelays) {
        let now = self.stamp();
        let inner = self.lock();
        let delays = match (now, inner.timed_ref()) {
            (Some(now), Some(timed)) => QueueDelays {
                oldest_age: Some(timed.oldest_age(now).unwrap_or_default()),
                histogram: Some(timed.delays),
                overloaded: timed.overloaded(),
            },
            _ => QueueDelays::default(),
        };
        (self.stats_locked(&inner), delays)
    }

    /// Pushes an item, waiting for room only under [`Policy::Block`].
    ///
    /// Under `Block` it waits until there is room or the queue closes; waiting producers are
    /// served in the order they started waiting. Under `DropNewest` and `DropOldest` it is
    /// [`try_push`](Queue::try_push), except that a producer that has pushed into a full queue
    /// 256 times in a row with no pop in between yields to the runtime once (before pushing):
    /// a producer looping on `push().await` under overload cannot starve the workers that
    /// share its thread (on a current-thread runtime, say), and costs nothing while they run.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe. The item enters the queue in the poll that returns
    /// [`PushOutcome::Accepted`], so a push dropped before it completes never enqueued its
    /// item: the item is dropped with the future and nothing in the queue changes. A push
    /// that was woken for a freed slot and is dropped passes the slot to the next waiting
    /// producer.
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
    pub fn push(&self, item: T) -> Push<'_, T> {
        Push::new(self, item)
    }

    /// Pushes an item without waiting.
    ///
    /// When the queue is full, `DropNewest` sheds the incoming item ([`PushOutcome::Shed`]),
    /// `DropOldest` evicts the oldest ([`PushOutcome::Evicted`]) and `Block` reports
    /// [`PushOutcome::Full`] (also when the only free slots are promised to producers already
    /// waiting in [`push`](Queue::push): they are not overtaken). A closed queue returns
    /// [`PushOutcome::Closed`].
    ///
    /// It works from synchronous code (a callback, a sensor thread) and from tasks alike. It
    /// never waits for room; the buffer lock it takes is held by others for a few
    /// instructions at most, never across an `.await`.
    ///
    /// The lock is not fair (a spin lock that backs off to the scheduler): a thread calling
    /// `try_push` in a tight loop on a full queue (`Block` or `DropOldest`; a full `DropNewest`
    /// queue sheds without the lock) can hold up other producers and the workers' pops for a
    /// while: it re-takes the lock before a waiter does. Such a thread should push in bursts,
    /// or yield now and then; an async producer should use [`push`](Queue::push), which
    /// yields for it.
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
    #[inline]
    pub fn try_push(&self, item: T) -> PushOutcome<T> {
        let key = self.key_of(&item);
        self.try_push_keyed(item, key)
    }

    /// `try_push` with the item's key already computed (once per push).
    #[inline]
    pub(crate) fn try_push_keyed(&self, item: T, key: Option<KeyHash>) -> PushOutcome<T> {
        let item = match self.shed_if_full(item) {
            Ok(item) => item,
            Err(outcome) => return outcome,
        };
        let now = self.stamp();
        let mut wake = WakeAfterUnlock::default();
        let outcome = self.push_locked(&mut self.lock(), item, key, now, &mut wake);
        wake.wake();
        outcome
    }

    /// Pushes an item from a plain thread, blocking it until [`push`](Queue::push) would
    /// complete.
    ///
    /// The synchronous form of `push`, for producers that are threads, not tasks (as
    /// async-channel's `Sender::send_blocking` is for `send`). Under [`Policy::Block`] it parks
    /// the calling thread until there is room or the queue closes; it waits in the same line
    /// as `push`, so blocked threads and waiting tasks are served together, first come, first
    /// served. Under `DropNewest` and `DropOldest` it never waits: it is
    /// [`try_push`](Queue::try_push), with the same outcome ([`PushOutcome::Accepted`],
    /// [`Shed`] or [`Evicted`]). It never returns [`Full`].
    ///
    /// After [`close`](Queue::close) it returns [`PushOutcome::Closed`] with the item, and so
    /// does a thread that was blocked in it when the queue closed: close releases it at once.
    /// Nothing else releases it: on a full queue whose consumers have stopped popping, it
    /// waits until one pops or someone closes the queue.
    ///
    /// # Only from plain threads
    ///
    /// Calling it from async code (in a task, or in a future given to a `block_on`) is wrong
    /// on every runtime: it blocks the runtime thread, and no task that thread runs can run
    /// until it returns, perhaps the very consumer that would make room. On a single-threaded
    /// runtime that consumer can never run, and the call never returns: a deadlock. In async
    /// code use `push(item).await`. A thread of tokio's `spawn_blocking` pool is a plain
    /// thread, and may call it.
    ///
    /// # Panics
    ///
    /// With the `tokio` feature, under `Policy::Block`, if the calling thread is running a
    /// tokio runtime (inside `Runtime::block_on`, or in a task on one of its threads), whether
    /// or not the queue is full. This is tokio's own check, the one behind its `block_on` and
    /// its channels' `blocking_send`, with tokio's message ("Cannot start a runtime from
    /// within a runtime. [...] use `.await` on the future instead of blocking on it"). A
    /// `spawn_blocking` thread, or a plain thread inside `Handle::enter`, is not running the
    /// runtime, and does not panic. Other runtimes are not detected: there the call blocks
    /// the runtime thread, as above.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::thread;
    ///
    /// use backpressure_pipeline::{Policy, PushOutcome, Queue};
    ///
    /// let queue = Arc::new(Queue::new(1, Policy::Block)?);
    /// let producer = thread::spawn({
    ///     let queue = Arc::clone(&queue);
    ///     move || {
    ///         for id in 0..3 {
    ///             // Blocks this thread while the queue is full.
    ///             assert_eq!(queue.push_blocking(id), PushOutcome::Accepted);
    ///         }
    ///         queue.close();
    ///     }
    /// });
    /// let mut got = Vec::new();
    /// while let Some(id) = smol::block_on(queue.pop()) {
    ///     got.push(id);
    /// }
    /// producer.join().expect("the producer thread");
    /// assert_eq!(got, [0, 1, 2]);
    /// assert_eq!(queue.push_blocking(3), PushOutcome::Closed(3));
    /// # Ok::<(), backpressure_pipeline::ConfigError>(())
    /// ```
    ///
    /// [`Shed`]: PushOutcome::Shed
    /// [`Evicted`]: PushOutcome::Evicted
    /// [`Full`]: PushOutcome::Full
    #[track_caller]
    pub fn push_blocking(&self, item: T) -> PushOutcome<T> {
        if self.policy != Policy::Block {
            // Never waits: no future, so no overload yield either (it would only spin here).
            return self.try_push(item);
        }
        // With a tokio context on this thread, tokio drives the push: its `block_on` panics
        // when this thread is running the runtime, and only then. `Handle::try_current` alone
        // cannot tell that apart from a `spawn_blocking` thread, where blocking is right.
        #[cfg(feature = "tokio")]
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            return handle.block_on(self.push(item));
        }
        blocking::block_on(self.push(item))
    }

    /// Items popped so far, read without the lock.
    pub(crate) fn pops(&self) -> u64 {
        // Relaxed: a hint (see the field).
        self.copies.0.pops.load(Ordering::Relaxed)
    }

    /// Whether a producer pushing into this queue under overload should yield now (see
    /// [`push`](Queue::push)): the queue is full and this thread's last 256 pushes into it
    /// saw no pop in between.
    pub(crate) fn overload_yield_due(&self) -> bool {
        self.looks_full() && futures::yield_due(self)
    }

    /// Whether the queue looks full to a lock-free reader (invariant 6).
    pub(crate) fn looks_full(&self) -> bool {
        // Relaxed: a length the buffer had; the lock orders the buffer itself.
        self.copies.0.len.load(Ordering::Relaxed) >= self.capacity
    }

    /// Sheds `item` without taking the lock if the policy is `DropNewest` and the queue is
    /// full; otherwise hands it back to be pushed under the lock.
    fn shed_if_full(&self, item: T) -> Result<T, PushOutcome<T>> {
        // A coalescing push may replace a pending item even when full: under the lock.
        if self.policy != Policy::DropNewest || self.coalesce || !self.looks_full() {
            return Ok(item);
        }
        // By invariant 6 the queue is full at this instant, and no lock is needed to know it.
        // Counted once, and refused if the flag was set first (invariant 5). AcqRel: ordered
        // with close's `fetch_or` in the word's modification order, which is all it needs.
        if self.state.0.fetch_add(1, Ordering::AcqRel) & CLOSED != 0 {
            return Err(PushOutcome::Closed(item));
        }
        Err(PushOutcome::Shed(item))
    }

    /// Applies the policy with the buffer lock held. Under `Block` a full queue gives
    /// [`PushOutcome::Full`]; [`push`](Queue::push) waits instead of calling this.
    #[inline(always)]
    fn push_locked(
        &self,
        inner: &mut Inner<T>,
        item: T,
        key: Option<KeyHash>,
        now: Option<Instant>,
        wake: &mut WakeAfterUnlock,
    ) -> PushOutcome<T> {
        if self.is_closed() {
            return PushOutcome::Closed(item);
        }
        let item = match self.supersede(inner, item, key) {
            Ok(old) => return PushOutcome::Superseded(old),
            Err(item) => item,
        };
        // Slots promised to waiting producers are not free (invariant 3).
        if inner.buf.len() + inner.reserved < self.capacity {
            self.enqueue(inner, item, key, now, wake);
            return PushOutcome::Accepted;
        }
        match self.policy {
            Policy::DropNewest => {
                // Counted under the lock, so a report that takes the lock after close sees it.
                // Relaxed: the lock orders it. The flag shares the word, but 2^63 sheds (and
                // refused sheds after close, invariant 5) are needed to reach it.
                self.state.0.fetch_add(1, Ordering::Relaxed);
                PushOutcome::Shed(item)
            }
            Policy::DropOldest => {
                // One out, one in: the length does not change. The capacity is at least 1,
                // so a full buffer has a front.
                match inner.buf.pop_front() {
                    Some(oldest) => {
                        inner.buf.push_back(item);
                        // The evicted item's stamp goes with it (`now` is `None` unless timed).
                        if let Some(now) = now {
                            if let Some(timed) = inner.timed() {
                                timed.stamps.pop_front();
                                timed.stamps.push_back(now);
                            }
                        }
                        // And its lane entry: the oldest item is its key's oldest queued.
                        if let (Some(key), Some(keys)) = (key, inner.keys()) {
                            keys.remove(0, false);
                            if keys.push(key) && inner.poppers.has_waiting() {
                                wake.add(inner.poppers.notify_one());
                            }
                        }
                        inner.accepted += 1;
                        inner.evicted += 1;
                        PushOutcome::Evicted(oldest)
                    }
                    None => {
                        self.enqueue(inner, item, key, now, wake);
                        PushOutcome::Accepted
                    }
                }
            }
            Policy::Block => PushOutcome::Full(item),
        }
    }

    /// Adds `item` to a buffer with room and takes one popper out of line (invariant 2).
    #[inline(always)]
    fn enqueue(
        &self,
        inner: &mut Inner<T>,
        item: T,
        key: Option<KeyHash>,
        now: Option<Instant>,
        wake: &mut WakeAfterUnlock,
    ) {
        inner.buf.push_back(item);
        // `now` is `None` unless the queue is timed: no load on the plain path.
        if let Some(now) = now {
            if let Some(timed) = inner.timed() {
                timed.stamps.push_back(now);
            }
        }
        // Keyed, a popper is woken only if the item may run now (its key is not busy).
        let may_run = match (key, inner.keys()) {
            (Some(key), Some(keys)) => keys.push(key),
            _ => true,
        };
        inner.accepted += 1;
        self.after_change(inner, wake);
        if !inner.poppers.has_waiting() {
            return;
        }
        if may_run {
            wake.add(inner.poppers.notify_one());
        } else if self.fillers.load(Ordering::Relaxed) > 0 || self.stuck(inner) {
            // A batch being filled may hold this item's key, or wait on nothing but items of
            // its own keys now: every popper looks again (`poll_take`'s `stuck_ends`).
            for waker in inner.poppers.notify_all() {
                wake.add(Some(waker));
            }
        }
    }

    /// Keyed, with nothing ready: the queue is closed, or full of items of busy keys, so a
    /// batch being filled may be waiting on items of the keys it holds itself. (Under
    /// `DropOldest` new items still come, but each evicts one of those: the batch is
    /// delivered rather than watch its own keys' items go.)
    #[inline]
    fn stuck(&self, inner: &Inner<T>) -> bool {
        self.is_closed() || inner.buf.len() + inner.reserved >= self.capacity
    }

    /// Coalescing: puts `item` in the place of its key's pending item and returns that one;
    /// or gives `item` back. The new item keeps the old one's place, stamp and sequence
    /// number; the length does not change.
    #[inline]
    fn supersede(&self, inner: &mut Inner<T>, item: T, key: Option<KeyHash>) -> Result<T, T> {
        if !self.coalesce {
            return Err(item);
        }
        let (Some(key), Some(keys)) = (key, inner.keys()) else {
            return Err(item);
        };
        let Some(pos) = keys.pending(key) else {
            return Err(item);
        };
        keys.supersede();
        inner.accepted += 1;
        Ok(std::mem::replace(&mut inner.buf[pos], item))
    }

    /// Under the lock, after the buffer's length changed: the lock-free copy and the gauges.
    #[inline(always)]
    fn after_change(&self, inner: &mut Inner<T>, wake: &mut WakeAfterUnlock) {
        let len = inner.buf.len();
        // Relaxed: a copy for lock-free readers (invariant 6); the lock orders the buffer.
        self.copies.0.len.store(len, Ordering::Relaxed);
        inner.meter.update(len, self.capacity);
        if let Some(marks) = inner.extras.as_deref_mut().and_then(|x| x.marks.as_mut()) {
            // A crossing wakes the watchers after unlocking, as any waker is.
            wake.add(marks.update(len));
        }
    }

    /// Under the lock: room for the caller (a slot reserved for it, counted in `reserved`),
    /// or a place in the producers' line (invariant 3). `Err` when the queue is closed.
    fn room_locked(
        &self,
        inner: &mut Inner<T>,
        ticket: &mut Option<Ticket>,
        waker: &Waker,
        spare: &mut Option<Waker>,
        after: &mut WakeAfterUnlock,
    ) -> Step<Result<(), ()>> {
        if self.is_closed() {
            after.leave(inner.producers.leave(ticket));
            return Step::Done(Err(()));
        }
        if inner.producers.is_notified(*ticket) {
            // Woken by a pop that reserved a slot for us.
            inner.producers.leave(ticket);
            return Step::Done(Ok(()));
        }
        if inner.buf.len() + inner.reserved < self.capacity {
            after.leave(inner.producers.leave(ticket));
            inner.reserved += 1;
            return Step::Done(Ok(()));
        }
        after.wait(inner.producers.wait(ticket, waker, spare))
    }

    /// Under the lock: puts `item` in a slot reserved by [`room_locked`](Queue::room_locked).
    fn push_reserved_locked(
        &self,
        inner: &mut Inner<T>,
        item: T,
        key: Option<KeyHash>,
        now: Option<Instant>,
        wake: &mut WakeAfterUnlock,
    ) -> PushOutcome<T> {
        inner.reserved = inner.reserved.saturating_sub(1);
        if self.is_closed() {
            return PushOutcome::Closed(item);
        }
        match self.supersede(inner, item, key) {
            // The slot is not needed after all: it goes to the next producer in line.
            Ok(old) => {
                wake.add(self.grant_room(inner));
                PushOutcome::Superseded(old)
            }
            Err(item) => {
                self.enqueue(inner, item, key, now, wake);
                PushOutcome::Accepted
            }
        }
    }

    /// Waits for room and pushes (under `Block`), in one critical section per poll.
    ///
    /// # Panics
    ///
    /// If polled after it completed, before touching the queue.
    pub(crate) fn poll_push_block(
        &self,
        cx: &mut Context<'_>,
        ticket: &mut Option<Ticket>,
        item: &mut Option<T>,
        key: Option<KeyHash>,
    ) -> Poll<PushOutcome<T>> {
        assert!(item.is_some(), "a push polled after it completed");
        let now = self.stamp();
        if self.coalesce {
            // A pending item of the key is replaced at once: no room is needed.
            if let Some(outcome) = self.try_supersede(ticket, item, key) {
                return Poll::Ready(outcome);
            }
        }
        self.poll_room(cx, ticket, |inner, room, after| {
            let item = item.take().expect("checked on entry");
            match room {
                Ok(()) => self.push_reserved_locked(inner, item, key, now, after),
                Err(()) => PushOutcome::Closed(item),
            }
        })
    }

    /// A waiting coalescing push whose key has a pending item replaces it, leaving the
    /// producers' line (a slot reserved for it goes to the next in line).
    fn try_supersede(
        &self,
        ticket: &mut Option<Ticket>,
        item: &mut Option<T>,
        key: Option<KeyHash>,
    ) -> Option<PushOutcome<T>> {
        let mut after = WakeAfterUnlock::default();
        let mut inner = self.lock();
        if self.is_closed() {
            return None;
        }
        let old = match self.supersede(&mut inner, item.take()?, key) {
            Ok(old) => old,
            Err(back) => {
                *item = Some(back);
                return None;
            }
        };
        match inner.producers.leave(ticket) {
            Some(Left::Notified) => {
                inner.reserved = inner.reserved.saturating_sub(1);
                after.add(self.grant_room(&mut inner));
            }
            left => after.leave(left),
        }
        drop(inner);
        after.wake();
        Some(PushOutcome::Superseded(old))
    }

    /// Waits for room and reserves a slot (for the sink); `Err` once the queue is closed.
    pub(crate) fn poll_reserve(
        &self,
        cx: &mut Context<'_>,
        ticket: &mut Option<Ticket>,
    ) -> Poll<Result<(), ()>> {
        self.poll_room(cx, ticket, |_, room, _| room)
    }

    /// Waits for room (a reserved slot) or close, and runs `then` in the critical section
    /// that found it. A wait costs one critical section: the waker left in line is cloned
    /// before the lock is taken when the queue looks full, or else in a second turn.
    fn poll_room<R>(
        &self,
        cx: &mut Context<'_>,
        ticket: &mut Option<Ticket>,
        then: impl FnOnce(&mut Inner<T>, Result<(), ()>, &mut WakeAfterUnlock) -> R,
    ) -> Poll<R> {
        let mut spare = self.looks_full().then(|| cx.waker().clone());
        // Terminates: the second turn brings the waker clone the first asked for.
        loop {
            let mut after = WakeAfterUnlock::default();
            let mut inner = self.lock();
            let poll =
                match self.room_locked(&mut inner, ticket, cx.waker(), &mut spare, &mut after) {
                    Step::Done(room) => Poll::Ready(then(&mut inner, room, &mut after)),
                    Step::Parked => Poll::Pending,
                    Step::NeedsWaker => {
                        drop(inner);
                        spare = Some(cx.waker().clone());
                        continue;
                    }
                };
            drop(inner);
            after.wake();
            return poll;
        }
    }

    /// Pushes into a slot reserved by [`poll_reserve`](Queue::poll_reserve).
    pub(crate) fn push_reserved(&self, item: T) -> PushOutcome<T> {
        let now = self.stamp();
        let key = self.key_of(&item);
        let mut wake = WakeAfterUnlock::default();
        let outcome = self.push_reserved_locked(&mut self.lock(), item, key, now, &mut wake);
        wake.wake();
        outcome
    }

    /// Gives back a reserved slot unused: it goes to the next waiting producer, if any.
    pub(crate) fn release_reserved(&self) {
        let mut inner = self.lock();
        inner.reserved = inner.reserved.saturating_sub(1);
        let waker = self.grant_room(&mut inner);
        drop(inner);
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// A producer's ticket given back by a push or a sink that is dropped (invariant 3): a
    /// woken producer's reserved slot goes to the next in line.
    pub(crate) fn leave_producers(&self, ticket: &mut Option<Ticket>) {
        let mut after = WakeAfterUnlock::default();
        let mut inner = self.lock();
        match inner.producers.leave(ticket) {
            Some(Left::Notified) if !self.is_closed() => {
                inner.reserved = inner.reserved.saturating_sub(1);
                after.add(self.grant_room(&mut inner));
            }
            left => after.leave(left),
        }
        drop(inner);
        after.wake();
    }

    /// Under the lock, with a slot free: reserves it for the first waiting producer, if any.
    fn grant_room(&self, inner: &mut Inner<T>) -> Option<Waker> {
        if self.policy != Policy::Block || !inner.producers.has_waiting() {
            return None;
        }
        inner.reserved += 1;
        inner.producers.notify_one()
    }

    /// Removes the oldest item, waiting until there is one.
    ///
    /// Resolves to `None` only when the queue is closed and empty.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe. The item is taken in the poll that returns it; a pop dropped before that
    /// leaves every item in the queue, and if it had been woken for an item, it passes the
    /// wake-up on to the next waiting popper.
    ///
    /// A pop that is polled, returns `Pending`, and is then kept without being polled (an
    /// idle `select!` branch) holds at most one wake-up: other poppers are still woken for
    /// the other items.
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
    pub fn pop(&self) -> Pop<'_, T> {
        Pop::new(self)
    }

    /// Removes up to `limit` items at once, oldest first, waiting until there is at least one.
    ///
    /// One wait and one lock for a whole batch: for consumers that amortise (write a batch to
    /// a database, send a batch over the network). It takes what the queue holds, at most
    /// `limit`; it never waits for more. Resolves to an empty `Vec` only when the queue is
    /// closed and empty, or when `limit` is 0.
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
    /// assert!(queue.pop_many(usize::MAX).await.is_empty());
    /// # Ok::<(), backpressure_pipeline::ConfigError>(())
    /// # }).unwrap();
    /// ```
    pub fn pop_many(&self, limit: usize) -> PopMany<'_, T> {
        PopMany::new(self, limit)
    }

    /// Takes out what `take` takes from a non-empty buffer (given `limit` clamped to
    /// 1..=len; it counts what it serves in `popped` and what it sheds in `expired`), or
    /// joins the poppers' line. `Ready(None)` when the queue is closed and empty.
    #[inline]
    fn poll_take<R>(
        &self,
        cx: &mut Context<'_>,
        ticket: &mut Option<Ticket>,
        limit: usize,
        mut lanes: Option<Lanes<'_>>,
        take: impl FnOnce(&mut Inner<T>, usize, Option<&mut Vec<u32>>) -> R,
    ) -> Poll<Option<R>> {
        // Likely to wait: clone the waker now, with no lock held, not in a second turn.
        let mut spare = self.is_empty().then(|| cx.waker().clone());
        let stuck_ends = lanes.as_ref().is_some_and(|lanes| lanes.filling);
        // Terminates: the second turn brings the waker clone the first asked for.
        loop {
            let mut after = WakeAfterUnlock::default();
            let mut inner = self.lock();
            // Keyed: the lanes of the unit whose work is done are released in the same
            // critical section as the next take (once: they are cleared).
            let freed = match lanes.as_mut() {
                Some(lanes) if !lanes.filling => self.release_locked(&mut inner, lanes.held),
                _ => 0,
            };
            if inner.halted {
                after.leave(inner.poppers.leave(ticket));
                drop(inner);
                after.wake();
                return Poll::Ready(None);
            }
            if !inner.can_take() {
                if inner.buf.is_empty() {
                    if let Some(timed) = inner.timed() {
                        timed.on_empty();
                    }
                }
                // Keyed, items of busy keys may be left: their release wakes this line. But a
                // batch being filled may hold those keys itself: with `stuck_ends` it ends
                // when an item of a key it holds waits, or no other item can come (closed,
                // or full with nothing to evict). Judged now, when it looks: a wake-up for a
                // full queue may find it no longer full once another worker took first.
                let stuck = stuck_ends
                    && (self.stuck(&inner)
                        || lanes
                            .as_ref()
                            .zip(inner.keys_ref())
                            .is_some_and(|(lanes, keys)| keys.any_queued(lanes.held)));
                if stuck || (self.is_closed() && inner.buf.is_empty()) {
                    // Empty is final (invariant 4).
                    after.leave(inner.poppers.leave(ticket));
                    drop(inner);
                    after.wake();
                    return Poll::Ready(None);
                }
                // A notified popper that finds nothing (another took the item) waits again.
                if inner.poppers.is_notified(*ticket) {
                    inner.poppers.leave(ticket);
                }
                match after.wait::<()>(inner.poppers.wait(ticket, cx.waker(), &mut spare)) {
                    Step::NeedsWaker => {
                        drop(inner);
                        spare = Some(cx.waker().clone());
                        continue;
                    }
                    _ => {
                        drop(inner);
                        after.wake();
                        return Poll::Pending;
                    }
                }
            }
            after.leave(inner.poppers.leave(ticket));
            // Bounded by the data: at most what the buffer holds.
            let before = inner.buf.len();
            let taken = take(
                &mut inner,
                limit.clamp(1, before),
                lanes.map(|lanes| lanes.held),
            );
            let removed = before - inner.buf.len();
            // Each item the release let run reaches a popper, but the one this take served
            // (if it served another, a popper woken for that one finds these).
            for _ in 0..freed.saturating_sub(usize::from(removed > 0)) {
                match inner.poppers.has_waiting() {
                    true => after.add(inner.poppers.notify_one()),
                    false => break,
                }
            }
            // Relaxed: a progress hint for overloaded producers; the lock orders the buffer.
            self.copies.0.pops.store(inner.popped, Ordering::Relaxed);
            self.after_change(&mut inner, &mut after);
            // One freed slot, one waiting producer (invariant 3); bounded by `removed`.
            for _ in 0..removed {
                match self.grant_room(&mut inner) {
                    Some(waker) => after.add(Some(waker)),
                    None => break,
                }
            }
            // Keyed, poppers may wait after close for items of busy keys: the take that
            // empties a closed queue tells them all that empty is final (invariant 4).
            if inner.buf.is_empty() && self.is_closed() && inner.keys_ref().is_some() {
                for waker in inner.poppers.notify_all() {
                    after.add(Some(waker));
                }
            }
            drop(inner);
            after.wake();
            return Poll::Ready(Some(taken));
        }
    }

    /// Takes the oldest item, or joins the poppers' line: [`Pop`]'s poll, and the stream's.
    #[inline]
    pub(crate) fn poll_pop(
        &self,
        cx: &mut Context<'_>,
        ticket: &mut Option<Ticket>,
    ) -> Poll<Option<T>> {
        self.poll_take(cx, ticket, 1, None, |inner, _, _| inner.take_one())
            .map(Option::flatten)
    }

    /// A popper's ticket given back by a pop that is dropped: a wake-up it received and did
    /// not use goes to the next waiting popper while items are left (invariant 2).
    pub(crate) fn leave_poppers(&self, ticket: &mut Option<Ticket>) {
        let mut after = WakeAfterUnlock::default();
        let mut inner = self.lock();
        match inner.poppers.leave(ticket) {
            Some(Left::Notified) if inner.can_take() => {
                after.add(inner.poppers.notify_one());
            }
            left => after.leave(left),
        }
        drop(inner);
        after.wake();
    }

    /// Closes the queue. Returns `true` if this call closed it.
    ///
    /// Later pushes return [`PushOutcome::Closed`]; items already queued stay poppable; every
    /// waiting popper and producer is woken at once.
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
        // Under the lock (invariant 4): a task that read the flag unset under it is in line.
        let mut inner = self.lock();
        // AcqRel: the Release half publishes the close to pushers; the previous value tells
        // which caller closed it, and the shed count it carries is final (invariant 5).
        let before = self.state.0.fetch_or(CLOSED, Ordering::AcqRel);
        if before & CLOSED != 0 {
            return false;
        }
        inner.shed_at_close = Some(before);
        let mut wakers = inner.poppers.notify_all();
        wakers.extend(inner.producers.notify_all());
        // The marks stop with intake, under the lock: no crossing follows the flag.
        if let Some(marks) = inner.extras.as_deref_mut().and_then(|x| x.marks.as_mut()) {
            wakers.push(marks.close());
        }
        drop(inner);
        for waker in wakers {
            waker.wake();
        }
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
        self.copies.0.len.load(Ordering::Relaxed)
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

    /// A snapshot of the queue's counters: accepted, shed, evicted, popped, length, peak
    /// length and time spent full.
    ///
    /// Taken under the buffer lock, so its fields agree with each other at one instant:
    /// `accepted == popped + evicted + expired + len` until items are removed by shutdown
    /// (`expired` is 0 but in a pipeline shedding by queue delay), and each
    /// counter, and `time_full`, never goes backwards from one snapshot to the next.
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
        self.stats_locked(&self.lock())
    }

    /// The counters, read under the buffer lock the caller holds.
    fn stats_locked(&self, inner: &Inner<T>) -> QueueStats {
        QueueStats {
            accepted: inner.accepted,
            // Invariant 5: once closed, the count the close stored; before, the live count
            // (Acquire: sheds counted without the lock before this instant).
            shed: inner
                .shed_at_close
                .unwrap_or_else(|| self.state.0.load(Ordering::Acquire) & !CLOSED),
            evicted: inner.evicted,
            expired: inner.timed_ref().map_or(0, |timed| timed.expired),
            superseded: inner.keys_ref().map_or(0, |keys| keys.superseded),
            popped: inner.popped,
            len: inner.buf.len(),
            peak_len: inner.meter.peak(),
            time_full: inner.meter.time_full(),
        }
    }

    /// Removes every item left in a closed queue, with the queue's counters as they stand
    /// once they are gone (final: nothing is accepted after close). The caller drops the
    /// items, after committing its counts: an item's `Drop` is user code.
    pub(crate) fn take_all(&self) -> (VecDeque<T>, QueueStats) {
        debug_assert!(self.is_closed());
        let mut wake = WakeAfterUnlock::default();
        let mut inner = self.lock();
        let left = std::mem::take(&mut inner.buf);
        if let Some(timed) = inner.timed() {
            timed.stamps.clear();
            timed.on_empty();
        }
        if let Some(keys) = inner.keys() {
            keys.clear();
            // Poppers waiting for items of busy keys: empty is final now (invariant 4).
            for waker in inner.poppers.notify_all() {
                wake.add(Some(waker));
            }
        }
        self.after_change(&mut inner, &mut wake);
        drop(inner);
        wake.wake();
        (left, self.stats())
    }

    /// Takes the buffer lock (see the module's notes on it).
    fn lock(&self) -> BufferGuard<'_, Inner<T>> {
        self.inner.lock()
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

/// A value on a cache line of its own (128 bytes covers adjacent-line prefetching), so that
/// the producers hammering it under overload do not also invalidate the lines the poppers use.
#[derive(Debug)]
#[repr(align(128))]
struct CacheLine<T>(T);
