//! Spawning workers and sleeping, on any runtime.
//!
//! [`Spawner`] is the whole of what the pipeline asks of a runtime: run a `Send + 'static`
//! future, and sleep. Join, abort and panic capture are the pipeline's own, so they behave
//! the same on every runtime (a smol task is cancelled when its handle drops, tokio and
//! async-std handles detach; none of that matters here).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

#[cfg(feature = "async-std")]
mod async_std;
#[cfg(feature = "smol")]
mod smol;
#[cfg(feature = "tokio")]
mod tokio;

#[cfg(feature = "async-std")]
pub use self::async_std::AsyncStdSpawner;
#[cfg(feature = "smol")]
pub use self::smol::{ExecutorSpawner, SmolSpawner};
#[cfg(feature = "tokio")]
pub use self::tokio::TokioSpawner;

/// A boxed `Send + 'static` future with no output: what a [`Spawner`] runs and returns.
///
/// # Examples
///
/// ```
/// use backpressure_pipeline::BoxFuture;
///
/// let task: BoxFuture = Box::pin(async { println!("hello from a task") });
/// smol::block_on(task);
/// ```
pub type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Runs futures and sleeps, on some async runtime.
///
/// The trait is object safe; the pipeline keeps an `Arc<dyn Spawner>`. The crate implements
#[cfg_attr(
    feature = "smol",
    doc = "it for smol ([`SmolSpawner`], [`ExecutorSpawner`]), tokio (`TokioSpawner`, feature"
)]
#[cfg_attr(
    not(feature = "smol"),
    doc = "it for smol (`SmolSpawner`, `ExecutorSpawner`), tokio (`TokioSpawner`, feature"
)]
/// `tokio`) and async-std (`AsyncStdSpawner`, feature `async-std`).
///
/// An implementation may drop a spawned future without finishing it (a runtime shutting
/// down does); the pipeline notices and reports the worker as aborted.
///
/// # Examples
///
/// A spawner for a runtime the crate does not know, here a thread per task:
///
/// ```
/// use std::time::Duration;
/// use backpressure_pipeline::{BoxFuture, SpawnError, Spawner};
///
/// #[derive(Debug)]
/// struct ThreadPerTask;
///
/// impl Spawner for ThreadPerTask {
///     fn spawn(&self, task: BoxFuture) -> Result<(), SpawnError> {
///         std::thread::spawn(move || smol::block_on(task));
///         Ok(())
///     }
///
///     fn sleep(&self, duration: Duration) -> BoxFuture {
///         Box::pin(async move {
///             smol::Timer::after(duration).await;
///         })
///     }
/// }
///
/// # smol::block_on(async {
/// let pipeline = backpressure_pipeline::Pipeline::builder(4, backpressure_pipeline::Policy::Block)
///     .spawn(ThreadPerTask, |_: u8| async {})?;
/// assert!(pipeline.shutdown().await.all_joined());
/// # Ok::<(), backpressure_pipeline::BuildError>(())
/// # }).unwrap();
/// ```
pub trait Spawner: fmt::Debug + Send + Sync + 'static {
    /// Starts running `task` in the background.
    ///
    /// # Errors
    ///
    /// A [`SpawnError`] if the runtime cannot take the task.
    fn spawn(&self, task: BoxFuture) -> Result<(), SpawnError>;

    /// A future that completes after `duration`. A duration too large to represent as an
    /// instant sleeps forever.
    fn sleep(&self, duration: Duration) -> BoxFuture;

    /// The current time on this spawner's clock: the one [`sleep`](Spawner::sleep) counts
    /// on. The pipeline reads it to stamp items and to measure their queue delay (only when a
    /// time-based feature is configured, such as
    /// [`max_age`](crate::PipelineBuilder::max_age)); it must never go backwards.
    ///
    /// The default is [`Instant::now`]. A test spawner whose `sleep` follows a manual clock
    /// overrides it to return that clock's time, so time-based behaviour is tested without
    /// real waits.
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A runtime refused to spawn a task.
///
/// # Examples
///
/// ```
/// use backpressure_pipeline::SpawnError;
///
/// let err = SpawnError::new("the runtime is shutting down");
/// assert_eq!(err.to_string(), "cannot spawn a task: the runtime is shutting down");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpawnError {
    reason: &'static str,
}

impl SpawnError {
    /// A spawn error with a reason, for [`Spawner`] implementations.
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::SpawnError;
    ///
    /// let err = SpawnError::new("the pool is full");
    /// assert_eq!(err.to_string(), "cannot spawn a task: the pool is full");
    /// ```
    pub fn new(reason: &'static str) -> SpawnError {
        SpawnError { reason }
    }
}

impl fmt::Display for SpawnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot spawn a task: {}", self.reason)
    }
}

impl std::error::Error for SpawnError {}

impl<S: Spawner + ?Sized> Spawner for std::sync::Arc<S> {
    fn spawn(&self, task: BoxFuture) -> Result<(), SpawnError> {
        (**self).spawn(task)
    }

    fn sleep(&self, duration: Duration) -> BoxFuture {
        (**self).sleep(duration)
    }

    fn now(&self) -> Instant {
        (**self).now()
    }
}
