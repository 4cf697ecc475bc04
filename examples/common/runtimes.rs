//! The two runtimes the measuring examples run on (`compare` and `keyed` include this
//! file), each on 2 threads and built once per process: an `async_executor::Executor` and a
//! tokio multi-thread runtime with its timer on. Each example gives its pipelines their
//! spawner on these (`keyed` the crate's `TokioSpawner`; `compare`, which does not require
//! the `tokio` feature, a spawner of its own).

// Each example uses part of this.
#![allow(dead_code)]

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::thread;

use async_executor::Executor;

/// Threads of either runtime.
pub(crate) const THREADS: usize = 2;

/// Where a pipeline, its producer and its workers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Runtime {
    /// One `async_executor::Executor`, run by [`THREADS`] threads.
    Executor,
    /// A tokio multi-thread runtime with [`THREADS`] workers.
    Tokio,
}

impl Runtime {
    pub(crate) const ALL: [Runtime; 2] = [Runtime::Executor, Runtime::Tokio];

    /// The runtime a command-line name (`executor`, `tokio`) names.
    pub(crate) fn parse(name: &str) -> Option<Runtime> {
        Runtime::ALL.into_iter().find(|rt| rt.name() == name)
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Runtime::Executor => "executor",
            Runtime::Tokio => "tokio",
        }
    }

    pub(crate) fn describe(self) -> String {
        match self {
            Runtime::Executor => format!("async_executor::Executor on {THREADS} threads"),
            Runtime::Tokio => format!("tokio multi-thread runtime, {THREADS} workers"),
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

    /// Spawns `fut` on the runtime (from inside or outside it).
    pub(crate) fn spawn<T: Send + 'static>(
        self,
        fut: impl Future<Output = T> + Send + 'static,
    ) -> Task<T> {
        match self {
            Runtime::Executor => Task::Executor(ex().spawn(fut)),
            Runtime::Tokio => Task::Tokio(tokio_rt().spawn(fut)),
        }
    }
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A task spawned with [`Runtime::spawn`]: awaiting it gives its output. Dropped, an executor
/// task is cancelled and a tokio one runs on: call [`detach`](Task::detach) to say which is
/// meant.
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
                .map(|r| r.expect("the task ran to its end")),
        }
    }
}

/// One multi-threaded executor for the whole process, run on [`THREADS`] threads.
pub(crate) fn ex() -> &'static Arc<Executor<'static>> {
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

/// One tokio multi-thread runtime for the whole process, [`THREADS`] workers, the timer on
/// (the pipeline's deadline and the work's sleeps need it).
pub(crate) fn tokio_rt() -> &'static tokio::runtime::Runtime {
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
