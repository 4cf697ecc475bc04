//! What can stop a pipeline from outside: a [`CancellationToken`], or any future.

use std::fmt;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::pin;
use std::sync::{Arc, Mutex, TryLockError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures_util::future;

use super::producer::Shared;
use super::worker::{drop_quietly, lock};
use crate::cancel::CancellationToken;
use crate::spawner::BoxFuture;

/// A signal from outside that stops a pipeline, given to
/// [`PipelineBuilder::parent`](crate::PipelineBuilder::parent): this crate's
/// [`CancellationToken`] (by reference or by value), or any
/// `Future<Output = ()> + Send + 'static` that completes when the pipeline should stop —
/// tokio-util's `token.clone().cancelled_owned()`, a Ctrl-C future, a oneshot.
///
/// Either way the semantics are the same: intake stops and the queue closes, releasing every
/// waiting producer (with its item back) and every idle worker, as
/// [`shutdown`](crate::Pipeline::shutdown) begins it, and the report's cause is
/// [`StopCause::External`](crate::StopCause::External). The workers go on draining what
/// was accepted; call `shutdown` to bound that (its deadline counts from that call) and get
/// the report.
/// A token's cancel does all that in the call that cancels it; a future is watched by a task
/// on the pipeline's spawner, which does it as soon as the future completes, and which ends
/// when the pipeline stops. `shutdown` looks at the future once before it names its own
/// cause, so a parent that completed first is the cause even if the task has not run yet.
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

/// A parent future, watched by a task on the pipeline's spawner, and looked at once more by
/// `shutdown` before it names its own cause: a parent that completed first is the cause,
/// whichever of the two runs first.
pub(super) struct Parent {
    /// The future until it completes (or panics), and whether it has. Locked by the watcher
    /// to poll it, and tried by `shutdown`; no other lock is taken while it is held.
    signal: Mutex<Slot>,
}

/// The parent future's slot.
struct Slot {
    future: Option<BoxFuture>,
    /// Set in the poll that saw the future complete, under the lock: from then on `shutdown`
    /// knows the parent came first, even before the watcher has stopped the pipeline.
    fired: bool,
}

/// How long `shutdown` waits (yielding its thread) for a watcher that is polling the parent
/// future at that instant, before it leaves the future to it: long enough for a watcher
/// thread the OS preempted mid-poll to run again; a poll that takes longer is user code that
/// blocks, and `shutdown` does not wait on it.
const POLL_WAIT: Duration = Duration::from_millis(20);

impl Parent {
    pub(super) fn new(signal: Option<BoxFuture>) -> Parent {
        Parent {
            signal: Mutex::new(Slot {
                future: signal,
                fired: false,
            }),
        }
    }

    /// Ready once the parent future has completed (a panic in it counts as completed: it
    /// can no longer say "not yet"), with the spent future, for the caller to drop after it
    /// has stopped the pipeline (its `Drop` is user code: not under the lock). Pending for
    /// good without a parent future.
    fn poll_fired(&self, cx: &mut Context<'_>) -> Poll<Spent> {
        poll_slot(&mut lock(&self.signal), cx)
    }

    /// Drops the future (after the pipeline stopped), outside the lock.
    fn clear(&self) {
        let signal = lock(&self.signal).future.take();
        drop_quietly(signal);
    }

    /// Whether the parent future has completed, looked at without waiting for it (by
    /// `shutdown`): it completed if a poll (the watcher's, or this one) saw it complete. A
    /// watcher polling it at this instant is waited for, yielding this thread, for at most
    /// [`POLL_WAIT`]; a poll that takes longer is left to it.
    pub(super) fn fired_now(&self) -> Option<Spent> {
        let mut slot = None;
        // On the real clock, not the spawner's: a manual clock would not bound the wait.
        let until = Instant::now() + POLL_WAIT;
        // Bounded by POLL_WAIT.
        while slot.is_none() && Instant::now() < until {
            match self.signal.try_lock() {
                Ok(held) => slot = Some(held),
                Err(TryLockError::Poisoned(poisoned)) => slot = Some(poisoned.into_inner()),
                Err(TryLockError::WouldBlock) => std::thread::yield_now(),
            }
        }
        let mut slot = slot?;
        if slot.fired {
            // The watcher saw it complete and is on its way to stop the pipeline: the spent
            // future is its to drop.
            return Some(Spent(None));
        }
        // The watcher is woken by the stop that follows, whatever this poll registers.
        let mut cx = Context::from_waker(Waker::noop());
        match poll_slot(&mut slot, &mut cx) {
            Poll::Ready(spent) => Some(spent),
            Poll::Pending => None,
        }
    }
}

/// Polls the parent future in its slot, under its lock: see [`Parent::poll_fired`].
fn poll_slot(slot: &mut Slot, cx: &mut Context<'_>) -> Poll<Spent> {
    let Some(signal) = slot.future.as_mut() else {
        return Poll::Pending;
    };
    let polled = catch_unwind(AssertUnwindSafe(|| signal.as_mut().poll(cx)));
    if let Ok(Poll::Pending) = polled {
        return Poll::Pending;
    }
    if let Err(payload) = polled {
        drop_quietly(payload);
    }
    slot.fired = true;
    Poll::Ready(Spent(slot.future.take()))
}

/// A parent future that has completed (or panicked), dropped quietly when this is.
pub(super) struct Spent(Option<BoxFuture>);

impl Drop for Spent {
    fn drop(&mut self) {
        drop_quietly(self.0.take());
    }
}

impl fmt::Debug for Parent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Parent").finish_non_exhaustive()
    }
}

/// The task that stops the pipeline when its parent future completes. It ends as soon as
/// the pipeline stops, whatever stopped it, so it never outlives the pipeline's shutdown by
/// more than a poll; it drops the future then (with the pipeline's shared state).
pub(super) fn watch_parent<T: Send + 'static>(shared: Arc<Shared<T>>) -> BoxFuture {
    Box::pin(async move {
        let fired = {
            let mut stopped = pin!(shared.stop.cancelled());
            future::poll_fn(|cx| {
                if stopped.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(None);
                }
                shared.parent.poll_fired(cx).map(Some)
            })
            .await
        };
        if let Some(spent) = fired {
            // The stop token's hook records the cause (External) and closes the queue; then
            // the spent future goes.
            shared.stop.cancel();
            drop(spent);
        }
        // Stopped either way: the future goes now, not with the pipeline.
        shared.parent.clear();
    })
}
