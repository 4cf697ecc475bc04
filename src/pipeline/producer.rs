//! The producer side: the state shared by the pipeline, its producers and its workers, and
//! the cloneable [`Producer`] handle.

use std::fmt;
use std::sync::Arc;

use super::{OnPanic, StopCause};
use crate::cancel::CancellationToken;
use crate::policy::PushOutcome;
use crate::queue::Queue;
use crate::stats::{QueueStats, Stats};
use crate::sync::{AtomicU64, AtomicU8, Ordering};

/// The hook called with each shed or evicted item.
pub(super) type ShedHook<T> = Box<dyn Fn(&T) + Send + Sync>;

pub(super) struct Shared<T> {
    pub(super) queue: Queue<T>,
    /// Cancelled to stop intake: by shutdown, by the parent, or by dropping the pipeline.
    pub(super) stop: CancellationToken,
    /// Cancelled when the deadline passes: workers take no new item.
    pub(super) worker_token: CancellationToken,
    pub(super) processed: AtomicU64,
    pub(super) panicked: AtomicU64,
    pub(super) on_shed: Option<ShedHook<T>>,
    pub(super) on_panic: OnPanic,
    /// What stopped the pipeline first (`StopCause` as `cause_code`; 0 until then).
    pub(super) cause: AtomicU8,
    #[cfg(feature = "tracing")]
    pub(super) shed_log: crate::shed_log::ShedLog,
}

impl<T> Shared<T> {
    pub(super) async fn push(&self, item: T) -> PushOutcome<T> {
        let outcome = self.queue.push(item).await;
        self.observe(&outcome);
        outcome
    }

    pub(super) fn try_push(&self, item: T) -> PushOutcome<T> {
        let outcome = self.queue.try_push(item);
        self.observe(&outcome);
        outcome
    }

    /// The first panic under [`OnPanic::StopPipeline`]: stop intake, close the queue, and
    /// tell the workers to take no new item. Shutdown then finds them gone.
    pub(super) fn stop_on_panic(&self) {
        self.set_cause(StopCause::Panic);
        self.stop.cancel();
        self.worker_token.cancel();
        self.queue.close();
    }

    /// Records what stopped the pipeline, unless something stopped it first.
    pub(super) fn set_cause(&self, cause: StopCause) {
        let code = match cause {
            StopCause::Shutdown => 1,
            StopCause::External => 2,
            StopCause::Panic => 3,
        };
        // Relaxed: first writer wins, and the report reads it under the state lock after
        // shutdown's own write.
        let _ = self
            .cause
            .compare_exchange(0, code, Ordering::Relaxed, Ordering::Relaxed);
    }

    pub(super) fn cause(&self) -> Option<StopCause> {
        match self.cause.load(Ordering::Relaxed) {
            1 => Some(StopCause::Shutdown),
            2 => Some(StopCause::External),
            3 => Some(StopCause::Panic),
            _ => None,
        }
    }

    /// Makes loss visible beyond the returned item: the hook, and the log. Runs in the
    /// producer's task, after the queue's lock was released.
    fn observe(&self, outcome: &PushOutcome<T>) {
        match outcome {
            PushOutcome::Shed(item) | PushOutcome::Evicted(item) => {
                if let Some(hook) = &self.on_shed {
                    hook(item);
                }
                #[cfg(feature = "tracing")]
                self.shed_log.shed(&self.queue);
            }
            #[cfg(feature = "tracing")]
            PushOutcome::Accepted => self.shed_log.accepted(),
            _ => {}
        }
    }

    pub(super) fn stats(&self) -> Stats {
        // The workers' counters first, then the queue's: an item counted processed was
        // popped before, so the snapshot never shows more processed than popped.
        let (processed, panicked) = self.worker_counts();
        self.combine(&self.queue.stats(), processed, panicked)
    }

    /// The pipeline's counters around the queue's final ones (for the report, once the
    /// queue is closed and emptied: its counters no longer move).
    pub(super) fn stats_with(&self, queue: &QueueStats) -> Stats {
        let (processed, panicked) = self.worker_counts();
        self.combine(queue, processed, panicked)
    }

    fn worker_counts(&self) -> (u64, u64) {
        // Acquire: pairs with the workers' Release increments, which follow their pops; a
        // queue snapshot taken after these loads includes those pops.
        (
            self.processed.load(Ordering::Acquire),
            self.panicked.load(Ordering::Acquire),
        )
    }

    fn combine(&self, queue: &QueueStats, processed: u64, panicked: u64) -> Stats {
        Stats {
            produced: queue.accepted + queue.shed,
            processed,
            dropped: queue.shed + queue.evicted,
            panicked,
            depth: queue.len,
            peak_depth: queue.peak_len,
            time_full: queue.time_full,
        }
    }

    /// Whether items are left to process: in the queue, or in a worker's hands.
    pub(super) fn backlog_left(&self) -> bool {
        let (processed, panicked) = self.worker_counts();
        let queue = self.queue.stats();
        queue.len > 0 || queue.popped > processed + panicked
    }
}

/// A cloneable handle for producers: push into a [`Pipeline`](crate::Pipeline) from many
/// tasks without sharing the pipeline itself. Made by
/// [`Pipeline::producer`](crate::Pipeline::producer).
///
/// A producer does not keep the workers alive: once the pipeline is shut down or dropped,
/// pushes return [`PushOutcome::Closed`] with the item.
///
/// # Examples
///
/// ```
/// use backpressure_pipeline::{Pipeline, Policy, SmolSpawner};
///
/// # smol::block_on(async {
/// let pipeline = Pipeline::builder(8, Policy::Block).workers(2).spawn(SmolSpawner::new(), |_: u32| async {})?;
/// let tasks: Vec<_> = (0..4)
///     .map(|p| {
///         let producer = pipeline.producer();
///         smol::spawn(async move {
///             for i in 0..25 {
///                 let _ = producer.push(p * 100 + i).await;
///             }
///         })
///     })
///     .collect();
/// for task in tasks {
///     task.await;
/// }
/// assert_eq!(pipeline.shutdown().await.processed, 100);
/// # Ok::<(), backpressure_pipeline::BuildError>(())
/// # }).unwrap();
/// ```
pub struct Producer<T> {
    pub(super) shared: Arc<Shared<T>>,
}

impl<T> Producer<T> {
    /// Pushes an item, waiting for room only under [`Policy::Block`](crate::Policy::Block)
    /// (and yielding once under overload under the shedding policies); as
    /// [`Pipeline::push`](crate::Pipeline::push).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a push dropped before it completes never enqueued its item.
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{Pipeline, Policy, PushOutcome, SmolSpawner};
    ///
    /// # smol::block_on(async {
    /// let pipeline = Pipeline::builder(2, Policy::Block).spawn(SmolSpawner::new(), |_: u8| async {})?;
    /// let producer = pipeline.producer();
    /// assert_eq!(producer.push(1).await, PushOutcome::Accepted);
    /// pipeline.shutdown().await;
    /// assert_eq!(producer.push(2).await, PushOutcome::Closed(2));
    /// # Ok::<(), backpressure_pipeline::BuildError>(())
    /// # }).unwrap();
    /// ```
    pub async fn push(&self, item: T) -> PushOutcome<T> {
        self.shared.push(item).await
    }

    /// Pushes an item without waiting for room; as
    /// [`Pipeline::try_push`](crate::Pipeline::try_push), meant for synchronous producers.
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{Pipeline, Policy, SmolSpawner};
    ///
    /// # smol::block_on(async {
    /// let pipeline = Pipeline::builder(2, Policy::DropOldest).spawn(SmolSpawner::new(), |_: u8| async {})?;
    /// let producer = pipeline.producer();
    /// std::thread::spawn(move || assert!(producer.try_push(1).is_accepted())).join().unwrap();
    /// # Ok::<(), backpressure_pipeline::BuildError>(())
    /// # }).unwrap();
    /// ```
    pub fn try_push(&self, item: T) -> PushOutcome<T> {
        self.shared.try_push(item)
    }

    /// A live snapshot of the pipeline's counters.
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{Pipeline, Policy, SmolSpawner};
    ///
    /// # smol::block_on(async {
    /// let pipeline = Pipeline::builder(2, Policy::Block).spawn(SmolSpawner::new(), |_: u8| async {})?;
    /// let producer = pipeline.producer();
    /// let _ = producer.push(1).await;
    /// assert_eq!(producer.stats().produced, 1);
    /// # Ok::<(), backpressure_pipeline::BuildError>(())
    /// # }).unwrap();
    /// ```
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Whether intake has stopped.
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{Pipeline, Policy, SmolSpawner};
    ///
    /// # smol::block_on(async {
    /// let pipeline = Pipeline::builder(2, Policy::Block).spawn(SmolSpawner::new(), |_: u8| async {})?;
    /// let producer = pipeline.producer();
    /// drop(pipeline);
    /// assert!(producer.is_closed());
    /// # Ok::<(), backpressure_pipeline::BuildError>(())
    /// # }).unwrap();
    /// ```
    pub fn is_closed(&self) -> bool {
        self.shared.queue.is_closed()
    }
}

impl<T> Clone for Producer<T> {
    fn clone(&self) -> Producer<T> {
        Producer {
            shared: self.shared.clone(),
        }
    }
}

impl<T> fmt::Debug for Producer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer")
            .field("queue", &self.shared.queue)
            .finish_non_exhaustive()
    }
}
