//! A spawner for tokio.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use futures_util::FutureExt;
use tokio::runtime::Handle;

use super::{BoxFuture, SpawnError, Spawner};

/// Spawns on a tokio runtime; sleeps on that runtime's timer.
///
/// The runtime must have its timer enabled (`enable_time()` or `enable_all()` on the
/// builder; `#[tokio::main]` does this): the pipeline's shutdown deadline needs it. The
/// constructors check this and return an error instead of letting tokio panic later.
///
/// # Examples
///
/// ```
/// use backpressure_pipeline::{Pipeline, Policy, TokioSpawner};
///
/// let rt = tokio::runtime::Builder::new_multi_thread()
///     .worker_threads(2)
///     .enable_time()
///     .build()
///     .unwrap();
/// let report = rt.block_on(async {
///     let spawner = TokioSpawner::current().unwrap();
///     let pipeline = Pipeline::builder(8, Policy::Block)
///         .workers(2)
///         .spawn(spawner, |_: u32| async {})
///         .unwrap();
///     for i in 0..10 {
///         let _ = pipeline.push(i).await;
///     }
///     pipeline.shutdown().await
/// });
/// assert_eq!(report.processed, 10);
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
#[derive(Debug, Clone)]
pub struct TokioSpawner {
    handle: Handle,
}

impl TokioSpawner {
    /// A spawner for the runtime behind `handle`.
    ///
    /// # Errors
    ///
    /// A [`SpawnError`] if the runtime's timer is not enabled.
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::TokioSpawner;
    ///
    /// let with_timer = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    /// assert!(TokioSpawner::new(with_timer.handle().clone()).is_ok());
    /// let without = tokio::runtime::Builder::new_current_thread().build().unwrap();
    /// assert!(TokioSpawner::new(without.handle().clone()).is_err());
    /// ```
    pub fn new(handle: Handle) -> Result<TokioSpawner, SpawnError> {
        // tokio offers no query for the timer, and creating a sleep without one panics; so
        // ask by creating one and catching that panic, here, once.
        let has_timer = {
            let _enter = handle.enter();
            catch_unwind(|| drop(tokio::time::sleep(Duration::ZERO))).is_ok()
        };
        if !has_timer {
            return Err(SpawnError::new(
                "the tokio runtime has no timer; build it with `enable_time()`",
            ));
        }
        Ok(TokioSpawner { handle })
    }

    /// A spawner for the runtime this is called from.
    ///
    /// # Errors
    ///
    /// A [`SpawnError`] if called outside a tokio runtime, or if its timer is not enabled.
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::TokioSpawner;
    ///
    /// assert!(TokioSpawner::current().is_err()); // not inside a runtime here
    /// let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    /// assert!(rt.block_on(async { TokioSpawner::current() }).is_ok());
    /// ```
    pub fn current() -> Result<TokioSpawner, SpawnError> {
        match Handle::try_current() {
            Ok(handle) => TokioSpawner::new(handle),
            Err(_) => Err(SpawnError::new("not inside a tokio runtime")),
        }
    }
}

impl Spawner for TokioSpawner {
    fn spawn(&self, task: BoxFuture) -> Result<(), SpawnError> {
        // Dropping tokio's JoinHandle detaches the task; the pipeline joins it itself.
        drop(self.handle.spawn(task));
        Ok(())
    }

    fn sleep(&self, duration: Duration) -> BoxFuture {
        let handle = self.handle.clone();
        Box::pin(async move {
            // tokio panics when a timer is made or polled after its runtime shut down. A
            // runtime torn down under a pipeline has dropped its workers already; the sleep
            // then ends at once, so shutdown goes on to its report instead of panicking.
            let sleep = {
                let _enter = handle.enter();
                catch_unwind(|| tokio::time::sleep(duration))
            };
            if let Ok(sleep) = sleep {
                let _ = AssertUnwindSafe(sleep).catch_unwind().await;
            }
        })
    }
}
