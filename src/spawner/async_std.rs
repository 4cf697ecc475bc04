//! A spawner for async-std.

use std::time::Duration;

use super::{BoxFuture, SpawnError, Spawner};

/// Spawns on async-std's global executor; sleeps on its timer.
///
/// async-std is discontinued upstream; its authors point to smol as its successor, which
#[cfg_attr(
    feature = "smol",
    doc = "this crate supports with [`SmolSpawner`](crate::SmolSpawner) and \
           [`ExecutorSpawner`](crate::ExecutorSpawner)."
)]
#[cfg_attr(
    not(feature = "smol"),
    doc = "this crate supports with `SmolSpawner` and `ExecutorSpawner` (feature `smol`)."
)]
///
/// # Examples
///
/// ```
/// use backpressure_pipeline::{AsyncStdSpawner, Pipeline, Policy};
///
/// let report = async_std::task::block_on(async {
///     let pipeline = Pipeline::builder(8, Policy::DropNewest)
///         .workers(2)
///         .spawn(AsyncStdSpawner::new(), |_: u32| async {})
///         .unwrap();
///     let _ = pipeline.push(1).await;
///     pipeline.shutdown().await
/// });
/// assert!(report.is_conserved());
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "async-std")))]
#[derive(Debug, Clone, Copy, Default)]
pub struct AsyncStdSpawner {
    _private: (),
}

impl AsyncStdSpawner {
    /// A spawner for async-std's global executor.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use backpressure_pipeline::{AsyncStdSpawner, Spawner};
    ///
    /// async_std::task::block_on(AsyncStdSpawner::new().sleep(Duration::from_millis(1)));
    /// ```
    pub fn new() -> AsyncStdSpawner {
        AsyncStdSpawner { _private: () }
    }
}

impl Spawner for AsyncStdSpawner {
    fn spawn(&self, task: BoxFuture) -> Result<(), SpawnError> {
        // Dropping async-std's JoinHandle detaches the task; the pipeline joins it itself.
        drop(async_std::task::spawn(task));
        Ok(())
    }

    fn sleep(&self, duration: Duration) -> BoxFuture {
        Box::pin(async_std::task::sleep(duration))
    }
}
