//! The producer side: the state shared by the pipeline, its producers and its workers, and
//! the cloneable [`Producer`] handle.

use std::fmt;
use std::sync::{Arc, Mutex};

use super::invoke::catch_quietly_sync;
use super::ledger::{Fates, Ledger};
use super::stop::Parent;
use super::worker::{drop_each, drop_quietly, lock};
use super::StopCause;
use crate::cancel::CancellationToken;
use crate::delay::Expired;
use crate::policy::PushOutcome;
use crate::queue::Queue;
use crate::spawner::Spawner;
use crate::stats::Stats;
use crate::sync::{AtomicBool, AtomicU8, AtomicUsize, Ordering};

/// The hook called with each shed or evicted item.
pub(super) type ShedHook<T> = Box<dyn Fn(&T) + Send + Sync>;

/// The hook handed each item shed at the queue's exit, with the reason.
pub(super) type ExpiredHook<T> = Box<dyn Fn(T, Expired) + Send + Sync>;

pub(super) struct Shared<T> {
    pub(super) queue: Queue<T>,
    /// Cancelled to stop intake: by shutdown, by the parent, or by dropping the pipeline.
    pub(super) stop: CancellationToken,
    /// A parent future, if the parent is one.
    pub(super) parent: Parent,
    /// Cancelled when the deadline passes: workers take no new item.
    pub(super) worker_token: CancellationToken,
    /// Cancelled by the first worker to find the queue closed and empty (for good): a
    /// worker still waiting to start has nothing left to do.
    pub(super) drained: CancellationToken,
    /// What the workers did with the items they took.
    pub(super) ledger: Ledger,
    /// Each worker's items (one, or a batch) waiting for a retry, where shutdown can hand
    /// them back; empty when none wait.
    parked: Box<[Mutex<Vec<T>>]>,
    /// Whether parked items can still be handed back: cleared when shutdown has taken the
    /// leftovers, or the pipeline is dropped; a worker that parks after that (it was aborted
    /// late, or is unresponsive) drops its items, which the report counted in flight.
    parking_open: AtomicBool,
    /// Workers that gave up building their state.
    not_started: AtomicUsize,
    pub(super) spawner: Arc<dyn Spawner>,
    pub(super) on_shed: Option<ShedHook<T>>,
    pub(super) on_expired: Option<ExpiredHook<T>>,
    /// The pipeline's name (its `Debug`, and the metrics' label).
    pub(super) name: String,
    /// What stopped the pipeline first (`StopCause` as `cause_code`; 0 until then).
    cause: AtomicU8,
    #[cfg(feature = "tracing")]
    pub(super) shed_log: crate::shed_log::ShedLog,
}

impl<T> Shared<T> {
    pub(super) fn new(
        queue: Queue<T>,
        stop: CancellationToken,
        parent: Parent,
        worker_token: CancellationToken,
        workers: usize,
        spawner: Arc<dyn Spawner>,
        on_shed: Option<ShedHook<T>>,
    ) -> Shared<T> {
        Shared {
            queue,
            stop,
            parent,
            worker_token,
            drained: CancellationToken::new(),
            ledger: Ledger::new(workers),
            parked: (0..workers).map(|_| Mutex::new(Vec::new())).collect(),
            parking_open: AtomicBool::new(true),
            not_started: AtomicUsize::new(0),
            spawner,
            on_shed,
            on_expired: None,
            name: String::new(),
            cause: AtomicU8::new(0),
            #[cfg(feature = "tracing")]
            shed_log: crate::shed_log::ShedLog::new(),
        }
    }

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

    #[track_caller]
    pub(super) fn push_blocking(&self, item: T) -> PushOutcome<T> {
        let outcome = self.queue.push_blocking(item);
        self.observe(&outcome);
        outcome
    }

    /// A stop from inside: a panic under [`OnPanic::StopPipeline`](super::OnPanic), or no
    /// worker able to start. Stop intake, close the queue, and tell the workers to take no
    /// new item. Shutdown then finds them gone.
    pub(super) fn stop_with(&self, cause: StopCause) {
        self.set_cause(cause);
        // The workers first: once intake is seen stopped, no worker takes a new item.
        self.stop_workers();
        self.stop.cancel();
        self.queue.close();
    }

    /// Records what stopped the pipeline, unless something stopped it first.
    /// The workers take no new item: the worker token is cancelled (a worker checks it
    /// between items, and its waits end), and the queue's takes end at once, so that a
    /// worker waiting for an item of a busy key does not take it once the key is freed.
    pub(super) fn stop_workers(&self) {
        // Takes end first: a worker the token stops may free a key (its lease), and one
        // waiting for that key's item must not take it.
        self.queue.halt();
        self.worker_token.cancel();
    }

    pub(super) fn set_cause(&self, cause: StopCause) {
        let code = match cause {
            StopCause::Shutdown => 1,
            StopCause::External => 2,
            StopCause::Panic => 3,
            StopCause::NoWorkers => 4,
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
            4 => Some(StopCause::NoWorkers),
            _ => None,
        }
    }

    /// Counts a worker that gave up starting; true if it was the last one that could (there
    /// is one parking slot per worker).
    pub(super) fn not_started(&self) -> bool {
        // AcqRel: the last worker to give up sees every other's count.
        self.not_started.fetch_add(1, Ordering::AcqRel) + 1 == self.parked.len()
    }

    /// Puts worker `index`'s items aside while they wait for a retry, or while it is
    /// aborted with a batch being filled; once the parking is closed, drops them instead.
    pub(super) fn park(&self, index: usize, items: Vec<T>) {
        let mut slot = lock(&self.parked[index]);
        // Read under the slot's lock: `take_parked` closes the parking before it takes
        // each slot's lock, so an item is either taken by it or dropped here, never left.
        // Relaxed: the slot's mutex orders it.
        if !self.parking_open.load(Ordering::Relaxed) {
            drop(slot);
            // Their `Drop` is user code: outside the lock, each on its own, and quietly.
            drop_quietly(drop_each(items));
            return;
        }
        debug_assert!(slot.is_empty(), "a worker parks one unit at a time");
        *slot = items;
    }

    /// Takes worker `index`'s parked items back, unless shutdown has taken them.
    pub(super) fn unpark(&self, index: usize) -> Option<Vec<T>> {
        let items = std::mem::take(&mut *lock(&self.parked[index]));
        (!items.is_empty()).then_some(items)
    }

    /// Takes every parked item, for shutdown to hand back (by worker, each in its order),
    /// and closes the parking: items parked later are dropped.
    pub(super) fn take_parked(&self) -> Vec<T> {
        // Relaxed: each slot's mutex, taken below, orders it before a later `park`.
        self.parking_open.store(false, Ordering::Relaxed);
        self.parked
            .iter()
            .flat_map(|slot| std::mem::take(&mut *lock(slot)))
            .collect()
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

    /// Shows the items shed at the queue's exit (counted `expired` when taken) to the shed
    /// hook, then hands them to the expired hook, or drops them; in the worker's task, with no lock held. A panic in the hook or in an
    /// item's `Drop` is caught: the worker goes on, and the items are counted either way.
    pub(super) fn expire(&self, shed: Vec<(T, Expired)>) {
        if let Some(hook) = &self.on_shed {
            for (item, _) in &shed {
                catch_quietly_sync(|| hook(item));
            }
        }
        match &self.on_expired {
            Some(hook) => {
                for (item, why) in shed {
                    catch_quietly_sync(|| hook(item, why));
                }
            }
            None => drop_quietly(drop_each(shed)),
        }
    }

    /// Every fate so far. The workers' counters first, then the queue's: an item counted
    /// processed was popped before, so no snapshot shows more settled than popped.
    pub(super) fn fates(&self) -> Fates {
        let workers = self.ledger.counts();
        Fates {
            queue: self.queue.stats(),
            workers,
        }
    }

    pub(super) fn stats(&self) -> Stats {
        // The workers' counters first, then the queue's with its delays in one look (as
        // `fates`).
        let workers = self.ledger.counts();
        let (queue, delays) = self.queue.snapshot();
        let mut stats = Fates { queue, workers }.stats();
        stats.oldest_age = delays.oldest_age;
        stats.queue_delay = delays.histogram;
        stats.overloaded = delays.overloaded;
        stats
    }

    /// Publishes a snapshot through the `metrics` facade (`export.rs`).
    #[cfg(feature = "metrics")]
    pub(super) fn record_metrics(&self) {
        let level = self.queue.pressure().map(|pressure| pressure.level());
        crate::export::record(&self.name, &self.stats(), level);
    }

    /// Whether items are left to process: in the queue, or in a worker's hands.
    pub(super) fn backlog_left(&self) -> bool {
        let fates = self.fates();
        fates.queue.len > 0 || fates.unsettled() > 0
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

    /// Pushes an item from a plain thread, blocking it while the queue is full under
    /// [`Policy::Block`](crate::Policy::Block); as
    /// [`Pipeline::push_blocking`](crate::Pipeline::push_blocking). Never call it from async
    /// code.
    ///
    /// # Panics
    ///
    /// With the `tokio` feature, under [`Policy::Block`](crate::Policy::Block), when called
    /// on a thread that is running a tokio runtime; as
    /// [`Pipeline::push_blocking`](crate::Pipeline::push_blocking).
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{Pipeline, Policy, SmolSpawner};
    ///
    /// # smol::block_on(async {
    /// let pipeline = Pipeline::builder(1, Policy::Block).spawn(SmolSpawner::new(), |_: u8| async {})?;
    /// let producer = pipeline.producer();
    /// let sensor = std::thread::spawn(move || {
    ///     for sample in 0..10 {
    ///         assert!(producer.push_blocking(sample).is_accepted());
    ///     }
    /// });
    /// # let _ = smol::unblock(move || sensor.join().unwrap()).await;
    /// assert_eq!(pipeline.shutdown().await.processed, 10);
    /// # Ok::<(), backpressure_pipeline::BuildError>(())
    /// # }).unwrap();
    /// ```
    #[track_caller]
    pub fn push_blocking(&self, item: T) -> PushOutcome<T> {
        self.shared.push_blocking(item)
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

    /// A watcher of the queue's pressure level, if
    /// [`watermarks`](crate::PipelineBuilder::watermarks) were configured; as
    /// [`Pipeline::pressure`](crate::Pipeline::pressure). A producer reading from a socket or
    /// a broker can pause while the level is high.
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{Pipeline, Policy, PressureLevel, SmolSpawner};
    ///
    /// # smol::block_on(async {
    /// let pipeline = Pipeline::builder(100, Policy::Block)
    ///     .watermarks(80, 20)
    ///     .spawn(SmolSpawner::new(), |_: u8| async {})?;
    /// let producer = pipeline.producer();
    /// assert_eq!(producer.pressure().unwrap().level(), PressureLevel::Normal);
    /// # pipeline.shutdown().await;
    /// # Ok::<(), backpressure_pipeline::BuildError>(())
    /// # }).unwrap();
    /// ```
    pub fn pressure(&self) -> Option<crate::Pressure> {
        self.shared.queue.pressure()
    }

    /// Publishes a snapshot of the counters through the `metrics` facade; as
    /// [`Pipeline::record_metrics`](crate::Pipeline::record_metrics) (feature `metrics`), so
    /// a monitoring task needs only a producer handle.
    #[cfg(feature = "metrics")]
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub fn record_metrics(&self) {
        self.shared.record_metrics();
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
