//! The two runtimes every part runs on, each on 2 threads and built once per process: an
//! `async_executor::Executor` (as in `examples/compare/runtime.rs`) and a tokio
//! multi-thread runtime with its timer on.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::thread;

use async_executor::Executor;
use backpressure_pipeline::{ExecutorSpawner, Spawner, TokioSpawner};

pub(crate) const THREADS: usize = 2;

/// Where a pipeline, its producer and its workers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Runtime {
    Executor,
    Tokio,
}

impl Runtime {
    pub(crate) const ALL: [Runtime; 2] = [Runtime::Executor, Runtime::Tokio];

    /// The pipeline's spawner; its `sleep` is the runtime's own timer (async-io's, tokio's).
    pub(crate) fn spawner(self) -> Arc<dyn Spawner> {
        match self {
            Runtime::Executor => Arc::new(ExecutorSpawner::new(ex().clone())),
            Runtime::Tokio => Arc::new(
                TokioSpawner::new(tokio_rt().handle().clone()).expect("the timer is enabled"),
            ),
        }
    }

    /// Runs `fut` as a task on the runtime and waits for it from this (non-runtime) thread,
    /// so the producer is one task among the workers, on the runtime's threads.
    pub(crate) fn run<T: Send + 'static>(self, fut: impl Future<Output = T> + Send + 'static) -> T {
        match self {
            Runtime::Executor => smol::block_on(ex().spawn(fut)),
            Runtime::Tokio => {
                let rt = tokio_rt();
                rt.block_on(rt.spawn(fut)).expect("the task ran to its end")
            }
        }
    }
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Runtime::Executor => "executor",
            Runtime::Tokio => "tokio",
        })
    }
}

/// One multi-threaded executor for the whole process, run on 2 threads.
fn ex() -> &'static Arc<Executor<'static>> {
    static EX: OnceLock<Arc<Executor<'static>>> = OnceLock::new();
    EX.get_or_init(|| {
        let ex = Arc::new(Executor::new());
        for i in 0..THREADS {
            let ex = ex.clone();
            thread::Builder::new()
                .name(format!("ex-{i}"))
                .spawn(move || smol::block_on(ex.run(std::future::pending::<()>())))
                .expect("spawn an executor thread");
        }
        ex
    })
}

/// One tokio multi-thread runtime for the whole process, 2 workers, the timer on (the
/// pipeline's deadline and the work's sleep need it).
fn tokio_rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(THREADS)
            .thread_name("tokio-worker")
            .enable_time()
            .build()
            .expect("build the tokio runtime")
    })
}
