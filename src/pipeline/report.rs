//! What a shut-down pipeline reports, and why a pipeline may fail to start.

use std::fmt;

use crate::policy::ConfigError;
use crate::spawner::SpawnError;

/// What a finished run did with every item and every worker, returned by
/// [`Pipeline::shutdown`](crate::Pipeline::shutdown).
///
/// Each accepted item has exactly one fate, and on every path
/// `produced == processed + failed + dropped + expired + superseded + abandoned + panicked`
/// ([`is_conserved`](Report::is_conserved)), where
/// `abandoned == handed_back + lost_in_flight`. Cheap to clone: the handed-back items
/// themselves are taken with [`Pipeline::take_leftovers`](crate::Pipeline::take_leftovers).
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
    /// Items whose work succeeded.
    pub processed: u64,
    /// Items whose work failed for good: an error, or the last attempt of a retried item
    /// (handed to the dead-letter hook, if the work gave the item back).
    pub failed: u64,
    /// Items discarded by the policy: incoming ones shed under `DropNewest`, buffered ones
    /// evicted under `DropOldest`.
    pub dropped: u64,
    /// Items shed at the queue's exit for their queue delay: older than
    /// [`max_age`](crate::PipelineBuilder::max_age), or shed by
    /// [`codel`](crate::PipelineBuilder::codel); each was handed to
    /// [`on_expired`](crate::PipelineBuilder::on_expired) if one is set (dropped otherwise).
    /// 0 without those features.
    pub expired: u64,
    /// Items replaced while waiting by a newer item of their key, and handed back to the
    /// pusher as [`PushOutcome::Superseded`](crate::PushOutcome::Superseded) (a pipeline
    /// that [`coalesce`](crate::PipelineBuilder::coalesce)s). 0 otherwise.
    pub superseded: u64,
    /// Accepted items never processed: the pipeline stopped before a worker took them, or
    /// the deadline passed; `handed_back + lost_in_flight`.
    pub abandoned: u64,
    /// Abandoned items handed back by [`Pipeline::take_leftovers`](crate::Pipeline::take_leftovers):
    /// left in the queue, or waiting for a retry.
    pub handed_back: u64,
    /// Abandoned items that cannot come back: held by a worker that was aborted, or that
    /// is unresponsive.
    pub lost_in_flight: u64,
    /// Items whose work panicked.
    pub panicked: u64,
    /// Failed attempts followed by a wait for another one (an item retried twice counts 2;
    /// a wait cut short by the deadline counts too, its item then handed back).
    pub retried: u64,
    /// Worker states rebuilt after a panic, under [`OnPanic::Restart`].
    pub restarts: u64,
    /// Failed attempts to build a worker's state (see
    /// [`PipelineBuilder::spawn_with_state`](crate::PipelineBuilder::spawn_with_state)).
    pub start_failures: u64,
    /// Workers started.
    pub workers_spawned: usize,
    /// Workers whose task ended and was joined (including the aborted ones).
    pub workers_joined: usize,
    /// Joined workers that were aborted, or dropped unfinished by their runtime.
    pub workers_aborted: usize,
    /// Joined workers that ended because their state could not be built after every
    /// attempt.
    pub workers_not_started: usize,
    /// Workers still running when shutdown gave up on them (blocked in synchronous code).
    pub workers_unresponsive: usize,
    /// What started the shutdown.
    pub cause: StopCause,
    /// Whether the deadline passed with items left: in the queue, waiting for a retry, or
    /// in a worker's hands.
    pub deadline_exceeded: bool,
}

impl Report {
    /// Whether `produced == processed + failed + dropped + expired + superseded + abandoned + panicked` and
    /// `abandoned == handed_back + lost_in_flight`.
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
        self.produced
            == self.processed
                + self.failed
                + self.dropped
                + self.expired
                + self.superseded
                + self.abandoned
                + self.panicked
            && self.abandoned == self.handed_back + self.lost_in_flight
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
            "produced {} = processed {} + failed {} + dropped {} + expired {} + superseded {} \
             + abandoned {} \
             (handed back {}, lost in flight {}) + panicked {}; retried {}, restarts {}, \
             start failures {}; \
             workers: {} spawned, {} joined, {} aborted, {} not started, {} unresponsive; {:?}{}",
            self.produced,
            self.processed,
            self.failed,
            self.dropped,
            self.expired,
            self.superseded,
            self.abandoned,
            self.handed_back,
            self.lost_in_flight,
            self.panicked,
            self.retried,
            self.restarts,
            self.start_failures,
            self.workers_spawned,
            self.workers_joined,
            self.workers_aborted,
            self.workers_not_started,
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

/// What started a pipeline's shutdown: the first of the stops, whichever comes later.
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
    /// [`Pipeline::shutdown`](crate::Pipeline::shutdown) was called.
    Shutdown,
    /// The parent fired (a token cancelled, a future completed or panicked) before
    /// shutdown was called.
    External,
    /// A worker panicked under [`OnPanic::StopPipeline`].
    Panic,
    /// No worker could build its state (see
    /// [`PipelineBuilder::start_retry`](crate::PipelineBuilder::start_retry)): the pipeline
    /// stopped itself instead of leaving producers waiting for workers that will never come.
    NoWorkers,
}

/// What a panic in the worker does. In every case the panic is caught, its item is counted
/// as panicked, and no task is lost.
///
/// # Examples
///
/// ```
/// use backpressure_pipeline::{OnPanic, Pipeline, Policy, SmolSpawner};
///
/// # smol::block_on(async {
/// let pipeline = Pipeline::builder(4, Policy::Block)
///     .on_panic(OnPanic::Isolate)
///     .spawn(SmolSpawner::new(), |n: u32| async move {
///         assert!(n % 2 == 0, "odd item");
///     })?;
/// for n in 0..10 {
///     let _ = pipeline.push(n).await;
/// }
/// let report = pipeline.shutdown().await;
/// assert_eq!((report.processed, report.panicked), (5, 5));
/// # Ok::<(), backpressure_pipeline::BuildError>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum OnPanic {
    /// Count the item as panicked and go on with the next one (the default).
    #[default]
    Isolate,
    /// Stop the pipeline at the first panic: intake stops, the queue closes, the workers take
    /// no new item, and what is left is abandoned (handed back). The report's cause is
    /// [`StopCause::Panic`].
    StopPipeline,
    /// Drop the worker's state (a panic may have left it inconsistent), build a new one
    /// after a backoff (the [`start_retry`](crate::PipelineBuilder::start_retry) policy,
    /// growing with consecutive panics), and go on; each rebuild is counted in
    /// [`Report::restarts`], each failed attempt to build in [`Report::start_failures`]
    /// (a worker that cannot rebuild ends, as one that cannot start). For stateless work it
    /// is [`Isolate`](OnPanic::Isolate) with a backoff, each panic counted as a restart.
    Restart,
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
