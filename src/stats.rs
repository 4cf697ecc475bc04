//! Live counters: what a queue and a pipeline have done so far, readable while they run.

use std::time::{Duration, Instant};

use crate::sync::{AtomicU64, AtomicUsize, Ordering};

/// A snapshot of a [`Queue`](crate::Queue)'s counters, from [`Queue::stats`](crate::Queue::stats).
///
/// Each field is read on its own, without stopping the queue, so a snapshot taken while
/// producers run may be a few items apart between fields.
///
/// # Examples
///
/// ```
/// use backpressure_pipeline::{Policy, Queue};
///
/// let queue = Queue::new(2, Policy::DropNewest)?;
/// for i in 0..5 {
///     let _ = queue.try_push(i);
/// }
/// let stats = queue.stats();
/// assert_eq!((stats.accepted, stats.shed, stats.evicted), (2, 3, 0));
/// assert_eq!((stats.len, stats.peak_len), (2, 2));
/// # Ok::<(), backpressure_pipeline::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueStats {
    /// Items taken into the queue (under `DropOldest`, including those that evicted another).
    pub accepted: u64,
    /// Incoming items shed because the queue was full (`DropNewest`).
    pub shed: u64,
    /// Buffered items evicted to make room (`DropOldest`).
    pub evicted: u64,
    /// Items taken out by `pop`, `pop_many` or the stream.
    pub popped: u64,
    /// Items in the queue now.
    pub len: usize,
    /// The most items the queue has held at once.
    pub peak_len: usize,
    /// How long the queue has been full, in total.
    pub time_full: Duration,
}

/// A snapshot of a [`Pipeline`](crate::Pipeline)'s counters while it runs, from
/// [`Pipeline::stats`](crate::Pipeline::stats) or [`Producer::stats`](crate::Producer::stats).
///
/// The same counters as the final [`Report`](crate::Report), read live: each field on its own,
/// so a snapshot taken under load may be a few items apart between fields.
///
/// # Examples
///
/// ```
/// use backpressure_pipeline::{Pipeline, Policy, SmolSpawner};
///
/// # smol::block_on(async {
/// let pipeline = Pipeline::builder(4, Policy::Block).spawn(SmolSpawner::new(), |_: u8| async {})?;
/// for i in 0..10 {
///     let _ = pipeline.push(i).await;
/// }
/// let stats = pipeline.stats();
/// assert_eq!(stats.produced, 10);
/// assert!(stats.peak_depth <= 4);
/// # Ok::<(), backpressure_pipeline::BuildError>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Items pushed while the pipeline was open: accepted, or shed by the policy.
    pub produced: u64,
    /// Items whose worker future completed.
    pub processed: u64,
    /// Items discarded by the policy (shed or evicted).
    pub dropped: u64,
    /// Items whose worker future panicked.
    pub panicked: u64,
    /// Items waiting in the queue now.
    pub depth: usize,
    /// The most items the queue has held at once.
    pub peak_depth: usize,
    /// How long the queue has been full, in total.
    pub time_full: Duration,
}

/// A full spell's edge, found under the buffer lock and timed after it is released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub(crate) enum Edge {
    None,
    /// The queue became full.
    Full,
    /// The queue stopped being full.
    Room,
}

/// The queue's gauges: peak length and time spent full.
///
/// The edges of a full spell are found under the buffer lock, but the clock is read after the
/// lock is released, so that no `Instant::now()` lengthens the critical section. Time spent
/// full is then the sum of the spells' end times minus the sum of their start times (plus
/// the open spell's age): sums do not care in which order the edges are recorded. A reader
/// may see an edge found but not yet recorded, so a snapshot can be off by one spell's
/// scheduling delay.
#[derive(Debug)]
pub(crate) struct Meter {
    epoch: Instant,
    /// Written only under the buffer lock.
    peak: AtomicUsize,
    /// Full spells started and ended, as recorded.
    started: AtomicU64,
    ended: AtomicU64,
    /// Sums of the recorded start and end times, in nanoseconds since `epoch`.
    start_sum: AtomicU64,
    end_sum: AtomicU64,
}

impl Meter {
    pub(crate) fn new() -> Meter {
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
        // Saturates after 584 years.
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Under the buffer lock, after adding items: `len` is the new length.
    pub(crate) fn after_push(&self, len: usize, capacity: usize) -> Edge {
        // Relaxed: written only under the lock, which orders the writes; a plain load and
        // store, not a read-modify-write.
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
    pub(crate) fn before_pop(&self, len: usize, capacity: usize) -> Edge {
        if len == capacity {
            Edge::Room
        } else {
            Edge::None
        }
    }

    /// After the lock is released: times an edge found under it.
    pub(crate) fn record(&self, edge: Edge) {
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

    pub(crate) fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    pub(crate) fn time_full(&self) -> Duration {
        // Relaxed: a snapshot. Counts first, so that an open spell is only counted open if
        // its start is recorded.
        let ended = self.ended.load(Ordering::Relaxed);
        let started = self.started.load(Ordering::Relaxed);
        let end_sum = self.end_sum.load(Ordering::Relaxed);
        let start_sum = self.start_sum.load(Ordering::Relaxed);
        let open = started.saturating_sub(ended);
        let total = (u128::from(end_sum) + u128::from(open) * u128::from(self.now()))
            .saturating_sub(u128::from(start_sum));
        let total = u64::try_from(total).unwrap_or(u64::MAX).min(self.now());
        Duration::from_nanos(total)
    }
}
