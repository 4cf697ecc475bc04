//! A spawner for tokio.

use std::cell::Cell;
use std::future::pending;
use std::panic::catch_unwind;
use std::sync::Once;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{BoxFuture, SpawnError, Spawner};

/// Spawns on a tokio runtime; sleeps on that runtime's timer.
///
/// The runtime must have its timer enabled (`enable_time()` or `enable_all()` on the
/// builder; `#[tokio::main]` does this): the pipeline's shutdown deadline needs it. The
/// constructors check this and return an error instead of letting tokio panic later. tokio
/// has no way to ask a runtime about its timer, so the check creates one and catches tokio's
/// panic, without printing it (the first check wraps the panic hook so that it skips this
/// one expected panic and reports every other as before). With `panic = "abort"` a runtime
/// without a timer aborts the process instead.
///
/// A sleep waits in a task of its own on the runtime. When the runtime shuts down (torn down
/// under a pipeline), the sleep ends at once, without a panic, so the pipeline's shutdown
/// goes on to its report.
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
    /// # Panics
    ///
    /// Never to the caller, and nothing is printed; but with `panic = "abort"` a runtime
    /// without a timer aborts the process instead of returning the error (tokio can only
    /// say so by panicking; see [`TokioSpawner`]).
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
        if !has_timer(&handle) {
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
    /// # Panics
    ///
    /// As [`TokioSpawner::new`]: with `panic = "abort"` a runtime without a timer aborts
    /// the process.
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

/// Whether the runtime behind `handle` has its timer enabled.
///
/// tokio 1.x (to 1.54 at least) answers this nowhere without panicking: there is no query
/// (`Handle::has_time_driver` is proposed in tokio-rs/tokio#8361), `Handle`'s `Debug` is the
/// same with or without one, and every timer constructor panics on a runtime without one. So
/// create a timer and catch that panic, here, once, [quietly](quietly).
fn has_timer(handle: &Handle) -> bool {
    let _enter = handle.enter();
    quietly(|| drop(tokio::time::sleep(Duration::ZERO)))
}

std::thread_local! {
    /// Set while this thread runs a probe whose panic is expected and caught.
    static PROBING: Cell<bool> = const { Cell::new(false) };
}

/// Runs `probe` and says whether it returned, keeping the panic hook from reporting a panic
/// that is expected and caught here.
///
/// The first call wraps the process's panic hook, once, in one that passes every panic on
/// to it except those raised on a thread inside `quietly`: other threads' panics, and
/// everything after, are reported exactly as before. An application that sets its own hook
/// later replaces the wrapper (its hook then sees the probe's panic, as without it). A
/// thread that is itself panicking cannot touch the hook; it probes without the wrapper.
fn quietly(probe: impl FnOnce() + std::panic::UnwindSafe) -> bool {
    static WRAP_HOOK: Once = Once::new();
    if !std::thread::panicking() {
        WRAP_HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                if !PROBING.with(Cell::get) {
                    previous(info);
                }
            }));
        });
    }
    PROBING.with(|p| p.set(true));
    let returned = catch_unwind(probe).is_ok();
    PROBING.with(|p| p.set(false));
    returned
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
            // The deadline counts from the first poll, on the runtime's clock.
            let deadline = {
                let _enter = handle.enter();
                Instant::now().checked_add(duration)
            };
            // A task on the runtime awaits the timer, never this future: tokio panics (and the
            // panic hook prints) when a timer is polled after its runtime shut down. A runtime
            // shutting down drops its tasks unpolled instead, and drops one spawned after that
            // at once; the join handle then says so, and this sleep ends at once, so a
            // pipeline whose runtime was torn down under it goes on to its report.
            let mut timer = AbortOnDrop(handle.spawn(async move {
                match deadline {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    // Too far to represent as an instant: sleep forever, as `sleep` promises.
                    None => pending().await,
                }
            }));
            // Elapsed, or the task was dropped by a runtime shutting down: either way, done.
            let _ = (&mut timer.0).await;
        })
    }

    /// The runtime's clock: tokio's, so a runtime whose time is paused
    /// (`tokio::time::pause`) moves the pipeline's queue delays with it.
    fn now(&self) -> std::time::Instant {
        let _enter = self.handle.enter();
        Instant::now().into_std()
    }
}

/// Aborts the task on drop: a sleep dropped before its deadline leaves no timer task behind.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
