//! Shared test support: run one async test body on every enabled runtime, with a watchdog,
//! and count live values to prove that nothing leaks.

#![allow(dead_code, unreachable_pub)]

pub mod clock;
pub mod delay;
pub mod gate;
pub mod ledger;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use backpressure_pipeline::{BoxFuture, Spawner};
use event_listener::Event;

/// The spawner a test body gets.
pub type Sp = Arc<dyn Spawner>;

/// How long a single test may run before it is declared hung. Generous: a hang, not a slow
/// machine, is what it catches.
const WATCHDOG: Duration = Duration::from_secs(120);

/// The runtimes a test body runs on.
#[derive(Debug, Clone, Copy)]
pub enum Runtime {
    /// smol's global executor.
    Smol,
    /// An `async_executor::Executor` owned by the test, run by the test thread and one more.
    Executor,
    /// tokio, multi-thread scheduler with 2 workers.
    TokioMt,
    /// tokio, current-thread scheduler.
    TokioCt,
    /// async-std.
    AsyncStd,
}

/// Runs `body` on `runtime` in a fresh thread; fails the test if it panics or hangs.
pub fn run<F, Fut>(runtime: Runtime, body: F)
where
    F: FnOnce(Sp) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let (done, finished) = mpsc::channel();
    let test = thread::Builder::new()
        .name(format!("{runtime:?}"))
        .spawn(move || {
            block_on(runtime, body);
            let _ = done.send(());
        })
        .expect("spawn the test thread");
    match finished.recv_timeout(WATCHDOG) {
        Ok(()) => test.join().expect("the test thread finished"),
        Err(mpsc::RecvTimeoutError::Disconnected) => match test.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the test thread ended without reporting"),
        },
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("test hung on {runtime:?} for {WATCHDOG:?}"),
    }
}

fn block_on<F, Fut>(runtime: Runtime, body: F)
where
    F: FnOnce(Sp) -> Fut,
    Fut: Future<Output = ()>,
{
    match runtime {
        #[cfg(feature = "smol")]
        Runtime::Smol => smol::block_on(body(Arc::new(backpressure_pipeline::SmolSpawner::new()))),
        #[cfg(feature = "smol")]
        Runtime::Executor => {
            let ex = Arc::new(smol::Executor::new());
            let stop = backpressure_pipeline::CancellationToken::new();
            let helper = thread::spawn({
                let (ex, stop) = (ex.clone(), stop.clone());
                move || smol::block_on(ex.run(stop.cancelled()))
            });
            let spawner = backpressure_pipeline::ExecutorSpawner::new(ex.clone());
            smol::block_on(ex.run(body(Arc::new(spawner))));
            stop.cancel();
            helper.join().expect("the executor's helper thread");
        }
        #[cfg(feature = "tokio")]
        Runtime::TokioMt => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_time()
                .build()
                .expect("build a tokio runtime");
            let spawner =
                backpressure_pipeline::TokioSpawner::new(rt.handle().clone()).expect("timer");
            rt.block_on(body(Arc::new(spawner)));
        }
        #[cfg(feature = "tokio")]
        Runtime::TokioCt => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("build a tokio runtime");
            let spawner =
                backpressure_pipeline::TokioSpawner::new(rt.handle().clone()).expect("timer");
            rt.block_on(body(Arc::new(spawner)));
        }
        #[cfg(feature = "async-std")]
        Runtime::AsyncStd => async_std::task::block_on(body(Arc::new(
            backpressure_pipeline::AsyncStdSpawner::new(),
        ))),
        #[allow(unreachable_patterns)]
        _ => unreachable!("{runtime:?} is not enabled"),
    }
}

/// Declares `#[test]`s that run each named body on every enabled runtime, in one module per
/// runtime (`smol::name`, `executor::name`, `tokio_mt::name`, `tokio_ct::name`,
/// `async_std::name`). Each body is `async fn name(sp: Sp)`.
#[macro_export]
macro_rules! on_every_runtime {
    ($($name:ident),* $(,)?) => {
        $crate::on_runtime!(smol, Smol, "smol", $($name),*);
        $crate::on_runtime!(executor, Executor, "smol", $($name),*);
        $crate::on_runtime!(tokio_mt, TokioMt, "tokio", $($name),*);
        $crate::on_runtime!(tokio_ct, TokioCt, "tokio", $($name),*);
        $crate::on_runtime!(async_std, AsyncStd, "async-std", $($name),*);
    };
}

#[macro_export]
#[doc(hidden)]
macro_rules! on_runtime {
    ($module:ident, $runtime:ident, $feature:literal, $($name:ident),*) => {
        #[cfg(feature = $feature)]
        mod $module {
            $(
                #[test]
                fn $name() {
                    $crate::common::run($crate::common::Runtime::$runtime, super::$name);
                }
            )*
        }
    };
}

/// Spawns `future` on the test's runtime and returns a receiver for its output.
pub fn spawn<T: Send + 'static>(
    sp: &Sp,
    future: impl Future<Output = T> + Send + 'static,
) -> futures_channel::oneshot::Receiver<T> {
    let (tx, rx) = futures_channel::oneshot::channel();
    let task: BoxFuture = Box::pin(async move {
        let _ = tx.send(future.await);
    });
    sp.spawn(task).expect("spawn a test task");
    rx
}

/// A waker that counts its wake-ups, for tests that poll futures by hand.
#[derive(Debug, Default)]
pub struct CountingWaker(AtomicUsize);

impl CountingWaker {
    /// The counter and a waker that bumps it.
    pub fn new() -> (Arc<CountingWaker>, std::task::Waker) {
        let counter = Arc::new(CountingWaker::default());
        let waker = std::task::Waker::from(counter.clone());
        (counter, waker)
    }

    /// Wake-ups so far.
    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

impl std::task::Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Counts live [`Tracked`] values, and wakes waiters whenever one is dropped.
#[derive(Debug, Clone, Default)]
pub struct Live {
    inner: Arc<LiveInner>,
}

#[derive(Debug, Default)]
struct LiveInner {
    count: AtomicUsize,
    dropped: Event,
}

impl Live {
    pub fn new() -> Live {
        Live::default()
    }

    /// A value that counts as live until dropped.
    pub fn track(&self) -> Tracked {
        self.inner.count.fetch_add(1, Ordering::SeqCst);
        Tracked {
            live: self.inner.clone(),
        }
    }

    pub fn count(&self) -> usize {
        self.inner.count.load(Ordering::SeqCst)
    }

    /// Waits until no tracked value is live (the watchdog bounds it).
    pub async fn all_dropped(&self) {
        loop {
            if self.count() == 0 {
                return;
            }
            let listener = self.inner.dropped.listen();
            if self.count() == 0 {
                return;
            }
            listener.await;
        }
    }
}

/// A value counted by [`Live`] until dropped.
#[derive(Debug)]
pub struct Tracked {
    live: Arc<LiveInner>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.live.count.fetch_sub(1, Ordering::SeqCst);
        self.live.dropped.notify(usize::MAX);
    }
}

/// Yields once to the runtime: the task wakes itself and returns `Pending` once.
pub async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            std::task::Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await;
}

/// `base` times the `FAULT_ITERS` multiplier (1 when unset): how many rounds a racy test
/// runs.
pub fn iterations(base: usize) -> usize {
    let factor = std::env::var("FAULT_ITERS")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(1);
    base * factor.max(1)
}

/// Lets the other tasks run for a while: long enough for a worker that could take work to
/// have taken it, in practice; a check after this one only ever sees a bug, never causes a
/// false failure.
pub async fn idle() {
    for _ in 0..64 {
        yield_now().await;
    }
}
