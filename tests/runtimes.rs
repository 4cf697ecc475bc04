//! Where runtimes differ, the pipeline does not: a runtime torn down under a running
//! pipeline ends in a report, and a tokio runtime without a timer is a clear error.

// async-std's global executor cannot be torn down, so its build has no test here.
#![cfg_attr(
    not(any(feature = "smol", feature = "tokio")),
    allow(dead_code, unused_imports)
)]

mod common;

use std::future::pending;
use std::time::Duration;

use backpressure_pipeline::{Pipeline, Policy, Report, Spawner};
use common::{Live, Tracked};

/// Starts a pipeline on `spawner` whose two workers each hold an item forever, with four
/// more queued, and waits until both workers hold theirs. Returns the pipeline.
async fn busy_pipeline(spawner: impl Spawner, live: &Live) -> Pipeline<Tracked> {
    let (taken_tx, taken_rx) = async_channel::unbounded();
    let pipeline = Pipeline::builder(4, Policy::Block)
        .workers(2)
        .deadline(Duration::from_millis(10))
        .grace(Duration::from_millis(10))
        .unresponsive_after(Duration::from_secs(60))
        .spawn(spawner, move |item: Tracked| {
            let taken_tx = taken_tx.clone();
            async move {
                let _item = item;
                taken_tx.send(()).await.unwrap();
                pending::<()>().await;
            }
        })
        .unwrap();
    for _ in 0..2 {
        assert!(pipeline.push(live.track()).await.is_accepted());
    }
    taken_rx.recv().await.unwrap();
    taken_rx.recv().await.unwrap();
    for _ in 0..4 {
        assert!(pipeline.try_push(live.track()).is_accepted());
    }
    pipeline
}

/// The runtime dropped the workers unfinished: they are joined as aborted, their items are
/// abandoned, and nothing is left alive.
fn assert_torn_down(pipeline: &Pipeline<Tracked>, report: &Report, live: &Live) {
    assert_eq!(
        (report.produced, report.processed, report.abandoned),
        (6, 0, 6),
        "{report}"
    );
    assert_eq!(
        (report.workers_joined, report.workers_aborted),
        (2, 2),
        "{report}"
    );
    assert!(report.is_conserved() && report.all_joined(), "{report}");
    // The 4 queued come back; the 2 the dropped workers held are lost in flight.
    assert_eq!(
        (report.handed_back, report.lost_in_flight),
        (4, 2),
        "{report}"
    );
    assert_eq!(pipeline.take_leftovers().len(), 4);
    assert_eq!(live.count(), 0);
}

#[cfg(feature = "tokio")]
fn tokio_torn_down(mut builder: tokio::runtime::Builder) {
    let live = Live::new();
    let rt = builder.enable_time().build().unwrap();
    let spawner = backpressure_pipeline::TokioSpawner::new(rt.handle().clone()).unwrap();
    let pipeline = rt.block_on(busy_pipeline(spawner, &live));
    drop(rt);
    // Shut down from another executor: the runtime is gone, its timer with it.
    let report = smol::block_on(pipeline.shutdown());
    assert_torn_down(&pipeline, &report, &live);
}

#[cfg(feature = "tokio")]
#[test]
fn tokio_mt_runtime_torn_down_underneath() {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(2);
    tokio_torn_down(builder);
}

#[cfg(feature = "tokio")]
#[test]
fn tokio_ct_runtime_torn_down_underneath() {
    tokio_torn_down(tokio::runtime::Builder::new_current_thread());
}

#[cfg(feature = "smol")]
#[test]
fn executor_torn_down_underneath() {
    let live = Live::new();
    let ex = std::sync::Arc::new(smol::Executor::new());
    let spawner = backpressure_pipeline::ExecutorSpawner::new(ex.clone());
    let pipeline = smol::block_on(ex.run(busy_pipeline(spawner, &live)));
    drop(ex); // the last reference: the executor drops its tasks
    let report = smol::block_on(pipeline.shutdown());
    assert_torn_down(&pipeline, &report, &live);
}

#[cfg(feature = "smol")]
#[test]
fn dropped_executor_is_a_clear_error() {
    let ex = std::sync::Arc::new(smol::Executor::new());
    let spawner = backpressure_pipeline::ExecutorSpawner::new(ex.clone());
    drop(ex);
    let err = Pipeline::builder(4, Policy::Block)
        .spawn(spawner, |_: u8| async {})
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot start a worker: cannot spawn a task: the executor was dropped"
    );
}

#[cfg(feature = "tokio")]
#[test]
fn tokio_without_timer_is_a_clear_error() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let err = backpressure_pipeline::TokioSpawner::new(rt.handle().clone()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot spawn a task: the tokio runtime has no timer; build it with `enable_time()`"
    );
    let err = backpressure_pipeline::TokioSpawner::current().unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot spawn a task: not inside a tokio runtime"
    );
}
