//! The pipeline: a queue, N workers, a structured shutdown and its report.
//!
//! # Invariants
//!
//! 1. Every accepted item ends in exactly one place: popped by a worker (`popped`), evicted
//!    by the policy (`evicted`), or left in the queue at the end (`take_all`); the queue
//!    counts the first two under its lock, so the three add up even while an unresponsive
//!    worker still runs. A popped item then has one fate in the ledger (`ledger.rs`, whose
//!    sums are the law): processed, failed, panicked, lost in flight, or parked (waiting
//!    for a retry, or in a batch cut by an abort) and handed back at the end; what has none
//!    at the report is in an unresponsive worker's hands, lost in flight.
//! 2. Every spawned worker has an abort handle and sends its outcome over a oneshot only
//!    after its future has been dropped, so a joined worker holds nothing of the
//!    pipeline's. Outcomes are recorded where every `shutdown` call sees them.
//! 3. The state lock is never held across an `.await`: each `shutdown` call waits on its
//!    own, to instants recorded once (the first call's start, the first call to find the
//!    deadline passed, the abort), so a call kept without being polled holds up no other,
//!    and a resumed call keeps the bound. The report is computed once, under the state
//!    lock, after the queue is closed and every worker is joined or declared unresponsive;
//!    later calls return the same report.

mod builder;
mod invoke;
mod ledger;
mod producer;
mod report;
mod source;
mod stop;
mod worker;

use std::fmt;
use std::panic::resume_unwind;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use futures_util::future::{self, Either, FutureExt};

pub use builder::PipelineBuilder;
pub use invoke::{ErrorHooks, NoErrorHooks};
pub use producer::Producer;
pub use report::{BuildError, OnPanic, Report, StopCause};
pub use source::Batch;
pub use stop::StopSignal;

use crate::policy::{Policy, PushOutcome};
use crate::pressure::Pressure;
use crate::stats::Stats;
use crate::watchdog;
use ledger::Fates;
use producer::Shared;
use worker::{drop_each, Exit, Workers};

/// A bounded queue fed by producers and drained by N workers, with a structured shutdown.
///
/// Producers call [`push`](Pipeline::push) or [`try_push`](Pipeline::try_push) from any
/// number of tasks (share the pipeline with an `Arc`). [`shutdown`](Pipeline::shutdown)
/// stops intake, closes the queue, lets the workers drain it until the deadline, then
/// cancels the worker token, aborts stragglers, joins every worker and returns a
/// [`Report`] in which
/// `produced == processed + failed + dropped + expired + superseded + abandoned + panicked`;
/// [`take_leftovers`](Pipeline::take_leftovers) then hands back what was accepted but not
/// processed.
///
/// Dropping a pipeline without shutting it down aborts its workers: no task outlives it
/// for longer than its current poll.
///
/// # Examples
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use std::sync::Arc;
/// use backpressure_pipeline::{Pipeline, Policy, SmolSpawner};
///
/// # smol::block_on(async {
/// let sum = Arc::new(AtomicU64::new(0));
/// let pipeline = Pipeline::builder(16, Policy::Block).workers(4).spawn(SmolSpawner::new(), {
///     let sum = sum.clone();
///     move |n: u64| {
///         let sum = sum.clone();
///         async move {
///             sum.fetch_add(n, Ordering::Relaxed);
///         }
///     }
/// })?;
/// for n in 1..=100 {
///     assert!(pipeline.push(n).await.is_accepted()); // Block: waits, never sheds
/// }
/// let report = pipeline.shutdown().await;
/// assert_eq!((report.produced, report.processed), (100, 100));
/// assert!(report.is_conserved() && report.all_joined());
/// assert_eq!(sum.load(Ordering::Relaxed), 5050);
/// # Ok::<(), backpressure_pipeline::BuildError>(())
/// # }).unwrap();
/// ```
pub struct Pipeline<T> {
    shared: Arc<Shared<T>>,
    deadline: Duration,
    grace: Duration,
    unresponsive_after: Duration,
    workers: Workers,
    /// Never held across an `.await`: concurrent and resumed `shutdown` calls each wait on
    /// their own, on instants recorded here (invariant 3).
    state: Mutex<State<T>>,
}

struct State<T> {
    /// When the first `shutdown` call began; the deadline counts from here.
    begun: Option<Instant>,
    /// When a call first found the deadline passed with workers still running, and the
    /// waits that follow from there.
    overtime: Option<Overtime>,
    /// When the workers still running after the grace were aborted.
    aborted_at: Option<Instant>,
    /// Set if items were left when the deadline passed.
    deadline_exceeded: bool,
    report: Option<Report>,
    /// The items handed back, until [`Pipeline::take_leftovers`] takes them.
    leftovers: Vec<T>,
}

impl<T> Default for State<T> {
    fn default() -> State<T> {
        State {
            begun: None,
            overtime: None,
            aborted_at: None,
            deadline_exceeded: false,
            report: None,
            leftovers: Vec::new(),
        }
    }
}

/// The waits after the deadline, decided once by the first call to find it passed.
#[derive(Debug, Clone, Copy)]
struct Overtime {
    at: Instant,
    /// Before the abort: the grace (and half of `unresponsive_after` with nothing left).
    wait: Duration,
    /// After the abort, before naming the rest unresponsive.
    after_abort: Duration,
}

impl<T: Send + 'static> Pipeline<T> {
    /// Starts configuring a pipeline with a queue of `capacity` items and the `policy` it
    /// applies when full; both are required.
    ///
    /// The item type comes from the worker given to [`PipelineBuilder::spawn`].
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{Pipeline, Policy, SmolSpawner};
    ///
    /// # smol::block_on(async {
    /// let pipeline = Pipeline::builder(4, Policy::DropNewest)
    ///     .spawn(SmolSpawner::new(), |_: u8| async {})?;
    /// assert_eq!(pipeline.capacity(), 4);
    /// # Ok::<(), backpressure_pipeline::BuildError>(())
    /// # }).unwrap();
    /// ```
    pub fn builder(capacity: usize, policy: Policy) -> PipelineBuilder<T> {
        PipelineBuilder::new(capacity, policy)
    }
}

impl<T: Send + 'static> Pipeline<T> {
    /// Pushes an item, waiting for room only under [`Policy::Block`] (under the shedding
    /// policies it may yield once under overload, as [`Queue::push`](crate::Queue::push)
    /// describes, so that the workers are not starved).
    ///
    /// After the pipeline has stopped (shutdown began, or the parent fired), this returns
    /// [`PushOutcome::Closed`] with the item, which does not count as produced.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`Queue::push`](crate::Queue::push): a push dropped before it completes never enqueued
    /// its item.
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{Pipeline, Policy, PushOutcome, SmolSpawner};
    ///
    /// # smol::block_on(async {
    /// let pipeline = Pipeline::builder(4, Policy::Block).spawn(SmolSpawner::new(), |_: u8| async {})?;
    /// assert_eq!(pipeline.push(1).await, PushOutcome::Accepted);
    /// pipeline.shutdown().await;
    /// assert_eq!(pipeline.push(2).await, PushOutcome::Closed(2));
    /// # Ok::<(), backpressure_pipeline::BuildError>(())
    /// # }).unwrap();
    /// ```
    pub async fn push(&self, item: T) -> PushOutcome<T> {
        self.shared.push(item).await
    }

    /// Pushes an item without waiting for room; see [`Queue::try_push`](crate::Queue::try_push), which is meant for
    /// synchronous producers.
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{Pipeline, Policy, SmolSpawner};
    ///
    /// # smol::block_on(async {
    /// let pipeline = Pipeline::builder(4, Policy::DropOldest).spawn(SmolSpawner::new(), |_: u8| async {})?;
    /// assert!(pipeline.try_push(1).is_accepted());
    /// # Ok::<(), backpressure_pipeline::BuildError>(())
    /// # }).unwrap();
    /// ```
    pub fn try_push(&self, item: T) -> PushOutcome<T> {
        self.shared.try_push(item)
    }

    /// Pushes an item from a plain thread, blocking it while the queue is full under
    /// [`Policy::Block`] (back-pressure without an executor); under the shedding policies it
    /// never blocks. As [`Queue::push_blocking`](crate::Queue::push_blocking), like
    /// async-channel's `send_blocking`: after shutdown began it returns
    /// [`PushOutcome::Closed`] with the item, also to a thread blocked in it.
    ///
    /// Never call it from async code (a task on any runtime): it blocks the runtime's
    /// thread, and can deadlock one whose workers need that thread. From a tokio task, call
    /// it inside `tokio::task::spawn_blocking` (or `block_in_place`), or use
    /// [`push`](Pipeline::push)`.await`.
    ///
    /// # Panics
    ///
    /// With the `tokio` feature, under [`Policy::Block`], when called on a thread that is
    /// running a tokio runtime, with tokio's message ("Cannot start a runtime from within a
    /// runtime"), as [`Queue::push_blocking`](crate::Queue::push_blocking) says; the item is
    /// dropped with the panic.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use backpressure_pipeline::{Pipeline, Policy, SmolSpawner};
    ///
    /// # smol::block_on(async {
    /// let pipeline = Arc::new(Pipeline::builder(2, Policy::Block).spawn(SmolSpawner::new(), |_: u32| async {})?);
    /// let sensor = std::thread::spawn({
    ///     let pipeline = pipeline.clone();
    ///     move || {
    ///         for sample in 0..100 {
    ///             assert!(pipeline.push_blocking(sample).is_accepted());
    ///         }
    ///     }
    /// });
    /// # let _ = smol::unblock(move || sensor.join().unwrap()).await;
    /// assert_eq!(pipeline.shutdown().await.processed, 100);
    /// # Ok::<(), backpressure_pipeline::BuildError>(())
    /// # }).unwrap();
    /// ```
    #[track_caller]
    pub fn push_blocking(&self, item: T) -> PushOutcome<T> {
        self.shared.push_blocking(item)
    }

    /// A cloneable handle for producers; see [`Producer`].
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{Pipeline, Policy, SmolSpawner};
    ///
    /// # smol::block_on(async {
    /// let pipeline = Pipeline::builder(4, Policy::Block).spawn(SmolSpawner::new(), |_: u8| async {})?;
    /// let producer = pipeline.producer();
    /// assert!(producer.push(1).await.is_accepted());
    /// # Ok::<(), backpressure_pipeline::BuildError>(())
    /// # }).unwrap();
    /// ```
    pub fn producer(&self) -> Producer<T> {
        Producer {
            shared: self.shared.clone(),
        }
    }

    /// A live snapshot of the counters: produced, processed, failed, dropped, expired,
    /// superseded, panicked, retried, restarts, the queue's depth and peak depth, the time it has spent
    /// full, and, when items are stamped (a time feature), the oldest item's age, the
    /// queue-delay histogram and whether CoDel is dropping. See [`Stats`].
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{Pipeline, Policy, SmolSpawner};
    ///
    /// # smol::block_on(async {
    /// let pipeline = Pipeline::builder(2, Policy::DropNewest)
    ///     .spawn(SmolSpawner::new(), |_: u8| std::future::pending::<()>())?;
    /// for i in 0..10 {
    ///     let _ = pipeline.try_push(i);
    /// }
    /// let stats = pipeline.stats();
    /// assert_eq!(stats.produced, 10);
    /// assert!(stats.dropped >= 7); // at most 2 queued and 1 in the worker's hands
    /// # Ok::<(), backpressure_pipeline::BuildError>(())
    /// # }).unwrap();
    /// ```
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Items waiting in the queue at this instant.
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{Pipeline, Policy, SmolSpawner};
    ///
    /// # smol::block_on(async {
    /// let pipeline = Pipeline::builder(4, Policy::Block).spawn(SmolSpawner::new(), |_: u8| async {})?;
    /// assert!(pipeline.len() <= 4);
    /// # Ok::<(), backpressure_pipeline::BuildError>(())
    /// # }).unwrap();
    /// ```
    pub fn len(&self) -> usize {
        self.shared.queue.len()
    }

    /// Whether the queue is empty at this instant.
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{Pipeline, Policy, SmolSpawner};
    ///
    /// # smol::block_on(async {
    /// let pipeline = Pipeline::builder(4, Policy::Block).spawn(SmolSpawner::new(), |_: u8| async {})?;
    /// assert!(pipeline.is_empty());
    /// # Ok::<(), backpressure_pipeline::BuildError>(())
    /// # }).unwrap();
    /// ```
    pub fn is_empty(&self) -> bool {
        self.shared.queue.is_empty()
    }

    /// The queue's capacity.
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{Pipeline, Policy, SmolSpawner};
    ///
    /// # smol::block_on(async {
    /// let pipeline = Pipeline::builder(4, Policy::Block).spawn(SmolSpawner::new(), |_: u8| async {})?;
    /// assert_eq!(pipeline.capacity(), 4);
    /// # Ok::<(), backpressure_pipeline::BuildError>(())
    /// # }).unwrap();
    /// ```
    pub fn capacity(&self) -> usize {
        self.shared.queue.capacity()
    }

    /// A watcher of the queue's pressure level, if
    /// [`watermarks`](PipelineBuilder::watermarks) were configured: `None` otherwise. See
    /// [`Pressure`] for the signal and an example.
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{Pipeline, Policy, SmolSpawner};
    ///
    /// # smol::block_on(async {
    /// let plain = Pipeline::builder(4, Policy::Block).spawn(SmolSpawner::new(), |_: u8| async {})?;
    /// assert!(plain.pressure().is_none());
    /// let watched = Pipeline::builder(4, Policy::Block)
    ///     .watermarks(3, 1)
    ///     .spawn(SmolSpawner::new(), |_: u8| async {})?;
    /// let mut pressure = watched.pressure().unwrap();
    /// watched.shutdown().await;
    /// assert_eq!(pressure.changed().await, None); // closed: no crossing comes after
    /// # Ok::<(), backpressure_pipeline::BuildError>(())
    /// # }).unwrap();
    /// ```
    pub fn pressure(&self) -> Option<Pressure> {
        self.shared.queue.pressure()
    }

    /// Publishes a snapshot of the counters through the [`metrics`] facade, to whatever
    /// recorder the application installed (feature `metrics`; the crate has no exporter of
    /// its own). Call it periodically (each scrape, or every few seconds from a task);
    /// [`shutdown`](Pipeline::shutdown) calls it once more with the final counts.
    ///
    /// Every metric carries the label `pipeline` = the [name](PipelineBuilder::name):
    ///
    /// | name | kind | unit |
    /// |---|---|---|
    /// | `backpressure_pipeline_produced_total` | counter | items pushed while open |
    /// | `backpressure_pipeline_processed_total` | counter | items |
    /// | `backpressure_pipeline_failed_total` | counter | items |
    /// | `backpressure_pipeline_dropped_total` | counter | items shed or evicted by the policy |
    /// | `backpressure_pipeline_expired_total` | counter | items shed at the exit for their queue delay |
    /// | `backpressure_pipeline_superseded_total` | counter | waiting items replaced by a newer one of their key |
    /// | `backpressure_pipeline_panicked_total` | counter | items |
    /// | `backpressure_pipeline_retried_total` | counter | attempts |
    /// | `backpressure_pipeline_restarts_total` | counter | worker states rebuilt |
    /// | `backpressure_pipeline_depth` | gauge | items in the queue |
    /// | `backpressure_pipeline_time_full_seconds` | gauge | seconds the queue was full, in total |
    /// | `backpressure_pipeline_oldest_age_seconds` | gauge | seconds (stamped pipelines only) |
    /// | `backpressure_pipeline_queue_delay_p99_seconds` | gauge | seconds, upper bound of the p99 since the start (stamped pipelines only) |
    /// | `backpressure_pipeline_overloaded` | gauge | 1 while CoDel is dropping, else 0 |
    /// | `backpressure_pipeline_pressure_high` | gauge | 1 while the pressure level is high (with watermarks only), else 0 |
    ///
    /// Counters are set to the pipeline's totals (`absolute`), so calling this often or
    /// seldom changes no value.
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{Pipeline, Policy, SmolSpawner};
    ///
    /// # smol::block_on(async {
    /// let pipeline = Pipeline::builder(64, Policy::DropNewest)
    ///     .name("ingest")
    ///     .spawn(SmolSpawner::new(), |_: u32| async {})?;
    /// pipeline.record_metrics(); // a no-op until a recorder is installed
    /// # pipeline.shutdown().await;
    /// # Ok::<(), backpressure_pipeline::BuildError>(())
    /// # }).unwrap();
    /// ```
    #[cfg(feature = "metrics")]
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub fn record_metrics(&self) {
        self.shared.record_metrics();
    }

    /// Whether intake has stopped: shutdown began, the parent fired (a token cancelled, a
    /// future completed), a panic stopped the pipeline ([`OnPanic::StopPipeline`]), or no
    /// worker could start ([`StopCause::NoWorkers`]); each closes the queue at once.
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{Pipeline, Policy, SmolSpawner};
    ///
    /// # smol::block_on(async {
    /// let pipeline = Pipeline::builder(4, Policy::Block).spawn(SmolSpawner::new(), |_: u8| async {})?;
    /// assert!(!pipeline.is_closed());
    /// pipeline.shutdown().await;
    /// assert!(pipeline.is_closed());
    /// # Ok::<(), backpressure_pipeline::BuildError>(())
    /// # }).unwrap();
    /// ```
    pub fn is_closed(&self) -> bool {
        self.shared.queue.is_closed()
    }

    /// Shuts the pipeline down and reports what became of every item and every worker.
    ///
    /// The sequence: stop intake → close the queue → the workers drain the backlog until the
    /// deadline → cancel the worker token and wait one [grace](PipelineBuilder::grace) for
    /// workers to stop → abort the rest → join every worker, naming those still running
    /// after [`unresponsive_after`](PipelineBuilder::unresponsive_after) unresponsive →
    /// hand back what is left (in the queue, or waiting for a retry) through
    /// [`take_leftovers`](Pipeline::take_leftovers), counted as abandoned. It never waits longer than
    /// deadline + grace + `unresponsive_after`, even when every runtime thread is blocked:
    /// its waits race the runtime's timer against a timer thread of the crate's own (a
    /// single-threaded runtime whose only thread is blocked runs no task at all, this one
    /// included, until it is released). The deadline is exceeded only if items are left (in
    /// the queue, waiting for a retry, or in a worker's hands); workers still running at the
    /// deadline with nothing left to do (on their way out, or still trying to start) get the
    /// grace and half of `unresponsive_after` to end on their own, and lose nothing if they
    /// are aborted after that.
    ///
    /// Calling it again, or concurrently, returns the same report.
    ///
    /// # Panics
    ///
    /// Only if a `tracing` subscriber panics on the summary line; the report is committed
    /// first, and a later or concurrent call returns it. Shutdown drops no item: those left
    /// are handed back.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the sequence's state lives in the pipeline, and a later call resumes it
    /// (the deadline still counts from the first call). Nothing is lost or counted twice.
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{Pipeline, Policy, SmolSpawner, StopCause};
    ///
    /// # smol::block_on(async {
    /// let pipeline = Pipeline::builder(4, Policy::DropNewest).workers(2).spawn(SmolSpawner::new(), |_: u8| async {})?;
    /// for i in 0..10 {
    ///     let _ = pipeline.push(i).await;
    /// }
    /// let report = pipeline.shutdown().await;
    /// assert_eq!(report.produced, 10);
    /// assert_eq!(
    ///     report.produced,
    ///     report.processed
    ///         + report.failed
    ///         + report.dropped
    ///         + report.expired
    ///         + report.superseded
    ///         + report.abandoned
    ///         + report.panicked
    /// );
    /// assert_eq!(report.cause, StopCause::Shutdown);
    /// assert_eq!(pipeline.shutdown().await, report);
    /// # Ok::<(), backpressure_pipeline::BuildError>(())
    /// # }).unwrap();
    /// ```
    pub async fn shutdown(&self) -> Report {
        let begun = {
            let mut state = self.lock_state();
            if let Some(report) = &state.report {
                return report.clone();
            }
            *state.begun.get_or_insert_with(Instant::now)
        };
        // The first stop names the cause; a parent's cancel or a panic stop may have come
        // first. Then stop intake and close the queue (the stop token's hook closes it):
        // pushes from here on get their item back, and every waiting producer and popper is
        // woken. A parent future that has completed stopped it first, even if its watcher
        // has not run yet.
        if let Some(spent) = self.shared.parent.fired_now() {
            self.shared.stop.cancel();
            drop(spent);
        }
        // A stop token already cancelled with no cause named yet was cancelled by the parent
        // (the stops from inside, and shutdown, name theirs before they cancel). Named here,
        // not left to the token's hook: a cancel marks the token before it runs the hook, so
        // the parent's hook may still be on its way, and a cancel of ours returns at once.
        if self.shared.stop.is_cancelled() {
            self.shared.set_cause(StopCause::External);
        }
        self.shared.set_cause(StopCause::Shutdown);
        self.shared.stop.cancel();
        self.shared.queue.close();
        // The workers drain the bounded backlog until the deadline.
        if !self.join_until(begun.checked_add(self.deadline)).await {
            let overtime = self.overtime();
            if !self
                .join_until(overtime.at.checked_add(overtime.wait))
                .await
            {
                let aborted_at = *self.lock_state().aborted_at.get_or_insert_with(|| {
                    self.workers.abort_unjoined();
                    Instant::now()
                });
                // Those still running after this are unresponsive (blocked in synchronous
                // code); they are named in the report, not awaited forever.
                self.join_until(aborted_at.checked_add(overtime.after_abort))
                    .await;
            }
        }
        self.finish()
    }

    /// The waits after the deadline, decided by the first call to find it passed. The
    /// worker token is cancelled either way (workers take no new item, and those that watch
    /// it stop). With items left, the deadline is exceeded: one grace, the abort, then
    /// `unresponsive_after` for the aborts to land. With nothing left, the workers still
    /// running are on their way out (a zero deadline meets them there, woken by close) or
    /// still trying to start: they get the grace and half of `unresponsive_after` to end on
    /// their own, and the other half after the abort (which loses nothing).
    fn overtime(&self) -> Overtime {
        let mut state = self.lock_state();
        if let Some(overtime) = state.overtime {
            return overtime;
        }
        self.shared.stop_workers();
        let overtime = if self.shared.backlog_left() {
            state.deadline_exceeded = true;
            Overtime {
                at: Instant::now(),
                wait: self.grace,
                after_abort: self.unresponsive_after,
            }
        } else {
            let half = self.unresponsive_after / 2;
            Overtime {
                at: Instant::now(),
                wait: self.grace.saturating_add(half),
                after_abort: self.unresponsive_after - half,
            }
        };
        state.overtime = Some(overtime);
        overtime
    }

    /// Waits until every worker has sent its outcome or `until` has passed (`None`: no
    /// limit); returns whether all have.
    async fn join_until(&self, until: Option<Instant>) -> bool {
        let Some(joined) = self.workers.joined() else {
            return true;
        };
        let Some(until) = until else {
            joined.await;
            return true;
        };
        let limit = until.saturating_duration_since(Instant::now());
        if limit.is_zero() {
            // Poll once: workers that already ended are joined, nothing waits.
            return joined.now_or_never().is_some() || self.workers.all_joined();
        }
        // The runtime's timer, raced with a thread of our own: a watchdog must not depend on
        // what it watches, and the runtime's timer stops when its threads are all blocked.
        let timer = future::select(self.shared.spawner.sleep(limit), watchdog::sleep(limit));
        match future::select(joined, timer).await {
            Either::Left(_) => true,
            Either::Right(_) => self.workers.all_joined(),
        }
    }

    /// Takes what is left (in the queue, and parked for a retry) to hand it back, computes
    /// the report once (invariant 3), and only then runs user code: the `tracing`
    /// subscriber's summary, and the `metrics` recorder.
    fn finish(&self) -> Report {
        let mut state = self.lock_state();
        if let Some(report) = &state.report {
            return report.clone();
        }
        // Parked items were popped before those left in the queue: they go first.
        let mut left = self.shared.take_parked();
        let parked = left.len() as u64;
        let (queued, queue) = self.shared.queue.take_all();
        left.extend(queued);
        // The workers' counters are read after the queue's final ones: every worker counted
        // is joined (the oneshot carrying its outcome orders its increments before these
        // loads), or unresponsive.
        let fates = Fates {
            queue,
            workers: self.shared.ledger.counts(),
        };
        let report = self.report(&state, left.len() as u64, parked, &fates);
        state.report = Some(report.clone());
        state.leftovers = left;
        drop(state);
        // Counts first, user code after (a subscriber may panic): the report is committed,
        // and then the panic reaches this caller, while later calls return the report.
        #[cfg(feature = "tracing")]
        self.shared.shed_log.finish();
        #[cfg(feature = "metrics")]
        self.shared.record_metrics();
        report
    }

    fn report(&self, state: &State<T>, handed_back: u64, parked: u64, fates: &Fates) -> Report {
        let stats = fates.stats();
        // By the ledger's sums: a popped item with no fate recorded and not parked is still
        // held by an unresponsive worker; one held by an aborted worker was recorded lost
        // when the worker's future was dropped.
        let held = fates.unsettled().saturating_sub(parked);
        let lost_in_flight = fates.workers.lost + held;
        let outcomes = self.workers.outcomes();
        let joined = outcomes.iter().flatten().count();
        let count = |exits: &[Exit]| {
            outcomes
                .iter()
                .flatten()
                .filter(|o| exits.contains(o))
                .count()
        };
        let spawned = self.workers.spawned();
        Report {
            produced: stats.produced,
            processed: stats.processed,
            failed: stats.failed,
            dropped: stats.dropped,
            expired: stats.expired,
            superseded: stats.superseded,
            abandoned: handed_back + lost_in_flight,
            handed_back,
            lost_in_flight,
            panicked: stats.panicked,
            retried: stats.retried,
            restarts: stats.restarts,
            start_failures: fates.workers.start_failures,
            workers_spawned: spawned,
            workers_joined: joined,
            workers_aborted: count(&[Exit::Aborted, Exit::Lost]),
            workers_not_started: count(&[Exit::NotStarted]),
            workers_unresponsive: spawned - joined,
            cause: self.shared.cause().unwrap_or(StopCause::Shutdown),
            deadline_exceeded: state.deadline_exceeded,
        }
    }

    /// Takes the items a finished [`shutdown`](Pipeline::shutdown) handed back: first those
    /// its workers held without having started them (waiting for a retry, or in a batch
    /// being filled when the deadline passed), by worker index, then those left in the
    /// queue, in queue order. Counted in
    /// [`Report::handed_back`]. Empty before shutdown has finished, and after a first call
    /// has taken them.
    ///
    /// Leftovers never taken are dropped with the pipeline; a pipeline dropped without
    /// `shutdown` hands nothing back (its items are dropped, and no report counts them).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use backpressure_pipeline::{Pipeline, Policy, SmolSpawner};
    ///
    /// # smol::block_on(async {
    /// let pipeline = Pipeline::builder(8, Policy::Block)
    ///     .deadline(Duration::ZERO)
    ///     .spawn(SmolSpawner::new(), |_: u32| std::future::pending::<()>())?;
    /// for n in 0..5 {
    ///     let _ = pipeline.try_push(n);
    /// }
    /// let report = pipeline.shutdown().await;
    /// let leftovers = pipeline.take_leftovers();
    /// assert_eq!(leftovers.len() as u64, report.handed_back);
    /// assert_eq!(report.abandoned, report.handed_back + report.lost_in_flight);
    /// assert!(pipeline.take_leftovers().is_empty());
    /// # Ok::<(), backpressure_pipeline::BuildError>(())
    /// # }).unwrap();
    /// ```
    pub fn take_leftovers(&self) -> Vec<T> {
        std::mem::take(&mut self.lock_state().leftovers)
    }

    fn lock_state(&self) -> MutexGuard<'_, State<T>> {
        // Held for a few instructions, with no user code; a poisoned one is still valid.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<T> Drop for Pipeline<T> {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        let mut left = std::mem::take(&mut state.leftovers);
        if state.report.is_none() {
            // Not shut down: stop everything now. Aborted workers drop their futures at
            // their next poll, which the abort schedules.
            self.shared.stop.cancel();
            self.shared.stop_workers();
            self.shared.queue.close();
            self.workers.abort_unjoined();
            left.extend(self.shared.take_parked());
            left.extend(self.shared.queue.take_all().0);
        }
        // Release what is left now, not when the last `Producer` handle goes: an item may
        // hold a reply channel that someone awaits. Each item is dropped; the first panic in
        // an item's `Drop` surfaces here, unless this drop is itself part of an unwind.
        if let Some(payload) = drop_each(left) {
            if std::thread::panicking() {
                std::mem::forget(payload);
            } else {
                resume_unwind(payload);
            }
        }
    }
}

impl<T> fmt::Debug for Pipeline<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pipeline")
            .field("name", &self.shared.name)
            .field("queue", &self.shared.queue)
            .field("deadline", &self.deadline)
            .field("grace", &self.grace)
            .field("spawner", &self.shared.spawner)
            .finish_non_exhaustive()
    }
}
