//! The executor every shape runs on, the ~1 µs of busy work, and what `/proc` tells about
//! the process and the machine.

use std::future::Future;
use std::hint::black_box;
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::Instant;

use async_executor::Executor;

pub(crate) const EXECUTOR_THREADS: usize = 2;

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

/// Runs `fut` as a task on the executor and waits for it from this (non-executor) thread.
pub(crate) fn run<T: Send + 'static>(fut: impl Future<Output = T> + Send + 'static) -> T {
    smol::block_on(ex().spawn(fut))
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
