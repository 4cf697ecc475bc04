//! One worker: its loop, and the wrapper that makes abort, panic capture and join ours.
//!
//! By the pipeline's invariant 2, a worker sends its outcome only after its future has been
//! dropped, so a joined worker holds nothing of the pipeline's.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_channel::oneshot;
use futures_util::future::{AbortHandle, Abortable, Aborted, FutureExt};

use super::producer::Shared;
use super::OnPanic;
use crate::spawner::{SpawnError, Spawner};
use crate::sync::Ordering;

/// A spawned worker (invariant 2).
pub(super) struct Slot {
    pub(super) abort: AbortHandle,
    /// `Some` until the worker's outcome arrives.
    exit: Option<oneshot::Receiver<Exit>>,
    pub(super) outcome: Option<Exit>,
}

/// How a worker's task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Exit {
    /// The queue was closed and empty, or the worker token was cancelled.
    Finished,
    /// Aborted by shutdown or by dropping the pipeline.
    Aborted,
    /// The runtime dropped the task without running it to the end (it shut down).
    Lost,
    /// The worker loop itself panicked (user panics are caught per item).
    Panicked,
}

/// Polls every worker not yet joined; ready when all are.
pub(super) fn poll_join(workers: &mut [Slot], cx: &mut Context<'_>) -> Poll<()> {
    let mut pending = false;
    for slot in workers.iter_mut() {
        if let Some(exit) = &mut slot.exit {
            match exit.poll_unpin(cx) {
                Poll::Ready(outcome) => {
                    // A dropped sender means the runtime dropped the task unfinished.
                    slot.outcome = Some(outcome.unwrap_or(Exit::Lost));
                    slot.exit = None;
                }
                Poll::Pending => pending = true,
            }
        }
    }
    if pending {
        Poll::Pending
    } else {
        Poll::Ready(())
    }
}

/// Spawns one worker wrapped so that abort and panic capture are ours (invariant 2).
pub(super) fn spawn_worker<T, S, F, Fut>(
    spawner: &S,
    shared: Arc<Shared<T>>,
    work: Arc<F>,
) -> Result<Slot, SpawnError>
where
    T: Send + 'static,
    S: Spawner,
    F: Fn(T) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (abort, registration) = AbortHandle::new_pair();
    let (sender, exit) = oneshot::channel();
    let worker = Abortable::new(work_loop(shared, work), registration);
    let task = async move {
        let mut worker = Box::pin(AssertUnwindSafe(worker).catch_unwind());
        let outcome = match worker.as_mut().await {
            Ok(Ok(())) => Exit::Finished,
            Ok(Err(Aborted)) => Exit::Aborted,
            Err(_) => Exit::Panicked,
        };
        // Drop the worker future before sending the outcome: a joined worker holds no item,
        // no closure and no reference to the pipeline. An aborted worker drops the item it
        // held here, and an item's `Drop` is user code: a panic in it is caught (the item
        // is counted abandoned already), so the outcome is still sent.
        let _ = catch_unwind(AssertUnwindSafe(move || drop(worker)));
        let _ = sender.send(outcome);
    };
    spawner.spawn(Box::pin(task))?;
    Ok(Slot {
        abort,
        exit: Some(exit),
        outcome: None,
    })
}

/// One worker: pops items and runs `work` on each until the queue is closed and empty, or
/// the worker token is cancelled.
async fn work_loop<T, F, Fut>(shared: Arc<Shared<T>>, work: Arc<F>)
where
    F: Fn(T) -> Fut,
    Fut: Future<Output = ()>,
{
    loop {
        // Cooperative stop at the deadline: take no new item.
        if shared.worker_token.is_cancelled() {
            return;
        }
        // Every stop closes the queue (the stop token's hook), which wakes this pop: it
        // drains what is left, then ends the loop.
        let Some(item) = shared.queue.pop().await else {
            return;
        };
        // Release, for the counters here: a stats snapshot that sees the count also sees the
        // pop before it; the report reads them after the join (invariant 2). A panic in the
        // user's code is caught per item and counted; by `OnPanic` the worker goes on or the
        // pipeline stops.
        match AssertUnwindSafe(async { work(item).await })
            .catch_unwind()
            .await
        {
            Ok(()) => {
                shared.processed.fetch_add(1, Ordering::Release);
            }
            Err(_) => {
                shared.panicked.fetch_add(1, Ordering::Release);
                if shared.on_panic == OnPanic::StopPipeline {
                    shared.stop_on_panic();
                }
            }
        }
    }
}
