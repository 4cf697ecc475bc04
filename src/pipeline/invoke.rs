//! How a worker runs: it builds its state, takes items one at a time, calls the work,
//! retries what failed, applies the panic policy, and records each item's fate in the
//! ledger.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use futures_util::future::{self, Either, FutureExt};

use super::ledger::{Fate, InHand};
use super::producer::Shared;
use super::source::{Lease, Source};
use super::worker::{catch_quietly, drop_quietly, Exit};
use super::{OnPanic, StopCause};
use crate::policy::ConfigError;
use crate::retry::Retry;
use crate::work::{Outcome, WorkFuture, WorkOutput};

/// A worker's job: how to build its state, and one call of the work.
pub(super) trait Job<T>: Send + Sync + 'static {
    type State: Send;
    type Error: Send + 'static;
    type StartError: fmt::Debug + Send;

    fn start(
        &self,
        index: usize,
    ) -> impl Future<Output = Result<Self::State, Self::StartError>> + Send;

    fn call<'a>(
        &'a self,
        state: &'a mut Self::State,
        item: T,
    ) -> impl Future<Output = Outcome<T, Self::Error>> + Send + 'a;
}

/// Work with no state: `Fn(T) -> impl Future`.
pub(super) struct Stateless<F>(pub(super) F);

impl<T, F, Fut> Job<T> for Stateless<F>
where
    T: Send + 'static,
    F: Fn(T) -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: WorkOutput<T>,
{
    type State = ();
    type Error = <Fut::Output as WorkOutput<T>>::Error;
    type StartError = Infallible;

    fn start(&self, _: usize) -> impl Future<Output = Result<(), Infallible>> + Send {
        future::ready(Ok(()))
    }

    fn call<'a>(
        &'a self,
        _: &'a mut (),
        item: T,
    ) -> impl Future<Output = Outcome<T, Self::Error>> + Send + 'a {
        (self.0)(item).map(WorkOutput::into_outcome)
    }
}

/// Work with a state per worker, built by `init(index)`.
pub(super) struct Stateful<I, F, S, O> {
    pub(super) init: I,
    pub(super) work: F,
    pub(super) types: PhantomData<fn() -> (S, O)>,
}

impl<T, I, IFut, IE, F, S, O> Job<T> for Stateful<I, F, S, O>
where
    T: Send + 'static,
    I: Fn(usize) -> IFut + Send + Sync + 'static,
    IFut: Future<Output = Result<S, IE>> + Send,
    IE: fmt::Debug + Send,
    F: for<'a> Fn(&'a mut S, T) -> WorkFuture<'a, O> + Send + Sync + 'static,
    S: Send + 'static,
    O: WorkOutput<T>,
{
    type State = S;
    type Error = O::Error;
    type StartError = IE;

    fn start(&self, index: usize) -> impl Future<Output = Result<S, IE>> + Send {
        (self.init)(index)
    }

    fn call<'a>(
        &'a self,
        state: &'a mut S,
        item: T,
    ) -> impl Future<Output = Outcome<T, O::Error>> + Send + 'a {
        (self.work)(state, item).map(WorkOutput::into_outcome)
    }
}

/// The hooks that see failures: each error, and each item that failed for good with its
/// item handed back. Set with [`PipelineBuilder::on_error`](crate::PipelineBuilder::on_error)
/// and [`PipelineBuilder::dead_letter`](crate::PipelineBuilder::dead_letter); the type
/// parameter of a builder that has them.
pub struct ErrorHooks<T, E> {
    pub(super) on_error: Option<ErrorHook<E>>,
    pub(super) dead_letter: Option<DeadLetterHook<T, E>>,
    pub(super) dead_letter_batch: Option<DeadLetterHook<Vec<T>, E>>,
}

type ErrorHook<E> = Box<dyn Fn(&E) + Send + Sync>;
type DeadLetterHook<T, E> = Box<dyn Fn(T, E) + Send + Sync>;

impl<T, E> ErrorHooks<T, E> {
    /// The hooks of a pipeline that takes one item at a time.
    pub(super) fn for_items(self) -> Result<ErrorHooks<T, E>, ConfigError> {
        if self.dead_letter_batch.is_some() {
            return Err(ConfigError::DeadLetterMode);
        }
        Ok(self)
    }

    /// The hooks of a pipeline that takes batches: its dead letters are batches.
    pub(super) fn for_batches(self) -> Result<ErrorHooks<Vec<T>, E>, ConfigError> {
        if self.dead_letter.is_some() {
            return Err(ConfigError::DeadLetterMode);
        }
        Ok(ErrorHooks {
            on_error: self.on_error,
            dead_letter: self.dead_letter_batch,
            dead_letter_batch: None,
        })
    }
}

/// The type parameter of a builder with no error hooks: any error type goes.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoErrorHooks;

impl<T, E> From<NoErrorHooks> for ErrorHooks<T, E> {
    fn from(_: NoErrorHooks) -> ErrorHooks<T, E> {
        ErrorHooks {
            on_error: None,
            dead_letter: None,
            dead_letter_batch: None,
        }
    }
}

impl<T, E> fmt::Debug for ErrorHooks<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ErrorHooks")
            .field("on_error", &self.on_error.as_ref().map(|_| ".."))
            .field("dead_letter", &self.dead_letter.as_ref().map(|_| ".."))
            .field(
                "dead_letter_batch",
                &self.dead_letter_batch.as_ref().map(|_| ".."),
            )
            .finish()
    }
}

/// Everything a worker needs besides the shared state: how it takes work, the job, the
/// hooks and the policies.
pub(super) struct Invoker<T, S: Source<T>, J: Job<S::Unit>> {
    pub(super) source: S,
    pub(super) job: J,
    pub(super) hooks: ErrorHooks<S::Unit, J::Error>,
    pub(super) retry: Retry,
    pub(super) start_retry: Retry,
    pub(super) on_panic: OnPanic,
}

/// What one item's call left the worker to do.
enum Step {
    /// Take the next item.
    Next,
    /// The work panicked.
    Panicked,
    /// The deadline passed during a retry's wait: the unit is parked, the worker ends.
    Stop,
}

/// How an attempt to build a worker's state ended.
enum Start<S> {
    Ready(S),
    /// Every attempt failed.
    GaveUp,
    /// The pipeline stopped first, with nothing left for this worker.
    Stopped,
}

impl<T: Send + 'static, S: Source<T>, J: Job<S::Unit>> Invoker<T, S, J> {
    /// One worker's life: build the state, take items until the queue is closed and empty
    /// or the deadline passes, rebuild the state after a panic under `OnPanic::Restart`.
    pub(super) async fn run(&self, shared: &Shared<T>, index: usize) -> Exit {
        let mut hand = InHand::new(&shared.ledger, index);
        // Keyed items' lanes, released once each unit's work is done (or if this is dropped).
        let mut lease = Lease::new(&shared.queue);
        // Consecutive panics, for the restart's backoff.
        let mut panics = 0;
        // Dropped quietly however the worker ends (its `Drop` is user code: a panic in it
        // must not turn a finished worker into a panicked one).
        let mut state = Quiet(match self.start(shared, index, 0).await {
            Start::Ready(state) => Some(state),
            Start::GaveUp => return self.gave_up(shared),
            Start::Stopped => return Exit::Finished,
        });
        loop {
            // Cooperative stop at the deadline: take no new item.
            if shared.worker_token.is_cancelled() {
                return Exit::Finished;
            }
            // Every stop closes the queue (the stop token's hook), which wakes this take: it
            // drains what is left, then ends the loop.
            let Some(unit) = self.source.take(shared, index, &mut lease.lanes).await else {
                // Closed and empty, for good: workers still waiting to start can stop.
                shared.drained.cancel();
                return Exit::Finished;
            };
            hand.take(S::count(&unit));
            let step = self
                .invoke(shared, index, state.get(), unit, &mut hand)
                .await;
            // The unit's work is done (or it was handed back): its keys may run their next
            // items. The next take releases them in its own critical section; any other
            // way on releases them now (the lease's `Drop` on a return).
            match step {
                Step::Next => panics = 0,
                Step::Stop => return Exit::Finished,
                Step::Panicked => match self.on_panic {
                    OnPanic::Isolate => {}
                    OnPanic::StopPipeline => shared.stop_with(StopCause::Panic),
                    OnPanic::Restart => {
                        // Not a straight way to the next take: the keys go now.
                        lease.release();
                        // The old state may be poisoned: drop it (its `Drop` is user code)
                        // and build a new one after a backoff.
                        drop_quietly(state.0.take());
                        panics += 1;
                        state.0 = match self.start(shared, index, panics).await {
                            Start::Ready(state) => Some(state),
                            Start::GaveUp => return self.gave_up(shared),
                            Start::Stopped => return Exit::Finished,
                        };
                        // Counted once rebuilt: `restarts` counts states rebuilt.
                        shared.ledger.restarted();
                    }
                },
            }
        }
    }

    /// Builds the worker's state, trying again with backoff; `after_panics` > 0 waits a
    /// backoff first (a restart).
    async fn start(&self, shared: &Shared<T>, index: usize, after_panics: u32) -> Start<J::State> {
        if after_panics > 0
            && !self
                .wait_to_start(shared, self.start_retry.wait(after_panics))
                .await
        {
            return Start::Stopped;
        }
        let mut failed = 0;
        loop {
            // The call inside the caught future: `init` may panic before it returns one.
            let started = catch_quietly(async { self.job.start(index).await }).await;
            if let Some(Ok(state)) = started {
                return Start::Ready(state);
            }
            // Counts before user code (the error's `Debug` and `Drop`, a subscriber).
            shared.ledger.start_failed();
            match started {
                #[cfg(feature = "tracing")]
                Some(Err(err)) => {
                    // The error's `Debug` is user code too: caught like the rest.
                    catch_quietly_sync(|| {
                        tracing::warn!(worker = index, error = ?err, "a worker's state could not be built");
                    });
                    drop_quietly(err);
                }
                #[cfg(not(feature = "tracing"))]
                Some(Err(err)) => drop_quietly(err),
                _ => {}
            }
            failed += 1;
            // Ends: `failed` grows by one each turn, up to the attempts allowed.
            if failed >= self.start_retry.max_attempts() {
                return Start::GaveUp;
            }
            if !self
                .wait_to_start(shared, self.start_retry.wait(failed))
                .await
            {
                return Start::Stopped;
            }
        }
    }

    /// A worker that could not build its state ends; when none is left that can, the
    /// pipeline stops (nothing would ever take an item), with a cause that says so.
    fn gave_up(&self, shared: &Shared<T>) -> Exit {
        if shared.not_started() {
            shared.stop_with(StopCause::NoWorkers);
        }
        Exit::NotStarted
    }

    /// Waits `wait` before the next attempt to start; false if the deadline passed first,
    /// or the pipeline stopped and its queue is (or becomes) empty for good.
    async fn wait_to_start(&self, shared: &Shared<T>, wait: Duration) -> bool {
        let nothing_left = async {
            shared.stop.cancelled().await;
            if !shared.queue.is_empty() {
                // Items are left: wait until a worker finds the queue closed and empty (or
                // for the backoff, or the deadline).
                shared.drained.cancelled().await;
            }
        };
        let (deadline, nothing_left) = (pin!(shared.worker_token.cancelled()), pin!(nothing_left));
        pause(shared, wait, future::select(deadline, nothing_left)).await
    }

    /// One unit (an item or a batch): call the work, retry what failed, record its fate,
    /// run the hooks.
    async fn invoke(
        &self,
        shared: &Shared<T>,
        index: usize,
        state: &mut J::State,
        mut item: S::Unit,
        hand: &mut InHand<'_>,
    ) -> Step {
        let mut failed = 0;
        loop {
            // The call inside the caught future: the work may panic before it returns one.
            let call =
                AssertUnwindSafe(async { self.job.call(&mut *state, item).await }).catch_unwind();
            let outcome = match call.await {
                Ok(outcome) => outcome,
                Err(payload) => {
                    hand.settle(Fate::Panicked);
                    // The payload is user code too: a `Drop` that panics must not end the
                    // worker.
                    drop_quietly(payload);
                    return Step::Panicked;
                }
            };
            // Counts before user code: each fate is recorded before the hooks run.
            let (retry, error) = match outcome {
                Outcome::Done => {
                    hand.settle(Fate::Processed);
                    return Step::Next;
                }
                Outcome::Failed(error) => {
                    hand.settle(Fate::Failed);
                    self.on_error(error);
                    return Step::Next;
                }
                Outcome::Reject(item, error) => {
                    // A batch may hand back only the items that failed: the others succeeded.
                    hand.keep(S::count(&item));
                    hand.settle(Fate::Failed);
                    self.dead_letter(item, error);
                    return Step::Next;
                }
                Outcome::Retry(item, error) => (item, error),
            };
            failed += 1;
            let back = S::count(&retry);
            // A batch handed back with more items than it held is not retried (the pipeline
            // never took the others): it goes to the dead letter, the items held as failed.
            if back > hand.held() {
                hand.settle(Fate::Failed);
                self.dead_letter(retry, error);
                return Step::Next;
            }
            // A batch may hand back only the items that failed: the others succeeded, and
            // with none handed back there is nothing to retry. Ends: `failed` grows by one
            // each turn, up to the attempts allowed.
            hand.keep(back);
            if back == 0 || failed >= self.retry.max_attempts() {
                hand.settle(Fate::Failed);
                self.dead_letter(retry, error);
                return Step::Next;
            }
            shared.ledger.retried();
            // Parked while it waits: the deadline, an abort or an unresponsive worker
            // leaves it where shutdown hands it back.
            shared.park(index, S::into_items(retry));
            hand.park();
            self.on_error(error);
            let wait = self.retry.wait(failed);
            if !pause(shared, wait, shared.worker_token.cancelled()).await {
                return Step::Stop;
            }
            match shared.unpark(index) {
                Some(parked) => {
                    item = S::from_items(parked);
                    hand.take(back);
                }
                // Shutdown took it (it gave up on this worker): it is handed back.
                None => return Step::Stop,
            }
        }
    }

    fn on_error(&self, error: J::Error) {
        if let Some(hook) = &self.hooks.on_error {
            catch_quietly_sync(|| hook(&error));
        }
        drop_quietly(error);
    }

    /// The error hook, then the dead-letter hook with the unit (none for an empty batch,
    /// which has no item left to give).
    fn dead_letter(&self, item: S::Unit, error: J::Error) {
        if S::count(&item) == 0 {
            drop_quietly(item);
            return self.on_error(error);
        }
        if let Some(hook) = &self.hooks.on_error {
            catch_quietly_sync(|| hook(&error));
        }
        match &self.hooks.dead_letter {
            Some(hook) => catch_quietly_sync(move || hook(item, error)),
            None => {
                drop_quietly(item);
                drop_quietly(error);
            }
        }
    }
}

/// A worker's state, dropped quietly (a panic in its `Drop` is caught and forgotten).
struct Quiet<S>(Option<S>);

impl<S> Quiet<S> {
    fn get(&mut self) -> &mut S {
        // Some between a start and the next restart, which replaces it before any call.
        self.0
            .as_mut()
            .expect("a worker's state is built before its calls")
    }
}

impl<S> Drop for Quiet<S> {
    fn drop(&mut self) {
        drop_quietly(self.0.take());
    }
}

/// Sleeps `wait` on the spawner's timer unless `ended` completes first; true if the whole
/// wait passed. `ended` is looked at first, and a zero wait still yields once: a worker
/// retrying without backoff stops at the deadline and lets other tasks run.
async fn pause<T>(shared: &Shared<T>, wait: Duration, ended: impl Future) -> bool {
    let mut ended = pin!(ended);
    if ended.as_mut().now_or_never().is_some() {
        return false;
    }
    if wait.is_zero() {
        yield_now().await;
        return ended.now_or_never().is_none();
    }
    matches!(
        future::select(ended, shared.spawner.sleep(wait)).await,
        Either::Right(_)
    )
}

/// Returns `Pending` once, after waking its task: a turn for the other tasks.
async fn yield_now() {
    let mut yielded = false;
    future::poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await;
}

/// Runs a hook (user code) after the item's fate is recorded; a panic in it is caught and
/// its payload dropped quietly, so that a hook cannot take the worker down.
pub(super) fn catch_quietly_sync(hook: impl FnOnce()) {
    if let Err(payload) = std::panic::catch_unwind(AssertUnwindSafe(hook)) {
        drop_quietly(payload);
    }
}
