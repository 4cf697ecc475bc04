//! The runtime every shape runs on (an `async_executor::Executor` run by 2 threads, or a
//! tokio multi-thread runtime with 2 workers: `--runtime`), the ~1 µs of busy work, and what
//! `/proc` tells about the process and the machine.

use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::thread;
use std::time::{Duration, Instant};

use async_executor::Executor;
use backpressure_pipeline::{BoxFuture, ExecutorSpawner, SpawnError, Spawner};

/// Threads of either runtime.
pub(crate) const EXECUTOR_THREADS: usize = 2;

/// The runtimes a run can use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Runtime {
    /// One `async_executor::Executor`, run by `EXECUTOR_THREADS` threads.
    Executor,
    /// A tokio multi-thread runtime with `EXECUTOR_THREADS` workers.
    Tokio,
}

impl Runtime {
    pub(crate) fn parse(name: &str) -> Option<Runtime> {
        match name {
            "executor" => Some(Runtime::Executor),
            "tokio" => Some(Runtime::Tokio),
            _ => None,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Runtime::Executor => "executor",
            Runtime::Tokio => "tokio",
        }
    }

    pub(crate) fn describe(self) -> String {
        match self {
            Runtime::Executor => {
                format!("async_executor::Executor on {EXECUTOR_THREADS} threads")
            }
            Runtime::Tokio => format!("tokio multi-thread runtime, {EXECUTOR_THREADS} workers"),
        }
    }
}

static CURRENT: AtomicU8 = AtomicU8::new(0);

/// Makes `runtime` the one `run`, `spawn` and `spawner` use from now on.
pub(crate) fn set_runtime(runtime: Runtime) {
    CURRENT.store(runtime as u8, Ordering::Relaxed);
}

pub(crate) fn runtime() -> Runtime {
    match CURRENT.load(Ordering::Relaxed) {
        0 => Runtime::Executor,
        _ => Runtime::Tokio,
    }
}

/// One multi-threaded executor for the whole process, run on 2 threads.
pub(crate) fn ex() -> &'static Arc<Executor<'static>> {
    static EX: OnceLock<Arc<Executor<'static>>> = OnceLock::new();
    EX.get_or_init(|| {
        let ex = Arc::new(Executor::new());
        for i in 0..EXECUTOR_THREADS {
            let ex = ex.clone();
            thread::Builder::new()
                .name(format!("ex-{i}"))
                .spawn(move || smol::block_on(ex.run(std::future::pending::<()>())))
                .expect("spawn an executor thread");
        }
        ex
    })
}

/// The tokio runtime, built on first use.
fn tokio_rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(EXECUTOR_THREADS)
            .thread_name("tokio")
            .enable_time()
            .build()
            .expect("a tokio runtime")
    })
}

/// Runs `fut` as a task on the current runtime and waits for it from this (non-runtime)
/// thread.
pub(crate) fn run<T: Send + 'static>(fut: impl Future<Output = T> + Send + 'static) -> T {
    match runtime() {
        Runtime::Executor => smol::block_on(ex().spawn(fut)),
        Runtime::Tokio => {
            let rt = tokio_rt();
            rt.block_on(rt.spawn(fut)).expect("the task ran to the end")
        }
    }
}

/// A task spawned with [`spawn`]: awaiting it gives its output. Dropped, an executor task is
/// cancelled and a tokio one runs on: call [`detach`](Task::detach) to say which is meant.
pub(crate) enum Task<T> {
    Executor(async_executor::Task<T>),
    Tokio(tokio::task::JoinHandle<T>),
}

impl<T> Task<T> {
    /// Lets the task run on by itself.
    pub(crate) fn detach(self) {
        match self {
            Task::Executor(task) => task.detach(),
            Task::Tokio(handle) => drop(handle),
        }
    }
}

impl<T> Future for Task<T> {
    type Output = T;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        match self.get_mut() {
            Task::Executor(task) => Pin::new(task).poll(cx),
            Task::Tokio(handle) => Pin::new(handle)
                .poll(cx)
                .map(|r| r.expect("the task ran to the end")),
        }
    }
}

/// Spawns `fut` on the current runtime (from inside or outside it).
pub(crate) fn spawn<T: Send + 'static>(fut: impl Future<Output = T> + Send + 'static) -> Task<T> {
    match runtime() {
        Runtime::Executor => Task::Executor(ex().spawn(fut)),
        Runtime::Tokio => Task::Tokio(tokio_rt().spawn(fut)),
    }
}

/// The pipeline's spawner for the current runtime.
pub(crate) fn spawner() -> Arc<dyn Spawner> {
    match runtime() {
        Runtime::Executor => Arc::new(ExecutorSpawner::new(ex().clone())),
        Runtime::Tokio => Arc::new(TokioHandle(tokio_rt().handle().clone())),
    }
}

/// A `Spawner` on a tokio runtime's handle, as the crate's `TokioSpawner` (behind the `tokio`
/// feature, which this example does not require) spawns and sleeps.
#[derive(Debug)]
struct TokioHandle(tokio::runtime::Handle);

impl Spawner for TokioHandle {
    fn spawn(&self, task: BoxFuture) -> Result<(), SpawnError> {
        drop(self.0.spawn(task));
        Ok(())
    }

    fn sleep(&self, duration: Duration) -> BoxFuture {
        let _entered = self.0.enter();
        Box::pin(tokio::time::sleep(duration))
    }
}

pub(crate) static WORK_ITERS: OnceLock<u32> = OnceLock::new();

/// About 1 µs of busy work (calibrated at start, or `--work-iters`).
pub(crate) fn work() {
    spin(*WORK_ITERS.get().expect("calibrated"));
}

fn spin(iters: u32) {
    let mut x = black_box(0x9E37_79B9_7F4A_7C15_u64);
    for _ in 0..black_box(iters) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    black_box(x);
}

/// Iterations of `spin` per µs: the fastest of several timings (noise only slows it down).
pub(crate) fn calibrate() -> u32 {
    const ITERS: u32 = 2_000_000;
    let best = (0..7)
        .map(|_| {
            let start = Instant::now();
            spin(ITERS);
            start.elapsed()
        })
        .min()
        .expect("seven timings");
    ((ITERS as f64 / (best.as_secs_f64() * 1e6)).round() as u32).max(1)
}

/// A `kB` field of /proc/self/status, in KiB.
pub(crate) fn proc_status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|line| line.starts_with(field))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0)
}

pub(crate) fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    info.lines()
        .find(|line| line.starts_with("model name"))
        .and_then(|line| line.split(':').nth(1))
        .map(|model| model.trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}
