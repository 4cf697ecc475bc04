//! What a worker's call returns: success, a failure, or a failure that hands the item back.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;

/// The future a stateful worker's call returns: boxed, because it borrows the worker's
/// state (see [`PipelineBuilder::spawn_with_state`](crate::PipelineBuilder::spawn_with_state)).
///
/// Write the call as `|state, item| Box::pin(async move { … })`.
pub type WorkFuture<'a, O> = Pin<Box<dyn Future<Output = O> + Send + 'a>>;

/// What one call of the work did with its item, when the work wants a failed item back:
/// to retry it, or to hand it to the dead-letter hook.
///
/// The work may also return `()` (it always succeeds) or `Result<(), E>` (a failure is
/// final and the item is gone with it); see [`WorkOutput`]. Only a failure that hands the
/// item back can be retried or dead-lettered, so the pipeline never clones an item.
///
/// | returned | counted | hooks |
/// |---|---|---|
/// | `()`, `Ok(())`, [`Done`](Outcome::Done) | processed | — |
/// | `Err(e)`, [`Failed(e)`](Outcome::Failed) | failed | `on_error(&e)` |
/// | [`Retry(item, e)`](Outcome::Retry), attempts left | retried, then tried again | `on_error(&e)` |
/// | [`Retry(item, e)`](Outcome::Retry), last attempt | failed | `on_error(&e)`, `dead_letter(item, e)` |
/// | [`Reject(item, e)`](Outcome::Reject) | failed | `on_error(&e)`, `dead_letter(item, e)` |
///
/// # Examples
///
/// ```
/// use backpressure_pipeline::Outcome;
///
/// async fn store(row: &str) -> Result<(), String> {
///     if row.is_empty() { Err("empty row".into()) } else { Ok(()) }
/// }
///
/// async fn work(row: String) -> Outcome<String, String> {
///     match store(&row).await {
///         Ok(()) => Outcome::Done,
///         Err(e) => Outcome::Retry(row, e), // the row comes back for another attempt
///     }
/// }
/// # smol::block_on(async {
/// assert!(matches!(work(String::new()).await, Outcome::Retry(_, _)));
/// # });
/// ```
#[must_use = "an outcome may hold an item; ignoring it loses that item in silence"]
pub enum Outcome<T, E> {
    /// The item was processed.
    Done,
    /// The item failed for good and is gone (the work consumed it).
    Failed(E),
    /// The item failed; try it again after a backoff, while the
    /// [retry policy](crate::PipelineBuilder::retry) allows, then hand it to the dead-letter
    /// hook.
    Retry(T, E),
    /// The item failed for good: hand it to the dead-letter hook now, without retrying.
    Reject(T, E),
}

impl<T, E: fmt::Debug> fmt::Debug for Outcome<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Done => f.write_str("Done"),
            Outcome::Failed(e) => f.debug_tuple("Failed").field(e).finish(),
            Outcome::Retry(_, e) => f.debug_tuple("Retry").field(&"..").field(e).finish(),
            Outcome::Reject(_, e) => f.debug_tuple("Reject").field(&"..").field(e).finish(),
        }
    }
}

impl<T, E> From<Result<(), E>> for Outcome<T, E> {
    fn from(result: Result<(), E>) -> Outcome<T, E> {
        match result {
            Ok(()) => Outcome::Done,
            Err(e) => Outcome::Failed(e),
        }
    }
}

/// What the work of a pipeline may return: `()`, `Result<(), E>` or [`Outcome<T, E>`].
///
/// # Examples
///
/// ```
/// use backpressure_pipeline::{Outcome, WorkOutput};
///
/// let failed: Outcome<u8, &str> = WorkOutput::<u8>::into_outcome(Err::<(), _>("disk full"));
/// assert!(matches!(failed, Outcome::Failed("disk full")));
/// ```
pub trait WorkOutput<T>: Send + 'static {
    /// The work's error type ([`Infallible`] for `()`).
    type Error: Send + 'static;

    /// This output as an [`Outcome`].
    fn into_outcome(self) -> Outcome<T, Self::Error>;
}

impl<T> WorkOutput<T> for () {
    type Error = Infallible;

    fn into_outcome(self) -> Outcome<T, Infallible> {
        Outcome::Done
    }
}

impl<T, E: Send + 'static> WorkOutput<T> for Result<(), E> {
    type Error = E;

    fn into_outcome(self) -> Outcome<T, E> {
        self.into()
    }
}

impl<T: Send + 'static, E: Send + 'static> WorkOutput<T> for Outcome<T, E> {
    type Error = E;

    fn into_outcome(self) -> Outcome<T, E> {
        self
    }
}
