//! How a worker takes its work from the queue: one item at a time, or a batch that closes
//! at a size or after a wait. From a timed queue (a maximum age or CoDel at the exit) a take
//! may also shed items on the way; they go to the expired hook at once, in the same poll, so
//! a worker aborted at an `.await` never holds one.

use std::future::Future;
use std::pin::pin;
use std::time::Duration;

use futures_util::future::{self, Either};

use super::producer::Shared;
use crate::queue::{Queue, TakeTimed};

/// The lanes of the keyed items a worker holds, released when their work is done (or when
/// the worker is dropped: an abort), so that the next item of each key may run.
pub(super) struct Lease<'a, T> {
    queue: &'a Queue<T>,
    pub(super) lanes: Vec<u32>,
}

impl<'a, T> Lease<'a, T> {
    pub(super) fn new(queue: &'a Queue<T>) -> Self {
        Lease {
            queue,
            lanes: Vec::new(),
        }
    }

    /// The held items' work is done.
    pub(super) fn release(&mut self) {
        if !self.lanes.is_empty() {
            self.queue.release(&mut self.lanes);
        }
    }
}

impl<T> Drop for Lease<'_, T> {
    fn drop(&mut self) {
        self.release();
    }
}

/// Up to `limit` items (at least one), waiting for the first; empty only when the queue is
/// closed and empty. Items shed at a timed queue's exit on the way go to the expired hook;
/// the lanes of keyed items served go to `lanes`.
///
/// Cancel safe: items are taken in the poll that returns them (the shed ones handed on, and
/// the lanes added, in that same poll).
/// With `filling` (a batch being filled), it also ends empty when a keyed queue can serve
/// nothing now and no new item can come in (see `TakeTimed::filling`).
fn take_some<'a, T: Send + 'static>(
    shared: &'a Shared<T>,
    limit: usize,
    filling: bool,
    lanes: &'a mut Vec<u32>,
) -> impl Future<Output = Vec<T>> + Send + 'a {
    if !shared.queue.is_timed() && !shared.queue.is_keyed() {
        return Either::Left(shared.queue.pop_many(limit));
    }
    Either::Right(async move {
        // Ends: each turn takes at least one item out of a bounded queue, or returns.
        loop {
            let mut take = TakeTimed::<T, Vec<T>>::new(&shared.queue, limit);
            if shared.queue.is_keyed() {
                take = take.keyed(lanes, filling);
            }
            let Some(taken) = take.await else {
                return Vec::new();
            };
            shared.expire(taken.shed);
            if !taken.served.is_empty() {
                return taken.served;
            }
        }
    })
}

/// A way of taking work from the queue, and the unit it takes.
pub(super) trait Source<T>: Send + Sync + 'static {
    /// What one call of the work gets: an item, or a batch.
    type Unit: Send + 'static;

    /// The next unit for worker `index`; `None` once the queue is closed and empty. Items
    /// it holds while it waits (a batch being filled) go to the worker's parking slot if it
    /// is dropped (an abort), to be handed back. The lanes of keyed items taken are added
    /// to `lanes`, for the worker to release when their work is done.
    fn take<'a>(
        &'a self,
        shared: &'a Shared<T>,
        index: usize,
        lanes: &'a mut Vec<u32>,
    ) -> impl Future<Output = Option<Self::Unit>> + Send + 'a;

    /// How many items the unit holds (each counts in the ledger).
    fn count(unit: &Self::Unit) -> u64;

    /// The unit as items, to park it (or hand it back).
    fn into_items(unit: Self::Unit) -> Vec<T>;

    /// A parked unit, back from its items.
    fn from_items(items: Vec<T>) -> Self::Unit;
}

/// One item at a time.
#[derive(Debug)]
pub(super) struct One;

impl<T: Send + 'static> Source<T> for One {
    type Unit = T;

    fn take<'a>(
        &'a self,
        shared: &'a Shared<T>,
        _: usize,
        lanes: &'a mut Vec<u32>,
    ) -> impl Future<Output = Option<T>> + Send + 'a {
        // Holds nothing while it waits: an item is taken in the poll that returns it.
        if !shared.queue.is_timed() && !shared.queue.is_keyed() {
            return Either::Left(shared.queue.pop());
        }
        // Ends: each turn takes at least one item out of a bounded queue, or returns.
        Either::Right(async move {
            loop {
                let mut take = TakeTimed::<T, Option<T>>::new(&shared.queue, 1);
                if shared.queue.is_keyed() {
                    take = take.keyed(lanes, false);
                }
                let taken = take.await?;
                shared.expire(taken.shed);
                if taken.served.is_some() {
                    return taken.served;
                }
            }
        })
    }

    fn count(_: &T) -> u64 {
        1
    }

    fn into_items(unit: T) -> Vec<T> {
        vec![unit]
    }

    fn from_items(mut items: Vec<T>) -> T {
        // A parked unit of `One` is one item (the pipeline's invariant 1).
        items.pop().expect("one parked item")
    }
}

/// How a batch closes, for [`PipelineBuilder::spawn_batched`](crate::PipelineBuilder::spawn_batched):
/// when it holds `max_items` items, or `max_wait` after its first item was taken, whichever
/// comes first. A batch is never empty.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use backpressure_pipeline::Batch;
///
/// let batch = Batch::new(64, Duration::from_millis(5));
/// assert_eq!((batch.max_items(), batch.max_wait()), (64, Duration::from_millis(5)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Batch {
    max_items: usize,
    max_wait: Duration,
}

impl Batch {
    /// Batches of at most `max_items` items (at least 1, checked when the pipeline is built:
    /// [`ConfigError::ZeroBatch`](crate::ConfigError::ZeroBatch)), each closed at most
    /// `max_wait` after its first item was taken. A zero `max_wait` takes what the queue
    /// holds at once, as [`Queue::pop_many`](crate::Queue::pop_many) does.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use backpressure_pipeline::Batch;
    ///
    /// let size_only = Batch::new(16, Duration::MAX); // waits for 16 (or the drain)
    /// assert_eq!(size_only.max_items(), 16);
    /// ```
    pub const fn new(max_items: usize, max_wait: Duration) -> Batch {
        Batch {
            max_items,
            max_wait,
        }
    }

    /// The most items in a batch.
    pub const fn max_items(&self) -> usize {
        self.max_items
    }

    /// The longest a batch waits for more items after its first one.
    pub const fn max_wait(&self) -> Duration {
        self.max_wait
    }
}

/// A batch being filled: parked in its worker's slot if dropped before it is delivered.
struct Filling<'a, T> {
    shared: &'a Shared<T>,
    index: usize,
    batch: Vec<T>,
}

impl<T> Drop for Filling<'_, T> {
    fn drop(&mut self) {
        if !self.batch.is_empty() {
            self.shared
                .park(self.index, std::mem::take(&mut self.batch));
        }
    }
}

impl<T: Send + 'static> Source<T> for Batch {
    type Unit = Vec<T>;

    async fn take(&self, shared: &Shared<T>, index: usize, lanes: &mut Vec<u32>) -> Option<Vec<T>> {
        // One lock for what the queue holds, up to the limit; it waits for the first item.
        let first = take_some(shared, self.max_items, false, lanes).await;
        if first.is_empty() {
            return None; // closed and empty
        }
        if self.max_wait.is_zero() || first.len() == self.max_items {
            return Some(first);
        }
        // Keyed: counted while it fills, so that a push of one of its keys ends the fill.
        let _fill = shared.queue.is_keyed().then(|| shared.queue.fill());
        // Held across the waits below: parked if this future is dropped (an abort at the
        // deadline), so that shutdown hands the items back.
        let mut filling = Filling {
            shared,
            index,
            batch: first,
        };
        let batch = &mut filling.batch;
        // `max_wait` counts from the first item, on the spawner's timer.
        let mut timer = shared.spawner.sleep(self.max_wait);
        // Ends: each turn adds at least one item, or breaks.
        while batch.len() < self.max_items {
            let more = pin!(take_some(shared, self.max_items - batch.len(), true, lanes));
            match future::select(more, &mut timer).await {
                // Empty only when the queue is closed and empty (close wakes this wait), or
                // keyed and stuck (`take_some`): deliver what there is at once, never after
                // waiting for the time.
                Either::Left((more, _)) if more.is_empty() => break,
                Either::Left((more, _)) => batch.extend(more),
                Either::Right(_) => break,
            }
        }
        Some(std::mem::take(batch))
    }

    fn count(unit: &Vec<T>) -> u64 {
        unit.len() as u64
    }

    fn into_items(unit: Vec<T>) -> Vec<T> {
        unit
    }

    fn from_items(items: Vec<T>) -> Vec<T> {
        items
    }
}
