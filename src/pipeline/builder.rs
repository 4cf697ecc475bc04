//! Configuring and starting a pipeline.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::producer::{Shared, ShedHook};
use super::report::BuildError;
use super::worker::{spawn_worker, Workers};
use super::{OnPanic, Pipeline, State, StopCause};
use crate::cancel::CancellationToken;
use crate::policy::{ConfigError, Policy};
use crate::queue::Queue;
use crate::spawner::Spawner;
use crate::sync::{AtomicU64, AtomicU8};

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
pub struct PipelineBuilder<T> {
    capacity: usize,
    policy: Policy,
    workers: usize,
    deadline: Duration,
    grace: Duration,
    unresponsive_after: Duration,
    parent: Option<CancellationToken>,
    worker_token: CancellationToken,
    on_shed: Option<ShedHook<T>>,
    on_panic: OnPanic,
}

impl<T: Send + 'static> PipelineBuilder<T> {
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
    /// let builder = Pipeline::<u32>::builder(4, Policy::Block).deadline(Duration::ZERO);
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
    /// let builder = Pipeline::<u32>::builder(4, Policy::Block).grace(Duration::from_millis(50));
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
    /// let builder = Pipeline::<u32>::builder(4, Policy::Block).unresponsive_after(Duration::from_secs(2));
    /// # drop(builder);
    /// ```
    pub fn unresponsive_after(mut self, wait: Duration) -> Self {
        self.unresponsive_after = wait;
        self
    }

    /// Makes the pipeline's stop token a child of `parent`: cancelling `parent` stops intake
    /// and closes the queue, as [`shutdown`](Pipeline::shutdown) does, and the report's cause
    /// is [`StopCause::External`](crate::StopCause::External).
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
    /// let builder = Pipeline::<u32>::builder(4, Policy::Block);
    /// assert!(!builder.worker_token().is_cancelled());
    /// ```
    pub fn worker_token(&self) -> CancellationToken {
        self.worker_token.clone()
    }

    /// Calls `hook` with each item the policy sheds (`DropNewest`) or evicts
    /// (`DropOldest`), before the push hands the item back: to count it, log it or raise an
    /// alarm in one place for every producer.
    ///
    /// The hook runs in the producer's task, after the queue's lock is released, so it may
    /// take time without holding up the workers (but it does hold up that producer). A panic
    /// in the hook reaches the producer that pushed; the item is counted as dropped before
    /// the hook runs, so the law holds either way.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use std::sync::Arc;
    /// use backpressure_pipeline::{Pipeline, Policy, SmolSpawner};
    ///
    /// # smol::block_on(async {
    /// let shed = Arc::new(AtomicU64::new(0));
    /// let pipeline = Pipeline::builder(1, Policy::DropNewest)
    ///     .on_shed({
    ///         let shed = shed.clone();
    ///         move |_command: &String| {
    ///             shed.fetch_add(1, Ordering::Relaxed);
    ///         }
    ///     })
    ///     .spawn(SmolSpawner::new(), |_command: String| std::future::pending::<()>())?;
    /// for i in 0..10 {
    ///     let _ = pipeline.try_push(format!("command {i}"));
    /// }
    /// let report = pipeline.shutdown().await;
    /// assert_eq!(shed.load(Ordering::Relaxed), report.dropped);
    /// # Ok::<(), backpressure_pipeline::BuildError>(())
    /// # }).unwrap();
    /// ```
    pub fn on_shed(mut self, hook: impl Fn(&T) + Send + Sync + 'static) -> Self {
        self.on_shed = Some(Box::new(hook));
        self
    }

    /// Chooses what a panic in the worker does (default [`OnPanic::Isolate`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{OnPanic, Pipeline, Policy, SmolSpawner, StopCause};
    ///
    /// # smol::block_on(async {
    /// let pipeline = Pipeline::builder(4, Policy::Block)
    ///     .on_panic(OnPanic::StopPipeline)
    ///     .spawn(SmolSpawner::new(), |n: u32| async move {
    ///         assert!(n != 3, "poison");
    ///     })?;
    /// for n in 0..10 {
    ///     let _ = pipeline.push(n).await; // `Closed` once item 3 has panicked
    /// }
    /// let report = pipeline.shutdown().await;
    /// assert_eq!(report.cause, StopCause::Panic);
    /// assert_eq!(report.panicked, 1);
    /// assert!(report.is_conserved());
    /// # Ok::<(), backpressure_pipeline::BuildError>(())
    /// # }).unwrap();
    /// ```
    pub fn on_panic(mut self, on_panic: OnPanic) -> Self {
        self.on_panic = on_panic;
        self
    }

    /// Starts the pipeline: spawns the workers on `spawner`, each running `work` on one item
    /// at a time.
    ///
    /// A panic in `work` is caught and counted; then, by [`on_panic`](Self::on_panic), the
    /// worker goes on with the next item or the pipeline stops.
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
    pub fn spawn<S, F, Fut>(self, spawner: S, work: F) -> Result<Pipeline<T>, BuildError>
    where
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
            processed: AtomicU64::new(0),
            panicked: AtomicU64::new(0),
            on_shed: self.on_shed,
            on_panic: self.on_panic,
            cause: AtomicU8::new(0),
            #[cfg(feature = "tracing")]
            shed_log: crate::shed_log::ShedLog::new(),
        });
        // Every stop releases every waiter at once: whoever cancels the stop token (shutdown,
        // the parent, a panic stop, a dropped pipeline), the queue closes in that call.
        let weak = Arc::downgrade(&shared);
        // Shutdown and a panic stop record their cause before they cancel; anything else that
        // cancels it is the parent (or a dropped pipeline, which reports nothing).
        shared.stop.on_cancel(Box::new(move || {
            if let Some(shared) = weak.upgrade() {
                shared.set_cause(StopCause::External);
                shared.queue.close();
            }
        }));
        let work = Arc::new(work);
        // The pipeline first, then its workers: if the runtime refuses one (or its `spawn`
        // panics), dropping the pipeline aborts those already started and closes the queue.
        let mut pipeline = Pipeline {
            shared,
            spawner: Arc::new(spawner),
            deadline: self.deadline,
            grace: self.grace,
            unresponsive_after: self.unresponsive_after,
            workers: Workers::new(),
            state: Mutex::new(State::default()),
        };
        for _ in 0..self.workers {
            let worker = spawn_worker(&pipeline.spawner, pipeline.shared.clone(), work.clone())?;
            pipeline.workers.add(worker);
        }
        pipeline.workers.seal();
        Ok(pipeline)
    }
}

impl<T> fmt::Debug for PipelineBuilder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PipelineBuilder")
            .field("capacity", &self.capacity)
            .field("policy", &self.policy)
            .field("workers", &self.workers)
            .field("deadline", &self.deadline)
            .field("grace", &self.grace)
            .field("unresponsive_after", &self.unresponsive_after)
            .field("parent", &self.parent)
            .field("on_shed", &self.on_shed.as_ref().map(|_| ".."))
            .field("on_panic", &self.on_panic)
            .finish_non_exhaustive()
    }
}

impl<T> PipelineBuilder<T> {
    pub(super) fn new(capacity: usize, policy: Policy) -> PipelineBuilder<T> {
        PipelineBuilder {
            capacity,
            policy,
            workers: 1,
            deadline: Duration::from_secs(5),
            grace: Duration::from_secs(1),
            unresponsive_after: Duration::from_secs(1),
            parent: None,
            worker_token: CancellationToken::new(),
            on_shed: None,
            on_panic: OnPanic::Isolate,
        }
    }
}
