//! The two runtimes every part runs on (`examples/common/runtimes.rs`, shared with
//! `compare`), and the pipeline's spawner on each.

use std::sync::Arc;

use backpressure_pipeline::{ExecutorSpawner, Spawner, TokioSpawner};

use crate::runtimes::{ex, tokio_rt};
pub(crate) use crate::runtimes::{Runtime, THREADS};

impl Runtime {
    /// The pipeline's spawner; its `sleep` is the runtime's own timer (async-io's, tokio's).
    pub(crate) fn spawner(self) -> Arc<dyn Spawner> {
        match self {
            Runtime::Executor => Arc::new(ExecutorSpawner::new(ex().clone())),
            Runtime::Tokio => Arc::new(
                TokioSpawner::new(tokio_rt().handle().clone()).expect("the timer is enabled"),
            ),
        }
    }
}
