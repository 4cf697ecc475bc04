//! Spawners for smol: its global executor, and any `async_executor::Executor`.

use std::fmt;
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_executor::Executor;
use async_io::Timer;

use super::{BoxFuture, SpawnError, Spawner};

/// Spawns on smol's global executor; sleeps on `async-io`'s timer.
///
/// # Examples
///
/// ```
/// use backpressure_pipeline::{Pipeline, Policy, SmolSpawner};
///
/// # smol::block_on(async {
/// let pipeline = Pipeline::builder(16, Policy::Block)
///     .workers(2)
///     .spawn(SmolSpawner::new(), |n: u64| async move { let _ = n * 2; })?;
/// let _ = pipeline.push(21).await;
/// assert!(pipeline.shutdown().await.is_conserved());
/// # Ok::<(), backpressure_pipeline::BuildError>(())
/// # }).unwrap();
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "smol")))]
#[derive(Debug, Clone, Copy, Default)]
pub struct SmolSpawner {
    _private: (),
}

impl SmolSpawner {
    /// A spawner for smol's global executor.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use backpressure_pipeline::{SmolSpawner, Spawner};
    ///
    /// smol::block_on(SmolSpawner::new().sleep(Duration::from_millis(1)));
    /// ```
    pub fn new() -> SmolSpawner {
        SmolSpawner { _private: () }
    }
}

impl Spawner for SmolSpawner {
    fn spawn(&self, task: BoxFuture) -> Result<(), SpawnError> {
        // The pipeline joins its workers itself, so the task handle is not needed.
        ::smol::spawn(task).detach();
        Ok(())
    }

    fn sleep(&self, duration: Duration) -> BoxFuture {
        sleep(duration)
    }
}

/// Spawns on an [`async_executor::Executor`] the application owns and runs; sleeps on
/// `async-io`'s timer. This is how the pipeline embeds in an existing smol application.
///
/// The workers make progress only while the application runs the executor. The spawner does
/// not keep the executor alive: when the application drops it, the workers are dropped with
/// it (the report counts them as aborted), and spawning fails with a [`SpawnError`].
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use backpressure_pipeline::{ExecutorSpawner, Pipeline, Policy};
///
/// let ex = Arc::new(smol::Executor::new());
/// let report = smol::block_on(ex.run(async {
///     let pipeline = Pipeline::builder(8, Policy::DropOldest)
///         .workers(2)
///         .spawn(ExecutorSpawner::new(ex.clone()), |_: u32| async {})
///         .unwrap();
///     for i in 0..100 {
///         let _ = pipeline.push(i).await;
///     }
///     pipeline.shutdown().await
/// }));
/// assert!(report.is_conserved());
/// assert_eq!(report.produced, 100);
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "smol")))]
#[derive(Clone)]
pub struct ExecutorSpawner {
    executor: Weak<Executor<'static>>,
}

impl ExecutorSpawner {
    /// A spawner for `executor`, which the application keeps and runs.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use backpressure_pipeline::{ExecutorSpawner, Spawner};
    ///
    /// let ex = Arc::new(smol::Executor::new());
    /// let spawner = ExecutorSpawner::new(ex.clone());
    /// let (tx, rx) = futures_channel::oneshot::channel();
    /// spawner.spawn(Box::pin(async move { tx.send(42).unwrap() })).unwrap();
    /// assert_eq!(smol::block_on(ex.run(rx)), Ok(42));
    /// ```
    pub fn new(executor: Arc<Executor<'static>>) -> ExecutorSpawner {
        ExecutorSpawner {
            executor: Arc::downgrade(&executor),
        }
    }
}

impl fmt::Debug for ExecutorSpawner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExecutorSpawner").finish_non_exhaustive()
    }
}

impl Spawner for ExecutorSpawner {
    fn spawn(&self, task: BoxFuture) -> Result<(), SpawnError> {
        let executor = self
            .executor
            .upgrade()
            .ok_or(SpawnError::new("the executor was dropped"))?;
        // The pipeline joins its workers itself; if the executor is dropped, the task is too,
        // and the pipeline sees its worker end without an outcome.
        executor.spawn(task).detach();
        Ok(())
    }

    fn sleep(&self, duration: Duration) -> BoxFuture {
        sleep(duration)
    }
}

/// Sleeps on `async-io`'s timer, which needs no particular executor. A deadline past the
/// representable instants never fires.
fn sleep(duration: Duration) -> BoxFuture {
    Box::pin(async move {
        Timer::after(duration).await;
    })
}
