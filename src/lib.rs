//! A bounded fan-out pipeline with an explicit load-shed policy and a leak-free structured
//! shutdown, on any async runtime.
//!
//! One fast producer, N async workers, and overload that degrades predictably instead of
//! crashing:
//!
//! - [`Queue`]: a bounded MPMC hand-off queue with a required [`Policy`] for when it is
//!   full: shed the incoming item, evict the oldest, or make the producer wait. A shed item
//!   is handed back in the [`PushOutcome`], never lost in silence. It works on its own too:
//!   [`pop_many`](Queue::pop_many) for batches, and `futures` adapters
//!   ([`into_stream`](Queue::into_stream), [`into_sink`](Queue::into_sink)).
//! - [`CancellationToken`]: a cancellation tree; cancelling a node cancels its descendants.
//! - [`Pipeline`]: N workers on any runtime through a [`Spawner`], and a structured
//!   [`shutdown`](Pipeline::shutdown) (stop intake → close → drain → deadline → cancel →
//!   abort → join every worker) whose [`Report`] satisfies
//!   `produced == processed + failed + dropped + expired + superseded + abandoned + panicked` on every
//!   path, and
//!   which hands back what was accepted but not processed
//!   ([`take_leftovers`](Pipeline::take_leftovers)).
//! - Workers that real services need: fallible work (`Result<(), E>`, or an [`Outcome`] that
//!   hands a failed item back), [retries](PipelineBuilder::retry) with backoff and a
//!   [dead-letter hook](PipelineBuilder::dead_letter), a
//!   [state per worker](PipelineBuilder::spawn_with_state) (a connection) rebuilt after a
//!   panic ([`OnPanic::Restart`]), any [`StopSignal`] as parent (a token, or any future),
//!   and [batch workers](PipelineBuilder::spawn_batched) whose [`Batch`] closes at a size
//!   or after a wait.
//! - Shedding by queue delay, at the exit: a [maximum age](PipelineBuilder::max_age) (TTL)
//!   and [CoDel](Codel) with adaptive LIFO, on the spawner's clock ([`Spawner::now`]), each
//!   shed item handed to [`on_expired`](PipelineBuilder::on_expired) with why ([`Expired`]);
//!   queue delays in [`Stats`] ([`DelayHistogram`]), and [watermarks](PipelineBuilder::watermarks)
//!   as an awaitable [`Pressure`] signal.
//! - Keyed lanes: with [`key_by`](PipelineBuilder::key_by), each key's items run in push
//!   order, at most [`per_key`](PipelineBuilder::per_key) at once, different keys in
//!   parallel with no fixed lanes; [`coalesce`](PipelineBuilder::coalesce) keeps only the
//!   latest waiting item of a key, handing the replaced one back
//!   ([`PushOutcome::Superseded`]).
//! - Loss you can see while it happens: live [`Stats`] from the pipeline or any
//!   [`Producer`] handle, a hook called with each shed item
//!   ([`on_shed`](PipelineBuilder::on_shed)), and with the `tracing` feature one warning when
//!   shedding starts and one summary when it stops.
//!
//! No `unsafe`: the queue is a `VecDeque` behind a mutex held for a few instructions and
//! never across an `.await`, with the lines of waiting poppers and producers kept under the
//! same lock (wake-ups that add up, producers served first come, first served), and
//! cancellation is built on `event-listener`.
//!
//! # Example
//!
//! ```
//! use backpressure_pipeline::{Pipeline, Policy, SmolSpawner};
//!
//! # smol::block_on(async {
//! // A position stream: when the workers fall behind, keep the freshest samples.
//! let pipeline = Pipeline::builder(16, Policy::DropOldest)
//!     .workers(4)
//!     .spawn(SmolSpawner::new(), |position: (f64, f64)| async move {
//!         let _ = position; // store it, draw it, send it on
//!     })?;
//!
//! for i in 0..1000 {
//!     // Under DropOldest a push never waits; an evicted sample comes back here.
//!     let _evicted = pipeline.push((i as f64, 0.0)).await.into_inner();
//! }
//!
//! let report = pipeline.shutdown().await;
//! assert_eq!(report.produced, 1000);
//! assert!(report.is_conserved());
//! assert!(report.all_joined());
//! # Ok::<(), backpressure_pipeline::BuildError>(())
//! # }).unwrap();
//! ```
//!
//! # Features
//!
// Without the `smol` feature its spawners are not in the crate: name them without a link.
#![cfg_attr(
    feature = "smol",
    doc = "- `smol` (default): [`SmolSpawner`] for smol's global executor and [`ExecutorSpawner`]"
)]
#![cfg_attr(
    not(feature = "smol"),
    doc = "- `smol` (default): `SmolSpawner` for smol's global executor and `ExecutorSpawner`"
)]
//!   for an `async_executor::Executor` the application owns.
//! - `tokio`: `TokioSpawner`, for a tokio runtime with its timer enabled.
//! - `async-std`: `AsyncStdSpawner` (async-std is discontinued upstream; smol succeeds it).
//! - `tracing`: rate-limited log lines when a pipeline starts and stops shedding.
//! - `metrics`: `Pipeline::record_metrics`, the counters and gauges through the `metrics`
//!   facade (no exporter of its own).
//!
//! Without a runtime feature the crate builds on `event-listener` and the small `futures-*`
//! crates only; bring your own [`Spawner`].
//!
//! # When not to use this crate
//!
//! - Every item must be processed and you already have back-pressure end to end: a bounded
//!   `async-channel` or `tokio::sync::mpsc` with a few tasks is simpler.
//! - You need the highest raw hand-off rate on one thread: a lock-free channel (flume,
//!   crossbeam) is faster than a queue behind a mutex.
//! - The work is CPU-bound: use a thread pool (rayon), not async workers.

#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![doc(test(attr(deny(warnings))))]

mod adapters;
mod cancel;
mod delay;
#[cfg(feature = "metrics")]
mod export;
mod pipeline;
mod policy;
mod pressure;
mod queue;
mod retry;
#[cfg(feature = "tracing")]
mod shed_log;
mod spawner;
mod stats;
mod sync;
mod watchdog;
mod work;

pub use adapters::{PopStream, PushSink, SendError};
pub use cancel::{CancellationToken, DropGuard, WaitForCancellation, WaitForCancellationOwned};
pub use delay::{Codel, DelayHistogram, Expired};
pub use pipeline::{
    Batch, BuildError, ErrorHooks, NoErrorHooks, OnPanic, Pipeline, PipelineBuilder, Producer,
    Report, StopCause, StopSignal,
};
pub use policy::{ConfigError, Policy, PushOutcome};
pub use pressure::{Pressure, PressureLevel};
pub use queue::{Pop, PopMany, Push, Queue};
pub use retry::Retry;
pub use spawner::{BoxFuture, SpawnError, Spawner};
pub use stats::{QueueStats, Stats};
pub use work::{Outcome, WorkFuture, WorkOutput};

#[cfg(feature = "async-std")]
pub use spawner::AsyncStdSpawner;

/// The README's examples, compiled and run as doc tests.
#[cfg(all(doctest, feature = "smol"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
#[cfg(feature = "tokio")]
pub use spawner::TokioSpawner;
#[cfg(feature = "smol")]
pub use spawner::{ExecutorSpawner, SmolSpawner};
