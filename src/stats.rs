//! Live counters: what a queue and a pipeline have done so far, readable while they run.

use std::time::{Duration, Instant};

use crate::delay::DelayHistogram;

/// A snapshot of a [`Queue`](crate::Queue)'s counters, from [`Queue::stats`](crate::Queue::stats).
///
/// Taken under the queue's lock: the fields agree with each other at one instant, and no
/// counter (nor `time_full`) goes backwards from one snapshot to the next.
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
    /// Items shed at the exit for their queue delay (a pipeline's
    /// [`max_age`](crate::PipelineBuilder::max_age) or [`codel`](crate::PipelineBuilder::codel));
    /// 0 for a queue of your own.
    pub expired: u64,
    /// Pending items replaced by a newer item of their key (a pipeline that
    /// [`coalesce`](crate::PipelineBuilder::coalesce)s); 0 otherwise.
    pub superseded: u64,
    /// Items taken out by `pop`, `pop_many` or the stream (or served to a pipeline's workers).
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
/// The same counters as the final [`Report`](crate::Report), read live. The workers'
/// counters are read first and the queue's after them, in one snapshot under its lock: no
/// counter goes backwards, and `processed + failed + panicked` never exceeds the items the
/// workers have taken, so `produced >= processed + failed + dropped + expired + panicked`
/// in every snapshot. The queue-delay fields (`oldest_age`, `queue_delay`, `overloaded`) are
/// read in the same look under the queue's lock as its counters.
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
    /// Items whose work succeeded.
    pub processed: u64,
    /// Items whose work failed for good (after their last attempt).
    pub failed: u64,
    /// Items discarded by the policy (shed or evicted).
    pub dropped: u64,
    /// Items shed at the queue's exit for their queue delay
    /// ([`max_age`](crate::PipelineBuilder::max_age), [`codel`](crate::PipelineBuilder::codel)).
    pub expired: u64,
    /// Pending items replaced by a newer item of their key and handed back
    /// ([`coalesce`](crate::PipelineBuilder::coalesce)); 0 otherwise.
    pub superseded: u64,
    /// Items whose work panicked.
    pub panicked: u64,
    /// Failed attempts followed by a wait for another one (an item retried twice counts 2).
    pub retried: u64,
    /// Worker states rebuilt after a panic, under [`OnPanic::Restart`](crate::OnPanic::Restart).
    pub restarts: u64,
    /// Items waiting in the queue now.
    pub depth: usize,
    /// The most items the queue has held at once.
    pub peak_depth: usize,
    /// How long the queue has been full, in total.
    pub time_full: Duration,
    /// How long the oldest item in the queue has waited (zero when it is empty), on the
    /// spawner's clock. `None` unless items are stamped: a pipeline built with
    /// [`max_age`](crate::PipelineBuilder::max_age), [`codel`](crate::PipelineBuilder::codel)
    /// or [`measure_queue_delay`](crate::PipelineBuilder::measure_queue_delay).
    pub oldest_age: Option<Duration>,
    /// The queue delays of the items served to the workers so far (when items are stamped,
    /// as `oldest_age`).
    pub queue_delay: Option<DelayHistogram>,
    /// Whether [`codel`](crate::PipelineBuilder::codel) is in its dropping state now: the
    /// queue delay has stayed above target for an interval. Always `false` without CoDel.
    pub overloaded: bool,
}

/// The queue's gauges, kept under the buffer lock: peak length and time spent full.
///
/// The clock is read only at the edges of a full spell (the length reaching or leaving the
/// capacity), under the lock, so a snapshot taken under the same lock is exact and
/// `time_full` never goes backwards.
#[derive(Debug)]
pub(crate) struct Meter {
    peak: usize,
    /// When the current full spell began.
    full_since: Option<Instant>,
    /// The length of the full spells that have ended.
    full_total: Duration,
}

impl Meter {
    pub(crate) fn new() -> Meter {
        Meter {
            peak: 0,
            full_since: None,
            full_total: Duration::ZERO,
        }
    }

    /// Under the buffer lock, after the length changed to `len`.
    #[inline]
    pub(crate) fn update(&mut self, len: usize, capacity: usize) {
        if len > self.peak {
            self.peak = len;
        }
        if len >= capacity {
            if self.full_since.is_none() {
                self.full_since = Some(Instant::now());
            }
        } else if let Some(since) = self.full_since.take() {
            self.full_total += since.elapsed();
        }
    }

    pub(crate) fn peak(&self) -> usize {
        self.peak
    }

    pub(crate) fn time_full(&self) -> Duration {
        self.full_total
            + self
                .full_since
                .map_or(Duration::ZERO, |since| since.elapsed())
    }
}
