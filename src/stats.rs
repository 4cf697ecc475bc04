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

/// The queue's gauges: peak length and time spent full. Written under the buffer lock, read
/// without it.
#[derive(Debug)]
pub(crate) struct Meter {
    epoch: Instant,
    peak: AtomicUsize,
    /// When the queue last became full, in nanoseconds since `epoch`, plus one; 0 when it is
    /// not full.
    full_since: AtomicU64,
    /// Nanoseconds spent full in finished spells.
    full_total: AtomicU64,
}

impl Meter {
    pub(crate) fn new() -> Meter {
        Meter {
            epoch: Instant::now(),
            peak: AtomicUsize::new(0),
            full_since: AtomicU64::new(0),
            full_total: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        // Saturates after 584 years.
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Under the buffer lock, after adding items: `len` is the new length. Relaxed, in this
    /// and the other writers: the lock orders the writes, and readers want a snapshot.
    pub(crate) fn after_push(&self, len: usize, capacity: usize) {
        self.peak.fetch_max(len, Ordering::Relaxed);
        if len == capacity {
            self.full_since.store(self.now() + 1, Ordering::Relaxed);
        }
    }

    /// Under the buffer lock, before removing items: `len` is the length before.
    pub(crate) fn before_pop(&self, len: usize, capacity: usize) {
        if len == capacity {
            let since = self.full_since.swap(0, Ordering::Relaxed);
            if since != 0 {
                let spell = self.now().saturating_sub(since - 1);
                self.full_total.fetch_add(spell, Ordering::Relaxed);
            }
        }
    }

    pub(crate) fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    pub(crate) fn time_full(&self) -> Duration {
        let mut total = self.full_total.load(Ordering::Relaxed);
        let since = self.full_since.load(Ordering::Relaxed);
        if since != 0 {
            total += self.now().saturating_sub(since - 1);
        }
        Duration::from_nanos(total)
    }
}
