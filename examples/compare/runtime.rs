//! The runtime every shape runs on (`--runtime`: the `async_executor::Executor` or the tokio
//! runtime of `examples/common/runtimes.rs`, 2 threads each), the pipeline's spawner on it,
//! the ~1 µs of busy work, and what `/proc` tells about the process and the machine.

use std::future::Future;
use std::hint::black_box;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use backpressure_pipeline::{BoxFuture, ExecutorSpawner, SpawnError, Spawner};

pub(crate) use crate::runtimes::Runtime;
use crate::runtimes::{ex, tokio_rt, Task};

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

/// Runs `fut` as a task on the current runtime and waits for it from this (non-runtime)
/// thread.
pub(crate) fn run<T: Send + 'static>(fut: impl Future<Output = T> + Send + 'static) -> T {
    runtime().run(fut)
}

/// Spawns `fut` on the current runtime (from inside or outside it).
pub(crate) fn spawn<T: Send + 'static>(fut: impl Future<Output = T> + Send + 'static) -> Task<T> {
    runtime().spawn(fut)
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
