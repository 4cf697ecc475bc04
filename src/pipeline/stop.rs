//! What can stop a pipeline from outside: a [`CancellationToken`], or any future.

use std::future::Future;

use crate::cancel::CancellationToken;
use crate::spawner::BoxFuture;

/// A signal from outside that stops a pipeline, given to
/// [`PipelineBuilder::parent`](crate::PipelineBuilder::parent): this crate's
/// [`CancellationToken`] (by reference or by value), or any
/// `Future<Output = ()> + Send + 'static` that completes when the pipeline should stop —
/// tokio-util's `token.clone().cancelled_owned()`, a Ctrl-C future, a oneshot.
///
/// Either way the semantics are the same: intake stops, the queue closes and every waiting
/// producer and worker is released, as [`shutdown`](crate::Pipeline::shutdown) begins it,
/// and the report's cause is [`StopCause::External`](crate::StopCause::External).
/// A token's cancel does all that in the call that cancels it; a future is watched by a task
/// on the pipeline's spawner, which does it as soon as the future completes, and which ends
/// when the pipeline stops.
///
/// The trait is sealed: it is implemented for the types above only.
///
/// # Examples
///
/// ```
/// use backpressure_pipeline::{Pipeline, Policy, SmolSpawner, StopCause};
///
/// # smol::block_on(async {
/// let (stop, stopped) = futures_channel::oneshot::channel::<()>();
/// let pipeline = Pipeline::builder(4, Policy::Block)
///     .parent(async move {
///         let _ = stopped.await; // a message, or the sender dropped
///     })
///     .spawn(SmolSpawner::new(), |_: u8| async {})?;
/// stop.send(()).unwrap();
/// while !pipeline.is_closed() {
///     smol::future::yield_now().await; // the watcher task stops the pipeline
/// }
/// let report = pipeline.shutdown().await;
/// assert_eq!(report.cause, StopCause::External);
/// # Ok::<(), backpressure_pipeline::BuildError>(())
/// # }).unwrap();
/// ```
pub trait StopSignal: sealed::Sealed {
    /// The token to make the pipeline's stop token a child of, or the future to watch.
    #[doc(hidden)]
    fn into_parent(self) -> Result<CancellationToken, BoxFuture>;
}

mod sealed {
    pub trait Sealed {}
}

impl sealed::Sealed for &CancellationToken {}
impl StopSignal for &CancellationToken {
    fn into_parent(self) -> Result<CancellationToken, BoxFuture> {
        Ok(self.clone())
    }
}

impl sealed::Sealed for CancellationToken {}
impl StopSignal for CancellationToken {
    fn into_parent(self) -> Result<CancellationToken, BoxFuture> {
        Ok(self)
    }
}

impl<F: Future<Output = ()> + Send + 'static> sealed::Sealed for F {}
impl<F: Future<Output = ()> + Send + 'static> StopSignal for F {
    fn into_parent(self) -> Result<CancellationToken, BoxFuture> {
        Err(Box::pin(self))
    }
}
