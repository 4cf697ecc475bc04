//! One worker: its loop, and the wrapper that makes abort, panic capture and join ours.
//!
//! By the pipeline's invariant 2, a worker sends its outcome only after its future has been
//! dropped, so a joined worker holds nothing of the pipeline's.

use std::any::Any;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use futures_channel::oneshot;
use futures_util::future::{self, AbortHandle, Abortable, Aborted, FutureExt};

use super::invoke::{Invoker, Job};
use super::producer::Shared;
use super::source::Source;
use crate::spawner::{BoxFuture, SpawnError, Spawner};

/// How a worker's task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Exit {
    /// The queue was closed and empty, or the worker token was cancelled (or the pipeline
    /// stopped while the worker was still trying to start, with nothing left to do).
    Finished,
    /// Aborted by shutdown or by dropping the pipeline.
    Aborted,
    /// The runtime dropped the task without running it to the end (it shut down).
    Lost,
    /// The worker loop itself panicked (user panics are caught per item).
    Panicked,
    /// The worker could not build its state, after every attempt.
    NotStarted,
}

/// The pipeline's workers: their abort handles, and their outcomes as they arrive.
///
/// Any number of `shutdown` calls wait on the same join (a `futures` `Shared` future, which wakes
/// every caller), and each outcome is written where every call sees it, so a call that is
/// kept without being polled holds up no other.
pub(super) struct Workers {
    aborts: Vec<AbortHandle>,
    /// The workers' outcome channels, until [`seal`](Workers::seal) hands them to the join.
    exits: Vec<oneshot::Receiver<Exit>>,
    /// Each worker's outcome, once it has arrived (invariant 2).
    outcomes: Arc<Mutex<Vec<Option<Exit>>>>,
    /// Ready when every outcome has arrived.
    joined: Option<future::Shared<BoxFuture>>,
}

impl Workers {
    pub(super) fn new() -> Workers {
        Workers {
            aborts: Vec::new(),
            exits: Vec::new(),
            outcomes: Arc::default(),
            joined: None,
        }
    }

    pub(super) fn add(&mut self, (abort, exit): (AbortHandle, oneshot::Receiver<Exit>)) {
        self.aborts.push(abort);
        self.exits.push(exit);
    }

    /// Once every worker is spawned: the join that any number of callers can wait on.
    pub(super) fn seal(&mut self) {
        let mut exits: Vec<Option<oneshot::Receiver<Exit>>> =
            self.exits.drain(..).map(Some).collect();
        let outcomes = self.outcomes.clone();
        lock(&outcomes).resize(exits.len(), None);
        let join = future::poll_fn(move |cx: &mut Context<'_>| {
            let mut pending = false;
            for (i, slot) in exits.iter_mut().enumerate() {
                let Some(exit) = slot else { continue };
                match exit.poll_unpin(cx) {
                    Poll::Ready(outcome) => {
                        // A dropped sender means the runtime dropped the task unfinished.
                        lock(&outcomes)[i] = Some(outcome.unwrap_or(Exit::Lost));
                        *slot = None;
                    }
                    Poll::Pending => pending = true,
                }
            }
            if pending {
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        });
        let join: BoxFuture = Box::pin(join);
        self.joined = Some(join.shared());
    }

    /// A future ready when every worker has ended; `None` before [`seal`](Workers::seal).
    pub(super) fn joined(&self) -> Option<future::Shared<BoxFuture>> {
        self.joined.clone()
    }

    /// The outcomes that have arrived, in spawn order.
    pub(super) fn outcomes(&self) -> Vec<Option<Exit>> {
        lock(&self.outcomes).clone()
    }

    pub(super) fn all_joined(&self) -> bool {
        lock(&self.outcomes).iter().all(Option::is_some)
    }

    pub(super) fn spawned(&self) -> usize {
        self.aborts.len()
    }

    /// Aborts every worker whose outcome has not arrived (all of them, before `seal`).
    pub(super) fn abort_unjoined(&self) {
        let outcomes = lock(&self.outcomes);
        for (i, abort) in self.aborts.iter().enumerate() {
            if outcomes.get(i).is_none_or(Option::is_none) {
                abort.abort();
            }
        }
    }
}

/// Locks a mutex held for a few instructions with no user code (the pipeline's small
/// locks); a poisoned one is still valid.
pub(super) fn lock<V>(mutex: &Mutex<V>) -> MutexGuard<'_, V> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Drops each value in turn, catching a panic in any one's `Drop` so the rest are still
/// dropped; returns the first panic's payload (later ones are forgotten), for the caller to
/// resume once its own work is done. Two panicking `Drop`s can never meet in one unwind.
pub(super) fn drop_each<V>(values: impl IntoIterator<Item = V>) -> Option<Box<dyn Any + Send>> {
    let mut first = None;
    for value in values {
        if let Err(payload) = catch_unwind(AssertUnwindSafe(move || drop(value))) {
            match first {
                None => first = Some(payload),
                Some(_) => std::mem::forget(payload),
            }
        }
    }
    first
}

/// Drops a value that is user code (an item, a panic payload, a future holding them)
/// without letting a panic in its `Drop` unwind further: such a panic's own payload is
/// forgotten, not dropped, since its `Drop` could panic in turn.
pub(super) fn drop_quietly<V>(value: V) {
    if let Err(payload) = catch_unwind(AssertUnwindSafe(move || drop(value))) {
        std::mem::forget(payload);
    }
}

/// Runs a future that is user code, catching a panic in it (whose payload is dropped
/// quietly): `None` if it panicked.
pub(super) async fn catch_quietly<F: Future>(future: F) -> Option<F::Output> {
    match AssertUnwindSafe(future).catch_unwind().await {
        Ok(output) => Some(output),
        Err(payload) => {
            drop_quietly(payload);
            None
        }
    }
}

/// Spawns worker `index` wrapped so that abort and panic capture are ours (invariant 2).
pub(super) fn spawn_worker<T, S, J>(
    spawner: &dyn Spawner,
    shared: Arc<Shared<T>>,
    invoker: Arc<Invoker<T, S, J>>,
    index: usize,
) -> Result<(AbortHandle, oneshot::Receiver<Exit>), SpawnError>
where
    T: Send + 'static,
    S: Source<T>,
    J: Job<S::Unit>,
{
    let (abort, registration) = AbortHandle::new_pair();
    let (sender, exit) = oneshot::channel();
    let worker = Abortable::new(
        async move { invoker.run(&shared, index).await },
        registration,
    );
    let task = async move {
        let mut worker = Box::pin(AssertUnwindSafe(worker).catch_unwind());
        let outcome = match worker.as_mut().await {
            Ok(Ok(exit)) => exit,
            Ok(Err(Aborted)) => Exit::Aborted,
            Err(payload) => {
                drop_quietly(payload);
                Exit::Panicked
            }
        };
        // Drop the worker future before sending the outcome: a joined worker holds no item,
        // no state and no reference to the pipeline. An aborted worker drops what it held
        // here (the ledger records an item in its hands as lost in flight), and a `Drop` is
        // user code: a panic in it is caught, so the outcome is still sent.
        drop_quietly(worker);
        let _ = sender.send(outcome);
    };
    spawner.spawn(Box::pin(task))?;
    Ok((abort, exit))
}
