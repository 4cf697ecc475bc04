//! Configuring and starting a pipeline.

use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::invoke::{ErrorHooks, Invoker, Job, NoErrorHooks, Stateful, Stateless};
use super::producer::{ExpiredHook, Shared, ShedHook};
use super::report::BuildError;
use super::source::{Batch, One, Source};
use super::stop::{watch_parent, Parent, StopSignal};
use super::worker::{spawn_worker, Workers};
use super::{OnPanic, Pipeline, State, StopCause};
use crate::cancel::CancellationToken;
use crate::delay::{Codel, Expired};
use crate::policy::{ConfigError, Policy};
use crate::queue::{KeyHasher, Keyer, Queue, Timing};
use crate::retry::Retry;
use crate::spawner::{BoxFuture, Spawner};
use crate::work::{WorkFuture, WorkOutput};

/// Configures and starts a [`Pipeline`]. Made by [`Pipeline::builder`].
///
/// The capacity and the policy are required; the rest have defaults: 1 worker, a 5 s drain
/// deadline, a 1 s grace, 1 s before an aborted worker is named unresponsive, no parent,
/// no item retry ([`Retry::never`]), 5 attempts to build a worker's state
/// ([`start_retry`](PipelineBuilder::start_retry)), [`OnPanic::Isolate`], no hooks.
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
///
/// The second type parameter records the [error hooks](PipelineBuilder::on_error), if any:
/// [`NoErrorHooks`] until one is set, then [`ErrorHooks<T, E>`] for the work's error type
/// `E`. It is inferred; a reader never needs to write it.
pub struct PipelineBuilder<T, H = NoErrorHooks> {
    capacity: usize,
    policy: Policy,
    workers: usize,
    deadline: Duration,
    grace: Duration,
    unresponsive_after: Duration,
    /// A token, or a future to watch (in a `Mutex` only to keep the builder `Sync`).
    parent: Option<Result<CancellationToken, Mutex<BoxFuture>>>,
    worker_token: CancellationToken,
    on_shed: Option<ShedHook<T>>,
    on_expired: Option<ExpiredHook<T>>,
    timing: Timing,
    measure_delay: bool,
    watermarks: Option<(usize, usize)>,
    keys: KeyConfig<T>,
    name: String,
    on_panic: OnPanic,
    retry: Retry,
    start_retry: Retry,
    hooks: H,
}

impl<T: Send + 'static, H> PipelineBuilder<T, H> {
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

    /// Stops the pipeline when `parent` fires: cancelling a [`CancellationToken`] given
    /// here, or the completion of any `Future<Output = ()> + Send + 'static` (tokio-util's
    /// `token.clone().cancelled_owned()`, a Ctrl-C future). Either way intake stops and the
    /// queue closes, releasing every waiting producer and worker, as
    /// [`shutdown`](Pipeline::shutdown) does, and the report's cause is
    /// [`StopCause::External`](crate::StopCause::External). See [`StopSignal`].
    ///
    /// A token stops the pipeline in the call that cancels it (the pipeline's stop token is
    /// its child). A future is awaited by a task on the pipeline's spawner, which ends as
    /// soon as the pipeline stops, whatever stopped it; the future is dropped then.
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
    pub fn parent(mut self, parent: impl StopSignal) -> Self {
        self.parent = Some(parent.into_parent().map_err(Mutex::new));
        self
    }

    /// A token cancelled when the workers must take no new item: when shutdown's deadline
    /// passes (before it aborts them), at a panic stop ([`OnPanic::StopPipeline`]), when no
    /// worker can start, and when the pipeline is dropped. Capture it in the worker to wind
    /// down cooperatively (flush, checkpoint) instead of being aborted mid-item.
    ///
    /// It is a child of the pipeline's own worker token: cancelling it cancels only it (and
    /// its own children), never the pipeline's workers, so it cannot stop the workers while
    /// producers still wait for them.
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{Pipeline, Policy};
    ///
    /// let builder = Pipeline::<u32>::builder(4, Policy::Block);
    /// let token = builder.worker_token();
    /// assert!(!token.is_cancelled());
    /// token.cancel(); // no effect on the pipeline
    /// assert!(!builder.worker_token().is_cancelled());
    /// ```
    pub fn worker_token(&self) -> CancellationToken {
        self.worker_token.child_token()
    }

    /// Calls `hook` with each item shed: by the policy at the door (`DropNewest` sheds,
    /// `DropOldest` evicts), before the push hands the item back; and at the exit for its
    /// queue delay ([`max_age`](Self::max_age), [`codel`](Self::codel)), before
    /// [`on_expired`](Self::on_expired) gets it by value. One place to count, log or raise
    /// an alarm for every loss; `Report::dropped + Report::expired` is the number of calls.
    ///
    /// For a shed at the door the hook runs in the producer's task, after the queue's lock is
    /// released, so it may take time without holding up the workers (but it does hold up
    /// that producer); a panic in it reaches the producer that pushed. For a shed at the exit
    /// it runs in the worker's task that took the item, and a panic in it is caught (the
    /// worker goes on). Either way the item is counted before the hook runs, so the law
    /// holds.
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

    /// Sheds, at the queue's exit, every item that has waited longer than `max_age` (a TTL):
    /// when a worker would take it, it is handed to [`on_expired`](Self::on_expired) with
    /// [`Expired::MaxAge`] instead, and counted in [`Report::expired`](crate::Report::expired).
    ///
    /// The age is the item's queue delay on the spawner's clock ([`Spawner::now`]), from the
    /// moment the queue took it; an item whose age is exactly `max_age` is still served.
    /// Items are stamped only when this (or [`codel`](Self::codel), or
    /// [`measure_queue_delay`](Self::measure_queue_delay)) is set; the queue reads no clock
    /// otherwise. Combined with CoDel, the maximum age is checked first. Items in a batch
    /// being filled, waiting for a retry, or handed back at shutdown are not checked again.
    ///
    /// # Errors
    ///
    /// A zero `max_age` fails the build with [`ConfigError::ZeroMaxAge`].
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use backpressure_pipeline::{Pipeline, Policy, SmolSpawner};
    ///
    /// # smol::block_on(async {
    /// // A request that waited more than 200 ms gets a "try again" instead of a late answer.
    /// let pipeline = Pipeline::builder(1024, Policy::DropNewest)
    ///     .max_age(Duration::from_millis(200))
    ///     .on_expired(|request: u64, why| eprintln!("request {request}: {why}"))
    ///     .spawn(SmolSpawner::new(), |_request: u64| async {})?;
    /// let report = pipeline.shutdown().await;
    /// assert!(report.is_conserved());
    /// # Ok::<(), backpressure_pipeline::BuildError>(())
    /// # }).unwrap();
    /// ```
    ///
    /// [`Spawner::now`]: crate::Spawner::now
    pub fn max_age(mut self, max_age: Duration) -> Self {
        self.timing.max_age = Some(max_age);
        self
    }

    /// Sheds at the queue's exit by CoDel's control law (see [`Codel`] for the algorithm,
    /// its sources, and adaptive LIFO): while the queue delay stays above target, the oldest
    /// items are handed to [`on_expired`](Self::on_expired) with [`Expired::Codel`], faster
    /// and faster until the delay falls. Counted in [`Report::expired`](crate::Report::expired);
    /// [`Stats::overloaded`](crate::Stats::overloaded) tells whether CoDel is dropping now.
    ///
    /// CoDel acts when a worker takes work, on the spawner's clock, and never at the door:
    /// the policy still decides what happens when the queue is full.
    ///
    /// # Errors
    ///
    /// A zero target, or one not below the interval, fails the build with
    /// [`ConfigError::Codel`].
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use backpressure_pipeline::{Codel, Pipeline, Policy, SmolSpawner};
    ///
    /// # smol::block_on(async {
    /// let pipeline = Pipeline::builder(4096, Policy::DropNewest)
    ///     .codel(Codel::new(Duration::from_millis(5), Duration::from_millis(100)).lifo(true))
    ///     .spawn(SmolSpawner::new(), |_request: u64| async {})?;
    /// assert!(!pipeline.stats().overloaded);
    /// # pipeline.shutdown().await;
    /// # Ok::<(), backpressure_pipeline::BuildError>(())
    /// # }).unwrap();
    /// ```
    pub fn codel(mut self, codel: Codel) -> Self {
        self.timing.codel = Some(codel);
        self
    }

    /// Stamps every item, to measure queue delays ([`Stats::oldest_age`] and
    /// [`Stats::queue_delay`]) without shedding by them. Implied by
    /// [`max_age`](Self::max_age) and [`codel`](Self::codel). Costs a read of the spawner's
    /// clock per push (per poll of a waiting `Block` push), per take, and per `stats()`,
    /// and `stats()` then scans the stamps for the oldest (bounded by the capacity).
    ///
    /// [`Stats::oldest_age`]: crate::Stats::oldest_age
    /// [`Stats::queue_delay`]: crate::Stats::queue_delay
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{Pipeline, Policy, SmolSpawner};
    ///
    /// # smol::block_on(async {
    /// let pipeline = Pipeline::builder(8, Policy::Block)
    ///     .measure_queue_delay()
    ///     .spawn(SmolSpawner::new(), |_: u8| async {})?;
    /// assert!(pipeline.stats().queue_delay.is_some());
    /// # pipeline.shutdown().await;
    /// # Ok::<(), backpressure_pipeline::BuildError>(())
    /// # }).unwrap();
    /// ```
    pub fn measure_queue_delay(mut self) -> Self {
        self.measure_delay = true;
        self
    }

    /// Whether items are stamped.
    fn is_timed(&self) -> bool {
        self.measure_delay || self.timing.max_age.is_some() || self.timing.codel.is_some()
    }

    /// Sets the hook handed each item shed at the queue's exit (by
    /// [`max_age`](Self::max_age) or [`codel`](Self::codel)), by value, with why: to answer
    /// a request with "too late", or to record it. Without a hook such items are dropped
    /// (and still counted in [`Report::expired`](crate::Report::expired)).
    ///
    /// It runs in the worker's task that took the items, with no lock held, before that
    /// worker goes on. A panic in it is caught (the worker goes on; the item is counted
    /// expired either way).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use backpressure_pipeline::{Expired, Pipeline, Policy, SmolSpawner};
    ///
    /// # smol::block_on(async {
    /// let (late, too_late) = async_channel::unbounded();
    /// let pipeline = Pipeline::builder(64, Policy::DropNewest)
    ///     .max_age(Duration::from_millis(50))
    ///     .on_expired(move |id: u32, why: Expired| {
    ///         let _ = late.try_send((id, why.age()));
    ///     })
    ///     .spawn(SmolSpawner::new(), |_id: u32| async {})?;
    /// let report = pipeline.shutdown().await;
    /// assert_eq!(too_late.len() as u64, report.expired);
    /// # Ok::<(), backpressure_pipeline::BuildError>(())
    /// # }).unwrap();
    /// ```
    pub fn on_expired(mut self, hook: impl Fn(T, Expired) + Send + Sync + 'static) -> Self {
        self.on_expired = Some(Box::new(hook));
        self
    }

    /// Watches the queue's length against a `high` and a `low` mark (in items), as a
    /// [`Pressure`](crate::Pressure) signal from [`Pipeline::pressure`](crate::Pipeline::pressure):
    /// the level turns high when the length reaches `high`, and normal again only when it
    /// falls to `low`. The gap is the hysteresis, so the signal fires once per real crossing
    /// and never flaps around a mark. The marks stop with intake (at shutdown or a stop).
    ///
    /// # Errors
    ///
    /// Unless `low < high <= capacity`, the build fails with [`ConfigError::Watermarks`].
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{Pipeline, Policy, PressureLevel, SmolSpawner};
    ///
    /// # smol::block_on(async {
    /// let pipeline = Pipeline::builder(1000, Policy::Block)
    ///     .watermarks(800, 200)
    ///     .spawn(SmolSpawner::new(), |_: u32| async {})?;
    /// assert_eq!(pipeline.pressure().unwrap().level(), PressureLevel::Normal);
    /// # pipeline.shutdown().await;
    /// # Ok::<(), backpressure_pipeline::BuildError>(())
    /// # }).unwrap();
    /// ```
    pub fn watermarks(mut self, high: usize, low: usize) -> Self {
        self.watermarks = Some((high, low));
        self
    }

    /// Keys the items: items with the same key are processed in push order, at most
    /// [`per_key`](Self::per_key) at once (default 1), while items of different keys run in
    /// parallel on the workers.
    ///
    /// A worker takes the oldest queued item whose key has fewer than `per_key` items
    /// running (taken and not yet finished), skipping only the items of busy keys: there
    /// are no fixed lanes, so one slow key holds up its own items and no others. An item
    /// stays running until its work is done: through its retries (a retried item keeps its
    /// key's order) and, in a batch, until the whole batch is done. Across keys, items are
    /// served oldest first. A batch being filled never waits on an item of a key it holds:
    /// such an item's push (or the queue closing) delivers the batch at once.
    ///
    /// `key` runs once per push, before the queue's lock, as does `K`'s `Hash`; keys are
    /// told apart by a 128-bit hash with random seeds (two distinct keys share a lane with
    /// a chance near 2<sup>-128</sup>), so `K` needs no `Eq`.
    ///
    /// The capacity still bounds every queued item, of all keys, and the policy applies
    /// when the queue is full, as without keys:
    ///
    /// | policy | when the queue is full |
    /// |---|---|
    /// | [`DropNewest`](Policy::DropNewest) | the incoming item is shed |
    /// | [`DropOldest`](Policy::DropOldest) | the oldest queued item, of any key, is evicted |
    /// | [`Block`](Policy::Block) | the push waits for a free slot, whichever key frees it |
    ///
    /// So a key whose items pile up (a slow key fed faster than one worker serves it) can
    /// fill the queue, and then new items of every key meet the policy. Watch
    /// [`Stats::depth`](crate::Stats::depth), or [`coalesce`](Self::coalesce) when only
    /// a key's latest item matters.
    ///
    /// Leftovers are handed back in push order, so each key's in its order (with
    /// `per_key` above 1, items of one key in flight at once are handed back in the order
    /// of their workers).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use backpressure_pipeline::{Pipeline, Policy, SmolSpawner};
    ///
    /// # smol::block_on(async {
    /// let seen = Arc::new(Mutex::new(Vec::new()));
    /// let log = seen.clone();
    /// // (account, amount): each account's commands in order, accounts in parallel.
    /// let pipeline = Pipeline::builder(64, Policy::Block)
    ///     .workers(4)
    ///     .key_by(|&(account, _): &(u32, i64)| account)
    ///     .spawn(SmolSpawner::new(), move |(account, amount)| {
    ///         let log = log.clone();
    ///         async move { log.lock().unwrap().push((account, amount)) }
    ///     })?;
    /// for amount in 0..10 {
    ///     for account in 0..3 {
    ///         let _ = pipeline.push((account, amount)).await;
    ///     }
    /// }
    /// assert!(pipeline.shutdown().await.is_conserved());
    /// let seen = seen.lock().unwrap();
    /// for account in 0..3 {
    ///     let amounts: Vec<i64> = seen.iter().filter(|c| c.0 == account).map(|c| c.1).collect();
    ///     assert_eq!(amounts, (0..10).collect::<Vec<_>>());
    /// }
    /// # Ok::<(), backpressure_pipeline::BuildError>(())
    /// # }).unwrap();
    /// ```
    pub fn key_by<K, F>(mut self, key: F) -> Self
    where
        K: Hash,
        F: Fn(&T) -> K + Send + Sync + 'static,
    {
        let hasher = KeyHasher::new();
        self.keys.keyer = Some(Arc::new(move |item: &T| hasher.hash(&key(item))));
        self
    }

    /// How many items of one key may run at once (default 1), with
    /// [`key_by`](Self::key_by). They start in push order.
    ///
    /// # Errors
    ///
    /// The pipeline is not built: [`ConfigError::ZeroPerKey`] if `limit` is 0,
    /// [`ConfigError::NoKey`] without `key_by`, [`ConfigError::CoalescePerKey`] with
    /// [`coalesce`](Self::coalesce) and a `limit` above 1.
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{BuildError, ConfigError, Pipeline, Policy, SmolSpawner};
    ///
    /// let err = Pipeline::builder(8, Policy::Block)
    ///     .per_key(2) // no key_by
    ///     .spawn(SmolSpawner::new(), |_: u8| async {})
    ///     .unwrap_err();
    /// assert_eq!(err, BuildError::Config(ConfigError::NoKey));
    /// ```
    pub fn per_key(mut self, limit: usize) -> Self {
        self.keys.per_key = Some(limit);
        self
    }

    /// Coalesces by key (conflation), with [`key_by`](Self::key_by): a push whose key
    /// already has an item waiting in the queue replaces it, and the replaced item comes
    /// back as [`PushOutcome::Superseded`](crate::PushOutcome::Superseded), counted in
    /// [`Report::superseded`](crate::Report::superseded). A key has at most one item
    /// running and one waiting, so the workers only ever see a key's latest item: for
    /// state streams (positions, prices, a config) where only the last value counts.
    ///
    /// The new item takes the old one's place in the queue and its arrival time (so
    /// [`max_age`](Self::max_age) and CoDel count from when the key's wait began). It
    /// needs no free slot: a push that replaces is never shed, never evicts and never
    /// waits, whatever the policy; a push of a key with nothing waiting meets the policy
    /// as usual.
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{Pipeline, Policy, PushOutcome, SmolSpawner};
    ///
    /// # smol::block_on(async {
    /// let (started, on_start) = async_channel::unbounded();
    /// let (release, gate) = async_channel::unbounded::<()>();
    /// let pipeline = Pipeline::builder(16, Policy::Block)
    ///     .key_by(|&(sensor, _): &(u8, u32)| sensor)
    ///     .coalesce()
    ///     .spawn(SmolSpawner::new(), move |reading: (u8, u32)| {
    ///         let (started, gate) = (started.clone(), gate.clone());
    ///         async move {
    ///             let _ = started.send(reading).await;
    ///             let _ = gate.recv().await; // held until released (or the gate closes)
    ///         }
    ///     })?;
    /// let _ = pipeline.push((7, 0)).await;
    /// assert_eq!(on_start.recv().await?, (7, 0)); // running
    /// assert_eq!(pipeline.push((7, 1)).await, PushOutcome::Accepted); // waiting
    /// assert_eq!(pipeline.push((7, 2)).await, PushOutcome::Superseded((7, 1)));
    /// assert_eq!(pipeline.push((7, 3)).await, PushOutcome::Superseded((7, 2)));
    /// release.close();
    /// assert_eq!(on_start.recv().await?, (7, 3)); // only the latest ran next
    /// let report = pipeline.shutdown().await;
    /// assert_eq!((report.processed, report.superseded), (2, 2));
    /// assert!(report.is_conserved());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub fn coalesce(mut self) -> Self {
        self.keys.coalesce = true;
        self
    }

    /// Names the pipeline (default `"pipeline"`): its `Debug` output shows the name, and with
    /// the `metrics` feature it is the `pipeline` label of every exported metric (see
    /// `Pipeline::record_metrics`).
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{Pipeline, Policy, SmolSpawner};
    ///
    /// # smol::block_on(async {
    /// let pipeline = Pipeline::builder(8, Policy::Block)
    ///     .name("thumbnails")
    ///     .spawn(SmolSpawner::new(), |_: u8| async {})?;
    /// assert!(format!("{pipeline:?}").contains("thumbnails"));
    /// # pipeline.shutdown().await;
    /// # Ok::<(), backpressure_pipeline::BuildError>(())
    /// # }).unwrap();
    /// ```
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
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

    /// Retries items whose work failed and handed the item back
    /// ([`Outcome::Retry`](crate::Outcome::Retry)), with backoff (default
    /// [`Retry::never`]). Only `Outcome::Retry` is retried: an `Err` from work that returns
    /// `Result<(), E>` is final (the item is gone with it). After the last attempt the item goes to the
    /// [dead-letter hook](PipelineBuilder::dead_letter) and counts as failed. An item waiting
    /// for its next attempt when the shutdown deadline passes is handed back with the
    /// leftovers ([`Pipeline::take_leftovers`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use backpressure_pipeline::{Outcome, Pipeline, Policy, Retry, SmolSpawner};
    ///
    /// # smol::block_on(async {
    /// let pipeline = Pipeline::builder(4, Policy::Block)
    ///     .retry(Retry::attempts(3).backoff(Duration::from_millis(1), Duration::from_millis(10)))
    ///     .spawn(SmolSpawner::new(), |n: u32| async move {
    ///         Outcome::Retry(n, "always fails") // handed back, tried 3 times in all
    ///     })?;
    /// assert!(pipeline.push(7).await.is_accepted());
    /// let report = pipeline.shutdown().await;
    /// assert_eq!((report.failed, report.retried), (1, 2));
    /// # Ok::<(), backpressure_pipeline::BuildError>(())
    /// # }).unwrap();
    /// ```
    pub fn retry(mut self, retry: Retry) -> Self {
        self.retry = retry;
        self
    }

    /// How a worker's state is built again after a failed attempt, and rebuilt after a
    /// panic under [`OnPanic::Restart`] (default: 5 attempts, 100 ms doubling up to 10 s,
    /// with jitter). A restart waits the backoff of its count of consecutive panics (the
    /// attempts do not cap restarts; they cap the failed builds of each one): work that
    /// panics on every item under `Restart` waits up to `max` per item, so give it a short
    /// backoff if that can happen. A worker whose every attempt fails ends; when none is left that could
    /// start, the pipeline stops itself with [`StopCause::NoWorkers`](crate::StopCause::NoWorkers)
    /// instead of leaving producers waiting. Each failed attempt is counted in
    /// [`Report::start_failures`](crate::Report::start_failures).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use backpressure_pipeline::{Pipeline, Policy, Retry, SmolSpawner, StopCause, WorkFuture};
    ///
    /// # smol::block_on(async {
    /// let pipeline = Pipeline::builder(4, Policy::Block)
    ///     .workers(2)
    ///     .start_retry(Retry::attempts(2).backoff(Duration::ZERO, Duration::ZERO))
    ///     .spawn_with_state(
    ///         SmolSpawner::new(),
    ///         |_worker| async { Err::<(), _>("the database is down") },
    ///         |_: &mut (), _: u8| -> WorkFuture<'_, ()> { Box::pin(async {}) },
    ///     )?;
    /// while !pipeline.is_closed() {
    ///     smol::future::yield_now().await; // the workers try, and give up
    /// }
    /// let report = pipeline.shutdown().await;
    /// assert_eq!(report.cause, StopCause::NoWorkers);
    /// assert_eq!((report.workers_not_started, report.start_failures), (2, 4));
    /// # Ok::<(), backpressure_pipeline::BuildError>(())
    /// # }).unwrap();
    /// ```
    pub fn start_retry(mut self, retry: Retry) -> Self {
        self.start_retry = retry;
        self
    }

    /// Calls `hook` with each error the work returns: every failed attempt, retried or
    /// final. It runs in the worker's task after the attempt is counted (as `retried`, or
    /// the item as `failed`); a panic in it is caught and ignored.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use std::sync::Arc;
    /// use backpressure_pipeline::{Pipeline, Policy, SmolSpawner};
    ///
    /// # smol::block_on(async {
    /// let errors = Arc::new(AtomicU64::new(0));
    /// let pipeline = Pipeline::builder(4, Policy::Block)
    ///     .on_error({
    ///         let errors = errors.clone();
    ///         move |_: &std::io::Error| {
    ///             errors.fetch_add(1, Ordering::Relaxed);
    ///         }
    ///     })
    ///     .spawn(SmolSpawner::new(), |n: u32| async move {
    ///         if n % 2 == 0 { Ok(()) } else { Err(std::io::Error::other("odd")) }
    ///     })?;
    /// for n in 0..10 {
    ///     let _ = pipeline.push(n).await;
    /// }
    /// let report = pipeline.shutdown().await;
    /// assert_eq!((report.processed, report.failed), (5, 5));
    /// assert_eq!(errors.load(Ordering::Relaxed), 5);
    /// # Ok::<(), backpressure_pipeline::BuildError>(())
    /// # }).unwrap();
    /// ```
    pub fn on_error<E>(
        self,
        hook: impl Fn(&E) + Send + Sync + 'static,
    ) -> PipelineBuilder<T, ErrorHooks<T, E>>
    where
        H: Into<ErrorHooks<T, E>>,
    {
        self.with_hooks(|mut hooks| {
            hooks.on_error = Some(Box::new(hook));
            hooks
        })
    }

    /// Calls `hook` with each item that failed for good and was handed back, with its last
    /// error: a retried item after its last attempt ([`Outcome::Retry`](crate::Outcome::Retry)),
    /// or a rejected one ([`Outcome::Reject`](crate::Outcome::Reject)). The item is counted
    /// as failed before the hook runs; a panic in the hook is caught and ignored. Without
    /// this hook such items are dropped (and still counted).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use backpressure_pipeline::{Outcome, Pipeline, Policy, SmolSpawner};
    ///
    /// # smol::block_on(async {
    /// let dead = Arc::new(Mutex::new(Vec::new()));
    /// let pipeline = Pipeline::builder(4, Policy::Block)
    ///     .dead_letter({
    ///         let dead = dead.clone();
    ///         move |command: String, error: &'static str| dead.lock().unwrap().push((command, error))
    ///     })
    ///     .spawn(SmolSpawner::new(), |command: String| async move {
    ///         if command.starts_with("rm") { Outcome::Reject(command, "refused") } else { Outcome::Done }
    ///     })?;
    /// let _ = pipeline.push("ls".to_string()).await;
    /// let _ = pipeline.push("rm -rf".to_string()).await;
    /// pipeline.shutdown().await;
    /// assert_eq!(*dead.lock().unwrap(), [("rm -rf".to_string(), "refused")]);
    /// # Ok::<(), backpressure_pipeline::BuildError>(())
    /// # }).unwrap();
    /// ```
    pub fn dead_letter<E>(
        self,
        hook: impl Fn(T, E) + Send + Sync + 'static,
    ) -> PipelineBuilder<T, ErrorHooks<T, E>>
    where
        H: Into<ErrorHooks<T, E>>,
    {
        self.with_hooks(|mut hooks| {
            hooks.dead_letter = Some(Box::new(hook));
            hooks
        })
    }

    /// Calls `hook` with each batch that failed for good and was handed back, with its
    /// last error: the batch form of [`dead_letter`](PipelineBuilder::dead_letter), for
    /// [`spawn_batched`](PipelineBuilder::spawn_batched). Each of its items counts as failed
    /// before the hook runs.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use std::time::Duration;
    /// use backpressure_pipeline::{Batch, Outcome, Pipeline, Policy, SmolSpawner};
    ///
    /// # smol::block_on(async {
    /// let dead = Arc::new(Mutex::new(Vec::new()));
    /// let pipeline = Pipeline::builder(8, Policy::Block)
    ///     .dead_letter_batch({
    ///         let dead = dead.clone();
    ///         move |rows: Vec<u32>, _: &str| dead.lock().unwrap().extend(rows)
    ///     })
    ///     .spawn_batched(SmolSpawner::new(), Batch::new(4, Duration::ZERO), |rows: Vec<u32>| async move {
    ///         Outcome::Reject(rows, "the table is gone")
    ///     })?;
    /// for row in 0..6 {
    ///     let _ = pipeline.push(row).await;
    /// }
    /// let report = pipeline.shutdown().await;
    /// assert_eq!(report.failed, 6);
    /// dead.lock().unwrap().sort();
    /// assert_eq!(*dead.lock().unwrap(), [0, 1, 2, 3, 4, 5]);
    /// # Ok::<(), backpressure_pipeline::BuildError>(())
    /// # }).unwrap();
    /// ```
    pub fn dead_letter_batch<E>(
        self,
        hook: impl Fn(Vec<T>, E) + Send + Sync + 'static,
    ) -> PipelineBuilder<T, ErrorHooks<T, E>>
    where
        H: Into<ErrorHooks<T, E>>,
    {
        self.with_hooks(|mut hooks| {
            hooks.dead_letter_batch = Some(Box::new(hook));
            hooks
        })
    }

    fn with_hooks<E>(
        self,
        set: impl FnOnce(ErrorHooks<T, E>) -> ErrorHooks<T, E>,
    ) -> PipelineBuilder<T, ErrorHooks<T, E>>
    where
        H: Into<ErrorHooks<T, E>>,
    {
        PipelineBuilder {
            capacity: self.capacity,
            policy: self.policy,
            workers: self.workers,
            deadline: self.deadline,
            grace: self.grace,
            unresponsive_after: self.unresponsive_after,
            parent: self.parent,
            worker_token: self.worker_token,
            on_shed: self.on_shed,
            on_expired: self.on_expired,
            timing: self.timing,
            measure_delay: self.measure_delay,
            watermarks: self.watermarks,
            keys: self.keys,
            name: self.name,
            on_panic: self.on_panic,
            retry: self.retry,
            start_retry: self.start_retry,
            hooks: set(self.hooks.into()),
        }
    }

    /// Starts the pipeline: spawns the workers on `spawner`, each running `work` on one item
    /// at a time.
    ///
    /// The work returns `()`, `Result<(), E>` (an error is counted as failed and shown to
    /// the [error hook](PipelineBuilder::on_error)), or an [`Outcome`](crate::Outcome), which
    /// can hand a failed item back to be [retried](PipelineBuilder::retry) or
    /// [dead-lettered](PipelineBuilder::dead_letter). A panic in `work` is caught and
    /// counted; then the worker goes on as [`on_panic`](Self::on_panic) says.
    ///
    /// # Errors
    ///
    /// [`BuildError::Config`] for a capacity, worker count or number of attempts out of
    /// range, or a [`dead_letter_batch`](PipelineBuilder::dead_letter_batch) hook
    /// ([`ConfigError::DeadLetterMode`]); [`BuildError::Spawn`] if the runtime refuses a
    /// task (workers already spawned are aborted).
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
        Fut: Future + Send + 'static,
        Fut::Output: WorkOutput<T>,
        H: Into<ErrorHooks<T, <Fut::Output as WorkOutput<T>>::Error>>,
    {
        self.start(Arc::new(spawner), One, Stateless(work), |hooks| {
            hooks.into().for_items()
        })
    }

    /// Starts the pipeline with a state per worker: a connection, a buffer, a prepared
    /// statement. `init(index)` builds worker `index`'s state (`0..workers`) before it takes
    /// its first item; each call of `work` gets `&mut` access to it; the state is dropped
    /// when its worker ends (or is rebuilt after a panic under [`OnPanic::Restart`]).
    ///
    /// `init` returns a `Result` and may fail (an `Err`, or a panic): a failed attempt is
    /// counted and tried again with the [`start_retry`](PipelineBuilder::start_retry)
    /// backoff; a worker whose every attempt fails ends, and a pipeline none of whose workers
    /// can start stops itself ([`StopCause::NoWorkers`](crate::StopCause::NoWorkers)). Its
    /// error type needs only `Debug` (it is logged with the `tracing` feature), but it must be
    /// named: write `Ok::<_, std::io::Error>(state)`, or `Ok::<_, std::convert::Infallible>`
    /// for an `init` that cannot fail.
    ///
    /// `work` borrows the state across its `.await`s, so it returns a boxed future:
    /// write it as `|state, item| Box::pin(async move { … })`. Its output is as for
    /// [`spawn`](PipelineBuilder::spawn).
    ///
    /// # Errors
    ///
    /// As [`spawn`](PipelineBuilder::spawn).
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{Pipeline, Policy, SmolSpawner};
    ///
    /// # smol::block_on(async {
    /// // Each worker owns a "connection": here a buffer of the rows it wrote.
    /// let pipeline = Pipeline::builder(16, Policy::Block).workers(2).spawn_with_state(
    ///     SmolSpawner::new(),
    ///     |_worker| async move { Ok::<_, std::io::Error>(Vec::<(usize, u32)>::new()) },
    ///     |rows: &mut Vec<(usize, u32)>, row: u32| Box::pin(async move {
    ///         rows.push((0, row));
    ///         Ok::<(), std::io::Error>(())
    ///     }),
    /// )?;
    /// for row in 0..100 {
    ///     let _ = pipeline.push(row).await;
    /// }
    /// let report = pipeline.shutdown().await;
    /// assert_eq!(report.processed, 100);
    /// # Ok::<(), backpressure_pipeline::BuildError>(())
    /// # }).unwrap();
    /// ```
    pub fn spawn_with_state<Sp, S, I, IFut, IE, F, O>(
        self,
        spawner: Sp,
        init: I,
        work: F,
    ) -> Result<Pipeline<T>, BuildError>
    where
        Sp: Spawner,
        S: Send + 'static,
        I: Fn(usize) -> IFut + Send + Sync + 'static,
        IFut: Future<Output = Result<S, IE>> + Send + 'static,
        IE: fmt::Debug + Send + 'static,
        F: for<'a> Fn(&'a mut S, T) -> WorkFuture<'a, O> + Send + Sync + 'static,
        O: WorkOutput<T>,
        H: Into<ErrorHooks<T, O::Error>>,
    {
        let job = Stateful {
            init,
            work,
            types: PhantomData,
        };
        self.start(Arc::new(spawner), One, job, |hooks| {
            hooks.into().for_items()
        })
    }

    /// Starts the pipeline with workers that take items in batches: each call of `work`
    /// gets 1..=[`max_items`](Batch::max_items) items, in queue order, taken with one lock
    /// for what the queue holds; a batch closes when it is full, or
    /// [`max_wait`](Batch::max_wait) after its first item was taken, whichever comes first
    /// (on the spawner's timer). A batch is never empty.
    ///
    /// Everything else is as for one item at a time, counted per item: a batch that fails
    /// counts each of its items as failed, one that panics each as panicked; a retried batch
    /// is tried again with the items [`Outcome::Retry`](crate::Outcome::Retry) hands back
    /// and, after its last attempt, goes to
    /// [`dead_letter_batch`](PipelineBuilder::dead_letter_batch). Per-item outcomes: the
    /// batch handed back by `Retry` or `Reject` may hold only the items that failed, and the
    /// others count as processed (handed back empty, nothing is retried); a batch handed
    /// back with more items than were taken is not retried but dead-lettered, the items
    /// taken counted as failed. Every policy and `Block`'s back-pressure are unchanged: a
    /// batch being filled holds its items out of the queue.
    ///
    /// At shutdown, a batch being filled when the queue closes is delivered at once, with
    /// what the queue still holds (up to `max_items`), never after waiting for `max_wait`;
    /// batches not started when the deadline passes, and those waiting for a retry, are
    /// handed back item by item ([`Pipeline::take_leftovers`]).
    ///
    /// # Errors
    ///
    /// As [`spawn`](PipelineBuilder::spawn), and [`ConfigError::ZeroBatch`] for
    /// `max_items` 0, [`ConfigError::DeadLetterMode`] if a per-item
    /// [`dead_letter`](PipelineBuilder::dead_letter) hook was set.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use std::time::Duration;
    /// use backpressure_pipeline::{Batch, Pipeline, Policy, SmolSpawner};
    ///
    /// # smol::block_on(async {
    /// let sizes = Arc::new(Mutex::new(Vec::new()));
    /// let pipeline = Pipeline::builder(64, Policy::Block).spawn_batched(
    ///     SmolSpawner::new(),
    ///     Batch::new(16, Duration::from_millis(5)),
    ///     {
    ///         let sizes = sizes.clone();
    ///         move |rows: Vec<u32>| {
    ///             let sizes = sizes.clone();
    ///             async move { sizes.lock().unwrap().push(rows.len()) } // one transaction
    ///         }
    ///     },
    /// )?;
    /// for row in 0..100 {
    ///     let _ = pipeline.push(row).await;
    /// }
    /// let report = pipeline.shutdown().await;
    /// assert_eq!(report.processed, 100); // items, not batches
    /// let sizes = sizes.lock().unwrap();
    /// assert_eq!(sizes.iter().sum::<usize>(), 100);
    /// assert!(sizes.iter().all(|&n| (1..=16).contains(&n)));
    /// # Ok::<(), backpressure_pipeline::BuildError>(())
    /// # }).unwrap();
    /// ```
    pub fn spawn_batched<Sp, F, Fut>(
        self,
        spawner: Sp,
        batch: Batch,
        work: F,
    ) -> Result<Pipeline<T>, BuildError>
    where
        Sp: Spawner,
        F: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: WorkOutput<Vec<T>>,
        H: Into<ErrorHooks<T, <Fut::Output as WorkOutput<Vec<T>>>::Error>>,
    {
        if batch.max_items() == 0 {
            return Err(ConfigError::ZeroBatch.into());
        }
        self.start(Arc::new(spawner), batch, Stateless(work), |hooks| {
            hooks.into().for_batches()
        })
    }

    /// Batches, as [`spawn_batched`](PipelineBuilder::spawn_batched), with a state per
    /// worker, as [`spawn_with_state`](PipelineBuilder::spawn_with_state): a transaction per
    /// batch on the worker's own connection.
    ///
    /// # Errors
    ///
    /// As [`spawn_batched`](PipelineBuilder::spawn_batched).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use backpressure_pipeline::{Batch, Pipeline, Policy, SmolSpawner};
    ///
    /// # smol::block_on(async {
    /// let pipeline = Pipeline::builder(64, Policy::Block).workers(2).spawn_batched_with_state(
    ///     SmolSpawner::new(),
    ///     Batch::new(8, Duration::from_millis(1)),
    ///     |_worker| async { Ok::<_, std::io::Error>(Vec::<u32>::new()) }, // a "connection"
    ///     |written: &mut Vec<u32>, rows: Vec<u32>| Box::pin(async move {
    ///         written.extend(rows); // one transaction per batch
    ///         Ok::<(), std::io::Error>(())
    ///     }),
    /// )?;
    /// for row in 0..50 {
    ///     let _ = pipeline.push(row).await;
    /// }
    /// assert_eq!(pipeline.shutdown().await.processed, 50);
    /// # Ok::<(), backpressure_pipeline::BuildError>(())
    /// # }).unwrap();
    /// ```
    pub fn spawn_batched_with_state<Sp, S, I, IFut, IE, F, O>(
        self,
        spawner: Sp,
        batch: Batch,
        init: I,
        work: F,
    ) -> Result<Pipeline<T>, BuildError>
    where
        Sp: Spawner,
        S: Send + 'static,
        I: Fn(usize) -> IFut + Send + Sync + 'static,
        IFut: Future<Output = Result<S, IE>> + Send + 'static,
        IE: fmt::Debug + Send + 'static,
        F: for<'a> Fn(&'a mut S, Vec<T>) -> WorkFuture<'a, O> + Send + Sync + 'static,
        O: WorkOutput<Vec<T>>,
        H: Into<ErrorHooks<T, O::Error>>,
    {
        if batch.max_items() == 0 {
            return Err(ConfigError::ZeroBatch.into());
        }
        let job = Stateful {
            init,
            work,
            types: PhantomData,
        };
        self.start(Arc::new(spawner), batch, job, |hooks| {
            hooks.into().for_batches()
        })
    }

    /// Starts the pipeline's workers, taking work by `source` and doing it with `job`; the
    /// error hooks, as `hooks` makes them fit the unit of work (or refuses them).
    fn start<S, J>(
        self,
        spawner: Arc<dyn Spawner>,
        source: S,
        job: J,
        hooks: impl FnOnce(H) -> Result<ErrorHooks<S::Unit, J::Error>, ConfigError>,
    ) -> Result<Pipeline<T>, BuildError>
    where
        S: Source<T>,
        J: Job<S::Unit>,
    {
        let mut queue = Queue::new(self.capacity, self.policy)?;
        if self.timing.max_age.is_some_and(|max_age| max_age.is_zero()) {
            return Err(ConfigError::ZeroMaxAge.into());
        }
        if self.timing.codel.is_some_and(|codel| !codel.is_valid()) {
            return Err(ConfigError::Codel.into());
        }
        if let Some((high, low)) = self.watermarks {
            queue.watermarks(high, low)?;
        }
        if self.is_timed() {
            queue.set_timing(spawner.clone(), self.timing);
        }
        self.keys.apply(&mut queue)?;
        if self.workers == 0 {
            return Err(ConfigError::ZeroWorkers.into());
        }
        if self.workers > Self::MAX_WORKERS {
            return Err(ConfigError::TooManyWorkers.into());
        }
        if self.retry.max_attempts() == 0 || self.start_retry.max_attempts() == 0 {
            return Err(ConfigError::ZeroAttempts.into());
        }
        let hooks = hooks(self.hooks)?;
        let (stop, signal) = match self.parent {
            Some(Ok(parent)) => (parent.child_token(), None),
            Some(Err(signal)) => (
                CancellationToken::new(),
                Some(signal.into_inner().unwrap_or_else(PoisonError::into_inner)),
            ),
            None => (CancellationToken::new(), None),
        };
        let watch = signal.is_some();
        let mut shared = Shared::new(
            queue,
            stop,
            Parent::new(signal),
            self.worker_token,
            self.workers,
            spawner.clone(),
            self.on_shed,
        );
        shared.on_expired = self.on_expired;
        shared.name = self.name;
        let shared = Arc::new(shared);
        // Every stop releases every waiter at once: whoever cancels the stop token (shutdown,
        // the parent, a stop from inside, a dropped pipeline), the queue closes in that call.
        let weak = Arc::downgrade(&shared);
        // Shutdown and the stops from inside record their cause before they cancel; anything
        // else that cancels it is the parent (or a dropped pipeline, which reports nothing).
        shared.stop.on_cancel(Box::new(move || {
            if let Some(shared) = weak.upgrade() {
                shared.set_cause(StopCause::External);
                shared.queue.close();
            }
        }));
        let invoker = Arc::new(Invoker {
            source,
            job,
            hooks,
            retry: self.retry,
            start_retry: self.start_retry,
            on_panic: self.on_panic,
        });
        // The pipeline first, then its workers: if the runtime refuses one (or its `spawn`
        // panics), dropping the pipeline aborts those already started and closes the queue.
        let mut pipeline = Pipeline {
            shared,
            deadline: self.deadline,
            grace: self.grace,
            unresponsive_after: self.unresponsive_after,
            workers: Workers::new(),
            state: Mutex::new(State::default()),
        };
        for index in 0..self.workers {
            let worker = spawn_worker(&*spawner, pipeline.shared.clone(), invoker.clone(), index)?;
            pipeline.workers.add(worker);
        }
        pipeline.workers.seal();
        if watch {
            spawner.spawn(watch_parent(pipeline.shared.clone()))?;
        }
        Ok(pipeline)
    }
}

impl<T, H> fmt::Debug for PipelineBuilder<T, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PipelineBuilder")
            .field("capacity", &self.capacity)
            .field("policy", &self.policy)
            .field("workers", &self.workers)
            .field("deadline", &self.deadline)
            .field("grace", &self.grace)
            .field("unresponsive_after", &self.unresponsive_after)
            .field(
                "parent",
                &self.parent.as_ref().map(|parent| match parent {
                    Ok(token) => format!("{token:?}"),
                    Err(_) => "a future".to_string(),
                }),
            )
            .field("on_shed", &self.on_shed.as_ref().map(|_| ".."))
            .field("max_age", &self.timing.max_age)
            .field("codel", &self.timing.codel)
            .field("measure_queue_delay", &self.measure_delay)
            .field("watermarks", &self.watermarks)
            .field("keyed", &self.keys.keyer.is_some())
            .field("per_key", &self.keys.per_key)
            .field("coalesce", &self.keys.coalesce)
            .field("name", &self.name)
            .field("on_expired", &self.on_expired.as_ref().map(|_| ".."))
            .field("on_panic", &self.on_panic)
            .field("retry", &self.retry)
            .field("start_retry", &self.start_retry)
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
            on_expired: None,
            timing: Timing::default(),
            measure_delay: false,
            watermarks: None,
            keys: KeyConfig::default(),
            name: String::from("pipeline"),
            on_panic: OnPanic::Isolate,
            retry: Retry::never(),
            start_retry: Retry::attempts(5),
            hooks: NoErrorHooks,
        }
    }
}

/// The keyed mode as configured: checked and applied to the queue at build.
struct KeyConfig<T> {
    keyer: Option<Keyer<T>>,
    per_key: Option<usize>,
    coalesce: bool,
}

impl<T> Default for KeyConfig<T> {
    fn default() -> Self {
        KeyConfig {
            keyer: None,
            per_key: None,
            coalesce: false,
        }
    }
}

impl<T> KeyConfig<T> {
    fn apply(self, queue: &mut Queue<T>) -> Result<(), ConfigError> {
        let per_key = self.per_key.unwrap_or(1);
        let Some(keyer) = self.keyer else {
            if self.per_key.is_some() || self.coalesce {
                return Err(ConfigError::NoKey);
            }
            return Ok(());
        };
        if per_key == 0 {
            return Err(ConfigError::ZeroPerKey);
        }
        if self.coalesce && per_key > 1 {
            return Err(ConfigError::CoalescePerKey);
        }
        queue.set_keys(keyer, per_key, self.coalesce);
        Ok(())
    }
}
