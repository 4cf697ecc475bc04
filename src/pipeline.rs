//! The pipeline: a queue, N workers, a structured shutdown and its report.
//!
//! # Invariants
//!
//! 1. Every accepted item ends in exactly one place: popped by a worker (`started`), evicted
//!    by the policy (`evicted`), or left in the queue at the end (`take_all`). A started item
//!    ends processed, panicked, or abandoned (its worker was stopped or is unresponsive).
//! 2. Every spawned worker has a slot with its abort handle and the receiving end of its
//!    outcome; the worker sends its outcome only after its future has been dropped, so a
//!    joined worker holds nothing of the pipeline's.
//! 3. The report is computed once, under the state lock, after the queue is closed and every
//!    worker is joined or declared unresponsive; later calls return the same report.

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_channel::oneshot;
use futures_util::future::{self, AbortHandle, Abortable, Aborted, Either, FutureExt};

use crate::cancel::CancellationToken;
use crate::policy::{ConfigError, Policy, PushOutcome};
use crate::queue::Queue;
use crate::spawner::{SpawnError, Spawner};

/// Configures and starts a [`Pipeline`]. Made by [`Pipeline::builder`].
///
/// The capacity and the policy are required; the rest have defaults: 1 worker, a 5 s drain
/// deadline, a 1 s grace, 1 s before an aborted worker is named unresponsive, no parent
/// token.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use backpressure_pipeline::{Pipeline, Policy, SmolSpawner};
///
/// # smol::block_on(async {
/// let builder = Pipeline::builder(64, Policy::DropOldest)
///     .workers(4)
///     .deadline(Duration::from_secs(2))
///     .grace(Duration::from_millis(100));
/// let stop_early = builder.worker_token(); // workers may watch it to stop cooperatively
/// let pipeline = builder.spawn(SmolSpawner::new(), move |n: u32| {
///     let stop_early = stop_early.clone();
///     async move {
///         if !stop_early.is_cancelled() {
///             let _ = n;
///         }
///     }
/// })?;
/// let report = pipeline.shutdown().await;
/// assert_eq!(report.workers_joined, 4);
/// # Ok::<(), backpressure_pipeline::BuildError>(())
/// # }).unwrap();
/// ```
pub struct PipelineBuilder {
    capacity: usize,
    policy: Policy,
    workers: usize,
    deadline: Duration,
    grace: Duration,
    unresponsive_after: Duration,
    parent: Option<CancellationToken>,
    worker_token: CancellationToken,
}

impl PipelineBuilder {
    /// The most workers a pipeline accepts.
    pub const MAX_WORKERS: usize = 65_536;

    /// Sets the number of workers (default 1).
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{BuildError, ConfigError, Pipeline, Policy, SmolSpawner};
    ///
    /// let err = Pipeline::builder(4, Policy::Block)
    ///     .workers(0)
    ///     .spawn(SmolSpawner::new(), |_: u8| async {})
    ///     .unwrap_err();
    /// assert_eq!(err, BuildError::Config(ConfigError::ZeroWorkers));
    /// ```
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers;
        self
    }

    /// Sets how long [`shutdown`](Pipeline::shutdown) lets the workers drain the backlog
    /// (default 5 s). Zero stops them at once; [`Duration::MAX`] waits for the drain however
    /// long it takes.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use backpressure_pipeline::{Pipeline, Policy};
    ///
    /// let builder = Pipeline::builder(4, Policy::Block).deadline(Duration::ZERO);
    /// # drop(builder);
    /// ```
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Sets how long shutdown waits, after the deadline, for workers to stop on their own
    /// once the [worker token](PipelineBuilder::worker_token) is cancelled, before it aborts
    /// them (default 1 s).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use backpressure_pipeline::{Pipeline, Policy};
    ///
    /// let builder = Pipeline::builder(4, Policy::Block).grace(Duration::from_millis(50));
    /// # drop(builder);
    /// ```
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Sets how long shutdown waits for aborted workers to end before it names them
    /// unresponsive (default 1 s). An aborted worker ends at its next poll, so only a worker
    /// blocked in synchronous code takes this long. Shutdown never waits longer than
    /// deadline + grace + this.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use backpressure_pipeline::{Pipeline, Policy};
    ///
    /// let builder = Pipeline::builder(4, Policy::Block).unresponsive_after(Duration::from_secs(2));
    /// # drop(builder);
    /// ```
    pub fn unresponsive_after(mut self, wait: Duration) -> Self {
        self.unresponsive_after = wait;
        self
    }

    /// Makes the pipeline's stop token a child of `parent`: cancelling `parent` stops intake
    /// and closes the queue, as [`shutdown`](Pipeline::shutdown) does, and the report's cause
    /// is [`StopCause::External`].
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{CancellationToken, Pipeline, Policy, PushOutcome, SmolSpawner};
    ///
    /// # smol::block_on(async {
    /// let app = CancellationToken::new();
    /// let pipeline = Pipeline::builder(4, Policy::Block)
    ///     .parent(&app)
    ///     .spawn(SmolSpawner::new(), |_: u8| async {})?;
    /// app.cancel();
    /// assert_eq!(pipeline.push(1).await, PushOutcome::Closed(1));
    /// # Ok::<(), backpressure_pipeline::BuildError>(())
    /// # }).unwrap();
    /// ```
    pub fn parent(mut self, parent: &CancellationToken) -> Self {
        self.parent = Some(parent.clone());
        self
    }

    /// The token shutdown cancels when the deadline passes, before it aborts the workers.
    /// Capture it in the worker to wind down cooperatively (flush, checkpoint) instead of
    /// being aborted mid-item.
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{Pipeline, Policy};
    ///
    /// let builder = Pipeline::builder(4, Policy::Block);
    /// assert!(!builder.worker_token().is_cancelled());
    /// ```
    pub fn worker_token(&self) -> CancellationToken {
        self.worker_token.clone()
    }

    /// Starts the pipeline: spawns the workers on `spawner`, each running `work` on one item
    /// at a time.
    ///
    /// A panic in `work` is caught and counted; the worker goes on with the next item.
    ///
    /// # Errors
    ///
    /// [`BuildError::Config`] for a capacity or worker count out of range,
    /// [`BuildError::Spawn`] if the runtime refuses a task (workers already spawned are
    /// aborted).
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{Pipeline, Policy, SmolSpawner};
    ///
    /// let err = Pipeline::builder(0, Policy::Block)
    ///     .spawn(SmolSpawner::new(), |_: u8| async {})
    ///     .unwrap_err();
    /// assert_eq!(err.to_string(), "invalid configuration: capacity must be at least 1");
    /// ```
    pub fn spawn<T, S, F, Fut>(self, spawner: S, work: F) -> Result<Pipeline<T>, BuildError>
    where
        T: Send + 'static,
        S: Spawner,
        F: Fn(T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let queue = Queue::new(self.capacity, self.policy)?;
        if self.workers == 0 {
            return Err(ConfigError::ZeroWorkers.into());
        }
        if self.workers > Self::MAX_WORKERS {
            return Err(ConfigError::TooManyWorkers.into());
        }
        let stop = match &self.parent {
            Some(parent) => parent.child_token(),
            None => CancellationToken::new(),
        };
        let shared = Arc::new(Shared {
            queue,
            stop,
            worker_token: self.worker_token,
            started: AtomicU64::new(0),
            processed: AtomicU64::new(0),
            panicked: AtomicU64::new(0),
        });
        let work = Arc::new(work);
        let mut state = State::default();
        for _ in 0..self.workers {
            match spawn_worker(&spawner, shared.clone(), work.clone()) {
                Ok(slot) => state.workers.push(slot),
                Err(err) => {
                    for slot in &state.workers {
                        slot.abort.abort();
                    }
                    shared.queue.close();
                    return Err(err.into());
                }
            }
        }
        Ok(Pipeline {
            shared,
            spawner: Arc::new(spawner),
            deadline: self.deadline,
            grace: self.grace,
            unresponsive_after: self.unresponsive_after,
            state: async_lock::Mutex::new(state),
        })
    }
}

impl fmt::Debug for PipelineBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PipelineBuilder")
            .field("capacity", &self.capacity)
            .field("policy", &self.policy)
            .field("workers", &self.workers)
            .field("deadline", &self.deadline)
            .field("grace", &self.grace)
            .field("unresponsive_after", &self.unresponsive_after)
            .field("parent", &self.parent)
            .finish_non_exhaustive()
    }
}

/// A bounded queue fed by producers and drained by N workers, with a structured shutdown.
///
/// Producers call [`push`](Pipeline::push) or [`try_push`](Pipeline::try_push) from any
/// number of tasks (share the pipeline with an `Arc`). [`shutdown`](Pipeline::shutdown)
/// stops intake, closes the queue, lets the workers drain it until the deadline, then
/// cancels the worker token, aborts stragglers, joins every worker and returns a
/// [`Report`] in which `produced == processed + dropped + abandoned + panicked`.
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
    spawner: Arc<dyn Spawner>,
    deadline: Duration,
    grace: Duration,
    unresponsive_after: Duration,
    state: async_lock::Mutex<State>,
}

struct Shared<T> {
    queue: Queue<T>,
    /// Cancelled to stop intake: by shutdown, by the parent, or by dropping the pipeline.
    stop: CancellationToken,
    /// Cancelled when the deadline passes: workers take no new item.
    worker_token: CancellationToken,
    /// Items popped by a worker (invariant 1).
    started: AtomicU64,
    processed: AtomicU64,
    panicked: AtomicU64,
}

#[derive(Default)]
struct State {
    workers: Vec<Slot>,
    /// When the first `shutdown` call began; the deadline counts from here.
    begun: Option<Instant>,
    cause: Option<StopCause>,
    report: Option<Report>,
}

/// A spawned worker (invariant 2).
struct Slot {
    abort: AbortHandle,
    /// `Some` until the worker's outcome arrives.
    exit: Option<oneshot::Receiver<Exit>>,
    outcome: Option<Exit>,
}

/// How a worker's task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    /// The queue was closed and empty, or the worker token was cancelled.
    Finished,
    /// Aborted by shutdown or by dropping the pipeline.
    Aborted,
    /// The runtime dropped the task without running it to the end (it shut down).
    Lost,
    /// The worker loop itself panicked (user panics are caught per item).
    Panicked,
}

impl PipelineBuilder {
    fn new(capacity: usize, policy: Policy) -> PipelineBuilder {
        PipelineBuilder {
            capacity,
            policy,
            workers: 1,
            deadline: Duration::from_secs(5),
            grace: Duration::from_secs(1),
            unresponsive_after: Duration::from_secs(1),
            parent: None,
            worker_token: CancellationToken::new(),
        }
    }
}

impl Pipeline<()> {
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
    pub fn builder(capacity: usize, policy: Policy) -> PipelineBuilder {
        PipelineBuilder::new(capacity, policy)
    }
}

impl<T: Send + 'static> Pipeline<T> {
    /// Pushes an item, waiting for room only under [`Policy::Block`].
    ///
    /// After shutdown has begun, or the parent token was cancelled, this returns
    /// [`PushOutcome::Closed`] with the item, which does not count as produced.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`Queue::push`]: a push dropped before it completes never enqueued
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
        self.close_if_stopped();
        self.shared.queue.push(item).await
    }

    /// Pushes an item without waiting for room; see [`Queue::try_push`], which is meant for
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
        self.close_if_stopped();
        self.shared.queue.try_push(item)
    }

    fn close_if_stopped(&self) {
        if self.shared.stop.is_cancelled() {
            self.shared.queue.close();
        }
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

    /// Whether intake has stopped (shutdown began, or the parent token was cancelled and a
    /// worker or producer has noticed).
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
    /// count what is left in the queue as abandoned. It never waits longer than
    /// deadline + grace + `unresponsive_after`.
    ///
    /// Calling it again, or concurrently, returns the same report.
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
    /// assert_eq!(report.produced, report.processed + report.dropped + report.abandoned + report.panicked);
    /// assert_eq!(report.cause, StopCause::Shutdown);
    /// assert_eq!(pipeline.shutdown().await, report);
    /// # Ok::<(), backpressure_pipeline::BuildError>(())
    /// # }).unwrap();
    /// ```
    pub async fn shutdown(&self) -> Report {
        let mut state = self.state.lock().await;
        if let Some(report) = &state.report {
            return report.clone();
        }
        let begun = *state.begun.get_or_insert_with(Instant::now);
        if state.cause.is_none() {
            state.cause = Some(if self.shared.stop.is_cancelled() {
                StopCause::External
            } else {
                StopCause::Shutdown
            });
        }
        // Stop intake and close the queue: pushes from here on get their item back.
        self.shared.stop.cancel();
        self.shared.queue.close();
        // The workers drain the bounded backlog until the deadline.
        let remaining = self.deadline.saturating_sub(begun.elapsed());
        let drained = self.join_within(&mut state.workers, remaining).await;
        if !drained {
            // Cooperative first: workers take no new item and may watch the token.
            self.shared.worker_token.cancel();
            if !self.join_within(&mut state.workers, self.grace).await {
                for slot in state.workers.iter().filter(|s| s.outcome.is_none()) {
                    slot.abort.abort();
                }
                // Those still running after this are unresponsive (blocked in synchronous
                // code); they are named in the report, not awaited forever.
                self.join_within(&mut state.workers, self.unresponsive_after)
                    .await;
            }
        }
        let left_in_queue = self.shared.queue.take_all().await.len() as u64;
        let report = self.report(&state, !drained, left_in_queue);
        state.report = Some(report.clone());
        report
    }

    /// Waits until every worker has sent its outcome or `limit` has passed; returns whether
    /// all have.
    async fn join_within(&self, workers: &mut [Slot], limit: Duration) -> bool {
        let joined = future::poll_fn(|cx| poll_join(workers, cx));
        if limit.is_zero() {
            // Poll once: workers that already ended are joined, nothing waits.
            return joined.now_or_never().is_some();
        }
        let timer = self.spawner.sleep(limit);
        match future::select(pin!(joined), timer).await {
            Either::Left(_) => true,
            Either::Right(_) => workers.iter().all(|s| s.outcome.is_some()),
        }
    }

    fn report(&self, state: &State, deadline_exceeded: bool, left_in_queue: u64) -> Report {
        let counts = self.shared.queue.counts();
        // Relaxed loads: every worker counted is joined, and the oneshot carrying its outcome
        // orders its increments before these loads; the queue's counters were written under
        // the lock that `take_all` has since taken.
        let accepted = counts.accepted.load(Ordering::Relaxed);
        let shed = counts.shed.load(Ordering::Relaxed);
        let evicted = counts.evicted.load(Ordering::Relaxed);
        let started = self.shared.started.load(Ordering::Relaxed);
        let processed = self.shared.processed.load(Ordering::Relaxed);
        let panicked = self.shared.panicked.load(Ordering::Relaxed);
        // By invariant 1: a started item not processed and not panicked was cut short
        // (aborted) or is still held by an unresponsive worker.
        let in_flight = started.saturating_sub(processed + panicked);
        let outcomes = state.workers.iter().filter_map(|s| s.outcome);
        let joined = outcomes.clone().count();
        let aborted = outcomes
            .filter(|o| matches!(o, Exit::Aborted | Exit::Lost))
            .count();
        Report {
            produced: accepted + shed,
            processed,
            dropped: shed + evicted,
            abandoned: left_in_queue + in_flight,
            panicked,
            workers_spawned: state.workers.len(),
            workers_joined: joined,
            workers_aborted: aborted,
            workers_unresponsive: state.workers.len() - joined,
            cause: state.cause.unwrap_or(StopCause::Shutdown),
            deadline_exceeded,
        }
    }
}

/// Polls every worker not yet joined; ready when all are.
fn poll_join(workers: &mut [Slot], cx: &mut Context<'_>) -> Poll<()> {
    let mut pending = false;
    for slot in workers.iter_mut() {
        if let Some(exit) = &mut slot.exit {
            match exit.poll_unpin(cx) {
                Poll::Ready(outcome) => {
                    // A dropped sender means the runtime dropped the task unfinished.
                    slot.outcome = Some(outcome.unwrap_or(Exit::Lost));
                    slot.exit = None;
                }
                Poll::Pending => pending = true,
            }
        }
    }
    if pending {
        Poll::Pending
    } else {
        Poll::Ready(())
    }
}

impl<T> Drop for Pipeline<T> {
    fn drop(&mut self) {
        let state = self.state.get_mut();
        if state.report.is_some() {
            return;
        }
        // Not shut down: stop everything now. Aborted workers drop their futures at their
        // next poll, which the abort schedules.
        self.shared.stop.cancel();
        self.shared.worker_token.cancel();
        self.shared.queue.close();
        for slot in &state.workers {
            slot.abort.abort();
        }
    }
}

impl<T> fmt::Debug for Pipeline<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pipeline")
            .field("queue", &self.shared.queue)
            .field("deadline", &self.deadline)
            .field("grace", &self.grace)
            .field("spawner", &self.spawner)
            .finish_non_exhaustive()
    }
}

/// Spawns one worker wrapped so that abort and panic capture are ours (invariant 2).
fn spawn_worker<T, S, F, Fut>(
    spawner: &S,
    shared: Arc<Shared<T>>,
    work: Arc<F>,
) -> Result<Slot, SpawnError>
where
    T: Send + 'static,
    S: Spawner,
    F: Fn(T) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (abort, registration) = AbortHandle::new_pair();
    let (sender, exit) = oneshot::channel();
    let worker = Abortable::new(work_loop(shared, work), registration);
    let task = async move {
        let outcome = match AssertUnwindSafe(worker).catch_unwind().await {
            Ok(Ok(())) => Exit::Finished,
            Ok(Err(Aborted)) => Exit::Aborted,
            Err(_) => Exit::Panicked,
        };
        // `.await` consumed the worker future, so it is dropped by now: a joined worker
        // holds no item, no closure and no reference to the pipeline.
        let _ = sender.send(outcome);
    };
    spawner.spawn(Box::pin(task))?;
    Ok(Slot {
        abort,
        exit: Some(exit),
        outcome: None,
    })
}

/// One worker: pops items and runs `work` on each until the queue is closed and empty, or
/// the worker token is cancelled.
async fn work_loop<T, F, Fut>(shared: Arc<Shared<T>>, work: Arc<F>)
where
    F: Fn(T) -> Fut,
    Fut: Future<Output = ()>,
{
    loop {
        // Cooperative stop at the deadline: take no new item.
        if shared.worker_token.is_cancelled() {
            return;
        }
        let item = if shared.stop.is_cancelled() {
            // Intake stopped (maybe by the parent token): make sure the queue is closed, then
            // drain it.
            shared.queue.close();
            shared.queue.pop().await
        } else {
            // `pop` is cancel safe, so losing this race loses no item.
            match future::select(pin!(shared.queue.pop()), shared.stop.cancelled()).await {
                Either::Left((item, _)) => item,
                Either::Right(_) => continue,
            }
        };
        let Some(item) = item else { return };
        // Relaxed, for the counters here: the report reads them after the join (invariant 2).
        shared.started.fetch_add(1, Ordering::Relaxed);
        // A panic in the user's code is caught per item: it is counted and the worker goes on.
        match AssertUnwindSafe(async { work(item).await })
            .catch_unwind()
            .await
        {
            Ok(()) => shared.processed.fetch_add(1, Ordering::Relaxed),
            Err(_) => shared.panicked.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// What a finished run did with every item and every worker, returned by
/// [`Pipeline::shutdown`].
///
/// On every path, `produced == processed + dropped + abandoned + panicked`
/// ([`is_conserved`](Report::is_conserved)).
///
/// # Examples
///
/// ```
/// use backpressure_pipeline::{Pipeline, Policy, SmolSpawner};
///
/// # smol::block_on(async {
/// let pipeline = Pipeline::builder(2, Policy::Block).spawn(SmolSpawner::new(), |_: u8| async {})?;
/// let report = pipeline.shutdown().await;
/// assert!(report.is_conserved());
/// assert!(report.all_joined());
/// println!("{report}");
/// # Ok::<(), backpressure_pipeline::BuildError>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Report {
    /// Items pushed while the pipeline was open: accepted, or shed by the policy.
    pub produced: u64,
    /// Items whose worker future completed.
    pub processed: u64,
    /// Items discarded by the policy: incoming ones shed under `DropNewest`, buffered ones
    /// evicted under `DropOldest`.
    pub dropped: u64,
    /// Accepted items never processed because the deadline passed: left in the queue, or in
    /// flight in a worker that was stopped or is unresponsive.
    pub abandoned: u64,
    /// Items whose worker future panicked.
    pub panicked: u64,
    /// Workers started.
    pub workers_spawned: usize,
    /// Workers whose task ended and was joined (including the aborted ones).
    pub workers_joined: usize,
    /// Joined workers that were aborted, or dropped unfinished by their runtime.
    pub workers_aborted: usize,
    /// Workers still running when shutdown gave up on them (blocked in synchronous code).
    pub workers_unresponsive: usize,
    /// What started the shutdown.
    pub cause: StopCause,
    /// Whether the deadline passed before the backlog was drained.
    pub deadline_exceeded: bool,
}

impl Report {
    /// Whether `produced == processed + dropped + abandoned + panicked`.
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{Pipeline, Policy, SmolSpawner};
    ///
    /// # smol::block_on(async {
    /// let pipeline = Pipeline::builder(2, Policy::Block).spawn(SmolSpawner::new(), |_: u8| async {})?;
    /// assert!(pipeline.shutdown().await.is_conserved());
    /// # Ok::<(), backpressure_pipeline::BuildError>(())
    /// # }).unwrap();
    /// ```
    pub fn is_conserved(&self) -> bool {
        self.produced == self.processed + self.dropped + self.abandoned + self.panicked
    }

    /// Whether every spawned worker was joined (none unresponsive).
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{Pipeline, Policy, SmolSpawner};
    ///
    /// # smol::block_on(async {
    /// let pipeline = Pipeline::builder(2, Policy::Block).workers(3).spawn(SmolSpawner::new(), |_: u8| async {})?;
    /// assert!(pipeline.shutdown().await.all_joined());
    /// # Ok::<(), backpressure_pipeline::BuildError>(())
    /// # }).unwrap();
    /// ```
    pub fn all_joined(&self) -> bool {
        self.workers_joined == self.workers_spawned
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "produced {} = processed {} + dropped {} + abandoned {} + panicked {}; \
             workers: {} spawned, {} joined, {} aborted, {} unresponsive; {:?}{}",
            self.produced,
            self.processed,
            self.dropped,
            self.abandoned,
            self.panicked,
            self.workers_spawned,
            self.workers_joined,
            self.workers_aborted,
            self.workers_unresponsive,
            self.cause,
            if self.deadline_exceeded {
                ", deadline exceeded"
            } else {
                ""
            }
        )
    }
}

/// What started a pipeline's shutdown.
///
/// # Examples
///
/// ```
/// use backpressure_pipeline::{CancellationToken, Pipeline, Policy, SmolSpawner, StopCause};
///
/// # smol::block_on(async {
/// let app = CancellationToken::new();
/// let pipeline = Pipeline::builder(2, Policy::Block).parent(&app).spawn(SmolSpawner::new(), |_: u8| async {})?;
/// app.cancel();
/// assert_eq!(pipeline.shutdown().await.cause, StopCause::External);
/// # Ok::<(), backpressure_pipeline::BuildError>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StopCause {
    /// [`Pipeline::shutdown`] was called.
    Shutdown,
    /// The parent token was cancelled before shutdown was called.
    External,
}

/// A pipeline could not be started.
///
/// # Examples
///
/// ```
/// use backpressure_pipeline::{BuildError, ConfigError, Pipeline, Policy, SmolSpawner};
///
/// let err = Pipeline::builder(8, Policy::Block)
///     .workers(0)
///     .spawn(SmolSpawner::new(), |_: u8| async {})
///     .unwrap_err();
/// assert_eq!(err, BuildError::Config(ConfigError::ZeroWorkers));
/// assert_eq!(err.to_string(), "invalid configuration: a pipeline needs at least one worker");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BuildError {
    /// A configuration value is out of range.
    Config(ConfigError),
    /// The runtime refused to spawn a worker.
    Spawn(SpawnError),
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::Config(err) => write!(f, "invalid configuration: {err}"),
            BuildError::Spawn(err) => write!(f, "cannot start a worker: {err}"),
        }
    }
}

impl std::error::Error for BuildError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BuildError::Config(err) => Some(err),
            BuildError::Spawn(err) => Some(err),
        }
    }
}

impl From<ConfigError> for BuildError {
    fn from(err: ConfigError) -> BuildError {
        BuildError::Config(err)
    }
}

impl From<SpawnError> for BuildError {
    fn from(err: SpawnError) -> BuildError {
        BuildError::Spawn(err)
    }
}
